//! The Python client (`tests/python/`, written from protocol.md alone) against a real `kvd`.
//!
//! Starts `kvd --listen 127.0.0.1:PORT --data DIR --shards 2` on a free port, and a second node
//! with `--client-token` for the handshake tests (the shared
//! `common::Node` waits, with a deadline, until it answers PING, and kills it by PID on drop),
//! runs `python3 tests/python/test_client.py 127.0.0.1:PORT`, and asserts that every Python test
//! passed and that the node still serves afterwards. A second test starts a 4-node cluster
//! (N = 2) and runs `tests/python/test_ring.py`, which routes by the ring map and checks that
//! at least 99% of its requests reach an owner of their key. A third starts a 3-node cluster
//! with `--conflicts siblings` (N = 3) and runs `tests/python/test_siblings.py`: blind writes
//! through two nodes are both kept, a plain GET answers SIBLINGS, writes and deletes with a
//! causal context supersede exactly what their read saw. Skipped, with a message, only when
//! `python3` is not installed.

mod common;

use common::{free_port, temp_dir, wait_for, Node, READY_TIMEOUT};
use dkv::client::Client;
use dkv::protocol::Role;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The client token of the second node, which gets the handshake tests.
const CLIENT_TOKEN: &str = "py-client-token";

/// How long the whole Python test may run (each of its waits has its own 10 s socket timeout).
const PYTHON_TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// A child process killed by its PID (through `Child::kill`) and reaped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn python3_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Start a node with `--client-token` and wait until it answers PING after a HELLO with the
/// token. (`common::Node` cannot: its readiness probe says HELLO without a token.)
fn start_token_node(data: &Path) -> (Process, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let log = File::create(data.with_extension("log")).expect("create the node's log file");
    let child = Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args([
            "--listen",
            &addr,
            "--shards",
            "2",
            "--client-token",
            CLIENT_TOKEN,
        ])
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file handle"))
        .stderr(log)
        .spawn()
        .expect("spawn kvd");
    let mut node = Process(child);
    wait_for(
        READY_TIMEOUT,
        "kvd with a client token to answer PING",
        || {
            if let Ok(Some(status)) = node.0.try_wait() {
                panic!("kvd with a client token exited during start-up with {status}");
            }
            let mut c =
                Client::connect_as(addr.as_str(), Role::Client, 0, CLIENT_TOKEN.as_bytes()).ok()?;
            c.ping().ok()
        },
    );
    (node, addr)
}

#[test]
fn python_client_against_a_real_node() {
    if !python3_available() {
        eprintln!("SKIPPED python_client_against_a_real_node: python3 is not installed");
        return;
    }
    let data = temp_dir("python-client");
    let node = Node::start(&data, &["--shards", "2"]);
    let token_data = temp_dir("python-client-token");
    let (token_node, token_addr) = start_token_node(&token_data);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_client.py");
    let out_path = data.with_extension("python.out");
    let out = File::create(&out_path).expect("create the Python output file");
    let child = Command::new("python3")
        .arg(&script)
        .arg(&node.addr)
        .arg(&token_addr)
        .arg(CLIENT_TOKEN)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the output file handle"))
        .stderr(out)
        .spawn()
        .expect("spawn python3");
    let mut python = Process(child);
    let status = wait_for(
        PYTHON_TEST_TIMEOUT,
        "python3 test_client.py to finish",
        || python.0.try_wait().expect("poll python3"),
    );
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!("{output}");

    // The node survived everything the Python test threw at it.
    let mut c = node.client();
    c.ping()
        .expect("kvd still answers PING after the Python test");

    assert!(
        status.success(),
        "python3 test_client.py {} failed ({status}):\n{output}\nkvd log:\n{}",
        node.addr,
        node.log()
    );
    assert!(
        output.contains(" passed, 0 failed"),
        "no clean summary line:\n{output}"
    );
    drop(node);
    drop(token_node);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&token_data);
    let _ = std::fs::remove_file(token_data.with_extension("log"));
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(data.with_extension("log"));
}

/// Nodes of the ring-routing test's cluster, and its N: below the node count, so that each
/// node owns only part of the keys and routing to an owner means something.
const RING_TEST_NODES: usize = 4;
const RING_TEST_REPLICAS: &str = "2";

/// Run `script` with `args` under python3, wait for it, and return (success, output).
fn run_python(script: &str, args: &[String], out_path: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = File::create(out_path).expect("create the Python output file");
    let child = Command::new("python3")
        .arg(&script)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the output file handle"))
        .stderr(out)
        .spawn()
        .expect("spawn python3");
    let mut python = Process(child);
    let status = wait_for(PYTHON_TEST_TIMEOUT, "python3 to finish", || {
        python.0.try_wait().expect("poll python3")
    });
    let output = std::fs::read_to_string(out_path).unwrap_or_default();
    (status.success(), output)
}

#[test]
fn python_client_routes_by_the_ring() {
    if !python3_available() {
        eprintln!("SKIPPED python_client_routes_by_the_ring: python3 is not installed");
        return;
    }
    let replicas: usize = RING_TEST_REPLICAS.parse().expect("a number");
    let nodes = common::start_nodes("python-ring", &[2; RING_TEST_NODES], replicas, &[]);
    let dir = temp_dir("python-ring-out");

    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let out_path = dir.with_extension("python.out");
    let (ok, output) = run_python("tests/python/test_ring.py", &addrs, &out_path);
    println!("{output}");
    let logs: Vec<String> = nodes.iter().map(Node::log).collect();
    assert!(
        ok && output.contains(" passed, 0 failed"),
        "python3 test_ring.py failed:\n{output}\nkvd logs:\n{}",
        logs.join("\n----\n")
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&out_path);
}

#[test]
fn python_client_in_siblings_mode() {
    if !python3_available() {
        eprintln!("SKIPPED python_client_in_siblings_mode: python3 is not installed");
        return;
    }
    let nodes = common::start_nodes(
        "python-siblings",
        &[2; 3],
        3,
        &["--conflicts", "siblings", "--gossip-interval-ms", "50"],
    );
    let dir = temp_dir("python-siblings-out");
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let out_path = dir.with_extension("python.out");
    let (ok, output) = run_python("tests/python/test_siblings.py", &addrs, &out_path);
    println!("{output}");
    let logs: Vec<String> = nodes.iter().map(Node::log).collect();
    assert!(
        ok && output.contains(" passed, 0 failed"),
        "python3 test_siblings.py failed:\n{output}\nkvd logs:\n{}",
        logs.join("\n----\n")
    );
    for n in &nodes {
        n.client()
            .ping()
            .expect("every node still answers after the Python test");
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&out_path);
}
