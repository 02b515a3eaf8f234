//! On-disk layouts of the log store: segment header, record, hint file, compaction manifest.
//! All integers little-endian. Every file header carries its format version: new files are
//! written with [`FORMAT_VERSION`] (2); files of formats [`FORMAT_VERSION_OLDEST_READ`] (1) up
//! to it are read.
//!
//! ## Format versions
//!
//! ```text
//!  1  the first format.
//!  2  adds the record flag CAUSAL (flags bit 1): the value is an encoded causal state
//!     (src/causal: a dotted version vector and its siblings, `--conflicts siblings`), not a
//!     client value. The store keeps and returns the flag; it never interprets the value.
//!     The layouts are otherwise those of format 1.
//! ```
//!
//! **A segment's format is its header's**, for as long as the segment exists: its records are
//! read by that format's rules (a record of a format-1 segment with flags bit 1 set is a bad
//! header: damage, reported and never served), and nothing is ever appended to a segment of
//! an older format (recovery seals a format-1 log segment instead of reopening it for writes;
//! writes go to a new format-2 segment). Compaction copies the live records of its inputs,
//! whatever their format, into format-2 outputs, so old segments disappear as they are
//! compacted. A hint file has the format of the segment it indexes (its entries' flags follow
//! the same rule) and is used only if the two agree. A compaction manifest holds only segment
//! ids: both formats read alike.
//!
//! Segment file `NNNNNNNNNN.seg` (a compaction output is written as `NNNNNNNNNN.compact` and
//! renamed once complete): a header, then records back to back.
//!
//! ```text
//! segment header (24 bytes)
//!  0      4        6      8          12           16           20      24
//!  +------+--------+------+----------+------------+------------+-------+
//!  |"DKVS"| format | kind | id u32   | origin_lo  | origin_hi  | crc32c|  crc over bytes 0..20
//!  |      |  u16   | u16  |          |  u32       |  u32       |       |
//!  +------+--------+------+----------+------------+------------+-------+
//!  kind: 0 = log segment (written by writes), 1 = compaction output.
//!  origin_lo..=origin_hi: the ids of the log segments whose writes this segment holds
//!  (a log segment: its own id; a compaction output: the span of its inputs' origins).
//!
//! record (27-byte header + key + value)
//!  0      4            12               20      21       23          27
//!  +------+------------+----------------+-------+--------+-----------+-----+-------+
//!  |crc32c| version u64| expires_at_ms  | flags | key_len| value_len | key | value |
//!  |      |            |  u64 (0=never) |  u8   |  u16   |   u32     |     |       |
//!  +------+------------+----------------+-------+--------+-----------+-----+-------+
//!  crc32c covers bytes 4.. to the end of the value.
//!  flags bit 0 = TOMBSTONE: a delete (value_len 0).
//!  flags bit 1 = CAUSAL (format 2 only): the value is an encoded causal state (siblings
//!        mode), not a client value. Never with TOMBSTONE (a causal record always has a
//!        value, possibly empty).
//!  Any other bit, or CAUSAL in a format-1 segment, makes the header bad (damaged data).
//! ```
//!
//! Hint file `NNNNNNNNNN.hint`: an index of every valid record of a sealed segment, so start-up
//! need not read the values. The active segment's hint is streamed to `.hint.tmp` as records
//! are appended (so it costs no RAM), completed with its trailer when the segment is sealed,
//! synced and renamed. Counts and lengths are in the trailer for that reason.
//!
//! ```text
//! hint header (12 bytes)
//!  0      4        6          8          12
//!  +------+--------+----------+----------+
//!  |"DKVH"| format | reserved | segment  |
//!  |      |  u16   |  u16     | id u32   |
//!  +------+--------+----------+----------+
//! hint entry (27 bytes + key), one per record
//!  0            8                16        20          24      25       27
//!  +------------+----------------+---------+-----------+-------+--------+-----+
//!  | version u64| expires_at_ms  | offset  | value_len | flags | key_len| key |
//!  |            |  u64           |  u32    |   u32     |  u8   |  u16   |     |
//!  +------------+----------------+---------+-----------+-------+--------+-----+
//!  flags: the record's flags (TOMBSTONE, CAUSAL), under the same rules as in the record.
//! hint trailer (16 bytes)
//!  0                  8          12       16
//!  +------------------+----------+--------+
//!  | segment_len u64  | count u32| crc32c |  crc over every byte of the file before it
//!  | (bytes covered)  |          |        |
//!  +------------------+----------+--------+
//! ```
//!
//! Compaction manifest `COMPACT`: the commit point of a compaction. Once it is durable, its
//! input segments are superseded and recovery deletes any that remain.
//!
//! ```text
//!  0      4        6         8         12                 12+4n
//!  +------+--------+---------+---------+------------------+--------+
//!  |"DKVC"| format | reserved| n u32   | input ids u32 × n| crc32c |  crc over all before it
//!  +------+--------+---------+---------+------------------+--------+
//! ```

use crate::limits::{KEY_SIZE_MAX, VALUE_SIZE_MAX};

/// Version of the on-disk format, written in the header of every new file (see the module doc,
/// "Format versions").
pub const FORMAT_VERSION: u16 = 2;
/// Oldest format version this build reads (segments, hints and manifests of formats
/// `FORMAT_VERSION_OLDEST_READ..=FORMAT_VERSION` open and serve).
pub const FORMAT_VERSION_OLDEST_READ: u16 = 1;
/// Magic of a segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"DKVS";
/// Magic of a hint file.
pub const HINT_MAGIC: [u8; 4] = *b"DKVH";
/// Magic of a compaction manifest.
pub const MANIFEST_MAGIC: [u8; 4] = *b"DKVC";
/// Bytes of a segment header.
pub const SEGMENT_HEADER_SIZE: usize = 24;
/// Bytes of a record header (before key and value).
pub const RECORD_HEADER_SIZE: usize = 27;
/// Bytes of a hint header.
pub const HINT_HEADER_SIZE: usize = 12;
/// Bytes of a hint trailer.
pub const HINT_TRAILER_SIZE: usize = 16;
/// Bytes of a hint entry before its key.
pub const HINT_ENTRY_HEADER_SIZE: usize = 27;
/// Record flag: the record is a tombstone.
pub const FLAG_TOMBSTONE: u8 = 1;
/// Record flag (format 2 on): the value is an encoded causal state (src/causal, siblings
/// mode), not a client value; the store does not interpret it. Only in format-2 files; never
/// with [`FLAG_TOMBSTONE`].
pub const FLAG_CAUSAL: u8 = 2;
/// Largest record.
pub const RECORD_SIZE_MAX: usize = RECORD_HEADER_SIZE + KEY_SIZE_MAX + VALUE_SIZE_MAX;

/// The record flags a file of format `format` may hold (none for a format this build does not
/// read: such files are refused by their header before any record is read).
pub fn flags_known(format: u16) -> u8 {
    match format {
        1 => FLAG_TOMBSTONE,
        2 => FLAG_TOMBSTONE | FLAG_CAUSAL,
        _ => 0,
    }
}

/// Whether this build reads files of format `format`.
pub fn format_readable(format: u16) -> bool {
    (FORMAT_VERSION_OLDEST_READ..=FORMAT_VERSION).contains(&format)
}

/// Check a flags byte read from a file of format `format`: `Ok((tombstone, causal))`.
fn check_flags(flags: u8, format: u16) -> Result<(bool, bool), String> {
    if flags & !flags_known(format) != 0 {
        return Err(format!("unknown flags {flags:#x} in format {format}"));
    }
    let (tombstone, causal) = (flags & FLAG_TOMBSTONE != 0, flags & FLAG_CAUSAL != 0);
    if tombstone && causal {
        return Err(format!("flags {flags:#x}: a tombstone cannot be causal"));
    }
    Ok((tombstone, causal))
}

/// The flags byte of a record.
fn flags_of(tombstone: bool, causal: bool) -> u8 {
    (if tombstone { FLAG_TOMBSTONE } else { 0 }) | (if causal { FLAG_CAUSAL } else { 0 })
}

/// What kind of writer made a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Appended to by writes (the active segment, once).
    Log,
    /// Written by compaction.
    Compacted,
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The format its records are written in (new segments: [`FORMAT_VERSION`]); read back
    /// from the header, it decides how the segment's records are read.
    pub format: u16,
    /// Log or compaction output.
    pub kind: SegmentKind,
    /// The segment's id (also in its file name).
    pub id: u32,
    /// Lowest log-segment id whose writes it holds.
    pub origin_lo: u32,
    /// Highest log-segment id whose writes it holds.
    pub origin_hi: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("slice of 4"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("slice of 8"))
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_SIZE] {
        let mut b = [0u8; SEGMENT_HEADER_SIZE];
        b[0..4].copy_from_slice(&SEGMENT_MAGIC);
        b[4..6].copy_from_slice(&self.format.to_le_bytes());
        let kind: u16 = match self.kind {
            SegmentKind::Log => 0,
            SegmentKind::Compacted => 1,
        };
        b[6..8].copy_from_slice(&kind.to_le_bytes());
        b[8..12].copy_from_slice(&self.id.to_le_bytes());
        b[12..16].copy_from_slice(&self.origin_lo.to_le_bytes());
        b[16..20].copy_from_slice(&self.origin_hi.to_le_bytes());
        let crc = crc32c::crc32c(&b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check a header.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < SEGMENT_HEADER_SIZE {
            return Err(format!("segment header is {} bytes, short", b.len()));
        }
        if b[0..4] != SEGMENT_MAGIC {
            return Err("not a segment file (bad magic)".into());
        }
        if crc32c::crc32c(&b[..20]) != u32_at(b, 20) {
            return Err("segment header checksum mismatch".into());
        }
        let format = u16_at(b, 4);
        if !format_readable(format) {
            return Err(format!(
                "segment format {format}, this build reads \
                 {FORMAT_VERSION_OLDEST_READ} to {FORMAT_VERSION}"
            ));
        }
        let kind = match u16_at(b, 6) {
            0 => SegmentKind::Log,
            1 => SegmentKind::Compacted,
            k => return Err(format!("unknown segment kind {k}")),
        };
        Ok(SegmentHeader {
            format,
            kind,
            id: u32_at(b, 8),
            origin_lo: u32_at(b, 12),
            origin_hi: u32_at(b, 16),
        })
    }
}

/// A record's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The write's version.
    pub version: u64,
    /// Absolute expiry in ms; 0 = never.
    pub expires_at_ms: u64,
    /// Whether the record is a tombstone.
    pub tombstone: bool,
    /// Whether the value is an encoded causal state ([`FLAG_CAUSAL`]; never with
    /// `tombstone`).
    pub causal: bool,
    /// Key bytes.
    pub key_len: u16,
    /// Value bytes (0 for a tombstone).
    pub value_len: u32,
}

impl RecordHeader {
    /// Bytes of the whole record.
    pub fn record_len(&self) -> usize {
        RECORD_HEADER_SIZE + self.key_len as usize + self.value_len as usize
    }
}

/// Append the encoding of one record (format [`FORMAT_VERSION`]) to `out`. `causal`: the value
/// is an encoded causal state ([`FLAG_CAUSAL`]); a tombstone (`value` `None`) is never causal.
pub fn encode_record(
    out: &mut Vec<u8>,
    version: u64,
    expires_at_ms: u64,
    key: &[u8],
    value: Option<&[u8]>,
    causal: bool,
) {
    assert!(key.len() <= KEY_SIZE_MAX, "key size checked by the caller");
    assert!(
        !(causal && value.is_none()),
        "a tombstone cannot be causal: checked by the caller"
    );
    let v = value.unwrap_or(&[]);
    assert!(
        v.len() <= VALUE_SIZE_MAX,
        "value size checked by the caller"
    );
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
    out.push(flags_of(value.is_none(), causal));
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(v);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes are not a valid record.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes than the header, or than the lengths it declares (`need` bytes in all).
    Short {
        /// Bytes the record needs, when the header could be read.
        need: Option<usize>,
    },
    /// The header is impossible (flags unknown to the file's format, lengths over the
    /// limits).
    BadHeader(String),
    /// The checksum does not match.
    Checksum,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Short { need: Some(n) } => write!(f, "record cut short ({n} bytes)"),
            RecordError::Short { need: None } => write!(f, "record header cut short"),
            RecordError::BadHeader(why) => write!(f, "bad record header: {why}"),
            RecordError::Checksum => write!(f, "record checksum mismatch"),
        }
    }
}

/// Parse only the header fields of a record of a segment of format `format` (not checked
/// against the checksum yet).
pub fn decode_record_header(b: &[u8], format: u16) -> Result<RecordHeader, RecordError> {
    if b.len() < RECORD_HEADER_SIZE {
        return Err(RecordError::Short { need: None });
    }
    let (tombstone, causal) = check_flags(b[20], format).map_err(RecordError::BadHeader)?;
    let h = RecordHeader {
        version: u64_at(b, 4),
        expires_at_ms: u64_at(b, 12),
        tombstone,
        causal,
        key_len: u16_at(b, 21),
        value_len: u32_at(b, 23),
    };
    if h.key_len as usize > KEY_SIZE_MAX {
        return Err(RecordError::BadHeader(format!("key length {}", h.key_len)));
    }
    if h.value_len as usize > VALUE_SIZE_MAX || (h.tombstone && h.value_len != 0) {
        return Err(RecordError::BadHeader(format!(
            "value length {}",
            h.value_len
        )));
    }
    Ok(h)
}

/// A record decoded from a buffer, borrowing its key and value.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Header fields.
    pub header: RecordHeader,
    /// The key.
    pub key: &'a [u8],
    /// The value (empty for a tombstone).
    pub value: &'a [u8],
}

/// Decode and check the record at the start of `b`, from a segment of format `format`.
pub fn decode_record(b: &[u8], format: u16) -> Result<RecordRef<'_>, RecordError> {
    let h = decode_record_header(b, format)?;
    let len = h.record_len();
    if b.len() < len {
        return Err(RecordError::Short { need: Some(len) });
    }
    if crc32c::crc32c(&b[4..len]) != u32_at(b, 0) {
        return Err(RecordError::Checksum);
    }
    let key_end = RECORD_HEADER_SIZE + h.key_len as usize;
    Ok(RecordRef {
        header: h,
        key: &b[RECORD_HEADER_SIZE..key_end],
        value: &b[key_end..len],
    })
}

/// One entry of a hint file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintEntry<'a> {
    /// The record's header fields.
    pub header: RecordHeader,
    /// Offset of the record in its segment.
    pub offset: u32,
    /// The key.
    pub key: &'a [u8],
}

/// Builds a hint file entry by entry. The bytes built so far can be taken out (streamed to a
/// file) at any time with [`HintBuilder::take_pending`]; [`HintBuilder::finish`] gives the rest
/// with the trailer.
#[derive(Debug)]
pub struct HintBuilder {
    /// The format of the segment it indexes (and of the hint).
    format: u16,
    /// Bytes not yet taken.
    buf: Vec<u8>,
    /// CRC of the bytes already taken.
    crc: u32,
    count: u32,
}

impl HintBuilder {
    /// A builder for the hint of segment `segment_id`, of format `format` (a hint has its
    /// segment's format).
    pub fn new(segment_id: u32, format: u16) -> HintBuilder {
        assert!(
            format_readable(format),
            "segment formats are checked on read"
        );
        let mut buf = Vec::with_capacity(HINT_HEADER_SIZE);
        buf.extend_from_slice(&HINT_MAGIC);
        buf.extend_from_slice(&format.to_le_bytes());
        buf.extend_from_slice(&0u16.to_le_bytes());
        buf.extend_from_slice(&segment_id.to_le_bytes());
        HintBuilder {
            format,
            buf,
            crc: 0,
            count: 0,
        }
    }

    /// Record that the segment holds `header`/`key` at `offset`.
    pub fn add(&mut self, header: &RecordHeader, offset: u32, key: &[u8]) {
        assert!(
            !header.causal || flags_known(self.format) & FLAG_CAUSAL != 0,
            "a causal record in a format-{} segment",
            self.format
        );
        self.buf.extend_from_slice(&header.version.to_le_bytes());
        self.buf
            .extend_from_slice(&header.expires_at_ms.to_le_bytes());
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf.extend_from_slice(&header.value_len.to_le_bytes());
        self.buf.push(flags_of(header.tombstone, header.causal));
        self.buf.extend_from_slice(&header.key_len.to_le_bytes());
        self.buf.extend_from_slice(key);
        self.count += 1;
    }

    /// Entries added so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes built and not yet taken.
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// Hand the bytes built so far to `sink` (which appends them to the hint file). They are
    /// consumed only if `sink` succeeds.
    pub fn take_pending<E>(&mut self, sink: impl FnOnce(&[u8]) -> Result<(), E>) -> Result<(), E> {
        sink(&self.buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.buf.clear();
        Ok(())
    }

    /// The remaining bytes of the file (all of it if nothing was taken), trailer included,
    /// for a segment of `segment_len` bytes.
    pub fn finish(mut self, segment_len: u64) -> Vec<u8> {
        self.buf.extend_from_slice(&segment_len.to_le_bytes());
        self.buf.extend_from_slice(&self.count.to_le_bytes());
        let crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// A checked hint file.
#[derive(Debug)]
pub struct Hint<'a> {
    /// Its format (that of the segment it indexes).
    pub format: u16,
    /// The segment it indexes.
    pub segment_id: u32,
    /// The segment length it covers (must equal the file's).
    pub segment_len: u64,
    entries: &'a [u8],
    count: u32,
}

impl<'a> Hint<'a> {
    /// Check a whole hint file (magic, format, checksum, every entry's bounds).
    pub fn decode(b: &'a [u8]) -> Result<Hint<'a>, String> {
        if b.len() < HINT_HEADER_SIZE + HINT_TRAILER_SIZE {
            return Err("hint file too short".into());
        }
        let body = &b[..b.len() - 4];
        if crc32c::crc32c(body) != u32_at(b, b.len() - 4) {
            return Err("hint checksum mismatch".into());
        }
        let trailer = b.len() - HINT_TRAILER_SIZE;
        if b[0..4] != HINT_MAGIC {
            return Err("not a hint file (bad magic)".into());
        }
        let format = u16_at(b, 4);
        if !format_readable(format) {
            return Err(format!("hint format {format}"));
        }
        let hint = Hint {
            format,
            segment_id: u32_at(b, 8),
            segment_len: u64_at(b, trailer),
            entries: &b[HINT_HEADER_SIZE..trailer],
            count: u32_at(b, trailer + 8),
        };
        // Walk once so that iteration below cannot meet bad bounds.
        let mut n = 0u32;
        for e in hint.iter() {
            e?;
            n += 1;
        }
        if n != hint.count {
            return Err(format!("hint declares {} entries, holds {n}", hint.count));
        }
        Ok(hint)
    }

    /// The entries, in segment order.
    pub fn iter(&self) -> HintIter<'a> {
        HintIter {
            rest: self.entries,
            format: self.format,
        }
    }
}

/// Iterator over the entries of a [`Hint`].
pub struct HintIter<'a> {
    rest: &'a [u8],
    format: u16,
}

impl<'a> Iterator for HintIter<'a> {
    type Item = Result<HintEntry<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let b = self.rest;
        if b.len() < HINT_ENTRY_HEADER_SIZE {
            self.rest = &[];
            return Some(Err("hint entry cut short".into()));
        }
        let flags = check_flags(b[24], self.format);
        let key_len = u16_at(b, 25);
        let value_len = u32_at(b, 20);
        let end = HINT_ENTRY_HEADER_SIZE + key_len as usize;
        let Ok((tombstone, causal)) = flags else {
            self.rest = &[];
            return Some(Err("bad hint entry flags".into()));
        };
        if key_len as usize > KEY_SIZE_MAX || value_len as usize > VALUE_SIZE_MAX || b.len() < end {
            self.rest = &[];
            return Some(Err("bad hint entry".into()));
        }
        self.rest = &b[end..];
        Some(Ok(HintEntry {
            header: RecordHeader {
                version: u64_at(b, 0),
                expires_at_ms: u64_at(b, 8),
                tombstone,
                causal,
                key_len,
                value_len,
            },
            offset: u32_at(b, 16),
            key: &b[HINT_ENTRY_HEADER_SIZE..end],
        }))
    }
}

/// Encode a compaction manifest naming the input segments it supersedes.
pub fn encode_manifest(inputs: &[u32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + 4 * inputs.len());
    b.extend_from_slice(&MANIFEST_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(inputs.len() as u32).to_le_bytes());
    for id in inputs {
        b.extend_from_slice(&id.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decode a compaction manifest into its input ids.
pub fn decode_manifest(b: &[u8]) -> Result<Vec<u32>, String> {
    if b.len() < 16 {
        return Err("manifest too short".into());
    }
    let body = &b[..b.len() - 4];
    if crc32c::crc32c(body) != u32_at(b, b.len() - 4) || b[0..4] != MANIFEST_MAGIC {
        return Err("manifest checksum or magic mismatch".into());
    }
    if !format_readable(u16_at(b, 4)) {
        return Err(format!("manifest format {}", u16_at(b, 4)));
    }
    let n = u32_at(b, 8) as usize;
    if body.len() != 12 + 4 * n {
        return Err("manifest length mismatch".into());
    }
    Ok((0..n).map(|i| u32_at(body, 12 + 4 * i)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes() {
        let h = SegmentHeader {
            format: FORMAT_VERSION,
            kind: SegmentKind::Log,
            id: 1,
            origin_lo: 1,
            origin_hi: 1,
        };
        assert_eq!(h.encode().len(), SEGMENT_HEADER_SIZE);
        let mut out = Vec::new();
        encode_record(&mut out, 1, 0, b"", Some(b""), false);
        assert_eq!(out.len(), RECORD_HEADER_SIZE);
        let mut hb = HintBuilder::new(1, FORMAT_VERSION);
        hb.add(&decode_record_header(&out, FORMAT_VERSION).unwrap(), 0, b"");
        assert_eq!(
            hb.finish(0).len(),
            HINT_HEADER_SIZE + HINT_ENTRY_HEADER_SIZE + HINT_TRAILER_SIZE
        );
        assert_eq!(encode_manifest(&[1, 2]).len(), 12 + 8 + 4);
    }

    #[test]
    fn record_round_trip_and_every_bit_flip_is_caught() {
        let mut out = Vec::new();
        encode_record(&mut out, 42, 1000, b"key", Some(b"value"), false);
        let r = decode_record(&out, FORMAT_VERSION).unwrap();
        assert_eq!(r.key, b"key");
        assert_eq!(r.value, b"value");
        assert_eq!(r.header.version, 42);
        assert_eq!(r.header.expires_at_ms, 1000);
        assert!(!r.header.tombstone);
        assert_eq!(r.header.record_len(), out.len());
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&bad, FORMAT_VERSION).is_err(),
                "flip of bit {bit} not caught"
            );
        }
        for cut in 0..out.len() {
            assert!(matches!(
                decode_record(&out[..cut], FORMAT_VERSION),
                Err(RecordError::Short { .. })
            ));
        }
    }

    #[test]
    fn tombstone_round_trip() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, 0, b"k", None, false);
        let r = decode_record(&out, FORMAT_VERSION).unwrap();
        assert!(r.header.tombstone);
        assert!(r.value.is_empty());
    }

    #[test]
    fn oversized_lengths_are_bad_headers_not_panics() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, 0, b"k", Some(b"v"), false);
        out[23..27].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_record(&out, FORMAT_VERSION),
            Err(RecordError::BadHeader(_))
        ));
        assert!(decode_record(&[0u8; RECORD_HEADER_SIZE], FORMAT_VERSION).is_err());
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = SegmentHeader {
            format: FORMAT_VERSION,
            kind: SegmentKind::Compacted,
            id: 9,
            origin_lo: 2,
            origin_hi: 5,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[9] ^= 1;
        assert!(SegmentHeader::decode(&bad).is_err());
        assert!(SegmentHeader::decode(&b[..10]).is_err());
    }

    #[test]
    fn hint_round_trip_and_damage() {
        let mut hb = HintBuilder::new(3, FORMAT_VERSION);
        let h1 = RecordHeader {
            version: 5,
            expires_at_ms: 9,
            tombstone: false,
            causal: true,
            key_len: 2,
            value_len: 10,
        };
        let h2 = RecordHeader {
            version: 6,
            expires_at_ms: 0,
            tombstone: true,
            causal: false,
            key_len: 1,
            value_len: 0,
        };
        hb.add(&h1, 24, b"ab");
        // Streamed in two pieces: the result is the same file as built in one.
        let mut file = Vec::new();
        hb.take_pending(|b| {
            file.extend_from_slice(b);
            Ok::<(), ()>(())
        })
        .unwrap();
        hb.add(&h2, 63, b"c");
        file.extend_from_slice(&hb.finish(91));
        let hint = Hint::decode(&file).unwrap();
        assert_eq!(hint.format, FORMAT_VERSION);
        assert_eq!(hint.segment_id, 3);
        assert_eq!(hint.segment_len, 91);
        let got: Vec<HintEntry> = hint.iter().map(|e| e.unwrap()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].header, h1);
        assert_eq!(got[0].key, b"ab");
        assert_eq!(got[1].header, h2);
        assert_eq!(got[1].offset, 63);
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x10;
            assert!(Hint::decode(&bad).is_err(), "damage at {i} not caught");
        }
        assert!(Hint::decode(&file[..file.len() - 1]).is_err());
    }

    #[test]
    fn manifest_round_trip() {
        let m = encode_manifest(&[3, 4, 8]);
        assert_eq!(decode_manifest(&m).unwrap(), vec![3, 4, 8]);
        let mut bad = m.clone();
        bad[13] ^= 1;
        assert!(decode_manifest(&bad).is_err());
    }

    /// A record with the given flags byte, its checksum made right (so only the header rules
    /// can reject it).
    fn record_with_flags(flags: u8) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, 9, 0, b"k", Some(b"state"), false);
        out[20] = flags;
        let crc = crc32c::crc32c(&out[4..]);
        out[0..4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn causal_records_are_format_2_only() {
        let mut out = Vec::new();
        encode_record(&mut out, 42, 0, b"key", Some(b"dvv+siblings"), true);
        assert_eq!(out[20], FLAG_CAUSAL);
        let r = decode_record(&out, 2).unwrap();
        assert!(r.header.causal);
        assert!(!r.header.tombstone);
        assert_eq!(r.value, b"dvv+siblings");
        // An empty causal value is a value, not a tombstone.
        let mut empty = Vec::new();
        encode_record(&mut empty, 43, 0, b"key", Some(b""), true);
        let r = decode_record(&empty, 2).unwrap();
        assert!(r.header.causal && !r.header.tombstone && r.value.is_empty());
        // The same bytes in a format-1 segment: bit 1 is unknown there, the header is bad.
        assert!(matches!(
            decode_record(&out, 1),
            Err(RecordError::BadHeader(_))
        ));
        assert!(matches!(
            decode_record_header(&out, 1),
            Err(RecordError::BadHeader(_))
        ));
        // Format 1 still reads its own records.
        let plain = record_with_flags(0);
        assert!(!decode_record(&plain, 1).unwrap().header.causal);
        let mut tomb = Vec::new();
        encode_record(&mut tomb, 7, 0, b"k", None, false);
        assert!(decode_record(&tomb, 1).unwrap().header.tombstone);
    }

    #[test]
    fn unknown_flags_and_causal_tombstones_are_bad_headers() {
        for format in [1, 2] {
            for bit in 2..8 {
                let r = record_with_flags(1 << bit);
                assert!(
                    matches!(decode_record(&r, format), Err(RecordError::BadHeader(_))),
                    "bit {bit} in format {format}"
                );
            }
        }
        // TOMBSTONE | CAUSAL (value_len 0): never valid.
        let mut t = Vec::new();
        encode_record(&mut t, 7, 0, b"k", None, false);
        t[20] = FLAG_TOMBSTONE | FLAG_CAUSAL;
        let crc = crc32c::crc32c(&t[4..]);
        t[0..4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_record(&t, 2),
            Err(RecordError::BadHeader(_))
        ));
    }

    #[test]
    fn formats_1_and_2_are_read_others_are_not() {
        for format in 0..5u16 {
            let h = SegmentHeader {
                format,
                kind: SegmentKind::Log,
                id: 4,
                origin_lo: 4,
                origin_hi: 4,
            };
            let got = SegmentHeader::decode(&h.encode());
            assert_eq!(
                got.is_ok(),
                format == 1 || format == 2,
                "segment format {format}"
            );
            if let Ok(g) = got {
                assert_eq!(g.format, format);
            }
            let mut m = encode_manifest(&[1, 2]);
            m[4..6].copy_from_slice(&format.to_le_bytes());
            let n = m.len() - 4;
            let crc = crc32c::crc32c(&m[..n]);
            m[n..].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(
                decode_manifest(&m).is_ok(),
                format == 1 || format == 2,
                "manifest format {format}"
            );
        }
        assert_eq!(FORMAT_VERSION, 2);
        assert_eq!(FORMAT_VERSION_OLDEST_READ, 1);
    }

    #[test]
    fn a_hint_has_its_segments_format_and_rules() {
        let causal = RecordHeader {
            version: 5,
            expires_at_ms: 0,
            tombstone: false,
            causal: true,
            key_len: 1,
            value_len: 3,
        };
        let plain = RecordHeader {
            causal: false,
            ..causal
        };
        // Format 1: plain entries only.
        let mut hb = HintBuilder::new(2, 1);
        hb.add(&plain, 24, b"a");
        let file = hb.finish(55);
        let hint = Hint::decode(&file).unwrap();
        assert_eq!(hint.format, 1);
        assert_eq!(hint.iter().next().unwrap().unwrap().header, plain);
        // A format-1 hint whose entry says CAUSAL (built as format 2, then relabelled and its
        // checksum made right): a bad entry, the whole hint is refused.
        let mut hb = HintBuilder::new(2, 2);
        hb.add(&causal, 24, b"a");
        let mut file = hb.finish(55);
        assert!(
            Hint::decode(&file)
                .unwrap()
                .iter()
                .next()
                .unwrap()
                .unwrap()
                .header
                .causal
        );
        file[4..6].copy_from_slice(&1u16.to_le_bytes());
        let n = file.len() - 4;
        let crc = crc32c::crc32c(&file[..n]);
        file[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(Hint::decode(&file).is_err());
    }

    #[test]
    #[should_panic(expected = "causal record in a format-1 segment")]
    fn a_format_1_hint_takes_no_causal_entry() {
        let mut hb = HintBuilder::new(2, 1);
        let h = RecordHeader {
            version: 5,
            expires_at_ms: 0,
            tombstone: false,
            causal: true,
            key_len: 1,
            value_len: 3,
        };
        hb.add(&h, 24, b"a");
    }
}
