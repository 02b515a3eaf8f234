//! Routing by the ring map against real `kvd` processes: a 4-node cluster with N = 2 (so each
//! node owns half the keys), the Rust [`RingClient`] and `kvbench --route ring`.
//!
//! * RING answers the same versioned, balanced map on every node.
//! * RingClient sends every request to an owner of its key (counted by the client and by the
//!   nodes' STATS `key_requests_owned` / `key_requests_not_owned`), and, after `kill -9` of a
//!   node, sends the keys that node was primary of to their second owner.
//! * kvbench `--route ring --check` reports every request sent to an owner and nothing lost;
//!   with its shard-aware connections (the default) each also reaches the owning shard of the
//!   owner node (no client request forwarded between shards), without them about half are.
//! * Siblings mode: RingClient's causal reads and writes (a write must be coordinated by a
//!   replica of its key) all reach an owner, on 3 nodes with N = 2.
//! * kvbench follows the ring: on 3 nodes (N = 2) under its load a 4th node joins; once the
//!   change has ended the nodes see at most 1% of kvbench's requests for keys they do not
//!   own (a map fetched once would send about a third of them to former owners), kvbench
//!   reports the final map (4 nodes) and loses no acknowledged write.

mod common;

use common::{join, wait_admitted, wait_for, wait_settled_ring, Node};
use dkv::client::RingClient;
use dkv::protocol::Consistency;
use std::time::Duration;

const NODES: usize = 4;
const REPLICAS: &str = "2";
const KEYS: usize = 600;
const KVBENCH_TIMEOUT: Duration = Duration::from_secs(120);

fn start_cluster(name: &str) -> Vec<Node> {
    let replicas: usize = REPLICAS.parse().expect("a number");
    common::start_nodes(name, &[2; NODES], replicas, &["--gossip-interval-ms", "50"])
}

/// `key_requests_owned` and `key_requests_not_owned` summed over `nodes`.
fn routed_counts(nodes: &[&Node]) -> (u64, u64) {
    let mut sum = (0, 0);
    for n in nodes {
        let stats = n.client().stats().expect("STATS");
        let value = |name: &str| {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} missing from STATS"))
        };
        sum.0 += value("key_requests_owned");
        sum.1 += value("key_requests_not_owned");
    }
    sum
}

#[test]
fn ring_client_sends_every_request_to_an_owner() {
    let mut nodes = start_cluster("ring-client");
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();

    // Every node serves the same map: version 1, N = 2, 4 nodes, 128 placements and 64
    // primaries each.
    let maps: Vec<_> = nodes
        .iter()
        .map(|n| n.client().ring().expect("RING"))
        .collect();
    for m in &maps[1..] {
        assert_eq!(m, &maps[0], "nodes disagree on the ring map");
    }
    let o = &maps[0].ownership;
    assert_eq!(
        (o.version(), o.replicas(), o.nodes()),
        (1, 2, &[1, 2, 3, 4][..])
    );
    assert_eq!(o.loads(), vec![128; NODES]);
    assert_eq!(o.primaries(), vec![64; NODES]);
    for (id, addr) in &maps[0].addrs {
        assert_eq!(addr, &addrs[*id as usize - 1]);
    }

    let all: Vec<&Node> = nodes.iter().collect();
    let before = routed_counts(&all);
    let mut rc = RingClient::connect(&addrs[..1]).expect("fetch the ring map");
    let key = |i: usize| format!("routed:{i}").into_bytes();
    for i in 0..KEYS {
        rc.put(&key(i), b"v", 0, Consistency::Quorum).expect("PUT");
    }
    for i in 0..KEYS {
        let got = rc.get(&key(i), Consistency::Quorum).expect("GET");
        assert_eq!(got.map(|(_, v)| v), Some(b"v".to_vec()), "key {i}");
    }
    let c = rc.counters();
    assert_eq!((c.to_owner, c.to_other), (2 * KEYS as u64, 0), "{c:?}");
    let after = routed_counts(&all);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (2 * KEYS as u64, 0),
        "the nodes' STATS"
    );

    // Kill node 4: keys it was primary of go to their second owner, still an owner.
    nodes[3].kill9();
    let primary_of_4: Vec<usize> = (0..KEYS)
        .filter(|&i| rc.map().owners_of_key(&key(i))[0] == 4)
        .collect();
    assert!(
        primary_of_4.len() > KEYS / 8,
        "node 4 is primary of a quarter"
    );
    for &i in &primary_of_4 {
        let got = rc
            .get(&key(i), Consistency::One)
            .expect("GET ONE with node 4 down");
        assert!(got.is_some(), "key {i}");
    }
    let c = rc.counters();
    assert_eq!(c.to_other, 0, "{c:?}");
    assert!(c.connection_failures >= 1, "{c:?}");
    assert!(
        c.maps_fetched >= 2,
        "a failed connection refetches the map: {c:?}"
    );
    let live: Vec<&Node> = nodes[..3].iter().collect();
    let counts = routed_counts(&live);
    assert_eq!(counts.1, before.1, "no live node saw a key it does not own");
}

/// Siblings mode (`--conflicts siblings`): a write is coordinated by a replica of its key,
/// which makes its dot from its own copy (protocol.md § 19.2), so RingClient's causal writes
/// must reach an owner. On 3 nodes with N = 2 (each node a replica of two thirds of the keys),
/// for each key: two blind writes are both kept, a PUT with their context leaves one value, a
/// DELETE with the next context leaves none (NOT_FOUND still carries a context); every request
/// goes to an owner, by the client's count and by the nodes' STATS.
#[test]
fn ring_client_sends_siblings_writes_to_a_replica() {
    const SIBLING_KEYS: usize = 100;
    let nodes = common::start_nodes(
        "ring-siblings",
        &[2; 3],
        2,
        &["--gossip-interval-ms", "50", "--conflicts", "siblings"],
    );
    let all: Vec<&Node> = nodes.iter().collect();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let before = routed_counts(&all);
    let mut rc = RingClient::connect(&addrs[..1]).expect("fetch the ring map");
    assert_eq!(rc.map().ownership.replicas(), 2);
    let q = Consistency::Quorum;
    for i in 0..SIBLING_KEYS {
        let key = format!("cart:{i}").into_bytes();
        rc.put_with_context(&key, b"milk", 0, &[], q)
            .expect("a blind causal PUT");
        rc.put(&key, b"eggs", 0, q).expect("a plain PUT (blind)");
        let both = rc.get_siblings(&key, q).expect("causal GET");
        let mut values: Vec<Vec<u8>> = both.values.iter().map(|(_, v)| v.clone()).collect();
        values.sort();
        assert_eq!(values, [b"eggs".to_vec(), b"milk".to_vec()], "key {i}");
        let err = rc.get(&key, q).expect_err("a plain GET of two siblings");
        assert_eq!(err.status(), Some(dkv::protocol::Status::Siblings), "{err}");

        let v = rc
            .put_with_context(&key, b"milk,eggs", 0, &both.context, q)
            .expect("PUT with the context");
        let one = rc.get_siblings(&key, q).expect("causal GET");
        assert_eq!(one.values, vec![(v, b"milk,eggs".to_vec())], "key {i}");
        assert_eq!(
            rc.get(&key, q).expect("plain GET"),
            Some((v, b"milk,eggs".to_vec()))
        );

        rc.delete_with_context(&key, &one.context, q)
            .expect("DELETE with the context");
        let none = rc.get_siblings(&key, q).expect("causal GET");
        assert!(none.values.is_empty(), "key {i}: {none:?}");
        assert!(!none.context.is_empty(), "NOT_FOUND carries the context");
        assert_eq!(rc.get(&key, q).expect("plain GET"), None);
    }
    let sent = 10 * SIBLING_KEYS as u64;
    let c = rc.counters();
    assert_eq!((c.to_owner, c.to_other), (sent, 0), "{c:?}");
    let after = routed_counts(&all);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (sent, 0),
        "the nodes' STATS"
    );
}

/// Sum of the STATS `shard_N_forwarded_out` (client requests handed to another shard of the
/// node) over `nodes`.
fn forwarded_out(nodes: &[&Node]) -> u64 {
    nodes
        .iter()
        .map(|n| {
            let stats = n.client().stats().expect("STATS");
            stats
                .lines()
                .filter_map(|l| l.split_once(' '))
                .filter(|(name, _)| name.starts_with("shard_") && name.ends_with("_forwarded_out"))
                .map(|(_, v)| v.parse::<u64>().expect("a count"))
                .sum::<u64>()
        })
        .sum()
}

/// Run kvbench against `target` with the options every run here shares, plus `extra`; its
/// stdout (the JSON report) and stderr, once it exits successfully.
fn run_kvbench(target: &str, requests: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "--connections",
        "8",
        "--pipeline",
        "4",
        "--requests",
        requests,
        "--keys",
        "2000",
    ];
    args.extend_from_slice(extra);
    let child = common::spawn_kvbench_check(target, &args);
    let mut child = Some(child);
    let out = wait_for(KVBENCH_TIMEOUT, "kvbench to finish", || {
        let c = child.as_mut().expect("child until it exits");
        c.try_wait().expect("poll kvbench")?;
        Some(
            child
                .take()
                .expect("once")
                .wait_with_output()
                .expect("output"),
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kvbench failed: {stderr}\n{stdout}");
    (stdout, stderr)
}

/// A number field of kvbench's JSON report.
fn field(stdout: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    let at = stdout
        .find(&key)
        .unwrap_or_else(|| panic!("{name} missing: {stdout}"))
        + key.len();
    let digits: String = stdout[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a count")
}

/// Ring routing and shard-aware connections compose (both defaults): 8 connections over 4
/// nodes of 2 shards give each node one connection per shard, so every request goes to an
/// owner node on the connection of the shard that owns the key there, and no node hands a
/// client request from one shard to another. With `--no-shard-aware` the requests still all
/// reach an owner, but about half land on the wrong shard of it and are forwarded.
#[test]
fn kvbench_routes_by_the_ring_and_loses_nothing() {
    let nodes = start_cluster("ring-kvbench");
    let all: Vec<&Node> = nodes.iter().collect();
    let before = routed_counts(&all);
    let forwarded_before = forwarded_out(&all);
    let (stdout, stderr) = run_kvbench(&nodes[0].addr, "20000", &[]);
    assert_eq!(field(&stdout, "ring_nodes"), NODES as u64);
    assert_eq!(field(&stdout, "requests_to_other"), 0, "{stderr}");
    let to_owner = field(&stdout, "requests_to_owner");
    assert!(to_owner >= 20_000, "{stdout}");
    assert_eq!(
        field(&stdout, "requests_to_owner_shard"),
        to_owner,
        "{stdout}"
    );
    assert!(
        stderr.contains("shard-aware: 8 of 8 connections landed on their shard"),
        "{stderr}"
    );
    assert_eq!(field(&stdout, "lost"), 0);
    let after = routed_counts(&all);
    assert_eq!(after.1, before.1, "no node saw a key it does not own");
    assert!(after.0 - before.0 >= 20_000);
    // The check phase (reads with ALL) is routed the same way.
    let forwarded = forwarded_out(&all) - forwarded_before;
    assert_eq!(forwarded, 0, "client requests forwarded between shards");

    let forwarded_before = forwarded_out(&all);
    let (stdout, stderr) = run_kvbench(&nodes[0].addr, "4000", &["--no-shard-aware"]);
    assert_eq!(field(&stdout, "requests_to_other"), 0, "{stderr}");
    assert_eq!(field(&stdout, "requests_to_owner_shard"), 0, "{stdout}");
    assert_eq!(field(&stdout, "lost"), 0);
    let forwarded = forwarded_out(&all) - forwarded_before;
    println!("requests forwarded between shards without --shard-aware: {forwarded}");
    assert!(
        forwarded > 1_000,
        "{forwarded} forwarded without shard-aware connections"
    );
    assert_eq!(
        routed_counts(&all).1,
        before.1,
        "no node saw a key it does not own"
    );
}

/// kvbench refreshes its ring map while it runs: after a node joins, its requests go to the
/// new owners (the nodes' STATS `key_requests_not_owned` stays at most 1% of the requests
/// from the end of the change to the end of the run), it connects to the new node, and it
/// loses nothing.
#[test]
fn kvbench_follows_the_ring_when_a_node_joins() {
    let mut nodes = common::start_nodes("ring-join", &[2; 3], 2, &["--gossip-interval-ms", "50"]);
    let dir = nodes[0].data.parent().expect("a test dir").to_path_buf();
    let mut kvbench = common::spawn_kvbench_check(
        &nodes[0].addr,
        &[
            "--connections",
            "6",
            "--pipeline",
            "2",
            "--duration",
            "30",
            "--rate",
            "1500",
            "--keys",
            "3000",
        ],
    );
    // The load runs before the join begins.
    let three: Vec<&Node> = nodes.iter().collect();
    let start = routed_counts(&three);
    wait_for(KVBENCH_TIMEOUT, "kvbench's load to reach the nodes", || {
        let now = routed_counts(&three);
        (now.0 + now.1 >= start.0 + start.1 + 500).then_some(())
    });
    let seed = nodes[0].addr.clone();
    nodes.push(join(&dir, 4, &seed, None));
    wait_admitted(&nodes[0], 4);
    let all: Vec<&Node> = nodes.iter().collect();
    let version = wait_settled_ring(&all);
    let before = routed_counts(&all);
    wait_for(KVBENCH_TIMEOUT, "kvbench to finish", || {
        kvbench.try_wait().expect("poll kvbench").map(|_| ())
    });
    let out = kvbench.wait_with_output().expect("kvbench output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kvbench failed: {stderr}\n{stdout}");
    let after = routed_counts(&all);
    let (owned, not_owned) = (after.0 - before.0, after.1 - before.1);
    println!("after the join (ring v{version}): {owned} requests for owned keys, {not_owned} for others; {stdout}");
    assert!(
        owned + not_owned >= 2_000,
        "too few requests after the change to judge: {owned} + {not_owned}"
    );
    assert!(
        not_owned * 100 <= owned + not_owned,
        "{not_owned} of {} requests after the join went to a node that does not own the key",
        owned + not_owned
    );
    assert_eq!(field(&stdout, "ring_nodes"), 4, "{stdout}");
    assert!(field(&stdout, "ring_version") >= version, "{stdout}");
    assert!(field(&stdout, "ring_refreshes") >= 1, "{stdout}");
    assert_eq!(field(&stdout, "lost"), 0, "{stdout}");
    for n in &mut nodes {
        n.terminate();
    }
}
