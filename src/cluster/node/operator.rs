//! What the elastic ring shows an operator: the CLUSTER_ADMIN commands parsed
//! ([`AdminCommand`]), and the texts and figures of CLUSTER, CLUSTER PLAN, TRANSFERS and
//! STATS (the ring state's and the copies'). The ring's behaviour is in `ring.rs`.

use super::ClusterNode;
use crate::cluster::ringpeer::ChangeRequest;
use crate::cluster::ringstate::MemberStatus;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// An operator's command (the CLUSTER_ADMIN client opcode, kvcat `CLUSTER ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// A change for the leader.
    Change(ChangeRequest),
    /// The running change's plan: partitions and moves per node.
    Plan,
}

impl AdminCommand {
    /// Parse `LEAVE n`, `REMOVE n`, `PAUSE`, `RESUME`, `PLAN` (case-insensitive words).
    pub fn parse(text: &str) -> Result<AdminCommand, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let node = |w: Option<&&str>| -> Result<u32, String> {
            w.ok_or_else(|| "a node id is needed".to_string())?
                .parse::<u32>()
                .map_err(|_| format!("bad node id {:?}", w.copied().unwrap_or("")))
        };
        let verb = words
            .first()
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default();
        let want = |n: usize| -> Result<(), String> {
            if words.len() == n {
                Ok(())
            } else {
                Err(format!("{verb} takes {} argument(s)", n - 1))
            }
        };
        Ok(match verb.as_str() {
            "LEAVE" => {
                want(2)?;
                AdminCommand::Change(ChangeRequest::Leave {
                    node: node(words.get(1))?,
                })
            }
            "REMOVE" => {
                want(2)?;
                AdminCommand::Change(ChangeRequest::Remove {
                    node: node(words.get(1))?,
                })
            }
            "PAUSE" => {
                want(1)?;
                AdminCommand::Change(ChangeRequest::Pause)
            }
            "RESUME" => {
                want(1)?;
                AdminCommand::Change(ChangeRequest::Resume)
            }
            "PLAN" => {
                want(1)?;
                AdminCommand::Plan
            }
            _ => {
                return Err(format!(
                    "unknown command {text:?}: LEAVE n, REMOVE n, PAUSE, RESUME or PLAN"
                ))
            }
        })
    }
}

impl<C> ClusterNode<C> {
    /// The elastic ring's STATS figures: the ring version and moving partitions (`_max`:
    /// the same on every shard), this core's copies and the bytes they moved, the
    /// partitions the leader flipped and the keys forgotten (summed over shards).
    pub fn ring_stats_report(&self, report: &mut dyn FnMut(&'static str, u64)) {
        let s = self.ring.state();
        let (mut active, mut running) = (0, 0);
        for t in self.aae.transfers() {
            active += u64::from(!t.done);
            running += u64::from(t.running);
        }
        let a = self.aae.stats();
        let lines: [(&'static str, u64); 11] = [
            ("ring_version_max", s.version()),
            (
                "ring_moving_partitions_max",
                s.moving_partitions().len() as u64,
            ),
            ("ring_change_running_max", u64::from(s.change().is_some())),
            ("ring_moves_paused_max", u64::from(s.paused())),
            ("transfers_waiting", active - running),
            ("transfers_running", running),
            ("transfers_copied", a.moves_copied),
            ("transfer_bytes", a.moved_bytes),
            ("transfer_keys", a.moved_keys),
            ("ring_flips", self.elastic.flips),
            ("keys_forgotten", self.elastic.forgotten),
        ];
        for (name, v) in lines {
            report(name, v);
        }
    }

    /// The CLUSTER text: the membership's lines (id, address, alive or failed, incarnation,
    /// clock, the ring version each node holds), with the leader as this core decides it and
    /// each node's state in the ring (`status=joining|up|leaving|removed`, `none` for a
    /// node the ring does not list yet).
    pub(super) fn cluster_text(&self) -> String {
        let leader = self.leader();
        let state = self.ring.state();
        let mut out = String::new();
        for line in self.membership.render().lines() {
            let id = line.split(' ').next().and_then(|w| w.parse::<u32>().ok());
            let mut words: Vec<&str> = line.split(' ').filter(|w| *w != "leader").collect();
            if id == Some(leader) {
                words.insert(4.min(words.len()), "leader");
            }
            let status = id
                .and_then(|n| state.status(n))
                .map_or("none", MemberStatus::name);
            let _ = writeln!(out, "{} status={status}", words.join(" "));
        }
        out
    }

    /// Each known node's state for the metrics: its ring status, but `failed` for a member
    /// this core does not see alive (unless removed), `joining` for one the ring does not
    /// list yet; and whether it leads.
    pub fn member_figures(&self) -> Vec<crate::shard::stats::MemberFigure> {
        let leader = self.leader();
        let state = self.ring.state();
        let alive = self.alive_ids();
        self.members()
            .into_iter()
            .map(|(id, _)| {
                let status = state.status(id);
                let name = match status {
                    Some(MemberStatus::Removed) => "removed",
                    _ if alive.binary_search(&id).is_err() => "failed",
                    None => "joining",
                    Some(s) => s.name(),
                };
                crate::shard::stats::MemberFigure {
                    id,
                    state: name,
                    leader: id == leader,
                }
            })
            .collect()
    }

    /// The CLUSTER PLAN text: the running change, its moves per node, and what is left.
    pub fn plan_text(&self) -> String {
        let s = self.ring.state();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ring version {} change {} settled {} paused {}",
            s.version(),
            s.change().map_or("none".to_string(), |c| c.to_string()),
            s.settled(),
            s.paused()
        );
        let Some(t) = s.target() else {
            return out;
        };
        let moves = crate::cluster::Ownership::moves(s.current(), t);
        let mut per: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for m in &moves {
            per.entry(m.to).or_default().0 += 1;
            per.entry(m.from).or_default().1 += 1;
        }
        let left = s.moving_partitions().len();
        let _ = writeln!(out, "partitions left to flip {left}");
        for (n, (gets, gives)) in per {
            let _ = writeln!(out, "node {n} receives {gets} gives {gives}");
        }
        out
    }

    /// This core's copies, one line each (TRANSFERS): partition, sources, this node,
    /// records and bytes copied, rate, state.
    pub fn transfers_text(&self, now_ms: u64) -> String {
        let mut out = String::new();
        for t in self.aae.transfers() {
            let secs = now_ms.saturating_sub(t.started_ms).max(1) as f64 / 1000.0;
            let rate = if t.started_ms == 0 {
                0.0
            } else {
                t.bytes as f64 / secs
            };
            let from = t.sources.as_ref().map_or_else(
                || t.replaces.to_string(),
                |s| {
                    s.iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                },
            );
            let state = if t.done {
                "copied"
            } else if t.running {
                "copying"
            } else if t.started_ms == 0 {
                "waiting"
            } else {
                "retrying"
            };
            let _ = writeln!(
                out,
                "partition {} from {} to {} keys {} bytes {} rate_bytes_per_s {:.0} {}",
                t.partition, from, self.config.node_id, t.keys, t.bytes, rate, state
            );
        }
        out
    }
}
