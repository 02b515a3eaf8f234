//! One node's (or one shard's) whole cluster core in one value: ring, membership,
//! coordinator and hints, driven through a handful of inputs and one output queue. It is what
//! the shard core embeds and what the simulator drives.
//!
//! The store stays with the caller (the shard owns it); calls that may read or write it take
//! `&mut dyn Store`, and local replica work (`ApplyLocal`, `ReadLocal`, local repairs:
//! `local.rs`) is done inside the call, so the caller only sees network frames, client
//! replies and events:
//!
//! ```text
//!  inputs                                   outputs (poll_output)
//!  write / read (client requests)   ──▶    Send  { to, frame }      peer frame to a node
//!  on_peer_request (REPLICATE/READ/GOSSIP)  Reply { ctx, outcome }   answer a client
//!  on_peer_reply  (replies to our frames)   Event(MemberEvent)       log it
//!  on_tick (timeouts, gossip, hints, anti-entropy rounds)
//! ```
//!
//! Anti-entropy ([`super::antientropy`]) rides on the same inputs: its frames come in through
//! `on_peer_request` / `on_peer_reply`, its rounds advance in `on_tick`, and every store write
//! made here goes through its hook so the partition trees follow the store.
//!
//! Peer requests are answered synchronously into the caller's buffer. The caller must hold
//! that reply (and any client reply) until its store has synced when its sync policy promises
//! durability on acknowledgement, exactly as for single-node writes.
//!
//! With several shards per node, every shard runs a `ClusterNode` with the node's id (set up
//! by [`ClusterNode::set_shard`]), but only the membership shard
//! ([`super::view::MEMBERSHIP_SHARD`]) runs
//! the membership: gossip, failure detection, clock measurement, leader choice. It hands its
//! view out as a [`NodeView`] ([`ClusterNode::poll_view`]); the other shards never gossip and
//! decide with the last view they were given ([`ClusterNode::on_view`]), failing safe (no peer
//! alive, writes refused) until the first. So gossip traffic does not grow with the shard
//! count. Their completed anti-entropy exchanges go to the membership shard too
//! ([`ClusterNode::take_reports`] / [`ClusterNode::on_reports`]), which reports for the whole
//! node to the leader and passes the horizons it learns back in its views: see
//! [`super::view`].
//!
//! ```text
//!  node/mod.rs    the core: construction, client requests, peer frames, ticks, local work
//!  node/view.rs   its part in the node's membership: whole, membership shard, follower
//!  node/guard.rs  peer REPLICATE/READ refused before serving: stale ring, partition not held
//!  node/ring.rs   its part in the elastic ring: pulls, changes, copies reported, flips
//!  node/operator.rs  operator commands, CLUSTER / PLAN / TRANSFERS texts, ring STATS
//!  node/stats.rs  CLUSTER text, STATS figures, clock figures
//!  node/tests.rs  unit tests
//! ```

use super::antientropy::{self, AntiEntropy};
use super::config::ClusterConfig;
use super::coordinator::{Coordinator, CoordinatorConfig, Outcome};
use super::hints::HintQueue;
use super::membership::{MemberEvent, Membership};
use super::peer::{self, PeerError, PeerReply, PeerRequest, WriteAck, HINT_ID_BIT};
use super::replica;
use super::ring::Ring;
use super::ringpeer;
use super::rng::SplitMix64;
use super::view::{NodeView, VIEW_EVENTS_MAX};
use crate::protocol::{Consistency, FrameRef};
use crate::storage::Store;
use std::collections::VecDeque;

mod causal;
mod guard;
mod lease;
mod local;
mod operator;
mod ring;
mod ringvote;
mod stats;
#[cfg(test)]
mod tests;
mod view;

pub use operator::{render_transfers, AdminCommand, TransferReport, TransferRow};
pub use ring::{RING_CHANGE_TIMEOUT_MS, RING_POLL_MS, RING_RETRY_MS};
pub use stats::ClockFigures;

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<C> {
    /// Send a peer frame to node `to`.
    Send {
        /// Destination.
        to: u32,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Answer a client.
    Reply {
        /// The context given with the request.
        ctx: C,
        /// The answer.
        outcome: Outcome,
    },
    /// A membership change, for the log.
    Event(MemberEvent),
}

/// Counters of the replica side for STATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// REPLICATE requests served (all kinds).
    pub replicate_served: u64,
    /// Hint deliveries received and stored.
    pub hints_received: u64,
    /// Read repairs received that changed the local record.
    pub repairs_received: u64,
    /// READ requests served.
    pub reads_served: u64,
    /// REPLICATE writes (and local read repairs) refused because their version was further
    /// ahead of this node's clock than the max clock offset.
    pub refused_ahead: u64,
    /// Client writes this node refused to coordinate because of its clock (CLOCK_OFFSET).
    pub clock_refused: u64,
    /// Peer frames that could not be decoded.
    pub peer_errors: u64,
}

/// The cluster core of one node (or shard).
pub struct ClusterNode<C> {
    config: ClusterConfig,
    ring: Ring,
    membership: Membership,
    coordinator: Coordinator<C>,
    hints: HintQueue,
    rng: SplitMix64,
    outputs: VecDeque<Output<C>>,
    replica_stats: ReplicaStats,
    scratch: Vec<(u32, Vec<u8>)>,
    /// Anti-entropy: trees, exchanges, tombstone horizons. Every store write of this core goes
    /// through `aae.tracked(store)` so the trees follow the store.
    aae: AntiEntropy,
    /// How this core takes part in its node's membership (see [`super::view`]).
    role: Role,
    last_hint_sync_ms: u64,
    /// This node's clock minus the cluster's, once every live peer is measured (0 before):
    /// replicas bound versions, and reads judge expiry, by the cluster's clock (`now_ms`
    /// minus this), so a node with a bad clock is still a good replica. Updated on ticks and
    /// gossip replies.
    clock_offset_ms: i64,
    /// The elastic ring: pulls, changes, copied reports, the leader's decisions.
    elastic: ring::Elastic<C>,
    /// The node's shard count (copies' byte rate and limit are split over them).
    shards: usize,
    /// Scratch for a write's replica set.
    write_set: Vec<u32>,
    /// Writes whose own copy this core applied in the current turn, not yet written out: the
    /// shard reports the turn's write (`on_turn_written`, `on_turn_write_failed`).
    local_unflushed: Vec<u32>,
    /// Client requests waiting for the ring lease (`lease.rs`), and their key and value bytes.
    held: VecDeque<lease::HeldRequest<C>>,
    held_bytes: usize,
}

/// How a core takes part in its node's membership.
enum Role {
    /// Runs the membership, and nobody else needs its view (one shard per node, the
    /// simulator).
    Whole,
    /// The membership shard of a node with other shards: runs the membership and hands its
    /// view out ([`ClusterNode::poll_view`]).
    Publisher {
        /// The last view handed out, without its events and horizons.
        last: Option<NodeView>,
        /// When it was handed out.
        last_sent_ms: u64,
        /// Member events since then, oldest first (at most [`VIEW_EVENTS_MAX`]).
        events: Vec<MemberEvent>,
        /// The horizons handed out so far, per partition.
        horizons_sent: Vec<u64>,
    },
    /// Any other shard: no membership of its own; decides with the view it was given.
    Follower {
        /// The last view received (`None`: none yet, fail safe).
        view: Option<NodeView>,
    },
}

/// Whether node `id` is alive in the view decisions are made with: on a follower the last
/// view's (only this node `me` before the first), else the core's own membership. A free
/// function over the two fields, so that callers can lend it to the coordinator, the hints and
/// anti-entropy while those are borrowed mutably.
fn alive_in(role: &Role, membership: &Membership, me: u32, id: u32) -> bool {
    if id == me {
        return true;
    }
    match role {
        Role::Follower { view } => view
            .as_ref()
            .is_some_and(|v| v.alive.binary_search(&id).is_ok()),
        _ => membership.is_alive(id),
    }
}

impl<C> ClusterNode<C> {
    /// The core of node `config.node_id` starting at `start_ms` (wall ms: its incarnation),
    /// drawing gossip targets from `seed`, keeping hints in `hints`. `config` must be
    /// validated. The caller should recover the clock with [`ClusterNode::recover_clock`].
    pub fn new(
        config: ClusterConfig,
        start_ms: u64,
        seed: u64,
        hints: HintQueue,
    ) -> ClusterNode<C> {
        // A node that joined starts from the ring map it fetched from the cluster (a
        // provisional ring state, version 0: the cluster's own is pulled at once); one started
        // with `--nodes` from the first ring of the configured nodes.
        let listed: Vec<(u32, String)> = config
            .nodes
            .iter()
            .map(|n| (n.id, n.addr.to_string()))
            .collect();
        let state = match &config.initial_ring {
            // The cluster's nodes, not this one: it is a member once the leader admits it.
            Some(o) => {
                let others: Vec<(u32, String)> = (listed.iter())
                    .filter(|(id, _)| *id != config.node_id)
                    .cloned()
                    .collect();
                super::ringstate::RingState::provisional(o.clone(), &others)
            }
            None => match super::ringstate::RingState::initial(&listed, config.replicas) {
                Ok(s) => s,
                // Validated before (distinct ids, 1 ≤ N ≤ nodes): a programmer error.
                Err(e) => panic!("ring of {listed:?} with N={}: {e}", config.replicas),
            },
        };
        let ring = Ring::from_state(std::sync::Arc::new(state));
        let mut membership = Membership::new(&config, start_ms);
        membership.set_ring_version(ring.version());
        let mut coordinator = Coordinator::new(CoordinatorConfig::from_cluster(&config));
        coordinator.set_mutations(config.mutations);
        coordinator.set_ring_version(ring.version());
        ClusterNode {
            aae: AntiEntropy::new(&config, ring.clone(), start_ms),
            membership,
            coordinator,
            ring,
            hints,
            rng: SplitMix64::new(seed),
            outputs: VecDeque::new(),
            replica_stats: ReplicaStats::default(),
            scratch: Vec::new(),
            role: Role::Whole,
            last_hint_sync_ms: 0,
            clock_offset_ms: 0,
            elastic: ring::Elastic::new(),
            shards: 1,
            write_set: Vec::new(),
            local_unflushed: Vec::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            config,
        }
    }

    /// Start the version clock above the highest version in the store (`now_ms`: wall time).
    /// A stored version more than a year ahead of the wall clock can only come from a peer
    /// with a broken clock; following it could exhaust the version's time range, so it is
    /// ignored (the wall clock stepping back that far is not a case we serve).
    pub fn recover_clock(&mut self, store: &mut dyn Store, now_ms: u64) {
        const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
        let highest = store.highest_version();
        if highest.physical_ms() <= now_ms.saturating_add(YEAR_MS) {
            self.coordinator.hlc_mut().recover(highest);
        }
        // Anti-entropy: whether to rejoin (and in siblings mode, the trees: one pass over the
        // store's keys; otherwise they are built when first needed).
        if let Err(e) = self.aae.build(store) {
            log::error!("anti-entropy trees not built from the store: {e}");
        }
    }

    /// Anti-entropy state (stats, trees, horizons).
    pub fn anti_entropy(&self) -> &AntiEntropy {
        &self.aae
    }

    /// Start an anti-entropy round now (the ANTI_ENTROPY client opcode); it runs on ticks.
    pub fn trigger_anti_entropy(&mut self, now_ms: u64) {
        self.aae.trigger(now_ms);
    }

    /// Whether this node serves reads: false while it rejoins after an absence longer than
    /// the tombstone window (LGET should answer an error then).
    pub fn serving_reads(&self) -> bool {
        self.aae.serving_reads()
    }

    /// The version clock of this node's coordinator (the driver keeps a durable ceiling
    /// above it, see `datadir::ClockCeiling`).
    pub fn hlc_mut(&mut self) -> &mut crate::version::Hlc {
        self.coordinator.hlc_mut()
    }

    /// How far ahead of this node's clock a version may be to be stored or observed: the max
    /// clock offset (unbounded under the simulator's `accept_future_versions` mutation).
    fn ahead_ms_max(&self) -> u64 {
        if self.config.mutations.accept_future_versions {
            u64::MAX
        } else {
            self.config.max_clock_offset_ms
        }
    }

    /// The cluster's clock as this node estimates it: `now_ms` (this node's wall clock) minus
    /// the measured offset.
    pub fn cluster_now_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add_signed(self.clock_offset_ms.saturating_neg())
    }

    /// Recompute the cached offset from the cluster (0 until every live peer is measured) and
    /// hand it to the parts that judge by the cluster's clock.
    fn update_clock_offset(&mut self, now_ms: u64) {
        let c = self.cluster_clock(now_ms);
        self.clock_offset_ms = if c.complete() { c.offset_ms } else { 0 };
        self.coordinator.set_clock_offset(self.clock_offset_ms);
        self.aae
            .set_clock_offset(c.complete().then_some(self.clock_offset_ms));
    }

    /// This node's clock against the cluster's, as measured now (on a follower: as of the
    /// last view; nothing measured before the first).
    pub fn cluster_clock(&self, now_ms: u64) -> super::clock::ClusterClock {
        match &self.role {
            Role::Follower { view } => view.as_ref().and_then(|v| v.clock).unwrap_or({
                let peers = self.config.nodes.len().saturating_sub(1);
                super::clock::ClusterClock {
                    offset_ms: 0,
                    measured: 0,
                    live: peers,
                    missing: peers,
                    peers,
                }
            }),
            _ => self.membership.cluster_clock(now_ms),
        }
    }

    /// Why this node refuses to coordinate writes now (the max-offset rule), if it does. A
    /// follower without a view refuses: its clock is not measured yet as far as it knows.
    pub fn clock_refusal(&self, now_ms: u64) -> Option<String> {
        if matches!(self.role, Role::Follower { view: None }) {
            return Some(
                "this shard has not received its node's membership view yet, so its clock is \
                 not measured yet: retry"
                    .to_string(),
            );
        }
        super::clock::write_refusal(
            self.cluster_clock(now_ms),
            self.config.max_clock_offset_ms,
            self.config.mutations.accept_future_versions,
        )
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The membership view.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The coordinator (stats, in-flight count).
    pub fn coordinator(&self) -> &Coordinator<C> {
        &self.coordinator
    }

    /// The hint queue (stats).
    pub fn hints(&self) -> &HintQueue {
        &self.hints
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<Output<C>> {
        let o = self.outputs.pop_front();
        if self.outputs.is_empty() {
            // Back to the ring's start (as the coordinator's actions): the next outputs land
            // in lines just used.
            self.outputs.clear();
        }
        o
    }

    /// The level a request runs at: its own, or this node's `--default-consistency` for a
    /// request that asks for the default. Resolved here, in the core, so that `kvd` and the
    /// simulator resolve it alike.
    pub fn level(&self, consistency: Consistency) -> Consistency {
        match consistency {
            Consistency::Default => self.config.default_consistency,
            own => own,
        }
    }

    /// Replicas required out of N for `consistency`.
    pub fn required(&self, consistency: Consistency) -> usize {
        self.level(consistency).required(self.config.replicas)
    }

    /// Start a client write (`value` `None`: delete). The reply comes out as
    /// [`Output::Reply`], possibly during this call (single replica, or refused).
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        ctx: C,
        key: &[u8],
        value: Option<&[u8]>,
        expires_at_ms: u64,
        consistency: Consistency,
    ) {
        let required = self.required(consistency);
        // The max-offset rule: a node whose clock is too far from the cluster's (or not yet
        // measured) issues no versions; its writes would win or lose wrongly.
        if let Some(why) = self.clock_refusal(now_ms) {
            self.replica_stats.clock_refused += 1;
            self.outputs.push_back(Output::Reply {
                ctx,
                outcome: Outcome::Failed {
                    status: crate::protocol::Status::ClockOffset,
                    message: why,
                },
            });
            return;
        }
        // The ring lease: by a ring no peer confirmed lately, a write may reach none of the
        // partition's new owners (`lease.rs`); it waits for the next confirmation.
        if !self.ring_lease_valid(now_ms) {
            let held = lease::Held {
                key,
                value,
                expires_at_ms,
                consistency,
                write: true,
                context: None,
                handed: false,
            };
            self.hold_request(now_ms, ctx, held);
            return;
        }
        // Issue the version above every tombstone horizon adopted here (see
        // `AntiEntropy::horizon_max`).
        let ahead = self.ahead_ms_max();
        super::coordinator::observe(
            self.coordinator.hlc_mut(),
            now_ms,
            self.aae.horizon_max(),
            ahead,
        );
        let (role, membership, me) = (&self.role, &self.membership, self.config.node_id);
        // Owners and pending owners; one more acknowledgement per pending owner, so that
        // the owners after the flip hold the write as often as the level asks.
        let mut set = std::mem::take(&mut self.write_set);
        let p = crate::hash::partition_of(key);
        let pending = if self.config.mutations.no_pending_writes {
            // test-only mutation: the current owners only, as if nothing moved.
            set.clear();
            set.extend_from_slice(self.ring.preference_list(p));
            0
        } else {
            self.ring.write_set(p, &mut set)
        };
        self.coordinator.start_write(
            now_ms,
            ctx,
            key,
            value,
            expires_at_ms,
            &set,
            &|n| alive_in(role, membership, me, n),
            required + pending,
        );
        self.write_set = set;
        self.drain(now_ms, store);
    }

    /// Start a client read.
    pub fn read(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        ctx: C,
        key: &[u8],
        consistency: Consistency,
    ) {
        // The ring lease, as for writes: by an outdated ring, the old owners on the minority
        // side of a partition could answer a quorum without a write the new owners took.
        if !self.ring_lease_valid(now_ms) {
            let held = lease::Held {
                key,
                value: None,
                expires_at_ms: 0,
                consistency,
                write: false,
                context: None,
                handed: false,
            };
            self.hold_request(now_ms, ctx, held);
            return;
        }
        let required = self.required(consistency);
        let (role, membership, me) = (&self.role, &self.membership, self.config.node_id);
        let prefs = self.ring.preference_for_key(key);
        self.coordinator.start_read(
            now_ms,
            ctx,
            key,
            prefs,
            &|n| alive_in(role, membership, me, n),
            required,
        );
        self.drain(now_ms, store);
    }

    /// Serve a peer request from node `from` (REPLICATE, READ, GOSSIP or anti-entropy),
    /// appending the reply with request id `id` to `out`. An undecodable frame is answered with
    /// an error reply and reported. Returns whether the reply acknowledges records applied to
    /// the store (REPLICATE, anti-entropy PUSH and KEYS): a caller whose sync policy promises
    /// durability on acknowledgement holds it until the store has synced.
    #[allow(clippy::too_many_arguments)]
    pub fn on_peer_request(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        id: u32,
        op: u8,
        aux: u8,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, PeerError> {
        if ringpeer::is_ring_op(op) {
            let r = self.on_ring_request(now_ms, store, from, id, op, body, out);
            self.drain(now_ms, store);
            return r.map(|()| false);
        }
        if antientropy::is_anti_entropy_op(op) {
            let r = self
                .aae
                .on_request(now_ms, store, from, id, op, aux, body, out);
            self.replica_stats.peer_errors += u64::from(r.is_err());
            self.after_aae();
            return r.map(|()| antientropy::request_applies_records(op));
        }
        let req = match PeerRequest::decode(op, aux, body) {
            Ok(r) => r,
            Err(e) => {
                self.replica_stats.peer_errors += 1;
                crate::protocol::message::put_error(out, op, id, e.status(), &e.to_string());
                return Err(e);
            }
        };
        match &req {
            PeerRequest::Gossip {
                sender,
                entries,
                clock,
            } => {
                let _ = from;
                if self.is_follower() {
                    // The driver routes GOSSIP to the membership shard; a follower's own
                    // membership is never run, so it must not answer with it.
                    self.replica_stats.peer_errors += 1;
                    crate::protocol::message::put_error(
                        out,
                        op,
                        id,
                        crate::protocol::Status::Unavailable,
                        "GOSSIP is served by the node's membership shard",
                    );
                    return Ok(false);
                }
                self.membership
                    .handle_gossip(now_ms, id, *sender, entries, *clock, out);
                self.after_membership(now_ms);
            }
            _ => {
                let ahead = self.ahead_ms_max();
                if let PeerRequest::Replicate { write, .. } = &req {
                    // A replica refuses versions too far ahead of its clock (replication,
                    // hints and repairs alike): one bad clock cannot drag the cluster forward.
                    let cluster_now_ms = self.cluster_now_ms(now_ms);
                    let limit_ms = cluster_now_ms.saturating_add(ahead);
                    if write.version.physical_ms() > limit_ms {
                        let why = format!(
                            "version {} is {} ms ahead of the cluster's clock (as measured \
                             here), more than --max-clock-offset-ms {}",
                            write.version,
                            write.version.physical_ms() - cluster_now_ms,
                            self.config.max_clock_offset_ms
                        );
                        self.replica_stats.replicate_served += 1;
                        self.replica_stats.refused_ahead += 1;
                        peer::put_write_ack(out, id, &WriteAck::Refused(why));
                        return Ok(false);
                    }
                    super::coordinator::observe(
                        self.coordinator.hlc_mut(),
                        now_ms,
                        write.version,
                        ahead,
                    );
                }
                if self.refuse_stale_ring(&req, id, out) {
                    self.replica_stats.replicate_served +=
                        u64::from(matches!(req, PeerRequest::Replicate { .. }));
                    return Ok(false);
                }
                if self.refuse_unheld(&req, id, out) {
                    self.replica_stats.replicate_served +=
                        u64::from(matches!(req, PeerRequest::Replicate { .. }));
                    return Ok(false);
                }
                let aux = match &req {
                    PeerRequest::Replicate { aux, .. } => *aux,
                    _ => 0,
                };
                let tracked = if aux & peer::AUX_REPAIR != 0 {
                    self.aae.tracked_repair(store)
                } else if aux & peer::AUX_HINT != 0 {
                    self.aae.tracked_hint(store)
                } else {
                    self.aae.tracked(store)
                };
                // A REPLICATE's only use of its success is its acknowledgement, which the
                // shard holds until the turn's write (`ShardCore::serve_peer`): its record
                // waits for that one write. (A READ applies nothing.)
                let mut tracked = tracked.buffered();
                match replica::serve(&mut tracked, id, &req, out) {
                    Some(replica::Served::Write {
                        stored,
                        hint,
                        repair,
                    }) => {
                        self.replica_stats.replicate_served += 1;
                        self.replica_stats.hints_received += u64::from(hint && stored);
                        self.replica_stats.repairs_received += u64::from(repair && stored);
                    }
                    Some(replica::Served::WriteRefused) => self.replica_stats.replicate_served += 1,
                    Some(replica::Served::Read) => self.replica_stats.reads_served += 1,
                    None => {}
                }
            }
        }
        self.drain(now_ms, store);
        Ok(matches!(req, PeerRequest::Replicate { .. }))
    }

    /// A reply frame from node `from` to one of our peer frames.
    pub fn on_peer_reply(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        f: &FrameRef<'_>,
    ) {
        if ringpeer::is_ring_op(f.op & !crate::protocol::RESPONSE_BIT) {
            self.on_ring_reply(now_ms, store, from, f);
            self.release_held(now_ms, store);
            self.drain(now_ms, store);
            return;
        }
        if antientropy::is_anti_entropy_op(f.op) {
            let (role, membership, me) = (&self.role, &self.membership, self.config.node_id);
            self.aae.on_reply(now_ms, store, from, f, &|n| {
                alive_in(role, membership, me, n)
            });
            self.after_aae();
            return;
        }
        if f.op & !crate::protocol::RESPONSE_BIT == peer::coordinate::OP {
            match peer::coordinate::decode_reply(f.aux, f.body) {
                Ok(answer) => self.coordinator.on_forward_reply(from, f.id, answer),
                Err(_) => self.replica_stats.peer_errors += 1,
            }
            self.drain(now_ms, store);
            return;
        }
        let reply = match PeerReply::decode(f.op, f.aux, f.body) {
            Ok(r) => r,
            Err(_) => {
                self.replica_stats.peer_errors += 1;
                return;
            }
        };
        match reply {
            PeerReply::Gossip {
                sender,
                entries,
                clock,
            } => {
                if self.is_follower() {
                    // Followers send no gossip; a stray reply carries nothing for them.
                    return;
                }
                self.membership.on_gossip(now_ms, sender, &entries);
                self.membership.on_clock_reply(now_ms, sender, clock);
                self.update_clock_offset(now_ms);
                self.after_membership(now_ms);
            }
            PeerReply::Write(ack) => {
                if f.id == 0 {
                    // A read repair's ack: nothing waits for it.
                } else if f.id & HINT_ID_BIT != 0 {
                    self.hints.on_ack(from, f.id, &ack);
                } else {
                    self.coordinator.on_write_ack(now_ms, from, f.id, ack);
                }
            }
            PeerReply::Read(Err(why)) if f.aux == crate::protocol::Status::Malformed as u8 => {
                // How a node from before version-only READs refuses one.
                self.coordinator.on_read_refused(now_ms, from, f.id, why);
            }
            PeerReply::Read(record) => {
                self.coordinator.on_read_reply(now_ms, from, f.id, record);
            }
            PeerReply::ReadVersion(version) => {
                self.coordinator
                    .on_read_version(now_ms, from, f.id, version);
            }
            PeerReply::StaleRing { op, ring } => {
                // `from` holds a newer ring that changed this key's partition: the request
                // failed there (never an acknowledgement), and this node pulls that ring now.
                self.note_newer_ring(from, ring);
                let why = format!(
                    "stale ring: node {from} holds ring version {ring}, this node {}",
                    self.ring.version()
                );
                if op == peer::op::READ {
                    self.coordinator.on_read_reply(now_ms, from, f.id, Err(why));
                } else if f.id == 0 {
                    // A read repair's refusal: nothing waits for it.
                } else if f.id & HINT_ID_BIT != 0 {
                    self.hints.on_ack(from, f.id, &WriteAck::Refused(why));
                } else {
                    self.coordinator
                        .on_write_ack(now_ms, from, f.id, WriteAck::Refused(why));
                }
            }
        }
        self.drain(now_ms, store);
    }

    /// Advance time: failure detection and gossip, request timeouts, hint delivery.
    pub fn on_tick(&mut self, now_ms: u64, store: &mut dyn Store) {
        self.update_clock_offset(now_ms);
        if !self.is_follower() {
            self.membership.on_tick(now_ms, &mut self.rng);
            self.after_membership(now_ms);
        }
        self.coordinator.on_tick(now_ms);
        self.release_held(now_ms, store);
        self.drain(now_ms, store);
        // Keys the store found damaged leave the trees, so the next exchange repairs them;
        // those whose buffered write a failed flush undid return to what the store holds.
        let mut damaged = Vec::new();
        store.take_damaged(&mut damaged);
        for key in damaged {
            self.aae.resync(store, &key);
        }
        self.deliver_hints(now_ms);
        // (A wall clock stepped back syncs at once rather than when it catches up.)
        if now_ms < self.last_hint_sync_ms
            || now_ms >= self.last_hint_sync_ms + crate::limits::HINT_SYNC_INTERVAL_MS
        {
            self.last_hint_sync_ms = now_ms;
            self.hints.sync();
        }
        self.ring_tick(now_ms, store);
        let leader = self.leader();
        let (role, membership, me) = (&self.role, &self.membership, self.config.node_id);
        self.aae.on_tick(
            now_ms,
            store,
            &|n| alive_in(role, membership, me, n),
            leader,
        );
        self.after_aae();
    }

    fn after_aae(&mut self) {
        while let Some((to, frame)) = self.aae.poll_transmit() {
            self.outputs.push_back(Output::Send { to, frame });
        }
    }

    /// When `on_tick` should be called next at the latest.
    pub fn next_timeout_ms(&self) -> u64 {
        let gossip = if self.is_follower() {
            u64::MAX
        } else {
            self.membership.next_timeout_ms()
        };
        // (Held requests are answered at their deadline; released by a pull reply or a view.)
        let held = self.held.front().map_or(u64::MAX, |w| w.deadline_ms);
        let m = gossip
            .min(self.aae.next_timeout_ms())
            .min(self.ring_timeout_ms())
            .min(held);
        self.coordinator.next_timeout_ms().map_or(m, |c| c.min(m))
    }

    /// Whether node `id` is alive in the view decisions are made with: on a follower the
    /// last view's (only this node before the first view), else this core's own membership.
    pub fn is_alive(&self, id: u32) -> bool {
        alive_in(&self.role, &self.membership, self.config.node_id, id)
    }

    /// The ids alive in the view decisions are made with, ascending (see
    /// [`ClusterNode::is_alive`]); this node is always among them.
    pub fn alive_ids(&self) -> Vec<u32> {
        match &self.role {
            Role::Follower { view } => {
                let mut ids = view.as_ref().map_or_else(Vec::new, |v| v.alive.clone());
                if let Err(i) = ids.binary_search(&self.config.node_id) {
                    ids.insert(i, self.config.node_id);
                }
                ids
            }
            _ => self.membership.alive_ids(),
        }
    }

    /// Every known member and its address, ids ascending, this node included: this core's
    /// membership, or on a follower the last view's (the configured nodes before the first).
    pub fn members(&self) -> Vec<(u32, std::net::SocketAddr)> {
        match &self.role {
            Role::Follower { view } => match view {
                Some(v) => v.members.clone(),
                None => self.config.nodes.iter().map(|n| (n.id, n.addr)).collect(),
            },
            _ => (self.membership.members().iter())
                .map(|m| (m.id, m.addr))
                .collect(),
        }
    }

    /// Where node `id` listens, from the membership (on a follower: the last view's members,
    /// then the configuration); `None` for a node this core has not heard of.
    pub fn peer_addr(&self, id: u32) -> Option<std::net::SocketAddr> {
        match &self.role {
            Role::Follower { view } => view
                .as_ref()
                .and_then(|v| {
                    let i = v.members.binary_search_by_key(&id, |m| m.0).ok()?;
                    Some(v.members[i].1)
                })
                .or_else(|| self.config.addr_of(id)),
            _ => self.membership.addr_of(id),
        }
    }

    /// Whether node `id` was dropped from the cluster for good (as far as this core knows:
    /// a follower knows of no such node).
    pub fn is_forgotten(&self, id: u32) -> bool {
        !self.is_follower() && self.membership.is_forgotten(id)
    }

    /// The membership, to change it (add or forget members, set the ring version held). Its
    /// events and frames come out with the next tick's outputs.
    pub fn membership_mut(&mut self) -> &mut Membership {
        &mut self.membership
    }

    /// The leader of the view decisions are made with: the lowest-id alive node (a follower
    /// without a view counts only itself). The leader runs the cluster-wide chores (from
    /// issue 7 on: when tombstones may be dropped).
    pub fn leader(&self) -> u32 {
        match &self.role {
            Role::Follower { view } => view.as_ref().map_or(self.config.node_id, |v| v.leader),
            _ => {
                // The lowest alive node among the settled members (up or leaving): a joining
                // node does not lead before it is up; without such a node alive, the lowest
                // alive one.
                let me = self.config.node_id;
                let state = self.ring.state();
                let eligible = |id: u32| {
                    matches!(
                        state.status(id),
                        Some(
                            super::ringstate::MemberStatus::Up
                                | super::ringstate::MemberStatus::Leaving
                        )
                    )
                };
                let mut alive = self.membership.alive_ids();
                if !alive.contains(&me) {
                    alive.push(me);
                    alive.sort_unstable();
                }
                alive
                    .iter()
                    .copied()
                    .find(|&id| eligible(id))
                    .unwrap_or(alive[0])
            }
        }
    }

    /// Whether this node leads (see [`ClusterNode::leader`]).
    pub fn is_leader(&self) -> bool {
        self.leader() == self.config.node_id
    }

    fn deliver_hints(&mut self, now_ms: u64) {
        let (role, membership, me) = (&self.role, &self.membership, self.config.node_id);
        let mut out = std::mem::take(&mut self.scratch);
        self.hints.poll_delivery(
            now_ms,
            self.ring.version(),
            &|n| alive_in(role, membership, me, n),
            &mut out,
        );
        for (to, frame) in out.drain(..) {
            self.outputs.push_back(Output::Send { to, frame });
        }
        self.scratch = out;
    }

    fn after_membership(&mut self, now_ms: u64) {
        while let Some((to, frame)) = self.membership.poll_transmit() {
            self.outputs.push_back(Output::Send { to, frame });
        }
        let mut recovered = false;
        while let Some(e) = self.membership.poll_event() {
            self.aae.on_member_event(now_ms, &e);
            if let Role::Publisher { events, .. } = &mut self.role {
                if events.len() == VIEW_EVENTS_MAX {
                    events.remove(0);
                }
                events.push(e);
            }
            recovered |= matches!(
                e,
                MemberEvent::Recovered { .. } | MemberEvent::Restarted { .. }
            );
            self.outputs.push_back(Output::Event(e));
        }
        if recovered {
            // Deliver at once rather than at the next tick.
            self.deliver_hints(now_ms);
        }
    }
}
