//! Runtime configuration: what is served, and every bound the server enforces.
//!
//! Each limit is a named constant with a default and a field on [`Limits`], so an
//! operator can change it without a rebuild and a reader can find every bound in
//! one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Loopback only by default: an MCP server exposes files and databases, so it must
/// be an explicit decision to listen anywhere else. 7411 is unassigned by IANA.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7411";
/// Default per-call deadline for a tool call.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Bytes of request line plus headers; beyond it the answer is 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Bytes of a request body; beyond it the answer is 413, sent before the body is read.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Header fields in one request; more is a 431.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// A request's headers must arrive within this time once its first byte has.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// A keep-alive connection with no request in flight is closed after this.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Open connections per shard; further connections are accepted and closed at once
/// so that the kernel backlog does not fill with clients that will never be served.
pub const DEFAULT_MAX_CONNECTIONS_PER_SHARD: usize = 16_384;
/// Requests read ahead of their responses on one pipelined connection.
pub const DEFAULT_MAX_PIPELINED: usize = 64;
/// Live handshake-era sessions across the whole process.
pub const DEFAULT_MAX_SESSIONS: usize = 65_536;
/// A session unused this long is ended.
pub const DEFAULT_SESSION_IDLE_SECS: u64 = 30 * 60;
/// JSON nesting depth accepted in a message. serde_json stops at 128 on its own;
/// the explicit bound keeps the answer a JSON-RPC error rather than a crash when a
/// faster parser is swapped in.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;
/// Messages in one JSON-RPC batch (2025-03-26 only).
pub const DEFAULT_MAX_BATCH: usize = 64;
/// Tools returned per `tools/list` page.
pub const DEFAULT_TOOLS_PAGE_SIZE: usize = 50;
/// Bytes of one stdio line; a longer line is answered with a parse error and skipped.
pub const DEFAULT_MAX_STDIO_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Every bound the transport and protocol layers enforce.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections_per_shard: usize,
    pub max_pipelined: usize,
    pub max_sessions: usize,
    pub session_idle: Duration,
    pub max_json_depth: usize,
    pub max_batch: usize,
    pub tools_page_size: usize,
    pub max_stdio_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout: Duration::from_millis(DEFAULT_HEADER_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            max_connections_per_shard: DEFAULT_MAX_CONNECTIONS_PER_SHARD,
            max_pipelined: DEFAULT_MAX_PIPELINED,
            max_sessions: DEFAULT_MAX_SESSIONS,
            session_idle: Duration::from_secs(DEFAULT_SESSION_IDLE_SECS),
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_batch: DEFAULT_MAX_BATCH,
            tools_page_size: DEFAULT_TOOLS_PAGE_SIZE,
            max_stdio_line_bytes: DEFAULT_MAX_STDIO_LINE_BYTES,
        }
    }
}

/// Which `Origin` and `Host` values a request may carry (DNS-rebinding defence).
///
/// By default only loopback names are allowed, which is right for a server bound to
/// loopback. A deployment behind a proxy lists its public names here.
#[derive(Clone, Debug)]
pub struct AccessPolicy {
    /// Host names (without port) accepted in `Host`. Empty: loopback names only.
    pub allowed_hosts: Vec<String>,
    /// Full origins (`scheme://host[:port]`) accepted in `Origin`. Empty: any
    /// origin whose host is a loopback name.
    pub allowed_origins: Vec<String>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// A SQLite database to serve, named by its file stem.
#[derive(Clone, Debug)]
pub struct Database {
    pub name: String,
    pub path: PathBuf,
}

/// What one coremcp process serves, shared read-only by every shard.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Number of shards; 0 means one per online CPU.
    pub shards: usize,
    /// CPUs to pin shards to, in order; empty means glommio's spread placement.
    pub cpus: Vec<usize>,
    /// Roots, canonicalised at start-up. The first is where relative paths resolve.
    pub roots: Vec<PathBuf>,
    pub databases: Vec<Database>,
    /// Default deadline of a tool call.
    pub timeout: Duration,
    pub limits: Limits,
    pub access: AccessPolicy,
    /// Spin this long before a shard parks in the kernel; trades CPU for latency.
    pub spin_before_park: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            shards: 0,
            cpus: Vec::new(),
            roots: Vec::new(),
            databases: Vec::new(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            limits: Limits::default(),
            access: AccessPolicy::default(),
            spin_before_park: None,
        }
    }
}

/// Sets one limit from `name=value` (the field names of [`Limits`]; durations in ms
/// for `*_timeout`, seconds for `session_idle`).
pub fn set_limit(limits: &mut Limits, item: &str) -> Result<(), String> {
    let (name, value) = item
        .split_once('=')
        .ok_or_else(|| format!("--limit {item}: expected NAME=VALUE"))?;
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("--limit {item}: {value:?} is not a whole number"))?;
    if n == 0 {
        return Err(format!("--limit {item}: must be greater than 0"));
    }
    let size = n as usize;
    match name.trim() {
        "max_header_bytes" => limits.max_header_bytes = size,
        "max_headers" => limits.max_headers = size,
        "max_body_bytes" => limits.max_body_bytes = size,
        "header_timeout" => limits.header_timeout = Duration::from_millis(n),
        "idle_timeout" => limits.idle_timeout = Duration::from_millis(n),
        "max_connections_per_shard" => limits.max_connections_per_shard = size,
        "max_pipelined" => limits.max_pipelined = size,
        "max_sessions" => limits.max_sessions = size,
        "session_idle" => limits.session_idle = Duration::from_secs(n),
        "max_json_depth" => limits.max_json_depth = size,
        "max_batch" => limits.max_batch = size,
        "tools_page_size" => limits.tools_page_size = size,
        "max_stdio_line_bytes" => limits.max_stdio_line_bytes = size,
        other => {
            return Err(format!(
                "--limit {item}: unknown limit {other:?}; known: max_header_bytes, max_headers, max_body_bytes, \
                 header_timeout, idle_timeout, max_connections_per_shard, max_pipelined, max_sessions, \
                 session_idle, max_json_depth, max_batch, tools_page_size, max_stdio_line_bytes"
            ))
        }
    }
    Ok(())
}
