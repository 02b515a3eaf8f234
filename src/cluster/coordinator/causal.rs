//! The read side of the coordinator in siblings mode (`--conflicts siblings`): the answer is
//! the *merge* of the causal states the replicas returned (every sibling any of them holds
//! that none of the others superseded), and the replicas whose state lacks part of that merge
//! are repaired with it. Nothing is compared by version: a replica is stale exactly when its
//! state differs from the merge (the merge contains every state it was made from).

use super::{observe, Action, Coordinator, Kind, Op, Outcome, OwnedWrite, Slot};
use crate::causal::CausalState;
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
        let Kind::Read { key } = &op.kind else {
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
            expires_at_ms: crate::cluster::siblings::RECORD_EXPIRY,
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
