//! Reproduces a lost wakeup in glommio-ng 0.12's scheduler: an executor that
//! parks in `io_uring_enter` while its only task is runnable.
//!
//! ```text
//! cargo run --release --example lost_wakeup -- [SLICE_MS] [SECONDS] [HEARTBEAT_MS]
//! ```
//!
//! One task yields forever, so it is always runnable and the executor should
//! never park. Spinner threads share the executor's CPU so that the executor
//! thread is descheduled at random points for milliseconds, as on a busy VM.
//! When the preemption timer (SLICE_MS, default 1) fires between the executor
//! arming it and checking it before its first task queue, that round runs
//! nothing, the executor takes the empty round to mean "nothing to run", and it
//! parks with no I/O pending: the task never runs again. This program then
//! prints where each thread waits (the executor's is `io_cqring_wait`) and
//! exits 1; usually within seconds.
//!
//! The spinners make the failure common: the executor arms its preemption
//! timer with a syscall, and a syscall's return is where the kernel hands the
//! CPU to a waiting spinner for a few milliseconds.
//!
//! With HEARTBEAT_MS, the executor also runs coremcp's shard heartbeat
//! (`coremcp::server::start_heartbeat`, `runtime.heartbeat_ms`), which keeps a
//! timer armed at every moment: a parking executor arms a wake-up for it, so
//! each stall ends when it fires, and the program runs to the end and exits 0.
//!
//! Needs two CPUs (it uses CPU 1) and root or enough memlock for io_uring.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The CPU the executor and the spinners share.
const CPU: usize = 1;
/// Threads that compete with the executor for its CPU.
const SPINNERS: u64 = 4;
/// Longest burst a spinner spins, and longest it then sleeps.
const MAX_BURST: Duration = Duration::from_millis(3);
/// How long the task may make no progress before the executor counts as stuck.
const STUCK_AFTER: Duration = Duration::from_secs(2);
/// How often the main thread looks at the task's progress.
const CHECK_EVERY: Duration = Duration::from_millis(100);

static POLLS: AtomicU64 = AtomicU64::new(0);

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and both calls only read
    // and write the set they are given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn spin_and_sleep(seed: u64) -> ! {
    pin_to(CPU);
    let max = MAX_BURST.as_micros() as u64;
    let mut x = seed;
    loop {
        // xorshift: random burst and pause lengths, no dependency needed.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let burst = Duration::from_micros(x % max);
        let start = Instant::now();
        while start.elapsed() < burst {
            std::hint::spin_loop();
        }
        std::thread::sleep(Duration::from_micros((x >> 20) % max));
    }
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map(|s| s.parse().expect("arguments are whole numbers"))
        .unwrap_or(default)
}

fn main() {
    let slice = Duration::from_millis(arg(1, 1));
    let seconds = Duration::from_secs(arg(2, 30));
    let heartbeat = Duration::from_millis(arg(3, 0));
    for k in 0..SPINNERS {
        std::thread::Builder::new()
            .name(format!("spinner-{k}"))
            .spawn(move || spin_and_sleep(0x9E37_79B9_7F4A_7C15 ^ (k + 1)))
            .expect("cannot start a spinner thread");
    }
    let _executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(CPU))
        .preempt_timer(slice)
        .spawn(move || async move {
            if !heartbeat.is_zero() {
                coremcp::server::start_heartbeat(heartbeat);
            }
            loop {
                POLLS.fetch_add(1, Ordering::Relaxed);
                futures_lite::future::yield_now().await;
            }
        })
        .expect("cannot start the executor (memlock? CPU 1?)");
    let start = Instant::now();
    let (mut last, mut since) = (0, Instant::now());
    while start.elapsed() < seconds {
        std::thread::sleep(CHECK_EVERY);
        let polls = POLLS.load(Ordering::Relaxed);
        if polls != last {
            (last, since) = (polls, Instant::now());
        } else if since.elapsed() >= STUCK_AFTER {
            println!(
                "stuck after {:.1?}: the runnable task has not been polled for {STUCK_AFTER:?}",
                start.elapsed()
            );
            for task in std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
            {
                let read = |f| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
                println!(
                    "  thread {:<16} waits in {}",
                    read("comm").trim(),
                    read("wchan")
                );
            }
            std::process::exit(1);
        }
    }
    println!("not stuck: {last} polls in {seconds:?} (slice {slice:?}, heartbeat {heartbeat:?})");
}
