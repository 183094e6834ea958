//! A table of per-connection slots, reused as connections come and go.
//!
//! The shard's read deadlines ([`super::deadlines`]) and its epoll set
//! ([`super::readiness`]) each keep one slot per open connection, found by a
//! key that stays valid for the connection's life. Slots are never removed, so
//! a key never dangles and the table holds at most as many slots as the shard
//! ever had connections at once (`limits.max_connections_per_shard`).

use std::ops::{Deref, DerefMut};

/// Slots of `T`, with a free list of those no connection holds.
pub struct Slots<T> {
    items: Vec<T>,
    free: Vec<usize>,
}

impl<T: Default> Slots<T> {
    pub const fn new() -> Slots<T> {
        Slots {
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    /// The key of a slot holding `T::default()`: a free one, or a new one.
    pub fn take(&mut self) -> usize {
        match self.free.pop() {
            Some(key) => {
                debug_assert!(key < self.items.len());
                key
            }
            None => {
                self.items.push(T::default());
                self.items.len() - 1
            }
        }
    }

    /// Empties a slot (back to `T::default()`) and frees its key.
    pub fn give_back(&mut self, key: usize) {
        self.items[key] = T::default();
        debug_assert!(!self.free.contains(&key), "slot {key} given back twice");
        self.free.push(key);
    }
}

impl<T: Default> Default for Slots<T> {
    fn default() -> Slots<T> {
        Slots::new()
    }
}

impl<T> Deref for Slots<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<T> DerefMut for Slots<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_reused_and_slots_come_back_empty() {
        let mut slots: Slots<u32> = Slots::new();
        let (a, b) = (slots.take(), slots.take());
        assert_eq!((a, b), (0, 1));
        slots[a] = 7;
        slots.give_back(a);
        assert_eq!(slots.take(), a, "a freed key is taken first");
        assert_eq!(slots[a], 0, "and its slot is empty");
        assert_eq!(slots.len(), 2);
    }
}
