//! An open-loop, fixed-rate HTTP/1.1 load generator that measures latency.
//!
//! Why it exists: on the 2-vCPU benchmark VM, `oha -q R --latency-correction` at
//! half of coremcp's maximum rate spends most of the load generator's CPU on
//! itself, and its queueing shows up as the server's latency: a hyper
//! hello-world server measured p99 4.2 ms / p99.9 10.7 ms that way. This tool does
//! the least work a fixed-rate client can: one thread, prebuilt request bytes, one
//! `write` per request, an epoll set registered once and waited on with a
//! microsecond timeout (`epoll_pwait2`) until the next due time, and no allocation
//! per request. (`ppoll` over the connections in flight registers a wait on each
//! of them per call: no dearer than epoll when every call sleeps, but far dearer
//! when `--spin-us` polls in a loop.)
//!
//! What it measures: request k is *due* at `t0 + k / rate`. Its latency runs from
//! its due time, not from when it was sent, to when its whole response was read
//! (coordinated-omission correction): a server that stalls, or a backlog of due
//! requests waiting for a free connection, shows up as latency. Each connection
//! carries one request at a time (keep-alive, no pipelining). Percentiles are
//! exact: every latency is kept (microseconds, `u32`) and sorted at the end.
//!
//! It also reports its own CPU use over the run (`cpu_busy`, 1.0 = one CPU): a
//! generator near 1.0 queues requests behind its own work, and that shows up as
//! latency the server did not cause. How much did shows in the split of each
//! latency: due → written (`send_lag_p99_ms`) and written → answered
//! (`from_send_p99_ms`). A request written late because every connection was
//! waiting on the server is the server's doing; `starved` counts those, so a
//! lag with `starved` near 0 is the generator's own (its CPU, or the VM waking
//! it late).
//!
//! And how long answers stopped: `silence_ms` sums every gap of at least
//! [`SILENCE_MIN`] between answers while a request was in flight (from the
//! later of the previous answer and the request's write to its answer), and
//! `silences` counts them. At these rates an answer comes every few tens of
//! µs, so a gap that long is a stall: of the server, of its CPU, or of the
//! generator's (it reads nothing while it is off its CPU). Servers run on the
//! same machine minutes apart meet much the same stalls; where one server's
//! silences are no longer than another's, its longer tail is its own: how fast
//! it caught up after them.
//!
//! What it checks: every answer is read whole (Content-Length) and counted as
//! `non2xx` unless its status is 2xx, and, with `--require S` / `--reject S`,
//! counted as `unexpected` unless its body contains every required string and
//! none of the rejected ones. scripts/bench.sh requires `"result":` and rejects
//! `"isError":true`, so a number is only trusted if every answer was a JSON-RPC
//! result and no tool call failed. The search is `memchr::memmem` (SIMD): ~0.1 µs
//! for a 2 KiB body, against the ~14 µs of generator CPU per request at 70k
//! req/s.
//!
//! Usage: `loadgen --url http://127.0.0.1:PORT/PATH --rate R --connections C
//! --duration-secs D [--warmup-secs W] [--method POST] [--header 'Name: value']...
//! [--body STRING | --body-file F] [--require S]... [--reject S]... [--spin-us N]
//! [--json]`
//!
//! `--spin-us N`: when the next request is due within N µs, poll for answers
//! without sleeping (default 0: always sleep until due). Costs the generator's
//! whole CPU; worth it where waking from a timed sleep is slow (VMs).
//!
//! `--dump FILE`: also write every measured answer, one line each, for a closer
//! look at a tail than percentiles give (`scripts/catchup.py` reads it: the
//! silences, and how fast the server caught up after each). The first line is
//! `# t0_monotonic_ns N`, the `CLOCK_MONOTONIC` time the run's offsets count
//! from, to line the answers up with a kernel trace (ftrace's `mono` clock);
//! then `answered_us latency_us send_lag_us`: when the answer was read, from
//! t0; its latency from its due time; and how late it was written.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use memchr::memmem;

/// Requests overdue (due but not yet sent) beyond which the rate is declared
/// unsustainable and the run stops, instead of measuring a growing queue.
const MAX_BACKLOG_SECS: f64 = 1.0;
/// Longest a run waits for outstanding responses after its last request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (head and body).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// The shortest gap between answers, with a request in flight, counted in
/// `silence_ms`: the p99 target's own bound, and ~50 answers' time at 50k req/s.
const SILENCE_MIN: Duration = Duration::from_millis(1);

/// `--probe-secs`: the shortest gap in a busy loop counted as a stall (well
/// above a loop turn and a timer tick), one counted as long, and the longest
/// probe accepted.
const PROBE_STALL: Duration = Duration::from_micros(100);
const PROBE_LONG: Duration = Duration::from_millis(1);
const MAX_PROBE_SECS: f64 = 60.0;

struct Args {
    host: String,
    port: u16,
    path: String,
    method: String,
    headers: Vec<String>,
    body: Vec<u8>,
    rate: f64,
    connections: usize,
    duration: f64,
    warmup: f64,
    /// Poll without sleeping when the next request is due sooner than this.
    spin: Duration,
    json: bool,
    /// Strings every answer's body must contain.
    require: Vec<String>,
    /// Strings no answer's body may contain.
    reject: Vec<String>,
    /// Where to write every measured answer (`--dump`).
    dump: Option<String>,
}

fn usage(why: &str) -> ! {
    eprintln!("loadgen: {why}");
    eprintln!("usage: loadgen --url http://127.0.0.1:PORT/PATH --rate R --connections C --duration-secs D [--warmup-secs W] [--method POST] [--header 'N: v']... [--body S | --body-file F] [--require S]... [--reject S]... [--spin-us N] [--json] [--dump FILE]\n       loadgen --probe-secs S   (spin S seconds on this CPU; report the time lost to stalls)");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut a = Args {
        host: String::new(),
        port: 0,
        path: String::new(),
        method: "POST".into(),
        headers: Vec::new(),
        body: Vec::new(),
        rate: 0.0,
        connections: 16,
        duration: 10.0,
        warmup: 0.0,
        spin: Duration::ZERO,
        json: false,
        require: Vec::new(),
        reject: Vec::new(),
        dump: None,
    };
    let mut url = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--url" => url = Some(val()),
            "--rate" => a.rate = val().parse().unwrap_or_else(|_| usage("bad --rate")),
            "--connections" => {
                a.connections = val().parse().unwrap_or_else(|_| usage("bad --connections"))
            }
            "--duration-secs" => {
                a.duration = val()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --duration-secs"))
            }
            "--warmup-secs" => {
                a.warmup = val().parse().unwrap_or_else(|_| usage("bad --warmup-secs"))
            }
            "--spin-us" => {
                a.spin =
                    Duration::from_micros(val().parse().unwrap_or_else(|_| usage("bad --spin-us")))
            }
            "--method" => a.method = val(),
            "--header" => a.headers.push(val()),
            "--body" => a.body = val().into_bytes(),
            "--body-file" => {
                let f = val();
                a.body = std::fs::read(&f).unwrap_or_else(|e| usage(&format!("{f}: {e}")))
            }
            "--json" => a.json = true,
            "--require" => a.require.push(val()),
            "--reject" => a.reject.push(val()),
            "--dump" => a.dump = Some(val()),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    let url = url.unwrap_or_else(|| usage("--url is required"));
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| usage("only http:// URLs"));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| usage("the URL needs a port"));
    if host != "127.0.0.1" && host != "localhost" {
        usage("load is only ever sent to 127.0.0.1");
    }
    a.host = "127.0.0.1".into();
    a.port = port.parse().unwrap_or_else(|_| usage("bad port"));
    a.path = if path.is_empty() {
        "/".into()
    } else {
        path.into()
    };
    if a.rate <= 0.0 || a.connections == 0 || a.duration <= 0.0 {
        usage("--rate, --connections and --duration-secs must be positive");
    }
    a
}

/// One connection: at most one request in flight.
struct Conn {
    stream: TcpStream,
    /// Due time of the request in flight, if any.
    due: Option<Instant>,
    /// When the request in flight was written.
    sent: Instant,
    buf: Vec<u8>,
}

enum Parsed {
    Incomplete,
    /// `body` is where the body starts; `len` is the whole answer's length.
    Done {
        status: u16,
        body: usize,
        len: usize,
    },
    Bad(&'static str),
}

/// A complete response at the start of `buf`, if there is one.
fn parse_response(buf: &[u8]) -> Parsed {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Parsed::Bad("response head too large")
        } else {
            Parsed::Incomplete
        };
    };
    let head = &buf[..head_end];
    let status = head
        .get(9..12)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok());
    let Some(status) = status else {
        return Parsed::Bad("no status line");
    };
    let mut length: Option<usize> = None;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Parsed::Bad("chunked responses are not supported");
        }
    }
    let Some(length) = length else {
        return Parsed::Bad("response without Content-Length");
    };
    let total = head_end + 4 + length;
    if total > MAX_RESPONSE_BYTES {
        return Parsed::Bad("response too large");
    }
    if buf.len() < total {
        Parsed::Incomplete
    } else {
        Parsed::Done {
            status,
            body: head_end + 4,
            len: total,
        }
    }
}

/// The connections' readiness, registered once per connection (level-triggered,
/// readable), the event's data being the connection's index.
struct Poller {
    fd: libc::c_int,
}

impl Poller {
    fn new() -> Poller {
        // SAFETY: plain syscall; the descriptor is owned by the Poller.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(
            fd >= 0,
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        Poller { fd }
    }

    /// Watches `stream` as connection `index`. A closed stream leaves the set by
    /// itself, so a replacement is simply added.
    fn add(&self, stream: &TcpStream, index: usize) {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: index as u64,
        };
        // SAFETY: `ev` is valid for the call; both descriptors are open.
        let r =
            unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut ev) };
        assert_eq!(r, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }

    /// Waits up to `timeout` (to the microsecond) and fills `events`; returns how
    /// many are ready.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> usize {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `events` is writable for its length and `ts` outlives the call;
        // no signal mask is passed.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.fd,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            assert!(
                err.kind() == std::io::ErrorKind::Interrupted,
                "epoll_pwait2 (Linux 5.11 or later): {err}"
            );
            return 0;
        }
        n as usize
    }
}

fn connect(a: &Args) -> TcpStream {
    let s = TcpStream::connect((a.host.as_str(), a.port))
        .unwrap_or_else(|e| usage(&format!("cannot connect to {}:{}: {e}", a.host, a.port)));
    s.set_nodelay(true).ok();
    s.set_nonblocking(true).expect("non-blocking");
    s
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--probe-secs") {
        let secs: f64 = argv
            .get(2)
            .and_then(|v| v.parse().ok())
            .filter(|s| *s > 0.0 && *s <= MAX_PROBE_SECS)
            .unwrap_or_else(|| usage("--probe-secs needs 0 < S <= 60, alone"));
        probe(secs);
        return;
    }
    let a = parse_args();
    // Sleep to the microsecond: the default 50 µs timer slack would bunch requests.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Length: {}\r\n",
        a.method,
        a.path,
        a.host,
        a.port,
        a.body.len()
    )
    .into_bytes();
    for h in &a.headers {
        request.extend_from_slice(h.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(&a.body);

    let mut conns: Vec<Conn> = (0..a.connections)
        .map(|_| Conn {
            stream: connect(&a),
            due: None,
            sent: Instant::now(),
            buf: Vec::with_capacity(64 * 1024),
        })
        .collect();
    let interval = 1.0 / a.rate;
    let total = ((a.warmup + a.duration) * a.rate) as u64;
    let warm = (a.warmup * a.rate) as u64;
    let mut latencies: Vec<u32> = Vec::with_capacity((total - warm) as usize);
    // The two parts of each latency: due → written (the generator's own lag,
    // or a backlog waiting for a free connection) and written → answered.
    let mut send_lags: Vec<u32> = Vec::with_capacity((total - warm) as usize);
    let mut from_send: Vec<u32> = Vec::with_capacity((total - warm) as usize);
    // `--dump`: (answered, latency, send lag) of every measured answer, µs.
    let mut dump: Vec<(u32, u32, u32)> = match a.dump {
        Some(_) => Vec::with_capacity((total - warm) as usize),
        None => Vec::new(),
    };
    // Requests below this index fell due while every connection was busy: their
    // lag is the server's doing, not the generator's. `starved` counts them.
    let mut starved_below: u64 = 0;
    let mut starved: u64 = 0;
    let (mut errors, mut non2xx, mut unsustainable) = (0u64, 0u64, false);
    let required: Vec<memmem::Finder> = a.require.iter().map(memmem::Finder::new).collect();
    let rejected: Vec<memmem::Finder> = a.reject.iter().map(memmem::Finder::new).collect();
    let mut unexpected: u64 = 0;
    let mut idle: Vec<usize> = (0..conns.len()).collect();
    let poller = Poller::new();
    for (i, c) in conns.iter().enumerate() {
        poller.add(&c.stream, i);
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns.len()];
    let mut probe = [libc::epoll_event { events: 0, u64: 0 }; 1];
    let mut next: u64 = 0;
    let mut done: u64 = 0;
    let mut answered: u64 = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    let t0 = Instant::now() + Duration::from_millis(10);
    // The same instant on CLOCK_MONOTONIC (`Instant`'s clock on Linux), read
    // straight after: --dump's lines count from it.
    let t0_mono_ns = {
        // SAFETY: clock_gettime writes one `timespec` into the value it is given.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64 + 10_000_000
    };
    let cpu0 = cpu_time();
    let due_of = |k: u64| t0 + Duration::from_secs_f64(k as f64 * interval);
    let mut last_send = t0;
    // When the last answer was read, and the gaps between answers (with a
    // request in flight) of at least SILENCE_MIN, after the warm-up.
    let mut last_answer = t0;
    let (mut silence, mut silences) = (Duration::ZERO, 0u64);
    loop {
        let now = Instant::now();
        // Send every due request a free connection can take.
        while next < total && due_of(next) <= now {
            let Some(i) = idle.pop() else {
                // Every connection busy. The server's doing only if none has an
                // answer waiting to be read (level-triggered, so this peek
                // loses nothing); otherwise the generator is behind on reading.
                if poller.wait(&mut probe, Duration::ZERO) == 0 {
                    let due_now =
                        (now.saturating_duration_since(t0).as_secs_f64() / interval) as u64 + 1;
                    starved_below = starved_below.max(due_now.min(total));
                }
                break;
            };
            if next < starved_below && next >= warm {
                starved += 1;
            }
            let c = &mut conns[i];
            c.due = Some(due_of(next));
            next += 1;
            if c.stream.write_all(&request).is_err() {
                // write_all on a non-blocking socket: the request is small, so a
                // short write means the connection is unusable; count and replace.
                errors += 1;
                done += 1;
                c.due = None;
                c.stream = connect(&a);
                poller.add(&c.stream, i);
                idle.push(i);
            }
            c.sent = Instant::now();
            last_send = now;
        }
        if next < total && due_of(next) + Duration::from_secs_f64(MAX_BACKLOG_SECS) < now {
            unsustainable = true;
            break;
        }
        if done == total {
            break;
        }
        if next == total && now > last_send + DRAIN_TIMEOUT {
            break;
        }
        // Wait for responses, or until the next request is due.
        let wait = if next < total && !idle.is_empty() {
            due_of(next).saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(100)
        };
        // Close to the next due time, poll without sleeping: a timed sleep here
        // woke ~60 µs late (a hello-world server's p50 at 61k req/s read 0.09 ms
        // sleeping and 0.03 ms spinning), and that lateness is counted as latency.
        let wait = if wait < a.spin { Duration::ZERO } else { wait };
        let n = poller.wait(&mut events, wait);
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            let c = &mut conns[i];
            let closed = loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(k) => c.buf.extend_from_slice(&chunk[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            match parse_response(&c.buf) {
                Parsed::Done { status, body, len } => {
                    let due = c.due.take().expect("in flight");
                    done += 1;
                    answered += 1;
                    let now = Instant::now();
                    let gap = now.saturating_duration_since(last_answer.max(c.sent));
                    last_answer = now;
                    if due >= due_of(warm) {
                        if gap >= SILENCE_MIN {
                            silence += gap;
                            silences += 1;
                        }
                        let us = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
                        let (latency, lag) = (
                            us(now.saturating_duration_since(due)),
                            us(c.sent.saturating_duration_since(due)),
                        );
                        latencies.push(latency);
                        send_lags.push(lag);
                        from_send.push(us(now.saturating_duration_since(c.sent)));
                        if a.dump.is_some() {
                            dump.push((us(now.saturating_duration_since(t0)), latency, lag));
                        }
                        if !(200..300).contains(&status) {
                            non2xx += 1;
                        }
                        // After the latency is taken: checking is the generator's
                        // own work, not the server's.
                        let answer = &c.buf[body..len];
                        if !required.iter().all(|f| f.find(answer).is_some())
                            || rejected.iter().any(|f| f.find(answer).is_some())
                        {
                            if unexpected == 0 {
                                let shown = &answer[..answer.len().min(300)];
                                eprintln!(
                                    "loadgen: an answer failed --require/--reject (counted as unexpected): {}",
                                    String::from_utf8_lossy(shown)
                                );
                            }
                            unexpected += 1;
                        }
                    }
                    c.buf.drain(..len);
                    if closed {
                        c.stream = connect(&a);
                        poller.add(&c.stream, i);
                        c.buf.clear();
                    }
                    idle.push(i);
                }
                Parsed::Incomplete if !closed => {}
                // An idle connection the server closed (or sent something
                // unasked): replace it; it stays idle.
                _ if c.due.is_none() => {
                    c.buf.clear();
                    if closed {
                        c.stream = connect(&a);
                        poller.add(&c.stream, i);
                    }
                }
                bad => {
                    if errors == 0 {
                        let why = match bad {
                            Parsed::Bad(why) => why,
                            _ => "the server closed the connection mid-response",
                        };
                        eprintln!("loadgen: {why} (counted as an error; reconnecting)");
                    }
                    errors += 1;
                    done += 1;
                    c.due = None;
                    c.buf.clear();
                    c.stream = connect(&a);
                    poller.add(&c.stream, i);
                    idle.push(i);
                }
            }
        }
    }
    // The rate achieved counts every answer since the first request, warm-up
    // included, so a server that could not keep up from the start still shows
    // what it did manage.
    let elapsed = Instant::now().saturating_duration_since(t0).as_secs_f64();
    if let Some(path) = &a.dump {
        write_dump(path, t0_mono_ns, &dump);
    }
    latencies.sort_unstable();
    send_lags.sort_unstable();
    from_send.sort_unstable();
    let pct_of = |v: &[u32], q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    let pct = |q: f64| pct_of(&latencies, q);
    let (lag_p99, sent_p99) = (pct_of(&send_lags, 0.99), pct_of(&from_send, 0.99));
    let achieved = answered as f64 / elapsed.max(1e-9);
    let cpu_busy = cpu_time().saturating_sub(cpu0).as_secs_f64() / elapsed.max(1e-9);
    let (p50, p90, p99, p999) = (pct(0.50), pct(0.90), pct(0.99), pct(0.999));
    let max = latencies.last().map_or(f64::NAN, |m| *m as f64 / 1000.0);
    if a.json {
        // No latency recorded (a run that was unsustainable from the start): null.
        let j = |v: f64| {
            if v.is_nan() {
                "null".to_string()
            } else {
                format!("{v:.3}")
            }
        };
        println!(
            "{{\"rate_target\":{},\"rate_achieved\":{:.0},\"requests\":{},\"errors\":{},\"non2xx\":{},\"unexpected\":{},\"p50_ms\":{},\"p90_ms\":{},\"p99_ms\":{},\"p999_ms\":{},\"max_ms\":{},\"unsustainable\":{},\"cpu_busy\":{:.3},\"send_lag_p99_ms\":{},\"from_send_p99_ms\":{},\"starved\":{},\"silence_ms\":{:.1},\"silences\":{}}}",
            a.rate,
            achieved,
            latencies.len(),
            errors,
            non2xx,
            unexpected,
            j(p50),
            j(p90),
            j(p99),
            j(p999),
            j(max),
            unsustainable,
            cpu_busy,
            j(lag_p99),
            j(sent_p99),
            starved,
            silence.as_secs_f64() * 1e3,
            silences
        );
    } else {
        println!(
            "rate {} (achieved {:.0}) over {} connections: {} requests, p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}; errors {}, non-2xx {}, unexpected bodies {}; generator CPU {:.0}%; p99 of due→sent {:.3}, of sent→answered {:.3}; {} waited for a free connection; answers stopped {} times for {:.1} ms in all{}",
            a.rate,
            achieved,
            a.connections,
            latencies.len(),
            p50,
            p90,
            p99,
            p999,
            max,
            errors,
            non2xx,
            unexpected,
            cpu_busy * 100.0,
            lag_p99,
            sent_p99,
            starved,
            silences,
            silence.as_secs_f64() * 1e3,
            if unsustainable { " — UNSUSTAINABLE: the backlog passed 1 s" } else { "" }
        );
    }
}

/// Writes `--dump`'s file (format in the module doc). A failure is reported and
/// the run's numbers are still printed: the dump is extra, not the result.
fn write_dump(path: &str, t0_mono_ns: u64, answers: &[(u32, u32, u32)]) {
    let mut out = String::with_capacity(32 + answers.len() * 24);
    out.push_str(&format!("# t0_monotonic_ns {t0_mono_ns}\n"));
    for (answered, latency, lag) in answers {
        out.push_str(&format!("{answered} {latency} {lag}\n"));
    }
    if let Err(e) = std::fs::write(path, out) {
        eprintln!("loadgen: cannot write --dump {path}: {e}");
    }
}

/// `--probe-secs S`: spins on the calling CPU for S seconds reading the clock
/// and reports the time lost in gaps of at least [`PROBE_STALL`]: time the CPU
/// ran something else (an interrupt, another task, or in a VM the host). Run on
/// both CPUs at once, it shows what the machine takes from a benchmark whose
/// server and generator are both busy, which no server can win back.
fn probe(secs: f64) {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut last = start;
    let (mut lost, mut longest) = (Duration::ZERO, Duration::ZERO);
    let (mut stalls, mut long) = (0u64, 0u64);
    loop {
        let now = Instant::now();
        let gap = now - last;
        last = now;
        if gap >= PROBE_STALL {
            lost += gap;
            stalls += 1;
            long += u64::from(gap >= PROBE_LONG);
            longest = longest.max(gap);
        }
        if now >= end {
            break;
        }
    }
    let took = last - start;
    println!(
        "{{\"probe_secs\":{:.3},\"lost_pct\":{:.3},\"stalls\":{},\"over_1ms\":{},\"longest_ms\":{:.3}}}",
        took.as_secs_f64(),
        lost.as_secs_f64() * 100.0 / took.as_secs_f64(),
        stalls,
        long,
        longest.as_secs_f64() * 1e3
    );
}
