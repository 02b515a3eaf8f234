//! kvsim: deterministic simulation of whole dkv clusters (see `dkv::sim`).
//!
//! ```text
//! kvsim --seeds 1..200                       one simulation per seed (inclusive range)
//! kvsim --seed 42 --trace                    replay one seed with its event trace
//! kvsim --seeds 1..500 --mutation ack-before-sync   prove a checker catches a planted bug
//! kvsim --seeds 1..200 --conflicts siblings  siblings mode: causal clients, siblings checkers
//! ```
//!
//! Every knob is drawn from the seed unless fixed with an option. A failing seed prints the
//! checker, the key and `reproduce: kvsim --seed N --trace ...`; the exit status is 1 if any
//! seed failed.

use dkv::cluster::Conflicts;
use dkv::protocol::Consistency;
use dkv::shard::SyncPolicy;
use dkv::sim::{self, Mutation, Options};
use std::cell::Cell;
use std::process::ExitCode;
use std::time::Instant;

/// Most threads `--jobs` may ask for.
const JOBS_MAX: usize = 256;

thread_local! {
    /// The seed being simulated, for the panic hook (release builds abort on panic).
    static CURRENT: Cell<Option<u64>> = const { Cell::new(None) };
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("bad seed range {s:?}: expected A..B, e.g. 1..200"))?;
    let a: u64 = a.parse().map_err(|_| format!("bad seed {a:?}"))?;
    let b: u64 = b
        .trim_start_matches('=')
        .parse()
        .map_err(|_| format!("bad seed {b:?}"))?;
    if b < a {
        return Err(format!("empty seed range {s:?}"));
    }
    Ok((a, b))
}

fn parse_num<T: std::str::FromStr>(m: &getopts::Matches, name: &str) -> Result<Option<T>, String> {
    match m.opt_str(name) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("bad value {s:?} for --{name}")),
    }
}

fn options(m: &getopts::Matches) -> Result<Options, String> {
    let nodes: Option<u32> = parse_num(m, "nodes")?;
    if let Some(n) = nodes {
        if !(3..=sim::options::SIM_NODES_MAX).contains(&n) {
            return Err(format!(
                "--nodes {n}: must be 3..={}",
                sim::options::SIM_NODES_MAX
            ));
        }
    }
    let replicas: Option<usize> = parse_num(m, "replicas")?;
    if let Some(r) = replicas {
        if r == 0 || r > 5 || nodes.is_some_and(|n| r > n as usize) {
            return Err(format!("--replicas {r}: must be 1..=5 and at most --nodes"));
        }
        if nodes.is_none() && r > 3 {
            return Err(format!(
                "--replicas {r} needs --nodes (drawn clusters may have 3 nodes)"
            ));
        }
    }
    let shards: Option<usize> = parse_num(m, "shards")?;
    if let Some(k) = shards {
        if !(1..=sim::options::SIM_SHARDS_MAX).contains(&k) {
            return Err(format!(
                "--shards {k}: must be 1..={}",
                sim::options::SIM_SHARDS_MAX
            ));
        }
    }
    let consistency = match m.opt_str("consistency") {
        None => None,
        Some(s) => Some(
            Consistency::parse(&s)
                .ok_or_else(|| format!("bad --consistency {s:?}: ONE, QUORUM or ALL"))?,
        ),
    };
    let sync = match m.opt_str("sync") {
        None => None,
        Some(s) => Some(SyncPolicy::parse(&s)?),
    };
    let conflicts = match m.opt_str("conflicts") {
        None => Conflicts::Lww,
        Some(s) => {
            Conflicts::parse(&s).ok_or_else(|| format!("bad --conflicts {s:?}: lww or siblings"))?
        }
    };
    let mutation = match m.opt_str("mutation") {
        None => Mutation::None,
        Some(s) => Mutation::parse(&s)?,
    };
    Ok(Options {
        nodes,
        replicas,
        shards,
        consistency,
        sync,
        ops: parse_num(m, "ops")?,
        safety_ms: parse_num(m, "safety-ms")?,
        drop_percent: parse_num(m, "drop-percent")?,
        fault_interval_ms: parse_num(m, "fault-interval-ms")?,
        skew_max_ms: parse_num(m, "skew-max-ms")?,
        jump_max_ms: parse_num(m, "jump-max-ms")?,
        far_skew_ms: parse_num(m, "far-skew-ms")?,
        mutation,
        raw_clock_recovery: m.opt_present("raw-clock-recovery"),
        no_repair_reads: m.opt_present("no-repair-reads"),
        anti_entropy_only: m.opt_present("anti-entropy-only"),
        membership: match m.opt_str("membership").as_deref() {
            None => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(x) => return Err(format!("bad --membership {x:?}: on or off")),
        },
        conflicts,
    })
}

fn main() -> ExitCode {
    // Die quietly when the reader of our output goes away (`kvsim ... | head`), as CLI
    // tools do, rather than panic on a failed print.
    // SAFETY: setting a signal's disposition to the default at start, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = getopts::Options::new();
    o.optopt("", "seed", "run one seed", "N");
    o.optopt("", "seeds", "run seeds A..B (inclusive)", "A..B");
    o.optflag("", "trace", "print the event trace");
    o.optopt(
        "j",
        "jobs",
        "seeds simulated at once, on as many threads (default: the cores; 1 with --trace)",
        "N",
    );
    o.optflag(
        "v",
        "verbose",
        "print a line for every seed, not only failures",
    );
    o.optopt("", "mutation", "switch on a deliberate bug", "NAME");
    o.optopt(
        "",
        "nodes",
        "cluster size at start (3..=32; drawn 3..=7, or 16..=32 on a few seeds)",
        "N",
    );
    o.optopt("", "replicas", "replicas per key", "N");
    o.optopt(
        "",
        "shards",
        "shards of every node (otherwise drawn 1..=4 per node)",
        "K",
    );
    o.optopt(
        "",
        "consistency",
        "consistency of every request",
        "ONE|QUORUM|ALL",
    );
    o.optopt(
        "",
        "sync",
        "sync policy of every node",
        "always|never|interval:MS",
    );
    o.optopt("", "ops", "client operations in the safety phase", "N");
    o.optopt(
        "",
        "safety-ms",
        "simulated length of the safety phase",
        "MS",
    );
    o.optopt("", "drop-percent", "percent of frames dropped", "P");
    o.optopt(
        "",
        "fault-interval-ms",
        "mean ms between faults (0: none)",
        "MS",
    );
    o.optopt(
        "",
        "skew-max-ms",
        "largest clock skew of a node, ± ms",
        "MS",
    );
    o.optopt(
        "",
        "jump-max-ms",
        "largest clock jump, ± ms (0: none)",
        "MS",
    );
    o.optopt(
        "",
        "far-skew-ms",
        "a minority of nodes run up to this far (at least a minute) from true time; they must \
         refuse to coordinate writes (0: none)",
        "MS",
    );
    o.optflag(
        "",
        "raw-clock-recovery",
        "restart nodes without the durable clock ceiling (shows the fixed bug sim-2)",
    );
    o.optopt(
        "",
        "membership",
        "membership changes (leave, remove, pause/resume moves) in the fault schedule: on \
         every seed, or never (default: drawn, on for most seeds)",
        "on|off",
    );
    o.optflag(
        "",
        "no-repair-reads",
        "liveness phase without the simulator's ALL reads (hints and anti-entropy only)",
    );
    o.optflag(
        "",
        "anti-entropy-only",
        "hinted handoff and read repair off, no repair-driving reads: anti-entropy alone must converge the cluster",
    );
    o.optopt(
        "",
        "conflicts",
        "how every node resolves concurrent writes: lww (default) or siblings (clients \
         read, then write with the causal context; the siblings checkers run; the mutation \
         lww-anti-entropy implies it)",
        "lww|siblings",
    );
    o.optflag("h", "help", "print this help");
    let usage = |o: &getopts::Options| {
        o.usage(&format!(
            "Usage: kvsim --seeds A..B | --seed N [--trace] [options]\nMutations: {}",
            Mutation::NAMES.join(", ")
        ))
    };
    let m = match o.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kvsim: {e}\n{}", usage(&o));
            return ExitCode::from(2);
        }
    };
    if m.opt_present("help") {
        println!("{}", usage(&o));
        return ExitCode::SUCCESS;
    }
    let opts = match options(&m) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("kvsim: {e}");
            return ExitCode::from(2);
        }
    };
    let (first, last) = match (m.opt_str("seed"), m.opt_str("seeds")) {
        (Some(s), None) => match s.parse::<u64>() {
            Ok(n) => (n, n),
            Err(_) => {
                eprintln!("kvsim: bad --seed {s:?}");
                return ExitCode::from(2);
            }
        },
        (None, Some(r)) => match parse_range(&r) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("kvsim: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!(
                "kvsim: give exactly one of --seed N or --seeds A..B\n{}",
                usage(&o)
            );
            return ExitCode::from(2);
        }
    };
    let trace = m.opt_present("trace");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = match m.opt_str("jobs").map(|j| j.parse::<usize>()) {
        None if trace => 1,
        None => cores,
        Some(Ok(j)) if (1..=JOBS_MAX).contains(&j) => j,
        Some(_) => {
            eprintln!("kvsim: --jobs must be 1..={JOBS_MAX}");
            return ExitCode::from(2);
        }
    };
    let verbose = m.opt_present("verbose") || first == last;
    let extra = opts.to_args();
    let default_hook = std::panic::take_hook();
    let hook_extra = extra.clone();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(seed) = CURRENT.with(Cell::get) {
            eprintln!(
                "FAIL seed={seed} checker=panic: {info}\n  reproduce: kvsim --seed {seed} --trace{hook_extra}"
            );
        }
        default_hook(info);
    }));

    let start = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut total_stats = sim::RunStats::default();
    let mut changed_seeds = 0u64;
    // Seeds that started a join, a replacement, and that ran a big cluster.
    let (mut join_seeds, mut replace_seeds, mut big_seeds) = (0u64, 0u64, 0u64);
    let mut first_failure = None;
    // Seeds run on `jobs` threads (each seed alone is deterministic and single-threaded);
    // their reports are printed in seed order.
    let (tx, rx) = std::sync::mpsc::channel::<sim::Report>();
    let next_seed = std::sync::atomic::AtomicU64::new(first);
    let opts_ref = &opts;
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let next_seed = &next_seed;
            scope.spawn(move || loop {
                let seed = next_seed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed > last {
                    return;
                }
                CURRENT.with(|c| c.set(Some(seed)));
                let r = sim::run(seed, opts_ref, trace);
                CURRENT.with(|c| c.set(None));
                if tx.send(r).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut pending = std::collections::BTreeMap::new();
        let mut expected = first;
        for r in rx.iter() {
            pending.insert(r.seed, r);
            while let Some(r) = pending.remove(&expected) {
                expected += 1;
                let seed = r.seed;
                let s = &r.stats;
                total_stats.ops += s.ops;
                total_stats.writes_acked += s.writes_acked;
                total_stats.reads_ok += s.reads_ok;
                total_stats.crashes += s.crashes;
                total_stats.frames += s.frames;
                total_stats.reads_checked += s.reads_checked;
                total_stats.keys_checked += s.keys_checked;
                total_stats.sim_ms += s.sim_ms;
                total_stats.compactions += s.compactions;
                total_stats.membership_changes += s.membership_changes;
                total_stats.moved_bytes += s.moved_bytes;
                total_stats.moved_min_bytes += s.moved_min_bytes;
                total_stats.joins += s.joins;
                total_stats.replaces += s.replaces;
                total_stats.admitted += s.admitted;
                changed_seeds += u64::from(s.membership_changes > 0);
                join_seeds += u64::from(s.joins > 0);
                replace_seeds += u64::from(s.replaces > 0);
                big_seeds += u64::from(u64::from(r.params.nodes) >= sim::options::BIG_NODES_MIN);
                if r.passed() {
                    passed += 1;
                } else {
                    failed += 1;
                    first_failure.get_or_insert(seed);
                    for v in &r.violations {
                        println!(
                            "FAIL seed={seed} checker={} key={}: {}",
                            v.checker,
                            v.key.as_deref().unwrap_or("-"),
                            v.detail
                        );
                    }
                    println!("  reproduce: kvsim --seed {seed} --trace{extra}");
                }
                if verbose {
                    let s = &r.stats;
                    println!(
                "seed={seed} {} nodes={} N={} shards={:?} ops={} acked_writes={} reads={} failed={} \
                 crashes={} frames={} events={} sim={}ms converged_in={}ms reads_checked={} \
                 keys_checked={} left_or_removed={} joins={} replaces={} admitted={} \
                 moved_bytes={}/{} trace_lines={} trace_hash={:016x}",
                if r.passed() { "ok" } else { "FAILED" },
                r.params.nodes,
                r.params.replicas,
                r.params.shards,
                s.ops,
                s.writes_acked,
                s.reads_ok,
                s.failed,
                s.crashes,
                s.frames,
                s.events,
                s.sim_ms,
                s.converge_ms,
                s.reads_checked,
                s.keys_checked,
                s.membership_changes,
                s.joins,
                s.replaces,
                s.admitted,
                s.moved_bytes,
                s.moved_min_bytes,
                r.trace_lines,
                r.trace_hash
            );
                }
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let total = passed + failed;
    println!(
        "seeds {first}..{last}{extra}: {total} run, {passed} passed, {failed} failed in {secs:.1} s \
         ({:.1} seeds/s){}",
        total as f64 / secs.max(1e-9),
        first_failure.map_or(String::new(), |s| format!(", first failing seed {s}"))
    );
    let t = &total_stats;
    println!(
        "  totals: {} client ops, {} writes acknowledged, {} reads answered ({} judged by \
         stale-read), {} keys judged by lost-write, {} crashes, {} compactions, {} frames, \
         {:.0} simulated s",
        t.ops,
        t.writes_acked,
        t.reads_ok,
        t.reads_checked,
        t.keys_checked,
        t.crashes,
        t.compactions,
        t.frames,
        t.sim_ms as f64 / 1000.0
    );
    println!(
        "  membership: {changed_seeds} seeds had a leave or removal complete ({} in all); \
         partition copies moved {} bytes, minimum {}",
        t.membership_changes, t.moved_bytes, t.moved_min_bytes
    );
    println!(
        "  joins: {join_seeds} seeds started a join ({} in all), {replace_seeds} a replacement \
         ({} in all); {} new nodes admitted up; {big_seeds} seeds ran {}..={} nodes",
        t.joins,
        t.replaces,
        t.admitted,
        sim::options::BIG_NODES_MIN,
        sim::options::BIG_NODES_MAX
    );
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
