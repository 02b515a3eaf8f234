//! `kvd`: one dkv node. Parses options, opens the stores, runs the shard event loops.

use dkv::assembly::{open_shard, Ceiling, ShardParts};
use dkv::budget::MemoryLimits;
use dkv::cluster::config::parse_nodes;
use dkv::cluster::ClusterConfig;
use dkv::datadir::DataDir;
use dkv::limits::CLUSTER_SECRET_SIZE_ADVISED;
use dkv::limits::{
    ANTI_ENTROPY_INTERVAL_MS_DEFAULT, COMPACTION_DEAD_MIN_PERCENT_OF_SEGMENT_DEFAULT,
    COMPACTION_DEAD_PERCENT_DEFAULT, CONNECTIONS_MAX_DEFAULT, CONNECTIONS_MAX_LIMIT,
    FAILURE_THRESHOLD_DEFAULT, GOSSIP_INTERVAL_MS_DEFAULT, IDLE_TIMEOUT_MS_DEFAULT, PORT_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT, SEGMENT_SIZE_MAX_DEFAULT, SEGMENT_SIZE_MAX_LIMIT, SHARDS_MAX,
    TOKEN_SIZE_MAX, TOMBSTONE_WINDOW_MS_DEFAULT,
};
use dkv::limits::{
    BUFFER_BYTES_LIMIT, CONNECTION_BUFFER_BYTES_MAX_DEFAULT, CONNECTION_BUFFER_BYTES_MIN,
    FRAME_TIMEOUT_MS_DEFAULT, FRAME_TIMEOUT_MS_MAX, FRAME_TIMEOUT_MS_MIN,
    NODE_BUFFER_BYTES_MAX_DEFAULT,
};
use dkv::protocol::Consistency;
use dkv::server::{self, worker::wall_ms, ServerConfig};
use dkv::shard::SyncPolicy;
use dkv::storage::logstore::LogConfig;
use dkv::storage::vfs::RealVfs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

fn usage(opts: &getopts::Options) -> String {
    let brief = "\
Usage: kvd [OPTIONS]

Runs one dkv node: a key-value store served over the dkv binary protocol (protocol.md) on one
TCP port, with one event-loop thread per shard. Stop it with SIGINT or SIGTERM: every shard
syncs its data, tells each client connection SHUTTING_DOWN (protocol.md § 6) and exits.

Logging: set RUST_LOG (error, warn, info, debug, trace); default info.

Secrets: the cluster secret, the client token and the admin token each come from exactly one
of the option, its -file variant (the file's content, one trailing newline removed) or an
environment variable (DKV_CLUSTER_SECRET, DKV_CLIENT_TOKEN, DKV_ADMIN_TOKEN); giving two is
an error. Prefer the file or
the variable: an option's value is visible to every user of the machine in `ps`.";
    opts.usage(brief)
}

fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt(
        "l",
        "listen",
        &format!("address to listen on for clients and peers [default: 127.0.0.1:{PORT_DEFAULT}]"),
        "ADDR",
    );
    o.optopt(
        "d",
        "data",
        "data directory (created if missing) [default: ./kvdata]",
        "DIR",
    );
    o.optopt(
        "s",
        "shards",
        &format!("event-loop threads, each owning a slice of the keys [default: number of cores, at most {SHARDS_MAX}]"),
        "K",
    );
    o.optopt(
        "",
        "sync",
        "when writes are acknowledged: always (after fsync, group-committed), interval:MS (fsync every MS ms), never (OS decides) [default: interval:1000]",
        "POLICY",
    );
    o.optopt(
        "",
        "segment-size-mb",
        &format!(
            "seal a log segment when it reaches this size [default: {}]",
            SEGMENT_SIZE_MAX_DEFAULT / (1024 * 1024)
        ),
        "MB",
    );
    o.optopt(
        "",
        "compaction-dead-percent",
        &format!("compact a sealed segment once this share of it is dead (overwritten, deleted, expired) [default: {COMPACTION_DEAD_PERCENT_DEFAULT}]"),
        "PCT",
    );
    disk_options(&mut o);
    o.optopt(
        "",
        "max-connections",
        &format!("connection limit of the node; lowered to fit the open-file limit [default: {CONNECTIONS_MAX_DEFAULT}]"),
        "N",
    );
    o.optopt(
        "",
        "idle-timeout-ms",
        &format!("close connections idle this long [default: {IDLE_TIMEOUT_MS_DEFAULT}]"),
        "MS",
    );
    o.optopt(
        "",
        "client-token",
        "require clients to present this token in HELLO [default: none, HELLO optional]",
        "TOKEN",
    );
    o.optopt(
        "",
        "admin-token",
        &format!(
            "allow the admin opcodes (ANTI_ENTROPY, COMPACT, CLUSTER_ADMIN) only to clients whose \
             HELLO presents this token (kvcat --token); without it they are allowed only from \
             loopback (or set {ADMIN_TOKEN_ENV})"
        ),
        "TOKEN",
    );
    secret_options(&mut o);
    memory_options(&mut o);
    cluster_options(&mut o);
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

/// Environment variable holding the cluster secret (instead of an option).
const CLUSTER_SECRET_ENV: &str = "DKV_CLUSTER_SECRET";
/// Environment variable holding the client token (instead of an option).
const CLIENT_TOKEN_ENV: &str = "DKV_CLIENT_TOKEN";
/// Environment variable holding the admin token (instead of an option).
const ADMIN_TOKEN_ENV: &str = "DKV_ADMIN_TOKEN";

/// The file variants of the secret options (the secrets themselves are where they always were).
fn secret_options(o: &mut getopts::Options) {
    o.optopt(
        "",
        "client-token-file",
        &format!("like --client-token, read from FILE (or set {CLIENT_TOKEN_ENV})"),
        "FILE",
    );
    o.optopt(
        "",
        "admin-token-file",
        &format!("like --admin-token, read from FILE (or set {ADMIN_TOKEN_ENV})"),
        "FILE",
    );
    o.optopt(
        "",
        "cluster-secret-file",
        &format!("like --cluster-secret, read from FILE (or set {CLUSTER_SECRET_ENV})"),
        "FILE",
    );
}

/// A secret from exactly one of `--NAME`, `--NAME-file` or the environment variable `env`;
/// `None` if none is given. Errors: two sources, an unreadable or empty file, an empty value.
fn secret_from(m: &getopts::Matches, name: &str, env: &str) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let file_opt = format!("{name}-file");
    let direct = m.opt_str(name);
    let file = m.opt_str(&file_opt);
    let from_env = std::env::var_os(env);
    let given: Vec<String> = [
        direct.as_ref().map(|_| format!("--{name}")),
        file.as_ref().map(|_| format!("--{file_opt}")),
        from_env.as_ref().map(|_| env.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err(format!(
            "{} given: set the {name} one way only",
            given.join(" and ")
        ));
    }
    let value = if let Some(v) = direct {
        log::warn!(
            "--{name} is visible to every user of this machine (ps); prefer --{file_opt} or {env}"
        );
        v.into_bytes()
    } else if let Some(path) = file {
        let mut v = std::fs::read(&path).map_err(|e| format!("--{file_opt} {path}: {e}"))?;
        // Editors and `echo` end files with a newline that is not part of the secret.
        if v.last() == Some(&b'\n') {
            v.pop();
            if v.last() == Some(&b'\r') {
                v.pop();
            }
        }
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!(
                    "--{file_opt} {path} can be read by other users (mode {:o}); chmod 600 it",
                    meta.permissions().mode() & 0o777
                );
            }
        }
        if v.is_empty() {
            return Err(format!("--{file_opt} {path} is empty"));
        }
        v
    } else if let Some(v) = from_env {
        v.as_bytes().to_vec()
    } else {
        return Ok(None);
    };
    if value.is_empty() {
        return Err(format!("the {name} must not be empty"));
    }
    Ok(Some(value))
}

/// Compaction thresholds and the disk-space reserve (storage/policy.rs).
fn disk_options(o: &mut getopts::Options) {
    o.optopt(
        "",
        "compaction-min-dead-percent-of-segment",
        &format!("start a compaction only once the candidate segments hold this percentage of --segment-size-mb in dead bytes (the active segment is sealed for compaction once it alone meets both thresholds) [default: {COMPACTION_DEAD_MIN_PERCENT_OF_SEGMENT_DEFAULT}]"),
        "PCT",
    );
    o.optopt(
        "",
        "disk-reserve-mb",
        "free disk space kept so that compaction can always run: writes are refused (STORAGE_ERROR \"disk full\") below it, and compaction works below its thresholds under twice it. auto = 2 x min(segment size, live data) per shard + 1 MiB [default: auto]",
        "MB|auto",
    );
}

/// The options of the memory budget of connection buffers (`dkv::budget`).
fn memory_options(o: &mut getopts::Options) {
    o.optopt(
        "",
        "connection-buffer-kb",
        &format!(
            "per connection: unsent replies plus the room reserved for replies still to come              (a GET reserves a largest value); past it the connection is not read until it              reads its replies [default: {}]",
            CONNECTION_BUFFER_BYTES_MAX_DEFAULT / 1024
        ),
        "KB",
    );
    o.optopt(
        "",
        "node-buffer-mb",
        &format!(
            "node-wide: bytes in connection read and write buffers; past it read buffers stop              growing and the connections holding the most unread replies are dropped              [default: {}]",
            NODE_BUFFER_BYTES_MAX_DEFAULT / (1024 * 1024)
        ),
        "MB",
    );
    o.optopt(
        "",
        "frame-timeout-ms",
        &format!(
            "a frame must arrive whole this long after its first byte, or the connection is              dropped [default: {FRAME_TIMEOUT_MS_DEFAULT}]"
        ),
        "MS",
    );
}

/// The memory limits from the options.
fn memory_limits(m: &getopts::Matches) -> Result<MemoryLimits, String> {
    let kb: usize = parse_num(
        m,
        "connection-buffer-kb",
        CONNECTION_BUFFER_BYTES_MAX_DEFAULT / 1024,
    )?;
    let connection_bytes_max = kb.saturating_mul(1024);
    if !(CONNECTION_BUFFER_BYTES_MIN..=BUFFER_BYTES_LIMIT).contains(&connection_bytes_max) {
        return Err(format!(
            "--connection-buffer-kb must be between {} and {}",
            CONNECTION_BUFFER_BYTES_MIN.div_ceil(1024),
            BUFFER_BYTES_LIMIT / 1024
        ));
    }
    let mb: usize = parse_num(
        m,
        "node-buffer-mb",
        NODE_BUFFER_BYTES_MAX_DEFAULT / (1024 * 1024),
    )?;
    let node_bytes_max = mb.saturating_mul(1024 * 1024);
    if !(CONNECTION_BUFFER_BYTES_MIN..=BUFFER_BYTES_LIMIT).contains(&node_bytes_max) {
        return Err(format!(
            "--node-buffer-mb must be between {} and {}",
            CONNECTION_BUFFER_BYTES_MIN.div_ceil(1024 * 1024),
            BUFFER_BYTES_LIMIT / (1024 * 1024)
        ));
    }
    let frame_timeout_ms: u64 = parse_num(m, "frame-timeout-ms", FRAME_TIMEOUT_MS_DEFAULT)?;
    if !(FRAME_TIMEOUT_MS_MIN..=FRAME_TIMEOUT_MS_MAX).contains(&frame_timeout_ms) {
        return Err(format!(
            "--frame-timeout-ms must be between {FRAME_TIMEOUT_MS_MIN} and {FRAME_TIMEOUT_MS_MAX}"
        ));
    }
    Ok(MemoryLimits {
        connection_bytes_max,
        node_bytes_max,
        frame_timeout_ms,
    })
}

/// The options of the cluster issue (all optional: without `--nodes` the node runs alone).
fn cluster_options(o: &mut getopts::Options) {
    o.optopt(
        "",
        "id",
        "this node's id in --nodes, or a new id with --join [default: 0 alone, required with --nodes or --join]",
        "ID",
    );
    o.optopt(
        "",
        "nodes",
        "every node of the cluster, this one included: ID=HOST:PORT,... e.g. 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 (--listen defaults to this node's address)",
        "LIST",
    );
    o.optopt(
        "",
        "join",
        "join a running cluster through any of its nodes (instead of --nodes): fetches the cluster's ring map from HOST:PORT (retrying for up to 30 s), then starts as a new node that owns nothing yet; needs --id (an id no node has), --listen (the address the other nodes reach this node at) and the cluster secret",
        "HOST:PORT",
    );
    o.optopt(
        "",
        "replicas",
        "copies of each key (N) [default: min(3, nodes)]",
        "N",
    );
    o.optopt(
        "",
        "cluster-secret",
        "secret the nodes prove to each other without sending it; with --nodes or --join, this, --cluster-secret-file or DKV_CLUSTER_SECRET is required",
        "SECRET",
    );
    o.optopt(
        "",
        "gossip-interval-ms",
        &format!("time between two heartbeats [default: {GOSSIP_INTERVAL_MS_DEFAULT}]"),
        "MS",
    );
    o.optopt(
        "",
        "failure-threshold",
        &format!("gossip intervals without a heartbeat before a node is marked failed [default: {FAILURE_THRESHOLD_DEFAULT}]"),
        "BEATS",
    );
    o.optopt(
        "",
        "hinted-handoff",
        "keep writes for unreachable replicas and deliver them later: on|off [default: on]",
        "on|off",
    );
    o.optopt(
        "",
        "anti-entropy-interval-ms",
        &format!("time between anti-entropy rounds [default: {ANTI_ENTROPY_INTERVAL_MS_DEFAULT}]"),
        "MS",
    );
    o.optopt(
        "",
        "tombstone-window-ms",
        &format!(
            "a replica failed for longer no longer holds back tombstone collection, and a node \
             away for longer rejoins through a full anti-entropy round before serving reads \
             [default: {TOMBSTONE_WINDOW_MS_DEFAULT}]"
        ),
        "MS",
    );
    o.optopt(
        "",
        "read-repair",
        "reads repair the stale replicas they find: on|off [default: on]",
        "on|off",
    );
    o.optopt(
        "",
        "default-consistency",
        "level of a request that asks for the node's default (protocol.md § 5): one|quorum|all [default: quorum]",
        "LEVEL",
    );
    o.optopt(
        "",
        "request-timeout-ms",
        &format!(
            "how long a coordinator waits for replicas [default: {REQUEST_TIMEOUT_MS_DEFAULT}]"
        ),
        "MS",
    );
    // The elastic cluster (issue 12).
    o.optopt(
        "",
        "replace",
        "with --join: take over dead node ID's partitions (streamed from the surviving copies) \
         instead of taking a share from every node",
        "ID",
    );
    o.optopt(
        "",
        "stream-mb-per-s",
        "byte rate of the partition copies this node receives when nodes join, leave or are \
         replaced, in MB/s (0 = unlimited; changeable with kvcat CLUSTER THROTTLE) [default: 0]",
        "MB",
    );
    o.optopt(
        "",
        "transfer-limit",
        &format!(
            "partition copies this node runs at once [default: {}]",
            dkv::cluster::antientropy::TRANSFER_LIMIT_DEFAULT
        ),
        "N",
    );
    o.optopt(
        "",
        "slow-ms",
        &format!(
            "log requests answered later than this (opcode, key length, consistency, where the \
             time went), at most {} lines a second per shard; 0 = never [default: {}]",
            dkv::server::slowlog::SLOW_LOG_LINES_PER_S,
            dkv::server::slowlog::SLOW_MS_DEFAULT
        ),
        "MS",
    );
    o.optopt(
        "",
        "restore",
        "before starting, fill the (fresh) --data directory from a snapshot directory taken \
         by kvcat SNAPSHOT TAKE (DATA/snapshots/NAME), after checking every file's checksum",
        "PATH",
    );
    o.optopt(
        "",
        "metrics-listen",
        "serve HTTP on ADDR (off by default), e.g. 127.0.0.1:9401: Prometheus metrics at \
         /metrics and the key-value API PUT/GET/DELETE /kv/KEY (README, Operating)",
        "ADDR",
    );
    // Clocks (issue 10).
    o.optopt(
        "",
        "max-clock-offset-ms",
        &format!(
            "a node whose clock is further than this from the cluster's (the median of its \
             measured offsets to its peers) refuses to coordinate writes (CLOCK_OFFSET); \
             replicas refuse versions further than this ahead of the cluster's clock \
             [default: {}]",
            dkv::limits::MAX_CLOCK_OFFSET_MS_DEFAULT
        ),
        "MS",
    );
}

/// How long `--join` keeps asking the seed for the cluster's ring map.
const JOIN_SEED_WAIT_MS: u64 = 30_000;
/// First pause between two asks; doubled each time up to [`JOIN_RETRY_MS_MAX`].
const JOIN_RETRY_MS_MIN: u64 = 100;
/// Longest pause between two asks.
const JOIN_RETRY_MS_MAX: u64 = 2_000;
/// Time for one ask (connect, handshake, RING) before it counts as failed.
const JOIN_ASK_TIMEOUT_MS: u64 = 2_000;

/// The ring map of the cluster `seed` belongs to, asked over the client protocol (RING),
/// with a bounded backoff for up to [`JOIN_SEED_WAIT_MS`]; `token`: the client token to
/// present. Returns the map and the seed's address (the one empty addresses stand for).
fn fetch_seed_map(
    seed: &str,
    token: &[u8],
) -> Result<(dkv::protocol::ringmap::RingMap, SocketAddr), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_millis(JOIN_SEED_WAIT_MS);
    let timeout = Duration::from_millis(JOIN_ASK_TIMEOUT_MS);
    let mut pause_ms = JOIN_RETRY_MS_MIN;
    let ask = || -> Result<(dkv::protocol::ringmap::RingMap, SocketAddr), String> {
        let addr = seed
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {seed}: {e}"))?
            .next()
            .ok_or_else(|| format!("{seed} resolves to no address"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut c = dkv::client::Client::from_stream(stream);
        c.set_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let hello = c
            .call(&dkv::protocol::Request::Hello {
                version: dkv::protocol::PROTOCOL_VERSION,
                role: dkv::protocol::Role::Client,
                node_id: 0,
                token,
            })
            .map_err(|e| e.to_string())?;
        dkv::client::expect_ok(hello).map_err(|e| e.to_string())?;
        let map = c.ring().map_err(|e| e.to_string())?;
        Ok((map, addr))
    };
    loop {
        match ask() {
            Ok(found) => return Ok(found),
            Err(why) => {
                if Instant::now() + Duration::from_millis(pause_ms) > deadline {
                    return Err(format!(
                        "--join {seed}: no ring map from the seed within {} s (last error: {why}); is a node of the cluster listening there?",
                        JOIN_SEED_WAIT_MS / 1000
                    ));
                }
                log::warn!("--join {seed}: {why}; retrying in {pause_ms} ms");
                std::thread::sleep(Duration::from_millis(pause_ms));
                pause_ms = (pause_ms * 2).min(JOIN_RETRY_MS_MAX);
            }
        }
    }
}

/// The cluster configuration from the options, `None` without `--nodes` or `--join`. Fills
/// `listen` with this node's address from the list when `--listen` was not given. With
/// `--join`, asks the seed for the cluster's ring map first (see [`fetch_seed_map`]).
fn cluster_config(
    m: &getopts::Matches,
    listen: &mut Option<SocketAddr>,
) -> Result<(u32, Option<ClusterConfig>), String> {
    let id: Option<u32> = match m.opt_str("id") {
        None => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| format!("--id: {s:?} is not a node id"))?,
        ),
    };
    let join = m.opt_str("join");
    if join.is_some() && m.opt_present("nodes") {
        return Err(
            "--join and --nodes exclude each other: --nodes starts a cluster, --join adds a node to a running one"
                .into(),
        );
    }
    let list = m.opt_str("nodes");
    if list.is_none() && join.is_none() {
        for name in [
            "replicas",
            "cluster-secret",
            "cluster-secret-file",
            "gossip-interval-ms",
            "failure-threshold",
            "hinted-handoff",
            "read-repair",
            "request-timeout-ms",
            "anti-entropy-interval-ms",
            "tombstone-window-ms",
            "default-consistency",
            "max-clock-offset-ms",
        ] {
            if m.opt_present(name) {
                return Err(format!("--{name} needs --nodes or --join"));
            }
        }
        return Ok((id.unwrap_or(0), None));
    }
    let mut c = match (&list, &join) {
        (Some(list), _) => {
            let id = id.ok_or("--nodes needs --id (this node's id in the list)")?;
            let nodes = parse_nodes(list).map_err(|e| format!("--nodes: {e}"))?;
            let replicas = parse_num(m, "replicas", nodes.len().min(3))?;
            ClusterConfig::with_defaults(id, nodes, replicas)
        }
        (None, _) => {
            let id = id.ok_or("--join needs --id (a new id: no node of the cluster has it)")?;
            let own = listen
                .ok_or("--join needs --listen (the address the other nodes reach this node at)")?;
            if m.opt_present("replicas") {
                return Err("--replicas is the cluster's: a node that joins takes it from the cluster's ring map"
                    .into());
            }
            // This node alone until the seed's map is in (below, after the cheap checks).
            ClusterConfig::single(id, own)
        }
    };
    let id = c.node_id;
    let needs = if join.is_some() { "--join" } else { "--nodes" };
    c.secret = secret_from(m, "cluster-secret", CLUSTER_SECRET_ENV)?.ok_or_else(|| {
        format!(
            "{needs} needs --cluster-secret-file, {CLUSTER_SECRET_ENV} or --cluster-secret (peers must prove it)"
        )
    })?;
    if c.secret.len() < CLUSTER_SECRET_SIZE_ADVISED {
        log::warn!(
            "the cluster secret has {} bytes; use at least {CLUSTER_SECRET_SIZE_ADVISED} random ones (e.g. head -c 32 /dev/urandom | base64)",
            c.secret.len()
        );
    }
    c.gossip_interval_ms = parse_num(m, "gossip-interval-ms", c.gossip_interval_ms)?;
    c.failure_threshold = parse_num(m, "failure-threshold", c.failure_threshold)?;
    c.request_timeout_ms = parse_num(m, "request-timeout-ms", c.request_timeout_ms)?;
    c.anti_entropy_interval_ms =
        parse_num(m, "anti-entropy-interval-ms", c.anti_entropy_interval_ms)?;
    c.tombstone_window_ms = parse_num(m, "tombstone-window-ms", c.tombstone_window_ms)?;
    c.max_clock_offset_ms = parse_num(m, "max-clock-offset-ms", c.max_clock_offset_ms)?;
    c.hinted_handoff = match m.opt_str("hinted-handoff").as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => {
            return Err(format!(
                "--hinted-handoff: expected on or off, got {other:?}"
            ))
        }
    };
    c.read_repair = match m.opt_str("read-repair").as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => return Err(format!("--read-repair: expected on or off, got {other:?}")),
    };
    if let Some(word) = m.opt_str("default-consistency") {
        c.default_consistency = Consistency::parse(&word).ok_or_else(|| {
            format!("--default-consistency: expected one, quorum or all, got {word:?}")
        })?;
    }
    if let Some(seed) = &join {
        let token = secret_from(m, "client-token", CLIENT_TOKEN_ENV)?.unwrap_or_default();
        let (map, seed_addr) = fetch_seed_map(seed, &token)?;
        log::info!(
            "--join {seed}: the cluster's ring is version {} with nodes {:?} (N={}); joining as \
             node {id}",
            map.version(),
            map.ownership.nodes(),
            map.ownership.replicas()
        );
        c.apply_join(&map, seed_addr).map_err(|e| e.to_string())?;
    }
    c.validate().map_err(|e| e.to_string())?;
    let own = c
        .addr_of(id)
        .expect("validate checked the own id is listed");
    match listen {
        None => *listen = Some(own),
        Some(l) if l.port() != own.port() => {
            return Err(format!(
                "--listen {l} does not match this node's address {own} in --nodes"
            ))
        }
        Some(_) => {}
    }
    Ok((id, Some(c)))
}

fn parse_num<T: std::str::FromStr>(
    m: &getopts::Matches,
    name: &str,
    default: T,
) -> Result<T, String> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("--{name}: {s:?} is not a valid number")),
    }
}

fn log_config(m: &getopts::Matches) -> Result<LogConfig, String> {
    let mb: u64 = parse_num(
        m,
        "segment-size-mb",
        SEGMENT_SIZE_MAX_DEFAULT / (1024 * 1024),
    )?;
    let segment_size_max = mb.saturating_mul(1024 * 1024);
    if mb == 0 || segment_size_max > SEGMENT_SIZE_MAX_LIMIT {
        return Err(format!(
            "--segment-size-mb must be between 1 and {}",
            SEGMENT_SIZE_MAX_LIMIT / (1024 * 1024)
        ));
    }
    let pct: u8 = parse_num(
        m,
        "compaction-dead-percent",
        COMPACTION_DEAD_PERCENT_DEFAULT,
    )?;
    if pct == 0 || pct > 100 {
        return Err("--compaction-dead-percent must be between 1 and 100".into());
    }
    let min_pct: u8 = parse_num(
        m,
        "compaction-min-dead-percent-of-segment",
        COMPACTION_DEAD_MIN_PERCENT_OF_SEGMENT_DEFAULT,
    )?;
    if min_pct > 100 {
        return Err("--compaction-min-dead-percent-of-segment must be between 0 and 100".into());
    }
    let space_reserve_bytes = match m.opt_str("disk-reserve-mb").as_deref() {
        None | Some("auto") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .ok()
                .and_then(|mb| mb.checked_mul(1024 * 1024))
                .ok_or_else(|| format!("--disk-reserve-mb: {s:?} is not a number of MB or auto"))?,
        ),
    };
    Ok(LogConfig {
        segment_size_max,
        compaction_dead_percent: pct,
        compaction_dead_bytes_min: segment_size_max * min_pct as u64 / 100,
        space_reserve_bytes,
        ..LogConfig::default()
    })
}

/// Open every shard's parts (store, clock ceiling, hints) in parallel: recovery of a large node
/// is bound by reading hint files and segments, which the shards can do side by side.
fn open_shards(
    datadir: &DataDir,
    cfg: &ServerConfig,
    log_cfg: &LogConfig,
) -> Result<Vec<ShardParts>, String> {
    let results: Vec<Result<ShardParts, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cfg.shards)
            .map(|shard| {
                let dir = datadir.shard_dir(shard);
                let log_cfg = log_cfg.clone();
                let cluster = cfg.cluster.as_ref();
                scope.spawn(move || {
                    let started = std::time::Instant::now();
                    let hints = cluster.map(|c| (c, c.hint_dir.as_deref()));
                    let (mut parts, report) =
                        open_shard(RealVfs, shard, &dir, log_cfg, hints, Ceiling::Durable)
                            .map_err(|e| format!("shard {shard} ({}): {e}", dir.display()))?;
                    let ms = started.elapsed().as_millis() as u64;
                    parts.store.set_recovery_ms(ms);
                    log::info!(
                        "shard {shard}: recovered {} keys from {} segments ({} from hint files, {} scanned) in {ms} ms",
                        report.keys,
                        report.segments,
                        report.segments_from_hints,
                        report.segments_scanned
                    );
                    if let Some(t) = &report.truncated {
                        log::warn!("shard {shard}: cut a torn tail off the newest segment: {t:?}");
                    }
                    for c in &report.corrupt {
                        log::error!(
                            "shard {shard}: corrupt record in segment {} at offset {}: {} (not served)",
                            c.segment, c.offset, c.reason
                        );
                    }
                    if report.corrupt_count > report.corrupt.len() as u64 {
                        log::error!("shard {shard}: {} corrupt records in all", report.corrupt_count);
                    }
                    for (seg, why) in &report.hints_rejected {
                        log::warn!("shard {shard}: hint file of segment {seg} unusable ({why}); scanned the segment");
                    }
                    let pending = parts.hints.as_ref().map_or(0, |h| h.stats().pending);
                    if pending > 0 {
                        log::info!("shard {shard}: {pending} hints recovered");
                    }
                    Ok(parts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("store recovery panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect()
}

fn config(m: &getopts::Matches) -> Result<(ServerConfig, String), String> {
    let mut listen: Option<SocketAddr> = match m.opt_str("listen") {
        None => None,
        Some(s) => Some(s.parse().map_err(|_| {
            format!("--listen: {s:?} is not an address like 127.0.0.1:{PORT_DEFAULT}")
        })?),
    };
    let (node_id, cluster) = cluster_config(m, &mut listen)?;
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], PORT_DEFAULT)));
    let slow_ms: u64 = parse_num(m, "slow-ms", dkv::server::slowlog::SLOW_MS_DEFAULT)?;
    let metrics_listen: Option<SocketAddr> = match m.opt_str("metrics-listen") {
        None => None,
        Some(s) => Some(s.parse().map_err(|_| {
            format!("--metrics-listen: {s:?} is not an address like 127.0.0.1:9401")
        })?),
    };
    // A node started with --join asks the leader to admit it (or to let it replace a dead
    // node) until the ring lists it.
    let replace: Option<u32> = match m.opt_str("replace") {
        None => None,
        Some(_) if !m.opt_present("join") => {
            return Err(
                "--replace needs --join (the new node joins in the dead one's place)".into(),
            )
        }
        Some(s) => Some(
            s.parse()
                .map_err(|_| format!("--replace: {s:?} is not a node id"))?,
        ),
    };
    if replace == Some(node_id) {
        return Err("--replace names the dead node: give this node a new --id".into());
    }
    let join = m.opt_present("join").then(|| {
        let addr = listen.to_string();
        match replace {
            Some(old) => dkv::cluster::ringpeer::ChangeRequest::Replace {
                old,
                new: node_id,
                addr,
            },
            None => dkv::cluster::ringpeer::ChangeRequest::Join {
                node: node_id,
                addr,
            },
        }
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards: usize = parse_num(m, "shards", cores.min(SHARDS_MAX))?;
    if shards == 0 || shards > SHARDS_MAX {
        return Err(format!(
            "--shards must be between 1 and {SHARDS_MAX}, got {shards}"
        ));
    }
    let connections_max: usize = parse_num(m, "max-connections", CONNECTIONS_MAX_DEFAULT)?;
    if connections_max == 0 || connections_max > CONNECTIONS_MAX_LIMIT {
        return Err(format!(
            "--max-connections must be between 1 and {CONNECTIONS_MAX_LIMIT}, got {connections_max}"
        ));
    }
    let idle_timeout_ms: u64 = parse_num(m, "idle-timeout-ms", IDLE_TIMEOUT_MS_DEFAULT)?;
    if idle_timeout_ms == 0 {
        return Err("--idle-timeout-ms must be above 0".into());
    }
    let sync = SyncPolicy::parse(&m.opt_str("sync").unwrap_or_else(|| "interval:1000".into()))
        .map_err(|e| format!("--sync: {e}"))?;
    let client_token = secret_from(m, "client-token", CLIENT_TOKEN_ENV)?;
    if !listen.ip().is_loopback() && client_token.is_none() {
        log::warn!(
            "listening on {listen}, beyond loopback, without a client token: anyone who can reach this port can read and write every key; set --client-token-file or {CLIENT_TOKEN_ENV}"
        );
    }
    if client_token
        .as_ref()
        .is_some_and(|t| t.len() > TOKEN_SIZE_MAX)
    {
        return Err(format!(
            "--client-token is longer than {TOKEN_SIZE_MAX} bytes"
        ));
    }
    let admin_token = secret_from(m, "admin-token", ADMIN_TOKEN_ENV)?;
    if admin_token
        .as_ref()
        .is_some_and(|t| t.len() > TOKEN_SIZE_MAX)
    {
        return Err(format!(
            "--admin-token is longer than {TOKEN_SIZE_MAX} bytes"
        ));
    }
    if admin_token.is_some() && admin_token == client_token {
        return Err(
            "the admin token is the client token: every client would be an admin; give the \
             admin a token of its own"
                .into(),
        );
    }
    let memory = memory_limits(m)?;
    let stream_mb: f64 = parse_num(m, "stream-mb-per-s", 0.0)?;
    if !(0.0..=1e6).contains(&stream_mb) {
        return Err(format!(
            "--stream-mb-per-s must be between 0 (unlimited) and 1000000, got {stream_mb}"
        ));
    }
    let transfer_limit: usize = parse_num(
        m,
        "transfer-limit",
        dkv::cluster::antientropy::TRANSFER_LIMIT_DEFAULT,
    )?;
    if !(1..=dkv::limits::PARTITION_COUNT).contains(&transfer_limit) {
        return Err(format!(
            "--transfer-limit must be between 1 and {}, got {transfer_limit}",
            dkv::limits::PARTITION_COUNT
        ));
    }
    let data = m.opt_str("data").unwrap_or_else(|| "kvdata".into());
    // Hints are kept durably beside the shards' stores.
    let cluster = cluster.map(|mut c| {
        c.hint_dir = Some(Path::new(&data).join("hints"));
        c
    });
    Ok((
        ServerConfig {
            listen,
            shards,
            connections_max,
            idle_timeout_ms,
            node_id,
            sync,
            client_token,
            admin_token,
            cluster,
            memory,
            join,
            stream_bytes_per_s: (stream_mb * 1_048_576.0) as u64,
            transfer_limit,
            metrics_listen,
            snapshot_root: None,
            slow_ms,
        },
        data,
    ))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let opts = options();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let m = match opts.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kvd: {e}\n\n{}", usage(&opts));
            return ExitCode::from(2);
        }
    };
    if m.opt_present("help") {
        print!("{}", usage(&opts));
        return ExitCode::SUCCESS;
    }
    if m.opt_present("version") {
        println!("kvd {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if !m.free.is_empty() {
        eprintln!("kvd: unexpected argument {:?} (see kvd --help)", m.free[0]);
        return ExitCode::from(2);
    }
    let (cfg, data) = match config(&m) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvd: {e}");
            return ExitCode::from(2);
        }
    };
    let log_cfg = match log_config(&m) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvd: {e}");
            return ExitCode::from(2);
        }
    };
    let datadir = match DataDir::open(Path::new(&data), cfg.node_id, cfg.shards) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kvd: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(snapshot) = m.opt_str("restore") {
        match datadir.restore_snapshot(Path::new(&snapshot), cfg.shards) {
            Ok((files, bytes)) => log::info!(
                "restored snapshot {snapshot} into {data}: {files} files, {bytes} bytes checked"
            ),
            Err(e) => {
                eprintln!("kvd: cannot restore {snapshot}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let mut cfg = cfg;
    cfg.snapshot_root = Some(datadir.snapshot_root());
    // Every shard keeps its data on the same disk: the computed reserve covers each.
    let log_cfg = LogConfig {
        stores_sharing_disk: cfg.shards as u32,
        ..log_cfg
    };
    let parts = match open_shards(&datadir, &cfg, &log_cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kvd: cannot open the store: {e}");
            return ExitCode::from(1);
        }
    };
    let result = server::run(cfg, parts, wall_ms());
    drop(datadir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvd: {e}");
            ExitCode::from(1)
        }
    }
}
