//! Unit tests of the ring state: transitions, placement, encoding.

use super::*;

fn cluster(k: u32) -> RingState {
    let nodes: Vec<(u32, String)> = (1..=k).map(|i| (i, format!("127.0.0.1:{i}"))).collect();
    RingState::initial(&nodes, 3).unwrap()
}

/// Flip every moving partition; returns how many flips it took.
fn flip_all(mut s: RingState) -> (RingState, usize) {
    let mut flips = 0;
    while let Some(&p) = s.moving_partitions().first() {
        s = s.complete(p).unwrap();
        flips += 1;
    }
    if let Some(e) = s.end() {
        s = e;
    }
    (s, flips)
}

#[test]
fn a_join_moves_its_share_then_settles() {
    let s = cluster(3);
    let j = s.admit(4, "127.0.0.1:4").unwrap();
    assert_eq!(j.version(), s.version() + 1);
    assert_eq!(j.status(4), Some(MemberStatus::Joining));
    assert_eq!(j.change(), Some(Change::Join { node: 4 }));
    // Reads still use the old owners; writes also reach the pending one.
    for p in 0..PARTITION_COUNT {
        assert_eq!(j.owners(p), s.owners(p));
        assert!(j.pending(p).all(|n| n == 4));
    }
    let moving = j.moving_partitions().len();
    assert_eq!(moving, PARTITION_COUNT * 3 / 4, "one in four placements");
    assert!(matches!(
        j.leave(1),
        Err(RingChangeError::Busy(Change::Join { node: 4 }))
    ));
    let (done, flips) = flip_all(j.clone());
    assert_eq!(flips, moving);
    // One version per flip, and one to end the change.
    assert_eq!(done.version(), j.version() + flips as u64 + 1);
    assert_eq!(done.change(), None);
    assert_eq!(done.target(), None);
    assert_eq!(done.status(4), Some(MemberStatus::Up));
    assert_eq!(done.current().version(), done.version());
    assert!(done
        .current()
        .same_placement(&s.current().plan_join(4).unwrap()));
}

#[test]
fn leave_remove_and_replace_end_with_the_node_removed() {
    let s = cluster(5);
    for change in [
        s.leave(2).unwrap(),
        s.remove(2).unwrap(),
        s.replace(2, 9, "127.0.0.1:9").unwrap(),
    ] {
        assert_eq!(change.status(2), Some(MemberStatus::Leaving));
        let (done, _) = flip_all(change);
        assert_eq!(done.status(2), Some(MemberStatus::Removed));
        assert!(!done.current().nodes().contains(&2));
        assert!(done.admit(2, "x").is_err(), "ids are never reused");
    }
    let (r, _) = flip_all(s.replace(2, 9, "a").unwrap());
    assert_eq!(r.status(9), Some(MemberStatus::Up));
    for p in 0..PARTITION_COUNT {
        let want: Vec<u32> = s
            .owners(p)
            .iter()
            .map(|&n| if n == 2 { 9 } else { n })
            .collect();
        assert_eq!(r.owners(p), &want[..]);
    }
    assert!(matches!(
        cluster(3).leave(1),
        Err(RingChangeError::Ownership(_))
    ));
    assert!(matches!(s.leave(7), Err(RingChangeError::UnknownNode(7))));
}

#[test]
fn a_dead_joiner_or_replacement_is_aborted_by_removing_it() {
    let s = cluster(4);
    // Before any flip: the change just ends and the joiner is removed.
    let j = s.admit(5, "127.0.0.1:5").unwrap();
    assert_eq!(j.incoming(), Some(5));
    assert!(matches!(
        j.abort_incoming(2),
        Err(RingChangeError::WrongStatus(2, MemberStatus::Up))
    ));
    let a = j.abort_incoming(5).unwrap();
    assert_eq!(a.version(), j.version() + 1);
    assert_eq!((a.change(), a.target()), (None, None));
    assert_eq!(a.status(5), Some(MemberStatus::Removed));
    assert!(a.current().same_placement(s.current()));
    assert!(a.leave(1).is_ok(), "the next change may start");
    // After some flips: a removal of the joiner rebuilds what it took on the others.
    let mut part = j.clone();
    for _ in 0..10 {
        let p = part.moving_partitions()[0];
        part = part.complete(p).unwrap();
    }
    let r = part.abort_incoming(5).unwrap();
    assert_eq!(r.change(), Some(Change::Remove { node: 5 }));
    assert_eq!(r.status(5), Some(MemberStatus::Leaving));
    assert_eq!(
        r.moving_partitions().len(),
        10,
        "only what it took moves back"
    );
    let (done, _) = flip_all(r);
    assert_eq!(done.status(5), Some(MemberStatus::Removed));
    assert!(!done.current().nodes().contains(&5));
    for p in 0..PARTITION_COUNT {
        assert_eq!(done.owners(p).len(), 3, "partition {p}");
    }
    // A replacement aborted before any flip: the replaced node is up again.
    let rp = s.replace(2, 9, "127.0.0.1:9").unwrap();
    let a = rp.abort_incoming(9).unwrap();
    assert_eq!(a.status(2), Some(MemberStatus::Up));
    assert_eq!(a.status(9), Some(MemberStatus::Removed));
    assert!(a.remove(2).is_ok(), "the dead node can be removed next");
    assert!(matches!(
        s.abort_incoming(4),
        Err(RingChangeError::WrongStatus(4, MemberStatus::Up))
    ));
}

#[test]
fn changes_that_reorder_primaries_finish_in_large_clusters() {
    for k in [8u32, 16, 32] {
        let s = cluster(k);
        for change in [s.leave(k).unwrap(), s.admit(k + 1, "a").unwrap()] {
            let (done, _) = flip_all(change);
            assert_eq!(done.change(), None, "{k} nodes: the change never ends");
        }
    }
}

#[test]
fn encoding_round_trips_and_rejects_bad_bytes() {
    let s = cluster(4).admit(5, "127.0.0.1:7405").unwrap();
    let s = s.settle().unwrap();
    assert!(s.settled() && s.moves_may_run());
    let s = s
        .complete(s.moving_partitions()[0])
        .unwrap()
        .set_paused(true);
    assert!(!s.moves_may_run());
    let bytes = s.to_bytes();
    assert_eq!(RingState::decode(&bytes).unwrap(), s);
    let settled = cluster(3);
    assert_eq!(RingState::decode(&settled.to_bytes()).unwrap(), settled);
    for cut in 0..bytes.len() {
        assert!(RingState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(RingState::decode(&extra).is_err());
    for i in 0..bytes.len().min(200) {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        let _ = RingState::decode(&b); // never panics
    }
}
