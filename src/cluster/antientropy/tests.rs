//! Unit tests of anti-entropy: two cores exchanging frames directly over memory stores.

use super::horizon::horizon_of;
use super::*;
use crate::cluster::rng::SplitMix64;
use crate::hash::partition_of;
use crate::protocol::frame;
use crate::protocol::{FrameRef, RESPONSE_BIT};
use crate::storage::memory::MemoryStore;
use crate::storage::{Applied, Write};

fn pair_of_nodes() -> (AntiEntropy, AntiEntropy) {
    let mut c = ClusterConfig::build(1, "1=127.0.0.1:1,2=127.0.0.1:2", 2).unwrap();
    c.anti_entropy_interval_ms = 10_000;
    let ring = Ring::new(&c.node_ids(), 2);
    let a = AntiEntropy::new(&c, ring.clone(), 1_000_000);
    c.node_id = 2;
    let b = AntiEntropy::new(&c, ring, 1_000_000);
    (a, b)
}

fn put(aae: &mut AntiEntropy, store: &mut dyn Store, key: &[u8], v: u64, tomb: bool) {
    aae.tracked(store)
        .apply(Write {
            key,
            value: if tomb { None } else { Some(b"value") },
            version: Version(v),
            expires_at_ms: 0,
            causal: false,
        })
        .unwrap();
}

/// Run node 1's round against node 2, handing frames over directly. Returns the frames
/// node 1 sent.
fn round(
    a: &mut AntiEntropy,
    sa: &mut MemoryStore,
    b: &mut AntiEntropy,
    sb: &mut MemoryStore,
    now: u64,
) -> Vec<Vec<u8>> {
    let alive = |_: u32| true;
    a.trigger(now);
    a.on_tick(now, sa, &alive, 1);
    let mut sent = Vec::new();
    for _ in 0..100_000 {
        let Some((to, req)) = a.poll_transmit() else {
            break;
        };
        assert_eq!(to, b.me, "node 2's STATUS goes to the leader, node 1");
        let (f, _) = frame::parse(&req).unwrap().unwrap();
        let mut reply = Vec::new();
        b.on_request(now, sb, a.me, f.id, f.op, f.aux, f.body, &mut reply)
            .unwrap();
        let (rf, _) = frame::parse(&reply).unwrap().unwrap();
        a.on_reply(now, sa, b.me, &rf, &alive);
        sent.push(req);
    }
    a.on_tick(now, sa, &alive, 1);
    sent
}

#[test]
fn an_exchange_repairs_both_sides_newest_wins() {
    let (mut a, mut b) = pair_of_nodes();
    let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
    let v = |ms: u64| Version::new(ms, 0, 1).0;
    for i in 0..500 {
        let k = format!("k{i}");
        put(&mut a, &mut sa, k.as_bytes(), v(1_000_000), false);
        put(&mut b, &mut sb, k.as_bytes(), v(1_000_000), false);
    }
    put(&mut a, &mut sa, b"only-a", v(1_000_001), false);
    put(&mut b, &mut sb, b"only-b", v(1_000_001), false);
    put(&mut a, &mut sa, b"k1", v(1_000_002), true); // a newer tombstone on a
    put(&mut b, &mut sb, b"k2", v(1_000_003), false); // a newer value on b
    round(&mut a, &mut sa, &mut b, &mut sb, 1_000_010);
    for (k, ver, live) in [
        (&b"only-a"[..], v(1_000_001), true),
        (b"only-b", v(1_000_001), true),
        (b"k1", v(1_000_002), false),
        (b"k2", v(1_000_003), true),
    ] {
        for s in [&mut sa, &mut sb] {
            let r = s.get(k).unwrap().unwrap();
            assert_eq!((r.version.0, r.value.is_some()), (ver, live));
        }
    }
    assert_eq!(a.stats().keys_sent, 2);
    assert_eq!(a.stats().keys_repaired, 2);
    assert_eq!(a.stats().exchanges, PARTITION_COUNT as u64);
    // Equal now: the next round is one root comparison per partition.
    let sent = round(&mut a, &mut sa, &mut b, &mut sb, 1_000_020);
    assert_eq!(sent.len(), PARTITION_COUNT);
    assert!(sent.iter().all(|f| f[4] == ae_op::TREE));
}

#[test]
fn the_guard_refuses_old_writes_for_absent_keys_below_the_horizon() {
    let (mut a, _) = pair_of_nodes();
    let mut s = MemoryStore::new();
    let p = partition_of(b"gone");
    a.adopt(p, Version::new(2_000_000, 0, 0).0);
    let old = Version::new(1_000_000, 0, 1).0;
    let w = Write {
        key: b"gone",
        value: Some(b"value"),
        version: Version(old),
        expires_at_ms: 0,
        causal: false,
    };
    // A coordinator's write is refused (never acknowledged as "stale")...
    assert!(a.tracked(&mut s).apply(w).is_err());
    assert!(s.get(b"gone").unwrap().is_none(), "refused");
    // ...a hint delivery is answered stale, so its holder drops the obsolete hint...
    assert!(matches!(
        a.tracked_hint(&mut s).apply(w),
        Ok(Applied::Stale { .. })
    ));
    assert!(s.get(b"gone").unwrap().is_none());
    assert_eq!(a.stats().guard_refused, 2);
    // ...and a read repair, carrying the newest record of current replicas, is applied.
    a.tracked_repair(&mut s).apply(w).unwrap();
    assert_eq!(s.get(b"gone").unwrap().unwrap().version.0, old);
    // A key still held takes an older-than-horizon write that is newer than its record.
    let q = partition_of(b"held");
    put(
        &mut a,
        &mut s,
        b"held",
        Version::new(900_000, 0, 1).0,
        false,
    );
    a.adopt(q, Version::new(2_000_000, 0, 0).0);
    put(&mut a, &mut s, b"held", old, false);
    assert_eq!(s.get(b"held").unwrap().unwrap().version.0, old);
}

#[test]
fn the_leader_excludes_only_replicas_failed_longer_than_the_window() {
    let (mut a, _) = pair_of_nodes();
    a.window_ms = 1_000;
    let mut batch = Reports::new();
    for p in 0..PARTITION_COUNT as u16 {
        batch.insert((p, 2), 1_500_000);
    }
    a.leader_record(1, &batch);
    let all = |_: u32| true;
    let hs = a.leader_decide(1_600_000, &all);
    assert_eq!(hs.len(), PARTITION_COUNT);
    let h = horizon_of(1_500_000, a.grace_ms);
    assert!(hs.iter().all(|&(_, x)| x == h));
    // Node 2 fails: its pair's old report holds the horizon back until the window ends.
    let (mut a, _) = pair_of_nodes();
    a.window_ms = 1_000;
    a.on_member_event(1_600_000, &MemberEvent::Failed { node: 2 });
    let down = |n: u32| n != 2;
    assert!(
        a.leader_decide(1_600_500, &down).is_empty(),
        "no pair report"
    );
    a.leader_record(1, &batch);
    let hs = a.leader_decide(1_600_500, &down);
    assert!(hs.iter().all(|&(_, x)| x == h));
    // Past the window node 2 is excluded, but one replica of two is not enough to move
    // the horizon (nobody to have exchanged with): nothing is decided.
    assert!(a.leader_decide(1_700_000, &down).is_empty());
}

/// Replies and pushes stay within a frame whatever the values: large records go a few per
/// message, the largest value alone, and everything arrives.
#[test]
fn large_values_move_in_bounded_messages() {
    for b_starts in [true, false] {
        let (mut a, mut b) = pair_of_nodes();
        let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
        let v = Version::new(1_000_000, 0, 1);
        let big = vec![7u8; crate::limits::VALUE_SIZE_MAX];
        let mid = vec![8u8; 200 * 1024];
        for i in 0..12 {
            let k = format!("big{i}");
            let value: &[u8] = if i % 4 == 0 { &big } else { &mid };
            a.tracked(&mut sa)
                .apply(Write {
                    key: k.as_bytes(),
                    value: Some(value),
                    version: v,
                    expires_at_ms: 0,
                    causal: false,
                })
                .unwrap();
        }
        let sent = if b_starts {
            round(&mut b, &mut sb, &mut a, &mut sa, 1_000_100)
        } else {
            round(&mut a, &mut sa, &mut b, &mut sb, 1_000_100)
        };
        assert!(sent
            .iter()
            .all(|f| f.len() <= 4 + crate::limits::FRAME_SIZE_MAX));
        for i in 0..12 {
            let got = sb.get(format!("big{i}").as_bytes()).unwrap().unwrap();
            assert_eq!(
                got.value.unwrap().len(),
                if i % 4 == 0 { big.len() } else { mid.len() }
            );
        }
    }
}

/// A tombstone swept from one tree (below the horizon) but still in its store beats an
/// older value on the other replica, whichever side starts the exchange.
#[test]
fn swept_tombstones_still_in_the_store_win() {
    for a_starts in [true, false] {
        let (mut a, mut b) = pair_of_nodes();
        let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
        let old = Version::new(1_000_000, 0, 1).0;
        let tomb = Version::new(1_000_500, 0, 1).0;
        assert!(
            a.trees_ready(1_000_000, &mut sa, false),
            "a small store builds at once"
        );
        put(&mut a, &mut sa, b"k", old, false);
        put(&mut b, &mut sb, b"k", old, false);
        put(&mut a, &mut sa, b"k", tomb, true);
        let p = partition_of(b"k");
        a.adopt(p, Version::new(1_001_000, 0, 0).0);
        for _ in 0..100 {
            a.sweep_step(1_002_000);
        }
        assert!(a.index.tree(p).unwrap().get(b"k").is_none(), "swept");
        if a_starts {
            round(&mut a, &mut sa, &mut b, &mut sb, 1_002_000);
        } else {
            round(&mut b, &mut sb, &mut a, &mut sa, 1_002_000);
        }
        let got = sb.get(b"k").unwrap().unwrap();
        assert_eq!(
            (got.version.0, got.value),
            (tomb, None),
            "a_starts {a_starts}"
        );
    }
}

#[test]
fn rejoin_after_a_long_pause_or_absence() {
    // A restart over a non-empty store whose newest record is recent: serving reads.
    let (mut a, _) = pair_of_nodes();
    let mut s = MemoryStore::new();
    put(&mut a, &mut s, b"k", Version::new(999_000, 0, 1).0, false);
    let (mut a, _) = pair_of_nodes();
    a.build(&mut s).unwrap();
    assert!(a.serving_reads());
    // A newest record older than the window: rejoining, and the first round comes soon.
    let (mut a, _) = pair_of_nodes();
    a.window_ms = 500;
    a.build(&mut s).unwrap();
    assert!(!a.serving_reads());
    assert!(a.next_round_ms < 1_000_000 + a.interval_ms);
    let mut t = a.tracked(&mut s);
    assert!(t.get(b"k").is_err(), "reads refused while rejoining");
    // A tick gap longer than the window (the process was stopped) starts a rejoin too.
    let (mut b, _) = pair_of_nodes();
    b.window_ms = 500;
    let none = |_: u32| false;
    b.on_tick(1_000_100, &mut s, &none, 1);
    assert!(b.serving_reads());
    b.on_tick(1_000_700, &mut s, &none, 1);
    assert!(!b.serving_reads());
}

/// Random and mutated bodies for every anti-entropy request and reply decode to an error
/// or a value, never a panic.
#[test]
fn garbage_frames_never_panic() {
    let (mut a, mut b) = pair_of_nodes();
    let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
    for i in 0..200 {
        let k = format!("k{i}");
        put(
            &mut a,
            &mut sa,
            k.as_bytes(),
            Version::new(1_000_000, 0, 1).0,
            i % 5 == 0,
        );
        put(
            &mut b,
            &mut sb,
            k.as_bytes(),
            Version::new(1_000_001, 0, 2).0,
            false,
        );
    }
    // Collect real frames of an exchange to mutate.
    let mut valid = round(&mut a, &mut sa, &mut b, &mut sb, 1_000_100);
    let mut status = Vec::new();
    let mut batch = Reports::new();
    batch.insert((3, 2), 5);
    put_status_request(&mut status, 9, 1, &batch);
    valid.push(status);
    let mut rng = SplitMix64::new(99);
    let alive = |_: u32| true;
    for f in valid.iter().step_by(7).take(200) {
        let (op, body) = (f[4], &f[10..]);
        for cut in 0..body.len().min(64) {
            let mut out = Vec::new();
            let _ = b.on_request(1_000_200, &mut sb, 1, 1, op, 0, &body[..cut], &mut out);
        }
        for _ in 0..50 {
            let mut g = body.to_vec();
            if g.is_empty() {
                break;
            }
            let i = rng.below(g.len() as u64) as usize;
            g[i] = rng.next_u64() as u8;
            let mut out = Vec::new();
            let _ = b.on_request(1_000_200, &mut sb, 1, 1, op, 0, &g, &mut out);
            // The same bytes as a reply to any outstanding id.
            let rf = FrameRef {
                op: op | RESPONSE_BIT,
                aux: 0,
                id: 1 + rng.below(2_000) as u32,
                body: &g,
            };
            a.on_reply(1_000_200, &mut sa, 2, &rf, &alive);
        }
    }
    for op in [ae_op::TREE, ae_op::KEYS, ae_op::PUSH, ae_op::STATUS, 0x2F] {
        for _ in 0..200 {
            let n = rng.below(48) as usize;
            let g: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let mut out = Vec::new();
            let _ = b.on_request(1_000_300, &mut sb, 1, 1, op, 0, &g, &mut out);
            assert!(!out.is_empty(), "every request is answered");
        }
    }
}

/// A node whose clock runs ten minutes ahead reports its exchanges on the cluster's clock,
/// and not at all before its offset is measured: one fast clock must not push the leader's
/// horizon minutes into the future (tombstones a replica still lacks would be collected).
#[test]
fn exchanges_are_reported_on_the_cluster_clock_once_it_is_measured() {
    const AHEAD_MS: u64 = 600_000;
    let cluster_now = 1_000_000;
    let local_now = cluster_now + AHEAD_MS;
    for measured in [false, true] {
        let (mut a, mut b) = pair_of_nodes();
        let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
        put(&mut a, &mut sa, b"k", 900_000 << 22, false);
        a.set_clock_offset(measured.then_some(AHEAD_MS as i64));
        b.set_clock_offset(Some(0));
        round(&mut a, &mut sa, &mut b, &mut sb, local_now);
        assert!(
            sb.get(b"k").unwrap().is_some(),
            "the exchange moved the data"
        );
        let reported: Vec<u64> = a
            .reports
            .values()
            .chain(a.unreported.values())
            .copied()
            .collect();
        if measured {
            assert!(!reported.is_empty(), "measured: exchanges are reported");
            assert!(
                reported.iter().all(|&t| t == cluster_now),
                "started at the cluster's {cluster_now}, not the local {local_now}: {reported:?}"
            );
        } else {
            assert!(
                reported.is_empty(),
                "unmeasured: nothing reported ({reported:?})"
            );
        }
    }
}

/// A buffered apply (a replica serving REPLICATE) leaves its record for the turn's one write;
/// when that write fails, the store undoes the record and reports the key, and `resync`
/// returns the tree to what the store holds. An unbuffered apply fails at once instead.
#[test]
fn buffered_writes_undone_by_a_failed_flush_leave_the_tree() {
    use crate::storage::logstore::{LogConfig, LogStore};
    use crate::storage::vfs::MemVfs;
    let vfs = MemVfs::new();
    let (mut s, _) = LogStore::open(
        vfs.clone(),
        std::path::Path::new("/s"),
        LogConfig::default(),
    )
    .unwrap();
    let (mut a, _) = pair_of_nodes();
    assert!(a.trees_ready(1_000_000, &mut s, false));
    let p = partition_of(b"k");
    let w = |v: u64| Write {
        key: b"k",
        value: Some(b"value"),
        version: Version(v),
        expires_at_ms: 0,
        causal: false,
    };
    a.tracked(&mut s).apply(w(1)).unwrap();
    let root1 = a.index().tree(p).map(|t| t.root_from_scratch());
    vfs.set_space_max(Some(vfs.used_bytes() + 10));
    // Buffered: applied in memory and noted; nothing written yet.
    assert_eq!(
        a.tracked(&mut s).buffered().apply(w(2)).unwrap(),
        Applied::Stored
    );
    assert!(s.unflushed());
    assert_ne!(a.index().tree(p).map(|t| t.root_from_scratch()), root1);
    // The turn's write fails: undone, reported, and the tree follows the store back.
    assert!(s.flush().is_err());
    let mut undone = Vec::new();
    s.take_damaged(&mut undone);
    assert_eq!(undone, vec![b"k".to_vec()]);
    a.resync(&mut s, b"k");
    assert_eq!(s.version_of(b"k"), Some(Version(1)));
    assert_eq!(a.index().tree(p).map(|t| t.root_from_scratch()), root1);
    // Unbuffered: the failure comes back from `apply` itself.
    assert!(a.tracked(&mut s).apply(w(3)).is_err());
}

/// Run node 1's round against node 2 as the drivers do: both tick every 5 ms (so each
/// builds its trees a step a tick) and the frames of both go over as they are sent (node 2
/// runs a round of its own when it built its trees for node 1's). Returns the time node 1's
/// round ended, the requests node 1 sent and how many of them were answered OVERLOADED.
fn ticked_round(
    a: &mut AntiEntropy,
    sa: &mut MemoryStore,
    b: &mut AntiEntropy,
    sb: &mut MemoryStore,
    mut now: u64,
) -> (u64, Vec<Vec<u8>>, usize) {
    let alive = |_: u32| true;
    let rounds = a.stats().rounds;
    a.trigger(now);
    let (mut sent, mut busy) = (Vec::new(), 0);
    for _ in 0..10_000 {
        a.on_tick(now, sa, &alive, 1);
        b.on_tick(now, sb, &alive, 1);
        loop {
            let (from_a, req) = match (a.poll_transmit(), b.poll_transmit()) {
                (Some((_, req)), _) => (true, req),
                (None, Some((_, req))) => (false, req),
                (None, None) => break,
            };
            let (f, _) = frame::parse(&req).unwrap().unwrap();
            let mut reply = Vec::new();
            let (client, cs, server, ss) = if from_a {
                (&mut *a, &mut *sa, &mut *b, &mut *sb)
            } else {
                (&mut *b, &mut *sb, &mut *a, &mut *sa)
            };
            server
                .on_request(now, ss, client.me, f.id, f.op, f.aux, f.body, &mut reply)
                .unwrap();
            let (rf, _) = frame::parse(&reply).unwrap().unwrap();
            client.on_reply(now, cs, server.me, &rf, &alive);
            if from_a {
                busy += usize::from(rf.aux == crate::protocol::Status::Overloaded as u8);
                sent.push(req);
            }
        }
        if a.round.is_none() && a.stats().rounds > rounds {
            return (now, sent, busy);
        }
        now += 5;
    }
    panic!("the round did not end");
}

fn trees_off(a: &AntiEntropy) -> bool {
    a.index.trees.iter().all(Option::is_none) && !a.index.tracking
}

/// Trees are built when anti-entropy needs them — a step a tick, a peer asking meanwhile
/// answered OVERLOADED and asking again — and dropped when idle; writes made while they are
/// off are found by the next build.
#[test]
fn trees_are_built_on_demand_in_steps_and_dropped_when_idle() {
    use crate::limits::{
        AE_TREES_DROP_NOTES_MIN, AE_TREES_IDLE_MS, AE_TREE_BUILD_COST_PER_KEY,
        AE_TREE_BUILD_KEYS_PER_TICK_MIN,
    };
    let (mut a, mut b) = pair_of_nodes();
    let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
    let v = Version::new(1_000_000, 0, 1).0;
    for i in 0..3 * AE_TREE_BUILD_KEYS_PER_TICK_MIN {
        let k = format!("k{i}");
        put(&mut a, &mut sa, k.as_bytes(), v, false);
        put(&mut b, &mut sb, k.as_bytes(), v, false);
    }
    put(&mut a, &mut sa, b"only-a", v, false);
    assert!(
        trees_off(&a) && trees_off(&b),
        "writes skip trees not built"
    );
    let (now, _, busy) = ticked_round(&mut a, &mut sa, &mut b, &mut sb, 1_000_100);
    assert!(busy > 0, "node 2 was building its trees when first asked");
    assert_eq!(a.stats().exchanges, PARTITION_COUNT as u64);
    assert_eq!(a.stats().exchanges_failed, 0);
    assert_eq!((a.stats().tree_builds, b.stats().tree_builds), (1, 1));
    assert!(
        sb.get(b"only-a").unwrap().is_some(),
        "the exchange moved it"
    );
    // Idle, few writes since: kept (their upkeep has cost less than a build would).
    let alive = |_: u32| true;
    let now = now + AE_TREES_IDLE_MS;
    a.on_tick(now, &mut sa, &alive, 1);
    b.on_tick(now, &mut sb, &alive, 1);
    assert!(!trees_off(&a) && !trees_off(&b), "kept");
    // Writes whose upkeep cost a build since: both drop their trees.
    let n = 3 * AE_TREE_BUILD_KEYS_PER_TICK_MIN;
    let upkeep = (sa.len() as u64 * AE_TREE_BUILD_COST_PER_KEY).max(AE_TREES_DROP_NOTES_MIN);
    for i in 0..upkeep as usize {
        let k = format!("k{}", i % n); // overwrites: the stores keep their sizes
        put(&mut a, &mut sa, k.as_bytes(), v + 1 + i as u64, false);
        put(&mut b, &mut sb, k.as_bytes(), v + 1 + i as u64, false);
    }
    assert!(
        b.stats().rounds > 0,
        "node 2 ran its round on the trees it built"
    );
    assert!(b.round.is_none(), "and it ended");
    a.on_tick(now, &mut sa, &alive, 1);
    b.on_tick(now, &mut sb, &alive, 1);
    assert!(trees_off(&a) && trees_off(&b), "dropped when idle");
    // A write while they are off is found by the next build.
    put(&mut b, &mut sb, b"only-b", v, false);
    let (now, _, _) = ticked_round(&mut a, &mut sa, &mut b, &mut sb, now);
    assert!(sa.get(b"only-b").unwrap().is_some());
    assert_eq!((a.stats().tree_builds, b.stats().tree_builds), (2, 2));
    // Equal now, trees still live: one root comparison per partition, nobody waiting.
    let (_, sent, busy) = ticked_round(&mut a, &mut sa, &mut b, &mut sb, now + 10);
    assert_eq!((sent.len(), busy), (PARTITION_COUNT, 0));
    assert_eq!(a.stats().exchanges_failed, 0);
}

/// Keys removed while a build lists the log store (a removal moves the last entry into its
/// hole, maybe below the cursor) and keys added (appended at the end) cost the top-down
/// listing nothing: it ends in its usual steps with the trees of the final store.
#[test]
fn a_build_the_log_store_removes_keys_under_ends_exact() {
    use crate::limits::AE_TREE_BUILD_KEYS_PER_TICK_MIN;
    use crate::storage::logstore::{LogConfig, LogStore};
    use crate::storage::vfs::MemVfs;
    let (mut s, _) = LogStore::open(
        MemVfs::new(),
        std::path::Path::new("/s"),
        LogConfig::default(),
    )
    .unwrap();
    let (mut a, _) = pair_of_nodes();
    let v = |i: u64| Version::new(1_000_000 + i, 0, 1).0;
    // Tombstones below the horizon (left out of trees, removable) among live keys.
    let horizon = Version::new(1_000_000, 0, 0).0;
    let n = 2 * AE_TREE_BUILD_KEYS_PER_TICK_MIN as u64;
    for i in 0..n {
        put(&mut a, &mut s, format!("k{i}").as_bytes(), v(i), false);
        if i % 100 == 0 {
            put(
                &mut a,
                &mut s,
                format!("t{i}").as_bytes(),
                horizon - 1,
                true,
            );
        }
    }
    for p in 0..PARTITION_COUNT {
        a.adopt(p, horizon);
    }
    assert!(
        !a.trees_ready(1_000_000, &mut s, false),
        "too large for one step"
    );
    let (now, ticks) = build_ticking(&mut a, &mut s, 1_000_000, |a, s, tick| {
        // Two tombstones go a tick (the last entries move into their holes), a key comes.
        let mut gone = 0;
        let mut doomed = |k: &[u8]| {
            let d = k[0] == b't' && gone < 2;
            gone += usize::from(d);
            d
        };
        let mut c = Some(0);
        while let Some(at) = c {
            c = s.forget_step(&mut doomed, at, 1024).unwrap().1;
        }
        put(a, s, format!("new{tick}").as_bytes(), v(n + tick), false);
    });
    assert_eq!(ticks, 2, "3 steps, one within `trees_ready`: no restart");
    assert_trees_as_built_afresh(&mut a, &mut s, now);
}

/// The in-memory store's listing order changes with a new key (its hash map may grow):
/// the build starts over, and past the restarts allowed lists the rest in one step, ending
/// with the trees of the final store.
#[test]
fn a_build_the_memory_store_reorders_under_starts_over_and_ends_exact() {
    use crate::limits::{AE_TREE_BUILD_KEYS_PER_TICK_MIN, AE_TREE_BUILD_RESTARTS_MAX};
    let (mut a, _) = pair_of_nodes();
    let mut s = MemoryStore::new();
    let v = |i: u64| Version::new(1_000_000 + i, 0, 1).0;
    let n = 2 * AE_TREE_BUILD_KEYS_PER_TICK_MIN as u64;
    for i in 0..n {
        put(&mut a, &mut s, format!("k{i}").as_bytes(), v(i), false);
    }
    assert!(
        !a.trees_ready(1_000_000, &mut s, false),
        "too large for one step"
    );
    let (now, ticks) = build_ticking(&mut a, &mut s, 1_000_000, |a, s, tick| {
        put(a, s, format!("new{tick}").as_bytes(), v(n + tick), false);
    });
    // Without new keys it would take 1 tick (2 steps, one within `trees_ready`).
    assert_eq!(
        ticks,
        u64::from(AE_TREE_BUILD_RESTARTS_MAX) + 1,
        "it restarted each tick, then listed the rest at once"
    );
    assert_trees_as_built_afresh(&mut a, &mut s, now);
}

/// Tick `a` every 5 ms from `now` until its tree build ends, calling `between(a, store,
/// tick)` before each tick (from 0). Returns when the build ended and the ticks it took.
fn build_ticking(
    a: &mut AntiEntropy,
    store: &mut dyn Store,
    mut now: u64,
    mut between: impl FnMut(&mut AntiEntropy, &mut dyn Store, u64),
) -> (u64, u64) {
    let alive = |_: u32| true;
    let mut ticks = 0;
    while a.trees != super::lifecycle::Trees::Live {
        between(a, store, ticks);
        ticks += 1;
        now += 5;
        a.on_tick(now, store, &alive, 1);
        assert!(ticks < 100, "the build ends");
    }
    (now, ticks)
}

/// `a`'s trees equal those a fresh core builds from `store` now.
fn assert_trees_as_built_afresh(a: &mut AntiEntropy, store: &mut dyn Store, now: u64) {
    let (mut fresh, _) = pair_of_nodes();
    for p in 0..PARTITION_COUNT {
        fresh.adopt(p, a.index.horizon(p));
    }
    fresh.trees_ready(now, store, false);
    build_ticking(&mut fresh, store, now, |_, _, _| {});
    for p in 0..PARTITION_COUNT {
        let root = |x: &mut AntiEntropy| x.index.tree_hashed(p).hash(0, 0);
        assert_eq!(root(a), root(&mut fresh), "partition {p}");
    }
}

/// Writes that land while a build lists the store reach the trees whether the listing has
/// passed their keys (noted as they land) or not (listed later): the build ends with the
/// trees of the final store.
#[test]
fn writes_during_a_build_reach_the_trees() {
    use crate::limits::AE_TREE_BUILD_KEYS_PER_TICK_MIN;
    let (mut a, _) = pair_of_nodes();
    let mut s = MemoryStore::new();
    let n = 3 * AE_TREE_BUILD_KEYS_PER_TICK_MIN as u64;
    let v = |i: u64, round: u64| Version::new(1_000_000 + round, 0, 1).0 + i;
    for i in 0..n {
        put(&mut a, &mut s, format!("k{i}").as_bytes(), v(i, 0), false);
    }
    assert!(
        !a.trees_ready(1_000_000, &mut s, false),
        "too large for one step"
    );
    let (now, ticks) = build_ticking(&mut a, &mut s, 1_000_000, |a, s, tick| {
        // Overwrites only (the map keeps its order): every key, listed or not, changes.
        for i in 0..n {
            put(a, s, format!("k{i}").as_bytes(), v(i, tick + 1), i % 5 == 0);
        }
    });
    assert_eq!(ticks, 2, "3 steps, one within `trees_ready`: no restart");
    assert_trees_as_built_afresh(&mut a, &mut s, now);
}

/// While a join runs, a round leaves out every pair with a pending owner, from both sides:
/// the partition reaches its pending owner through the move's throttled copy, and a round's
/// exchange would push it whole at once. The round is not full.
#[test]
fn rounds_leave_partitions_moving_to_a_pending_owner_to_the_move() {
    use crate::cluster::ringstate::RingState;
    use std::sync::Arc;
    let nodes = [
        (1, "127.0.0.1:1".to_string()),
        (2, "127.0.0.1:2".to_string()),
    ];
    let joining = RingState::initial(&nodes, 2)
        .unwrap()
        .admit(3, "127.0.0.1:3")
        .unwrap();
    let ring = Ring::from_state(Arc::new(joining));
    let moving: Vec<usize> = (0..PARTITION_COUNT)
        .filter(|&p| ring.state().pending(p).any(|n| n == 3))
        .collect();
    assert!(!moving.is_empty(), "the join moves partitions to node 3");
    let mut c = ClusterConfig::build(1, "1=127.0.0.1:1,2=127.0.0.1:2", 2).unwrap();
    c.anti_entropy_interval_ms = 10_000;
    let alive = |_: u32| true;
    for me in [1, 3] {
        c.node_id = me;
        let mut a = AntiEntropy::new(&c, ring.clone(), 1_000_000);
        let mut store = MemoryStore::new();
        put(&mut a, &mut store, b"k", 5, false);
        a.trigger(1_000_000);
        a.on_tick(1_000_000, &mut store, &alive, 1);
        assert_eq!(a.stats().rounds, 1, "node {me}: the round started");
        // The pairs still queued and those whose exchange started already (node 3's round,
        // with nothing to do, ended at once).
        let queued = a
            .round
            .as_ref()
            .map(|r| r.queue.clone())
            .unwrap_or_default();
        let pairs: Vec<(usize, u32)> = queued
            .into_iter()
            .chain(a.exchanges.values().map(|x| (x.partition, x.peer)))
            .collect();
        assert!(
            a.round.as_ref().is_some_and(|r| !r.full) || a.stats().full_rounds == 0,
            "node {me}: pairs left out, so not full"
        );
        assert!(
            pairs
                .iter()
                .all(|&(p, peer)| !ring.state().pending(p).any(|n| n == peer || n == me)),
            "node {me}: no exchange with a pending owner"
        );
        if me == 1 {
            let shared = (0..PARTITION_COUNT).filter(|&p| ring.holds(1, p) && ring.holds(2, p));
            assert_eq!(
                pairs.len(),
                shared.count(),
                "node 1 still exchanges every partition it shares with node 2"
            );
        } else {
            assert!(
                pairs.is_empty(),
                "node 3 only holds partitions moving to it"
            );
        }
    }
}
