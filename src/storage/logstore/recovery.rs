//! Opening a store: leftovers of interrupted writes, an interrupted compaction's manifest,
//! hint files, scanning segments (torn tails, corrupt records) and the [`RecoveryReport`].
//! The steps are described in the parent module's doc ("Recovery").

use super::names::{hint_name, parse_id, segment_name, MANIFEST_NAME};
use super::scan::{Scan, Scanner};
use super::{Counters, LogConfig, LogStore, Segment};
use crate::limits::{RECOVERY_REPORT_CORRUPT_LISTED_MAX, SEGMENT_ID_MAX, SEGMENT_SIZE_MAX_LIMIT};
use crate::storage::keydir::{expiry_s_of, KeyDir, Loc, Upsert};
use crate::storage::policy::Pressure;
use crate::storage::record::{
    decode_manifest, Hint, HintBuilder, RecordHeader, SegmentHeader, SegmentKind, FORMAT_VERSION,
    SEGMENT_HEADER_SIZE,
};
use crate::storage::vfs::Vfs;
use crate::storage::StoreError;
use crate::version::Version;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

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

/// Whether a record (`version`, tombstone?) met later in recovery beats the one the keydir
/// holds. A newer version wins. On a tie (the same write, copied by compaction or repaired
/// after damage) the later copy wins, except that a value never replaces a tombstone of the
/// same version (an expired value turned into a tombstone by compaction).
fn beats(version: u64, tombstone: bool, held: &Loc) -> bool {
    version > held.version || (version == held.version && (tombstone || held.value_len.is_some()))
}

impl<V: Vfs> LogStore<V> {
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
            pending: Vec::new(),
            pending_at: 0,
            writeback_at: 0,
            pending_undo: Vec::new(),
            turn_error: None,
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

        let mut seg_ids: Vec<u32> = names.iter().filter_map(|n| parse_id(n, ".seg")).collect();
        seg_ids.retain(|&id| {
            // No store writes such an id (see SEGMENT_ID_MAX); the keydir could not hold it.
            let ok = id <= SEGMENT_ID_MAX;
            if !ok {
                report.corrupt(
                    id,
                    0,
                    format!("segment id above {SEGMENT_ID_MAX}: not loaded"),
                );
            }
            ok
        });
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
                    map: None,
                    map_len: 0,
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
            let mut hint = HintBuilder::new(id, header.format);
            self.scan_segment(id, is_newest, &mut hint, &mut report)?;
            // Writes go on in the newest log segment if it has room, and only if it is of this
            // build's format: a segment of an older one is sealed (nothing is ever appended to
            // it; see record.rs, "Format versions") and writes go to a new segment.
            if is_newest
                && self.segments[&id].len < self.config.segment_size_max
                && header.format == FORMAT_VERSION
            {
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
                self.pending_at = seg.len;
                self.start_active_hint(id, hint);
            }
            None => {
                let id = self.create_log_segment()?;
                self.active = id;
                self.pending_at = self.segments[&id].len;
                self.start_active_hint(id, HintBuilder::new(id, FORMAT_VERSION));
            }
        }
        // 5. Map every segment for reads (the new active one was mapped when created).
        let unmapped: Vec<(u32, u64)> = self
            .segments
            .iter()
            .filter(|(_, s)| s.map.is_none())
            .map(|(id, s)| (*id, s.len))
            .collect();
        for (id, len) in unmapped {
            let len = if id == self.active {
                self.active_map_len()
            } else {
                len
            };
            self.map_segment(id, len);
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
        let format = self.segments[&id].header.format;
        if hint.format != format {
            return Err(format!(
                "hint of format {}, segment of format {format}",
                hint.format
            ));
        }
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
        let format = self.segments[&id].header.format;
        let mut sc = Scanner::new(SEGMENT_HEADER_SIZE as u64, len, format);
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
            causal: h.causal,
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
}
