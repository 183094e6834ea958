//! Process metrics in the Prometheus text format (`GET /metrics`).
//!
//! # Recording costs one uncontended store
//!
//! Each shard owns one [`ShardMetrics`] block, cache-line aligned so no two shards'
//! counters share a line. Only the owning shard's thread ever writes its block, so
//! a counter is bumped with a `Relaxed` load and a `Relaxed` store — two plain
//! `mov`s on x86, no `lock` prefix, no read-modify-write, no line bouncing between
//! cores. Nothing on the request path takes a lock or touches another shard's
//! memory.
//!
//! # Scrapes read every block
//!
//! Whichever shard answers `GET /metrics` reads all the blocks with `Relaxed`
//! loads and sums them, so every scrape reports the whole process. That is the
//! only time a line moves between cores, once per counter per scrape. The
//! alternative — per-shard `Cell`s gathered by messaging every shard at scrape
//! time — would need a cross-shard round trip per scrape, and a scrape would then
//! wait on the busiest shard; atomics read in place answer at once. Counters read
//! while being written may be a few events apart from each other (a histogram's
//! count is taken from its own buckets, so it is always self-consistent), which
//! Prometheus tolerates: every counter is individually monotonic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::session::SessionTable;

/// Upper bounds of the latency buckets, in seconds: 25 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// How a tool call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// The tool answered with `isError` (bad arguments, missing file, refused query).
    Error,
    Timeout,
    Cancelled,
    /// The tool panicked; the client got -32603.
    Panicked,
}

const OUTCOMES: [&str; 5] = ["ok", "error", "timeout", "cancelled", "panicked"];

impl CallOutcome {
    /// The `outcome` label, as metrics and the direct API name it.
    pub fn name(self) -> &'static str {
        OUTCOMES[self as usize]
    }
}

/// JSON-RPC methods counted by name; anything else is `other`.
pub const METHODS: [&str; 8] = [
    "initialize",
    "notifications/initialized",
    "notifications/cancelled",
    "ping",
    "tools/list",
    "tools/call",
    "server/discover",
    "other",
];

/// HTTP statuses counted by code; anything else is `other`.
pub const STATUSES: [u16; 16] = [
    200, 202, 400, 403, 404, 405, 406, 408, 413, 415, 421, 422, 431, 500, 503, 504,
];

/// A counter or gauge written by one thread only (see the module doc).
#[derive(Default, Debug)]
pub struct Owned(AtomicU64);

impl Owned {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[repr(align(128))]
#[derive(Default)]
struct ToolStats {
    buckets: [Owned; BUCKETS],
    sum_ns: Owned,
    calls: [Owned; OUTCOMES.len()],
}

/// One shard's counters; written only by that shard.
#[repr(align(128))]
pub struct ShardMetrics {
    tools: Box<[ToolStats]>,
    methods: [Owned; METHODS.len()],
    statuses: [Owned; STATUSES.len() + 1],
    pub inflight: Owned,
    pub connections: Owned,
    pub file_hits: Owned,
    pub file_misses: Owned,
    pub file_evictions: Owned,
    pub file_bytes: Owned,
    pub tree_hits: Owned,
    pub tree_misses: Owned,
    pub tree_evictions: Owned,
    pub tree_entries: Owned,
    pub query_hits: Owned,
    pub query_misses: Owned,
    pub query_evictions: Owned,
    pub query_entries: Owned,
    pub query_bytes: Owned,
    pub pattern_hits: Owned,
    pub pattern_misses: Owned,
    pub pattern_evictions: Owned,
    pub pattern_entries: Owned,
    /// The shard's accept loop is running and not draining.
    pub serving: AtomicBool,
}

impl ShardMetrics {
    fn new(tools: usize) -> ShardMetrics {
        ShardMetrics {
            tools: (0..tools).map(|_| ToolStats::default()).collect(),
            methods: Default::default(),
            statuses: Default::default(),
            inflight: Owned::default(),
            connections: Owned::default(),
            file_hits: Owned::default(),
            file_misses: Owned::default(),
            file_evictions: Owned::default(),
            file_bytes: Owned::default(),
            tree_hits: Owned::default(),
            tree_misses: Owned::default(),
            tree_evictions: Owned::default(),
            tree_entries: Owned::default(),
            query_hits: Owned::default(),
            query_misses: Owned::default(),
            query_evictions: Owned::default(),
            query_entries: Owned::default(),
            query_bytes: Owned::default(),
            pattern_hits: Owned::default(),
            pattern_misses: Owned::default(),
            pattern_evictions: Owned::default(),
            pattern_entries: Owned::default(),
            serving: AtomicBool::new(false),
        }
    }

    /// Records one finished call of the `tool`-th tool.
    pub fn call(&self, tool: usize, took: Duration, outcome: CallOutcome) {
        let Some(t) = self.tools.get(tool) else {
            return;
        };
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        t.buckets[bucket].add(1);
        t.sum_ns
            .add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        t.calls[outcome as usize].add(1);
    }

    /// Counts one JSON-RPC request or notification by method.
    pub fn method(&self, method: &str) {
        let i = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1);
        self.methods[i].add(1);
    }

    /// Counts one HTTP response by status.
    pub fn status(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.statuses[i].add(1);
    }

    /// Copies the shard's cache statistics (kept by storage) into the block.
    pub fn caches(&self, storage: &crate::storage::Storage) {
        let f = storage.files.stats();
        self.file_hits.set(f.hits);
        self.file_misses.set(f.misses);
        self.file_evictions.set(f.evictions);
        self.file_bytes.set(storage.files.bytes() as u64);
        let t = storage.trees.stats();
        self.tree_hits.set(t.reused);
        self.tree_misses.set(t.walked);
        self.tree_evictions.set(t.evictions);
        self.tree_entries.set(storage.trees.len() as u64);
        let q = &storage.dbs.results;
        let qs = q.stats();
        self.query_hits.set(qs.hits);
        self.query_misses.set(qs.misses);
        self.query_evictions.set(qs.evictions);
        self.query_entries.set(q.len() as u64);
        self.query_bytes.set(q.bytes() as u64);
        let p = storage.patterns.stats();
        self.pattern_hits.set(p.hits);
        self.pattern_misses.set(p.misses);
        self.pattern_evictions.set(p.evictions);
        self.pattern_entries.set(storage.patterns.len() as u64);
    }
}

/// Every shard's block, and what the process reports beside them.
pub struct Metrics {
    tool_names: Vec<&'static str>,
    shards: Box<[ShardMetrics]>,
    sessions: Option<Arc<SessionTable>>,
    /// SIGTERM/SIGINT arrived: the process is draining.
    pub draining: AtomicBool,
}

impl Metrics {
    pub fn new(
        tool_names: Vec<&'static str>,
        shards: usize,
        sessions: Option<Arc<SessionTable>>,
    ) -> Metrics {
        Metrics {
            shards: (0..shards.max(1))
                .map(|_| ShardMetrics::new(tool_names.len()))
                .collect(),
            tool_names,
            sessions,
            draining: AtomicBool::new(false),
        }
    }

    /// The block shard `id` writes.
    pub fn shard(&self, id: usize) -> &ShardMetrics {
        &self.shards[id]
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Shards accepting connections now.
    pub fn serving(&self) -> usize {
        self.shards
            .iter()
            .filter(|s| s.serving.load(Ordering::Acquire))
            .count()
    }

    /// Calls running across the process.
    pub fn inflight(&self) -> u64 {
        self.shards.iter().map(|s| s.inflight.get()).sum()
    }

    /// The whole process in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let sum = |f: &dyn Fn(&ShardMetrics) -> u64| -> u64 { self.shards.iter().map(f).sum() };

        header(
            &mut out,
            "mcp_tool_latency_seconds",
            "histogram",
            "Tool call latency, from dispatch to result.",
        );
        for (i, name) in self.tool_names.iter().enumerate() {
            let mut cumulative = 0;
            for b in 0..BUCKETS {
                cumulative += sum(&|s| s.tools[i].buckets[b].get());
                let le = match LATENCY_BUCKETS.get(b) {
                    Some(v) => v.to_string(),
                    None => "+Inf".to_string(),
                };
                let _ = writeln!(
                    out,
                    "mcp_tool_latency_seconds_bucket{{tool=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let secs = sum(&|s| s.tools[i].sum_ns.get()) as f64 / 1e9;
            let _ = writeln!(
                out,
                "mcp_tool_latency_seconds_sum{{tool=\"{name}\"}} {secs}"
            );
            let _ = writeln!(
                out,
                "mcp_tool_latency_seconds_count{{tool=\"{name}\"}} {cumulative}"
            );
        }

        header(
            &mut out,
            "mcp_tool_calls_total",
            "counter",
            "Tool calls by tool and outcome (ok, error, timeout, cancelled, panicked).",
        );
        for (i, name) in self.tool_names.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let n = sum(&|s| s.tools[i].calls[o].get());
                let _ = writeln!(
                    out,
                    "mcp_tool_calls_total{{tool=\"{name}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }

        header(
            &mut out,
            "mcp_requests_total",
            "counter",
            "JSON-RPC requests and notifications by method.",
        );
        for (i, m) in METHODS.iter().enumerate() {
            let n = sum(&|s| s.methods[i].get());
            let _ = writeln!(out, "mcp_requests_total{{method=\"{m}\"}} {n}");
        }

        header(
            &mut out,
            "mcp_http_responses_total",
            "counter",
            "HTTP responses by status.",
        );
        for i in 0..=STATUSES.len() {
            let n = sum(&|s| s.statuses[i].get());
            match STATUSES.get(i) {
                Some(code) => {
                    let _ = writeln!(out, "mcp_http_responses_total{{status=\"{code}\"}} {n}");
                }
                None => {
                    let _ = writeln!(out, "mcp_http_responses_total{{status=\"other\"}} {n}");
                }
            }
        }

        type Read = fn(&ShardMetrics) -> u64;
        let caches: [(&str, &str, [Read; 4]); 3] = [
            (
                "mcp_cache_hits_total",
                "Cache hits (file: contents served from memory; tree: a walk reused; query: a query_db answer reused; pattern: a compiled search_code query reused).",
                [|s| s.file_hits.get(), |s| s.tree_hits.get(), |s| s.query_hits.get(), |s| s.pattern_hits.get()],
            ),
            (
                "mcp_cache_misses_total",
                "Cache misses (file: contents read; tree: a directory walked; query: a cacheable query run; pattern: a search_code query compiled).",
                [|s| s.file_misses.get(), |s| s.tree_misses.get(), |s| s.query_misses.get(), |s| s.pattern_misses.get()],
            ),
            (
                "mcp_cache_evictions_total",
                "Cache entries evicted to make room.",
                [|s| s.file_evictions.get(), |s| s.tree_evictions.get(), |s| s.query_evictions.get(), |s| s.pattern_evictions.get()],
            ),
        ];
        for (name, help, reads) in caches {
            header(&mut out, name, "counter", help);
            for (cache, read) in ["file", "tree", "query", "pattern"].into_iter().zip(reads) {
                let _ = writeln!(out, "{name}{{cache=\"{cache}\"}} {}", sum(&read));
            }
        }
        header(
            &mut out,
            "mcp_cache_bytes",
            "gauge",
            "Bytes held by the file cache and the query answer cache.",
        );
        let _ = writeln!(
            out,
            "mcp_cache_bytes{{cache=\"file\"}} {}",
            sum(&|s| s.file_bytes.get())
        );
        let _ = writeln!(
            out,
            "mcp_cache_bytes{{cache=\"query\"}} {}",
            sum(&|s| s.query_bytes.get())
        );
        header(
            &mut out,
            "mcp_cache_entries",
            "gauge",
            "Walks held by the tree cache; answers held by the query cache; compiled queries held by the pattern cache.",
        );
        let _ = writeln!(
            out,
            "mcp_cache_entries{{cache=\"tree\"}} {}",
            sum(&|s| s.tree_entries.get())
        );
        let _ = writeln!(
            out,
            "mcp_cache_entries{{cache=\"query\"}} {}",
            sum(&|s| s.query_entries.get())
        );
        let _ = writeln!(
            out,
            "mcp_cache_entries{{cache=\"pattern\"}} {}",
            sum(&|s| s.pattern_entries.get())
        );

        header(
            &mut out,
            "mcp_inflight_calls",
            "gauge",
            "Tool calls running now.",
        );
        let _ = writeln!(out, "mcp_inflight_calls {}", self.inflight());
        header(
            &mut out,
            "mcp_open_connections",
            "gauge",
            "Open HTTP connections.",
        );
        let _ = writeln!(
            out,
            "mcp_open_connections {}",
            sum(&|s| s.connections.get())
        );
        header(
            &mut out,
            "mcp_sessions",
            "gauge",
            "Live handshake-era sessions.",
        );
        let sessions = self.sessions.as_ref().map_or(0, |t| t.live());
        let _ = writeln!(out, "mcp_sessions {sessions}");
        header(&mut out, "mcp_shards", "gauge", "Shards configured.");
        let _ = writeln!(out, "mcp_shards {}", self.shards.len());
        header(
            &mut out,
            "mcp_shards_serving",
            "gauge",
            "Shards accepting connections.",
        );
        let _ = writeln!(out, "mcp_shards_serving {}", self.serving());
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_sum_over_shards() {
        let m = Metrics::new(vec!["a", "b"], 2, None);
        m.shard(0)
            .call(0, Duration::from_micros(10), CallOutcome::Ok);
        m.shard(1)
            .call(0, Duration::from_millis(3), CallOutcome::Error);
        m.shard(1)
            .call(0, Duration::from_secs(60), CallOutcome::Timeout);
        m.shard(0).method("tools/call");
        m.shard(1).method("weird/thing");
        m.shard(0).status(200);
        m.shard(1).status(299);
        let text = m.render();
        for line in [
            "mcp_tool_latency_seconds_bucket{tool=\"a\",le=\"0.000025\"} 1",
            "mcp_tool_latency_seconds_bucket{tool=\"a\",le=\"0.0025\"} 1",
            "mcp_tool_latency_seconds_bucket{tool=\"a\",le=\"0.005\"} 2",
            "mcp_tool_latency_seconds_bucket{tool=\"a\",le=\"10\"} 2",
            "mcp_tool_latency_seconds_bucket{tool=\"a\",le=\"+Inf\"} 3",
            "mcp_tool_latency_seconds_count{tool=\"a\"} 3",
            "mcp_tool_latency_seconds_count{tool=\"b\"} 0",
            "mcp_tool_calls_total{tool=\"a\",outcome=\"ok\"} 1",
            "mcp_tool_calls_total{tool=\"a\",outcome=\"timeout\"} 1",
            "mcp_requests_total{method=\"tools/call\"} 1",
            "mcp_requests_total{method=\"other\"} 1",
            "mcp_http_responses_total{status=\"200\"} 1",
            "mcp_http_responses_total{status=\"other\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
