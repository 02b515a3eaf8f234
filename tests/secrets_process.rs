//! Secrets on real `kvd` processes (127.0.0.1 only): where the cluster secret and the client
//! token come from, that peers never put the secret on the wire (a recording proxy between
//! the nodes), that a node with another secret is refused and does not join, that failed
//! handshakes from one address are throttled, and the warning for a node listening beyond
//! loopback without a client token.
//!
//! Every wait is a poll with a deadline; every process is killed by its own PID on drop.

mod common;

use common::{free_port, temp_dir, wait_for};
use dkv::client::{Client, ClientError};
use dkv::limits::{HANDSHAKE_FAILURES_FREE, HANDSHAKE_PENALTY_MS_MIN};
use dkv::protocol::{Consistency, Request, Role, Status, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// One kvd process started with exactly the given arguments and extra environment.
struct Proc {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Proc {
    /// Start kvd and wait until `ready_addr` answers PING.
    fn start(name: &Path, ready_addr: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::start_with_token(name, ready_addr, args, env, b"")
    }

    /// The same for a node with a client token: the readiness poll presents `token`.
    fn start_with_token(
        name: &Path,
        ready_addr: &str,
        args: &[&str],
        env: &[(&str, &str)],
        token: &[u8],
    ) -> Proc {
        let log = name.with_extension("log");
        let out = std::fs::File::create(&log).expect("create log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvd"));
        cmd.args(args)
            .env_remove("DKV_CLUSTER_SECRET")
            .env_remove("DKV_CLIENT_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn kvd");
        let mut p = Proc {
            child,
            addr: ready_addr.to_string(),
            log,
        };
        let addr = p.addr.clone();
        wait_for(DEADLINE, &format!("kvd on {addr} to answer PING"), || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("kvd on {addr} exited with {st}: {}", p.log_text());
            }
            Client::connect_as(addr.as_str(), Role::Client, 0, token)
                .ok()?
                .ping()
                .ok()
        });
        p
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(id, state, incarnation)` per line of CLUSTER.
    fn view(&self) -> Option<Vec<(u32, String, u64)>> {
        let text = Client::connect(self.addr.as_str()).ok()?.cluster().ok()?;
        text.lines()
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Some((
                    w[0].parse().ok()?,
                    w.get(2)?.to_string(),
                    w.get(3)?.parse().ok()?,
                ))
            })
            .collect()
    }

    /// Wait until this node has heard from `alive` (alive, incarnation known) and sees
    /// `failed` as failed.
    fn wait_view(&self, alive: &[u32], failed: &[u32]) {
        wait_for(
            DEADLINE,
            &format!("{} to see alive {alive:?}, failed {failed:?}", self.addr),
            || {
                let v = self.view()?;
                let ok = v.iter().all(|(id, state, inc)| {
                    (alive.contains(id) && state == "alive" && *inc != 0)
                        || (failed.contains(id) && state == "failed")
                });
                (ok && v.len() == alive.len() + failed.len()).then_some(())
            },
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write `content` to a file only this user can read.
fn secret_file(dir: &Path, name: &str, content: &str) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .expect("create secret file");
    f.write_all(content.as_bytes()).expect("write secret file");
    path.to_string_lossy().into_owned()
}

/// `--nodes` for ids 1..=n where node `i` is reached at `ports[i - 1]`.
fn node_list(ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// kvd's stderr when it must refuse to start.
fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvd"));
    cmd.args(args)
        .env_remove("DKV_CLUSTER_SECRET")
        .env_remove("DKV_CLIENT_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run kvd");
    assert!(!out.status.success(), "kvd {args:?} {env:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn each_secret_comes_from_exactly_one_source() {
    let dir = temp_dir("secret-sources");
    let good = secret_file(&dir, "good", "a-long-enough-secret\n");
    let empty = secret_file(&dir, "empty", "\n");
    let missing = dir.join("missing").to_string_lossy().into_owned();
    let list = "1=127.0.0.1:1,2=127.0.0.1:2";
    let cluster = |more: &[&str]| -> Vec<String> {
        let mut a = vec!["--id", "1", "--nodes", list, "--data"];
        let data = dir.join("data");
        let data = data.to_str().unwrap().to_string();
        let mut v: Vec<String> = a.drain(..).map(String::from).collect();
        v.push(data);
        v.extend(more.iter().map(|s| s.to_string()));
        v
    };
    let run = |more: &[&str], env: &[(&str, &str)]| {
        let args = cluster(more);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused_start(&args, env)
    };
    let e = run(
        &["--cluster-secret", "x", "--cluster-secret-file", &good],
        &[],
    );
    assert!(
        e.contains("--cluster-secret and --cluster-secret-file given"),
        "{e}"
    );
    let e = run(
        &["--cluster-secret-file", &good],
        &[("DKV_CLUSTER_SECRET", "y")],
    );
    assert!(e.contains("DKV_CLUSTER_SECRET"), "{e}");
    let e = run(&["--cluster-secret-file", &empty], &[]);
    assert!(e.contains("is empty"), "{e}");
    let e = run(&["--cluster-secret-file", &missing], &[]);
    assert!(e.contains(&missing), "{e}");
    let e = run(&[], &[("DKV_CLUSTER_SECRET", "")]);
    assert!(e.contains("must not be empty"), "{e}");
    let e = run(&[], &[]);
    assert!(e.contains("--cluster-secret-file"), "{e}");
    // The client token the same way.
    let e = refused_start(&["--client-token-file", &good, "--client-token", "t"], &[]);
    assert!(e.contains("--client-token and --client-token-file"), "{e}");
    let e = refused_start(
        &["--client-token-file", &empty],
        &[("DKV_CLIENT_TOKEN", "t")],
    );
    assert!(e.contains("DKV_CLIENT_TOKEN"), "{e}");
}

/// Nodes 1 and 2 read the secret from a file ending in a newline, node 3 from the environment
/// without one: they are one cluster, and no process shows the secret in its arguments.
#[test]
fn nodes_given_the_secret_by_file_or_environment_join() {
    let secret = "file-secret-5b1e9d0c7a";
    let dir = temp_dir("secret-file");
    let file = secret_file(&dir, "secret", &format!("{secret}\n"));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let list = node_list(&ports);
    let nodes: Vec<Proc> = (0..3)
        .map(|i| {
            let id = (i + 1).to_string();
            let data = dir.join(format!("node-{id}"));
            let data = data.to_str().unwrap();
            let addr = format!("127.0.0.1:{}", ports[i]);
            let mut args = vec![
                "--id",
                &id,
                "--nodes",
                &list,
                "--data",
                data,
                "--shards",
                "2",
                "--gossip-interval-ms",
                "100",
            ];
            let mut env = Vec::new();
            if i < 2 {
                args.extend(["--cluster-secret-file", &file]);
            } else {
                env.push(("DKV_CLUSTER_SECRET", secret));
            }
            Proc::start(&dir.join(format!("node-{id}")), &addr, &args, &env)
        })
        .collect();
    for n in &nodes {
        n.wait_view(&[1, 2, 3], &[]);
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", n.child.id())).unwrap();
        assert!(
            !cmdline
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the secret is in the command line of {}",
            n.addr
        );
    }
    // A write at ALL reaches every node.
    put_all_reaches_every_node(&nodes, b"k", b"v");
}

/// Node 3 has another secret: nodes 1 and 2 form the cluster, refuse node 3 and log it; node 3
/// logs the refusal and hears from nobody.
#[test]
fn a_node_with_another_secret_is_refused_and_does_not_join() {
    let dir = temp_dir("secret-wrong");
    let right = secret_file(&dir, "right", "the-right-secret-3c8e1f");
    let wrong = secret_file(&dir, "wrong", "not-the-right-secret-77");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let list = node_list(&ports);
    let nodes: Vec<Proc> = (0..3)
        .map(|i| {
            let id = (i + 1).to_string();
            let data = dir.join(format!("node-{id}"));
            let file = if i < 2 { &right } else { &wrong };
            let args = [
                "--id",
                &id,
                "--nodes",
                &list,
                "--data",
                data.to_str().unwrap(),
                "--shards",
                "2",
                "--gossip-interval-ms",
                "100",
                "--failure-threshold",
                "5",
                "--cluster-secret-file",
                file,
            ];
            let addr = format!("127.0.0.1:{}", ports[i]);
            Proc::start(&data, &addr, &args, &[])
        })
        .collect();
    nodes[0].wait_view(&[1, 2], &[3]);
    nodes[1].wait_view(&[1, 2], &[3]);
    nodes[2].wait_view(&[3], &[1, 2]);
    wait_for(DEADLINE, "the refusals in the logs", || {
        let l1 = nodes[0].log_text();
        let l3 = nodes[2].log_text();
        (l1.contains("refused node 3")
            && l1.contains("proof of the cluster secret is wrong")
            && l3.contains("peer handshake with node 1: refused by the peer"))
        .then_some(())
    });
    // Still outside a while later (several gossip rounds and its retries).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let v = nodes[0].view().unwrap();
        assert!(
            v.iter().any(|(id, state, _)| *id == 3 && state == "failed"),
            "{v:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One recorded direction of one proxied connection.
type Recording = Arc<Mutex<Vec<u8>>>;

/// A TCP proxy on 127.0.0.1 that forwards to `to` and records every byte in both directions,
/// one buffer per direction per connection.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<Recording>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(to: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<Recording>>> = Arc::default();
        let (stop2, streams2) = (stop.clone(), streams.clone());
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let (a, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => continue,
                };
                let Ok(b) = TcpStream::connect(to) else {
                    continue;
                };
                a.set_nonblocking(false).unwrap();
                for (from, into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                    let rec: Recording = Arc::default();
                    streams2.lock().unwrap().push(rec.clone());
                    let stop3 = stop2.clone();
                    std::thread::spawn(move || pump(from, into, rec, stop3));
                }
            }
        });
        Proxy {
            port,
            stop,
            streams,
            accept: Some(accept),
        }
    }

    /// Every recorded stream so far.
    fn recorded(&self) -> Vec<Vec<u8>> {
        self.streams
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.lock().unwrap().clone())
            .collect()
    }
}

/// Copy `from` to `into`, recording, until either side closes or the proxy stops.
fn pump(mut from: TcpStream, mut into: TcpStream, rec: Recording, stop: Arc<AtomicBool>) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 16384];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                if into.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let _ = into.shutdown(std::net::Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Every byte between three nodes goes through recording proxies (each node reaches its peers
/// only at proxy addresses): the nodes become alive to each other and replicate, the recording
/// holds their peer handshakes, and the secret is nowhere in it.
#[test]
fn the_secret_is_not_on_the_wire() {
    let secret = "wire-secret-never-sent-0e4d7b";
    let dir = temp_dir("secret-wire");
    let file = secret_file(&dir, "secret", secret);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let proxies: Vec<Proxy> = ports
        .iter()
        .map(|p| Proxy::start(SocketAddr::from(([127, 0, 0, 1], *p))))
        .collect();
    let nodes: Vec<Proc> = (0..3)
        .map(|i| {
            // This node at its own port, the others behind their proxies.
            let seen: Vec<u16> = (0..3)
                .map(|j| if j == i { ports[j] } else { proxies[j].port })
                .collect();
            let list = node_list(&seen);
            let id = (i + 1).to_string();
            let data = dir.join(format!("node-{id}"));
            let args = [
                "--id",
                &id,
                "--nodes",
                &list,
                "--data",
                data.to_str().unwrap(),
                "--shards",
                "2",
                "--gossip-interval-ms",
                "100",
                "--cluster-secret-file",
                &file,
            ];
            Proc::start(&data, &format!("127.0.0.1:{}", ports[i]), &args, &[])
        })
        .collect();
    for n in &nodes {
        n.wait_view(&[1, 2, 3], &[]);
    }
    put_all_reaches_every_node(&nodes, b"over the wire", b"value");
    let mut streams = Vec::new();
    for p in &proxies {
        streams.extend(p.recorded());
    }
    // The recording is of real peer traffic: peer HELLOs (op 0x01, version 3, role 2) opening
    // connections, and the PEER_AUTH frames that follow them. Links open when a shard first
    // sends to a node (gossip goes from each node's membership shard alone): at least one per
    // node by now.
    let peer_hellos = streams
        .iter()
        .filter(|s| s.len() >= 13 && s[4] == 0x01 && s[10..13] == [0, 3, 2])
        .count();
    assert!(
        peer_hellos >= 3,
        "{peer_hellos} peer HELLOs in {} streams",
        streams.len()
    );
    let bytes: usize = streams.iter().map(Vec::len).sum();
    assert!(
        streams.iter().any(|s| s.windows(5).any(|w| w == b"value")),
        "the replicated value is in the recording ({bytes} bytes)"
    );
    for s in &streams {
        assert!(
            !s.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret crossed the wire"
        );
    }
    println!(
        "recorded {} streams, {bytes} bytes, {peer_hellos} peer handshakes; secret absent",
        streams.len()
    );
}

/// A connection from 127.0.0.2 (still loopback), so the throttled address is not the one the
/// test reads STATS from.
fn connect_from_127_0_0_2(to: &str) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())?;
    let to: SocketAddr = to.parse().expect("an address");
    sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(sock.into())
}

/// One client HELLO with `token` from 127.0.0.2: the reply's status and message, and whether
/// the node closed the connection afterwards.
fn hello_from_127_0_0_2(addr: &str, token: &[u8]) -> (Status, String, bool) {
    let stream = connect_from_127_0_0_2(addr).expect("connect from 127.0.0.2");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut c = Client::from_stream(stream);
    let r = c
        .call(&Request::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id: 0,
            token,
        })
        .expect("a HELLO reply");
    let closed = matches!(c.ping(), Err(ClientError::Io(_)));
    (r.status().unwrap(), r.text(), closed)
}

fn stat(addr: &str, token: &[u8], name: &str) -> u64 {
    let mut c = Client::connect_as(addr, Role::Client, 0, token).expect("HELLO from 127.0.0.1");
    let text = c.stats().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in STATS"))
}

/// Wrong client tokens as fast as one connection after another goes: the node examines the
/// free ones and then one per doubling pause; the rest are refused unexamined, each closed.
/// Another address is not slowed down, and after the pause the right token works.
#[test]
fn wrong_tokens_from_one_address_are_throttled() {
    const ATTEMPTS: usize = 60;
    let dir = temp_dir("secret-throttle");
    let token = "client-token-a91f";
    let file = secret_file(&dir, "token", token);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let data = dir.join("node");
    let node = Proc::start_with_token(
        &data,
        &addr,
        &[
            "--listen",
            &addr,
            "--data",
            data.to_str().unwrap(),
            "--shards",
            "2",
            "--client-token-file",
            &file,
        ],
        &[],
        token.as_bytes(),
    );
    let (mut examined, mut refused) = (0u64, 0u64);
    let mut last_wait_ms = 0u64;
    let start = Instant::now();
    for _ in 0..ATTEMPTS {
        let (status, msg, closed) = hello_from_127_0_0_2(&node.addr, b"a wrong guess");
        assert_eq!(status, Status::Unauthorized, "{msg}");
        assert!(closed, "the connection is closed after a failed HELLO");
        if msg.contains("bad token") {
            examined += 1;
        } else if let Some(ms) = msg
            .rsplit("retry in ")
            .next()
            .and_then(|t| t.strip_suffix(" ms"))
            .and_then(|n| n.parse().ok())
        {
            refused += 1;
            last_wait_ms = ms;
        } else {
            panic!("unexpected refusal: {msg}");
        }
    }
    let elapsed_ms = start.elapsed().as_millis() as u64;
    // Pauses of MIN, 2 MIN, 4 MIN... after the free failures: within `elapsed` at most
    // log2(elapsed / MIN + 1) of them can have ended, each letting one guess be examined.
    let pauses_over = (elapsed_ms / HANDSHAKE_PENALTY_MS_MIN + 1).ilog2() as u64;
    let bound = u64::from(HANDSHAKE_FAILURES_FREE) + 1 + pauses_over;
    println!(
        "{ATTEMPTS} wrong tokens in {elapsed_ms} ms: {examined} examined, {refused} refused unexamined (bound {bound})"
    );
    assert!(
        examined > u64::from(HANDSHAKE_FAILURES_FREE),
        "the free failures are examined"
    );
    assert!(examined <= bound, "{examined} examined, at most {bound}");
    assert_eq!(examined + refused, ATTEMPTS as u64);
    // The node's own counts agree; 127.0.0.1 is not slowed down by 127.0.0.2's failures.
    assert_eq!(
        stat(&node.addr, token.as_bytes(), "handshake_failures"),
        examined
    );
    assert_eq!(
        stat(&node.addr, token.as_bytes(), "handshakes_throttled"),
        refused
    );
    // After the pause the node tells of, the right token from 127.0.0.2 is accepted.
    if refused > 0 {
        std::thread::sleep(Duration::from_millis(last_wait_ms));
    }
    let (status, msg, _) = wait_for(DEADLINE, "the pause to end", || {
        let r = hello_from_127_0_0_2(&node.addr, token.as_bytes());
        (r.0 == Status::Ok).then_some(r)
    });
    assert_eq!(status, Status::Ok, "{msg}");
}

/// Listening on every interface without a client token draws a warning; with a token, or on
/// loopback, it does not.
#[test]
fn listening_beyond_loopback_without_a_token_warns() {
    let dir = temp_dir("secret-listen");
    let token_text = "listen-token-1234";
    let token = secret_file(&dir, "token", token_text);
    let warning = "beyond loopback, without a client token";
    let cases: [(&str, bool, bool); 3] = [
        ("0.0.0.0", false, true),
        ("0.0.0.0", true, false),
        ("127.0.0.1", false, false),
    ];
    for (i, (ip, with_token, warns)) in cases.into_iter().enumerate() {
        let port = free_port();
        let listen = format!("{ip}:{port}");
        let data = dir.join(format!("node-{i}"));
        let mut args = vec!["--listen", &listen, "--data", data.to_str().unwrap()];
        if with_token {
            args.extend(["--client-token-file", &token]);
        }
        let node = Proc::start_with_token(
            &data,
            &format!("127.0.0.1:{port}"),
            &args,
            &[],
            token_text.as_bytes(),
        );
        assert_eq!(
            node.log_text().contains(warning),
            warns,
            "{listen} token={with_token}: {}",
            node.log_text()
        );
    }
}

/// A PUT at ALL through the first node succeeds (retried while the links come up), and every
/// node then holds the value locally with its version.
fn put_all_reaches_every_node(nodes: &[Proc], key: &[u8], value: &[u8]) {
    let v = wait_for(DEADLINE, "a PUT at ALL", || {
        Client::connect(nodes[0].addr.as_str())
            .ok()?
            .put(key, value, 0, Consistency::All)
            .ok()
    });
    for n in nodes {
        let got = Client::connect(n.addr.as_str())
            .unwrap()
            .local_get(key)
            .unwrap();
        assert_eq!(got, Some((v, value.to_vec())), "node {}", n.addr);
    }
}
