//! Dotted version vectors with siblings: the causal kernel of the opt-in `--conflicts siblings`
//! mode (Preguiça, Baquero, Almeida, Fonte, Gonçalves, "Dotted Version Vectors: Efficient
//! Causality Tracking for Distributed Key-Value Stores"; Riak's `dvvset`). Pure: no I/O, no
//! clock reads, no hash-map iteration order; every output is a function of the inputs.
//!
//! Under last-writer-wins, of two concurrent writes to a key the one with the higher version
//! survives and the other is lost without a word. In siblings mode a key's value is a
//! [`CausalState`] instead, which keeps every write no later write has seen:
//!
//! * every write is named by a [`Dot`] `(actor, n)`: the `n`-th write of this key coordinated
//!   by the replica `actor` (a node id);
//! * the state holds a [`VersionVector`] `vv`, every dot this replica knows of (`actor: n`
//!   stands for the dots `(actor, 1..=n)`), and the siblings: the writes among them no later
//!   write superseded, each with its dot. A dot in `vv` without a sibling is a write that was
//!   superseded (or deleted);
//! * a read returns the live siblings and `vv` as an opaque causal context; the client's next
//!   write carries it back ([`CausalState::update`]) and supersedes exactly the siblings whose
//!   dots the context contains, the ones the client saw. Writes it did not see stay beside the
//!   new one as siblings, until a client reads them all and writes one value with the context;
//! * replicas converge by [`CausalState::merge`]. Per dot, each replica knows it as absent
//!   (not in `vv`), present (a sibling) or superseded (in `vv`, no sibling), and the merge
//!   takes the greater in the order absent < present < superseded (two present copies: the
//!   greater content, see below). A per-dot maximum in a total order is a join, so the merge
//!   is commutative, associative and idempotent whatever order replicas exchange states in.
//!
//! A vector entry `actor: n` claims knowledge of every dot of `actor` up to `n`, which holds
//! because a coordinator numbers its dots one after the other from its own state and replicas
//! exchange whole states. A replica must therefore never ship a sibling without the state it
//! was made in (no deltas of a bare dot), and a replica that lost its data and coordinates
//! again may reuse dots: the merge then keeps, for the same dot with different contents on
//! two sides, the greater by `(version, expires_at_ms, value)` so that it stays a join.
//!
//! Expired siblings stay in the state (dropping them would make merges depend on the clock);
//! readers filter them with [`CausalState::live`].
//!
//! Encodings (all integers big-endian). The causal context, what clients get back opaquely
//! and send back (`ctx=HEX` in kvcat, lowercase hex of these bytes):
//!
//! ```text
//!  0        1        3
//!  +--------+--------+---------------------------------------------+
//!  | fmt u8 | n u16  | n × ( actor u16 | counter u64 )  (10 bytes) |
//!  +--------+--------+---------------------------------------------+
//!  fmt = 1; entries strictly ascending by actor; counter > 0; n <= CONTEXT_ACTORS_MAX.
//!  The empty context is `01 00 00`; a zero-length context is accepted as the empty one.
//! ```
//!
//! The state, as stored and shipped between replicas. Canonical: a state has one encoding,
//! so equal states have equal bytes and equal [`CausalState::digest`]s.
//!
//! ```text
//!  0        1          3                      3+10v      5+10v
//!  +--------+----------+----------------------+----------+-----------------------+
//!  | fmt u8 | n_vv u16 | n_vv × vv entry      | n_sib u16| n_sib × sibling       |
//!  +--------+----------+----------------------+----------+-----------------------+
//!  vv entry (10 bytes), strictly ascending by actor, counter > 0:
//!  +-----------+-------------+
//!  | actor u16 | counter u64 |
//!  +-----------+-------------+
//!  sibling (30 bytes + value), strictly ascending by dot (actor, counter), each dot in vv:
//!  0           2             10            18                  26              30
//!  +-----------+-------------+-------------+-------------------+---------------+-------+
//!  | actor u16 | counter u64 | version u64 | expires_at_ms u64 | value_len u32 | value |
//!  |      (the dot)          | (HLC)       | (0 = never)       |               |       |
//!  +-----------+-------------+-------------+-------------------+---------------+-------+
//!  fmt = 1; n_vv <= CONTEXT_ACTORS_MAX; n_sib <= SIBLINGS_HARD_MAX;
//!  whole encoding <= CAUSAL_STATE_BYTES_MAX, no trailing bytes.
//! ```
//!
//! Files: `vv.rs` the version vector, `state.rs` the state and its operations, `codec.rs` the
//! two encodings, `tests/` the golden vectors, bad bytes and the randomized model tests.

mod codec;
mod state;
mod vv;

#[cfg(test)]
mod tests;

pub use codec::{
    CONTEXT_FORMAT, CONTEXT_HEADER_SIZE, SIBLING_HEADER_SIZE, STATE_FIXED_SIZE, STATE_FORMAT,
    VV_ENTRY_SIZE,
};
pub use state::{CausalState, NewValue, Sibling};
pub use vv::VersionVector;

use crate::limits::{
    CAUSAL_STATE_BYTES_MAX, CAUSAL_STATE_WRITE_BYTES_MAX, CONTEXT_ACTORS_MAX, SIBLINGS_HARD_MAX,
    SIBLINGS_MAX,
};

/// One write's name: the `counter`-th write of a key coordinated by replica `actor`.
/// Ordered by `(actor, counter)` (the field order); `counter` is at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// The coordinating node's id (at most `version::NODE_ID_MAX`; a u16 on the wire).
    pub actor: u16,
    /// The write's number among those `actor` coordinated for the key, from 1.
    pub counter: u64,
}

impl std::fmt::Display for Dot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

/// Why a causal operation or decoding failed. A failed operation changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CausalError {
    /// Bytes that are not a context or a state (or a context whose counter cannot grow).
    Malformed(String),
    /// The state would hold (or holds) `count` siblings, above [`SIBLINGS_MAX`] for a write,
    /// [`SIBLINGS_HARD_MAX`] for a state a replica accepts.
    TooManySiblings {
        /// Siblings the result would hold.
        count: usize,
    },
    /// The vector would name (or names) `actors` actors, above [`CONTEXT_ACTORS_MAX`].
    ContextTooLarge {
        /// Actors in the vector.
        actors: usize,
    },
    /// The state would take (or takes) `bytes` encoded, above
    /// [`CAUSAL_STATE_WRITE_BYTES_MAX`] for a write, [`CAUSAL_STATE_BYTES_MAX`] for a state a
    /// replica accepts.
    StateTooLarge {
        /// Encoded bytes of the state.
        bytes: usize,
    },
}

impl std::fmt::Display for CausalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One variant serves the write limit and the hard one; the count tells which was
        // passed (a count above the hard limit is above both, and the cure is the same).
        match *self {
            CausalError::Malformed(ref why) => write!(f, "malformed causal data: {why}"),
            CausalError::TooManySiblings { count } => {
                let limit = if count > SIBLINGS_HARD_MAX {
                    SIBLINGS_HARD_MAX
                } else {
                    SIBLINGS_MAX
                };
                write!(
                    f,
                    "key has {count} siblings, above the limit of {limit}: read it and write \
                     with its context to resolve them"
                )
            }
            CausalError::ContextTooLarge { actors } => write!(
                f,
                "causal context names {actors} nodes, above the limit of {CONTEXT_ACTORS_MAX}: \
                 the key was written through too many different nodes"
            ),
            CausalError::StateTooLarge { bytes } => {
                let limit = if bytes > CAUSAL_STATE_BYTES_MAX {
                    CAUSAL_STATE_BYTES_MAX
                } else {
                    CAUSAL_STATE_WRITE_BYTES_MAX
                };
                write!(
                    f,
                    "key's siblings take {bytes} bytes, above the limit of {limit}: write a \
                     smaller value, or read the key and write with its context to resolve them"
                )
            }
        }
    }
}

impl std::error::Error for CausalError {}
