//! A connection's read buffer: bytes received but not yet consumed as frames.
//!
//! The buffer is zero-filled once as it grows and then reused: each `read` goes into the free
//! space after the fill mark, so receiving costs no allocation and no memset per call. (Growing
//! a `Vec` by `resize` before every read zero-filled 64 KiB per call, about 12 % of a shard's
//! time under pipelined load.) Consumed bytes are dropped by moving the unconsumed tail to the
//! front only when the free space runs short.
//!
//! ```text
//!  0          start                 end                 buf.len()
//!  +----------+---------------------+-------------------+
//!  | consumed | received, unparsed  | free (zeroed)     |
//!  +----------+---------------------+-------------------+
//! ```

use crate::limits::{READ_BUFFER_SIZE_MAX, READ_CHUNK_SIZE};
use std::io::{self, Read};

/// One connection's read buffer.
#[derive(Default)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// See [`ReadBuf::last_read_short`].
    last_read_short: bool,
}

impl ReadBuf {
    /// Received bytes not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Mark `n` bytes at the front as consumed.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Forget everything (a link reconnecting).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Bytes allocated (what the buffer costs, whatever it holds).
    pub fn allocated(&self) -> usize {
        self.buf.len()
    }

    /// How many bytes the next [`ReadBuf::read_from`] would add to the allocation (0 when the
    /// free space, after moving the unconsumed bytes to the front, takes a whole chunk). The
    /// buffer grows one chunk at a time as bytes arrive, never to a frame's declared size.
    pub fn growth_for_next_read(&self) -> usize {
        let end = if self.buf.len() - self.end < READ_CHUNK_SIZE && self.start > 0 {
            self.end - self.start
        } else {
            self.end
        };
        let want = (end + READ_CHUNK_SIZE).min(READ_BUFFER_SIZE_MAX);
        want.saturating_sub(self.buf.len())
    }

    /// One `read` from `r` of at most [`READ_CHUNK_SIZE`] bytes into the free space. The
    /// unconsumed bytes never exceed one largest frame plus a chunk (the caller consumes whole
    /// frames and refuses oversized lengths), so there is always room.
    pub fn read_from<R: Read>(&mut self, r: &mut R) -> io::Result<usize> {
        if self.buf.len() - self.end < READ_CHUNK_SIZE && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = (self.end + READ_CHUNK_SIZE).min(READ_BUFFER_SIZE_MAX);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        assert!(
            self.end < self.buf.len(),
            "read buffer full: frames are not consumed"
        );
        let limit = (self.end + READ_CHUNK_SIZE).min(self.buf.len());
        let n = r.read(&mut self.buf[self.end..limit])?;
        self.last_read_short = n < limit - self.end;
        self.end += n;
        Ok(n)
    }

    /// Whether the last [`ReadBuf::read_from`] returned less than it asked for: from a TCP
    /// socket that means the socket had nothing more at that moment, so (with edge-triggered
    /// readiness, which reports every later arrival) another read now would only return
    /// WouldBlock — a syscall per request saved at pipeline depth 1.
    pub fn last_read_short(&self) -> bool {
        self.last_read_short
    }

    /// Give memory back after a large frame: an empty buffer above one chunk shrinks to one.
    pub fn shrink_if_idle(&mut self) {
        if self.start == self.end && self.buf.len() > READ_CHUNK_SIZE {
            self.buf.truncate(READ_CHUNK_SIZE);
            self.buf.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_consumes_and_compacts() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut src = &data[..];
        let mut rb = ReadBuf::default();
        let mut out = Vec::new();
        loop {
            let n = rb.read_from(&mut src).unwrap();
            if n == 0 {
                break;
            }
            // Consume all but a few bytes each time, so compaction has work to do.
            let take = rb.data().len().saturating_sub(7);
            out.extend_from_slice(&rb.data()[..take]);
            rb.consume(take);
        }
        out.extend_from_slice(rb.data());
        assert_eq!(out, data);
        assert!(rb.buf.len() <= 2 * READ_CHUNK_SIZE);
    }

    #[test]
    fn grows_a_chunk_at_a_time_and_shrinks_when_idle() {
        // A large frame arriving slowly costs what has arrived, not what it declares.
        let data = vec![7u8; 5 * READ_CHUNK_SIZE];
        let mut src = &data[..];
        let mut rb = ReadBuf::default();
        assert_eq!(rb.growth_for_next_read(), READ_CHUNK_SIZE);
        for i in 1..=5 {
            let grow = rb.growth_for_next_read();
            let before = rb.allocated();
            assert_eq!(rb.read_from(&mut src).unwrap(), READ_CHUNK_SIZE);
            assert_eq!(rb.allocated(), before + grow);
            assert!(rb.allocated() <= (i + 1) * READ_CHUNK_SIZE);
        }
        assert_eq!(rb.growth_for_next_read(), READ_CHUNK_SIZE);
        rb.consume(5 * READ_CHUNK_SIZE);
        rb.shrink_if_idle();
        assert_eq!(rb.allocated(), READ_CHUNK_SIZE);
        assert_eq!(rb.growth_for_next_read(), 0);
    }
}
