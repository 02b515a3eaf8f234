//! Outbound peer links of one shard: one non-blocking TCP connection to every other node of
//! the cluster, opened on demand, authenticated by the peer handshake, and re-opened with
//! backoff after a failure. The shard core's peer frames go out here; the replies that come
//! back are handed to [`ShardCore::on_peer_reply`].
//!
//! The cluster's members change (nodes join, restart elsewhere, leave), so a link is made the
//! first time a frame goes to a node, to the address the shard core knows for it
//! ([`ShardCore::peer_addr`]: its membership, or its membership shard's view). A frame for a
//! node with no known address is dropped and counted (the coordinator's timeouts cover it).
//! When a node's address changes, its link closes and reconnects to the new one; frames not
//! yet written wait for it. At most [`LINKS_MAX`] links: a link is never freed, so its index
//! (and poll token) stays its own.
//!
//! The handshake (protocol.md § 8, proofs in [`crate::auth`]) proves the cluster secret both
//! ways without sending it: HELLO with this link's nonce (fresh from the OS) → the peer's
//! nonce; PEER_AUTH with this node's proof → the peer's proof, checked before any cluster
//! frame is written, so nothing goes to a node that cannot prove the secret. A refused
//! handshake (or a peer's wrong proof) is logged and retried only after
//! [`PEER_AUTH_RETRY_MS`]: a wrong secret does not fix itself.
//!
//! A link is `Down` (waiting out its backoff), `Connecting` (TCP handshake; the HELLO is
//! queued) or `Ready`. Frames wait in `held` until the handshake is done; for a `Down` link
//! they wait (at most [`DOWN_QUEUE_BYTES_MAX`]) for the next connection attempt, made when the
//! backoff ends; if that attempt fails they are dropped: the coordinator's timeouts and hints
//! cover them, and keeping them for a dead node would only grow memory. A link's unsent bytes
//! are bounded by [`WRITE_BUFFER_SIZE_MAX`]; past it frames are dropped too.
//!
//! Links use poll tokens counting down from [`LINK_TOKEN_BASE`], far above any `Slab` key.

use super::readbuf::ReadBuf;
use crate::auth::{self, Nonce, Side, NONCE_SIZE, PEER_PROTOCOL_VERSION, PROOF_SIZE};
use crate::cluster::{ClusterConfig, Conflicts};
use crate::limits::{FRAME_SIZE_MAX, PEER_AUTH_RETRY_MS, READ_CHUNK_SIZE, WRITE_BUFFER_SIZE_MAX};
use crate::protocol::{frame, op, Request, Role, Status, RESPONSE_BIT};
use crate::shard::ShardCore;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Token of link `i` is `LINK_TOKEN_BASE - i`.
pub const LINK_TOKEN_BASE: usize = usize::MAX - 16;
/// Most links a shard can have (one per other node it ever sent to).
pub const LINKS_MAX: usize = crate::limits::CLUSTER_NODES_MAX;
/// First reconnect delay after a failure; doubled per failure up to the maximum.
const RECONNECT_BACKOFF_MS_MIN: u64 = 50;
/// Longest reconnect delay. Short, because frames for a link in backoff are dropped: a
/// refused connect to a dead node on loopback costs next to nothing, a dropped REPLICATE
/// costs a timeout.
const RECONNECT_BACKOFF_MS_MAX: u64 = 250;
/// Bytes queued for a link that is down, waiting for the next connection attempt.
pub const DOWN_QUEUE_BYTES_MAX: usize = 2 * (4 + FRAME_SIZE_MAX);
// A link in back-off must be able to hold at least one largest frame (a REPLICATE of a 1 MiB
// value), or such writes to a node whose link is reconnecting are always dropped.
const _: () = assert!(DOWN_QUEUE_BYTES_MAX >= 4 + FRAME_SIZE_MAX);
const _: () = assert!(DOWN_QUEUE_BYTES_MAX <= WRITE_BUFFER_SIZE_MAX);
/// Read calls per link per readiness event.
const READS_PER_EVENT_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Down,
    Connecting,
    Ready,
}

struct Link {
    node: u32,
    addr: SocketAddr,
    state: State,
    stream: Option<TcpStream>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Frames waiting for the handshake to finish (or the link to come up).
    held: Vec<u8>,
    rbuf: ReadBuf,
    /// Where the handshake of the current connection is.
    handshake: Handshake,
    /// The last connection ended in a refused handshake: retry after PEER_AUTH_RETRY_MS.
    refused: bool,
    retry_at: Instant,
    backoff_ms: u64,
}

/// The initiator's side of the peer handshake on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handshake {
    /// HELLO sent with our nonce; waiting for the peer's nonce.
    Hello { nonce_i: Nonce },
    /// PEER_AUTH sent with our proof; waiting for the peer's proof.
    Auth { nonce_i: Nonce, nonce_r: Nonce },
    /// Both proofs checked: cluster frames flow.
    Done,
}

/// Counters of a shard's links (logged, and useful in tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    /// Connections opened.
    pub connects: u64,
    /// Frames dropped (link down or its buffer full, or no room for another link).
    pub frames_dropped: u64,
    /// Frames dropped because the destination's address is not known.
    pub frames_no_addr: u64,
    /// Links closed to reconnect to a node's new address.
    pub readdressed: u64,
}

/// One shard's outbound links.
pub struct PeerLinks {
    shard: usize,
    node_id: u32,
    secret: Vec<u8>,
    conflicts: Conflicts,
    links: Vec<Link>,
    stats: LinkStats,
    /// Links whose last read stopped at READS_PER_EVENT_MAX rather than WouldBlock: bytes may
    /// be waiting with no new (edge-triggered) event to come, so they are read again next turn.
    read_pending: Vec<usize>,
}

impl PeerLinks {
    /// No links yet: they are made as frames go to nodes (see the module doc).
    pub fn new(shard: usize, config: &ClusterConfig) -> PeerLinks {
        PeerLinks {
            shard,
            node_id: config.node_id,
            secret: config.secret.clone(),
            conflicts: config.conflicts,
            links: Vec::new(),
            stats: LinkStats::default(),
            read_pending: Vec::new(),
        }
    }

    /// The index of the link to node `to` at `addr` (its known address, `None`: unknown),
    /// made if there is none, or re-addressed if the node moved. `None`: no link can be had
    /// (no address known, or [`LINKS_MAX`] links made); the caller drops the frame.
    fn link_to(&mut self, registry: &Registry, to: u32, addr: Option<SocketAddr>) -> Option<usize> {
        if let Some(i) = self.links.iter().position(|l| l.node == to) {
            if let Some(a) = addr.filter(|&a| a != self.links[i].addr) {
                self.readdress(registry, i, a);
            }
            return Some(i);
        }
        let Some(addr) = addr else {
            self.stats.frames_no_addr += 1;
            return None;
        };
        if to == self.node_id || self.links.len() >= LINKS_MAX {
            // Never this node itself (the core applies its own work locally).
            self.stats.frames_dropped += 1;
            return None;
        }
        self.links.push(Link {
            node: to,
            addr,
            state: State::Down,
            stream: None,
            wbuf: Vec::new(),
            wpos: 0,
            held: Vec::new(),
            rbuf: ReadBuf::default(),
            handshake: Handshake::Done,
            refused: false,
            retry_at: Instant::now(),
            backoff_ms: RECONNECT_BACKOFF_MS_MIN,
        });
        Some(self.links.len() - 1)
    }

    /// Node `links[i]` listens at `addr` now: drop the connection to the old address and
    /// connect to the new one at the next frame (what was not written yet waits for it).
    fn readdress(&mut self, registry: &Registry, i: usize, addr: SocketAddr) {
        let l = &mut self.links[i];
        log::info!(
            "shard {}: node {} moved from {} to {addr}: reconnecting",
            self.shard,
            l.node,
            l.addr
        );
        if let Some(mut s) = l.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        // Bytes of the old connection (its handshake, or a frame half written) are not
        // resent: a half-written frame cannot be told apart from a whole one here.
        if l.handshake == Handshake::Done && l.state == State::Ready {
            let unsent = l.wbuf.split_off(l.wpos);
            if l.wpos == 0 {
                // Nothing of these frames went out: they go to the new address.
                l.held.splice(0..0, unsent);
            }
        }
        l.wbuf.clear();
        l.wpos = 0;
        l.rbuf.clear();
        l.addr = addr;
        l.state = State::Down;
        l.refused = false;
        l.retry_at = Instant::now();
        l.backoff_ms = RECONNECT_BACKOFF_MS_MIN;
        self.read_pending.retain(|&j| j != i);
        self.stats.readdressed += 1;
    }

    /// The link index of a poll token, if it is one of ours.
    pub fn index_of(&self, token: Token) -> Option<usize> {
        let i = LINK_TOKEN_BASE.checked_sub(token.0)?;
        (i < self.links.len()).then_some(i)
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Queue `frame` for node `to`, whose address the core knows as `addr` (see
    /// [`PeerLinks::link_to`]), connecting first if the link is down and its backoff has
    /// passed. Dropped if the link cannot take it.
    pub fn send(&mut self, registry: &Registry, to: u32, addr: Option<SocketAddr>, frame: &[u8]) {
        let Some(i) = self.link_to(registry, to, addr) else {
            return;
        };
        let mut limit = WRITE_BUFFER_SIZE_MAX;
        if self.links[i].state == State::Down {
            if Instant::now() < self.links[i].retry_at {
                limit = DOWN_QUEUE_BYTES_MAX; // wait for the next attempt (see `tick`)
            } else {
                self.connect(registry, i);
                if self.links[i].state == State::Down {
                    self.stats.frames_dropped += 1;
                    return;
                }
            }
        }
        let l = &mut self.links[i];
        if l.wbuf.len() - l.wpos + l.held.len() + frame.len() > limit {
            self.stats.frames_dropped += 1;
            return;
        }
        if l.state == State::Ready && l.handshake == Handshake::Done {
            l.wbuf.extend_from_slice(frame);
        } else {
            l.held.extend_from_slice(frame);
        }
    }

    fn connect(&mut self, registry: &Registry, i: usize) {
        let l = &mut self.links[i];
        let nonce_i = match super::system::random_nonce() {
            Ok(n) => n,
            Err(e) => {
                log::error!("link to node {}: no random bytes from the OS: {e}", l.node);
                Self::back_off(l);
                return;
            }
        };
        let mut stream = match TcpStream::connect(l.addr) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("link to node {} ({}): connect: {e}", l.node, l.addr);
                Self::back_off(l);
                return;
            }
        };
        let token = Token(LINK_TOKEN_BASE - i);
        if let Err(e) =
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("link to node {}: register: {e}", l.node);
            Self::back_off(l);
            return;
        }
        let _ = stream.set_nodelay(true);
        l.stream = Some(stream);
        l.state = State::Connecting;
        l.rbuf.clear();
        // Only the HELLO goes out; what waited stays held until both proofs are checked.
        l.wbuf.clear();
        l.wpos = 0;
        let mut token = nonce_i.to_vec();
        token.extend_from_slice(auth::conflicts_suffix(self.conflicts));
        Request::Hello {
            version: PEER_PROTOCOL_VERSION,
            role: Role::Peer,
            node_id: self.node_id,
            token: &token,
        }
        .encode(0, &mut l.wbuf);
        l.handshake = Handshake::Hello { nonce_i };
        self.stats.connects += 1;
    }

    fn back_off(l: &mut Link) {
        l.state = State::Down;
        let wait_ms = if std::mem::take(&mut l.refused) {
            PEER_AUTH_RETRY_MS
        } else {
            l.backoff_ms
        };
        l.retry_at = Instant::now() + Duration::from_millis(wait_ms);
        l.backoff_ms = (l.backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
    }

    fn close(&mut self, registry: &Registry, i: usize, why: &str) {
        let l = &mut self.links[i];
        if let Some(mut s) = l.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        if l.state == State::Ready {
            log::info!(
                "shard {}: link to node {} closed: {why}",
                self.shard,
                l.node
            );
        } else {
            log::debug!(
                "shard {}: link to node {} failed: {why}",
                self.shard,
                l.node
            );
        }
        l.wbuf.clear();
        l.wpos = 0;
        l.held.clear();
        l.rbuf.clear();
        Self::back_off(l);
    }

    /// A readiness event on link `i`: finish the connect, read replies into `core`, write.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        i: usize,
        readable: bool,
        core: &mut ShardCore,
        now_ms: u64,
    ) {
        if self.links[i].state == State::Connecting {
            let l = &mut self.links[i];
            let Some(s) = l.stream.as_ref() else { return };
            match s.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.close(registry, i, &e.to_string()),
            }
            match s.peer_addr() {
                Ok(_) => l.state = State::Ready,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.close(registry, i, &e.to_string()),
            }
        }
        if readable {
            match self.read(i, core, now_ms) {
                Ok(true) if !self.read_pending.contains(&i) => self.read_pending.push(i),
                Ok(_) => {}
                Err(why) => return self.close(registry, i, &why),
            }
        }
        self.flush_one(registry, i);
    }

    /// Whether some link has bytes to read without waiting for an event.
    pub fn has_read_pending(&self) -> bool {
        !self.read_pending.is_empty()
    }

    /// Read again the links whose last read stopped at the per-event bound.
    pub fn read_pending(&mut self, registry: &Registry, core: &mut ShardCore, now_ms: u64) {
        for i in std::mem::take(&mut self.read_pending) {
            self.on_event(registry, i, true, core, now_ms);
        }
    }

    /// Read what link `i` has, within the per-event bound; `Ok(true)` when the bound stopped
    /// it (more may be waiting).
    fn read(&mut self, i: usize, core: &mut ShardCore, now_ms: u64) -> Result<bool, String> {
        let shard = self.shard;
        let node_id = self.node_id;
        let secret = &self.secret;
        let conflicts = self.conflicts;
        let l = &mut self.links[i];
        let Some(s) = l.stream.as_mut() else {
            return Ok(false);
        };
        let mut more = true;
        for _ in 0..READS_PER_EVENT_MAX {
            match l.rbuf.read_from(s) {
                Ok(0) => return Err("closed by the peer".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.rbuf.shrink_if_idle();
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
            // Hand every whole frame to the core.
            loop {
                let (f, n) = match frame::parse(l.rbuf.data()) {
                    Ok(Some(found)) => found,
                    Ok(None) => break,
                    Err(e) => return Err(e.to_string()),
                };
                if f.op & RESPONSE_BIT == 0 {
                    return Err(format!("request frame 0x{:02x} on a peer link", f.op));
                }
                if l.handshake != Handshake::Done {
                    // Copied out (a few dozen bytes, once per connection): the step writes to
                    // the link the frame borrows from.
                    let (fop, faux, body) = (f.op, f.aux, f.body.to_vec());
                    l.rbuf.consume(n);
                    let step = handshake_step(
                        &mut l.handshake,
                        &mut l.wbuf,
                        (node_id, l.node, l.addr),
                        (secret, conflicts),
                        (fop, faux, &body),
                    );
                    if let Err(why) = step {
                        l.refused = true;
                        log::error!("shard {shard}: peer handshake with node {}: {why}", l.node);
                        return Err(why);
                    }
                    if l.handshake == Handshake::Done {
                        log::info!("shard {shard}: link to node {} up", l.node);
                        l.backoff_ms = RECONNECT_BACKOFF_MS_MIN;
                        let held = std::mem::take(&mut l.held);
                        l.wbuf.extend_from_slice(&held);
                    }
                    continue;
                } else if f.op & !RESPONSE_BIT == op::HELLO
                    || f.op & !RESPONSE_BIT == op::PEER_AUTH
                    || f.op == RESPONSE_BIT
                {
                    let msg = String::from_utf8_lossy(f.body).into_owned();
                    return Err(format!(
                        "unexpected handshake reply after the handshake: {msg}"
                    ));
                } else {
                    core.on_peer_reply(now_ms, l.node, &f);
                }
                l.rbuf.consume(n);
            }
        }
        Ok(more)
    }

    fn flush_one(&mut self, registry: &Registry, i: usize) {
        let l = &mut self.links[i];
        if l.state != State::Ready {
            return;
        }
        let Some(s) = l.stream.as_mut() else { return };
        while l.wpos < l.wbuf.len() {
            match s.write(&l.wbuf[l.wpos..]) {
                Ok(0) => return self.close(registry, i, "write returned 0"),
                Ok(n) => l.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(registry, i, &e.to_string()),
            }
        }
        if l.wpos == l.wbuf.len() {
            l.wbuf.clear();
            l.wpos = 0;
        } else if l.wpos > READ_CHUNK_SIZE {
            l.wbuf.drain(..l.wpos);
            l.wpos = 0;
        }
    }

    /// Retry the connection of every down link that has frames waiting and whose backoff
    /// has ended (called every loop turn).
    pub fn tick(&mut self, registry: &Registry) {
        let now = Instant::now();
        for i in 0..self.links.len() {
            let l = &self.links[i];
            if l.state == State::Down && !l.held.is_empty() && now >= l.retry_at {
                self.connect(registry, i);
                if self.links[i].state == State::Down {
                    // Failed at once: what waited is dropped (see the module doc).
                    let l = &mut self.links[i];
                    l.held.clear();
                    self.stats.frames_dropped += 1;
                }
            }
        }
    }

    /// Write what every ready link has queued (end of a turn).
    pub fn flush(&mut self, registry: &Registry) {
        for i in 0..self.links.len() {
            if self.links[i].wpos < self.links[i].wbuf.len() {
                self.flush_one(registry, i);
            }
        }
    }

    /// Close every link (shutdown).
    pub fn close_all(&mut self, registry: &Registry) {
        for l in &mut self.links {
            if let Some(mut s) = l.stream.take() {
                let _ = registry.deregister(&mut s);
            }
        }
    }
}

/// One reply of the handshake on the link to `node` at `addr` (this node is `me`): HELLO's
/// reply carries the peer's nonce and is answered with PEER_AUTH; PEER_AUTH's reply carries the
/// peer's proof. `Err` ends the connection (a refusal, a wrong proof, a reply out of place).
fn handshake_step(
    handshake: &mut Handshake,
    wbuf: &mut Vec<u8>,
    (me, node, addr): (u32, u32, SocketAddr),
    (secret, conflicts): (&[u8], Conflicts),
    (fop, aux, body): (u8, u8, &[u8]),
) -> Result<(), String> {
    let op_of = fop & !RESPONSE_BIT;
    if fop & RESPONSE_BIT == 0 || (op_of != op::HELLO && op_of != op::PEER_AUTH && op_of != 0) {
        return Err(format!("frame 0x{:02x} before the handshake finished", fop));
    }
    if aux != Status::Ok as u8 {
        let status = Status::from_u8(aux).map_or("unknown status", |s| s.name());
        let msg = String::from_utf8_lossy(body);
        // A wrong secret shows as UNAUTHORIZED; other refusals say what is wrong themselves
        // (a conflict-mode mismatch, a protocol version).
        let hint = if aux == Status::Unauthorized as u8 {
            " (is --cluster-secret the same on every node?)"
        } else {
            ""
        };
        return Err(format!("refused by the peer: {status}: {msg}{hint}"));
    }
    match (*handshake, op_of) {
        (Handshake::Hello { nonce_i }, op::HELLO) => {
            // | version u16 | node id u32 | shard u16 | shard count u16 | nonce 32 |
            if body.len() < 10 + NONCE_SIZE {
                return Err(format!("HELLO reply of {} bytes", body.len()));
            }
            let theirs = auth::conflicts_announced(&body[10 + NONCE_SIZE..])
                .ok_or_else(|| format!("HELLO reply of {} bytes", body.len()))?;
            if theirs != conflicts {
                return Err(format!(
                    "the peer resolves conflicts with --conflicts {}, this node with {}: every node of a cluster must run the same mode",
                    theirs.name(),
                    conflicts.name()
                ));
            }
            let version = u16::from_be_bytes([body[0], body[1]]);
            let peer = u32::from_be_bytes([body[2], body[3], body[4], body[5]]);
            if version != PEER_PROTOCOL_VERSION {
                return Err(format!(
                    "the peer speaks peer protocol {version}, this node {PEER_PROTOCOL_VERSION}"
                ));
            }
            if peer != node {
                return Err(format!("the node at {} says it is node {peer}", addr));
            }
            let nonce_r: Nonce = body[10..10 + NONCE_SIZE]
                .try_into()
                .expect("length checked");
            let p = auth::proof(secret, Side::Initiator, me, node, &nonce_i, &nonce_r);
            Request::PeerAuth { proof: &p }.encode(0, wbuf);
            *handshake = Handshake::Auth { nonce_i, nonce_r };
            Ok(())
        }
        (Handshake::Auth { nonce_i, nonce_r }, op::PEER_AUTH) => {
            if body.len() != PROOF_SIZE
                || !auth::verify(secret, Side::Responder, me, node, &nonce_i, &nonce_r, body)
            {
                return Err(
                    "the peer's proof of the cluster secret is wrong: not sending it anything"
                        .into(),
                );
            }
            *handshake = Handshake::Done;
            Ok(())
        }
        (state, _) => Err(format!(
            "handshake reply 0x{:02x} out of place ({state:?})",
            fop
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::Poll;
    use std::net::TcpListener;
    use std::time::Duration;

    /// Wait (a bounded while) for a connection on `l`.
    fn accepted(l: &TcpListener) -> bool {
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if l.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Links are made on the first frame to a node, at the address given; a new address
    /// moves the link; a node of no known address gets nothing; the link count is bounded.
    #[test]
    fn links_follow_the_addresses_the_core_knows() {
        let poll = Poll::new().unwrap();
        let registry = poll.registry();
        let mut config = ClusterConfig::single(1, "127.0.0.1:1".parse().unwrap());
        config.secret = b"s".to_vec();
        let mut links = PeerLinks::new(0, &config);
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());

        links.send(registry, 2, Some(addr_a), b"frame");
        assert_eq!(links.links.len(), 1);
        assert!(accepted(&a), "connected to the node's address");
        assert_eq!(links.stats().connects, 1);
        // No address given this time: the link keeps the one it has.
        links.send(registry, 2, None, b"frame");
        assert_eq!(links.links[0].addr, addr_a);
        // The node moved: the link reconnects there (at the next frame, its backoff reset).
        links.send(registry, 2, Some(addr_b), b"frame");
        assert_eq!(links.stats().readdressed, 1);
        assert_eq!(links.links[0].addr, addr_b);
        assert!(accepted(&b), "reconnected to the new address");
        assert_eq!(links.index_of(Token(LINK_TOKEN_BASE)), Some(0));

        // A node nobody knows the address of: dropped and counted, no link.
        links.send(registry, 3, None, b"frame");
        assert_eq!(links.stats().frames_no_addr, 1);
        assert_eq!(links.links.len(), 1);
        // Never a link to this node itself.
        links.send(registry, 1, Some(addr_a), b"frame");
        assert_eq!(links.links.len(), 1);

        // At most LINKS_MAX links (to unreachable ports: connects fail or hang, no matter).
        let dropped = links.stats().frames_dropped;
        for id in 10..10 + LINKS_MAX as u32 {
            links.send(registry, id, Some("127.0.0.1:9".parse().unwrap()), b"f");
        }
        assert_eq!(links.links.len(), LINKS_MAX);
        assert!(links.stats().frames_dropped > dropped);
        links.close_all(registry);
    }
}
