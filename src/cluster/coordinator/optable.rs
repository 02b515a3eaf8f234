//! Where the coordinator keeps its operations in flight: by id, and by deadline.
//!
//! Every reply and every operation's end looks an operation up by id, several times per
//! request, so the lookup is a hash map whose hasher suits the ids: they are handed out in
//! sequence, and one multiply by an odd constant spreads them over the table ([`IdHasher`];
//! SipHash, the default, costs more than the rest of the lookup and guards against chosen
//! keys, which these are not).
//!
//! Deadlines are one request timeout after the start, so the order operations start in is
//! deadline order: a queue ([`Deadlines`]) takes them in O(1), where a sorted set paid a tree
//! insert and a tree remove per operation. An operation that ends early leaves its entry
//! behind (removed lazily: the caller checks the operation still has that deadline when it
//! comes due), and the queue drops such entries when they outnumber the live operations. The
//! rare deadline out of order (a write issued again keeps its first deadline under a new id)
//! goes to a small sorted set instead.

use std::collections::{BTreeSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Entries the deadline queue holds before it drops those of ended operations, whatever the
/// number of live ones.
const DEADLINES_COMPACT_MIN: usize = 4_096;

/// A hasher for sequential `u32` ids (see the module doc). Only `write_u32` is meant to be
/// used; other writes fold their bytes in, for correctness, not speed.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }
    fn write_u32(&mut self, id: u32) {
        // Fibonacci hashing: the high bits, which hashbrown uses for its control bytes, and
        // the low ones, which pick the group, both change with every id.
        self.0 = (self.0 ^ u64::from(id)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The map of operations by id.
pub type IdMap<V> = std::collections::HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Operation deadlines (see the module doc). Entries are `(deadline_ms, id)`.
#[derive(Default)]
pub struct Deadlines {
    /// In start order, which is deadline order.
    queue: VecDeque<(u64, u32)>,
    /// Deadlines that would break the queue's order.
    other: BTreeSet<(u64, u32)>,
}

impl Deadlines {
    /// Note that operation `id` ends at `deadline_ms`. `live` counts the operations in
    /// flight and `alive(deadline, id)` says whether an entry is still theirs: past
    /// [`DEADLINES_COMPACT_MIN`] entries and twice `live`, the dead ones are dropped (so the
    /// queue is at most about twice the operations in flight, in amortised O(1)).
    pub fn push(
        &mut self,
        deadline_ms: u64,
        id: u32,
        live: usize,
        alive: impl Fn(u64, u32) -> bool,
    ) {
        if self.queue.back().is_none_or(|&(d, _)| d <= deadline_ms) {
            self.queue.push_back((deadline_ms, id));
        } else {
            self.other.insert((deadline_ms, id));
        }
        if self.queue.len() > DEADLINES_COMPACT_MIN.max(2 * live) {
            self.queue.retain(|&(d, id)| alive(d, id));
            self.other.retain(|&(d, id)| alive(d, id));
        }
    }

    /// The earliest deadline held (perhaps of an operation already ended).
    pub fn first(&self) -> Option<u64> {
        let q = self.queue.front().map(|&(d, _)| d);
        let o = self.other.first().map(|&(d, _)| d);
        match (q, o) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Take the earliest entry due at `now_ms`, if any.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, u32)> {
        let q = self.queue.front().copied().filter(|&(d, _)| d <= now_ms);
        let o = self.other.first().copied().filter(|&(d, _)| d <= now_ms);
        match (q, o) {
            (Some(a), Some(b)) if b < a => self.other.pop_first(),
            (Some(_), _) => self.queue.pop_front(),
            (None, Some(_)) => self.other.pop_first(),
            (None, None) => None,
        }
    }

    /// Bring every deadline later than `latest_ms` back to it (the wall clock stepped
    /// back); returns the ids moved. The queue stays in order: `min(d, latest)` of an
    /// ordered sequence is ordered.
    pub fn clamp(&mut self, latest_ms: u64) -> Vec<u32> {
        let mut moved = Vec::new();
        for (d, id) in self.queue.iter_mut() {
            if *d > latest_ms {
                *d = latest_ms;
                moved.push(*id);
            }
        }
        let late: Vec<(u64, u32)> = self.other.range((latest_ms + 1, 0)..).copied().collect();
        for (d, id) in late {
            self.other.remove(&(d, id));
            self.other.insert((latest_ms, id));
            moved.push(id);
        }
        moved
    }

    /// The latest deadline held, if any.
    pub fn last(&self) -> Option<u64> {
        let q = self.queue.back().map(|&(d, _)| d);
        let o = self.other.last().map(|&(d, _)| d);
        q.max(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_deadline_order_including_out_of_order_ones() {
        let mut d = Deadlines::default();
        d.push(10, 1, 0, |_, _| true);
        d.push(20, 2, 0, |_, _| true);
        d.push(15, 3, 0, |_, _| true); // a write issued again keeps its first deadline
        d.push(30, 4, 0, |_, _| true);
        assert_eq!(d.first(), Some(10));
        assert_eq!(d.last(), Some(30));
        assert_eq!(d.pop_due(9), None);
        let due: Vec<_> = std::iter::from_fn(|| d.pop_due(25)).collect();
        assert_eq!(due, [(10, 1), (15, 3), (20, 2)]);
        assert_eq!(d.first(), Some(30));
    }

    #[test]
    fn a_step_back_of_the_clock_brings_late_deadlines_in() {
        let mut d = Deadlines::default();
        for (t, id) in [(10, 1), (50, 2), (90, 3)] {
            d.push(t, id, 0, |_, _| true);
        }
        d.push(40, 4, 0, |_, _| true);
        let mut moved = d.clamp(45);
        moved.sort_unstable();
        assert_eq!(moved, [2, 3]);
        let due: Vec<_> = std::iter::from_fn(|| d.pop_due(45)).collect();
        assert_eq!(due, [(10, 1), (40, 4), (45, 2), (45, 3)]);
    }

    #[test]
    fn entries_of_ended_operations_are_dropped_when_they_pile_up() {
        let mut d = Deadlines::default();
        // Only ids below 10 are live: the rest ended early.
        for id in 0..(3 * DEADLINES_COMPACT_MIN as u32) {
            d.push(u64::from(id), id, 10, |_, id| id < 10);
        }
        assert!(
            d.queue.len() <= DEADLINES_COMPACT_MIN + 1,
            "{}",
            d.queue.len()
        );
        assert_eq!(d.pop_due(0), Some((0, 0)));
    }

    #[test]
    fn sequential_ids_spread_over_the_hash() {
        let h = |id: u32| {
            let mut x = IdHasher::default();
            x.write_u32(id);
            x.finish()
        };
        let top: std::collections::HashSet<u64> = (0..1024).map(|i| h(i) >> 57).collect();
        assert!(top.len() >= 100, "{}", top.len());
    }
}
