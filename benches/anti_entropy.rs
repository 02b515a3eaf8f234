//! One anti-entropy round between two replicas of many keys (1,000,000 unless told) that
//! differ by 0, 10 and 10,000 keys: bytes and frames on the wire, exchanges, and wall time,
//! in the simulator's scripted cluster ([`dkv::sim::Cluster`]): the shard cores `kvd` runs,
//! over their in-memory disks, with frames moved through the simulated network in virtual
//! time. The wall time is the round's CPU (Merkle trees, key lists, store reads and writes
//! on both nodes) plus the simulator's own (events, gossip ticks), without a network.
//!
//! Run: `cargo bench --bench anti_entropy` (optionally `-- KEYS [SHARDS]`).
//! The two replicas are nodes 1 and 2 of a 2-node ring with N=2 (both hold all 256
//! partitions). Differences are made the way they happen: the nodes are partitioned, half
//! the differing keys are written (consistency ONE) through node 1 only, half are newer
//! versions written through node 2 only; then the partition heals and node 1 is asked for a
//! round with the ANTI_ENTROPY opcode.

use dkv::protocol::{Consistency, Request};
use dkv::shard::SyncPolicy;
use dkv::sim::{Cluster, ClusterSpec, Ticket};
use std::time::Instant;

/// Requests in flight while loading (well under the coordinator's and a connection's limits).
const PIPELINE: usize = 256;

/// Anti-entropy never runs on its own here: only the rounds the bench asks for.
const AE_INTERVAL_MS: u64 = 3_600_000;

/// Long enough for every frame in flight to reach the partition and be dropped.
const DROP_MS: u64 = 100;

/// Longest a round may take, in simulated ms.
const ROUND_MS_MAX: u64 = 600_000;

/// PUT `key` = a 32-byte value through node `via` with `c`, queued in `inflight`; waits for
/// the oldest answers once the pipeline is full.
fn put(cl: &mut Cluster, inflight: &mut Vec<Ticket>, via: u32, key: &[u8], c: Consistency) {
    let value = [b'v'; 32];
    let req = Request::Put {
        key,
        value: &value,
        ttl_seconds: 0,
        consistency: c,
    };
    inflight.push(cl.send(via, &req).expect("both nodes are up"));
    if inflight.len() >= PIPELINE {
        drain(cl, inflight);
    }
}

/// Wait for every queued write; each must be acknowledged.
fn drain(cl: &mut Cluster, inflight: &mut Vec<Ticket>) {
    for t in inflight.drain(..) {
        let r = cl.wait(t).expect("a write is answered");
        assert!(
            matches!(
                r.outcome(),
                dkv::cluster::coordinator::Outcome::Written { .. }
            ),
            "{:?}",
            r.outcome()
        );
    }
}

/// Figures of both nodes summed.
fn both(cl: &Cluster, name: &str) -> u64 {
    cl.stat(1, name) + cl.stat(2, name)
}

/// Ask node 1 for a round and run it to the end; returns (bytes, frames, exchanges, wall ms,
/// simulated ms).
fn round(cl: &mut Cluster) -> (u64, u64, u64, f64, u64) {
    let shards = cl.stat(1, "shards");
    let full = cl.stat(1, "aae_full_rounds");
    let (bytes, frames, exchanges) = (
        both(cl, "aae_bytes_sent"),
        cl.frames_delivered(),
        cl.stat(1, "aae_exchanges"),
    );
    let (t0, sim0) = (Instant::now(), cl.now_ms());
    cl.request(1, &Request::AntiEntropy)
        .expect("ANTI_ENTROPY answered");
    cl.run_until(ROUND_MS_MAX, |c| {
        c.stat(1, "aae_full_rounds") >= full + shards
    })
    .expect("the round ends");
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    (
        both(cl, "aae_bytes_sent") - bytes,
        cl.frames_delivered() - frames,
        cl.stat(1, "aae_exchanges") - exchanges,
        ms,
        cl.now_ms() - sim0,
    )
}

fn main() {
    // `cargo bench` passes `--bench`: only numbers are ours.
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<usize>().ok());
    let keys = numbers.next().unwrap_or(1_000_000);
    let shards = numbers.next().unwrap_or(1).max(1);
    let mut spec = ClusterSpec::new(2, 2);
    spec.shards = vec![shards];
    spec.sync = SyncPolicy::Never;
    spec.hinted_handoff = false;
    spec.read_repair = false;
    spec.anti_entropy_interval_ms = AE_INTERVAL_MS;
    let mut cl = Cluster::start(spec);

    let t = Instant::now();
    let mut inflight = Vec::with_capacity(PIPELINE);
    for i in 0..keys {
        let k = format!("key:{i:08}");
        put(
            &mut cl,
            &mut inflight,
            1 + (i % 2) as u32,
            k.as_bytes(),
            Consistency::All,
        );
    }
    drain(&mut cl, &mut inflight);
    println!(
        "{keys} keys per replica ({shards} shards per node) loaded in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    // Trees are built when a round needs them, a step a tick, on both nodes.
    let (bytes, frames, exchanges, ms, sim_ms) = round(&mut cl);
    let tree_bytes = cl.stat(1, "aae_tree_bytes");
    println!(
        "first round after load (both nodes' tree builds included): {bytes} bytes in \
         {frames} frames, {exchanges} exchanges, {ms:.1} ms ({sim_ms} simulated ms); trees \
         {:.1} MB ({:.1} bytes/key)",
        tree_bytes as f64 / 1e6,
        tree_bytes as f64 / keys as f64
    );
    let mut next = keys;
    for diff in [0usize, 10, 10_000] {
        let (sent, repaired) = (both(&cl, "aae_keys_sent"), both(&cl, "aae_keys_repaired"));
        // Half the differing keys are missing on node 2, half are newer there.
        cl.partition(&[&[1], &[2]]);
        for j in 0..diff {
            if j % 2 == 0 {
                let k = format!("extra:{next}");
                next += 1;
                put(&mut cl, &mut inflight, 1, k.as_bytes(), Consistency::One);
            } else {
                let k = format!("key:{:08}", (j * 7919) % keys);
                put(&mut cl, &mut inflight, 2, k.as_bytes(), Consistency::One);
            }
        }
        drain(&mut cl, &mut inflight);
        // The writes were acknowledged by their coordinator alone; their frames to the other
        // node are still on the wire: let the partition drop them before it heals.
        cl.run_for(DROP_MS);
        cl.heal();
        cl.wait_settled(60_000)
            .expect("the nodes see each other again");
        let (bytes, frames, exchanges, ms, sim_ms) = round(&mut cl);
        println!(
            "differ by {diff:>6}: {bytes:>9} bytes in {frames:>5} frames, {exchanges:>4} \
             exchanges, {ms:>8.1} ms ({sim_ms} simulated ms; {} keys sent, {} repaired, both nodes)",
            both(&cl, "aae_keys_sent") - sent,
            both(&cl, "aae_keys_repaired") - repaired,
        );
        assert_eq!(both(&cl, "aae_guard_refused"), 0);
        // Equal again afterwards: a second round moves nothing.
        let moved = both(&cl, "aae_keys_sent") + both(&cl, "aae_keys_repaired");
        let (bytes2, _, exchanges2, _, _) = round(&mut cl);
        assert_eq!(
            both(&cl, "aae_keys_sent") + both(&cl, "aae_keys_repaired"),
            moved,
            "replicas equal after the exchange"
        );
        println!("  then an idle round: {bytes2} bytes, {exchanges2} exchanges");
    }
    cl.assert_sound();
}
