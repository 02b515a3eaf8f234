//! Active anti-entropy: replicas of a partition compare their hash trees
//! ([`super::merkle`]) and exchange only the keys that differ, newest version winning; the
//! leader turns completed exchanges into per-partition tombstone horizons below which
//! tombstones may be dropped without a deleted key ever coming back.
//!
//! ## Trees
//! One [`PartitionTree`] per partition this core holds (per the ring, and owned by its shard),
//! built from [`Store::scan_keys`] when a round, a copy or a peer's exchange needs them and
//! then maintained by a hook on every store apply while anti-entropy works: every write the
//! cluster core applies goes through [`Tracked`], a `Store` wrapper that updates the tree when
//! the store reports `Applied::Stored`. Idle trees are dropped, and writes then skip their
//! upkeep (`lifecycle.rs`).
//!
//! ## Rounds and exchanges
//! Every `anti_entropy_interval_ms` (and on demand: [`AntiEntropy::trigger`], the client
//! ANTI_ENTROPY opcode) a *round* starts: one exchange with every other replica of every
//! partition held, at most [`AE_EXCHANGES_IN_FLIGHT_MAX`] at once. Both ends of a pair start
//! exchanges (the one whose round comes first does the work; the other's then finds equal
//! roots at the cost of one small round trip). An exchange, initiator I and responder R:
//!
//! ```text
//!  I ── AE_TREE level 0 [root] ──────────▶ R      equal root: done (one round trip)
//!  I ◀── R's hashes ─────────────────────── R
//!  I ── AE_TREE level 1 [differing mids] ▶ R      then level 2 (segments) likewise
//!  I ── AE_KEYS (I's key lists of the differing segments) ─▶ R
//!  I ◀── records R holds newer (values included) + keys R wants ── R
//!  I ── AE_PUSH (the wanted records) ────▶ R     acknowledged; repeat AE_KEYS/AE_PUSH
//! ```
//!
//! Pulled records arrive inside replies and pushed ones are acknowledged, so when the last
//! reply arrives both replicas hold the newer of the two records for every key that differed
//! when the exchange looked: the exchange is *complete* and is reported to the leader with its
//! start time. Bounds: [`AE_MESSAGE_BYTES_MAX`] per message (key lists, records), tree nodes
//! per message, keys and bytes moved per round ([`AE_ROUND_KEYS_MAX`], [`AE_ROUND_BYTES_MAX`]:
//! past them the round stops and is not full), exchanges in flight, and sweep work per tick.
//!
//! ## Tombstone horizon (decided by the leader)
//! Each node sends the leader (AE_STATUS) the start times of its completed exchanges, per
//! (partition, peer). With several shards per node, the shards hand their completed exchanges
//! to the node's membership shard ([`super::view::MEMBERSHIP_SHARD`]), which sends them for
//! the whole node; AE_STATUS is served by the leader's membership shard, so the leader's one
//! decision sees every report of a partition whatever the shard counts of the nodes, and the
//! horizons it learns reach the node's other shards in its view mail. For partition p with replicas R_p the leader takes the *included*
//! replicas — all of R_p except nodes failed for longer than `tombstone_window_ms` — and, if
//! every pair of them has a completed exchange, `S = min over pairs of the latest start`.
//! Every record any included replica held at S is then held by all of them (each pair
//! exchanged after S), so the horizon `H_p = version(S − grace, 0, 0)` (grace = the request
//! timeout, covering writes still in flight at S and small clock skew) is safe: every
//! tombstone below H_p is on every included replica. The leader answers AE_STATUS with its
//! horizons; nodes keep the maximum they have seen (also carried in every AE frame), sweep
//! collectable entries (tombstones, expired values) below it out of their trees, and give the
//! store `min H_p` over the partitions they hold as its compaction horizon. Horizons are kept
//! in memory only: after a restart a node learns them again from its first exchanges.
//!
//! Two rules keep collected tombstones from resurrecting their keys:
//! 1. **Guard.** A replica refuses (answers stale) any write below `H_p` for a key it holds
//!    no record of: such a write is older than a collected tombstone (everything below `H_p`
//!    reached every included replica, so an absent key below the horizon was deleted).
//!    Records moved by anti-entropy from a peer that is not rejoining bypass it (they are
//!    authoritative).
//! 2. **Rejoin.** A node that may have been excluded — its newest record, or the gap between
//!    two of its ticks, is older than `tombstone_window_ms` — is *rejoining*: it answers no
//!    reads (peer READs and local reads of its coordinator fail, so coordinators use the
//!    other replicas; `kvd` answers LGET UNAVAILABLE) until a round in which every partition
//!    it holds completed an exchange with a live replica and no exchange failed (replicas
//!    known dead are skipped, so a dead peer cannot keep it unreadable); that round starts
//!    soon rather than an interval later. In its exchanges with a peer that is not
//!    rejoining, a non-collectable record below `H_p` that only the rejoining side holds is
//!    deleted there (a tombstone one above its version): the peer proves the key was deleted
//!    and collected. Choice: reads skip the rejoining node rather than block.
//!
//! A tombstone swept from the trees stays in the store until compaction drops it, so an
//! exchange also consults the store: a key one side lists and the other's tree lacks is
//! answered with the store's record when that is newer (the swept tombstone), and a pulled
//! record the store finds stale is pushed back, newest winning.
//!
//! Crashes: a node that lost unsynced writes (`--sync never|interval`) may have vouched for
//! them in an earlier exchange. Anti-entropy then prefers keeping data: a value it lost is
//! restored from its peers, and a tombstone it lost may let the value come back on it — the
//! same as losing that (unsynced) delete, which the sync policy allows. With `--sync always`
//! nothing an exchange moved is acknowledged before it is durable.
//!
//! Limit: a node cut off by a network partition (not stopped) for longer than the window, that
//! accepted writes meanwhile, is not detected as rejoining; as with Cassandra's gc_grace, the
//! window must be longer than any outage whose writes must survive.
//!
//! ## Source files (this folder)
//!
//! ```text
//! antientropy/
//!   mod.rs        AntiEntropy (state, construction, build), AaeStats, the driver's
//!                 input/output API (on_tick, poll_transmit, trigger, events), STATS text
//!   wire.rs       anti-entropy frames: opcodes, flags, Record, encoders and decoders
//!   tracked.rs    tracked trees: TreeIndex and the Tracked store hook (horizon guard)
//!   lifecycle.rs  when trees are kept: built on demand in steps, dropped when idle
//!   initiator.rs  rounds and the initiator side of exchanges (TREE/KEYS/PUSH requests,
//!                 their replies, completion, reports to the leader)
//!   responder.rs  the responder side: on_request, key-list comparison, applying records
//!   horizon.rs    tombstone horizons: the leader's decision, adoption, the tree sweep
//!   rejoin.rs     the rejoin gate: entering it (reads refused) and the read check
//!   tests.rs      unit tests
//! ```
//!
//! [`PartitionTree`]: super::merkle::PartitionTree
//! [`AE_EXCHANGES_IN_FLIGHT_MAX`]: crate::limits::AE_EXCHANGES_IN_FLIGHT_MAX
//! [`AE_MESSAGE_BYTES_MAX`]: crate::limits::AE_MESSAGE_BYTES_MAX
//! [`AE_ROUND_KEYS_MAX`]: crate::limits::AE_ROUND_KEYS_MAX
//! [`AE_ROUND_BYTES_MAX`]: crate::limits::AE_ROUND_BYTES_MAX

mod horizon;
mod initiator;
mod lifecycle;
mod rejoin;
mod responder;
#[cfg(test)]
mod tests;
mod tracked;
mod transfer;
mod wire;

pub use tracked::{Tracked, TreeIndex};
pub use transfer::{
    RateMeter, Throttle, Transfer, TRANSFER_LIMIT_DEFAULT, TRANSFER_RATE_WINDOW_MS,
    TRANSFER_RETRY_MS,
};
pub use wire::{ae_op, is_anti_entropy_op, request_applies_records, routing_partition, Record};
pub(crate) use wire::{decode_status_reply, push_key, put_status_request, put_tree_request};

use super::config::ClusterConfig;
use super::membership::MemberEvent;
use super::merkle::PartitionTree;
use super::ring::Ring;
use super::view::MEMBERSHIP_SHARD;
use crate::hash::shard_of_partition;
use crate::limits::PARTITION_COUNT;
use crate::storage::{Store, StoreError};
use crate::version::Version;
use initiator::{Exchange, Round};
use lifecycle::Trees;
use std::collections::{BTreeMap, VecDeque};

/// Counters for STATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AaeStats {
    /// Rounds started.
    pub rounds: u64,
    /// Rounds that completed an exchange with every replica of every partition.
    pub full_rounds: u64,
    /// Exchanges this node started that completed.
    pub exchanges: u64,
    /// Exchanges abandoned (timeout, error reply, budget).
    pub exchanges_failed: u64,
    /// Exchanges answered as responder (AE_TREE requests at level 0).
    pub exchanges_served: u64,
    /// Records sent to a peer (pushed, or sent in a reply).
    pub keys_sent: u64,
    /// Records received from a peer that became the local record (repairs here).
    pub keys_repaired: u64,
    /// Local records deleted because an authoritative peer proved them collected (rejoin).
    pub keys_dropped: u64,
    /// Bytes of anti-entropy frames sent (requests and replies).
    pub bytes_sent: u64,
    /// Writes refused by the horizon guard (older than a collected tombstone).
    pub guard_refused: u64,
    /// Collectable entries swept out of the trees below the horizon.
    pub swept: u64,
    /// Records received whose version was further ahead of this node's clock than the max
    /// clock offset (not applied; a later round brings them once the clock has caught up).
    pub refused_ahead: u64,
    /// When the last full round ended (ms), 0 = never.
    pub last_full_round_ms: u64,
    /// Records and bytes partition copies brought here (moves), since start.
    pub moved_keys: u64,
    /// Bytes of those records.
    pub moved_bytes: u64,
    /// Partitions copied whole here (moves), since start.
    pub moves_copied: u64,
    /// Tree builds completed (trees are built when anti-entropy needs them and dropped when
    /// it is idle: `lifecycle.rs`).
    pub tree_builds: u64,
    /// Siblings mode: keys held with [`crate::limits::SIBLINGS_NEAR_LIMIT`] siblings or more
    /// (counted as writes change them; keys of partitions moved away are not subtracted).
    pub causal_near_limit: u64,
}

/// Anti-entropy of one cluster core (node or shard).
pub struct AntiEntropy {
    me: u32,
    /// Records with a version further ahead of the local clock than this are not applied
    /// (`--max-clock-offset-ms`; `u64::MAX` under the simulator's `accept_future_versions`).
    ahead_ms_max: u64,
    /// The local wall clock as of the last input (for the bound above).
    now_ms: u64,
    /// This node's clock minus the cluster's (the bound is on the cluster's clock).
    clock_offset_ms: i64,
    /// Whether `clock_offset_ms` is measured (see [`AntiEntropy::set_clock_offset`]).
    clock_measured: bool,
    ring: Ring,
    interval_ms: u64,
    /// Delay of the first round, and between rounds, while rejoining: a node that refuses
    /// reads should not wait a whole interval for its peers.
    retry_ms: u64,
    window_ms: u64,
    grace_ms: u64,
    timeout_ms: u64,
    index: TreeIndex,
    /// Partitions tracked, ascending.
    held_list: Vec<usize>,
    store_horizon: u64,
    next_round_ms: u64,
    round: Option<Round>,
    exchanges: BTreeMap<u32, Exchange>,
    next_id: u32,
    /// Completed exchanges not yet reported to the leader: (partition, peer) → start ms.
    unreported: BTreeMap<(u16, u32), u64>,
    status_in_flight: Option<(u32, Reports, u64)>,
    // Leader state.
    reports: BTreeMap<(u16, u32, u32), u64>,
    failed_since: BTreeMap<u32, u64>,
    decided: Vec<u64>,
    // Sweep of collectable entries below the horizon: (index into held_list, segment).
    sweep: Option<(usize, usize)>,
    sweep_again: bool,
    last_tick_ms: u64,
    start_ms: u64,
    transmits: VecDeque<(u32, Vec<u8>)>,
    /// Whether completed exchanges go to the node's membership shard (by mail, through
    /// [`AntiEntropy::take_reports`]) instead of to the leader: true on every shard but the
    /// membership shard, which reports for the whole node.
    forwards_reports: bool,
    /// This core's shard and the node's shard count (which partitions it tracks).
    shard: usize,
    shards: usize,
    /// Partitions this core takes over in the running change (see `transfer.rs`).
    transfers: BTreeMap<usize, Transfer>,
    /// Copies waiting for the byte rate.
    parked: VecDeque<Exchange>,
    throttle: Throttle,
    transfer_limit: usize,
    /// Whether copies may start (the change is settled and not paused).
    moves_enabled: bool,
    /// Partitions copied whole, not yet taken by the driver: (partition, change's version).
    copied: Vec<(u16, u64)>,
    /// The byte rate of this core's copies (TRANSFERS).
    copy_meter: transfer::RateMeter,
    /// Siblings mode: tree versions are digests of causal states, and keys whose states
    /// differ are sent both ways (`responder.rs`).
    causal: bool,
    /// The simulator's `lww_anti_entropy` mutation ([`crate::cluster::Mutations`]): causal
    /// records this core's exchanges and copies apply replace the held state by version.
    lww_causal: bool,
    /// Whether the trees are off, being built or live (`lifecycle.rs`).
    trees: Trees,
    /// When anti-entropy last used the trees (ms), and the writes noted until then: they are
    /// dropped when idle (`lifecycle.rs`).
    trees_used_ms: u64,
    notes_at_use: u64,
    /// Trees dropped, freed a few a tick (freeing a million keys' lists at once stalls the
    /// event loop for tens of milliseconds). Boxed as `TreeIndex::trees` holds them: moving
    /// a box is a pointer, a tree is 33 KiB.
    #[allow(clippy::vec_box)]
    freeing: Vec<Box<PartitionTree>>,
    /// Keep the trees always (siblings mode: see `lifecycle.rs`).
    keep_trees: bool,
    /// Keys a build lists per tick, 0 = by the store's size ([`ClusterConfig`]).
    build_keys_per_tick: usize,
}

/// Completed exchanges to report: (partition, peer) → start ms.
pub type Reports = BTreeMap<(u16, u32), u64>;

impl AntiEntropy {
    /// Anti-entropy for node `config.node_id` holding the partitions `ring` gives it, all of
    /// them owned by this core until [`AntiEntropy::set_shard`] says otherwise.
    pub fn new(config: &ClusterConfig, ring: Ring, start_ms: u64) -> AntiEntropy {
        let mut a = AntiEntropy {
            me: config.node_id,
            ahead_ms_max: if config.mutations.accept_future_versions {
                u64::MAX
            } else {
                config.max_clock_offset_ms
            },
            now_ms: start_ms,
            clock_offset_ms: 0,
            // A cluster of one has nobody to measure: its own clock is the cluster's.
            clock_measured: config.nodes.len() <= 1,
            ring,
            interval_ms: config.anti_entropy_interval_ms,
            retry_ms: config.anti_entropy_interval_ms.min(
                config
                    .failure_timeout_ms()
                    .max(2 * config.gossip_interval_ms),
            ),
            window_ms: config.tombstone_window_ms,
            grace_ms: config.request_timeout_ms,
            timeout_ms: config.request_timeout_ms,
            index: TreeIndex {
                trees: (0..PARTITION_COUNT).map(|_| None).collect(),
                horizons: vec![0; PARTITION_COUNT],
                held: vec![false; PARTITION_COUNT],
                rejoining: false,
                stats: AaeStats::default(),
                tracking: false,
                notes: 0,
                horizon_max: 0,
            },
            held_list: Vec::new(),
            store_horizon: 0,
            next_round_ms: start_ms.saturating_add(config.anti_entropy_interval_ms),
            round: None,
            exchanges: BTreeMap::new(),
            next_id: 1,
            unreported: BTreeMap::new(),
            status_in_flight: None,
            reports: BTreeMap::new(),
            failed_since: BTreeMap::new(),
            decided: vec![0; PARTITION_COUNT],
            sweep: None,
            sweep_again: false,
            last_tick_ms: start_ms,
            start_ms,
            transmits: VecDeque::new(),
            causal: config.conflicts == super::Conflicts::Siblings,
            // test-only mutation: anti-entropy replaces causal states by version, unmerged.
            lww_causal: config.mutations.lww_anti_entropy,
            forwards_reports: false,
            shard: 0,
            shards: 1,
            transfers: BTreeMap::new(),
            parked: VecDeque::new(),
            throttle: Throttle::default(),
            transfer_limit: TRANSFER_LIMIT_DEFAULT,
            moves_enabled: false,
            copied: Vec::new(),
            copy_meter: Default::default(),
            trees: Trees::Off,
            trees_used_ms: start_ms,
            notes_at_use: 0,
            freeing: Vec::new(),
            keep_trees: config.conflicts == super::Conflicts::Siblings,
            build_keys_per_tick: config.tree_build_keys_per_tick,
        };
        a.set_shard(0, 1);
        a
    }

    /// Track only the partitions shard `shard` of `shards` owns (call before
    /// [`AntiEntropy::build`]). Anti-entropy frames start with the partition, so a driver
    /// routes them to `hash::shard_of_partition(partition, shards)`.
    ///
    /// Every shard but [`MEMBERSHIP_SHARD`] hands its completed exchanges to the membership
    /// shard ([`AntiEntropy::take_reports`] / [`AntiEntropy::add_reports`]), which reports
    /// them to the leader for the whole node: so the leader's decision sees every report of a
    /// partition on one core, whatever the shard counts of the nodes.
    pub fn set_shard(&mut self, shard: usize, shards: usize) {
        assert!(shards >= 1 && shard < shards);
        self.forwards_reports = shard != MEMBERSHIP_SHARD;
        self.shard = shard;
        self.shards = shards;
        self.update_held();
        let ring = self.ring.clone();
        self.plan_transfers(&ring);
    }

    /// Recompute the partitions tracked from the ring; returns those newly tracked and those
    /// no longer tracked (their trees are gone).
    fn update_held(&mut self) -> (Vec<usize>, Vec<usize>) {
        let (mut added, mut dropped) = (Vec::new(), Vec::new());
        self.held_list.clear();
        for p in 0..PARTITION_COUNT {
            let held =
                self.ring.holds(self.me, p) && shard_of_partition(p, self.shards) == self.shard;
            if held && !self.index.held[p] {
                added.push(p);
            }
            if !held && self.index.held[p] {
                dropped.push(p);
            }
            self.index.held[p] = held;
            if held {
                self.held_list.push(p);
            } else {
                self.index.trees[p] = None;
            }
        }
        (added, dropped)
    }

    /// Follow a new ring: track the partitions this core now holds (their trees built from
    /// the store, in bounded steps), forget those it no longer holds, and plan the copies of
    /// the partitions it takes over. Returns the partitions no longer held: the caller drops
    /// their records from the store (the flip that took them is known here now).
    pub fn set_ring(&mut self, ring: Ring, store: &mut dyn Store) -> Vec<usize> {
        self.ring = ring;
        let (added, dropped) = self.update_held();
        match self.trees {
            // Built from the store when next needed, new partitions included.
            Trees::Off => {}
            // The listing may have passed keys of the new partitions: it starts over.
            Trees::Building(_) => self.start_tree_build(self.now_ms, store),
            Trees::Live if !added.is_empty() && !store.is_empty() => {
                let mut wanted = [false; PARTITION_COUNT];
                for &p in &added {
                    wanted[p] = true;
                }
                if let Err(e) = self.index.note_store(store, &wanted, self.now_ms) {
                    log::error!("anti-entropy: trees of new partitions not built: {e}");
                }
            }
            Trees::Live => {}
        }
        // Exchanges of partitions no longer held end here (their replies are ignored).
        let index = &self.index;
        self.exchanges.retain(|_, x| index.held[x.partition]);
        if let Some(r) = self.round.as_mut() {
            r.queue.retain(|(p, _)| index.held[*p]);
        }
        let ring = self.ring.clone();
        self.plan_transfers(&ring);
        dropped
    }

    /// Decide whether this node must rejoin: its newest record is older than the tombstone
    /// window. In siblings mode, also build the trees, kept from now on (`lifecycle.rs`);
    /// otherwise they are built when anti-entropy first needs them.
    pub fn build(&mut self, store: &mut dyn Store) -> Result<(), StoreError> {
        if self.keep_trees {
            self.index.tracking = true;
            self.trees = Trees::Live;
            self.index
                .note_store(store, &[true; PARTITION_COUNT], self.start_ms)?;
        }
        let newest_ms = store.highest_version().physical_ms();
        if !store.is_empty() && self.start_ms.saturating_sub(newest_ms) > self.window_ms {
            self.start_rejoin();
        }
        Ok(())
    }

    /// The trees and horizons.
    pub fn index(&self) -> &TreeIndex {
        &self.index
    }

    /// Counters.
    pub fn stats(&self) -> AaeStats {
        self.index.stats
    }

    /// The next frame to send: `(node, frame)`.
    pub fn poll_transmit(&mut self) -> Option<(u32, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// When `on_tick` must run next at the latest.
    pub fn next_timeout_ms(&self) -> u64 {
        let mut t = self.next_round_ms;
        if !self.parked.is_empty() || self.transfers.values().any(|t| !t.done && !t.running) {
            // Copies to start or resume: soon (the byte rate is judged in steps this fine).
            t = t.min(self.now_ms.saturating_add(10));
        }
        if matches!(self.trees, Trees::Building(_)) || !self.freeing.is_empty() {
            t = t.min(self.now_ms.saturating_add(1)); // a build or freeing step each tick
        }
        for x in self.exchanges.values() {
            t = t.min(x.deadline_ms).min(x.resend_at_ms.unwrap_or(u64::MAX));
        }
        t
    }

    pub(super) fn alloc_id(&mut self) -> u32 {
        let id = self.next_id;
        // Ids only need to be unique among this core's outstanding anti-entropy requests.
        self.next_id = if id >= 0x7FFF_FFFE { 1 } else { id + 1 };
        id
    }

    pub(super) fn send(&mut self, to: u32, frame: Vec<u8>) {
        self.index.stats.bytes_sent += frame.len() as u64;
        self.transmits.push_back((to, frame));
    }

    /// Note this node's clock offset from the cluster's (`None` while not every live peer is
    /// measured): records are bounded by the cluster's clock, not this node's, and exchanges
    /// are reported to the leader with their start on the cluster's clock — only once it is
    /// measured, since one clock running minutes ahead would otherwise push a horizon minutes
    /// into the future and collect tombstones some replica still lacks.
    pub fn set_clock_offset(&mut self, offset_ms: Option<i64>) {
        self.clock_offset_ms = offset_ms.unwrap_or(0);
        self.clock_measured = offset_ms.is_some();
    }

    /// The cluster's clock as this node estimates it, at this node's `now_ms`.
    pub(super) fn cluster_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add_signed(self.clock_offset_ms.saturating_neg())
    }

    /// Completed exchanges not reported yet, taken (a shard that forwards its reports hands
    /// them to the membership shard; see [`AntiEntropy::set_shard`]).
    pub fn take_reports(&mut self) -> Reports {
        std::mem::take(&mut self.unreported)
    }

    /// Completed exchanges of another shard of this node, to report with this core's own.
    pub fn add_reports(&mut self, reports: Reports) {
        for (k, v) in reports {
            let e = self.unreported.entry(k).or_insert(v);
            *e = (*e).max(v);
        }
    }

    /// The tombstone horizon known here per partition (raw versions, 0 = none).
    pub fn horizons(&self) -> &[u64] {
        &self.index.horizons
    }

    /// Adopt horizons `(partition, raw version)` decided elsewhere (the membership shard
    /// passes on the leader's): each only raises the partition's horizon.
    pub fn adopt_horizon_list(&mut self, store: &mut dyn Store, hs: &[(u16, u64)]) {
        self.adopt_horizons(store, hs);
    }

    /// Start a round now (on demand), or right after the running one.
    pub fn trigger(&mut self, now_ms: u64) {
        self.next_round_ms = now_ms;
    }

    /// A membership event (the leader tracks how long nodes have been failed).
    pub fn on_member_event(&mut self, now_ms: u64, e: &MemberEvent) {
        match *e {
            MemberEvent::Failed { node } => {
                self.failed_since.entry(node).or_insert(now_ms);
            }
            MemberEvent::Recovered { node, .. } | MemberEvent::Restarted { node, .. } => {
                self.failed_since.remove(&node);
            }
            _ => {}
        }
    }

    /// Advance time: start rounds and exchanges, expire exchanges, report to the leader,
    /// sweep the trees. `alive` is the membership view; `leader` its leader.
    pub fn on_tick(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        alive: &dyn Fn(u32) -> bool,
        leader: u32,
    ) {
        self.now_ms = now_ms;
        if now_ms.saturating_sub(self.last_tick_ms) > self.window_ms {
            // The process was stopped (SIGSTOP, swap storm) for longer than the window.
            self.start_rejoin();
        }
        self.last_tick_ms = now_ms;
        // The wall clock may have stepped back (an operator set a clock that ran ahead
        // right): a round, an exchange's deadline or a STATUS report planned on the old clock
        // would wait for the new one to catch up.
        self.next_round_ms = self
            .next_round_ms
            .min(now_ms.saturating_add(self.interval_ms));
        let latest_ms = now_ms.saturating_add(self.timeout_ms);
        for x in self.exchanges.values_mut() {
            x.deadline_ms = x.deadline_ms.min(latest_ms);
        }
        if let Some(s) = self.status_in_flight.as_mut() {
            s.2 = s.2.min(latest_ms);
        }
        // Expire exchanges.
        let late: Vec<u32> = self
            .exchanges
            .iter()
            .filter(|(_, x)| x.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.fail_exchange(id);
        }
        if self
            .status_in_flight
            .as_ref()
            .is_some_and(|s| s.2 <= now_ms)
        {
            // The leader did not answer: report these again.
            let (_, batch, _) = self.status_in_flight.take().expect("checked");
            for (k, v) in batch {
                let e = self.unreported.entry(k).or_insert(v);
                *e = (*e).max(v);
            }
        }
        self.trees_used_ms = self.trees_used_ms.min(now_ms);
        self.tree_build_step(now_ms, store);
        if self.round.is_none() && now_ms >= self.next_round_ms {
            self.start_round(now_ms, store);
        }
        self.resend_waiting(now_ms, store);
        self.dispatch(now_ms, alive);
        self.drive_transfers(now_ms, store, alive);
        self.finish_round_if_done(now_ms, store, alive, leader);
        self.sweep_step(now_ms);
        self.drop_idle_trees(now_ms, store.len());
        self.free_dropped_trees();
    }

    /// STATS figures as `(name, value)` pairs: counters that add up over shards, and `_max` /
    /// `_min` figures that combine by max / min.
    pub fn stats_report(&self, now_ms: u64, report: &mut dyn FnMut(&'static str, u64)) {
        let s = self.index.stats;
        // Since the last full round, or since start when there was none yet.
        let since = now_ms.saturating_sub(s.last_full_round_ms.max(self.start_ms));
        let min_h = self
            .held_list
            .iter()
            .map(|&p| self.index.horizons[p])
            .min()
            .unwrap_or(0);
        let tree_keys: usize = self.index.trees.iter().flatten().map(|t| t.len()).sum();
        let tree_bytes: usize = self
            .index
            .trees
            .iter()
            .flatten()
            .map(|t| t.memory_bytes())
            .sum();
        let lines: [(&str, u64); 19] = [
            ("aae_rounds", s.rounds),
            ("aae_full_rounds", s.full_rounds),
            ("aae_ms_since_full_round_max", since),
            ("aae_exchanges", s.exchanges),
            ("aae_exchanges_failed", s.exchanges_failed),
            ("aae_exchanges_served", s.exchanges_served),
            ("aae_keys_sent", s.keys_sent),
            ("aae_keys_repaired", s.keys_repaired),
            ("aae_keys_dropped", s.keys_dropped),
            ("aae_bytes_sent", s.bytes_sent),
            ("aae_guard_refused", s.guard_refused),
            ("aae_swept", s.swept),
            ("aae_refused_ahead", s.refused_ahead),
            ("aae_shards_rejoining", u64::from(self.index.rejoining)),
            ("aae_horizon_ms_min", Version(min_h).physical_ms()),
            ("aae_tree_keys", tree_keys as u64),
            ("aae_tree_bytes", tree_bytes as u64),
            ("aae_exchanges_in_flight", self.exchanges.len() as u64),
            ("aae_tree_builds", s.tree_builds),
        ];
        for (name, v) in lines {
            report(name, v);
        }
        if self.causal {
            // Only in siblings mode, so a last-write-wins node's STATS stay as they were.
            report("causal_keys_near_limit", s.causal_near_limit);
        }
    }
}
