//! The configuration file against the real binary: `check-config`, the shipped
//! tuning files, errors that name the key and line, and flags over the file.

mod common;

use std::process::Command;

use common::*;

fn check_config(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("check-config")
        .arg(path)
        .output()
        .expect("run coremcp check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_tuning_file_passes_check_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, stdout, stderr) = check_config(&path);
            assert!(ok, "{}: {stderr}", path.display());
            assert!(stdout.contains(": ok ("), "{stdout}");
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "tuning/ has default.toml and low-latency.toml"
    );
}

#[test]
fn an_unknown_key_is_refused_with_its_name_and_line() {
    let tmp = temp_dir("config-unknown");
    let dir = tmp.path();
    let path = write(
        dir,
        "c.toml",
        b"listen = \"127.0.0.1:0\"\n[cache]\nfile_bytes = 1024\nfile_byts = 2048\n",
    );
    let (ok, _, stderr) = check_config(&path);
    assert!(!ok);
    assert!(stderr.contains("c.toml:4:"), "{stderr}");
    assert!(stderr.contains("file_byts"), "{stderr}");

    // serve refuses the same file before binding anything.
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("c.toml:4:") && stderr.contains("file_byts"),
        "{stderr}"
    );

    // A bad value names its key and line too.
    let path = write(dir, "v.toml", b"[limits]\n\nmax_body_bytes = 0\n");
    let (ok, _, stderr) = check_config(&path);
    assert!(!ok);
    assert!(
        stderr.contains("v.toml:3: limits.max_body_bytes: "),
        "{stderr}"
    );
}

#[test]
fn pump_windows_past_their_bound_are_refused_on_the_command_line() {
    for (flag, max) in [
        ("--poll-spin-us", coremcp::config::MAX_POLL_SPIN_US),
        ("--poll-wait-us", coremcp::config::MAX_POLL_WAIT_US),
    ] {
        let out = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", flag])
            .arg((max + 1).to_string())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {} was accepted", max + 1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{flag}: must be at most {max}")),
            "{stderr}"
        );
    }
}

#[test]
fn the_file_configures_the_server_and_flags_override_it() {
    let tmp = temp_dir("config-serve");
    let dir = tmp.path();
    write(dir, "root/hello.txt", b"hello from the file's root\n");
    let cfg = write(
        dir,
        "c.toml",
        b"listen = \"127.0.0.1:1\"\nroots = [\"root\"]\nshards = 1\n[tools.query_db]\nenabled = false\n[limits]\nmax_body_bytes = 100000\n",
    );
    // --listen overrides the file's (unusable) port 1.
    let s = Server::start(&["--config", cfg.to_str().unwrap()]);
    assert!(s.startup_line.contains("roots="), "{}", s.startup_line);
    assert!(s.startup_line.contains("/root"), "{}", s.startup_line);
    let mut c = s.connect();
    let r = c.post(
        &stateless_headers("tools/list", None),
        &serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta": meta()}}),
    );
    let names: Vec<String> = r.json()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.contains(&"query_db".to_string()), "{names:?}");
    assert!(names.contains(&"read_file".to_string()));
    let r = c.post(
        &stateless_headers("tools/call", Some("read_file")),
        &serde_json::json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"_meta": meta(), "name":"read_file","arguments":{"path":"hello.txt"}}}),
    );
    assert!(
        r.text().contains("hello from the file's root"),
        "{}",
        r.text()
    );
}

#[test]
fn a_tool_can_be_served_without_the_caches() {
    let tmp = temp_dir("config-nocache");
    let dir = tmp.path();
    // A file written more than two seconds ago (the file cache keeps nothing that
    // changed more recently): the crate's own manifest, checked out before the build.
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    let hits_after_two_reads = |toml: &str| -> String {
        let cfg = write(dir, "c.toml", toml.as_bytes());
        let s = Server::start(&["--config", cfg.to_str().unwrap()]);
        let mut c = s.connect();
        for id in 1..=2 {
            let r = c.post(
                &stateless_headers("tools/call", Some("read_file")),
                &serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"_meta": meta(), "name":"read_file","arguments":{"path":"Cargo.toml"}}}),
            );
            assert!(r.text().contains("coremcp"), "{}", r.text());
        }
        let m = c.request("GET", "/metrics", &[], b"").text();
        m.lines()
            .find(|l| l.starts_with("mcp_cache_hits_total{cache=\"file\"}"))
            .unwrap()
            .to_string()
    };
    let base = format!("roots = [\"{crate_dir}\"]\nshards = 1\n");
    assert!(
        hits_after_two_reads(&base).ends_with(" 1"),
        "cached by default"
    );
    let off = format!("{base}[tools.read_file]\ncache = false\n");
    assert!(
        hits_after_two_reads(&off).ends_with(" 0"),
        "cache = false reads from disk"
    );
}

/// `THP_enabled` of a running server (Linux 5.0 or later reports it).
fn thp_enabled(s: &Server) -> String {
    proc_status(s.child.id(), "THP_enabled")
}

#[test]
fn transparent_huge_pages_are_off_unless_the_file_allows_them() {
    let tmp = temp_dir("config-thp");
    let dir = tmp.path();
    let root = dir.to_str().unwrap();
    let s = Server::start(&["--shards", "1", "--root", root]);
    assert_eq!(thp_enabled(&s), "0", "the default turns THP off");
    drop(s);
    let cfg = write(dir, "c.toml", b"[runtime]\ntransparent_hugepages = true\n");
    let s = Server::start(&[
        "--shards",
        "1",
        "--root",
        root,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(thp_enabled(&s), "1", "the file allows THP");
}
