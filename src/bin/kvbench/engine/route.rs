//! Where an operation goes: the per-shard queues of shard-aware connections, and the ring
//! routing state (which connection of which owner node takes a key).

use super::*;

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
    /// Requests the thread keeps in flight: `--pipeline` × its connections.
    pub(super) budget: usize,
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
    /// An operation drawn while no connection had room for it: sent first next time.
    pub(super) parked: Option<(Op, u64)>,
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
pub(super) enum Pick {
    /// This connection: to an owner (`owner`), pinned to the key's shard there (`shard`).
    Conn { ci: usize, owner: bool, shard: bool },
    /// Not now: an owner's connection is busy or still connecting.
    Wait,
}
