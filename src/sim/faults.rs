//! The fault schedule of the safety phase: at seeded intervals one of crash (and restart),
//! pause, partition (and heal), clock jump, failed sync (the node turns read-only and an
//! operator restarts it) or full disk (and space freed later), with seeded weights; and, on
//! the seeds that draw it, a membership change (join, replacement, leave, removal, pause of
//! the moves: see `elastic.rs` and `joins.rs`). Faults pick among the nodes started so far
//! (the first members and those that joined).

use super::options::range;
use super::trace::trace;
use super::world::{Ev, Phase, World};

impl World {
    pub(super) fn fault(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let mean = self.p.fault_interval_ms;
        let t = self.now + range(&mut self.rng, mean / 2, mean * 3 / 2);
        self.at(t, Ev::Fault);
        let mut w = [0u32; 7];
        w[..6].copy_from_slice(&self.p.fault_weights);
        w[6] = self.p.membership_weight;
        let total: u32 = w.iter().sum();
        if total == 0 {
            return;
        }
        let mut x = self.rng.below(u64::from(total)) as u32;
        let mut kind = 0;
        while x >= w[kind] {
            x -= w[kind];
            kind += 1;
        }
        let born = u64::from(self.born());
        let id = range(&mut self.rng, 1, born) as u32;
        let failure_ms = self.p.gossip_interval_ms * u64::from(self.p.failure_threshold);
        match kind {
            0 => {
                if self.nodes[id as usize - 1].up.is_some() {
                    self.crash(id);
                    let t = self.now + range(&mut self.rng, 20, 3 * failure_ms + 500);
                    self.at(t, Ev::Restart(id));
                }
            }
            1 => {
                if self.runnable(id) {
                    let until = self.now + range(&mut self.rng, 20, 2 * failure_ms + 300);
                    self.nodes[id as usize - 1].paused_until = until;
                    trace!(self.trace, "n{id} PAUSE until {until}");
                    self.at(until, Ev::Unpause(id));
                }
            }
            2 => {
                if !self.partitioned {
                    self.partition();
                    let t = self.now + range(&mut self.rng, 50, 4 * failure_ms + 500);
                    self.at(t, Ev::Heal);
                }
            }
            4 => {
                // The disk's next sync fails: the node turns read-only, and an operator
                // restarts it a little later.
                if self.nodes[id as usize - 1].up.is_some() {
                    self.nodes[id as usize - 1].vfs.fail_next_syncs(1);
                    trace!(self.trace, "n{id} disk: next sync fails");
                    let t = self.now + range(&mut self.rng, 100, 3 * failure_ms + 500);
                    self.at(t, Ev::OperatorRestart(id));
                }
            }
            5 => {
                // The disk fills up for a while: appends fail with ENOSPC (refused, not
                // sticky), then space is freed.
                if self.nodes[id as usize - 1].up.is_some() {
                    let vfs = self.nodes[id as usize - 1].vfs.clone();
                    let used = vfs.used_bytes();
                    let room = range(&mut self.rng, 0, 2_000);
                    vfs.set_space_max(Some(used + room));
                    trace!(self.trace, "n{id} disk full ({room} bytes left)");
                    let t = self.now + range(&mut self.rng, 50, 3_000);
                    self.at(t, Ev::DiskFreed(id));
                }
            }
            6 => self.membership_event(),
            _ => {
                if self.p.jump_max_ms == 0 {
                    return;
                }
                let j = range(&mut self.rng, 1, self.p.jump_max_ms) as i64;
                let j = if self.rng.below(2) == 0 { j } else { -j };
                self.nodes[id as usize - 1].offset_ms += j;
                self.note_offset(id);
                trace!(self.trace, "n{id} clock jumps {j:+} ms");
            }
        }
    }
}
