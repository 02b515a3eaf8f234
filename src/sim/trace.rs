//! The event trace of a run: one line per event, hashed as it is written (FNV-1a, 64-bit)
//! so that two runs of one seed can be compared bit for bit without keeping the text. The
//! lines are printed only with `--trace` (or kept for a failure report).

use std::fmt::Write as _;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The trace of one run.
pub struct Trace {
    hash: u64,
    lines: u64,
    /// Simulated ms since the start, stamped on every line.
    pub now_ms: u64,
    /// Where lines are printed (`--trace`); dropped after a write error (a closed pipe).
    out: Option<std::io::BufWriter<std::io::Stdout>>,
    /// The last lines, kept for a failure report.
    tail: std::collections::VecDeque<String>,
    tail_max: usize,
    buf: String,
}

impl Trace {
    /// A trace that prints every line to stdout when `print`, and keeps the last `tail_max`.
    pub fn new(print: bool, tail_max: usize) -> Trace {
        Trace {
            hash: FNV_OFFSET,
            lines: 0,
            now_ms: 0,
            out: print.then(|| std::io::BufWriter::new(std::io::stdout())),
            tail: std::collections::VecDeque::new(),
            tail_max,
            buf: String::new(),
        }
    }

    /// Append one event line (the time is prefixed).
    pub fn line(&mut self, args: std::fmt::Arguments<'_>) {
        self.buf.clear();
        let _ = write!(
            self.buf,
            "{:>7}.{:03} ",
            self.now_ms / 1000,
            self.now_ms % 1000
        );
        let _ = self.buf.write_fmt(args);
        for b in self.buf.bytes().chain(std::iter::once(b'\n')) {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
        self.lines += 1;
        if let Some(out) = &mut self.out {
            use std::io::Write as _;
            if writeln!(out, "{}", self.buf).is_err() {
                self.out = None;
            }
        }
        if self.tail_max > 0 {
            if self.tail.len() == self.tail_max {
                self.tail.pop_front();
            }
            self.tail.push_back(self.buf.clone());
        }
    }

    /// The FNV-1a hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Lines written.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The last lines kept.
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }
}

/// `trace!(t, "fmt", args)`: append a line to trace `t`.
macro_rules! trace {
    ($t:expr, $($arg:tt)*) => {
        $t.line(format_args!($($arg)*))
    };
}
pub(crate) use trace;
