//! Test harness: the real `coremcp` binary on a free loopback port, and a minimal
//! HTTP/1.1 client that shows exactly what went over the wire.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A safety net so a broken server fails a test instead of hanging it; never an
/// assertion about speed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_coremcp")
}

/// A running server, stopped (by PID) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub startup_line: String,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0");
        cmd.args(args);
        Server::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start coremcp");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if err.read_line(&mut line).unwrap() == 0 {
                let status = child.wait().unwrap();
                panic!("coremcp exited before listening: {status}");
            }
            if line.contains("listening on http://") {
                break;
            }
        }
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap()
            .parse()
            .unwrap();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while err.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Server {
            child,
            addr,
            startup_line: line,
        }
    }

    pub fn connect(&self) -> Conn {
        Conn::open(self.addr)
    }

    /// A new connection, initialized with `version`; returns it and the session id.
    pub fn session(&self, version: &str) -> (Conn, String) {
        let mut c = self.connect();
        let r = c.post(&[], &initialize(version));
        assert_eq!(r.status, 200, "{}", r.text());
        let sid = r
            .header("mcp-session-id")
            .expect("a session id")
            .to_string();
        let n = c.post(
            &[("mcp-session-id", &sid)],
            &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        );
        assert_eq!(n.status, 202);
        (c, sid)
    }

    /// True while the process is alive.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn initialize(version: &str) -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name":"tests","version":"1"}}})
}

/// `_meta` of a stateless (2026-07-28) request.
pub fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}})
}

/// Headers of a stateless request for `method` (and `name` for tools/call).
pub fn stateless_headers<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ];
    if let Some(n) = name {
        h.push(("mcp-name", n));
    }
    h
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// POST /mcp with the usual MCP headers plus `extra`.
    pub fn post(&mut self, extra: &[(&str, &str)], body: &Value) -> Response {
        let body = serde_json::to_vec(body).unwrap();
        self.send_raw(&post_bytes(extra, &body));
        self.read_response()
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.request_no_wait(method, path, headers, body);
        self.read_response()
    }

    /// Sends a request without reading its answer.
    pub fn request_no_wait(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes);
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response (Content-Length framed). Panics on EOF before a full one.
    pub fn read_response(&mut self) -> Response {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                let mut lines = head.split("\r\n");
                let status: u16 = lines
                    .next()
                    .unwrap()
                    .split(' ')
                    .nth(1)
                    .unwrap()
                    .parse()
                    .unwrap();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                if status == 100 {
                    self.buf.drain(..end + 4);
                    continue;
                }
                if headers
                    .iter()
                    .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
                {
                    self.buf.drain(..end + 4);
                    let body = self.read_chunked();
                    return Response {
                        status,
                        headers,
                        body,
                    };
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map(|(_, v)| v.parse().unwrap())
                    .expect("content-length");
                while self.buf.len() < end + 4 + len {
                    assert!(self.fill() > 0, "EOF inside a response body");
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Response {
                    status,
                    headers,
                    body,
                };
            }
            assert!(
                self.fill() > 0,
                "EOF before a response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads a chunked body to its last chunk (trailers are not used here).
    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                assert!(self.fill() > 0, "EOF inside a chunk size");
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.buf[..line_end]).unwrap().trim(),
                16,
            )
            .unwrap();
            while self.buf.len() < line_end + 2 + size + 2 {
                assert!(self.fill() > 0, "EOF inside a chunk");
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return body;
            }
        }
    }

    /// True when the server has closed the connection (reads EOF).
    pub fn closed(&mut self) -> bool {
        matches!(self.stream.read(&mut [0u8; 1]), Ok(0) | Err(_))
    }
}

pub fn post_bytes(extra: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One field of `/proc/PID/status` (`VmRSS`, `THP_enabled`, …), its value trimmed.
pub fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let prefix = format!("{field}:");
    status
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// A fresh directory for a test's files, named after the test; removed, with
/// what is in it, when the returned guard drops (also when the test fails), so
/// that runs of the suite leave nothing behind. Bind the guard before the
/// [`Server`] that serves it: locals drop in reverse order, so the server stops
/// first.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("coremcp-test-{name}-"))
        .tempdir()
        .unwrap()
}

pub fn write(dir: &Path, rel: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    p
}
