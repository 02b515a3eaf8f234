//! Partition moves: a pending owner copies a partition it is taking over through anti-entropy
//! exchanges with the partition's current owners, throttled, a bounded number at a time.
//!
//! A move's copy is an exchange like a round's (TREE down to the differing segments, KEYS
//! with this side's lists, the records the source holds newer come back), started by the
//! pending owner and flagged `transfer`: it is not part of a round, its bytes count against
//! the move's byte rate instead of the round's budget, and when it completes the partition
//! is *copied* from that source. An empty pending owner gets every record of the partition,
//! tombstones included, in messages of at most `AE_MESSAGE_BYTES_MAX`.
//!
//! **Sources** (why a copy can be trusted): the node the pending owner replaces in the
//! partition's replica set, when it is alive. It held every write acknowledged by it, so the
//! new set holds each acknowledged write on as many nodes as the old set did (Cassandra's
//! "strict" bootstrap source). When that node is dead (a removal, a replacement) the copy
//! is made from *every* other live current owner: the union holds every acknowledged write.
//! With no other owner at all (N = 1, its one owner removed or replaced) there is nothing to
//! copy: the partition counts as copied at once, and starts empty (a leave waits for its
//! node instead).
//!
//! **Start.** A copy starts only when the node's driver says moves may run
//! ([`AntiEntropy::set_moves`]): the change is settled (every live node holds the ring
//! version that began it, so every write from then on also reaches the pending owner) and
//! not paused. Writes from then on reach the pending owner directly; the copy brings what
//! was written before.
//!
//! **Throttle.** A token bucket of `bytes_per_s` (the node's `--stream-mb-per-s`, split over
//! its shards): bytes copied are spent, and while the bucket is in debt the copy's next step
//! waits (the exchange is parked and resumed by a later tick), so the rate holds over any
//! window longer than a message.
//!
//! **Progress** (TRANSFERS). The size of a partition is not known before it streams: the
//! source does not say, and the pending owner's tree is empty. But keys spread evenly over
//! a partition's 1,024 tree segments (they are bits of the key hash), and an exchange
//! learns which segments differ when its tree walk ends and how many it has compared after
//! each AE_KEYS reply. So a copy's total is estimated, with no wire change, as the bytes it
//! had before the exchange plus the exchange's bytes so far scaled by differing segments
//! over segments compared: rough after the first reply, within a few per cent past a tenth
//! of the partition, exact once copied. The rate is measured over windows of
//! [`TRANSFER_RATE_WINDOW_MS`] ([`RateMeter`]); the ETA is what is left over the rate.
//!
//! **Failures.** A copy that fails (timeout, error, the source died) is retried after
//! [`TRANSFER_RETRY_MS`] from the live sources; one that a restart interrupted starts again
//! (what was copied stays: the next copy moves only the difference).

use super::initiator::Exchange;
use super::AntiEntropy;
use crate::cluster::ring::Ring;
use crate::cluster::ringstate::Change;
use crate::cluster::Ownership;
use crate::limits::AE_MESSAGE_BYTES_MAX;
use crate::storage::Store;

/// Delay before a failed copy is tried again.
pub const TRANSFER_RETRY_MS: u64 = 500;

/// Copies running at once on one node by default (`--transfer-limit`).
pub const TRANSFER_LIMIT_DEFAULT: usize = 4;

/// Window over which copy rates are measured (TRANSFERS): long enough to smooth the steps
/// of a throttled copy (a message at a time), short enough to follow a change of
/// `THROTTLE`.
pub const TRANSFER_RATE_WINDOW_MS: u64 = 2_000;

/// A rate is not shown over less time than this (a copy's first reply says little).
pub const TRANSFER_RATE_MIN_MS: u64 = 50;

/// Bytes per second over windows of [`TRANSFER_RATE_WINDOW_MS`]: the last full window's
/// rate, or the running window's once it is longer than a window (a copy that stalls shows
/// its rate falling), or the running window's alone before the first one ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateMeter {
    /// Start of the running window (0: nothing measured yet) and the bytes then.
    from_ms: u64,
    from_bytes: u64,
    /// The last full window's rate.
    last: Option<u64>,
}

impl RateMeter {
    /// Start measuring at `now_ms` with `bytes` done (once; later calls do nothing).
    pub fn start(&mut self, now_ms: u64, bytes: u64) {
        if self.from_ms == 0 {
            self.from_ms = now_ms.max(1);
            self.from_bytes = bytes;
        }
    }

    /// `bytes` done at `now_ms`: closes the running window when it is a window long.
    pub fn record(&mut self, now_ms: u64, bytes: u64) {
        self.start(now_ms, bytes);
        let dt = now_ms.saturating_sub(self.from_ms);
        if dt >= TRANSFER_RATE_WINDOW_MS {
            self.last = Some(bytes.saturating_sub(self.from_bytes).saturating_mul(1000) / dt);
            self.from_ms = now_ms;
            self.from_bytes = bytes;
        }
    }

    /// The rate at `now_ms` with `bytes` done, if there is one yet.
    pub fn rate(&self, now_ms: u64, bytes: u64) -> Option<u64> {
        if self.from_ms == 0 {
            return None;
        }
        let dt = now_ms.saturating_sub(self.from_ms);
        let running = bytes.saturating_sub(self.from_bytes).saturating_mul(1000) / dt.max(1);
        match self.last {
            Some(r) if dt < TRANSFER_RATE_WINDOW_MS => Some(r),
            _ if dt >= TRANSFER_RATE_MIN_MS => Some(running),
            _ => self.last,
        }
    }
}

/// One partition this core is taking over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The partition.
    pub partition: usize,
    /// The ring version its change began at.
    pub since: u64,
    /// The owner this node replaces in the partition's replica set.
    pub replaces: u32,
    /// Sources still to copy from (decided when the copy starts), `None` before.
    pub sources: Option<Vec<u32>>,
    /// Sources copied from already.
    pub copied_from: Vec<u32>,
    /// Records and bytes copied so far.
    pub keys: u64,
    /// Bytes copied so far.
    pub bytes: u64,
    /// When the first copy started (0: not yet).
    pub started_ms: u64,
    /// The partition is copied from every source.
    pub done: bool,
    /// A copy is in flight (or parked).
    pub running: bool,
    /// Not before this time (after a failure).
    pub retry_at_ms: u64,
    /// When the copy ended (0: not yet).
    pub finished_ms: u64,
    /// Bytes copied before the running exchange learned its differing segments.
    pub exchange_from_bytes: u64,
    /// The running exchange's differing segments (`None`: its tree walk is not done).
    pub segments: Option<u32>,
    /// Of those, how many it has compared so far (see "Progress").
    pub segments_done: u32,
    /// The copy's byte rate.
    pub meter: RateMeter,
}

impl Transfer {
    /// A move of `partition` to this node, not started, for the change begun at ring version
    /// `since`, taking over from node `replaces`.
    fn new(partition: usize, since: u64, replaces: u32) -> Transfer {
        Transfer {
            partition,
            since,
            replaces,
            sources: None,
            copied_from: Vec::new(),
            keys: 0,
            bytes: 0,
            started_ms: 0,
            done: false,
            running: false,
            retry_at_ms: 0,
            finished_ms: 0,
            exchange_from_bytes: 0,
            segments: None,
            segments_done: 0,
            meter: RateMeter::default(),
        }
    }

    /// The partition's bytes as far as they can be told: exact once copied, an estimate
    /// from the segments compared while it streams, `None` before (see "Progress").
    pub fn total_bytes(&self) -> Option<u64> {
        if self.done {
            return Some(self.bytes);
        }
        let segments = u64::from(self.segments?);
        let done = u64::from(self.segments_done);
        if segments == 0 || done == 0 {
            return (segments == 0).then_some(self.bytes);
        }
        let streamed = self.bytes.saturating_sub(self.exchange_from_bytes);
        let estimate = self.exchange_from_bytes + streamed.saturating_mul(segments) / done;
        Some(estimate.max(self.bytes))
    }

    /// Bytes per second: over the copy's whole time once copied, else measured.
    pub fn rate_bytes_per_s(&self, now_ms: u64) -> Option<u64> {
        if self.done {
            if self.started_ms == 0 {
                return None;
            }
            let dt = self.finished_ms.saturating_sub(self.started_ms).max(1);
            return Some(self.bytes.saturating_mul(1000) / dt);
        }
        self.meter.rate(now_ms, self.bytes)
    }
}

/// A token bucket of bytes per second.
#[derive(Clone, Debug, Default)]
pub struct Throttle {
    /// Bytes per second, 0 = unlimited.
    pub bytes_per_s: u64,
    tokens: i64,
    last_ms: u64,
}

impl Throttle {
    fn refill(&mut self, now_ms: u64) {
        if self.bytes_per_s == 0 {
            self.tokens = 0;
            self.last_ms = now_ms;
            return;
        }
        let burst = (self.bytes_per_s / 10).max(AE_MESSAGE_BYTES_MAX as u64) as i64;
        let dt = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms;
        let add = (self.bytes_per_s.saturating_mul(dt) / 1000) as i64;
        self.tokens = self.tokens.saturating_add(add).min(burst);
    }

    fn spend(&mut self, bytes: u64) {
        if self.bytes_per_s > 0 {
            self.tokens = self.tokens.saturating_sub(bytes as i64);
        }
    }

    /// Whether the bucket is in debt at `now_ms`.
    fn over(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.bytes_per_s > 0 && self.tokens < 0
    }
}

impl AntiEntropy {
    /// Whether moves may run now (settled and not paused), the byte rate of this core's
    /// copies (0 = unlimited) and how many may run at once.
    pub fn set_moves(&mut self, enabled: bool, bytes_per_s: u64, limit: usize) {
        self.moves_enabled = enabled;
        self.throttle.bytes_per_s = bytes_per_s;
        self.transfer_limit = limit.max(1);
    }

    /// The partitions this core takes over, with their progress.
    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.values()
    }

    /// Partitions copied whole since the last call, with the ring version their change
    /// began at: the driver reports them to the leader, which flips them.
    pub fn take_copied(&mut self) -> Vec<(u16, u64)> {
        std::mem::take(&mut self.copied)
    }

    /// The partitions this core copies under `ring` (pending owner, its shard's partition),
    /// keeping the progress of those that still move under the same change.
    pub(super) fn plan_transfers(&mut self, ring: &Ring) {
        let state = ring.state();
        let moves = state
            .target()
            .map(|t| Ownership::moves(state.current(), t))
            .unwrap_or_default();
        let mut next = std::collections::BTreeMap::new();
        for m in moves.iter().filter(|m| m.to == self.me) {
            if !self.index.held[m.partition] {
                continue;
            }
            let t = match self.transfers.remove(&m.partition) {
                Some(t) if t.since == state.since() => t,
                _ => Transfer::new(m.partition, state.since(), m.from),
            };
            next.insert(m.partition, t);
        }
        self.transfers = next;
        // Parked copies of partitions that no longer move are dropped.
        let transfers = &self.transfers;
        self.parked.retain(|x| transfers.contains_key(&x.partition));
    }

    pub(super) fn transfer_failed(&mut self, p: usize) {
        let now_ms = self.now_ms;
        if let Some(t) = self.transfers.get_mut(&p) {
            t.running = false;
            t.retry_at_ms = now_ms.saturating_add(TRANSFER_RETRY_MS);
        }
    }

    /// A copy's AE_KEYS reply: `keys` records of `bytes` applied, `segments_done` more of
    /// its differing segments compared.
    pub(super) fn transfer_progress(
        &mut self,
        p: usize,
        keys: u64,
        bytes: u64,
        segments_done: u32,
    ) {
        let now_ms = self.now_ms;
        self.throttle.spend(bytes);
        self.index.stats.moved_keys += keys;
        self.index.stats.moved_bytes += bytes;
        self.copy_meter.record(now_ms, self.index.stats.moved_bytes);
        if let Some(t) = self.transfers.get_mut(&p) {
            t.keys += keys;
            t.bytes += bytes;
            t.segments_done = t.segments_done.saturating_add(segments_done);
            t.meter.record(now_ms, t.bytes);
        }
    }

    /// A copy's tree walk ended: `segments` differ, to be compared by key.
    pub(super) fn transfer_segments(&mut self, p: usize, segments: usize) {
        if let Some(t) = self.transfers.get_mut(&p) {
            t.exchange_from_bytes = t.bytes;
            t.segments = Some(segments as u32);
            t.segments_done = 0;
        }
    }

    /// The byte rate of this core's copies, measured (`None`: none has streamed yet).
    pub fn copy_rate_bytes_per_s(&self, now_ms: u64) -> Option<u64> {
        self.copy_meter.rate(now_ms, self.index.stats.moved_bytes)
    }

    pub(super) fn transfer_copied(&mut self, p: usize, peer: u32) {
        let Some(t) = self.transfers.get_mut(&p) else {
            return;
        };
        t.running = false;
        if let Some(s) = t.sources.as_mut() {
            if s.contains(&peer) && !t.copied_from.contains(&peer) {
                t.copied_from.push(peer);
            }
            s.retain(|&n| n != peer);
            if s.is_empty() && !t.done {
                t.done = true;
                t.finished_ms = self.now_ms;
                self.index.stats.moves_copied += 1;
                self.copied.push((p as u16, t.since));
            }
        }
    }

    pub(super) fn throttled(&mut self, now_ms: u64) -> bool {
        self.throttle.over(now_ms)
    }

    pub(super) fn park(&mut self, x: Exchange) {
        self.parked.push_back(x);
    }

    /// Resume parked copies the rate allows, and start copies up to the limit.
    pub(super) fn drive_transfers(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        alive: &dyn Fn(u32) -> bool,
    ) {
        while !self.parked.is_empty() && !self.throttle.over(now_ms) {
            let mut x = self.parked.pop_front().expect("checked");
            x.deadline_ms = now_ms.saturating_add(self.timeout_ms);
            self.advance(now_ms, store, x);
        }
        if !self.moves_enabled {
            return;
        }
        let running = self.transfers.values().filter(|t| t.running).count();
        let mut budget = self.transfer_limit.saturating_sub(running);
        let ready: Vec<usize> = self
            .transfers
            .values()
            // (A retry time further ahead than it is ever set: the clock stepped back.)
            .filter(|t| {
                !t.done
                    && !t.running
                    && (t.retry_at_ms <= now_ms
                        || t.retry_at_ms > now_ms.saturating_add(TRANSFER_RETRY_MS))
            })
            .map(|t| t.partition)
            .collect();
        if !ready.is_empty() && !self.trees_ready(now_ms, store, false) {
            return; // copies start once the trees are built
        }
        for p in ready {
            if budget == 0 || self.throttle.over(now_ms) {
                break;
            }
            let holders: Vec<u32> = self.ring.preference_list(p).to_vec();
            let change = self.ring.state().change();
            let me = self.me;
            let t = self.transfers.get_mut(&p).expect("listed above");
            // Whether the owner this node replaces is dropped for good by the change (a
            // removal or a replacement), rather than only down for now (a leave, a join).
            let replaced_for_good = match change {
                Some(Change::Remove { node }) => node == t.replaces,
                Some(Change::Replace { old, .. }) => old == t.replaces,
                _ => false,
            };
            let sources = t.sources.get_or_insert_with(|| {
                if alive(t.replaces) {
                    vec![t.replaces]
                } else {
                    holders
                        .iter()
                        .copied()
                        .filter(|&n| n != t.replaces && n != me)
                        .collect()
                }
            });
            if sources.is_empty() && replaced_for_good {
                // No other owner at all (N = 1, the only owner removed for good): there is
                // nothing left to copy from, and nothing to wait for; the partition starts
                // empty here. (Not for a leave or a join: the owner is only down for now, or
                // not yet seen alive by a node that just restarted, and the copy waits for
                // it: kvsim seed 205 flipped a partition to a joining node that had taken it
                // empty, its one owner unseen after the joiner's restart.)
                t.done = true;
                t.finished_ms = now_ms;
                self.index.stats.moves_copied += 1;
                self.copied.push((p as u16, t.since));
                continue;
            }
            let Some(&peer) = sources.iter().find(|&&n| alive(n)) else {
                // No live source now (it failed after the copy began): start over from the
                // live ones after a pause.
                t.sources = None;
                t.retry_at_ms = now_ms.saturating_add(TRANSFER_RETRY_MS);
                continue;
            };
            if t.started_ms == 0 {
                t.started_ms = now_ms;
            }
            t.meter.start(now_ms, t.bytes);
            self.copy_meter.start(now_ms, self.index.stats.moved_bytes);
            t.running = true;
            budget -= 1;
            self.open_exchange(now_ms, p, peer, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer() -> Transfer {
        Transfer {
            sources: Some(vec![1]),
            started_ms: 1_000,
            running: true,
            ..Transfer::new(7, 2, 1)
        }
    }

    #[test]
    fn the_total_is_estimated_from_the_segments_compared() {
        let mut t = transfer();
        assert_eq!(t.total_bytes(), None, "unknown before the tree walk");
        t.segments = Some(1024);
        assert_eq!(
            t.total_bytes(),
            None,
            "unknown before a segment is compared"
        );
        t.bytes = 100_000;
        t.segments_done = 256;
        assert_eq!(t.total_bytes(), Some(400_000));
        // A second exchange (another source) counts from the bytes before it.
        t.exchange_from_bytes = 100_000;
        t.segments = Some(10);
        t.segments_done = 5;
        t.bytes = 100_500;
        assert_eq!(t.total_bytes(), Some(101_000));
        t.segments = Some(0);
        assert_eq!(
            t.total_bytes(),
            Some(100_500),
            "nothing differs: what it has"
        );
        t.done = true;
        t.finished_ms = 3_000;
        assert_eq!(t.total_bytes(), Some(100_500), "exact once copied");
        assert_eq!(
            t.rate_bytes_per_s(9_999),
            Some(50_250),
            "over the copy's time"
        );
    }

    #[test]
    fn the_rate_is_measured_over_windows() {
        let mut m = RateMeter::default();
        assert_eq!(m.rate(5, 0), None);
        m.start(1_000, 0);
        assert_eq!(m.rate(1_010, 100), None, "too soon to tell");
        m.record(1_500, 50_000);
        assert_eq!(m.rate(1_500, 50_000), Some(100_000), "the running window");
        m.record(1_000 + TRANSFER_RATE_WINDOW_MS, 200_000);
        assert_eq!(
            m.rate(3_100, 210_000),
            Some(100_000),
            "the last full window"
        );
        // A stall: past a window without progress, the running window shows it.
        let later = 3_000 + 2 * TRANSFER_RATE_WINDOW_MS;
        assert_eq!(m.rate(later, 200_000), Some(0));
    }
}
