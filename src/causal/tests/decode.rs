//! Decoding untrusted bytes: every truncation and every bad field is an error.

use super::*;
use crate::limits::{CAUSAL_STATE_BYTES_MAX, CONTEXT_ACTORS_MAX, SIBLINGS_HARD_MAX};

#[test]
fn decode_rejects_every_truncation_and_bad_field() {
    let good = unhex(GOLDEN_STATE);
    assert!(CausalState::decode(&good).is_ok());
    for len in 0..good.len() {
        assert!(CausalState::decode(&good[..len]).is_err(), "length {len}");
    }
    let ctx = unhex(GOLDEN_CONTEXT);
    for len in 1..ctx.len() {
        assert!(
            VersionVector::decode_context(&ctx[..len]).is_err(),
            "length {len}"
        );
    }

    let mut trailing = good.clone();
    trailing.push(0);
    let mut ctx_trailing = ctx.clone();
    ctx_trailing.push(0);
    let mut bad_fmt = good.clone();
    bad_fmt[0] = 2;
    let mut ctx_bad_fmt = ctx.clone();
    ctx_bad_fmt[0] = 0;
    let mut huge_value = good.clone();
    // The first sibling's value length (after 1 + 2 + 20 + 2 + 26 bytes) set to 2^32 - 1.
    huge_value[51..55].copy_from_slice(&[0xff; 4]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("trailing byte", trailing),
        ("format 2", bad_fmt),
        ("value length past the end", huge_value),
        (
            "vector unsorted",
            raw_state(&[(2, 1), (1, 2)], &[(1, 2, 0, 0, b"")]),
        ),
        (
            "vector duplicate actor",
            raw_state(&[(1, 1), (1, 2)], &[(1, 1, 0, 0, b"")]),
        ),
        ("vector zero counter", raw_state(&[(1, 0)], &[])),
        (
            "dot above the vector",
            raw_state(&[(1, 2), (2, 1)], &[(1, 3, 0, 0, b"")]),
        ),
        (
            "dot of an actor not in the vector",
            raw_state(&[(1, 2)], &[(3, 1, 0, 0, b"")]),
        ),
        (
            "dot counter zero",
            raw_state(&[(1, 2)], &[(1, 0, 0, 0, b"")]),
        ),
        (
            "duplicate dots",
            raw_state(&[(1, 2)], &[(1, 2, 0, 0, b"a"), (1, 2, 0, 0, b"a")]),
        ),
        (
            "unsorted dots",
            raw_state(&[(1, 2), (2, 1)], &[(2, 1, 0, 0, b""), (1, 2, 0, 0, b"")]),
        ),
        (
            "too many actors",
            raw_state(
                &(0..=CONTEXT_ACTORS_MAX as u16)
                    .map(|a| (a, 1))
                    .collect::<Vec<_>>(),
                &[],
            ),
        ),
        (
            "too many siblings",
            raw_state(
                &[(1, 1000)],
                &(1..=SIBLINGS_HARD_MAX as u64 + 1)
                    .map(|c| (1, c, 0, 0, &b""[..]))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "too many bytes",
            raw_state(
                &[(1, 1)],
                &[(1, 1, 0, 0, &vec![0; CAUSAL_STATE_BYTES_MAX][..])],
            ),
        ),
    ];
    for (what, bytes) in &cases {
        assert!(CausalState::decode(bytes).is_err(), "{what}");
    }
    assert!(matches!(
        CausalState::decode(&cases[11].1),
        Err(CausalError::ContextTooLarge { actors: 65 })
    ));
    assert!(matches!(
        CausalState::decode(&cases[12].1),
        Err(CausalError::TooManySiblings { count: 129 })
    ));
    assert!(matches!(
        CausalState::decode(&cases[13].1),
        Err(CausalError::StateTooLarge { .. })
    ));

    let ctx_cases: Vec<(&str, Vec<u8>)> = vec![
        ("trailing byte", ctx_trailing),
        ("format 0", ctx_bad_fmt),
        (
            "unsorted",
            unhex("0100020003000000000000000200010000000000000005"),
        ),
        (
            "duplicate",
            unhex("0100020001000000000000000500010000000000000006"),
        ),
        ("zero counter", unhex("01000100010000000000000000")),
        ("a state is not a context", good.clone()),
    ];
    for (what, bytes) in &ctx_cases {
        assert!(VersionVector::decode_context(bytes).is_err(), "{what}");
    }
    let mut wide = vec![1u8];
    wide.extend_from_slice(&(CONTEXT_ACTORS_MAX as u16 + 1).to_be_bytes());
    for a in 0..=CONTEXT_ACTORS_MAX as u16 {
        wide.extend_from_slice(&a.to_be_bytes());
        wide.extend_from_slice(&1u64.to_be_bytes());
    }
    assert_eq!(
        VersionVector::decode_context(&wide),
        Err(CausalError::ContextTooLarge { actors: 65 })
    );
}
