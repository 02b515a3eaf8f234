//! Compaction and disk-space policy of the log store: pure functions of segment figures.
//!
//! Nothing here touches a file or a clock. The store measures (bytes live, dead and
//! reclaimable per segment; free space on the disk, through its [`super::vfs::Vfs`]) and asks:
//!
//! - [`reserve_bytes`]: how much free space to keep so that compaction can always run. A
//!   compaction job copies the live records of its inputs into new segments and writes their
//!   hint files before it deletes the inputs, so it needs at most twice the inputs' live bytes
//!   (a hint entry is never larger than its record) plus a little for headers. The reserve
//!   covers a job over one segment's worth of live data (or all of it, if less), for every
//!   store sharing the disk, plus [`SPACE_RESERVE_MARGIN_BYTES`].
//! - [`pressure`] and [`write_admitted`]: writes are refused while the free space is below the
//!   reserve (the store answers a clear "disk full" refusal instead of running the disk dry,
//!   which would leave compaction no room to make any); below twice the reserve the disk is
//!   *under pressure* and compaction runs even below its normal thresholds.
//! - [`plan`]: what compaction should do next — seal the active segment, compact some sealed
//!   segments, or nothing — in three modes: normal thresholds, pressure, and a forced pass
//!   (the COMPACT request). Each job is sized to fit the free space it will need.

use crate::limits::{
    COMPACTION_INPUTS_MAX, COMPACTION_OUTPUT_OVERHEAD_BYTES, COMPACTION_PRESSURE_DEAD_PERCENT_MIN,
    COMPACTION_SEAL_ACTIVE_BYTES_MIN, SPACE_PRESSURE_RESERVE_MULTIPLE, SPACE_RESERVE_MARGIN_BYTES,
};

/// What the store knows of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentFigures {
    /// Segment id.
    pub id: u32,
    /// `false` for the active segment (the one writes are appended to).
    pub sealed: bool,
    /// Holds a record known to be bad: never compacted.
    pub damaged: bool,
    /// Bytes after the segment header.
    pub body_bytes: u64,
    /// Bytes of the records the key directory points at.
    pub live_bytes: u64,
    /// Bytes compaction would reclaim now (dead records, expired values).
    pub reclaimable_bytes: u64,
    /// Lowest log-segment id whose writes it holds.
    pub origin_lo: u32,
    /// Highest log-segment id whose writes it holds.
    pub origin_hi: u32,
}

/// The configured compaction thresholds (normal mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// A segment is a candidate once this percentage of its body is reclaimable.
    pub dead_percent: u8,
    /// A job starts only once its candidates hold this many reclaimable bytes.
    pub dead_bytes_min: u64,
}

/// Free space on the disk, as the store last measured it, and the reserve it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Bytes free on the file system (`None`: unknown, treated as plenty).
    pub free_bytes: Option<u64>,
    /// Bytes kept free for compaction ([`reserve_bytes`] or the configured figure).
    pub reserve_bytes: u64,
}

/// How full the disk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Free space is at least [`SPACE_PRESSURE_RESERVE_MULTIPLE`] times the reserve.
    None,
    /// Free space is getting close to the reserve: compaction runs below its thresholds.
    High,
    /// Free space is below the reserve: writes are refused until compaction frees some.
    Full,
}

/// Why a plan was made (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The configured thresholds.
    Normal,
    /// The disk is under pressure.
    Pressure,
    /// A forced pass (COMPACT): every segment with anything to reclaim.
    Forced,
}

/// What compaction should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Seal the active segment (and start a new one), so that the dead bytes it holds can be
    /// compacted; plan again afterwards.
    SealActive,
    /// Compact these sealed segments (ids in ascending order) in one job.
    Compact {
        /// The input segments.
        inputs: Vec<u32>,
        /// The mode that chose them.
        mode: Mode,
    },
}

/// Free space a compaction job over inputs holding `live_bytes` needs: the copies, their hint
/// files (a hint entry is a record without its value, so never larger), and headers.
pub fn compaction_space_need(live_bytes: u64) -> u64 {
    live_bytes
        .saturating_mul(2)
        .saturating_add(COMPACTION_OUTPUT_OVERHEAD_BYTES)
}

/// The free space to keep so that compaction can always run: enough for one job over a
/// segment's worth of live data (or over all of it, if the store holds less), for each of the
/// `stores_sharing_disk` stores on the disk (each holding about as much as this one: keys are
/// spread evenly over shards), plus [`SPACE_RESERVE_MARGIN_BYTES`] for the drift between two
/// measurements of the free space. `configured` (an operator's figure) wins when set.
pub fn reserve_bytes(
    configured: Option<u64>,
    segment_size_max: u64,
    live_bytes: u64,
    stores_sharing_disk: u32,
) -> u64 {
    if let Some(r) = configured {
        return r;
    }
    let one = compaction_space_need(live_bytes.min(segment_size_max));
    one.saturating_mul(stores_sharing_disk.max(1) as u64)
        .saturating_add(SPACE_RESERVE_MARGIN_BYTES)
}

/// How full the disk is.
pub fn pressure(space: Space) -> Pressure {
    match space.free_bytes {
        None => Pressure::None,
        Some(free) if free < space.reserve_bytes => Pressure::Full,
        Some(free)
            if free
                < space
                    .reserve_bytes
                    .saturating_mul(SPACE_PRESSURE_RESERVE_MULTIPLE) =>
        {
            Pressure::High
        }
        Some(_) => Pressure::None,
    }
}

/// Whether a write of `record_bytes` may be appended: it must leave the reserve free.
pub fn write_admitted(space: Space, record_bytes: u64) -> bool {
    space
        .free_bytes
        .is_none_or(|free| free >= space.reserve_bytes.saturating_add(record_bytes))
}

/// Whether a job needing `need` bytes fits the free space (unknown free space: it does).
fn fits(space: Space, need: u64) -> bool {
    space.free_bytes.is_none_or(|free| need <= free)
}

/// Whether `s` holds at least `percent` % of reclaimable bytes (of its body).
fn dead_share_at_least(s: &SegmentFigures, percent: u64) -> bool {
    s.body_bytes > 0 && s.reclaimable_bytes.saturating_mul(100) >= s.body_bytes * percent
}

/// Decide the next compaction step.
///
/// `forced_below`: a forced pass is under way over the segments with an id below this (the
/// ones that existed when it was asked for; later ones are its own outputs, so the pass
/// ends). `seal_for_force`: the forced pass has not yet sealed the active segment.
///
/// Rules, in order:
/// 1. The active segment is sealed when that lets compaction reclaim space: in a forced pass
///    if it holds anything reclaimable; under pressure once it holds
///    [`COMPACTION_SEAL_ACTIVE_BYTES_MIN`] reclaimable bytes making at least
///    [`COMPACTION_PRESSURE_DEAD_PERCENT_MIN`] % of it; otherwise when it meets the normal
///    thresholds itself (dead share and dead bytes, at least
///    [`COMPACTION_SEAL_ACTIVE_BYTES_MIN`]). Never if the compaction that would follow could
///    not fit the free space.
/// 2. Candidates are sealed, undamaged segments with reclaimable bytes: in a forced pass all
///    of them (below `forced_below`); under pressure those with at least
///    [`COMPACTION_PRESSURE_DEAD_PERCENT_MIN`] %; normally those with `dead_percent` %, and
///    only once they hold `dead_bytes_min` together.
/// 3. The most reclaimable first (ties by id), at most [`COMPACTION_INPUTS_MAX`], as many as
///    fit the free space ([`compaction_space_need`]); then, if it stays within both bounds,
///    widened to the oldest origin prefix so that tombstones may be dropped.
pub fn plan(
    segments: &[SegmentFigures],
    thresholds: Thresholds,
    space: Space,
    forced_below: Option<u32>,
    seal_for_force: bool,
) -> Option<Plan> {
    let p = pressure(space);
    let mode = if forced_below.is_some() {
        Mode::Forced
    } else if p >= Pressure::High {
        Mode::Pressure
    } else {
        Mode::Normal
    };
    let pct = thresholds.dead_percent as u64;

    if let Some(active) = segments.iter().find(|s| !s.sealed) {
        let worth = match mode {
            Mode::Forced => seal_for_force && active.reclaimable_bytes > 0,
            Mode::Pressure => {
                active.reclaimable_bytes >= COMPACTION_SEAL_ACTIVE_BYTES_MIN
                    && dead_share_at_least(active, COMPACTION_PRESSURE_DEAD_PERCENT_MIN)
            }
            Mode::Normal => {
                active.reclaimable_bytes
                    >= thresholds
                        .dead_bytes_min
                        .max(COMPACTION_SEAL_ACTIVE_BYTES_MIN)
                    && dead_share_at_least(active, pct)
            }
        };
        if worth && !active.damaged && fits(space, compaction_space_need(active.live_bytes)) {
            return Some(Plan::SealActive);
        }
    }

    let mut cands: Vec<&SegmentFigures> = segments
        .iter()
        .filter(|s| s.sealed && !s.damaged && s.reclaimable_bytes > 0)
        .filter(|s| match mode {
            Mode::Forced => forced_below.is_some_and(|b| s.id < b),
            Mode::Pressure => dead_share_at_least(s, COMPACTION_PRESSURE_DEAD_PERCENT_MIN),
            Mode::Normal => dead_share_at_least(s, pct),
        })
        .collect();
    if cands.is_empty() {
        return None;
    }
    if mode == Mode::Normal {
        let dead: u64 = cands.iter().map(|s| s.reclaimable_bytes).sum();
        if dead < thresholds.dead_bytes_min {
            return None;
        }
    }
    // Most reclaimable first, ties by id: deterministic.
    cands.sort_by(|a, b| {
        b.reclaimable_bytes
            .cmp(&a.reclaimable_bytes)
            .then(a.id.cmp(&b.id))
    });
    let mut inputs: Vec<u32> = Vec::new();
    let mut live = 0u64;
    for s in cands {
        if inputs.len() == COMPACTION_INPUTS_MAX {
            break;
        }
        if fits(space, compaction_space_need(live + s.live_bytes)) {
            inputs.push(s.id);
            live += s.live_bytes;
        }
    }
    if inputs.is_empty() {
        return None;
    }
    // Widen to an origin prefix (every segment holding writes as old as the inputs'), so that
    // the job may drop tombstones, when that stays within the bounds.
    let hi = segments
        .iter()
        .filter(|s| inputs.contains(&s.id))
        .map(|s| s.origin_hi)
        .max()
        .expect("inputs are segments");
    let prefix: Vec<&SegmentFigures> = segments.iter().filter(|s| s.origin_lo <= hi).collect();
    let prefix_live: u64 = prefix.iter().map(|s| s.live_bytes).sum();
    if prefix.len() <= COMPACTION_INPUTS_MAX
        && prefix.iter().all(|s| s.sealed && !s.damaged)
        && fits(space, compaction_space_need(prefix_live))
    {
        inputs = prefix.iter().map(|s| s.id).collect();
    }
    inputs.sort_unstable();
    Some(Plan::Compact { inputs, mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn seg(id: u32, sealed: bool, body: u64, live: u64) -> SegmentFigures {
        SegmentFigures {
            id,
            sealed,
            damaged: false,
            body_bytes: body,
            live_bytes: live,
            reclaimable_bytes: body - live,
            origin_lo: id,
            origin_hi: id,
        }
    }

    fn normal() -> Thresholds {
        Thresholds {
            dead_percent: 50,
            dead_bytes_min: MIB,
        }
    }

    fn plenty() -> Space {
        Space {
            free_bytes: Some(1 << 40),
            reserve_bytes: 10 * MIB,
        }
    }

    fn inputs(p: Option<Plan>) -> Vec<u32> {
        match p {
            Some(Plan::Compact { inputs, .. }) => inputs,
            other => panic!("expected a compaction, got {other:?}"),
        }
    }

    #[test]
    fn reserve_covers_one_segment_or_all_live_data_per_store_plus_margin() {
        // 2 MiB live, 4 MiB segments, one store: 2 × 2 MiB + overhead + margin.
        let r = reserve_bytes(None, 4 * MIB, 2 * MIB, 1);
        assert_eq!(
            r,
            4 * MIB + COMPACTION_OUTPUT_OVERHEAD_BYTES + SPACE_RESERVE_MARGIN_BYTES
        );
        // A disk full of live data: one segment's worth, per store.
        let r2 = reserve_bytes(None, 4 * MIB, 500 * MIB, 2);
        assert_eq!(
            r2,
            2 * (8 * MIB + COMPACTION_OUTPUT_OVERHEAD_BYTES) + SPACE_RESERVE_MARGIN_BYTES
        );
        // An operator's figure wins.
        assert_eq!(reserve_bytes(Some(123), 4 * MIB, 500 * MIB, 2), 123);
    }

    #[test]
    fn writes_are_refused_below_the_reserve_and_pressure_starts_above_it() {
        let s = |free| Space {
            free_bytes: Some(free),
            reserve_bytes: 10 * MIB,
        };
        assert!(write_admitted(s(11 * MIB), MIB));
        assert!(
            !write_admitted(s(11 * MIB - 1), MIB),
            "would eat the reserve"
        );
        assert!(!write_admitted(s(5 * MIB), 100));
        assert!(write_admitted(
            Space {
                free_bytes: None,
                reserve_bytes: 10 * MIB
            },
            MIB
        ));
        assert_eq!(pressure(s(9 * MIB)), Pressure::Full);
        assert_eq!(pressure(s(10 * MIB)), Pressure::High);
        assert_eq!(
            pressure(s(10 * MIB * SPACE_PRESSURE_RESERVE_MULTIPLE - 1)),
            Pressure::High
        );
        assert_eq!(
            pressure(s(10 * MIB * SPACE_PRESSURE_RESERVE_MULTIPLE)),
            Pressure::None
        );
    }

    #[test]
    fn normal_thresholds_need_a_dead_share_and_enough_dead_bytes() {
        // 40 % dead: below the share.
        let segs = [
            seg(1, true, 4 * MIB, 24 * MIB / 10),
            seg(2, false, 100, 100),
        ];
        assert_eq!(plan(&segs, normal(), plenty(), None, false), None);
        // 60 % dead but only 0.6 MiB: below the byte floor.
        let segs = [seg(1, true, MIB, 4 * MIB / 10), seg(2, false, 100, 100)];
        assert_eq!(plan(&segs, normal(), plenty(), None, false), None);
        // Two such segments together pass it.
        let segs = [
            seg(1, true, MIB, 4 * MIB / 10),
            seg(2, true, MIB, 4 * MIB / 10),
            seg(3, false, 100, 100),
        ];
        assert_eq!(
            inputs(plan(&segs, normal(), plenty(), None, false)),
            vec![1, 2]
        );
    }

    #[test]
    fn the_active_segment_is_sealed_once_it_meets_the_thresholds_itself() {
        // A 40 MiB active segment that is 95 % dead (an overwrite-only load on a big segment
        // size): seal it so compaction can reach it.
        let segs = [seg(1, false, 40 * MIB, 2 * MIB)];
        assert_eq!(
            plan(&segs, normal(), plenty(), None, false),
            Some(Plan::SealActive)
        );
        // A fresh active segment is left alone.
        let segs = [seg(1, false, 100 * 1024, 0)];
        assert_eq!(plan(&segs, normal(), plenty(), None, false), None);
        // A tiny, mostly dead one too, even with no byte threshold configured: sealing it
        // would only make tiny segments.
        let no_floor = Thresholds {
            dead_percent: 50,
            dead_bytes_min: 0,
        };
        let segs = [seg(1, false, 4096, 100)];
        assert_eq!(plan(&segs, no_floor, plenty(), None, false), None);
    }

    #[test]
    fn under_pressure_compaction_runs_below_the_normal_thresholds() {
        let tight = Space {
            free_bytes: Some(15 * MIB),
            reserve_bytes: 10 * MIB,
        };
        assert_eq!(pressure(tight), Pressure::High);
        // 30 % dead, 0.3 MiB: nothing normally, compacted under pressure.
        let segs = [seg(1, true, MIB, 7 * MIB / 10), seg(2, false, 100, 100)];
        assert_eq!(plan(&segs, normal(), plenty(), None, false), None);
        match plan(&segs, normal(), tight, None, false) {
            Some(Plan::Compact { inputs, mode }) => {
                assert_eq!(inputs, vec![1]);
                assert_eq!(mode, Mode::Pressure);
            }
            other => panic!("{other:?}"),
        }
        // A segment with almost nothing dead is not worth its copy even then.
        let segs = [seg(1, true, MIB, MIB - 1000), seg(2, false, 100, 100)];
        assert_eq!(plan(&segs, normal(), tight, None, false), None);
        // The active segment is sealed under pressure at a lower bar.
        let segs = [seg(1, false, 2 * MIB, 3 * MIB / 2)];
        assert_eq!(plan(&segs, normal(), plenty(), None, false), None);
        assert_eq!(
            plan(&segs, normal(), tight, None, false),
            Some(Plan::SealActive)
        );
    }

    #[test]
    fn jobs_are_sized_to_the_free_space_they_need() {
        // Three dead-ish segments holding 3 MiB live each; 8 MiB free fits one of them only.
        let segs = [
            seg(1, true, 4 * MIB, 3 * MIB),
            seg(2, true, 4 * MIB, 3 * MIB - 1),
            seg(3, true, 4 * MIB, 3 * MIB - 2),
            seg(4, false, 100, 100),
        ];
        let space = Space {
            free_bytes: Some(8 * MIB),
            reserve_bytes: 7 * MIB,
        };
        assert_eq!(
            inputs(plan(&segs, normal(), space, Some(10), false)),
            vec![3]
        );
        // Not even one fits: nothing (rather than a job that would run the disk dry).
        let space = Space {
            free_bytes: Some(MIB),
            reserve_bytes: 7 * MIB,
        };
        assert_eq!(plan(&segs, normal(), space, Some(10), false), None);
    }

    #[test]
    fn a_forced_pass_takes_everything_reclaimable_that_existed_and_ends() {
        let segs = [
            seg(1, true, MIB, MIB - 10),
            seg(2, true, MIB, MIB),
            seg(3, false, MIB, MIB - 5),
        ];
        // First the active segment is sealed (it holds 5 dead bytes)...
        assert_eq!(
            plan(&segs, normal(), plenty(), Some(4), true),
            Some(Plan::SealActive)
        );
        // ...then every segment below the limit with something to reclaim is compacted.
        let segs = [
            seg(1, true, MIB, MIB - 10),
            seg(2, true, MIB, MIB),
            seg(3, true, MIB, MIB - 5),
            seg(4, false, 0, 0),
        ];
        assert_eq!(
            inputs(plan(&segs, normal(), plenty(), Some(4), false)),
            vec![1, 2, 3],
            "widened to the origin prefix (segment 2 has nothing dead but holds older writes)"
        );
        // Its outputs (ids from 5 on) are not taken again: the pass ends.
        let segs = [seg(5, true, MIB, MIB - 1), seg(6, false, 0, 0)];
        assert_eq!(plan(&segs, normal(), plenty(), Some(5), false), None);
    }

    #[test]
    fn damaged_segments_are_never_inputs_and_block_the_prefix() {
        let mut bad = seg(1, true, MIB, 0);
        bad.damaged = true;
        let segs = [bad, seg(2, true, MIB, 0), seg(3, false, 0, 0)];
        assert_eq!(
            inputs(plan(&segs, normal(), plenty(), None, false)),
            vec![2]
        );
    }
}
