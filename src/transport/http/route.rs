//! Routing: which handler answers a framed request, and the HTTP-level checks that
//! come before MCP sees the body (Host/Origin, content types, sessions on DELETE).

use super::access::{self, Denied};
use super::direct::{self, NdjsonJob};
use super::frame::{self, Head, Method};
use crate::dispatch::ProgressJob;
use crate::dispatch::{self, HttpMeta, Via};
use crate::protocol::era;
use crate::protocol::jsonrpc::{self, ParseError, Parsed};
use crate::protocol::session::Lookup;
use crate::shard::Shard;

/// An answer the connection streams itself after `respond` returns.
pub enum Streaming {
    /// Direct API results as NDJSON.
    Ndjson(NdjsonJob),
    /// An MCP call that asked for progress, as SSE.
    Progress(ProgressJob),
}

/// The MCP endpoint.
pub const MCP_PATH: &[u8] = b"/mcp";
/// The `Accept` value MCP clients send with every POST.
const ACCEPT_BOTH: &[u8] = b"application/json, text/event-stream";

/// Answers one request, appending the whole response to `out`, or returns the
/// streamed call the connection must write itself.
pub async fn respond(
    shard: &Shard,
    buf: &[u8],
    head: &Head,
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Option<Streaming> {
    let field = |r: &Option<std::ops::Range<usize>>| r.clone().map(|r| &buf[r]);
    let full_path = &buf[head.path.clone()];
    let path = full_path.split(|b| *b == b'?').next().unwrap_or(b"");

    if head.host.is_none() && !head.http10 {
        write_plain_error(
            out,
            400,
            "HTTP/1.1 requests need a Host header",
            keep_alive,
            &[],
        );
        return None;
    }
    match access::check(&shard.config.access, field(&head.host), field(&head.origin)) {
        Ok(()) => {}
        Err(Denied::Host) => {
            write_plain_error(
                out,
                421,
                "Host is not a name this server answers to; add it to allowed_hosts if a proxy forwards it",
                keep_alive,
                &[],
            );
            return None;
        }
        Err(Denied::Origin) => {
            write_plain_error(
                out,
                403,
                "Origin is not allowed; add it to allowed_origins to let that site call this server",
                keep_alive,
                &[],
            );
            return None;
        }
    }

    if path.starts_with(direct::TOOLS_PREFIX) || path == direct::BATCH_PATH {
        if head.method != Some(Method::Post) {
            direct::write_error(out, 405, "the direct API takes POST", keep_alive);
            return None;
        }
        let json_or_none = body.is_empty() || field(&head.content_type).is_some_and(frame::is_json);
        if !json_or_none {
            direct::write_error(
                out,
                415,
                "Content-Type must be application/json",
                keep_alive,
            );
            return None;
        }
        if path == direct::BATCH_PATH {
            direct::batch(shard, body, keep_alive, out).await;
            return None;
        }
        let ndjson = field(&head.accept).is_some_and(|a| {
            a.split(|b| *b == b',').any(|part| {
                let mime = part.split(|b| *b == b';').next().unwrap_or(b"");
                mime.trim_ascii()
                    .eq_ignore_ascii_case(b"application/x-ndjson")
            })
        });
        return direct::tool(
            shard,
            &path[direct::TOOLS_PREFIX.len()..],
            ndjson,
            body,
            keep_alive,
            out,
        )
        .await
        .map(Streaming::Ndjson);
    }

    match (path, head.method) {
        (MCP_PATH, Some(Method::Post)) => {
            return mcp_post(shard, buf, head, body, keep_alive, out, scratch).await;
        }
        (MCP_PATH, Some(Method::Delete)) => mcp_delete(shard, field(&head.session_id), keep_alive, out),
        (MCP_PATH, _) => write_plain_error(
            out,
            405,
            "the MCP endpoint takes POST (messages) and DELETE (end a session); this server opens no GET stream",
            keep_alive,
            b"allow: POST, DELETE\r\n",
        ),
        (b"/metrics", Some(Method::Get)) => {
            let body = shard.metrics.render();
            write_body(out, 200, "text/plain; version=0.0.4; charset=utf-8", body.as_bytes(), keep_alive, &[])
        }
        (b"/readyz", Some(Method::Get)) => {
            let (serving, shards) = (shard.metrics.serving(), shard.metrics.shards());
            let draining = shard.metrics.draining.load(std::sync::atomic::Ordering::Acquire);
            if serving == shards && !draining {
                let body = format!("ready shards={serving}/{shards}\n");
                write_body(out, 200, "text/plain; charset=utf-8", body.as_bytes(), keep_alive, &[])
            } else {
                let why = if draining { " draining" } else { "" };
                let body = format!("not ready shards={serving}/{shards}{why}\n");
                write_body(out, 503, "text/plain; charset=utf-8", body.as_bytes(), keep_alive, &[])
            }
        }
        (b"/healthz", Some(Method::Get)) => {
            // Names the shard, so an operator (or a test) can see where a connection landed.
            let body = format!("ok shard={}\n", shard.id);
            write_body(out, 200, "text/plain; charset=utf-8", body.as_bytes(), keep_alive, &[])
        }
        _ => write_plain_error(out, 404, "no such endpoint; MCP is served at POST /mcp", keep_alive, &[]),
    }
    None
}

async fn mcp_post(
    shard: &Shard,
    buf: &[u8],
    head: &Head,
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
    json: &mut Vec<u8>,
) -> Option<Streaming> {
    let field = |r: &Option<std::ops::Range<usize>>| r.clone().map(|r| &buf[r]);
    let is_json = field(&head.content_type).is_some_and(frame::is_json);
    if !is_json {
        write_plain_error(
            out,
            415,
            "Content-Type must be application/json",
            keep_alive,
            &[],
        );
        return None;
    }
    // Clients must accept both; we answer JSON, or one SSE event to a client that
    // takes only SSE.
    let (json_ok, sse_ok) = match field(&head.accept) {
        None => (true, true),
        // What the SDKs send, byte for byte: no need to take it apart (parsing it
        // twice was ~4% of a cached read_file's instructions).
        Some(ACCEPT_BOTH) => (true, true),
        Some(a) => (
            frame::accepts(a, b"application/json"),
            frame::accepts(a, b"text/event-stream"),
        ),
    };
    if !json_ok && !sse_ok {
        write_plain_error(
            out,
            406,
            "Accept must include application/json and text/event-stream",
            keep_alive,
            &[],
        );
        return None;
    }
    let text = |r: &Option<std::ops::Range<usize>>| field(r).and_then(header_text);
    let meta = HttpMeta {
        protocol_version: text(&head.protocol_version),
        mcp_method: text(&head.mcp_method),
        mcp_name: text(&head.mcp_name),
        session_id: text(&head.session_id),
        sse_ok,
    };
    let via = Via::Http(meta);

    json.clear();
    let limits = &shard.config.limits;
    let single = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if single && jsonrpc::check_depth(body, limits.max_json_depth).is_ok() {
        if let Some(outcome) = dispatch::handle_body(shard, &via, body, json).await {
            if let Some(job) = outcome.progress {
                return Some(Streaming::Progress(job));
            }
            let status = if outcome.wrote { outcome.status } else { 202 };
            finish_mcp(out, json, status, outcome.new_session, json_ok, keep_alive);
            return None;
        }
        json.clear();
    }
    let (status, session) = match jsonrpc::parse(body, limits.max_json_depth) {
        Err(ParseError::Json(e)) => {
            dispatch::write_parse_error(json, jsonrpc::PARSE_ERROR, &e);
            (400, None)
        }
        Err(ParseError::Shape(e)) => {
            dispatch::write_parse_error(json, jsonrpc::INVALID_REQUEST, &e);
            (400, None)
        }
        Ok(Parsed::Single(msg)) => {
            let outcome = dispatch::handle(shard, &via, &msg, json).await;
            if let Some(job) = outcome.progress {
                return Some(Streaming::Progress(job));
            }
            (
                if outcome.wrote { outcome.status } else { 202 },
                outcome.new_session,
            )
        }
        Ok(Parsed::Batch(msgs)) => (batch(shard, &via, &msgs, json).await, None),
    };
    finish_mcp(out, json, status, session, json_ok, keep_alive);
    None
}

/// A header value as text. MCP's headers are ASCII in practice, and checking that
/// is a word at a time: `from_utf8` cost ~110 instructions per short value.
fn header_text(v: &[u8]) -> Option<&str> {
    if v.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(v) })
    } else {
        std::str::from_utf8(v).ok()
    }
}

/// Frames an MCP answer: `json` as JSON, or as one SSE event for a client that
/// takes only SSE, or no body (202).
fn finish_mcp(
    out: &mut Vec<u8>,
    json: &[u8],
    status: u16,
    session: Option<String>,
    json_ok: bool,
    keep_alive: bool,
) {
    let mut extra = Vec::new();
    if let Some(sid) = &session {
        extra.extend_from_slice(b"mcp-session-id: ");
        extra.extend_from_slice(sid.as_bytes());
        extra.extend_from_slice(b"\r\n");
    }
    if json.is_empty() {
        frame::write_head(out, status, None, 0, keep_alive, &extra);
    } else if !json_ok {
        sse_event(out, status, json, keep_alive, &extra);
    } else {
        write_body(out, status, "application/json", json, keep_alive, &extra);
    }
}

/// A JSON-RPC batch: allowed only in a session that negotiated 2025-03-26.
async fn batch(
    shard: &Shard,
    via: &Via<'_>,
    msgs: &[jsonrpc::Message<'_>],
    json: &mut Vec<u8>,
) -> u16 {
    let limits = &shard.config.limits;
    let Via::Http(meta) = via else {
        unreachable!("batches arrive over HTTP here")
    };
    let allowed = meta
        .session_id
        .map(|sid| shard.sessions.lookup(sid))
        .map(|l| match l {
            Lookup::Valid(s) => Ok(era::allows_batches(s.version)),
            Lookup::Unknown => Err(()),
        });
    let refusal = match allowed {
        Some(Err(())) => Some((
            404,
            "unknown or expired session: send initialize again without Mcp-Session-Id".to_string(),
        )),
        None | Some(Ok(false)) => Some((
            400,
            "JSON-RPC batches are allowed only in protocol revision 2025-03-26".to_string(),
        )),
        Some(Ok(true)) if msgs.is_empty() => {
            Some((400, "an empty batch is not a valid request".to_string()))
        }
        Some(Ok(true)) if msgs.len() > limits.max_batch => Some((
            400,
            format!(
                "a batch may hold at most {} messages (limits.max_batch)",
                limits.max_batch
            ),
        )),
        Some(Ok(true)) => None,
    };
    if let Some((status, message)) = refusal {
        jsonrpc::write_error(json, None, jsonrpc::INVALID_REQUEST, &message, None);
        return status;
    }
    dispatch::handle_batch(shard, via, msgs, json).await;
    if json.is_empty() {
        202
    } else {
        200
    }
}

fn mcp_delete(shard: &Shard, session: Option<&[u8]>, keep_alive: bool, out: &mut Vec<u8>) {
    let Some(sid) = session.and_then(|s| std::str::from_utf8(s).ok()) else {
        return write_plain_error(
            out,
            400,
            "DELETE /mcp needs the Mcp-Session-Id header of the session to end",
            keep_alive,
            &[],
        );
    };
    if shard.sessions.end(sid) {
        frame::write_head(out, 200, None, 0, keep_alive, &[]);
    } else {
        write_plain_error(out, 404, "unknown or expired session", keep_alive, &[]);
    }
}

/// An error outside MCP's own messages (framing, routing, access), as a JSON-RPC
/// error without an id so that MCP clients can show it.
pub fn write_plain_error(
    out: &mut Vec<u8>,
    status: u16,
    why: &str,
    keep_alive: bool,
    extra: &[u8],
) {
    let mut body = Vec::with_capacity(96 + why.len());
    let code = if status == 404 || status == 405 {
        jsonrpc::METHOD_NOT_FOUND
    } else {
        jsonrpc::INVALID_REQUEST
    };
    jsonrpc::write_error(&mut body, None, code, why, None);
    write_body(out, status, "application/json", &body, keep_alive, extra);
}

fn write_body(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra: &[u8],
) {
    frame::write_head(
        out,
        status,
        Some(content_type),
        body.len(),
        keep_alive,
        extra,
    );
    out.extend_from_slice(body);
}

/// One message as a complete SSE response.
fn sse_event(out: &mut Vec<u8>, status: u16, json: &[u8], keep_alive: bool, extra: &[u8]) {
    const PREFIX: &[u8] = b"event: message\ndata: ";
    const SUFFIX: &[u8] = b"\n\n";
    let len = PREFIX.len() + json.len() + SUFFIX.len();
    frame::write_head(
        out,
        status,
        Some("text/event-stream"),
        len,
        keep_alive,
        extra,
    );
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(json);
    out.extend_from_slice(SUFFIX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_shortcut_agrees_with_parsing_it() {
        assert!(frame::accepts(ACCEPT_BOTH, b"application/json"));
        assert!(frame::accepts(ACCEPT_BOTH, b"text/event-stream"));
    }
}
