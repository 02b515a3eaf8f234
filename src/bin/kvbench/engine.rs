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
//! `--route ring` (dkv against a cluster, on by default): each request goes to a connection to
//! an owner node of its key (`route.rs`), and when that node's connections are shard-aware, to
//! one pinned to the shard that owns the key there, so it crosses neither nodes nor shards. An
//! owner with no live connection pinned to that shard takes the request on any of its
//! connections (its shard forwards it); only when no owner has a connection up does the
//! request go to another node. The ring takes the place of the per-shard queues above: a
//! request waits (parked) only while its connection is busy.

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
    /// `--route ring`: the ring map requests are routed by (`None`: round robin).
    pub route: Option<crate::route::RingRoute>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Down { retry_ns: u64 },
    Connecting,
    Hello,
    Ready,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    in_use: bool,
    uses: u32,
    id: u32,
    op: Op,
    /// 0, or 1 for the PUT half of an RMW.
    stage: u8,
    key: u64,
    /// Latency origin: send time, or due time in open loop.
    start_ns: u64,
    /// When the current request was encoded (for `--check`).
    sent_ns: u64,
    /// `--check` write id of the current write.
    write_id: u64,
}

struct Conn {
    addr: SocketAddr,
    /// `--route ring`: the ring node this connection goes to.
    node: Option<usize>,
    /// Shard-aware: the shard this connection is pinned to by its local port.
    pin: Option<Pin>,
    stream: Option<TcpStream>,
    state: State,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    slots: Vec<Slot>,
    free: Vec<u16>,
    order: VecDeque<u16>,
    inflight: usize,
    dirty: bool,
}

impl Conn {
    fn new(addr: SocketAddr, pin: Option<Pin>, pipeline: usize) -> Conn {
        let slot = Slot {
            in_use: false,
            uses: 0,
            id: 0,
            op: Op::Get,
            stage: 0,
            key: 0,
            start_ns: 0,
            sent_ns: 0,
            write_id: 0,
        };
        Conn {
            addr,
            node: None,
            pin,
            stream: None,
            state: State::Down { retry_ns: 0 },
            rbuf: vec![0; READ_BUFFER_INITIAL_SIZE],
            rpos: 0,
            rlen: 0,
            wbuf: Vec::with_capacity(READ_BUFFER_INITIAL_SIZE),
            wpos: 0,
            slots: vec![slot; pipeline],
            free: (0..pipeline as u16).rev().collect(),
            order: VecDeque::with_capacity(pipeline),
            inflight: 0,
            dirty: false,
        }
    }
}

/// Shard-aware routing of one thread's operations (see the module docs).
struct ShardRoute {
    /// The shard count of every target of the thread.
    shards: usize,
    /// Operations waiting for a connection of their shard.
    pending: Vec<VecDeque<(Op, u64)>>,
    /// The connections pinned to each shard.
    conns_of: Vec<Vec<usize>>,
    /// Scratch space for a key's bytes.
    key: Vec<u8>,
}

impl ShardRoute {
    /// Routing for these connections: `None` unless every one is pinned, all with the same
    /// shard count above 1.
    fn new(conns: &[Conn]) -> Option<ShardRoute> {
        let shards = conns.first()?.pin?.shards;
        if shards < 2
            || conns
                .iter()
                .any(|c| c.pin.is_none_or(|p| p.shards != shards))
        {
            return None;
        }
        let mut conns_of = vec![Vec::new(); shards];
        for (ci, c) in conns.iter().enumerate() {
            // Checked above: every connection has a pin with this shard count.
            let pin = c.pin.expect("pinned");
            conns_of[pin.shard].push(ci);
        }
        Some(ShardRoute {
            shards,
            pending: vec![VecDeque::new(); shards],
            conns_of,
            key: Vec::new(),
        })
    }

    fn shard_of(&mut self, key: u64, key_size: usize) -> usize {
        self.key.clear();
        put_key(&mut self.key, key, key_size);
        dkv::hash::shard_of(&self.key, self.shards)
    }
}

/// What a connection sends next.
enum Next {
    /// This operation.
    Op(Op, u64),
    /// Nothing now: what is left waits for connections of other shards.
    NotNow,
    /// The work is done.
    Done,
}

struct Worker {
    sh: Arc<Shared>,
    poll: Poll,
    conns: Vec<Conn>,
    rng: Rng,
    stats: Stats,
    work: Work,
    cursor: u64,
    issued: u64,
    issuing: bool,
    open_loop: Option<(u64, f64)>,
    timer: Option<Timer>,
    rr: usize,
    dirty: Vec<usize>,
    last_reply_ns: u64,
    interval: Histogram<u64>,
    interval_ops: u64,
    interval_errors: u64,
    last_flush_ns: u64,
    lost: u64,
    readback_errors: u64,
    keys_checked: u64,
    /// `--route ring` state (`None`: round robin).
    routing: Option<Routing>,
    /// Shard-aware routing without `--route ring` (`None`: off, or the ring routes).
    shard_route: Option<ShardRoute>,
    landed: u64,
    missed: u64,
}

/// A thread's `--route ring` state.
struct Routing {
    /// Requests the thread keeps in flight: `--pipeline` × its connections.
    budget: usize,
    /// Per ring node, this thread's connections to it.
    by_node: Vec<Vec<usize>>,
    /// Per ring node, where the next search for a free connection starts.
    next: Vec<usize>,
    /// Shard-aware: per ring node, its shard count (1: its connections are not pinned).
    shards: Vec<usize>,
    /// Shard-aware: per ring node and shard, this thread's connections pinned to it.
    by_shard: Vec<Vec<Vec<usize>>>,
    /// Per ring node and shard, where the next search in `by_shard` starts.
    next_in_shard: Vec<Vec<usize>>,
    /// Key bytes, to hash a key as it is sent.
    scratch: Vec<u8>,
    /// An operation drawn while no connection had room for it: sent first next time.
    parked: Option<(Op, u64)>,
    to_owner: u64,
    to_other: u64,
    to_shard: u64,
}

/// What a search of some connections for room found.
enum Search {
    /// A ready connection with a free slot.
    Found(usize),
    /// None has room, but one is up (busy, connecting or saying HELLO).
    Busy,
    /// All are down (or there are none).
    Down,
}

/// Search `list` (indexes into `conns`) round robin from `*next` for a ready connection with
/// a free slot; on success `*next` moves past it.
fn search(conns: &[Conn], list: &[usize], next: &mut usize) -> Search {
    let mut up = false;
    for k in 0..list.len() {
        let ci = list[(*next + k) % list.len()];
        let c = &conns[ci];
        match c.state {
            State::Ready if c.inflight < c.slots.len() => {
                *next = (*next + k + 1) % list.len();
                return Search::Found(ci);
            }
            State::Down { .. } => {}
            _ => up = true,
        }
    }
    if up {
        Search::Busy
    } else {
        Search::Down
    }
}

/// Where a routed request goes.
enum Pick {
    /// This connection: to an owner (`owner`), pinned to the key's shard there (`shard`).
    Conn { ci: usize, owner: bool, shard: bool },
    /// Not now: an owner's connection is busy or still connecting.
    Wait,
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
    let routing = sh.cfg.route.as_ref().map(|r| {
        let nodes = r.addrs.len();
        let mut by_node = vec![Vec::new(); nodes];
        // A node's shard count is the one its first pinned connection was given (main gives
        // every connection to a node the same); a connection pinned otherwise is used only
        // as one of the node's connections.
        let mut shards = vec![1usize; nodes];
        for c in conns.iter_mut() {
            c.node = r.node_of(c.addr);
            if let (Some(n), Some(pin)) = (c.node, c.pin) {
                if shards[n] == 1 {
                    shards[n] = pin.shards;
                }
            }
        }
        let mut by_shard: Vec<Vec<Vec<usize>>> =
            shards.iter().map(|&k| vec![Vec::new(); k]).collect();
        for (ci, c) in conns.iter().enumerate() {
            let Some(n) = c.node else { continue };
            by_node[n].push(ci);
            if let Some(pin) = c
                .pin
                .filter(|p| p.shards == shards[n] && p.shard < p.shards)
            {
                by_shard[n][pin.shard].push(ci);
            }
        }
        Routing {
            budget: pipeline * conns.len(),
            next: vec![0; nodes],
            next_in_shard: shards.iter().map(|&k| vec![0; k]).collect(),
            shards,
            by_shard,
            by_node,
            scratch: Vec::new(),
            parked: None,
            to_owner: 0,
            to_other: 0,
            to_shard: 0,
        }
    });
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
            .any(|c| c.state == State::Ready && c.inflight < c.slots.len());
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
        c.state = State::Down {
            retry_ns: now + RECONNECT_DELAY_NS,
        };
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

    /// The next operation of this thread's work, or `None` when it is done.
    fn next_op(&mut self) -> Option<(Op, u64)> {
        if let Some(op) = self.routing.as_mut().and_then(|r| r.parked.take()) {
            return Some(op);
        }
        match &self.work {
            Work::Mix { requests, .. } => {
                if requests.is_some_and(|r| self.issued >= r) {
                    return None;
                }
                let op = self.sh.cfg.mix.pick(&mut self.rng);
                let key = if op == Op::Insert {
                    self.sh.chooser.insert()
                } else {
                    self.sh.chooser.existing(&mut self.rng)
                };
                Some((op, key))
            }
            Work::Preload { start, end } => {
                let key = start + self.cursor;
                if key >= *end {
                    return None;
                }
                self.cursor += 1;
                Some((Op::Put, key))
            }
            Work::Readback { keys, start, end } => {
                let i = start + self.cursor as usize;
                if i >= *end {
                    return None;
                }
                self.cursor += 1;
                Some((Op::Get, keys[i]))
            }
        }
    }

    /// The next operation for connection `ci`: with shard-aware routing, one its shard owns
    /// (see the module docs).
    fn next_for(&mut self, ci: usize) -> Next {
        if let Work::Mix {
            requests: Some(r), ..
        } = self.work
        {
            if self.issued >= r {
                return Next::Done;
            }
        }
        let (Some(mut route), Some(pin)) = (self.shard_route.take(), self.conns[ci].pin) else {
            return match self.next_op() {
                Some((op, key)) => Next::Op(op, key),
                None => Next::Done,
            };
        };
        let key_size = self.sh.cfg.encoder.key_size;
        let next = match route.pending[pin.shard].pop_front() {
            Some((op, key)) => Next::Op(op, key),
            // Each round either returns or queues one operation where there is room, so this
            // ends after at most `shards * PENDING_OPS_MAX` rounds.
            None => loop {
                let Some((op, key)) = self.next_op() else {
                    break if route.pending.iter().all(|q| q.is_empty()) {
                        Next::Done
                    } else {
                        Next::NotNow
                    };
                };
                let s = route.shard_of(key, key_size);
                if s == pin.shard
                    || route.conns_of[s].is_empty()
                    || route.pending[s].len() >= PENDING_OPS_MAX
                {
                    break Next::Op(op, key);
                }
                route.pending[s].push_back((op, key));
                for &cj in &route.conns_of[s] {
                    self.mark_dirty(cj);
                }
            },
        };
        self.shard_route = Some(route);
        next
    }

    /// Take the next operation and send it on `ci` (which has a free slot); false when the
    /// work is done or nothing is left for this connection now.
    fn issue(&mut self, ci: usize, start_ns: u64, now: u64) -> bool {
        let (op, key) = match self.next_for(ci) {
            Next::Op(op, key) => (op, key),
            Next::NotNow => return false,
            Next::Done => {
                self.issuing = false;
                return false;
            }
        };
        self.issue_op(ci, op, key, start_ns, now);
        true
    }

    /// Send `op` on `key` on `ci` (which has a free slot).
    fn issue_op(&mut self, ci: usize, op: Op, key: u64, start_ns: u64, now: u64) {
        self.issued += 1;
        let c = &mut self.conns[ci];
        // Callers only issue on a connection with inflight < pipeline = number of slots.
        let si = c
            .free
            .pop()
            .expect("a connection below its pipeline has a free slot");
        let slot = &mut c.slots[si as usize];
        assert!(!slot.in_use, "free slot {si} is in use");
        slot.in_use = true;
        slot.op = op;
        slot.stage = 0;
        slot.key = key;
        slot.start_ns = start_ns;
        c.inflight += 1;
        self.encode(ci, si, now);
    }

    // ---- routing by the ring (`--route ring`, route.rs) ----

    /// The connection for a request on key `key`: to the first owner that has a connection
    /// up, a ready one with a free slot, pinned to the key's shard there when the thread has
    /// a live one (else any of the owner's); `Wait` while such an owner's chosen connections
    /// are all busy or still connecting; any ready connection with room when no owner has one
    /// up.
    fn pick(&mut self, key: u64) -> Pick {
        let Some(route) = self.sh.cfg.route.as_ref() else {
            return self.free_conn().map_or(Pick::Wait, |ci| Pick::Conn {
                ci,
                owner: false,
                shard: false,
            });
        };
        let r = self
            .routing
            .as_mut()
            .expect("routing state exists with a route");
        let (partition, owners) = route.route_of(key, &mut r.scratch);
        for &node in owners {
            let k = r.shards[node];
            if k > 1 {
                let s = dkv::hash::shard_of_partition(partition, k);
                let conns = &r.by_shard[node][s];
                match search(&self.conns, conns, &mut r.next_in_shard[node][s]) {
                    Search::Found(ci) => {
                        return Pick::Conn {
                            ci,
                            owner: true,
                            shard: true,
                        }
                    }
                    Search::Busy => return Pick::Wait,
                    // No live connection pinned to the shard: any of the node's will do.
                    Search::Down => {}
                }
            }
            match search(&self.conns, &r.by_node[node], &mut r.next[node]) {
                Search::Found(ci) => {
                    return Pick::Conn {
                        ci,
                        owner: true,
                        shard: false,
                    }
                }
                Search::Busy => return Pick::Wait,
                Search::Down => {}
            }
        }
        self.free_conn().map_or(Pick::Wait, |ci| Pick::Conn {
            ci,
            owner: false,
            shard: false,
        })
    }

    /// Send the next operation on the connection [`Worker::pick`] chooses. `Some(true)`: sent;
    /// `Some(false)`: the work is done; `None`: no room now (the operation waits, parked).
    fn issue_routed(&mut self, start_ns: u64, now: u64) -> Option<bool> {
        let Some((op, key)) = self.next_op() else {
            self.issuing = false;
            return Some(false);
        };
        match self.pick(key) {
            Pick::Conn { ci, owner, shard } => {
                let r = self.routing.as_mut().expect("routing state");
                if owner {
                    r.to_owner += 1;
                } else {
                    r.to_other += 1;
                }
                if shard {
                    r.to_shard += 1;
                }
                self.issue_op(ci, op, key, start_ns, now);
                self.mark_dirty(ci);
                Some(true)
            }
            Pick::Wait => {
                self.routing.as_mut().expect("routing state").parked = Some((op, key));
                None
            }
        }
    }

    /// Closed loop under `--route ring`: top the thread up to its budget of requests in
    /// flight, each on a connection to an owner of its key.
    fn refill_routed(&mut self, now: u64) {
        let budget = self.routing.as_ref().map_or(0, |r| r.budget);
        let mut inflight: usize = self.conns.iter().map(|c| c.inflight).sum();
        while self.issuing && inflight < budget {
            match self.issue_routed(now, now) {
                Some(true) => inflight += 1,
                _ => break,
            }
        }
    }

    /// Encode the current request of slot `si` (a fresh id each time).
    fn encode(&mut self, ci: usize, si: u16, now: u64) {
        let readback = matches!(self.work, Work::Readback { .. });
        let c = &mut self.conns[ci];
        let slot = &mut c.slots[si as usize];
        slot.uses = slot.uses.wrapping_add(1);
        slot.id = ((slot.uses & 0x7_FFFF) << SLOT_BITS) | si as u32;
        slot.sent_ns = now;
        let (id, op, stage, key) = (slot.id, slot.op, slot.stage, slot.key);
        debug_assert!(id != HELLO_ID);
        let aux = if readback {
            Consistency::All.to_bits()
        } else {
            self.sh.cfg.consistency.to_bits()
        };
        let enc = self.sh.cfg.encoder;
        match (op, stage) {
            (Op::Get, _) | (Op::Rmw, 0) => enc.get(&mut c.wbuf, id, aux, key),
            (Op::Del, _) => {
                enc.del(&mut c.wbuf, id, aux, key);
                if let Some(check) = &self.sh.cfg.check {
                    let wid = self.next_write_id();
                    self.conns[ci].slots[si as usize].write_id = wid;
                    check.issue(key, wid, true, now);
                }
            }
            (Op::Put, _) | (Op::Insert, _) | (Op::Rmw, _) => {
                let len = self.sh.cfg.value_size.pick(&mut self.rng);
                let off = self.rng.below(VALUE_POOL_SLACK as u64) as usize;
                let mut head = [0u8; WRITE_ID_SIZE];
                let mut head_len = 0;
                if let Some(check) = &self.sh.cfg.check {
                    let wid = self.next_write_id();
                    self.conns[ci].slots[si as usize].write_id = wid;
                    check.issue(key, wid, false, now);
                    head = encode_write_id(wid);
                    // main checks that every value holds a write id under --check.
                    head_len = WRITE_ID_SIZE;
                }
                let value = Value {
                    head: &head[..head_len],
                    tail: &self.sh.pool[off..off + len - head_len],
                };
                let ttl = self.sh.cfg.ttl_seconds;
                enc.put(&mut self.conns[ci].wbuf, id, aux, key, value, ttl);
            }
        }
        if self.sh.cfg.proto.in_order() {
            self.conns[ci].order.push_back(si);
        }
    }

    fn next_write_id(&self) -> u64 {
        let seq = self.sh.write_seq.fetch_add(1, Ordering::Relaxed);
        assert!(seq < 1 << 48, "write sequence exhausted");
        (self.sh.cfg.write_id_nonce as u64) << 48 | seq
    }

    /// Open loop: send every request that is due, as long as a connection has room.
    fn schedule(&mut self, now: u64) {
        let Some((start, interval)) = self.open_loop else {
            return;
        };
        while self.issuing {
            let due = start + (self.issued as f64 * interval) as u64;
            if due > now {
                break;
            }
            if self.routing.is_some() {
                match self.issue_routed(due, now) {
                    Some(true) => continue,
                    _ => break,
                }
            }
            let Some(ci) = self.free_conn() else {
                break;
            };
            if !self.issue(ci, due, now) {
                break;
            }
            self.mark_dirty(ci);
        }
    }

    /// A ready connection with a free slot, round robin.
    fn free_conn(&mut self) -> Option<usize> {
        let n = self.conns.len();
        for k in 0..n {
            let ci = (self.rr + k) % n;
            let c = &self.conns[ci];
            if c.state == State::Ready && c.inflight < c.slots.len() {
                self.rr = (ci + 1) % n;
                return Some(ci);
            }
        }
        None
    }

    /// Closed loop: top up every connection that changed; then write what was queued.
    /// Topping up one connection can queue operations for another shard's connections and
    /// mark them dirty: rounds repeat until none is (each round fills slots or queues, both
    /// bounded, so this ends).
    fn refill_and_flush(&mut self, now: u64) {
        let routed = self.routing.is_some();
        if routed && self.open_loop.is_none() {
            self.refill_routed(now);
        }
        while !self.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.dirty);
            for &ci in &dirty {
                self.conns[ci].dirty = false;
                if self.open_loop.is_none() && !routed {
                    while self.issuing
                        && self.conns[ci].state == State::Ready
                        && self.conns[ci].inflight < self.conns[ci].slots.len()
                    {
                        if !self.issue(ci, now, now) {
                            break;
                        }
                    }
                }
                self.flush(ci);
            }
            dirty.clear();
            // Keep the allocation for next time.
            if self.dirty.is_empty() {
                self.dirty = dirty;
            }
        }
    }

    fn flush(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if !matches!(c.state, State::Hello | State::Ready) {
            return;
        }
        let Some(s) = c.stream.as_mut() else {
            return;
        };
        while c.wpos < c.wbuf.len() {
            match s.write(&c.wbuf[c.wpos..]) {
                Ok(0) => {
                    let now = self.sh.now_ns();
                    self.fail(ci, CODE_CONNECTION_LOST, now);
                    return;
                }
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let now = self.sh.now_ns();
                    self.fail(ci, CODE_CONNECTION_LOST, now);
                    return;
                }
            }
        }
        c.wbuf.clear();
        c.wpos = 0;
    }

    // ---- receiving ----

    /// Read until the socket is drained (edge-triggered), handling replies as they arrive.
    /// The server only sends replies to requests we sent, so this ends.
    fn read_all(&mut self, ci: usize) {
        loop {
            let c = &mut self.conns[ci];
            let Some(s) = c.stream.as_mut() else {
                return;
            };
            if c.rpos == c.rlen {
                c.rpos = 0;
                c.rlen = 0;
            }
            if c.rbuf.len() - c.rlen < READ_ROOM_MIN_SIZE {
                c.rbuf.copy_within(c.rpos..c.rlen, 0);
                c.rlen -= c.rpos;
                c.rpos = 0;
                if c.rbuf.len() - c.rlen < READ_ROOM_MIN_SIZE {
                    let grown = (c.rbuf.len() * 2).min(READ_BUFFER_SIZE_MAX);
                    if grown - c.rlen < READ_ROOM_MIN_SIZE {
                        let now = self.sh.now_ns();
                        self.fail(ci, CODE_PROTOCOL_ERROR, now);
                        return;
                    }
                    c.rbuf.resize(grown, 0);
                }
            }
            let rlen = c.rlen;
            match s.read(&mut c.rbuf[rlen..]) {
                Ok(0) => {
                    let now = self.sh.now_ns();
                    self.fail(ci, CODE_CONNECTION_LOST, now);
                    return;
                }
                Ok(n) => {
                    let short = n < c.rbuf.len() - rlen;
                    c.rlen += n;
                    let now = self.sh.now_ns();
                    if let Err(b) = self.handle_replies(ci, now) {
                        if std::env::var_os("KVBENCH_DEBUG").is_some() {
                            eprintln!("kvbench: connection {ci}: {}", b.message);
                        }
                        self.fail(ci, b.code, now);
                        return;
                    }
                    // A short read emptied the socket's receive queue; any byte that arrives
                    // later raises a new edge, so the read that would only say WouldBlock
                    // (one syscall per event, a third of all syscalls at pipeline 1) is skipped.
                    if short {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let now = self.sh.now_ns();
                    self.fail(ci, CODE_CONNECTION_LOST, now);
                    return;
                }
            }
        }
    }

    fn handle_replies(&mut self, ci: usize, now: u64) -> Result<(), Broken> {
        let proto = self.sh.cfg.proto;
        let want_seen = self.sh.cfg.check.is_some() || matches!(self.work, Work::Readback { .. });
        loop {
            let c = &mut self.conns[ci];
            let Some((r, n)) = proto::parse(proto, &c.rbuf[c.rpos..c.rlen])? else {
                return Ok(());
            };
            let (id, outcome) = (r.id, r.outcome);
            let seen = match outcome {
                Outcome::Ok if want_seen => Seen::of(Some(r.value)),
                _ => Seen::Missing,
            };
            let hello = if c.state == State::Hello {
                HelloInfo::parse(r.value)
            } else {
                None
            };
            c.rpos += n;
            self.last_reply_ns = now;
            self.complete(ci, id, outcome, seen, hello, now)?;
        }
    }

    fn complete(
        &mut self,
        ci: usize,
        id: u32,
        outcome: Outcome,
        seen: Seen,
        hello: Option<HelloInfo>,
        now: u64,
    ) -> Result<(), Broken> {
        let proto = self.sh.cfg.proto;
        let c = &mut self.conns[ci];
        if c.state == State::Hello {
            if id != HELLO_ID {
                return Err(broken(format!("reply to id {id} before HELLO's")));
            }
            return match outcome {
                Outcome::Ok => {
                    if let Some(pin) = c.pin {
                        match hello {
                            Some(h) if h.shard as usize == pin.shard => self.landed += 1,
                            _ => self.missed += 1,
                        }
                    }
                    let c = &mut self.conns[ci];
                    c.state = State::Ready;
                    self.mark_dirty(ci);
                    Ok(())
                }
                Outcome::NotFound => Err(broken("HELLO answered NOT_FOUND".into())),
                Outcome::Error(code) => Err(Broken {
                    code,
                    message: "HELLO refused".into(),
                }),
            };
        }
        let si = if proto.in_order() {
            c.order
                .pop_front()
                .ok_or_else(|| broken("reply with no request in flight".into()))?
        } else {
            let si = (id & ((1 << SLOT_BITS) - 1)) as u16;
            match c.slots.get(si as usize) {
                Some(s) if s.in_use && s.id == id => si,
                _ => return Err(broken(format!("reply to unknown request id {id}"))),
            }
        };
        let slot = c.slots[si as usize];
        let check = self.sh.cfg.check.clone();
        let answered = matches!(outcome, Outcome::Ok | Outcome::NotFound);

        if slot.op == Op::Get || (slot.op == Op::Rmw && slot.stage == 0) {
            if let Work::Readback { .. } = self.work {
                if answered {
                    self.keys_checked += 1;
                    let ok = check.as_ref().is_none_or(|t| t.verify(slot.key, seen));
                    if !ok {
                        self.lost += 1;
                    }
                } else {
                    self.readback_errors += 1;
                }
            } else if let Some(t) = &check {
                if answered {
                    let seen = if outcome == Outcome::NotFound {
                        Seen::Missing
                    } else {
                        seen
                    };
                    t.observe_read(slot.key, seen, slot.sent_ns);
                }
            }
        }
        if slot.op == Op::Rmw && slot.stage == 0 && answered {
            // The GET half answered: send the PUT half on the same slot, same latency origin.
            self.conns[ci].slots[si as usize].stage = 1;
            self.encode(ci, si, now);
            self.mark_dirty(ci);
            return Ok(());
        }
        if let Some(t) = &check {
            let wrote = matches!(slot.op, Op::Put | Op::Insert | Op::Del)
                || (slot.op == Op::Rmw && slot.stage == 1);
            if wrote {
                let acked =
                    outcome == Outcome::Ok || (slot.op == Op::Del && outcome == Outcome::NotFound);
                t.complete(slot.key, slot.write_id, acked, now);
            }
        }
        let latency = now.saturating_sub(slot.start_ns);
        self.stats.answered(slot.op, outcome, latency);
        if let Outcome::Error(_) = outcome {
            self.interval_errors += 1;
        } else {
            self.interval.saturating_record(latency.max(1));
            self.interval_ops += 1;
        }
        let c = &mut self.conns[ci];
        c.slots[si as usize].in_use = false;
        c.free.push(si);
        c.inflight -= 1;
        self.mark_dirty(ci);
        Ok(())
    }

    fn flush_progress(&mut self, now: u64) {
        if now != u64::MAX && now < self.last_flush_ns + PROGRESS_FLUSH_NS {
            return;
        }
        self.last_flush_ns = now.min(self.sh.now_ns());
        let p = &self.sh.progress;
        p.ops.fetch_add(self.interval_ops, Ordering::Relaxed);
        p.errors.fetch_add(self.interval_errors, Ordering::Relaxed);
        if let Ok(mut h) = p.hist.lock() {
            // Same bounds, so adding cannot fail.
            let _ = h.add(&self.interval);
        }
        self.interval.reset();
        self.interval_ops = 0;
        self.interval_errors = 0;
    }
}

/// The poll token of the open-loop timer (connections use their index).
const TIMER_TOKEN: Token = Token(usize::MAX);

/// A timerfd in the poll set: it wakes `poll` at a nanosecond deadline, where `poll`'s own
/// timeout is rounded up to whole milliseconds by `epoll_wait`. Without it an open-loop run
/// would send in 1 ms bursts and charge each request up to 1 ms of kvbench's own delay.
struct Timer {
    fd: libc::c_int,
    armed_at_ns: u64,
}

impl Timer {
    fn new(poll: &Poll) -> io::Result<Timer> {
        // SAFETY: plain syscall with constant flags; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let t = Timer { fd, armed_at_ns: 0 };
        poll.registry()
            .register(&mut SourceFd(&t.fd), TIMER_TOKEN, Interest::READABLE)?;
        Ok(t)
    }

    /// Wake at `due_ns` (same clock as `now_ns`); re-arming for the same time is skipped.
    fn arm_at(&mut self, due_ns: u64, now_ns: u64) {
        if due_ns == self.armed_at_ns {
            return;
        }
        self.armed_at_ns = due_ns;
        // 0 would disarm the timer: wake at once instead.
        let in_ns = due_ns.saturating_sub(now_ns).max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (in_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (in_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: fd is our open timerfd, spec is a valid itimerspec, old value not wanted.
        // It cannot fail with these arguments; if it did, the poll timeout still wakes us.
        unsafe { libc::timerfd_settime(self.fd, 0, &spec, std::ptr::null_mut()) };
    }

    /// The timer fired: consume its count so the next expiry is a new edge.
    fn fired(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from our non-blocking timerfd.
        unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        self.armed_at_ns = 0;
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: closing the fd this struct owns, once.
        unsafe { libc::close(self.fd) };
    }
}

fn broken(message: String) -> Broken {
    Broken {
        code: CODE_PROTOCOL_ERROR,
        message,
    }
}
