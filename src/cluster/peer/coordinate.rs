//! COORDINATE (0x34): a node that holds no replica of a key hands a siblings-mode write to a
//! replica, which coordinates it and answers with the outcome the client gets.
//!
//! Siblings mode (protocol.md § 19) makes a write's dot from the coordinating node's own copy of
//! the key, so only a replica can coordinate it; any node still takes any request by passing
//! it on. One hop at most: a node that receives COORDINATE for a key it holds no replica of (its
//! ring changed meanwhile) answers UNAVAILABLE instead of passing it further.
//!
//! ```text
//! COORDINATE 0x34 request (aux 0)
//!  +-------------+-----+------------------+------------------+----------+-------------+---------+-------+
//!  | key len u16 | key | consistency u8   | expires at ms u64| flags u8 | ctx len u16 | context | value |
//!  |  1..=1024   |     | (§ 5 bits 0-1)   | 0 = never        |          |             |         | (rest)|
//!  +-------------+-----+------------------+------------------+----------+-------------+---------+-------+
//!    flags bit 0: a DELETE (then the value is empty); other bits 0
//!  reply OK     | version u64 |   the write's version, as a PUT's reply carries it
//!  reply error  the client's status (UNAVAILABLE, TIMEOUT, TOO_MANY_SIBLINGS, ...) and message
//! ```
//!
//! All integers big-endian.

use super::{bad, read_u64, PeerError};
use crate::limits::{CONTEXT_SIZE_MAX, KEY_SIZE_MAX, VALUE_SIZE_MAX};
use crate::protocol::{frame, Consistency, Status};
use crate::version::Version;
use byteorder::{BigEndian, ByteOrder};

/// The opcode.
pub const OP: u8 = 0x34;

/// COORDINATE flags bit: the write is a DELETE.
const FLAG_DELETE: u8 = 0x01;

/// A siblings-mode write handed to a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coordinate<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The client's consistency level.
    pub consistency: Consistency,
    /// Absolute expiry of the value, 0 = never.
    pub expires_at_ms: u64,
    /// The causal context the client sent (empty: none).
    pub context: &'a [u8],
    /// The value, `None` for a DELETE.
    pub value: Option<&'a [u8]>,
}

impl<'a> Coordinate<'a> {
    /// Append the request with id `id`.
    pub fn encode(&self, id: u32, out: &mut Vec<u8>) {
        assert!(self.key.len() <= KEY_SIZE_MAX && !self.key.is_empty());
        assert!(self.context.len() <= CONTEXT_SIZE_MAX);
        let mut fixed = [0u8; 12];
        fixed[0] = self.consistency.to_bits();
        BigEndian::write_u64(&mut fixed[1..9], self.expires_at_ms);
        fixed[9] = if self.value.is_none() { FLAG_DELETE } else { 0 };
        BigEndian::write_u16(&mut fixed[10..12], self.context.len() as u16);
        let key_len = (self.key.len() as u16).to_be_bytes();
        let value = self.value.unwrap_or(&[]);
        frame::put_frame(
            out,
            OP,
            0,
            id,
            &[&key_len, self.key, &fixed, self.context, value],
        );
    }

    /// Decode a request body (`aux` must be 0).
    pub fn decode(aux: u8, body: &'a [u8]) -> Result<Coordinate<'a>, PeerError> {
        if aux != 0 {
            return Err(bad(format!("COORDINATE aux must be 0, got 0x{aux:02x}")));
        }
        if body.len() < 2 {
            return Err(bad("COORDINATE shorter than its key length"));
        }
        let key_len = BigEndian::read_u16(&body[..2]) as usize;
        if key_len == 0 || key_len > KEY_SIZE_MAX || body.len() < 2 + key_len + 12 {
            return Err(bad("COORDINATE with a bad key length"));
        }
        let key = &body[2..2 + key_len];
        let rest = &body[2 + key_len..];
        let bits = rest[0];
        if bits & !Consistency::MASK != 0 {
            return Err(bad(format!("COORDINATE consistency byte 0x{bits:02x}")));
        }
        let expires_at_ms = read_u64(rest, 1);
        let flags = rest[9];
        if flags & !FLAG_DELETE != 0 {
            return Err(bad(format!("COORDINATE reserved flag bits 0x{flags:02x}")));
        }
        let ctx_len = BigEndian::read_u16(&rest[10..12]) as usize;
        let rest = &rest[12..];
        if ctx_len > CONTEXT_SIZE_MAX || ctx_len > rest.len() {
            return Err(bad("COORDINATE with a bad context length"));
        }
        let (context, value) = rest.split_at(ctx_len);
        if value.len() > VALUE_SIZE_MAX {
            return Err(bad(format!("value of {} bytes too large", value.len())));
        }
        let value = if flags & FLAG_DELETE != 0 {
            if !value.is_empty() {
                return Err(bad("COORDINATE delete with a value"));
            }
            None
        } else {
            Some(value)
        };
        Ok(Coordinate {
            key,
            consistency: Consistency::from_bits(bits),
            expires_at_ms,
            context,
            value,
        })
    }
}

/// The key of a COORDINATE body, to route it to the key's shard (`None`: undecodable; it is
/// answered where it landed).
pub fn key_of(aux: u8, body: &[u8]) -> Option<&[u8]> {
    Coordinate::decode(aux, body).ok().map(|c| c.key)
}

/// What a replica answered: the write's version, or the status and message for the client.
pub type Answer = Result<Version, (Status, String)>;

/// Decode a COORDINATE reply (`status` from its `aux`).
pub fn decode_reply(status: u8, body: &[u8]) -> Result<Answer, PeerError> {
    let status =
        Status::from_u8(status).ok_or_else(|| bad(format!("unknown status 0x{status:02x}")))?;
    if status != Status::Ok {
        return Ok(Err((status, String::from_utf8_lossy(body).into_owned())));
    }
    if body.len() != 8 {
        return Err(bad("COORDINATE reply is not 8 bytes"));
    }
    Ok(Ok(Version(read_u64(body, 0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncations() {
        let reqs = [
            Coordinate {
                key: b"key",
                consistency: Consistency::Quorum,
                expires_at_ms: 77,
                context: &[1, 0, 0],
                value: Some(b"value"),
            },
            Coordinate {
                key: b"k",
                consistency: Consistency::Default,
                expires_at_ms: 0,
                context: &[],
                value: None,
            },
        ];
        for c in reqs {
            let mut out = Vec::new();
            c.encode(9, &mut out);
            let (f, n) = frame::parse(&out).unwrap().unwrap();
            assert_eq!((n, f.op, f.aux, f.id), (out.len(), OP, 0, 9));
            assert_eq!(Coordinate::decode(0, f.body).unwrap(), c);
            assert_eq!(key_of(0, f.body), Some(c.key));
            assert!(Coordinate::decode(1, f.body).is_err());
            // A value cut short is still a value (it is the rest of the body); anything cut
            // inside the fixed part or the context is an error, never a panic.
            let fixed_end = 2 + c.key.len() + 12 + c.context.len();
            for cut in 0..fixed_end {
                assert!(Coordinate::decode(0, &f.body[..cut]).is_err(), "cut {cut}");
            }
        }
        assert_eq!(
            decode_reply(0, &7u64.to_be_bytes()).unwrap(),
            Ok(Version(7))
        );
        assert_eq!(
            decode_reply(Status::TooManySiblings as u8, b"why").unwrap(),
            Err((Status::TooManySiblings, "why".to_string()))
        );
        assert!(decode_reply(0, b"short").is_err());
    }
}
