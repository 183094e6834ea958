//! Search snapshots: a searched tree's files and contents, reused with no
//! per-file `stat` for as long as inotify reports no change under it.
//!
//! # Why search differs from read_file
//!
//! The file cache revalidates every hit with a `stat` (see `file_cache.rs`): one
//! syscall per read_file call is cheap next to the rest of the call. A search
//! reads thousands of files per call, and 2,000 `stat`s cost ~2.3 ms on the
//! benchmark VM — more than searching the bytes. So a search of a tree that has
//! not changed since the last one uses a snapshot instead: the tree's file list
//! and an `Rc` of each file's contents, valid while this shard's inotify
//! descriptor has reported nothing.
//!
//! # Why a snapshot is never stale
//!
//! Every directory the walk read (and the directories holding the ignore files
//! that shaped it) is watched for content, metadata and entry changes — writes,
//! truncation, chmod, create, delete, rename — but not for reads, so our own
//! reads raise nothing. The order is what makes it exact:
//!
//! 1. the watches are added;
//! 2. the walk is revalidated and every file read the usual, `stat`-checked way;
//! 3. the snapshot is kept only if no event arrived meanwhile.
//!
//! A change completed before step 1 is seen by step 2's checks; a change after
//! step 1 queues an event, synchronously, in the writer's syscall. Every search
//! first drains the descriptor (one non-blocking `read`), so a change completed
//! before a search's request arrived always reaches it. Any event at all moves
//! the shard's generation and retires every snapshot: coarse, but an agent's
//! edits are rare next to its searches, and the next search rebuilds.
//!
//! # What inotify cannot see
//!
//! Writes through a shared `mmap`, and changes made by another machine to a
//! network filesystem. Snapshots are therefore built only on local filesystems
//! ([`LOCAL_FILESYSTEMS`]) and can be turned off per tool
//! (`[tools.search_code] cache = false`). A full event queue (`IN_Q_OVERFLOW`),
//! a removed watch, or too many watches retire every snapshot too.

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::sync::Semaphore;
use hashbrown::HashMap;

use super::file_cache::CachedFile;
use super::grams::GramIndex;
use super::tree_cache::Tree;

/// Directories one shard watches at most. Past it every watch is dropped and
/// every snapshot retired, and snapshots are built afresh as searches come.
pub const MAX_WATCHES_PER_SHARD: usize = 8192;
/// Bytes of reads per drain of the event queue.
const EVENT_BUFFER_BYTES: usize = 4096;

/// Filesystems (`statfs` `f_type`) on which inotify sees every change made on this
/// machine: ext2/3/4, XFS, Btrfs, tmpfs, F2FS, ZFS, overlayfs (changes made
/// through the overlay). NFS, CIFS, FUSE and the rest get no snapshots.
pub const LOCAL_FILESYSTEMS: &[i64] = &[
    0xEF53,      // ext2/3/4
    0x5846_5342, // XFS
    0x9123_683E, // Btrfs
    0x0102_1994, // tmpfs
    0xF2F5_2010, // F2FS
    0x2FC1_2FC1, // ZFS
    0x794C_7630, // overlayfs
];

const MASK: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_DONT_FOLLOW;

/// One shard's inotify descriptor and the directories it watches.
pub struct Watcher {
    /// `None` when inotify is unavailable: then nothing is ever snapshotted.
    fd: Option<OwnedFd>,
    watched: RefCell<HashMap<PathBuf, i32>>,
    /// Moves on every event; a snapshot is valid while it has not moved.
    generation: Cell<u64>,
    /// Moves each time every watch is dropped (see [`watch_all`](Self::watch_all)).
    drops: Cell<u64>,
    capacity: usize,
}

/// Directories watched from a given generation on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    /// Every change in the directories after this generation moves it.
    pub generation: u64,
    /// Some directory was not watched before this call: a state read before it
    /// may predate the watches.
    pub added: bool,
}

impl Watcher {
    pub fn new(capacity: usize) -> Watcher {
        // SAFETY: plain syscall; the descriptor is owned from here on. On failure
        // (EMFILE: `fs.inotify.max_user_instances`), the caches that rely on it
        // are off and the shard says so at start.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        Watcher {
            fd: (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) }),
            watched: RefCell::default(),
            generation: Cell::new(0),
            drops: Cell::new(0),
            capacity,
        }
    }

    /// Whether this watcher has an inotify descriptor (and so can vouch for
    /// anything).
    pub fn available(&self) -> bool {
        self.fd.is_some()
    }

    /// Reads every queued event and returns the generation after them.
    pub fn poll(&self) -> u64 {
        let Some(fd) = &self.fd else {
            return self.generation.get();
        };
        // Uninitialised: zeroing 4 KiB on every call cost more than the syscall
        // (callgrind, cached read_file). Only the `n` bytes read are looked at.
        let mut buf = std::mem::MaybeUninit::<[u64; EVENT_BUFFER_BYTES / 8]>::uninit();
        loop {
            // SAFETY: reads into a buffer we own, of the length given.
            let n =
                unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), EVENT_BUFFER_BYTES) };
            if n <= 0 {
                // EAGAIN: the queue is empty (the descriptor is non-blocking).
                return self.generation.get();
            }
            self.generation.set(self.generation.get() + 1);
            // SAFETY: the kernel wrote these `n` bytes just now.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            if lost_a_watch(bytes) {
                // The queue overflowed or a watched directory went away: start
                // over, so the next snapshot adds its watches again.
                self.drop_all();
            }
        }
    }

    /// A watcher that watches nothing, for when nothing will be cached.
    pub fn disabled() -> Watcher {
        Watcher {
            fd: None,
            watched: RefCell::default(),
            generation: Cell::new(0),
            drops: Cell::new(0),
            capacity: 0,
        }
    }

    /// Watches every directory of `dirs`. `None` when one cannot be watched (no
    /// inotify, the limit, an error) or when the watches were lost while they were
    /// being set up: draining the queue can find that a watch went away
    /// (`IN_IGNORED`, an overflow) and drop them all, and a generation read after
    /// that would vouch for directories nobody watches any more.
    pub fn watch_all<P: AsRef<Path>>(&self, dirs: impl IntoIterator<Item = P>) -> Option<Watched> {
        let drops = self.drops.get();
        let mut added = false;
        for dir in dirs {
            added |= self.add(dir.as_ref())?;
        }
        let generation = self.poll();
        (self.drops.get() == drops).then_some(Watched { generation, added })
    }

    /// Watches `dir`: `Some(true)` if newly, `Some(false)` if it already was.
    fn add(&self, dir: &Path) -> Option<bool> {
        let fd = self.fd.as_ref()?;
        if self.watched.borrow().contains_key(dir) {
            return Some(false);
        }
        if self.watched.borrow().len() >= self.capacity {
            self.drop_all();
            return None;
        }
        let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: a valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            return None;
        }
        self.watched.borrow_mut().insert(dir.to_path_buf(), wd);
        Some(true)
    }

    fn drop_all(&self) {
        if let Some(fd) = &self.fd {
            for (_, wd) in self.watched.borrow_mut().drain() {
                // SAFETY: a descriptor and watch we created; failure (already gone)
                // is harmless.
                unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
            }
            // Removing a watch queues an IN_IGNORED for it. Those, and anything
            // else queued, are moot now that every snapshot retires; left queued
            // they would drop the watches added from here on.
            let mut buf = std::mem::MaybeUninit::<[u64; EVENT_BUFFER_BYTES / 8]>::uninit();
            // SAFETY: reads into a buffer we own, of the length given; never read.
            while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), EVENT_BUFFER_BYTES) }
                > 0
            {}
        }
        self.generation.set(self.generation.get() + 1);
        self.drops.set(self.drops.get() + 1);
    }

    /// Directories watched now.
    pub fn len(&self) -> usize {
        self.watched.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a batch of events says a watch is gone or events were lost.
fn lost_a_watch(mut bytes: &[u8]) -> bool {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    while bytes.len() >= HEADER {
        // SAFETY: the kernel writes whole events; read_unaligned copes with the
        // byte slice's alignment.
        let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if ev.mask & (libc::IN_Q_OVERFLOW | libc::IN_IGNORED) != 0 {
            return true;
        }
        bytes = &bytes[(HEADER + ev.len as usize).min(bytes.len())..];
    }
    false
}

/// A searched tree as of one generation: its files and, in the same order, their
/// contents (`None`: unreadable then) and which files hold which trigrams.
pub struct Snapshot {
    pub tree: Arc<Tree>,
    pub contents: Vec<Option<Rc<CachedFile>>>,
    pub index: GramIndex,
    generation: u64,
    bytes: usize,
}

/// Counts, for tests and stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub used: u64,
    pub built: u64,
}

/// The snapshots of one shard, by searched directory.
pub struct Snapshots {
    watcher: Watcher,
    map: RefCell<HashMap<PathBuf, Rc<Snapshot>>>,
    /// Most snapshots kept (the walk cache's capacity).
    capacity: usize,
    /// Most bytes of contents and indexes all snapshots together keep alive (the
    /// file cache's size: a snapshot shares its files with the cache, but keeps
    /// them alive past eviction).
    max_bytes: usize,
    stats: Cell<SnapshotStats>,
    /// Directories a search is snapshotting now, each with a gate closed when
    /// that build ends, however it ends. Searches of the same tree that come
    /// meanwhile wait at the gate instead of reading the whole tree too: a cold
    /// shard hit by 64 searches at once otherwise walks and reads it 64 times.
    building: RefCell<HashMap<PathBuf, Rc<Semaphore>>>,
}

/// A search's claim on building one directory's snapshot (see
/// [`Snapshots::claim`]); dropping it opens the gate for the waiting searches.
pub struct Claim<'a> {
    snapshots: &'a Snapshots,
    dir: PathBuf,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(gate) = self.snapshots.building.borrow_mut().remove(&self.dir) {
            gate.close();
        }
    }
}

/// A snapshot being built: what was true when its watches were in place.
pub struct Pending {
    dir: PathBuf,
    generation: u64,
}

impl Snapshots {
    pub fn new(capacity: usize, max_bytes: usize) -> Snapshots {
        Snapshots {
            watcher: Watcher::new(MAX_WATCHES_PER_SHARD),
            map: RefCell::default(),
            capacity: capacity.max(1),
            max_bytes,
            stats: Cell::default(),
            building: RefCell::default(),
        }
    }

    /// Claims the building of `dir`'s snapshot for the caller, which should hold
    /// the claim until the snapshot is kept or cannot be. `None` when another
    /// search holds it.
    pub fn claim(&self, dir: &Path) -> Option<Claim<'_>> {
        let mut building = self.building.borrow_mut();
        if building.contains_key(dir) {
            return None;
        }
        building.insert(dir.to_path_buf(), Rc::new(Semaphore::new(0)));
        Some(Claim {
            snapshots: self,
            dir: dir.to_path_buf(),
        })
    }

    /// Waits until the search building `dir`'s snapshot, if one is, is done;
    /// `false` at once if none is. The caller then looks for the snapshot again.
    pub async fn wait_for_build(&self, dir: &Path) -> bool {
        let Some(gate) = self.building.borrow().get(dir).cloned() else {
            return false;
        };
        // Nothing is ever signalled: the gate only closes, which fails the wait.
        let _closed = gate.acquire(1).await;
        true
    }

    pub fn stats(&self) -> SnapshotStats {
        self.stats.get()
    }

    pub fn watcher(&self) -> &Watcher {
        &self.watcher
    }

    /// The snapshot of `dir` if nothing has changed since it was taken.
    pub fn current(&self, dir: &Path) -> Option<Rc<Snapshot>> {
        let generation = self.watcher.poll();
        let mut map = self.map.borrow_mut();
        if map
            .values()
            .next()
            .is_some_and(|s| s.generation != generation)
        {
            // Any event retires them all (see the module doc).
            map.clear();
            return None;
        }
        let snap = map.get(dir).cloned()?;
        super::bump(&self.stats, |s| s.used += 1);
        Some(snap)
    }

    /// Step 1 of a build: watches every directory `tree` depends on. `None` when
    /// the tree cannot be snapshotted (not a local filesystem, a watch failed).
    /// The caller then revalidates the tree and reads every file, and hands the
    /// results to [`finish`](Self::finish).
    pub fn begin(&self, dir: &Path, tree: &Tree) -> Option<Pending> {
        if !is_local_filesystem(dir) {
            return None;
        }
        let watched = self.watcher.watch_all(tree.directories())?;
        Some(Pending {
            dir: dir.to_path_buf(),
            generation: watched.generation,
        })
    }

    /// Step 3: indexes the contents, then keeps the snapshot if no event arrived
    /// since [`begin`](Self::begin).
    pub async fn finish(
        &self,
        pending: Pending,
        tree: Arc<Tree>,
        contents: Vec<Option<Rc<CachedFile>>>,
    ) {
        assert_eq!(tree.files.len(), contents.len(), "one content per file");
        let content_bytes: usize = contents.iter().flatten().map(|f| f.bytes.len()).sum();
        if content_bytes > self.max_bytes {
            return;
        }
        // Built before the check below, which then vouches for it too: it
        // yields, and a change meanwhile must still retire the snapshot.
        let Some(index) = GramIndex::build(&contents, self.max_bytes - content_bytes).await else {
            return;
        };
        if self.watcher.poll() != pending.generation {
            return;
        }
        let bytes = content_bytes + index.bytes();
        let mut map = self.map.borrow_mut();
        map.retain(|_, s| s.generation == pending.generation);
        map.remove(&pending.dir);
        let mut total: usize = map.values().map(|s| s.bytes).sum();
        while !map.is_empty() && (map.len() >= self.capacity || total + bytes > self.max_bytes) {
            // Evict the largest: the cheapest way back under both bounds.
            let big = map
                .iter()
                .max_by_key(|(_, s)| s.bytes)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            total -= map.remove(&big).map_or(0, |s| s.bytes);
        }
        map.insert(
            pending.dir,
            Rc::new(Snapshot {
                tree,
                contents,
                index,
                generation: pending.generation,
                bytes,
            }),
        );
        super::bump(&self.stats, |s| s.built += 1);
    }
}

pub fn is_local_filesystem(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a buffer of the right type.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    LOCAL_FILESYSTEMS.contains(&(st.f_type as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_removed_watches_are_noticed() {
        let event = |mask: u32| {
            let ev = libc::inotify_event {
                wd: 1,
                mask,
                cookie: 0,
                len: 16,
            };
            let mut v = unsafe {
                std::slice::from_raw_parts(
                    (&ev as *const libc::inotify_event).cast::<u8>(),
                    std::mem::size_of::<libc::inotify_event>(),
                )
            }
            .to_vec();
            v.extend_from_slice(&[b'x'; 16]);
            v
        };
        let mut two = event(libc::IN_MODIFY);
        assert!(!lost_a_watch(&two));
        two.extend(event(libc::IN_Q_OVERFLOW));
        assert!(lost_a_watch(&two));
        assert!(lost_a_watch(&event(libc::IN_IGNORED)));
    }

    #[test]
    fn a_change_moves_the_generation_and_a_read_does_not() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().canonicalize().unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        let w = Watcher::new(4);
        let first = w.watch_all([&dir]).unwrap();
        assert!(first.added);
        assert_eq!(
            w.watch_all([&dir]).unwrap(),
            Watched {
                added: false,
                ..first
            }
        );
        let g = w.poll();
        std::fs::read(dir.join("a.txt")).unwrap();
        assert_eq!(w.poll(), g, "reads raise no event");
        std::fs::write(dir.join("a.txt"), "b").unwrap();
        assert!(w.poll() > g, "a write does");
        // The bound: past it, everything is dropped.
        let subs: Vec<PathBuf> = (0..5).map(|i| dir.join(format!("d{i}"))).collect();
        for s in &subs {
            std::fs::create_dir(s).unwrap();
        }
        let g = w.poll();
        let ok: Vec<bool> = subs.iter().map(|s| w.watch_all([s]).is_some()).collect();
        assert_eq!(ok, [true, true, true, false, true]);
        assert!(w.poll() > g);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn watches_lost_while_being_set_up_vouch_for_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().canonicalize().unwrap();
        let (gone, kept) = (dir.join("gone"), dir.join("kept"));
        std::fs::create_dir(&gone).unwrap();
        std::fs::create_dir(&kept).unwrap();
        let w = Watcher::new(16);
        w.watch_all([&gone]).unwrap();
        // Its removal queues IN_IGNORED, found by the drain inside the next call:
        // every watch is dropped then, `kept`'s just added one included.
        std::fs::remove_dir(&gone).unwrap();
        assert_eq!(w.watch_all([&kept]), None);
        assert!(w.is_empty());
        // The next try starts clean.
        assert!(w.watch_all([&kept]).unwrap().added);
        assert_eq!(w.len(), 1);
    }
}
