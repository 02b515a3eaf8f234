//! Sealed segments are read through memory maps (storage/mmap.rs). A segment cut short or
//! damaged under a *running* node must give STORAGE_ERROR (or, once forgotten for repair,
//! NOT_FOUND) for exactly the keys it lost, never a crash (SIGBUS) and never wrong data,
//! while every other key is still served and writes still work.

mod common;

use common::{temp_dir, Node};
use dkv::client::Client;
use dkv::protocol::{Consistency, Status};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const KEYS: usize = 3000;

fn value(i: usize) -> String {
    format!("{i:06}-{}", "x".repeat(1000))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// Keys whose value bytes lie (partly) in `from..until` of `bytes` (a segment's contents).
fn keys_in(bytes: &[u8], from: usize, until: usize) -> Vec<usize> {
    // A value starts with its unique 6-digit number and a dash, then 'x's.
    let len = value(0).len();
    let mut keys = Vec::new();
    for at in 0..bytes.len().saturating_sub(8) {
        let w = &bytes[at..at + 8];
        if w[6] == b'-' && w[7] == b'x' && w[..6].iter().all(u8::is_ascii_digit) {
            let i: usize = std::str::from_utf8(&w[..6]).unwrap().parse().unwrap();
            if i < KEYS && at + len > from && at < until {
                keys.push(i);
            }
        }
    }
    keys.sort_unstable();
    keys
}

enum Read {
    Value,
    Lost,
}

fn read(c: &mut Client, i: usize) -> Read {
    match c.get(format!("key{i}").as_bytes(), Consistency::Default) {
        Ok(Some((_, v))) => {
            assert_eq!(v, value(i).as_bytes(), "key{i}: wrong data served");
            Read::Value
        }
        Ok(None) => Read::Lost,
        Err(e) => {
            assert_eq!(e.status(), Some(Status::StorageError), "key{i}: {e}");
            Read::Lost
        }
    }
}

#[test]
fn a_mapped_segment_cut_short_or_damaged_under_a_running_node_loses_only_its_keys() {
    let data = temp_dir("mapped-cut");
    let mut node = Node::start(
        &data,
        &["--shards", "1", "--segment-size-mb", "1", "--sync", "never"],
    );
    let mut c = node.client();
    for i in 0..KEYS {
        c.put(
            format!("key{i}").as_bytes(),
            value(i).as_bytes(),
            0,
            Consistency::Default,
        )
        .unwrap();
    }
    // Every key read once: the sealed segments are mapped and their pages touched.
    for i in 0..KEYS {
        assert!(matches!(read(&mut c, i), Read::Value));
    }
    let shard_dir = data.join("shard-000");
    let segs = segments(&shard_dir);
    assert!(segs.len() >= 3, "3 MB of writes sealed 1 MB segments");
    let (cut_seg, flip_seg) = (&segs[0], &segs[1]);

    // Cut the first sealed segment to a third: its later records are gone, and the pages
    // past the new end raise SIGBUS when the map is read there.
    let bytes = std::fs::read(cut_seg).unwrap();
    let cut = bytes.len() / 3;
    let lost_cut = keys_in(&bytes, cut, usize::MAX);
    std::fs::OpenOptions::new()
        .write(true)
        .open(cut_seg)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    // Flip bytes in the middle of the second one, in place (the map shows the change).
    let bytes = std::fs::read(flip_seg).unwrap();
    let mid = bytes.len() / 2;
    let lost_flip = keys_in(&bytes, mid, mid + 16);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(flip_seg)
        .unwrap();
    f.seek(SeekFrom::Start(mid as u64)).unwrap();
    let flipped: Vec<u8> = bytes[mid..mid + 16].iter().map(|b| b ^ 0x5A).collect();
    f.write_all(&flipped).unwrap();
    drop(f);
    assert!(lost_cut.len() > 100, "the cut took many records");
    assert!(!lost_flip.is_empty());

    // Twice: first the damage is found (STORAGE_ERROR, or already forgotten by the scrub),
    // then the forgotten keys read as absent; never a crash, never wrong data.
    for round in 0..2 {
        let mut lost = Vec::new();
        for i in 0..KEYS {
            if let Read::Lost = read(&mut c, i) {
                lost.push(i);
            }
        }
        let mut expected: Vec<usize> = lost_cut.iter().chain(&lost_flip).copied().collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(
            lost, expected,
            "round {round}: exactly the damaged keys are lost"
        );
        assert!(node.is_running(), "the node survived the truncated map");
    }
    assert!(
        node.log().contains("shorter than its memory map"),
        "a read met the cut through the map (SIGBUS handled)"
    );
    // Writes still work, and a lost key can be written again (as a repair would).
    let lost_key = format!("key{}", lost_cut[0]);
    c.put(lost_key.as_bytes(), b"again", 0, Consistency::Default)
        .unwrap();
    assert_eq!(
        c.get(lost_key.as_bytes(), Consistency::Default)
            .unwrap()
            .unwrap()
            .1,
        b"again"
    );
    // The storage figures are published on the shard's maintenance ticks: poll.
    common::wait_for(
        std::time::Duration::from_secs(10),
        "STATS to count the corrupt records",
        || {
            let stats = c.stats().ok()?;
            stats
                .lines()
                .any(|l| {
                    l.starts_with("storage_corrupt_records ") && l != "storage_corrupt_records 0"
                })
                .then_some(())
        },
    );
    drop(c);
    assert!(node.terminate().success());
}
