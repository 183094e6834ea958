//! Shard-local storage: the roots, the file cache and the SQLite connection sets.
//!
//! A shard owns one [`Storage`]; tools borrow it through the shard, so the hot path
//! takes no lock. Everything here uses `Cell`/`RefCell` and must never hold a borrow
//! across an `.await`.

pub mod db;
pub mod file_cache;
pub mod roots;
pub mod tree_cache;

use crate::config::Config;

use db::Databases;
use file_cache::{FileCache, DEFAULT_FILE_CACHE_BYTES};
use roots::Roots;
use tree_cache::TreeCache;

pub struct Storage {
    pub roots: Roots,
    pub files: FileCache,
    pub dbs: Databases,
    pub trees: TreeCache,
}

impl Storage {
    pub fn new(config: &Config) -> Result<Storage, String> {
        Ok(Storage {
            roots: Roots::new(config.roots.clone()),
            files: FileCache::new(DEFAULT_FILE_CACHE_BYTES),
            dbs: Databases::new(&config.databases)?,
            trees: TreeCache::default(),
        })
    }
}
