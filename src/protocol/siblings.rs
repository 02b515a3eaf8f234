//! The reply bodies of siblings mode (`kvd --conflicts siblings`, protocol.md § 19): a GET
//! with the causal flag ([`super::FLAG_CAUSAL`]) answers every live sibling of the key and the
//! causal context of what it read.
//!
//! ```text
//! GET (causal) OK
//!  +--------------+---------+------------+-------------------------------------------------+
//!  | ctx len u16  | context | count u16  | count × ( version u64 | value len u32 | value ) |
//!  +--------------+---------+------------+-------------------------------------------------+
//!   siblings in a stable order (by their dots); count ≥ 1
//! GET (causal) NOT_FOUND: no live sibling (never written, deleted, expired)
//!  +--------------+---------+
//!  | ctx len u16  | context |   the context, to write or delete over what was read
//!  +--------------+---------+
//! ```
//!
//! All integers big-endian. The context is opaque to clients: they send it back as it came in
//! a PUT or DELETE with the causal flag (its layout is in protocol.md § 19 for the curious).

use super::frame;
use super::message::RequestError;
use super::{op, Status};
use crate::version::Version;
use byteorder::{BigEndian, ByteOrder};

/// Append the reply to a causal GET with id `id`: OK with the siblings, or NOT_FOUND with only
/// the context when `values` is empty. Returns the status sent.
pub fn put_causal_get_reply(
    out: &mut Vec<u8>,
    id: u32,
    context: &[u8],
    values: &[(Version, Vec<u8>)],
) -> Status {
    let ctx_len = (context.len() as u16).to_be_bytes();
    if values.is_empty() {
        frame::put_frame(
            out,
            op::GET | super::RESPONSE_BIT,
            Status::NotFound as u8,
            id,
            &[&ctx_len, context],
        );
        return Status::NotFound;
    }
    let mut body = Vec::with_capacity(
        4 + context.len() + values.iter().map(|(_, v)| 12 + v.len()).sum::<usize>(),
    );
    body.extend_from_slice(&ctx_len);
    body.extend_from_slice(context);
    body.extend_from_slice(&(values.len() as u16).to_be_bytes());
    for (version, value) in values {
        body.extend_from_slice(&version.0.to_be_bytes());
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
    }
    frame::put_frame(
        out,
        op::GET | super::RESPONSE_BIT,
        Status::Ok as u8,
        id,
        &[&body],
    );
    Status::Ok
}

/// A decoded causal GET reply body: the context and the siblings (version, value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalGetReply<'a> {
    /// The causal context, to send back with a write.
    pub context: &'a [u8],
    /// Each live sibling's version and value (empty for NOT_FOUND).
    pub values: Vec<(u64, &'a [u8])>,
}

/// Decode the body of a causal GET's OK (`found`) or NOT_FOUND reply.
pub fn decode_causal_get_reply(
    body: &[u8],
    found: bool,
) -> Result<CausalGetReply<'_>, RequestError> {
    let bad = |why: &str| RequestError::Malformed(format!("causal GET reply {why}"));
    if body.len() < 2 {
        return Err(bad("ends before its context length"));
    }
    let len = BigEndian::read_u16(&body[..2]) as usize;
    let rest = &body[2..];
    if rest.len() < len {
        return Err(bad("ends inside its context"));
    }
    let (context, mut rest) = rest.split_at(len);
    let mut values = Vec::new();
    if found {
        if rest.len() < 2 {
            return Err(bad("ends before its sibling count"));
        }
        let count = BigEndian::read_u16(&rest[..2]) as usize;
        if count == 0 {
            // No live sibling is NOT_FOUND, never an empty OK (protocol.md § 19.1).
            return Err(bad("is OK with no sibling"));
        }
        rest = &rest[2..];
        for _ in 0..count {
            if rest.len() < 12 {
                return Err(bad("ends inside a sibling"));
            }
            let version = BigEndian::read_u64(&rest[..8]);
            let n = BigEndian::read_u32(&rest[8..12]) as usize;
            if rest.len() - 12 < n {
                return Err(bad("ends inside a value"));
            }
            values.push((version, &rest[12..12 + n]));
            rest = &rest[12 + n..];
        }
    }
    if !rest.is_empty() {
        return Err(bad("has bytes after its end"));
    }
    Ok(CausalGetReply { context, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_and_not_found_round_trip() {
        let ctx = [1u8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7];
        let values = vec![(Version(5), b"a".to_vec()), (Version(9), b"".to_vec())];
        let mut out = Vec::new();
        assert_eq!(put_causal_get_reply(&mut out, 3, &ctx, &values), Status::Ok);
        let (f, n) = frame::parse(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!((f.op, f.aux, f.id), (op::GET | 0x80, 0, 3));
        let r = decode_causal_get_reply(f.body, true).unwrap();
        assert_eq!(r.context, &ctx);
        assert_eq!(r.values, vec![(5, &b"a"[..]), (9, &b""[..])]);

        let mut out = Vec::new();
        assert_eq!(
            put_causal_get_reply(&mut out, 4, &ctx, &[]),
            Status::NotFound
        );
        let (f, _) = frame::parse(&out).unwrap().unwrap();
        assert_eq!(f.aux, Status::NotFound as u8);
        let r = decode_causal_get_reply(f.body, false).unwrap();
        assert_eq!((r.context, r.values.len()), (&ctx[..], 0));
    }

    #[test]
    fn truncated_replies_are_errors_not_panics() {
        let mut out = Vec::new();
        put_causal_get_reply(&mut out, 1, &[1, 0, 0], &[(Version(1), b"xyz".to_vec())]);
        let body = &out[10..];
        for cut in 0..body.len() {
            assert!(
                decode_causal_get_reply(&body[..cut], true).is_err(),
                "cut {cut}"
            );
        }
        assert!(decode_causal_get_reply(body, true).is_ok());
    }
}
