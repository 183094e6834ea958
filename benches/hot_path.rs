//! The request path piece by piece: HTTP head parsing, the file cache (the `stat`
//! a hit pays, then a whole hit), and the three hot tools on a real shard over a
//! 2,000-file corpus and a 100,000-row database; then `respond`, the whole path
//! from request bytes to response bytes without the socket.
//!
//! `cargo bench --bench hot_path` (builds its corpus in a temp dir first).
//! Then what compiling a search_code query costs (`pattern/`), and last, what
//! recording one call in the metrics costs (`metrics/record_call`).

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use glommio::LocalExecutor;
use serde_json::{json, Value};

use coremcp::shard::Shard;
use coremcp::tools::{CallContext, CancelFlag, Tool};
use coremcp::transport::http::{frame, route};

#[path = "fixture/mod.rs"]
mod fixture;

const META: &str = r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1.0"}}"#;

/// A stateless (2026-07-28) POST /mcp as a client sends it.
pub fn http_request(method: &str, tool: Option<(&str, Value)>) -> Vec<u8> {
    let meta: Value = serde_json::from_str(META).unwrap();
    let body = match &tool {
        Some((name, args)) => json!({"jsonrpc":"2.0","id":1,"method":method,
            "params":{"name":name,"arguments":args,"_meta":meta}}),
        None => json!({"jsonrpc":"2.0","id":1,"method":method,"params":{"_meta":meta}}),
    }
    .to_string();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:7411\r\nUser-Agent: bench\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: {method}\r\n"
    );
    if let Some((name, _)) = &tool {
        req.push_str(&format!("Mcp-Name: {name}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    req.into_bytes()
}

/// Times `iters` runs of an async routine on a fresh glommio executor (its set-up
/// is outside the timing), so code that awaits the reactor measures honestly.
fn on_executor<F, Fut>(iters: u64, mut routine: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    LocalExecutor::default().run(async {
        let start = Instant::now();
        for _ in 0..iters {
            routine().await;
        }
        start.elapsed()
    })
}

async fn call(shard: &Shard, name: &str, args: &Value) -> bool {
    let tool: &dyn Tool = shard.tools.get(name).unwrap();
    let cx = CallContext {
        shard,
        deadline: Instant::now() + Duration::from_secs(30),
        cancel: CancelFlag::default(),
        sink: None,
        progress: None,
    };
    let Value::Object(args) = args.clone() else {
        unreachable!()
    };
    tool.call(&cx, args).await.is_error
}

fn http(c: &mut Criterion) {
    let req = http_request(
        "tools/call",
        Some(("read_file", json!({"path":"small.txt"}))),
    );
    let mut g = c.benchmark_group("http");
    g.bench_function("parse_head", |b| {
        b.iter(|| black_box(frame::parse_head(black_box(&req), 64).unwrap().unwrap()))
    });
    g.finish();
}

fn storage_and_tools(c: &mut Criterion) {
    let corpus = fixture::corpus(true);
    let shard = shard_for(&corpus);
    let small = corpus.root.join("small.txt");

    let mut g = c.benchmark_group("file_cache");
    // Formerly the `#[ignore] stat_cost` pseudo-test: the stat every hit pays.
    g.bench_function("stat", |b| {
        b.iter(|| black_box(std::fs::metadata(black_box(&small)).unwrap()))
    });
    g.bench_function("hit_2kib", |b| {
        b.iter_custom(|iters| {
            on_executor(iters, || async {
                black_box(shard.storage.files.read(&small).await.unwrap());
            })
        })
    });
    g.finish();

    let read = json!({"path": "small.txt"});
    let lookup = json!({"sql": "SELECT id, sku, name, price, qty FROM items WHERE sku = ?1",
                        "params": [fixture::sku(4242)]});
    let search = json!({"query": "needle_marker", "path": "src"});
    // In no file: what a search costs when the trigram index rules out every file.
    let absent = json!({"query": "no_such_identifier", "path": "src"});
    // A regex: the index is fed its prefix literals.
    let regex = json!({"query": "needle_(marker|pin)", "regex": true, "path": "src"});
    // A regex with no finite prefix: only what every match ends with can narrow it.
    let suffix = json!({"query": r"\w+_marker", "regex": true, "path": "src"});
    // A case-insensitive literal runs through `regex::bytes` (Unicode folding).
    let fold = json!({"query": "needle_marker", "case_sensitive": false, "path": "src"});
    // The same shard with query_db's answer cache off: every call runs SQLite.
    let sqlite = fixture::shard_with(&corpus.root, Some(&corpus.db), |c| {
        c.tools.insert(
            "query_db".into(),
            coremcp::config::ToolConfig {
                cache: false,
                ..Default::default()
            },
        );
    });
    let mut g = c.benchmark_group("tool");
    for (name, tool, args, shard) in [
        ("read_file_small", "read_file", &read, &shard),
        ("query_db_point_lookup", "query_db", &lookup, &sqlite),
        ("query_db_answer_kept", "query_db", &lookup, &shard),
        ("search_code_2000_files", "search_code", &search, &shard),
        ("search_code_absent", "search_code", &absent, &shard),
        ("search_code_regex", "search_code", &regex, &shard),
        ("search_code_regex_suffix", "search_code", &suffix, &shard),
        ("search_code_ignore_case", "search_code", &fold, &shard),
    ] {
        assert!(
            !LocalExecutor::default().run(call(shard, tool, args)),
            "{name} fails"
        );
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                on_executor(iters, || async {
                    black_box(call(shard, tool, args).await);
                })
            })
        });
    }
    g.finish();

    // The whole path without the socket: head, routing, JSON-RPC, dispatch, the
    // tool, the response.
    let mut g = c.benchmark_group("respond");
    let cases = [
        (
            "read_file",
            http_request("tools/call", Some(("read_file", read.clone()))),
            &shard,
        ),
        // 1 MiB file: read_file answers its first 256 KiB (MAX_READ_BYTES).
        (
            "read_file_256k",
            http_request(
                "tools/call",
                Some(("read_file", json!({"path": "big.txt"}))),
            ),
            &shard,
        ),
        (
            "query_db",
            http_request("tools/call", Some(("query_db", lookup.clone()))),
            &sqlite,
        ),
        (
            "query_db_answer_kept",
            http_request("tools/call", Some(("query_db", lookup.clone()))),
            &shard,
        ),
        (
            "search_code",
            http_request("tools/call", Some(("search_code", search.clone()))),
            &shard,
        ),
        ("tools_list", http_request("tools/list", None), &shard),
    ];
    for (name, req, shard) in &cases {
        let head = frame::parse_head(req, 64).unwrap().unwrap();
        let body = &req[head.len..];
        let (mut out, mut skip) = (Vec::new(), 0);
        LocalExecutor::default().run(route::respond(
            shard, req, &head, body, true, &mut out, &mut skip,
        ));
        assert!(
            out[skip..].starts_with(b"HTTP/1.1 200"),
            "{name}: {}",
            String::from_utf8_lossy(&out)
        );
        assert!(!frame_contains(&out, b"\"isError\":true"), "{name} fails");
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                LocalExecutor::default().run(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let head = frame::parse_head(req, 64).unwrap().unwrap();
                        out.clear();
                        route::respond(
                            shard,
                            req,
                            &head,
                            &req[head.len..],
                            true,
                            &mut out,
                            &mut skip,
                        )
                        .await;
                        black_box(&out);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    drop(shard);
    drop(corpus);
}

fn frame_contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn shard_for(corpus: &fixture::Corpus) -> Shard {
    fixture::shard(&corpus.root, Some(&corpus.db))
}

/// Recording a call: a shard-local histogram bucket and counters, written with
/// plain Relaxed stores by their one writer.
fn metrics(c: &mut Criterion) {
    let m = coremcp::metrics::Metrics::new(vec!["read_file", "query_db"], 1, None);
    let shard = m.shard(0);
    let mut i = 0u64;
    c.bench_function("metrics/record_call", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            let took = Duration::from_nanos(black_box(i % 5_000_000));
            shard.call(black_box(1), took, coremcp::metrics::CallOutcome::Ok);
        })
    });
}

/// What compiling a search_code query costs: why a shard keeps them compiled
/// (`storage/patterns.rs`); the `tool/search_code_*` cases above reuse theirs.
fn patterns(c: &mut Criterion) {
    use coremcp::storage::patterns::Pattern;
    let mut g = c.benchmark_group("pattern");
    for (name, query, regex, case_sensitive) in [
        ("compile_literal", "needle_marker", false, true),
        ("compile_ignore_case", "needle_marker", false, false),
        ("compile_regex", "needle_(marker|pin)", true, true),
        ("compile_regex_class", r"\w+_marker", true, true),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(Pattern::compile(black_box(query), regex, case_sensitive).unwrap()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = http, storage_and_tools, patterns, metrics
}
criterion_main!(benches);
