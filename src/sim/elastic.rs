//! Membership changes in the simulation (issue 12): the fault schedule's leaves, removals and
//! pauses of the moves, sent as operator commands (CLUSTER_ADMIN frames) to a random live
//! node, and its joins and replacements (new nodes started as `kvd --join`: `joins.rs`);
//! the ring states the nodes adopt, watched as they spread; and the checkers of what a
//! change must leave behind.
//!
//! ```text
//!  fault schedule ── membership event ──▶ a goal: Leave(n) | Remove(n) | Paused(bool)
//!                                          | Join(n) | Replace { old, new } (joins.rs: the
//!                                          new node asks the leader itself)
//!                                          sent as CLUSTER_ADMIN "LEAVE n" / "REMOVE n" /
//!                                          "PAUSE" / "RESUME" to a random live node, again
//!                                          every ADMIN_RETRY_MS until the ring shows it
//!                                          (refusals — busy, not the leader, a node not yet
//!                                          seen failed — are expected: retry later)
//!  every tick ── observe_ring ──▶ the newest ring state any node holds:
//!                                   the keys' replica sets (union of every owner and pending
//!                                   owner a key ever had: the checkers' loss accounting),
//!                                   flips (the bytes of the partitions moved), completions
//! ```
//!
//! A join starts the next spare id (`Params::spares`) as a new node; a replacement starts one
//! in the place of a member, dead or stopped for good (`joins.rs`). A leave picks a live
//! node, a removal a crashed one, which then stays down for good (its disk is gone: a loss
//! event for the checkers); either only while the cluster keeps at least N members. Leaves,
//! removals and replacements only when no change runs (a node gone for good may be a
//! pending owner of the running change, which could then never finish: the elastic ring has
//! no way out of that yet); a join may come while one runs (the leader refuses it as busy
//! until the change ends, and the new node asks again). A node that left keeps running (it
//! must end holding nothing). One change at a time: the next membership event waits until
//! the ring shows the previous command (or lists the new node).
//!
//! **Checkers.** While the run goes, at every flip seen:
//!
//! * `history`: at each ring version, every node holds the same state (one history of
//!   ring states; two leaders making different states at one version is caught here at
//!   once, before the nodes act on them apart).
//! * `flip`: the new owners of a flipped partition hold each acknowledged (covered) PUT of
//!   its keys at least as often as the PUT's level asked (see [`World::check_flip`]): a flip
//!   before the copy, or writes that skip the pending owners, leave them short.
//!
//! After the liveness phase, which resumes paused moves and waits for the running change to
//! finish on every node:
//!
//! * `ring`: no change left running, moves not paused, every running node (every shard) at
//!   the newest ring version.
//! * `placement`: for every key the clients used, the running nodes whose store holds a
//!   record of it (live or tombstone) are exactly the owners of its partition in the final
//!   ring: no orphan copy on a non-owner (a node that left holds nothing), and no owner
//!   without the record while the owners' agreed record is live (dead records may have been
//!   collected).
//! * `moved-bytes`: the bytes the copies moved (STATS `transfer_bytes`, summed over every
//!   node and every life) are at most [`MOVED_BYTES_FACTOR`] × the minimum plus
//!   [`MOVED_BYTES_SLACK`] per partition copy. The minimum is, for each flipped partition and
//!   each new owner, the encoded bytes of the partition's records when the flip is seen
//!   (what that owner had to receive, at most). Why 3×: a copy from a dead owner's survivors
//!   asks each of them in turn (each sends only what the pending owner still lacks, but a
//!   write racing the copy may be sent twice), a copy cut by a crash starts over and moves
//!   again what an unsynced disk lost, and records overwritten during the move are sent in
//!   every version the tree exchange meets; more than 3× means copies resend what is held.

use super::check::{key_name, OpKind};
use super::node::admin_conn;
use super::options::range;
use super::trace::trace;
use super::world::{Ev, World};
use crate::cluster::ringstate::{MemberStatus, RingState};
use crate::cluster::Ring;
use crate::hash::partition_of;
use crate::protocol::{frame, Request, Response, Status};
use crate::shard::Session;
use std::collections::BTreeSet;
use std::sync::Arc;

/// An operator command not yet shown by the ring is sent again after a delay in this range.
const ADMIN_RETRY_MS: (u64, u64) = (300, 1_500);

/// A pause of the moves lasts this long (ms, range) before the schedule resumes them.
const PAUSE_MS: (u64, u64) = (200, 4_000);

/// Percent of membership events that pause the moves (the rest: a join, a removal or
/// replacement, or a leave).
const PAUSE_PERCENT: u64 = 15;

/// Percent of membership events that start a new node with a join (while a spare id is
/// left: see `joins.rs`).
const JOIN_PERCENT: u64 = 30;

/// Percent of membership events that replace a member with a new node (while a spare id
/// is left): a crashed one, or else a running one the operator stops for good first.
const REPLACE_PERCENT: u64 = 20;

/// Percent of membership events that remove a crashed node (when one is down).
const REMOVE_PERCENT: u64 = 20;

/// See the module doc (`moved-bytes`).
pub const MOVED_BYTES_FACTOR: u64 = 3;

/// Bytes allowed per partition copy beyond the factor (a few records raced by writes).
pub const MOVED_BYTES_SLACK: u64 = 512;

/// Bytes of an anti-entropy record before its key and value (key length u16, version u64,
/// expiry u64, kind u8, value length u32: `antientropy/wire.rs`), as `transfer_bytes` counts.
const AE_RECORD_HEADER: u64 = 2 + 8 + 8 + 1 + 4;

/// What the schedule asked of the cluster and waits to see in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Goal {
    /// `LEAVE n`: n leaving or removed.
    Leave(u32),
    /// `REMOVE n`: n leaving or removed.
    Remove(u32),
    /// `PAUSE` / `RESUME`: the ring's paused flag.
    Paused(bool),
    /// Node n started with `--join` (its own requests, no command): n a member.
    Join(u32),
    /// Node `new` started with `--join --replace old` (no command): `new` a member.
    Replace { old: u32, new: u32 },
}

impl Goal {
    /// The operator command the schedule sends; `None` for the requests a new node sends
    /// itself (joins, replacements).
    fn command(self) -> Option<String> {
        Some(match self {
            Goal::Leave(n) => format!("LEAVE {n}"),
            Goal::Remove(n) => format!("REMOVE {n}"),
            Goal::Paused(true) => "PAUSE".into(),
            Goal::Paused(false) => "RESUME".into(),
            Goal::Join(_) | Goal::Replace { .. } => return None,
        })
    }

    fn met(self, s: &RingState) -> bool {
        match self {
            Goal::Leave(n) | Goal::Remove(n) => matches!(
                s.status(n),
                Some(MemberStatus::Leaving | MemberStatus::Removed)
            ),
            Goal::Paused(b) => s.paused() == b,
            Goal::Join(n) | Goal::Replace { new: n, .. } => s.status(n).is_some(),
        }
    }
}

/// The simulation's side of membership changes.
#[derive(Default)]
pub(super) struct Elastic {
    /// Nodes whose leave or removal was asked: they no longer count towards N.
    pub departed: BTreeSet<u32>,
    /// Commands not yet shown by the ring.
    pub goals: Vec<Goal>,
    /// An `AdminRound` event is queued.
    round_queued: bool,
    /// Commands sent (for the admin connections' ids).
    pub sent: u64,
    /// The newest ring state any node held.
    pub newest: Option<Arc<RingState>>,
    /// `history`: the first ring state seen at each version (one history: no node may act
    /// on another state of a version, see cluster/node/ringvote.rs).
    pub history: std::collections::BTreeMap<u64, Arc<RingState>>,
    /// Versions `history` reported (once each).
    pub history_bad: std::collections::BTreeSet<u64>,
    /// `transfer_bytes` of the lives that ended (crashes).
    pub moved_dead: u64,
    /// The minimum bytes of the flips seen (module doc), and the partition copies flipped.
    pub moved_min: u64,
    pub copies: u64,
    /// Leaves and removals the ring finished.
    pub completed: u64,
    /// Spare ids taken so far by joins and replacements (`World::born`).
    pub joined: u32,
    /// Joins and replacements started (new nodes asking to be admitted), and the new nodes
    /// the ring then listed up.
    pub joins: u64,
    pub admitted: BTreeSet<u32>,
    pub replaces: u64,
}

impl World {
    /// A membership event of the fault schedule (module doc).
    pub(super) fn membership_event(&mut self) {
        if !self.elastic.goals.is_empty() {
            return; // one change at a time
        }
        let x = self.rng.below(100);
        if x < PAUSE_PERCENT {
            self.add_goal(Goal::Paused(true));
            let t = self.now + range(&mut self.rng, PAUSE_MS.0, PAUSE_MS.1);
            self.at(t, Ev::ResumeMoves);
            return;
        }
        let spare_left = self.elastic.joined < self.p.spares;
        if x < PAUSE_PERCENT + JOIN_PERCENT && spare_left {
            // (A join asked while a change runs waits, refused as busy, until it ends.)
            self.join_event(None);
            return;
        }
        // A leave, removal or replacement only on a settled ring: a node removed for good
        // while another change runs may be one of that change's pending owners, and the
        // change could then never finish (nor the removal start: one change at a time).
        let Some(ring) = self.running_ring() else {
            return;
        };
        if ring.change().is_some() {
            return;
        }
        let active = self.born() as usize - self.elastic.departed.len();
        let candidates = |w: &World, up: bool| -> Vec<u32> {
            (1..=w.born())
                .filter(|id| !w.elastic.departed.contains(id))
                .filter(|&id| ring.status(id) == Some(MemberStatus::Up))
                .filter(|&id| w.node(id).up.is_some() == up)
                .collect()
        };
        let down = candidates(self, false);
        // A removal (or replacement) needs the leader to see a majority of the members
        // alive, the dead one counted: two members can never remove one of them.
        let removable = 2 * (active - 1) > active;
        let live = candidates(self, true);
        let replace = x < PAUSE_PERCENT + JOIN_PERCENT + REPLACE_PERCENT;
        if replace && spare_left && removable {
            // A dead member, or else a running one (stopped for good first: joins.rs).
            let pool = if down.is_empty() { &live } else { &down };
            if !pool.is_empty() {
                let id = pool[self.rng.below(pool.len() as u64) as usize];
                self.join_event(Some(id));
            }
            return;
        }
        let remove = x < PAUSE_PERCENT + JOIN_PERCENT + REPLACE_PERCENT + REMOVE_PERCENT;
        if remove && !down.is_empty() && removable {
            if active <= self.p.replicas {
                return; // the cluster must keep N members
            }
            let id = down[self.rng.below(down.len() as u64) as usize];
            // Its disk is gone for good: whatever only it held is lost.
            self.node_mut(id).gone = true;
            self.hist.loss(id, self.now);
            self.elastic.departed.insert(id);
            trace!(self.trace, "n{id} is gone for good: REMOVE it");
            self.add_goal(Goal::Remove(id));
            return;
        }
        if active <= self.p.replicas {
            return; // the cluster must keep N members
        }
        if live.is_empty() {
            return;
        }
        let id = live[self.rng.below(live.len() as u64) as usize];
        self.elastic.departed.insert(id);
        trace!(self.trace, "n{id} is to decommission: LEAVE it");
        self.add_goal(Goal::Leave(id));
    }

    /// The schedule resumes the moves it paused.
    pub(super) fn resume_moves(&mut self) {
        self.elastic.goals.retain(|g| *g != Goal::Paused(true));
        if !self.elastic.goals.contains(&Goal::Paused(false)) {
            self.add_goal(Goal::Paused(false));
        }
    }

    /// The liveness phase: moves resume, the commands asked go on until the ring shows them.
    pub(super) fn membership_liveness(&mut self) {
        let paused = self.running_ring().is_some_and(|s| s.paused());
        if paused || self.elastic.goals.contains(&Goal::Paused(true)) {
            self.resume_moves();
        }
    }

    pub(super) fn add_goal(&mut self, g: Goal) {
        self.elastic.goals.push(g);
        if !self.elastic.round_queued {
            self.admin_round();
        }
    }

    /// Send every command the ring does not show yet, and come back later if any is left.
    pub(super) fn admin_round(&mut self) {
        self.elastic.round_queued = false;
        let goals = std::mem::take(&mut self.elastic.goals);
        let newest = self.running_ring();
        let left: Vec<Goal> = goals
            .into_iter()
            .filter(|g| !newest.as_ref().is_some_and(|s| g.met(s)))
            .collect();
        for &g in &left {
            if let Some(command) = g.command() {
                self.send_admin(&command);
            }
        }
        self.elastic.goals = left;
        if !self.elastic.goals.is_empty() && !self.elastic.round_queued {
            self.elastic.round_queued = true;
            let t = self.now + range(&mut self.rng, ADMIN_RETRY_MS.0, ADMIN_RETRY_MS.1);
            self.at(t, Ev::AdminRound);
        }
    }

    /// An operator's command to a random running node, on a connection of its own.
    fn send_admin(&mut self, command: &str) {
        let live: Vec<u32> = (1..=self.born()).filter(|&i| self.runnable(i)).collect();
        if live.is_empty() {
            return;
        }
        let id = live[self.rng.below(live.len() as u64) as usize];
        let shard = self.rng.below(self.node(id).shards as u64) as usize;
        self.elastic.sent += 1;
        let n = self.elastic.sent;
        let conn = admin_conn(n);
        let mut bytes = Vec::new();
        Request::ClusterAdmin { command }.encode(n as u32, &mut bytes);
        let (f, _) = frame::parse(&bytes)
            .expect("an encoded request is a frame")
            .expect("and a whole one");
        trace!(self.trace, "admin {n} {command:?} via n{id}/{shard}");
        let now_ms = self.node_now(id);
        let mut session = Session::default();
        let mut wbuf = Vec::new();
        let _ = self.running(id).cores[shard].on_frame(now_ms, conn, &mut session, f, &mut wbuf);
        let mut at = 0;
        while let Ok(Some((f, len))) = frame::parse(&wbuf[at..]) {
            let rid = f.id;
            let answer = wbuf[at..at + len].to_vec();
            at += len;
            self.deliver_reply(id, conn, rid, answer);
        }
        self.finish(id, shard);
    }

    /// The answer to admin command `n` (traced: the goal is judged by the ring, not by it).
    pub(super) fn admin_answer(&mut self, n: u64, bytes: &[u8]) {
        let text = frame::parse(bytes)
            .ok()
            .flatten()
            .and_then(|(f, _)| {
                let r = Response::from_frame(&f)?;
                Some(match r.status() {
                    Some(Status::Ok) => String::from_utf8_lossy(r.body).into_owned(),
                    s => format!("{s:?}: {}", r.message()),
                })
            })
            .unwrap_or_else(|| "not a response".into());
        trace!(self.trace, "admin {n} answer: {}", text.trim_end());
    }

    /// Look at the ring states node `id`'s shards hold: a newer one than seen so far
    /// widens the keys' replica sets, counts the flips and the bytes they moved.
    pub(super) fn observe_ring(&mut self, id: u32) {
        let newest = self.elastic.newest.clone();
        let Some(run) = &self.node(id).up else {
            return;
        };
        let held: Vec<Arc<RingState>> = run
            .cores
            .iter()
            .filter_map(|c| c.cluster_node())
            .map(|c| c.ring_state().clone())
            .collect();
        // (Version 0 is a joining node's provisional state, built from its RING map: never
        // decided, never shared.)
        for s in held.into_iter().filter(|s| s.version() > 0) {
            let first = self.elastic.history.entry(s.version()).or_insert(s.clone());
            if !Arc::ptr_eq(first, &s)
                && **first != *s
                && self.elastic.history_bad.insert(s.version())
            {
                let d = format!(
                    "n{id} acts on another state of ring version {}",
                    s.version()
                );
                trace!(self.trace, "history: {d}");
                self.hist.report("history", None, d);
            }
        }
        let Some(run) = &self.node(id).up else {
            return;
        };
        // Newer, or as new with other contents (two leaders made the same version: the
        // `ring` checker reports it if it lasts).
        let Some(s) = run
            .cores
            .iter()
            .filter_map(|c| c.cluster_node())
            .map(|c| c.ring_state())
            .max_by_key(|s| s.version())
            .filter(|s| {
                newest.as_ref().is_none_or(|n| {
                    s.version() > n.version()
                        || (s.version() == n.version() && !Arc::ptr_eq(s, n) && ***s != **n)
                })
            })
            .cloned()
        else {
            return;
        };
        let old = self
            .elastic
            .newest
            .replace(s.clone())
            .unwrap_or_else(|| self.ring.state().clone());
        self.ring = Ring::from_state(s.clone());
        trace!(
            self.trace,
            "ring version {} (seen on n{id}): change {} settled {} paused {} moving {}",
            s.version(),
            s.change().map_or("none".to_string(), |c| c.to_string()),
            s.settled(),
            s.paused(),
            s.moving_partitions().len()
        );
        // Every node that owns, or fills a copy of, a key's partition is one of its replicas
        // for the loss accounting.
        for k in 0..self.p.keys {
            let p = partition_of(&key_name(k));
            let prefs = self.hist.prefs.entry(k).or_default();
            for n in s.owners(p).iter().copied().chain(s.pending(p)) {
                if !prefs.contains(&n) {
                    prefs.push(n);
                }
            }
        }
        // Flips: the new owners of a partition had to receive its records.
        let keys_of = |p: usize, keys: u32| -> Vec<Vec<u8>> {
            (0..keys)
                .map(key_name)
                .filter(|k| partition_of(k) == p)
                .collect()
        };
        for p in 0..crate::limits::PARTITION_COUNT {
            let (was, now) = (old.owners(p), s.owners(p));
            let new: Vec<u32> = now.iter().copied().filter(|n| !was.contains(n)).collect();
            if new.is_empty() {
                continue;
            }
            let keys = keys_of(p, self.p.keys);
            let mut bytes = 0;
            for n in was.iter().chain(now) {
                bytes = bytes.max(self.partition_bytes(*n, &keys));
            }
            self.elastic.copies += new.len() as u64;
            self.elastic.moved_min += bytes * new.len() as u64;
            self.check_flip(p, now, s.version());
        }
        for m in s.members() {
            if m.status == MemberStatus::Removed && old.status(m.id) != Some(MemberStatus::Removed)
            {
                self.elastic.completed += 1;
                trace!(self.trace, "n{} is out of the ring", m.id);
            }
            // (Counted once: two states of one version may alternate while two leaders
            // disagree.)
            if m.status == MemberStatus::Up
                && m.id > self.p.nodes
                && self.elastic.admitted.insert(m.id)
            {
                trace!(self.trace, "n{} is up in the ring", m.id);
            }
        }
    }

    /// `flip`: partition `p` just flipped to `owners` (ring `version`): every acknowledged,
    /// covered PUT of its keys is held (that version or a newer one) by as many of them as
    /// its level asked. A write before the change is copied from the owner the new one
    /// replaces (or from every surviving owner); one during the change needs an
    /// acknowledgement more per pending owner: so a correct flip never leaves the new owners
    /// short of the level. Owners down now are given the benefit of the doubt; keys whose
    /// newest write may be shadowed by a delete or an expiry are left to `lost-write`.
    pub(super) fn check_flip(&mut self, p: usize, owners: &[u32], version: u64) {
        if self.siblings() {
            return self.check_flip_causal(p, owners, version);
        }
        let now = self.now;
        for k in 0..self.p.keys {
            let kname = key_name(k);
            if partition_of(&kname) != p {
                continue;
            }
            let Some(ops) = self.hist.by_key.get(&k) else {
                continue;
            };
            let newest = ops
                .iter()
                .map(|&w| &self.hist.ops[w as usize])
                .filter(|w| {
                    w.kind == OpKind::Put
                        && w.ttl_ms == 0
                        && w.acked_version().is_some()
                        && self.hist.covered(w, now, true)
                })
                .max_by_key(|w| w.acked_version());
            let Some(w) = newest else { continue };
            let (wv, required, id) = (w.acked_version().expect("filtered"), w.required, w.id);
            let shadowed = ops.iter().any(|&d| {
                let d = &self.hist.ops[d as usize];
                (d.kind == OpKind::Delete || d.ttl_ms > 0)
                    && d.issue_seq != 0
                    && d.acked_version().is_none_or(|dv| dv > wv)
            });
            if shadowed {
                continue;
            }
            let mut holding = Vec::new();
            for &n in owners {
                let node = &mut self.nodes[n as usize - 1];
                let shards = node.shards;
                let held = match node.up.as_mut() {
                    None => true,
                    Some(run) => run.cores[crate::hash::shard_of(&kname, shards)]
                        .store_mut()
                        .get(&kname)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.version >= wv),
                };
                if held {
                    holding.push(n);
                }
            }
            if holding.len() < required {
                let d = format!(
                    "partition {p} flipped to {owners:?} (ring version {version}), but only \
                     {holding:?} hold PUT op {id}, acknowledged with version {} by {required}",
                    self.v(wv)
                );
                trace!(self.trace, "flip k{k}: {d}");
                self.hist.report("flip", Some(k), d);
            }
        }
    }

    /// The encoded bytes of node `id`'s records of `keys` (0 if it is down).
    fn partition_bytes(&mut self, id: u32, keys: &[Vec<u8>]) -> u64 {
        let n = &mut self.nodes[id as usize - 1];
        let shards = n.shards;
        let Some(run) = n.up.as_mut() else {
            return 0;
        };
        keys.iter()
            .filter_map(|k| {
                let s = run.cores[crate::hash::shard_of(k, shards)]
                    .store_mut()
                    .get(k)
                    .ok()??;
                Some(AE_RECORD_HEADER + k.len() as u64 + s.value.map_or(0, |v| v.len() as u64))
            })
            .sum()
    }

    /// `transfer_bytes` of node `id`'s running life.
    pub(super) fn moved_bytes_of(&self, id: u32) -> u64 {
        let Some(run) = &self.node(id).up else {
            return 0;
        };
        let mut sum = 0;
        for c in run.cores.iter().filter_map(|c| c.cluster_node()) {
            c.ring_stats_report(&mut |name, v| {
                if name == "transfer_bytes" {
                    sum += v;
                }
            });
        }
        sum
    }

    /// The newest ring state a running node holds now (a version seen earlier may have
    /// been lost with its only holder's crash).
    pub(super) fn running_ring(&self) -> Option<Arc<RingState>> {
        self.nodes
            .iter()
            .filter_map(|n| n.up.as_ref())
            .flat_map(|r| r.cores.iter().filter_map(|c| c.cluster_node()))
            .map(|c| c.ring_state())
            .max_by_key(|s| s.version())
            .cloned()
    }

    /// What keeps the liveness phase waiting on the ring: commands not shown, a change still
    /// running or paused, nodes behind the newest version or holding another state of it.
    pub(super) fn ring_waits(&self) -> Vec<String> {
        let mut waits = Vec::new();
        if !self.elastic.goals.is_empty() {
            waits.push(format!(
                "commands not in the ring: {:?}",
                self.elastic.goals
            ));
        }
        let Some(s) = &self.running_ring() else {
            return waits;
        };
        if let Some(c) = s.change() {
            if let Some(t) = s.target() {
                let differ: Vec<String> = (0..crate::limits::PARTITION_COUNT)
                    .filter(|&p| s.owners(p) != t.owners(p))
                    .take(4)
                    .map(|p| format!("p{p} {:?}->{:?}", s.owners(p), t.owners(p)))
                    .collect();
                waits.push(format!("owners still to flip: {}", differ.join(" ")));
            }
            waits.push(format!(
                "the {c} runs (version {}, settled {}, {} partitions to flip)",
                s.version(),
                s.settled(),
                s.moving_partitions().len()
            ));
        }
        if s.paused() {
            waits.push("moves paused".into());
        }
        if s.change().is_some() {
            // Where the copies stand, per node (TRANSFERS).
            for n in &self.nodes {
                let Some(run) = &n.up else { continue };
                let mut states: std::collections::BTreeMap<&str, usize> = Default::default();
                let reports: Vec<_> = run
                    .cores
                    .iter()
                    .filter_map(|c| c.cluster_node())
                    .map(|c| c.transfer_report(0))
                    .collect();
                for row in reports.iter().flat_map(|r| &r.rows) {
                    *states.entry(row.state).or_default() += 1;
                }
                let leader = run.cores[0].cluster_node().map_or(0, |c| c.leader());
                if !states.is_empty() {
                    waits.push(format!("n{} (leader n{leader}) copies {states:?}", n.id));
                }
            }
        }
        for n in &self.nodes {
            let Some(run) = &n.up else { continue };
            for (k, c) in run.cores.iter().enumerate() {
                let Some(held) = c.cluster_node().map(|c| c.ring_state()) else {
                    continue;
                };
                let v = held.version();
                if v != s.version() {
                    waits.push(format!(
                        "n{}/{k} holds ring version {v} of {}",
                        n.id,
                        s.version()
                    ));
                } else if !Arc::ptr_eq(held, s) && **held != **s {
                    waits.push(format!(
                        "n{}/{k} holds another state of ring version {v}",
                        n.id
                    ));
                }
            }
        }
        waits
    }

    /// `placement`: the running nodes holding a record of each key are exactly its owners
    /// (module doc). `live(k)`: whether the owners agreed on a live record of key `k`.
    pub(super) fn placement_errors(&mut self, live: &dyn Fn(u32) -> bool) -> Vec<(u32, String)> {
        let keys: Vec<u32> = self.hist.by_key.keys().copied().collect();
        let mut found = Vec::new();
        for k in keys {
            let kname = key_name(k);
            let owners = self.ring.preference_for_key(&kname).to_vec();
            let mut holders = Vec::new();
            // (Every shard is looked at: a record in a shard not owning the key is an orphan
            // too, named n/shard.)
            let mut stray = Vec::new();
            for i in 0..self.nodes.len() {
                let n = &mut self.nodes[i];
                let (id, shards) = (n.id, n.shards);
                let Some(run) = n.up.as_mut() else { continue };
                let own = crate::hash::shard_of(&kname, shards);
                let mut held = false;
                for (j, c) in run.cores.iter_mut().enumerate() {
                    if c.store_mut().get(&kname).ok().flatten().is_some() {
                        held = true;
                        if j != own {
                            stray.push(format!("n{id}/{j}"));
                        }
                    }
                }
                if held {
                    holders.push(id);
                }
            }
            let orphans: Vec<u32> = holders
                .iter()
                .copied()
                .filter(|n| !owners.contains(n))
                .collect();
            let missing: Vec<u32> = owners
                .iter()
                .copied()
                .filter(|n| !holders.contains(n))
                .collect();
            if !orphans.is_empty() || !stray.is_empty() || (!missing.is_empty() && live(k)) {
                found.push((
                    k,
                    format!(
                        "held by {holders:?}, owners {owners:?} (ring version {}): orphan \
                         copies on {orphans:?}, missing on {missing:?}, in shards not \
                         owning it: {stray:?}",
                        self.ring.version()
                    ),
                ));
            }
        }
        found
    }

    /// `moved-bytes` (module doc), and the run's figures of the moves.
    pub(super) fn check_moved_bytes(&mut self) {
        let running: u64 = (1..=self.born()).map(|id| self.moved_bytes_of(id)).sum();
        let moved = self.elastic.moved_dead + running;
        let (min, copies) = (self.elastic.moved_min, self.elastic.copies);
        self.stats.moved_bytes = moved;
        self.stats.moved_min_bytes = min;
        self.stats.membership_changes = self.elastic.completed;
        self.stats.joins = self.elastic.joins;
        self.stats.replaces = self.elastic.replaces;
        self.stats.admitted = self.elastic.admitted.len() as u64;
        trace!(
            self.trace,
            "moves: {copies} partition copies flipped, {moved} bytes moved, minimum {min}"
        );
        let bound = MOVED_BYTES_FACTOR * min + MOVED_BYTES_SLACK * copies;
        if moved > bound {
            self.hist.report(
                "moved-bytes",
                None,
                format!(
                    "copies moved {moved} bytes for {copies} partition copies whose records \
                     weigh {min} bytes (bound {MOVED_BYTES_FACTOR}x + {MOVED_BYTES_SLACK} per \
                     copy = {bound})"
                ),
            );
        }
    }
}
