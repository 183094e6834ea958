//! A shard-local cache of file contents, bounded in bytes, least recently used out.
//!
//! # Never stale
//!
//! Every hit costs one `stat` of the path (or reuses the `lstat` that path
//! resolution just made of it), and the entry is served only if its
//! fingerprint — device, inode, size, mtime and ctime to the nanosecond — is
//! unchanged. inotify would make a hit cheaper, but it cannot be relied on to see
//! every change: a watch per shard per directory runs into `max_user_watches` on
//! large roots, events are dropped when the queue overflows, and it misses changes
//! through other mounts of the same file. A `stat` of a cached, page-cached path
//! costs about 1 µs (`cargo bench --bench hot_path -- file_cache/stat`: 1.15 µs
//! per call on the 2-vCPU benchmark VM), small beside serialising the answer.
//! Search is the exception: it validates thousands of files per call, so a
//! repeated search of an unchanged tree uses an inotify-kept snapshot instead
//! (`watch.rs`), built from contents this cache validated, with the limits of
//! inotify stated there.
//!
//! A fingerprint alone is not enough when a file is rewritten within one tick of the
//! filesystem clock: same size, same inode, same timestamps, new bytes. So a file
//! whose mtime or ctime is within [`RACY_WINDOW`] of the (coarse) clock when it is
//! read is served but not cached — the same rule git uses for "racily clean" index
//! entries. Any later write then carries a timestamp that differs from the cached
//! one. Contents are also read between two `fstat`s of the open file and cached only
//! if both agree, so a write racing the read is never cached either.
//!
//! # Sent as JSON once
//!
//! A file sent whole (read_file's common call) keeps its text escaped as a JSON
//! string next to its contents ([`FileCache::keep_json`]), so that the next answer
//! copies it instead of escaping it again. The copy counts against the same byte
//! bound and leaves with the entry.
//!
//! # I/O
//!
//! Reads use `std::fs`. Small files (≤ [`INLINE_READ_MAX_BYTES`]) are read on the
//! shard: they are almost always in the page cache, where a read is a memcpy, and an
//! io_uring or thread-pool round trip would cost more than it saves. Larger files
//! are read on glommio's blocking pool so that one cold 30 MiB read does not stall
//! every other call on the shard. glommio's own file types were not used because
//! their `stat` omits inode and timestamps, which the fingerprint needs anyway.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use hashbrown::HashMap;

/// Default bytes of file content cached per shard.
pub const DEFAULT_FILE_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// A file larger than this fraction of the cache is served but never cached, so
/// that one big file cannot flush everything else.
pub const MAX_CACHED_FILE_FRACTION: usize = 8;
/// Largest file read at all; bigger files are refused with a hint to search them.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Files up to this size are read on the shard; larger ones on the blocking pool.
pub const INLINE_READ_MAX_BYTES: u64 = 256 * 1024;
/// A file changed this recently (by the coarse clock) is not cached; covers the
/// coarse kernel clock tick and filesystems with up to 2 s timestamp granularity.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);
/// Bytes examined for a NUL to call a file binary (the rule git and ripgrep use).
pub const BINARY_SNIFF_BYTES: usize = 8 * 1024;

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    pub fn of(m: &Metadata) -> Fingerprint {
        Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The later of mtime and ctime, as nanoseconds since the epoch.
    pub(crate) fn changed_ns(&self) -> i128 {
        let ns = |(s, n): (i64, i64)| s as i128 * 1_000_000_000 + n as i128;
        ns(self.mtime).max(ns(self.ctime))
    }
}

/// One version of a file's bytes.
#[derive(Debug)]
pub struct CachedFile {
    pub bytes: Box<[u8]>,
    pub fingerprint: Fingerprint,
    utf8: OnceCell<bool>,
    lines: OnceCell<usize>,
    /// Set while this version is an entry of a [`FileCache`]: only then may it
    /// keep `json`, whose bytes that cache counts.
    in_cache: Cell<bool>,
    /// The text as a JSON string (quoted and escaped), kept by
    /// [`FileCache::keep_json`]; dropped when the entry leaves the cache.
    json: RefCell<Option<Box<[u8]>>>,
}

impl CachedFile {
    fn new(bytes: Box<[u8]>, fingerprint: Fingerprint) -> CachedFile {
        CachedFile {
            bytes,
            fingerprint,
            utf8: OnceCell::new(),
            lines: OnceCell::new(),
            in_cache: Cell::new(false),
            json: RefCell::new(None),
        }
    }

    /// Appends the text as a JSON string: the kept, escaped copy when there is
    /// one, else escaped now. Escaping a 2 KiB file was the largest cost of a
    /// cached read_file answer (callgrind: ~3.5k of ~26k instructions).
    ///
    /// Panics if the file is not text; callers check [`text`](Self::text) first.
    pub fn write_json_text(&self, out: &mut Vec<u8>) {
        if let Some(json) = &*self.json.borrow() {
            out.extend_from_slice(json);
            return;
        }
        let text = self.text().expect("only text is sent as text");
        sonic_rs::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
    }

    /// Bytes this version holds beyond its contents (the kept JSON text).
    fn extra_bytes(&self) -> usize {
        self.json.borrow().as_ref().map_or(0, |j| j.len())
    }

    /// A NUL byte in the first [`BINARY_SNIFF_BYTES`].
    pub fn is_binary(&self) -> bool {
        let head = &self.bytes[..self.bytes.len().min(BINARY_SNIFF_BYTES)];
        memchr::memchr(0, head).is_some()
    }

    /// The contents as text, if they are not binary and are valid UTF-8. The UTF-8
    /// check runs once per cached version.
    pub fn text(&self) -> Option<&str> {
        if self.is_binary() {
            return None;
        }
        let ok = *self
            .utf8
            .get_or_init(|| std::str::from_utf8(&self.bytes).is_ok());
        // SAFETY: `ok` records that these very (immutable) bytes passed `from_utf8`.
        ok.then(|| unsafe { std::str::from_utf8_unchecked(&self.bytes) })
    }

    /// Lines in the contents (a last line without a newline counts), counted once
    /// per cached version: a hit would otherwise scan the whole file again.
    pub fn line_count(&self) -> usize {
        *self.lines.get_or_init(|| count_lines(&self.bytes))
    }
}

/// Lines as an editor counts them: the newlines of `text`, plus one for an
/// unterminated last line.
pub fn count_lines(text: &[u8]) -> usize {
    let newlines = memchr::memchr_iter(b'\n', text).count();
    newlines + usize::from(!text.is_empty() && !text.ends_with(b"\n"))
}

/// Why a file could not be served.
#[derive(Debug)]
pub enum FileError {
    NotFound,
    NotAFile,
    TooLarge(u64),
    Io(io::Error),
}

impl FileError {
    fn from_io(e: io::Error) -> FileError {
        match e.kind() {
            io::ErrorKind::NotFound => FileError::NotFound,
            _ => FileError::Io(e),
        }
    }

    /// A message naming the file as the client knows it.
    pub fn describe(&self, display: &str) -> String {
        match self {
            FileError::NotFound => format!("`{display}` does not exist (it may have been deleted)"),
            FileError::NotAFile => format!("`{display}` is not a regular file; use list_directory for directories"),
            FileError::TooLarge(n) => format!(
                "`{display}` is {n} bytes, over the {MAX_FILE_BYTES}-byte limit for reading; use search_code to find what you need in it"
            ),
            FileError::Io(e) => format!("cannot read `{display}`: {e}"),
        }
    }
}

/// Hit, miss and eviction counts, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries dropped to make room (not those dropped because the file changed).
    pub evictions: u64,
}

struct Entry {
    file: Rc<CachedFile>,
    /// When the entry was last used.
    used: u64,
    /// The tick its record in `order` is filed under: `used` as of the last time
    /// eviction looked at it, so never later than `used`.
    filed: u64,
}

#[derive(Default)]
struct Inner {
    /// Keyed by the path's bytes: paths here are canonical, so byte equality is
    /// path equality, and hashing bytes is several times cheaper than hashing a
    /// `Path` component by component (callgrind: the largest self cost of a
    /// read_file request before).
    map: HashMap<Box<[u8]>, Entry>,
    /// Recency order: tick → path, one record per entry. A hit only moves the
    /// entry's `used`; eviction re-files a record it finds out of date and
    /// evicts the first that is not, which is the least recently used entry.
    /// This keeps two tree operations (and an allocation) off every hit.
    order: BTreeMap<u64, Box<[u8]>>,
    bytes: usize,
    tick: u64,
}

/// The cache. Shard-local, so interior mutability without locks; no borrow is ever
/// held across an `.await`.
pub struct FileCache {
    inner: RefCell<Inner>,
    capacity: usize,
    /// The coarse wall clock, in ns since the epoch; a field so tests can move it.
    now_ns: Cell<fn() -> i128>,
    stats: Cell<CacheStats>,
}

impl FileCache {
    pub fn new(capacity: usize) -> FileCache {
        FileCache {
            inner: RefCell::default(),
            capacity,
            now_ns: Cell::new(coarse_now_ns),
            stats: Cell::default(),
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.stats.get()
    }

    /// Moves the clock that decides what is "racily" recent, so tests can treat
    /// files they just wrote as settled.
    #[doc(hidden)]
    pub fn set_clock(&self, now_ns: fn() -> i128) {
        self.now_ns.set(now_ns);
    }

    /// Bytes currently cached.
    pub fn bytes(&self) -> usize {
        self.inner.borrow().bytes
    }

    /// The current contents of a regular file at a canonical path.
    pub async fn read(&self, path: &Path) -> Result<Rc<CachedFile>, FileError> {
        self.read_checked(path, None, true).await
    }

    /// As [`read`](Self::read); with `use_cache` false the file is read from disk
    /// and neither looked up nor kept (a tool configured with `cache = false`).
    pub async fn read_with(
        &self,
        path: &Path,
        use_cache: bool,
    ) -> Result<Rc<CachedFile>, FileError> {
        self.read_checked(path, None, use_cache).await
    }

    /// [`read_with`](Self::read_with), given the fingerprint of the regular file at
    /// `path` that the caller took just now (path resolution `lstat`s it), which
    /// saves the `stat` a hit otherwise pays. `None`: stat it here.
    pub async fn read_checked(
        &self,
        path: &Path,
        known: Option<Fingerprint>,
        use_cache: bool,
    ) -> Result<Rc<CachedFile>, FileError> {
        let fp = match known {
            Some(fp) => fp,
            None => {
                let meta = match std::fs::metadata(path) {
                    Ok(m) => m,
                    Err(e) => {
                        self.remove(path);
                        return Err(FileError::from_io(e));
                    }
                };
                if !meta.is_file() {
                    self.remove(path);
                    return Err(FileError::NotAFile);
                }
                Fingerprint::of(&meta)
            }
        };
        if use_cache {
            if let Some(hit) = self.lookup(path, &fp) {
                return Ok(hit);
            }
        }
        // Boxed: the blocking read's state would otherwise make this future,
        // and every future awaiting it, ~0.9 KB larger on the hit path too,
        // past mimalloc's small-object size for the call's boxed future.
        Box::pin(self.read_miss(path, fp, use_cache)).await
    }

    /// The miss path of [`read_checked`](Self::read_checked): reads the file and
    /// keeps it when it may.
    async fn read_miss(
        &self,
        path: &Path,
        fp: Fingerprint,
        use_cache: bool,
    ) -> Result<Rc<CachedFile>, FileError> {
        super::bump(&self.stats, |s| s.misses += 1);
        if fp.size > MAX_FILE_BYTES {
            return Err(FileError::TooLarge(fp.size));
        }
        let loaded = if fp.size <= INLINE_READ_MAX_BYTES {
            load(path)
        } else {
            let owned = path.to_path_buf();
            crate::shard::offload(move || load(&owned)).await
        }
        .map_err(FileError::from_io)?;
        let file = Rc::new(CachedFile::new(loaded.bytes, loaded.fingerprint));
        if file.bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(FileError::TooLarge(file.bytes.len() as u64));
        }
        let racy = loaded.fingerprint.changed_ns() + RACY_WINDOW.as_nanos() as i128
            >= (self.now_ns.get())();
        if use_cache
            && loaded.stable
            && !racy
            && file.bytes.len() <= self.capacity / MAX_CACHED_FILE_FRACTION
        {
            self.insert(path, file.clone());
        } else {
            self.remove(path);
        }
        Ok(file)
    }

    fn lookup(&self, path: &Path, fp: &Fingerprint) -> Option<Rc<CachedFile>> {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let entry = inner.map.get_mut(key(path))?;
        if entry.file.fingerprint != *fp {
            return None;
        }
        inner.tick += 1;
        entry.used = inner.tick;
        let file = entry.file.clone();
        drop(guard);
        super::bump(&self.stats, |s| s.hits += 1);
        Some(file)
    }

    /// Escapes a cached version's whole text as a JSON string once and keeps it
    /// with the entry, so that every later answer sending the whole file copies it
    /// instead of escaping it again. The kept copy counts against the cache's
    /// bound like the contents, and leaves with the entry. Nothing is kept for a
    /// version that is not (or no longer) in the cache, for text whose entry would
    /// then pass [`MAX_CACHED_FILE_FRACTION`], or for a file that is not text.
    pub fn keep_json(&self, file: &CachedFile) {
        if !file.in_cache.get() || file.json.borrow().is_some() {
            return;
        }
        let Some(text) = file.text() else {
            return;
        };
        // Escaping adds at least the two quotes; skip the work when that much
        // would already pass the bound.
        let bound = self.capacity / MAX_CACHED_FILE_FRACTION;
        if file.bytes.len() + text.len() + 2 > bound {
            return;
        }
        let mut json = Vec::with_capacity(text.len() + 2);
        file.write_json_text(&mut json);
        if file.bytes.len() + json.len() > bound {
            return;
        }
        let extra = json.len();
        let mut inner = self.inner.borrow_mut();
        let evicted = make_room(&mut inner, extra, self.capacity);
        // Room is made oldest first; the version being sent is never the oldest
        // unless it is the only entry, and then it fits by the bound above.
        if file.in_cache.get() {
            *file.json.borrow_mut() = Some(json.into_boxed_slice());
            inner.bytes += extra;
        }
        drop(inner);
        if evicted > 0 {
            super::bump(&self.stats, |s| s.evictions += evicted);
        }
    }

    fn remove(&self, path: &Path) {
        let mut inner = self.inner.borrow_mut();
        if let Some(old) = inner.map.remove(key(path)) {
            inner.order.remove(&old.filed);
            inner.bytes -= forget(&old.file);
        }
    }

    fn insert(&self, path: &Path, file: Rc<CachedFile>) {
        self.remove(path);
        let mut inner = self.inner.borrow_mut();
        let size = file.bytes.len();
        let evicted = make_room(&mut inner, size, self.capacity);
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.insert(tick, key(path).into());
        debug_assert_eq!(file.extra_bytes(), 0, "a new version keeps nothing yet");
        file.in_cache.set(true);
        inner.map.insert(
            key(path).into(),
            Entry {
                file,
                used: tick,
                filed: tick,
            },
        );
        inner.bytes += size;
        drop(inner);
        if evicted > 0 {
            super::bump(&self.stats, |s| s.evictions += evicted);
        }
    }
}

/// Evicts least recently used entries until `size` more bytes fit; returns how
/// many went.
fn make_room(inner: &mut Inner, size: usize, capacity: usize) -> u64 {
    let mut evicted = 0;
    while inner.bytes + size > capacity {
        let Some((filed, victim)) = inner.order.pop_first() else {
            break;
        };
        let entry = inner
            .map
            .get_mut(&victim)
            .expect("every ordered path is mapped");
        debug_assert_eq!(entry.filed, filed);
        if entry.used > filed {
            // Used since it was filed: file it again where it belongs.
            entry.filed = entry.used;
            let used = entry.used;
            inner.order.insert(used, victim);
            continue;
        }
        let old = inner.map.remove(&victim).expect("just found");
        inner.bytes -= forget(&old.file);
        evicted += 1;
    }
    evicted
}

/// Marks a version as out of the cache and drops what it kept for the cache;
/// returns the bytes the cache counted for it. A search snapshot may still hold
/// the version's contents, but no longer its JSON copy.
fn forget(file: &CachedFile) -> usize {
    let counted = file.bytes.len() + file.extra_bytes();
    file.in_cache.set(false);
    file.json.borrow_mut().take();
    counted
}

/// The map key of a path.
fn key(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

struct Loaded {
    bytes: Box<[u8]>,
    fingerprint: Fingerprint,
    /// Both `fstat`s agreed: nothing changed the file while it was read.
    stable: bool,
}

/// Reads a file between two `fstat`s of the open descriptor.
fn load(path: &Path) -> io::Result<Loaded> {
    let file = File::open(path)?;
    let before = Fingerprint::of(&file.metadata()?);
    let mut bytes = Vec::with_capacity(before.size.min(MAX_FILE_BYTES) as usize);
    (&file).take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    let after = Fingerprint::of(&file.metadata()?);
    Ok(Loaded {
        fingerprint: before,
        stable: before == after && after.size == bytes.len() as u64,
        bytes: bytes.into_boxed_slice(),
    })
}

/// `CLOCK_REALTIME_COARSE`: the clock the kernel stamps inodes with.
pub(crate) fn coarse_now_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_REALTIME_COARSE is available on Linux");
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// A clock an hour ahead of [`coarse_now_ns`]: every file looks settled, so the
/// caches that refuse "racily" recent files keep what tests just wrote.
#[cfg(test)]
pub(crate) fn an_hour_ahead() -> i128 {
    coarse_now_ns() + 3600 * 1_000_000_000
}

#[cfg(test)]
impl CachedFile {
    /// A file of `bytes`, not read from anywhere (its fingerprint is `/`'s).
    pub(crate) fn for_test(bytes: &[u8]) -> CachedFile {
        CachedFile::new(
            bytes.into(),
            Fingerprint::of(&std::fs::metadata("/").unwrap()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::FileTimes;
    use std::path::PathBuf;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutor::default().run(f)
    }

    #[test]
    fn hit_then_invalidated_by_change_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.txt");
        std::fs::write(&p, "one").unwrap();
        let cache = FileCache::new(1024);
        cache.set_clock(an_hour_ahead);
        run(async {
            assert_eq!(&*cache.read(&p).await.unwrap().bytes, b"one");
            assert_eq!(&*cache.read(&p).await.unwrap().bytes, b"one");
            assert_eq!(
                cache.stats(),
                CacheStats {
                    hits: 1,
                    misses: 1,
                    evictions: 0
                }
            );
            std::fs::write(&p, "two!").unwrap();
            assert_eq!(&*cache.read(&p).await.unwrap().bytes, b"two!");
            std::fs::remove_file(&p).unwrap();
            assert!(matches!(cache.read(&p).await, Err(FileError::NotFound)));
            assert_eq!(cache.bytes(), 0);
        });
    }

    #[test]
    fn same_size_same_second_rewrite_is_not_served_stale() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.txt");
        std::fs::write(&p, "aaaa").unwrap();
        let cache = FileCache::new(1024);
        run(async {
            assert_eq!(&*cache.read(&p).await.unwrap().bytes, b"aaaa");
            // In place, same length, and force the very same mtime back.
            let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
            std::fs::write(&p, "bbbb").unwrap();
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_times(FileTimes::new().set_modified(mtime))
                .unwrap();
            assert_eq!(&*cache.read(&p).await.unwrap().bytes, b"bbbb");
        });
    }

    #[test]
    fn kept_json_is_counted_and_leaves_with_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let text = "say \"hi\"\n\ttab";
        std::fs::write(&a, text).unwrap();
        let json = serde_json::to_vec(text).unwrap();
        // 400 bytes hold a (13 + its 19 JSON bytes) and eight 45-byte files.
        let cache = FileCache::new(400);
        cache.set_clock(an_hour_ahead);
        run(async {
            let first = cache.read(&a).await.unwrap();
            cache.keep_json(&first);
            cache.keep_json(&first);
            assert_eq!(cache.bytes(), text.len() + json.len());
            let mut out = Vec::new();
            cache.read(&a).await.unwrap().write_json_text(&mut out);
            assert_eq!(out, json);

            // The ninth evicts a, and a's JSON goes with it: 8 * 45 stay.
            for i in 0..10 {
                let p = dir.path().join(format!("b{i}.txt"));
                std::fs::write(&p, "b".repeat(45)).unwrap();
                cache.read(&p).await.unwrap();
            }
            assert_eq!(cache.bytes(), 8 * 45);
            assert_eq!(first.extra_bytes(), 0);
            // An evicted version keeps nothing more, and still writes its text.
            cache.keep_json(&first);
            assert_eq!((cache.bytes(), first.extra_bytes()), (8 * 45, 0));
            out.clear();
            first.write_json_text(&mut out);
            assert_eq!(out, json);
        });
    }

    #[test]
    fn json_that_would_pass_the_entry_bound_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ctl.txt");
        // Control characters escape to six bytes each: 10 + 62 > 400 / 8.
        std::fs::write(&p, "\u{1}".repeat(10)).unwrap();
        let cache = FileCache::new(400);
        cache.set_clock(an_hour_ahead);
        run(async {
            let f = cache.read(&p).await.unwrap();
            cache.keep_json(&f);
            assert_eq!((cache.bytes(), f.extra_bytes()), (10, 0));
            let mut out = Vec::new();
            f.write_json_text(&mut out);
            assert_eq!(out, serde_json::to_vec(&"\u{1}".repeat(10)).unwrap());
        });
    }

    #[test]
    fn recently_changed_files_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.txt");
        std::fs::write(&p, "x").unwrap();
        let cache = FileCache::new(1024);
        run(async {
            cache.read(&p).await.unwrap();
            cache.read(&p).await.unwrap();
        });
        // The ctime is "now", inside the racy window, whatever the mtime says.
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 0,
                misses: 2,
                evictions: 0
            }
        );
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..9).map(|i| dir.path().join(format!("{i}"))).collect();
        for p in &paths {
            std::fs::write(p, [b'x'; 10]).unwrap();
        }
        // Room for eight 10-byte files; each is exactly the largest cacheable entry.
        let cache = FileCache::new(10 * MAX_CACHED_FILE_FRACTION);
        cache.set_clock(an_hour_ahead);
        run(async {
            for p in &paths[..8] {
                cache.read(p).await.unwrap();
            }
            assert_eq!(cache.bytes(), 80);
            cache.read(&paths[0]).await.unwrap(); // hit: 0 is now the most recent
            cache.read(&paths[8]).await.unwrap(); // evicts 1, the least recent
            assert_eq!(cache.bytes(), 80);
            let before = cache.stats();
            cache.read(&paths[0]).await.unwrap();
            assert_eq!(cache.stats().hits, before.hits + 1);
            cache.read(&paths[1]).await.unwrap();
            assert_eq!(cache.stats().misses, before.misses + 1);
        });
    }

    #[test]
    fn binary_and_utf8() {
        let f = CachedFile::for_test;
        assert_eq!(f(b"h\xc3\xa9").text(), Some("hé"));
        assert!(f(b"a\0b").is_binary());
        assert_eq!(f(b"a\0b").text(), None);
        assert_eq!(f(b"\xff\xfe").text(), None);
    }
}
