//! Unit tests of the peer frames: encodings, decoders and their refusals.

use super::*;
use crate::protocol::{Request, Response};

fn as_request(bytes: &[u8]) -> Result<PeerRequest<'_>, PeerError> {
    let (f, n) = frame::parse(bytes).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    match Request::decode(&f).unwrap() {
        Request::Peer { op, aux, body } => PeerRequest::decode(op, aux, body),
        other => panic!("not a peer request: {other:?}"),
    }
}

fn as_reply(bytes: &[u8]) -> Result<PeerReply, PeerError> {
    let (f, _) = frame::parse(bytes).unwrap().unwrap();
    let r = Response::from_frame(&f).unwrap();
    PeerReply::decode(f.op, r.status, r.body)
}

#[test]
fn replicate_round_trips() {
    for (value, aux) in [
        (Some(&b"v"[..]), 0),
        (None, AUX_HINT),
        (Some(&b""[..]), AUX_REPAIR),
    ] {
        let w = Write {
            key: b"key",
            value,
            version: Version(0x0102_0304_0506_0708),
            expires_at_ms: 99,
            causal: false,
        };
        let mut out = Vec::new();
        put_replicate(&mut out, 5, aux, 42, &w);
        assert_eq!(
            as_request(&out).unwrap(),
            PeerRequest::Replicate {
                write: w,
                aux,
                ring: 42
            }
        );
    }
}

#[test]
fn causal_records_keep_their_flag_on_the_wire() {
    // Siblings mode: REPLICATE flags bit 1, READ reply state 4.
    let w = Write {
        key: b"key",
        value: Some(b"state"),
        version: Version(77),
        expires_at_ms: 0,
        causal: true,
    };
    let mut out = Vec::new();
    put_replicate(&mut out, 5, 0, 42, &w);
    assert_eq!(
        out[out.len() - 6],
        FLAG_CAUSAL,
        "the flags byte before the value"
    );
    assert_eq!(
        as_request(&out).unwrap(),
        PeerRequest::Replicate {
            write: w,
            aux: 0,
            ring: 42
        }
    );
    // A tombstone cannot be causal (a causal state is always a value).
    let n = out.len();
    out[n - 6] = FLAG_CAUSAL | FLAG_TOMBSTONE;
    assert!(as_request(&out).is_err());
    let stored = Stored {
        version: Version(9),
        expires_at_ms: 1,
        value: Some(b"state".to_vec()),
        causal: true,
    };
    let mut out = Vec::new();
    put_read_reply(&mut out, 3, &Ok(Some(stored.clone())));
    assert_eq!(as_reply(&out).unwrap(), PeerReply::Read(Ok(Some(stored))));
}

#[test]
fn replicate_golden_bytes() {
    let mut out = Vec::new();
    let w = Write {
        key: b"k",
        value: Some(b"v"),
        version: Version(7),
        expires_at_ms: 0,
        causal: false,
    };
    put_replicate(&mut out, 1, 0, 3, &w);
    let expect: Vec<u8> = [
        &[0, 0, 0, 35, 0x20, 0, 0, 0, 0, 1][..],
        &[0, 0, 0, 0, 0, 0, 0, 3],
        &[0, 1, b'k'],
        &[0, 0, 0, 0, 0, 0, 0, 7],
        &[0; 8],
        &[0, b'v'],
    ]
    .concat();
    assert_eq!(out, expect);
}

#[test]
fn acks_and_reads_round_trip() {
    for ack in [
        WriteAck::Done(Applied::Stored),
        WriteAck::Done(Applied::Stale {
            current: Version(42),
        }),
    ] {
        let mut out = Vec::new();
        put_write_ack(&mut out, 3, &ack);
        assert_eq!(as_reply(&out).unwrap(), PeerReply::Write(ack));
    }
    let mut out = Vec::new();
    put_write_ack(&mut out, 3, &WriteAck::Refused("disk full".into()));
    match as_reply(&out).unwrap() {
        PeerReply::Write(WriteAck::Refused(m)) => assert!(m.contains("disk full")),
        other => panic!("{other:?}"),
    }

    let records = [
        Ok(None),
        Ok(Some(Stored {
            version: Version(9),
            expires_at_ms: 5,
            value: Some(b"hello".to_vec()),
            causal: false,
        })),
        Ok(Some(Stored {
            version: Version(10),
            expires_at_ms: 0,
            value: None,
            causal: false,
        })),
        Ok(Some(Stored {
            version: Version(11),
            expires_at_ms: 0,
            value: Some(Vec::new()),
            causal: false,
        })),
    ];
    for r in records {
        let mut out = Vec::new();
        put_read_reply(&mut out, 4, &r);
        assert_eq!(as_reply(&out).unwrap(), PeerReply::Read(r));
    }
    let mut out = Vec::new();
    for version_only in [false, true] {
        out.clear();
        put_read(&mut out, 8, 9, b"abc", version_only);
        assert_eq!(
            as_request(&out).unwrap(),
            PeerRequest::Read {
                key: b"abc",
                ring: 9,
                version_only
            }
        );
    }
    // A version-only answer: the version held, or absent; never a value.
    out.clear();
    put_read_version_reply(&mut out, 4, &Ok(Some(Version(7))));
    assert_eq!(as_reply(&out).unwrap(), PeerReply::ReadVersion(Version(7)));
    out.clear();
    put_read_version_reply(&mut out, 4, &Ok(None));
    assert_eq!(as_reply(&out).unwrap(), PeerReply::Read(Ok(None)));
    // READ aux bits other than version-only are refused.
    out.clear();
    put_read(&mut out, 8, 9, b"abc", false);
    out[5] = 0x02;
    assert!(as_request(&out).is_err());
    // A refusal for a stale ring, of either request, carries the replica's ring version.
    for op in [op::REPLICATE, op::READ] {
        out.clear();
        put_stale_ring(&mut out, op, 8, 77);
        assert_eq!(
            as_reply(&out).unwrap(),
            PeerReply::StaleRing { op, ring: 77 }
        );
    }
}

#[test]
fn gossip_round_trips() {
    let entries = vec![
        GossipEntry {
            node_id: 1,
            incarnation: 1_700_000_000_000,
            heartbeat: 5,
            state: NodeState::Alive,
            ring_version: 7,
            addr: Some("127.0.0.1:7001".parse().unwrap()),
        },
        GossipEntry {
            node_id: 2,
            incarnation: 0,
            heartbeat: 0,
            state: NodeState::Failed,
            ring_version: 0,
            addr: None,
        },
        GossipEntry {
            node_id: 3,
            incarnation: 9,
            heartbeat: 1,
            state: NodeState::Alive,
            ring_version: u64::MAX,
            addr: Some("[2001:db8::1]:65535".parse().unwrap()),
        },
    ];
    let mut out = Vec::new();
    let stamp = ClockStamp {
        sent_ms: 1_700_000_000_123,
        echo_ms: 0,
    };
    put_gossip(&mut out, 1, 1, &entries, stamp);
    assert_eq!(
        as_request(&out).unwrap(),
        PeerRequest::Gossip {
            sender: 1,
            entries: entries.clone(),
            clock: Some(stamp),
        }
    );
    // A node from before the clock stamp sends 21-byte entries and no stamp; one from
    // before the address, 21-byte entries and the stamp: both still understood, with no
    // ring version and no address.
    let body = &out[10..];
    let mut old = body[..6].to_vec();
    for e in body[6..6 + 3 * GOSSIP_ENTRY_SIZE].chunks(GOSSIP_ENTRY_SIZE) {
        old.extend_from_slice(&e[..GOSSIP_ENTRY_SIZE_OLD]);
    }
    let old_entries: Vec<GossipEntry> = entries
        .iter()
        .map(|e| GossipEntry {
            ring_version: 0,
            addr: None,
            ..*e
        })
        .collect();
    let decoded = PeerRequest::decode(out[4], out[5], &old).unwrap();
    assert_eq!(
        decoded,
        PeerRequest::Gossip {
            sender: 1,
            entries: old_entries.clone(),
            clock: None,
        }
    );
    old.extend_from_slice(&body[body.len() - CLOCK_STAMP_SIZE..]);
    let decoded = PeerRequest::decode(out[4], out[5], &old).unwrap();
    assert_eq!(
        decoded,
        PeerRequest::Gossip {
            sender: 1,
            entries: old_entries,
            clock: Some(stamp),
        }
    );
    // Address bytes that are no address are refused.
    for (at, b) in [(6 + 29, 5u8), (6 + 29, 0), (6 + 30 + 6, 1)] {
        let mut g = body.to_vec();
        g[at] = b;
        assert!(PeerRequest::decode(out[4], out[5], &g).is_err(), "{at} {b}");
    }
    out.clear();
    let echo = ClockStamp {
        sent_ms: 5,
        echo_ms: 1_700_000_000_123,
    };
    put_gossip_reply(&mut out, 1, 2, &entries, echo);
    assert_eq!(
        as_reply(&out).unwrap(),
        PeerReply::Gossip {
            sender: 2,
            entries,
            clock: Some(echo),
        }
    );
}

/// A newer node's gossip, whose entries carry fields this node does not know after the
/// 48 it does, is understood (rolling upgrades): the extra bytes are skipped.
#[test]
fn gossip_entries_with_unknown_trailing_bytes_are_accepted() {
    let entries = [
        GossipEntry {
            node_id: 1,
            incarnation: 1_764_000_000_000,
            heartbeat: 42,
            state: NodeState::Alive,
            ring_version: 3,
            addr: Some("10.0.0.1:7001".parse().unwrap()),
        },
        GossipEntry {
            node_id: 3,
            incarnation: 1_763_999_000_000,
            heartbeat: 7,
            state: NodeState::Failed,
            ring_version: 2,
            addr: None,
        },
    ];
    let stamp = ClockStamp {
        sent_ms: 1_764_000_000_500,
        echo_ms: 0,
    };
    let mut out = Vec::new();
    put_gossip(&mut out, 9, 1, &entries, stamp);
    let body = &out[10..];
    for extra in [1usize, 4, 21, 300] {
        // The same view as a newer node would send it: `extra` unknown bytes per entry.
        let mut newer = body[..6].to_vec();
        for e in body[6..6 + 2 * GOSSIP_ENTRY_SIZE].chunks(GOSSIP_ENTRY_SIZE) {
            newer.extend_from_slice(e);
            newer.extend((0..extra).map(|i| i as u8 ^ 0xA5));
        }
        newer.extend_from_slice(&body[6 + 2 * GOSSIP_ENTRY_SIZE..]);
        let expect = PeerRequest::Gossip {
            sender: 1,
            entries: entries.to_vec(),
            clock: Some(stamp),
        };
        assert_eq!(
            PeerRequest::decode(op::GOSSIP, 0, &newer),
            Ok(expect),
            "{extra} extra bytes per entry"
        );
        let reply = PeerReply::decode(op::GOSSIP | RESPONSE_BIT, 0, &newer).unwrap();
        assert!(matches!(reply, PeerReply::Gossip { entries: ref e, .. } if e == &entries));
        // Bytes that do not split into `count` equal entries are still refused.
        let mut ragged = newer.clone();
        ragged.insert(6, 0);
        assert!(PeerRequest::decode(op::GOSSIP, 0, &ragged).is_err());
    }
    // Entries shorter than 21 bytes are not a layout: refused.
    let mut short = body[..6].to_vec();
    for e in body[6..6 + 2 * GOSSIP_ENTRY_SIZE].chunks(GOSSIP_ENTRY_SIZE) {
        short.extend_from_slice(&e[..GOSSIP_ENTRY_SIZE_OLD - 1]);
    }
    short.extend_from_slice(&body[6 + 2 * GOSSIP_ENTRY_SIZE..]);
    assert!(PeerRequest::decode(op::GOSSIP, 0, &short).is_err());
    // No entries: only the header and the stamp.
    let mut empty = Vec::new();
    put_gossip(&mut empty, 9, 1, &[], stamp);
    assert!(PeerRequest::decode(op::GOSSIP, 0, &empty[10..]).is_ok());
    let mut junk = empty[10..].to_vec();
    junk.insert(6, 0);
    assert!(PeerRequest::decode(op::GOSSIP, 0, &junk).is_err());
}

/// Every prefix and every single-byte corruption of valid bodies decodes to a value or an
/// error, never a panic; truncations are errors.
#[test]
fn truncated_and_garbage_bodies_are_errors() {
    let mut frames = Vec::new();
    let mut out = Vec::new();
    put_replicate(
        &mut out,
        1,
        0,
        5,
        &Write {
            key: b"key",
            value: Some(b"value"),
            version: Version(1),
            expires_at_ms: 0,
            causal: false,
        },
    );
    frames.push(out.clone());
    out.clear();
    put_read(&mut out, 1, 5, b"key", true);
    frames.push(out.clone());
    out.clear();
    let e = GossipEntry {
        node_id: 1,
        incarnation: 2,
        heartbeat: 3,
        state: NodeState::Alive,
        ring_version: 4,
        addr: Some("127.0.0.1:7001".parse().unwrap()),
    };
    put_gossip(&mut out, 1, 1, &[e, e], ClockStamp::default());
    frames.push(out.clone());
    for f in &frames {
        let (op, aux, body) = (f[4], f[5], &f[10..]);
        assert!(PeerRequest::decode(op, aux, body).is_ok());
        for cut in 0..body.len() {
            let r = PeerRequest::decode(op, aux, &body[..cut]);
            // A READ or REPLICATE cut inside the value can still be a valid shorter
            // request; everything cut before the fixed fields must fail.
            // A GOSSIP cut to 21 bytes per entry is a stamp-less (older) frame, and one
            // cut to a whole number of 21 or more bytes per entry before the stamp's 16
            // decodes as a stamped one: both are layouts, their bytes are checked later.
            let gossip_cut = op == op::GOSSIP && {
                let rest = cut.saturating_sub(6);
                let stamped = rest.checked_sub(CLOCK_STAMP_SIZE);
                rest != 2 * GOSSIP_ENTRY_SIZE_OLD
                    && !stamped.is_some_and(|n| n % 2 == 0 && n / 2 >= GOSSIP_ENTRY_SIZE_OLD)
            };
            if gossip_cut || cut < 2 + 3 + if op == op::REPLICATE { 17 } else { 0 } {
                assert!(r.is_err(), "op {op:#x} cut at {cut} decoded: {r:?}");
            }
        }
        for i in 0..body.len() {
            for b in [0u8, 0xFF, 0x80, 1] {
                let mut g = body.to_vec();
                g[i] = b;
                let _ = PeerRequest::decode(op, aux, &g);
                let _ = PeerReply::decode(op | RESPONSE_BIT, 0, &g);
            }
        }
    }
    assert!(matches!(
        PeerRequest::decode(0x3E, 0, &[]),
        Err(PeerError::UnknownOp(0x3E))
    ));
    assert!(PeerRequest::decode(op::READ, 1, &[0, 1, b'k']).is_err());
    assert!(PeerReply::decode(op::REPLICATE | RESPONSE_BIT, 0, &[0; 3]).is_err());
    assert!(PeerReply::decode(op::READ | RESPONSE_BIT, 0, &[7; 17]).is_err());
    assert!(PeerReply::decode(op::READ | RESPONSE_BIT, 0xEE, &[]).is_err());
}
