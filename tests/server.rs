//! One real kvd process per test, driven over loopback: the kvcat contract, bad input, limits,
//! many connections, shutdown.

mod common;

use common::{kvcat, temp_dir, wait_for, Node};
use dkv::client::Client;
use dkv::limits::{FRAME_SIZE_MAX, KEY_SIZE_MAX};
use dkv::protocol::{frame, op, Consistency, Request, Status};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn node(name: &str, args: &[&str]) -> Node {
    Node::start(&temp_dir(name), args)
}

/// Read until the server closes the connection (or `limit` passes); the bytes received.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("connection not closed by the server: {e}"),
        }
    }
}

#[test]
fn kvcat_put_get_del_get() {
    let n = node("kvcat", &["--shards", "2"]);
    let out = kvcat(&n.addr, "PUT a 1\nGET a\nDEL a\nGET a\n");
    assert_eq!(out, "OK\n1\nOK\n(not found)\n");
}

#[test]
fn kvcat_quoting_ttl_and_errors() {
    let n = node("kvcat2", &["--shards", "2"]);
    let long_key = "k".repeat(KEY_SIZE_MAX + 1);
    let input = format!(
        "put \"a b\" \"\\x00\\xffx y\"\nget \"a b\"\nPING\nPUT t v ttl=100\nGET t ONE\nLGET t\nPUT {long_key} v\nGET nope ALL\nBOGUS\n"
    );
    let out = kvcat(&n.addr, &input);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 9, "one line per command: {out}");
    assert_eq!(lines[0], "OK");
    assert_eq!(lines[1], "\"\\x00\\xffx y\"");
    assert_eq!(lines[2], "PONG");
    assert_eq!(lines[3], "OK");
    assert_eq!(lines[4], "v");
    assert!(lines[5].starts_with("v version="), "{}", lines[5]);
    assert!(lines[6].starts_with("ERR KEY_TOO_LARGE "), "{}", lines[6]);
    assert_eq!(lines[7], "(not found)");
    assert!(lines[8].starts_with("ERR USAGE "), "{}", lines[8]);
}

#[test]
fn kvcat_cannot_connect_exits_1() {
    let port = common::free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvcat"))
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn huge_declared_length_gets_an_error_frame_and_a_close() {
    let n = node("huge", &["--shards", "2"]);
    let mut s = TcpStream::connect(&n.addr).unwrap();
    s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10));
    let (f, len) = frame::parse(&got).unwrap().expect("a whole error frame");
    assert_eq!(len, got.len(), "nothing after the error frame");
    assert_eq!(f.op, 0x80);
    assert_eq!(f.aux, Status::FrameTooLarge as u8);
    assert_eq!(f.id, 0);
    assert!(String::from_utf8_lossy(f.body).contains(&FRAME_SIZE_MAX.to_string()));
    // The node keeps serving.
    assert_eq!(kvcat(&n.addr, "PING\nPUT x y\nGET x\n"), "PONG\nOK\ny\n");
}

#[test]
fn malformed_frame_closes_but_bad_content_does_not() {
    let n = node("malformed", &["--shards", "2"]);
    // Content errors: the connection stays usable.
    let mut c = n.client();
    let long = vec![b'k'; KEY_SIZE_MAX + 1];
    let mut raw = Vec::new();
    frame::put_frame(
        &mut raw,
        op::GET,
        0,
        5,
        &[&(long.len() as u16).to_be_bytes(), &long],
    );
    frame::put_frame(&mut raw, 0x7E, 0, 6, &[]);
    frame::put_frame(&mut raw, op::GET, 0x10, 7, &[&[0, 1], b"k"]);
    c.send_raw(&raw);
    let r = c.recv().unwrap();
    assert_eq!((r.id, r.status()), (5, Some(Status::KeyTooLarge)));
    let r = c.recv().unwrap();
    assert_eq!((r.id, r.status()), (6, Some(Status::UnknownOpcode)));
    let r = c.recv().unwrap();
    assert_eq!((r.id, r.status()), (7, Some(Status::BadRequest)));
    c.ping().expect("still usable");

    // A body that does not match its opcode: error frame, then close.
    let mut s = TcpStream::connect(&n.addr).unwrap();
    let mut raw = Vec::new();
    frame::put_frame(&mut raw, op::GET, 0, 9, &[&[0, 50], b"short"]);
    s.write_all(&raw).unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10));
    let (f, _) = frame::parse(&got).unwrap().unwrap();
    assert_eq!(
        (f.op, f.aux, f.id),
        (op::GET | 0x80, Status::Malformed as u8, 9)
    );
    // Others were served throughout.
    c.ping().unwrap();
}

#[test]
fn pipelined_requests_across_shards_are_all_answered() {
    let n = node("pipeline", &["--shards", "4"]);
    let mut c = n.client();
    let keys: Vec<String> = (0..500).map(|i| format!("key-{i}")).collect();
    let mut ids = std::collections::HashMap::new();
    for k in &keys {
        let id = c.send(&Request::Put {
            key: k.as_bytes(),
            value: k.as_bytes(),
            ttl_seconds: 0,
            consistency: Consistency::Default,
        });
        ids.insert(id, k.clone());
    }
    for _ in 0..keys.len() {
        let r = c.recv().unwrap();
        assert_eq!(r.status(), Some(Status::Ok));
        assert!(ids.remove(&r.id).is_some(), "unexpected id {}", r.id);
    }
    for k in &keys {
        let id = c.send(&Request::Get {
            key: k.as_bytes(),
            consistency: Consistency::Default,
        });
        ids.insert(id, k.clone());
    }
    for _ in 0..keys.len() {
        let r = c.recv().unwrap();
        let k = ids.remove(&r.id).expect("known id");
        let (_, v) = r.version_and_rest().expect("value");
        assert_eq!(v, k.as_bytes());
    }
    let stats = c.stats().unwrap();
    let forwarded: u64 = stats
        .lines()
        .filter(|l| l.contains("_forwarded_out "))
        .map(|l| l.split(' ').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        forwarded > 0,
        "with 4 shards some keys live elsewhere: {stats}"
    );
}

#[test]
fn versions_increase_and_ttl_expires() {
    let n = node("ttl", &["--shards", "2"]);
    let mut c = n.client();
    let v1 = c.put(b"k", b"1", 0, Consistency::Default).unwrap();
    let v2 = c.put(b"k", b"2", 0, Consistency::Default).unwrap();
    assert!(v2 > v1);
    let (v, value) = c.get(b"k", Consistency::Default).unwrap().unwrap();
    assert_eq!((v, value.as_slice()), (v2, &b"2"[..]));
    c.put(b"t", b"x", 1, Consistency::Default).unwrap();
    assert!(c.get(b"t", Consistency::Default).unwrap().is_some());
    wait_for(Duration::from_secs(10), "the TTL to expire", || {
        c.get(b"t", Consistency::Default)
            .unwrap()
            .is_none()
            .then_some(())
    });
    // protocol.md § 9: LGET of the expired value is NOT_FOUND with an empty body (no version:
    // it is not a tombstone).
    let r = c.call(&Request::LocalGet { key: b"t" }).unwrap();
    assert_eq!((r.status(), r.body.len()), (Some(Status::NotFound), 0));
}

#[test]
fn many_connections_with_refusals_past_the_limit() {
    let fd_limit = common::raise_fd_limit();
    let total = 2_000usize.min(fd_limit as usize / 2);
    let cap = total * 3 / 4;
    let cap_s = cap.to_string();
    let n = node("conns", &["--shards", "2", "--max-connections", &cap_s]);
    let mut streams = Vec::with_capacity(total);
    for _ in 0..total {
        streams.push(TcpStream::connect(&n.addr).expect("connect"));
    }
    // Every connection sends a PING; count the PONGs and the refusals.
    let mut ping = Vec::new();
    Request::Ping.encode(1, &mut ping);
    for s in &mut streams {
        let _ = s.write_all(&ping);
    }
    let (mut pongs, mut refused) = (0, 0);
    for s in &mut streams {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        let f = loop {
            if let Ok(Some((f, _))) = frame::parse(&got) {
                break Some((f.op, f.aux));
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break None,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        };
        match f {
            Some((o, st)) if o == op::PING | 0x80 && st == 0 => pongs += 1,
            Some((0x80, st)) if st == Status::TooManyConnections as u8 => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(pongs + refused, total);
    assert_eq!(pongs, cap, "the node-wide limit is exact");
    assert_eq!(refused, total - cap);
    // Still serving, also after the crowd leaves.
    drop(streams);
    let mut c = wait_for(Duration::from_secs(10), "a free connection slot", || {
        Client::connect(n.addr.as_str()).ok()
    });
    c.put(b"after", b"crowd", 0, Consistency::Default).unwrap();
    let stats = c.stats().unwrap();
    assert!(stats.contains("connections_refused "), "{stats}");
}

#[test]
fn a_client_that_never_reads_is_disconnected() {
    let n = node("noread", &["--shards", "1", "--idle-timeout-ms", "1500"]);
    let mut c = n.client();
    let value = vec![b'v'; 512 * 1024];
    c.put(b"big", &value, 0, Consistency::Default).unwrap();
    // Ask for the big value many times and never read the replies.
    let mut s = TcpStream::connect(&n.addr).unwrap();
    let mut req = Vec::new();
    for i in 0..64 {
        Request::Get {
            key: b"big",
            consistency: Consistency::Default,
        }
        .encode(i, &mut req);
    }
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&req);
    // The server stops reading, then drops the connection; other clients are served meanwhile.
    let mut other = n.client();
    other.ping().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the stalled connection to be dropped",
        || {
            let stats = other.stats().ok()?;
            stats
                .lines()
                .any(|l| l.starts_with("connections_dropped ") && l != "connections_dropped 0")
                .then_some(())
        },
    );
    let got = read_to_close(&mut s, Duration::from_secs(20));
    assert!(got.len() < 64 * value.len(), "not every reply was buffered");
}

#[test]
fn sigterm_stops_cleanly() {
    let mut n = node("sigterm", &["--shards", "2"]);
    n.client().put(b"a", b"b", 0, Consistency::Default).unwrap();
    let status = n.terminate();
    assert!(status.success(), "exit status {status}");
}

/// One request on a fresh connection: the reply's status, and whether the node then closed
/// the connection (`false`: it still answers PING).
fn refusal_of(addr: &str, hello: &[u8]) -> (Status, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut bytes = hello.to_vec();
    Request::Ping.encode(2, &mut bytes);
    s.write_all(&bytes).unwrap();
    let got = read_to_close_or_pong(&mut s);
    let (f, n) = frame::parse(&got).unwrap().expect("a reply");
    assert_eq!(
        (f.op, f.id),
        (op::HELLO | 0x80, 1),
        "the reply answers the HELLO"
    );
    let status = Status::from_u8(f.aux).expect("a known status");
    match frame::parse(&got[n..]).unwrap() {
        None => (status, true),
        Some((pong, _)) => {
            assert_eq!((pong.op, pong.aux), (op::PING | 0x80, 0));
            (status, false)
        }
    }
}

/// Read until the node closes the connection or two replies are in.
fn read_to_close_or_pong(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(Some((_, n))) = frame::parse(&all) {
            if matches!(frame::parse(&all[n..]), Ok(Some(_))) {
                return all;
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(k) => all.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("neither a close nor a second reply: {e}"),
        }
    }
}

/// protocol.md §§ 7, 8, 8.1: after its layout checks, every refusal of a peer HELLO closes the
/// connection (UNAUTHORIZED, UNSUPPORTED_VERSION, BAD_REQUEST alike), while a refused client
/// HELLO (UNSUPPORTED_VERSION) and a layout BAD_REQUEST leave it usable.
#[test]
fn refused_hellos_close_the_connection_as_documented() {
    use dkv::auth::PEER_PROTOCOL_VERSION;
    let port = common::free_port();
    let list = format!("1=127.0.0.1:{port},2=127.0.0.1:{}", common::free_port());
    let n = Node::start_on(
        port,
        &temp_dir("hello-refusals"),
        &[
            "--id",
            "1",
            "--nodes",
            &list,
            "--replicas",
            "1",
            "--cluster-secret",
            "a test secret of some length",
        ],
    );
    // HELLO frames with id 1, built by hand (the encoder refuses a token above the limit).
    let hello = |version: u16, role: u8, node_id: u32, token: &[u8]| {
        let mut head = Vec::new();
        head.extend_from_slice(&version.to_be_bytes());
        head.extend_from_slice(&[role, 0]);
        head.extend_from_slice(&node_id.to_be_bytes());
        head.extend_from_slice(&(token.len() as u16).to_be_bytes());
        let mut out = Vec::new();
        frame::put_frame(&mut out, op::HELLO, 0, 1, &[&head, token]);
        out
    };
    let peer = |version: u16, node_id: u32, token: &[u8]| hello(version, 2, node_id, token);
    let nonce: &[u8] = &[7; 32];
    let cases: [(&str, Vec<u8>, Status, bool); 5] = [
        (
            "peer HELLO of peer protocol 1",
            peer(1, 2, nonce),
            Status::UnsupportedVersion,
            true,
        ),
        (
            "peer HELLO with a 5-byte nonce",
            peer(PEER_PROTOCOL_VERSION, 2, b"short"),
            Status::BadRequest,
            true,
        ),
        (
            // (A node not in --nodes gets its challenge: it may be joining; the proof of the
            // cluster secret admits it or not.)
            "peer HELLO claiming the node's own id",
            peer(PEER_PROTOCOL_VERSION, 1, nonce),
            Status::Unauthorized,
            true,
        ),
        (
            "peer HELLO whose token breaks the layout limit (257 bytes)",
            peer(PEER_PROTOCOL_VERSION, 2, &[7; 257]),
            Status::BadRequest,
            false,
        ),
        (
            "client HELLO of protocol 9",
            hello(9, 1, 0, b""),
            Status::UnsupportedVersion,
            false,
        ),
    ];
    for (what, req, status, closed) in cases {
        assert_eq!(refusal_of(&n.addr, &req), (status, closed), "{what}");
    }
}

/// protocol.md § 6: on SIGTERM every client connection gets a connection-level SHUTTING_DOWN
/// frame (op 0x80, id 0), and then the end of the stream; a connection that never sent a
/// request too.
#[test]
fn sigterm_tells_each_client_connection_before_closing_it() {
    let mut n = node("sigterm-notice", &["--shards", "2"]);
    let mut ping = Vec::new();
    Request::Ping.encode(1, &mut ping);
    let mut streams: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&n.addr).unwrap();
            s.write_all(&ping).unwrap();
            let mut pong = [0u8; 10];
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.read_exact(&mut pong).unwrap();
            assert_eq!(pong[4..6], [op::PING | 0x80, Status::Ok as u8]);
            s
        })
        .collect();
    streams.push(TcpStream::connect(&n.addr).unwrap());
    // Wait until the node has accepted the silent connection too (5 + the one asking).
    let mut asking = n.client();
    wait_for(Duration::from_secs(20), "6 open connections", || {
        let stats = asking.stats().ok()?;
        stats.lines().any(|l| l == "connections 6").then_some(())
    });
    drop(asking);
    n.signal(libc::SIGTERM);
    for s in &mut streams {
        let got = read_to_close(s, Duration::from_secs(20));
        let (f, len) = frame::parse(&got)
            .unwrap()
            .unwrap_or_else(|| panic!("a whole frame before the close, got {got:?}"));
        assert_eq!(len, got.len(), "nothing after the notice");
        assert_eq!((f.op, f.id), (0x80, 0), "a connection-level frame");
        assert_eq!(f.aux, Status::ShuttingDown as u8);
        assert!(Status::ShuttingDown.closes_connection());
    }
    let status = n.terminate();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn bad_options_are_refused_with_a_message() {
    for args in [
        &["--shards", "0"][..],
        &["--listen", "nonsense"],
        &["--sync", "sometimes"],
        &["--bogus"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvd"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--listen",
        "--data",
        "--shards",
        "--sync",
        "--max-connections",
        "--default-consistency",
    ] {
        assert!(help.contains(opt), "--help mentions {opt}");
    }
}

#[test]
fn kvcat_survives_unencodable_input() {
    let n = node("kvcat-huge", &["--shards", "1"]);
    let big_value = "v".repeat(1_100_000);
    let huge_key = "k".repeat(70_000);
    let out = kvcat(
        &n.addr,
        &format!("PUT k {big_value}\nGET {huge_key}\nPING\n"),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ERR VALUE_TOO_LARGE "), "{}", lines[0]);
    assert!(lines[1].starts_with("ERR KEY_TOO_LARGE "), "{}", lines[1]);
    assert_eq!(lines[2], "PONG");
}

/// A frame larger than one event's worth of reads (16 reads of 16 KiB) must still be read to
/// the end: readiness is edge-triggered, and no new event comes for bytes already waiting.
#[test]
fn the_largest_value_round_trips_and_one_byte_more_is_refused() {
    let n = node("largest", &["--shards", "2"]);
    let mut c = n.client();
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    let v: Vec<u8> = (0..dkv::limits::VALUE_SIZE_MAX).map(|i| i as u8).collect();
    c.put(b"big", &v, 0, Consistency::Default).unwrap();
    assert_eq!(c.get(b"big", Consistency::Default).unwrap().unwrap().1, v);
    let mut too_big = Vec::new();
    frame::put_frame(
        &mut too_big,
        op::PUT,
        0,
        77,
        &[
            &[0, 1],
            b"k",
            &[0, 0, 0, 0],
            &vec![0u8; dkv::limits::VALUE_SIZE_MAX + 1],
        ],
    );
    c.send_raw(&too_big);
    let r = c.recv().unwrap();
    assert_eq!((r.id, r.status()), (77, Some(Status::ValueTooLarge)));
    c.ping().unwrap();
}
