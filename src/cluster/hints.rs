//! Hinted handoff: writes a replica missed, kept for it and delivered when it is back.
//!
//! A [`HintQueue`] belongs to one shard (the shard whose coordinator emitted the hints and
//! whose peer links carry their delivery). Per target node it keeps a FIFO of writes, bounded
//! by count ([`HINTS_PER_TARGET_MAX`]) and by key+value bytes ([`HINT_BYTES_PER_TARGET_MAX`]);
//! on overflow the *oldest* hint is dropped and counted (newer writes of a key supersede older
//! ones anyway, and anti-entropy repairs what hints lose).
//!
//! Delivery: while the membership view holds a target alive, [`HintQueue::poll_delivery`]
//! hands out REPLICATE frames (aux [`peer::AUX_HINT`]) for up to [`HINT_DELIVERY_WINDOW`]
//! hints at a time, oldest first, with request ids `HINT_ID_BIT | (seq & 0x7FFF_FFFF)`. An
//! acknowledgement (applied or stale: either way the replica holds the write or newer) removes
//! the hint; a refusal or no answer within the resend timeout puts it back in line.
//!
//! Durability goes through the narrow [`HintLog`] interface: an append-only sequence of
//! opaque records that can be synced, replayed at start, and replaced wholesale (compaction).
//! Records (the log implementation frames and checksums them):
//!
//! ```text
//! ADD   | 1 u8 | target u32 | seq u64 | version u64 | expires at ms u64 | flags u8 (bit 0 tombstone, bit 1 causal) |
//!       | key len u16 | key | value (rest) |
//! DONE  | 2 u8 | target u32 | seq u64 |        (delivered or dropped)
//! ```
//!
//! [`MemoryHintLog`] keeps records in memory (tests, nodes without a data directory);
//! [`super::hintfile::FileHintLog`] keeps them in a file. The log is replaced by the live ADD
//! records at open and whenever it grows past twice their size plus [`HINT_LOG_SLACK_BYTES`],
//! so its size stays bounded by the queue bounds. The caller syncs it every
//! [`crate::limits::HINT_SYNC_INTERVAL_MS`] at most: a crash loses at most the hints of that
//! last interval, which anti-entropy repairs.

use super::coordinator::OwnedWrite;
use super::peer::{self, WriteAck, HINT_ID_BIT};
use crate::limits::{
    HINTS_PER_TARGET_MAX, HINT_BYTES_PER_TARGET_MAX, HINT_DELIVERY_WINDOW, KEY_SIZE_MAX,
    VALUE_SIZE_MAX,
};
use crate::version::Version;
use byteorder::{BigEndian, ByteOrder};
use std::collections::{BTreeMap, VecDeque};

/// Log bytes allowed beyond twice the live records before the log is compacted.
pub const HINT_LOG_SLACK_BYTES: usize = 1024 * 1024;

const REC_ADD: u8 = 1;
const REC_DONE: u8 = 2;

/// Why the hint log failed. Hints are best effort (anti-entropy is the backstop), so a log
/// error is counted and reported, and the hint stays in memory.
#[derive(Debug)]
pub enum HintLogError {
    /// An I/O error from the log's file.
    Io(String),
    /// A record read back is not a valid hint record.
    Corrupt(String),
}

impl std::fmt::Display for HintLogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HintLogError::Io(e) => write!(f, "hint log I/O error: {e}"),
            HintLogError::Corrupt(e) => write!(f, "hint log corrupt: {e}"),
        }
    }
}

impl std::error::Error for HintLogError {}

/// Durable storage for hint records: an append-only sequence of opaque records.
pub trait HintLog: Send {
    /// Append one record. It is durable after the next [`HintLog::sync`].
    fn append(&mut self, record: &[u8]) -> Result<(), HintLogError>;
    /// Make every appended record durable.
    fn sync(&mut self) -> Result<(), HintLogError>;
    /// Visit every record in append order (at start, before any append).
    fn replay(&mut self, visit: &mut dyn FnMut(&[u8])) -> Result<(), HintLogError>;
    /// Replace the whole log by `records`, atomically (write new, sync, rename).
    fn replace(&mut self, records: &[Vec<u8>]) -> Result<(), HintLogError>;
}

/// A [`HintLog`] in memory (lost with the process).
#[derive(Default, Debug, Clone)]
pub struct MemoryHintLog {
    /// The records, in order.
    pub records: Vec<Vec<u8>>,
}

impl HintLog for MemoryHintLog {
    fn append(&mut self, record: &[u8]) -> Result<(), HintLogError> {
        self.records.push(record.to_vec());
        Ok(())
    }
    fn sync(&mut self) -> Result<(), HintLogError> {
        Ok(())
    }
    fn replay(&mut self, visit: &mut dyn FnMut(&[u8])) -> Result<(), HintLogError> {
        self.records.iter().for_each(|r| visit(r));
        Ok(())
    }
    fn replace(&mut self, records: &[Vec<u8>]) -> Result<(), HintLogError> {
        self.records = records.to_vec();
        Ok(())
    }
}

/// Counters for STATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintStats {
    /// Hints stored.
    pub stored: u64,
    /// Hints delivered (acknowledged by their target).
    pub delivered: u64,
    /// Hints dropped on overflow.
    pub dropped: u64,
    /// Hints pending now.
    pub pending: u64,
    /// Hint log errors.
    pub log_errors: u64,
}

#[derive(Debug)]
struct Hint {
    seq: u64,
    write: OwnedWrite,
    /// When the delivery was sent, if it is in flight.
    sent_at_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct Target {
    hints: VecDeque<Hint>,
    bytes: usize,
}

/// The hints one shard holds, per target node.
pub struct HintQueue {
    targets: BTreeMap<u32, Target>,
    log: Box<dyn HintLog>,
    log_bytes: usize,
    live_bytes: usize,
    next_seq: u64,
    resend_ms: u64,
    /// Records appended since the last sync.
    dirty: bool,
    stats: HintStats,
}

fn encode_add(target: u32, seq: u64, w: &OwnedWrite) -> Vec<u8> {
    let mut r = Vec::with_capacity(32 + w.size());
    r.push(REC_ADD);
    r.extend_from_slice(&target.to_be_bytes());
    r.extend_from_slice(&seq.to_be_bytes());
    r.extend_from_slice(&w.version.0.to_be_bytes());
    r.extend_from_slice(&w.expires_at_ms.to_be_bytes());
    r.push(u8::from(w.value.is_none()) | (u8::from(w.causal) << 1));
    r.extend_from_slice(&(w.key.len() as u16).to_be_bytes());
    r.extend_from_slice(&w.key);
    if let Some(v) = &w.value {
        r.extend_from_slice(v);
    }
    r
}

fn encode_done(target: u32, seq: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(13);
    r.push(REC_DONE);
    r.extend_from_slice(&target.to_be_bytes());
    r.extend_from_slice(&seq.to_be_bytes());
    r
}

enum Record {
    Add(u32, u64, OwnedWrite),
    Done(u32, u64),
}

fn decode(r: &[u8]) -> Result<Record, HintLogError> {
    let bad = |why: &str| HintLogError::Corrupt(why.to_string());
    if r.len() < 13 {
        return Err(bad("record shorter than 13 bytes"));
    }
    let target = BigEndian::read_u32(&r[1..5]);
    let seq = BigEndian::read_u64(&r[5..13]);
    match r[0] {
        REC_DONE if r.len() == 13 => Ok(Record::Done(target, seq)),
        REC_ADD => {
            if r.len() < 13 + 19 {
                return Err(bad("ADD record too short"));
            }
            let version = Version(BigEndian::read_u64(&r[13..21]));
            let expires_at_ms = BigEndian::read_u64(&r[21..29]);
            let flags = r[29];
            let key_len = BigEndian::read_u16(&r[30..32]) as usize;
            let rest = &r[32..];
            // Flags: a tombstone (no value), or a value that is plain or a causal state.
            let (tombstone, causal) = match flags {
                0 => (false, false),
                1 => (true, false),
                2 => (false, true),
                _ => return Err(bad("ADD record with unknown flags")),
            };
            if key_len == 0 || key_len > KEY_SIZE_MAX || key_len > rest.len() {
                return Err(bad("ADD record with a bad key length"));
            }
            let (key, value) = rest.split_at(key_len);
            if value.len() > VALUE_SIZE_MAX || (tombstone && !value.is_empty()) {
                return Err(bad("ADD record with a bad value"));
            }
            Ok(Record::Add(
                target,
                seq,
                OwnedWrite {
                    key: key.to_vec(),
                    value: (!tombstone).then(|| value.to_vec()),
                    version,
                    expires_at_ms,
                    causal,
                },
            ))
        }
        k => Err(bad(&format!("unknown record kind {k}"))),
    }
}

impl HintQueue {
    /// An empty queue over `log`, recovering the hints `log` holds. Deliveries not
    /// acknowledged within `resend_ms` are sent again.
    pub fn open(mut log: Box<dyn HintLog>, resend_ms: u64) -> Result<HintQueue, HintLogError> {
        let mut records = Vec::new();
        log.replay(&mut |r| records.push(r.to_vec()))?;
        let mut q = HintQueue {
            targets: BTreeMap::new(),
            log,
            log_bytes: 0,
            live_bytes: 0,
            next_seq: 1,
            resend_ms,
            dirty: false,
            stats: HintStats::default(),
        };
        // Replay: adds in order, dones remove. Ordered by seq, so FIFO order survives.
        let mut live: BTreeMap<(u32, u64), OwnedWrite> = BTreeMap::new();
        for r in &records {
            match decode(r)? {
                Record::Add(t, seq, w) => {
                    q.next_seq = q.next_seq.max(seq + 1);
                    live.insert((t, seq), w);
                }
                Record::Done(t, seq) => {
                    q.next_seq = q.next_seq.max(seq + 1);
                    live.remove(&(t, seq));
                }
            }
        }
        for ((target, seq), write) in live {
            q.push(target, seq, write);
        }
        q.compact();
        Ok(q)
    }

    /// An empty queue kept in memory only.
    pub fn in_memory(resend_ms: u64) -> HintQueue {
        HintQueue::open(Box::<MemoryHintLog>::default(), resend_ms)
            .expect("an empty memory log replays without error")
    }

    /// Counters for STATS.
    pub fn stats(&self) -> HintStats {
        self.stats
    }

    /// Hints pending for `target`.
    pub fn pending_for(&self, target: u32) -> usize {
        self.targets.get(&target).map_or(0, |t| t.hints.len())
    }

    fn log_append(&mut self, record: &[u8]) {
        self.log_bytes += record.len();
        self.dirty = true;
        if self.log.append(record).is_err() {
            self.stats.log_errors += 1;
        }
    }

    fn push(&mut self, target: u32, seq: u64, write: OwnedWrite) {
        let size = write.size();
        let t = self.targets.entry(target).or_default();
        t.bytes += size;
        t.hints.push_back(Hint {
            seq,
            write,
            sent_at_ms: None,
        });
        self.live_bytes += 32 + size;
        self.stats.stored += 1;
        self.stats.pending += 1;
        // Overflow: drop the oldest until both bounds hold again.
        let mut dropped = Vec::new();
        let t = self.targets.get_mut(&target).expect("inserted above");
        while t.hints.len() > HINTS_PER_TARGET_MAX || t.bytes > HINT_BYTES_PER_TARGET_MAX {
            let old = t.hints.pop_front().expect("over a bound means not empty");
            t.bytes -= old.write.size();
            dropped.push(old);
        }
        for old in dropped {
            self.live_bytes -= 32 + old.write.size();
            self.stats.dropped += 1;
            self.stats.pending -= 1;
            self.log_append(&encode_done(target, old.seq));
        }
    }

    /// Keep `write` for `target`.
    pub fn add(&mut self, target: u32, write: OwnedWrite) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.log_append(&encode_add(target, seq, &write));
        self.push(target, seq, write);
        self.maybe_compact();
    }

    /// The targets that have hints pending, ascending.
    pub fn targets(&self) -> Vec<u32> {
        self.targets
            .iter()
            .filter(|(_, t)| !t.hints.is_empty())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Take every hint kept for `target` (a node that left the ring: its hints go to the new
    /// owners of their keys instead, see `ClusterNode`); they are done here.
    pub fn take_target(&mut self, target: u32) -> Vec<OwnedWrite> {
        let Some(t) = self.targets.remove(&target) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(t.hints.len());
        for h in t.hints {
            self.live_bytes -= 32 + h.write.size();
            self.stats.pending -= 1;
            self.log_append(&encode_done(target, h.seq));
            out.push(h.write);
        }
        out
    }

    /// Make the hints added so far durable (call once per event-loop turn).
    pub fn sync(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if self.log.sync().is_err() {
            self.stats.log_errors += 1;
        }
    }

    /// Queue REPLICATE frames for the hints of every target `alive` holds alive: up to the
    /// delivery window per target, resending those unanswered for the resend timeout. They
    /// carry `ring`, the ring version this node holds now (a replica refuses a sender whose
    /// ring is older than the last change of the key's partition there: the hint waits for
    /// the next delivery, after this node pulled the newer ring).
    pub fn poll_delivery(
        &mut self,
        now_ms: u64,
        ring: u64,
        alive: &dyn Fn(u32) -> bool,
        out: &mut Vec<(u32, Vec<u8>)>,
    ) {
        let resend_ms = self.resend_ms;
        for (&target, t) in self.targets.iter_mut() {
            if t.hints.is_empty() || !alive(target) {
                continue;
            }
            for h in t.hints.iter_mut().take(HINT_DELIVERY_WINDOW) {
                let due = match h.sent_at_ms {
                    None => true,
                    // (A clock that stepped back below `at` sends again at once.)
                    Some(at) => now_ms < at || now_ms - at >= resend_ms,
                };
                if due {
                    h.sent_at_ms = Some(now_ms);
                    let mut frame = Vec::new();
                    let id = HINT_ID_BIT | (h.seq as u32 & !HINT_ID_BIT);
                    peer::put_replicate(&mut frame, id, peer::AUX_HINT, ring, &h.write.as_write());
                    out.push((target, frame));
                }
            }
        }
    }

    /// `from` answered the hint delivery with request id `id`.
    pub fn on_ack(&mut self, from: u32, id: u32, ack: &WriteAck) {
        let Some(t) = self.targets.get_mut(&from) else {
            return;
        };
        let low = id & !HINT_ID_BIT;
        let Some(pos) = t
            .hints
            .iter()
            .take(HINT_DELIVERY_WINDOW)
            .position(|h| h.seq as u32 & !HINT_ID_BIT == low && h.sent_at_ms.is_some())
        else {
            return; // a duplicate or very late ack
        };
        match ack {
            WriteAck::Done(_) => {
                let h = t.hints.remove(pos).expect("position is in range");
                t.bytes -= h.write.size();
                self.live_bytes -= 32 + h.write.size();
                self.stats.delivered += 1;
                self.stats.pending -= 1;
                self.log_append(&encode_done(from, h.seq));
                self.maybe_compact();
            }
            WriteAck::Refused(_) => t.hints[pos].sent_at_ms = None,
        }
    }

    fn maybe_compact(&mut self) {
        // Not on every drain to zero: a rewrite costs two fsyncs and a rename on the event
        // loop, and a trickle of hints (one slow replica) drains to zero again and again.
        if self.log_bytes > 2 * self.live_bytes + HINT_LOG_SLACK_BYTES {
            self.compact();
        }
    }

    /// Replace the log by the live hints.
    fn compact(&mut self) {
        let records: Vec<Vec<u8>> = self
            .targets
            .iter()
            .flat_map(|(&t, q)| q.hints.iter().map(move |h| encode_add(t, h.seq, &h.write)))
            .collect();
        self.log_bytes = records.iter().map(|r| r.len()).sum();
        if self.log.replace(&records).is_err() {
            self.stats.log_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Applied;
    use std::sync::{Arc, Mutex};

    fn w(key: &str, v: u64) -> OwnedWrite {
        OwnedWrite {
            key: key.as_bytes().to_vec(),
            value: Some(vec![b'x'; 10]),
            version: Version(v),
            expires_at_ms: 0,
            causal: false,
        }
    }

    #[test]
    fn add_records_keep_the_causal_flag() {
        let mut w = w("k", 7);
        w.causal = true;
        let r = encode_add(3, 9, &w);
        let Ok(Record::Add(3, 9, back)) = decode(&r) else {
            panic!("not an ADD")
        };
        assert_eq!(back, w);
        // Tombstone and causal together is no record this build writes.
        let mut bad = r.clone();
        bad[29] = 3;
        assert!(decode(&bad).is_err());
    }

    fn id_of(frame: &[u8]) -> u32 {
        BigEndian::read_u32(&frame[6..10])
    }

    #[test]
    fn delivered_only_when_alive_and_removed_on_ack() {
        let mut q = HintQueue::in_memory(1_000);
        q.add(2, w("a", 1));
        q.add(2, w("b", 2));
        q.add(3, w("c", 3));
        let mut out = Vec::new();
        q.poll_delivery(0, 1, &|n| n == 3, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 3);
        out.clear();
        q.poll_delivery(0, 1, &|_| true, &mut out);
        assert_eq!(out.len(), 2, "node 3's hint is in flight, not resent yet");
        let ids: Vec<u32> = out.iter().map(|(_, f)| id_of(f)).collect();
        assert!(ids.iter().all(|id| id & HINT_ID_BIT != 0));
        q.on_ack(2, ids[0], &WriteAck::Done(Applied::Stored));
        q.on_ack(2, ids[1], &WriteAck::Refused("busy".into()));
        assert_eq!(q.pending_for(2), 1);
        assert_eq!(q.stats().delivered, 1);
        out.clear();
        q.poll_delivery(1, 1, &|n| n == 2, &mut out);
        assert_eq!(out.len(), 1, "refused hint is sent again");
        out.clear();
        q.poll_delivery(999, 1, &|n| n == 2, &mut out);
        assert!(out.is_empty());
        q.poll_delivery(1_001, 1, &|n| n == 2, &mut out);
        assert_eq!(out.len(), 1, "unanswered hint is resent after the timeout");
    }

    #[test]
    fn overflow_drops_the_oldest() {
        let mut q = HintQueue::in_memory(1_000);
        for i in 0..HINTS_PER_TARGET_MAX as u64 + 3 {
            q.add(2, w("k", i + 1));
        }
        let s = q.stats();
        assert_eq!(s.dropped, 3);
        assert_eq!(s.pending, HINTS_PER_TARGET_MAX as u64);
        let mut out = Vec::new();
        q.poll_delivery(0, 1, &|_| true, &mut out);
        let (_, f) = &out[0];
        let Ok(peer::PeerRequest::Replicate { write, .. }) =
            peer::PeerRequest::decode(f[4], f[5], &f[10..])
        else {
            panic!()
        };
        assert_eq!(write.version, Version(4), "the three oldest were dropped");
    }

    /// A log shared with the test so it survives the queue ("restart").
    #[derive(Clone, Default)]
    struct SharedLog(Arc<Mutex<MemoryHintLog>>);
    impl HintLog for SharedLog {
        fn append(&mut self, r: &[u8]) -> Result<(), HintLogError> {
            self.0.lock().unwrap().append(r)
        }
        fn sync(&mut self) -> Result<(), HintLogError> {
            Ok(())
        }
        fn replay(&mut self, v: &mut dyn FnMut(&[u8])) -> Result<(), HintLogError> {
            self.0.lock().unwrap().replay(v)
        }
        fn replace(&mut self, r: &[Vec<u8>]) -> Result<(), HintLogError> {
            self.0.lock().unwrap().replace(r)
        }
    }

    #[test]
    fn hints_survive_a_restart_through_the_log() {
        let log = SharedLog::default();
        let mut q = HintQueue::open(Box::new(log.clone()), 1_000).unwrap();
        q.add(2, w("a", 1));
        q.add(2, w("b", 2));
        q.add(3, w("c", 3));
        let mut out = Vec::new();
        q.poll_delivery(0, 1, &|n| n == 2, &mut out);
        q.on_ack(2, id_of(&out[0].1), &WriteAck::Done(Applied::Stored));
        drop(q);
        let mut q = HintQueue::open(Box::new(log.clone()), 1_000).unwrap();
        assert_eq!(q.pending_for(2), 1);
        assert_eq!(q.pending_for(3), 1);
        // The log was compacted to the live hints at open.
        assert_eq!(log.0.lock().unwrap().records.len(), 2);
        let mut out = Vec::new();
        q.poll_delivery(0, 1, &|_| true, &mut out);
        for (t, f) in &out {
            q.on_ack(*t, id_of(f), &WriteAck::Done(Applied::Stored));
        }
        assert_eq!(q.stats().pending, 0);
        drop(q);
        // The log still holds the ADD and DONE records, which cancel out at replay.
        let q = HintQueue::open(Box::new(log.clone()), 1_000).unwrap();
        assert_eq!(q.stats().pending, 0);
        assert!(
            log.0.lock().unwrap().records.is_empty(),
            "compacted at open"
        );
        // Garbage in the log is an error at open, not a panic.
        log.0.lock().unwrap().records.push(vec![1, 2, 3]);
        assert!(HintQueue::open(Box::new(log), 1_000).is_err());
    }
}
