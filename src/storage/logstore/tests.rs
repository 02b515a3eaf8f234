//! Unit tests of the log store, over the in-memory Vfs (crashes, damage, disk full).

use super::names::hint_name;
use super::*;
use crate::storage::record::encode_record;
use crate::storage::vfs::{CrashMode, MemVfs};
use std::path::Path;

fn dir() -> &'static Path {
    Path::new("/db")
}

fn small() -> LogConfig {
    LogConfig {
        segment_size_max: 1024,
        compaction_dead_percent: 30,
        compaction_dead_bytes_min: 0,
        ..LogConfig::default()
    }
}

fn put(s: &mut LogStore<MemVfs>, key: &str, value: &str, v: u64) {
    let r = s
        .apply(Write {
            key: key.as_bytes(),
            value: Some(value.as_bytes()),
            version: Version(v),
            expires_at_ms: 0,
            causal: false,
        })
        .unwrap();
    assert_eq!(r, Applied::Stored);
}

fn value(s: &mut LogStore<MemVfs>, key: &str) -> Option<String> {
    s.get(key.as_bytes())
        .unwrap()
        .and_then(|r| r.value)
        .map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn the_scrub_finds_damage_nobody_reads_and_reports_it_once() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    for i in 0..40u64 {
        put(&mut s, &format!("key{i:02}"), "some value", i + 1);
    }
    s.sync().unwrap();
    // Damage the value of the first record of the first segment.
    let (_, first, _) = s.segment_files()[0].clone();
    let at = (SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + 6) as u64;
    vfs.flip_bit(&first, at, 3).unwrap();
    let keys_before = s.len();
    let mut damaged = Vec::new();
    // Enough maintenance calls for one full pass.
    for _ in 0..(40 / SCRUB_RECORDS_PER_STEP + 2) {
        s.maintenance(0, 1).unwrap();
    }
    s.take_damaged(&mut damaged);
    assert_eq!(damaged, vec![b"key00".to_vec()]);
    assert_eq!(s.len(), keys_before - 1, "the damaged record is forgotten");
    assert_eq!(value(&mut s, "key00"), None);
    // A repair of the same version is accepted now.
    put(&mut s, "key00", "repaired", 1);
    assert_eq!(value(&mut s, "key00").as_deref(), Some("repaired"));
    for _ in 0..(40 / SCRUB_RECORDS_PER_STEP + 2) {
        s.maintenance(0, 1).unwrap();
    }
    damaged.clear();
    s.take_damaged(&mut damaged);
    assert!(damaged.is_empty(), "reported once");
}

#[test]
fn torn_tail_of_newest_segment_is_truncated_and_synced_data_kept() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    put(&mut s, "a", "1", 1);
    s.sync().unwrap();
    put(&mut s, "b", "2", 2);
    put(&mut s, "c", "3", 3);
    s.flush().unwrap();
    let active = s.segment_files().last().unwrap().1.clone();
    let before = vfs.contents(&active).unwrap().len();
    drop(s);
    vfs.crash(CrashMode::DropUnsynced);
    let synced_len = vfs.contents(&active).unwrap().len();
    assert!(synced_len < before);
    // Now simulate a torn write by hand: append a partial record and reopen.
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert!(report.truncated.is_none());
    assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
    assert_eq!(value(&mut s, "b"), None);
    put(&mut s, "d", "4", 4);
    s.sync().unwrap();
    drop(s);
    let mut rec = Vec::new();
    encode_record(&mut rec, 5, 0, b"e", Some(b"55555"), false);
    let mut f = vfs.open(&active).unwrap();
    vfs.append(&mut f, &rec[..rec.len() - 3]).unwrap();
    vfs.sync(&mut f).unwrap();
    let full_len = vfs.len(&f).unwrap();
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    let t = report.truncated.expect("torn tail reported");
    assert_eq!(t.bytes, rec.len() as u64 - 3);
    assert_eq!(t.offset, full_len - t.bytes);
    assert_eq!(report.corrupt_count, 0);
    assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
    assert_eq!(value(&mut s, "d").as_deref(), Some("4"));
    assert_eq!(value(&mut s, "e"), None);
    // Appending after the cut works and survives a reopen.
    put(&mut s, "f", "6", 6);
    s.sync().unwrap();
    drop(s);
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert!(report.truncated.is_none());
    assert_eq!(value(&mut s, "f").as_deref(), Some("6"));
    assert_eq!(s.highest_version(), Version(6));
}

#[test]
fn torn_crash_keeps_a_prefix_of_unsynced_writes() {
    for seed in 1..50u64 {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        put(&mut s, "base", "0", 1);
        s.sync().unwrap();
        for i in 0..5 {
            put(&mut s, &format!("k{i}"), "vvvvvvvvvv", 10 + i);
        }
        drop(s);
        vfs.crash(CrashMode::Torn { seed });
        let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        assert_eq!(report.corrupt_count, 0);
        assert_eq!(value(&mut s, "base").as_deref(), Some("0"));
        // A prefix of k0..k4 survived: no gaps.
        let present: Vec<bool> = (0..5)
            .map(|i| value(&mut s, &format!("k{i}")).is_some())
            .collect();
        let n = present.iter().take_while(|p| **p).count();
        assert!(present[n..].iter().all(|p| !p), "seed {seed}: {present:?}");
    }
}

#[test]
fn segments_roll_and_hints_are_used_on_reopen() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    for i in 0..100u64 {
        put(&mut s, &format!("key{i}"), &"x".repeat(20), i + 1);
    }
    s.sync().unwrap();
    let segs = s.segment_files();
    assert!(
        segs.len() > 3,
        "expected several segments, got {}",
        segs.len()
    );
    assert!(
        segs[..segs.len() - 1].iter().all(|s| s.2),
        "all but the last sealed"
    );
    drop(s);
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.segments_from_hints, segs.len() - 1);
    assert_eq!(report.segments_scanned, 1);
    assert_eq!(report.keys, 100);
    for i in 0..100u64 {
        assert_eq!(value(&mut s, &format!("key{i}")).unwrap(), "x".repeat(20));
    }
    assert_eq!(s.highest_version(), Version(100));
}

#[test]
fn damaged_hint_falls_back_to_scanning() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    for i in 0..60u64 {
        put(&mut s, &format!("key{i}"), &"y".repeat(20), i + 1);
    }
    s.sync().unwrap();
    let first = s.segment_files()[0].0;
    drop(s);
    let hint = dir().join(hint_name(first));
    vfs.flip_bit(&hint, 30, 3).unwrap();
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.hints_rejected.len(), 1);
    assert_eq!(report.hints_rejected[0].0, first);
    assert_eq!(report.corrupt_count, 0);
    for i in 0..60u64 {
        assert!(value(&mut s, &format!("key{i}")).is_some());
    }
}

#[test]
fn disk_full_refuses_the_write_and_loses_nothing() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    put(&mut s, "a", "1", 1);
    s.sync().unwrap();
    vfs.set_space_max(Some(vfs.used_bytes() + 10));
    // Buffered: the write is refused when the turn's records are written.
    s.apply(Write {
        key: b"b",
        value: Some(&[7u8; 100]),
        version: Version(2),
        expires_at_ms: 0,
        causal: false,
    })
    .unwrap();
    assert!(s.unflushed());
    let r = s.flush();
    assert!(matches!(r, Err(StoreError::WritesRefused(_))), "{r:?}");
    assert!(!s.unflushed(), "reported once");
    assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
    assert!(s.get(b"b").unwrap().is_none());
    vfs.set_space_max(None);
    put(&mut s, "c", "3", 3);
    s.sync().unwrap();
    drop(s);
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.corrupt_count, 0);
    assert!(report.truncated.is_none());
    assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
    assert_eq!(value(&mut s, "c").as_deref(), Some("3"));
}

#[test]
fn failed_fsync_is_sticky_and_reads_keep_working() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    put(&mut s, "a", "1", 1);
    vfs.fail_next_syncs(1);
    assert!(matches!(s.sync(), Err(StoreError::WritesRefused(_))));
    assert!(s.writes_refused().is_some());
    // Later syncs would succeed on the device, but the store does not pretend.
    assert!(matches!(s.sync(), Err(StoreError::WritesRefused(_))));
    let r = s.apply(Write {
        key: b"b",
        value: Some(b"2"),
        version: Version(2),
        expires_at_ms: 0,
        causal: false,
    });
    assert!(matches!(r, Err(StoreError::WritesRefused(_))));
    assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
    let mut refused = 0;
    s.stats(&mut |n, v| {
        if n == "storage_writes_refused" {
            refused = v;
        }
    });
    assert_eq!(refused, 1);
}

#[test]
fn compaction_reclaims_overwrites_and_drops_expired_and_old_tombstones() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    let mut v = 0;
    for round in 0..5 {
        for i in 0..20 {
            v += 1;
            put(
                &mut s,
                &format!("k{i}"),
                &format!("round{round}-{}", "z".repeat(10)),
                v,
            );
        }
    }
    v += 1;
    s.apply(Write {
        key: b"k0",
        value: None,
        version: Version(v),
        expires_at_ms: 0,
        causal: false,
    })
    .unwrap();
    v += 1;
    s.apply(Write {
        key: b"k1",
        value: Some(b"ttl"),
        version: Version(v),
        expires_at_ms: 5_000,
        causal: false,
    })
    .unwrap();
    // Push everything into sealed segments.
    for i in 0..40 {
        v += 1;
        put(&mut s, &format!("fill{i}"), "f", v);
    }
    s.sync().unwrap();
    let stat = |s: &LogStore<MemVfs>, name: &str| {
        let mut out = 0;
        s.stats(&mut |n, x| {
            if n == name {
                out = x;
            }
        });
        out
    };
    let dead_before = stat(&s, "storage_dead_bytes");
    assert!(dead_before > 0);
    s.set_tombstone_horizon(Version(v + 1));
    for _ in 0..10_000 {
        if !s.maintenance(10_000, 7).unwrap() {
            break;
        }
    }
    assert!(!s.compacting());
    assert!(stat(&s, "storage_compactions") > 0);
    assert!(stat(&s, "storage_bytes_reclaimed") > 0);
    assert!(stat(&s, "storage_dead_bytes") < dead_before);
    assert_eq!(s.get(b"k0").unwrap(), None, "old tombstone dropped");
    assert_eq!(s.get(b"k1").unwrap(), None, "expired value dropped");
    for i in 2..20 {
        assert_eq!(
            value(&mut s, &format!("k{i}")).unwrap(),
            format!("round4-{}", "z".repeat(10))
        );
    }
    drop(s);
    vfs.crash(CrashMode::DropUnsynced);
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.corrupt_count, 0);
    assert_eq!(s.get(b"k0").unwrap(), None);
    for i in 2..20 {
        assert_eq!(
            value(&mut s, &format!("k{i}")).unwrap(),
            format!("round4-{}", "z".repeat(10))
        );
    }
}

#[test]
fn expired_values_alone_trigger_compaction() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    for i in 0..200u64 {
        s.apply(Write {
            key: format!("ttl{i}").as_bytes(),
            value: Some(&[b't'; 40]),
            version: Version(i + 1),
            expires_at_ms: 10_000 + i,
            causal: false,
        })
        .unwrap();
    }
    s.sync().unwrap();
    let stat = |s: &LogStore<MemVfs>, name: &str| {
        let mut out = 0;
        s.stats(&mut |n, x| {
            if n == name {
                out = x;
            }
        });
        out
    };
    // Nothing is dead and nothing has expired yet: no work.
    assert!(!s.maintenance(9_000, 100).unwrap());
    assert_eq!(stat(&s, "storage_compactions"), 0);
    // Once expired, the values are reclaimed (kept as tombstones under the default
    // horizon, so an older write cannot come back).
    while s.maintenance(20_000, 100).unwrap() {}
    assert!(stat(&s, "storage_compactions") > 0);
    assert!(stat(&s, "storage_bytes_reclaimed") > 0);
    let r = s.get(b"ttl5").unwrap().unwrap();
    assert!(!r.is_live(20_000));
    assert_eq!(s.len(), 200);
    // With the horizon past them, they go entirely.
    s.set_tombstone_horizon(Version(1_000));
    while s.maintenance(20_000, 100).unwrap() {}
    assert!(s.len() < 200, "{} keys left", s.len());
}

#[test]
fn tombstones_are_kept_below_the_default_horizon() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    put(&mut s, "gone", "x", 1);
    s.apply(Write {
        key: b"gone",
        value: None,
        version: Version(2),
        expires_at_ms: 0,
        causal: false,
    })
    .unwrap();
    for i in 0..100u64 {
        put(&mut s, &format!("k{}", i % 10), &"w".repeat(30), 3 + i);
    }
    for _ in 0..10_000 {
        if !s.maintenance(0, 50).unwrap() {
            break;
        }
    }
    let got = s.get(b"gone").unwrap().expect("tombstone kept");
    assert_eq!(got.value, None);
    assert_eq!(got.version, Version(2));
    // An older write is still refused.
    let r = s
        .apply(Write {
            key: b"gone",
            value: Some(b"old"),
            version: Version(1),
            expires_at_ms: 0,
            causal: false,
        })
        .unwrap();
    assert_eq!(
        r,
        Applied::Stale {
            current: Version(2)
        }
    );
}

fn stat(s: &LogStore<MemVfs>, name: &str) -> u64 {
    let mut out = 0;
    s.stats(&mut |n, x| {
        if n == name {
            out = x;
        }
    });
    out
}

#[test]
fn a_disk_full_of_overwritten_data_is_refused_before_enospc_and_recovers() {
    let vfs = MemVfs::new();
    vfs.set_capacity(Some(8 * 1024 * 1024));
    let cfg = LogConfig {
        segment_size_max: 512 * 1024,
        compaction_dead_bytes_min: 128 * 1024,
        ..LogConfig::default()
    };
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), cfg.clone()).unwrap();
    let value = "v".repeat(1000);
    let mut v = 0u64;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    // Overwrite 100 keys, never running maintenance, until the reserve refuses a write.
    let refusal = loop {
        v += 1;
        assert!(v < 100_000, "never refused");
        let key = format!("k{}", v % 100);
        let val = format!("{v}{value}");
        let w = Write {
            key: key.as_bytes(),
            value: Some(val.as_bytes()),
            version: Version(v),
            expires_at_ms: 0,
            causal: false,
        };
        match s.apply(w) {
            Ok(_) => {
                acked.insert(key, v);
            }
            Err(StoreError::WritesRefused(why)) => break why,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(refusal.contains("disk full"), "{refusal}");
    assert!(
        vfs.used_bytes() < 8 * 1024 * 1024 - 1024 * 1024,
        "the reserve is left free"
    );
    assert_eq!(stat(&s, "storage_writes_refused"), 1);
    assert_eq!(s.last_refusal(), Some(refusal.as_str()));
    s.sync().unwrap();
    // Compaction runs under pressure and frees the dead data.
    for _ in 0..1000 {
        if !s.maintenance(0, 64).unwrap() {
            break;
        }
    }
    assert!(stat(&s, "storage_compactions") > 0);
    assert!(
        vfs.used_bytes() < 2 * 1024 * 1024,
        "{} used: {:?} {:?}",
        vfs.used_bytes(),
        s.figures(0),
        vfs.list(dir()).unwrap()
    );
    v += 1;
    put(&mut s, "k1", "again", v);
    acked.insert("k1".into(), v);
    s.sync().unwrap();
    drop(s);
    vfs.crash(CrashMode::DropUnsynced);
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), cfg).unwrap();
    for (key, version) in &acked {
        let got = s
            .get(key.as_bytes())
            .unwrap()
            .expect("acknowledged write kept");
        assert_eq!(got.version, Version(*version), "{key}");
    }
}

#[test]
fn a_forced_pass_reclaims_every_dead_byte_the_active_segment_included() {
    let vfs = MemVfs::new();
    let cfg = LogConfig {
        segment_size_max: 64 * 1024,
        compaction_dead_percent: 90,
        compaction_dead_bytes_min: 1 << 40,
        ..LogConfig::default()
    };
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), cfg).unwrap();
    for v in 1..=400u64 {
        put(&mut s, &format!("k{}", v % 30), &"x".repeat(500), v);
    }
    s.sync().unwrap();
    // The thresholds are out of reach: nothing happens by itself.
    assert!(!s.maintenance(0, 1000).unwrap());
    assert!(stat(&s, "storage_dead_bytes") > 0);
    s.force_compaction();
    assert!(s.forcing());
    for _ in 0..1000 {
        s.maintenance(0, 100).unwrap();
        if !s.forcing() {
            break;
        }
    }
    assert!(!s.forcing(), "the pass ends");
    assert_eq!(stat(&s, "storage_dead_bytes"), 0);
    assert!(stat(&s, "storage_segments_reclaimed") > 0);
    for k in 0..30u64 {
        assert_eq!(value(&mut s, &format!("k{k}")).unwrap(), "x".repeat(500));
    }
}

/// Writes buffered in one turn whose write fails are undone: an overwritten key reads its
/// previous record again, a new key is absent (even written twice in the turn), the file holds
/// nothing of them, and the next turn's writes work.
#[test]
fn a_failed_flush_undoes_the_turns_writes() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    put(&mut s, "a", "1", 1);
    put(&mut s, "b", "2", 2);
    s.sync().unwrap();
    let live_before = live_bytes(&s);
    let active = s.segment_files().last().unwrap().1.clone();
    let file_before = vfs.contents(&active).unwrap();
    vfs.set_space_max(Some(vfs.used_bytes() + 30)); // part of the turn lands, then ENOSPC
    put(&mut s, "a", "one", 3);
    put(&mut s, "new", "x", 4);
    put(&mut s, "new", "xx", 5);
    put(&mut s, "a", "uno", 6);
    assert_eq!(value(&mut s, "a").as_deref(), Some("uno"), "buffered reads");
    assert!(matches!(s.flush(), Err(StoreError::WritesRefused(_))));
    assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
    assert_eq!(value(&mut s, "b").as_deref(), Some("2"));
    assert_eq!(value(&mut s, "new"), None);
    assert_eq!(s.len(), 2);
    assert_eq!(live_bytes(&s), live_before, "segment accounting undone");
    assert_eq!(
        vfs.contents(&active).unwrap(),
        file_before,
        "partial write cut"
    );
    assert!(s.writes_refused().is_none(), "not sticky");
    vfs.set_space_max(None);
    put(&mut s, "c", "3", 7);
    s.flush().unwrap();
    s.sync().unwrap();
    drop(s);
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.corrupt_count, 0);
    assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
    assert_eq!(value(&mut s, "new"), None);
    assert_eq!(value(&mut s, "c").as_deref(), Some("3"));
}

/// A turn that outgrows the append buffer writes early; if that write fails, the write that
/// needed the room is refused and the end-of-turn flush reports the failure too (the turn's
/// earlier acknowledgements must not leave).
#[test]
fn an_early_write_that_fails_is_reported_by_the_turns_flush() {
    let vfs = MemVfs::new();
    let config = LogConfig {
        segment_size_max: 64 * 1024 * 1024,
        ..small()
    };
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), config).unwrap();
    vfs.set_space_max(Some(vfs.used_bytes() + 1000));
    let value = vec![9u8; 4096];
    let mut refused_at = None;
    let per_record = (RECORD_HEADER_SIZE + 5 + value.len()) as u64;
    let records = crate::limits::APPEND_BUFFER_BYTES_MAX as u64 / per_record + 2;
    for i in 0..records {
        let r = s.apply(Write {
            key: format!("k{i:04}").as_bytes(),
            value: Some(&value),
            version: Version(i + 1),
            expires_at_ms: 0,
            causal: false,
        });
        if r.is_err() {
            refused_at = Some(i);
            break;
        }
    }
    assert!(refused_at.is_some(), "the early write failed");
    assert!(s.unflushed());
    assert!(
        s.flush().is_err(),
        "the turn's flush reports the early failure"
    );
    assert!(s.flush().is_ok(), "once");
    assert_eq!(s.len(), 0, "every write of the turn undone");
}

fn live_bytes(s: &LogStore<MemVfs>) -> u64 {
    let mut live = 0;
    s.stats(&mut |n, v| {
        if n == "storage_live_bytes" {
            live = v;
        }
    });
    live
}

/// Reads make no `read` of the file: records of the turn come from the buffer, written ones
/// from the map; a segment cut short under its map reads as damage and the key is forgotten.
#[test]
fn a_segment_cut_short_reads_as_damage_and_its_keys_are_forgotten() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    for i in 0..40u64 {
        put(&mut s, &format!("key{i:02}"), "some value", i + 1);
    }
    s.sync().unwrap();
    let (_, first, sealed) = s.segment_files()[0].clone();
    assert!(sealed);
    // Cut the first segment after its header: every record in it is gone.
    let mut f = vfs.open(&first).unwrap();
    vfs.truncate(&mut f, SEGMENT_HEADER_SIZE as u64).unwrap();
    let before = s.len();
    let e = s.get(b"key00").unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    assert_eq!(s.len(), before - 1, "forgotten for repair");
    let mut damaged = Vec::new();
    s.take_damaged(&mut damaged);
    assert_eq!(damaged, vec![b"key00".to_vec()]);
    assert_eq!(value(&mut s, "key39").as_deref(), Some("some value"));
    assert_eq!(value(&mut s, "key00"), None);
}
