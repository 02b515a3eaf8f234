//! The simulated world of one run: nodes (each the shard cores `kvd` runs, built by
//! [`crate::assembly::assemble_node`] over a crashable [`MemVfs`]), their clocks, the network
//! between them, the mail between a node's shards, the clients and the faults, all driven by
//! one event queue in virtual time from one seed.
//!
//! ```text
//!  event queue (BTreeMap by (time, sequence): a total, seed-determined order)
//!    Tick(node, shard)     on_cluster_tick + on_tick (store maintenance), every tick_ms
//!    Net(frame)            a peer frame arrives (or is dropped: partition, crash, restart)
//!    Mail(node, shard)     a batch from another shard of the node arrives
//!    Request(node, shard, op)  a client's request reaches a shard of its coordinator
//!    ClientNext / ClientTimeout
//!    Sync(node)            interval sync (and, with ack-before-sync, the late sync)
//!    Fault                 crash, pause, partition, clock jump, disk faults (safety phase)
//!    Restart / Unpause / Heal / OperatorRestart / DiskFreed
//!    Liveness / RepairRound
//!    AdminRound / ResumeMoves  operator commands until the ring shows them (elastic.rs)
//! ```
//!
//! The simulator decides nothing a shard decides: it feeds each shard core frames, mail and
//! ticks through the calls `kvd`'s event loop makes, ends each step with the core's
//! `finish_turn` (clock ceiling, group commit, held replies released), and moves what the
//! core put out. Files:
//!
//! ```text
//!  world.rs     the world, its events, the run loop
//!  node.rs      a node's life: start (assemble), crash, the end of a shard's step
//!  net.rs       peer frames between nodes, mail between shards, partitions
//!  client.rs    clients: requests as protocol frames, answers
//!  faults.rs    the fault schedule of the safety phase
//!  liveness.rs  the liveness phase: convergence, repair rounds, final checks
//!  elastic.rs   membership changes: leave, remove, pause (operator commands), rings seen,
//!               the placement and moved-bytes checkers
//!  joins.rs     membership changes: join and replace (a new node started as `kvd --join`)
//! ```
//!
//! **Links.** A frame is tagged with the lives (restart counts) of both ends when sent; it is
//! dropped on arrival if either end crashed or restarted since (its TCP connection died), if
//! the receiver is down, or if a partition separates them. A paused node's frames and mail
//! wait until it resumes. Each outbound link (node, shard, life) lands on one shard of the
//! receiving node, drawn when it is first used, as the kernel spreads connections over the
//! shards' `SO_REUSEPORT` listeners.

use super::check::{show_version, History, OpKind, REPAIR_CLIENT};
use super::node::Node;
use super::options::{range, sync_name, Mutation, Params};
use super::trace::{trace, Trace};
use crate::cluster::coordinator::Outcome;
use crate::cluster::{ClusterConfig, Mutations, Ring, SplitMix64};
use crate::shard::{Mail, SyncPolicy};
use crate::storage::logstore::LogConfig;
use std::collections::BTreeMap;

/// Wall-clock ms at simulated time 0 (node clocks are this plus time plus their offset).
pub const BASE_MS: u64 = 1_700_000_000_000;

/// Anti-entropy interval under the skip-read-repair mutation: longer than any simulation.
const SKIP_READ_REPAIR_AAE_INTERVAL_MS: u64 = 1_000_000_000;

/// Events processed at most per run (a runaway guard; a normal run needs far fewer).
const EVENTS_MAX: u64 = 20_000_000;

/// A peer frame in flight.
pub(super) struct Msg {
    pub from: u32,
    /// The shard whose link carries it.
    pub from_shard: usize,
    pub to: u32,
    /// For a reply: the shard whose link sent the request. `None` for a request (it lands on
    /// the shard that accepted the link).
    pub to_shard: Option<usize>,
    pub from_life: u64,
    pub to_life: u64,
    pub frame: Vec<u8>,
}

pub(super) enum Ev {
    Tick {
        node: u32,
        shard: usize,
    },
    Net(Msg),
    Mail {
        node: u32,
        life: u64,
        shard: usize,
        mail: Mail,
    },
    Request {
        node: u32,
        life: u64,
        shard: usize,
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
    /// Send the operator commands the ring does not show yet (elastic.rs).
    AdminRound,
    /// The schedule resumes the moves it paused.
    ResumeMoves,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    Safety,
    Liveness,
    Done,
}

pub(super) struct Client {
    pub busy: Option<u64>,
    /// Siblings mode: the write to send with the context of the read in flight
    /// (read-then-write), if any.
    pub then: Option<super::client::Then>,
    /// Siblings mode: the context this client last read of each key (some writes reuse it,
    /// as a client writing from an older read does).
    pub contexts: BTreeMap<u32, Vec<u8>>,
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
    /// Mail batches delivered between shards.
    pub mail: u64,
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
    /// Leaves and removals the ring finished (issue 12).
    pub membership_changes: u64,
    /// Nodes started to join the cluster (JOIN events).
    pub joins: u64,
    /// Nodes started to replace a dead member (REPLACE events).
    pub replaces: u64,
    /// Nodes that joined or replaced one and ended up members (status up) in the ring.
    pub admitted: u64,
    /// Bytes the partition copies moved (every node, every life).
    pub moved_bytes: u64,
    /// The minimum those copies had to move (see `elastic.rs`).
    pub moved_min_bytes: u64,
}

/// One simulation.
pub struct World {
    pub(super) p: Params,
    pub(super) rng: SplitMix64,
    pub(super) now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    pub(super) nodes: Vec<Node>,
    pub(super) config: ClusterConfig,
    pub(super) log_config: LogConfig,
    pub(super) ring: Ring,
    /// `blocked[from - 1][to - 1]`: frames from → to are dropped.
    pub(super) blocked: Vec<Vec<bool>>,
    pub(super) partitioned: bool,
    pub(super) clients: Vec<Client>,
    pub(super) ops_issued: u32,
    pub(super) issue_seq: u64,
    pub(super) phase: Phase,
    pub(super) liveness_start: u64,
    pub(super) repair_round: u64,
    /// Client ops that reached a node, with that node and its life then (`unanswered`).
    pub(super) reached: BTreeMap<u64, (u32, u64)>,
    /// The history and the checkers.
    pub hist: History,
    /// The trace.
    pub trace: Trace,
    /// Figures.
    pub stats: RunStats,
    /// Whether a few frames take ten times longer in the safety phase (reordering); the
    /// scripted cluster may turn it off.
    pub(super) reorder: bool,
    /// Answers to the scripted cluster's requests ([`super::script`]).
    pub(super) script: super::script::Inbox,
    /// Membership changes: commands asked, rings seen, moves counted ([`super::elastic`]).
    pub(super) elastic: super::elastic::Elastic,
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
            ack_before_sync: p.mutation == Mutation::AckBeforeSync,
            no_peer_routing: p.mutation == Mutation::NoPeerRouting,
            flip_before_copy: p.mutation == Mutation::FlipBeforeCopy,
            no_pending_writes: p.mutation == Mutation::NoPendingWrites,
            no_majority_commit: p.mutation == Mutation::NoMajorityCommit,
            no_ring_version_check: p.mutation == Mutation::NoRingVersionCheck,
            lww_anti_entropy: p.mutation == Mutation::LwwAntiEntropy,
        };
        config.conflicts = p.conflicts;
        config.tree_build_keys_per_tick = p.tree_build_keys_per_tick;
        config.validate().expect("drawn parameters are in range");
        let ids: Vec<u32> = (1..=p.nodes).collect();
        let ring = Ring::new(&ids, p.replicas);
        // Every id a run may use: the first members, then the spares joins take.
        let slots = p.nodes + p.spares;
        let log_config = LogConfig {
            segment_size_max: p.segment_size_max,
            compaction_dead_percent: 40,
            compaction_dead_bytes_min: 256,
            ..LogConfig::default()
        };
        let mut rng = SplitMix64::new(seed);
        let nodes: Vec<Node> = (1..=slots)
            .map(|id| {
                let skew = if p.skew_max_ms == 0 {
                    0
                } else {
                    range(&mut rng, 0, 2 * p.skew_max_ms) as i64 - p.skew_max_ms as i64
                };
                let far = p.far_nodes.iter().find(|(n, _)| *n == id).map(|(_, o)| *o);
                let mut n = Node::new(
                    id,
                    p.sync[id as usize - 1],
                    p.shards[id as usize - 1],
                    skew + far.unwrap_or(0),
                    far.is_some(),
                );
                n.spare = id > p.nodes;
                n
            })
            .collect();
        let syncs_on_ack = p.sync.iter().map(|s| *s == SyncPolicy::Always).collect();
        let mut hist = History::new(slots, p.replicas, syncs_on_ack, BASE_MS);
        hist.max_clock_offset_ms = p.max_clock_offset_ms;
        hist.siblings = p.conflicts == crate::cluster::Conflicts::Siblings;
        hist.shards = p.shards.clone();
        let near = nodes
            .iter()
            .filter(|n| !n.far && !n.spare)
            .map(|n| n.offset_ms);
        hist.near_offsets_ms = (
            near.clone().min().unwrap_or(0).min(0),
            near.max().unwrap_or(0).max(0),
        );
        for k in 0..p.keys {
            hist.prefs.insert(
                k,
                ring.preference_for_key(&super::check::key_name(k)).to_vec(),
            );
        }
        World {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            config,
            log_config,
            ring,
            blocked: vec![vec![false; slots as usize]; slots as usize],
            partitioned: false,
            clients: (0..p.clients)
                .map(|_| Client {
                    busy: None,
                    then: None,
                    contexts: BTreeMap::new(),
                })
                .collect(),
            ops_issued: 0,
            issue_seq: 0,
            phase: Phase::Safety,
            liveness_start: 0,
            repair_round: 0,
            reached: BTreeMap::new(),
            hist,
            trace,
            stats: RunStats::default(),
            reorder: true,
            script: Default::default(),
            elastic: Default::default(),
            p,
        }
    }

    pub(super) fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    /// Node `id`'s wall clock now.
    pub(super) fn node_now(&self, id: u32) -> u64 {
        let n = &self.nodes[id as usize - 1];
        (BASE_MS as i64 + self.now as i64 + n.offset_ms) as u64
    }

    pub(super) fn v(&self, v: crate::version::Version) -> String {
        show_version(v, BASE_MS)
    }

    pub(super) fn node(&self, id: u32) -> &Node {
        &self.nodes[id as usize - 1]
    }

    pub(super) fn node_mut(&mut self, id: u32) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// The ids in use so far, `1..=born()`: the first members and the spares that joins and
    /// replacements took (in id order); the ids above are spares that never ran.
    pub(super) fn born(&self) -> u32 {
        self.p.nodes + self.elastic.joined
    }

    /// Whether node `id` is up and not paused.
    pub(super) fn runnable(&self, id: u32) -> bool {
        let n = self.node(id);
        n.up.is_some() && n.paused_until == 0
    }

    /// Run the simulation to its end.
    pub fn run(&mut self) {
        self.p.describe(&mut self.trace);
        self.boot();
        // Let gossip settle (and the clocks be measured) before the clients start.
        let warm = self.p.warm_ms;
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
            let Some(t) = self.next_event_ms() else {
                break;
            };
            if self.stats.events >= EVENTS_MAX || t > end {
                self.now = t;
                self.trace.now_ms = t;
                self.stats.events += 1;
                self.hist.report(
                    "liveness",
                    None,
                    format!("the run did not end ({} events, {t} ms)", self.stats.events),
                );
                break;
            }
            self.step();
        }
        self.final_figures();
    }

    /// Start every node, with the first tick of each of its shards and its sync timer: the
    /// beginning of every run, scripted or not.
    pub(super) fn boot(&mut self) {
        for id in 1..=self.p.nodes {
            self.start_node(id);
            self.first_ticks(id, 0);
        }
    }

    /// The first tick of each shard of node `id`, within a tick after `from`.
    pub(super) fn first_ticks(&mut self, id: u32, from: u64) {
        for shard in 0..self.node(id).shards {
            let first = from + range(&mut self.rng, 0, self.p.tick_ms);
            self.at(first, Ev::Tick { node: id, shard });
        }
    }

    /// When the next event happens, if any is queued.
    pub(super) fn next_event_ms(&self) -> Option<u64> {
        self.queue.first_key_value().map(|(&(t, _), _)| t)
    }

    /// Handle the next event (virtual time moves to it); returns its time, or `None` when
    /// nothing is queued. The one step of both [`World::run`] and the scripted cluster.
    pub(super) fn step(&mut self) -> Option<u64> {
        let ((t, _), ev) = self.queue.pop_first()?;
        self.now = t;
        self.trace.now_ms = t;
        self.stats.events += 1;
        self.dispatch(ev);
        Some(t)
    }

    fn final_figures(&mut self) {
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            let Some(run) = &self.nodes[i].up else {
                continue;
            };
            let mut figures: BTreeMap<&'static str, u64> = BTreeMap::new();
            let mut peer_errors = 0;
            for core in &run.cores {
                core.store().stats(&mut |name, v| {
                    if matches!(
                        name,
                        "storage_keys" | "storage_segments" | "storage_compactions"
                    ) {
                        *figures.entry(&name["storage_".len()..]).or_default() += v;
                    }
                });
                if let Some(c) = core.cluster_node() {
                    c.stats_report(&mut |name, v| {
                        if name == "peer_errors" {
                            peer_errors += v;
                        }
                    });
                }
            }
            self.stats.compactions += figures.get("compactions").copied().unwrap_or(0);
            let shown: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
            trace!(self.trace, "n{id} storage {}", shown.join(" "));
            if peer_errors > 0 {
                self.hist.report(
                    "peer-frame",
                    None,
                    format!("n{id} could not decode {peer_errors} peer frames of its peers"),
                );
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
                (
                    OpKind::Get,
                    Some(Outcome::Found { .. } | Outcome::NotFound | Outcome::Siblings { .. }),
                ) => self.stats.reads_ok += 1,
                (_, Some(Outcome::Written { .. })) => self.stats.writes_acked += 1,
                _ => self.stats.failed += 1,
            }
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { node, shard } => {
                let next = self.now + self.p.tick_ms;
                self.at(next, Ev::Tick { node, shard });
                if self.runnable(node) && shard < self.node(node).shards {
                    self.tick_shard(node, shard);
                    self.observe_ring(node);
                }
            }
            Ev::Net(m) => self.deliver(m),
            Ev::Mail {
                node,
                life,
                shard,
                mail,
            } => self.deliver_mail(node, life, shard, mail),
            Ev::Request {
                node,
                life,
                shard,
                op,
            } => self.request(node, life, shard, op),
            Ev::ClientNext(c) => self.client_next(c),
            Ev::ClientTimeout(c, op) => self.client_timeout(c, op),
            Ev::Sync {
                node,
                life,
                periodic,
            } => {
                let n = self.node(node);
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
                    self.node_mut(node).late_sync = false;
                }
                self.sync_node(node);
            }
            Ev::Fault => self.fault(),
            Ev::Restart(id) => {
                if self.node(id).up.is_none() {
                    self.start_node(id);
                }
            }
            Ev::OperatorRestart(id) => self.operator_restart(id),
            Ev::Unpause(id) => {
                let now = self.now;
                let n = self.node_mut(id);
                if n.paused_until != 0 && n.paused_until <= now {
                    n.paused_until = 0;
                    trace!(self.trace, "n{id} resumes");
                }
            }
            Ev::DiskFreed(id) => {
                self.node(id).vfs.set_space_max(None);
                trace!(self.trace, "n{id} disk space freed");
            }
            Ev::Heal => self.heal(),
            Ev::Liveness => self.start_liveness(),
            Ev::RepairRound => self.repair_round(),
            Ev::AdminRound => self.admin_round(),
            Ev::ResumeMoves => self.resume_moves(),
        }
    }

    /// A one-line summary of the sync policies and shard counts, for reports.
    pub fn sync_summary(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("n{}:{}x{}", n.id, sync_name(&n.sync), n.shards))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
