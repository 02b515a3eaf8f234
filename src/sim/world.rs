//! The simulated world of one run: nodes (the real [`ClusterNode`] over a real [`LogStore`]
//! on a crashable [`MemVfs`]), their clocks, the network between them, the clients, and the
//! faults, all driven by one event queue in virtual time from one seed.
//!
//! ```text
//!  event queue (BTreeMap by (time, sequence): a total, seed-determined order)
//!    Tick(node)            on_tick + store maintenance, every tick_ms
//!    Net(frame)            a peer frame arrives (or is dropped: partition, crash, restart)
//!    Request(node, op)     a client's request reaches its coordinator
//!    ClientNext / ClientTimeout
//!    Sync(node)            interval sync (and, with ack-before-sync, the late sync)
//!    Fault                 crash, pause, partition, clock jump (safety phase only)
//!    Restart / Unpause / Heal
//!    Liveness / RepairRound
//! ```
//!
//! **The node glue mirrors the production shard.** After every step of a node (one input
//! and draining its outputs) comes the group commit: a node with sync policy `always` syncs
//! its store, and only then releases the client replies and peer replies (REPLICATE acks)
//! the step produced; `interval` nodes sync on a timer, `never` nodes never do. Frames a node
//! *sends* (requests) leave at once, as they do in production.
//!
//! **Links.** A frame is tagged with the lives (restart counts) of both ends when sent; it is
//! dropped on arrival if either end crashed or restarted since (its TCP connection died), if
//! the receiver is down, or if a partition separates them. A paused node's frames wait in
//! the "socket buffer" until it resumes.

use super::check::{key_name, show_version, History, OpKind, OpRecord};
use super::options::{consistency_name, range, sync_name, Mutation, Params};
use super::trace::{trace, Trace};
use crate::cluster::coordinator::Outcome;
use crate::cluster::hintfile::FileHintLog;
use crate::cluster::hints::HintQueue;
use crate::cluster::node::{ClusterNode, Output};
use crate::cluster::peer::{op as peer_op, PeerReply, PeerRequest, WriteAck};
use crate::cluster::{ClusterConfig, Mutations, Ring, SplitMix64};
use crate::protocol::message::put_error;
use crate::protocol::{frame, Consistency, Status, RESPONSE_BIT};
use crate::shard::{ShardCore, SyncPolicy};
use crate::storage::logstore::{LogConfig, LogStore};
use crate::storage::vfs::{CrashMode, MemVfs, Vfs};
use crate::storage::{Applied, Store, StoreError, Stored, Write};
use crate::version::Version;
use std::collections::BTreeMap;
use std::path::Path;

/// Wall-clock ms at simulated time 0 (node clocks are this plus time plus their offset).
pub const BASE_MS: u64 = 1_700_000_000_000;

/// Budget of store maintenance units per tick.
/// Anti-entropy interval under the skip-read-repair mutation: longer than any simulation.
const SKIP_READ_REPAIR_AAE_INTERVAL_MS: u64 = 1_000_000_000;

const MAINTENANCE_BUDGET: usize = 16;

/// The client id of the simulator's own repair reads.
const REPAIR_CLIENT: u32 = u32::MAX;

/// Events processed at most per run (a runaway guard; a normal run needs far fewer).
const EVENTS_MAX: u64 = 20_000_000;

const DATA_DIR: &str = "/data";
const HINT_DIR: &str = "/hints";

struct Msg {
    from: u32,
    to: u32,
    from_life: u64,
    to_life: u64,
    frame: Vec<u8>,
}

enum Ev {
    Tick(u32),
    Net(Msg),
    Request {
        node: u32,
        life: u64,
        op: u64,
    },
    ClientNext(u32),
    ClientTimeout(u32, u64),
    Sync {
        node: u32,
        life: u64,
        periodic: bool,
    },
    Fault,
    Restart(u32),
    /// Crash and restart a node if it refuses writes (an operator's reaction).
    OperatorRestart(u32),
    Unpause(u32),
    /// Space is freed on a full disk.
    DiskFreed(u32),
    Heal,
    Liveness,
    RepairRound,
}

struct Live {
    core: ClusterNode<u64>,
    store: LogStore<MemVfs>,
}

struct Node {
    id: u32,
    vfs: MemVfs,
    sync: SyncPolicy,
    up: Option<Live>,
    /// Restarts so far: frames from an earlier life are dropped.
    life: u64,
    /// Simulated ms until which the node is paused (0: running).
    paused_until: u64,
    /// Its clock's offset from true time.
    offset_ms: i64,
    /// Its clock runs minutes off (`Params::far_nodes`): it must not coordinate writes, so
    /// its offset does not widen what the clock checkers allow. Cleared when the liveness
    /// phase sets the clocks right.
    far: bool,
    /// Client replies waiting for the step's sync.
    held_replies: Vec<(u64, Outcome)>,
    /// Peer replies waiting for the step's sync: (to, to's life, frame).
    held_frames: Vec<(u32, u64, Vec<u8>)>,
    /// A late sync is scheduled (ack-before-sync).
    late_sync: bool,
    /// The highest version of its own this node let out (in a frame or a reply): what a
    /// durable clock ceiling holds (`datadir::ClockCeiling`, sim-2). Survives crashes.
    issued_max: Version,
    /// Set by a failed sync: the store refuses writes until the node restarts.
    write_error: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Safety,
    Liveness,
    Done,
}

struct Client {
    busy: Option<u64>,
}

/// Figures of one run.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Client operations issued.
    pub ops: u64,
    /// Writes acknowledged.
    pub writes_acked: u64,
    /// Reads answered with a value or NOT_FOUND.
    pub reads_ok: u64,
    /// Requests failed (UNAVAILABLE, TIMEOUT, refused connection) or never answered.
    pub failed: u64,
    /// Events processed.
    pub events: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Crashes.
    pub crashes: u64,
    /// Simulated ms at the end.
    pub sim_ms: u64,
    /// Simulated ms the liveness phase took to converge.
    pub converge_ms: u64,
    /// Reads the stale-read checker could judge (an acknowledged, covered write with
    /// R + W > N came before them).
    pub reads_checked: u64,
    /// Keys whose final record the lost-write checker judged against a covered write.
    pub keys_checked: u64,
    /// Store compactions (all nodes' final lives).
    pub compactions: u64,
}

/// One simulation.
pub struct World {
    seed: u64,
    p: Params,
    rng: SplitMix64,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<Node>,
    config: ClusterConfig,
    log_config: LogConfig,
    ring: Ring,
    /// `blocked[from - 1][to - 1]`: frames from → to are dropped.
    blocked: Vec<Vec<bool>>,
    partitioned: bool,
    clients: Vec<Client>,
    ops_issued: u32,
    issue_seq: u64,
    phase: Phase,
    liveness_start: u64,
    repair_round: u64,
    /// The history and the checkers.
    pub hist: History,
    /// The trace.
    pub trace: Trace,
    /// Figures.
    pub stats: RunStats,
}

impl World {
    /// A world for `seed` with parameters `p`, tracing to `trace`.
    pub fn new(seed: u64, p: Params, trace: Trace) -> World {
        let list: Vec<String> = (1..=p.nodes)
            .map(|i| format!("{i}=127.0.0.1:{}", 7000 + i))
            .collect();
        let mut config =
            ClusterConfig::build(1, &list.join(","), p.replicas).expect("valid simulated config");
        config.gossip_interval_ms = p.gossip_interval_ms;
        config.failure_threshold = p.failure_threshold;
        config.request_timeout_ms = p.request_timeout_ms;
        config.anti_entropy_interval_ms = p.anti_entropy_interval_ms;
        // skip-read-repair: the cluster's own switch (kvd --read-repair off). Anti-entropy is
        // off too (no periodic round within any simulation), so that the read-repair code is
        // what stands between stale replicas and convergence: with anti-entropy on, breaking
        // read repair is (rightly) healed and the mutation would prove nothing.
        config.read_repair = p.mutation != Mutation::SkipReadRepair && !p.anti_entropy_only;
        if p.mutation == Mutation::SkipReadRepair {
            config.anti_entropy_interval_ms = SKIP_READ_REPAIR_AAE_INTERVAL_MS;
        }
        config.hinted_handoff = !p.anti_entropy_only;
        config.max_clock_offset_ms = p.max_clock_offset_ms;
        config.mutations = Mutations {
            no_tombstone_version: p.mutation == Mutation::NoTombstoneVersion,
            accept_future_versions: p.mutation == Mutation::AcceptFutureVersions,
        };
        config.validate().expect("drawn parameters are in range");
        let ids: Vec<u32> = (1..=p.nodes).collect();
        let ring = Ring::new(&ids, p.replicas);
        let log_config = LogConfig {
            segment_size_max: p.segment_size_max,
            compaction_dead_percent: 40,
            compaction_dead_bytes_min: 256,
            ..LogConfig::default()
        };
        let mut rng = SplitMix64::new(seed);
        let nodes: Vec<Node> = ids
            .iter()
            .map(|&id| Node {
                id,
                vfs: MemVfs::new(),
                sync: p.sync[id as usize - 1],
                up: None,
                life: 0,
                paused_until: 0,
                offset_ms: if p.skew_max_ms == 0 {
                    0
                } else {
                    range(&mut rng, 0, 2 * p.skew_max_ms) as i64 - p.skew_max_ms as i64
                } + p
                    .far_nodes
                    .iter()
                    .find(|(n, _)| *n == id)
                    .map_or(0, |(_, o)| *o),
                far: p.far_nodes.iter().any(|(n, _)| *n == id),
                held_replies: Vec::new(),
                held_frames: Vec::new(),
                late_sync: false,
                issued_max: Version::ZERO,
                write_error: None,
            })
            .collect();
        let syncs_on_ack = p.sync.iter().map(|s| *s == SyncPolicy::Always).collect();
        let mut hist = History::new(p.nodes, p.replicas, syncs_on_ack, BASE_MS);
        hist.max_clock_offset_ms = p.max_clock_offset_ms;
        let near = nodes.iter().filter(|n| !n.far).map(|n| n.offset_ms);
        hist.near_offsets_ms = (
            near.clone().min().unwrap_or(0).min(0),
            near.max().unwrap_or(0).max(0),
        );
        for k in 0..p.keys {
            hist.prefs
                .insert(k, ring.preference_for_key(&key_name(k)).to_vec());
        }
        World {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            config,
            log_config,
            ring,
            blocked: vec![vec![false; p.nodes as usize]; p.nodes as usize],
            partitioned: false,
            clients: (0..p.clients).map(|_| Client { busy: None }).collect(),
            ops_issued: 0,
            issue_seq: 0,
            phase: Phase::Safety,
            liveness_start: 0,
            repair_round: 0,
            hist,
            trace,
            stats: RunStats::default(),
            p,
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn node_now(&self, id: u32) -> u64 {
        let n = &self.nodes[id as usize - 1];
        (BASE_MS as i64 + self.now as i64 + n.offset_ms) as u64
    }

    fn v(&self, v: crate::version::Version) -> String {
        show_version(v, BASE_MS)
    }

    /// Run the simulation to its end.
    pub fn run(&mut self) {
        self.p.describe(&mut self.trace);
        for id in 1..=self.p.nodes {
            self.start_node(id);
            let first = range(&mut self.rng, 0, self.p.tick_ms);
            self.at(first, Ev::Tick(id));
            if let SyncPolicy::Interval { ms } = self.nodes[id as usize - 1].sync {
                self.at(
                    ms,
                    Ev::Sync {
                        node: id,
                        life: 0,
                        periodic: true,
                    },
                );
            }
        }
        // Let gossip settle before the clients start.
        let warm = self.p.gossip_interval_ms * 3;
        for c in 0..self.p.clients {
            let t = warm + range(&mut self.rng, 0, 50);
            self.at(t, Ev::ClientNext(c));
        }
        if self.p.fault_interval_ms > 0 {
            let t = warm + self.p.fault_interval_ms;
            self.at(t, Ev::Fault);
        }
        self.at(self.p.safety_ms, Ev::Liveness);
        let end = self.p.safety_ms + self.p.liveness_ms_max + 10_000;
        while self.phase != Phase::Done {
            let Some(((t, _), ev)) = self.queue.pop_first() else {
                break;
            };
            self.now = t;
            self.trace.now_ms = t;
            self.stats.events += 1;
            if self.stats.events > EVENTS_MAX || t > end {
                self.hist.report(
                    "liveness",
                    None,
                    format!("the run did not end ({} events, {t} ms)", self.stats.events),
                );
                break;
            }
            self.dispatch(ev);
        }
        for n in &self.nodes {
            if let Some(l) = &n.up {
                let mut figures = Vec::new();
                l.store.stats(&mut |name, v| {
                    if matches!(
                        name,
                        "storage_keys" | "storage_segments" | "storage_compactions"
                    ) {
                        figures.push(format!("{}={v}", &name["storage_".len()..]));
                    }
                    if name == "storage_compactions" {
                        self.stats.compactions += v;
                    }
                });
                trace!(self.trace, "n{} storage {}", n.id, figures.join(" "));
            }
        }
        self.stats.sim_ms = self.now;
        self.stats.reads_checked = self.hist.reads_checked;
        self.stats.keys_checked = self.hist.keys_checked;
        self.stats.ops = u64::from(self.ops_issued);
        for op in &self.hist.ops {
            if op.client == REPAIR_CLIENT {
                continue;
            }
            match (&op.kind, &op.outcome) {
                (OpKind::Get, Some(Outcome::Found { .. } | Outcome::NotFound)) => {
                    self.stats.reads_ok += 1
                }
                (_, Some(Outcome::Written { .. })) => self.stats.writes_acked += 1,
                _ => self.stats.failed += 1,
            }
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(id) => {
                let next = self.now + self.p.tick_ms;
                self.at(next, Ev::Tick(id));
                if self.runnable(id) {
                    let now_ms = self.node_now(id);
                    let live = self.live(id);
                    live.core.on_tick(now_ms, &mut live.store);
                    if let Err(e) = live.store.maintenance(now_ms, MAINTENANCE_BUDGET) {
                        trace!(self.trace, "n{id} maintenance error: {e}");
                    }
                    self.finish_step(id);
                }
            }
            Ev::Net(m) => self.deliver(m),
            Ev::Request { node, life, op } => self.request(node, life, op),
            Ev::ClientNext(c) => self.client_next(c),
            Ev::ClientTimeout(c, op) => {
                if self.clients[c as usize].busy == Some(op) {
                    trace!(self.trace, "client {c} gives up on op {op}");
                    self.clients[c as usize].busy = None;
                    self.at(self.now + 1, Ev::ClientNext(c));
                }
            }
            Ev::Sync {
                node,
                life,
                periodic,
            } => {
                let n = &self.nodes[node as usize - 1];
                if n.life != life {
                    return;
                }
                if periodic {
                    if let SyncPolicy::Interval { ms } = n.sync {
                        self.at(
                            self.now + ms,
                            Ev::Sync {
                                node,
                                life,
                                periodic,
                            },
                        );
                    }
                } else {
                    self.nodes[node as usize - 1].late_sync = false;
                }
                if self.nodes[node as usize - 1].up.is_some() {
                    self.sync_store(node);
                }
            }
            Ev::Fault => self.fault(),
            Ev::Restart(id) => {
                if self.nodes[id as usize - 1].up.is_none() {
                    self.start_node(id);
                }
            }
            Ev::OperatorRestart(id) => self.operator_restart(id),
            Ev::Unpause(id) => {
                let n = &mut self.nodes[id as usize - 1];
                if n.paused_until != 0 && n.paused_until <= self.now {
                    n.paused_until = 0;
                    trace!(self.trace, "n{id} resumes");
                }
            }
            Ev::DiskFreed(id) => {
                self.nodes[id as usize - 1].vfs.set_space_max(None);
                trace!(self.trace, "n{id} disk space freed");
            }
            Ev::Heal => self.heal(),
            Ev::Liveness => self.start_liveness(),
            Ev::RepairRound => self.repair_round(),
        }
    }

    fn runnable(&self, id: u32) -> bool {
        let n = &self.nodes[id as usize - 1];
        n.up.is_some() && n.paused_until == 0
    }

    fn live(&mut self, id: u32) -> &mut Live {
        self.nodes[id as usize - 1]
            .up
            .as_mut()
            .expect("callers check the node is up")
    }

    // ---- nodes: start, crash, steps, group commit ----

    fn start_node(&mut self, id: u32) {
        let now_ms = self.node_now(id);
        let n = &mut self.nodes[id as usize - 1];
        let (store, report) =
            match LogStore::open(n.vfs.clone(), Path::new(DATA_DIR), self.log_config.clone()) {
                Ok(x) => x,
                Err(e) => {
                    let d = format!("n{id} cannot reopen its store after a crash: {e}");
                    trace!(self.trace, "{d}");
                    self.hist.report("storage-recovery", None, d);
                    return;
                }
            };
        let mut config = self.config.clone();
        config.node_id = id;
        let gossip_seed = self.seed ^ (u64::from(id) << 32) ^ n.life.wrapping_mul(0x9E37_79B9);
        // Durable hints in a file on the node's disk, as `kvd` keeps them.
        let resend_ms = ShardCore::hint_resend_ms(&config);
        let hints = match FileHintLog::open(n.vfs.clone(), Path::new(HINT_DIR), 0)
            .and_then(|log| HintQueue::open(Box::new(log), resend_ms))
        {
            Ok(q) => q,
            Err(e) => {
                let d = format!("n{id} cannot reopen its hint log after a crash: {e}");
                trace!(self.trace, "{d}");
                self.hist.report("hint-recovery", None, d);
                HintQueue::in_memory(resend_ms)
            }
        };
        let pending = hints.stats().pending;
        let mut core = ClusterNode::new(config, now_ms, gossip_seed, hints);
        core.recover_clock(&store, now_ms);
        if !self.p.raw_clock_recovery && n.issued_max > store.highest_version() {
            // Simulator bug sim-2 (fixed by the driver's durable clock ceiling, modelled here):
            // `recover_clock` starts the clock above the highest version in the
            // node's own store, but versions it issued before a crash may be missing there
            // (it coordinated a key it does not replicate, or the record was not synced yet).
            // With the wall clock stepped back, the node then issues versions below, or equal
            // to, versions it issued before: LWW drops its newer writes, and two different
            // writes can share a version (replicas then never converge, and a stale ack of
            // the twin counts as an acknowledgement). The fix is a durable clock ceiling;
            // the simulator stands in for it by recovering above the highest version the
            // node let out (`--raw-clock-recovery` shows the bug).
            core.recover_clock(&ClockCeiling(n.issued_max), now_ms);
        }
        let highest = store.highest_version();
        trace!(
            self.trace,
            "n{id} start life={} incarnation={} keys={} highest={} segments={} corrupt={} \
             truncated={} hints={pending}",
            n.life,
            now_ms as i64 - BASE_MS as i64,
            report.keys,
            show_version(highest, BASE_MS),
            report.segments,
            report.corrupt_count,
            report.truncated.as_ref().map_or(0, |t| t.bytes)
        );
        n.up = Some(Live { core, store });
        n.paused_until = 0;
    }

    fn crash(&mut self, id: u32) {
        let torn = range(&mut self.rng, 1, 100) <= u64::from(self.p.torn_percent);
        let mode = if torn {
            CrashMode::Torn {
                seed: self.rng.next_u64(),
            }
        } else {
            CrashMode::DropUnsynced
        };
        let n = &mut self.nodes[id as usize - 1];
        let Some(live) = n.up.take() else { return };
        let sealed: Vec<_> = live
            .store
            .segment_files()
            .into_iter()
            .filter(|(_, _, sealed)| *sealed)
            .map(|(_, path, _)| path)
            .collect();
        drop(live);
        n.vfs.crash(mode);
        n.life += 1;
        n.paused_until = 0;
        n.held_replies.clear();
        n.held_frames.clear();
        n.late_sync = false;
        n.write_error = None;
        self.stats.crashes += 1;
        trace!(
            self.trace,
            "n{id} CRASH ({})",
            if torn { "torn tail" } else { "unsynced lost" }
        );
        if self.nodes[id as usize - 1].sync != SyncPolicy::Always {
            self.hist.loss(id, self.now);
        }
        if self.p.bad_disk == Some(id) && !sealed.is_empty() && self.rng.below(2) == 0 {
            let path = &sealed[self.rng.below(sealed.len() as u64) as usize];
            let vfs = self.nodes[id as usize - 1].vfs.clone();
            if let Some(len) = vfs.contents(path).map(|c| c.len() as u64) {
                if len > 0 {
                    let at = self.rng.below(len);
                    let bit = self.rng.below(8) as u8;
                    if vfs.flip_bit(path, at, bit).is_ok() {
                        trace!(
                            self.trace,
                            "n{id} disk flips bit {bit} at {} offset {at}",
                            path.display()
                        );
                        self.hist.loss(id, self.now);
                        // Half the time the segment's hint file goes too, so recovery
                        // scans the segment and meets the damage; otherwise recovery trusts
                        // the hint and a read meets it (BUG(sim-1), fixed in 6d14b8c: such a
                        // record used to stay unreadable and unrepairable forever).
                        if self.rng.below(2) == 0 {
                            let hint = path.with_extension("hint");
                            if vfs.remove(&hint).is_ok() {
                                let _ = vfs.sync_dir(Path::new(DATA_DIR));
                            }
                        }
                    }
                }
            }
        }
    }

    /// An operator's reaction to a node that refuses writes: restart it.
    fn operator_restart(&mut self, id: u32) {
        // The sync may also have failed inside the store (a segment roll syncs too).
        let n = &self.nodes[id as usize - 1];
        let refusing = n.write_error.is_some()
            || n.up
                .as_ref()
                .is_some_and(|l| l.store.writes_refused().is_some());
        if refusing {
            trace!(self.trace, "n{id} refuses writes: the operator restarts it");
            self.crash(id);
            self.start_node(id);
        }
        // Otherwise the failure was not hit yet: it stays armed until a sync or a crash.
    }

    /// Sync node `id`'s store if it has unsynced writes. A failure is sticky, as in the
    /// production shard: the node refuses writes until it restarts.
    fn sync_store(&mut self, id: u32) {
        let live = self.live(id);
        if !live.store.needs_sync() {
            return;
        }
        if let Err(e) = live.store.sync() {
            trace!(
                self.trace,
                "n{id} sync failed, refusing writes from now on: {e}"
            );
            self.nodes[id as usize - 1].write_error = Some(e.to_string());
        }
    }

    /// Whether node `id` holds acknowledgements until its store has synced, as the
    /// production shard does under the `always` policy (not with the `ack-before-sync`
    /// mutation), and whether its store has unsynced writes right now.
    fn holds_acks(&self, id: u32) -> bool {
        let n = &self.nodes[id as usize - 1];
        n.sync == SyncPolicy::Always
            && self.p.mutation != Mutation::AckBeforeSync
            && n.up.as_ref().is_some_and(|l| l.store.needs_sync())
    }

    /// After a step of node `id`: route its outputs, group commit, release what waited for
    /// it. Mirrors the production shard (`shard/cluster.rs` `pump`, `shard.rs`
    /// `finish_turn`): a client's `Written` reply is held when the policy is `always` and the
    /// store has unsynced writes; other replies go at once.
    fn finish_step(&mut self, id: u32) {
        let idx = id as usize - 1;
        let hold = self.holds_acks(id);
        loop {
            let Some(live) = self.nodes[idx].up.as_mut() else {
                return;
            };
            let Some(out) = live.core.poll_output() else {
                break;
            };
            match out {
                Output::Send { to, frame } => {
                    if let Some(v) = own_version(id, &frame) {
                        let n = &mut self.nodes[idx];
                        n.issued_max = n.issued_max.max(v);
                    }
                    self.send(id, to, frame)
                }
                Output::Reply { ctx, outcome } => {
                    if let Outcome::Written { version, .. } = &outcome {
                        let n = &mut self.nodes[idx];
                        n.issued_max = n.issued_max.max(*version);
                    }
                    if hold && matches!(outcome, Outcome::Written { .. }) {
                        self.nodes[idx].held_replies.push((ctx, outcome));
                    } else {
                        self.client_reply(ctx, outcome);
                    }
                }
                Output::Event(e) => trace!(self.trace, "n{id} event {e:?}"),
            }
        }
        let n = &self.nodes[idx];
        if n.sync == SyncPolicy::Always {
            if self.p.mutation == Mutation::AckBeforeSync {
                // test-only mutation: acknowledge now, sync a little later (a crash in between
                // loses acknowledged writes).
                if !n.late_sync
                    && self.nodes[idx]
                        .up
                        .as_ref()
                        .is_some_and(|l| l.store.needs_sync())
                {
                    let life = n.life;
                    let t = self.now + range(&mut self.rng, 1, 2_000);
                    self.nodes[idx].late_sync = true;
                    self.at(
                        t,
                        Ev::Sync {
                            node: id,
                            life,
                            periodic: false,
                        },
                    );
                }
            } else {
                self.sync_store(id);
            }
        }
        // As the production shard's `finish_turn`: after a failed sync nothing held is
        // acknowledged; every held reply becomes STORAGE_ERROR.
        let failed = self.nodes[idx].write_error.clone();
        let replies = std::mem::take(&mut self.nodes[idx].held_replies);
        for (op, outcome) in replies {
            let outcome = match &failed {
                None => outcome,
                Some(why) => Outcome::Failed {
                    status: Status::StorageError,
                    message: format!("write not acknowledged: sync failed ({why})"),
                },
            };
            self.client_reply(op, outcome);
        }
        let frames = std::mem::take(&mut self.nodes[idx].held_frames);
        for (to, to_life, frame) in frames {
            let frame = match (&failed, frame::parse(&frame)) {
                (Some(why), Ok(Some((f, _)))) => {
                    let mut out = Vec::new();
                    let msg = format!("write not acknowledged: sync failed ({why})");
                    put_error(
                        &mut out,
                        f.op & !RESPONSE_BIT,
                        f.id,
                        Status::StorageError,
                        &msg,
                    );
                    out
                }
                _ => frame,
            };
            self.send_to_life(id, to, to_life, frame);
        }
    }

    // ---- network ----

    fn send(&mut self, from: u32, to: u32, frame: Vec<u8>) {
        let to_life = self.nodes[to as usize - 1].life;
        if self.nodes[to as usize - 1].up.is_none() {
            return; // no connection to a node that is down
        }
        self.send_to_life(from, to, to_life, frame);
    }

    fn send_to_life(&mut self, from: u32, to: u32, to_life: u64, frame: Vec<u8>) {
        let from_life = self.nodes[from as usize - 1].life;
        let faults = self.phase == Phase::Safety;
        if faults && self.p.drop_percent > 0 && self.rng.below(100) < u64::from(self.p.drop_percent)
        {
            trace!(self.trace, "drop n{from}->n{to} {}", self.describe(&frame));
            return;
        }
        let copies = if faults && self.rng.below(100) < u64::from(self.p.dup_percent) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = range(&mut self.rng, self.p.delay_min_ms, self.p.delay_max_ms);
            if faults && self.rng.below(20) == 0 {
                delay *= 10; // a straggler: reordering
            }
            let m = Msg {
                from,
                to,
                from_life,
                to_life,
                frame: frame.clone(),
            };
            self.at(self.now + delay.max(1), Ev::Net(m));
        }
    }

    fn describe(&self, frame: &[u8]) -> String {
        let Ok(Some((f, _))) = frame::parse(frame) else {
            return format!("unparsable frame of {} bytes", frame.len());
        };
        let reply = f.op & RESPONSE_BIT != 0;
        let op = f.op & !RESPONSE_BIT;
        let name = match op {
            peer_op::REPLICATE => "REPLICATE",
            peer_op::READ => "READ",
            peer_op::GOSSIP => "GOSSIP",
            _ => "OP?",
        };
        if reply {
            let what = match PeerReply::decode(f.op, f.aux, f.body) {
                Ok(PeerReply::Write(WriteAck::Done(Applied::Stored))) => "stored".to_string(),
                Ok(PeerReply::Write(WriteAck::Done(Applied::Stale { current }))) => {
                    format!("stale (holds {})", self.v(current))
                }
                Ok(PeerReply::Write(WriteAck::Refused(why))) => format!("refused: {why}"),
                Ok(PeerReply::Read(Ok(Some(r)))) => format!(
                    "{} {}",
                    self.v(r.version),
                    if r.value.is_some() {
                        "value"
                    } else {
                        "tombstone"
                    }
                ),
                Ok(PeerReply::Read(Ok(None))) => "absent".to_string(),
                Ok(PeerReply::Read(Err(why))) => format!("error: {why}"),
                _ => format!("status={}", f.aux),
            };
            return format!("{name}-reply id={} {what}", f.id);
        }
        match PeerRequest::decode(f.op, f.aux, f.body) {
            Ok(PeerRequest::Replicate { write, aux }) => format!(
                "{name} id={} aux={aux} {} {} {}",
                f.id,
                String::from_utf8_lossy(write.key),
                self.v(write.version),
                if write.value.is_some() {
                    "value"
                } else {
                    "tombstone"
                }
            ),
            Ok(PeerRequest::Read { key }) => {
                format!("{name} id={} {}", f.id, String::from_utf8_lossy(key))
            }
            Ok(PeerRequest::Gossip { .. }) => format!("{name} id={}", f.id),
            Err(e) => format!("{name} id={} undecodable: {e}", f.id),
        }
    }

    fn deliver(&mut self, m: Msg) {
        let (from, to) = (m.from, m.to);
        let (fi, ti) = (from as usize - 1, to as usize - 1);
        let dead = self.nodes[ti].up.is_none()
            || self.nodes[ti].life != m.to_life
            || self.nodes[fi].life != m.from_life;
        if dead || self.blocked[fi][ti] {
            trace!(
                self.trace,
                "lost n{from}->n{to} ({}) {}",
                if dead { "connection gone" } else { "partition" },
                self.describe(&m.frame)
            );
            return;
        }
        if self.nodes[ti].paused_until != 0 {
            let t = self.nodes[ti].paused_until + 1;
            self.at(t, Ev::Net(m));
            return;
        }
        self.stats.frames += 1;
        let Ok(Some((f, _))) = frame::parse(&m.frame) else {
            self.hist.report(
                "peer-frame",
                None,
                format!("n{from} sent an unparsable frame"),
            );
            return;
        };
        let is_gossip = f.op & !RESPONSE_BIT == peer_op::GOSSIP;
        if !is_gossip {
            trace!(self.trace, "n{from}->n{to} {}", self.describe(&m.frame));
        }
        let now_ms = self.node_now(to);
        let from_life = m.from_life;
        if f.op == peer_op::REPLICATE {
            if let Some(why) = &self.nodes[ti].write_error {
                // As the production shard: after a failed sync, REPLICATE is refused at once.
                let mut out = Vec::new();
                let msg = format!("writes are refused since a failed sync: {why}");
                put_error(&mut out, f.op, f.id, Status::StorageError, &msg);
                self.send_to_life(to, from, from_life, out);
                return;
            }
        }
        let live = self.nodes[ti].up.as_mut().expect("checked up");
        if f.op & RESPONSE_BIT != 0 {
            live.core.on_peer_reply(now_ms, &mut live.store, from, &f);
        } else {
            let mut out = Vec::new();
            let r = live.core.on_peer_request(
                now_ms,
                &mut live.store,
                from,
                f.id,
                f.op,
                f.aux,
                f.body,
                &mut out,
            );
            if let Err(e) = r {
                self.hist.report(
                    "peer-frame",
                    None,
                    format!("n{to} refused a frame of n{from}: {e}"),
                );
            }
            // A REPLICATE ack waits for the sync under `always` (production: the shard's
            // `on_peer_request` tells its driver to hold it).
            if f.op == peer_op::REPLICATE && self.holds_acks(to) {
                self.nodes[ti].held_frames.push((from, from_life, out));
            } else if !out.is_empty() {
                self.send_to_life(to, from, from_life, out);
            }
        }
        self.finish_step(to);
    }

    // ---- clients ----

    fn client_next(&mut self, c: u32) {
        if self.phase != Phase::Safety || self.ops_issued >= self.p.ops {
            return;
        }
        self.ops_issued += 1;
        let x = self.rng.below(100) as u32;
        let kind = if x < self.p.put_percent {
            OpKind::Put
        } else if x < self.p.put_percent + self.p.get_percent {
            OpKind::Get
        } else {
            OpKind::Delete
        };
        // A skewed key choice: low keys are hot, so writes collide.
        let key = self.rng.below(u64::from(self.p.keys)) as u32;
        let key = key.min(self.rng.below(u64::from(self.p.keys)) as u32);
        let coordinator = range(&mut self.rng, 1, u64::from(self.p.nodes)) as u32;
        let consistency = self.p.draw_consistency(&mut self.rng);
        let value = (kind == OpKind::Put).then(|| {
            let pad = range(&mut self.rng, 0, 48) as usize;
            let mut v = format!("c{c}-{}-", self.hist.ops.len()).into_bytes();
            v.extend(std::iter::repeat_n(b'x', pad));
            v
        });
        let ttl_ms = if kind == OpKind::Put && self.rng.below(100) < u64::from(self.p.ttl_percent) {
            range(&mut self.rng, 200, 20_000)
        } else {
            0
        };
        let id = self.issue(c, kind, key, value, consistency, coordinator);
        self.hist.ops[id as usize].ttl_ms = ttl_ms;
        self.clients[c as usize].busy = Some(id);
        let timeout = self.now + 2 * self.p.request_timeout_ms + self.p.jump_max_ms + 5_000;
        self.at(timeout, Ev::ClientTimeout(c, id));
    }

    fn issue(
        &mut self,
        client: u32,
        kind: OpKind,
        key: u32,
        value: Option<Vec<u8>>,
        consistency: Consistency,
        coordinator: u32,
    ) -> u64 {
        let required = consistency.required(self.p.replicas);
        let id = self.hist.add(OpRecord {
            id: 0,
            client,
            kind,
            key,
            value,
            ttl_ms: 0,
            consistency,
            required,
            coordinator,
            start_ms: self.now,
            issue_seq: 0,
            end_ms: None,
            outcome: None,
        });
        let life = self.nodes[coordinator as usize - 1].life;
        let t = self.now + range(&mut self.rng, 0, 2);
        self.at(
            t,
            Ev::Request {
                node: coordinator,
                life,
                op: id,
            },
        );
        id
    }

    fn request(&mut self, node: u32, life: u64, op: u64) {
        let n = &self.nodes[node as usize - 1];
        if n.up.is_none() || n.life != life {
            trace!(self.trace, "op {op}: connection to n{node} refused");
            self.client_done(op);
            return;
        }
        if n.paused_until != 0 {
            let t = n.paused_until + 1;
            self.at(t, Ev::Request { node, life, op });
            return;
        }
        self.issue_seq += 1;
        let rec = &mut self.hist.ops[op as usize];
        rec.issue_seq = self.issue_seq;
        let (kind, key, value, consistency, ttl_ms) = (
            rec.kind,
            rec.key,
            rec.value.clone(),
            rec.consistency,
            rec.ttl_ms,
        );
        let kname = key_name(key);
        trace!(
            self.trace,
            "op {op} {:?} {} {} via n{node}{}{}",
            kind,
            String::from_utf8_lossy(&kname),
            consistency_name(consistency),
            value.as_ref().map_or(String::new(), |v| format!(
                " value={}",
                String::from_utf8_lossy(v)
            )),
            if ttl_ms > 0 {
                format!(" ttl={ttl_ms}ms")
            } else {
                String::new()
            }
        );
        let now_ms = self.node_now(node);
        let expires_at_ms = if ttl_ms > 0 { now_ms + ttl_ms } else { 0 };
        let live = self.live(node);
        match kind {
            OpKind::Get => live
                .core
                .read(now_ms, &mut live.store, op, &kname, consistency),
            OpKind::Put | OpKind::Delete => live.core.write(
                now_ms,
                &mut live.store,
                op,
                &kname,
                value.as_deref(),
                expires_at_ms,
                consistency,
            ),
        }
        self.finish_step(node);
    }

    fn client_reply(&mut self, op: u64, outcome: Outcome) {
        let text = match &outcome {
            Outcome::Written { version, .. } => format!("written {}", self.v(*version)),
            Outcome::Found { version, value, .. } => format!(
                "found {} {}",
                self.v(*version),
                String::from_utf8_lossy(value)
            ),
            Outcome::NotFound => "not found".to_string(),
            Outcome::Failed { status, message } => format!("failed {status:?}: {message}"),
        };
        let key = key_name(self.hist.ops[op as usize].key);
        trace!(
            self.trace,
            "op {op} answer {}: {text}",
            String::from_utf8_lossy(&key)
        );
        self.hist.answer(op, outcome, self.now);
        self.client_done(op);
    }

    fn client_done(&mut self, op: u64) {
        let c = self.hist.ops[op as usize].client;
        if c == REPAIR_CLIENT {
            return;
        }
        if self.clients[c as usize].busy == Some(op) {
            self.clients[c as usize].busy = None;
            let t = self.now + range(&mut self.rng, 0, 30);
            self.at(t, Ev::ClientNext(c));
        }
    }

    // ---- faults ----

    fn fault(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let mean = self.p.fault_interval_ms;
        let t = self.now + range(&mut self.rng, mean / 2, mean * 3 / 2);
        self.at(t, Ev::Fault);
        let w = self.p.fault_weights;
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
        let id = range(&mut self.rng, 1, u64::from(self.p.nodes)) as u32;
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
                    let used: u64 = [DATA_DIR, HINT_DIR]
                        .iter()
                        .flat_map(|d| {
                            let dir = Path::new(d);
                            vfs.list(dir)
                                .unwrap_or_default()
                                .into_iter()
                                .map(move |f| dir.join(f))
                        })
                        .map(|p| vfs.contents(&p).map_or(0, |c| c.len() as u64))
                        .sum();
                    let room = range(&mut self.rng, 0, 2_000);
                    vfs.set_space_max(Some(used + room));
                    trace!(self.trace, "n{id} disk full ({room} bytes left)");
                    let t = self.now + range(&mut self.rng, 50, 3_000);
                    self.at(t, Ev::DiskFreed(id));
                }
            }
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

    fn partition(&mut self) {
        let n = self.p.nodes as usize;
        let mut side = vec![false; n];
        let shape = self.rng.below(4);
        let name = match shape {
            0 => {
                side[self.rng.below(n as u64) as usize] = true;
                "isolate one"
            }
            1 => {
                for s in side.iter_mut().take(n / 2) {
                    *s = true;
                }
                "halves"
            }
            _ => {
                for s in side.iter_mut() {
                    *s = self.rng.below(2) == 0;
                }
                "random split"
            }
        };
        let one_way = shape == 3;
        for a in 0..n {
            for b in 0..n {
                if side[a] != side[b] && (!one_way || side[a]) {
                    self.blocked[a][b] = true;
                }
            }
        }
        // A bridge: sometimes one node keeps both sides.
        if shape != 0 && self.rng.below(4) == 0 {
            let b = self.rng.below(n as u64) as usize;
            for x in 0..n {
                self.blocked[b][x] = false;
                self.blocked[x][b] = false;
            }
        }
        self.partitioned = true;
        let rows: Vec<String> = self
            .blocked
            .iter()
            .map(|r| r.iter().map(|&x| if x { '#' } else { '.' }).collect())
            .collect();
        trace!(
            self.trace,
            "PARTITION {name}{} blocked(from>to)={}",
            if one_way { " one-way" } else { "" },
            rows.join("|")
        );
    }

    fn heal(&mut self) {
        if self.partitioned {
            for r in &mut self.blocked {
                r.iter_mut().for_each(|x| *x = false);
            }
            self.partitioned = false;
            trace!(self.trace, "partition heals");
        }
    }

    // ---- liveness ----

    fn start_liveness(&mut self) {
        self.phase = Phase::Liveness;
        self.liveness_start = self.now;
        trace!(self.trace, "LIVENESS: heal, resume, restart, sane clocks");
        self.heal();
        for id in 1..=self.p.nodes {
            let i = id as usize - 1;
            self.nodes[i].paused_until = 0;
            self.nodes[i].offset_ms = range(&mut self.rng, 0, 4) as i64 - 2;
            self.nodes[i].far = false;
            self.note_offset(id);
            self.nodes[i].vfs.fail_next_syncs(0);
            self.nodes[i].vfs.set_space_max(None);
            self.operator_restart(id);
            if self.nodes[i].up.is_none() {
                self.start_node(id);
            }
        }
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
            let Some(live) = self.nodes[r as usize - 1].up.as_mut() else {
                return Err(format!("n{r} is down"));
            };
            let got = live
                .store
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

    fn repair_round(&mut self) {
        let keys: Vec<u32> = self.hist.by_key.keys().copied().collect();
        let mut diverged = Vec::new();
        let mut last_err = String::new();
        for &k in &keys {
            if let Err(e) = self.agreed(k) {
                diverged.push(k);
                last_err = e;
            }
        }
        // Membership must converge too: every node sees every node alive, and the same
        // leader, the lowest id.
        let mut views = Vec::new();
        for n in &self.nodes {
            if let Some(l) = &n.up {
                let m = l.core.membership();
                let alive = m.alive_ids();
                if alive.len() != self.p.nodes as usize || m.leader() != 1 {
                    views.push(format!(
                        "n{} sees alive {alive:?} leader n{}",
                        n.id,
                        m.leader()
                    ));
                }
            }
        }
        // Hinted handoff must drain: every hint delivered once its target is back.
        let pending: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| {
                n.up.as_ref()
                    .map(|l| (n.id, l.core.hints().stats().pending))
            })
            .filter(|&(_, p)| p > 0)
            .map(|(id, p)| format!("n{id} holds {p} hints"))
            .collect();
        if !pending.is_empty() {
            views.extend(pending);
        }
        if diverged.is_empty() && views.is_empty() {
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
            let d = format!(
                "membership views differ or hints are left after {} ms without faults: {}",
                self.now - self.liveness_start,
                views.join("; ")
            );
            trace!(self.trace, "{d}");
            self.hist.report("membership", None, d);
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
            "repair round {}: {} keys differ, ALL reads; {} views differ",
            self.repair_round,
            diverged.len(),
            views.len()
        );
        for &k in &diverged {
            let coordinator =
                ((u64::from(k) + self.repair_round) % u64::from(self.p.nodes)) as u32 + 1;
            self.issue(
                REPAIR_CLIENT,
                OpKind::Get,
                k,
                None,
                Consistency::All,
                coordinator,
            );
        }
        let t = self.now + 2 * self.p.request_timeout_ms + 50;
        self.at(t, Ev::RepairRound);
    }

    fn final_checks(&mut self, converged: &[u32]) {
        for &k in converged {
            let now_ms = self.node_now(1);
            let held = self
                .agreed(k)
                .ok()
                .flatten()
                .map(|s| (s.version, !s.is_live(now_ms)));
            self.hist.check_durable(k, held, self.now);
        }
        self.hist.check_version_order();
        self.hist.check_write_order();
        self.hist.check_clock_bound();
    }

    /// Widen the clock checkers' range of allowed offsets to node `id`'s, unless its clock
    /// runs minutes off (it must not coordinate writes then).
    fn note_offset(&mut self, id: u32) {
        let n = &self.nodes[id as usize - 1];
        if !n.far {
            let (lo, hi) = self.hist.near_offsets_ms;
            self.hist.near_offsets_ms = (lo.min(n.offset_ms), hi.max(n.offset_ms));
        }
    }

    /// A one-line summary of the sync policies, for reports.
    pub fn sync_summary(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("n{}:{}", n.id, sync_name(&n.sync)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The version of a REPLICATE frame that node `id` issued itself (not a repair or hint of
/// another node's write).
fn own_version(id: u32, frame: &[u8]) -> Option<Version> {
    let (f, _) = frame::parse(frame).ok()??;
    match PeerRequest::decode(f.op, f.aux, f.body) {
        Ok(PeerRequest::Replicate { write, .. }) if write.version.node_id() == id => {
            Some(write.version)
        }
        _ => None,
    }
}

/// An empty store whose only figure is a highest version: how the simulator hands a node's
/// clock ceiling (`datadir::ClockCeiling`, sim-2) to [`ClusterNode::recover_clock`] without a fake record (the
/// call also builds anti-entropy state from the store; an empty store adds nothing).
struct ClockCeiling(Version);

impl Store for ClockCeiling {
    fn get(&mut self, _key: &[u8]) -> Result<Option<Stored>, StoreError> {
        Ok(None)
    }
    fn version_of(&self, _key: &[u8]) -> Option<Version> {
        None
    }
    fn apply(&mut self, _write: Write<'_>) -> Result<Applied, StoreError> {
        Err(StoreError::WritesRefused(
            "a clock ceiling holds no data".into(),
        ))
    }
    fn needs_sync(&self) -> bool {
        false
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn maintenance(&mut self, _now_ms: u64, _budget: usize) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn len(&self) -> usize {
        0
    }
    fn highest_version(&self) -> Version {
        self.0
    }
    fn stats(&self, _report: &mut dyn FnMut(&'static str, u64)) {}
}
