//! Prometheus metrics: the node's counters in the text exposition format (version 0.0.4),
//! served by [`crate::http`] at `GET /metrics` when `kvd --metrics-listen ADDR` is given.
//!
//! The figures are the ones STATS reads (the shards' [`ShardCounters`], the storage and
//! cluster [`crate::shard::Figures`] each shard publishes, the memory budget), so the two never
//! disagree; only the names change, to Prometheus conventions: a `dkv_` prefix, `_total` on
//! counters, base units (seconds, bytes), and one metric family with labels where STATS has
//! one name per case (`requests_get` → `dkv_requests_total{op="get"}`). A STATS figure the
//! [`FIGURES`] table does not name still appears, as the gauge `dkv_<name>` (`_ms` figures in
//! seconds), so a new figure is never missing from the metrics.
//!
//! Latency is a real histogram per opcode (`dkv_request_duration_seconds`), its `le` bounds
//! powers of two of microseconds, which are boundaries of the node's log-linear buckets, so
//! every count is exact.

use crate::histogram::Histogram;
use crate::protocol::{op, Status};
use crate::shard::stats::{ShardCounters, LATENCY_OP_SLOTS};
use crate::shard::{Figures, NodeShared};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// The `le` bounds of the latency histograms, in µs: 2^4 (16 µs) .. 2^24 (16.8 s).
const LATENCY_BOUNDS_US: [u64; 21] = {
    let mut b = [0u64; 21];
    let mut i = 0;
    while i < b.len() {
        b[i] = 1 << (i + 4);
        i += 1;
    }
    b
};

/// Counter or gauge (histograms are written apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// How a STATS figure appears: `(STATS name, metric name, labels, kind, help)`. Figures in
/// milliseconds are named `_seconds` here and divided by 1000.
type FigureName = (&'static str, &'static str, &'static str, Kind, &'static str);

use Kind::{Counter, Gauge};

/// The storage and cluster figures by name (see the module doc for the others).
#[rustfmt::skip]
const FIGURES: &[FigureName] = &[
    ("storage_keys", "dkv_storage_keys", "", Gauge, "Live keys (and tombstones) in the key directory."),
    ("storage_live_bytes", "dkv_storage_live_bytes", "", Gauge, "Bytes of segment records still current."),
    ("storage_dead_bytes", "dkv_storage_dead_bytes", "", Gauge, "Bytes of segment records superseded, awaiting compaction."),
    ("storage_segments", "dkv_storage_segments", "", Gauge, "Segment files."),
    ("storage_keydir_bytes", "dkv_storage_keydir_bytes", "", Gauge, "RAM held by the key directory."),
    ("storage_compactions", "dkv_storage_compactions_total", "", Counter, "Segment compactions done."),
    ("storage_bytes_reclaimed", "dkv_storage_reclaimed_bytes_total", "", Counter, "Disk bytes compaction gave back."),
    ("storage_segments_reclaimed", "dkv_storage_segments_reclaimed_total", "", Counter, "Segments compaction removed, net of those it wrote."),
    ("storage_corrupt_records", "dkv_storage_corrupt_records_total", "", Counter, "Records found damaged (CRC or framing)."),
    ("storage_writes_refused", "dkv_storage_writes_refused_total", "", Counter, "Writes refused by the storage (disk full, read-only)."),
    ("storage_recovery_ms", "dkv_storage_recovery_seconds", "", Gauge, "Time the store took to open at start."),
    ("storage_read_only", "dkv_storage_read_only", "", Gauge, "Shards whose store refuses writes."),
    ("storage_disk_free_bytes_min", "dkv_storage_disk_free_bytes", "", Gauge, "Free bytes on the fullest data disk."),
    ("gossip_sent", "dkv_gossip_messages_total", "direction=\"sent\"", Counter, "Gossip messages."),
    ("gossip_merged", "dkv_gossip_messages_total", "direction=\"merged\"", Counter, "Gossip messages."),
    ("failures_detected", "dkv_failure_detector_events_total", "event=\"failed\"", Counter, "Nodes marked failed or recovered by the failure detector."),
    ("recoveries", "dkv_failure_detector_events_total", "event=\"recovered\"", Counter, "Nodes marked failed or recovered by the failure detector."),
    ("coord_writes", "dkv_coordinator_requests_total", "kind=\"write\"", Counter, "Requests coordinated for the replicas."),
    ("coord_reads", "dkv_coordinator_requests_total", "kind=\"read\"", Counter, "Requests coordinated for the replicas."),
    ("coord_unavailable", "dkv_coordinator_outcomes_total", "outcome=\"unavailable\"", Counter, "Coordinated requests that did not succeed, by outcome."),
    ("coord_timeouts", "dkv_coordinator_outcomes_total", "outcome=\"timeout\"", Counter, "Coordinated requests that did not succeed, by outcome."),
    ("coord_overloaded", "dkv_coordinator_outcomes_total", "outcome=\"overloaded\"", Counter, "Coordinated requests that did not succeed, by outcome."),
    ("coord_maybe_applied", "dkv_coordinator_outcomes_total", "outcome=\"maybe_applied\"", Counter, "Coordinated requests that did not succeed, by outcome."),
    ("coord_clock_refused", "dkv_coordinator_outcomes_total", "outcome=\"clock_refused\"", Counter, "Coordinated requests that did not succeed, by outcome."),
    ("coord_full_reads", "dkv_coordinator_full_reads_total", "", Counter, "Reads that asked every replica, not only the ones their level needs (one in --read-repair-every)."),
    ("coord_read_fetches", "dkv_coordinator_read_fetches_total", "", Counter, "Whole records a read fetched after a version-only answer showed a replica newer than its own copy."),
    ("coord_spares_asked", "dkv_coordinator_spare_replicas_asked_total", "", Counter, "Spare replicas asked by reads whose first replicas refused or were slow."),
    ("coord_in_flight", "dkv_coordinator_in_flight", "", Gauge, "Requests being coordinated now."),
    ("read_repairs_sent", "dkv_read_repairs_total", "direction=\"sent\"", Counter, "Read repairs."),
    ("read_repairs_received", "dkv_read_repairs_total", "direction=\"received\"", Counter, "Read repairs."),
    ("hints_stored", "dkv_hints_total", "event=\"stored\"", Counter, "Hinted-handoff hints."),
    ("hints_delivered", "dkv_hints_total", "event=\"delivered\"", Counter, "Hinted-handoff hints."),
    ("hints_dropped", "dkv_hints_total", "event=\"dropped\"", Counter, "Hinted-handoff hints."),
    ("hints_received", "dkv_hints_total", "event=\"received\"", Counter, "Hinted-handoff hints."),
    ("hints_pending", "dkv_hints_queued", "", Gauge, "Hints waiting for their node."),
    ("aae_rounds", "dkv_anti_entropy_rounds_total", "", Counter, "Anti-entropy rounds."),
    ("aae_exchanges", "dkv_anti_entropy_exchanges_total", "result=\"started\"", Counter, "Anti-entropy exchanges."),
    ("aae_exchanges_failed", "dkv_anti_entropy_exchanges_total", "result=\"failed\"", Counter, "Anti-entropy exchanges."),
    ("aae_exchanges_served", "dkv_anti_entropy_exchanges_total", "result=\"served\"", Counter, "Anti-entropy exchanges."),
    ("aae_keys_repaired", "dkv_anti_entropy_keys_repaired_total", "", Counter, "Keys anti-entropy repaired here."),
    ("aae_keys_sent", "dkv_anti_entropy_keys_sent_total", "", Counter, "Keys anti-entropy sent to peers."),
    ("aae_bytes_sent", "dkv_anti_entropy_sent_bytes_total", "", Counter, "Bytes anti-entropy sent to peers."),
    ("ring_version_max", "dkv_ring_version", "", Gauge, "The ring version this node holds."),
    ("ring_moving_partitions_max", "dkv_ring_moving_partitions", "", Gauge, "Partitions the running ring change still moves."),
    ("ring_change_running_max", "dkv_ring_change_running", "", Gauge, "1 while a ring change runs."),
    ("ring_moves_paused_max", "dkv_ring_moves_paused", "", Gauge, "1 while partition moves are paused."),
    ("ring_flips", "dkv_ring_flips_total", "", Counter, "Partitions whose ownership flipped here."),
    ("transfers_waiting", "dkv_transfers", "state=\"waiting\"", Gauge, "Partition copies into this node."),
    ("transfers_running", "dkv_transfers", "state=\"running\"", Gauge, "Partition copies into this node."),
    ("transfers_copied", "dkv_transfers_copied_total", "", Counter, "Partition copies finished."),
    ("transfer_bytes", "dkv_transfer_bytes_total", "", Counter, "Bytes streamed into this node by partition copies."),
    ("transfer_keys", "dkv_transfer_keys_total", "", Counter, "Keys streamed into this node by partition copies."),
    ("keys_forgotten", "dkv_keys_forgotten_total", "", Counter, "Records dropped for partitions moved away."),
];

/// Samples grouped by metric family, so each family is written once (the format wants a
/// family's samples together, after its HELP and TYPE).
#[derive(Default)]
struct Families {
    map: BTreeMap<String, Family>,
}

/// One metric family: its type, help and samples as (labels, value).
struct Family {
    kind: &'static str,
    help: String,
    samples: Vec<(String, f64)>,
}

impl Families {
    fn add(&mut self, name: &str, kind: &'static str, help: &str, labels: &str, v: f64) {
        let e = self.map.entry(name.to_string()).or_insert_with(|| Family {
            kind,
            help: help.to_string(),
            samples: Vec::new(),
        });
        e.samples.push((labels.to_string(), v));
    }

    fn counter(&mut self, name: &str, help: &str, labels: &str, v: u64) {
        self.add(name, Kind::Counter.name(), help, labels, v as f64);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &str, v: f64) {
        self.add(name, Kind::Gauge.name(), help, labels, v);
    }

    fn write(&self, out: &mut String) {
        for (
            name,
            Family {
                kind,
                help,
                samples,
            },
        ) in &self.map
        {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
    }
}

/// A STATS figure's metric: from [`FIGURES`], else the gauge `dkv_<name>` (a figure in
/// milliseconds, `ms` in its name, in seconds; a `_max`/`_min` suffix dropped).
fn figure_metric(name: &str, v: u64, fams: &mut Families) {
    if let Some(&(_, metric, labels, kind, help)) = FIGURES.iter().find(|f| f.0 == name) {
        let v = if metric.ends_with("_seconds") {
            v as f64 / 1000.0
        } else {
            v as f64
        };
        fams.add(metric, kind.name(), help, labels, v);
        return;
    }
    let base = name
        .strip_suffix("_max")
        .or_else(|| name.strip_suffix("_min"))
        .unwrap_or(name);
    let help = format!("STATS figure {name}.");
    let words: Vec<&str> = base.split('_').collect();
    if words.contains(&"ms") {
        let words: Vec<&str> = words
            .iter()
            .map(|&w| if w == "ms" { "seconds" } else { w })
            .collect();
        let metric = format!("dkv_{}", words.join("_"));
        fams.gauge(&metric, &help, "", v as f64 / 1000.0);
    } else {
        fams.gauge(&format!("dkv_{base}"), &help, "", v as f64);
    }
}

/// The opcode label of a latency slot (slot 0: every peer opcode).
fn slot_label(slot: usize) -> String {
    if slot == 0 {
        "peer".to_string()
    } else {
        op::name(slot as u8).to_lowercase()
    }
}

/// The node's metrics in the Prometheus text format, at wall-clock `now_ms`.
pub fn render(shared: &NodeShared, now_ms: u64) -> String {
    let mut f = Families::default();
    let counters = &shared.counters;
    let sum = |field: &dyn Fn(&ShardCounters) -> u64| -> u64 { counters.iter().map(field).sum() };
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

    f.gauge(
        "dkv_node_info",
        "This node: its id and shard count (value always 1).",
        &format!(
            "node=\"{}\",shards=\"{}\",version=\"{}\"",
            shared.node_id,
            shared.shards,
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    f.gauge(
        "dkv_uptime_seconds",
        "Time since the node started.",
        "",
        now_ms.saturating_sub(shared.started_at_ms) as f64 / 1000.0,
    );
    f.gauge(
        "dkv_connections",
        "Client and peer connections open now.",
        "",
        sum(&|c| load(&c.connections)) as f64,
    );
    f.gauge(
        "dkv_connections_limit",
        "The node's connection limit.",
        "",
        shared.connections_max as f64,
    );
    type Field = fn(&ShardCounters) -> &std::sync::atomic::AtomicU64;
    #[rustfmt::skip]
    let totals: [(&str, &str, &str, Field); 11] = [
        ("dkv_connections_accepted_total", "Connections accepted.", "", |c| &c.connections_total),
        ("dkv_connections_refused_total", "Connections refused over the limit.", "", |c| &c.connections_refused),
        ("dkv_connections_dropped_total", "Connections closed for not reading, idling or bad input.", "", |c| &c.connections_dropped),
        ("dkv_received_bytes_total", "Bytes read from connections.", "", |c| &c.bytes_in),
        ("dkv_sent_bytes_total", "Bytes written to connections.", "", |c| &c.bytes_out),
        ("dkv_storage_syncs_total", "Store syncs (group commits).", "", |c| &c.syncs),
        ("dkv_requests_forwarded_total", "Requests forwarded to the shard that owns their key.", "", |c| &c.forwarded_out),
        ("dkv_key_requests_total", "Client key requests, by whether this node owns the key.", "owned=\"true\"", |c| &c.key_requests_owned),
        ("dkv_key_requests_total", "Client key requests, by whether this node owns the key.", "owned=\"false\"", |c| &c.key_requests_not_owned),
        ("dkv_peer_frames_dropped_total", "Peer frames dropped before sending.", "reason=\"link\"", |c| &c.peer_frames_dropped),
        ("dkv_peer_frames_dropped_total", "Peer frames dropped before sending.", "reason=\"no_address\"", |c| &c.peer_frames_no_addr),
    ];
    for (name, help, labels, field) in totals {
        f.counter(name, help, labels, sum(&|c| load(field(c))));
    }
    {
        let th = shared
            .handshake_throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let st = th.stats();
        f.counter(
            "dkv_handshake_failures_total",
            "HELLO / PEER_AUTH with a wrong token or secret.",
            "",
            st.failures,
        );
    }
    for opc in 1u8..128 {
        let n = sum(&|c| load(&c.requests_by_op[opc as usize]));
        if n > 0 {
            let label = if (op::PEER_FIRST..=op::PEER_LAST).contains(&opc) {
                format!("op=\"peer_0x{opc:02x}\"")
            } else {
                format!("op=\"{}\"", op::name(opc).to_lowercase())
            };
            f.counter(
                "dkv_requests_total",
                "Requests received, by opcode.",
                &label,
                n,
            );
        }
    }
    for status in Status::ALL {
        let n = sum(&|c| load(&c.replies_by_status[status as usize]));
        if n > 0 {
            let label = format!("status=\"{}\"", status.name().to_lowercase());
            f.counter("dkv_replies_total", "Replies sent, by status.", &label, n);
        }
    }
    // The memory budget's lines, as gauges (limits and levels) and counters (events).
    let mut memory = String::new();
    shared.memory.stats_text(&mut memory);
    for line in memory.lines() {
        let Some((name, v)) = line.split_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        if name.contains("_paused_") || name.contains("_dropped_") {
            f.counter(
                &format!("dkv_{name}_total"),
                &format!("Memory budget: STATS {name}."),
                "",
                v,
            );
        } else {
            figure_metric(name, v, &mut f);
        }
    }
    // Storage and cluster figures, combined over the shards as STATS combines them.
    let mut figures = Figures::default();
    for c in counters {
        for slot in [&c.storage, &c.cluster] {
            let g = slot.lock().unwrap_or_else(|p| p.into_inner());
            for &(name, v) in g.entries() {
                figures.combine(name, v);
            }
        }
    }
    for &(name, v) in figures.entries() {
        figure_metric(name, v, &mut f);
    }
    // Node states, as the membership shard (shard 0) sees them.
    if let Some(c) = counters.first() {
        let members = c.members.lock().unwrap_or_else(|p| p.into_inner());
        for m in members.iter() {
            f.gauge(
                "dkv_cluster_node_state",
                "Each known node's state (value 1 for its current state).",
                &format!("node=\"{}\",state=\"{}\"", m.id, m.state),
                1.0,
            );
            if m.leader {
                f.gauge(
                    "dkv_cluster_leader",
                    "The id of the node this node sees as leader.",
                    "",
                    m.id as f64,
                );
            }
        }
    }
    process_metrics(&mut f);
    let mut out = String::with_capacity(16 * 1024);
    f.write(&mut out);
    latency_histograms(counters, &mut out);
    out
}

/// `dkv_request_duration_seconds`, one histogram per opcode that saw requests.
fn latency_histograms(counters: &[ShardCounters], out: &mut String) {
    let name = "dkv_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Server-side request latency: from the event-loop turn that read the \
         request to the turn that queued its reply."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for slot in 0..LATENCY_OP_SLOTS {
        let hs: Vec<&Histogram> = counters.iter().map(|c| &c.latency_by_op[slot]).collect();
        let (below, total, sum_us) = Histogram::cumulative(&hs, &LATENCY_BOUNDS_US);
        if total == 0 {
            continue;
        }
        let opl = slot_label(slot);
        for (bound, n) in LATENCY_BOUNDS_US.iter().zip(&below) {
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{op=\"{opl}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{op=\"{opl}\",le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{{op=\"{opl}\"}} {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{op=\"{opl}\"}} {total}");
    }
}

/// The process's resident memory, open files and start time, under the names Prometheus'
/// client libraries use (`process_…`), read from /proc (absent elsewhere).
fn process_metrics(f: &mut Families) {
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse::<u64>().ok())
        {
            f.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "",
                (pages * page_size()) as f64,
            );
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        f.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            "",
            dir.count() as f64,
        );
    }
}

/// The memory page size (statm counts pages).
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests;
