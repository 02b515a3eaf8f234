//! The slow-request log against a real `kvd` (`--slow-ms`).

mod common;

use common::{temp_dir, Node};
use dkv::protocol::Consistency;

const KEYS: usize = 20_000;

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// The slow-request log (`--slow-ms`): a COMPACT that takes several maintenance ticks (tens
/// of thousands of dead records, a bounded budget per tick) is logged with its opcode and
/// where its time went; quick requests are not.
#[test]
fn slow_requests_are_logged() {
    let dir = temp_dir("slow-log");
    let node = Node::start(&dir, &["--shards", "1", "--slow-ms", "50"]);
    let mut c = node.client();
    for round in 0..3 {
        for i in 0..KEYS {
            c.put(
                &key(i),
                format!("v{round}").as_bytes(),
                0,
                Consistency::Default,
            )
            .expect("PUT");
        }
    }
    let log = node.log();
    assert!(!log.contains("slow request: PUT"), "{log}");
    let text = c.compact().expect("COMPACT");
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("slow request: COMPACT"))
        .unwrap_or_else(|| panic!("no slow COMPACT line ({text}); log:\n{log}"));
    assert!(
        line.contains("ms: queued") && line.contains("waiting"),
        "{line}"
    );
}
