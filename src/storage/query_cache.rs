//! query_db results, reused for as long as inotify reports no change next to the
//! databases.
//!
//! # Why
//!
//! An indexed lookup is a few µs of SQLite work, but every read transaction also
//! costs SQLite ~8 syscalls (four `fcntl` locks, three `stat`s for a hot journal
//! or WAL, a `pread` of the change counter): on the benchmark VM, more than the
//! query. Agents ask the same questions again (the same lookup, the same
//! aggregate) far more often than the database changes, so an answer is kept and
//! served again while nothing next to the database has been written.
//!
//! # Why an answer is never stale
//!
//! The same argument as search snapshots (`watch.rs`): each database's directory
//! is watched for writes, truncation, creation, deletion and renames — which
//! covers the database file, its rollback journal and its WAL (a WAL commit
//! `write`s its frames before it publishes them in the `-shm` index, so the event
//! is queued before the commit is visible). Reads raise nothing, so our own
//! queries never invalidate. A lookup first drains the inotify descriptor; an
//! answer is stored only if no event arrived between the drain before its query
//! and the drain after, and is served only while the generation has not moved.
//! Any event retires every answer on the shard.
//!
//! Only answers of deterministic statements are kept: `db.rs` notes, as SQLite
//! prepares a statement, whether it calls a function that can answer differently
//! twice (`random()`, `changes()`, the date and time functions, which read the
//! clock for `'now'`).
//!
//! What inotify cannot see (network filesystems, writes through a shared `mmap`)
//! is handled as for snapshots: databases off [`LOCAL_FILESYSTEMS`] are never
//! cached, and `[tools.query_db] cache = false` turns this off.
//!
//! [`LOCAL_FILESYSTEMS`]: super::watch::LOCAL_FILESYSTEMS

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;

use hashbrown::HashMap;

use super::watch::Watcher;
use crate::tools::{Kept, ToolResult};

/// Answers kept per shard by default (`cache.query_results`; 0 disables).
pub const DEFAULT_QUERY_RESULTS: usize = 4096;
/// Bytes of answers kept per shard by default (`cache.query_result_bytes`).
pub const DEFAULT_QUERY_RESULT_BYTES: usize = 16 * 1024 * 1024;
/// Distinct statements whose determinism is remembered; past it the notes are
/// forgotten and relearned.
pub const MAX_CLASSIFIED_STATEMENTS: usize = 4096;
/// Directories the database watcher may hold: one per database directory.
const MAX_DATABASE_WATCHES: usize = 1024;

/// Counts, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryCacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Answers dropped to make room (not those retired by a change).
    pub evictions: u64,
}

struct Entry {
    result: Rc<Kept>,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Rc<[u8]>, Entry>,
    /// Insertion order, oldest first: the eviction order.
    order: VecDeque<Rc<[u8]>>,
    bytes: usize,
    /// The generation every entry in `map` was stored under.
    generation: u64,
    /// Statement text → whether its answers may be kept.
    deterministic: HashMap<Box<str>, bool>,
}

/// One shard's cache of query answers.
pub struct QueryCache {
    watcher: Watcher,
    inner: RefCell<Inner>,
    capacity: usize,
    max_bytes: usize,
    stats: Cell<QueryCacheStats>,
}

/// A lookup that missed: what must hold for its answer to be stored.
pub struct Pending {
    key: Rc<[u8]>,
    generation: u64,
}

impl QueryCache {
    pub fn new(capacity: usize, max_bytes: usize) -> QueryCache {
        QueryCache {
            // No descriptor at all when caching is off: inotify instances are a
            // per-user resource (`fs.inotify.max_user_instances`).
            watcher: if capacity > 0 {
                Watcher::new(MAX_DATABASE_WATCHES)
            } else {
                Watcher::disabled()
            },
            inner: RefCell::default(),
            capacity,
            max_bytes,
            stats: Cell::default(),
        }
    }

    /// False when answers would be kept but inotify could not be had.
    pub fn watching(&self) -> bool {
        self.capacity == 0 || self.watcher.available()
    }

    pub fn stats(&self) -> QueryCacheStats {
        self.stats.get()
    }

    /// Answers held now, and their approximate bytes.
    pub fn len(&self) -> usize {
        self.inner.borrow().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.inner.borrow().bytes
    }

    /// Looks `key` up for a database in `dir` (`None`: not on a local filesystem).
    /// `Ok` is a kept answer; `Err(Some(p))` a miss whose answer may be stored with
    /// [`store`](Self::store); `Err(None)` a miss that must not be stored.
    pub fn lookup(&self, dir: Option<&Path>, key: Vec<u8>) -> Result<Rc<Kept>, Option<Pending>> {
        let Some(dir) = dir else {
            return Err(None);
        };
        if self.capacity == 0 {
            return Err(None);
        }
        let Some(watched) = self.watcher.watch_all([dir]) else {
            return Err(None);
        };
        let generation = watched.generation;
        let mut inner = self.inner.borrow_mut();
        if inner.generation != generation {
            // Something changed next to a database: every answer retires.
            inner.map.clear();
            inner.order.clear();
            inner.bytes = 0;
            inner.generation = generation;
        }
        let hit = inner.map.get(key.as_slice()).map(|e| e.result.clone());
        drop(inner);
        match hit {
            Some(r) => {
                super::bump(&self.stats, |s| s.hits += 1);
                Ok(r)
            }
            None => {
                super::bump(&self.stats, |s| s.misses += 1);
                Err(Some(Pending {
                    key: key.into(),
                    generation,
                }))
            }
        }
    }

    /// Whether answers of `sql` may be kept, when known.
    pub fn deterministic(&self, sql: &str) -> Option<bool> {
        self.inner.borrow().deterministic.get(sql).copied()
    }

    /// Notes whether answers of `sql` may be kept.
    pub fn classify(&self, sql: &str, deterministic: bool) {
        let mut inner = self.inner.borrow_mut();
        if inner.deterministic.len() >= MAX_CLASSIFIED_STATEMENTS {
            inner.deterministic.clear();
        }
        inner.deterministic.insert(sql.into(), deterministic);
    }

    /// Keeps `result` for the lookup that missed, unless anything changed since,
    /// and returns the answer to send: the kept form once it has been rendered,
    /// so that keeping it copies nothing. `bytes` is its approximate size, to
    /// which its rendered JSON is added; an answer over an eighth of the budget
    /// is not kept, so one huge result cannot flush every other.
    pub fn store(&self, pending: Pending, result: ToolResult, bytes: usize) -> ToolResult {
        if self.watcher.poll() != pending.generation || bytes > self.max_bytes / 8 {
            return result;
        }
        let kept = Rc::new(Kept::new(result));
        let bytes = bytes + kept.json_len();
        if bytes > self.max_bytes / 8 {
            return ToolResult::kept(kept);
        }
        let mut inner = self.inner.borrow_mut();
        if inner.generation != pending.generation || inner.map.contains_key(&pending.key) {
            return ToolResult::kept(kept);
        }
        let mut evicted = 0;
        while !inner.order.is_empty()
            && (inner.map.len() >= self.capacity || inner.bytes + bytes > self.max_bytes)
        {
            let oldest = inner.order.pop_front().expect("not empty");
            if let Some(e) = inner.map.remove(&oldest) {
                inner.bytes -= e.bytes;
                evicted += 1;
            }
        }
        inner.order.push_back(pending.key.clone());
        inner.map.insert(
            pending.key,
            Entry {
                result: Rc::clone(&kept),
                bytes,
            },
        );
        inner.bytes += bytes;
        debug_assert_eq!(inner.map.len(), inner.order.len());
        assert!(inner.map.len() <= self.capacity, "the entry bound holds");
        drop(inner);
        if evicted > 0 {
            super::bump(&self.stats, |s| s.evictions += evicted);
        }
        ToolResult::kept(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_next_to_the_database_retires_answers_and_bounds_hold() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().canonicalize().unwrap();
        let c = QueryCache::new(2, 1 << 20);
        let r = ToolResult::text("answer");
        let Err(Some(p)) = c.lookup(Some(&dir), b"k1".to_vec()) else {
            panic!("first lookup misses and may store")
        };
        assert_eq!(c.store(p, r.clone(), 10), r);
        assert!(c.lookup(Some(&dir), b"k1".to_vec()).is_ok());

        // A write anywhere in the directory: the answer retires.
        std::fs::write(dir.join("main.db-wal"), "frame").unwrap();
        assert!(matches!(c.lookup(Some(&dir), b"k1".to_vec()), Err(Some(_))));

        // A change between the lookup and the store: not kept.
        let Err(Some(p)) = c.lookup(Some(&dir), b"k2".to_vec()) else {
            panic!()
        };
        std::fs::write(dir.join("main.db"), "x").unwrap();
        assert_eq!(c.store(p, r.clone(), 10), r);
        assert!(matches!(c.lookup(Some(&dir), b"k2".to_vec()), Err(Some(_))));

        // Capacity 2: the oldest goes first.
        for k in [b"a", b"b", b"c"] {
            let Err(Some(p)) = c.lookup(Some(&dir), k.to_vec()) else {
                panic!()
            };
            assert_eq!(c.store(p, r.clone(), 10), r);
        }
        assert_eq!(c.len(), 2);
        assert!(c.lookup(Some(&dir), b"a".to_vec()).is_err());
        assert!(c.lookup(Some(&dir), b"c".to_vec()).is_ok());
        assert_eq!(c.stats().evictions, 1);

        // Off a local filesystem, or with capacity 0: never kept.
        assert!(matches!(c.lookup(None, b"c".to_vec()), Err(None)));
        let off = QueryCache::new(0, 1 << 20);
        assert!(matches!(off.lookup(Some(&dir), b"c".to_vec()), Err(None)));
    }
}
