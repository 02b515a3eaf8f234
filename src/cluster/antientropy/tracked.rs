//! Tracked trees: [`TreeIndex`] (one hash tree per partition held, and the horizons) and
//! [`Tracked`], the `Store` wrapper every write goes through so that the trees follow the
//! store (the hook), old writes for absent keys below the horizon are refused (the guard),
//! and reads are refused while rejoining. See the parent module's doc ("Trees").

use super::{AaeStats, AntiEntropy};
use crate::cluster::merkle::{collectable, Entry, PartitionTree};
use crate::hash::{key_hash, partition_of, partition_of_hash};
use crate::limits::{AE_BUILD_KEYS_PER_STEP, PARTITION_COUNT, PREFETCH_BATCH_MAX};
use crate::storage::{
    keydir::expiry_s_of, prefetch, Applied, KeyMeta, Store, StoreError, Stored, Write,
};
use crate::version::Version;

/// Why a rejoining node's store refuses reads (its copies may be far behind).
const NOT_SERVING_READS: &str = "not serving reads: rejoining through anti-entropy";

/// The trees and horizons: what the store hook ([`Tracked`]) needs.
pub struct TreeIndex {
    pub(super) trees: Vec<Option<Box<PartitionTree>>>,
    /// Per partition, the tombstone horizon known here (a raw version; 0 = none).
    pub(super) horizons: Vec<u64>,
    /// Whether partition p is tracked here (held per the ring and owned by this shard).
    pub(super) held: Vec<bool>,
    pub(super) rejoining: bool,
    pub(super) stats: AaeStats,
    /// Whether writes are noted: the trees are being built or are live (`lifecycle.rs`).
    pub(super) tracking: bool,
    /// Writes noted since start: their upkeep is what keeping idle trees costs.
    pub(super) notes: u64,
    /// The highest of `horizons`: a write at or above it passes the guard without its key
    /// being hashed (nearly every write: horizons trail the clock by minutes).
    pub(super) horizon_max: u64,
}

impl TreeIndex {
    pub(super) fn tree_mut(&mut self, p: usize) -> &mut PartitionTree {
        self.trees[p].get_or_insert_with(|| Box::new(PartitionTree::new()))
    }

    /// The tree of `p` with its hashes up to date, to read: a partition without keys shares
    /// one empty tree instead of allocating its own (most partitions of a small store are
    /// empty, and every exchange reads them).
    pub(super) fn tree_hashed(&mut self, p: usize) -> &PartitionTree {
        static EMPTY: std::sync::OnceLock<PartitionTree> = std::sync::OnceLock::new();
        match self.trees[p].as_deref_mut() {
            Some(t) => {
                t.rehash();
                t
            }
            None => EMPTY.get_or_init(PartitionTree::new),
        }
    }

    pub(super) fn note(&mut self, key: &[u8], meta: KeyMeta) {
        if !self.tracking {
            // No trees now: the next build lists this write from the store.
            return;
        }
        self.notes += 1;
        self.upsert(key, meta);
    }

    /// Put `key`'s entry in its partition's tree, if the partition is tracked here.
    fn upsert(&mut self, key: &[u8], meta: KeyMeta) {
        let h = key_hash(key);
        let p = partition_of_hash(h);
        if !self.held[p] {
            return;
        }
        let e = Entry {
            key,
            version: meta.version.0,
            tombstone: meta.tombstone,
            expires_s: expiry_s_of(meta.expires_at_ms),
        };
        self.tree_mut(p).upsert_hashed(e, h);
    }

    /// A hint that the keys of `keys` whose bit is set in `writes` are about to be written:
    /// start loading the tree lines their updates will touch, one pass per link
    /// (`storage/prefetch.rs`). At most [`PREFETCH_BATCH_MAX`] keys.
    pub fn prefetch(&self, keys: &[&[u8]], writes: u32) {
        if !self.tracking {
            return;
        }
        let mut hashes = [0u64; PREFETCH_BATCH_MAX];
        let mut trees: [Option<&PartitionTree>; PREFETCH_BATCH_MAX] = [None; PREFETCH_BATCH_MAX];
        for (i, key) in keys.iter().enumerate().take(PREFETCH_BATCH_MAX) {
            if writes & (1 << i) == 0 {
                continue;
            }
            hashes[i] = key_hash(key);
            trees[i] = self.trees[partition_of_hash(hashes[i])].as_deref();
            if let Some(t) = trees[i] {
                // The tree itself first: its array pointers are the first link of the chain.
                prefetch::line(t);
            }
        }
        for (t, h) in trees.iter().zip(hashes) {
            if let Some(t) = t {
                t.prefetch_segment(h);
            }
        }
        for (t, h) in trees.iter().zip(hashes) {
            if let Some(t) = t {
                t.prefetch_list(h);
            }
        }
    }

    /// A key went (`before`, `after`) near the sibling limit or away from it: the STATS count
    /// follows.
    fn count_near_limit(&mut self, (before, after): (bool, bool)) {
        let near = &mut self.stats.causal_near_limit;
        match (before, after) {
            (false, true) => *near += 1,
            (true, false) => *near = near.saturating_sub(1),
            _ => {}
        }
    }

    /// Note every key of `store` in a `wanted` partition (one pass, in bounded steps of
    /// [`AE_BUILD_KEYS_PER_STEP`] keys; the store is not written meanwhile).
    pub(super) fn note_store(
        &mut self,
        store: &mut dyn Store,
        wanted: &[bool; PARTITION_COUNT],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut cursor = Some(0);
        // Bounded: each step lists AE_BUILD_KEYS_PER_STEP keys or ends the listing.
        let steps_max = store.len() / AE_BUILD_KEYS_PER_STEP + 2;
        for _ in 0..steps_max {
            let Some(c) = cursor else { break };
            cursor = self.note_store_step(store, wanted, c, AE_BUILD_KEYS_PER_STEP, now_ms)?;
        }
        Ok(())
    }

    /// Note up to `limit` keys of `store` from listing position `cursor`, those of `wanted`
    /// partitions, leaving out what the sweep would remove (collectable at `now_ms` and below
    /// the partition's horizon). Returns the next step's cursor, `None` when done. A causal
    /// record (siblings mode) is noted with its state's digest, which needs its value: the
    /// causal keys of the step are read after it.
    pub(super) fn note_store_step(
        &mut self,
        store: &mut dyn Store,
        wanted: &[bool; PARTITION_COUNT],
        cursor: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut causal: Vec<Vec<u8>> = Vec::new();
        let next = store.scan_keys(cursor, limit, &mut |k, m| {
            let p = partition_of(k);
            // Judged on the tree's whole-second expiry, as the sweep judges the entry.
            let collectable = collectable(m.tombstone, expiry_s_of(m.expires_at_ms), now_ms);
            if !wanted[p] || (collectable && m.version.0 < self.horizons[p]) {
            } else if m.causal {
                causal.push(k.to_vec());
            } else {
                self.upsert(k, m)
            }
        })?;
        for k in causal {
            // A value that cannot be read or decoded stays out of the tree: anti-entropy
            // then brings the key from a replica whose copy is sound.
            let Ok(Some(stored)) = store.get(&k) else {
                continue;
            };
            if let Some((meta, near)) = crate::cluster::siblings::tree_meta_of_record(&stored) {
                self.stats.causal_near_limit += u64::from(near);
                self.upsert(&k, meta);
            }
        }
        Ok(next)
    }

    /// The tree of `p`, if it has one.
    pub fn tree(&self, p: usize) -> Option<&PartitionTree> {
        self.trees[p].as_deref()
    }

    /// The horizon of `p` (raw version).
    pub fn horizon(&self, p: usize) -> u64 {
        self.horizons[p]
    }
}

/// A [`Store`] wrapper through which the cluster core applies every write: it keeps the
/// partition trees in step with the store (the hook), refuses writes below the horizon for
/// absent keys (the guard), and refuses reads while the node is rejoining.
pub struct Tracked<'a> {
    /// The wrapped store.
    pub store: &'a mut dyn Store,
    pub(super) index: &'a mut TreeIndex,
    /// Apply without the guard (records from an authoritative peer, read repairs).
    pub(super) trusted: bool,
    /// Answer a guarded write "stale" instead of refusing it: for hint deliveries, where stale
    /// tells the holder to drop an obsolete hint (a refusal would keep it forever).
    pub(super) guard_answers_stale: bool,
    /// Leave applied records in the store's turn buffer ([`Tracked::buffered`]) instead of
    /// writing each one out at once.
    pub(super) buffered: bool,
    /// The simulator's `lww_anti_entropy` mutation, on the anti-entropy path only: a causal
    /// record replaces the held state when its version is higher instead of being merged.
    pub(super) lww_causal: bool,
}

impl<'a> Tracked<'a> {
    /// Let the writes applied through this wrapper wait in the store's buffer for the turn's
    /// one write (`ShardCore::finish_turn`), for a caller whose every use of their success is
    /// an acknowledgement held until that write returned and turned into an error if it
    /// failed: a replica serving REPLICATE. Other callers count an apply's success at once
    /// (a coordinator's own copy, which a later turn's reply may count; a copy that reports a
    /// partition copied), so for them each write is written out before `apply` returns and
    /// fails there.
    pub fn buffered(mut self) -> Tracked<'a> {
        self.buffered = true;
        self
    }
}

impl Tracked<'_> {
    /// Apply a read repair: as [`Store::apply`], without the horizon guard (see
    /// [`AntiEntropy::tracked_repair`]).
    pub fn apply_repair(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
        let trusted = std::mem::replace(&mut self.trusted, true);
        let r = self.apply(w);
        self.trusted = trusted;
        r
    }

    /// Siblings mode: apply a causal write this node made from the state it holds (it
    /// contains that state, so there is nothing to merge), noting `tree` as its tree entry and
    /// whether the key was, and is, near the sibling limit.
    pub fn apply_made(
        &mut self,
        w: Write<'_>,
        tree: KeyMeta,
        near_limit: (bool, bool),
    ) -> Result<Applied, StoreError> {
        debug_assert!(w.causal);
        let a = self.store.apply(w)?;
        if a == Applied::Stored {
            if !self.buffered {
                self.store.flush()?;
            }
            self.index.note(w.key, tree);
            self.index.count_near_limit(near_limit);
        }
        Ok(a)
    }

    fn guarded(&self, w: &Write<'_>) -> bool {
        // Trusted writes (repairs) skip the key's hash: this runs on every apply.
        !self.trusted
            && w.version.0 < self.index.horizon_max
            && w.version.0 < self.index.horizons[partition_of(w.key)]
            && self.store.version_of(w.key).is_none()
    }
}

impl Store for Tracked<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        if self.index.rejoining {
            return Err(StoreError::Io(std::io::Error::other(NOT_SERVING_READS)));
        }
        self.store.get(key)
    }
    fn read_version(&mut self, key: &[u8]) -> Result<Option<Version>, StoreError> {
        if self.index.rejoining {
            return Err(StoreError::Io(std::io::Error::other(NOT_SERVING_READS)));
        }
        self.store.read_version(key)
    }
    fn version_of(&self, key: &[u8]) -> Option<Version> {
        self.store.version_of(key)
    }
    fn apply(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
        if self.guarded(&w) {
            self.index.stats.guard_refused += 1;
            if self.guard_answers_stale {
                return Ok(Applied::Stale {
                    current: Version(self.index.horizons[partition_of(w.key)]),
                });
            }
            // Refused, never "stale": a stale answer counts as an acknowledgement, and the
            // write would be acknowledged while stored nowhere (simulator seed 312).
            return Err(StoreError::Io(std::io::Error::other(format!(
                "version {} is below the tombstone horizon {} of its partition and the key is absent here",
                w.version,
                self.index.horizons[partition_of(w.key)]
            ))));
        }
        if w.causal && self.lww_causal {
            // The simulator's lww-anti-entropy mutation (read in `AntiEntropy::new`): the
            // record with the higher version wins, as under last-write-wins, unmerged.
            let a = self.store.apply(w)?;
            if a == Applied::Stored {
                if !self.buffered {
                    self.store.flush()?;
                }
                let stored = Stored {
                    version: w.version,
                    expires_at_ms: w.expires_at_ms,
                    value: w.value.map(<[u8]>::to_vec),
                    causal: true,
                };
                if let Some((meta, _)) = crate::cluster::siblings::tree_meta_of_record(&stored) {
                    self.index.note(w.key, meta);
                }
            }
            return Ok(a);
        }
        if w.causal {
            // Siblings mode: merged into the held state, never compared by version.
            let m = crate::cluster::siblings::apply(self.store, &w)?;
            self.index.count_near_limit(m.near_limit);
            if let Some(meta) = m.tree {
                if !self.buffered {
                    self.store.flush()?;
                }
                self.index.note(w.key, meta);
            }
            return Ok(m.applied);
        }
        let a = self.store.apply(w)?;
        if a == Applied::Stored {
            if !self.buffered {
                // Written at once: the caller counts this write as applied now (see
                // [`Tracked::buffered`]), so a write that a later failure would undo must
                // fail here instead (a buffering store undoes it and says so).
                self.store.flush()?;
            }
            // A buffered write that the turn's write fails to store is undone by the store
            // and reported (`take_damaged`): the tree then returns to what the store holds.
            self.index.note(
                w.key,
                KeyMeta {
                    version: w.version,
                    tombstone: w.value.is_none(),
                    expires_at_ms: w.expires_at_ms,
                    causal: w.causal,
                },
            );
        }
        Ok(a)
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        self.store.flush()
    }
    fn unflushed(&self) -> bool {
        self.store.unflushed()
    }
    fn needs_sync(&self) -> bool {
        self.store.needs_sync()
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        self.store.sync()
    }
    fn maintenance(&mut self, now_ms: u64, budget: usize) -> Result<bool, StoreError> {
        self.store.maintenance(now_ms, budget)
    }
    fn len(&self) -> usize {
        self.store.len()
    }
    fn highest_version(&self) -> Version {
        self.store.highest_version()
    }
    fn set_tombstone_horizon(&mut self, horizon: Version) {
        self.store.set_tombstone_horizon(horizon)
    }
    fn stats(&self, report: &mut dyn FnMut(&'static str, u64)) {
        self.store.stats(report)
    }
    fn forget_step(
        &mut self,
        doomed: &mut dyn FnMut(&[u8]) -> bool,
        cursor: u64,
        limit: usize,
    ) -> Result<(u64, Option<u64>), StoreError> {
        self.store.forget_step(doomed, cursor, limit)
    }

    fn scan_keys(
        &self,
        cursor: u64,
        limit: usize,
        f: &mut dyn FnMut(&[u8], KeyMeta),
    ) -> Result<Option<u64>, StoreError> {
        self.store.scan_keys(cursor, limit, f)
    }
    fn scan_epoch(&self) -> u64 {
        self.store.scan_epoch()
    }
}

impl AntiEntropy {
    /// Wrap `store` so that writes update the trees (use it for every apply).
    pub fn tracked<'a>(&'a mut self, store: &'a mut dyn Store) -> Tracked<'a> {
        Tracked {
            store,
            index: &mut self.index,
            trusted: false,
            guard_answers_stale: false,
            buffered: false,
            lww_causal: false,
        }
    }

    /// Like [`AntiEntropy::tracked`] but without the horizon guard, for read
    /// repairs. The guard exists so that an old write (a late hint or REPLICATE) cannot bring
    /// back a key whose tombstone was collected; a repair instead carries the newest record among
    /// current replicas, and a tombstone is collected only once every replica held it. A
    /// replica that lost a key below the horizon to a crash or a damaged record must be
    /// repairable, or it never converges (simulator seed 25).
    pub fn tracked_repair<'a>(&'a mut self, store: &'a mut dyn Store) -> Tracked<'a> {
        Tracked {
            store,
            index: &mut self.index,
            trusted: true,
            guard_answers_stale: false,
            buffered: false,
            lww_causal: false,
        }
    }

    /// Like [`AntiEntropy::tracked`], for hint deliveries: a hint below the horizon for an absent
    /// key is obsolete (its key's newer tombstone was collected, or the key is restored by
    /// repair from the replicas that hold it) and is answered "stale" so its holder drops it.
    pub fn tracked_hint<'a>(&'a mut self, store: &'a mut dyn Store) -> Tracked<'a> {
        Tracked {
            store,
            index: &mut self.index,
            trusted: false,
            guard_answers_stale: true,
            buffered: false,
            lww_causal: false,
        }
    }

    /// Make `key`'s tree entry say what the store holds for it now: the store reported it
    /// (`Store::take_damaged`) because it lost its record (found damaged: the entry goes, and
    /// the difference makes the next exchange bring the key back from another replica) or
    /// undid a buffered write the tree had noted (the entry returns to the record the store
    /// holds again). Read from the store rather than assumed: the key may have been written
    /// again between the report and this call.
    pub fn resync(&mut self, store: &mut dyn Store, key: &[u8]) {
        match store.get(key) {
            Ok(Some(s)) => self.index.note(
                key,
                KeyMeta {
                    version: s.version,
                    tombstone: s.value.is_none(),
                    expires_at_ms: s.expires_at_ms,
                    causal: s.causal,
                },
            ),
            Ok(None) | Err(_) => self.forget(key),
        }
    }

    /// Drop `key` from its partition's tree.
    pub fn forget(&mut self, key: &[u8]) {
        let p = partition_of(key);
        if let Some(t) = self.index.trees[p].as_deref_mut() {
            t.remove(key);
        }
    }
}
