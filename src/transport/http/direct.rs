//! The direct API: plain JSON next to MCP, for agent clusters that want a tool's
//! result without JSON-RPC framing.
//!
//! - `POST /v1/tools/{name}`, the arguments as the body → the result as JSON:
//!   `structuredContent` when the tool has one, else `{"text": …}`. A tool error is
//!   422, a timeout 504, each with `{"error": {"message", "outcome"}}`.
//! - The same with `Accept: application/x-ndjson` → one JSON object per line as
//!   the tool produces them (search matches, directory entries), then a last
//!   line `{"done": true, …}` with the rest of the result. The response is
//!   chunked; items pass through a bounded queue (`limits.stream_queue_items`), so a
//!   slow reader fills the socket, then the queue, then stalls the tool: memory
//!   stays bounded whatever the result's size.
//! - `POST /v1/batch` with `[{"tool", "arguments"}, …]` → an array of
//!   `{"status", "result"}` or `{"status", "error"}` in the same order; the calls
//!   run concurrently on this shard and one failing does not fail the others.
//!
//! Calls go through [`dispatch::call_tool`], so roots, read-only rules, deadlines,
//! limits and metrics are those of MCP; Host/Origin were checked by the router.

use std::cell::Cell;
use std::io;

use glommio::net::TcpStream;
use serde_json::{json, Map, Value};

use super::frame;
use crate::dispatch::{self, Hooks};
use crate::metrics::CallOutcome;
use crate::shard::Shard;
use crate::tools::common::{join_all, LocalBoxFuture};
use crate::tools::{Content, ItemSink, ToolResult};

/// Path prefix of single calls.
pub const TOOLS_PREFIX: &[u8] = b"/v1/tools/";
pub const BATCH_PATH: &[u8] = b"/v1/batch";
/// Cancellation namespace of direct calls: even, so never a session's (those are
/// odd) nor the stateless era's (0).
const DIRECT_NS: u64 = 2;

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
}

/// A unique key for the in-flight table; direct calls have no request id.
fn call_id() -> String {
    NEXT_ID.with(|n| {
        n.set(n.get() + 1);
        format!("direct-{}", n.get())
    })
}

/// A call the connection streams itself, after the router has checked it.
pub struct NdjsonJob {
    pub tool: String,
    pub args: Map<String, Value>,
}

/// `POST /v1/tools/{name}`. Returns a streaming job for NDJSON, else appends the
/// whole response to `out`.
pub async fn tool(
    shard: &Shard,
    name: &[u8],
    ndjson: bool,
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Option<NdjsonJob> {
    let Some(name) = std::str::from_utf8(name)
        .ok()
        .filter(|n| shard.tools.get(n).is_some())
    else {
        let listed: Vec<&str> = shard.tools.tools().map(|t| t.spec().name).collect();
        write_error(
            out,
            404,
            &format!(
                "no tool {:?}; tools: {}",
                String::from_utf8_lossy(name),
                listed.join(", ")
            ),
            keep_alive,
        );
        return None;
    };
    let args = match arguments(body, shard.config.limits.max_json_depth) {
        Ok(a) => a,
        Err(why) => {
            write_error(out, 400, &why, keep_alive);
            return None;
        }
    };
    if ndjson {
        return Some(NdjsonJob {
            tool: name.to_string(),
            args,
        });
    }
    let (result, outcome) =
        dispatch::call_tool(shard, name, args, DIRECT_NS, &call_id(), Hooks::default())
            .await
            .expect("the tool exists");
    let (status, value) = answer(&result, outcome);
    write_json(out, status, &value, keep_alive);
    None
}

/// `POST /v1/batch`.
pub async fn batch(shard: &Shard, body: &[u8], keep_alive: bool, out: &mut Vec<u8>) {
    let max = shard.config.limits.max_direct_batch;
    let calls: Vec<Value> = match parse(body, shard.config.limits.max_json_depth) {
        Ok(Value::Array(a)) if a.is_empty() => {
            return write_error(out, 400, "an empty batch has nothing to run", keep_alive)
        }
        Ok(Value::Array(a)) if a.len() > max => {
            return write_error(
                out,
                400,
                &format!(
                    "a batch may hold at most {max} calls (limits.max_direct_batch); got {}",
                    a.len()
                ),
                keep_alive,
            )
        }
        Ok(Value::Array(a)) => a,
        Ok(_) => {
            return write_error(
                out,
                400,
                "the body must be an array of {\"tool\": name, \"arguments\": {…}}",
                keep_alive,
            )
        }
        Err(why) => return write_error(out, 400, &why, keep_alive),
    };
    let runs: Vec<LocalBoxFuture<'_, Value>> = calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| Box::pin(one_of_batch(shard, i, call)) as LocalBoxFuture<'_, Value>)
        .collect();
    let results = join_all(runs).await;
    write_json(out, 200, &Value::Array(results), keep_alive);
}

async fn one_of_batch(shard: &Shard, i: usize, call: Value) -> Value {
    let failed = |status: u16, message: String| json!({"status": status, "error": {"message": message, "outcome": "error"}});
    let Value::Object(mut call) = call else {
        return failed(
            400,
            format!("call {i}: expected {{\"tool\": name, \"arguments\": {{…}}}}"),
        );
    };
    if let Some(k) = call.keys().find(|k| *k != "tool" && *k != "arguments") {
        return failed(
            400,
            format!("call {i}: unknown key {k:?}; a call has \"tool\" and \"arguments\""),
        );
    }
    let Some(Value::String(name)) = call.remove("tool") else {
        return failed(400, format!("call {i}: \"tool\" must be a tool name"));
    };
    let args = match call.remove("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return failed(400, format!("call {i}: \"arguments\" must be an object")),
    };
    match dispatch::call_tool(shard, &name, args, DIRECT_NS, &call_id(), Hooks::default()).await {
        None => failed(404, format!("call {i}: no tool {name:?}")),
        Some((result, outcome)) => {
            let (status, value) = answer(&result, outcome);
            let mut v = Map::new();
            v.insert("status".into(), status.into());
            if status == 200 {
                v.insert("result".into(), value);
            } else {
                v.insert("error".into(), value["error"].clone());
            }
            Value::Object(v)
        }
    }
}

/// The arguments: a JSON object, or nothing for a tool that needs none.
fn arguments(body: &[u8], max_depth: usize) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match parse(body, max_depth)? {
        Value::Object(m) => Ok(m),
        other => Err(format!(
            "the body must be the arguments as a JSON object; got {}",
            crate::tools::kind_of(&other)
        )),
    }
}

/// Parses a body under the same nesting bound as MCP messages.
fn parse(body: &[u8], max_depth: usize) -> Result<Value, String> {
    crate::protocol::jsonrpc::check_depth(body, max_depth)?;
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))
}

fn text_of(r: &ToolResult) -> String {
    r.content()
        .iter()
        .map(Content::text)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The HTTP status and JSON body of a finished call.
fn answer(result: &ToolResult, outcome: CallOutcome) -> (u16, Value) {
    let status = match outcome {
        CallOutcome::Ok => 200,
        CallOutcome::Error => 422,
        CallOutcome::Timeout => 504,
        CallOutcome::Cancelled => 503,
        CallOutcome::Panicked => 500,
    };
    if outcome == CallOutcome::Ok {
        let value = match result.structured_content() {
            Some(s) => s.clone(),
            None => json!({"text": text_of(result)}),
        };
        (status, value)
    } else {
        (
            status,
            json!({"error": {"message": text_of(result), "outcome": outcome.name()}}),
        )
    }
}

fn write_json(out: &mut Vec<u8>, status: u16, value: &Value, keep_alive: bool) {
    let body = serde_json::to_vec(value).expect("serialising a Value cannot fail");
    frame::write_head(
        out,
        status,
        Some("application/json"),
        body.len(),
        keep_alive,
        &[],
    );
    out.extend_from_slice(&body);
}

/// An error of the direct API: `{"error": {"message": …}}` (not JSON-RPC).
pub fn write_error(out: &mut Vec<u8>, status: u16, message: &str, keep_alive: bool) {
    write_json(
        out,
        status,
        &json!({"error": {"message": message}}),
        keep_alive,
    );
}

/// Runs a streaming call and writes it to the socket as chunked NDJSON. Returns
/// false when the connection cannot be reused (the client went away).
pub async fn stream_ndjson(
    shard: &Shard,
    stream: &mut TcpStream,
    job: NdjsonJob,
    keep_alive: bool,
) -> io::Result<bool> {
    let limits = &shard.config.limits;
    let mut head = Vec::with_capacity(192);
    frame::write_stream_head(&mut head, "application/x-ndjson", keep_alive);
    shard.m().status(200);
    super::send_all(stream, &head).await?;

    let (sink, rx) = ItemSink::new(limits.stream_queue_items, limits.max_stream_items);
    let chunk_bytes = limits.stream_chunk_bytes;
    let producer = async {
        let r = dispatch::call_tool(
            shard,
            &job.tool,
            job.args,
            DIRECT_NS,
            &call_id(),
            Hooks {
                sink: Some(&sink),
                progress: None,
            },
        )
        .await;
        sink.finish();
        r
    };
    let consumer = async {
        let rx = rx;
        let mut buf = Vec::with_capacity(chunk_bytes + 1024);
        loop {
            // Take what is queued without waiting; write before waiting for more.
            let item = match futures_lite::future::poll_once(rx.recv()).await {
                Some(item) => item,
                None => {
                    if !buf.is_empty() {
                        write_chunk(stream, &buf).await?;
                        buf.clear();
                    }
                    rx.recv().await
                }
            };
            let Some(item) = item else { break };
            serde_json::to_writer(&mut buf, &item).expect("serialising a Value cannot fail");
            buf.push(b'\n');
            if buf.len() >= chunk_bytes {
                write_chunk(stream, &buf).await?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            write_chunk(stream, &buf).await?;
        }
        Ok::<_, io::Error>(())
    };
    let (result, written) = futures_lite::future::zip(producer, consumer).await;
    // A failed write dropped the receiver: the tool saw its sends fail and stopped.
    written?;
    let (result, outcome) = result.expect("the router checked the tool exists");
    let (_, value) = answer(&result, outcome);
    let mut last = Map::new();
    last.insert("done".into(), true.into());
    last.insert("outcome".into(), outcome.name().into());
    match value {
        Value::Object(mut v) if outcome != CallOutcome::Ok => {
            last.insert("error".into(), v.remove("error").unwrap_or(Value::Null));
        }
        v => {
            last.insert("result".into(), v);
        }
    }
    let mut buf = serde_json::to_vec(&Value::Object(last)).expect("serialising cannot fail");
    buf.push(b'\n');
    write_chunk(stream, &buf).await?;
    super::send_all(stream, frame::LAST_CHUNK).await?;
    Ok(keep_alive)
}

async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut framed = Vec::with_capacity(data.len() + 12);
    frame::write_chunk(&mut framed, &[data]);
    super::send_all(stream, &framed).await
}
