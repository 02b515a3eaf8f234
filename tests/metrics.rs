//! Prometheus metrics against real processes: a 3-node cluster started with
//! `--metrics-listen`, a client writing and reading through it, and a real Prometheus server
//! (Debian's `prometheus` package, installed with apt-get when missing) scraping all three.
//!
//! * `promtool check metrics` finds no problem in any node's `/metrics`.
//! * Through Prometheus' HTTP API: a rate of `dkv_requests_total` above zero, and a p99 from
//!   the `dkv_request_duration_seconds` histogram.
//! * The listener answers 404 off `/metrics`, 405 to other methods, and a request head over
//!   its limit gets 431 while the node keeps serving.

mod common;

use common::{debian_program, free_port, temp_dir, wait_for, Node};
use dkv::protocol::Consistency;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest the client load runs (it stops once Prometheus has what the test reads).
const LOAD_TIME_MAX: Duration = Duration::from_secs(120);
/// How long Prometheus gets to scrape and answer.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(90);

/// One HTTP/1.0 request to 127.0.0.1:`port`: (status code, body).
fn http(port: u16, request: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
    )
}

/// Percent-encode a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The first sample value of an instant query's answer, if it has one.
fn query(port: u16, q: &str) -> Option<f64> {
    let (status, body) = get(port, &format!("/api/v1/query?query={}", encode(q)))?;
    if status != 200 {
        return None;
    }
    // {"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[T,"V"]}]}}
    let after = body.split("\"value\":[").nth(1)?;
    let v = after.split('"').nth(1)?;
    v.parse().ok()
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_a_cluster_under_load() {
    let prometheus = debian_program("prometheus", "prometheus");
    let promtool = debian_program("prometheus", "promtool");
    let (nodes, metrics) = common::start_three_nodes_with_http("metrics");

    // Load through node 1 until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut c = nodes[0].client();
        std::thread::spawn(move || {
            let started = Instant::now();
            let (mut n, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_TIME_MAX {
                let key = format!("k{}", n % 500);
                // Errors are counted, not fatal: a failed assertion ends the test and its
                // nodes while this thread still runs.
                let put = c.put(key.as_bytes(), b"value", 0, Consistency::Quorum);
                let get = c.get(key.as_bytes(), Consistency::Quorum);
                failed += u64::from(put.is_err()) + u64::from(get.is_err());
                n += 1;
            }
            (n, failed)
        })
    };

    // Each node's text passes promtool's checks.
    for &port in &metrics {
        let text = wait_for(Duration::from_secs(10), "a /metrics answer", || {
            get(port, "/metrics")
                .filter(|(s, body)| *s == 200 && body.contains("dkv_requests_total"))
        })
        .1;
        let out = common::run_with_input(Command::new(&promtool).args(["check", "metrics"]), &text);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics: {said}\n{text}"
        );
    }

    // A real Prometheus scraping the three nodes every second.
    let prom_port = free_port();
    let pdir = temp_dir("metrics-prometheus");
    std::fs::create_dir_all(&pdir).expect("prometheus dir");
    let targets: Vec<String> = metrics.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dkv\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(pdir.join("prometheus.yml"), config).expect("write config");
    let log = std::fs::File::create(pdir.join("log")).expect("log file");
    let _prom = Prometheus(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                pdir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                pdir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    wait_for(PROMETHEUS_TIMEOUT, "Prometheus ready", || {
        get(prom_port, "/-/ready").filter(|(s, _)| *s == 200)
    });
    let rate = wait_for(PROMETHEUS_TIMEOUT, "a request rate in Prometheus", || {
        query(prom_port, "sum(rate(dkv_requests_total[5s]))").filter(|&r| r > 0.0)
    });
    let p99 = wait_for(PROMETHEUS_TIMEOUT, "a p99 from the histogram", || {
        query(
            prom_port,
            "histogram_quantile(0.99, sum by (le) (rate(dkv_request_duration_seconds_bucket{op=\"put\"}[5s])))",
        )
        .filter(|v| v.is_finite() && *v > 0.0)
    });
    let up = query(prom_port, "sum(up{job=\"dkv\"})").expect("up");
    stop.store(true, Ordering::Relaxed);
    let (ops, failed) = load.join().expect("load thread");
    eprintln!("rate {rate:.0} req/s, put p99 {p99:.6} s, {ops} PUT+GET pairs, {up} targets up");
    assert_eq!(failed, 0, "requests failed under a healthy cluster");
    assert_eq!(up, 3.0, "every node scraped");
    assert!(p99 < 10.0, "a p99 of {p99} s is not a latency");
}

#[test]
fn the_listener_serves_only_metrics_and_bounds_requests() {
    let dir = temp_dir("metrics-listener");
    let metrics = free_port();
    let listen = format!("127.0.0.1:{metrics}");
    let node = Node::start(&dir, &["--metrics-listen", &listen]);
    let (status, body) = get(metrics, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE dkv_uptime_seconds gauge"), "{body}");
    assert_eq!(get(metrics, "/").expect("404").0, 404);
    assert_eq!(
        http(metrics, "POST /metrics HTTP/1.0\r\n\r\n")
            .expect("405")
            .0,
        405
    );
    let huge = format!("GET /metrics HTTP/1.0\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http(metrics, &huge).map(|r| r.0), Some(431));
    assert_eq!(get(metrics, "/metrics").expect("still serving").0, 200);
    node.client().ping().expect("the node still serves clients");
}
