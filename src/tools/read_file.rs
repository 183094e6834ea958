//! `read_file`: a text file's content, a window of lines at a time.

use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::common::{input_schema, no_unknown_args, opt_int, req_str, resolve};
use super::{Annotations, CallContext, Tool, ToolFuture, ToolResult, ToolSpec};
use crate::storage::file_cache::{CachedFile, FileError, BINARY_SNIFF_BYTES};
use crate::storage::roots::Resolved;

/// Bytes of file content one answer carries; the rest is left for another call.
pub const MAX_READ_BYTES: usize = 256 * 1024;
/// The largest `offset` or `limit` accepted (the JSON Schema bound).
pub const MAX_LINE_ARG: u64 = u32::MAX as u64;

/// A window of a text file, ready to send.
pub struct Excerpt {
    /// Where the file is, shared with the resolution a kept one came from.
    pub path: Rc<Resolved>,
    pub text: ExcerptText,
    /// The first line returned, 1-based.
    pub first: usize,
    /// The last line returned (inclusive); `first - 1` when none were.
    pub last: usize,
    pub total_lines: usize,
    /// `total_lines` is exact; false for files too large to count cheaply, where
    /// it only says whether more lines follow.
    pub total_known: bool,
    /// Lines were left out because of the byte cap (not because of `limit`).
    pub truncated: bool,
}

/// An excerpt's text: the lines copied out of the file, or the whole of a file,
/// shared with the file cache instead of copied (the common call).
pub enum ExcerptText {
    Window(String),
    Whole(Rc<CachedFile>),
}

impl ExcerptText {
    pub fn into_string(self) -> String {
        match self {
            ExcerptText::Window(s) => s,
            whole => String::from(&*whole),
        }
    }
}

impl std::ops::Deref for ExcerptText {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            ExcerptText::Window(s) => s,
            ExcerptText::Whole(f) => f.text().expect("only text files become excerpts"),
        }
    }
}

impl Excerpt {
    /// What the model needs to read on, appended to the text.
    pub fn note(&self) -> Option<String> {
        let more = self.last < self.total_lines && self.last >= self.first;
        if !self.truncated && !more {
            // The common answer, a whole file: nothing to add, nothing to format.
            return None;
        }
        let of = if self.total_known {
            self.total_lines.to_string()
        } else {
            "a file too large to count".to_string()
        };
        Some(if self.truncated {
            format!(
                "[… truncated at line {} of {} ({} KiB output cap); call again with offset={}]",
                self.last,
                of,
                MAX_READ_BYTES / 1024,
                self.last + 1
            )
        } else {
            format!(
                "[lines {}–{} of {}; call again with offset={} for more]",
                self.first,
                self.last,
                of,
                self.last + 1
            )
        })
    }
}

/// Resolves `path`, reusing a resolution verified under inotify when nothing has
/// changed along it since (no `lstat` at all), and keeping this one when it can
/// (see `storage/resolutions.rs`).
fn resolve_watched(cx: &CallContext<'_>, path: &str) -> Result<Rc<Resolved>, ToolResult> {
    let storage = &cx.shard.storage;
    let watcher = storage.snapshots.watcher();
    let before = match storage.resolutions.get(watcher, path) {
        Ok(r) => return Ok(r),
        Err(generation) => generation,
    };
    let first = Rc::new(resolve(cx, path)?);
    if first.file.is_none() {
        return Ok(first);
    }
    // Only a path that is its own real path, byte for byte: one that went through
    // a symlink (or `..`) depends on directories off the real path, which the
    // watches below would not cover.
    let lexical = match storage.roots.roots().first() {
        Some(r) if !path.starts_with('/') => r.join(path),
        _ => std::path::PathBuf::from(path),
    };
    if lexical != first.real {
        return Ok(first);
    }
    let Some(root) = storage.roots.root_of(&first.real) else {
        return Ok(first);
    };
    let Some(watched) = storage.resolutions.begin(watcher, root, &first.real) else {
        return Ok(first);
    };
    if !watched.added && watched.generation == before {
        // Watched all along and nothing changed: `first` is current.
        storage.resolutions.keep(path, before, &first);
        return Ok(first);
    }
    // Again, now that the watches are in place: what this finds is current as of
    // `watched.generation`, and any later change moves it.
    let again = Rc::new(resolve(cx, path)?);
    if again.real == first.real && again.file.is_some() {
        storage.resolutions.keep(path, watched.generation, &again);
    }
    Ok(again)
}

/// Reads lines `offset..offset+limit` of a text file inside the roots, at most
/// `cap` bytes of them, for `tool` (whose `cache` setting applies). Errors are
/// results ready to return.
pub async fn read_excerpt(
    cx: &CallContext<'_>,
    tool: &str,
    path: &str,
    offset: usize,
    limit: Option<usize>,
    cap: usize,
) -> Result<Excerpt, ToolResult> {
    let use_cache = cx.shard.config.tool_cache(tool);
    let resolved = if use_cache {
        resolve_watched(cx, path)?
    } else {
        Rc::new(resolve(cx, path)?)
    };
    let file = match cx
        .shard
        .storage
        .files
        .read_checked(&resolved.real, resolved.file, use_cache)
        .await
    {
        Ok(f) => f,
        Err(FileError::TooLarge(size)) => {
            // Too large to hold whole: read just the window, off the shard.
            // Boxed, as it is rare and its state would enlarge every call's future.
            return Box::pin(read_huge(cx, resolved, size, offset, limit, cap)).await;
        }
        Err(e) => return Err(ToolResult::error(e.describe(&resolved.display))),
    };
    let display = &resolved.display;
    let Some(text) = file.text() else {
        let why = if file.is_binary() {
            format!(
                "it has a NUL byte in its first {} KiB",
                BINARY_SNIFF_BYTES / 1024
            )
        } else {
            "it is not valid UTF-8".to_string()
        };
        return Err(ToolResult::error(format!(
            "`{display}` looks like a binary file ({why}); read_file returns text only"
        )));
    };
    let total_lines = file.line_count();
    if offset > total_lines.max(1) {
        return Err(ToolResult::error(format!(
            "offset {offset} is past the end of `{display}`, which has {total_lines} lines"
        )));
    }
    if offset == 1 && limit.is_none_or(|l| l >= total_lines) && text.len() <= cap {
        // The whole file, the common call: no need to walk it line by line.
        return Ok(Excerpt {
            path: resolved,
            text: ExcerptText::Whole(file.clone()),
            first: 1,
            last: total_lines,
            total_lines,
            total_known: true,
            truncated: false,
        });
    }
    let start = line_start(text, offset);
    let wanted = limit.unwrap_or(usize::MAX);
    let mut end = start;
    let mut last = offset - 1;
    let mut truncated = false;
    for line in text[start..].split_inclusive('\n') {
        if last + 1 - offset >= wanted {
            break;
        }
        if end + line.len() - start > cap {
            truncated = true;
            if end == start {
                // A single line longer than the cap: send its head rather than nothing.
                end = floor_char_boundary(text, start + cap);
                last += 1;
            }
            break;
        }
        end += line.len();
        last += 1;
    }
    Ok(Excerpt {
        path: resolved,
        text: ExcerptText::Window(text[start..end].to_string()),
        first: offset,
        last,
        total_lines,
        total_known: true,
        truncated,
    })
}

/// Reads lines `offset..` of a file too large for the cache, streaming it on the
/// blocking pool: nothing but the window is kept, and the read stops at the end
/// of the window, at the deadline, or on cancellation. The line total is not
/// known without reading the whole file, so the answer says where to read on.
async fn read_huge(
    cx: &CallContext<'_>,
    path: Rc<Resolved>,
    size: u64,
    offset: usize,
    limit: Option<usize>,
    cap: usize,
) -> Result<Excerpt, ToolResult> {
    use std::io::BufRead;
    let deadline = cx.deadline;
    let cancel = cx.cancel.shared();
    let wanted = limit.unwrap_or(usize::MAX);
    let real = path.real.clone();
    let display = &path.display;
    let window = crate::shard::offload(move || -> Result<(Vec<u8>, usize, bool, bool), String> {
        let file = std::fs::File::open(&real).map_err(|e| e.to_string())?;
        let mut reader = std::io::BufReader::with_capacity(HUGE_READ_BUFFER, file);
        let sniff = reader.fill_buf().map_err(|e| e.to_string())?;
        if memchr::memchr(0, &sniff[..sniff.len().min(BINARY_SNIFF_BYTES)]).is_some() {
            return Err("binary".into());
        }
        let (mut line, mut taken, mut text) = (1usize, 0usize, Vec::new());
        let mut truncated = false;
        let mut buf = Vec::new();
        loop {
            if line % HUGE_CHECK_EVERY_LINES == 0
                && (std::time::Instant::now() >= deadline
                    || cancel.load(std::sync::atomic::Ordering::Acquire))
            {
                return Err("deadline".into());
            }
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok((text, line - 1, truncated, true));
            }
            if line >= offset {
                if taken == wanted {
                    return Ok((text, line - 1, truncated, false));
                }
                if text.len() + buf.len() > cap {
                    truncated = true;
                    if taken == 0 {
                        text.extend_from_slice(&buf[..cap]);
                        line += 1;
                    }
                    return Ok((text, line - 1, truncated, false));
                }
                text.extend_from_slice(&buf);
                taken += 1;
            }
            line += 1;
        }
    })
    .await;
    let (bytes, last, truncated, at_end) = match window {
        Ok(w) => w,
        Err(why) if why == "binary" => {
            return Err(ToolResult::error(format!(
                "`{display}` looks like a binary file (it has a NUL byte in its first {} KiB); read_file returns text only",
                BINARY_SNIFF_BYTES / 1024
            )))
        }
        Err(why) if why == "deadline" => {
            return Err(ToolResult::error(format!(
                "reading `{display}` ({size} bytes) stopped at the deadline before line {offset}; ask for an earlier offset or use search_code"
            )))
        }
        Err(why) => return Err(ToolResult::error(format!("cannot read `{display}`: {why}"))),
    };
    if last < offset && at_end {
        return Err(ToolResult::error(format!(
            "offset {offset} is past the end of `{display}`, which has {last} lines"
        )));
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        // A cut inside a character at the byte cap: drop the partial character.
        Err(e) if truncated && e.utf8_error().error_len().is_none() => {
            let valid = e.utf8_error().valid_up_to();
            let mut b = e.into_bytes();
            b.truncate(valid);
            String::from_utf8(b).expect("valid up to here")
        }
        Err(_) => {
            return Err(ToolResult::error(format!(
                "`{display}` looks like a binary file (it is not valid UTF-8); read_file returns text only"
            )))
        }
    };
    Ok(Excerpt {
        path,
        text: ExcerptText::Window(text),
        first: offset,
        last,
        // Unknown without reading the whole file: one more than the last line
        // read says "there is more" unless the end was reached.
        total_lines: if at_end { last } else { last + 1 },
        total_known: at_end,
        truncated,
    })
}

/// Read buffer for files too large for the cache.
const HUGE_READ_BUFFER: usize = 256 * 1024;
/// Lines between deadline checks while skipping to an offset in a huge file.
const HUGE_CHECK_EVERY_LINES: usize = 4096;

/// The byte offset where 1-based line `n` starts.
fn line_start(text: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    memchr::memchr_iter(b'\n', text.as_bytes())
        .nth(n - 2)
        .map_or(text.len(), |i| i + 1)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub struct ReadFile {
    spec: ToolSpec,
}

impl ReadFile {
    pub fn new() -> ReadFile {
        ReadFile {
            spec: ToolSpec {
                name: "read_file",
                title: "Read file",
                description: "Read a UTF-8 text file inside the served roots. Paths are relative to the first root, \
                    or absolute inside any root. Returns the file's text; large files come a window at a time: \
                    `offset` is the first line (1-based), `limit` the number of lines. When the answer is cut, its \
                    last line says which offset to pass next. Binary files are refused.",
                input_schema: input_schema(
                    json!({
                        "path": {"type": "string", "description": "File path, relative to the first root or absolute inside a root."},
                        "offset": {"type": "integer", "minimum": 1, "maximum": MAX_LINE_ARG, "description": "First line to return, 1-based. Default 1."},
                        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LINE_ARG, "description": "Number of lines to return. Default: as many as fit the output cap."},
                    }),
                    &["path"],
                ),
                output_schema: None,
                annotations: Annotations::READ_ONLY,
            },
        }
    }
}

impl Default for ReadFile {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for ReadFile {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, cx: &'a CallContext<'a>, args: Map<String, Value>) -> ToolFuture<'a> {
        Box::pin(async move {
            let parsed = (|| {
                no_unknown_args(&args, &["path", "offset", "limit"])?;
                let path = req_str(&args, "path")?.to_string();
                let offset = opt_int(&args, "offset", 1, MAX_LINE_ARG)?.unwrap_or(1) as usize;
                let limit = opt_int(&args, "limit", 1, MAX_LINE_ARG)?.map(|n| n as usize);
                Ok((path, offset, limit))
            })();
            let (path, offset, limit) = match parsed {
                Ok(p) => p,
                Err(e) => return e,
            };
            match read_excerpt(cx, "read_file", &path, offset, limit, MAX_READ_BYTES).await {
                Ok(ex) => {
                    let note = ex.note();
                    if let (ExcerptText::Whole(file), None) = (&ex.text, &note) {
                        cx.shard.storage.files.keep_json(file);
                        return ToolResult::file(file.clone());
                    }
                    let mut text = ex.text.into_string();
                    if let Some(note) = note {
                        if !text.is_empty() && !text.ends_with('\n') {
                            text.push('\n');
                        }
                        text.push_str(&note);
                    }
                    ToolResult::text(text)
                }
                Err(e) => e,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::common::testing::{assert_error, call, shard, text};
    use std::os::unix::fs::symlink;

    fn fixture() -> (tempfile::TempDir, crate::shard::Shard) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\nthree\n").unwrap();
        let shard = shard(vec![dir.path().into()], vec![]);
        (dir, shard)
    }

    /// Reads `path` and returns its text, or the error message.
    fn read(s: &crate::shard::Shard, path: &str) -> String {
        text(&call(s, "read_file", json!({ "path": path }))).to_string()
    }

    #[test]
    fn a_kept_resolution_follows_every_change_along_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f.txt"), "one\n").unwrap();
        let s = shard(vec![root.clone()], vec![]);
        // Every file counts as settled, so the file cache keeps what it reads: a
        // stale resolution (an old fingerprint) would then be served old contents.
        s.storage
            .files
            .set_clock(crate::storage::file_cache::an_hour_ahead);
        let kept = || s.storage.resolutions.len();
        assert_eq!(read(&s, "d/e/f.txt"), "one\n");
        assert_eq!(kept(), 1, "a plain path's resolution is kept");
        assert_eq!(read(&s, "d/e/f.txt"), "one\n");
        assert_eq!(s.storage.files.stats().hits, 1);

        std::fs::write(root.join("d/e/f.txt"), "two!\n").unwrap();
        assert_eq!(read(&s, "d/e/f.txt"), "two!\n");
        assert_eq!(kept(), 1);

        // A directory along the path swapped for a symlink to elsewhere.
        std::fs::create_dir_all(root.join("x/e")).unwrap();
        std::fs::write(root.join("x/e/f.txt"), "three\n").unwrap();
        std::fs::rename(root.join("d"), root.join("old")).unwrap();
        symlink(root.join("x"), root.join("d")).unwrap();
        assert_eq!(read(&s, "d/e/f.txt"), "three\n");
        // ... and a path through a symlink is never kept.
        assert_eq!(kept(), 0);
        assert_eq!(read(&s, "d/e/f.txt"), "three\n");
        assert_eq!(kept(), 0);

        // Deleted: gone, not served from memory.
        assert_eq!(read(&s, "old/e/f.txt"), "two!\n");
        assert_eq!(kept(), 1);
        std::fs::remove_file(root.join("old/e/f.txt")).unwrap();
        assert!(read(&s, "old/e/f.txt").contains("does not exist"));

        // Replaced by a rename over it, in a directory two levels up from the file.
        std::fs::write(root.join("old/e/g.txt"), "four\n").unwrap();
        assert_eq!(read(&s, "old/e/g.txt"), "four\n");
        std::fs::create_dir_all(root.join("new/e")).unwrap();
        std::fs::write(root.join("new/e/g.txt"), "five\n").unwrap();
        std::fs::rename(root.join("old"), root.join("gone")).unwrap();
        std::fs::rename(root.join("new"), root.join("old")).unwrap();
        assert_eq!(read(&s, "old/e/g.txt"), "five\n");
    }

    #[test]
    fn no_resolution_is_kept_when_the_tool_does_not_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "a\n").unwrap();
        let s = crate::tools::common::testing::uncached_shard(
            "read_file",
            vec![dir.path().into()],
            vec![],
        );
        assert_eq!(read(&s, "a.txt"), "a\n");
        assert_eq!(read(&s, "a.txt"), "a\n");
        assert!(s.storage.resolutions.is_empty());
    }

    #[test]
    fn files_too_large_for_the_cache_are_read_a_window_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let line = "x".repeat(1023) + "\n";
        let lines = (crate::storage::file_cache::MAX_FILE_BYTES as usize / line.len()) + 10;
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.path().join("big.log")).unwrap());
        for i in 0..lines {
            std::io::Write::write_all(&mut f, format!("{i:08} {}", &line[9..]).as_bytes()).unwrap();
        }
        drop(f);
        let s = shard(vec![dir.path().into()], vec![]);
        let r = call(
            &s,
            "read_file",
            json!({"path": "big.log", "offset": 3, "limit": 2}),
        );
        assert!(!r.is_error, "{}", text(&r));
        let t = text(&r);
        assert!(t.starts_with("00000002 x"), "{t}");
        assert_eq!(t.lines().filter(|l| l.starts_with('0')).count(), 2);
        assert!(
            t.ends_with(
                "[lines 3–4 of a file too large to count; call again with offset=5 for more]"
            ),
            "{t}"
        );
        // The end of the file, and past it.
        let r = call(&s, "read_file", json!({"path": "big.log", "offset": lines}));
        assert!(
            text(&r).starts_with(&format!("{:08} ", lines - 1)),
            "{}",
            text(&r)
        );
        let r = call(
            &s,
            "read_file",
            json!({"path": "big.log", "offset": lines + 5}),
        );
        assert!(
            r.is_error && text(&r).contains("past the end"),
            "{}",
            text(&r)
        );
    }

    #[test]
    fn reads_whole_file_and_windows() {
        let (_d, s) = fixture();
        let r = call(&s, "read_file", json!({"path": "a.txt"}));
        assert!(!r.is_error);
        assert_eq!(text(&r), "one\ntwo\nthree\n");
        let r = call(
            &s,
            "read_file",
            json!({"path": "a.txt", "offset": 2, "limit": 1}),
        );
        assert_eq!(
            text(&r),
            "two\n[lines 2–2 of 3; call again with offset=3 for more]"
        );
        let r = call(&s, "read_file", json!({"path": "a.txt", "offset": 3}));
        assert_eq!(text(&r), "three\n");
    }

    #[test]
    fn output_is_capped_with_a_way_to_read_on() {
        let (d, s) = fixture();
        let line = "x".repeat(1023) + "\n";
        std::fs::write(d.path().join("big.txt"), line.repeat(300)).unwrap();
        let r = call(&s, "read_file", json!({"path": "big.txt"}));
        assert!(!r.is_error);
        assert!(text(&r).len() <= MAX_READ_BYTES + 200);
        assert!(text(&r).ends_with(
            "[… truncated at line 256 of 300 (256 KiB output cap); call again with offset=257]"
        ));
        let r = call(&s, "read_file", json!({"path": "big.txt", "offset": 257}));
        assert_eq!(text(&r), line.repeat(44));
    }

    #[test]
    fn a_line_longer_than_the_cap_is_cut_not_dropped() {
        let (d, s) = fixture();
        std::fs::write(d.path().join("long.txt"), "é".repeat(MAX_READ_BYTES)).unwrap();
        let r = call(&s, "read_file", json!({"path": "long.txt"}));
        assert!(!r.is_error);
        assert!(text(&r).starts_with("éé"));
        assert!(text(&r).contains("truncated at line 1 of 1"));
    }

    #[test]
    fn failures_say_what_is_wrong() {
        let (d, s) = fixture();
        std::fs::write(d.path().join("bin"), b"ab\0cd").unwrap();
        std::fs::write(d.path().join("latin1"), b"caf\xe9").unwrap();
        assert_error(
            &call(&s, "read_file", json!({"path": "bin"})),
            "binary file (it has a NUL byte",
        );
        assert_error(
            &call(&s, "read_file", json!({"path": "latin1"})),
            "not valid UTF-8",
        );
        assert_error(
            &call(&s, "read_file", json!({"path": "missing"})),
            "does not exist",
        );
        assert_error(
            &call(&s, "read_file", json!({"path": "."})),
            "not a regular file",
        );
        assert_error(
            &call(&s, "read_file", json!({"path": "a.txt", "offset": 9})),
            "past the end",
        );
        assert_error(
            &call(&s, "read_file", json!({"path": "a.txt", "offset": 0})),
            "`offset` must be an integer",
        );
        assert_error(
            &call(&s, "read_file", json!({"path": 3})),
            "`path` must be a string",
        );
        assert_error(
            &call(&s, "read_file", json!({})),
            "missing required argument `path`",
        );
        assert_error(
            &call(&s, "read_file", json!({"path": "a.txt", "line": 1})),
            "unknown argument `line`",
        );
        assert_error(
            &call(&s, "read_file", json!({"path": "a.txt\u{0}"})),
            "NUL byte",
        );
    }

    #[test]
    fn traversal_and_symlink_escape_are_refused() {
        let (d, s) = fixture();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "top secret").unwrap();
        symlink(outside.path().join("secret"), d.path().join("link")).unwrap();
        let name = outside.path().file_name().unwrap().to_str().unwrap();
        for p in [
            format!("../{name}/secret"),
            "link".into(),
            outside.path().join("secret").to_str().unwrap().into(),
        ] {
            let r = call(&s, "read_file", json!({ "path": p }));
            assert_error(&r, "outside the allowed roots");
            assert!(!text(&r).contains("top secret"));
        }
    }

    #[test]
    fn rewritten_and_deleted_files_are_never_stale() {
        let (d, s) = fixture();
        let p = d.path().join("a.txt");
        assert_eq!(
            text(&call(&s, "read_file", json!({"path": "a.txt"}))),
            "one\ntwo\nthree\n"
        );
        std::fs::write(&p, "ONE\nTWO\nTHREE\n").unwrap(); // same size, same second
        assert_eq!(
            text(&call(&s, "read_file", json!({"path": "a.txt"}))),
            "ONE\nTWO\nTHREE\n"
        );
        std::fs::remove_file(&p).unwrap();
        assert_error(
            &call(&s, "read_file", json!({"path": "a.txt"})),
            "does not exist",
        );
    }

    #[test]
    fn counts_lines_like_an_editor() {
        use crate::storage::file_cache::count_lines;
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a"), 1);
        assert_eq!(count_lines(b"a\n"), 1);
        assert_eq!(count_lines(b"a\nb"), 2);
        assert_eq!(line_start("a\nb\nc", 3), 4);
    }
}
