//! The key-value API over HTTP (requirement 004): `PUT /kv/{key}` (the body is the value),
//! `GET /kv/{key}`, `DELETE /kv/{key}`.
//!
//! Each HTTP connection gets its own binary-protocol connection to the node's own port, so
//! a request goes through exactly the path a binary client's does: the same shard routing,
//! coordinator, consistency levels and limits. The cost is one loopback hop, which HTTP's
//! parsing dwarfs anyway.
//!
//! ```text
//!  key          the path after /kv/, percent-decoded (any bytes: %00..%FF), 1..=1024 bytes
//!  ?consistency=ONE|QUORUM|ALL       default: the node's (QUORUM)
//!  ?ttl=SECONDS                      PUT only; 0 or absent = no expiry
//!  Authorization: Bearer TOKEN       the node's client token, when it has one
//!  X-Dkv-Version: N                  in every answer that carries a version (GET, PUT, DELETE)
//!
//!  protocol status        HTTP
//!  OK                     200 (GET: the value as application/octet-stream; PUT, DELETE: empty)
//!  NOT_FOUND              404
//!  BAD_REQUEST, MALFORMED 400      KEY_TOO_LARGE  414      VALUE_TOO_LARGE  413
//!  UNAUTHORIZED           401      UNAVAILABLE, OVERLOADED, CLOCK_OFFSET, SHUTTING_DOWN  503
//!  TIMEOUT, MAYBE_APPLIED 504      STORAGE_ERROR  507      anything else    500
//! ```
//!
//! Error answers carry the protocol's status name and message as text (`UNAVAILABLE: ...`).

use super::{Head, Response};
use crate::client::{Client, ClientError};
use crate::limits::{KEY_SIZE_MAX, TTL_SECONDS_MAX};
use crate::protocol::{Consistency, Role, Status};
use std::net::SocketAddr;
use std::time::Duration;

/// How long a request through the node may take before the API answers 504 and drops the
/// connection to the node (longer than the coordinator's own timeouts).
const HTTP_NODE_TIMEOUT_MS: u64 = 10_000;

/// One HTTP connection's way into the node.
pub struct Api {
    node: SocketAddr,
    token_required: bool,
    /// The binary connection and the token its HELLO presented.
    conn: Option<(Client, Vec<u8>)>,
}

impl Api {
    /// No connection yet: the first request opens it.
    pub fn new(node: SocketAddr, token_required: bool) -> Api {
        Api {
            node,
            token_required,
            conn: None,
        }
    }

    /// Serve one request for `/kv/{raw_key}`.
    pub fn handle(&mut self, head: &Head, raw_key: &str, body: &[u8]) -> Response {
        let key = match percent_decode(raw_key) {
            Some(k) if !k.is_empty() => k,
            Some(_) => return Response::text(400, "an empty key: PUT /kv/KEY\n"),
            None => return Response::text(400, "a bad percent-encoding in the key\n"),
        };
        if key.len() > KEY_SIZE_MAX {
            return Response::text(
                414,
                &format!("a key is at most {KEY_SIZE_MAX} bytes, not {}\n", key.len()),
            );
        }
        let query = match Query::parse(&head.query) {
            Ok(q) => q,
            Err(why) => return Response::text(400, &format!("{why}\n")),
        };
        let token = head.bearer.clone().unwrap_or_default();
        if self.token_required && token.is_empty() {
            let mut r = Response::text(401, "this node wants Authorization: Bearer TOKEN\n");
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
            return r;
        }
        let client = match self.client(&token) {
            Ok(c) => c,
            Err(e) => return error_response(&e),
        };
        let result = match head.method.as_str() {
            "GET" => client
                .get(&key, query.consistency)
                .map(|found| match found {
                    Some((version, value)) => {
                        let mut r = Response::text(200, "");
                        r.content_type = "application/octet-stream";
                        r.body = value;
                        r.headers.push(("X-Dkv-Version", version.to_string()));
                        r
                    }
                    None => Response::text(404, "not found\n"),
                }),
            "PUT" => client
                .put(&key, body, query.ttl, query.consistency)
                .map(versioned),
            "DELETE" => client.delete(&key, query.consistency).map(versioned),
            _ => {
                let mut r = Response::text(405, "GET, PUT or DELETE /kv/KEY\n");
                r.headers.push(("Allow", "GET, PUT, DELETE".into()));
                return r;
            }
        };
        result.unwrap_or_else(|e| {
            if matches!(e, ClientError::Io(_) | ClientError::Protocol(_)) {
                self.conn = None; // reconnect for the next request
            }
            error_response(&e)
        })
    }

    /// The connection to the node, opened (again) with `token` if need be.
    fn client(&mut self, token: &[u8]) -> Result<&mut Client, ClientError> {
        if self.conn.as_ref().is_some_and(|(_, t)| t != token) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let c = Client::connect_as(self.node, Role::Client, 0, token)?;
            c.set_timeout(Some(Duration::from_millis(HTTP_NODE_TIMEOUT_MS)))?;
            self.conn = Some((c, token.to_vec()));
        }
        Ok(&mut self.conn.as_mut().expect("set above").0)
    }
}

fn versioned(version: u64) -> Response {
    let mut r = Response::text(200, "");
    r.headers.push(("X-Dkv-Version", version.to_string()));
    r
}

/// The HTTP status of a protocol status.
pub fn http_status(s: Status) -> u16 {
    match s {
        Status::Ok => 200,
        Status::NotFound => 404,
        Status::BadRequest | Status::Malformed => 400,
        Status::KeyTooLarge => 414,
        Status::ValueTooLarge => 413,
        Status::Unauthorized => 401,
        Status::Unavailable | Status::Overloaded | Status::ClockOffset | Status::ShuttingDown => {
            503
        }
        Status::Timeout | Status::MaybeApplied => 504,
        Status::StorageError => 507,
        // Siblings mode: the key has several values (a plain read cannot carry them), or a
        // write would leave too many: the request conflicts with the key's state.
        Status::Siblings | Status::TooManySiblings => 409,
        _ => 500,
    }
}

fn error_response(e: &ClientError) -> Response {
    match e {
        ClientError::Server { message, .. } => {
            let status = e.status().map_or(500, http_status);
            let name = e.status().map_or("STATUS", Status::name);
            Response::text(status, &format!("{name}: {message}\n"))
        }
        ClientError::Io(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
            Response::text(504, "the node did not answer in time\n")
        }
        other => Response::text(503, &format!("cannot reach the node: {other}\n")),
    }
}

/// The query parameters the API knows.
struct Query {
    consistency: Consistency,
    ttl: u32,
}

impl Query {
    fn parse(q: &str) -> Result<Query, String> {
        let mut out = Query {
            consistency: Consistency::Default,
            ttl: 0,
        };
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "consistency" => {
                    out.consistency = match v.to_ascii_uppercase().as_str() {
                        "ONE" => Consistency::One,
                        "QUORUM" => Consistency::Quorum,
                        "ALL" => Consistency::All,
                        _ => return Err(format!("consistency={v}: ONE, QUORUM or ALL")),
                    }
                }
                "ttl" => {
                    out.ttl = v
                        .parse()
                        .ok()
                        .filter(|t| *t <= TTL_SECONDS_MAX)
                        .ok_or_else(|| format!("ttl={v}: 0..={TTL_SECONDS_MAX} seconds"))?
                }
                _ => return Err(format!("unknown parameter {k:?} (consistency, ttl)")),
            }
        }
        Ok(out)
    }
}

/// Percent-decode a path segment (`%41` → `A`); `None` for a bad escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_to_any_bytes() {
        assert_eq!(percent_decode("greeting").unwrap(), b"greeting");
        assert_eq!(percent_decode("a%20b%2Fc").unwrap(), b"a b/c");
        assert_eq!(percent_decode("%00%ff").unwrap(), vec![0, 255]);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%é1"), None);
    }

    #[test]
    fn queries() {
        let q = Query::parse("consistency=all&ttl=60").unwrap();
        assert_eq!((q.consistency, q.ttl), (Consistency::All, 60));
        assert!(Query::parse("").is_ok());
        assert!(Query::parse("consistency=TWO").is_err());
        assert!(Query::parse("ttl=-1").is_err());
        assert!(Query::parse("ttl=999999999999").is_err());
        assert!(Query::parse("w=2").is_err());
    }

    #[test]
    fn statuses_map() {
        assert_eq!(http_status(Status::Unavailable), 503);
        assert_eq!(http_status(Status::Timeout), 504);
        assert_eq!(http_status(Status::ValueTooLarge), 413);
        assert_eq!(http_status(Status::Unauthorized), 401);
        assert_eq!(http_status(Status::NotFound), 404);
        assert_eq!(http_status(Status::Internal), 500);
        assert_eq!(http_status(Status::Siblings), 409);
        assert_eq!(http_status(Status::TooManySiblings), 409);
    }
}
