//! The three wire protocols kvbench speaks, reduced to what a GET/SET/DEL benchmark needs:
//! encode a request straight into a connection's output buffer, and find one whole reply at the
//! front of its input buffer ("need more bytes" is `Ok(None)`, never an error).
//!
//! dkv (v1, `src/protocol/`): binary frames, replies matched by request id, any order. Against
//! a `--conflicts siblings` cluster the workload speaks the causal protocol (protocol.md § 19):
//! GETs carry the causal flag and their replies the context and every sibling, PUTs and
//! DELETEs the context of the GET before them.
//!
//! RESP (Redis), replies in request order:
//!
//! ```text
//! GET  *2\r\n$3\r\nGET\r\n$<klen>\r\n<key>\r\n                 -> $<n>\r\n<value>\r\n | $-1\r\n
//! SET  *3\r\n$3\r\nSET\r\n$<klen>\r\n<key>\r\n$<n>\r\n<value>\r\n  -> +OK\r\n
//!      (*5 ... $2\r\nEX\r\n$<len>\r\n<ttl>\r\n with a TTL)
//! DEL  *2\r\n$3\r\nDEL\r\n$<klen>\r\n<key>\r\n                 -> :<count>\r\n
//! errors: -<WORD> <message>\r\n
//! ```
//!
//! memcached text protocol, replies in request order:
//!
//! ```text
//! get <key>\r\n                         -> VALUE <key> <flags> <n>\r\n<value>\r\nEND\r\n | END\r\n
//! set <key> 0 <exptime> <n>\r\n<value>\r\n -> STORED\r\n
//! delete <key>\r\n                      -> DELETED\r\n | NOT_FOUND\r\n
//! errors: ERROR\r\n | CLIENT_ERROR <msg>\r\n | SERVER_ERROR <msg>\r\n
//! ```

use crate::workload::{digits, put_key};
use dkv::protocol::message::Response;
use dkv::protocol::{frame, op, Request, Role, Status, FLAG_CAUSAL, PROTOCOL_VERSION};
use memchr::memmem;

/// A reply's status code as counted in the reports: 0..=255 are dkv status bytes, the rest are
/// the client-side and foreign-protocol codes below.
pub type Code = u16;

/// The TCP connect failed or was refused.
pub const CODE_CONNECT_FAILED: Code = 256;
/// The connection closed or failed with the request in flight.
pub const CODE_CONNECTION_LOST: Code = 257;
/// The server sent bytes that are not a valid reply.
pub const CODE_PROTOCOL_ERROR: Code = 258;
/// No reply before the end-of-run drain deadline.
pub const CODE_CLIENT_TIMEOUT: Code = 259;
/// RESP `-ERR`.
pub const CODE_RESP_ERR: Code = 260;
/// RESP `-OOM`.
pub const CODE_RESP_OOM: Code = 261;
/// RESP `-LOADING` / `-BUSY`.
pub const CODE_RESP_BUSY: Code = 262;
/// Any other RESP error word.
pub const CODE_RESP_OTHER: Code = 263;
/// memcached `ERROR`.
pub const CODE_MC_ERROR: Code = 264;
/// memcached `CLIENT_ERROR`.
pub const CODE_MC_CLIENT_ERROR: Code = 265;
/// memcached `SERVER_ERROR`.
pub const CODE_MC_SERVER_ERROR: Code = 266;
/// memcached `NOT_STORED` / `EXISTS`.
pub const CODE_MC_NOT_STORED: Code = 267;
/// Size of a per-code counter array.
pub const CODE_COUNT: usize = 268;

/// The name of a code, for the reports.
pub fn code_name(code: Code) -> String {
    match code {
        0..=255 => match Status::from_u8(code as u8) {
            Some(s) => s.name().to_string(),
            None => format!("STATUS_0x{code:02x}"),
        },
        CODE_CONNECT_FAILED => "CONNECT_FAILED".into(),
        CODE_CONNECTION_LOST => "CONNECTION_LOST".into(),
        CODE_PROTOCOL_ERROR => "PROTOCOL_ERROR".into(),
        CODE_CLIENT_TIMEOUT => "CLIENT_TIMEOUT".into(),
        CODE_RESP_ERR => "RESP_ERR".into(),
        CODE_RESP_OOM => "RESP_OOM".into(),
        CODE_RESP_BUSY => "RESP_BUSY".into(),
        CODE_RESP_OTHER => "RESP_ERROR".into(),
        CODE_MC_ERROR => "MC_ERROR".into(),
        CODE_MC_CLIENT_ERROR => "MC_CLIENT_ERROR".into(),
        CODE_MC_SERVER_ERROR => "MC_SERVER_ERROR".into(),
        CODE_MC_NOT_STORED => "MC_NOT_STORED".into(),
        _ => format!("CODE_{code}"),
    }
}

/// Longest reply header line (RESP or memcached) accepted before the stream is declared broken.
pub const LINE_SIZE_MAX: usize = 4096;

/// The request id kvbench uses for its dkv HELLO (slot ids never reach it).
pub const HELLO_ID: u32 = u32::MAX;

/// Which protocol a run speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// dkv binary frames.
    Dkv,
    /// Redis RESP2.
    Resp,
    /// memcached text protocol.
    Memcache,
}

impl Proto {
    /// Parse `dkv`, `resp` (or `redis`), `memcache` (or `memcached`).
    pub fn parse(s: &str) -> Result<Proto, String> {
        match s.to_ascii_lowercase().as_str() {
            "dkv" => Ok(Proto::Dkv),
            "resp" | "redis" => Ok(Proto::Resp),
            "memcache" | "memcached" => Ok(Proto::Memcache),
            _ => Err(format!("unknown --protocol {s:?} (dkv, resp, memcache)")),
        }
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Dkv => "dkv",
            Proto::Resp => "resp",
            Proto::Memcache => "memcache",
        }
    }

    /// Whether replies come back in request order (else they are matched by id).
    pub fn in_order(self) -> bool {
        !matches!(self, Proto::Dkv)
    }
}

/// How a request ended, as seen by the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success.
    Ok,
    /// A GET (or DEL) of a key with no value: a normal miss, not an error.
    NotFound,
    /// An error, by code.
    Error(Code),
}

/// One reply found at the front of the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    /// dkv request id; 0 for in-order protocols.
    pub id: u32,
    /// What happened.
    pub outcome: Outcome,
    /// A GET's value, a HELLO's whole OK body (empty otherwise).
    pub value: &'a [u8],
}

/// The stream cannot continue: the connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The code to count it under.
    pub code: Code,
    /// What was wrong, for the log.
    pub message: String,
}

fn broken(message: String) -> Broken {
    Broken {
        code: CODE_PROTOCOL_ERROR,
        message,
    }
}

/// The two parts of a value as sent: a `--check` write id head and a slice of the value pool.
#[derive(Clone, Copy, Debug)]
pub struct Value<'a> {
    /// Written first.
    pub head: &'a [u8],
    /// Written after `head`.
    pub tail: &'a [u8],
}

impl Value<'_> {
    /// Total length.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

/// Append the decimal digits of `n`.
#[inline]
fn put_uint(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// RESP bulk string header for `len` bytes.
#[inline]
fn put_bulk_len(out: &mut Vec<u8>, len: usize) {
    out.push(b'$');
    put_uint(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// Encodes requests for one protocol; the key is `key_index` formatted to `key_size` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Encoder {
    /// Protocol.
    pub proto: Proto,
    /// Key length in bytes.
    pub key_size: usize,
}

impl Encoder {
    /// The dkv HELLO that opens every dkv connection, with the node's client token (if any).
    pub fn hello(&self, out: &mut Vec<u8>, token: &[u8]) {
        Request::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id: 0,
            token,
        }
        .encode(HELLO_ID, out);
    }

    /// Append a GET. `aux` is the dkv flags byte (consistency bits).
    #[inline]
    pub fn get(&self, out: &mut Vec<u8>, id: u32, aux: u8, key: u64) {
        match self.proto {
            Proto::Dkv => {
                frame::put_header(out, op::GET, aux, id, 2 + self.key_size);
                out.extend_from_slice(&(self.key_size as u16).to_be_bytes());
                put_key(out, key, self.key_size);
            }
            Proto::Resp => {
                out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                put_bulk_len(out, self.key_size);
                put_key(out, key, self.key_size);
                out.extend_from_slice(b"\r\n");
            }
            Proto::Memcache => {
                out.extend_from_slice(b"get ");
                put_key(out, key, self.key_size);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Append a PUT/SET with an optional TTL (0 = none).
    #[inline]
    pub fn put(&self, out: &mut Vec<u8>, id: u32, aux: u8, key: u64, value: Value<'_>, ttl: u32) {
        match self.proto {
            Proto::Dkv => {
                frame::put_header(out, op::PUT, aux, id, 2 + self.key_size + 4 + value.len());
                out.extend_from_slice(&(self.key_size as u16).to_be_bytes());
                put_key(out, key, self.key_size);
                out.extend_from_slice(&ttl.to_be_bytes());
                out.extend_from_slice(value.head);
                out.extend_from_slice(value.tail);
            }
            Proto::Resp => {
                out.extend_from_slice(if ttl > 0 {
                    b"*5\r\n$3\r\nSET\r\n"
                } else {
                    b"*3\r\n$3\r\nSET\r\n"
                });
                put_bulk_len(out, self.key_size);
                put_key(out, key, self.key_size);
                out.extend_from_slice(b"\r\n");
                put_bulk_len(out, value.len());
                out.extend_from_slice(value.head);
                out.extend_from_slice(value.tail);
                out.extend_from_slice(b"\r\n");
                if ttl > 0 {
                    out.extend_from_slice(b"$2\r\nEX\r\n");
                    put_bulk_len(out, digits(ttl as u64));
                    put_uint(out, ttl as u64);
                    out.extend_from_slice(b"\r\n");
                }
            }
            Proto::Memcache => {
                out.extend_from_slice(b"set ");
                put_key(out, key, self.key_size);
                out.extend_from_slice(b" 0 ");
                put_uint(out, ttl as u64);
                out.push(b' ');
                put_uint(out, value.len() as u64);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(value.head);
                out.extend_from_slice(value.tail);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Append a dkv GET with the causal flag (siblings mode); `aux` holds the consistency.
    #[inline]
    pub fn causal_get(&self, out: &mut Vec<u8>, id: u32, aux: u8, key: u64) {
        debug_assert_eq!(self.proto, Proto::Dkv, "the causal protocol is dkv's");
        self.get(out, id, aux | FLAG_CAUSAL, key);
    }

    /// Append a dkv PUT with the causal flag and `context` (what a causal GET returned).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn causal_put(
        &self,
        out: &mut Vec<u8>,
        id: u32,
        aux: u8,
        key: u64,
        context: &[u8],
        value: Value<'_>,
        ttl: u32,
    ) {
        debug_assert_eq!(self.proto, Proto::Dkv, "the causal protocol is dkv's");
        let body = 2 + self.key_size + 4 + 2 + context.len() + value.len();
        frame::put_header(out, op::PUT, aux | FLAG_CAUSAL, id, body);
        out.extend_from_slice(&(self.key_size as u16).to_be_bytes());
        put_key(out, key, self.key_size);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(context.len() as u16).to_be_bytes());
        out.extend_from_slice(context);
        out.extend_from_slice(value.head);
        out.extend_from_slice(value.tail);
    }

    /// Append a dkv DELETE with the causal flag and `context`.
    #[inline]
    pub fn causal_del(&self, out: &mut Vec<u8>, id: u32, aux: u8, key: u64, context: &[u8]) {
        debug_assert_eq!(self.proto, Proto::Dkv, "the causal protocol is dkv's");
        let body = 2 + self.key_size + 2 + context.len();
        frame::put_header(out, op::DELETE, aux | FLAG_CAUSAL, id, body);
        out.extend_from_slice(&(self.key_size as u16).to_be_bytes());
        put_key(out, key, self.key_size);
        out.extend_from_slice(&(context.len() as u16).to_be_bytes());
        out.extend_from_slice(context);
    }

    /// Append a DELETE/DEL.
    #[inline]
    pub fn del(&self, out: &mut Vec<u8>, id: u32, aux: u8, key: u64) {
        match self.proto {
            Proto::Dkv => {
                frame::put_header(out, op::DELETE, aux, id, 2 + self.key_size);
                out.extend_from_slice(&(self.key_size as u16).to_be_bytes());
                put_key(out, key, self.key_size);
            }
            Proto::Resp => {
                out.extend_from_slice(b"*2\r\n$3\r\nDEL\r\n");
                put_bulk_len(out, self.key_size);
                put_key(out, key, self.key_size);
                out.extend_from_slice(b"\r\n");
            }
            Proto::Memcache => {
                out.extend_from_slice(b"delete ");
                put_key(out, key, self.key_size);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Find one reply at the front of `buf`: the reply and the bytes it used, `Ok(None)` when more
/// bytes are needed, or why the stream is broken.
#[cfg(test)]
pub fn parse(proto: Proto, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, Broken> {
    parse_reply(proto, false, buf)
}

/// [`parse`], where every dkv GET was sent with the causal flag (`causal_gets`, siblings
/// mode): the `value` of a GET's OK or NOT_FOUND reply is then its whole body (context and
/// siblings, see [`causal_get_body`]).
#[inline]
pub fn parse_reply(
    proto: Proto,
    causal_gets: bool,
    buf: &[u8],
) -> Result<Option<(Reply<'_>, usize)>, Broken> {
    match proto {
        Proto::Dkv => parse_dkv(buf, causal_gets),
        Proto::Resp => parse_resp(buf),
        Proto::Memcache => parse_memcache(buf),
    }
}

/// The context and the number of siblings of a causal GET reply's body (protocol.md § 19.1;
/// `found`: OK, else NOT_FOUND with no sibling), walking every sibling so that a body out of
/// layout is `None`. Allocates nothing.
pub fn causal_get_body(body: &[u8], found: bool) -> Option<(&[u8], usize)> {
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize)
    };
    let ctx_len = u16_at(0)?;
    let context = body.get(2..2 + ctx_len)?;
    let mut at = 2 + ctx_len;
    if !found {
        return (at == body.len()).then_some((context, 0));
    }
    let count = u16_at(at)?;
    at += 2;
    for _ in 0..count {
        let head = body.get(at + 8..at + 12)?;
        let len = u32::from_be_bytes(head.try_into().ok()?) as usize;
        at = at.checked_add(12 + len)?;
    }
    (at == body.len() && count > 0).then_some((context, count))
}

fn parse_dkv(buf: &[u8], causal_gets: bool) -> Result<Option<(Reply<'_>, usize)>, Broken> {
    let (f, n) = match frame::parse(buf) {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(None),
        Err(e) => return Err(broken(format!("bad frame from server: {e}"))),
    };
    let r = Response::from_frame(&f)
        .ok_or_else(|| broken(format!("request frame 0x{:02x} from server", f.op)))?;
    if r.op == 0 {
        return Err(Broken {
            code: r.status as Code,
            message: format!("connection error from server: {}", r.message()),
        });
    }
    let outcome = match r.status() {
        Some(Status::Ok) => Outcome::Ok,
        Some(Status::NotFound) => Outcome::NotFound,
        _ => Outcome::Error(r.status as Code),
    };
    let value = if causal_gets && r.op == op::GET {
        // Context and siblings: the engine reads them (`causal_get_body`).
        match outcome {
            Outcome::Ok | Outcome::NotFound => r.body,
            Outcome::Error(_) => &[],
        }
    } else if outcome == Outcome::Ok && r.op == op::GET {
        match r.version_and_rest() {
            Some((_, v)) => v,
            None => return Err(broken("GET reply without a version".into())),
        }
    } else if outcome == Outcome::Ok && r.op == op::HELLO {
        // Which shard the connection landed on (shard-aware connections check it).
        r.body
    } else {
        &[]
    };
    Ok(Some((
        Reply {
            id: r.id,
            outcome,
            value,
        },
        n,
    )))
}

/// The line at the front of `buf` without its `\r\n`, and the bytes up to and including it.
#[inline]
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, Broken> {
    match memmem::find(&buf[..buf.len().min(LINE_SIZE_MAX)], b"\r\n") {
        Some(i) => Ok(Some((&buf[..i], i + 2))),
        None if buf.len() >= LINE_SIZE_MAX => Err(broken(format!(
            "reply line longer than {LINE_SIZE_MAX} bytes"
        ))),
        None => Ok(None),
    }
}

fn parse_int(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `len` bytes of data followed by `\r\n` at `buf[at..]`: the data, or `None` when incomplete.
fn data(buf: &[u8], at: usize, len: usize) -> Result<Option<&[u8]>, Broken> {
    let end = at + len;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(broken("data block not followed by CRLF".into()));
    }
    Ok(Some(&buf[at..end]))
}

fn parse_resp(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, Broken> {
    let Some((l, n)) = line(buf)? else {
        return Ok(None);
    };
    let reply = |outcome, value| Reply {
        id: 0,
        outcome,
        value,
    };
    match l.first() {
        Some(b'+') | Some(b':') => Ok(Some((reply(Outcome::Ok, &[]), n))),
        Some(b'_') => Ok(Some((reply(Outcome::NotFound, &[]), n))),
        Some(b'-') => {
            let word = l[1..].split(|b| *b == b' ').next().unwrap_or(b"");
            let code = match word {
                b"ERR" => CODE_RESP_ERR,
                b"OOM" => CODE_RESP_OOM,
                b"LOADING" | b"BUSY" => CODE_RESP_BUSY,
                _ => CODE_RESP_OTHER,
            };
            Ok(Some((reply(Outcome::Error(code), &[]), n)))
        }
        Some(b'$') => {
            let len = parse_int(&l[1..])
                .ok_or_else(|| broken(format!("bad bulk length {:?}", lossy(l))))?;
            if len == -1 {
                return Ok(Some((reply(Outcome::NotFound, &[]), n)));
            }
            if len < 0 || len as usize > dkv::limits::FRAME_SIZE_MAX {
                return Err(broken(format!("bulk length {len} out of range")));
            }
            let len = len as usize;
            Ok(data(buf, n, len)?.map(|v| (reply(Outcome::Ok, v), n + len + 2)))
        }
        _ => Err(broken(format!("unexpected RESP reply {:?}", lossy(l)))),
    }
}

fn parse_memcache(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, Broken> {
    let Some((l, n)) = line(buf)? else {
        return Ok(None);
    };
    let reply = |outcome, value| Reply {
        id: 0,
        outcome,
        value,
    };
    if let Some(rest) = l.strip_prefix(b"VALUE ") {
        // VALUE <key> <flags> <bytes> [<cas>]
        let len = rest
            .split(|b| *b == b' ')
            .nth(2)
            .and_then(parse_int)
            .filter(|n| *n >= 0 && *n as usize <= dkv::limits::FRAME_SIZE_MAX)
            .ok_or_else(|| broken(format!("bad VALUE line {:?}", lossy(l))))?
            as usize;
        let Some(value) = data(buf, n, len)? else {
            return Ok(None);
        };
        let end = n + len + 2;
        if buf.len() < end + 5 {
            return Ok(None);
        }
        if &buf[end..end + 5] != b"END\r\n" {
            return Err(broken("VALUE not followed by END".into()));
        }
        return Ok(Some((reply(Outcome::Ok, value), end + 5)));
    }
    let outcome = match l {
        b"STORED" | b"DELETED" | b"TOUCHED" => Outcome::Ok,
        b"END" | b"NOT_FOUND" => Outcome::NotFound,
        b"NOT_STORED" | b"EXISTS" => Outcome::Error(CODE_MC_NOT_STORED),
        b"ERROR" => Outcome::Error(CODE_MC_ERROR),
        _ if l.starts_with(b"CLIENT_ERROR") => Outcome::Error(CODE_MC_CLIENT_ERROR),
        _ if l.starts_with(b"SERVER_ERROR") => Outcome::Error(CODE_MC_SERVER_ERROR),
        _ => return Err(broken(format!("unexpected memcached reply {:?}", lossy(l)))),
    };
    Ok(Some((reply(outcome, &[]), n)))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(proto: Proto) -> Encoder {
        Encoder { proto, key_size: 4 }
    }

    const V: Value<'static> = Value {
        head: b"ab",
        tail: b"c",
    };

    #[test]
    fn resp_requests_are_exact() {
        let mut out = Vec::new();
        enc(Proto::Resp).get(&mut out, 0, 0, 7);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$4\r\nk007\r\n");
        out.clear();
        enc(Proto::Resp).put(&mut out, 0, 0, 7, V, 0);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$4\r\nk007\r\n$3\r\nabc\r\n");
        out.clear();
        enc(Proto::Resp).put(&mut out, 0, 0, 7, V, 60);
        assert_eq!(
            out,
            b"*5\r\n$3\r\nSET\r\n$4\r\nk007\r\n$3\r\nabc\r\n$2\r\nEX\r\n$2\r\n60\r\n"
        );
        out.clear();
        enc(Proto::Resp).del(&mut out, 0, 0, 7);
        assert_eq!(out, b"*2\r\n$3\r\nDEL\r\n$4\r\nk007\r\n");
    }

    #[test]
    fn memcache_requests_are_exact() {
        let mut out = Vec::new();
        enc(Proto::Memcache).get(&mut out, 0, 0, 7);
        assert_eq!(out, b"get k007\r\n");
        out.clear();
        enc(Proto::Memcache).put(&mut out, 0, 0, 7, V, 5);
        assert_eq!(out, b"set k007 0 5 3\r\nabc\r\n");
        out.clear();
        enc(Proto::Memcache).del(&mut out, 0, 0, 7);
        assert_eq!(out, b"delete k007\r\n");
    }

    #[test]
    fn dkv_requests_decode_with_the_library() {
        let mut out = Vec::new();
        enc(Proto::Dkv).put(&mut out, 9, 3, 7, V, 60);
        let (f, n) = frame::parse(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(f.id, 9);
        assert_eq!(
            Request::decode(&f).unwrap(),
            Request::Put {
                key: b"k007",
                value: b"abc",
                ttl_seconds: 60,
                consistency: dkv::protocol::Consistency::All,
            }
        );
        out.clear();
        enc(Proto::Dkv).get(&mut out, 1, 1, 7);
        enc(Proto::Dkv).del(&mut out, 2, 0, 7);
        let (f, n) = frame::parse(&out).unwrap().unwrap();
        assert!(matches!(
            Request::decode(&f).unwrap(),
            Request::Get { key: b"k007", .. }
        ));
        let (f, _) = frame::parse(&out[n..]).unwrap().unwrap();
        assert!(matches!(
            Request::decode(&f).unwrap(),
            Request::Delete { key: b"k007", .. }
        ));
    }

    #[test]
    fn resp_replies_parse_piecewise() {
        let stream = b"+OK\r\n$3\r\nabc\r\n$-1\r\n:1\r\n-ERR nope\r\n-OOM x\r\n";
        let mut got = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            // Every strict prefix of the next reply is "need more bytes".
            let (r, n) = parse(Proto::Resp, &stream[at..]).unwrap().unwrap();
            for cut in 0..n {
                assert_eq!(parse(Proto::Resp, &stream[at..at + cut]), Ok(None));
            }
            got.push((r.outcome, r.value.to_vec()));
            at += n;
        }
        assert_eq!(
            got,
            vec![
                (Outcome::Ok, vec![]),
                (Outcome::Ok, b"abc".to_vec()),
                (Outcome::NotFound, vec![]),
                (Outcome::Ok, vec![]),
                (Outcome::Error(CODE_RESP_ERR), vec![]),
                (Outcome::Error(CODE_RESP_OOM), vec![]),
            ]
        );
        assert!(parse(Proto::Resp, b"*1\r\n").is_err());
        assert!(parse(Proto::Resp, b"$3\r\nabcXY").is_err());
        assert!(parse(Proto::Resp, b"$-5\r\n").is_err());
    }

    #[test]
    fn memcache_replies_parse_piecewise() {
        let stream = b"VALUE k007 0 3\r\nabc\r\nEND\r\nEND\r\nSTORED\r\nDELETED\r\nNOT_FOUND\r\nSERVER_ERROR out of memory\r\n";
        let mut got = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let (r, n) = parse(Proto::Memcache, &stream[at..]).unwrap().unwrap();
            for cut in 0..n {
                assert_eq!(parse(Proto::Memcache, &stream[at..at + cut]), Ok(None));
            }
            got.push((r.outcome, r.value.to_vec()));
            at += n;
        }
        assert_eq!(
            got,
            vec![
                (Outcome::Ok, b"abc".to_vec()),
                (Outcome::NotFound, vec![]),
                (Outcome::Ok, vec![]),
                (Outcome::Ok, vec![]),
                (Outcome::NotFound, vec![]),
                (Outcome::Error(CODE_MC_SERVER_ERROR), vec![]),
            ]
        );
        assert!(parse(Proto::Memcache, b"VALUE k 0 x\r\n").is_err());
        assert!(parse(Proto::Memcache, b"WHAT\r\n").is_err());
    }

    #[test]
    fn dkv_replies_parse() {
        use dkv::protocol::message::{put_connection_error, put_error, put_ok, put_reply};
        let mut out = Vec::new();
        put_ok(&mut out, op::GET, 5, &[&7u64.to_be_bytes(), b"val"]);
        put_reply(&mut out, op::GET, Status::NotFound, 6, &[]);
        put_error(&mut out, op::PUT, 7, Status::Overloaded, "busy");
        let (r, n) = parse(Proto::Dkv, &out).unwrap().unwrap();
        assert_eq!((r.id, r.outcome, r.value), (5, Outcome::Ok, &b"val"[..]));
        let (r, m) = parse(Proto::Dkv, &out[n..]).unwrap().unwrap();
        assert_eq!((r.id, r.outcome), (6, Outcome::NotFound));
        let (r, _) = parse(Proto::Dkv, &out[n + m..]).unwrap().unwrap();
        assert_eq!(r.outcome, Outcome::Error(Status::Overloaded as Code));
        out.clear();
        put_connection_error(&mut out, Status::TooManyConnections, "full");
        let e = parse(Proto::Dkv, &out).unwrap_err();
        assert_eq!(e.code, Status::TooManyConnections as Code);
        assert_eq!(code_name(e.code), "TOO_MANY_CONNECTIONS");
    }

    #[test]
    fn dkv_causal_requests_decode_with_the_library() {
        let ctx = [1, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut out = Vec::new();
        let e = enc(Proto::Dkv);
        e.causal_get(&mut out, 1, 2, 7);
        e.causal_put(&mut out, 2, 0, 7, &ctx, V, 60);
        e.causal_del(&mut out, 3, 3, 7, &ctx);
        e.causal_put(&mut out, 4, 1, 7, &[], V, 0);
        let mut got = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let (f, n) = frame::parse(&out[at..]).unwrap().unwrap();
            got.push(Request::decode(&f).unwrap());
            at += n;
        }
        use dkv::protocol::Consistency::{All, Default, One, Quorum};
        let want = vec![
            Request::CausalGet {
                key: b"k007",
                consistency: Quorum,
            },
            Request::CausalPut {
                key: b"k007",
                value: b"abc",
                ttl_seconds: 60,
                context: &ctx,
                consistency: Default,
            },
            Request::CausalDelete {
                key: b"k007",
                context: &ctx,
                consistency: All,
            },
            Request::CausalPut {
                key: b"k007",
                value: b"abc",
                ttl_seconds: 0,
                context: &[],
                consistency: One,
            },
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn dkv_causal_get_replies_parse() {
        use dkv::protocol::siblings::put_causal_get_reply;
        use dkv::version::Version;
        let ctx = [1, 0, 0];
        let two = [(Version(5), b"a".to_vec()), (Version(6), b"bc".to_vec())];
        let mut out = Vec::new();
        put_causal_get_reply(&mut out, 8, &ctx, &two);
        put_causal_get_reply(&mut out, 9, &ctx, &[]);
        let (r, n) = parse_reply(Proto::Dkv, true, &out).unwrap().unwrap();
        assert_eq!((r.id, r.outcome), (8, Outcome::Ok));
        assert_eq!(causal_get_body(r.value, true), Some((&ctx[..], 2)));
        for cut in 0..r.value.len() {
            assert_eq!(causal_get_body(&r.value[..cut], true), None, "cut {cut}");
        }
        let (r, _) = parse_reply(Proto::Dkv, true, &out[n..]).unwrap().unwrap();
        assert_eq!((r.id, r.outcome), (9, Outcome::NotFound));
        assert_eq!(causal_get_body(r.value, false), Some((&ctx[..], 0)));
        assert_eq!(causal_get_body(&[0, 3, 1, 0], false), None);
        // OK with no sibling is out of layout (protocol.md § 19.1: count >= 1).
        assert_eq!(causal_get_body(&[0, 0, 0, 0], true), None);
    }

    #[test]
    fn dkv_hello_reply_keeps_its_body() {
        use dkv::client::HelloInfo;
        use dkv::protocol::message::put_ok;
        let mut out = Vec::new();
        let body = [0, 1, 0, 0, 0, 9, 0, 1, 0, 2];
        put_ok(&mut out, op::HELLO, HELLO_ID, &[&body]);
        let (r, _) = parse(Proto::Dkv, &out).unwrap().unwrap();
        assert_eq!((r.id, r.outcome), (HELLO_ID, Outcome::Ok));
        let h = HelloInfo::parse(r.value).expect("a HELLO body");
        assert_eq!((h.version, h.node_id, h.shard, h.shards), (1, 9, 1, 2));
    }
}
