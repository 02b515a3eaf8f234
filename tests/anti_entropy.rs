//! Anti-entropy in the simulator's scripted cluster ([`dkv::sim::Cluster`]: the shipping
//! shard cores over crashable disks, virtual time, no sockets): replicas converge with hints
//! off and no reads (so no read repair), an idle exchange is cheap, tombstones are collected
//! only once every replica holds them, and a replica that was away longer than the tombstone
//! window comes back without resurrecting deleted keys. Each scenario runs with one shard
//! per node and with nodes of 1, 2 and 3 shards.

use dkv::cluster::coordinator::Outcome;
use dkv::protocol::{Consistency, Request};
use dkv::sim::{Cluster, ClusterSpec};
use dkv::version::Version;
use std::collections::BTreeMap;

const INTERVAL_MS: u64 = 50;
const THRESHOLD: u32 = 4;
const AE_INTERVAL_MS: u64 = 200;

/// Shards per node of the multi-shard runs.
const MIXED: [usize; 3] = [1, 2, 3];

fn start(window_ms: u64, shards: &[usize], seed: u64) -> Cluster {
    let mut s = ClusterSpec::new(3, 3);
    s.shards = shards.to_vec();
    s.seed = seed;
    s.gossip_interval_ms = INTERVAL_MS;
    s.failure_threshold = THRESHOLD;
    s.request_timeout_ms = 300;
    s.hinted_handoff = false;
    s.anti_entropy_interval_ms = AE_INTERVAL_MS;
    s.tombstone_window_ms = window_ms;
    // Small segments and eager compaction, so that collectable tombstones go.
    s.segment_size_max = 4096;
    s.compaction_dead_percent = 1;
    s.compaction_dead_bytes_min = 1;
    Cluster::start(s)
}

fn written(o: Outcome) -> Version {
    match o {
        Outcome::Written { version, .. } => version,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// Crash node `id` and run until the others see it failed.
fn crash_and_detect(c: &mut Cluster, id: u32) {
    c.crash(id);
    c.run_until(5_000, |c| {
        (1..=3)
            .filter(|&n| n != id)
            .all(|n| c.stat(n, "cluster_alive") == 2)
    })
    .expect("failure detected");
    // Every shard decides with the node's view: let it reach them all.
    c.run_for(10);
}

/// Writes (key → expected version, and whether it is live) while node 3 is down.
fn write_while_down(
    c: &mut Cluster,
    keys: usize,
    deletes: usize,
) -> BTreeMap<Vec<u8>, (Version, bool)> {
    let mut expect = BTreeMap::new();
    for i in 0..keys {
        let k = format!("key:{i}").into_bytes();
        let via = 1 + (i % 2) as u32;
        let v = written(c.put(via, &k, format!("v{i}").as_bytes(), Consistency::Quorum));
        expect.insert(k, (v, true));
    }
    for i in 0..deletes {
        let k = format!("key:{i}").into_bytes();
        let v = written(c.delete(2, &k, Consistency::Quorum));
        expect.insert(k, (v, false));
    }
    expect
}

fn converged(c: &mut Cluster, id: u32, expect: &BTreeMap<Vec<u8>, (Version, bool)>) -> bool {
    expect.iter().all(|(k, &(v, live))| match c.replica(id, k) {
        Some(r) => {
            (live && r.version == v && r.value.is_some())
                || (!live && r.value.is_none() && r.version >= v)
        }
        None => false,
    })
}

/// Keys moved by anti-entropy so far, over the cluster (sent and pulled).
fn moved(c: &Cluster) -> u64 {
    c.stat_sum("aae_keys_sent") + c.stat_sum("aae_keys_repaired")
}

/// Ask node `id` for an anti-entropy round (the ANTI_ENTROPY opcode) and run until every
/// shard of it has completed a full round since.
fn on_demand_round(c: &mut Cluster, id: u32) {
    let full = c.stat(id, "aae_full_rounds");
    let shards = c.stat(id, "shards");
    let r = c
        .request(id, &Request::AntiEntropy)
        .expect("ANTI_ENTROPY answered");
    assert_eq!(r.status(), Some(dkv::protocol::Status::Ok));
    c.run_until(2 * AE_INTERVAL_MS, |c| {
        c.stat(id, "aae_full_rounds") >= full + shards
    })
    .expect("a triggered round runs at once (or right after the running one)");
}

fn missed_writes(shards: &[usize]) {
    let mut c = start(60_000, shards, 11);
    crash_and_detect(&mut c, 3);
    let expect = write_while_down(&mut c, 300, 30);
    c.restart(3);
    assert!(c.replica(3, b"key:200").is_none());
    let took = c.run_until(20 * AE_INTERVAL_MS, |c| converged(c, 3, &expect));
    let took = took.unwrap_or_else(|| {
        panic!(
            "node 3 did not converge within a few anti-entropy intervals:\n{:?}\n{:?}",
            c.stats(1),
            c.stats(3)
        )
    });
    println!("node 3 converged {took} ms after its restart");
    // No read happened: the repairs are anti-entropy's.
    assert_eq!(c.stat_sum("coord_reads"), 0);
    assert!(c.stat(3, "aae_keys_repaired") + c.stat(1, "aae_keys_repaired") >= 300);
    assert!(c.stat(1, "aae_keys_sent") + c.stat(2, "aae_keys_sent") >= 300);
    // The trees become equal everywhere (collectable tombstones are swept at slightly
    // different times on each node): a round then moves nothing.
    c.run_until(10 * AE_INTERVAL_MS, |c| {
        let before = moved(c);
        on_demand_round(c, 3);
        moved(c) == before
    })
    .expect("trees equal on every replica");
    assert!(c.stat(3, "aae_full_rounds") >= 1);
    assert!(c.stat(3, "aae_bytes_sent") > 0);
    c.assert_sound();
}

#[test]
fn missed_writes_converge_by_anti_entropy_alone() {
    missed_writes(&[1]);
}

#[test]
fn missed_writes_converge_by_anti_entropy_alone_with_mixed_shards() {
    missed_writes(&MIXED);
}

fn idle_exchange(shards: &[usize]) {
    let mut c = start(60_000, shards, 12);
    for i in 0..50 {
        written(c.put(1, format!("k{i}").as_bytes(), b"v", Consistency::All));
    }
    c.run_for(4 * AE_INTERVAL_MS);
    let before = c.stat(1, "aae_bytes_sent");
    let sent_keys = c.stat(1, "aae_keys_sent");
    let exchanges = c.stat(1, "aae_exchanges") + c.stat(1, "aae_exchanges_served");
    // The first round counted may be one that was running already: run a second.
    on_demand_round(&mut c, 1);
    on_demand_round(&mut c, 1);
    // Equal replicas: every exchange is one root comparison, a 25-byte AE_TREE request and a
    // 31-byte reply (plus a few STATUS reports to the leader), and nothing moves.
    let n = c.stat(1, "aae_exchanges") + c.stat(1, "aae_exchanges_served") - exchanges;
    let per_exchange = (c.stat(1, "aae_bytes_sent") - before) / n;
    println!("{n} idle exchanges, {per_exchange} bytes each");
    assert!(n >= 256, "{n} exchanges");
    assert!(
        per_exchange <= 40,
        "idle exchanges sent {per_exchange} bytes each"
    );
    assert_eq!(c.stat(1, "aae_keys_sent"), sent_keys);
    c.assert_sound();
}

#[test]
fn on_demand_round_and_idle_exchange_is_cheap() {
    idle_exchange(&[1]);
}

#[test]
fn on_demand_round_and_idle_exchange_is_cheap_with_mixed_shards() {
    idle_exchange(&MIXED);
}

fn tombstones_kept(shards: &[usize]) {
    let mut c = start(60_000, shards, 13);
    let mut tombs = Vec::new();
    for i in 0..20 {
        let k = format!("d{i}").into_bytes();
        written(c.put(1, &k, b"x", Consistency::All));
        tombs.push(k);
    }
    crash_and_detect(&mut c, 3);
    for k in &tombs {
        written(c.delete(1, k, Consistency::Quorum));
    }
    c.run_for(10 * AE_INTERVAL_MS);
    // Node 3 is down but within the window: no horizon can pass the deletes.
    for k in &tombs {
        assert!(c.replica(1, k).is_some(), "tombstone kept on node 1");
        assert!(c.replica(2, k).is_some(), "tombstone kept on node 2");
    }
    c.restart(3);
    c.run_until(20 * AE_INTERVAL_MS, |c| {
        tombs
            .iter()
            .all(|k| c.replica(3, k).is_some_and(|r| r.value.is_none()))
    })
    .expect("node 3 gets the tombstones");
    c.assert_sound();
}

#[test]
fn tombstones_are_kept_while_a_replica_is_down_within_the_window() {
    tombstones_kept(&[1]);
}

#[test]
fn tombstones_are_kept_while_a_replica_is_down_within_the_window_with_mixed_shards() {
    tombstones_kept(&MIXED);
}

fn no_resurrection(shards: &[usize]) {
    let window_ms = 2_000;
    let mut c = start(window_ms, shards, 14);
    let mut deleted = Vec::new();
    let mut kept = BTreeMap::new();
    for i in 0..60 {
        let k = format!("r{i}").into_bytes();
        let v = written(c.put(1, &k, b"old-value-padding-padding", Consistency::All));
        if i < 30 {
            deleted.push(k);
        } else {
            kept.insert(k, v);
        }
    }
    crash_and_detect(&mut c, 3);
    for k in &deleted {
        written(c.delete(2, k, Consistency::Quorum));
    }
    // Keep writing so segments roll and compaction has work.
    let mut n = 0;
    let took = c.run_until(30_000, |c| {
        if c.now_ms() % 10 == 0 {
            n += 1;
            let key = format!("filler{}", n % 50);
            let req = Request::Put {
                key: key.as_bytes(),
                value: &[7u8; 100],
                ttl_seconds: 0,
                consistency: Consistency::Quorum,
            };
            let _ = c.send(1, &req);
        }
        deleted
            .iter()
            .all(|k| c.replica(1, k).is_none() && c.replica(2, k).is_none())
    });
    assert!(
        took.is_some(),
        "tombstones collected on nodes 1 and 2 once node 3 is out of the window:\n{:?}\n{:?}",
        c.stats(1),
        c.stats(2)
    );
    println!(
        "tombstones collected {} ms after the deletes ({} swept on node 1, {} compactions)",
        took.unwrap_or(0),
        c.stat(1, "aae_swept"),
        c.stat(1, "storage_compactions")
    );
    assert!(c.stat(1, "aae_swept") > 0);
    c.restart(3);
    // Node 3 still holds the old values of the deleted keys; it comes back.
    assert!(c.replica(3, &deleted[0]).unwrap().value.is_some());
    assert!(
        c.stat(3, "aae_shards_rejoining") > 0,
        "node 3 rejoins before serving reads"
    );
    assert_eq!(
        c.get(3, &deleted[0], Consistency::Quorum),
        Outcome::NotFound,
        "reads skip the rejoining node"
    );
    c.run_until(30 * AE_INTERVAL_MS, |c| {
        c.stat(3, "aae_shards_rejoining") == 0
    })
    .expect("node 3 completes a full round");
    c.run_for(5 * AE_INTERVAL_MS);
    for k in &deleted {
        for id in 1..=3 {
            let r = c.replica(id, k);
            assert!(
                r.as_ref().is_none_or(|r| r.value.is_none()),
                "node {id} resurrected {k:?}: {r:?}"
            );
        }
        let via = 1 + (k.len() as u32 % 3);
        assert_eq!(c.get(via, k, Consistency::All), Outcome::NotFound);
    }
    for (k, v) in &kept {
        assert_eq!(c.replica(3, k).unwrap().version, *v);
    }
    println!(
        "node 3 rejoined; {} keys dropped by anti-entropy",
        c.stat_sum("aae_keys_dropped")
    );
    assert!(c.stat_sum("aae_keys_dropped") >= 30);
    c.assert_sound();
}

#[test]
fn collected_tombstones_do_not_resurrect_after_a_long_absence() {
    no_resurrection(&[1]);
}

#[test]
fn collected_tombstones_do_not_resurrect_after_a_long_absence_with_mixed_shards() {
    no_resurrection(&MIXED);
}
