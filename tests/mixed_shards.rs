//! Multi-process tests of a cluster whose nodes run different shard counts: three real `kvd`
//! processes on 127.0.0.1 with `--shards 1`, `2` and `3` (N=3, so every node holds every
//! partition, split differently over its shards). Only each node's membership shard gossips
//! and the others follow its view by mail, and anti-entropy reports reach the leader's
//! membership shard whatever the sender's shard count: replication, failure detection, hints,
//! anti-entropy and tombstone collection must all work across the mix, and a node with 3
//! shards must send no more gossip than a node with 1. Faults by PID only; every wait is a
//! poll with a deadline.

mod common;

use common::{wait_for, Node};
use dkv::client::{Client, ClientError};
use dkv::protocol::{Consistency, Status};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(40);
/// How long tombstone collection may take with anti-entropy rounds every 500 ms: a couple of
/// seconds when every report reaches the leader's one decision (when reports were routed by
/// the partition of a batch's first entry, the leader's shards each saw only some pairs and
/// it took 17 to 36 s with these shard counts).
const COLLECT_DEADLINE: Duration = Duration::from_secs(12);
const GOSSIP_INTERVAL_MS: u64 = 200;
/// The gossip targets per interval (`limits::GOSSIP_FANOUT`): frames of one gossip round.
const GOSSIP_FANOUT: u64 = 2;

struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    /// Start nodes 1..=3 with `shards[i - 1]` shards and `extra` arguments; return once each
    /// node measured its clock on every shard and sees every node alive.
    fn start(name: &str, shards: [usize; 3], extra: &[&str]) -> Cluster {
        let gossip = GOSSIP_INTERVAL_MS.to_string();
        let mut args = vec![
            "--gossip-interval-ms",
            &gossip,
            "--failure-threshold",
            "5",
            "--request-timeout-ms",
            "1000",
        ];
        args.extend_from_slice(extra);
        let nodes = common::start_nodes(name, &shards, 3, &args);
        let c = Cluster { nodes };
        for id in 1..=3 {
            c.wait_alive(id, &[1, 2, 3]);
        }
        c
    }

    fn client(&self, id: u32) -> Client {
        let c = self.nodes[id as usize - 1].client();
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    /// Wait until node `at` sees exactly `alive` alive (every shard serves the membership
    /// shard's view).
    fn wait_alive(&self, at: u32, alive: &[u32]) {
        common::wait_alive(&self.nodes[at as usize - 1], 3, alive, DEADLINE);
    }

    fn stat(&self, id: u32, name: &str) -> u64 {
        common::stat(&self.nodes[id as usize - 1], name)
    }
}

fn key(tag: &str, i: usize) -> Vec<u8> {
    format!("mixed-{tag}-{i}").into_bytes()
}

/// LGET of `k` on node `id`: `None` while the node refuses reads (rejoining).
fn lget(c: &Cluster, id: u32, k: &[u8]) -> Option<Option<(u64, Vec<u8>)>> {
    match c.client(id).local_get(k) {
        Ok(v) => Some(v),
        Err(ClientError::Server { status, .. }) if status == Status::Unavailable as u8 => None,
        Err(e) => panic!("LGET on node {id}: {e:?}"),
    }
}

/// Replication, gossip volume, failure detection and hints, across shard counts 1, 2 and 3
/// (nodes 1, 2, 3): node 3, the one that dies and comes back, has 3 shards.
#[test]
fn mixed_shard_counts_replicate_gossip_once_detect_failures_and_deliver_hints() {
    let mut c = Cluster::start("mixed-hints", [1, 2, 3], &[]);

    // Replication: writes through each node read back through each other node, at QUORUM
    // and at ALL (keys spread over every shard of every node).
    let keys = 60;
    for i in 0..keys {
        let via = (i % 3) as u32 + 1;
        let level = if i % 2 == 0 {
            Consistency::Quorum
        } else {
            Consistency::All
        };
        let value = format!("value-{i}");
        let v = c
            .client(via)
            .put(&key("rep", i), value.as_bytes(), 0, level)
            .unwrap_or_else(|e| panic!("PUT {i} via node {via}: {e:?}"));
        for other in (1..=3u32).filter(|&o| o != via) {
            for read_level in [Consistency::Quorum, Consistency::All] {
                let got = c.client(other).get(&key("rep", i), read_level).unwrap();
                assert_eq!(
                    got,
                    Some((v, value.clone().into_bytes())),
                    "key {i} written via node {via}, read via node {other} at {read_level:?}"
                );
            }
        }
    }

    // Gossip is sent by one shard per node: over 5 s the 3-shard node sends no more than the
    // 1-shard node (give or take one gossip round: the two nodes' intervals are out of phase).
    let before = [c.stat(1, "gossip_sent"), c.stat(3, "gossip_sent")];
    std::thread::sleep(Duration::from_secs(5));
    let after = [c.stat(1, "gossip_sent"), c.stat(3, "gossip_sent")];
    let (one, three) = (after[0] - before[0], after[1] - before[1]);
    println!("gossip frames sent in 5 s: node 1 (1 shard) {one}, node 3 (3 shards) {three}");
    let rounds = 5_000 / GOSSIP_INTERVAL_MS;
    assert!(
        one >= (rounds - 2) * GOSSIP_FANOUT,
        "node 1 gossiped {one} frames"
    );
    assert!(
        three <= one + GOSSIP_FANOUT,
        "node 3 (3 shards) sent {three} gossip frames, node 1 (1 shard) {one}"
    );

    // Failure detection: node 3 dies; nodes 1 and 2 mark it failed (CLUSTER and STATS).
    let failures = [
        c.stat(1, "failures_detected"),
        c.stat(2, "failures_detected"),
    ];
    c.nodes[2].kill9();
    c.wait_alive(1, &[1, 2]);
    c.wait_alive(2, &[1, 2]);
    for (i, id) in [1u32, 2].into_iter().enumerate() {
        // (The membership shard publishes its counters for STATS every few ms: wait for both
        // figures, not one then the other.)
        wait_for(
            DEADLINE,
            &format!("node {id}'s STATS to count 2 alive and one more failure"),
            || {
                (c.stat(id, "cluster_alive") == 2 && c.stat(id, "failures_detected") > failures[i])
                    .then_some(())
            },
        );
    }

    // Hints: writes while node 3 is down are delivered when it is back.
    let hinted = 40;
    let mut versions = Vec::new();
    for i in 0..hinted {
        let via = (i % 2) as u32 + 1;
        let v = c
            .client(via)
            .put(&key("hint", i), b"hinted", 0, Consistency::Quorum)
            .unwrap_or_else(|e| panic!("PUT {i} via node {via} with node 3 down: {e:?}"));
        versions.push(v);
    }
    // STATS figures of the cluster cores are published on their ticks: poll.
    wait_for(DEADLINE, "nodes 1 and 2 to store a hint per write", || {
        (c.stat(1, "hints_stored") + c.stat(2, "hints_stored") >= hinted as u64).then_some(())
    });
    c.nodes[2].restart();
    let back = Instant::now();
    common::wait_clocks_measured(&c.nodes[2]);
    wait_for(DEADLINE, "node 3 to hold every hinted write", || {
        let delivered = c.stat(1, "hints_delivered") + c.stat(2, "hints_delivered");
        let all_there = (0..hinted).all(|i| {
            lget(&c, 3, &key("hint", i)).flatten() == Some((versions[i], b"hinted".to_vec()))
        });
        (delivered > 0 && all_there).then_some(())
    });
    println!(
        "node 3 held all {hinted} hinted writes {} ms after its restart",
        back.elapsed().as_millis()
    );
    wait_for(DEADLINE, "node 3 to count the hints it received", || {
        (c.stat(3, "hints_received") >= hinted as u64).then_some(())
    });
}

/// Anti-entropy and tombstone collection across shard counts 3, 1 and 2 (nodes 1, 2, 3;
/// hinted handoff off, so only anti-entropy repairs). The leader, node 1, has 3 shards: every
/// report of a partition must reach its one decision whichever shard of which node sent it.
#[test]
fn mixed_shard_counts_repair_by_anti_entropy_and_collect_tombstones() {
    let mut c = Cluster::start(
        "mixed-aae",
        [3, 1, 2],
        &[
            "--hinted-handoff",
            "off",
            "--anti-entropy-interval-ms",
            "500",
        ],
    );

    // Keys written while node 3 (2 shards) is down reach it by anti-entropy.
    c.nodes[2].kill9();
    c.wait_alive(1, &[1, 2]);
    c.wait_alive(2, &[1, 2]);
    let missed = 30;
    let mut versions = Vec::new();
    for i in 0..missed {
        let via = (i % 2) as u32 + 1;
        let v = c
            .client(via)
            .put(&key("aae", i), b"missed", 0, Consistency::Quorum)
            .unwrap();
        versions.push(v);
    }
    assert_eq!(c.stat(1, "hints_stored") + c.stat(2, "hints_stored"), 0);
    c.nodes[2].restart();
    common::wait_clocks_measured(&c.nodes[2]);
    c.wait_alive(3, &[1, 2, 3]);
    c.client(3).anti_entropy().unwrap();
    let back = Instant::now();
    wait_for(DEADLINE, "node 3 to hold the writes it missed", || {
        let ok = (0..missed).all(|i| {
            lget(&c, 3, &key("aae", i)).flatten() == Some((versions[i], b"missed".to_vec()))
        });
        ok.then_some(())
    });
    println!(
        "node 3 repaired by anti-entropy {} ms after ANTI_ENTROPY",
        back.elapsed().as_millis()
    );

    // Tombstones are collected on every node: deletes at ALL, then the leader's horizon
    // passes them once every pair of replicas exchanged after them (all three nodes, whose
    // shards split the partitions differently).
    let deletes = 40;
    let mut delete_ms = 0;
    for i in 0..deletes {
        let via = (i % 3) as u32 + 1;
        c.client(via)
            .put(&key("tomb", i), b"doomed", 0, Consistency::All)
            .unwrap();
        let v = c
            .client(via)
            .delete(&key("tomb", i), Consistency::All)
            .unwrap();
        delete_ms = delete_ms.max(dkv::version::Version(v).physical_ms());
    }
    let swept: Vec<u64> = (1..=3).map(|id| c.stat(id, "aae_swept")).collect();
    let t = Instant::now();
    wait_for(
        COLLECT_DEADLINE,
        "the tombstones to be collected on every node",
        || {
            let ok = (1..=3u32).all(|id| {
                c.stat(id, "aae_horizon_ms_min") > delete_ms
                    && c.stat(id, "aae_swept") >= swept[id as usize - 1] + deletes as u64
            });
            ok.then_some(())
        },
    );
    println!(
        "tombstones collected on all three nodes {} ms after the deletes",
        t.elapsed().as_millis()
    );
    for id in 1..=3u32 {
        for i in 0..deletes {
            assert_eq!(
                lget(&c, id, &key("tomb", i)).flatten(),
                None,
                "node {id} key {i}"
            );
        }
    }
}
