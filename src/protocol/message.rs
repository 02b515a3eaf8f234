//! Typed requests and replies: a [`FrameRef`] becomes a [`Request`] borrowing its key and value
//! from the read buffer (no copy), and replies are written straight into an output buffer.
//!
//! Request bodies (all integers big-endian):
//!
//! ```text
//! HELLO   | version u16 | role u8 | reserved u8 (0) | node id u32 | token len u16 | token |
//! PING    | (empty) |
//! GET     | key len u16 | key |
//! PUT     | key len u16 | key | ttl seconds u32 (0 = none) | value (rest of the body) |
//! DELETE  | key len u16 | key |
//! STATS   | (empty) |
//! CLUSTER | (empty) |
//! LGET    | key len u16 | key |
//! ANTI_ENTROPY, COMPACT, RING | (empty) |
//! PEER_AUTH | proof (32 bytes) |   the initiator's proof of the cluster secret (protocol.md § 8)
//! peer ops 0x20..=0x3F  | defined by the cluster module |
//! ```
//!
//! Reply bodies with status OK:
//!
//! ```text
//! HELLO   | version u16 | node id u32 | shard u16 | shard count u16 |
//!           followed, for a peer HELLO, by | responder nonce (32 bytes) |
//! PEER_AUTH | proof (32 bytes) |   the responder's proof
//! GET     | version u64 | value (rest) |
//! PUT     | version u64 |
//! DELETE  | version u64 |
//! LGET    | version u64 | expires at ms u64 (0 = never) | value (rest) |
//! STATS, CLUSTER | UTF-8 text, one `name value` line each |
//! PING, ANTI_ENTROPY, COMPACT | (empty) |
//! RING    | the ring map (`ringmap.rs`): ownership encoding, then the node addresses |
//! ```
//!
//! NOT_FOUND has an empty body, except for LGET on a key whose local copy is a tombstone,
//! where it carries the tombstone's version u64. Every other status carries a UTF-8 message.

use super::frame::{self, FrameRef};
use super::{op, Consistency, Role, Status, FLAG_CAUSAL, OP_CONNECTION_ERROR, RESPONSE_BIT};
use crate::limits::{
    CONTEXT_SIZE_MAX, ERROR_MESSAGE_SIZE_MAX, FRAME_SIZE_MAX, KEY_SIZE_MAX, TOKEN_SIZE_MAX,
    TTL_SECONDS_MAX, VALUE_SIZE_MAX,
};
use byteorder::{BigEndian, ByteOrder};

/// A decoded request, borrowing from the frame's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Handshake.
    Hello {
        /// Protocol version the client speaks.
        version: u16,
        /// Client or peer.
        role: Role,
        /// The sending node's id (peers); 0 for clients.
        node_id: u32,
        /// Auth token: the client token for clients (may be empty); the initiator's nonce
        /// (32 bytes) for peers, which never send the cluster secret.
        token: &'a [u8],
    },
    /// Second step of the peer handshake: the initiator's proof of the cluster secret.
    PeerAuth {
        /// HMAC-SHA256 proof ([`crate::auth::proof`]), 32 bytes.
        proof: &'a [u8],
    },
    /// Liveness check.
    Ping,
    /// Read a key.
    Get {
        /// The key.
        key: &'a [u8],
        /// Consistency level.
        consistency: Consistency,
    },
    /// Write a key.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Time to live in seconds; 0 means no expiry.
        ttl_seconds: u32,
        /// Consistency level.
        consistency: Consistency,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: &'a [u8],
        /// Consistency level.
        consistency: Consistency,
    },
    /// Read a key's siblings and causal context (siblings mode: aux bit 2, protocol.md § 19).
    CausalGet {
        /// The key.
        key: &'a [u8],
        /// Consistency level.
        consistency: Consistency,
    },
    /// Write a key with the causal context of what the writer read (siblings mode): the value
    /// supersedes exactly the siblings the context saw.
    CausalPut {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Time to live in seconds; 0 means no expiry.
        ttl_seconds: u32,
        /// The causal context, as a GET gave it (empty: the writer read nothing). Opaque here;
        /// [`crate::causal`] checks it.
        context: &'a [u8],
        /// Consistency level.
        consistency: Consistency,
    },
    /// Delete what a causal context saw of a key (siblings mode).
    CausalDelete {
        /// The key.
        key: &'a [u8],
        /// The causal context, as a GET gave it.
        context: &'a [u8],
        /// Consistency level.
        consistency: Consistency,
    },
    /// Statistics.
    Stats,
    /// Cluster membership.
    Cluster,
    /// This node's local copy of a key.
    LocalGet {
        /// The key.
        key: &'a [u8],
    },
    /// Start an anti-entropy round.
    AntiEntropy,
    /// Start a compaction pass.
    Compact,
    /// The ring map.
    Ring,
    /// An operator's cluster command (text).
    ClusterAdmin {
        /// The command, e.g. `LEAVE 3`.
        command: &'a str,
    },
    /// A snapshot command (text).
    Snapshot {
        /// The command, e.g. `TAKE nightly`.
        command: &'a str,
    },
    /// A peer opcode, decoded by the cluster layer.
    Peer {
        /// The opcode (0x20..=0x3F).
        op: u8,
        /// The frame's `aux` byte.
        aux: u8,
        /// The body.
        body: &'a [u8],
    },
}

/// Longest CLUSTER_ADMIN or SNAPSHOT command in bytes.
pub const CLUSTER_ADMIN_COMMAND_SIZE_MAX: usize = 256;

/// Why a frame is not a valid request. [`RequestError::status`] gives the reply's status; a
/// status that closes the connection means the byte stream itself is suspect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The body does not match the opcode's layout.
    Malformed(String),
    /// The opcode is not defined (or is a response opcode sent as a request).
    UnknownOpcode(u8),
    /// Reserved flag bits set, empty key, TTL out of range, bad role.
    BadRequest(String),
    /// The key is longer than the maximum.
    KeyTooLarge(usize),
    /// The value is longer than the maximum.
    ValueTooLarge(usize),
}

impl RequestError {
    /// The status code of the error reply.
    pub fn status(&self) -> Status {
        match self {
            RequestError::Malformed(_) => Status::Malformed,
            RequestError::UnknownOpcode(_) => Status::UnknownOpcode,
            RequestError::BadRequest(_) => Status::BadRequest,
            RequestError::KeyTooLarge(_) => Status::KeyTooLarge,
            RequestError::ValueTooLarge(_) => Status::ValueTooLarge,
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Malformed(why) => write!(f, "malformed frame: {why}"),
            RequestError::UnknownOpcode(op) => write!(f, "unknown opcode 0x{op:02x}"),
            RequestError::BadRequest(why) => write!(f, "bad request: {why}"),
            RequestError::KeyTooLarge(n) => {
                write!(f, "key of {n} bytes exceeds the maximum of {KEY_SIZE_MAX}")
            }
            RequestError::ValueTooLarge(n) => {
                write!(
                    f,
                    "value of {n} bytes exceeds the maximum of {VALUE_SIZE_MAX}"
                )
            }
        }
    }
}

impl std::error::Error for RequestError {}

fn malformed(op: u8, why: &str) -> RequestError {
    RequestError::Malformed(format!("{} body {}", op::name(op), why))
}

/// Split `| key len u16 | key | rest |`, checking the key's bounds.
fn split_key(op: u8, body: &[u8]) -> Result<(&[u8], &[u8]), RequestError> {
    if body.len() < 2 {
        return Err(malformed(op, "is shorter than its key length field"));
    }
    let key_len = BigEndian::read_u16(&body[..2]) as usize;
    let rest = &body[2..];
    if key_len > rest.len() {
        return Err(malformed(op, "ends inside its key"));
    }
    if key_len == 0 {
        return Err(RequestError::BadRequest("empty key".into()));
    }
    if key_len > KEY_SIZE_MAX {
        return Err(RequestError::KeyTooLarge(key_len));
    }
    Ok(rest.split_at(key_len))
}

/// A body that is exactly `| key len | key |`.
fn key_only(op: u8, body: &[u8]) -> Result<&[u8], RequestError> {
    let (key, rest) = split_key(op, body)?;
    if !rest.is_empty() {
        return Err(malformed(op, "has bytes after its key"));
    }
    Ok(key)
}

fn empty_body(op: u8, body: &[u8]) -> Result<(), RequestError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(malformed(op, "must be empty"))
    }
}

/// Split `| ctx len u16 | ctx | rest |` (the causal context of a siblings-mode write).
fn split_context(op: u8, body: &[u8]) -> Result<(&[u8], &[u8]), RequestError> {
    if body.len() < 2 {
        return Err(malformed(op, "ends before its context length"));
    }
    let len = BigEndian::read_u16(&body[..2]) as usize;
    let rest = &body[2..];
    if len > rest.len() {
        return Err(malformed(op, "ends inside its context"));
    }
    if len > CONTEXT_SIZE_MAX {
        return Err(RequestError::BadRequest(format!(
            "a causal context of {len} bytes exceeds the maximum of {CONTEXT_SIZE_MAX}"
        )));
    }
    Ok(rest.split_at(len))
}

/// The flags of a GET, PUT or DELETE: the consistency level and whether the request speaks
/// the causal protocol of siblings mode ([`FLAG_CAUSAL`]). The other bits must be zero, so
/// that they can gain a meaning later.
fn key_op_flags(flags: u8) -> Result<(Consistency, bool), RequestError> {
    if flags & !(Consistency::MASK | FLAG_CAUSAL) != 0 {
        return Err(RequestError::BadRequest(format!(
            "reserved flag bits set: 0x{flags:02x}"
        )));
    }
    Ok((Consistency::from_bits(flags), flags & FLAG_CAUSAL != 0))
}

fn no_flags(flags: u8) -> Result<(), RequestError> {
    if flags != 0 {
        return Err(RequestError::BadRequest(format!(
            "flags must be 0, got 0x{flags:02x}"
        )));
    }
    Ok(())
}

impl<'a> Request<'a> {
    /// Decode a request frame. Cheap: no allocation unless it fails.
    pub fn decode(f: &FrameRef<'a>) -> Result<Request<'a>, RequestError> {
        let body = f.body;
        match f.op {
            op::HELLO => {
                no_flags(f.aux)?;
                if body.len() < 10 {
                    return Err(malformed(f.op, "is shorter than 10 bytes"));
                }
                let version = BigEndian::read_u16(&body[0..2]);
                let role = Role::from_u8(body[2])
                    .ok_or_else(|| RequestError::BadRequest(format!("unknown role {}", body[2])))?;
                let node_id = BigEndian::read_u32(&body[4..8]);
                let token_len = BigEndian::read_u16(&body[8..10]) as usize;
                if body.len() != 10 + token_len {
                    return Err(malformed(f.op, "length does not match its token length"));
                }
                if token_len > TOKEN_SIZE_MAX {
                    return Err(RequestError::BadRequest(format!(
                        "token of {token_len} bytes exceeds the maximum of {TOKEN_SIZE_MAX}"
                    )));
                }
                Ok(Request::Hello {
                    version,
                    role,
                    node_id,
                    token: &body[10..],
                })
            }
            op::PING => no_flags(f.aux)
                .and(empty_body(f.op, body))
                .map(|_| Request::Ping),
            op::GET => {
                let key = key_only(f.op, body)?;
                let (consistency, causal) = key_op_flags(f.aux)?;
                Ok(if causal {
                    Request::CausalGet { key, consistency }
                } else {
                    Request::Get { key, consistency }
                })
            }
            op::PUT => {
                let (key, rest) = split_key(f.op, body)?;
                if rest.len() < 4 {
                    return Err(malformed(f.op, "ends before its TTL"));
                }
                let ttl_seconds = BigEndian::read_u32(&rest[..4]);
                let (consistency, causal) = key_op_flags(f.aux)?;
                let (context, value) = if causal {
                    split_context(f.op, &rest[4..])?
                } else {
                    (&[][..], &rest[4..])
                };
                if value.len() > VALUE_SIZE_MAX {
                    return Err(RequestError::ValueTooLarge(value.len()));
                }
                if ttl_seconds > TTL_SECONDS_MAX {
                    return Err(RequestError::BadRequest(format!(
                        "TTL of {ttl_seconds} s exceeds the maximum of {TTL_SECONDS_MAX} s"
                    )));
                }
                Ok(if causal {
                    Request::CausalPut {
                        key,
                        value,
                        ttl_seconds,
                        context,
                        consistency,
                    }
                } else {
                    Request::Put {
                        key,
                        value,
                        ttl_seconds,
                        consistency,
                    }
                })
            }
            op::DELETE => {
                let (consistency, causal) = key_op_flags(f.aux)?;
                if causal {
                    let (key, rest) = split_key(f.op, body)?;
                    let (context, rest) = split_context(f.op, rest)?;
                    if !rest.is_empty() {
                        return Err(malformed(f.op, "has bytes after its context"));
                    }
                    return Ok(Request::CausalDelete {
                        key,
                        context,
                        consistency,
                    });
                }
                let key = key_only(f.op, body)?;
                Ok(Request::Delete { key, consistency })
            }
            op::STATS => no_flags(f.aux)
                .and(empty_body(f.op, body))
                .map(|_| Request::Stats),
            op::CLUSTER => no_flags(f.aux)
                .and(empty_body(f.op, body))
                .map(|_| Request::Cluster),
            op::LOCAL_GET => {
                no_flags(f.aux)?;
                Ok(Request::LocalGet {
                    key: key_only(f.op, body)?,
                })
            }
            op::ANTI_ENTROPY => no_flags(f.aux)
                .and(empty_body(f.op, body))
                .map(|_| Request::AntiEntropy),
            op::COMPACT => no_flags(f.aux)
                .and(empty_body(f.op, body))
                .map(|_| Request::Compact),
            op::RING => no_flags(f.aux)
                .and(empty_body(f.op, body))
                .map(|_| Request::Ring),
            op::CLUSTER_ADMIN | op::SNAPSHOT => {
                no_flags(f.aux)?;
                if body.is_empty() || body.len() > CLUSTER_ADMIN_COMMAND_SIZE_MAX {
                    return Err(RequestError::BadRequest(format!(
                        "a {} command is 1 to {CLUSTER_ADMIN_COMMAND_SIZE_MAX} bytes",
                        op::name(f.op)
                    )));
                }
                let command = std::str::from_utf8(body)
                    .map_err(|_| RequestError::BadRequest("the command is not UTF-8".into()))?;
                Ok(if f.op == op::SNAPSHOT {
                    Request::Snapshot { command }
                } else {
                    Request::ClusterAdmin { command }
                })
            }
            op::PEER_AUTH => {
                no_flags(f.aux)?;
                if body.len() != crate::auth::PROOF_SIZE {
                    return Err(malformed(f.op, "is not a 32-byte proof"));
                }
                Ok(Request::PeerAuth { proof: body })
            }
            op::PEER_FIRST..=op::PEER_LAST => Ok(Request::Peer {
                op: f.op,
                aux: f.aux,
                body,
            }),
            other => Err(RequestError::UnknownOpcode(other)),
        }
    }

    /// The opcode of this request.
    pub fn op(&self) -> u8 {
        match self {
            Request::Hello { .. } => op::HELLO,
            Request::Ping => op::PING,
            Request::Get { .. } | Request::CausalGet { .. } => op::GET,
            Request::Put { .. } | Request::CausalPut { .. } => op::PUT,
            Request::Delete { .. } | Request::CausalDelete { .. } => op::DELETE,
            Request::Stats => op::STATS,
            Request::Cluster => op::CLUSTER,
            Request::LocalGet { .. } => op::LOCAL_GET,
            Request::AntiEntropy => op::ANTI_ENTROPY,
            Request::Compact => op::COMPACT,
            Request::Ring => op::RING,
            Request::ClusterAdmin { .. } => op::CLUSTER_ADMIN,
            Request::Snapshot { .. } => op::SNAPSHOT,
            Request::PeerAuth { .. } => op::PEER_AUTH,
            Request::Peer { op, .. } => *op,
        }
    }

    /// Whether this is an admin opcode (protocol.md § 8.2: ANTI_ENTROPY, COMPACT,
    /// CLUSTER_ADMIN, SNAPSHOT), which only an admin session may send.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Request::AntiEntropy
                | Request::Compact
                | Request::ClusterAdmin { .. }
                | Request::Snapshot { .. }
        )
    }

    /// The key this request addresses, if any (the router uses it to pick the shard).
    pub fn key(&self) -> Option<&'a [u8]> {
        match self {
            Request::Get { key, .. }
            | Request::Put { key, .. }
            | Request::Delete { key, .. }
            | Request::CausalGet { key, .. }
            | Request::CausalPut { key, .. }
            | Request::CausalDelete { key, .. }
            | Request::LocalGet { key } => Some(key),
            _ => None,
        }
    }

    /// Whether this request can be put on the wire: a key or value beyond what its length
    /// field can express (or beyond the frame limit) cannot. Keys and values that are merely
    /// above the node's limits *can* be sent: the node answers KEY_TOO_LARGE/VALUE_TOO_LARGE.
    pub fn check_encodable(&self) -> Result<(), RequestError> {
        if let Some(key) = self.key() {
            if key.len() > u16::MAX as usize {
                return Err(RequestError::KeyTooLarge(key.len()));
            }
        }
        match self {
            Request::Put { value, .. } | Request::CausalPut { value, .. }
                if value.len() > VALUE_SIZE_MAX =>
            {
                Err(RequestError::ValueTooLarge(value.len()))
            }
            Request::CausalPut { context, .. } | Request::CausalDelete { context, .. }
                if context.len() > u16::MAX as usize =>
            {
                Err(RequestError::BadRequest(format!(
                    "context of {} bytes",
                    context.len()
                )))
            }
            Request::Hello { token, .. } if token.len() > TOKEN_SIZE_MAX => Err(
                RequestError::BadRequest(format!("token longer than {TOKEN_SIZE_MAX} bytes")),
            ),
            Request::Peer { body, .. } if body.len() > FRAME_SIZE_MAX - 6 => Err(
                RequestError::Malformed(format!("peer body of {} bytes", body.len())),
            ),
            _ => Ok(()),
        }
    }

    /// Append this request as a frame with id `id`. The caller checks
    /// [`Request::check_encodable`] first for requests built from untrusted sizes; encoding an
    /// unencodable request is a programmer error and panics.
    pub fn encode(&self, id: u32, out: &mut Vec<u8>) {
        match *self {
            Request::Hello {
                version,
                role,
                node_id,
                token,
            } => {
                assert!(token.len() <= TOKEN_SIZE_MAX, "token too long to encode");
                let mut head = [0u8; 10];
                BigEndian::write_u16(&mut head[0..2], version);
                head[2] = role.to_u8();
                BigEndian::write_u32(&mut head[4..8], node_id);
                BigEndian::write_u16(&mut head[8..10], token.len() as u16);
                frame::put_frame(out, op::HELLO, 0, id, &[&head, token]);
            }
            Request::Get { key, consistency } => {
                put_key_request(out, op::GET, consistency.to_bits(), id, key, &[])
            }
            Request::Put {
                key,
                value,
                ttl_seconds,
                consistency,
            } => {
                assert!(value.len() <= VALUE_SIZE_MAX, "value too long to encode");
                let ttl = ttl_seconds.to_be_bytes();
                put_key_request(out, op::PUT, consistency.to_bits(), id, key, &[&ttl, value])
            }
            Request::Delete { key, consistency } => {
                put_key_request(out, op::DELETE, consistency.to_bits(), id, key, &[])
            }
            Request::CausalGet { key, consistency } => put_key_request(
                out,
                op::GET,
                consistency.to_bits() | FLAG_CAUSAL,
                id,
                key,
                &[],
            ),
            Request::CausalPut {
                key,
                value,
                ttl_seconds,
                context,
                consistency,
            } => {
                assert!(value.len() <= VALUE_SIZE_MAX, "value too long to encode");
                assert!(context.len() <= u16::MAX as usize, "context too long");
                let ttl = ttl_seconds.to_be_bytes();
                let ctx_len = (context.len() as u16).to_be_bytes();
                put_key_request(
                    out,
                    op::PUT,
                    consistency.to_bits() | FLAG_CAUSAL,
                    id,
                    key,
                    &[&ttl, &ctx_len, context, value],
                )
            }
            Request::CausalDelete {
                key,
                context,
                consistency,
            } => {
                assert!(context.len() <= u16::MAX as usize, "context too long");
                let ctx_len = (context.len() as u16).to_be_bytes();
                put_key_request(
                    out,
                    op::DELETE,
                    consistency.to_bits() | FLAG_CAUSAL,
                    id,
                    key,
                    &[&ctx_len, context],
                )
            }
            Request::LocalGet { key } => put_key_request(out, op::LOCAL_GET, 0, id, key, &[]),
            Request::ClusterAdmin { command } => {
                frame::put_frame(out, op::CLUSTER_ADMIN, 0, id, &[command.as_bytes()])
            }
            Request::Snapshot { command } => {
                frame::put_frame(out, op::SNAPSHOT, 0, id, &[command.as_bytes()])
            }
            Request::Peer { op, aux, body } => frame::put_frame(out, op, aux, id, &[body]),
            Request::PeerAuth { proof } => {
                assert_eq!(proof.len(), crate::auth::PROOF_SIZE, "a proof is 32 bytes");
                frame::put_frame(out, op::PEER_AUTH, 0, id, &[proof]);
            }
            Request::Ping
            | Request::Stats
            | Request::Cluster
            | Request::AntiEntropy
            | Request::Compact
            | Request::Ring => frame::put_frame(out, self.op(), 0, id, &[]),
        }
    }
}

fn put_key_request(out: &mut Vec<u8>, op: u8, aux: u8, id: u32, key: &[u8], rest: &[&[u8]]) {
    assert!(key.len() <= u16::MAX as usize, "key too long to encode");
    let key_len = (key.len() as u16).to_be_bytes();
    let mut parts: [&[u8]; 6] = [&key_len, key, &[], &[], &[], &[]];
    parts[2..2 + rest.len()].copy_from_slice(rest);
    frame::put_frame(out, op, aux, id, &parts);
}

/// A reply as a client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The request's opcode (response bit cleared); 0 for a connection-level error.
    pub op: u8,
    /// Status code byte (see [`Status::from_u8`]).
    pub status: u8,
    /// The request id it answers.
    pub id: u32,
    /// The body.
    pub body: &'a [u8],
}

impl<'a> Response<'a> {
    /// Read a reply out of a frame; `None` if the frame is not a response.
    pub fn from_frame(f: &FrameRef<'a>) -> Option<Response<'a>> {
        if f.op & RESPONSE_BIT == 0 {
            return None;
        }
        Some(Response {
            op: f.op & !RESPONSE_BIT,
            status: f.aux,
            id: f.id,
            body: f.body,
        })
    }

    /// The status, if the code is known.
    pub fn status(&self) -> Option<Status> {
        Status::from_u8(self.status)
    }

    /// The body as an error message (lossy UTF-8).
    pub fn message(&self) -> String {
        String::from_utf8_lossy(self.body).into_owned()
    }

    /// The leading version u64 of a GET/PUT/DELETE/LGET reply, and the bytes after it.
    pub fn version_and_rest(&self) -> Option<(u64, &'a [u8])> {
        if self.body.len() < 8 {
            return None;
        }
        Some((BigEndian::read_u64(&self.body[..8]), &self.body[8..]))
    }
}

/// Append an OK reply with a body made of `parts`.
#[inline]
pub fn put_ok(out: &mut Vec<u8>, op: u8, id: u32, parts: &[&[u8]]) {
    frame::put_frame(out, op | RESPONSE_BIT, Status::Ok as u8, id, parts);
}

/// Append a reply with status `status` and a body made of `parts` (NOT_FOUND with a version).
#[inline]
pub fn put_reply(out: &mut Vec<u8>, op: u8, status: Status, id: u32, parts: &[&[u8]]) {
    frame::put_frame(out, op | RESPONSE_BIT, status as u8, id, parts);
}

/// Append an error reply whose body is `message`, cut to [`ERROR_MESSAGE_SIZE_MAX`] bytes on a
/// character boundary.
pub fn put_error(out: &mut Vec<u8>, op: u8, id: u32, status: Status, message: &str) {
    let mut end = message.len().min(ERROR_MESSAGE_SIZE_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    frame::put_frame(
        out,
        op | RESPONSE_BIT,
        status as u8,
        id,
        &[&message.as_bytes()[..end]],
    );
}

/// Append a connection-level error frame (op 0x80, id 0).
pub fn put_connection_error(out: &mut Vec<u8>, status: Status, message: &str) {
    put_error(out, OP_CONNECTION_ERROR, 0, status, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::FRAME_SIZE_MAX;

    fn decode_bytes(bytes: &[u8]) -> Result<Request<'_>, RequestError> {
        let (f, n) = frame::parse(bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        Request::decode(&f)
    }

    fn round_trip(req: Request<'_>) {
        let mut out = Vec::new();
        req.encode(7, &mut out);
        let (f, n) = frame::parse(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(f.id, 7);
        assert_eq!(Request::decode(&f).unwrap(), req);
    }

    #[test]
    fn requests_round_trip() {
        round_trip(Request::Ping);
        round_trip(Request::Stats);
        round_trip(Request::Cluster);
        round_trip(Request::AntiEntropy);
        round_trip(Request::Compact);
        round_trip(Request::Ring);
        round_trip(Request::Hello {
            version: 1,
            role: Role::Peer,
            node_id: 3,
            token: b"secret",
        });
        for c in [
            Consistency::Default,
            Consistency::One,
            Consistency::Quorum,
            Consistency::All,
        ] {
            round_trip(Request::Get {
                key: b"k",
                consistency: c,
            });
            round_trip(Request::Delete {
                key: b"\x00\xff",
                consistency: c,
            });
            round_trip(Request::Put {
                key: b"key",
                value: b"",
                ttl_seconds: 60,
                consistency: c,
            });
        }
        round_trip(Request::LocalGet { key: b"x" });
        for c in [Consistency::Default, Consistency::All] {
            round_trip(Request::CausalGet {
                key: b"k",
                consistency: c,
            });
            round_trip(Request::CausalPut {
                key: b"k",
                value: b"v",
                ttl_seconds: 9,
                context: &[1, 0, 0],
                consistency: c,
            });
            round_trip(Request::CausalPut {
                key: b"k",
                value: b"",
                ttl_seconds: 0,
                context: &[],
                consistency: c,
            });
            round_trip(Request::CausalDelete {
                key: b"k",
                context: &[1, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7],
                consistency: c,
            });
        }
        round_trip(Request::Put {
            key: &[7u8; KEY_SIZE_MAX],
            value: &vec![1u8; VALUE_SIZE_MAX],
            ttl_seconds: 0,
            consistency: Consistency::All,
        });
    }

    #[test]
    fn largest_put_fits_a_frame() {
        let mut out = Vec::new();
        Request::Put {
            key: &[7u8; KEY_SIZE_MAX],
            value: &vec![1u8; VALUE_SIZE_MAX],
            ttl_seconds: 0,
            consistency: Consistency::All,
        }
        .encode(1, &mut out);
        assert!(out.len() - 4 <= FRAME_SIZE_MAX);
    }

    #[test]
    fn content_errors_keep_their_codes() {
        let mut out = Vec::new();
        put_key_request(&mut out, op::GET, 0, 1, &[0u8; KEY_SIZE_MAX + 1], &[]);
        assert_eq!(
            decode_bytes(&out),
            Err(RequestError::KeyTooLarge(KEY_SIZE_MAX + 1))
        );

        out.clear();
        frame::put_frame(&mut out, 0x7E, 0, 1, &[]);
        assert_eq!(decode_bytes(&out), Err(RequestError::UnknownOpcode(0x7E)));

        out.clear();
        put_key_request(&mut out, op::GET, 0x08, 1, b"k", &[]);
        assert_eq!(decode_bytes(&out).unwrap_err().status(), Status::BadRequest);

        // Siblings mode: a causal PUT or DELETE whose context runs past the body is malformed,
        // one over the context limit a bad request.
        out.clear();
        put_key_request(
            &mut out,
            op::DELETE,
            FLAG_CAUSAL,
            1,
            b"k",
            &[&[0, 9], b"abc"],
        );
        assert_eq!(decode_bytes(&out).unwrap_err().status(), Status::Malformed);
        out.clear();
        let long = vec![0u8; CONTEXT_SIZE_MAX + 1];
        let len = (long.len() as u16).to_be_bytes();
        put_key_request(&mut out, op::DELETE, FLAG_CAUSAL, 1, b"k", &[&len, &long]);
        assert_eq!(decode_bytes(&out).unwrap_err().status(), Status::BadRequest);
        out.clear();
        put_key_request(
            &mut out,
            op::DELETE,
            FLAG_CAUSAL,
            1,
            b"k",
            &[&[0, 1], b"ab"],
        );
        assert_eq!(decode_bytes(&out).unwrap_err().status(), Status::Malformed);

        out.clear();
        put_key_request(&mut out, op::GET, 0, 1, b"", &[]);
        assert_eq!(decode_bytes(&out).unwrap_err().status(), Status::BadRequest);

        out.clear();
        frame::put_frame(&mut out, op::GET, 0, 1, &[&[0, 9], b"short"]);
        assert_eq!(decode_bytes(&out).unwrap_err().status(), Status::Malformed);

        out.clear();
        frame::put_frame(&mut out, op::PUT, 0, 1, &[&[0, 1], b"k", &[0, 0]]);
        assert_eq!(decode_bytes(&out).unwrap_err().status(), Status::Malformed);

        out.clear();
        frame::put_frame(&mut out, op::PING, 0, 1, &[b"x"]);
        assert_eq!(decode_bytes(&out).unwrap_err().status(), Status::Malformed);

        // A response opcode sent as a request is not a request.
        out.clear();
        frame::put_frame(&mut out, op::GET | RESPONSE_BIT, 0, 1, &[]);
        assert_eq!(
            decode_bytes(&out),
            Err(RequestError::UnknownOpcode(op::GET | RESPONSE_BIT))
        );
    }

    #[test]
    fn replies_read_back() {
        let mut out = Vec::new();
        put_ok(&mut out, op::GET, 9, &[&42u64.to_be_bytes(), b"val"]);
        let (f, _) = frame::parse(&out).unwrap().unwrap();
        let r = Response::from_frame(&f).unwrap();
        assert_eq!((r.op, r.status, r.id), (op::GET, 0, 9));
        assert_eq!(r.version_and_rest(), Some((42, &b"val"[..])));

        out.clear();
        let long = "é".repeat(ERROR_MESSAGE_SIZE_MAX);
        put_error(&mut out, op::PUT, 3, Status::Overloaded, &long);
        let (f, _) = frame::parse(&out).unwrap().unwrap();
        let r = Response::from_frame(&f).unwrap();
        assert_eq!(r.status(), Some(Status::Overloaded));
        assert!(r.body.len() <= ERROR_MESSAGE_SIZE_MAX);
        assert!(std::str::from_utf8(r.body).is_ok());
    }
}
