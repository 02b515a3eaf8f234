//! The scripted cluster: the simulator's [`World`] driven by a test, one call at a time,
//! instead of by random clients and a fault schedule. It is the one in-process cluster
//! harness of the crate: the cluster tests (`tests/cluster_core.rs`, `tests/anti_entropy.rs`)
//! and the anti-entropy bench run the shard cores `kvd` ships, over their crashable disks,
//! through it.
//!
//! ```text
//!  Cluster::start(ClusterSpec)   World::new + boot, then run until every shard of every node
//!                                sees every node alive and accepts writes (clocks measured)
//!  put / get / delete / request  a protocol frame on a connection of its own to a shard of
//!                                the node (Conn::Script in node.rs); the event loop runs until
//!                                the answer frame comes back through the node's reply
//!                                records, or a bounded time passes
//!  send / try_answer / wait      the same without blocking: several requests in flight
//!  crash / restart               the process dies (unsynced writes lost); it starts again
//!                                over its disk with a higher incarnation
//!  partition / heal              frames between sides are dropped
//!  run_for / run_until           virtual time passes (gossip, timeouts, hints, anti-entropy)
//!  replica / stats / preference  what a node holds for a key (read from the shard owning it),
//!                                its STATS figures summed over its shards, the ring's owners
//!  violations                    what the world's checkers recorded, plus unanswered
//!                                requests and undecodable peer frames
//! ```
//!
//! Scripted mode has no random clients, no fault schedule and no liveness phase: what
//! happens is what the script asks, plus what the nodes do on their own (ticks, gossip,
//! timeouts, anti-entropy, hint delivery) and the seeded network (delays, and drops,
//! duplicates and reordering only when the spec asks). The same spec (seed included) and the
//! same calls give the same run, bit for bit: [`Cluster::trace_hash`] shows it.
//!
//! A request's answer that is not a node's (the node was down, or nothing came back in time)
//! is the harness's own [`Outcome::Failed`], with a message that starts with `harness:`.

use super::node::script_conn;
use super::options::{Options, Params};
use super::trace::{trace, Trace};
use super::world::{World, BASE_MS};
use super::Violation;
use crate::cluster::coordinator::Outcome;
use crate::cluster::{Conflicts, MEMBERSHIP_SHARD};
use crate::hash::shard_of;
use crate::limits;
use crate::protocol::{frame, op, Consistency, Request, Response, Status};
use crate::shard::{Session, SyncPolicy};
use crate::storage::Stored;
use crate::version::Version;
use std::collections::BTreeMap;

/// How long [`Cluster::start`] may take to settle, in gossip intervals (a node measures its
/// clock against every peer within a few intervals; this is far beyond).
const SETTLE_INTERVALS_MAX: u64 = 200;

/// A blocking request waits for its answer this long beyond twice the coordinator's request
/// timeout (re-issues, hint-free retries, mail between shards).
const ANSWER_SLACK_MS: u64 = 1_000;

/// A cluster to start: every knob of the nodes and of the network. [`ClusterSpec::new`]
/// gives `kvd`'s defaults for the cluster and a calm, fast network.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Nodes, ids `1..=nodes`.
    pub nodes: u32,
    /// Replicas per key (N).
    pub replicas: usize,
    /// Shards per node: node `id` gets `shards[(id - 1) % shards.len()]` (so `[1, 2, 3]`
    /// mixes counts, and `[k]` gives every node `k`).
    pub shards: Vec<usize>,
    /// Sync policy of every node.
    pub sync: SyncPolicy,
    /// The seed of the run (network delays, the shard a request lands on, link placement).
    pub seed: u64,
    /// `--gossip-interval-ms`.
    pub gossip_interval_ms: u64,
    /// `--failure-threshold`.
    pub failure_threshold: u32,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: u64,
    /// `--anti-entropy-interval-ms`.
    pub anti_entropy_interval_ms: u64,
    /// `--tombstone-window-ms`.
    pub tombstone_window_ms: u64,
    /// Hinted handoff on.
    pub hinted_handoff: bool,
    /// Read repair on.
    pub read_repair: bool,
    /// Period of each shard's ticks (cluster core and store maintenance).
    pub tick_ms: u64,
    /// Smallest one-way delay of a peer frame.
    pub delay_min_ms: u64,
    /// Largest one-way delay of a peer frame.
    pub delay_max_ms: u64,
    /// Percent of peer frames dropped (see [`Cluster::set_drop_percent`]).
    pub drop_percent: u32,
    /// Percent of peer frames duplicated.
    pub dup_percent: u32,
    /// One frame in twenty takes ten times longer (reordering).
    pub reorder: bool,
    /// Segment size of every store.
    pub segment_size_max: u64,
    /// Dead share of a segment (percent) that makes it a compaction candidate.
    pub compaction_dead_percent: u8,
    /// Dead bytes a segment needs at least to be compacted.
    pub compaction_dead_bytes_min: u64,
    /// Print the trace to stdout (debugging a test).
    pub print_trace: bool,
    /// `--conflicts` of every node.
    pub conflicts: Conflicts,
}

impl ClusterSpec {
    /// `nodes` nodes with `replicas` replicas per key, one shard each, syncing every write,
    /// `kvd`'s defaults otherwise, on a network of 1 to 3 ms without faults.
    pub fn new(nodes: u32, replicas: usize) -> ClusterSpec {
        ClusterSpec {
            nodes,
            replicas,
            shards: vec![1],
            sync: SyncPolicy::Always,
            seed: 1,
            gossip_interval_ms: limits::GOSSIP_INTERVAL_MS_DEFAULT,
            failure_threshold: limits::FAILURE_THRESHOLD_DEFAULT,
            request_timeout_ms: limits::REQUEST_TIMEOUT_MS_DEFAULT,
            anti_entropy_interval_ms: limits::ANTI_ENTROPY_INTERVAL_MS_DEFAULT,
            tombstone_window_ms: limits::TOMBSTONE_WINDOW_MS_DEFAULT,
            hinted_handoff: true,
            read_repair: true,
            tick_ms: 5,
            delay_min_ms: 1,
            delay_max_ms: 3,
            drop_percent: 0,
            dup_percent: 0,
            reorder: false,
            segment_size_max: crate::storage::logstore::LogConfig::default().segment_size_max,
            compaction_dead_percent: 40,
            compaction_dead_bytes_min: 256,
            print_trace: false,
            conflicts: Conflicts::Lww,
        }
    }

    /// The shards of node `id`.
    pub fn shards_of(&self, id: u32) -> usize {
        self.shards[(id as usize - 1) % self.shards.len()]
    }

    /// The simulator's parameters for this spec: everything the random run draws is fixed
    /// here (no clients, no faults, no clock skew).
    fn params(&self) -> Params {
        let opts = Options {
            nodes: Some(self.nodes),
            replicas: Some(self.replicas),
            sync: Some(self.sync),
            ops: Some(0),
            drop_percent: Some(self.drop_percent),
            fault_interval_ms: Some(0),
            skew_max_ms: Some(0),
            jump_max_ms: Some(0),
            far_skew_ms: Some(0),
            conflicts: self.conflicts,
            ..Options::default()
        };
        let mut p = Params::draw(self.seed, &opts);
        p.shards = (1..=self.nodes).map(|id| self.shards_of(id)).collect();
        p.gossip_interval_ms = self.gossip_interval_ms;
        p.failure_threshold = self.failure_threshold;
        p.request_timeout_ms = self.request_timeout_ms;
        p.anti_entropy_interval_ms = self.anti_entropy_interval_ms;
        p.tick_ms = self.tick_ms;
        p.clients = 0;
        p.keys = 0;
        p.ttl_percent = 0;
        p.delay_min_ms = self.delay_min_ms;
        p.delay_max_ms = self.delay_max_ms;
        p.dup_percent = self.dup_percent;
        p.fault_weights = [0; 6];
        p.membership_weight = 0;
        p.spares = 0;
        p.far_nodes = Vec::new();
        p.torn_percent = 0;
        p.bad_disk = None;
        p.segment_size_max = self.segment_size_max;
        p
    }
}

/// A request sent with [`Cluster::send`], to collect its answer with
/// [`Cluster::try_answer`] or [`Cluster::wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// An answer frame to a scripted request, with the coordinator's own outcome when it kept
/// one (it carries what the wire does not: re-issues, expiry).
#[derive(Clone, Debug)]
pub struct Reply {
    /// The whole answer frame, as a client would read it.
    pub frame: Vec<u8>,
    kept: Option<Outcome>,
}

impl Reply {
    /// The answer as a response (a reply record always holds one whole frame).
    pub fn response(&self) -> Option<Response<'_>> {
        let (f, _) = frame::parse(&self.frame).ok().flatten()?;
        Response::from_frame(&f)
    }

    /// The answer's status, if it is a response with a known one.
    pub fn status(&self) -> Option<Status> {
        self.response().and_then(|r| r.status())
    }

    /// The body as text (STATS, CLUSTER).
    pub fn text(&self) -> String {
        self.response()
            .map(|r| String::from_utf8_lossy(r.body).into_owned())
            .unwrap_or_default()
    }

    /// The answer to a GET, PUT or DELETE as an outcome: the coordinator's when it agrees
    /// with the frame (it carries more), else the frame's.
    pub fn outcome(&self) -> Outcome {
        let Some(r) = self.response() else {
            return harness_failure(Status::Malformed, "the answer is not a response frame");
        };
        let Some(status) = r.status() else {
            return harness_failure(Status::Malformed, &format!("unknown status {}", r.status));
        };
        let wire = match (status, r.op) {
            (Status::Ok, op::GET) => match r.version_and_rest() {
                Some((v, value)) => Outcome::Found {
                    version: Version(v),
                    value: value.to_vec(),
                    expires_at_ms: 0,
                },
                None => return harness_failure(Status::Malformed, "a GET answer without version"),
            },
            (Status::Ok, _) => match r.version_and_rest() {
                Some((v, _)) => Outcome::Written {
                    version: Version(v),
                    reissues: 0,
                },
                None => {
                    return harness_failure(Status::Malformed, "a write answer without version")
                }
            },
            (Status::NotFound, op::GET) => Outcome::NotFound,
            (status, _) => Outcome::Failed {
                status,
                message: r.message(),
            },
        };
        match (&self.kept, &wire) {
            (Some(k @ Outcome::Written { version, .. }), Outcome::Written { version: w, .. })
            | (Some(k @ Outcome::Found { version, .. }), Outcome::Found { version: w, .. })
                if version == w =>
            {
                k.clone()
            }
            _ => wire,
        }
    }
}

/// An answer the harness makes up (the node was down, or never answered in time).
fn harness_failure(status: Status, why: &str) -> Outcome {
    Outcome::Failed {
        status,
        message: format!("harness: {why}"),
    }
}

/// The scripted requests in flight and their answers (kept by the world: answers arrive
/// through its reply records).
#[derive(Default)]
pub(super) struct Inbox {
    /// The next request number.
    next: u64,
    /// Requests sent and not answered yet: number → (node, its life then, sent at ms).
    waiting: BTreeMap<u64, (u32, u64, u64)>,
    /// Answers not taken yet.
    answers: BTreeMap<u64, Reply>,
}

impl World {
    /// An answer frame for scripted request `n`.
    pub(super) fn script_answer(&mut self, n: u64, frame: Vec<u8>, kept: Option<Outcome>) {
        if self.script.waiting.remove(&n).is_none() {
            self.hist.report(
                "reply",
                None,
                format!("scripted request {n} answered twice (or never sent)"),
            );
            return;
        }
        trace!(self.trace, "script request {n} answered");
        self.script.answers.insert(n, Reply { frame, kept });
    }
}

/// A running scripted cluster.
pub struct Cluster {
    w: World,
    spec: ClusterSpec,
    /// Violations found by the harness itself (peer frames a crashed node could not decode).
    found: Vec<Violation>,
}

impl Cluster {
    /// Start the cluster of `spec` and run until it has settled ([`Cluster::settled`]).
    /// Panics when the spec is out of range or the cluster does not settle: a test cannot
    /// go on from there.
    pub fn start(spec: ClusterSpec) -> Cluster {
        let mut c = Cluster::start_unsettled(spec);
        let max_ms = SETTLE_INTERVALS_MAX * c.spec.gossip_interval_ms;
        assert!(
            c.run_until(max_ms, |c| c.settled()).is_some(),
            "the cluster did not settle within {max_ms} ms"
        );
        c
    }

    /// Start the cluster of `spec` without waiting for anything: at time 0 every node has
    /// just started and knows nothing of the others.
    pub fn start_unsettled(spec: ClusterSpec) -> Cluster {
        assert!(
            !spec.shards.is_empty() && spec.shards.iter().all(|&s| s >= 1),
            "every node needs a shard"
        );
        let p = spec.params();
        let mut w = World::new(spec.seed, p, Trace::new(spec.print_trace, 0));
        w.config.hinted_handoff = spec.hinted_handoff;
        w.config.read_repair = spec.read_repair;
        w.config.tombstone_window_ms = spec.tombstone_window_ms;
        if let Err(e) = w.config.validate() {
            panic!("cluster spec out of range: {e}");
        }
        w.log_config.compaction_dead_percent = spec.compaction_dead_percent;
        w.log_config.compaction_dead_bytes_min = spec.compaction_dead_bytes_min;
        w.reorder = spec.reorder;
        w.p.describe(&mut w.trace);
        w.boot();
        Cluster {
            w,
            spec,
            found: Vec::new(),
        }
    }

    /// The spec the cluster started from.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Simulated ms since the start.
    pub fn now_ms(&self) -> u64 {
        self.w.now
    }

    /// Node `id`'s wall clock now (what its shards are given as `now`).
    pub fn node_now_ms(&self, id: u32) -> u64 {
        self.w.node_now(id)
    }

    /// The wall clock of simulated time 0 (versions carry wall ms).
    pub fn base_ms(&self) -> u64 {
        BASE_MS
    }

    /// Peer frames delivered so far.
    pub fn frames_delivered(&self) -> u64 {
        self.w.stats.frames
    }

    /// Events handled so far.
    pub fn events(&self) -> u64 {
        self.w.stats.events
    }

    /// FNV-1a hash of the trace so far: the same spec and calls give the same hash.
    pub fn trace_hash(&self) -> u64 {
        self.w.trace.hash()
    }

    /// Whether node `id` is up.
    pub fn is_up(&self, id: u32) -> bool {
        self.w.node(id).up.is_some()
    }

    /// The nodes holding `key`, in preference order (the ring's, as every node computes it).
    pub fn preference(&self, key: &[u8]) -> Vec<u32> {
        self.w.ring.preference_for_key(key).to_vec()
    }

    /// Whether the cluster has settled: every shard of every node that is up sees exactly
    /// the nodes that are up as alive, and accepts writes (its clock is measured against
    /// every live peer and within the max offset).
    pub fn settled(&self) -> bool {
        let up: Vec<u32> = (1..=self.spec.nodes).filter(|&id| self.is_up(id)).collect();
        up.iter().all(|&id| {
            let now_ms = self.w.node_now(id);
            let run = self.w.node(id).up.as_ref().expect("filtered on up");
            run.cores.iter().all(|core| {
                core.cluster_node().is_some_and(|c| {
                    c.alive_ids() == up
                        && c.clock_refusal(now_ms).is_none()
                        && c.ring_lease_valid(now_ms)
                })
            })
        })
    }

    /// Run until the cluster has settled again (after a restart or a heal), at most
    /// `max_ms`; returns how long it took.
    pub fn wait_settled(&mut self, max_ms: u64) -> Option<u64> {
        self.run_until(max_ms, |c| c.settled())
    }

    /// Let `ms` of simulated time pass.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.w.now + ms;
        self.advance_to(end);
    }

    /// Run until `cond` holds (checked now and after every simulated ms), at most `max_ms`;
    /// returns how long it took, `None` if it never held.
    pub fn run_until(
        &mut self,
        max_ms: u64,
        mut cond: impl FnMut(&mut Cluster) -> bool,
    ) -> Option<u64> {
        let start = self.w.now;
        loop {
            if cond(self) {
                return Some(self.w.now - start);
            }
            if self.w.now >= start + max_ms {
                return None;
            }
            let next = self.w.now + 1;
            self.advance_to(next);
        }
    }

    /// Handle every event up to `t`, then move the clock to `t`.
    fn advance_to(&mut self, t: u64) {
        while self.w.next_event_ms().is_some_and(|at| at <= t) {
            self.w.step();
        }
        self.w.now = self.w.now.max(t);
        self.w.trace.now_ms = self.w.now;
    }

    /// Send `req` to node `id` on a connection of its own, landing on a shard drawn from the
    /// seed (as the kernel spreads connections); `None` if the node is down (refused).
    pub fn send(&mut self, id: u32, req: &Request<'_>) -> Option<Ticket> {
        let shards = self.w.node(id).shards as u64;
        let shard = self.w.rng.below(shards) as usize;
        self.send_to(id, shard, req)
    }

    /// Send `req` to shard `shard` of node `id` (see [`Cluster::send`]).
    pub fn send_to(&mut self, id: u32, shard: usize, req: &Request<'_>) -> Option<Ticket> {
        let (life, shards) = {
            let n = self.w.node(id);
            n.up.as_ref()?;
            (n.life, n.shards)
        };
        assert!(shard < shards, "node {id} has {shards} shards");
        let n = self.w.script.next;
        self.w.script.next += 1;
        let conn = script_conn(n);
        let mut bytes = Vec::new();
        req.encode(n as u32, &mut bytes);
        let (f, _) = frame::parse(&bytes)
            .expect("an encoded request is a frame")
            .expect("and a whole one");
        trace!(
            self.w.trace,
            "script request {n} {} via n{id}/{shard}",
            op::name(req.op())
        );
        let now = self.w.now;
        self.w.script.waiting.insert(n, (id, life, now));
        let now_ms = self.w.node_now(id);
        let mut session = Session::default();
        let mut wbuf = Vec::new();
        let _ = self.w.running(id).cores[shard].on_frame(now_ms, conn, &mut session, f, &mut wbuf);
        // Answered at once (the shard's own checks, STATS, CLUSTER, ...).
        let mut at = 0;
        while let Ok(Some((f, len))) = frame::parse(&wbuf[at..]) {
            let rid = f.id;
            let answer = wbuf[at..at + len].to_vec();
            at += len;
            self.w.deliver_reply(id, conn, rid, answer);
        }
        self.w.finish(id, shard);
        Some(Ticket(n))
    }

    /// The answer to `t`, if it has come (taken: a second call returns `None`).
    pub fn try_answer(&mut self, t: Ticket) -> Option<Reply> {
        self.w.script.answers.remove(&t.0)
    }

    /// Run until the answer to `t` comes, at most twice the request timeout and a little
    /// more; `None` if it never did (its node crashed, or a bug).
    pub fn wait(&mut self, t: Ticket) -> Option<Reply> {
        let end = self.w.now + 2 * self.spec.request_timeout_ms + ANSWER_SLACK_MS;
        loop {
            if let Some(r) = self.w.script.answers.remove(&t.0) {
                return Some(r);
            }
            match self.w.next_event_ms() {
                Some(at) if at <= end => {
                    self.w.step();
                }
                _ => break,
            }
        }
        self.advance_to(end);
        None
    }

    /// Send `req` to node `id` and wait for its answer frame (see [`Cluster::wait`]); `None`
    /// if the node is down or never answered.
    pub fn request(&mut self, id: u32, req: &Request<'_>) -> Option<Reply> {
        let t = self.send(id, req)?;
        self.wait(t)
    }

    /// A GET, PUT or DELETE through node `id`, waited for.
    fn keyed(&mut self, id: u32, req: &Request<'_>) -> Outcome {
        let Some(t) = self.send(id, req) else {
            return harness_failure(
                Status::Unavailable,
                &format!("n{id} is down: connection refused"),
            );
        };
        match self.wait(t) {
            Some(r) => r.outcome(),
            None => harness_failure(Status::Timeout, &format!("n{id} never answered")),
        }
    }

    /// PUT `key` = `value` through node `id` with consistency `c`.
    pub fn put(&mut self, id: u32, key: &[u8], value: &[u8], c: Consistency) -> Outcome {
        self.keyed(
            id,
            &Request::Put {
                key,
                value,
                ttl_seconds: 0,
                consistency: c,
            },
        )
    }

    /// GET `key` through node `id` with consistency `c`.
    pub fn get(&mut self, id: u32, key: &[u8], c: Consistency) -> Outcome {
        self.keyed(
            id,
            &Request::Get {
                key,
                consistency: c,
            },
        )
    }

    /// DELETE `key` through node `id` with consistency `c`.
    pub fn delete(&mut self, id: u32, key: &[u8], c: Consistency) -> Outcome {
        self.keyed(
            id,
            &Request::Delete {
                key,
                consistency: c,
            },
        )
    }

    /// Node `id` crashes: its process dies (requests in flight there are never answered),
    /// its disk loses what was not synced. Nothing happens if it is down already.
    pub fn crash(&mut self, id: u32) {
        if !self.is_up(id) {
            return;
        }
        // Its figures die with it: judge its peer frames first.
        if let Some(v) = self.peer_errors(id) {
            self.found.push(v);
        }
        self.w.crash(id);
    }

    /// Node `id` starts again over its disk (a higher incarnation). Nothing happens if it is
    /// up.
    pub fn restart(&mut self, id: u32) {
        if self.is_up(id) {
            return;
        }
        self.w.start_node(id);
    }

    /// Cut the network into `sides`: frames between nodes of different sides are dropped
    /// (nodes named in no side form one more side together). Replaces any partition.
    pub fn partition(&mut self, sides: &[&[u32]]) {
        let n = self.spec.nodes;
        let side_of = |id: u32| sides.iter().position(|s| s.contains(&id));
        for a in 1..=n {
            for b in 1..=n {
                self.w.blocked[a as usize - 1][b as usize - 1] = side_of(a) != side_of(b);
            }
        }
        self.w.partitioned = true;
        trace!(self.w.trace, "PARTITION (scripted) {sides:?}");
    }

    /// Heal the partition.
    pub fn heal(&mut self) {
        self.w.heal();
    }

    /// Change the share of peer frames dropped from now on.
    pub fn set_drop_percent(&mut self, percent: u32) {
        assert!(percent <= 100);
        self.w.p.drop_percent = percent;
    }

    /// What node `id` holds for `key` (tombstones included), read from the shard owning the
    /// key there; `None` when it holds nothing, or is down.
    pub fn replica(&mut self, id: u32, key: &[u8]) -> Option<Stored> {
        let shards = self.w.node(id).shards;
        let run = self.w.node_mut(id).up.as_mut()?;
        run.cores[shard_of(key, shards)]
            .store_mut()
            .get(key)
            .unwrap_or_else(|e| panic!("n{id} cannot read {key:?}: {e}"))
    }

    /// The newest version any node that is up holds for `key` (tombstones included).
    pub fn newest_held(&mut self, key: &[u8]) -> Version {
        (1..=self.spec.nodes)
            .filter_map(|id| self.replica(id, key).map(|r| r.version))
            .max()
            .unwrap_or(Version::ZERO)
    }

    /// Node `id`'s store and cluster figures, as STATS names them, combined over its shards
    /// now (sums; `_max` / `_min` by max / min), with its membership view (`cluster_alive`,
    /// `cluster_leader`, `cluster_incarnation`). Empty when the node is down.
    pub fn stats(&self, id: u32) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let Some(run) = self.w.node(id).up.as_ref() else {
            return out;
        };
        let now_ms = self.w.node_now(id);
        // Combined by name as the STATS reply combines the shards' figures.
        let mut sums: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut add = |name: &'static str, v: u64| {
            sums.entry(name)
                .and_modify(|cur| {
                    *cur = if name.ends_with("_max") {
                        (*cur).max(v)
                    } else if name.ends_with("_min") {
                        (*cur).min(v)
                    } else {
                        *cur + v
                    }
                })
                .or_insert(v);
        };
        for core in &run.cores {
            core.store().stats(&mut add);
            if let Some(c) = core.cluster_node() {
                c.stats_report_at(now_ms, &mut add);
            }
        }
        for (name, v) in sums {
            out.insert(name.to_string(), v);
        }
        if let Some(c) = run.cores[MEMBERSHIP_SHARD].cluster_node() {
            out.insert("cluster_leader".into(), u64::from(c.leader()));
            out.insert("cluster_alive".into(), c.alive_ids().len() as u64);
            out.insert("cluster_incarnation".into(), c.incarnation());
        }
        out.insert("shards".into(), run.cores.len() as u64);
        out
    }

    /// One figure of [`Cluster::stats`]: 0 when node `id` is down. Panics on a name the
    /// node does not report (a typo in a test).
    pub fn stat(&self, id: u32, name: &str) -> u64 {
        if !self.is_up(id) {
            return 0;
        }
        let s = self.stats(id);
        match s.get(name) {
            Some(&v) => v,
            None => panic!(
                "n{id} reports no {name}: {:?}",
                s.keys().collect::<Vec<_>>()
            ),
        }
    }

    /// A figure summed over every node that is up.
    pub fn stat_sum(&self, name: &str) -> u64 {
        (1..=self.spec.nodes).map(|id| self.stat(id, name)).sum()
    }

    /// Node `id` could not decode peer frames of its peers: a violation.
    fn peer_errors(&self, id: u32) -> Option<Violation> {
        let errors = self.stats(id).get("peer_errors").copied().unwrap_or(0);
        (errors > 0).then(|| Violation {
            checker: "peer-frame",
            key: None,
            detail: format!("n{id} could not decode {errors} peer frames of its peers"),
        })
    }

    /// Every violated invariant so far: what the world's checkers recorded (reply records
    /// that are not frames, answers twice, a node that cannot restart over its disk), peer
    /// frames a node could not decode, and scripted requests a node left unanswered for
    /// longer than a client's patience while it kept running. Empty: the run is sound.
    pub fn violations(&self) -> Vec<Violation> {
        let mut all = self.w.hist.violations.clone();
        all.extend(self.found.iter().cloned());
        all.extend((1..=self.spec.nodes).filter_map(|id| self.peer_errors(id)));
        let patience = 2 * self.spec.request_timeout_ms + ANSWER_SLACK_MS;
        for (n, &(id, life, sent)) in &self.w.script.waiting {
            let node = self.w.node(id);
            if node.up.is_some() && node.life == life && sent + patience < self.w.now {
                all.push(Violation {
                    checker: "unanswered",
                    key: None,
                    detail: format!("scripted request {n} reached n{id}, which never answered"),
                });
            }
        }
        all
    }

    /// Panic with every violation, if there is any (the end of a test).
    pub fn assert_sound(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "violations:\n{}",
            v.iter()
                .map(|v| format!("{}: {}", v.checker, v.detail))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// The connection of ticket `t`, for tests of the connection ids themselves.
    #[cfg(test)]
    fn conn_of_ticket(t: Ticket) -> crate::shard::ConnId {
        script_conn(t.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::node::{conn_of, Conn};

    #[test]
    fn script_connections_are_their_own() {
        let c = Cluster::conn_of_ticket(Ticket(7));
        assert!(matches!(conn_of(c), Conn::Script(7)));
        assert!(matches!(
            conn_of(crate::sim::node::client_conn(7)),
            Conn::Client(7)
        ));
    }

    #[test]
    fn a_put_through_one_node_is_read_through_another_and_the_run_repeats() {
        let run = |seed: u64| {
            let mut spec = ClusterSpec::new(3, 3);
            spec.seed = seed;
            spec.shards = vec![1, 2];
            spec.gossip_interval_ms = 50;
            spec.failure_threshold = 4;
            spec.request_timeout_ms = 300;
            let mut c = Cluster::start(spec);
            let v = match c.put(1, b"a", b"b", Consistency::Quorum) {
                Outcome::Written { version, .. } => version,
                other => panic!("{other:?}"),
            };
            assert!(matches!(c.get(3, b"a", Consistency::All),
                Outcome::Found { version, .. } if version == v));
            let stats = c.request(2, &Request::Stats).expect("STATS answered");
            assert!(stats.text().contains("cluster_alive 3"), "{}", stats.text());
            c.assert_sound();
            c.trace_hash()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
