//! The log-structured store ([`LogStore`]): Bitcask-style segments, a compact keydir, hint
//! files, crash recovery and compaction in bounded steps. File formats: [`super::record`].
//!
//! ## Source files (this folder)
//!
//! ```text
//! logstore/
//!   mod.rs         LogStore, LogConfig, segment accounting, the Store impl (reads, sync,
//!                  the maintenance loop, STATS)
//!   names.rs       file names: N.seg, N.hint, N.compact, COMPACT
//!   scan.rs        Scanner: reads a segment's records in order, resyncs after a bad one
//!   recovery.rs    open: leftovers, manifest, hint files, torn tails, RecoveryReport
//!   write.rs       the write path: apply, segment creation and rolling, streamed hints,
//!                  refusals after I/O errors
//!   buffer.rs      the append buffer (one write per turn, undone if it fails) and the read
//!                  path (buffer, memory map, pread fallback)
//!   space.rs       free-space estimate and write admission against the reserve
//!   compaction.rs  compaction jobs (Compaction, Output): planning, stepping, install
//!   scrub.rs       damage at rest: record checks, forgetting damaged keys, the scrub
//!   snapshot.rs    snapshots: seal, hard-link the segments and hints, a checksummed manifest
//!   tests.rs       unit tests
//!   causal_tests.rs  unit tests of causal records and of format-1 segments
//! ```
//!
//! ## Files (one directory per shard)
//!
//! ```text
//!   0000000001.seg   segment (log or compaction output); never rewritten once sealed
//!   0000000001.hint  index of a sealed segment's records (checkpoint for start-up)
//!   0000000007.compact  compaction output being written (deleted by recovery)
//!   *.tmp            a file being written before its rename (deleted by recovery)
//!   COMPACT          compaction commit: the listed input segments are superseded
//! ```
//!
//! ## Driving it (what the shard's event loop does)
//!
//! ```text
//! let t = Instant::now();                       // the driver owns the clock
//! let (mut store, report) = LogStore::open(RealVfs, &shard_dir, LogConfig::default())?;
//! store.set_recovery_ms(t.elapsed().as_millis() as u64);
//! log the report (corrupt records, truncated tail) ...
//! each loop turn:  apply() the turn's writes;             // buffered in memory
//!                  store.flush()                            // one write(2); then ack them
//!                  if store.needs_sync() { store.sync() }   // --sync always: then ack them
//!                  store.maintenance(now_ms, budget)        // when idle; true = more to do
//! ```
//!
//! `sync()` failing means the store has turned read-only: answer writes with an error from
//! then on (reads still work). `apply()` failing with `WritesRefused` (disk full) refuses that
//! write only; `flush()` failing refuses the writes applied since the previous flush (they are
//! undone, see `buffer.rs`).
//!
//! ## Which record wins
//! Every record carries its write's version and the store only appends a record newer than
//! the one it holds, so for every key *the newest record is the one with the highest
//! version*, wherever it sits. Recovery therefore takes the max version per key over all
//! segments, in any order, and duplicates (a compaction copy next to its original, after a
//! crash mid-compaction) are harmless: same version, same content. An expired value turned
//! into a tombstone by compaction has the same version as the value; the tombstone wins a tie.
//!
//! ## Durability
//! A write is buffered by `apply` and appended to the active segment (handed to the OS) by the
//! next `flush` (the driver calls it at the end of every event-loop turn, before any reply of
//! the turn leaves, so one `write` carries the whole turn), or earlier when the buffer reaches
//! [`crate::limits::APPEND_BUFFER_BYTES_MAX`] or the segment is sealed; `sync` flushes, then
//! fsyncs the active segment (under `--sync always` once per turn: group commit). Creating a
//! file or renaming it syncs the file and then the directory. A failed fsync is sticky: from
//! then on every write is refused with [`StoreError::WritesRefused`] (reads keep working),
//! because after a failed fsync the kernel may have dropped the dirty pages and a later
//! "successful" fsync would lie. A failed append (ENOSPC) is truncated back and its writes
//! undone and refused.
//!
//! ## Reads
//! No read calls into the kernel: records still buffered are copied from the buffer; every
//! segment is memory-mapped (the active one with room to grow, since appends show through a
//! shared map) and a record is copied from the map ([`super::mmap`] explains how a file cut
//! short under its map reads as damage instead of killing the process with SIGBUS). A segment
//! that could not be mapped is read with `pread`. Scans (recovery, compaction) read in large
//! chunks with `pread`.
//!
//! ## Recovery
//! 1. Delete leftovers (`*.tmp`, `*.compact`); if `COMPACT` is present and valid, finish that
//!    compaction (delete its inputs), then remove it.
//! 2. For each segment (id order): a valid hint covering the whole file → load the keydir from
//!    it; else scan the records, checking each CRC. A bad record in the *newest log segment*
//!    with no valid record after it is a torn write: the tail is truncated (reported). Any
//!    other bad record is reported with segment and offset (`log::error!`), never served, and
//!    scanning resumes at the next valid record; the rest of the data is served. (If the bad
//!    record was a key's newest, its previous record, if still on disk, is served instead:
//!    the damaged one cannot be attributed to a key.)
//! 3. The newest log segment, if it has no hint and is of this build's format, becomes the
//!    active segment again. One of an older format is sealed instead (a hint is written for
//!    it) and writes go to a new segment: nothing is appended to an old-format segment.
//!    Segments, hints and manifests of every format this build reads (`record.rs`, "Format
//!    versions") load alike, each segment's records read by its own format's rules.
//!
//! ## Compaction
//! What to compact is decided by [`super::policy::plan`] from the segments' figures and the
//! free space: normally when sealed segments with at least `compaction_dead_percent` dead
//! bytes hold at least `compaction_dead_bytes_min` dead bytes together; the active segment is
//! sealed when it meets those thresholds itself (so dead data never hides in it); under disk
//! pressure below those thresholds; and everything reclaimable in a forced pass
//! ([`Store::force_compaction`], the COMPACT request). Jobs are sized to the free space they
//! need, and writes are refused while the free space is below the reserve
//! ([`super::policy::reserve_bytes`]) so that compaction always has room to run. One job,
//! advanced one record per budget unit (and at most [`COMPACTION_STEP_BYTES_MAX`] scanned
//! per call) by [`Store::maintenance`]:
//! 1. copy each input record the keydir still points at into an output written as
//!    `N.compact`, in this build's format whatever the input's (flags kept: a causal record
//!    stays causal); expired values become tombstones (or are dropped, below);
//! 2. when an output is full or the inputs are done: fsync it, write its hint, rename it to
//!    `N.seg`, fsync the directory, then point the keydir at the copies (keys not rewritten
//!    meanwhile);
//! 3. when all inputs are copied: write `COMPACT` naming the inputs (the commit point), forget
//!    the keys whose tombstones were dropped, delete the inputs and their hints, fsync the
//!    directory, remove `COMPACT`, fsync again.
//!
//! A crash before step 3's manifest leaves the inputs in place next to complete outputs
//! (duplicates: harmless); after it, recovery completes the deletions. Nothing is lost or
//! duplicated, and no dropped tombstone can come back half-way.
//!
//! **Dropping tombstones (and expired values) safely.** Each segment header carries the span
//! of log-segment ids (`origin_lo..=origin_hi`) its writes came from. A key's records were
//! appended in version order, so an older record of a key sits in a segment whose origin is
//! not above the newer record's. If every segment outside the inputs has `origin_lo` above
//! the inputs' highest `origin_hi`, no older record of an input key exists outside the
//! inputs, and a tombstone may be dropped — provided its version is below the *tombstone
//! horizon* (set by the cluster once no replica can still send an older write; default
//! [`Version::ZERO`]: keep every tombstone). Otherwise tombstones are copied.

mod buffer;
mod compaction;
mod names;
mod recovery;
mod scan;
mod scrub;
pub mod snapshot;
mod space;
mod write;

pub use recovery::{CorruptRecord, RecoveryReport, Truncation};

use super::keydir::{KeyDir, Loc};
use super::policy::{self, Pressure};
use super::record::{
    decode_record_header, HintBuilder, SegmentHeader, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE,
};
use super::vfs::Vfs;
use super::{Applied, Store, StoreError, Stored, Write};
use crate::limits::{
    COMPACTION_DEAD_BYTES_MIN_DEFAULT, COMPACTION_DEAD_PERCENT_DEFAULT, COMPACTION_RETRY_MS,
    COMPACTION_STEP_BYTES_MAX, PREFETCH_BATCH_MAX, SCRUB_RECORDS_PER_STEP,
    SEGMENT_SIZE_MAX_DEFAULT, WRITES_REFUSED_LOG_INTERVAL_MS,
};
use crate::version::Version;
use compaction::Compaction;
use names::segment_name;
use scrub::record_damage;
use std::collections::BTreeMap;
use std::path::PathBuf;
use write::refused_error;

/// Tunables of a [`LogStore`].
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The active segment is sealed when the next record would take it past this size.
    pub segment_size_max: u64,
    /// A sealed segment is a compaction candidate at this percentage of dead bytes.
    pub compaction_dead_percent: u8,
    /// Compaction starts once the candidates hold this many dead bytes.
    pub compaction_dead_bytes_min: u64,
    /// Free space (of the whole disk) below which writes are refused; `None`: computed from
    /// the live data ([`policy::reserve_bytes`]), so that compaction can always run.
    pub space_reserve_bytes: Option<u64>,
    /// How many stores (shards) keep their data on the same disk: the computed reserve
    /// covers a compaction of each.
    pub stores_sharing_disk: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_size_max: SEGMENT_SIZE_MAX_DEFAULT,
            compaction_dead_percent: COMPACTION_DEAD_PERCENT_DEFAULT,
            compaction_dead_bytes_min: COMPACTION_DEAD_BYTES_MIN_DEFAULT,
            space_reserve_bytes: None,
            stores_sharing_disk: 1,
        }
    }
}

struct Segment<F, M> {
    file: F,
    /// The file's memory map (`None`: not mapped, read with `pread`).
    map: Option<M>,
    /// Bytes the map covers (reads past them use `pread`).
    map_len: u64,
    header: SegmentHeader,
    /// Bytes in the file (the append position of the active segment).
    len: u64,
    /// Bytes of the records the keydir points at.
    live_bytes: u64,
    /// Of those, bytes of tombstones (reclaimable once below the tombstone horizon).
    tomb_bytes: u64,
    /// Lowest version of any tombstone ever put in this segment (u64::MAX: none).
    tomb_version_min: u64,
    /// Of the live bytes, bytes of values with an expiry.
    ttl_bytes: u64,
    /// Latest expiry (seconds, rounded up) of any value with one put in this segment: once
    /// it has passed, all of `ttl_bytes` is reclaimable.
    ttl_expiry_max_s: u32,
    sealed: bool,
    /// Holds a record known to be bad: never a compaction input (its data stays for forensics
    /// and compaction could not account for the damaged record's key).
    damaged: bool,
}

impl<F, M> Segment<F, M> {
    fn dead_bytes(&self) -> u64 {
        self.len - SEGMENT_HEADER_SIZE as u64 - self.live_bytes
    }

    /// Bytes compaction would reclaim at `now_ms`: dead records, and values with an expiry
    /// once every one of them has expired.
    fn reclaimable_bytes(&self, now_ms: u64) -> u64 {
        let expired = if self.ttl_bytes > 0 && now_ms >= self.ttl_expiry_max_s as u64 * 1000 {
            self.ttl_bytes
        } else {
            0
        };
        self.dead_bytes() + expired
    }
}

/// Counters for STATS.
#[derive(Default)]
struct Counters {
    compactions: u64,
    bytes_reclaimed: u64,
    /// Segments removed by compaction, minus the outputs it wrote.
    segments_reclaimed: u64,
    /// Writes refused (disk full, reserve, failed sync, keydir full).
    writes_refused: u64,
    corrupt_records: u64,
    recovery_ms: u64,
}

/// A durable, log-structured [`Store`].
pub struct LogStore<V: Vfs> {
    vfs: V,
    dir: PathBuf,
    config: LogConfig,
    keydir: KeyDir,
    /// Keys forgotten for a damaged record, not yet taken by `take_damaged`.
    damaged: Vec<Vec<u8>>,
    /// Next keydir index the background scrub verifies.
    scrub_cursor: usize,
    segments: BTreeMap<u32, Segment<V::File, V::Map>>,
    active: u32,
    /// Records appended to the active segment and not yet written to its file (see
    /// `buffer.rs`); they start at offset `pending_at`.
    pending: Vec<u8>,
    /// Offset in the active segment of `pending[0]`: the bytes its file holds.
    pending_at: u64,
    /// Offset in the active segment up to which writeback was started
    /// ([`Vfs::start_writeback`], every [`crate::limits::WRITEBACK_STEP_BYTES`]): sealing the
    /// segment then syncs only the rest, instead of stalling the event loop on all of it.
    writeback_at: u64,
    /// One entry per buffered record, to undo them if their write fails.
    pending_undo: Vec<buffer::PendingRecord>,
    /// Why a write of buffered records failed since the last `flush()` call.
    turn_error: Option<String>,
    /// The active segment's hint, streamed to `N.hint.tmp` (`None`: no hint for it, after an
    /// error writing it; recovery will scan that segment).
    active_hint: Option<(HintBuilder, V::File)>,
    next_id: u32,
    highest: Version,
    dirty: bool,
    refused: Option<String>,
    horizon: Version,
    job: Option<Compaction<V::File>>,
    /// After a failed compaction, no new job starts before this time (ms).
    compaction_retry_at_ms: u64,
    /// The last time passed to `maintenance` (the store never reads the clock).
    last_now_ms: u64,
    /// Free space on the disk at the last measurement, less what was appended since.
    free_bytes: Option<u64>,
    /// Bytes appended since the free space was last measured.
    appended_since_measure: u64,
    /// The disk pressure last seen by maintenance (transitions are logged).
    pressure: Pressure,
    /// No pressure transition is logged before this time (ms), so that a disk hovering at
    /// the reserve does not flood the log.
    pressure_log_at_ms: u64,
    /// A forced pass covers the segments with an id below this.
    force_below: Option<u32>,
    /// The forced pass has yet to consider sealing the active segment.
    force_seal: bool,
    /// Why the last refused write was refused.
    last_refusal: Option<String>,
    counters: Counters,
}

fn record_len(key_len: usize, value_len: Option<u32>) -> u64 {
    (RECORD_HEADER_SIZE + key_len + value_len.unwrap_or(0) as usize) as u64
}

impl<V: Vfs> LogStore<V> {
    /// The keydir now points at (`add`) or no longer points at the record at `loc` (of a key
    /// of `key_len` bytes): keep the segment's live, tombstone and TTL byte counts.
    fn account(&mut self, loc: &Loc, key_len: usize, add: bool) {
        let len = record_len(key_len, loc.value_len);
        let seg = self
            .segments
            .get_mut(&loc.segment)
            .expect("keydir points at loaded segments");
        let tombstone = loc.value_len.is_none();
        let ttl = !tombstone && loc.expires_at_s != 0;
        if add {
            seg.live_bytes += len;
            seg.tomb_bytes += if tombstone { len } else { 0 };
            seg.ttl_bytes += if ttl { len } else { 0 };
            if ttl {
                seg.ttl_expiry_max_s = seg.ttl_expiry_max_s.max(loc.expires_at_s);
            }
        } else {
            seg.live_bytes -= len;
            seg.tomb_bytes -= if tombstone { len } else { 0 };
            seg.ttl_bytes -= if ttl { len } else { 0 };
        }
    }

    /// A tombstone of `version` was written to segment `id`.
    fn note_tombstone(&mut self, id: u32, version: u64) {
        let seg = self.segments.get_mut(&id).expect("segment exists");
        seg.tomb_version_min = seg.tomb_version_min.min(version);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every segment: (id, path, sealed). For tests and tools.
    pub fn segment_files(&self) -> Vec<(u32, PathBuf, bool)> {
        self.segments
            .iter()
            .map(|(id, s)| (*id, self.path(&segment_name(*id)), s.sealed))
            .collect()
    }

    /// Whether a compaction job is under way.
    pub fn compacting(&self) -> bool {
        self.job.is_some()
    }

    /// Bytes of RAM held by the keydir.
    pub fn keydir_bytes(&self) -> usize {
        self.keydir.memory_bytes()
    }

    fn dead_bytes_total(&self) -> u64 {
        self.segments.values().map(|s| s.dead_bytes()).sum()
    }
}

impl<V: Vfs> Store for LogStore<V> {
    fn snapshot(
        &mut self,
        into: &std::path::Path,
    ) -> Result<Vec<snapshot::SnapshotFile>, StoreError> {
        self.snapshot_into(into)
    }

    fn writes_refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    fn set_recovery_ms(&mut self, ms: u64) {
        self.counters.recovery_ms = ms;
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        let Some(loc) = self.keydir.get(key) else {
            return Ok(None);
        };
        if !self.segments.contains_key(&loc.segment) {
            return Err(StoreError::Corrupt(format!(
                "keydir points at missing segment {}",
                loc.segment
            )));
        }
        let len = record_len(key.len(), loc.value_len) as usize;
        let mut buf = crate::pool::take_bytes();
        buf.resize(len, 0);
        match self.read_segment(loc.segment, loc.offset as u64, &mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // The file no longer holds the record (cut short, under its map or not).
                let msg = self.forget_truncated(key, &loc, &e);
                return Err(StoreError::Corrupt(msg));
            }
            Err(e) => return Err(StoreError::Io(e)),
        }
        let format = self.segments[&loc.segment].header.format;
        if let Some(why) = record_damage(&buf, key, &loc, format) {
            let msg = self.forget_damaged(key, &loc, &why);
            return Err(StoreError::Corrupt(msg));
        }
        let h = decode_record_header(&buf, format).expect("decoded above");
        let value = if h.tombstone {
            None
        } else {
            buf.drain(..RECORD_HEADER_SIZE + key.len());
            Some(buf)
        };
        Ok(Some(Stored {
            version: Version(h.version),
            expires_at_ms: h.expires_at_ms,
            value,
            causal: h.causal,
        }))
    }

    fn version_of(&self, key: &[u8]) -> Option<Version> {
        self.keydir.get(key).map(|l| Version(l.version))
    }

    fn prefetch(&self, keys: &[&[u8]], reads: u32) {
        let mut locs = [None; PREFETCH_BATCH_MAX];
        self.keydir.prefetch(keys, &mut locs);
        for (i, (key, loc)) in keys.iter().zip(locs).enumerate() {
            if let Some(loc) = loc.filter(|_| reads & (1 << i) != 0) {
                let len = record_len(key.len(), loc.value_len) as usize;
                self.prefetch_segment(loc.segment, loc.offset as u64, len);
            }
        }
    }

    fn apply(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
        let r = self.apply_write(w);
        if let Err(StoreError::WritesRefused(why)) = &r {
            self.counters.writes_refused += 1;
            if self.last_refusal.as_deref() != Some(why.as_str()) {
                self.last_refusal = Some(why.clone());
            }
        }
        r
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let r = self.flush_pending();
        match self.turn_error.take() {
            // A write failed earlier (mid-turn, the buffer full): its writes were undone.
            Some(why) if r.is_ok() => Err(StoreError::WritesRefused(why)),
            _ => r,
        }
    }

    fn unflushed(&self) -> bool {
        !self.pending.is_empty() || self.turn_error.is_some()
    }

    fn needs_sync(&self) -> bool {
        self.dirty
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if let Some(why) = &self.refused {
            return Err(refused_error(why));
        }
        if !self.dirty {
            return Ok(());
        }
        self.flush_pending()?;
        let seg = self.segments.get_mut(&self.active).expect("active exists");
        if let Err(e) = self.vfs.sync(&mut seg.file) {
            return Err(self.io_refusal(e, true));
        }
        self.dirty = false;
        Ok(())
    }

    fn maintenance(&mut self, now_ms: u64, budget: usize) -> Result<bool, StoreError> {
        self.last_now_ms = now_ms;
        // Compaction and the scrub work on written records only (the driver flushed at the end
        // of the turn; a direct caller may not have).
        if self.flush_pending().is_err() {
            return Ok(false);
        }
        self.scrub_step(SCRUB_RECORDS_PER_STEP);
        if self.refused.is_some() {
            // Read-only: no compaction until restarted, so no forced pass either.
            self.force_below = None;
            return Ok(false);
        }
        self.measure_space();
        let space = self.space();
        let pressure = policy::pressure(space);
        if pressure != self.pressure && now_ms >= self.pressure_log_at_ms {
            self.pressure_log_at_ms = now_ms + WRITES_REFUSED_LOG_INTERVAL_MS;
            let (free, reserve) = (space.free_bytes.unwrap_or(0), space.reserve_bytes);
            let dead = self.dead_bytes_total();
            match pressure {
                Pressure::Full => log::warn!(
                    "storage: disk full: {free} bytes free, below the {reserve} bytes reserved \
                     for compaction; refusing writes while compaction reclaims {dead} dead bytes"
                ),
                Pressure::High => log::warn!(
                    "storage: disk space low: {free} bytes free (reserve {reserve}); \
                     compacting below the normal thresholds ({dead} dead bytes)"
                ),
                Pressure::None => log::info!(
                    "storage: disk space back to normal: {free} bytes free (reserve {reserve})"
                ),
            }
        }
        self.pressure = pressure;
        let mut job = match self.job.take() {
            Some(job) => job,
            None => match self.plan(now_ms) {
                Ok(Some(job)) => job,
                Ok(None) => return Ok(false),
                Err(e) => {
                    self.compaction_retry_at_ms = now_ms + COMPACTION_RETRY_MS;
                    return Err(e);
                }
            },
        };
        let scanned_at_start = job.scanned_bytes;
        for _ in 0..budget.max(1) {
            if job.scanned_bytes - scanned_at_start >= COMPACTION_STEP_BYTES_MAX {
                break;
            }
            match self.compact_step(&mut job, now_ms) {
                Ok(false) => {}
                Ok(true) => return Ok(self.decide(now_ms).is_some()),
                Err(e) => {
                    self.abort_compaction(job);
                    return Err(e);
                }
            }
        }
        self.job = Some(job);
        Ok(true)
    }

    fn force_compaction(&mut self) {
        // Everything that exists now, the active segment included (sealed first if it holds
        // dead bytes); the pass's own outputs get ids from here on and are not taken again.
        self.force_below = Some(self.next_id);
        self.force_seal = true;
        self.compaction_retry_at_ms = 0;
    }

    fn forcing(&self) -> bool {
        self.force_below.is_some()
    }

    fn disk_pressure(&self) -> bool {
        self.pressure != Pressure::None
    }

    fn last_refusal(&self) -> Option<&str> {
        self.last_refusal.as_deref()
    }

    fn take_damaged(&mut self, out: &mut Vec<Vec<u8>>) {
        out.append(&mut self.damaged);
    }

    fn len(&self) -> usize {
        self.keydir.len()
    }

    fn highest_version(&self) -> Version {
        self.highest
    }

    /// The cursor is a position in the keydir's dense entry array: removing entry `i` moves
    /// the last one into its place, which is then looked at in turn.
    fn forget_step(
        &mut self,
        doomed: &mut dyn FnMut(&[u8]) -> bool,
        cursor: u64,
        limit: usize,
    ) -> Result<(u64, Option<u64>), StoreError> {
        // Appends still in the buffer point the keydir at bytes not yet written: write them
        // first, so that forgetting a key never has to undo a buffered append.
        self.flush()?;
        let mut i = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut forgotten = 0;
        for _ in 0..limit {
            let Some((key, _)) = self.keydir.at(i) else {
                return Ok((forgotten, None));
            };
            if doomed(key) {
                let key = key.to_vec();
                if let Some(old) = self.keydir.remove(&key) {
                    self.account(&old, key.len(), false);
                }
                forgotten += 1;
            } else {
                i += 1;
            }
        }
        Ok((forgotten, (i < self.keydir.len()).then_some(i as u64)))
    }

    /// Lists the keydir's dense entry array from its end down (see [`KeyDir::at`]); the
    /// cursor is one past the next position to list, 0 for the first call (the top). Top
    /// down, a listing that yields between steps misses no key: a removal moves the last
    /// entry (listed, or the top of what is left) into the hole, and an insert appends at
    /// the end (the writer notes it itself).
    fn scan_keys(
        &self,
        cursor: u64,
        limit: usize,
        f: &mut dyn FnMut(&[u8], super::KeyMeta),
    ) -> Result<Option<u64>, StoreError> {
        let len = self.keydir.len();
        let end = match usize::try_from(cursor) {
            Ok(0) => len,
            Ok(c) => (c - 1).min(len),
            Err(_) => len,
        };
        let start = end.saturating_sub(limit);
        for i in (start..end).rev() {
            let (key, loc) = self.keydir.at(i).expect("i < len");
            f(
                key,
                super::KeyMeta {
                    version: Version(loc.version),
                    tombstone: loc.value_len.is_none(),
                    expires_at_ms: u64::from(loc.expires_at_s) * 1000,
                    causal: loc.causal,
                },
            );
        }
        Ok((start > 0).then_some(start as u64 + 1))
    }

    /// Constant: the top-down listing of `scan_keys` is exact whatever is removed or
    /// inserted between its steps.
    fn scan_epoch(&self) -> u64 {
        0
    }

    fn set_tombstone_horizon(&mut self, horizon: Version) {
        self.horizon = horizon;
    }

    fn stats(&self, report: &mut dyn FnMut(&'static str, u64)) {
        let live: u64 = self.segments.values().map(|s| s.live_bytes).sum();
        report("storage_keys", self.keydir.len() as u64);
        report("storage_live_bytes", live);
        report("storage_dead_bytes", self.dead_bytes_total());
        report("storage_segments", self.segments.len() as u64);
        report("storage_keydir_bytes", self.keydir.memory_bytes() as u64);
        report("storage_compactions", self.counters.compactions);
        report("storage_bytes_reclaimed", self.counters.bytes_reclaimed);
        report("storage_recovery_ms", self.counters.recovery_ms);
        report("storage_corrupt_records", self.counters.corrupt_records);
        report("storage_writes_refused", self.counters.writes_refused);
        report("storage_read_only", self.refused.is_some() as u64);
        report(
            "storage_segments_reclaimed",
            self.counters.segments_reclaimed,
        );
        let space = self.space();
        // Per disk, not per shard: combined by min / max over the shards (see STATS).
        if let Some(free) = space.free_bytes {
            report("storage_disk_free_bytes_min", free);
        }
        report("storage_disk_reserve_bytes_max", space.reserve_bytes);
        report("storage_disk_pressure_max", self.pressure as u64);
    }
}

#[cfg(test)]
mod causal_tests;
#[cfg(test)]
mod tests;
