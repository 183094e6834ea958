//! Start-up: one pinned glommio executor per shard, each binding the listen address
//! with SO_REUSEPORT and owning its state.
//!
//! Start-up is all-or-nothing. Every shard reports back once it is bound (or why it
//! could not start); the process says which shard failed and exits non-zero rather
//! than serving with fewer shards than asked for, or exiting 0 in silence.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::sync::{CancellationToken, ForeignCancellation};
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::session::SessionTable;
use crate::shard::{CancelMsg, Shard, CANCEL_QUEUE};
use crate::tools::Registry;
use crate::transport::http;
use glommio::channels::channel_mesh::MeshBuilder;

/// glommio needs this much lockable memory for its rings.
const MIN_MEMLOCK_BYTES: u64 = 512 * 1024;
/// Blocking threads per shard by default (`limits.blocking_threads`), unpinned: slow SQLite queries, large file reads and
/// directory walks run there. One (glommio's default) would queue a second slow
/// query behind the first, and pinned ones would compete with the shards' CPUs.
pub const BLOCKING_THREADS_PER_SHARD: usize = 4;
/// How often a draining shard checks whether its requests have been answered.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// How often each shard ends its idle sessions.
const SESSION_SWEEP_MAX: Duration = Duration::from_secs(60);

/// What a shard reports when it is up.
struct Up {
    shard: usize,
    cpu: i32,
}

/// Serves until the process is stopped. Returns an error that says what failed.
pub fn serve(mut config: Config) -> Result<(), String> {
    huge_page_policy(&config);
    raise_fd_limit();
    check_memlock()?;
    // Before any thread exists, so that every shard inherits the mask and the
    // signals reach only the thread that waits for them.
    glommio::signal::block(&[libc::SIGTERM, libc::SIGINT])
        .map_err(|e| format!("cannot block SIGTERM/SIGINT: {e}"))?;
    let shards = if config.shards == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.shards
    };
    config.shards = shards;
    // Port 0 asks the kernel for a free port; every shard must then bind that same
    // port, so reserve one here first.
    let reservation = reserve_port(config.listen)?;
    config.listen = reservation
        .local_addr()
        .map_err(|e| format!("listen address: {e}"))?
        .as_socket()
        .expect("an inet socket");

    let placement = if config.cpus.is_empty() {
        PoolPlacement::MaxSpread(shards, None)
    } else {
        if config.cpus.len() != shards {
            return Err(format!(
                "--cpus names {} CPUs but {} shards were asked for; name one CPU per shard",
                config.cpus.len(),
                shards
            ));
        }
        let online = CpuSet::online().map_err(|e| format!("cannot read the online CPUs: {e}"))?;
        let mut sets = Vec::new();
        for &cpu in &config.cpus {
            let set = online.clone().filter(|l| l.cpu == cpu);
            if set.is_empty() {
                return Err(format!("CPU {cpu} is not online"));
            }
            sets.push(set);
        }
        PoolPlacement::Custom(sets)
    };

    let config = Arc::new(config);
    let sessions = Arc::new(SessionTable::new(
        config.limits.max_sessions,
        shards,
        config.limits.session_idle,
    ));
    let names = Registry::configured(&config)
        .tools()
        .map(|t| t.spec().name)
        .collect();
    let metrics = Arc::new(Metrics::new(names, shards, Some(sessions.clone())));
    let shutdown = watch_signals(metrics.clone())?;
    let (tx, rx) = mpsc::channel::<Result<Up, String>>();
    let next_index = Arc::new(AtomicUsize::new(0));
    let mesh: MeshBuilder<CancelMsg, _> = MeshBuilder::full(shards, CANCEL_QUEUE);
    let mut builder = LocalExecutorPoolBuilder::new(placement)
        .name("coremcp-shard")
        .blocking_thread_pool_placement(PoolPlacement::Unbound(config.limits.blocking_threads));
    if let Some(spin) = config.spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    if let Some(depth) = config.ring_depth {
        builder = builder.ring_depth(depth);
    }
    if let Some(bytes) = config.io_memory {
        builder = builder.io_memory(bytes);
    }
    if let Some(t) = config.preempt_timer {
        builder = builder.preempt_timer(t);
    }
    let pool = {
        let config = config.clone();
        builder
            .on_all_shards(move || {
                let config = config.clone();
                let sessions = sessions.clone();
                let tx = tx.clone();
                let index = next_index.fetch_add(1, Ordering::Relaxed);
                let mesh = mesh.clone();
                let metrics = metrics.clone();
                let shutdown = shutdown.clone();
                async move { run_shard(index, config, sessions, mesh, tx, metrics, shutdown).await }
            })
            .map_err(|e| format!("cannot start the shards: {e}"))?
    };
    let mut up = Vec::with_capacity(shards);
    for _ in 0..shards {
        match rx.recv() {
            Ok(Ok(u)) => up.push(u),
            Ok(Err(why)) => return Err(why),
            Err(_) => break,
        }
    }
    if up.len() < shards {
        // A shard died without reporting; its join result says why.
        for r in pool.join_all() {
            if let Err(e) = r {
                return Err(format!("a shard failed to start: {e}"));
            }
        }
        return Err("a shard failed to start".into());
    }
    drop(reservation);
    up.sort_by_key(|u| u.shard);
    let cpus: Vec<String> = up
        .iter()
        .map(|u| format!("{}:cpu{}", u.shard, u.cpu))
        .collect();
    let roots = config
        .roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let databases = if config.databases.is_empty() {
        "none".to_string()
    } else {
        config
            .databases
            .iter()
            .map(|d| format!("{}={}", d.name, d.path.display()))
            .collect::<Vec<_>>()
            .join(",")
    };
    // Tests and scripts find the address in "listening on http://ADDR/mcp".
    crate::log!(
        Info,
        format!(
            "coremcp {} listening on http://{}/mcp",
            env!("CARGO_PKG_VERSION"),
            config.listen
        ),
        listen = config.listen,
        shards = shards,
        cpus = cpus.join(","),
        roots = roots,
        databases = databases,
        timeout_ms = config.timeout.as_millis(),
        tools = Registry::configured(&config)
            .tools()
            .map(|t| t.spec().name)
            .collect::<Vec<_>>()
            .join(","),
    );
    for r in pool.join_all() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(why),
            Err(e) => return Err(format!("a shard stopped: {e}")),
        }
    }
    Ok(())
}

async fn run_shard(
    index: usize,
    config: Arc<Config>,
    sessions: Arc<SessionTable>,
    mesh: MeshBuilder<CancelMsg, glommio::channels::channel_mesh::Full>,
    tx: mpsc::Sender<Result<Up, String>>,
    metrics: Arc<Metrics>,
    shutdown: ForeignCancellation,
) -> Result<(), String> {
    let fail = |why: String| {
        let _ = tx.send(Err(why.clone()));
        Err(why)
    };
    // Before the first await, so that it also covers start-up (the mesh join
    // below spins on runnable tasks while the other shards arrive).
    start_heartbeat(config.heartbeat);
    let listener = match http::Listener::bind(config.listen, config.limits.listen_backlog) {
        Ok(l) => l,
        Err(e) => {
            return fail(format!(
                "shard {index}: cannot listen on {}: {e}",
                config.listen
            ))
        }
    };
    let (peers, mut inbox) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => return fail(format!("shard {index}: cannot join the other shards: {e}")),
    };
    let shard = match Shard::new(index, config.clone(), sessions, Some(peers), metrics) {
        Ok(s) => Rc::new(s),
        Err(e) => return fail(format!("shard {index}: {e}")),
    };
    for (_, rx) in inbox.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some((ns, id)) = rx.recv().await {
                shard.inflight.cancel(ns, &id);
            }
        })
        .detach();
    }
    let readiness = match http::Readiness::new() {
        Ok(r) => r,
        Err(e) => return fail(format!("shard {index}: cannot create its epoll set: {e}")),
    };
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    // Bound and listening: connections queue in the backlog from here on.
    shard.m().serving.store(true, Ordering::Release);
    let _ = tx.send(Ok(Up { shard: index, cpu }));
    drop(tx);

    let sweep = (config.limits.session_idle / 4).clamp(Duration::from_secs(1), SESSION_SWEEP_MAX);
    let sweeper = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(sweep).await;
            sweeper.sessions.expire_idle(sweeper.id);
        }
    })
    .detach();
    let stop = shutdown.attach();
    http::accept_loop(shard.clone(), listener, readiness, &stop).await;
    drain(&shard).await;
    Ok(())
}

/// After the listener is closed: wait for the requests this shard has read to be
/// answered, up to the shutdown deadline, then cancel what is left.
async fn drain(shard: &Shard) {
    shard.m().serving.store(false, Ordering::Release);
    shard.draining.set(true);
    let deadline = Instant::now() + shard.config.shutdown_timeout;
    while shard.busy.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(DRAIN_POLL).await;
    }
    let left = shard.busy.get();
    if left > 0 {
        let cancelled = shard.inflight.cancel_all();
        crate::log!(
            Warn,
            "shutdown deadline passed; cancelling the calls still running",
            shard = shard.id,
            requests = left,
            calls = cancelled,
            shutdown_timeout_ms = shard.config.shutdown_timeout.as_millis(),
        );
        // Let the cancelled calls write their answers.
        let grace = Instant::now() + DRAIN_POLL * 20;
        while shard.busy.get() > 0 && Instant::now() < grace {
            glommio::timer::sleep(DRAIN_POLL).await;
        }
    }
    crate::log!(Debug, "shard drained", shard = shard.id);
}

/// Waits for SIGTERM/SIGINT on a thread of its own; the returned handle is
/// cancelled when one arrives. A second signal exits at once.
fn watch_signals(metrics: Arc<Metrics>) -> Result<ForeignCancellation, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("coremcp-signals".into())
        .spawn(move || {
            let token = CancellationToken::new();
            let _ = tx.send(token.foreign_child());
            let sig = wait_for_signal();
            crate::log!(
                Info,
                "draining: no new connections; calls in flight may finish",
                signal = signal_name(sig),
            );
            metrics.draining.store(true, Ordering::Release);
            token.cancel();
            let sig = wait_for_signal();
            crate::log!(
                Warn,
                "second signal: exiting now",
                signal = signal_name(sig)
            );
            std::process::exit(1);
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the signal thread failed to start".to_string())
}

fn wait_for_signal() -> i32 {
    // SAFETY: the set is initialised by sigemptyset before use; sigwait writes sig.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let mut sig = 0;
        while libc::sigwait(&set, &mut sig) != 0 {}
        sig
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "other",
    }
}

/// Keeps a timer armed on the shard at every moment, forever.
///
/// glommio-ng 0.12's scheduler can park the shard in `io_uring_enter` while one
/// of its tasks is runnable. The executor arms its preemption timer with a
/// syscall, and the return from a syscall is where the kernel switches to
/// another thread on the CPU; if this thread is then kept off the CPU for a
/// whole slice, the timer has fired before the first task queue is looked at,
/// the round runs nothing, and a round that ran nothing is taken to mean there
/// is nothing to run. Parked, the shard waits for the next completion on its
/// rings, which on an idle shard may never come: a connection whose request has
/// arrived, or the mesh join at start-up, stalls for good. With a 1 ms slice
/// and a busy CPU this is common; `examples/lost_wakeup.rs` reproduces it.
///
/// A parking shard arms a wake-up for the earliest timer in its wheel, so a
/// timer always armed turns "for good" into "until it fires". One timer is not
/// always armed, though: once it fires, the task that would arm the next one
/// has to run first, and that is the very thing a lost wakeup prevents (the
/// thread may also have been off the CPU for several periods, and all of those
/// timers fired at once). So the heartbeat keeps a ladder of
/// [`HEARTBEAT_RUNGS`] timers, due after 1, 2, 4, … periods, and rebuilds it
/// whenever the first one fires: the shard stays covered through that many
/// failed rounds in a row, or an absence from the CPU of up to 2^(rungs-1)
/// periods. It costs one wake-up per period
/// ([`crate::config::DEFAULT_HEARTBEAT_MS`]) of an idle shard. The ladder is
/// armed before this returns, so a caller that has not yet awaited anything is
/// covered from its first await on.
pub fn start_heartbeat(period: Duration) {
    assert!(
        period > Duration::ZERO,
        "a zero period would spin the shard"
    );
    let mut ladder: [_; HEARTBEAT_RUNGS] = arm_ladder(period);
    glommio::spawn_local(async move {
        loop {
            // Only the first rung wakes this task; the others are there to
            // wake the executor, and need no waker of their own.
            (&mut ladder[0]).await;
            ladder = arm_ladder(period);
        }
    })
    .detach();
}

/// Timers of the heartbeat's ladder ([`start_heartbeat`]).
const HEARTBEAT_RUNGS: usize = 12;

/// `N` timers due 1, 2, 4, … periods from now, each already in the wheel: a
/// parking shard arms a wake-up for the earliest ([`start_heartbeat`]).
pub(crate) fn arm_ladder<const N: usize>(period: Duration) -> [glommio::timer::Timer; N] {
    std::array::from_fn(|rung| {
        let mut timer = glommio::timer::Timer::new(period * (1 << rung));
        // A rung already due (the thread was off the CPU since `new`) is simply
        // not armed: a later one is.
        let _ = poll_timer(&mut timer);
        timer
    })
}

/// Polls `timer` with no one to wake: the first poll is what puts a timer in
/// the wheel (the executor wakes for it whoever waits). True once it has fired.
pub(crate) fn poll_timer(timer: &mut glommio::timer::Timer) -> bool {
    use std::future::Future;
    use std::task::{Context, Waker};
    std::pin::Pin::new(timer)
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_ready()
}

/// Binds (without listening) a SO_REUSEPORT socket to resolve port 0 and hold the
/// port while the shards bind it.
fn reserve_port(addr: SocketAddr) -> Result<socket2::Socket, String> {
    let sock = http::bind_shared(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    if addr.port() != 0 && port_has_listener(addr) {
        return Err(format!(
            "cannot listen on {addr}: another process already listens there (SO_REUSEPORT would share its traffic); stop it or pick another --listen"
        ));
    }
    Ok(sock)
}

/// True when something already accepts connections on `addr`.
fn port_has_listener(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn raise_fd_limit() {
    // Thousands of idle keep-alive connections need as many descriptors.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Turns transparent huge pages off for this process unless the configuration
/// allows them (config::DEFAULT_TRANSPARENT_HUGEPAGES says why). Process-wide
/// and inherited by every thread, so it is set before the shards start; pages
/// already collapsed stay huge, and at start-up there are next to none.
pub fn huge_page_policy(config: &Config) {
    if config.transparent_hugepages {
        return;
    }
    // SAFETY: prctl with integer arguments only; it changes a flag of this
    // process's memory map.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        crate::log!(
            Warn,
            "cannot turn transparent huge pages off for this process; khugepaged may stall the shards",
            error = std::io::Error::last_os_error()
        );
    }
}

fn check_memlock() -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur < MIN_MEMLOCK_BYTES && lim.rlim_max >= MIN_MEMLOCK_BYTES {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
            libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim);
        }
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < MIN_MEMLOCK_BYTES {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB; io_uring needs at least {} KiB: run `ulimit -l {}` or set LimitMEMLOCK in the systemd unit (see tuning/)",
            lim.rlim_cur / 1024,
            MIN_MEMLOCK_BYTES / 1024,
            MIN_MEMLOCK_BYTES / 1024
        ));
    }
    Ok(())
}
