//! The coordinator's public values: the writes it owns ([`OwnedWrite`]), its answers to
//! clients ([`Outcome`]), the actions its caller performs ([`Action`]), its settings and its
//! counters.

use crate::protocol::Status;
use crate::storage::{Stored, Write};
use crate::version::Version;

/// A write owned by the coordinator (it outlives the client's request buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedWrite {
    /// The key.
    pub key: Vec<u8>,
    /// The value, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The version.
    pub version: Version,
    /// Absolute expiry in ms since the Unix epoch; 0 = never.
    pub expires_at_ms: u64,
    /// The value is an encoded causal state (siblings mode): replicas merge it.
    pub causal: bool,
}

impl OwnedWrite {
    /// Borrow as a [`Write`] for [`crate::storage::Store::apply`] and the peer encoders.
    pub fn as_write(&self) -> Write<'_> {
        Write {
            key: &self.key,
            value: self.value.as_deref(),
            version: self.version,
            expires_at_ms: self.expires_at_ms,
            causal: self.causal,
        }
    }

    /// The write that recreates a stored record of `key`.
    pub fn from_stored(key: &[u8], s: &Stored) -> OwnedWrite {
        OwnedWrite {
            key: key.to_vec(),
            value: s.value.clone(),
            version: s.version,
            expires_at_ms: s.expires_at_ms,
            causal: s.causal,
        }
    }

    /// Bytes of key and value (for hint bounds).
    pub fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.len())
    }
}

/// The answer to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A PUT or DELETE reached `required` replicas with this version.
    Written {
        /// The write's version.
        version: Version,
        /// Times it was issued again above a newer version a replica held (its version was
        /// issued after those of writes that started later: for the simulator's checkers).
        reissues: u32,
    },
    /// A GET found a live value.
    Found {
        /// Its version.
        version: Version,
        /// The value.
        value: Vec<u8>,
        /// Its expiry (0 = never).
        expires_at_ms: u64,
    },
    /// A GET found no live value: never written, deleted or expired.
    NotFound,
    /// Siblings mode: what a GET found, live or not: the causal context of the merged state
    /// of the replicas that answered and its live siblings (none: not found), in dot order.
    Siblings {
        /// The context, encoded ([`crate::causal::VersionVector::encode_context`]).
        context: Vec<u8>,
        /// Each live sibling's version and value.
        values: Vec<(Version, Vec<u8>)>,
    },
    /// An operator's command was done: the text for the OK reply.
    Text(String),
    /// The request failed: UNAVAILABLE, TIMEOUT, OVERLOADED or STORAGE_ERROR with a message.
    Failed {
        /// The status to send.
        status: Status,
        /// Why, for humans, e.g. "only 1 of 3 replicas answered, 2 required".
        message: String,
    },
}

impl Outcome {
    /// Whether this answer acknowledges a write: under the `always` sync policy it may leave
    /// the node only after the local store synced.
    pub fn acknowledges_write(&self) -> bool {
        matches!(self, Outcome::Written { .. })
    }
}

/// What the caller must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<C> {
    /// Send a peer frame to node `to`.
    Send {
        /// Destination node.
        to: u32,
        /// The whole frame.
        frame: Vec<u8>,
    },
    /// Apply the write [`Coordinator::local_write`] gives for `id` to the local store and
    /// report with `on_write_ack(self, id, ..)`. (The write stays with its operation: a copy
    /// per request would cost an allocation per key and value.)
    ApplyLocal {
        /// The operation id to report under.
        id: u32,
    },
    /// Read the key [`Coordinator::local_read_key`] gives for `id` from the local store and
    /// report with `on_read_reply(self, id, ..)`.
    ReadLocal {
        /// The operation id to report under.
        id: u32,
    },
    /// Answer the client.
    Reply {
        /// The caller's context, as given to `start_*`.
        ctx: C,
        /// The answer.
        outcome: Outcome,
    },
    /// Read repair: bring `to` up to `write`.
    Repair {
        /// The stale replica (may be this node).
        to: u32,
        /// The newest record.
        write: OwnedWrite,
        /// The ring version the read chose its replicas with (the frame carries it).
        ring: u64,
    },
    /// Keep `write` as a hint for `target`.
    Hint {
        /// The replica that missed the write.
        target: u32,
        /// The write.
        write: OwnedWrite,
    },
}

/// Counters for STATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Writes started.
    pub writes: u64,
    /// Reads started.
    pub reads: u64,
    /// Requests answered UNAVAILABLE.
    pub unavailable: u64,
    /// Requests answered TIMEOUT.
    pub timeouts: u64,
    /// Requests answered OVERLOADED.
    pub overloaded: u64,
    /// Read repairs emitted.
    pub repairs: u64,
    /// Hints emitted.
    pub hints: u64,
    /// Requests answered MAYBE_APPLIED.
    pub maybe_applied: u64,
    /// Reads that asked every alive replica (one in `read_repair_every`).
    pub full_reads: u64,
    /// Spare replicas asked by reads whose asked replicas refused or were slow.
    pub spares_asked: u64,
    /// Whole records fetched after a version-only answer showed a replica newer than every
    /// record in hand (or after a replica refused version-only reads).
    pub read_fetches: u64,
    /// Writes issued again above a newer version a replica held.
    pub reissues: u64,
    /// Acknowledgements of a reissued write by a replica holding a concurrent, newer write.
    pub superseded: u64,
    /// Replies for operations already finished (or unknown ids), ignored.
    pub late_replies: u64,
}

/// Settings of a coordinator.
#[derive(Clone, Copy, Debug)]
pub struct CoordinatorConfig {
    /// This node's id.
    pub node_id: u32,
    /// How long to wait for replicas.
    pub request_timeout_ms: u64,
    /// Whether to emit hints.
    pub hinted_handoff: bool,
    /// Whether to emit read repairs.
    pub read_repair: bool,
    /// Operations in flight at most.
    pub ops_max: usize,
    /// Versions further ahead of the local clock than this are not observed by the clock
    /// (`--max-clock-offset-ms`).
    pub observe_ahead_ms_max: u64,
    /// One read in this many asks every alive replica (and so repairs every stale one it
    /// finds); the others ask only the replicas their level needs. 1: every read asks every
    /// replica; 0: none does (`--read-repair-every`).
    pub read_repair_every: u32,
    /// Siblings mode (`--conflicts siblings`): reads merge the causal states they find and
    /// repair the replicas missing part of the merge; a replica that already holds a causal
    /// write's state acknowledges it (nothing is issued again).
    pub causal: bool,
}

impl CoordinatorConfig {
    /// The settings of a node's coordinators from its cluster configuration.
    pub fn from_cluster(c: &crate::cluster::ClusterConfig) -> CoordinatorConfig {
        CoordinatorConfig {
            node_id: c.node_id,
            request_timeout_ms: c.request_timeout_ms,
            hinted_handoff: c.hinted_handoff,
            read_repair: c.read_repair,
            ops_max: crate::limits::COORDINATOR_OPS_MAX,
            observe_ahead_ms_max: if c.mutations.accept_future_versions {
                u64::MAX
            } else {
                c.max_clock_offset_ms
            },
            read_repair_every: if c.read_repair {
                c.read_repair_every
            } else {
                0
            },
            causal: c.conflicts == crate::cluster::Conflicts::Siblings,
        }
    }
}
