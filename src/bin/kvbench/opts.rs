//! kvbench's command line: the options, their help text, and parsing them into [`Opts`].

use super::*;

pub(crate) struct Opts {
    pub(crate) targets: Vec<SocketAddr>,
    pub(crate) target_names: Vec<String>,
    pub(crate) proto: Proto,
    pub(crate) connections: usize,
    pub(crate) pipeline: usize,
    pub(crate) threads: usize,
    pub(crate) duration_s: Option<f64>,
    pub(crate) requests: Option<u64>,
    pub(crate) keys: u64,
    pub(crate) key_size: usize,
    pub(crate) value_size: ValueSize,
    pub(crate) value_size_text: String,
    pub(crate) distribution: Distribution,
    pub(crate) mix: Mix,
    pub(crate) workload: Option<String>,
    pub(crate) consistency: Consistency,
    pub(crate) preload: bool,
    pub(crate) ttl_seconds: u32,
    pub(crate) rate: Option<f64>,
    pub(crate) json: bool,
    pub(crate) check: bool,
    pub(crate) seed: u64,
    pub(crate) quiet: bool,
    pub(crate) token: Vec<u8>,
    /// `--route`: as asked (ring unless told otherwise, for dkv).
    pub(crate) route: route::RouteMode,
    /// dkv connections pinned to shards by their local port (not `--no-shard-aware`).
    pub(crate) shard_aware: bool,
    /// `--conflicts`: `Some(true)` siblings, `Some(false)` lww, `None` (dkv, not given): ask
    /// the first target (STATS `conflicts_siblings 1`).
    pub(crate) siblings: Option<bool>,
}

pub(crate) fn options() -> Options {
    let mut o = Options::new();
    o.optmulti(
        "t",
        "target",
        "server to load; repeat or comma-separate for a cluster (connections are spread \
         round-robin). Default 127.0.0.1 with the protocol's usual port",
        "HOST:PORT",
    );
    o.optopt(
        "P",
        "protocol",
        "dkv (binary v1), resp (Redis) or memcache (memcached text). Default dkv",
        "NAME",
    );
    o.optopt(
        "c",
        "connections",
        "TCP connections in total. Default 50",
        "N",
    );
    o.optopt(
        "p",
        "pipeline",
        "requests in flight per connection (max 4096). Default 1",
        "N",
    );
    o.optopt(
        "T",
        "threads",
        "load threads; connections are divided among them. Default 1",
        "N",
    );
    o.optopt(
        "d",
        "duration",
        "measured run length in seconds. Default 10 unless --requests is given",
        "SECONDS",
    );
    o.optopt("n", "requests", "run exactly N operations instead", "N");
    o.optopt("k", "keys", "size of the key space. Default 100000", "N");
    o.optopt(
        "",
        "key-size",
        "bytes per key: 'k' and the zero-padded key number. Default 16",
        "BYTES",
    );
    o.optopt(
        "",
        "value-size",
        "bytes per value, fixed or uniform in MIN-MAX. Default 100",
        "N|MIN-MAX",
    );
    o.optopt(
        "",
        "distribution",
        "key popularity: uniform, zipfian[:THETA] (YCSB scrambled, theta 0.99) or \
         latest[:THETA] (newest keys hottest). Default uniform",
        "NAME",
    );
    o.optopt(
        "",
        "mix",
        "operation weights from get, put, del, rmw (read-modify-write), insert (new key). \
         Default get=90,put=10",
        "get=90,put=10,del=0",
    );
    o.optopt(
        "w",
        "workload",
        "YCSB core workload: a (50% read, 50% update), b (95/5), c (read only), d (95% read \
         latest, 5% insert), f (50% read, 50% read-modify-write); zipfian 0.99 (d: latest)",
        "a|b|c|d|f",
    );
    o.optopt(
        "",
        "consistency",
        "dkv consistency level of every request (aux bits); default: the node's (QUORUM)",
        "ONE|QUORUM|ALL",
    );
    o.optflag(
        "",
        "preload",
        "write every key once before measuring (its own phase, not in the results)",
    );
    o.optopt(
        "",
        "ttl",
        "time to live of every write, seconds. Default none",
        "SECONDS",
    );
    o.optopt(
        "r",
        "rate",
        "open loop: send OPS requests per second in total on a fixed schedule; latency counts \
         from the scheduled time, so server stalls are not hidden (coordinated omission)",
        "OPS",
    );
    o.optflag(
        "",
        "json",
        "print one JSON object on stdout (the human summary goes to stderr)",
    );
    o.optflag(
        "",
        "check",
        "write distinct values, remember acknowledged writes, read every written key back \
         with ALL at the end; report lost writes (exit 1 if any) and stale reads",
    );
    o.optopt("s", "seed", "seed of the workload's PRNG. Default 1", "N");
    o.optopt(
        "",
        "token",
        "dkv client token for HELLO, for nodes started with --client-token",
        "TOKEN",
    );
    o.optopt(
        "",
        "route",
        "dkv: ring sends each request to an owner of its key, by the ring map (RING) fetched \
         from the first target, with connections to every node of the ring; none spreads \
         requests over the targets. Default ring (none against a single node)",
        "ring|none",
    );
    o.optflag(
        "",
        "no-shard-aware",
        "dkv: let the kernel pick local ports, so requests land on any shard and are forwarded \
         to their owner (default: each connection is pinned to one shard by its local port and \
         carries only that shard's keys)",
    );
    o.optopt(
        "",
        "conflicts",
        "dkv: how the cluster resolves conflicts (kvd --conflicts). siblings: every GET is a \
         causal GET, every write (put, insert, rmw, del) a causal GET then a PUT or DELETE \
         carrying its context, so that writers of one key collide into siblings (use a small \
         --keys); the report adds reads that found more than one sibling, the most siblings \
         seen and writes refused TOO_MANY_SIBLINGS. Default: what the first target's STATS \
         say (conflicts_siblings 1), else lww",
        "lww|siblings",
    );
    o.optflag("q", "quiet", "no progress line");
    o.optflag("h", "help", "print this help");
    o
}

pub(crate) fn usage(o: &Options) -> String {
    let brief = "Usage: kvbench [options]\n\n\
        One load generator for dkv, Redis and memcached: many non-blocking connections per \
        thread,\npipelined requests, HDR latency histograms, open or closed loop, and a \
        lost-write check.\n\n\
        Examples:\n  \
        kvbench --target 127.0.0.1:7379 --duration 10 --preload --keys 1000000 --pipeline 16\n  \
        kvbench --protocol resp --target 127.0.0.1:6379 --workload a --json\n  \
        kvbench --target n1:7379,n2:7379,n3:7379 --consistency QUORUM --check --mix get=50,put=50\n  \
        kvbench --target n1:7379,n2:7379,n3:7379 --conflicts siblings --keys 10 --mix get=50,put=40,del=10";
    let mut u = o.usage(brief);
    u.push_str(
        "\nOutput: a progress line per second on stderr (ops/s, p99, errors), then a summary per\n\
         operation (ops/s, p50/p90/p99/p99.9/max latency, errors, misses) and the errors by\n\
         status code. Operations and latencies count successes (OK, or NOT_FOUND: a miss);\n\
         an error reply or a request lost with its connection is an error, never an op. --json prints ops, ops_per_sec, errors, p50_us, p90_us, p99_us, p999_us,\n\
         max_us overall and per operation (per_op), errors_by_status, and with --check\n\
         acknowledged_writes, lost, stale_reads; in siblings mode causal_reads,\n\
         reads_with_siblings, max_siblings, too_many_siblings (a write's latency there runs from\n\
         its GET's send to its own reply).\n\
         Exit status: 0 ok, 1 lost writes, 2 bad options, 3 nothing answered.\n",
    );
    u
}

/// Why `--check` and siblings mode do not go together.
pub(crate) const SIBLINGS_CHECK: &str =
    "--check judges last-write-wins reads (one value per key); siblings mode keeps several";

pub(crate) fn parse_num<T: std::str::FromStr>(
    m: &getopts::Matches,
    name: &str,
) -> Result<Option<T>, String> {
    match m.opt_str(name) {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("--{name}: {s:?} is not a valid number")),
    }
}

pub(crate) fn parse_opts(args: &[String]) -> Result<Option<Opts>, String> {
    let o = options();
    let m = o.parse(args).map_err(|e| e.to_string())?;
    if m.opt_present("help") {
        print!("{}", usage(&o));
        return Ok(None);
    }
    if !m.free.is_empty() {
        return Err(format!("unexpected argument {:?}", m.free[0]));
    }
    let proto = Proto::parse(&m.opt_str("protocol").unwrap_or_else(|| "dkv".into()))?;
    let default_port = match proto {
        Proto::Dkv => PORT_DEFAULT,
        Proto::Resp => 6379,
        Proto::Memcache => 11211,
    };
    let mut target_names: Vec<String> = m
        .opt_strs("target")
        .iter()
        .flat_map(|t| t.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if target_names.is_empty() {
        target_names.push(format!("127.0.0.1:{default_port}"));
    }
    let mut targets = Vec::new();
    for t in &target_names {
        let addr = t
            .to_socket_addrs()
            .map_err(|e| format!("--target {t:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("--target {t:?}: no address"))?;
        targets.push(addr);
    }

    let connections = parse_num(&m, "connections")?.unwrap_or(50usize);
    if !(1..=CONNECTIONS_MAX).contains(&connections) {
        return Err(format!("--connections must be 1..={CONNECTIONS_MAX}"));
    }
    let pipeline = parse_num(&m, "pipeline")?.unwrap_or(1usize);
    if !(1..=PIPELINE_MAX).contains(&pipeline) {
        return Err(format!("--pipeline must be 1..={PIPELINE_MAX}"));
    }
    let threads = parse_num(&m, "threads")?.unwrap_or(1usize);
    if !(1..=THREADS_MAX).contains(&threads) {
        return Err(format!("--threads must be 1..={THREADS_MAX}"));
    }
    let threads = threads.min(connections);
    let duration_s: Option<f64> = parse_num(&m, "duration")?;
    let requests: Option<u64> = parse_num(&m, "requests")?;
    if duration_s.is_some() && requests.is_some() {
        return Err("give --duration or --requests, not both".into());
    }
    if duration_s.is_some_and(|d| !(d > 0.0 && d < 1e7)) {
        return Err("--duration must be a positive number of seconds".into());
    }
    if requests == Some(0) {
        return Err("--requests must be at least 1".into());
    }
    let duration_s = if requests.is_none() {
        Some(duration_s.unwrap_or(DURATION_S_DEFAULT))
    } else {
        None
    };

    let keys = parse_num(&m, "keys")?.unwrap_or(100_000u64);
    if keys == 0 || keys > workload::ZIPFIAN_ITEMS_MAX {
        return Err(format!(
            "--keys must be 1..={}",
            workload::ZIPFIAN_ITEMS_MAX
        ));
    }
    let key_size = parse_num(&m, "key-size")?.unwrap_or(16usize);
    let key_size_max = match proto {
        Proto::Memcache => MEMCACHE_KEY_SIZE_MAX,
        _ => KEY_SIZE_MAX,
    };
    if key_size > key_size_max {
        return Err(format!("--key-size must be at most {key_size_max}"));
    }
    let value_size_text = m.opt_str("value-size").unwrap_or_else(|| "100".into());
    let value_size = ValueSize::parse(&value_size_text)?;
    if value_size.max > VALUE_SIZE_MAX {
        return Err(format!("--value-size must be at most {VALUE_SIZE_MAX}"));
    }

    let workload = m.opt_str("workload");
    let (mut mix, mut distribution) = (Mix::parse("get=90,put=10")?, Distribution::Uniform);
    if let Some(w) = &workload {
        if m.opt_present("mix") {
            return Err("give --workload or --mix, not both".into());
        }
        (mix, distribution) = ycsb(w)?;
    }
    if let Some(s) = m.opt_str("mix") {
        mix = Mix::parse(&s)?;
    }
    if let Some(s) = m.opt_str("distribution") {
        distribution = Distribution::parse(&s)?;
    }
    let widest_key = if mix.weights[Op::Insert as usize] > 0 {
        keys + INSERTS_MAX
    } else {
        keys - 1
    };
    if key_size < 1 + digits(widest_key) {
        return Err(format!(
            "--key-size {key_size} is too small: keys up to {widest_key} need {} bytes",
            1 + digits(widest_key)
        ));
    }

    let consistency = match m.opt_str("consistency") {
        None => Consistency::Default,
        Some(s) => {
            if proto != Proto::Dkv {
                return Err("--consistency applies to --protocol dkv only".into());
            }
            Consistency::parse(&s)
                .ok_or_else(|| format!("--consistency {s:?}: use ONE, QUORUM or ALL"))?
        }
    };
    let ttl_seconds = parse_num(&m, "ttl")?.unwrap_or(0u32);
    if ttl_seconds > TTL_SECONDS_MAX {
        return Err(format!("--ttl must be at most {TTL_SECONDS_MAX}"));
    }
    let rate: Option<f64> = parse_num(&m, "rate")?;
    if rate.is_some_and(|r| !(r > 0.0 && r < 1e10)) {
        return Err("--rate must be a positive number of operations per second".into());
    }
    let check = m.opt_present("check");
    if check {
        if ttl_seconds > 0 {
            return Err("--check cannot judge expiring keys: drop --ttl".into());
        }
        if value_size.min < WRITE_ID_SIZE {
            return Err(format!(
                "--check needs values of at least {WRITE_ID_SIZE} bytes (they carry the write id)"
            ));
        }
    }
    let seed = parse_num(&m, "seed")?.unwrap_or(1u64);
    let token = m.opt_str("token").unwrap_or_default().into_bytes();
    if token.len() > dkv::limits::TOKEN_SIZE_MAX {
        return Err(format!(
            "--token is longer than {} bytes",
            dkv::limits::TOKEN_SIZE_MAX
        ));
    }
    if !token.is_empty() && proto != Proto::Dkv {
        return Err("--token applies to --protocol dkv only".into());
    }
    let route = match m.opt_str("route") {
        Some(s) => route::RouteMode::parse(&s)?,
        None if proto == Proto::Dkv => route::RouteMode::Ring,
        None => route::RouteMode::None,
    };
    if route == route::RouteMode::Ring && proto != Proto::Dkv {
        return Err("--route ring applies to --protocol dkv only".into());
    }
    let siblings = match m.opt_str("conflicts").as_deref() {
        None if proto == Proto::Dkv => None,
        None => Some(false),
        Some(_) if proto != Proto::Dkv => {
            return Err("--conflicts applies to --protocol dkv only".into())
        }
        Some("lww") => Some(false),
        Some("siblings") => Some(true),
        Some(s) => return Err(format!("--conflicts {s:?}: use lww or siblings")),
    };
    if siblings == Some(true) && check {
        return Err(SIBLINGS_CHECK.into());
    }
    Ok(Some(Opts {
        targets,
        target_names,
        proto,
        connections,
        pipeline,
        threads,
        duration_s,
        requests,
        keys,
        key_size,
        value_size,
        value_size_text,
        distribution,
        mix,
        workload,
        consistency,
        preload: m.opt_present("preload"),
        ttl_seconds,
        rate,
        json: m.opt_present("json"),
        check,
        seed,
        quiet: m.opt_present("quiet"),
        token,
        route,
        shard_aware: proto == Proto::Dkv && !m.opt_present("no-shard-aware"),
        siblings,
    }))
}
