//! Drawing and issuing operations: the next operation for a connection, shard queues, ring
//! routing.

use super::*;

impl Worker {
    /// The next operation of this thread's work, or `None` when it is done.
    pub(super) fn next_op(&mut self) -> Option<(Op, u64)> {
        if let Some(op) = self.routing.as_mut().and_then(Routing::take_waiting) {
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
    pub(super) fn next_for(&mut self, ci: usize) -> Next {
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
    pub(super) fn issue(&mut self, ci: usize, start_ns: u64, now: u64) -> bool {
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
    pub(super) fn issue_op(&mut self, ci: usize, op: Op, key: u64, start_ns: u64, now: u64) {
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

    /// The connection for a request on key `key`: to the first owner that has a connection
    /// up, a ready one with a free slot, pinned to the key's shard there when the thread has
    /// a live one (else any of the owner's); `Wait` while such an owner's chosen connections
    /// are all busy or still connecting; any ready connection with room when no owner has one
    /// up.
    pub(super) fn pick(&mut self, key: u64) -> Pick {
        let Some(route) = self.route.as_ref() else {
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
                        // A node known to have one shard serves every key on it.
                        shard: route.shards[node] == Some(1),
                    };
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
    pub(super) fn issue_routed(&mut self, start_ns: u64, now: u64) -> Option<bool> {
        let Some((op, key)) = self.next_op() else {
            self.issuing = false;
            return Some(false);
        };
        match self.pick(key) {
            Pick::Conn { ci, owner, shard } => {
                self.issue_routed_op(ci, op, key, owner, shard, start_ns, now);
                Some(true)
            }
            Pick::Wait => {
                self.routing.as_mut().expect("routing state").parked = Some((op, key));
                None
            }
        }
    }

    /// Send routed `op` on `ci`, counted as to an owner (`owner`) and on its shard (`shard`).
    #[allow(clippy::too_many_arguments)]
    fn issue_routed_op(
        &mut self,
        ci: usize,
        op: Op,
        key: u64,
        owner: bool,
        shard: bool,
        start_ns: u64,
        now: u64,
    ) {
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
    }

    /// Closed loop under `--route ring`: top up every ready connection to a ring node to
    /// `--pipeline` requests, as the unrouted loop tops up each connection: from its queue of
    /// operations drawn earlier for it, then by drawing (see [`Worker::next_routed`]). A
    /// connection that gets its replies together so sends its next requests together, the
    /// way a pipelining client does; topping up whichever connection had room instead spreads
    /// each batch over every owner and leaves both sides a system call per few requests.
    pub(super) fn refill_routed(&mut self, now: u64) {
        for ci in 0..self.conns.len() {
            loop {
                let c = &self.conns[ci];
                if !self.issuing
                    || c.state != State::Ready
                    || c.retiring
                    || c.node.is_none()
                    || c.inflight >= self.pipeline
                {
                    break;
                }
                let (op, key, owner, shard) = match self.next_routed(ci) {
                    Routed::Op(op, key, owner, shard) => (op, key, owner, shard),
                    Routed::NotNow => break,
                    Routed::Done => {
                        self.issuing = false;
                        break;
                    }
                };
                self.issue_routed_op(ci, op, key, owner, shard, now, now);
            }
        }
    }

    /// The next operation for connection `ci` (to ring node `n`, with room), with whether `n`
    /// owns its key and whether `ci` is known to reach the key's shard there: one queued for
    /// `ci`'s destination, or the next drawn whose key `n` owns (on `ci`'s shard, when the node
    /// has several and `ci` is pinned to one). An operation drawn for other owners waits in
    /// the queue of the first of them with a connection up ([`Routing::dest_of`]); when that
    /// queue is full `ci` gets nothing now, and a key no owner has a connection up for goes on
    /// `ci` (the node forwards it).
    fn next_routed(&mut self, ci: usize) -> Routed {
        // Both taken out for the draw (which needs `self`), and put back below.
        let mut r = self.routing.take().expect("routing state");
        let route = self.route.take().expect("a route with routing state");
        let found = (|| {
            if let Work::Mix {
                requests: Some(limit),
                ..
            } = self.work
            {
                if self.issued >= limit {
                    return Routed::Done;
                }
            }
            let Some(n) = self.conns[ci].node else {
                return Routed::NotNow;
            };
            let pin_shard = self.conns[ci]
                .pin
                .filter(|p| p.shards == r.shards[n] && r.shards[n] > 1)
                .map(|p| p.shard);
            // An unpinned connection reaches the key's shard when the node has only one.
            let one_shard = route.shards[n] == Some(1);
            if let Some(s) = pin_shard {
                if let Some((op, key)) = r.pending_shard[n][s].pop_front() {
                    return Routed::Op(op, key, true, true);
                }
            }
            if let Some((op, key)) = r.pending_node[n].pop_front() {
                return Routed::Op(op, key, true, one_shard);
            }
            // Each round returns or queues one operation where there is room, so this ends
            // after at most (destinations × PENDING_OPS_MAX) rounds.
            loop {
                // `next_op` draws the routing state's waiting operations first, but that
                // state is taken out here: drawn from it directly.
                let Some((op, key)) = r.take_waiting().or_else(|| self.next_op()) else {
                    return if r.is_idle() {
                        Routed::Done
                    } else {
                        Routed::NotNow
                    };
                };
                let (partition, owners) = route.route_of(key, &mut r.scratch);
                if owners.contains(&n) {
                    let s = dkv::hash::shard_of_partition(partition, r.shards[n]);
                    match pin_shard {
                        None => return Routed::Op(op, key, true, one_shard),
                        Some(p) if p == s => return Routed::Op(op, key, true, true),
                        // Another shard of this node, where this thread has a live connection.
                        Some(_) => {}
                    }
                }
                match r.dest_of(&self.conns, partition, owners) {
                    Some(dest) if r.queue(dest).len() < PENDING_OPS_MAX => {
                        r.queue(dest).push_back((op, key));
                    }
                    // Its owners' connections are behind: `ci` waits for them (the operation
                    // is drawn again first), as a node that owns few keys leaves its
                    // connections idle.
                    Some(_) => {
                        r.redraw.push_front((op, key));
                        return Routed::NotNow;
                    }
                    // No owner has a connection up: the node at hand forwards it.
                    None => return Routed::Op(op, key, owners.contains(&n), false),
                }
            }
        })();
        self.routing = Some(r);
        self.route = Some(route);
        found
    }
}
