//! Shard-local storage: the roots, the file cache, the walk cache and search
//! snapshots, search_code's compiled queries, the SQLite connection sets and
//! their answer cache.
//!
//! A shard owns one [`Storage`]; tools borrow it through the shard, so the hot path
//! takes no lock. Everything here uses `Cell`/`RefCell` and must never hold a borrow
//! across an `.await`.

pub mod db;
pub mod file_cache;
pub mod grams;
pub mod patterns;
pub mod query_cache;
pub mod resolutions;
pub mod roots;
pub mod tree_cache;
pub mod watch;

use std::cell::Cell;

use crate::config::Config;

use db::Databases;
use file_cache::FileCache;
use patterns::Patterns;
use resolutions::Resolutions;
use roots::Roots;
use tree_cache::TreeCache;
use watch::Snapshots;

pub struct Storage {
    pub roots: Roots,
    pub files: FileCache,
    pub dbs: Databases,
    pub trees: TreeCache,
    /// Search snapshots, kept fresh by inotify.
    pub snapshots: Snapshots,
    /// Read paths' resolutions, kept fresh by the same inotify descriptor.
    pub resolutions: Resolutions,
    /// search_code's queries, compiled.
    pub patterns: Patterns,
}

impl Storage {
    pub fn new(config: &Config) -> Result<Storage, String> {
        Ok(Storage {
            roots: Roots::new(config.roots.clone()),
            files: FileCache::new(config.cache.file_bytes),
            dbs: Databases::new(&config.databases, &config.cache)?,
            trees: TreeCache::new(config.cache.trees),
            snapshots: Snapshots::new(config.cache.trees, config.cache.file_bytes),
            resolutions: Resolutions::new(resolutions::MAX_RESOLUTIONS),
            patterns: Patterns::new(config.cache.search_patterns),
        })
    }
}

/// Updates a cache's shard-local counts in place (they live in a `Cell`, read
/// whole by `stats()` and the metrics).
pub(crate) fn bump<T: Copy>(stats: &Cell<T>, f: impl FnOnce(&mut T)) {
    let mut s = stats.get();
    f(&mut s);
    stats.set(s);
}
