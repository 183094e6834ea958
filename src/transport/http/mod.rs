//! Streamable HTTP over HTTP/1.1: the accept loop of one shard.
//!
//! [`frame`] knows the wire format, [`conn`] drives one connection, [`route`] picks
//! the handler, [`access`] guards against DNS rebinding.

pub mod access;
pub mod conn;
pub mod deadlines;
pub mod direct;
pub mod frame;
pub mod readiness;
pub mod route;
pub mod slots;
pub mod sse;

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpListener;
use glommio::sync::CancellationToken;

use crate::shard::Shard;
pub use readiness::Readiness;

/// Pause after an accept error such as EMFILE, so that a shard out of descriptors
/// does not spin while connections close and free some.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// One shard's listening socket (`SO_REUSEPORT`: every shard binds the same port
/// and the kernel spreads connections among them).
///
/// It keeps its descriptor so that [`accept_loop`] can take it off the port
/// the moment shutdown starts. Closing it is not enough: the accept waiting in
/// glommio's io_uring holds the socket too, and a ring torn down as the process
/// exits lets go of it later, from a kernel worker. Until then the port still
/// takes connections that nobody will answer, and a server restarted at once
/// finds it in use and refuses to start.
pub struct Listener {
    inner: TcpListener,
    fd: RawFd,
}

impl Listener {
    /// Binds and listens on `addr`, with room for `backlog` connections not
    /// yet accepted (`limits.listen_backlog`).
    pub fn bind(addr: SocketAddr, backlog: usize) -> std::io::Result<Listener> {
        let sock = bind_shared(addr)?;
        sock.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        let fd = sock.into_raw_fd();
        // SAFETY: `fd` is a bound, listening TCP socket that nothing else owns;
        // glommio makes it non-blocking and closes it when the listener drops.
        let inner = unsafe { TcpListener::from_raw_fd(fd) };
        Ok(Listener { inner, fd })
    }

    /// Stops listening, at once: the port is free for another server when this
    /// returns, and connections queued but not yet accepted are reset (their
    /// clients retry elsewhere) rather than left to time out.
    fn stop(&self) {
        // SAFETY: `fd` stays open as long as `inner`, which `self` owns; on a
        // listening socket shutdown(2) only ends the listening.
        let r = unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        debug_assert!(
            r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN),
            "shutdown of a listening socket: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A TCP socket bound to `addr` with `SO_REUSEPORT`, so that every shard's
/// listener, and the reservation `server` holds while they start, share one port.
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// Counts a shard's open connections; the count drops when the guard does, even
/// if the connection's task ends by a panic.
struct Open(Rc<Cell<usize>>, Rc<Shard>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
        self.1.m().connections.sub(1);
    }
}

/// Accepts connections on this shard's listener until `stop` is cancelled
/// (shutdown); the listener is off its port when this returns. `readiness` is the
/// shard's epoll set, made at start-up so that failing to make it stops the
/// start, not the shard.
pub async fn accept_loop(
    shard: Rc<Shard>,
    listener: Listener,
    readiness: Rc<Readiness>,
    stop: &CancellationToken,
) {
    let open = Rc::new(Cell::new(0usize));
    let limits = &shard.config.limits;
    let max = limits.max_connections_per_shard;
    // Connections, and what they spawn, run in their own queue: its latency is
    // the short slice a loaded shard needs (config::DEFAULT_CONNECTION_LATENCY_MS),
    // while start-up and background work keep glommio's long one.
    let connections = glommio::executor().create_task_queue(
        glommio::Shares::default(),
        glommio::Latency::Matters(shard.config.connection_latency),
        "connections",
    );
    let deadlines = deadlines::Deadlines::new(&[limits.idle_timeout, limits.header_timeout]);
    glommio::spawn_local(deadlines.clone().sweep()).detach();
    // The pump runs among the connections it wakes, so that it looks for more
    // only once those have had their turn.
    spawn_connection(
        connections,
        readiness.clone().pump(
            shard.config.poll_spin,
            shard.config.poll_wait,
            shard.config.connection_latency,
        ),
    );
    loop {
        let accepted =
            futures_lite::future::or(async { Some(listener.inner.accept().await) }, async {
                stop.cancelled().await;
                None
            })
            .await;
        let Some(accepted) = accepted else {
            listener.stop();
            return;
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                crate::log!(Warn, "accept failed", shard = shard.id, error = e);
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if open.get() >= max {
            // Answer rather than leave the client in the backlog: it can retry or
            // go to another server.
            let why = "too many open connections on this shard (limits.max_connections_per_shard)";
            refuse_connection(&shard, connections, stream, why.into());
            continue;
        }
        let watch = match readiness.watch(std::os::fd::AsRawFd::as_raw_fd(&stream)) {
            Ok(w) => w,
            Err(e) => {
                // ENOMEM, or the user's epoll watches (fs.epoll.max_user_watches) used up.
                crate::log!(
                    Warn,
                    "cannot watch a new connection",
                    shard = shard.id,
                    error = e
                );
                let why = format!("the server cannot watch another connection: {e}");
                refuse_connection(&shard, connections, stream, why);
                continue;
            }
        };
        open.set(open.get() + 1);
        shard.m().connections.add(1);
        let guard = Open(open.clone(), shard.clone());
        let shard = shard.clone();
        let deadline = deadlines.register();
        spawn_connection(connections, async move {
            conn::serve(shard, stream, deadline, watch).await;
            drop(guard);
        });
    }
}

/// Answers a connection this shard will not serve with a 503 saying why, and closes it.
fn refuse_connection(
    shard: &Shard,
    queue: glommio::TaskQueueHandle,
    mut stream: glommio::net::TcpStream,
    why: String,
) {
    let mut out = Vec::new();
    route::write_plain_error(&mut out, 503, &why, false, &[]);
    shard.m().status(503);
    spawn_connection(queue, async move {
        let _ = send_all(&mut stream, &out).await;
    });
}

/// Runs a connection's future in the connections' task queue.
fn spawn_connection(
    queue: glommio::TaskQueueHandle,
    future: impl std::future::Future<Output = ()> + 'static,
) {
    glommio::spawn_local_into(future, queue)
        .expect("the connections' queue is created before the first accept and never removed")
        .detach();
}

/// Writes all of `bytes` to a client. A write the socket cannot take at once
/// waits on glommio for room: it holds a [`crate::shard::Elsewhere`] so that the
/// epoll pump does not sleep through that (config::DEFAULT_POLL_WAIT_US).
pub(crate) async fn send_all(
    stream: &mut glommio::net::TcpStream,
    bytes: &[u8],
) -> std::io::Result<()> {
    let _away = crate::shard::Elsewhere::enter();
    stream.write_all(bytes).await
}
