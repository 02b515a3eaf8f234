//! The HTTP listener (`kvd --metrics-listen ADDR`): `GET /metrics` ([`crate::metrics`]) and
//! the key-value API of requirement 004 ([`kv`]: `PUT`, `GET`, `DELETE /kv/{key}`).
//!
//! Threads, not the shards' event loops: HTTP is the operator's and the quick script's door,
//! not the fast path, and a thread per connection keeps it simple. Everything is bounded:
//!
//! ```text
//!  connections at once        HTTP_CONNECTIONS_MAX   (more: 503 and close)
//!  request head               HTTP_HEAD_MAX bytes    (more: 431 and close)
//!  request body               VALUE_SIZE_MAX bytes   (more: 413 and close, body unread)
//!  each read and write        HTTP_IO_TIMEOUT_MS     (a slow sender is dropped)
//!  requests per connection    HTTP_REQUESTS_PER_CONNECTION_MAX (keep-alive), then close
//! ```
//!
//! Only `Content-Length` bodies are read (no chunked uploads: 411). `Expect: 100-continue`
//! is answered before the body is read, so a client sending too large a body learns it at
//! once.

pub mod kv;

use crate::limits::VALUE_SIZE_MAX;
use crate::shard::NodeShared;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head (request line + headers).
pub const HTTP_HEAD_MAX: usize = 8 * 1024;

/// How long one read or write on an HTTP connection may take.
pub const HTTP_IO_TIMEOUT_MS: u64 = 5_000;

/// HTTP connections served at once.
pub const HTTP_CONNECTIONS_MAX: usize = 64;

/// Requests served on one keep-alive connection before it is closed.
pub const HTTP_REQUESTS_PER_CONNECTION_MAX: usize = 10_000;

/// Bytes of an unread request body drained after an early answer (413, 431), so that closing
/// the socket does not reset the connection before the client reads the answer.
const HTTP_DRAIN_MAX: usize = 64 * 1024;

/// What the listener's threads share.
struct Served {
    shared: Arc<NodeShared>,
    /// The node's binary port, for the key-value API's requests.
    node: SocketAddr,
    /// Whether the node wants a client token (then the API wants `Authorization: Bearer`).
    token_required: bool,
    wall_ms: fn() -> u64,
    open: AtomicUsize,
}

/// Bind `addr` now (so a bad address fails the start), then serve it on threads for the life
/// of the process. `node` is the node's own client address. Returns the bound address.
pub fn spawn(
    addr: SocketAddr,
    node: SocketAddr,
    token_required: bool,
    shared: Arc<NodeShared>,
    wall_ms: fn() -> u64,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let node = if node.ip().is_unspecified() {
        let lo: std::net::IpAddr = if node.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(lo, node.port())
    } else {
        node
    };
    let served = Arc::new(Served {
        shared,
        node,
        token_required,
        wall_ms,
        open: AtomicUsize::new(0),
    });
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => accept(s, &served),
                    Err(e) => {
                        log::warn!("http listener: {e}");
                        // Out of file descriptors, say: do not spin.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(local)
}

fn accept(mut s: TcpStream, served: &Arc<Served>) {
    if served.open.fetch_add(1, Ordering::AcqRel) >= HTTP_CONNECTIONS_MAX {
        served.open.fetch_sub(1, Ordering::AcqRel);
        let _ = s.set_write_timeout(Some(Duration::from_millis(HTTP_IO_TIMEOUT_MS)));
        let _ = respond(
            &mut s,
            &Response::text(503, "too many HTTP connections; retry\n"),
            false,
        );
        return;
    }
    let served = served.clone();
    let spawned = std::thread::Builder::new()
        .name("http-conn".into())
        .spawn(move || {
            if let Err(e) = serve(s, &served) {
                log::debug!("http connection: {e}");
            }
            served.open.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        log::warn!("http: cannot start a connection thread: {e}");
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, still percent-encoded.
    pub path: String,
    /// The query string (after `?`), if any.
    pub query: String,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding` was given (not supported).
    pub chunked: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The token of `Authorization: Bearer TOKEN`, if any.
    pub bearer: Option<Vec<u8>>,
    /// The client asked to close (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub close: bool,
}

/// Parse a request head (without its blank line).
pub fn parse_head(head: &[u8]) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err("a request line is METHOD TARGET HTTP/1.x");
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err("only HTTP/1.0 and HTTP/1.1 are served"),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut h = Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        content_length: None,
        chunked: false,
        expect_continue: false,
        bearer: None,
        close: http10,
    };
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return Err("a header line without ':'");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                h.content_length = Some(value.parse().map_err(|_| "a bad Content-Length")?)
            }
            "transfer-encoding" => h.chunked = true,
            "expect" => h.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "authorization" => {
                let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
                if scheme.eq_ignore_ascii_case("bearer") {
                    h.bearer = Some(token.trim().as_bytes().to_vec());
                }
            }
            "connection" => {
                if value.eq_ignore_ascii_case("close") {
                    h.close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    h.close = false;
                }
            }
            _ => {}
        }
    }
    Ok(h)
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers (name, value).
    pub headers: Vec<(&'static str, String)>,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A text answer.
    pub fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

fn respond(s: &mut TcpStream, r: &Response, keep_alive: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (name, value) in &r.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    s.write_all(&out)?;
    s.flush()
}

/// Answer early and close: say it, stop sending, drain what the client is still sending.
fn refuse(s: &mut TcpStream, r: &Response) -> io::Result<()> {
    respond(s, r, false)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < HTTP_DRAIN_MAX {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// Serve one connection: requests until it closes, asks to, errs, or reaches its limit.
fn serve(mut s: TcpStream, served: &Served) -> io::Result<()> {
    let timeout = Some(Duration::from_millis(HTTP_IO_TIMEOUT_MS));
    s.set_read_timeout(timeout)?;
    s.set_write_timeout(timeout)?;
    s.set_nodelay(true)?;
    let mut api = kv::Api::new(served.node, served.token_required);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    for served_count in 1..=HTTP_REQUESTS_PER_CONNECTION_MAX {
        // The head.
        let end = loop {
            if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break end;
            }
            if buf.len() > HTTP_HEAD_MAX {
                return refuse(&mut s, &Response::text(431, "request head too large\n"));
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = match parse_head(&buf[..end]) {
            Ok(h) => h,
            Err(why) => return refuse(&mut s, &Response::text(400, &format!("{why}\n"))),
        };
        buf.drain(..end + 4);
        if head.chunked {
            return refuse(
                &mut s,
                &Response::text(411, "send the body with a Content-Length\n"),
            );
        }
        let length = head.content_length.unwrap_or(0);
        if length > VALUE_SIZE_MAX {
            return refuse(
                &mut s,
                &Response::text(
                    413,
                    &format!("a body is at most {VALUE_SIZE_MAX} bytes, not {length}\n"),
                ),
            );
        }
        if head.expect_continue && length > 0 {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        while buf.len() < length {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let response = route(&head, &body, served, &mut api);
        let keep_alive = !head.close && served_count < HTTP_REQUESTS_PER_CONNECTION_MAX;
        respond(&mut s, &response, keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
    }
    Ok(())
}

fn route(head: &Head, body: &[u8], served: &Served, api: &mut kv::Api) -> Response {
    if head.path == "/metrics" {
        if head.method != "GET" {
            return Response::text(405, "GET /metrics\n");
        }
        let mut r = Response::text(200, "");
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r.body = crate::metrics::render(&served.shared, (served.wall_ms)()).into_bytes();
        return r;
    }
    if let Some(key) = head.path.strip_prefix("/kv/") {
        return api.handle(head, key, body);
    }
    Response::text(404, "try /kv/KEY or /metrics\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let h = parse_head(
            b"PUT /kv/a%20b?consistency=ONE&ttl=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
              Authorization: Bearer s3cret\r\nExpect: 100-continue",
        )
        .unwrap();
        assert_eq!(h.method, "PUT");
        assert_eq!(h.path, "/kv/a%20b");
        assert_eq!(h.query, "consistency=ONE&ttl=5");
        assert_eq!(h.content_length, Some(5));
        assert_eq!(h.bearer.as_deref(), Some(&b"s3cret"[..]));
        assert!(h.expect_continue && !h.close && !h.chunked);
        assert!(parse_head(b"GET / HTTP/1.0").unwrap().close);
        assert!(
            !parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive")
                .unwrap()
                .close
        );
        assert!(
            parse_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked")
                .unwrap()
                .chunked
        );
        for bad in [
            &b"GET /metrics"[..],
            b"GET / HTTP/2",
            b"GET  / HTTP/1.1",
            b"GET / HTTP/1.1\r\nno colon",
            b"GET / HTTP/1.1\r\nContent-Length: -1",
            b"\xff / HTTP/1.1",
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
    }
}
