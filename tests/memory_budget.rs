//! The memory budget of connection buffers, on real kvd processes over loopback: a client that
//! never reads replies forwarded from the other shard holds a bounded amount of memory, stalled
//! half frames and trickled frames are dropped at the frame timeout, read buffers stop growing
//! at the node limit, and a well-behaved client keeps being served throughout. Everything waits
//! on conditions (STATS counters, closed sockets), never on elapsed time.

mod common;

use common::{temp_dir, wait_for, Node};
use dkv::client::Client;
use dkv::hash::shard_of;
use dkv::limits::{FRAME_SIZE_MAX, READ_CHUNK_SIZE};
use dkv::protocol::{op, Consistency, Request, Role, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const SHARDS: usize = 2;
const BIG: usize = 256 * 1024;

fn node(name: &str, args: &[&str]) -> Node {
    let mut all = vec!["--shards", "2", "--sync", "never"];
    all.extend_from_slice(args);
    Node::start(&temp_dir(name), &all)
}

/// A key owned by `shard`.
fn key_on(shard: usize, prefix: &str) -> Vec<u8> {
    (0..10_000)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .find(|k| shard_of(k, SHARDS) == shard)
        .expect("some key lands on every shard")
}

/// One `name value` figure of STATS.
fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("STATS has no {name}:\n{text}"))
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

/// Connect raw, send HELLO, and return the stream with the shard that owns it.
fn raw_hello(addr: &str) -> (TcpStream, usize) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    let mut c = Client::from_stream(stream.try_clone().unwrap());
    let r = c
        .call(&Request::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id: 0,
            token: b"",
        })
        .expect("HELLO");
    let shard = u16::from_be_bytes([r.body[6], r.body[7]]) as usize;
    (stream, shard)
}

/// Whether the server closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// The well-behaved client: a PUT and a GET on each shard answer correctly.
fn served(addr: &str) {
    let mut c = Client::connect(addr).expect("well-behaved client connects");
    c.set_timeout(Some(Duration::from_secs(30))).unwrap();
    for shard in 0..SHARDS {
        let k = key_on(shard, "steady");
        c.put(&k, b"fine", 0, Consistency::Default).expect("PUT");
        let (_, v) = c
            .get(&k, Consistency::Default)
            .expect("GET")
            .expect("found");
        assert_eq!(v, b"fine");
    }
}

#[test]
fn a_client_that_never_reads_forwarded_replies_holds_a_bounded_amount() {
    let n = node("never-reads", &[]);
    let mut c = Client::connect(n.addr.as_str()).unwrap();
    let value = vec![b'v'; BIG];
    let keys = [key_on(0, "big"), key_on(1, "big")];
    for k in &keys {
        c.put(k, &value, 0, Consistency::Default).unwrap();
    }
    let rss_start = rss_bytes(n.pid());
    let conn_limit = stat(&c.stats().unwrap(), "memory_connection_bytes_limit");

    // The hostile connection asks 4,096 times for a 256 KiB value owned by the other shard,
    // then never reads: 1 GiB of replies if nothing bounded them.
    let (mut hostile, shard) = raw_hello(&n.addr);
    let key = &keys[1 - shard];
    let mut burst = Vec::new();
    for i in 0..4096u32 {
        Request::Get {
            key,
            consistency: Consistency::Default,
        }
        .encode(i + 10, &mut burst);
    }
    hostile
        .write_all(&burst)
        .expect("the requests fit the socket buffers");

    // The node stops decoding the connection once its replies and reservations reach the limit.
    wait_for(
        Duration::from_secs(60),
        "the hostile connection to be paused",
        || {
            let s = c.stats().ok()?;
            (stat(&s, "memory_paused_connection") >= 1).then_some(())
        },
    );
    // From then on, whatever the node does, it holds at most the connection's budget for it.
    for _ in 0..20 {
        let s = c.stats().unwrap();
        let reserved = stat(&s, "memory_reserved_bytes");
        let buffered = stat(&s, "memory_buffered_bytes");
        assert!(
            reserved + buffered <= 2 * conn_limit,
            "reserved {reserved} + buffered {buffered} over the connection limit {conn_limit}"
        );
        let rss = rss_bytes(n.pid());
        assert!(
            rss <= rss_start + 3 * conn_limit,
            "RSS {rss} grew beyond {rss_start} + 3 x {conn_limit}"
        );
        served(&n.addr);
    }
    // The well-behaved client still reads large values over the other shard, pipelined.
    let (good, gshard) = raw_hello(&n.addr);
    let mut g = Client::from_stream(good);
    g.set_timeout(Some(Duration::from_secs(30))).unwrap();
    for _ in 0..64 {
        g.send(&Request::Get {
            key: &keys[1 - gshard],
            consistency: Consistency::Default,
        });
    }
    for _ in 0..64 {
        let r = g.recv().expect("a pipelined large reply");
        assert_eq!(r.op, op::GET);
        assert_eq!(r.version_and_rest().expect("OK").1.len(), BIG);
    }

    // After the hostile client leaves, its reservations and buffers are given back.
    drop(hostile);
    wait_for(Duration::from_secs(60), "buffers to be released", || {
        let s = c.stats().ok()?;
        (stat(&s, "memory_reserved_bytes") == 0
            && stat(&s, "memory_buffered_bytes") <= 4 * 1024 * 1024)
            .then_some(())
    });
}

#[test]
fn a_stalled_half_frame_and_a_trickled_frame_are_dropped_at_the_frame_timeout() {
    let n = node("half-frame", &["--frame-timeout-ms", "300"]);
    let mut idle = TcpStream::connect(&n.addr).unwrap();

    // A header declaring the largest frame, then a part of its body, then nothing.
    let mut half = TcpStream::connect(&n.addr).unwrap();
    let mut bytes = (FRAME_SIZE_MAX as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[op::PUT, 0, 0, 0, 0, 1]);
    bytes.extend_from_slice(&vec![0u8; 64 * 1024]);
    half.write_all(&bytes).unwrap();
    assert!(
        closed_within(&mut half, Duration::from_secs(60)),
        "a stalled half frame must be dropped"
    );

    // A frame sent one byte at a time, slower than the timeout allows in total.
    let mut slow = TcpStream::connect(&n.addr).unwrap();
    slow.set_nodelay(true).unwrap();
    let mut frame = Vec::new();
    Request::Put {
        key: b"slow",
        value: &[b's'; 100],
        ttl_seconds: 0,
        consistency: Consistency::Default,
    }
    .encode(1, &mut frame);
    let mut closed = false;
    for i in 0..100 {
        if slow.write_all(&frame[i % frame.len()..][..1]).is_err()
            || closed_within(&mut slow, Duration::from_millis(100))
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled frame must be dropped");

    let mut c = Client::connect(n.addr.as_str()).unwrap();
    let s = c.stats().unwrap();
    assert!(stat(&s, "memory_dropped_frame_timeout") >= 2, "{s}");
    // A connection with no frame begun is not touched by the frame timeout.
    let mut frame = Vec::new();
    Request::Ping.encode(5, &mut frame);
    idle.write_all(&frame).unwrap();
    let mut idle = Client::from_stream(idle);
    assert!(idle.recv().expect("the idle connection still works").id == 5);
    served(&n.addr);
}

#[test]
fn read_buffers_stop_growing_at_the_node_limit() {
    // A 6 MiB node budget and 24 connections that each send 512 KiB of a frame and stall.
    let n = node(
        "node-limit",
        &["--node-buffer-mb", "6", "--frame-timeout-ms", "2000"],
    );
    let mut c = Client::connect(n.addr.as_str()).unwrap();
    let node_limit = stat(&c.stats().unwrap(), "memory_node_bytes_limit");
    let mut stalled = Vec::new();
    let mut bytes = (FRAME_SIZE_MAX as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[op::PUT, 0, 0, 0, 0, 1]);
    bytes.extend_from_slice(&vec![0u8; 512 * 1024]);
    for _ in 0..24 {
        let mut s = TcpStream::connect(&n.addr).unwrap();
        // The node may stop reading: the writes that do not fit the socket buffers time out.
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = s.write_all(&bytes);
        stalled.push(s);
    }
    wait_for(
        Duration::from_secs(60),
        "a read to wait for node memory",
        || {
            let s = c.stats().ok()?;
            (stat(&s, "memory_paused_node") >= 1).then_some(())
        },
    );
    let s = c.stats().unwrap();
    let peak = stat(&s, "memory_buffered_peak_bytes");
    // Each connection's first read chunk is not gated, and each shard may grow by one chunk
    // past the limit in the same instant as the other.
    let slack = (24 + 2 + SHARDS as u64) * READ_CHUNK_SIZE as u64;
    assert!(
        peak <= node_limit + slack,
        "buffered peak {peak} over the node limit {node_limit} + {slack}"
    );
    served(&n.addr);
    for s in &mut stalled {
        assert!(
            closed_within(s, Duration::from_secs(60)),
            "stalled frames are dropped at the frame timeout"
        );
    }
    wait_for(Duration::from_secs(60), "buffers to be released", || {
        let s = c.stats().ok()?;
        (stat(&s, "memory_buffered_bytes") <= 4 * READ_CHUNK_SIZE as u64).then_some(())
    });
}

#[test]
fn past_the_node_limit_connections_that_do_not_read_are_dropped() {
    // Three clients that never read 256 KiB replies can hold 3 x 16 MiB under their own
    // limits; the node allows 6 MiB in all, so it drops them rather than keep buffering.
    let n = node("node-drop", &["--node-buffer-mb", "6"]);
    let mut c = Client::connect(n.addr.as_str()).unwrap();
    let value = vec![b'v'; BIG];
    let keys = [key_on(0, "big"), key_on(1, "big")];
    for k in &keys {
        c.put(k, &value, 0, Consistency::Default).unwrap();
    }
    let mut hostile = Vec::new();
    for _ in 0..3 {
        let (mut s, shard) = raw_hello(&n.addr);
        let mut burst = Vec::new();
        for i in 0..512u32 {
            Request::Get {
                key: &keys[1 - shard],
                consistency: Consistency::Default,
            }
            .encode(i + 10, &mut burst);
        }
        s.write_all(&burst).unwrap();
        hostile.push(s);
    }
    wait_for(
        Duration::from_secs(60),
        "a connection dropped for node memory",
        || {
            let s = c.stats().ok()?;
            (stat(&s, "memory_dropped_node") >= 1).then_some(())
        },
    );
    served(&n.addr);
    let mut closed = 0;
    for s in &mut hostile {
        closed += usize::from(closed_within(s, Duration::from_millis(500)));
    }
    assert!(
        closed >= 1,
        "the node closed none of the hostile connections"
    );
}

#[test]
fn memory_options_are_checked() {
    for bad in [
        ["--connection-buffer-kb", "1"],
        ["--node-buffer-mb", "0"],
        ["--frame-timeout-ms", "0"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvd"))
            .args(bad)
            .output()
            .expect("run kvd");
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }
}
