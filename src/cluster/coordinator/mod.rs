//! The replication coordinator of one shard: client reads and writes become quorum operations
//! over a key's preference list, with timeouts, read repair and hints.
//!
//! It is generic over `C`, the caller's reply context (a connection token and request id, a
//! simulator's client id): the coordinator carries it and hands it back in
//! [`Action::Reply`], never looks inside.
//!
//! Call order (quinn-proto style): feed an input (`start_write`, `start_read`,
//! `on_write_ack`, `on_read_reply`, `on_tick`), then drain [`Coordinator::poll_action`] until it
//! returns `None`, acting on each action:
//!
//! ```text
//! Send { to, frame }        send the peer frame to node `to` (drop it if there is no link)
//! ApplyLocal { id }         this node is a replica: apply local_write(id) to the Store, then
//!                           call on_write_ack(now, self id, id, ack) (after the sync, if the
//!                           sync policy promises durability on ack)
//! ReadLocal { id }          read local_read_key(id) from the Store, then call
//!                           on_read_reply(now, self id, id, record)
//! Reply { ctx, outcome }    answer the client
//! Repair { to, write, ring } read repair: apply locally if `to` is this node, else send
//!                           peer::put_replicate(id 0, AUX_REPAIR, ring) (fire and forget)
//! Hint { target, write }    keep the write for `target` in the hint queue
//! ```
//!
//! * **Writes.** The coordinator issues the version from its [`Hlc`] and sends the write to
//!   every alive replica at once; it answers after `required` replicas stored it. A *stale*
//!   ack ("I hold a newer version V") does not count: if the remaining replicas can no longer
//!   make up `required`, the coordinator issues the write again with a version above every V
//!   reported ([`Hlc::issue_above`]), under a new operation id, to all replicas, at most
//!   [`crate::limits::WRITE_REISSUES_MAX`] times. So a write acknowledged before this one
//!   began, whose quorum intersects this one's, never stays the winner over it, whatever the
//!   clocks say (issue 10); and a delete is never undone by an older write. Writers racing on
//!   one key can keep reporting newer versions to each other: on the last attempt, if the
//!   attempts' answers cover a read quorum (N - N/2 replicas), the version is above every
//!   QUORUM write acknowledged before this one began, so a newer version reported then is a
//!   concurrent write's and counts as an acknowledgement instead of a MAYBE_APPLIED
//!   (`Op::covered`). (Before the last attempt every newer version is beaten, which keeps a
//!   ONE write acknowledged earlier from winning too, in all but such races.) If fewer replicas
//!   are alive than required, it answers UNAVAILABLE at once and writes nothing. When the
//!   required count cannot be met after some replica may have applied the write (it stored
//!   an attempt, or had not answered yet), it answers MAYBE_APPLIED, not UNAVAILABLE. A
//!   replica that is down, or does not answer by the deadline, gets a hint when hinted handoff
//!   is on (hints do not count towards `required`). The operation is tracked until every
//!   replica answered or the deadline passed, so late acks do not create hints.
//! * **Reads.** The coordinator asks only as many alive replicas as the level needs, itself
//!   first when it is one (its copy costs no frame), then the peers nearest after it in id
//!   order (so one client batch's reads go to one peer and come back together), and keeps the
//!   other alive replicas as *spares*. A spare is asked when an asked replica refuses, and
//!   when the answers are still short [`READ_SPARE_AFTER_MS`] after the start (a replica that
//!   died unnoticed costs a delay, not a TIMEOUT). One read in
//!   [`CoordinatorConfig::read_repair_every`] asks every alive replica instead, so stale
//!   replicas are still found and repaired, at a bounded share of the reads (anti-entropy
//!   finds the rest). It answers with the newest record (LWW on the u64 version) once
//!   `required` replied, keeps collecting late replies until every asked
//!   replica answered or the deadline passed, then repairs every replica that answered with an
//!   older record or none. Tombstones and expired records are records: they win by version and
//!   are repaired like values, so a delete is never undone by a stale replica. A QUORUM read
//!   still meets every QUORUM write: it hears `required` replicas, wherever they are.
//!   When the coordinator is a replica itself (LWW mode), its own copy is the data and the
//!   peers are asked for **versions only**, from their key index (no record read, no value on
//!   the wire). A peer that turns out newer than every record in hand is then asked for its
//!   whole record before the answer (one more round trip, only where a copy is stale), and so
//!   is one that refused version-only READs (a node from before them: it is asked for whole
//!   records for [`crate::limits::VERSION_ONLY_RETRY_MS`]).
//! * **Ring versions.** Every REPLICATE and READ carries the ring version the node held when
//!   the operation chose its replicas ([`Coordinator::set_ring_version`]); a replica whose
//!   ring changed the key's partition after it refuses ("stale ring"), which the node passes
//!   in as an error reply: it never counts as an acknowledgement (protocol.md § 18.2).
//! * **Bounds.** At most `ops_max` operations in flight (see
//!   [`crate::limits::COORDINATOR_OPS_MAX`]); past it new requests are answered OVERLOADED.
//!
//! ```text
//! coordinator/
//!   mod.rs      the operations, writes and their acknowledgements, timeouts, hints
//!   types.rs    OwnedWrite, Outcome, Action, the settings and counters
//!   read.rs     reads: which replicas, spares, the answer, read repair
//!   causal.rs   siblings mode: reads merge causal states; writes handed to a replica
//!   optable.rs  the operation table and its deadline queue
//! ```

use super::peer::{self, HINT_ID_BIT};
use crate::pool::{self, Pool};
use crate::protocol::Status;
use crate::storage::{Applied, Stored, Write};
use crate::version::{Hlc, Version};
use optable::{Deadlines, OpTable};
use std::collections::VecDeque;
pub use types::{Action, CoordinatorConfig, CoordinatorStats, Outcome, OwnedWrite};

use super::peer::WriteAck;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    /// Not alive when the operation started.
    Down,
    /// Asked, no answer yet.
    Waiting,
    /// Acknowledged a write: stored it (or already held this very version).
    Acked,
    /// Held a newer version than the write, this one.
    Newer(Version),
    /// Answered a read with this record.
    Replied(Option<Stored>),
    /// Answered a version-only read: holds a value or a tombstone at this version (its
    /// record was not asked for).
    Versioned(Version),
    /// Asked again for its whole record: it answered a version-only read with the newest
    /// version, or refused version-only reads.
    Fetching,
    /// Answered with an error.
    Failed(String),
    /// Alive, not asked (yet): a read asks it if the asked replicas fall short.
    Spare,
}

enum Kind {
    Write(OwnedWrite),
    Read {
        key: Vec<u8>,
        /// The peers are asked for versions only: this node reads its own copy.
        version_only: bool,
    },
    /// Siblings mode: a write handed to a replica (COORDINATE), which answers its outcome.
    Forward,
}

struct Op<C> {
    /// `None` once the client has been answered.
    ctx: Option<C>,
    kind: Kind,
    replicas: Vec<(u32, Slot)>,
    required: usize,
    deadline_ms: u64,
    /// Times the write was issued again above a newer version.
    reissues: u32,
    /// Some replica stored some attempt of the write.
    applied: bool,
    /// The ring version the replicas were chosen with (every frame of the operation says so).
    ring: u64,
    /// Replicas whose answer to an earlier attempt (stored, or "I hold V") the current
    /// attempt's version is above. Once they are a read quorum of the preference list, every
    /// QUORUM write acknowledged before this one began is below the current version (its
    /// acknowledging quorum meets them), so a replica that still reports a newer version holds
    /// a concurrent write: on the last attempt that counts as an acknowledgement, so racing
    /// writers to one key end acknowledged rather than MAYBE_APPLIED.
    covered: Vec<u32>,
}

impl<C> Op<C> {
    /// Whether the replicas in `covered` meet every QUORUM of the preference list: N / 2 + 1
    /// acknowledgers and N - N / 2 covered replicas always share one.
    fn covers_a_read_quorum(&self) -> bool {
        let n = self.replicas.len();
        self.covered.len() >= n - n / 2
    }
    fn count(&self, f: impl Fn(&Slot) -> bool) -> usize {
        self.replicas.iter().filter(|(_, s)| f(s)).count()
    }
    fn answered(&self) -> usize {
        self.count(|s| matches!(s, Slot::Acked | Slot::Replied(_) | Slot::Versioned(_)))
    }
    fn waiting(&self) -> usize {
        self.count(|s| matches!(s, Slot::Waiting | Slot::Fetching))
    }
    /// The newest record among read replies.
    fn newest(&self) -> Option<&Stored> {
        self.replicas
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Replied(Some(r)) => Some(r),
                _ => None,
            })
            .max_by_key(|r| r.version)
    }
}

/// Let `hlc` observe a version from elsewhere, unless it is more than `ahead_ms_max` ahead of
/// the local wall clock (`--max-clock-offset-ms`): one peer with a wild clock (or a corrupt
/// frame) must not drag every clock into the future, nor push it past the version's range.
pub fn observe(hlc: &mut Hlc, now_ms: u64, seen: Version, ahead_ms_max: u64) {
    if seen.physical_ms() <= now_ms.saturating_add(ahead_ms_max) {
        hlc.observe(seen);
    }
}

fn shortfall(answered: usize, n: usize, required: usize) -> String {
    format!("only {answered} of {n} replicas answered, {required} required")
}

/// One shard's replication coordinator.
pub struct Coordinator<C> {
    config: CoordinatorConfig,
    hlc: Hlc,
    ops: OpTable<Op<C>>,
    timers: Deadlines,
    /// `(when, id)` of reads that kept spares, in start order (the delay is one constant):
    /// at `when`, a read still short of answers asks its spares.
    spare_timers: VecDeque<(u64, u32)>,
    /// Causal writes aborted by a failed turn write, whose frames the shard drops.
    aborted: Vec<u32>,
    next_id: u32,
    actions: VecDeque<Action<C>>,
    stats: CoordinatorStats,
    /// Test-only mutations (all off outside the simulator).
    mutations: super::config::Mutations,
    /// This node's clock minus the cluster's, as last measured: reads judge whether a value
    /// with a time to live has expired by the cluster's clock, so a node running 10 minutes
    /// ahead does not report a value with 5 minutes left as gone.
    clock_offset_ms: i64,
    /// The ring version the node holds: new operations choose their replicas with it.
    ring_version: u64,
    /// Recycled replica slot lists (`crate::pool`; keys, values and frames come from the
    /// thread's byte pool).
    slot_lists: Pool<(u32, Slot)>,
    /// `(node, until ms)`: replicas that refused a version-only READ, asked for whole
    /// records until then (at most
    /// [`crate::limits::VERSION_ONLY_REFUSALS_MAX`]).
    version_only_refused: VecDeque<(u32, u64)>,
}

impl<C> Coordinator<C> {
    /// A coordinator issuing versions with node id `config.node_id`.
    pub fn new(config: CoordinatorConfig) -> Coordinator<C> {
        assert!(config.ops_max >= 1);
        Coordinator {
            hlc: Hlc::new(config.node_id),
            config,
            ops: OpTable::default(),
            timers: Deadlines::default(),
            spare_timers: VecDeque::new(),
            aborted: Vec::new(),
            next_id: 1,
            actions: VecDeque::new(),
            stats: CoordinatorStats::default(),
            mutations: super::config::Mutations::default(),
            clock_offset_ms: 0,
            ring_version: 0,
            slot_lists: Pool::default(),
            version_only_refused: VecDeque::new(),
        }
    }

    /// Note the ring version the node holds now (it adopted a ring state): the replica sets
    /// of operations started from now on come from it, and their frames carry it.
    pub fn set_ring_version(&mut self, version: u64) {
        self.ring_version = version;
    }

    /// Note this node's measured offset from the cluster's clock (see `clock_offset_ms`).
    pub fn set_clock_offset(&mut self, offset_ms: i64) {
        self.clock_offset_ms = offset_ms;
    }

    /// Switch on test-only mutations (the simulator's `--mutation`; never in `kvd`).
    pub fn set_mutations(&mut self, mutations: super::config::Mutations) {
        self.mutations = mutations;
    }

    /// The clock (to recover it above the store's highest version at start).
    pub fn hlc_mut(&mut self) -> &mut Hlc {
        &mut self.hlc
    }

    /// Counters for STATS.
    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// The next deadline, for the driver's timer.
    pub fn next_timeout_ms(&self) -> Option<u64> {
        let deadline = self.timers.first();
        let spare = self.spare_timers.front().map(|&(t, _)| t);
        match (deadline, spare) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The write an `ApplyLocal { id }` applies (`None` if the operation is gone, which the
    /// order of actions rules out: an operation waits for its local copy).
    pub fn local_write(&self, id: u32) -> Option<Write<'_>> {
        match &self.ops.get(&id)?.kind {
            Kind::Write(w) => Some(w.as_write()),
            Kind::Read { .. } | Kind::Forward => None,
        }
    }

    /// The key a `ReadLocal { id }` reads (`None` as for [`Coordinator::local_write`]).
    pub fn local_read_key(&self, id: u32) -> Option<&[u8]> {
        match &self.ops.get(&id)?.kind {
            Kind::Read { key, .. } => Some(key),
            Kind::Write(_) | Kind::Forward => None,
        }
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<Action<C>> {
        let a = self.actions.pop_front();
        if self.actions.is_empty() {
            // Back to the start of the ring: the next request's actions land in the lines
            // this one just used, not in the next cold ones of a ring grown by a burst.
            self.actions.clear();
        }
        a
    }

    /// Note that operation `id` (already in `ops`) ends at `deadline_ms`.
    fn push_deadline(&mut self, deadline_ms: u64, id: u32) {
        let ops = &self.ops;
        self.timers.push(deadline_ms, id, ops.len(), |d, id| {
            ops.get(&id).is_some_and(|op| op.deadline_ms == d)
        });
    }

    fn alloc_id(&mut self) -> u32 {
        // Ids live in 1..HINT_ID_BIT (0 is fire-and-forget, the high bit is for hints). An id
        // whose index slot is taken is skipped (`optable`): the index is at most half full, so
        // the search ends quickly.
        loop {
            let id = self.next_id;
            self.next_id = if id >= HINT_ID_BIT - 1 { 1 } else { id + 1 };
            if self.ops.is_vacant(id) {
                return id;
            }
        }
    }

    fn fail(&mut self, ctx: C, status: Status, message: String) {
        match status {
            Status::MaybeApplied => self.stats.maybe_applied += 1,
            Status::Unavailable => self.stats.unavailable += 1,
            Status::Timeout => self.stats.timeouts += 1,
            Status::Overloaded => self.stats.overloaded += 1,
            _ => {}
        }
        self.actions.push_back(Action::Reply {
            ctx,
            outcome: Outcome::Failed { status, message },
        });
    }

    /// Refuse when full, or when fewer than `required` of `replicas` are alive. Returns the
    /// context back when the operation may go ahead.
    fn admit(
        &mut self,
        ctx: C,
        replicas: &[u32],
        alive: &dyn Fn(u32) -> bool,
        required: usize,
    ) -> Option<C> {
        if let Some((status, msg)) = self.refusal(replicas, alive, required) {
            self.fail(ctx, status, msg);
            return None;
        }
        Some(ctx)
    }

    /// Why an operation on `replicas` needing `required` of them would be refused at once
    /// (OVERLOADED, UNAVAILABLE: nothing done), if it would. A siblings-mode write asks before
    /// it applies its own copy (`node/causal.rs`), since those statuses promise that nothing
    /// was written.
    pub fn refusal(
        &self,
        replicas: &[u32],
        alive: &dyn Fn(u32) -> bool,
        required: usize,
    ) -> Option<(Status, String)> {
        assert!(!replicas.is_empty() && required >= 1 && required <= replicas.len());
        if self.ops.len() >= self.config.ops_max {
            let msg = format!(
                "{} replicated operations in flight on this shard, the maximum",
                self.ops.len()
            );
            return Some((Status::Overloaded, msg));
        }
        let up = replicas
            .iter()
            .filter(|&&r| r == self.config.node_id || alive(r))
            .count();
        if up < required {
            let msg = format!(
                "only {up} of {} replicas are alive, {required} required",
                replicas.len()
            );
            return Some((Status::Unavailable, msg));
        }
        None
    }

    /// Start a write of `value` (`None`: a delete) to `key`, replicated on `replicas` (the
    /// preference list), answered after `required` acks. `alive` says which nodes the
    /// membership view holds alive (this node always is). Returns the version issued, or
    /// `None` if the write was refused at once (the reply is already queued).
    #[allow(clippy::too_many_arguments)]
    pub fn start_write(
        &mut self,
        now_ms: u64,
        ctx: C,
        key: &[u8],
        value: Option<&[u8]>,
        expires_at_ms: u64,
        replicas: &[u32],
        alive: &dyn Fn(u32) -> bool,
        required: usize,
    ) -> Option<Version> {
        let ctx = self.admit(ctx, replicas, alive, required)?;
        let mut write = OwnedWrite {
            key: pool::copy_bytes(key),
            value: value.map(pool::copy_bytes),
            version: self.hlc.issue(now_ms),
            expires_at_ms,
            causal: false,
        };
        if value.is_none() && self.mutations.no_tombstone_version {
            // test-only mutation: back-date the tombstone by a second, so it loses to the
            // values written just before it (the delete is silently undone).
            let v = write.version;
            write.version = Version::new(
                v.physical_ms().saturating_sub(1_000),
                v.logical(),
                v.node_id(),
            );
        }
        let version = write.version;
        self.start_owned_write(now_ms, ctx, write, replicas, alive, required);
        Some(version)
    }

    /// Siblings mode: start the write of `state`, the key's new causal state as this replica
    /// made it ([`crate::causal::CausalState::update`]) under `version` (from
    /// [`Coordinator::hlc_mut`]) and already written out to its own store (this node's copy
    /// counts as acknowledged at once: no `ApplyLocal`). Replicas merge it; `required` of them
    /// must hold it. Returns the operation's id.
    #[allow(clippy::too_many_arguments)]
    pub fn start_causal_write(
        &mut self,
        now_ms: u64,
        ctx: C,
        key: &[u8],
        state: Vec<u8>,
        expires_at_ms: u64,
        version: Version,
        replicas: &[u32],
        alive: &dyn Fn(u32) -> bool,
        required: usize,
    ) -> Option<u32> {
        let ctx = self.admit(ctx, replicas, alive, required)?;
        let write = OwnedWrite {
            key: pool::copy_bytes(key),
            value: Some(state),
            version,
            expires_at_ms,
            causal: true,
        };
        Some(self.start_owned_write(now_ms, ctx, write, replicas, alive, required))
    }

    /// Send `write` to `replicas` (admitted) and track it; returns its id. A causal write's
    /// own copy was applied before it started (`node/causal.rs`): acknowledged at once.
    fn start_owned_write(
        &mut self,
        now_ms: u64,
        ctx: C,
        write: OwnedWrite,
        replicas: &[u32],
        alive: &dyn Fn(u32) -> bool,
        required: usize,
    ) -> u32 {
        self.stats.writes += 1;
        let id = self.alloc_id();
        let mut frame = pool::take_bytes();
        peer::put_replicate(&mut frame, id, 0, self.ring_version, &write.as_write());
        let local = (!write.causal).then_some(Action::ApplyLocal { id });
        let pre_acked = write.causal && replicas.contains(&self.config.node_id);
        let slots = self.fan_out(replicas, alive, local, frame, usize::MAX);
        // (A causal write's hints are made when it ends: until the turn's write, it may still be
        // aborted, see `abort_causal`.)
        if self.config.hinted_handoff && !write.causal {
            for &(r, _) in slots.iter().filter(|(_, s)| matches!(s, Slot::Down)) {
                self.stats.hints += 1;
                self.actions.push_back(Action::Hint {
                    target: r,
                    write: write.clone(),
                });
            }
        }
        let deadline_ms = now_ms + self.config.request_timeout_ms;
        self.ops.insert(
            id,
            Op {
                ctx: Some(ctx),
                kind: Kind::Write(write),
                replicas: slots,
                required,
                deadline_ms,
                reissues: 0,
                applied: pre_acked,
                ring: self.ring_version,
                covered: Vec::new(),
            },
        );
        self.push_deadline(deadline_ms, id);
        if pre_acked {
            // It may be answered already (ONE, or a cluster of one).
            self.progress_at(now_ms, id);
        }
        id
    }

    /// Ask `ask` replicas at once (at most; `usize::MAX`: all): this node through `local`
    /// when it is one (always asked, and first: its copy costs no frame; `None`: its copy is
    /// done, acknowledged already), then alive peers with `frame`, those [`read_peers`]
    /// picks when not all are asked. Alive peers not asked are spares; the others are noted
    /// down. The slots of the new operation, in preference order.
    fn fan_out(
        &mut self,
        replicas: &[u32],
        alive: &dyn Fn(u32) -> bool,
        local: Option<Action<C>>,
        frame: Vec<u8>,
        ask: usize,
    ) -> Vec<(u32, Slot)> {
        let me = self.config.node_id;
        let mut asked = usize::from(replicas.contains(&me));
        // Each replica's liveness, asked once (bit i: replicas[i]; past 64, asked in place).
        let up = replicas
            .iter()
            .take(64)
            .enumerate()
            .fold(0u64, |m, (i, &r)| if alive(r) { m | 1 << i } else { m });
        let is_up = |i: usize, r: u32| if i < 64 { up >> i & 1 == 1 } else { alive(r) };
        let chosen = if ask < replicas.len() {
            read_peers(me, replicas, up, ask.saturating_sub(asked))
        } else {
            u64::MAX
        };
        let mut local = local;
        let mut slots = self.slot_lists.take();
        slots.reserve(replicas.len());
        for (i, &r) in replicas.iter().enumerate() {
            if r == me {
                match local.take() {
                    Some(a) => {
                        self.actions.push_back(a);
                        slots.push((r, Slot::Waiting));
                    }
                    None => slots.push((r, Slot::Acked)),
                }
            } else if !is_up(i, r) {
                slots.push((r, Slot::Down));
            } else if asked < ask && (i >= 64 || chosen >> i & 1 == 1) {
                asked += 1;
                slots.push((r, Slot::Waiting));
            } else {
                slots.push((r, Slot::Spare));
            }
        }
        // The frames, after the local action (which the node performs first either way):
        // the last peer takes the encoded frame itself, the others a copy.
        let is_peer = |&(r, ref s): &(u32, Slot)| r != me && matches!(s, Slot::Waiting);
        let mut left = slots.iter().filter(|x| is_peer(x)).count();
        let mut frame = Some(frame);
        for &(to, _) in slots.iter().filter(|x| is_peer(x)) {
            left -= 1;
            let frame = if left == 0 {
                frame.take().expect("taken once, by the last")
            } else {
                pool::copy_bytes(frame.as_ref().expect("not taken yet"))
            };
            self.actions.push_back(Action::Send { to, frame });
        }
        slots
    }

    /// The slot of `from` in operation `id`, if it is still waiting for it.
    fn waiting_slot(&mut self, from: u32, id: u32) -> Option<&mut Slot> {
        let op = self.ops.get_mut(&id)?;
        let slot = op
            .replicas
            .iter_mut()
            .find(|(r, _)| *r == from)
            .map(|(_, s)| s)?;
        matches!(slot, Slot::Waiting | Slot::Fetching).then_some(slot)
    }

    /// This node's own copy of write `id`, acknowledged by `ApplyLocal` earlier in the turn,
    /// was undone: the turn's one write of the store failed. The acknowledgement becomes a
    /// failure (the write may still reach `required` with the others); an operation already
    /// answered or issued again is left alone (its reply was held and became an error, or the
    /// new attempt applies its own copy).
    ///
    /// A siblings-mode write is aborted instead (see [`Coordinator::take_aborted`]): its state
    /// was made from this copy, which is gone, so it must reach no replica at all.
    pub fn revoke_local_ack(&mut self, now_ms: u64, me: u32, id: u32, why: &str) {
        if self.abort_causal(id, why) {
            return;
        }
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let Some(slot) = op
            .replicas
            .iter_mut()
            .find(|(r, _)| *r == me)
            .map(|(_, s)| s)
        else {
            return;
        };
        if !matches!(slot, Slot::Acked) {
            return;
        }
        *slot = Slot::Failed(format!("node {me}: {why}"));
        self.progress_at(now_ms, id);
    }

    /// Node `from` answered the REPLICATE of operation `id` (for this node: the result of
    /// `ApplyLocal`).
    pub fn on_write_ack(&mut self, now_ms: u64, from: u32, id: u32, ack: WriteAck) {
        let (sent, causal) = match self.ops.get(&id).map(|op| &op.kind) {
            Some(Kind::Write(w)) => (w.version, w.causal),
            _ => (Version::ZERO, false),
        };
        // On the last attempt, a newer version reported once the attempts cover a read quorum
        // is a concurrent write's (see `Op::covered`): it counts as an acknowledgement.
        let covered = self.ops.get(&id).is_some_and(|op| {
            op.reissues >= crate::limits::WRITE_REISSUES_MAX && op.covers_a_read_quorum()
        });
        let Some(slot) = self.waiting_slot(from, id) else {
            self.stats.late_replies += 1;
            return;
        };
        let mut stored = false;
        let mut superseded = false;
        let mut seen = None;
        match ack {
            WriteAck::Done(Applied::Stored) => {
                *slot = Slot::Acked;
                stored = true;
            }
            // The replica already holds this very write (a duplicate delivery), or, in
            // siblings mode, a state containing it (the merge changed nothing).
            WriteAck::Done(Applied::Stale { current }) if current == sent || causal => {
                *slot = Slot::Acked;
                stored = true;
            }
            // A concurrent write superseded this one at `from` (see `Op::covered`).
            WriteAck::Done(Applied::Stale { current }) if covered => {
                *slot = Slot::Acked;
                superseded = true;
                seen = Some(current);
            }
            WriteAck::Done(Applied::Stale { current }) => {
                *slot = Slot::Newer(current);
                seen = Some(current);
            }
            WriteAck::Refused(why) => *slot = Slot::Failed(format!("node {from}: {why}")),
        }
        if superseded {
            self.stats.superseded += 1;
        }
        if stored {
            self.ops.get_mut(&id).expect("the slot was found").applied = true;
        }
        if let Some(v) = seen {
            observe(&mut self.hlc, now_ms, v, self.config.observe_ahead_ms_max);
        }
        self.progress_at(now_ms, id);
    }

    /// Issue write `id` again above the newest version its replicas reported holding: a new
    /// version, a new operation id (late acks of the old attempt are ignored), the same
    /// deadline, every replica asked again (hints for those down).
    fn reissue(&mut self, now_ms: u64, id: u32) {
        // Its deadline's entry under `id` is left to lapse (see optable.rs).
        let mut op = self.ops.remove(&id).expect("caller checked the op exists");
        let held = op
            .replicas
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Newer(v) => Some(*v),
                _ => None,
            })
            .max()
            .expect("a re-issue follows a newer version");
        for (r, slot) in &op.replicas {
            if matches!(slot, Slot::Acked | Slot::Newer(_)) && !op.covered.contains(r) {
                op.covered.push(*r);
            }
        }
        let Kind::Write(w) = &mut op.kind else {
            panic!("only writes are issued again")
        };
        w.version = self.hlc.issue_above(now_ms, held);
        let write = w.clone();
        op.reissues += 1;
        self.stats.reissues += 1;
        let new_id = self.alloc_id();
        let mut frame = Vec::new();
        peer::put_replicate(&mut frame, new_id, 0, op.ring, &write.as_write());
        for (r, slot) in op.replicas.iter_mut() {
            if matches!(slot, Slot::Down) {
                if self.config.hinted_handoff {
                    self.stats.hints += 1;
                    self.actions.push_back(Action::Hint {
                        target: *r,
                        write: write.clone(),
                    });
                }
                continue;
            }
            *slot = Slot::Waiting;
            if *r == self.config.node_id {
                self.actions.push_back(Action::ApplyLocal { id: new_id });
            } else {
                self.actions.push_back(Action::Send {
                    to: *r,
                    frame: frame.clone(),
                });
            }
        }
        let deadline_ms = op.deadline_ms;
        self.ops.insert(new_id, op);
        self.push_deadline(deadline_ms, new_id);
    }

    /// After a reply: answer the client if possible, issue a write again when replicas hold
    /// newer versions and the required count can no longer be met, finish the operation when
    /// nobody is left to wait for.
    fn progress_at(&mut self, now_ms: u64, id: u32) {
        let op = self.ops.get_mut(&id).expect("caller checked the op exists");
        if op.ctx.is_some()
            && op.answered() + op.waiting() < op.required
            && op.reissues < crate::limits::WRITE_REISSUES_MAX
            && op.replicas.iter().any(|(_, s)| matches!(s, Slot::Newer(_)))
        {
            self.reissue(now_ms, id);
            return;
        }
        let op = self.ops.get_mut(&id).expect("caller checked the op exists");
        let n = op.replicas.len();
        let (answered, waiting) = (op.answered(), op.waiting());
        if op.ctx.is_some() {
            if let Kind::Write(w) = &op.kind {
                if answered >= op.required {
                    let (version, reissues) = (w.version, op.reissues);
                    let ctx = op.ctx.take().expect("checked above");
                    self.actions.push_back(Action::Reply {
                        ctx,
                        outcome: Outcome::Written { version, reissues },
                    });
                }
            }
        }
        let op = self.ops.get_mut(&id).expect("still there");
        if op.ctx.is_some() && answered + waiting < op.required {
            // Too many refusals: the required count can no longer be met.
            let errors: Vec<String> = op
                .replicas
                .iter()
                .filter_map(|(r, s)| match s {
                    Slot::Failed(why) => Some(why.clone()),
                    Slot::Newer(v) => Some(format!("node {r}: holds newer version {v}")),
                    _ => None,
                })
                .collect();
            let msg = format!(
                "{} ({})",
                shortfall(answered, n, op.required),
                errors.join("; ")
            );
            // A write that some replica stored (or may still store: it has not answered) may
            // have been applied; UNAVAILABLE promises that nothing was written.
            let maybe = matches!(op.kind, Kind::Write(_)) && (op.applied || waiting > 0);
            let ctx = op.ctx.take().expect("checked above");
            if maybe {
                let msg = format!(
                    "{msg}; the write may have been applied on some replicas (reissued {} times)",
                    op.reissues
                );
                self.fail(ctx, Status::MaybeApplied, msg);
            } else {
                self.fail(ctx, Status::Unavailable, msg);
            }
        }
        if waiting == 0 {
            self.finish(id, false);
        }
    }

    /// Advance time: operations past their deadline answer TIMEOUT (if not answered yet),
    /// hint the replicas that never acknowledged a write, and repair what their reads found.
    pub fn on_tick(&mut self, now_ms: u64) {
        // A deadline further away than one timeout means the wall clock stepped back (an
        // operator set a clock that ran ahead right): the operation would wait until the new
        // clock caught up with the old one. It gets a whole timeout from now instead.
        let latest_ms = now_ms.saturating_add(self.config.request_timeout_ms);
        if self.timers.last().is_some_and(|d| d > latest_ms) {
            for id in self.timers.clamp(latest_ms) {
                if let Some(op) = self.ops.get_mut(&id) {
                    op.deadline_ms = op.deadline_ms.min(latest_ms);
                }
            }
        }
        self.ask_overdue_spares(now_ms);
        while let Some((deadline, id)) = self.timers.pop_due(now_ms) {
            // An entry whose operation ended (or moved on to a new id) lapses.
            if self
                .ops
                .get(&id)
                .is_some_and(|op| op.deadline_ms == deadline)
            {
                self.finish(id, true);
            }
        }
    }

    /// End operation `id`: answer TIMEOUT if still unanswered, hint writes' silent replicas,
    /// repair reads' stale replicas.
    fn finish(&mut self, id: u32, timed_out: bool) {
        let mut op = self.ops.remove(&id).expect("caller checked the op exists");
        let n = op.replicas.len();
        if let Some(ctx) = op.ctx.take() {
            assert!(
                timed_out,
                "an operation with nobody left to wait for was answered"
            );
            let msg = match (&op.kind, op.replicas.first()) {
                (Kind::Forward, Some((to, _))) => format!(
                    "node {to}, the replica this write was handed to, did not answer within {} \
                     ms; the write may have been applied",
                    2 * self.config.request_timeout_ms
                ),
                _ => format!(
                    "{} within {} ms",
                    shortfall(op.answered(), n, op.required),
                    self.config.request_timeout_ms
                ),
            };
            self.fail(ctx, Status::Timeout, msg);
        }
        match &op.kind {
            Kind::Write(w) => {
                if self.config.hinted_handoff {
                    for (r, s) in &op.replicas {
                        if matches!(s, Slot::Waiting) || (w.causal && matches!(s, Slot::Down)) {
                            assert!(*r != self.config.node_id, "local applies never time out");
                            self.stats.hints += 1;
                            self.actions.push_back(Action::Hint {
                                target: *r,
                                write: w.clone(),
                            });
                        }
                    }
                }
            }
            Kind::Read { .. } => {
                if self.config.read_repair {
                    self.repair_stale(&op);
                }
            }
            Kind::Forward => {}
        }
        // Its buffers go back to the pools (`crate::pool`).
        for (_, slot) in op.replicas.drain(..) {
            if let Slot::Replied(Some(Stored { value: Some(v), .. })) = slot {
                pool::give_bytes(v);
            }
        }
        self.slot_lists.give(op.replicas);
        match op.kind {
            Kind::Write(w) => {
                pool::give_bytes(w.key);
                if let Some(v) = w.value {
                    pool::give_bytes(v);
                }
            }
            Kind::Read { key, .. } => pool::give_bytes(key),
            Kind::Forward => {}
        }
    }
}

mod causal;
mod optable;
mod read;
mod types;

/// The alive peers (bit `i`: `replicas[i]`; `up` has the bits of those alive) a read asks
/// when it asks `want` of them: those nearest after `me` in id order, wrapping around. Every
/// read a node coordinates then asks the same peer wherever the key allows, so the peer's
/// version replies to one client batch come back in one peer frame batch and the batch is
/// answered in one write; the preference list's own order would split a batch over every
/// peer, its replies over turns, and its answer over writes (each a system call on both
/// sides). Each node prefers a different peer, so the reads spread evenly. Preference lists
/// are at most `REPLICAS_MAX` long.
fn read_peers(me: u32, replicas: &[u32], up: u64, want: usize) -> u64 {
    debug_assert!(replicas.len() <= 64, "a read's replicas fit the mask");
    let mut chosen = 0u64;
    for _ in 0..want {
        let next = replicas
            .iter()
            .enumerate()
            .filter(|&(i, &r)| i < 64 && r != me && chosen & (1 << i) == 0 && up >> i & 1 == 1)
            .min_by_key(|&(_, &r)| r.wrapping_sub(me));
        match next {
            Some((i, _)) => chosen |= 1 << i,
            None => break,
        }
    }
    chosen
}

#[cfg(test)]
mod causal_tests;
#[cfg(test)]
mod tests;
