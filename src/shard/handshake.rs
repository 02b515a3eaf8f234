//! The shard core's handshakes (protocol.md § 7, § 8): a client HELLO (version, optional
//! token), the peer HELLO and PEER_AUTH challenge–response that proves the cluster secret
//! without sending it, and the glue to the node-wide handshake throttle that pauses a source
//! after repeated wrong guesses. Kept apart from `mod.rs` so the request path there reads
//! without the authentication rules; `on_frame` calls [`ShardCore::hello`] and
//! [`ShardCore::peer_auth`] and nothing else here.

use super::{After, Session, ShardCore};
use crate::auth::{self, Claim, Nonce, Side, ThrottleKey, NONCE_SIZE, PEER_PROTOCOL_VERSION};
use crate::protocol::message::{put_error, put_ok};
use crate::protocol::{op, Role, Status, PROTOCOL_VERSION};
use byteorder::{BigEndian, ByteOrder};

impl ShardCore {
    /// A refusal of a handshake: UNAUTHORIZED, then the connection is closed.
    fn refuse_handshake(&self, opc: u8, id: u32, why: &str, wbuf: &mut Vec<u8>) -> After {
        self.count_reply(Status::Unauthorized);
        put_error(wbuf, opc, id, Status::Unauthorized, why);
        After::Close
    }

    /// `Some(refusal)` when handshakes of `claim` from this session's source are paused.
    fn throttled(&self, now_ms: u64, session: &Session, claim: Claim) -> Option<String> {
        let src = session.source?;
        let wait = self
            .shared
            .handshake_throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(ThrottleKey::new(src, claim), now_ms)?;
        Some(format!(
            "too many failed handshakes from {src}; retry in {wait} ms"
        ))
    }

    /// Count a wrong handshake of `claim` from this session's source; log it when it starts
    /// (or lengthens) a pause, so a flood of guesses makes few lines.
    fn handshake_failed(&self, now_ms: u64, session: &Session, claim: Claim) {
        let Some(src) = session.source else { return };
        let pause = self
            .shared
            .handshake_throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_failure(ThrottleKey::new(src, claim), now_ms);
        if pause > 0 {
            log::warn!(
                "failed handshakes from {src} ({claim:?}): the next is examined in {pause} ms at the earliest"
            );
        }
    }

    /// The throttle's key for a peer claiming `node_id`: its own for a member this shard
    /// knows; one shared key for every other id (a joining node, or a guess), so a source
    /// cannot make itself thousands of entries and flush the table.
    fn peer_claim(&self, node_id: u32) -> Claim {
        if self.peer_known(node_id) && self.peer_addr(node_id).is_some() {
            Claim::Peer(node_id)
        } else {
            Claim::UnknownPeer
        }
    }

    fn handshake_succeeded(&self, session: &Session, claim: Claim) {
        if let Some(src) = session.source {
            self.shared
                .handshake_throttle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .on_success(ThrottleKey::new(src, claim));
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn hello(
        &mut self,
        now_ms: u64,
        id: u32,
        session: &mut Session,
        version: u16,
        role: Role,
        node_id: u32,
        token: &[u8],
        wbuf: &mut Vec<u8>,
    ) -> After {
        if role == Role::Peer {
            return self.peer_hello(now_ms, id, session, version, node_id, token, wbuf);
        }
        if version != PROTOCOL_VERSION {
            self.count_reply(Status::UnsupportedVersion);
            put_error(
                wbuf,
                op::HELLO,
                id,
                Status::UnsupportedVersion,
                &format!("this node speaks protocol version {PROTOCOL_VERSION}, not {version}"),
            );
            return After::Continue;
        }
        // A token is examined when the node wants one from every client, or when it names
        // an admin token and the client presents some token (so a mistyped admin token is
        // refused loudly, and guesses at it are throttled like any other).
        let admin_token = self.cfg.admin_token.as_deref();
        let examined =
            self.cfg.client_token.is_some() || (admin_token.is_some() && !token.is_empty());
        let mut admin = false;
        if examined {
            if let Some(why) = self.throttled(now_ms, session, Claim::Client) {
                return self.refuse_handshake(op::HELLO, id, &why, wbuf);
            }
            admin = admin_token.is_some_and(|a| constant_time_eq(a, token));
            let client = match self.cfg.client_token.as_deref() {
                Some(expected) => constant_time_eq(expected, token),
                None => token.is_empty(),
            };
            if !admin && !client {
                self.handshake_failed(now_ms, session, Claim::Client);
                return self.refuse_handshake(op::HELLO, id, "bad token for this role", wbuf);
            }
            self.handshake_succeeded(session, Claim::Client);
        }
        session.admin = admin;
        session.role = Some(Role::Client);
        session.peer_id = None;
        self.count_reply(Status::Ok);
        put_ok(wbuf, op::HELLO, id, &[&self.hello_body(PROTOCOL_VERSION)]);
        After::Continue
    }

    /// Why the session may not run an admin opcode (ANTI_ENTROPY, COMPACT, CLUSTER_ADMIN),
    /// or `None` if it may: its HELLO presented the admin token; or the node has none and the
    /// connection comes from loopback (or from inside the process: no source address).
    pub(super) fn admin_refusal(&self, session: &Session) -> Option<&'static str> {
        if session.admin {
            return None;
        }
        if self.cfg.admin_token.is_some() {
            return Some(crate::protocol::ADMIN_TOKEN_NEEDED);
        }
        match session.source {
            Some(ip) if !ip.to_canonical().is_loopback() => {
                Some(crate::protocol::ADMIN_LOOPBACK_ONLY)
            }
            _ => None,
        }
    }

    /// The HELLO OK body: version, node id, shard, shard count.
    fn hello_body(&self, version: u16) -> [u8; 10] {
        let mut body = [0u8; 10];
        BigEndian::write_u16(&mut body[0..2], version);
        BigEndian::write_u32(&mut body[2..6], self.shared.node_id);
        BigEndian::write_u16(&mut body[6..8], self.cfg.shard as u16);
        BigEndian::write_u16(&mut body[8..10], self.cfg.shards as u16);
        body
    }

    /// First step of the peer handshake (protocol.md § 8): a node of the cluster sends its
    /// nonce; the answer carries this node's nonce. Nothing is proved yet.
    #[allow(clippy::too_many_arguments)]
    fn peer_hello(
        &mut self,
        now_ms: u64,
        id: u32,
        session: &mut Session,
        version: u16,
        node_id: u32,
        token: &[u8],
        wbuf: &mut Vec<u8>,
    ) -> After {
        let known = self.peer_known(node_id);
        let claim = self.peer_claim(node_id);
        if let Some(why) = self.throttled(now_ms, session, claim) {
            return self.refuse_handshake(op::HELLO, id, &why, wbuf);
        }
        if !known {
            self.handshake_failed(now_ms, session, claim);
            log::warn!(
                "refused a peer HELLO from {} claiming node {node_id}: not another node of this cluster",
                source_text(session)
            );
            return self.refuse_handshake(
                op::HELLO,
                id,
                "not a node of this cluster (bad token for this role)",
                wbuf,
            );
        }
        if version != PEER_PROTOCOL_VERSION {
            // Version 1 sent the secret itself; it is not even looked at.
            log::error!(
                "node {node_id} ({}) speaks peer protocol {version}, this node {PEER_PROTOCOL_VERSION}: upgrade every node",
                source_text(session)
            );
            self.count_reply(Status::UnsupportedVersion);
            put_error(
                wbuf,
                op::HELLO,
                id,
                Status::UnsupportedVersion,
                &format!(
                    "this node speaks peer protocol version {PEER_PROTOCOL_VERSION}, not {version}"
                ),
            );
            return After::Close;
        }
        if session.nonce_spent {
            return self.refuse_handshake(op::HELLO, id, "one peer handshake per connection", wbuf);
        }
        let announced = token.get(NONCE_SIZE..).and_then(auth::conflicts_announced);
        let (Some(theirs), Ok(nonce_i)) = (
            announced,
            <Nonce>::try_from(&token[..token.len().min(NONCE_SIZE)]),
        ) else {
            self.count_reply(Status::BadRequest);
            put_error(
                wbuf,
                op::HELLO,
                id,
                Status::BadRequest,
                &format!(
                    "a peer HELLO carries a {NONCE_SIZE}-byte nonce as its token, then its conflict mode"
                ),
            );
            return After::Close;
        };
        let mine = self.conflicts();
        if theirs != mine {
            let why = format!(
                "this node resolves conflicts with --conflicts {}, node {node_id} with {}: every node of a cluster must run the same mode",
                mine.name(),
                theirs.name()
            );
            log::error!("refused node {node_id} ({}): {why}", source_text(session));
            self.count_reply(Status::BadRequest);
            put_error(wbuf, op::HELLO, id, Status::BadRequest, &why);
            return After::Close;
        }
        session.role = None;
        session.peer_id = None;
        session.challenge = Some((node_id, nonce_i));
        session.nonce_spent = true;
        self.count_reply(Status::Ok);
        let body = self.hello_body(PEER_PROTOCOL_VERSION);
        put_ok(
            wbuf,
            op::HELLO,
            id,
            &[&body, &session.nonce, auth::conflicts_suffix(mine)],
        );
        After::Continue
    }

    /// Second step: the initiator's proof. Right → a peer session, answered with this node's
    /// proof; wrong → counted, refused and closed.
    pub(super) fn peer_auth(
        &mut self,
        now_ms: u64,
        id: u32,
        session: &mut Session,
        proof: &[u8],
        wbuf: &mut Vec<u8>,
    ) -> After {
        let Some((peer, nonce_i)) = session.challenge.take() else {
            return self.refuse_handshake(
                op::PEER_AUTH,
                id,
                "PEER_AUTH without a peer HELLO before it",
                wbuf,
            );
        };
        let claim = self.peer_claim(peer);
        // Examined only when the source is not paused: parallel connections that all got a
        // challenge still get one guess at a time.
        if let Some(why) = self.throttled(now_ms, session, claim) {
            return self.refuse_handshake(op::PEER_AUTH, id, &why, wbuf);
        }
        let me = self.shared.node_id;
        let nonce_r = session.nonce;
        let secret = self
            .cluster_config()
            .map(|c| c.secret.clone())
            .unwrap_or_default();
        let right = !secret.is_empty()
            && auth::verify(
                &secret,
                Side::Initiator,
                peer,
                me,
                &nonce_i,
                &nonce_r,
                proof,
            );
        if !right {
            self.handshake_failed(now_ms, session, claim);
            log::warn!(
                "refused node {peer} ({}): its proof of the cluster secret is wrong (is --cluster-secret the same on every node?)",
                source_text(session)
            );
            return self.refuse_handshake(
                op::PEER_AUTH,
                id,
                "wrong proof of the cluster secret",
                wbuf,
            );
        }
        self.handshake_succeeded(session, claim);
        session.role = Some(Role::Peer);
        session.peer_id = Some(peer);
        let answer = auth::proof(&secret, Side::Responder, peer, me, &nonce_i, &nonce_r);
        self.count_reply(Status::Ok);
        put_ok(wbuf, op::PEER_AUTH, id, &[&answer]);
        After::Continue
    }
}

/// A session's source address for logs.
fn source_text(session: &Session) -> String {
    session
        .source
        .map_or_else(|| "an unknown address".to_string(), |a| a.to_string())
}

/// Compare tokens without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::super::tests::{reply, NOW};
    use super::*;
    use crate::protocol::{frame, Request};
    use crate::shard::{ConnId, NodeShared, ShardConfig, SyncPolicy};
    use crate::storage::memory::MemoryStore;
    use std::sync::Arc;

    #[test]
    fn handshake_rules() {
        let shared = Arc::new(NodeShared::new(1, 1, NOW, 100));
        let mut core = ShardCore::new(
            ShardConfig {
                shard: 0,
                shards: 1,
                sync: SyncPolicy::Never,
                client_token: Some(b"t0k".to_vec()),
                admin_token: None,
            },
            shared,
            Box::new(MemoryStore::new()),
            Box::new(crate::storage::ceiling::NoCeiling),
        );
        let conn = ConnId::new(0, 1);
        let mut session = Session::accepted([10, 0, 0, 7].into(), [0; 32]);
        let send = |core: &mut ShardCore, session: &mut Session, req: Request<'_>| {
            let mut bytes = Vec::new();
            req.encode(1, &mut bytes);
            let (f, _) = frame::parse(&bytes).unwrap().unwrap();
            let mut wbuf = Vec::new();
            let after = core.on_frame(NOW, conn, session, f, &mut wbuf);
            (after, reply(&wbuf).1)
        };
        // A token is set: no request before HELLO.
        assert_eq!(
            send(&mut core, &mut session, Request::Ping),
            (After::Continue, Status::Unauthorized)
        );
        let bad = Request::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id: 0,
            token: b"nope",
        };
        assert_eq!(
            send(&mut core, &mut session, bad),
            (After::Close, Status::Unauthorized)
        );
        let future = Request::Hello {
            version: PROTOCOL_VERSION + 1,
            role: Role::Client,
            node_id: 0,
            token: b"t0k",
        };
        assert_eq!(
            send(&mut core, &mut session, future).1,
            Status::UnsupportedVersion
        );
        let good = Request::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id: 0,
            token: b"t0k",
        };
        assert_eq!(send(&mut core, &mut session, good).1, Status::Ok);
        assert_eq!(send(&mut core, &mut session, Request::Ping).1, Status::Ok);
        let peer = Request::Peer {
            op: op::PEER_FIRST,
            aux: 0,
            body: b"",
        };
        assert_eq!(send(&mut core, &mut session, peer).1, Status::Unauthorized);

        // Wrong tokens from one address: the free ones are examined, then the address is
        // paused and even the right token is refused unexamined until the pause is over.
        let throttle = |core: &ShardCore| core.shared.handshake_throttle.lock().unwrap().stats();
        let before = throttle(&core).failures;
        for _ in 0..=crate::limits::HANDSHAKE_FAILURES_FREE {
            let mut s = Session::accepted([10, 0, 0, 7].into(), [0; 32]);
            assert_eq!(
                send(&mut core, &mut s, bad),
                (After::Close, Status::Unauthorized)
            );
        }
        assert_eq!(
            throttle(&core).failures,
            before + u64::from(crate::limits::HANDSHAKE_FAILURES_FREE) + 1
        );
        let mut s = Session::accepted([10, 0, 0, 7].into(), [0; 32]);
        let mut bytes = Vec::new();
        good.encode(1, &mut bytes);
        let (f, _) = frame::parse(&bytes).unwrap().unwrap();
        let mut wbuf = Vec::new();
        assert_eq!(core.on_frame(NOW, conn, &mut s, f, &mut wbuf), After::Close);
        let (_, st, _, body) = reply(&wbuf);
        assert_eq!(st, Status::Unauthorized);
        assert!(
            String::from_utf8_lossy(&body).contains("retry in"),
            "{body:?}"
        );
        assert_eq!(throttle(&core).refused, 1);
        // Another address is not affected; past the pause the right token works.
        let mut other = Session::accepted([10, 0, 0, 8].into(), [0; 32]);
        assert_eq!(send(&mut core, &mut other, good).1, Status::Ok);
        let later = NOW + crate::limits::HANDSHAKE_PENALTY_MS_MAX;
        let mut wbuf = Vec::new();
        let (f, _) = frame::parse(&bytes).unwrap().unwrap();
        core.on_frame(later, conn, &mut s, f, &mut wbuf);
        assert_eq!(reply(&wbuf).1, Status::Ok);
    }

    /// A core of node 1 in a cluster of nodes 1, 2, 3 with `secret`.
    fn clustered_core(secret: &[u8]) -> ShardCore {
        let shared = Arc::new(NodeShared::new(1, 1, NOW, 100));
        let core = ShardCore::new(
            ShardConfig {
                shard: 0,
                shards: 1,
                sync: SyncPolicy::Never,
                client_token: None,
                admin_token: None,
            },
            shared,
            Box::new(MemoryStore::new()),
            Box::new(crate::storage::ceiling::NoCeiling),
        );
        let nodes = crate::cluster::config::parse_nodes(
            "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
        )
        .unwrap();
        let mut cfg = crate::cluster::ClusterConfig::with_defaults(1, nodes, 3);
        cfg.secret = secret.to_vec();
        core.with_cluster(cfg, NOW, None)
    }

    /// One request through `core` on `session`: what the core said to do, and the reply.
    fn exchange(
        core: &mut ShardCore,
        session: &mut Session,
        req: Request<'_>,
    ) -> (After, Status, Vec<u8>) {
        let mut bytes = Vec::new();
        req.encode(9, &mut bytes);
        let (f, _) = frame::parse(&bytes).unwrap().unwrap();
        let mut wbuf = Vec::new();
        let after = core.on_frame(NOW, ConnId::new(0, 1), session, f, &mut wbuf);
        let (_, st, _, body) = reply(&wbuf);
        (after, st, body)
    }

    fn peer_hello(node_id: u32, version: u16, nonce: &[u8]) -> Request<'_> {
        Request::Hello {
            version,
            role: Role::Peer,
            node_id,
            token: nonce,
        }
    }

    #[test]
    fn peer_handshake_proves_the_secret_both_ways() {
        use crate::auth::{proof, verify, Side, PEER_PROTOCOL_VERSION};
        let mut core = clustered_core(b"the secret");
        let nonce_r = [0x5a; 32];
        let nonce_i = [0xa5; 32];
        let mut s = Session::accepted([10, 0, 0, 2].into(), nonce_r);
        let (after, st, body) = exchange(
            &mut core,
            &mut s,
            peer_hello(2, PEER_PROTOCOL_VERSION, &nonce_i),
        );
        assert_eq!((after, st), (After::Continue, Status::Ok));
        assert_eq!(body.len(), 42);
        assert_eq!(&body[0..2], &PEER_PROTOCOL_VERSION.to_be_bytes());
        assert_eq!(&body[2..6], &1u32.to_be_bytes());
        assert_eq!(
            &body[10..],
            &nonce_r,
            "the responder's nonce is the session's"
        );
        assert_eq!(s.role, None, "nothing proved yet");
        let mine = proof(b"the secret", Side::Initiator, 2, 1, &nonce_i, &nonce_r);
        let (after, st, body) = exchange(&mut core, &mut s, Request::PeerAuth { proof: &mine });
        assert_eq!((after, st), (After::Continue, Status::Ok));
        assert!(verify(
            b"the secret",
            Side::Responder,
            2,
            1,
            &nonce_i,
            &nonce_r,
            &body
        ));
        assert_eq!((s.role, s.peer_id), (Some(Role::Peer), Some(2)));
        // The node's nonce answers one challenge only.
        let again = exchange(
            &mut core,
            &mut s,
            peer_hello(2, PEER_PROTOCOL_VERSION, &[9; 32]),
        );
        assert_eq!((again.0, again.1), (After::Close, Status::Unauthorized));
    }

    #[test]
    fn peer_handshake_refusals() {
        use crate::auth::{proof, Side, PEER_PROTOCOL_VERSION};
        use crate::limits::HANDSHAKE_FAILURES_FREE;
        let mut core = clustered_core(b"the secret");
        let nonce_i = [1; 32];
        let fresh = |n: u8| Session::accepted([10, 0, 0, 3].into(), [n; 32]);
        // Version 1 (the secret as token) is not spoken any more, and never looked at.
        let (after, st, _) = exchange(&mut core, &mut fresh(1), peer_hello(2, 1, b"the secret"));
        assert_eq!((after, st), (After::Close, Status::UnsupportedVersion));
        // This node itself, or a node removed from the cluster for good.
        core.cluster_node_mut()
            .expect("clustered")
            .membership_mut()
            .forget(5);
        for id in [1, 5] {
            let r = exchange(
                &mut core,
                &mut fresh(1),
                peer_hello(id, PEER_PROTOCOL_VERSION, &nonce_i),
            );
            assert_eq!(
                (r.0, r.1),
                (After::Close, Status::Unauthorized),
                "node {id}"
            );
        }
        // An id no member has yet (a node joining the cluster) gets its challenge: the proof
        // of the secret admits it.
        let r = exchange(
            &mut core,
            &mut fresh(1),
            peer_hello(4, PEER_PROTOCOL_VERSION, &nonce_i),
        );
        assert_eq!((r.0, r.1), (After::Continue, Status::Ok), "node 4");
        // A nonce of the wrong size.
        let r = exchange(
            &mut core,
            &mut fresh(1),
            peer_hello(2, PEER_PROTOCOL_VERSION, b"short"),
        );
        assert_eq!((r.0, r.1), (After::Close, Status::BadRequest));
        // PEER_AUTH without HELLO; anything but PEER_AUTH after HELLO.
        let r = exchange(
            &mut core,
            &mut fresh(1),
            Request::PeerAuth { proof: &[0; 32] },
        );
        assert_eq!((r.0, r.1), (After::Close, Status::Unauthorized));
        let mut s = fresh(1);
        exchange(
            &mut core,
            &mut s,
            peer_hello(2, PEER_PROTOCOL_VERSION, &nonce_i),
        );
        let r = exchange(&mut core, &mut s, Request::Ping);
        assert_eq!((r.0, r.1), (After::Close, Status::Unauthorized));
        assert_eq!(s.role, None);

        // Wrong proofs (a proof made with another secret, a reflected proof) from node 3's
        // address. The unknown-node HELLOs above were counted against other claims.
        let mut core = clustered_core(b"the secret");
        let hello = |core: &mut ShardCore| {
            let mut s = fresh(7);
            let (_, st, body) =
                exchange(core, &mut s, peer_hello(3, PEER_PROTOCOL_VERSION, &nonce_i));
            (s, st, String::from_utf8_lossy(&body).into_owned())
        };
        let auth = |core: &mut ShardCore, s: &mut Session, secret: &[u8], side: Side| {
            let p = proof(secret, side, 3, 1, &nonce_i, &[7; 32]);
            let (after, st, body) = exchange(core, s, Request::PeerAuth { proof: &p });
            (
                after,
                st,
                String::from_utf8_lossy(&body).into_owned(),
                s.role,
            )
        };
        // A connection that got its challenge before the pause began (parallel guesses).
        let (mut early, st, _) = hello(&mut core);
        assert_eq!(st, Status::Ok);
        for i in 0..=HANDSHAKE_FAILURES_FREE {
            let (side, secret): (Side, &[u8]) = if i % 2 == 0 {
                (Side::Initiator, b"a guess")
            } else {
                (Side::Responder, b"the secret")
            };
            let (mut s, st, _) = hello(&mut core);
            assert_eq!(st, Status::Ok);
            let (after, st, msg, role) = auth(&mut core, &mut s, secret, side);
            assert_eq!(
                (after, st, role),
                (After::Close, Status::Unauthorized, None)
            );
            assert!(msg.contains("wrong proof"), "{msg}");
        }
        // Paused: new HELLOs are refused, and the early connection's proof, even a right
        // one, is refused unexamined.
        let (_, st, msg) = hello(&mut core);
        assert_eq!(st, Status::Unauthorized);
        assert!(msg.contains("retry in"), "{msg}");
        let (after, st, msg, role) = auth(&mut core, &mut early, b"the secret", Side::Initiator);
        assert_eq!(
            (after, st, role),
            (After::Close, Status::Unauthorized, None)
        );
        assert!(msg.contains("retry in"), "{msg}");
        // Node 2 from the same address is not paused.
        let mut s = fresh(7);
        exchange(
            &mut core,
            &mut s,
            peer_hello(2, PEER_PROTOCOL_VERSION, &nonce_i),
        );
        let p = proof(b"the secret", Side::Initiator, 2, 1, &nonce_i, &[7; 32]);
        assert_eq!(
            exchange(&mut core, &mut s, Request::PeerAuth { proof: &p }).1,
            Status::Ok
        );
        let stats = core.stats_text(NOW);
        assert!(
            stats.contains(&format!(
                "handshake_failures {}\n",
                HANDSHAKE_FAILURES_FREE + 1
            )),
            "{stats}"
        );
        assert!(stats.contains("handshakes_throttled 2\n"), "{stats}");
    }

    /// Admin opcodes (§ 8.2): with an admin token only after a HELLO presenting it, from any
    /// address; without one only from loopback. A wrong non-empty token is refused.
    #[test]
    fn admin_rights() {
        let core = |admin: Option<&[u8]>| {
            ShardCore::new(
                ShardConfig {
                    shard: 0,
                    shards: 1,
                    sync: SyncPolicy::Never,
                    client_token: None,
                    admin_token: admin.map(<[u8]>::to_vec),
                },
                Arc::new(NodeShared::new(1, 1, NOW, 100)),
                Box::new(MemoryStore::new()),
                Box::new(crate::storage::ceiling::NoCeiling),
            )
        };
        let send = |core: &mut ShardCore, session: &mut Session, req: Request<'_>| {
            let mut bytes = Vec::new();
            req.encode(1, &mut bytes);
            let (f, _) = frame::parse(&bytes).unwrap().unwrap();
            let mut wbuf = Vec::new();
            let after = core.on_frame(NOW, ConnId::new(0, 1), session, f, &mut wbuf);
            let (_, status, _, body) = reply(&wbuf);
            (after, status, String::from_utf8_lossy(&body).into_owned())
        };
        let hello = |token: &'static [u8]| Request::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id: 0,
            token,
        };
        let aae = || Request::AntiEntropy;
        let remote = || Session::accepted([10, 0, 0, 7].into(), [0; 32]);
        let local = || Session::accepted([127, 0, 0, 1].into(), [0; 32]);
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap();

        // No admin token: loopback (IPv4, IPv6, mapped) yes, elsewhere no.
        let mut c = core(None);
        assert_eq!(send(&mut c, &mut local(), aae()).1, Status::Ok);
        let mut s6 = Session::accepted(mapped, [0; 32]);
        assert_eq!(send(&mut c, &mut s6, aae()).1, Status::Ok);
        let (after, status, msg) = send(&mut c, &mut remote(), aae());
        assert_eq!((after, status), (After::Continue, Status::Unauthorized));
        assert_eq!(msg, crate::protocol::ADMIN_LOOPBACK_ONLY);
        // Client opcodes are not affected.
        assert_eq!(send(&mut c, &mut remote(), Request::Ping).1, Status::Ok);

        // An admin token: needed even from loopback; any address with it.
        let mut c = core(Some(b"adm1n"));
        let mut s = local();
        let (after, status, msg) = send(&mut c, &mut s, Request::Compact);
        assert_eq!((after, status), (After::Continue, Status::Unauthorized));
        assert_eq!(msg, crate::protocol::ADMIN_TOKEN_NEEDED);
        assert_eq!(send(&mut c, &mut s, hello(b"")).1, Status::Ok);
        assert_eq!(send(&mut c, &mut s, aae()).1, Status::Unauthorized);
        let mut s = remote();
        assert_eq!(send(&mut c, &mut s, hello(b"adm1n")).1, Status::Ok);
        assert_eq!(send(&mut c, &mut s, aae()).1, Status::Ok);
        assert_eq!(send(&mut c, &mut s, Request::Ping).1, Status::Ok);
        // A later HELLO without it takes the right away.
        assert_eq!(send(&mut c, &mut s, hello(b"")).1, Status::Ok);
        assert_eq!(send(&mut c, &mut s, aae()).1, Status::Unauthorized);
        // A wrong token is refused and closes the connection.
        let (after, status, _) = send(&mut c, &mut remote(), hello(b"adm1m"));
        assert_eq!((after, status), (After::Close, Status::Unauthorized));
    }
}
