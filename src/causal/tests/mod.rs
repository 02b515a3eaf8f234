//! Golden vectors, the DVV semantics case by case, and the limits; `decode.rs` feeds the
//! decoders bad bytes, `model.rs` runs the seeded randomized model tests.
//!
// golden: (protocol.md quotes these; changing them breaks stored states and clients' contexts)
//   empty context                      010000
//   context {1: 5, 3: 2}               01 0002 0001 0000000000000005 0003 0000000000000002
//   state: vv {1: 2, 2: 1}, siblings (1,2) version 0x12 never expires "a",
//                                    (2,1) version 0x11 expires at 1000 ms "bc"
//     01                                   fmt
//     0002 0001 0000000000000002           n_vv, 1: 2
//          0002 0000000000000001           2: 1
//     0002                                 n_sib
//     0001 0000000000000002 0000000000000012 0000000000000000 00000001 61
//     0002 0000000000000001 0000000000000011 00000000000003e8 00000002 6263
//   its digest (key_hash of those 88 bytes)  0x3f04b462c16c0c80

use super::*;
use crate::limits::{
    CAUSAL_STATE_WRITE_BYTES_MAX, CONTEXT_ACTORS_MAX, SIBLINGS_HARD_MAX, SIBLINGS_MAX,
};

mod decode;
mod model;

const GOLDEN_EMPTY_CONTEXT: &str = "010000";
const GOLDEN_CONTEXT: &str = "0100020001000000000000000500030000000000000002";
const GOLDEN_STATE: &str = concat!(
    "01",
    "0002",
    "00010000000000000002",
    "00020000000000000001",
    "0002",
    "0001000000000000000200000000000000120000000000000000",
    "0000000161",
    "000200000000000000010000000000000011",
    "00000000000003e8",
    "000000026263",
);
const GOLDEN_STATE_DIGEST: u64 = 0x3f04_b462_c16c_0c80;

/// xorshift64* (Vigna): a few lines, seeded, so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn vv(entries: &[(u16, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for &(a, c) in entries {
        v.raise(a, c);
    }
    v
}

fn value(version: u64, expires_at_ms: u64, bytes: &[u8]) -> Option<NewValue> {
    Some(NewValue {
        version,
        expires_at_ms,
        value: bytes.to_vec(),
    })
}

fn encode(s: &CausalState) -> Vec<u8> {
    let mut out = Vec::new();
    s.encode(&mut out);
    out
}

/// A state's bytes written field by field, for encodings `encode` would never produce.
fn raw_state(vector: &[(u16, u64)], siblings: &[(u16, u64, u64, u64, &[u8])]) -> Vec<u8> {
    let mut b = vec![STATE_FORMAT];
    b.extend_from_slice(&(vector.len() as u16).to_be_bytes());
    for &(a, c) in vector {
        b.extend_from_slice(&a.to_be_bytes());
        b.extend_from_slice(&c.to_be_bytes());
    }
    b.extend_from_slice(&(siblings.len() as u16).to_be_bytes());
    for &(a, c, version, expires, v) in siblings {
        b.extend_from_slice(&a.to_be_bytes());
        b.extend_from_slice(&c.to_be_bytes());
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&expires.to_be_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v);
    }
    b
}

/// The golden state, built the way replicas would: two writes at actor 1 (the second with the
/// first's context), one concurrent write at actor 2, then a merge.
fn golden_state() -> CausalState {
    let mut a = CausalState::empty();
    a.update(&VersionVector::new(), 1, value(0x10, 0, b"a"))
        .unwrap();
    let ctx = a.vv().clone();
    a.update(&ctx, 1, value(0x12, 0, b"a")).unwrap();
    let mut b = CausalState::empty();
    b.update(&VersionVector::new(), 2, value(0x11, 1000, b"bc"))
        .unwrap();
    CausalState::merged(&a, &b)
}

/// The invariant, checked through the validating decoder (and the encoding is canonical).
fn check_invariant(s: &CausalState) {
    let bytes = encode(s);
    assert_eq!(bytes.len(), s.encoded_len());
    assert_eq!(&CausalState::decode(&bytes).unwrap(), s);
}

#[test]
fn golden_contexts() {
    let mut out = Vec::new();
    VersionVector::new().encode_context(&mut out);
    assert_eq!(hex(&out), GOLDEN_EMPTY_CONTEXT);
    let ctx = vv(&[(3, 2), (1, 5)]);
    out.clear();
    ctx.encode_context(&mut out);
    assert_eq!(hex(&out), GOLDEN_CONTEXT);
    assert_eq!(out.len(), ctx.encoded_context_len());
    assert_eq!(VersionVector::decode_context(&out).unwrap(), ctx);
    assert_eq!(
        VersionVector::decode_context(&[]).unwrap(),
        VersionVector::new()
    );
    assert_eq!(
        VersionVector::decode_context(&unhex(GOLDEN_EMPTY_CONTEXT)).unwrap(),
        VersionVector::new()
    );
}

#[test]
fn hex_round_trip() {
    let ctx = vv(&[(1, 5), (3, 2)]);
    assert_eq!(ctx.to_hex(), GOLDEN_CONTEXT);
    assert_eq!(VersionVector::from_hex(&ctx.to_hex()).unwrap(), ctx);
    assert_eq!(
        VersionVector::from_hex(&GOLDEN_CONTEXT.to_uppercase()).unwrap(),
        ctx
    );
    assert_eq!(VersionVector::new().to_hex(), GOLDEN_EMPTY_CONTEXT);
    assert_eq!(VersionVector::from_hex("").unwrap(), VersionVector::new());
    for bad in ["0", "01000", "01000g", "zz0000", "0200 0", "010001"] {
        assert!(VersionVector::from_hex(bad).is_err(), "{bad}");
    }
    let long = "0".repeat(2 * crate::limits::CONTEXT_SIZE_MAX + 2);
    assert!(VersionVector::from_hex(&long).is_err());
    // The largest context round-trips.
    let big = vv(&(0..CONTEXT_ACTORS_MAX as u16)
        .map(|a| (a, u64::MAX - a as u64))
        .collect::<Vec<_>>());
    assert_eq!(big.to_hex().len(), 2 * crate::limits::CONTEXT_SIZE_MAX);
    assert_eq!(VersionVector::from_hex(&big.to_hex()).unwrap(), big);
}

#[test]
fn golden_state_encoding() {
    let s = golden_state();
    assert_eq!(
        s.siblings()
            .iter()
            .map(|x| (x.dot, x.version, x.expires_at_ms, x.value.clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                Dot {
                    actor: 1,
                    counter: 2
                },
                0x12,
                0,
                b"a".to_vec()
            ),
            (
                Dot {
                    actor: 2,
                    counter: 1
                },
                0x11,
                1000,
                b"bc".to_vec()
            ),
        ]
    );
    let bytes = encode(&s);
    assert_eq!(hex(&bytes), GOLDEN_STATE);
    assert_eq!(
        bytes,
        raw_state(
            &[(1, 2), (2, 1)],
            &[(1, 2, 0x12, 0, b"a"), (2, 1, 0x11, 1000, b"bc")]
        )
    );
    assert_eq!(bytes.len(), s.encoded_len());
    assert_eq!(CausalState::decode(&bytes).unwrap(), s);
    assert_eq!(s.digest(), GOLDEN_STATE_DIGEST, "{:#018x}", s.digest());
    assert_eq!(encode(&CausalState::empty()), vec![1, 0, 0, 0, 0]);
}

#[test]
fn update_numbers_dots_from_vector_and_context() {
    let mut s = CausalState::empty();
    let d = s.update(&VersionVector::new(), 7, value(1, 0, b"x"));
    assert_eq!(
        d,
        Ok(Some(Dot {
            actor: 7,
            counter: 1
        }))
    );
    // A context that knows more of actor 7 than this replica (it lost data, or the client
    // read elsewhere) moves the counter past it.
    let d = s.update(&vv(&[(7, 5)]), 7, value(2, 0, b"y"));
    assert_eq!(
        d,
        Ok(Some(Dot {
            actor: 7,
            counter: 6
        }))
    );
    assert_eq!(s.siblings().len(), 1);
    assert_eq!(s.vv(), &vv(&[(7, 6)]));
    assert_eq!(s.update(&VersionVector::new(), 7, None), Ok(None));
    check_invariant(&s);
}

#[test]
fn concurrent_writes_become_siblings_and_a_write_with_context_resolves_them() {
    let none = VersionVector::new();
    let mut a = CausalState::empty();
    let mut b = CausalState::empty();
    a.update(&none, 1, value(10, 0, b"from a")).unwrap();
    b.update(&none, 2, value(11, 0, b"from b")).unwrap();
    a.merge(&b);
    b.merge(&a);
    assert_eq!(a, b);
    let values: Vec<&[u8]> = a.live(0).map(|s| &s.value[..]).collect();
    assert_eq!(values, vec![&b"from a"[..], &b"from b"[..]]);

    // A client read both (the context is the merged vector) and writes one value.
    let ctx = a.vv().clone();
    b.update(&ctx, 2, value(12, 0, b"resolved")).unwrap();
    assert_eq!(b.siblings().len(), 1);
    a.merge(&b);
    assert_eq!(a, b);
    assert_eq!(a.siblings()[0].value, b"resolved");
    assert_eq!(a.vv(), &vv(&[(1, 1), (2, 2)]));
    assert!(a.dominates(&b) && b.dominates(&a));
}

#[test]
fn delete_with_context_leaves_a_tombstone_but_not_over_unseen_writes() {
    let none = VersionVector::new();
    let mut a = CausalState::empty();
    a.update(&none, 1, value(10, 0, b"x")).unwrap();
    let ctx = a.vv().clone();
    // Concurrently, at another replica, a write the deleting client never saw.
    let mut b = CausalState::empty();
    b.update(&none, 2, value(11, 0, b"y")).unwrap();

    assert_eq!(a.update(&ctx, 1, None), Ok(None));
    assert_eq!(a.live(0).count(), 0);
    assert!(a.is_tombstone(0));
    assert_eq!(a.vv(), &vv(&[(1, 1)]));
    assert_eq!(a.expires_at_ms(), 0);
    // The tombstone wins over the deleted write wherever it travels...
    let mut stale = CausalState::empty();
    stale.update(&none, 1, value(10, 0, b"x")).unwrap();
    assert!(a.dominates(&stale) && !stale.dominates(&a));
    stale.merge(&a);
    assert!(stale.is_tombstone(0));
    // ...and the unseen write survives it.
    a.merge(&b);
    let values: Vec<&[u8]> = a.live(0).map(|s| &s.value[..]).collect();
    assert_eq!(values, vec![&b"y"[..]]);
}

#[test]
fn expired_siblings_are_hidden_by_live_but_kept_by_merge() {
    let none = VersionVector::new();
    let mut a = CausalState::empty();
    a.update(&none, 1, value(10, 1_000, b"short")).unwrap();
    let mut b = CausalState::empty();
    b.update(&none, 2, value(11, 2_000, b"longer")).unwrap();
    a.merge(&b);
    assert_eq!(a.expires_at_ms(), 2_000);
    assert_eq!(a.live(999).count(), 2);
    assert_eq!(a.live(1_000).count(), 1);
    assert!(!a.is_tombstone(1_999));
    assert!(a.is_tombstone(2_000));
    // A replica that merges long after expiry still takes the siblings in: a merge must not
    // depend on the clock.
    let mut c = CausalState::empty();
    c.merge(&a);
    assert_eq!(c, a);
    assert_eq!(c.siblings().len(), 2);
    assert_eq!(c.live(5_000).count(), 0);
    // One sibling that never expires keeps the state alive for good.
    let mut d = CausalState::empty();
    d.update(&none, 3, value(12, 0, b"forever")).unwrap();
    c.merge(&d);
    assert_eq!(c.expires_at_ms(), 0);
    assert_eq!(CausalState::empty().expires_at_ms(), 0);
}

#[test]
fn the_write_past_the_sibling_limit_is_refused_and_changes_nothing() {
    let none = VersionVector::new();
    let mut s = CausalState::empty();
    for i in 0..SIBLINGS_MAX {
        s.update(&none, 1, value(i as u64, 0, b"v")).unwrap();
    }
    assert_eq!(s.siblings().len(), SIBLINGS_MAX);
    let before = s.clone();
    let err = s.update(&none, 1, value(99, 0, b"v")).unwrap_err();
    assert_eq!(
        err,
        CausalError::TooManySiblings {
            count: SIBLINGS_MAX + 1
        }
    );
    assert_eq!(
        err.to_string(),
        "key has 33 siblings, above the limit of 32: read it and write with its context to \
         resolve them"
    );
    assert_eq!(s, before);
    // A context naming one of them makes room; the whole context resolves them all.
    let one = vv(&[(1, 1)]);
    assert!(s.update(&one, 1, value(100, 0, b"v")).is_ok());
    let all = s.vv().clone();
    s.update(&all, 1, value(101, 0, b"one")).unwrap();
    assert_eq!(s.siblings().len(), 1);
}

#[test]
fn writes_past_the_byte_and_actor_limits_are_refused_and_change_nothing() {
    let none = VersionVector::new();
    let mut s = CausalState::empty();
    let fits =
        CAUSAL_STATE_WRITE_BYTES_MAX - STATE_FIXED_SIZE - VV_ENTRY_SIZE - SIBLING_HEADER_SIZE;
    let mut t = s.clone();
    t.update(&none, 1, value(1, 0, &vec![7; fits])).unwrap();
    assert_eq!(t.encoded_len(), CAUSAL_STATE_WRITE_BYTES_MAX);
    assert_eq!(
        s.update(&none, 1, value(1, 0, &vec![7; fits + 1])),
        Err(CausalError::StateTooLarge {
            bytes: CAUSAL_STATE_WRITE_BYTES_MAX + 1
        })
    );
    assert_eq!(s, CausalState::empty());

    let wide = vv(&(100..100 + CONTEXT_ACTORS_MAX as u16)
        .map(|a| (a, 1))
        .collect::<Vec<_>>());
    let err = s.update(&wide, 1, value(1, 0, b"v")).unwrap_err();
    assert_eq!(
        err,
        CausalError::ContextTooLarge {
            actors: CONTEXT_ACTORS_MAX + 1
        }
    );
    assert!(err.to_string().contains("above the limit of 64"));
    assert_eq!(s, CausalState::empty());
    // At an actor the context already names, it fits.
    assert!(s.update(&wide, 100, value(1, 0, b"v")).is_ok());
    assert_eq!(s.vv().len(), CONTEXT_ACTORS_MAX);

    // A forged context at the counter's end: refused, not wrapped to a reused dot.
    let mut s = CausalState::empty();
    let end = vv(&[(1, u64::MAX)]);
    assert!(matches!(
        s.update(&end, 1, value(1, 0, b"v")),
        Err(CausalError::Malformed(_))
    ));
    assert_eq!(s, CausalState::empty());
}

#[test]
fn merges_of_coordinators_are_bounded_by_the_hard_limits() {
    let none = VersionVector::new();
    let mut total = CausalState::empty();
    for actor in 0..5u16 {
        let mut s = CausalState::empty();
        for i in 0..SIBLINGS_MAX {
            s.update(&none, actor, value(i as u64, 0, b"v")).unwrap();
        }
        total.merge(&s);
        let count = total.siblings().len();
        if count <= SIBLINGS_HARD_MAX {
            assert_eq!(total.check_hard_limits(), Ok(()));
            check_invariant(&total);
        } else {
            assert_eq!(
                total.check_hard_limits(),
                Err(CausalError::TooManySiblings { count })
            );
            assert!(CausalState::decode(&encode(&total)).is_err());
            let message = total.check_hard_limits().unwrap_err().to_string();
            assert!(message.contains("limit of 128"), "{message}");
        }
    }
}
