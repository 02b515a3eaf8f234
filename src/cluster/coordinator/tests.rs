//! Unit tests of the coordinator: quorums, timeouts, read repair, hints, writes issued again.

use super::*;
use crate::limits::READ_SPARE_AFTER_MS;

/// The settings of most tests: every read asks every replica (the sampled reads have their
/// own tests).
fn config(hints: bool) -> CoordinatorConfig {
    CoordinatorConfig {
        node_id: 1,
        request_timeout_ms: 100,
        hinted_handoff: hints,
        read_repair: true,
        ops_max: 4,
        observe_ahead_ms_max: 500,
        read_repair_every: 1,
        causal: false,
    }
}

fn coord(hints: bool) -> Coordinator<u32> {
    Coordinator::new(config(hints))
}

fn drain(c: &mut Coordinator<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

/// `acts` answer exactly one client, `ctx`, with a failure of `status`.
fn assert_only_failure(acts: &[Action<u32>], ctx: u32, status: Status) {
    let r = replies(acts);
    assert!(
        matches!(&r[..], [(c, Outcome::Failed { status: s, .. })] if *c == ctx && *s == status),
        "{r:?}"
    );
}

fn all_alive(_: u32) -> bool {
    true
}

fn replies(actions: &[Action<u32>]) -> Vec<(u32, Outcome)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply { ctx, outcome } => Some((*ctx, outcome.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn single_replica_fast_path_has_no_peer_traffic() {
    let mut c = coord(true);
    let v = c
        .start_write(1_000, 7, b"k", Some(b"v"), 0, &[1], &all_alive, 1)
        .unwrap();
    let acts = drain(&mut c);
    assert_eq!(acts.len(), 1);
    let Action::ApplyLocal { id } = &acts[0] else {
        panic!("{acts:?}")
    };
    assert_eq!(c.local_write(*id).unwrap().version, v);
    c.on_write_ack(1_000, 1, *id, WriteAck::Done(Applied::Stored));
    assert_eq!(
        replies(&drain(&mut c)),
        vec![(
            7,
            Outcome::Written {
                version: v,
                reissues: 0
            }
        )]
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn quorum_write_answers_after_two_acks_and_hints_the_silent_one() {
    let mut c = coord(true);
    c.start_write(1_000, 7, b"k", Some(b"v"), 0, &[1, 2, 3], &all_alive, 2);
    let acts = drain(&mut c);
    assert_eq!(acts.len(), 3);
    let id = match &acts[0] {
        Action::ApplyLocal { id, .. } => *id,
        a => panic!("{a:?}"),
    };
    assert!(matches!(acts[1], Action::Send { to: 2, .. }));
    c.on_write_ack(1_001, 1, id, WriteAck::Done(Applied::Stored));
    assert!(drain(&mut c).is_empty());
    c.on_write_ack(1_002, 2, id, WriteAck::Done(Applied::Stored));
    let r = replies(&drain(&mut c));
    assert!(matches!(r[..], [(7, Outcome::Written { .. })]));
    // Node 3 never answers: at the deadline it gets a hint, and no second reply.
    c.on_tick(1_100);
    let acts = drain(&mut c);
    assert!(
        matches!(acts[..], [Action::Hint { target: 3, .. }]),
        "{acts:?}"
    );
    assert_eq!(c.in_flight(), 0);
    // A late ack is ignored.
    c.on_write_ack(1_200, 3, id, WriteAck::Done(Applied::Stored));
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.stats().late_replies, 1);
}

#[test]
fn all_with_a_node_down_is_unavailable_and_writes_nothing() {
    let mut c = coord(true);
    let alive = |n: u32| n != 2;
    assert!(c
        .start_write(1_000, 9, b"k", Some(b"v"), 0, &[1, 2, 3], &alive, 3)
        .is_none());
    let acts = drain(&mut c);
    assert_eq!(
        replies(&acts),
        vec![(
            9,
            Outcome::Failed {
                status: Status::Unavailable,
                message: "only 2 of 3 replicas are alive, 3 required".into()
            }
        )]
    );
    assert_eq!(acts.len(), 1);
    // QUORUM goes ahead and hints node 2 at once.
    c.start_write(1_000, 10, b"k", Some(b"v"), 0, &[1, 2, 3], &alive, 2);
    let acts = drain(&mut c);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Hint { target: 2, .. })));
    assert!(!acts.iter().any(|a| matches!(a, Action::Send { to: 2, .. })));
}

#[test]
fn timeout_names_how_many_answered() {
    let mut c = coord(false);
    c.start_write(1_000, 5, b"k", Some(b"v"), 0, &[1, 2, 3], &all_alive, 2);
    let id = match &drain(&mut c)[0] {
        Action::ApplyLocal { id, .. } => *id,
        a => panic!("{a:?}"),
    };
    c.on_write_ack(1_000, 1, id, WriteAck::Done(Applied::Stored));
    c.on_tick(1_099);
    assert!(drain(&mut c).is_empty());
    c.on_tick(1_100);
    assert_eq!(
        replies(&drain(&mut c)),
        vec![(
            5,
            Outcome::Failed {
                status: Status::Timeout,
                message: "only 1 of 3 replicas answered, 2 required within 100 ms".into()
            }
        )]
    );
}

#[test]
fn read_answers_newest_then_repairs_stale_and_missing() {
    let mut c = coord(true);
    c.start_read(1_000, 3, b"k", &[1, 2, 3], &all_alive, 2);
    let acts = drain(&mut c);
    let id = match &acts[0] {
        Action::ReadLocal { id, .. } => *id,
        a => panic!("{a:?}"),
    };
    let rec = |v: u64, val: Option<&[u8]>| Stored {
        version: Version(v),
        expires_at_ms: 0,
        value: val.map(|x| x.to_vec()),
        causal: false,
    };
    c.on_read_reply(1_000, 1, id, Ok(Some(rec(5, Some(b"old")))));
    c.on_read_reply(1_001, 2, id, Ok(Some(rec(9, Some(b"new")))));
    assert_eq!(
        replies(&drain(&mut c)),
        vec![(
            3,
            Outcome::Found {
                version: Version(9),
                value: b"new".to_vec(),
                expires_at_ms: 0
            }
        )]
    );
    c.on_read_reply(1_002, 3, id, Ok(None));
    let acts = drain(&mut c);
    let mut repaired: Vec<u32> = acts
        .iter()
        .map(|a| match a {
            Action::Repair { to, write, .. } => {
                assert_eq!(write.version, Version(9));
                *to
            }
            a => panic!("{a:?}"),
        })
        .collect();
    repaired.sort();
    assert_eq!(repaired, vec![1, 3]);
    assert_eq!(c.in_flight(), 0);

    // A newer tombstone wins over values: NOT_FOUND, and the tombstone is repaired.
    c.start_read(2_000, 4, b"k", &[1, 2], &all_alive, 1);
    let id = match &drain(&mut c)[0] {
        Action::ReadLocal { id, .. } => *id,
        a => panic!("{a:?}"),
    };
    c.on_read_reply(2_000, 2, id, Ok(Some(rec(20, None))));
    assert_eq!(replies(&drain(&mut c)), vec![(4, Outcome::NotFound)]);
    c.on_read_reply(2_000, 1, id, Ok(Some(rec(9, Some(b"new")))));
    let acts = drain(&mut c);
    assert!(matches!(&acts[..], [Action::Repair { to: 1, write, .. }] if write.value.is_none()));
}

#[test]
fn a_version_from_far_in_the_future_does_not_drag_the_clock() {
    let mut hlc = Hlc::new(1);
    let now = 1_700_000_000_000;
    observe(&mut hlc, now, Version(u64::MAX), 500);
    assert!(hlc.issue(now).physical_ms() == now);
    // Beyond the max clock offset: ignored; within it: followed.
    observe(&mut hlc, now, Version::new(now + 501, 0, 2), 500);
    assert_eq!(hlc.issue(now).physical_ms(), now);
    observe(&mut hlc, now, Version::new(now + 500, 0, 2), 500);
    assert_eq!(hlc.issue(now).physical_ms(), now + 500);
}

#[test]
fn read_repair_can_be_switched_off() {
    let mut c: Coordinator<u32> = Coordinator::new(CoordinatorConfig {
        node_id: 1,
        request_timeout_ms: 100,
        hinted_handoff: false,
        read_repair: false,
        ops_max: 4,
        observe_ahead_ms_max: 500,
        read_repair_every: 1,
        causal: false,
    });
    c.start_read(0, 1, b"k", &[1, 2], &all_alive, 1);
    let id = match &drain(&mut c)[0] {
        Action::ReadLocal { id, .. } => *id,
        a => panic!("{a:?}"),
    };
    c.on_read_reply(0, 1, id, Ok(None));
    let newer = Stored {
        version: Version(9),
        expires_at_ms: 0,
        value: Some(b"v".to_vec()),
        causal: false,
    };
    c.on_read_reply(0, 2, id, Ok(Some(newer)));
    let acts = drain(&mut c);
    assert!(
        acts.iter().all(|a| !matches!(a, Action::Repair { .. })),
        "{acts:?}"
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn overloaded_past_the_bound() {
    let mut c = coord(false);
    for ctx in 0..4 {
        c.start_read(0, ctx, b"k", &[1, 2], &all_alive, 1);
    }
    drain(&mut c);
    c.start_read(0, 99, b"k", &[1, 2], &all_alive, 1);
    let r = replies(&drain(&mut c));
    assert!(matches!(
        &r[..],
        [(
            99,
            Outcome::Failed {
                status: Status::Overloaded,
                ..
            }
        )]
    ));
}

#[test]
fn refusals_that_make_the_quorum_impossible_fail_early() {
    let mut c = coord(false);
    c.start_write(0, 1, b"k", Some(b"v"), 0, &[1, 2, 3], &all_alive, 3);
    let id = match &drain(&mut c)[0] {
        Action::ApplyLocal { id, .. } => *id,
        a => panic!("{a:?}"),
    };
    c.on_write_ack(0, 2, id, WriteAck::Refused("disk full".into()));
    let r = replies(&drain(&mut c));
    // Nodes 1 and 3 have not answered: they may apply it. Not UNAVAILABLE.
    match &r[..] {
        [(1, Outcome::Failed { status, message })] => {
            assert_eq!(*status, Status::MaybeApplied);
            assert!(message.contains("node 2: disk full"), "{message}");
            assert!(message.contains("may have been applied"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unavailable_only_when_nothing_was_written() {
    // Both replicas refuse (ONE of two): nothing was written anywhere.
    let mut c = coord(false);
    c.start_write(0, 1, b"k", Some(b"v"), 0, &[1, 2], &all_alive, 1);
    let id = match &drain(&mut c)[0] {
        Action::ApplyLocal { id, .. } => *id,
        a => panic!("{a:?}"),
    };
    c.on_write_ack(0, 1, id, WriteAck::Refused("disk full".into()));
    c.on_write_ack(0, 2, id, WriteAck::Refused("disk full".into()));
    assert_only_failure(&drain(&mut c), 1, Status::Unavailable);
    // One stored it, the other refused (issue 10 item 5: a full disk on one replica).
    c.start_write(0, 2, b"k", Some(b"v"), 0, &[1, 2], &all_alive, 2);
    let id = match &drain(&mut c)[0] {
        Action::ApplyLocal { id, .. } => *id,
        a => panic!("{a:?}"),
    };
    c.on_write_ack(0, 1, id, WriteAck::Done(Applied::Stored));
    c.on_write_ack(0, 2, id, WriteAck::Refused("disk full".into()));
    assert_only_failure(&drain(&mut c), 2, Status::MaybeApplied);
    assert_eq!(c.stats().maybe_applied, 1);
}

/// The write's id and version from the first ApplyLocal among `acts`.
fn local_apply(c: &Coordinator<u32>, acts: &[Action<u32>]) -> (u32, Version) {
    acts.iter()
        .find_map(|a| match a {
            Action::ApplyLocal { id } => Some((*id, c.local_write(*id).unwrap().version)),
            _ => None,
        })
        .expect("an ApplyLocal")
}

#[test]
fn a_newer_version_held_makes_the_write_issued_again_above_it() {
    let mut c = coord(false);
    let now = 1_000_000;
    let v1 = c
        .start_write(now, 7, b"k", Some(b"v"), 0, &[1, 2, 3], &all_alive, 2)
        .unwrap();
    let (id, _) = {
        let a = drain(&mut c);
        local_apply(&c, &a)
    };
    // A write acknowledged earlier by nodes 2 and 3 through a node 10 minutes ahead.
    let held = Version::new(now + 600_000, 0, 9);
    c.on_write_ack(now, 1, id, WriteAck::Done(Applied::Stored));
    c.on_write_ack(now, 2, id, WriteAck::Done(Applied::Stale { current: held }));
    // Node 3 still may store it: no decision yet.
    assert!(drain(&mut c).is_empty());
    c.on_write_ack(now, 3, id, WriteAck::Done(Applied::Stale { current: held }));
    // Now 2 acks are impossible: issued again above `held`, to every replica, new id.
    let acts = drain(&mut c);
    assert!(replies(&acts).is_empty(), "{acts:?}");
    let (id2, v2) = local_apply(&c, &acts);
    assert!(v2 > held && v2 > v1, "{v2:?}");
    assert_eq!(v2.node_id(), 1);
    assert_ne!(id2, id);
    let sends = acts
        .iter()
        .filter(|a| matches!(a, Action::Send { to: 2 | 3, .. }))
        .count();
    assert_eq!(sends, 2);
    // Late acks of the first attempt do not count.
    c.on_write_ack(now, 2, id, WriteAck::Done(Applied::Stored));
    assert_eq!(c.stats().late_replies, 1);
    c.on_write_ack(now + 1, 1, id2, WriteAck::Done(Applied::Stored));
    c.on_write_ack(now + 1, 2, id2, WriteAck::Done(Applied::Stored));
    assert_eq!(
        replies(&drain(&mut c)),
        vec![(
            7,
            Outcome::Written {
                version: v2,
                reissues: 1
            }
        )]
    );
    assert_eq!(c.stats().reissues, 1);
    // The clock did not follow the version from 10 minutes ahead (beyond the bound)...
    let mut probe = c.hlc.clone();
    assert!(
        probe.issue(now).physical_ms() >= held.physical_ms(),
        "issue_above moved it"
    );
}

#[test]
fn a_stale_ack_of_the_same_version_counts_and_racing_writers_end_acknowledged() {
    let mut c = coord(false);
    let now = 5_000;
    let v = c
        .start_write(now, 1, b"k", None, 0, &[1, 2], &all_alive, 2)
        .unwrap();
    let (id, _) = {
        let a = drain(&mut c);
        local_apply(&c, &a)
    };
    c.on_write_ack(now, 1, id, WriteAck::Done(Applied::Stored));
    // A duplicate delivery: the replica already holds this very write.
    c.on_write_ack(now, 2, id, WriteAck::Done(Applied::Stale { current: v }));
    assert_eq!(
        replies(&drain(&mut c)),
        vec![(
            1,
            Outcome::Written {
                version: v,
                reissues: 0
            }
        )]
    );
    // A replica that keeps holding something newer (a racing writer): every attempt but
    // the last is issued again above it. On the last, the attempts' answers (node 1
    // stored, node 2 held newer) cover a read quorum of [1, 2], so every QUORUM write
    // acknowledged before this one began is below its version: a newer version reported
    // then is a concurrent write's and counts as an acknowledgement.
    c.start_write(now, 2, b"k", Some(b"v"), 0, &[1, 2], &all_alive, 2);
    let (mut id, _) = {
        let a = drain(&mut c);
        local_apply(&c, &a)
    };
    let mut newer = Version::new(now + 100, 0, 2);
    let mut reissued = 0;
    let written = loop {
        c.on_write_ack(now, 1, id, WriteAck::Done(Applied::Stored));
        c.on_write_ack(
            now,
            2,
            id,
            WriteAck::Done(Applied::Stale { current: newer }),
        );
        let acts = drain(&mut c);
        if let Some(r) = replies(&acts).pop() {
            break r;
        }
        let (next, v) = local_apply(&c, &acts);
        assert!(v > newer, "issued again above the version held");
        id = next;
        newer = Version::new(v.physical_ms() + 1, 0, 2);
        reissued += 1;
    };
    assert_eq!(reissued, crate::limits::WRITE_REISSUES_MAX);
    assert!(
        matches!(written, (2, Outcome::Written { reissues, .. }) if reissues == reissued),
        "{written:?}"
    );
    assert_eq!(c.stats().superseded, 1);
    assert_eq!(c.in_flight(), 0);
}

/// A local acknowledgement taken back (the turn's write of the store failed and undid this
/// node's copy) no longer counts: a quorum needs two remote acks then, and an answered or
/// unknown operation is left alone.
#[test]
fn a_revoked_local_ack_no_longer_counts() {
    let mut c = coord(false);
    let v = c
        .start_write(1_000, 7, b"k", Some(b"v"), 0, &[1, 2, 3], &all_alive, 2)
        .unwrap();
    let acts = drain(&mut c);
    let id = match &acts[0] {
        Action::ApplyLocal { id, .. } => *id,
        a => panic!("{a:?}"),
    };
    c.on_write_ack(1_001, 1, id, WriteAck::Done(Applied::Stored));
    c.revoke_local_ack(1_001, 1, id, "write failed");
    assert!(drain(&mut c).is_empty());
    // One remote ack: without the revocation this would be the quorum.
    c.on_write_ack(1_002, 2, id, WriteAck::Done(Applied::Stored));
    assert!(
        replies(&drain(&mut c)).is_empty(),
        "answered on 1 real copy"
    );
    c.on_write_ack(1_003, 3, id, WriteAck::Done(Applied::Stored));
    assert_eq!(
        replies(&drain(&mut c)),
        vec![(
            7,
            Outcome::Written {
                version: v,
                reissues: 0
            }
        )]
    );
    // Answered, or never known: nothing happens.
    c.revoke_local_ack(1_004, 1, id, "write failed");
    c.revoke_local_ack(1_004, 1, 999, "write failed");
    assert!(drain(&mut c).is_empty());
}

fn coord_sampling(every: u32) -> Coordinator<u32> {
    Coordinator::new(CoordinatorConfig {
        request_timeout_ms: 1_000,
        read_repair_every: every,
        ..config(false)
    })
}

/// The nodes a batch of actions asks (this node through ReadLocal).
fn asked(acts: &[Action<u32>]) -> Vec<u32> {
    asked_by(1, acts)
}

/// The replicas coordinator `me`'s actions ask: itself (a local read) and the peers sent to.
fn asked_by(me: u32, acts: &[Action<u32>]) -> Vec<u32> {
    acts.iter()
        .filter_map(|a| match a {
            Action::ReadLocal { .. } => Some(me),
            Action::Send { to, .. } => Some(*to),
            _ => None,
        })
        .collect()
}

fn read_id(acts: &[Action<u32>]) -> u32 {
    acts.iter()
        .find_map(|a| match a {
            Action::ReadLocal { id, .. } => Some(*id),
            _ => None,
        })
        .expect("a local read")
}

/// Start a QUORUM read of `k` at `now` by this node (node 1, a replica of [1, 2, 3]) and
/// answer its local read with `local` a millisecond later; the read's id.
fn quorum_read_with_local_copy(
    c: &mut Coordinator<u32>,
    now: u64,
    ctx: u32,
    local: Option<Stored>,
) -> u32 {
    c.start_read(now, ctx, b"k", &[1, 2, 3], &all_alive, 2);
    let id = read_id(&drain(c));
    c.on_read_reply(now + 1, 1, id, Ok(local));
    id
}

fn stored(v: u64) -> Option<Stored> {
    Some(Stored {
        value: Some(b"v".to_vec()),
        version: Version(v),
        expires_at_ms: 0,
        causal: false,
    })
}

#[test]
fn a_quorum_read_asks_itself_and_one_peer_and_every_nth_read_asks_all() {
    let mut c = coord_sampling(3);
    for n in 1..=6u32 {
        // This node is last in the preference list: its copy is still asked first.
        c.start_read(1_000, n, b"k", &[2, 3, 1], &all_alive, 2);
        let acts = drain(&mut c);
        let want: &[u32] = if n % 3 == 0 { &[1, 2, 3] } else { &[1, 2] };
        assert_eq!(asked(&acts), want, "read {n}");
        let id = read_id(&acts);
        c.on_read_reply(1_001, 1, id, Ok(stored(5)));
        c.on_read_reply(1_001, 2, id, Ok(stored(5)));
        assert!(matches!(replies(&drain(&mut c))[..], [(m, Outcome::Found { .. })] if m == n));
    }
    assert_eq!(c.stats().full_reads, 2);
    // Not a replica: it asks two peers.
    c.start_read(1_000, 7, b"k", &[2, 3, 4], &all_alive, 2);
    assert_eq!(asked(&drain(&mut c)), [2, 3]);
}

/// A read that asks fewer peers than there are asks the alive ones nearest after this node in
/// id order, wrapping, whatever the key's preference order: every read one node coordinates
/// asks the same peer where the keys allow, and each node prefers a different one.
#[test]
fn reads_ask_the_peers_nearest_after_this_node() {
    let picked = |me: u32, replicas: &[u32], alive: &dyn Fn(u32) -> bool, want: usize| {
        let up = (0..replicas.len()).fold(0u64, |m, i| m | u64::from(alive(replicas[i])) << i);
        let mask = read_peers(me, replicas, up, want);
        (0..replicas.len())
            .filter(|&i| mask >> i & 1 == 1)
            .map(|i| replicas[i])
            .collect::<Vec<u32>>()
    };
    assert_eq!(picked(1, &[3, 1, 2], &all_alive, 1), [2]);
    assert_eq!(picked(2, &[1, 2, 3], &all_alive, 1), [3]);
    assert_eq!(picked(3, &[1, 2, 3], &all_alive, 1), [1], "wraps round");
    assert_eq!(
        picked(3, &[2, 3, 1], &|n| n != 1, 1),
        [2],
        "the nearest is down"
    );
    assert_eq!(picked(1, &[5, 9, 2], &all_alive, 2), [5, 2]);
    assert!(picked(1, &[2, 3], &|_| false, 1).is_empty());

    // Through a read: node 3 asks node 1 for a key whose preference order starts with 2.
    let mut c = Coordinator::new(CoordinatorConfig {
        node_id: 3,
        read_repair_every: 0,
        ..config(false)
    });
    c.start_read(1_000, 1, b"k", &[2, 3, 1], &all_alive, 2);
    assert_eq!(asked_by(3, &drain(&mut c)), [3, 1]);
}

#[test]
fn a_refusal_or_a_silent_replica_brings_in_a_spare() {
    let mut c = coord_sampling(0);
    let id = quorum_read_with_local_copy(&mut c, 1_000, 1, stored(4));
    // Node 2 refuses: node 3 is asked at once, and its answer completes the quorum.
    c.on_read_reply(1_002, 2, id, Err("stale ring".into()));
    let acts = drain(&mut c);
    assert!(matches!(acts[..], [Action::Send { to: 3, .. }]), "{acts:?}");
    c.on_read_reply(1_003, 3, id, Ok(stored(4)));
    assert!(matches!(
        replies(&drain(&mut c))[..],
        [(1, Outcome::Found { .. })]
    ));
    assert_eq!(c.stats().spares_asked, 1);

    // Node 2 stays silent: the spare is asked READ_SPARE_AFTER_MS after the start, not
    // before, and the read answers without waiting for its deadline.
    let id = quorum_read_with_local_copy(&mut c, 2_000, 2, stored(4));
    c.on_tick(2_000 + READ_SPARE_AFTER_MS - 1);
    assert!(drain(&mut c).is_empty());
    c.on_tick(2_000 + READ_SPARE_AFTER_MS);
    assert!(matches!(drain(&mut c)[..], [Action::Send { to: 3, .. }]));
    // Node 3 holds a newer record: it wins, and this node's copy is repaired once node 2's
    // deadline passes (node 2 never answered, so it is not repaired).
    c.on_read_reply(2_300, 3, id, Ok(stored(9)));
    assert!(matches!(
        replies(&drain(&mut c))[..],
        [(
            2,
            Outcome::Found {
                version: Version(9),
                ..
            }
        )]
    ));
    c.on_tick(3_000);
    let acts = drain(&mut c);
    let repaired: Vec<u32> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Repair { to, .. } => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(repaired, [1]);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_read_with_no_spare_left_fails_at_once() {
    let mut c = coord_sampling(0);
    let alive = |n: u32| n != 3;
    c.start_read(1_000, 1, b"k", &[1, 2, 3], &alive, 2);
    let id = read_id(&drain(&mut c));
    c.on_read_reply(1_001, 2, id, Err("disk on fire".into()));
    assert_only_failure(&drain(&mut c), 1, Status::Unavailable);
}

/// The READ frames in a batch of actions: `(to, version only)`.
fn reads_sent(acts: &[Action<u32>]) -> Vec<(u32, bool)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send { to, frame } => {
                let (f, _) = crate::protocol::frame::parse(frame).unwrap().unwrap();
                assert_eq!(f.op, peer::op::READ);
                Some((*to, f.aux & peer::AUX_VERSION_ONLY != 0))
            }
            _ => None,
        })
        .collect()
}

fn repairs(acts: &[Action<u32>]) -> Vec<(u32, Version)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Repair { to, write, .. } => Some((*to, write.version)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_replica_coordinator_asks_its_peers_for_versions_only() {
    let mut c = coord_sampling(1);
    c.start_read(1_000, 1, b"k", &[1, 2, 3], &all_alive, 2);
    let acts = drain(&mut c);
    assert_eq!(reads_sent(&acts), [(2, true), (3, true)]);
    let id = read_id(&acts);
    c.on_read_reply(1_001, 1, id, Ok(stored(5)));
    // Node 2 holds the same version: the answer is this node's copy, nothing is fetched.
    c.on_read_version(1_002, 2, id, Version(5));
    assert!(matches!(
        replies(&drain(&mut c))[..],
        [(
            1,
            Outcome::Found {
                version: Version(5),
                ..
            }
        )]
    ));
    // Node 3 holds an older one: it is repaired with this node's record.
    c.on_read_version(1_003, 3, id, Version(2));
    assert_eq!(repairs(&drain(&mut c)), [(3, Version(5))]);
    assert_eq!(c.stats().read_fetches, 0);
    assert_eq!(c.in_flight(), 0);

    // Not a replica: it needs the data from its peers.
    c.start_read(2_000, 2, b"k", &[2, 3, 4], &all_alive, 2);
    assert!(reads_sent(&drain(&mut c)).iter().all(|&(_, v)| !v));
    // Siblings mode merges the replicas' states: whole records.
    let mut s: Coordinator<u32> = Coordinator::new(CoordinatorConfig {
        causal: true,
        ..config(false)
    });
    s.start_read(2_000, 3, b"k", &[1, 2, 3], &all_alive, 2);
    assert!(reads_sent(&drain(&mut s)).iter().all(|&(_, v)| !v));
}

#[test]
fn a_newer_version_is_fetched_before_the_answer_and_repairs_this_node() {
    let mut c = coord_sampling(0);
    let id = quorum_read_with_local_copy(&mut c, 1_000, 1, stored(5));
    // Node 2 is newer: its record is asked for, and nobody is answered yet.
    c.on_read_version(1_002, 2, id, Version(9));
    let acts = drain(&mut c);
    assert_eq!(reads_sent(&acts), [(2, false)]);
    assert!(replies(&acts).is_empty());
    assert_eq!(c.stats().read_fetches, 1);
    c.on_read_reply(1_003, 2, id, Ok(stored(9)));
    let acts = drain(&mut c);
    assert!(matches!(
        replies(&acts)[..],
        [(
            1,
            Outcome::Found {
                version: Version(9),
                ..
            }
        )]
    ));
    assert_eq!(repairs(&acts), [(1, Version(9))]);
    assert_eq!(c.in_flight(), 0);

    // This node holds nothing and a peer holds a tombstone's version: fetched, NOT_FOUND.
    let id = quorum_read_with_local_copy(&mut c, 2_000, 2, None);
    c.on_read_version(2_002, 2, id, Version(7));
    assert_eq!(reads_sent(&drain(&mut c)), [(2, false)]);
    let tombstone = Stored {
        value: None,
        ..stored(7).unwrap()
    };
    c.on_read_reply(2_003, 2, id, Ok(Some(tombstone)));
    let acts = drain(&mut c);
    assert_eq!(replies(&acts), [(2, Outcome::NotFound)]);
    assert_eq!(repairs(&acts), [(1, Version(7))]);

    // The fetch fails: a spare takes its place.
    let id = quorum_read_with_local_copy(&mut c, 3_000, 3, stored(5));
    c.on_read_version(3_002, 2, id, Version(9));
    drain(&mut c);
    c.on_read_reply(3_003, 2, id, Err("damaged record".into()));
    assert_eq!(reads_sent(&drain(&mut c)), [(3, true)]);
    c.on_read_version(3_004, 3, id, Version(5));
    assert!(matches!(
        replies(&drain(&mut c))[..],
        [(
            3,
            Outcome::Found {
                version: Version(5),
                ..
            }
        )]
    ));
}

#[test]
fn a_replica_that_refuses_version_only_reads_gets_whole_ones_for_a_while() {
    use crate::limits::VERSION_ONLY_RETRY_MS;
    let mut c = coord_sampling(0);
    let id = quorum_read_with_local_copy(&mut c, 1_000, 1, stored(5));
    // Node 2 is from before version-only reads: asked again for the record, which answers.
    c.on_read_refused(1_002, 2, id, "MALFORMED: aux must be 0".into());
    let acts = drain(&mut c);
    assert_eq!(reads_sent(&acts), [(2, false)]);
    assert!(replies(&acts).is_empty());
    c.on_read_reply(1_003, 2, id, Ok(stored(5)));
    assert!(matches!(
        replies(&drain(&mut c))[..],
        [(1, Outcome::Found { .. })]
    ));
    // Reads whose replicas include node 2 ask whole records until the retry time.
    c.start_read(1_010, 2, b"k", &[1, 2, 3], &all_alive, 2);
    assert_eq!(reads_sent(&drain(&mut c)), [(2, false)]);
    c.start_read(1_010, 3, b"k", &[1, 3, 4], &all_alive, 2);
    assert_eq!(reads_sent(&drain(&mut c)), [(3, true)]);
    c.start_read(
        1_002 + VERSION_ONLY_RETRY_MS,
        4,
        b"k",
        &[1, 2, 3],
        &all_alive,
        2,
    );
    assert_eq!(reads_sent(&drain(&mut c)), [(2, true)]);
    // A refusal of a whole-record READ is an error answer, not a reason to ask again.
    c.start_read(3_000, 5, b"k", &[2, 3, 4], &all_alive, 2);
    let acts = drain(&mut c);
    let id = match &acts[0] {
        Action::Send { frame, .. } => crate::protocol::frame::parse(frame).unwrap().unwrap().0.id,
        a => panic!("{a:?}"),
    };
    c.on_read_refused(3_001, 2, id, "MALFORMED: something else".into());
    assert_eq!(reads_sent(&drain(&mut c)), [(4, false)]);
}
