//! When a core keeps its hash trees: built from the store when anti-entropy needs them,
//! kept up to date while it works, dropped when it is idle.
//!
//! Keeping every partition's tree in step with every write costs each copy of each write a
//! few random cache lines (the tree, the segment sum, the key list): about a microsecond of
//! a replicated write's five on a two-core machine, for trees that are read only while a
//! round, a copy or a peer's exchange runs — a few seconds a minute. So trees live only then:
//!
//! ```text
//!            round starts / a copy starts / a peer's TREE or KEYS request
//!   ┌─────┐ ─────────────────────────────────────────────────────────▶ ┌──────────┐
//!   │ Off │                                                            │ Building │
//!   └─────┘ ◀──── idle, and upkeep since last use ≥ a build ──┐        └──────────┘
//!      trees dropped (freed a few a tick),                    │  every key   │  writes
//!      writes skip them                                  ┌────┴─┐  listed    │  noted
//!                                                        │ Live │ ◀──────────┘
//!                                                        └──────┘  writes noted, trees read
//! ```
//!
//! - **Building** lists the store's keys over about [`AE_TREE_BUILD_TICKS`] ticks, noting each
//!   key of a held partition (entries the sweep would remove — collectable, below the
//!   horizon — are left out). Writes are noted as they land from the start of the build, so
//!   whichever of a write and the listing reaches a key last, the tree ends with the store's
//!   record. A store whose listing order may change between steps (the in-memory store's
//!   hash map, on a new key) says so ([`Store::scan_epoch`]): the build then starts over,
//!   and after [`AE_TREE_BUILD_RESTARTS_MAX`] restarts lists the rest in one step. The log
//!   store lists its key directory top down, which no insert or removal upsets.
//! - **Live** trees are exactly what the always-maintained trees were: every exchange reads
//!   them as before, so the rules of the parent module (completion, horizons, rejoin) are
//!   unchanged.
//! - **Off**: no trees, and [`super::TreeIndex::note`] returns before hashing the key.
//!   Live trees go Off when no round, exchange or copy runs, nothing used them for
//!   [`AE_TREES_IDLE_MS`], and the writes noted since number at least
//!   [`AE_TREE_BUILD_COST_PER_KEY`] × the store's keys (and [`AE_TREES_DROP_NOTES_MIN`]):
//!   their upkeep then cost about a build, so keeping them longer is not worth it
//!   (rent-or-buy). A lightly written store, or one whose rounds come often, keeps them.
//! - A build for a peer's exchange that ends with no round running starts this core's round
//!   at once, on the trees just built: the replicas' rounds fall in step, one build a node a
//!   round, instead of each round building its peers' trees anew.
//!
//! A peer asking for trees that are not built yet is answered OVERLOADED, and its exchange
//! asks again [`AE_BUSY_RETRY_MS`] later (for up to [`AE_BUSY_WAIT_MS_MAX`]); a small store
//! is built within the request, so such a peer never waits.
//!
//! In siblings mode the trees are kept always (built at start): a causal key's tree entry is
//! the digest of its state, which a build must read the value to compute.

use super::AntiEntropy;
use crate::limits::{
    AE_TREES_DROP_NOTES_MIN, AE_TREES_FREED_PER_TICK, AE_TREES_IDLE_MS, AE_TREE_BUILD_COST_PER_KEY,
    AE_TREE_BUILD_KEYS_PER_TICK_MAX, AE_TREE_BUILD_KEYS_PER_TICK_MIN, AE_TREE_BUILD_RESTARTS_MAX,
    AE_TREE_BUILD_TICKS, PARTITION_COUNT,
};
use crate::storage::Store;

/// Where the trees are in their lifecycle (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trees {
    /// No trees; writes skip them.
    Off,
    /// Being listed from the store; writes are noted.
    Building(Build),
    /// Up to date: read by exchanges, noted by writes.
    Live,
}

/// A background build's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Build {
    /// The store's listing cursor of the next step.
    cursor: u64,
    /// [`Store::scan_epoch`] when the listing (re)started.
    epoch: u64,
    /// Times the listing started over.
    restarts: u32,
    /// When the build started (ms), for the log.
    started_ms: u64,
    /// Only peers' exchanges asked for the trees (see `tree_build_step`).
    for_peer: bool,
}

impl AntiEntropy {
    /// Whether the trees are up to date to be read now (anti-entropy is about to read them):
    /// if they are off, their build starts, and a store small enough for one step is built
    /// at once.
    /// `for_peer`: a peer's exchange asks (not this core's round or copy).
    pub(super) fn trees_ready(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        for_peer: bool,
    ) -> bool {
        self.mark_trees_used(now_ms);
        match &mut self.trees {
            Trees::Live => true,
            Trees::Building(b) => {
                b.for_peer &= for_peer;
                false
            }
            Trees::Off => {
                self.start_tree_build(now_ms, store);
                if let Trees::Building(b) = &mut self.trees {
                    b.for_peer = for_peer;
                }
                self.tree_build_step(now_ms, store);
                self.trees == Trees::Live
            }
        }
    }

    /// Start listing the store into empty trees; writes are noted from now on.
    pub(super) fn start_tree_build(&mut self, now_ms: u64, store: &dyn Store) {
        self.release_trees();
        self.index.tracking = true;
        self.trees = Trees::Building(Build {
            cursor: 0,
            epoch: store.scan_epoch(),
            restarts: 0,
            started_ms: now_ms,
            for_peer: false,
        });
    }

    /// One tick's share of a running build (nothing when none runs).
    pub(super) fn tree_build_step(&mut self, now_ms: u64, store: &mut dyn Store) {
        let Trees::Building(mut b) = self.trees else {
            return;
        };
        let epoch = store.scan_epoch();
        if epoch != b.epoch {
            // A key may have moved to a position already listed: list again (what was
            // noted stays; noting a key again is idempotent).
            b = Build {
                cursor: 0,
                epoch,
                restarts: b.restarts + 1,
                ..b
            };
        }
        // Past the restarts allowed, the rest goes in this one step: nothing can move
        // under a listing that does not yield.
        let limit = if b.restarts > AE_TREE_BUILD_RESTARTS_MAX {
            usize::MAX
        } else if self.build_keys_per_tick > 0 {
            self.build_keys_per_tick
        } else {
            (store.len() / AE_TREE_BUILD_TICKS).clamp(
                AE_TREE_BUILD_KEYS_PER_TICK_MIN,
                AE_TREE_BUILD_KEYS_PER_TICK_MAX,
            )
        };
        let wanted = [true; PARTITION_COUNT];
        match self
            .index
            .note_store_step(store, &wanted, b.cursor, limit, now_ms)
        {
            Ok(Some(next)) => {
                b.cursor = next;
                self.trees = Trees::Building(b);
            }
            Ok(None) => {
                self.trees = Trees::Live;
                self.index.stats.tree_builds += 1;
                if b.for_peer && self.round.is_none() {
                    // Built for a peer's round: this core's own round runs now, on the same
                    // trees, rather than building them again later. Rounds of the replicas
                    // of a partition so fall in step: one build a node a round. (During a
                    // ring change too: a round leaves the moving partitions to the copies.)
                    self.next_round_ms = self.next_round_ms.min(now_ms);
                }
                log::debug!(
                    "node {}: anti-entropy trees built from {} keys in {} ms ({} restarts)",
                    self.me,
                    store.len(),
                    now_ms.saturating_sub(b.started_ms),
                    b.restarts
                );
            }
            Err(e) => {
                // Trees without the store's keys would make every exchange move them all:
                // the round waiting for them ends failed, and the next use tries again.
                log::error!("anti-entropy: trees not built: {e}");
                self.drop_trees();
                if let Some(r) = self.round.as_mut() {
                    r.queue.clear();
                    r.full = false;
                    r.clean = false;
                }
            }
        }
    }

    /// Anti-entropy is using the trees now (or records of an exchange arrive).
    pub(super) fn mark_trees_used(&mut self, now_ms: u64) {
        self.trees_used_ms = now_ms;
        self.notes_at_use = self.index.notes;
    }

    /// Drop the trees once idle (see the module doc): rent-or-buy, never more than a small
    /// multiple of the best choice in hindsight. Siblings mode keeps them.
    pub(super) fn drop_idle_trees(&mut self, now_ms: u64, keys: usize) {
        let idle = self.trees == Trees::Live
            && !self.keep_trees
            && self.round.is_none()
            && self.exchanges.is_empty()
            && self.parked.is_empty()
            && now_ms.saturating_sub(self.trees_used_ms) >= AE_TREES_IDLE_MS
            && self.index.notes - self.notes_at_use
                >= (keys as u64 * AE_TREE_BUILD_COST_PER_KEY).max(AE_TREES_DROP_NOTES_MIN);
        if idle {
            self.drop_trees();
        }
    }

    pub(super) fn drop_trees(&mut self) {
        self.release_trees();
        self.index.tracking = false;
        self.trees = Trees::Off;
        // The next build leaves out what the sweep would remove.
        self.sweep = None;
        self.sweep_again = false;
    }

    /// Take every tree out of the index, to be freed a few a tick.
    fn release_trees(&mut self) {
        let trees = self.index.trees.iter_mut().filter_map(Option::take);
        self.freeing.extend(trees);
    }

    /// Free a few dropped trees ([`AE_TREES_FREED_PER_TICK`]).
    pub(super) fn free_dropped_trees(&mut self) {
        let keep = self.freeing.len().saturating_sub(AE_TREES_FREED_PER_TICK);
        self.freeing.truncate(keep);
    }
}
