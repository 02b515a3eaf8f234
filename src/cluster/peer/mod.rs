//! Peer frames: what nodes say to each other, in the opcode range 0x20..=0x3F.
//!
//! They use the ordinary frame header (see [`crate::protocol`]) on a connection that completed
//! the peer handshake (proofs of the cluster secret, [`crate::auth`]); the server hands them to
//! the cluster layer as [`crate::protocol::Request::Peer`]. Replies carry the opcode with the response bit set and a
//! status in `aux`, like every reply. All integers are big-endian. protocol.md § 18 is the
//! contract, with golden vectors that `tests/codec/` checks against these encoders.
//!
//! ```text
//! REPLICATE 0x20  request (aux bit 0: hint delivery, bit 1: read repair; other bits 0)
//!  | ring version u64 | key len u16 | key | version u64 | expires at ms u64 (0 = never) |
//!  | flags u8 | value (rest) |
//!    ring version: the sender's (its replica set came from that ring)
//!    flags bit 0: tombstone (then the value is empty); bit 1: causal (the value is an
//!    encoded causal state, siblings mode: the replica merges it); other bits 0
//!  reply OK       | result u8 (0 = applied, 1 = stale: a newer or equal version is held, |
//!                 |   2 = stale ring: refused, the sender's ring is older than the last |
//!                 |   change of the key's partition here) |
//!                 | current version u64 (the version held after the write; for result 2 |
//!                 |   the replica's ring version) |
//!  reply error    STORAGE_ERROR and a message (the replica refuses writes)
//!
//! READ 0x21       request (aux bit 0: version only; other bits 0)
//!  | ring version u64 | key len u16 | key |
//!  reply OK       | state u8 (0 = absent, 1 = value, 2 = tombstone, 3 = stale ring, |
//!                 |   4 = a causal state, siblings mode, 5 = version only) |
//!                 | version u64 (state 3: the replica's ring version) |
//!                 | expires at ms u64 (0 in state 5) | value (rest; empty unless state = 1 |
//!                 |   or 4) |
//!    version only: the coordinator has the data from another replica (its own copy) and
//!    needs only to know whether this one is as new: the replica answers from its key index
//!    without reading the record, state 5 (a value or a tombstone at this version) or 0.
//!
//! GOSSIP 0x22     request (push) and reply OK (pull) have the same body: the sender's view
//!  | sender id u32 | count u16 | count × entry | clock stamp (16 bytes, optional) |
//!  entry (48 bytes):
//!  | node id u32 | incarnation u64 | heartbeat u64 | state u8 (0 alive, 1 failed) |
//!  | ring version u64 (0 = unknown) | family u8 (0 unknown, 4, 6) | ip 16 bytes | port u16 |
//!    ip: a v4 address in the first 4 bytes, the rest 0; all 0 with family 0.
//!    Nodes from before the address send 21-byte entries (the first line only): their entries
//!    decode with ring version 0 and no address. A newer node may append fields to every
//!    entry (then it must send the clock stamp): the entry size is (body - 6 - 16) / count,
//!    and bytes past the 48 known ones are skipped.
//!  clock stamp: | sent ms u64 (the sender's wall clock) | echo ms u64 |
//!    echo: in a request 0; in a reply the request's sent ms, so the pusher measures the
//!    replier's clock offset NTP-style (see super::clock). Nodes from before the stamp
//!    send none, and their frames are still accepted (no sample is taken).
//!
//! 0x23..=0x2F     anti-entropy (0x23..=0x26 defined below, in super::antientropy; the rest
//!                 reserved). Requests start with a partition, so a driver with several shards
//!                 routes them to hash::shard_of_partition(partition, shards), and carry the
//!                 sender's id (a frame forwarded between shards loses its session).
//! 0x30..=0x3F     unassigned
//!
//! AE_TREE 0x23    request (aux 0)
//!  | partition u16 | sender u32 | horizon u64 | level u8 (0 root, 1 mids, 2 segments) |
//!  | count u16 | count × node index u16 |
//!  reply OK       | partition u16 | horizon u64 | level u8 | count u16 | count × hash u64 |
//!                 (the responder's hashes of the asked nodes, in request order)
//!
//! AE_KEYS 0x24    request: the initiator's key lists of differing segments
//!  | partition u16 | sender u32 | horizon u64 | flags u8 (bit 0: sender rejoining) |
//!  | count u16 | count × ( | segment u16 | entries u32 | entries × entry | ) |
//!    entry  | key len u16 | key | version u64 | flags u8 (bit 0: collectable below horizon) |
//!  reply OK       | partition u16 | horizon u64 | flags u8 | done u16 |
//!                 | records u16 | records × record | wants u16 | wants × ( | key len u16 | key | ) |
//!    done: request segments fully compared (the rest are asked again); records: what the
//!    responder holds newer (or a tombstone one above a record it proves collected); wants:
//!    keys the initiator holds newer
//!    record | key len u16 | key | version u64 | expires at ms u64 | flags u8 (bit 0 tombstone) |
//!           | value len u32 | value |
//!
//! AE_PUSH 0x25    request | partition u16 | sender u32 | flags u8 (bit 0: sender rejoining) |
//!                         | count u16 | count × record |
//!  reply OK       | applied u16 |  (records that became the responder's record)
//!
//! AE_STATUS 0x26  request to the leader: completed exchanges
//!  | routing partition u16 (the first entry's) | sender u32 | count u16 | count × ( | partition u16 | peer u32 | start ms u64 | ) |
//!  reply OK       | count u16 | count × ( | partition u16 | horizon u64 | ) |
//!                 (the leader's tombstone horizons, raw versions)
//!
//! Horizons in AE frames let every node learn the highest horizon any peer knows (they only
//! rise). Anti-entropy replies are routed by opcode, not by request id.
//! ```
//!
//! Request ids on a peer connection are split in three spaces so the driver can route a reply
//! without keeping a table: 0 is fire-and-forget (read repair; its reply is dropped), ids with
//! [`HINT_ID_BIT`] set are hint deliveries (routed to [`super::hints`]), all others are
//! coordinator operations (routed to [`super::coordinator`]). Expired records are replicated
//! like live ones: expiry is part of the record, and replicas decide liveness at read time.

use crate::limits::{CLUSTER_NODES_MAX, KEY_SIZE_MAX, VALUE_SIZE_MAX};
use crate::protocol::{frame, message, Status, RESPONSE_BIT};
use crate::storage::{Applied, Stored, Write};
use crate::version::Version;
use byteorder::{BigEndian, ByteOrder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Peer opcodes.
pub mod op {
    /// Apply a write on a replica (replication, hint delivery, read repair).
    pub const REPLICATE: u8 = 0x20;
    /// Read a replica's local record of a key.
    pub const READ: u8 = 0x21;
    /// Exchange membership views (push in the request, pull in the reply).
    pub const GOSSIP: u8 = 0x22;
    /// First opcode reserved for anti-entropy.
    pub const ANTI_ENTROPY_FIRST: u8 = 0x23;
    /// Last opcode reserved for anti-entropy.
    pub const ANTI_ENTROPY_LAST: u8 = 0x2F;
}

/// REPLICATE `aux` bit: the write is a hint being delivered.
pub const AUX_HINT: u8 = 0x01;
/// REPLICATE `aux` bit: the write is a read repair.
pub const AUX_REPAIR: u8 = 0x02;
/// READ `aux` bit: answer with the version only (state [`STATE_VERSION`] or absent).
pub const AUX_VERSION_ONLY: u8 = 0x01;
/// REPLICATE flags bit: the write is a tombstone.
const FLAG_TOMBSTONE: u8 = 0x01;
/// REPLICATE flags bit: the value is an encoded causal state (siblings mode).
const FLAG_CAUSAL: u8 = 0x02;
/// READ reply state: the record is a causal state (siblings mode).
const STATE_CAUSAL: u8 = 4;
/// Bytes of the sender's ring version that start a REPLICATE or READ body.
const RING_VERSION_SIZE: usize = 8;
/// REPLICATE reply result: refused, the sender's ring is stale for the key's partition.
const RESULT_STALE_RING: u8 = 2;
/// READ reply state: refused, the sender's ring is stale for the key's partition.
const STATE_STALE_RING: u8 = 3;
/// READ reply state: the replica holds a value or a tombstone at this version (the request
/// asked for the version only, [`AUX_VERSION_ONLY`]).
const STATE_VERSION: u8 = 5;

/// Request ids with this bit set are hint deliveries.
pub const HINT_ID_BIT: u32 = 0x8000_0000;

/// Size of one gossip entry on the wire, as this version sends it.
pub const GOSSIP_ENTRY_SIZE: usize = 48;
/// Size of an entry of the nodes from before the ring version and address (no clock stamp,
/// or a stamp and entries of 21..48 bytes): still decoded, with ring version 0 and no address.
pub const GOSSIP_ENTRY_SIZE_OLD: usize = 21;
/// Bytes of an address in an entry: family u8, ip 16 bytes, port u16.
const GOSSIP_ADDR_SIZE: usize = 19;
const _: () = assert!(GOSSIP_ENTRY_SIZE == GOSSIP_ENTRY_SIZE_OLD + 8 + GOSSIP_ADDR_SIZE);

/// Why a peer frame cannot be understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerError {
    /// The body does not match the opcode's layout.
    Malformed(String),
    /// The opcode is in the peer range but not defined.
    UnknownOp(u8),
}

impl PeerError {
    /// The status of the error reply to send back.
    pub fn status(&self) -> Status {
        match self {
            PeerError::Malformed(_) => Status::Malformed,
            PeerError::UnknownOp(_) => Status::UnknownOpcode,
        }
    }
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Malformed(why) => write!(f, "malformed peer frame: {why}"),
            PeerError::UnknownOp(op) => write!(f, "unknown peer opcode 0x{op:02x}"),
        }
    }
}

impl std::error::Error for PeerError {}

pub(super) fn bad(why: impl Into<String>) -> PeerError {
    PeerError::Malformed(why.into())
}

/// Membership state of a node as gossiped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeState {
    /// Heartbeats are advancing.
    Alive,
    /// No heartbeat progress for the failure threshold.
    Failed,
}

impl NodeState {
    /// Lower-case name for CLUSTER and logs.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Failed => "failed",
        }
    }
}

/// One node's entry in a gossiped view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GossipEntry {
    /// The node.
    pub node_id: u32,
    /// The node's incarnation (its start time in ms; a restart raises it).
    pub incarnation: u64,
    /// The node's heartbeat counter within that incarnation.
    pub heartbeat: u64,
    /// How the sender sees the node.
    pub state: NodeState,
    /// The ring version the node holds, as last heard (0: unknown, or an older sender).
    pub ring_version: u64,
    /// Where the node listens (`None`: unknown, or an older sender).
    pub addr: Option<SocketAddr>,
}

/// The clock stamp a GOSSIP frame carries (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClockStamp {
    /// The sender's wall clock when it sent the frame, ms since the Unix epoch.
    pub sent_ms: u64,
    /// In a reply: the `sent_ms` of the request it answers; 0 in a request.
    pub echo_ms: u64,
}

/// Size of the optional clock stamp at the end of a GOSSIP body.
pub const CLOCK_STAMP_SIZE: usize = 16;

/// A decoded peer request.
#[derive(Clone, Debug)]
pub enum PeerRequest<'a> {
    /// Apply a write.
    Replicate {
        /// The write (borrowing key and value from the frame).
        write: Write<'a>,
        /// The `aux` bits ([`AUX_HINT`], [`AUX_REPAIR`]).
        aux: u8,
        /// The sender's ring version: its replica set came from that ring.
        ring: u64,
    },
    /// Read the local record of a key.
    Read {
        /// The key.
        key: &'a [u8],
        /// The sender's ring version: its replica set came from that ring.
        ring: u64,
        /// Answer with the version only ([`AUX_VERSION_ONLY`]).
        version_only: bool,
    },
    /// A membership view.
    Gossip {
        /// The sending node.
        sender: u32,
        /// Its view.
        entries: Vec<GossipEntry>,
        /// Its clock stamp (`None` from a node that sends none).
        clock: Option<ClockStamp>,
    },
}

// `storage::Write` does not derive equality (it is the lead's type), so compare field by field.
impl PartialEq for PeerRequest<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                PeerRequest::Replicate {
                    write: a,
                    aux: x,
                    ring: r,
                },
                PeerRequest::Replicate {
                    write: b,
                    aux: y,
                    ring: q,
                },
            ) => {
                x == y
                    && r == q
                    && a.key == b.key
                    && a.value == b.value
                    && a.version == b.version
                    && a.expires_at_ms == b.expires_at_ms
                    && a.causal == b.causal
            }
            (
                PeerRequest::Read {
                    key: a,
                    ring: r,
                    version_only: x,
                },
                PeerRequest::Read {
                    key: b,
                    ring: q,
                    version_only: y,
                },
            ) => a == b && r == q && x == y,
            (
                PeerRequest::Gossip {
                    sender: a,
                    entries: x,
                    clock: c,
                },
                PeerRequest::Gossip {
                    sender: b,
                    entries: y,
                    clock: d,
                },
            ) => a == b && x == y && c == d,
            _ => false,
        }
    }
}

/// What a replica answered to REPLICATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteAck {
    /// The write is the key's record now (or it held a newer or equal one: `Applied::Stale`).
    Done(Applied),
    /// The replica refused it (storage error, bad request); the message says why.
    Refused(String),
}

/// A decoded peer reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerReply {
    /// Answer to REPLICATE.
    Write(WriteAck),
    /// Answer to READ: the replica's record (tombstones included), or `None` if it has none.
    Read(Result<Option<Stored>, String>),
    /// Answer to a version-only READ ([`AUX_VERSION_ONLY`]): the replica holds a value or a
    /// tombstone at this version. (One that holds nothing answers `Read(Ok(None))`.)
    ReadVersion(Version),
    /// Answer to REPLICATE (`op` [`op::REPLICATE`]) or READ ([`op::READ`]): refused, the
    /// sender's ring version is older than the last change of the key's partition at the
    /// replica, which holds `ring` (the sender should pull it: protocol.md § 18.2).
    StaleRing {
        /// The request's opcode.
        op: u8,
        /// The replica's ring version.
        ring: u64,
    },
    /// Answer to GOSSIP: the receiver's view.
    Gossip {
        /// The answering node.
        sender: u32,
        /// Its view.
        entries: Vec<GossipEntry>,
        /// Its clock stamp, echoing the request's (`None` from a node that sends none).
        clock: Option<ClockStamp>,
    },
}

/// Split `| ring version u64 | rest |` off a REPLICATE or READ body.
fn split_ring<'a>(body: &'a [u8], what: &str) -> Result<(u64, &'a [u8]), PeerError> {
    if body.len() < RING_VERSION_SIZE {
        return Err(bad(format!("{what} shorter than its ring version")));
    }
    Ok((read_u64(body, 0), &body[RING_VERSION_SIZE..]))
}

/// Split `| key len u16 | key | rest |` with the key's bounds checked.
fn split_key(body: &[u8]) -> Result<(&[u8], &[u8]), PeerError> {
    if body.len() < 2 {
        return Err(bad("body shorter than its key length field"));
    }
    let len = BigEndian::read_u16(&body[..2]) as usize;
    let rest = &body[2..];
    if len == 0 || len > KEY_SIZE_MAX {
        return Err(bad(format!("key length {len} outside 1..={KEY_SIZE_MAX}")));
    }
    if len > rest.len() {
        return Err(bad("body ends inside its key"));
    }
    Ok(rest.split_at(len))
}

pub(super) fn read_u64(b: &[u8], at: usize) -> u64 {
    BigEndian::read_u64(&b[at..at + 8])
}

impl<'a> PeerRequest<'a> {
    /// Decode a peer request from the parts of a [`crate::protocol::Request::Peer`].
    pub fn decode(op: u8, aux: u8, body: &'a [u8]) -> Result<PeerRequest<'a>, PeerError> {
        match op {
            op::REPLICATE => {
                if aux & !(AUX_HINT | AUX_REPAIR) != 0 {
                    return Err(bad(format!("REPLICATE reserved aux bits 0x{aux:02x}")));
                }
                let (ring, body) = split_ring(body, "REPLICATE")?;
                let (key, rest) = split_key(body)?;
                if rest.len() < 17 {
                    return Err(bad("REPLICATE ends before its value"));
                }
                let version = Version(read_u64(rest, 0));
                let expires_at_ms = read_u64(rest, 8);
                let flags = rest[16];
                let value = &rest[17..];
                if flags & !(FLAG_TOMBSTONE | FLAG_CAUSAL) != 0
                    || flags == FLAG_TOMBSTONE | FLAG_CAUSAL
                {
                    return Err(bad(format!("REPLICATE reserved flag bits 0x{flags:02x}")));
                }
                if value.len() > VALUE_SIZE_MAX {
                    return Err(bad(format!("value of {} bytes too large", value.len())));
                }
                let value = if flags & FLAG_TOMBSTONE != 0 {
                    if !value.is_empty() {
                        return Err(bad("REPLICATE tombstone with a value"));
                    }
                    None
                } else {
                    Some(value)
                };
                Ok(PeerRequest::Replicate {
                    write: Write {
                        key,
                        value,
                        version,
                        expires_at_ms,
                        causal: flags & FLAG_CAUSAL != 0,
                    },
                    aux,
                    ring,
                })
            }
            op::READ => {
                if aux & !AUX_VERSION_ONLY != 0 {
                    return Err(bad(format!("READ reserved aux bits 0x{aux:02x}")));
                }
                let (ring, body) = split_ring(body, "READ")?;
                let (key, rest) = split_key(body)?;
                if !rest.is_empty() {
                    return Err(bad("READ has bytes after its key"));
                }
                Ok(PeerRequest::Read {
                    key,
                    ring,
                    version_only: aux & AUX_VERSION_ONLY != 0,
                })
            }
            op::GOSSIP => {
                no_aux(aux)?;
                let (sender, entries, clock) = decode_gossip(body)?;
                Ok(PeerRequest::Gossip {
                    sender,
                    entries,
                    clock,
                })
            }
            other => Err(PeerError::UnknownOp(other)),
        }
    }
}

fn no_aux(aux: u8) -> Result<(), PeerError> {
    if aux != 0 {
        return Err(bad(format!("aux must be 0, got 0x{aux:02x}")));
    }
    Ok(())
}

type Gossip = (u32, Vec<GossipEntry>, Option<ClockStamp>);

fn decode_gossip(body: &[u8]) -> Result<Gossip, PeerError> {
    if body.len() < 6 {
        return Err(bad("GOSSIP shorter than its header"));
    }
    let sender = BigEndian::read_u32(&body[0..4]);
    let count = BigEndian::read_u16(&body[4..6]) as usize;
    if count > CLUSTER_NODES_MAX {
        return Err(bad(format!(
            "GOSSIP of {count} entries, more than {CLUSTER_NODES_MAX}"
        )));
    }
    let rest = &body[6..];
    // Two layouts: without a clock stamp (nodes from before it), entries of exactly
    // GOSSIP_ENTRY_SIZE_OLD bytes; with one, entries of a size the body gives, at least
    // GOSSIP_ENTRY_SIZE_OLD: a node from before the address sends 21 bytes, this version 48,
    // and a newer node may append fields to each entry, which this node skips (rolling
    // upgrades). The two cannot be confused: a stamped body of e-byte entries, e >= 21, is
    // never 21 × count bytes after the header, for count >= 1.
    let (rest, clock, entry_size) = if rest.len() == count * GOSSIP_ENTRY_SIZE_OLD {
        (rest, None, GOSSIP_ENTRY_SIZE_OLD)
    } else {
        let Some(entries_len) = rest.len().checked_sub(CLOCK_STAMP_SIZE) else {
            return Err(bad("GOSSIP length does not match its entry count"));
        };
        let (entries, stamp) = rest.split_at(entries_len);
        let entry_size = match count {
            0 if entries_len == 0 => GOSSIP_ENTRY_SIZE,
            0 => return Err(bad("GOSSIP of no entries has bytes before its clock stamp")),
            n => entries_len / n,
        };
        if entry_size < GOSSIP_ENTRY_SIZE_OLD || entry_size * count != entries_len {
            return Err(bad("GOSSIP length does not match its entry count"));
        }
        let clock = ClockStamp {
            sent_ms: read_u64(stamp, 0),
            echo_ms: read_u64(stamp, 8),
        };
        (entries, Some(clock), entry_size)
    };
    let mut entries = Vec::with_capacity(count);
    // Bytes past GOSSIP_ENTRY_SIZE in an entry are a newer node's fields: ignored. Entries
    // shorter than it (but at least the old 21 bytes) are an older node's: no ring version,
    // no address.
    for e in rest.chunks_exact(entry_size) {
        let state = match e[20] {
            0 => NodeState::Alive,
            1 => NodeState::Failed,
            s => return Err(bad(format!("GOSSIP unknown node state {s}"))),
        };
        let (ring_version, addr) = if entry_size >= GOSSIP_ENTRY_SIZE {
            (read_u64(e, 21), decode_addr(&e[29..48])?)
        } else {
            (0, None)
        };
        entries.push(GossipEntry {
            node_id: BigEndian::read_u32(&e[0..4]),
            incarnation: read_u64(e, 4),
            heartbeat: read_u64(e, 12),
            state,
            ring_version,
            addr,
        });
    }
    Ok((sender, entries, clock))
}

/// `| family u8 | ip 16 bytes | port u16 |`: family 0 is "unknown" (every other byte 0).
fn decode_addr(b: &[u8]) -> Result<Option<SocketAddr>, PeerError> {
    debug_assert_eq!(b.len(), GOSSIP_ADDR_SIZE);
    let port = BigEndian::read_u16(&b[17..19]);
    let ip: IpAddr = match b[0] {
        0 => {
            if b[1..].iter().any(|&x| x != 0) {
                return Err(bad("GOSSIP entry of no address family has address bytes"));
            }
            return Ok(None);
        }
        4 => {
            if b[5..17].iter().any(|&x| x != 0) {
                return Err(bad("GOSSIP IPv4 address with bytes past its 4"));
            }
            IpAddr::V4(Ipv4Addr::new(b[1], b[2], b[3], b[4]))
        }
        6 => {
            let octets: [u8; 16] = b[1..17].try_into().expect("16 bytes sliced");
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        f => return Err(bad(format!("GOSSIP unknown address family {f}"))),
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

fn put_addr(body: &mut Vec<u8>, addr: Option<SocketAddr>) {
    let mut b = [0u8; GOSSIP_ADDR_SIZE];
    if let Some(a) = addr {
        match a.ip() {
            IpAddr::V4(v4) => {
                b[0] = 4;
                b[1..5].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                b[0] = 6;
                b[1..17].copy_from_slice(&v6.octets());
            }
        }
        BigEndian::write_u16(&mut b[17..19], a.port());
    }
    body.extend_from_slice(&b);
}

fn gossip_body(sender: u32, entries: &[GossipEntry], clock: ClockStamp) -> Vec<u8> {
    assert!(entries.len() <= CLUSTER_NODES_MAX, "gossip view too large");
    let mut body = Vec::with_capacity(6 + entries.len() * GOSSIP_ENTRY_SIZE + CLOCK_STAMP_SIZE);
    body.extend_from_slice(&sender.to_be_bytes());
    body.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for e in entries {
        body.extend_from_slice(&e.node_id.to_be_bytes());
        body.extend_from_slice(&e.incarnation.to_be_bytes());
        body.extend_from_slice(&e.heartbeat.to_be_bytes());
        body.push(match e.state {
            NodeState::Alive => 0,
            NodeState::Failed => 1,
        });
        body.extend_from_slice(&e.ring_version.to_be_bytes());
        put_addr(&mut body, e.addr);
    }
    body.extend_from_slice(&clock.sent_ms.to_be_bytes());
    body.extend_from_slice(&clock.echo_ms.to_be_bytes());
    body
}

/// Append a REPLICATE request for `write`, sent by a node holding ring version `ring`.
pub fn put_replicate(out: &mut Vec<u8>, id: u32, aux: u8, ring: u64, write: &Write<'_>) {
    assert!(write.key.len() <= KEY_SIZE_MAX && !write.key.is_empty());
    assert!(aux & !(AUX_HINT | AUX_REPAIR) == 0);
    let key_len = (write.key.len() as u16).to_be_bytes();
    let mut fixed = [0u8; 17];
    BigEndian::write_u64(&mut fixed[0..8], write.version.0);
    BigEndian::write_u64(&mut fixed[8..16], write.expires_at_ms);
    fixed[16] = match (write.value.is_none(), write.causal) {
        (true, _) => FLAG_TOMBSTONE,
        (false, true) => FLAG_CAUSAL,
        (false, false) => 0,
    };
    let value = write.value.unwrap_or(&[]);
    frame::put_frame(
        out,
        op::REPLICATE,
        aux,
        id,
        &[&ring.to_be_bytes(), &key_len, write.key, &fixed, value],
    );
}

/// Append a READ request for `key`, sent by a node holding ring version `ring`.
pub fn put_read(out: &mut Vec<u8>, id: u32, ring: u64, key: &[u8], version_only: bool) {
    assert!(key.len() <= KEY_SIZE_MAX && !key.is_empty());
    let key_len = (key.len() as u16).to_be_bytes();
    let aux = if version_only { AUX_VERSION_ONLY } else { 0 };
    frame::put_frame(
        out,
        op::READ,
        aux,
        id,
        &[&ring.to_be_bytes(), &key_len, key],
    );
}

/// Append the refusal of a REPLICATE or READ (`op`) whose sender's ring is stale for the
/// key's partition: an OK reply with result (REPLICATE) or state (READ) "stale ring" and this
/// replica's ring version `ring` where the version goes.
pub fn put_stale_ring(out: &mut Vec<u8>, op: u8, id: u32, ring: u64) {
    if op == op::READ {
        message::put_ok(
            out,
            op::READ,
            id,
            &[
                &[STATE_STALE_RING],
                &ring.to_be_bytes(),
                &0u64.to_be_bytes(),
            ],
        );
    } else {
        assert_eq!(
            op,
            op::REPLICATE,
            "only REPLICATE and READ carry a ring version"
        );
        message::put_ok(
            out,
            op::REPLICATE,
            id,
            &[&[RESULT_STALE_RING], &ring.to_be_bytes()],
        );
    }
}

/// Append a GOSSIP request carrying `sender`'s view and clock stamp.
pub fn put_gossip(
    out: &mut Vec<u8>,
    id: u32,
    sender: u32,
    entries: &[GossipEntry],
    clock: ClockStamp,
) {
    let body = gossip_body(sender, entries, clock);
    frame::put_frame(out, op::GOSSIP, 0, id, &[&body]);
}

/// Append the reply to a GOSSIP request: the receiver's view and clock stamp.
pub fn put_gossip_reply(
    out: &mut Vec<u8>,
    id: u32,
    sender: u32,
    entries: &[GossipEntry],
    clock: ClockStamp,
) {
    message::put_ok(out, op::GOSSIP, id, &[&gossip_body(sender, entries, clock)]);
}

/// Append the reply to a REPLICATE request.
pub fn put_write_ack(out: &mut Vec<u8>, id: u32, ack: &WriteAck) {
    match ack {
        WriteAck::Done(Applied::Stored) => {
            message::put_ok(out, op::REPLICATE, id, &[&[0], &0u64.to_be_bytes()])
        }
        WriteAck::Done(Applied::Stale { current }) => {
            message::put_ok(out, op::REPLICATE, id, &[&[1], &current.0.to_be_bytes()])
        }
        WriteAck::Refused(msg) => {
            message::put_error(out, op::REPLICATE, id, Status::StorageError, msg)
        }
    }
}

/// Append the reply to a READ request.
pub fn put_read_reply(out: &mut Vec<u8>, id: u32, record: &Result<Option<Stored>, String>) {
    match record {
        Ok(None) => message::put_ok(out, op::READ, id, &[&[0], &[0u8; 16]]),
        Ok(Some(s)) => {
            let mut fixed = [0u8; 17];
            fixed[0] = match (s.value.is_some(), s.causal) {
                (true, true) => STATE_CAUSAL,
                (true, false) => 1,
                (false, _) => 2,
            };
            BigEndian::write_u64(&mut fixed[1..9], s.version.0);
            BigEndian::write_u64(&mut fixed[9..17], s.expires_at_ms);
            let value = s.value.as_deref().unwrap_or(&[]);
            message::put_ok(out, op::READ, id, &[&fixed, value]);
        }
        Err(msg) => message::put_error(out, op::READ, id, Status::StorageError, msg),
    }
}

/// Append the reply to a version-only READ: the version held (state [`STATE_VERSION`]),
/// absent (state 0), or the store's error.
pub fn put_read_version_reply(out: &mut Vec<u8>, id: u32, held: &Result<Option<Version>, String>) {
    match held {
        Ok(None) => message::put_ok(out, op::READ, id, &[&[0], &[0u8; 16]]),
        Ok(Some(v)) => message::put_ok(
            out,
            op::READ,
            id,
            &[&[STATE_VERSION], &v.0.to_be_bytes(), &[0u8; 8]],
        ),
        Err(msg) => message::put_error(out, op::READ, id, Status::StorageError, msg),
    }
}

impl PeerReply {
    /// Decode a reply frame (`op` with the response bit, `status` from `aux`).
    pub fn decode(op: u8, status: u8, body: &[u8]) -> Result<PeerReply, PeerError> {
        let op = op & !RESPONSE_BIT;
        let status =
            Status::from_u8(status).ok_or_else(|| bad(format!("unknown status 0x{status:02x}")))?;
        let error_text = || String::from_utf8_lossy(body).into_owned();
        match op {
            op::REPLICATE => {
                if status != Status::Ok {
                    return Ok(PeerReply::Write(WriteAck::Refused(format!(
                        "{status}: {}",
                        error_text()
                    ))));
                }
                if body.len() != 9 {
                    return Err(bad("REPLICATE reply is not 9 bytes"));
                }
                let current = Version(read_u64(body, 1));
                match body[0] {
                    0 => Ok(PeerReply::Write(WriteAck::Done(Applied::Stored))),
                    1 => Ok(PeerReply::Write(WriteAck::Done(Applied::Stale { current }))),
                    RESULT_STALE_RING => Ok(PeerReply::StaleRing {
                        op: op::REPLICATE,
                        ring: current.0,
                    }),
                    r => Err(bad(format!("REPLICATE reply result {r}"))),
                }
            }
            op::READ => {
                if status != Status::Ok {
                    return Ok(PeerReply::Read(Err(format!("{status}: {}", error_text()))));
                }
                if body.len() < 17 {
                    return Err(bad("READ reply shorter than 17 bytes"));
                }
                let version = Version(read_u64(body, 1));
                let expires_at_ms = read_u64(body, 9);
                let value = &body[17..];
                if body[0] == STATE_STALE_RING && value.is_empty() && expires_at_ms == 0 {
                    return Ok(PeerReply::StaleRing {
                        op: op::READ,
                        ring: version.0,
                    });
                }
                if body[0] == STATE_VERSION && value.is_empty() && expires_at_ms == 0 {
                    return Ok(PeerReply::ReadVersion(version));
                }
                let record = match body[0] {
                    0 if value.is_empty() => None,
                    1 | STATE_CAUSAL => Some(Stored {
                        version,
                        expires_at_ms,
                        value: Some(crate::pool::copy_bytes(value)),
                        causal: body[0] == STATE_CAUSAL,
                    }),
                    2 if value.is_empty() => Some(Stored {
                        version,
                        expires_at_ms,
                        value: None,
                        causal: false,
                    }),
                    s => {
                        return Err(bad(format!(
                            "READ reply state {s} with {} value bytes",
                            value.len()
                        )))
                    }
                };
                Ok(PeerReply::Read(Ok(record)))
            }
            op::GOSSIP => {
                if status != Status::Ok {
                    return Err(bad(format!("GOSSIP refused: {status}: {}", error_text())));
                }
                let (sender, entries, clock) = decode_gossip(body)?;
                Ok(PeerReply::Gossip {
                    sender,
                    entries,
                    clock,
                })
            }
            other => Err(PeerError::UnknownOp(other)),
        }
    }
}

pub mod coordinate;

#[cfg(test)]
mod tests;
