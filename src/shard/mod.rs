//! One shard's core: decode a request, route it, execute it against the shard's store, encode
//! the reply. Pure (sans-IO): no sockets, no threads, no clock reads. The mio driver in
//! [`crate::server`] feeds it frames, mail from other shards and ticks, and moves the bytes it
//! produces; the simulator can drive it the same way.
//!
//! Call order, per event-loop turn (the driver's contract):
//!
//! 1. [`ShardCore::on_frame`] for each frame read from a connection of this shard; immediate
//!    replies are appended to that connection's write buffer.
//! 2. [`ShardCore::on_mail`] for each batch from another shard's mailbox.
//! 3. [`ShardCore::on_tick`] when a timer is due (it returns true when the next one should come
//!    sooner: the disk is short of space and compaction has work left).
//! 4. [`ShardCore::finish_turn`]: writes the turn's records to the store's file in one call
//!    ([`crate::storage::Store::flush`]), syncs the store if the policy asks (group commit: one
//!    fsync for every write of the turn) and releases the replies that waited for them (write
//!    acknowledgements are held under every policy; see `execute.rs`).
//! 5. [`ShardCore::take_outbox`]: batches for other shards (forwarded requests, replies to
//!    their connections) and replies for this shard's own connections.
//!
//! Requests for keys that another shard owns are forwarded as *records* in one batch per
//! destination per turn, so crossing shards costs one lock and at most one wake-up per turn,
//! not per request:
//!
//! ```text
//!  record = | conn id u64 BE | frame (its own 4-byte length prefix included) |
//! ```
//!
//! Replies travel back the same way, to the shard that owns the connection.
//!
//! Files, along the request's path:
//!
//! ```text
//!  mod.rs          ConnId, Session, NodeShared, the core and on_frame (decode, check, route)
//!  handshake.rs    client HELLO, peer HELLO + PEER_AUTH, the handshake throttle
//!  mail.rs         Mail and Outbox: forwarding between shards, on_mail
//!  execute.rs      GET/PUT/DELETE/LOCAL_GET on the shard's store; replies held for a sync
//!  cluster.rs      the cluster glue: coordinator, peer frames, the membership view mail
//!  siblings.rs     siblings mode: GET replies of siblings, COORDINATE (a handed-over write)
//!  maintenance.rs  on_tick: store maintenance, COMPACT, refused-write reports
//!  stats.rs        ShardCounters and the STATS text
//! ```

mod cluster;
mod execute;
mod handshake;
mod mail;
mod maintenance;
pub use maintenance::Pace;
mod siblings;
pub mod snapshot;
pub mod stats;
#[cfg(test)]
mod tests;

pub use cluster::ReplyTo;
pub use execute::reply_version;
pub use mail::{Mail, Outbox};
pub use stats::{Figures, ShardCounters};

use crate::cluster::coordinator::Outcome;
use crate::hash::shard_of;
use crate::protocol::message::{put_connection_error, put_error, put_ok};
use crate::protocol::{
    frame, op, FrameError, FrameRef, Request, RequestError, Role, Status, RESPONSE_BIT,
};
use crate::storage::ceiling::DurableClock;
use crate::storage::Store;
use crate::version::Hlc;
use maintenance::Compacting;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Identifies a connection across shards: the owning driver's slab key and a generation that
/// changes each time the slot is reused, so a late reply never reaches a newer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

impl ConnId {
    /// Build from a slab key and a generation.
    pub fn new(slot: usize, generation: u32) -> ConnId {
        assert!(slot <= u32::MAX as usize);
        ConnId(((generation as u64) << 32) | slot as u64)
    }

    /// The slab key.
    pub fn slot(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }

    /// The generation.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// When acknowledgements of writes may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// After the write's record is synced to disk (group commit per event-loop turn).
    Always,
    /// Immediately; the driver syncs every `ms` milliseconds.
    Interval {
        /// Sync period.
        ms: u64,
    },
    /// Immediately; the operating system writes back when it likes.
    Never,
}

impl SyncPolicy {
    /// Parse `always`, `never` or `interval:MS`.
    pub fn parse(s: &str) -> Result<SyncPolicy, String> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(SyncPolicy::Interval { ms }),
                _ => Err(format!(
                    "bad sync policy {s:?}: expected always, never or interval:MS with MS > 0"
                )),
            },
        }
    }
}

/// Handshake state of one connection, kept by the driver and updated by the core.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// The role announced in HELLO, if any.
    pub role: Option<Role>,
    /// The peer's node id, for peer sessions.
    pub peer_id: Option<u32>,
    /// The connection's source address, set by the driver at accept: failed handshakes are
    /// throttled per source ([`crate::auth::HandshakeThrottle`]). `None` is not throttled.
    pub source: Option<std::net::IpAddr>,
    /// Fresh random bytes from the OS, set by the driver at accept: this node's nonce if the
    /// connection turns out to be a peer's (the core never reads the OS itself).
    pub nonce: crate::auth::Nonce,
    /// A peer HELLO answered and its PEER_AUTH awaited: `(peer id, the peer's nonce)`.
    pub challenge: Option<(u32, crate::auth::Nonce)>,
    /// `nonce` went out in a HELLO reply: a connection gets one peer handshake, so this
    /// node never answers two challenges with the same nonce.
    pub nonce_spent: bool,
    /// The last HELLO presented the admin token: the admin opcodes are allowed.
    pub admin: bool,
}

impl Session {
    /// The session of a connection just accepted from `source`, with a fresh OS `nonce`.
    pub fn accepted(source: std::net::IpAddr, nonce: crate::auth::Nonce) -> Session {
        Session {
            source: Some(source),
            nonce,
            ..Session::default()
        }
    }
}

/// What every shard of a node shares: immutable configuration and the counters for STATS.
pub struct NodeShared {
    /// This node's id.
    pub node_id: u32,
    /// Number of shards.
    pub shards: usize,
    /// Wall-clock ms when the node started.
    pub started_at_ms: u64,
    /// Connection limit of the node.
    pub connections_max: usize,
    /// Connections open on the node now, over all shards: the limit is node-wide, however
    /// unevenly the kernel spreads connections over the shards' listeners.
    pub connections_open: AtomicU64,
    /// One entry per shard.
    pub counters: Vec<ShardCounters>,
    /// ANTI_ENTROPY requests received: each shard starts a round when it sees it change.
    pub anti_entropy_requests: AtomicU64,
    /// Failed handshakes per source, node-wide (a source spread over the shards by the
    /// kernel still gets one count). Locked only by HELLO and PEER_AUTH.
    pub handshake_throttle: Mutex<crate::auth::HandshakeThrottle>,
    /// COMPACT requests received (a generation): each shard starts a forced compaction pass
    /// when it sees it change, and publishes the generation it finished in `compact_done`.
    pub compact_requests: AtomicU64,
    /// The memory budget of connection buffers, charged by the event loops (`budget.rs`).
    pub memory: crate::budget::MemoryBudget,
    /// The node's byte rate for partition copies (`--stream-mb-per-s`, kvcat `CLUSTER
    /// THROTTLE`), 0 = unlimited: each shard applies it on its cluster ticks.
    pub stream_bytes_per_s: AtomicU64,
    /// Partition copies a node runs at once (`--transfer-limit`).
    pub transfer_limit: AtomicU64,
    /// Where SNAPSHOT puts snapshots (`DATA/snapshots`); `None`: the node takes none.
    pub snapshot_root: Option<std::path::PathBuf>,
    /// SNAPSHOT TAKE requests (a generation): each shard takes its part when it sees it change.
    pub snapshot_requests: AtomicU64,
    /// The generation asked for and the snapshot's directory.
    pub snapshot_target: Mutex<Option<(u64, std::path::PathBuf)>>,
}

impl NodeShared {
    /// Shared state for a node of `shards` shards.
    pub fn new(
        node_id: u32,
        shards: usize,
        started_at_ms: u64,
        connections_max: usize,
    ) -> NodeShared {
        NodeShared {
            node_id,
            shards,
            started_at_ms,
            connections_max,
            connections_open: AtomicU64::new(0),
            counters: (0..shards).map(|_| ShardCounters::default()).collect(),
            anti_entropy_requests: AtomicU64::new(0),
            handshake_throttle: Mutex::new(crate::auth::HandshakeThrottle::default()),
            compact_requests: AtomicU64::new(0),
            memory: crate::budget::MemoryBudget::default(),
            stream_bytes_per_s: AtomicU64::new(0),
            transfer_limit: AtomicU64::new(
                crate::cluster::antientropy::TRANSFER_LIMIT_DEFAULT as u64,
            ),
            snapshot_root: None,
            snapshot_requests: AtomicU64::new(0),
            snapshot_target: Mutex::new(None),
        }
    }

    /// The same, keeping snapshots under `root` (kvd: `DATA/snapshots`).
    pub fn with_snapshot_root(mut self, root: std::path::PathBuf) -> NodeShared {
        self.snapshot_root = Some(root);
        self
    }

    /// The same with these memory limits (kvd options).
    pub fn with_memory_limits(mut self, limits: crate::budget::MemoryLimits) -> NodeShared {
        self.memory = crate::budget::MemoryBudget::new(limits);
        self
    }
}

/// Configuration of one shard's core.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// This shard's index.
    pub shard: usize,
    /// Number of shards of the node.
    pub shards: usize,
    /// When to acknowledge writes.
    pub sync: SyncPolicy,
    /// Token clients must present in HELLO; `None` lets clients skip the handshake.
    pub client_token: Option<Vec<u8>>,
    /// Token a HELLO presents to be allowed the admin opcodes (`kvd --admin-token`); `None`
    /// allows them from loopback only (see [`ShardCore::admin_refusal`]).
    pub admin_token: Option<Vec<u8>>,
}

/// What the driver should do with the connection after a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Keep reading.
    Continue,
    /// The reply comes later as a record (the request went to another shard, or its
    /// acknowledgement waits for the turn's sync).
    Deferred,
    /// Send what was written, then close.
    Close,
}

/// One shard's core.
pub struct ShardCore {
    cfg: ShardConfig,
    shared: Arc<NodeShared>,
    store: Box<dyn Store>,
    hlc: Hlc,
    outbox: Outbox,
    /// Replies to writes waiting for the next sync, per destination shard, as records.
    held: Vec<Vec<u8>>,
    /// Set when a sync failed: writes are refused from then on.
    write_error: Option<String>,
    /// Scratch buffer for replies that are records (forwarded or held).
    scratch: Vec<u8>,
    /// The cluster core, when the node runs with `--nodes` (see `shard/cluster.rs`).
    cluster: Option<Box<cluster::ShardCluster>>,
    /// Disk-pressure and COMPACT state (see [`Compacting`]).
    compacting: Compacting,
    /// SNAPSHOT state (see [`snapshot::Snapshots`]).
    snapshots: snapshot::Snapshots,
    /// The durable bound on the versions this shard lets out, covered at the end of every
    /// turn before anything of the turn leaves (`storage/ceiling.rs`).
    ceiling: Box<dyn DurableClock>,
    /// The coordinator's outcomes, kept for the simulator's checkers when enabled
    /// ([`ShardCore::keep_outcomes`]); `None` in `kvd`.
    outcomes: Option<Vec<(ConnId, u32, Outcome)>>,
}

/// The shard cannot go on: its clock ceiling could not be made durable, so a restart could
/// reissue versions this turn is about to let out. Nothing of the turn has left the node; the
/// driver must stop the node (`kvd` aborts, the simulator crashes it).
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ShardCore {
    /// A core over `store`, bounding its versions with `ceiling`. The clock starts above the
    /// highest version the store holds and above the ceiling. Nodes are built with
    /// [`crate::assembly::assemble_node`], which calls this.
    pub fn new(
        cfg: ShardConfig,
        shared: Arc<NodeShared>,
        store: Box<dyn Store>,
        ceiling: Box<dyn DurableClock>,
    ) -> ShardCore {
        assert!(cfg.shard < cfg.shards && cfg.shards == shared.shards);
        let mut hlc = Hlc::new(shared.node_id);
        hlc.recover(store.highest_version());
        hlc.recover_above_ms(ceiling.ceiling_ms());
        ShardCore {
            ceiling,
            outcomes: None,
            outbox: Outbox::new(cfg.shards),
            held: vec![Vec::new(); cfg.shards],
            cfg,
            shared,
            store,
            hlc,
            write_error: None,
            scratch: Vec::new(),
            cluster: None,
            compacting: Compacting::default(),
            snapshots: snapshot::Snapshots::default(),
        }
    }

    fn counters(&self) -> &ShardCounters {
        &self.shared.counters[self.cfg.shard]
    }

    fn count_reply(&self, status: Status) {
        self.counters().replies_by_status[status as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A hint that requests for `keys` come next (bit i of `reads`: key i's value is read;
    /// of `writes`: key i is written): the store, and in a cluster the anti-entropy trees,
    /// start loading what they will touch (`storage/prefetch.rs`). Changes nothing
    /// observable.
    pub fn prefetch(&self, keys: &[&[u8]], reads: u32, writes: u32) {
        self.store.prefetch(keys, reads);
        if let Some(c) = &self.cluster {
            c.node.anti_entropy().index().prefetch(keys, writes);
        }
    }

    /// Handle a frame that arrived on connection `conn` of this shard. Immediate replies are
    /// appended to `wbuf` (the connection's write buffer).
    pub fn on_frame(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        session: &mut Session,
        f: FrameRef<'_>,
        wbuf: &mut Vec<u8>,
    ) -> After {
        let req = match Request::decode(&f) {
            Ok(r) => r,
            Err(e) => return self.reject(&f, &e, wbuf),
        };
        let opc = req.op();
        self.counters().requests_by_op[opc as usize].fetch_add(1, Ordering::Relaxed);

        // Between a peer HELLO and its PEER_AUTH nothing else is accepted.
        if session.challenge.is_some() && !matches!(req, Request::PeerAuth { .. }) {
            session.challenge = None;
            self.count_reply(Status::Unauthorized);
            put_error(
                wbuf,
                opc,
                f.id,
                Status::Unauthorized,
                "a peer HELLO must be followed by PEER_AUTH",
            );
            return After::Close;
        }
        // Before a handshake, a client may skip HELLO only when no client token is set.
        if session.role.is_none()
            && !matches!(req, Request::Hello { .. } | Request::PeerAuth { .. })
        {
            if self.cfg.client_token.is_some() || matches!(req, Request::Peer { .. }) {
                self.count_reply(Status::Unauthorized);
                put_error(
                    wbuf,
                    opc,
                    f.id,
                    Status::Unauthorized,
                    "HELLO with a valid token is required first",
                );
                return After::Continue;
            }
            session.role = Some(Role::Client);
        }
        if req.is_admin() {
            if let Some(why) = self.admin_refusal(session) {
                self.count_reply(Status::Unauthorized);
                put_error(wbuf, opc, f.id, Status::Unauthorized, why);
                return After::Continue;
            }
        }

        match req {
            Request::Hello {
                version,
                role,
                node_id,
                token,
            } => self.hello(now_ms, f.id, session, version, role, node_id, token, wbuf),
            Request::PeerAuth { proof } => self.peer_auth(now_ms, f.id, session, proof, wbuf),
            Request::Ping => {
                self.count_reply(Status::Ok);
                put_ok(wbuf, op::PING, f.id, &[]);
                After::Continue
            }
            Request::Stats => {
                let text = self.stats_text(now_ms);
                self.count_reply(Status::Ok);
                put_ok(wbuf, op::STATS, f.id, &[text.as_bytes()]);
                After::Continue
            }
            Request::Cluster => {
                let text = self.cluster_view().unwrap_or_else(|| {
                    format!("{} 127.0.0.1 alive 0 leader\n", self.shared.node_id)
                });
                self.count_reply(Status::Ok);
                put_ok(wbuf, op::CLUSTER, f.id, &[text.as_bytes()]);
                After::Continue
            }
            Request::AntiEntropy => {
                // Every shard starts a round at its next cluster tick (a single node has
                // nothing to exchange).
                self.shared
                    .anti_entropy_requests
                    .fetch_add(1, Ordering::Relaxed);
                self.count_reply(Status::Ok);
                put_ok(wbuf, opc, f.id, &[]);
                After::Continue
            }
            Request::Compact => self.compact_request(now_ms, conn, f.id, wbuf),
            Request::ClusterAdmin { command } => {
                self.cluster_admin_frame(now_ms, conn, &f, command, wbuf)
            }
            Request::Snapshot { command } => {
                self.snapshot_request(now_ms, conn, f.id, command, wbuf)
            }
            Request::Ring => {
                match self.ring_map() {
                    Ok(map) => {
                        self.count_reply(Status::Ok);
                        let mut body = Vec::new();
                        map.encode(&mut body);
                        put_ok(wbuf, op::RING, f.id, &[&body]);
                    }
                    Err(e) => {
                        self.count_reply(Status::Internal);
                        put_error(wbuf, op::RING, f.id, Status::Internal, &e.to_string());
                    }
                }
                After::Continue
            }
            Request::Peer { .. } if session.role == Some(Role::Peer) => {
                let from = session.peer_id.unwrap_or(0);
                self.peer_frame(now_ms, conn, from, &f, wbuf)
            }
            Request::Peer { .. } => {
                self.count_reply(Status::Unauthorized);
                put_error(
                    wbuf,
                    opc,
                    f.id,
                    Status::Unauthorized,
                    "peer opcodes need a peer session",
                );
                After::Continue
            }
            Request::Get { key, .. }
            | Request::Put { key, .. }
            | Request::Delete { key, .. }
            | Request::CausalGet { key, .. }
            | Request::CausalPut { key, .. }
            | Request::CausalDelete { key, .. }
            | Request::LocalGet { key } => {
                if !matches!(req, Request::LocalGet { .. }) {
                    self.count_key_routing(key);
                }
                let owner = shard_of(key, self.cfg.shards);
                if owner != self.cfg.shard {
                    let records = &mut self.outbox.requests[owner];
                    records.extend_from_slice(&conn.0.to_be_bytes());
                    frame::put_frame(records, f.op, f.aux, f.id, &[f.body]);
                    self.counters()
                        .forwarded_out
                        .fetch_add(1, Ordering::Relaxed);
                    return After::Deferred;
                }
                if self.cluster_client(now_ms, self.cfg.shard, conn, &req, f.id) {
                    return After::Deferred;
                }
                let mark = wbuf.len();
                if self.execute(now_ms, &req, f.id, wbuf) {
                    // The reply waits for the turn's sync: move it from the write buffer into
                    // the held records of this shard.
                    let held = &mut self.held[self.cfg.shard];
                    held.extend_from_slice(&conn.0.to_be_bytes());
                    held.extend_from_slice(&wbuf[mark..]);
                    wbuf.truncate(mark);
                    return After::Deferred;
                }
                After::Continue
            }
        }
    }

    /// Take the batches for other shards and the late replies for this shard's connections.
    pub fn take_outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// The shard's store (for the driver's shutdown sync and for tests).
    pub fn store_mut(&mut self) -> &mut dyn Store {
        self.store.as_mut()
    }

    /// The shard's store, to look at (the simulator's checkers read replicas through it).
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Why this shard refuses every write until the node restarts (a failed sync, its own or
    /// inside the store), if it does.
    pub fn writes_refused(&self) -> Option<&str> {
        self.write_error
            .as_deref()
            .or_else(|| self.store.writes_refused())
    }

    /// Keep every outcome the coordinator decides, with its connection and request id, for
    /// [`ShardCore::take_outcomes`]. The simulator's checkers need what the wire reply does not
    /// carry (re-issues, expiry); the reply itself still travels as in `kvd`.
    pub fn keep_outcomes(&mut self) {
        self.outcomes = Some(Vec::new());
    }

    /// The outcomes kept since the last call (see [`ShardCore::keep_outcomes`]).
    pub fn take_outcomes(&mut self) -> Vec<(ConnId, u32, Outcome)> {
        self.outcomes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Restart the version clock above the durable ceiling too (after the cluster core took
    /// over the clock: its clock is the one that issues versions).
    pub(crate) fn recover_ceiling(&mut self) {
        let ms = self.ceiling.ceiling_ms();
        self.clock_mut().recover_above_ms(ms);
    }

    fn reject(&mut self, f: &FrameRef<'_>, e: &RequestError, wbuf: &mut Vec<u8>) -> After {
        let status = e.status();
        self.count_reply(status);
        // Answer with the request's own opcode when it is a request opcode, so the client can
        // tell which request failed; a response opcode sent as a request is answered on 0x80.
        let opc = if f.op & RESPONSE_BIT == 0 { f.op } else { 0 };
        put_error(wbuf, opc, f.id, status, &e.to_string());
        if status.closes_connection() {
            After::Close
        } else {
            After::Continue
        }
    }

    /// Reply to bytes that are not a frame at all; the driver closes the connection after.
    pub fn reject_stream(&mut self, e: FrameError, wbuf: &mut Vec<u8>) {
        let status = match e {
            FrameError::TooLarge { .. } => Status::FrameTooLarge,
            FrameError::TooShort { .. } => Status::Malformed,
        };
        self.count_reply(status);
        put_connection_error(wbuf, status, &e.to_string());
    }
}
