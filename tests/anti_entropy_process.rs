//! Multi-process anti-entropy tests: three real `kvd` processes on 127.0.0.1, N=3, hinted
//! handoff off, so that only anti-entropy can bring a replica that missed writes up to date
//! (nothing is read before the checks, so read repair cannot either). Faults by PID only;
//! every wait is a poll with a deadline; measured times are printed, not asserted.

mod common;

use common::{wait_for, Node};
use dkv::client::{Client, ClientError};
use dkv::protocol::{Consistency, Status};
use std::time::{Duration, Instant};

const AE_INTERVAL_MS: u64 = 500;
const DEADLINE: Duration = Duration::from_secs(60);

struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(name: &str, extra: &[&str]) -> Cluster {
        let interval = AE_INTERVAL_MS.to_string();
        let mut args = vec![
            "--gossip-interval-ms",
            "100",
            "--failure-threshold",
            "5",
            "--request-timeout-ms",
            "1000",
            "--hinted-handoff",
            "off",
            "--anti-entropy-interval-ms",
            &interval,
        ];
        args.extend_from_slice(extra);
        let nodes = common::start_three_nodes(name, &args);
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

fn key(i: usize) -> Vec<u8> {
    format!("aae-key-{i}").into_bytes()
}

/// Writes 1,000 keys with QUORUM through nodes 1 and 2, deletes the first 100; returns the
/// version of each key's last write.
fn write_and_delete(c: &Cluster, keys: usize, deletes: usize) -> Vec<u64> {
    let q = Consistency::Quorum;
    let mut cl = [c.client(1), c.client(2)];
    let mut versions = Vec::with_capacity(keys);
    for i in 0..keys {
        let v = cl[i % 2]
            .put(&key(i), format!("value-{i}").as_bytes(), 0, q)
            .unwrap();
        versions.push(v);
    }
    for (i, v) in versions.iter_mut().enumerate().take(deletes) {
        *v = cl[i % 2].delete(&key(i), q).unwrap();
    }
    versions
}

/// How many keys node `id`'s LGET does not yet answer as expected (`None` while it refuses
/// reads).
fn lget_mismatches(c: &Cluster, id: u32, versions: &[u64], deletes: usize) -> Option<usize> {
    let mut cl = c.client(id);
    let mut bad = 0;
    for (i, &v) in versions.iter().enumerate() {
        match cl.local_get(&key(i)) {
            Ok(got) => {
                let ok = if i < deletes {
                    got.is_none()
                } else {
                    got == Some((v, format!("value-{i}").into_bytes()))
                };
                bad += usize::from(!ok);
            }
            Err(ClientError::Server { status, .. }) if status == Status::Unavailable as u8 => {
                return None
            }
            Err(e) => panic!("LGET on node {id}: {e:?}"),
        }
    }
    Some(bad)
}

#[test]
fn restarted_replica_converges_by_anti_entropy_alone() {
    let mut c = Cluster::start("aae-converge", &[]);
    c.nodes[2].kill9();
    c.wait_alive(1, &[1, 2]);
    c.wait_alive(2, &[1, 2]);
    let versions = write_and_delete(&c, 1_000, 100);
    c.nodes[2].restart();
    let restarted = Instant::now();
    // Read nothing: only anti-entropy can repair node 3 (hints are off).
    let mut polls = 0;
    wait_for(
        DEADLINE,
        "node 3 to hold all 900 live keys and none of the 100 deleted",
        || {
            let bad = lget_mismatches(&c, 3, &versions, 100)?;
            polls += 1;
            (bad == 0).then_some(())
        },
    );
    let took = restarted.elapsed();
    println!(
        "node 3 converged {} ms after its restart (anti-entropy interval {AE_INTERVAL_MS} ms; \
         {polls} polls of 1,000 LGETs)",
        took.as_millis()
    );
    let repaired = c.stat(3, "aae_keys_repaired")
        + c.stat(1, "aae_keys_repaired")
        + c.stat(2, "aae_keys_repaired");
    assert!(repaired >= 1_000, "keys repaired: {repaired}");
    assert_eq!(c.stat(1, "coord_reads") + c.stat(2, "coord_reads"), 0);
    assert_eq!(c.stat(1, "hints_stored") + c.stat(2, "hints_stored"), 0);
    for id in 1..=3 {
        println!(
            "node {id}: aae_exchanges {} aae_keys_sent {} aae_keys_repaired {} aae_bytes_sent {} \
             aae_full_rounds {}",
            c.stat(id, "aae_exchanges"),
            c.stat(id, "aae_keys_sent"),
            c.stat(id, "aae_keys_repaired"),
            c.stat(id, "aae_bytes_sent"),
            c.stat(id, "aae_full_rounds"),
        );
    }
    // kvcat's AAE command starts a round on demand.
    let rounds = c.stat(1, "aae_rounds");
    let out = common::kvcat(&c.nodes[0].addr, "AAE\n");
    assert_eq!(out.trim(), "OK");
    wait_for(DEADLINE, "the requested round", || {
        (c.stat(1, "aae_rounds") > rounds).then_some(())
    });
}

#[test]
fn collected_tombstones_stay_dead_when_a_replica_returns() {
    collected_deletes_stay_dead("aae-tombstones", "lww");
}

/// The same in siblings mode (issue 16): a DELETE carrying the context of a causal GET leaves a
/// causal state without siblings, which is collected like a tombstone once below the horizon,
/// and the returning replica's old states (values with siblings) do not come back.
#[test]
fn collected_causal_deletes_stay_dead_when_a_replica_returns() {
    collected_deletes_stay_dead("aae-tombstones-siblings", "siblings");
}

fn collected_deletes_stay_dead(name: &str, mode: &str) {
    let window_ms: u64 = 3_000;
    let window = window_ms.to_string();
    let mut c = Cluster::start(
        name,
        &["--tombstone-window-ms", &window, "--conflicts", mode],
    );
    let siblings = mode == "siblings";
    let all = Consistency::All;
    let mut cl = c.client(1);
    let keys = 300;
    let deletes = 100;
    for i in 0..keys {
        cl.put(&key(i), format!("value-{i}").as_bytes(), 0, all)
            .unwrap();
    }
    // Node 3 holds every value, then dies; the deletes happen without it.
    c.nodes[2].kill9();
    c.wait_alive(1, &[1, 2]);
    c.wait_alive(2, &[1, 2]);
    let mut delete_ms = 0;
    for i in 0..deletes {
        let v = if siblings {
            let s = cl.get_siblings(&key(i), Consistency::Quorum).unwrap();
            assert_eq!(s.values.len(), 1);
            cl.delete_with_context(&key(i), &s.context, Consistency::Quorum)
                .unwrap()
        } else {
            cl.delete(&key(i), Consistency::Quorum).unwrap()
        };
        delete_ms = delete_ms.max(dkv::version::Version(v).physical_ms());
    }
    // Once node 3 has been failed for longer than the window, the leader lets nodes 1 and 2
    // collect the tombstones: the horizon passes the deletes and the trees forget them.
    let t = Instant::now();
    wait_for(
        DEADLINE,
        "the tombstones to be collected on nodes 1 and 2",
        || {
            let ok = (1..=2).all(|id| {
                c.stat(id, "aae_horizon_ms_min") > delete_ms
                    && c.stat(id, "aae_swept") >= deletes as u64
            });
            ok.then_some(())
        },
    );
    println!(
        "tombstones collected {} ms after the deletes",
        t.elapsed().as_millis()
    );
    // Node 3 comes back holding the old values of the deleted keys. It was away longer than
    // the window: it refuses reads until a full round, which deletes those values.
    c.nodes[2].restart();
    let back = Instant::now();
    wait_for(DEADLINE, "node 3 to serve reads again", || {
        match c.client(3).local_get(&key(keys - 1)) {
            Ok(v) => v.map(|_| ()),
            Err(ClientError::Server { status, .. }) if status == Status::Unavailable as u8 => None,
            Err(e) => panic!("LGET: {e:?}"),
        }
    });
    println!(
        "node 3 serves reads {} ms after its restart",
        back.elapsed().as_millis()
    );
    // Let a few more rounds run: nothing may bring a deleted key back, anywhere.
    let rounds = c.stat(1, "aae_full_rounds");
    wait_for(DEADLINE, "two more full rounds on node 1", || {
        (c.stat(1, "aae_full_rounds") >= rounds + 2).then_some(())
    });
    for id in 1..=3 {
        let mut cl = c.client(id);
        for i in 0..deletes {
            assert_eq!(
                cl.local_get(&key(i)).unwrap(),
                None,
                "node {id} resurrected key {i}"
            );
        }
        for i in deletes..keys {
            assert!(
                cl.local_get(&key(i)).unwrap().is_some(),
                "node {id} lost key {i}"
            );
        }
    }
    let mut cl = c.client(3);
    for i in 0..deletes {
        assert_eq!(
            cl.get(&key(i), all).unwrap(),
            None,
            "GET ALL resurrected key {i}"
        );
    }
    // Anti-entropy deleted them on node 3, each one of two ways: proved collected (the peer
    // holds nothing, a drop), or by the tombstone a peer's store still holds after its tree
    // swept it (compaction drops it later; a repair). Which one depends on which side starts
    // the exchange and on when the peers compact. Node 3 missed nothing but the deletes, so
    // every repair on it is one of them.
    let dropped = c.stat(3, "aae_keys_dropped");
    let repaired = c.stat(3, "aae_keys_repaired");
    println!("node 3: {dropped} collected keys dropped, {repaired} tombstones repaired");
    assert!(
        dropped + repaired >= deletes as u64,
        "node 3 dropped {dropped} collected keys and repaired {repaired}"
    );
}
