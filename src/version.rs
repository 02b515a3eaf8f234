//! Versions and the hybrid logical clock that issues them.
//!
//! A version is one `u64`, compared as an integer, so last-write-wins is a plain `max` that
//! every replica computes the same way:
//!
//! ```text
//!  63                                22 21          10 9          0
//!  +-----------------------------------+--------------+------------+
//!  |  physical time, ms since the Unix  |  logical     |  node id   |
//!  |  epoch (42 bits, good until 2109)  |  (12 bits)   |  (10 bits) |
//!  +-----------------------------------+--------------+------------+
//! ```
//!
//! The node id in the low bits is the final tie-break between writes issued in the same
//! millisecond with the same counter by different nodes. The clock never reads the system
//! time itself: `now` is passed in, so the simulator controls it.

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 12;
/// Bits of the node id.
pub const NODE_BITS: u32 = 10;
/// Largest node id a version can carry.
pub const NODE_ID_MAX: u32 = (1 << NODE_BITS) - 1;
const LOGICAL_MAX: u64 = (1 << LOGICAL_BITS) - 1;
const PHYSICAL_SHIFT: u32 = LOGICAL_BITS + NODE_BITS;

/// A write's version: totally ordered, unique per (node, write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub u64);

impl Version {
    /// The version older than every write (what an absent key compares as).
    pub const ZERO: Version = Version(0);

    /// Assemble a version from its parts.
    pub fn new(physical_ms: u64, logical: u64, node_id: u32) -> Version {
        assert!(
            physical_ms < (1 << (64 - PHYSICAL_SHIFT)),
            "physical time out of range"
        );
        assert!(logical <= LOGICAL_MAX);
        assert!(
            node_id <= NODE_ID_MAX,
            "node id {node_id} above {NODE_ID_MAX}"
        );
        Version((physical_ms << PHYSICAL_SHIFT) | (logical << NODE_BITS) | node_id as u64)
    }

    /// Milliseconds since the Unix epoch when the write was issued (by its node's HLC).
    pub fn physical_ms(self) -> u64 {
        self.0 >> PHYSICAL_SHIFT
    }

    /// The logical counter.
    pub fn logical(self) -> u64 {
        (self.0 >> NODE_BITS) & LOGICAL_MAX
    }

    /// The id of the node that issued the write.
    pub fn node_id(self) -> u32 {
        (self.0 & NODE_ID_MAX as u64) as u32
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A hybrid logical clock: versions it issues strictly increase, even when the wall clock
/// steps back, and stay close to the wall clock when it behaves.
#[derive(Clone, Debug)]
pub struct Hlc {
    node_id: u32,
    /// Physical and logical parts of the last version issued or observed.
    last_ms: u64,
    last_logical: u64,
}

impl Hlc {
    /// A clock for node `node_id` that has issued nothing yet.
    pub fn new(node_id: u32) -> Hlc {
        assert!(
            node_id <= NODE_ID_MAX,
            "node id {node_id} above {NODE_ID_MAX}"
        );
        Hlc {
            node_id,
            last_ms: 0,
            last_logical: 0,
        }
    }

    /// This clock's node id.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// Issue a new version at wall time `now_ms`; strictly greater than every version this
    /// clock issued or observed before.
    pub fn issue(&mut self, now_ms: u64) -> Version {
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            self.last_logical = 0;
        } else if self.last_logical < LOGICAL_MAX {
            self.last_logical += 1;
        } else {
            // 4096 versions in one millisecond: borrow the next millisecond, as HLC does.
            self.last_ms += 1;
            self.last_logical = 0;
        }
        Version::new(self.last_ms, self.last_logical, self.node_id)
    }

    /// Take note of a version seen from elsewhere (a replicated write, a read reply), so that
    /// the next version issued here is newer than it.
    pub fn observe(&mut self, seen: Version) {
        let (ms, logical) = (seen.physical_ms(), seen.logical());
        if (ms, logical) > (self.last_ms, self.last_logical) {
            self.last_ms = ms;
            self.last_logical = logical;
        }
    }

    /// Issue a version at wall time `now_ms` that is also newer than `floor`, whatever the
    /// wall clock says: what a coordinator does when a replica reports that it holds `floor`,
    /// newer than the write it was sent (the write is issued again above it). The caller
    /// bounds `floor` (replicas only hold versions at most the max offset ahead of their
    /// clocks), so this cannot drag the clock arbitrarily far.
    pub fn issue_above(&mut self, now_ms: u64, floor: Version) -> Version {
        self.observe(floor);
        let v = self.issue(now_ms);
        debug_assert!(v > floor);
        v
    }

    /// Restart the clock above a version recovered from disk, so a restarted node never issues
    /// a version below one it issued before the restart.
    pub fn recover(&mut self, highest_seen: Version) {
        self.observe(highest_seen);
    }

    /// Restart the clock above a durable ceiling in ms: every version issued from now on has a
    /// physical part above `ceiling_ms`.
    pub fn recover_above_ms(&mut self, ceiling_ms: u64) {
        if ceiling_ms >= self.last_ms {
            self.last_ms = ceiling_ms;
            self.last_logical = LOGICAL_MAX;
        }
    }

    /// Physical part of the last version issued or observed (what a durable ceiling must cover
    /// before versions issued up to now leave the node).
    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let v = Version::new(1_700_000_000_000, 5, 7);
        assert_eq!(v.physical_ms(), 1_700_000_000_000);
        assert_eq!(v.logical(), 5);
        assert_eq!(v.node_id(), 7);
    }

    #[test]
    fn monotonic_when_the_wall_clock_steps_back() {
        let mut c = Hlc::new(1);
        let mut last = Version::ZERO;
        for now in [100, 100, 99, 50, 101, 101, 0, 200] {
            let v = c.issue(now);
            assert!(v > last, "{v:?} after {last:?}");
            last = v;
        }
        for _ in 0..10_000 {
            let v = c.issue(200);
            assert!(v > last);
            last = v;
        }
    }

    #[test]
    fn observed_versions_are_exceeded() {
        let mut a = Hlc::new(1);
        let mut b = Hlc::new(2);
        let va = a.issue(1_000);
        b.observe(va);
        let vb = b.issue(10);
        assert!(vb > va);
    }

    #[test]
    fn recovery_above_a_ceiling() {
        let mut c = Hlc::new(1);
        c.recover_above_ms(5_000);
        let v = c.issue(4_000);
        assert!(v.physical_ms() > 5_000, "{v:?}");
        let mut d = Hlc::new(1);
        let before = d.issue(9_000);
        d.recover_above_ms(5_000);
        assert!(
            d.issue(9_000) > before,
            "a lower ceiling never moves the clock back"
        );
    }

    #[test]
    fn issue_above_beats_the_floor_whatever_the_wall_clock() {
        let mut c = Hlc::new(1);
        let first = c.issue(1_000);
        // A replica holds a version from a node 10 minutes ahead, with a higher node id.
        let held = Version::new(601_000, 7, 900);
        let v = c.issue_above(1_001, held);
        assert!(v > held && v > first, "{v:?}");
        assert_eq!(v.node_id(), 1);
        assert_eq!(v.physical_ms(), 601_000);
        // Same ms and counter as the floor, lower node id: still above it.
        let mut d = Hlc::new(1);
        let held = Version::new(5_000, 3, 2);
        assert!(d.issue_above(5_000, held) > held);
    }

    #[test]
    fn node_id_breaks_ties() {
        let x = Version::new(5, 0, 1);
        let y = Version::new(5, 0, 2);
        assert!(y > x);
    }
}
