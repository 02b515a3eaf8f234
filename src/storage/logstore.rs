//! The log-structured store ([`LogStore`]): Bitcask-style segments, a compact keydir, hint
//! files, crash recovery and compaction in bounded steps. File formats: [`super::record`].
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
//! each loop turn:  apply() the turn's writes;
//!                  if store.needs_sync() { store.sync() }   // --sync always: then ack them
//!                  store.maintenance(now_ms, budget)        // when idle; true = more to do
//! ```
//!
//! `sync()` failing means the store has turned read-only: answer writes with an error from
//! then on (reads still work). `apply()` failing with `WritesRefused` (disk full) refuses that
//! write only.
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
//! A write is appended to the active segment (handed to the OS) by `apply`; `sync` fsyncs the
//! active segment (the driver calls it once per event-loop turn: group commit). Creating a
//! file or renaming it syncs the file and then the directory. A failed fsync is sticky: from
//! then on every write is refused with [`StoreError::WritesRefused`] (reads keep working),
//! because after a failed fsync the kernel may have dropped the dirty pages and a later
//! "successful" fsync would lie. A failed append (ENOSPC) is truncated back and refused alone.
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
//! 3. The newest log segment, if it has no hint, becomes the active segment again.
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
//!    `N.compact`; expired values become tombstones (or are dropped, below);
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

use super::keydir::{expiry_s_of, KeyDir, Loc, Upsert};
use super::policy::{self, Plan, Pressure, SegmentFigures, Space, Thresholds};
use super::record::{
    decode_manifest, decode_record, decode_record_header, encode_manifest, encode_record, Hint,
    HintBuilder, RecordError, RecordHeader, SegmentHeader, SegmentKind, HINT_ENTRY_HEADER_SIZE,
    RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE,
};
use super::vfs::Vfs;
use super::{Applied, Store, StoreError, Stored, Write};
use crate::limits::{
    COMPACTION_DEAD_BYTES_MIN_DEFAULT, COMPACTION_DEAD_PERCENT_DEFAULT, COMPACTION_INPUTS_MAX,
    COMPACTION_RETRY_MS, COMPACTION_STEP_BYTES_MAX, DAMAGED_KEYS_LISTED_MAX, HINT_WRITE_CHUNK_SIZE,
    KEY_SIZE_MAX, RECOVERY_REPORT_CORRUPT_LISTED_MAX, SCAN_CHUNK_SIZE, SCRUB_RECORDS_PER_STEP,
    SEGMENT_SIZE_MAX_DEFAULT, SEGMENT_SIZE_MAX_LIMIT, SPACE_MEASURE_INTERVAL_BYTES, VALUE_SIZE_MAX,
    WRITES_REFUSED_LOG_INTERVAL_MS,
};
use crate::version::Version;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Name of the compaction commit manifest.
const MANIFEST_NAME: &str = "COMPACT";

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

/// A damaged record found by recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptRecord {
    /// Segment id.
    pub segment: u32,
    /// Offset of the bad bytes in the segment.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

/// A torn tail cut off the newest segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Segment id.
    pub segment: u32,
    /// New length of the segment.
    pub offset: u64,
    /// Bytes cut.
    pub bytes: u64,
}

/// What [`LogStore::open`] found and did.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// Segments loaded.
    pub segments: usize,
    /// Of those, loaded from their hint file.
    pub segments_from_hints: usize,
    /// Of those, scanned record by record.
    pub segments_scanned: usize,
    /// Records (and hint entries) read.
    pub records: u64,
    /// Keys in the keydir afterwards (tombstones included).
    pub keys: usize,
    /// Damaged records (the first [`RECOVERY_REPORT_CORRUPT_LISTED_MAX`]).
    pub corrupt: Vec<CorruptRecord>,
    /// Damaged records in all (and damaged segment headers).
    pub corrupt_count: u64,
    /// Torn tail cut off the newest segment, if any.
    pub truncated: Option<Truncation>,
    /// Hint files present but unusable (segment id, why); their segments were scanned.
    pub hints_rejected: Vec<(u32, String)>,
    /// Whether an interrupted compaction's deletions were completed.
    pub compaction_completed: bool,
    /// Leftover files removed (incomplete compaction outputs, temporary files, orphan hints).
    pub removed: Vec<String>,
}

impl RecoveryReport {
    fn corrupt(&mut self, segment: u32, offset: u64, reason: String) {
        log::error!("storage: corrupt data in segment {segment} at offset {offset}: {reason}");
        self.corrupt_count += 1;
        if self.corrupt.len() < RECOVERY_REPORT_CORRUPT_LISTED_MAX {
            self.corrupt.push(CorruptRecord {
                segment,
                offset,
                reason,
            });
        }
    }
}

struct Segment<F> {
    file: F,
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

impl<F> Segment<F> {
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

/// Where one compaction job is.
struct Compaction<F> {
    inputs: Vec<u32>,
    origin_lo: u32,
    origin_hi: u32,
    /// Tombstones / expired values below the horizon may be dropped (inputs are an origin
    /// prefix).
    may_drop: bool,
    /// Index into `inputs` of the one being copied.
    cursor: usize,
    scanner: Option<Scanner>,
    out: Option<Output<F>>,
    /// Bytes of committed outputs.
    output_bytes: u64,
    /// Number of committed outputs.
    outputs: u32,
    /// Bytes of input records scanned (bounds the work of one maintenance call).
    scanned_bytes: u64,
    /// Keys whose tombstone (or expired value) was dropped: `version u64, key_len u16, key`.
    /// Forgotten by the keydir at the commit point, not before, so that an older write
    /// arriving meanwhile is still refused as stale.
    dropped: Vec<u8>,
}

struct Output<F> {
    id: u32,
    file: F,
    header: SegmentHeader,
    len: u64,
    buf: Vec<u8>,
    hint: HintBuilder,
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
    segments: BTreeMap<u32, Segment<V::File>>,
    active: u32,
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
    scratch: Vec<u8>,
    counters: Counters,
}

fn segment_name(id: u32) -> String {
    format!("{id:010}.seg")
}
fn hint_name(id: u32) -> String {
    format!("{id:010}.hint")
}
fn compact_name(id: u32) -> String {
    format!("{id:010}.compact")
}
fn parse_id(name: &str, suffix: &str) -> Option<u32> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != 10 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn record_len(key_len: usize, value_len: Option<u32>) -> u64 {
    (RECORD_HEADER_SIZE + key_len + value_len.unwrap_or(0) as usize) as u64
}

fn is_expired(h: &RecordHeader, now_ms: u64) -> bool {
    super::expired(h.expires_at_ms, now_ms)
}

/// Whether a record (`version`, tombstone?) met later in recovery beats the one the keydir
/// holds. A newer version wins. On a tie (the same write, copied by compaction or repaired
/// after damage) the later copy wins, except that a value never replaces a tombstone of the
/// same version (an expired value turned into a tombstone by compaction).
fn beats(version: u64, tombstone: bool, held: &Loc) -> bool {
    version > held.version || (version == held.version && (tombstone || held.value_len.is_some()))
}

/// Why the bytes read for `key` at `loc` are not its record, if they are not.
fn record_damage(buf: &[u8], key: &[u8], loc: &Loc) -> Option<String> {
    match decode_record(buf) {
        Ok(r) if r.key == key && r.header.version == loc.version => None,
        Ok(_) => Some("record does not match the keydir".to_string()),
        Err(e) => Some(e.to_string()),
    }
}

/// Reads a segment's records in order through a buffer.
struct Scanner {
    /// File offset of the next record.
    offset: u64,
    file_len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
    /// Position in `buf` of the record last returned.
    last: usize,
    last_header: Option<RecordHeader>,
}

enum Scan {
    End,
    Record(RecordHeader, u64),
    Bad(u64, RecordError),
}

impl Scanner {
    fn new(start: u64, file_len: u64) -> Scanner {
        Scanner {
            offset: start,
            file_len,
            buf: Vec::new(),
            buf_at: start,
            last: 0,
            last_header: None,
        }
    }

    /// Make `buf` hold the bytes from `offset` up to `offset + need` (or to the end of file).
    fn fill<V: Vfs>(&mut self, vfs: &V, file: &V::File, need: usize) -> io::Result<()> {
        let want_end = (self.offset + need as u64).min(self.file_len);
        let buf_end = self.buf_at + self.buf.len() as u64;
        if self.offset >= self.buf_at && want_end <= buf_end {
            return Ok(());
        }
        let n = (need.max(SCAN_CHUNK_SIZE) as u64).min(self.file_len - self.offset) as usize;
        self.buf.resize(n, 0);
        vfs.read_at(file, self.offset, &mut self.buf)?;
        self.buf_at = self.offset;
        Ok(())
    }

    fn avail(&self) -> &[u8] {
        &self.buf[(self.offset - self.buf_at) as usize..]
    }

    fn next<V: Vfs>(&mut self, vfs: &V, file: &V::File) -> io::Result<Scan> {
        if self.offset >= self.file_len {
            return Ok(Scan::End);
        }
        self.fill(vfs, file, RECORD_HEADER_SIZE)?;
        let h = match decode_record_header(self.avail()) {
            Ok(h) => h,
            Err(e) => return Ok(Scan::Bad(self.offset, e)),
        };
        self.fill(vfs, file, h.record_len())?;
        match decode_record(self.avail()) {
            Ok(_) => {
                let at = self.offset;
                self.last = (self.offset - self.buf_at) as usize;
                self.last_header = Some(h);
                self.offset += h.record_len() as u64;
                Ok(Scan::Record(h, at))
            }
            Err(e) => Ok(Scan::Bad(self.offset, e)),
        }
    }

    /// Key of the record last returned by `next`.
    fn key(&self) -> &[u8] {
        let h = self
            .last_header
            .expect("key() follows a record from next()");
        let at = self.last + RECORD_HEADER_SIZE;
        &self.buf[at..at + h.key_len as usize]
    }

    /// Value of the record last returned by `next`.
    fn value(&self) -> &[u8] {
        let h = self
            .last_header
            .expect("value() follows a record from next()");
        let at = self.last + RECORD_HEADER_SIZE + h.key_len as usize;
        &self.buf[at..at + h.value_len as usize]
    }

    /// After a bad record: move to the next offset where a valid record starts. `false` if
    /// none does before the end of the file.
    fn resync<V: Vfs>(&mut self, vfs: &V, file: &V::File) -> io::Result<bool> {
        let mut at = self.offset + 1;
        // Bounded by the file length.
        while at + RECORD_HEADER_SIZE as u64 <= self.file_len {
            self.offset = at;
            self.fill(vfs, file, RECORD_HEADER_SIZE)?;
            if let Ok(h) = decode_record_header(self.avail()) {
                self.fill(vfs, file, h.record_len())?;
                if decode_record(self.avail()).is_ok() {
                    return Ok(true);
                }
            }
            at += 1;
        }
        self.offset = self.file_len;
        Ok(false)
    }
}

fn refused_error(why: &str) -> StoreError {
    StoreError::WritesRefused(why.to_string())
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

    /// Open (or create) the store in `dir`, recovering what is there.
    pub fn open(
        vfs: V,
        dir: &Path,
        config: LogConfig,
    ) -> Result<(LogStore<V>, RecoveryReport), StoreError> {
        if config.segment_size_max > SEGMENT_SIZE_MAX_LIMIT
            || config.segment_size_max <= SEGMENT_HEADER_SIZE as u64
            || config.compaction_dead_percent > 100
        {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid storage configuration {config:?}"),
            )));
        }
        vfs.create_dir_all(dir)?;
        let mut store = LogStore {
            vfs,
            dir: dir.to_path_buf(),
            config,
            keydir: KeyDir::new(),
            damaged: Vec::new(),
            scrub_cursor: 0,
            segments: BTreeMap::new(),
            active: 0,
            active_hint: None,
            next_id: 1,
            highest: Version::ZERO,
            dirty: false,
            refused: None,
            horizon: Version::ZERO,
            job: None,
            compaction_retry_at_ms: 0,
            last_now_ms: 0,
            free_bytes: None,
            appended_since_measure: 0,
            pressure: Pressure::None,
            pressure_log_at_ms: 0,
            force_below: None,
            force_seal: false,
            last_refusal: None,
            scratch: Vec::new(),
            counters: Counters::default(),
        };
        let report = store.recover()?;
        store.measure_space();
        Ok((store, report))
    }

    fn read_whole(&self, name: &str) -> io::Result<Vec<u8>> {
        let f = self.vfs.open(&self.path(name))?;
        let len = self.vfs.len(&f)?;
        let mut b = vec![0u8; usize::try_from(len).map_err(|_| io::ErrorKind::InvalidData)?];
        self.vfs.read_at(&f, 0, &mut b)?;
        Ok(b)
    }

    fn recover(&mut self) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();
        let mut names = self.vfs.list(&self.dir)?;
        let mut changed_dir = false;

        // 1. Leftovers of interrupted writes.
        for name in &names {
            if name.ends_with(".tmp") || parse_id(name, ".compact").is_some() {
                self.vfs.remove(&self.path(name))?;
                report.removed.push(name.clone());
                changed_dir = true;
            }
        }
        if names.iter().any(|n| n == MANIFEST_NAME) {
            match decode_manifest(&self.read_whole(MANIFEST_NAME)?) {
                Ok(inputs) => {
                    for id in inputs {
                        for name in [hint_name(id), segment_name(id)] {
                            if names.contains(&name) {
                                self.vfs.remove(&self.path(&name))?;
                            }
                        }
                    }
                    report.compaction_completed = true;
                }
                Err(why) => {
                    // The rename that publishes a manifest follows its fsync, so this is
                    // damage, not a torn write. Keeping the inputs is safe (duplicates).
                    log::error!("storage: ignoring damaged compaction manifest: {why}");
                    report.corrupt_count += 1;
                }
            }
            self.vfs.sync_dir(&self.dir)?;
            self.vfs.remove(&self.path(MANIFEST_NAME))?;
            changed_dir = true;
        }
        if changed_dir {
            self.vfs.sync_dir(&self.dir)?;
            names = self.vfs.list(&self.dir)?;
        }

        let seg_ids: Vec<u32> = names.iter().filter_map(|n| parse_id(n, ".seg")).collect();
        for name in &names {
            if let Some(id) = parse_id(name, ".hint") {
                if !seg_ids.contains(&id) {
                    self.vfs.remove(&self.path(name))?;
                    report.removed.push(name.clone());
                }
            }
        }
        self.next_id = seg_ids.iter().max().map_or(1, |m| m + 1);

        // 2. Headers; the newest log segment is the one writes were going to.
        let mut headers: BTreeMap<u32, (V::File, SegmentHeader, u64)> = BTreeMap::new();
        for &id in &seg_ids {
            let name = segment_name(id);
            let file = self.vfs.open(&self.path(&name))?;
            let len = self.vfs.len(&file)?;
            let mut b = [0u8; SEGMENT_HEADER_SIZE];
            let header = if len >= SEGMENT_HEADER_SIZE as u64 {
                self.vfs.read_at(&file, 0, &mut b)?;
                SegmentHeader::decode(&b).and_then(|h| {
                    if h.id == id {
                        Ok(h)
                    } else {
                        Err(format!("header names segment {}", h.id))
                    }
                })
            } else {
                Err(format!("segment of {len} bytes has no header"))
            };
            match header {
                Ok(h) => {
                    headers.insert(id, (file, h, len));
                }
                Err(why)
                    if id == seg_ids[seg_ids.len() - 1] && len <= SEGMENT_HEADER_SIZE as u64 =>
                {
                    // Created but never made durable with its header: nothing was written to
                    // it (a segment is synced before its first record is acknowledged).
                    log::warn!("storage: removing incomplete segment {name}: {why}");
                    drop(file);
                    self.vfs.remove(&self.path(&name))?;
                    self.vfs.sync_dir(&self.dir)?;
                    report.truncated = Some(Truncation {
                        segment: id,
                        offset: 0,
                        bytes: len,
                    });
                }
                Err(why) => report.corrupt(id, 0, format!("segment header: {why}")),
            }
        }
        let newest_log = headers
            .iter()
            .rev()
            .find(|(_, (_, h, _))| h.kind == SegmentKind::Log)
            .map(|(id, _)| *id);

        // 3. Load each segment from its hint or by scanning it.
        let mut reopen_active = None;
        for (id, (file, header, len)) in headers {
            self.segments.insert(
                id,
                Segment {
                    file,
                    header,
                    len,
                    live_bytes: 0,
                    tomb_bytes: 0,
                    tomb_version_min: u64::MAX,
                    ttl_bytes: 0,
                    ttl_expiry_max_s: 0,
                    sealed: true,
                    damaged: false,
                },
            );
            report.segments += 1;
            let hname = hint_name(id);
            let mut from_hint = false;
            if names.contains(&hname) {
                match self.load_hint(id, &hname, len, &mut report) {
                    Ok(true) => from_hint = true,
                    Ok(false) => {}
                    Err(why) => {
                        log::warn!("storage: hint {hname} unusable ({why}); scanning segment");
                        report.hints_rejected.push((id, why));
                    }
                }
            }
            if from_hint {
                report.segments_from_hints += 1;
                continue;
            }
            report.segments_scanned += 1;
            let is_newest = Some(id) == newest_log;
            let mut hint = HintBuilder::new(id);
            self.scan_segment(id, is_newest, &mut hint, &mut report)?;
            if is_newest && self.segments[&id].len < self.config.segment_size_max {
                reopen_active = Some((id, hint));
            } else if !self.segments[&id].damaged {
                // (A damaged segment gets no hint: it is scanned, and its damage reported,
                // at every start-up.)
                self.write_hint(id, hint);
            }
        }

        // 4. The active segment.
        match reopen_active {
            Some((id, hint)) => {
                let seg = self.segments.get_mut(&id).expect("loaded above");
                seg.sealed = false;
                self.active = id;
                self.start_active_hint(id, hint);
            }
            None => {
                let id = self.create_log_segment()?;
                self.active = id;
                self.start_active_hint(id, HintBuilder::new(id));
            }
        }
        report.keys = self.keydir.len();
        self.counters.corrupt_records += report.corrupt_count;
        Ok(report)
    }

    /// `Ok(true)` if the hint was loaded; `Err(why)` if it is unusable (nothing was loaded).
    fn load_hint(
        &mut self,
        id: u32,
        name: &str,
        seg_len: u64,
        report: &mut RecoveryReport,
    ) -> Result<bool, String> {
        let bytes = self.read_whole(name).map_err(|e| e.to_string())?;
        let hint = Hint::decode(&bytes)?;
        if hint.segment_id != id || hint.segment_len != seg_len {
            return Err(format!(
                "hint covers segment {} of {} bytes, file is segment {id} of {seg_len}",
                hint.segment_id, hint.segment_len
            ));
        }
        // Check every entry's bounds before changing anything, so a bad hint loads nothing.
        for e in hint.iter() {
            let e = e.expect("Hint::decode walked every entry");
            let end = e.offset as u64 + e.header.record_len() as u64;
            if (e.offset as u64) < SEGMENT_HEADER_SIZE as u64 || end > seg_len {
                return Err(format!("hint entry at offset {} outside segment", e.offset));
            }
        }
        for e in hint.iter() {
            let e = e.expect("Hint::decode walked every entry");
            self.learn(id, e.offset, &e.header, e.key)
                .map_err(|e| e.to_string())?;
            report.records += 1;
        }
        Ok(true)
    }

    fn scan_segment(
        &mut self,
        id: u32,
        is_newest: bool,
        hint: &mut HintBuilder,
        report: &mut RecoveryReport,
    ) -> Result<(), StoreError> {
        let len = self.segments[&id].len;
        let mut sc = Scanner::new(SEGMENT_HEADER_SIZE as u64, len);
        // Bounded: every iteration moves the scanner forward or ends.
        loop {
            let item = sc.next(&self.vfs, &self.segments[&id].file)?;
            match item {
                Scan::End => break,
                Scan::Record(h, at) => {
                    let key = sc.key();
                    self.learn(id, at as u32, &h, key)?;
                    hint.add(&h, at as u32, key);
                    report.records += 1;
                }
                Scan::Bad(at, err) => {
                    let found = sc.resync(&self.vfs, &self.segments[&id].file)?;
                    if is_newest && !found {
                        // A write torn by a crash: nothing after it was ever acknowledged
                        // (it was never synced, or the sync would have covered it whole).
                        log::warn!("storage: truncating torn tail of segment {id} at {at} ({err})");
                        let seg = self.segments.get_mut(&id).expect("loaded");
                        self.vfs.truncate(&mut seg.file, at)?;
                        self.vfs.sync(&mut seg.file)?;
                        report.truncated = Some(Truncation {
                            segment: id,
                            offset: at,
                            bytes: len - at,
                        });
                        seg.len = at;
                        break;
                    }
                    report.corrupt(id, at, err.to_string());
                    self.segments.get_mut(&id).expect("loaded").damaged = true;
                    if !found {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Take note of a record found on disk (recovery): the keydir keeps the newest.
    fn learn(
        &mut self,
        id: u32,
        offset: u32,
        h: &RecordHeader,
        key: &[u8],
    ) -> Result<(), StoreError> {
        self.highest = self.highest.max(Version(h.version));
        if h.tombstone {
            self.note_tombstone(id, h.version);
        }
        let loc = Loc {
            version: h.version,
            segment: id,
            offset,
            value_len: if h.tombstone { None } else { Some(h.value_len) },
            expires_at_s: expiry_s_of(h.expires_at_ms),
        };
        let outcome = self
            .keydir
            .upsert(key, |held| match held {
                Some(held) if !beats(h.version, h.tombstone, &held) => None,
                _ => Some(loc),
            })
            .map_err(|_| StoreError::Io(io::Error::other("keydir full")))?;
        match outcome {
            Upsert::Unchanged => return Ok(()),
            Upsert::Inserted => {}
            Upsert::Replaced(old) => {
                self.account(&old, key.len(), false);
            }
        }
        self.account(&loc, key.len(), true);
        Ok(())
    }

    /// Write `bytes` as `name` durably: temp file, fsync, rename, fsync directory.
    fn write_file_atomic(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path(&format!("{name}.tmp"));
        let result = (|| {
            let mut f = self.vfs.create(&tmp)?;
            self.vfs.append(&mut f, bytes)?;
            self.vfs.sync(&mut f)?;
            self.vfs.rename(&tmp, &self.path(name))?;
            self.vfs.sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = self.vfs.remove(&tmp); // best effort; recovery removes *.tmp anyway
        }
        result
    }

    /// Write a sealed segment's hint. A failure only costs a scan at the next start-up.
    fn write_hint(&mut self, id: u32, hint: HintBuilder) {
        let len = self.segments[&id].len;
        let bytes = hint.finish(len);
        if let Err(e) = self.write_file_atomic(&hint_name(id), &bytes) {
            log::warn!("storage: could not write hint for segment {id}: {e}");
        }
    }

    /// Create a new, empty, durable log segment; returns its id.
    fn create_log_segment(&mut self) -> Result<u32, StoreError> {
        let id = self.next_id;
        let header = SegmentHeader {
            kind: SegmentKind::Log,
            id,
            origin_lo: id,
            origin_hi: id,
        };
        let file = self.create_segment_file(&segment_name(id), &header)?;
        self.next_id += 1;
        self.segments.insert(
            id,
            Segment {
                file,
                header,
                len: SEGMENT_HEADER_SIZE as u64,
                live_bytes: 0,
                tomb_bytes: 0,
                tomb_version_min: u64::MAX,
                ttl_bytes: 0,
                ttl_expiry_max_s: 0,
                sealed: false,
                damaged: false,
            },
        );
        Ok(id)
    }

    /// Create `name` holding `header`, synced, and sync the directory.
    fn create_segment_file(
        &mut self,
        name: &str,
        header: &SegmentHeader,
    ) -> Result<V::File, StoreError> {
        let path = self.path(name);
        let result = (|| {
            let mut f = self.vfs.create(&path)?;
            self.vfs.append(&mut f, &header.encode())?;
            Ok(f)
        })();
        let mut f = match result {
            Ok(f) => f,
            Err(e) => {
                let _ = self.vfs.remove(&path); // best effort: an empty file is harmless
                return Err(self.io_refusal(e, false));
            }
        };
        if let Err(e) = self.vfs.sync(&mut f) {
            return Err(self.io_refusal(e, true));
        }
        if let Err(e) = self.vfs.sync_dir(&self.dir) {
            return Err(self.io_refusal(e, true));
        }
        Ok(f)
    }

    /// Turn an I/O error on the write path into a refusal; `sticky` after fsync failures.
    fn io_refusal(&mut self, e: io::Error, sticky: bool) -> StoreError {
        let why = if sticky {
            format!("fsync failed ({e}); the store is read-only until restarted")
        } else {
            format!("write failed: {e}")
        };
        if sticky {
            log::error!("storage: {why}");
            self.refused = Some(why.clone());
        }
        StoreError::WritesRefused(why)
    }

    /// Seal the active segment and start a new one.
    fn roll(&mut self) -> Result<(), StoreError> {
        let old = self.active;
        let seg = self.segments.get_mut(&old).expect("active exists");
        if let Err(e) = self.vfs.sync(&mut seg.file) {
            return Err(self.io_refusal(e, true));
        }
        let new = self.create_log_segment()?;
        self.segments.get_mut(&old).expect("active exists").sealed = true;
        self.active = new;
        if let Some((hint, file)) = self.active_hint.take() {
            if let Err(e) = self.seal_hint(old, hint, file) {
                log::warn!("storage: could not write hint for segment {old}: {e}");
                let _ = self
                    .vfs
                    .remove(&self.path(&format!("{}.tmp", hint_name(old))));
            }
        }
        self.start_active_hint(new, HintBuilder::new(new));
        Ok(())
    }

    /// Start streaming the active segment's hint to its temporary file.
    fn start_active_hint(&mut self, id: u32, mut hint: HintBuilder) {
        let tmp = self.path(&format!("{}.tmp", hint_name(id)));
        let result = self.vfs.create(&tmp).and_then(|mut f| {
            hint.take_pending(|b| self.vfs.append(&mut f, b))?;
            Ok(f)
        });
        match result {
            Ok(f) => self.active_hint = Some((hint, f)),
            Err(e) => {
                log::warn!("storage: no hint for segment {id}: {e}");
                let _ = self.vfs.remove(&tmp); // best effort: recovery removes *.tmp
                self.active_hint = None;
            }
        }
    }

    /// Complete a streamed hint: trailer, fsync, rename, fsync the directory.
    fn seal_hint(&mut self, id: u32, hint: HintBuilder, mut file: V::File) -> io::Result<()> {
        let len = self.segments[&id].len;
        self.vfs.append(&mut file, &hint.finish(len))?;
        self.vfs.sync(&mut file)?;
        let tmp = self.path(&format!("{}.tmp", hint_name(id)));
        self.vfs.rename(&tmp, &self.path(&hint_name(id)))?;
        self.vfs.sync_dir(&self.dir)
    }

    /// Forget a key whose newest record is damaged: the key reads as absent from now on, so a
    /// repair from another replica (even of the same version) is accepted instead of being
    /// refused as stale forever, and the key is reported through `take_damaged`. The damaged
    /// bytes stay on disk until compaction; at the next start a repaired copy in a later
    /// segment wins the version tie (see `beats`). Returns the report.
    fn forget_damaged(&mut self, key: &[u8], loc: &Loc, why: &str) -> String {
        self.counters.corrupt_records += 1;
        let msg = format!("segment {} offset {}: {why}", loc.segment, loc.offset);
        log::error!(
            "storage: corrupt record: {msg}; forgotten so that a replica can repair the key"
        );
        if let Some(old) = self.keydir.remove(key) {
            self.account(&old, key.len(), false);
        }
        if self.damaged.len() < DAMAGED_KEYS_LISTED_MAX {
            self.damaged.push(key.to_vec());
        }
        msg
    }

    /// Verify up to `records` records the keydir points at, one cursor step each, so damage
    /// at rest (a flipped bit under a valid hint file) is found even for keys nobody reads.
    /// A full pass over N keys takes N / records maintenance calls.
    fn scrub_step(&mut self, records: usize) {
        let mut buf = Vec::new();
        for _ in 0..records {
            if self.keydir.is_empty() {
                return;
            }
            if self.scrub_cursor >= self.keydir.len() {
                self.scrub_cursor = 0;
            }
            let Some((key, loc)) = self.keydir.at(self.scrub_cursor) else {
                return;
            };
            let key = key.to_vec();
            let Some(seg) = self.segments.get(&loc.segment) else {
                self.scrub_cursor += 1;
                continue;
            };
            buf.clear();
            buf.resize(record_len(key.len(), loc.value_len) as usize, 0);
            let damage = match self.vfs.read_at(&seg.file, loc.offset as u64, &mut buf) {
                Ok(()) => record_damage(&buf, &key, &loc),
                // An I/O error is not proof of damage: leave the key, try again next pass.
                Err(_) => None,
            };
            match damage {
                // Removal moves the last entry into this slot: look at the same index again.
                Some(why) => {
                    self.forget_damaged(&key, &loc, &why);
                }
                None => self.scrub_cursor += 1,
            }
        }
    }

    /// Every segment: (id, path, sealed). For tests and tools.
    pub fn segment_files(&self) -> Vec<(u32, PathBuf, bool)> {
        self.segments
            .iter()
            .map(|(id, s)| (*id, self.path(&segment_name(*id)), s.sealed))
            .collect()
    }

    /// The driver measured how long `open` took (the store never reads the clock).
    pub fn set_recovery_ms(&mut self, ms: u64) {
        self.counters.recovery_ms = ms;
    }

    /// Whether a compaction job is under way.
    pub fn compacting(&self) -> bool {
        self.job.is_some()
    }

    /// The reason writes are refused, if they are.
    pub fn writes_refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Bytes of RAM held by the keydir.
    pub fn keydir_bytes(&self) -> usize {
        self.keydir.memory_bytes()
    }

    fn dead_bytes_total(&self) -> u64 {
        self.segments.values().map(|s| s.dead_bytes()).sum()
    }

    // ---- disk space ----

    fn live_bytes_total(&self) -> u64 {
        self.segments.values().map(|s| s.live_bytes).sum()
    }

    /// Measure the free space on the disk (through the Vfs). An error leaves the figure
    /// unknown, which admits writes: the disk itself still refuses them when full.
    fn measure_space(&mut self) {
        self.free_bytes = match self.vfs.free_bytes(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("storage: cannot measure the free space: {e}");
                None
            }
        };
        self.appended_since_measure = 0;
    }

    /// The free space and the reserve, as the policy sees them.
    fn space(&self) -> Space {
        Space {
            free_bytes: self.free_bytes,
            reserve_bytes: policy::reserve_bytes(
                self.config.space_reserve_bytes,
                self.config.segment_size_max,
                self.live_bytes_total(),
                self.config.stores_sharing_disk,
            ),
        }
    }

    /// Bytes were written to the disk: lower the estimate, re-measure now and then.
    fn note_appended(&mut self, bytes: u64) {
        if let Some(f) = &mut self.free_bytes {
            *f = f.saturating_sub(bytes);
        }
        self.appended_since_measure += bytes;
        if self.appended_since_measure >= SPACE_MEASURE_INTERVAL_BYTES {
            self.measure_space();
        }
    }

    /// The refusal of a write that would eat into the reserve, if it would.
    fn check_space(&mut self, record_bytes: u64) -> Result<(), StoreError> {
        if policy::write_admitted(self.space(), record_bytes) {
            return Ok(());
        }
        // The estimate only goes down between measurements; compaction (here or in another
        // shard) may have freed space since.
        self.measure_space();
        let space = self.space();
        if policy::write_admitted(space, record_bytes) {
            return Ok(());
        }
        let dead = self.dead_bytes_total();
        Err(StoreError::WritesRefused(format!(
            "disk full: {} bytes free, and writes must leave {} bytes free so that \
             compaction can run ({dead} dead bytes to reclaim in this shard); retry later",
            space.free_bytes.unwrap_or(0),
            space.reserve_bytes
        )))
    }

    // ---- compaction ----

    fn figures(&self, now_ms: u64) -> Vec<SegmentFigures> {
        self.segments
            .iter()
            .map(|(id, s)| SegmentFigures {
                id: *id,
                sealed: s.sealed,
                damaged: s.damaged,
                body_bytes: s.len - SEGMENT_HEADER_SIZE as u64,
                live_bytes: s.live_bytes,
                reclaimable_bytes: s.reclaimable_bytes(now_ms),
                origin_lo: s.header.origin_lo,
                origin_hi: s.header.origin_hi,
            })
            .collect()
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            dead_percent: self.config.compaction_dead_percent,
            dead_bytes_min: self.config.compaction_dead_bytes_min,
        }
    }

    /// What the policy says to do next (no side effects).
    fn decide(&self, now_ms: u64) -> Option<Plan> {
        if now_ms < self.compaction_retry_at_ms {
            return None;
        }
        let decided = policy::plan(
            &self.figures(now_ms),
            self.thresholds(),
            self.space(),
            self.force_below,
            self.force_seal,
        );
        if decided.is_none() && self.force_below.is_none() {
            return self.plan_purge().map(|inputs| Plan::Compact {
                inputs,
                mode: policy::Mode::Normal,
            });
        }
        decided
    }

    /// Pick the inputs of a compaction job, if one is due, sealing the active segment first
    /// when the policy says so.
    fn plan(&mut self, now_ms: u64) -> Result<Option<Compaction<V::File>>, StoreError> {
        let mut decided = self.decide(now_ms);
        if decided == Some(Plan::SealActive) {
            let active = &self.segments[&self.active];
            log::info!(
                "storage: sealing active segment {} ({} bytes, {} reclaimable) so that compaction can reclaim it",
                self.active,
                active.len,
                active.reclaimable_bytes(now_ms)
            );
            self.force_seal = false;
            self.roll()?;
            decided = self.decide(now_ms);
        }
        if self.force_below.is_some() {
            self.force_seal = false;
        }
        let mut inputs = match decided {
            Some(Plan::Compact { inputs, mode }) => {
                if mode != policy::Mode::Normal {
                    log::info!("storage: {mode:?} compaction of segments {inputs:?}");
                }
                inputs
            }
            Some(Plan::SealActive) | None => {
                // A forced pass with nothing (left) to do is over.
                self.force_below = None;
                return Ok(None);
            }
        };
        inputs.sort_unstable();
        let origin_lo = inputs
            .iter()
            .map(|id| self.segments[id].header.origin_lo)
            .min()
            .expect("non-empty");
        let origin_hi = inputs
            .iter()
            .map(|id| self.segments[id].header.origin_hi)
            .max()
            .expect("non-empty");
        let may_drop = self
            .segments
            .iter()
            .filter(|(id, _)| !inputs.contains(id))
            .all(|(_, s)| s.header.origin_lo > origin_hi);
        Ok(Some(Compaction {
            inputs,
            origin_lo,
            origin_hi,
            may_drop,
            cursor: 0,
            scanner: None,
            out: None,
            output_bytes: 0,
            outputs: 0,
            scanned_bytes: 0,
            dropped: Vec::new(),
        }))
    }

    /// Once the tombstone horizon allows it: the oldest origin prefix, if it holds enough
    /// tombstones (and dead bytes) to be worth rewriting.
    fn plan_purge(&self) -> Option<Vec<u32>> {
        if self.horizon == Version::ZERO {
            return None;
        }
        let prefix = self.oldest_prefix()?;
        let purge: u64 = prefix
            .iter()
            .map(|id| &self.segments[id])
            .filter(|s| s.tomb_version_min < self.horizon.0)
            .map(|s| s.tomb_bytes)
            .sum();
        let dead: u64 = prefix.iter().map(|id| self.segments[id].dead_bytes()).sum();
        (purge > 0 && purge + dead >= self.config.compaction_dead_bytes_min).then_some(prefix)
    }

    /// The largest set of sealed, undamaged segments, at most [`COMPACTION_INPUTS_MAX`],
    /// holding every write up to some origin: every other segment's `origin_lo` is above
    /// the set's highest `origin_hi`.
    fn oldest_prefix(&self) -> Option<Vec<u32>> {
        let mut segs: Vec<(u32, u32, u32, bool)> = self
            .segments
            .iter()
            .map(|(id, s)| {
                let h = &s.header;
                (h.origin_lo, *id, h.origin_hi, s.sealed && !s.damaged)
            })
            .collect();
        segs.sort_unstable();
        let mut best = None;
        let mut cur = Vec::new();
        let mut hi = 0;
        for (i, &(_, id, origin_hi, ok)) in segs.iter().enumerate() {
            if !ok || cur.len() == COMPACTION_INPUTS_MAX {
                break;
            }
            cur.push(id);
            hi = hi.max(origin_hi);
            if segs.get(i + 1).is_none_or(|next| next.0 > hi) {
                best = Some(cur.clone());
            }
        }
        best
    }

    /// One unit of compaction work. `Ok(true)` when the job is finished.
    fn compact_step(
        &mut self,
        job: &mut Compaction<V::File>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if job.cursor == job.inputs.len() {
            self.finish_compaction(job)?;
            return Ok(true);
        }
        let input = job.inputs[job.cursor];
        let seg = &self.segments[&input];
        let sc = job
            .scanner
            .get_or_insert_with(|| Scanner::new(SEGMENT_HEADER_SIZE as u64, seg.len));
        let item = sc.next(&self.vfs, &seg.file)?;
        match item {
            Scan::End => {
                job.scanner = None;
                job.cursor += 1;
            }
            Scan::Bad(at, err) => {
                self.counters.corrupt_records += 1;
                log::error!(
                    "storage: compaction found corrupt data in segment {input} at {at}: {err}; \
                     segment kept and excluded from compaction"
                );
                self.segments.get_mut(&input).expect("input exists").damaged = true;
                return Err(StoreError::Corrupt(format!(
                    "segment {input} offset {at}: {err}"
                )));
            }
            Scan::Record(h, at) => {
                job.scanned_bytes += h.record_len() as u64;
                let sc = job.scanner.as_ref().expect("set above");
                let key = sc.key();
                let current = self
                    .keydir
                    .get(key)
                    .is_some_and(|l| l.segment == input && l.offset as u64 == at);
                if !current {
                    return Ok(false);
                }
                let expired = !h.tombstone && is_expired(&h, now_ms);
                if (h.tombstone || expired) && job.may_drop && h.version < self.horizon.0 {
                    job.dropped.extend_from_slice(&h.version.to_le_bytes());
                    job.dropped
                        .extend_from_slice(&(key.len() as u16).to_le_bytes());
                    job.dropped.extend_from_slice(key);
                    return Ok(false);
                }
                let (header, value) = if expired {
                    let t = RecordHeader {
                        version: h.version,
                        expires_at_ms: 0,
                        tombstone: true,
                        key_len: h.key_len,
                        value_len: 0,
                    };
                    (t, None)
                } else {
                    (h, if h.tombstone { None } else { Some(sc.value()) })
                };
                let key = key.to_vec();
                let value = value.map(|v| v.to_vec());
                self.copy_record(job, &header, &key, value.as_deref())?;
            }
        }
        Ok(false)
    }

    fn copy_record(
        &mut self,
        job: &mut Compaction<V::File>,
        h: &RecordHeader,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let len = h.record_len() as u64;
        let full = job.out.as_ref().is_some_and(|o| {
            o.len + len > self.config.segment_size_max && o.len > SEGMENT_HEADER_SIZE as u64
        });
        if full {
            self.commit_output(job)?;
        }
        if job.out.is_none() {
            let id = self.next_id;
            let header = SegmentHeader {
                kind: SegmentKind::Compacted,
                id,
                origin_lo: job.origin_lo,
                origin_hi: job.origin_hi,
            };
            let mut file = self
                .vfs
                .create(&self.path(&compact_name(id)))
                .map_err(|e| self.io_refusal(e, false))?;
            self.next_id += 1;
            let hb = header.encode();
            self.vfs
                .append(&mut file, &hb)
                .map_err(|e| self.io_refusal(e, false))?;
            job.out = Some(Output {
                id,
                file,
                header,
                len: SEGMENT_HEADER_SIZE as u64,
                buf: Vec::new(),
                hint: HintBuilder::new(id),
            });
        }
        let out = job.out.as_mut().expect("opened above");
        let at = out.len;
        encode_record(&mut out.buf, h.version, h.expires_at_ms, key, value);
        out.hint.add(h, at as u32, key);
        out.len += len;
        if out.buf.len() >= SCAN_CHUNK_SIZE {
            let r = self.vfs.append(&mut out.file, &out.buf);
            out.buf.clear();
            r.map_err(|e| self.io_refusal(e, false))?;
        }
        Ok(())
    }

    /// Make the current output durable and visible, and point the keydir at its records.
    fn commit_output(&mut self, job: &mut Compaction<V::File>) -> Result<(), StoreError> {
        let Some(mut out) = job.out.take() else {
            return Ok(());
        };
        if !out.buf.is_empty() {
            let r = self.vfs.append(&mut out.file, &out.buf);
            out.buf.clear();
            if let Err(e) = r {
                let _ = self.vfs.remove(&self.path(&compact_name(out.id)));
                return Err(self.io_refusal(e, false));
            }
        }
        if let Err(e) = self.vfs.sync(&mut out.file) {
            return Err(self.io_refusal(e, true));
        }
        let hint = out.hint.finish(out.len);
        if let Err(e) = self.write_file_atomic(&hint_name(out.id), &hint) {
            log::warn!("storage: could not write hint for segment {}: {e}", out.id);
        }
        let from = self.path(&compact_name(out.id));
        let to = self.path(&segment_name(out.id));
        if let Err(e) = self.vfs.rename(&from, &to) {
            return Err(self.io_refusal(e, false));
        }
        if let Err(e) = self.vfs.sync_dir(&self.dir) {
            return Err(self.io_refusal(e, true));
        }
        self.segments.insert(
            out.id,
            Segment {
                file: out.file,
                header: out.header,
                len: out.len,
                live_bytes: 0,
                tomb_bytes: 0,
                tomb_version_min: u64::MAX,
                ttl_bytes: 0,
                ttl_expiry_max_s: 0,
                sealed: true,
                damaged: false,
            },
        );
        job.output_bytes += out.len;
        job.outputs += 1;
        self.note_appended(out.len + hint.len() as u64);
        let hint = Hint::decode(&hint).expect("a hint this store just built is valid");
        for e in hint.iter() {
            let e = e.expect("a hint this store just built is valid");
            let Some(held) = self.keydir.get(e.key) else {
                continue;
            };
            if held.version != e.header.version || !job.inputs.contains(&held.segment) {
                continue; // rewritten since it was copied: the copy is dead
            }
            let loc = Loc {
                version: e.header.version,
                segment: out.id,
                offset: e.offset,
                value_len: if e.header.tombstone {
                    None
                } else {
                    Some(e.header.value_len)
                },
                expires_at_s: expiry_s_of(e.header.expires_at_ms),
            };
            self.keydir
                .insert(e.key, loc)
                .expect("key present: no arena growth");
            self.account(&held, e.key.len(), false);
            self.account(&loc, e.key.len(), true);
            if e.header.tombstone {
                self.note_tombstone(out.id, e.header.version);
            }
        }
        Ok(())
    }

    fn finish_compaction(&mut self, job: &mut Compaction<V::File>) -> Result<(), StoreError> {
        self.commit_output(job)?;
        // Input records not copied were superseded by newer ones, maybe in the active segment
        // and not yet synced: make those durable before the old ones go, or a crash would
        // lose both.
        let active = self.segments.get_mut(&self.active).expect("active exists");
        if let Err(e) = self.vfs.sync(&mut active.file) {
            return Err(self.io_refusal(e, true));
        }
        // The manifest, written to a temporary file: failing here leaves nothing behind.
        let tmp = self.path(&format!("{MANIFEST_NAME}.tmp"));
        let written = (|| {
            let mut f = self.vfs.create(&tmp)?;
            self.vfs.append(&mut f, &encode_manifest(&job.inputs))?;
            Ok(f)
        })();
        let synced = match written {
            Ok(mut f) => self.vfs.sync(&mut f).map_err(|e| (e, true)),
            Err(e) => Err((e, false)),
        };
        if let Err((e, sticky)) = synced {
            let _ = self.vfs.remove(&tmp); // best effort: recovery removes *.tmp
            return Err(self.io_refusal(e, sticky));
        }
        // The commit point is the rename. From here a failure is sticky: the store is left
        // with a manifest it could not act on, and only recovery (at the next start) may
        // finish the deletions it names; a later compaction must not overwrite it.
        let input_bytes = self.delete_inputs(job, &tmp).map_err(|e| {
            let why = format!(
                "compaction could not finish deleting its inputs ({e}); restart to complete it"
            );
            log::error!("storage: {why}");
            self.refused = Some(why.clone());
            StoreError::WritesRefused(why)
        })?;
        self.counters.compactions += 1;
        self.counters.bytes_reclaimed += input_bytes.saturating_sub(job.output_bytes);
        self.counters.segments_reclaimed +=
            (job.inputs.len() as u64).saturating_sub(job.outputs as u64);
        // The inputs are gone: the free space is worth measuring again.
        self.measure_space();
        if cfg!(debug_assertions) {
            for (_, loc) in self.keydir.iter() {
                assert!(
                    self.segments.contains_key(&loc.segment),
                    "keydir points at deleted segment {}",
                    loc.segment
                );
            }
        }
        Ok(())
    }

    /// After the manifest is durable: forget the dropped keys, delete the inputs and their
    /// hints, then the manifest. Returns the bytes of the inputs.
    fn delete_inputs(&mut self, job: &Compaction<V::File>, manifest_tmp: &Path) -> io::Result<u64> {
        self.vfs.rename(manifest_tmp, &self.path(MANIFEST_NAME))?;
        self.vfs.sync_dir(&self.dir)?;
        let mut rest = &job.dropped[..];
        while rest.len() >= 10 {
            let version = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
            let klen = u16::from_le_bytes([rest[8], rest[9]]) as usize;
            let key = &rest[10..10 + klen];
            rest = &rest[10 + klen..];
            if let Some(held) = self.keydir.get(key) {
                if held.version == version && job.inputs.contains(&held.segment) {
                    self.keydir.remove(key);
                    self.account(&held, key.len(), false);
                }
            }
        }
        let mut input_bytes = 0;
        for &id in &job.inputs {
            let seg = self.segments.remove(&id).expect("input exists");
            assert_eq!(
                seg.live_bytes, 0,
                "input segment {id} still live after compaction"
            );
            input_bytes += seg.len;
            drop(seg);
            match self.vfs.remove(&self.path(&hint_name(id))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.vfs.remove(&self.path(&segment_name(id)))?;
        }
        self.vfs.sync_dir(&self.dir)?;
        self.vfs.remove(&self.path(MANIFEST_NAME))?;
        self.vfs.sync_dir(&self.dir)?;
        Ok(input_bytes)
    }

    /// Abandon a job after an error: its uncommitted output is removed; committed outputs
    /// stay (they duplicate records still in the inputs, which is harmless).
    fn abort_compaction(&mut self, job: Compaction<V::File>) {
        if let Some(out) = job.out {
            drop(out.file);
            let _ = self.vfs.remove(&self.path(&compact_name(out.id))); // recovery removes it too
        }
        self.compaction_retry_at_ms = self.last_now_ms + COMPACTION_RETRY_MS;
    }

    /// `apply` without the refusal count.
    fn apply_write(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
        if let Some(why) = &self.refused {
            return Err(refused_error(why));
        }
        if w.key.len() > KEY_SIZE_MAX || w.value.is_some_and(|v| v.len() > VALUE_SIZE_MAX) {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "key or value over the size limit",
            )));
        }
        let held = self.keydir.get(w.key);
        if let Some(h) = held {
            if h.version >= w.version.0 {
                return Ok(Applied::Stale {
                    current: Version(h.version),
                });
            }
        }
        let value_len = w.value.map(|v| v.len() as u32);
        let len = record_len(w.key.len(), value_len);
        // The record and (about) its hint entry: keep the reserve free for compaction.
        self.check_space(2 * len)?;
        let active_len = self.segments[&self.active].len;
        if active_len + len > self.config.segment_size_max
            && active_len > SEGMENT_HEADER_SIZE as u64
        {
            self.roll()?;
        }
        self.scratch.clear();
        encode_record(
            &mut self.scratch,
            w.version.0,
            w.expires_at_ms,
            w.key,
            w.value,
        );
        let active = self.active;
        let seg = self.segments.get_mut(&active).expect("active exists");
        let at = seg.len;
        if let Err(e) = self.vfs.append(&mut seg.file, &self.scratch) {
            // Part of the record may have landed: cut it so the next record follows a whole
            // one. If even that fails the segment's tail is unknown: refuse from now on.
            if let Err(e2) = self.vfs.truncate(&mut seg.file, at) {
                let why = format!("append failed ({e}) and truncating it back failed ({e2})");
                log::error!("storage: {why}");
                self.refused = Some(why.clone());
                return Err(StoreError::WritesRefused(why));
            }
            return Err(self.io_refusal(e, false));
        }
        let loc = Loc {
            version: w.version.0,
            segment: active,
            offset: at as u32,
            value_len,
            expires_at_s: expiry_s_of(w.expires_at_ms),
        };
        let old = match self.keydir.insert(w.key, loc) {
            Ok(old) => old,
            Err(_) => {
                let seg = self.segments.get_mut(&active).expect("active exists");
                let _ = self.vfs.truncate(&mut seg.file, at);
                return Err(refused_error("keydir key arena full"));
            }
        };
        self.segments.get_mut(&active).expect("active exists").len += len;
        self.account(&loc, w.key.len(), true);
        if w.value.is_none() {
            self.note_tombstone(active, w.version.0);
        }
        if let Some(old) = old {
            self.account(&old, w.key.len(), false);
        }
        let header = RecordHeader {
            version: w.version.0,
            expires_at_ms: w.expires_at_ms,
            tombstone: w.value.is_none(),
            key_len: w.key.len() as u16,
            value_len: value_len.unwrap_or(0),
        };
        if let Some((hint, file)) = &mut self.active_hint {
            hint.add(&header, at as u32, w.key);
            if hint.pending_len() >= HINT_WRITE_CHUNK_SIZE {
                if let Err(e) = hint.take_pending(|b| self.vfs.append(file, b)) {
                    log::warn!("storage: dropping the hint of segment {active}: {e}");
                    self.active_hint = None;
                    let tmp = self.path(&format!("{}.tmp", hint_name(active)));
                    let _ = self.vfs.remove(&tmp); // best effort: recovery removes *.tmp
                }
            }
        }
        self.highest = self.highest.max(w.version);
        self.dirty = true;
        self.note_appended(len + HINT_ENTRY_HEADER_SIZE as u64 + w.key.len() as u64);
        Ok(Applied::Stored)
    }
}

impl<V: Vfs> Store for LogStore<V> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        let Some(loc) = self.keydir.get(key) else {
            return Ok(None);
        };
        let Some(seg) = self.segments.get(&loc.segment) else {
            return Err(StoreError::Corrupt(format!(
                "keydir points at missing segment {}",
                loc.segment
            )));
        };
        let len = record_len(key.len(), loc.value_len) as usize;
        let mut buf = vec![0u8; len];
        self.vfs.read_at(&seg.file, loc.offset as u64, &mut buf)?;
        if let Some(why) = record_damage(&buf, key, &loc) {
            let msg = self.forget_damaged(key, &loc, &why);
            return Err(StoreError::Corrupt(msg));
        }
        let h = decode_record_header(&buf).expect("decoded above");
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
        }))
    }

    fn version_of(&self, key: &[u8]) -> Option<Version> {
        self.keydir.get(key).map(|l| Version(l.version))
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
        let seg = self.segments.get_mut(&self.active).expect("active exists");
        if let Err(e) = self.vfs.sync(&mut seg.file) {
            return Err(self.io_refusal(e, true));
        }
        self.dirty = false;
        Ok(())
    }

    fn maintenance(&mut self, now_ms: u64, budget: usize) -> Result<bool, StoreError> {
        self.last_now_ms = now_ms;
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

    /// The cursor is a position in the keydir's dense entry array (see [`KeyDir::at`]).
    fn scan_keys(
        &self,
        cursor: u64,
        limit: usize,
        f: &mut dyn FnMut(&[u8], super::KeyMeta),
    ) -> Result<Option<u64>, StoreError> {
        let start = usize::try_from(cursor).unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(self.keydir.len());
        for i in start..end {
            let (key, loc) = self.keydir.at(i).expect("i < len");
            f(
                key,
                super::KeyMeta {
                    version: Version(loc.version),
                    tombstone: loc.value_len.is_none(),
                    expires_at_ms: u64::from(loc.expires_at_s) * 1000,
                },
            );
        }
        Ok((end < self.keydir.len()).then_some(end as u64))
    }

    fn set_tombstone_horizon(&mut self, horizon: Version) {
        self.horizon = horizon;
    }

    fn stats(&self, report: &mut dyn FnMut(&str, u64)) {
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
mod tests {
    use super::*;
    use crate::storage::vfs::{CrashMode, MemVfs};

    fn dir() -> &'static Path {
        Path::new("/db")
    }

    fn small() -> LogConfig {
        LogConfig {
            segment_size_max: 1024,
            compaction_dead_percent: 30,
            compaction_dead_bytes_min: 0,
            ..LogConfig::default()
        }
    }

    fn put(s: &mut LogStore<MemVfs>, key: &str, value: &str, v: u64) {
        let r = s
            .apply(Write {
                key: key.as_bytes(),
                value: Some(value.as_bytes()),
                version: Version(v),
                expires_at_ms: 0,
            })
            .unwrap();
        assert_eq!(r, Applied::Stored);
    }

    fn value(s: &mut LogStore<MemVfs>, key: &str) -> Option<String> {
        s.get(key.as_bytes())
            .unwrap()
            .and_then(|r| r.value)
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn the_scrub_finds_damage_nobody_reads_and_reports_it_once() {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        for i in 0..40u64 {
            put(&mut s, &format!("key{i:02}"), "some value", i + 1);
        }
        s.sync().unwrap();
        // Damage the value of the first record of the first segment.
        let (_, first, _) = s.segment_files()[0].clone();
        let at = (SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + 6) as u64;
        vfs.flip_bit(&first, at, 3).unwrap();
        let keys_before = s.len();
        let mut damaged = Vec::new();
        // Enough maintenance calls for one full pass.
        for _ in 0..(40 / SCRUB_RECORDS_PER_STEP + 2) {
            s.maintenance(0, 1).unwrap();
        }
        s.take_damaged(&mut damaged);
        assert_eq!(damaged, vec![b"key00".to_vec()]);
        assert_eq!(s.len(), keys_before - 1, "the damaged record is forgotten");
        assert_eq!(value(&mut s, "key00"), None);
        // A repair of the same version is accepted now.
        put(&mut s, "key00", "repaired", 1);
        assert_eq!(value(&mut s, "key00").as_deref(), Some("repaired"));
        for _ in 0..(40 / SCRUB_RECORDS_PER_STEP + 2) {
            s.maintenance(0, 1).unwrap();
        }
        damaged.clear();
        s.take_damaged(&mut damaged);
        assert!(damaged.is_empty(), "reported once");
    }

    #[test]
    fn torn_tail_of_newest_segment_is_truncated_and_synced_data_kept() {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        put(&mut s, "a", "1", 1);
        s.sync().unwrap();
        put(&mut s, "b", "2", 2);
        put(&mut s, "c", "3", 3);
        let active = s.segment_files().last().unwrap().1.clone();
        let before = vfs.contents(&active).unwrap().len();
        drop(s);
        vfs.crash(CrashMode::DropUnsynced);
        let synced_len = vfs.contents(&active).unwrap().len();
        assert!(synced_len < before);
        // Now simulate a torn write by hand: append a partial record and reopen.
        let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        assert!(report.truncated.is_none());
        assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
        assert_eq!(value(&mut s, "b"), None);
        put(&mut s, "d", "4", 4);
        s.sync().unwrap();
        drop(s);
        let mut rec = Vec::new();
        encode_record(&mut rec, 5, 0, b"e", Some(b"55555"));
        let mut f = vfs.open(&active).unwrap();
        vfs.append(&mut f, &rec[..rec.len() - 3]).unwrap();
        vfs.sync(&mut f).unwrap();
        let full_len = vfs.len(&f).unwrap();
        let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        let t = report.truncated.expect("torn tail reported");
        assert_eq!(t.bytes, rec.len() as u64 - 3);
        assert_eq!(t.offset, full_len - t.bytes);
        assert_eq!(report.corrupt_count, 0);
        assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
        assert_eq!(value(&mut s, "d").as_deref(), Some("4"));
        assert_eq!(value(&mut s, "e"), None);
        // Appending after the cut works and survives a reopen.
        put(&mut s, "f", "6", 6);
        s.sync().unwrap();
        drop(s);
        let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        assert!(report.truncated.is_none());
        assert_eq!(value(&mut s, "f").as_deref(), Some("6"));
        assert_eq!(s.highest_version(), Version(6));
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_unsynced_writes() {
        for seed in 1..50u64 {
            let vfs = MemVfs::new();
            let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
            put(&mut s, "base", "0", 1);
            s.sync().unwrap();
            for i in 0..5 {
                put(&mut s, &format!("k{i}"), "vvvvvvvvvv", 10 + i);
            }
            drop(s);
            vfs.crash(CrashMode::Torn { seed });
            let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
            assert_eq!(report.corrupt_count, 0);
            assert_eq!(value(&mut s, "base").as_deref(), Some("0"));
            // A prefix of k0..k4 survived: no gaps.
            let present: Vec<bool> = (0..5)
                .map(|i| value(&mut s, &format!("k{i}")).is_some())
                .collect();
            let n = present.iter().take_while(|p| **p).count();
            assert!(present[n..].iter().all(|p| !p), "seed {seed}: {present:?}");
        }
    }

    #[test]
    fn segments_roll_and_hints_are_used_on_reopen() {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        for i in 0..100u64 {
            put(&mut s, &format!("key{i}"), &"x".repeat(20), i + 1);
        }
        s.sync().unwrap();
        let segs = s.segment_files();
        assert!(
            segs.len() > 3,
            "expected several segments, got {}",
            segs.len()
        );
        assert!(
            segs[..segs.len() - 1].iter().all(|s| s.2),
            "all but the last sealed"
        );
        drop(s);
        let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        assert_eq!(report.segments_from_hints, segs.len() - 1);
        assert_eq!(report.segments_scanned, 1);
        assert_eq!(report.keys, 100);
        for i in 0..100u64 {
            assert_eq!(value(&mut s, &format!("key{i}")).unwrap(), "x".repeat(20));
        }
        assert_eq!(s.highest_version(), Version(100));
    }

    #[test]
    fn damaged_hint_falls_back_to_scanning() {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        for i in 0..60u64 {
            put(&mut s, &format!("key{i}"), &"y".repeat(20), i + 1);
        }
        s.sync().unwrap();
        let first = s.segment_files()[0].0;
        drop(s);
        let hint = dir().join(hint_name(first));
        vfs.flip_bit(&hint, 30, 3).unwrap();
        let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        assert_eq!(report.hints_rejected.len(), 1);
        assert_eq!(report.hints_rejected[0].0, first);
        assert_eq!(report.corrupt_count, 0);
        for i in 0..60u64 {
            assert!(value(&mut s, &format!("key{i}")).is_some());
        }
    }

    #[test]
    fn disk_full_refuses_the_write_and_loses_nothing() {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        put(&mut s, "a", "1", 1);
        s.sync().unwrap();
        vfs.set_space_max(Some(vfs.used_bytes() + 10));
        let r = s.apply(Write {
            key: b"b",
            value: Some(&[7u8; 100]),
            version: Version(2),
            expires_at_ms: 0,
        });
        assert!(matches!(r, Err(StoreError::WritesRefused(_))), "{r:?}");
        assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
        assert!(s.get(b"b").unwrap().is_none());
        vfs.set_space_max(None);
        put(&mut s, "c", "3", 3);
        s.sync().unwrap();
        drop(s);
        let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        assert_eq!(report.corrupt_count, 0);
        assert!(report.truncated.is_none());
        assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
        assert_eq!(value(&mut s, "c").as_deref(), Some("3"));
    }

    #[test]
    fn failed_fsync_is_sticky_and_reads_keep_working() {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        put(&mut s, "a", "1", 1);
        vfs.fail_next_syncs(1);
        assert!(matches!(s.sync(), Err(StoreError::WritesRefused(_))));
        assert!(s.writes_refused().is_some());
        // Later syncs would succeed on the device, but the store does not pretend.
        assert!(matches!(s.sync(), Err(StoreError::WritesRefused(_))));
        let r = s.apply(Write {
            key: b"b",
            value: Some(b"2"),
            version: Version(2),
            expires_at_ms: 0,
        });
        assert!(matches!(r, Err(StoreError::WritesRefused(_))));
        assert_eq!(value(&mut s, "a").as_deref(), Some("1"));
        let mut refused = 0;
        s.stats(&mut |n, v| {
            if n == "storage_writes_refused" {
                refused = v;
            }
        });
        assert_eq!(refused, 1);
    }

    #[test]
    fn compaction_reclaims_overwrites_and_drops_expired_and_old_tombstones() {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        let mut v = 0;
        for round in 0..5 {
            for i in 0..20 {
                v += 1;
                put(
                    &mut s,
                    &format!("k{i}"),
                    &format!("round{round}-{}", "z".repeat(10)),
                    v,
                );
            }
        }
        v += 1;
        s.apply(Write {
            key: b"k0",
            value: None,
            version: Version(v),
            expires_at_ms: 0,
        })
        .unwrap();
        v += 1;
        s.apply(Write {
            key: b"k1",
            value: Some(b"ttl"),
            version: Version(v),
            expires_at_ms: 5_000,
        })
        .unwrap();
        // Push everything into sealed segments.
        for i in 0..40 {
            v += 1;
            put(&mut s, &format!("fill{i}"), "f", v);
        }
        s.sync().unwrap();
        let stat = |s: &LogStore<MemVfs>, name: &str| {
            let mut out = 0;
            s.stats(&mut |n, x| {
                if n == name {
                    out = x;
                }
            });
            out
        };
        let dead_before = stat(&s, "storage_dead_bytes");
        assert!(dead_before > 0);
        s.set_tombstone_horizon(Version(v + 1));
        for _ in 0..10_000 {
            if !s.maintenance(10_000, 7).unwrap() {
                break;
            }
        }
        assert!(!s.compacting());
        assert!(stat(&s, "storage_compactions") > 0);
        assert!(stat(&s, "storage_bytes_reclaimed") > 0);
        assert!(stat(&s, "storage_dead_bytes") < dead_before);
        assert_eq!(s.get(b"k0").unwrap(), None, "old tombstone dropped");
        assert_eq!(s.get(b"k1").unwrap(), None, "expired value dropped");
        for i in 2..20 {
            assert_eq!(
                value(&mut s, &format!("k{i}")).unwrap(),
                format!("round4-{}", "z".repeat(10))
            );
        }
        drop(s);
        vfs.crash(CrashMode::DropUnsynced);
        let (mut s, report) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        assert_eq!(report.corrupt_count, 0);
        assert_eq!(s.get(b"k0").unwrap(), None);
        for i in 2..20 {
            assert_eq!(
                value(&mut s, &format!("k{i}")).unwrap(),
                format!("round4-{}", "z".repeat(10))
            );
        }
    }

    #[test]
    fn expired_values_alone_trigger_compaction() {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        for i in 0..200u64 {
            s.apply(Write {
                key: format!("ttl{i}").as_bytes(),
                value: Some(&[b't'; 40]),
                version: Version(i + 1),
                expires_at_ms: 10_000 + i,
            })
            .unwrap();
        }
        s.sync().unwrap();
        let stat = |s: &LogStore<MemVfs>, name: &str| {
            let mut out = 0;
            s.stats(&mut |n, x| {
                if n == name {
                    out = x;
                }
            });
            out
        };
        // Nothing is dead and nothing has expired yet: no work.
        assert!(!s.maintenance(9_000, 100).unwrap());
        assert_eq!(stat(&s, "storage_compactions"), 0);
        // Once expired, the values are reclaimed (kept as tombstones under the default
        // horizon, so an older write cannot come back).
        while s.maintenance(20_000, 100).unwrap() {}
        assert!(stat(&s, "storage_compactions") > 0);
        assert!(stat(&s, "storage_bytes_reclaimed") > 0);
        let r = s.get(b"ttl5").unwrap().unwrap();
        assert!(!r.is_live(20_000));
        assert_eq!(s.len(), 200);
        // With the horizon past them, they go entirely.
        s.set_tombstone_horizon(Version(1_000));
        while s.maintenance(20_000, 100).unwrap() {}
        assert!(s.len() < 200, "{} keys left", s.len());
    }

    #[test]
    fn tombstones_are_kept_below_the_default_horizon() {
        let vfs = MemVfs::new();
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), small()).unwrap();
        put(&mut s, "gone", "x", 1);
        s.apply(Write {
            key: b"gone",
            value: None,
            version: Version(2),
            expires_at_ms: 0,
        })
        .unwrap();
        for i in 0..100u64 {
            put(&mut s, &format!("k{}", i % 10), &"w".repeat(30), 3 + i);
        }
        for _ in 0..10_000 {
            if !s.maintenance(0, 50).unwrap() {
                break;
            }
        }
        let got = s.get(b"gone").unwrap().expect("tombstone kept");
        assert_eq!(got.value, None);
        assert_eq!(got.version, Version(2));
        // An older write is still refused.
        let r = s
            .apply(Write {
                key: b"gone",
                value: Some(b"old"),
                version: Version(1),
                expires_at_ms: 0,
            })
            .unwrap();
        assert_eq!(
            r,
            Applied::Stale {
                current: Version(2)
            }
        );
    }

    fn stat(s: &LogStore<MemVfs>, name: &str) -> u64 {
        let mut out = 0;
        s.stats(&mut |n, x| {
            if n == name {
                out = x;
            }
        });
        out
    }

    #[test]
    fn a_disk_full_of_overwritten_data_is_refused_before_enospc_and_recovers() {
        let vfs = MemVfs::new();
        vfs.set_capacity(Some(8 * 1024 * 1024));
        let cfg = LogConfig {
            segment_size_max: 512 * 1024,
            compaction_dead_bytes_min: 128 * 1024,
            ..LogConfig::default()
        };
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), cfg.clone()).unwrap();
        let value = "v".repeat(1000);
        let mut v = 0u64;
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        // Overwrite 100 keys, never running maintenance, until the reserve refuses a write.
        let refusal = loop {
            v += 1;
            assert!(v < 100_000, "never refused");
            let key = format!("k{}", v % 100);
            let val = format!("{v}{value}");
            let w = Write {
                key: key.as_bytes(),
                value: Some(val.as_bytes()),
                version: Version(v),
                expires_at_ms: 0,
            };
            match s.apply(w) {
                Ok(_) => {
                    acked.insert(key, v);
                }
                Err(StoreError::WritesRefused(why)) => break why,
                Err(e) => panic!("{e}"),
            }
        };
        assert!(refusal.contains("disk full"), "{refusal}");
        assert!(
            vfs.used_bytes() < 8 * 1024 * 1024 - 1024 * 1024,
            "the reserve is left free"
        );
        assert_eq!(stat(&s, "storage_writes_refused"), 1);
        assert_eq!(s.last_refusal(), Some(refusal.as_str()));
        s.sync().unwrap();
        // Compaction runs under pressure and frees the dead data.
        for _ in 0..1000 {
            if !s.maintenance(0, 64).unwrap() {
                break;
            }
        }
        assert!(stat(&s, "storage_compactions") > 0);
        assert!(
            vfs.used_bytes() < 2 * 1024 * 1024,
            "{} used: {:?} {:?}",
            vfs.used_bytes(),
            s.figures(0),
            vfs.list(dir()).unwrap()
        );
        v += 1;
        put(&mut s, "k1", "again", v);
        acked.insert("k1".into(), v);
        s.sync().unwrap();
        drop(s);
        vfs.crash(CrashMode::DropUnsynced);
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), cfg).unwrap();
        for (key, version) in &acked {
            let got = s
                .get(key.as_bytes())
                .unwrap()
                .expect("acknowledged write kept");
            assert_eq!(got.version, Version(*version), "{key}");
        }
    }

    #[test]
    fn a_forced_pass_reclaims_every_dead_byte_the_active_segment_included() {
        let vfs = MemVfs::new();
        let cfg = LogConfig {
            segment_size_max: 64 * 1024,
            compaction_dead_percent: 90,
            compaction_dead_bytes_min: 1 << 40,
            ..LogConfig::default()
        };
        let (mut s, _) = LogStore::open(vfs.clone(), dir(), cfg).unwrap();
        for v in 1..=400u64 {
            put(&mut s, &format!("k{}", v % 30), &"x".repeat(500), v);
        }
        s.sync().unwrap();
        // The thresholds are out of reach: nothing happens by itself.
        assert!(!s.maintenance(0, 1000).unwrap());
        assert!(stat(&s, "storage_dead_bytes") > 0);
        s.force_compaction();
        assert!(s.forcing());
        for _ in 0..1000 {
            s.maintenance(0, 100).unwrap();
            if !s.forcing() {
                break;
            }
        }
        assert!(!s.forcing(), "the pass ends");
        assert_eq!(stat(&s, "storage_dead_bytes"), 0);
        assert!(stat(&s, "storage_segments_reclaimed") > 0);
        for k in 0..30u64 {
            assert_eq!(value(&mut s, &format!("k{k}")).unwrap(), "x".repeat(500));
        }
    }
}
