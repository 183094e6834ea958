//! `coremcp stdio`: newline-delimited MCP on stdin/stdout, logs on stderr, a clean
//! exit on EOF.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

struct Stdio_ {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Stdio_ {
    fn start(args: &[&str]) -> Stdio_ {
        let mut child = Command::new(common::bin())
            .arg("stdio")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Stdio_ { child, out }
    }

    fn send(&mut self, msg: &Value) {
        self.send_raw(format!("{msg}\n").as_bytes());
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.out.read_line(&mut line).unwrap() > 0, "stdout closed");
        assert!(line.ends_with('\n'));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout carried a non-JSON line ({e}): {line}"))
    }

    /// Closes stdin and returns the exit status and whatever stdout still held.
    fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut rest).unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        (self.child.wait().unwrap(), rest, err)
    }
}

#[test]
fn handshake_session_over_stdio() {
    let mut s = Stdio_::start(&[]);
    s.send(&common::initialize("2025-06-18"));
    let r = s.recv();
    assert_eq!(r["id"], 1);
    assert_eq!(r["result"]["protocolVersion"], "2025-06-18");
    s.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
    s.send(&json!({"jsonrpc":"2.0","id":2,"method":"ping"}));
    assert_eq!(s.recv(), json!({"jsonrpc":"2.0","id":2,"result":{}}));
    s.send(&json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}));
    assert!(s.recv()["result"]["tools"].is_array());
    s.send(&json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"no_such_tool"}}));
    assert_eq!(s.recv()["error"]["code"], -32602);
    // Garbage gets a parse error and the stream goes on.
    s.send_raw(b"{oops\n");
    assert_eq!(s.recv()["error"]["code"], -32700);
    s.send_raw(b"\n");
    s.send(&json!({"jsonrpc":"2.0","id":5,"method":"ping"}));
    assert_eq!(s.recv()["id"], 5);
    let (status, rest, err) = s.finish();
    assert!(status.success(), "clean exit on EOF: {status}");
    assert_eq!(rest, "", "nothing after the last answer");
    assert!(err.contains("stdio"), "logs go to stderr: {err}");
}

#[test]
fn stateless_requests_over_stdio() {
    let mut s = Stdio_::start(&[]);
    s.send(&json!({"jsonrpc":"2.0","id":"d","method":"server/discover","params":{"_meta": common::meta()}}));
    let r = s.recv();
    assert_eq!(r["result"]["resultType"], "complete");
    assert!(r["result"]["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("2026-07-28")));
    s.send(
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta": common::meta()}}),
    );
    assert_eq!(s.recv()["result"]["resultType"], "complete");
    let mut m = common::meta();
    m["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    s.send(&json!({"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"_meta": m}}));
    let r = s.recv();
    assert_eq!(r["error"]["code"], -32022);
    assert_eq!(r["error"]["data"]["requested"], "2099-01-01");
    let (status, _, _) = s.finish();
    assert!(status.success());
}

#[test]
fn an_overlong_line_is_refused_and_the_stream_goes_on() {
    let mut s = Stdio_::start(&["--limit", "max_stdio_line_bytes=1000"]);
    let long = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"x\":\"{}\"}}}}\n",
        "y".repeat(5000)
    );
    s.send_raw(long.as_bytes());
    let r = s.recv();
    assert_eq!(r["error"]["code"], -32700);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_stdio_line_bytes"));
    s.send(&common::initialize("2025-11-25"));
    assert_eq!(s.recv()["id"], 1);
    let (status, _, _) = s.finish();
    assert!(status.success());
}

#[test]
fn batches_over_stdio_follow_the_http_rules() {
    let mut s = Stdio_::start(&["--limit", "max_batch=2"]);
    s.send(&common::initialize("2025-03-26"));
    assert_eq!(s.recv()["result"]["protocolVersion"], "2025-03-26");
    s.send(&json!([{"jsonrpc":"2.0","id":2,"method":"ping"}, {"jsonrpc":"2.0","method":"notifications/initialized"}]));
    let r = s.recv();
    assert_eq!(r.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r[0]["id"], 2);
    s.send(&json!([common::initialize("2025-03-26")]));
    assert_eq!(s.recv()[0]["error"]["code"], -32600);
    let three: Vec<Value> = (0..3)
        .map(|i| json!({"jsonrpc":"2.0","id":i,"method":"ping"}))
        .collect();
    s.send(&Value::Array(three));
    let r = s.recv();
    assert_eq!(r["error"]["code"], -32600);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_batch"));
    let (status, _, _) = s.finish();
    assert!(status.success());
}

#[test]
fn the_stdio_server_turns_transparent_huge_pages_off_too() {
    let mut s = Stdio_::start(&[]);
    // Answered, so the policy set at start-up is in place.
    s.send(&json!({"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta": common::meta()}}));
    assert_eq!(s.recv()["id"], 1);
    assert_eq!(common::proc_status(s.child.id(), "THP_enabled"), "0");
    let (status, _, _) = s.finish();
    assert!(status.success());
}
