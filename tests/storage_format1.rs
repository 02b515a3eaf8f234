//! A data directory written by storage format 1 (`tests/fixtures/format1/`, made by the kvd
//! and kvcat of that format; its README says how and what it holds) still opens and serves
//! every key under format 2: with the real [`LogStore`] on the real file system, and with a
//! real `kvd` process. New writes (causal ones included) go to format-2 segments, and a
//! compaction rewrites the format-1 records into format-2 segments; everything reads the same
//! afterwards and after a reopen.

mod common;

use common::{temp_dir, Node};
use dkv::protocol::Consistency;
use dkv::storage::logstore::{LogConfig, LogStore};
use dkv::storage::record::{SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_SIZE};
use dkv::storage::vfs::RealVfs;
use dkv::storage::{KeyMeta, Store, Write};
use dkv::version::Version;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The fixture, in the source tree (never written to: tests work on copies).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1")
}

/// Copy the fixture's data directory into a fresh temporary directory; its path.
fn copy_of_fixture(name: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(&name));
            } else if name != "README.md" && name != "make.sh" {
                std::fs::copy(e.path(), to.join(&name)).unwrap();
            }
        }
    }
    let data = temp_dir(name).join("data");
    copy(&fixture(), &data);
    data
}

/// The 4,100-byte value of key `big`.
fn big() -> Vec<u8> {
    (0..820)
        .map(|i| format!("{i:04}|"))
        .collect::<String>()
        .into_bytes()
}

/// What the fixture holds (README.md): key → value, `None` for a deleted key.
fn fixture_keys() -> BTreeMap<String, Option<Vec<u8>>> {
    let mut m = BTreeMap::new();
    let mut put = |k: String, v: &[u8]| {
        m.insert(k, Some(v.to_vec()));
    };
    put("plain-00".into(), b"value-00-v3");
    for i in 1..10 {
        put(format!("plain-0{i}"), format!("value-0{i}").as_bytes());
    }
    for i in 0..5 {
        put(format!("over-{i}"), format!("new-{i}").as_bytes());
    }
    put("b2-0".into(), b"second-0-v2");
    for i in 2..5 {
        put(format!("b2-{i}"), format!("second-{i}").as_bytes());
    }
    put("big".into(), &big());
    put("ttl-0".into(), b"long-lived-0");
    put("ttl-1".into(), b"long-lived-1");
    for i in 0..3 {
        put(format!("tail-{i}"), format!("tail-{i}").as_bytes());
    }
    for k in ["del-0", "del-1", "del-2", "del-3", "b2-1"] {
        m.insert(k.to_string(), None);
    }
    assert_eq!(m.len(), 30);
    m
}

/// Expected content: key → (value or `None` for a tombstone, causal).
type Expected = BTreeMap<String, (Option<Vec<u8>>, bool)>;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Every key reads as expected through `get` (deleted keys as tombstones, or absent) and
/// `scan_keys` agrees on the flags; the TTL keys still carry their 10-year expiry.
fn check_store(s: &mut LogStore<RealVfs>, want: &Expected, when: &str) {
    let now = now_ms();
    for (k, (value, causal)) in want {
        let got = s.get(k.as_bytes()).unwrap();
        match value {
            Some(v) => {
                let got = got.unwrap_or_else(|| panic!("{when}: {k} missing"));
                assert!(got.is_live(now), "{when}: {k} not live");
                assert_eq!(got.value.as_ref(), Some(v), "{when}: {k}");
                assert_eq!(got.causal, *causal, "{when}: {k}");
            }
            None => assert!(
                got.as_ref().is_none_or(|g| g.value.is_none() && !g.causal),
                "{when}: {k} should be deleted, reads {got:?}"
            ),
        }
    }
    // Written 2026-12-01 with a TTL of 315,360,000 s: expiry in late 2036.
    for k in ["ttl-0", "ttl-1"] {
        let e = s.get(k.as_bytes()).unwrap().unwrap().expires_at_ms;
        assert!(
            (2_082_758_400_000..2_114_380_800_000).contains(&e),
            "{when}: {k} expires at {e}"
        );
    }
    let mut listed: BTreeMap<String, KeyMeta> = BTreeMap::new();
    let mut cursor = Some(0);
    while let Some(c) = cursor {
        cursor = s
            .scan_keys(c, 8, &mut |k, m| {
                listed.insert(String::from_utf8(k.to_vec()).unwrap(), m);
            })
            .unwrap();
    }
    for (k, (value, causal)) in want {
        if let Some(m) = listed.get(k) {
            assert_eq!(m.tombstone, value.is_none(), "{when}: {k}");
            assert_eq!(m.causal, *causal, "{when}: {k}");
        } else {
            assert!(value.is_none(), "{when}: {k} not listed");
        }
    }
}

/// The format of each segment file in `dir`.
fn segment_formats(dir: &Path) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| {
            let b = std::fs::read(e.path()).unwrap();
            let h = SegmentHeader::decode(&b[..SEGMENT_HEADER_SIZE]).unwrap();
            (e.file_name().to_string_lossy().into_owned(), h.format)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_format_1_store_opens_serves_takes_writes_and_compacts_into_format_2() {
    let data = copy_of_fixture("format1-store");
    let shard = data.join("shard-000");
    assert_eq!(
        segment_formats(&shard),
        vec![
            ("0000000001.seg".to_string(), 1),
            ("0000000002.seg".to_string(), 1),
            ("0000000003.seg".to_string(), 1)
        ],
        "the fixture is format 1"
    );
    let mut want: Expected = fixture_keys()
        .into_iter()
        .map(|(k, v)| (k, (v, false)))
        .collect();

    let (mut s, report) = LogStore::open(RealVfs, &shard, LogConfig::default()).unwrap();
    assert_eq!(report.corrupt_count, 0, "{report:?}");
    assert_eq!(report.segments, 3);
    assert_eq!(
        report.segments_from_hints, 2,
        "the sealed segments' format-1 hints"
    );
    assert_eq!(report.segments_scanned, 1, "the active segment at the stop");
    assert!(report.hints_rejected.is_empty(), "{report:?}");
    assert_eq!(report.removed, vec!["0000000003.hint.tmp".to_string()]);
    check_store(&mut s, &want, "opened");

    // The format-1 active segment was sealed, not reopened: writes go to a format-2 one.
    let segs = s.segment_files();
    assert_eq!(segs.len(), 4);
    assert!(segs[..3].iter().all(|s| s.2) && !segs[3].2);
    let mut v = s.highest_version().0;
    let mut write = |s: &mut LogStore<RealVfs>, k: &str, value: Option<&[u8]>, causal: bool| {
        v += 1;
        s.apply(Write {
            key: k.as_bytes(),
            value,
            version: Version(v),
            expires_at_ms: 0,
            causal,
        })
        .unwrap();
        want.insert(k.to_string(), (value.map(|v| v.to_vec()), causal));
    };
    write(&mut s, "new-plain", Some(b"plain v2 value"), false);
    write(&mut s, "new-causal", Some(b"\x01dvv\x02siblings"), true);
    write(&mut s, "new-empty-causal", Some(b""), true);
    write(&mut s, "plain-05", Some(b"now a causal state"), true);
    write(&mut s, "over-1", None, false);
    write(&mut s, "del-0", Some(b"back again"), false);
    s.sync().unwrap();
    assert_eq!(segment_formats(&shard)[3], ("0000000004.seg".into(), 2));
    check_store(&mut s, &want, "written");

    // Reopen before compacting: the format-1 segments from hints (segment 3 got one when it
    // was sealed), the format-2 active one scanned and reopened.
    drop(s);
    let (mut s, report) = LogStore::open(RealVfs, &shard, LogConfig::default()).unwrap();
    assert_eq!(report.corrupt_count, 0, "{report:?}");
    assert_eq!(report.segments_from_hints, 3, "{report:?}");
    assert_eq!(
        s.segment_files().len(),
        4,
        "the format-2 segment is reopened"
    );
    check_store(&mut s, &want, "reopened");

    // A forced compaction rewrites every format-1 segment (each holds dead records) into
    // format-2 outputs.
    s.force_compaction();
    for _ in 0..10_000 {
        s.maintenance(now_ms(), 100).unwrap();
        if !s.forcing() && !s.compacting() {
            break;
        }
    }
    assert!(!s.forcing() && !s.compacting(), "the forced pass ends");
    let formats = segment_formats(&shard);
    assert!(
        formats.iter().all(|(_, f)| *f == FORMAT_VERSION),
        "{formats:?}"
    );
    assert!(!formats.iter().any(|(n, _)| n == "0000000001.seg"));
    check_store(&mut s, &want, "compacted");

    drop(s);
    let (mut s, report) = LogStore::open(RealVfs, &shard, LogConfig::default()).unwrap();
    assert_eq!(report.corrupt_count, 0, "{report:?}");
    assert!(report.hints_rejected.is_empty(), "{report:?}");
    check_store(&mut s, &want, "compacted and reopened");
    let _ = std::fs::remove_dir_all(data.parent().unwrap());
}

/// A real kvd started on the format-1 directory serves it (GET through the client), takes
/// writes, compacts it with the COMPACT request, and serves it again after a restart.
#[test]
fn kvd_serves_a_format_1_data_directory() {
    let data = copy_of_fixture("format1-kvd");
    let mut node = Node::start(&data, &["--shards", "1"]);
    let mut c = node.client();
    let check = |c: &mut dkv::client::Client, want: &BTreeMap<String, Option<Vec<u8>>>| {
        for (k, v) in want {
            let got = c
                .get(k.as_bytes(), Consistency::Default)
                .unwrap_or_else(|e| panic!("GET {k}: {e}"));
            assert_eq!(got.map(|(_, v)| v), *v, "GET {k}");
        }
    };
    let mut want = fixture_keys();
    check(&mut c, &want);
    c.put(
        b"after-upgrade",
        b"written by format 2",
        0,
        Consistency::Default,
    )
    .unwrap();
    want.insert(
        "after-upgrade".into(),
        Some(b"written by format 2".to_vec()),
    );
    c.delete(b"plain-01", Consistency::Default).unwrap();
    want.insert("plain-01".into(), None);
    let reply = c.compact().unwrap();
    assert!(reply.contains("complete 1"), "{reply}");
    check(&mut c, &want);
    assert!(node.terminate().success(), "{}", node.log());

    let shard = data.join("shard-000");
    let formats = segment_formats(&shard);
    assert!(
        formats.iter().all(|(_, f)| *f == FORMAT_VERSION),
        "{formats:?}"
    );
    node.restart();
    let mut c = node.client();
    check(&mut c, &want);
    let log = node.log();
    assert!(!log.contains("corrupt"), "{log}");
    assert!(node.terminate().success());
    let _ = std::fs::remove_dir_all(data.parent().unwrap());
}
