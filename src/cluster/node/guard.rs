//! Guards a replica applies to a peer REPLICATE or READ before serving it: the sender's
//! ring must not be stale for the key's partition, and this node must hold the partition.
//! Both answer in the sender's terms (a refusal, or a hint acknowledged and dropped) and
//! never touch the store.

use super::ClusterNode;
use crate::cluster::peer::{self, PeerRequest, WriteAck};

impl<C> ClusterNode<C> {
    /// A REPLICATE or READ whose sender's ring is older than the last change of the key's
    /// partition here ([`Ring::changed_at`]): the sender chose its replicas from a set that
    /// no longer holds (it missed a ring change: a write acknowledged by the old owners alone
    /// could be lost once they forget the partition, a read could miss a write the new owners
    /// acknowledged). Answered "stale ring" with this node's ring version, which is never an
    /// acknowledgement; the sender pulls the newer ring. Returns whether it answered.
    pub(super) fn refuse_stale_ring(
        &mut self,
        req: &PeerRequest<'_>,
        id: u32,
        out: &mut Vec<u8>,
    ) -> bool {
        let (key, ring, op) = match req {
            PeerRequest::Replicate { write, ring, .. } => (write.key, *ring, peer::op::REPLICATE),
            PeerRequest::Read { key, ring, .. } => (*key, *ring, peer::op::READ),
            _ => return false,
        };
        if self.config.mutations.no_ring_version_check {
            // test-only mutation: serve senders whatever ring they hold.
            return false;
        }
        let p = crate::hash::partition_of(key);
        if ring >= self.ring.changed_at(p) {
            return false;
        }
        peer::put_stale_ring(out, op, id, self.ring.version());
        true
    }

    /// A REPLICATE or READ for a partition this node does not hold by its ring (neither an
    /// owner nor a pending owner): it moved away, and its records were forgotten here when
    /// the flip became known. A sender with an older ring must not put records back (orphan
    /// copies nothing would ever drop again) nor read "not found" here as if this node were
    /// a replica. A hint is acknowledged without being stored (the partition's owners hold
    /// the write, or get it by anti-entropy: the hint only stood for this node's copy, which
    /// is gone), so its holder drops it; any other write is refused (not an acknowledgement),
    /// a read answered UNAVAILABLE. Returns whether it answered.
    pub(super) fn refuse_unheld(
        &mut self,
        req: &PeerRequest<'_>,
        id: u32,
        out: &mut Vec<u8>,
    ) -> bool {
        let (key, op) = match req {
            PeerRequest::Replicate { write, .. } => (write.key, peer::op::REPLICATE),
            PeerRequest::Read { key, .. } => (*key, peer::op::READ),
            _ => return false,
        };
        let p = crate::hash::partition_of(key);
        if self.ring.holds(self.config.node_id, p) {
            return false;
        }
        let why = format!(
            "node {} does not hold partition {p} (ring version {})",
            self.config.node_id,
            self.ring.version()
        );
        match req {
            PeerRequest::Replicate { write, aux, .. } if aux & peer::AUX_HINT != 0 => {
                let kept = crate::storage::Applied::Stale {
                    current: write.version,
                };
                peer::put_write_ack(out, id, &WriteAck::Done(kept));
            }
            PeerRequest::Replicate { .. } => {
                peer::put_write_ack(out, id, &WriteAck::Refused(why));
            }
            _ => crate::protocol::message::put_error(
                out,
                op,
                id,
                crate::protocol::Status::Unavailable,
                &why,
            ),
        }
        true
    }
}
