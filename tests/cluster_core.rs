//! The cluster's core scenarios in the simulator's scripted cluster ([`dkv::sim::Cluster`]):
//! the shard cores `kvd` ships, over their crashable disks, driven in virtual time from one
//! seed. No sockets, no threads, no sleeps: every scenario of the cluster issue that can be
//! shown without processes is shown here, fast and repeatable, with one shard per node and
//! with nodes of 1, 2 and 3 shards.

use dkv::cluster::coordinator::Outcome;
use dkv::cluster::SplitMix64;
use dkv::protocol::{Consistency, Request, Status};
use dkv::sim::{Cluster, ClusterSpec, Ticket};
use dkv::version::Version;
use std::collections::BTreeMap;

const INTERVAL_MS: u64 = 50;
const THRESHOLD: u32 = 4;
const TICK_MS: u64 = 5;

/// Shards per node of the multi-shard runs: every node a different count.
const MIXED: [usize; 3] = [1, 2, 3];

fn spec(
    nodes: u32,
    replicas: usize,
    shards: &[usize],
    hinted_handoff: bool,
    seed: u64,
) -> ClusterSpec {
    let mut s = ClusterSpec::new(nodes, replicas);
    s.shards = shards.to_vec();
    s.seed = seed;
    s.gossip_interval_ms = INTERVAL_MS;
    s.failure_threshold = THRESHOLD;
    s.request_timeout_ms = 300;
    s.tick_ms = TICK_MS;
    s.hinted_handoff = hinted_handoff;
    s
}

fn written(o: &Outcome) -> Version {
    match o {
        Outcome::Written { version, .. } => *version,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// Run until node `by` sees `want` nodes alive.
fn wait_alive(c: &mut Cluster, by: u32, want: u64) {
    c.run_until(5_000, |c| c.stat(by, "cluster_alive") == want)
        .unwrap_or_else(|| panic!("n{by} sees {want} nodes alive within 5 s"));
}

fn write_read_back(shards: &[usize]) {
    let mut c = Cluster::start(spec(3, 3, shards, true, 1));
    let v = written(&c.put(1, b"hello", b"world", Consistency::Quorum));
    assert_eq!(
        c.get(3, b"hello", Consistency::Quorum),
        Outcome::Found {
            version: v,
            value: b"world".to_vec(),
            expires_at_ms: 0
        }
    );
    c.run_for(50);
    for id in 1..=3 {
        assert_eq!(c.replica(id, b"hello").unwrap().version, v, "node {id}");
    }
    assert_eq!(c.get(2, b"nothing", Consistency::All), Outcome::NotFound);
    c.assert_sound();
}

#[test]
fn write_via_node_1_reads_back_via_node_3() {
    write_read_back(&[1]);
}

#[test]
fn write_via_node_1_reads_back_via_node_3_with_mixed_shards() {
    write_read_back(&MIXED);
}

#[test]
fn single_replica_needs_no_peer_traffic() {
    for shards in [1, 3] {
        let mut c = Cluster::start(spec(1, 1, &[shards], true, 2));
        let (t0, frames) = (c.now_ms(), c.frames_delivered());
        // Answered within the turn of the shard owning the key (another shard would
        // forward it by mail): no peer frame, no clock advance.
        let owner = dkv::hash::shard_of(b"k", shards);
        let t = c
            .send_to(1, owner, &put_req(b"k", b"v", Consistency::All))
            .unwrap();
        let r = c.try_answer(t).expect("answered at once");
        assert!(matches!(r.outcome(), Outcome::Written { .. }));
        assert_eq!(c.now_ms(), t0);
        c.run_for(500);
        assert_eq!(c.frames_delivered(), frames);
        assert_eq!(frames, 0, "a single node has nobody to talk to");
        c.assert_sound();
    }
}

fn put_req<'a>(key: &'a [u8], value: &'a [u8], c: Consistency) -> Request<'a> {
    Request::Put {
        key,
        value,
        ttl_seconds: 0,
        consistency: c,
    }
}

fn failure_detection(shards: &[usize]) {
    let mut c = Cluster::start(spec(3, 3, shards, true, 3));
    assert!((1..=3).all(|id| c.stat(id, "cluster_leader") == 1));

    // Node 2 dies. Until it is detected, ALL writes time out; afterwards they are refused
    // at once as UNAVAILABLE, while QUORUM keeps working.
    c.crash(2);
    let took = c
        .run_until(5_000, |c| {
            c.stat(1, "cluster_alive") == 2 && c.stat(3, "cluster_alive") == 2
        })
        .expect("node 2 detected as failed");
    let bound = INTERVAL_MS * THRESHOLD as u64;
    assert!(
        took >= bound - INTERVAL_MS && took <= bound + 2 * TICK_MS + 2 * INTERVAL_MS,
        "detected after {took} ms, interval × threshold = {bound} ms"
    );
    println!("failure detected after {took} ms (interval × threshold = {bound} ms)");
    // Every shard decides with the view: let the view reach them all.
    c.run_for(10);

    written(&c.put(1, b"k", b"v1", Consistency::Quorum));
    match c.put(3, b"k", b"v2", Consistency::All) {
        Outcome::Failed { status, message } => {
            assert_eq!(status, Status::Unavailable);
            assert_eq!(message, "only 2 of 3 replicas are alive, 3 required");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(c.get(3, b"k", Consistency::Quorum), Outcome::Found { value, .. } if value == b"v1")
    );
    assert!(matches!(
        c.get(1, b"k", Consistency::All),
        Outcome::Failed {
            status: Status::Unavailable,
            ..
        }
    ));

    // The leader (node 1) dies while node 2 is still down: node 3 leads.
    c.crash(1);
    c.run_until(5_000, |c| c.stat(3, "cluster_leader") == 3)
        .expect("node 3 takes over");
    // Node 2 comes back (a new incarnation): it is the lowest live id, so it leads.
    let recoveries = c.stat(3, "recoveries");
    c.restart(2);
    let took = c
        .run_until(5_000, |c| {
            c.stat(3, "cluster_leader") == 2 && c.stat(2, "cluster_leader") == 2
        })
        .expect("node 2 leads after its restart");
    assert!(took <= 3 * INTERVAL_MS, "took {took} ms");
    // Every shard of node 3 answers CLUSTER with the view: let it reach them all.
    c.run_for(10);
    assert!(
        c.stat(3, "recoveries") > recoveries,
        "node 3 saw node 2 recover"
    );
    let text = c
        .request(3, &Request::Cluster)
        .expect("CLUSTER answered")
        .text();
    assert!(text.contains("1 127.0.0.1:7001 failed"), "{text}");
    assert!(
        text.contains("2 127.0.0.1:7002 alive") && text.contains(" leader"),
        "{text}"
    );
    c.assert_sound();
}

#[test]
fn failure_detection_quorum_all_and_leader() {
    failure_detection(&[1]);
}

#[test]
fn failure_detection_quorum_all_and_leader_with_mixed_shards() {
    failure_detection(&MIXED);
}

fn hints(shards: &[usize]) {
    let mut c = Cluster::start(spec(3, 3, shards, true, 4));
    c.crash(2);
    wait_alive(&mut c, 1, 2);
    wait_alive(&mut c, 3, 2);
    c.run_for(10);
    let mut versions = Vec::new();
    for i in 0..20 {
        let key = format!("key{i}");
        let via = 1 + 2 * (i % 2);
        versions.push(written(&c.put(
            via,
            key.as_bytes(),
            b"during",
            Consistency::Quorum,
        )));
    }
    assert_eq!(c.stat(1, "hints_stored") + c.stat(3, "hints_stored"), 20);

    c.restart(2);
    // Node 2 missed every write while it was down.
    assert!(c.replica(2, b"key0").is_none());
    c.run_until(5_000, |c| {
        c.stat(1, "hints_pending") + c.stat(3, "hints_pending") == 0
    })
    .expect("hints delivered");
    for (i, v) in versions.iter().enumerate() {
        let key = format!("key{i}");
        assert_eq!(c.replica(2, key.as_bytes()).unwrap().version, *v);
    }
    assert_eq!(
        c.stat(1, "hints_delivered") + c.stat(3, "hints_delivered"),
        20
    );
    assert_eq!(c.stat(2, "hints_received"), 20);
    c.assert_sound();
}

#[test]
fn restarted_node_catches_up_through_hints() {
    hints(&[1]);
}

#[test]
fn restarted_node_catches_up_through_hints_with_mixed_shards() {
    hints(&MIXED);
}

fn read_repair(shards: &[usize]) {
    let mut c = Cluster::start(spec(3, 3, shards, false, 5));
    c.crash(2);
    wait_alive(&mut c, 1, 2);
    wait_alive(&mut c, 3, 2);
    c.run_for(10);
    let v = written(&c.put(1, b"k", b"new", Consistency::Quorum));
    written(&c.put(3, b"gone", b"x", Consistency::Quorum));
    c.restart(2);
    c.wait_settled(5_000).expect("node 2 back in every view");
    assert!(
        c.replica(2, b"k").is_none(),
        "no hints: node 2 missed the write"
    );
    // A read through node 2 itself answers the newest value and repairs node 2.
    assert!(
        matches!(c.get(2, b"k", Consistency::All), Outcome::Found { version, .. } if version == v)
    );
    c.run_for(50);
    assert_eq!(c.replica(2, b"k").unwrap().version, v);
    assert_eq!(c.stat(2, "read_repairs_sent"), 1);
    // A delete while node 2 is down, then a read: the tombstone is repaired too.
    c.crash(2);
    wait_alive(&mut c, 1, 2);
    wait_alive(&mut c, 3, 2);
    c.run_for(10);
    let tomb = written(&c.delete(1, b"k", Consistency::Quorum));
    c.restart(2);
    c.wait_settled(5_000).expect("node 2 back in every view");
    assert!(c.replica(2, b"k").unwrap().value.is_some());
    assert_eq!(c.get(3, b"k", Consistency::All), Outcome::NotFound);
    c.run_for(50);
    let held = c.replica(2, b"k").unwrap();
    assert_eq!((held.version, held.value), (tomb, None));
    c.assert_sound();
}

#[test]
fn read_repair_fixes_a_replica_that_missed_writes() {
    read_repair(&[1]);
}

#[test]
fn read_repair_fixes_a_replica_that_missed_writes_with_mixed_shards() {
    read_repair(&MIXED);
}

fn partition_and_heal(shards: &[usize]) {
    let mut c = Cluster::start(spec(3, 3, shards, true, 6));
    c.partition(&[&[1, 2], &[3]]);
    c.run_until(5_000, |c| {
        c.stat(3, "cluster_alive") == 1
            && c.stat(1, "cluster_alive") == 2
            && c.stat(2, "cluster_alive") == 2
    })
    .expect("both sides see the partition");
    c.run_for(10);
    // The minority cannot reach a quorum; the majority can, and keeps a hint for node 3.
    assert!(matches!(
        c.put(3, b"p", b"minority", Consistency::Quorum),
        Outcome::Failed {
            status: Status::Unavailable,
            ..
        }
    ));
    let v = written(&c.put(1, b"p", b"majority", Consistency::Quorum));
    assert!(c.replica(3, b"p").is_none());
    c.heal();
    c.wait_settled(5_000)
        .expect("one view again after the heal");
    c.run_until(5_000, |c| {
        c.replica(3, b"p").is_some_and(|r| r.version == v)
    })
    .expect("the hint reaches node 3");
    assert!(
        matches!(c.get(3, b"p", Consistency::One), Outcome::Found { version, .. } if version == v)
    );
    c.assert_sound();
}

#[test]
fn a_partitioned_minority_refuses_quorum_writes_and_catches_up_after_the_heal() {
    partition_and_heal(&[1]);
}

#[test]
fn a_partitioned_minority_refuses_quorum_writes_and_catches_up_after_the_heal_with_mixed_shards() {
    partition_and_heal(&MIXED);
}

#[test]
fn same_key_concurrent_writes_converge() {
    for seed in 0..20 {
        let shards: &[usize] = if seed % 2 == 0 {
            &[1]
        } else {
            &[1, 2, 3, 1, 2]
        };
        let mut s = spec(5, 3, shards, true, 100 + seed);
        s.delay_max_ms = 20;
        let mut c = Cluster::start(s);
        let mut rng = SplitMix64::new(seed);
        let mut tickets: Vec<Ticket> = Vec::new();
        for round in 0..5 {
            for via in 1..=5 {
                let value = format!("v{round}-{via}");
                let req = put_req(b"contended", value.as_bytes(), Consistency::One);
                tickets.push(c.send(via, &req).expect("every node is up"));
            }
            let pause = rng.below(5);
            c.run_for(pause);
        }
        let mut acked = Vec::new();
        for t in tickets {
            let r = c.wait(t).expect("answered");
            acked.push(written(&r.outcome()));
        }
        c.run_for(200);
        let newest = *acked.iter().max().unwrap();
        let prefs = c.preference(b"contended");
        for id in 1..=5u32 {
            let held = c.replica(id, b"contended");
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
        c.assert_sound();
    }
}

/// Seeded chaos: random writes, deletes and reads through random nodes while frames are
/// delayed and dropped and nodes crash (losing their process: views, in-memory state,
/// requests in flight; keeping what they synced) and restart. Afterwards every key read with
/// ALL returns the newest acknowledged write or a newer attempted one, and the replicas
/// converge.
#[test]
fn chaos_loses_no_acknowledged_write() {
    for seed in 0..12u64 {
        let shards: &[usize] = if seed % 3 == 0 { &[1, 2, 3, 2] } else { &[1] };
        let mut s = spec(4, 3, shards, seed % 2 == 0, 1000 + seed);
        s.delay_max_ms = 15;
        s.drop_percent = 2;
        s.reorder = true;
        let mut c = Cluster::start(s);
        let mut rng = SplitMix64::new(seed);
        // Per key: every write attempted (version unknown until acked) and the acked ones.
        let keys: Vec<Vec<u8>> = (0..12).map(|i| format!("key{i}").into_bytes()).collect();
        let mut attempted: BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>> = BTreeMap::new();
        let mut pending: BTreeMap<u64, (Ticket, Vec<u8>, bool)> = BTreeMap::new();
        let mut acked: BTreeMap<Vec<u8>, Version> = BTreeMap::new();
        let mut down: Option<(u32, u64)> = None;
        let mut lost = 0;
        for step in 0..600u64 {
            let r = rng.below(100);
            if let Some((id, until)) = down {
                if c.now_ms() >= until {
                    c.restart(id);
                    down = None;
                }
            } else if r < 2 {
                let id = 1 + rng.below(4) as u32;
                c.crash(id);
                let until = c.now_ms() + 100 + rng.below(800);
                down = Some((id, until));
            }
            let via = 1 + rng.below(4) as u32;
            if c.is_up(via) {
                let key = keys[rng.below(keys.len() as u64) as usize].clone();
                let cons = [Consistency::One, Consistency::Quorum, Consistency::All]
                    [rng.below(3) as usize];
                let (req, is_write) = if r < 60 {
                    let value = (r >= 10).then(|| format!("{seed}-{step}").into_bytes());
                    attempted
                        .entry(key.clone())
                        .or_default()
                        .push(value.clone());
                    let req = match &value {
                        Some(v) => put_req(&key, v, cons),
                        None => Request::Delete {
                            key: &key,
                            consistency: cons,
                        },
                    };
                    (c.send(via, &req), true)
                } else {
                    let req = Request::Get {
                        key: &key,
                        consistency: cons,
                    };
                    (c.send(via, &req), false)
                };
                let t = req.expect("the node is up");
                pending.insert(step, (t, key, is_write));
            }
            let pause = rng.below(20);
            c.run_for(pause);
            // Harvest answers; a crashed coordinator never answers (its process is gone).
            let mut done = Vec::new();
            for (&at, (t, key, is_write)) in &pending {
                let Some(reply) = c.try_answer(*t) else {
                    continue;
                };
                done.push(at);
                match reply.outcome() {
                    Outcome::Written { version, .. } if *is_write => {
                        let e = acked.entry(key.clone()).or_insert(version);
                        *e = (*e).max(version);
                    }
                    // A read never returns a value nobody wrote.
                    Outcome::Found { value, .. } => assert!(
                        attempted
                            .values()
                            .flatten()
                            .any(|v| v.as_deref() == Some(&value[..])),
                        "seed {seed}: read an unwritten value {value:?}"
                    ),
                    _ => {}
                }
            }
            for at in done {
                pending.remove(&at);
            }
        }
        // Liveness phase: no faults, everybody up, views settle.
        if let Some((id, _)) = down {
            c.restart(id);
        }
        c.set_drop_percent(0);
        c.run_for(2_000);
        for (_, (t, _, _)) in std::mem::take(&mut pending) {
            if c.try_answer(t).is_none() {
                lost += 1;
            }
        }
        for key in &keys {
            let outcome = c.get(1, key, Consistency::All);
            let got = match &outcome {
                Outcome::Found { version, .. } => Some(*version),
                Outcome::NotFound => None,
                other => panic!("seed {seed}: final ALL read failed: {other:?}"),
            };
            if let Some(want) = acked.get(key) {
                // NOT_FOUND is fine only if a delete at least as new won: check the replicas.
                let held = c.newest_held(key);
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
            "seed {seed}: {} writes attempted, {} keys with acknowledged writes, {lost} answers lost with crashed coordinators",
            attempted.values().map(Vec::len).sum::<usize>(),
            acked.len(),
        );
        c.run_for(500);
        for key in &keys {
            let prefs = c.preference(key);
            let versions: Vec<Option<Version>> = prefs
                .iter()
                .map(|&id| c.replica(id, key).map(|r| r.version))
                .collect();
            assert!(
                versions.iter().all(|v| *v == versions[0]),
                "seed {seed}: replicas of {key:?} diverge after repair: {versions:?}"
            );
        }
        c.assert_sound();
    }
}
