//! Siblings mode (`--conflicts siblings`, protocol.md § 19) in the simulator's scripted
//! cluster: the bugs `kvsim --conflicts siblings` found, each shown by the smallest scenario.

use dkv::causal::CausalState;
use dkv::cluster::Conflicts;
use dkv::hash::shard_of;
use dkv::protocol::siblings::decode_causal_get_reply;
use dkv::protocol::{Consistency, Request, Status};
use dkv::sim::{Cluster, ClusterSpec};

fn spec(nodes: u32, replicas: usize, shards: usize) -> ClusterSpec {
    let mut s = ClusterSpec::new(nodes, replicas);
    s.shards = vec![shards];
    s.gossip_interval_ms = 50;
    s.failure_threshold = 4;
    s.request_timeout_ms = 300;
    s.conflicts = Conflicts::Siblings;
    s
}

/// The values of the siblings node `id` holds for `key`.
fn held_values(c: &mut Cluster, id: u32, key: &[u8]) -> Vec<Vec<u8>> {
    let Some(rec) = c.replica(id, key) else {
        return Vec::new();
    };
    assert!(rec.causal, "a siblings-mode record is causal");
    let state = CausalState::decode(rec.value.as_deref().unwrap_or(&[])).unwrap();
    state.siblings().iter().map(|s| s.value.clone()).collect()
}

/// A causal request that lands on a shard not owning its key is forwarded to the shard that
/// does, which coordinates it (kvsim --conflicts siblings seed 37: the owning shard ran it on
/// its single-node path, which answered BAD_REQUEST, "this node resolves conflicts
/// last-write-wins").
#[test]
fn a_causal_request_on_another_shard_is_coordinated_by_the_owning_one() {
    let mut c = Cluster::start(spec(3, 3, 4));
    let key = b"k";
    let other = (shard_of(key, 4) + 1) % 4;
    let put = Request::CausalPut {
        key,
        value: b"v",
        ttl_seconds: 0,
        context: &[],
        consistency: Consistency::Quorum,
    };
    let t = c.send_to(1, other, &put).expect("n1 is up");
    let r = c.wait(t).expect("answered");
    assert_eq!(r.status(), Some(Status::Ok), "{}", r.text());
    let get = Request::CausalGet {
        key,
        consistency: Consistency::Quorum,
    };
    let t = c
        .send_to(2, (shard_of(key, 4) + 2) % 4, &get)
        .expect("n2 is up");
    let r = c.wait(t).expect("answered");
    assert_eq!(r.status(), Some(Status::Ok), "{}", r.text());
    let body = r.response().expect("a response").body;
    let got = decode_causal_get_reply(body, true).unwrap();
    assert_eq!(got.values.len(), 1);
    assert_eq!(got.values[0].1, b"v");
    c.assert_sound();
}

/// A siblings-mode PUT or DELETE refused for want of live replicas (UNAVAILABLE: "nothing was
/// written") leaves the coordinating replica's copy as it was (kvsim --conflicts siblings
/// seed 5: the coordinator applied the new state to its own copy before it counted the live
/// replicas, and anti-entropy spread the write its client was told never happened).
#[test]
fn a_write_refused_unavailable_writes_nothing() {
    let mut c = Cluster::start(spec(3, 3, 1));
    let key = b"k";
    let put = |value: &'static [u8]| Request::CausalPut {
        key,
        value,
        ttl_seconds: 0,
        context: &[],
        consistency: Consistency::All,
    };
    let r = c.request(1, &put(b"a")).expect("answered");
    assert_eq!(r.status(), Some(Status::Ok), "{}", r.text());
    c.crash(3);
    c.run_until(5_000, |c| c.stat(1, "cluster_alive") == 2)
        .expect("n1 sees n3 down");
    let r = c.request(1, &put(b"b")).expect("answered");
    assert_eq!(r.status(), Some(Status::Unavailable), "{}", r.text());
    // A DELETE with the context of everything: refused too, and nothing removed.
    let get = Request::CausalGet {
        key,
        consistency: Consistency::Quorum,
    };
    let r = c.request(1, &get).expect("answered");
    let body = r.response().expect("a response").body.to_vec();
    let context = decode_causal_get_reply(&body, true)
        .unwrap()
        .context
        .to_vec();
    let del = Request::CausalDelete {
        key,
        context: &context,
        consistency: Consistency::All,
    };
    let r = c.request(1, &del).expect("answered");
    assert_eq!(r.status(), Some(Status::Unavailable), "{}", r.text());
    for id in [1, 2] {
        assert_eq!(held_values(&mut c, id, key), vec![b"a".to_vec()], "n{id}");
    }
}

/// A causal GET of `key` through node `id` at `c`: the values and the context.
fn causal_get(cl: &mut Cluster, id: u32, key: &[u8], c: Consistency) -> (Vec<Vec<u8>>, Vec<u8>) {
    let r = cl
        .request(
            id,
            &Request::CausalGet {
                key,
                consistency: c,
            },
        )
        .expect("answered");
    let found = match r.status() {
        Some(Status::Ok) => true,
        Some(Status::NotFound) => false,
        s => panic!("causal GET: {s:?} {}", r.text()),
    };
    let body = r.response().expect("a response").body.to_vec();
    let got = decode_causal_get_reply(&body, found).unwrap();
    let values = got.values.iter().map(|(_, v)| v.to_vec()).collect();
    (values, got.context.to_vec())
}

/// A key whose siblings have all expired keeps its causal state (its vector) through
/// compaction, so a stale replica's copy of what that state had superseded does not come
/// back (kvsim --conflicts siblings seed 716: the store turned the expired state into a plain
/// tombstone, which forgot the vector; late hints then merged superseded and deleted values
/// back into the key on every replica).
#[test]
fn what_an_expired_state_superseded_stays_superseded_after_compaction() {
    let mut s = spec(3, 3, 1);
    s.hinted_handoff = false; // n3 is brought up to date by anti-entropy alone
    s.anti_entropy_interval_ms = 300;
    s.segment_size_max = 512;
    s.compaction_dead_percent = 1;
    s.compaction_dead_bytes_min = 1;
    let mut c = Cluster::start(s);
    let key = b"k";
    let r = c
        .request(
            1,
            &Request::CausalPut {
                key,
                value: b"old",
                ttl_seconds: 0,
                context: &[],
                consistency: Consistency::All,
            },
        )
        .expect("answered");
    assert_eq!(r.status(), Some(Status::Ok), "{}", r.text());
    // n3 is cut off and keeps "old"; n1 and n2 replace it with a value that expires.
    c.partition(&[&[1, 2], &[3]]);
    c.run_until(5_000, |c| c.stat(1, "cluster_alive") == 2)
        .expect("n1 sees n3 down");
    let (values, context) = causal_get(&mut c, 1, key, Consistency::Quorum);
    assert_eq!(values, vec![b"old".to_vec()]);
    let r = c
        .request(
            1,
            &Request::CausalPut {
                key,
                value: b"new",
                ttl_seconds: 1,
                context: &context,
                consistency: Consistency::Quorum,
            },
        )
        .expect("answered");
    assert_eq!(r.status(), Some(Status::Ok), "{}", r.text());
    // It expires; compaction rewrites the segments holding it (other keys fill them).
    for i in 0..40u32 {
        let k = format!("fill{i}");
        let r = c
            .request(
                1 + i % 2,
                &Request::CausalPut {
                    key: k.as_bytes(),
                    value: b"ffffffffffffffffffffffff",
                    ttl_seconds: 0,
                    context: &[],
                    consistency: Consistency::Quorum,
                },
            )
            .expect("answered");
        assert_eq!(r.status(), Some(Status::Ok), "{}", r.text());
    }
    c.run_for(1_500);
    for id in [1, 2] {
        let r = c.request(id, &Request::Compact).expect("answered");
        assert_eq!(r.status(), Some(Status::Ok), "{}", r.text());
    }
    c.run_for(2_000);
    for id in [1, 2] {
        let rec = c.replica(id, key).expect("a record");
        assert!(
            rec.causal,
            "n{id}: the expired state is kept, not made a tombstone"
        );
    }
    // n3 comes back with its stale copy: anti-entropy must not merge "old" back.
    c.heal();
    c.run_for(5_000);
    for id in 1..=3 {
        assert_eq!(held_values(&mut c, id, key), vec![b"new".to_vec()], "n{id}");
    }
    let (values, _) = causal_get(&mut c, 2, key, Consistency::All);
    assert!(values.is_empty(), "{values:?}");
    c.assert_sound();
}

/// A DELETE of a key no replica holds (its context empty) writes nothing: an empty causal
/// state stored beside a replica holding no record (or a tombstone) would differ from it
/// forever, since merging changes neither (kvsim --conflicts siblings seed 172: anti-entropy
/// sent it every round and the replicas never converged).
#[test]
fn a_delete_of_nothing_writes_nothing() {
    let mut c = Cluster::start(spec(3, 3, 1));
    let key = b"never";
    let r = c
        .request(
            1,
            &Request::CausalDelete {
                key,
                context: &[],
                consistency: Consistency::All,
            },
        )
        .expect("answered");
    assert_eq!(r.status(), Some(Status::Ok), "{}", r.text());
    c.run_for(1_000);
    for id in 1..=3 {
        assert!(c.replica(id, key).is_none(), "n{id} holds a record");
    }
    c.assert_sound();
}
