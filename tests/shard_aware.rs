//! Shard-aware connections against real `kvd` processes (protocol.md § 11.2): a connection
//! from source port P lands on shard (P div 2) mod K (the HELLO reply says which), over IPv4
//! and IPv6, and connections from ports the kernel chose still spread over every shard;
//! a client that sends each key on the connection of its owning shard is never forwarded
//! between shards (STATS `shard_N_forwarded_out`), while a plain client still gets correct
//! answers through forwarding.

mod common;

use common::{temp_dir, wait_for, Node, READY_TIMEOUT};
use dkv::client::{Client, HelloInfo, ShardClients};
use dkv::hash::shard_of;
use dkv::protocol::{Consistency, Request, Role, PROTOCOL_VERSION};
use dkv::shard_port::shard_of_port;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

/// Keys written and read back in the forwarding checks.
const KEYS: usize = 2000;

/// Connections opened per shard in the landing checks.
const CONNECTIONS_PER_SHARD: usize = 4;

/// Sum of `shard_N_forwarded_out` over the shards, from a STATS text.
fn forwarded_out(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| name.starts_with("shard_") && name.ends_with("_forwarded_out"))
        .map(|(_, v)| v.trim().parse::<u64>().expect("a counter"))
        .sum()
}

/// HELLO on a connection made by the kernel (ephemeral source port): where it landed.
fn plain_hello(addr: SocketAddr) -> (u16, HelloInfo) {
    let stream = TcpStream::connect(addr).expect("connect");
    let port = stream.local_addr().expect("local address").port();
    let mut c = Client::from_stream(stream);
    let reply = c
        .call(&Request::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id: 0,
            token: b"",
        })
        .expect("HELLO");
    (port, HelloInfo::parse(&reply.body).expect("HELLO OK body"))
}

/// Every connection, shard-aware or plain, lands on the shard its source port says; plain
/// ones (the kernel's ports, of one parity on Linux) reach every shard.
fn assert_landing(addr: SocketAddr, shards: usize) {
    for shard in 0..shards {
        for _ in 0..CONNECTIONS_PER_SHARD {
            let (_c, info) = Client::connect_to_shard(addr, shard, shards, b"").expect("connect");
            assert_eq!(info.shards as usize, shards);
            assert_eq!(
                info.shard as usize, shard,
                "connection meant for shard {shard}"
            );
        }
    }
    // The kernel's own port choice follows the same rule.
    let mut seen = vec![false; shards];
    for _ in 0..16 * shards {
        let (port, info) = plain_hello(addr);
        assert_eq!(
            info.shard as usize,
            shard_of_port(port, shards),
            "port {port}"
        );
        seen[info.shard as usize] = true;
    }
    assert!(
        seen.iter().all(|s| *s),
        "connections from ephemeral ports missed a shard: {seen:?}"
    );
}

fn key(i: usize) -> Vec<u8> {
    format!("shard-aware-key-{i}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes()
}

#[test]
fn connections_land_on_the_shard_of_their_source_port() {
    let data = temp_dir("shard-aware-land");
    let node = Node::start(&data, &["--shards", "4"]);
    let addr: SocketAddr = node.addr.parse().expect("address");
    assert_landing(addr, 4);
    assert!(
        node.log().contains("connections steered by source port"),
        "log: {}",
        node.log()
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(data.with_extension("log"));
}

#[test]
fn shard_aware_requests_are_not_forwarded_and_plain_ones_still_work() {
    let data = temp_dir("shard-aware-forward");
    let node = Node::start(&data, &["--shards", "2"]);
    let addr: SocketAddr = node.addr.parse().expect("address");

    let mut pool = ShardClients::connect(addr, b"").expect("shard-aware connections");
    assert_eq!(pool.shards(), 2);
    for (shard, info) in pool.landed.iter().enumerate() {
        assert_eq!(info.shard as usize, shard, "landed {:?}", pool.landed);
    }
    let before = forwarded_out(&pool.for_shard(0).expect("shard 0").stats().expect("STATS"));
    let mut owners = [0usize; 2];
    for i in 0..KEYS {
        let k = key(i);
        owners[shard_of(&k, 2)] += 1;
        pool.for_key(&k)
            .put(&k, &value(i), 0, Consistency::Default)
            .expect("PUT");
    }
    for i in 0..KEYS {
        let k = key(i);
        let got = pool.for_key(&k).get(&k, Consistency::Default).expect("GET");
        assert_eq!(got.map(|(_, v)| v), Some(value(i)), "key {i}");
    }
    let after = forwarded_out(&pool.for_shard(1).expect("shard 1").stats().expect("STATS"));
    assert!(owners[0] > KEYS / 4 && owners[1] > KEYS / 4, "{owners:?}");
    assert_eq!(
        after - before,
        0,
        "{} of {} shard-aware requests were forwarded",
        after - before,
        2 * KEYS
    );

    // A plain client (kernel-chosen ports, one connection for every key) gets the same
    // answers; about half its requests cross to the other shard.
    let mut plain = node.client();
    let before = forwarded_out(&plain.stats().expect("STATS"));
    for i in 0..KEYS {
        let k = key(i);
        let got = plain.get(&k, Consistency::Default).expect("GET");
        assert_eq!(got.map(|(_, v)| v), Some(value(i)), "key {i}");
    }
    let forwarded = forwarded_out(&plain.stats().expect("STATS")) - before;
    assert!(
        forwarded > KEYS as u64 / 4 && forwarded < KEYS as u64 * 3 / 4,
        "a plain client had {forwarded} of {KEYS} requests forwarded"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(data.with_extension("log"));
}

/// A `kvd` started on an address `common::Node` does not use; killed by PID on drop.
struct Kvd(Child);

impl Drop for Kvd {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn ipv6_connections_land_on_the_shard_of_their_source_port() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!(
            "SKIPPED ipv6_connections_land_on_the_shard_of_their_source_port: no IPv6 loopback"
        );
        return;
    };
    let addr = probe.local_addr().expect("address");
    drop(probe);
    let data = temp_dir("shard-aware-v6");
    let mut kvd = Kvd(Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args(["--listen", &addr.to_string(), "--shards", "3", "--data"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvd"));
    wait_for(READY_TIMEOUT, "kvd on [::1] to answer PING", || {
        if let Ok(Some(status)) = kvd.0.try_wait() {
            panic!("kvd on {addr} exited during start-up with {status}");
        }
        Client::connect(addr).ok()?.ping().ok()
    });
    assert_landing(addr, 3);
    drop(kvd);
    let _ = std::fs::remove_dir_all(&data);
}

/// Run kvbench to completion (it stops by itself after `--requests`); its stderr.
fn kvbench(addr: &str, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args(["--target", addr, "--connections", "4", "--pipeline", "8"])
        .args([
            "--keys",
            "5000",
            "--requests",
            "20000",
            "--mix",
            "get=50,put=50",
        ])
        .args(["--check", "--quiet"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run kvbench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "kvbench failed ({}): {stderr}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn kvbench_is_shard_aware_by_default() {
    let data = temp_dir("shard-aware-kvbench");
    let node = Node::start(&data, &["--shards", "2"]);
    let mut c = node.client();

    let before = forwarded_out(&c.stats().expect("STATS"));
    let err = kvbench(&node.addr, &[]);
    assert!(
        err.contains("shard-aware: 4 of 4 connections landed on their shard"),
        "{err}"
    );
    let aware = forwarded_out(&c.stats().expect("STATS")) - before;

    let before = forwarded_out(&c.stats().expect("STATS"));
    let err = kvbench(&node.addr, &["--no-shard-aware"]);
    assert!(!err.contains("shard-aware:"), "{err}");
    let plain = forwarded_out(&c.stats().expect("STATS")) - before;

    // 20,000 operations and a check read of every written key each: a plain client has about
    // half of them forwarded; a shard-aware one only what a full per-shard queue spills
    // (kvbench's engine.rs), which is rare with 2 connections per shard.
    println!("requests forwarded between shards: shard-aware kvbench {aware}, plain {plain}");
    assert!(plain > 5_000, "plain kvbench: {plain} forwarded");
    assert!(
        aware * 20 < plain,
        "shard-aware kvbench: {aware} forwarded, plain {plain}"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(data.with_extension("log"));
}

/// The `shard-vectors` block of protocol.md § 11.2 matches the placement and the port rule.
#[test]
fn shard_vectors_match_protocol_md() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol.md");
    let doc = std::fs::read_to_string(path).expect("read protocol.md");
    let block = doc
        .split("```shard-vectors\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("protocol.md has a shard-vectors block");
    let (mut keys, mut ports) = (0, 0);
    for line in block.lines() {
        let line = line.split('#').next().expect("split yields a part").trim();
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 4, "shard vector line {line}");
        let k: usize = cols[2].parse().expect("K");
        let want: usize = cols[3].parse().expect("shard");
        match cols[0] {
            "key" => {
                let key: Vec<u8> = if cols[1] == "-" {
                    Vec::new()
                } else {
                    (0..cols[1].len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&cols[1][i..i + 2], 16).expect("hex"))
                        .collect()
                };
                assert_eq!(shard_of(&key, k), want, "{line}");
                keys += 1;
            }
            "port" => {
                let port: u16 = cols[1].parse().expect("port");
                assert_eq!(shard_of_port(port, k), want, "{line}");
                ports += 1;
            }
            other => panic!("unknown shard vector kind {other}"),
        }
    }
    assert!(keys >= 3 && ports >= 3, "too few shard vectors");
}
