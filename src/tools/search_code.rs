//! `search_code`: ripgrep-style search of the files under a path.
//!
//! The file list comes from the shard's walk cache (ignore rules, no hidden files,
//! no symlinks); contents from the file cache, or, when nothing under the
//! directory has changed since the last search of it, from that search's
//! snapshot with no syscall per file (`storage/watch.rs`). In a snapshot, a
//! query reads only the files its trigram index cannot rule out
//! (`storage/grams.rs`). Literal queries use `memchr::memmem`; regexes and
//! case-insensitive literals use `regex::bytes`; either is compiled once per
//! shard and kept (`storage/patterns.rs`).
//! Files are read a batch at a time so that cold reads of large files overlap on the
//! blocking pool, and the search yields to the shard between batches and stops at
//! the deadline or on cancellation.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use ignore::overrides::{Override, OverrideBuilder};
use serde_json::{json, Map, Value};

use super::common::{
    input_schema, join_all, no_unknown_args, opt_bool, opt_int, opt_str, req_str, resolve,
    stop_reason, LocalBoxFuture,
};
use super::{Annotations, CallContext, Tool, ToolFuture, ToolResult, ToolSpec};
use crate::storage::file_cache::{CachedFile, FileError};
use crate::storage::grams::Kind;
use crate::storage::patterns::Pattern;

/// Matches returned when `max_results` is not given.
pub const DEFAULT_MAX_RESULTS: u64 = 100;
/// The largest `max_results` accepted.
pub const MAX_RESULTS_LIMIT: u64 = 1000;
/// The largest `context` accepted (lines before and after each match).
pub const MAX_CONTEXT: u64 = 10;
/// Bytes of one line shown; longer lines are cut with "…".
pub const MAX_LINE_BYTES: usize = 400;
/// Longest query accepted.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Files read concurrently per batch.
pub const SEARCH_BATCH: usize = 32;

/// One matching line.
struct Hit {
    line: usize,
    text: String,
    before: Vec<String>,
    after: Vec<String>,
}

impl Hit {
    /// The structured match; its strings are moved in, not copied.
    fn into_json(self, path: &str, context: bool) -> Value {
        let mut m = Map::new();
        m.insert("path".into(), Value::String(path.to_owned()));
        m.insert("line".into(), self.line.into());
        m.insert("text".into(), Value::String(self.text));
        if context {
            m.insert("before".into(), self.before.into());
            m.insert("after".into(), self.after.into());
        }
        Value::Object(m)
    }
}

fn show(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() <= MAX_LINE_BYTES {
        String::from_utf8_lossy(line).into_owned()
    } else {
        format!("{}…", String::from_utf8_lossy(&line[..MAX_LINE_BYTES]))
    }
}

/// The byte range of the line containing `at`, without its `\n`.
fn line_bounds(hay: &[u8], at: usize) -> (usize, usize) {
    let start = memchr::memrchr(b'\n', &hay[..at]).map_or(0, |i| i + 1);
    let end = memchr::memchr(b'\n', &hay[at..]).map_or(hay.len(), |i| at + i);
    (start, end)
}

/// Every matching line of one file, at most `limit`.
fn search_file(m: &Pattern, hay: &[u8], context: usize, limit: usize) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut pos = 0;
    let mut line_no = 1;
    let mut counted_to = 0;
    while hits.len() < limit && pos <= hay.len() {
        let Some(at) = m.find(hay, pos) else { break };
        let (start, end) = line_bounds(hay, at.min(hay.len()));
        line_no += memchr::memchr_iter(b'\n', &hay[counted_to..start]).count();
        counted_to = start;
        let mut before = Vec::new();
        let mut s = start;
        while before.len() < context && s > 0 {
            let (ps, pe) = line_bounds(hay, s - 1);
            before.push(show(&hay[ps..pe]));
            s = ps;
        }
        before.reverse();
        let mut after = Vec::new();
        let mut e = end;
        while after.len() < context && e < hay.len() {
            let (ns, ne) = line_bounds(hay, e + 1);
            if ns >= hay.len() {
                break;
            }
            after.push(show(&hay[ns..ne]));
            e = ne;
        }
        hits.push(Hit {
            line: line_no,
            text: show(&hay[start..end]),
            before,
            after,
        });
        pos = end + 1; // one hit per line
    }
    hits
}

struct Args {
    query: String,
    path: String,
    regex: bool,
    case_sensitive: bool,
    glob: Option<String>,
    max_results: usize,
    context: usize,
}

/// `stream_cap`: the most items a streamed call may produce, which replaces
/// [`MAX_RESULTS_LIMIT`] (and is the default) when the caller streams.
fn parse(args: &Map<String, Value>, stream_cap: Option<usize>) -> Result<Args, ToolResult> {
    no_unknown_args(
        args,
        &[
            "query",
            "path",
            "regex",
            "case_sensitive",
            "glob",
            "max_results",
            "context",
        ],
    )?;
    let query = req_str(args, "query")?.to_string();
    if query.is_empty() || query.len() > MAX_QUERY_BYTES {
        return Err(ToolResult::error(format!(
            "`query` must be 1 to {MAX_QUERY_BYTES} bytes"
        )));
    }
    Ok(Args {
        query,
        path: opt_str(args, "path")?.unwrap_or(".").to_string(),
        regex: opt_bool(args, "regex")?.unwrap_or(false),
        case_sensitive: opt_bool(args, "case_sensitive")?.unwrap_or(true),
        glob: opt_str(args, "glob")?.map(str::to_string),
        max_results: match stream_cap {
            None => opt_int(args, "max_results", 1, MAX_RESULTS_LIMIT)?
                .unwrap_or(DEFAULT_MAX_RESULTS) as usize,
            Some(cap) => opt_int(args, "max_results", 1, cap as u64)?.map_or(cap, |n| n as usize),
        },
        context: opt_int(args, "context", 0, MAX_CONTEXT)?.unwrap_or(0) as usize,
    })
}

fn glob_filter(dir: &std::path::Path, glob: Option<&str>) -> Result<Option<Override>, ToolResult> {
    let Some(glob) = glob else { return Ok(None) };
    let bad = |e: ignore::Error| ToolResult::error(format!("invalid glob `{glob}`: {e}"));
    let mut b = OverrideBuilder::new(dir);
    b.add(glob).map_err(bad)?;
    b.build().map(Some).map_err(bad)
}

/// What a search has found so far.
#[derive(Default)]
struct Scan {
    matches: Vec<Value>,
    text: String,
    found: usize,
    truncated: bool,
    searched: usize,
    binary: usize,
    unreadable: usize,
}

/// Why a scan stopped before the last file.
enum Stop {
    /// `max_results` reached: the answer is complete but truncated.
    Full,
    /// The call must answer this instead (deadline, cancel, reader gone).
    Answer(ToolResult),
}

impl Scan {
    /// Counts a file the index ruled out as searched, without reading it.
    fn ruled_out(&mut self, kind: Kind) {
        match kind {
            Kind::Text => self.searched += 1,
            Kind::Binary => self.binary += 1,
            Kind::Unreadable => self.unreadable += 1,
        }
    }

    fn ruled_out_all(&mut self, kinds: &[Kind]) {
        for &kind in kinds {
            self.ruled_out(kind);
        }
    }

    /// Searches one file's contents (`None`: it could not be read).
    async fn file(
        &mut self,
        cx: &CallContext<'_>,
        a: &Args,
        matcher: &Pattern,
        path: &Path,
        content: Option<&CachedFile>,
    ) -> Result<(), Stop> {
        let Some(file) = content else {
            self.unreadable += 1;
            return Ok(());
        };
        if file.is_binary() {
            self.binary += 1;
            return Ok(());
        }
        self.searched += 1;
        let left = a.max_results - self.found;
        let hits = search_file(matcher, &file.bytes, a.context, left + 1);
        if hits.is_empty() {
            return Ok(());
        }
        let display = cx.shard.storage.roots.display(path);
        for hit in hits {
            if self.found == a.max_results {
                self.truncated = true;
                return Err(Stop::Full);
            }
            self.found += 1;
            if cx.sink.is_none() {
                // Writing to a String cannot fail.
                let first = hit.line - hit.before.len();
                for (i, b) in hit.before.iter().enumerate() {
                    let _ = writeln!(self.text, "{display}-{}- {b}", first + i);
                }
                let _ = writeln!(self.text, "{display}:{}: {}", hit.line, hit.text);
                for (i, b) in hit.after.iter().enumerate() {
                    let _ = writeln!(self.text, "{display}-{}- {b}", hit.line + 1 + i);
                }
            }
            let m = hit.into_json(&display, a.context > 0);
            if let Some(sink) = cx.sink {
                // Streamed: each match leaves as it is found, nothing gathers.
                if !sink.send(m).await {
                    return Err(Stop::Answer(ToolResult::error(
                        "the reader went away; the search stopped",
                    )));
                }
                continue;
            }
            self.matches.push(m);
        }
        Ok(())
    }
}

async fn search(cx: &CallContext<'_>, a: Args) -> ToolResult {
    let start = Instant::now();
    let matcher = match cx
        .shard
        .storage
        .patterns
        .get(&a.query, a.regex, a.case_sensitive)
    {
        Ok(m) => m,
        Err(e) => {
            return ToolResult::error(format!(
                "invalid regex: {e}\n(set `regex: false` to search for the text literally)"
            ))
        }
    };
    let target = match resolve(cx, &a.path) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let storage = &cx.shard.storage;
    let Some(root) = storage.roots.root_of(&target.real).map(|r| r.to_path_buf()) else {
        return ToolResult::error(format!("`{}` is outside the allowed roots", a.path));
    };
    let use_cache = cx.shard.config.tool_cache("search_code");
    let is_dir = target.real.is_dir();
    let filter = if is_dir {
        match glob_filter(&target.real, a.glob.as_deref()) {
            Ok(f) => f,
            Err(e) => return e,
        }
    } else {
        None
    };
    let wanted = |p: &Path| {
        filter
            .as_ref()
            .is_none_or(|f| !f.matched(p, false).is_ignore())
    };
    let mut scan = Scan::default();
    let mut walk_truncated = false;
    let mut stopped = None;

    // An unchanged tree: its snapshot, with no syscall per file (storage/watch.rs);
    // or, if another search is building it now, the snapshot it builds.
    let snapshot = if use_cache && is_dir {
        match storage.snapshots.current(&target.real) {
            None if storage.snapshots.wait_for_build(&target.real).await => {
                storage.snapshots.current(&target.real)
            }
            current => current,
        }
    } else {
        None
    };
    if let Some(snap) = snapshot {
        walk_truncated = snap.tree.truncated;
        let total = snap.tree.files.len() as u64;
        let candidates = snap.index.candidates_all(matcher.needs());
        // Without a glob only candidates need a look; the files between them are
        // counted by kind. A glob decides which files count, so it sees them all.
        let mut counted = 0;
        let mut polled: Option<usize> = None;
        for n in candidates.files(snap.tree.files.len(), filter.is_some()) {
            scan.ruled_out_all(snap.index.kinds(counted..n));
            counted = n + 1;
            if polled.is_none_or(|p| n >= p + SEARCH_BATCH) {
                if let Some(stop) = stop_reason(cx, start) {
                    return stop;
                }
                if n > 0 {
                    cx.report_progress(n as u64, Some(total));
                }
                glommio::yield_if_needed().await;
                polled = Some(n);
            }
            let path = &snap.tree.files[n];
            if !wanted(path) {
                continue;
            }
            if !candidates.contains(n) {
                scan.ruled_out(snap.index.kind(n));
                continue;
            }
            let content = snap.contents[n].as_deref();
            if let Err(stop) = scan.file(cx, &a, &matcher, path, content).await {
                stopped = Some(stop);
                break;
            }
        }
        if stopped.is_none() {
            scan.ruled_out_all(snap.index.kinds(counted..snap.tree.files.len()));
            counted = snap.tree.files.len();
        }
        let visited = counted as u64;
        // Where the search ended, as the read path reports after its last batch.
        cx.report_progress(visited, Some(total));
    } else {
        // Searches of this tree that come while this one builds its snapshot wait
        // for it (each waits once, so none queues behind a failed build).
        let mut claim = None;
        if use_cache && is_dir && filter.is_none() {
            claim = storage.snapshots.claim(&target.real);
        }
        // The file list borrows the cached walk: no path is copied per search.
        let tree = if is_dir {
            Some(
                storage
                    .trees
                    .files_with(&target.real, &root, use_cache)
                    .await,
            )
        } else {
            None
        };
        let files: Vec<&Path> = match &tree {
            Some(tree) => {
                walk_truncated = tree.truncated;
                // A walk of a directory inside a root follows no symlinks, so
                // every file it lists is inside that root: no per-file check.
                tree.files
                    .iter()
                    .map(PathBuf::as_path)
                    .filter(|p| wanted(p))
                    .collect()
            }
            None => vec![target.real.as_path()],
        };
        // Build a snapshot on the way when this search reads the whole tree:
        // watches first, then the walk revalidated, then every file read.
        let mut pending = None;
        if let (Some(tree), true, None) = (&tree, use_cache, &filter) {
            pending = storage
                .snapshots
                .begin(&target.real, tree)
                .filter(|_| tree.is_fresh());
        }
        if pending.is_none() {
            // No snapshot will come of this search: let the waiting ones go.
            drop(claim.take());
        }
        let mut contents: Vec<Option<Rc<CachedFile>>> = Vec::new();
        let mut done = 0usize;
        'batches: for batch in files.chunks(SEARCH_BATCH) {
            if let Some(stop) = stop_reason(cx, start) {
                return stop;
            }
            glommio::yield_if_needed().await;
            let reads = batch
                .iter()
                .map(|p| {
                    Box::pin(storage.files.read_with(p, use_cache))
                        as LocalBoxFuture<'_, Result<Rc<CachedFile>, FileError>>
                })
                .collect();
            let read = join_all(reads).await;
            done += batch.len();
            cx.report_progress(done as u64, Some(files.len() as u64));
            for (path, content) in batch.iter().zip(read) {
                let content = content.ok();
                let result = scan.file(cx, &a, &matcher, path, content.as_deref()).await;
                if pending.is_some() {
                    contents.push(content);
                }
                if let Err(stop) = result {
                    stopped = Some(stop);
                    break 'batches;
                }
            }
        }
        if let (Some(p), Some(tree)) = (pending, tree) {
            if stopped.is_none() && contents.len() == tree.files.len() {
                storage.snapshots.finish(p, tree, contents).await;
            }
        }
        drop(claim);
    }
    match stopped {
        Some(Stop::Answer(answer)) => return answer,
        Some(Stop::Full) | None => {}
    }
    let Scan {
        matches,
        mut text,
        found,
        truncated,
        searched,
        binary,
        unreadable,
    } = scan;
    if cx.sink.is_some() {
        return ToolResult::structured(
            json!({
                "matches_streamed": found,
                "truncated": truncated || walk_truncated,
                "files_searched": searched,
                "binary_files_skipped": binary,
                "unreadable_files": unreadable,
            }),
            format!("{found} match(es) streamed from {searched} file(s)"),
        );
    }
    if matches.is_empty() {
        text.push_str(&format!(
            "no matches for {:?} in {} file(s)\n",
            a.query, searched
        ));
    }
    if truncated {
        text.push_str(&format!(
            "[… stopped at max_results={}; narrow `path` or `glob`, or raise max_results]\n",
            a.max_results
        ));
    }
    if walk_truncated {
        text.push_str(&format!(
            "[… the directory has more than {} files; only those were searched; narrow `path`]\n",
            crate::storage::tree_cache::MAX_WALK_FILES
        ));
    }
    ToolResult::structured(
        json!({
            "matches": matches,
            "truncated": truncated || walk_truncated,
            "files_searched": searched,
            "binary_files_skipped": binary,
            "unreadable_files": unreadable,
        }),
        text,
    )
}

pub struct SearchCode {
    spec: ToolSpec,
}

impl SearchCode {
    pub fn new() -> SearchCode {
        SearchCode {
            spec: ToolSpec {
                name: "search_code",
                title: "Search code",
                description: "Search file contents under a path, like ripgrep: .gitignore/.ignore rules are respected and \
                    hidden and binary files skipped. The query is literal text unless `regex` is true (Rust regex syntax; \
                    ^ and $ match at line ends). Returns one line per match as `path:line: text`, plus structured matches; \
                    with `context` > 0 also the lines around each. Stops at `max_results` with `truncated: true`. \
                    Narrow with `path` (a directory or one file) and `glob` (e.g. \"*.rs\", \"src/**/*.ts\", \"!*.md\").",
                input_schema: input_schema(
                    json!({
                        "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_BYTES, "description": "Text to find (or a regex when `regex` is true)."},
                        "path": {"type": "string", "description": "Directory or file to search, relative to the first root or absolute inside a root. Default: the first root."},
                        "regex": {"type": "boolean", "description": "Treat `query` as a regular expression. Default false."},
                        "case_sensitive": {"type": "boolean", "description": "Match case exactly. Default true."},
                        "glob": {"type": "string", "description": "Only search files whose path (relative to `path`) matches this glob; a leading ! excludes instead."},
                        "max_results": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS_LIMIT, "description": "Most matching lines to return. Default 100."},
                        "context": {"type": "integer", "minimum": 0, "maximum": MAX_CONTEXT, "description": "Lines of context before and after each match. Default 0."},
                    }),
                    &["query"],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {
                        "matches": {"type": "array", "items": {
                            "type": "object",
                            "properties": {
                                "path": {"type": "string"},
                                "line": {"type": "integer", "description": "1-based line number."},
                                "text": {"type": "string"},
                                "before": {"type": "array", "items": {"type": "string"}},
                                "after": {"type": "array", "items": {"type": "string"}},
                            },
                            "required": ["path", "line", "text"],
                        }},
                        "truncated": {"type": "boolean"},
                        "files_searched": {"type": "integer"},
                        "binary_files_skipped": {"type": "integer"},
                        "unreadable_files": {"type": "integer"},
                    },
                    "required": ["matches", "truncated"],
                })),
                annotations: Annotations::READ_ONLY,
            },
        }
    }
}

impl Default for SearchCode {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for SearchCode {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, cx: &'a CallContext<'a>, args: Map<String, Value>) -> ToolFuture<'a> {
        Box::pin(async move {
            match parse(&args, cx.sink.map(|s| s.max_items)) {
                Ok(a) => search(cx, a).await,
                Err(e) => e,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::common::testing::{assert_error, call, call_async, run, shard, text};
    use crate::tools::common::{join_all, LocalBoxFuture};
    use crate::tools::CancelFlag;
    use std::fs;
    use std::time::Duration;

    fn fixture() -> (tempfile::TempDir, crate::shard::Shard) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::create_dir_all(p.join("src")).unwrap();
        fs::create_dir_all(p.join("target")).unwrap();
        fs::write(
            p.join("src/main.rs"),
            "fn main() {\n    let x = Foo::new();\n    x.run();\n}\n",
        )
        .unwrap();
        fs::write(
            p.join("src/lib.rs"),
            "pub struct Foo;\nimpl Foo {}\n// foo in lowercase\n",
        )
        .unwrap();
        fs::write(p.join("README.md"), "Foo is documented here\n").unwrap();
        fs::write(p.join("target/gen.rs"), "Foo generated\n").unwrap();
        fs::write(p.join(".gitignore"), "target/\n").unwrap();
        fs::write(p.join(".secret"), "Foo hidden\n").unwrap();
        fs::write(p.join("blob.bin"), b"Foo\0\x01\x02").unwrap();
        let s = shard(vec![p.into()], vec![]);
        (d, s)
    }

    fn paths(r: &ToolResult) -> Vec<String> {
        r.structured_content().unwrap()["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}:{}", m["path"].as_str().unwrap(), m["line"]))
            .collect()
    }

    #[test]
    fn literal_search_respects_ignores_hidden_and_binary() {
        let (_d, s) = fixture();
        let r = call(&s, "search_code", json!({"query": "Foo"}));
        assert!(!r.is_error, "{r:?}");
        assert_eq!(
            paths(&r),
            [
                "README.md:1",
                "src/lib.rs:1",
                "src/lib.rs:2",
                "src/main.rs:2"
            ]
        );
        assert!(text(&r).contains("src/main.rs:2:     let x = Foo::new();\n"));
        let st = r.structured_content().unwrap();
        assert_eq!(st["truncated"], false);
        assert_eq!(st["binary_files_skipped"], 1);
    }

    #[test]
    fn regex_case_glob_context_and_limits() {
        let (_d, s) = fixture();
        let r = call(
            &s,
            "search_code",
            json!({"query": "foo", "case_sensitive": false, "glob": "*.rs"}),
        );
        assert_eq!(
            paths(&r),
            [
                "src/lib.rs:1",
                "src/lib.rs:2",
                "src/lib.rs:3",
                "src/main.rs:2"
            ]
        );
        let r = call(
            &s,
            "search_code",
            json!({"query": r"^\s+x\.\w+\(", "regex": true, "path": "src/main.rs", "context": 1}),
        );
        assert_eq!(
            r.structured_content().unwrap()["matches"],
            json!([{"path": "src/main.rs", "line": 3, "text": "    x.run();", "before": ["    let x = Foo::new();"], "after": ["}"]}])
        );
        assert_eq!(text(&r), "src/main.rs-2-     let x = Foo::new();\nsrc/main.rs:3:     x.run();\nsrc/main.rs-4- }\n");
        let r = call(&s, "search_code", json!({"query": "Foo", "max_results": 2}));
        assert_eq!(paths(&r).len(), 2);
        assert_eq!(r.structured_content().unwrap()["truncated"], true);
        assert!(text(&r).contains("stopped at max_results=2"));
        let r = call(
            &s,
            "search_code",
            json!({"query": "Foo", "glob": "!*.md", "path": "."}),
        );
        assert!(!paths(&r).iter().any(|p| p.starts_with("README")));
        let r = call(&s, "search_code", json!({"query": "nothing-like-this"}));
        assert!(!r.is_error);
        assert!(text(&r).starts_with("no matches"));
    }

    #[test]
    fn failures_and_escapes() {
        let (d, s) = fixture();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("o.rs"), "Foo outside\n").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("src/out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("o.rs"), d.path().join("src/o.rs")).unwrap();
        let r = call(&s, "search_code", json!({"query": "outside"}));
        assert!(paths(&r).is_empty(), "{r:?}");
        assert_error(
            &call(&s, "search_code", json!({"query": "x", "path": "src/out"})),
            "outside the allowed roots",
        );
        assert_error(
            &call(&s, "search_code", json!({"query": "x", "path": "../"})),
            "outside the allowed roots",
        );
        assert_error(
            &call(&s, "search_code", json!({"query": "(", "regex": true})),
            "invalid regex",
        );
        assert_error(
            &call(&s, "search_code", json!({"query": ""})),
            "`query` must be 1 to",
        );
        assert_error(
            &call(&s, "search_code", json!({"query": "x", "glob": "{"})),
            "invalid glob",
        );
        assert_error(
            &call(&s, "search_code", json!({"query": "x", "context": 99})),
            "`context` must be",
        );
        assert_error(
            &call(&s, "search_code", json!({"query": "x", "path": "nope"})),
            "does not exist",
        );
    }

    #[test]
    fn sees_new_and_changed_files() {
        let (d, s) = fixture();
        assert_eq!(
            paths(&call(&s, "search_code", json!({"query": "Bar"}))).len(),
            0
        );
        fs::write(d.path().join("src/new.rs"), "Bar\n").unwrap();
        fs::write(d.path().join("src/lib.rs"), "Bar\n").unwrap();
        assert_eq!(
            paths(&call(&s, "search_code", json!({"query": "Bar"}))),
            ["src/lib.rs:1", "src/new.rs:1"]
        );
    }

    #[test]
    fn stops_when_cancelled_or_past_the_deadline() {
        let (_d, s) = fixture();
        let cancel = CancelFlag::default();
        cancel.cancel();
        let far = Instant::now() + Duration::from_secs(60);
        let r = run(call_async(
            &s,
            "search_code",
            json!({"query": "Foo"}),
            far,
            cancel,
        ));
        assert_error(&r, "cancelled");
        let past = Instant::now();
        let r = run(call_async(
            &s,
            "search_code",
            json!({"query": "Foo"}),
            past,
            CancelFlag::default(),
        ));
        assert_error(&r, "timed out");
    }

    #[test]
    fn line_numbers_and_context_at_edges() {
        let m = Pattern::compile("x", false, true).unwrap();
        let hits = search_file(&m, b"x\na\nx x\n\nx", 2, 10);
        let lines: Vec<usize> = hits.iter().map(|h| h.line).collect();
        assert_eq!(lines, [1, 3, 5]);
        assert_eq!(hits[0].before, Vec::<String>::new());
        assert_eq!(hits[0].after, ["a", "x x"]);
        assert_eq!(hits[2].before, ["x x", ""]);
        assert!(hits[2].after.is_empty());
    }

    /// A shard whose walk cache treats the files the test just wrote as settled
    /// (not "racily" recent), so that snapshots are built as they would be for a
    /// tree last changed more than two seconds ago.
    fn settled(s: &crate::shard::Shard) {
        s.storage
            .trees
            .set_clock(crate::storage::file_cache::an_hour_ahead);
    }

    /// Changes within one tick of the filesystem clock leave a directory's
    /// timestamps as they were; the test gives each change its own mtime so that
    /// the walk cache (whose clock `settled` moved) sees it, as it would in real
    /// time.
    fn stamp(dir: &std::path::Path, k: u64) {
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + k);
        fs::File::open(dir).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn a_snapshot_serves_repeats_without_stats_and_retires_on_any_change() {
        let (d, s) = fixture();
        settled(&s);
        let p = d.path();
        let search = |q: &str| paths(&call(&s, "search_code", json!({"query": q})));
        let snaps = || s.storage.snapshots.stats();

        assert_eq!(search("Foo").len(), 4);
        assert_eq!(snaps().built, 1);
        let files = s.storage.files.stats();
        assert_eq!(search("Foo").len(), 4);
        assert_eq!(snaps().used, 1);
        assert_eq!(
            s.storage.files.stats(),
            files,
            "a snapshot search touches no file-cache entry"
        );
        // A glob narrows a snapshot search too.
        assert_eq!(
            paths(&call(
                &s,
                "search_code",
                json!({"query": "Foo", "glob": "*.md"})
            )),
            ["README.md:1"]
        );
        assert_eq!(snaps().used, 2);

        // Same size, same second: the racy rewrite a stat fingerprint can miss.
        let before = fs::read(p.join("src/lib.rs")).unwrap();
        let after = String::from_utf8(before.clone())
            .unwrap()
            .replacen("Foo", "Qux", 1);
        assert_eq!(before.len(), after.len());
        fs::write(p.join("src/lib.rs"), &after).unwrap();
        assert_eq!(search("Qux"), ["src/lib.rs:1"]);
        let built = snaps().built;
        assert_eq!(
            search("Qux"),
            ["src/lib.rs:1"],
            "and again, from a new snapshot"
        );
        assert_eq!(snaps().built, built);

        // Created, deleted, renamed, newly ignored: each seen by the next search.
        fs::write(p.join("src/new.rs"), "Qux\n").unwrap();
        stamp(&p.join("src"), 1);
        assert_eq!(search("Qux"), ["src/lib.rs:1", "src/new.rs:1"]);
        fs::remove_file(p.join("src/lib.rs")).unwrap();
        stamp(&p.join("src"), 2);
        assert_eq!(search("Qux"), ["src/new.rs:1"]);
        fs::rename(p.join("src/new.rs"), p.join("src/renamed.rs")).unwrap();
        stamp(&p.join("src"), 3);
        assert_eq!(search("Qux"), ["src/renamed.rs:1"]);
        fs::write(p.join(".gitignore"), "target/\nrenamed.rs\n").unwrap();
        assert_eq!(search("Qux"), Vec::<String>::new());
        assert!(snaps().built > built);
    }

    /// The trigram index only skips files: every answer from a snapshot is the
    /// answer a search reading every byte gives, for queries whose matches are
    /// not the query's own bytes (case, Unicode folding) as well.
    #[test]
    fn the_index_never_changes_an_answer() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let long = "filler line\n".repeat(4000) + "Kelvin at the end\n";
        let files = [
            ("a.rs", "let kelvin = 1;\nstruct Secret;\n"),
            ("b.rs", "\u{212A}ELVIN and \u{17F}ecret\n"),
            ("c.md", "Émile ÉMILE émile\nneedle_marker\n"),
            ("d.txt", "NEEDLE_MARKER? no: Needle_Marker\n"),
            ("e.txt", "ab\nabc\n"),
            ("long.txt", long.as_str()),
        ];
        for (name, body) in files {
            fs::write(p.join(name), body).unwrap();
        }
        fs::write(p.join("f.bin"), b"needle_marker\0").unwrap();
        let cached = shard(vec![p.into()], vec![]);
        settled(&cached);
        let plain =
            crate::tools::common::testing::uncached_shard("search_code", vec![p.into()], vec![]);
        let queries = [
            "kelvin",
            "KELVIN",
            "secret",
            "SECRET",
            "émile",
            "ÉMILE",
            "needle_marker",
            "needle",
            "Kelvin at",
            "ab",
            "abc",
            "zzz",
        ];
        let regexes = [
            "kel+vin",
            "needle_(marker|x)",
            "(?i)émile",
            "s.cret|SECRET",
            "[ab]bc",
            "^ab$",
            "Kelvin at|zzz",
            "(kelvin|\u{212A}ELVIN)",
            "x*",
            r"\w+_marker",
            r"(?i)\w+_MARKER",
            "[a-z]+vin",
            r".*cret\b",
            r"\w+ at the end$",
            r"\w*\x{212A}ELVIN",
        ];
        let cases = queries.iter().map(|q| (*q, false));
        for (query, regex) in cases.chain(regexes.iter().map(|q| (*q, true))) {
            let globs = [None, Some("*.rs"), Some("!*.md")];
            for (case_sensitive, glob) in globs.iter().flat_map(|g| [(true, g), (false, g)]) {
                let mut args =
                    json!({"query": query, "case_sensitive": case_sensitive, "regex": regex});
                if let Some(glob) = glob {
                    args["glob"] = json!(glob);
                }
                call(&cached, "search_code", args.clone());
                let used = cached.storage.snapshots.stats().used;
                let from_snapshot = call(&cached, "search_code", args.clone());
                assert_eq!(cached.storage.snapshots.stats().used, used + 1);
                let read_through = call(&plain, "search_code", args);
                assert_eq!(
                    from_snapshot.structured_content(),
                    read_through.structured_content(),
                    "{query:?}, case_sensitive {case_sensitive}, glob {glob:?}"
                );
            }
        }
        let insensitive = |q: &str| {
            paths(&call(
                &cached,
                "search_code",
                json!({"query": q, "case_sensitive": false}),
            ))
        };
        assert_eq!(insensitive("kelvin"), ["a.rs:1", "b.rs:1", "long.txt:4001"]);
        assert_eq!(insensitive("secret"), ["a.rs:2", "b.rs:1"]);
    }

    /// A cold shard hit by several searches of one tree at once walks and reads
    /// it once: the others wait for the first one's snapshot. One that is
    /// cancelled while it builds lets the waiting searches go.
    #[test]
    fn concurrent_searches_of_a_cold_tree_build_one_snapshot() {
        let (_d, s) = fixture();
        settled(&s);
        let deadline = Instant::now() + Duration::from_secs(60);
        let searches = (0..8)
            .map(|_| {
                Box::pin(call_async(
                    &s,
                    "search_code",
                    json!({"query": "Foo"}),
                    deadline,
                    CancelFlag::default(),
                )) as LocalBoxFuture<'_, ToolResult>
            })
            .collect();
        for r in run(join_all(searches)) {
            assert_eq!(paths(&r).len(), 4, "{}", text(&r));
        }
        assert_eq!(s.storage.trees.stats().walked, 1);
        assert_eq!(s.storage.snapshots.stats().built, 1);
        assert_eq!(s.storage.snapshots.stats().used, 7);

        // A builder dropped half-way (its deadline passed, its client cancelled).
        let (_d, s) = fixture();
        settled(&s);
        run(async {
            let search = || {
                call_async(
                    &s,
                    "search_code",
                    json!({"query": "Foo"}),
                    deadline,
                    CancelFlag::default(),
                )
            };
            let mut builder = Box::pin(search());
            assert!(futures_lite::future::poll_once(builder.as_mut())
                .await
                .is_none());
            let mut waiting = Box::pin(search());
            assert!(futures_lite::future::poll_once(waiting.as_mut())
                .await
                .is_none());
            drop(builder);
            assert_eq!(paths(&waiting.await).len(), 4);
        });
    }

    #[test]
    fn no_snapshot_when_the_tool_does_not_cache() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.rs"), "Foo\n").unwrap();
        let s = crate::tools::common::testing::uncached_shard(
            "search_code",
            vec![d.path().into()],
            vec![],
        );
        settled(&s);
        for _ in 0..2 {
            assert_eq!(
                paths(&call(&s, "search_code", json!({"query": "Foo"}))),
                ["a.rs:1"]
            );
        }
        assert_eq!(s.storage.snapshots.stats().built, 0);
        assert_eq!(s.storage.snapshots.stats().used, 0);
        assert!(s.storage.snapshots.watcher().is_empty());
    }

    /// Progress ends at "all files done" on both paths: the first search reads
    /// through the file cache, the second scans the snapshot.
    #[test]
    fn progress_reaches_the_total_with_and_without_a_snapshot() {
        let (_d, s) = fixture();
        settled(&s);
        for round in 0..2 {
            let cell = crate::tools::ProgressCell::default();
            let tool = s.tools.get("search_code").unwrap();
            let cx = CallContext {
                shard: &s,
                deadline: Instant::now() + Duration::from_secs(60),
                cancel: CancelFlag::default(),
                sink: None,
                progress: Some(&cell),
            };
            let Value::Object(args) = json!({"query": "Foo"}) else {
                unreachable!()
            };
            let r = run(tool.call(&cx, args));
            assert!(!r.is_error, "{}", text(&r));
            let (done, total) = cell.get();
            assert!(done > 0, "round {round}");
            assert_eq!(Some(done), total, "round {round}");
        }
        assert_eq!(s.storage.snapshots.stats().used, 1);
    }
}
