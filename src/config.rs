//! Runtime configuration: what is served, and every bound the server enforces.
//!
//! Each limit is a named constant with a default and a field on [`Limits`], so an
//! operator can change it without a rebuild and a reader can find every bound in
//! one place.

pub mod file;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::log::Level;

/// Loopback only by default: an MCP server exposes files and databases, so it must
/// be an explicit decision to listen anywhere else. 7411 is unassigned by IANA.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7411";
/// Default per-call deadline for a tool call.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// The latency the connections' task queue asks of glommio: while a connection
/// is runnable, the shard runs tasks for at most this long before it polls its
/// rings again. A connection under load takes its next request with a direct
/// `recv` and stays runnable (transport::http::conn), so a busy shard's run
/// queue may never drain; this slice is then what bounds how long a connection
/// waiting on io_uring (its poll not yet submitted or reaped) waits. glommio's
/// own 100 ms default showed as a 88 ms closed-loop p99; 1 ms gave 1.1 ms.
///
/// It is the connections' queue's, not the executor's (`preempt_timer_ms`,
/// glommio's 100 ms by default), because a short slice makes glommio-ng's lost
/// wakeup ([`DEFAULT_HEARTBEAT_MS`]) likely, and at start-up, before any task
/// has run, nothing can bound it: with the executor's slice at 1 ms, 1 in 300
/// runs of tests/ops.rs left a shard asleep for good before it had started.
pub const DEFAULT_CONNECTION_LATENCY_MS: u64 = 1;
/// Period of each shard's heartbeat timer ([`crate::server`]). glommio-ng 0.12
/// can park a shard in the kernel while one of its tasks is runnable (when the
/// preemption timer fires before the scheduler has run anything, it takes the
/// empty round for an idle one); an armed timer is then the only thing that
/// wakes it. The period bounds that stall; a shard wakes this often when idle.
/// On the 2-vCPU VM a wake-up of an idle shard cost ~100 µs of CPU (the park
/// path's `membarrier` and timers trap to the hypervisor): at 10 ms that was
/// 1 % of a CPU per idle shard, at 100 ms 0.2 %. A lost wakeup needs a
/// runnable connection and a contended CPU at once, so a rare stall of up to
/// 100 ms is the better trade.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// Whether the server's memory may be backed by transparent huge pages
/// (`runtime.transparent_hugepages`). Off: coremcp turns THP off for its own
/// process (`PR_SET_THP_DISABLE`) at start-up, whatever the system's setting.
/// mimalloc asks for THP on its heap (`MADV_HUGEPAGE`), so with THP `madvise`
/// (as on the 2-vCPU VM) or `always`, khugepaged collapses the heap's pages
/// into huge ones every 10 s, and a shard touching a range being collapsed
/// waits for the copy; a collapse traced there took 4.9 ms, matched by a
/// 5.1 ms silence, and purges split huge pages back. At read_file's half rate,
/// 14 interleaved pairs (docs/performance.md, item 47) met 13 % less silence
/// and 18 % fewer gaps over 1 ms with THP off, at the same CPU per request, and
/// a peak RSS 10 MB lower (21 against 32 MB); the closed loop stayed within
/// the noise. The working set of a shard is a few MB of hot cache entries,
/// which is where huge pages would save TLB misses; the stalls cost more.
pub const DEFAULT_TRANSPARENT_HUGEPAGES: bool = false;
/// Longest heartbeat period `runtime.heartbeat_ms` accepts.
pub const MAX_HEARTBEAT_MS: u64 = 1_000;
/// How long a shard's epoll pump keeps looking for requests, without waiting,
/// after it last found one (`runtime.poll_spin_us`); 0 (the default) waits at
/// once. A request that arrives within the window is taken by the next
/// `epoll_wait` instead of through glommio's park and wake-up (an io_uring poll,
/// a timer re-armed, a context switch), which on the 2-vCPU VM cost 54–61 µs
/// of CPU per request at 10k req/s. Measured there (docs/performance.md item 40):
/// 100 µs took p50 at a fixed rate from 0.04–0.07 ms to 0.011–0.021 ms at 10k
/// to 68k req/s; p99 fell in 12 of 18 interleaved pairs, but at the benchmark's
/// half rates in only 7 of 15 (a spinning vCPU slows the other one on that
/// host). A CPU spins for the whole window after every request: for isolated
/// cores (tuning/BARE-METAL.md), off by default.
pub const DEFAULT_POLL_SPIN_US: u64 = 0;
/// Longest `runtime.poll_spin_us` accepted: past it a spinning shard just burns
/// its CPU.
pub const MAX_POLL_SPIN_US: u64 = 10_000;

/// How long a shard's epoll pump, having found requests and found none on its
/// next look, waits for more in `epoll_pwait2` itself before it parks through
/// glommio (`runtime.poll_wait_us`; 0 parks at once). The thread sleeps in the
/// kernel and a request wakes it the way it wakes any epoll server: no io_uring
/// poll armed and completed, no task work or IPI to a running shard, no
/// preemption timer re-armed per request. On the 2-vCPU VM
/// (docs/performance.md item 42) 500 µs took the shard's CPU per request at a
/// fixed rate of query_db from 64 to 29 µs at 10k req/s and from 24.7 to
/// 16.3 µs at 40k.
/// The price is bounded: while the pump waits, glommio does not look at its
/// rings, so a timer, an accept or a socket turning writable is seen up to this
/// late, or up to a connection slice late if that is longer (the wait's timer
/// is given that slack so that it never costs a reprogramming of the CPU's
/// timer: `transport::http::readiness`, item 45); work the shard's own tasks
/// hand to other threads is not, since the pump does not wait while any is out
/// ([`crate::shard::offload`]).
pub const DEFAULT_POLL_WAIT_US: u64 = 500;
/// Longest `runtime.poll_wait_us` accepted: a wait this long already holds back
/// everything but requests for ten connection slices.
pub const MAX_POLL_WAIT_US: u64 = 10_000;

/// A pump window (`poll_spin_us`, `poll_wait_us`) from microseconds, as the flag
/// or the file gives it, checked against its `max`; the error says what is
/// wrong with the value.
pub fn pump_window(us: u64, max: u64) -> Result<Duration, String> {
    if us > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(Duration::from_micros(us))
}

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
/// Connections the kernel queues for one shard's listener until the shard
/// accepts them (listen(2)'s backlog, which the kernel caps at
/// `net.core.somaxconn`). A shard accepts as fast as it runs, so the queue
/// fills only in a burst of connects or a stall; past it the kernel drops the
/// client's SYN, and the client retries it a second later.
pub const DEFAULT_LISTEN_BACKLOG: usize = 1024;
/// Answers to a pipelined burst gathered before they are written in one go.
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
/// Calls in one `POST /v1/batch`.
pub const DEFAULT_MAX_DIRECT_BATCH: usize = 256;
/// Items a streaming call may queue ahead of the connection writing them; past it
/// the tool waits, so a slow reader stalls the producer instead of growing memory.
pub const DEFAULT_STREAM_QUEUE_ITEMS: usize = 256;
/// Bytes of serialised items gathered into one chunk of a streamed response.
pub const DEFAULT_STREAM_CHUNK_BYTES: usize = 16 * 1024;
/// Items one streamed (NDJSON) search or query may produce: far above what an MCP
/// answer may carry, because a streamed answer never sits in memory whole.
pub const DEFAULT_MAX_STREAM_ITEMS: usize = 100_000_000;
/// Shortest gap between two `notifications/progress` of one call.
pub const DEFAULT_PROGRESS_INTERVAL_MS: u64 = 100;
/// On SIGTERM/SIGINT, how long calls in flight may take to finish before they are
/// cancelled and the process exits anyway.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;

/// Every bound the transport and protocol layers enforce.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections_per_shard: usize,
    pub listen_backlog: usize,
    pub max_pipelined: usize,
    pub max_sessions: usize,
    pub session_idle: Duration,
    pub max_json_depth: usize,
    pub max_batch: usize,
    pub tools_page_size: usize,
    pub max_stdio_line_bytes: usize,
    /// Unpinned blocking threads per shard (slow queries, large reads, walks).
    pub blocking_threads: usize,
    pub max_direct_batch: usize,
    pub stream_queue_items: usize,
    pub stream_chunk_bytes: usize,
    pub max_stream_items: usize,
    pub progress_interval: Duration,
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
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            max_pipelined: DEFAULT_MAX_PIPELINED,
            max_sessions: DEFAULT_MAX_SESSIONS,
            session_idle: Duration::from_secs(DEFAULT_SESSION_IDLE_SECS),
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_batch: DEFAULT_MAX_BATCH,
            tools_page_size: DEFAULT_TOOLS_PAGE_SIZE,
            max_stdio_line_bytes: DEFAULT_MAX_STDIO_LINE_BYTES,
            blocking_threads: crate::server::BLOCKING_THREADS_PER_SHARD,
            max_direct_batch: DEFAULT_MAX_DIRECT_BATCH,
            stream_queue_items: DEFAULT_STREAM_QUEUE_ITEMS,
            stream_chunk_bytes: DEFAULT_STREAM_CHUNK_BYTES,
            max_stream_items: DEFAULT_MAX_STREAM_ITEMS,
            progress_interval: Duration::from_millis(DEFAULT_PROGRESS_INTERVAL_MS),
        }
    }
}

/// Which `Origin` and `Host` values a request may carry (DNS-rebinding defence).
///
/// By default only loopback names are allowed, which is right for a server bound to
/// loopback. A deployment behind a proxy lists its public names here.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    /// Host names (without port) accepted in `Host`. Empty: loopback names only.
    pub allowed_hosts: Vec<String>,
    /// Full origins (`scheme://host[:port]`) accepted in `Origin`. Empty: any
    /// origin whose host is a loopback name.
    pub allowed_origins: Vec<String>,
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
    /// io_uring submission queue depth per ring; `None`: glommio's default.
    pub ring_depth: Option<usize>,
    /// Bytes of registered I/O buffer memory per shard; `None`: glommio's default.
    pub io_memory: Option<usize>,
    /// How long a task may run before glommio preempts it for another queue.
    pub preempt_timer: Option<Duration>,
    /// The connections' task-queue latency ([`DEFAULT_CONNECTION_LATENCY_MS`]).
    pub connection_latency: Duration,
    /// Period of each shard's heartbeat timer ([`DEFAULT_HEARTBEAT_MS`]).
    pub heartbeat: Duration,
    /// How long the epoll pump looks again without waiting ([`DEFAULT_POLL_SPIN_US`]).
    pub poll_spin: Duration,
    /// How long the epoll pump waits in the kernel before it parks ([`DEFAULT_POLL_WAIT_US`]).
    pub poll_wait: Duration,
    /// Whether transparent huge pages may back the process's memory
    /// ([`DEFAULT_TRANSPARENT_HUGEPAGES`]).
    pub transparent_hugepages: bool,
    /// How long calls in flight may take to finish on SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// Log level; `None` leaves the flag/environment/default choice alone.
    pub log_level: Option<Level>,
    pub cache: CacheConfig,
    /// Per-tool settings by tool name; a tool not named here has the defaults.
    pub tools: BTreeMap<String, ToolConfig>,
}

/// Sizes of the shard-local caches in [`crate::storage`]. They are per shard, and
/// shared by the tools that read through them (the file cache by read_file,
/// read_multiple_files and search_code; the walk cache by search_code; the
/// statement cache and idle connections by query_db and db_schema), which is why
/// they are configured here rather than per tool.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Bytes of file contents cached per shard (0 disables the file cache).
    pub file_bytes: usize,
    /// Directory walks cached per shard.
    pub trees: usize,
    /// Prepared statements cached per database connection.
    pub db_statements: usize,
    /// Idle connections kept per database per shard.
    pub db_idle_connections: usize,
    /// query_db answers kept per shard (0 disables the answer cache).
    pub query_results: usize,
    /// Bytes of query_db answers kept per shard.
    pub query_result_bytes: usize,
    /// search_code queries kept compiled per shard (0: compile every call).
    pub search_patterns: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            file_bytes: crate::storage::file_cache::DEFAULT_FILE_CACHE_BYTES,
            trees: crate::storage::tree_cache::MAX_CACHED_TREES,
            db_statements: crate::storage::db::STATEMENT_CACHE_CAPACITY,
            db_idle_connections: crate::storage::db::MAX_IDLE_CONNECTIONS,
            query_results: crate::storage::query_cache::DEFAULT_QUERY_RESULTS,
            query_result_bytes: crate::storage::query_cache::DEFAULT_QUERY_RESULT_BYTES,
            search_patterns: crate::storage::patterns::DEFAULT_SEARCH_PATTERNS,
        }
    }
}

/// One tool's settings.
#[derive(Clone, Debug)]
pub struct ToolConfig {
    /// A disabled tool is not listed and cannot be called.
    pub enabled: bool,
    /// This tool's deadline, instead of [`Config::timeout`].
    pub timeout: Option<Duration>,
    /// Whether the tool uses the shard's file and search-tree caches. Off, every
    /// call reads from disk (and search walks the tree); the caches themselves
    /// are shared by tools and sized in `[cache]`.
    pub cache: bool,
}

impl Default for ToolConfig {
    fn default() -> Self {
        ToolConfig {
            enabled: true,
            timeout: None,
            cache: true,
        }
    }
}

impl Config {
    /// Whether a tool is served.
    pub fn tool_enabled(&self, name: &str) -> bool {
        self.tools.get(name).is_none_or(|t| t.enabled)
    }

    /// Whether `name` reads through the shard's caches.
    pub fn tool_cache(&self, name: &str) -> bool {
        self.tools.get(name).is_none_or(|t| t.cache)
    }

    /// The deadline of a call to `name`.
    pub fn tool_timeout(&self, name: &str) -> Duration {
        self.tools
            .get(name)
            .and_then(|t| t.timeout)
            .unwrap_or(self.timeout)
    }
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
            ring_depth: None,
            io_memory: None,
            preempt_timer: None,
            connection_latency: Duration::from_millis(DEFAULT_CONNECTION_LATENCY_MS),
            heartbeat: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            poll_spin: Duration::from_micros(DEFAULT_POLL_SPIN_US),
            poll_wait: Duration::from_micros(DEFAULT_POLL_WAIT_US),
            transparent_hugepages: DEFAULT_TRANSPARENT_HUGEPAGES,
            shutdown_timeout: Duration::from_millis(DEFAULT_SHUTDOWN_TIMEOUT_MS),
            log_level: None,
            cache: CacheConfig::default(),
            tools: BTreeMap::new(),
        }
    }
}

/// The names [`set_limit`] and the config file's `[limits]` table accept.
pub const LIMIT_NAMES: &[&str] = &[
    "max_header_bytes",
    "max_headers",
    "max_body_bytes",
    "header_timeout",
    "idle_timeout",
    "max_connections_per_shard",
    "listen_backlog",
    "max_pipelined",
    "max_sessions",
    "session_idle",
    "max_json_depth",
    "max_batch",
    "tools_page_size",
    "max_stdio_line_bytes",
    "blocking_threads",
    "max_direct_batch",
    "stream_queue_items",
    "stream_chunk_bytes",
    "max_stream_items",
    "progress_interval",
];

/// Sets one limit from `name=value` (the field names of [`Limits`]; durations in ms
/// for `*_timeout` and `progress_interval`, seconds for `session_idle`).
pub fn set_limit(limits: &mut Limits, item: &str) -> Result<(), String> {
    let (name, value) = item
        .split_once('=')
        .ok_or_else(|| format!("--limit {item}: expected NAME=VALUE"))?;
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("--limit {item}: {value:?} is not a whole number"))?;
    set_limit_value(limits, name.trim(), n).map_err(|why| format!("--limit {item}: {why}"))
}

/// Sets the limit `name` to `n`; the error names what is wrong.
pub fn set_limit_value(limits: &mut Limits, name: &str, n: u64) -> Result<(), String> {
    if n == 0 {
        return Err(format!("limit {name} must be greater than 0"));
    }
    let size = usize::try_from(n).map_err(|_| format!("limit {name}: {n} is too large"))?;
    match name {
        "max_header_bytes" => limits.max_header_bytes = size,
        "max_headers" => limits.max_headers = size,
        "max_body_bytes" => limits.max_body_bytes = size,
        "header_timeout" => limits.header_timeout = Duration::from_millis(n),
        "idle_timeout" => limits.idle_timeout = Duration::from_millis(n),
        "max_connections_per_shard" => limits.max_connections_per_shard = size,
        "listen_backlog" => {
            if n > i32::MAX as u64 {
                return Err(format!("limit {name} must be at most {}", i32::MAX));
            }
            limits.listen_backlog = size
        }
        "max_pipelined" => limits.max_pipelined = size,
        "max_sessions" => limits.max_sessions = size,
        "session_idle" => limits.session_idle = Duration::from_secs(n),
        "max_json_depth" => limits.max_json_depth = size,
        "max_batch" => limits.max_batch = size,
        "tools_page_size" => limits.tools_page_size = size,
        "max_stdio_line_bytes" => limits.max_stdio_line_bytes = size,
        "blocking_threads" => limits.blocking_threads = size,
        "max_direct_batch" => limits.max_direct_batch = size,
        "stream_queue_items" => limits.stream_queue_items = size,
        "stream_chunk_bytes" => limits.stream_chunk_bytes = size,
        "max_stream_items" => limits.max_stream_items = size,
        "progress_interval" => limits.progress_interval = Duration::from_millis(n),
        other => {
            return Err(format!(
                "unknown limit {other:?}; known: {}",
                LIMIT_NAMES.join(", ")
            ))
        }
    }
    Ok(())
}

/// A root as given (relative to `base`), canonicalised and checked to be a directory.
pub fn resolve_root(base: &Path, root: &Path) -> Result<PathBuf, String> {
    let real = base
        .join(root)
        .canonicalize()
        .map_err(|e| format!("root {}: {e}", root.display()))?;
    if !real.is_dir() {
        return Err(format!("root {}: not a directory", root.display()));
    }
    Ok(real)
}

/// A database as given (relative to `base`), canonicalised and named by its stem;
/// `taken` are the names already used.
pub fn resolve_database(base: &Path, path: &Path, taken: &[Database]) -> Result<Database, String> {
    let real = base
        .join(path)
        .canonicalize()
        .map_err(|e| format!("database {}: {e}", path.display()))?;
    let name = real
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("database {}: the file name must be UTF-8", path.display()))?
        .to_string();
    if taken.iter().any(|d| d.name == name) {
        return Err(format!(
            "database {}: another database is already named {name:?} (names are file stems)",
            path.display()
        ));
    }
    Ok(Database { name, path: real })
}
