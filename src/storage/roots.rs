//! Path resolution inside the configured roots: the one place that decides whether
//! a path a client sent may be touched.
//!
//! A path is relative to the first root, or absolute inside any root. It is checked
//! twice: lexically before the filesystem is touched (so `../../etc/x` is refused
//! without learning whether `/etc/x` exists), and again after `canonicalize` has
//! resolved every symlink (so a link pointing out of the roots is refused too).
//! Refusals name only what the client sent, never the resolved outside path.

use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use super::file_cache::Fingerprint;

/// The roots a shard serves, canonicalised.
#[derive(Clone, Debug)]
pub struct Roots {
    roots: Vec<PathBuf>,
}

/// A path that exists and whose real location is inside a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The canonical path: no symlinks, no `..`.
    pub real: PathBuf,
    /// How the path is shown to the client: relative to the first root when it lies
    /// under it, else the (in-root) absolute path.
    pub display: String,
    /// The fingerprint of a regular file found by the `lstat`s of resolution, so
    /// that the file cache need not `stat` it again; `None` when not known.
    pub file: Option<Fingerprint>,
}

/// Why a path was refused or could not be resolved. Each message says what was
/// refused and what to do instead.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    NoRoots,
    Empty,
    NulByte,
    Outside(String),
    NotFound(String),
    Io(String, String),
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathError::NoRoots => write!(f, "no roots are configured; this server serves no files"),
            PathError::Empty => write!(f, "path is empty; pass a path relative to the first root, or \".\""),
            PathError::NulByte => write!(f, "path refused: it contains a NUL byte"),
            PathError::Outside(p) => write!(
                f,
                "path refused: `{p}` is outside the allowed roots (after resolving `..` and symlinks); \
                 use a path relative to the first root or an absolute path inside a root"
            ),
            PathError::NotFound(p) => write!(f, "`{p}` does not exist; list_directory shows what does"),
            PathError::Io(p, e) => write!(f, "cannot access `{p}`: {e}"),
        }
    }
}

impl Roots {
    /// `roots` must already be canonical (the config canonicalises them at start-up).
    pub fn new(roots: Vec<PathBuf>) -> Roots {
        Roots { roots }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Whether a canonical path lies inside some root.
    pub fn contains(&self, real: &Path) -> bool {
        self.roots.iter().any(|r| real.starts_with(r))
    }

    /// The root a canonical path lies in, the deepest if roots nest.
    pub fn root_of(&self, real: &Path) -> Option<&Path> {
        self.roots
            .iter()
            .filter(|r| real.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
            .map(|r| r.as_path())
    }

    /// How a canonical in-root path is shown to the client.
    pub fn display(&self, real: &Path) -> String {
        // Both paths are canonical (no `.`, `..`, `//` or trailing `/`), so a byte
        // prefix that ends at a `/` is a component prefix: no `Components` to
        // parse, which search_code pays for on every file with a match.
        let rest = self.roots.first().and_then(|root| {
            let root = root.as_os_str().as_bytes();
            match real.as_os_str().as_bytes().strip_prefix(root)? {
                rest if root.ends_with(b"/") => Some(rest),
                [] => Some(&[][..]),
                [b'/', rest @ ..] => Some(rest),
                _ => None,
            }
        });
        match rest {
            Some([]) => ".".to_string(),
            Some(rel) => String::from_utf8_lossy(rel).into_owned(),
            None => real.to_string_lossy().into_owned(),
        }
    }

    /// Resolves a client path to an existing in-root location.
    pub fn resolve(&self, path: &str) -> Result<Resolved, PathError> {
        let first = self.roots.first().ok_or(PathError::NoRoots)?;
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.as_bytes().contains(&0) {
            return Err(PathError::NulByte);
        }
        if let Some(fast) = self.resolve_plain(first, path) {
            return Ok(fast);
        }
        let joined = first.join(path);
        let lexical = normalize(&joined).ok_or_else(|| PathError::Outside(path.to_string()))?;
        if !self.contains(&lexical) {
            return Err(PathError::Outside(path.to_string()));
        }
        if let Some((real, file)) = self.unaliased(&lexical) {
            let display = self.display(&real);
            return Ok(Resolved {
                real,
                display,
                file,
            });
        }
        match lexical.canonicalize() {
            Ok(real) if self.contains(&real) => {
                let display = self.display(&real);
                Ok(Resolved {
                    real,
                    display,
                    file: None,
                })
            }
            Ok(_) => Err(PathError::Outside(path.to_string())),
            Err(e) => Err(self.explain_failure(&lexical, path, e)),
        }
    }

    /// The commonest call, `dir/file.rs` relative to the first root, without any
    /// `Path` machinery: a path of plain names (no empty, `.` or `..` component,
    /// not absolute) is already normal and inside the first root, so only its
    /// symlinks remain to check, with one `lstat` per component as in
    /// [`unaliased`](Self::unaliased), and it is its own display form. Iterating
    /// and comparing `Path` components cost more than the `lstat` on a cached
    /// read_file. `None` sends the path down the general path, which also makes
    /// every refusal and error message.
    fn resolve_plain(&self, root: &Path, path: &str) -> Option<Resolved> {
        let rel = path.as_bytes();
        if rel.first() == Some(&b'/')
            || rel
                .split(|b| *b == b'/')
                .any(|name| matches!(name, b"" | b"." | b".."))
        {
            return None;
        }
        let root = root.as_os_str().as_bytes();
        let mut real = Vec::with_capacity(root.len() + 1 + rel.len());
        real.extend_from_slice(root);
        if real.last() != Some(&b'/') {
            real.push(b'/');
        }
        let base = real.len();
        real.extend_from_slice(rel);
        let mut file = None;
        let ends = memchr::memchr_iter(b'/', rel).chain(std::iter::once(rel.len()));
        for end in ends {
            let prefix = Path::new(std::ffi::OsStr::from_bytes(&real[..base + end]));
            let meta = std::fs::symlink_metadata(prefix).ok()?;
            if meta.file_type().is_symlink() {
                return None;
            }
            file = meta.is_file().then(|| Fingerprint::of(&meta));
        }
        Some(Resolved {
            real: PathBuf::from(std::ffi::OsString::from_vec(real)),
            display: path.to_string(),
            file,
        })
    }

    /// The fast path of [`resolve`](Self::resolve): a normalised path below a
    /// (canonical) root none of whose components below the root is a symlink is
    /// already canonical. Checking that costs one `lstat` per component below the
    /// root, where `realpath` pays one per component of the whole path (4 µs
    /// instead of 1 µs for a file at the top of a root on the benchmark VM).
    /// `None` (take the slow path) for the root itself, a symlink, or an error.
    /// Also returns the last component's fingerprint when it is a regular file.
    fn unaliased(&self, lexical: &Path) -> Option<(PathBuf, Option<Fingerprint>)> {
        let root = self.root_of(lexical)?;
        let below = lexical.strip_prefix(root).ok()?;
        if below.as_os_str().is_empty() {
            return None;
        }
        let mut real = root.to_path_buf();
        let mut file = None;
        for c in below.components() {
            let Component::Normal(name) = c else {
                return None;
            };
            real.push(name);
            let meta = std::fs::symlink_metadata(&real).ok()?;
            if meta.file_type().is_symlink() {
                return None;
            }
            file = meta.is_file().then(|| Fingerprint::of(&meta));
        }
        Some((real, file))
    }

    /// A path that failed to resolve: if its deepest existing ancestor is already
    /// outside the roots (a symlink led out), say "outside" rather than "not found",
    /// so that the answer reveals nothing about what exists out there.
    fn explain_failure(&self, lexical: &Path, path: &str, e: io::Error) -> PathError {
        let inside = lexical
            .ancestors()
            .skip(1)
            .find_map(|a| a.canonicalize().ok())
            .is_some_and(|real| self.contains(&real));
        if !inside {
            return PathError::Outside(path.to_string());
        }
        match e.kind() {
            io::ErrorKind::NotFound => PathError::NotFound(path.to_string()),
            _ => PathError::Io(path.to_string(), e.to_string()),
        }
    }
}

/// Removes `.` and resolves `..` without touching the filesystem. `None` if `..`
/// climbs above `/`.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, Roots) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/a.txt"), "a").unwrap();
        std::fs::write(outside.path().join("secret.txt"), "s").unwrap();
        let roots = Roots::new(vec![root.path().canonicalize().unwrap()]);
        (root, outside, roots)
    }

    #[test]
    fn relative_and_absolute_inside_resolve() {
        let (root, _o, roots) = setup();
        let r = roots.resolve("sub/a.txt").unwrap();
        assert_eq!(r.display, "sub/a.txt");
        let abs = root.path().canonicalize().unwrap().join("sub/./a.txt");
        assert_eq!(roots.resolve(abs.to_str().unwrap()).unwrap().real, r.real);
        assert_eq!(roots.resolve("sub/../sub/a.txt").unwrap().real, r.real);
        assert_eq!(roots.resolve(".").unwrap().display, ".");
    }

    #[test]
    fn traversal_is_refused_without_touching_outside() {
        let (_r, outside, roots) = setup();
        let name = outside.path().file_name().unwrap().to_str().unwrap();
        for p in [
            "../".to_string(),
            format!("../{name}/secret.txt"),
            format!("../{name}/does-not-exist"),
            "../../../../../../../../etc/passwd".to_string(),
            "/etc/passwd".to_string(),
        ] {
            let e = roots.resolve(&p).unwrap_err();
            assert_eq!(e, PathError::Outside(p.clone()), "{p}");
            assert!(!e.to_string().contains(outside.path().to_str().unwrap()));
        }
    }

    #[test]
    fn symlink_out_is_refused_and_missing_targets_behind_it_too() {
        let (root, outside, roots) = setup();
        symlink(outside.path(), root.path().join("out")).unwrap();
        symlink(outside.path().join("secret.txt"), root.path().join("s.txt")).unwrap();
        for p in [
            "out/secret.txt",
            "s.txt",
            "out",
            "out/missing",
            "out/missing/deeper",
        ] {
            let e = roots.resolve(p).unwrap_err();
            assert_eq!(e, PathError::Outside(p.into()), "{p}");
            assert!(!e.to_string().contains(outside.path().to_str().unwrap()));
        }
        // A link that stays inside is fine.
        symlink(root.path().join("sub"), root.path().join("in")).unwrap();
        assert_eq!(roots.resolve("in/a.txt").unwrap().display, "sub/a.txt");
    }

    #[test]
    fn absolute_paths_in_any_root_and_relative_only_in_the_first() {
        let (root, _o, _) = setup();
        let second = tempfile::tempdir().unwrap();
        std::fs::write(second.path().join("b.txt"), "b").unwrap();
        let (first, second_real) = (
            root.path().canonicalize().unwrap(),
            second.path().canonicalize().unwrap(),
        );
        let roots = Roots::new(vec![first, second_real.clone()]);
        let abs = second_real.join("b.txt");
        let r = roots.resolve(abs.to_str().unwrap()).unwrap();
        assert_eq!(r.display, abs.to_str().unwrap());
        assert_eq!(roots.root_of(&r.real), Some(second_real.as_path()));
        assert_eq!(
            roots.resolve("b.txt"),
            Err(PathError::NotFound("b.txt".into()))
        );
    }

    #[test]
    fn nul_empty_missing() {
        let (_r, _o, roots) = setup();
        assert_eq!(roots.resolve("sub/a\0.txt"), Err(PathError::NulByte));
        assert_eq!(roots.resolve(""), Err(PathError::Empty));
        assert_eq!(
            roots.resolve("nope.txt"),
            Err(PathError::NotFound("nope.txt".into()))
        );
        assert_eq!(Roots::new(vec![]).resolve("x"), Err(PathError::NoRoots));
    }

    /// The plain-name fast path and the general path must agree on everything
    /// they both accept, fingerprint included, and the fast path must step aside
    /// for anything that is not plain names without symlinks.
    #[test]
    fn the_plain_name_fast_path_agrees_with_the_general_path() {
        let (root, _o, roots) = setup();
        std::fs::create_dir_all(root.path().join("sub/deep")).unwrap();
        std::fs::write(root.path().join("sub/deep/b.txt"), "b").unwrap();
        symlink(root.path().join("sub"), root.path().join("in")).unwrap();
        let first = roots.roots()[0].clone();
        for p in ["sub/a.txt", "sub", "sub/deep", "sub/deep/b.txt"] {
            let fast = roots.resolve_plain(&first, p).expect(p);
            let lexical = normalize(&first.join(p)).unwrap();
            let (real, file) = roots.unaliased(&lexical).expect(p);
            assert_eq!(fast.real, real, "{p}");
            assert_eq!(fast.file, file, "{p}");
            assert_eq!(fast.display, roots.display(&real), "{p}");
            assert_eq!(fast.file.is_some(), p.ends_with(".txt"), "{p}");
        }
        for p in [
            "in/a.txt",
            "./sub/a.txt",
            "sub/../sub/a.txt",
            "sub//a.txt",
            "sub/",
            "/etc/passwd",
            "nope.txt",
            "sub/a.txt/x",
        ] {
            assert!(roots.resolve_plain(&first, p).is_none(), "{p}");
        }
        // Shown relative to the first root, by components, not by bytes.
        let sibling = PathBuf::from(format!("{}-other/x", first.display()));
        assert_eq!(roots.display(&sibling), sibling.to_str().unwrap());
        assert_eq!(roots.display(&first), ".");
        assert_eq!(roots.display(&first.join("sub/a.txt")), "sub/a.txt");
        let slash = Roots::new(vec![PathBuf::from("/")]);
        assert_eq!(slash.display(Path::new("/etc/hosts")), "etc/hosts");
        assert_eq!(slash.display(Path::new("/")), ".");
        // Through the general path those still resolve (or fail) as before.
        assert_eq!(roots.resolve("in/a.txt").unwrap().display, "sub/a.txt");
        assert_eq!(roots.resolve("sub//a.txt").unwrap().display, "sub/a.txt");
    }
}
