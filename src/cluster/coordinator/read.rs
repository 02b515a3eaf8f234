//! The read side of the coordinator: which replicas a read asks, the spares it brings in
//! when those fall short, its answer, and the repair of the stale replicas it found (see the
//! module doc of [`super`] for the rules).

use super::{observe, peer, Action, Coordinator, Kind, Op, Outcome, OwnedWrite, Slot};
use crate::limits::{READ_SPARE_AFTER_MS, VERSION_ONLY_REFUSALS_MAX, VERSION_ONLY_RETRY_MS};
use crate::storage::Stored;
use crate::version::Version;

/// Whether a replica that ended a read in `slot` is to be repaired to the newest version
/// found, `newest`.
fn is_stale(slot: &Slot, newest: Version) -> bool {
    match slot {
        Slot::Replied(None) => true,
        Slot::Replied(Some(held)) => held.version < newest,
        Slot::Versioned(held) => *held < newest,
        // A replica that could not read its copy (a damaged record, which its store then
        // forgets) is repaired too; a repair is LWW and harmless where the copy was fine.
        Slot::Failed(_) => true,
        Slot::Down
        | Slot::Waiting
        | Slot::Fetching
        | Slot::Acked
        | Slot::Newer(_)
        | Slot::Spare => false,
    }
}

impl<C> Coordinator<C> {
    /// Start a read of `key` from `replicas`, answered after `required` replies.
    pub fn start_read(
        &mut self,
        now_ms: u64,
        ctx: C,
        key: &[u8],
        replicas: &[u32],
        alive: &dyn Fn(u32) -> bool,
        required: usize,
    ) {
        let Some(ctx) = self.admit(ctx, replicas, alive, required) else {
            return;
        };
        self.stats.reads += 1;
        let every = u64::from(self.config.read_repair_every);
        let ask = if every > 0 && self.stats.reads.is_multiple_of(every) {
            self.stats.full_reads += 1;
            usize::MAX
        } else {
            required
        };
        let id = self.alloc_id();
        // Its own copy is the data: the peers need only say whether they hold a newer one.
        let version_only = !self.config.causal
            && replicas.contains(&self.config.node_id)
            && !self.refuses_version_only(now_ms, replicas);
        let mut frame = crate::pool::take_bytes();
        peer::put_read(&mut frame, id, self.ring_version, key, version_only);
        let local = Action::ReadLocal { id };
        let slots = self.fan_out(replicas, alive, Some(local), frame, ask);
        if slots.iter().any(|(_, s)| matches!(s, Slot::Spare)) {
            let delay = READ_SPARE_AFTER_MS.min(self.config.request_timeout_ms / 2);
            self.spare_timers.push_back((now_ms + delay, id));
        }
        let deadline_ms = now_ms + self.config.request_timeout_ms;
        self.ops.insert(
            id,
            Op {
                ctx: Some(ctx),
                kind: Kind::Read {
                    key: crate::pool::copy_bytes(key),
                    version_only,
                },
                replicas: slots,
                required,
                deadline_ms,
                reissues: 0,
                applied: false,
                ring: self.ring_version,
                covered: Vec::new(),
            },
        );
        self.push_deadline(deadline_ms, id);
    }

    /// Ask up to `count` spares of read `id` (in preference order).
    fn ask_spares(&mut self, id: u32, count: usize) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let Kind::Read { key, version_only } = &op.kind else {
            return;
        };
        let mut frame = Vec::new();
        let mut asked = 0;
        for (r, slot) in op.replicas.iter_mut() {
            if asked == count {
                break;
            }
            if !matches!(slot, Slot::Spare) {
                continue;
            }
            if frame.is_empty() {
                peer::put_read(&mut frame, id, op.ring, key, *version_only);
            }
            *slot = Slot::Waiting;
            asked += 1;
            self.actions.push_back(Action::Send {
                to: *r,
                frame: frame.clone(),
            });
        }
        self.stats.spares_asked += asked as u64;
    }

    /// Replicas read `id` still needs beyond those answered and waiting (0 once answered).
    fn read_shortfall(&self, id: u32) -> usize {
        self.ops.get(&id).map_or(0, |op| {
            if op.ctx.is_none() {
                return 0;
            }
            op.required.saturating_sub(op.answered() + op.waiting())
        })
    }

    /// Node `from` answered the READ of operation `id` with its record (for this node: the
    /// result of `ReadLocal`).
    pub fn on_read_reply(
        &mut self,
        now_ms: u64,
        from: u32,
        id: u32,
        record: Result<Option<Stored>, String>,
    ) {
        let Some(slot) = self.waiting_slot(from, id) else {
            self.stats.late_replies += 1;
            return;
        };
        *slot = match record {
            Ok(r) => Slot::Replied(r),
            Err(why) => Slot::Failed(format!("node {from}: {why}")),
        };
        // A refusal: a spare takes its place.
        let short = self.read_shortfall(id);
        if short > 0 {
            self.ask_spares(id, short);
        }
        self.answer_read_if_ready(now_ms, id);
        self.progress_at(now_ms, id);
    }

    /// Node `from` answered the version-only READ of operation `id`: it holds `version`.
    pub fn on_read_version(&mut self, now_ms: u64, from: u32, id: u32, version: Version) {
        let Some(slot) = self.waiting_slot(from, id) else {
            self.stats.late_replies += 1;
            return;
        };
        *slot = if matches!(slot, Slot::Fetching) {
            // It was asked for its whole record: a version alone is no answer to that.
            Slot::Failed(format!(
                "node {from}: answered a whole-record READ with a version"
            ))
        } else {
            Slot::Versioned(version)
        };
        self.answer_read_if_ready(now_ms, id);
        self.progress_at(now_ms, id);
    }

    /// Node `from` refused the READ of operation `id` as malformed: a node from before
    /// version-only READs refuses them so. It is asked again for the whole record (and for
    /// whole records only, for a while); any other refusal is an error answer.
    pub fn on_read_refused(&mut self, now_ms: u64, from: u32, id: u32, why: String) {
        let version_only = self.ops.get(&id).is_some_and(|op| {
            matches!(
                op.kind,
                Kind::Read {
                    version_only: true,
                    ..
                }
            )
        });
        let asked_version = matches!(self.waiting_slot(from, id), Some(Slot::Waiting));
        if !(version_only && asked_version) {
            return self.on_read_reply(now_ms, from, id, Err(why));
        }
        log::info!(
            "node {from} refused a version-only READ ({why}): asking it for whole records for \
             {VERSION_ONLY_RETRY_MS} ms"
        );
        self.version_only_refused.retain(|&(n, _)| n != from);
        if self.version_only_refused.len() == VERSION_ONLY_REFUSALS_MAX {
            self.version_only_refused.pop_front();
        }
        self.version_only_refused
            .push_back((from, now_ms + VERSION_ONLY_RETRY_MS));
        self.fetch(id, from);
    }

    /// Whether a replica in `replicas` refused version-only READs lately.
    fn refuses_version_only(&mut self, now_ms: u64, replicas: &[u32]) -> bool {
        if self.version_only_refused.is_empty() {
            return false;
        }
        self.version_only_refused
            .retain(|&(_, until)| until > now_ms);
        self.version_only_refused
            .iter()
            .any(|(n, _)| replicas.contains(n))
    }

    /// Ask replica `to` of read `id` for its whole record.
    fn fetch(&mut self, id: u32, to: u32) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let Kind::Read { key, .. } = &op.kind else {
            return;
        };
        let Some((_, slot)) = op.replicas.iter_mut().find(|(r, _)| *r == to) else {
            return;
        };
        *slot = Slot::Fetching;
        let mut frame = crate::pool::take_bytes();
        peer::put_read(&mut frame, id, op.ring, key, false);
        self.stats.read_fetches += 1;
        self.actions.push_back(Action::Send { to, frame });
    }

    /// A replica of read `id` answered with a version newer than every record in hand: ask it
    /// for that record (the newest first). Returns whether it asked.
    fn fetch_newest(&mut self, id: u32) -> bool {
        let op = self.ops.get(&id).expect("caller checked the op exists");
        let in_hand = op.newest().map(|r| r.version);
        let newer = op
            .replicas
            .iter()
            .filter_map(|(r, s)| match s {
                Slot::Versioned(v) if in_hand.is_none_or(|h| *v > h) => Some((*v, *r)),
                _ => None,
            })
            .max();
        match newer {
            Some((_, to)) => {
                self.fetch(id, to);
                true
            }
            None => false,
        }
    }

    fn answer_read_if_ready(&mut self, now_ms: u64, id: u32) {
        if self.config.causal {
            return self.answer_causal_read(now_ms, id);
        }
        let op = self.ops.get(&id).expect("caller checked the op exists");
        let ready = op.ctx.is_some() && op.answered() >= op.required;
        // After the answer, a late version newer than every record is still fetched: the
        // repair at the end needs its record.
        let repairing = op.ctx.is_none() && self.config.read_repair;
        if (ready || repairing) && self.fetch_newest(id) {
            return;
        }
        if !ready {
            return;
        }
        let op = self.ops.get_mut(&id).expect("checked above");
        let cluster_now_ms = now_ms.saturating_add_signed(self.clock_offset_ms.saturating_neg());
        // Every asked replica answered with the newest record (the common case): `finish`
        // will repair nothing, so the value moves into the reply instead of being copied.
        let repairs_nothing = op.waiting() == 0
            && (!self.config.read_repair
                || op.newest().is_none_or(|newest| {
                    !op.replicas.iter().any(|(_, s)| is_stale(s, newest.version))
                }));
        let newest = op
            .replicas
            .iter_mut()
            .filter_map(|(_, s)| match s {
                Slot::Replied(Some(r)) => Some(r),
                _ => None,
            })
            .max_by_key(|r| r.version);
        let outcome = match newest {
            Some(s) if s.is_live(cluster_now_ms) => Outcome::Found {
                version: s.version,
                value: if repairs_nothing {
                    s.value.take()
                } else {
                    s.value.clone()
                }
                .expect("a live record has a value"),
                expires_at_ms: s.expires_at_ms,
            },
            _ => Outcome::NotFound,
        };
        if let Some(s) = op.newest() {
            observe(
                &mut self.hlc,
                now_ms,
                s.version,
                self.config.observe_ahead_ms_max,
            );
        }
        let ctx = op.ctx.take().expect("checked above");
        self.actions.push_back(Action::Reply { ctx, outcome });
    }

    /// Reads still short of answers a while after they started ask their spares, for as
    /// many answers as they lack (an asked replica may have died unnoticed).
    pub(super) fn ask_overdue_spares(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.spare_timers.front() {
            if at > now_ms {
                break;
            }
            self.spare_timers.pop_front();
            let lacking = self.ops.get(&id).map_or(0, |op| {
                if op.ctx.is_none() {
                    return 0;
                }
                op.required.saturating_sub(op.answered())
            });
            if lacking > 0 {
                self.ask_spares(id, lacking);
            }
        }
    }

    /// Repair every replica of finished read `op` that answered with an older record, none,
    /// or an error.
    pub(super) fn repair_stale(&mut self, op: &Op<C>) {
        if self.config.causal {
            return self.repair_causal(op);
        }
        let Kind::Read { key, .. } = &op.kind else {
            return;
        };
        let Some(newest) = op.newest() else {
            return; // no replica holds anything: nothing to repair
        };
        let replicas = &op.replicas;
        if !replicas.iter().any(|(_, s)| is_stale(s, newest.version)) {
            return; // the common case: the record is not even copied
        }
        let repair = OwnedWrite::from_stored(key, newest);
        for (r, s) in replicas {
            if is_stale(s, newest.version) {
                self.stats.repairs += 1;
                self.actions.push_back(Action::Repair {
                    to: *r,
                    write: repair.clone(),
                    ring: op.ring,
                });
            }
        }
    }
}
