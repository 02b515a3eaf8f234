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
//! 4. [`ShardCore::finish_turn`]: syncs the store if the policy asks (group commit: one fsync
//!    for every write of the turn) and releases the replies that waited for it.
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

mod cluster;
mod handshake;

pub use cluster::{ClusterView, ReplyTo};

use crate::hash::shard_of;
use crate::limits::{
    COMPACT_PENDING_MAX, COMPACT_REPLY_WAIT_MS_MAX, KEY_SIZE_MAX, TEXT_REPLY_SIZE_MAX,
    WRITES_REFUSED_LOG_INTERVAL_MS,
};
use crate::protocol::message::{put_connection_error, put_error, put_ok, put_reply};
use crate::protocol::{
    frame, op, FrameError, FrameRef, Request, RequestError, Role, Status, RESPONSE_BIT,
};
use crate::storage::{Applied, Store, StoreError, Write};
use crate::version::{Hlc, Version};
use byteorder::{BigEndian, ByteOrder};
use std::fmt::Write as _;
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

/// Per-shard counters, written only by their shard and read by any shard answering STATS.
pub struct ShardCounters {
    /// Server-side request latency in µs: from the event-loop turn that read the request to
    /// the turn that queued its reply on the connection.
    pub latency_us: crate::histogram::Histogram,
    /// Requests by opcode (index = opcode, 0..128).
    pub requests_by_op: [AtomicU64; 128],
    /// Replies by status code (index = code).
    pub replies_by_status: [AtomicU64; 256],
    /// Requests this shard forwarded to another shard.
    pub forwarded_out: AtomicU64,
    /// Requests this shard executed for another shard.
    pub forwarded_in: AtomicU64,
    /// Bytes read from connections.
    pub bytes_in: AtomicU64,
    /// Bytes written to connections.
    pub bytes_out: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused (over the limit).
    pub connections_refused: AtomicU64,
    /// Connections closed for not reading their replies, idling, or bad input.
    pub connections_dropped: AtomicU64,
    /// Store syncs (group commits) done.
    pub syncs: AtomicU64,
    /// Storage figures as `name value` lines, refreshed by the shard on its ticks.
    pub storage_text: Mutex<String>,
    /// Cluster counters as `name value` lines, refreshed by the shard's cluster ticks.
    pub cluster_text: Mutex<String>,
    /// The newest COMPACT generation whose forced pass this shard has finished.
    pub compact_done: AtomicU64,
    /// Compaction totals of the shard's store, published on its ticks (for COMPACT replies).
    pub compactions: AtomicU64,
    /// Bytes reclaimed by compaction so far.
    pub bytes_reclaimed: AtomicU64,
    /// Segments reclaimed by compaction so far (removed minus written).
    pub segments_reclaimed: AtomicU64,
}

impl Default for ShardCounters {
    fn default() -> Self {
        ShardCounters {
            latency_us: crate::histogram::Histogram::default(),
            requests_by_op: std::array::from_fn(|_| AtomicU64::new(0)),
            replies_by_status: std::array::from_fn(|_| AtomicU64::new(0)),
            forwarded_out: AtomicU64::new(0),
            forwarded_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_dropped: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            storage_text: Mutex::new(String::new()),
            cluster_text: Mutex::new(String::new()),
            compact_done: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            bytes_reclaimed: AtomicU64::new(0),
            segments_reclaimed: AtomicU64::new(0),
        }
    }
}

/// Selects one counter of a shard (for summing it over the shards).
type CounterField = fn(&ShardCounters) -> &AtomicU64;

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
        }
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
}

/// Mail between shards of one node.
#[derive(Debug)]
pub enum Mail {
    /// Requests from shard `from` for keys this shard owns, as records.
    Requests {
        /// The shard whose connections sent them.
        from: usize,
        /// Records: `| conn id u64 | request frame |`.
        records: Vec<u8>,
    },
    /// Replies to this shard's connections, as records.
    Replies {
        /// Records: `| conn id u64 | reply frame |`.
        records: Vec<u8>,
    },
}

/// What the core hands the driver at the end of a turn.
#[derive(Default, Debug)]
pub struct Outbox {
    /// Request records per destination shard (index = shard).
    pub requests: Vec<Vec<u8>>,
    /// Reply records per destination shard; the entry of this shard itself holds replies for
    /// its own connections that were released late (after a sync).
    pub replies: Vec<Vec<u8>>,
    /// Peer frames to send, as (node id, whole frame), in order (cluster mode only).
    pub peer: Vec<(u32, Vec<u8>)>,
}

impl Outbox {
    fn new(shards: usize) -> Outbox {
        Outbox {
            requests: vec![Vec::new(); shards],
            replies: vec![Vec::new(); shards],
            peer: Vec::new(),
        }
    }

    /// Whether there is nothing to deliver.
    pub fn is_empty(&self) -> bool {
        self.requests.iter().all(Vec::is_empty)
            && self.replies.iter().all(Vec::is_empty)
            && self.peer.is_empty()
    }
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
}

/// A COMPACT request waiting for every shard's forced pass.
#[derive(Debug)]
struct PendingCompact {
    conn: ConnId,
    id: u32,
    /// The generation it asked for.
    generation: u64,
    since_ms: u64,
    /// Node totals (compactions, bytes, segments) when it arrived.
    base: [u64; 3],
}

/// A shard's part in COMPACT requests and in reporting refused writes.
#[derive(Debug, Default)]
struct Compacting {
    /// The newest COMPACT generation this shard has started a pass for.
    seen: u64,
    /// The generation of the pass under way here, if any.
    running: Option<u64>,
    /// COMPACT requests received by this shard, answered once every shard is done.
    pending: Vec<PendingCompact>,
    /// Writes refused by the shard itself (after a failed sync), besides the store's.
    refused_here: u64,
    /// Refused writes (store's and shard's) already reported in the log.
    refused_logged: u64,
    /// No refusal line is logged before this time.
    refused_log_at_ms: u64,
}

impl ShardCore {
    /// A core over `store`. The clock starts above the highest version the store holds.
    pub fn new(cfg: ShardConfig, shared: Arc<NodeShared>, store: Box<dyn Store>) -> ShardCore {
        assert!(cfg.shard < cfg.shards && cfg.shards == shared.shards);
        let mut hlc = Hlc::new(shared.node_id);
        hlc.recover(store.highest_version());
        ShardCore {
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
        }
    }

    fn counters(&self) -> &ShardCounters {
        &self.shared.counters[self.cfg.shard]
    }

    fn count_reply(&self, status: Status) {
        self.counters().replies_by_status[status as usize].fetch_add(1, Ordering::Relaxed);
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
            | Request::LocalGet { key } => {
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

    /// Handle mail from another shard.
    pub fn on_mail(&mut self, now_ms: u64, mail: Mail, own_replies: &mut Vec<u8>) {
        match mail {
            Mail::Requests { from, records } => {
                let mut at = 0;
                while at < records.len() {
                    let conn = ConnId(BigEndian::read_u64(&records[at..at + 8]));
                    at += 8;
                    // Records are written by `on_frame` of a shard of this process from frames
                    // that already parsed: a failure here is a bug, not bad input.
                    let (f, n) = frame::parse(&records[at..])
                        .expect("forwarded record is a whole frame")
                        .expect("forwarded record is complete");
                    at += n;
                    self.counters().forwarded_in.fetch_add(1, Ordering::Relaxed);
                    let mut reply = std::mem::take(&mut self.scratch);
                    reply.clear();
                    let held = match Request::decode(&f) {
                        Ok(req) => {
                            match self.cluster_mail(now_ms, from, conn, &req, &f, &mut reply) {
                                Some(Some(held)) => held,
                                Some(None) => {
                                    // Coordinated: the reply comes later as a record.
                                    self.scratch = reply;
                                    continue;
                                }
                                None => self.execute(now_ms, &req, f.id, &mut reply),
                            }
                        }
                        Err(e) => {
                            // The origin shard decoded this frame already; answer anyway.
                            self.reject(&f, &e, &mut reply);
                            false
                        }
                    };
                    let dest = if held {
                        &mut self.held[from]
                    } else {
                        &mut self.outbox.replies[from]
                    };
                    dest.extend_from_slice(&conn.0.to_be_bytes());
                    dest.extend_from_slice(&reply);
                    self.scratch = reply;
                }
            }
            Mail::Replies { records } => own_replies.extend_from_slice(&records),
        }
    }

    /// Periodic work: background store maintenance in a bounded step (a forced pass when a
    /// COMPACT asked for one), the refresh of the storage figures shown by STATS, the
    /// rate-limited report of refused writes, and the answers to COMPACT requests whose pass
    /// every shard has finished. Returns true when the store is short of disk space (or in a
    /// forced pass) and has maintenance work left: the driver then ticks again sooner.
    pub fn on_tick(&mut self, now_ms: u64, maintenance_budget: usize) -> bool {
        let generation = self.shared.compact_requests.load(Ordering::Acquire);
        if generation > self.compacting.seen {
            self.compacting.seen = generation;
            self.compacting.running = Some(generation);
            self.store.force_compaction();
        }
        let more = match self.store.maintenance(now_ms, maintenance_budget) {
            Ok(more) => more,
            Err(e) => {
                log::error!("shard {}: store maintenance failed: {e}", self.cfg.shard);
                false
            }
        };
        let mut text = String::new();
        let mut totals = [0u64; 3];
        let mut refused = self.compacting.refused_here;
        self.store.stats(&mut |name, value| {
            let value = match name {
                "storage_writes_refused" => {
                    refused += value;
                    refused
                }
                "storage_compactions" => {
                    totals[0] = value;
                    value
                }
                "storage_bytes_reclaimed" => {
                    totals[1] = value;
                    value
                }
                "storage_segments_reclaimed" => {
                    totals[2] = value;
                    value
                }
                _ => value,
            };
            let _ = writeln!(text, "{name} {value}");
        });
        let c = self.counters();
        if let Ok(mut slot) = c.storage_text.lock() {
            *slot = text;
        }
        c.compactions.store(totals[0], Ordering::Relaxed);
        c.bytes_reclaimed.store(totals[1], Ordering::Relaxed);
        c.segments_reclaimed.store(totals[2], Ordering::Relaxed);
        if let Some(g) = self.compacting.running {
            if !self.store.forcing() {
                // Published after the totals, so that a reader seeing `done` sees them too.
                c.compact_done.store(g, Ordering::Release);
                self.compacting.running = None;
            }
        }
        self.log_refusals(now_ms, refused);
        self.answer_compacts(now_ms);
        more && (self.store.disk_pressure() || self.store.forcing())
    }

    /// Log refused writes: at most one line per [`WRITES_REFUSED_LOG_INTERVAL_MS`], with the
    /// count since the last line and the latest reason (a client hammering a full disk must
    /// not flood the log, and an operator must see that writes are being refused).
    fn log_refusals(&mut self, now_ms: u64, refused: u64) {
        let k = &mut self.compacting;
        if refused <= k.refused_logged || now_ms < k.refused_log_at_ms {
            return;
        }
        let why = self
            .store
            .last_refusal()
            .map(str::to_string)
            .or_else(|| self.write_error.clone())
            .unwrap_or_default();
        log::warn!(
            "shard {}: refused {} writes since the last report ({refused} in all): {why}",
            self.cfg.shard,
            refused - self.compacting.refused_logged,
        );
        self.compacting.refused_logged = refused;
        self.compacting.refused_log_at_ms = now_ms + WRITES_REFUSED_LOG_INTERVAL_MS;
    }

    /// The node's compaction totals, as the shards last published them.
    fn compaction_totals(&self) -> [u64; 3] {
        let mut t = [0u64; 3];
        for c in &self.shared.counters {
            t[0] += c.compactions.load(Ordering::Relaxed);
            t[1] += c.bytes_reclaimed.load(Ordering::Relaxed);
            t[2] += c.segments_reclaimed.load(Ordering::Relaxed);
        }
        t
    }

    /// COMPACT: ask every shard for a forced pass (at their next tick) and answer once they
    /// have all finished it, with what the node reclaimed meanwhile.
    fn compact_request(&mut self, now_ms: u64, conn: ConnId, id: u32, wbuf: &mut Vec<u8>) -> After {
        if self.compacting.pending.len() >= COMPACT_PENDING_MAX {
            self.count_reply(Status::Overloaded);
            put_error(
                wbuf,
                op::COMPACT,
                id,
                Status::Overloaded,
                "too many COMPACT requests waiting; retry when they are answered",
            );
            return After::Continue;
        }
        let generation = self.shared.compact_requests.fetch_add(1, Ordering::AcqRel) + 1;
        let base = self.compaction_totals();
        self.compacting.pending.push(PendingCompact {
            conn,
            id,
            generation,
            since_ms: now_ms,
            base,
        });
        After::Deferred
    }

    /// Answer the COMPACT requests whose pass every shard has finished (or that waited
    /// [`COMPACT_REPLY_WAIT_MS_MAX`]).
    fn answer_compacts(&mut self, now_ms: u64) {
        if self.compacting.pending.is_empty() {
            return;
        }
        let done = self
            .shared
            .counters
            .iter()
            .map(|c| c.compact_done.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        let totals = self.compaction_totals();
        let pending = std::mem::take(&mut self.compacting.pending);
        for p in pending {
            let complete = done >= p.generation;
            if !complete && now_ms < p.since_ms + COMPACT_REPLY_WAIT_MS_MAX {
                self.compacting.pending.push(p);
                continue;
            }
            let text = format!(
                "compactions {}\nbytes_reclaimed {}\nsegments_reclaimed {}\ncomplete {}\n",
                totals[0].saturating_sub(p.base[0]),
                totals[1].saturating_sub(p.base[1]),
                totals[2].saturating_sub(p.base[2]),
                complete as u8
            );
            self.count_reply(Status::Ok);
            let dest = &mut self.outbox.replies[self.cfg.shard];
            dest.extend_from_slice(&p.conn.0.to_be_bytes());
            put_ok(dest, op::COMPACT, p.id, &[text.as_bytes()]);
        }
    }

    /// Whether a sync is due at the end of this turn under the `always` policy.
    pub fn wants_sync_now(&self) -> bool {
        self.cfg.sync == SyncPolicy::Always && self.store.needs_sync()
    }

    /// Sync the store now (the driver calls this on its interval timer, or via
    /// [`ShardCore::finish_turn`]).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if !self.store.needs_sync() {
            return Ok(());
        }
        self.counters().syncs.fetch_add(1, Ordering::Relaxed);
        let r = self.store.sync();
        if let Err(e) = &r {
            log::error!(
                "shard {}: sync failed, refusing writes from now on: {e}",
                self.cfg.shard
            );
            self.write_error = Some(e.to_string());
        }
        r
    }

    /// End of a turn: group commit under the `always` policy, then release the held replies
    /// (or turn them into STORAGE_ERROR if the sync failed).
    pub fn finish_turn(&mut self) {
        let synced = if self.wants_sync_now() {
            self.sync().is_ok()
        } else {
            self.write_error.is_none()
        };
        for dest in 0..self.cfg.shards {
            if self.held[dest].is_empty() {
                continue;
            }
            let held = std::mem::take(&mut self.held[dest]);
            if synced {
                self.outbox.replies[dest].extend_from_slice(&held);
            } else {
                let why = self.write_error.clone().unwrap_or_default();
                rewrite_as_errors(&held, &mut self.outbox.replies[dest], &why);
            }
            self.held[dest] = held;
            self.held[dest].clear();
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

    /// Execute a keyed request on this shard's store, appending the reply to `out`. Returns
    /// true when the reply must wait for the next sync (a write under the `always` policy).
    fn execute(&mut self, now_ms: u64, req: &Request<'_>, id: u32, out: &mut Vec<u8>) -> bool {
        debug_assert!(req.key().is_some_and(|k| k.len() <= KEY_SIZE_MAX));
        match *req {
            Request::Get { key, .. } => match self.store.get(key) {
                Ok(Some(s)) if s.is_live(now_ms) => {
                    let value = s.value.as_deref().unwrap_or_default();
                    self.count_reply(Status::Ok);
                    put_ok(out, op::GET, id, &[&s.version.0.to_be_bytes(), value]);
                    false
                }
                Ok(_) => {
                    self.count_reply(Status::NotFound);
                    put_reply(out, op::GET, Status::NotFound, id, &[]);
                    false
                }
                Err(e) => self.store_failure(op::GET, id, &e, out),
            },
            Request::LocalGet { .. } if !self.cluster_serving_reads() => {
                // Anti-entropy: this node may hold keys whose tombstones were collected
                // elsewhere until its first full round after a long absence.
                self.count_reply(Status::Unavailable);
                put_error(
                    out,
                    op::LOCAL_GET,
                    id,
                    Status::Unavailable,
                    "not serving reads: rejoining through anti-entropy",
                );
                false
            }
            Request::LocalGet { key } => match self.store.get(key) {
                Ok(Some(s)) if s.is_live(now_ms) => {
                    let value = s.value.as_deref().unwrap_or_default();
                    self.count_reply(Status::Ok);
                    put_ok(
                        out,
                        op::LOCAL_GET,
                        id,
                        &[
                            &s.version.0.to_be_bytes(),
                            &s.expires_at_ms.to_be_bytes(),
                            value,
                        ],
                    );
                    false
                }
                Ok(Some(s)) if s.value.is_none() => {
                    self.count_reply(Status::NotFound);
                    put_reply(
                        out,
                        op::LOCAL_GET,
                        Status::NotFound,
                        id,
                        &[&s.version.0.to_be_bytes()],
                    );
                    false
                }
                Ok(_) => {
                    self.count_reply(Status::NotFound);
                    put_reply(out, op::LOCAL_GET, Status::NotFound, id, &[]);
                    false
                }
                Err(e) => self.store_failure(op::LOCAL_GET, id, &e, out),
            },
            Request::Put {
                key,
                value,
                ttl_seconds,
                ..
            } => {
                let expires_at_ms = crate::storage::expiry_of_ttl(now_ms, ttl_seconds);
                self.write(now_ms, op::PUT, id, key, Some(value), expires_at_ms, out)
            }
            Request::Delete { key, .. } => self.write(now_ms, op::DELETE, id, key, None, 0, out),
            _ => unreachable!("execute is only called for keyed requests"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        now_ms: u64,
        opc: u8,
        id: u32,
        key: &[u8],
        value: Option<&[u8]>,
        expires_at_ms: u64,
        out: &mut Vec<u8>,
    ) -> bool {
        if let Some(why) = &self.write_error {
            let msg = format!("writes are refused since a failed sync: {why}");
            self.count_reply(Status::StorageError);
            self.compacting.refused_here += 1;
            put_error(out, opc, id, Status::StorageError, &msg);
            return false;
        }
        let version = self.hlc.issue(now_ms);
        let w = Write {
            key,
            value,
            version,
            expires_at_ms,
        };
        match self.store.apply(w) {
            Ok(Applied::Stored) => {
                self.count_reply(Status::Ok);
                put_ok(out, opc, id, &[&version.0.to_be_bytes()]);
                self.cfg.sync == SyncPolicy::Always
            }
            Ok(Applied::Stale { current }) => {
                // Our clock issued a version below one the store holds: the clock must have
                // been recovered wrongly. Never acknowledge a write that did not take.
                self.hlc.observe(current);
                let msg = format!("clock behind stored version {current}; retry");
                self.count_reply(Status::Internal);
                put_error(out, opc, id, Status::Internal, &msg);
                false
            }
            Err(e) => self.store_failure(opc, id, &e, out),
        }
    }

    fn store_failure(&mut self, opc: u8, id: u32, e: &StoreError, out: &mut Vec<u8>) -> bool {
        self.count_reply(Status::StorageError);
        put_error(out, opc, id, Status::StorageError, &e.to_string());
        false
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

    fn stats_text(&self, now_ms: u64) -> String {
        let sh = &self.shared;
        let mut t = String::with_capacity(4096);
        let sum = |f: &dyn Fn(&ShardCounters) -> u64| -> u64 { sh.counters.iter().map(f).sum() };
        let _ = writeln!(t, "node_id {}", sh.node_id);
        let _ = writeln!(t, "uptime_ms {}", now_ms.saturating_sub(sh.started_at_ms));
        let _ = writeln!(t, "shards {}", sh.shards);
        let _ = writeln!(t, "connections_max {}", sh.connections_max);
        let conn = |c: &ShardCounters| c.connections.load(Ordering::Relaxed);
        // Node totals: each counter summed over the shards.
        let totals: [(&str, CounterField); 7] = [
            ("connections", |c| &c.connections),
            ("connections_total", |c| &c.connections_total),
            ("connections_refused", |c| &c.connections_refused),
            ("connections_dropped", |c| &c.connections_dropped),
            ("bytes_in", |c| &c.bytes_in),
            ("bytes_out", |c| &c.bytes_out),
            ("syncs", |c| &c.syncs),
        ];
        for (name, field) in totals {
            let _ = writeln!(t, "{name} {}", sum(&|c| field(c).load(Ordering::Relaxed)));
        }
        {
            // Failed handshakes (wrong client token or cluster secret) and handshakes refused
            // unexamined while their source was paused.
            let th = sh
                .handshake_throttle
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let st = th.stats();
            let _ = writeln!(t, "handshake_failures {}", st.failures);
            let _ = writeln!(t, "handshakes_throttled {}", st.refused);
            let _ = writeln!(t, "handshake_throttle_sources {}", th.len());
        }
        for opc in 1u8..128 {
            let n = sum(&|c| c.requests_by_op[opc as usize].load(Ordering::Relaxed));
            if n > 0 {
                if (op::PEER_FIRST..=op::PEER_LAST).contains(&opc) {
                    let _ = writeln!(t, "requests_peer_0x{opc:02x} {n}");
                } else {
                    let _ = writeln!(t, "requests_{} {n}", op::name(opc).to_lowercase());
                }
            }
        }
        for status in Status::ALL {
            let n = sum(&|c| c.replies_by_status[status as usize].load(Ordering::Relaxed));
            if n > 0 {
                let _ = writeln!(t, "replies_{} {n}", status.name().to_lowercase());
            }
        }
        for (i, c) in sh.counters.iter().enumerate() {
            let reqs: u64 = c
                .requests_by_op
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .sum();
            let _ = writeln!(t, "shard_{i}_requests {reqs}");
            let _ = writeln!(
                t,
                "shard_{i}_forwarded_out {}",
                c.forwarded_out.load(Ordering::Relaxed)
            );
            let _ = writeln!(t, "shard_{i}_connections {}", conn(c));
        }
        let hs: Vec<&crate::histogram::Histogram> =
            sh.counters.iter().map(|c| &c.latency_us).collect();
        let (n, p, max) = crate::histogram::Histogram::percentiles(&hs, &[0.5, 0.9, 0.99, 0.999]);
        let _ = writeln!(t, "latency_requests {n}");
        for (name, v) in ["p50", "p90", "p99", "p999"].iter().zip(&p) {
            let _ = writeln!(t, "latency_{name}_us {v}");
        }
        let _ = writeln!(t, "latency_max_us {max}");
        sh.memory.stats_text(&mut t);
        self.cluster_view_stats(&mut t);
        // Storage (and cluster) figures summed over shards, by name.
        let mut storage: Vec<(String, u64)> = Vec::new();
        for c in &sh.counters {
            let mut text = c.storage_text.lock().map(|s| s.clone()).unwrap_or_default();
            text.push_str(&c.cluster_text.lock().map(|s| s.clone()).unwrap_or_default());
            for line in text.lines() {
                let mut it = line.splitn(2, ' ');
                let (Some(name), Some(v)) = (it.next(), it.next()) else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match storage.iter_mut().find(|(n, _)| n == name) {
                    // Names ending in _max / _min combine by max / min, the rest are summed.
                    Some(e) if name.ends_with("_max") => e.1 = e.1.max(v),
                    Some(e) if name.ends_with("_min") => e.1 = e.1.min(v),
                    Some(e) => e.1 += v,
                    None => storage.push((name.to_string(), v)),
                }
            }
        }
        for (name, v) in storage {
            let _ = writeln!(t, "{name} {v}");
        }
        if t.len() > TEXT_REPLY_SIZE_MAX {
            // Cut at a line boundary so every line kept is whole, then say so.
            let marker = "truncated 1\n";
            let end = t[..TEXT_REPLY_SIZE_MAX - marker.len()]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            t.truncate(end);
            t.push_str(marker);
        }
        t
    }
}

/// Turn held reply records into STORAGE_ERROR replies with the same opcode and id.
fn rewrite_as_errors(records: &[u8], out: &mut Vec<u8>, why: &str) {
    let msg = format!("write not acknowledged: sync failed ({why}); it may or may not be on disk");
    let mut at = 0;
    while at < records.len() {
        out.extend_from_slice(&records[at..at + 8]);
        at += 8;
        let (f, n) = frame::parse(&records[at..])
            .expect("held record is a whole frame")
            .expect("held record is complete");
        put_error(out, f.op & !RESPONSE_BIT, f.id, Status::StorageError, &msg);
        at += n;
    }
}

/// Version of a write as carried in replies (for tests).
pub fn reply_version(body: &[u8]) -> Option<Version> {
    (body.len() >= 8).then(|| Version(BigEndian::read_u64(&body[..8])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::shard_of;
    use crate::protocol::{Consistency, Response};
    use crate::storage::memory::MemoryStore;

    pub(super) const NOW: u64 = 1_700_000_000_000;

    /// A store whose sync fails, to check that failed syncs are never acknowledged.
    struct FailingSync(MemoryStore);

    impl Store for FailingSync {
        fn get(&mut self, key: &[u8]) -> Result<Option<crate::storage::Stored>, StoreError> {
            self.0.get(key)
        }
        fn version_of(&self, key: &[u8]) -> Option<Version> {
            self.0.version_of(key)
        }
        fn apply(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
            self.0.apply(w)
        }
        fn needs_sync(&self) -> bool {
            self.0.needs_sync()
        }
        fn sync(&mut self) -> Result<(), StoreError> {
            Err(StoreError::WritesRefused("fsync: EIO".into()))
        }
        fn maintenance(&mut self, now_ms: u64, budget: usize) -> Result<bool, StoreError> {
            self.0.maintenance(now_ms, budget)
        }
        fn len(&self) -> usize {
            self.0.len()
        }
        fn highest_version(&self) -> Version {
            self.0.highest_version()
        }
        fn stats(&self, report: &mut dyn FnMut(&str, u64)) {
            self.0.stats(report)
        }
    }

    fn cores(shards: usize, sync: SyncPolicy, failing: bool) -> Vec<ShardCore> {
        let shared = Arc::new(NodeShared::new(1, shards, NOW, 100));
        (0..shards)
            .map(|shard| {
                let store: Box<dyn Store> = if failing {
                    Box::new(FailingSync(MemoryStore::new()))
                } else {
                    Box::new(MemoryStore::new())
                };
                ShardCore::new(
                    ShardConfig {
                        shard,
                        shards,
                        sync,
                        client_token: None,
                    },
                    shared.clone(),
                    store,
                )
            })
            .collect()
    }

    /// A tiny in-memory driver: feeds a request to shard `at`, runs turns until the reply for
    /// connection `conn` comes back, and returns the reply frames addressed to it.
    fn roundtrip(cores: &mut [ShardCore], at: usize, req: Request<'_>, id: u32) -> Vec<u8> {
        let conn = ConnId::new(7, 1);
        let mut session = Session::default();
        let mut bytes = Vec::new();
        req.encode(id, &mut bytes);
        let (f, _) = frame::parse(&bytes).unwrap().unwrap();
        let mut wbuf = Vec::new();
        cores[at].on_frame(NOW, conn, &mut session, f, &mut wbuf);
        let mut own = Vec::new();
        // Bounded: a request crosses at most two mailboxes.
        for _ in 0..4 {
            let mut mail: Vec<(usize, Mail)> = Vec::new();
            for (i, core) in cores.iter_mut().enumerate() {
                core.finish_turn();
                let out = core.take_outbox();
                for dest in 0..out.requests.len() {
                    let records = std::mem::take(&mut out.requests[dest]);
                    if !records.is_empty() {
                        mail.push((dest, Mail::Requests { from: i, records }));
                    }
                    let records = std::mem::take(&mut out.replies[dest]);
                    if !records.is_empty() {
                        if dest == at {
                            own.extend_from_slice(&records);
                        } else {
                            mail.push((dest, Mail::Replies { records }));
                        }
                    }
                }
            }
            for (dest, m) in mail {
                cores[dest].on_mail(NOW, m, &mut own);
            }
        }
        // Own records carry the conn id first.
        let mut at_byte = 0;
        while at_byte < own.len() {
            assert_eq!(&own[at_byte..at_byte + 8], &conn.0.to_be_bytes());
            at_byte += 8;
            let (_, n) = frame::parse(&own[at_byte..]).unwrap().unwrap();
            wbuf.extend_from_slice(&own[at_byte..at_byte + n]);
            at_byte += n;
        }
        wbuf
    }

    pub(super) fn reply(bytes: &[u8]) -> (u8, Status, u32, Vec<u8>) {
        let (f, n) = frame::parse(bytes).unwrap().expect("a whole reply");
        assert_eq!(n, bytes.len(), "exactly one reply");
        let r = Response::from_frame(&f).unwrap();
        (r.op, r.status().unwrap(), r.id, r.body.to_vec())
    }

    #[test]
    fn put_get_delete_through_any_shard() {
        let mut cs = cores(3, SyncPolicy::Never, false);
        let key = b"some key";
        let owner = shard_of(key, 3);
        let other = (owner + 1) % 3;
        for at in [owner, other] {
            let put = Request::Put {
                key,
                value: b"v",
                ttl_seconds: 0,
                consistency: Consistency::Default,
            };
            let (o, st, id, body) = reply(&roundtrip(&mut cs, at, put, 11));
            assert_eq!((o, st, id, body.len()), (op::PUT, Status::Ok, 11, 8));
            let get = Request::Get {
                key,
                consistency: Consistency::One,
            };
            let (_, st, id, body) = reply(&roundtrip(&mut cs, at, get, 12));
            assert_eq!((st, id, &body[8..]), (Status::Ok, 12, &b"v"[..]));
            let del = Request::Delete {
                key,
                consistency: Consistency::All,
            };
            assert_eq!(reply(&roundtrip(&mut cs, at, del, 13)).1, Status::Ok);
            let lget = Request::LocalGet { key };
            let (_, st, _, body) = reply(&roundtrip(&mut cs, at, lget, 14));
            assert_eq!((st, body.len()), (Status::NotFound, 8), "tombstone version");
        }
        // Only the owner holds the key.
        for (i, c) in cs.iter_mut().enumerate() {
            assert_eq!(c.store_mut().len(), usize::from(i == owner));
        }
    }

    #[test]
    fn always_policy_holds_acks_until_the_sync() {
        let mut cs = cores(1, SyncPolicy::Always, false);
        let conn = ConnId::new(0, 1);
        let mut session = Session::default();
        let mut bytes = Vec::new();
        Request::Put {
            key: b"k",
            value: b"v",
            ttl_seconds: 0,
            consistency: Consistency::Default,
        }
        .encode(1, &mut bytes);
        let (f, _) = frame::parse(&bytes).unwrap().unwrap();
        let mut wbuf = Vec::new();
        cs[0].on_frame(NOW, conn, &mut session, f, &mut wbuf);
        assert!(wbuf.is_empty(), "no ack before the sync");
        assert!(cs[0].wants_sync_now());
        cs[0].finish_turn();
        assert!(!cs[0].wants_sync_now());
        let records = std::mem::take(&mut cs[0].take_outbox().replies[0]);
        let (_, st, id, _) = reply(&records[8..]);
        assert_eq!((st, id), (Status::Ok, 1));
    }

    #[test]
    fn a_failed_sync_is_never_acknowledged() {
        let mut cs = cores(1, SyncPolicy::Always, true);
        let put = Request::Put {
            key: b"k",
            value: b"v",
            ttl_seconds: 0,
            consistency: Consistency::Default,
        };
        let (_, st, _, msg) = reply(&roundtrip(&mut cs, 0, put, 1));
        assert_eq!(st, Status::StorageError);
        assert!(String::from_utf8_lossy(&msg).contains("sync failed"));
        // Later writes are refused outright; reads still work.
        let (_, st, _, _) = reply(&roundtrip(&mut cs, 0, put, 2));
        assert_eq!(st, Status::StorageError);
        let get = Request::Get {
            key: b"k",
            consistency: Consistency::Default,
        };
        assert_eq!(reply(&roundtrip(&mut cs, 0, get, 3)).1, Status::Ok);
    }

    fn stats_of(core: &ShardCore) -> String {
        core.stats_text(NOW)
    }

    fn stat(text: &str, name: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn compact_waits_for_every_shard_and_answers_what_was_reclaimed() {
        let mut cs = cores(2, SyncPolicy::Never, false);
        let conn = ConnId::new(3, 1);
        let mut session = Session::default();
        let mut bytes = Vec::new();
        Request::Compact.encode(9, &mut bytes);
        let (f, _) = frame::parse(&bytes).unwrap().unwrap();
        let mut wbuf = Vec::new();
        let after = cs[0].on_frame(NOW, conn, &mut session, f, &mut wbuf);
        assert_eq!(after, After::Deferred);
        assert!(wbuf.is_empty(), "no answer before the pass ran");
        // Shard 0 ticks first: shard 1 has not run its pass yet, so no answer.
        cs[0].on_tick(NOW, 16);
        assert!(cs[0].take_outbox().replies[0].is_empty());
        cs[1].on_tick(NOW, 16);
        cs[0].on_tick(NOW + 100, 16);
        let records = std::mem::take(&mut cs[0].take_outbox().replies[0]);
        assert_eq!(&records[..8], &conn.0.to_be_bytes());
        let (o, st, id, body) = reply(&records[8..]);
        assert_eq!((o, st, id), (op::COMPACT, Status::Ok, 9));
        let text = String::from_utf8(body).unwrap();
        assert_eq!(stat(&text, "complete"), Some(1), "{text}");
        assert_eq!(stat(&text, "bytes_reclaimed"), Some(0), "{text}");
    }

    #[test]
    fn refused_writes_are_counted_on_a_single_node() {
        use crate::storage::logstore::{LogConfig, LogStore};
        use crate::storage::vfs::MemVfs;
        // A disk with no room beyond the store's reserve: every write is refused.
        let vfs = MemVfs::new();
        vfs.set_capacity(Some(1024 * 1024));
        let (store, _) =
            LogStore::open(vfs, std::path::Path::new("/s"), LogConfig::default()).unwrap();
        let shared = Arc::new(NodeShared::new(1, 1, NOW, 100));
        let cfg = ShardConfig {
            shard: 0,
            shards: 1,
            sync: SyncPolicy::Never,
            client_token: None,
        };
        let mut cs = vec![ShardCore::new(cfg, shared, Box::new(store))];
        for i in 0..3 {
            let put = Request::Put {
                key: b"k",
                value: b"v",
                ttl_seconds: 0,
                consistency: Consistency::Default,
            };
            let (_, st, _, body) = reply(&roundtrip(&mut cs, 0, put, 20 + i));
            assert_eq!(st, Status::StorageError);
            let msg = String::from_utf8_lossy(&body[2..]).to_string();
            assert!(msg.contains("disk full"), "{msg}");
        }
        cs[0].on_tick(NOW, 16);
        let text = stats_of(&cs[0]);
        assert_eq!(stat(&text, "storage_writes_refused"), Some(3), "{text}");
        assert_eq!(stat(&text, "replies_storage_error"), Some(3), "{text}");
    }
}
