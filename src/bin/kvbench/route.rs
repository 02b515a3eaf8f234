//! `--route ring`: send each dkv request to an owner of its key, by the ring map (RING,
//! protocol.md § 11.1), instead of spreading requests over the targets.
//!
//! The map is fetched once before the first phase from the first target that answers RING.
//! Connections then go to the ring's nodes (every node, whatever `--target` listed), each
//! thread's connections spread over all nodes, and the engine sends each request on a ready
//! connection to the first owner of its key that has one (primary first), keeping
//! `--pipeline` × its connections in flight per thread. A request whose owners all have no
//! connection up goes to any connection (any node coordinates any request) and is counted as
//! sent to a non-owner. A stale map costs hops, never wrong answers.
//!
//! With shard-aware connections (the default, protocol.md § 11.2) each thread's connections
//! to a node are also pinned to its shards, and the engine prefers the owner's connection
//! pinned to the key's shard (`partition mod K`), so the request crosses no shard either.

use crate::workload::put_key;
use dkv::client::Client;
use dkv::hash::partition_of;
use dkv::limits::PARTITION_COUNT;
use dkv::protocol::ringmap::RingMap;
use dkv::protocol::{Role, Status};
use std::net::{SocketAddr, ToSocketAddrs};

/// Slots of a connection under `--route ring`, as a multiple of `--pipeline`: a thread keeps
/// `pipeline × connections` requests in flight and spreads them by key, so one connection may
/// briefly hold more than its even share.
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
            addrs,
            owners,
            key_size,
        })
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
