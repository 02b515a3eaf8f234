//! The Docker Compose cluster (Dockerfile, compose.yaml) against real containers: the image
//! built from this test's own `kvd` (tools/docker-dist; the base image made from Debian's
//! packages by tools/docker-base where none can be pulled), three nodes up, a PUT through
//! node 1 read through node 3 from the host, QUORUM still working with node 2 stopped, node 3
//! cut off its network seen failed and, reconnected, catching up on what it missed (LGET),
//! then `down -v`. Everything runs under a project name, network, subnet and host ports of
//! this test's own, and is removed at the end, pass or fail.

mod common;

use common::{free_port, wait_for};
use dkv::client::Client;
use dkv::protocol::Consistency;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to come up, fail a node, see it back.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The test's compose project: its name, its environment, and `down -v` when dropped.
struct Project {
    name: String,
    subnet: String,
    ports: [u16; 3],
    compose: Vec<String>,
}

impl Project {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .args(["-p", &self.name])
            .args(args)
            .current_dir(repo())
            .env("DKV_CLUSTER_SECRET", "docker-test-secret-0123456789")
            .env("DKV_SUBNET", &self.subnet)
            .env("DKV_PORT_1", self.ports[0].to_string())
            .env("DKV_PORT_2", self.ports[1].to_string())
            .env("DKV_PORT_3", self.ports[2].to_string())
            .stdin(Stdio::null());
        c
    }

    fn container(&self, service: &str) -> String {
        let out = run(&mut self.command(&["ps", "-q", service]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn network(&self) -> String {
        let out = run(Command::new("docker").args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
        ]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn addr(&self, node: usize) -> String {
        format!("127.0.0.1:{}", self.ports[node - 1])
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .command(&["down", "-v", "--remove-orphans"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `docker compose` where the plugin exists, else `docker-compose`.
fn compose_command() -> Vec<String> {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// The CLUSTER line of node `id` as `at` sees it.
fn cluster_line(at: &str, id: u32) -> Option<String> {
    let text = Client::connect(at).ok()?.cluster().ok()?;
    text.lines()
        .find(|l| l.split(' ').next() == Some(&id.to_string()))
        .map(str::to_string)
}

#[test]
fn compose_cluster_survives_a_stop_and_a_network_cut() {
    let started = Instant::now();
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs a running Docker Engine (docker info failed)"
    );
    // The image's binaries: this test's own kvd and kvcat.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kvd"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    run(Command::new(repo().join("tools/docker-dist")).env("DKV_DIST_FROM", &bin_dir));
    let pid = std::process::id();
    let project = Project {
        name: format!("dkvtest{pid}"),
        subnet: format!("10.213.{}", pid % 250),
        ports: [free_port(), free_port(), free_port()],
        compose: compose_command(),
    };
    run(&mut project.command(&["up", "-d", "--build"]));
    for node in 1..=3 {
        let addr = project.addr(node);
        wait_for(STEP_TIMEOUT, &format!("node {node} to see 3 alive"), || {
            let text = Client::connect(addr.as_str()).ok()?.cluster().ok()?;
            (text.lines().filter(|l| l.contains(" alive ")).count() == 3).then_some(())
        });
    }
    let up = started.elapsed();

    // PUT through node 1, GET through node 3, from the host.
    let mut n1 = Client::connect(project.addr(1).as_str()).expect("node 1");
    wait_for(STEP_TIMEOUT, "a first QUORUM write", || {
        n1.put(b"greeting", b"hello", 0, Consistency::Quorum).ok()
    });
    let got = Client::connect(project.addr(3).as_str())
        .expect("node 3")
        .get(b"greeting", Consistency::Quorum)
        .expect("GET through node 3");
    assert_eq!(got.map(|(_, v)| v), Some(b"hello".to_vec()));

    // Node 2 stopped: QUORUM still works.
    run(&mut project.command(&["stop", "node2"]));
    n1.put(b"while-2-down", b"x", 0, Consistency::Quorum)
        .expect("QUORUM with one node stopped");
    assert!(n1
        .get(b"while-2-down", Consistency::Quorum)
        .expect("GET")
        .is_some());
    run(&mut project.command(&["start", "node2"]));
    wait_for(STEP_TIMEOUT, "node 2 back", || {
        cluster_line(&project.addr(1), 2).filter(|l| l.contains(" alive "))
    });

    // Node 3 cut off the network: marked failed; writes go on; reconnected, it catches up.
    let (net, node3) = (project.network(), project.container("node3"));
    run(Command::new("docker").args(["network", "disconnect", &net, &node3]));
    wait_for(STEP_TIMEOUT, "node 1 to mark node 3 failed", || {
        cluster_line(&project.addr(1), 3).filter(|l| l.contains(" failed "))
    });
    let mut n1 = Client::connect(project.addr(1).as_str()).expect("node 1");
    n1.put(b"while-3-apart", b"missed", 0, Consistency::Quorum)
        .expect("QUORUM with node 3 cut off");
    run(Command::new("docker").args([
        "network",
        "connect",
        "--ip",
        &format!("{}.13", project.subnet),
        &net,
        &node3,
    ]));
    wait_for(STEP_TIMEOUT, "node 1 to see node 3 alive again", || {
        cluster_line(&project.addr(1), 3).filter(|l| l.contains(" alive "))
    });
    wait_for(STEP_TIMEOUT, "node 3 to hold what it missed (LGET)", || {
        let mut c = Client::connect(project.addr(3).as_str()).ok()?;
        c.local_get(b"while-3-apart").ok()?.map(|(_, v)| v)
    });
    eprintln!(
        "docker test: cluster up in {:.1} s, whole run {:.1} s",
        up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(project);
}
