//! Storage micro-benchmarks (no harness): keydir insert and lookup, log append (no sync and
//! with a group-commit sync every 64 writes), and point reads through the page cache.
//! Each figure is the median of several runs.
//!
//! ```text
//! cargo bench --bench storage            # DKV_BENCH_KEYS=<n> to change the key count
//! ```

use dkv::storage::keydir::{KeyDir, Loc};
use dkv::storage::logstore::{LogConfig, LogStore};
use dkv::storage::vfs::RealVfs;
use dkv::storage::{Store, Write};
use dkv::version::Version;
use std::hint::black_box;
use std::time::Instant;

const RUNS: usize = 5;

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_be_bytes());
    k[8..].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    k
}

fn loc(i: u64) -> Loc {
    Loc {
        version: i + 1,
        segment: 1,
        offset: i as u32,
        value_len: Some(100),
        expires_at_s: 0,
        causal: false,
    }
}

/// Median over `RUNS` of `f()`'s nanoseconds per operation (`f` returns the op count).
fn median_ns(mut f: impl FnMut() -> u64) -> f64 {
    let mut v: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let n = f();
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[RUNS / 2]
}

fn main() {
    let n: u64 = std::env::var("DKV_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);

    let ns = median_ns(|| {
        let mut kd = KeyDir::new();
        for i in 0..n {
            kd.insert(&key(i), loc(i)).expect("room");
        }
        black_box(&kd);
        n
    });
    println!("keydir insert ({n} new 16 B keys, growth included): {ns:.0} ns/op");

    let mut kd = KeyDir::new();
    for i in 0..n {
        kd.insert(&key(i), loc(i)).expect("room");
    }
    let ns = median_ns(|| {
        let mut x = 1u64;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            black_box(kd.get(&key(x % n)));
        }
        n
    });
    println!("keydir lookup hit ({n} keys, random order): {ns:.0} ns/op");
    let ns = median_ns(|| {
        for i in 0..n {
            black_box(kd.get(&key(n + i)));
        }
        n
    });
    println!("keydir lookup miss: {ns:.0} ns/op");
    let ns = median_ns(|| {
        for i in 0..n {
            kd.insert(&key(i), loc(i + 1)).expect("present");
        }
        n
    });
    println!("keydir update of a present key: {ns:.0} ns/op");
    drop(kd);

    let writes = (n / 4).max(1000);
    let value = [b'v'; 100];
    let base = std::env::temp_dir().join(format!("dkv-bench-storage-{}", std::process::id()));
    for (label, every) in [
        ("no sync (buffered, one write per 256 KiB)", 0u64),
        ("sync every write", 1),
        ("sync every 64 writes (group commit)", 64),
    ] {
        let mut run = 0;
        let ns = median_ns(|| {
            run += 1;
            let dir = base.join(format!("{every}-{run}"));
            let (mut s, _) = LogStore::open(RealVfs, &dir, LogConfig::default()).unwrap();
            let w = match every {
                0 => writes,
                1 => (writes / 200).max(100),
                _ => writes / 20,
            };
            for i in 0..w {
                s.apply(Write {
                    key: &key(i),
                    value: Some(&value),
                    version: Version(i + 1),
                    expires_at_ms: 0,
                    causal: false,
                })
                .unwrap();
                if every != 0 && i % every == every - 1 {
                    s.sync().unwrap();
                }
            }
            s.sync().unwrap();
            drop(s);
            let _ = std::fs::remove_dir_all(&dir);
            w
        });
        println!("log append, 16 B key + 100 B value, {label}: {ns:.0} ns/op");
    }

    let dir = base.join("reads");
    let (mut s, _) = LogStore::open(RealVfs, &dir, LogConfig::default()).unwrap();
    for i in 0..writes {
        s.apply(Write {
            key: &key(i),
            value: Some(&value),
            version: Version(i + 1),
            expires_at_ms: 0,
            causal: false,
        })
        .unwrap();
    }
    s.sync().unwrap();
    let ns = median_ns(|| {
        let mut x = 1u64;
        for _ in 0..writes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            black_box(s.get(&key(x % writes)).unwrap());
        }
        writes
    });
    println!("log get (memory map + CRC check, page cache warm, {writes} keys): {ns:.0} ns/op");
    drop(s);
    let _ = std::fs::remove_dir_all(&base);
}
