//! `list_directory`: a directory's entries with kind and size, sorted by name.

use std::fs;

use serde_json::{json, Map, Value};

use super::common::{input_schema, no_unknown_args, req_str, resolve};
use super::{Annotations, CallContext, Tool, ToolFuture, ToolResult, ToolSpec};

/// Entries one answer lists; the rest are counted but not listed.
pub const MAX_LIST_ENTRIES: usize = 1000;

pub struct ListDirectory {
    spec: ToolSpec,
}

impl ListDirectory {
    pub fn new() -> ListDirectory {
        ListDirectory {
            spec: ToolSpec {
                name: "list_directory",
                title: "List directory",
                description: "List a directory inside the served roots: each entry's name, kind (file, dir, \
                    symlink or other) and size in bytes (files only), sorted by name. Symlinks are shown, not \
                    followed. Use \".\" for the first root. Long listings are cut; search_code with `glob` \
                    finds files by pattern.",
                input_schema: input_schema(
                    json!({
                        "path": {"type": "string", "description": "Directory path, relative to the first root (\".\" for the root itself) or absolute inside a root."},
                    }),
                    &["path"],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "entries": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"enum": ["file", "dir", "symlink", "other"]},
                                    "size": {"type": "integer"},
                                },
                                "required": ["name", "kind"],
                            },
                        },
                        "total": {"type": "integer", "description": "Entries in the directory."},
                        "truncated": {"type": "boolean"},
                    },
                    "required": ["path", "entries", "total", "truncated"],
                })),
                annotations: Annotations::READ_ONLY,
            },
        }
    }
}

fn list(cx: &CallContext<'_>, args: &Map<String, Value>) -> Result<ToolResult, ToolResult> {
    no_unknown_args(args, &["path"])?;
    let dir = resolve(cx, req_str(args, "path")?)?;
    let display = dir.display;
    let read = fs::read_dir(&dir.real).map_err(|e| {
        ToolResult::error(match e.raw_os_error() {
            Some(libc::ENOTDIR) => {
                format!("`{display}` is not a directory; use read_file to read it")
            }
            _ => format!("cannot list `{display}`: {e}"),
        })
    })?;
    let mut names: Vec<_> = read.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort_unstable();
    let total = names.len();
    let truncated = total > MAX_LIST_ENTRIES;
    let mut entries = Vec::with_capacity(total.min(MAX_LIST_ENTRIES));
    let mut text = String::new();
    for name in names.into_iter().take(MAX_LIST_ENTRIES) {
        // lstat: a symlink is reported as one, never followed out of the roots.
        let meta = fs::symlink_metadata(dir.real.join(&name));
        let (kind, size) = match &meta {
            Ok(m) if m.file_type().is_symlink() => ("symlink", None),
            Ok(m) if m.is_dir() => ("dir", None),
            Ok(m) if m.is_file() => ("file", Some(m.len())),
            _ => ("other", None),
        };
        let name = name.to_string_lossy().into_owned();
        match size {
            Some(n) => text.push_str(&format!("{kind}\t{n}\t{name}\n")),
            None => text.push_str(&format!("{kind}\t-\t{name}\n")),
        }
        let mut entry = json!({"name": name, "kind": kind});
        if let Some(n) = size {
            entry["size"] = json!(n);
        }
        entries.push(entry);
    }
    if truncated {
        text.push_str(&format!(
            "[… {} more entries not listed; the listing is capped at {MAX_LIST_ENTRIES}]\n",
            total - MAX_LIST_ENTRIES
        ));
    }
    if total == 0 {
        text.push_str("(empty directory)\n");
    }
    Ok(ToolResult::structured(
        json!({"path": display, "entries": entries, "total": total, "truncated": truncated}),
        text,
    ))
}

/// Streamed (direct API, NDJSON): entries leave in directory order as they are
/// read, uncapped up to the sink's limit, so no listing is held whole.
async fn stream(
    cx: &CallContext<'_>,
    sink: &crate::tools::ItemSink,
    args: &Map<String, Value>,
) -> Result<ToolResult, ToolResult> {
    no_unknown_args(args, &["path"])?;
    let dir = resolve(cx, req_str(args, "path")?)?;
    let display = dir.display;
    let read = fs::read_dir(&dir.real)
        .map_err(|e| ToolResult::error(format!("cannot list `{display}`: {e}")))?;
    let mut sent = 0usize;
    let mut truncated = false;
    for entry in read.filter_map(|e| e.ok()) {
        if sent == sink.max_items {
            truncated = true;
            break;
        }
        let meta = entry.metadata();
        let mut item = json!({"name": entry.file_name().to_string_lossy(), "kind": "other"});
        match &meta {
            Ok(m) if m.file_type().is_symlink() => item["kind"] = "symlink".into(),
            Ok(m) if m.is_dir() => item["kind"] = "dir".into(),
            Ok(m) if m.is_file() => {
                item["kind"] = "file".into();
                item["size"] = m.len().into();
            }
            _ => {}
        }
        if !sink.send(item).await {
            return Err(ToolResult::error(
                "the reader went away; the listing stopped",
            ));
        }
        sent += 1;
    }
    Ok(ToolResult::structured(
        json!({"path": display, "entries_streamed": sent, "truncated": truncated}),
        format!("{sent} entries streamed"),
    ))
}

impl Default for ListDirectory {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for ListDirectory {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, cx: &'a CallContext<'a>, args: Map<String, Value>) -> ToolFuture<'a> {
        Box::pin(async move {
            match cx.sink {
                Some(sink) => stream(cx, sink, &args).await.unwrap_or_else(|e| e),
                None => list(cx, &args).unwrap_or_else(|e| e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::MAX_LIST_ENTRIES;
    use crate::tools::common::testing::{assert_error, call, shard, text};
    use serde_json::json;
    use std::os::unix::fs::symlink;

    #[test]
    fn lists_sorted_with_kinds_and_sizes() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.txt"), "12345").unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        symlink(outside.path(), d.path().join("c")).unwrap();
        let s = shard(vec![d.path().into()], vec![]);
        let r = call(&s, "list_directory", json!({"path": "."}));
        assert!(!r.is_error);
        assert_eq!(
            r.structured_content().cloned().unwrap(),
            json!({"path": ".", "total": 3, "truncated": false, "entries": [
                {"name": "a", "kind": "dir"},
                {"name": "b.txt", "kind": "file", "size": 5},
                {"name": "c", "kind": "symlink"},
            ]})
        );
        assert_eq!(text(&r), "dir\t-\ta\nfile\t5\tb.txt\nsymlink\t-\tc\n");
        // The symlink is listed, never entered.
        assert_error(
            &call(&s, "list_directory", json!({"path": "c"})),
            "outside the allowed roots",
        );
    }

    #[test]
    fn bounded_and_failures() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..MAX_LIST_ENTRIES + 5 {
            std::fs::write(d.path().join(format!("f{i:05}")), "").unwrap();
        }
        let s = shard(vec![d.path().into()], vec![]);
        let r = call(&s, "list_directory", json!({"path": "."}));
        let st = r.structured_content().unwrap();
        assert_eq!(st["truncated"], true);
        assert_eq!(st["total"], MAX_LIST_ENTRIES + 5);
        assert_eq!(st["entries"].as_array().unwrap().len(), MAX_LIST_ENTRIES);
        assert!(text(&r).contains("5 more entries not listed"));
        assert_error(
            &call(&s, "list_directory", json!({"path": "f00001"})),
            "not a directory",
        );
        assert_error(
            &call(&s, "list_directory", json!({"path": "nope"})),
            "does not exist",
        );
        assert_error(
            &call(&s, "list_directory", json!({"path": "../"})),
            "outside the allowed roots",
        );
    }
}
