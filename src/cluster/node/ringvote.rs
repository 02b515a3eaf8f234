//! One history of ring states: the ring's consensus, on the membership core.
//!
//! The leader (the lowest live member by each node's view) decides every ring change, but
//! views differ: under a partition, one-way links or a slow failure detector, two nodes can
//! each believe they lead, and each would make its own state at the same version. Nodes adopt
//! only strictly higher versions, so they would diverge for good, and a node that flipped or
//! forgot data by a state the other side never had would lose writes. So a ring state takes
//! effect only once a majority of the members has *accepted* it, and two leaders can never
//! both get different states accepted at one version. This is Paxos on one register (the
//! ring state; CASPaxos), with a stable leader skipping the first phase (Multi-Paxos):
//!
//! ```text
//!  leader L (lowest live member by its view)          every member (acceptor, durable)
//!  ballot b = (term, L), term above any seen
//!  RING_VOTE b, rank of L's accepted state ──────▶  grant if b ≥ promised; promised = b;
//!                                          ◀──────  answer with its accepted state if it
//!  majority granted: L leads with b                 ranks above L's (L adopts the highest)
//!  L's accepted state newer than its committed:
//!    propose it again under b (it may be chosen)
//!  each new state S (one version up from the committed one, ballot b):
//!  RING_ACCEPT S ───────────────────────────────▶  accept if b ≥ promised and S ranks at
//!                                          ◀──────  least as high as what it accepted
//!  a majority accepted: S is committed: L installs it; the others pull it (RING_PULL
//!  serves committed states only) and act on it.
//! ```
//!
//! A state's *rank* is (term, proposer, version): ballots first. The rules:
//! * A node acts (routes, copies, forgets, flips) only on **committed** states; an accepted
//!   one is only kept (and reported in votes). A deposed leader's proposal that no majority
//!   accepted is superseded by the next leader's, or proposed again by it — never acted on.
//! * Promises and acceptances are saved to the RING file before they are answered, so a
//!   restart never votes twice in a term nor forgets what it accepted.
//! * "A majority" counts the members that are not removed, of *both* the base state (the
//!   leader's committed one) and the proposed one (of both the committed and the accepted
//!   state, for a vote): membership changes by one node at a time, and a quorum of both
//!   configurations overlaps every quorum of either.
//! * One proposal in flight; the next state is made from the committed one.

use super::{ClusterNode, Output};
use crate::cluster::coordinator::Outcome;
use crate::cluster::peer::PeerError;
use crate::cluster::ringpeer::{self, ring_op, BallotAnswer, VoteRequest};
use crate::cluster::ringstate::{MemberStatus, RingState};
use crate::protocol::message::put_error;
use crate::protocol::{FrameRef, Status};
use crate::storage::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// An election that has not gathered a majority's promises by then starts over with a
/// higher term.
pub const RING_ELECTION_MS: u64 = 2_000;

/// Requests (votes, accepts) in flight that a leader remembers at most: older ids are
/// forgotten (their answers are then ignored, and sent again on the next retry).
const BALLOT_IDS_MAX: usize = 256;

/// A member's part in the ring's consensus, and the leader's running election or proposal.
#[derive(Default)]
pub(super) struct Consensus {
    /// The highest ballot this node promised: (term, node). Durable.
    promised: (u64, u32),
    /// The state this node accepted last, when it is not the committed one. Durable.
    accepted: Option<Arc<RingState>>,
    /// The highest term seen: a new election goes above it.
    seen_term: u64,
    election: Option<Election>,
    /// The term a majority promised this node: it leads with ballot (term, itself).
    leading: Option<u64>,
    proposal: Option<Proposal>,
    /// Request id → the term (votes) or version (accepts) it asked for.
    ids: BTreeMap<u32, u64>,
}

struct Election {
    term: u64,
    granted: BTreeSet<u32>,
    started_ms: u64,
    last_sent_ms: u64,
}

struct Proposal {
    state: Arc<RingState>,
    base: Arc<RingState>,
    acks: BTreeSet<u32>,
    last_sent_ms: u64,
}

/// Whether the nodes `set` are a majority of the members of `s` that are not removed.
fn majority(s: &RingState, set: &BTreeSet<u32>) -> bool {
    let voters: Vec<u32> = s
        .members()
        .iter()
        .filter(|m| m.status != MemberStatus::Removed)
        .map(|m| m.id)
        .collect();
    2 * voters.iter().filter(|n| set.contains(n)).count() > voters.len()
}

/// Members of `a` or `b` that are not removed, `me` aside: whom to ask.
fn electorate(a: &RingState, b: &RingState, me: u32) -> BTreeSet<u32> {
    a.members()
        .iter()
        .chain(b.members())
        .filter(|m| m.status != MemberStatus::Removed && m.id != me)
        .map(|m| m.id)
        .collect()
}

impl<C> ClusterNode<C> {
    /// Start from what the RING file kept of the consensus.
    pub(super) fn restore_consensus(&mut self, promised: (u64, u32), accepted: Option<RingState>) {
        let c = &mut self.elastic.consensus;
        c.promised = promised;
        c.seen_term = promised.0;
        c.accepted = accepted.map(Arc::new);
    }

    /// The state this node accepted last: the committed one unless a newer one was.
    pub(super) fn accepted_state(&self) -> Arc<RingState> {
        let c = self.ring.state();
        match &self.elastic.consensus.accepted {
            Some(a) if a.rank() > c.rank() && a.version() >= c.version() => a.clone(),
            _ => c.clone(),
        }
    }

    /// Save the committed state with the consensus's part (membership core). Whether it is
    /// durable.
    pub(super) fn save_ring(&mut self) -> bool {
        if self.is_follower() {
            return true;
        }
        let committed = self.ring.state().clone();
        let accepted = self.accepted_state();
        let extra = (!Arc::ptr_eq(&accepted, &committed)).then_some(&*accepted);
        let promised = self.elastic.consensus.promised;
        match self.elastic.store.save(&committed, promised, extra) {
            Ok(()) => true,
            Err(e) => {
                log::error!("ring version {} not saved: {e}", committed.version());
                false
            }
        }
    }

    /// Why this leader may not propose a state now (`None`: it may).
    pub(super) fn may_not_propose(&self) -> Option<String> {
        let c = &self.elastic.consensus;
        if self.config.mutations.no_majority_commit {
            // test-only mutation: states take effect without a majority.
            return None;
        }
        match (c.leading, &c.proposal) {
            (None, _) => Some(format!(
                "node {} is not yet confirmed as the ring's leader by a majority",
                self.config.node_id
            )),
            (Some(_), Some(p)) => Some(format!(
                "ring version {} is being committed: retry",
                p.state.version()
            )),
            (Some(_), None) => None,
        }
    }

    /// This node no longer leads (by its view, or a higher ballot was seen): its election
    /// and its proposal, if any, end here (a proposal is then superseded or proposed again
    /// by the next leader).
    pub(super) fn step_down(&mut self) {
        let c = &mut self.elastic.consensus;
        if c.leading.is_some() || c.election.is_some() {
            c.leading = None;
            c.election = None;
            c.proposal = None;
            c.ids.clear();
        }
    }

    fn note_id(&mut self, id: u32, what: u64) {
        let ids = &mut self.elastic.consensus.ids;
        if ids.len() >= BALLOT_IDS_MAX {
            ids.pop_first();
        }
        ids.insert(id, what);
    }

    /// The leader's consensus chores on a tick: elect itself, send votes and accepts again.
    pub(super) fn consensus_tick(&mut self, now_ms: u64, store: &mut dyn Store) {
        let me = self.config.node_id;
        if self.config.mutations.no_majority_commit {
            return;
        }
        let c = &self.elastic.consensus;
        if let Some(t) = c.leading {
            if c.promised > (t, me) {
                // This node promised a higher ballot to another: it leads no more.
                self.step_down();
            }
        }
        if self.elastic.consensus.leading.is_none() {
            let restart = self.elastic.consensus.election.as_ref().is_none_or(|e| {
                super::ring::due(now_ms, e.started_ms + RING_ELECTION_MS, RING_ELECTION_MS)
            });
            if restart {
                let c = &mut self.elastic.consensus;
                let a = c.accepted.as_ref().map_or(0, |a| a.ballot().0);
                let term = c
                    .seen_term
                    .max(c.promised.0)
                    .max(a)
                    .max(self.ring.state().ballot().0)
                    + 1;
                c.seen_term = term;
                c.promised = (term, me);
                c.ids.clear();
                c.election = Some(Election {
                    term,
                    granted: BTreeSet::from([me]),
                    started_ms: now_ms,
                    last_sent_ms: 0,
                });
                if !self.save_ring() {
                    self.elastic.consensus.election = None;
                    return;
                }
                self.check_elected(now_ms, store);
            }
            self.send_votes(now_ms);
            return;
        }
        // Accepts not answered yet: again, now and then.
        let Some(p) = self.elastic.consensus.proposal.as_ref() else {
            return;
        };
        if super::ring::due(
            now_ms,
            p.last_sent_ms + super::ring::RING_RETRY_MS,
            super::ring::RING_RETRY_MS,
        ) {
            self.send_accepts(now_ms);
        }
    }

    fn send_votes(&mut self, now_ms: u64) {
        let me = self.config.node_id;
        let accepted = self.accepted_state();
        let Some(e) = self.elastic.consensus.election.as_mut() else {
            return;
        };
        if e.last_sent_ms != 0
            && !super::ring::due(
                now_ms,
                e.last_sent_ms + super::ring::RING_RETRY_MS,
                super::ring::RING_RETRY_MS,
            )
        {
            return;
        }
        e.last_sent_ms = now_ms.max(1);
        let (term, granted) = (e.term, e.granted.clone());
        let req = VoteRequest {
            term,
            candidate: me,
            accepted: accepted.rank(),
        };
        let to = electorate(self.ring.state(), &accepted, me);
        for n in to.into_iter().filter(|n| !granted.contains(n)) {
            let id = self.elastic.alloc_id();
            self.note_id(id, term);
            let mut f = Vec::new();
            ringpeer::put_vote(&mut f, id, &req);
            self.outputs.push_back(Output::Send { to: n, frame: f });
        }
    }

    fn check_elected(&mut self, now_ms: u64, store: &mut dyn Store) {
        let accepted = self.accepted_state();
        let c = &self.elastic.consensus;
        let Some(e) = c.election.as_ref() else {
            return;
        };
        if !(majority(self.ring.state(), &e.granted) && majority(&accepted, &e.granted)) {
            return;
        }
        let term = e.term;
        log::info!(
            "node {}: leads the ring with term {term}",
            self.config.node_id
        );
        let c = &mut self.elastic.consensus;
        c.election = None;
        c.leading = Some(term);
        c.ids.clear();
        // A state accepted beyond the committed one may have been chosen: propose it again
        // under this ballot (it is the highest a majority reported).
        if accepted.version() > self.ring.version() {
            self.propose(now_ms, store, (*accepted).clone());
        }
    }

    /// Propose `next` (made from the committed state, or one accepted before) under this
    /// leader's ballot: accept it here, ask the others; it takes effect once a majority did.
    pub(super) fn propose(&mut self, now_ms: u64, store: &mut dyn Store, next: RingState) {
        let me = self.config.node_id;
        if self.config.mutations.no_majority_commit {
            self.install_ring(store, Arc::new(next), true);
            return;
        }
        let Some(term) = self.elastic.consensus.leading else {
            return;
        };
        let state = Arc::new(next.with_ballot(term, me));
        self.elastic.consensus.accepted = Some(state.clone());
        if !self.save_ring() {
            return;
        }
        self.elastic.consensus.proposal = Some(Proposal {
            state,
            base: self.ring.state().clone(),
            acks: BTreeSet::from([me]),
            last_sent_ms: 0,
        });
        self.send_accepts(now_ms);
        self.check_committed(store);
    }

    fn send_accepts(&mut self, now_ms: u64) {
        let me = self.config.node_id;
        let Some(p) = self.elastic.consensus.proposal.as_mut() else {
            return;
        };
        p.last_sent_ms = now_ms.max(1);
        let (state, acks) = (p.state.clone(), p.acks.clone());
        let bytes = state.to_bytes();
        for n in electorate(&p.base, &state, me)
            .into_iter()
            .filter(|n| !acks.contains(n))
        {
            let id = self.elastic.alloc_id();
            self.note_id(id, state.version());
            let mut f = Vec::new();
            crate::protocol::frame::put_frame(&mut f, ring_op::ACCEPT, 0, id, &[&bytes]);
            self.outputs.push_back(Output::Send { to: n, frame: f });
        }
    }

    fn check_committed(&mut self, store: &mut dyn Store) {
        let Some(p) = self.elastic.consensus.proposal.as_ref() else {
            return;
        };
        if !(majority(&p.base, &p.acks) && majority(&p.state, &p.acks)) {
            return;
        }
        let state = p.state.clone();
        let c = &mut self.elastic.consensus;
        c.proposal = None;
        c.accepted = None;
        // A majority took a state made from this node's committed one: that one was current,
        // as a pull from a peer would have shown (without this, a leader that restarted, or
        // that never pulls because it leads, refused its next change until its next pull).
        self.elastic.confirmed = true;
        log::debug!(
            "ring version {} committed (term {})",
            state.version(),
            state.ballot().0
        );
        self.install_ring(store, state, true);
    }

    /// Answer an operator's change once this node holds ring version `v` committed (the
    /// leader's reply names a proposed version: answering at once, a client would see the
    /// ring without its change). Bounded by the change timeout.
    pub(super) fn reply_when_held(&mut self, now_ms: u64, ctx: C, v: u64, msg: String) {
        let deadline = now_ms.saturating_add(super::ring::RING_CHANGE_TIMEOUT_MS);
        self.elastic.waiting.push((ctx, v, msg, deadline));
    }

    /// Answer the operators' changes whose version is held now, or whose time ran out.
    pub(super) fn answer_waiting(&mut self, now_ms: u64) {
        let held = self.ring.version();
        let span = super::ring::RING_CHANGE_TIMEOUT_MS;
        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.elastic.waiting)
            .into_iter()
            .partition(|(_, v, _, d)| *v <= held || super::ring::due(now_ms, *d, span));
        self.elastic.waiting = wait;
        for (ctx, v, msg, _) in done {
            let outcome = if v <= held {
                Outcome::Text(msg)
            } else {
                Outcome::Failed {
                    status: Status::Timeout,
                    message: format!("ring version {v} was not committed in time: retry"),
                }
            };
            self.outputs.push_back(Output::Reply { ctx, outcome });
        }
    }

    /// Serve a RING_VOTE: promise the ballot if it is not below one promised.
    pub(super) fn on_vote_request(
        &mut self,
        id: u32,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        let v = ringpeer::decode_vote(body)?;
        let ballot = (v.term, v.candidate);
        let c = &mut self.elastic.consensus;
        c.seen_term = c.seen_term.max(v.term);
        let ok = ballot >= c.promised;
        if ok && ballot > c.promised {
            c.promised = ballot;
            if !self.save_ring() {
                put_error(
                    out,
                    ring_op::VOTE,
                    id,
                    Status::Unavailable,
                    "promise not saved",
                );
                return Ok(());
            }
        }
        let accepted = self.accepted_state();
        let extra = if ok && accepted.rank() > v.accepted {
            accepted.to_bytes()
        } else {
            Vec::new()
        };
        let answer = BallotAnswer {
            ok,
            promised: self.elastic.consensus.promised,
        };
        ringpeer::put_ballot_answer(out, ring_op::VOTE, id, &answer, &extra);
        Ok(())
    }

    /// Serve a RING_ACCEPT: accept the state if its ballot is not below the one promised
    /// and it ranks at least as high as the state accepted (a late copy of an older proposal
    /// must not replace a newer one).
    pub(super) fn on_accept_request(
        &mut self,
        id: u32,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        let s = RingState::decode(body)
            .map_err(|e| PeerError::Malformed(format!("RING_ACCEPT: {e}")))?;
        let accepted = self.accepted_state();
        let c = &mut self.elastic.consensus;
        c.seen_term = c.seen_term.max(s.ballot().0);
        let ok = s.ballot() >= c.promised && s.rank() >= accepted.rank();
        if ok && s.rank() > accepted.rank() {
            c.promised = c.promised.max(s.ballot());
            c.accepted = Some(Arc::new(s));
            if !self.save_ring() {
                put_error(
                    out,
                    ring_op::ACCEPT,
                    id,
                    Status::Unavailable,
                    "state not saved",
                );
                return Ok(());
            }
        }
        let answer = BallotAnswer {
            ok,
            promised: self.elastic.consensus.promised,
        };
        ringpeer::put_ballot_answer(out, ring_op::ACCEPT, id, &answer, &[]);
        Ok(())
    }

    /// An answer to one of this node's RING_VOTE or RING_ACCEPT frames.
    pub(super) fn on_ballot_reply(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        f: &FrameRef<'_>,
        op: u8,
    ) {
        let Some(asked) = self.elastic.consensus.ids.remove(&f.id) else {
            return;
        };
        if f.aux != Status::Ok as u8 {
            return;
        }
        let Ok((answer, extra)) = ringpeer::decode_ballot_answer(f.body) else {
            self.replica_stats.peer_errors += 1;
            return;
        };
        let me = self.config.node_id;
        let c = &mut self.elastic.consensus;
        c.seen_term = c.seen_term.max(answer.promised.0);
        if op == ring_op::VOTE {
            if !extra.is_empty() {
                match RingState::decode(extra) {
                    // The highest state a voter accepted: this node's, to propose again.
                    Ok(s) if s.rank() > self.accepted_state().rank() => {
                        self.elastic.consensus.accepted = Some(Arc::new(s));
                        if !self.save_ring() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.replica_stats.peer_errors += 1;
                        return;
                    }
                }
            }
            let Some(e) = self.elastic.consensus.election.as_mut() else {
                return;
            };
            if e.term != asked {
                return;
            }
            if answer.ok {
                e.granted.insert(from);
                self.check_elected(now_ms, store);
            } else if answer.promised > (e.term, me) {
                // Refused for a higher ballot: start over above it at the next tick.
                e.started_ms = now_ms.saturating_sub(RING_ELECTION_MS);
            }
            return;
        }
        let leading = self.elastic.consensus.leading;
        if !answer.ok {
            if leading.is_some_and(|t| answer.promised > (t, me)) {
                self.step_down();
            }
            return;
        }
        let Some(p) = self.elastic.consensus.proposal.as_mut() else {
            return;
        };
        if p.state.version() == asked {
            p.acks.insert(from);
            self.check_committed(store);
        }
    }
}
