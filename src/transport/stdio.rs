//! stdio: one client, newline-delimited JSON-RPC on stdin and stdout.
//!
//! stdout carries nothing but MCP messages; every log line goes to stderr. Lines are
//! read on glommio's blocking thread so the shard stays free to run calls while the
//! client is quiet, and each message runs as its own task so that a slow call does
//! not hold up a `notifications/cancelled` for it. The process exits cleanly on EOF
//! once the calls in flight have answered.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, Write};
use std::rc::Rc;
use std::sync::Arc;

use glommio::{LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::dispatch::{self, Via};
use crate::protocol::jsonrpc::{self, ParseError, Parsed};
use crate::protocol::session::SessionTable;
use crate::shard::Shard;

/// Messages handled at once; the reader waits for a free place beyond it.
pub const MAX_STDIO_INFLIGHT: usize = 256;

/// What the blocking reader hands back: a line, a line too long, or the end.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

pub fn serve(config: Config) -> Result<(), String> {
    crate::server::huge_page_policy(&config);
    let config = Arc::new(config);
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("coremcp-stdio")
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(
            config.limits.blocking_threads,
        ))
        .spawn(move || async move { run(config).await })
        .map_err(|e| format!("cannot start the executor: {e}"))?;
    handle
        .join()
        .map_err(|e| format!("the stdio executor failed: {e}"))?
}

async fn run(config: Arc<Config>) -> Result<(), String> {
    // The stdio executor keeps glommio's 100 ms slice, which makes the lost
    // wakeup the heartbeat guards against rare here, but not impossible.
    crate::server::start_heartbeat(config.heartbeat);
    let sessions = Arc::new(SessionTable::new(1, 1, config.limits.session_idle));
    let names = crate::tools::Registry::configured(&config)
        .tools()
        .map(|t| t.spec().name)
        .collect();
    let metrics = Arc::new(crate::metrics::Metrics::new(names, 1, None));
    let shard = Rc::new(Shard::new(0, config.clone(), sessions, None, metrics)?);
    let negotiated: Rc<Cell<Option<u8>>> = Rc::new(Cell::new(None));
    let out = Rc::new(RefCell::new(std::io::stdout()));
    let slots = Rc::new(glommio::sync::Semaphore::new(MAX_STDIO_INFLIGHT as u64));
    let max_line = config.limits.max_stdio_line_bytes;
    let mut reader = Some(std::io::BufReader::new(std::io::stdin()));
    crate::log!(
        Info,
        format!("coremcp {} serving MCP on stdio", env!("CARGO_PKG_VERSION")),
        roots = config
            .roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(","),
        databases = config
            .databases
            .iter()
            .map(|d| format!("{}={}", d.name, d.path.display()))
            .collect::<Vec<_>>()
            .join(","),
    );

    loop {
        let r = reader
            .take()
            .expect("the reader is returned after every line");
        let (line, r) = crate::shard::offload(move || {
            let mut r = r;
            let line = read_line(&mut r, max_line);
            (line, r)
        })
        .await;
        reader = Some(r);
        let line = match line {
            Line::Eof => break,
            Line::TooLong => {
                let mut buf = Vec::new();
                dispatch::write_parse_error(
                    &mut buf,
                    jsonrpc::PARSE_ERROR,
                    &format!("message longer than {max_line} bytes (limits.max_stdio_line_bytes)"),
                );
                write_line(&out, &buf);
                continue;
            }
            Line::Text(t) => t,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let permit = slots
            .acquire_static_permit(1)
            .await
            .map_err(|e| format!("semaphore: {e}"))?;
        let (shard, negotiated, out) = (shard.clone(), negotiated.clone(), out.clone());
        glommio::spawn_local(async move {
            let mut buf = Vec::new();
            handle_line(&shard, &negotiated, &line, &mut buf).await;
            if !buf.is_empty() {
                write_line(&out, &buf);
            }
            drop(permit);
        })
        .detach();
    }
    // EOF: let the calls in flight answer before exiting.
    let _ = slots.acquire(MAX_STDIO_INFLIGHT as u64).await;
    Ok(())
}

async fn handle_line(shard: &Shard, negotiated: &Cell<Option<u8>>, line: &[u8], out: &mut Vec<u8>) {
    let via = Via::Stdio {
        negotiated: negotiated.get(),
    };
    match jsonrpc::parse(line, shard.config.limits.max_json_depth) {
        Err(ParseError::Json(e)) => dispatch::write_parse_error(out, jsonrpc::PARSE_ERROR, &e),
        Err(ParseError::Shape(e)) => dispatch::write_parse_error(out, jsonrpc::INVALID_REQUEST, &e),
        Ok(Parsed::Single(msg)) => {
            let outcome = dispatch::handle(shard, &via, &msg, out).await;
            if let Some(v) = outcome.negotiated {
                negotiated.set(Some(v));
            }
        }
        Ok(Parsed::Batch(msgs)) => {
            let allowed = negotiated
                .get()
                .is_some_and(crate::protocol::era::allows_batches);
            let max = shard.config.limits.max_batch;
            let refusal = if !allowed || msgs.is_empty() {
                Some(
                    "JSON-RPC batches are allowed only in protocol revision 2025-03-26".to_string(),
                )
            } else if msgs.len() > max {
                Some(format!(
                    "a batch may hold at most {max} messages (limits.max_batch)"
                ))
            } else {
                None
            };
            if let Some(why) = refusal {
                jsonrpc::write_error(out, None, jsonrpc::INVALID_REQUEST, &why, None);
                return;
            }
            dispatch::handle_batch(shard, &via, &msgs, out).await;
        }
    }
}

fn read_line(r: &mut impl BufRead, max: usize) -> Line {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Line::Eof,
        };
        if buf.is_empty() {
            return match (too_long, line.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Text(line),
            };
        }
        let (take, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        // Past the limit the rest of the line is skipped, never stored.
        if !too_long && line.len() + take <= max + 1 {
            line.extend_from_slice(&buf[..take]);
        } else {
            too_long = true;
            line = Vec::new();
        }
        r.consume(take);
        if done {
            return if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            };
        }
    }
}

fn write_line(out: &RefCell<std::io::Stdout>, msg: &[u8]) {
    let o = out.borrow_mut();
    let mut lock = o.lock();
    let _ = lock.write_all(msg);
    let _ = lock.write_all(b"\n");
    let _ = lock.flush();
}
