//! The history of a run (every client operation, every event that may lose data) and the
//! checkers that judge it.
//!
//! What the cluster promises, and so what is checked:
//!
//! * **A GET never returns a value that was never written** (`phantom-read`): every PUT writes
//!   a value unique to the run, so a value read is traced back to its PUT; if that PUT was
//!   acknowledged, the version read must be the one it was given. A version read must never
//!   be that of an acknowledged DELETE.
//! * **Quorum reads see acknowledged writes** (`stale-read`): a GET with R replies that started
//!   after a write acknowledged by W replicas, R + W > N, returns that write's version or a
//!   newer one, unless a replica of the key may have lost data in between (see below).
//! * **Versions issued by one clock increase** (`version-order`): the versions of the
//!   acknowledged writes one shard of a node coordinated (a key is always coordinated by the
//!   shard owning it there, and each shard runs its own clock), in the order it issued them,
//!   strictly increase (across restarts too), and carry the node's id. A write issued again above a
//!   replica's newer version gets its final version after writes that started later: such
//!   writes are held to real time instead (one acknowledged before another started has the
//!   lower version).
//! * **Acknowledged writes are not overtaken** (`write-order`, issue 10): a write that started
//!   after another write of the same key was acknowledged, with W1 + W2 > N, gets a higher
//!   version, whatever the coordinators' clocks say; unless a replica of the key may have
//!   lost data in between.
//! * **Clocks do not run away** (`clock-bound`, issue 10): no acknowledged version is further
//!   ahead of true time than the fastest clock allowed to coordinate (a node not running
//!   minutes off) plus the max clock offset; and a value read with a time to live expires
//!   as its PUT's coordinator computed it from a clock in that same range (`ttl`).
//! * **Replicas converge** (`convergence`): after the liveness phase every replica of every key
//!   holds the same live record (version and value); dead records (tombstones, expired
//!   values) and no record at all agree, since tombstones may be collected.
//! * **No acknowledged write is lost** (`lost-write`): after convergence every key holds at
//!   least the newest version among the acknowledged writes the durability promise covers.
//! * **Every request is answered** (`unanswered`): a request that reached a node which then
//!   ran to the end of the run without a restart got an answer (possibly after its client gave
//!   up on it); a node never leaves a connection waiting forever.
//!
//! **What the promise covers.** A *loss event* on a node is a crash while its sync policy is
//! not `always` (unsynced writes may vanish), or a bit flipped on its disk. A write is covered
//! when none of its key's replicas had a loss event since the write started, or when it was
//! acknowledged with QUORUM or ALL by at least two replicas that all sync before acking (a
//! write acknowledged with fsync-on-ack by a quorum is never rolled back: the simulator flips
//! bits on one disk at most). Writes outside the promise may be lost; they are not checked.

use super::options::consistency_name;
use crate::causal::{Dot, VersionVector};
use crate::cluster::coordinator::Outcome;
use crate::protocol::{Consistency, Status};
use crate::version::Version;
use std::collections::BTreeMap;

/// What a client asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// PUT key value.
    Put,
    /// GET key.
    Get,
    /// DELETE key.
    Delete,
}

/// One client operation and what became of it.
#[derive(Clone, Debug)]
pub struct OpRecord {
    /// Operation id (the coordinator's reply context).
    pub id: u64,
    /// Issuing client (`u32::MAX`: the simulator's own repair reads).
    pub client: u32,
    /// PUT, GET or DELETE.
    pub kind: OpKind,
    /// Key index.
    pub key: u32,
    /// The value of a PUT.
    pub value: Option<Vec<u8>>,
    /// A PUT's time to live (0: none); the coordinator turns it into an absolute expiry.
    pub ttl_ms: u64,
    /// Consistency asked.
    pub consistency: Consistency,
    /// Replicas required (W or R).
    pub required: usize,
    /// Coordinating node.
    pub coordinator: u32,
    /// Simulated ms the client sent it.
    pub start_ms: u64,
    /// Order in which the coordinator started it (for `version-order`); 0 = never started.
    pub issue_seq: u64,
    /// Simulated ms of the answer.
    pub end_ms: Option<u64>,
    /// The answer, if one came.
    pub outcome: Option<Outcome>,
    /// Siblings mode: sent with the causal flag (aux bit 2).
    pub causal: bool,
    /// Siblings mode: the causal context a PUT or DELETE carried (empty: a blind write),
    /// decoded; `None` for reads and in last-write-wins mode.
    pub ctx: Option<VersionVector>,
}

impl OpRecord {
    /// The version of an acknowledged PUT or DELETE.
    pub fn acked_version(&self) -> Option<Version> {
        match (&self.kind, &self.outcome) {
            (OpKind::Put | OpKind::Delete, Some(Outcome::Written { version, .. })) => {
                Some(*version)
            }
            _ => None,
        }
    }

    /// Siblings mode: the dot of an acknowledged PUT, `(coordinator, version)`: the coordinating
    /// replica numbers a write's dot with the write's version (`cluster/node/causal.rs`).
    pub fn dot(&self) -> Option<Dot> {
        match self.kind {
            OpKind::Put => self.acked_version().map(|v| Dot {
                actor: v.node_id() as u16,
                counter: v.0,
            }),
            _ => None,
        }
    }

    /// Whether the answer promises that nothing was written (a refusal before any replica
    /// stored the write: UNAVAILABLE, OVERLOADED, CLOCK_OFFSET, TOO_MANY_SIBLINGS, BAD_REQUEST).
    pub fn refused(&self) -> bool {
        matches!(
            &self.outcome,
            Some(Outcome::Failed {
                status: Status::Unavailable
                    | Status::Overloaded
                    | Status::ClockOffset
                    | Status::TooManySiblings
                    | Status::BadRequest,
                ..
            })
        )
    }
}

/// A violated invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which checker.
    pub checker: &'static str,
    /// The key concerned, if any.
    pub key: Option<String>,
    /// What was seen.
    pub detail: String,
}

/// The client id of the simulator's own repair reads.
pub const REPAIR_CLIENT: u32 = u32::MAX;

/// The name of key index `k`.
pub fn key_name(k: u32) -> Vec<u8> {
    format!("k{k:03}").into_bytes()
}

/// A version for humans: `ms.logical@node` with ms relative to the simulation's epoch.
pub fn show_version(v: Version, base_ms: u64) -> String {
    if v == Version::ZERO {
        return "0".to_string();
    }
    format!(
        "{}.{}@{}",
        v.physical_ms() as i64 - base_ms as i64,
        v.logical(),
        v.node_id()
    )
}

/// Everything recorded during a run.
pub struct History {
    /// Operations by id (ids are indexes).
    pub ops: Vec<OpRecord>,
    /// Value → the PUT that wrote it.
    pub values: BTreeMap<Vec<u8>, u64>,
    /// Per key: ops touching it, in id order.
    pub by_key: BTreeMap<u32, Vec<u64>>,
    /// Per node (index id - 1): simulated ms of its loss events.
    pub losses: Vec<Vec<u64>>,
    /// Per node: whether the checkers count on its fsync-on-ack (policy `always`).
    pub syncs_on_ack: Vec<bool>,
    /// Per key: its preference list.
    pub prefs: BTreeMap<u32, Vec<u32>>,
    /// N.
    pub replicas: usize,
    /// Per node: its shards (each shard's clock issues its own versions).
    pub shards: Vec<usize>,
    /// Simulated epoch in wall ms (for printing versions).
    pub base_ms: u64,
    /// Violations found.
    pub violations: Vec<Violation>,
    /// Reads the stale-read checker judged.
    pub reads_checked: u64,
    /// Keys the lost-write checker judged.
    pub keys_checked: u64,
    /// The smallest and largest clock offset (from true time) any node allowed to coordinate
    /// ever had: every node but the minority running minutes off (the world keeps it up to
    /// date through clock jumps).
    pub near_offsets_ms: (i64, i64),
    /// `--max-clock-offset-ms` of every node.
    pub max_clock_offset_ms: u64,
    /// Siblings mode (`--conflicts siblings`): reads and the end are judged by the siblings
    /// checkers (`siblings_check.rs`) instead of the last-write-wins ones.
    pub siblings: bool,
}

impl History {
    /// An empty history.
    pub fn new(nodes: u32, replicas: usize, syncs_on_ack: Vec<bool>, base_ms: u64) -> History {
        History {
            ops: Vec::new(),
            values: BTreeMap::new(),
            by_key: BTreeMap::new(),
            losses: vec![Vec::new(); nodes as usize],
            syncs_on_ack,
            prefs: BTreeMap::new(),
            replicas,
            shards: vec![1; nodes as usize],
            base_ms,
            violations: Vec::new(),
            reads_checked: 0,
            keys_checked: 0,
            near_offsets_ms: (0, 0),
            max_clock_offset_ms: crate::limits::MAX_CLOCK_OFFSET_MS_DEFAULT,
            siblings: false,
        }
    }

    pub(super) fn violation(&mut self, checker: &'static str, key: Option<u32>, detail: String) {
        self.violations.push(Violation {
            checker,
            key: key.map(|k| String::from_utf8_lossy(&key_name(k)).into_owned()),
            detail,
        });
    }

    /// Record a new operation; returns its id.
    pub fn add(&mut self, mut op: OpRecord) -> u64 {
        let id = self.ops.len() as u64;
        op.id = id;
        if let Some(v) = &op.value {
            self.values.insert(v.clone(), id);
        }
        self.by_key.entry(op.key).or_default().push(id);
        self.ops.push(op);
        id
    }

    /// A loss event on `node` at `t`.
    pub fn loss(&mut self, node: u32, t: u64) {
        self.losses[node as usize - 1].push(t);
    }

    /// Whether a replica of `key` had a loss event in `(after, until]`.
    pub(super) fn loss_between(&self, key: u32, after: u64, until: u64) -> bool {
        self.prefs[&key].iter().any(|&n| {
            self.losses[n as usize - 1]
                .iter()
                .any(|&t| t > after && t <= until)
        })
    }

    /// Whether acknowledged write `op` is covered by the durability promise at `t`.
    pub(super) fn covered(&self, op: &OpRecord, t: u64, for_reads: bool) -> bool {
        // From the start, not the acknowledgement: a replica may ack early, then lose the
        // write in a crash before the coordinator has gathered the other acks.
        if !self.loss_between(op.key, op.start_ms, t) {
            return true;
        }
        // Bit flips hit one disk at most, so a quorum that syncs on ack keeps the write on
        // some replica: it survives to the end (not for reads in between: a quorum may
        // briefly miss it until repair).
        !for_reads
            && matches!(op.consistency, Consistency::Quorum | Consistency::All)
            && op.required >= 2
            && self.prefs[&op.key]
                .iter()
                .all(|&n| self.syncs_on_ack[n as usize - 1])
    }

    /// An answer arrived for op `id` at `t`: record it and check reads.
    pub fn answer(&mut self, id: u64, outcome: Outcome, t: u64) {
        let op = &mut self.ops[id as usize];
        assert!(op.outcome.is_none(), "one answer per operation");
        op.end_ms = Some(t);
        op.outcome = Some(outcome);
        if op.kind == OpKind::Get {
            if self.siblings {
                self.check_read_siblings(id, t);
            } else {
                self.check_read(id, t);
            }
        }
    }

    fn check_read(&mut self, id: u64, t: u64) {
        let op = self.ops[id as usize].clone();
        let key = op.key;
        let base = self.base_ms;
        let found = match &op.outcome {
            Some(Outcome::Found { version, value, .. }) => Some((*version, value.clone())),
            Some(Outcome::NotFound) => None,
            _ => return, // failed reads promise nothing
        };
        // phantom-read: the value was written by a PUT of this key, with this version.
        if let Some((version, value)) = &found {
            match self.values.get(value).map(|&w| &self.ops[w as usize]) {
                None => self.violation(
                    "phantom-read",
                    Some(key),
                    format!(
                        "GET op {id} returned {:?} (version {}), a value never written",
                        String::from_utf8_lossy(value),
                        show_version(*version, base)
                    ),
                ),
                Some(w) if w.key != key => {
                    let d = format!(
                        "GET op {id} returned the value of op {} on another key",
                        w.id
                    );
                    self.violation("phantom-read", Some(key), d)
                }
                Some(w) => {
                    if let Some(v) = w.acked_version() {
                        // Below the acknowledged version: an earlier attempt of the same PUT,
                        // issued again above a newer version a replica held.
                        if v != *version && *version > v {
                            let d = format!(
                                "GET op {id} returned the value of PUT op {} with version {}, \
                                 but that PUT was acknowledged with version {}",
                                w.id,
                                show_version(*version, base),
                                show_version(v, base)
                            );
                            self.violation("phantom-read", Some(key), d);
                        }
                    }
                }
            }
            if let Some(&w) = self.values.get(value) {
                if self.ops[w as usize].key == key {
                    self.check_ttl(id, w);
                }
            }
            let deleted = self.by_key[&key].iter().find(|&&d| {
                let d = &self.ops[d as usize];
                d.kind == OpKind::Delete && d.acked_version() == Some(*version)
            });
            if let Some(&d) = deleted {
                let d = format!(
                    "GET op {id} returned a value with the version of acknowledged DELETE op {d}"
                );
                self.violation("phantom-read", Some(key), d);
            }
        }
        // stale-read: the newest covered write acknowledged before the read started, with
        // R + W > N, must be seen (or something newer).
        let n = self.replicas;
        let newest = self.by_key[&key]
            .iter()
            .map(|&w| &self.ops[w as usize])
            .filter(|w| {
                w.acked_version().is_some()
                    && w.end_ms.is_some_and(|e| e < op.start_ms)
                    && w.required + op.required > n
                    && self.covered(w, t, true)
            })
            .max_by_key(|w| w.acked_version());
        let Some(w) = newest else { return };
        let wv = w.acked_version().expect("filtered on it");
        self.reads_checked += 1;
        let stale = match &found {
            Some((v, _)) => *v < wv || (w.kind == OpKind::Delete && *v == wv),
            None => {
                // NOT_FOUND hides the version: it is stale only if the PUT cannot have
                // expired and no delete (or PUT with a time to live) that might be newer than
                // it had even started.
                w.kind == OpKind::Put
                    && w.ttl_ms == 0
                    && !self.by_key[&key].iter().any(|&d| {
                        let d = &self.ops[d as usize];
                        (d.kind == OpKind::Delete || d.ttl_ms > 0)
                            && d.issue_seq != 0
                            && d.start_ms <= t
                            && d.acked_version().is_none_or(|dv| dv > wv)
                    })
            }
        };
        if stale {
            let seen = match &found {
                Some((v, _)) => format!("version {}", show_version(*v, base)),
                None => "NOT_FOUND".to_string(),
            };
            let d = format!(
                "GET op {id} ({} via n{}, started {} ms) returned {seen}, but {:?} op {} \
                 ({} via n{}) was acknowledged with version {} at {} ms",
                consistency_name(op.consistency),
                op.coordinator,
                op.start_ms,
                w.kind,
                w.id,
                consistency_name(w.consistency),
                w.coordinator,
                show_version(wv, base),
                w.end_ms.unwrap_or(0)
            );
            self.violation("stale-read", Some(key), d);
        }
    }

    /// Pairs (a, b) of acknowledged writes among `ops` (ids) where b started after a was
    /// acknowledged but b's version is not above a's: for each b, the a with the highest
    /// version among those acknowledged before b started (sweep in time order).
    fn overtaken(&self, ops: &[u64]) -> Vec<(u64, u64)> {
        let mut by_end: Vec<(u64, Version, u64)> = Vec::new();
        let mut by_start: Vec<(u64, u64)> = Vec::new();
        for &id in ops {
            let op = &self.ops[id as usize];
            if let (Some(v), Some(end)) = (op.acked_version(), op.end_ms) {
                by_end.push((end, v, id));
                by_start.push((op.start_ms, id));
            }
        }
        by_end.sort_unstable();
        by_start.sort_unstable();
        let mut best: Option<(Version, u64)> = None;
        let mut i = 0;
        let mut found = Vec::new();
        for (start, b) in by_start {
            while i < by_end.len() && by_end[i].0 < start {
                let (_, v, a) = by_end[i];
                if best.is_none_or(|(bv, _)| v > bv) {
                    best = Some((v, a));
                }
                i += 1;
            }
            let vb = self.ops[b as usize].acked_version().expect("acked");
            if let Some((va, a)) = best {
                if vb <= va {
                    found.push((a, b));
                }
            }
        }
        found
    }

    /// `version-order`: per coordinator, a write acknowledged before another started has the
    /// lower version; every version carries its coordinator's id.
    pub fn check_version_order(&mut self) {
        // Each shard of a node runs its own clock: a key is always coordinated by the shard
        // that owns it on the coordinating node.
        // Siblings mode: a node that is not an owner of the key hands the write to one, whose
        // clock issues the version (protocol.md § 19.2): such a write belongs to the issuing
        // node's clock, and its place in that clock's issue order is not known here.
        let mut per_clock: BTreeMap<(u32, usize), Vec<u64>> = BTreeMap::new();
        for op in &self.ops {
            if let Some(v) = op.acked_version() {
                let node = if self.siblings {
                    v.node_id()
                } else {
                    op.coordinator
                };
                let shards = self.shards[node as usize - 1];
                let shard = crate::hash::shard_of(&key_name(op.key), shards);
                per_clock.entry((node, shard)).or_default().push(op.id);
            }
        }
        let base = self.base_ms;
        let mut found = Vec::new();
        for ((node, shard), writes) in per_clock {
            for &id in &writes {
                let v = self.ops[id as usize].acked_version().expect("acked");
                if v.node_id() != node {
                    found.push((
                        id,
                        format!(
                            "op {id} coordinated by n{node} got version {} of node {}",
                            show_version(v, base),
                            v.node_id()
                        ),
                    ));
                }
            }
            // Issue order, among the writes that kept their first version.
            let mut first: Vec<(u64, u64, Version)> = writes
                .iter()
                .map(|&id| &self.ops[id as usize])
                .filter(|op| matches!(op.outcome, Some(Outcome::Written { reissues: 0, .. })))
                .filter(|op| op.coordinator == node)
                .map(|op| (op.issue_seq, op.id, op.acked_version().expect("acked")))
                .collect();
            first.sort_unstable();
            for pair in first.windows(2) {
                let ((_, a, va), (_, b, vb)) = (pair[0], pair[1]);
                if vb <= va {
                    found.push((
                        b,
                        format!(
                            "n{node}/{shard} issued version {} for op {b} after {} for op {a}",
                            show_version(vb, base),
                            show_version(va, base)
                        ),
                    ));
                }
            }
            for (a, b) in self.overtaken(&writes) {
                let va = self.ops[a as usize].acked_version().expect("acked");
                let vb = self.ops[b as usize].acked_version().expect("acked");
                found.push((
                    b,
                    format!(
                        "n{node}/{shard} issued version {} for op {b} after {} for op {a}, \
                         acknowledged before op {b} started",
                        show_version(vb, base),
                        show_version(va, base)
                    ),
                ));
            }
        }
        for (id, d) in found {
            let key = self.ops[id as usize].key;
            self.violation("version-order", Some(key), d);
        }
    }

    /// `write-order`: per key, a write that started after a write acknowledged with
    /// W1 + W2 > N has the higher version, unless a replica of the key had a loss event in
    /// between (see the module doc).
    pub fn check_write_order(&mut self) {
        let n = self.replicas;
        let base = self.base_ms;
        let mut found = Vec::new();
        for (&key, ids) in &self.by_key {
            // Quorum writes only: ONE and QUORUM with N = 1 still intersect when W1 + W2 > N,
            // so the pair test below is on `required`.
            let writes: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|&w| self.ops[w as usize].acked_version().is_some())
                .collect();
            // Exact pairs (keys hold few writes): every (a, b) with a acked before b started.
            for &a in &writes {
                let wa = &self.ops[a as usize];
                let (va, end_a) = (
                    wa.acked_version().expect("acked"),
                    wa.end_ms.expect("acked"),
                );
                for &b in &writes {
                    let wb = &self.ops[b as usize];
                    if wb.start_ms <= end_a || wa.required + wb.required <= n {
                        continue;
                    }
                    let vb = wb.acked_version().expect("acked");
                    let end_b = wb.end_ms.expect("acked");
                    if vb <= va && self.covered(wa, end_b, true) {
                        found.push((
                            key,
                            format!(
                                "{:?} op {b} ({} via n{}) started at {} ms after {:?} op {a} ({} \
                                 via n{}) was acknowledged at {end_a} ms, yet got version {} not \
                                 above {}",
                                wb.kind,
                                consistency_name(wb.consistency),
                                wb.coordinator,
                                wb.start_ms,
                                wa.kind,
                                consistency_name(wa.consistency),
                                wa.coordinator,
                                show_version(vb, base),
                                show_version(va, base)
                            ),
                        ));
                    }
                }
            }
        }
        for (key, d) in found {
            self.violation("write-order", Some(key), d);
        }
    }

    /// `clock-bound`: no acknowledged version is ahead of true time by more than the fastest
    /// clock allowed to coordinate plus the max clock offset (plus the logical counter's
    /// borrowed milliseconds).
    pub fn check_clock_bound(&mut self) {
        let allowed = self.near_offsets_ms.1 + self.max_clock_offset_ms as i64 + 10;
        let base = self.base_ms;
        let mut found = Vec::new();
        for op in &self.ops {
            let (Some(v), Some(end)) = (op.acked_version(), op.end_ms) else {
                continue;
            };
            let ahead = v.physical_ms() as i64 - (base + end) as i64;
            if ahead > allowed {
                found.push((
                    op.key,
                    format!(
                        "{:?} op {} via n{} acknowledged at {end} ms with version {}, {ahead} ms \
                         ahead of true time (allowed: {allowed})",
                        op.kind,
                        op.id,
                        op.coordinator,
                        show_version(v, base)
                    ),
                ));
            }
        }
        for (key, d) in found {
            self.violation("clock-bound", Some(key), d);
        }
    }

    /// `ttl`: GET op `get` found the value of PUT op `put`: if that PUT had a time to live,
    /// its expiry must be the TTL after the PUT's true time, off by at most the offset of a
    /// clock allowed to coordinate.
    fn check_ttl(&mut self, get: u64, put: u64) {
        let (g, w) = (&self.ops[get as usize], &self.ops[put as usize]);
        let Some(Outcome::Found { expires_at_ms, .. }) = &g.outcome else {
            return;
        };
        if w.ttl_ms == 0 {
            return;
        }
        let (lo_off, hi_off) = self.near_offsets_ms;
        let base = self.base_ms as i64;
        // The coordinator computed the expiry between the PUT's start and its answer (or
        // this read's answer, if the PUT is unanswered).
        let end = w.end_ms.or(g.end_ms).unwrap_or(w.start_ms);
        let lo = base + w.start_ms as i64 + w.ttl_ms as i64 + lo_off - 5;
        let hi = base + end as i64 + w.ttl_ms as i64 + hi_off + 5;
        let e = *expires_at_ms as i64;
        if e < lo || e > hi {
            let d = format!(
                "GET op {get} found the value of PUT op {put} (ttl {} ms via n{}, started at {} \
                 ms) expiring at {} ms, outside {}..={} ms",
                w.ttl_ms,
                w.coordinator,
                w.start_ms,
                e - base,
                lo - base,
                hi - base
            );
            let key = w.key;
            self.violation("ttl", Some(key), d);
        }
    }

    /// `lost-write` for one key that converged on `held` (version, and whether the record is
    /// dead: a tombstone or an expired value), checked at `t`.
    pub fn check_durable(&mut self, key: u32, held: Option<(Version, bool)>, t: u64) {
        let newest = self.by_key[&key]
            .iter()
            .map(|&w| &self.ops[w as usize])
            .filter(|w| w.acked_version().is_some() && self.covered(w, t, false))
            .max_by_key(|w| w.acked_version());
        let Some(w) = newest else { return };
        let wv = w.acked_version().expect("filtered on it");
        self.keys_checked += 1;
        // A dead record, or none at all (tombstones and expired values may be collected),
        // satisfies a delete, a PUT with a time to live that may have expired, and any write
        // after which a delete (or an expiring PUT), acknowledged or not, may have come.
        let may_be_dead = w.kind == OpKind::Delete
            || w.ttl_ms > 0
            || self.by_key[&key].iter().any(|&d| {
                let d = &self.ops[d as usize];
                (d.kind == OpKind::Delete || d.ttl_ms > 0)
                    && d.issue_seq != 0
                    && d.acked_version().is_none_or(|dv| dv > wv)
            });
        let lost = match held {
            Some((h, dead)) => h < wv && !(dead && may_be_dead),
            None => !may_be_dead,
        };
        if lost {
            let base = self.base_ms;
            let d = format!(
                "replicas converged on {} but {:?} op {} ({} via n{}) was acknowledged with \
                 version {} at {} ms",
                held.map_or("nothing".to_string(), |(h, _)| show_version(h, base)),
                w.kind,
                w.id,
                consistency_name(w.consistency),
                w.coordinator,
                show_version(wv, base),
                w.end_ms.unwrap_or(0)
            );
            self.violation("lost-write", Some(key), d);
        }
    }

    /// Record a violation found elsewhere (convergence, storage).
    pub fn report(&mut self, checker: &'static str, key: Option<u32>, detail: String) {
        self.violation(checker, key, detail);
    }
}
