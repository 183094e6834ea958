//! Handshake-era sessions, valid on every shard without a lock.
//!
//! A client's next connection may land on any shard (SO_REUSEPORT spreads them), so
//! a session issued on one shard must be recognised on all, and a `DELETE` on one
//! must end it everywhere at once. A lock-free slot table does both:
//!
//! - The table is a fixed array of slots (the session bound). Shard `s` allocates
//!   only from the slots `i` with `i % shards == s`, so allocation never contends.
//! - A slot's `state` word holds a generation, the negotiated protocol version and
//!   a live bit. The session id names the slot, the generation and a random tag, so
//!   validating it is two atomic loads of a cache line nobody is writing.
//! - Ending a session (DELETE, idle expiry) bumps the generation with a CAS: every
//!   shard stops accepting the old id at that instant, and a reused slot can never
//!   revive it.
//! - `last_used` is written at most once a second per session, so a session used
//!   from several shards does not bounce its cache line on every request.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

const LIVE: u64 = 1;
const VERSION_SHIFT: u32 = 8;
const GEN_SHIFT: u32 = 32;
/// Length of a session id: 8 hex digits of slot, 8 of generation, 16 of tag.
pub const SESSION_ID_LEN: usize = 32;

struct Slot {
    state: AtomicU64,
    tag: AtomicU64,
    /// Seconds since the table's epoch.
    last_used: AtomicU32,
}

pub struct SessionTable {
    slots: Box<[Slot]>,
    shards: usize,
    idle_secs: u32,
    epoch: Instant,
}

/// What a valid session id tells the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// Index into [`crate::protocol::era::HANDSHAKE_VERSIONS`].
    pub version: u8,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Valid(Session),
    /// Malformed, never issued, ended or expired: all are 404 to the client.
    Unknown,
}

impl SessionTable {
    pub fn new(capacity: usize, shards: usize, idle: std::time::Duration) -> SessionTable {
        assert!(shards > 0, "at least one shard");
        // Every shard gets at least one slot so that each can issue sessions.
        let capacity = capacity.max(shards);
        let slots = (0..capacity)
            .map(|_| Slot {
                state: AtomicU64::new(0),
                tag: AtomicU64::new(0),
                last_used: AtomicU32::new(0),
            })
            .collect();
        SessionTable {
            slots,
            shards,
            idle_secs: idle.as_secs().clamp(1, u32::MAX as u64) as u32,
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32
    }

    /// Issues a session on `shard`, or `None` when that shard's slots are all live
    /// (after ending the idle ones).
    pub fn create(&self, shard: usize, version: u8) -> Option<String> {
        assert!(shard < self.shards);
        for pass in 0..2 {
            let mut i = shard;
            while i < self.slots.len() {
                let slot = &self.slots[i];
                let state = slot.state.load(Ordering::Acquire);
                if state & LIVE == 0 {
                    let gen = state >> GEN_SHIFT;
                    let tag = random_u64();
                    slot.tag.store(tag, Ordering::Relaxed);
                    slot.last_used.store(self.now(), Ordering::Relaxed);
                    let live = (gen << GEN_SHIFT) | ((version as u64) << VERSION_SHIFT) | LIVE;
                    if slot
                        .state
                        .compare_exchange(state, live, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Some(format!("{:08x}{:08x}{:016x}", i, gen as u32, tag));
                    }
                }
                i += self.shards;
            }
            if pass == 0 {
                self.expire_idle(shard);
            }
        }
        None
    }

    /// Checks a session id and marks the session used.
    pub fn lookup(&self, id: &str) -> Lookup {
        let Some((index, gen, tag)) = parse_id(id) else {
            return Lookup::Unknown;
        };
        let Some(slot) = self.slots.get(index) else {
            return Lookup::Unknown;
        };
        let state = slot.state.load(Ordering::Acquire);
        if state & LIVE == 0 || (state >> GEN_SHIFT) as u32 != gen {
            return Lookup::Unknown;
        }
        if slot.tag.load(Ordering::Relaxed) != tag {
            return Lookup::Unknown;
        }
        // The tag is written before the state is published, so a matching state read
        // after the tag proves the tag belonged to this generation.
        if slot.state.load(Ordering::Acquire) != state {
            return Lookup::Unknown;
        }
        let now = self.now();
        let last = slot.last_used.load(Ordering::Relaxed);
        if now.saturating_sub(last) > self.idle_secs {
            self.end_slot(index, state);
            return Lookup::Unknown;
        }
        if last != now {
            slot.last_used.store(now, Ordering::Relaxed);
        }
        Lookup::Valid(Session {
            version: ((state >> VERSION_SHIFT) & 0xff) as u8,
        })
    }

    /// Ends a session on every shard. False when it was not live.
    pub fn end(&self, id: &str) -> bool {
        let Some((index, gen, tag)) = parse_id(id) else {
            return false;
        };
        let Some(slot) = self.slots.get(index) else {
            return false;
        };
        let state = slot.state.load(Ordering::Acquire);
        if state & LIVE == 0 || (state >> GEN_SHIFT) as u32 != gen {
            return false;
        }
        if slot.tag.load(Ordering::Relaxed) != tag {
            return false;
        }
        self.end_slot(index, state)
    }

    fn end_slot(&self, index: usize, state: u64) -> bool {
        let next_gen = ((state >> GEN_SHIFT) as u32).wrapping_add(1) as u64;
        self.slots[index]
            .state
            .compare_exchange(
                state,
                next_gen << GEN_SHIFT,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Ends the idle sessions of one shard's slots; returns how many.
    pub fn expire_idle(&self, shard: usize) -> usize {
        let now = self.now();
        let mut ended = 0;
        let mut i = shard;
        while i < self.slots.len() {
            let slot = &self.slots[i];
            let state = slot.state.load(Ordering::Acquire);
            if state & LIVE != 0
                && now.saturating_sub(slot.last_used.load(Ordering::Relaxed)) > self.idle_secs
                && self.end_slot(i, state)
            {
                ended += 1;
            }
            i += self.shards;
        }
        ended
    }

    /// Live sessions across the process (a scan: for metrics, not the hot path).
    pub fn live(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state.load(Ordering::Relaxed) & LIVE != 0)
            .count()
    }
}

fn parse_id(id: &str) -> Option<(usize, u32, u64)> {
    if id.len() != SESSION_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let slot = u32::from_str_radix(&id[0..8], 16).ok()?;
    let gen = u32::from_str_radix(&id[8..16], 16).ok()?;
    let tag = u64::from_str_radix(&id[16..32], 16).ok()?;
    Some((slot as usize, gen, tag))
}

fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    u64::from_ne_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn issued_ids_validate_on_any_shard_until_ended() {
        let t = SessionTable::new(8, 2, Duration::from_secs(60));
        let a = t.create(0, 3).unwrap();
        let b = t.create(1, 1).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.lookup(&a), Lookup::Valid(Session { version: 3 }));
        assert_eq!(t.lookup(&b), Lookup::Valid(Session { version: 1 }));
        assert!(t.end(&a));
        assert_eq!(t.lookup(&a), Lookup::Unknown);
        assert!(!t.end(&a), "ending twice reports not live");
        assert_eq!(t.lookup(&b), Lookup::Valid(Session { version: 1 }));
        assert_eq!(t.live(), 1);
    }

    #[test]
    fn a_reused_slot_does_not_revive_an_ended_id() {
        let t = SessionTable::new(1, 1, Duration::from_secs(60));
        let a = t.create(0, 0).unwrap();
        assert!(t.create(0, 0).is_none(), "capacity is one");
        assert!(t.end(&a));
        let b = t.create(0, 0).unwrap();
        assert_eq!(a[..8], b[..8], "same slot");
        assert_eq!(t.lookup(&a), Lookup::Unknown);
        assert!(matches!(t.lookup(&b), Lookup::Valid(_)));
    }

    #[test]
    fn forged_and_malformed_ids_are_unknown() {
        let t = SessionTable::new(4, 1, Duration::from_secs(60));
        let a = t.create(0, 0).unwrap();
        let mut forged = a.clone();
        forged.replace_range(31..32, if a.ends_with('0') { "1" } else { "0" });
        assert_eq!(t.lookup(&forged), Lookup::Unknown);
        assert_eq!(t.lookup("not-a-session"), Lookup::Unknown);
        assert_eq!(
            t.lookup("ffffffff00000000000000000000000000"),
            Lookup::Unknown
        );
        assert_eq!(
            t.lookup("ffffffff000000000000000000000000"),
            Lookup::Unknown
        );
    }
}
