//! One load connection: its socket, buffers, in-flight slots and pinned shard.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Down { retry_ns: u64 },
    Connecting,
    Hello,
    Ready,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    pub(super) in_use: bool,
    pub(super) uses: u32,
    pub(super) id: u32,
    pub(super) op: Op,
    /// 0, or 1 for the PUT half of an RMW.
    pub(super) stage: u8,
    pub(super) key: u64,
    /// Latency origin: send time, or due time in open loop.
    pub(super) start_ns: u64,
    /// When the current request was encoded (for `--check`).
    pub(super) sent_ns: u64,
    /// `--check` write id of the current write.
    pub(super) write_id: u64,
}

pub(super) struct Conn {
    pub(super) addr: SocketAddr,
    /// `--route ring`: the ring node this connection goes to.
    pub(super) node: Option<usize>,
    /// Shard-aware: the shard this connection is pinned to by its local port.
    pub(super) pin: Option<Pin>,
    pub(super) stream: Option<TcpStream>,
    pub(super) state: State,
    pub(super) rbuf: Vec<u8>,
    pub(super) rpos: usize,
    pub(super) rlen: usize,
    pub(super) wbuf: Vec<u8>,
    pub(super) wpos: usize,
    pub(super) slots: Vec<Slot>,
    pub(super) free: Vec<u16>,
    pub(super) order: VecDeque<u16>,
    pub(super) inflight: usize,
    pub(super) dirty: bool,
    /// `--route ring`: its node left the ring; it takes no new request and closes once its
    /// replies are in.
    pub(super) retiring: bool,
    /// Siblings mode: per slot, the causal context its write carries (what its GET returned);
    /// each buffer keeps its capacity, so contexts are copied without allocating.
    pub(super) ctx: Vec<Vec<u8>>,
}

impl Conn {
    pub(super) fn new(addr: SocketAddr, pin: Option<Pin>, pipeline: usize) -> Conn {
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
            retiring: false,
            ctx: vec![Vec::new(); pipeline],
        }
    }
}
