//! The node's membership view as a value: what the membership shard tells the other shards of
//! its node.
//!
//! A node runs one membership (gossip, failure detector, clock measurement, leader choice) on
//! its [`MEMBERSHIP_SHARD`]; the other shards of the node run coordinator, hints and
//! anti-entropy for their partitions and never gossip. They decide with the last
//! [`NodeView`] the membership shard sent them as mail:
//!
//! ```text
//!  shard 0 (membership)                          shard j (j > 0)
//!  ClusterNode::poll_view ── Mail::View ───────▶ ClusterNode::on_view
//!    alive ids, members, leader, ClusterClock       decides quorums, hints, the max-offset
//!    CLUSTER text, clock figures (STATS)            rule, cluster_now_ms, CLUSTER, STATS,
//!                                                   peer addresses (links to joined nodes)
//!    member events since the last view              hint delivery on recovery
//!    tombstone horizons (when they changed)         adopts them, sweeps, store horizon
//!    ring state (when it changed)                   follows it: trees, copies, drops
//!  ClusterNode::on_reports ◀── Mail::Reports ─── ClusterNode::take_reports
//!    completed exchanges, reported to the leader    (its anti-entropy never sends STATUS)
//! ```
//!
//! A view is sent when what the shards decide with differs from the last one sent (checked on
//! every cluster tick), and at least every [`VIEW_REFRESH_MS`]. The view is a plain value: deterministic, cheap to
//! clone (a few hundred bytes, a few KiB with many members; horizons only ride along when they changed and on refreshes).
//!
//! A shard that has no view yet fails safe: it counts no peer alive and refuses to coordinate
//! writes (CLOCK_OFFSET, "not measured yet"), since its clock has not been measured.

use super::clock::ClusterClock;
use super::membership::MemberEvent;
use super::node::ClockFigures;
use std::net::SocketAddr;

/// The shard of a node that runs its membership: gossip, failure detection, clock
/// measurement and leader choice. Inbound GOSSIP and AE_STATUS frames are served there.
pub const MEMBERSHIP_SHARD: usize = 0;

/// The membership shard sends its view at least this often even when nothing changed, so
/// that a shard never decides with a view older than this (horizons are re-sent too).
pub const VIEW_REFRESH_MS: u64 = 1_000;

/// Member events a view carries at most; older ones are dropped past it. Events only speed
/// things up on the other shards (hint delivery at once on a recovery); the alive set they
/// decide with is always whole.
pub const VIEW_EVENTS_MAX: usize = 64;

/// The membership view of a node, as sent by its membership shard to the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// The ids of the alive nodes, ascending (this node's included).
    pub alive: Vec<u32>,
    /// Every known member with its address, ids ascending (this node's included): follower
    /// shards open links to nodes that joined after they started with these addresses.
    pub members: Vec<(u32, SocketAddr)>,
    /// The leader (lowest-id alive node).
    pub leader: u32,
    /// This node's incarnation (STATS).
    pub incarnation: u64,
    /// This node's clock against the cluster's: the max-offset rule and `cluster_now_ms`.
    pub clock: Option<ClusterClock>,
    /// The clock figures of STATS.
    pub figures: ClockFigures,
    /// The CLUSTER reply text.
    pub text: String,
    /// Member events since the previous view, oldest first (at most [`VIEW_EVENTS_MAX`]).
    pub events: Vec<MemberEvent>,
    /// Tombstone horizons `(partition, raw version)` adopted by the membership shard (it
    /// receives the leader's decisions); empty when unchanged since the previous view.
    pub horizons: Vec<(u16, u64)>,
    /// The version of the ring state the membership shard holds.
    pub ring_version: u64,
    /// Until when (the node's clock) the membership shard's ring lease runs (0: never
    /// confirmed): the node's shards coordinate writes only within it (`node/lease.rs`).
    pub ring_lease_until: u64,
    /// That ring state, when it changed since the previous view (and on refreshes): the
    /// shard adopts it if newer than its own.
    pub ring: Option<std::sync::Arc<super::ringstate::RingState>>,
}

impl NodeView {
    /// Whether `self` says the same as `other` in what the shards decide with (alive set,
    /// members and their addresses, leader, incarnation, clock): if not, a new view must go out at once. Events and
    /// horizons are deltas; the CLUSTER text and clock figures are for display and follow
    /// with the next view (at the latest [`VIEW_REFRESH_MS`] later).
    pub fn same_state(&self, other: &NodeView) -> bool {
        self.alive == other.alive
            && self.members == other.members
            && self.leader == other.leader
            && self.incarnation == other.incarnation
            && self.clock == other.clock
            && self.ring_version == other.ring_version
            && self.ring_lease_until == other.ring_lease_until
    }
}
