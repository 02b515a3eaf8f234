//! The read side of the coordinator in siblings mode (`--conflicts siblings`): the answer is
//! the *merge* of the causal states the replicas returned (every sibling any of them holds
//! that none of the others superseded), and the replicas whose state lacks part of that merge
//! are repaired with it. Nothing is compared by version: a replica is stale exactly when its
//! state differs from the merge (the merge contains every state it was made from).
//!
//! A node that holds no replica of a key hands a siblings-mode write to one that does
//! (COORDINATE, [`crate::cluster::peer::coordinate`]) and answers the client with that
//! replica's outcome: [`Coordinator::start_forward`], [`Coordinator::on_forward_reply`].

use super::{observe, Action, Coordinator, Kind, Op, Outcome, OwnedWrite, Slot};
use crate::causal::CausalState;
use crate::cluster::peer::coordinate::{Answer, Coordinate};
use crate::protocol::Status;
use crate::version::Version;

/// The state a replica's answer holds: `None` for an answer that is not a causal state
/// (an error, or a damaged record: such a replica is repaired with the merge).
fn state_of_slot(slot: &Slot) -> Option<CausalState> {
    match slot {
        Slot::Replied(None) => Some(CausalState::empty()),
        Slot::Replied(Some(rec)) if rec.causal => {
            CausalState::decode(rec.value.as_deref().unwrap_or(&[])).ok()
        }
        // A plain tombstone reads as nothing; a plain value cannot be merged (a siblings
        // cluster writes none) and is left out.
        Slot::Replied(Some(rec)) if rec.value.is_none() => Some(CausalState::empty()),
        _ => None,
    }
}

impl<C> Op<C> {
    /// The merge of every causal state the replicas answered with.
    fn merged_state(&self) -> CausalState {
        let mut merged = CausalState::empty();
        for (_, slot) in &self.replicas {
            if let Some(s) = state_of_slot(slot) {
                merged.merge(&s);
            }
        }
        merged
    }

    /// The newest record version among the answers (the version a repair is written with).
    fn newest_version(&self) -> Version {
        self.newest().map_or(Version::ZERO, |r| r.version)
    }
}

impl<C> Coordinator<C> {
    /// Siblings mode: hand the client's write `request` to replica `to` (this node holds no
    /// replica of the key) and answer `ctx` with its outcome, or TIMEOUT if none comes within
    /// two request timeouts (the replica itself waits up to one for its replicas).
    pub fn start_forward(&mut self, now_ms: u64, ctx: C, to: u32, request: &Coordinate<'_>) {
        if self.ops.len() >= self.config.ops_max {
            let msg = format!(
                "{} replicated operations in flight on this shard, the maximum",
                self.ops.len()
            );
            self.fail(ctx, Status::Overloaded, msg);
            return;
        }
        self.stats.writes += 1;
        let id = self.alloc_id();
        let mut frame = Vec::new();
        request.encode(id, &mut frame);
        self.actions.push_back(Action::Send { to, frame });
        let deadline_ms = now_ms + 2 * self.config.request_timeout_ms;
        self.ops.insert(
            id,
            Op {
                ctx: Some(ctx),
                kind: Kind::Forward,
                replicas: vec![(to, Slot::Waiting)],
                required: 1,
                deadline_ms,
                reissues: 0,
                applied: false,
                ring: self.ring_version,
                covered: Vec::new(),
            },
        );
        self.push_deadline(deadline_ms, id);
    }

    /// Siblings mode: the turn's one write of the store failed and undid this node's own copy
    /// of causal write `id`, from which its state was made. The write is dropped whole: its
    /// REPLICATE frames, still in this turn's outbox (the driver sends peer frames only after
    /// the turn's write), must not leave ([`Coordinator::take_aborted`] names them), it made no
    /// hint yet (a causal write's hints are made when it ends), and the client learns that
    /// nothing was written (an answer already given was held for the turn's write, and the
    /// shard turns it into an error). Otherwise this node's next write of the key, made from a
    /// copy without this one, would claim its dot and supersede it on the replicas that took
    /// it (kvsim --conflicts siblings seed 267). Returns false for any other operation.
    pub(super) fn abort_causal(&mut self, id: u32, why: &str) -> bool {
        let causal = self
            .ops
            .get(&id)
            .is_some_and(|op| matches!(&op.kind, Kind::Write(w) if w.causal));
        if !causal {
            return false;
        }
        // Its deadline's entry lapses (see optable.rs).
        let op = self.ops.remove(&id).expect("checked above");
        self.aborted.push(id);
        if let Some(ctx) = op.ctx {
            let message =
                format!("this node's copy could not be written ({why}); nothing was written");
            self.fail(ctx, Status::StorageError, message);
        }
        true
    }

    /// The ids of the causal writes aborted since the last call: their REPLICATE frames
    /// (request id = operation id) must be dropped from the turn's outbox.
    pub fn take_aborted(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.aborted)
    }

    /// Node `from` answered the COORDINATE of operation `id`.
    pub fn on_forward_reply(&mut self, from: u32, id: u32, answer: Answer) {
        let ours = self.ops.get(&id).is_some_and(|op| {
            matches!(op.kind, Kind::Forward) && op.replicas.first().is_some_and(|r| r.0 == from)
        });
        if !ours {
            self.stats.late_replies += 1;
            return;
        }
        // Its deadline's entry lapses (see optable.rs).
        let op = self.ops.remove(&id).expect("checked above");
        let outcome = match answer {
            Ok(version) => Outcome::Written {
                version,
                reissues: 0,
            },
            Err((status, message)) => Outcome::Failed {
                status,
                message: format!("node {from}, a replica of the key: {message}"),
            },
        };
        if let Some(ctx) = op.ctx {
            self.actions.push_back(Action::Reply { ctx, outcome });
        }
    }

    /// Answer read `id` with the merge of its answers once `required` replicas answered.
    pub(super) fn answer_causal_read(&mut self, now_ms: u64, id: u32) {
        let op = self.ops.get_mut(&id).expect("caller checked the op exists");
        if op.ctx.is_none() || op.answered() < op.required {
            return;
        }
        let cluster_now_ms = now_ms.saturating_add_signed(self.clock_offset_ms.saturating_neg());
        let merged = op.merged_state();
        let mut context = Vec::with_capacity(merged.vv().encoded_context_len());
        merged.vv().encode_context(&mut context);
        let values = merged
            .live(cluster_now_ms)
            .map(|s| (Version(s.version), s.value.clone()))
            .collect();
        let newest = op.newest_version();
        let ctx = op.ctx.take().expect("checked above");
        observe(
            &mut self.hlc,
            now_ms,
            newest,
            self.config.observe_ahead_ms_max,
        );
        self.actions.push_back(Action::Reply {
            ctx,
            outcome: Outcome::Siblings { context, values },
        });
    }

    /// Repair every replica of finished read `op` whose state lacks part of the merge (or
    /// that answered with an error) with the merged state.
    pub(super) fn repair_causal(&mut self, op: &Op<C>) {
        let Kind::Read { key, .. } = &op.kind else {
            return;
        };
        let merged = op.merged_state();
        if merged == CausalState::empty() {
            return; // no replica holds anything: nothing to repair
        }
        let stale: Vec<u32> = op
            .replicas
            .iter()
            .filter(|(_, slot)| match slot {
                Slot::Replied(_) => state_of_slot(slot).is_none_or(|s| s != merged),
                Slot::Failed(_) => true,
                _ => false,
            })
            .map(|(r, _)| *r)
            .collect();
        if stale.is_empty() {
            return;
        }
        let mut value = Vec::with_capacity(merged.encoded_len());
        merged.encode(&mut value);
        let repair = OwnedWrite {
            key: key.clone(),
            value: Some(value),
            version: op.newest_version(),
            expires_at_ms: crate::cluster::siblings::record_expiry(&merged),
            causal: true,
        };
        for to in stale {
            self.stats.repairs += 1;
            self.actions.push_back(Action::Repair {
                to,
                write: repair.clone(),
                ring: op.ring,
            });
        }
    }
}
