//! The TOML configuration file (`--config FILE`, `coremcp check-config FILE`).
//!
//! Every table refuses keys it does not know (`deny_unknown_fields`), so a misspelt
//! key is an error rather than a silently ignored setting, and every error names the
//! file, the line and the key. Relative paths (`roots`, `databases`) resolve against
//! the file's directory, so a config works wherever the server is started from.
//! Command-line flags are applied after the file and override it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    resolve_database, resolve_root, set_limit_value, Config, ToolConfig, MAX_HEARTBEAT_MS,
};
use crate::log::Level;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<Spanned<String>>,
    shards: Option<usize>,
    roots: Option<Vec<Spanned<String>>>,
    databases: Option<Vec<Spanned<String>>>,
    timeout_ms: Option<Spanned<u64>>,
    shutdown_timeout_ms: Option<Spanned<u64>>,
    log_level: Option<Spanned<String>>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    runtime: Option<RuntimeFile>,
    limits: Option<BTreeMap<String, Spanned<u64>>>,
    cache: Option<CacheFile>,
    tools: Option<BTreeMap<String, Spanned<ToolFile>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeFile {
    cpus: Option<Spanned<Vec<usize>>>,
    spin_before_park_us: Option<u64>,
    ring_depth: Option<Spanned<usize>>,
    io_memory_bytes: Option<Spanned<usize>>,
    preempt_timer_ms: Option<Spanned<u64>>,
    connection_latency_ms: Option<Spanned<u64>>,
    heartbeat_ms: Option<Spanned<u64>>,
    poll_spin_us: Option<Spanned<u64>>,
    poll_wait_us: Option<Spanned<u64>>,
    transparent_hugepages: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    file_bytes: Option<usize>,
    trees: Option<Spanned<usize>>,
    db_statements: Option<usize>,
    db_idle_connections: Option<usize>,
    query_results: Option<usize>,
    query_result_bytes: Option<usize>,
    search_patterns: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolFile {
    enabled: Option<bool>,
    timeout_ms: Option<Spanned<u64>>,
    cache: Option<bool>,
}

/// Where an error is, for messages of the form `FILE:LINE: …`.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let at = span.start.min(self.text.len());
        self.text[..at].bytes().filter(|b| *b == b'\n').count() + 1
    }

    /// The dotted key written on the line holding `offset` (`table.key`), for
    /// errors serde reports by position only.
    fn key_at(&self, offset: usize) -> Option<String> {
        let at = offset.min(self.text.len());
        let start = self.text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[at..]
            .find('\n')
            .map_or(self.text.len(), |i| at + i);
        let line = self.text[start..end].trim();
        let table = |l: &str| l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        if line.starts_with('[') {
            return Some(table(line));
        }
        let key = line.split_once('=')?.0.trim().trim_matches('"');
        let header = self.text[..start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(table);
        Some(match header {
            Some(h) => format!("{h}.{key}"),
            None => key.to_string(),
        })
    }

    fn error(&self, span: Range<usize>, key: &str, why: impl std::fmt::Display) -> String {
        format!("{}:{}: {key}: {why}", self.path.display(), self.line(span))
    }
}

/// Reads and checks a config file. Paths must exist; nothing is opened or bound.
pub fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse(path, &text)
}

/// Parses config text; `path` names it in errors and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, String> {
    let src = Source { path, text };
    let file: File = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => match src.key_at(span.start) {
            Some(key) => src.error(span, &key, e.message().trim_end()),
            None => format!(
                "{}:{}: {}",
                path.display(),
                src.line(span),
                e.message().trim_end()
            ),
        },
        None => format!("{}: {}", path.display(), e.message().trim_end()),
    })?;
    let base: PathBuf = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);

    let mut cfg = Config::default();
    if let Some(l) = file.listen {
        cfg.listen = l.get_ref().parse::<SocketAddr>().map_err(|e| {
            src.error(
                l.span(),
                "listen",
                format!("{:?}: {e} (expected IP:PORT)", l.get_ref()),
            )
        })?;
    }
    if let Some(n) = file.shards {
        cfg.shards = n;
    }
    for r in file.roots.unwrap_or_default() {
        let real = resolve_root(&base, Path::new(r.get_ref()))
            .map_err(|e| src.error(r.span(), "roots", e))?;
        cfg.roots.push(real);
    }
    for d in file.databases.unwrap_or_default() {
        let db = resolve_database(&base, Path::new(d.get_ref()), &cfg.databases)
            .map_err(|e| src.error(d.span(), "databases", e))?;
        cfg.databases.push(db);
    }
    if let Some(t) = file.timeout_ms {
        cfg.timeout = positive_ms(&src, &t, "timeout_ms")?;
    }
    if let Some(t) = file.shutdown_timeout_ms {
        cfg.shutdown_timeout = positive_ms(&src, &t, "shutdown_timeout_ms")?;
    }
    if let Some(l) = file.log_level {
        cfg.log_level = Some(
            l.get_ref()
                .parse::<Level>()
                .map_err(|e| src.error(l.span(), "log_level", e))?,
        );
    }
    cfg.access.allowed_hosts = file.allowed_hosts.unwrap_or_default();
    cfg.access.allowed_origins = file.allowed_origins.unwrap_or_default();
    if let Some(rt) = file.runtime {
        if let Some(cpus) = rt.cpus {
            if cfg.shards != 0 && !cpus.get_ref().is_empty() && cpus.get_ref().len() != cfg.shards {
                return Err(src.error(
                    cpus.span(),
                    "runtime.cpus",
                    format!(
                        "names {} CPU(s) but shards = {}; name one CPU per shard",
                        cpus.get_ref().len(),
                        cfg.shards
                    ),
                ));
            }
            cfg.cpus = cpus.into_inner();
        }
        cfg.spin_before_park = rt
            .spin_before_park_us
            .filter(|us| *us > 0)
            .map(Duration::from_micros);
        if let Some(d) = rt.ring_depth {
            if !(8..=32_768).contains(d.get_ref()) {
                return Err(src.error(d.span(), "runtime.ring_depth", "must be from 8 to 32768"));
            }
            cfg.ring_depth = Some(*d.get_ref());
        }
        if let Some(m) = rt.io_memory_bytes {
            if *m.get_ref() < 64 * 1024 {
                return Err(src.error(
                    m.span(),
                    "runtime.io_memory_bytes",
                    "must be at least 65536",
                ));
            }
            cfg.io_memory = Some(*m.get_ref());
        }
        if let Some(p) = rt.preempt_timer_ms {
            cfg.preempt_timer = Some(positive_ms(&src, &p, "runtime.preempt_timer_ms")?);
        }
        if let Some(c) = rt.connection_latency_ms {
            cfg.connection_latency = positive_ms(&src, &c, "runtime.connection_latency_ms")?;
        }
        if let Some(h) = rt.heartbeat_ms {
            if *h.get_ref() > MAX_HEARTBEAT_MS {
                return Err(src.error(
                    h.span(),
                    "runtime.heartbeat_ms",
                    format!("must be at most {MAX_HEARTBEAT_MS}"),
                ));
            }
            cfg.heartbeat = positive_ms(&src, &h, "runtime.heartbeat_ms")?;
        }
        if let Some(s) = rt.poll_spin_us {
            cfg.poll_spin = super::pump_window(*s.get_ref(), super::MAX_POLL_SPIN_US)
                .map_err(|e| src.error(s.span(), "runtime.poll_spin_us", e))?;
        }
        if let Some(w) = rt.poll_wait_us {
            cfg.poll_wait = super::pump_window(*w.get_ref(), super::MAX_POLL_WAIT_US)
                .map_err(|e| src.error(w.span(), "runtime.poll_wait_us", e))?;
        }
        if let Some(t) = rt.transparent_hugepages {
            cfg.transparent_hugepages = t;
        }
    }
    for (name, value) in file.limits.unwrap_or_default() {
        set_limit_value(&mut cfg.limits, &name, *value.get_ref())
            .map_err(|e| src.error(value.span(), &format!("limits.{name}"), e))?;
    }
    if let Some(c) = file.cache {
        if let Some(n) = c.file_bytes {
            cfg.cache.file_bytes = n;
        }
        if let Some(n) = c.trees {
            if *n.get_ref() == 0 {
                return Err(src.error(n.span(), "cache.trees", "must be at least 1"));
            }
            cfg.cache.trees = *n.get_ref();
        }
        if let Some(n) = c.db_statements {
            cfg.cache.db_statements = n;
        }
        if let Some(n) = c.db_idle_connections {
            cfg.cache.db_idle_connections = n;
        }
        if let Some(n) = c.query_results {
            cfg.cache.query_results = n;
        }
        if let Some(n) = c.query_result_bytes {
            cfg.cache.query_result_bytes = n;
        }
        if let Some(n) = c.search_patterns {
            cfg.cache.search_patterns = n;
        }
    }
    let known: Vec<&str> = crate::tools::Registry::builtin()
        .tools()
        .map(|t| t.spec().name)
        .collect();
    for (name, tool) in file.tools.unwrap_or_default() {
        if !known.contains(&name.as_str()) {
            return Err(src.error(
                tool.span(),
                &format!("tools.{name}"),
                format!("no such tool; tools: {}", known.join(", ")),
            ));
        }
        let t = tool.into_inner();
        let mut tc = ToolConfig::default();
        if let Some(e) = t.enabled {
            tc.enabled = e;
        }
        if let Some(c) = t.cache {
            tc.cache = c;
        }
        if let Some(ms) = t.timeout_ms {
            tc.timeout = Some(positive_ms(&src, &ms, &format!("tools.{name}.timeout_ms"))?);
        }
        cfg.tools.insert(name, tc);
    }
    Ok(cfg)
}

fn positive_ms(src: &Source<'_>, v: &Spanned<u64>, key: &str) -> Result<Duration, String> {
    match *v.get_ref() {
        0 => Err(src.error(v.span(), key, "must be greater than 0")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("/etc/coremcp.toml"), text).unwrap_err()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("listen = \"127.0.0.1:0\"\n\nbogus = 1\n");
        assert!(e.starts_with("/etc/coremcp.toml:3: "), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = err("[limits]\nmax_body_bytes = 1\nmax_bodee_bytes = 2\n");
        assert!(
            e.starts_with("/etc/coremcp.toml:3: limits.max_bodee_bytes: unknown limit"),
            "{e}"
        );
        let e = err("timeout_ms = \"fast\"\n");
        assert!(
            e.starts_with("/etc/coremcp.toml:1: timeout_ms: invalid type"),
            "{e}"
        );
        let e = err("[cache]\n# c\ntrees = -1\n");
        assert!(e.starts_with("/etc/coremcp.toml:3: cache.trees: "), "{e}");
        let e = err("listen = \"localhost\"\n");
        assert!(e.starts_with("/etc/coremcp.toml:1: listen: "), "{e}");
        let e = err("[tools.read_fil]\nenabled = false\n");
        assert!(e.contains(":1: tools.read_fil: no such tool"), "{e}");
        let e = err("[tools.read_file]\nenabled = false\ncache = 3\n");
        assert!(
            e.starts_with("/etc/coremcp.toml:3: ") && e.contains("cache"),
            "{e}"
        );
        let e = err("[runtime]\nheartbeat_ms = 0\n");
        assert!(
            e.starts_with("/etc/coremcp.toml:2: runtime.heartbeat_ms: must be greater than 0"),
            "{e}"
        );
        let e = err("[runtime]\npoll_spin_us = 10001\n");
        assert!(
            e.contains(":2: runtime.poll_spin_us: must be at most 10000"),
            "{e}"
        );
        let e = err("[runtime]\npoll_wait_us = 10001\n");
        assert!(
            e.contains(":2: runtime.poll_wait_us: must be at most 10000"),
            "{e}"
        );
        let e = err("[limits]\nlisten_backlog = 2147483648\n");
        assert!(
            e.contains(
                ":2: limits.listen_backlog: limit listen_backlog must be at most 2147483647"
            ),
            "{e}"
        );
        let e = err("[runtime]\nheartbeat_ms = 5000\n");
        assert!(
            e.contains(":2: runtime.heartbeat_ms: must be at most 1000"),
            "{e}"
        );
        let e = err("roots = [\"/nonexistent-coremcp-root\"]\n");
        assert!(
            e.contains(":1: roots: root /nonexistent-coremcp-root: "),
            "{e}"
        );
    }

    #[test]
    fn every_key_lands_in_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let path = dir.path().join("c.toml");
        let cfg = parse(
            &path,
            r#"
listen = "127.0.0.1:9000"
shards = 2
roots = ["src"]
timeout_ms = 5000
shutdown_timeout_ms = 2000
log_level = "debug"
allowed_hosts = ["mcp.internal"]
allowed_origins = ["https://agents.internal"]
[runtime]
cpus = [0, 1]
spin_before_park_us = 50
ring_depth = 256
preempt_timer_ms = 10
connection_latency_ms = 2
heartbeat_ms = 5
poll_spin_us = 100
poll_wait_us = 250
transparent_hugepages = true
[limits]
max_body_bytes = 1024
idle_timeout = 500
listen_backlog = 16
[cache]
file_bytes = 1048576
trees = 4
search_patterns = 3
[tools.query_db]
enabled = false
[tools.search_code]
timeout_ms = 100
"#,
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.shards, 2);
        assert_eq!(cfg.roots, [dir.path().join("src").canonicalize().unwrap()]);
        assert_eq!(cfg.timeout, Duration::from_secs(5));
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(cfg.log_level, Some(Level::Debug));
        assert_eq!(cfg.cpus, [0, 1]);
        assert_eq!(cfg.spin_before_park, Some(Duration::from_micros(50)));
        assert_eq!(cfg.ring_depth, Some(256));
        assert_eq!(cfg.preempt_timer, Some(Duration::from_millis(10)));
        assert_eq!(cfg.connection_latency, Duration::from_millis(2));
        assert_eq!(cfg.heartbeat, Duration::from_millis(5));
        assert_eq!(cfg.poll_spin, Duration::from_micros(100));
        assert_eq!(cfg.poll_wait, Duration::from_micros(250));
        assert!(cfg.transparent_hugepages);
        assert_eq!(cfg.limits.max_body_bytes, 1024);
        assert_eq!(cfg.limits.idle_timeout, Duration::from_millis(500));
        assert_eq!(cfg.limits.listen_backlog, 16);
        assert_eq!(cfg.cache.file_bytes, 1 << 20);
        assert_eq!(cfg.cache.trees, 4);
        assert_eq!(cfg.cache.search_patterns, 3);
        assert!(!cfg.tool_enabled("query_db"));
        assert!(cfg.tool_enabled("read_file"));
        assert_eq!(cfg.tool_timeout("search_code"), Duration::from_millis(100));
        assert_eq!(cfg.tool_timeout("read_file"), Duration::from_secs(5));
        assert_eq!(cfg.access.allowed_hosts, ["mcp.internal"]);
    }
}
