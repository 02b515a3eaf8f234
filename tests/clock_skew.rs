//! Issue 10, clocks, on real processes: three `kvd` nodes whose wall clocks are 10 minutes
//! ahead (node 1), 10 minutes behind (node 2) and right (node 3), set with libfaketime
//! (`LD_PRELOAD`, `FAKETIME`; monotonic time is left alone so timers behave). The set-up
//! installs Debian's `faketime` package when libfaketime is missing.
//!
//! * Each node measures its peers' offsets from gossip and reports them (STATS, CLUSTER,
//!   kvcat); the skewed nodes find themselves 10 minutes off the cluster and refuse to
//!   coordinate writes with CLOCK_OFFSET, while the node with the right clock takes them all.
//! * Sequential writes and deletes of the same keys through the three nodes, each after the
//!   previous one was answered: a QUORUM read (through a different node every time) returns
//!   the last acknowledged value every time, 0 lost out of every key and step.
//! * A TTL set through the node that accepts writes keeps its length (the stored expiry is
//!   its PUT's time plus the TTL within the max clock offset), and reads through the skewed
//!   nodes see the value as live.

mod common;

use common::{kvcat, libfaketime, temp_dir, wait_for, Node};
use dkv::client::{Client, ClientError};
use dkv::protocol::{Consistency, Request, Status};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The skew of nodes 1 and 2, seconds.
const SKEW_S: i64 = 600;
/// `--max-clock-offset-ms` (the default).
const MAX_OFFSET_MS: i64 = dkv::limits::MAX_CLOCK_OFFSET_MS_DEFAULT as i64;
/// Keys written per case (every key goes through every step).
const KEYS: usize = 200;

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// The value of STATS line `name`.
fn stat(stats: &str, name: &str) -> Option<i64> {
    stats.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Node `id`'s `clock_offset_ms=` as shown on its line of a CLUSTER text.
fn cluster_offset_of(cluster: &str, id: u32) -> Option<i64> {
    cluster
        .lines()
        .find(|l| l.split(' ').next() == Some(&id.to_string()))?
        .split(' ')
        .find_map(|f| f.strip_prefix("clock_offset_ms="))
        .and_then(|v| v.parse().ok())
}

/// Start the three nodes: node 1 at +10 min, node 2 at -10 min, node 3 right, with `extra`
/// arguments.
fn start_skewed(extra: &[&str]) -> Vec<Node> {
    let lib = libfaketime();
    let lib = lib.to_str().expect("a UTF-8 path");
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let list = common::node_list(&ports);
    let dir = temp_dir("clock-skew");
    let fake = [Some(format!("+{SKEW_S}")), Some(format!("-{SKEW_S}")), None];
    let mut extra = extra.to_vec();
    extra.extend_from_slice(&["--gossip-interval-ms", "50"]);
    (0..3)
        .map(|i| {
            let args = common::cluster_args(i + 1, &list, 2, &extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut env = Vec::new();
            if let Some(f) = &fake[i] {
                env.push(("LD_PRELOAD", lib));
                env.push(("FAKETIME", f.as_str()));
                // Timers run on the monotonic clock: leave it alone, only the wall clock is
                // what the test is about. (Faking it too, by the same constant, also passes:
                // kvd's timers only use differences of monotonic time.)
                env.push(("FAKETIME_DONT_FAKE_MONOTONIC", "1"));
            }
            Node::start_with_env(ports[i], &dir.join(format!("node-{}", i + 1)), &args, &env)
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Put,
    Delete,
}

fn clients_of(nodes: &[Node]) -> Vec<Client> {
    nodes
        .iter()
        .map(|n| {
            let c = n.client();
            c.set_timeout(Some(Duration::from_secs(10))).unwrap();
            c
        })
        .collect()
}

/// Sequential steps on each key, through nodes 1, 3, 2, 3, 1, 2, 3, 1, 3, 2 (0-based in the
/// table): fast then right, slow then right, deletes through skewed nodes after a write
/// through the right one, writes through skewed nodes after a delete. After each answer, a
/// QUORUM read through another node every time must return the last acknowledged value.
/// Returns writes acknowledged and refused (CLOCK_OFFSET) per node, and the reads made.
fn run_steps(clients: &mut [Client], keys: usize) -> ([usize; 3], [usize; 3], usize) {
    let steps = STEPS;
    let mut acked = [0usize; 3];
    let mut refused = [0usize; 3];
    let mut reads = 0usize;
    let mut lost = Vec::new();
    for k in 0..keys {
        let key = format!("skew-{k}");
        let mut last: Option<Vec<u8>> = None;
        for (s, &(via, step)) in steps.iter().enumerate() {
            let value = format!("v{k}-{s}").into_bytes();
            let r = match step {
                Step::Put => clients[via].put(key.as_bytes(), &value, 0, Consistency::Quorum),
                Step::Delete => clients[via].delete(key.as_bytes(), Consistency::Quorum),
            };
            match r {
                Ok(_) => {
                    acked[via] += 1;
                    last = matches!(step, Step::Put).then(|| value.clone());
                }
                Err(ClientError::Server { status, message })
                    if Status::from_u8(status) == Some(Status::ClockOffset) =>
                {
                    assert!(
                        message.contains("ahead of") || message.contains("behind"),
                        "{message}"
                    );
                    refused[via] += 1;
                }
                Err(e) => panic!("{step:?} {key} via node {}: {e:?}", via + 1),
            }
            let reader = (k + s) % 3;
            let got = clients[reader]
                .get(key.as_bytes(), Consistency::Quorum)
                .unwrap_or_else(|e| panic!("GET {key} via node {}: {e:?}", reader + 1))
                .map(|(_, v)| v);
            reads += 1;
            if got != last {
                lost.push(format!(
                    "{key} after step {s} ({step:?} via node {}): read via node {} {:?}, \
                     last acknowledged {:?}",
                    via + 1,
                    reader + 1,
                    got.map(|v| String::from_utf8_lossy(&v).into_owned()),
                    last.as_ref()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                ));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {reads} QUORUM reads missed the last acknowledged write, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    (acked, refused, reads)
}

const STEPS: [(usize, Step); 10] = [
    (0, Step::Put),
    (2, Step::Put),
    (1, Step::Put),
    (2, Step::Delete),
    (0, Step::Put),
    (1, Step::Delete),
    (2, Step::Put),
    (0, Step::Delete),
    (2, Step::Delete),
    (1, Step::Put),
];

/// Writes of the steps table that go through node `n` (0-based), over `keys` keys.
fn through(n: usize, keys: usize) -> usize {
    STEPS.iter().filter(|(v, _)| *v == n).count() * keys
}

#[test]
fn skewed_clocks_never_reorder_acknowledged_writes() {
    let nodes = start_skewed(&[]);
    let mut clients = clients_of(&nodes);

    // The fake clocks work: node 1's STATS uptime is not what tells, its incarnation is.
    // Every node measures both peers; the skewed ones see themselves 10 min off.
    let expect = [SKEW_S * 1000, -SKEW_S * 1000, 0];
    for (i, c) in clients.iter_mut().enumerate() {
        let stats = wait_for(
            Duration::from_secs(30),
            &format!("node {} to measure its clock against both peers", i + 1),
            || {
                let s = c.stats().ok()?;
                let off = stat(&s, "clock_offset_ms")?;
                (stat(&s, "clock_peers_measured")? == 2 && (off - expect[i]).abs() <= MAX_OFFSET_MS)
                    .then_some(s)
            },
        );
        let refused = stat(&stats, "clock_writes_refused").unwrap();
        assert_eq!(refused, i64::from(i < 2), "node {}: {stats}", i + 1);
        assert_eq!(stat(&stats, "clock_offset_max_ms"), Some(MAX_OFFSET_MS));
    }
    // Node 3 shows the others' offsets in CLUSTER (and kvcat prints them).
    let cluster = clients[2].cluster().unwrap();
    let o1 = cluster_offset_of(&cluster, 1).expect("node 1's offset in CLUSTER");
    let o2 = cluster_offset_of(&cluster, 2).expect("node 2's offset in CLUSTER");
    assert!((o1 - SKEW_S * 1000).abs() <= MAX_OFFSET_MS, "{cluster}");
    assert!((o2 + SKEW_S * 1000).abs() <= MAX_OFFSET_MS, "{cluster}");
    assert!(cluster.contains("cluster_offset_ms="), "{cluster}");
    let printed = kvcat(&nodes[2].addr, "CLUSTER\nSTATS\n");
    assert!(printed.contains("clock_offset_ms="), "{printed}");
    assert!(printed.contains("clock_peer_1_offset_ms="), "{printed}");

    // Every shard of node 3 has measured too: writes through it go through (no fixed sleep).
    wait_for(Duration::from_secs(30), "node 3 to take writes", || {
        (0..16)
            .all(|k| {
                clients[2]
                    .put(
                        format!("probe-{k}").as_bytes(),
                        b"x",
                        0,
                        Consistency::Quorum,
                    )
                    .is_ok()
            })
            .then_some(())
    });

    let (acked, refused, reads) = run_steps(&mut clients, KEYS);
    // The right clock took every write; the skewed ones refused every one.
    let through = |n: usize| through(n, KEYS);
    assert_eq!(acked[2], through(2), "writes through node 3 all succeed");
    assert_eq!((acked[0], acked[1]), (0, 0));
    assert_eq!((refused[0], refused[1]), (through(0), through(1)));
    assert!(reads >= KEYS * STEPS.len());
    for (i, n) in nodes.iter().enumerate().take(2) {
        assert!(
            n.log().contains("clock: this node's clock is"),
            "node {} logs the clock warning",
            i + 1
        );
        // Counters reach STATS on the shards' next tick: poll.
        let c = &mut clients[i];
        wait_for(Duration::from_secs(10), "coord_clock_refused", || {
            let s = c.stats().ok()?;
            (stat(&s, "coord_clock_refused")? as usize == through(i)).then_some(())
        });
    }

    // TTL: through the node that accepts writes, it keeps its length.
    let ttl_s = 300u32;
    let before = wall_ms();
    clients[2]
        .put(b"ttl-key", b"ttl-value", ttl_s, Consistency::Quorum)
        .unwrap();
    let after = wall_ms();
    for (i, c) in clients.iter_mut().enumerate().take(2) {
        // The skewed nodes do not take it...
        let e = c
            .put(b"ttl-other", b"x", ttl_s, Consistency::Quorum)
            .unwrap_err();
        assert_eq!(e.status(), Some(Status::ClockOffset), "node {}", i + 1);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        // ...and read it as live (they judge expiry by the cluster's clock).
        let got = c.get(b"ttl-key", Consistency::Quorum).unwrap();
        assert_eq!(
            got.map(|(_, v)| v),
            Some(b"ttl-value".to_vec()),
            "GET via node {}",
            i + 1
        );
    }
    // The stored expiry on every replica (LGET answers version, expiry, value; it judges
    // expiry by the cluster's clock too, so the node 10 minutes fast still sees it live).
    let lo = before + i64::from(ttl_s) * 1000 - MAX_OFFSET_MS;
    let hi = after + i64::from(ttl_s) * 1000 + MAX_OFFSET_MS;
    for i in [0, 1, 2] {
        let r = clients[i]
            .call(&Request::LocalGet { key: b"ttl-key" })
            .unwrap();
        assert_eq!(r.status(), Some(Status::Ok), "LGET on node {}", i + 1);
        let expires = i64::from_be_bytes(r.body[8..16].try_into().unwrap());
        assert!(
            (lo..=hi).contains(&expires),
            "node {}: expiry {} ms from the PUT, allowed {}..={}",
            i + 1,
            expires - before,
            lo - before,
            hi - before
        );
    }
}

/// With the max-offset rule out of the way (`--max-clock-offset-ms` at its maximum, an hour),
/// the skewed nodes coordinate writes with versions 10 minutes off, and the replicas' "I hold
/// a newer version" answers alone keep every acknowledged write ordered: the coordinator
/// issues its write again above the version held (issue 10's original failure: 200 of 200
/// keys read the fast node's older write back).
#[test]
fn without_the_offset_rule_reissued_writes_keep_the_order() {
    let nodes = start_skewed(&["--max-clock-offset-ms", "3600000"]);
    let mut clients = clients_of(&nodes);
    for n in &nodes {
        common::wait_clocks_measured(n);
    }
    let (acked, refused, _) = run_steps(&mut clients, KEYS);
    assert_eq!(refused, [0, 0, 0]);
    assert_eq!(
        acked,
        [through(0, KEYS), through(1, KEYS), through(2, KEYS)]
    );
    // Every node is a replica of every key and its clock follows the versions it stores, so
    // a write needs issuing again only when it races the replication of the one before (a
    // handful of times per run, none on some runs): the figure is reported, not asserted.
    // What is asserted is the guarantee, in run_steps; the coordinator's unit tests pin the
    // mechanism itself.
    let reissued: i64 = clients
        .iter_mut()
        .map(|c| stat(&c.stats().unwrap(), "coord_reissues").unwrap_or(0))
        .sum();
    eprintln!("writes issued again above a newer version: {reissued}");
}
