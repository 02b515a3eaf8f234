//! Seeded randomized model test of the log store against a `BTreeMap`.
//!
//! Random PUT (plain or causal: the record's causal flag must come back with it) / DELETE /
//! PUT-with-TTL (virtual clock) / stale writes / flush (the end of an
//! event-loop turn: the buffered records are written, or undone if that fails) / sync (the
//! "ack" point) / compaction steps / tombstone horizon moves / disk-full and fsync-failure injection /
//! crash (unsynced bytes dropped, or a torn prefix kept) and reopen. After every crash each
//! key must read as what was acknowledged (synced) or as one of the writes issued after that
//! — never an older value, never garbage — and recovery must report no corruption.
//!
//! `DKV_SEED=<n>` runs one seed; `DKV_SEEDS=<count>` changes how many seeds run (default
//! below; the longer mode is e.g. `DKV_SEEDS=5000`); `DKV_SEED_BASE=<n>` starts the seeds
//! at n+1 (to explore new ones); `DKV_OPS=<n>` the operations per seed.

use dkv::storage::logstore::{LogConfig, LogStore};
use dkv::storage::vfs::{CrashMode, MemVfs};
use dkv::storage::{Applied, Store, Stored, Write};
use dkv::version::Version;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const SEEDS_DEFAULT: u64 = 400;
const OPS_DEFAULT: usize = 1500;

/// The crate's seeded PRNG (`cluster::rng`, SplitMix64), with the draws the model makes.
struct Rng(dkv::cluster::rng::SplitMix64);
impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(dkv::cluster::rng::SplitMix64::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What a reader can observe of a record at `now`: the live value (with its version and
/// causal flag), or nothing (absent, tombstone, expired).
fn observe(r: Option<&Stored>, now: u64) -> Option<(u64, Vec<u8>, bool)> {
    r.filter(|s| s.is_live(now)).map(|s| {
        (
            s.version.0,
            s.value.clone().expect("live has a value"),
            s.causal,
        )
    })
}

struct Run {
    rng: Rng,
    vfs: MemVfs,
    config: LogConfig,
    store: LogStore<MemVfs>,
    now: u64,
    next_version: u64,
    horizon: u64,
    /// The store's state as the model sees it (newest record per key).
    model: BTreeMap<Vec<u8>, Stored>,
    /// The state at the last successful sync (what was acknowledged).
    acked: BTreeMap<Vec<u8>, Stored>,
    /// Writes stored since the last successful sync, per key.
    pending: BTreeMap<Vec<u8>, Vec<Stored>>,
    /// Writes applied since the last flush, with the record each replaced in the model: a
    /// failed flush undoes those it did not write (a segment roll or a full buffer writes
    /// some early), so each key then holds its record from before them or one of them.
    unflushed: Vec<(Vec<u8>, Option<Stored>)>,
    keys: Vec<Vec<u8>>,
    faults_armed: bool,
    /// The disk has a capacity the store sees (it survives crashes: refusals stay expected).
    capacity_set: bool,
    log: Vec<String>,
    tally: Tally,
}

/// What the runs exercised: checked at the end so the test cannot pass vacuously.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    compactions: u64,
    keys_forgotten: u64,
    truncations: u64,
    leftovers_removed: u64,
    compactions_completed_by_recovery: u64,
    hint_loads: u64,
}

fn dir() -> &'static Path {
    Path::new("/data/shard0")
}

impl Run {
    fn new(seed: u64) -> Run {
        let mut rng = Rng::seeded(seed);
        let config = LogConfig {
            segment_size_max: 512 + rng.below(8192),
            compaction_dead_percent: (10 + rng.below(80)) as u8,
            compaction_dead_bytes_min: rng.below(4096),
            ..LogConfig::default()
        };
        let vfs = MemVfs::new();
        let (store, report) = LogStore::open(vfs.clone(), dir(), config.clone()).unwrap();
        assert_eq!(report.keys, 0);
        let nkeys = 4 + rng.below(60);
        let keys = (0..nkeys)
            .map(|i| {
                let len = (i % 5) as usize * 7;
                let mut k = format!("k{i}").into_bytes();
                k.resize(k.len() + len, b'.');
                k
            })
            .collect();
        Run {
            rng,
            vfs,
            config,
            store,
            now: 1_000_000,
            next_version: 1,
            horizon: 0,
            model: BTreeMap::new(),
            acked: BTreeMap::new(),
            pending: BTreeMap::new(),
            unflushed: Vec::new(),
            keys,
            faults_armed: false,
            capacity_set: false,
            log: Vec::new(),
            tally: Tally::default(),
        }
    }

    fn tally_stats(&mut self) {
        let mut c = 0;
        self.store.stats(&mut |name, v| {
            if name == "storage_compactions" {
                c = v;
            }
        });
        self.tally.compactions += c;
        let held = self.model.len() as u64;
        let stored = self.store.len() as u64;
        self.tally.keys_forgotten += held.saturating_sub(stored);
    }

    fn note(&mut self, s: String) {
        self.log.push(s);
        if self.log.len() > 40 {
            self.log.remove(0);
        }
    }

    fn write(&mut self) {
        let key = self.keys[self.rng.below(self.keys.len() as u64) as usize].clone();
        let version = if self.rng.chance(10) {
            1 + self.rng.below(self.next_version)
        } else {
            self.next_version += 1 + self.rng.below(3);
            self.next_version
        };
        let value = if self.rng.chance(20) {
            None
        } else {
            let big = self.rng.chance(5);
            let len = self.rng.below(if big { 3000 } else { 120 }) as usize;
            let b = self.rng.next() as u8;
            Some(
                (0..len)
                    .map(|i| b.wrapping_add(i as u8))
                    .collect::<Vec<u8>>(),
            )
        };
        let expires_at_ms = if value.is_some() && self.rng.chance(25) {
            self.now + 1 + self.rng.below(400)
        } else {
            0
        };
        let causal = value.is_some() && self.rng.chance(30);
        let rec = Stored {
            version: Version(version),
            expires_at_ms,
            value: value.clone(),
            causal,
        };
        let held = self.model.get(&key).map(|s| s.version.0);
        let result = self.store.apply(Write {
            key: &key,
            value: value.as_deref(),
            version: Version(version),
            expires_at_ms,
            causal,
        });
        self.note(format!(
            "apply key={} v={version} len={:?} exp={expires_at_ms} causal={causal} -> {result:?}",
            String::from_utf8_lossy(&key),
            value.as_ref().map(|v| v.len())
        ));
        match result {
            Ok(Applied::Stored) => {
                if let Some(h) = held {
                    // Only allowed over a newer record that compaction could forget.
                    let old = &self.model[&key];
                    assert!(
                        h < version || (!old.is_live(self.now) && h < self.horizon),
                        "write v{version} stored over held v{h}"
                    );
                }
                let old = self.model.insert(key.clone(), rec.clone());
                self.unflushed.push((key.clone(), old));
                self.pending.entry(key).or_default().push(rec);
                if self.rng.chance(30) {
                    self.flush(); // the end of a turn
                }
            }
            Ok(Applied::Stale { current }) => {
                let h = held.expect("stale needs a held record");
                assert!(version <= h, "v{version} refused as stale against v{h}");
                assert_eq!(current.0, h);
            }
            Err(e) => {
                assert!(
                    self.faults_armed,
                    "write failed without an injected fault: {e}"
                );
                // The refusal may come from writing the buffer early: then the turn's
                // earlier writes were undone too, and the turn's flush says so.
                self.flush();
            }
        }
    }

    /// The end of a turn: the buffered records are written, or undone if that fails.
    fn flush(&mut self) {
        let r = self.store.flush();
        self.note(format!("flush -> {r:?}"));
        match r {
            Ok(()) => self.unflushed.clear(),
            Err(e) => {
                assert!(self.faults_armed, "flush failed without a fault: {e}");
                let mut allowed: BTreeMap<Vec<u8>, Vec<Option<Stored>>> = BTreeMap::new();
                // Per key: the record from before the first write, then every write's.
                for (key, old) in std::mem::take(&mut self.unflushed) {
                    allowed.entry(key).or_default().push(old);
                }
                for (key, a) in allowed.iter_mut() {
                    a.push(self.model.get(key).cloned());
                }
                for (key, mut allowed) in allowed {
                    let got = self.store.get(&key).expect("read after a failed flush");
                    let seen = observe(got.as_ref(), self.now);
                    assert!(
                        allowed
                            .iter()
                            .any(|a| observe(a.as_ref(), self.now) == seen),
                        "after a failed flush key {} holds {got:?}, allowed {allowed:?}",
                        String::from_utf8_lossy(&key)
                    );
                    match got {
                        Some(g) => self.model.insert(key, g),
                        // Back to the record from before (a tombstone the store may have
                        // forgotten already, which the model keeps).
                        None => match allowed.swap_remove(0) {
                            Some(old) if observe(Some(&old), self.now).is_none() => {
                                self.model.insert(key, old)
                            }
                            _ => self.model.remove(&key),
                        },
                    };
                }
            }
        }
    }

    fn check_reads(&mut self) {
        self.flush();
        let keys = self.keys.clone();
        for key in keys {
            let got = match self.store.get(&key) {
                Ok(g) => g,
                Err(e) => panic!("get {}: {e}", String::from_utf8_lossy(&key)),
            };
            let want = self.model.get(&key);
            assert_eq!(
                observe(got.as_ref(), self.now),
                observe(want, self.now),
                "key {} at now={}",
                String::from_utf8_lossy(&key),
                self.now
            );
            if let (Some(g), Some(w)) = (&got, want) {
                assert_eq!(g.version, w.version, "version of {key:?}");
            } else if let Some(g) = &got {
                panic!("store holds {g:?} for {key:?}, model nothing");
            }
        }
    }

    fn sync(&mut self) {
        self.flush();
        let r = self.store.sync();
        self.note(format!("sync -> {r:?}"));
        match r {
            Ok(()) => {
                self.acked = self.model.clone();
                self.pending.clear();
            }
            Err(e) => assert!(self.faults_armed, "sync failed without a fault: {e}"),
        }
    }

    fn maintenance(&mut self) {
        self.flush();
        let budget = 1 + self.rng.below(60) as usize;
        let r = self.store.maintenance(self.now, budget);
        self.note(format!(
            "maintenance now={} budget={budget} -> {r:?}",
            self.now
        ));
        match r {
            Ok(_) => {}
            Err(_) if self.faults_armed => {}
            Err(e) => panic!("maintenance: {e}"),
        }
    }

    fn crash(&mut self) {
        let mode = if self.rng.chance(50) {
            CrashMode::DropUnsynced
        } else {
            CrashMode::Torn {
                seed: self.rng.next(),
            }
        };
        self.note(format!("crash {mode:?}"));
        self.tally_stats();
        self.vfs.crash(mode);
        self.faults_armed = self.capacity_set;
        let (mut store, report) =
            LogStore::open(self.vfs.clone(), dir(), self.config.clone()).unwrap();
        self.note(format!("reopen: {report:?}"));
        self.tally.truncations += report.truncated.is_some() as u64;
        self.tally.leftovers_removed += report
            .removed
            .iter()
            .filter(|n| n.ends_with(".compact"))
            .count() as u64;
        self.tally.compactions_completed_by_recovery += report.compaction_completed as u64;
        self.tally.hint_loads += report.segments_from_hints as u64;
        assert_eq!(
            report.corrupt_count, 0,
            "crash damage reported as corruption"
        );
        store.set_tombstone_horizon(Version(self.horizon));
        // Each key: what was acknowledged, or a later write — nothing older, nothing else.
        let all: BTreeSet<Vec<u8>> = self.keys.iter().cloned().collect();
        let mut model = BTreeMap::new();
        for key in all {
            let got = store.get(&key).expect("read after recovery");
            let seen = observe(got.as_ref(), self.now);
            let mut allowed = vec![observe(self.acked.get(&key), self.now)];
            for w in self.pending.get(&key).into_iter().flatten() {
                allowed.push(observe(Some(w), self.now));
            }
            assert!(
                allowed.contains(&seen),
                "after crash key {} reads {seen:?}, allowed {allowed:?}",
                String::from_utf8_lossy(&key)
            );
            if let Some(g) = &got {
                assert!(
                    store.highest_version() >= g.version,
                    "highest_version below a held record"
                );
                // A record the store holds is one that was written.
                let known = self.acked.get(&key) == Some(g)
                    || self.pending.get(&key).is_some_and(|p| p.contains(g))
                    || (!g.is_live(self.now)
                        && self
                            .acked
                            .get(&key)
                            .into_iter()
                            .chain(self.pending.get(&key).into_iter().flatten())
                            .any(|w| w.version == g.version));
                assert!(known, "after crash key {key:?} holds unknown record {g:?}");
                model.insert(key, g.clone());
            }
        }
        self.store = store;
        self.model = model.clone();
        self.acked = model;
        self.pending.clear();
        self.unflushed.clear();
        self.next_version = self.next_version.max(self.store.highest_version().0);
    }

    /// Power fails after a few more disk operations, during writes and compaction.
    fn power_cut(&mut self) {
        let ops = 1 + self.rng.below(40);
        self.note(format!("power cut after {ops} disk ops"));
        self.faults_armed = true;
        self.vfs.cut_power_after(ops);
        for _ in 0..self.rng.below(80) {
            match self.rng.below(4) {
                0 => self.write(),
                1 => self.sync(),
                _ => self.maintenance(),
            }
        }
        self.crash();
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=54 => self.write(),
            55..=64 => {
                self.now += self.rng.below(150);
            }
            65..=74 => self.sync(),
            75..=86 => self.maintenance(),
            87..=90 => self.check_reads(),
            91..=92 => self.crash(),
            93 => {
                if self.next_version > 10 {
                    self.horizon = self.next_version - self.rng.below(10);
                    self.note(format!("horizon {}", self.horizon));
                    self.store.set_tombstone_horizon(Version(self.horizon));
                }
            }
            94 if self.rng.chance(50) => {
                // Disk full a little past what is used now.
                self.faults_armed = true;
                let used = self.vfs.used_bytes();
                let room = self.rng.below(300);
                self.note(format!("space_max used+{room}"));
                self.vfs.set_space_max(Some(used + room));
            }
            94 => {
                // A disk whose capacity the store can see, about its space reserve (1 MiB
                // margin and a little) away from full: writes are refused by the reserve
                // and compaction runs in its pressure mode, crashes included.
                self.faults_armed = true;
                let used = self.vfs.used_bytes();
                let room = 1024 * 1024 + self.rng.below(200_000);
                self.note(format!("capacity used+{room}"));
                self.vfs.set_capacity(Some(used + room));
                self.capacity_set = true;
            }
            95 => {
                if self.faults_armed && self.rng.chance(50) {
                    self.vfs.set_space_max(None);
                    self.vfs.set_capacity(None);
                    self.capacity_set = false;
                    self.note("space unlimited".into());
                }
            }
            96 if self.rng.chance(30) => self.power_cut(),
            96 if self.rng.chance(20) => {
                // COMPACT: a forced pass (seals the active segment if it holds dead bytes).
                self.note("force compaction".into());
                self.store.force_compaction();
            }
            96 => {
                if self.rng.chance(30) {
                    self.faults_armed = true;
                    self.note("fail next sync".into());
                    self.vfs.fail_next_syncs(1);
                }
            }
            _ => {
                // Everything the model holds must read back now.
                self.check_reads();
                if self.store.writes_refused().is_none() && !self.faults_armed {
                    self.sync();
                }
            }
        }
    }
}

fn run_seed(seed: u64, ops: usize) -> Tally {
    let result = std::panic::catch_unwind(|| {
        let mut run = Run::new(seed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..ops {
                run.step();
            }
            run.check_reads();
            run.crash();
            run.check_reads();
        }));
        if outcome.is_err() {
            eprintln!("last operations of seed {seed}:");
            for l in &run.log {
                eprintln!("  {l}");
            }
        }
        outcome.map(|_| run.tally)
    });
    match result {
        Ok(Ok(tally)) => tally,
        _ => {
            panic!("model test failed; reproduce: DKV_SEED={seed} cargo test --test storage_model")
        }
    }
}

#[test]
fn log_store_matches_model_across_crashes() {
    let ops = std::env::var("DKV_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(OPS_DEFAULT);
    if let Some(seed) = std::env::var("DKV_SEED").ok().and_then(|s| s.parse().ok()) {
        run_seed(seed, ops);
        return;
    }
    let seeds: u64 = std::env::var("DKV_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    let base: u64 = std::env::var("DKV_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut total = Tally::default();
    for seed in base + 1..=base + seeds {
        let t = run_seed(seed, ops);
        total.compactions += t.compactions;
        total.keys_forgotten += t.keys_forgotten;
        total.truncations += t.truncations;
        total.leftovers_removed += t.leftovers_removed;
        total.compactions_completed_by_recovery += t.compactions_completed_by_recovery;
        total.hint_loads += t.hint_loads;
    }
    eprintln!("{seeds} seeds x {ops} ops exercised: {total:?}");
    if seeds >= SEEDS_DEFAULT {
        assert!(total.compactions > 0, "no compaction ran: {total:?}");
        assert!(
            total.keys_forgotten > 0,
            "no tombstone was ever dropped: {total:?}"
        );
        assert!(
            total.truncations > 0,
            "no torn tail was ever truncated: {total:?}"
        );
        assert!(
            total.leftovers_removed > 0,
            "no crash mid-compaction: {total:?}"
        );
        assert!(
            total.hint_loads > 0,
            "no hint file was ever used: {total:?}"
        );
    }
}

/// Deterministic complement to the random runs: a compaction (with tombstones to drop,
/// expired values, overwrites) interrupted by a power cut after every possible number of
/// disk operations, then a crash and a reopen. Every acknowledged key must read back exactly.
#[test]
fn compaction_survives_a_power_cut_at_every_step() {
    let config = LogConfig {
        segment_size_max: 700,
        compaction_dead_percent: 20,
        compaction_dead_bytes_min: 0,
        ..LogConfig::default()
    };
    let now = 50_000;
    // Build the same store each time; returns it with the expected live values.
    let build = || {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), config.clone()).unwrap();
        let mut want: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut v = 0;
        for round in 0..4u64 {
            for k in 0..12u64 {
                v += 1;
                let key = format!("key{k}").into_bytes();
                let (value, expires_at_ms) = match (round, k % 4) {
                    (3, 0) => (None, 0),                     // deleted last
                    (3, 1) => (Some(vec![b'e'; 9]), 40_000), // expired by `now`
                    _ => (Some(format!("r{round}k{k}").into_bytes()), 0),
                };
                s.apply(Write {
                    key: &key,
                    value: value.as_deref(),
                    version: Version(v),
                    expires_at_ms,
                    causal: false,
                })
                .unwrap();
                want.insert(key, if expires_at_ms > 0 { None } else { value });
            }
            // Keys written once, spread over the segments: compaction must copy them.
            for j in 0..8u64 {
                v += 1;
                let key = format!("stable{round}-{j}").into_bytes();
                let value = format!("stable value {v}").into_bytes();
                s.apply(Write {
                    key: &key,
                    value: Some(&value),
                    version: Version(v),
                    expires_at_ms: 0,
                    causal: false,
                })
                .unwrap();
                want.insert(key, Some(value));
            }
        }
        s.sync().unwrap();
        s.set_tombstone_horizon(Version(v / 2 + 40));
        (vfs, s, want)
    };
    let check = |s: &mut LogStore<MemVfs>, want: &BTreeMap<Vec<u8>, Option<Vec<u8>>>, ctx: &str| {
        for (k, w) in want {
            let got = s
                .get(k)
                .unwrap()
                .filter(|r| r.is_live(now))
                .and_then(|r| r.value);
            assert_eq!(&got, w, "{ctx}: key {}", String::from_utf8_lossy(k));
        }
    };
    // How many disk operations a full compaction takes.
    let (vfs, mut s, want) = build();
    let before = vfs.syncs_done();
    let mut rounds = 0;
    while s.maintenance(now, 1).unwrap() {
        rounds += 1;
        assert!(rounds < 100_000);
    }
    assert!(vfs.syncs_done() > before, "no compaction happened");
    check(&mut s, &want, "no crash");
    let mut compactions = 0;
    s.stats(&mut |n, v| {
        if n == "storage_compactions" {
            compactions = v;
        }
    });
    assert!(
        compactions > 1,
        "expected several compaction jobs, got {compactions}"
    );
    let stable_after = s.segment_files().len();
    eprintln!("{compactions} compactions, {stable_after} segments left");
    assert!(
        s.len() < want.len(),
        "compaction forgot no tombstone or expired key ({} of {})",
        s.len(),
        want.len()
    );

    let mut cut = 1;
    loop {
        let (vfs, mut s, want) = build();
        vfs.cut_power_after(cut);
        let mut failed = false;
        for _ in 0..100_000 {
            match s.maintenance(now, 1) {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        drop(s);
        vfs.crash(CrashMode::Torn { seed: cut });
        let (mut s, report) = LogStore::open(vfs.clone(), dir(), config.clone()).unwrap();
        assert_eq!(report.corrupt_count, 0, "cut after {cut}");
        check(&mut s, &want, &format!("power cut after {cut} disk ops"));
        // And the store finishes the job after the restart.
        while s.maintenance(now, 50).unwrap() {}
        check(&mut s, &want, &format!("finished after cut {cut}"));
        if !failed {
            break; // the cut came after the last operation: every point was covered
        }
        cut += 1;
        assert!(cut < 10_000);
    }
    eprintln!("compaction power-cut points covered: {cut}");
    assert!(
        cut > 10,
        "expected a compaction of more than 10 disk operations, got {cut}"
    );
}
