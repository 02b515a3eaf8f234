//! The Python client (`tests/python/`, written from protocol.md alone) against a real `kvd`.
//!
//! Starts `kvd --listen 127.0.0.1:PORT --data DIR --shards 2` on a free port (the shared
//! `common::Node` waits, with a deadline, until it answers PING, and kills it by PID on drop),
//! runs `python3 tests/python/test_client.py 127.0.0.1:PORT`, and asserts that every Python test
//! passed and that the node still serves afterwards. Skipped, with a message, only when
//! `python3` is not installed.

mod common;

use common::{temp_dir, wait_for, Node};
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

#[test]
fn python_client_against_a_real_node() {
    if !python3_available() {
        eprintln!("SKIPPED python_client_against_a_real_node: python3 is not installed");
        return;
    }
    let data = temp_dir("python-client");
    let node = Node::start(&data, &["--shards", "2"]);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_client.py");
    let out_path = data.with_extension("python.out");
    let out = File::create(&out_path).expect("create the Python output file");
    let child = Command::new("python3")
        .arg(&script)
        .arg(&node.addr)
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
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(data.with_extension("log"));
}
