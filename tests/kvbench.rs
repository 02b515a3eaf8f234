//! kvbench against a real kvd on 127.0.0.1: a healthy node gives answered requests, no errors
//! and no lost writes under `--check`; a node whose data is wiped mid-run makes `--check` report
//! lost writes and exit 1 (the check can fail).

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
