//! The shard's periodic work ([`ShardCore::on_tick`]): bounded steps of store maintenance,
//! the storage figures published for STATS, the rate-limited log of refused writes, and
//! COMPACT requests, which ask every shard of the node for a forced compaction pass and are
//! answered once all of them have finished it.

use super::{After, ConnId, ShardCore};
use crate::limits::{
    COMPACT_PENDING_MAX, COMPACT_REPLY_WAIT_MS_MAX, MAINTENANCE_BUSY_TICK_MS, MAINTENANCE_TICK_MS,
    MAINTENANCE_URGENT_TICK_MS, WRITES_REFUSED_LOG_INTERVAL_MS,
};
use crate::protocol::message::{put_error, put_ok};
use crate::protocol::{op, Status};
use std::sync::atomic::Ordering;

/// How the driver paces a shard's maintenance after a tick ([`ShardCore::on_tick`]).
///
/// A maintenance step runs inside the event loop: every request waiting on the shard waits
/// for it. Steps of a whole [`MAINTENANCE_TICK_MS`] budget (4096 records in `kvd`) stalled
/// the loop for milliseconds ten times a second while a compaction was under way, which set
/// the p99 of a write-heavy load (issue 13: 1.7 ms against 1.0 ms with small steps). So a
/// store with work left gets the same budget per [`MAINTENANCE_TICK_MS`], in steps
/// [`MAINTENANCE_BUSY_TICK_MS`] apart: the same compaction rate, a tenth of the stall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pace {
    /// Nothing left to do: the next tick after [`MAINTENANCE_TICK_MS`].
    #[default]
    Idle,
    /// A compaction under way: the budget spread over shorter ticks.
    Busy,
    /// The disk is short of space (or a forced pass runs) with work left: the whole budget
    /// every [`MAINTENANCE_URGENT_TICK_MS`].
    Urgent,
}

impl Pace {
    /// Milliseconds to the next tick.
    pub fn next_tick_ms(self) -> u64 {
        match self {
            Pace::Idle => MAINTENANCE_TICK_MS,
            Pace::Busy => MAINTENANCE_BUSY_TICK_MS,
            Pace::Urgent => MAINTENANCE_URGENT_TICK_MS,
        }
    }

    /// The budget of the next tick, of the driver's budget per [`MAINTENANCE_TICK_MS`].
    pub fn budget(self, per_tick: usize) -> usize {
        match self {
            Pace::Busy => (per_tick * MAINTENANCE_BUSY_TICK_MS as usize)
                .div_ceil(MAINTENANCE_TICK_MS as usize)
                .max(1),
            Pace::Idle | Pace::Urgent => per_tick,
        }
    }
}

/// A COMPACT request waiting for every shard's forced pass.
#[derive(Debug)]
pub(super) struct PendingCompact {
    conn: ConnId,
    id: u32,
    /// The generation it asked for.
    generation: u64,
    since_ms: u64,
    /// Node totals (compactions, bytes, segments) when it arrived.
    base: [u64; 3],
}

/// A shard's part in COMPACT requests and in reporting refused writes.
#[derive(Debug, Default)]
pub(super) struct Compacting {
    /// The newest COMPACT generation this shard has started a pass for.
    seen: u64,
    /// The generation of the pass under way here, if any.
    running: Option<u64>,
    /// COMPACT requests received by this shard, answered once every shard is done.
    pending: Vec<PendingCompact>,
    /// Writes refused by the shard itself (after a failed sync), besides the store's.
    pub(super) refused_here: u64,
    /// Refused writes (store's and shard's) already reported in the log.
    refused_logged: u64,
    /// No refusal line is logged before this time.
    refused_log_at_ms: u64,
}

impl ShardCore {
    /// Periodic work: background store maintenance in a bounded step (a forced pass when a
    /// COMPACT asked for one), the refresh of the storage figures shown by STATS, the
    /// rate-limited report of refused writes, and the answers to COMPACT requests whose pass
    /// every shard has finished. Returns how to pace the next tick ([`Pace`]): sooner, with
    /// its budget spread, while the store has maintenance work left; sooner with all of it
    /// when the store is short of disk space (or in a forced pass).
    pub fn on_tick(&mut self, now_ms: u64, maintenance_budget: usize) -> Pace {
        let generation = self.shared.compact_requests.load(Ordering::Acquire);
        if generation > self.compacting.seen {
            self.compacting.seen = generation;
            self.compacting.running = Some(generation);
            self.store.force_compaction();
        }
        let more = match self.store.maintenance(now_ms, maintenance_budget) {
            Ok(more) => more,
            Err(e) => {
                log::error!("shard {}: store maintenance failed: {e}", self.cfg.shard);
                false
            }
        };
        let mut totals = [0u64; 3];
        let mut refused = self.compacting.refused_here;
        let c = self.counters();
        let store = &self.store;
        c.storage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .publish(|report| {
                store.stats(&mut |name, value| {
                    let value = match name {
                        "storage_writes_refused" => {
                            refused += value;
                            refused
                        }
                        "storage_compactions" => {
                            totals[0] = value;
                            value
                        }
                        "storage_bytes_reclaimed" => {
                            totals[1] = value;
                            value
                        }
                        "storage_segments_reclaimed" => {
                            totals[2] = value;
                            value
                        }
                        _ => value,
                    };
                    report(name, value);
                })
            });
        c.compactions.store(totals[0], Ordering::Relaxed);
        c.bytes_reclaimed.store(totals[1], Ordering::Relaxed);
        c.segments_reclaimed.store(totals[2], Ordering::Relaxed);
        if let Some(g) = self.compacting.running {
            if !self.store.forcing() {
                // Published after the totals, so that a reader seeing `done` sees them too.
                c.compact_done.store(g, Ordering::Release);
                self.compacting.running = None;
            }
        }
        self.log_refusals(now_ms, refused);
        self.answer_compacts(now_ms);
        self.snapshot_tick(now_ms);
        match more {
            false => Pace::Idle,
            true if self.store.disk_pressure() || self.store.forcing() => Pace::Urgent,
            true => Pace::Busy,
        }
    }

    /// Log refused writes: at most one line per [`WRITES_REFUSED_LOG_INTERVAL_MS`], with the
    /// count since the last line and the latest reason (a client hammering a full disk must
    /// not flood the log, and an operator must see that writes are being refused).
    fn log_refusals(&mut self, now_ms: u64, refused: u64) {
        let k = &mut self.compacting;
        if refused <= k.refused_logged || now_ms < k.refused_log_at_ms {
            return;
        }
        let why = self
            .store
            .last_refusal()
            .map(str::to_string)
            .or_else(|| self.write_error.clone())
            .unwrap_or_default();
        log::warn!(
            "shard {}: refused {} writes since the last report ({refused} in all): {why}",
            self.cfg.shard,
            refused - self.compacting.refused_logged,
        );
        self.compacting.refused_logged = refused;
        self.compacting.refused_log_at_ms = now_ms + WRITES_REFUSED_LOG_INTERVAL_MS;
    }

    /// The node's compaction totals, as the shards last published them.
    fn compaction_totals(&self) -> [u64; 3] {
        let mut t = [0u64; 3];
        for c in &self.shared.counters {
            t[0] += c.compactions.load(Ordering::Relaxed);
            t[1] += c.bytes_reclaimed.load(Ordering::Relaxed);
            t[2] += c.segments_reclaimed.load(Ordering::Relaxed);
        }
        t
    }

    /// COMPACT: ask every shard for a forced pass (at their next tick) and answer once they
    /// have all finished it, with what the node reclaimed meanwhile.
    pub(super) fn compact_request(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        id: u32,
        wbuf: &mut Vec<u8>,
    ) -> After {
        if self.compacting.pending.len() >= COMPACT_PENDING_MAX {
            self.count_reply(Status::Overloaded);
            put_error(
                wbuf,
                op::COMPACT,
                id,
                Status::Overloaded,
                "too many COMPACT requests waiting; retry when they are answered",
            );
            return After::Continue;
        }
        let generation = self.shared.compact_requests.fetch_add(1, Ordering::AcqRel) + 1;
        let base = self.compaction_totals();
        self.compacting.pending.push(PendingCompact {
            conn,
            id,
            generation,
            since_ms: now_ms,
            base,
        });
        After::Deferred
    }

    /// Answer the COMPACT requests whose pass every shard has finished (or that waited
    /// [`COMPACT_REPLY_WAIT_MS_MAX`]).
    fn answer_compacts(&mut self, now_ms: u64) {
        if self.compacting.pending.is_empty() {
            return;
        }
        let done = self
            .shared
            .counters
            .iter()
            .map(|c| c.compact_done.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        let totals = self.compaction_totals();
        let pending = std::mem::take(&mut self.compacting.pending);
        for p in pending {
            let complete = done >= p.generation;
            if !complete && now_ms < p.since_ms + COMPACT_REPLY_WAIT_MS_MAX {
                self.compacting.pending.push(p);
                continue;
            }
            let text = format!(
                "compactions {}\nbytes_reclaimed {}\nsegments_reclaimed {}\ncomplete {}\n",
                totals[0].saturating_sub(p.base[0]),
                totals[1].saturating_sub(p.base[1]),
                totals[2].saturating_sub(p.base[2]),
                complete as u8
            );
            self.count_reply(Status::Ok);
            let dest = &mut self.outbox.replies[self.cfg.shard];
            dest.extend_from_slice(&p.conn.0.to_be_bytes());
            put_ok(dest, op::COMPACT, p.id, &[text.as_bytes()]);
        }
    }
}
