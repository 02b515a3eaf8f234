//! Reading a segment's records in order ([`Scanner`]), for recovery and compaction: a bad
//! record is reported with its offset and scanning can resume at the next valid one.

use crate::limits::SCAN_CHUNK_SIZE;
use crate::storage::record::{
    decode_record, decode_record_header, RecordError, RecordHeader, RECORD_HEADER_SIZE,
};
use crate::storage::vfs::Vfs;
use std::io;

/// Reads a segment's records in order through a buffer.
pub(super) struct Scanner {
    /// The segment's format (its records are read by that format's rules).
    format: u16,
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

pub(super) enum Scan {
    End,
    Record(RecordHeader, u64),
    Bad(u64, RecordError),
}

impl Scanner {
    /// A scanner of a segment of format `format` and `file_len` bytes, from offset `start`.
    pub(super) fn new(start: u64, file_len: u64, format: u16) -> Scanner {
        Scanner {
            format,
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

    pub(super) fn next<V: Vfs>(&mut self, vfs: &V, file: &V::File) -> io::Result<Scan> {
        if self.offset >= self.file_len {
            return Ok(Scan::End);
        }
        self.fill(vfs, file, RECORD_HEADER_SIZE)?;
        let h = match decode_record_header(self.avail(), self.format) {
            Ok(h) => h,
            Err(e) => return Ok(Scan::Bad(self.offset, e)),
        };
        self.fill(vfs, file, h.record_len())?;
        match decode_record(self.avail(), self.format) {
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
    pub(super) fn key(&self) -> &[u8] {
        let h = self
            .last_header
            .expect("key() follows a record from next()");
        let at = self.last + RECORD_HEADER_SIZE;
        &self.buf[at..at + h.key_len as usize]
    }

    /// Value of the record last returned by `next`.
    pub(super) fn value(&self) -> &[u8] {
        let h = self
            .last_header
            .expect("value() follows a record from next()");
        let at = self.last + RECORD_HEADER_SIZE + h.key_len as usize;
        &self.buf[at..at + h.value_len as usize]
    }

    /// After a bad record: move to the next offset where a valid record starts. `false` if
    /// none does before the end of the file.
    pub(super) fn resync<V: Vfs>(&mut self, vfs: &V, file: &V::File) -> io::Result<bool> {
        let mut at = self.offset + 1;
        // Bounded by the file length.
        while at + RECORD_HEADER_SIZE as u64 <= self.file_len {
            self.offset = at;
            self.fill(vfs, file, RECORD_HEADER_SIZE)?;
            if let Ok(h) = decode_record_header(self.avail(), self.format) {
                self.fill(vfs, file, h.record_len())?;
                if decode_record(self.avail(), self.format).is_ok() {
                    return Ok(true);
                }
            }
            at += 1;
        }
        self.offset = self.file_len;
        Ok(false)
    }
}
