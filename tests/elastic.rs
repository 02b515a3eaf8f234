//! The elastic cluster against real `kvd` processes (issue 12): membership changes while the
//! cluster serves, and what they must leave behind.
//!
//! * **Leave.** 4 nodes (N = 3): `CLUSTER LEAVE 4` plans the decommission on the leader,
//!   node 4's partitions are copied to their new owners, flipped one by one, and node 4 ends
//!   removed, holding nothing. Every key written before is then on exactly its 3 final
//!   owners (LGET on each), and the keys per node are within ±15% of even.
//! * **The whole life of a cluster under load.** 3 nodes with `kvbench --check` (QUORUM,
//!   get/put/del) running throughout: two nodes join (3 → 5), one decommissions (5 → 4), one
//!   is killed (`kill -9`) and replaced by a new node (`--replace`), another is killed and
//!   force-removed (4 → 3). After each step every key is on exactly its final owners and the
//!   keys per node are within ±15% of even; at the end kvbench reports 0 acknowledged writes
//!   lost.

mod common;

use common::{join, wait_admitted, wait_for, wait_settled_ring, Node};
use dkv::client::Client;
use dkv::hash::partition_of;
use dkv::protocol::{Consistency, Status};
use std::time::Duration;

const KEYS: usize = 1_500;
const CHANGE_TIMEOUT: Duration = common::RING_CHANGE_TIMEOUT;

fn key(i: usize) -> Vec<u8> {
    format!("elastic-{i:05}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

/// Write key `i` at ALL, retrying while a node has not measured its clock against a peer
/// it just heard from (CLOCK_OFFSET) or a replica is not reachable yet (UNAVAILABLE).
fn put_all(c: &mut Client, i: usize) {
    wait_for(CHANGE_TIMEOUT, "a PUT at ALL", || {
        match c.put(&key(i), &value(i), 0, Consistency::All) {
            Ok(_) => Some(()),
            Err(e) if matches!(e.status(), Some(Status::ClockOffset | Status::Unavailable)) => None,
            Err(e) => panic!("PUT {i}: {e}"),
        }
    });
}

/// Check that every key is on exactly its owners by the ring map (LGET on every node of
/// `nodes`), and that the keys per node are within ±15% of even. Returns the count per node.
/// A node forgets the records of partitions it gave away in bounded steps after the change
/// ends, so the check is repeated until it holds (or [`PLACEMENT_TIMEOUT`] passes).
fn check_placement(nodes: &[&Node]) -> Vec<usize> {
    let mut last = String::new();
    let deadline = std::time::Instant::now() + PLACEMENT_TIMEOUT;
    loop {
        match placement(nodes) {
            Ok(per_node) => return per_node,
            Err(e) if std::time::Instant::now() < deadline => {
                last = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("placement after {PLACEMENT_TIMEOUT:?}: {e} (before: {last})"),
        }
    }
}

/// How long the records of moved partitions may take to be forgotten after a change ends.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// One look at the placement (see [`check_placement`]).
fn placement(nodes: &[&Node]) -> Result<Vec<usize>, String> {
    let map = nodes[0].client().ring().map_err(|e| format!("RING: {e}"))?;
    let mut clients: Vec<(u32, Client)> = nodes
        .iter()
        .map(|n| {
            let id = map
                .addrs
                .iter()
                .find(|(_, a)| *a == n.addr)
                .map(|(id, _)| *id)
                .unwrap_or_else(|| panic!("{} is not in the ring map {:?}", n.addr, map.addrs));
            (id, n.client())
        })
        .collect();
    let mut per_node = vec![0usize; clients.len()];
    for i in 0..KEYS {
        let k = key(i);
        let owners = map.ownership.owners(partition_of(&k)).to_vec();
        for (j, (id, c)) in clients.iter_mut().enumerate() {
            let got = c.local_get(&k).map_err(|e| format!("LGET: {e}"))?;
            if owners.contains(id) {
                let (_, v) = got
                    .ok_or_else(|| format!("key {i} missing on owner {id} (owners {owners:?})"))?;
                assert_eq!(v, value(i), "key {i} on node {id}");
                per_node[j] += 1;
            } else if got.is_some() {
                return Err(format!(
                    "key {i} still on node {id}, not an owner {owners:?}"
                ));
            }
        }
    }
    let total: usize = per_node.iter().sum();
    assert_eq!(total, KEYS * 3, "every key on N = 3 nodes: {per_node:?}");
    let even = total as f64 / per_node.len() as f64;
    for (j, &n) in per_node.iter().enumerate() {
        let off = (n as f64 - even).abs() / even;
        assert!(
            off <= 0.15,
            "node {} holds {n} keys, {:.0}% off the even {even:.0}: {per_node:?}",
            j + 1,
            off * 100.0
        );
    }
    Ok(per_node)
}

#[test]
fn a_decommissioned_node_streams_its_partitions_away_and_ends_empty() {
    let mut nodes = common::start_nodes(
        "elastic-leave",
        &[2, 2, 2, 2],
        3,
        &["--gossip-interval-ms", "50"],
    );
    let mut c = nodes[0].client();
    for i in 0..KEYS {
        put_all(&mut c, i);
    }
    let before = nodes[0].client().ring().expect("RING").ownership.version();
    // STATS shows each shard's storage figures as of its last maintenance tick: wait until
    // the nodes' figures count every copy written, or the plan's estimate (from the nodes'
    // live bytes) and node 4's own figure below may be taken at different points of the
    // writes.
    wait_for(CHANGE_TIMEOUT, "STATS to count every copy", || {
        let copies: u64 = nodes.iter().map(|n| common::stat(n, "storage_keys")).sum();
        (copies == (KEYS * 3) as u64).then_some(())
    });

    // Decommission node 4, asked of node 2 (not the leader: it passes it on), with the
    // moves paused so that its plan can be read before it runs.
    wait_for(CHANGE_TIMEOUT, "PAUSE to be taken", || {
        nodes[0].client().cluster_admin("PAUSE").ok()
    });
    let reply = nodes[1].client().cluster_admin("LEAVE 4").expect("LEAVE");
    assert!(reply.contains("leave of node 4"), "{reply}");
    // A second change is refused while this one runs.
    let busy = nodes[2].client().cluster_admin("LEAVE 3");
    assert!(busy.is_err(), "a second change started: {busy:?}");
    // The plan: node 4 gives every placement it holds, about its live bytes (asked of node 3,
    // which may learn the change a pull after node 2 answered).
    let (plan, line) = wait_for(CHANGE_TIMEOUT, "node 3's plan to show the leave", || {
        let plan = common::kvcat(&nodes[2].addr, "CLUSTER PLAN\n");
        let line = plan
            .lines()
            .find(|l| l.starts_with("node 4 receives 0 gives "))?
            .to_string();
        Some((plan, line))
    });
    let out_mb: f64 = line
        .split("bytes_out~")
        .nth(1)
        .and_then(|b| b.strip_suffix("KB"))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no KB estimate in {line:?}"));
    let live = common::stat(&nodes[3], "storage_live_bytes") as f64 / 1000.0;
    assert!(
        (out_mb - live).abs() <= 0.3 * live,
        "plan estimates {out_mb} KB out of node 4, which holds {live} KB: {plan}"
    );
    nodes[0].client().cluster_admin("RESUME").expect("RESUME");

    let all: Vec<&Node> = nodes.iter().collect();
    let version = wait_settled_ring(&all);
    assert!(version > before + 1, "ring version {before} -> {version}");
    let map = nodes[0].client().ring().expect("RING");
    assert!(
        !map.ownership.nodes().contains(&4),
        "node 4 still owns partitions: {:?}",
        map.ownership.nodes()
    );
    assert!(
        map.addrs.iter().all(|(id, _)| *id != 4),
        "node 4 still listed: {:?}",
        map.addrs
    );
    let stays: Vec<&Node> = nodes[..3].iter().collect();
    check_placement(&stays);
    // Node 4 forgets what it gave away.
    wait_for(Duration::from_secs(10), "node 4 to forget its keys", || {
        (common::stat(&nodes[3], "storage_keys") == 0).then_some(())
    });
    for n in &mut nodes {
        n.terminate();
    }
}

#[test]
fn a_cluster_grows_shrinks_and_replaces_nodes_under_load_without_losing_writes() {
    let mut nodes = common::start_nodes(
        "elastic-life",
        &[2, 2, 2],
        3,
        &["--gossip-interval-ms", "50"],
    );
    let dir = nodes[0].data.parent().expect("a test dir").to_path_buf();
    let mut c = nodes[0].client();
    for i in 0..KEYS {
        put_all(&mut c, i);
    }
    let kvbench = common::spawn_kvbench_check(
        &nodes[0].addr,
        &[
            "--connections",
            "4",
            "--pipeline",
            "2",
            "--duration",
            "45",
            "--rate",
            "1500",
            "--keys",
            "3000",
        ],
    );
    let seed = nodes[0].addr.clone();

    // 3 → 5: two nodes join, one after the other.
    for id in [4u32, 5] {
        nodes.push(join(&dir, id, &seed, None));
        wait_admitted(&nodes[0], id);
        let live: Vec<&Node> = nodes.iter().collect();
        wait_settled_ring(&live);
        check_placement(&live);
        println!("joined node {id}");
    }
    // 5 → 4: node 4 decommissions, then stops.
    nodes[0].client().cluster_admin("LEAVE 4").expect("LEAVE 4");
    let live: Vec<&Node> = nodes.iter().collect();
    wait_settled_ring(&live);
    let mut gone = nodes.remove(3);
    gone.terminate();
    let live: Vec<&Node> = nodes.iter().collect();
    check_placement(&live);
    println!("node 4 left");
    // Node 5 dies; node 6 replaces it.
    let mut dead = nodes.remove(3);
    dead.kill9();
    nodes.push(join(&dir, 6, &seed, Some(5)));
    wait_admitted(&nodes[0], 6);
    let live: Vec<&Node> = nodes.iter().collect();
    wait_settled_ring(&live);
    check_placement(&live);
    println!("node 6 replaced node 5");
    // Node 2 dies and is removed for good (4 → 3).
    let mut dead2 = nodes.remove(1);
    dead2.kill9();
    // REMOVE is refused while the leader still sees node 2 alive (until its failure
    // detector marks it failed).
    wait_for(CHANGE_TIMEOUT, "REMOVE 2 to be accepted", || {
        nodes[0].client().cluster_admin("REMOVE 2").ok()
    });
    let live: Vec<&Node> = nodes.iter().collect();
    wait_settled_ring(&live);
    check_placement(&live);
    println!("node 2 removed");

    let out = kvbench.wait_with_output().expect("kvbench output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("\"lost\":0"),
        "kvbench lost acknowledged writes: {stdout}\n{stderr}"
    );
    assert!(out.status.success(), "kvbench failed: {stderr}\n{stdout}");
    println!("kvbench: {stdout}");
    for n in &mut nodes {
        n.terminate();
    }
}
