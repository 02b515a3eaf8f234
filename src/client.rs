//! A small blocking client for the dkv protocol, used by kvcat, the tests and the tools.
//!
//! One request at a time with [`Client::call`] and the typed helpers, or pipelined with
//! [`Client::send`] and [`Client::recv`] (replies matched by request id, in any order).
//! [`RingClient`] talks to a whole cluster: it fetches the ring map (RING) and sends each
//! request to an owner of its key.

use crate::protocol::message::Response;
use crate::protocol::ringmap::RingMap;
use crate::protocol::{frame, op, Consistency, Request, Role, Status, PROTOCOL_VERSION};
use crate::server::readbuf::ReadBuf;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A reply owned by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request's opcode (0 for a connection-level error).
    pub op: u8,
    /// Status code byte.
    pub status: u8,
    /// Request id answered.
    pub id: u32,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The status, if known.
    pub fn status(&self) -> Option<Status> {
        Status::from_u8(self.status)
    }

    /// The status name, or `STATUS_0xNN` for an unknown code.
    pub fn status_name(&self) -> String {
        match self.status() {
            Some(s) => s.name().to_string(),
            None => format!("STATUS_0x{:02x}", self.status),
        }
    }

    /// The body as text (error messages, STATS).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Leading version u64 and the rest of the body.
    pub fn version_and_rest(&self) -> Option<(u64, &[u8])> {
        if self.body.len() < 8 {
            return None;
        }
        let (v, rest) = self.body.split_at(8);
        Some((u64::from_be_bytes(v.try_into().expect("8 bytes")), rest))
    }
}

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The connection failed or was closed.
    Io(io::Error),
    /// The server answered with an error status.
    Server {
        /// Status code byte.
        status: u8,
        /// The server's message.
        message: String,
    },
    /// The server sent something this client does not understand.
    Protocol(String),
}

impl ClientError {
    /// The status of a server error.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Server { status, .. } => Status::from_u8(*status),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "connection error: {e}"),
            ClientError::Server { status, message } => {
                let name = Status::from_u8(*status)
                    .map(|s| s.name().to_string())
                    .unwrap_or_else(|| format!("STATUS_0x{status:02x}"));
                write!(f, "{name} {message}")
            }
            ClientError::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A blocking connection to one node.
pub struct Client {
    stream: TcpStream,
    inbuf: ReadBuf,
    out: Vec<u8>,
    next_id: u32,
}

impl Client {
    /// Connect as a client and complete the HELLO handshake.
    pub fn connect<A: ToSocketAddrs>(addr: A) -> Result<Client, ClientError> {
        Client::connect_as(addr, Role::Client, 0, b"")
    }

    /// Connect with an explicit role, node id and token.
    pub fn connect_as<A: ToSocketAddrs>(
        addr: A,
        role: Role,
        node_id: u32,
        token: &[u8],
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut c = Client::from_stream(stream);
        let reply = c.call(&Request::Hello {
            version: PROTOCOL_VERSION,
            role,
            node_id,
            token,
        })?;
        expect_ok(reply)?;
        Ok(c)
    }

    /// Connect as node `node_id` of a cluster and run the peer handshake (protocol.md § 8):
    /// prove `secret` to the node and check its proof, without sending the secret. For tools
    /// and tests; nodes use the same steps in [`crate::server::peers`].
    pub fn connect_peer<A: ToSocketAddrs>(
        addr: A,
        node_id: u32,
        secret: &[u8],
    ) -> Result<Client, ClientError> {
        use crate::auth::{self, Nonce, Side, NONCE_SIZE, PEER_PROTOCOL_VERSION};
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut c = Client::from_stream(stream);
        let nonce_i = crate::server::system::random_nonce()?;
        let reply = expect_ok(c.call(&Request::Hello {
            version: PEER_PROTOCOL_VERSION,
            role: Role::Peer,
            node_id,
            token: &nonce_i,
        })?)?;
        if reply.body.len() != 10 + NONCE_SIZE {
            return Err(ClientError::Protocol(format!(
                "peer HELLO reply of {} bytes",
                reply.body.len()
            )));
        }
        let responder = u32::from_be_bytes(reply.body[2..6].try_into().expect("4 bytes"));
        let nonce_r: Nonce = reply.body[10..].try_into().expect("length checked");
        let mine = auth::proof(
            secret,
            Side::Initiator,
            node_id,
            responder,
            &nonce_i,
            &nonce_r,
        );
        let reply = expect_ok(c.call(&Request::PeerAuth { proof: &mine })?)?;
        if !auth::verify(
            secret,
            Side::Responder,
            node_id,
            responder,
            &nonce_i,
            &nonce_r,
            &reply.body,
        ) {
            return Err(ClientError::Protocol(
                "the node's proof of the cluster secret is wrong".into(),
            ));
        }
        Ok(c)
    }

    /// Wrap a connected stream without a handshake (raw tests).
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            inbuf: ReadBuf::default(),
            out: Vec::new(),
            next_id: 1,
        }
    }

    /// Set a read timeout for replies.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    /// Queue a request (sent by [`Client::flush`] or the next [`Client::recv`]); returns its id.
    /// Panics on a request that cannot be encoded: check [`Request::check_encodable`] first
    /// when sizes come from users.
    pub fn send(&mut self, req: &Request<'_>) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        req.encode(id, &mut self.out);
        id
    }

    /// Queue raw bytes (for tests of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Write everything queued.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Flush, then wait for the next reply.
    pub fn recv(&mut self) -> Result<Reply, ClientError> {
        self.flush()?;
        loop {
            match frame::parse(self.inbuf.data()) {
                Ok(Some((f, n))) => {
                    let r = Response::from_frame(&f).ok_or_else(|| {
                        ClientError::Protocol(format!("request frame 0x{:02x} from server", f.op))
                    })?;
                    let reply = Reply {
                        op: r.op,
                        status: r.status,
                        id: r.id,
                        body: r.body.to_vec(),
                    };
                    self.inbuf.consume(n);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            if self.inbuf.read_from(&mut self.stream)? == 0 {
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
        }
    }

    /// Send one request and wait for its reply (error statuses are returned as replies). A
    /// request that cannot be encoded at all (a key over 65,535 bytes, a value over the
    /// maximum) is refused here with the status the node would give, without sending it.
    pub fn call(&mut self, req: &Request<'_>) -> Result<Reply, ClientError> {
        if let Err(e) = req.check_encodable() {
            return Err(ClientError::Server {
                status: e.status() as u8,
                message: format!("{e} (refused by the client: cannot be encoded)"),
            });
        }
        let id = self.send(req);
        let reply = self.recv()?;
        if reply.id != id && reply.op != 0 {
            return Err(ClientError::Protocol(format!(
                "reply to id {} while waiting for {id}",
                reply.id
            )));
        }
        Ok(reply)
    }

    /// PING.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        expect_ok(self.call(&Request::Ping)?).map(|_| ())
    }

    /// GET: the version and value, or `None` if not found.
    pub fn get(
        &mut self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        found(self.call(&Request::Get { key, consistency })?)
    }

    /// PUT: the version assigned to the write.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_seconds: u32,
        consistency: Consistency,
    ) -> Result<u64, ClientError> {
        let r = self.call(&Request::Put {
            key,
            value,
            ttl_seconds,
            consistency,
        })?;
        version_of(expect_ok(r)?)
    }

    /// DELETE: the tombstone's version.
    pub fn delete(&mut self, key: &[u8], consistency: Consistency) -> Result<u64, ClientError> {
        let r = self.call(&Request::Delete { key, consistency })?;
        version_of(expect_ok(r)?)
    }

    /// Siblings mode: GET with the causal flag: every live sibling and the causal context to
    /// write back (protocol.md § 19).
    pub fn get_siblings(
        &mut self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Siblings, ClientError> {
        siblings_of(self.call(&Request::CausalGet { key, consistency })?)
    }

    /// Siblings mode: PUT carrying the causal `context` of a GET (empty: a blind write, kept
    /// beside what is there): it supersedes exactly the siblings that GET returned.
    pub fn put_with_context(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_seconds: u32,
        context: &[u8],
        consistency: Consistency,
    ) -> Result<u64, ClientError> {
        let r = self.call(&Request::CausalPut {
            key,
            value,
            ttl_seconds,
            context,
            consistency,
        })?;
        version_of(expect_ok(r)?)
    }

    /// Siblings mode: DELETE what the causal `context` of a GET saw.
    pub fn delete_with_context(
        &mut self,
        key: &[u8],
        context: &[u8],
        consistency: Consistency,
    ) -> Result<u64, ClientError> {
        let r = self.call(&Request::CausalDelete {
            key,
            context,
            consistency,
        })?;
        version_of(expect_ok(r)?)
    }

    /// STATS as text.
    pub fn stats(&mut self) -> Result<String, ClientError> {
        Ok(expect_ok(self.call(&Request::Stats)?)?.text())
    }

    /// ANTI_ENTROPY: ask the node to start an anti-entropy round on every shard now (the
    /// round runs in the background; watch `aae_full_rounds` in STATS).
    pub fn anti_entropy(&mut self) -> Result<(), ClientError> {
        expect_ok(self.call(&Request::AntiEntropy)?).map(|_| ())
    }

    /// COMPACT: run a forced compaction pass on every shard of the node and wait for it;
    /// returns the reply's `name value` lines (`compactions`, `bytes_reclaimed`,
    /// `segments_reclaimed`, `complete`). Nodes of earlier versions answer at once with an
    /// empty body.
    pub fn compact(&mut self) -> Result<String, ClientError> {
        Ok(expect_ok(self.call(&Request::Compact)?)?.text())
    }

    /// CLUSTER as text.
    pub fn cluster(&mut self) -> Result<String, ClientError> {
        Ok(expect_ok(self.call(&Request::Cluster)?)?.text())
    }

    /// SNAPSHOT: `TAKE name`, `LIST` or `DELETE name` (protocol.md § 11.4); the reply text.
    pub fn snapshot(&mut self, command: &str) -> Result<String, ClientError> {
        Ok(expect_ok(self.call(&Request::Snapshot { command })?)?.text())
    }

    /// CLUSTER_ADMIN: an operator's cluster command (`LEAVE n`, `REMOVE n`, `PLAN`,
    /// `TRANSFERS`, `PAUSE`, `RESUME`, `THROTTLE mb`); the answer's text.
    pub fn cluster_admin(&mut self, command: &str) -> Result<String, ClientError> {
        Ok(expect_ok(self.call(&Request::ClusterAdmin { command })?)?.text())
    }

    /// RING: the ring map (version, node addresses, owners of each partition).
    pub fn ring(&mut self) -> Result<RingMap, ClientError> {
        let r = expect_ok(self.call(&Request::Ring)?)?;
        RingMap::decode(&r.body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// LGET: `Ok(Some((version, value)))` for a live local copy, `Ok(None)` otherwise.
    pub fn local_get(&mut self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        let r = self.call(&Request::LocalGet { key })?;
        if r.status() == Some(Status::NotFound) {
            return Ok(None);
        }
        let r = expect_ok(r)?;
        if r.body.len() < 16 {
            return Err(ClientError::Protocol("short LGET reply".into()));
        }
        let v = u64::from_be_bytes(r.body[..8].try_into().expect("8 bytes"));
        Ok(Some((v, r.body[16..].to_vec())))
    }
}

/// What a causal GET found (siblings mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Siblings {
    /// The causal context: send it back with the next PUT or DELETE of the key.
    pub context: Vec<u8>,
    /// The live siblings, (version, value), in the node's stable order; empty: not found.
    pub values: Vec<(u64, Vec<u8>)>,
}

/// A causal GET reply: its siblings and context (none for NOT_FOUND, which still carries the
/// context); an error status is an error.
fn siblings_of(r: Reply) -> Result<Siblings, ClientError> {
    let r = match r.status() {
        Some(Status::NotFound) => r,
        _ => expect_ok(r)?,
    };
    let found = r.status() == Some(Status::Ok);
    let decoded = crate::protocol::siblings::decode_causal_get_reply(&r.body, found)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(Siblings {
        context: decoded.context.to_vec(),
        values: (decoded.values.iter())
            .map(|&(v, value)| (v, value.to_vec()))
            .collect(),
    })
}

/// A GET reply: the version and value, or `None` for NOT_FOUND.
fn found(r: Reply) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
    if r.status() == Some(Status::NotFound) {
        return Ok(None);
    }
    let r = expect_ok(r)?;
    let (v, value) = r
        .version_and_rest()
        .ok_or_else(|| ClientError::Protocol("GET reply without a version".into()))?;
    Ok(Some((v, value.to_vec())))
}

/// Turn a non-OK reply into an error.
pub fn expect_ok(r: Reply) -> Result<Reply, ClientError> {
    if r.status == Status::Ok as u8 {
        Ok(r)
    } else {
        Err(ClientError::Server {
            status: r.status,
            message: r.text(),
        })
    }
}

fn version_of(r: Reply) -> Result<u64, ClientError> {
    r.version_and_rest()
        .map(|(v, _)| v)
        .ok_or_else(|| ClientError::Protocol(format!("{} reply without a version", op::name(r.op))))
}

// ---- routing by the ring ----

/// How long a [`RingClient`] leaves a node alone after a connection to it failed.
pub const RING_NODE_RETRY_MS: u64 = 1_000;

/// How often a [`RingClient`] asks for the ring map's version to notice a new ring.
pub const RING_REFRESH_INTERVAL_MS: u64 = 1_000;

/// What a [`RingClient`] did with its requests (for tests and tools).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounters {
    /// Requests sent to an owner of their key.
    pub to_owner: u64,
    /// Requests sent to a node that does not own the key (every owner was unreachable).
    pub to_other: u64,
    /// Ring maps fetched (the first one included).
    pub maps_fetched: u64,
    /// Connections that failed (each drops the connection and refetches the map).
    pub connection_failures: u64,
}

/// A blocking client of a whole cluster: it fetches the ring map from any node it is given,
/// keeps one connection per node (opened when first needed), and sends each request to the
/// first reachable owner of its key, primary first. Any node coordinates any request, so a
/// stale map costs a hop, never a wrong answer; the map is refetched when a connection fails
/// and when its version changes (checked every [`RING_REFRESH_INTERVAL_MS`]).
///
/// Siblings mode (`kvd --conflicts siblings`): a PUT or DELETE is coordinated by a replica of
/// its key (protocol.md § 19.2); another node hands it to one, a hop more. Owners are tried
/// first, so [`RingClient::put_with_context`], [`RingClient::delete_with_context`] and
/// [`RingClient::put`] save that hop whenever an owner is reachable by the map in use.
pub struct RingClient {
    /// Where to fetch the map from: the addresses given, then every node of the map.
    seeds: Vec<String>,
    token: Vec<u8>,
    map: RingMap,
    /// The address the map came from: a node's empty address in the map means this one.
    map_source: String,
    conns: std::collections::BTreeMap<u32, Client>,
    /// Nodes whose connection failed, with when to try them again.
    down_until: std::collections::BTreeMap<u32, std::time::Instant>,
    checked_at: std::time::Instant,
    counters: RouteCounters,
}

impl RingClient {
    /// Fetch the ring map from the first of `seeds` that answers.
    pub fn connect(seeds: &[String]) -> Result<RingClient, ClientError> {
        RingClient::connect_with_token(seeds, b"")
    }

    /// The same, presenting a client token in every HELLO.
    pub fn connect_with_token(seeds: &[String], token: &[u8]) -> Result<RingClient, ClientError> {
        let (map, source) = fetch_map(seeds, token)?;
        Ok(RingClient {
            seeds: seeds.to_vec(),
            token: token.to_vec(),
            map,
            map_source: source,
            conns: Default::default(),
            down_until: Default::default(),
            checked_at: std::time::Instant::now(),
            counters: RouteCounters {
                maps_fetched: 1,
                ..RouteCounters::default()
            },
        })
    }

    /// The ring map in use.
    pub fn map(&self) -> &RingMap {
        &self.map
    }

    /// What was routed where so far.
    pub fn counters(&self) -> RouteCounters {
        self.counters
    }

    /// Fetch the map again (from the seeds, then from the map's nodes).
    pub fn refresh(&mut self) -> Result<(), ClientError> {
        let mut sources = self.seeds.clone();
        for (id, _) in &self.map.addrs {
            if let Some(a) = self.addr_of(*id) {
                if !sources.contains(&a) {
                    sources.push(a);
                }
            }
        }
        let (map, source) = fetch_map(&sources, &self.token)?;
        self.counters.maps_fetched += 1;
        self.map = map;
        self.map_source = source;
        self.checked_at = std::time::Instant::now();
        Ok(())
    }

    fn addr_of(&self, node: u32) -> Option<String> {
        match self.map.addr_of(node)? {
            "" => Some(self.map_source.clone()),
            a => Some(a.to_string()),
        }
    }

    /// The version check: past the interval, ask any connected node for the map and take it
    /// if its version differs.
    fn maybe_check_version(&mut self) {
        let interval = Duration::from_millis(RING_REFRESH_INTERVAL_MS);
        if self.checked_at.elapsed() < interval {
            return;
        }
        self.checked_at = std::time::Instant::now();
        let Some((&id, conn)) = self.conns.iter_mut().next() else {
            return;
        };
        match conn.ring() {
            Ok(map) if map.version() != self.map.version() => {
                self.counters.maps_fetched += 1;
                if let Some(a) = self.map.addr_of(id).filter(|a| !a.is_empty()) {
                    self.map_source = a.to_string();
                }
                self.map = map;
            }
            Ok(_) => {}
            Err(_) => {
                self.conns.remove(&id);
            }
        }
    }

    /// Send `req` (a request with a key) to the first reachable owner of the key, or to any
    /// reachable node when no owner is; returns the node's reply (error statuses included).
    pub fn call(&mut self, req: &Request<'_>) -> Result<Reply, ClientError> {
        self.maybe_check_version();
        let key = req.key().unwrap_or(&[]);
        let owners = self.map.owners_of_key(key).to_vec();
        let others: Vec<u32> = self
            .map
            .addrs
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !owners.contains(id))
            .collect();
        let mut last_err = None;
        for (owner, node) in owners
            .iter()
            .map(|&n| (true, n))
            .chain(others.iter().map(|&n| (false, n)))
        {
            let now = std::time::Instant::now();
            if self.down_until.get(&node).is_some_and(|&t| now < t) {
                continue;
            }
            match self.call_on(node, req) {
                Ok(reply) => {
                    if owner {
                        self.counters.to_owner += 1;
                    } else {
                        self.counters.to_other += 1;
                    }
                    return Ok(reply);
                }
                Err(ClientError::Io(e)) => {
                    self.counters.connection_failures += 1;
                    self.conns.remove(&node);
                    self.down_until
                        .insert(node, now + Duration::from_millis(RING_NODE_RETRY_MS));
                    // A failed node may mean a changed ring; a failed refresh keeps the map.
                    let _ = self.refresh();
                    last_err = Some(ClientError::Io(e));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            ClientError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "no node of the ring is reachable",
            ))
        }))
    }

    fn call_on(&mut self, node: u32, req: &Request<'_>) -> Result<Reply, ClientError> {
        if !self.conns.contains_key(&node) {
            let addr = self.addr_of(node).ok_or_else(|| {
                ClientError::Io(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("node {node} has no address in the ring map"),
                ))
            })?;
            let c = Client::connect_as(addr.as_str(), Role::Client, 0, &self.token)?;
            self.conns.insert(node, c);
        }
        // Inserted just above when absent.
        let c = self.conns.get_mut(&node).expect("connection present");
        c.call(req)
    }

    /// GET: the version and value, or `None` if not found.
    pub fn get(
        &mut self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        found(self.call(&Request::Get { key, consistency })?)
    }

    /// PUT: the version assigned to the write.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_seconds: u32,
        consistency: Consistency,
    ) -> Result<u64, ClientError> {
        let r = self.call(&Request::Put {
            key,
            value,
            ttl_seconds,
            consistency,
        })?;
        version_of(expect_ok(r)?)
    }

    /// DELETE: the tombstone's version.
    pub fn delete(&mut self, key: &[u8], consistency: Consistency) -> Result<u64, ClientError> {
        let r = self.call(&Request::Delete { key, consistency })?;
        version_of(expect_ok(r)?)
    }

    /// Siblings mode: GET with the causal flag: every live sibling and the causal context to
    /// write back (protocol.md § 19).
    pub fn get_siblings(
        &mut self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Siblings, ClientError> {
        siblings_of(self.call(&Request::CausalGet { key, consistency })?)
    }

    /// Siblings mode: PUT carrying the causal `context` of a GET (empty: a blind write, kept
    /// beside what is there): it supersedes exactly the siblings that GET returned.
    pub fn put_with_context(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_seconds: u32,
        context: &[u8],
        consistency: Consistency,
    ) -> Result<u64, ClientError> {
        let r = self.call(&Request::CausalPut {
            key,
            value,
            ttl_seconds,
            context,
            consistency,
        })?;
        version_of(expect_ok(r)?)
    }

    /// Siblings mode: DELETE what the causal `context` of a GET saw.
    pub fn delete_with_context(
        &mut self,
        key: &[u8],
        context: &[u8],
        consistency: Consistency,
    ) -> Result<u64, ClientError> {
        let r = self.call(&Request::CausalDelete {
            key,
            context,
            consistency,
        })?;
        version_of(expect_ok(r)?)
    }
}

/// The ring map from the first of `sources` that answers, and that source.
fn fetch_map(sources: &[String], token: &[u8]) -> Result<(RingMap, String), ClientError> {
    let mut last = None;
    for s in sources {
        match Client::connect_as(s.as_str(), Role::Client, 0, token).and_then(|mut c| c.ring()) {
            Ok(map) => return Ok((map, s.clone())),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Protocol("no address to fetch the ring from".into())))
}

/// What a client HELLO's OK reply says (protocol.md § 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloInfo {
    /// The node's protocol version.
    pub version: u16,
    /// The node's id.
    pub node_id: u32,
    /// The shard serving this connection.
    pub shard: u16,
    /// The node's shard count.
    pub shards: u16,
}

impl HelloInfo {
    /// Read the first 10 bytes of a HELLO OK body (a peer's reply has a nonce after them).
    pub fn parse(body: &[u8]) -> Option<HelloInfo> {
        let b = body.get(..10)?;
        Some(HelloInfo {
            version: u16::from_be_bytes([b[0], b[1]]),
            node_id: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
            shard: u16::from_be_bytes([b[6], b[7]]),
            shards: u16::from_be_bytes([b[8], b[9]]),
        })
    }
}

/// Shard-aware connections (protocol.md § 11.2; the port choice is in [`crate::shard_port`]).
impl Client {
    /// Connect as a client, send HELLO with `token`, and return what its reply says (which
    /// shard serves the connection, how many the node has).
    pub fn connect_hello(
        addr: SocketAddr,
        token: &[u8],
    ) -> Result<(Client, HelloInfo), ClientError> {
        let stream = TcpStream::connect(addr)?;
        Client::hello_on(stream, token)
    }

    /// Connect to shard `shard` of a node with `shards` shards (from an earlier HELLO reply)
    /// by binding a local port `P` with `(P div 2) mod shards == shard` first, trying other ports
    /// while they are taken. The HELLO reply says where the connection landed: a node that
    /// does not steer (or has another shard count by now) may put it elsewhere, which is
    /// slower but still correct.
    pub fn connect_to_shard(
        addr: SocketAddr,
        shard: usize,
        shards: usize,
        token: &[u8],
    ) -> Result<(Client, HelloInfo), ClientError> {
        let (stream, _port) = crate::shard_port::connect_to_shard(addr, shard, shards, false)?;
        Client::hello_on(stream, token)
    }

    fn hello_on(stream: TcpStream, token: &[u8]) -> Result<(Client, HelloInfo), ClientError> {
        stream.set_nodelay(true)?;
        let mut c = Client::from_stream(stream);
        let reply = expect_ok(c.call(&Request::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id: 0,
            token,
        })?)?;
        let info = HelloInfo::parse(&reply.body).ok_or_else(|| {
            ClientError::Protocol(format!("HELLO reply of {} bytes", reply.body.len()))
        })?;
        Ok((c, info))
    }
}

/// One connection per shard of a node, each landed on its shard: requests for a key go on
/// the connection of the shard that owns it ([`crate::hash::shard_of`]), so none crosses
/// between shards.
pub struct ShardClients {
    conns: Vec<Client>,
    /// Where each connection landed (index = the shard it was meant for).
    pub landed: Vec<HelloInfo>,
}

impl ShardClients {
    /// Ask the node its shard count, then open one connection per shard.
    pub fn connect(addr: SocketAddr, token: &[u8]) -> Result<ShardClients, ClientError> {
        let (first, info) = Client::connect_hello(addr, token)?;
        let shards = (info.shards as usize).max(1);
        let mut conns = Vec::with_capacity(shards);
        let mut landed = Vec::with_capacity(shards);
        if shards == 1 {
            conns.push(first);
            landed.push(info);
        } else {
            drop(first);
            for shard in 0..shards {
                let (c, info) = Client::connect_to_shard(addr, shard, shards, token)?;
                conns.push(c);
                landed.push(info);
            }
        }
        Ok(ShardClients { conns, landed })
    }

    /// The node's shard count.
    pub fn shards(&self) -> usize {
        self.conns.len()
    }

    /// The connection for requests about `key`.
    pub fn for_key(&mut self, key: &[u8]) -> &mut Client {
        let shard = crate::hash::shard_of(key, self.conns.len());
        &mut self.conns[shard]
    }

    /// The connection meant for shard `shard` (`None` past the shard count).
    pub fn for_shard(&mut self, shard: usize) -> Option<&mut Client> {
        self.conns.get_mut(shard)
    }
}
