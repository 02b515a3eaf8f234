//! Unit tests of the membership: merge, failure detection, incarnations, leader, members added and forgotten.

use super::*;

fn config(id: u32, n: u32) -> ClusterConfig {
    let list: Vec<String> = (1..=n)
        .map(|i| format!("{i}=127.0.0.1:{}", 7000 + i))
        .collect();
    let mut c = ClusterConfig::build(id, &list.join(","), 1).unwrap();
    c.gossip_interval_ms = 100;
    c.failure_threshold = 5;
    c
}

/// Deliver every queued push and its pull reply, instantly, except to/from `down`.
fn exchange(nodes: &mut [Membership], now: u64, down: &[u32]) {
    for i in 0..nodes.len() {
        while let Some((to, frame)) = nodes[i].poll_transmit() {
            let from = nodes[i].self_id();
            if down.contains(&to) || down.contains(&from) {
                continue;
            }
            let body = &frame[10..];
            let Ok(peer::PeerRequest::Gossip {
                sender,
                entries,
                clock,
            }) = peer::PeerRequest::decode(frame[4], frame[5], body)
            else {
                panic!("not gossip")
            };
            let j = nodes.iter().position(|m| m.self_id() == to).unwrap();
            let mut reply = Vec::new();
            nodes[j].handle_gossip(now, 1, sender, &entries, clock, &mut reply);
            let r = peer::PeerReply::decode(reply[4], reply[5], &reply[10..]).unwrap();
            let peer::PeerReply::Gossip {
                sender,
                entries,
                clock,
            } = r
            else {
                panic!()
            };
            nodes[i].on_gossip(now, sender, &entries);
            nodes[i].on_clock_reply(now, sender, clock);
        }
    }
}

#[test]
fn failure_detected_after_threshold_and_recovery_on_restart() {
    let mut rng = SplitMix64::new(7);
    let mut nodes: Vec<Membership> = (1..=3)
        .map(|i| Membership::new(&config(i, 3), 1_000))
        .collect();
    let mut now = 1_000;
    for _ in 0..20 {
        for n in nodes.iter_mut() {
            n.on_tick(now, &mut rng);
        }
        exchange(&mut nodes, now, &[]);
        now += 10;
    }
    assert!(nodes.iter().all(|n| n.alive_ids() == vec![1, 2, 3]));
    assert!(nodes.iter().all(|n| n.leader() == 1));
    for n in nodes.iter_mut() {
        while n.poll_event().is_some() {}
    }

    // Node 1 (the leader) goes silent.
    let stopped = now;
    let mut detected = None;
    while now < stopped + 5_000 {
        for n in nodes.iter_mut() {
            n.on_tick(now, &mut rng);
        }
        exchange(&mut nodes, now, &[1]);
        if detected.is_none() && !nodes[1].is_alive(1) && !nodes[2].is_alive(1) {
            detected = Some(now - stopped);
        }
        now += 10;
    }
    let took = detected.expect("node 1 marked failed");
    // interval × threshold = 500 ms after the last heartbeat heard, which is up to one
    // interval (100 ms) older than the moment node 1 went silent; plus one tick.
    assert!((400..=510).contains(&took), "detected after {took} ms");
    assert_eq!(nodes[1].leader(), 2);
    assert_eq!(nodes[2].leader(), 2);
    assert!(nodes[1].render().contains("1 127.0.0.1:7001 failed"));
    assert!(nodes[1]
        .render()
        .contains("2 127.0.0.1:7002 alive 1000 leader self"));
    let mut evs = Vec::new();
    while let Some(e) = nodes[1].poll_event() {
        evs.push(e);
    }
    assert_eq!(
        evs,
        vec![
            MemberEvent::Failed { node: 1 },
            MemberEvent::LeaderChanged { from: 1, to: 2 }
        ]
    );

    // Node 1 restarts: a fresh view with a later start time.
    nodes[0] = Membership::new(&config(1, 3), now);
    let restart = now;
    for _ in 0..30 {
        for n in nodes.iter_mut() {
            n.on_tick(now, &mut rng);
        }
        exchange(&mut nodes, now, &[]);
        now += 10;
    }
    assert!(nodes[1].is_alive(1) && nodes[2].is_alive(1));
    assert_eq!(nodes[1].member(1).unwrap().incarnation, restart);
    assert_eq!(nodes[2].leader(), 1);
    let mut evs = Vec::new();
    while let Some(e) = nodes[2].poll_event() {
        evs.push(e);
    }
    assert!(evs.contains(&MemberEvent::Recovered {
        node: 1,
        incarnation: restart
    }));
    assert!(evs.contains(&MemberEvent::LeaderChanged { from: 2, to: 1 }));
}

#[test]
fn a_paused_node_does_not_fail_everybody_when_it_resumes() {
    let mut rng = SplitMix64::new(1);
    let mut m = Membership::new(&config(1, 3), 1_000);
    for t in 0..5 {
        m.on_tick(1_000 + t * 10, &mut rng);
    }
    // Ten seconds without a tick (the threshold is 500 ms).
    m.on_tick(11_000, &mut rng);
    assert_eq!(m.alive_ids(), vec![1, 2, 3]);
    assert_eq!(m.stats().pauses, 1);
    // If nobody answers after the resume, the usual timeout applies.
    let mut t = 11_000;
    while m.alive_ids().len() == 3 {
        t += 10;
        m.on_tick(t, &mut rng);
    }
    assert!((11_400..=11_500).contains(&t), "failed at {t}");
}

#[test]
fn higher_incarnation_wins_then_heartbeat() {
    let mut m = Membership::new(&config(1, 2), 100);
    let e = |inc, hb| GossipEntry {
        node_id: 2,
        incarnation: inc,
        heartbeat: hb,
        state: NodeState::Alive,
        ring_version: 0,
        addr: None,
    };
    m.on_gossip(200, 2, &[e(50, 9)]);
    assert_eq!(m.member(2).unwrap().heartbeat, 9);
    m.on_gossip(300, 2, &[e(50, 3)]); // older heartbeat: ignored
    assert_eq!(m.member(2).unwrap().heartbeat, 9);
    assert_eq!(m.member(2).unwrap().last_progress_ms, 200);
    m.on_gossip(400, 2, &[e(60, 1)]); // restart: lower heartbeat, higher incarnation
    assert_eq!(
        (
            m.member(2).unwrap().incarnation,
            m.member(2).unwrap().heartbeat
        ),
        (60, 1)
    );
    assert!(m.poll_event().is_some_and(|ev| ev
        == MemberEvent::Restarted {
            node: 2,
            incarnation: 60
        }));
    // Someone claims a higher incarnation for us: we jump above it.
    m.on_gossip(
        500,
        2,
        &[GossipEntry {
            node_id: 1,
            ..e(1_000, 0)
        }],
    );
    assert_eq!(m.incarnation(), 1_001);
}

#[test]
fn gossip_targets_follow_the_seed() {
    let pick = |seed| {
        let mut m = Membership::new(&config(1, 5), 0);
        let mut r = SplitMix64::new(seed);
        let mut targets = Vec::new();
        for t in 0..10 {
            m.on_tick(t * 100, &mut r);
            while let Some((to, _)) = m.poll_transmit() {
                targets.push(to);
            }
        }
        targets
    };
    assert_eq!(pick(3), pick(3));
    let t = pick(3);
    assert_eq!(t.len(), 20);
    assert!(t.iter().all(|&x| (2..=5).contains(&x)));
    assert!(t.chunks(2).all(|c| c[0] != c[1]));
}

fn entry(id: u32, inc: u64, hb: u64, addr: Option<&str>) -> GossipEntry {
    GossipEntry {
        node_id: id,
        incarnation: inc,
        heartbeat: hb,
        state: NodeState::Alive,
        ring_version: 0,
        addr: addr.map(|a| a.parse().unwrap()),
    }
}

/// A node that joins through one member (its config: the others and itself) becomes known
/// to every node by gossip, alive, with its address; everyone else learns it second hand.
#[test]
fn a_joining_node_becomes_known_to_all_by_gossip() {
    let mut rng = SplitMix64::new(11);
    let mut nodes: Vec<Membership> = (1..=3)
        .map(|i| Membership::new(&config(i, 3), 1_000))
        .collect();
    // Node 4 knows the three (from the seed's map) and itself.
    nodes.push(Membership::new(&config(4, 4), 1_000));
    nodes[3].set_ring_version(5);
    let mut now = 1_000;
    for _ in 0..40 {
        for n in nodes.iter_mut() {
            n.on_tick(now, &mut rng);
        }
        exchange(&mut nodes, now, &[]);
        now += 10;
    }
    for n in &nodes {
        assert_eq!(n.alive_ids(), vec![1, 2, 3, 4], "node {}", n.self_id());
        assert_eq!(n.addr_of(4), Some("127.0.0.1:7004".parse().unwrap()));
        assert_eq!(n.member(4).unwrap().ring_version, 5);
        assert_eq!(n.leader(), 1);
    }
    assert!(nodes[..3].iter().all(|n| n.stats().members_added == 1));
    // Hearing of node 4 never made a node's clock incomplete (it counts once measured).
    let mut m = Membership::new(&config(1, 3), 1_000);
    m.on_clock_reply(
        1_010,
        2,
        Some(ClockStamp {
            sent_ms: 1_005,
            echo_ms: 1_000,
        }),
    );
    m.on_clock_reply(
        1_010,
        3,
        Some(ClockStamp {
            sent_ms: 1_005,
            echo_ms: 1_000,
        }),
    );
    assert!(m.cluster_clock(1_010).complete());
    m.on_gossip(1_020, 2, &[entry(4, 1_000, 1, Some("127.0.0.1:7004"))]);
    assert!(m.is_alive(4));
    assert!(m.cluster_clock(1_020).complete());
    assert_eq!(m.cluster_clock(1_020).live, 2);
    m.on_clock_reply(
        1_030,
        4,
        Some(ClockStamp {
            sent_ms: 1_025,
            echo_ms: 1_020,
        }),
    );
    assert_eq!(m.cluster_clock(1_030).live, 3);
    let line4 = nodes[0].render().lines().nth(3).unwrap().to_string();
    assert!(line4.starts_with("4 127.0.0.1:7004 alive 1000"), "{line4}");
    assert!(line4.ends_with(" ring_version=5"), "{line4}");
    let mut evs = Vec::new();
    while let Some(e) = nodes[0].poll_event() {
        evs.push(e);
    }
    assert_eq!(evs, vec![MemberEvent::Added { node: 4 }]);
    // The clock of node 4 is measured everywhere (a push goes to a new member at once).
    assert!(nodes.iter().all(|n| n.cluster_clock(now).complete()));
}

#[test]
fn entries_without_address_or_of_forgotten_nodes_add_nobody() {
    let mut m = Membership::new(&config(1, 2), 100);
    m.on_gossip(200, 2, &[entry(9, 5, 1, None)]);
    assert!(m.member(9).is_none());
    m.on_gossip(200, 2, &[entry(9, 5, 1, Some("127.0.0.1:7009"))]);
    assert!(m.is_alive(9));
    assert_eq!(m.member(9).unwrap().last_progress_ms, 200);
    m.forget(9);
    assert!(m.member(9).is_none() && m.is_forgotten(9));
    m.on_gossip(300, 2, &[entry(9, 5, 2, Some("127.0.0.1:7009"))]);
    assert!(
        m.member(9).is_none(),
        "a forgotten node is never re-added by gossip"
    );
    // Added explicitly, it is a member again.
    assert!(m.add_member(9, "127.0.0.1:7019".parse().unwrap()));
    assert_eq!(m.addr_of(9), Some("127.0.0.1:7019".parse().unwrap()));
    assert!(!m.is_forgotten(9));
    assert!(
        !m.add_member(1, "127.0.0.1:1".parse().unwrap()),
        "not itself"
    );
    // A node's own news brings its new address; older news, a relay's, does not, nor
    // anything about a configured node.
    m.on_gossip(400, 2, &[entry(9, 6, 1, Some("127.0.0.1:7049"))]);
    assert_eq!(m.addr_of(9), Some("127.0.0.1:7019".parse().unwrap()));
    m.on_gossip(400, 9, &[entry(9, 6, 1, Some("127.0.0.1:7029"))]);
    assert_eq!(m.addr_of(9), Some("127.0.0.1:7029".parse().unwrap()));
    m.on_gossip(400, 9, &[entry(9, 5, 9, Some("127.0.0.1:7039"))]);
    assert_eq!(m.addr_of(9), Some("127.0.0.1:7029".parse().unwrap()));
    m.on_gossip(400, 2, &[entry(2, 9, 9, Some("127.0.0.1:7777"))]);
    assert_eq!(m.addr_of(2), Some("127.0.0.1:7002".parse().unwrap()));
    // Ring versions merge as the maximum.
    let mut e = entry(2, 1, 1, None);
    e.ring_version = 7;
    m.on_gossip(500, 2, &[e]);
    e.ring_version = 3;
    m.on_gossip(500, 2, &[e]);
    assert_eq!(m.member(2).unwrap().ring_version, 7);
    m.set_ring_version(4);
    assert_eq!(m.ring_version(), 4);
    assert_eq!(m.entries()[0].ring_version, 4);
}

#[test]
fn the_member_table_is_bounded() {
    let mut m = Membership::new(&config(1, 2), 100);
    let entries: Vec<GossipEntry> = (10..10 + CLUSTER_NODES_MAX as u32)
        .map(|id| entry(id, 1, 1, Some(&format!("127.0.0.1:{}", 9000 + id))))
        .collect();
    m.on_gossip(200, 2, &entries);
    assert_eq!(m.members().len(), CLUSTER_NODES_MAX);
    assert_eq!(m.stats().members_ignored, 2);
    assert!(!m.add_member(500, "127.0.0.1:1".parse().unwrap()));
    // Forgetting one makes room.
    m.forget(10);
    assert!(m.add_member(500, "127.0.0.1:1".parse().unwrap()));
}
