//! A node joins a running cluster (issue 12, the membership layer) against real `kvd`
//! processes: three nodes started with `--nodes`, a fourth with `--join` to node 2.
//!
//! * The joining node fetches the ring map from its seed, gossips, and every node comes to
//!   list four members alive (CLUSTER), the newcomer with its address. Writes through node 1
//!   all along the join are never refused.
//! * It coordinates client requests while it joins: a QUORUM PUT through it reaches the
//!   owners (GET through node 1 sees it), and a PUT through node 1 is read back through it.
//! * The leader admits it and it takes its share of partitions (tests/elastic.rs tests the
//!   moves in depth): once the change is over it holds exactly the keys of the partitions the
//!   ring gives it (LGET), and the others' keys not.
//! * TRANSFERS on a node joining at a throttled rate shows, while its copies run, each
//!   move's bytes done and (estimated) total, its rate and ETA, and a summary line (moves
//!   waiting / copying / copied, bytes left, rate, ETA); a copied move's total is its bytes.
//! * A `--join` with an id the cluster already has, at another address, is refused with a
//!   clear error; `--join` with `--nodes`, or without `--listen`, too.

mod common;

use common::{wait_for, Node};
use dkv::protocol::{Consistency, Status};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
const KEYS: usize = 200;

/// Retry `op` while the node answers CLOCK_OFFSET (a node measures its clock against a peer
/// it just heard of within a gossip round trip or so) or UNAVAILABLE.
fn retrying<T>(what: &str, mut op: impl FnMut() -> Result<T, dkv::client::ClientError>) -> T {
    wait_for(DEADLINE, what, || match op() {
        Ok(v) => Some(v),
        Err(e) if matches!(e.status(), Some(Status::ClockOffset | Status::Unavailable)) => None,
        Err(e) => panic!("{what}: {e}"),
    })
}

#[test]
fn a_node_joins_through_one_member_and_coordinates_requests() {
    let mut nodes = common::start_nodes("join", &[2, 2, 2], 3, &["--gossip-interval-ms", "50"]);
    // Writes through node 1 all along the join: none is refused (a member that joins counts
    // for the clock rule only once measured, so hearing of it refuses nothing).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, addr) = (stop.clone(), nodes[0].addr.clone());
        std::thread::spawn(move || {
            let mut c = dkv::client::Client::connect(addr.as_str()).expect("connect");
            let (mut done, mut refused) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match c.put(b"during-join", b"v", 0, Consistency::Quorum) {
                    Ok(_) => done += 1,
                    Err(e) => refused.push(e.to_string()),
                }
            }
            (done, refused)
        })
    };
    let dir = common::temp_dir("join-new");
    let args = common::join_args(4, &nodes[1].addr);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    nodes.push(Node::start(&dir.join("node-4"), &args));
    let addr4 = nodes[3].addr.clone();

    for n in &nodes {
        common::wait_alive(n, 4, &[1, 2, 3, 4], DEADLINE);
    }
    stop.store(true, Ordering::Relaxed);
    let (done, refused) = writer.join().expect("writer");
    assert!(
        done > 0 && refused.is_empty(),
        "{done} writes, refused: {refused:?}"
    );
    // Every node knows where node 4 listens (its CLUSTER line), and every node's RING lists
    // its address although it owns nothing.
    for n in &nodes {
        let text = n.client().cluster().expect("CLUSTER");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("4 {addr4} alive"))),
            "{}: {text}",
            n.addr
        );
        let map = wait_for(DEADLINE, "node 4 in the ring map", || {
            let map = n.client().ring().ok()?;
            map.addr_of(4).is_some().then_some(map)
        });
        assert_eq!(map.addr_of(4), Some(addr4.as_str()), "{}", n.addr);
        assert_eq!(common::stat(n, "cluster_nodes"), 4);
        assert_eq!(common::stat(n, "cluster_alive"), 4);
    }
    for n in &nodes {
        common::wait_clocks_measured(n);
    }

    // Writes through the node that owns nothing reach the owners; writes through an owner
    // are read back through it.
    let mut c4 = nodes[3].client();
    let mut c1 = nodes[0].client();
    for i in 0..KEYS {
        let key = format!("join-{i}");
        let value = format!("v{i}");
        if i % 2 == 0 {
            retrying("PUT through node 4", || {
                c4.put(key.as_bytes(), value.as_bytes(), 0, Consistency::Quorum)
            });
            let got = retrying("GET through node 1", || {
                c1.get(key.as_bytes(), Consistency::Quorum)
            });
            assert_eq!(got.map(|(_, v)| v), Some(value.into_bytes()), "{key}");
        } else {
            retrying("PUT through node 1", || {
                c1.put(key.as_bytes(), value.as_bytes(), 0, Consistency::Quorum)
            });
            let got = retrying("GET through node 4", || {
                c4.get(key.as_bytes(), Consistency::Quorum)
            });
            assert_eq!(got.map(|(_, v)| v), Some(value.into_bytes()), "{key}");
        }
    }
    // Once its join is over, node 4 holds exactly the keys of its partitions.
    let map = wait_for(Duration::from_secs(60), "the join to finish", || {
        let plan = nodes[0].client().cluster_admin("PLAN").ok()?;
        let map = nodes[0].client().ring().ok()?;
        (plan.contains("change none") && map.ownership.nodes().contains(&4)).then_some(map)
    });
    let mut held = 0;
    for i in 0..KEYS {
        let key = format!("join-{i}");
        let owner = map.owners_of_key(key.as_bytes()).contains(&4);
        let got = c4.local_get(key.as_bytes()).expect("LGET");
        assert_eq!(
            got.is_some(),
            owner,
            "{key}: node 4 owner {owner}, holds {got:?}"
        );
        held += usize::from(owner);
    }
    assert!(held > 0, "node 4 owns none of {KEYS} keys");
    // A DELETE through it works too.
    retrying("DELETE through node 4", || {
        c4.delete(b"join-0", Consistency::Quorum)
    });
    let got = retrying("GET through node 2", || {
        nodes[1].client().get(b"join-0", Consistency::Quorum)
    });
    assert_eq!(got, None);
    assert!(common::stat(&nodes[0], "members_added") >= 1);

    // An id the cluster has, at another address: refused before the node starts.
    let out = Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--data", dir.join("node-2b").to_str().expect("UTF-8 path")])
        .args(common::join_args(2, &nodes[0].addr))
        .stdin(Stdio::null())
        .output()
        .expect("run kvd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node id 2 is already in the cluster"), "{err}");
    drop(nodes);
}

#[test]
fn join_excludes_nodes_and_needs_listen() {
    let dir = common::temp_dir("join-alone");
    let kvd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kvd"))
            .args(["--data", dir.to_str().expect("UTF-8 path")])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kvd")
    };
    let out = kvd(&[
        "--id",
        "5",
        "--join",
        "127.0.0.1:1",
        "--nodes",
        "1=127.0.0.1:7001",
        "--cluster-secret",
        "s",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exclude each other"));
    let out = kvd(&[
        "--id",
        "5",
        "--join",
        "127.0.0.1:1",
        "--cluster-secret",
        "s",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--join needs --listen"));
}

/// Keys and value size of the throttled join: about 3 MB, so that at
/// [`THROTTLED_JOIN_MB_PER_S`] the joining node copies for seconds.
const THROTTLED_KEYS: usize = 3_000;
const THROTTLED_VALUE_SIZE: usize = 1_000;
const THROTTLED_JOIN_MB_PER_S: &str = "0.5";

/// A word's value in a TRANSFERS line (`name value`).
fn word_after<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == name)?;
    words.next()
}

#[test]
fn transfers_show_total_rate_and_eta_while_a_join_copies() {
    let mut nodes = common::start_nodes(
        "join-transfers",
        &[2, 2, 2],
        3,
        &["--gossip-interval-ms", "50"],
    );
    let mut c = nodes[0].client();
    let value = vec![b'v'; THROTTLED_VALUE_SIZE];
    for i in 0..THROTTLED_KEYS {
        let key = format!("moving-{i}");
        retrying("a PUT", || {
            c.put(key.as_bytes(), &value, 0, Consistency::Quorum)
        });
    }
    let dir = nodes[0].data.parent().expect("a test dir").to_path_buf();
    let port = common::free_port();
    let mut args = common::join_args(4, &nodes[1].addr);
    args.extend([
        "--stream-mb-per-s".to_string(),
        THROTTLED_JOIN_MB_PER_S.to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    nodes.push(Node::start_on(port, &dir.join("node-4"), &args));

    // While node 4 copies: a copying move with a total, a rate and an ETA, and the summary.
    let text = wait_for(
        common::RING_CHANGE_TIMEOUT,
        "TRANSFERS with figures",
        || {
            let text = nodes[3].client().cluster_admin("TRANSFERS").ok()?;
            let copying = text.lines().find(|l| {
                l.starts_with("partition ")
                    && l.ends_with(" copying")
                    && ["total_bytes", "rate_bytes_per_s", "eta_s"]
                        .iter()
                        .all(|w| word_after(l, w).is_some_and(|v| v.parse::<f64>().is_ok()))
            })?;
            let summary = text.lines().find(|l| l.starts_with("moves waiting "))?;
            let left: u64 = word_after(summary, "bytes_left")?.parse().ok()?;
            word_after(summary, "eta_s")?.parse::<f64>().ok()?;
            (left > 0 && word_after(copying, "bytes").is_some()).then(|| text.clone())
        },
    );
    println!("{text}");
    for l in text.lines().filter(|l| l.ends_with(" copied")) {
        assert_eq!(word_after(l, "total_bytes"), word_after(l, "bytes"), "{l}");
    }
    let summary = text
        .lines()
        .find(|l| l.starts_with("moves waiting "))
        .expect("a summary line");
    let copying: usize = word_after(summary, "copying")
        .and_then(|v| v.parse().ok())
        .expect("a copying count");
    assert!(copying >= 1, "{summary}");
    let rate: u64 = word_after(summary, "rate_bytes_per_s")
        .and_then(|v| v.parse().ok())
        .expect("a rate");
    assert!(rate > 0, "{summary}");

    // Unthrottled, the join ends, and so do its moves.
    nodes[3]
        .client()
        .cluster_admin("THROTTLE 0")
        .expect("THROTTLE");
    let all: Vec<&Node> = nodes.iter().collect();
    common::wait_settled_ring(&all);
    wait_for(DEADLINE, "TRANSFERS to empty", || {
        let text = nodes[3].client().cluster_admin("TRANSFERS").ok()?;
        text.starts_with("no partition is moving").then_some(())
    });
    for n in &mut nodes {
        n.terminate();
    }
}
