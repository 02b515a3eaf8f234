//! One shard's event loop: a `mio::Poll` over its `SO_REUSEPORT` listener, its connections (a
//! `Slab`) and its mailbox waker. It reads bytes, cuts frames, hands them to the shard core,
//! and moves the bytes the core produces: to connection write buffers, or to other shards'
//! mailboxes. It decides nothing about requests.
//!
//! Bounds enforced here: connections per shard, read buffer (one largest frame plus a chunk),
//! write buffer (backpressure at the high-water mark, disconnection past the maximum), requests
//! in flight per connection, reads per readiness event, accepts per turn, idle time.
//!
//! The memory budget (`crate::budget`) is charged here: every connection's buffers count
//! against the node-wide limit, and its unsent replies plus the reservations of its replies to
//! come (forwarded, held for a sync, coordinated) against the per-connection limit. Past the
//! connection limit a connection is not decoded until its replies drain; past the node limit
//! read buffers do not grow beyond a chunk (waiting connections are retried each turn, since
//! edge-triggered readiness would not report their bytes again) and the connections holding
//! the most unread replies are dropped. A frame must arrive whole within the frame timeout.

use super::conn::{process_frames, Conn};
use super::mailbox::{Full, Mailbox};
use super::peers::PeerLinks;
use super::readbuf::ReadBuf;
use super::system;
use crate::limits::{
    COORDINATOR_OPS_HIGH_WATER, COORDINATOR_OPS_LOW_WATER, POLLS_PER_TURN_MAX, POLL_EVENTS_MAX,
    POLL_TIMEOUT_MS_MAX, READ_BYTES_PER_TURN_MAX, READ_CHUNK_SIZE, REQUESTS_PER_READ_EVENT_MAX,
    SCRATCH_IDLE_CAPACITY_MAX, SHUTDOWN_FLUSH_MS_MAX, TRIM_AFTER_FREED_BYTES,
    WRITE_BUFFER_HIGH_WATER, WRITE_BUFFER_IDLE_CAPACITY_MAX, WRITE_BUFFER_SIZE_MAX,
};
use crate::protocol::message::{put_connection_error, put_error};
use crate::protocol::{frame, Status, RESPONSE_BIT};
use crate::shard::{ConnId, Mail, NodeShared, Session, ShardCore, SyncPolicy};
use byteorder::{BigEndian, ByteOrder};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the mailbox waker.
pub const WAKER: Token = Token(usize::MAX - 2);

/// Connections accepted per turn before the loop serves the others.
const ACCEPTS_PER_TURN_MAX: usize = 256;
/// Read calls per connection per readiness event (each up to READ_CHUNK_SIZE bytes).
const READS_PER_EVENT_MAX: usize = 16;
/// Units of store maintenance per [`crate::limits::MAINTENANCE_TICK_MS`] (spread over
/// shorter ticks while there is work left: `shard::Pace`).
const MAINTENANCE_BUDGET_PER_TICK: usize = 4096;
/// Period of the idle-connection sweep.
const IDLE_SWEEP_MS: u64 = 1000;
/// Longest sleep in `poll` when the node is in a cluster (gossip and replica timeouts).
const CLUSTER_POLL_TIMEOUT_MS: u64 = 10;

/// Wall-clock milliseconds since the Unix epoch (the only clock read of the data path).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything one shard thread owns.
pub struct Worker {
    shard: usize,
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    generation: u32,
    core: ShardCore,
    inbox: Arc<Mailbox>,
    mailboxes: Arc<Vec<Arc<Mailbox>>>,
    shared: Arc<NodeShared>,
    idle_timeout: Duration,
    sync: SyncPolicy,
    mail: Vec<Mail>,
    own_replies: Vec<u8>,
    flush_list: Vec<usize>,
    resume_list: Vec<usize>,
    accept_pending: bool,
    /// When the current turn's events came in.
    turn_start: Instant,
    /// Requests answered immediately in this turn (their latency is the turn's length).
    turn_immediate: u64,
    /// The slow-request log.
    slow: super::slowlog::SlowLog,
    /// How long the last turn's storage flush and sync took.
    turn_store: Duration,
    /// How the last maintenance tick paced the next (`shard::Pace`).
    maintenance_pace: crate::shard::Pace,
    /// The same by opcode slot ([`crate::shard::stats::latency_slot`]).
    turn_immediate_by_op: [u64; crate::shard::stats::LATENCY_OP_SLOTS],
    /// Bytes read from connections in the current turn.
    turn_read_bytes: usize,
    /// Client connections are not read while the replication backlog is high.
    throttled: bool,
    /// Times the loop started throttling clients (for STATS through the log).
    throttle_events: u64,
    /// Outbound links to the other nodes, when the node runs in a cluster.
    links: Option<PeerLinks>,
    /// The turn's peer frames, taken from the core's outbox to be sent.
    peer_frames: Vec<(u32, Vec<u8>)>,
    /// Connections not read for lack of node budget, retried when there is room.
    memory_waiters: Vec<usize>,
    /// Buffer bytes this shard freed since it last asked the allocator to return memory.
    freed_since_trim: usize,
}

/// What a worker is built from.
pub struct WorkerParts {
    /// Shard index.
    pub shard: usize,
    /// The poll whose registry made this shard's waker.
    pub poll: Poll,
    /// This shard's listener (already bound with SO_REUSEPORT).
    pub listener: std::net::TcpListener,
    /// The shard core.
    pub core: ShardCore,
    /// Every shard's mailbox (index = shard).
    pub mailboxes: Arc<Vec<Arc<Mailbox>>>,
    /// Node-wide shared state.
    pub shared: Arc<NodeShared>,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Sync policy (the interval timer lives here).
    pub sync: SyncPolicy,
    /// Requests slower than this are logged (0: never).
    pub slow_ms: u64,
}

impl Worker {
    /// Register the listener and build the loop.
    pub fn new(p: WorkerParts) -> io::Result<Worker> {
        p.listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(p.listener);
        p.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let links = p.core.cluster_config().map(|c| PeerLinks::new(p.shard, c));
        Ok(Worker {
            links,
            peer_frames: Vec::new(),
            shard: p.shard,
            inbox: p.mailboxes[p.shard].clone(),
            poll: p.poll,
            listener,
            conns: Slab::with_capacity(64),
            generation: 0,
            core: p.core,
            mailboxes: p.mailboxes,
            shared: p.shared,
            idle_timeout: p.idle_timeout,
            sync: p.sync,
            mail: Vec::new(),
            own_replies: Vec::new(),
            flush_list: Vec::new(),
            resume_list: Vec::new(),
            accept_pending: false,
            turn_start: Instant::now(),
            turn_immediate: 0,
            turn_immediate_by_op: [0; crate::shard::stats::LATENCY_OP_SLOTS],
            slow: super::slowlog::SlowLog::new(p.slow_ms),
            turn_store: Duration::ZERO,
            maintenance_pace: crate::shard::Pace::Idle,
            turn_read_bytes: 0,
            throttled: false,
            throttle_events: 0,
            memory_waiters: Vec::new(),
            freed_since_trim: 0,
        })
    }

    fn counters(&self) -> &crate::shard::ShardCounters {
        &self.shared.counters[self.shard]
    }

    /// Run until shutdown is requested. A *turn* polls, handles the events, and polls again
    /// without waiting while the last poll found any ([`POLLS_PER_TURN_MAX`] polls at most);
    /// then it ends (`end_turn`): one store write, the replies and peer frames written out.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(POLL_EVENTS_MAX);
        let start = Instant::now();
        let mut next_tick = start;
        let mut next_sweep = start + Duration::from_millis(IDLE_SWEEP_MS);
        let mut next_sync = match self.sync {
            SyncPolicy::Interval { ms } => Some(start + Duration::from_millis(ms)),
            _ => None,
        };
        // Polls made in the running turn (0: the next poll starts a turn).
        let mut polls = 0;
        loop {
            let busy = polls > 0
                || !self.resume_list.is_empty()
                || self.accept_pending
                || self.links.as_ref().is_some_and(|l| l.has_read_pending());
            let timeout = if busy {
                Duration::ZERO
            } else if self.links.is_some() {
                // Gossip and replica timeouts want a finer clock than the idle sweep.
                Duration::from_millis(POLL_TIMEOUT_MS_MAX.min(CLUSTER_POLL_TIMEOUT_MS))
            } else {
                Duration::from_millis(POLL_TIMEOUT_MS_MAX)
            };
            // An idle shard still wakes for its maintenance tick: with compaction under way
            // they come every few milliseconds, each with a share of the budget (`Pace`).
            let timeout = timeout.min(next_tick.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let now_ms = wall_ms();
            if polls == 0 {
                // The turn's latency (recorded for its immediate replies) counts from its
                // first poll, and its read budget covers all of its polls.
                self.turn_start = Instant::now();
                self.turn_read_bytes = 0;
            }
            polls += 1;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => self.drain_mail(now_ms),
                    t if self.links.as_ref().and_then(|l| l.index_of(t)).is_some() => {
                        let links = self.links.as_mut().expect("checked by the guard");
                        let i = links.index_of(t).expect("checked by the guard");
                        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        links.on_event(self.poll.registry(), i, readable, &mut self.core, now_ms);
                    }
                    Token(k) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            if let Some(c) = self.conns.get_mut(k) {
                                c.read_closed |= ev.is_read_closed() || ev.is_error();
                            }
                            self.read_conn(k, now_ms);
                        }
                        if ev.is_writable() {
                            self.queue_flush(k);
                        }
                    }
                }
            }
            if self.accept_pending {
                self.accept();
            }
            if !self.memory_waiters.is_empty() && self.shared.memory.has_room(READ_CHUNK_SIZE) {
                for k in std::mem::take(&mut self.memory_waiters) {
                    if let Some(c) = self.conns.get_mut(k) {
                        c.waiting_memory = false;
                        self.resume_list.push(k);
                    }
                }
            }
            for k in std::mem::take(&mut self.resume_list) {
                self.read_conn(k, now_ms);
            }
            if let Some(links) = self.links.as_mut() {
                links.read_pending(self.poll.registry(), &mut self.core, now_ms);
            }
            self.core.on_cluster_tick(now_ms);
            self.update_throttle();
            if polls < POLLS_PER_TURN_MAX && !events.is_empty() {
                // More may have come while this poll's events were handled: take it into this
                // turn, whose one store write and socket writes then carry it too.
                continue;
            }
            polls = 0;
            self.end_turn();

            let now = Instant::now();
            if now >= next_tick {
                if self.freed_since_trim >= TRIM_AFTER_FREED_BYTES {
                    self.freed_since_trim = 0;
                    system::release_free_memory();
                }
                // Sooner, in smaller steps, while the store has maintenance work left.
                let budget = self.maintenance_pace.budget(MAINTENANCE_BUDGET_PER_TICK);
                self.maintenance_pace = self.core.on_tick(now_ms, budget);
                next_tick = now + Duration::from_millis(self.maintenance_pace.next_tick_ms());
            }
            if let (Some(at), SyncPolicy::Interval { ms }) = (next_sync, self.sync) {
                if now >= at {
                    // An error is logged and made sticky by the core; writes are refused.
                    let _ = self.core.sync();
                    next_sync = Some(now + Duration::from_millis(ms));
                }
            }
            if now >= next_sweep {
                self.sweep_idle(now);
                next_sweep = now + Duration::from_millis(IDLE_SWEEP_MS);
            }
            if system::shutdown_requested() {
                self.shutdown();
                return Ok(());
            }
        }
    }

    /// Backpressure from the replication backlog, with hysteresis: throttle above the high-water
    /// mark, resume every paused client connection below the low-water mark.
    fn update_throttle(&mut self) {
        let backlog = self.core.replicated_in_flight();
        if !self.throttled && backlog > COORDINATOR_OPS_HIGH_WATER {
            self.throttled = true;
            self.throttle_events += 1;
            log::debug!(
                "shard {}: {backlog} replicated operations in flight; pausing client reads ({} times so far)",
                self.shard,
                self.throttle_events
            );
        } else if self.throttled && backlog < COORDINATOR_OPS_LOW_WATER {
            self.throttled = false;
            let paused: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| c.paused)
                .map(|(k, _)| k)
                .collect();
            self.resume_list.extend(paused);
        }
    }

    /// Cover the turn's versions with the durable clock ceiling, group commit, then move every
    /// byte the turn produced.
    fn end_turn(&mut self) {
        let store_start = Instant::now();
        let finished = self.core.finish_turn();
        self.turn_store = store_start.elapsed();
        if let Err(e) = finished {
            // Nothing of this turn has left the node yet: stop here, loudly, before a restart
            // could reissue the versions it was about to let out.
            log::error!("{e}; stopping the node");
            std::process::abort();
        }
        self.dispatch_peer_frames();
        self.dispatch_outbox();
        self.deliver_own_replies();
        // Swapped out and back so the list keeps its capacity from turn to turn.
        let mut flush_list = std::mem::take(&mut self.flush_list);
        for k in flush_list.drain(..) {
            self.flush(k);
        }
        // (Connections queued while flushing stay queued.)
        flush_list.append(&mut self.flush_list);
        self.flush_list = flush_list;
        self.enforce_node_budget();
        if self.own_replies.is_empty() && self.own_replies.capacity() > SCRATCH_IDLE_CAPACITY_MAX {
            // A burst of forwarded replies must not stay allocated.
            self.freed_since_trim += self.own_replies.capacity();
            self.own_replies = Vec::new();
        }
        if self.turn_immediate > 0 {
            let took = self.turn_start.elapsed();
            if self.slow.is_slow(took) {
                self.slow
                    .turn(self.shard, self.turn_immediate, took, self.turn_store);
            }
            let us = took.as_micros() as u64;
            let counters = &self.shared.counters[self.shard];
            counters.latency_us.record_n(us, self.turn_immediate);
            for (slot, n) in self.turn_immediate_by_op.iter_mut().enumerate() {
                counters.latency_by_op[slot].record_n(us, std::mem::take(n));
            }
            self.turn_immediate = 0;
        }
    }

    /// Past the node limit, drop this shard's client connections that hold unsent replies
    /// above the high-water mark (they are not reading them), largest first, until the node is
    /// back under the limit. Every shard does the same with its own connections.
    fn enforce_node_budget(&mut self) {
        if !self.shared.memory.over() {
            return;
        }
        let mut hogs: Vec<(usize, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.is_peer() && c.pending_out() > WRITE_BUFFER_HIGH_WATER)
            .map(|(k, c)| (c.buffer_bytes(), k))
            .collect();
        hogs.sort_unstable_by(|a, b| b.cmp(a));
        for (bytes, k) in hogs {
            if !self.shared.memory.over() {
                break;
            }
            log::warn!(
                "shard {}: node connection buffers over {} bytes; dropping a connection that holds {bytes} bytes without reading its replies",
                self.shard,
                self.shared.memory.node_bytes_max()
            );
            self.shared
                .memory
                .dropped_node
                .fetch_add(1, Ordering::Relaxed);
            self.counters()
                .connections_dropped
                .fetch_add(1, Ordering::Relaxed);
            self.close(k);
        }
    }

    /// Hand the turn's peer frames to the outbound links and write them.
    fn dispatch_peer_frames(&mut self) {
        let Some(links) = self.links.as_mut() else {
            return;
        };
        let registry = self.poll.registry();
        // Swapped out (and back, keeping both buffers' capacity) so the core can be asked
        // each destination's address while its frames are sent.
        std::mem::swap(&mut self.peer_frames, &mut self.core.take_outbox().peer);
        for (to, frame) in self.peer_frames.drain(..) {
            links.send(registry, to, self.core.peer_addr(to), &frame);
            // Copied into the link: the buffer serves a later frame (`crate::pool`).
            crate::pool::give_bytes(frame);
        }
        links.tick(registry);
        links.flush(registry);
        // Published as this shard's totals (each shard has its own counters).
        let st = links.stats();
        let counters = &self.shared.counters[self.shard];
        counters
            .peer_frames_dropped
            .store(st.frames_dropped, Ordering::Relaxed);
        counters
            .peer_frames_no_addr
            .store(st.frames_no_addr, Ordering::Relaxed);
    }

    fn shutdown(&mut self) {
        log::info!("shard {}: shutting down", self.shard);
        self.end_turn();
        if let Err(e) = self.core.sync() {
            log::error!("shard {}: final sync failed: {e}", self.shard);
        }
        // protocol.md § 6: every client connection learns why it is closed, after the replies
        // it is already owed. Peer sessions (and peer handshakes under way) are only closed:
        // their links treat any frame out of place as a refusal and would back off longer.
        let mut notice = Vec::new();
        put_connection_error(
            &mut notice,
            Status::ShuttingDown,
            "the node is shutting down; use another node",
        );
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for &k in &keys {
            let c = &mut self.conns[k];
            let peer = c.session.role == Some(crate::protocol::Role::Peer)
                || c.session.challenge.is_some();
            if !peer && !c.closing {
                c.wbuf.extend_from_slice(&notice);
            }
        }
        self.flush_for_shutdown(&keys);
        for k in keys {
            self.close(k);
        }
    }

    /// Write what the connections `keys` have pending, waiting for writability, for at most
    /// SHUTDOWN_FLUSH_MS_MAX; then half-close those done so the client reads the end cleanly.
    fn flush_for_shutdown(&mut self, keys: &[usize]) {
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_FLUSH_MS_MAX);
        let mut events = Events::with_capacity(POLL_EVENTS_MAX);
        loop {
            let mut waiting = false;
            for &k in keys {
                let Some(c) = self.conns.get_mut(k) else {
                    continue;
                };
                while c.wpos < c.wbuf.len() {
                    match c.stream.write(&c.wbuf[c.wpos..]) {
                        Ok(0) => break,
                        Ok(n) => c.wpos += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            waiting = true;
                            break;
                        }
                        // A dead connection: nothing more to write to it.
                        Err(_) => {
                            c.wpos = c.wbuf.len();
                            break;
                        }
                    }
                }
            }
            let now = Instant::now();
            if !waiting || now >= deadline {
                break;
            }
            // Writable events (or any other) end the wait; the deadline bounds it.
            let _ = self.poll.poll(&mut events, Some(deadline - now));
        }
        for &k in keys {
            if let Some(c) = self.conns.get_mut(k) {
                if c.wpos == c.wbuf.len() {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            let (mut stream, addr) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors or similar: leave the backlog for the next turn
                    // rather than spinning; other connections keep being served.
                    log::warn!("shard {}: accept failed: {e}", self.shard);
                    self.accept_pending = false;
                    return;
                }
            };
            let open = self.shared.connections_open.fetch_add(1, Ordering::Relaxed);
            if open as usize >= self.shared.connections_max {
                self.shared.connections_open.fetch_sub(1, Ordering::Relaxed);
                self.counters()
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                let mut msg = Vec::new();
                put_connection_error(
                    &mut msg,
                    Status::TooManyConnections,
                    &format!(
                        "connection limit of {} reached; try again later",
                        self.shared.connections_max
                    ),
                );
                // Best effort: a fresh socket's send buffer takes this small frame at once.
                let _ = stream.write(&msg);
                log::debug!("refused connection from {addr}: limit reached");
                continue;
            }
            if let Err(e) = stream.set_nodelay(true) {
                log::debug!("set_nodelay: {e}");
            }
            // The nonce this node answers a peer HELLO with: fresh from the OS per connection.
            let nonce = match system::random_nonce() {
                Ok(n) => n,
                Err(e) => {
                    log::error!("shard {}: no random bytes from the OS: {e}", self.shard);
                    self.shared.connections_open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
            };
            self.generation = self.generation.wrapping_add(1);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let id = ConnId::new(key, self.generation);
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("register failed: {e}");
                self.shared.connections_open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            entry.insert(Conn {
                stream,
                id,
                rbuf: ReadBuf::default(),
                wbuf: Vec::new(),
                wpos: 0,
                session: Session::accepted(addr.ip(), nonce),
                last_active: Instant::now(),
                in_flight: 0,
                deferred_at: std::collections::VecDeque::new(),
                closing: false,
                eof: false,
                read_closed: false,
                paused: false,
                queued: false,
                reserved: 0,
                charged: 0,
                frame_since: None,
                waiting_memory: false,
            });
            let c = self.counters();
            c.connections.fetch_add(1, Ordering::Relaxed);
            c.connections_total.fetch_add(1, Ordering::Relaxed);
        }
        // More may be waiting: come back next turn without sleeping.
        self.accept_pending = true;
    }

    fn queue_flush(&mut self, k: usize) {
        if let Some(c) = self.conns.get_mut(k) {
            if !c.queued {
                c.queued = true;
                self.flush_list.push(k);
            }
        }
    }

    /// Read and process what a connection sent, within the per-event bounds.
    fn read_conn(&mut self, k: usize, now_ms: u64) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        if c.closing {
            return;
        }
        // Frames left in the buffer by an earlier pause come first.
        // While the replication backlog is high, client requests wait in their sockets.
        if self.throttled && !matches!(c.session.role, Some(crate::protocol::Role::Peer)) {
            c.paused = true;
            return;
        }
        let budget = &self.shared.memory;
        // Process the frames in `c`'s buffer; a partial frame left behind started by `at`.
        let (core, by_op, slow_on, turn_start) = (
            &mut self.core,
            &mut self.turn_immediate_by_op,
            self.slow.on(),
            self.turn_start,
        );
        let mut process = |c: &mut Conn, at: Instant| {
            let (f, i) = process_frames(core, c, by_op, slow_on, budget, now_ms, turn_start);
            c.track_partial_frame(f > 0, at);
            (f, i)
        };
        let (mut frames, mut immediate) = process(c, self.turn_start);
        let mut bytes_in = 0u64;
        // Readiness is edge-triggered: unless a read ends in WouldBlock (or the connection
        // stops being read), bytes may be left in the socket with no new event to come, so the
        // connection is revisited next turn.
        let mut more = true;
        let mut dead = false;
        for _ in 0..READS_PER_EVENT_MAX {
            if c.closing || c.eof || c.paused || c.waiting_memory {
                more = false;
                break;
            }
            if self.turn_read_bytes >= READ_BYTES_PER_TURN_MAX {
                // Enough copying for one turn: the rest waits for the next one, after the
                // next poll's events (a steady client is not stuck behind a thousand
                // large uploads).
                break;
            }
            // The read buffer grows a chunk at a time as a frame arrives; beyond the first
            // chunk each growth needs room in the node budget. Without it the bytes wait in the
            // socket (and the frame timeout runs).
            let grow = c.rbuf.growth_for_next_read();
            if grow > 0
                && c.rbuf.allocated() + grow > READ_CHUNK_SIZE
                && !c.is_peer()
                && !budget.has_room(grow)
            {
                c.waiting_memory = true;
                budget.paused_node.fetch_add(1, Ordering::Relaxed);
                self.memory_waiters.push(k);
                more = false;
                break;
            }
            match c.rbuf.read_from(&mut c.stream) {
                Ok(0) => {
                    c.eof = true;
                    more = false;
                    break;
                }
                Ok(n) => {
                    bytes_in += n as u64;
                    self.turn_read_bytes += n;
                    c.last_active = Instant::now();
                    budget.resize(c.charged, c.buffer_bytes());
                    c.charged = c.buffer_bytes();
                    let (f, i) = process(c, c.last_active);
                    frames += f;
                    immediate += i;
                    if c.closing || (c.rbuf.last_read_short() && !c.read_closed) {
                        // A short read emptied the socket: the next arrival brings a new
                        // readiness event (edge-triggered), so no read to see WouldBlock.
                        more = false;
                        break;
                    }
                    if frames >= REQUESTS_PER_READ_EVENT_MAX {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read error on {:?}: {e}", c.id);
                    dead = true;
                    break;
                }
            }
        }
        // Give memory back after a large frame, whether or not the read ended in WouldBlock.
        c.rbuf.shrink_if_idle();
        self.freed_since_trim += c.recharge(budget);
        let counters = &self.shared.counters[self.shard];
        counters.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.turn_immediate += immediate;
        if dead {
            self.close(k);
            return;
        }
        if more {
            self.resume_list.push(k);
        }
        self.queue_flush(k);
    }

    fn drain_mail(&mut self, now_ms: u64) {
        let mut mail = std::mem::take(&mut self.mail);
        self.inbox.drain(&mut mail);
        for m in mail.drain(..) {
            self.core.on_mail(now_ms, m, &mut self.own_replies);
        }
        self.mail = mail;
    }

    fn dispatch_outbox(&mut self) {
        let me = self.shard;
        let mailboxes = &self.mailboxes;
        let mut refused: Vec<Vec<u8>> = Vec::new();
        self.core
            .take_outbox()
            .drain_mail(me, &mut self.own_replies, |dest, mail| {
                if !mail.may_be_refused() {
                    mailboxes[dest].push_replies(mail);
                } else if let Err(Full(Mail::Requests { records, .. })) =
                    mailboxes[dest].push_requests(mail)
                {
                    refused.push(records);
                }
            });
        for records in refused {
            overloaded_replies(&records, &mut self.own_replies);
        }
    }

    /// Hand reply records addressed to this shard's connections to their write buffers.
    fn deliver_own_replies(&mut self) {
        if self.own_replies.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.own_replies);
        // One clock read for the lot: they reach their connections now, together.
        let now = Instant::now();
        let mut at = 0;
        while at < records.len() {
            let id = ConnId(BigEndian::read_u64(&records[at..at + 8]));
            at += 8;
            let total = 4 + BigEndian::read_u32(&records[at..at + 4]) as usize;
            let bytes = &records[at..at + total];
            at += total;
            let k = id.slot();
            if let Some(c) = self.conns.get_mut(k) {
                if c.id == id {
                    // A connection closing on a connection error has had its last frame:
                    // nothing may follow it (protocol.md § 6), not even the reply to a request
                    // it sent before the bad bytes (held for the turn's write, or forwarded).
                    if !c.closing {
                        c.wbuf.extend_from_slice(bytes);
                    }
                    debug_assert!(c.in_flight > 0, "a reply record answers a deferred request");
                    c.in_flight = c.in_flight.saturating_sub(1);
                    c.unreserve(bytes[4], &self.shared.memory);
                    if let Some(d) = c.deferred_at.pop_front() {
                        let took = now.saturating_duration_since(d.turn_start);
                        if self.slow.is_slow(took) {
                            self.slow.request(self.shard, &d, took, self.turn_store);
                        }
                        let us = took.as_micros() as u64;
                        let counters = &self.shared.counters[self.shard];
                        counters.latency_us.record_n(us, 1);
                        let op = bytes[4] & !crate::protocol::RESPONSE_BIT;
                        counters.latency_by_op[crate::shard::stats::latency_slot(op)]
                            .record_n(us, 1);
                    }
                    if !c.queued {
                        c.queued = true;
                        self.flush_list.push(k);
                    }
                }
            }
        }
        self.own_replies = records;
        self.own_replies.clear();
    }

    /// Write what a connection has pending; close it if it is done or hopeless.
    fn flush(&mut self, k: usize) {
        let throttled = self.throttled;
        let budget = &self.shared.memory;
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.queued = false;
        let mut written = 0u64;
        let mut dead = false;
        while c.wpos < c.wbuf.len() {
            match c.stream.write(&c.wbuf[c.wpos..]) {
                Ok(0) => {
                    dead = true;
                    break;
                }
                Ok(n) => {
                    c.wpos += n;
                    written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    dead = true;
                    break;
                }
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
            // After a burst of large replies, keep only a small buffer at once; smaller
            // excess is trimmed by the sweep (doing it here would reallocate every turn).
            if c.wbuf.capacity() > SCRATCH_IDLE_CAPACITY_MAX {
                c.wbuf.shrink_to(WRITE_BUFFER_IDLE_CAPACITY_MAX);
            }
        } else if c.wpos > WRITE_BUFFER_HIGH_WATER {
            c.wbuf.drain(..c.wpos);
            c.wpos = 0;
        }
        self.freed_since_trim += c.recharge(budget);
        let pending = c.pending_out();
        // Client connections cannot pass their budget (requests reserve their replies before
        // they are decoded); the check stays for peers and as a last line.
        let too_much = pending > WRITE_BUFFER_SIZE_MAX.max(budget.connection_bytes_max());
        // A half-closed connection is done once everything it sent is answered.
        let answered_all = c.in_flight == 0 && matches!(frame::check(c.rbuf.data()), Ok(None));
        let done = pending == 0 && (c.closing || (c.eof && answered_all));
        let throttled = throttled && !matches!(c.session.role, Some(crate::protocol::Role::Peer));
        let resume =
            c.paused && !c.over_limits(budget.connection_bytes_max()) && !c.closing && !throttled;
        if resume {
            c.paused = false;
        }
        self.shared.counters[self.shard]
            .bytes_out
            .fetch_add(written, Ordering::Relaxed);
        if too_much {
            log::warn!(
                "shard {}: closing a connection that does not read its replies ({pending} bytes unsent)",
                self.shard
            );
            self.counters()
                .connections_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        if dead || too_much || done {
            self.close(k);
        } else if resume {
            self.resume_list.push(k);
        }
    }

    fn sweep_idle(&mut self, now: Instant) {
        // Buffers grown by a burst go back to their idle size.
        for (_, c) in self.conns.iter_mut() {
            if c.wpos == c.wbuf.len() && c.wbuf.capacity() > WRITE_BUFFER_IDLE_CAPACITY_MAX {
                c.wbuf.clear();
                c.wpos = 0;
                c.wbuf.shrink_to(WRITE_BUFFER_IDLE_CAPACITY_MAX);
            }
            c.rbuf.shrink_if_idle();
            self.freed_since_trim += c.recharge(&self.shared.memory);
        }
        // A frame begun must arrive whole within the frame timeout (slow loris, stalled
        // half frames holding buffers).
        let frame_timeout = Duration::from_millis(self.shared.memory.limits.frame_timeout_ms);
        let slow: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.closing
                    && c.frame_since
                        .is_some_and(|t| now.duration_since(t) >= frame_timeout)
            })
            .map(|(k, _)| k)
            .collect();
        for k in slow {
            log::debug!(
                "shard {}: dropping a connection whose frame did not arrive within {} ms",
                self.shard,
                frame_timeout.as_millis()
            );
            self.shared
                .memory
                .dropped_frame_timeout
                .fetch_add(1, Ordering::Relaxed);
            self.counters()
                .connections_dropped
                .fetch_add(1, Ordering::Relaxed);
            self.close(k);
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.in_flight == 0 && now.duration_since(c.last_active) >= self.idle_timeout
            })
            .map(|(k, _)| k)
            .collect();
        for k in idle {
            self.counters()
                .connections_dropped
                .fetch_add(1, Ordering::Relaxed);
            self.close(k);
        }
    }

    fn close(&mut self, k: usize) {
        if let Some(mut c) = self.conns.try_remove(k) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            // Replies still to come for it are discarded on arrival (the id no longer matches).
            let memory = &self.shared.memory;
            memory.unreserve(c.reserved);
            memory.resize(c.charged, 0);
            self.freed_since_trim += c.charged;
            self.counters().connections.fetch_sub(1, Ordering::Relaxed);
            self.shared.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Answer request records that could not be forwarded (the owner's mailbox is full).
fn overloaded_replies(records: &[u8], out: &mut Vec<u8>) {
    let mut at = 0;
    while at < records.len() {
        let conn = &records[at..at + 8];
        at += 8;
        let total = 4 + BigEndian::read_u32(&records[at..at + 4]) as usize;
        let (opc, id) = (
            records[at + 4],
            BigEndian::read_u32(&records[at + 6..at + 10]),
        );
        at += total;
        out.extend_from_slice(conn);
        put_error(
            out,
            opc & !RESPONSE_BIT,
            id,
            Status::Overloaded,
            "the shard owning this key is overloaded; retry",
        );
    }
}
