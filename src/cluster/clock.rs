//! Clock offsets: what this node measures of its peers' clocks, and the max-offset rule that
//! decides whether it may coordinate writes (CockroachDB's rule, issue 10).
//!
//! **Measurement.** Every GOSSIP push carries the pusher's wall clock `t1`; the reply carries
//! the replier's wall clock `t2` and echoes `t1`; the pusher receives it at `t4` (see
//! [`super::peer::ClockStamp`]). As in NTP, the peer's offset (its clock minus ours) is
//! `t2 - (t1 + t4) / 2`, known to within half the round trip `t4 - t1`. A sample with a round
//! trip above [`CLOCK_SAMPLE_RTT_MS_MAX`] is dropped; the newest sample per peer is kept (so a
//! jump is seen at the next round trip). Clocks drift by milliseconds an hour, so a sample
//! does not go stale with age; it is replaced by the next round trip.
//!
//! **The cluster's clock.** This node's offset from the cluster is the median of
//! `{0 (itself)} ∪ {its newest offset to every peer it has measured}`, negated (a node whose
//! peers are all 10 min behind is 10 min ahead). Every peer counts, the ones down or cut off
//! by a partition included (with their last sample): a median over a subset could be carried
//! by the minority of bad clocks (a node 4 min ahead that sees only two sane nodes and two
//! nodes further ahead sits in the middle of what it sees; on the minority side of a
//! partition, the bad clocks may be the majority). With an even count, of the two middle
//! values the one farther from 0 is taken: two nodes that disagree cannot tell which of them
//! is wrong, so both stop until a third clock decides. So bad clocks are outvoted as long as
//! most of the measured nodes have good ones.
//!
//! **The rule** ([`write_refusal`]): a node whose offset from the cluster exceeds
//! `max_clock_offset_ms` refuses to coordinate writes (status CLOCK_OFFSET). So does a node
//! that has not measured every live peer yet (a gossip interval or a few after it starts, or
//! after a peer joins), or in a multi-node cluster no peer at all: it cannot know its own
//! clock is sane, and one write with a version 10 minutes ahead poisons its key for 10
//! minutes. A cluster of one node is its own clock and serves.

use crate::limits::{CLOCK_SAMPLE_RTT_MS_MAX, CLUSTER_NODES_MAX};
use std::collections::BTreeMap;

/// One measurement of a peer's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The peer's clock minus this node's, ms.
    pub offset_ms: i64,
    /// The round trip it was measured over (the error is at most half of it).
    pub rtt_ms: u64,
    /// Local wall time of the measurement.
    pub at_ms: u64,
}

/// This node's clock against the cluster's, as measured now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterClock {
    /// This node's clock minus the cluster's, ms (positive: this node is ahead).
    pub offset_ms: i64,
    /// Peers measured (the offset's median is over them and this node).
    pub measured: usize,
    /// Live peers.
    pub live: usize,
    /// Live peers not measured yet.
    pub missing: usize,
    /// Other nodes in the cluster's configuration.
    pub peers: usize,
}

impl ClusterClock {
    /// Whether every live peer has been measured, and some peer has in a multi-node cluster.
    pub fn complete(&self) -> bool {
        self.missing == 0 && (self.peers == 0 || self.measured > 0)
    }
}

/// The newest clock sample of each peer.
#[derive(Clone, Debug, Default)]
pub struct ClockOffsets {
    samples: BTreeMap<u32, Sample>,
    /// Samples taken and dropped (for STATS).
    taken: u64,
    dropped: u64,
}

impl ClockOffsets {
    /// No samples yet.
    pub fn new() -> ClockOffsets {
        ClockOffsets::default()
    }

    /// A GOSSIP reply from `peer` arrived at local wall time `now_ms`, stamped `sent_ms` by the
    /// peer and echoing our `echo_ms`. Returns the sample taken, if any.
    pub fn on_reply(
        &mut self,
        peer: u32,
        now_ms: u64,
        sent_ms: u64,
        echo_ms: u64,
    ) -> Option<Sample> {
        // No echo (a request, or an older node), or an echo from the future (our clock stepped
        // back since we sent it): nothing to measure.
        if echo_ms == 0 || sent_ms == 0 || echo_ms > now_ms {
            return None;
        }
        let rtt_ms = now_ms - echo_ms;
        if rtt_ms > CLOCK_SAMPLE_RTT_MS_MAX {
            self.dropped += 1;
            return None;
        }
        // i128: the midpoint of two u64 times and a difference of u64 times never overflow.
        let mid = (i128::from(echo_ms) + i128::from(now_ms)) / 2;
        let offset = (i128::from(sent_ms) - mid).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        let s = Sample {
            offset_ms: offset,
            rtt_ms,
            at_ms: now_ms,
        };
        self.samples.insert(peer, s);
        self.taken += 1;
        Some(s)
    }

    /// Drop `peer`'s sample (the node left the cluster for good).
    pub fn forget(&mut self, peer: u32) {
        self.samples.remove(&peer);
    }

    /// The newest sample of `peer`, if any.
    pub fn sample(&self, peer: u32) -> Option<Sample> {
        self.samples.get(&peer).copied()
    }

    /// This node against the cluster made of itself and its `peers` other configured nodes,
    /// of which those in `live` (ids, this node excluded) are alive.
    pub fn cluster(&self, peers: usize, live: impl Iterator<Item = u32>) -> ClusterClock {
        let (mut n_live, mut missing) = (0, 0);
        for p in live {
            n_live += 1;
            missing += usize::from(!self.samples.contains_key(&p));
        }
        // This node's own offset (0) and each peer's. On the stack: a membership shard asks
        // at every write it coordinates (the clock rule), and a cluster has at most
        // CLUSTER_NODES_MAX nodes.
        let mut stack = [0i64; CLUSTER_NODES_MAX + 1];
        let mut heap = Vec::new();
        let offsets: &mut [i64] = if self.samples.len() < stack.len() {
            for (o, s) in stack[1..].iter_mut().zip(self.samples.values()) {
                *o = s.offset_ms;
            }
            &mut stack[..self.samples.len() + 1]
        } else {
            heap.push(0);
            heap.extend(self.samples.values().map(|s| s.offset_ms));
            &mut heap
        };
        // The peers' median offset is the cluster's clock minus ours: negate it.
        ClusterClock {
            offset_ms: median_offset(offsets).saturating_neg(),
            measured: self.samples.len(),
            live: n_live,
            missing,
            peers,
        }
    }

    /// Samples taken and dropped (round trip too long).
    pub fn counts(&self) -> (u64, u64) {
        (self.taken, self.dropped)
    }
}

/// The median of `offsets` (not empty); with an even count, the middle value farther from 0
/// (see the module doc).
pub fn median_offset(offsets: &mut [i64]) -> i64 {
    assert!(!offsets.is_empty());
    offsets.sort_unstable();
    let n = offsets.len();
    if n % 2 == 1 {
        return offsets[n / 2];
    }
    let (a, b) = (offsets[n / 2 - 1], offsets[n / 2]);
    if a.unsigned_abs() >= b.unsigned_abs() {
        a
    } else {
        b
    }
}

/// Why this node must not coordinate a write now, or `None` if it may. `accept_ahead` is the
/// simulator's mutation that lets a node ahead of the cluster coordinate.
pub fn write_refusal(c: ClusterClock, max_offset_ms: u64, accept_ahead: bool) -> Option<String> {
    if !c.complete() {
        if accept_ahead {
            return None;
        }
        return Some(format!(
            "this node has not measured its clock against {} of its {} live peers yet ({} of \
             {} peers measured); it measures each at a gossip round trip: retry, or use \
             another node",
            c.missing, c.live, c.measured, c.peers
        ));
    }
    if c.offset_ms.unsigned_abs() <= max_offset_ms || (accept_ahead && c.offset_ms > 0) {
        return None;
    }
    let (dir, verb) = if c.offset_ms > 0 {
        ("ahead of", "would win over later writes")
    } else {
        ("behind", "would lose to earlier writes")
    };
    Some(format!(
        "this node's clock is {} ms {dir} the cluster's (median of {} measured peers), more \
         than --max-clock-offset-ms {max_offset_ms}: it does not coordinate writes (their \
         versions {verb}); use another node and fix this node's clock",
        c.offset_ms.unsigned_abs(),
        c.measured
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_offset_from_one_round_trip() {
        let mut c = ClockOffsets::new();
        // We send at 1_000 (our clock); the peer, 600 s ahead, stamps 601_005; we get the
        // reply at 1_010: round trip 10 ms, offset 601_005 - 1_005 = 600_000.
        let s = c.on_reply(2, 1_010, 601_005, 1_000).unwrap();
        assert_eq!((s.offset_ms, s.rtt_ms), (600_000, 10));
        // A slow peer.
        let s = c.on_reply(3, 2_004, 1_402, 2_000).unwrap();
        assert_eq!(s.offset_ms, 1_402 - 2_002);
        // Older nodes send no echo; a reply from before a backwards step cannot be used.
        assert!(c.on_reply(2, 5_000, 7, 0).is_none());
        assert!(c.on_reply(2, 5_000, 7, 6_000).is_none());
        // A slow round trip says little about the clock: dropped.
        assert!(c
            .on_reply(2, 10_000 + CLOCK_SAMPLE_RTT_MS_MAX + 1, 10_000, 10_000)
            .is_none());
        assert_eq!(c.counts(), (2, 1));
        // The newest sample wins (a jump shows at the next round trip).
        c.on_reply(2, 3_010, 3_005, 3_000).unwrap();
        assert_eq!(c.sample(2).unwrap().offset_ms, 0);
        assert!(c.sample(4).is_none());
    }

    #[test]
    fn median_with_itself_counted_as_zero() {
        assert_eq!(median_offset(&mut [0]), 0);
        assert_eq!(median_offset(&mut [0, 600_000, -600_000]), 0);
        assert_eq!(median_offset(&mut [0, -600_000, -1_200_000]), -600_000);
        // Even counts: the middle value farther from 0 (both sides of a split stop).
        assert_eq!(median_offset(&mut [0, 600_000]), 600_000);
        assert_eq!(median_offset(&mut [0, -600_000]), -600_000);
        assert_eq!(median_offset(&mut [0, 3, -2, 7]), 3);
    }

    fn measured(offsets: &[(u32, i64)]) -> ClockOffsets {
        let mut c = ClockOffsets::new();
        for &(p, o) in offsets {
            let sent = (10_000_000 + o) as u64;
            c.on_reply(p, 10_000_000, sent, 10_000_000).unwrap();
        }
        c
    }

    #[test]
    fn the_skewed_nodes_refuse_and_the_one_in_the_middle_serves() {
        // Three nodes at +600 s, -600 s and 0; each measures the other two.
        let me0 = measured(&[(2, 600_000), (3, -600_000)]);
        let fast = measured(&[(1, -600_000), (3, -1_200_000)]);
        let slow = measured(&[(1, 600_000), (2, 1_200_000)]);
        let c0 = me0.cluster(2, [2, 3].into_iter());
        assert_eq!((c0.offset_ms, c0.measured, c0.live), (0, 2, 2));
        assert_eq!(write_refusal(c0, 500, false), None);
        let cf = fast.cluster(2, [1, 3].into_iter());
        assert_eq!(cf.offset_ms, 600_000);
        let why = write_refusal(cf, 500, false).unwrap();
        assert!(why.contains("600000 ms ahead of"), "{why}");
        let cs = slow.cluster(2, [1, 2].into_iter());
        assert_eq!(cs.offset_ms, -600_000);
        assert!(write_refusal(cs, 500, false).unwrap().contains("behind"));
        // The mutation lets the fast node coordinate, not the slow one.
        assert_eq!(write_refusal(cf, 500, true), None);
        assert!(write_refusal(cs, 500, true).is_some());
        // Within the bound: fine either way.
        let near = measured(&[(2, 400), (3, -20)]);
        assert_eq!(
            write_refusal(near.cluster(2, [2, 3].into_iter()), 500, false),
            None
        );
    }

    #[test]
    fn a_bad_minority_cannot_carry_the_median() {
        // Seven nodes: four sane, three 219 s, 437 s and 559 s ahead. The one 219 s ahead
        // measured two sane nodes and the two further ahead: its sample's median is itself.
        let partial = measured(&[(1, -219_000), (3, -219_000), (2, 218_000), (5, 339_000)]);
        let c = partial.cluster(6, [1, 2, 3, 5, 6, 7].into_iter());
        assert!(write_refusal(c, 500, false).is_some(), "{c:?}");
        // Once it has measured every live peer, the sane majority outvotes it.
        let all = measured(&[
            (1, -219_000),
            (3, -219_000),
            (6, -219_000),
            (7, -219_000),
            (2, 218_000),
            (5, 339_000),
        ]);
        let c = all.cluster(6, [1, 2, 3, 5, 6, 7].into_iter());
        assert_eq!(c.offset_ms, 219_000);
        assert!(write_refusal(c, 500, false).is_some());
        // A sane node of the same cluster serves.
        let sane = measured(&[
            (1, 3),
            (3, -2),
            (6, 0),
            (4, 219_000),
            (2, 437_000),
            (5, 558_000),
        ]);
        let c = sane.cluster(6, [1, 2, 3, 4, 5, 6].into_iter());
        assert_eq!(write_refusal(c, 500, false), None, "{c:?}");
    }

    #[test]
    fn unmeasured_refuses_a_one_node_cluster_serves() {
        let c = ClockOffsets::new();
        let r = write_refusal(c.cluster(2, [2, 3].into_iter()), 500, false).unwrap();
        assert!(r.contains("against 2 of its 2 live peers"), "{r}");
        // One of two live peers measured: not enough (a subset can be carried by bad clocks).
        let one = measured(&[(2, 0)]);
        let r = write_refusal(one.cluster(2, [2, 3].into_iter()), 500, false).unwrap();
        assert!(r.contains("against 1 of its 2"), "{r}");
        assert_eq!(
            write_refusal(one.cluster(2, [2].into_iter()), 500, false),
            None
        );
        // Peers configured but all down, never measured: still refused.
        assert!(write_refusal(c.cluster(2, std::iter::empty()), 500, false).is_some());
        // A cluster of one: its own clock is the cluster's.
        assert_eq!(
            write_refusal(c.cluster(0, std::iter::empty()), 500, false),
            None
        );
    }

    #[test]
    fn cut_off_from_its_peers_a_node_judges_by_their_last_samples() {
        // Node 1 is 900 s ahead of both peers, then a partition cuts it off: no live peer.
        let m = measured(&[(2, -900_000), (3, -900_010)]);
        let alone = m.cluster(2, std::iter::empty());
        assert_eq!(
            (alone.offset_ms, alone.measured, alone.live),
            (900_000, 2, 0)
        );
        assert!(write_refusal(alone, 500, false).is_some());
        // Seven nodes, two of them 65 s ahead (and 0.8 s apart); a partition leaves those two
        // with one sane node: the sane nodes out of reach still outvote them.
        let bloc = measured(&[
            (5, 830),
            (1, -65_561),
            (2, -65_561),
            (3, -65_560),
            (4, -65_562),
            (7, -65_561),
        ]);
        let c = bloc.cluster(6, [5, 7].into_iter());
        assert_eq!(c.offset_ms, 65_561);
        assert!(write_refusal(c, 500, false).is_some());
    }
}
