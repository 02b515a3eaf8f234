//! A deterministic in-process cluster: 3-5 `ClusterNode`s with `MemoryStore`s, a virtual clock
//! and a message queue with seeded delays. No sockets, no threads, no sleeps: every scenario
//! of the cluster issue that can be shown in the pure core is shown here, fast and repeatable.

use dkv::cluster::coordinator::Outcome;
use dkv::cluster::hints::HintQueue;
use dkv::cluster::membership::MemberEvent;
use dkv::cluster::node::{ClusterNode, Output};
use dkv::cluster::{ClusterConfig, SplitMix64};
use dkv::protocol::{frame, Consistency, Status};
use dkv::storage::memory::MemoryStore;
use dkv::storage::{Store, Stored};
use dkv::version::Version;
use std::collections::BTreeMap;

const START_MS: u64 = 1_700_000_000_000;
const INTERVAL_MS: u64 = 50;
const THRESHOLD: u32 = 4;
const TICK_MS: u64 = 5;

enum Msg {
    Request { from: u32, to: u32, frame: Vec<u8> },
    Reply { from: u32, to: u32, frame: Vec<u8> },
}

struct SimNode {
    core: ClusterNode<u64>,
    store: MemoryStore,
    up: bool,
}

struct Sim {
    now: u64,
    config: ClusterConfig,
    nodes: Vec<SimNode>,
    /// (delivery time, sequence) → message: a deterministic order.
    net: BTreeMap<(u64, u64), Msg>,
    seq: u64,
    rng: SplitMix64,
    max_delay_ms: u64,
    /// Messages dropped per thousand.
    drop_per_mille: u64,
    replies: BTreeMap<u64, Outcome>,
    events: Vec<(u64, u32, MemberEvent)>,
    next_ctx: u64,
}

impl Sim {
    fn new(nodes: u32, replicas: usize, hinted_handoff: bool, seed: u64) -> Sim {
        let list: Vec<String> = (1..=nodes)
            .map(|i| format!("{i}=127.0.0.1:{}", 7000 + i))
            .collect();
        let mut config = ClusterConfig::build(1, &list.join(","), replicas).unwrap();
        config.gossip_interval_ms = INTERVAL_MS;
        config.failure_threshold = THRESHOLD;
        config.request_timeout_ms = 300;
        config.hinted_handoff = hinted_handoff;
        let mut sim = Sim {
            now: START_MS,
            nodes: Vec::new(),
            net: BTreeMap::new(),
            seq: 0,
            rng: SplitMix64::new(seed),
            max_delay_ms: 3,
            drop_per_mille: 0,
            replies: BTreeMap::new(),
            events: Vec::new(),
            next_ctx: 1,
            config,
        };
        for id in 1..=nodes {
            let core = sim.make_core(id);
            sim.nodes.push(SimNode {
                core,
                store: MemoryStore::new(),
                up: true,
            });
        }
        sim
    }

    fn make_core(&self, id: u32) -> ClusterNode<u64> {
        let mut c = self.config.clone();
        c.node_id = id;
        ClusterNode::new(c, self.now, id as u64 * 7919, HintQueue::in_memory(300))
    }

    fn node(&mut self, id: u32) -> &mut SimNode {
        &mut self.nodes[id as usize - 1]
    }

    /// Stop a node: it loses its in-memory core (hints, views) but keeps its store.
    fn crash(&mut self, id: u32) {
        self.node(id).up = false;
    }

    /// Restart a crashed node with a fresh core (a later incarnation) over its old store.
    fn restart(&mut self, id: u32) {
        let mut core = self.make_core(id);
        let now = self.now;
        core.recover_clock(&self.node(id).store, now);
        let n = self.node(id);
        n.core = core;
        n.up = true;
    }

    fn send(&mut self, msg: Msg) {
        if self.drop_per_mille > 0 && self.rng.below(1000) < self.drop_per_mille {
            return;
        }
        let delay = 1 + self.rng.below(self.max_delay_ms);
        self.seq += 1;
        self.net.insert((self.now + delay, self.seq), msg);
    }

    fn collect(&mut self, id: u32) {
        while let Some(out) = self.node(id).core.poll_output() {
            match out {
                Output::Send { to, frame } => self.send(Msg::Request {
                    from: id,
                    to,
                    frame,
                }),
                Output::Reply { ctx, outcome } => {
                    assert!(
                        self.replies.insert(ctx, outcome).is_none(),
                        "one reply per request"
                    );
                }
                Output::Event(e) => self.events.push((self.now, id, e)),
            }
        }
    }

    fn deliver(&mut self, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Request { from, to, frame } => {
                if !self.node(to).up || !self.node(from).up {
                    return;
                }
                let (f, _) = frame::parse(&frame).unwrap().unwrap();
                let mut reply = Vec::new();
                let n = self.node(to);
                n.core
                    .on_peer_request(
                        now,
                        &mut n.store,
                        from,
                        f.id,
                        f.op,
                        f.aux,
                        f.body,
                        &mut reply,
                    )
                    .unwrap();
                self.collect(to);
                self.send(Msg::Reply {
                    from: to,
                    to: from,
                    frame: reply,
                });
            }
            Msg::Reply { from, to, frame } => {
                if !self.node(to).up || !self.node(from).up {
                    return;
                }
                let (f, _) = frame::parse(&frame).unwrap().unwrap();
                let n = self.node(to);
                n.core.on_peer_reply(now, &mut n.store, from, &f);
                self.collect(to);
            }
        }
    }

    /// Advance the virtual clock by `ms`, delivering messages and ticking every node.
    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 1;
            while let Some(entry) = self.net.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let msg = entry.remove();
                self.deliver(msg);
            }
            if self.now.is_multiple_of(TICK_MS) {
                for id in 1..=self.nodes.len() as u32 {
                    if self.node(id).up {
                        let now = self.now;
                        let n = self.node(id);
                        n.core.on_tick(now, &mut n.store);
                        self.collect(id);
                    }
                }
            }
        }
    }

    /// Run until `cond` holds, at most `limit_ms`; returns the time it took.
    fn run_until(&mut self, limit_ms: u64, mut cond: impl FnMut(&Sim) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now < start + limit_ms {
            if cond(self) {
                return Some(self.now - start);
            }
            self.run(1);
        }
        None
    }

    fn put(&mut self, via: u32, key: &[u8], value: &[u8], c: Consistency) -> u64 {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let now = self.now;
        let n = self.node(via);
        n.core.write(now, &mut n.store, ctx, key, Some(value), 0, c);
        self.collect(via);
        ctx
    }

    fn get(&mut self, via: u32, key: &[u8], c: Consistency) -> u64 {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let now = self.now;
        let n = self.node(via);
        n.core.read(now, &mut n.store, ctx, key, c);
        self.collect(via);
        ctx
    }

    /// Run until request `ctx` is answered (at most 2 s) and return the answer.
    fn answer(&mut self, ctx: u64) -> Outcome {
        self.run_until(2_000, |s| s.replies.contains_key(&ctx))
            .expect("request answered in time");
        self.replies.remove(&ctx).unwrap()
    }

    fn local(&mut self, id: u32, key: &[u8]) -> Option<Stored> {
        self.node(id).store.get(key).unwrap()
    }

    /// The newest version any node holds for `key` (tombstones included).
    fn local_newest(&mut self, key: &[u8]) -> Version {
        (1..=self.nodes.len() as u32)
            .filter_map(|id| self.local(id, key).map(|r| r.version))
            .max()
            .unwrap_or(Version::ZERO)
    }

    fn warm_up(&mut self) {
        self.run(3 * INTERVAL_MS);
        // A node coordinates writes once it has measured its clock against every live peer
        // (issue 10); with gossip to two random peers per interval that takes a few intervals.
        for _ in 0..100 {
            let now = self.now;
            if self
                .nodes
                .iter()
                .all(|n| n.core.clock_refusal(now).is_none())
            {
                break;
            }
            self.run(INTERVAL_MS);
        }
        for id in 1..=self.nodes.len() as u32 {
            assert_eq!(
                self.node(id).core.membership().alive_ids().len(),
                self.nodes.len()
            );
        }
    }
}

fn written(o: &Outcome) -> Version {
    match o {
        Outcome::Written { version, .. } => *version,
        other => panic!("expected a write, got {other:?}"),
    }
}

#[test]
fn write_via_node_1_reads_back_via_node_3() {
    let mut s = Sim::new(3, 3, true, 1);
    s.warm_up();
    let w = s.put(1, b"hello", b"world", Consistency::Quorum);
    let v = written(&s.answer(w));
    let r = s.get(3, b"hello", Consistency::Quorum);
    assert_eq!(
        s.answer(r),
        Outcome::Found {
            version: v,
            value: b"world".to_vec(),
            expires_at_ms: 0
        }
    );
    s.run(50);
    for id in 1..=3 {
        assert_eq!(s.local(id, b"hello").unwrap().version, v, "node {id}");
    }
    let r = s.get(2, b"nothing", Consistency::All);
    assert_eq!(s.answer(r), Outcome::NotFound);
}

#[test]
fn single_replica_needs_no_peer_traffic() {
    let mut s = Sim::new(1, 1, true, 2);
    let w = s.put(1, b"k", b"v", Consistency::All);
    // Answered within the call: no message, no clock advance.
    assert!(matches!(s.replies.get(&w), Some(Outcome::Written { .. })));
    assert!(s.net.is_empty());
}

#[test]
fn failure_detection_quorum_all_and_leader() {
    let mut s = Sim::new(3, 3, true, 3);
    s.warm_up();
    assert!((1..=3).all(|id| s.nodes[id - 1].core.membership().leader() == 1));

    // Node 2 dies. Until it is detected, ALL writes time out; afterwards they are refused
    // at once as UNAVAILABLE, while QUORUM keeps working.
    s.crash(2);
    let took = s
        .run_until(5_000, |s| {
            !s.nodes[0].core.membership().is_alive(2) && !s.nodes[2].core.membership().is_alive(2)
        })
        .expect("node 2 detected as failed");
    let bound = INTERVAL_MS * THRESHOLD as u64;
    assert!(
        took >= bound - INTERVAL_MS && took <= bound + 2 * TICK_MS + 2 * INTERVAL_MS,
        "detected after {took} ms, interval × threshold = {bound} ms"
    );
    println!("failure detected after {took} ms (interval × threshold = {bound} ms)");

    let w = s.put(1, b"k", b"v1", Consistency::Quorum);
    written(&s.answer(w));
    let w = s.put(3, b"k", b"v2", Consistency::All);
    match s.answer(w) {
        Outcome::Failed { status, message } => {
            assert_eq!(status, Status::Unavailable);
            assert_eq!(message, "only 2 of 3 replicas are alive, 3 required");
        }
        other => panic!("{other:?}"),
    }
    let r = s.get(3, b"k", Consistency::Quorum);
    assert!(matches!(s.answer(r), Outcome::Found { value, .. } if value == b"v1"));
    let r = s.get(1, b"k", Consistency::All);
    assert!(matches!(
        s.answer(r),
        Outcome::Failed {
            status: Status::Unavailable,
            ..
        }
    ));

    // The leader (node 1) dies while node 2 is still down: node 3 leads.
    s.crash(1);
    s.run_until(5_000, |s| s.nodes[2].core.membership().leader() == 3)
        .expect("node 3 takes over");
    // Node 2 comes back (a new incarnation): it is the lowest live id, so it leads.
    s.restart(2);
    let took = s
        .run_until(5_000, |s| {
            s.nodes[2].core.membership().leader() == 2 && s.nodes[1].core.membership().leader() == 2
        })
        .expect("node 2 leads after its restart");
    assert!(took <= 3 * INTERVAL_MS, "took {took} ms");
    assert!(s
        .events
        .iter()
        .any(|(_, at, e)| *at == 3 && matches!(e, MemberEvent::Recovered { node: 2, .. })));
    let text = s.nodes[2].core.render_cluster();
    assert!(text.contains("1 127.0.0.1:7001 failed"), "{text}");
    assert!(
        text.contains("2 127.0.0.1:7002 alive") && text.contains(" leader"),
        "{text}"
    );
}

#[test]
fn restarted_node_catches_up_through_hints() {
    let mut s = Sim::new(3, 3, true, 4);
    s.warm_up();
    s.crash(2);
    s.run_until(5_000, |s| !s.nodes[0].core.membership().is_alive(2))
        .unwrap();
    let mut versions = Vec::new();
    for i in 0..20 {
        let key = format!("key{i}");
        let w = s.put(
            1 + 2 * (i % 2),
            key.as_bytes(),
            b"during",
            Consistency::Quorum,
        );
        versions.push(written(&s.answer(w)));
    }
    assert!(s.local(2, b"key0").is_none());
    let stored: u64 = [0, 2]
        .iter()
        .map(|&i| s.nodes[i].core.hints().stats().stored)
        .sum();
    assert_eq!(stored, 20);

    s.restart(2);
    s.run_until(5_000, |s| {
        s.nodes[0].core.hints().stats().pending + s.nodes[2].core.hints().stats().pending == 0
    })
    .expect("hints delivered");
    for (i, v) in versions.iter().enumerate() {
        let key = format!("key{i}");
        assert_eq!(s.local(2, key.as_bytes()).unwrap().version, *v);
    }
    let delivered: u64 = [0, 2]
        .iter()
        .map(|&i| s.nodes[i].core.hints().stats().delivered)
        .sum();
    assert_eq!(delivered, 20);
    assert!(s.nodes[1].core.stats_text().contains("hints_received 20"));
}

#[test]
fn read_repair_fixes_a_replica_that_missed_writes() {
    let mut s = Sim::new(3, 3, false, 5);
    s.warm_up();
    s.crash(2);
    s.run_until(5_000, |s| !s.nodes[0].core.membership().is_alive(2))
        .unwrap();
    let w = s.put(1, b"k", b"new", Consistency::Quorum);
    let v = written(&s.answer(w));
    let w = s.put(3, b"gone", b"x", Consistency::Quorum);
    written(&s.answer(w));
    s.restart(2);
    s.run_until(5_000, |s| s.nodes[0].core.membership().is_alive(2))
        .unwrap();
    assert!(
        s.local(2, b"k").is_none(),
        "no hints: node 2 missed the write"
    );
    // A read through node 2 itself answers the newest value and repairs node 2.
    let r = s.get(2, b"k", Consistency::All);
    assert!(matches!(s.answer(r), Outcome::Found { version, .. } if version == v));
    s.run(50);
    assert_eq!(s.local(2, b"k").unwrap().version, v);
    // A delete while node 2 is down, then a read: the tombstone is repaired too.
    s.crash(2);
    s.run_until(5_000, |s| !s.nodes[0].core.membership().is_alive(2))
        .unwrap();
    let ctx = s.next_ctx;
    s.next_ctx += 1;
    let now = s.now;
    let n = s.node(1);
    n.core
        .write(now, &mut n.store, ctx, b"k", None, 0, Consistency::Quorum);
    s.collect(1);
    let tomb = written(&s.answer(ctx));
    s.restart(2);
    s.run_until(5_000, |s| s.nodes[2].core.membership().is_alive(2))
        .unwrap();
    assert!(s.local(2, b"k").unwrap().value.is_some());
    let r = s.get(3, b"k", Consistency::All);
    assert_eq!(s.answer(r), Outcome::NotFound);
    s.run(50);
    let held = s.local(2, b"k").unwrap();
    assert_eq!((held.version, held.value), (tomb, None));
}

#[test]
fn same_key_concurrent_writes_converge() {
    for seed in 0..20 {
        let mut s = Sim::new(5, 3, true, 100 + seed);
        s.max_delay_ms = 20;
        s.warm_up();
        let mut ctxs = Vec::new();
        for round in 0..5 {
            for via in 1..=5 {
                let value = format!("v{round}-{via}");
                ctxs.push(s.put(via, b"contended", value.as_bytes(), Consistency::One));
            }
            let pause = s.rng.below(5);
            s.run(pause);
        }
        let mut acked = Vec::new();
        for ctx in ctxs {
            acked.push(written(&s.answer(ctx)));
        }
        s.run(200);
        let newest = *acked.iter().max().unwrap();
        let prefs = s.nodes[0]
            .core
            .ring()
            .preference_for_key(b"contended")
            .to_vec();
        for id in 1..=5u32 {
            let held = s.local(id, b"contended");
            if prefs.contains(&id) {
                assert_eq!(held.unwrap().version, newest, "seed {seed} node {id}");
            } else {
                assert!(held.is_none(), "seed {seed}: node {id} is not a replica");
            }
        }
        // Every coordinator's versions are distinct (node id in the low bits).
        let mut sorted = acked.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), acked.len());
    }
}

/// Seeded chaos: random writes, deletes and reads through random nodes while messages are
/// delayed and dropped and nodes crash (losing their in-memory core: views, hints, pending
/// operations; keeping their store) and restart. Afterwards every key read with ALL returns
/// the newest acknowledged write or a newer attempted one, and the replicas converge.
#[test]
fn chaos_loses_no_acknowledged_write() {
    for seed in 0..12u64 {
        let mut s = Sim::new(4, 3, seed % 2 == 0, 1000 + seed);
        s.max_delay_ms = 15;
        s.drop_per_mille = 20;
        s.warm_up();
        // Per key: every write attempted (version unknown until acked) and the acked ones.
        let keys: Vec<Vec<u8>> = (0..12).map(|i| format!("key{i}").into_bytes()).collect();
        let mut attempted: BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>> = BTreeMap::new();
        let mut pending: BTreeMap<u64, (Vec<u8>, Option<Vec<u8>>)> = BTreeMap::new();
        let mut acked: BTreeMap<Vec<u8>, Version> = BTreeMap::new();
        let mut down: Option<(u32, u64)> = None;
        for step in 0..600u64 {
            let r = s.rng.below(100);
            if let Some((id, until)) = down {
                if s.now >= until {
                    s.restart(id);
                    down = None;
                }
            } else if r < 2 {
                let id = 1 + s.rng.below(4) as u32;
                s.crash(id);
                let until = s.now + 100 + s.rng.below(800);
                down = Some((id, until));
            }
            let via = 1 + s.rng.below(4) as u32;
            if s.node(via).up {
                let key = keys[s.rng.below(keys.len() as u64) as usize].clone();
                let c = [Consistency::One, Consistency::Quorum, Consistency::All]
                    [s.rng.below(3) as usize];
                let ctx = s.next_ctx;
                s.next_ctx += 1;
                let now = s.now;
                if r < 60 {
                    let value = (r >= 10).then(|| format!("{seed}-{step}").into_bytes());
                    attempted
                        .entry(key.clone())
                        .or_default()
                        .push(value.clone());
                    let n = s.node(via);
                    n.core
                        .write(now, &mut n.store, ctx, &key, value.as_deref(), 0, c);
                    pending.insert(ctx, (key, value));
                } else {
                    let n = s.node(via);
                    n.core.read(now, &mut n.store, ctx, &key, c);
                }
                s.collect(via);
            }
            let pause = s.rng.below(20);
            s.run(pause);
            // Harvest answers; a crashed coordinator never answers (its core is gone).
            for (ctx, outcome) in std::mem::take(&mut s.replies) {
                if let Some((key, _)) = pending.remove(&ctx) {
                    if let Outcome::Written { version, .. } = outcome {
                        let e = acked.entry(key).or_insert(version);
                        *e = (*e).max(version);
                    }
                } else if let Outcome::Found { value, .. } = &outcome {
                    // A read never returns a value nobody wrote.
                    assert!(
                        attempted
                            .values()
                            .flatten()
                            .any(|v| v.as_deref() == Some(&value[..])),
                        "seed {seed}: read an unwritten value {value:?}"
                    );
                }
            }
        }
        // Liveness phase: no faults, everybody up, views settle.
        if let Some((id, _)) = down {
            s.restart(id);
        }
        s.drop_per_mille = 0;
        s.run(2_000);
        for key in &keys {
            let ctx = s.get(1, key, Consistency::All);
            let outcome = s.answer(ctx);
            let got = match &outcome {
                Outcome::Found { version, .. } => Some(*version),
                Outcome::NotFound => None,
                other => panic!("seed {seed}: final ALL read failed: {other:?}"),
            };
            if let Some(want) = acked.get(key) {
                // NOT_FOUND is fine only if a delete at least as new won: check the replicas.
                let held = s.local_newest(key);
                assert!(
                    held >= *want,
                    "seed {seed}: {key:?} lost its acknowledged version {want:?} (replicas hold {held:?}, read {got:?})"
                );
            }
        }
        assert!(
            acked.len() >= 6,
            "seed {seed}: only {} keys acknowledged",
            acked.len()
        );
        println!(
            "seed {seed}: {} writes attempted, {} keys with acknowledged writes, {} answers lost with crashed coordinators",
            attempted.values().map(Vec::len).sum::<usize>(),
            acked.len(),
            pending.len()
        );
        s.run(500);
        for key in &keys {
            let prefs = s.nodes[0].core.ring().preference_for_key(key).to_vec();
            let versions: Vec<Option<Version>> = prefs
                .iter()
                .map(|&id| s.local(id, key).map(|r| r.version))
                .collect();
            assert!(
                versions.iter().all(|v| *v == versions[0]),
                "seed {seed}: replicas of {key:?} diverge after repair: {versions:?}"
            );
        }
    }
}
