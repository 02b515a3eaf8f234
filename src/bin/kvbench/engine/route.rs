//! Where an operation goes: the per-shard queues of shard-aware connections, and the ring
//! routing state (which connection of which owner node takes a key), rebuilt when the ring
//! map changes.

use super::*;
use crate::route::RingRoute;

/// Shard-aware routing of one thread's operations (see the module docs).
pub(super) struct ShardRoute {
    /// The shard count of every target of the thread.
    pub(super) shards: usize,
    /// Operations waiting for a connection of their shard.
    pub(super) pending: Vec<VecDeque<(Op, u64)>>,
    /// The connections pinned to each shard.
    pub(super) conns_of: Vec<Vec<usize>>,
    /// Scratch space for a key's bytes.
    pub(super) key: Vec<u8>,
}

impl ShardRoute {
    /// Routing for these connections: `None` unless every one is pinned, all with the same
    /// shard count above 1.
    pub(super) fn new(conns: &[Conn]) -> Option<ShardRoute> {
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

    pub(super) fn shard_of(&mut self, key: u64, key_size: usize) -> usize {
        self.key.clear();
        put_key(&mut self.key, key, key_size);
        dkv::hash::shard_of(&self.key, self.shards)
    }
}

/// What a connection sends next.
pub(super) enum Next {
    /// This operation.
    Op(Op, u64),
    /// Nothing now: what is left waits for connections of other shards.
    NotNow,
    /// The work is done.
    Done,
}

/// A thread's `--route ring` state.
pub(super) struct Routing {
    /// Per ring node, this thread's connections to it.
    pub(super) by_node: Vec<Vec<usize>>,
    /// Per ring node, where the next search for a free connection starts.
    pub(super) next: Vec<usize>,
    /// Shard-aware: per ring node, its shard count (1: its connections are not pinned).
    pub(super) shards: Vec<usize>,
    /// Shard-aware: per ring node and shard, this thread's connections pinned to it.
    pub(super) by_shard: Vec<Vec<Vec<usize>>>,
    /// Per ring node and shard, where the next search in `by_shard` starts.
    pub(super) next_in_shard: Vec<Vec<usize>>,
    /// Key bytes, to hash a key as it is sent.
    pub(super) scratch: Vec<u8>,
    /// Open loop: an operation that was due while no connection had room for it, sent first
    /// next time.
    pub(super) parked: Option<(Op, u64)>,
    /// Operations queued under an older map, to draw again before new ones.
    pub(super) redraw: VecDeque<(Op, u64)>,
    /// Closed loop: per ring node, operations drawn for any of its connections.
    pub(super) pending_node: Vec<VecDeque<(Op, u64)>>,
    /// Closed loop: per ring node and shard, operations drawn for a connection pinned there.
    pub(super) pending_shard: Vec<Vec<VecDeque<(Op, u64)>>>,
    pub(super) to_owner: u64,
    pub(super) to_other: u64,
    pub(super) to_shard: u64,
}

/// What a search of some connections for room found.
pub(super) enum Search {
    /// A ready connection with a free slot.
    Found(usize),
    /// None has room, but one is up (busy, connecting or saying HELLO).
    Busy,
    /// All are down (or there are none).
    Down,
}

/// Search `list` (indexes into `conns`) round robin from `*next` for a ready connection with
/// a free slot; on success `*next` moves past it.
pub(super) fn search(conns: &[Conn], list: &[usize], next: &mut usize) -> Search {
    let mut up = false;
    for k in 0..list.len() {
        let ci = list[(*next + k) % list.len()];
        let c = &conns[ci];
        match c.state {
            State::Ready if !c.retiring && c.inflight < c.slots.len() => {
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
pub(super) enum Pick {
    /// This connection: to an owner (`owner`), pinned to the key's shard there (`shard`).
    Conn { ci: usize, owner: bool, shard: bool },
    /// Not now: an owner's connection is busy or still connecting.
    Wait,
}

impl Routing {
    /// The routing state of connections `conns` under `route`: each connection's node, and
    /// per node (and shard) the connections to it. Connections to addresses not in the ring
    /// have no node.
    pub(super) fn build(route: &RingRoute, conns: &mut [Conn]) -> Routing {
        let nodes = route.addrs.len();
        let mut by_node = vec![Vec::new(); nodes];
        // A node's shard count is the one its first pinned connection was given (main gives
        // every connection to a node the same); a connection pinned otherwise is used only
        // as one of the node's connections.
        let mut shards = vec![1usize; nodes];
        for c in conns.iter_mut() {
            c.node = if c.retiring {
                None
            } else {
                route.node_of(c.addr)
            };
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
        let pending_shard = shards.iter().map(|&k| vec![VecDeque::new(); k]).collect();
        Routing {
            next: vec![0; nodes],
            next_in_shard: shards.iter().map(|&k| vec![0; k]).collect(),
            shards,
            by_shard,
            by_node,
            scratch: Vec::new(),
            parked: None,
            redraw: VecDeque::new(),
            pending_node: vec![VecDeque::new(); nodes],
            pending_shard,
            to_owner: 0,
            to_other: 0,
            to_shard: 0,
        }
    }
}

/// What a routed connection sends next (closed loop).
pub(super) enum Routed {
    /// This operation, with whether the connection's node owns its key and whether the
    /// connection reaches the key's shard there.
    Op(Op, u64, bool, bool),
    /// Nothing now: what is drawn waits for connections of other owners.
    NotNow,
    /// The work is done: nothing is left to draw or waiting.
    Done,
}

/// Where an operation drawn for other owners waits: a node's queue, or one of its shards'.
#[derive(Clone, Copy)]
pub(super) enum Dest {
    Node(usize),
    Shard(usize, usize),
}

impl Routing {
    /// The queue of `dest`.
    pub(super) fn queue(&mut self, dest: Dest) -> &mut VecDeque<(Op, u64)> {
        match dest {
            Dest::Node(n) => &mut self.pending_node[n],
            Dest::Shard(n, s) => &mut self.pending_shard[n][s],
        }
    }

    /// Where an operation on `partition` waits for a connection: the first of its `owners` with
    /// a connection up, pinned to the partition's shard there when one is; `None` when no owner
    /// has a connection up.
    pub(super) fn dest_of(
        &self,
        conns: &[Conn],
        partition: usize,
        owners: &[usize],
    ) -> Option<Dest> {
        let up = |ci: &usize| !matches!(conns[*ci].state, State::Down { .. });
        for &n in owners {
            if self.shards[n] > 1 {
                let s = dkv::hash::shard_of_partition(partition, self.shards[n]);
                if self.by_shard[n][s].iter().any(up) {
                    return Some(Dest::Shard(n, s));
                }
            }
            if self.by_node[n].iter().any(up) {
                return Some(Dest::Node(n));
            }
        }
        None
    }

    /// The operation to send before drawing a new one: the parked one, then those to route
    /// again.
    pub(super) fn take_waiting(&mut self) -> Option<(Op, u64)> {
        self.parked.take().or_else(|| self.redraw.pop_front())
    }

    /// Whether no drawn operation waits anywhere.
    pub(super) fn is_idle(&self) -> bool {
        self.parked.is_none()
            && self.redraw.is_empty()
            && self.pending_node.iter().all(VecDeque::is_empty)
            && self.pending_shard.iter().flatten().all(VecDeque::is_empty)
    }

    /// Operations waiting for node `n` (any of its connections or shards) are drawn again
    /// first: one of its connections failed, and they may have to go to another owner.
    pub(super) fn requeue_node(&mut self, n: usize) {
        let mut waiting: Vec<(Op, u64)> = self.pending_node[n].drain(..).collect();
        for q in self.pending_shard[n].iter_mut() {
            waiting.extend(q.drain(..));
        }
        for op in waiting.into_iter().rev() {
            self.redraw.push_front(op);
        }
    }

    /// Every operation waiting in a queue, queues emptied (to route again by a new map).
    pub(super) fn take_pending(&mut self) -> Vec<(Op, u64)> {
        let mut all: Vec<(Op, u64)> = self.parked.take().into_iter().collect();
        for q in self.pending_node.iter_mut() {
            all.extend(q.drain(..));
        }
        for q in self.pending_shard.iter_mut().flatten() {
            all.extend(q.drain(..));
        }
        all
    }
}

impl Worker {
    /// `--route ring`: take the refresher's newer map, if there is one: retire the
    /// connections to nodes gone from the ring, open connections to nodes new to it (as many
    /// as this thread has to its best-served node, pinned to shards `(thread + i) mod K`),
    /// and rebuild the routing state, keeping its counters and its waiting operations. Also
    /// closes retired connections whose replies are all in.
    pub(super) fn follow_ring(&mut self) {
        let Some(cell) = self.sh.cfg.route.clone() else {
            return;
        };
        for ci in 0..self.conns.len() {
            let c = &self.conns[ci];
            if c.retiring && c.inflight == 0 && c.stream.is_some() {
                let now = self.sh.now_ns();
                self.fail(ci, CODE_CONNECTION_LOST, now);
            }
        }
        let generation = cell.generation();
        if generation == self.route_gen {
            return;
        }
        self.route_gen = generation;
        let route = cell.get();
        for c in self.conns.iter_mut() {
            if !c.retiring && route.node_of(c.addr).is_none() {
                c.retiring = true;
            }
        }
        let mut per_node = vec![0usize; route.addrs.len()];
        for c in self.conns.iter().filter(|c| !c.retiring) {
            if let Some(n) = route.node_of(c.addr) {
                per_node[n] += 1;
            }
        }
        let want = per_node.iter().copied().max().unwrap_or(0).max(1);
        for (n, &have) in per_node.iter().enumerate() {
            if have > 0 {
                continue;
            }
            for i in 0..want {
                let pin = route.shards[n].filter(|&k| k > 1).map(|k| Pin {
                    shard: (self.thread + i) % k,
                    shards: k,
                });
                self.conns.push(Conn::new(route.addrs[n], pin, self.slots));
            }
        }
        let old = self.routing.take();
        let mut routing = Routing::build(&route, &mut self.conns);
        if let Some(mut old) = old {
            // Queued by the old map: drawn again first, and routed by the new one.
            routing.redraw = old.take_pending().into();
            routing.redraw.extend(old.redraw.drain(..));
            routing.to_owner = old.to_owner;
            routing.to_other = old.to_other;
            routing.to_shard = old.to_shard;
        }
        self.routing = Some(routing);
        self.route = Some(route);
    }
}
