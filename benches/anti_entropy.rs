//! One anti-entropy exchange between two replicas of 1M keys that differ by 0, 10 and 10,000
//! keys: bytes on the wire (requests and replies) and wall time, in process (frames handed
//! over synchronously: this measures the exchange's CPU and traffic, not a network).
//!
//! Run: `cargo bench --bench anti_entropy` (optionally `-- KEYS` for another key count).
//! The two replicas are nodes 1 and 2 of a 2-node ring with N=2 (both hold all 256
//! partitions); node 1 runs one round: 256 exchanges, each from the roots down.

use dkv::cluster::antientropy::AntiEntropy;
use dkv::cluster::{ClusterConfig, Ring};
use dkv::protocol::{frame, Response};
use dkv::storage::memory::MemoryStore;
use dkv::storage::{Store, Write};
use dkv::version::Version;
use std::time::Instant;

const START_MS: u64 = 1_700_000_000_000;

struct Replica {
    aae: AntiEntropy,
    store: MemoryStore,
}

fn config(id: u32) -> ClusterConfig {
    let mut c = ClusterConfig::build(id, "1=127.0.0.1:7001,2=127.0.0.1:7002", 2).unwrap();
    c.anti_entropy_interval_ms = 3_600_000;
    c.request_timeout_ms = 600_000;
    c.validate().unwrap();
    c
}

fn replica(id: u32) -> Replica {
    let c = config(id);
    let ring = Ring::new(&c.node_ids(), 2);
    Replica {
        aae: AntiEntropy::new(&c, ring, START_MS),
        store: MemoryStore::new(),
    }
}

fn put(r: &mut Replica, key: &[u8], version: u64) {
    let value = [b'v'; 32];
    let mut t = r.aae.tracked(&mut r.store);
    t.apply(Write {
        key,
        value: Some(&value),
        version: Version(version),
        expires_at_ms: 0,
    })
    .unwrap();
}

/// Run node 1's round to the end; returns (bytes, frames, ms).
fn exchange(a: &mut Replica, b: &mut Replica, now: u64) -> (u64, u64, f64) {
    let alive = |_: u32| true;
    let t0 = Instant::now();
    a.aae.trigger(now);
    a.aae.on_tick(now, &mut a.store, &alive, 1);
    let (mut bytes, mut frames) = (0u64, 0u64);
    // Bounded: every frame is answered at once; the round ends when node 1 sends nothing.
    for _ in 0..10_000_000 {
        let Some((to, req)) = a.aae.poll_transmit() else {
            break;
        };
        assert_eq!(to, 2);
        let (f, _) = frame::parse(&req).unwrap().unwrap();
        let mut reply = Vec::new();
        b.aae
            .on_request(now, &mut b.store, 1, f.id, f.op, f.aux, f.body, &mut reply)
            .unwrap();
        bytes += (req.len() + reply.len()) as u64;
        frames += 2;
        let (rf, _) = frame::parse(&reply).unwrap().unwrap();
        let _ = Response::from_frame(&rf).unwrap();
        a.aae.on_reply(now, &mut a.store, 2, &rf, &alive);
    }
    a.aae.on_tick(now, &mut a.store, &alive, 1);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    (bytes, frames, ms)
}

fn main() {
    let keys: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut a = replica(1);
    let mut b = replica(2);
    let t = Instant::now();
    for i in 0..keys {
        let k = format!("key:{i:08}");
        let v = Version::new(START_MS, (i % 4096) as u64, 1).0;
        put(&mut a, k.as_bytes(), v);
        put(&mut b, k.as_bytes(), v);
    }
    let tree_bytes: usize = (0..dkv::limits::PARTITION_COUNT)
        .filter_map(|p| a.aae.index().tree(p).map(|t| t.memory_bytes()))
        .sum();
    println!(
        "{keys} keys per replica loaded in {:.0} ms; trees {:.1} MB ({:.1} bytes/key)",
        t.elapsed().as_secs_f64() * 1e3,
        tree_bytes as f64 / 1e6,
        tree_bytes as f64 / keys as f64
    );
    let mut next = keys;
    let mut now = START_MS + 1_000;
    // The first comparison after loading rehashes every inner node (lazily, once).
    let (bytes, frames, ms) = exchange(&mut a, &mut b, now);
    println!("first round after load (rehash of the dirty inner nodes included): {bytes} bytes in {frames} frames, {ms:.1} ms");
    let mut prev = a.aae.stats();
    for diff in [0usize, 10, 10_000] {
        now += 1_000;
        // Half the differing keys are missing on node 2, half are newer there.
        for j in 0..diff {
            if j % 2 == 0 {
                put(
                    &mut a,
                    format!("extra:{next}").as_bytes(),
                    Version::new(now, 0, 1).0,
                );
                next += 1;
            } else {
                let k = format!("key:{:08}", (j * 7919) % keys);
                put(&mut b, k.as_bytes(), Version::new(now, 0, 2).0);
            }
        }
        now += 1_000;
        let (bytes, frames, ms) = exchange(&mut a, &mut b, now);
        let s = a.aae.stats();
        println!(
            "differ by {diff:>6}: {bytes:>9} bytes in {frames:>5} frames, {ms:>8.1} ms \
             ({} keys pushed, {} pulled)",
            s.keys_sent - prev.keys_sent,
            s.keys_repaired - prev.keys_repaired,
        );
        prev = s;
        assert_eq!(s.guard_refused, 0);
        // Equal again afterwards: a second round finds nothing.
        now += 1_000;
        let (bytes2, _, _) = exchange(&mut a, &mut b, now);
        assert_eq!(bytes2, 256 * (29 + 31), "replicas equal after the exchange");
    }
}
