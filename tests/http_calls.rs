//! Tool calls over HTTP against the real binary: pagination, deadlines, cancellation
//! (on the call's shard and from another shard), and what must not stall a shard.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Counts forever; only a deadline or a cancellation ends it.
const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

fn fixture(name: &str) -> (tempfile::TempDir, String) {
    let tmp = temp_dir(name);
    let dir = tmp.path();
    write(dir, "a.txt", b"alpha\n");
    let db = dir.join("data.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'one'), (2, 'two');")
        .unwrap();
    drop(conn);
    let db = db.to_string_lossy().into_owned();
    (tmp, db)
}

fn call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

/// True when the server has sent something on `c` that has not been read yet.
fn has_data(c: &Conn) -> bool {
    c.stream.set_nonblocking(true).unwrap();
    let r = c.stream.peek(&mut [0u8; 1]);
    c.stream.set_nonblocking(false).unwrap();
    matches!(r, Ok(n) if n > 0)
}

#[test]
fn tools_list_is_ordered_and_paginated() {
    let (tmp, _) = fixture("pages");
    let dir = tmp.path();
    let s = Server::start(&[
        "--shards",
        "1",
        "--root",
        dir.to_str().unwrap(),
        "--limit",
        "tools_page_size=4",
    ]);
    let (mut c, sid) = s.session("2025-11-25");
    let h = [("mcp-session-id", sid.as_str())];
    let first = c
        .post(&h, &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .json();
    let page1: Vec<String> = first["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        page1,
        [
            "read_file",
            "read_multiple_files",
            "list_directory",
            "search_code"
        ]
    );
    let cursor = first["result"]["nextCursor"].as_str().unwrap().to_string();
    let second = c
        .post(
            &h,
            &json!({"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":cursor}}),
        )
        .json();
    let page2: Vec<&str> = second["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(page2, ["query_db", "db_schema"]);
    assert!(second["result"].get("nextCursor").is_none());
    // Every tool says what it does and how to call it.
    for t in first["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["result"]["tools"].as_array().unwrap())
    {
        assert_eq!(t["inputSchema"]["type"], "object");
        assert_eq!(t["annotations"]["readOnlyHint"], true);
        assert!(t["description"].as_str().unwrap().len() > 20);
    }
    let bad = c
        .post(
            &h,
            &json!({"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"cursor":"bogus"}}),
        )
        .json();
    assert_eq!(bad["error"]["code"], -32602);
}

#[test]
fn tool_errors_are_results_and_protocol_errors_are_errors() {
    let (tmp, db) = fixture("errors");
    let dir = tmp.path();
    let s = Server::start(&[
        "--shards",
        "1",
        "--root",
        dir.to_str().unwrap(),
        "--db",
        &db,
    ]);
    let (mut c, sid) = s.session("2025-11-25");
    let h = [("mcp-session-id", sid.as_str())];
    let r = c
        .post(&h, &call(1, "read_file", json!({"path":"a.txt"})))
        .json();
    assert_eq!(r["result"]["isError"], false);
    assert_eq!(r["result"]["content"][0]["text"], "alpha\n");
    // Bad arguments: a result the model can read.
    let r = c.post(&h, &call(2, "read_file", json!({"path": 7}))).json();
    assert_eq!(r["result"]["isError"], true);
    assert!(r["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("path"));
    // Unknown tool and malformed arguments: JSON-RPC errors.
    let r = c.post(&h, &call(3, "no_such_tool", json!({}))).json();
    assert_eq!(r["error"]["code"], -32602);
    let r = c.post(&h, &json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"read_file","arguments":[1]}})).json();
    assert_eq!(r["error"]["code"], -32602);
    let r = c
        .post(
            &h,
            &call(
                5,
                "query_db",
                json!({"sql":"SELECT v FROM t WHERE id = ?", "params":[2]}),
            ),
        )
        .json();
    assert_eq!(r["result"]["isError"], false, "{r}");
}

#[test]
fn a_call_past_its_deadline_ends_and_the_shard_keeps_serving_meanwhile() {
    deadline_and_fast_calls("deadline", &[], 1);
}

/// With the epoll pump spinning between requests (`--poll-spin-us`, at its
/// largest), timers still fire, other queues still run and every connection is
/// still served: the spin yields instead of holding the shard.
#[test]
fn a_spinning_pump_still_lets_deadlines_fire_and_connections_run() {
    let max = coremcp::config::MAX_POLL_SPIN_US.to_string();
    deadline_and_fast_calls("deadline-spin", &["--poll-spin-us", &max], 20);
}

/// With the pump waiting in the kernel between requests (`--poll-wait-us`, at
/// its largest), a call that runs on another thread is still answered at its
/// deadline and the shard still serves a second connection meanwhile: the pump
/// does not sleep while a task waits on glommio for something else.
#[test]
fn a_pump_waiting_in_the_kernel_still_answers_offloaded_calls() {
    let max = coremcp::config::MAX_POLL_WAIT_US.to_string();
    deadline_and_fast_calls("deadline-wait", &["--poll-wait-us", &max], 20);
}

/// With the pump waiting in the kernel after every request, a timer still
/// fires while another client keeps the shard busy with requests: the slow
/// client's header deadline passes and it is answered 408.
#[test]
fn a_pump_waiting_in_the_kernel_still_fires_timers_under_requests() {
    let max = coremcp::config::MAX_POLL_WAIT_US.to_string();
    let s = Server::start(&[
        "--shards",
        "1",
        "--poll-wait-us",
        &max,
        "--limit",
        "header_timeout=300",
    ]);
    let mut slow = s.connect();
    slow.send_raw(b"POST /mcp HTTP/1.1\r\nhost: localhost\r\n");
    let mut fast = s.connect();
    let mut served = 0u64;
    // Bounded: at well under a millisecond per request this is minutes.
    while !has_data(&slow) {
        assert_eq!(fast.request("GET", "/healthz", &[], b"").status, 200);
        served += 1;
        assert!(served < 1_000_000, "the header deadline never fired");
    }
    assert_eq!(slow.read_response().status, 408);
    assert!(slow.closed());
}

/// An endless query with a 1.5 s deadline on one connection, and `fast` quick
/// calls meanwhile, one after another, on a second connection of the same shard.
fn deadline_and_fast_calls(name: &str, extra: &[&str], fast_calls: u64) {
    let (tmp, db) = fixture(name);
    let dir = tmp.path();
    let mut args = vec![
        "--shards",
        "1",
        "--root",
        dir.to_str().unwrap(),
        "--db",
        &db,
        "--timeout-ms",
        "1500",
    ];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    let (mut slow, sid) = s.session("2025-11-25");
    let h = [("mcp-session-id", sid.as_str())];
    slow.send_raw(&post_bytes(
        &h,
        &serde_json::to_vec(&call(1, "query_db", json!({"sql": ENDLESS}))).unwrap(),
    ));
    // While the endless query runs, the same shard answers fast calls.
    let mut fast = s.connect();
    for id in 2..2 + fast_calls {
        let r = fast
            .post(
                &h,
                &call(
                    id,
                    "query_db",
                    json!({"sql":"SELECT v FROM t WHERE id = 1"}),
                ),
            )
            .json();
        assert_eq!(r["result"]["isError"], false, "{r}");
        assert_eq!(r["result"]["structuredContent"]["rows"][0][0], "one", "{r}");
    }
    assert!(!has_data(&slow), "the fast calls were answered first");
    let r = slow.read_response().json();
    assert_eq!(r["result"]["isError"], true);
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("timed out after 1500 ms"),
        "{r}"
    );
}

/// Sends `notifications/cancelled` from `canceller` until `victim` has an answer,
/// because the cancel may arrive before the call is registered; returns the answer.
fn cancel_until_answered(victim: &mut Conn, canceller: &mut Conn, sid: &str, id: u64) -> Value {
    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId": id, "reason":"test"}});
    for _ in 0..1000 {
        let r = canceller.post(&[("mcp-session-id", sid)], &cancel);
        assert_eq!(r.status, 202);
        victim
            .stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let ready = victim
            .stream
            .peek(&mut [0u8; 1])
            .map(|n| n > 0)
            .unwrap_or(false);
        victim.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        if ready {
            return victim.read_response().json();
        }
    }
    panic!("the call was never cancelled");
}

#[test]
fn cancellation_stops_a_call_on_its_own_shard() {
    let (tmp, db) = fixture("cancel1");
    let dir = tmp.path();
    let s = Server::start(&[
        "--shards",
        "1",
        "--root",
        dir.to_str().unwrap(),
        "--db",
        &db,
        "--timeout-ms",
        "120000",
    ]);
    let (mut victim, sid) = s.session("2025-11-25");
    victim.send_raw(&post_bytes(
        &[("mcp-session-id", &sid)],
        &serde_json::to_vec(&call(41, "query_db", json!({"sql": ENDLESS}))).unwrap(),
    ));
    let mut canceller = s.connect();
    let r = cancel_until_answered(&mut victim, &mut canceller, &sid, 41);
    assert_eq!(r["id"], 41);
    assert_eq!(r["result"]["isError"], true);
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{r}"
    );
    // The connection and the shard go on.
    let r = victim.post(
        &[("mcp-session-id", &sid)],
        &json!({"jsonrpc":"2.0","id":42,"method":"ping"}),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn cancellation_reaches_a_call_on_another_shard() {
    let (tmp, db) = fixture("cancel2");
    let dir = tmp.path();
    let s = Server::start(&[
        "--shards",
        "2",
        "--root",
        dir.to_str().unwrap(),
        "--db",
        &db,
        "--timeout-ms",
        "120000",
    ]);
    let (mut victim, sid) = s.session("2025-11-25");
    let victim_shard = victim.request("GET", "/healthz", &[], b"").text();
    let mut canceller = (0..200)
        .map(|_| s.connect())
        .find_map(|mut c| {
            (c.request("GET", "/healthz", &[], b"").text() != victim_shard).then_some(c)
        })
        .expect("a connection on the other shard");
    victim.send_raw(&post_bytes(
        &[("mcp-session-id", &sid)],
        &serde_json::to_vec(&call(7, "query_db", json!({"sql": ENDLESS}))).unwrap(),
    ));
    let r = cancel_until_answered(&mut victim, &mut canceller, &sid, 7);
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{r}"
    );
}

#[test]
fn idle_sessions_expire_and_free_their_place() {
    let s = Server::start(&[
        "--shards",
        "1",
        "--limit",
        "max_sessions=1",
        "--limit",
        "session_idle=1",
    ]);
    let (mut c, sid) = s.session("2025-11-25");
    // The one place is taken until the session has been idle past its limit;
    // asking for another session does not touch the first, so ask until it is freed.
    let mut freed = false;
    for _ in 0..200 {
        if c.post(&[], &initialize("2025-11-25")).status == 200 {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(freed, "the idle session was never expired");
    let r = c.post(
        &[("mcp-session-id", &sid)],
        &json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
    );
    assert_eq!(r.status, 404);
}

#[test]
fn idle_connections_are_closed() {
    let s = Server::start(&["--shards", "1", "--limit", "idle_timeout=200"]);
    let mut c = s.connect();
    assert_eq!(c.request("GET", "/healthz", &[], b"").status, 200);
    // The server closes the quiet connection on its own: the read sees EOF.
    let mut buf = [0u8; 1];
    assert_eq!(c.stream.read(&mut buf).unwrap(), 0);
}

#[test]
fn hanging_up_cancels_the_call() {
    let (tmp, db) = fixture("hangup");
    let dir = tmp.path();
    let s = Server::start(&[
        "--shards",
        "1",
        "--root",
        dir.to_str().unwrap(),
        "--db",
        &db,
        "--timeout-ms",
        "120000",
    ]);
    let body = |id: u64, sql: &str| {
        let mut m = call(id, "query_db", json!({"sql": sql}));
        m["params"]["_meta"] = meta();
        serde_json::to_vec(&m).unwrap()
    };
    let headers = stateless_headers("tools/call", Some("query_db"));
    // More endless queries than the shard has blocking threads, each abandoned by
    // its client. Closing the connection is how a 2026-07-28 client cancels.
    for id in 0..2 * coremcp::server::BLOCKING_THREADS_PER_SHARD as u64 {
        let mut c = s.connect();
        c.send_raw(&post_bytes(&headers, &body(id, ENDLESS)));
        drop(c);
    }
    // A query that needs the blocking pool still gets a thread: the abandoned ones
    // were stopped, not left to run for two minutes.
    let long_but_finite = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) AS n FROM c";
    let mut c = s.connect();
    c.send_raw(&post_bytes(&headers, &body(99, long_but_finite)));
    let r = c.read_response().json();
    assert_eq!(r["result"]["isError"], false, "{r}");
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("300000"),
        "{r}"
    );
}

/// The JSON messages of an SSE body, in order.
fn sse_messages(body: &[u8]) -> Vec<Value> {
    String::from_utf8(body.to_vec())
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("a data line");
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

#[test]
fn progress_arrives_as_sse_before_the_answer() {
    let tmp = temp_dir("progress");
    let dir = tmp.path();
    for i in 0..300 {
        write(
            dir,
            &format!("src/m{i}/f{i}.rs"),
            format!("fn f{i}() {{ needle_{i}(); }}\n").as_bytes(),
        );
    }
    let s = Server::start(&[
        "--shards",
        "1",
        "--root",
        dir.to_str().unwrap(),
        "--limit",
        "progress_interval=1",
    ]);
    let (mut c, sid) = s.session("2025-11-25");
    let h = [("mcp-session-id", sid.as_str())];
    let mut req = call(
        5,
        "search_code",
        json!({"query": "needle_", "max_results": 1000}),
    );
    req["params"]["_meta"] = json!({"progressToken": "tok-1"});
    let r = c.post(&h, &req);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let msgs = sse_messages(&r.body);
    let (answer, notes) = msgs.split_last().unwrap();
    assert_eq!(answer["id"], 5);
    assert_eq!(
        answer["result"]["structuredContent"]["matches"]
            .as_array()
            .unwrap()
            .len(),
        300
    );
    assert!(!notes.is_empty(), "at least the final progress");
    let mut last = 0;
    for n in notes {
        assert_eq!(n["method"], "notifications/progress");
        assert_eq!(n["params"]["progressToken"], "tok-1");
        let p = n["params"]["progress"].as_u64().unwrap();
        assert!(p > last, "progress increases");
        last = p;
    }
    assert_eq!(
        Some(last),
        notes.last().unwrap()["params"]["total"].as_u64(),
        "ends at the total"
    );
    // The connection is still good for the next request.
    let r = c.post(&h, &json!({"jsonrpc":"2.0","id":6,"method":"ping"}));
    assert_eq!(r.status, 200);
    // A client that takes only JSON gets a plain answer, without progress.
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("mcp-session-id", &sid),
        ],
        &serde_json::to_vec(&req).unwrap(),
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["id"], 5);
}
