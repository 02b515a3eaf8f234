//! The core's part in the elastic ring ([`crate::cluster::ringstate`]): adopting newer ring
//! states, pulling them from peers, asking the leader for changes, reporting copied
//! partitions, and — on the leader — deciding changes, settling them and flipping partitions.
//!
//! ```text
//!  every node (membership core)                    leader (membership core)
//!  pull every RING_POLL_MS, and at once ──PULL──▶  records the puller's version
//!  when a peer holds a newer version  ◀─ state ──  (all live members at `since` → settle)
//!  joining: ask to be admitted ────────CHANGE──▶  admit / replace (one change at a time)
//!  copies done (own + other shards) ───CHANGE──▶  every pending owner copied p → flip p
//!  operator: CLUSTER LEAVE/REMOVE/... ─CHANGE──▶  leave / remove / pause / resume
//! ```
//!
//! A node adopts a ring state only when its version is higher than the one it holds, saves
//! it (the [`RingStore`]) before acting on it, and then: its trees follow the partitions it
//! holds, it forgets the records of the partitions it no longer holds (the flip is known
//! here now), and the copies of the partitions it takes over are planned. The node's other
//! shards get the state in the membership view and do the same (they do not save it).
//!
//! Writes go to the owners and the pending owners of their partition, and need the level's
//! count *plus one per pending owner* (Cassandra's rule for pending ranges): so after the
//! flip, the new owners hold every acknowledged write on as many nodes as the level asks.

use super::operator::AdminCommand;
use super::{ClusterNode, Output};
use crate::cluster::coordinator::Outcome;
use crate::cluster::peer::PeerError;
use crate::cluster::ringfile::{KeptRing, NoRingFile, RingStore};
use crate::cluster::ringpeer::{self, ring_op, ChangeRequest};
use crate::cluster::ringstate::{Change, MemberStatus, RingChangeError, RingState};
use crate::hash::partition_of;
use crate::limits::PARTITION_COUNT;
use crate::protocol::message::{put_error, put_ok};
use crate::protocol::{FrameRef, Status, RESPONSE_BIT};
use crate::storage::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A node asks a peer for a newer ring state at least this often (the leader learns each
/// node's version from these, to settle changes), and at once when it learns of a newer one.
pub const RING_POLL_MS: u64 = 1_000;

/// A joining node asks to be admitted, and a pending owner reports a copied partition,
/// again after this long until the ring shows it done.
pub const RING_RETRY_MS: u64 = 500;

/// Keys a core looks at per tick when it forgets the records of partitions moved away (a
/// bounded step: about a millisecond).
pub const FORGET_KEYS_PER_TICK: usize = 16_384;

/// Time between two forget steps.
const FORGET_STEP_MS: u64 = 5;

/// How long a change passed on to the leader waits for its answer.
pub const RING_CHANGE_TIMEOUT_MS: u64 = 5_000;

/// While copies still run on a core, the partitions it copied are synced (and then reported)
/// at most this often: one fsync per copied partition stalled the shard's event loop, and
/// with it every copy in flight, once per partition. When no copy runs they are synced on
/// the next tick.
pub const COPIED_SYNC_INTERVAL_MS: u64 = 200;

/// Whether a time `at` set at most `span` ahead of the clock then has come at `now_ms`: it
/// has, or the clock stepped back since (`at` is further ahead than it was ever set), as a
/// node minutes off has its clock set right: else its ring chores would wait for minutes.
pub(super) fn due(now_ms: u64, at: u64, span: u64) -> bool {
    now_ms >= at || at > now_ms.saturating_add(span)
}

/// The elastic ring state of one core.
pub(super) struct Elastic<C> {
    /// Where the membership core saves every ring state it adopts.
    pub(super) store: Box<dyn RingStore>,
    /// A RING_PULL in flight: (id, deadline).
    pull: Option<(u32, u64)>,
    next_pull_ms: u64,
    /// The highest ring version each peer was seen holding (pull requests, replies).
    peer_versions: BTreeMap<u32, u64>,
    /// Changes passed on to the leader: id → (the client's context, if any; deadline).
    asked: BTreeMap<u32, (Option<C>, u64)>,
    next_id: u32,
    /// Partitions copied whole (this core's and, on the membership core, the other
    /// shards'), to report to the leader: partition → the change's version.
    copied: BTreeMap<u16, u64>,
    last_report_ms: u64,
    /// On the leader: (partition, node) copied reports for the change begun at
    /// `reports_since`.
    reports: BTreeSet<(u16, u32)>,
    reports_since: u64,
    /// What this node asks of the leader until the ring shows it (a join or replace).
    join: Option<ChangeRequest>,
    last_join_ms: u64,
    /// Whether a ring state was pulled (or found current) from a peer since start.
    pub(super) confirmed: bool,
    /// When a peer last confirmed the ring while this node saw a majority alive (the ring
    /// lease, `lease.rs`).
    pub(super) confirmed_at: Option<u64>,
    /// Node byte rate of copies (0 = unlimited) and copies at once.
    bytes_per_s: u64,
    transfer_limit: usize,
    /// Keys forgotten because their partition moved away (STATS).
    pub(super) forgotten: u64,
    /// Partitions flipped by this node as leader (STATS).
    pub(super) flips: u64,
    /// Partitions this core no longer holds whose records are still to be forgotten.
    doomed: Vec<bool>,
    /// Where the running forget pass is (`None`: no pass), and what it forgot so far.
    forget_cursor: Option<u64>,
    pass_forgot: u64,
    /// Partitions were doomed during the running pass: another pass follows it.
    forget_again: bool,
    /// Partitions copied whole whose records are not synced yet.
    unsynced: Vec<(u16, u64)>,
    /// When they were last synced (see [`COPIED_SYNC_INTERVAL_MS`]).
    copied_synced_ms: u64,
    /// When `ring_tick` last ran (the next forget step is due soon after).
    last_tick_ms: u64,
    /// The ring's consensus (membership core; `ringvote.rs`).
    pub(super) consensus: super::ringvote::Consensus,
    /// Operator commands answered once this node's committed ring reaches a version:
    /// (the client's context, the version, the answer, the deadline).
    pub(super) waiting: Vec<(C, u64, String, u64)>,
}

impl<C> Elastic<C> {
    pub(super) fn new() -> Elastic<C> {
        Elastic {
            store: Box::new(NoRingFile),
            pull: None,
            next_pull_ms: 0,
            peer_versions: BTreeMap::new(),
            asked: BTreeMap::new(),
            next_id: 1,
            copied: BTreeMap::new(),
            last_report_ms: 0,
            reports: BTreeSet::new(),
            reports_since: 0,
            join: None,
            last_join_ms: 0,
            confirmed: false,
            confirmed_at: None,
            bytes_per_s: 0,
            transfer_limit: crate::cluster::antientropy::TRANSFER_LIMIT_DEFAULT,
            forgotten: 0,
            flips: 0,
            doomed: vec![false; PARTITION_COUNT],
            forget_cursor: None,
            pass_forgot: 0,
            forget_again: false,
            unsynced: Vec::new(),
            copied_synced_ms: 0,
            last_tick_ms: 0,
            consensus: Default::default(),
            waiting: Vec::new(),
        }
    }

    pub(super) fn alloc_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = if id >= 0x7FFF_FFFE { 1 } else { id + 1 };
        id
    }
}

impl<C> ClusterNode<C> {
    /// Give this core the place it saves ring states to (the membership core of a node with
    /// a data directory) and the ring state kept there, if any: adopted at once when newer
    /// than the configured one. Call before [`ClusterNode::recover_clock`].
    pub fn set_ring_store(
        &mut self,
        store: &mut dyn Store,
        ring_store: Box<dyn RingStore>,
        kept: Option<KeptRing>,
    ) {
        self.elastic.store = ring_store;
        if let Some(k) = kept {
            self.restore_consensus(k.promised, k.accepted);
            self.install_ring(store, Arc::new(k.committed), false);
            self.forget_unheld(store);
        }
    }

    /// At start, by the ring state kept: forget the records of every partition this node
    /// does not hold. Forgetting is not durable (the records stay in the log until
    /// compaction), and the partitions a node held for a while (a pending owner's copy, a
    /// leaving node's) are not those of its configured ring, which is all a restart's
    /// ring install compares with.
    fn forget_unheld(&mut self, _store: &mut dyn Store) {
        let me = self.config.node_id;
        for p in 0..PARTITION_COUNT {
            self.elastic.doomed[p] = !self.ring.holds(me, p);
        }
        // A pass from the start, in bounded steps on the ticks (`forget_step`).
        self.elastic.forget_cursor = Some(0);
        self.elastic.pass_forgot = 0;
    }

    /// Adopt a ring state read back from disk on a core that does not save (another shard of
    /// the node), if it is newer.
    pub fn start_with_ring(&mut self, store: &mut dyn Store, kept: RingState) {
        if kept.version() > self.ring.version() {
            self.install_ring(store, Arc::new(kept), false);
            self.forget_unheld(store);
        }
    }

    /// Ask the leader, until the ring shows it, to admit this node (`--join`) or to let it
    /// replace a dead one (`--replace`).
    pub fn set_join(&mut self, request: ChangeRequest) {
        self.elastic.join = Some(request);
    }

    /// The node's byte rate for partition copies (0 = unlimited), split over its shards, and
    /// how many copies may run at once.
    pub fn set_stream_rate(&mut self, bytes_per_s: u64, transfer_limit: usize) {
        self.elastic.bytes_per_s = bytes_per_s;
        self.elastic.transfer_limit = transfer_limit.max(1);
        self.update_moves();
    }

    /// The node's byte rate for partition copies (0 = unlimited).
    pub fn stream_rate(&self) -> u64 {
        self.elastic.bytes_per_s
    }

    /// Partition copies the node runs at once.
    pub fn transfer_limit(&self) -> usize {
        self.elastic.transfer_limit
    }

    /// The ring state this core decides with.
    pub fn ring_state(&self) -> &Arc<RingState> {
        self.ring.state()
    }

    fn update_moves(&mut self) {
        let shards = self.shards.max(1) as u64;
        let rate = self.elastic.bytes_per_s.div_ceil(shards);
        let may = self.ring.state().moves_may_run();
        self.aae.set_moves(
            may,
            rate,
            self.elastic.transfer_limit.div_ceil(shards as usize),
        );
    }

    /// A replica refused one of this node's requests: `from` holds ring version `version`,
    /// newer than this node's (protocol.md § 18.2). The membership core pulls it at its next
    /// tick (a version a peer was seen holding, as from its pulls); another shard's waits for
    /// its membership core, which pulls at least every [`RING_POLL_MS`].
    pub(super) fn note_newer_ring(&mut self, from: u32, version: u64) {
        if version <= self.ring.version() {
            return;
        }
        let e = self.elastic.peer_versions.entry(from).or_insert(0);
        *e = (*e).max(version);
    }

    /// Adopt a committed `state` if it is newer than the ring held: save it (membership
    /// core), follow it. Returns whether it was adopted.
    pub fn adopt_ring(&mut self, store: &mut dyn Store, state: Arc<RingState>) -> bool {
        if state.version() <= self.ring.version() {
            return false;
        }
        // A leader that learns of a newer committed state was behind: it is elected again
        // from it (`ringvote.rs`).
        self.step_down();
        self.install_ring(store, state, true);
        true
    }

    /// Act on the committed `state` (saved first when `save`, on the membership core).
    pub(super) fn install_ring(
        &mut self,
        store: &mut dyn Store,
        state: Arc<RingState>,
        save: bool,
    ) {
        let old = self.ring.version();
        let next = self.ring.follow(state.clone());
        let previous = std::mem::replace(&mut self.ring, next);
        self.coordinator.set_ring_version(state.version());
        // Not fatal when it fails: a restart pulls the ring from a peer.
        if save && !self.save_ring() {
            log::error!("acting on ring version {} unsaved", state.version());
        }
        drop(previous);
        if !self.is_follower() {
            // Gossip tells the others which version this node holds (the leader settles a
            // change with it); members the ring lists are known with their addresses before
            // their first gossip; removed ones are forgotten for good.
            let me = self.config.node_id;
            self.membership.set_ring_version(state.version());
            for m in state.members().iter().filter(|m| m.id != me) {
                if m.status == MemberStatus::Removed {
                    if !self.membership.is_forgotten(m.id) {
                        self.membership.forget(m.id);
                    }
                } else if self.membership.member(m.id).is_none() {
                    if let Ok(addr) = m.addr.parse() {
                        self.membership.add_member(m.id, addr);
                    }
                }
            }
        }
        let dropped = self.aae.set_ring(self.ring.clone(), store);
        // Partitions held again are not to be forgotten; those moved away are, in bounded
        // steps on the next ticks (`forget_step`).
        for p in 0..PARTITION_COUNT {
            if self.ring.holds(self.config.node_id, p) {
                self.elastic.doomed[p] = false;
            }
        }
        if !dropped.is_empty() {
            for &p in &dropped {
                self.elastic.doomed[p] = true;
            }
            // Keys of the newly doomed partitions may be behind a running pass's cursor: it
            // is followed by another.
            match self.elastic.forget_cursor {
                None => {
                    self.elastic.forget_cursor = Some(0);
                    self.elastic.pass_forgot = 0;
                }
                Some(_) => self.elastic.forget_again = true,
            }
        }
        self.retarget_hints(store);
        if self.ring.state().since() != self.elastic.reports_since {
            self.elastic.reports.clear();
            self.elastic.reports_since = self.ring.state().since();
        }
        let since = self.ring.state().since();
        self.elastic.copied.retain(|_, s| *s == since);
        self.update_moves();
        log::debug!(
            "node {}: ring version {old} -> {}",
            self.config.node_id,
            self.ring.version()
        );
    }

    /// Hints kept for nodes that left the ring go to the current owners of their keys (applied
    /// here when this node is one), so a write a removed node missed is not lost with it.
    fn retarget_hints(&mut self, store: &mut dyn Store) {
        let me = self.config.node_id;
        let state = self.ring.state().clone();
        for gone in self.hints.targets() {
            if state.is_member(gone) || state.version() == 0 {
                continue;
            }
            let writes = self.hints.take_target(gone);
            if writes.is_empty() {
                continue;
            }
            log::info!(
                "{} hints for node {gone}, which left the ring, go to the new owners",
                writes.len()
            );
            for w in writes {
                for &owner in state.owners(partition_of(&w.key)) {
                    if owner == me {
                        let mut tracked = self.aae.tracked_hint(store);
                        // Best effort, as a hint delivery: a failing store reports itself.
                        let _ = tracked.apply(w.as_write());
                    } else {
                        self.hints.add(owner, w.clone());
                    }
                }
            }
        }
    }

    /// Serve a RING_PULL or RING_CHANGE from `from` (on the membership core).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_ring_request(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        id: u32,
        op: u8,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        let r = if op == ring_op::VOTE {
            self.on_vote_request(id, body, out)
        } else if op == ring_op::ACCEPT {
            self.on_accept_request(id, body, out)
        } else if op == ring_op::PULL {
            ringpeer::decode_pull(body, from).map(|(sender, held)| {
                // What the puller holds now (not the most it ever said: a version only it
                // held may have been lost with its crash, and must not be waited for).
                self.elastic.peer_versions.insert(sender, held);
                if held < self.ring.version() {
                    put_ok(out, op, id, &[&self.ring.state().to_bytes()]);
                } else {
                    put_ok(out, op, id, &[]);
                }
            })
        } else {
            ringpeer::decode_change(body).map(|req| {
                if !self.is_leader() {
                    let msg = format!(
                        "node {} is not the leader (node {} is): changes are decided there",
                        self.config.node_id,
                        self.leader()
                    );
                    put_error(out, op, id, Status::Unavailable, &msg);
                    return;
                }
                match self.decide(now_ms, store, req) {
                    Ok((v, msg)) => ringpeer::put_change_ok(out, id, v, &msg),
                    Err((status, msg)) => put_error(out, op, id, status, &msg),
                }
            })
        };
        if let Err(e) = &r {
            self.replica_stats.peer_errors += 1;
            put_error(out, op, id, e.status(), &e.to_string());
        }
        r
    }

    /// A reply to one of this core's RING_PULL or RING_CHANGE frames.
    pub(super) fn on_ring_reply(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        f: &FrameRef<'_>,
    ) {
        let op = f.op & !RESPONSE_BIT;
        let ok = f.aux == Status::Ok as u8;
        if op == ring_op::VOTE || op == ring_op::ACCEPT {
            self.on_ballot_reply(now_ms, store, from, f, op);
            return;
        }
        if op == ring_op::PULL {
            if self.elastic.pull.is_none_or(|(id, _)| id != f.id) {
                return;
            }
            self.elastic.pull = None;
            if !ok {
                return;
            }
            self.note_ring_confirmed(now_ms);
            if f.body.is_empty() {
                return;
            }
            match RingState::decode(f.body) {
                Ok(s) => {
                    let e = self.elastic.peer_versions.entry(from).or_insert(0);
                    *e = (*e).max(s.version());
                    self.adopt_ring(store, Arc::new(s));
                }
                Err(e) => {
                    self.replica_stats.peer_errors += 1;
                    log::warn!("node {from} sent a bad ring state: {e}");
                }
            }
            return;
        }
        let Some((ctx, _)) = self.elastic.asked.remove(&f.id) else {
            return;
        };
        let outcome = if ok {
            match ringpeer::decode_change_ok(f.body) {
                Ok((v, msg)) => {
                    if v > self.ring.version() {
                        // Pull the new state from the leader now.
                        let e = self.elastic.peer_versions.entry(from).or_insert(0);
                        *e = (*e).max(v);
                        self.elastic.next_pull_ms = 0;
                        if let Some(ctx) = ctx {
                            // Answered once committed and held here (`ringvote.rs`).
                            self.reply_when_held(now_ms, ctx, v, msg);
                            return;
                        }
                    }
                    Outcome::Text(msg)
                }
                Err(e) => Outcome::Failed {
                    status: Status::Internal,
                    message: e.to_string(),
                },
            }
        } else {
            let status = Status::from_u8(f.aux).unwrap_or(Status::Internal);
            Outcome::Failed {
                status,
                message: String::from_utf8_lossy(f.body).into_owned(),
            }
        };
        match ctx {
            Some(ctx) => self.outputs.push_back(Output::Reply { ctx, outcome }),
            // This node's own request (a join, a copied partition): a refusal that waiting
            // will not cure (an id taken, a live node to replace) must reach the operator.
            None => match outcome {
                Outcome::Failed {
                    status: Status::Unavailable | Status::Timeout,
                    message,
                } => log::debug!("the leader will decide later: {message}"),
                Outcome::Failed { status, message } => {
                    log::warn!("the leader refused this node's request: {status}: {message}")
                }
                _ => {}
            },
        }
    }

    /// The leader's decision on `req`: the new ring version and a line for humans, or a
    /// status and why not.
    fn decide(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        req: ChangeRequest,
    ) -> Result<(u64, String), (Status, String)> {
        let s = self.ring.state().clone();
        let version = s.version();
        let bad = |e: RingChangeError| {
            let status = match e {
                RingChangeError::Busy(_) => Status::Unavailable,
                _ => Status::BadRequest,
            };
            (status, e.to_string())
        };
        if !matches!(req, ChangeRequest::Copied { .. }) {
            if let Some(why) = self.may_not_decide().or_else(|| self.may_not_propose()) {
                return Err((Status::Unavailable, why));
            }
        }
        let next = match req {
            ChangeRequest::Join { node, addr } => {
                if matches!(
                    s.status(node),
                    Some(MemberStatus::Joining | MemberStatus::Up)
                ) && s.member(node).is_some_and(|m| m.addr == addr)
                {
                    return Ok((version, format!("node {node} is already a member")));
                }
                s.admit(node, &addr).map_err(bad)?
            }
            ChangeRequest::Replace { old, new, addr } => {
                // Asked again (a retry of an admitted replacement): nothing more to do.
                if (s.change() == Some(Change::Replace { old, new }) || s.status(new).is_some())
                    && s.member(new).is_some_and(|m| m.addr == addr)
                    && s.status(new) != Some(MemberStatus::Removed)
                {
                    return Ok((version, format!("node {new} is already replacing {old}")));
                }
                if self.is_alive(old) {
                    return Err((
                        Status::BadRequest,
                        format!("node {old} is alive: stop it before replacing it"),
                    ));
                }
                s.replace(old, new, &addr).map_err(bad)?
            }
            ChangeRequest::Leave { node } => s.leave(node).map_err(bad)?,
            ChangeRequest::Remove { node } => {
                if node == self.config.node_id || self.is_alive(node) {
                    return Err((
                        Status::BadRequest,
                        format!("node {node} is alive: REMOVE drops dead nodes, use LEAVE"),
                    ));
                }
                if s.incoming() == Some(node) {
                    // A joiner (or replacement) that died: its change ends here.
                    s.abort_incoming(node).map_err(bad)?
                } else {
                    s.remove(node).map_err(bad)?
                }
            }
            ChangeRequest::Pause => s.set_paused(true),
            ChangeRequest::Resume => s.set_paused(false),
            ChangeRequest::Copied {
                partition,
                node,
                since,
            } => {
                if since == s.since() && s.change().is_some() {
                    self.elastic.reports.insert((partition, node));
                }
                return Ok((version, format!("partition {partition} noted")));
            }
        };
        let moves = next.moving_partitions().len();
        let what = next
            .change()
            .map_or("no change".to_string(), |c| c.to_string());
        let v = next.version();
        // It takes effect once a majority accepted it (`ringvote.rs`).
        self.propose(now_ms, store, next);
        Ok((
            v,
            format!("ring version {v}: {what}, {moves} partitions to move"),
        ))
    }

    /// Ring chores on a tick: pulls, join requests, copied reports, and the leader's
    /// settling and flips. Followers only hand their copied partitions on.
    pub(super) fn ring_tick(&mut self, now_ms: u64, store: &mut dyn Store) {
        // A copy is reported (and then flipped, and the old owner forgets its copy) only once
        // it is durable here: a crash must not lose a partition's only copy (found by the
        // simulator: N = 1, the new owner crashed with the copy unsynced after the flip).
        let newly = self.aae.take_copied();
        self.elastic.unsynced.extend(newly);
        let sync_at = self
            .elastic
            .copied_synced_ms
            .saturating_add(COPIED_SYNC_INTERVAL_MS);
        let sync_due = due(now_ms, sync_at, COPIED_SYNC_INTERVAL_MS)
            || !self.aae.transfers().any(|t| t.running);
        if !self.elastic.unsynced.is_empty() && sync_due {
            self.elastic.copied_synced_ms = now_ms;
            match store.sync() {
                Ok(()) => {
                    for (p, since) in std::mem::take(&mut self.elastic.unsynced) {
                        self.elastic.copied.insert(p, since);
                    }
                }
                Err(e) => log::error!("copied partitions not synced, not reported yet: {e}"),
            }
        }
        self.elastic.last_tick_ms = now_ms;
        self.answer_waiting(now_ms);
        self.forget_step(store);
        // Hints kept for a node that left (also those added after the ring said so, by a
        // write that still had it in its replica set) go to the owners of their keys.
        self.retarget_hints(store);
        if self.is_follower() {
            return;
        }
        let me = self.config.node_id;
        // Changes passed on that got no answer.
        let late: Vec<u32> = self
            .elastic
            .asked
            .iter()
            .filter(|(_, (_, d))| due(now_ms, *d, RING_CHANGE_TIMEOUT_MS))
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some((Some(ctx), _)) = self.elastic.asked.remove(&id) {
                self.outputs.push_back(Output::Reply {
                    ctx,
                    outcome: Outcome::Failed {
                        status: Status::Timeout,
                        message: "the leader did not answer in time".into(),
                    },
                });
            }
        }
        // Pull: from the peer known to hold the newest version, else the leader, else any.
        let timeout = self.config.request_timeout_ms;
        if self
            .elastic
            .pull
            .is_some_and(|(_, d)| due(now_ms, d, timeout))
        {
            self.elastic.pull = None;
        }
        // A peer known to hold a newer version: by its pulls, or by its gossip entry (gossip
        // only triggers a pull here; what the leader settles with is what peers pulled with).
        let mine = self.ring.version();
        let gossiped = self
            .membership
            .members()
            .iter()
            .filter(|m| m.ring_version > mine && m.id != me && self.is_alive(m.id))
            .max_by_key(|m| m.ring_version)
            .map(|m| m.id);
        let newer = self
            .elastic
            .peer_versions
            .iter()
            .filter(|(&n, &v)| v > mine && n != me && self.is_alive(n))
            .max_by_key(|(_, &v)| v)
            .map(|(&n, _)| n)
            .or(gossiped);
        // Often enough to keep the ring lease (`lease.rs`) without a gap.
        let interval = RING_POLL_MS.min(self.ring_lease_ms() / 3).max(1);
        let poll = due(now_ms, self.elastic.next_pull_ms, interval);
        if self.elastic.pull.is_none() && (newer.is_some() || poll) {
            let leader = self.leader();
            let target = newer.or((leader != me).then_some(leader)).or_else(|| {
                self.ring
                    .state()
                    .members()
                    .iter()
                    .map(|m| m.id)
                    .find(|&n| n != me && self.is_alive(n))
            });
            self.elastic.next_pull_ms = now_ms.saturating_add(interval);
            if let Some(to) = target {
                let id = self.elastic.alloc_id();
                let mut f = Vec::new();
                ringpeer::put_pull(&mut f, id, me, mine);
                self.outputs.push_back(Output::Send { to, frame: f });
                self.elastic.pull =
                    Some((id, now_ms.saturating_add(self.config.request_timeout_ms)));
            }
        }
        // Join / replace: ask until the ring lists this node.
        if let Some(req) = self.elastic.join.clone() {
            if self.ring.state().member(me).is_some() {
                self.elastic.join = None;
            } else if due(
                now_ms,
                self.elastic.last_join_ms.saturating_add(RING_RETRY_MS),
                RING_RETRY_MS,
            ) {
                self.elastic.last_join_ms = now_ms;
                self.ask_leader(now_ms, req, None);
            }
        }
        // Copied partitions: report until flipped.
        let state = self.ring.state().clone();
        self.elastic
            .copied
            .retain(|&p, &mut since| since == state.since() && state.moving(p as usize));
        if !self.elastic.copied.is_empty()
            && due(
                now_ms,
                self.elastic.last_report_ms.saturating_add(RING_RETRY_MS),
                RING_RETRY_MS,
            )
        {
            self.elastic.last_report_ms = now_ms;
            let list: Vec<(u16, u64)> = self.elastic.copied.iter().map(|(&p, &s)| (p, s)).collect();
            for (partition, since) in list {
                let req = ChangeRequest::Copied {
                    partition,
                    node: me,
                    since,
                };
                if self.is_leader() {
                    let _ = self.decide(now_ms, store, req);
                } else {
                    self.ask_leader(now_ms, req, None);
                }
            }
        }
        if self.is_leader() && self.may_not_decide().is_none() {
            self.consensus_tick(now_ms, store);
            if self.may_not_propose().is_none() {
                self.leader_chores(now_ms, store);
            }
        } else {
            self.step_down();
        }
    }

    /// One bounded step of forgetting the records of partitions moved away. A pass that
    /// forgot something is followed by another, until one forgets nothing (the store may
    /// move keys around a pass); then the partitions are done.
    fn forget_step(&mut self, store: &mut dyn Store) {
        let Some(cursor) = self.elastic.forget_cursor else {
            return;
        };
        // While a change runs, partitions keep moving away: one pass over the store after it
        // costs far less than one per flip (the copies are only held a little longer).
        if self.ring.state().change().is_some() {
            return;
        }
        let doomed = &self.elastic.doomed;
        match store.forget_step(
            &mut |k| doomed[partition_of(k)],
            cursor,
            FORGET_KEYS_PER_TICK,
        ) {
            Ok((n, next)) => {
                self.elastic.forgotten += n;
                self.elastic.pass_forgot += n;
                match next {
                    Some(c) => self.elastic.forget_cursor = Some(c),
                    None if self.elastic.pass_forgot > 0 || self.elastic.forget_again => {
                        self.elastic.forget_again = false;
                        log::info!(
                            "ring version {}: {} keys of partitions moved away forgotten",
                            self.ring.version(),
                            self.elastic.pass_forgot
                        );
                        self.elastic.forget_cursor = Some(0);
                        self.elastic.pass_forgot = 0;
                    }
                    None => {
                        self.elastic.forget_cursor = None;
                        self.elastic.doomed.fill(false);
                    }
                }
            }
            Err(e) => {
                log::error!("partitions moved away but not forgotten: {e}");
                self.elastic.forget_cursor = None;
            }
        }
    }

    /// When the ring chores want a tick at the latest (a forget pass runs in steps).
    pub(super) fn ring_timeout_ms(&self) -> u64 {
        if self.elastic.forget_cursor.is_some() && self.ring.state().change().is_none() {
            self.elastic.last_tick_ms.saturating_add(FORGET_STEP_MS)
        } else {
            u64::MAX
        }
    }

    /// Why this node, leading by its own view, must not make a new ring version: it does not
    /// see a majority of the members (up, joining or leaving) alive (or see below). Without it, the lowest
    /// live node on each side of a network partition leads its side, and both would make
    /// ring versions from the same one: equal versions with different flips, which no node
    /// ever trades for the other (one is adopted only when higher), and a change that never
    /// ends. (A majority does not make one leader under every partition — one-way links may
    /// still show two — but it closes the common split.)
    ///
    /// Nor may it decide, when it restarted from a kept ring state, before it has pulled the
    /// ring from a peer since, nor while a live peer is known to hold a newer version: a
    /// restarted leader would make its next version from the one it kept, beside the newer
    /// one the others hold.
    fn may_not_decide(&self) -> Option<String> {
        let me = self.config.node_id;
        let mine = self.ring.version();
        // (A node on its configured first ring kept nothing that could be stale.)
        let kept = mine > crate::cluster::ownership::INITIAL_VERSION;
        if kept && !self.ring_confirmed() {
            return Some(format!(
                "node {me} has not heard the ring from a peer since it started"
            ));
        }
        if let Some((&n, &v)) = self
            .elastic
            .peer_versions
            .iter()
            .find(|(&n, &v)| v > mine && n != me && self.is_alive(n))
        {
            return Some(format!(
                "node {n} holds ring version {v}, newer than this node's {mine}: pulling it"
            ));
        }
        let (majority, alive, members) = self.sees_majority();
        (!majority).then(|| {
            format!(
                "node {me} sees {alive} of the {members} members alive: ring changes need a \
                 majority"
            )
        })
    }

    /// Whether every live member of `s` (this node aside) was seen, by its pulls, holding
    /// ring version `version` or a later one.
    fn live_members_hold(&self, s: &RingState, version: u64) -> bool {
        let me = self.config.node_id;
        s.members()
            .iter()
            .filter(|m| m.status != MemberStatus::Removed && m.id != me)
            .filter(|m| self.is_alive(m.id))
            .all(|m| {
                self.elastic
                    .peer_versions
                    .get(&m.id)
                    .is_some_and(|&v| v >= version)
            })
    }

    /// Send `req` to the leader; its answer goes to `ctx` (if any) as an output.
    fn ask_leader(&mut self, now_ms: u64, req: ChangeRequest, ctx: Option<C>) {
        let leader = self.leader();
        if leader == self.config.node_id {
            return;
        }
        let id = self.elastic.alloc_id();
        let mut f = Vec::new();
        ringpeer::put_change(&mut f, id, &req);
        self.outputs.push_back(Output::Send {
            to: leader,
            frame: f,
        });
        self.elastic
            .asked
            .insert(id, (ctx, now_ms.saturating_add(RING_CHANGE_TIMEOUT_MS)));
    }

    /// The leader settles a change once every live member holds its version, flips every
    /// partition all of whose pending owners copied it, and ends the change once every live
    /// member holds the last flip.
    fn leader_chores(&mut self, now_ms: u64, store: &mut dyn Store) {
        let s = self.ring.state().clone();
        if s.change().is_none() || self.may_not_decide().is_some() {
            return;
        }
        if !s.settled() {
            if self.live_members_hold(&s, s.since()) {
                if let Some(next) = s.settle() {
                    log::info!(
                        "ring version {}: the {} is settled, partitions start moving",
                        next.version(),
                        next.change().expect("settled a change")
                    );
                    self.propose(now_ms, store, next);
                }
            }
            return;
        }
        if s.all_flipped() {
            // The change ends once every live member holds the last flip (RingState::end).
            let known = self.live_members_hold(&s, s.version());
            if let Some(next) = s.end().filter(|_| known) {
                log::info!(
                    "ring version {}: the {} is done",
                    next.version(),
                    s.change().expect("checked")
                );
                self.propose(now_ms, store, next);
            }
            return;
        }
        let mut next = (*s).clone();
        let mut flipped = 0;
        for p in s.moving_partitions() {
            let copied = self.config.mutations.flip_before_copy
                // test-only mutation: flip without the pending owners' copied reports.
                || s.pending(p)
                    .all(|n| self.elastic.reports.contains(&(p as u16, n)));
            if copied {
                match next.complete(p) {
                    Ok(n) => {
                        next = n;
                        flipped += 1;
                    }
                    Err(e) => log::error!("partition {p} not flipped: {e}"),
                }
            }
        }
        if flipped > 0 {
            self.elastic.flips += flipped;
            self.propose(now_ms, store, next);
        }
    }

    /// An operator's command (on the membership core): decided here on the leader, passed
    /// on to it otherwise; the answer comes out as an [`Output::Reply`].
    pub fn admin(&mut self, now_ms: u64, store: &mut dyn Store, ctx: C, cmd: AdminCommand) {
        let outcome = match cmd {
            AdminCommand::Plan => Outcome::Text(self.plan_text()),
            AdminCommand::Change(req) => {
                if self.is_leader() {
                    match self.decide(now_ms, store, req) {
                        Ok((v, msg)) if v > self.ring.version() => {
                            self.reply_when_held(now_ms, ctx, v, msg);
                            return;
                        }
                        Ok((_, msg)) => Outcome::Text(msg),
                        Err((status, message)) => Outcome::Failed { status, message },
                    }
                } else if !self.is_alive(self.leader()) {
                    Outcome::Failed {
                        status: Status::Unavailable,
                        message: "no leader is reachable".into(),
                    }
                } else {
                    self.ask_leader(now_ms, req, Some(ctx));
                    return;
                }
            }
        };
        self.outputs.push_back(Output::Reply { ctx, outcome });
    }

    /// Copied partitions of a follower, for the membership shard (empty elsewhere).
    pub fn take_copied(&mut self) -> Vec<(u16, u64)> {
        if !self.is_follower() {
            return Vec::new();
        }
        // Only those synced (see `ring_tick`).
        std::mem::take(&mut self.elastic.copied)
            .into_iter()
            .collect()
    }

    /// Copied partitions of the node's other shards (on the membership core).
    pub fn on_copied(&mut self, list: &[(u16, u64)]) {
        for &(p, since) in list {
            self.elastic.copied.insert(p, since);
        }
    }
}
