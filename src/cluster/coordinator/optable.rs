//! Where the coordinator keeps its operations in flight: by id, and by deadline.
//!
//! Every reply and every operation's end looks an operation up by id, several times per
//! request, so the lookup must cost one memory access, not the control bytes, bucket and
//! entry of a hash map (three dependent cache misses per reply under load). The coordinator
//! hands its ids out itself, so it picks them to fit an [`OpTable`]: a direct-mapped array
//! where id `i` lives in slot `i mod capacity`. An id whose slot is taken (by a long-lived
//! operation a whole table behind) is skipped when ids are handed out, so a lookup is one
//! index and one id compare. The table doubles when half full; two ids apart in one slot
//! differ in some bit below the capacity, so they stay apart at every larger one, and
//! doubling never makes a collision. Ids handed out in sequence sit side by side: the
//! operations of one batch share cache lines.
//!
//! ```text
//!  slots:  | id 0 | id 1 | id 2 | ... | id cap-1 |     cap = a power of two
//!            Option<(id u32, operation)>; an operation's id is its slot index mod cap
//! ```
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

/// Slots an [`OpTable`] starts with (it doubles as operations come: a shard with few
/// operations in flight keeps a small table).
const OP_TABLE_SLOTS_MIN: usize = 64;

/// The operations in flight by id (see the module doc): a direct-mapped table whose ids are
/// chosen by [`OpTable::vacant_id`].
pub struct OpTable<V> {
    /// `slots.len()` is a power of two; slot `id & (len - 1)` holds `id`'s entry.
    slots: Vec<Option<(u32, V)>>,
    len: usize,
}

impl<V> Default for OpTable<V> {
    fn default() -> Self {
        OpTable {
            slots: std::iter::repeat_with(|| None)
                .take(OP_TABLE_SLOTS_MIN)
                .collect(),
            len: 0,
        }
    }
}

impl<V> OpTable<V> {
    fn slot_of(&self, id: u32) -> usize {
        id as usize & (self.slots.len() - 1)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The entry of `id`.
    pub fn get(&self, id: &u32) -> Option<&V> {
        match &self.slots[self.slot_of(*id)] {
            Some((held, v)) if held == id => Some(v),
            _ => None,
        }
    }

    /// The entry of `id`, to change.
    pub fn get_mut(&mut self, id: &u32) -> Option<&mut V> {
        let i = self.slot_of(*id);
        match &mut self.slots[i] {
            Some((held, v)) if held == id => Some(v),
            _ => None,
        }
    }

    /// Whether `id` can be inserted: its slot is empty (a slot taken by `id` itself is not).
    pub fn is_vacant(&self, id: u32) -> bool {
        self.slots[self.slot_of(id)].is_none()
    }

    /// Hold `v` under `id`, whose slot must be vacant ([`OpTable::is_vacant`]); the table
    /// doubles first when half full. Returns the entry `id` held before (always `None` when
    /// the caller checked).
    pub fn insert(&mut self, id: u32, v: V) -> Option<V> {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        // Only reached by a caller that skipped the vacancy check: grow until `id` and the
        // holder of its slot part (they differ in some bit, so this ends).
        while let Some((held, _)) = &self.slots[self.slot_of(id)] {
            if *held == id {
                break;
            }
            self.grow();
        }
        let i = self.slot_of(id);
        let old = self.slots[i].replace((id, v)).map(|(_, old)| old);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Take `id`'s entry out.
    pub fn remove(&mut self, id: &u32) -> Option<V> {
        let i = self.slot_of(*id);
        if !matches!(&self.slots[i], Some((held, _)) if held == id) {
            return None;
        }
        self.len -= 1;
        self.slots[i].take().map(|(_, v)| v)
    }

    /// Double the slots; every entry moves to its slot in the larger table (see the module
    /// doc: no two collide).
    fn grow(&mut self) {
        let bigger = self.slots.len() * 2;
        let old = std::mem::replace(
            &mut self.slots,
            std::iter::repeat_with(|| None).take(bigger).collect(),
        );
        for (id, v) in old.into_iter().flatten() {
            let i = self.slot_of(id);
            debug_assert!(self.slots[i].is_none(), "doubling never collides");
            self.slots[i] = Some((id, v));
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
        // One table behind: the same slot, so it is not vacant and not found.
        assert!(!t.is_vacant(1 + cap));
        assert_eq!(t.get(&(1 + cap)), None);
        assert!(t.is_vacant(2));
        // Past half full the table doubles; every entry is still found.
        for id in 2..=cap {
            assert!(t.is_vacant(id));
            t.insert(id, "b");
        }
        assert_eq!(t.len(), cap as usize);
        assert!(t.slots.len() >= 2 * cap as usize);
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
    fn op_table_insert_into_a_taken_slot_grows_until_they_part() {
        let mut t = OpTable::default();
        t.insert(5, 1);
        // Same slot at 64, 128 and 256 slots; they part at 512.
        t.insert(5 + 256, 2);
        assert_eq!(t.get(&5), Some(&1));
        assert_eq!(t.get(&(5 + 256)), Some(&2));
        assert_eq!(t.slots.len(), 512);
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
