//! Dispatch: one JSON-RPC message in, at most one response out, for both eras.
//!
//! The transports (HTTP, stdio) parse bytes into [`Message`]s and say what they know
//! from outside the body ([`Via`]); everything MCP means by a message is decided
//! here, once, for both transports.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::metrics::CallOutcome;
use crate::protocol::era::{self, Era};
use crate::protocol::jsonrpc::{self, Kind, Message};
use crate::protocol::session::Lookup;
use crate::shard::Shard;
use crate::tools::{CallContext, CancelFlag, Content, ItemSink, ProgressCell, ToolResult};

pub const SERVER_NAME: &str = "coremcp";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the transport knows about a message from outside its body.
pub enum Via<'h> {
    Http(HttpMeta<'h>),
    /// stdio: the revision `initialize` negotiated on this stream, if any.
    Stdio {
        negotiated: Option<u8>,
    },
}

/// The MCP headers of an HTTP request, and the session they named (already checked).
#[derive(Default)]
pub struct HttpMeta<'h> {
    pub protocol_version: Option<&'h str>,
    pub mcp_method: Option<&'h str>,
    pub mcp_name: Option<&'h str>,
    /// `Mcp-Session-Id` as sent; checked here, once the era is known, because the
    /// stateless revision ignores it.
    pub session_id: Option<&'h str>,
    /// The client's Accept admits `text/event-stream`, so an answer may be a
    /// stream that carries progress notifications before the response.
    pub sse_ok: bool,
}

/// What happened, for the transport to frame.
#[derive(Debug, Default)]
pub struct Outcome {
    /// A response was appended to the output buffer.
    pub wrote: bool,
    /// The HTTP status the response should travel with.
    pub status: u16,
    /// A session issued by this message (`initialize` over HTTP).
    pub new_session: Option<String>,
    /// The revision this message negotiated (`initialize` over stdio).
    pub negotiated: Option<u8>,
    /// A call that asked for progress: the transport runs it with
    /// [`call_with_progress`] and streams notifications before the answer.
    pub progress: Option<ProgressJob>,
}

/// A `tools/call` whose client asked for progress (`_meta.progressToken`).
#[derive(Debug)]
pub struct ProgressJob {
    tool: String,
    args: Map<String, Value>,
    token: Value,
    id: Box<RawValue>,
    ns: u64,
    era: Era,
}

impl Outcome {
    fn accepted() -> Outcome {
        Outcome {
            wrote: false,
            status: 202,
            ..Outcome::default()
        }
    }
    fn ok() -> Outcome {
        Outcome {
            wrote: true,
            status: 200,
            ..Outcome::default()
        }
    }
    fn error(status: u16) -> Outcome {
        Outcome {
            wrote: true,
            status,
            ..Outcome::default()
        }
    }
}

/// The parts of `params` any handler here reads; parsed once per message.
/// Everything but `arguments` is borrowed from the body: no tree is built for
/// `_meta`, which every stateless request carries.
#[derive(Deserialize, Default)]
struct Params<'a> {
    #[serde(default, borrow, deserialize_with = "jsonrpc::opt_cow_str")]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    arguments: Option<Value>,
    #[serde(default, borrow, deserialize_with = "jsonrpc::opt_cow_str")]
    cursor: Option<Cow<'a, str>>,
    #[serde(
        default,
        rename = "protocolVersion",
        borrow,
        deserialize_with = "jsonrpc::opt_cow_str"
    )]
    protocol_version: Option<Cow<'a, str>>,
    #[serde(default, rename = "requestId", borrow)]
    request_id: Option<&'a RawValue>,
    #[serde(default, rename = "_meta", borrow)]
    meta: Option<Meta<'a>>,
}

/// The `_meta` keys this server reads. The names are [`era::META_PROTOCOL_VERSION`]
/// and [`era::META_CLIENT_CAPABILITIES`] (serde wants literals; a test checks they
/// agree). Present-but-null values are kept (`Some("null")`) so they are refused
/// like any other non-string, not mistaken for absent.
#[derive(Deserialize, Default)]
struct Meta<'a> {
    #[serde(
        default,
        borrow,
        rename = "io.modelcontextprotocol/protocolVersion",
        deserialize_with = "jsonrpc::present"
    )]
    protocol_version: Option<&'a RawValue>,
    #[serde(
        default,
        borrow,
        rename = "io.modelcontextprotocol/clientCapabilities",
        deserialize_with = "jsonrpc::present"
    )]
    client_capabilities: Option<&'a RawValue>,
    #[serde(
        default,
        borrow,
        rename = "progressToken",
        deserialize_with = "jsonrpc::present"
    )]
    progress_token: Option<&'a RawValue>,
}

impl Params<'_> {
    fn meta_version(&self) -> Option<&RawValue> {
        self.meta.as_ref()?.protocol_version
    }

    /// A progress token a client may use: a string or a number.
    fn progress_token(&self) -> Option<&RawValue> {
        let token = self.meta.as_ref()?.progress_token?;
        matches!(
            token.get().as_bytes().first(),
            Some(b'"' | b'-' | b'0'..=b'9')
        )
        .then_some(token)
    }
}

/// Handles one message and appends its response, if it has one, to `out`.
pub async fn handle(shard: &Shard, via: &Via<'_>, msg: &Message<'_>, out: &mut Vec<u8>) -> Outcome {
    let (id, method) = match classify(shard, msg, out) {
        Ok(c) => c,
        Err(outcome) => return outcome,
    };
    let params: Params = match msg.params {
        None => Params::default(),
        Some(raw) => match serde_json::from_str(raw.get()) {
            Ok(p) => p,
            Err(e) => {
                return reply_error(
                    out,
                    id,
                    jsonrpc::INVALID_PARAMS,
                    &format!("invalid params: {e}"),
                    None,
                    200,
                );
            }
        },
    };
    handle_params(shard, via, id, method, params, out).await
}

/// [`handle`] for a body that is one message, parsing its params in the same
/// pass as the envelope instead of capturing them raw and parsing them again:
/// about an eighth of a small call's instructions. `None` when the body does not
/// parse that way (malformed JSON or params, a batch): the caller then takes the
/// general path, which says exactly what is wrong. When it does parse, both paths
/// give the same answer, because they read the same fields with the same types.
pub async fn handle_body(
    shard: &Shard,
    via: &Via<'_>,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Option<Outcome> {
    // Validated once here, so that the parser's per-string UTF-8 checks (a tenth
    // of a cached read_file's instructions, callgrind) are skipped; with SIMD,
    // because std's check was still ~0.7k instructions on a 270-byte call.
    let text = simdutf8::basic::from_utf8(body).ok()?;
    let mut msg: Message<'_, Params<'_>> = serde_json::from_str(text).ok()?;
    let params = msg.params.take().unwrap_or_default();
    let (id, method) = match classify(shard, &msg, out) {
        Ok(c) => c,
        Err(outcome) => return Some(outcome),
    };
    Some(handle_params(shard, via, id, method, params, out).await)
}

/// A message's id (`None` for a notification) and method, or the outcome that
/// ends it here (an invalid message, a response from the client).
// `Outcome` is what every handler here returns by value; boxing it on this one
// path would only add an allocation.
#[allow(clippy::result_large_err)]
fn classify<'m, P>(
    shard: &Shard,
    msg: &'m Message<'_, P>,
    out: &mut Vec<u8>,
) -> Result<(Option<&'m RawValue>, &'m str), Outcome> {
    let kind = match msg.kind() {
        Ok(k) => k,
        Err(why) => {
            jsonrpc::write_error(out, msg.id, jsonrpc::INVALID_REQUEST, why, None);
            return Err(Outcome::error(400));
        }
    };
    let (id, method) = match kind {
        Kind::Response => return Err(Outcome::accepted()),
        Kind::Notification { method } => (None, method),
        Kind::Request { id, method } => (Some(id), method),
    };
    shard.m().method(method);
    Ok((id, method))
}

async fn handle_params(
    shard: &Shard,
    via: &Via<'_>,
    id: Option<&RawValue>,
    method: &str,
    params: Params<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let Resolved { era, session } = match resolve(shard, via, method, &params) {
        Ok(r) => r,
        // JSON-RPC never answers a notification; over HTTP the refusal is the status.
        Err(_) if id.is_none() && matches!(via, Via::Stdio { .. }) => return Outcome::accepted(),
        Err(refusal) => return refusal.write(out, id),
    };

    let Some(id) = id else {
        if method == "notifications/cancelled" {
            if let Some(request_id) = params.request_id {
                shard.cancel(namespace(session), request_id.get());
            }
        }
        // Other notifications (initialized, roots/list_changed …) need no action.
        return Outcome::accepted();
    };

    match (era, method) {
        (Era::Handshake(_), "initialize") => initialize(shard, via, id, &params, out),
        (Era::Handshake(_), "ping") => {
            jsonrpc::write_result(out, id, b"{}");
            Outcome::ok()
        }
        (Era::Stateless, "server/discover") => {
            let mut result = json!({
                "supportedVersions": era::all_versions(),
                "capabilities": capabilities(),
                "instructions": INSTRUCTIONS,
            });
            stateless_result(&mut result, true);
            write_value(out, id, &result);
            Outcome::ok()
        }
        (_, "tools/list") => tools_list(shard, era, id, &params, out),
        (_, "tools/call") => tools_call(shard, via, session, era, id, params, out).await,
        _ => {
            let message = match era {
                Era::Handshake(_) if method == "server/discover" => {
                    "server/discover is a stateless-era (2026-07-28) method: send it with params._meta".to_string()
                }
                Era::Stateless if matches!(method, "initialize" | "ping") => format!(
                    "`{method}` does not exist in protocol revision {}; supported revisions: {}",
                    era_name(era),
                    era::all_versions().join(", ")
                ),
                _ => format!("method not found: {method}"),
            };
            // The stateless revision answers an unknown method with 404 over HTTP.
            let status = if era == Era::Stateless { 404 } else { 200 };
            reply_error(
                out,
                Some(id),
                jsonrpc::METHOD_NOT_FOUND,
                &message,
                None,
                status,
            )
        }
    }
}

/// How long a stateless client may cache `server/discover` and `tools/list`. The
/// tool set is fixed while a process runs, but a restart may change it (tools can
/// be disabled in the configuration), and the Python SDK does cache for this long.
const LIST_TTL_MS: u64 = 300_000;

/// Adds what every stateless-era result carries; `cacheable` for discover and lists.
fn stateless_result(result: &mut Value, cacheable: bool) {
    let obj = result.as_object_mut().expect("results are objects");
    obj.insert("resultType".into(), "complete".into());
    if cacheable {
        obj.insert("ttlMs".into(), LIST_TTL_MS.into());
        obj.insert("cacheScope".into(), "public".into());
    }
    obj.insert(
        "_meta".into(),
        json!({ era::META_SERVER_INFO: server_info() }),
    );
}

/// What [`stateless_result`] adds to a `tools/call` result, serialised once: it
/// is the same for every call.
fn stateless_call_tail() -> &'static [u8] {
    static TAIL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TAIL.get_or_init(|| {
        let mut v = json!({});
        stateless_result(&mut v, false);
        let bytes = serde_json::to_vec(&v).expect("serialising cannot fail");
        // `{…}` → `,…`: the members, led by a comma, to splice into a result.
        assert!(bytes.len() > 2 && bytes[0] == b'{' && bytes[bytes.len() - 1] == b'}');
        let mut tail = vec![b','];
        tail.extend_from_slice(&bytes[1..bytes.len() - 1]);
        tail
    })
}

const INSTRUCTIONS: &str = "coremcp serves read-only tools over local files and SQLite databases: \
read_file, read_multiple_files, list_directory, search_code, query_db, db_schema.";

fn era_name(era: Era) -> &'static str {
    match era {
        Era::Handshake(i) => era::HANDSHAKE_VERSIONS[i as usize],
        Era::Stateless => era::STATELESS_VERSIONS[0],
    }
}

fn capabilities() -> Value {
    json!({"tools": {"listChanged": false}})
}

fn server_info() -> Value {
    json!({"name": SERVER_NAME, "title": "coremcp", "version": SERVER_VERSION})
}

/// A request refused before it reaches a handler, with its HTTP status.
struct Refusal {
    code: i32,
    message: String,
    data: Option<Value>,
    status: u16,
}

impl Refusal {
    fn new(code: i32, message: String, status: u16) -> Refusal {
        Refusal {
            code,
            message,
            data: None,
            status,
        }
    }

    fn write(self, out: &mut Vec<u8>, id: Option<&RawValue>) -> Outcome {
        reply_error(
            out,
            id,
            self.code,
            &self.message,
            self.data.as_ref(),
            self.status,
        )
    }
}

fn unsupported(requested: &str) -> Refusal {
    Refusal {
        code: jsonrpc::UNSUPPORTED_VERSION,
        message: format!("unsupported protocol version: {requested}"),
        data: Some(json!({"supported": era::all_versions(), "requested": requested})),
        status: 400,
    }
}

fn mismatch(message: String) -> Refusal {
    Refusal {
        code: jsonrpc::HEADER_MISMATCH,
        message,
        data: None,
        status: 400,
    }
}

/// The era a message belongs to and, in the handshake era over HTTP, its session.
struct Resolved<'h> {
    era: Era,
    session: Option<&'h str>,
}

/// Which era a message belongs to, and whether what it says of itself holds.
///
/// A message is stateless-era when it names a revision in `_meta`, when it is
/// `server/discover`, or when its HTTP header names a stateless revision. Every
/// other message belongs to the handshake era of its session (HTTP) or stream
/// (stdio), and is never answered with a stateless-era error code: a dual-era
/// client reads those codes as "this server is modern" and would not fall back.
fn resolve<'h>(
    shard: &Shard,
    via: &Via<'h>,
    method: &str,
    params: &Params<'_>,
) -> Result<Resolved<'h>, Refusal> {
    let header = match via {
        Via::Http(h) => h.protocol_version,
        Via::Stdio { .. } => None,
    };
    let meta_version: Option<Cow<'_, str>> = match params.meta_version() {
        None => None,
        Some(raw) => match serde_json::from_str::<jsonrpc::CowStr>(raw.get()) {
            Ok(s) => Some(s.0),
            Err(_) => {
                let other = raw.get();
                return Err(Refusal::new(
                    jsonrpc::INVALID_PARAMS,
                    format!(
                        "`_meta[\"{}\"]` must be a string, got {other}",
                        era::META_PROTOCOL_VERSION
                    ),
                    400,
                ));
            }
        },
    };
    let meta_version = meta_version.as_deref();
    let stateless = meta_version.is_some()
        || method == "server/discover"
        || header.is_some_and(era::is_stateless);
    if stateless {
        check_stateless(via, method, params, header, meta_version)?;
        return Ok(Resolved {
            era: Era::Stateless,
            session: None,
        });
    }
    match via {
        Via::Stdio { negotiated } => Ok(Resolved {
            era: Era::Handshake(negotiated.unwrap_or_else(handshake_default)),
            session: None,
        }),
        Via::Http(h) => {
            if let Some(v) = header {
                if era::handshake_index(v).is_none() {
                    return Err(Refusal::new(
                        jsonrpc::INVALID_REQUEST,
                        format!(
                            "unsupported MCP-Protocol-Version: {v}; this server speaks {}",
                            era::all_versions().join(", ")
                        ),
                        400,
                    ));
                }
            }
            if method == "initialize" {
                return Ok(Resolved {
                    era: Era::Handshake(handshake_default()),
                    session: None,
                });
            }
            let Some(sid) = h.session_id else {
                return Err(Refusal::new(
                    jsonrpc::INVALID_REQUEST,
                    "missing Mcp-Session-Id header: send initialize first and repeat the session id it returns".into(),
                    400,
                ));
            };
            match shard.sessions.lookup(sid) {
                Lookup::Valid(session) => Ok(Resolved {
                    era: Era::Handshake(session.version),
                    session: Some(sid),
                }),
                Lookup::Unknown => Err(Refusal::new(
                    jsonrpc::INVALID_REQUEST,
                    "unknown or expired session: send initialize again without Mcp-Session-Id"
                        .into(),
                    404,
                )),
            }
        }
    }
}

/// The checks of a stateless-era request: `_meta` complete, revision supported,
/// HTTP headers present and equal to the body.
fn check_stateless(
    via: &Via<'_>,
    method: &str,
    params: &Params<'_>,
    header: Option<&str>,
    meta_version: Option<&str>,
) -> Result<(), Refusal> {
    let requested = meta_version.or(header).unwrap_or("");
    if !requested.is_empty() && !era::is_stateless(requested) {
        return Err(unsupported(requested));
    }
    let Via::Http(h) = via else {
        return check_meta(params, meta_version);
    };
    let Some(hv) = header else {
        return Err(mismatch("missing MCP-Protocol-Version header".into()));
    };
    if let Some(mv) = meta_version {
        if hv != mv {
            return Err(mismatch(format!(
                "MCP-Protocol-Version header ({hv}) does not match params._meta[\"{}\"] ({mv})",
                era::META_PROTOCOL_VERSION
            )));
        }
    }
    match h.mcp_method.map(decode_header) {
        None => return Err(mismatch("missing Mcp-Method header".into())),
        Some(None) => {
            return Err(mismatch(
                "Mcp-Method header is not valid =?base64?…?= encoding".into(),
            ))
        }
        Some(Some(hm)) if hm != method => {
            return Err(mismatch(format!(
                "Mcp-Method header ({hm}) does not match the body's method ({method})"
            )))
        }
        Some(Some(_)) => {}
    }
    if method == "tools/call" {
        let body_name = params.name.as_deref().unwrap_or("");
        match h.mcp_name.map(decode_header) {
            None => {
                return Err(mismatch(
                    "missing Mcp-Name header (tools/call sends the tool name)".into(),
                ))
            }
            Some(None) => {
                return Err(mismatch(
                    "Mcp-Name header is not valid =?base64?…?= encoding".into(),
                ))
            }
            Some(Some(hn)) if hn != body_name => {
                return Err(mismatch(format!(
                    "Mcp-Name header ({hn}) does not match params.name ({body_name})"
                )))
            }
            Some(Some(_)) => {}
        }
    }
    check_meta(params, meta_version)
}

/// `_meta` must name the revision and the client's capabilities.
fn check_meta(params: &Params<'_>, meta_version: Option<&str>) -> Result<(), Refusal> {
    let has_caps = params
        .meta
        .as_ref()
        .and_then(|m| m.client_capabilities)
        .is_some_and(|c| c.get().starts_with('{'));
    if meta_version.is_none() || !has_caps {
        return Err(Refusal::new(
            jsonrpc::INVALID_PARAMS,
            format!(
                "params._meta must carry \"{}\" (a string) and \"{}\" (an object) in protocol revision {}",
                era::META_PROTOCOL_VERSION,
                era::META_CLIENT_CAPABILITIES,
                era::STATELESS_VERSIONS[0]
            ),
            400,
        ));
    }
    Ok(())
}

/// Header values that are not plain visible ASCII travel as `=?base64?…?=`.
fn decode_header(value: &str) -> Option<Cow<'_, str>> {
    use base64::Engine;
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        None => Some(Cow::Borrowed(value)),
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(Cow::Owned),
    }
}

fn handshake_default() -> u8 {
    era::handshake_index(era::LATEST_HANDSHAKE).expect("latest is listed")
}

fn initialize(
    shard: &Shard,
    via: &Via<'_>,
    id: &RawValue,
    params: &Params<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let Some(requested) = params.protocol_version.as_deref() else {
        return reply_error(
            out,
            Some(id),
            jsonrpc::INVALID_PARAMS,
            "initialize needs params.protocolVersion",
            None,
            200,
        );
    };
    // Answer the requested revision when we speak it, else our newest (the client
    // then decides whether it can go on).
    let index = era::handshake_index(requested).unwrap_or_else(handshake_default);
    let mut outcome = Outcome::ok();
    outcome.negotiated = Some(index);
    if let Via::Http(_) = via {
        match shard.sessions.create(shard.id, index) {
            Some(sid) => outcome.new_session = Some(sid),
            None => {
                return reply_error(
                    out,
                    Some(id),
                    jsonrpc::INTERNAL_ERROR,
                    "too many open sessions; end one with DELETE /mcp or raise limits.max_sessions",
                    None,
                    503,
                )
            }
        }
    }
    let result = json!({
        "protocolVersion": era::HANDSHAKE_VERSIONS[index as usize],
        "capabilities": capabilities(),
        "serverInfo": server_info(),
        "instructions": INSTRUCTIONS,
    });
    write_value(out, id, &result);
    outcome
}

fn tools_list(
    shard: &Shard,
    era: Era,
    id: &RawValue,
    params: &Params<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let pages = shard
        .tool_pages
        .get_or_init(|| ToolPages::render(&shard.tools, shard.config.limits.tools_page_size));
    let index = match params.cursor.as_deref() {
        None => 0,
        Some(c) => match pages.page_of(c) {
            Some(i) => i,
            None => {
                return reply_error(
                    out,
                    Some(id),
                    jsonrpc::INVALID_PARAMS,
                    &format!("invalid cursor: {c:?}; use the nextCursor of a previous tools/list"),
                    None,
                    200,
                )
            }
        },
    };
    let page = &pages.pages[index];
    let result = if era == Era::Stateless {
        &page.stateless
    } else {
        &page.handshake
    };
    jsonrpc::write_result(out, id, result);
    Outcome::ok()
}

/// `tools/list` results, rendered once per shard: the tool set is fixed while the
/// process runs, and building the list per request cost more than the rest of
/// the request together.
pub struct ToolPages {
    pages: Vec<RenderedPage>,
    page_size: usize,
}

struct RenderedPage {
    handshake: Vec<u8>,
    stateless: Vec<u8>,
}

impl ToolPages {
    fn render(tools: &crate::tools::Registry, page_size: usize) -> ToolPages {
        let page_size = page_size.max(1);
        let all: Vec<Value> = tools.tools().map(|t| t.spec().to_json()).collect();
        let mut pages = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + page_size).min(all.len());
            let mut result = Map::new();
            result.insert("tools".into(), Value::Array(all[start..end].to_vec()));
            if end < all.len() {
                result.insert("nextCursor".into(), Value::String(end.to_string()));
            }
            let handshake = Value::Object(result);
            let mut stateless = handshake.clone();
            stateless_result(&mut stateless, true);
            pages.push(RenderedPage {
                handshake: serde_json::to_vec(&handshake).expect("serialising cannot fail"),
                stateless: serde_json::to_vec(&stateless).expect("serialising cannot fail"),
            });
            if end >= all.len() {
                break;
            }
            start = end;
        }
        assert!(
            !pages.is_empty(),
            "an empty tool set still has one (empty) page"
        );
        ToolPages { pages, page_size }
    }

    /// The page a cursor we issued points at (cursors are the index of the page's
    /// first tool).
    fn page_of(&self, cursor: &str) -> Option<usize> {
        let first: usize = cursor.parse().ok()?;
        let page = first / self.page_size;
        (first > 0 && first.is_multiple_of(self.page_size) && page < self.pages.len())
            .then_some(page)
    }
}

async fn tools_call(
    shard: &Shard,
    via: &Via<'_>,
    session: Option<&str>,
    era: Era,
    id: &RawValue,
    params: Params<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let token: Option<Value> = params
        .progress_token()
        .map(|t| serde_json::from_str(t.get()).expect("a token that parsed once parses again"));
    let Some(name) = params.name.as_deref() else {
        return reply_error(
            out,
            Some(id),
            jsonrpc::INVALID_PARAMS,
            "tools/call needs params.name",
            None,
            200,
        );
    };
    let args = match params.arguments {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return reply_error(
                out,
                Some(id),
                jsonrpc::INVALID_PARAMS,
                "params.arguments must be an object",
                None,
                200,
            )
        }
    };
    let wants_progress = matches!(via, Via::Http(h) if h.sse_ok)
        && token.is_some()
        && shard.tools.get(name).is_some();
    if wants_progress {
        let mut outcome = Outcome::ok();
        outcome.wrote = false;
        outcome.progress = Some(ProgressJob {
            tool: name.to_string(),
            args,
            token: token.expect("checked above"),
            id: id.to_owned(),
            ns: namespace(session),
            era,
        });
        return outcome;
    }
    let Some((result, outcome)) = call_tool(
        shard,
        name,
        args,
        namespace(session),
        id.get(),
        Hooks::default(),
    )
    .await
    else {
        return unknown_tool(out, id, name);
    };
    write_call_result(out, id, era, &result, outcome)
}

fn unknown_tool(out: &mut Vec<u8>, id: &RawValue, name: &str) -> Outcome {
    reply_error(
        out,
        Some(id),
        jsonrpc::INVALID_PARAMS,
        &format!("unknown tool: {name}; tools/list names the tools this server has"),
        None,
        200,
    )
}

/// Writes the answer to a finished `tools/call`.
fn write_call_result(
    out: &mut Vec<u8>,
    id: &RawValue,
    era: Era,
    result: &ToolResult,
    outcome: CallOutcome,
) -> Outcome {
    if outcome == CallOutcome::Panicked {
        let message = result
            .content()
            .first()
            .map_or("internal error", Content::text);
        return reply_error(out, Some(id), jsonrpc::INTERNAL_ERROR, message, None, 200);
    }
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"result\":");
    let tail: &[u8] = if era == Era::Stateless {
        stateless_call_tail()
    } else {
        b""
    };
    result.write_json(out, tail);
    out.push(b'}');
    Outcome::ok()
}

/// Runs a call that asked for progress. Every `progress_interval` while it runs,
/// `emit` gets a `notifications/progress` message if the tool has made progress
/// since the last one (progress only ever increases); then it gets the answer.
/// An `Err` from `emit` (the client is gone) stops the call.
pub async fn call_with_progress<E>(
    shard: &Shard,
    job: ProgressJob,
    emit: &mut E,
) -> std::io::Result<()>
where
    E: AsyncEmit,
{
    let cell = ProgressCell::default();
    let interval = shard.config.limits.progress_interval;
    let call = call_tool(
        shard,
        &job.tool,
        job.args,
        job.ns,
        job.id.get(),
        Hooks {
            sink: None,
            progress: Some(&cell),
        },
    );
    let sent = Cell::new(0u64);
    let notify = |message: &mut Vec<u8>| -> bool {
        let (done, total) = cell.get();
        if done <= sent.get() {
            return false;
        }
        sent.set(done);
        message.clear();
        let mut params = Map::new();
        params.insert("progressToken".into(), job.token.clone());
        params.insert("progress".into(), done.into());
        if let Some(t) = total {
            params.insert("total".into(), t.into());
        }
        let note = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": params});
        serde_json::to_writer(&mut *message, &note).expect("writing to a Vec cannot fail");
        true
    };
    let mut message = Vec::new();
    let finished = {
        let ticker = async {
            loop {
                glommio::timer::sleep(interval).await;
                if notify(&mut message) {
                    emit.emit(&message).await?;
                }
            }
        };
        futures_lite::future::or(async { Ok(call.await) }, async {
            let r: std::io::Result<()> = ticker.await;
            r.map(|()| None)
        })
        .await?
    };
    // The last word on progress before the answer, so a client always sees where
    // the work ended even when it finished between two ticks.
    if notify(&mut message) {
        emit.emit(&message).await?;
    }
    let mut out = Vec::new();
    match finished {
        Some((result, outcome)) => {
            write_call_result(&mut out, &job.id, job.era, &result, outcome);
        }
        None => {
            unknown_tool(&mut out, &job.id, &job.tool);
        }
    }
    emit.emit(&out).await
}

/// Where [`call_with_progress`] writes its messages (one JSON-RPC message each).
pub trait AsyncEmit {
    fn emit(&mut self, message: &[u8]) -> impl Future<Output = std::io::Result<()>>;
}

/// What a call may stream to besides its result.
#[derive(Default, Clone, Copy)]
pub struct Hooks<'a> {
    /// Items as they are produced (NDJSON).
    pub sink: Option<&'a ItemSink>,
    /// Progress as it is made (SSE `notifications/progress`).
    pub progress: Option<&'a ProgressCell>,
}

/// Runs one call of the tool `name` under its deadline, registered for
/// cancellation as (`ns`, `id`), counted in the metrics. `None`: no such tool (or
/// it is disabled). Shared by MCP `tools/call` and the direct API.
pub async fn call_tool(
    shard: &Shard,
    name: &str,
    args: Map<String, Value>,
    ns: u64,
    id: &str,
    hooks: Hooks<'_>,
) -> Option<(ToolResult, CallOutcome)> {
    let (index, tool) = shard.tools.get_indexed(name)?;
    let start = Instant::now();
    let timeout = shard.config.tool_timeout(name);
    let deadline = start + timeout;
    let cancel = CancelFlag::default();
    let metrics = shard.m();
    metrics.inflight.add(1);
    let _running = Running(metrics);
    let cx = CallContext {
        shard,
        deadline,
        cancel: cancel.clone(),
        sink: hooks.sink,
        progress: hooks.progress,
    };
    // A bug in one tool must cost one answer, not the shard: a panic unwinds to
    // here and the caller answers -32603.
    let mut call = pin!(futures_lite::FutureExt::catch_unwind(
        std::panic::AssertUnwindSafe(tool.call(&cx, args))
    ));
    // Most calls (a cached read, an indexed lookup) finish in their first poll.
    // Nothing else runs on the shard meanwhile, so no cancellation can arrive and
    // no timer could fire: registering for either is needed only once the call
    // has to wait, and skipping it saves a map insert, a timer and their undoing.
    let result = match futures_lite::future::poll_once(call.as_mut()).await {
        Some(done) => Some(done),
        None => {
            let guard = shard.inflight.register(ns, id, cancel.clone());
            let ended = Ended {
                timer: glommio::timer::Timer::new(
                    deadline.saturating_duration_since(Instant::now()),
                ),
                guard: &guard,
            };
            let raced = futures_lite::future::or(async { Some(call.await) }, ended).await;
            drop(guard);
            raced
        }
    };
    let (result, outcome) = match result {
        Some(Err(_)) => {
            crate::log!(
                Error,
                "a tool panicked; answered -32603",
                tool = name,
                shard = shard.id
            );
            (
                ToolResult::error(format!(
                    "internal error in tool {name}; the server logged it and goes on"
                )),
                CallOutcome::Panicked,
            )
        }
        Some(Ok(r)) if r.is_error && cancel.is_cancelled() && Instant::now() < deadline => {
            (r, CallOutcome::Cancelled)
        }
        Some(Ok(r)) if r.is_error && Instant::now() >= deadline => (r, CallOutcome::Timeout),
        Some(Ok(r)) if r.is_error => (r, CallOutcome::Error),
        Some(Ok(r)) => (r, CallOutcome::Ok),
        None if cancel.is_cancelled() && Instant::now() < deadline => (
            ToolResult::error("cancelled by the client (notifications/cancelled)"),
            CallOutcome::Cancelled,
        ),
        None => {
            cancel.cancel();
            (
                ToolResult::error(format!(
                    "timed out after {} ms; narrow the request (a smaller limit, a more specific query) or raise --timeout-ms",
                    timeout.as_millis()
                )),
                CallOutcome::Timeout,
            )
        }
    };
    metrics.call(index, start.elapsed(), outcome);
    metrics.caches(&shard.storage);
    Some((result, outcome))
}

/// Keeps the in-flight gauge right even when a call's future is dropped.
struct Running<'a>(&'a crate::metrics::ShardMetrics);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.inflight.sub(1);
    }
}

fn write_value(out: &mut Vec<u8>, id: &RawValue, result: &Value) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"result\":");
    // sonic-rs escapes strings with SIMD: 4.7x serde_json on a 1 MiB read_file
    // result (cargo bench --bench json) and fewer instructions on small results too.
    sonic_rs::to_writer(&mut *out, result).expect("writing to a Vec cannot fail");
    out.push(b'}');
}

fn reply_error(
    out: &mut Vec<u8>,
    id: Option<&RawValue>,
    code: i32,
    message: &str,
    data: Option<&Value>,
    status: u16,
) -> Outcome {
    jsonrpc::write_error(out, id, code, message, data);
    Outcome::error(status)
}

/// Appends the answers to the messages of a JSON-RPC batch (2025-03-26) to `out`
/// as one array, or nothing when none of them has an answer (only notifications
/// and responses). The transport has checked that a batch is allowed here.
pub async fn handle_batch(shard: &Shard, via: &Via<'_>, msgs: &[Message<'_>], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(b'[');
    let mut any = false;
    for msg in msgs {
        let mark = out.len();
        if any {
            out.push(b',');
        }
        let wrote = if msg.method.as_deref() == Some("initialize") {
            jsonrpc::write_error(
                out,
                msg.id,
                jsonrpc::INVALID_REQUEST,
                "initialize must not be part of a batch",
                None,
            );
            true
        } else {
            handle(shard, via, msg, out).await.wrote
        };
        if wrote {
            any = true;
        } else {
            out.truncate(mark);
        }
    }
    if any {
        out.push(b']');
    } else {
        out.truncate(start);
    }
}

/// Writes the response to a message that could not be parsed at all.
pub fn write_parse_error(out: &mut Vec<u8>, code: i32, detail: &str) {
    let message = if code == jsonrpc::PARSE_ERROR {
        format!("parse error: {detail}")
    } else {
        format!("invalid request: {detail}")
    };
    jsonrpc::write_error(out, None, code, &message, None);
}

/// Request ids are unique only per session (or stream), so cancellation keys carry
/// the session they belong to.
fn namespace(session: Option<&str>) -> u64 {
    match session {
        Some(sid) => {
            // Fixed keys: every shard must compute the same namespace for a session.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            sid.hash(&mut h);
            h.finish() | 1
        }
        None => 0,
    }
}

/// Completes when a call's deadline passes or the client cancels it.
struct Ended<'g> {
    timer: glommio::timer::Timer,
    guard: &'g InflightGuard<'g>,
}

/// What racing a call against its deadline yields: `None` when the deadline or a
/// cancellation won, else the call's outcome (`Err` when the tool panicked).
type Raced = Option<std::thread::Result<ToolResult>>;

impl Future for Ended<'_> {
    type Output = Raced;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Raced> {
        if self.guard.entry.flag.is_cancelled() {
            return Poll::Ready(None);
        }
        self.guard.entry.waker.replace(Some(cx.waker().clone()));
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// (session namespace, raw request id).
type InflightKey = (u64, Box<str>);

struct InflightEntry {
    flag: CancelFlag,
    waker: RefCell<Option<Waker>>,
}

/// The calls running on this shard, by (namespace, request id), so that
/// `notifications/cancelled` can stop them.
#[derive(Default)]
pub struct Inflight {
    calls: RefCell<hashbrown::HashMap<InflightKey, Rc<InflightEntry>>>,
}

pub struct InflightGuard<'a> {
    owner: &'a Inflight,
    key: (u64, Box<str>),
    entry: Rc<InflightEntry>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut calls = self.owner.calls.borrow_mut();
        if calls
            .get(&self.key)
            .is_some_and(|e| Rc::ptr_eq(e, &self.entry))
        {
            calls.remove(&self.key);
        }
    }
}

impl Inflight {
    pub fn register(&self, ns: u64, id: &str, flag: CancelFlag) -> InflightGuard<'_> {
        let entry = Rc::new(InflightEntry {
            flag,
            waker: RefCell::new(None),
        });
        let key = (ns, Box::<str>::from(id));
        self.calls.borrow_mut().insert(key.clone(), entry.clone());
        InflightGuard {
            owner: self,
            key,
            entry,
        }
    }

    /// Cancels a running call; false when no such call runs on this shard.
    pub fn cancel(&self, ns: u64, id: &str) -> bool {
        let entry = self
            .calls
            .borrow()
            .get(&(ns, Box::<str>::from(id)))
            .cloned();
        match entry {
            Some(e) => {
                e.flag.cancel();
                if let Some(w) = e.waker.borrow_mut().take() {
                    w.wake();
                }
                true
            }
            None => false,
        }
    }

    /// Cancels every call running on this shard (shutdown deadline); returns how many.
    pub fn cancel_all(&self) -> usize {
        let entries: Vec<Rc<InflightEntry>> = self.calls.borrow().values().cloned().collect();
        for e in &entries {
            e.flag.cancel();
            if let Some(w) = e.waker.borrow_mut().take() {
                w.wake();
            }
        }
        entries.len()
    }

    /// Calls running now.
    pub fn running(&self) -> usize {
        self.calls.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::protocol::jsonrpc::Parsed;
    use crate::protocol::session::SessionTable;
    use crate::storage::Storage;
    use crate::tools::{Annotations, Registry, Tool, ToolFuture, ToolSpec};
    use std::sync::Arc;

    struct Panics(ToolSpec);

    impl Tool for Panics {
        fn spec(&self) -> &ToolSpec {
            &self.0
        }
        fn call<'a>(&'a self, _: &'a CallContext<'a>, _: Map<String, Value>) -> ToolFuture<'a> {
            Box::pin(async { panic!("a bug in a tool") })
        }
    }

    #[test]
    fn a_panicking_tool_costs_one_answer_not_the_shard() {
        glommio::LocalExecutor::default().run(async {
            let config = Arc::new(Config::default());
            let shard = Shard {
                id: 0,
                config: config.clone(),
                tools: Registry::new(vec![Box::new(Panics(ToolSpec {
                    name: "boom",
                    title: "Boom",
                    description: "panics",
                    input_schema: json!({"type": "object"}),
                    output_schema: None,
                    annotations: Annotations::READ_ONLY,
                }))]),
                storage: Storage::new(&config).unwrap(),
                sessions: Arc::new(SessionTable::new(1, 1, config.limits.session_idle)),
                inflight: Inflight::default(),
                peers: None,
                metrics: Arc::new(crate::metrics::Metrics::new(vec!["boom"], 1, None)),
                draining: Default::default(),
                busy: Default::default(),
                tool_pages: Default::default(),
            };
            let via = Via::Stdio {
                negotiated: Some(3),
            };
            let body =
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"boom"}}"#;
            let Ok(Parsed::Single(msg)) = jsonrpc::parse(body, 64) else {
                panic!("parses")
            };
            let mut out = Vec::new();
            handle(&shard, &via, &msg, &mut out).await;
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["error"]["code"], jsonrpc::INTERNAL_ERROR);
            assert_eq!(shard.inflight.running(), 0, "the call was unregistered");
            // The shard goes on serving.
            let ping = br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
            let Ok(Parsed::Single(msg)) = jsonrpc::parse(ping, 64) else {
                panic!("parses")
            };
            out.clear();
            handle(&shard, &via, &msg, &mut out).await;
            assert_eq!(out, br#"{"jsonrpc":"2.0","id":2,"result":{}}"#);
        });
    }

    /// serde needs the `_meta` key names as literals; they must be the ones the
    /// rest of the server (and the spec) uses.
    #[test]
    fn meta_field_names_are_the_era_constants() {
        let body = json!({
            era::META_PROTOCOL_VERSION: "2026-07-28",
            era::META_CLIENT_CAPABILITIES: {},
            "progressToken": 7,
        })
        .to_string();
        let meta: Meta = serde_json::from_str(&body).unwrap();
        assert_eq!(meta.protocol_version.unwrap().get(), "\"2026-07-28\"");
        assert_eq!(meta.client_capabilities.unwrap().get(), "{}");
        assert_eq!(meta.progress_token.unwrap().get(), "7");
    }
}
