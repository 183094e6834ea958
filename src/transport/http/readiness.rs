//! Which of a shard's connections have bytes to read: one epoll set per shard,
//! watched through a single io_uring poll, instead of a poll per connection.
//!
//! Why: glommio's read arms an io_uring poll on the socket whenever a read
//! finds nothing, and the kernel posts that poll's completion as task work. A
//! shard that is running when it arrives (a loaded one, at a fixed rate) is
//! interrupted for it: without `IORING_SETUP_COOP_TASKRUN`, which glommio-ng
//! does not set, task work comes with an IPI, and on a VM each IPI traps to
//! the hypervisor. Here the connections' sockets sit in one edge-triggered
//! epoll set, and only the set itself is polled through io_uring, and only
//! while the shard has nothing else to do: requests that arrive while the
//! shard is busy are only added to the set's ready list, and the pump
//! ([`Readiness::pump`]) collects them with one `epoll_wait` that does not
//! block.
//!
//! Measured on the 2-vCPU VM, in interleaved runs against the per-connection
//! polls (docs/performance.md, tuning item 31): at a fixed 35k req/s of
//! read_file the shard went from 92–97 % to 78–88 % busy and rescheduling IPIs
//! from 0.21 to 0.06 per request; at 45k req/s of query_db from 96–98 % to
//! 85–86 % busy; closed-loop throughput was the same or higher.
//!
//! Right after requests, the pump waits for the next one in `epoll_pwait2`
//! itself, for a bounded time, before it parks through io_uring: a shard at a
//! moderate rate then sleeps and wakes like any epoll server, without glommio's
//! per-park timer and ring work (config::DEFAULT_POLL_WAIT_US). That wait may
//! end up to a connection slice late ([`wait_slack`]), so that its timer never
//! costs a reprogramming of the CPU's timer.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use glommio::io::PollableFd;

use super::slots::Slots;

/// Events taken from the epoll set per `epoll_wait`; more wait for the next pass.
const EVENTS_PER_WAIT: usize = 256;
/// Timers of the load heartbeat ([`LoadHeartbeat`]): due after 1, 2 and 4
/// connection slices, so that a shard parked again at once, or held off the
/// CPU for a few slices, is still woken within a few slices.
const LOAD_RUNGS: usize = 3;
/// Pause before the pump looks again after waiting on the set failed.
const PUMP_ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// A shard's epoll set of connections, and who waits on each.
pub struct Readiness {
    epoll: PollableFd<OwnedFd>,
    /// One slot per watched connection.
    slots: RefCell<Slots<Slot>>,
}

#[derive(Default)]
struct Slot {
    /// The epoll set reported the socket since the connection last cleared it.
    ready: bool,
    /// The connection's task, while it waits.
    waker: Option<Waker>,
}

impl Readiness {
    /// An empty set, on the calling shard.
    pub fn new() -> std::io::Result<Rc<Readiness>> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let epoll = PollableFd::new(fd).map_err(std::io::Error::other)?;
        Ok(Rc::new(Readiness {
            epoll,
            slots: RefCell::new(Slots::new()),
        }))
    }

    /// Adds a connection's socket to the set; it leaves when the watch drops.
    pub fn watch(self: &Rc<Self>, fd: RawFd) -> std::io::Result<Watch> {
        let key = self.slots.borrow_mut().take();
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: key as u64,
        };
        // SAFETY: `ev` is a valid event for the call's duration.
        let r = unsafe { libc::epoll_ctl(self.raw(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            self.slots.borrow_mut().give_back(key);
            return Err(std::io::Error::last_os_error());
        }
        Ok(Watch {
            table: self.clone(),
            key,
            fd,
        })
    }

    fn raw(&self) -> RawFd {
        self.epoll.get_ref().as_raw_fd()
    }

    /// Wakes the connections the set reports, for as long as the shard runs.
    ///
    /// After a look that found requests, and once the connections it woke have
    /// run, the pump looks again:
    /// - for `spin` (config::DEFAULT_POLL_SPIN_US) since the last request it
    ///   found, without waiting, yielding in between;
    /// - then once more, waiting in the kernel for up to `wait`
    ///   (config::DEFAULT_POLL_WAIT_US), unless a task is waiting on glommio for
    ///   something else ([`crate::shard::waiting_elsewhere`]): glommio's rings
    ///   are not looked at while the thread sleeps in `epoll_pwait2`;
    /// - and only then through io_uring, where glommio parks the shard.
    ///
    /// So a request arriving soon after the last one skips glommio's park and
    /// wake-up. `slice` is the connections' latency
    /// (config::DEFAULT_CONNECTION_LATENCY_MS): while requests come in, a shard
    /// that parks with work to do is woken within a few of them
    /// ([`LoadHeartbeat`]).
    pub async fn pump(self: Rc<Self>, spin: Duration, wait: Duration, slice: Duration) {
        if let Some(slack) = wait_slack(wait, slice) {
            set_timer_slack(slack);
        }
        let mut heartbeat = LoadHeartbeat::new(slice);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        let mut woken: Vec<Waker> = Vec::with_capacity(EVENTS_PER_WAIT);
        // Read only when spinning: the clock is not free.
        let mut last_found = Instant::now();
        // The previous look found requests: the next empty one may wait in the kernel.
        let mut after_requests = false;
        loop {
            let mut n = self.collect(&mut events, &mut woken, Duration::ZERO);
            if n == 0 && !spin.is_zero() && last_found.elapsed() < spin {
                // Yielding keeps the pump in glommio's run queue: the
                // connections it woke, and the other queues at the end of
                // the connections' slice, still get their turns.
                futures_lite::future::yield_now().await;
                continue;
            }
            if n == 0 && after_requests && !wait.is_zero() {
                // Tasks that the connections woke as they ran are queued
                // behind the pump: let them run before the thread sleeps.
                futures_lite::future::yield_now().await;
                if !crate::shard::waiting_elsewhere() {
                    n = self.collect(&mut events, &mut woken, wait);
                }
            }
            after_requests = n > 0;
            if n > 0 {
                heartbeat.beat();
                if !spin.is_zero() {
                    last_found = Instant::now();
                }
            }
            // Woken outside any borrow: a woken task may run before this returns.
            woken.drain(..).for_each(Waker::wake);
            if n == 0 {
                if let Err(e) = self.epoll.readable().await {
                    // Not expected while the set lives; do not spin on it.
                    crate::log!(Warn, "waiting on the epoll set failed", error = e);
                    glommio::timer::sleep(PUMP_ERROR_BACKOFF).await;
                }
            } else {
                // Let the woken connections run before looking again.
                futures_lite::future::yield_now().await;
            }
        }
    }

    /// Takes what the set reports, waiting up to `wait` in the kernel if it has
    /// nothing yet: marks those connections ready and hands back the wakers of
    /// those that wait. Returns how many sockets were reported (0 also on
    /// `EINTR`).
    fn collect(
        &self,
        events: &mut [libc::epoll_event],
        woken: &mut Vec<Waker>,
        wait: Duration,
    ) -> usize {
        let len = events.len().min(i32::MAX as usize) as i32;
        let n = if wait.is_zero() {
            // SAFETY: `events` has room for as many entries as the kernel is told.
            unsafe { libc::epoll_wait(self.raw(), events.as_mut_ptr(), len, 0) }
        } else {
            let timeout = libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            };
            // SAFETY: as above; `timeout` lives for the call, and a null
            // sigmask leaves the mask alone. A kernel before 5.11 answers
            // ENOSYS, which reads as nothing found: the pump then parks as it
            // would without the wait.
            unsafe {
                libc::epoll_pwait2(
                    self.raw(),
                    events.as_mut_ptr(),
                    len,
                    &timeout,
                    std::ptr::null(),
                )
            }
        };
        let n = n.max(0) as usize;
        let mut slots = self.slots.borrow_mut();
        for ev in &events[..n] {
            let slot = &mut slots[ev.u64 as usize];
            slot.ready = true;
            woken.extend(slot.waker.take());
        }
        n
    }
}

/// The timer slack the shard's thread needs so that the pump's timed wait
/// (`wait`) never holds the CPU's earliest timer; `None` if it never does.
///
/// Why: `epoll_pwait2` with a timeout arms a kernel timer for it. When that
/// timer is the CPU's earliest, arming it, and cancelling it when a request
/// wakes the thread first, each reprogram the CPU's timer device, and on a KVM
/// guest each of those writes exits to the host. At read_file's half rate
/// (50k req/s) on the 2-vCPU VM, with a 500 µs wait, the shard used 14.2–15.2 µs
/// of CPU per request; with this slack 12.3–13.1 (docs/performance.md, item 45).
///
/// glommio's preemption timer is pending while the connections' queue runs,
/// the pump among them: due one `slice` after their turn began, so never later
/// than `slice` from now. With the slack, the wait's latest end is `slice` from
/// when it began: never before that preemption timer, so its arming and
/// cancelling reprogram nothing. The kernel ends a wait whose `wait` has passed
/// at the first timer interrupt after that (as a rule, that preemption
/// timer's), and at the latest `slice` after it began. So what the pump holds
/// back while it waits (timers, accepts) is seen at most a connection slice
/// late: the latency the connections' queue is already allowed to keep every
/// other queue waiting.
///
/// The kernel's slack for a wait is the larger of the thread's (50 µs unless set)
/// and a thousandth of the wait, so a wait of a slice or more needs none.
fn wait_slack(wait: Duration, slice: Duration) -> Option<Duration> {
    (!wait.is_zero() && wait < slice).then(|| slice - wait)
}

/// Sets the calling thread's timer slack (`PR_SET_TIMERSLACK`): how late the
/// kernel may end its timed waits, to group them with other timers. A thread
/// created later inherits it; a shard's thread creates none once it serves.
fn set_timer_slack(slack: Duration) {
    let ns = slack.as_nanos().clamp(1, libc::c_ulong::MAX as u128) as libc::c_ulong;
    // SAFETY: plain prctl on the calling thread; 0 would mean "the default", and
    // `ns` is at least 1.
    let r = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) };
    if r != 0 {
        // Not fatal: the wait then reprograms the CPU's timer, as it did before.
        crate::log!(
            Warn,
            "setting the shard thread's timer slack failed",
            error = std::io::Error::last_os_error()
        );
    }
}

/// Keeps a timer due within a few connection slices for as long as requests
/// come in: glommio-ng's lost wakeup, under load.
///
/// glommio-ng 0.12 can park a shard with tasks runnable (`server::start_heartbeat`
/// explains how); a parking shard arms a wake-up only for its earliest timer,
/// and with no request able to arrive (every connection waits on an answer)
/// nothing else wakes it. The idle heartbeat's ladder bounds that at 100 ms,
/// which under load is the whole p99 (docs/performance.md, item 41). While the
/// set reports requests, these rungs bound it at a slice or two.
///
/// The rungs are re-armed only when a report finds the first one fired, so a
/// loaded shard arms [`LOAD_RUNGS`] timers per slice, and an idle one lets
/// them run out once and then has none.
struct LoadHeartbeat {
    slice: Duration,
    rungs: Option<[glommio::timer::Timer; LOAD_RUNGS]>,
    /// How many times the rungs were armed.
    arms: u64,
}

impl LoadHeartbeat {
    fn new(slice: Duration) -> LoadHeartbeat {
        assert!(
            slice > Duration::ZERO,
            "a zero slice would re-arm on every report"
        );
        LoadHeartbeat {
            slice,
            rungs: None,
            arms: 0,
        }
    }

    /// The set reported requests: make sure a wake-up is due soon.
    fn beat(&mut self) {
        let fired = match &mut self.rungs {
            None => true,
            Some(rungs) => crate::server::poll_timer(&mut rungs[0]),
        };
        if fired {
            self.rungs = Some(crate::server::arm_ladder(self.slice));
            self.arms += 1;
        }
    }
}

/// One connection's place in its shard's [`Readiness`].
pub struct Watch {
    table: Rc<Readiness>,
    key: usize,
    fd: RawFd,
}

impl Watch {
    /// Forgets earlier reports: call before every read that may be followed by
    /// [`readable`](Self::readable) (one that found `EAGAIN`, or one that took
    /// all the socket held), so that bytes arriving after it are not missed.
    pub fn clear(&self) {
        self.table.slots.borrow_mut()[self.key].ready = false;
    }

    /// Resolves once the set has reported the socket since [`clear`](Self::clear).
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| {
            let mut slots = self.table.slots.borrow_mut();
            let slot = &mut slots[self.key];
            if slot.ready {
                slot.waker = None;
                return Poll::Ready(());
            }
            match &slot.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: plain syscall; a descriptor already closed only makes it fail,
        // and a closed descriptor has left the set by itself.
        unsafe {
            libc::epoll_ctl(
                self.table.raw(),
                libc::EPOLL_CTL_DEL,
                self.fd,
                std::ptr::null_mut(),
            )
        };
        self.table.slots.borrow_mut().give_back(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use crate::tools::common::testing::run;

    /// A set watching one end of a socket pair; the other end writes.
    fn watched() -> (Rc<Readiness>, Watch, UnixStream, UnixStream) {
        let set = Readiness::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let watch = set.watch(a.as_raw_fd()).unwrap();
        (set, watch, a, b)
    }

    fn events() -> Vec<libc::epoll_event> {
        vec![libc::epoll_event { events: 0, u64: 0 }; 8]
    }

    fn ready(watch: &Watch) -> bool {
        futures_lite::future::block_on(futures_lite::future::poll_once(watch.readable())).is_some()
    }

    #[test]
    fn bytes_after_clear_make_the_connection_ready_and_wake_it() {
        run(async {
            let (set, watch, _a, mut b) = watched();
            let (mut evs, mut woken) = (events(), Vec::new());
            watch.clear();
            assert!(!ready(&watch), "nothing was sent");
            assert_eq!(set.collect(&mut evs, &mut woken, Duration::ZERO), 0);
            // The readable() above left its waker in the slot.
            b.write_all(b"x").unwrap();
            assert_eq!(set.collect(&mut evs, &mut woken, Duration::ZERO), 1);
            assert_eq!(woken.len(), 1, "the waiting task is woken");
            assert!(ready(&watch));
        });
    }

    #[test]
    fn a_report_before_clear_does_not_count() {
        run(async {
            let (set, watch, _a, mut b) = watched();
            let (mut evs, mut woken) = (events(), Vec::new());
            b.write_all(b"x").unwrap();
            assert_eq!(set.collect(&mut evs, &mut woken, Duration::ZERO), 1);
            assert!(woken.is_empty(), "nobody was waiting");
            watch.clear();
            assert!(!ready(&watch), "the report came before the clear");
            // Edge-triggered: the bytes already there are not reported again...
            assert_eq!(set.collect(&mut evs, &mut woken, Duration::ZERO), 0);
            // ...but new ones are.
            b.write_all(b"y").unwrap();
            assert_eq!(set.collect(&mut evs, &mut woken, Duration::ZERO), 1);
            assert!(ready(&watch));
        });
    }

    #[test]
    fn a_dropped_watch_leaves_the_set_and_its_slot_is_reused_clean() {
        run(async {
            let set = Readiness::new().unwrap();
            let (a, mut b) = UnixStream::pair().unwrap();
            let (c, _d) = UnixStream::pair().unwrap();
            let (mut evs, mut woken) = (events(), Vec::new());
            let first = set.watch(a.as_raw_fd()).unwrap();
            b.write_all(b"x").unwrap();
            drop(first);
            assert_eq!(
                set.collect(&mut evs, &mut woken, Duration::ZERO),
                0,
                "left the set"
            );
            let second = set.watch(c.as_raw_fd()).unwrap();
            assert_eq!(second.key, 0, "the slot is reused");
            b.write_all(b"y").unwrap();
            assert_eq!(set.collect(&mut evs, &mut woken, Duration::ZERO), 0);
            assert!(!ready(&second));
        });
    }

    #[test]
    fn a_hangup_makes_the_connection_ready() {
        run(async {
            let (set, watch, _a, b) = watched();
            let (mut evs, mut woken) = (events(), Vec::new());
            watch.clear();
            drop(b);
            assert_eq!(set.collect(&mut evs, &mut woken, Duration::ZERO), 1);
            assert!(ready(&watch), "the read that follows sees the end");
        });
    }

    #[test]
    fn the_wait_ends_at_most_a_slice_after_it_began() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        assert_eq!(wait_slack(us(500), ms(1)), Some(us(500)));
        assert_eq!(wait_slack(us(1), ms(1)), Some(us(999)));
        assert_eq!(wait_slack(ms(1), ms(1)), None, "already never earlier");
        assert_eq!(wait_slack(ms(10), ms(1)), None);
        assert_eq!(wait_slack(Duration::ZERO, ms(1)), None, "no wait, no timer");
    }

    /// The slack is the calling thread's, as the kernel reports it back.
    #[test]
    fn the_timer_slack_is_set_on_the_calling_thread() {
        // SAFETY: plain prctl that reads the calling thread's slack.
        let slack_ns = || unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
        std::thread::spawn(move || {
            let before = slack_ns();
            set_timer_slack(Duration::from_micros(700));
            assert_eq!(slack_ns(), 700_000);
            assert_ne!(before, 700_000, "the test would prove nothing");
        })
        .join()
        .unwrap();
        assert_ne!(slack_ns(), 700_000, "other threads keep theirs");
    }

    /// The rungs are armed by the first report, left alone while the first is
    /// pending, re-armed by a report once it has fired, and never armed
    /// without one.
    #[test]
    fn the_load_heartbeat_rearms_only_when_requests_come() {
        run(async {
            // Long enough that the first rung cannot fire between two
            // statements, short enough for a quick test.
            let slice = Duration::from_millis(200);
            let mut hb = LoadHeartbeat::new(slice);
            assert_eq!(hb.arms, 0, "no rungs before any request");
            hb.beat();
            assert_eq!(hb.arms, 1, "the first report arms the rungs");
            hb.beat();
            assert_eq!(
                hb.arms, 1,
                "a report while the first rung is pending arms nothing"
            );
            // Armed after the first rung, with the same delay: it fires after it.
            // No report meanwhile, so nothing was re-armed.
            glommio::timer::sleep(slice).await;
            assert_eq!(hb.arms, 1);
            hb.beat();
            assert_eq!(hb.arms, 2, "a report after the first rung fired re-arms");
            hb.beat();
            assert_eq!(hb.arms, 2);
        });
    }
}
