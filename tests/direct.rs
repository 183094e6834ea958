//! The direct API (`/v1/tools/{name}`, `/v1/batch`, NDJSON streaming) against the
//! real binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use common::*;
use serde_json::{json, Value};

fn post(s: &Server, path: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let body = serde_json::to_vec(body).unwrap();
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    s.connect().request("POST", path, &h, &body)
}

#[test]
fn one_call_answers_plain_json_with_mcp_rules() {
    let tmp = temp_dir("direct-json");
    let dir = tmp.path();
    write(dir, "a.txt", b"alpha\n");
    write(dir, "sub/b.txt", b"beta\n");
    let s = Server::start(&["--shards", "1", "--root", dir.to_str().unwrap()]);

    let r = post(&s, "/v1/tools/list_directory", &[], &json!({"path": "."}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let listing = r.json();
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.txt", "sub"]);

    // A tool without structured output answers {"text": …}.
    let r = post(&s, "/v1/tools/read_file", &[], &json!({"path": "a.txt"}));
    assert_eq!(r.status, 200);
    assert!(r.json()["text"].as_str().unwrap().contains("alpha"));

    // A tool error is 422 with the tool's message; roots still apply.
    let r = post(
        &s,
        "/v1/tools/read_file",
        &[],
        &json!({"path": "../etc/passwd"}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["outcome"], "error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("outside the allowed roots"));

    // Unknown tool, bad body, wrong method, foreign origin: clear errors.
    let r = post(&s, "/v1/tools/nope", &[], &json!({}));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("list_directory"));
    let r = s.connect().request(
        "POST",
        "/v1/tools/read_file",
        &[("content-type", "application/json")],
        b"{not json",
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));
    let r = post(&s, "/v1/tools/read_file", &[], &json!(["a.txt"]));
    assert_eq!(r.status, 400);
    let r = s.connect().request("GET", "/v1/tools/read_file", &[], b"");
    assert_eq!(r.status, 405);
    let r = post(
        &s,
        "/v1/tools/read_file",
        &[("origin", "http://evil.example.com")],
        &json!({"path": "a.txt"}),
    );
    assert_eq!(r.status, 403);

    // The server is still up and counted the calls.
    let m = s.connect().request("GET", "/metrics", &[], b"").text();
    assert!(m.contains("mcp_tool_calls_total{tool=\"read_file\",outcome=\"error\"} 1"));
}

#[test]
fn a_batch_runs_every_call_and_reports_each_outcome_in_order() {
    let tmp = temp_dir("direct-batch");
    let dir = tmp.path();
    write(dir, "a.txt", b"alpha needle\n");
    let s = Server::start(&["--shards", "1", "--root", dir.to_str().unwrap()]);
    let r = post(
        &s,
        "/v1/batch",
        &[],
        &json!([
            {"tool": "read_file", "arguments": {"path": "a.txt"}},
            {"tool": "read_file", "arguments": {"path": "missing.txt"}},
            {"tool": "no_such_tool", "arguments": {}},
            {"tool": "search_code", "arguments": {"query": "needle"}},
            {"tool": "list_directory"},
            "not a call",
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json();
    let statuses: Vec<u64> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 422, 404, 200, 422, 400]);
    assert!(results[0]["result"]["text"]
        .as_str()
        .unwrap()
        .contains("alpha"));
    assert!(results[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    assert_eq!(results[3]["result"]["matches"][0]["path"], "a.txt");

    let r = post(&s, "/v1/batch", &[], &json!({"tool": "read_file"}));
    assert_eq!(r.status, 400);
    let r = post(&s, "/v1/batch", &[], &json!([]));
    assert_eq!(r.status, 400);
}

/// A streamed response read by hand: the head, then chunks as they arrive.
struct Stream {
    r: BufReader<TcpStream>,
    pending: Vec<u8>,
    pub lines: usize,
}

impl Stream {
    fn open(s: &Server, tool: &str, args: &Value) -> (Stream, String) {
        let body = serde_json::to_vec(args).unwrap();
        let mut t = TcpStream::connect(s.addr).unwrap();
        t.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            t,
            "POST /v1/tools/{tool} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\naccept: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        t.write_all(&body).unwrap();
        let mut r = BufReader::new(t);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        (
            Stream {
                r,
                pending: Vec::new(),
                lines: 0,
            },
            head,
        )
    }

    /// The next NDJSON line, or None at the end of the body.
    fn next_line(&mut self) -> Option<Value> {
        loop {
            if let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=nl).collect();
                self.lines += 1;
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let mut size = String::new();
            self.r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                assert!(self.pending.is_empty());
                return None;
            }
            let mut chunk = vec![0; n + 2];
            self.r.read_exact(&mut chunk).unwrap();
            assert_eq!(&chunk[n..], b"\r\n");
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn ndjson_streams_incrementally_and_a_slow_reader_bounds_server_memory() {
    let tmp = temp_dir("direct-ndjson");
    let dir = tmp.path();
    // One 2 MiB file of matching lines, hard-linked 3000 times: a search result of
    // ~60 million lines (gigabytes of NDJSON) from a few MiB on disk.
    let line = format!("needle {}\n", "x".repeat(90));
    let content = line.repeat(2 * 1024 * 1024 / line.len());
    let first = write(dir, "tree/f0000.txt", content.as_bytes());
    for i in 1..3000 {
        std::fs::hard_link(&first, dir.join(format!("tree/f{i:04}.txt"))).unwrap();
    }
    write(dir, "small/one.txt", b"1");
    write(dir, "small/two.txt", b"22");
    // A small file cache, so that cached copies of the hard links do not count.
    let cfg = write(dir, "c.toml", b"[cache]\nfile_bytes = 1048576\n");
    let s = Server::start(&[
        "--shards",
        "1",
        "--root",
        dir.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--timeout-ms",
        "600000",
    ]);
    let pid = s.child.id();

    // A small stream, read to its end: items, then the summary line.
    let (mut st, head) = Stream::open(&s, "list_directory", &json!({"path": "small"}));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/x-ndjson") && head.contains("chunked"));
    let mut items = Vec::new();
    while let Some(v) = st.next_line() {
        items.push(v);
    }
    let last = items.pop().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["result"]["entries_streamed"], 2);
    let mut names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["one.txt", "two.txt"]);

    // The huge one, read slowly: a line at a time, checking the server's memory.
    let baseline = rss_kib(pid);
    let bound = baseline + 192 * 1024;
    let (mut st, head) = Stream::open(
        &s,
        "search_code",
        &json!({"query": "needle", "path": "tree"}),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut peak = 0;
    for i in 0..300_000 {
        let m = st.next_line().expect("more matches");
        assert_eq!(m["text"].as_str().unwrap(), line.trim_end());
        if i % 2000 == 0 {
            peak = peak.max(rss_kib(pid));
            assert!(
                peak < bound,
                "server RSS grew to {peak} KiB (baseline {baseline} KiB) with a slow reader"
            );
        }
    }
    // Incremental: 300 000 matches arrived while the result (60 million) was far
    // from complete, which a buffered answer could not do.
    assert!(st.lines >= 300_000);
    drop(st);

    // The reader left: the search stops and the server goes on serving.
    let started = Instant::now();
    loop {
        let m = s.connect().request("GET", "/metrics", &[], b"").text();
        if m.lines().any(|l| l == "mcp_inflight_calls 0") {
            break;
        }
        assert!(started.elapsed() < IO_TIMEOUT, "the search never stopped");
        std::thread::yield_now();
    }
    let r = post(
        &s,
        "/v1/tools/read_file",
        &[],
        &json!({"path": "small/one.txt"}),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn query_rows_stream_as_ndjson_lines() {
    let tmp = temp_dir("ndjson-rows");
    let dir = tmp.path();
    let db = dir.join("big.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000)
         INSERT INTO t SELECT x, 'name-' || x FROM c;",
    )
    .unwrap();
    drop(conn);
    let s = Server::start(&[
        "--shards",
        "1",
        "--root",
        dir.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    let r = post(
        &s,
        "/v1/tools/query_db",
        &[("accept", "application/x-ndjson")],
        &json!({"sql": "SELECT id, name FROM t ORDER BY id"}),
    );
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0], json!({"columns": ["id", "name"]}));
    assert_eq!(lines[1], json!({"row": [1, "name-1"]}));
    assert_eq!(lines[50_000], json!({"row": [50000, "name-50000"]}));
    assert_eq!(
        lines.len(),
        50_002,
        "columns, every row (past max_rows: streaming has no row cap), the last line"
    );
    let last = &lines[50_001];
    assert_eq!(last["done"], true);
    assert_eq!(last["result"]["streamed"], 50_000);
    assert_eq!(last["result"]["truncated"], false);

    // A reader that leaves early stops the query; the server serves on.
    let mut c = s.connect();
    let body = serde_json::to_vec(&json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"})).unwrap();
    c.request_no_wait(
        "POST",
        "/v1/tools/query_db",
        &[
            ("content-type", "application/json"),
            ("accept", "application/x-ndjson"),
        ],
        &body,
    );
    let mut first = [0u8; 256];
    assert!(std::io::Read::read(&mut c.stream, &mut first).unwrap() > 0);
    drop(c);
    // The endless query is stopped, not left running: the in-flight gauge drops
    // to zero (asked until it does; bounded, not timed).
    let stopped = (0..10_000).any(|_| {
        let m = s.connect().request("GET", "/metrics", &[], b"").text();
        m.lines().any(|l| l == "mcp_inflight_calls 0")
    });
    assert!(stopped, "the abandoned query kept running");
    let r = post(
        &s,
        "/v1/tools/query_db",
        &[],
        &json!({"sql": "SELECT count(*) AS n FROM t"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["rows"][0][0], 50_000);
}

#[test]
fn the_direct_api_bounds_json_nesting_like_mcp() {
    let s = Server::start(&["--shards", "1", "--limit", "max_json_depth=8"]);
    let deep = format!("{{\"path\":{}1{}}}", "[".repeat(20), "]".repeat(20));
    for path in ["/v1/tools/read_file", "/v1/batch"] {
        let r = s.connect().request(
            "POST",
            path,
            &[("content-type", "application/json")],
            deep.as_bytes(),
        );
        assert_eq!(r.status, 400, "{path}");
        assert!(
            r.text().contains("nested deeper than 8"),
            "{path}: {}",
            r.text()
        );
    }
}
