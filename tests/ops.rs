//! Operating the server, against the real binary: /metrics after calls, /readyz,
//! a graceful SIGTERM with a call in flight, and a restart on the same port.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn scrape(s: &Server) -> (String, String) {
    let mut c = s.connect();
    let shard = c.request("GET", "/healthz", &[], b"").text();
    let r = c.request("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    (shard, r.text())
}

fn call(s: &Server, id: u64, name: &str, arguments: Value) -> Value {
    let r = s.connect().post(
        &stateless_headers("tools/call", Some(name)),
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"_meta": meta(), "name": name, "arguments": arguments}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["result"].clone()
}

#[test]
fn a_scrape_on_any_shard_counts_the_whole_process() {
    let tmp = temp_dir("ops-metrics");
    let dir = tmp.path();
    write(dir, "a.txt", b"alpha\n");
    let s = Server::start(&["--shards", "2", "--root", dir.to_str().unwrap()]);
    // Fresh connections, so the calls spread over both shards.
    for id in 0..3 {
        let r = call(&s, id, "list_directory", json!({"path": "."}));
        assert_eq!(r["isError"], false);
    }
    let r = call(&s, 10, "read_file", json!({"path": "missing.txt"}));
    assert_eq!(r["isError"], true);
    call(&s, 11, "read_file", json!({"path": "a.txt"}));
    // The same query twice: compiled once per shard that serves it.
    for id in 12..14 {
        let r = call(&s, id, "search_code", json!({"query": "alpha"}));
        assert_eq!(r["structuredContent"]["matches"][0]["line"], 1);
    }
    let (_c, _sid) = s.session("2025-11-25");
    let mut bad = s.connect();
    assert_eq!(bad.request("GET", "/nowhere", &[], b"").status, 404);

    let mut seen = std::collections::BTreeSet::new();
    let mut tries = 0;
    while seen.len() < 2 {
        tries += 1;
        assert!(tries < 200, "200 scrapes all landed on one shard");
        let (shard, text) = scrape(&s);
        if !seen.insert(shard.clone()) {
            continue;
        }
        let at = |series: &str| sample(&text, series);
        assert_eq!(
            at(r#"mcp_tool_calls_total{tool="list_directory",outcome="ok"}"#),
            3.0,
            "{shard}"
        );
        assert_eq!(
            at(r#"mcp_tool_calls_total{tool="read_file",outcome="error"}"#),
            1.0
        );
        assert_eq!(
            at(r#"mcp_tool_calls_total{tool="read_file",outcome="ok"}"#),
            1.0
        );
        assert_eq!(
            at(r#"mcp_tool_latency_seconds_count{tool="list_directory"}"#),
            3.0
        );
        assert_eq!(
            at(r#"mcp_tool_latency_seconds_bucket{tool="list_directory",le="+Inf"}"#),
            3.0
        );
        // Buckets run from 25 µs to 10 s.
        at(r#"mcp_tool_latency_seconds_bucket{tool="list_directory",le="0.000025"}"#);
        at(r#"mcp_tool_latency_seconds_bucket{tool="list_directory",le="10"}"#);
        assert_eq!(at(r#"mcp_requests_total{method="tools/call"}"#), 7.0);
        assert_eq!(at(r#"mcp_requests_total{method="initialize"}"#), 1.0);
        assert_eq!(
            at(r#"mcp_requests_total{method="notifications/initialized"}"#),
            1.0
        );
        assert_eq!(at(r#"mcp_http_responses_total{status="404"}"#), 1.0);
        assert!(at(r#"mcp_http_responses_total{status="200"}"#) >= 8.0);
        assert!(at(r#"mcp_cache_misses_total{cache="file"}"#) >= 1.0);
        at(r#"mcp_cache_hits_total{cache="tree"}"#);
        at(r#"mcp_cache_evictions_total{cache="file"}"#);
        at(r#"mcp_cache_bytes{cache="file"}"#);
        for series in [
            "hits_total",
            "misses_total",
            "evictions_total",
            "bytes",
            "entries",
        ] {
            at(&format!("mcp_cache_{series}{{cache=\"query\"}}"));
        }
        let compiled = at(r#"mcp_cache_misses_total{cache="pattern"}"#);
        assert!(compiled >= 1.0);
        assert_eq!(
            compiled + at(r#"mcp_cache_hits_total{cache="pattern"}"#),
            2.0
        );
        assert_eq!(at(r#"mcp_cache_entries{cache="pattern"}"#), compiled);
        assert_eq!(at(r#"mcp_cache_evictions_total{cache="pattern"}"#), 0.0);
        assert_eq!(at("mcp_sessions"), 1.0);
        assert_eq!(at("mcp_inflight_calls"), 0.0);
        // The session's connection and this scrape's are open at least.
        assert!(at("mcp_open_connections") >= 2.0);
        assert_eq!(at("mcp_shards_serving"), 2.0);
    }

    let r = s.connect().request("GET", "/readyz", &[], b"");
    assert_eq!(
        (r.status, r.text()),
        (200, "ready shards=2/2\n".to_string())
    );
}

#[test]
fn sigterm_lets_the_call_in_flight_finish_then_exits_0() {
    let tmp = temp_dir("ops-sigterm");
    let dir = tmp.path();
    let db = dir.join("slow.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);")
            .unwrap();
    }
    let mut s = Server::start(&[
        "--shards",
        "2",
        "--root",
        dir.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--shutdown-timeout-ms",
        "60000",
    ]);
    // A writer holds the database: the query waits for it (off the shard), so it
    // stays in flight exactly until this test lets go.
    let writer = rusqlite::Connection::open(&db).unwrap();
    writer.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let mut c = s.connect();
    let body = serde_json::to_vec(
        &json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
        "_meta": meta(), "name": "query_db", "arguments": {"sql": "SELECT sum(x) FROM t"}}}),
    )
    .unwrap();
    c.send_raw(&post_bytes(
        &stateless_headers("tools/call", Some("query_db")),
        &body,
    ));

    let started = Instant::now();
    loop {
        let (_, text) = scrape(&s);
        if sample(&text, "mcp_inflight_calls") == 1.0 {
            break;
        }
        assert!(
            started.elapsed() < IO_TIMEOUT,
            "the call never showed as in flight"
        );
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) }, 0);
    writer.execute_batch("COMMIT").unwrap();

    let r = c.read_response();
    assert_eq!(r.status, 200);
    let result = &r.json()["result"];
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["structuredContent"]["rows"], json!([[6]]));
    // The server closes the connection once the answer is out, then exits.
    assert!(c.closed());

    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < IO_TIMEOUT, "the server did not exit");
        std::thread::yield_now();
    };
    assert_eq!(status.code(), Some(0), "{status}");
}

/// A server that has exited leaves its port free at once: connecting is refused
/// and a new server can listen there. The accepts waiting in each shard's
/// io_uring hold the listening sockets past the process's exit unless they are
/// shut down first, and the port's check at start-up would then refuse the
/// restart (another process "already listens there").
#[test]
fn the_port_is_free_as_soon_as_the_server_exits() {
    let tmp = temp_dir("ops-restart");
    let root = tmp.path().to_str().unwrap();
    let mut s = Server::start(&["--shards", "2", "--root", root]);
    let addr = s.addr;
    // A few requests first, as a server stopped in use would have served.
    for _ in 0..4 {
        let r = s.connect().request("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 200);
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) }, 0);
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");

    let refused = std::net::TcpStream::connect(addr).map(|_| ()).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    let mut again = std::process::Command::new(bin());
    again.args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--shards",
        "2",
        "--root",
        root,
    ]);
    let mut s2 = Server::spawn(again);
    assert_eq!(s2.addr, addr);
    let r = s2.connect().request("GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
    assert!(s2.alive());
}
