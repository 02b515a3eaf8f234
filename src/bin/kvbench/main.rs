//! kvbench: one load generator for dkv, Redis and memcached.
//!
//! ```text
//! kvbench --target 127.0.0.1:7379 --connections 50 --pipeline 16 --duration 10 \
//!         --keys 1000000 --value-size 100 --mix get=50,put=50 --preload --json
//! ```
//!
//! Against a dkv cluster, requests are routed by the ring unless `--route none`: kvbench
//! fetches the ring map (RING, protocol.md § 11.1), opens its connections to every ring node
//! and sends each request to an owner of its key (`route.rs`). dkv connections are also
//! shard-aware unless `--no-shard-aware`: kvbench asks each node it connects to its shard
//! count K (HELLO), pins a thread's i-th connection to that node to shard (t + i) mod K by its
//! local port (protocol.md § 11.2), and sends on it only keys that shard owns (`engine.rs`),
//! so no request crosses between the node's shards. With both, a request goes to an owner
//! node on a connection pinned to the key's shard there; against a single node the ring has
//! nothing to route and only the shards count.
//!
//! Against a `--conflicts siblings` cluster (`--conflicts siblings`, or found in the first
//! target's STATS) the dkv workload speaks the causal protocol (protocol.md § 19): GETs return
//! every sibling and a context, and each write is a causal GET followed by a PUT or DELETE
//! with that context, so concurrent writers of a key make siblings, which the report counts
//! (`engine/mod.rs`).
//!
//! A run has up to three phases, each with fresh connections: `--preload` writes every key once;
//! the measured phase runs the workload for `--duration` seconds or `--requests` operations;
//! `--check` then reads every written key back with ALL and judges it (see `check.rs`).
//!
//! Module map:
//!
//! ```text
//! workload  PRNG, key distributions, operation mix, key and value bytes
//! proto     dkv / RESP / memcached request encoders and reply parsers
//! engine    per-thread mio event loop: connections, pipelining, open/closed loop
//! check     acknowledged-write bookkeeping, stale reads, final verdict
//! report    HDR histograms, progress line, human summary, JSON
//! route     --route ring: each request to an owner of its key, by the ring map (RING)
//! ```
//!
//! Exit status: 0 on success, 1 when `--check` found lost writes, 2 on bad options, 3 when no
//! request at all was answered.

mod check;
mod engine;
mod opts;
mod proto;
mod report;
mod route;
mod workload;

use opts::{parse_opts, Opts};

use check::{CheckTable, WRITE_ID_SIZE};
use dkv::limits::{KEY_SIZE_MAX, PORT_DEFAULT, TTL_SECONDS_MAX, VALUE_SIZE_MAX};
use dkv::protocol::Consistency;
use engine::{Config, Pin, Shared, ThreadResult, Work, PIPELINE_MAX};
use getopts::Options;
use proto::{Encoder, Proto};
use report::{human_latency, json_str, percentiles, CheckResult, RunReport, Stats};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::{digits, ycsb, Distribution, KeyChooser, Mix, Op, ValueSize};

/// Most connections one run may open.
const CONNECTIONS_MAX: usize = 100_000;

/// Most threads one run may start.
const THREADS_MAX: usize = 1024;

/// Longest memcached key (its protocol's limit).
const MEMCACHE_KEY_SIZE_MAX: usize = 250;

/// Key indexes a run may insert beyond `--keys` (YCSB D): sizes the key-width check.
const INSERTS_MAX: u64 = 1_000_000_000_000;

/// Default measured duration when neither `--duration` nor `--requests` is given.
const DURATION_S_DEFAULT: f64 = 10.0;

/// Pipeline depth of the preload phase at least, so loading 1M keys takes seconds.
const PRELOAD_PIPELINE_MIN: usize = 32;

/// Main thread's wake-up period while the workers run.
const PROGRESS_TICK: Duration = Duration::from_millis(50);

/// Connections of thread `t`: every `threads`-th connection, each on its target in turn
/// (under `--route ring`, on the ring's `nodes`).
fn thread_addrs(o: &Opts, nodes: Option<&[SocketAddr]>, t: usize) -> Vec<SocketAddr> {
    if let Some(nodes) = nodes {
        return ring_thread_addrs(o, nodes, t);
    }
    (t..o.connections)
        .step_by(o.threads)
        .map(|c| o.targets[c % o.targets.len()])
        .collect()
}

/// Connections of thread `t` under `--route ring`: as many as without it, the `j`-th to ring
/// node `(t + j) mod nodes`, so every thread with at least as many connections as there are
/// nodes reaches every node (and can send every key to an owner).
fn ring_thread_addrs(o: &Opts, nodes: &[SocketAddr], t: usize) -> Vec<SocketAddr> {
    let count = (t..o.connections).step_by(o.threads).count();
    (0..count).map(|j| nodes[(t + j) % nodes.len()]).collect()
}

/// Where connections go: the ring's `nodes` under `--route ring`, else the targets.
fn destinations<'a>(o: &'a Opts, nodes: Option<&'a [SocketAddr]>) -> &'a [SocketAddr] {
    nodes.unwrap_or(&o.targets)
}

/// Connections of thread `t` as [`thread_addrs`], each pinned to a shard when its
/// destination's shard count is known (`shards`, by index into [`destinations`]): the
/// thread's i-th connection to a destination is pinned to shard (t + i) mod K, so every
/// thread with at least K connections per destination covers every shard of it, and threads
/// with fewer start at different shards.
fn thread_conns(
    o: &Opts,
    nodes: Option<&[SocketAddr]>,
    t: usize,
    shards: &[Option<usize>],
) -> Vec<(SocketAddr, Option<Pin>)> {
    let dests = destinations(o, nodes);
    let mut per_dest = vec![0usize; dests.len()];
    thread_addrs(o, nodes, t)
        .into_iter()
        .map(|addr| {
            let Some(d) = dests.iter().position(|&a| a == addr) else {
                return (addr, None);
            };
            let i = per_dest[d];
            per_dest[d] += 1;
            let pin = shards
                .get(d)
                .copied()
                .flatten()
                .filter(|&k| k > 1)
                .map(|k| Pin {
                    shard: (t + i) % k,
                    shards: k,
                });
            (addr, pin)
        })
        .collect()
}

/// Each target's shard count (by index into `o.targets`), from a HELLO, for shard-aware
/// connections (`None`: its connections are not pinned). Under `--route ring` the ring's
/// nodes were asked already (`RingRoute::learn_shards`).
fn discover_shards(o: &Opts, ring: Option<&route::RingRoute>) -> Vec<Option<usize>> {
    if let Some(r) = ring {
        warn_thin_shards(o, &r.shards, r.addrs.len());
        return r.shards.clone();
    }
    let dests = destinations(o, None);
    if !o.shard_aware {
        return vec![None; dests.len()];
    }
    let shards: Vec<Option<usize>> = dests
        .iter()
        .map(|addr| route::shard_count(*addr, &o.token))
        .collect();
    warn_thin_shards(o, &shards, dests.len());
    shards
}

/// Say so when a thread has fewer connections per destination than its shards.
fn warn_thin_shards(o: &Opts, shards: &[Option<usize>], dests: usize) {
    let per_thread = o.connections / (o.threads * dests.max(1));
    if let Some(k) = shards.iter().flatten().max() {
        if per_thread < *k {
            eprintln!(
                "kvbench: shard-aware: {per_thread} connection(s) per thread and node cannot \
                 cover {k} shards; requests for the others are forwarded by the node"
            );
        }
    }
}

/// `total` split over the threads in proportion to their connections.
fn share(o: &Opts, t: usize, total: u64) -> (u64, u64) {
    let conns_before = (0..t)
        .map(|u| thread_addrs(o, None, u).len() as u64)
        .sum::<u64>();
    let mine = thread_addrs(o, None, t).len() as u64;
    let n = o.connections as u64;
    let start = total * conns_before / n;
    let end = total * (conns_before + mine) / n;
    (start, end)
}

struct Phase {
    landed: u64,
    missed: u64,
    stats: Stats,
    elapsed_s: f64,
    lost: u64,
    readback_errors: u64,
    keys_checked: u64,
    /// `--route ring`: requests sent to an owner of their key, and elsewhere.
    to_owner: u64,
    to_other: u64,
    /// `--route ring`: requests sent to an owner on a connection pinned to the key's shard.
    to_shard: u64,
}

/// Run one phase on every thread, printing progress each second.
fn run_phase(
    sh: &Arc<Shared>,
    o: &Opts,
    shards: &[Option<usize>],
    label: &str,
    pipeline: usize,
    work_of: &dyn Fn(usize) -> Work,
) -> Result<Phase, String> {
    let started = Instant::now();
    // Under --route ring each phase starts from the ring as it is now.
    let ring = sh.cfg.route.as_ref().map(|cell| cell.get());
    let nodes = ring.as_ref().map(|r| r.addrs.as_slice());
    let shards = ring.as_ref().map_or(shards, |r| r.shards.as_slice());
    let handles: Vec<_> = (0..o.threads)
        .map(|t| {
            let sh = sh.clone();
            let addrs = thread_conns(o, nodes, t, shards);
            let work = work_of(t);
            std::thread::Builder::new()
                .name(format!("kvbench-{t}"))
                .spawn(move || engine::run_thread(sh, t, addrs, work, pipeline))
                .map_err(|e| format!("cannot start a thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut tick = 1u64;
    let mut last_ops = sh.progress.ops.load(Ordering::Relaxed);
    let errors_before = sh.progress.errors.load(Ordering::Relaxed);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(PROGRESS_TICK);
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed >= tick as f64 {
            let ops = sh.progress.ops.load(Ordering::Relaxed);
            let errors = sh.progress.errors.load(Ordering::Relaxed) - errors_before;
            let p99 = sh
                .progress
                .hist
                .lock()
                .map(|mut h| {
                    let p = percentiles(&h)[2];
                    h.reset();
                    p
                })
                .unwrap_or(0);
            if !o.quiet {
                eprintln!(
                    "kvbench [{label} {tick:>3}s] {:>9} ops/s  p99 {:>7}  errors {errors}",
                    ops - last_ops,
                    human_latency(p99)
                );
            }
            last_ops = ops;
            tick += 1;
        }
    }
    let mut phase = Phase {
        landed: 0,
        missed: 0,
        stats: Stats::new(),
        elapsed_s: 0.0,
        lost: 0,
        readback_errors: 0,
        keys_checked: 0,
        to_owner: 0,
        to_other: 0,
        to_shard: 0,
    };
    let mut end_ns = 0;
    for h in handles {
        let r: ThreadResult = h
            .join()
            .map_err(|_| "a load thread panicked".to_string())?
            .map_err(|e| format!("load thread failed: {e}"))?;
        if let Some(why) = &r.aborted {
            eprintln!("kvbench: {label}: a thread gave up: {why}");
        }
        phase.stats.merge(&r.stats);
        phase.lost += r.lost;
        phase.readback_errors += r.readback_errors;
        phase.keys_checked += r.keys_checked;
        phase.to_owner += r.to_owner;
        phase.to_other += r.to_other;
        phase.to_shard += r.to_shard;
        phase.landed += r.landed;
        phase.missed += r.missed;
        end_ns = end_ns.max(r.end_ns);
    }
    let start_ns = started.duration_since(sh.base).as_nanos() as u64;
    phase.elapsed_s = end_ns.saturating_sub(start_ns) as f64 / 1e9;
    Ok(phase)
}

fn describe(o: &Opts, siblings: bool) -> (String, String) {
    let targets = o
        .target_names
        .iter()
        .map(|t| json_str(t))
        .collect::<Vec<_>>()
        .join(",");
    let mut j = format!(
        "\"protocol\":\"{}\",\"targets\":[{}],\"connections\":{},\"pipeline\":{},\"threads\":{},\"keys\":{},\"key_size\":{},\"value_size\":{},\"distribution\":{},\"mix\":{},\"seed\":{}",
        o.proto.name(),
        targets,
        o.connections,
        o.pipeline,
        o.threads,
        o.keys,
        o.key_size,
        json_str(&o.value_size_text),
        json_str(&o.distribution.describe()),
        json_str(&o.mix.describe()),
        o.seed
    );
    if let Some(d) = o.duration_s {
        j.push_str(&format!(",\"duration_s\":{d}"));
    }
    if let Some(n) = o.requests {
        j.push_str(&format!(",\"requests\":{n}"));
    }
    if let Some(w) = &o.workload {
        j.push_str(&format!(",\"workload\":{}", json_str(w)));
    }
    if o.proto == Proto::Dkv && o.consistency != Consistency::Default {
        j.push_str(&format!(",\"consistency\":\"{}\"", o.consistency.name()));
    }
    if let Some(r) = o.rate {
        j.push_str(&format!(",\"rate\":{r}"));
    }
    if o.proto == Proto::Dkv {
        j.push_str(&format!(",\"shard_aware\":{}", o.shard_aware));
        let conflicts = if siblings { "siblings" } else { "lww" };
        j.push_str(&format!(",\"conflicts\":\"{conflicts}\""));
    }
    if o.ttl_seconds > 0 {
        j.push_str(&format!(",\"ttl\":{}", o.ttl_seconds));
    }
    let h = format!(
        "kvbench: {} {} | {} connections x pipeline {} on {} thread(s) | {} keys of {} B ({}), values {} B | mix {}{}{}{}",
        o.proto.name(),
        o.target_names.join(","),
        o.connections,
        o.pipeline,
        o.threads,
        o.keys,
        o.key_size,
        o.distribution.describe(),
        o.value_size_text,
        o.mix.describe(),
        if o.proto == Proto::Dkv && o.consistency != Consistency::Default {
            format!(" | {}", o.consistency.name())
        } else {
            String::new()
        },
        match o.rate {
            Some(r) => format!(" | open loop {r} ops/s"),
            None => String::new(),
        },
        if siblings {
            " | siblings: causal GETs, each write with its GET's context"
        } else {
            ""
        }
    );
    (j, h)
}

/// Whether the cluster keeps siblings: `--conflicts`, else the first target whose STATS
/// answer (`conflicts_siblings 1`); a target that cannot tell is taken for last-write-wins.
fn siblings_mode(o: &Opts) -> Result<bool, String> {
    let siblings = match o.siblings {
        Some(s) => s,
        None => {
            let found = o.target_names.iter().find_map(|t| {
                dkv::client::Client::connect_as(
                    t.as_str(),
                    dkv::protocol::Role::Client,
                    0,
                    &o.token,
                )
                .and_then(|mut c| c.stats())
                .ok()
            });
            let s = found.is_some_and(|stats| stats.lines().any(|l| l == "conflicts_siblings 1"));
            if s {
                eprintln!(
                    "kvbench: the cluster runs --conflicts siblings: GETs are causal and each \
                     write carries its GET's context (--conflicts lww to send plain requests)"
                );
            }
            s
        }
    };
    if siblings && o.check {
        return Err(opts::SIBLINGS_CHECK.into());
    }
    if siblings && o.route == route::RouteMode::None && o.targets.len() > 1 {
        eprintln!(
            "kvbench: siblings mode with --route none: a write that reaches a node holding no \
             replica of its key costs a hop more (the node hands it to a replica, protocol.md \
             § 19.2)"
        );
    }
    Ok(siblings)
}

fn run(o: &Opts) -> Result<ExitCode, String> {
    let siblings = siblings_mode(o)?;
    let mut ring = match o.route {
        // A target that cannot answer RING yet (down, starting) must not stop the run: it
        // runs unrouted, as it would with --route none, and says so.
        route::RouteMode::Ring => {
            match route::RingRoute::fetch(&o.target_names, &o.token, o.key_size) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("kvbench: --route ring: {e}; requests go round robin");
                    None
                }
            }
        }
        route::RouteMode::None => None,
    };
    if let Some(r) = ring.as_mut() {
        if o.shard_aware {
            r.learn_shards(None, &o.token);
        }
        if o.connections / o.threads < r.addrs.len() {
            eprintln!(
                "kvbench: --route ring: fewer connections per thread ({}) than ring nodes ({}): \
                 some requests cannot reach an owner",
                o.connections / o.threads,
                r.addrs.len()
            );
        }
    }
    let shards = discover_shards(o, ring.as_ref());
    let route_cell = ring.map(|r| Arc::new(route::RouteCell::new(r)));
    // The refresher keeps the map current while the phases run (route.rs).
    let stop_refresher = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refresher = match &route_cell {
        Some(cell) => Some(
            route::spawn_refresher(
                cell.clone(),
                o.target_names.clone(),
                o.token.clone(),
                o.shard_aware,
                stop_refresher.clone(),
            )
            .map_err(|e| format!("cannot start the ring refresher: {e}"))?,
        ),
        None => None,
    };
    let result = run_phases(o, route_cell, &shards, siblings);
    stop_refresher.store(true, Ordering::Relaxed);
    if let Some(h) = refresher {
        let _ = h.join();
    }
    result
}

/// The preload, measured and check phases, and the report.
fn run_phases(
    o: &Opts,
    route_cell: Option<Arc<route::RouteCell>>,
    shards: &[Option<usize>],
    siblings: bool,
) -> Result<ExitCode, String> {
    let nonce = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (workload::fnv1a64(t ^ std::process::id() as u64) & 0xFFFF) as u16
    };
    let check = o.check.then(|| Arc::new(CheckTable::new(nonce)));
    let sh = Arc::new(Shared {
        cfg: Config {
            proto: o.proto,
            encoder: Encoder {
                proto: o.proto,
                key_size: o.key_size,
            },
            consistency: o.consistency,
            ttl_seconds: o.ttl_seconds,
            value_size: o.value_size,
            mix: o.mix,
            check: check.clone(),
            write_id_nonce: nonce,
            token: o.token.clone(),
            route: route_cell,
            siblings,
        },
        chooser: KeyChooser::new(o.keys, o.distribution),
        pool: workload::value_pool(o.value_size.max, o.seed),
        base: Instant::now(),
        progress: Default::default(),
        seed: o.seed,
        write_seq: AtomicU64::new(0),
    });

    if o.preload {
        let pipeline = o.pipeline.max(PRELOAD_PIPELINE_MIN);
        let p = run_phase(&sh, o, shards, "preload", pipeline, &|t| {
            let (start, end) = share(o, t, o.keys);
            Work::Preload { start, end }
        })?;
        let total = p.stats.total();
        eprintln!(
            "kvbench: preloaded {} keys in {:.1} s ({:.0} ops/s), errors {}",
            total.ops,
            p.elapsed_s,
            total.ops as f64 / p.elapsed_s.max(1e-9),
            p.stats.error_count()
        );
    }

    let start_ns = sh.now_ns();
    let run = run_phase(&sh, o, shards, "run", o.pipeline, &|t| {
        let deadline_ns = o.duration_s.map(|d| start_ns + (d * 1e9) as u64);
        let requests = o.requests.map(|n| {
            let (a, b) = share(o, t, n);
            b - a
        });
        let rate = o
            .rate
            .map(|r| r * thread_addrs(o, None, t).len() as f64 / o.connections as f64);
        Work::Mix {
            deadline_ns,
            requests,
            rate,
        }
    })?;

    if run.landed + run.missed > 0 {
        eprintln!(
            "kvbench: shard-aware: {} of {} connections landed on their shard",
            run.landed,
            run.landed + run.missed
        );
    }

    let check_result = match &check {
        None => None,
        Some(table) => {
            let keys = Arc::new(table.touched_keys());
            let n = keys.len() as u64;
            let pipeline = o.pipeline.max(PRELOAD_PIPELINE_MIN);
            let p = run_phase(&sh, o, shards, "check", pipeline, &|t| {
                let (start, end) = share(o, t, n);
                Work::Readback {
                    keys: keys.clone(),
                    start: start as usize,
                    end: end as usize,
                }
            })?;
            Some(CheckResult {
                acknowledged_writes: table.acknowledged(),
                lost: p.lost,
                stale_reads: table.stale_reads(),
                keys_checked: p.keys_checked,
                readback_errors: p.readback_errors + (n - p.keys_checked - p.readback_errors),
            })
        }
    };

    let (mut config_json, mut config_human) = describe(o, siblings);
    if let Some(cell) = &sh.cfg.route {
        let r = cell.get();
        let refreshes = cell.refreshes.load(Ordering::Relaxed);
        let sent = (run.to_owner + run.to_other).max(1);
        config_json.push_str(&format!(
            ",\"route\":\"ring\",\"ring_version\":{},\"ring_nodes\":{},\"ring_refreshes\":{},\"requests_to_owner\":{},\"requests_to_other\":{},\"requests_to_owner_shard\":{}",
            r.version,
            r.addrs.len(),
            refreshes,
            run.to_owner,
            run.to_other,
            run.to_shard
        ));
        config_human.push_str(&format!(
            " | route ring v{} ({} nodes, {} newer maps taken): {:.2}% of requests to an owner",
            r.version,
            r.addrs.len(),
            refreshes,
            100.0 * run.to_owner as f64 / sent as f64
        ));
        if o.shard_aware {
            config_human.push_str(&format!(
                ", {:.2}% on its shard",
                100.0 * run.to_shard as f64 / sent as f64
            ));
        }
    }
    let report = RunReport {
        config_json,
        config_human,
        stats: &run.stats,
        elapsed_s: run.elapsed_s,
        check: check_result,
        siblings,
    };
    if o.json {
        eprint!("{}", report.human());
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    if check_result.is_some_and(|c| c.lost > 0) {
        return Ok(ExitCode::from(1));
    }
    if run.stats.total().ops == 0 {
        eprintln!("kvbench: no request was answered");
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_opts(&args) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvbench: {e}\n(kvbench --help lists the options)");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvbench: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Opts {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse_opts(&args)
            .expect("valid options")
            .expect("not --help")
    }

    #[test]
    fn every_thread_covers_every_shard_of_every_target() {
        let o = opts(&["-t", "127.0.0.1:1,127.0.0.1:2", "-c", "24", "-T", "3"]);
        assert!(o.shard_aware);
        let shards = [Some(3), Some(2)];
        for t in 0..3 {
            let conns = thread_conns(&o, None, t, &shards);
            assert_eq!(
                conns.iter().map(|c| c.0).collect::<Vec<_>>(),
                thread_addrs(&o, None, t)
            );
            for (target, k) in [(0usize, 3usize), (1, 2)] {
                let mut pins: Vec<usize> = conns
                    .iter()
                    .filter(|c| c.0 == o.targets[target])
                    .map(|c| {
                        let pin = c.1.expect("pinned");
                        assert_eq!(pin.shards, k);
                        pin.shard
                    })
                    .collect();
                pins.sort();
                pins.dedup();
                assert_eq!(
                    pins,
                    (0..k).collect::<Vec<_>>(),
                    "thread {t} target {target}"
                );
            }
        }
        // With the ring, connections go to the ring's nodes and are pinned by node: a thread
        // with K connections per node covers every shard of it.
        let o = opts(&["-t", "127.0.0.1:1", "-c", "24", "-T", "2"]);
        let nodes: Vec<SocketAddr> = (1..=3)
            .map(|p| {
                format!("127.0.0.1:{}", 100 + p)
                    .parse()
                    .expect("an address")
            })
            .collect();
        let shards = [Some(2), Some(4), None];
        for t in 0..2 {
            let conns = thread_conns(&o, Some(&nodes), t, &shards);
            assert_eq!(conns.len(), 12);
            for (node, k) in shards.iter().enumerate() {
                let mut pins: Vec<Option<usize>> = conns
                    .iter()
                    .filter(|c| c.0 == nodes[node])
                    .map(|c| c.1.map(|p| p.shard))
                    .collect();
                assert_eq!(pins.len(), 4, "thread {t} node {node}");
                pins.sort();
                pins.dedup();
                let want: Vec<Option<usize>> = match k {
                    Some(k) => (0..*k).map(Some).collect(),
                    None => vec![None],
                };
                assert_eq!(pins, want, "thread {t} node {node}");
            }
        }
        let o = opts(&["-t", "127.0.0.1:1,127.0.0.1:2", "-c", "24", "-T", "3"]);
        // One shard, an unknown count, or --no-shard-aware: nothing is pinned.
        let conns = thread_conns(&o, None, 0, &[Some(1), None]);
        assert!(conns.iter().all(|c| c.1.is_none()));
        let o = opts(&["--no-shard-aware"]);
        assert!(!o.shard_aware);
    }

    #[test]
    fn conflicts_option() {
        let err = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            parse_opts(&args).err().expect("refused")
        };
        assert_eq!(opts(&[]).siblings, None, "dkv asks the node");
        assert_eq!(opts(&["--conflicts", "siblings"]).siblings, Some(true));
        assert_eq!(
            opts(&["--conflicts", "lww", "--check"]).siblings,
            Some(false)
        );
        assert_eq!(opts(&["-P", "resp"]).siblings, Some(false));
        assert_eq!(
            err(&["--conflicts", "siblings", "--check"]),
            opts::SIBLINGS_CHECK
        );
        assert!(err(&["--conflicts", "both"]).contains("lww or siblings"));
        assert!(err(&["-P", "memcache", "--conflicts", "lww"]).contains("dkv only"));
    }
}
