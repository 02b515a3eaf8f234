//! The liveness phase: faults stop (partitions healed, nodes resumed, refusing nodes
//! restarted, clocks set right, no drops), then the replicas must converge within a bounded
//! simulated time: every replica of every key holds the same live record (read from the
//! shard that owns the key on each node), every shard of every node sees every node alive
//! with the same leader, and every hint is delivered. With membership changes (issue 12,
//! `elastic.rs`): "every node" leaves out the nodes removed for good (hints for them stay),
//! the leader is the lowest node still a member, the moves resume, the running change must
//! finish with every node at the newest ring version, the replicas are the final ring's
//! owners, and every key must sit on exactly them. Until then, repair rounds issue ALL
//! reads of the keys that differ (unless `--no-repair-reads`). Then the end checks run.

use super::causal::Held;
use super::check::{key_name, show_version, OpKind, REPAIR_CLIENT};
use super::options::range;
use super::trace::trace;
use super::world::{Ev, Phase, World, BASE_MS};
use crate::cluster::ringstate::MemberStatus;
use crate::cluster::Conflicts;
use crate::hash::shard_of;
use crate::protocol::Consistency;
use crate::storage::Stored;

impl World {
    pub(super) fn start_liveness(&mut self) {
        self.phase = Phase::Liveness;
        self.liveness_start = self.now;
        trace!(self.trace, "LIVENESS: heal, resume, restart, sane clocks");
        self.heal();
        for id in 1..=self.born() {
            let i = id as usize - 1;
            self.nodes[i].paused_until = 0;
            self.nodes[i].offset_ms = range(&mut self.rng, 0, 4) as i64 - 2;
            self.nodes[i].far = false;
            self.note_offset(id);
            self.nodes[i].vfs.fail_next_syncs(0);
            self.nodes[i].vfs.set_space_max(None);
            self.operator_restart(id);
            if self.nodes[i].up.is_none() {
                self.start_node(id); // (not a node removed for good)
            }
        }
        self.membership_liveness();
        let settle = 2 * self.p.gossip_interval_ms * u64::from(self.p.failure_threshold)
            + 2 * self.p.request_timeout_ms;
        self.at(self.now + settle, Ev::RepairRound);
    }

    /// The record every replica of `key` holds, if they all agree; else what each holds.
    fn agreed(&mut self, key: u32) -> Result<Option<Stored>, String> {
        let kname = key_name(key);
        let prefs = self.ring.preference_for_key(&kname).to_vec();
        let mut held = Vec::with_capacity(prefs.len());
        for &r in &prefs {
            let n = &mut self.nodes[r as usize - 1];
            let shards = n.shards;
            let Some(run) = n.up.as_mut() else {
                return Err(format!("n{r} is down"));
            };
            // The shard that owns the key there, as requests are routed.
            let got = run.cores[shard_of(&kname, shards)]
                .store_mut()
                .get(&kname)
                .map_err(|e| format!("n{r} cannot read it: {e}"))?;
            held.push(got);
        }
        // Dead records (tombstones, expired values) and no record at all agree: to a reader
        // they are all "not found", compaction turns expired values into tombstones, and
        // anti-entropy collects tombstones (and ignores dead records below its horizon) once
        // every replica has them. Live records must be identical.
        let now_ms = self.node_now(prefs[0]);
        let dead = |a: &Option<Stored>| a.as_ref().is_none_or(|x| !x.is_live(now_ms));
        let same = |a: &Option<Stored>, b: &Option<Stored>| a == b || (dead(a) && dead(b));
        if held.windows(2).all(|w| same(&w[0], &w[1])) {
            // The newest record (others are dead or absent, and agree with it).
            return Ok(held.into_iter().flatten().max_by_key(|s| s.version));
        }
        let seen: Vec<String> = prefs
            .iter()
            .zip(&held)
            .map(|(r, s)| {
                let what = s.as_ref().map_or("none".to_string(), |s| {
                    format!(
                        "{}{}",
                        show_version(s.version, BASE_MS),
                        if s.value.is_none() { "(tombstone)" } else { "" }
                    )
                });
                format!("n{r}={what}")
            })
            .collect();
        Err(seen.join(" "))
    }

    pub(super) fn repair_round(&mut self) {
        // The replicas are the owners by the newest ring a running node holds.
        if let Some(s) = self.running_ring() {
            self.ring = crate::cluster::Ring::from_state(s);
        }
        // Moves paused again (a PAUSE delayed in the network, applied after the RESUME)
        // are resumed again.
        self.membership_liveness();
        let keys: Vec<u32> = self.hist.by_key.keys().copied().collect();
        let mut diverged = Vec::new();
        let mut last_err = String::new();
        for &k in &keys {
            if let Err(e) = self.agreed_any(k) {
                diverged.push(k);
                last_err = e;
            }
        }
        // Membership must converge too: every node sees every node alive (but those removed
        // for good), and the same leader, the lowest id.
        let gone: Vec<u32> = self.nodes.iter().filter(|n| n.gone).map(|n| n.id).collect();
        // A node that left keeps running, but the members forget it (it is removed from the
        // ring): it is neither counted nor asked.
        let ring = self.ring.state().clone();
        let member = |id: &u32| ring.status(*id).is_none_or(|s| s != MemberStatus::Removed);
        let expected_alive = (1..=self.born())
            .filter(|id| member(id) && !gone.contains(id))
            .count() as u32;
        // The leader is the lowest such node.
        let expected_leader = (1..=self.born())
            .filter(member)
            .find(|id| !gone.contains(id))
            .unwrap_or(1);
        let mut views = Vec::new();
        // Every shard decides with the node's view: each must have it.
        for n in self.nodes.iter().filter(|n| member(&n.id)) {
            let Some(run) = &n.up else { continue };
            for (k, core) in run.cores.iter().enumerate() {
                let Some(c) = core.cluster_node() else {
                    continue;
                };
                let alive = c.alive_ids().len() as u32;
                if alive != expected_alive || c.leader() != expected_leader {
                    views.push(format!(
                        "n{}/{k} sees {alive} nodes alive, leader n{}",
                        n.id,
                        c.leader()
                    ));
                }
            }
        }
        // Hinted handoff must drain: every hint delivered once its target is back (hints for
        // a node removed for good are kept: see elastic.rs).
        let pending: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| {
                let run = n.up.as_ref()?;
                let pending = run
                    .cores
                    .iter()
                    .filter_map(|c| c.cluster_node())
                    .map(|c| {
                        let held = gone.iter().map(|&g| c.hints().pending_for(g) as u64);
                        c.hints().stats().pending - held.sum::<u64>()
                    })
                    .sum::<u64>();
                Some((n.id, pending))
            })
            .filter(|&(_, p)| p > 0)
            .map(|(id, p)| format!("n{id} holds {p} hints"))
            .collect();
        if !pending.is_empty() {
            views.extend(pending);
        }
        // The running change finishes, and then every key is on exactly its owners.
        let ring = self.ring_waits();
        let placement = if diverged.is_empty() && ring.is_empty() {
            let mut live = std::collections::BTreeSet::new();
            for &k in &keys {
                if self.siblings() {
                    // (A state that reads: live siblings, or a vector remembering deletions.)
                    if let Ok(Held::State(_)) = self.agreed_causal(k) {
                        live.insert(k);
                    }
                    continue;
                }
                let now_ms = self.node_now(self.ring.preference_for_key(&key_name(k))[0]);
                if let Ok(Some(s)) = self.agreed(k) {
                    if s.is_live(now_ms) {
                        live.insert(k);
                    }
                }
            }
            self.placement_errors(&|k| live.contains(&k))
        } else {
            Vec::new()
        };
        if diverged.is_empty() && views.is_empty() && ring.is_empty() && placement.is_empty() {
            self.stats.converge_ms = self.now - self.liveness_start;
            trace!(
                self.trace,
                "CONVERGED after {} ms of liveness phase",
                self.stats.converge_ms
            );
            self.final_checks(&keys);
            self.phase = Phase::Done;
            return;
        }
        if self.now - self.liveness_start > self.p.liveness_ms_max && diverged.is_empty() {
            let after = self.now - self.liveness_start;
            if !views.is_empty() {
                let d = format!(
                    "membership views differ or hints are left after {after} ms without \
                     faults: {}",
                    views.join("; ")
                );
                trace!(self.trace, "{d}");
                self.hist.report("membership", None, d);
            }
            if !ring.is_empty() {
                let d = format!(
                    "the ring did not settle after {after} ms without faults: {}",
                    ring.join("; ")
                );
                trace!(self.trace, "{d}");
                self.hist.report("ring", None, d);
            }
            for (k, d) in placement {
                trace!(self.trace, "placement k{k}: {d}");
                self.hist.report("placement", Some(k), d);
            }
            self.final_checks(&keys);
            self.phase = Phase::Done;
            return;
        }
        if self.now - self.liveness_start > self.p.liveness_ms_max {
            let k = *diverged.last().expect("not empty");
            let d = format!(
                "{} keys still differ between replicas after {} ms without faults ({last_err})",
                diverged.len(),
                self.now - self.liveness_start
            );
            trace!(self.trace, "{d}");
            self.hist.report("convergence", Some(k), d);
            self.final_checks(&[]);
            self.phase = Phase::Done;
            return;
        }
        // Until anti-entropy lands, convergence is driven by read repair: an ALL read of
        // every key that differs, through rotating coordinators (unless --no-repair-reads).
        self.repair_round += 1;
        if self.p.no_repair_reads {
            trace!(
                self.trace,
                "waiting: {} keys differ, {} views differ",
                diverged.len(),
                views.len()
            );
            let t = self.now + 500;
            self.at(t, Ev::RepairRound);
            return;
        }
        trace!(
            self.trace,
            "repair round {}: {} keys differ, ALL reads; {} views differ; ring: {}; {} keys \
             misplaced",
            self.repair_round,
            diverged.len(),
            views.len(),
            if ring.is_empty() {
                "settled".to_string()
            } else {
                ring.join("; ")
            },
            placement.len()
        );
        for &k in &diverged {
            let coordinator =
                ((u64::from(k) + self.repair_round) % u64::from(self.born())) as u32 + 1;
            let id = self.issue(
                REPAIR_CLIENT,
                OpKind::Get,
                k,
                None,
                Consistency::All,
                coordinator,
            );
            self.hist.ops[id as usize].causal = self.siblings();
        }
        let t = self.now + 2 * self.p.request_timeout_ms + 50;
        self.at(t, Ev::RepairRound);
    }

    /// Whether the replicas of `key` agree, by the mode's measure: the same record (last-write
    /// -wins), the same causal state (siblings); else what each holds.
    fn agreed_any(&mut self, key: u32) -> Result<(), String> {
        if self.siblings() {
            self.agreed_causal(key).map(|_| ())
        } else {
            self.agreed(key).map(|_| ())
        }
    }

    /// Whether the run is in siblings mode.
    pub(super) fn siblings(&self) -> bool {
        self.p.conflicts == Conflicts::Siblings
    }

    fn final_checks(&mut self, converged: &[u32]) {
        if self.siblings() {
            for &k in converged {
                if let Ok(held) = self.agreed_causal(k) {
                    self.hist.check_final_siblings(k, &held, self.now);
                }
            }
            self.check_answered();
            self.check_moved_bytes();
            self.hist.check_version_order();
            self.hist.check_clock_bound();
            return;
        }
        for &k in converged {
            let now_ms = self.node_now(1);
            let held = self
                .agreed(k)
                .ok()
                .flatten()
                .map(|s| (s.version, !s.is_live(now_ms)));
            self.hist.check_durable(k, held, self.now);
        }
        self.check_answered();
        self.check_moved_bytes();
        self.hist.check_version_order();
        self.hist.check_write_order();
        self.hist.check_clock_bound();
    }

    /// Widen the clock checkers' range of allowed offsets to node `id`'s, unless its clock
    /// runs minutes off (it must not coordinate writes then).
    pub(super) fn note_offset(&mut self, id: u32) {
        let n = &self.nodes[id as usize - 1];
        if !n.far {
            let (lo, hi) = self.hist.near_offsets_ms;
            self.hist.near_offsets_ms = (lo.min(n.offset_ms), hi.max(n.offset_ms));
        }
    }
}
