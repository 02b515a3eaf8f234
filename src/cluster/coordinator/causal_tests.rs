//! Unit tests of the coordinator in siblings mode: a causal write counts its own (pre-applied)
//! copy and any "stale" answer as acknowledgements, a read answers the merge of the states it
//! heard and repairs the replicas whose state differs, and a handed-over write is answered
//! with the replica's outcome or TIMEOUT.

use super::*;
use crate::causal::{CausalState, NewValue, VersionVector};
use crate::cluster::peer::coordinate::Coordinate;
use crate::protocol::Consistency;

fn coord() -> Coordinator<u32> {
    Coordinator::new(CoordinatorConfig {
        node_id: 1,
        request_timeout_ms: 100,
        hinted_handoff: true,
        read_repair: true,
        ops_max: 4,
        observe_ahead_ms_max: 500,
        read_repair_every: 1,
        causal: true,
    })
}

fn drain(c: &mut Coordinator<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn replies(actions: &[Action<u32>]) -> Vec<(u32, Outcome)> {
    (actions.iter())
        .filter_map(|a| match a {
            Action::Reply { ctx, outcome } => Some((*ctx, outcome.clone())),
            _ => None,
        })
        .collect()
}

fn alive(_: u32) -> bool {
    true
}

/// A state holding one sibling `value` written by `actor` at `version`.
fn state(actor: u16, version: u64, value: &[u8]) -> CausalState {
    let mut s = CausalState::empty();
    let w = NewValue {
        version,
        expires_at_ms: 0,
        value: value.to_vec(),
    };
    s.update_at(&VersionVector::new(), actor, Some(w), version)
        .unwrap();
    s
}

fn record(s: &CausalState, version: u64) -> Stored {
    let mut bytes = Vec::new();
    s.encode(&mut bytes);
    Stored {
        version: Version(version),
        expires_at_ms: 0,
        value: Some(bytes),
        causal: true,
    }
}

#[test]
fn a_causal_write_counts_its_own_copy_and_stale_answers() {
    let mut c = coord();
    let mut bytes = Vec::new();
    state(1, 50, b"v").encode(&mut bytes);
    let id = c
        .start_causal_write(10, 7, b"k", bytes, 0, Version(50), &[1, 2, 3], &alive, 2)
        .unwrap();
    let acts = drain(&mut c);
    // No ApplyLocal (the copy is done), a REPLICATE to each peer, no answer yet.
    assert!(!acts.iter().any(|a| matches!(a, Action::ApplyLocal { .. })));
    let sent: Vec<u32> = (acts.iter())
        .filter_map(|a| match a {
            Action::Send { to, .. } => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![2, 3]);
    assert!(replies(&acts).is_empty());
    // A replica whose state already contained it answers "stale" with the write's own
    // version or any other: an acknowledgement either way, never a reissue.
    let stale = WriteAck::Done(Applied::Stale {
        current: Version(99),
    });
    c.on_write_ack(11, 2, id, stale);
    let r = replies(&drain(&mut c));
    assert_eq!(
        r,
        vec![(
            7,
            Outcome::Written {
                version: Version(50),
                reissues: 0
            }
        )]
    );
    // A cluster of one: answered when it starts.
    let mut bytes = Vec::new();
    state(1, 60, b"w").encode(&mut bytes);
    c.start_causal_write(12, 8, b"j", bytes, 0, Version(60), &[1], &alive, 1)
        .unwrap();
    assert_eq!(replies(&drain(&mut c)).len(), 1);
    assert_eq!(
        c.in_flight(),
        1,
        "only the first write still waits for node 3"
    );
}

#[test]
fn a_read_answers_the_merge_and_repairs_the_replicas_that_lack_part_of_it() {
    let mut c = coord();
    c.start_read(10, 7, b"k", &[1, 2, 3], &alive, 3);
    let acts = drain(&mut c);
    let id = acts
        .iter()
        .find_map(|a| match a {
            Action::ReadLocal { id } => Some(*id),
            _ => None,
        })
        .expect("this node reads its own copy");
    let (a, b) = (state(1, 50, b"a"), state(2, 60, b"b"));
    let both = CausalState::merged(&a, &b);
    c.on_read_reply(11, 1, id, Ok(Some(record(&a, 50))));
    c.on_read_reply(11, 2, id, Ok(Some(record(&both, 61))));
    c.on_read_reply(11, 3, id, Ok(None));
    let acts = drain(&mut c);
    let r = replies(&acts);
    let [(7, Outcome::Siblings { context, values })] = &r[..] else {
        panic!("{r:?}")
    };
    let mut want = Vec::new();
    both.vv().encode_context(&mut want);
    assert_eq!(context, &want);
    assert_eq!(
        values,
        &vec![(Version(50), b"a".to_vec()), (Version(60), b"b".to_vec())]
    );
    // Nodes 1 (missing b) and 3 (nothing) are repaired with the merge; node 2 had it.
    let repaired: Vec<u32> = (acts.iter())
        .filter_map(|a| match a {
            Action::Repair { to, write, .. } => {
                assert!(write.causal);
                let s = CausalState::decode(write.value.as_deref().unwrap()).unwrap();
                assert_eq!(s, both);
                Some(*to)
            }
            _ => None,
        })
        .collect();
    assert_eq!(repaired, vec![1, 3]);
}

#[test]
fn a_handed_over_write_is_answered_by_the_replica_or_times_out() {
    let mut c = coord();
    let request = Coordinate {
        key: b"k",
        consistency: Consistency::Quorum,
        expires_at_ms: 0,
        context: &[],
        value: Some(b"v"),
    };
    c.start_forward(10, 7, 3, &request);
    let acts = drain(&mut c);
    let [Action::Send { to: 3, frame }] = &acts[..] else {
        panic!("{acts:?}")
    };
    let (f, _) = crate::protocol::frame::parse(frame).unwrap().unwrap();
    assert_eq!(Coordinate::decode(f.aux, f.body).unwrap(), request);
    // A reply from another node is ignored; the replica's is the answer.
    c.on_forward_reply(2, f.id, Ok(Version(5)));
    assert!(replies(&drain(&mut c)).is_empty());
    c.on_forward_reply(
        3,
        f.id,
        Err((Status::TooManySiblings, "33 siblings".into())),
    );
    let r = replies(&drain(&mut c));
    assert!(
        matches!(
            &r[..],
            [(
                7,
                Outcome::Failed {
                    status: Status::TooManySiblings,
                    ..
                }
            )]
        ),
        "{r:?}"
    );
    // Silence: TIMEOUT after two request timeouts, not one.
    c.start_forward(20, 8, 3, &request);
    drain(&mut c);
    c.on_tick(20 + 150);
    assert!(replies(&drain(&mut c)).is_empty());
    c.on_tick(20 + 200);
    let r = replies(&drain(&mut c));
    assert!(
        matches!(
            &r[..],
            [(
                8,
                Outcome::Failed {
                    status: Status::Timeout,
                    ..
                }
            )]
        ),
        "{r:?}"
    );
    assert_eq!(c.in_flight(), 0);
}
