//! The load engine: one thread drives its share of the connections with one `mio::Poll`
//! (non-blocking sockets, edge-triggered), keeping up to `--pipeline` requests in flight on each.
//!
//! Per connection: a read buffer, a write buffer and `pipeline` slots. A slot is one request in
//! flight; its index is in the low 12 bits of the dkv request id (with a use counter above, so a
//! stray reply cannot complete the wrong request), and for RESP and memcached, whose replies
//! come back in order, slots also queue in send order. Requests are encoded straight into the
//! write buffer and replies parsed in place: no allocation per request.
//!
//! Closed loop (default): a slot that completes is refilled at once, latency is measured from
//! the send. Open loop (`--rate`): requests are due at `start + i / rate`; a due request goes to
//! any connection with a free slot, and its latency is measured from when it was *due*, so time
//! spent waiting for a stalled server is counted (coordinated omission, as wrk2 corrects it).
//! The timer has the millisecond resolution of `epoll_wait`, so requests due within the same
//! millisecond go out together.
//!
//! A connection that fails counts its in-flight requests as CONNECTION_LOST and reconnects after
//! [`RECONNECT_DELAY_NS`], so a run survives a node restart and shows it in the error counts.
//!
//! Shard-aware connections (dkv, on by default): a connection pinned to shard `s` of a node
//! with `K` shards binds a local port `P` with `(P div 2) mod K == s` (protocol.md § 11.2) and
//! carries only keys that shard owns. The thread draws its operations as before; one drawn
//! for another shard waits in that shard's queue (at most [`PENDING_OPS_MAX`]) for a
//! connection of its shard, so the sequence of operations is the same, only spread
//! differently. A shard no connection of the thread is pinned to, or a full queue, sends the
//! operation on the connection at hand: the node forwards it, slower but correct.
//!
//! Siblings mode (`--conflicts siblings`): every GET is causal, and every write (put, insert,
//! rmw, del) is two requests on one slot, like rmw: a causal GET, then a PUT or DELETE that
//! carries the context the GET returned (kept in the connection's `ctx` for the slot), timed
//! from the GET's send to the write's reply. Both go on the same connection, so a write routed
//! to an owner of its key reaches the replica that must coordinate it (protocol.md § 19.2).
//!
//! `--route ring` (dkv against a cluster, on by default): each request goes to a connection to
//! an owner node of its key (`route.rs`), and when that node's connections are shard-aware, to
//! one pinned to the shard that owns the key there, so it crosses neither nodes nor shards. An
//! owner with no live connection pinned to that shard takes the request on any of its
//! connections (its shard forwards it); only when no owner has a connection up does the
//! request go to another node. In the closed loop each connection is topped up to `--pipeline`
//! like an unrouted one, with operations drawn for a node that owns their key (and on its
//! shard); one drawn for other owners waits in the queue of the first of them with a
//! connection up (at most [`PENDING_OPS_MAX`]: past it the connection at hand waits; with no
//! owner up the operation goes on it). A connection whose replies came back together so sends
//! its next batch together, as with one node; filling whichever connection had room spread
//! every batch over all owners, a system call per few requests on both sides. In the open
//! loop a due request waits (parked) only while its owner's connections are busy. When the
//! refresher publishes a newer map (`crate::route::RouteCell`) the thread re-routes on its
//! next loop ([`Worker::follow_ring`]): connections to nodes new to the ring are opened, those
//! to nodes gone from it take no new request and close once idle, and a failed connection
//! asks the refresher to look at the map soon (what waited for its node is routed again).
//!
//! ```text
//!  engine/mod.rs    configuration, shared progress, run_thread, the worker's loop, connecting
//!  engine/conn.rs   one connection: socket, buffers, slots, pinned shard
//!  engine/issue.rs  the next operation for a connection: shard queues, ring routing
//!  engine/route.rs  the routing state: per-shard queues, owner connections
//!  engine/wire.rs   encoding, open-loop schedule, flushing, reading, completing, progress
//!  engine/timer.rs  the open-loop timer
//! ```

use crate::check::{encode_write_id, CheckTable, Seen, WRITE_ID_SIZE};
use crate::proto::{
    self, Broken, Code, Encoder, Outcome, Proto, Value, CODE_CLIENT_TIMEOUT, CODE_CONNECTION_LOST,
    CODE_CONNECT_FAILED, CODE_PROTOCOL_ERROR, HELLO_ID,
};
use crate::report::{new_histogram, Stats};
use crate::workload::{put_key, KeyChooser, Mix, Op, Rng, ValueSize, VALUE_POOL_SLACK};
use dkv::client::HelloInfo;
use dkv::protocol::Consistency;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod conn;
mod issue;
mod route;
mod timer;
mod wire;

use conn::{Conn, State};
use route::{search, Next, Pick, Routed, Routing, Search, ShardRoute};
use timer::{Timer, TIMER_TOKEN};

/// Most requests in flight on one connection: slot indexes have 12 bits in the request id.
pub const PIPELINE_MAX: usize = 4096;

/// Bits of the request id that hold the slot index.
const SLOT_BITS: u32 = 12;

/// Initial size of a connection's read buffer.
pub const READ_BUFFER_INITIAL_SIZE: usize = 16 * 1024;

/// Free space wanted in the read buffer before each `read`.
pub const READ_ROOM_MIN_SIZE: usize = 4 * 1024;

/// A read buffer never grows past one largest dkv frame plus room to read.
pub const READ_BUFFER_SIZE_MAX: usize = dkv::limits::FRAME_SIZE_MAX + 2 * READ_BUFFER_INITIAL_SIZE;

/// Wait before reconnecting a failed connection.
pub const RECONNECT_DELAY_NS: u64 = 100_000_000;

/// After the last request is sent, how long in-flight requests may take before they are
/// counted as CLIENT_TIMEOUT.
pub const DRAIN_TIMEOUT_NS: u64 = 10_000_000_000;

/// A phase without a deadline is abandoned when no reply at all arrives for this long.
pub const STALL_TIMEOUT_NS: u64 = 30_000_000_000;

/// How often a thread hands its interval figures to the progress line.
pub const PROGRESS_FLUSH_NS: u64 = 250_000_000;

/// Longest `poll` sleep, so deadlines and progress are looked at regularly.
pub const POLL_TIMEOUT_NS_MAX: u64 = 100_000_000;

/// Readiness events taken per `poll`.
pub const POLL_EVENTS_MAX: usize = 1024;

/// Operations drawn for a shard that wait for one of its connections, per shard and thread;
/// past it an operation goes on the connection at hand (and is forwarded by the node). In a
/// closed loop the queue of a shard whose connections answer more slowly than the others'
/// fills up, and from then on the difference in rates is forwarded: the mix of keys stays
/// the one asked for, rather than favouring the faster shard.
pub const PENDING_OPS_MAX: usize = 1024;

/// The shard a connection is pinned to: its local port lands it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The shard.
    pub shard: usize,
    /// The node's shard count.
    pub shards: usize,
}

/// Settings shared by every thread of a run.
pub struct Config {
    /// Protocol.
    pub proto: Proto,
    /// Request encoder (protocol and key size).
    pub encoder: Encoder,
    /// dkv consistency for the workload.
    pub consistency: Consistency,
    /// TTL of writes, s (0 = none).
    pub ttl_seconds: u32,
    /// Value sizes.
    pub value_size: ValueSize,
    /// Operation mix.
    pub mix: Mix,
    /// `--check` bookkeeping.
    pub check: Option<Arc<CheckTable>>,
    /// Top 16 bits of every `--check` write id, different for every run.
    pub write_id_nonce: u16,
    /// dkv client token sent in HELLO (empty: none).
    pub token: Vec<u8>,
    /// `--route ring`: the ring map requests are routed by, kept current by the refresher
    /// (`None`: round robin).
    pub route: Option<Arc<crate::route::RouteCell>>,
    /// Siblings mode (`--conflicts siblings`, dkv): every GET carries the causal flag, and every
    /// write is a causal GET of its key followed, on the same slot, by a PUT or DELETE with
    /// the context that GET returned.
    pub siblings: bool,
}

/// Figures the threads hand to the progress line.
pub struct Progress {
    /// Latency of the requests answered since the last line.
    pub hist: Mutex<Histogram<u64>>,
    /// Requests answered, ever.
    pub ops: AtomicU64,
    /// Errors, ever.
    pub errors: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            hist: Mutex::new(new_histogram()),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

/// What every thread reads.
pub struct Shared {
    /// Settings.
    pub cfg: Config,
    /// Key picking (and the insert counter).
    pub chooser: KeyChooser,
    /// Bytes values are sliced from.
    pub pool: Vec<u8>,
    /// Time zero of the run: every `*_ns` is measured from here.
    pub base: Instant,
    /// Progress figures.
    pub progress: Progress,
    /// `--seed`.
    pub seed: u64,
    /// Next `--check` write sequence number (shared so ids never repeat across phases).
    pub write_seq: AtomicU64,
}

impl Shared {
    /// Nanoseconds since `base`.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// What one thread does in one phase.
#[derive(Clone)]
pub enum Work {
    /// The workload mix, until the deadline or the request budget, optionally rate-limited.
    Mix {
        /// Stop sending at this time.
        deadline_ns: Option<u64>,
        /// Stop after this many operations.
        requests: Option<u64>,
        /// Open loop: this thread's operations per second.
        rate: Option<f64>,
    },
    /// PUT keys `start..end` once each (`--preload`).
    Preload {
        /// First key.
        start: u64,
        /// One past the last key.
        end: u64,
    },
    /// GET `keys[start..end]` with ALL and verify them (`--check`).
    Readback {
        /// Touched keys.
        keys: Arc<Vec<u64>>,
        /// First index.
        start: usize,
        /// One past the last index.
        end: usize,
    },
}

/// What one thread measured in one phase.
pub struct ThreadResult {
    /// Counters and latencies.
    pub stats: Stats,
    /// When the thread finished, ns since `base`.
    pub end_ns: u64,
    /// Read-back keys that lost an acknowledged write.
    pub lost: u64,
    /// Read-backs that got no usable answer.
    pub readback_errors: u64,
    /// Keys read back with a verdict.
    pub keys_checked: u64,
    /// Why the phase was abandoned, if it was.
    pub aborted: Option<String>,
    /// `--route ring`: requests sent to an owner of their key.
    pub to_owner: u64,
    /// `--route ring`: requests sent elsewhere (no owner had a connection up).
    pub to_other: u64,
    /// `--route ring`: requests of `to_owner` sent on a connection pinned to the key's shard.
    pub to_shard: u64,
    /// Pinned connections whose HELLO reply named their shard.
    pub landed: u64,
    /// Pinned connections that landed on another shard (a node that does not steer).
    pub missed: u64,
}

struct Worker {
    pub(super) sh: Arc<Shared>,
    pub(super) poll: Poll,
    pub(super) conns: Vec<Conn>,
    pub(super) rng: Rng,
    pub(super) stats: Stats,
    pub(super) work: Work,
    pub(super) cursor: u64,
    pub(super) issued: u64,
    pub(super) issuing: bool,
    pub(super) open_loop: Option<(u64, f64)>,
    pub(super) timer: Option<Timer>,
    pub(super) rr: usize,
    pub(super) dirty: Vec<usize>,
    pub(super) last_reply_ns: u64,
    pub(super) interval: Histogram<u64>,
    pub(super) interval_ops: u64,
    pub(super) interval_errors: u64,
    pub(super) last_flush_ns: u64,
    pub(super) lost: u64,
    pub(super) readback_errors: u64,
    pub(super) keys_checked: u64,
    /// `--route ring` state (`None`: round robin).
    pub(super) routing: Option<Routing>,
    /// `--route ring`: the map `routing` was built from, and its generation in the cell.
    pub(super) route: Option<Arc<crate::route::RingRoute>>,
    pub(super) route_gen: u64,
    /// This thread's index (pins of connections opened later).
    pub(super) thread: usize,
    /// Requests in flight per connection, at most.
    pub(super) slots: usize,
    /// `--pipeline` (the routed budget is this × live connections).
    pub(super) pipeline: usize,
    /// Shard-aware routing without `--route ring` (`None`: off, or the ring routes).
    pub(super) shard_route: Option<ShardRoute>,
    pub(super) landed: u64,
    pub(super) missed: u64,
    /// Siblings mode: the context of the causal GET reply being handled (copied out of the
    /// read buffer before the slot is known).
    pub(super) reply_ctx: Vec<u8>,
}

/// Run one thread's share of a phase over connections to `addrs` (one entry per connection,
/// with the shard it is pinned to, if any), each with up to `pipeline` requests in flight.
pub fn run_thread(
    sh: Arc<Shared>,
    thread: usize,
    addrs: Vec<(SocketAddr, Option<Pin>)>,
    work: Work,
    pipeline: usize,
) -> io::Result<ThreadResult> {
    assert!(
        (1..=PIPELINE_MAX).contains(&pipeline),
        "pipeline checked by main"
    );
    let now = sh.now_ns();
    let open_loop = match &work {
        Work::Mix {
            rate: Some(rate), ..
        } => Some((now, 1e9 / rate)),
        _ => None,
    };
    let poll = Poll::new()?;
    let timer = match open_loop {
        Some(_) => Some(Timer::new(&poll)?),
        None => None,
    };
    let slots = match &sh.cfg.route {
        Some(_) => (pipeline * crate::route::ROUTE_SLOTS_PER_PIPELINE).min(PIPELINE_MAX),
        None => pipeline,
    };
    let mut conns: Vec<Conn> = addrs
        .iter()
        .map(|&(a, pin)| Conn::new(a, pin, slots))
        .collect();
    let (route, route_gen) = match &sh.cfg.route {
        Some(cell) => (Some(cell.get()), cell.generation()),
        None => (None, 0),
    };
    let routing = route.as_ref().map(|r| Routing::build(r, &mut conns));
    let mut w = Worker {
        timer,
        rng: Rng::new(sh.seed, thread as u64 + 1),
        poll,
        conns,
        routing,
        sh,
        stats: Stats::new(),
        work,
        cursor: 0,
        issued: 0,
        issuing: true,
        open_loop,
        rr: 0,
        dirty: Vec::new(),
        last_reply_ns: now,
        interval: new_histogram(),
        interval_ops: 0,
        interval_errors: 0,
        last_flush_ns: now,
        lost: 0,
        readback_errors: 0,
        keys_checked: 0,
        shard_route: None,
        landed: 0,
        missed: 0,
        reply_ctx: Vec::new(),
        route,
        route_gen,
        thread,
        slots,
        pipeline,
    };
    // The ring, when it routes, picks each request's connection itself (shard included).
    if w.routing.is_none() {
        w.shard_route = ShardRoute::new(&w.conns);
    }
    let aborted = w.run()?;
    let (to_owner, to_other, to_shard) = w
        .routing
        .as_ref()
        .map_or((0, 0, 0), |r| (r.to_owner, r.to_other, r.to_shard));
    w.flush_progress(u64::MAX);
    Ok(ThreadResult {
        end_ns: w.sh.now_ns(),
        stats: w.stats,
        lost: w.lost,
        readback_errors: w.readback_errors,
        keys_checked: w.keys_checked,
        aborted,
        to_owner,
        to_other,
        to_shard,
        landed: w.landed,
        missed: w.missed,
    })
}

impl Worker {
    fn run(&mut self) -> io::Result<Option<String>> {
        let mut events = Events::with_capacity(POLL_EVENTS_MAX);
        let mut drain_deadline_ns: Option<u64> = None;
        let deadline_ns = match self.work {
            Work::Mix { deadline_ns, .. } => deadline_ns,
            _ => None,
        };
        loop {
            let now = self.sh.now_ns();
            if self.issuing && deadline_ns.is_some_and(|d| now >= d) {
                self.issuing = false;
            }
            self.follow_ring();
            for ci in 0..self.conns.len() {
                if let State::Down { retry_ns } = self.conns[ci].state {
                    if now >= retry_ns && (self.issuing || self.conns[ci].inflight > 0) {
                        self.connect(ci, now);
                    }
                }
            }
            if self.open_loop.is_some() {
                self.schedule(now);
            }
            self.refill_and_flush(now);

            let inflight: usize = self.conns.iter().map(|c| c.inflight).sum();
            if !self.issuing && inflight == 0 {
                return Ok(None);
            }
            if !self.issuing {
                let d = *drain_deadline_ns.get_or_insert(now + DRAIN_TIMEOUT_NS);
                if now >= d {
                    self.give_up_inflight();
                    return Ok(Some(format!(
                        "{inflight} requests unanswered {} s after the end",
                        DRAIN_TIMEOUT_NS / 1_000_000_000
                    )));
                }
            }
            if deadline_ns.is_none() && now.saturating_sub(self.last_reply_ns) > STALL_TIMEOUT_NS {
                self.give_up_inflight();
                return Ok(Some(format!(
                    "no reply for {} s",
                    STALL_TIMEOUT_NS / 1_000_000_000
                )));
            }

            let timeout_ns = self.poll_timeout_ns(now, deadline_ns, drain_deadline_ns);
            let due = self.next_due(now);
            if let (Some(timer), Some(due)) = (&mut self.timer, due) {
                timer.arm_at(due, now);
            }
            match self
                .poll
                .poll(&mut events, Some(Duration::from_nanos(timeout_ns)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                let ci = event.token().0;
                if event.token() == TIMER_TOKEN {
                    if let Some(timer) = &mut self.timer {
                        timer.fired();
                    }
                    continue;
                }
                if ci >= self.conns.len() {
                    continue;
                }
                if self.conns[ci].state == State::Connecting && !self.finish_connect(ci) {
                    continue;
                }
                if matches!(self.conns[ci].state, State::Down { .. }) {
                    continue;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read_all(ci);
                }
                if event.is_writable() {
                    self.flush(ci);
                }
            }
            let now = self.sh.now_ns();
            self.flush_progress(now);
        }
    }

    fn poll_timeout_ns(&self, now: u64, deadline: Option<u64>, drain: Option<u64>) -> u64 {
        let mut until = now + POLL_TIMEOUT_NS_MAX;
        until = until.min(self.last_flush_ns + PROGRESS_FLUSH_NS);
        if self.issuing {
            if let Some(d) = deadline {
                until = until.min(d);
            }
        }
        if let Some(due) = self.next_due(now) {
            until = until.min(due);
        }
        if let Some(d) = drain {
            until = until.min(d);
        }
        for c in &self.conns {
            if let State::Down { retry_ns } = c.state {
                if self.issuing || c.inflight > 0 {
                    until = until.min(retry_ns);
                }
            }
        }
        until.saturating_sub(now)
    }

    /// Open loop: when the next request is due, if a connection could take it (with every
    /// slot busy, the next reply is what wakes us).
    fn next_due(&self, now: u64) -> Option<u64> {
        let (start, interval) = self.open_loop?;
        if !self.issuing {
            return None;
        }
        let free = self
            .conns
            .iter()
            .any(|c| c.state == State::Ready && !c.retiring && c.inflight < c.slots.len());
        free.then(|| (start + (self.issued as f64 * interval) as u64).max(now))
    }

    // ---- connections ----

    fn connect(&mut self, ci: usize, now: u64) {
        let addr = self.conns[ci].addr;
        let stream = match self.conns[ci].pin {
            Some(pin) => dkv::shard_port::connect_to_shard(addr, pin.shard, pin.shards, true)
                .map(|(s, _port)| TcpStream::from_std(s)),
            None => TcpStream::connect(addr),
        };
        let result = stream.and_then(|mut s| {
            self.poll.registry().register(
                &mut s,
                Token(ci),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match result {
            Ok(s) => {
                let c = &mut self.conns[ci];
                c.stream = Some(s);
                c.state = State::Connecting;
            }
            Err(_) => {
                self.stats.event(CODE_CONNECT_FAILED);
                self.interval_errors += 1;
                self.conns[ci].state = State::Down {
                    retry_ns: now + RECONNECT_DELAY_NS,
                };
            }
        }
    }

    /// Called on the first event of a connecting socket: true once it is connected.
    fn finish_connect(&mut self, ci: usize) -> bool {
        let c = &mut self.conns[ci];
        let Some(s) = c.stream.as_mut() else {
            return false;
        };
        let failed = match s.take_error() {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => match s.peer_addr() {
                Ok(_) => false,
                // Not connected yet: a spurious wake-up; wait for the next event.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                Err(_) => true,
            },
        };
        let now = self.sh.now_ns();
        if failed {
            self.fail(ci, CODE_CONNECT_FAILED, now);
            return false;
        }
        // Nagle would hold back small pipelined requests; a failure here only costs latency.
        let _ = s.set_nodelay(true);
        if self.sh.cfg.proto == Proto::Dkv {
            self.sh.cfg.encoder.hello(&mut c.wbuf, &self.sh.cfg.token);
            c.state = State::Hello;
        } else {
            c.state = State::Ready;
        }
        // Dirty: the HELLO is flushed (or the pipeline filled) even if this event was not
        // the writable one.
        self.mark_dirty(ci);
        true
    }

    /// Close connection `ci`: its in-flight requests are lost, it reconnects later.
    fn fail(&mut self, ci: usize, code: Code, now: u64) {
        let c = &mut self.conns[ci];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if code != CODE_CONNECTION_LOST {
            self.stats.event(code);
            self.interval_errors += 1;
        }
        let readback = matches!(self.work, Work::Readback { .. });
        for slot in c.slots.iter_mut().filter(|s| s.in_use) {
            slot.in_use = false;
            self.stats.unanswered(slot.op, CODE_CONNECTION_LOST);
            self.interval_errors += 1;
            if readback {
                self.readback_errors += 1;
            }
        }
        c.free.clear();
        c.free.extend((0..c.slots.len() as u16).rev());
        c.order.clear();
        c.inflight = 0;
        c.rpos = 0;
        c.rlen = 0;
        c.wbuf.clear();
        c.wpos = 0;
        // A connection to a node gone from the ring is not opened again.
        let retry_ns = if c.retiring {
            u64::MAX
        } else {
            now + RECONNECT_DELAY_NS
        };
        c.state = State::Down { retry_ns };
        if let (Some(n), Some(r)) = (c.node, self.routing.as_mut()) {
            // What waits for this node is routed again, to its live owners.
            r.requeue_node(n);
        }
        // The node may have left the ring: the refresher looks at the map soon.
        if let (Some(cell), false) = (&self.sh.cfg.route, retry_ns == u64::MAX) {
            cell.want_refresh();
        }
    }

    /// The drain deadline passed: count what is still in flight as timed out.
    fn give_up_inflight(&mut self) {
        let readback = matches!(self.work, Work::Readback { .. });
        for c in &mut self.conns {
            for slot in c.slots.iter_mut().filter(|s| s.in_use) {
                slot.in_use = false;
                self.stats.unanswered(slot.op, CODE_CLIENT_TIMEOUT);
                if readback {
                    self.readback_errors += 1;
                }
            }
            c.inflight = 0;
        }
    }

    fn mark_dirty(&mut self, ci: usize) {
        if !self.conns[ci].dirty {
            self.conns[ci].dirty = true;
            self.dirty.push(ci);
        }
    }

    // ---- sending ----

    // ---- routing by the ring (`--route ring`, route.rs) ----

    // ---- receiving ----
}

fn broken(message: String) -> Broken {
    Broken {
        code: CODE_PROTOCOL_ERROR,
        message,
    }
}
