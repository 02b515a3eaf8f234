//! The responder side: serving AE_TREE, AE_KEYS, AE_PUSH and AE_STATUS requests
//! ([`AntiEntropy::on_request`]), comparing the initiator's key lists with ours (newest
//! wins; records proved collected are dropped), and applying received records through the
//! hook (also used by the initiator for pulled records).

use super::tracked::Tracked;
use super::wire::{ae_op, bad, sender, Reader, Record, ENTRY_COLLECTABLE, FLAG_REJOINING};
use super::{push_key, AntiEntropy};
use crate::cluster::merkle::{self, FANOUT, LEVELS, SEGMENTS};
use crate::cluster::peer::PeerError;
use crate::hash::partition_of;
use crate::limits::{AE_MESSAGE_BYTES_MAX, PARTITION_COUNT};
use crate::protocol::{message, Status};
use crate::storage::{Applied, Store, StoreError};
use crate::version::Version;
use std::collections::BTreeMap;

/// The message of an OVERLOADED answer to a tree or key-list request while this core's trees
/// are being built (`lifecycle.rs`): the initiator asks again shortly.
const TREES_NOT_READY: &str = "anti-entropy trees are being built; ask again shortly";

/// A segment's key list as received: (segment, [(key, version, collectable)]).
type SegmentList<'a> = (usize, Vec<(&'a [u8], u64, bool)>);

/// What a key of a compared segment needs.
enum Answer {
    /// Our record, read from the store.
    Ours,
    /// This record (a tombstone deleting a record proved collected).
    Record(Record),
    /// Theirs: the initiator pushes it.
    Want,
    /// Siblings mode, states that differ: ours goes to the initiator and theirs comes back
    /// (a digest says nothing of which state is "newer": each side merges the other's).
    Both,
}

/// An AE_KEYS reply being built, bounded in bytes (records and wants together, one item
/// always fits an empty reply, so a record of the largest value still fits a frame) and in
/// count (u16 on the wire).
#[derive(Default)]
struct KeysReply {
    records: Vec<u8>,
    nrec: u16,
    wants: Vec<u8>,
    nwant: u16,
}

impl KeysReply {
    fn fits(&self, extra: usize) -> bool {
        let used = self.records.len() + self.wants.len();
        used == 0 || used + extra <= AE_MESSAGE_BYTES_MAX
    }

    fn add_record(&mut self, rec: &Record) -> bool {
        if self.nrec == u16::MAX || !self.fits(rec.encoded_len()) {
            return false;
        }
        rec.encode(&mut self.records);
        self.nrec += 1;
        true
    }

    fn add_want(&mut self, key: &[u8]) -> bool {
        if self.nwant == u16::MAX || !self.fits(2 + key.len()) {
            return false;
        }
        push_key(&mut self.wants, key);
        self.nwant += 1;
        true
    }
}

impl AntiEntropy {
    /// Serve an anti-entropy request from `from`, appending the reply to `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_request(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        id: u32,
        opc: u8,
        aux: u8,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        self.now_ms = now_ms;
        let before = out.len();
        let r = self.serve(now_ms, store, from, id, opc, aux, body, out);
        if let Err(e) = &r {
            out.truncate(before);
            message::put_error(out, opc, id, e.status(), &e.to_string());
        }
        self.index.stats.bytes_sent += (out.len() - before) as u64;
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn serve(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        id: u32,
        opc: u8,
        aux: u8,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        if aux != 0 {
            return Err(bad(format!("aux must be 0, got 0x{aux:02x}")));
        }
        let mut r = Reader { b: body };
        match opc {
            ae_op::TREE => {
                let p = r.partition()?;
                let from = sender(&mut r, from)?;
                let h = r.u64("the horizon")?;
                let level = r.u8("the level")?;
                if level >= LEVELS {
                    return Err(bad(format!("tree level {level} out of range")));
                }
                let count = r.u16("the node count")? as usize;
                let width = [1, FANOUT, SEGMENTS][level as usize];
                if count > width {
                    return Err(bad(format!("{count} nodes asked at level {level}")));
                }
                let mut idx = Vec::with_capacity(count);
                for _ in 0..count {
                    let i = r.u16("a node index")? as usize;
                    if i >= width {
                        return Err(bad(format!("node {i} out of range at level {level}")));
                    }
                    idx.push(i);
                }
                r.end()?;
                if let Some(why) = self.not_held(p, from) {
                    message::put_error(out, opc, id, Status::Unavailable, &why);
                    return Ok(());
                }
                if !self.trees_ready(now_ms, store, true) {
                    message::put_error(out, opc, id, Status::Overloaded, TREES_NOT_READY);
                    return Ok(());
                }
                self.adopt(p, h);
                self.update_store_horizon(store);
                if level == 0 {
                    self.index.stats.exchanges_served += 1;
                }
                let t = self.index.tree_hashed(p);
                let mut hashes = Vec::with_capacity(count * 8);
                for i in idx {
                    hashes.extend_from_slice(&t.hash(level, i).expect("checked").to_be_bytes());
                }
                message::put_ok(
                    out,
                    ae_op::TREE,
                    id,
                    &[
                        &(p as u16).to_be_bytes(),
                        &self.index.horizons[p].to_be_bytes(),
                        &[level],
                        &(count as u16).to_be_bytes(),
                        &hashes,
                    ],
                );
                Ok(())
            }
            ae_op::KEYS => {
                let p = r.partition()?;
                let from = sender(&mut r, from)?;
                let h = r.u64("the horizon")?;
                let flags = r.u8("the flags")?;
                let count = r.u16("the segment count")? as usize;
                if count > SEGMENTS {
                    return Err(bad(format!("{count} segments")));
                }
                let mut segs: Vec<SegmentList<'_>> = Vec::with_capacity(count);
                for _ in 0..count {
                    let s = r.u16("a segment")? as usize;
                    if s >= SEGMENTS {
                        return Err(bad(format!("segment {s} out of range")));
                    }
                    let n = r.u32("an entry count")? as usize;
                    // Each entry takes at least 12 bytes: bounds n before allocating.
                    if n > r.b.len() / 12 {
                        return Err(bad("entry count larger than the body"));
                    }
                    let mut list = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = r.key()?;
                        let v = r.u64("a version")?;
                        let fl = r.u8("entry flags")?;
                        if fl & !ENTRY_COLLECTABLE != 0 {
                            return Err(bad(format!("entry reserved flag bits 0x{fl:02x}")));
                        }
                        if merkle::segment_of(k) != s || partition_of(k) != p {
                            return Err(bad("key listed in the wrong segment"));
                        }
                        list.push((k, v, fl & ENTRY_COLLECTABLE != 0));
                    }
                    segs.push((s, list));
                }
                r.end()?;
                if flags & !FLAG_REJOINING != 0 {
                    return Err(bad(format!("reserved flag bits 0x{flags:02x}")));
                }
                if let Some(why) = self.not_held(p, from) {
                    message::put_error(out, opc, id, Status::Unavailable, &why);
                    return Ok(());
                }
                if !self.trees_ready(now_ms, store, true) {
                    message::put_error(out, opc, id, Status::Overloaded, TREES_NOT_READY);
                    return Ok(());
                }
                self.adopt(p, h);
                self.update_store_horizon(store);
                let peer_rejoining = flags & FLAG_REJOINING != 0;
                self.answer_keys(now_ms, store, id, p, peer_rejoining, &segs, out);
                Ok(())
            }
            ae_op::PUSH => {
                let p = r.partition()?;
                let from = sender(&mut r, from)?;
                let flags = r.u8("the flags")?;
                if flags & !FLAG_REJOINING != 0 {
                    return Err(bad(format!("reserved flag bits 0x{flags:02x}")));
                }
                let count = r.u16("the record count")? as usize;
                let mut recs = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let rec = Record::decode(&mut r)?;
                    if partition_of(&rec.key) != p {
                        return Err(bad("record of another partition"));
                    }
                    recs.push(rec);
                }
                r.end()?;
                if let Some(why) = self.not_held(p, from) {
                    message::put_error(out, opc, id, Status::Unavailable, &why);
                    return Ok(());
                }
                // Part of an exchange: the trees stay (records apply with or without them).
                self.mark_trees_used(now_ms);
                let trusted = flags & FLAG_REJOINING == 0;
                match self.apply_records(store, &recs, trusted) {
                    Ok(applied) => {
                        message::put_ok(out, ae_op::PUSH, id, &[&(applied as u16).to_be_bytes()])
                    }
                    // The frame was fine; the store refuses writes (the exchange fails).
                    Err(e) => message::put_error(
                        out,
                        ae_op::PUSH,
                        id,
                        Status::StorageError,
                        &e.to_string(),
                    ),
                }
                Ok(())
            }
            ae_op::STATUS => {
                let _routing = r.u16("the routing partition")?;
                let from = sender(&mut r, from)?;
                let count = r.u16("the entry count")? as usize;
                if count > PARTITION_COUNT * crate::limits::REPLICAS_MAX {
                    return Err(bad(format!("{count} status entries")));
                }
                let mut batch = BTreeMap::new();
                for _ in 0..count {
                    let p = r.partition()? as u16;
                    let peer = r.u32("a peer")?;
                    let start = r.u64("a start time")?;
                    batch.insert((p, peer), start);
                }
                r.end()?;
                self.leader_record(from, &batch);
                // Liveness here comes from failures seen: a node failed for longer than the
                // window is excluded; others count as alive.
                let failed = self.failed_since.clone();
                let hs = self.leader_decide(now_ms, &|n| !failed.contains_key(&n));
                let mut b = Vec::with_capacity(2 + hs.len() * 10);
                b.extend_from_slice(&(hs.len() as u16).to_be_bytes());
                for (p, h) in &hs {
                    b.extend_from_slice(&p.to_be_bytes());
                    b.extend_from_slice(&h.to_be_bytes());
                }
                message::put_ok(out, ae_op::STATUS, id, &[&b]);
                self.adopt_horizons(store, &hs);
                Ok(())
            }
            other => Err(PeerError::UnknownOp(other)),
        }
    }

    /// Why this node does not exchange partition `p` with `from` by its ring, if it does
    /// not. Not a malformed frame: while a change spreads, two nodes may hold different
    /// ring versions (a flip seen here before there), so the refusal is UNAVAILABLE and is
    /// not counted as a peer error; the initiator retries by a later ring.
    fn not_held(&self, p: usize, from: u32) -> Option<String> {
        if !self.ring.holds(from, p) || !self.ring.holds(self.me, p) {
            return Some(format!(
                "partition {p} is not held by both node {from} and node {} (ring version {})",
                self.me,
                self.ring.version()
            ));
        }
        None
    }

    /// Apply records through the hook; returns how many became the local record.
    pub(super) fn apply_records(
        &mut self,
        store: &mut dyn Store,
        recs: &[Record],
        trusted: bool,
    ) -> Result<usize, StoreError> {
        let mut t = Tracked {
            store,
            index: &mut self.index,
            trusted,
            guard_answers_stale: false,
            buffered: false,
            lww_causal: self.lww_causal,
        };
        let mut n = 0;
        let limit_ms = self
            .now_ms
            .saturating_add_signed(self.clock_offset_ms.saturating_neg())
            .saturating_add(self.ahead_ms_max);
        for rec in recs {
            if Version(rec.version).physical_ms() > limit_ms {
                t.index.stats.refused_ahead += 1;
                continue;
            }
            if t.apply(rec.as_write())? == Applied::Stored {
                n += 1;
            }
        }
        self.index.stats.keys_repaired += n as u64;
        Ok(n)
    }

    /// A tombstone one above `version`: deletes a record proved collected elsewhere.
    fn drop_record(key: &[u8], version: u64) -> Record {
        Record {
            key: key.to_vec(),
            version: version.saturating_add(1),
            expires_at_ms: 0,
            value: None,
            causal: false,
        }
    }

    /// Add our record of `k` to `reply`: false when the reply is full.
    fn add_ours(reply: &mut KeysReply, store: &mut dyn Store, k: &[u8]) -> bool {
        match store.get(k) {
            Ok(Some(stored)) => reply.add_record(&Record {
                key: k.to_vec(),
                version: stored.version.0,
                expires_at_ms: stored.expires_at_ms,
                value: stored.value,
                causal: stored.causal,
            }),
            _ => true, // compacted away or unreadable: nothing to send
        }
    }

    /// Compare the initiator's key lists with ours (responder side) and answer.
    #[allow(clippy::too_many_arguments)]
    fn answer_keys(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        id: u32,
        p: usize,
        peer_rejoining: bool,
        segs: &[SegmentList<'_>],
        out: &mut Vec<u8>,
    ) {
        let h = self.index.horizons[p];
        let me_rejoining = self.index.rejoining;
        let causal = self.causal;
        let mut reply = KeysReply::default();
        let mut local_drops: Vec<Record> = Vec::new();
        let mut done = 0u16;
        'segments: for (s, theirs) in segs {
            let theirs: BTreeMap<&[u8], (u64, bool)> =
                theirs.iter().map(|&(k, v, c)| (k, (v, c))).collect();
            let ours: Vec<(Vec<u8>, u64, bool)> = match self.index.trees[p].as_deref() {
                Some(t) => t
                    .entries(*s)
                    .map(|e| {
                        (
                            e.key.to_vec(),
                            e.version,
                            e.version < h && e.collectable(now_ms),
                        )
                    })
                    .collect(),
                None => Vec::new(),
            };
            let ours_map: BTreeMap<&[u8], (u64, bool)> =
                ours.iter().map(|(k, v, c)| (&k[..], (*v, *c))).collect();
            let mut keys: Vec<&[u8]> = theirs.keys().chain(ours_map.keys()).copied().collect();
            keys.sort_unstable();
            keys.dedup();
            for k in keys {
                // What this key needs: nothing, our record, or theirs.
                let answer = match (theirs.get(k), ours_map.get(k)) {
                    (Some(&(tv, _)), Some(&(ov, _))) if tv == ov => None,
                    // Siblings mode: the tree versions of causal states with siblings are
                    // digests (of an empty state: its record's version, a tombstone), which
                    // say nothing of which state is newer: each side takes the other's.
                    (Some(_), Some(_)) if causal => Some(Answer::Both),
                    // A collectable entry we lack was collected here; a rejoining peer's
                    // records are not authoritative (and below the horizon we cannot tell a
                    // digest's age): its own exchanges, once rejoined, bring what it has.
                    (Some(&(_, collectable)), None) if causal => {
                        (!collectable && !peer_rejoining).then_some(Answer::Want)
                    }
                    (Some(&(tv, _)), Some(&(ov, _))) if tv > ov => Some(Answer::Want),
                    (Some(_), Some(_)) | (None, Some(_)) => {
                        let (mut ov, collectable) = ours_map[k];
                        if causal {
                            // A digest is no age: the rejoin rule below needs the record's.
                            ov = store.version_of(k).map_or(u64::MAX, |v| v.0);
                        }
                        let absent_there = !theirs.contains_key(k);
                        if absent_there && collectable {
                            None
                        } else if absent_there && ov < h && me_rejoining && !peer_rejoining {
                            local_drops.push(Self::drop_record(k, ov));
                            None
                        } else {
                            Some(Answer::Ours)
                        }
                    }
                    (Some(&(tv, collectable)), None) => match store.version_of(k) {
                        // Our tree may have swept a collectable record the store still holds:
                        // when it is newer than theirs, it is the answer.
                        Some(sv) if sv.0 > tv => Some(Answer::Ours),
                        Some(sv) if sv.0 == tv => None,
                        _ if collectable => None,
                        _ if tv < h && peer_rejoining && !me_rejoining => {
                            Some(Answer::Record(Self::drop_record(k, tv)))
                        }
                        _ => Some(Answer::Want),
                    },
                    (None, None) => unreachable!("every key comes from one of the lists"),
                };
                let added = match answer {
                    None => true,
                    Some(Answer::Want) => reply.add_want(k),
                    Some(Answer::Record(rec)) => reply.add_record(&rec),
                    Some(Answer::Ours) => Self::add_ours(&mut reply, store, k),
                    Some(Answer::Both) => Self::add_ours(&mut reply, store, k) && reply.add_want(k),
                };
                if !added {
                    // The reply is full: this segment is asked again (with the lists updated
                    // by what this reply moves), so every reply makes progress.
                    break 'segments;
                }
            }
            done += 1;
        }
        let KeysReply {
            records,
            nrec,
            wants,
            nwant,
        } = reply;
        if !local_drops.is_empty() {
            // Best effort: a failing store reports itself through its own writes.
            if let Ok(n) = self.apply_records(store, &local_drops, true) {
                self.index.stats.keys_dropped += n as u64;
                self.index.stats.keys_repaired -= n as u64;
            }
        }
        self.index.stats.keys_sent += u64::from(nrec);
        let flags = if me_rejoining { FLAG_REJOINING } else { 0 };
        message::put_ok(
            out,
            ae_op::KEYS,
            id,
            &[
                &(p as u16).to_be_bytes(),
                &h.to_be_bytes(),
                &[flags],
                &done.to_be_bytes(),
                &nrec.to_be_bytes(),
                &records,
                &nwant.to_be_bytes(),
                &wants,
            ],
        );
    }
}
