//! Where the coordinator keeps its operations in flight: by id, and by deadline.
//!
//! Every reply and every operation's end looks an operation up by id, several times per
//! request, so the lookup must cost one index, not the control bytes, bucket and entry of a
//! hash map (three dependent cache misses per reply under load). The coordinator hands its
//! ids out itself, in sequence (an id names one operation for 2^31 operations, so a reply
//! that comes after its operation ended, like the third acknowledgement of a QUORUM write,
//! finds nothing rather than a newer operation). An [`OpTable`] is two arrays:
//!
//! ```text
//!  index:  | id u32 | pos u32 | id u32 | pos u32 | ...   slot = id mod capacity (a power
//!            (0 = vacant: ids start at 1)                 of two); 8 bytes a slot
//!  ops:    | Option<operation> | Option<operation> | ...   a slab: a freed position is the
//!                                                          next one taken (last in, first out)
//! ```
//!
//! An id whose index slot is taken (by a long-lived operation a whole table behind) is
//! skipped when ids are handed out, so a lookup is one slot, one compare and one slab entry.
//! The index doubles when half full; two ids apart in one slot differ in some bit below the
//! capacity, so they stay apart at every larger one, and doubling never makes a collision.
//! Sequential ids walk the whole index, which is small (8 KiB per 1,024 slots); the
//! operations themselves, ~200 bytes each, go to the slab position freed last, whose lines
//! the ended operation just used, instead of to a slot of a large table last touched a
//! whole table ago.
//!
//! Deadlines are one request timeout after the start, so the order operations start in is
//! deadline order: a queue ([`Deadlines`]) takes them in O(1), where a sorted set paid a tree
//! insert and a tree remove per operation. An operation that ends early leaves its entry
//! behind (removed lazily: the caller checks the operation still has that deadline when it
//! comes due), and the queue drops such entries when they outnumber the live operations. The
//! rare deadline out of order (a write issued again keeps its first deadline under a new id)
//! goes to a small sorted set instead.

use std::collections::{BTreeSet, VecDeque};

/// Entries the deadline queue holds before it drops those of ended operations, whatever the
/// number of live ones.
const DEADLINES_COMPACT_MIN: usize = 4_096;

/// Index slots an [`OpTable`] starts with (it doubles as operations come: a shard with few
/// operations in flight keeps a small index).
const OP_TABLE_SLOTS_MIN: usize = 64;

/// The operations in flight by id (see the module doc): a direct-mapped index whose ids the
/// caller picks with [`OpTable::is_vacant`], over a slab of operations. Neither shrinks: both
/// stay at the most operations ever in flight, which the coordinator's `ops_max` bounds
/// (16,384 by default: 256 KiB of index and ~3 MiB of slab at most, per shard).
pub struct OpTable<V> {
    /// `(id, slab position)`; id 0 = vacant. `index.len()` is a power of two; slot
    /// `id & (len - 1)` holds `id`'s entry.
    index: Vec<(u32, u32)>,
    /// The slab: `Some` at every position an index entry names.
    ops: Vec<Option<V>>,
    /// Free slab positions, the last freed on top.
    free: Vec<u32>,
}

impl<V> Default for OpTable<V> {
    fn default() -> Self {
        OpTable {
            index: vec![(0, 0); OP_TABLE_SLOTS_MIN],
            ops: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<V> OpTable<V> {
    fn slot_of(&self, id: u32) -> usize {
        id as usize & (self.index.len() - 1)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.ops.len() - self.free.len()
    }

    /// The slab position of `id`, if held.
    fn position(&self, id: u32) -> Option<usize> {
        let (held, pos) = self.index[self.slot_of(id)];
        (held == id && id != 0).then_some(pos as usize)
    }

    /// The entry of `id`.
    pub fn get(&self, id: &u32) -> Option<&V> {
        self.position(*id).and_then(|p| self.ops[p].as_ref())
    }

    /// The entry of `id`, to change.
    pub fn get_mut(&mut self, id: &u32) -> Option<&mut V> {
        self.position(*id).and_then(|p| self.ops[p].as_mut())
    }

    /// Whether `id` (not 0) can be inserted: its index slot is empty.
    pub fn is_vacant(&self, id: u32) -> bool {
        self.index[self.slot_of(id)].0 == 0
    }

    /// Hold `v` under `id` (not 0), whose slot must be vacant ([`OpTable::is_vacant`]); the
    /// index doubles first when half full. Returns the entry `id` held before (always `None`
    /// when the caller checked).
    pub fn insert(&mut self, id: u32, v: V) -> Option<V> {
        assert_ne!(id, 0, "id 0 marks a vacant slot");
        if let Some(p) = self.position(id) {
            return self.ops[p].replace(v);
        }
        if (self.len() + 1) * 2 > self.index.len() {
            self.grow();
        }
        // Only reached by a caller that skipped the vacancy check: grow until `id` and the
        // holder of its slot part (they differ in some bit, so this ends).
        while !self.is_vacant(id) {
            self.grow();
        }
        let pos = match self.free.pop() {
            Some(p) => {
                self.ops[p as usize] = Some(v);
                p
            }
            None => {
                self.ops.push(Some(v));
                u32::try_from(self.ops.len() - 1).expect("operations are bounded by ops_max")
            }
        };
        let slot = self.slot_of(id);
        self.index[slot] = (id, pos);
        None
    }

    /// Take `id`'s entry out.
    pub fn remove(&mut self, id: &u32) -> Option<V> {
        let p = self.position(*id)?;
        let slot = self.slot_of(*id);
        self.index[slot] = (0, 0);
        self.free.push(p as u32);
        self.ops[p].take()
    }

    /// Double the index; every entry moves to its slot in the larger one (see the module
    /// doc: no two collide).
    fn grow(&mut self) {
        let bigger = self.index.len() * 2;
        let old = std::mem::replace(&mut self.index, vec![(0, 0); bigger]);
        for (id, pos) in old.into_iter().filter(|&(id, _)| id != 0) {
            let slot = self.slot_of(id);
            debug_assert_eq!(self.index[slot].0, 0, "doubling never collides");
            self.index[slot] = (id, pos);
        }
    }
}

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
    fn op_table_finds_what_it_holds_across_growth_and_reports_taken_slots() {
        let mut t = OpTable::default();
        let cap = OP_TABLE_SLOTS_MIN as u32;
        assert!(t.insert(1, "a").is_none());
        // One index behind: the same slot, so it is not vacant and not found.
        assert!(!t.is_vacant(1 + cap));
        assert_eq!(t.get(&(1 + cap)), None);
        assert!(t.is_vacant(2));
        // Past half full the index doubles; every entry is still found.
        for id in 2..=cap {
            assert!(t.is_vacant(id));
            t.insert(id, "b");
        }
        assert_eq!(t.len(), cap as usize);
        assert!(t.index.len() >= 2 * cap as usize);
        assert_eq!(t.get(&1), Some(&"a"));
        assert!((2..=cap).all(|id| t.get(&id) == Some(&"b")));
        // After doubling, 1 + cap has a slot of its own.
        assert!(t.is_vacant(1 + cap));
        assert_eq!(t.remove(&1), Some("a"));
        assert_eq!(t.remove(&1), None);
        assert_eq!(t.get(&1), None);
        *t.get_mut(&2).unwrap() = "c";
        assert_eq!(t.get(&2), Some(&"c"));
        assert_eq!(t.len(), cap as usize - 1);
    }

    #[test]
    fn op_table_reuses_the_last_freed_position_and_a_stale_id_finds_nothing() {
        let mut t = OpTable::default();
        t.insert(1, "a");
        t.insert(2, "b");
        t.remove(&1);
        // Id 3 takes the position 1 left (its lines are the warm ones)...
        t.insert(3, "c");
        assert_eq!(t.ops.len(), 2);
        assert_eq!(t.get(&3), Some(&"c"));
        // ... and a late reply to operation 1 finds nothing, not operation 3.
        assert_eq!(t.get(&1), None);
        assert_eq!(t.remove(&1), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn op_table_insert_into_a_taken_slot_grows_until_they_part() {
        let mut t = OpTable::default();
        t.insert(5, 1);
        // Same slot at 64, 128 and 256 slots; they part at 512.
        t.insert(5 + 256, 2);
        assert_eq!(t.get(&5), Some(&1));
        assert_eq!(t.get(&(5 + 256)), Some(&2));
        assert_eq!(t.index.len(), 512);
    }

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
}
