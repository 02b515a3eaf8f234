//! Tombstone horizons: the leader's decision (per partition, from the pairs' completed
//! exchanges), adopting horizons (the store's compaction horizon is the minimum over the
//! partitions held), and the bounded sweep of collectable entries below the horizon out of
//! the trees. See the parent module's doc ("Tombstone horizon").

use super::AntiEntropy;
use crate::cluster::merkle::{self, SEGMENTS};
use crate::limits::{AE_SWEEP_ENTRIES_PER_TICK, AE_SWEEP_SEGMENTS_PER_TICK, PARTITION_COUNT};
use crate::storage::Store;
use crate::version::Version;
use std::collections::BTreeMap;

pub(super) fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

/// The horizon (raw version) for a sync point `s_ms`.
pub(super) fn horizon_of(s_ms: u64, grace_ms: u64) -> u64 {
    let ms = s_ms.saturating_sub(grace_ms).min((1 << 42) - 1);
    Version::new(ms, 0, 0).0
}

impl AntiEntropy {
    pub(super) fn leader_record(&mut self, from: u32, batch: &BTreeMap<(u16, u32), u64>) {
        for (&(p, peer), &start) in batch {
            let (a, b) = pair(from, peer);
            let e = self.reports.entry((p, a, b)).or_insert(start);
            *e = (*e).max(start);
        }
    }

    /// The leader's horizons: for each partition whose included replicas all exchanged
    /// pairwise, the oldest of the pairs' latest exchange starts, minus the grace.
    pub(super) fn leader_decide(
        &mut self,
        now_ms: u64,
        alive: &dyn Fn(u32) -> bool,
    ) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for p in 0..PARTITION_COUNT {
            // Every holder, pending owners included: a tombstone is collected only once the
            // copies being made have it too.
            let prefs = &self.ring.holders(p);
            let included: Vec<u32> = prefs
                .iter()
                .copied()
                .filter(|&n| {
                    n == self.me
                        || alive(n)
                        || self
                            .failed_since
                            .get(&n)
                            .is_none_or(|&t| now_ms.saturating_sub(t) <= self.window_ms)
                })
                .collect();
            let h = if prefs.len() == 1 {
                // One replica: nothing to exchange; the horizon follows the cluster's clock
                // (never an unmeasured one).
                if !self.clock_measured {
                    continue;
                }
                horizon_of(self.cluster_ms(now_ms), self.grace_ms)
            } else if included.len() < 2 {
                continue;
            } else {
                let mut s = u64::MAX;
                for (i, &a) in included.iter().enumerate() {
                    for &b in &included[i + 1..] {
                        let (x, y) = pair(a, b);
                        match self.reports.get(&(p as u16, x, y)) {
                            Some(&t) => s = s.min(t),
                            None => s = 0,
                        }
                    }
                }
                if s == 0 {
                    continue;
                }
                horizon_of(s, self.grace_ms)
            };
            self.decided[p] = self.decided[p].max(h);
            out.push((p as u16, self.decided[p]));
        }
        out
    }

    /// The highest tombstone horizon adopted here: a coordinator issues versions above it, so
    /// that its writes are never refused by the horizon guard of replicas whose horizon came
    /// from a node whose clock ran ahead.
    pub fn horizon_max(&self) -> Version {
        Version(self.index.horizon_max)
    }

    pub(super) fn adopt(&mut self, p: usize, h: u64) {
        if h > self.index.horizons[p] {
            self.index.horizons[p] = h;
            self.index.horizon_max = self.index.horizon_max.max(h);
            if self.index.held[p] {
                if self.sweep.is_none() {
                    self.sweep = Some((0, 0));
                } else {
                    self.sweep_again = true;
                }
            }
        }
    }

    pub(super) fn adopt_horizons(&mut self, store: &mut dyn Store, hs: &[(u16, u64)]) {
        for &(p, h) in hs {
            if (p as usize) < PARTITION_COUNT {
                self.adopt(p as usize, h);
            }
        }
        self.update_store_horizon(store);
    }

    pub(super) fn update_store_horizon(&mut self, store: &mut dyn Store) {
        let min = self
            .held_list
            .iter()
            .map(|&p| self.index.horizons[p])
            .min()
            .unwrap_or(0);
        if min > self.store_horizon {
            self.store_horizon = min;
            store.set_tombstone_horizon(Version(min));
        }
    }

    pub(super) fn sweep_step(&mut self, now_ms: u64) {
        let Some((mut pi, mut s)) = self.sweep else {
            return;
        };
        let mut entries = 0;
        for _ in 0..AE_SWEEP_SEGMENTS_PER_TICK {
            if pi >= self.held_list.len() || entries >= AE_SWEEP_ENTRIES_PER_TICK {
                break;
            }
            let p = self.held_list[pi];
            let h = self.index.horizons[p];
            match self.index.trees[p].as_mut() {
                Some(t) if t.mortal() > 0 => {
                    entries += t.segment_bytes(s) / merkle::ENTRY_HEADER_SIZE;
                    let n = t.remove_where(s, |e| e.version < h && e.collectable(now_ms));
                    self.index.stats.swept += n as u64;
                    s += 1;
                }
                // No tree, or nothing that could be collected: skip the partition.
                _ => s = SEGMENTS,
            }
            if s == SEGMENTS {
                s = 0;
                pi += 1;
            }
        }
        self.sweep = if pi < self.held_list.len() {
            Some((pi, s))
        } else if std::mem::take(&mut self.sweep_again) {
            Some((0, 0))
        } else {
            None
        };
    }
}
