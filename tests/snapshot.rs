//! Snapshots against real `kvd` processes (protocol.md § 11.4): SNAPSHOT TAKE while a writer
//! keeps writing, then writes after it; `kvd --restore` into a fresh directory serves exactly
//! the snapshot (every earlier write with its earlier value, nothing written after it); LIST
//! and DELETE; a damaged snapshot file is refused by the restore; bad names and duplicates get
//! clear errors; a node without a token but reached from loopback may take snapshots.

mod common;

use common::{kvcat, temp_dir, Node};
use dkv::protocol::{Consistency, Status};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const KEYS: usize = 20_000;
const SHARDS: &str = "2";

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

#[test]
fn snapshot_then_restore_reads_back_exactly_the_snapshot() {
    let dir = temp_dir("snapshot");
    let data = dir.join("node");
    let node = Node::start(&data, &["--shards", SHARDS]);
    let mut c = node.client();
    for i in 0..KEYS {
        c.put(&key(i), b"before", 0, Consistency::Default)
            .expect("PUT");
    }
    c.delete(&key(0), Consistency::Default).expect("DELETE");

    // A writer on other keys keeps going while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let mut w = node.client();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                w.put(
                    format!("busy-{i}").as_bytes(),
                    b"x",
                    0,
                    Consistency::Default,
                )
                .expect("writes continue during the snapshot");
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    while written.load(Ordering::Relaxed) < 100 {
        std::thread::yield_now();
    }
    let during = written.load(Ordering::Relaxed);
    let reply = c.snapshot("TAKE s1").expect("SNAPSHOT TAKE");
    let after_reply = written.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    eprintln!("{reply}");
    assert!(reply.starts_with("snapshot s1 taken: 2 shards"), "{reply}");
    assert!(
        after_reply > during,
        "no write went through while the snapshot was taken"
    );

    // After the snapshot: new keys, changed values, a deleted key back.
    for i in 0..100 {
        c.put(
            format!("after-{i}").as_bytes(),
            b"new",
            0,
            Consistency::Default,
        )
        .expect("PUT after");
    }
    c.put(&key(1), b"changed", 0, Consistency::Default)
        .expect("PUT");
    c.put(&key(0), b"revived", 0, Consistency::Default)
        .expect("PUT");
    c.delete(&key(2), Consistency::Default).expect("DELETE");

    // Errors: a taken name, a bad name, an unknown command.
    let err = c.snapshot("TAKE s1").expect_err("a name taken");
    assert_eq!(err.status(), Some(Status::BadRequest), "{err}");
    let err = c.snapshot("TAKE ../x").expect_err("a bad name");
    assert_eq!(err.status(), Some(Status::BadRequest), "{err}");
    let err = c.snapshot("FROB").expect_err("unknown");
    assert_eq!(err.status(), Some(Status::BadRequest), "{err}");

    // kvcat lists it, and takes another one.
    let out = kvcat(&node.addr, "SNAPSHOT LIST\nSNAPSHOT s2\nSNAPSHOTS\n");
    assert!(
        out.lines()
            .next()
            .unwrap_or("")
            .starts_with("s1 taken_at_ms="),
        "{out}"
    );
    assert!(out.contains("snapshot s2 taken"), "{out}");
    assert!(
        out.lines().filter(|l| l.starts_with("s2 ")).count() == 1,
        "{out}"
    );

    // Restore s1 into a fresh directory and read it back.
    let snap = data.join("snapshots").join("s1");
    let restored = Node::start(
        &dir.join("restored"),
        &[
            "--shards",
            SHARDS,
            "--restore",
            snap.to_str().expect("path"),
        ],
    );
    let mut r = restored.client();
    assert_eq!(r.get(&key(0), Consistency::Default).expect("GET"), None);
    for i in 1..KEYS {
        let got = r.get(&key(i), Consistency::Default).expect("GET");
        assert_eq!(
            got.map(|(_, v)| v),
            Some(b"before".to_vec()),
            "key {i} after the restore"
        );
    }
    for i in 0..100 {
        let got = r
            .get(format!("after-{i}").as_bytes(), Consistency::Default)
            .expect("GET");
        assert_eq!(got, None, "after-{i} was written after the snapshot");
    }
    // Every write acknowledged before the request is in it.
    for i in 0..during {
        let got = r
            .get(format!("busy-{i}").as_bytes(), Consistency::Default)
            .expect("GET");
        assert!(
            got.is_some(),
            "busy-{i} was acknowledged before the snapshot"
        );
    }
    // The restored node is a working node.
    r.put(b"fresh", b"1", 0, Consistency::Default).expect("PUT");

    // DELETE; LIST then shows only s2.
    let out = kvcat(
        &node.addr,
        "SNAPSHOT DELETE s1\nSNAPSHOT LIST\nSNAPSHOT DELETE s1\n",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "snapshot s1 deleted", "{out}");
    assert!(lines[1].starts_with("s2 taken_at_ms="), "{out}");
    assert!(lines[2].starts_with("ERR NOT_FOUND"), "{out}");
    assert!(!snap.exists());

    // A damaged file in s2: the restore refuses it, naming the file.
    let s2 = data.join("snapshots").join("s2").join("shard-000");
    let seg = std::fs::read_dir(&s2)
        .expect("s2 shard dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment in s2");
    // Break the link first: the snapshot's file is the live store's file too.
    let bytes = std::fs::read(&seg).expect("read");
    std::fs::remove_file(&seg).expect("unlink");
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&seg, &bad).expect("write");
    let fresh = dir.join("fresh");
    let out = Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args(["--data", fresh.to_str().expect("path"), "--shards", SHARDS])
        .args(["--listen", "127.0.0.1:0", "--restore"])
        .arg(data.join("snapshots").join("s2"))
        .output()
        .expect("run kvd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CRC32C") && err.contains(".seg"), "{err}");
    node.client().ping().expect("the node still serves");
}

/// `SNAPSHOT name ALL` through kvcat takes the snapshot on every node of the ring, each in
/// its own data directory, with the admin token kvcat was given.
#[test]
fn snapshot_all_reaches_every_node() {
    let nodes = common::start_nodes("snapshot-all", &[1, 1, 1], 3, &["--admin-token", "adm"]);
    common::wait_alive(&nodes[0], 3, &[1, 2, 3], std::time::Duration::from_secs(30));
    let mut c = nodes[0].client();
    c.put(b"k", b"v", 0, Consistency::All).expect("PUT");
    let out = Command::new(env!("CARGO_BIN_EXE_kvcat"))
        .args(["--token", "adm", &nodes[0].addr])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"SNAPSHOT every ALL\n")?;
            child.wait_with_output()
        })
        .expect("kvcat");
    let text = String::from_utf8_lossy(&out.stdout);
    for id in 1..=3 {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("node {id}: snapshot every taken"))),
            "node {id}: {text}"
        );
    }
    for n in &nodes {
        let marker = n.data.join("snapshots").join("every").join("SNAPSHOT");
        assert!(marker.exists(), "{}", marker.display());
    }
    // Without the token every node refuses.
    let text = kvcat(&nodes[0].addr, "SNAPSHOT again ALL\n");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("ERR UNAUTHORIZED"))
            .count(),
        3,
        "{text}"
    );
}
