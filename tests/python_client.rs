//! The Python client (`tests/python/`, written from protocol.md alone) against a real `kvd`.
//!
//! Starts `kvd --listen 127.0.0.1:PORT --shards 2` on a free port, waits (with a deadline) until
//! it answers a PING, runs `python3 tests/python/test_client.py 127.0.0.1:PORT`, and asserts
//! that every Python test passed. The node is killed by its PID when the test ends, pass or
//! fail. Skipped, with a message, only when `python3` is not installed.

use dkv::client::Client;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh node may take to answer its first PING.
const NODE_START_TIMEOUT_MS: u64 = 20_000;
/// How long the whole Python test may run (each of its waits has its own 10 s socket timeout).
const PYTHON_TEST_TIMEOUT_MS: u64 = 300_000;
/// Interval between readiness and exit polls.
const POLL_INTERVAL_MS: u64 = 20;
/// Attempts at starting the node on a free port (another process may take the port between
/// our probe and the node's bind).
const START_ATTEMPTS_MAX: usize = 3;

/// A scratch directory for this test run, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("dkv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory in the temp dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its PID, through `Child::kill`) and reaped on drop.
struct Process {
    child: Child,
    what: &'static str,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        eprintln!("{} (pid {}) stopped", self.what, self.child.id());
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

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    l.local_addr().expect("bound socket has an address").port()
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {path:?}: {e})"))
}

/// Start a node and wait until it answers PING; `None` if it exited (port taken, say).
fn start_node(scratch: &Scratch, attempt: usize) -> Option<(Process, String, PathBuf)> {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = scratch.0.join(format!("kvd-{attempt}.log"));
    let data = scratch.0.join(format!("data-{attempt}"));
    std::fs::create_dir_all(&data).expect("create the node's data directory");
    let child = Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args(["--listen", &addr, "--shards", "2", "--data"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(&log).expect("create the node's log file"))
        .stderr(File::create(log.with_extension("err")).expect("create the node's log file"))
        .spawn()
        .expect("spawn kvd");
    let mut node = Process { child, what: "kvd" };
    let deadline = Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
    loop {
        if let Ok(Some(status)) = node.child.try_wait() {
            eprintln!(
                "kvd on {addr} exited early ({status}):\n{}\n{}",
                read_log(&log),
                read_log(&log.with_extension("err"))
            );
            return None;
        }
        if let Ok(mut c) = Client::connect(addr.as_str()) {
            let _ = c.set_timeout(Some(Duration::from_secs(5)));
            if c.ping().is_ok() {
                return Some((node, addr, log));
            }
        }
        assert!(
            Instant::now() < deadline,
            "kvd on {addr} did not answer PING within {NODE_START_TIMEOUT_MS} ms:\n{}\n{}",
            read_log(&log),
            read_log(&log.with_extension("err"))
        );
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

#[test]
fn python_client_against_a_real_node() {
    if !python3_available() {
        eprintln!("SKIPPED python_client_against_a_real_node: python3 is not installed");
        return;
    }
    let scratch = Scratch::new("python-client");
    let (node, addr, log) = (0..START_ATTEMPTS_MAX)
        .find_map(|attempt| start_node(&scratch, attempt))
        .unwrap_or_else(|| panic!("kvd did not start in {START_ATTEMPTS_MAX} attempts"));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_client.py");
    let out_path = scratch.0.join("python.out");
    let out = File::create(&out_path).expect("create the Python output file");
    let child = Command::new("python3")
        .arg(&script)
        .arg(&addr)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the output file handle"))
        .stderr(out)
        .spawn()
        .expect("spawn python3");
    let mut python = Process {
        child,
        what: "python3 test_client.py",
    };
    let deadline = Instant::now() + Duration::from_millis(PYTHON_TEST_TIMEOUT_MS);
    let status = loop {
        if let Some(status) = python.child.try_wait().expect("poll python3") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the Python test ran past {PYTHON_TEST_TIMEOUT_MS} ms:\n{}",
            read_log(&out_path)
        );
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    };
    let output = read_log(&out_path);
    println!("{output}");

    // The node must have survived everything the Python test threw at it.
    let mut c = Client::connect(addr.as_str()).expect("kvd still accepts connections");
    c.ping().expect("kvd still answers PING");
    drop(node);

    assert!(
        status.success(),
        "python3 test_client.py {addr} failed ({status}):\n{output}\nkvd log:\n{}\n{}",
        read_log(&log),
        read_log(&log.with_extension("err"))
    );
    assert!(
        output.contains(" passed, 0 failed"),
        "no clean summary line:\n{output}"
    );
}
