//! What the cluster core shows: the CLUSTER text, its STATS figures (counters that add up
//! over shards) and the clock figures of STATS (a view of the node, never summed).

use super::{ClusterNode, Role};
use crate::cluster::clock::Sample;
use std::fmt::Write as _;

impl<C> ClusterNode<C> {
    /// The clock figures of STATS (a view, not counters: never summed over shards).
    pub fn clock_figures(&self, now_ms: u64) -> ClockFigures {
        if let Role::Follower { view } = &self.role {
            return match view {
                Some(v) => v.figures.clone(),
                None => ClockFigures {
                    offset_max_ms: self.config.max_clock_offset_ms,
                    writes_refused: true,
                    ..ClockFigures::default()
                },
            };
        }
        let c = self.membership.cluster_clock(now_ms);
        ClockFigures {
            offset_ms: c.offset_ms,
            offset_max_ms: self.config.max_clock_offset_ms,
            peers_live: c.live,
            peers_measured: c.measured,
            writes_refused: self.clock_refusal(now_ms).is_some(),
            peers: (self.membership.members().iter())
                .filter_map(|n| Some((n.id, self.membership.clock_sample(n.id)?)))
                .collect(),
        }
    }

    /// The CLUSTER reply text (on a follower: the last view's).
    pub fn render_cluster(&self) -> String {
        match self.followed() {
            Some(v) => v.text.clone(),
            None => self.cluster_text(),
        }
    }

    /// Cluster figures for STATS, one `name value` line each: [`ClusterNode::stats_report_at`].
    pub fn stats_text_at(&self, now_ms: u64) -> String {
        let mut t = String::new();
        self.stats_report_at(now_ms, &mut |name, v| {
            let _ = writeln!(t, "{name} {v}");
        });
        t
    }

    /// Cluster figures for STATS as `(name, value)` pairs, anti-entropy's included, and
    /// `clock_shards_refusing` (1 while this core refuses writes for its clock, or because
    /// its ring is not confirmed by a peer since start; summed over the shards of a node, it
    /// says how many shards refuse).
    pub fn stats_report_at(&self, now_ms: u64, report: &mut dyn FnMut(&'static str, u64)) {
        self.stats_report(report);
        let refusing = self.clock_refusal(now_ms).is_some() || !self.ring_confirmed();
        report("clock_shards_refusing", u64::from(refusing));
        // Its twin, so that a reader can tell "every shard accepts writes" (equal to `shards`)
        // from "no shard has published yet" (both 0).
        report("clock_shards_accepting", u64::from(!refusing));
        self.aae.stats_report(now_ms, report);
        self.ring_stats_report(report);
    }

    /// Cluster counters for STATS, one `name value` line each: [`ClusterNode::stats_report`].
    pub fn stats_text(&self) -> String {
        let mut t = String::new();
        self.stats_report(&mut |name, v| {
            let _ = writeln!(t, "{name} {v}");
        });
        t
    }

    /// Cluster counters for STATS as `(name, value)` pairs (counters only, so the figures of
    /// several shards can be summed by name; anti-entropy's: [`ClusterNode::stats_report_at`]).
    pub fn stats_report(&self, report: &mut dyn FnMut(&'static str, u64)) {
        let m = self.membership.stats();
        let c = self.coordinator.stats();
        let h = self.hints.stats();
        let r = self.replica_stats;
        let (samples, samples_dropped) = self.membership.clock_counts();
        let lines: [(&'static str, u64); 32] = [
            ("cluster_pauses", m.pauses),
            ("gossip_sent", m.gossip_sent),
            ("gossip_merged", m.gossip_merged),
            ("failures_detected", m.failures_detected),
            ("recoveries", m.recoveries),
            ("coord_writes", c.writes),
            ("coord_reads", c.reads),
            ("coord_unavailable", c.unavailable),
            ("coord_timeouts", c.timeouts),
            ("coord_overloaded", c.overloaded),
            ("coord_in_flight", self.coordinator.in_flight() as u64),
            ("read_repairs_sent", c.repairs),
            ("read_repairs_received", r.repairs_received),
            ("hints_stored", h.stored),
            ("hints_delivered", h.delivered),
            ("hints_dropped", h.dropped),
            ("hints_pending", h.pending),
            ("hints_received", r.hints_received),
            ("replicate_served", r.replicate_served),
            ("peer_errors", r.peer_errors),
            ("coord_maybe_applied", c.maybe_applied),
            ("coord_reissues", c.reissues),
            ("coord_superseded", c.superseded),
            ("coord_full_reads", c.full_reads),
            ("coord_spares_asked", c.spares_asked),
            ("coord_read_fetches", c.read_fetches),
            ("coord_clock_refused", r.clock_refused),
            ("replicate_refused_ahead", r.refused_ahead),
            ("clock_samples", samples),
            ("clock_samples_dropped", samples_dropped),
            ("members_added", m.members_added),
            ("members_ignored", m.members_ignored),
        ];
        for (name, v) in lines {
            report(name, v);
        }
    }
}

/// The clock figures of STATS: what this node knows of its clock against the cluster's. A
/// view of the node, measured by its membership shard and shown as it is (never summed over
/// shards).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClockFigures {
    /// This node's clock minus the cluster's, ms.
    pub offset_ms: i64,
    /// The limit of that offset (`--max-clock-offset-ms`).
    pub offset_max_ms: u64,
    /// Live peers.
    pub peers_live: usize,
    /// Live peers whose clock is measured.
    pub peers_measured: usize,
    /// Whether the max-offset rule refuses writes now.
    pub writes_refused: bool,
    /// Per measured peer, ids ascending: its id and its latest sample.
    pub peers: Vec<(u32, Sample)>,
}

impl ClockFigures {
    /// The STATS lines: `clock_offset_ms` (this node minus the cluster), `clock_offset_max_ms`
    /// (the limit), `clock_peers_live`, `clock_peers_measured`, `clock_writes_refused` (1
    /// while the rule refuses writes), then per measured peer `clock_peer_<id>_offset_ms` (its
    /// clock minus ours) and `clock_peer_<id>_rtt_ms`.
    pub fn write_stats(&self, t: &mut String) {
        let _ = writeln!(t, "clock_offset_ms {}", self.offset_ms);
        let _ = writeln!(t, "clock_offset_max_ms {}", self.offset_max_ms);
        let _ = writeln!(t, "clock_peers_live {}", self.peers_live);
        let _ = writeln!(t, "clock_peers_measured {}", self.peers_measured);
        let _ = writeln!(t, "clock_writes_refused {}", u8::from(self.writes_refused));
        for (id, s) in &self.peers {
            let _ = writeln!(t, "clock_peer_{id}_offset_ms {}", s.offset_ms);
            let _ = writeln!(t, "clock_peer_{id}_rtt_ms {}", s.rtt_ms);
        }
    }
}
