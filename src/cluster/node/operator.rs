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

    /// This core's copies and their byte rate, for TRANSFERS ([`render_transfers`]
    /// gathers every shard's).
    pub fn transfer_report(&self, now_ms: u64) -> TransferReport {
        let rows = self
            .aae
            .transfers()
            .map(|t| {
                // The sources copied from, then those left (the replaced owner before the
                // copy decides them).
                let from = match &t.sources {
                    None => t.replaces.to_string(),
                    Some(left) => t
                        .copied_from
                        .iter()
                        .chain(left)
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                };
                let state = if t.done {
                    "copied"
                } else if t.running {
                    "copying"
                } else if t.started_ms == 0 {
                    "waiting"
                } else {
                    "retrying"
                };
                TransferRow {
                    partition: t.partition,
                    from,
                    to: self.config.node_id,
                    keys: t.keys,
                    bytes: t.bytes,
                    total_bytes: t.total_bytes(),
                    rate_bytes_per_s: t.rate_bytes_per_s(now_ms),
                    state,
                }
            })
            .collect();
        let running = self.aae.transfers().any(|t| t.running);
        TransferReport {
            rows,
            rate_bytes_per_s: if running {
                self.aae.copy_rate_bytes_per_s(now_ms).unwrap_or(0)
            } else {
                0
            },
        }
    }

    /// This core's TRANSFERS text alone (lines and summary).
    pub fn transfers_text(&self, now_ms: u64) -> String {
        render_transfers(&[self.transfer_report(now_ms)])
    }
}

/// One partition a core copies, as TRANSFERS shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRow {
    /// The partition.
    pub partition: usize,
    /// Its sources, comma-separated: those copied from, then those left (the replaced owner
    /// before the copy starts).
    pub from: String,
    /// This node.
    pub to: u32,
    /// Records and bytes copied so far.
    pub keys: u64,
    /// Bytes copied so far.
    pub bytes: u64,
    /// The partition's bytes: exact once copied, estimated while copying, `None` before
    /// (see `antientropy/transfer.rs`, "Progress").
    pub total_bytes: Option<u64>,
    /// Measured byte rate (`None`: not started).
    pub rate_bytes_per_s: Option<u64>,
    /// `waiting`, `copying`, `retrying` or `copied`.
    pub state: &'static str,
}

impl TransferRow {
    /// Bytes left, if the total is known.
    fn left(&self) -> Option<u64> {
        self.total_bytes.map(|t| t.saturating_sub(self.bytes))
    }
}

/// One core's copies and the byte rate of those running.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// Its copies.
    pub rows: Vec<TransferRow>,
    /// The byte rate of its copies now (0 when none runs).
    pub rate_bytes_per_s: u64,
}

/// Seconds to move `left` bytes at `rate` bytes/s, as TRANSFERS writes it (`-`: unknown).
fn eta_text(left: Option<u64>, rate: Option<u64>) -> String {
    match (left, rate) {
        (Some(0), _) => "0".into(),
        (Some(l), Some(r)) if r > 0 => format!("{:.1}", l as f64 / r as f64),
        _ => "-".into(),
    }
}

/// An optional figure, `-` when unknown.
fn opt_text(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The TRANSFERS text of a node from its cores' reports (protocol.md § 11.3): one line per
/// copy, then a summary line. The bytes left of copies whose total is not known yet (not
/// started) are taken as the mean total of those known (partitions hold about as much as
/// each other: keys spread evenly over them).
pub fn render_transfers(reports: &[TransferReport]) -> String {
    let mut out = String::new();
    let rows: Vec<&TransferRow> = reports.iter().flat_map(|r| &r.rows).collect();
    for t in &rows {
        let _ = writeln!(
            out,
            "partition {} from {} to {} keys {} bytes {} total_bytes {} rate_bytes_per_s {} eta_s {} {}",
            t.partition,
            t.from,
            t.to,
            t.keys,
            t.bytes,
            opt_text(t.total_bytes),
            opt_text(t.rate_bytes_per_s),
            eta_text(t.left(), t.rate_bytes_per_s),
            t.state
        );
    }
    let count = |state: &str| rows.iter().filter(|t| t.state == state).count();
    let known: Vec<u64> = rows.iter().filter_map(|t| t.total_bytes).collect();
    let mean = (!known.is_empty()).then(|| known.iter().sum::<u64>() / known.len() as u64);
    let left: Option<u64> = rows
        .iter()
        .filter(|t| t.state != "copied")
        .map(|t| t.left().or_else(|| mean.map(|m| m.saturating_sub(t.bytes))))
        .sum();
    let done: u64 = rows.iter().map(|t| t.bytes).sum();
    let rate: u64 = reports.iter().map(|r| r.rate_bytes_per_s).sum();
    let _ = writeln!(
        out,
        "moves waiting {} copying {} retrying {} copied {} bytes_done {} bytes_left {} rate_bytes_per_s {} eta_s {}",
        count("waiting"),
        count("copying"),
        count("retrying"),
        count("copied"),
        done,
        opt_text(left),
        rate,
        eta_text(left, (rate > 0).then_some(rate))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        partition: usize,
        bytes: u64,
        total: Option<u64>,
        rate: Option<u64>,
        state: &'static str,
    ) -> TransferRow {
        TransferRow {
            partition,
            from: "1".into(),
            to: 4,
            keys: bytes / 100,
            bytes,
            total_bytes: total,
            rate_bytes_per_s: rate,
            state,
        }
    }

    #[test]
    fn transfers_show_each_move_and_a_summary() {
        let reports = [
            TransferReport {
                rows: vec![
                    row(1, 1_000, Some(1_000), Some(500), "copied"),
                    row(3, 250, Some(1_000), Some(250), "copying"),
                ],
                rate_bytes_per_s: 250,
            },
            TransferReport {
                rows: vec![row(2, 0, None, None, "waiting")],
                rate_bytes_per_s: 0,
            },
        ];
        let text = render_transfers(&reports);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "partition 1 from 1 to 4 keys 10 bytes 1000 total_bytes 1000 rate_bytes_per_s 500 eta_s 0 copied",
                "partition 3 from 1 to 4 keys 2 bytes 250 total_bytes 1000 rate_bytes_per_s 250 eta_s 3.0 copying",
                "partition 2 from 1 to 4 keys 0 bytes 0 total_bytes - rate_bytes_per_s - eta_s - waiting",
                // The waiting move counts as the mean known total (1,000): 750 + 1,000 left.
                "moves waiting 1 copying 1 retrying 0 copied 1 bytes_done 1250 bytes_left 1750 rate_bytes_per_s 250 eta_s 7.0",
            ]
        );
    }
}
