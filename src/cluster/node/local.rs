//! This node's own share of the replica work: the coordinator's actions performed (its own
//! copies applied and read, read repairs, hints, frames and replies handed out), and its own
//! copies' fate at the end of the turn, when the store writes them out.

use super::{ClusterNode, Output};
use crate::cluster::coordinator::Action;
use crate::cluster::peer::{self, WriteAck};
use crate::storage::{Store, Stored};

impl<C> ClusterNode<C> {
    /// The turn's records reached the file: this core's own copies stand.
    pub fn on_turn_written(&mut self) {
        self.local_unflushed.clear();
    }

    /// The turn's one write of the store failed, and the store undid its records: the
    /// acknowledgements this core's own copies gave in the turn are taken back.
    /// Returns the ids of the siblings-mode writes aborted for it, whose REPLICATE frames
    /// (request id = the write's id) the caller must drop from the turn's outbox.
    pub fn on_turn_write_failed(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        why: &str,
    ) -> Vec<u32> {
        let me = self.config.node_id;
        for id in std::mem::take(&mut self.local_unflushed) {
            self.coordinator.revoke_local_ack(now_ms, me, id, why);
        }
        self.drain(now_ms, store);
        self.coordinator.take_aborted()
    }

    /// Perform the coordinator's actions; local replica work is done here.
    pub(super) fn drain(&mut self, now_ms: u64, store: &mut dyn Store) {
        let me = self.config.node_id;
        let limit_ms = self
            .cluster_now_ms(now_ms)
            .saturating_add(self.ahead_ms_max());
        // This node's copies wait for the turn's one write like a replica's; if it fails, the
        // shard calls `on_turn_write_failed`, which takes back their acknowledgements.
        let mut tracked = self.aae.tracked(store).buffered();
        while let Some(a) = self.coordinator.poll_action() {
            let store = &mut tracked;
            match a {
                Action::Send { to, frame } => self.outputs.push_back(Output::Send { to, frame }),
                Action::Reply { ctx, outcome } => {
                    self.outputs.push_back(Output::Reply { ctx, outcome })
                }
                Action::ApplyLocal { id } => {
                    let Some(write) = self.coordinator.local_write(id) else {
                        debug_assert!(false, "an operation waits for its local copy");
                        continue;
                    };
                    // The replica set was chosen by the ring when the request began: a ring
                    // adopted since may have taken the partition from this node, and its
                    // forget pass may be over (an orphan copy nothing would drop: kvsim seed
                    // 1608). Refused as a peer's REPLICATE would be (`refuse_unheld`).
                    let p = crate::hash::partition_of(write.key);
                    let ack = if !self.ring.holds(me, p) {
                        WriteAck::Refused(format!(
                            "node {me} does not hold partition {p} (ring version {})",
                            self.ring.version()
                        ))
                    } else {
                        match store.apply(write) {
                            Ok(a) => {
                                if a == crate::storage::Applied::Stored {
                                    self.local_unflushed.push(id);
                                }
                                WriteAck::Done(a)
                            }
                            Err(e) => WriteAck::Refused(e.to_string()),
                        }
                    };
                    self.coordinator.on_write_ack(now_ms, me, id, ack);
                }
                Action::ReadLocal { id } => {
                    let Some(key) = self.coordinator.local_read_key(id) else {
                        debug_assert!(false, "an operation waits for its local copy");
                        continue;
                    };
                    let r: Result<Option<Stored>, String> =
                        store.get(key).map_err(|e| e.to_string());
                    self.coordinator.on_read_reply(now_ms, me, id, r);
                }
                Action::Repair { to, write, ring } => {
                    if to == me {
                        // (Not a partition this node no longer holds: see ApplyLocal.)
                        if !self.ring.holds(me, crate::hash::partition_of(&write.key)) {
                            continue;
                        }
                        if write.version.physical_ms() > limit_ms {
                            self.replica_stats.refused_ahead += 1;
                            continue;
                        }
                        // Best effort: a failing store is reported by its own writes.
                        let _ = store.apply_repair(write.as_write());
                    } else {
                        let mut frame = Vec::new();
                        peer::put_replicate(
                            &mut frame,
                            0,
                            peer::AUX_REPAIR,
                            ring,
                            &write.as_write(),
                        );
                        self.outputs.push_back(Output::Send { to, frame });
                    }
                }
                Action::Hint { target, write } => self.hints.add(target, write),
            }
        }
    }
}
