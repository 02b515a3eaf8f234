//! The two byte layouts of the module doc: the causal context (a [`VersionVector`]) and the
//! state (a [`CausalState`]), big-endian. Decoding takes untrusted bytes (a client's context,
//! a peer's state): it checks every field and returns an error, never panics, and allocates
//! only after the counts were checked against their limits.

use super::{CausalError, CausalState, Dot, Sibling, VersionVector};
use crate::limits::{
    CAUSAL_STATE_BYTES_MAX, CAUSAL_STATE_WRITE_BYTES_MAX, CONTEXT_ACTORS_MAX, CONTEXT_SIZE_MAX,
    SIBLINGS_HARD_MAX, SIBLINGS_MAX,
};

/// Format byte of a context encoding.
pub const CONTEXT_FORMAT: u8 = 1;
/// Format byte of a state encoding.
pub const STATE_FORMAT: u8 = 1;
/// Bytes of a context before its entries: format (1), count (2).
pub const CONTEXT_HEADER_SIZE: usize = 3;
/// Bytes of one vector entry: actor u16, counter u64.
pub const VV_ENTRY_SIZE: usize = 10;
/// Bytes of a state besides its entries and siblings: format, vector count, sibling count.
pub const STATE_FIXED_SIZE: usize = CONTEXT_HEADER_SIZE + 2;
/// Bytes of a sibling before its value: dot (10), version (8), expiry (8), value length (4).
pub const SIBLING_HEADER_SIZE: usize = VV_ENTRY_SIZE + 8 + 8 + 4;

const _: () = assert!(CONTEXT_SIZE_MAX == CONTEXT_HEADER_SIZE + VV_ENTRY_SIZE * CONTEXT_ACTORS_MAX);
// A state at the write limits with empty values fits a write, so the limit on bytes only ever
// refuses values, never the bookkeeping; likewise for the hard limits.
const _: () = assert!(
    STATE_FIXED_SIZE + VV_ENTRY_SIZE * CONTEXT_ACTORS_MAX + SIBLING_HEADER_SIZE * SIBLINGS_MAX
        <= CAUSAL_STATE_WRITE_BYTES_MAX
);
const _: () = assert!(
    STATE_FIXED_SIZE + VV_ENTRY_SIZE * CONTEXT_ACTORS_MAX + SIBLING_HEADER_SIZE * SIBLINGS_HARD_MAX
        <= CAUSAL_STATE_BYTES_MAX
);

fn malformed(why: String) -> CausalError {
    CausalError::Malformed(why)
}

/// A cursor over untrusted bytes: every read checks what is left.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// "context" or "state", for the messages.
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], CausalError> {
        if self.bytes.len() - self.at < n {
            return Err(malformed(format!(
                "{} of {} bytes ends inside {field} (at byte {})",
                self.what,
                self.bytes.len(),
                self.at
            )));
        }
        let b = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(b)
    }
    fn u8(&mut self, field: &str) -> Result<u8, CausalError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16, CausalError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &str) -> Result<u32, CausalError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, field: &str) -> Result<u64, CausalError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// `| n u16 | n × (actor u16 | counter u64) |`, shared by both layouts.
    fn vector(&mut self) -> Result<VersionVector, CausalError> {
        let n = self.u16("the vector count")? as usize;
        if n > CONTEXT_ACTORS_MAX {
            return Err(CausalError::ContextTooLarge { actors: n });
        }
        if self.left() < n * VV_ENTRY_SIZE {
            return Err(malformed(format!(
                "{} of {} bytes ends inside its {n} vector entries",
                self.what,
                self.bytes.len()
            )));
        }
        let mut entries: Vec<(u16, u64)> = Vec::with_capacity(n);
        for _ in 0..n {
            let actor = self.u16("a vector actor")?;
            let counter = self.u64("a vector counter")?;
            if counter == 0 {
                return Err(malformed(format!(
                    "{} vector has counter 0 for actor {actor}",
                    self.what
                )));
            }
            if let Some(&(prev, _)) = entries.last() {
                if actor <= prev {
                    return Err(malformed(format!(
                        "{} vector actors not strictly ascending: {actor} after {prev}",
                        self.what
                    )));
                }
            }
            entries.push((actor, counter));
        }
        Ok(VersionVector { entries })
    }
}

fn put_vector(vv: &VersionVector, out: &mut Vec<u8>) {
    // Every stored or shipped vector is within CONTEXT_ACTORS_MAX; u16 holds all 65,536
    // actors but one, so only a vector naming every possible node could not be encoded.
    let n = u16::try_from(vv.entries.len()).expect("a vector names at most 65,535 actors");
    out.extend_from_slice(&n.to_be_bytes());
    for &(actor, counter) in &vv.entries {
        out.extend_from_slice(&actor.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
    }
}

impl VersionVector {
    /// Bytes of [`VersionVector::encode_context`]'s output.
    pub fn encoded_context_len(&self) -> usize {
        CONTEXT_HEADER_SIZE + VV_ENTRY_SIZE * self.entries.len()
    }

    /// Append the context encoding (module doc) to `out`.
    pub fn encode_context(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_context_len());
        out.push(CONTEXT_FORMAT);
        put_vector(self, out);
    }

    /// Decode a context a client sent back. The whole slice must be one context; a
    /// zero-length slice is the empty context (a client that never read).
    pub fn decode_context(bytes: &[u8]) -> Result<VersionVector, CausalError> {
        if bytes.is_empty() {
            return Ok(VersionVector::new());
        }
        let mut r = Reader {
            bytes,
            at: 0,
            what: "context",
        };
        let fmt = r.u8("its format")?;
        if fmt != CONTEXT_FORMAT {
            return Err(malformed(format!(
                "context format {fmt}, this build reads {CONTEXT_FORMAT}"
            )));
        }
        let vv = r.vector()?;
        if r.left() != 0 {
            return Err(malformed(format!(
                "context has {} bytes after its {} entries",
                r.left(),
                vv.len()
            )));
        }
        Ok(vv)
    }

    /// Lowercase hex of the context encoding (kvcat's `ctx=HEX`).
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = Vec::new();
        self.encode_context(&mut bytes);
        let mut s = String::with_capacity(2 * bytes.len());
        for b in bytes {
            s.push(DIGITS[(b >> 4) as usize] as char);
            s.push(DIGITS[(b & 15) as usize] as char);
        }
        s
    }

    /// Decode a context from hex ([`VersionVector::to_hex`]; upper case accepted too). The
    /// empty string is the empty context.
    pub fn from_hex(hex: &str) -> Result<VersionVector, CausalError> {
        let h = hex.as_bytes();
        if h.len() > 2 * CONTEXT_SIZE_MAX {
            return Err(malformed(format!(
                "context hex of {} characters, longer than the largest context ({} bytes)",
                h.len(),
                CONTEXT_SIZE_MAX
            )));
        }
        if !h.len().is_multiple_of(2) {
            return Err(malformed(format!(
                "context hex has an odd number of characters ({})",
                h.len()
            )));
        }
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let mut bytes = Vec::with_capacity(h.len() / 2);
        for (i, pair) in h.chunks_exact(2).enumerate() {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(hi), Some(lo)) => bytes.push(hi << 4 | lo),
                _ => {
                    return Err(malformed(format!(
                        "context hex has a non-hex character near position {}",
                        2 * i
                    )))
                }
            }
        }
        VersionVector::decode_context(&bytes)
    }
}

impl CausalState {
    /// Append the canonical state encoding (module doc) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(STATE_FORMAT);
        put_vector(&self.vv, out);
        // Replicas hold at most SIBLINGS_HARD_MAX; as for the vector, only a state no limit
        // was ever checked on could pass u16.
        let n = u16::try_from(self.siblings.len()).expect("a state holds at most 65,535 siblings");
        out.extend_from_slice(&n.to_be_bytes());
        for s in &self.siblings {
            out.extend_from_slice(&s.dot.actor.to_be_bytes());
            out.extend_from_slice(&s.dot.counter.to_be_bytes());
            out.extend_from_slice(&s.version.to_be_bytes());
            out.extend_from_slice(&s.expires_at_ms.to_be_bytes());
            // Values of states within CAUSAL_STATE_BYTES_MAX fit a u32 (limits.rs asserts it).
            let len = u32::try_from(s.value.len()).expect("a value of at most 4 GiB");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&s.value);
        }
    }

    /// Decode a stored or received state, checking everything: format, lengths, sorted
    /// vector and siblings, each sibling's dot within the vector (so unique dots), at most
    /// [`CONTEXT_ACTORS_MAX`] actors, [`SIBLINGS_HARD_MAX`] siblings and
    /// [`CAUSAL_STATE_BYTES_MAX`] bytes, no trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<CausalState, CausalError> {
        if bytes.len() > CAUSAL_STATE_BYTES_MAX {
            return Err(CausalError::StateTooLarge { bytes: bytes.len() });
        }
        let mut r = Reader {
            bytes,
            at: 0,
            what: "state",
        };
        let fmt = r.u8("its format")?;
        if fmt != STATE_FORMAT {
            return Err(malformed(format!(
                "state format {fmt}, this build reads {STATE_FORMAT}"
            )));
        }
        let vv = r.vector()?;
        let n = r.u16("the sibling count")? as usize;
        if n > SIBLINGS_HARD_MAX {
            return Err(CausalError::TooManySiblings { count: n });
        }
        if r.left() < n * SIBLING_HEADER_SIZE {
            return Err(malformed(format!(
                "state of {} bytes ends inside its {n} siblings",
                bytes.len()
            )));
        }
        let mut siblings: Vec<Sibling> = Vec::with_capacity(n);
        for _ in 0..n {
            let dot = Dot {
                actor: r.u16("a sibling's actor")?,
                counter: r.u64("a sibling's counter")?,
            };
            let version = r.u64("a sibling's version")?;
            let expires_at_ms = r.u64("a sibling's expiry")?;
            let len = r.u32("a sibling's value length")? as usize;
            let value = r.take(len, "a sibling's value")?.to_vec();
            if dot.counter == 0 {
                return Err(malformed(format!("sibling dot {dot} has counter 0")));
            }
            if let Some(prev) = siblings.last() {
                if dot <= prev.dot {
                    return Err(malformed(format!(
                        "sibling dots not strictly ascending: {dot} after {}",
                        prev.dot
                    )));
                }
            }
            if !vv.contains(dot) {
                return Err(malformed(format!(
                    "sibling dot {dot} is above the vector ({} for actor {})",
                    vv.get(dot.actor),
                    dot.actor
                )));
            }
            siblings.push(Sibling {
                dot,
                version,
                expires_at_ms,
                value,
            });
        }
        if r.left() != 0 {
            return Err(malformed(format!(
                "state has {} bytes after its {n} siblings",
                r.left()
            )));
        }
        Ok(CausalState { vv, siblings })
    }
}
