//! The peer coremcp is measured against: `read_file`, `query_db` and `search_code`
//! with coremcp's argument names, on the official Rust SDK (rmcp) in its fastest
//! fair configuration — Streamable HTTP, stateless, JSON responses, one tokio
//! thread — with the same kind of caching a careful rmcp author would add:
//!
//! * files: a cache keyed by canonical path and validated on every hit by a
//!   `stat` fingerprint (device, inode, size, mtime, ctime), like coremcp's;
//! * SQLite: one read-only connection with a prepared-statement cache, queried
//!   inline (no thread hop for a point lookup);
//! * search: walks the tree with the `ignore` crate (ripgrep's rules) on every
//!   call, then reads each file through the file cache and searches it with memchr.
//!
//! Usage: `rmcp-peer --listen 127.0.0.1:PORT --root DIR --db FILE`.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Fingerprint = (u64, u64, u64, i64, i64, i64, i64);

fn fingerprint(m: &std::fs::Metadata) -> Fingerprint {
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// Shared by every request (the service factory builds a handler per request).
struct State {
    root: PathBuf,
    files: Mutex<HashMap<PathBuf, (Fingerprint, Arc<[u8]>)>>,
    db: Mutex<rusqlite::Connection>,
}

impl State {
    /// A client path, relative to the root or absolute, resolved and confined.
    fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        let joined = self.root.join(path);
        let real = joined
            .canonicalize()
            .map_err(|e| format!("cannot resolve `{path}`: {e}"))?;
        if !real.starts_with(&self.root) {
            return Err(format!("`{path}` is outside the allowed root"));
        }
        Ok(real)
    }

    /// The file's bytes: from the cache when its fingerprint is unchanged.
    fn read(&self, path: &Path) -> std::io::Result<Arc<[u8]>> {
        let meta = std::fs::metadata(path)?;
        let fp = fingerprint(&meta);
        if let Some((cached, bytes)) = self.files.lock().unwrap().get(path) {
            if *cached == fp {
                return Ok(bytes.clone());
            }
        }
        let bytes: Arc<[u8]> = std::fs::read(path)?.into();
        self.files
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), (fp, bytes.clone()));
        Ok(bytes)
    }
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct ReadFileArgs {
    /// File path, relative to the root or absolute inside it.
    path: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct QueryDbArgs {
    /// One read-only SQL statement.
    sql: String,
    /// Values for ?1, ?2 …
    #[serde(default)]
    params: Vec<Value>,
    /// Most rows to return (default 1000).
    #[serde(default)]
    max_rows: Option<usize>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct SearchArgs {
    /// Literal text to find.
    query: String,
    /// Directory to search, relative to the root (default: the root).
    #[serde(default)]
    path: Option<String>,
    /// Most matches to return (default 100).
    #[serde(default)]
    max_results: Option<usize>,
}

#[derive(Clone)]
struct Peer {
    state: Arc<State>,
    #[allow(dead_code)] // read by #[tool_handler]
    tool_router: ToolRouter<Peer>,
}

fn error(msg: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(msg)])
}

fn to_json(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => json!({ "bytes": b.len() }),
    }
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Bool(b) => S::Integer(*b as i64),
        Value::Number(n) => n.as_i64().map_or_else(|| S::Real(n.as_f64().unwrap_or(0.0)), S::Integer),
        Value::String(s) => S::Text(s.clone()),
        other => S::Text(other.to_string()),
    }
}

#[tool_router]
impl Peer {
    #[tool(description = "Read a text file inside the root.")]
    async fn read_file(&self, Parameters(a): Parameters<ReadFileArgs>) -> CallToolResult {
        let path = match self.state.resolve(&a.path) {
            Ok(p) => p,
            Err(e) => return error(e),
        };
        match self.state.read(&path) {
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
                Err(_) => error(format!("`{}` is not UTF-8 text", a.path)),
            },
            Err(e) => error(format!("cannot read `{}`: {e}", a.path)),
        }
    }

    #[tool(description = "Run one read-only SQL statement on the database.")]
    async fn query_db(&self, Parameters(a): Parameters<QueryDbArgs>) -> CallToolResult {
        let max_rows = a.max_rows.unwrap_or(1000);
        let db = self.state.db.lock().unwrap();
        let run = || -> rusqlite::Result<(Vec<String>, Vec<Vec<Value>>)> {
            let mut stmt = db.prepare_cached(&a.sql)?;
            let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
            let params: Vec<rusqlite::types::Value> = a.params.iter().map(to_sql).collect();
            let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                if out.len() == max_rows {
                    break;
                }
                let mut values = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    values.push(to_json(row.get_ref(i)?));
                }
                out.push(values);
            }
            Ok((columns, out))
        };
        match run() {
            Ok((columns, rows)) => {
                let mut text = serde_json::to_string(&columns).unwrap();
                text.push('\n');
                for r in &rows {
                    text.push_str(&serde_json::to_string(r).unwrap());
                    text.push('\n');
                }
                let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
                result.structured_content = Some(json!({"columns": columns, "rows": rows}));
                result
            }
            Err(e) => error(format!("SQLite error: {e}")),
        }
    }

    #[tool(description = "Search file contents under a directory (literal text), ripgrep rules.")]
    async fn search_code(&self, Parameters(a): Parameters<SearchArgs>) -> CallToolResult {
        let dir = match self.state.resolve(a.path.as_deref().unwrap_or(".")) {
            Ok(p) => p,
            Err(e) => return error(e),
        };
        let max = a.max_results.unwrap_or(100);
        let finder = memchr::memmem::Finder::new(a.query.as_bytes());
        let mut text = String::new();
        let mut matches = Vec::new();
        let mut searched = 0usize;
        'walk: for entry in ignore::WalkBuilder::new(&dir).build().flatten() {
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Ok(bytes) = self.state.read(entry.path()) else {
                continue;
            };
            if memchr::memchr(0, &bytes[..bytes.len().min(8192)]).is_some() {
                continue;
            }
            searched += 1;
            let display = entry
                .path()
                .strip_prefix(&self.state.root)
                .unwrap_or(entry.path())
                .display()
                .to_string();
            let mut pos = 0;
            while let Some(at) = finder.find(&bytes[pos..]).map(|i| i + pos) {
                if matches.len() == max {
                    break 'walk;
                }
                let start = memchr::memrchr(b'\n', &bytes[..at]).map_or(0, |i| i + 1);
                let end = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i);
                let line_no = memchr::memchr_iter(b'\n', &bytes[..start]).count() + 1;
                let line = String::from_utf8_lossy(&bytes[start..end]).into_owned();
                text.push_str(&format!("{display}:{line_no}: {line}\n"));
                matches.push(json!({"path": display, "line": line_no, "text": line}));
                pos = end + 1;
                if pos >= bytes.len() {
                    break;
                }
            }
        }
        let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
        result.structured_content = Some(json!({"matches": matches, "files_searched": searched}));
        result
    }
}

#[tool_handler]
impl ServerHandler for Peer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:7413".into());
    let root = PathBuf::from(arg(&args, "--root").expect("--root DIR")).canonicalize()?;
    let db_path = arg(&args, "--db").expect("--db FILE");
    let db = rusqlite::Connection::open_with_flags(
        &db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(std::io::Error::other)?;
    db.set_prepared_statement_cache_capacity(64);
    let state = Arc::new(State {
        root,
        files: Mutex::new(HashMap::new()),
        db: Mutex::new(db),
    });
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None);
    // Stateless mode asks the factory for a handler per request: build the tool
    // router (and its schemas) once and clone it, rather than per request as the
    // SDK's examples do.
    let prototype = Peer {
        state,
        tool_router: Peer::tool_router(),
    };
    let service: StreamableHttpService<Peer, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(prototype.clone()),
        Default::default(),
        config,
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("rmcp-peer listening on http://{listen}/mcp");
    axum::serve(listener, router).await
}
