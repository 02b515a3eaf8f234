//! Wire protocol v1: framing, opcodes, status codes, and the codec between bytes and values.
//!
//! `protocol.md` at the top of the repository is the normative description; this module is its
//! implementation, and the golden vectors in its tests are the hex examples printed there.
//!
//! Every frame, in both directions, is a 4-byte big-endian length followed by that many bytes:
//!
//! ```text
//!  0         4      5      6              10
//!  +---------+------+------+--------------+---------------------+
//!  | length  |  op  | aux  |  request id  | body                |
//!  | u32 BE  |  u8  |  u8  |  u32 BE      | length - 6 bytes    |
//!  +---------+------+------+--------------+---------------------+
//! ```
//!
//! * `op`: the opcode of a request (0x01..=0x7F), or the request's opcode with the high bit set
//!   (`op | 0x80`) in its response. `0x80` with request id 0 is a connection-level error frame
//!   (a length out of range, too many connections); a body that does not fit its opcode is
//!   answered on the request's own opcode and id, then the connection is closed.
//! * `aux`: in a request, flags (bits 0-1: consistency level); in a response, the status code.
//! * `request id`: chosen by the client, echoed in the response. Responses on one connection may
//!   come back in any order; the id is how a client matches them.
//!
//! The module is split the mini-redis way: [`frame`] only finds frame boundaries (with a cheap
//! `check` that never allocates, and "need more bytes" as `Ok(None)`), [`message`] turns a frame
//! into a typed request or reply and back.

pub mod frame;
pub mod message;
pub mod ringmap;
pub mod siblings;

pub use frame::{FrameError, FrameRef};
pub use message::{Request, RequestError, Response};

/// Protocol version spoken by this build, sent in a client's HELLO (a peer's HELLO carries the
/// peer-protocol version, [`crate::auth::PEER_PROTOCOL_VERSION`]).
pub const PROTOCOL_VERSION: u16 = 1;

/// Set in the `op` byte of every response.
pub const RESPONSE_BIT: u8 = 0x80;

/// The UNAUTHORIZED message of an admin opcode on a node with an admin token, from a session
/// whose HELLO did not present it (§ 8.2).
pub const ADMIN_TOKEN_NEEDED: &str =
    "an admin opcode needs a HELLO with the admin token (kvd --admin-token)";

/// The UNAUTHORIZED message of an admin opcode from beyond loopback on a node without an
/// admin token (§ 8.2).
pub const ADMIN_LOOPBACK_ONLY: &str =
    "admin opcodes are allowed only from loopback on a node without an admin token \
     (kvd --admin-token)";

/// The `op` byte of a connection-level error frame (frame length out of range, too many
/// connections), sent with request id 0 before the server closes the connection. A request
/// with an opcode outside 0x01..=0x7F is also answered on 0x80 (UNKNOWN_OPCODE, its own id).
pub const OP_CONNECTION_ERROR: u8 = RESPONSE_BIT;

/// Request opcodes.
pub mod op {
    /// Handshake: protocol version, role, node id (peers), auth token.
    pub const HELLO: u8 = 0x01;
    /// Liveness check; empty body both ways.
    pub const PING: u8 = 0x02;
    /// Read a key.
    pub const GET: u8 = 0x03;
    /// Write a key (with an optional TTL).
    pub const PUT: u8 = 0x04;
    /// Delete a key (writes a tombstone).
    pub const DELETE: u8 = 0x05;
    /// Node statistics as text lines.
    pub const STATS: u8 = 0x06;
    /// Cluster membership as text lines.
    pub const CLUSTER: u8 = 0x07;
    /// Read only the connected node's local copy of a key, with its version.
    pub const LOCAL_GET: u8 = 0x08;
    /// Admin: start an anti-entropy round now.
    pub const ANTI_ENTROPY: u8 = 0x09;
    /// Admin: start a compaction pass now.
    pub const COMPACT: u8 = 0x0A;
    /// Peer handshake, second step: the initiator's proof of the cluster secret, answered
    /// with the responder's (protocol.md § 8).
    pub const PEER_AUTH: u8 = 0x0B;
    /// The ring map: its version, the nodes' addresses and each partition's owners, so that
    /// clients can send a request to an owner of its key (protocol.md § 9, [`super::ringmap`]).
    pub const RING: u8 = 0x0C;
    /// Admin: an operator's cluster command as text (`LEAVE n`, `REMOVE n`, `PLAN`,
    /// `TRANSFERS`, `PAUSE`, `RESUME`, `THROTTLE mb`), answered with text (protocol.md § 11.3).
    pub const CLUSTER_ADMIN: u8 = 0x0D;
    /// Admin: a snapshot command as text (`TAKE name`, `LIST`, `DELETE name`), answered with
    /// text (protocol.md § 11.4).
    pub const SNAPSHOT: u8 = 0x0E;
    /// First opcode of the peer range: only connections that completed a peer HELLO may use it.
    pub const PEER_FIRST: u8 = 0x20;
    /// Last opcode of the peer range.
    pub const PEER_LAST: u8 = 0x3F;

    /// The name of an opcode, for logs, STATS and kvcat.
    pub fn name(op: u8) -> &'static str {
        match op & !super::RESPONSE_BIT {
            HELLO => "HELLO",
            PING => "PING",
            GET => "GET",
            PUT => "PUT",
            DELETE => "DELETE",
            STATS => "STATS",
            CLUSTER => "CLUSTER",
            LOCAL_GET => "LGET",
            ANTI_ENTROPY => "ANTI_ENTROPY",
            COMPACT => "COMPACT",
            PEER_AUTH => "PEER_AUTH",
            RING => "RING",
            CLUSTER_ADMIN => "CLUSTER_ADMIN",
            SNAPSHOT => "SNAPSHOT",
            0 => "CONNECTION",
            PEER_FIRST..=PEER_LAST => "PEER",
            _ => "UNKNOWN",
        }
    }
}

/// Status codes carried in the `aux` byte of a response. Every error response's body is a
/// UTF-8 message for humans (at most [`crate::limits::ERROR_MESSAGE_SIZE_MAX`] bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The request succeeded; the body depends on the opcode.
    Ok = 0x00,
    /// The key has no live value (never written, deleted, or expired).
    NotFound = 0x01,
    /// The frame could not be parsed (bad length, body that does not match the opcode's
    /// layout). The connection is closed after this reply.
    Malformed = 0x10,
    /// The frame's declared length exceeds the maximum. The connection is closed.
    FrameTooLarge = 0x11,
    /// The opcode is not known. The connection stays usable.
    UnknownOpcode = 0x12,
    /// A well-formed request with a bad field (reserved flag bits set, empty key, TTL too
    /// long). The connection stays usable.
    BadRequest = 0x13,
    /// The key is longer than the maximum. The connection stays usable.
    KeyTooLarge = 0x14,
    /// The value is longer than the maximum. The connection stays usable.
    ValueTooLarge = 0x15,
    /// HELLO asked for a protocol version this node does not speak.
    UnsupportedVersion = 0x16,
    /// Bad or missing auth token, or a peer opcode on a client connection.
    Unauthorized = 0x17,
    /// The node is too busy to take the request now; retry later.
    Overloaded = 0x20,
    /// Too few replicas are reachable to meet the consistency level.
    Unavailable = 0x21,
    /// Replicas did not answer in time to meet the consistency level.
    Timeout = 0x22,
    /// The node is at its connection limit. The connection is closed.
    TooManyConnections = 0x23,
    /// The storage engine cannot take writes (disk full, I/O error); reads still work.
    StorageError = 0x24,
    /// The node is shutting down.
    ShuttingDown = 0x25,
    /// This node's clock is too far from the cluster's (or not measured yet) for it to
    /// coordinate writes; nothing was written. Use another node.
    ClockOffset = 0x26,
    /// A write failed after it reached some replicas: it may have been applied (as for
    /// TIMEOUT), and may become visible. UNAVAILABLE means nothing was written.
    MaybeApplied = 0x27,
    /// Siblings mode: a GET without the causal flag found several siblings, which its reply
    /// cannot carry; read the key with the flag (protocol.md § 19).
    Siblings = 0x28,
    /// Siblings mode: the write would leave more siblings (or a larger causal state) than the
    /// limit; nothing was written. Read the key and write with its context to resolve them.
    TooManySiblings = 0x29,
    /// A bug in the node. Reported, never hidden.
    Internal = 0x30,
}

impl Status {
    /// All statuses, in code order (for STATS and tests).
    pub const ALL: [Status; 21] = [
        Status::Ok,
        Status::NotFound,
        Status::Malformed,
        Status::FrameTooLarge,
        Status::UnknownOpcode,
        Status::BadRequest,
        Status::KeyTooLarge,
        Status::ValueTooLarge,
        Status::UnsupportedVersion,
        Status::Unauthorized,
        Status::Overloaded,
        Status::Unavailable,
        Status::Timeout,
        Status::TooManyConnections,
        Status::StorageError,
        Status::ShuttingDown,
        Status::ClockOffset,
        Status::MaybeApplied,
        Status::Siblings,
        Status::TooManySiblings,
        Status::Internal,
    ];

    /// The status of a code byte, if known.
    pub fn from_u8(code: u8) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as u8 == code)
    }

    /// The upper-case name used by kvcat (`ERR <NAME> <message>`) and STATS.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NotFound => "NOT_FOUND",
            Status::Malformed => "MALFORMED",
            Status::FrameTooLarge => "FRAME_TOO_LARGE",
            Status::UnknownOpcode => "UNKNOWN_OPCODE",
            Status::BadRequest => "BAD_REQUEST",
            Status::KeyTooLarge => "KEY_TOO_LARGE",
            Status::ValueTooLarge => "VALUE_TOO_LARGE",
            Status::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Status::Unauthorized => "UNAUTHORIZED",
            Status::Overloaded => "OVERLOADED",
            Status::Unavailable => "UNAVAILABLE",
            Status::Timeout => "TIMEOUT",
            Status::TooManyConnections => "TOO_MANY_CONNECTIONS",
            Status::StorageError => "STORAGE_ERROR",
            Status::ShuttingDown => "SHUTTING_DOWN",
            Status::ClockOffset => "CLOCK_OFFSET",
            Status::MaybeApplied => "MAYBE_APPLIED",
            Status::Siblings => "SIBLINGS",
            Status::TooManySiblings => "TOO_MANY_SIBLINGS",
            Status::Internal => "INTERNAL",
        }
    }

    /// Whether the server always closes the connection after sending this status. (Refusals
    /// of a handshake close it too, whatever their status: protocol.md § 8.)
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Status::Malformed
                | Status::FrameTooLarge
                | Status::TooManyConnections
                | Status::ShuttingDown
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-request consistency level, in bits 0-1 of a request's `aux` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Consistency {
    /// 0: the node's default (QUORUM).
    #[default]
    Default,
    /// 1: one replica.
    One,
    /// 2: a majority of the N replicas.
    Quorum,
    /// 3: all N replicas.
    All,
}

/// Bit 2 of a GET, PUT or DELETE's `aux`: the request speaks the causal protocol of a
/// `--conflicts siblings` cluster (protocol.md § 19): a GET answers every sibling and the causal
/// context, a PUT or DELETE carries the context it read.
pub const FLAG_CAUSAL: u8 = 0b100;

impl Consistency {
    /// Mask of the consistency bits in `aux`.
    pub const MASK: u8 = 0b11;

    /// The two-bit code of this level.
    pub fn to_bits(self) -> u8 {
        match self {
            Consistency::Default => 0,
            Consistency::One => 1,
            Consistency::Quorum => 2,
            Consistency::All => 3,
        }
    }

    /// The level in the low two bits of `bits`.
    pub fn from_bits(bits: u8) -> Consistency {
        match bits & Self::MASK {
            0 => Consistency::Default,
            1 => Consistency::One,
            2 => Consistency::Quorum,
            _ => Consistency::All,
        }
    }

    /// Replicas that must answer, out of `n`. `Default` counts as QUORUM here; a node first
    /// resolves it to its `--default-consistency` (`ClusterNode::level`).
    pub fn required(self, n: usize) -> usize {
        match self {
            Consistency::One => 1.min(n),
            Consistency::Default | Consistency::Quorum => n / 2 + 1,
            Consistency::All => n,
        }
    }

    /// Parse `ONE`, `QUORUM` or `ALL` (any case).
    pub fn parse(word: &str) -> Option<Consistency> {
        match word.to_ascii_uppercase().as_str() {
            "ONE" => Some(Consistency::One),
            "QUORUM" => Some(Consistency::Quorum),
            "ALL" => Some(Consistency::All),
            _ => None,
        }
    }

    /// Upper-case name; `Default` prints as QUORUM, which it means.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::One => "ONE",
            Consistency::Default | Consistency::Quorum => "QUORUM",
            Consistency::All => "ALL",
        }
    }
}

/// Role announced in HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// 1: an application or tool.
    Client,
    /// 2: another node of the cluster; must present the cluster secret.
    Peer,
}

impl Role {
    /// The role's code byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Role::Client => 1,
            Role::Peer => 2,
        }
    }

    /// The role of a code byte, if known.
    pub fn from_u8(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::Client),
            2 => Some(Role::Peer),
            _ => None,
        }
    }
}
