//! Unit tests of causal records (format 2's CAUSAL flag) and of reading format-1 segments,
//! over the in-memory Vfs.

use super::names::{hint_name, segment_name};
use super::*;
use crate::storage::record::{encode_record, SegmentKind, FLAG_CAUSAL, FORMAT_VERSION};
use crate::storage::vfs::{CrashMode, MemVfs};
use crate::storage::KeyMeta;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

fn write(s: &mut LogStore<MemVfs>, key: &str, value: Option<&[u8]>, v: u64, causal: bool) {
    let r = s
        .apply(Write {
            key: key.as_bytes(),
            value,
            version: Version(v),
            expires_at_ms: 0,
            causal,
        })
        .unwrap();
    assert_eq!(r, Applied::Stored);
}

/// What the store must hold: key → (version, value, causal).
type Model = BTreeMap<String, (u64, Option<Vec<u8>>, bool)>;

/// Every key reads as the model says (value and flag, through `get`), and `scan_keys` lists
/// exactly the model's keys with the same flags.
fn check(s: &mut LogStore<MemVfs>, model: &Model, when: &str) {
    for (k, (v, value, causal)) in model {
        let got = s.get(k.as_bytes()).unwrap().expect(k);
        assert_eq!(got.version, Version(*v), "{when}: {k}");
        assert_eq!(&got.value, value, "{when}: {k}");
        assert_eq!(got.causal, *causal, "{when}: {k}");
    }
    let mut listed = BTreeMap::new();
    let mut cursor = Some(0);
    while let Some(c) = cursor {
        cursor = s
            .scan_keys(c, 7, &mut |k, m: KeyMeta| {
                listed.insert(String::from_utf8(k.to_vec()).unwrap(), m);
            })
            .unwrap();
    }
    assert_eq!(listed.len(), model.len(), "{when}");
    for (k, (v, value, causal)) in model {
        let m = listed[k];
        assert_eq!(m.version, Version(*v), "{when}: {k}");
        assert_eq!(m.tombstone, value.is_none(), "{when}: {k}");
        assert_eq!(m.causal, *causal, "{when}: {k}");
        assert!(!(m.causal && m.tombstone));
    }
}

fn hints(vfs: &MemVfs) -> Vec<String> {
    vfs.list(dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".hint"))
        .collect()
}

/// Causal and plain records, overwriting each other, across several segments.
fn fill(s: &mut LogStore<MemVfs>, model: &mut Model) -> u64 {
    let mut v = 0;
    for round in 0..4u64 {
        for i in 0..24u64 {
            v += 1;
            let key = format!("k{i:02}");
            // Keys flip between causal and plain from round to round; some are deleted.
            let causal = (i + round) % 3 == 0;
            let value = if round == 3 && i % 7 == 0 {
                None
            } else if causal && i % 5 == 0 {
                Some(Vec::new()) // an empty state is still a causal value
            } else {
                Some(
                    format!(
                        "{}-{round}-{}",
                        if causal { "dvv" } else { "v" },
                        "s".repeat(i as usize)
                    )
                    .into_bytes(),
                )
            };
            let causal = causal && value.is_some();
            write(s, &key, value.as_deref(), v, causal);
            model.insert(key, (v, value, causal));
        }
    }
    v
}

fn compact_all(s: &mut LogStore<MemVfs>) {
    s.force_compaction();
    for _ in 0..10_000 {
        s.maintenance(0, 50).unwrap();
        if !s.forcing() && !s.compacting() {
            break;
        }
    }
    assert!(!s.forcing() && !s.compacting());
}

#[test]
fn causal_records_keep_their_flag_through_every_path() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    let mut model = Model::new();
    let mut v = fill(&mut s, &mut model);
    s.sync().unwrap();
    assert!(model.values().any(|m| m.2) && model.values().any(|m| !m.2 && m.1.is_some()));
    assert!(s.segment_files().len() > 3, "several segments");
    check(&mut s, &model, "written");

    // Last-write-wins by version, causal or not.
    let (held, _, _) = model["k03"];
    let stale = s
        .apply(Write {
            key: b"k03",
            value: Some(b"older state"),
            version: Version(held - 1),
            expires_at_ms: 0,
            causal: true,
        })
        .unwrap();
    assert_eq!(
        stale,
        Applied::Stale {
            current: Version(held)
        }
    );

    // Reopen: sealed segments from their hints, the active one scanned.
    drop(s);
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert!(report.segments_from_hints > 0);
    assert_eq!(report.corrupt_count, 0);
    check(&mut s, &model, "reopened from hints");

    // Reopen without hints: every segment scanned.
    drop(s);
    for h in hints(&vfs) {
        vfs.remove(&dir().join(h)).unwrap();
    }
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.segments_from_hints, 0);
    assert_eq!(report.corrupt_count, 0);
    check(&mut s, &model, "reopened by scanning");

    // The scrub verifies the records (flag included) and finds nothing wrong.
    for _ in 0..100 {
        s.maintenance(0, 1).unwrap();
    }
    let mut damaged = Vec::new();
    s.take_damaged(&mut damaged);
    assert!(damaged.is_empty(), "{damaged:?}");

    // Compaction: every live record copied, causal ones stay causal.
    for i in 0..24u64 {
        v += 1;
        let key = format!("k{i:02}");
        if i % 2 == 0 {
            let value = format!("dvv-last-{i}").into_bytes();
            write(&mut s, &key, Some(&value), v, true);
            model.insert(key, (v, Some(value), true));
        }
    }
    s.sync().unwrap();
    compact_all(&mut s);
    assert!(stat(&s, "storage_compactions") > 0);
    assert_eq!(stat(&s, "storage_dead_bytes"), 0);
    check(&mut s, &model, "compacted");
    drop(s);
    vfs.crash(CrashMode::DropUnsynced);
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.corrupt_count, 0);
    check(&mut s, &model, "compacted and reopened");

    // A snapshot holds the records as they are: a store opened on it reads the same flags.
    let files = s.snapshot(&dir().join("snap")).unwrap();
    assert!(!files.is_empty());
    let (mut snap, report) = LogStore::open(vfs.clone(), &dir().join("snap"), small()).unwrap();
    assert_eq!(report.corrupt_count, 0);
    check(&mut snap, &model, "snapshot");

    // Forgetting keys leaves the others' flags alone.
    let mut doomed = |k: &[u8]| k.ends_with(b"1");
    let mut cursor = Some(0);
    while let Some(c) = cursor {
        cursor = s.forget_step(&mut doomed, c, 5).unwrap().1;
    }
    model.retain(|k, _| !k.ends_with('1'));
    check(&mut s, &model, "after forgetting");
}

#[test]
fn a_causal_delete_is_refused_and_changes_nothing() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    write(&mut s, "k", Some(b"state"), 1, true);
    let r = s.apply(Write {
        key: b"k",
        value: None,
        version: Version(2),
        expires_at_ms: 0,
        causal: true,
    });
    assert!(
        matches!(r, Err(StoreError::Io(ref e)) if e.kind() == std::io::ErrorKind::InvalidInput)
    );
    let got = s.get(b"k").unwrap().unwrap();
    assert_eq!((got.version, got.causal), (Version(1), true));
}

#[test]
fn an_expired_causal_record_is_kept_whole_above_the_horizon_and_dropped_below() {
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    let compact = |s: &mut LogStore<MemVfs>, base: u64| {
        for i in 0..40u64 {
            let key = format!("fill{i:02}");
            write(s, &key, Some(b"ffffffffffffffff"), base + i, false);
        }
        s.sync().unwrap();
        s.force_compaction();
        for _ in 0..1000 {
            s.maintenance(5_000, 50).unwrap();
            if !s.forcing() && !s.compacting() {
                break;
            }
        }
    };
    s.apply(Write {
        key: b"t",
        value: Some(b"state"),
        version: Version(10),
        expires_at_ms: 1_000,
        causal: true,
    })
    .unwrap();
    compact(&mut s, 100);
    // Above the horizon (none is set): kept as it was, state and flag, never a plain
    // tombstone (that would lose the state's version vector).
    let got = s.get(b"t").unwrap().unwrap();
    assert_eq!(
        (got.value.as_deref(), got.causal, got.version),
        (Some(&b"state"[..]), true, Version(10))
    );
    // Below the horizon: collected like an expired value.
    s.set_tombstone_horizon(Version(50));
    compact(&mut s, 200);
    assert_eq!(s.get(b"t").unwrap(), None);
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

/// Write segment `id` as a format-`format` log segment holding `records` (key, value,
/// version, flags byte): encoded by this build, then the flags byte set and the checksum made
/// right, so that only the format's rules can reject a record. Returns its path and each
/// record's offset.
fn segment_file(
    vfs: &MemVfs,
    id: u32,
    format: u16,
    records: &[(&str, &[u8], u64, u8)],
) -> (PathBuf, Vec<u64>) {
    vfs.create_dir_all(dir()).unwrap();
    let header = SegmentHeader {
        format,
        kind: SegmentKind::Log,
        id,
        origin_lo: id,
        origin_hi: id,
    };
    let mut b = header.encode().to_vec();
    let mut offsets = Vec::new();
    for (key, value, version, flags) in records {
        let at = b.len();
        offsets.push(at as u64);
        encode_record(&mut b, *version, 0, key.as_bytes(), Some(value), false);
        b[at + 20] = *flags;
        let crc = crc32c::crc32c(&b[at + 4..]);
        b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let path = dir().join(segment_name(id));
    let mut f = vfs.create(&path).unwrap();
    vfs.append(&mut f, &b).unwrap();
    vfs.sync(&mut f).unwrap();
    vfs.sync_dir(dir()).unwrap();
    (path, offsets)
}

#[test]
fn a_format_1_segment_with_the_causal_bit_is_damage_not_served() {
    let vfs = MemVfs::new();
    // Segment 1, format 1: "b"'s record says CAUSAL, which format 1 does not have.
    let (_, offsets) = segment_file(
        &vfs,
        1,
        1,
        &[
            ("a", b"plain a", 1, 0),
            ("b", b"looks causal", 2, FLAG_CAUSAL),
            ("c", b"plain c", 3, 0),
        ],
    );
    // Segment 2, format 1: the newest log segment, good.
    segment_file(&vfs, 2, 1, &[("e", b"plain e", 4, 0)]);
    // The same bytes as "b"'s in a format-2 segment would be a causal record: see
    // `record::tests::causal_records_are_format_2_only`.

    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.corrupt_count, 1, "{report:?}");
    assert_eq!(report.corrupt[0].segment, 1);
    assert_eq!(report.corrupt[0].offset, offsets[1]);
    assert!(report.corrupt[0].reason.contains("flags"), "{report:?}");
    assert!(
        report.truncated.is_none(),
        "damage in a sealed segment is not a torn tail"
    );
    assert_eq!(s.get(b"b").unwrap(), None, "never served");
    for (k, v) in [("a", "plain a"), ("c", "plain c"), ("e", "plain e")] {
        let got = s.get(k.as_bytes()).unwrap().unwrap();
        assert_eq!(got.value.as_deref(), Some(v.as_bytes()));
        assert!(!got.causal);
    }

    // The format-1 newest log segment was sealed (with a format-1 hint), not reopened:
    // writes, causal ones included, go to a new format-2 segment.
    let segs = s.segment_files();
    assert_eq!(segs.len(), 3);
    assert!(segs[0].2 && segs[1].2 && !segs[2].2);
    assert!(vfs.contents(&dir().join(hint_name(2))).is_some());
    assert!(
        vfs.contents(&dir().join(hint_name(1))).is_none(),
        "a damaged segment gets no hint"
    );
    write(&mut s, "d", Some(b"state d"), 5, true);
    s.sync().unwrap();
    let active = vfs.contents(&segs[2].1).unwrap();
    assert_eq!(
        SegmentHeader::decode(&active).unwrap().format,
        FORMAT_VERSION
    );
    assert_eq!(active[SEGMENT_HEADER_SIZE + 20], FLAG_CAUSAL);
    drop(s);

    // Reopened: segment 2 from its format-1 hint, the damage reported again, "d" causal.
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.corrupt_count, 1);
    assert_eq!(report.segments_from_hints, 1);
    assert!(report.hints_rejected.is_empty());
    assert_eq!(s.get(b"b").unwrap(), None);
    let d = s.get(b"d").unwrap().unwrap();
    assert!(d.causal);
    assert_eq!(d.value.as_deref(), Some(&b"state d"[..]));
    drop(s);

    // A hint must have its segment's format: segment 2's hint relabelled format 2 (its
    // checksum made right) is refused, and the segment scanned instead.
    let hint_path = dir().join(hint_name(2));
    let mut h = vfs.contents(&hint_path).unwrap();
    assert_eq!(u16::from_le_bytes([h[4], h[5]]), 1);
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    let n = h.len() - 4;
    let crc = crc32c::crc32c(&h[..n]);
    h[n..].copy_from_slice(&crc.to_le_bytes());
    vfs.remove(&hint_path).unwrap();
    let mut f = vfs.create(&hint_path).unwrap();
    vfs.append(&mut f, &h).unwrap();
    vfs.sync(&mut f).unwrap();
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.hints_rejected.len(), 1, "{report:?}");
    assert_eq!(report.hints_rejected[0].0, 2);
    assert_eq!(
        s.get(b"e").unwrap().unwrap().value.as_deref(),
        Some(&b"plain e"[..])
    );
}

#[test]
fn format_1_segments_are_compacted_into_format_2_ones() {
    let vfs = MemVfs::new();
    segment_file(
        &vfs,
        1,
        1,
        &[
            ("a", b"a1", 1, 0),
            ("b", b"b1", 2, 0),
            ("a", b"a2", 3, 0),
            ("t", b"", 4, 1), // a tombstone
        ],
    );
    segment_file(
        &vfs,
        2,
        1,
        &[("b", b"b2", 5, 0), ("c", b"c0", 6, 0), ("c", b"c1", 7, 0)],
    );
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.corrupt_count, 0);
    write(&mut s, "d", Some(b"state"), 8, true);
    s.sync().unwrap();
    compact_all(&mut s);
    let mut formats = Vec::new();
    for (_, path, _) in s.segment_files() {
        let b = vfs.contents(&path).unwrap();
        formats.push(SegmentHeader::decode(&b).unwrap().format);
    }
    assert!(formats.iter().all(|f| *f == FORMAT_VERSION), "{formats:?}");
    let mut model = Model::new();
    model.insert("a".into(), (3, Some(b"a2".to_vec()), false));
    model.insert("b".into(), (5, Some(b"b2".to_vec()), false));
    model.insert("c".into(), (7, Some(b"c1".to_vec()), false));
    model.insert("d".into(), (8, Some(b"state".to_vec()), true));
    model.insert("t".into(), (4, None, false));
    check(&mut s, &model, "compacted");
    drop(s);
    let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
    assert_eq!(report.corrupt_count, 0);
    check(&mut s, &model, "reopened");
}
