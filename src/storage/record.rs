//! On-disk layouts of the log store: segment header, record, hint file, compaction manifest.
//! All integers little-endian. Format version [`FORMAT_VERSION`] (in every file header).
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
//!  crc32c covers bytes 4.. to the end of the value. flags bit 0 = tombstone (value_len 0).
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

/// Version of the on-disk format, written in every file header.
pub const FORMAT_VERSION: u16 = 1;
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
/// Largest record.
pub const RECORD_SIZE_MAX: usize = RECORD_HEADER_SIZE + KEY_SIZE_MAX + VALUE_SIZE_MAX;

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
        b[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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
        if format != FORMAT_VERSION {
            return Err(format!(
                "segment format {format}, this build reads {FORMAT_VERSION}"
            ));
        }
        let kind = match u16_at(b, 6) {
            0 => SegmentKind::Log,
            1 => SegmentKind::Compacted,
            k => return Err(format!("unknown segment kind {k}")),
        };
        Ok(SegmentHeader {
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

/// Append the encoding of one record to `out`.
pub fn encode_record(
    out: &mut Vec<u8>,
    version: u64,
    expires_at_ms: u64,
    key: &[u8],
    value: Option<&[u8]>,
) {
    assert!(key.len() <= KEY_SIZE_MAX, "key size checked by the caller");
    let v = value.unwrap_or(&[]);
    assert!(
        v.len() <= VALUE_SIZE_MAX,
        "value size checked by the caller"
    );
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
    out.push(if value.is_none() { FLAG_TOMBSTONE } else { 0 });
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
    /// The header is impossible (unknown flags, lengths over the limits).
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

/// Parse only the header fields (not checked against the checksum yet).
pub fn decode_record_header(b: &[u8]) -> Result<RecordHeader, RecordError> {
    if b.len() < RECORD_HEADER_SIZE {
        return Err(RecordError::Short { need: None });
    }
    let flags = b[20];
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(RecordError::BadHeader(format!("unknown flags {flags:#x}")));
    }
    let h = RecordHeader {
        version: u64_at(b, 4),
        expires_at_ms: u64_at(b, 12),
        tombstone: flags & FLAG_TOMBSTONE != 0,
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

/// Decode and check the record at the start of `b`.
pub fn decode_record(b: &[u8]) -> Result<RecordRef<'_>, RecordError> {
    let h = decode_record_header(b)?;
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
    /// Bytes not yet taken.
    buf: Vec<u8>,
    /// CRC of the bytes already taken.
    crc: u32,
    count: u32,
}

impl HintBuilder {
    /// A builder for segment `segment_id`'s hint.
    pub fn new(segment_id: u32) -> HintBuilder {
        let mut buf = Vec::with_capacity(HINT_HEADER_SIZE);
        buf.extend_from_slice(&HINT_MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf.extend_from_slice(&0u16.to_le_bytes());
        buf.extend_from_slice(&segment_id.to_le_bytes());
        HintBuilder {
            buf,
            crc: 0,
            count: 0,
        }
    }

    /// Record that the segment holds `header`/`key` at `offset`.
    pub fn add(&mut self, header: &RecordHeader, offset: u32, key: &[u8]) {
        self.buf.extend_from_slice(&header.version.to_le_bytes());
        self.buf
            .extend_from_slice(&header.expires_at_ms.to_le_bytes());
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf.extend_from_slice(&header.value_len.to_le_bytes());
        self.buf
            .push(if header.tombstone { FLAG_TOMBSTONE } else { 0 });
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
        if format != FORMAT_VERSION {
            return Err(format!("hint format {format}"));
        }
        let hint = Hint {
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
        HintIter { rest: self.entries }
    }
}

/// Iterator over the entries of a [`Hint`].
pub struct HintIter<'a> {
    rest: &'a [u8],
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
        let flags = b[24];
        let key_len = u16_at(b, 25);
        let value_len = u32_at(b, 20);
        let end = HINT_ENTRY_HEADER_SIZE + key_len as usize;
        if flags & !FLAG_TOMBSTONE != 0
            || key_len as usize > KEY_SIZE_MAX
            || value_len as usize > VALUE_SIZE_MAX
            || b.len() < end
        {
            self.rest = &[];
            return Some(Err("bad hint entry".into()));
        }
        self.rest = &b[end..];
        Some(Ok(HintEntry {
            header: RecordHeader {
                version: u64_at(b, 0),
                expires_at_ms: u64_at(b, 8),
                tombstone: flags & FLAG_TOMBSTONE != 0,
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
    if u16_at(b, 4) != FORMAT_VERSION {
        return Err("manifest format mismatch".into());
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
            kind: SegmentKind::Log,
            id: 1,
            origin_lo: 1,
            origin_hi: 1,
        };
        assert_eq!(h.encode().len(), SEGMENT_HEADER_SIZE);
        let mut out = Vec::new();
        encode_record(&mut out, 1, 0, b"", Some(b""));
        assert_eq!(out.len(), RECORD_HEADER_SIZE);
        let mut hb = HintBuilder::new(1);
        hb.add(&decode_record_header(&out).unwrap(), 0, b"");
        assert_eq!(
            hb.finish(0).len(),
            HINT_HEADER_SIZE + HINT_ENTRY_HEADER_SIZE + HINT_TRAILER_SIZE
        );
        assert_eq!(encode_manifest(&[1, 2]).len(), 12 + 8 + 4);
    }

    #[test]
    fn record_round_trip_and_every_bit_flip_is_caught() {
        let mut out = Vec::new();
        encode_record(&mut out, 42, 1000, b"key", Some(b"value"));
        let r = decode_record(&out).unwrap();
        assert_eq!(r.key, b"key");
        assert_eq!(r.value, b"value");
        assert_eq!(r.header.version, 42);
        assert_eq!(r.header.expires_at_ms, 1000);
        assert!(!r.header.tombstone);
        assert_eq!(r.header.record_len(), out.len());
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&bad).is_err(), "flip of bit {bit} not caught");
        }
        for cut in 0..out.len() {
            assert!(matches!(
                decode_record(&out[..cut]),
                Err(RecordError::Short { .. })
            ));
        }
    }

    #[test]
    fn tombstone_round_trip() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, 0, b"k", None);
        let r = decode_record(&out).unwrap();
        assert!(r.header.tombstone);
        assert!(r.value.is_empty());
    }

    #[test]
    fn oversized_lengths_are_bad_headers_not_panics() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, 0, b"k", Some(b"v"));
        out[23..27].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_record(&out),
            Err(RecordError::BadHeader(_))
        ));
        assert!(decode_record(&[0u8; RECORD_HEADER_SIZE]).is_err());
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = SegmentHeader {
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
        let mut hb = HintBuilder::new(3);
        let h1 = RecordHeader {
            version: 5,
            expires_at_ms: 9,
            tombstone: false,
            key_len: 2,
            value_len: 10,
        };
        let h2 = RecordHeader {
            version: 6,
            expires_at_ms: 0,
            tombstone: true,
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
}
