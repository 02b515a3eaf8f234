//! The hash tree of one ring partition held by a replica: what anti-entropy compares.
//!
//! It summarises the set of `(key, version)` pairs the replica holds in the partition, and is
//! kept up to date as writes land (every store apply that changes a record calls
//! [`PartitionTree::upsert`]) for as long as anti-entropy keeps it: it is built from the store
//! when needed and dropped when idle (`cluster/antientropy/lifecycle.rs`).
//!
//! ## Shape
//!
//! ```text
//!  level 0   root                                   1 hash
//!             │  fan-out 32
//!  level 1   mid 0 … mid 31                        32 hashes
//!             │  fan-out 32 each
//!  level 2   segment 0 … segment 1023            1024 hashes, one key list each
//! ```
//!
//! A key's segment is the [`SEGMENT_BITS`] bits of its key hash ([`crate::hash::key_hash`])
//! just below the partition bits, so segments split a partition evenly and every replica puts a
//! key in the same segment. With 256 partitions and 1M keys a segment holds about 4 keys.
//!
//! ## Hashes (fixed: they are compared across nodes)
//!
//! ```text
//!  item(key, version) = fmix64(fmix64(key_hash(key) ^ ITEM_SEED) ^ version)
//!  segment            = Σ item over the segment's keys (wrapping add; empty = 0)
//!  mid i / root       = h := INNER_SEED; for each child c in order: h := fmix64(h ^ c) + c; h
//! ```
//!
//! `fmix64` is MurmurHash3's 64-bit finalizer ([`crate::hash::fmix64`]); `key_hash` is the
//! stable FNV-1a + fmix64 key hash of the protocol. The segment hash is a sum so that a key's
//! contribution is added or removed in O(1) when its version changes (no rescan of the
//! segment); a sum of well-mixed 64-bit values tells two different sets apart except with
//! probability about 2^-64. Inner nodes use a non-linear chain instead and are rehashed
//! lazily: an update marks its mid (and the root) dirty, and [`PartitionTree::rehash`] —
//! called before the tree is compared — recomputes only dirty mids (32 additions each) and
//! then the root. Tombstone-ness is not hashed: a version names exactly one write.
//!
//! ## Key lists and memory
//!
//! Each segment keeps its keys in one sorted byte arena (no per-key allocation):
//!
//! ```text
//!  | version u64 | expires at s u32 (0 = never) | flags+len u16 | key |
//!    flags+len: bit 15 tombstone, bits 0..=10 key length (KEY_SIZE_MAX = 1024 fits)
//! ```
//!
//! so listing a differing segment's keys for an exchange costs nothing but the copy — no scan
//! of the store, whose key directory is a hash table that cannot list one segment without
//! walking all keys. The price is memory: 14 bytes + the key per key (plus arena slack), and
//! 1024 × (8 + 24) bytes + 33 × 8 bytes ≈ 33 KiB per partition held (allocated when the
//! partition gets its first key). For 1M keys of 16 bytes over 256 partitions that is
//! ≈ 30 MB + 8.5 MB. Keys are sorted in a segment so that lists are the same bytes on every
//! replica whatever the order writes arrived in (determinism of the simulator).

use crate::hash::{fmix64, key_hash, PARTITION_BITS};
use crate::limits::PREFETCH_RECORD_BYTES_MAX;
use crate::storage::prefetch;

/// Bits of the key hash (below the partition bits) that pick a key's segment.
pub const SEGMENT_BITS: u32 = 10;
/// Segments (leaves) per partition.
pub const SEGMENTS: usize = 1 << SEGMENT_BITS;
/// Children per inner node.
pub const FANOUT: usize = 32;
/// Levels: 0 root, 1 mids, 2 segments.
pub const LEVELS: u8 = 3;
/// Bytes of an arena entry before its key.
pub const ENTRY_HEADER_SIZE: usize = 14;

const _: () = assert!(FANOUT * FANOUT == SEGMENTS);
const _: () = assert!(PARTITION_BITS + SEGMENT_BITS <= 64);
const _: () = assert!(crate::limits::KEY_SIZE_MAX < (1 << 11));

/// Mixed into the key hash of an item so item hashes share no structure with placement.
pub const ITEM_SEED: u64 = 0x6161_655f_6974_656d; // "aae_item"
/// Start value of the inner-node chain.
pub const INNER_SEED: u64 = 0x6161_655f_6e6f_6465; // "aae_node"

const TOMBSTONE_BIT: u16 = 0x8000;
const LEN_MASK: u16 = 0x07FF;

/// The segment of a key hash.
#[inline]
pub fn segment_of_hash(h: u64) -> usize {
    ((h << PARTITION_BITS) >> (64 - SEGMENT_BITS)) as usize
}

/// The segment of a key.
#[inline]
pub fn segment_of(key: &[u8]) -> usize {
    segment_of_hash(key_hash(key))
}

/// A key's contribution to its segment hash.
#[inline]
pub fn item_hash(key: &[u8], version: u64) -> u64 {
    item_hash_of(item_seed_of(key_hash(key)), version)
}

/// The version-independent part of a key's item hash, from its key hash.
#[inline]
fn item_seed_of(key_hash: u64) -> u64 {
    fmix64(key_hash ^ ITEM_SEED)
}

/// [`item_hash`] from the key's [`item_seed_of`].
#[inline]
fn item_hash_of(item_seed: u64, version: u64) -> u64 {
    fmix64(item_seed ^ version)
}

/// The hash of an inner node over its children's hashes, in order.
pub fn combine(children: &[u64]) -> u64 {
    children
        .iter()
        .fold(INNER_SEED, |h, &c| fmix64(h ^ c).wrapping_add(c))
}

/// One key of a segment list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// Version of the record held.
    pub version: u64,
    /// The record is a tombstone.
    pub tombstone: bool,
    /// Expiry in whole seconds since the epoch, rounded up; 0 = never.
    pub expires_s: u32,
}

/// Whether a record may be forgotten once its partition's tombstone horizon is above its
/// version: a tombstone, or a value whose expiry (whole seconds, 0 = never) has passed at
/// `now_ms`.
pub fn collectable(tombstone: bool, expires_s: u32, now_ms: u64) -> bool {
    tombstone || (expires_s != 0 && u64::from(expires_s) * 1000 <= now_ms)
}

impl Entry<'_> {
    /// Whether the entry may be forgotten below the horizon ([`collectable`]).
    pub fn collectable(&self, now_ms: u64) -> bool {
        collectable(self.tombstone, self.expires_s, now_ms)
    }

    fn encoded_len(&self) -> usize {
        ENTRY_HEADER_SIZE + self.key.len()
    }

    /// A tombstone or a value with an expiry: it may become collectable.
    pub fn is_mortal(&self) -> bool {
        self.tombstone || self.expires_s != 0
    }
}

/// Decode the entry at `at` of an arena (written by this module only).
fn entry_at(arena: &[u8], at: usize) -> Entry<'_> {
    let version = u64::from_be_bytes(arena[at..at + 8].try_into().expect("8 bytes"));
    let expires_s = u32::from_be_bytes(arena[at + 8..at + 12].try_into().expect("4 bytes"));
    let fl = u16::from_be_bytes([arena[at + 12], arena[at + 13]]);
    let len = (fl & LEN_MASK) as usize;
    Entry {
        key: &arena[at + ENTRY_HEADER_SIZE..at + ENTRY_HEADER_SIZE + len],
        version,
        tombstone: fl & TOMBSTONE_BIT != 0,
        expires_s,
    }
}

fn encode_header_into(e: &Entry<'_>, out: &mut [u8; ENTRY_HEADER_SIZE]) {
    assert!(!e.key.is_empty() && e.key.len() <= LEN_MASK as usize);
    out[..8].copy_from_slice(&e.version.to_be_bytes());
    out[8..12].copy_from_slice(&e.expires_s.to_be_bytes());
    let fl = e.key.len() as u16 | if e.tombstone { TOMBSTONE_BIT } else { 0 };
    out[12..14].copy_from_slice(&fl.to_be_bytes());
}

fn encode_entry(e: &Entry<'_>, out: &mut Vec<u8>) {
    let mut header = [0; ENTRY_HEADER_SIZE];
    encode_header_into(e, &mut header);
    out.extend_from_slice(&header);
    out.extend_from_slice(e.key);
}

/// Encode `e` over `out`, exactly its encoded length.
fn encode_entry_into(e: &Entry<'_>, out: &mut [u8]) {
    let (header, key) = out.split_at_mut(ENTRY_HEADER_SIZE);
    encode_header_into(e, header.try_into().expect("the header's size"));
    key.copy_from_slice(e.key);
}

/// Iterator over a segment's entries, in key order.
pub struct Entries<'a> {
    arena: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;
    fn next(&mut self) -> Option<Entry<'a>> {
        if self.at >= self.arena.len() {
            return None;
        }
        let e = entry_at(self.arena, self.at);
        self.at += e.encoded_len();
        Some(e)
    }
}

/// The hash tree and key lists of one partition.
#[derive(Clone, Debug)]
pub struct PartitionTree {
    sums: Vec<u64>,
    lists: Vec<Vec<u8>>,
    mids: [u64; FANOUT],
    root: u64,
    /// Bit i: mid i must be recomputed. The root is dirty whenever any bit is set.
    dirty_mids: u32,
    keys: usize,
    list_bytes: usize,
    mortal: usize,
}

impl Default for PartitionTree {
    fn default() -> Self {
        PartitionTree::new()
    }
}

impl PartitionTree {
    /// An empty tree.
    pub fn new() -> PartitionTree {
        let mut t = PartitionTree {
            sums: vec![0; SEGMENTS],
            lists: vec![Vec::new(); SEGMENTS],
            mids: [0; FANOUT],
            root: 0,
            dirty_mids: u32::MAX,
            keys: 0,
            list_bytes: 0,
            mortal: 0,
        };
        t.rehash();
        t
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Bytes of RAM held, in O(1): the fixed arrays plus the key lists' used bytes (their
    /// spare capacity is not counted).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.sums.capacity() * 8
            + self.lists.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.list_bytes
    }

    /// Entries that may become collectable (tombstones and values with an expiry): when 0, a
    /// sweep can skip the whole partition.
    pub fn mortal(&self) -> usize {
        self.mortal
    }

    /// Find `key` in segment `s`: `Ok(offset)` of its entry or `Err(offset)` where it would go.
    fn find(&self, s: usize, key: &[u8]) -> Result<usize, usize> {
        let arena = &self.lists[s];
        let mut at = 0;
        while at < arena.len() {
            let e = entry_at(arena, at);
            match e.key.cmp(key) {
                std::cmp::Ordering::Less => at += e.encoded_len(),
                std::cmp::Ordering::Equal => return Ok(at),
                std::cmp::Ordering::Greater => return Err(at),
            }
        }
        Err(at)
    }

    fn touch(&mut self, s: usize) {
        self.dirty_mids |= 1 << (s / FANOUT);
    }

    /// Make `e` the key's entry (the record the store now holds). Returns the version it
    /// replaced, if any. O(size of the key's segment) to find it; O(1) to fix the hash.
    pub fn upsert(&mut self, e: Entry<'_>) -> Option<u64> {
        self.upsert_hashed(e, key_hash(e.key))
    }

    /// [`PartitionTree::upsert`] of a key whose [`key_hash`] the caller has (`key_hash`
    /// byte by byte is the costly part of an update otherwise: it was computed three times).
    pub fn upsert_hashed(&mut self, e: Entry<'_>, key_hash: u64) -> Option<u64> {
        debug_assert_eq!(key_hash, crate::hash::key_hash(e.key));
        let s = segment_of_hash(key_hash);
        let item_seed = item_seed_of(key_hash);
        let found = self.find(s, e.key);
        let old = found.ok().map(|at| {
            let old = entry_at(&self.lists[s], at);
            self.mortal -= usize::from(old.is_mortal());
            self.sums[s] = self.sums[s].wrapping_sub(item_hash_of(item_seed, old.version));
            old.version
        });
        match found {
            // The same key, so the same length: the entry is rewritten where it is (the
            // common case, an update: no allocation, nothing moved).
            Ok(at) => encode_entry_into(&e, &mut self.lists[s][at..at + e.encoded_len()]),
            Err(at) => {
                self.keys += 1;
                let mut header = [0; ENTRY_HEADER_SIZE];
                encode_header_into(&e, &mut header);
                let list = &mut self.lists[s];
                list.splice(at..at, header.iter().chain(e.key).copied());
                self.list_bytes += e.encoded_len();
            }
        }
        self.mortal += usize::from(e.is_mortal());
        self.sums[s] = self.sums[s].wrapping_add(item_hash_of(item_seed, e.version));
        self.touch(s);
        old
    }

    /// Start loading the segment sum and list header an update of the key with hash
    /// `key_hash` will touch (`storage/prefetch.rs`); [`PartitionTree::prefetch_list`] is the
    /// next link, once these lines are in.
    pub fn prefetch_segment(&self, key_hash: u64) {
        let s = segment_of_hash(key_hash);
        prefetch::line(&self.sums[s]);
        prefetch::line(&self.lists[s]);
    }

    /// Start loading the first lines of the key list an update of the key with hash
    /// `key_hash` will search.
    pub fn prefetch_list(&self, key_hash: u64) {
        let list = &self.lists[segment_of_hash(key_hash)];
        prefetch::lines(list.as_ptr(), list.len(), PREFETCH_RECORD_BYTES_MAX);
    }

    /// The entry of `key`, if held.
    pub fn get(&self, key: &[u8]) -> Option<Entry<'_>> {
        let s = segment_of(key);
        self.find(s, key)
            .ok()
            .map(|at| entry_at(&self.lists[s], at))
    }

    /// Forget `key`. Returns whether it was held.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let s = segment_of(key);
        let Ok(at) = self.find(s, key) else {
            return false;
        };
        let e = entry_at(&self.lists[s], at);
        let (h, len) = (item_hash(e.key, e.version), e.encoded_len());
        self.mortal -= usize::from(e.is_mortal());
        self.sums[s] = self.sums[s].wrapping_sub(h);
        self.lists[s].drain(at..at + len);
        self.list_bytes -= len;
        self.keys -= 1;
        self.touch(s);
        true
    }

    /// Forget every entry of segment `s` for which `drop` says so. Returns how many.
    pub fn remove_where(&mut self, s: usize, mut drop: impl FnMut(&Entry<'_>) -> bool) -> usize {
        if !self.entries(s).any(|e| drop(&e)) {
            return 0; // the common case: look, do not rebuild
        }
        let old = std::mem::take(&mut self.lists[s]);
        let mut kept = Vec::with_capacity(old.len());
        let mut removed = 0;
        for e in (Entries { arena: &old, at: 0 }) {
            if drop(&e) {
                self.sums[s] = self.sums[s].wrapping_sub(item_hash(e.key, e.version));
                self.list_bytes -= e.encoded_len();
                self.mortal -= usize::from(e.is_mortal());
                self.keys -= 1;
                removed += 1;
            } else {
                encode_entry(&e, &mut kept);
            }
        }
        self.lists[s] = kept;
        if removed > 0 {
            self.touch(s);
        }
        removed
    }

    /// The entries of segment `s`, in key order.
    pub fn entries(&self, s: usize) -> Entries<'_> {
        Entries {
            arena: &self.lists[s],
            at: 0,
        }
    }

    /// Bytes of segment `s`'s list (14 + key per entry).
    pub fn segment_bytes(&self, s: usize) -> usize {
        self.lists[s].len()
    }

    /// Whether inner nodes must be recomputed before [`PartitionTree::hash`].
    pub fn is_dirty(&self) -> bool {
        self.dirty_mids != 0
    }

    /// Recompute the dirty inner nodes. Returns the number of inner nodes recomputed.
    pub fn rehash(&mut self) -> usize {
        if self.dirty_mids == 0 {
            return 0;
        }
        let mut n = 1;
        for i in 0..FANOUT {
            if self.dirty_mids & (1 << i) != 0 {
                self.mids[i] = combine(&self.sums[i * FANOUT..(i + 1) * FANOUT]);
                n += 1;
            }
        }
        self.root = combine(&self.mids);
        self.dirty_mids = 0;
        n
    }

    /// Hash of node `index` at `level` (0 root, 1 mid, 2 segment); `None` if out of range.
    /// Inner levels must be clean ([`PartitionTree::rehash`]).
    pub fn hash(&self, level: u8, index: usize) -> Option<u64> {
        assert!(!self.is_dirty(), "rehash before reading inner hashes");
        match level {
            0 if index == 0 => Some(self.root),
            1 if index < FANOUT => Some(self.mids[index]),
            2 if index < SEGMENTS => Some(self.sums[index]),
            _ => None,
        }
    }

    /// The root hash recomputed from the key lists alone, ignoring every cached value (tests:
    /// incremental == from scratch).
    pub fn root_from_scratch(&self) -> u64 {
        let sums: Vec<u64> = (0..SEGMENTS)
            .map(|s| {
                self.entries(s)
                    .fold(0u64, |acc, e| acc.wrapping_add(item_hash(e.key, e.version)))
            })
            .collect();
        let mids: Vec<u64> = sums.chunks(FANOUT).map(combine).collect();
        combine(&mids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rng::SplitMix64;
    use std::collections::BTreeMap;

    fn e(key: &[u8], version: u64) -> Entry<'_> {
        Entry {
            key,
            version,
            tombstone: false,
            expires_s: 0,
        }
    }

    /// Differing segments found by comparing two trees root-down, the way an exchange does.
    fn differing_segments(a: &mut PartitionTree, b: &mut PartitionTree) -> Vec<usize> {
        a.rehash();
        b.rehash();
        let mut out = Vec::new();
        if a.hash(0, 0) == b.hash(0, 0) {
            return out;
        }
        for m in 0..FANOUT {
            if a.hash(1, m) == b.hash(1, m) {
                continue;
            }
            for s in m * FANOUT..(m + 1) * FANOUT {
                if a.hash(2, s) != b.hash(2, s) {
                    out.push(s);
                }
            }
        }
        out
    }

    #[test]
    fn incremental_equals_from_scratch_under_random_updates() {
        let mut rng = SplitMix64::new(7);
        let mut t = PartitionTree::new();
        let mut model: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for step in 0..20_000u64 {
            let key = format!("k{}", rng.below(3_000)).into_bytes();
            match rng.below(10) {
                0 => {
                    assert_eq!(t.remove(&key), model.remove(&key).is_some());
                }
                _ => {
                    let v = step + 1;
                    let old = t.upsert(Entry {
                        tombstone: rng.below(4) == 0,
                        ..e(&key, v)
                    });
                    assert_eq!(old, model.insert(key.clone(), v));
                }
            }
            if step % 997 == 0 {
                t.rehash();
                assert_eq!(t.hash(0, 0).unwrap(), t.root_from_scratch());
            }
        }
        t.rehash();
        assert_eq!(t.hash(0, 0).unwrap(), t.root_from_scratch());
        assert_eq!(t.len(), model.len());
        // Same content inserted in another order gives the same bytes and hashes.
        let mut u = PartitionTree::new();
        for (k, v) in model.iter().rev() {
            u.upsert(e(k, *v));
        }
        // Tombstone flags differ from `t` but are not hashed.
        u.rehash();
        assert_eq!(u.hash(0, 0), t.hash(0, 0));
        for (k, v) in &model {
            assert_eq!(t.get(k).unwrap().version, *v);
        }
        // Sorted lists.
        for s in 0..SEGMENTS {
            let keys: Vec<&[u8]> = t.entries(s).map(|e| e.key).collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]));
            assert!(keys.iter().all(|k| segment_of(k) == s));
        }
    }

    #[test]
    fn differing_keys_are_found_exactly() {
        let mut a = PartitionTree::new();
        let mut b = PartitionTree::new();
        let keys: Vec<Vec<u8>> = (0..5_000)
            .map(|i| format!("key:{i}").into_bytes())
            .collect();
        for k in &keys {
            a.upsert(e(k, 10));
            b.upsert(e(k, 10));
        }
        assert!(differing_segments(&mut a, &mut b).is_empty());
        // b misses one key, has an older version of another, and an extra third.
        a.upsert(e(&keys[17], 11));
        b.remove(&keys[99]);
        b.upsert(e(b"only-in-b", 5));
        let segs = differing_segments(&mut a, &mut b);
        let mut expect = vec![
            segment_of(&keys[17]),
            segment_of(&keys[99]),
            segment_of(b"only-in-b"),
        ];
        expect.sort();
        expect.dedup();
        assert_eq!(segs, expect);
        // Within those segments, the differing keys are exactly the three.
        let mut diff = Vec::new();
        for s in segs {
            let la: BTreeMap<&[u8], u64> = a.entries(s).map(|e| (e.key, e.version)).collect();
            let lb: BTreeMap<&[u8], u64> = b.entries(s).map(|e| (e.key, e.version)).collect();
            for k in la.keys().chain(lb.keys()) {
                if la.get(k) != lb.get(k) && !diff.contains(k) {
                    diff.push(*k);
                }
            }
        }
        diff.sort();
        let mut want: Vec<&[u8]> = vec![&keys[17], &keys[99], b"only-in-b"];
        want.sort();
        assert_eq!(diff, want);
        // Repairing makes the trees equal again.
        b.upsert(e(&keys[17], 11));
        b.upsert(e(&keys[99], 10));
        a.upsert(e(b"only-in-b", 5));
        assert!(differing_segments(&mut a, &mut b).is_empty());
    }

    #[test]
    fn rehash_touches_only_dirty_paths() {
        let mut t = PartitionTree::new();
        assert_eq!(t.rehash(), 0);
        t.upsert(e(b"a", 1));
        assert_eq!(t.rehash(), 2, "one mid and the root");
        t.upsert(e(b"a", 2));
        t.upsert(e(b"a", 3));
        assert_eq!(t.rehash(), 2);
    }

    #[test]
    fn remove_where_and_collectable() {
        let mut t = PartitionTree::new();
        let keys: Vec<Vec<u8>> = (0..2_000).map(|i| format!("t{i}").into_bytes()).collect();
        for (i, k) in keys.iter().enumerate() {
            t.upsert(Entry {
                key: k,
                version: i as u64,
                tombstone: i % 2 == 0,
                expires_s: if i % 3 == 0 { 5 } else { 0 },
            });
        }
        let now_ms = 10_000;
        let removed: usize = (0..SEGMENTS)
            .map(|s| t.remove_where(s, |e| e.collectable(now_ms) && e.version < 1_000))
            .sum();
        // Below 1000: even (tombstones) or multiple of 3 (expired at 5 s).
        let expect = (0..1_000).filter(|i| i % 2 == 0 || i % 3 == 0).count();
        assert_eq!(removed, expect);
        assert_eq!(t.len(), 2_000 - expect);
        let mortal = (0..SEGMENTS)
            .flat_map(|s| {
                t.entries(s)
                    .filter(|e| e.is_mortal())
                    .count()
                    .checked_add(0)
            })
            .sum::<usize>();
        assert_eq!(t.mortal(), mortal);
        t.rehash();
        assert_eq!(t.hash(0, 0).unwrap(), t.root_from_scratch());
    }

    #[test]
    fn golden_hashes() {
        // These values are compared across nodes: changing them breaks mixed-version clusters.
        assert_eq!(item_hash(b"hello", 1), 0x8a91_fc54_329f_a8ca);
        assert_ne!(item_hash(b"hello", 1), item_hash(b"hello", 2));
        assert_eq!(segment_of(b"hello"), 789);
        let t = PartitionTree::new();
        assert_eq!(t.hash(0, 0).unwrap(), 0x4dca_443a_1d9e_2c6a);
        assert_eq!(t.hash(0, 0).unwrap(), combine(&[combine(&[0; 32]); 32]));
    }
}
