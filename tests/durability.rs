//! Durability over real processes: `kill -9` and restart must never lose an acknowledged write
//! under `--sync always`, and damaged bytes on disk are reported, never served as data.
//!
//! `DKV_CRASH_CYCLES=N cargo test --test durability` runs the crash loop longer (default 20).

mod common;

use common::{kvcat, temp_dir, wait_for, Node};
use dkv::client::{Client, ClientError};
use dkv::protocol::Consistency;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn kill9_after_1000_puts_with_sync_always() {
    let data = temp_dir("kill9-1000");
    let mut n = Node::start(&data, &["--sync", "always", "--shards", "2"]);
    let input: String = (0..1000)
        .map(|i| format!("PUT key{i} value{i}\n"))
        .collect();
    let out = kvcat(&n.addr, &input);
    assert_eq!(out, "OK\n".repeat(1000));
    n.kill9();
    n.restart();
    let input: String = (0..1000).map(|i| format!("GET key{i}\n")).collect();
    let out = kvcat(&n.addr, &input);
    let expected: String = (0..1000).map(|i| format!("value{i}\n")).collect();
    assert_eq!(out, expected);
}

/// What one writer knows about one key.
#[derive(Clone, Default, Debug)]
struct KeyState {
    /// Last acknowledged value.
    acked: Option<String>,
    /// Writes sent after it whose outcome is unknown (the node died first): any of them may
    /// have landed.
    maybe: Vec<String>,
}

#[test]
fn acknowledged_writes_survive_repeated_kill9() {
    let cycles: usize = std::env::var("DKV_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let data = temp_dir("crash-loop");
    let mut node = Node::start(&data, &["--sync", "always", "--shards", "2"]);
    let addr = node.addr.clone();
    const WRITERS: usize = 4;
    const KEYS_PER_WRITER: usize = 200;
    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicU64::new(0));
    let states: Arc<Mutex<HashMap<String, KeyState>>> = Arc::default();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stop, acked_total, states, addr) = (
                stop.clone(),
                acked_total.clone(),
                states.clone(),
                addr.clone(),
            );
            std::thread::spawn(move || {
                let mut client: Option<Client> = None;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Some(c) = client.as_mut() else {
                        client = Client::connect(addr.as_str()).ok();
                        if client.is_none() {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        continue;
                    };
                    seq += 1;
                    let key = format!("w{w}-k{}", seq as usize % KEYS_PER_WRITER);
                    let value = format!("w{w}-s{seq}");
                    match c.put(key.as_bytes(), value.as_bytes(), 0, Consistency::Default) {
                        Ok(_) => {
                            let mut st = states.lock().unwrap();
                            let e = st.entry(key).or_default();
                            e.acked = Some(value);
                            e.maybe.clear();
                            acked_total.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ClientError::Io(_)) => {
                            states
                                .lock()
                                .unwrap()
                                .entry(key)
                                .or_default()
                                .maybe
                                .push(value);
                            client = None;
                        }
                        Err(e) => panic!("unexpected error from a healthy node: {e}"),
                    }
                }
            })
        })
        .collect();

    for cycle in 0..cycles {
        // Let a fresh batch of writes be acknowledged, then crash mid-stream.
        let target = acked_total.load(Ordering::Relaxed) + 150;
        wait_for(Duration::from_secs(60), "writes to be acknowledged", || {
            (acked_total.load(Ordering::Relaxed) >= target).then_some(())
        });
        node.kill9();
        node.restart();
        eprintln!(
            "cycle {cycle}: {} writes acknowledged so far",
            acked_total.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread");
    }
    // One more crash with nothing in flight, then read everything back.
    node.kill9();
    node.restart();
    let mut c = node.client();
    let states = states.lock().unwrap();
    let (mut checked, mut maybe_present) = (0, 0);
    for (key, st) in states.iter() {
        let got = c
            .get(key.as_bytes(), Consistency::Default)
            .unwrap()
            .map(|(_, v)| String::from_utf8(v).unwrap());
        let unacked = got.as_ref().is_some_and(|g| st.maybe.contains(g));
        assert!(
            got == st.acked || unacked,
            "{key}: read {got:?}, acknowledged {st:?}"
        );
        if unacked {
            maybe_present += 1;
        }
        checked += 1;
    }
    eprintln!(
        "{cycles} kill -9 cycles: {} acknowledged writes, {checked} keys checked, 0 lost, {maybe_present} unacknowledged writes present",
        acked_total.load(Ordering::Relaxed)
    );
    assert!(checked > 0);
}

fn sealed_segments(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    // The newest segment is the active one; every other one is sealed.
    segs.pop();
    segs
}

#[test]
fn flipped_bytes_in_a_sealed_segment_are_reported_not_served() {
    let data = temp_dir("bitflip");
    let mut node = Node::start(
        &data,
        &["--shards", "1", "--segment-size-mb", "1", "--sync", "never"],
    );
    let value = |i: usize| format!("{i:06}-{}", "x".repeat(1000));
    let mut c = node.client();
    for i in 0..3000 {
        c.put(
            format!("key{i}").as_bytes(),
            value(i).as_bytes(),
            0,
            Consistency::Default,
        )
        .unwrap();
    }
    drop(c);
    assert!(node.terminate().success());
    let shard_dir = data.join("shard-000");
    let sealed = sealed_segments(&shard_dir);
    assert!(
        !sealed.is_empty(),
        "3 MB of writes sealed some 1 MB segments"
    );
    // Damage the middle of the first sealed segment.
    let victim = &sealed[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5A;
    }
    std::fs::write(victim, &bytes).unwrap();

    node.restart();
    let mut c = node.client();
    let (mut good, mut errors) = (0, 0);
    for i in 0..3000 {
        match c.get(format!("key{i}").as_bytes(), Consistency::Default) {
            Ok(Some((_, v))) => {
                assert_eq!(v, value(i).as_bytes(), "key{i}: damaged data served");
                good += 1;
            }
            Ok(None) => errors += 1,
            Err(e) => {
                assert_eq!(
                    e.status(),
                    Some(dkv::protocol::Status::StorageError),
                    "key{i}: {e}"
                );
                errors += 1;
            }
        }
    }
    assert!(errors >= 1, "the damaged record is not served");
    assert!(good >= 2900, "the rest is still served ({good} good)");
    // Reported: in STATS or in the log, with the segment and offset.
    let stats = c.stats().unwrap();
    let log = node.log();
    let counted = stats
        .lines()
        .any(|l| l.starts_with("storage_corrupt_records ") && l != "storage_corrupt_records 0");
    assert!(
        counted || log.contains("corrupt"),
        "corruption reported; stats: {stats}"
    );
}
