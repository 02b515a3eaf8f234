//! What one simulation run looks like: the options a user may fix on the command line
//! ([`Options`]) and the parameters drawn from the seed for everything left open
//! ([`Params`]). Drawing every knob from the seed is *swarm testing* (as in TigerBeetle's
//! VOPR): some seeds run calm clusters, others drop half their frames or crash a node every
//! second, so rare combinations get explored without anyone listing them.

use super::trace::Trace;
use crate::cluster::{Conflicts, SplitMix64};
use crate::protocol::Consistency;
use crate::shard::SyncPolicy;

/// Most shards a simulated node has (drawn 1..=this unless fixed).
pub const SIM_SHARDS_MAX: usize = 4;

/// Percent of the seeds whose fault schedule changes membership (unless `--membership`).
pub const MEMBERSHIP_PERCENT: u64 = 60;

/// Weight of a membership change among the faults, drawn in this range when on (the other
/// faults weigh 0..=4 each): a few changes per run, each taking seconds to settle and move.
pub const MEMBERSHIP_WEIGHT_MIN: u64 = 1;
/// See [`MEMBERSHIP_WEIGHT_MIN`].
pub const MEMBERSHIP_WEIGHT_MAX: u64 = 4;

/// Per mille of the seeds (unless `--nodes`) that run a big cluster of
/// [`BIG_NODES_MIN`]..=[`BIG_NODES_MAX`] nodes, so placement, gossip and moves run beyond toy
/// sizes (issue 12).
pub const BIG_CLUSTER_PERMILLE: u64 = 30;
/// See [`BIG_CLUSTER_PERMILLE`].
pub const BIG_NODES_MIN: u64 = 16;
/// See [`BIG_CLUSTER_PERMILLE`].
pub const BIG_NODES_MAX: u64 = 32;
/// Client operations of a big cluster's safety phase at most (unless `--ops`): every node
/// gossips with every other, so a simulated second costs ~(nodes / 5)² more than in a small
/// cluster; fewer operations and a shorter safety phase keep the time per seed sane.
pub const BIG_OPS_MAX: u64 = 300;
/// Length of a big cluster's safety phase at most, in simulated ms (unless `--safety-ms`).
pub const BIG_SAFETY_MS_MAX: u64 = 5_000;
/// Longest gossip interval of a big cluster (drawn up to 150 ms otherwise): its warm-up
/// (below) lasts a number of intervals per node, and costs as much simulated time.
pub const BIG_GOSSIP_INTERVAL_MS_MAX: u64 = 60;
/// Gossip intervals per node a big cluster waits before its clients start (a small one
/// waits [`WARM_ROUNDS`]): a node coordinates writes only once it has measured its clock
/// against every live peer, one gossip round trip each, and with a fanout of 2 that takes
/// about n·ln(n)/2 intervals (a 32-node cluster's clients would otherwise spend their
/// operations on CLOCK_OFFSET refusals in the first second). The safety phase is longer by
/// as much.
pub const BIG_WARM_ROUNDS_PER_NODE: u64 = 2;
/// Gossip intervals a cluster of [`BIG_NODES_MIN`] nodes or fewer waits before its clients
/// start.
pub const WARM_ROUNDS: u64 = 3;
/// Shards of a big cluster's nodes at most (unless `--shards`), for the same reason: the
/// multi-shard paths are the small clusters' part, placement, gossip and moves at scale the
/// big ones'.
pub const BIG_SHARDS_MAX: u64 = 1;

/// Most node ids a seed holds in reserve for joins and replacements (drawn 1..=this on the
/// seeds whose schedule changes membership): each JOIN or REPLACE event uses a new one.
pub const SPARES_MAX: u64 = 3;

/// Most nodes of a simulated cluster (`--nodes`), beyond which the spare ids are added.
pub const SIM_NODES_MAX: u32 = BIG_NODES_MAX as u32;

/// Most keys per tick a simulated tree build lists on the seeds that draw a small step (the
/// simulator's stores hold tens to hundreds of keys per core).
pub const SIM_TREE_BUILD_KEYS_PER_TICK_MAX: u64 = 16;

/// A deliberate bug switched on to prove that the checkers catch it (`--mutation NAME`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    /// No mutation: the real system.
    #[default]
    None,
    /// The coordinator never repairs stale replicas on reads.
    SkipReadRepair,
    /// The shard releases acknowledgements before its store has synced (the sync comes a
    /// little later), on nodes whose policy promises durability on ack.
    AckBeforeSync,
    /// A delete's tombstone gets a version that does not beat the value it deletes.
    NoTombstoneVersion,
    /// Versions from too far ahead are accepted: a node ahead of the cluster's clock still
    /// coordinates writes, replicas store versions however far ahead of their clocks, and
    /// hybrid clocks follow them (the max-offset rule off on the "ahead" side).
    AcceptFutureVersions,
    /// A peer REPLICATE or READ is served by the shard whose link received it, not by the
    /// shard owning the key (multi-shard nodes).
    NoPeerRouting,
    /// Now and then a batch of reply records between two shards of a node is lost
    /// (multi-shard nodes): forwarded requests are never answered.
    DropForwardedReply,
    /// The node's membership view never reaches its other shards (multi-shard nodes).
    DropView,
    /// The leader flips a moving partition to its new owners without waiting for them to
    /// report it copied (issue 12).
    FlipBeforeCopy,
    /// While a partition moves, writes reach its current owners only, not the pending ones
    /// (issue 12).
    NoPendingWrites,
    /// A leader's ring state takes effect without a majority's acceptance (one history of
    /// ring states, node/ringvote.rs).
    NoMajorityCommit,
    /// Replicas serve a REPLICATE or READ whatever ring its sender holds: a coordinator
    /// that missed a ring change gets a write acknowledged by the old owners alone.
    NoRingVersionCheck,
    /// Siblings mode: anti-entropy and partition copies resolve a causal record by timestamp
    /// (the incoming state replaces the held one when its record's version is higher, else
    /// the held one stays) instead of merging the two states.
    LwwAntiEntropy,
}

impl Mutation {
    /// Every mutation's command-line name.
    pub const NAMES: [&'static str; 12] = [
        "skip-read-repair",
        "ack-before-sync",
        "no-tombstone-version",
        "accept-future-versions",
        "no-peer-routing",
        "drop-forwarded-reply",
        "drop-view",
        "flip-before-copy",
        "no-pending-writes",
        "no-majority-commit",
        "no-ring-version-check",
        "lww-anti-entropy",
    ];

    /// Parse a `--mutation` name.
    pub fn parse(s: &str) -> Result<Mutation, String> {
        match s {
            "none" => Ok(Mutation::None),
            "skip-read-repair" => Ok(Mutation::SkipReadRepair),
            "ack-before-sync" => Ok(Mutation::AckBeforeSync),
            "no-tombstone-version" => Ok(Mutation::NoTombstoneVersion),
            "accept-future-versions" => Ok(Mutation::AcceptFutureVersions),
            "no-peer-routing" => Ok(Mutation::NoPeerRouting),
            "drop-forwarded-reply" => Ok(Mutation::DropForwardedReply),
            "drop-view" => Ok(Mutation::DropView),
            "flip-before-copy" => Ok(Mutation::FlipBeforeCopy),
            "no-pending-writes" => Ok(Mutation::NoPendingWrites),
            "no-majority-commit" => Ok(Mutation::NoMajorityCommit),
            "no-ring-version-check" => Ok(Mutation::NoRingVersionCheck),
            "lww-anti-entropy" => Ok(Mutation::LwwAntiEntropy),
            _ => Err(format!(
                "unknown mutation {s:?}: expected one of none, {}",
                Mutation::NAMES.join(", ")
            )),
        }
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::None => "none",
            Mutation::SkipReadRepair => "skip-read-repair",
            Mutation::AckBeforeSync => "ack-before-sync",
            Mutation::NoTombstoneVersion => "no-tombstone-version",
            Mutation::AcceptFutureVersions => "accept-future-versions",
            Mutation::NoPeerRouting => "no-peer-routing",
            Mutation::DropForwardedReply => "drop-forwarded-reply",
            Mutation::DropView => "drop-view",
            Mutation::FlipBeforeCopy => "flip-before-copy",
            Mutation::NoPendingWrites => "no-pending-writes",
            Mutation::NoMajorityCommit => "no-majority-commit",
            Mutation::NoRingVersionCheck => "no-ring-version-check",
            Mutation::LwwAntiEntropy => "lww-anti-entropy",
        }
    }
}

/// Options fixed on the command line; `None` means "draw it from the seed".
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Cluster size at start (3..=[`SIM_NODES_MAX`]; drawn 3..=7, or a big cluster on
    /// [`BIG_CLUSTER_PERMILLE`] of the seeds).
    pub nodes: Option<u32>,
    /// Replicas per key (1..=nodes, at most 5).
    pub replicas: Option<usize>,
    /// Shards of every node (1..=[`SIM_SHARDS_MAX`]); otherwise drawn per node.
    pub shards: Option<usize>,
    /// Consistency of every request (otherwise a per-run mix of ONE/QUORUM/ALL).
    pub consistency: Option<Consistency>,
    /// Sync policy of every node (otherwise drawn per node).
    pub sync: Option<SyncPolicy>,
    /// Client operations in the safety phase.
    pub ops: Option<u32>,
    /// Length of the safety phase in simulated ms.
    pub safety_ms: Option<u64>,
    /// Percent of frames dropped in the safety phase.
    pub drop_percent: Option<u32>,
    /// Mean ms between two faults (crash, pause, partition, clock jump) in the safety phase;
    /// 0 turns faults off.
    pub fault_interval_ms: Option<u64>,
    /// Largest clock skew of a node at start, ± ms.
    pub skew_max_ms: Option<u64>,
    /// Largest clock jump, ± ms (0: no jumps).
    pub jump_max_ms: Option<u64>,
    /// Clock offsets of minutes (issue 10): a minority of nodes run this far (± up to it, at
    /// least a minute) from true time; 0: none.
    pub far_skew_ms: Option<u64>,
    /// The deliberate bug to switch on.
    pub mutation: Mutation,
    /// Restart nodes with the clock recovery of the real code alone (without the durable clock ceiling the driver keeps: shows bug sim-2,
    /// see `world.rs`); by default the simulator also recovers the clock above the highest
    /// version the node let out before its crash, as a durable clock ceiling would.
    pub raw_clock_recovery: bool,
    /// In the liveness phase, do not issue ALL reads to drive read repair: convergence must
    /// come from hinted handoff and anti-entropy alone.
    pub no_repair_reads: bool,
    /// Hinted handoff and read repair off in every node, and no repair-driving reads in the
    /// liveness phase: convergence must come from anti-entropy alone.
    pub anti_entropy_only: bool,
    /// Membership changes in the fault schedule (issue 12: joins, replacements, leaves,
    /// removals, pauses of the moves): `Some(true)` on every seed, `Some(false)` never; otherwise drawn (on for
    /// [`MEMBERSHIP_PERCENT`] of the seeds, and always under the elastic ring's mutations).
    pub membership: Option<bool>,
    /// How every node resolves concurrent writes (`--conflicts`): last-write-wins (the
    /// default, the runs of earlier versions exactly), or siblings, where the clients speak
    /// the causal protocol (read, then write with the context read) and the siblings
    /// checkers replace the last-write-wins ones (`check.rs`).
    pub conflicts: Conflicts,
}

/// Everything a run uses, drawn from the seed unless fixed in [`Options`].
#[derive(Clone, Debug)]
pub struct Params {
    /// Nodes the cluster starts with, ids 1..=nodes.
    pub nodes: u32,
    /// Node ids held in reserve for joins and replacements: nodes+1..=nodes+spares, each
    /// started (with a fresh disk) only when a JOIN or REPLACE event takes it.
    pub spares: u32,
    /// Replicas per key (N).
    pub replicas: usize,
    /// Shards of each node and spare (index id - 1).
    pub shards: Vec<usize>,
    /// Sync policy of each node and spare (index id - 1).
    pub sync: Vec<SyncPolicy>,
    /// Weights of ONE, QUORUM, ALL for client requests.
    pub consistency_weights: [u32; 3],
    /// Fixed consistency, if any.
    pub consistency: Option<Consistency>,
    /// Gossip interval of every node.
    pub gossip_interval_ms: u64,
    /// Failure threshold (gossip intervals).
    pub failure_threshold: u32,
    /// Coordinator request timeout.
    pub request_timeout_ms: u64,
    /// Period of each node's `on_tick` (and store maintenance).
    pub tick_ms: u64,
    /// Simulated clients.
    pub clients: u32,
    /// Distinct keys the clients use.
    pub keys: u32,
    /// Client operations in the safety phase.
    pub ops: u32,
    /// Percent of PUT, GET (the rest DELETE).
    pub put_percent: u32,
    /// Percent of GET.
    pub get_percent: u32,
    /// Percent of PUTs that carry a time to live.
    pub ttl_percent: u32,
    /// Length of the safety phase.
    pub safety_ms: u64,
    /// When the clients start (and the faults), after gossip settled: see
    /// [`BIG_WARM_ROUNDS_PER_NODE`].
    pub warm_ms: u64,
    /// Longest the liveness phase may take to converge.
    pub liveness_ms_max: u64,
    /// Network: smallest and largest one-way delay.
    pub delay_min_ms: u64,
    /// Largest one-way delay (a few frames take up to 10× longer: reordering).
    pub delay_max_ms: u64,
    /// Percent of frames dropped (safety phase).
    pub drop_percent: u32,
    /// Percent of frames duplicated (safety phase).
    pub dup_percent: u32,
    /// Mean ms between faults; 0 = no faults.
    pub fault_interval_ms: u64,
    /// Relative weights of crash, pause, partition, clock jump, failed sync, full disk.
    pub fault_weights: [u32; 6],
    /// Largest clock skew of a node at start, ± ms.
    pub skew_max_ms: u64,
    /// Largest clock jump, ± ms.
    pub jump_max_ms: u64,
    /// See [`Options::far_skew_ms`].
    pub far_skew_ms: u64,
    /// The nodes whose clocks are minutes off, and by how much (a minority).
    pub far_nodes: Vec<(u32, i64)>,
    /// Every node's `--max-clock-offset-ms` (the default).
    pub max_clock_offset_ms: u64,
    /// Percent of crashes that tear the unsynced tail instead of dropping it.
    pub torn_percent: u32,
    /// The one node whose disk flips bits at rest (after its crashes), if any.
    pub bad_disk: Option<u32>,
    /// Segment size of every store (small, so segments seal and compaction runs).
    pub segment_size_max: u64,
    /// The deliberate bug switched on.
    pub mutation: Mutation,
    /// See [`Options::raw_clock_recovery`].
    pub raw_clock_recovery: bool,
    /// See [`Options::no_repair_reads`].
    pub no_repair_reads: bool,
    /// See [`Options::anti_entropy_only`].
    pub anti_entropy_only: bool,
    /// Anti-entropy interval of every node (used once anti-entropy lands).
    pub anti_entropy_interval_ms: u64,
    /// Weight of membership changes among the faults (0: none), beside `fault_weights`.
    pub membership_weight: u32,
    /// See [`Options::conflicts`].
    pub conflicts: Conflicts,
    /// Keys a node's anti-entropy tree build lists per tick (0: by the store's size, as
    /// `kvd`): a few on half the seeds, so that builds span many ticks while writes, crashes,
    /// peers' requests (answered OVERLOADED) and removals under the listing go on.
    pub tree_build_keys_per_tick: usize,
}

fn pick<T: Copy>(
    rng: &mut SplitMix64,
    fixed: Option<T>,
    draw: impl FnOnce(&mut SplitMix64) -> T,
) -> T {
    match fixed {
        Some(v) => v,
        None => draw(rng),
    }
}

/// A number in `lo..=hi`.
pub fn range(rng: &mut SplitMix64, lo: u64, hi: u64) -> u64 {
    assert!(lo <= hi);
    lo + rng.below(hi - lo + 1)
}

impl Params {
    /// Draw the parameters of seed `seed` (its own PRNG stream), honouring `opts`.
    pub fn draw(seed: u64, opts: &Options) -> Params {
        // A stream of its own, so fixing one option does not shift the other draws much.
        let mut rng = SplitMix64::new(seed ^ 0x5157_4152_4D00_0000);
        let r = &mut rng;
        let nodes = pick(r, opts.nodes, |r| range(r, 3, 7) as u32);
        let replicas = pick(r, opts.replicas, |r| {
            if r.below(10) == 0 {
                1
            } else {
                range(r, 2, u64::from(nodes).min(5)) as usize
            }
        });
        let draw_sync = |r: &mut SplitMix64| {
            // Each draw consumes the PRNG even when fixed, to keep the stream aligned.
            let p = match r.below(4) {
                0 | 1 => SyncPolicy::Always,
                2 => SyncPolicy::Interval {
                    ms: range(r, 20, 500),
                },
                _ => SyncPolicy::Never,
            };
            opts.sync.unwrap_or(p)
        };
        let mut sync: Vec<SyncPolicy> = (0..nodes).map(|_| draw_sync(r)).collect();
        let consistency_weights = [
            range(r, 0, 4) as u32,
            range(r, 1, 6) as u32,
            range(r, 0, 3) as u32,
        ];
        let gossip_interval_ms = range(r, 20, 150);
        let failure_threshold = range(r, 3, 8) as u32;
        let request_timeout_ms = range(r, 100, 800);
        let tick_ms = range(r, 5, 20);
        let clients = range(r, 1, 8) as u32;
        let keys = range(r, 3, 60) as u32;
        let ops = pick(r, opts.ops, |r| range(r, 50, 1_000) as u32);
        let put_percent = range(r, 30, 60) as u32;
        let get_percent = range(r, 20, 100 - u64::from(put_percent) - 5) as u32;
        let ttl_percent = if r.below(2) == 0 {
            0
        } else {
            range(r, 1, 40) as u32
        };
        let safety_ms = pick(r, opts.safety_ms, |r| range(r, 3_000, 30_000));
        let delay_min_ms = range(r, 0, 3);
        let delay_max_ms = delay_min_ms + range(r, 1, 30);
        let drop_percent = pick(r, opts.drop_percent, |r| match r.below(4) {
            0 => 0,
            1 | 2 => range(r, 1, 5) as u32,
            _ => range(r, 5, 30) as u32,
        });
        let dup_percent = if r.below(2) == 0 {
            0
        } else {
            range(r, 1, 10) as u32
        };
        let fault_interval_ms = pick(r, opts.fault_interval_ms, |r| match r.below(8) {
            0 => 0,
            _ => range(r, 200, 3_000),
        });
        let fault_weights = [
            range(r, 0, 4) as u32,
            range(r, 0, 3) as u32,
            range(r, 0, 4) as u32,
            range(r, 0, 3) as u32,
            range(r, 0, 1) as u32,
            range(r, 0, 1) as u32,
        ];
        let skew_max_ms = pick(r, opts.skew_max_ms, |r| {
            [0, 5, 50, 500][r.below(4) as usize]
        });
        let jump_max_ms = pick(r, opts.jump_max_ms, |r| {
            [10, 200, 5_000][r.below(3) as usize]
        });
        let torn_percent = range(r, 0, 100) as u32;
        let bad_disk = (r.below(3) == 0).then(|| range(r, 1, u64::from(nodes)) as u32);
        let anti_entropy_interval_ms = range(r, 200, 5_000);
        let segment_size_max = [512, 2_048, 16_384][r.below(3) as usize];
        // Drawn last so the draws above stay those of earlier versions of the simulator.
        let far_skew_ms = pick(r, opts.far_skew_ms, |r| {
            if r.below(2) == 0 {
                0
            } else {
                range(r, 60_000, 600_000)
            }
        });
        // Drawn after the others, for the same reason.
        let mut shards: Vec<usize> = (0..nodes)
            .map(|_| {
                let k = range(r, 1, SIM_SHARDS_MAX as u64) as usize;
                opts.shards.unwrap_or(k)
            })
            .collect();
        // Drawn after the others, for the same reason.
        let drawn_weight = if r.below(100) < MEMBERSHIP_PERCENT {
            range(r, MEMBERSHIP_WEIGHT_MIN, MEMBERSHIP_WEIGHT_MAX) as u32
        } else {
            0
        };
        let elastic_mutation = matches!(
            opts.mutation,
            Mutation::FlipBeforeCopy
                | Mutation::NoPendingWrites
                | Mutation::NoMajorityCommit
                | Mutation::NoRingVersionCheck
        );
        let membership_weight = match opts.membership {
            Some(false) => 0,
            Some(true) => drawn_weight.max(MEMBERSHIP_WEIGHT_MIN as u32),
            None if elastic_mutation => MEMBERSHIP_WEIGHT_MAX as u32,
            None => drawn_weight,
        };
        let mut far_nodes = Vec::new();
        if far_skew_ms > 0 {
            // A minority, so that the median clock is a sane one and the others serve.
            let count = range(r, 1, u64::from((nodes - 1) / 2)) as usize;
            let mut ids: Vec<u32> = (1..=nodes).collect();
            for k in 0..count {
                let j = k + r.below((ids.len() - k) as u64) as usize;
                ids.swap(k, j);
                let off = range(r, 60_000.min(far_skew_ms), far_skew_ms) as i64;
                far_nodes.push((ids[k], if r.below(2) == 0 { off } else { -off }));
            }
            far_nodes.sort_unstable();
        }
        // Drawn after the others, for the same reason: a few seeds run a big cluster (the
        // nodes past the first ones drawn above get their own sync policy and shards).
        let (mut nodes, mut ops, mut safety_ms) = (nodes, ops, safety_ms);
        let mut gossip_interval_ms = gossip_interval_ms;
        let warm_ms_of = |nodes: u32, gossip_interval_ms: u64| {
            if u64::from(nodes) >= BIG_NODES_MIN {
                gossip_interval_ms * BIG_WARM_ROUNDS_PER_NODE * u64::from(nodes)
            } else {
                gossip_interval_ms * WARM_ROUNDS
            }
        };
        if opts.nodes.is_none() && r.below(1_000) < BIG_CLUSTER_PERMILLE {
            let big = range(r, BIG_NODES_MIN, BIG_NODES_MAX) as u32;
            for _ in nodes..big {
                sync.push(draw_sync(r));
                let k = range(r, 1, SIM_SHARDS_MAX as u64) as usize;
                shards.push(opts.shards.unwrap_or(k));
            }
            for k in shards.iter_mut() {
                *k = opts.shards.unwrap_or((*k).min(BIG_SHARDS_MAX as usize));
            }
            nodes = big;
            ops = opts.ops.unwrap_or(ops.min(BIG_OPS_MAX as u32));
            gossip_interval_ms = gossip_interval_ms.min(BIG_GOSSIP_INTERVAL_MS_MAX);
            safety_ms = opts
                .safety_ms
                .unwrap_or(warm_ms_of(big, gossip_interval_ms) + safety_ms.min(BIG_SAFETY_MS_MAX));
        }
        let warm_ms = warm_ms_of(nodes, gossip_interval_ms);
        // The spare ids joins and replacements take, with their sync policies and shards.
        let spares = if membership_weight > 0 {
            range(r, 1, SPARES_MAX) as u32
        } else {
            0
        };
        for _ in 0..spares {
            sync.push(draw_sync(r));
            let most = if nodes as u64 >= BIG_NODES_MIN {
                BIG_SHARDS_MAX
            } else {
                SIM_SHARDS_MAX as u64
            };
            let k = range(r, 1, most) as usize;
            shards.push(opts.shards.unwrap_or(k));
        }
        // Drawn after the others, for the same reason.
        let tree_build_keys_per_tick = if r.below(2) == 0 {
            0
        } else {
            range(r, 1, SIM_TREE_BUILD_KEYS_PER_TICK_MAX) as usize
        };
        Params {
            nodes,
            spares,
            replicas,
            shards,
            sync,
            consistency_weights,
            consistency: opts.consistency,
            gossip_interval_ms,
            failure_threshold,
            request_timeout_ms,
            tick_ms,
            clients,
            keys,
            ops,
            put_percent,
            get_percent,
            ttl_percent,
            safety_ms,
            warm_ms,
            liveness_ms_max: 60_000,
            delay_min_ms,
            delay_max_ms,
            drop_percent,
            dup_percent,
            fault_interval_ms,
            fault_weights,
            skew_max_ms,
            jump_max_ms,
            far_skew_ms,
            far_nodes,
            max_clock_offset_ms: crate::limits::MAX_CLOCK_OFFSET_MS_DEFAULT,
            torn_percent,
            bad_disk,
            segment_size_max,
            mutation: opts.mutation,
            raw_clock_recovery: opts.raw_clock_recovery,
            no_repair_reads: opts.no_repair_reads || opts.anti_entropy_only,
            anti_entropy_only: opts.anti_entropy_only,
            anti_entropy_interval_ms,
            tree_build_keys_per_tick,
            membership_weight,
            // The mutation is one of siblings mode: it switches the mode on.
            conflicts: if opts.mutation == Mutation::LwwAntiEntropy {
                Conflicts::Siblings
            } else {
                opts.conflicts
            },
        }
    }

    /// Write the parameters to the trace (first lines of every run).
    pub fn describe(&self, trace: &mut Trace) {
        let sync: Vec<String> = self.sync.iter().map(sync_name).collect();
        trace.line(format_args!(
            "params nodes={} spares={} N={} shards={:?} sync=[{}] consistency={} \
             weights(one,quorum,all)={:?}",
            self.nodes,
            self.spares,
            self.replicas,
            self.shards,
            sync.join(","),
            self.consistency.map_or("mix", consistency_name),
            self.consistency_weights
        ));
        trace.line(format_args!(
            "params gossip={}ms threshold={} timeout={}ms tick={}ms clients={} keys={} ops={} \
             put%={} get%={} ttl%={} safety={}ms",
            self.gossip_interval_ms,
            self.failure_threshold,
            self.request_timeout_ms,
            self.tick_ms,
            self.clients,
            self.keys,
            self.ops,
            self.put_percent,
            self.get_percent,
            self.ttl_percent,
            self.safety_ms
        ));
        trace.line(format_args!(
            "params delay={}..{}ms drop%={} dup%={} faults every ~{}ms weights(crash,pause,\
             partition,jump,sync-fail,disk-full)={:?} skew=±{}ms jump=±{}ms far={:?} torn%={} \
             bad_disk={:?} segment={}B mutation={} membership={}",
            self.delay_min_ms,
            self.delay_max_ms,
            self.drop_percent,
            self.dup_percent,
            self.fault_interval_ms,
            self.fault_weights,
            self.skew_max_ms,
            self.jump_max_ms,
            self.far_nodes,
            self.torn_percent,
            self.bad_disk,
            self.segment_size_max,
            self.mutation.name(),
            self.membership_weight
        ));
        // (Only when not the default, so that last-write-wins runs trace as they always did.)
        if self.conflicts != Conflicts::Lww {
            trace.line(format_args!("params conflicts={}", self.conflicts.name()));
        }
        if self.tree_build_keys_per_tick > 0 {
            trace.line(format_args!(
                "params tree_build_keys_per_tick={}",
                self.tree_build_keys_per_tick
            ));
        }
    }

    /// Draw a consistency level for one request.
    pub fn draw_consistency(&self, rng: &mut SplitMix64) -> Consistency {
        if let Some(c) = self.consistency {
            return c;
        }
        let w = self.consistency_weights;
        let total = u64::from(w[0] + w[1] + w[2]);
        let x = rng.below(total.max(1)) as u32;
        if x < w[0] {
            Consistency::One
        } else if x < w[0] + w[1] || total == 0 {
            Consistency::Quorum
        } else {
            Consistency::All
        }
    }
}

/// `always`, `never`, `interval:MS`.
pub fn sync_name(p: &SyncPolicy) -> String {
    match p {
        SyncPolicy::Always => "always".into(),
        SyncPolicy::Never => "never".into(),
        SyncPolicy::Interval { ms } => format!("interval:{ms}"),
    }
}

/// `ONE`, `QUORUM`, `ALL`.
pub fn consistency_name(c: Consistency) -> &'static str {
    match c {
        Consistency::One => "ONE",
        Consistency::Default | Consistency::Quorum => "QUORUM",
        Consistency::All => "ALL",
    }
}
