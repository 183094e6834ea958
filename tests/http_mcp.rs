//! MCP over Streamable HTTP against the real binary: both eras, sessions across
//! shards, and every error path the transport and protocol define.

mod common;

use common::*;
use serde_json::json;

const ACCEPT_BOTH: (&str, &str) = ("accept", "application/json, text/event-stream");

#[test]
fn initialize_negotiates_each_handshake_revision() {
    let s = Server::start(&["--shards", "1"]);
    for v in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
        let r = s.connect().post(&[], &initialize(v));
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["result"]["protocolVersion"], v);
        assert_eq!(j["result"]["serverInfo"]["name"], "coremcp");
        assert!(j["result"]["capabilities"]["tools"].is_object());
        assert!(
            j["result"].get("resultType").is_none(),
            "no resultType in the handshake era"
        );
        let sid = r.header("mcp-session-id").unwrap();
        assert!(sid.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
    // An unknown revision is answered with our newest.
    let r = s.connect().post(&[], &initialize("2099-01-01"));
    assert_eq!(r.json()["result"]["protocolVersion"], "2025-11-25");
}

#[test]
fn session_lifecycle_and_errors() {
    let s = Server::start(&["--shards", "1"]);
    let (mut c, sid) = s.session("2025-11-25");
    let sh = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];

    let r = c.post(&sh, &json!({"jsonrpc":"2.0","id":2,"method":"ping"}));
    assert_eq!((r.status, r.json()["result"].clone()), (200, json!({})));

    // No session: 400. Unknown session: 404.
    let r = c.post(&[], &json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32600);
    let r = c.post(
        &[("mcp-session-id", "00000000000000001111111111111111")],
        &json!({"jsonrpc":"2.0","id":4,"method":"ping"}),
    );
    assert_eq!(r.status, 404);

    // Unsupported MCP-Protocol-Version: 400, and not with a stateless-era code.
    let r = c.post(
        &[
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "1999-01-01"),
        ],
        &json!({"jsonrpc":"2.0","id":5,"method":"ping"}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32600);

    // Unknown method: -32601.
    let r = c.post(
        &sh,
        &json!({"jsonrpc":"2.0","id":6,"method":"nope/nothing"}),
    );
    assert_eq!(r.json()["error"]["code"], -32601);

    // Notifications and client responses: 202, no body.
    let r = c.post(
        &sh,
        &json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":99}}),
    );
    assert_eq!((r.status, r.body.len()), (202, 0));
    let r = c.post(&sh, &json!({"jsonrpc":"2.0","id":"srv-1","result":{}}));
    assert_eq!((r.status, r.body.len()), (202, 0));

    // DELETE ends it; afterwards 404, and a second DELETE is 404 too.
    let r = c.request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b"");
    assert_eq!(r.status, 200);
    let r = c.post(&sh, &json!({"jsonrpc":"2.0","id":7,"method":"ping"}));
    assert_eq!(r.status, 404);
    let r = c.request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b"");
    assert_eq!(r.status, 404);
    let r = c.request("DELETE", "/mcp", &[], b"");
    assert_eq!(r.status, 400);
}

#[test]
fn sessions_are_valid_on_every_shard_and_end_everywhere() {
    let s = Server::start(&["--shards", "2"]);
    let (_c, sid) = s.session("2025-11-25");
    let mut shards_seen = std::collections::BTreeSet::new();
    let mut conns = Vec::new();
    // SO_REUSEPORT spreads connections by hash; enough of them reach both shards.
    while shards_seen.len() < 2 {
        assert!(conns.len() < 200, "200 connections all landed on one shard");
        let mut c = s.connect();
        let h = c.request("GET", "/healthz", &[], b"");
        shards_seen.insert(h.text());
        let r = c.post(
            &[("mcp-session-id", &sid)],
            &json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
        );
        assert_eq!(r.status, 200, "session valid on {}", h.text());
        conns.push((c, h.text()));
    }
    let r = conns[0]
        .0
        .request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b"");
    assert_eq!(r.status, 200);
    for (c, shard) in conns.iter_mut() {
        let r = c.post(
            &[("mcp-session-id", &sid)],
            &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
        );
        assert_eq!(r.status, 404, "ended session still valid on {shard}");
    }
}

#[test]
fn the_number_of_sessions_is_bounded() {
    let s = Server::start(&["--shards", "1", "--limit", "max_sessions=3"]);
    let mut c = s.connect();
    let mut sids = Vec::new();
    for _ in 0..3 {
        let r = c.post(&[], &initialize("2025-11-25"));
        assert_eq!(r.status, 200);
        sids.push(r.header("mcp-session-id").unwrap().to_string());
    }
    let r = c.post(&[], &initialize("2025-11-25"));
    assert_eq!(r.status, 503);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_sessions"));
    // Ending one frees a place.
    assert_eq!(
        c.request("DELETE", "/mcp", &[("mcp-session-id", &sids[0])], b"")
            .status,
        200
    );
    assert_eq!(c.post(&[], &initialize("2025-11-25")).status, 200);
}

#[test]
fn batches_only_in_2025_03_26() {
    let s = Server::start(&["--shards", "1"]);
    let (mut c, sid) = s.session("2025-03-26");
    let batch = json!([
        {"jsonrpc":"2.0","id":1,"method":"ping"},
        {"jsonrpc":"2.0","method":"notifications/initialized"},
        {"jsonrpc":"2.0","id":2,"method":"tools/list"},
        {"jsonrpc":"2.0","id":3,"method":"no/such"}
    ]);
    let r = c.post(&[("mcp-session-id", &sid)], &batch);
    assert_eq!(r.status, 200);
    let arr = r.json();
    let arr = arr.as_array().unwrap();
    assert_eq!(arr.len(), 3, "the notification gets no entry");
    assert_eq!(arr[0]["id"], 1);
    assert!(arr[1]["result"]["tools"].is_array());
    assert_eq!(arr[2]["error"]["code"], -32601);
    // Only notifications: 202.
    let r = c.post(
        &[("mcp-session-id", &sid)],
        &json!([{"jsonrpc":"2.0","method":"notifications/initialized"}]),
    );
    assert_eq!((r.status, r.body.len()), (202, 0));
    // initialize inside a batch is refused.
    let r = c.post(
        &[("mcp-session-id", &sid)],
        &json!([initialize("2025-03-26")]),
    );
    assert_eq!(r.json()[0]["error"]["code"], -32600);

    let (mut c2, sid2) = s.session("2025-11-25");
    let r = c2.post(
        &[("mcp-session-id", &sid2)],
        &json!([{"jsonrpc":"2.0","id":1,"method":"ping"}]),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32600);
}

#[test]
fn stateless_revision_on_the_same_endpoint() {
    let s = Server::start(&["--shards", "1"]);
    let mut c = s.connect();
    let discover =
        json!({"jsonrpc":"2.0","id":"d","method":"server/discover","params":{"_meta": meta()}});
    let r = c.post(&stateless_headers("server/discover", None), &discover);
    assert_eq!(r.status, 200);
    assert!(r.header("mcp-session-id").is_none());
    let j = r.json()["result"].clone();
    assert_eq!(j["resultType"], "complete");
    assert!(j["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("2026-07-28")));
    assert!(j["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("2025-11-25")));
    assert_eq!(
        j["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "coremcp"
    );
    assert!(j["ttlMs"].is_u64() && j["cacheScope"].is_string());

    let list = json!({"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta": meta()}});
    let r = c.post(&stateless_headers("tools/list", None), &list);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["resultType"], "complete");

    // A session id is ignored, never required.
    let mut h = stateless_headers("tools/list", None);
    h.push(("mcp-session-id", "bogus"));
    assert_eq!(c.post(&h, &list).status, 200);
}

#[test]
fn stateless_errors_carry_the_new_codes() {
    let s = Server::start(&["--shards", "1"]);
    let mut c = s.connect();
    let list = json!({"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta": meta()}});
    let code = |r: &Response| r.json()["error"]["code"].clone();

    // Header and body disagree: 400 -32020.
    let r = c.post(&stateless_headers("tools/call", None), &list);
    assert_eq!((r.status, code(&r)), (400, json!(-32020)));
    let r = c.post(&[("mcp-protocol-version", "2026-07-28")], &list);
    assert_eq!(
        (r.status, code(&r)),
        (400, json!(-32020)),
        "missing Mcp-Method"
    );
    let call = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"read_file","arguments":{},"_meta": meta()}});
    let r = c.post(&stateless_headers("tools/call", Some("other_tool")), &call);
    assert_eq!((r.status, code(&r)), (400, json!(-32020)));
    let r = c.post(&stateless_headers("tools/call", None), &call);
    assert_eq!(
        (r.status, code(&r)),
        (400, json!(-32020)),
        "missing Mcp-Name"
    );
    // Base64-encoded header values are decoded before the comparison.
    let r = c.post(
        &stateless_headers("tools/call", Some("=?base64?b3RoZXI=?=")),
        &call,
    );
    assert_eq!((r.status, code(&r)), (400, json!(-32020)));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("other"));

    // Unsupported revision: 400 -32022 with the supported list.
    let mut m = meta();
    m["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let body = json!({"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"_meta": m}});
    let r = c.post(
        &[
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/list"),
        ],
        &body,
    );
    assert_eq!((r.status, code(&r)), (400, json!(-32022)));
    let data = r.json()["error"]["data"].clone();
    assert_eq!(data["requested"], "2099-01-01");
    assert!(data["supported"]
        .as_array()
        .unwrap()
        .contains(&json!("2026-07-28")));

    // Header version differs from _meta version.
    let r = c.post(
        &[
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "tools/list"),
        ],
        &list,
    );
    assert_eq!((r.status, code(&r)), (400, json!(-32020)));

    // _meta without client capabilities: 400 -32602.
    let body = json!({"jsonrpc":"2.0","id":5,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}});
    let r = c.post(&stateless_headers("tools/list", None), &body);
    assert_eq!((r.status, code(&r)), (400, json!(-32602)));

    // Unknown method, and methods the revision removed: 404 -32601.
    for m in ["no/such", "ping", "initialize"] {
        let body = json!({"jsonrpc":"2.0","id":6,"method":m,"params":{"_meta": meta()}});
        let r = c.post(&stateless_headers(m, None), &body);
        assert_eq!((r.status, code(&r)), (404, json!(-32601)), "{m}");
    }
}

#[test]
fn http_level_checks() {
    let s = Server::start(&["--shards", "1"]);
    let mut c = s.connect();
    let init = serde_json::to_vec(&initialize("2025-11-25")).unwrap();

    let r = c.request(
        "POST",
        "/mcp",
        &[("content-type", "text/plain"), ACCEPT_BOTH],
        &init,
    );
    assert_eq!(r.status, 415);
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "text/html"),
        ],
        &init,
    );
    assert_eq!(r.status, 406);
    let r = c.request("GET", "/mcp", &[("accept", "text/event-stream")], b"");
    assert_eq!(r.status, 405);
    assert!(r.header("allow").unwrap().contains("POST"));
    let r = c.request("GET", "/nowhere", &[], b"");
    assert_eq!(r.status, 404);
    // An SSE-only client gets its answer as one SSE event.
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ],
        &init,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.text().starts_with("event: message\ndata: {"));

    // DNS rebinding: a foreign Origin is 403, a foreign Host a 4xx.
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ACCEPT_BOTH,
            ("origin", "http://evil.example.com"),
        ],
        &init,
    );
    assert_eq!(r.status, 403);
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ACCEPT_BOTH,
            ("origin", "http://localhost:6274"),
        ],
        &init,
    );
    assert_eq!(r.status, 200);
    let mut raw = s.connect();
    raw.send_raw(&post_bytes(&[], &init).replacen_host(b"evil.example.com"));
    let r = raw.read_response();
    assert!((400..500).contains(&r.status), "{}", r.status);
}

#[test]
fn allowed_hosts_and_origins_are_configurable() {
    let s = Server::start(&[
        "--shards",
        "1",
        "--allowed-host",
        "mcp.internal",
        "--allowed-origin",
        "https://agents.internal",
    ]);
    let init = serde_json::to_vec(&initialize("2025-11-25")).unwrap();
    let mut raw = s.connect();
    raw.send_raw(
        &post_bytes(&[("origin", "https://agents.internal")], &init)
            .replacen_host(b"mcp.internal:443"),
    );
    assert_eq!(raw.read_response().status, 200);
    let r = s.connect().request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ACCEPT_BOTH,
            ("origin", "http://localhost"),
        ],
        &init,
    );
    assert_eq!(r.status, 403);
}

#[test]
fn bad_json_gets_json_rpc_errors_and_the_server_stays_up() {
    let mut s = Server::start(&["--shards", "1"]);
    let mut c = s.connect();
    let post = |c: &mut Conn, body: &[u8]| {
        c.request(
            "POST",
            "/mcp",
            &[("content-type", "application/json"), ACCEPT_BOTH],
            body,
        )
    };
    let r = post(&mut c, b"{not json");
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!(-32700))
    );
    let r = post(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}",
    );
    assert_eq!(r.json()["error"]["code"], -32700, "invalid UTF-8");
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let r = post(&mut c, deep.as_bytes());
    assert_eq!(r.json()["error"]["code"], -32700, "deep nesting");
    let deep_params = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{}{}}}",
        "{\"a\":".repeat(50_000),
        "}".repeat(50_000)
    );
    assert_eq!(
        post(&mut c, deep_params.as_bytes()).json()["error"]["code"],
        -32700
    );
    let r = post(&mut c, br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#);
    assert_eq!(r.json()["error"]["code"], -32600);
    let r = post(
        &mut c,
        br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":[1,2]}"#,
    );
    assert_eq!(r.json()["error"]["code"], -32602);
    let r = post(&mut c, br#"[]"#);
    assert_eq!(r.status, 400);
    // Still serving, on the same connection.
    assert_eq!(c.post(&[], &initialize("2025-11-25")).status, 200);
    assert!(s.alive());
}

#[test]
fn keep_alive_pipelining_and_chunked_bodies() {
    let s = Server::start(&["--shards", "1"]);
    let (mut c, sid) = s.session("2025-11-25");
    // Three requests in one write; answers come back in request order.
    let mut burst = Vec::new();
    for id in [10, 11, 12] {
        let body = serde_json::to_vec(&json!({"jsonrpc":"2.0","id":id,"method":"ping"})).unwrap();
        burst.extend(post_bytes(&[("mcp-session-id", &sid)], &body));
    }
    c.send_raw(&burst);
    for id in [10, 11, 12] {
        assert_eq!(c.read_response().json()["id"], id);
    }
    // A chunked body, split oddly.
    let body = serde_json::to_vec(&json!({"jsonrpc":"2.0","id":"chunky","method":"ping"})).unwrap();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-session-id: {sid}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(7) {
        req.extend(format!("{:x}\r\n", part.len()).into_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    c.send_raw(&req);
    assert_eq!(c.read_response().json()["id"], "chunky");
    // Expect: 100-continue gets its interim answer, then the real one.
    let mut req = post_bytes(
        &[("mcp-session-id", &sid), ("expect", "100-continue")],
        &body,
    );
    let split = find(&req, b"\r\n\r\n").unwrap() + 4;
    let tail = req.split_off(split);
    c.send_raw(&req);
    let mut interim = [0u8; 25];
    std::io::Read::read_exact(&mut c.stream, &mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send_raw(&tail);
    assert_eq!(c.read_response().status, 200);
    // Connection: close is honoured.
    let r = c.request("GET", "/healthz", &[("connection", "close")], b"");
    assert_eq!(r.status, 200);
    assert!(c.closed());
}

#[test]
fn size_limits_answer_431_and_413() {
    let mut s = Server::start(&[
        "--shards",
        "1",
        "--limit",
        "max_body_bytes=1024",
        "--limit",
        "max_header_bytes=2048",
    ]);
    let mut c = s.connect();
    let big = "x".repeat(4096);
    let r = c.request("GET", "/healthz", &[("x-big", &big)], b"");
    assert_eq!(r.status, 431);

    // 413 comes back without the server waiting for a body it will not read.
    let mut c = s.connect();
    c.send_raw(b"POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n{\"a\":");
    assert_eq!(c.read_response().status, 413);

    // A chunked body that grows past the limit.
    let mut c = s.connect();
    let mut req = b"POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"200\r\n");
        req.extend(std::iter::repeat_n(b' ', 0x200));
        req.extend_from_slice(b"\r\n");
    }
    c.send_raw(&req);
    assert_eq!(c.read_response().status, 413);

    let mut c = s.connect();
    c.send_raw(b"BROKEN\x01 request\r\n\r\n");
    assert_eq!(c.read_response().status, 400);
    assert!(s.alive());
    assert_eq!(s.connect().request("GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn slow_headers_time_out_and_do_not_hold_up_others() {
    let s = Server::start(&["--shards", "1", "--limit", "header_timeout=300"]);
    let mut slow = s.connect();
    slow.send_raw(b"POST /mcp HTTP/1.1\r\nhost: localhost\r\n");
    // While the slow client dawdles, another is served.
    let (mut c, _) = s.session("2025-11-25");
    assert_eq!(c.request("GET", "/healthz", &[], b"").status, 200);
    // The slow one is answered 408 once its header deadline passes, then closed.
    assert_eq!(slow.read_response().status, 408);
    assert!(slow.closed());
}

#[test]
fn thousands_of_idle_connections_do_not_stop_service() {
    let s = Server::start(&["--shards", "1"]);
    let idle: Vec<_> = (0..5000)
        .map(|_| std::net::TcpStream::connect(s.addr).expect("connect"))
        .collect();
    let (mut c, sid) = s.session("2025-11-25");
    let r = c.post(
        &[("mcp-session-id", &sid)],
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    );
    assert_eq!(r.status, 200);
    drop(idle);
}

#[test]
fn connections_per_shard_are_bounded() {
    let s = Server::start(&["--shards", "1", "--limit", "max_connections_per_shard=2"]);
    let mut a = s.connect();
    let mut b = s.connect();
    assert_eq!(a.request("GET", "/healthz", &[], b"").status, 200);
    assert_eq!(b.request("GET", "/healthz", &[], b"").status, 200);
    let mut third = s.connect();
    assert_eq!(third.read_response().status, 503);
    drop(a);
    // Once the server has seen `a` close, new connections are served again. It
    // notices asynchronously, so ask until it has (bounded, not timed).
    let served = (0..10_000).any(|_| {
        let mut c = s.connect();
        c.send_raw(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n");
        c.read_response().status == 200
    });
    assert!(served);
}

#[test]
fn a_taken_port_is_a_clear_start_up_error() {
    let s = Server::start(&["--shards", "1"]);
    let out = std::process::Command::new(bin())
        .args(["serve", "--shards", "1", "--listen", &s.addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("already listens"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}

trait ReplaceHost {
    fn replacen_host(self, host: &[u8]) -> Vec<u8>;
}

impl ReplaceHost for Vec<u8> {
    fn replacen_host(self, host: &[u8]) -> Vec<u8> {
        let at = find(&self, b"host: 127.0.0.1").unwrap();
        let mut out = self[..at + 6].to_vec();
        out.extend_from_slice(host);
        out.extend_from_slice(&self[at + 15..]);
        out
    }
}

#[test]
fn garbage_on_the_wire_never_takes_the_server_down() {
    let mut s = Server::start(&["--shards", "2"]);
    // A deterministic xorshift stream: the same garbage on every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let prefixes: [&[u8]; 5] = [
        b"",
        b"POST /mcp HTTP/1.1\r\n",
        b"POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n",
        b"GET /mcp HTTP/1.1\r\nhost: localhost\r\n",
    ];
    for round in 0..200 {
        let mut bytes = prefixes[round % prefixes.len()].to_vec();
        let len = (next() % 300) as usize;
        bytes.extend((0..len).map(|_| next() as u8));
        let mut c = s.connect();
        c.send_raw(&bytes);
        // Close our side; whatever the server answers (or not), it must live on.
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
        let _ = std::io::Read::read_to_end(&mut c.stream, &mut Vec::new());
    }
    assert!(s.alive());
    let (mut c, sid) = s.session("2025-11-25");
    let r = c.post(
        &[("mcp-session-id", &sid)],
        &json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
    );
    assert_eq!(r.status, 200);
}

/// The one-pass parse (envelope and params together) and the general path must
/// agree: a well-formed stateless call gets the full stateless result, and every
/// malformed `_meta` or params gets the error the general path gives, with the id.
#[test]
fn stateless_calls_and_malformed_meta_or_params() {
    let tmp = temp_dir("stateless-calls");
    let dir = tmp.path();
    write(dir, "a.txt", b"alpha\n");
    let s = Server::start(&["--shards", "1", "--root", dir.to_str().unwrap()]);
    let mut c = s.connect();
    let call = |meta: serde_json::Value, name: serde_json::Value| {
        json!({"jsonrpc":"2.0","id":"c-1","method":"tools/call",
               "params":{"name":name,"arguments":{"path":"a.txt"},"_meta":meta}})
    };
    let h = stateless_headers("tools/call", Some("read_file"));

    let r = c.post(&h, &call(meta(), json!("read_file")));
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["id"], "c-1");
    let res = &j["result"];
    assert_eq!(res["content"][0]["type"], "text");
    assert_eq!(res["content"][0]["text"], "alpha\n");
    assert_eq!(res["isError"], false);
    assert_eq!(res["resultType"], "complete");
    assert_eq!(
        res["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "coremcp"
    );
    assert!(res.get("ttlMs").is_none(), "a call result is not cacheable");

    // A revision that is not a string, null included, is refused, not ignored.
    for bad in [json!(null), json!(20260728), json!({"v": 1})] {
        let mut m = meta();
        m["io.modelcontextprotocol/protocolVersion"] = bad.clone();
        let r = c.post(&h, &call(m, json!("read_file")));
        assert_eq!(r.status, 400, "{bad}");
        let e = r.json();
        assert_eq!(e["id"], "c-1", "{bad}");
        assert_eq!(e["error"]["code"], -32602, "{bad}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("must be a string"),
            "{bad}: {e}"
        );
    }
    // Capabilities must be an object.
    for bad in [None, Some(json!("all")), Some(json!(null))] {
        let mut m = meta();
        match &bad {
            None => {
                m.as_object_mut()
                    .unwrap()
                    .remove("io.modelcontextprotocol/clientCapabilities");
            }
            Some(v) => m["io.modelcontextprotocol/clientCapabilities"] = v.clone(),
        }
        let r = c.post(&h, &call(m, json!("read_file")));
        assert_eq!(
            (r.status, r.json()["error"]["code"].clone()),
            (400, json!(-32602)),
            "{bad:?}"
        );
    }
    // Params of the wrong shape: -32602 with the request's id (the general path).
    let r = c.post(&h, &call(meta(), json!(5)));
    let e = r.json();
    assert_eq!(e["id"], "c-1");
    assert_eq!(e["error"]["code"], -32602);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("invalid params"));
    // Not JSON at all: -32700 without an id.
    let raw = post_bytes(&h, b"{\"jsonrpc\":\"2.0\",\"id\":1,");
    c.send_raw(&raw);
    let r = c.read_response();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32700);
    let again = s.connect().post(&h, &call(meta(), json!("read_file")));
    assert_eq!(again.status, 200, "the server is still up");
}
