//! A fixed-size, lock-free latency histogram: log-linear buckets (8 per power of two, so any
//! value is within 12.5 % of its bucket's bounds), atomic counters that one shard writes and any
//! shard reads for STATS. No allocation after creation; values beyond the top bucket are
//! clamped into it and the maximum is kept exactly.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two.
const SUB_BUCKETS: u64 = 8;
/// Powers of two covered: values up to 2^40 µs (12 days).
const POWERS: usize = 40;
/// Number of buckets.
pub const BUCKETS: usize = POWERS * SUB_BUCKETS as usize;

/// A histogram of microsecond values.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
    /// The sum of every value counted (for a Prometheus histogram's `_sum`).
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

/// The bucket of a value.
fn bucket_of(v: u64) -> usize {
    if v < SUB_BUCKETS {
        return v as usize;
    }
    let power = 63 - v.leading_zeros() as u64; // >= 3
    let sub = (v >> (power - 3)) & (SUB_BUCKETS - 1);
    (((power - 2) * SUB_BUCKETS + sub) as usize).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB_BUCKETS {
        return b;
    }
    let power = b / SUB_BUCKETS + 2;
    let sub = b % SUB_BUCKETS;
    ((SUB_BUCKETS + sub + 1) << (power - 3)) - 1
}

impl Histogram {
    /// Count `n` occurrences of value `v`.
    pub fn record_n(&self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[bucket_of(v)].fetch_add(n, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
        self.sum.fetch_add(v.saturating_mul(n), Ordering::Relaxed);
    }

    /// Cumulative counts over several histograms at each bound of `bounds` (ascending, each
    /// a power of two, so that it is a bucket boundary and the count is exact: every value
    /// `<= bound - 1` and none above it), then the total count and the sum of the values.
    /// A Prometheus histogram (`le` = bound) reads straight off this.
    pub fn cumulative(hs: &[&Histogram], bounds: &[u64]) -> (Vec<u64>, u64, u64) {
        debug_assert!(bounds.iter().all(|b| b.is_power_of_two()));
        let mut below = vec![0u64; bounds.len()];
        let (mut total, mut sum) = (0, 0);
        for h in hs {
            sum += h.sum.load(Ordering::Relaxed);
            for (b, c) in h.counts.iter().enumerate() {
                let c = c.load(Ordering::Relaxed);
                if c == 0 {
                    continue;
                }
                total += c;
                let high = bucket_high(b);
                for (i, &bound) in bounds.iter().enumerate() {
                    // The top bucket also holds clamped values beyond its high.
                    if high < bound && b < BUCKETS - 1 {
                        below[i] += c;
                    }
                }
            }
        }
        (below, total, sum)
    }

    /// Percentiles (`qs` in 0..=1) over several histograms, plus the count and the maximum.
    pub fn percentiles(hs: &[&Histogram], qs: &[f64]) -> (u64, Vec<u64>, u64) {
        let mut merged = vec![0u64; BUCKETS];
        let mut max = 0;
        for h in hs {
            for (m, c) in merged.iter_mut().zip(h.counts.iter()) {
                *m += c.load(Ordering::Relaxed);
            }
            max = max.max(h.max.load(Ordering::Relaxed));
        }
        let total: u64 = merged.iter().sum();
        let out = qs
            .iter()
            .map(|q| {
                if total == 0 {
                    return 0;
                }
                let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
                let mut seen = 0;
                for (b, c) in merged.iter().enumerate() {
                    seen += c;
                    if seen >= rank {
                        return bucket_high(b).min(max);
                    }
                }
                max
            })
            .collect();
        (total, out, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in 0..100_000u64 {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
            let high = bucket_high(b);
            assert!(high >= v, "{v} in bucket {b} with high {high}");
            assert!(high as f64 <= v as f64 * 1.125 + 1.0, "{v}: {high}");
        }
    }

    #[test]
    fn power_of_two_bounds_are_bucket_boundaries() {
        for k in 0..40 {
            let bound = 1u64 << k;
            assert!(bucket_high(bucket_of(bound - 1)) < bound, "{bound}");
            if bound > 1 {
                assert_ne!(bucket_of(bound - 1), bucket_of(bound), "{bound}");
            }
        }
    }

    #[test]
    fn cumulative_counts_at_power_of_two_bounds() {
        let h = Histogram::default();
        for v in 0..1000 {
            h.record_n(v, 1);
        }
        h.record_n(5000, 3);
        let (below, total, sum) = Histogram::cumulative(&[&h, &h], &[1, 16, 512, 1024, 8192]);
        assert_eq!(below, vec![2, 32, 1024, 2000, 2006]);
        assert_eq!(total, 2006);
        assert_eq!(sum, 2 * (999 * 1000 / 2 + 15_000));
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let h = Histogram::default();
        for v in 1..=1000 {
            h.record_n(v, 1);
        }
        let (n, p, max) = Histogram::percentiles(&[&h], &[0.5, 0.99]);
        assert_eq!((n, max), (1000, 1000));
        assert!((490..=570).contains(&p[0]), "{p:?}");
        assert!((980..=1000).contains(&p[1]), "{p:?}");
    }
}
