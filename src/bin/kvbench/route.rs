//! `--route ring`: send each dkv request to an owner of its key, by the ring map (RING,
//! protocol.md § 11.1), instead of spreading requests over the targets.
//!
//! The map is fetched before the first phase from the first target that answers RING.
//! Connections then go to the ring's nodes (every node, whatever `--target` listed), each
//! thread's connections spread over all nodes, and the engine sends each request on a ready
//! connection to the first owner of its key that has one (primary first), keeping
//! `--pipeline` × its connections in flight per thread. A request whose owners all have no
//! connection up goes to any connection (any node coordinates any request) and is counted as
//! sent to a non-owner. A stale map costs hops, never wrong answers.
//!
//! **Refresh.** The ring changes while kvbench runs (nodes join, leave, partitions flip), so
//! a refresher thread ([`spawn_refresher`]) asks one node for the map every
//! [`RING_REFRESH_INTERVAL_MS`] on a connection it keeps (RING is a few KiB), and sooner
//! (at most every [`REFRESH_AFTER_ERROR_MS`]) when a load connection failed. A map of a
//! higher version is published in the [`RouteCell`]; each load thread notices the new
//! generation on its next loop and re-routes: connections to nodes that left the ring take
//! no new requests and close once their replies are in, a node new to the ring gets as many
//! connections from each thread as the thread has to any other node (so the run may hold
//! more connections than `--connections` after a join), pinned to its shards as usual.
//!
//! With shard-aware connections (the default, protocol.md § 11.2) each thread's connections
//! to a node are also pinned to its shards, and the engine prefers the owner's connection
//! pinned to the key's shard (`partition mod K`), so the request crosses no shard either.

use crate::workload::put_key;
use dkv::client::{Client, RING_REFRESH_INTERVAL_MS};
use dkv::hash::partition_of;
use dkv::limits::PARTITION_COUNT;
use dkv::protocol::ringmap::RingMap;
use dkv::protocol::{Role, Status};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// After a load connection failed, the soonest the refresher asks for the map again (a node
/// that died fails every connection to it at once: one refresh covers them all).
pub const REFRESH_AFTER_ERROR_MS: u64 = 100;

/// How often the refresher thread wakes to look at the clock, the stop flag and the
/// refresh wanted after a failure.
const REFRESHER_TICK_MS: u64 = 20;

/// The refresher's read timeout on its RING connection: a node that does not answer is
/// left for another.
const REFRESH_TIMEOUT_MS: u64 = 2_000;

/// Slots of a connection under `--route ring`, as a multiple of `--pipeline`: in the open loop
/// a due request goes to a connection of its key's owner, so one connection may briefly hold
/// more than its even share (the closed loop keeps `--pipeline` on each).
pub const ROUTE_SLOTS_PER_PIPELINE: usize = 4;

/// How requests pick their connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteMode {
    /// Round robin over the connections (and `--target`s).
    None,
    /// To an owner of the key, by the ring map (dkv only).
    Ring,
}

impl RouteMode {
    /// Parse `ring` or `none`.
    pub fn parse(s: &str) -> Result<RouteMode, String> {
        match s {
            "ring" => Ok(RouteMode::Ring),
            "none" => Ok(RouteMode::None),
            _ => Err(format!("--route {s:?}: use ring or none")),
        }
    }
}

/// The ring map as the engine uses it: node indexes instead of ids.
pub struct RingRoute {
    /// The ring's version.
    pub version: u64,
    /// Each ring node's address, ascending by node id.
    pub addrs: Vec<SocketAddr>,
    /// Per partition, the indexes into `addrs` of its owners, primary first.
    owners: Vec<Vec<usize>>,
    /// Bytes of a key (`--key-size`), to hash keys exactly as they are sent.
    key_size: usize,
    /// Each ring node's shard count (by index into `addrs`), from its HELLO, for
    /// shard-aware connections (`None`: not asked, or it did not say).
    pub shards: Vec<Option<usize>>,
}

/// A node's shard count from its HELLO reply; `None` (said on stderr) when it does not
/// answer, so that its connections are not pinned to shards.
pub fn shard_count(addr: std::net::SocketAddr, token: &[u8]) -> Option<usize> {
    match Client::connect_hello(addr, token) {
        Ok((_, info)) => Some(info.shards as usize),
        Err(e) => {
            eprintln!(
                "kvbench: {addr}: no HELLO to learn its shard count ({e}); its connections \
                 are not shard-aware"
            );
            None
        }
    }
}

impl RingRoute {
    /// Fetch the map from the first of `targets` that answers. `Ok(None)` when routing has
    /// nothing to do: a single node, or a node too old to know RING.
    pub fn fetch(
        targets: &[String],
        token: &[u8],
        key_size: usize,
    ) -> Result<Option<RingRoute>, String> {
        let mut last = String::from("no target");
        for t in targets {
            let map = match Client::connect_as(t.as_str(), Role::Client, 0, token)
                .and_then(|mut c| c.ring())
            {
                Ok(m) => m,
                Err(e) if e.status() == Some(Status::UnknownOpcode) => return Ok(None),
                Err(e) => {
                    last = format!("{t}: {e}");
                    continue;
                }
            };
            if map.ownership.nodes().len() < 2 {
                return Ok(None);
            }
            return RingRoute::from_map(&map, t, key_size).map(Some);
        }
        Err(format!("cannot fetch the ring map: {last}"))
    }

    fn from_map(map: &RingMap, source: &str, key_size: usize) -> Result<RingRoute, String> {
        let ids = map.ownership.nodes();
        let mut addrs = Vec::with_capacity(ids.len());
        for &id in ids {
            // Decoding checked that every ring node has an address; empty = the source's.
            let text = match map.addr_of(id) {
                Some("") | None => source,
                Some(a) => a,
            };
            let addr = text
                .to_socket_addrs()
                .map_err(|e| format!("node {id} at {text:?}: {e}"))?
                .next()
                .ok_or_else(|| format!("node {id} at {text:?}: no address"))?;
            addrs.push(addr);
        }
        let owners = (0..PARTITION_COUNT)
            .map(|p| {
                map.ownership
                    .owners(p)
                    .iter()
                    .map(|id| ids.binary_search(id).expect("owners are ring nodes"))
                    .collect()
            })
            .collect();
        Ok(RingRoute {
            version: map.version(),
            shards: vec![None; addrs.len()],
            addrs,
            owners,
            key_size,
        })
    }

    /// Learn the shard count of every node (HELLO), taking those `known` already has for the
    /// same address. A node that does not answer keeps `None` (its connections are not
    /// pinned).
    pub fn learn_shards(&mut self, known: Option<&RingRoute>, token: &[u8]) {
        for (i, addr) in self.addrs.iter().enumerate() {
            let had = known.and_then(|k| k.node_of(*addr).and_then(|n| k.shards[n]));
            self.shards[i] = had.or_else(|| shard_count(*addr, token));
        }
    }

    /// The partition of key number `index`, as it goes on the wire, and its owners (indexes
    /// into `addrs`, primary first). The partition also names the key's shard on a node
    /// (`dkv::hash::shard_of_partition`).
    pub fn route_of(&self, index: u64, scratch: &mut Vec<u8>) -> (usize, &[usize]) {
        scratch.clear();
        put_key(scratch, index, self.key_size);
        let partition = partition_of(scratch);
        (partition, &self.owners[partition])
    }

    /// The node index of a connection's address (`None`: not a ring node).
    pub fn node_of(&self, addr: SocketAddr) -> Option<usize> {
        self.addrs.iter().position(|&a| a == addr)
    }
}

/// The ring map in use, shared by the load threads and replaced by the refresher.
pub struct RouteCell {
    current: Mutex<Arc<RingRoute>>,
    /// Bumped on every new map: threads compare it with the one they route by.
    generation: AtomicU64,
    /// A load connection failed: the refresher should look at the map soon.
    refresh_wanted: AtomicBool,
    /// Maps taken after the first (for the report).
    pub refreshes: AtomicU64,
}

impl RouteCell {
    /// A cell holding `route`.
    pub fn new(route: RingRoute) -> RouteCell {
        RouteCell {
            current: Mutex::new(Arc::new(route)),
            generation: AtomicU64::new(1),
            refresh_wanted: AtomicBool::new(false),
            refreshes: AtomicU64::new(0),
        }
    }

    /// The map in use now.
    pub fn get(&self) -> Arc<RingRoute> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Which map is in use (cheap: threads check it on every loop).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A load connection failed: its node may have left the ring.
    pub fn want_refresh(&self) {
        self.refresh_wanted.store(true, Ordering::Relaxed);
    }

    fn publish(&self, route: RingRoute) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(route);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keep `cell` up to date until `stop` is set: every [`RING_REFRESH_INTERVAL_MS`], or
/// [`REFRESH_AFTER_ERROR_MS`] after a load connection failed, ask one node for the map
/// (the ring's nodes first, then `seeds`) and publish it when its version is higher.
/// `shard_aware`: learn the shard counts of nodes new to the ring.
pub fn spawn_refresher(
    cell: Arc<RouteCell>,
    seeds: Vec<String>,
    token: Vec<u8>,
    shard_aware: bool,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kvbench-ring".into())
        .spawn(move || {
            let mut conn: Option<(Client, String)> = None;
            let mut checked = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(REFRESHER_TICK_MS));
                let since = checked.elapsed();
                let due = since >= Duration::from_millis(RING_REFRESH_INTERVAL_MS)
                    || (cell.refresh_wanted.load(Ordering::Relaxed)
                        && since >= Duration::from_millis(REFRESH_AFTER_ERROR_MS));
                if !due {
                    continue;
                }
                checked = Instant::now();
                cell.refresh_wanted.store(false, Ordering::Relaxed);
                refresh_once(&cell, &mut conn, &seeds, &token, shard_aware);
            }
        })
}

/// One look at the ring map: on the kept connection, or on a new one to the first node
/// (of the ring, then of `seeds`) that answers.
fn refresh_once(
    cell: &RouteCell,
    conn: &mut Option<(Client, String)>,
    seeds: &[String],
    token: &[u8],
    shard_aware: bool,
) {
    let old = cell.get();
    let map = match conn.as_mut().map(|(c, _)| c.ring()) {
        Some(Ok(map)) => map,
        _ => {
            *conn = None;
            let sources = old
                .addrs
                .iter()
                .map(|a| a.to_string())
                .chain(seeds.iter().cloned());
            let mut got = None;
            for s in sources {
                let Ok(mut c) = Client::connect_as(s.as_str(), Role::Client, 0, token) else {
                    continue;
                };
                let _ = c.set_timeout(Some(Duration::from_millis(REFRESH_TIMEOUT_MS)));
                if let Ok(map) = c.ring() {
                    got = Some(map);
                    *conn = Some((c, s));
                    break;
                }
            }
            match got {
                Some(map) => map,
                None => return,
            }
        }
    };
    if map.version() <= old.version {
        return;
    }
    let source = conn.as_ref().map_or("", |(_, s)| s.as_str());
    match RingRoute::from_map(&map, source, old.key_size) {
        Ok(mut route) => {
            if shard_aware {
                route.learn_shards(Some(&old), token);
            }
            cell.publish(route);
        }
        Err(e) => eprintln!("kvbench: --route ring: ring v{}: {e}", map.version()),
    }
}
