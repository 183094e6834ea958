//! Path resolutions for reads, reused without a syscall while inotify reports no
//! change along the path.
//!
//! # Why
//!
//! A cached read_file call costs one `lstat` per path component (resolution
//! checks each for a symlink, and the file's own `lstat` is the cache
//! fingerprint). On the benchmark VM that one `statx` is ~1.1 µs of a ~11 µs
//! request: the largest single cost left after the network. An agent reads the
//! same files again and again; between its edits, nothing along those paths
//! changes.
//!
//! # Why a reused resolution is never stale
//!
//! The argument of search snapshots (`watch.rs`), on the same inotify descriptor:
//!
//! 1. every directory from the root down to the file's parent is watched, for
//!    content, metadata and entry changes (so a write to the file, a chmod, a
//!    rename or a symlink swapped in anywhere along the path raises an event);
//! 2. the path is resolved again, `lstat` by `lstat`, after the watches are in
//!    place — a change before step 1 is seen here, one after it queues an event;
//! 3. the resolution (canonical path and the file's fingerprint) is kept under
//!    the generation read at step 1.
//!
//! When every directory was already watched before the path was first resolved
//! (and no event came since), that resolution is kept as it is; step 2 is
//! needed only when a watch was just added. A lookup drains the descriptor first
//! and uses an entry only if the generation has not moved. The fingerprint then still describes the file, so the file
//! cache serves its contents by the usual fingerprint rules — an entry holds no
//! contents and the file cache's byte bound stays the only one.
//!
//! What inotify cannot see — writes through a shared `mmap`, other machines'
//! changes on network filesystems, a rename of a directory *above* a root — is
//! why entries are only kept on local filesystems and the tool's
//! `cache = false` turns this off with the other caches.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use hashbrown::HashMap;

use super::roots::Resolved;
use super::watch::{is_local_filesystem, Watched, Watcher};

/// Resolutions kept per shard; past it the table starts over.
pub const MAX_RESOLUTIONS: usize = 4096;

#[derive(Default)]
struct Inner {
    /// By the path exactly as the client wrote it; shared with the calls using
    /// it, so that a hit copies no path.
    map: HashMap<Box<str>, Rc<Resolved>>,
    /// The watcher generation every entry was verified under.
    generation: u64,
}

/// One shard's verified resolutions.
pub struct Resolutions {
    inner: RefCell<Inner>,
    capacity: usize,
}

impl Resolutions {
    pub fn new(capacity: usize) -> Resolutions {
        Resolutions {
            inner: RefCell::default(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.borrow().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The resolution of `path` if it was verified and nothing has changed since;
    /// else the generation read now, before the caller resolves the path.
    pub fn get(&self, watcher: &Watcher, path: &str) -> Result<Rc<Resolved>, u64> {
        let generation = watcher.poll();
        let mut inner = self.inner.borrow_mut();
        if inner.generation != generation {
            inner.map.clear();
            return Err(generation);
        }
        inner.map.get(path).cloned().ok_or(generation)
    }

    /// Step 1: watches every directory from `root` down to the parent of the
    /// regular file `real`. `None` when this resolution cannot be kept.
    pub fn begin(&self, watcher: &Watcher, root: &Path, real: &Path) -> Option<Watched> {
        if self.capacity == 0 || !is_local_filesystem(root) {
            return None;
        }
        let below = real.parent()?.strip_prefix(root).ok()?;
        let mut dirs = vec![root.to_path_buf()];
        for name in below.components() {
            let next = dirs.last().expect("the root is there").join(name);
            dirs.push(next);
        }
        watcher.watch_all(dirs)
    }

    /// Step 3: keeps `resolved` (made after [`begin`](Self::begin) returned
    /// `generation`) for `path`.
    pub fn keep(&self, path: &str, generation: u64, resolved: &Rc<Resolved>) {
        assert!(
            resolved.file.is_some(),
            "only regular files' resolutions are kept"
        );
        let mut inner = self.inner.borrow_mut();
        if inner.generation != generation {
            // Entries of another generation are dead either way; an entry of an
            // older one than theirs would be used after a change.
            if generation < inner.generation {
                return;
            }
            inner.map.clear();
            inner.generation = generation;
        }
        if inner.map.len() >= self.capacity {
            inner.map.clear();
        }
        inner.map.insert(path.into(), Rc::clone(resolved));
    }
}
