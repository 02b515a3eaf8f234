//! The initiator side: rounds (one exchange with every other replica of every partition
//! held, a bounded number in flight), walking the trees down with AE_TREE, comparing key
//! lists with AE_KEYS, pushing what the peer wants with AE_PUSH, completing exchanges, and
//! reporting completed exchanges to the leader (AE_STATUS). See the parent module's doc
//! ("Rounds and exchanges").

use super::lifecycle::Trees;
use super::wire::{ae_op, bad, Reader, Record, ENTRY_COLLECTABLE, FLAG_REJOINING};
use super::{decode_status_reply, push_key, put_status_request, put_tree_request, AntiEntropy};
use crate::cluster::merkle::{PartitionTree, FANOUT, LEVELS, SEGMENTS};
use crate::cluster::peer::PeerError;
use crate::hash::partition_of;
use crate::limits::{
    AE_BUSY_RETRY_MS, AE_BUSY_WAIT_MS_MAX, AE_EXCHANGES_IN_FLIGHT_MAX, AE_EXCHANGE_STEPS_MAX,
    AE_MESSAGE_BYTES_MAX, AE_ROUND_BYTES_MAX, AE_ROUND_KEYS_MAX, PARTITION_COUNT,
};
use crate::protocol::{frame, FrameRef, Status, RESPONSE_BIT};
use crate::storage::Store;
use std::collections::VecDeque;

pub(super) enum Phase {
    /// Waiting for hashes of `asked` nodes at `level`.
    Tree { level: u8, asked: Vec<u16> },
    /// Waiting for the answer to our key lists of `asked` segments.
    Keys { asked: Vec<u16> },
    /// Waiting for the ack of a push.
    Push,
}

pub(super) struct Exchange {
    pub(super) partition: usize,
    pub(super) peer: u32,
    pub(super) start_ms: u64,
    pub(super) deadline_ms: u64,
    pub(super) phase: Phase,
    /// Differing segments not yet compared by key.
    pub(super) pending: VecDeque<u16>,
    /// Keys the peer wants from us.
    pub(super) wants: VecDeque<Vec<u8>>,
    pub(super) steps: u32,
    /// A partition move's copy (see `transfer.rs`), not part of a round.
    pub(super) transfer: bool,
    /// The peer answered OVERLOADED (its trees are being built, `lifecycle.rs`): when it
    /// first did (local ms), and when the request goes again. No request is in flight.
    pub(super) busy_since_ms: Option<u64>,
    pub(super) resend_at_ms: Option<u64>,
}

pub(super) struct Round {
    pub(super) queue: VecDeque<(usize, u32)>,
    /// Every exchange with every other replica completed.
    pub(super) full: bool,
    /// No exchange failed (peers known dead were skipped, not failed).
    pub(super) clean: bool,
    /// Partitions with at least one completed exchange in this round.
    pub(super) synced: Vec<bool>,
    pub(super) keys_moved: u64,
    pub(super) bytes_moved: u64,
}

impl AntiEntropy {
    pub(super) fn start_round(&mut self, now_ms: u64, store: &mut dyn Store) {
        // Rounds start `interval` apart, or back to back when a round takes longer.
        self.next_round_ms = self
            .next_round_ms
            .max(now_ms)
            .saturating_add(self.interval_ms);
        let mut queue = VecDeque::new();
        // A partition on its way to a pending owner reaches it through the move's copy
        // (`transfer.rs`), at the move's byte rate. A round's exchange with it, from either
        // side, would move the whole partition at once and bypass that rate, so the round
        // leaves such pairs out, and is not full: the pairs have not exchanged.
        let mut skipped_moving = false;
        let state = self.ring.state();
        for &p in &self.held_list {
            let pending = |n: u32| state.pending(p).any(|m| m == n);
            let moving_to_me = pending(self.me);
            for peer in self.ring.holders(p) {
                if peer == self.me {
                    continue;
                }
                if moving_to_me || pending(peer) {
                    skipped_moving = true;
                    continue;
                }
                queue.push_back((p, peer));
            }
        }
        self.index.stats.rounds += 1;
        self.round = Some(Round {
            queue,
            full: !skipped_moving,
            clean: true,
            synced: vec![false; PARTITION_COUNT],
            keys_moved: 0,
            bytes_moved: 0,
        });
        // Its exchanges start once the trees are built (`dispatch`).
        self.trees_ready(now_ms, store, false);
    }

    pub(super) fn dispatch(&mut self, now_ms: u64, alive: &dyn Fn(u32) -> bool) {
        if self.trees != Trees::Live {
            return; // the round waits for its trees (built a step a tick)
        }
        while self.round_exchanges() < AE_EXCHANGES_IN_FLIGHT_MAX {
            let Some(round) = self.round.as_mut() else {
                return;
            };
            let Some((p, peer)) = round.queue.pop_front() else {
                return;
            };
            if !alive(peer) {
                round.full = false;
                continue;
            }
            self.open_exchange(now_ms, p, peer, false);
        }
    }

    /// Start an exchange of partition `p` with `peer`: the root's hash asked (AE_TREE level
    /// 0). `transfer`: a partition move's copy rather than a round's exchange, which asks
    /// for every segment's hash at once (level 2): a pending owner differs from its source
    /// in most segments, and walking down from the root would cost two more round trips per
    /// partition to learn it (the request is 2 KiB, the reply 8 KiB).
    pub(super) fn open_exchange(&mut self, now_ms: u64, p: usize, peer: u32, transfer: bool) {
        self.index.tree_hashed(p);
        let id = self.alloc_id();
        let mut f = Vec::new();
        let (level, asked): (u8, Vec<u16>) = if transfer {
            (LEVELS - 1, (0..SEGMENTS as u16).collect())
        } else {
            (0, vec![0])
        };
        put_tree_request(
            &mut f,
            id,
            p,
            self.me,
            self.index.horizons[p],
            level,
            &asked,
        );
        self.send(peer, f);
        self.exchanges.insert(
            id,
            Exchange {
                partition: p,
                peer,
                // On the cluster's clock: the leader compares starts reported by different
                // nodes (see `complete`).
                start_ms: self.cluster_ms(now_ms),
                deadline_ms: now_ms.saturating_add(self.timeout_ms),
                phase: Phase::Tree { level, asked },
                pending: VecDeque::new(),
                wants: VecDeque::new(),
                steps: 0,
                transfer,
                busy_since_ms: None,
                resend_at_ms: None,
            },
        );
    }

    /// Ask again the peers that answered OVERLOADED whose wait is over.
    pub(super) fn resend_waiting(&mut self, now_ms: u64, store: &mut dyn Store) {
        let due: Vec<u32> = self
            .exchanges
            .iter()
            .filter(|(_, x)| x.resend_at_ms.is_some_and(|t| t <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let mut x = self.exchanges.remove(&id).expect("listed above");
            x.resend_at_ms = None;
            self.advance(now_ms, store, x);
        }
    }

    /// The peer's trees are being built (it answered OVERLOADED to a tree request): keep
    /// `x` and ask again soon, unless it has waited [`AE_BUSY_WAIT_MS_MAX`] already.
    fn wait_for_peer_trees(&mut self, now_ms: u64, id: u32, mut x: Exchange) {
        let since = *x.busy_since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) > AE_BUSY_WAIT_MS_MAX {
            log::warn!(
                "anti-entropy: node {}'s trees of partition {} not ready after {} ms",
                x.peer,
                x.partition,
                now_ms - since
            );
            self.exchange_failed(&x);
            return;
        }
        let at = now_ms.saturating_add(AE_BUSY_RETRY_MS);
        x.resend_at_ms = Some(at);
        x.deadline_ms = at.saturating_add(self.timeout_ms);
        self.exchanges.insert(id, x);
    }

    /// Exchanges of the running round in flight (partition moves' copies aside).
    pub(super) fn round_exchanges(&self) -> usize {
        self.exchanges.values().filter(|x| !x.transfer).count()
    }

    /// An exchange failed: count it, and mark its round not full, or its move to retry.
    pub(super) fn exchange_failed(&mut self, x: &Exchange) {
        self.index.stats.exchanges_failed += 1;
        if x.transfer {
            self.transfer_failed(x.partition);
        } else if let Some(r) = self.round.as_mut() {
            r.full = false;
            r.clean = false;
        }
    }

    pub(super) fn fail_exchange(&mut self, id: u32) {
        if let Some(x) = self.exchanges.remove(&id) {
            self.exchange_failed(&x);
        }
    }

    pub(super) fn finish_round_if_done(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        alive: &dyn Fn(u32) -> bool,
        leader: u32,
    ) {
        let done =
            matches!(&self.round, Some(r) if r.queue.is_empty()) && self.round_exchanges() == 0;
        if done {
            let r = self.round.take().expect("checked");
            if r.full {
                self.index.stats.full_rounds += 1;
                self.index.stats.last_full_round_ms = now_ms;
            }
            // Rejoined: every partition exchanged with at least one live replica and nothing
            // failed (a replica that stays dead must not keep this node unreadable).
            let rejoined = r.full || (r.clean && self.held_list.iter().all(|&p| r.synced[p]));
            if rejoined {
                if self.index.rejoining {
                    log::info!(
                        "node {}: rejoined through a full anti-entropy round",
                        self.me
                    );
                }
                self.index.rejoining = false;
            } else if self.index.rejoining {
                self.next_round_ms = self.next_round_ms.min(now_ms.saturating_add(self.retry_ms));
            }
        }
        // Report completed exchanges to the leader (at most one report in flight); a shard
        // that forwards its reports leaves them for the membership shard.
        if !self.forwards_reports
            && self.status_in_flight.is_none()
            && self.round.is_none()
            && !self.unreported.is_empty()
        {
            let batch = std::mem::take(&mut self.unreported);
            if leader == self.me {
                self.leader_record(self.me, &batch);
                let hs = self.leader_decide(now_ms, alive);
                self.adopt_horizons(store, &hs);
            } else if alive(leader) {
                let id = self.alloc_id();
                let mut f = Vec::new();
                put_status_request(&mut f, id, self.me, &batch);
                self.send(leader, f);
                self.status_in_flight = Some((id, batch, now_ms.saturating_add(self.timeout_ms)));
            } else {
                self.unreported = batch;
            }
        }
    }

    /// A reply from `from` to one of our anti-entropy requests.
    pub fn on_reply(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        f: &FrameRef<'_>,
        alive: &dyn Fn(u32) -> bool,
    ) {
        self.now_ms = now_ms;
        let opc = f.op & !RESPONSE_BIT;
        if opc == ae_op::STATUS {
            if self.status_in_flight.as_ref().is_none_or(|s| s.0 != f.id) {
                return;
            }
            let (_, batch, _) = self.status_in_flight.take().expect("checked");
            match decode_status_reply(f) {
                Ok(hs) => self.adopt_horizons(store, &hs),
                Err(_) => {
                    for (k, v) in batch {
                        self.unreported.entry(k).or_insert(v);
                    }
                }
            }
            return;
        }
        let Some(mut x) = self.exchanges.remove(&f.id) else {
            return; // late or unknown
        };
        if x.resend_at_ms.is_some() {
            // Answered already (OVERLOADED): a second reply to one request is not ours.
            self.exchanges.insert(f.id, x);
            return;
        }
        let tree_step = matches!(x.phase, Phase::Tree { .. });
        if x.peer == from && f.aux == Status::Overloaded as u8 && tree_step {
            self.wait_for_peer_trees(now_ms, f.id, x);
            return;
        }
        if x.peer != from || f.aux != Status::Ok as u8 {
            self.exchange_failed(&x);
            return;
        }
        x.steps += 1;
        let r = match (&x.phase, opc) {
            (Phase::Tree { level, asked }, ae_op::TREE) => {
                let (level, asked) = (*level, asked.clone());
                self.on_tree_reply(store, &mut x, level, &asked, f.body)
            }
            (Phase::Keys { asked }, ae_op::KEYS) => {
                let asked = asked.clone();
                self.on_keys_reply(store, &mut x, &asked, f.body)
            }
            (Phase::Push, ae_op::PUSH) => {
                if f.body.len() == 2 {
                    Ok(())
                } else {
                    Err(bad("PUSH reply is not 2 bytes"))
                }
            }
            _ => Err(bad("reply does not match the exchange")),
        };
        if r.is_err() || x.steps > AE_EXCHANGE_STEPS_MAX {
            self.exchange_failed(&x);
            return;
        }
        if x.transfer && self.throttled(now_ms) {
            // Over the move's byte rate: the next step waits (see `transfer.rs`).
            self.park(x);
            return;
        }
        self.advance(now_ms, store, x);
        self.dispatch(now_ms, alive);
    }

    fn on_tree_reply(
        &mut self,
        store: &mut dyn Store,
        x: &mut Exchange,
        level: u8,
        asked: &[u16],
        body: &[u8],
    ) -> Result<(), PeerError> {
        let mut r = Reader { b: body };
        let p = r.partition()?;
        let h = r.u64("the horizon")?;
        let l = r.u8("the level")?;
        let count = r.u16("the count")? as usize;
        if p != x.partition || l != level || count != asked.len() {
            return Err(bad("TREE reply does not match its request"));
        }
        let mut theirs = Vec::with_capacity(count);
        for _ in 0..count {
            theirs.push(r.u64("a hash")?);
        }
        r.end()?;
        self.adopt(p, h);
        self.update_store_horizon(store);
        let t = self.index.tree_hashed(p);
        let differing: Vec<u16> = asked
            .iter()
            .zip(&theirs)
            .filter(|(&i, &hh)| t.hash(level, i as usize) != Some(hh))
            .map(|(&i, _)| i)
            .collect();
        if level + 1 < LEVELS {
            let next: Vec<u16> = differing
                .iter()
                .flat_map(|&i| (0..FANOUT as u16).map(move |c| i * FANOUT as u16 + c))
                .collect();
            x.phase = Phase::Tree {
                level: level + 1,
                asked: next,
            };
        } else {
            if x.transfer {
                self.transfer_segments(p, differing.len());
            }
            x.pending.extend(differing);
            x.phase = Phase::Push; // placeholder: advance() picks the next step
        }
        Ok(())
    }

    fn on_keys_reply(
        &mut self,
        store: &mut dyn Store,
        x: &mut Exchange,
        asked: &[u16],
        body: &[u8],
    ) -> Result<(), PeerError> {
        let mut r = Reader { b: body };
        let p = r.partition()?;
        let h = r.u64("the horizon")?;
        let flags = r.u8("the flags")?;
        let done = r.u16("the done count")? as usize;
        if p != x.partition || done > asked.len() || flags & !FLAG_REJOINING != 0 {
            return Err(bad("KEYS reply does not match its request"));
        }
        let nrec = r.u16("the record count")? as usize;
        let mut recs = Vec::with_capacity(nrec.min(1024));
        for _ in 0..nrec {
            let rec = Record::decode(&mut r)?;
            if partition_of(&rec.key) != p {
                return Err(bad("record of another partition"));
            }
            recs.push(rec);
        }
        let nwant = r.u16("the want count")? as usize;
        let mut wants = Vec::with_capacity(nwant.min(1024));
        for _ in 0..nwant {
            let k = r.key()?;
            if partition_of(k) != p {
                return Err(bad("wanted key of another partition"));
            }
            wants.push(k.to_vec());
        }
        r.end()?;
        self.adopt(p, h);
        self.update_store_horizon(store);
        let trusted = flags & FLAG_REJOINING == 0;
        let bytes: usize = recs.iter().map(Record::encoded_len).sum();
        let drops = recs
            .iter()
            .filter(|r| {
                r.value.is_none()
                    && self
                        .index
                        .tree(p)
                        .and_then(|t| t.get(&r.key))
                        .is_some_and(|e| e.version.saturating_add(1) == r.version && !e.tombstone)
            })
            .count();
        let refused_before = self.index.stats.refused_ahead;
        let n = self
            .apply_records(store, &recs, trusted)
            .map_err(|e| bad(format!("storage: {e}")))?;
        if x.transfer && self.index.stats.refused_ahead > refused_before {
            // A move's copy is whole only if every record the source sent is held here: a
            // record refused as ahead of this node's clock (which may be the wrong one) is
            // not, and a copy reported without it would flip the partition to an owner
            // missing acknowledged writes (kvsim seed 768: N = 1, this node measured its
            // clock against a far one). The copy fails and is retried.
            return Err(bad(format!(
                "partition {p}: a record ahead of this node's clock was refused: copy not whole"
            )));
        }
        // A pulled record older than what the store holds (a tombstone swept from our tree,
        // say): push ours back, newest wins on both sides.
        for rec in &recs {
            if store
                .version_of(&rec.key)
                .is_some_and(|v| v.0 > rec.version)
            {
                x.wants.push_back(rec.key.clone());
            }
        }
        let dropped = drops.min(n);
        self.index.stats.keys_dropped += dropped as u64;
        self.index.stats.keys_repaired -= dropped as u64;
        if x.transfer {
            self.transfer_progress(p, recs.len() as u64, bytes as u64, done as u32);
        } else if let Some(round) = self.round.as_mut() {
            round.keys_moved += recs.len() as u64;
            round.bytes_moved += bytes as u64;
        }
        for _ in 0..done {
            x.pending.pop_front();
        }
        x.wants.extend(wants);
        x.phase = Phase::Push;
        Ok(())
    }

    /// Send the exchange's next request, or finish it.
    pub(super) fn advance(&mut self, now_ms: u64, store: &mut dyn Store, mut x: Exchange) {
        // A move's copy has its own bound (the byte rate), not the round's.
        let over_budget = !x.transfer
            && self.round.as_ref().is_some_and(|r| {
                r.keys_moved >= AE_ROUND_KEYS_MAX || r.bytes_moved >= AE_ROUND_BYTES_MAX
            });
        if over_budget {
            self.exchange_failed(&x);
            return;
        }
        let p = x.partition;
        let h = self.index.horizons[p];
        let rejoining = if self.index.rejoining {
            FLAG_REJOINING
        } else {
            0
        };
        let id = self.alloc_id();
        let mut f = Vec::new();
        if let Phase::Tree { level, asked } = &x.phase {
            if asked.is_empty() {
                return self.complete(x);
            }
            put_tree_request(&mut f, id, p, self.me, h, *level, asked);
        } else if !x.wants.is_empty() {
            // Push what the peer wants, up to a message's worth.
            let mut recs = Vec::new();
            let mut buf = Vec::new();
            while let Some(k) = x.wants.front() {
                let rec = match store.get(k) {
                    Ok(Some(s)) => Record {
                        key: k.clone(),
                        version: s.version.0,
                        expires_at_ms: s.expires_at_ms,
                        value: s.value,
                        causal: s.causal,
                    },
                    _ => {
                        x.wants.pop_front();
                        continue;
                    }
                };
                if !buf.is_empty() && buf.len() + rec.encoded_len() > AE_MESSAGE_BYTES_MAX {
                    break;
                }
                rec.encode(&mut buf);
                recs.push(());
                x.wants.pop_front();
                if recs.len() == u16::MAX as usize {
                    break;
                }
            }
            if recs.is_empty() {
                return self.advance_keys(now_ms, x, id, h, rejoining);
            }
            self.index.stats.keys_sent += recs.len() as u64;
            if x.transfer {
                // (the bytes a copy sends back are few: keys the source holds older)
            } else if let Some(r) = self.round.as_mut() {
                r.keys_moved += recs.len() as u64;
                r.bytes_moved += buf.len() as u64;
            }
            frame::put_frame(
                &mut f,
                ae_op::PUSH,
                0,
                id,
                &[
                    &(p as u16).to_be_bytes(),
                    &self.me.to_be_bytes(),
                    &[rejoining],
                    &(recs.len() as u16).to_be_bytes(),
                    &buf,
                ],
            );
            x.phase = Phase::Push;
        } else {
            return self.advance_keys(now_ms, x, id, h, rejoining);
        }
        x.deadline_ms = now_ms.saturating_add(self.timeout_ms);
        let peer = x.peer;
        self.exchanges.insert(id, x);
        self.send(peer, f);
    }

    fn advance_keys(&mut self, now_ms: u64, mut x: Exchange, id: u32, h: u64, flags: u8) {
        if x.pending.is_empty() {
            return self.complete(x);
        }
        let p = x.partition;
        // A segment whose list alone exceeds a message (tens of thousands of keys in one
        // 1/262,144th of the key space) is not compared: the exchange cannot complete.
        let too_large =
            |s: &u16, t: &PartitionTree| t.segment_bytes(*s as usize) > AE_MESSAGE_BYTES_MAX;
        if x.pending
            .front()
            .is_some_and(|s| too_large(s, self.index.tree_hashed(p)))
        {
            log::warn!("anti-entropy: partition {p} segment too large to compare");
            self.exchange_failed(&x);
            return;
        }
        let tree = self.index.tree_hashed(p);
        let mut body = Vec::new();
        let mut asked = Vec::new();
        for &s in &x.pending {
            let bytes = tree.segment_bytes(s as usize);
            // A list is 14 + key bytes per entry in the tree, 11 + key bytes on the wire.
            if !asked.is_empty() && body.len() + bytes > AE_MESSAGE_BYTES_MAX {
                break;
            }
            body.extend_from_slice(&s.to_be_bytes());
            let n_at = body.len();
            body.extend_from_slice(&0u32.to_be_bytes());
            let mut n = 0u32;
            for e in tree.entries(s as usize) {
                push_key(&mut body, e.key);
                body.extend_from_slice(&e.version.to_be_bytes());
                body.push(if e.version < h && e.collectable(now_ms) {
                    ENTRY_COLLECTABLE
                } else {
                    0
                });
                n += 1;
            }
            body[n_at..n_at + 4].copy_from_slice(&n.to_be_bytes());
            asked.push(s);
        }
        let mut f = Vec::new();
        frame::put_frame(
            &mut f,
            ae_op::KEYS,
            0,
            id,
            &[
                &(p as u16).to_be_bytes(),
                &self.me.to_be_bytes(),
                &h.to_be_bytes(),
                &[flags],
                &(asked.len() as u16).to_be_bytes(),
                &body,
            ],
        );
        x.phase = Phase::Keys { asked };
        x.deadline_ms = now_ms.saturating_add(self.timeout_ms);
        let peer = x.peer;
        self.exchanges.insert(id, x);
        self.send(peer, f);
    }

    fn complete(&mut self, x: Exchange) {
        self.index.stats.exchanges += 1;
        if x.transfer {
            self.transfer_copied(x.partition, x.peer);
        }
        if let Some(r) = self.round.as_mut() {
            r.synced[x.partition] = true;
        }
        if !self.clock_measured {
            // Its start is on a clock not yet measured against the cluster's: it may run
            // minutes ahead. The data moved; the leader hears of the next exchange instead.
            return;
        }
        let e = self
            .unreported
            .entry((x.partition as u16, x.peer))
            .or_insert(x.start_ms);
        *e = (*e).max(x.start_ms);
    }
}
