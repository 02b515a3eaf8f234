//! Multi-process cluster tests: three real `kvd` processes on 127.0.0.1 with N=3, faults
//! injected by PID (`kill -9`, SIGSTOP, SIGCONT), every wait a poll with a deadline.
//!
//! Measured times (failure detection, leader takeover) are printed, not asserted against a
//! tight bound: the machines running the suite are shared and noisy.

mod common;

use common::{free_port, temp_dir, wait_for, Node};
use dkv::client::{Client, ClientError};
use dkv::protocol::{Consistency, Status};
use std::time::{Duration, Instant};

const GOSSIP_INTERVAL_MS: u64 = 100;
const FAILURE_THRESHOLD: u64 = 5;
const DEADLINE: Duration = Duration::from_secs(20);

struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(name: &str, extra: &[&str]) -> Cluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let list: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let list = list.join(",");
        let dir = temp_dir(name);
        let interval = GOSSIP_INTERVAL_MS.to_string();
        let threshold = FAILURE_THRESHOLD.to_string();
        let nodes = (0..3)
            .map(|i| {
                let id = (i + 1).to_string();
                let mut args = vec![
                    "--id",
                    &id,
                    "--nodes",
                    &list,
                    "--replicas",
                    "3",
                    "--cluster-secret",
                    "test-secret",
                    "--gossip-interval-ms",
                    &interval,
                    "--failure-threshold",
                    &threshold,
                    "--request-timeout-ms",
                    "1000",
                    "--shards",
                    "2",
                ];
                args.extend_from_slice(extra);
                Node::start_on(ports[i], &dir.join(format!("node-{}", i + 1)), &args)
            })
            .collect();
        let c = Cluster { nodes };
        for id in 1..=3 {
            c.wait_heard_from_all(id);
        }
        c
    }

    fn node(&self, id: u32) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u32) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn client(&self, id: u32) -> Client {
        let c = self.node(id).client();
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    /// `(node id, state, is leader)` per line of node `at`'s CLUSTER reply.
    fn view(&self, at: u32) -> Option<Vec<(u32, String, bool)>> {
        let text = Client::connect(self.node(at).addr.as_str())
            .ok()?
            .cluster()
            .ok()?;
        Some(
            text.lines()
                .map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    (
                        w[0].parse().unwrap(),
                        w[2].to_string(),
                        w.contains(&"leader"),
                    )
                })
                .collect(),
        )
    }

    /// Wait until node `at` sees exactly `alive` alive and `failed` failed; returns how long.
    fn wait_state(&self, at: u32, alive: &[u32], failed: &[u32]) -> Duration {
        let start = Instant::now();
        wait_for(
            DEADLINE,
            &format!("node {at} to see alive {alive:?}, failed {failed:?}"),
            || {
                let v = self.view(at)?;
                let ok = v.iter().all(|(id, state, _)| {
                    (alive.contains(id) && state == "alive")
                        || (failed.contains(id) && state == "failed")
                });
                ok.then_some(())
            },
        );
        start.elapsed()
    }

    /// Wait until node `at` has heard every node's heartbeat (incarnation no longer 0).
    fn wait_heard_from_all(&self, at: u32) {
        wait_for(
            DEADLINE,
            &format!("node {at} to hear from every node"),
            || {
                let text = Client::connect(self.node(at).addr.as_str())
                    .ok()?
                    .cluster()
                    .ok()?;
                let heard = text.lines().all(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.len() >= 4 && w[2] == "alive" && w[3] != "0"
                });
                heard.then_some(())
            },
        );
    }

    fn leader_seen_by(&self, at: u32) -> Option<u32> {
        self.view(at)?
            .into_iter()
            .find(|(_, _, leader)| *leader)
            .map(|(id, _, _)| id)
    }

    fn local(&self, id: u32, key: &[u8]) -> Option<(u64, Vec<u8>)> {
        self.client(id).local_get(key).unwrap()
    }

    fn stat(&self, id: u32, name: &str) -> u64 {
        let text = self.client(id).stats().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }
}

fn status_of(e: ClientError) -> Status {
    e.status()
        .unwrap_or_else(|| panic!("expected a server error, got {e:?}"))
}

#[test]
fn replicate_detect_failure_hints_read_repair_and_leader() {
    let mut c = Cluster::start("cluster-main", &[]);
    let q = Consistency::Quorum;

    // A write through node 1 reads back through node 3, and reaches every replica.
    let v = c.client(1).put(b"greeting", b"hello", 0, q).unwrap();
    let got = c.client(3).get(b"greeting", q).unwrap();
    assert_eq!(got, Some((v, b"hello".to_vec())));
    for id in 1..=3 {
        wait_for(DEADLINE, "the write on every replica", || {
            (c.local(id, b"greeting").map(|x| x.0) == Some(v)).then_some(())
        });
    }
    assert_eq!(c.leader_seen_by(2), Some(1));

    // kill -9 node 2: it is marked failed in about interval × threshold.
    c.node_mut(2).kill9();
    let killed = Instant::now();
    let mut seen: [Option<Duration>; 2] = [None, None];
    wait_for(DEADLINE, "nodes 1 and 3 to mark node 2 failed", || {
        for (slot, at) in seen.iter_mut().zip([1, 3]) {
            if slot.is_none()
                && c.view(at)
                    .is_some_and(|v| v.iter().any(|(id, s, _)| *id == 2 && s == "failed"))
            {
                *slot = Some(killed.elapsed());
            }
        }
        seen.iter().all(Option::is_some).then_some(())
    });
    c.wait_state(1, &[1, 3], &[2]);
    c.wait_state(3, &[1, 3], &[2]);
    println!(
        "failure of node 2 detected by node 1 after {} ms, by node 3 after {} ms \
         (interval × threshold = {} ms)",
        seen[0].unwrap().as_millis(),
        seen[1].unwrap().as_millis(),
        GOSSIP_INTERVAL_MS * FAILURE_THRESHOLD
    );

    // QUORUM works; ALL is refused as UNAVAILABLE, naming the shortfall.
    c.client(1).put(b"during", b"outage", 0, q).unwrap();
    assert_eq!(
        c.client(3).get(b"during", q).unwrap().map(|x| x.1),
        Some(b"outage".to_vec())
    );
    let e = c
        .client(1)
        .put(b"during", b"x", 0, Consistency::All)
        .unwrap_err();
    assert_eq!(status_of(e), Status::Unavailable);
    let e = c.client(3).get(b"during", Consistency::All).unwrap_err();
    match e {
        ClientError::Server { status, message } => {
            assert_eq!(status, Status::Unavailable as u8);
            assert!(message.contains("2 of 3"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut hinted = Vec::new();
    for i in 0..50 {
        let key = format!("hinted-{i}");
        let via = if i % 2 == 0 { 1 } else { 3 };
        let v = c.client(via).put(key.as_bytes(), b"h", 0, q).unwrap();
        hinted.push((key, v));
    }

    // Node 2 restarts (a new incarnation). Its memory store came back empty: the writes it
    // missed while down arrive as hints, the older one through read repair.
    c.node_mut(2).restart();
    c.wait_state(1, &[1, 2, 3], &[]);
    c.wait_state(2, &[1, 2, 3], &[]);
    for (key, v) in &hinted {
        wait_for(DEADLINE, "hint delivered to node 2", || {
            (c.local(2, key.as_bytes()).map(|x| x.0) == Some(*v)).then_some(())
        });
    }
    let delivered = c.stat(1, "hints_delivered") + c.stat(3, "hints_delivered");
    assert!(delivered >= 51, "hints delivered: {delivered}");
    assert!(c.stat(2, "hints_received") >= 51);

    let lost_on_restart = c.local(2, b"greeting");
    if lost_on_restart.is_none() {
        // Read repair: a read with ALL finds node 2 missing the key and repairs it.
        assert_eq!(
            c.client(1).get(b"greeting", Consistency::All).unwrap(),
            Some((v, b"hello".to_vec()))
        );
        wait_for(DEADLINE, "read repair of node 2", || {
            (c.local(2, b"greeting").map(|x| x.0) == Some(v)).then_some(())
        });
        assert!(c.stat(2, "read_repairs_received") >= 1);
    }

    // Kill the leader: the next lowest id takes over.
    assert_eq!(c.leader_seen_by(3), Some(1));
    c.node_mut(1).kill9();
    let start = Instant::now();
    for at in [2, 3] {
        wait_for(DEADLINE, "node 2 to lead", || {
            (c.leader_seen_by(at) == Some(2)).then_some(())
        });
    }
    println!(
        "leader moved from node 1 to node 2 after {} ms",
        start.elapsed().as_millis()
    );
}

#[test]
fn stopped_node_is_failed_then_recovers() {
    let c = Cluster::start("cluster-stop", &[]);
    c.node(3).signal(libc::SIGSTOP);
    let t = c.wait_state(1, &[1, 2], &[3]);
    c.wait_state(2, &[1, 2], &[3]);
    println!("SIGSTOP'd node 3 marked failed after {} ms", t.as_millis());
    // Writes go on without it (QUORUM), and it catches up through hints after SIGCONT.
    let v = c
        .client(1)
        .put(b"while-stopped", b"v", 0, Consistency::Quorum)
        .unwrap();
    c.node(3).signal(libc::SIGCONT);
    let t = c.wait_state(1, &[1, 2, 3], &[]);
    c.wait_state(3, &[1, 2, 3], &[]);
    println!("node 3 alive again {} ms after SIGCONT", t.as_millis());
    wait_for(DEADLINE, "node 3 to catch up", || {
        (c.local(3, b"while-stopped").map(|x| x.0) == Some(v)).then_some(())
    });
}

#[test]
fn same_key_contention_converges() {
    let c = Cluster::start("cluster-contention", &[]);
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let addr = addrs[w % 3].clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr.as_str()).unwrap();
                let mut acked = 0;
                for i in 0..200 {
                    let value = format!("writer {w} write {i}");
                    match client.put(b"hot", value.as_bytes(), 0, Consistency::Quorum) {
                        Ok(_) => acked += 1,
                        Err(e) => eprintln!("writer {w} write {i}: {e}"),
                    }
                }
                acked
            })
        })
        .collect();
    let acked: u32 = writers.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(acked, 1200, "every write acknowledged");
    // All replicas end with the same version (and value).
    let converged = wait_for(DEADLINE, "replicas to converge", || {
        let copies: Vec<_> = (1..=3).map(|id| c.local(id, b"hot")).collect();
        (copies[0].is_some() && copies.iter().all(|x| *x == copies[0])).then(|| copies[0].clone())
    });
    let (version, value) = converged.unwrap();
    println!(
        "converged on version {version}: {:?}",
        String::from_utf8_lossy(&value)
    );
    assert_eq!(
        c.client(2).get(b"hot", Consistency::All).unwrap(),
        Some((version, value))
    );
}

#[test]
fn misconfiguration_is_refused_at_start() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvd"))
            .args(args)
            .output()
            .expect("run kvd");
        assert!(!out.status.success(), "kvd {args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let list = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";
    let e = run(&["--id", "4", "--nodes", list, "--cluster-secret", "s"]);
    assert!(
        e.contains("id 4") && e.contains("not in the node list"),
        "{e}"
    );
    let e = run(&[
        "--id",
        "1",
        "--nodes",
        "1=127.0.0.1:1,1=127.0.0.1:2",
        "--cluster-secret",
        "s",
    ]);
    assert!(e.contains("appears twice"), "{e}");
    let e = run(&[
        "--id",
        "1",
        "--nodes",
        list,
        "--replicas",
        "4",
        "--cluster-secret",
        "s",
    ]);
    assert!(e.contains("--replicas 4"), "{e}");
    let e = run(&["--id", "1", "--nodes", list]);
    assert!(e.contains("--cluster-secret"), "{e}");
}

#[test]
fn a_peer_without_the_secret_is_refused() {
    let c = Cluster::start("cluster-secret", &[]);
    let bad = Client::connect_as(
        c.node(1).addr.as_str(),
        dkv::protocol::Role::Peer,
        2,
        b"wrong",
    );
    match bad {
        Err(e) => assert_eq!(status_of(e), Status::Unauthorized),
        Ok(_) => panic!("a peer HELLO with the wrong secret was accepted"),
    }
}
