//! The peer handshake example (protocol.md § 8.1) and the peer frames (§ 18): encoded with
//! the cluster layer's encoders, decoded back; the anti-entropy frames are a scripted
//! exchange between two real anti-entropy cores.

use super::*;

// ---------------------------------------------------------------------------------------------
// The peer handshake's worked example (protocol.md § 8.1)

/// The `handshake-vector` block: its secret, node ids, nonces and proofs are what `dkv::auth`
/// computes, and the frames of the exchange (vectors `peer-*` of § 15) carry those same bytes.
#[test]
fn peer_handshake_vector_in_protocol_md_matches_auth_rs() {
    use dkv::auth::{proof, verify, Side, PEER_PROTOCOL_VERSION};
    let doc = protocol_md();
    let block = doc
        .split("```handshake-vector\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("protocol.md has a handshake-vector block");
    let mut fields = BTreeMap::new();
    for line in block.lines() {
        let (k, v) = line
            .split_once(char::is_whitespace)
            .unwrap_or_else(|| panic!("handshake vector line {line}"));
        fields.insert(k.to_string(), v.trim().to_string());
    }
    let get = |k: &str| -> &str { fields.get(k).unwrap_or_else(|| panic!("no {k}")) };
    let secret = parse_string(get("secret")).unwrap();
    let hex32 = |k: &str| -> [u8; 32] {
        parse_hex(&[get(k)], k)
            .try_into()
            .unwrap_or_else(|_| panic!("{k} is not 32 bytes"))
    };
    let (i, r): (u32, u32) = (
        get("initiator").parse().unwrap(),
        get("responder").parse().unwrap(),
    );
    let (nonce_i, nonce_r) = (hex32("nonce_I"), hex32("nonce_R"));
    let (proof_i, proof_r) = (hex32("proof_I"), hex32("proof_R"));
    assert_eq!(
        proof(&secret, Side::Initiator, i, r, &nonce_i, &nonce_r),
        proof_i
    );
    assert_eq!(
        proof(&secret, Side::Responder, i, r, &nonce_i, &nonce_r),
        proof_r
    );
    assert!(verify(
        &secret,
        Side::Initiator,
        i,
        r,
        &nonce_i,
        &nonce_r,
        &proof_i
    ));
    assert!(!verify(
        &secret,
        Side::Responder,
        i,
        r,
        &nonce_i,
        &nonce_r,
        &proof_i
    ));

    // The frames of the exchange carry exactly these values.
    let vs = vectors(&doc);
    let vector = |name: &str| vs.iter().find(|v| v.name == name).expect("vector present");
    let hello = vector("peer-hello-request");
    assert_eq!(hello.int("protocol"), u64::from(PEER_PROTOCOL_VERSION));
    assert_eq!(hello.int("node"), u64::from(i));
    assert_eq!(hello.bytes_of("token"), nonce_i);
    let hello_reply = vector("peer-hello-reply");
    assert_eq!(
        hello_reply.int("protocol"),
        u64::from(PEER_PROTOCOL_VERSION)
    );
    assert_eq!(hello_reply.int("node"), u64::from(r));
    assert_eq!(hello_reply.bytes_of("nonce"), nonce_r);
    assert_eq!(vector("peer-auth-request").bytes_of("proof"), proof_i);
    assert_eq!(vector("peer-auth-reply").bytes_of("proof"), proof_r);
}

// ---------------------------------------------------------------------------------------------
// Peer frames (protocol.md § 18)
//
// REPLICATE, READ and GOSSIP vectors say in their SPEC what they carry: the value is encoded
// with `dkv::cluster::peer`'s encoders (the ones the coordinator, hints, read repair and
// membership call) and must give the vector's bytes, and the bytes decode back to the value.
// Anti-entropy frames are built inside the anti-entropy state machine, so their vectors are
// the frames of a scripted exchange between two real `AntiEntropy` cores: the vector bytes must
// be what the cores send, and each core decodes the other's frames (the exchange completes).

use dkv::cluster::antientropy::{self, ae_op, AntiEntropy};
use dkv::cluster::peer::{
    self, ClockStamp, GossipEntry, NodeState, PeerError, PeerReply, PeerRequest, WriteAck,
};
use dkv::cluster::ringpeer::{self, ring_op, ChangeRequest};
use dkv::cluster::{ClusterConfig, Ring};
use dkv::storage::memory::MemoryStore;
use dkv::storage::{Applied, Store, Stored, Write};
use dkv::version::Version;

/// Every peer opcode in use, by the name the vectors give it.
const PEER_OPS: &[(&str, u8)] = &[
    ("REPLICATE", peer::op::REPLICATE),
    ("READ", peer::op::READ),
    ("GOSSIP", peer::op::GOSSIP),
    ("AE_TREE", ae_op::TREE),
    ("AE_KEYS", ae_op::KEYS),
    ("AE_PUSH", ae_op::PUSH),
    ("AE_STATUS", ae_op::STATUS),
    ("RING_PULL", ring_op::PULL),
    ("RING_CHANGE", ring_op::CHANGE),
    ("RING_VOTE", ring_op::VOTE),
    ("RING_ACCEPT", ring_op::ACCEPT),
];

fn peer_op_named(name: &str) -> u8 {
    PEER_OPS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("unknown peer opcode name {name}"))
        .1
}

/// A peer request frame decoded the way a node decodes it.
fn decode_peer_request<'a>(f: &frame::FrameRef<'a>) -> Result<PeerRequest<'a>, PeerError> {
    match Request::decode(f) {
        Ok(Request::Peer { op, aux, body }) => PeerRequest::decode(op, aux, body),
        other => panic!("op 0x{:02x} is not a peer request: {other:?}", f.op),
    }
}

/// A peer reply frame decoded the way a node decodes it.
fn decode_peer_reply(f: &frame::FrameRef<'_>) -> Result<PeerReply, PeerError> {
    let r = Response::from_frame(f).expect("a reply");
    PeerReply::decode(f.op, r.status, r.body)
}

/// `value="..."`, or `value=tombstone`.
fn value_of(v: &Vector) -> Option<Vec<u8>> {
    (v.raw("value") != "tombstone").then(|| v.bytes_of("value"))
}

/// `entries=ID/INCARNATION/HEARTBEAT/STATE/RING_VERSION/ADDRESS,...` (ADDRESS `-`: unknown).
fn gossip_entries_of(v: &Vector) -> Vec<GossipEntry> {
    v.raw("entries")
        .split(',')
        .map(|e| {
            let p: Vec<&str> = e.split('/').collect();
            assert_eq!(p.len(), 6, "vector {}: gossip entry {e}", v.name);
            let n = |s: &str| parse_int(s).unwrap_or_else(|| panic!("vector {}: {s}", v.name));
            GossipEntry {
                node_id: n(p[0]) as u32,
                incarnation: n(p[1]),
                heartbeat: n(p[2]),
                state: match p[3] {
                    "alive" => NodeState::Alive,
                    "failed" => NodeState::Failed,
                    s => panic!("vector {}: state {s}", v.name),
                },
                ring_version: n(p[4]),
                addr: match p[5] {
                    "-" => None,
                    a => Some(
                        a.parse()
                            .unwrap_or_else(|_| panic!("vector {}: address {a}", v.name)),
                    ),
                },
            }
        })
        .collect()
}

/// A REPLICATE, READ or GOSSIP vector: encode its SPEC, compare, decode back.
fn check_peer_vector(v: &Vector) {
    let f = whole_frame(v);
    if v.kind == "peer-invalid-request" {
        // Refused by the node's decoder, with the status the SPEC names.
        v.only(&["status"]);
        let err = decode_peer_request(&f).expect_err("an invalid peer request must not decode");
        assert_eq!(err.status(), status_named(v.raw("status")), "{}", v.name);
        return;
    }
    let opcode = peer_op_named(v.raw("op"));
    let id = v.int("id") as u32;
    assert_eq!(f.op & !RESPONSE_BIT, opcode, "vector {}: op", v.name);
    assert_eq!(f.id, id, "vector {}: id", v.name);
    let mut out = Vec::new();
    let status = v.fields.get("status").map(|s| status_named(s));
    if opcode == peer::op::READ && status.is_some_and(|s| s != Status::Ok) {
        // An error reply, as a node writes it for a peer frame it cannot serve.
        v.only(&["op", "status", "id", "message"]);
        let (status, msg) = (status.expect("checked"), v.bytes_of("message"));
        let msg = String::from_utf8(msg).expect("UTF-8 message");
        put_error(&mut out, opcode, id, status, &msg);
        assert_eq!(out, v.bytes, "vector {}: encoding the value", v.name);
        let expected = PeerReply::Read(Err(format!("{status}: {msg}")));
        assert_eq!(decode_peer_reply(&f), Ok(expected), "vector {}", v.name);
        return;
    }
    match (v.kind.as_str(), opcode) {
        ("peer-request", peer::op::REPLICATE) => {
            v.only(&[
                "op", "id", "aux", "ring", "key", "version", "expires", "value",
            ]);
            let aux = match v.raw("aux") {
                "0" => 0,
                "HINT" => peer::AUX_HINT,
                "REPAIR" => peer::AUX_REPAIR,
                a => panic!("vector {}: aux {a}", v.name),
            };
            let (key, value) = (v.bytes_of("key"), value_of(v));
            let write = Write {
                key: &key,
                value: value.as_deref(),
                version: Version(v.int("version")),
                expires_at_ms: v.int("expires"),
                causal: false,
            };
            let ring = v.int("ring");
            peer::put_replicate(&mut out, id, aux, ring, &write);
            let expected = PeerRequest::Replicate { write, aux, ring };
            assert_eq!(decode_peer_request(&f), Ok(expected), "vector {}", v.name);
        }
        ("peer-reply", peer::op::REPLICATE | peer::op::READ)
            if v.fields
                .get("result")
                .or(v.fields.get("state"))
                .map(|s| s.as_str())
                == Some("stale-ring") =>
        {
            // A refusal of a sender whose ring is stale for the key's partition (§ 18.2).
            v.only(&["op", "status", "id", "result", "state", "ring"]);
            assert_eq!(status, Some(Status::Ok), "vector {}", v.name);
            let ring = v.int("ring");
            peer::put_stale_ring(&mut out, opcode, id, ring);
            let got = decode_peer_reply(&f);
            let expected = PeerReply::StaleRing { op: opcode, ring };
            assert_eq!(got, Ok(expected), "vector {}", v.name);
        }
        ("peer-reply", peer::op::REPLICATE) => {
            let status = status_named(v.raw("status"));
            let (ack, decoded) = if status == Status::Ok {
                v.only(&["op", "status", "id", "result", "current"]);
                let ack = match v.raw("result") {
                    "applied" => WriteAck::Done(Applied::Stored),
                    "stale" => WriteAck::Done(Applied::Stale {
                        current: Version(v.int("current")),
                    }),
                    r => panic!("vector {}: result {r}", v.name),
                };
                (ack.clone(), ack)
            } else {
                v.only(&["op", "status", "id", "message"]);
                let msg = String::from_utf8(v.bytes_of("message")).expect("UTF-8");
                // Decoded, the refusal names its status.
                let decoded = WriteAck::Refused(format!("{status}: {msg}"));
                (WriteAck::Refused(msg), decoded)
            };
            peer::put_write_ack(&mut out, id, &ack);
            let got = decode_peer_reply(&f);
            assert_eq!(got, Ok(PeerReply::Write(decoded)), "vector {}", v.name);
        }
        ("peer-request", peer::op::READ) => {
            v.only(&["op", "id", "aux", "ring", "key"]);
            let (key, ring) = (v.bytes_of("key"), v.int("ring"));
            let version_only = match v.fields.get("aux").map(|a| a.as_str()) {
                None | Some("0") => false,
                Some("VERSION_ONLY") => true,
                Some(a) => panic!("vector {}: aux {a}", v.name),
            };
            peer::put_read(&mut out, id, ring, &key, version_only);
            let expected = PeerRequest::Read {
                key: &key,
                ring,
                version_only,
            };
            assert_eq!(decode_peer_request(&f), Ok(expected), "vector {}", v.name);
        }
        ("peer-reply", peer::op::READ) if v.raw("state") == "version" => {
            // The answer to a version-only READ: the version held, no record.
            v.only(&["op", "status", "id", "state", "version"]);
            let version = Version(v.int("version"));
            peer::put_read_version_reply(&mut out, id, &Ok(Some(version)));
            let got = decode_peer_reply(&f);
            assert_eq!(
                got,
                Ok(PeerReply::ReadVersion(version)),
                "vector {}",
                v.name
            );
        }
        ("peer-reply", peer::op::READ) => {
            v.only(&["op", "status", "id", "state", "version", "expires", "value"]);
            let record = match v.raw("state") {
                "absent" => None,
                "value" | "tombstone" => Some(Stored {
                    version: Version(v.int("version")),
                    expires_at_ms: v.int("expires"),
                    value: value_of(v),
                    causal: false,
                }),
                s => panic!("vector {}: state {s}", v.name),
            };
            peer::put_read_reply(&mut out, id, &Ok(record.clone()));
            let got = decode_peer_reply(&f);
            assert_eq!(got, Ok(PeerReply::Read(Ok(record))), "vector {}", v.name);
        }
        (kind, peer::op::GOSSIP) => {
            v.only(&["op", "status", "id", "sender", "entries", "sent", "echo"]);
            let sender = v.int("sender") as u32;
            let entries = gossip_entries_of(v);
            let clock = ClockStamp {
                sent_ms: v.int("sent"),
                echo_ms: v.int("echo"),
            };
            match kind {
                "peer-request" | "peer-request-newer" => {
                    assert_eq!(status, None, "vector {}: a request has no status", v.name);
                    peer::put_gossip(&mut out, id, sender, &entries, clock);
                    let expected = PeerRequest::Gossip {
                        sender,
                        entries: entries.clone(),
                        clock: Some(clock),
                    };
                    assert_eq!(decode_peer_request(&f), Ok(expected), "vector {}", v.name);
                }
                "peer-reply" => {
                    assert_eq!(status, Some(Status::Ok), "vector {}", v.name);
                    peer::put_gossip_reply(&mut out, id, sender, &entries, clock);
                    let expected = PeerReply::Gossip {
                        sender,
                        entries: entries.clone(),
                        clock: Some(clock),
                    };
                    assert_eq!(decode_peer_reply(&f), Ok(expected), "vector {}", v.name);
                }
                k => panic!("vector {}: kind {k}", v.name),
            }
            if kind == "peer-request-newer" {
                // A newer node's frame: this node reads the fields it knows and skips the
                // rest, so its own encoding of the value is shorter.
                let extra = (v.bytes.len() - out.len()) / entries.len();
                assert!(extra > 0, "vector {}: no bytes a newer node added", v.name);
                assert_eq!(v.bytes.len(), out.len() + extra * entries.len());
                return;
            }
        }
        ("peer-request", ring_op::PULL) => {
            v.only(&["op", "id", "sender", "held"]);
            let (sender, held) = (v.int("sender") as u32, v.int("held"));
            ringpeer::put_pull(&mut out, id, sender, held);
            assert_eq!(
                ringpeer::decode_pull(f.body, 0),
                Ok((sender, held)),
                "{}",
                v.name
            );
        }
        ("peer-reply", ring_op::PULL) => {
            // A receiver whose ring state is not newer answers OK with an empty body.
            v.only(&["op", "status", "id", "state"]);
            assert_eq!(v.raw("state"), "not-newer", "vector {}", v.name);
            put_ok(&mut out, ring_op::PULL, id, &[]);
        }
        ("peer-request", ring_op::CHANGE) => {
            v.only(&["op", "id", "change", "node"]);
            let node = v.int("node") as u32;
            let change = match v.raw("change") {
                "leave" => ChangeRequest::Leave { node },
                "remove" => ChangeRequest::Remove { node },
                c => panic!("vector {}: change {c}", v.name),
            };
            ringpeer::put_change(&mut out, id, &change);
            assert_eq!(ringpeer::decode_change(f.body), Ok(change), "{}", v.name);
        }
        ("peer-reply", ring_op::CHANGE) => {
            v.only(&["op", "status", "id", "version", "message"]);
            let msg = String::from_utf8(v.bytes_of("message")).expect("UTF-8");
            ringpeer::put_change_ok(&mut out, id, v.int("version"), &msg);
            let got = ringpeer::decode_change_ok(f.body);
            assert_eq!(got, Ok((v.int("version"), msg)), "{}", v.name);
        }
        ("peer-request", ring_op::VOTE) => {
            v.only(&[
                "op",
                "id",
                "term",
                "candidate",
                "acc-term",
                "acc-proposer",
                "acc-version",
            ]);
            let req = ringpeer::VoteRequest {
                term: v.int("term"),
                candidate: v.int("candidate") as u32,
                accepted: (
                    v.int("acc-term"),
                    v.int("acc-proposer") as u32,
                    v.int("acc-version"),
                ),
            };
            ringpeer::put_vote(&mut out, id, &req);
            assert_eq!(ringpeer::decode_vote(f.body), Ok(req), "{}", v.name);
        }
        ("peer-reply", ring_op::VOTE) => {
            v.only(&["op", "status", "id", "granted", "term", "node"]);
            let a = ringpeer::BallotAnswer {
                ok: v.int("granted") == 1,
                promised: (v.int("term"), v.int("node") as u32),
            };
            ringpeer::put_ballot_answer(&mut out, ring_op::VOTE, id, &a, &[]);
            let got = ringpeer::decode_ballot_answer(f.body).expect("decodes");
            assert_eq!(got, (a, &[][..]), "{}", v.name);
        }
        ("peer-request", ring_op::ACCEPT) => {
            v.only(&["op", "id", "node", "addr", "replicas", "term", "proposer"]);
            let addr = String::from_utf8(v.bytes_of("addr")).expect("UTF-8");
            let s = dkv::cluster::ringstate::RingState::initial(
                &[(v.int("node") as u32, addr)],
                v.int("replicas") as usize,
            )
            .expect("a valid ring")
            .with_ballot(v.int("term"), v.int("proposer") as u32);
            dkv::protocol::frame::put_frame(&mut out, ring_op::ACCEPT, 0, id, &[&s.to_bytes()]);
            let got = dkv::cluster::ringstate::RingState::decode(f.body);
            assert_eq!(got, Ok(s), "{}", v.name);
        }
        ("peer-reply", ring_op::ACCEPT) => {
            v.only(&["op", "status", "id", "accepted", "term", "node"]);
            let a = ringpeer::BallotAnswer {
                ok: v.int("accepted") == 1,
                promised: (v.int("term"), v.int("node") as u32),
            };
            ringpeer::put_ballot_answer(&mut out, ring_op::ACCEPT, id, &a, &[]);
            let got = ringpeer::decode_ballot_answer(f.body).expect("decodes");
            assert_eq!(got, (a, &[][..]), "{}", v.name);
        }
        (k, o) => panic!("vector {}: no check for {k} op 0x{o:02x}", v.name),
    }
    assert_eq!(out, v.bytes, "vector {}: encoding the value", v.name);
}

/// The vector names of the scripted anti-entropy exchange, in the order its frames are sent.
const AE_VECTORS: &[&str] = &[
    "ae-tree-request",
    "ae-tree-reply",
    "ae-keys-request",
    "ae-keys-reply",
    "ae-push-request",
    "ae-push-reply",
    "ae-status-request",
    "ae-status-reply",
];

/// Start of the scripted exchange, ms since the epoch.
const AE_NOW_MS: u64 = 1_764_000_001_000;

/// `hello` and `key:286008` share partition 233 and tree segment 789 (the top 18 bits of their
/// key hashes), so one AE_KEYS round compares both.
const AE_KEYS: [&[u8]; 2] = [b"hello", b"key:286008"];

fn ae_core(id: u32, store: &mut MemoryStore) -> AntiEntropy {
    let mut config =
        ClusterConfig::build(id, "1=127.0.0.1:7001,2=127.0.0.1:7002", 2).expect("config");
    config.validate().expect("valid config");
    let mut a = AntiEntropy::new(&config, Ring::new(&[1, 2], 2), AE_NOW_MS);
    // As shard 233 of a node with 256 shards: this core holds partition 233 only, so a round
    // is one exchange.
    let p = partition_of(AE_KEYS[0]);
    a.set_shard(p, limits::PARTITION_COUNT);
    // Both clocks measured and in step: exchanges are reported to the leader.
    a.set_clock_offset(Some(0));
    a.build(store).expect("build");
    a
}

/// Node `id`'s membership shard (shard 0 of 256): it holds partition 0 only, and it reports
/// the node's completed exchanges to the leader.
fn membership_core(id: u32) -> AntiEntropy {
    let mut config =
        ClusterConfig::build(id, "1=127.0.0.1:7001,2=127.0.0.1:7002", 2).expect("config");
    config.validate().expect("valid config");
    let mut a = AntiEntropy::new(&config, Ring::new(&[1, 2], 2), AE_NOW_MS);
    a.set_shard(0, limits::PARTITION_COUNT);
    a.set_clock_offset(Some(0));
    a.build(&mut MemoryStore::new()).expect("build");
    a
}

/// Run one exchange: node 2 (initiator) holds `hello`, node 1 (responder, and the leader)
/// holds `key:286008`. Returns every frame sent, in order, and checks that both ends decoded
/// each other's frames: the records crossed, and node 2 adopted the leader's horizon.
fn ae_exchange() -> Vec<Vec<u8>> {
    let put = |s: &mut MemoryStore, key: &[u8], value: &[u8], node: u32| {
        let w = Write {
            key,
            value: Some(value),
            version: Version::new(1_764_000_000_000, 0, node),
            expires_at_ms: 0,
            causal: false,
        };
        assert_eq!(s.apply(w).expect("stored"), Applied::Stored);
    };
    let (mut s1, mut s2) = (MemoryStore::new(), MemoryStore::new());
    put(&mut s2, AE_KEYS[0], b"world", 2);
    put(&mut s1, AE_KEYS[1], b"v", 1);
    let (mut a1, mut a2) = (ae_core(1, &mut s1), ae_core(2, &mut s2));
    // Node 2's membership shard: it reports the node's exchanges to the leader (AE_STATUS)
    // and hands the horizons it learns to the other shards (as the view mail does).
    let mut m2 = membership_core(2);
    let mut sm2 = MemoryStore::new();
    let alive = |_: u32| true;
    a2.trigger(AE_NOW_MS);
    let mut now = AE_NOW_MS;
    a2.on_tick(now, &mut s2, &alive, 1);
    let mut frames = Vec::new();
    for _ in 0..32 {
        let next = match a2.poll_transmit() {
            Some(t) => Some((t, false)),
            None => {
                // The round is over once its exchange completed: the next tick hands it to
                // the membership shard, whose next tick reports it to the leader.
                now += 1;
                a2.on_tick(now, &mut s2, &alive, 1);
                m2.add_reports(a2.take_reports());
                m2.on_tick(now, &mut sm2, &alive, 1);
                a2.poll_transmit()
                    .map(|t| (t, false))
                    .or_else(|| m2.poll_transmit().map(|t| (t, true)))
            }
        };
        let Some(((to, request), membership)) = next else {
            break;
        };
        assert_eq!(to, 1, "the exchange is with node 1");
        let (f, _) = frame::parse(&request).unwrap().unwrap();
        let mut reply = Vec::new();
        a1.on_request(now, &mut s1, 2, f.id, f.op, f.aux, f.body, &mut reply)
            .unwrap_or_else(|e| panic!("node 1 refused op 0x{:02x}: {e}", f.op));
        let (rf, _) = frame::parse(&reply).unwrap().unwrap();
        assert_eq!(rf.aux, Status::Ok as u8, "reply to op 0x{:02x}", f.op);
        if membership {
            m2.on_reply(now, &mut sm2, 1, &rf, &alive);
            let p = partition_of(AE_KEYS[0]);
            a2.adopt_horizon_list(&mut s2, &[(p as u16, m2.horizons()[p])]);
        } else {
            a2.on_reply(now, &mut s2, 1, &rf, &alive);
        }
        frames.push(request.clone());
        frames.push(reply);
    }
    assert_eq!(a2.stats().exchanges, 1, "the exchange completed");
    assert_eq!(a2.stats().exchanges_failed, 0);
    for key in AE_KEYS {
        let (r1, r2) = (s1.get(key).unwrap(), s2.get(key).unwrap());
        assert!(r1.is_some() && r1 == r2, "both nodes hold {key:?}");
    }
    let p = partition_of(AE_KEYS[0]);
    assert!(
        a2.index().horizon(p) > 0,
        "node 2 adopted the leader's horizon"
    );
    frames
}

#[test]
fn peer_vectors_in_protocol_md_match_the_cluster_codec() {
    let vs = vectors(&protocol_md());
    let peer_vs: Vec<&Vector> = vs.iter().filter(|v| v.kind.starts_with("peer-")).collect();

    // The exchange's frames by vector name: the first TREE request (level 0) and reply, then
    // the first of each other opcode (the level 1 and 2 TREE frames are not shown).
    let frames = ae_exchange();
    let mut by_name: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for pair in frames.chunks(2) {
        let name = match pair[0][4] {
            ae_op::TREE => "ae-tree",
            ae_op::KEYS => "ae-keys",
            ae_op::PUSH => "ae-push",
            ae_op::STATUS => "ae-status",
            o => panic!("exchange sent op 0x{o:02x}"),
        };
        let (req, rep) = (format!("{name}-request"), format!("{name}-reply"));
        let (req, rep) = (
            AE_VECTORS.iter().find(|n| **n == req).expect("named"),
            AE_VECTORS.iter().find(|n| **n == rep).expect("named"),
        );
        by_name.entry(req).or_insert(&pair[0]);
        by_name.entry(rep).or_insert(&pair[1]);
    }
    assert_eq!(
        by_name.len(),
        AE_VECTORS.len(),
        "the exchange sent every AE opcode"
    );

    for v in &peer_vs {
        if v.kind == "peer-invalid-request" {
            check_peer_vector(v);
            continue;
        }
        let opcode = peer_op_named(v.raw("op"));
        if !antientropy::is_anti_entropy_op(opcode) {
            check_peer_vector(v);
            continue;
        }
        let sent = by_name
            .get(v.name.as_str())
            .unwrap_or_else(|| panic!("vector {} is not a frame of the exchange", v.name));
        assert_eq!(&v.bytes[..], *sent, "vector {}: the frame sent", v.name);
        let f = whole_frame(v);
        assert_eq!(f.op & !RESPONSE_BIT, opcode, "vector {}: op", v.name);
        assert_eq!(f.id, v.int("id") as u32, "vector {}: id", v.name);
        if v.kind == "peer-request" {
            v.only(&["op", "id", "partition", "sender"]);
            // AE_STATUS still carries its first entry's partition, but no node routes by it
            // (it is served by the membership shard).
            let partition = if f.op == antientropy::ae_op::STATUS {
                assert_eq!(antientropy::routing_partition(f.op, f.body), None);
                Some(u16::from_be_bytes([f.body[0], f.body[1]]) as usize)
            } else {
                antientropy::routing_partition(f.op, f.body)
            };
            assert_eq!(
                partition,
                Some(v.int("partition") as usize),
                "vector {}: partition",
                v.name
            );
            assert_eq!(
                u64::from(u32::from_be_bytes(f.body[2..6].try_into().unwrap())),
                v.int("sender"),
                "vector {}: sender",
                v.name
            );
        } else {
            v.only(&["op", "status", "id"]);
            assert_eq!(f.aux, status_named(v.raw("status")) as u8, "{}", v.name);
        }
    }

    // The message of the documented MALFORMED reply is what the decoder says of the
    // documented malformed request.
    let named = |name: &str| {
        *peer_vs
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("protocol.md lacks vector {name}"))
    };
    let bad = named("read-malformed-request");
    let err = decode_peer_request(&whole_frame(bad)).unwrap_err();
    let reply = named("read-malformed-reply");
    assert_eq!(err.to_string().into_bytes(), reply.bytes_of("message"));
    assert_eq!(whole_frame(bad).id, whole_frame(reply).id);

    // The peer opcode table (rows of 6 cells: code, name, request, reply, sender, shard) lists
    // exactly the opcodes in use, by their names.
    let table: Vec<(u8, String)> = table_rows(&protocol_md())
        .into_iter()
        .filter(|(_, cells)| cells.len() == 5)
        .filter_map(|(code, cells)| {
            let hex = code.strip_prefix("0x")?;
            Some((u8::from_str_radix(hex, 16).ok()?, cells[0].clone()))
        })
        .collect();
    let in_use: Vec<(u8, String)> = PEER_OPS.iter().map(|(n, o)| (*o, n.to_string())).collect();
    assert_eq!(table, in_use, "protocol.md's peer opcode table");

    // Every peer opcode in use has a request and a reply vector; every other opcode of the
    // peer range is refused as unknown by the node.
    for (name, opcode) in PEER_OPS {
        for kind in ["peer-request", "peer-reply"] {
            assert!(
                peer_vs
                    .iter()
                    .any(|v| v.kind == kind && v.raw("op") == *name),
                "protocol.md lacks a {kind} vector for {name}"
            );
        }
        assert!((op::PEER_FIRST..=op::PEER_LAST).contains(opcode));
    }
    let mut store = MemoryStore::new();
    let mut a = ae_core(1, &mut store);
    for opcode in op::PEER_FIRST..=op::PEER_LAST {
        if PEER_OPS.iter().any(|(_, o)| *o == opcode) {
            continue;
        }
        let unknown = if antientropy::is_anti_entropy_op(opcode) {
            let mut out = Vec::new();
            let mut s = MemoryStore::new();
            a.on_request(AE_NOW_MS, &mut s, 2, 1, opcode, 0, &[0, 233], &mut out)
                .unwrap_err()
        } else {
            PeerRequest::decode(opcode, 0, &[]).unwrap_err()
        };
        assert_eq!(unknown, PeerError::UnknownOp(opcode), "op 0x{opcode:02x}");
    }
}

/// The tree hashes as § 18.5 writes them (its formulas, computed here from the text's
/// constants) give the root hash in vector `ae-tree-reply`, which the node computed: a node of
/// another implementation that follows the text compares equal.
#[test]
fn tree_hash_formulas_in_protocol_md_give_the_vector_root() {
    use dkv::hash::{fmix64, key_hash};
    let doc = protocol_md();
    let (item_seed, inner_seed) = (0x6161_655f_6974_656d_u64, 0x6161_655f_6e6f_6465_u64);
    for seed in [item_seed, inner_seed] {
        assert!(
            doc.contains(&format!("0x{seed:016x}")),
            "protocol.md lacks {seed:#x}"
        );
    }
    let chain = |children: &[u64]| {
        children
            .iter()
            .fold(inner_seed, |h, &c| fmix64(h ^ c).wrapping_add(c))
    };
    // Node 1 holds one record: key:286008 at 0x66ada5fa00000001, in segment 789.
    let key = AE_KEYS[1];
    let segment = ((key_hash(key) >> 46) & 0x3ff) as usize;
    assert_eq!(segment, 789);
    let item = fmix64(fmix64(key_hash(key) ^ item_seed) ^ 0x66ad_a5fa_0000_0001);
    let mut segments = [0u64; 1024];
    segments[segment] = item;
    let mids: Vec<u64> = segments.chunks(32).map(chain).collect();
    let root = chain(&mids);
    let vs = vectors(&doc);
    let reply = vs
        .iter()
        .find(|v| v.name == "ae-tree-reply")
        .expect("vector");
    let tail: [u8; 8] = reply.bytes[reply.bytes.len() - 8..].try_into().unwrap();
    assert_eq!(
        root,
        u64::from_be_bytes(tail),
        "the root hash of ae-tree-reply"
    );
}
