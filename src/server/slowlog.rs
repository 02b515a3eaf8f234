//! The slow-request log (`kvd --slow-ms`): a request answered later than the threshold is
//! logged (warn) with its opcode, key length, consistency level and where its time went;
//! at most [`SLOW_LOG_LINES_PER_S`] lines per shard and second, the rest counted and
//! reported in the next line.
//!
//! ```text
//!  slow request: PUT key_len=16 consistency=QUORUM 812.4 ms: queued 0.1 ms (read to its
//!    turn's processing), then 812.3 ms waiting (replicas, another shard, or the sync of its
//!    turn; that turn's storage flush+sync took 3.2 ms)
//!  slow turn: 1200 requests answered in 640.0 ms (storage flush+sync 630.1 ms)
//! ```
//!
//! Requests answered in the turn that read them are timed together (the turn's length); a
//! request whose answer came later (coordinated with replicas, forwarded to another shard,
//! or held for a `--sync always` group commit) is timed on its own.

use crate::protocol::{op, Consistency};
use std::time::{Duration, Instant};

/// Most slow-request lines one shard logs per second.
pub const SLOW_LOG_LINES_PER_S: u32 = 10;

/// The default threshold of `--slow-ms`.
pub const SLOW_MS_DEFAULT: u64 = 500;

/// What a deferred request keeps for its latency and the slow log.
#[derive(Clone, Copy, Debug)]
pub struct Deferred {
    /// Start of the turn that read it.
    pub turn_start: Instant,
    /// When its processing began (`None` unless the slow log is on: a clock read).
    pub started: Option<Instant>,
    /// Its opcode and flags.
    pub op: u8,
    /// The frame's aux byte (consistency bits).
    pub aux: u8,
    /// Its key's length (0: no key).
    pub key_len: u16,
}

/// A shard's slow log.
#[derive(Debug)]
pub struct SlowLog {
    threshold: Option<Duration>,
    window: Instant,
    lines: u32,
    suppressed: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl SlowLog {
    /// Log requests slower than `slow_ms` (0: never).
    pub fn new(slow_ms: u64) -> SlowLog {
        SlowLog {
            threshold: (slow_ms > 0).then(|| Duration::from_millis(slow_ms)),
            window: Instant::now(),
            lines: 0,
            suppressed: 0,
        }
    }

    /// Whether requests are timed for the log at all.
    pub fn on(&self) -> bool {
        self.threshold.is_some()
    }

    /// Whether `took` is slow.
    pub fn is_slow(&self, took: Duration) -> bool {
        self.threshold.is_some_and(|t| took >= t)
    }

    /// Room for one more line now (rate limit), with the count of lines dropped before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.lines = 0;
        }
        if self.lines >= SLOW_LOG_LINES_PER_S {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// A deferred request answered after `took` (its turn's storage took `turn_store`).
    pub fn request(&mut self, shard: usize, d: &Deferred, took: Duration, turn_store: Duration) {
        let now = Instant::now();
        let Some(dropped) = self.admit(now) else {
            return;
        };
        let queued = d
            .started
            .map_or(Duration::ZERO, |s| s.duration_since(d.turn_start));
        let level = if d.key_len > 0 {
            Consistency::from_bits(d.aux).name()
        } else {
            "-"
        };
        log::warn!(
            "shard {shard}: slow request: {} key_len={} consistency={level} {:.1} ms: queued \
             {:.1} ms (read to its turn's processing), then {:.1} ms waiting (replicas, another \
             shard, or the sync of its turn; that turn's storage flush+sync took {:.1} ms){}",
            op::name(d.op),
            d.key_len,
            ms(took),
            ms(queued),
            ms(took.saturating_sub(queued)),
            ms(turn_store),
            suppressed_note(dropped)
        );
    }

    /// A turn whose immediate answers (`n` of them) took `took`, `store` of it in storage.
    pub fn turn(&mut self, shard: usize, n: u64, took: Duration, store: Duration) {
        let Some(dropped) = self.admit(Instant::now()) else {
            return;
        };
        log::warn!(
            "shard {shard}: slow turn: {n} requests answered in {:.1} ms (storage flush+sync \
             {:.1} ms){}",
            ms(took),
            ms(store),
            suppressed_note(dropped)
        );
    }
}

fn suppressed_note(dropped: u64) -> String {
    if dropped == 0 {
        String::new()
    } else {
        format!("; {dropped} more slow requests not logged (rate limit)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_and_rate_limit() {
        let s = SlowLog::new(0);
        assert!(!s.on() && !s.is_slow(Duration::from_secs(100)));
        let mut s = SlowLog::new(5);
        assert!(s.is_slow(Duration::from_millis(5)) && !s.is_slow(Duration::from_millis(4)));
        let now = Instant::now();
        for _ in 0..SLOW_LOG_LINES_PER_S {
            assert_eq!(s.admit(now), Some(0));
        }
        assert_eq!(s.admit(now), None);
        assert_eq!(s.admit(now), None);
        assert_eq!(s.admit(now + Duration::from_secs(1)), Some(2));
    }
}
