//! Counting and telling: per-operation HDR histograms and counters, merged across threads, the
//! progress line, the human summary and the `--json` object (written by hand: no serde).

use crate::proto::{code_name, Code, Outcome, CODE_COUNT};
use crate::workload::{Op, OP_COUNT};
use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// Highest latency a histogram tracks, in ns (larger values are recorded as this).
pub const LATENCY_NS_MAX: u64 = 100_000_000_000;

/// Significant decimal digits kept by the histograms.
pub const LATENCY_SIGFIG: u8 = 3;

/// A latency histogram in nanoseconds.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig
    // <= 5), so creation cannot fail.
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Counters and latencies of one operation kind.
#[derive(Clone)]
pub struct OpStats {
    /// Latency of every successful request, ns.
    pub hist: Histogram<u64>,
    /// Requests answered OK or NOT_FOUND.
    pub ops: u64,
    /// Requests answered with an error status, or lost with their connection.
    pub errors: u64,
    /// Answered NOT_FOUND (a normal miss).
    pub misses: u64,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            hist: new_histogram(),
            ops: 0,
            errors: 0,
            misses: 0,
        }
    }

    fn merge(&mut self, o: &OpStats) {
        // Same bounds everywhere, so adding cannot fail.
        self.hist
            .add(&o.hist)
            .expect("histograms share their bounds");
        self.ops += o.ops;
        self.errors += o.errors;
        self.misses += o.misses;
    }
}

/// Siblings mode: what the causal GETs found (the reads, and the read half of every write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiblingStats {
    /// Causal GETs answered OK or NOT_FOUND.
    pub reads: u64,
    /// Those that found more than one sibling (concurrent writes to the key).
    pub reads_with_siblings: u64,
    /// The most siblings one read found.
    pub max_siblings: u64,
}

/// Everything one phase counted.
#[derive(Clone)]
pub struct Stats {
    /// Per operation, indexed by `Op as usize`.
    pub per_op: Vec<OpStats>,
    /// Errors by code.
    pub codes: Vec<u64>,
    /// Siblings mode: the causal reads.
    pub siblings: SiblingStats,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Empty stats.
    pub fn new() -> Stats {
        Stats {
            per_op: (0..OP_COUNT).map(|_| OpStats::new()).collect(),
            codes: vec![0; CODE_COUNT],
            siblings: SiblingStats::default(),
        }
    }

    /// Count a causal GET that found `count` live siblings (0: NOT_FOUND).
    #[inline]
    pub fn causal_read(&mut self, count: usize) {
        let s = &mut self.siblings;
        s.reads += 1;
        if count > 1 {
            s.reads_with_siblings += 1;
        }
        s.max_siblings = s.max_siblings.max(count as u64);
    }

    /// Count a reply. Only successes (OK, NOT_FOUND) are operations with a latency: a server
    /// that answers errors fast must not look fast.
    #[inline]
    pub fn answered(&mut self, op: Op, outcome: Outcome, latency_ns: u64) {
        let s = &mut self.per_op[op as usize];
        match outcome {
            Outcome::Ok | Outcome::NotFound => {
                s.ops += 1;
                s.hist.saturating_record(latency_ns.max(1));
                if outcome == Outcome::NotFound {
                    s.misses += 1;
                }
            }
            Outcome::Error(code) => {
                s.errors += 1;
                self.codes[code as usize] += 1;
            }
        }
    }

    /// Count a request that got no reply.
    #[inline]
    pub fn unanswered(&mut self, op: Op, code: Code) {
        self.per_op[op as usize].errors += 1;
        self.codes[code as usize] += 1;
    }

    /// Count an error that is not a request (a failed connect).
    pub fn event(&mut self, code: Code) {
        self.codes[code as usize] += 1;
    }

    /// Add another thread's stats.
    pub fn merge(&mut self, o: &Stats) {
        for (a, b) in self.per_op.iter_mut().zip(&o.per_op) {
            a.merge(b);
        }
        for (a, b) in self.codes.iter_mut().zip(&o.codes) {
            *a += b;
        }
        self.siblings.reads += o.siblings.reads;
        self.siblings.reads_with_siblings += o.siblings.reads_with_siblings;
        self.siblings.max_siblings = self.siblings.max_siblings.max(o.siblings.max_siblings);
    }

    /// Writes refused because they would leave too many siblings (siblings mode).
    pub fn too_many_siblings(&self) -> u64 {
        self.codes[dkv::protocol::Status::TooManySiblings as usize]
    }

    /// All operations together.
    pub fn total(&self) -> OpStats {
        let mut t = OpStats::new();
        for s in &self.per_op {
            t.merge(s);
        }
        t
    }

    /// Errors of any kind (request errors plus failed connects).
    pub fn error_count(&self) -> u64 {
        self.codes.iter().sum()
    }

    /// (name, count) of every code seen, sorted by name.
    pub fn errors_by_status(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .codes
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (code_name(c as Code), *n))
            .collect();
        v.sort();
        v
    }
}

/// Microseconds of a ns figure, as printed.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Percentiles of one histogram, in ns: p50, p90, p99, p99.9, max.
pub fn percentiles(h: &Histogram<u64>) -> [u64; 5] {
    if h.is_empty() {
        return [0; 5];
    }
    [
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.90),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    ]
}

/// A latency for humans: µs below 10 ms, else ms.
pub fn human_latency(ns: u64) -> String {
    if ns < 10_000_000 {
        format!("{:.0}us", us(ns))
    } else {
        format!("{:.1}ms", ns as f64 / 1e6)
    }
}

/// Results of `--check`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckResult {
    /// Writes acknowledged with OK (preload included).
    pub acknowledged_writes: u64,
    /// Keys whose read-back lost an acknowledged write.
    pub lost: u64,
    /// Reads during the run older than a write acknowledged before they began.
    pub stale_reads: u64,
    /// Keys read back.
    pub keys_checked: u64,
    /// Read-backs that failed (no verdict possible).
    pub readback_errors: u64,
}

/// What a whole run measured, for the summary and the JSON.
pub struct RunReport<'a> {
    /// Run description (protocol, targets, options) as JSON key/value pairs already encoded.
    pub config_json: String,
    /// One-line human description of the run.
    pub config_human: String,
    /// Measured phase's stats.
    pub stats: &'a Stats,
    /// Measured phase's wall time, s.
    pub elapsed_s: f64,
    /// `--check` results.
    pub check: Option<CheckResult>,
    /// The workload spoke the causal protocol (`--conflicts siblings`): report the siblings.
    pub siblings: bool,
}

/// Escape a string for JSON.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_op(s: &OpStats, errors: u64, elapsed_s: f64) -> String {
    let p = percentiles(&s.hist);
    format!(
        "\"ops\":{},\"ops_per_sec\":{:.1},\"errors\":{},\"misses\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}",
        s.ops,
        s.ops as f64 / elapsed_s,
        errors,
        s.misses,
        us(p[0]),
        us(p[1]),
        us(p[2]),
        us(p[3]),
        us(p[4])
    )
}

impl RunReport<'_> {
    /// The `--json` object (one line).
    pub fn json(&self) -> String {
        let elapsed = self.elapsed_s.max(1e-9);
        let total = self.stats.total();
        let mut out = String::from("{");
        out.push_str(&self.config_json);
        let _ = write!(out, ",\"elapsed_s\":{:.3},", self.elapsed_s);
        // "errors" overall counts failed connects too, so that it equals the sum of
        // errors_by_status.
        out.push_str(&json_op(&total, self.stats.error_count(), elapsed));
        out.push_str(",\"errors_by_status\":{");
        let by = self.stats.errors_by_status();
        for (i, (name, n)) in by.iter().enumerate() {
            let _ = write!(
                out,
                "{}{}:{}",
                if i > 0 { "," } else { "" },
                json_str(name),
                n
            );
        }
        out.push_str("},\"per_op\":{");
        let mut first = true;
        for op in Op::ALL {
            let s = &self.stats.per_op[op as usize];
            if s.ops == 0 && s.errors == 0 {
                continue;
            }
            let _ = write!(
                out,
                "{}\"{}\":{{{}}}",
                if first { "" } else { "," },
                op.name(),
                json_op(s, s.errors, elapsed)
            );
            first = false;
        }
        out.push('}');
        if self.siblings {
            let s = self.stats.siblings;
            let _ = write!(
                out,
                ",\"causal_reads\":{},\"reads_with_siblings\":{},\"max_siblings\":{},\"too_many_siblings\":{}",
                s.reads,
                s.reads_with_siblings,
                s.max_siblings,
                self.stats.too_many_siblings()
            );
        }
        if let Some(c) = self.check {
            let _ = write!(
                out,
                ",\"check\":true,\"acknowledged_writes\":{},\"lost\":{},\"stale_reads\":{},\"keys_checked\":{},\"readback_errors\":{}",
                c.acknowledged_writes, c.lost, c.stale_reads, c.keys_checked, c.readback_errors
            );
        }
        out.push('}');
        out
    }

    /// The human summary (several lines).
    pub fn human(&self) -> String {
        let elapsed = self.elapsed_s.max(1e-9);
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.config_human);
        let _ = writeln!(
            out,
            "{:<7}{:>11}{:>12}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "op", "ops", "ops/s", "p50", "p90", "p99", "p99.9", "max", "errors", "misses"
        );
        let row = |out: &mut String, name: &str, s: &OpStats| {
            let p = percentiles(&s.hist);
            let _ = writeln!(
                out,
                "{:<7}{:>11}{:>12.0}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
                name,
                s.ops,
                s.ops as f64 / elapsed,
                human_latency(p[0]),
                human_latency(p[1]),
                human_latency(p[2]),
                human_latency(p[3]),
                human_latency(p[4]),
                s.errors,
                s.misses
            );
        };
        for op in Op::ALL {
            let s = &self.stats.per_op[op as usize];
            if s.ops > 0 || s.errors > 0 {
                row(&mut out, op.name(), s);
            }
        }
        row(&mut out, "all", &self.stats.total());
        let by = self.stats.errors_by_status();
        if by.is_empty() {
            let _ = writeln!(out, "errors by status: none");
        } else {
            let list: Vec<String> = by.iter().map(|(n, c)| format!("{n} {c}")).collect();
            let _ = writeln!(out, "errors by status: {}", list.join(", "));
        }
        if self.siblings {
            let s = self.stats.siblings;
            let _ = writeln!(
                out,
                "siblings: {} causal reads, {} found more than one ({:.2}%), at most {}; {} writes refused TOO_MANY_SIBLINGS",
                s.reads,
                s.reads_with_siblings,
                100.0 * s.reads_with_siblings as f64 / s.reads.max(1) as f64,
                s.max_siblings,
                self.stats.too_many_siblings()
            );
        }
        if let Some(c) = self.check {
            let _ = writeln!(
                out,
                "check: acknowledged_writes {}, keys checked {}, lost {}, stale_reads {}, readback_errors {}{}",
                c.acknowledged_writes,
                c.keys_checked,
                c.lost,
                c.stale_reads,
                c.readback_errors,
                if c.lost > 0 { "  <-- ACKNOWLEDGED WRITES LOST" } else { "" }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::CODE_CONNECTION_LOST;

    #[test]
    fn json_has_the_promised_fields() {
        let mut s = Stats::new();
        s.answered(Op::Get, Outcome::Ok, 1_000);
        s.answered(Op::Get, Outcome::NotFound, 3_000);
        s.answered(Op::Put, Outcome::Error(0x20), 2_000);
        s.unanswered(Op::Put, CODE_CONNECTION_LOST);
        let r = RunReport {
            config_json: "\"protocol\":\"dkv\"".into(),
            config_human: "x".into(),
            stats: &s,
            elapsed_s: 1.0,
            check: Some(CheckResult::default()),
            siblings: false,
        };
        let j = r.json();
        for field in [
            "\"ops\":2,",
            "\"ops_per_sec\":2.0",
            "\"errors\":2,",
            "\"p50_us\":",
            "\"p90_us\":",
            "\"p99_us\":",
            "\"p999_us\":",
            "\"max_us\":3.0",
            "\"errors_by_status\":{\"CONNECTION_LOST\":1,\"OVERLOADED\":1}",
            "\"get\":{\"ops\":2,",
            "\"put\":{\"ops\":0,\"ops_per_sec\":0.0,\"errors\":2,",
            "\"lost\":0",
        ] {
            assert!(j.contains(field), "{field} missing from {j}");
        }
        assert!(r.human().contains("OVERLOADED 1"));
        assert!(!j.contains("siblings"), "{j}");
        assert_eq!(json_str("a\"b\n"), "\"a\\\"b\\u000a\"");
    }

    #[test]
    fn siblings_figures_merge_and_print() {
        let mut a = Stats::new();
        a.causal_read(1);
        a.causal_read(3);
        a.answered(Op::Put, Outcome::Error(0x29), 0);
        let mut b = Stats::new();
        b.causal_read(0);
        b.causal_read(2);
        a.merge(&b);
        assert_eq!(
            a.siblings,
            SiblingStats {
                reads: 4,
                reads_with_siblings: 2,
                max_siblings: 3
            }
        );
        let r = RunReport {
            config_json: "\"protocol\":\"dkv\"".into(),
            config_human: "x".into(),
            stats: &a,
            elapsed_s: 1.0,
            check: None,
            siblings: true,
        };
        let j = r.json();
        for field in [
            "\"causal_reads\":4,",
            "\"reads_with_siblings\":2,",
            "\"max_siblings\":3,",
            "\"too_many_siblings\":1",
            "\"TOO_MANY_SIBLINGS\":1",
        ] {
            assert!(j.contains(field), "{field} missing from {j}");
        }
        let h = r.human();
        assert!(
            h.contains("siblings: 4 causal reads, 2 found more than one (50.00%), at most 3; 1 writes refused TOO_MANY_SIBLINGS"),
            "{h}"
        );
    }
}
