//! Routing: which handler answers a framed request, and the HTTP-level checks that
//! come before MCP sees the body (Host/Origin, content types, sessions on DELETE).

use super::access::{self, Denied};
use super::direct::{self, NdjsonJob};
use super::frame::{self, Head, Method};
use super::sse;
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
///
/// An MCP answer's body is written straight into `out` and its head into room
/// left before it (see `finish_mcp`). When `out` was empty, what is left of that
/// room stays at its start and `skip` says how many bytes of `out` to not send;
/// otherwise the response is moved down to close the gap and `skip` is 0.
pub async fn respond(
    shard: &Shard,
    buf: &[u8],
    head: &Head,
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
    skip: &mut usize,
) -> Option<Streaming> {
    *skip = 0;
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
            return mcp_post(shard, buf, head, body, keep_alive, out, skip).await;
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
    skip: &mut usize,
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

    // The body is written after room for the head, which needs its length.
    let mark = out.len();
    out.resize(mark + HEAD_ROOM, 0);
    let json = out;
    let body_at = json.len();
    let limits = &shard.config.limits;
    let single = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if single && jsonrpc::check_depth(body, limits.max_json_depth).is_ok() {
        if let Some(outcome) = dispatch::handle_body(shard, &via, body, json).await {
            if let Some(job) = outcome.progress {
                json.truncate(mark);
                return Some(Streaming::Progress(job));
            }
            let status = if outcome.wrote { outcome.status } else { 202 };
            *skip = finish_mcp(json, mark, status, outcome.new_session, json_ok, keep_alive);
            return None;
        }
        json.truncate(body_at);
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
                json.truncate(mark);
                return Some(Streaming::Progress(job));
            }
            (
                if outcome.wrote { outcome.status } else { 202 },
                outcome.new_session,
            )
        }
        Ok(Parsed::Batch(msgs)) => (batch(shard, &via, &msgs, json).await, None),
    };
    *skip = finish_mcp(json, mark, status, session, json_ok, keep_alive);
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

/// Bytes left before an MCP answer's body for its head: the status line, content
/// type and length, `connection: close`, a session id and the SSE event prefix
/// come to ~190 at most with the ids this server issues. A longer head still
/// works, with one more copy of the body.
const HEAD_ROOM: usize = 256;

/// Frames the MCP answer whose JSON was written to `out` after [`HEAD_ROOM`]
/// bytes from `mark`: as JSON, or as one SSE event for a client that takes only
/// SSE, or with no body (202). The head is composed past the body and moved
/// into the room before it, so the body is never copied. Returns the bytes of
/// room still at the start of `out` when the answer is all it holds (the
/// connection skips them); otherwise the answer is moved down over the room.
fn finish_mcp(
    out: &mut Vec<u8>,
    mark: usize,
    status: u16,
    session: Option<String>,
    json_ok: bool,
    keep_alive: bool,
) -> usize {
    let body_at = mark + HEAD_ROOM;
    let body_end = out.len();
    let body_len = body_end - body_at;
    let mut extra = Vec::new();
    if let Some(sid) = &session {
        extra.extend_from_slice(b"mcp-session-id: ");
        extra.extend_from_slice(sid.as_bytes());
        extra.extend_from_slice(b"\r\n");
    }
    let as_event = body_len > 0 && !json_ok;
    let (content_type, len) = if body_len == 0 {
        (None, 0)
    } else if as_event {
        let len = sse::EVENT_PREFIX.len() + body_len + sse::EVENT_SUFFIX.len();
        (Some("text/event-stream"), len)
    } else {
        (Some("application/json"), body_len)
    };
    frame::write_head(out, status, content_type, len, keep_alive, &extra);
    if as_event {
        out.extend_from_slice(sse::EVENT_PREFIX);
    }
    let head_len = out.len() - body_end;
    let start = if head_len <= HEAD_ROOM {
        let at = body_at - head_len;
        out.copy_within(body_end.., at);
        out.truncate(body_end);
        at
    } else {
        let head = out.split_off(body_end);
        let body = out.split_off(body_at);
        out.truncate(mark);
        out.extend_from_slice(&head);
        out.extend_from_slice(&body);
        mark
    };
    if as_event {
        out.extend_from_slice(sse::EVENT_SUFFIX);
    }
    debug_assert!(out[start..].starts_with(b"HTTP/1.1 "));
    if mark == 0 {
        return start;
    }
    out.copy_within(start.., mark);
    out.truncate(out.len() - (start - mark));
    0
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
    let before = json.len();
    dispatch::handle_batch(shard, via, msgs, json).await;
    if json.len() == before {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `finish_mcp` over `prior` bytes already queued and `body` written after
    /// the room: what the connection would send, and the skip it was given.
    fn framed(
        prior: &[u8],
        body: &[u8],
        session: Option<String>,
        json_ok: bool,
    ) -> (Vec<u8>, usize) {
        let mut out = prior.to_vec();
        out.resize(prior.len() + HEAD_ROOM, b'?');
        out.extend_from_slice(body);
        let status = if body.is_empty() { 202 } else { 200 };
        let skip = finish_mcp(&mut out, prior.len(), status, session, json_ok, true);
        if !prior.is_empty() {
            assert_eq!(skip, 0, "room is kept only at the start of an empty buffer");
        }
        (out[skip..].to_vec(), skip)
    }

    fn expected(prior: &[u8], body: &[u8], extra: &[u8], json_ok: bool) -> Vec<u8> {
        let mut want = prior.to_vec();
        if body.is_empty() {
            frame::write_head(&mut want, 202, None, 0, true, extra);
        } else if json_ok {
            frame::write_head(
                &mut want,
                200,
                Some("application/json"),
                body.len(),
                true,
                extra,
            );
            want.extend_from_slice(body);
        } else {
            let event = [b"event: message\ndata: ", body, b"\n\n"].concat();
            frame::write_head(
                &mut want,
                200,
                Some("text/event-stream"),
                event.len(),
                true,
                extra,
            );
            want.extend_from_slice(&event);
        }
        want
    }

    #[test]
    fn answers_are_framed_in_place_whatever_came_before() {
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        let prior = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        for json_ok in [true, false] {
            let (sent, skip) = framed(b"", body, None, json_ok);
            assert!(skip > 0);
            assert_eq!(sent, expected(b"", body, b"", json_ok));
            let (sent, _) = framed(prior, body, None, json_ok);
            assert_eq!(sent, expected(prior, body, b"", json_ok));
        }
        let (sent, _) = framed(prior, b"", None, true);
        assert_eq!(sent, expected(prior, b"", b"", true));
    }

    #[test]
    fn a_head_longer_than_the_room_still_frames() {
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        let sid = "s".repeat(HEAD_ROOM);
        let extra = format!("mcp-session-id: {sid}\r\n");
        for prior in [&b""[..], b"queued"] {
            let (sent, _) = framed(prior, body, Some(sid.clone()), true);
            assert_eq!(sent, expected(prior, body, extra.as_bytes(), true));
        }
    }

    #[test]
    fn the_accept_shortcut_agrees_with_parsing_it() {
        assert!(frame::accepts(ACCEPT_BOTH, b"application/json"));
        assert!(frame::accepts(ACCEPT_BOTH, b"text/event-stream"));
    }
}
