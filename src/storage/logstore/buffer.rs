//! The append buffer and the read path: records appended during a turn wait in memory and
//! reach the active segment in one write ([`LogStore::flush_pending`]); a read is served from
//! that buffer, or from the segment's memory map, and only falls back to `pread` when a
//! segment could not be mapped. Neither path calls into the kernel per operation (issue 13).
//!
//! ```text
//!  active segment file                          pending (RAM, ≤ APPEND_BUFFER_BYTES_MAX
//!  | header | records written ... |             | record | record | ... |   or one record)
//!  0                          pending_at        pending_at ─────────────► seg.len
//! ```
//!
//! `Segment::len` counts the buffered records too, so offsets in the keydir, the hint and the
//! space accounting are the same whether a record is written yet or not.
//!
//! **A failed write undoes the buffer.** Part of it may have landed: the file is cut back to
//! `pending_at` and every buffered record is taken back out of the keydir, newest first, the
//! key pointing again at the record it replaced (kept in `pending_undo`), so the store reads
//! exactly as before those writes. The streamed hint of the active segment is dropped (its
//! entries named the lost records; recovery scans the segment instead). The failure is kept
//! for the next [`Store::flush`](crate::storage::Store::flush), which reports it so that the
//! shard turns the turn's held acknowledgements into STORAGE_ERROR. If the file cannot even
//! be cut back, its tail is unknown and the store refuses writes until restarted.

use super::names::hint_name;
use super::{LogStore, Segment};
use crate::limits::{APPEND_BUFFER_BYTES_MAX, PREFETCH_RECORD_BYTES_MAX};
use crate::storage::keydir::Loc;
use crate::storage::prefetch;
use crate::storage::record::{
    decode_record_header, FORMAT_VERSION, RECORD_HEADER_SIZE, RECORD_SIZE_MAX,
};
use crate::storage::vfs::Vfs;
use crate::storage::StoreError;
use std::io;

/// A buffered record, with what the keydir held for its key before it (to undo it).
pub(super) struct PendingRecord {
    /// Offset of the record in the active segment.
    pub(super) at: u64,
    /// The key's previous location, `None` if the key was new.
    pub(super) old: Option<Loc>,
}

impl<V: Vfs> LogStore<V> {
    /// How long a map of the active segment is: it is sealed before a record would take it
    /// past the segment size, and one record may be as large as the largest.
    pub(super) fn active_map_len(&self) -> u64 {
        self.config.segment_size_max + RECORD_SIZE_MAX as u64
    }

    /// Map segment `id` (`len` bytes: its length if sealed, [`Self::active_map_len`] if
    /// active). Without a map the segment is read with `pread`: slower, still correct.
    pub(super) fn map_segment(&mut self, id: u32, len: u64) {
        let seg = self.segments.get_mut(&id).expect("segment exists");
        match self.vfs.map(&seg.file, len) {
            Ok(m) => {
                seg.map = Some(m);
                seg.map_len = len;
            }
            Err(e) => {
                log::warn!("storage: segment {id} not memory-mapped ({e}); reading it with pread");
                seg.map = None;
                seg.map_len = 0;
            }
        }
    }

    /// Room for a record of `len` bytes in the buffer: write the buffer out first if it would
    /// grow past its limit.
    pub(super) fn make_room(&mut self, len: u64) -> Result<(), StoreError> {
        if !self.pending.is_empty()
            && self.pending.len() as u64 + len > APPEND_BUFFER_BYTES_MAX as u64
        {
            self.flush_pending()?;
        }
        Ok(())
    }

    /// Write the buffered records to the active segment in one call. On failure they are
    /// undone (see the module doc) and the failure is kept for the next `Store::flush`.
    pub(super) fn flush_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let active = self.active;
        let seg = self.segments.get_mut(&active).expect("active exists");
        debug_assert_eq!(seg.len, self.pending_at + self.pending.len() as u64);
        match self.vfs.append(&mut seg.file, &self.pending) {
            Ok(()) => {
                self.pending_at += self.pending.len() as u64;
                self.pending.clear();
                self.pending_undo.clear();
                // Under `--sync never` nothing else writes the segment out before the sync
                // that seals it, which then stalled the event loop ~200 ms for a whole
                // segment of dirty pages: start its writeback a step at a time instead.
                self.writeback_at = self.writeback_at.min(self.pending_at);
                let unwritten = self.pending_at - self.writeback_at;
                if unwritten >= crate::limits::WRITEBACK_STEP_BYTES {
                    self.vfs
                        .start_writeback(&seg.file, self.writeback_at, unwritten);
                    self.writeback_at = self.pending_at;
                }
                Ok(())
            }
            Err(e) => {
                let lost = self.pending_undo.len() as u64;
                let cut = self.vfs.truncate(&mut seg.file, self.pending_at);
                self.undo_pending();
                self.counters.writes_refused += lost;
                let err = match cut {
                    Ok(()) => self.io_refusal(e, false),
                    Err(e2) => {
                        let why =
                            format!("append failed ({e}) and truncating it back failed ({e2})");
                        log::error!("storage: {why}");
                        self.refused = Some(why.clone());
                        StoreError::WritesRefused(why)
                    }
                };
                let why = match &err {
                    StoreError::WritesRefused(why) => why.clone(),
                    other => other.to_string(),
                };
                log::warn!("storage: {lost} buffered writes not written: {why}");
                self.last_refusal = Some(why.clone());
                self.turn_error = Some(why);
                Err(err)
            }
        }
    }

    /// Take every buffered record back out of the keydir, newest first, and drop the buffer.
    fn undo_pending(&mut self) {
        let active = self.active;
        let undo = std::mem::take(&mut self.pending_undo);
        let pending = std::mem::take(&mut self.pending);
        for u in undo.iter().rev() {
            let rel = (u.at - self.pending_at) as usize;
            // Buffered records are this build's (the active segment is always of its format).
            let h = decode_record_header(&pending[rel..], FORMAT_VERSION)
                .expect("buffered records are whole");
            let key =
                &pending[rel + RECORD_HEADER_SIZE..rel + RECORD_HEADER_SIZE + h.key_len as usize];
            let Some(held) = self.keydir.get(key) else {
                continue;
            };
            if held.segment != active || held.offset as u64 != u.at {
                continue; // not this record's (cannot happen: newest first)
            }
            // Whoever noted the write (a cluster's anti-entropy tree) must forget it again.
            if self.damaged.len() < crate::limits::DAMAGED_KEYS_LISTED_MAX {
                self.damaged.push(key.to_vec());
            }
            self.account(&held, key.len(), false);
            match u.old {
                Some(old) if self.segments.contains_key(&old.segment) => {
                    self.keydir
                        .insert(key, old)
                        .expect("key present: no arena growth");
                    self.account(&old, key.len(), true);
                }
                _ => {
                    self.keydir.remove(key);
                }
            }
        }
        self.segments.get_mut(&active).expect("active exists").len = self.pending_at;
        self.pending = pending;
        self.pending.clear();
        self.pending_undo = undo;
        self.pending_undo.clear();
        if self.active_hint.take().is_some() {
            let tmp = self.path(&format!("{}.tmp", hint_name(active)));
            let _ = self.vfs.remove(&tmp); // best effort: recovery removes *.tmp
        }
    }

    /// Start loading the `len` bytes at `offset` of segment `id` (a hint: a segment or an
    /// offset that is not there is passed over).
    pub(super) fn prefetch_segment(&self, id: u32, offset: u64, len: usize) {
        if id == self.active && offset >= self.pending_at {
            if let Some(src) = self.pending.get((offset - self.pending_at) as usize..) {
                prefetch::lines(src.as_ptr(), len.min(src.len()), PREFETCH_RECORD_BYTES_MAX);
            }
        } else if let Some(map) = self.segments.get(&id).and_then(|s| s.map.as_ref()) {
            self.vfs.prefetch_map(map, offset, len);
        }
    }

    /// Fill `buf` with the bytes at `offset` of segment `id`: from the append buffer, the
    /// segment's map, or (unmapped) the file. `UnexpectedEof` means the bytes are not there
    /// (the file was cut short): the caller treats the record as damaged.
    pub(super) fn read_segment(&self, id: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let seg: &Segment<V::File, V::Map> = self
            .segments
            .get(&id)
            .ok_or_else(|| io::Error::other(format!("no segment {id}")))?;
        let end = offset + buf.len() as u64;
        if id == self.active && offset >= self.pending_at {
            let rel = (offset - self.pending_at) as usize;
            let src = self
                .pending
                .get(rel..rel + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            return Ok(());
        }
        match &seg.map {
            Some(map) if end <= seg.map_len => self.vfs.read_map(map, offset, buf),
            _ => self.vfs.read_at(&seg.file, offset, buf),
        }
    }
}
