//! The tool plumbing: the [`Tool`] trait every built-in tool implements, and the
//! [`Registry`] that lists and finds them.
//!
//! One file per tool lives beside this one. A tool is shard-local: its future runs
//! on the shard that received the call and may borrow that shard's storage (caches,
//! database connections) without locks, which is why the future is not `Send`.

pub mod common;
pub mod db_schema;
pub mod list_directory;
pub mod query_db;
pub mod read_file;
pub mod read_multiple_files;
pub mod search_code;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::shard::Shard;
use crate::storage::file_cache::CachedFile;

/// A future a tool returns; it lives on one shard.
pub type ToolFuture<'a> = Pin<Box<dyn Future<Output = ToolResult> + 'a>>;

/// Hints a client may show or use to decide whether to ask the user first.
#[derive(Clone, Copy, Debug)]
pub struct Annotations {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

impl Annotations {
    /// The hints of a tool that only reads local state.
    pub const READ_ONLY: Annotations = Annotations {
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: false,
    };
}

/// What `tools/list` says of a tool.
#[derive(Clone, Debug)]
pub struct ToolSpec {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// JSON Schema (2020-12) of the arguments; always `"type": "object"`.
    pub input_schema: Value,
    /// JSON Schema of `structuredContent`, where the tool returns structure.
    pub output_schema: Option<Value>,
    pub annotations: Annotations,
}

impl ToolSpec {
    /// The tool as a `Tool` object of the MCP schema.
    pub fn to_json(&self) -> Value {
        let mut tool = Map::new();
        tool.insert("name".into(), self.name.into());
        tool.insert("title".into(), self.title.into());
        tool.insert("description".into(), self.description.into());
        tool.insert("inputSchema".into(), self.input_schema.clone());
        if let Some(schema) = &self.output_schema {
            tool.insert("outputSchema".into(), schema.clone());
        }
        let a = self.annotations;
        tool.insert(
            "annotations".into(),
            json!({
                "title": self.title,
                "readOnlyHint": a.read_only,
                "destructiveHint": a.destructive,
                "idempotentHint": a.idempotent,
                "openWorldHint": a.open_world,
            }),
        );
        Value::Object(tool)
    }
}

/// One content block of a result. Only text is produced today.
#[derive(Clone, Debug)]
pub enum Content {
    Text(String),
    /// A cached file's whole text, shared with the file cache rather than copied
    /// out, and sent from the JSON form the cache keeps for it (see
    /// [`FileCache::keep_json`](crate::storage::file_cache::FileCache::keep_json)).
    File(Rc<CachedFile>),
}

impl Content {
    pub fn text(&self) -> &str {
        match self {
            Content::Text(t) => t,
            Content::File(f) => f.text().expect("only text files become content"),
        }
    }

    /// The block as JSON, into `out`.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
        match self {
            Content::Text(t) => {
                sonic_rs::to_writer(&mut *out, t.as_str()).expect("writing to a Vec cannot fail")
            }
            Content::File(f) => f.write_json_text(out),
        }
        out.push(b'}');
    }
}

/// Blocks are equal when they say the same: where the text lives does not matter.
impl PartialEq for Content {
    fn eq(&self, other: &Content) -> bool {
        self.text() == other.text()
    }
}

/// The outcome of a call, as `CallToolResult` carries it.
///
/// A failure the model can fix (bad arguments, a missing file, a refused query) is a
/// result with `is_error` set and a message saying what to change, never a JSON-RPC
/// error: the model reads results, not protocol errors.
///
/// A result a cache kept ([`Kept`]) shares the cache's blocks: read a result
/// through [`content`](Self::content) and
/// [`structured_content`](Self::structured_content), which see both forms.
#[derive(Clone, Debug)]
pub struct ToolResult {
    body: Body,
    pub is_error: bool,
}

/// What a result says: blocks of its own, or a kept answer's.
#[derive(Clone, Debug)]
enum Body {
    Own {
        content: Vec<Content>,
        structured: Option<Value>,
    },
    Kept(Rc<Kept>),
}

/// Results are equal when they say the same, kept or not.
impl PartialEq for ToolResult {
    fn eq(&self, other: &ToolResult) -> bool {
        self.is_error == other.is_error
            && self.content() == other.content()
            && self.structured_content() == other.structured_content()
    }
}

/// An answer a cache keeps (query_db's answer cache), with its JSON rendered once
/// when it is kept. A hit shares it: no copy of the rows, no serialising them
/// again. On a one-row lookup those were ~6k of the ~29k instructions a
/// request took (callgrind).
#[derive(Debug, PartialEq)]
pub struct Kept {
    result: ToolResult,
    /// [`ToolResult::write_json`]'s output for `result`, before the tail.
    json: Box<[u8]>,
}

impl Kept {
    pub fn new(result: ToolResult) -> Kept {
        assert!(
            matches!(result.body, Body::Own { .. }),
            "a kept answer is not kept twice"
        );
        let mut json = Vec::new();
        result.write_members(&mut json);
        Kept {
            result,
            json: json.into_boxed_slice(),
        }
    }

    /// Bytes of the rendered JSON, which the keeper counts with the answer.
    pub fn json_len(&self) -> usize {
        self.json.len()
    }
}

impl ToolResult {
    fn own(content: Content, structured: Option<Value>, is_error: bool) -> ToolResult {
        ToolResult {
            body: Body::Own {
                content: vec![content],
                structured,
            },
            is_error,
        }
    }

    pub fn text(text: impl Into<String>) -> ToolResult {
        ToolResult::own(Content::Text(text.into()), None, false)
    }

    /// A cached file's whole text, sent without copying it out of the cache.
    pub fn file(file: Rc<CachedFile>) -> ToolResult {
        ToolResult::own(Content::File(file), None, false)
    }

    pub fn error(message: impl Into<String>) -> ToolResult {
        ToolResult::own(Content::Text(message.into()), None, true)
    }

    /// Structured output mirrored in a text block, for clients that read only text.
    pub fn structured(structured: Value, text: impl Into<String>) -> ToolResult {
        ToolResult::own(Content::Text(text.into()), Some(structured), false)
    }

    /// A kept answer, shared with its keeper.
    pub fn kept(kept: Rc<Kept>) -> ToolResult {
        ToolResult {
            is_error: kept.result.is_error,
            body: Body::Kept(kept),
        }
    }

    /// The content blocks, kept or not.
    pub fn content(&self) -> &[Content] {
        match &self.body {
            Body::Own { content, .. } => content,
            Body::Kept(k) => k.result.content(),
        }
    }

    /// The structured content, kept or not.
    pub fn structured_content(&self) -> Option<&Value> {
        match &self.body {
            Body::Own { structured, .. } => structured.as_ref(),
            Body::Kept(k) => k.result.structured_content(),
        }
    }

    /// Writes the result as a `CallToolResult` object straight into `out`, with
    /// `tail` (already-serialised members, each led by a comma) before the closing
    /// brace. Same JSON as [`to_json`](Self::to_json), without building the tree
    /// or cloning `structured`: on a small read_file answer that tree cost as much
    /// as the rest of the request.
    pub fn write_json(&self, out: &mut Vec<u8>, tail: &[u8]) {
        self.write_members(out);
        out.extend_from_slice(tail);
        out.push(b'}');
    }

    /// [`write_json`](Self::write_json) up to the tail: a kept answer's as it was
    /// rendered when kept.
    fn write_members(&self, out: &mut Vec<u8>) {
        let (content, structured) = match &self.body {
            Body::Own {
                content,
                structured,
            } => (content, structured),
            Body::Kept(k) => return out.extend_from_slice(&k.json),
        };
        out.extend_from_slice(b"{\"content\":[");
        for (i, c) in content.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            c.write_json(out);
        }
        out.push(b']');
        if let Some(s) = structured {
            out.extend_from_slice(b",\"structuredContent\":");
            sonic_rs::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
        }
        out.extend_from_slice(if self.is_error {
            b",\"isError\":true"
        } else {
            b",\"isError\":false"
        });
    }

    /// The result as a `CallToolResult` object.
    pub fn to_json(&self) -> Value {
        let content: Vec<Value> = self
            .content()
            .iter()
            .map(|c| json!({"type": "text", "text": c.text()}))
            .collect();
        let mut out = Map::new();
        out.insert("content".into(), Value::Array(content));
        if let Some(s) = self.structured_content() {
            out.insert("structuredContent".into(), s.clone());
        }
        out.insert("isError".into(), Value::Bool(self.is_error));
        Value::Object(out)
    }
}

/// Set when the client cancels a call or its deadline passes. An `Arc` because
/// blocking work (a SQLite query on a helper thread) must see it too.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    /// The shared flag, for code that runs off the shard.
    pub fn shared(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// What a tool call may use: the shard it runs on, its deadline and its cancel flag.
///
/// The dispatcher also races the tool's future against the deadline and a
/// cancellation, and drops it when either wins; `deadline` and `cancel` are for work
/// that dropping cannot stop (a query running inside SQLite, a blocking thread).
pub struct CallContext<'a> {
    pub shard: &'a Shard,
    pub deadline: Instant,
    pub cancel: CancelFlag,
    /// Set when the caller streams items (direct API, NDJSON): a tool that can
    /// sends each item here as it finds it instead of gathering them.
    pub sink: Option<&'a ItemSink>,
    /// Set when the caller wants progress (MCP `_meta.progressToken`).
    pub progress: Option<&'a ProgressCell>,
}

impl CallContext<'_> {
    /// Reports progress: `done` of `total` (when known). Cheap: a cell write; the
    /// transport decides when to send it.
    pub fn report_progress(&self, done: u64, total: Option<u64>) {
        if let Some(p) = self.progress {
            p.set(done, total);
        }
    }
}

/// The transport's end of an [`ItemSink`].
pub struct ItemReceiver(glommio::channels::local_channel::LocalReceiver<Value>);

impl ItemReceiver {
    /// The next item; `None` once the tool has finished and the queue is empty.
    pub async fn recv(&self) -> Option<Value> {
        self.0.recv().await
    }
}

impl Drop for ItemReceiver {
    /// Empties the queue before the receiver goes. glommio-ng wakes a sender
    /// waiting for room when the receiver drops, but the sender then looks only
    /// for room: with the queue still full it waits again, for good, and a tool
    /// whose reader left mid-stream ran on until its deadline. With room, its
    /// send finds the channel closed and the tool stops.
    fn drop(&mut self) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let recv = std::pin::pin!(self.0.recv());
            if !matches!(recv.poll(&mut cx), std::task::Poll::Ready(Some(_))) {
                break;
            }
        }
    }
}

/// Where a streaming call sends its items. Bounded: `send` waits while the queue
/// is full, so a slow reader stalls the tool rather than growing memory.
pub struct ItemSink {
    tx: std::cell::RefCell<
        Option<std::rc::Rc<glommio::channels::local_channel::LocalSender<Value>>>,
    >,
    /// Most items the call may send; past it the tool stops and says so.
    pub max_items: usize,
}

impl ItemSink {
    /// A sink and the receiver the transport drains, holding at most `queue` items.
    pub fn new(queue: usize, max_items: usize) -> (ItemSink, ItemReceiver) {
        let (tx, rx) = glommio::channels::local_channel::new_bounded(queue.max(1));
        (
            ItemSink {
                tx: std::cell::RefCell::new(Some(std::rc::Rc::new(tx))),
                max_items,
            },
            ItemReceiver(rx),
        )
    }

    /// Ends the stream: the receiver sees the end once it has drained the queue.
    pub fn finish(&self) {
        self.tx.borrow_mut().take();
    }

    /// Sends one item, waiting for room; false when the reader has gone (the
    /// tool should stop: nobody will read the rest).
    pub async fn send(&self, item: Value) -> bool {
        // The sender is cloned out so that no RefCell borrow is held across the await.
        let tx = self.tx.borrow().clone();
        match tx {
            Some(tx) => tx.send(item).await.is_ok(),
            None => false,
        }
    }
}

/// The latest progress of one call: written by the tool, read by the transport.
#[derive(Default)]
pub struct ProgressCell {
    state: std::cell::Cell<(u64, Option<u64>)>,
}

impl ProgressCell {
    pub fn set(&self, done: u64, total: Option<u64>) {
        self.state.set((done, total));
    }
    pub fn get(&self) -> (u64, Option<u64>) {
        self.state.get()
    }
}

/// A built-in tool.
pub trait Tool {
    fn spec(&self) -> &ToolSpec;
    fn call<'a>(&'a self, cx: &'a CallContext<'a>, args: Map<String, Value>) -> ToolFuture<'a>;
}

/// The tools a shard serves, in a fixed order so that `tools/list` and its cursors
/// are deterministic.
pub struct Registry {
    tools: Vec<Box<dyn Tool>>,
}

impl Registry {
    /// Every built-in tool. Order here is the order of `tools/list`.
    pub fn builtin() -> Registry {
        let tools: Vec<Box<dyn Tool>> = vec![
            Box::new(read_file::ReadFile::new()),
            Box::new(read_multiple_files::ReadMultipleFiles::new()),
            Box::new(list_directory::ListDirectory::new()),
            Box::new(search_code::SearchCode::new()),
            Box::new(query_db::QueryDb::new()),
            Box::new(db_schema::DbSchema::new()),
        ];
        Registry::new(tools)
    }

    /// The built-in tools the configuration enables, in the same order.
    pub fn configured(config: &crate::config::Config) -> Registry {
        let mut r = Registry::builtin();
        r.tools.retain(|t| config.tool_enabled(t.spec().name));
        r
    }

    pub fn new(tools: Vec<Box<dyn Tool>>) -> Registry {
        for (i, t) in tools.iter().enumerate() {
            assert!(
                tools[..i].iter().all(|o| o.spec().name != t.spec().name),
                "tool names are unique"
            );
            assert_eq!(
                t.spec().input_schema["type"],
                "object",
                "input schemas are objects"
            );
        }
        Registry { tools }
    }

    /// A tool and its position in the registry (its metrics index).
    pub fn get_indexed(&self, name: &str) -> Option<(usize, &dyn Tool)> {
        self.tools
            .iter()
            .position(|t| t.spec().name == name)
            .map(|i| (i, self.tools[i].as_ref()))
    }

    pub fn get(&self, name: &str) -> Option<&dyn Tool> {
        self.tools
            .iter()
            .find(|t| t.spec().name == name)
            .map(|t| t.as_ref())
    }

    pub fn tools(&self) -> impl Iterator<Item = &dyn Tool> {
        self.tools.iter().map(|t| t.as_ref())
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// Reads an optional argument of a given JSON type, or says what is wrong with it.
pub fn arg<'v, T>(
    args: &'v Map<String, Value>,
    name: &str,
    expected: &str,
    get: impl Fn(&'v Value) -> Option<T>,
) -> Result<Option<T>, ToolResult> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| {
            ToolResult::error(format!(
                "argument `{name}` must be {expected}; got {}",
                kind_of(v)
            ))
        }),
    }
}

/// Reads a required argument, or says that it is missing.
pub fn required<'v, T>(
    args: &'v Map<String, Value>,
    name: &str,
    expected: &str,
    get: impl Fn(&'v Value) -> Option<T>,
) -> Result<T, ToolResult> {
    arg(args, name, expected, get)?.ok_or_else(|| {
        ToolResult::error(format!("missing required argument `{name}` ({expected})"))
    })
}

/// "a string", "an array" …: how messages name a JSON value's type.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool blocked on a full queue learns that its reader left: its send
    /// ends, false, instead of waiting for room that never comes.
    #[test]
    fn a_full_sink_whose_reader_left_stops_the_sender() {
        common::testing::run(async {
            let (sink, rx) = ItemSink::new(1, 10);
            assert!(sink.send(Value::from(1)).await, "room for one");
            let mut blocked = std::pin::pin!(sink.send(Value::from(2)));
            assert!(futures_lite::future::poll_once(blocked.as_mut())
                .await
                .is_none());
            drop(rx);
            let sent = futures_lite::future::poll_once(blocked.as_mut()).await;
            assert_eq!(sent, Some(false), "the send ends, and says the reader left");
        });
    }

    /// The direct writer and the tree must produce the same JSON.
    #[test]
    fn write_json_matches_to_json() {
        let results = [
            ToolResult::text("plain \"quoted\" \\ text\n\u{1}\u{e9}"),
            ToolResult::error("bad"),
            ToolResult::structured(json!({"rows": [[1, "a", null]], "n": 1.5}), "table"),
            ToolResult {
                body: Body::Own {
                    content: vec![Content::Text("a".into()), Content::Text("b".into())],
                    structured: None,
                },
                is_error: false,
            },
            ToolResult {
                body: Body::Own {
                    content: vec![],
                    structured: Some(json!({})),
                },
                is_error: true,
            },
        ];
        for r in results {
            let kept = ToolResult::kept(Rc::new(Kept::new(r.clone())));
            assert_eq!(kept, r, "a kept answer says the same");
            for r in [r, kept] {
                let mut out = Vec::new();
                r.write_json(&mut out, b",\"extra\":1");
                let written: Value = serde_json::from_slice(&out).unwrap();
                let mut expected = r.to_json();
                expected["extra"] = json!(1);
                assert_eq!(written, expected);
            }
        }
    }

    /// Every call boxes its tool's future. The hot tools' must stay within
    /// mimalloc's small-object size (128 words), which a rare await's state laid
    /// out inline breaks: a blocking read or a row stream is ~0.9 KB on its own.
    #[test]
    fn hot_tools_futures_stay_small() {
        const SMALL_OBJECT_BYTES: usize = 1024;
        let dir = tempfile::tempdir().unwrap();
        let s = common::testing::shard(vec![dir.path().to_path_buf()], Vec::new());
        let cx = CallContext {
            shard: &s,
            deadline: Instant::now(),
            cancel: CancelFlag::default(),
            sink: None,
            progress: None,
        };
        for name in ["read_file", "query_db"] {
            let call = s.tools.get(name).unwrap().call(&cx, Map::new());
            let size = std::mem::size_of_val(&*call);
            assert!(
                size <= SMALL_OBJECT_BYTES,
                "{name}'s future is {size} bytes"
            );
        }
    }

    #[test]
    fn a_kept_answer_is_the_same_bytes_and_shares_its_rows() {
        let r = ToolResult::structured(json!({"rows": [[1, "a"]]}), "table");
        let kept = Rc::new(Kept::new(r.clone()));
        let hit = ToolResult::kept(kept.clone());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        r.write_json(&mut a, b"");
        hit.write_json(&mut b, b"");
        assert_eq!(a, b);
        assert_eq!(kept.json_len() + 1, a.len(), "the tail and brace follow");
        assert!(matches!(&hit.body, Body::Kept(k) if Rc::ptr_eq(k, &kept)));
        assert_eq!(hit.content()[0].text(), "table");
        assert_eq!(hit.structured_content(), r.structured_content());
        assert_eq!(Rc::strong_count(&kept), 2, "shared, not copied");
        let other = ToolResult::text("different");
        assert_ne!(ToolResult::kept(Rc::new(Kept::new(other))), hit);
    }
}
