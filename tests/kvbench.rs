//! kvbench against a real kvd on 127.0.0.1: a healthy node gives answered requests, no errors
//! and no lost writes under `--check`; a node whose data is wiped mid-run makes `--check` report
//! lost writes and exit 1 (the check can fail). Against a `--conflicts siblings` cluster its
//! writers of a few keys collide into siblings, counted in the report, with no error.

mod common;

use common::{temp_dir, wait_for, Node};
use dkv::protocol::Consistency;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How long a kvbench run may take in these tests before the test fails.
const KVBENCH_TIMEOUT: Duration = Duration::from_secs(120);

/// The number after `"name":` at its first occurrence in the JSON object (the top-level field:
/// kvbench prints the totals before `per_op`).
fn field(json: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("{name} missing from {json}"))
        + key.len();
    let num: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {json}"))
}

fn kvbench(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args(args)
        .arg("--json")
        .arg("--quiet")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvbench")
}

/// Wait for kvbench to exit (bounded), killing it if it overruns.
fn finish(mut child: std::process::Child) -> Output {
    let deadline = std::time::Instant::now() + KVBENCH_TIMEOUT;
    loop {
        if child.try_wait().expect("wait kvbench").is_some() {
            return child.wait_with_output().expect("collect kvbench output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect kvbench output");
            panic!(
                "kvbench ran longer than {KVBENCH_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn healthy_node_answers_everything_and_loses_nothing() {
    let dir = temp_dir("kvbench-healthy");
    let node = Node::start(&dir.join("data"), &["--shards", "2", "--sync", "never"]);
    let out = finish(kvbench(&[
        "--target",
        &node.addr,
        "--duration",
        "1",
        "--connections",
        "8",
        "--pipeline",
        "4",
        "--threads",
        "2",
        "--keys",
        "2000",
        "--mix",
        "get=50,put=40,del=10",
        "--consistency",
        "QUORUM",
        "--preload",
        "--check",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = String::from_utf8(out.stdout).expect("JSON is UTF-8");
    assert!(
        out.status.success(),
        "kvbench failed with {}: {stderr}",
        out.status
    );
    assert_eq!(json.lines().count(), 1, "one JSON line: {json}");
    assert!(field(&json, "ops") > 0.0, "{json}");
    assert!(field(&json, "ops_per_sec") > 0.0, "{json}");
    assert_eq!(field(&json, "errors"), 0.0, "{json}\n{stderr}");
    assert!(json.contains("\"errors_by_status\":{}"), "{json}");
    for p in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(field(&json, p) > 0.0, "{p} in {json}");
    }
    assert!(field(&json, "p50_us") <= field(&json, "p99_us"));
    assert!(field(&json, "p99_us") <= field(&json, "max_us"));
    for op in ["\"get\":{", "\"put\":{", "\"del\":{"] {
        assert!(json.contains(op), "{op} missing from {json}");
    }
    // Preload alone acknowledged 2000 writes; the run added more.
    assert!(field(&json, "acknowledged_writes") > 2000.0, "{json}");
    assert_eq!(field(&json, "keys_checked"), 2000.0, "{json}");
    assert_eq!(field(&json, "lost"), 0.0, "{json}\n{stderr}");
    assert_eq!(field(&json, "readback_errors"), 0.0, "{json}");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wiped_node_makes_the_check_fail() {
    let dir = temp_dir("kvbench-wiped");
    let data = dir.join("data");
    let mut node = Node::start(&data, &["--shards", "2", "--sync", "never"]);
    let child = kvbench(&[
        "--target",
        &node.addr,
        "--duration",
        "3",
        "--connections",
        "4",
        "--keys",
        "20000",
        "--mix",
        "get=90,put=10",
        "--preload",
        "--check",
    ]);
    // Once the last preloaded key is readable the preload was acknowledged; then wipe the node.
    let mut client = node.client();
    wait_for(
        Duration::from_secs(60),
        "kvbench to preload its last key",
        || {
            client
                .get(b"k000000000019999", Consistency::One)
                .ok()
                .flatten()
        },
    );
    drop(client);
    node.kill9();
    std::fs::remove_dir_all(&data).expect("remove the node's data");
    node.restart();
    let out = finish(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = String::from_utf8(out.stdout).expect("JSON is UTF-8");
    assert_eq!(
        out.status.code(),
        Some(1),
        "lost writes must fail the run: {json}\n{stderr}"
    );
    assert!(field(&json, "lost") > 0.0, "{json}");
    assert!(stderr.contains("ACKNOWLEDGED WRITES LOST"), "{stderr}");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Siblings mode: kvbench against 3 `--conflicts siblings` nodes with N = 2 (so routing
/// matters: a write must reach a replica of its key) finds the mode in STATS by itself, runs
/// 12 writers over 4 keys, each write a causal GET then a PUT or DELETE with its context, for
/// a second and a half: every request reaches an owner, nothing fails, and reads find
/// siblings (writers that read the same state write side by side).
#[test]
fn siblings_mode_writers_collide_into_siblings_without_errors() {
    let nodes = common::start_nodes(
        "kvbench-siblings",
        &[2; 3],
        2,
        &["--conflicts", "siblings", "--gossip-interval-ms", "50"],
    );
    let out = finish(kvbench(&[
        "--target",
        &nodes[0].addr,
        "--duration",
        "1.5",
        "--connections",
        "12",
        "--pipeline",
        "2",
        "--threads",
        "2",
        "--keys",
        "4",
        "--mix",
        "get=30,put=50,del=20",
        "--consistency",
        "QUORUM",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = String::from_utf8(out.stdout).expect("JSON is UTF-8");
    assert!(
        out.status.success(),
        "kvbench failed with {}: {stderr}",
        out.status
    );
    assert!(json.contains("\"conflicts\":\"siblings\""), "{json}");
    assert!(
        stderr.contains("the cluster runs --conflicts siblings"),
        "{stderr}"
    );
    assert!(field(&json, "ops") > 0.0, "{json}");
    assert_eq!(field(&json, "errors"), 0.0, "{json}\n{stderr}");
    assert!(json.contains("\"errors_by_status\":{}"), "{json}");
    assert_eq!(field(&json, "requests_to_other"), 0.0, "{json}");
    for op in ["\"get\":{", "\"put\":{", "\"del\":{"] {
        assert!(json.contains(op), "{op} missing from {json}");
    }
    // Every operation starts with a causal GET.
    assert_eq!(field(&json, "causal_reads"), field(&json, "ops"), "{json}");
    assert!(
        field(&json, "reads_with_siblings") > 0.0,
        "{json}\n{stderr}"
    );
    assert!(field(&json, "max_siblings") >= 2.0, "{json}");
    assert_eq!(field(&json, "too_many_siblings"), 0.0, "{json}");
    assert!(stderr.contains("siblings: "), "the human summary: {stderr}");

    // The nodes agree: the keys hold what the writers left, readable causally everywhere.
    for n in &nodes {
        let mut c = n.client();
        for k in 0..4 {
            let key = format!("k{k:015}").into_bytes();
            c.get_siblings(&key, Consistency::Quorum)
                .expect("a causal GET after the run");
        }
    }
}

/// A RESP server that answers every GET with a miss, except that during `stall` (measured
/// from its start) it answers nothing: a server that stalls.
fn stalling_resp_server(stall: std::ops::Range<Duration>) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    // kvbench's GET with a 16-byte key: *2 $3 GET $16 <key>, each line ending in CRLF.
    const GET_SIZE: usize = 36;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr").to_string();
    let handle = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut conns = Vec::new();
        // kvbench opens 4 connections; each is served by its own thread until it closes.
        // Accepting polls with a deadline, so a kvbench that never connects cannot hang us.
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let deadline = start + Duration::from_secs(30);
        while conns.len() < 4 && std::time::Instant::now() < deadline {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(_) => break,
            };
            s.set_nonblocking(false).expect("blocking stream");
            // Bounded: a connection silent for this long is abandoned.
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("read timeout");
            let stall = stall.clone();
            conns.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut pending = 0usize;
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let at = start.elapsed();
                    if stall.contains(&at) {
                        std::thread::sleep(stall.end - at);
                    }
                    pending += n;
                    let replies = b"$-1\r\n".repeat(pending / GET_SIZE);
                    pending %= GET_SIZE;
                    if s.write_all(&replies).is_err() {
                        return;
                    }
                }
            }));
        }
        for c in conns {
            let _ = c.join();
        }
    });
    (addr, handle)
}

#[test]
fn open_loop_counts_the_time_a_stalled_server_made_requests_wait() {
    // 300 ms of silence in a 2 s run at 1000 requests/s: about 300 requests are due during
    // the stall. Only 4 can be sent (4 connections, pipeline 1); the rest wait in kvbench and
    // go out in a burst after the stall. Timed from the actual send they would look fast; timed
    // from their scheduled send (open loop) well over 1% of requests take 150 ms or more.
    // Only lower bounds are asserted: a slow machine can only make latencies longer.
    let (addr, server) =
        stalling_resp_server(Duration::from_millis(700)..Duration::from_millis(1000));
    let out = finish(kvbench(&[
        "--protocol",
        "resp",
        "--target",
        &addr,
        "--rate",
        "1000",
        "--duration",
        "2",
        "--connections",
        "4",
        "--pipeline",
        "1",
        "--mix",
        "get=100",
    ]));
    server.join().expect("server thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = String::from_utf8(out.stdout).expect("JSON is UTF-8");
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert_eq!(field(&json, "errors"), 0.0, "{json}");
    assert!(field(&json, "misses") > 1000.0, "{json}");
    assert!(
        field(&json, "max_us") >= 250_000.0,
        "the stall is hidden: {json}"
    );
    assert!(
        field(&json, "p99_us") >= 150_000.0,
        "the stall is hidden: {json}"
    );
}
