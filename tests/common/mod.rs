//! Helpers for tests that run real `kvd` processes on 127.0.0.1: free ports, temporary data
//! directories, start with a readiness poll (never a fixed sleep), and kill by PID on drop.
#![allow(dead_code)]

use dkv::client::Client;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a node may take to answer its first PING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

static DIR_SEQ: AtomicU32 = AtomicU32::new(0);

/// A port that was free a moment ago (bound to port 0 and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on loopback")
}

/// A fresh, empty directory for one test's data.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dkv-test-{name}-{}-{}",
        std::process::id(),
        DIR_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// One running kvd process.
pub struct Node {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its data directory.
    pub data: PathBuf,
    /// The extra arguments it was started with (for restarts).
    pub args: Vec<String>,
    /// Extra environment variables of the process (e.g. libfaketime's), kept for restarts.
    pub env: Vec<(String, String)>,
}

impl Node {
    /// Start `kvd --listen 127.0.0.1:PORT --data DATA <args>` on a free port and wait until it
    /// answers PING.
    pub fn start(data: &Path, args: &[&str]) -> Node {
        Node::start_on(free_port(), data, args)
    }

    /// Start on a given port.
    pub fn start_on(port: u16, data: &Path, args: &[&str]) -> Node {
        Node::start_with_env(port, data, args, &[])
    }

    /// Start on a given port with extra environment variables.
    pub fn start_with_env(port: u16, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
        let mut node = Node {
            child: None,
            addr: format!("127.0.0.1:{port}"),
            data: data.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        node.spawn();
        node.wait_ready();
        node
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))
            .expect("open node log");
        let child = Command::new(env!("CARGO_BIN_EXE_kvd"))
            .arg("--listen")
            .arg(&self.addr)
            .arg("--data")
            .arg(&self.data)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn kvd");
        self.child = Some(child);
    }

    /// Wait until the node answers PING (or, having a client token, refuses the HELLO).
    pub fn wait_ready(&mut self) {
        let addr = self.addr.clone();
        wait_for(
            READY_TIMEOUT,
            &format!("kvd on {addr} to answer PING"),
            || {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!(
                        "kvd on {addr} exited during start-up with {status}; log: {}",
                        self.log()
                    );
                }
                match Client::connect(addr.as_str()) {
                    Ok(mut c) => c.ping().ok(),
                    // A node with a client token refuses the empty one: it is up.
                    Err(e) if e.status() == Some(dkv::protocol::Status::Unauthorized) => Some(()),
                    Err(_) => None,
                }
            },
        );
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// PID of the running process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    /// A connected client.
    pub fn client(&self) -> Client {
        Client::connect(self.addr.as_str()).expect("connect to node")
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send a signal to the process (SIGSTOP, SIGCONT, SIGTERM...).
    pub fn signal(&self, sig: i32) {
        let pid = self.pid() as i32;
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill({pid}, {sig})");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("node is running");
        wait_for(Duration::from_secs(20), "kvd to exit after SIGTERM", || {
            child.try_wait().ok().flatten()
        })
    }

    /// Start again with the same port, data and arguments.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running node");
        self.spawn();
        self.wait_ready();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: a stopped process must be continued before it can die of SIGKILL
            // promptly; the PID is our own unreaped child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `cmd` with `input` on its stdin; what it printed and how it exited.
pub fn run_with_input(cmd: &mut Command, input: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("write the input of {cmd:?}: {e}"));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("output of {cmd:?}: {e}"))
}

/// Start kvbench `--check` against `target` (QUORUM, get=50,put=40,del=10, its JSON report on
/// stdout, progress on stderr), with `args` for the rest (connections, pipeline, how long,
/// keys, ...).
pub fn spawn_kvbench_check(target: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args(["--target", target])
        .args(args)
        .args([
            "--mix",
            "get=50,put=40,del=10",
            "--consistency",
            "QUORUM",
            "--check",
            "--json",
            "--quiet",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvbench")
}

/// Run kvcat against `addr` with `input` on stdin; its stdout.
pub fn kvcat(addr: &str, input: &str) -> String {
    let out = run_with_input(Command::new(env!("CARGO_BIN_EXE_kvcat")).arg(addr), input);
    assert!(
        out.status.success(),
        "kvcat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kvcat prints UTF-8")
}

/// The path of libfaketime (Debian package `faketime`), installing the package when it is
/// missing (see [`debian_package`]).
pub fn libfaketime() -> PathBuf {
    debian_package("faketime", || {
        let mut dirs = vec![PathBuf::from("/usr/lib/faketime")];
        if let Ok(rd) = std::fs::read_dir("/usr/lib") {
            // Multiarch directories: /usr/lib/x86_64-linux-gnu/faketime, ...
            dirs.extend(rd.flatten().map(|e| e.path().join("faketime")));
        }
        dirs.into_iter()
            .map(|d| d.join("libfaketime.so.1"))
            .find(|p| p.exists())
    })
}

/// The path of a program from a Debian package (`/usr/bin/NAME`), installing the package
/// when it is missing (see [`debian_package`]).
pub fn debian_program(package: &str, name: &str) -> PathBuf {
    debian_package(package, || {
        let p = PathBuf::from("/usr/bin").join(name);
        p.exists().then_some(p)
    })
}

/// What `find` finds, installing Debian's `package` with apt-get first when it finds nothing
/// (tests run as root on the development machines and in CI). Test binaries run in parallel,
/// so installs are serialised by an exclusive lock on a file in the temp directory, and
/// `find` is tried again once the lock is held.
pub fn debian_package(package: &str, find: impl Fn() -> Option<PathBuf>) -> PathBuf {
    if let Some(p) = find() {
        return p;
    }
    let lock_path = std::env::temp_dir().join("dkv-test-apt.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open the apt lock file");
    lock.lock().expect("lock the apt lock file");
    if let Some(p) = find() {
        return p;
    }
    let run = |args: &[&str]| {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run apt-get (the {package} package is needed): {e}"));
        assert!(
            out.status.success(),
            "apt-get {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["update", "-q"]);
    run(&["install", "-y", "-q", "--no-install-recommends", package]);
    let p = find().unwrap_or_else(|| panic!("nothing found after installing {package}"));
    drop(lock);
    p
}

/// Raise this test process's open-file limit (for tests that open thousands of sockets).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with pointers to locals.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// The `--nodes` list of nodes 1, 2, ... on these loopback ports.
pub fn node_list(ports: &[u16]) -> String {
    let list: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    list.join(",")
}

/// The command line of node `id` of a test cluster: the node list, N=3, the test secret,
/// `shards` shards, then `extra`.
pub fn cluster_args(id: usize, list: &str, shards: usize, extra: &[&str]) -> Vec<String> {
    cluster_args_n(id, list, 3, shards, extra)
}

/// The command line of node `id` joining a test cluster through `seed` (`--join`, the test
/// secret, 2 shards, gossip every 50 ms); `--listen` and `--data` are added by [`Node`].
pub fn join_args(id: u32, seed: &str) -> Vec<String> {
    [
        "--id",
        &id.to_string(),
        "--join",
        seed,
        "--cluster-secret",
        "test-secret",
        "--shards",
        "2",
        "--gossip-interval-ms",
        "50",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// [`cluster_args`] with `replicas` copies of each key.
pub fn cluster_args_n(
    id: usize,
    list: &str,
    replicas: usize,
    shards: usize,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--id",
        &id.to_string(),
        "--nodes",
        list,
        "--replicas",
        &replicas.to_string(),
        "--cluster-secret",
        "test-secret",
        "--shards",
        &shards.to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Start a 3-node cluster (N=3, 2 shards each, a test secret) on free loopback ports: node `i`
/// (1-based) is `nodes[i - 1]`. `args` are added to every node's command line (gossip, timeouts,
/// switches). Returns once every node answers PING and every shard has measured its clock
/// against its peers (until then a node refuses writes with CLOCK_OFFSET, see
/// [`wait_clocks_measured`]); waiting for membership is the caller's.
pub fn start_three_nodes(name: &str, args: &[&str]) -> Vec<Node> {
    start_nodes(name, &[2, 2, 2], 3, args)
}

/// Start a 3-node cluster (N=3, 2 shards each, gossip every 50 ms) whose nodes also serve
/// HTTP (`--metrics-listen`: /metrics and /kv/KEY), each on a free loopback port of its own.
/// Returns the nodes and their HTTP ports, once every node has measured its clock.
pub fn start_three_nodes_with_http(name: &str) -> (Vec<Node>, Vec<u16>) {
    let dir = temp_dir(name);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let list = node_list(&ports);
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", http[i]);
            let args = cluster_args(
                i + 1,
                &list,
                2,
                &["--gossip-interval-ms", "50", "--metrics-listen", &listen],
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Node::start_on(ports[i], &dir.join(format!("node-{}", i + 1)), &args)
        })
        .collect();
    nodes.iter().for_each(wait_clocks_measured);
    (nodes, http)
}

/// Start a cluster of `shards.len()` nodes, node `i` (1-based) with `shards[i - 1]` shards,
/// `replicas` copies of each key and the test secret, on free loopback ports; `args` are added
/// to every node's command line. Returns once every node answers PING and has measured its
/// clock on every shard; waiting for membership is the caller's.
pub fn start_nodes(name: &str, shards: &[usize], replicas: usize, args: &[&str]) -> Vec<Node> {
    let ports: Vec<u16> = shards.iter().map(|_| free_port()).collect();
    let list = node_list(&ports);
    let dir = temp_dir(name);
    (0..shards.len())
        .map(|i| {
            let all = cluster_args_n(i + 1, &list, replicas, shards[i], args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            Node::start_on(ports[i], &dir.join(format!("node-{}", i + 1)), &all)
        })
        .collect::<Vec<Node>>()
        .into_iter()
        .inspect(wait_clocks_measured)
        .collect()
}

/// Wait until no shard of `node` refuses writes for its clock (`clock_shards_refusing 0` in
/// STATS): a node coordinates writes only once it has measured its clock against every live
/// peer, a gossip round trip or a few after it (or a peer) starts.
pub fn wait_clocks_measured(node: &Node) {
    wait_for(
        READY_TIMEOUT,
        &format!(
            "kvd on {} to measure its clock against its peers",
            node.addr
        ),
        || {
            // Every shard must have published that it accepts writes: a shard that has not
            // published yet adds nothing to `clock_shards_refusing` either.
            let stats = node.client().stats().ok()?;
            let value = |name: &str| {
                stats
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
            };
            (value("clock_shards_refusing")? == 0
                && value("clock_shards_accepting")? == value("shards")?)
            .then_some(())
        },
    );
}

/// A STATS figure of `node` (summed over its shards by the node); panics if it is missing.
pub fn stat(node: &Node, name: &str) -> u64 {
    let text = node.client().stats().expect("STATS");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in STATS of {}: {text}", node.addr))
}

/// Wait up to `timeout` until `node`'s CLUSTER lists `total` nodes, exactly those in `alive`
/// as alive (with a heartbeat heard), the others not.
pub fn wait_alive(node: &Node, total: usize, alive: &[u32], timeout: Duration) {
    wait_for(
        timeout,
        &format!("{} to see {alive:?} alive", node.addr),
        || {
            let text = Client::connect(node.addr.as_str()).ok()?.cluster().ok()?;
            let ok = text.lines().count() == total
                && text.lines().all(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    let Some(id) = w.first().and_then(|x| x.parse::<u32>().ok()) else {
                        return false;
                    };
                    w.len() >= 4
                        && (w[2] == "alive") == alive.contains(&id)
                        && (w[2] != "alive" || w[3] != "0")
                });
            ok.then_some(())
        },
    );
}

/// How long a membership change (join, leave, replace, remove) of a small test cluster may
/// take.
pub const RING_CHANGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Wait until every node in `nodes` reports no running change at the same ring version;
/// returns that version.
pub fn wait_settled_ring(nodes: &[&Node]) -> u64 {
    wait_for(
        RING_CHANGE_TIMEOUT,
        "the change to finish on every node",
        || {
            let mut version = None;
            for n in nodes {
                let text = n.client().cluster_admin("PLAN").ok()?;
                let first = text.lines().next()?;
                if !first.contains("change none") {
                    return None;
                }
                let v: u64 = first.split_whitespace().nth(2)?.parse().ok()?;
                if version.is_some_and(|x| x != v) {
                    return None;
                }
                version = Some(v);
            }
            version
        },
    )
}

/// Wait until node `id` is listed in the ring map of `node` (admitted).
pub fn wait_admitted(node: &Node, id: u32) {
    wait_for(
        RING_CHANGE_TIMEOUT,
        &format!("node {id} to be admitted"),
        || {
            let map = node.client().ring().ok()?;
            map.addrs.iter().any(|(n, _)| *n == id).then_some(())
        },
    );
}

/// Start node `id` joining the cluster through `seed` (and replacing `replace`, if given).
pub fn join(dir: &std::path::Path, id: u32, seed: &str, replace: Option<u32>) -> Node {
    let port = free_port();
    let mut args = join_args(id, seed);
    if let Some(old) = replace {
        args.extend(["--replace".to_string(), old.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start_on(port, &dir.join(format!("node-{id}")), &args)
}
