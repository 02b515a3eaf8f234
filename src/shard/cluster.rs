//! The shard core's cluster glue: how a shard hands its keyed requests and peer frames to its
//! [`ClusterNode`] and turns the node's outputs into reply records and peer sends. Kept apart
//! from the rest of `shard/` so the single-node path there stays as it was; every hook there
//! is one call into this file, taken only when the node runs with `--nodes`.
//!
//! * A client GET/PUT/DELETE is first routed to the shard owning its key (as on a single
//!   node); that shard's `ClusterNode` coordinates it, applying locally to the shard's store
//!   and sending peer frames. Its reply always comes back later as a record to the
//!   connection's shard (so `on_frame` answers [`After::Deferred`]).
//! * A peer REPLICATE or READ is routed to the shard owning its key the same way and answered
//!   by that shard's store; anti-entropy TREE/KEYS/PUSH to the shard owning their partition;
//!   GOSSIP and AE_STATUS to the membership shard ([`MEMBERSHIP_SHARD`]), which runs the
//!   node's membership and the leader's horizon decisions. A forwarded frame's reply goes
//!   back as a record to the shard owning the connection. Replies to writes wait for the
//!   turn's sync when the sync policy is `always`.
//! * Peer replies to this shard's own frames come in through [`ShardCore::on_peer_reply`]
//!   from the driver's outbound links; frames to send go out in [`super::Outbox::peer`].
//! * Every shard runs a `ClusterNode` (own coordinator, hints, anti-entropy, links), but only
//!   the membership shard gossips, detects failures and measures clocks (see
//!   [`crate::cluster::view`]). On its cluster ticks it puts its view in
//!   [`super::Outbox::view`] when the view changed; the driver delivers it to every other
//!   shard as [`super::Mail::View`], and they decide (quorums, hints, the max-offset rule,
//!   CLUSTER, STATS) with the last one they got. The other shards hand their completed
//!   anti-entropy exchanges to the membership shard in [`super::Outbox::reports`]
//!   ([`super::Mail::Reports`]): it reports them to the leader for the whole node.

use super::{After, ConnId, ShardCore};
use crate::cluster::antientropy;
use crate::cluster::coordinator::Outcome;
use crate::cluster::hints::HintQueue;
use crate::cluster::node::{ClusterNode, Output};
use crate::cluster::peer::{self, PeerRequest};
use crate::cluster::{ClusterConfig, NodeView, MEMBERSHIP_SHARD};
use crate::hash::shard_of;
use crate::protocol::message::{put_error, put_ok, put_reply};
use crate::protocol::{op, FrameRef, Request, Status};
use std::fmt::Write as _;

/// Ticks of the cluster core come at most this often (gossip, timeouts, hint delivery).
const CLUSTER_TICK_MS: u64 = 5;

/// A shard's cluster figures are published for STATS at most this often (STATS may lag the
/// truth by this much).
pub(super) const STATS_PUBLISH_INTERVAL_MS: u64 = 25;

/// Where a coordinated request's reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    /// The shard owning the client connection.
    pub shard: usize,
    /// The connection.
    pub conn: ConnId,
    /// The request's opcode.
    pub op: u8,
    /// The request's id.
    pub id: u32,
    /// The request carried the causal flag (siblings mode): a GET's siblings are answered
    /// in the causal reply body (protocol.md § 19).
    pub causal: bool,
}

/// One shard's cluster state.
pub struct ShardCluster {
    pub(super) node: ClusterNode<ReplyTo>,
    last_tick_ms: u64,
    /// When the cluster figures were last published for STATS.
    last_stats_ms: u64,
    /// `NodeShared::anti_entropy_requests` as last seen: a change starts a round here.
    aae_requests_seen: u64,
    /// When the clock warning was last logged (rate limit).
    last_clock_warn_ms: u64,
}

/// The key a REPLICATE, READ or COORDINATE addresses (to route it), `None` for other peer
/// frames.
fn peer_key(op: u8, aux: u8, body: &[u8]) -> Option<&[u8]> {
    if op == peer::coordinate::OP {
        return peer::coordinate::key_of(aux, body);
    }
    match PeerRequest::decode(op, aux, body) {
        Ok(PeerRequest::Replicate { write, .. }) => Some(write.key),
        Ok(PeerRequest::Read { key, .. }) => Some(key),
        _ => None,
    }
}

/// The shard of `shards` that serves a peer request: the key's owner for REPLICATE and READ,
/// the partition's owner for anti-entropy exchanges, the membership shard for GOSSIP and
/// AE_STATUS (the node's membership and the leader's horizon decisions live there); `None`
/// for anything else (served where it landed: errors are answered there).
fn peer_owner(op: u8, aux: u8, body: &[u8], shards: usize) -> Option<usize> {
    if op == peer::op::GOSSIP
        || op == antientropy::ae_op::STATUS
        || crate::cluster::ringpeer::is_ring_op(op)
    {
        return Some(MEMBERSHIP_SHARD);
    }
    match peer_key(op, aux, body) {
        Some(key) => Some(shard_of(key, shards)),
        // Anti-entropy exchange frames name their partition.
        None => antientropy::routing_partition(op, body)
            .map(|p| crate::hash::shard_of_partition(p, shards)),
    }
}

impl ShardCore {
    /// How long a hint delivery waits for its ack before it is sent again: a couple of gossip
    /// intervals (a delivery sent while the link was still reconnecting is lost, and
    /// duplicates are harmless).
    pub fn hint_resend_ms(config: &ClusterConfig) -> u64 {
        (2 * config.gossip_interval_ms).clamp(100, config.request_timeout_ms)
    }

    /// Turn this shard into a member of the cluster `config` (validated), started at wall
    /// time `start_ms` (the node's incarnation), keeping hints in `hints` (see
    /// [`ShardCore::hint_resend_ms`]; the driver opens their durable log).
    pub fn with_cluster(
        mut self,
        config: ClusterConfig,
        start_ms: u64,
        hints: Option<HintQueue>,
    ) -> ShardCore {
        assert_eq!(config.node_id, self.shared.node_id);
        let seed = start_ms ^ ((config.node_id as u64) << 32) ^ self.cfg.shard as u64;
        let hints =
            hints.unwrap_or_else(|| HintQueue::in_memory(ShardCore::hint_resend_ms(&config)));
        let mut node = ClusterNode::new(config, start_ms, seed, hints);
        node.set_shard(self.cfg.shard, self.cfg.shards);
        node.recover_clock(self.store.as_mut(), start_ms);
        self.cluster = Some(Box::new(ShardCluster {
            node,
            last_tick_ms: 0,
            last_stats_ms: 0,
            aae_requests_seen: 0,
            last_clock_warn_ms: 0,
        }));
        self
    }

    /// Give the membership shard the file it saves ring states to, with the state kept
    /// there (adopted when newer than the configured ring).
    pub fn set_ring_store(
        &mut self,
        ring_store: Box<dyn crate::cluster::ringfile::RingStore>,
        kept: Option<crate::cluster::ringfile::KeptRing>,
    ) {
        if let Some(c) = self.cluster.as_mut() {
            c.node.set_ring_store(self.store.as_mut(), ring_store, kept);
        }
    }

    /// Start another shard with the ring state kept on disk (if newer than the configured).
    pub fn start_with_ring(&mut self, kept: crate::cluster::ringstate::RingState) {
        if let Some(c) = self.cluster.as_mut() {
            c.node.start_with_ring(self.store.as_mut(), kept);
        }
    }

    /// On the membership shard: ask the leader to admit this node (or to let it replace a
    /// dead one) until the ring lists it.
    pub fn set_join(&mut self, request: crate::cluster::ringpeer::ChangeRequest) {
        if let Some(c) = self.cluster.as_mut() {
            c.node.set_join(request);
        }
    }

    /// The membership shard's view (mail): decide with it from now on.
    pub(super) fn on_view(&mut self, now_ms: u64, view: NodeView) {
        if let Some(c) = self.cluster.as_mut() {
            c.node.on_view(now_ms, self.store.as_mut(), view);
            self.pump();
        }
    }

    /// Partitions another shard copied whole (mail to the membership shard): reported to
    /// the leader with this shard's own.
    pub(super) fn on_copied(&mut self, list: &[(u16, u64)]) {
        if let Some(c) = self.cluster.as_mut() {
            c.node.on_copied(list);
        }
    }

    /// A CLUSTER_ADMIN frame on connection `conn` of this shard. TRANSFERS and THROTTLE are
    /// answered here (node-wide figures and settings); the other commands go to the
    /// membership shard, which decides them with the leader.
    pub(super) fn cluster_admin_frame(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        f: &FrameRef<'_>,
        command: &str,
        wbuf: &mut Vec<u8>,
    ) -> After {
        let words: Vec<&str> = command.split_whitespace().collect();
        let verb = words
            .first()
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default();
        let reply_text = |core: &Self, wbuf: &mut Vec<u8>, text: &str| {
            core.count_reply(Status::Ok);
            put_ok(wbuf, op::CLUSTER_ADMIN, f.id, &[text.as_bytes()]);
            After::Continue
        };
        let reply_err = |core: &Self, wbuf: &mut Vec<u8>, status: Status, msg: &str| {
            core.count_reply(status);
            put_error(wbuf, op::CLUSTER_ADMIN, f.id, status, msg);
            After::Continue
        };
        if self.cluster.is_none() {
            return reply_err(
                self,
                wbuf,
                Status::BadRequest,
                "this node runs alone: cluster commands need --nodes or --join",
            );
        }
        match verb.as_str() {
            "TRANSFERS" => {
                let reports: Vec<_> = self
                    .shared
                    .counters
                    .iter()
                    .map(|c| {
                        c.transfers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone()
                    })
                    .collect();
                let text = if reports.iter().all(|r| r.rows.is_empty()) {
                    "no partition is moving to this node\n".to_string()
                } else {
                    crate::cluster::node::render_transfers(&reports)
                };
                reply_text(self, wbuf, &text)
            }
            "THROTTLE" => {
                let mb = words.get(1).and_then(|w| w.parse::<f64>().ok());
                match mb {
                    Some(mb) if words.len() == 2 && (0.0..=1e6).contains(&mb) => {
                        let rate = (mb * 1_048_576.0) as u64;
                        self.shared
                            .stream_bytes_per_s
                            .store(rate, std::sync::atomic::Ordering::Relaxed);
                        let text = if rate == 0 {
                            "partition copies unthrottled on this node".to_string()
                        } else {
                            format!("partition copies on this node throttled to {mb} MB/s")
                        };
                        reply_text(self, wbuf, &text)
                    }
                    _ => reply_err(
                        self,
                        wbuf,
                        Status::BadRequest,
                        "THROTTLE takes MB per second (0 = unlimited)",
                    ),
                }
            }
            _ if self.cfg.shard != MEMBERSHIP_SHARD => {
                let records = &mut self.outbox.requests[MEMBERSHIP_SHARD];
                records.extend_from_slice(&conn.0.to_be_bytes());
                crate::protocol::frame::put_frame(records, f.op, f.aux, f.id, &[f.body]);
                After::Deferred
            }
            _ => {
                self.cluster_admin(now_ms, self.cfg.shard, conn, command, f.id);
                After::Deferred
            }
        }
    }

    /// An operator's command on the membership shard; the reply goes to `origin`'s `conn`.
    fn cluster_admin(&mut self, now_ms: u64, origin: usize, conn: ConnId, command: &str, id: u32) {
        let ctx = ReplyTo {
            shard: origin,
            conn,
            op: op::CLUSTER_ADMIN,
            id,
            causal: false,
        };
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match crate::cluster::node::AdminCommand::parse(command) {
            Ok(cmd) => {
                c.node.admin(now_ms, self.store.as_mut(), ctx, cmd);
                self.pump();
            }
            Err(msg) => {
                self.count_reply(Status::BadRequest);
                let dest = &mut self.outbox.replies[origin];
                dest.extend_from_slice(&conn.0.to_be_bytes());
                put_error(dest, op::CLUSTER_ADMIN, id, Status::BadRequest, &msg);
            }
        }
    }

    /// Completed exchanges of another shard (mail to the membership shard): reported to the
    /// leader with this shard's own.
    pub(super) fn on_reports(&mut self, reports: antientropy::Reports) {
        if let Some(c) = self.cluster.as_mut() {
            c.node.on_reports(reports);
        }
    }

    /// The simulator's deliberate bugs (all off in `kvd`, and without a cluster).
    pub(super) fn mutations(&self) -> crate::cluster::Mutations {
        self.cluster
            .as_ref()
            .map_or_else(Default::default, |c| c.node.config().mutations)
    }

    /// The shard's cluster core, to look at (the simulator's checkers read membership and
    /// hints through it); `None` when not clustered.
    pub fn cluster_node(&self) -> Option<&ClusterNode<ReplyTo>> {
        self.cluster.as_ref().map(|c| &c.node)
    }

    /// The shard's cluster core, to change (its membership: members added or forgotten, the
    /// ring version held); `None` when not clustered. The driver moves its outputs on the
    /// next turn.
    pub fn cluster_node_mut(&mut self) -> Option<&mut ClusterNode<ReplyTo>> {
        self.cluster.as_mut().map(|c| &mut c.node)
    }

    /// Whether this node runs as part of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// The clock that issues this shard's versions: the cluster coordinator's when clustered,
    /// the shard's own otherwise.
    pub fn clock_mut(&mut self) -> &mut crate::version::Hlc {
        match self.cluster.as_mut() {
            Some(c) => c.node.hlc_mut(),
            None => &mut self.hlc,
        }
    }

    /// Replicated operations this shard's coordinator tracks now (0 when not clustered). The
    /// driver stops reading client requests while it is high: a replica that falls behind
    /// then slows the clients down instead of filling the table until they get OVERLOADED.
    pub fn replicated_in_flight(&self) -> usize {
        self.cluster
            .as_ref()
            .map_or(0, |c| c.node.coordinator().in_flight())
    }

    /// The cluster's configuration, if clustered (the driver opens peer links from it).
    pub fn cluster_config(&self) -> Option<&ClusterConfig> {
        self.cluster.as_ref().map(|c| c.node.config())
    }

    /// How this node resolves conflicts (`--conflicts`; last write wins outside a cluster).
    pub fn conflicts(&self) -> crate::cluster::Conflicts {
        self.cluster_config()
            .map(|c| c.conflicts)
            .unwrap_or_default()
    }

    /// Whether `node_id` may start the peer handshake: any other node id, not removed from
    /// the cluster, when a cluster secret is set. Not only the known members: a node that
    /// joins is unknown here until its first gossip arrives, which needs this handshake; the
    /// proof of the secret is what admits a peer.
    pub(super) fn peer_known(&self, node_id: u32) -> bool {
        match &self.cluster {
            None => false,
            Some(c) => {
                let cfg = c.node.config();
                node_id != cfg.node_id && !cfg.secret.is_empty() && !c.node.is_forgotten(node_id)
            }
        }
    }

    /// Where node `id` listens, as this shard's cluster core knows it (its membership, or
    /// the membership shard's last view): the outbound links connect there.
    pub fn peer_addr(&self, id: u32) -> Option<std::net::SocketAddr> {
        self.cluster.as_ref()?.node.peer_addr(id)
    }

    /// Start a client GET/PUT/DELETE on this (owning) shard's coordinator. The reply comes
    /// back as a record for `origin`'s connection `conn`. Returns false if the request is not
    /// one the cluster handles (the caller uses the single-node path).
    pub(super) fn cluster_client(
        &mut self,
        now_ms: u64,
        origin: usize,
        conn: ConnId,
        req: &Request<'_>,
        id: u32,
    ) -> bool {
        let Some(c) = self.cluster.as_mut() else {
            return false;
        };
        let causal = matches!(
            req,
            Request::CausalGet { .. } | Request::CausalPut { .. } | Request::CausalDelete { .. }
        );
        let ctx = ReplyTo {
            shard: origin,
            conn,
            op: req.op(),
            id,
            causal,
        };
        let siblings = c.node.config().conflicts == crate::cluster::Conflicts::Siblings;
        if causal && !siblings {
            self.refuse(
                ctx,
                Status::BadRequest,
                "the causal flag (aux bit 2) needs a cluster started with --conflicts siblings; \
                 this one resolves conflicts last-write-wins"
                    .into(),
            );
            return true;
        }
        let is_write = !matches!(req, Request::Get { .. } | Request::CausalGet { .. });
        if siblings && is_write {
            if let Some(why) = &self.write_error {
                self.refuse_write(ctx, why.clone());
                return true;
            }
            let (key, context, value, ttl, consistency) = match *req {
                Request::Put {
                    key,
                    value,
                    ttl_seconds,
                    consistency,
                } => (key, &[][..], Some(value), ttl_seconds, consistency),
                Request::CausalPut {
                    key,
                    value,
                    ttl_seconds,
                    context,
                    consistency,
                } => (key, context, Some(value), ttl_seconds, consistency),
                Request::CausalDelete {
                    key,
                    context,
                    consistency,
                } => (key, context, None, 0, consistency),
                Request::Delete { .. } => {
                    self.refuse(
                        ctx,
                        Status::BadRequest,
                        "siblings mode: a DELETE must carry the causal context of a GET (aux \
                         bit 2), so that it removes exactly what was read"
                            .into(),
                    );
                    return true;
                }
                _ => return false,
            };
            let expires_at_ms = crate::storage::expiry_of_ttl(now_ms, ttl);
            let store = self.store.as_mut();
            let c = self.cluster.as_mut().expect("checked above");
            c.node.causal_write(
                now_ms,
                store,
                ctx,
                key,
                context,
                value,
                expires_at_ms,
                consistency,
                false,
            );
            self.pump();
            return true;
        }
        let c = self.cluster.as_mut().expect("checked above");
        let store = self.store.as_mut();
        match *req {
            Request::Get { key, consistency } | Request::CausalGet { key, consistency } => {
                c.node.read(now_ms, store, ctx, key, consistency)
            }
            Request::Put {
                key,
                value,
                ttl_seconds,
                consistency,
            } => {
                let expires_at_ms = crate::storage::expiry_of_ttl(now_ms, ttl_seconds);
                if let Some(why) = &self.write_error {
                    self.refuse_write(ctx, why.clone());
                    return true;
                }
                c.node.write(
                    now_ms,
                    store,
                    ctx,
                    key,
                    Some(value),
                    expires_at_ms,
                    consistency,
                )
            }
            Request::Delete { key, consistency } => {
                if let Some(why) = &self.write_error {
                    self.refuse_write(ctx, why.clone());
                    return true;
                }
                c.node.write(now_ms, store, ctx, key, None, 0, consistency)
            }
            _ => return false,
        }
        self.pump();
        true
    }

    /// Answer a client request at once with an error.
    pub(super) fn refuse(&mut self, ctx: ReplyTo, status: Status, message: String) {
        self.count_reply(status);
        let dest = &mut self.outbox.replies[ctx.shard];
        dest.extend_from_slice(&ctx.conn.0.to_be_bytes());
        put_error(dest, ctx.op, ctx.id, status, &message);
    }

    pub(super) fn refuse_write(&mut self, ctx: ReplyTo, why: String) {
        let msg = format!("writes are refused since a failed sync: {why}");
        self.count_reply(Status::StorageError);
        self.compacting.refused_here += 1;
        let dest = &mut self.outbox.replies[ctx.shard];
        dest.extend_from_slice(&ctx.conn.0.to_be_bytes());
        put_error(dest, ctx.op, ctx.id, Status::StorageError, &msg);
    }

    /// A peer frame on a peer session of this shard: route REPLICATE/READ to the key's shard,
    /// serve the rest here.
    pub(super) fn peer_frame(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        from: u32,
        f: &FrameRef<'_>,
        wbuf: &mut Vec<u8>,
    ) -> After {
        // test-only mutation: serve keyed peer frames where they land.
        let routed = !self.mutations().no_peer_routing || peer_key(f.op, f.aux, f.body).is_none();
        let owner = peer_owner(f.op, f.aux, f.body, self.cfg.shards).filter(|_| routed);
        if let Some(owner) = owner {
            if owner != self.cfg.shard {
                let records = &mut self.outbox.requests[owner];
                records.extend_from_slice(&conn.0.to_be_bytes());
                crate::protocol::frame::put_frame(records, f.op, f.aux, f.id, &[f.body]);
                return After::Deferred;
            }
        }
        if f.op == peer::coordinate::OP {
            self.coordinate_request(now_ms, self.cfg.shard, conn, f);
            return After::Deferred;
        }
        let mark = wbuf.len();
        if self.serve_peer(now_ms, from, f, wbuf) {
            let held = &mut self.held[self.cfg.shard];
            held.extend_from_slice(&conn.0.to_be_bytes());
            held.extend_from_slice(&wbuf[mark..]);
            wbuf.truncate(mark);
            return After::Deferred;
        }
        After::Continue
    }

    /// Serve a peer request on this shard, appending the reply to `out`. Returns true when
    /// the reply must wait for the turn's sync (a write under the `always` policy).
    pub(super) fn serve_peer(
        &mut self,
        now_ms: u64,
        from: u32,
        f: &FrameRef<'_>,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(c) = self.cluster.as_mut() else {
            put_error(
                out,
                f.op,
                f.id,
                Status::Unauthorized,
                "this node is not part of a cluster",
            );
            return false;
        };
        if f.op == peer::op::REPLICATE {
            if let Some(why) = &self.write_error {
                let msg = format!("writes are refused since a failed sync: {why}");
                put_error(out, f.op, f.id, Status::StorageError, &msg);
                self.compacting.refused_here += 1;
                return false;
            }
        }
        let store = self.store.as_mut();
        let r = c
            .node
            .on_peer_request(now_ms, store, from, f.id, f.op, f.aux, f.body, out);
        let after_sync = match r {
            Ok(after_sync) => after_sync,
            Err(e) => {
                log::warn!("peer frame from node {from}: {e}");
                false
            }
        };
        self.pump();
        // The cluster core marks the replies that acknowledge records it applied (REPLICATE,
        // anti-entropy PUSH and KEYS): they wait for the turn's write (and sync under
        // `always`).
        after_sync && self.ack_waits()
    }

    /// A reply from node `from` on one of this shard's outbound peer links.
    pub fn on_peer_reply(&mut self, now_ms: u64, from: u32, f: &FrameRef<'_>) {
        if let Some(c) = self.cluster.as_mut() {
            c.node.on_peer_reply(now_ms, self.store.as_mut(), from, f);
            self.pump();
        }
    }

    /// After the turn's one write of the store (`finish_turn`): the cluster core's own copies
    /// of writes stand, or (`failed`: why) their acknowledgements are taken back. Runs before
    /// the turn's held replies are released, so that whatever the revocation answers goes
    /// out with them.
    pub(super) fn after_turn_write(&mut self, failed: Option<&str>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match failed {
            None => c.node.on_turn_written(),
            Some(why) => {
                let now_ms = c.last_tick_ms;
                let aborted = c
                    .node
                    .on_turn_write_failed(now_ms, self.store.as_mut(), why);
                self.pump();
                // Siblings mode: the aborted writes' REPLICATEs must not leave (the driver
                // sends peer frames only after the turn's write).
                if !aborted.is_empty() {
                    self.outbox.peer.retain(|(_, f)| {
                        let id = f
                            .get(6..10)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                        !(f.get(4) == Some(&peer::op::REPLICATE)
                            && id.is_some_and(|id| aborted.contains(&id)))
                    });
                }
            }
        }
    }

    /// Advance the cluster core's time (gossip, failure detection, request timeouts, hint
    /// delivery). Cheap to call every loop turn: it acts at most every few ms.
    pub fn on_cluster_tick(&mut self, now_ms: u64) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        // A wall clock that stepped back ticks at once: waiting for it to catch up would
        // leave the node silent (no gossip, so failed in the others' eyes) for as long.
        if now_ms >= c.last_tick_ms && now_ms < c.last_tick_ms + CLUSTER_TICK_MS {
            return;
        }
        c.last_tick_ms = now_ms;
        let asked = self
            .shared
            .anti_entropy_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        if asked != c.aae_requests_seen {
            c.aae_requests_seen = asked;
            c.node.trigger_anti_entropy(now_ms);
        }
        let rate = self
            .shared
            .stream_bytes_per_s
            .load(std::sync::atomic::Ordering::Relaxed);
        let limit = self
            .shared
            .transfer_limit
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        if rate != c.node.stream_rate() || limit != c.node.transfer_limit() {
            c.node.set_stream_rate(rate, limit);
        }
        c.node.on_tick(now_ms, self.store.as_mut());
        self.pump();
        let c = self.cluster.as_mut().expect("checked above");
        // The membership shard hands its view to the others when it changed; the others hand
        // it their completed exchanges.
        if let Some(view) = c.node.poll_view(now_ms) {
            self.outbox.view = Some(view);
        }
        let reports = c.node.take_reports();
        if !reports.is_empty() {
            self.outbox.add_reports(reports);
        }
        self.outbox.copied.extend(c.node.take_copied());
        // The figures go to STATS at most every STATS_PUBLISH_INTERVAL_MS: gathering them
        // walks every partition's anti-entropy state, too much for every 5 ms tick.
        if now_ms < c.last_stats_ms || now_ms >= c.last_stats_ms + STATS_PUBLISH_INTERVAL_MS {
            c.last_stats_ms = now_ms;
            let c = self.cluster.as_ref().expect("checked above");
            self.counters()
                .cluster
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .publish(|report| c.node.stats_report_at(now_ms, report));
            *self
                .counters()
                .transfers
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = c.node.transfer_report(now_ms);
            *self
                .counters()
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = c.node.member_figures();
        }
        if self.cfg.shard == MEMBERSHIP_SHARD {
            self.warn_clock(now_ms);
        }
    }

    /// Log (at most every [`crate::limits::CLOCK_WARN_INTERVAL_MS`]) why this node refuses
    /// writes when its clock is too far from the cluster's. The membership shard speaks for
    /// the node.
    fn warn_clock(&mut self, now_ms: u64) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let clock = c.node.cluster_clock(now_ms);
        // Not measured yet is normal for a moment after start (or after a peer comes back):
        // not worth a warning, and it would hold back the one that tells the offset.
        if !clock.complete() {
            return;
        }
        let Some(why) = c.node.clock_refusal(now_ms) else {
            return;
        };
        if c.last_clock_warn_ms != 0
            && now_ms.saturating_sub(c.last_clock_warn_ms) < crate::limits::CLOCK_WARN_INTERVAL_MS
        {
            return;
        }
        c.last_clock_warn_ms = now_ms;
        log::warn!("clock: {why}");
    }

    /// Whether this shard serves reads: false while its cluster core rejoins through
    /// anti-entropy after an absence longer than the tombstone window.
    /// The time expiry is judged by: the cluster's clock as this shard measures it when
    /// clustered (as the coordinator's reads do), else the wall clock.
    pub(super) fn expiry_now_ms(&self, now_ms: u64) -> u64 {
        self.cluster
            .as_ref()
            .map_or(now_ms, |c| c.node.cluster_now_ms(now_ms))
    }

    pub(super) fn cluster_serving_reads(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.node.serving_reads())
    }

    /// The CLUSTER reply text (the node-wide view: the membership shard's), if clustered.
    /// The RING reply's map: this node's ring and every known member's address, or, without
    /// `--nodes`, a ring of this node alone whose address is the one the client used (empty).
    pub(super) fn ring_map(
        &self,
    ) -> Result<crate::protocol::ringmap::RingMap, crate::cluster::OwnershipError> {
        use crate::protocol::ringmap::RingMap;
        Ok(match &self.cluster {
            Some(c) => {
                // The ring state's members (not removed) with the addresses they announced;
                // where a member announced none, the address gossip or the configuration has.
                let state = c.node.ring_state();
                RingMap {
                    ownership: state.current().clone(),
                    addrs: state
                        .members()
                        .iter()
                        .filter(|m| m.status != crate::cluster::ringstate::MemberStatus::Removed)
                        .map(|m| {
                            let addr = if m.addr.is_empty() {
                                c.node
                                    .peer_addr(m.id)
                                    .map(|a| a.to_string())
                                    .unwrap_or_default()
                            } else {
                                m.addr.clone()
                            };
                            (m.id, addr)
                        })
                        .collect(),
                }
            }
            None => RingMap {
                ownership: crate::cluster::Ownership::initial(&[self.shared.node_id], 1)?,
                addrs: vec![(self.shared.node_id, String::new())],
            },
        })
    }

    /// Count a client's GET/PUT/DELETE as sent to an owner of its key or not (STATS
    /// `key_requests_owned` / `key_requests_not_owned`; a single node counts nothing).
    pub(super) fn count_key_routing(&self, key: &[u8]) {
        let Some(c) = &self.cluster else {
            return;
        };
        let owned = c
            .node
            .ring()
            .preference_for_key(key)
            .contains(&self.shared.node_id);
        let counters = &self.shared.counters[self.cfg.shard];
        let counter = if owned {
            &counters.key_requests_owned
        } else {
            &counters.key_requests_not_owned
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn cluster_view(&self) -> Option<String> {
        Some(self.cluster.as_ref()?.node.render_cluster())
    }

    /// STATS lines of the cluster that are views rather than counters (not summed): this
    /// shard's view of the node, which is the membership shard's as of its last view mail.
    pub(super) fn cluster_view_stats(&self, now_ms: u64, t: &mut String) {
        if let Some(c) = &self.cluster {
            let _ = writeln!(t, "cluster_leader {}", c.node.leader());
            let _ = writeln!(t, "cluster_alive {}", c.node.alive_ids().len());
            let _ = writeln!(t, "cluster_nodes {}", c.node.members().len());
            let _ = writeln!(t, "cluster_replicas {}", c.node.config().replicas);
            let _ = writeln!(t, "cluster_incarnation {}", c.node.incarnation());
            c.node.clock_figures(now_ms).write_stats(t);
        }
    }

    /// Move the cluster core's outputs: peer frames to the outbox, client answers to reply
    /// records (held for the sync when they acknowledge a write under `always`).
    pub(super) fn pump(&mut self) {
        // Constant through the loop: moving outputs applies no write.
        let ack_waits = self.ack_waits();
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        while let Some(out) = c.node.poll_output() {
            match out {
                Output::Send { to, frame } => self.outbox.peer.push((to, frame)),
                Output::Event(e) => log::info!("shard {}: cluster: {e:?}", self.cfg.shard),
                Output::Reply { ctx, outcome } => {
                    if let Some(kept) = self.outcomes.as_mut() {
                        kept.push((ctx.conn, ctx.id, outcome.clone()));
                    }
                    let hold = outcome.acknowledges_write() && ack_waits;
                    let dest = if hold {
                        &mut self.held[ctx.shard]
                    } else {
                        &mut self.outbox.replies[ctx.shard]
                    };
                    dest.extend_from_slice(&ctx.conn.0.to_be_bytes());
                    let status = match outcome {
                        Outcome::Written { version, .. } => {
                            put_ok(dest, ctx.op, ctx.id, &[&version.0.to_be_bytes()]);
                            Status::Ok
                        }
                        Outcome::Found { version, value, .. } => {
                            put_ok(dest, op::GET, ctx.id, &[&version.0.to_be_bytes(), &value]);
                            crate::pool::give_bytes(value);
                            Status::Ok
                        }
                        Outcome::NotFound => {
                            put_reply(dest, op::GET, Status::NotFound, ctx.id, &[]);
                            Status::NotFound
                        }
                        Outcome::Siblings { context, values } => {
                            super::siblings::siblings_reply(dest, &ctx, &context, values)
                        }
                        Outcome::Failed { status, message } => {
                            put_error(dest, ctx.op, ctx.id, status, &message);
                            status
                        }
                        Outcome::Text(text) => {
                            put_ok(dest, ctx.op, ctx.id, &[text.as_bytes()]);
                            Status::Ok
                        }
                    };
                    self.shared.counters[self.cfg.shard].replies_by_status[status as usize]
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

/// The outcome of `Request::decode` for a frame forwarded from another shard that the cluster
/// handles: `Some(true)` held, `Some(false)` answered in `out`, `None` for a pending client
/// request (answered later) — used by `on_mail`.
impl ShardCore {
    pub(super) fn cluster_mail(
        &mut self,
        now_ms: u64,
        from_shard: usize,
        conn: ConnId,
        req: &Request<'_>,
        f: &FrameRef<'_>,
        out: &mut Vec<u8>,
    ) -> Option<Option<bool>> {
        self.cluster.as_ref()?;
        match req {
            Request::Get { .. }
            | Request::Put { .. }
            | Request::Delete { .. }
            | Request::CausalGet { .. }
            | Request::CausalPut { .. }
            | Request::CausalDelete { .. } => {
                self.cluster_client(now_ms, from_shard, conn, req, f.id);
                Some(None)
            }
            // The peer's id is not carried by a forwarded record: 0 means "unknown". REPLICATE
            // and READ do not use it, GOSSIP and the anti-entropy requests name their sender
            // in their body.
            Request::Peer { op, .. } if *op == peer::coordinate::OP => {
                self.coordinate_request(now_ms, from_shard, conn, f);
                Some(None)
            }
            Request::Peer { .. } => Some(Some(self.serve_peer(now_ms, 0, f, out))),
            Request::ClusterAdmin { command } => {
                self.cluster_admin(now_ms, from_shard, conn, command, f.id);
                Some(None)
            }
            _ => None,
        }
    }
}
