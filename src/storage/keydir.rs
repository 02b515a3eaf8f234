//! The key directory: for every key, where its newest record lives. Built for RAM per key.
//!
//! A `HashMap<Vec<u8>, Entry>` pays a heap allocation per key (16+ bytes of allocator overhead
//! plus the `Vec` header) on top of its own slot waste. This table pays, per key:
//!
//! ```text
//!   28 bytes   one Entry in a dense array (chunks of KEYDIR_CHUNK_ENTRIES, never copied)
//!   4 / load   one u32 slot of an open-addressing index (load 0.53..0.8 → 5..7.5 bytes)
//!   key bytes  in an append-only arena of fixed 1 MiB chunks, no per-key header (a growing
//!              Vec would keep up to as much spare capacity as it holds: half the key bytes
//!              again, measured as 6-9 bytes per 16-byte key at 10M keys)
//! ```
//!
//! Entry layout (28 bytes, `#[repr(C)]`, 4-byte aligned: a u64 version would pad it to 32):
//!
//! ```text
//!  0          4          8          12         16                  20         24            28
//!  +----------+----------+----------+----------+-------------------+----------+-------------+
//!  | version  | version  | causal:1 | offset   | key_len:11 |      | key_off  | expires_at_s|
//!  | high u32 | low u32  | segment  |  u32     | value_len:21 (all | u32 into | u32, rounded|
//!  |          |          |  id:31   |          | ones = tombstone) | the arena| up; 0=never |
//!  +----------+----------+----------+----------+-------------------+----------+-------------+
//! ```
//!
//! The tombstone mark is the all-ones `value_len`. The causal flag (the record's value is an
//! encoded causal state, [`crate::storage::record::FLAG_CAUSAL`]) is the top bit of the
//! segment word: every other field uses all of its bits (key lengths up to 1024 need 11,
//! value lengths up to 1 MiB and the tombstone mark 21, versions 64, offsets and expiries
//! 32, as do offsets into the arena), while segment ids stay at most [`SEGMENT_ID_MAX`]
//! (2^31 - 1) by the store's rule.
//!
//! A key's *tag* is 32 bits of its hash. The index slot holds `(entry index + 1) << 6 | 6 tag
//! bits` (0 = empty), so probing past other keys seldom touches their entries (1 in 64 does,
//! to compare the key); linear probing; deletion by backward shift (no tombstone slots). A key's
//! home slot is its tag scaled to the index size (multiply and shift), so the index can have
//! any size: it grows by half ([`KEYDIR_INDEX_GROWTH_PERCENT`]) when it would pass
//! [`KEYDIR_LOAD_MAX_PERCENT`], which keeps it between 53% and 80% full. (Doubling a
//! power-of-two index left it anywhere from 40% full: at 1M keys it cost 8.4 bytes a key.)
//! The tag is not stored: growing the index and backward shifts hash the keys again (a read
//! of the arena, in entry order when growing), which costs less than 4 bytes a key would;
//! the keydir's own word-at-a-time hash ([`tag_of`]) keeps that, and every look-up, cheap.
//! Removing a key moves the last entry into its place, so the entry array stays dense; the
//! key bytes it leaves in the arena are dead until the arena is compacted (when more than half
//! of it is dead). Expiry is kept rounded *up* to whole seconds: the keydir only uses it to
//! judge what compaction may reclaim; the exact expiry is in the record.

use super::prefetch;
use crate::hash::fmix64;
use crate::limits::{
    KEYDIR_ARENA_CHUNK_SIZE, KEYDIR_ARENA_DEAD_MIN, KEYDIR_CHUNK_ENTRIES,
    KEYDIR_INDEX_GROWTH_PERCENT, KEYDIR_KEYS_MAX, KEYDIR_LOAD_MAX_PERCENT, KEY_SIZE_MAX,
    PREFETCH_BATCH_MAX, PREFETCH_PROBES_MAX, SEGMENT_ID_MAX, VALUE_SIZE_MAX,
};

const KEY_LEN_BITS: u32 = 11;
const VALUE_LEN_BITS: u32 = 21;
const VALUE_LEN_MASK: u32 = (1 << VALUE_LEN_BITS) - 1;
/// `value_len` field value that marks a tombstone.
const TOMBSTONE_LEN: u32 = VALUE_LEN_MASK;
const _: () = assert!(KEY_LEN_BITS + VALUE_LEN_BITS == 32);
const _: () = assert!(KEY_SIZE_MAX < (1 << KEY_LEN_BITS));
const _: () = assert!(VALUE_SIZE_MAX < TOMBSTONE_LEN as usize);
/// The bit of an entry's segment word that holds the causal flag.
const SEGMENT_CAUSAL_BIT: u32 = 1 << 31;
const _: () = assert!(SEGMENT_ID_MAX < SEGMENT_CAUSAL_BIT);
/// Mixed into the key hash so the keydir's slot bits are independent of the placement bits
/// (every key of one shard shares its partition bits).
const KEYDIR_HASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const MIN_INDEX_SLOTS: usize = 16;
/// Bits of an index slot holding a few hash bits, so that probing past other keys rarely
/// has to fetch their entries (a cache miss each).
const SLOT_TAG_BITS: u32 = 6;
const SLOT_TAG_MASK: u32 = (1 << SLOT_TAG_BITS) - 1;
const _: () = assert!(KEYDIR_KEYS_MAX < (1 << (32 - SLOT_TAG_BITS)) - 1);

/// Index slot for entry `i` of a key with tag `tag` (never 0: 0 is an empty slot). The
/// slot keeps the tag's low bits; the position in the index comes from its high bits.
fn make_slot(i: usize, tag: u32) -> u32 {
    (((i + 1) as u32) << SLOT_TAG_BITS) | (tag & SLOT_TAG_MASK)
}
/// Entry index held by a non-empty slot.
fn slot_entry(s: u32) -> usize {
    ((s >> SLOT_TAG_BITS) - 1) as usize
}

/// What [`KeyDir::upsert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    /// The key was absent and is now present.
    Inserted,
    /// The key's location was replaced; this was the old one.
    Replaced(Loc),
    /// Nothing changed.
    Unchanged,
}

/// Where a key's newest record is, and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// The record's version.
    pub version: u64,
    /// Segment id.
    pub segment: u32,
    /// Offset of the record in the segment.
    pub offset: u32,
    /// Value length, or `None` for a tombstone.
    pub value_len: Option<u32>,
    /// Expiry rounded up to whole seconds since the epoch; 0 = never.
    pub expires_at_s: u32,
    /// The value is an encoded causal state (never for a tombstone).
    pub causal: bool,
}

/// `expires_at_ms` rounded up to seconds (so "expired by the keydir" implies expired).
pub fn expiry_s_of(expires_at_ms: u64) -> u32 {
    u32::try_from(expires_at_ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

/// One slot of the dense entry array.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Entry {
    version_high: u32,
    version_low: u32,
    /// Segment id (31 bits) and, in [`SEGMENT_CAUSAL_BIT`], the causal flag.
    segment: u32,
    offset: u32,
    lens: u32,
    key_off: u32,
    expires_at_s: u32,
}

impl Entry {
    fn key_len(&self) -> usize {
        (self.lens >> VALUE_LEN_BITS) as usize
    }

    fn version(&self) -> u64 {
        (u64::from(self.version_high) << 32) | u64::from(self.version_low)
    }

    fn loc(&self) -> Loc {
        let v = self.lens & VALUE_LEN_MASK;
        Loc {
            version: self.version(),
            segment: self.segment & !SEGMENT_CAUSAL_BIT,
            offset: self.offset,
            value_len: if v == TOMBSTONE_LEN { None } else { Some(v) },
            expires_at_s: self.expires_at_s,
            causal: self.segment & SEGMENT_CAUSAL_BIT != 0,
        }
    }

    fn set_loc(&mut self, loc: &Loc) {
        let v = match loc.value_len {
            Some(n) => {
                assert!(
                    n as usize <= VALUE_SIZE_MAX,
                    "value length checked by the caller"
                );
                n
            }
            None => TOMBSTONE_LEN,
        };
        assert!(
            loc.segment <= SEGMENT_ID_MAX,
            "segment ids are kept below SEGMENT_ID_MAX by the store"
        );
        assert!(
            !(loc.causal && loc.value_len.is_none()),
            "a tombstone cannot be causal"
        );
        self.version_high = (loc.version >> 32) as u32;
        self.version_low = loc.version as u32;
        self.segment = loc.segment | if loc.causal { SEGMENT_CAUSAL_BIT } else { 0 };
        self.offset = loc.offset;
        self.lens = (self.lens & !VALUE_LEN_MASK) | v;
        self.expires_at_s = loc.expires_at_s;
    }
}

/// The key arena is addressed with u32 offsets: it holds at most 4 GiB of key bytes; and an
/// index slot has room for [`KEYDIR_KEYS_MAX`] entries.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyDirFull;

/// The key directory.
pub struct KeyDir {
    /// Open-addressing index: entry index + 1, 0 = empty (see [`make_slot`]). Any length.
    index: Vec<u32>,
    /// Dense entries in fixed-capacity chunks (growing never copies them).
    chunks: Vec<Vec<Entry>>,
    len: usize,
    arena: Arena,
    arena_dead: usize,
}

/// Key bytes in chunks of [`KEYDIR_ARENA_CHUNK_SIZE`]. A key never straddles two chunks (the
/// tail of a chunk too short for the next key is skipped and counted dead), so growing costs
/// one chunk at a time and never copies. Offsets are global: chunk × size + offset in chunk.
#[derive(Default)]
struct Arena {
    chunks: Vec<Box<[u8]>>,
    /// Next free offset.
    len: usize,
}

impl Arena {
    fn get(&self, at: usize, len: usize) -> &[u8] {
        let (c, o) = (at / KEYDIR_ARENA_CHUNK_SIZE, at % KEYDIR_ARENA_CHUNK_SIZE);
        &self.chunks[c][o..o + len]
    }

    /// Where `key` would start, and the bytes skipped at the end of the current chunk.
    fn next_at(&self, key_len: usize) -> (usize, usize) {
        let room = KEYDIR_ARENA_CHUNK_SIZE - self.len % KEYDIR_ARENA_CHUNK_SIZE;
        if key_len > room {
            (self.len + room, room)
        } else {
            (self.len, 0)
        }
    }

    /// Append `key`; its offset and the bytes skipped before it.
    fn push(&mut self, key: &[u8]) -> (usize, usize) {
        let (at, skipped) = self.next_at(key.len());
        if at / KEYDIR_ARENA_CHUNK_SIZE == self.chunks.len() {
            // Zeroed pages come from the OS on first touch: RSS grows as keys arrive.
            self.chunks
                .push(vec![0u8; KEYDIR_ARENA_CHUNK_SIZE].into_boxed_slice());
        }
        let o = at % KEYDIR_ARENA_CHUNK_SIZE;
        self.chunks[at / KEYDIR_ARENA_CHUNK_SIZE][o..o + key.len()].copy_from_slice(key);
        self.len = at + key.len();
        (at, skipped)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn capacity_bytes(&self) -> usize {
        self.chunks.len() * KEYDIR_ARENA_CHUNK_SIZE
    }
}

impl Default for KeyDir {
    fn default() -> Self {
        KeyDir::new()
    }
}

/// The 32-bit tag of a key (see the module doc). The keydir's own hash, not the protocol's
/// [`crate::hash::key_hash`]: it is computed at every look-up and for every key each time the
/// index grows, and the protocol's FNV-1a takes a serial multiply per byte where this takes
/// one per 8 bytes; and its bits must not follow the placement bits (every key of a shard
/// shares those). Each 8-byte word (little-endian, the last one zero-padded) is folded in by
/// xor, an odd multiply and a rotation, each a bijection of the state, so keys of one length
/// that differ in one word always differ before the final mix (MurmurHash3's `fmix64`).
/// Not flood-resistant, like FNV: keys are chosen by clients, but a probe run is bounded by
/// the load factor only on average.
fn tag_of(key: &[u8]) -> u32 {
    const K: u64 = 0x9fb2_1c65_1e98_df25; // odd: the multiply is a bijection
    let mut h = KEYDIR_HASH_SEED ^ (key.len() as u64).wrapping_mul(K);
    let mut words = key.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(last))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    (fmix64(h) >> 32) as u32
}

/// Position of `tag` in an index of `slots` (≤ 2^32) slots: the tag scaled to the size
/// (Lemire's multiply-shift), so any size works and the top bits decide.
fn home_of(tag: u32, slots: usize) -> usize {
    ((u64::from(tag) * slots as u64) >> 32) as usize
}

/// The slot after `pos` in an index of `slots` slots (probing wraps around).
fn next_slot(pos: usize, slots: usize) -> usize {
    if pos + 1 == slots {
        0
    } else {
        pos + 1
    }
}

/// How far `to` is after `from`, going forward around an index of `slots` slots.
fn distance(from: usize, to: usize, slots: usize) -> usize {
    if to >= from {
        to - from
    } else {
        to + slots - from
    }
}

/// An index at least this large given back by a growth is handed back to the OS at once
/// ([`return_freed_memory`]); smaller ones are not worth a walk of the heap.
const KEYDIR_TRIM_AFTER_FREEING_BYTES: usize = 1 << 20;

/// Give the pages of the index just freed back to the OS. glibc's malloc raises its mmap
/// threshold to the size of the largest block freed, so after the first growth every old
/// index comes from the heap, and its pages stay with the process when it is freed: at 1M
/// keys, 4 bytes a key of freed indices stayed resident (RssAnon) beside the live one.
/// `malloc_trim` hands whole free pages back (madvise); growth is rare and already O(keys).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl KeyDir {
    /// An empty key directory.
    pub fn new() -> KeyDir {
        KeyDir {
            index: vec![0; MIN_INDEX_SLOTS],
            chunks: Vec::new(),
            len: 0,
            arena: Arena::default(),
            arena_dead: 0,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of RAM the structure holds (capacities, not just what is used).
    pub fn memory_bytes(&self) -> usize {
        self.index.capacity() * 4
            + self.chunks.len() * KEYDIR_CHUNK_ENTRIES * std::mem::size_of::<Entry>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<Entry>>()
            + self.arena.capacity_bytes()
    }

    fn entry(&self, i: usize) -> &Entry {
        &self.chunks[i / KEYDIR_CHUNK_ENTRIES][i % KEYDIR_CHUNK_ENTRIES]
    }

    fn entry_mut(&mut self, i: usize) -> &mut Entry {
        &mut self.chunks[i / KEYDIR_CHUNK_ENTRIES][i % KEYDIR_CHUNK_ENTRIES]
    }

    fn key_of(&self, e: &Entry) -> &[u8] {
        self.arena.get(e.key_off as usize, e.key_len())
    }

    /// The tag of entry `e`'s key, hashed again (tags are not stored).
    fn tag_of_entry(&self, e: &Entry) -> u32 {
        tag_of(self.key_of(e))
    }

    /// `Ok((slot, entry index))` if present, else `Err(empty slot where it would go)`.
    fn find(&self, key: &[u8], tag: u32) -> Result<(usize, usize), usize> {
        let slots = self.index.len();
        let stag = tag & SLOT_TAG_MASK;
        let mut pos = home_of(tag, slots);
        // Bounded: the load factor keeps at least one slot empty.
        for _ in 0..self.index.len() {
            let s = self.index[pos];
            if s == 0 {
                return Err(pos);
            }
            if s & SLOT_TAG_MASK == stag {
                let i = slot_entry(s);
                let e = self.entry(i);
                if self.key_of(e) == key {
                    return Ok((pos, i));
                }
            }
            pos = next_slot(pos, slots);
        }
        unreachable!("keydir index has no empty slot: load factor invariant broken");
    }

    /// Start loading the lines that look-ups of `keys` will touch, in one pass per link of
    /// the chain (home slot, then entry, then key bytes), so that the misses of the batch
    /// overlap (`storage/prefetch.rs`). `locs[i]` gets the location of the first entry near
    /// key i's home slot whose tag bits match: a *guess* (the key itself is not compared), for
    /// the caller to prefetch the record; `None` when no slot matched within
    /// [`PREFETCH_PROBES_MAX`]. At most [`PREFETCH_BATCH_MAX`] keys are looked at.
    pub fn prefetch(&self, keys: &[&[u8]], locs: &mut [Option<Loc>]) {
        let n = keys.len().min(locs.len()).min(PREFETCH_BATCH_MAX);
        let slots = self.index.len();
        let mut tags = [0u32; PREFETCH_BATCH_MAX];
        let mut entries = [usize::MAX; PREFETCH_BATCH_MAX];
        for i in 0..n {
            tags[i] = tag_of(keys[i]);
            prefetch::line(&self.index[home_of(tags[i], slots)]);
        }
        for i in 0..n {
            let stag = tags[i] & SLOT_TAG_MASK;
            let mut pos = home_of(tags[i], slots);
            for _ in 0..PREFETCH_PROBES_MAX {
                let s = self.index[pos];
                if s == 0 {
                    break;
                }
                if s & SLOT_TAG_MASK == stag {
                    entries[i] = slot_entry(s);
                    let e: *const Entry = self.entry(entries[i]);
                    prefetch::lines(e.cast(), std::mem::size_of::<Entry>(), usize::MAX);
                    break;
                }
                pos = next_slot(pos, slots);
            }
        }
        for i in 0..n {
            locs[i] = (entries[i] != usize::MAX).then(|| {
                let e = self.entry(entries[i]);
                let key = self.key_of(e);
                prefetch::lines(key.as_ptr(), key.len(), usize::MAX);
                e.loc()
            });
        }
    }

    /// Where `key`'s newest record is.
    pub fn get(&self, key: &[u8]) -> Option<Loc> {
        self.find(key, tag_of(key))
            .ok()
            .map(|(_, i)| self.entry(i).loc())
    }

    /// Point `key` at `loc`; returns the previous location, if any.
    pub fn insert(&mut self, key: &[u8], loc: Loc) -> Result<Option<Loc>, KeyDirFull> {
        Ok(match self.upsert(key, |_| Some(loc))? {
            Upsert::Replaced(old) => Some(old),
            Upsert::Inserted | Upsert::Unchanged => None,
        })
    }

    /// Look `key` up once and let `decide` pick its new location from its current one
    /// (`None`: leave it as it is).
    pub fn upsert(
        &mut self,
        key: &[u8],
        decide: impl FnOnce(Option<Loc>) -> Option<Loc>,
    ) -> Result<Upsert, KeyDirFull> {
        assert!(key.len() <= KEY_SIZE_MAX, "key size checked by the caller");
        let tag = tag_of(key);
        let mut slot = match self.find(key, tag) {
            Ok((_, i)) => {
                let e = self.entry_mut(i);
                let old = e.loc();
                return Ok(match decide(Some(old)) {
                    Some(loc) => {
                        e.set_loc(&loc);
                        Upsert::Replaced(old)
                    }
                    None => Upsert::Unchanged,
                });
            }
            Err(slot) => slot,
        };
        let Some(loc) = decide(None) else {
            return Ok(Upsert::Unchanged);
        };
        if self.len >= KEYDIR_KEYS_MAX {
            return Err(KeyDirFull);
        }
        if self.arena.next_at(key.len()).0 + key.len() > u32::MAX as usize {
            self.compact_arena();
            if self.arena.next_at(key.len()).0 + key.len() > u32::MAX as usize {
                return Err(KeyDirFull);
            }
        }
        if (self.len + 1) * 100 > self.index.len() * KEYDIR_LOAD_MAX_PERCENT {
            self.grow();
            slot = match self.find(key, tag) {
                Err(slot) => slot,
                Ok(_) => unreachable!("key was just found absent"),
            };
        }
        let (key_off, skipped) = self.arena.push(key);
        self.arena_dead += skipped;
        let mut e = Entry {
            lens: (key.len() as u32) << VALUE_LEN_BITS,
            key_off: key_off as u32,
            ..Entry::default()
        };
        e.set_loc(&loc);
        if self.len == self.chunks.len() * KEYDIR_CHUNK_ENTRIES {
            self.chunks.push(Vec::with_capacity(KEYDIR_CHUNK_ENTRIES));
        }
        self.chunks[self.len / KEYDIR_CHUNK_ENTRIES].push(e);
        self.index[slot] = make_slot(self.len, tag);
        self.len += 1;
        Ok(Upsert::Inserted)
    }

    /// Forget `key`; returns where it was.
    pub fn remove(&mut self, key: &[u8]) -> Option<Loc> {
        let (slot, i) = self.find(key, tag_of(key)).ok()?;
        let removed = *self.entry(i);
        self.unlink_slot(slot);
        // Move the last entry into the hole so the array stays dense.
        let last = self.len - 1;
        if i != last {
            let moved = *self.entry(last);
            let moved_tag = self.tag_of_entry(&moved);
            let slots = self.index.len();
            let mut pos = home_of(moved_tag, slots);
            // Bounded by the table size; the moved entry is in the index.
            for _ in 0..slots {
                if self.index[pos] != 0 && slot_entry(self.index[pos]) == last {
                    break;
                }
                pos = next_slot(pos, slots);
            }
            assert_eq!(
                self.index[pos],
                make_slot(last, moved_tag),
                "last entry not indexed"
            );
            self.index[pos] = make_slot(i, moved_tag);
            *self.entry_mut(i) = moved;
        }
        let chunk = self
            .chunks
            .last_mut()
            .expect("len > 0 means a chunk exists");
        chunk.pop();
        if chunk.is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
        self.arena_dead += removed.key_len();
        if self.arena_dead >= KEYDIR_ARENA_DEAD_MIN && self.arena_dead * 2 > self.arena.len() {
            self.compact_arena();
        }
        Some(removed.loc())
    }

    /// Empty `slot` and shift later entries of its probe run back (no tombstone slots).
    fn unlink_slot(&mut self, slot: usize) {
        let slots = self.index.len();
        self.index[slot] = 0;
        let mut hole = slot;
        let mut j = slot;
        for _ in 0..slots {
            j = next_slot(j, slots);
            let s = self.index[j];
            if s == 0 {
                return;
            }
            let home = home_of(self.tag_of_entry(self.entry(slot_entry(s))), slots);
            // Move it back if its home is not cyclically inside (hole, j].
            if distance(home, j, slots) >= distance(hole, j, slots) {
                self.index[hole] = s;
                self.index[j] = 0;
                hole = j;
            }
        }
    }

    /// Grow the index by [`KEYDIR_INDEX_GROWTH_PERCENT`], rehashing every key (read from
    /// the arena in entry order, which is mostly the order it was written in).
    fn grow(&mut self) {
        let slots = (self.index.len() * KEYDIR_INDEX_GROWTH_PERCENT / 100)
            .max(self.index.len() + 1)
            .max(MIN_INDEX_SLOTS);
        assert!(slots <= 1 << 32, "index positions come from 32-bit tags");
        let mut index = vec![0u32; slots];
        for i in 0..self.len {
            let tag = self.tag_of_entry(self.entry(i));
            let mut pos = home_of(tag, slots);
            while index[pos] != 0 {
                pos = next_slot(pos, slots);
            }
            index[pos] = make_slot(i, tag);
        }
        let freed = std::mem::replace(&mut self.index, index);
        if freed.len() * std::mem::size_of::<u32>() >= KEYDIR_TRIM_AFTER_FREEING_BYTES {
            drop(freed);
            return_freed_memory();
        }
    }

    /// Copy live keys into a fresh arena, dropping the dead bytes.
    fn compact_arena(&mut self) {
        let mut arena = Arena::default();
        let mut dead = 0;
        for c in 0..self.chunks.len() {
            for k in 0..self.chunks[c].len() {
                let e = self.chunks[c][k];
                let (at, skipped) = arena.push(self.arena.get(e.key_off as usize, e.key_len()));
                self.chunks[c][k].key_off = at as u32;
                dead += skipped;
            }
        }
        self.arena = arena;
        self.arena_dead = dead;
    }

    /// The key and location of entry `i` of the dense entry array (`0..len()`), for listings
    /// in bounded steps. Removing a key moves the last entry into its place and inserting one
    /// appends it, so a listing from the top down misses no key that was there throughout.
    pub fn at(&self, i: usize) -> Option<(&[u8], Loc)> {
        if i >= self.len {
            return None;
        }
        let e = self.entry(i);
        Some((self.key_of(e), e.loc()))
    }

    /// Every key and its location, in the entry array's order (deterministic for a given
    /// sequence of operations).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Loc)> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .map(|e| (self.key_of(e), e.loc()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn loc(v: u64) -> Loc {
        Loc {
            version: v,
            segment: (v % 7) as u32,
            offset: (v * 3) as u32,
            value_len: if v.is_multiple_of(5) {
                None
            } else {
                Some((v % 1000) as u32)
            },
            expires_at_s: (v % 3) as u32,
            causal: !v.is_multiple_of(5) && v % 3 == 1,
        }
    }

    #[test]
    fn prefetch_guesses_the_location_of_nearly_every_present_key_and_changes_nothing() {
        let mut kd = KeyDir::new();
        for i in 0..20_000u64 {
            kd.insert(format!("key{i}").as_bytes(), loc(i + 1)).unwrap();
        }
        let before: Vec<_> = (0..20_000u64)
            .map(|i| kd.get(format!("key{i}").as_bytes()))
            .collect();
        let names: Vec<String> = (0..20_000u64 + 2_000).map(|i| format!("key{i}")).collect();
        let (mut right, mut wrong_present, mut guessed_absent) = (0, 0, 0);
        // Batches longer than the limit, and a short `locs`, are cut, never a panic.
        for batch in names.chunks(PREFETCH_BATCH_MAX + 7) {
            let keys: Vec<&[u8]> = batch.iter().map(|k| k.as_bytes()).collect();
            let mut locs = [None; PREFETCH_BATCH_MAX];
            kd.prefetch(&keys, &mut locs);
            for (k, guess) in keys.iter().zip(locs) {
                match (kd.get(k), guess) {
                    (Some(l), Some(g)) if l == g => right += 1,
                    (Some(_), _) => wrong_present += 1,
                    (None, Some(_)) => guessed_absent += 1,
                    (None, None) => {}
                }
            }
        }
        // 20,000 present keys; PREFETCH_BATCH_MAX of every PREFETCH_BATCH_MAX + 7 looked at.
        let looked_at = right + wrong_present;
        assert!(looked_at > 15_000, "{looked_at}");
        // A guess goes wrong only on a 6-bit tag collision nearer the home slot, or a key
        // beyond PREFETCH_PROBES_MAX slots from it.
        assert!(
            wrong_present * 10 < looked_at,
            "{wrong_present} of {looked_at}"
        );
        assert!(guessed_absent < 200, "{guessed_absent}");
        let mut short = [None; 3];
        let keys: Vec<&[u8]> = names[..10].iter().map(|k| k.as_bytes()).collect();
        kd.prefetch(&keys, &mut short);
        assert_eq!(short[0], kd.get(keys[0]));
        let after: Vec<_> = (0..20_000u64)
            .map(|i| kd.get(format!("key{i}").as_bytes()))
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn entry_is_28_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 28);
        assert_eq!(std::mem::align_of::<Entry>(), 4);
    }

    #[test]
    fn the_causal_flag_shares_the_segment_word_and_leaves_every_field_whole() {
        // Extremes of every field, with and without the flag: nothing bleeds into another.
        let mut kd = KeyDir::new();
        let key = vec![b'k'; KEY_SIZE_MAX];
        for causal in [false, true] {
            for segment in [0, 1, SEGMENT_ID_MAX] {
                for value_len in [Some(0), Some(VALUE_SIZE_MAX as u32), None] {
                    if causal && value_len.is_none() {
                        continue;
                    }
                    let l = Loc {
                        version: u64::MAX,
                        segment,
                        offset: u32::MAX,
                        value_len,
                        expires_at_s: u32::MAX,
                        causal,
                    };
                    kd.insert(&key, l).unwrap();
                    assert_eq!(kd.get(&key), Some(l));
                    assert_eq!(kd.at(0), Some((&key[..], l)));
                }
            }
        }
        // The flag follows the record: a plain write over a causal one clears it.
        let plain = Loc {
            causal: false,
            ..kd.get(&key).unwrap()
        };
        kd.insert(&key, plain).unwrap();
        assert!(!kd.get(&key).unwrap().causal);
        assert_eq!(kd.len(), 1);
    }

    #[test]
    fn the_index_stays_between_53_and_80_percent_full_as_it_grows() {
        let mut kd = KeyDir::new();
        for i in 0..200_000u64 {
            kd.insert(format!("key{i}").as_bytes(), loc(i + 1)).unwrap();
            if i > 1_000 {
                // Just grown: 80% of the old size, in the new one.
                let low = KEYDIR_LOAD_MAX_PERCENT * 100 / KEYDIR_INDEX_GROWTH_PERCENT;
                let load = kd.len() * 100 / kd.index.len();
                assert!(
                    (low..=KEYDIR_LOAD_MAX_PERCENT).contains(&load),
                    "{i}: {load}%"
                );
            }
        }
        for i in (0..200_000u64).step_by(7) {
            assert_eq!(kd.get(format!("key{i}").as_bytes()), Some(loc(i + 1)));
        }
    }

    #[test]
    fn tags_of_sequential_keys_fill_the_index_like_random_ones() {
        // kvbench-style keys: 'k' and a zero-padded number, 16 bytes.
        let slots = 1 << 16;
        let homes: std::collections::HashSet<usize> = (0..slots as u64)
            .map(|i| home_of(tag_of(format!("k{i:015}").as_bytes()), slots))
            .collect();
        // n random keys over n slots leave 1/e of the slots empty: 63% are someone's home.
        let filled = homes.len() * 100 / slots;
        assert!((60..=66).contains(&filled), "{filled}%");
        // The slot tag bits (the low ones) vary too.
        let low: std::collections::HashSet<u32> = (0..1000u64)
            .map(|i| tag_of(format!("k{i:015}").as_bytes()) & SLOT_TAG_MASK)
            .collect();
        assert_eq!(low.len(), 1 << SLOT_TAG_BITS);
    }

    #[test]
    fn expiry_rounds_up() {
        assert_eq!(expiry_s_of(0), 0);
        assert_eq!(expiry_s_of(1), 1);
        assert_eq!(expiry_s_of(1000), 1);
        assert_eq!(expiry_s_of(1001), 2);
        assert_eq!(expiry_s_of(u64::MAX), u32::MAX);
    }

    #[test]
    fn matches_a_btreemap_under_random_operations() {
        let mut kd = KeyDir::new();
        let mut model: BTreeMap<Vec<u8>, Loc> = BTreeMap::new();
        let mut x = 0x1234_5678_9abc_def1u64;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("k{}", x % 3000).into_bytes();
            if x.is_multiple_of(4) {
                assert_eq!(kd.remove(&key), model.remove(&key), "step {step}");
            } else {
                let l = loc(step);
                assert_eq!(kd.insert(&key, l).unwrap(), model.insert(key.clone(), l));
            }
            if step % 10_000 == 0 {
                assert_eq!(kd.len(), model.len());
                for (k, l) in &model {
                    assert_eq!(kd.get(k), Some(*l));
                }
                let mut listed: Vec<(Vec<u8>, Loc)> =
                    kd.iter().map(|(k, l)| (k.to_vec(), l)).collect();
                listed.sort_by(|a, b| a.0.cmp(&b.0));
                let want: Vec<(Vec<u8>, Loc)> =
                    model.iter().map(|(k, l)| (k.clone(), *l)).collect();
                assert_eq!(listed, want);
            }
        }
        // Remove everything: the arena gets compacted along the way, lookups keep working.
        let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
        for k in &keys {
            assert_eq!(kd.remove(k), model.remove(k));
        }
        assert!(kd.is_empty());
        assert_eq!(kd.get(b"k1"), None);
    }

    #[test]
    fn empty_and_long_keys() {
        let mut kd = KeyDir::new();
        let long = vec![7u8; KEY_SIZE_MAX];
        kd.insert(b"", loc(1)).unwrap();
        kd.insert(&long, loc(2)).unwrap();
        assert_eq!(kd.get(b""), Some(loc(1)));
        assert_eq!(kd.get(&long), Some(loc(2)));
        assert_eq!(kd.remove(b""), Some(loc(1)));
        assert_eq!(kd.get(&long), Some(loc(2)));
    }
}
