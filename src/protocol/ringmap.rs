//! The ring map: the body of a RING reply (opcode 0x0C), bytes ⇄ [`RingMap`].
//!
//! A client that holds it can send each request straight to an owner of its key (the key
//! hash and partitions are in protocol.md § 11); any node still accepts any request, so a
//! stale map costs a hop, never a wrong answer.
//!
//! ```text
//!  +---------------------------+-------------+----------------------------------------------+
//!  | ring (ownership encoding) | addr count  | addr count × entry                           |
//!  | cluster/ownership.rs      | u8          |   | node id u32 | addr len u8 | addr (UTF-8) | |
//!  +---------------------------+-------------+----------------------------------------------+
//! ```
//!
//! The ring is [`Ownership`]'s encoding (version, N, node ids, owners of each partition as
//! indexes into the node ids). Then one address entry per node, ids strictly ascending, every
//! ring node among them (later versions may list nodes that own nothing yet, e.g. joining
//! ones). An address is `host:port`; an empty one means "the address this reply came from"
//! (a node without `--nodes` does not know the address its clients use).

use crate::cluster::ownership::{Ownership, OwnershipError};
use crate::hash::partition_of;
use crate::limits::CLUSTER_NODES_MAX;

/// Longest address of a node in a ring map, in bytes (its length travels as a u8).
pub const RING_ADDR_SIZE_MAX: usize = u8::MAX as usize;

/// Largest RING reply body.
pub const RING_MAP_SIZE_MAX: usize = crate::cluster::ownership::OWNERSHIP_ENCODED_SIZE_MAX
    + 1
    + CLUSTER_NODES_MAX * (4 + 1 + RING_ADDR_SIZE_MAX);

const _: () = assert!(RING_MAP_SIZE_MAX <= crate::limits::FRAME_SIZE_MAX - 6);

/// Why a RING body is not a ring map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingMapError(pub String);

impl std::fmt::Display for RingMapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad ring map: {}", self.0)
    }
}

impl std::error::Error for RingMapError {}

impl From<OwnershipError> for RingMapError {
    fn from(e: OwnershipError) -> Self {
        RingMapError(e.to_string())
    }
}

/// The ring map: who owns each partition, and where each node listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingMap {
    /// The owners of every partition, with the ring's version.
    pub ownership: Ownership,
    /// `(node id, "host:port")`, ids ascending; an empty address is the replying node's.
    pub addrs: Vec<(u32, String)>,
}

impl RingMap {
    /// The ring's version.
    pub fn version(&self) -> u64 {
        self.ownership.version()
    }

    /// The owners of the partition of `key`, primary first.
    pub fn owners_of_key(&self, key: &[u8]) -> &[u32] {
        self.ownership.owners(partition_of(key))
    }

    /// The address of `node` (empty: the replying node's), if listed.
    pub fn addr_of(&self, node: u32) -> Option<&str> {
        self.addrs
            .binary_search_by_key(&node, |(id, _)| *id)
            .ok()
            .map(|i| self.addrs[i].1.as_str())
    }

    /// Append the RING reply body. Addresses longer than [`RING_ADDR_SIZE_MAX`] or more than
    /// [`CLUSTER_NODES_MAX`] entries are programmer errors (the configuration bounds both).
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.addrs.len() <= CLUSTER_NODES_MAX, "too many addresses");
        self.ownership.encode(out);
        out.push(self.addrs.len() as u8);
        for (id, addr) in &self.addrs {
            assert!(
                addr.len() <= RING_ADDR_SIZE_MAX,
                "address {addr:?} too long"
            );
            out.extend_from_slice(&id.to_be_bytes());
            out.push(addr.len() as u8);
            out.extend_from_slice(addr.as_bytes());
        }
    }

    /// Read a RING reply body; every field is checked, bad input is an error.
    pub fn decode(body: &[u8]) -> Result<RingMap, RingMapError> {
        let (ownership, mut at) = Ownership::decode_prefix(body)?;
        let bad = |why: String| Err(RingMapError(why));
        let Some(&count) = body.get(at) else {
            return bad("ends before its address count".into());
        };
        at += 1;
        if count as usize > CLUSTER_NODES_MAX {
            return bad(format!("{count} addresses, above {CLUSTER_NODES_MAX}"));
        }
        let mut addrs: Vec<(u32, String)> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let Some(head) = body.get(at..at + 5) else {
                return bad("ends inside an address entry".into());
            };
            let id = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
            let len = head[4] as usize;
            at += 5;
            let Some(text) = body.get(at..at + len) else {
                return bad(format!("node {id}: address ends early"));
            };
            at += len;
            let Ok(text) = std::str::from_utf8(text) else {
                return bad(format!("node {id}: address is not UTF-8"));
            };
            if addrs.last().is_some_and(|(last, _)| *last >= id) {
                return bad(format!("node {id}: ids not ascending"));
            }
            addrs.push((id, text.to_string()));
        }
        if at != body.len() {
            return bad(format!("{} bytes after the addresses", body.len() - at));
        }
        let map = RingMap { ownership, addrs };
        if let Some(&id) = map
            .ownership
            .nodes()
            .iter()
            .find(|&&id| map.addr_of(id).is_none())
        {
            return bad(format!("ring node {id} has no address"));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RingMap {
        RingMap {
            ownership: Ownership::initial(&[1, 2, 3, 4], 3).unwrap(),
            addrs: vec![
                (1, "127.0.0.1:7001".into()),
                (2, "127.0.0.1:7002".into()),
                (3, "[::1]:7003".into()),
                (4, String::new()),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let mut out = Vec::new();
        m.encode(&mut out);
        assert!(out.len() <= RING_MAP_SIZE_MAX);
        assert_eq!(RingMap::decode(&out).unwrap(), m);
        assert_eq!(m.addr_of(3), Some("[::1]:7003"));
        assert_eq!(m.addr_of(9), None);
        assert_eq!(m.owners_of_key(b"hello").len(), 3);
    }

    #[test]
    fn bad_bodies_are_errors() {
        let mut out = Vec::new();
        sample().encode(&mut out);
        for cut in 0..out.len() {
            assert!(RingMap::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = out.clone();
        long.push(0);
        assert!(RingMap::decode(&long).is_err());
        // A ring node without an address.
        let m = RingMap {
            addrs: sample().addrs[..3].to_vec(),
            ..sample()
        };
        let mut out = Vec::new();
        m.encode(&mut out);
        assert!(RingMap::decode(&out).is_err());
    }
}
