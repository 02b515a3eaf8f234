//! The peer frames of the elastic ring (protocol.md § 18.7): pulling a newer ring state, and
//! asking the leader for a change.
//!
//! * **RING_PULL** (0x30). A node that hears in gossip of a peer holding a newer ring version
//!   asks it for its ring state; the reply carries the whole state (a few kilobytes, and only
//!   when it changed), which the puller adopts if it is still newer than its own.
//! * **RING_CHANGE** (0x31). Every change is decided by the leader's membership shard: a
//!   joining node asks to be admitted (or to replace a dead one), an operator's CLUSTER LEAVE
//!   / REMOVE / PAUSE / RESUME is passed on by the node that received it, and a pending owner
//!   reports a partition it has copied whole. The OK reply carries the ring version after the
//!   change and a line for humans; an error reply a status and a message (BAD_REQUEST for a
//!   change that cannot be made, UNAVAILABLE for one to retry later, e.g. while another change
//!   runs or when the receiver is not the leader).
//!
//! ```text
//!  RING_PULL request   | sender id u32 | version held u64 |
//!  RING_PULL reply     | ring state encoding (cluster/ringstate.rs) |
//!
//!  RING_CHANGE request
//!  +---------+--------+--------+--------------+-------------+--------------+
//!  | kind u8 | a u32  | b u32  | since u64    | addr len u8 | addr (UTF-8) |
//!  +---------+--------+--------+--------------+-------------+--------------+
//!   kind 1 join     a = node, addr = where it listens
//!        2 leave    a = node                  3 remove  a = node
//!        4 replace  a = old node, b = new node, addr = where the new one listens
//!        5 copied   a = partition, b = the node that copied it, since = the version the
//!                   change began at (a report for an older change is ignored)
//!        6 pause    7 resume
//!   unused fields are 0 (addr len 0)
//!  RING_CHANGE reply   | version u64 | message (UTF-8) |
//!
//!  RING_VOTE request   | term u64 | candidate u32 | accepted: term u64 | proposer u32 |
//!                      | version u64 |   (the ballot asked for; the rank of the state the
//!                                         candidate accepted last)
//!  RING_VOTE reply     | granted u8 | promised term u64 | promised node u32 | the voter's
//!                      accepted ring state, when it ranks above the candidate's (else none) |
//!  RING_ACCEPT request | ring state encoding (its ballot is the leader's) |
//!  RING_ACCEPT reply   | accepted u8 | promised term u64 | promised node u32 |
//! ```
//!
//! * **RING_VOTE** (0x32) and **RING_ACCEPT** (0x33): the ring's consensus
//!   (`cluster/node/ringvote.rs`). A leader is confirmed by a majority's promises for its
//!   ballot, and a state it proposes takes effect once a majority accepted it.

use super::peer::PeerError;
use crate::protocol::{frame, Status};
use byteorder::{BigEndian, ByteOrder};

/// Peer opcodes of the elastic ring (after the anti-entropy range).
pub mod ring_op {
    /// Ask a peer for its ring state.
    pub const PULL: u8 = 0x30;
    /// Ask the leader for a change.
    pub const CHANGE: u8 = 0x31;
    /// Ask a member's promise for a ballot (a leader's election).
    pub const VOTE: u8 = 0x32;
    /// Ask a member to accept a proposed ring state.
    pub const ACCEPT: u8 = 0x33;
}

/// Whether `op` is one of this module's opcodes.
pub fn is_ring_op(op: u8) -> bool {
    (ring_op::PULL..=ring_op::ACCEPT).contains(&op)
}

/// A RING_VOTE request: the ballot `(term, candidate)` and the rank (term, proposer,
/// version) of the state the candidate accepted last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoteRequest {
    /// The ballot's term.
    pub term: u64,
    /// The ballot's node: the candidate.
    pub candidate: u32,
    /// The candidate's accepted state's rank.
    pub accepted: (u64, u32, u64),
}

/// A RING_VOTE or RING_ACCEPT answer: whether granted (accepted), and the voter's promised
/// ballot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BallotAnswer {
    /// Granted or accepted.
    pub ok: bool,
    /// The highest ballot the voter promised: (term, node).
    pub promised: (u64, u32),
}

/// Append a RING_VOTE request.
pub fn put_vote(out: &mut Vec<u8>, id: u32, v: &VoteRequest) {
    let (t, p, ver) = v.accepted;
    frame::put_frame(
        out,
        ring_op::VOTE,
        0,
        id,
        &[
            &v.term.to_be_bytes(),
            &v.candidate.to_be_bytes(),
            &t.to_be_bytes(),
            &p.to_be_bytes(),
            &ver.to_be_bytes(),
        ],
    );
}

/// Decode a RING_VOTE request body.
pub fn decode_vote(body: &[u8]) -> Result<VoteRequest, PeerError> {
    if body.len() != 32 {
        return Err(malformed("RING_VOTE body is not 32 bytes"));
    }
    Ok(VoteRequest {
        term: BigEndian::read_u64(&body[..8]),
        candidate: BigEndian::read_u32(&body[8..12]),
        accepted: (
            BigEndian::read_u64(&body[12..20]),
            BigEndian::read_u32(&body[20..24]),
            BigEndian::read_u64(&body[24..32]),
        ),
    })
}

/// Append the OK reply to a RING_VOTE or RING_ACCEPT (`op`): the answer, then `extra` (the
/// voter's accepted state encoding, or nothing).
pub fn put_ballot_answer(out: &mut Vec<u8>, op: u8, id: u32, a: &BallotAnswer, extra: &[u8]) {
    crate::protocol::message::put_reply(
        out,
        op,
        Status::Ok,
        id,
        &[
            &[u8::from(a.ok)],
            &a.promised.0.to_be_bytes(),
            &a.promised.1.to_be_bytes(),
            extra,
        ],
    );
}

/// Decode a RING_VOTE or RING_ACCEPT OK reply body: the answer and what follows it.
pub fn decode_ballot_answer(body: &[u8]) -> Result<(BallotAnswer, &[u8]), PeerError> {
    if body.len() < 13 || body[0] > 1 {
        return Err(malformed("ballot answer shorter than 13 bytes or not 0/1"));
    }
    let a = BallotAnswer {
        ok: body[0] == 1,
        promised: (
            BigEndian::read_u64(&body[1..9]),
            BigEndian::read_u32(&body[9..13]),
        ),
    };
    Ok((a, &body[13..]))
}

/// A change asked of the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeRequest {
    /// Admit `node`, listening at `addr`.
    Join {
        /// The new node.
        node: u32,
        /// Where it listens.
        addr: String,
    },
    /// Decommission `node`.
    Leave {
        /// The node.
        node: u32,
    },
    /// Drop dead `node` for good.
    Remove {
        /// The node.
        node: u32,
    },
    /// `new` (at `addr`) takes over dead `old`'s placements.
    Replace {
        /// The node replaced.
        old: u32,
        /// The node taking its place.
        new: u32,
        /// Where `new` listens.
        addr: String,
    },
    /// `node` holds all of `partition` for the change begun at ring version `since`.
    Copied {
        /// The partition.
        partition: u16,
        /// The pending owner that copied it.
        node: u32,
        /// The version the change began at.
        since: u64,
    },
    /// Pause the moves.
    Pause,
    /// Resume the moves.
    Resume,
}

/// Append a RING_PULL request with id `id` from node `sender`, which holds version `held`.
/// (The sender names itself: a frame handed between a node's shards loses its session.)
pub fn put_pull(out: &mut Vec<u8>, id: u32, sender: u32, held: u64) {
    frame::put_frame(
        out,
        ring_op::PULL,
        0,
        id,
        &[&sender.to_be_bytes(), &held.to_be_bytes()],
    );
}

/// Append a RING_CHANGE request with id `id`.
pub fn put_change(out: &mut Vec<u8>, id: u32, c: &ChangeRequest) {
    let (kind, a, b, since, addr): (u8, u32, u32, u64, &str) = match c {
        ChangeRequest::Join { node, addr } => (1, *node, 0, 0, addr),
        ChangeRequest::Leave { node } => (2, *node, 0, 0, ""),
        ChangeRequest::Remove { node } => (3, *node, 0, 0, ""),
        ChangeRequest::Replace { old, new, addr } => (4, *old, *new, 0, addr),
        ChangeRequest::Copied {
            partition,
            node,
            since,
        } => (5, *partition as u32, *node, *since, ""),
        ChangeRequest::Pause => (6, 0, 0, 0, ""),
        ChangeRequest::Resume => (7, 0, 0, 0, ""),
    };
    // Addresses are bounded where they enter (MEMBER_ADDR_SIZE_MAX = 255).
    let addr = &addr.as_bytes()[..addr.len().min(u8::MAX as usize)];
    frame::put_frame(
        out,
        ring_op::CHANGE,
        0,
        id,
        &[
            &[kind],
            &a.to_be_bytes(),
            &b.to_be_bytes(),
            &since.to_be_bytes(),
            &[addr.len() as u8],
            addr,
        ],
    );
}

fn malformed(why: &str) -> PeerError {
    PeerError::Malformed(why.to_string())
}

/// Decode a RING_PULL request body: the puller and the version it holds. The puller must
/// be the session's peer `from` when that is known (0: handed on from another shard).
pub fn decode_pull(body: &[u8], from: u32) -> Result<(u32, u64), PeerError> {
    if body.len() != 12 {
        return Err(malformed("RING_PULL body is not 12 bytes"));
    }
    let sender = BigEndian::read_u32(&body[..4]);
    if from != 0 && from != sender {
        return Err(malformed(&format!(
            "RING_PULL names sender {sender} on node {from}'s session"
        )));
    }
    Ok((sender, BigEndian::read_u64(&body[4..])))
}

/// Decode a RING_CHANGE request body.
pub fn decode_change(body: &[u8]) -> Result<ChangeRequest, PeerError> {
    if body.len() < 18 {
        return Err(malformed("RING_CHANGE body shorter than 18 bytes"));
    }
    let kind = body[0];
    let a = BigEndian::read_u32(&body[1..5]);
    let b = BigEndian::read_u32(&body[5..9]);
    let since = BigEndian::read_u64(&body[9..17]);
    let len = body[17] as usize;
    if body.len() != 18 + len {
        return Err(malformed(
            "RING_CHANGE address length does not match the body",
        ));
    }
    let addr = std::str::from_utf8(&body[18..])
        .map_err(|_| malformed("RING_CHANGE address is not UTF-8"))?
        .to_string();
    Ok(match kind {
        1 => ChangeRequest::Join { node: a, addr },
        2 => ChangeRequest::Leave { node: a },
        3 => ChangeRequest::Remove { node: a },
        4 => ChangeRequest::Replace {
            old: a,
            new: b,
            addr,
        },
        5 => ChangeRequest::Copied {
            partition: u16::try_from(a).map_err(|_| malformed("partition out of range"))?,
            node: b,
            since,
        },
        6 => ChangeRequest::Pause,
        7 => ChangeRequest::Resume,
        k => return Err(PeerError::Malformed(format!("RING_CHANGE kind {k}"))),
    })
}

/// Append the OK reply to a RING_CHANGE: the version after it and a message.
pub fn put_change_ok(out: &mut Vec<u8>, id: u32, version: u64, message: &str) {
    crate::protocol::message::put_reply(
        out,
        ring_op::CHANGE,
        Status::Ok,
        id,
        &[&version.to_be_bytes(), message.as_bytes()],
    );
}

/// Decode a RING_CHANGE OK reply body: the version and the message.
pub fn decode_change_ok(body: &[u8]) -> Result<(u64, String), PeerError> {
    if body.len() < 8 {
        return Err(malformed("RING_CHANGE reply shorter than 8 bytes"));
    }
    Ok((
        BigEndian::read_u64(&body[..8]),
        String::from_utf8_lossy(&body[8..]).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_and_answers_round_trip() {
        let v = VoteRequest {
            term: 7,
            candidate: 2,
            accepted: (6, 1, 40),
        };
        let mut out = Vec::new();
        put_vote(&mut out, 9, &v);
        assert_eq!(decode_vote(&out[10..]), Ok(v));
        assert!(decode_vote(&out[10..30]).is_err());
        let a = BallotAnswer {
            ok: true,
            promised: (7, 2),
        };
        let mut out = Vec::new();
        put_ballot_answer(&mut out, ring_op::ACCEPT, 9, &a, b"xy");
        let (got, rest) = decode_ballot_answer(&out[10..]).unwrap();
        assert_eq!((got, rest), (a, &b"xy"[..]));
        assert!(decode_ballot_answer(&[2; 13]).is_err());
    }

    #[test]
    fn change_requests_round_trip() {
        let all = [
            ChangeRequest::Join {
                node: 4,
                addr: "127.0.0.1:7404".into(),
            },
            ChangeRequest::Leave { node: 2 },
            ChangeRequest::Remove { node: 3 },
            ChangeRequest::Replace {
                old: 3,
                new: 6,
                addr: "h:1".into(),
            },
            ChangeRequest::Copied {
                partition: 255,
                node: 4,
                since: 9,
            },
            ChangeRequest::Pause,
            ChangeRequest::Resume,
        ];
        for c in all {
            let mut f = Vec::new();
            put_change(&mut f, 7, &c);
            let (fr, n) = frame::parse(&f).unwrap().unwrap();
            assert_eq!(n, f.len());
            assert_eq!(fr.op, ring_op::CHANGE);
            assert_eq!(decode_change(fr.body).unwrap(), c);
            for cut in 0..fr.body.len() {
                assert!(decode_change(&fr.body[..cut]).is_err());
            }
        }
        let mut f = Vec::new();
        put_pull(&mut f, 1, 7, 42);
        let (fr, _) = frame::parse(&f).unwrap().unwrap();
        assert_eq!(decode_pull(fr.body, 7).unwrap(), (7, 42));
        assert_eq!(decode_pull(fr.body, 0).unwrap(), (7, 42));
        assert!(decode_pull(fr.body, 8).is_err());
    }
}
