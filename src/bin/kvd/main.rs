//! `kvd`: one dkv node. Parses options, opens the stores, runs the shard event loops.

use dkv::assembly::{open_shard, Ceiling, ShardParts};
use dkv::budget::MemoryLimits;
use dkv::cluster::config::parse_nodes;
use dkv::cluster::{ClusterConfig, Conflicts};
use dkv::datadir::DataDir;
use dkv::limits::CLUSTER_SECRET_SIZE_ADVISED;
use dkv::limits::{
    ANTI_ENTROPY_INTERVAL_MS_DEFAULT, COMPACTION_DEAD_MIN_PERCENT_OF_SEGMENT_DEFAULT,
    COMPACTION_DEAD_PERCENT_DEFAULT, CONNECTIONS_MAX_DEFAULT, CONNECTIONS_MAX_LIMIT,
    FAILURE_THRESHOLD_DEFAULT, GOSSIP_INTERVAL_MS_DEFAULT, IDLE_TIMEOUT_MS_DEFAULT, PORT_DEFAULT,
    READ_REPAIR_EVERY_DEFAULT, REQUEST_TIMEOUT_MS_DEFAULT, SEGMENT_SIZE_MAX_DEFAULT,
    SEGMENT_SIZE_MAX_LIMIT, SHARDS_MAX, TOKEN_SIZE_MAX, TOMBSTONE_WINDOW_MS_DEFAULT,
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

mod join;
mod options;

use join::cluster_config;
use options::*;

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
