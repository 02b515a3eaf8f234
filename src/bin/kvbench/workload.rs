//! What to send: the seeded PRNG, the key distributions (uniform, YCSB's scrambled zipfian,
//! latest), the operation mix, and the key and value bytes.
//!
//! Everything here is computed without allocating per request: keys are formatted straight into
//! the connection's output buffer, values are slices of one pre-generated pool.
//!
//! Key `i` of a run with `--key-size S` is the byte `k` followed by `i` in decimal, zero-padded to
//! `S - 1` digits (`k000000000000042` for S = 16), so every key has exactly S bytes, is valid in
//! all three protocols (printable, no spaces) and can be parsed back for `--check`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of slack in the value pool: a value starts at a random offset below this, so two
/// values of the same length usually differ.
pub const VALUE_POOL_SLACK: usize = 4096;

/// Largest zipfian key space accepted: computing zeta(n) costs one `powf` per key.
pub const ZIPFIAN_ITEMS_MAX: u64 = 1 << 30;

/// A small, fast, seeded PRNG (xorshift64*, seeded through splitmix64 so that nearby seeds give
/// unrelated streams). Not for cryptography; plenty for load generation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`; `stream` separates the threads of one run.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift must never be seeded with 0: it would stay 0 forever.
        Rng(z | 1)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for our ranges).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A float in `[0, 1)`.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// FNV-1a over the 8 bytes of `x`: YCSB's scrambling hash, so that the hottest zipfian ranks
/// land all over the key space instead of on keys 0, 1, 2...
#[inline]
pub fn fnv1a64(x: u64) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases"): rank 0 is the most popular, rank r has weight 1 / (r+1)^theta.
#[derive(Clone, Copy, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    zetan: f64,
    alpha: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `items` ranks with exponent `theta` in (0, 1).
    pub fn new(items: u64, theta: f64) -> Zipfian {
        assert!(
            (1..=ZIPFIAN_ITEMS_MAX).contains(&items),
            "zipfian item count"
        );
        assert!(theta > 0.0 && theta < 1.0, "zipfian theta in (0, 1)");
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(items);
        let zeta2 = zeta(2.min(items));
        let alpha = 1.0 / (1.0 - theta);
        let eta = if items < 2 {
            0.0
        } else {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        Zipfian {
            items,
            theta,
            zetan,
            alpha,
            eta,
        }
    }

    /// A rank in `0..items`.
    #[inline]
    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let r = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.items - 1)
    }
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB scrambled zipfian with this theta.
    Zipfian(f64),
    /// YCSB "latest": zipfian over recency, the most recently inserted keys are hottest.
    Latest(f64),
}

impl Distribution {
    /// Parse `uniform`, `zipfian`, `zipfian:THETA`, `latest`, `latest:THETA`.
    pub fn parse(s: &str) -> Result<Distribution, String> {
        let (name, theta) = match s.split_once(':') {
            Some((n, t)) => {
                let t: f64 = t
                    .parse()
                    .map_err(|_| format!("bad zipfian constant {t:?} in --distribution"))?;
                if !(t > 0.0 && t < 1.0) {
                    return Err(format!("zipfian constant {t} must be in (0, 1)"));
                }
                (n, Some(t))
            }
            None => (s, None),
        };
        match (name.to_ascii_lowercase().as_str(), theta) {
            ("uniform", None) => Ok(Distribution::Uniform),
            ("zipfian", t) => Ok(Distribution::Zipfian(t.unwrap_or(0.99))),
            ("latest", t) => Ok(Distribution::Latest(t.unwrap_or(0.99))),
            _ => Err(format!(
                "unknown --distribution {s:?} (uniform, zipfian[:THETA], latest[:THETA])"
            )),
        }
    }

    /// Name for reports.
    pub fn describe(&self) -> String {
        match self {
            Distribution::Uniform => "uniform".into(),
            Distribution::Zipfian(t) => format!("zipfian:{t}"),
            Distribution::Latest(t) => format!("latest:{t}"),
        }
    }
}

/// The operations kvbench issues. `Rmw` is a GET followed by a PUT of the same key (YCSB F),
/// timed from the GET's send to the PUT's reply; `Insert` is a PUT of a new key past the key
/// space (YCSB D).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Read.
    Get = 0,
    /// Write an existing key.
    Put = 1,
    /// Delete.
    Del = 2,
    /// Read-modify-write.
    Rmw = 3,
    /// Write a new key.
    Insert = 4,
}

/// Number of [`Op`] kinds.
pub const OP_COUNT: usize = 5;

impl Op {
    /// All kinds, in index order.
    pub const ALL: [Op; OP_COUNT] = [Op::Get, Op::Put, Op::Del, Op::Rmw, Op::Insert];

    /// Lower-case name used in `--mix` and the reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Del => "del",
            Op::Rmw => "rmw",
            Op::Insert => "insert",
        }
    }
}

/// Relative weights of the operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Weight per [`Op`], indexed by `op as usize`.
    pub weights: [u32; OP_COUNT],
}

impl Mix {
    /// Parse `get=90,put=10,del=0` (also `rmw=` and `insert=`; missing ops weigh 0).
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut weights = [0u32; OP_COUNT];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix entry {part:?} is not NAME=WEIGHT"))?;
            let op = Op::ALL
                .iter()
                .find(|o| o.name() == name.trim().to_ascii_lowercase())
                .ok_or_else(|| {
                    format!("unknown operation {name:?} in --mix (get, put, del, rmw, insert)")
                })?;
            weights[*op as usize] = w
                .trim()
                .parse()
                .map_err(|_| format!("bad weight {w:?} in --mix"))?;
        }
        let mix = Mix { weights };
        if mix.total() == 0 {
            return Err("--mix has no operation with a non-zero weight".into());
        }
        Ok(mix)
    }

    fn total(&self) -> u64 {
        self.weights.iter().map(|w| *w as u64).sum()
    }

    /// Draw an operation.
    #[inline]
    pub fn pick(&self, rng: &mut Rng) -> Op {
        let mut x = rng.below(self.total());
        for op in Op::ALL {
            let w = self.weights[op as usize] as u64;
            if x < w {
                return op;
            }
            x -= w;
        }
        unreachable!("x < total, so some weight covers it")
    }

    /// `get=90,put=10` style text of the non-zero weights.
    pub fn describe(&self) -> String {
        Op::ALL
            .iter()
            .filter(|o| self.weights[**o as usize] > 0)
            .map(|o| format!("{}={}", o.name(), self.weights[*o as usize]))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The YCSB core workloads kvbench can run (E, scans, has no equivalent in a key-value API).
pub fn ycsb(name: &str) -> Result<(Mix, Distribution), String> {
    let z = Distribution::Zipfian(0.99);
    let mix = |g, p, r, i| Mix {
        weights: [g, p, 0, r, i],
    };
    match name.to_ascii_lowercase().as_str() {
        "a" => Ok((mix(50, 50, 0, 0), z)),
        "b" => Ok((mix(95, 5, 0, 0), z)),
        "c" => Ok((mix(100, 0, 0, 0), z)),
        "d" => Ok((mix(95, 0, 0, 5), Distribution::Latest(0.99))),
        "f" => Ok((mix(50, 0, 50, 0), z)),
        _ => Err(format!("unknown --workload {name:?} (a, b, c, d, f)")),
    }
}

/// Picks keys. Shared read-only by all threads except the insert counter.
#[derive(Debug)]
pub struct KeyChooser {
    /// Size of the initial key space.
    pub keys: u64,
    dist: Distribution,
    zipf: Option<Zipfian>,
    /// Next key index an insert writes (starts at `keys`; shared by all threads).
    pub next_insert: AtomicU64,
}

impl KeyChooser {
    /// A chooser over `keys` keys (zeta is computed once here, not per thread).
    pub fn new(keys: u64, dist: Distribution) -> KeyChooser {
        let zipf = match dist {
            Distribution::Uniform => None,
            Distribution::Zipfian(t) | Distribution::Latest(t) => Some(Zipfian::new(keys, t)),
        };
        KeyChooser {
            keys,
            dist,
            zipf,
            next_insert: AtomicU64::new(keys),
        }
    }

    /// A key index to read or update.
    #[inline]
    pub fn existing(&self, rng: &mut Rng) -> u64 {
        match (self.dist, &self.zipf) {
            (Distribution::Zipfian(_), Some(z)) => fnv1a64(z.next(rng)) % self.keys,
            (Distribution::Latest(_), Some(z)) => {
                let newest = self.next_insert.load(Ordering::Relaxed) - 1;
                newest - z.next(rng).min(newest)
            }
            _ => rng.below(self.keys),
        }
    }

    /// A fresh key index for an insert.
    #[inline]
    pub fn insert(&self) -> u64 {
        self.next_insert.fetch_add(1, Ordering::Relaxed)
    }
}

/// Decimal digits of `n` (at least 1).
pub fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Append key `index` as exactly `size` bytes: `k` then zero-padded decimal. The caller has
/// checked that `size >= 1 + digits(index)`.
#[inline]
pub fn put_key(out: &mut Vec<u8>, index: u64, size: usize) {
    assert!(size > digits(index), "key size too small for index {index}");
    let start = out.len();
    out.resize(start + size, b'0');
    out[start] = b'k';
    let mut n = index;
    let mut i = start + size - 1;
    loop {
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
        i -= 1;
    }
}

/// Parse a key written by [`put_key`] back to its index (tests: keys are reversible).
#[cfg(test)]
fn parse_key(key: &[u8]) -> Option<u64> {
    let digits = key.strip_prefix(b"k")?;
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    Some(n)
}

/// Value sizes: fixed or uniform in an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueSize {
    /// Smallest value, bytes.
    pub min: usize,
    /// Largest value, bytes.
    pub max: usize,
}

impl ValueSize {
    /// Parse `N` or `MIN-MAX`.
    pub fn parse(s: &str) -> Result<ValueSize, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad --value-size {s:?}"))
        };
        let v = match s.split_once('-') {
            Some((a, b)) => ValueSize {
                min: num(a)?,
                max: num(b)?,
            },
            None => {
                let n = num(s)?;
                ValueSize { min: n, max: n }
            }
        };
        if v.min > v.max {
            return Err(format!("--value-size {s:?}: MIN is larger than MAX"));
        }
        Ok(v)
    }

    /// Draw a length.
    #[inline]
    pub fn pick(&self, rng: &mut Rng) -> usize {
        if self.min == self.max {
            self.min
        } else {
            self.min + rng.below((self.max - self.min + 1) as u64) as usize
        }
    }
}

/// Printable random bytes that values are sliced from.
pub fn value_pool(max: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = Rng::new(seed, 0xDA7A);
    (0..max + VALUE_POOL_SLACK)
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_at_fixed_size() {
        let mut out = Vec::new();
        put_key(&mut out, 42, 16);
        assert_eq!(out, b"k000000000000042");
        assert_eq!(parse_key(&out), Some(42));
        out.clear();
        put_key(&mut out, 0, 2);
        assert_eq!(out, b"k0");
        assert_eq!(parse_key(b"x12"), None);
        assert_eq!(parse_key(b"k1a"), None);
    }

    #[test]
    fn mix_and_workloads_parse() {
        let m = Mix::parse("get=90,put=10,del=0").unwrap();
        assert_eq!(m.weights, [90, 10, 0, 0, 0]);
        assert_eq!(m.describe(), "get=90,put=10");
        assert!(Mix::parse("get=0").is_err());
        assert!(Mix::parse("scan=1").is_err());
        assert!(ycsb("e").is_err());
        let mut rng = Rng::new(1, 0);
        let mut counts = [0u32; OP_COUNT];
        for _ in 0..10_000 {
            counts[m.pick(&mut rng) as usize] += 1;
        }
        assert!(counts[0] > 8500 && counts[0] < 9500, "{counts:?}");
        assert_eq!(counts[2], 0);
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let z = Zipfian::new(1000, 0.99);
        let mut rng = Rng::new(7, 0);
        let mut hits0 = 0;
        for _ in 0..100_000 {
            let r = z.next(&mut rng);
            assert!(r < 1000);
            if r == 0 {
                hits0 += 1;
            }
        }
        // Rank 0 weighs 1/zeta(1000, 0.99), about 13%; uniform would give 0.1%.
        assert!(hits0 > 8_000 && hits0 < 20_000, "{hits0}");
    }

    #[test]
    fn latest_prefers_new_keys() {
        let c = KeyChooser::new(1000, Distribution::Latest(0.99));
        for _ in 0..10 {
            c.insert();
        }
        let mut rng = Rng::new(3, 0);
        let newest = (0..10_000).filter(|_| c.existing(&mut rng) == 1009).count();
        assert!(newest > 800, "{newest}");
    }

    #[test]
    fn value_sizes_parse() {
        assert_eq!(
            ValueSize::parse("100").unwrap(),
            ValueSize { min: 100, max: 100 }
        );
        assert_eq!(
            ValueSize::parse("10-20").unwrap(),
            ValueSize { min: 10, max: 20 }
        );
        assert!(ValueSize::parse("20-10").is_err());
        assert!(Distribution::parse("zipfian:1.5").is_err());
        assert!(matches!(
            Distribution::parse("zipfian").unwrap(),
            Distribution::Zipfian(t) if t == 0.99
        ));
    }
}
