//! STATS: the per-shard counters every shard writes and any shard reads
//! ([`ShardCounters`]), and the reply text that sums them over the shards of the node, with
//! the node-wide figures (handshakes, memory budget, cluster view) alongside.

use super::ShardCore;
use crate::limits::TEXT_REPLY_SIZE_MAX;
use crate::protocol::{op, Status};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Latency histograms kept per opcode: client opcodes `1..LATENCY_OP_SLOTS` each have their
/// own, slot 0 takes every other opcode (peer frames).
pub const LATENCY_OP_SLOTS: usize = 16;
const _: () = assert!(op::CLUSTER_ADMIN < LATENCY_OP_SLOTS as u8);

/// The latency slot of a request opcode (see [`LATENCY_OP_SLOTS`]).
pub fn latency_slot(opc: u8) -> usize {
    if (opc as usize) < LATENCY_OP_SLOTS {
        opc as usize
    } else {
        0
    }
}

/// Per-shard counters, written only by their shard and read by any shard answering STATS.
pub struct ShardCounters {
    /// Server-side request latency in µs: from the event-loop turn that read the request to
    /// the turn that queued its reply on the connection.
    pub latency_us: crate::histogram::Histogram,
    /// The same by opcode slot ([`latency_slot`]), for the metrics' histograms.
    pub latency_by_op: Box<[crate::histogram::Histogram]>,
    /// Requests by opcode (index = opcode, 0..128).
    pub requests_by_op: [AtomicU64; 128],
    /// Replies by status code (index = code).
    pub replies_by_status: [AtomicU64; 256],
    /// Requests this shard forwarded to another shard.
    pub forwarded_out: AtomicU64,
    /// Requests this shard executed for another shard.
    pub forwarded_in: AtomicU64,
    /// Client GET/PUT/DELETE received by this shard (from its own connections) for a key this
    /// node owns, in a cluster: the client routed by the ring map (or was lucky).
    pub key_requests_owned: AtomicU64,
    /// The same for a key this node does not own: the node coordinates it for the owners.
    pub key_requests_not_owned: AtomicU64,
    /// Bytes read from connections.
    pub bytes_in: AtomicU64,
    /// Bytes written to connections.
    pub bytes_out: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused (over the limit).
    pub connections_refused: AtomicU64,
    /// Connections closed for not reading their replies, idling, or bad input.
    pub connections_dropped: AtomicU64,
    /// Store syncs (group commits) done.
    pub syncs: AtomicU64,
    /// Peer frames this shard's outbound links dropped (link down, buffer full, no room for
    /// another link): the coordinator's timeouts and hints cover them.
    pub peer_frames_dropped: AtomicU64,
    /// Peer frames dropped because no address of their destination is known yet.
    pub peer_frames_no_addr: AtomicU64,
    /// The store's figures ([`crate::storage::Store::stats`]), refreshed on the shard's ticks.
    pub storage: Mutex<Figures>,
    /// The cluster core's figures, refreshed on the shard's cluster ticks.
    pub cluster: Mutex<Figures>,
    /// The newest COMPACT generation whose forced pass this shard has finished.
    pub compact_done: AtomicU64,
    /// Compaction totals of the shard's store, published on its ticks (for COMPACT replies).
    pub compactions: AtomicU64,
    /// Bytes reclaimed by compaction so far.
    pub bytes_reclaimed: AtomicU64,
    /// Segments reclaimed by compaction so far (removed minus written).
    pub segments_reclaimed: AtomicU64,
    /// The shard's partition copies for TRANSFERS, refreshed with the cluster figures.
    pub transfers: Mutex<crate::cluster::node::TransferReport>,
    /// Each known node's state as this shard's cluster core sees it (`joining`, `up`,
    /// `leaving`, `failed`, `removed`) and whether it leads, refreshed with the cluster
    /// figures: for the metrics, which have no core to ask.
    pub members: Mutex<Vec<MemberFigure>>,
    /// The newest SNAPSHOT generation this shard has taken its part of.
    pub snapshot_done: AtomicU64,
    /// Its result (see [`super::snapshot::ShardSnapshotResult`]).
    pub snapshot_result: Mutex<Option<super::snapshot::ShardSnapshotResult>>,
}

/// One node's state for the metrics (see [`ShardCounters::members`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberFigure {
    /// The node's id.
    pub id: u32,
    /// `joining`, `up`, `leaving`, `failed` or `removed`.
    pub state: &'static str,
    /// Whether this node is the leader as the publishing core decides it.
    pub leader: bool,
}

impl Default for ShardCounters {
    fn default() -> Self {
        ShardCounters {
            latency_us: crate::histogram::Histogram::default(),
            latency_by_op: (0..LATENCY_OP_SLOTS)
                .map(|_| crate::histogram::Histogram::default())
                .collect(),
            requests_by_op: std::array::from_fn(|_| AtomicU64::new(0)),
            replies_by_status: std::array::from_fn(|_| AtomicU64::new(0)),
            forwarded_out: AtomicU64::new(0),
            forwarded_in: AtomicU64::new(0),
            key_requests_owned: AtomicU64::new(0),
            key_requests_not_owned: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_dropped: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            peer_frames_dropped: AtomicU64::new(0),
            peer_frames_no_addr: AtomicU64::new(0),
            storage: Mutex::new(Figures::default()),
            cluster: Mutex::new(Figures::default()),
            compact_done: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            bytes_reclaimed: AtomicU64::new(0),
            segments_reclaimed: AtomicU64::new(0),
            transfers: Mutex::new(Default::default()),
            members: Mutex::new(Vec::new()),
            snapshot_done: AtomicU64::new(0),
            snapshot_result: Mutex::new(None),
        }
    }
}

/// Selects one counter of a shard (for summing it over the shards).
pub(super) type CounterField = fn(&ShardCounters) -> &AtomicU64;

/// Figures a shard's store or cluster core reported for STATS: `(name, value)` pairs in the
/// order reported. Names are static (each source has a fixed set) and values numbers, so the
/// shard answering STATS combines the shards' figures without formatting or parsing text.
#[derive(Clone, Debug, Default)]
pub struct Figures(Vec<(&'static str, u64)>);

impl Figures {
    /// Replace the figures with those `source` reports (the allocation is kept: a shard
    /// publishes on every tick).
    pub fn publish(&mut self, source: impl FnOnce(&mut dyn FnMut(&'static str, u64))) {
        self.0.clear();
        source(&mut |name, v| self.0.push((name, v)));
    }

    /// The figures, in the order reported.
    pub fn entries(&self) -> &[(&'static str, u64)] {
        &self.0
    }

    /// Fold another shard's figure in, by name: names ending in `_max` / `_min` combine by max
    /// / min (per-disk or per-node figures, such as `storage_disk_free_bytes_min`), the rest
    /// are summed; a name not seen yet is added at the end.
    pub fn combine(&mut self, name: &'static str, v: u64) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(e) if name.ends_with("_max") => e.1 = e.1.max(v),
            Some(e) if name.ends_with("_min") => e.1 = e.1.min(v),
            Some(e) => e.1 += v,
            None => self.0.push((name, v)),
        }
    }
}

impl ShardCore {
    pub(super) fn stats_text(&self, now_ms: u64) -> String {
        let sh = &self.shared;
        let mut t = String::with_capacity(4096);
        let sum = |f: &dyn Fn(&ShardCounters) -> u64| -> u64 { sh.counters.iter().map(f).sum() };
        let _ = writeln!(t, "node_id {}", sh.node_id);
        let _ = writeln!(t, "uptime_ms {}", now_ms.saturating_sub(sh.started_at_ms));
        let _ = writeln!(t, "shards {}", sh.shards);
        let _ = writeln!(t, "connections_max {}", sh.connections_max);
        if self.conflicts() == crate::cluster::Conflicts::Siblings {
            // Only in siblings mode: a last-write-wins node's STATS stay as they were. Tools
            // (kvcat) read it to speak the causal protocol.
            let _ = writeln!(t, "conflicts_siblings 1");
        }
        let conn = |c: &ShardCounters| c.connections.load(Ordering::Relaxed);
        // Node totals: each counter summed over the shards.
        let totals: [(&str, CounterField); 11] = [
            ("connections", |c| &c.connections),
            ("connections_total", |c| &c.connections_total),
            ("connections_refused", |c| &c.connections_refused),
            ("connections_dropped", |c| &c.connections_dropped),
            ("bytes_in", |c| &c.bytes_in),
            ("bytes_out", |c| &c.bytes_out),
            ("syncs", |c| &c.syncs),
            ("key_requests_owned", |c| &c.key_requests_owned),
            ("key_requests_not_owned", |c| &c.key_requests_not_owned),
            ("peer_frames_dropped", |c| &c.peer_frames_dropped),
            ("peer_frames_no_addr", |c| &c.peer_frames_no_addr),
        ];
        for (name, field) in totals {
            let _ = writeln!(t, "{name} {}", sum(&|c| field(c).load(Ordering::Relaxed)));
        }
        {
            // Failed handshakes (wrong client token or cluster secret) and handshakes refused
            // unexamined while their source was paused.
            let th = sh
                .handshake_throttle
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let st = th.stats();
            let _ = writeln!(t, "handshake_failures {}", st.failures);
            let _ = writeln!(t, "handshakes_throttled {}", st.refused);
            let _ = writeln!(t, "handshake_throttle_sources {}", th.len());
        }
        for opc in 1u8..128 {
            let n = sum(&|c| c.requests_by_op[opc as usize].load(Ordering::Relaxed));
            if n > 0 {
                if (op::PEER_FIRST..=op::PEER_LAST).contains(&opc) {
                    let _ = writeln!(t, "requests_peer_0x{opc:02x} {n}");
                } else {
                    let _ = writeln!(t, "requests_{} {n}", op::name(opc).to_lowercase());
                }
            }
        }
        for status in Status::ALL {
            let n = sum(&|c| c.replies_by_status[status as usize].load(Ordering::Relaxed));
            if n > 0 {
                let _ = writeln!(t, "replies_{} {n}", status.name().to_lowercase());
            }
        }
        for (i, c) in sh.counters.iter().enumerate() {
            let reqs: u64 = c
                .requests_by_op
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .sum();
            let _ = writeln!(t, "shard_{i}_requests {reqs}");
            let _ = writeln!(
                t,
                "shard_{i}_forwarded_out {}",
                c.forwarded_out.load(Ordering::Relaxed)
            );
            let _ = writeln!(t, "shard_{i}_connections {}", conn(c));
        }
        let hs: Vec<&crate::histogram::Histogram> =
            sh.counters.iter().map(|c| &c.latency_us).collect();
        let (n, p, max) = crate::histogram::Histogram::percentiles(&hs, &[0.5, 0.9, 0.99, 0.999]);
        let _ = writeln!(t, "latency_requests {n}");
        for (name, v) in ["p50", "p90", "p99", "p999"].iter().zip(&p) {
            let _ = writeln!(t, "latency_{name}_us {v}");
        }
        let _ = writeln!(t, "latency_max_us {max}");
        sh.memory.stats_text(&mut t);
        self.cluster_view_stats(now_ms, &mut t);
        // Storage (and cluster) figures combined over the shards, by name.
        let mut storage = Figures::default();
        for c in &sh.counters {
            for slot in [&c.storage, &c.cluster] {
                let figures = slot.lock().unwrap_or_else(|p| p.into_inner());
                for &(name, v) in &figures.0 {
                    storage.combine(name, v);
                }
            }
        }
        for &(name, v) in &storage.0 {
            let _ = writeln!(t, "{name} {v}");
        }
        if t.len() > TEXT_REPLY_SIZE_MAX {
            // Cut at a line boundary so every line kept is whole, then say so.
            let marker = "truncated 1\n";
            let end = t[..TEXT_REPLY_SIZE_MAX - marker.len()]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            t.truncate(end);
            t.push_str(marker);
        }
        t
    }
}
