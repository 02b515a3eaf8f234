//! Unit tests of the cluster core: levels, clock measurement and the max-offset rule, the
//! follower role, replicas refusing versions from too far ahead.

use super::*;
use crate::cluster::config::parse_nodes;
use crate::cluster::view::{MEMBERSHIP_SHARD, VIEW_REFRESH_MS};

/// A request that asks for the default runs at the node's `--default-consistency`; one
/// that names its level keeps it.
#[test]
fn the_default_level_is_the_configured_one() {
    let nodes = parse_nodes("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003").unwrap();
    for (configured, required) in [
        (Consistency::One, 1),
        (Consistency::Quorum, 2),
        (Consistency::All, 3),
    ] {
        let mut c = ClusterConfig::with_defaults(1, nodes.clone(), 3);
        c.default_consistency = configured;
        let node: ClusterNode<u32> = ClusterNode::new(c, 0, 1, HintQueue::in_memory(300));
        assert_eq!(node.level(Consistency::Default), configured);
        assert_eq!(node.required(Consistency::Default), required);
        assert_eq!(node.required(Consistency::One), 1);
        assert_eq!(node.required(Consistency::All), 3);
    }
    let c = ClusterConfig::with_defaults(1, nodes, 3);
    assert_eq!(
        c.default_consistency,
        Consistency::Quorum,
        "documented default"
    );
}
use crate::cluster::peer::ClockStamp;
use crate::protocol::{frame, Response};
use crate::storage::memory::MemoryStore;
use crate::storage::Write;
use crate::version::Version;

const NOW: u64 = 1_700_000_000_000;

fn node() -> ClusterNode<u32> {
    let c =
        ClusterConfig::build(1, "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003", 3).unwrap();
    ClusterNode::new(c, NOW, 1, HintQueue::in_memory(100))
}

/// Feed node 1 a gossip reply from `peer` whose clock is `offset_ms` from ours.
fn measure(n: &mut ClusterNode<u32>, store: &mut MemoryStore, peer: u32, offset_ms: i64) {
    let mut out = Vec::new();
    let stamp = ClockStamp {
        sent_ms: NOW.saturating_add_signed(offset_ms),
        echo_ms: NOW,
    };
    peer::put_gossip_reply(&mut out, 9, peer, &n.membership().entries(), stamp);
    let (f, _) = frame::parse(&out).unwrap().unwrap();
    n.on_peer_reply(NOW, store, peer, &f);
}

fn replicate(n: &mut ClusterNode<u32>, store: &mut MemoryStore, version: Version) -> PeerReply {
    let mut req = Vec::new();
    let w = Write {
        key: b"k",
        value: Some(b"v"),
        version,
        expires_at_ms: 0,
        causal: false,
    };
    peer::put_replicate(&mut req, 5, 0, n.ring().version(), &w);
    let (f, _) = frame::parse(&req).unwrap().unwrap();
    let mut out = Vec::new();
    n.on_peer_request(NOW, store, 2, f.id, f.op, f.aux, f.body, &mut out)
        .unwrap();
    let (r, _) = frame::parse(&out).unwrap().unwrap();
    let resp = Response::from_frame(&r).unwrap();
    PeerReply::decode(r.op, resp.status, resp.body).unwrap()
}

#[test]
fn writes_wait_for_measurement_then_follow_the_median() {
    let mut store = MemoryStore::new();
    let mut n = node();
    let refused = |n: &mut ClusterNode<u32>, store: &mut MemoryStore| {
        n.write(NOW, store, 1, b"k", Some(b"v"), 0, Consistency::One);
        match n.poll_output() {
            Some(Output::Reply {
                outcome: Outcome::Failed { status, message },
                ..
            }) => Some((status, message)),
            _ => None,
        }
    };
    // Nothing measured yet: refused.
    let (status, _) = refused(&mut n, &mut store).expect("refused before measuring");
    assert_eq!(status, crate::protocol::Status::ClockOffset);
    // Both peers 10 minutes behind: this node is 10 minutes ahead.
    measure(&mut n, &mut store, 2, -600_000);
    measure(&mut n, &mut store, 3, -600_000);
    assert_eq!(n.cluster_clock(NOW).offset_ms, 600_000);
    let (_, why) = refused(&mut n, &mut store).expect("refused when ahead");
    assert!(why.contains("ahead of the cluster"), "{why}");
    // One peer agrees with us, one is 10 minutes ahead: the median is us.
    measure(&mut n, &mut store, 2, 3);
    measure(&mut n, &mut store, 3, 600_000);
    assert_eq!(n.clock_refusal(NOW), None);
    n.elastic.confirmed_at = Some(NOW);
    assert!(refused(&mut n, &mut store).is_none());
    assert_eq!(
        n.stats_text()
            .lines()
            .find(|l| l.starts_with("coord_clock_refused")),
        Some("coord_clock_refused 2")
    );
}

/// A follower (a shard other than the membership shard) never gossips, refuses writes
/// and counts no peer alive until its first view, then decides with the view it got.
#[test]
fn a_follower_decides_with_the_membership_shards_view() {
    let mut store = MemoryStore::new();
    let mut lead = node();
    lead.set_shard(MEMBERSHIP_SHARD, 3);
    let mut follower = node();
    follower.set_shard(1, 3);
    assert!(follower.is_follower() && !lead.is_follower());
    // Ticks: only the membership shard gossips.
    lead.on_tick(NOW, &mut store);
    follower.on_tick(NOW, &mut store);
    let sends = |n: &mut ClusterNode<u32>| {
        std::iter::from_fn(|| n.poll_output())
            .filter(|o| matches!(o, Output::Send { .. }))
            .count()
    };
    assert!(sends(&mut lead) > 0);
    assert_eq!(sends(&mut follower), 0);
    assert_eq!(
        follower.stats_text().lines().next(),
        Some("cluster_pauses 0")
    );
    // No view yet: only itself alive, writes refused for the clock.
    assert_eq!(follower.alive_ids(), vec![1]);
    assert_eq!(follower.leader(), 1);
    assert_eq!(
        follower.peer_addr(2),
        Some("127.0.0.1:7002".parse().unwrap())
    );
    let why = follower.clock_refusal(NOW).expect("refused without a view");
    assert!(why.contains("not measured yet"), "{why}");
    // The membership shard measures both peers; its view goes out once, then only on
    // changes.
    measure(&mut lead, &mut store, 2, 3);
    measure(&mut lead, &mut store, 3, -3);
    lead.elastic.confirmed_at = Some(NOW);
    let view = lead.poll_view(NOW).expect("a first view");
    assert!(view.ring_lease_until > NOW);
    assert_eq!(view.alive, vec![1, 2, 3]);
    assert_eq!(view.members.len(), 3);
    assert!(view.clock.is_some_and(|c| c.complete()));
    assert_eq!(lead.poll_view(NOW + 1), None, "nothing changed");
    assert!(lead.poll_view(NOW + VIEW_REFRESH_MS).is_some(), "refresh");
    follower.on_view(NOW, &mut store, view.clone());
    assert_eq!(follower.alive_ids(), vec![1, 2, 3]);
    assert!(follower.is_alive(3) && !follower.is_alive(4));
    assert_eq!(follower.clock_refusal(NOW), None);
    assert_eq!(follower.render_cluster(), lead.render_cluster());
    assert_eq!(follower.clock_figures(NOW), lead.clock_figures(NOW));
    follower.write(NOW, &mut store, 7, b"k", Some(b"v"), 0, Consistency::All);
    let mut to: Vec<u32> = std::iter::from_fn(|| follower.poll_output())
        .filter_map(|o| match o {
            Output::Send { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    to.sort_unstable();
    assert_eq!(
        to,
        vec![2, 3],
        "replicated to both peers the view holds alive"
    );
    // A stray GOSSIP on a follower is refused, not answered with its idle membership.
    let mut req = Vec::new();
    peer::put_gossip(
        &mut req,
        4,
        2,
        &lead.membership().entries(),
        ClockStamp::default(),
    );
    let (f, _) = frame::parse(&req).unwrap().unwrap();
    let mut out = Vec::new();
    follower
        .on_peer_request(NOW, &mut store, 2, f.id, f.op, f.aux, f.body, &mut out)
        .unwrap();
    let (r, _) = frame::parse(&out).unwrap().unwrap();
    assert_eq!(
        Response::from_frame(&r).unwrap().status,
        crate::protocol::Status::Unavailable as u8
    );

    // Node 4 joins: the membership shard hears of it by gossip, its next view says so at
    // once, and the follower learns where to reach it and that it is alive.
    let mut entries = lead.membership().entries();
    entries.push(crate::cluster::peer::GossipEntry {
        node_id: 4,
        incarnation: NOW,
        heartbeat: 1,
        state: crate::cluster::peer::NodeState::Alive,
        ring_version: 1,
        addr: Some("127.0.0.1:7004".parse().unwrap()),
    });
    let mut req = Vec::new();
    peer::put_gossip(&mut req, 5, 2, &entries, ClockStamp::default());
    let (f, _) = frame::parse(&req).unwrap().unwrap();
    let mut out = Vec::new();
    lead.on_peer_request(NOW, &mut store, 2, f.id, f.op, f.aux, f.body, &mut out)
        .unwrap();
    assert_eq!(follower.peer_addr(4), None);
    let view = lead
        .poll_view(NOW + 2)
        .expect("members changed: a view at once");
    assert_eq!(view.alive, vec![1, 2, 3, 4]);
    follower.on_view(NOW + 2, &mut store, view);
    assert_eq!(
        follower.peer_addr(4),
        Some("127.0.0.1:7004".parse().unwrap())
    );
    assert_eq!(follower.alive_ids(), vec![1, 2, 3, 4]);
    assert_eq!(follower.members().len(), 4);
    assert_eq!(lead.peer_addr(4), follower.peer_addr(4));
}

#[test]
fn a_replica_refuses_versions_too_far_ahead_of_the_cluster_clock() {
    let mut store = MemoryStore::new();
    let mut n = node();
    let ahead = Version::new(NOW + 501, 0, 2);
    match replicate(&mut n, &mut store, ahead) {
        PeerReply::Write(WriteAck::Refused(why)) => assert!(why.contains("ahead"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.get(b"k").unwrap(), None);
    assert!(matches!(
        replicate(&mut n, &mut store, Version::new(NOW + 500, 0, 2)),
        PeerReply::Write(WriteAck::Done(_))
    ));
    // A node whose own clock is 10 minutes slow measures it, and judges by the cluster's
    // clock: a version from a sane node is stored, one 10 minutes further is not.
    let mut slow = node();
    let mut store = MemoryStore::new();
    measure(&mut slow, &mut store, 2, 600_000);
    measure(&mut slow, &mut store, 3, 600_000);
    slow.on_tick(NOW, &mut store);
    assert!(matches!(
        replicate(&mut slow, &mut store, Version::new(NOW + 600_100, 0, 2)),
        PeerReply::Write(WriteAck::Done(_))
    ));
    assert!(matches!(
        replicate(&mut slow, &mut store, Version::new(NOW + 1_200_000, 0, 2)),
        PeerReply::Write(WriteAck::Refused(_))
    ));
}

/// A node that joined starts from the ring it was given (it owns nothing in it), gossips
/// its version, and still coordinates: a write goes to the key's owners, none to itself.
#[test]
fn a_joined_node_starts_from_the_given_ring_and_owns_nothing() {
    let mut c = ClusterConfig::build(
        4,
        "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003,4=127.0.0.1:7004",
        3,
    )
    .unwrap();
    let ring = crate::cluster::Ownership::initial(&[1, 2, 3], 3).unwrap();
    c.initial_ring = Some(ring.clone());
    c.validate().unwrap();
    let mut n: ClusterNode<u32> = ClusterNode::new(c, NOW, 1, HintQueue::in_memory(100));
    // The map's placement, as a provisional ring state (version 0: the cluster's own is newer
    // whatever its version, so it is pulled at once), in which this node is not a member yet.
    assert!(n.ring().ownership().same_placement(&ring));
    assert_eq!(n.ring().version(), 0);
    assert!(n.ring().state().member(4).is_none());
    assert!(n.ring().partitions_of(4).is_empty());
    assert_eq!(n.membership().ring_version(), 0);
    let mut store = MemoryStore::new();
    for peer in [1, 2, 3] {
        measure(&mut n, &mut store, peer, 0);
    }
    n.elastic.confirmed_at = Some(NOW);
    n.write(NOW, &mut store, 1, b"k", Some(b"v"), 0, Consistency::Quorum);
    let mut to: Vec<u32> = std::iter::from_fn(|| n.poll_output())
        .filter_map(|o| match o {
            Output::Send { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    to.sort_unstable();
    assert_eq!(to, vec![1, 2, 3]);
    assert_eq!(store.get(b"k").unwrap(), None);
}

/// A REPLICATE or READ whose sender holds a ring older than the last change of the key's
/// partition here is refused "stale ring" with this node's ring version, nothing applied;
/// one at that version is served. With the test-only mutation, the check is skipped.
#[test]
fn replicas_refuse_senders_with_a_stale_ring() {
    let mut store = MemoryStore::new();
    let mut n = node();
    let v = n.ring().version();
    let p = crate::hash::partition_of(b"k");
    assert!(v >= 1 && n.ring().changed_at(p) == v);
    let send = |n: &mut ClusterNode<u32>, store: &mut MemoryStore, ring: u64, read: bool| {
        let mut req = Vec::new();
        if read {
            peer::put_read(&mut req, 5, ring, b"k", false);
        } else {
            let w = Write {
                key: b"k",
                value: Some(b"v"),
                version: Version::new(NOW, 0, 2),
                expires_at_ms: 0,
                causal: false,
            };
            peer::put_replicate(&mut req, 5, 0, ring, &w);
        }
        let (f, _) = frame::parse(&req).unwrap().unwrap();
        let mut out = Vec::new();
        let _ = n.on_peer_request(NOW, store, 2, f.id, f.op, f.aux, f.body, &mut out);
        let (r, _) = frame::parse(&out).unwrap().unwrap();
        let resp = Response::from_frame(&r).unwrap();
        PeerReply::decode(r.op, resp.status, resp.body).unwrap()
    };
    for read in [false, true] {
        let op = if read {
            peer::op::READ
        } else {
            peer::op::REPLICATE
        };
        assert_eq!(
            send(&mut n, &mut store, v - 1, read),
            PeerReply::StaleRing { op, ring: v }
        );
    }
    assert_eq!(store.get(b"k").unwrap(), None, "nothing applied");
    assert!(matches!(
        send(&mut n, &mut store, v, false),
        PeerReply::Write(WriteAck::Done(crate::storage::Applied::Stored))
    ));
    assert!(matches!(
        send(&mut n, &mut store, v, true),
        PeerReply::Read(Ok(Some(_)))
    ));
    let mut c =
        ClusterConfig::build(1, "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003", 3).unwrap();
    c.mutations.no_ring_version_check = true;
    let mut m: ClusterNode<u32> = ClusterNode::new(c, NOW, 1, HintQueue::in_memory(100));
    assert!(matches!(
        send(&mut m, &mut store, 0, true),
        PeerReply::Read(Ok(Some(_)))
    ));
}

/// The ring lease (`lease.rs`): a write or read that arrives while no peer confirmed the ring
/// within the failure timeout waits; a confirmation releases it, its deadline answers
/// UNAVAILABLE.
#[test]
fn requests_wait_for_the_ring_lease() {
    let mut store = MemoryStore::new();
    let mut n = node();
    for peer in [2, 3] {
        measure(&mut n, &mut store, peer, 0);
    }
    let sends = |n: &mut ClusterNode<u32>| {
        let mut replies = Vec::new();
        let mut sends = 0;
        while let Some(o) = n.poll_output() {
            match o {
                Output::Send { .. } => sends += 1,
                Output::Reply { ctx, outcome } => replies.push((ctx, outcome)),
                _ => {}
            }
        }
        (sends, replies)
    };
    sends(&mut n);
    // Never confirmed: held, nothing sent, no answer.
    assert!(!n.ring_lease_valid(NOW));
    n.write(NOW, &mut store, 1, b"k", Some(b"v"), 0, Consistency::All);
    n.read(NOW, &mut store, 3, b"k", Consistency::Quorum);
    assert_eq!(sends(&mut n), (0, vec![]));
    assert_eq!(store.get(b"k").unwrap(), None);
    // Confirmed (a pull answered while a majority is alive): released and coordinated (the
    // write to both peers, the read from at least one).
    n.note_ring_confirmed(NOW + 10);
    n.on_tick(NOW + 10, &mut store);
    let (sent, replies) = sends(&mut n);
    assert!(sent >= 3 && replies.is_empty(), "{sent} sent, {replies:?}");
    assert!(store.get(b"k").unwrap().is_some());
    // The lease runs out one failure timeout later: the next write waits, then times out.
    let later = NOW + 10 + n.ring_lease_ms() + 1;
    assert!(!n.ring_lease_valid(later));
    n.write(later, &mut store, 2, b"k2", Some(b"v"), 0, Consistency::One);
    let deadline = later + n.config().request_timeout_ms;
    assert!(n.next_timeout_ms() <= deadline);
    n.on_tick(deadline, &mut store);
    let (_, replies) = sends(&mut n);
    // (The first write, at ALL, timed out meanwhile: no peer answers here.)
    let held = replies.iter().find(|(ctx, _)| *ctx == 2);
    assert!(
        matches!(held, Some((_, Outcome::Failed { status: crate::protocol::Status::Unavailable, message }))
            if message.contains("confirmed")),
        "{replies:?}"
    );
    assert_eq!(store.get(b"k2").unwrap(), None);
    // A confirmation while this node sees no majority alive confirms nothing.
    let mut cut = node();
    let t = NOW + 10 * cut.config().failure_timeout_ms();
    cut.on_tick(t, &mut store);
    assert_eq!(
        cut.alive_ids(),
        vec![1],
        "peers silent for 10 failure timeouts"
    );
    cut.note_ring_confirmed(t);
    assert!(cut.ring_confirmed() && !cut.ring_lease_valid(t));
}
