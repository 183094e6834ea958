//! `read_multiple_files`: several text files in one call, read concurrently; each
//! file succeeds or fails on its own.

use serde_json::{json, Map, Value};

use super::common::{input_schema, join_all, no_unknown_args, LocalBoxFuture};
use super::read_file::{read_excerpt, Excerpt, MAX_READ_BYTES};
use super::{Annotations, CallContext, Tool, ToolFuture, ToolResult, ToolSpec};

/// Files one call may name.
pub const MAX_FILES_PER_CALL: usize = 64;
/// Bytes of content across all files of one answer; each file is also held to
/// read_file's own cap.
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;

pub struct ReadMultipleFiles {
    spec: ToolSpec,
}

impl ReadMultipleFiles {
    pub fn new() -> ReadMultipleFiles {
        ReadMultipleFiles {
            spec: ToolSpec {
                name: "read_multiple_files",
                title: "Read multiple files",
                description: "Read several UTF-8 text files at once (faster than one read_file call each). \
                    A missing or unreadable file does not fail the others: each file's entry carries either \
                    its content or an error. Each file is cut like read_file (use read_file with `offset` to \
                    read on); the whole answer is also capped.",
                input_schema: input_schema(
                    json!({
                        "paths": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                            "maxItems": MAX_FILES_PER_CALL,
                            "description": "File paths, relative to the first root or absolute inside a root.",
                        },
                    }),
                    &["paths"],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "path": {"type": "string"},
                                    "content": {"type": "string"},
                                    "truncated": {"type": "boolean"},
                                    "next_offset": {"type": "integer", "description": "Pass to read_file to read on."},
                                    "error": {"type": "string"},
                                },
                                "required": ["path"],
                            },
                        },
                    },
                    "required": ["files"],
                })),
                annotations: Annotations::READ_ONLY,
            },
        }
    }
}

fn parse(args: &Map<String, Value>) -> Result<Vec<String>, ToolResult> {
    no_unknown_args(args, &["paths"])?;
    let bad = || {
        ToolResult::error(format!(
            "argument `paths` must be an array of 1 to {MAX_FILES_PER_CALL} strings"
        ))
    };
    let Some(Value::Array(items)) = args.get("paths") else {
        return Err(if args.contains_key("paths") {
            bad()
        } else {
            ToolResult::error("missing required argument `paths` (an array of strings)")
        });
    };
    if items.is_empty() || items.len() > MAX_FILES_PER_CALL {
        return Err(bad());
    }
    items
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
        .collect()
}

impl Default for ReadMultipleFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for ReadMultipleFiles {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, cx: &'a CallContext<'a>, args: Map<String, Value>) -> ToolFuture<'a> {
        Box::pin(async move {
            let paths = match parse(&args) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let reads: Vec<LocalBoxFuture<'a, Result<Excerpt, ToolResult>>> = paths
                .iter()
                .map(|p| {
                    let p = p.clone();
                    Box::pin(async move {
                        read_excerpt(cx, "read_multiple_files", &p, 1, None, MAX_READ_BYTES).await
                    }) as LocalBoxFuture<'a, _>
                })
                .collect();
            let results = join_all(reads).await;

            let mut files = Vec::with_capacity(results.len());
            let mut text = String::new();
            let mut total = 0usize;
            let mut failures = 0;
            for (path, result) in paths.iter().zip(results) {
                match result {
                    Ok(ex) if total + ex.text.len() > MAX_TOTAL_BYTES => {
                        let msg = format!(
                            "skipped: the answer reached its {} KiB cap; read this file with read_file",
                            MAX_TOTAL_BYTES / 1024
                        );
                        text.push_str(&format!("=== {} ===\n{msg}\n", ex.path.display));
                        files.push(json!({"path": ex.path.display, "error": msg}));
                    }
                    Ok(ex) => {
                        total += ex.text.len();
                        text.push_str(&format!("=== {} ===\n{}", ex.path.display, &*ex.text));
                        if !ex.text.is_empty() && !ex.text.ends_with('\n') {
                            text.push('\n');
                        }
                        let mut entry = json!({"path": ex.path.display, "content": &*ex.text, "truncated": ex.truncated});
                        if let Some(note) = ex.note() {
                            text.push_str(&note);
                            text.push('\n');
                            entry["next_offset"] = json!(ex.last + 1);
                        }
                        files.push(entry);
                    }
                    Err(e) => {
                        failures += 1;
                        let msg = e.content()[0].text();
                        text.push_str(&format!("=== {path} ===\nerror: {msg}\n"));
                        files.push(json!({"path": path, "error": msg}));
                    }
                }
            }
            let mut result = ToolResult::structured(json!({ "files": files }), text);
            result.is_error = failures == paths.len();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::tools::common::testing::{assert_error, call, shard, text};
    use serde_json::json;

    #[test]
    fn reads_all_and_names_each_failure() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "A\n").unwrap();
        std::fs::write(d.path().join("b"), "B").unwrap();
        std::fs::write(d.path().join("bin"), b"\0").unwrap();
        let s = shard(vec![d.path().into()], vec![]);
        let r = call(
            &s,
            "read_multiple_files",
            json!({"paths": ["a", "missing", "b", "bin", "../x"]}),
        );
        assert!(!r.is_error);
        let files = r.structured_content().unwrap()["files"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(files.len(), 5);
        assert_eq!(
            files[0],
            json!({"path": "a", "content": "A\n", "truncated": false})
        );
        assert!(files[1]["error"]
            .as_str()
            .unwrap()
            .contains("`missing` does not exist"));
        assert_eq!(files[2]["content"], "B");
        assert!(files[3]["error"].as_str().unwrap().contains("binary"));
        assert!(files[4]["error"]
            .as_str()
            .unwrap()
            .contains("outside the allowed roots"));
        assert!(text(&r).starts_with("=== a ===\nA\n=== missing ===\nerror: "));
    }

    #[test]
    fn all_failing_is_an_error_and_bad_arguments_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = shard(vec![d.path().into()], vec![]);
        let r = call(&s, "read_multiple_files", json!({"paths": ["nope"]}));
        assert!(r.is_error);
        assert_error(
            &call(&s, "read_multiple_files", json!({"paths": []})),
            "array of 1 to 64 strings",
        );
        assert_error(
            &call(&s, "read_multiple_files", json!({"paths": [1]})),
            "array of 1 to 64 strings",
        );
        assert_error(
            &call(&s, "read_multiple_files", json!({})),
            "missing required argument `paths`",
        );
    }
}
