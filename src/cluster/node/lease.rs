//! The ring lease: a node coordinates client requests only while a peer confirmed its ring
//! within the failure timeout; requests that arrive outside the lease wait for the next
//! confirmation (bounded in count, bytes and time), then run as if they had just arrived.
//!
//! Why: a coordinator that missed a ring change (it was down, paused or cut off while the
//! rest of the cluster settled and flipped partitions) still picks its replicas by its old
//! ring. Replicas refuse such writes (`guard.rs`), but the coordinator's *own* store is not
//! asked, and on a minority side every old owner may be as stale as the coordinator: a write
//! acknowledged there (at ONE alone) reaches none of the partition's new owners and is gone
//! once the old owners forget the partition. Likewise a quorum read there can be answered
//! by old owners alone, without a write the new owners acknowledged: back in time.
//!
//! The lease closes that window. The leader settles a change (copies, then flips) only once
//! every *live* member holds it, so a node that missed it was declared failed, which takes
//! the failure timeout after the last heartbeat the others heard from it, and its last
//! confirmation came at most about one pull round trip after that heartbeat. Settling,
//! copying, reporting and flipping a partition take longer than that round trip, so a lease
//! of one failure timeout has run out before any flip it missed. (That is a margin, not a
//! proof: a cluster that copies a tiny partition within one round trip of declaring the node
//! failed would beat it; the simulator has not.) A confirmation counts only when the node
//! sees a majority of the members alive: on the minority side of a partition, peers as stale
//! as itself confirm nothing.
//!
//! ```text
//!   pull reply (majority alive) ──> confirmed_at = now ──> lease until now + failure timeout
//!   request, lease valid ─────────> coordinated
//!   request, lease run out ───────> held ──(next confirmation)──> coordinated
//!                                         └─(request timeout)───> UNAVAILABLE
//! ```
//!
//! The membership shard pulls; the node's other shards take the lease from its view.

use super::{ClusterNode, Output, Role};
use crate::cluster::coordinator::Outcome;
use crate::cluster::ringstate::MemberStatus;
use crate::limits::{RING_HELD_BYTES_MAX, RING_HELD_REQUESTS_MAX};
use crate::protocol::{Consistency, Status};
use crate::storage::Store;

/// A client request waiting for the ring lease.
pub(super) struct HeldRequest<C> {
    ctx: C,
    key: Vec<u8>,
    /// A write (with its value, `None` for a delete), or a read.
    write: bool,
    value: Option<Vec<u8>>,
    expires_at_ms: u64,
    consistency: Consistency,
    /// A siblings-mode write's causal context.
    context: Option<Vec<u8>>,
    /// A siblings-mode write another node handed over (COORDINATE).
    handed: bool,
    /// When it is answered UNAVAILABLE if no confirmation came.
    pub(super) deadline_ms: u64,
}

impl<C> HeldRequest<C> {
    fn bytes(&self) -> usize {
        self.key.len()
            + self.value.as_ref().map_or(0, Vec::len)
            + self.context.as_ref().map_or(0, Vec::len)
    }
}

/// A request to hold, as it came (see [`ClusterNode::hold_request`]).
pub(super) struct Held<'a> {
    pub key: &'a [u8],
    /// A write (with its value, `None` for a delete), or a read.
    pub write: bool,
    pub value: Option<&'a [u8]>,
    pub expires_at_ms: u64,
    pub consistency: Consistency,
    /// A siblings-mode write's causal context.
    pub context: Option<&'a [u8]>,
    /// A siblings-mode write another node handed over (COORDINATE).
    pub handed: bool,
}

impl<C> ClusterNode<C> {
    /// How long a confirmation of the ring lets this node coordinate requests.
    pub(super) fn ring_lease_ms(&self) -> u64 {
        self.config.failure_timeout_ms()
    }

    /// Whether the ring lists no live member but this node (a single-node cluster): nobody
    /// could confirm its ring, and nobody could have changed it.
    fn ring_alone(&self) -> bool {
        let me = self.config.node_id;
        (self.ring.state().members().iter())
            .all(|m| m.id == me || m.status == MemberStatus::Removed)
    }

    /// Whether this core sees a majority of the ring's members (up, joining or leaving)
    /// alive. Ring changes and ring confirmations both need it.
    pub(super) fn sees_majority(&self) -> (bool, usize, usize) {
        let members: Vec<u32> = (self.ring.state().members().iter())
            .filter(|m| m.status != MemberStatus::Removed)
            .map(|m| m.id)
            .collect();
        let alive = members.iter().filter(|&&n| self.is_alive(n)).count();
        (2 * alive > members.len(), alive, members.len())
    }

    /// Until when (this node's clock) its ring lease runs; 0 for none yet. A follower shard
    /// has its node's, from the view.
    pub fn ring_lease_until(&self) -> u64 {
        match &self.role {
            Role::Follower { view } => view.as_ref().map_or(0, |v| v.ring_lease_until),
            _ => (self.elastic.confirmed_at).map_or(0, |t| t.saturating_add(self.ring_lease_ms())),
        }
    }

    /// Whether this core may coordinate a request at `now_ms` by its ring (module doc). A clock
    /// that stepped back before the confirmation does not stretch the lease.
    pub fn ring_lease_valid(&self, now_ms: u64) -> bool {
        let until = self.ring_lease_until();
        (until > 0 && now_ms <= until && now_ms + self.ring_lease_ms() >= until)
            || self.ring_alone()
    }

    /// Whether a peer confirmed this node's ring since it started (a node that restarted
    /// from a kept ring decides nothing before; a follower shard asks its node's view).
    pub fn ring_confirmed(&self) -> bool {
        let confirmed = match &self.role {
            Role::Follower { view } => view.as_ref().is_some_and(|v| v.ring_lease_until > 0),
            _ => self.elastic.confirmed,
        };
        confirmed || self.ring_alone()
    }

    /// A peer answered this node's ring pull (with its ring or "you are current").
    pub(super) fn note_ring_confirmed(&mut self, now_ms: u64) {
        self.elastic.confirmed = true;
        if self.sees_majority().0 {
            self.elastic.confirmed_at = Some(now_ms);
        }
    }

    /// Hold a client write (`write`: of `value`, `None` for a delete) or read until the
    /// lease is confirmed again, or answer UNAVAILABLE when too much already waits.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hold_request(&mut self, now_ms: u64, ctx: C, h: Held<'_>) {
        let w = HeldRequest {
            ctx,
            key: h.key.to_vec(),
            write: h.write,
            value: h.value.map(<[u8]>::to_vec),
            expires_at_ms: h.expires_at_ms,
            consistency: h.consistency,
            context: h.context.map(<[u8]>::to_vec),
            handed: h.handed,
            deadline_ms: now_ms.saturating_add(self.config.request_timeout_ms),
        };
        if self.held.len() >= RING_HELD_REQUESTS_MAX
            || self.held_bytes + w.bytes() > RING_HELD_BYTES_MAX
        {
            let why = format!(
                "node {} waits for a peer to confirm its ring and holds too many requests: retry",
                self.config.node_id
            );
            self.fail_held(w, why);
            return;
        }
        self.held_bytes += w.bytes();
        self.held.push_back(w);
    }

    /// Coordinate the held requests once the lease is valid; answer those past their deadline.
    pub(super) fn release_held(&mut self, now_ms: u64, store: &mut dyn Store) {
        if self.held.is_empty() {
            return;
        }
        if self.ring_lease_valid(now_ms) {
            self.held_bytes = 0;
            for w in std::mem::take(&mut self.held) {
                if let Some(context) = &w.context {
                    let value = w.value.as_deref();
                    let (exp, c) = (w.expires_at_ms, w.consistency);
                    let h = w.handed;
                    self.causal_write(now_ms, store, w.ctx, &w.key, context, value, exp, c, h);
                } else if w.write {
                    let value = w.value.as_deref();
                    let (exp, c) = (w.expires_at_ms, w.consistency);
                    self.write(now_ms, store, w.ctx, &w.key, value, exp, c);
                } else {
                    self.read(now_ms, store, w.ctx, &w.key, w.consistency);
                }
            }
            return;
        }
        while self.held.front().is_some_and(|w| now_ms >= w.deadline_ms) {
            let w = self.held.pop_front().expect("checked");
            self.held_bytes -= w.bytes();
            let why = format!(
                "node {} has not had its ring confirmed by a peer in the last {} ms (cut off \
                 from the cluster?): retry, or use another node",
                self.config.node_id,
                self.ring_lease_ms()
            );
            self.fail_held(w, why);
        }
    }

    fn fail_held(&mut self, w: HeldRequest<C>, message: String) {
        self.outputs.push_back(Output::Reply {
            ctx: w.ctx,
            outcome: Outcome::Failed {
                status: Status::Unavailable,
                message,
            },
        });
    }
}
