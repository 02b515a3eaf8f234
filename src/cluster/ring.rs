//! Placement: which nodes hold each ring partition, as the rest of the node reads it.
//!
//! The key space is cut into [`PARTITION_COUNT`] fixed partitions by the top bits of the key
//! hash ([`crate::hash::partition_of`]). Which nodes own each partition is an
//! [`Ownership`]: a versioned value with N distinct owners per partition, primary first
//! (algorithm, balance and encoding in `ownership.rs`). The cluster's [`RingState`] holds the
//! ownership reads use and, while a change runs, the one it moves towards. A `Ring` is a cheap
//! read-only handle on one ring state (an `Arc`), with the lookups every caller uses:
//!
//! ```text
//!   key ──hash──▶ partition p (top 8 bits) ──current──▶ [primary, 2nd, 3rd]   reads
//!                                           ──+ pending─▶ [.., new owner]       writes
//! ```
//!
//! Each ring also knows, per partition, the version at which the partition's write set
//! (owners, pending owners, the departing node) last changed here ([`Ring::changed_at`]): a
//! replica refuses a REPLICATE or READ whose sender's ring is older than that (protocol.md
//! § 18.2), since the sender chose its replicas from a set that no longer holds. It is derived
//! when a state is adopted ([`Ring::follow`]) from the ring held before; a ring made from a
//! state alone (start-up, a restart) takes the state's version for every partition, which
//! only refuses more senders (safe: they pull the newer ring and try again).
//!
//! [`Ring::new`] is the first ring of a cluster started with `--nodes`
//! ([`Ownership::initial`]): every node computes the same one from the same node list and N.
//! Every node holds its share of placements within one, and of primaries within one.

use super::ownership::Ownership;
use super::ringstate::RingState;
use crate::hash::partition_of;
use crate::limits::PARTITION_COUNT;
use std::sync::Arc;

/// The placement of every partition (a handle on a [`RingState`]).
#[derive(Clone, Debug)]
pub struct Ring {
    state: Arc<RingState>,
    /// Per partition: the ring version at which its write set last changed (module doc).
    changed_at: Arc<Vec<u64>>,
}

impl Ring {
    /// The first ring of `nodes` (distinct ids) with `replicas` copies of each partition
    /// (addresses unknown). The configuration was validated before (distinct ids,
    /// 1 ≤ N ≤ nodes): a bad one is a programmer error.
    pub fn new(nodes: &[u32], replicas: usize) -> Ring {
        let listed: Vec<(u32, String)> = nodes.iter().map(|&n| (n, String::new())).collect();
        match RingState::initial(&listed, replicas) {
            Ok(s) => Ring::from_state(Arc::new(s)),
            Err(e) => panic!("ring of {nodes:?} with N={replicas}: {e}"),
        }
    }

    /// The ring of a ring state (decided by the leader, pulled from a peer, or read back).
    pub fn from_state(state: Arc<RingState>) -> Ring {
        let changed_at = Arc::new(vec![state.version(); PARTITION_COUNT]);
        Ring { state, changed_at }
    }

    /// The ring of `state`, adopted after this one: a partition whose write set is the same
    /// in both keeps the version it last changed at, the others changed at `state`'s.
    pub fn follow(&self, state: Arc<RingState>) -> Ring {
        // Between two rings of one running change, a partition's write set changes once at
        // most (its flip: moves only go forward), so an equal set means no change in between,
        // even across versions this node never saw. Otherwise only the next version tells:
        // after a gap that spans changes, every partition counts as changed (safe: module doc).
        let consecutive = self.version() >= 1 && state.version() == self.version() + 1;
        let one_change = self.version() >= 1
            && state.version() > self.version()
            && self.state.change().is_some()
            && state.change().is_some()
            && self.state.since() == state.since();
        if !consecutive && !one_change {
            return Ring::from_state(state);
        }
        let next = Ring::from_state(state);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let changed_at = (0..PARTITION_COUNT)
            .map(|p| {
                self.write_set(p, &mut a);
                next.write_set(p, &mut b);
                let same = a == b && self.preference_list(p) == next.preference_list(p);
                if same {
                    self.changed_at[p]
                } else {
                    next.version()
                }
            })
            .collect();
        Ring {
            changed_at: Arc::new(changed_at),
            ..next
        }
    }

    /// The ring version at which the write set of partition `p` last changed as this node
    /// knows it: a sender whose ring is older chose its replicas from an outdated set.
    pub fn changed_at(&self, p: usize) -> u64 {
        self.changed_at[p]
    }

    /// The ring state this ring shows.
    pub fn state(&self) -> &Arc<RingState> {
        &self.state
    }

    /// The ownership reads use.
    pub fn ownership(&self) -> &Ownership {
        self.state.current()
    }

    /// The ring's version.
    pub fn version(&self) -> u64 {
        self.state.version()
    }

    /// Copies of each partition (N).
    pub fn replicas(&self) -> usize {
        self.state.replicas()
    }

    /// The nodes that own partitions (current ownership), ascending.
    pub fn nodes(&self) -> &[u32] {
        self.state.current().nodes()
    }

    /// The preference list of partition `p` (reads): N distinct nodes, primary first.
    pub fn preference_list(&self, p: usize) -> &[u32] {
        self.state.owners(p)
    }

    /// The preference list of the partition of `key`.
    pub fn preference_for_key(&self, key: &[u8]) -> &[u32] {
        self.preference_list(partition_of(key))
    }

    /// Where a write of partition `p` goes: its owners, then its pending owners (nodes
    /// filling their copy while it moves) and the leaving node it flipped away from while
    /// the leave runs ([`RingState::departing`]). Appended to `out` (cleared first); returns
    /// how many there are beyond the owners (each asks one more acknowledgement).
    pub fn write_set(&self, p: usize, out: &mut Vec<u32>) -> usize {
        out.clear();
        out.extend_from_slice(self.state.owners(p));
        let owners = out.len();
        out.extend(self.state.pending(p));
        out.extend(self.state.departing(p));
        out.len() - owners
    }

    /// Whether `node` holds a copy of partition `p`: an owner, or a pending owner.
    pub fn holds(&self, node: u32, p: usize) -> bool {
        self.state.holds(node, p)
    }

    /// Every node holding a copy of `p` (owners, then pending owners).
    pub fn holders(&self, p: usize) -> Vec<u32> {
        let mut v = Vec::new();
        self.write_set(p, &mut v);
        v
    }

    /// The partitions `node` holds a copy of, ascending.
    pub fn partitions_of(&self, node: u32) -> Vec<usize> {
        (0..PARTITION_COUNT)
            .filter(|&p| self.holds(node, p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::REPLICAS_MAX;

    #[test]
    fn lists_have_n_distinct_nodes() {
        for nodes in 1..=6u32 {
            let ids: Vec<u32> = (1..=nodes).collect();
            for n in 1..=(nodes as usize).min(REPLICAS_MAX) {
                let ring = Ring::new(&ids, n);
                for p in 0..PARTITION_COUNT {
                    let list = ring.preference_list(p);
                    assert_eq!(list.len(), n);
                    let mut s = list.to_vec();
                    s.sort();
                    s.dedup();
                    assert_eq!(s.len(), n, "partition {p}: {list:?}");
                }
            }
        }
    }

    #[test]
    fn n_equal_to_nodes_puts_everything_everywhere() {
        let ring = Ring::new(&[1, 2, 3], 3);
        for id in [1, 2, 3] {
            assert_eq!(ring.partitions_of(id).len(), PARTITION_COUNT);
        }
    }

    #[test]
    fn primaries_are_balanced() {
        for count in 3..=5u32 {
            let ids: Vec<u32> = (1..=count).collect();
            let ring = Ring::new(&ids, 1);
            let share = PARTITION_COUNT as f64 / count as f64;
            for &id in &ids {
                let owned = ring.partitions_of(id).len() as f64;
                assert!(
                    (owned - share).abs() <= 1.0,
                    "{count} nodes: node {id} owns {owned}, fair share {share:.0}"
                );
            }
        }
    }

    /// A partition's "changed at" version follows its write set: a join changes the moving
    /// partitions only, a pause none, a flip its own partition; a gap of versions that spans
    /// changes (or a ring made from a state alone) counts every partition as changed.
    #[test]
    fn changed_at_follows_the_write_sets() {
        let r1 = Ring::new(&[1, 2, 3], 2);
        let v1 = r1.version();
        assert!((0..PARTITION_COUNT).all(|p| r1.changed_at(p) == v1));
        let r2 = r1.follow(Arc::new(r1.state().admit(4, "127.0.0.1:7004").unwrap()));
        let v2 = r2.version();
        assert_eq!(v2, v1 + 1);
        let moving = r2.state().moving_partitions();
        assert!(!moving.is_empty() && moving.len() < PARTITION_COUNT);
        for p in 0..PARTITION_COUNT {
            let want = if moving.contains(&p) { v2 } else { v1 };
            assert_eq!(r2.changed_at(p), want, "partition {p}");
        }
        let r3 = r2.follow(Arc::new(r2.state().set_paused(true)));
        assert!((0..PARTITION_COUNT).all(|p| r3.changed_at(p) == r2.changed_at(p)));
        let flipped = moving[0];
        let r4 = r3.follow(Arc::new(r3.state().complete(flipped).unwrap()));
        assert_eq!(r4.changed_at(flipped), r4.version());
        assert_eq!(r4.changed_at(moving[1]), v2, "not flipped: unchanged");
        // Skipping a version within the change: still exact.
        let s5 = r4.state().set_paused(false);
        let s6 = s5.complete(moving[1]).unwrap();
        let r6 = r4.follow(Arc::new(s6.clone()));
        assert_eq!(r6.changed_at(moving[1]), r6.version());
        assert_eq!(r6.changed_at(flipped), r4.version());
        // From a state alone, or across changes: every partition changed at its version.
        let fresh = Ring::from_state(Arc::new(s6));
        assert!((0..PARTITION_COUNT).all(|p| fresh.changed_at(p) == fresh.version()));
        let skipped = r1.follow(r6.state().clone());
        assert!((0..PARTITION_COUNT).all(|p| skipped.changed_at(p) == r6.version()));
    }

    #[test]
    fn same_input_same_ring() {
        let a = Ring::new(&[3, 1, 2], 2);
        let b = Ring::new(&[1, 2, 3], 2);
        assert_eq!(a.ownership(), b.ownership());
    }

    #[test]
    fn adding_a_node_moves_little() {
        for n in 1..=3 {
            let old = Ring::new(&[1, 2, 3, 4], n);
            let new = Ring::new(&[1, 2, 3, 4, 5], n);
            let mut moved = 0;
            for p in 0..PARTITION_COUNT {
                let (o, w) = (old.preference_list(p), new.preference_list(p));
                // The new node replaces at most one owner, in its slot: the other owners keep
                // their places, and nothing moves between old nodes.
                let changed: Vec<usize> = (0..n).filter(|&i| o[i] != w[i]).collect();
                assert!(changed.len() <= 1, "partition {p}: {o:?} -> {w:?}");
                if let Some(&i) = changed.first() {
                    assert_eq!(w[i], 5);
                    moved += 1;
                }
            }
            // The new node takes exactly its share: one placement in five.
            assert_eq!(moved, PARTITION_COUNT * n / 5, "N={n}");
        }
    }
}
