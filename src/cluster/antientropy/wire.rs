//! The anti-entropy wire: opcodes (`ae_op`), flag bits, the [`Record`] carried by AE_KEYS
//! replies and AE_PUSH requests, the bounds-checked body [`Reader`], and the encoders and
//! decoders of the request bodies the initiator sends (TREE, STATUS) and of STATUS replies.
//! The frames' exchange is drawn in the parent module's doc ("Rounds and exchanges").

use super::Reports;
use crate::cluster::merkle::SEGMENTS;
use crate::cluster::peer::{op, PeerError};
use crate::limits::{KEY_SIZE_MAX, PARTITION_COUNT, VALUE_SIZE_MAX};
use crate::protocol::{frame, FrameRef, Status, RESPONSE_BIT};
use crate::storage::Write;
use crate::version::Version;

/// Anti-entropy opcodes (in the range `peer::op` reserves).
pub mod ae_op {
    /// Compare tree nodes.
    pub const TREE: u8 = 0x23;
    /// Compare key lists of segments; pull newer records.
    pub const KEYS: u8 = 0x24;
    /// Push records.
    pub const PUSH: u8 = 0x25;
    /// Report completed exchanges to the leader; get horizons back.
    pub const STATUS: u8 = 0x26;
}

/// Whether `op` (request or reply) belongs to anti-entropy.
pub fn is_anti_entropy_op(op: u8) -> bool {
    (op::ANTI_ENTROPY_FIRST..=op::ANTI_ENTROPY_LAST).contains(&(op & !RESPONSE_BIT))
}

/// Flags byte of AE_KEYS and AE_PUSH: the sender is rejoining (its records are not
/// authoritative).
pub(super) const FLAG_REJOINING: u8 = 0x01;
/// Entry flags in AE_KEYS: collectable (a tombstone or expired value).
pub(super) const ENTRY_COLLECTABLE: u8 = 0x01;
/// Record flags: tombstone.
pub(super) const RECORD_TOMBSTONE: u8 = 0x01;
/// Record flags: the value is an encoded causal state (siblings mode, protocol.md § 19.4).
pub(super) const RECORD_CAUSAL: u8 = 0x02;

pub(super) fn bad(why: impl Into<String>) -> PeerError {
    PeerError::Malformed(why.into())
}

/// A bounds-checked reader over a frame body.
pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], PeerError> {
        if self.b.len() < n {
            return Err(bad(format!("body ends inside {what}")));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(super) fn u8(&mut self, what: &str) -> Result<u8, PeerError> {
        Ok(self.take(1, what)?[0])
    }
    pub(super) fn u16(&mut self, what: &str) -> Result<u16, PeerError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(super) fn u32(&mut self, what: &str) -> Result<u32, PeerError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
    pub(super) fn u64(&mut self, what: &str) -> Result<u64, PeerError> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    pub(super) fn key(&mut self) -> Result<&'a [u8], PeerError> {
        let n = self.u16("a key length")? as usize;
        if n == 0 || n > KEY_SIZE_MAX {
            return Err(bad(format!("key length {n} outside 1..={KEY_SIZE_MAX}")));
        }
        self.take(n, "a key")
    }
    pub(super) fn partition(&mut self) -> Result<usize, PeerError> {
        let p = self.u16("the partition")? as usize;
        if p >= PARTITION_COUNT {
            return Err(bad(format!("partition {p} out of range")));
        }
        Ok(p)
    }
    pub(super) fn end(&self) -> Result<(), PeerError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} bytes after the body", self.b.len())))
        }
    }
}

/// A record as carried by AE_KEYS replies and AE_PUSH requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: Vec<u8>,
    /// Its version.
    pub version: u64,
    /// Expiry, ms since the epoch; 0 = never.
    pub expires_at_ms: u64,
    /// The value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The value is an encoded causal state (siblings mode): the receiver merges it.
    pub causal: bool,
}

impl Record {
    pub(super) fn encoded_len(&self) -> usize {
        2 + self.key.len() + 8 + 8 + 1 + 4 + self.value.as_ref().map_or(0, |v| v.len())
    }
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.key.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.push(match (self.value.is_none(), self.causal) {
            (true, _) => RECORD_TOMBSTONE,
            (false, true) => RECORD_CAUSAL,
            (false, false) => 0,
        });
        let v = self.value.as_deref().unwrap_or(&[]);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Record, PeerError> {
        let key = r.key()?.to_vec();
        let version = r.u64("a record version")?;
        let expires_at_ms = r.u64("a record expiry")?;
        let flags = r.u8("record flags")?;
        if flags & !(RECORD_TOMBSTONE | RECORD_CAUSAL) != 0
            || flags == RECORD_TOMBSTONE | RECORD_CAUSAL
        {
            return Err(bad(format!("record reserved flag bits 0x{flags:02x}")));
        }
        let n = r.u32("a value length")? as usize;
        if n > VALUE_SIZE_MAX {
            return Err(bad(format!("value of {n} bytes too large")));
        }
        let v = r.take(n, "a value")?;
        let value = if flags & RECORD_TOMBSTONE != 0 {
            if n != 0 {
                return Err(bad("tombstone record with a value"));
            }
            None
        } else {
            Some(v.to_vec())
        };
        Ok(Record {
            key,
            version,
            expires_at_ms,
            value,
            causal: flags & RECORD_CAUSAL != 0,
        })
    }
    pub(super) fn as_write(&self) -> Write<'_> {
        Write {
            key: &self.key,
            value: self.value.as_deref(),
            version: Version(self.version),
            expires_at_ms: self.expires_at_ms,
            causal: self.causal,
        }
    }
}

/// Read the sender id of a request. `from` is the peer session's node id, or 0 when the frame
/// was forwarded from another shard (which does not carry it); a mismatch is an error.
pub(super) fn sender(r: &mut Reader<'_>, from: u32) -> Result<u32, PeerError> {
    let s = r.u32("the sender")?;
    if from != 0 && from != s {
        return Err(bad(format!("sender {s} on node {from}'s session")));
    }
    Ok(s)
}

/// Whether a request with anti-entropy opcode `op` may apply records to the responder's store
/// (PUSH carries records, KEYS may pull the initiator's newer ones): its reply then
/// acknowledges them, and waits for the sync under the `always` policy.
pub fn request_applies_records(op: u8) -> bool {
    op == ae_op::PUSH || op == ae_op::KEYS
}

/// The partition an anti-entropy request addresses (its first two body bytes), for drivers
/// that route peer frames to the shard owning it; `None` if `op` is not anti-entropy or the
/// body is too short (the owning shard's decoder then reports it).
///
/// AE_STATUS is not routed by partition: it goes to the membership shard, which keeps the
/// leader's reports and decisions for the whole node (`None` here).
pub fn routing_partition(op: u8, body: &[u8]) -> Option<usize> {
    if !is_anti_entropy_op(op) || op == ae_op::STATUS || body.len() < 2 {
        return None;
    }
    let p = u16::from_be_bytes([body[0], body[1]]) as usize;
    (p < PARTITION_COUNT).then_some(p)
}

pub(crate) fn push_key(out: &mut Vec<u8>, k: &[u8]) {
    out.extend_from_slice(&(k.len() as u16).to_be_bytes());
    out.extend_from_slice(k);
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn put_tree_request(
    out: &mut Vec<u8>,
    id: u32,
    p: usize,
    me: u32,
    h: u64,
    level: u8,
    idx: &[u16],
) {
    assert!(idx.len() <= SEGMENTS);
    let mut b = Vec::with_capacity(idx.len() * 2);
    for i in idx {
        b.extend_from_slice(&i.to_be_bytes());
    }
    frame::put_frame(
        out,
        ae_op::TREE,
        0,
        id,
        &[
            &(p as u16).to_be_bytes(),
            &me.to_be_bytes(),
            &h.to_be_bytes(),
            &[level],
            &(idx.len() as u16).to_be_bytes(),
            &b,
        ],
    );
}

pub(crate) fn put_status_request(out: &mut Vec<u8>, id: u32, me: u32, batch: &Reports) {
    let mut b = Vec::with_capacity(8 + batch.len() * 14);
    // A partition field kept for the layout of the body: STATUS is served by the membership
    // shard of the leader (`cluster::view::MEMBERSHIP_SHARD`), which decides for the whole
    // node, so it is not routed by partition (see `routing_partition`).
    let routing = batch.keys().next().map_or(0, |k| k.0);
    b.extend_from_slice(&routing.to_be_bytes());
    b.extend_from_slice(&me.to_be_bytes());
    b.extend_from_slice(&(batch.len() as u16).to_be_bytes());
    for (&(p, peer), &start) in batch {
        b.extend_from_slice(&p.to_be_bytes());
        b.extend_from_slice(&peer.to_be_bytes());
        b.extend_from_slice(&start.to_be_bytes());
    }
    frame::put_frame(out, ae_op::STATUS, 0, id, &[&b]);
}

pub(crate) fn decode_status_reply(f: &FrameRef<'_>) -> Result<Vec<(u16, u64)>, PeerError> {
    if f.aux != Status::Ok as u8 {
        return Err(bad("STATUS refused"));
    }
    let mut r = Reader { b: f.body };
    let n = r.u16("the count")? as usize;
    let mut hs = Vec::with_capacity(n.min(PARTITION_COUNT));
    for _ in 0..n {
        let p = r.partition()? as u16;
        hs.push((p, r.u64("a horizon")?));
    }
    r.end()?;
    Ok(hs)
}
