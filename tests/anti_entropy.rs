//! Anti-entropy in the deterministic in-process cluster (no sockets, virtual clock): replicas
//! converge with hints off and no reads (so no read repair), tombstones are collected only
//! once every replica holds them, and a replica that was away longer than the tombstone
//! window comes back without resurrecting deleted keys.

use dkv::cluster::coordinator::Outcome;
use dkv::cluster::hints::HintQueue;
use dkv::cluster::node::{ClusterNode, Output};
use dkv::cluster::{ClusterConfig, SplitMix64};
use dkv::protocol::{frame, Consistency};
use dkv::storage::logstore::{LogConfig, LogStore};
use dkv::storage::memory::MemoryStore;
use dkv::storage::vfs::MemVfs;
use dkv::storage::{Store, Stored};
use dkv::version::Version;
use std::collections::BTreeMap;
use std::path::Path;

const START_MS: u64 = 1_700_000_000_000;
const INTERVAL_MS: u64 = 50;
const THRESHOLD: u32 = 4;
const TICK_MS: u64 = 5;
const AE_INTERVAL_MS: u64 = 200;

enum Msg {
    Request { from: u32, to: u32, frame: Vec<u8> },
    Reply { from: u32, to: u32, frame: Vec<u8> },
}

struct SimNode {
    core: ClusterNode<u64>,
    store: Box<dyn Store>,
    up: bool,
}

struct Sim {
    now: u64,
    config: ClusterConfig,
    nodes: Vec<SimNode>,
    net: BTreeMap<(u64, u64), Msg>,
    seq: u64,
    rng: SplitMix64,
    replies: BTreeMap<u64, Outcome>,
    next_ctx: u64,
    log_vfs: Vec<Option<MemVfs>>,
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_size_max: 4096,
        compaction_dead_percent: 1,
        compaction_dead_bytes_min: 1,
        ..LogConfig::default()
    }
}

impl Sim {
    /// `durable`: nodes use a LogStore on an in-memory disk (so tombstones can be collected)
    /// instead of a MemoryStore.
    fn new(nodes: u32, window_ms: u64, durable: bool, seed: u64) -> Sim {
        let list: Vec<String> = (1..=nodes)
            .map(|i| format!("{i}=127.0.0.1:{}", 7000 + i))
            .collect();
        let mut config = ClusterConfig::build(1, &list.join(","), 3).unwrap();
        config.gossip_interval_ms = INTERVAL_MS;
        config.failure_threshold = THRESHOLD;
        config.request_timeout_ms = 300;
        config.hinted_handoff = false;
        config.anti_entropy_interval_ms = AE_INTERVAL_MS;
        config.tombstone_window_ms = window_ms;
        config.validate().unwrap();
        let mut sim = Sim {
            now: START_MS,
            nodes: Vec::new(),
            net: BTreeMap::new(),
            seq: 0,
            rng: SplitMix64::new(seed),
            replies: BTreeMap::new(),
            next_ctx: 1,
            log_vfs: Vec::new(),
            config,
        };
        for id in 1..=nodes {
            let (store, vfs): (Box<dyn Store>, _) = if durable {
                let vfs = MemVfs::new();
                let (s, _) = LogStore::open(vfs.clone(), Path::new("/d"), log_config()).unwrap();
                (Box::new(s), Some(vfs))
            } else {
                (Box::new(MemoryStore::new()), None)
            };
            sim.log_vfs.push(vfs);
            let mut core = sim.make_core(id);
            core.recover_clock(&*store, sim.now);
            sim.nodes.push(SimNode {
                core,
                store,
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

    fn crash(&mut self, id: u32) {
        self.node(id).up = false;
    }

    /// Restart with a fresh core over the node's store (reopened from its disk if durable).
    fn restart(&mut self, id: u32) {
        if let Some(vfs) = self.log_vfs[id as usize - 1].clone() {
            let (s, _) = LogStore::open(vfs, Path::new("/d"), log_config()).unwrap();
            self.node(id).store = Box::new(s);
        }
        let mut core = self.make_core(id);
        let now = self.now;
        core.recover_clock(&*self.node(id).store, now);
        let n = self.node(id);
        n.core = core;
        n.up = true;
    }

    fn send(&mut self, msg: Msg) {
        let delay = 1 + self.rng.below(3);
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
                    assert!(self.replies.insert(ctx, outcome).is_none());
                }
                Output::Event(_) => {}
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
                let _ = n.core.on_peer_request(
                    now,
                    &mut *n.store,
                    from,
                    f.id,
                    f.op,
                    f.aux,
                    f.body,
                    &mut reply,
                );
                n.store.sync().unwrap();
                self.collect(to);
                if !reply.is_empty() {
                    self.send(Msg::Reply {
                        from: to,
                        to: from,
                        frame: reply,
                    });
                }
            }
            Msg::Reply { from, to, frame } => {
                if !self.node(to).up || !self.node(from).up {
                    return;
                }
                let (f, _) = frame::parse(&frame).unwrap().unwrap();
                let n = self.node(to);
                n.core.on_peer_reply(now, &mut *n.store, from, &f);
                n.store.sync().unwrap();
                self.collect(to);
            }
        }
    }

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
                        n.core.on_tick(now, &mut *n.store);
                        n.store.maintenance(now, 256).unwrap();
                        n.store.sync().unwrap();
                        self.collect(id);
                    }
                }
            }
        }
    }

    fn run_until(&mut self, limit_ms: u64, mut cond: impl FnMut(&mut Sim) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now < start + limit_ms {
            if cond(self) {
                return Some(self.now - start);
            }
            self.run(10);
        }
        None
    }

    fn request(&mut self, via: u32, key: &[u8], value: Option<&[u8]>, c: Consistency) -> u64 {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let now = self.now;
        let n = self.node(via);
        n.core.write(now, &mut *n.store, ctx, key, value, 0, c);
        self.collect(via);
        ctx
    }

    fn read(&mut self, via: u32, key: &[u8], c: Consistency) -> u64 {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let now = self.now;
        let n = self.node(via);
        n.core.read(now, &mut *n.store, ctx, key, c);
        self.collect(via);
        ctx
    }

    fn answer(&mut self, ctx: u64) -> Outcome {
        self.run_until(3_000, |s| s.replies.contains_key(&ctx))
            .expect("request answered in time");
        self.replies.remove(&ctx).unwrap()
    }

    fn written(&mut self, ctx: u64) -> Version {
        match self.answer(ctx) {
            Outcome::Written { version, .. } => version,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn local(&mut self, id: u32, key: &[u8]) -> Option<Stored> {
        self.node(id).store.get(key).unwrap()
    }

    fn stat(&self, id: u32, name: &str) -> u64 {
        let t = self.nodes[id as usize - 1].core.stats_text_at(self.now);
        t.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {t}"))
    }

    fn warm_up(&mut self) {
        self.run(3 * INTERVAL_MS);
        for id in 1..=self.nodes.len() as u32 {
            assert_eq!(
                self.node(id).core.membership().alive_ids().len(),
                self.nodes.len()
            );
        }
    }

    fn wait_failed(&mut self, id: u32) {
        self.run_until(5_000, |s| {
            !s.nodes[0].core.membership().is_alive(id) || id == 1
        })
        .expect("failure detected");
    }
}

/// Writes (key → expected version, or None for deleted) while node 3 is down.
fn write_while_down(
    s: &mut Sim,
    keys: usize,
    deletes: usize,
) -> BTreeMap<Vec<u8>, (Version, bool)> {
    let mut expect = BTreeMap::new();
    for i in 0..keys {
        let k = format!("key:{i}").into_bytes();
        let via = 1 + (i % 2) as u32;
        let ctx = s.request(
            via,
            &k,
            Some(format!("v{i}").as_bytes()),
            Consistency::Quorum,
        );
        let v = s.written(ctx);
        expect.insert(k, (v, true));
    }
    for i in 0..deletes {
        let k = format!("key:{i}").into_bytes();
        let ctx = s.request(2, &k, None, Consistency::Quorum);
        let v = s.written(ctx);
        expect.insert(k, (v, false));
    }
    expect
}

fn converged(
    s: &mut Sim,
    id: u32,
    expect: &BTreeMap<Vec<u8>, (Version, bool)>,
    tomb_ok_absent: bool,
) -> bool {
    expect.iter().all(|(k, &(v, live))| match s.local(id, k) {
        Some(r) => {
            (live && r.version == v && r.value.is_some())
                || (!live && r.value.is_none() && r.version >= v)
        }
        None => !live && tomb_ok_absent,
    })
}

#[test]
fn missed_writes_converge_by_anti_entropy_alone() {
    let mut s = Sim::new(3, 60_000, false, 11);
    s.warm_up();
    s.crash(3);
    s.wait_failed(3);
    let expect = write_while_down(&mut s, 300, 30);
    assert!(s.local(3, b"key:200").is_none());
    s.restart(3);
    let took = s.run_until(20 * AE_INTERVAL_MS, |s| converged(s, 3, &expect, false));
    let took = took.unwrap_or_else(|| {
        panic!(
            "node 3 did not converge within a few anti-entropy intervals:\n{}\n{}",
            s.nodes[0].core.stats_text_at(s.now),
            s.nodes[2].core.stats_text_at(s.now)
        )
    });
    println!("node 3 converged {took} ms after its restart");
    // The trees agree everywhere, and no read happened: the repairs are anti-entropy's.
    assert_eq!(s.nodes[0].core.coordinator().stats().reads, 0);
    assert!(s.stat(3, "aae_keys_repaired") + s.stat(1, "aae_keys_repaired") >= 300);
    assert!(s.stat(1, "aae_keys_sent") + s.stat(2, "aae_keys_sent") >= 300);
    // The trees become equal everywhere (collectable tombstones are swept at slightly
    // different times on each node).
    let roots = |id: u32, s: &Sim| -> Vec<u64> {
        (0..dkv::limits::PARTITION_COUNT)
            .map(|p| {
                let t = s.nodes[id as usize - 1].core.anti_entropy().index().tree(p);
                t.map_or(0, |t| t.root_from_scratch())
            })
            .collect()
    };
    s.run_until(10 * AE_INTERVAL_MS, |s| {
        roots(1, s) == roots(3, s) && roots(2, s) == roots(3, s)
    })
    .expect("trees equal on every replica");
    s.run_until(10 * AE_INTERVAL_MS, |s| s.stat(3, "aae_full_rounds") >= 1)
        .expect("node 3 completes a full round");
    assert!(s.stat(3, "aae_bytes_sent") > 0);
}

#[test]
fn on_demand_round_and_idle_exchange_is_cheap() {
    let mut s = Sim::new(3, 60_000, false, 12);
    s.warm_up();
    for i in 0..50 {
        let ctx = s.request(1, format!("k{i}").as_bytes(), Some(b"v"), Consistency::All);
        s.written(ctx);
    }
    s.run(4 * AE_INTERVAL_MS);
    let full = s.stat(1, "aae_full_rounds");
    let before = s.stat(1, "aae_bytes_sent");
    let sent_keys = s.stat(1, "aae_keys_sent");
    let exchanges = s.stat(1, "aae_exchanges") + s.stat(1, "aae_exchanges_served");
    s.nodes[0].core.trigger_anti_entropy(s.now);
    s.run_until(2 * AE_INTERVAL_MS, |s| s.stat(1, "aae_full_rounds") > full)
        .expect("a triggered round runs at once (or right after the running one)");
    // Equal replicas: every exchange is one root comparison, a 25-byte AE_TREE request and a
    // 31-byte reply (plus a few STATUS reports to the leader), and nothing moves.
    let n = s.stat(1, "aae_exchanges") + s.stat(1, "aae_exchanges_served") - exchanges;
    let per_exchange = (s.stat(1, "aae_bytes_sent") - before) / n;
    assert!(n >= 256, "{n} exchanges");
    assert!(
        per_exchange <= 40,
        "idle exchanges sent {per_exchange} bytes each"
    );
    assert_eq!(s.stat(1, "aae_keys_sent"), sent_keys);
}

#[test]
fn tombstones_are_kept_while_a_replica_is_down_within_the_window() {
    let mut s = Sim::new(3, 60_000, true, 13);
    s.warm_up();
    let mut tombs = Vec::new();
    for i in 0..20 {
        let k = format!("d{i}").into_bytes();
        let c = s.request(1, &k, Some(b"x"), Consistency::All);
        s.written(c);
        tombs.push(k);
    }
    s.crash(3);
    s.wait_failed(3);
    for k in &tombs {
        let c = s.request(1, k, None, Consistency::Quorum);
        s.written(c);
    }
    s.run(10 * AE_INTERVAL_MS);
    // Node 3 is down but within the window: no horizon can pass the deletes.
    for k in &tombs {
        assert!(s.local(1, k).is_some(), "tombstone kept on node 1");
    }
    s.restart(3);
    s.run_until(20 * AE_INTERVAL_MS, |s| {
        tombs
            .iter()
            .all(|k| s.local(3, k).is_some_and(|r| r.value.is_none()))
    })
    .expect("node 3 gets the tombstones");
}

#[test]
fn collected_tombstones_do_not_resurrect_after_a_long_absence() {
    let window_ms = 2_000;
    let mut s = Sim::new(3, window_ms, true, 14);
    s.warm_up();
    let mut deleted = Vec::new();
    let mut kept = BTreeMap::new();
    for i in 0..60 {
        let k = format!("r{i}").into_bytes();
        let c = s.request(1, &k, Some(b"old-value-padding-padding"), Consistency::All);
        let v = s.written(c);
        if i < 30 {
            deleted.push(k);
        } else {
            kept.insert(k, v);
        }
    }
    s.crash(3);
    s.wait_failed(3);
    let mut tomb_versions = Vec::new();
    for k in &deleted {
        let c = s.request(2, k, None, Consistency::Quorum);
        tomb_versions.push(s.written(c));
    }
    // Keep writing so segments roll and compaction has work.
    let mut n = 0;
    let took = s.run_until(30_000, |s| {
        n += 1;
        let c = s.request(
            1,
            format!("filler{}", n % 50).as_bytes(),
            Some(&[7u8; 100]),
            Consistency::Quorum,
        );
        let _ = c;
        deleted
            .iter()
            .all(|k| s.local(1, k).is_none() && s.local(2, k).is_none())
    });
    assert!(
        took.is_some(),
        "tombstones collected on nodes 1 and 2 once node 3 is out of the window:\n{}\n{}",
        s.nodes[0].core.stats_text_at(s.now),
        s.nodes[1].core.stats_text_at(s.now)
    );
    assert!(s.stat(1, "aae_swept") > 0);
    // Node 3 still holds the old values of the deleted keys; it comes back.
    assert!(s.local(3, &deleted[0]).unwrap().value.is_some());
    s.restart(3);
    assert!(
        !s.nodes[2].core.serving_reads(),
        "node 3 rejoins before serving reads"
    );
    let r = s.read(3, &deleted[0], Consistency::Quorum);
    assert_eq!(
        s.answer(r),
        Outcome::NotFound,
        "reads skip the rejoining node"
    );
    s.run_until(30 * AE_INTERVAL_MS, |s| s.nodes[2].core.serving_reads())
        .expect("node 3 completes a full round");
    s.run(5 * AE_INTERVAL_MS);
    for k in &deleted {
        for id in 1..=3 {
            let r = s.local(id, k);
            assert!(
                r.as_ref().is_none_or(|r| r.value.is_none()),
                "node {id} resurrected {k:?}: {r:?}"
            );
        }
        let r = s.read(1 + (k.len() as u32 % 3), k, Consistency::All);
        assert_eq!(s.answer(r), Outcome::NotFound);
    }
    for (k, v) in &kept {
        assert_eq!(s.local(3, k).unwrap().version, *v);
    }
    assert!(
        s.stat(3, "aae_keys_dropped")
            + s.stat(1, "aae_keys_dropped")
            + s.stat(2, "aae_keys_dropped")
            >= 30
    );
}
