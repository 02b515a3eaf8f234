//! Measure RAM per key of the keydir and of a whole `LogStore`, start-up time with and
//! without hint files, and space before/after compaction. Run in release:
//!
//! ```text
//! cargo run --release --example keydir_mem -- keydir 1000000
//! cargo run --release --example keydir_mem -- store 10000000 /path/to/empty/dir
//! cargo run --release --example keydir_mem -- open /path/to/dir
//! ```
//!
//! Keys are 16 bytes, values 100 bytes. RAM is the anonymous RSS delta (`RssAnon` in
//! /proc/self/status) divided by the number of keys.

use dkv::storage::keydir::{KeyDir, Loc};
use dkv::storage::logstore::{LogConfig, LogStore};
use dkv::storage::vfs::RealVfs;
use dkv::storage::{Store, Write};
use dkv::version::Version;
use std::path::Path;
use std::time::Instant;

fn rss_anon_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("RssAnon:") {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .expect("RssAnon in kB");
            return kb * 1024;
        }
    }
    panic!("no RssAnon in /proc/self/status");
}

/// The i-th 16-byte key.
fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_be_bytes());
    k[8..].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    k
}

fn keydir(n: u64) {
    let before = rss_anon_bytes();
    let mut kd = KeyDir::new();
    let t = Instant::now();
    for i in 0..n {
        let loc = Loc {
            version: i + 1,
            segment: (i / 500_000) as u32,
            offset: (i % 500_000) as u32 * 143,
            value_len: Some(100),
            expires_at_s: 0,
            causal: false,
        };
        kd.insert(&key(i), loc).expect("arena has room");
    }
    let took = t.elapsed();
    let after = rss_anon_bytes();
    let delta = after - before;
    println!(
        "keydir: {n} keys of 16 bytes: RssAnon delta {} MiB = {:.1} bytes/key ({:.1} beyond the key); \
         keydir.memory_bytes {:.1} bytes/key; insert {:.0} ns/key",
        delta / (1 << 20),
        delta as f64 / n as f64,
        delta as f64 / n as f64 - 16.0,
        kd.memory_bytes() as f64 / n as f64,
        took.as_nanos() as f64 / n as f64
    );
    assert_eq!(kd.len() as u64, n);
}

fn config() -> LogConfig {
    LogConfig {
        compaction_dead_bytes_min: 0,
        ..LogConfig::default()
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn store(n: u64, dir: &Path) {
    assert!(
        std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none()),
        "{} must be empty or absent",
        dir.display()
    );
    let value = [b'v'; 100];
    let before = rss_anon_bytes();
    let (mut s, _) = LogStore::open(RealVfs, dir, config()).unwrap();
    let t = Instant::now();
    for i in 0..n {
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
    let took = t.elapsed();
    let delta = rss_anon_bytes() - before;
    println!(
        "store: {n} keys (16 B keys, 100 B values): RssAnon delta {} MiB = {:.1} bytes/key; \
         keydir {:.1} bytes/key; load {:.2} s ({:.0} writes/s, sync=never); disk {} MiB",
        delta / (1 << 20),
        delta as f64 / n as f64,
        s.keydir_bytes() as f64 / n as f64,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        dir_bytes(dir) / (1 << 20)
    );
    drop(s);

    let t = Instant::now();
    let (s, report) = LogStore::open(RealVfs, dir, config()).unwrap();
    println!(
        "start-up with hints: {:.2} s ({} segments from hints, {} scanned, {} keys)",
        t.elapsed().as_secs_f64(),
        report.segments_from_hints,
        report.segments_scanned,
        report.keys
    );
    drop(s);
    // Without hints: set them aside, open, put them back.
    let aside = dir.with_extension("hints-aside");
    std::fs::create_dir_all(&aside).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "hint") {
            std::fs::rename(&p, aside.join(p.file_name().unwrap())).unwrap();
        }
    }
    let t = Instant::now();
    let (mut s, report) = LogStore::open(RealVfs, dir, config()).unwrap();
    println!(
        "start-up without hints: {:.2} s ({} segments scanned, {} keys)",
        t.elapsed().as_secs_f64(),
        report.segments_scanned,
        report.keys
    );
    let _ = std::fs::remove_dir_all(&aside);

    // Overwrite every key 4 more times (5 versions each), then compact.
    for round in 1..5u64 {
        for i in 0..n {
            s.apply(Write {
                key: &key(i),
                value: Some(&value),
                version: Version(round * n + i + 1),
                expires_at_ms: 0,
                causal: false,
            })
            .unwrap();
        }
    }
    s.sync().unwrap();
    let disk_before = dir_bytes(dir);
    let t = Instant::now();
    let mut steps = 0u64;
    while s.maintenance(0, 10_000).unwrap() {
        steps += 1;
    }
    let mut reclaimed = 0;
    s.stats(&mut |name, v| {
        if name == "storage_bytes_reclaimed" {
            reclaimed = v;
        }
    });
    println!(
        "compaction after 5 writes per key: disk {} MiB -> {} MiB ({} MiB reclaimed) in {:.2} s, \
         {steps} maintenance calls of 10000 records",
        disk_before / (1 << 20),
        dir_bytes(dir) / (1 << 20),
        reclaimed / (1 << 20),
        t.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    match args.get(1).map(String::as_str) {
        Some("keydir") | None => keydir(n),
        Some("store") => store(
            n,
            Path::new(args.get(3).expect("store needs a directory argument")),
        ),
        Some("open") => {
            // Time a start-up of an existing directory (argument 2 is the directory).
            let dir = Path::new(args.get(2).expect("open needs a directory argument"));
            let before = rss_anon_bytes();
            let t = Instant::now();
            let (s, report) = LogStore::open(RealVfs, dir, config()).unwrap();
            println!(
                "open: {:.2} s, {} keys, {} from hints, {} scanned, RssAnon delta {:.1} bytes/key",
                t.elapsed().as_secs_f64(),
                report.keys,
                report.segments_from_hints,
                report.segments_scanned,
                (rss_anon_bytes() - before) as f64 / report.keys.max(1) as f64
            );
            drop(s);
        }
        Some(other) => panic!("unknown mode {other}; use keydir, store or open"),
    }
}
