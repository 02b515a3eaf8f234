//! The write path: appending a record to the active segment (through the append buffer,
//! `buffer.rs`), creating and rolling segments, streaming the active segment's hint, writing
//! files atomically, and turning I/O errors into refusals (sticky after a failed fsync).

use super::buffer::PendingRecord;
use super::names::{hint_name, segment_name};
use super::{record_len, LogStore, Segment};
use crate::limits::{HINT_WRITE_CHUNK_SIZE, KEY_SIZE_MAX, SEGMENT_ID_MAX, VALUE_SIZE_MAX};
use crate::storage::keydir::{expiry_s_of, Loc};
use crate::storage::record::{
    encode_record, HintBuilder, RecordHeader, SegmentHeader, SegmentKind, FORMAT_VERSION,
    HINT_ENTRY_HEADER_SIZE, SEGMENT_HEADER_SIZE,
};
use crate::storage::vfs::Vfs;
use crate::storage::{Applied, StoreError, Write};
use crate::version::Version;
use std::io;

pub(super) fn refused_error(why: &str) -> StoreError {
    StoreError::WritesRefused(why.to_string())
}

impl<V: Vfs> LogStore<V> {
    /// Write `bytes` as `name` durably: temp file, fsync, rename, fsync directory.
    pub(super) fn write_file_atomic(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
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
    pub(super) fn write_hint(&mut self, id: u32, hint: HintBuilder) {
        let len = self.segments[&id].len;
        let bytes = hint.finish(len);
        if let Err(e) = self.write_file_atomic(&hint_name(id), &bytes) {
            log::warn!("storage: could not write hint for segment {id}: {e}");
        }
    }

    /// The id for a new segment (log or compaction output), taken from `next_id` by the
    /// caller once the file exists. Refused past [`SEGMENT_ID_MAX`] (the keydir keeps 31
    /// bits of a segment id).
    pub(super) fn new_segment_id(&self) -> Result<u32, StoreError> {
        if self.next_id > SEGMENT_ID_MAX {
            let why = format!("segment ids exhausted (the highest is {SEGMENT_ID_MAX})");
            log::error!("storage: {why}");
            return Err(refused_error(&why));
        }
        Ok(self.next_id)
    }

    /// Create a new, empty, durable log segment (of this build's format), mapped to become
    /// the active one; returns its id.
    pub(super) fn create_log_segment(&mut self) -> Result<u32, StoreError> {
        let id = self.new_segment_id()?;
        let header = SegmentHeader {
            format: FORMAT_VERSION,
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
                map: None,
                map_len: 0,
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
        self.map_segment(id, self.active_map_len());
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
    pub(super) fn io_refusal(&mut self, e: io::Error, sticky: bool) -> StoreError {
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

    /// Seal the active segment and start a new one. The old segment keeps its map (it covers
    /// more than the segment's final length).
    pub(super) fn roll(&mut self) -> Result<(), StoreError> {
        self.flush_pending()?;
        let old = self.active;
        let seg = self.segments.get_mut(&old).expect("active exists");
        if let Err(e) = self.vfs.sync(&mut seg.file) {
            return Err(self.io_refusal(e, true));
        }
        let new = self.create_log_segment()?;
        self.segments.get_mut(&old).expect("active exists").sealed = true;
        self.active = new;
        self.pending_at = self.segments[&new].len;
        self.writeback_at = self.pending_at;
        if let Some((hint, file)) = self.active_hint.take() {
            if let Err(e) = self.seal_hint(old, hint, file) {
                log::warn!("storage: could not write hint for segment {old}: {e}");
                let _ = self
                    .vfs
                    .remove(&self.path(&format!("{}.tmp", hint_name(old))));
            }
        }
        self.start_active_hint(new, HintBuilder::new(new, FORMAT_VERSION));
        Ok(())
    }

    /// Start streaming the active segment's hint to its temporary file.
    pub(super) fn start_active_hint(&mut self, id: u32, mut hint: HintBuilder) {
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

    /// `apply` without the refusal count.
    pub(super) fn apply_write(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
        if let Some(why) = &self.refused {
            return Err(refused_error(why));
        }
        if w.key.len() > KEY_SIZE_MAX || w.value.is_some_and(|v| v.len() > VALUE_SIZE_MAX) {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "key or value over the size limit",
            )));
        }
        if w.causal && w.value.is_none() {
            return Err(crate::storage::causal_tombstone_error());
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
        self.make_room(len)?;
        let active = self.active;
        let at = self.segments[&active].len;
        let loc = Loc {
            version: w.version.0,
            segment: active,
            offset: at as u32,
            value_len,
            expires_at_s: expiry_s_of(w.expires_at_ms),
            causal: w.causal,
        };
        let old = match self.keydir.insert(w.key, loc) {
            Ok(old) => old,
            Err(_) => return Err(refused_error("keydir key arena full")),
        };
        // Buffered: the turn's records reach the file together at the next flush.
        encode_record(
            &mut self.pending,
            w.version.0,
            w.expires_at_ms,
            w.key,
            w.value,
            w.causal,
        );
        self.pending_undo.push(PendingRecord { at, old });
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
            causal: w.causal,
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
