//! The read deadlines of a shard's connections: one table, swept by one task,
//! instead of a glommio timer for every connection waiting to read.
//!
//! Why: glommio-ng 0.12 finds its next timer by scanning every timer it holds,
//! on every turn of its loop (`ReactorTimers::process_timers`). With a timer
//! per waiting connection, that scan was 22 % of the instructions a request
//! arriving on its own cost (callgrind, 64 connections at a fixed rate), and
//! 2,000 idle keep-alive connections took a shard from 77 % to 93 % busy at
//! 15k req/s. Here a shard holds one sweep timer however many connections it
//! has. The price is precision: a deadline is noticed at the first sweep after
//! it passes, at most [`Deadlines::period`] late.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::slots::Slots;

/// Sweeps per shortest timeout: a deadline fires at most 1/8 of it late.
const SWEEPS_PER_TIMEOUT: u32 = 8;
/// Shortest sweep period, whatever the timeouts (bounds the sweeper's CPU).
pub const MIN_SWEEP: Duration = Duration::from_millis(5);
/// Longest sweep period: the most a default 10 s header timeout runs over.
pub const MAX_SWEEP: Duration = Duration::from_millis(250);

/// A shard's table of read deadlines.
pub struct Deadlines {
    /// One slot per open connection.
    slots: RefCell<Slots<Slot>>,
    /// Connections registered: the sweeper sleeps without a timer while none is.
    live: Cell<usize>,
    /// The sweeper, while it waits for a first connection.
    sweeper: Cell<Option<Waker>>,
    period: Duration,
}

#[derive(Default)]
struct Slot {
    /// When the read in progress must have finished; `None` while not reading.
    deadline: Option<Instant>,
    /// The sweeper found the deadline passed.
    expired: bool,
    /// The reading task, to wake when the deadline passes.
    waker: Option<Waker>,
}

impl Deadlines {
    /// A table swept often enough for the shortest of `timeouts`.
    pub fn new(timeouts: &[Duration]) -> Rc<Deadlines> {
        let shortest = timeouts.iter().copied().min().unwrap_or(MAX_SWEEP);
        Rc::new(Deadlines {
            slots: RefCell::new(Slots::new()),
            live: Cell::new(0),
            sweeper: Cell::new(None),
            period: (shortest / SWEEPS_PER_TIMEOUT).clamp(MIN_SWEEP, MAX_SWEEP),
        })
    }

    /// How late a deadline may be noticed.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// A slot for one connection, freed when the registration drops.
    pub fn register(self: &Rc<Self>) -> Registration {
        let key = self.slots.borrow_mut().take();
        self.live.set(self.live.get() + 1);
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.wake();
        }
        Registration {
            table: self.clone(),
            key,
        }
    }

    /// Wakes every read whose deadline has passed, every period, for as long as
    /// the table lives. Runs as one task per shard.
    pub async fn sweep(self: Rc<Self>) {
        let mut due: Vec<Waker> = Vec::new();
        loop {
            if self.live.get() == 0 {
                std::future::poll_fn(|cx| {
                    if self.live.get() > 0 {
                        return Poll::Ready(());
                    }
                    self.sweeper.set(Some(cx.waker().clone()));
                    Poll::Pending
                })
                .await;
            }
            glommio::timer::sleep(self.period).await;
            let now = Instant::now();
            for slot in self.slots.borrow_mut().iter_mut() {
                if !slot.expired && slot.deadline.is_some_and(|d| d <= now) {
                    slot.expired = true;
                    due.extend(slot.waker.take());
                }
            }
            // Woken outside the borrow: a woken task may run before this returns.
            due.drain(..).for_each(Waker::wake);
        }
    }
}

/// One connection's slot in its shard's [`Deadlines`].
pub struct Registration {
    table: Rc<Deadlines>,
    key: usize,
}

impl Registration {
    /// Runs `read` until it finishes or `deadline` passes (then `TimedOut`, and
    /// `read` is dropped).
    pub async fn within<T>(
        &self,
        deadline: Instant,
        read: impl Future<Output = std::io::Result<T>>,
    ) -> std::io::Result<T> {
        {
            let mut slots = self.table.slots.borrow_mut();
            let slot = &mut slots[self.key];
            debug_assert!(slot.deadline.is_none(), "one read at a time per connection");
            slot.deadline = Some(deadline);
            slot.expired = false;
        }
        // Disarms the slot however this ends, a drop of the read included.
        let _armed = Armed(self);
        let expiry = async { Err(Expiry { reg: self }.await) };
        futures_lite::future::or(read, expiry).await
    }
}

/// A read in progress; its slot is disarmed when this drops.
struct Armed<'a>(&'a Registration);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let mut slots = self.0.table.slots.borrow_mut();
        let slot = &mut slots[self.0.key];
        slot.deadline = None;
        slot.waker = None;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.slots.borrow_mut().give_back(self.key);
        self.table.live.set(self.table.live.get() - 1);
    }
}

/// Ready with a `TimedOut` error once the sweeper has found the deadline passed.
struct Expiry<'a> {
    reg: &'a Registration,
}

impl Future for Expiry<'_> {
    type Output = std::io::Error;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slots = self.reg.table.slots.borrow_mut();
        let slot = &mut slots[self.reg.key];
        if slot.expired {
            return Poll::Ready(ErrorKind::TimedOut.into());
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::common::testing::run;

    #[test]
    fn the_period_follows_the_shortest_timeout_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(Deadlines::new(&[ms(200), ms(300)]).period(), ms(25));
        assert_eq!(
            Deadlines::new(&[ms(10_000), ms(60_000)]).period(),
            MAX_SWEEP
        );
        assert_eq!(Deadlines::new(&[ms(1)]).period(), MIN_SWEEP);
    }

    #[test]
    fn a_read_that_finishes_first_is_not_timed_out() {
        run(async {
            let table = Deadlines::new(&[Duration::from_millis(40)]);
            glommio::spawn_local(table.clone().sweep()).detach();
            let reg = table.register();
            let deadline = Instant::now() + Duration::from_secs(60);
            let got = reg.within(deadline, async { Ok(7) }).await;
            assert_eq!(got.unwrap(), 7);
            // The slot is disarmed: a sweep finds nothing to expire.
            assert!(table.slots.borrow()[reg.key].deadline.is_none());
        });
    }

    #[test]
    fn a_read_still_waiting_at_its_deadline_is_timed_out_within_a_period() {
        run(async {
            let table = Deadlines::new(&[Duration::from_millis(40)]);
            glommio::spawn_local(table.clone().sweep()).detach();
            let reg = table.register();
            let start = Instant::now();
            let deadline = start + Duration::from_millis(20);
            let never = std::future::pending::<std::io::Result<()>>();
            let err = reg.within(deadline, never).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::TimedOut);
            assert!(Instant::now() >= deadline, "not before the deadline");
            // A read dropped before it ends leaves its slot disarmed.
            let far = Instant::now() + Duration::from_secs(60);
            let mut read = Box::pin(reg.within(far, std::future::pending::<std::io::Result<()>>()));
            assert!(futures_lite::future::poll_once(read.as_mut())
                .await
                .is_none());
            assert_eq!(table.slots.borrow()[reg.key].deadline, Some(far));
            drop(read);
            assert!(table.slots.borrow()[reg.key].deadline.is_none());
            // The next read on the same connection starts afresh.
            let got = reg
                .within(Instant::now() + Duration::from_secs(60), async { Ok(1) })
                .await;
            assert_eq!(got.unwrap(), 1);
        });
    }

    #[test]
    fn slots_are_reused_once_a_connection_goes() {
        let table = Deadlines::new(&[Duration::from_secs(1)]);
        let a = table.register();
        let b = table.register();
        assert_eq!((a.key, b.key), (0, 1));
        drop(a);
        let c = table.register();
        assert_eq!(c.key, 0);
        assert_eq!(table.live.get(), 2);
        assert_eq!(table.slots.borrow().len(), 2);
    }
}
