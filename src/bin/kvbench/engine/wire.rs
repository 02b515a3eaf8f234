//! Moving bytes: encoding requests into slots, scheduling open-loop requests, flushing,
//! reading and completing replies, publishing progress.

use super::*;

impl Worker {
    /// Encode the current request of slot `si` (a fresh id each time).
    pub(super) fn encode(&mut self, ci: usize, si: u16, now: u64) {
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
        if self.sh.cfg.siblings {
            // Siblings mode (engine docs): a causal GET, then the write with its context.
            match (op, stage) {
                (Op::Get, _) | (_, 0) => enc.causal_get(&mut c.wbuf, id, aux, key),
                (Op::Del, _) => enc.causal_del(&mut c.wbuf, id, aux, key, &c.ctx[si as usize]),
                (Op::Put | Op::Insert | Op::Rmw, _) => {
                    let len = self.sh.cfg.value_size.pick(&mut self.rng);
                    let off = self.rng.below(VALUE_POOL_SLACK as u64) as usize;
                    let value = Value {
                        head: &[],
                        tail: &self.sh.pool[off..off + len],
                    };
                    let ttl = self.sh.cfg.ttl_seconds;
                    enc.causal_put(&mut c.wbuf, id, aux, key, &c.ctx[si as usize], value, ttl);
                }
            }
            return;
        }
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

    pub(super) fn next_write_id(&self) -> u64 {
        let seq = self.sh.write_seq.fetch_add(1, Ordering::Relaxed);
        assert!(seq < 1 << 48, "write sequence exhausted");
        (self.sh.cfg.write_id_nonce as u64) << 48 | seq
    }

    /// Open loop: send every request that is due, as long as a connection has room.
    pub(super) fn schedule(&mut self, now: u64) {
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
    pub(super) fn free_conn(&mut self) -> Option<usize> {
        let n = self.conns.len();
        for k in 0..n {
            let ci = (self.rr + k) % n;
            let c = &self.conns[ci];
            if c.state == State::Ready && !c.retiring && c.inflight < c.slots.len() {
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
    pub(super) fn refill_and_flush(&mut self, now: u64) {
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

    pub(super) fn flush(&mut self, ci: usize) {
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

    /// Read until the socket is drained (edge-triggered), handling replies as they arrive.
    /// The server only sends replies to requests we sent, so this ends.
    pub(super) fn read_all(&mut self, ci: usize) {
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

    pub(super) fn handle_replies(&mut self, ci: usize, now: u64) -> Result<(), Broken> {
        let proto = self.sh.cfg.proto;
        let siblings = self.sh.cfg.siblings;
        let want_seen = self.sh.cfg.check.is_some() || matches!(self.work, Work::Readback { .. });
        loop {
            let c = &mut self.conns[ci];
            let Some((r, n)) = proto::parse_reply(proto, siblings, &c.rbuf[c.rpos..c.rlen])? else {
                return Ok(());
            };
            let (id, outcome) = (r.id, r.outcome);
            let seen = match outcome {
                Outcome::Ok if want_seen => Seen::of(Some(r.value)),
                _ => Seen::Missing,
            };
            // Siblings mode: a causal GET's context and sibling count (the value of a
            // write's or a HELLO's reply is empty, and so is a GET's error).
            let mut found = None;
            if siblings && c.state == State::Ready && !r.value.is_empty() {
                let (ctx, count) = proto::causal_get_body(r.value, outcome == Outcome::Ok)
                    .ok_or_else(|| broken(format!("causal GET reply {id} out of layout")))?;
                self.reply_ctx.clear();
                self.reply_ctx.extend_from_slice(ctx);
                found = Some(count);
            }
            let hello = if c.state == State::Hello {
                HelloInfo::parse(r.value)
            } else {
                None
            };
            c.rpos += n;
            self.last_reply_ns = now;
            self.complete(ci, id, outcome, seen, hello, found, now)?;
        }
    }

    /// Complete request `id` on connection `ci`. `found`: siblings mode, a causal GET's
    /// sibling count (its context is in `reply_ctx`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete(
        &mut self,
        ci: usize,
        id: u32,
        outcome: Outcome,
        seen: Seen,
        hello: Option<HelloInfo>,
        found: Option<usize>,
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
        if let Some(count) = found {
            self.stats.causal_read(count);
        }
        let siblings = self.sh.cfg.siblings;
        if siblings && slot.op != Op::Get && slot.stage == 0 && answered {
            // Siblings mode: the GET half of a write answered; its context goes with the write.
            let c = &mut self.conns[ci];
            let ctx = &mut c.ctx[si as usize];
            ctx.clear();
            ctx.extend_from_slice(&self.reply_ctx);
            c.slots[si as usize].stage = 1;
            self.encode(ci, si, now);
            self.mark_dirty(ci);
            return Ok(());
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

    pub(super) fn flush_progress(&mut self, now: u64) {
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
