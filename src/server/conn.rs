//! One client or peer connection of a shard's event loop: its socket, buffers, session and
//! budget accounting ([`Conn`]), and cutting the frames of its read buffer and handing them
//! to the shard core ([`process_frames`]). The loop itself is in `worker.rs`.

use super::readbuf::ReadBuf;
use crate::budget::{reply_reserve_bytes, MemoryBudget};
use crate::limits::{IN_FLIGHT_PER_CONNECTION_MAX, PREFETCH_BATCH_MAX, WRITE_BUFFER_HIGH_WATER};
use crate::protocol::frame;
use crate::shard::stats::{latency_slot, LATENCY_OP_SLOTS};
use crate::shard::{After, ConnId, Session, ShardCore};
use mio::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) id: ConnId,
    pub(super) rbuf: ReadBuf,
    pub(super) wbuf: Vec<u8>,
    pub(super) wpos: usize,
    pub(super) session: Session,
    pub(super) last_active: Instant,
    pub(super) in_flight: usize,
    /// Each deferred request's turn start, opcode, flags and key length, oldest first (for
    /// the latency histograms and the slow log; replies from one owner shard come back in
    /// order).
    pub(super) deferred_at: std::collections::VecDeque<super::slowlog::Deferred>,
    /// Send what is buffered, then close.
    pub(super) closing: bool,
    /// The peer closed its sending side: answer what it sent, then close.
    pub(super) eof: bool,
    /// The last readiness event said the peer closed its side (FIN with the data): a short
    /// read then does not mean the socket is done, the EOF is still to be read.
    pub(super) read_closed: bool,
    /// Reading stopped for backpressure; resume when replies drain.
    pub(super) paused: bool,
    /// Already in the flush list of this turn.
    pub(super) queued: bool,
    /// Bytes reserved for the replies of this connection's requests in flight (`budget.rs`).
    pub(super) reserved: usize,
    /// Bytes of buffers charged to the node budget for this connection.
    pub(super) charged: usize,
    /// When the first byte of the incomplete frame at the end of the read buffer arrived.
    pub(super) frame_since: Option<Instant>,
    /// Not read because the node budget had no room to grow its read buffer.
    pub(super) waiting_memory: bool,
}

impl Conn {
    pub(super) fn pending_out(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    pub(super) fn is_peer(&self) -> bool {
        matches!(self.session.role, Some(crate::protocol::Role::Peer))
    }

    /// Bytes the next request in the read buffer would reserve for its reply. Peer sessions
    /// reserve nothing: they are authenticated, and pausing them would slow down the very
    /// acknowledgements that free memory.
    pub(super) fn next_reserve(&self) -> usize {
        let data = self.rbuf.data();
        if self.is_peer() || data.len() < 5 {
            return 0;
        }
        reply_reserve_bytes(data[4])
    }

    /// Whether decoding must stop: too many replies unsent, too many requests in flight, or
    /// the next request's reply would not fit the connection's budget (always admitted when
    /// nothing is outstanding, so a connection can never wait on itself).
    pub(super) fn over_limits(&self, connection_bytes_max: usize) -> bool {
        let outstanding = self.pending_out() + self.reserved;
        self.pending_out() > WRITE_BUFFER_HIGH_WATER
            || self.in_flight >= IN_FLIGHT_PER_CONNECTION_MAX
            || (outstanding > 0 && outstanding + self.next_reserve() > connection_bytes_max)
    }

    /// What the connection's buffers cost now.
    pub(super) fn buffer_bytes(&self) -> usize {
        self.rbuf.allocated() + self.wbuf.capacity()
    }

    /// Bring the node budget up to date with this connection's buffers; returns bytes freed.
    pub(super) fn recharge(&mut self, budget: &MemoryBudget) -> usize {
        let now = self.buffer_bytes();
        budget.resize(self.charged, now);
        let freed = self.charged.saturating_sub(now);
        self.charged = now;
        freed
    }

    /// Give back the reservation of one reply with opcode `opc`.
    pub(super) fn unreserve(&mut self, opc: u8, budget: &MemoryBudget) {
        let n = if self.in_flight == 0 {
            self.reserved
        } else {
            reply_reserve_bytes(opc).min(self.reserved)
        };
        self.reserved -= n;
        budget.unreserve(n);
    }

    /// Track when the incomplete frame at the end of the read buffer began: `consumed` says
    /// whether whole frames were taken from the buffer since the last call (the incomplete
    /// frame left is then a new one).
    pub(super) fn track_partial_frame(&mut self, consumed: bool, now: Instant) {
        let data = self.rbuf.data();
        let partial = !data.is_empty() && matches!(frame::check(data), Ok(None));
        if !partial {
            self.frame_since = None;
        } else if consumed || self.frame_since.is_none() {
            self.frame_since = Some(now);
        }
    }
}

/// The key length of a key request's body (its first two bytes), 0 for other requests.
fn key_len_of(opc: u8, body: &[u8]) -> u16 {
    use crate::protocol::op;
    match opc {
        op::GET | op::PUT | op::DELETE | op::LOCAL_GET if body.len() >= 2 => {
            u16::from_be_bytes([body[0], body[1]])
        }
        _ => 0,
    }
}

/// Tell the store which keys the next whole frames of `data` (at most
/// [`PREFETCH_BATCH_MAX`]) will look up, so that their cache misses overlap
/// (`storage/prefetch.rs`). Client GET, PUT and DELETE and peer READ and REPLICATE name a
/// key at a fixed place; a lone request is left alone, its own look-up comes next anyway.
fn prefetch_keys(core: &ShardCore, data: &[u8]) {
    use crate::cluster::peer::op as peer_op;
    use crate::protocol::op;
    let mut keys: [&[u8]; PREFETCH_BATCH_MAX] = [&[]; PREFETCH_BATCH_MAX];
    let (mut n, mut reads, mut writes, mut at) = (0, 0u32, 0u32, 0);
    while n < PREFETCH_BATCH_MAX {
        let Ok(Some((f, len))) = frame::parse(&data[at..]) else {
            break;
        };
        at += len;
        // Where the key's u16 length is (peer frames start with a ring version u64), and
        // whether the record is read or the key written; a version-only READ looks up the
        // key index alone.
        let (key_at, read, write) = match f.op {
            op::GET => (0, true, false),
            op::PUT | op::DELETE => (0, false, true),
            peer_op::READ => (
                8,
                f.aux & crate::cluster::peer::AUX_VERSION_ONLY == 0,
                false,
            ),
            peer_op::REPLICATE => (8, false, true),
            _ => continue,
        };
        let Some(len) = f.body.get(key_at..key_at + 2) else {
            continue;
        };
        let key_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if let Some(key) = f.body.get(key_at + 2..key_at + 2 + key_len) {
            if key.is_empty() {
                continue;
            }
            keys[n] = key;
            reads |= u32::from(read) << n;
            writes |= u32::from(write) << n;
            n += 1;
        }
    }
    if n > 1 {
        core.prefetch(&keys[..n], reads, writes);
    }
}

/// Cut and process every whole frame in a connection's read buffer, stopping at its limits.
/// Returns the number of requests processed and how many of them were answered immediately;
/// those are also counted by opcode slot in `immediate_by_op` (their latency is the turn's).
/// `timed`: note when each deferred request's processing began (for the slow log).
pub(super) fn process_frames(
    core: &mut ShardCore,
    c: &mut Conn,
    immediate_by_op: &mut [u64; LATENCY_OP_SLOTS],
    timed: bool,
    budget: &MemoryBudget,
    now_ms: u64,
    turn_start: Instant,
) -> (usize, u64) {
    let mut n = 0;
    let mut n_immediate = 0;
    // Frames handled when the next prefetch pass is due.
    let mut prefetch_at = 0;
    let mut started: Option<Instant> = None;
    c.paused = false;
    loop {
        if c.over_limits(budget.connection_bytes_max()) {
            if !c.paused && c.pending_out() + c.reserved > WRITE_BUFFER_HIGH_WATER {
                budget.paused_connection.fetch_add(1, Ordering::Relaxed);
            }
            c.paused = true;
            break;
        }
        if n == prefetch_at {
            prefetch_at = n + PREFETCH_BATCH_MAX;
            prefetch_keys(core, c.rbuf.data());
        }
        match frame::parse(c.rbuf.data()) {
            Ok(Some((f, len))) => {
                // Decided before the frame is handled: a HELLO may change the session's role.
                let reserve = c.next_reserve();
                let slot = latency_slot(f.op);
                let (opc, aux, key_len) = (f.op, f.aux, key_len_of(f.op, f.body));
                let after = core.on_frame(now_ms, c.id, &mut c.session, f, &mut c.wbuf);
                c.rbuf.consume(len);
                n += 1;
                match after {
                    After::Continue => {
                        n_immediate += 1;
                        immediate_by_op[slot] += 1;
                    }
                    After::Deferred => {
                        c.in_flight += 1;
                        c.reserved += reserve;
                        budget.reserve(reserve);
                        // The clock is read only when the slow log is on, only for deferred
                        // requests, and once per batch: its requests start microseconds
                        // apart, and the slow log reports milliseconds.
                        c.deferred_at.push_back(super::slowlog::Deferred {
                            turn_start,
                            started: timed.then(|| *started.get_or_insert_with(Instant::now)),
                            op: opc,
                            aux,
                            key_len,
                        });
                    }
                    After::Close => {
                        c.closing = true;
                        break;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                core.reject_stream(e, &mut c.wbuf);
                c.closing = true;
                break;
            }
        }
    }
    (n, n_immediate)
}
