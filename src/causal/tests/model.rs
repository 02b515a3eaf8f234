//! Randomized model tests: replicas exchanging states, clients writing with the contexts of
//! earlier reads, replicas losing their data. Seeded: a failing seed replays exactly.

use super::*;

const ACTORS: usize = 3;

/// A context a client could hold: from a read of one replica, of two (a quorum read merges
/// them), or none (a blind write).
fn random_context(rng: &mut Rng, reads: &[VersionVector]) -> VersionVector {
    match rng.below(4) {
        0 => VersionVector::new(),
        1 => {
            let mut c = reads[rng.below(reads.len())].clone();
            c.merge(&reads[rng.below(reads.len())]);
            c
        }
        _ => reads[rng.below(reads.len())].clone(),
    }
}

/// States from random histories at [`ACTORS`] replicas: writes with contexts of earlier
/// reads, deletes, merges, and (when `data_loss`) replicas that lose everything and so reuse
/// dots with other contents. Every state seen is returned.
fn random_states(rng: &mut Rng, steps: usize, data_loss: bool) -> Vec<CausalState> {
    let mut replicas = vec![CausalState::empty(); ACTORS];
    let mut reads = vec![VersionVector::new()];
    let mut seen = Vec::new();
    for step in 0..steps {
        let r = rng.below(ACTORS);
        match rng.below(10) {
            0..=3 => {
                let ctx = random_context(rng, &reads);
                let write = if rng.percent(15) {
                    None
                } else {
                    let len = rng.below(3);
                    value(
                        rng.below(4) as u64,
                        rng.below(3) as u64,
                        &vec![step as u8; len],
                    )
                };
                let _ = replicas[r].update(&ctx, r as u16, write);
            }
            4..=5 => reads.push(replicas[r].vv().clone()),
            6 if data_loss => replicas[r] = CausalState::empty(),
            _ => {
                let from = replicas[rng.below(ACTORS)].clone();
                replicas[r].merge(&from);
            }
        }
        seen.push(replicas[r].clone());
    }
    seen
}

#[test]
fn merge_is_commutative_associative_idempotent() {
    // Pairs holding one dot with two contents (dot reuse after data loss), the case where
    // the merge must pick the same copy whichever side it starts from.
    let mut reused_dots = 0;
    for seed in 0..60 {
        let mut rng = Rng::new(seed);
        let data_loss = seed % 2 == 1;
        let pool = random_states(&mut rng, 120, data_loss);
        for _ in 0..200 {
            let a = &pool[rng.below(pool.len())];
            let b = &pool[rng.below(pool.len())];
            let c = &pool[rng.below(pool.len())];
            let ab = CausalState::merged(a, b);
            let ba = CausalState::merged(b, a);
            reused_dots += a
                .siblings()
                .iter()
                .filter(|x| b.siblings().iter().any(|y| y.dot == x.dot && y != *x))
                .count();
            assert_eq!(ab, ba, "seed {seed}: commutative");
            assert_eq!(encode(&ab), encode(&ba));
            assert_eq!(ab.digest(), ba.digest());
            assert_eq!(
                CausalState::merged(&ab, c),
                CausalState::merged(a, &CausalState::merged(b, c)),
                "seed {seed}: associative"
            );
            assert_eq!(&CausalState::merged(a, a), a, "seed {seed}: idempotent");
            assert_eq!(CausalState::merged(&ab, a), ab, "seed {seed}: absorbs");
            assert_eq!(a.dominates(b), &CausalState::merged(a, b) == a);
            assert!(ab.dominates(a) && ab.dominates(b));
            assert!(ab.vv().dominates(a.vv()) && ab.vv().dominates(b.vv()));
            check_invariant(&ab);
        }
    }
    assert!(reused_dots > 100, "{reused_dots}");
}

/// What the test knows of one accepted write.
struct Written {
    dot: Dot,
    value: Vec<u8>,
    /// A later accepted write (or delete) had this write's dot in its context.
    superseded: bool,
}

/// The DVV promise: after every replica's state is merged, the siblings are exactly the
/// accepted writes that no write with a context containing their dot superseded.
#[test]
fn every_write_survives_unless_a_write_that_saw_it_superseded_it() {
    let mut concurrent_kept = 0;
    for seed in 0..150 {
        let mut rng = Rng::new(1000 + seed);
        let mut replicas = vec![CausalState::empty(); ACTORS];
        let mut reads = vec![VersionVector::new()];
        let mut written: Vec<Written> = Vec::new();
        for step in 0..150 {
            let r = rng.below(ACTORS);
            match rng.below(10) {
                0..=3 => {
                    let ctx = random_context(&mut rng, &reads);
                    let bytes = format!("seed {seed} step {step}").into_bytes();
                    let write = if rng.percent(15) {
                        None
                    } else {
                        value(step as u64, 0, &bytes)
                    };
                    let before = replicas[r].clone();
                    match replicas[r].update(&ctx, r as u16, write) {
                        Ok(dot) => {
                            for w in written.iter_mut() {
                                if ctx.contains(w.dot) {
                                    w.superseded = true;
                                }
                            }
                            if let Some(dot) = dot {
                                assert!(written.iter().all(|w| w.dot != dot), "dot reused");
                                written.push(Written {
                                    dot,
                                    value: bytes,
                                    superseded: false,
                                });
                            }
                        }
                        Err(CausalError::TooManySiblings { .. }) => {
                            assert_eq!(replicas[r], before)
                        }
                        Err(e) => panic!("seed {seed}: {e}"),
                    }
                }
                4..=6 => {
                    // A read: of one replica, or a quorum read of two merged.
                    let mut state = replicas[r].clone();
                    if rng.percent(50) {
                        state.merge(&replicas[rng.below(ACTORS)]);
                    }
                    reads.push(state.vv().clone());
                }
                _ => {
                    let from = replicas[rng.below(ACTORS)].clone();
                    replicas[r].merge(&from);
                }
            }
            check_invariant(&replicas[r]);
        }
        let mut all = CausalState::empty();
        for s in &replicas {
            all.merge(s);
        }
        let mut expected: Vec<(Dot, Vec<u8>)> = written
            .iter()
            .filter(|w| !w.superseded)
            .map(|w| (w.dot, w.value.clone()))
            .collect();
        expected.sort();
        let got: Vec<(Dot, Vec<u8>)> = all
            .siblings()
            .iter()
            .map(|s| (s.dot, s.value.clone()))
            .collect();
        assert_eq!(got, expected, "seed {seed}");
        concurrent_kept += got.len().saturating_sub(1);
        // Every replica converges to the same state in any merge order.
        let mut reversed = CausalState::empty();
        for s in replicas.iter().rev() {
            reversed.merge(s);
        }
        assert_eq!(reversed, all);
    }
    // The histories did make concurrent writes (else the test proves little).
    assert!(concurrent_kept > 50, "{concurrent_kept}");
}

/// Random bytes near valid encodings: decoding never panics, and what it accepts is a valid
/// state whose encoding is exactly the input (one encoding per state).
#[test]
fn decode_survives_mutated_encodings() {
    let mut rng = Rng::new(77);
    let pool = random_states(&mut rng, 200, true);
    for i in 0..4000 {
        let mut bytes = encode(&pool[rng.below(pool.len())]);
        match rng.below(4) {
            0 => {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            2 => bytes.truncate(rng.below(bytes.len() + 1)),
            _ => {
                let at = rng.below(bytes.len() + 1);
                bytes.insert(at, rng.next() as u8);
            }
        }
        if let Ok(s) = CausalState::decode(&bytes) {
            assert_eq!(encode(&s), bytes, "case {i}");
            assert_eq!(s.check_hard_limits(), Ok(()));
        }
        let ctx_len = rng.below(bytes.len().min(40) + 1);
        if let Ok(v) = VersionVector::decode_context(&bytes[..ctx_len]) {
            let mut out = Vec::new();
            v.encode_context(&mut out);
            assert!(ctx_len == 0 || out == bytes[..ctx_len]);
        }
    }
}
