//! `--join` and `--nodes`: the cluster configuration from the options, and the ring map
//! fetched from a seed node for a joining one.

use super::*;

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
pub(super) fn cluster_config(
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
            "read-repair-every",
            "request-timeout-ms",
            "anti-entropy-interval-ms",
            "tombstone-window-ms",
            "default-consistency",
            "max-clock-offset-ms",
            "conflicts",
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
    c.read_repair_every = parse_num(m, "read-repair-every", c.read_repair_every)?;
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
    if let Some(word) = m.opt_str("conflicts") {
        c.conflicts = Conflicts::parse(&word)
            .ok_or_else(|| format!("--conflicts: expected lww or siblings, got {word:?}"))?;
    }
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
