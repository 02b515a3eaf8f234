//! Placement: which nodes hold each ring partition.
//!
//! The key space is cut into [`PARTITION_COUNT`] fixed partitions by the top bits of the key
//! hash ([`crate::hash::partition_of`]). Ownership comes from consistent hashing with virtual
//! nodes: every node places [`VNODES_PER_NODE`] points on a 64-bit ring, at
//! `fmix64(VNODE_SALT ^ (node id << 32 | vnode index))`. Partition `p` sits at
//! `p << (64 - PARTITION_BITS)`; its preference list is the first N *distinct* nodes met walking
//! clockwise from there (wrapping at 2^64). The first is the partition's primary.
//!
//! ```text
//!   0 ─────●p0────▲a──▲c──●p1──▲b───▲a───●p2──▲c── ... ──▶ 2^64 (wraps to 0)
//!     partition p0 → [a, c, b] (N=3)    p1 → [b, a, c]    p2 → [c, ...]
//! ```
//!
//! Every node computes the same ring from the same node list and N (nothing is exchanged), and
//! the lists are precomputed once per partition. Adding a node only inserts its vnodes: a
//! partition's list changes only where the new node enters it (the others shift down one place
//! and the last drops out), so about 1/(nodes) of the placements move. With N equal to the
//! number of nodes every node holds every partition.

use crate::hash::{fmix64, partition_of, PARTITION_BITS};
use crate::limits::{PARTITION_COUNT, REPLICAS_MAX, VNODES_PER_NODE};

/// Mixed into every vnode position so the ring does not share structure with the key hash.
const VNODE_SALT: u64 = 0x6b76_645f_7269_6e67; // "kvd_ring"

/// The precomputed placement of every partition.
#[derive(Clone, Debug)]
pub struct Ring {
    replicas: usize,
    nodes: Vec<u32>,
    /// `PARTITION_COUNT × replicas` node ids: partition p's list is
    /// `prefs[p * replicas .. (p + 1) * replicas]`.
    prefs: Vec<u32>,
}

/// Where vnode `index` of `node` sits on the ring.
pub fn vnode_position(node: u32, index: u32) -> u64 {
    fmix64(VNODE_SALT ^ ((node as u64) << 32 | index as u64))
}

impl Ring {
    /// The ring of `nodes` (distinct ids) with `replicas` copies of each partition and the
    /// default number of vnodes.
    pub fn new(nodes: &[u32], replicas: usize) -> Ring {
        Ring::with_vnodes(nodes, replicas, VNODES_PER_NODE)
    }

    /// The ring with `vnodes` virtual nodes per node (tests compare vnode counts).
    pub fn with_vnodes(nodes: &[u32], replicas: usize, vnodes: usize) -> Ring {
        assert!(!nodes.is_empty(), "a ring needs a node");
        assert!(
            replicas >= 1 && replicas <= nodes.len() && replicas <= REPLICAS_MAX,
            "replicas {replicas} with {} nodes",
            nodes.len()
        );
        assert!(vnodes >= 1 && vnodes <= u32::MAX as usize);
        let mut sorted_nodes = nodes.to_vec();
        sorted_nodes.sort_unstable();
        sorted_nodes.dedup();
        assert_eq!(sorted_nodes.len(), nodes.len(), "duplicate node ids");

        let mut points: Vec<(u64, u32)> = Vec::with_capacity(nodes.len() * vnodes);
        for &n in &sorted_nodes {
            for i in 0..vnodes as u32 {
                points.push((vnode_position(n, i), n));
            }
        }
        // Ties of position (astronomically rare) are broken by node id so every node sorts
        // the ring the same way.
        points.sort_unstable();

        let mut prefs = Vec::with_capacity(PARTITION_COUNT * replicas);
        for p in 0..PARTITION_COUNT {
            let pos = (p as u64) << (64 - PARTITION_BITS);
            let start = points.partition_point(|&(x, _)| x < pos);
            let first = prefs.len();
            // At most one full turn: every node appears on it, so N distinct are found.
            for k in 0..points.len() {
                let node = points[(start + k) % points.len()].1;
                if !prefs[first..].contains(&node) {
                    prefs.push(node);
                    if prefs.len() - first == replicas {
                        break;
                    }
                }
            }
            assert_eq!(prefs.len() - first, replicas);
        }
        Ring {
            replicas,
            nodes: sorted_nodes,
            prefs,
        }
    }

    /// Copies of each partition (N).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The nodes of the ring, ascending.
    pub fn nodes(&self) -> &[u32] {
        &self.nodes
    }

    /// The preference list of partition `p`: N distinct nodes, primary first.
    pub fn preference_list(&self, p: usize) -> &[u32] {
        &self.prefs[p * self.replicas..(p + 1) * self.replicas]
    }

    /// The preference list of the partition of `key`.
    pub fn preference_for_key(&self, key: &[u8]) -> &[u32] {
        self.preference_list(partition_of(key))
    }

    /// Whether `node` holds a copy of partition `p`.
    pub fn holds(&self, node: u32, p: usize) -> bool {
        self.preference_list(p).contains(&node)
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
                    (owned - share).abs() <= share * 0.35,
                    "{count} nodes: node {id} owns {owned}, fair share {share:.0}"
                );
            }
        }
    }

    #[test]
    fn same_input_same_ring() {
        let a = Ring::new(&[3, 1, 2], 2);
        let b = Ring::new(&[1, 2, 3], 2);
        assert_eq!(a.prefs, b.prefs);
    }

    #[test]
    fn adding_a_node_moves_little() {
        for n in 1..=3 {
            let old = Ring::new(&[1, 2, 3, 4], n);
            let new = Ring::new(&[1, 2, 3, 4, 5], n);
            let mut moved = 0;
            for p in 0..PARTITION_COUNT {
                let (o, w) = (old.preference_list(p), new.preference_list(p));
                // Without the new node, the new list is a prefix of the old one: nothing moves
                // between old nodes.
                let kept: Vec<u32> = w.iter().copied().filter(|&x| x != 5).collect();
                assert_eq!(&o[..kept.len()], &kept[..], "partition {p}");
                moved += usize::from(w.contains(&5));
            }
            // The new node takes about n/5 of the placements (one node in five).
            let share = PARTITION_COUNT * n / 5;
            assert!(
                moved > share / 2 && moved < share * 3 / 2,
                "N={n}: {moved} partitions moved to the new node, expected about {share}"
            );
        }
    }
}
