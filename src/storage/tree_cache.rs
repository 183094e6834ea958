//! A shard-local cache of directory walks for `search_code`.
//!
//! Walking a tree (reading every directory and matching ignore rules) costs far more
//! than checking that it has not changed. A walk therefore records a fingerprint of
//! every directory it read and of every ignore file that shaped it; reusing it costs
//! one `stat` per recorded path. Any difference — an entry added, removed or renamed
//! (the directory's mtime), an ignore file edited in place — means a fresh walk.
//! Ancestors of the walked directory (up to its root) are checked for their ignore
//! files only, present or absent, because the walker reads those too.
//!
//! A directory changed within [`RACY_WINDOW`] of the walk may change again with
//! the same timestamp (see the file cache), so such a walk is used once and not
//! reused.
//!
//! Walks and large revalidations run on glommio's blocking pool; small
//! revalidations on the shard.
//!
//! Walking follows ripgrep's defaults: `.gitignore`, `.ignore` and
//! `.git/info/exclude` are respected, hidden files are skipped, symlinks are not
//! followed (and not listed). One deliberate difference: `.gitignore` is honoured
//! outside git repositories too, so a root that is a copy of a repository behaves
//! like the repository.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hashbrown::HashMap;
use ignore::WalkBuilder;

use super::file_cache::{coarse_now_ns, Fingerprint, RACY_WINDOW};

/// Files one walk lists; a larger tree is searched in part and the answer says so.
pub const MAX_WALK_FILES: usize = 200_000;
/// Walks cached per shard by default (`cache.trees`); the least recently used goes
/// first.
pub const MAX_CACHED_TREES: usize = 16;
/// Trees with at most this many recorded paths are revalidated on the shard.
pub const INLINE_VALIDATE_PATHS: usize = 256;
/// Ignore files that shape a walk, relative to each directory.
const IGNORE_FILES: &[&str] = &[".gitignore", ".ignore", ".git/info/exclude"];

/// The files under one directory, as of one walk.
#[derive(Debug)]
pub struct Tree {
    /// Regular files, sorted, all inside the walked directory.
    pub files: Vec<PathBuf>,
    /// The walk stopped at [`MAX_WALK_FILES`].
    pub truncated: bool,
    /// Paths whose fingerprint must be unchanged (or still absent) for reuse.
    watched: Vec<(PathBuf, Option<Fingerprint>)>,
    /// Something watched changed too recently for its fingerprint to be trusted.
    racy: bool,
}

fn fingerprint(p: &Path) -> Option<Fingerprint> {
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| Fingerprint::of(&m))
}

impl Tree {
    /// Walks `dir`; `root` is the root containing it (ancestors up to it are watched).
    pub fn walk(dir: &Path, root: &Path, now_ns: fn() -> i128) -> Tree {
        let mut watched = Vec::new();
        for ancestor in dir.ancestors().skip(1).take_while(|a| a.starts_with(root)) {
            for name in IGNORE_FILES {
                let p = ancestor.join(name);
                let fp = fingerprint(&p);
                watched.push((p, fp));
            }
        }
        let mut files = Vec::new();
        let mut truncated = false;
        let walker = WalkBuilder::new(dir)
            .follow_links(false)
            .hidden(true)
            .parents(true)
            .require_git(false)
            .build();
        for entry in walker.filter_map(Result::ok) {
            let Some(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                watched.push((path.to_path_buf(), fingerprint(path)));
                for name in IGNORE_FILES {
                    let p = path.join(name);
                    match fingerprint(&p) {
                        Some(fp) => watched.push((p, Some(fp))),
                        // A new .gitignore or .ignore changes this directory's own
                        // mtime, so its absence needs no watch; a new
                        // .git/info/exclude changes only .git/info's, so in a
                        // repository its absence is watched too.
                        None if *name == ".git/info/exclude" && path.join(".git").is_dir() => {
                            watched.push((p, None))
                        }
                        None => {}
                    }
                }
            } else if kind.is_file() && path.starts_with(dir) {
                if files.len() == MAX_WALK_FILES {
                    truncated = true;
                    break;
                }
                files.push(path.to_path_buf());
            }
        }
        files.sort_unstable();
        let window = RACY_WINDOW.as_nanos() as i128;
        let now = now_ns();
        let racy = watched
            .iter()
            .any(|(_, fp)| fp.is_some_and(|f| f.changed_ns() + window >= now));
        Tree {
            files,
            truncated,
            watched,
            racy,
        }
    }

    /// The existing directories whose entries this walk depends on: every
    /// directory it read, and those holding the ignore files it consulted (or,
    /// for an absent one, the nearest existing ancestor, where its creation
    /// would show). What a search snapshot watches.
    pub fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (p, _) in &self.watched {
            let ignore_file = IGNORE_FILES.iter().any(|name| p.ends_with(name));
            let mut d = if ignore_file {
                p.parent().map(Path::to_path_buf)
            } else {
                Some(p.clone())
            };
            while let Some(candidate) = d {
                if candidate.is_dir() {
                    dirs.push(candidate);
                    break;
                }
                d = candidate.parent().map(Path::to_path_buf);
            }
        }
        dirs.sort_unstable();
        dirs.dedup();
        dirs
    }

    /// Whether nothing recorded has changed since the walk.
    pub fn is_fresh(&self) -> bool {
        !self.racy && self.watched.iter().all(|(p, fp)| fingerprint(p) == *fp)
    }
}

/// Hit and miss counts, for tests and stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub reused: u64,
    pub walked: u64,
    pub evictions: u64,
}

/// The cache: walked directory → its latest walk.
pub struct TreeCache {
    trees: RefCell<HashMap<PathBuf, (Arc<Tree>, u64)>>,
    tick: Cell<u64>,
    stats: Cell<TreeStats>,
    /// The coarse wall clock; a field so tests can move it.
    now_ns: Cell<fn() -> i128>,
    capacity: usize,
}

impl Default for TreeCache {
    fn default() -> Self {
        TreeCache::new(MAX_CACHED_TREES)
    }
}

impl TreeCache {
    /// A cache of at most `capacity` walks (at least one).
    pub fn new(capacity: usize) -> TreeCache {
        TreeCache {
            trees: RefCell::default(),
            tick: Cell::new(0),
            stats: Cell::default(),
            now_ns: Cell::new(coarse_now_ns),
            capacity: capacity.max(1),
        }
    }

    /// Moves the clock that decides what is "racily" recent, so tests can treat
    /// files they just wrote as settled.
    #[doc(hidden)]
    pub fn set_clock(&self, now_ns: fn() -> i128) {
        self.now_ns.set(now_ns);
    }

    /// Walks cached now.
    pub fn len(&self) -> usize {
        self.trees.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> TreeStats {
        self.stats.get()
    }

    /// The current file list under `dir` (canonical, inside `root`).
    pub async fn files(&self, dir: &Path, root: &Path) -> Arc<Tree> {
        self.files_with(dir, root, true).await
    }

    /// As [`files`](Self::files); with `use_cache` false the tree is walked afresh
    /// and the walk is not kept.
    pub async fn files_with(&self, dir: &Path, root: &Path, use_cache: bool) -> Arc<Tree> {
        if !use_cache {
            let (dir, root, now) = (dir.to_path_buf(), root.to_path_buf(), self.now_ns.get());
            self.count(true);
            return crate::shard::offload(move || Arc::new(Tree::walk(&dir, &root, now))).await;
        }
        let cached = self.trees.borrow().get(dir).map(|(t, _)| t.clone());
        let small = cached
            .as_ref()
            .is_some_and(|t| t.watched.len() <= INLINE_VALIDATE_PATHS);
        let tree = match cached {
            Some(t) if small && t.is_fresh() => {
                self.count(false);
                t
            }
            cached => {
                let (dir, root, now) = (dir.to_path_buf(), root.to_path_buf(), self.now_ns.get());
                let (walked, t) = crate::shard::offload(move || match cached {
                    Some(t) if !small && t.is_fresh() => (false, t),
                    _ => (true, Arc::new(Tree::walk(&dir, &root, now))),
                })
                .await;
                self.count(walked);
                t
            }
        };
        self.remember(dir, tree.clone());
        tree
    }

    fn count(&self, walked: bool) {
        super::bump(&self.stats, |s| {
            if walked {
                s.walked += 1;
            } else {
                s.reused += 1;
            }
        });
    }

    fn remember(&self, dir: &Path, tree: Arc<Tree>) {
        let tick = self.tick.get() + 1;
        self.tick.set(tick);
        let mut trees = self.trees.borrow_mut();
        trees.insert(dir.to_path_buf(), (tree, tick));
        if trees.len() > self.capacity {
            let oldest = trees
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(p, _)| p.clone());
            if let Some(p) = oldest {
                trees.remove(&p);
                super::bump(&self.stats, |s| s.evictions += 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn reuses_until_the_tree_or_its_ignore_rules_change() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        fs::create_dir_all(root.join("src/deep")).unwrap();
        fs::write(root.join("src/a.rs"), "").unwrap();
        fs::write(root.join("src/deep/b.rs"), "").unwrap();
        fs::write(root.join("skip.log"), "").unwrap();
        fs::write(root.join(".hidden"), "").unwrap();
        fs::write(root.join(".gitignore"), "*.log\n").unwrap();
        let cache = TreeCache {
            now_ns: Cell::new(crate::storage::file_cache::an_hour_ahead),
            ..TreeCache::default()
        };
        let names = |t: &Tree| -> Vec<String> {
            t.files
                .iter()
                .map(|p| {
                    p.strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        glommio::LocalExecutor::default().run(async {
            let t = cache.files(&root, &root).await;
            assert_eq!(names(&t), ["src/a.rs", "src/deep/b.rs"]);
            cache.files(&root, &root).await;
            assert_eq!(
                cache.stats(),
                TreeStats {
                    reused: 1,
                    walked: 1,
                    evictions: 0
                }
            );

            fs::write(root.join("src/deep/c.rs"), "").unwrap();
            let t = cache.files(&root, &root).await;
            assert_eq!(names(&t), ["src/a.rs", "src/deep/b.rs", "src/deep/c.rs"]);
            assert_eq!(cache.stats().walked, 2);

            // An in-place edit of an ignore file changes no directory's mtime.
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(root.join(".gitignore"))
                .unwrap();
            let t = cache.files(&root, &root).await;
            assert_eq!(
                names(&t),
                ["skip.log", "src/a.rs", "src/deep/b.rs", "src/deep/c.rs"]
            );

            // A subdirectory walk watches the root's ignore file too.
            let sub = root.join("src");
            assert_eq!(names(&*cache.files(&sub, &root).await).len(), 3);
            fs::write(root.join(".gitignore"), "c.rs\n").unwrap();
            assert_eq!(
                names(&*cache.files(&sub, &root).await),
                ["src/a.rs", "src/deep/b.rs"]
            );
        });
    }

    #[test]
    fn a_new_git_info_exclude_invalidates_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join(".git/info")).unwrap();
        std::fs::write(root.join("keep.rs"), "a").unwrap();
        std::fs::write(root.join("secret.rs"), "b").unwrap();
        // A clock an hour ahead, so nothing just written counts as racy.
        let later = crate::storage::file_cache::an_hour_ahead;
        let tree = Tree::walk(&root, &root, later);
        assert_eq!(tree.files.len(), 2);
        assert!(tree.is_fresh());
        std::fs::write(root.join(".git/info/exclude"), "secret.rs\n").unwrap();
        assert!(
            !tree.is_fresh(),
            "the new exclude file must force a fresh walk"
        );
        let again = Tree::walk(&root, &root, later);
        assert_eq!(again.files, vec![root.join("keep.rs")]);
    }

    #[test]
    fn a_tree_changed_just_now_is_walked_again() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        fs::write(root.join("a.rs"), "").unwrap();
        let cache = TreeCache::default();
        glommio::LocalExecutor::default().run(async {
            cache.files(&root, &root).await;
            cache.files(&root, &root).await;
        });
        assert_eq!(
            cache.stats(),
            TreeStats {
                reused: 0,
                walked: 2,
                evictions: 0
            }
        );
    }

    #[test]
    fn does_not_follow_symlinks_out() {
        let d = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        fs::write(out.path().join("secret.rs"), "").unwrap();
        std::os::unix::fs::symlink(out.path(), d.path().join("link")).unwrap();
        std::os::unix::fs::symlink(out.path().join("secret.rs"), d.path().join("f.rs")).unwrap();
        let root = d.path().canonicalize().unwrap();
        let t = Tree::walk(&root, &root, coarse_now_ns);
        assert!(t.files.is_empty(), "{:?}", t.files);
    }
}
