//! Deterministic simulation of whole clusters (`kvsim`): the real sans-IO cluster core of
//! several nodes, each over a real log-structured store on a crashable in-memory disk, driven
//! in one thread from one seed, with faults injected and invariants checked.
//!
//! ```text
//!   seed ──▶ Params (swarm testing: every knob drawn unless fixed)   options.rs
//!              (3–7 nodes; 16–32 on a few seeds; spare ids for joins)
//!        ──▶ World: event queue in virtual time                      world.rs
//!              nodes   1–4 shards each, built by `assembly::assemble_node` as kvd builds    node.rs
//!                      them (LogStore, clock ceiling and hint log on a crashable MemVfs),
//!                      clock offset (a minority minutes off in half the seeds:
//!                      `--far-skew-ms`), sync policy; mail between shards  net.rs
//!              network delay, drop, duplicate, reorder, partitions (isolate, halves, random,
//!                      one-way, bridge) that start and heal
//!              disk    unsynced writes lost or torn on a crash; bits flipped at rest on one disk
//!              faults  crashes + restarts (higher incarnation), pauses, clock jumps,
//!                      membership changes (leave, remove, pause the moves)    elastic.rs
//!                      (join, replace: new nodes started as kvd --join)        joins.rs
//!              clients PUT / GET / DELETE frames, random consistency, coordinator and shard
//!        ──▶ History + checkers                                      check.rs
//!              (phantom-read, stale-read, version-order, write-order, clock-bound, ttl,
//!               convergence, lost-write, unanswered; history, flip, ring, placement, moved-bytes
//!               in elastic.rs)
//!        ──▶ Trace: every event as a line, FNV-hashed                trace.rs
//!
//!   ClusterSpec ──▶ Cluster: the same World driven by a test           script.rs
//!              (start, put/get/delete, crash, restart, partition, heal, run until a
//!               condition; no random clients, no fault schedule, no liveness phase)
//! ```
//!
//! A run has two phases (as TigerBeetle's VOPR): a **safety phase** with faults, in which
//! reads are checked as they are answered, then a **liveness phase** without faults (partitions
//! healed, nodes resumed and restarted, clocks sane, no drops) in which the replicas must
//! converge within a bounded simulated time. Until anti-entropy lands, convergence is driven by
//! read repair: the simulator issues ALL reads of every key whose replicas differ, and hinted
//! handoff delivers what it holds. Then the end checks run (convergence, lost writes, version
//! order).
//!
//! The same seed (and options) gives the same trace, bit for bit: one PRNG, virtual time,
//! BTreeMaps everywhere, no wall clock, no threads. A failure prints the seed and
//! `reproduce: kvsim --seed N --trace` with any fixed options.

mod causal;
pub mod check;
mod client;
mod elastic;
mod faults;
mod joins;
mod liveness;
mod net;
mod node;
pub mod options;
pub mod script;
pub mod trace;
pub mod world;

pub use check::Violation;
pub use options::{Mutation, Options, Params};
pub use script::{Cluster, ClusterSpec, Reply, Ticket};
pub use world::RunStats;

use options::{consistency_name, sync_name};

/// The result of one simulation.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// FNV-1a hash of the trace.
    pub trace_hash: u64,
    /// Trace lines.
    pub trace_lines: u64,
    /// Violated invariants (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Figures.
    pub stats: RunStats,
    /// The drawn parameters.
    pub params: Params,
}

impl Report {
    /// Whether every checker passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Run seed `seed` with `opts`; print the trace to stdout when `print_trace`.
pub fn run(seed: u64, opts: &Options, print_trace: bool) -> Report {
    let params = Params::draw(seed, opts);
    let mut world = world::World::new(seed, params.clone(), trace::Trace::new(print_trace, 0));
    world.run();
    for v in &world.hist.violations {
        world.trace.line(format_args!(
            "VIOLATION {} key={} {}",
            v.checker,
            v.key.as_deref().unwrap_or("-"),
            v.detail
        ));
    }
    Report {
        seed,
        trace_hash: world.trace.hash(),
        trace_lines: world.trace.lines(),
        violations: world.hist.violations.clone(),
        stats: world.stats.clone(),
        params,
    }
}

impl Options {
    /// The command-line flags that fix what these options fix (for `reproduce:` lines).
    pub fn to_args(&self) -> String {
        let mut a = String::new();
        if let Some(n) = self.nodes {
            a += &format!(" --nodes {n}");
        }
        if let Some(n) = self.replicas {
            a += &format!(" --replicas {n}");
        }
        if let Some(n) = self.shards {
            a += &format!(" --shards {n}");
        }
        if let Some(c) = self.consistency {
            a += &format!(" --consistency {}", consistency_name(c));
        }
        if let Some(s) = &self.sync {
            a += &format!(" --sync {}", sync_name(s));
        }
        if let Some(n) = self.ops {
            a += &format!(" --ops {n}");
        }
        if let Some(n) = self.safety_ms {
            a += &format!(" --safety-ms {n}");
        }
        if let Some(n) = self.drop_percent {
            a += &format!(" --drop-percent {n}");
        }
        if let Some(n) = self.fault_interval_ms {
            a += &format!(" --fault-interval-ms {n}");
        }
        if let Some(n) = self.skew_max_ms {
            a += &format!(" --skew-max-ms {n}");
        }
        if let Some(n) = self.jump_max_ms {
            a += &format!(" --jump-max-ms {n}");
        }
        if let Some(n) = self.far_skew_ms {
            a += &format!(" --far-skew-ms {n}");
        }
        if self.raw_clock_recovery {
            a += " --raw-clock-recovery";
        }
        if self.no_repair_reads {
            a += " --no-repair-reads";
        }
        if self.anti_entropy_only {
            a += " --anti-entropy-only";
        }
        match self.membership {
            Some(true) => a += " --membership on",
            Some(false) => a += " --membership off",
            None => {}
        }
        if self.mutation != Mutation::None {
            a += &format!(" --mutation {}", self.mutation.name());
        }
        if self.conflicts != crate::cluster::Conflicts::Lww {
            a += &format!(" --conflicts {}", self.conflicts.name());
        }
        a
    }
}
