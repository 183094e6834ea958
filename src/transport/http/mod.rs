//! Streamable HTTP over HTTP/1.1: the accept loop of one shard.
//!
//! [`frame`] knows the wire format, [`conn`] drives one connection, [`route`] picks
//! the handler, [`access`] guards against DNS rebinding.

pub mod access;
pub mod conn;
pub mod frame;
pub mod route;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpListener;

use crate::shard::Shard;

/// Pause after an accept error such as EMFILE, so that a shard out of descriptors
/// does not spin while connections close and free some.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Counts a shard's open connections; the count drops when the guard does, even
/// if the connection's task ends by a panic.
struct Open(Rc<Cell<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Accepts connections on this shard's listener until the process ends.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let open = Rc::new(Cell::new(0usize));
    let max = shard.config.limits.max_connections_per_shard;
    loop {
        let mut stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("coremcp: shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if open.get() >= max {
            // Answer rather than leave the client in the backlog: it can retry or
            // go to another server.
            let mut out = Vec::new();
            route::write_plain_error(
                &mut out,
                503,
                "too many open connections on this shard (limits.max_connections_per_shard)",
                false,
                &[],
            );
            glommio::spawn_local(async move {
                let _ = stream.write_all(&out).await;
            })
            .detach();
            continue;
        }
        open.set(open.get() + 1);
        let guard = Open(open.clone());
        let shard = shard.clone();
        glommio::spawn_local(async move {
            conn::serve(shard, stream).await;
            drop(guard);
        })
        .detach();
    }
}
