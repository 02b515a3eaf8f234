//! The rejoin gate: a node that may have been excluded (its newest record, or a gap between
//! ticks, older than the tombstone window) stops serving reads until a round syncs every
//! partition it holds with a live replica and fails no exchange. Entering the gate and the
//! read check are here; the read refusal is in [`super::tracked`] (`Tracked::get`), leaving
//! it in [`AntiEntropy::finish_round_if_done`] (initiator), and the rejoining flag on the
//! wire decides which side's records are authoritative ([`super::responder`]). See the
//! parent module's doc (rule 2, "Rejoin").

use super::AntiEntropy;

impl AntiEntropy {
    pub(super) fn start_rejoin(&mut self) {
        // A single replica has nobody to rejoin from.
        if self.ring.replicas() > 1 && !self.held_list.is_empty() {
            if !self.index.rejoining {
                log::warn!(
                    "node {}: possibly out of the cluster for longer than the tombstone window: \
                     not serving reads until a full anti-entropy round completes",
                    self.me
                );
            }
            self.index.rejoining = true;
            // Do not wait a whole interval: reads are refused until a full round.
            self.next_round_ms = self
                .next_round_ms
                .min(self.last_tick_ms.saturating_add(self.retry_ms));
        }
    }

    /// Whether this node serves reads (false while rejoining).
    pub fn serving_reads(&self) -> bool {
        !self.index.rejoining
    }
}
