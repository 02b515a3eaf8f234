//! `--check`: remember enough about every write to tell, at the end, whether an acknowledged
//! write was lost, and, during the run, whether a read returned a value that was already
//! overwritten before the read began (a stale read).
//!
//! Every write carries a distinct value: its first 16 bytes are the write id in hex
//! (`run nonce u16 | thread u8 | sequence u40`), so a read tells exactly which write it saw.
//!
//! The rule, with concurrent writes to one key. Each write W has an issue time (when kvbench
//! encoded it) and an ack time (when its OK reply was parsed; "never" while unacknowledged or
//! after an error or a lost connection, since such a write may or may not have been applied).
//! W is *dominated* when some acknowledged write X was issued after W was acknowledged
//! (`X.issue > W.ack`): X began after W ended, so X must win. With `floor` = the latest issue
//! time of any acknowledged write to the key, the writes still allowed to be the key's value are
//! exactly those with `ack >= floor` (the "live" set: the last acknowledged write, every write
//! concurrent with it, and every unacknowledged one). Recording the issue time a little early
//! and the ack time a little late only makes the check more lenient, never wrong.
//!
//! * Read-back at the end (with ALL): the value must be a live write; NOT_FOUND is fine only if a
//!   live write is a delete or nothing was acknowledged. Anything else is a lost write.
//! * A read during the run issued at time g is stale when it returns a write that was dominated
//!   by a write acknowledged before g, or NOT_FOUND when a put acknowledged before g is live and
//!   no delete was live since g.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Lock stripes of the table: threads touching different keys rarely contend.
pub const STRIPES: usize = 1024;

/// Dominated writes remembered per key, newest first out, to recognise stale reads.
pub const DEAD_PER_KEY_MAX: usize = 32;

/// Bytes of the write id at the head of every `--check` value.
pub const WRITE_ID_SIZE: usize = 16;

/// `ack_ns` of a write without an OK reply.
const NEVER: u64 = u64::MAX;

/// Format a write id as the 16 hex digits that open its value.
#[inline]
pub fn encode_write_id(id: u64) -> [u8; WRITE_ID_SIZE] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; WRITE_ID_SIZE];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((id >> (60 - 4 * i)) & 0xF) as usize];
    }
    out
}

/// The write id at the head of a value, if it has one.
pub fn decode_write_id(value: &[u8]) -> Option<u64> {
    let head = value.get(..WRITE_ID_SIZE)?;
    let mut id = 0u64;
    for &b in head {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        id = id << 4 | d as u64;
    }
    Some(id)
}

/// What a read returned, as the check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A value carrying this write id.
    Write(u64),
    /// NOT_FOUND.
    Missing,
    /// A value without a write id.
    Garbage,
}

impl Seen {
    /// Classify a GET reply's value (`None` for NOT_FOUND).
    pub fn of(value: Option<&[u8]>) -> Seen {
        match value {
            None => Seen::Missing,
            Some(v) => decode_write_id(v).map_or(Seen::Garbage, Seen::Write),
        }
    }
}

/// Verdict on a read during the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadVerdict {
    /// Allowed (or about a key kvbench never wrote).
    Fine,
    /// Older than a write acknowledged before the read began.
    Stale,
}

#[derive(Clone, Copy, Debug)]
struct WriteRec {
    id: u64,
    issue_ns: u64,
    ack_ns: u64,
    delete: bool,
}

#[derive(Debug, Default)]
struct KeyState {
    /// Latest issue time of an acknowledged write.
    floor_ns: u64,
    /// Writes with `ack_ns >= floor_ns`.
    live: Vec<WriteRec>,
    /// Dominated writes: (id, time it was found dominated).
    dead: Vec<(u64, u64)>,
    /// Latest time a delete was found dominated.
    delete_dead_ns: u64,
    /// When the first write of this run was acknowledged: from then on, a value from before
    /// the run is dominated.
    first_ack_ns: u64,
}

impl KeyState {
    fn acked_any(&self) -> bool {
        self.live.iter().any(|w| w.ack_ns != NEVER)
    }
}

/// Everything `--check` knows, shared by all threads.
pub struct CheckTable {
    nonce: u16,
    stripes: Vec<Mutex<HashMap<u64, KeyState>>>,
    acknowledged: AtomicU64,
    stale: AtomicU64,
}

impl CheckTable {
    /// An empty table for a run whose write ids start with `nonce`.
    pub fn new(nonce: u16) -> CheckTable {
        CheckTable {
            nonce,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            acknowledged: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        }
    }

    fn stripe(&self, key: u64) -> MutexGuard<'_, HashMap<u64, KeyState>> {
        // A poisoned stripe means another thread panicked mid-update; the run is void anyway.
        self.stripes[(key % STRIPES as u64) as usize]
            .lock()
            .expect("check table lock poisoned by a panicked thread")
    }

    /// A write was sent.
    pub fn issue(&self, key: u64, id: u64, delete: bool, now_ns: u64) {
        self.stripe(key)
            .entry(key)
            .or_default()
            .live
            .push(WriteRec {
                id,
                issue_ns: now_ns,
                ack_ns: NEVER,
                delete,
            });
    }

    /// A write's reply arrived (`acked`: with OK). Without OK the write stays possibly-applied.
    pub fn complete(&self, key: u64, id: u64, acked: bool, now_ns: u64) {
        if !acked {
            return;
        }
        let mut stripe = self.stripe(key);
        let Some(st) = stripe.get_mut(&key) else {
            return;
        };
        let Some(w) = st.live.iter_mut().find(|w| w.id == id) else {
            // Every write is issued before it completes, and a live write with NEVER as its
            // ack time is never pruned, so it must be here.
            panic!("check: completion of write {id:016x} that was never issued");
        };
        assert!(w.ack_ns == NEVER, "write {id:016x} acknowledged twice");
        w.ack_ns = now_ns;
        if st.first_ack_ns == 0 {
            st.first_ack_ns = now_ns;
        }
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
        st.floor_ns = st.floor_ns.max(w.issue_ns);
        let floor = st.floor_ns;
        let mut i = 0;
        while i < st.live.len() {
            if st.live[i].ack_ns < floor {
                let dead = st.live.swap_remove(i);
                if dead.delete {
                    st.delete_dead_ns = now_ns;
                }
                if st.dead.len() == DEAD_PER_KEY_MAX {
                    st.dead.remove(0);
                }
                st.dead.push((dead.id, now_ns));
            } else {
                i += 1;
            }
        }
        assert!(
            st.live.iter().any(|w| w.ack_ns != NEVER),
            "the write that set the floor is live"
        );
    }

    /// A read issued at `issued_ns` returned `seen`.
    pub fn observe_read(&self, key: u64, seen: Seen, issued_ns: u64) -> ReadVerdict {
        let stripe = self.stripe(key);
        let Some(st) = stripe.get(&key) else {
            return ReadVerdict::Fine;
        };
        // A value from before this run (another run's write id, or no write id at all) was
        // dominated when this run's first write to the key was acknowledged.
        let foreign_is_stale = st.first_ack_ns != 0 && st.first_ack_ns < issued_ns;
        let verdict = match seen {
            Seen::Garbage if foreign_is_stale => ReadVerdict::Stale,
            Seen::Garbage => ReadVerdict::Fine,
            Seen::Write(id) if (id >> 48) as u16 != self.nonce && foreign_is_stale => {
                ReadVerdict::Stale
            }
            Seen::Write(id) => {
                if st.live.iter().any(|w| w.id == id) {
                    ReadVerdict::Fine
                } else if st.dead.iter().any(|&(d, at)| d == id && at < issued_ns) {
                    ReadVerdict::Stale
                } else {
                    // One of ours, forgotten (more than DEAD_PER_KEY_MAX writes ago): its
                    // domination time is unknown, so no verdict.
                    ReadVerdict::Fine
                }
            }
            Seen::Missing => {
                let put_done = st
                    .live
                    .iter()
                    .any(|w| !w.delete && w.ack_ns != NEVER && w.ack_ns < issued_ns);
                let delete_possible =
                    st.live.iter().any(|w| w.delete) || st.delete_dead_ns >= issued_ns;
                if put_done && !delete_possible {
                    ReadVerdict::Stale
                } else {
                    ReadVerdict::Fine
                }
            }
        };
        if verdict == ReadVerdict::Stale {
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// Whether a final read-back of `key` that returned `seen` keeps every acknowledged write.
    pub fn verify(&self, key: u64, seen: Seen) -> bool {
        let stripe = self.stripe(key);
        let Some(st) = stripe.get(&key) else {
            return true;
        };
        if !st.acked_any() {
            return true;
        }
        match seen {
            Seen::Write(id) => st.live.iter().any(|w| w.id == id),
            Seen::Missing => st.live.iter().any(|w| w.delete),
            Seen::Garbage => false,
        }
    }

    /// Every key written during the run, sorted.
    pub fn touched_keys(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .stripes
            .iter()
            .flat_map(|s| {
                s.lock()
                    .expect("check table lock poisoned by a panicked thread")
                    .keys()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Writes acknowledged with OK.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Stale reads seen.
    pub fn stale_reads(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_ids_round_trip() {
        let id = 0xBEEF_0100_0000_1234;
        let head = encode_write_id(id);
        let mut v = head.to_vec();
        v.extend_from_slice(b"filler");
        assert_eq!(decode_write_id(&v), Some(id));
        assert_eq!(Seen::of(Some(&v)), Seen::Write(id));
        assert_eq!(Seen::of(Some(b"short")), Seen::Garbage);
        assert_eq!(Seen::of(None), Seen::Missing);
    }

    #[test]
    fn sequential_writes_keep_only_the_last() {
        let t = CheckTable::new(0);
        t.issue(1, 10, false, 100);
        t.complete(1, 10, true, 200);
        t.issue(1, 11, false, 300);
        t.complete(1, 11, true, 400);
        assert!(t.verify(1, Seen::Write(11)));
        assert!(
            !t.verify(1, Seen::Write(10)),
            "overwritten value is a lost write"
        );
        assert!(!t.verify(1, Seen::Missing));
        assert!(!t.verify(1, Seen::Garbage));
        assert_eq!(t.acknowledged(), 2);
        // A read issued after write 11 was acknowledged must not see write 10.
        assert_eq!(t.observe_read(1, Seen::Write(10), 500), ReadVerdict::Stale);
        // A read issued before that may.
        assert_eq!(t.observe_read(1, Seen::Write(10), 350), ReadVerdict::Fine);
        assert_eq!(t.observe_read(1, Seen::Missing, 500), ReadVerdict::Stale);
        assert_eq!(t.stale_reads(), 2);
        // A key never written is nobody's business.
        assert!(t.verify(2, Seen::Missing));
        // A value from before the run is fine until the run's first write is acknowledged.
        t.issue(3, 30, false, 100);
        assert_eq!(t.observe_read(3, Seen::Garbage, 150), ReadVerdict::Fine);
        t.complete(3, 30, true, 200);
        assert_eq!(t.observe_read(3, Seen::Garbage, 150), ReadVerdict::Fine);
        assert_eq!(t.observe_read(3, Seen::Garbage, 250), ReadVerdict::Stale);
        assert_eq!(
            t.observe_read(3, Seen::Write(7 << 48), 250),
            ReadVerdict::Stale,
            "another run's write"
        );
        assert!(!t.verify(3, Seen::Garbage));
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let t = CheckTable::new(0);
        // 20 issued first but acknowledged last; 21 overlaps it.
        t.issue(1, 20, false, 100);
        t.issue(1, 21, false, 150);
        t.complete(1, 21, true, 200);
        t.complete(1, 20, true, 300);
        assert!(t.verify(1, Seen::Write(20)));
        assert!(t.verify(1, Seen::Write(21)));
        // An unacknowledged write may or may not have been applied.
        t.issue(1, 22, false, 400);
        assert!(t.verify(1, Seen::Write(22)));
        assert!(t.verify(1, Seen::Write(21)));
        // Once a later write is acknowledged, both older ones are dominated.
        t.issue(1, 23, false, 500);
        t.complete(1, 23, true, 600);
        assert!(!t.verify(1, Seen::Write(21)));
        assert!(t.verify(1, Seen::Write(22)), "22 is still unacknowledged");
        assert!(t.verify(1, Seen::Write(23)));
    }

    #[test]
    fn deletes_allow_not_found() {
        let t = CheckTable::new(0);
        t.issue(5, 1, false, 10);
        t.complete(5, 1, true, 20);
        t.issue(5, 2, true, 30);
        assert!(
            t.verify(5, Seen::Missing),
            "in-flight delete may have landed"
        );
        t.complete(5, 2, true, 40);
        assert!(t.verify(5, Seen::Missing));
        assert!(!t.verify(5, Seen::Write(1)));
        assert_eq!(t.observe_read(5, Seen::Missing, 50), ReadVerdict::Fine);
        assert_eq!(t.observe_read(5, Seen::Write(1), 50), ReadVerdict::Stale);
        // Unacknowledged-only keys cannot lose anything.
        t.issue(6, 3, false, 10);
        t.complete(6, 3, false, 20);
        assert!(t.verify(6, Seen::Missing));
        assert_eq!(t.touched_keys(), vec![5, 6]);
    }
}
