//! Frame boundaries: find a whole frame at the front of a buffer, or say that more bytes are
//! needed, without allocating; and write frame headers.
//!
//! ```text
//!  0         4      5      6              10
//!  +---------+------+------+--------------+---------------------+
//!  | length  |  op  | aux  |  request id  | body                |
//!  | u32 BE  |  u8  |  u8  |  u32 BE      | length - 6 bytes    |
//!  +---------+------+------+--------------+---------------------+
//! ```
//!
//! `length` counts every byte after itself, so it is at least 6 and at most
//! [`FRAME_SIZE_MAX`]. A declared length outside that range is an error as soon as the 4 length
//! bytes are in: the body is never buffered, let alone allocated.

use crate::limits::{FRAME_HEADER_AFTER_LENGTH, FRAME_HEADER_SIZE, FRAME_SIZE_MAX};
use byteorder::{BigEndian, ByteOrder};
use bytes::BufMut;

/// A whole frame borrowed from the buffer it was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// Opcode (with [`super::RESPONSE_BIT`] in responses).
    pub op: u8,
    /// Flags in a request, status in a response.
    pub aux: u8,
    /// Request id, echoed in the response.
    pub id: u32,
    /// The body: `length - 6` bytes.
    pub body: &'a [u8],
}

/// Why the bytes at the front of a buffer cannot be a frame. Either way the stream cannot be
/// resynchronised, so the connection must be closed after the error reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length is larger than [`FRAME_SIZE_MAX`].
    TooLarge {
        /// The declared length.
        declared: u32,
    },
    /// The declared length is smaller than the fixed header.
    TooShort {
        /// The declared length.
        declared: u32,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { declared } => write!(
                f,
                "frame length {declared} exceeds the maximum of {FRAME_SIZE_MAX} bytes"
            ),
            FrameError::TooShort { declared } => write!(
                f,
                "frame length {declared} is below the minimum of {FRAME_HEADER_AFTER_LENGTH} bytes"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Look at the front of `buf`: `Ok(Some(total))` when a whole frame of `total` bytes (length
/// prefix included) is there, `Ok(None)` when more bytes are needed, an error when the declared
/// length is out of range. Never allocates.
#[inline]
pub fn check(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let declared = BigEndian::read_u32(&buf[..4]);
    if declared as usize > FRAME_SIZE_MAX {
        return Err(FrameError::TooLarge { declared });
    }
    if (declared as usize) < FRAME_HEADER_AFTER_LENGTH {
        return Err(FrameError::TooShort { declared });
    }
    let total = 4 + declared as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(total))
}

/// Parse the frame at the front of `buf`: the frame and its total size, `Ok(None)` when more
/// bytes are needed.
#[inline]
pub fn parse(buf: &[u8]) -> Result<Option<(FrameRef<'_>, usize)>, FrameError> {
    let Some(total) = check(buf)? else {
        return Ok(None);
    };
    let frame = FrameRef {
        op: buf[4],
        aux: buf[5],
        id: BigEndian::read_u32(&buf[6..10]),
        body: &buf[FRAME_HEADER_SIZE..total],
    };
    Ok(Some((frame, total)))
}

/// Append a frame header for a body of `body_len` bytes. The caller appends the body next.
#[inline]
pub fn put_header(out: &mut Vec<u8>, op: u8, aux: u8, id: u32, body_len: usize) {
    let length = FRAME_HEADER_AFTER_LENGTH + body_len;
    // Every encoder in this crate bounds its body by the size limits first; a larger frame here
    // is a programmer error, and sending it would make the peer drop the connection.
    assert!(length <= FRAME_SIZE_MAX, "frame of {length} bytes encoded");
    out.reserve(4 + length);
    out.put_u32(length as u32);
    out.put_u8(op);
    out.put_u8(aux);
    out.put_u32(id);
}

/// Append a whole frame whose body is the concatenation of `parts`.
#[inline]
pub fn put_frame(out: &mut Vec<u8>, op: u8, aux: u8, id: u32, parts: &[&[u8]]) {
    let body_len = parts.iter().map(|p| p.len()).sum();
    put_header(out, op, aux, id, body_len);
    for part in parts {
        out.extend_from_slice(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_more_bytes_is_not_an_error() {
        assert_eq!(check(&[]), Ok(None));
        assert_eq!(check(&[0, 0, 0]), Ok(None));
        assert_eq!(check(&[0, 0, 0, 6, 2, 0, 0, 0, 0]), Ok(None));
        assert_eq!(check(&[0, 0, 0, 6, 2, 0, 0, 0, 0, 1]), Ok(Some(10)));
    }

    #[test]
    fn huge_length_is_refused_from_the_prefix_alone() {
        assert_eq!(
            check(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(FrameError::TooLarge { declared: u32::MAX })
        );
        assert_eq!(
            check(&[0, 0, 0, 5]),
            Err(FrameError::TooShort { declared: 5 })
        );
    }

    #[test]
    fn round_trip_header() {
        let mut out = Vec::new();
        put_frame(&mut out, 0x03, 2, 0xDEADBEEF, &[b"ab", b"c"]);
        let (f, n) = parse(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(f.op, 3);
        assert_eq!(f.aux, 2);
        assert_eq!(f.id, 0xDEADBEEF);
        assert_eq!(f.body, b"abc");
    }
}
