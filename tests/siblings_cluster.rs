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
