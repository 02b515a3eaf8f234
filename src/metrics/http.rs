//! The metrics listener: a small HTTP/1.1 server on its own thread that answers
//! `GET /metrics` with [`super::render`] and closes the connection.
//!
//! A thread, not the shards' event loops: a scrape comes every few seconds, renders in well
//! under a millisecond, and must not share a turn with client requests. It serves one
//! connection at a time, each bounded: the request head may be at most
//! [`METRICS_REQUEST_HEAD_MAX`] bytes and must arrive, like the reply must leave, within
//! [`METRICS_IO_TIMEOUT_MS`]; a scraper that stalls is dropped after that, so it can delay the
//! next scrape by at most that long and never grows the node's memory.
//!
//! ```text
//!  GET /metrics HTTP/1.1  → 200, Content-Type: text/plain; version=0.0.4
//!  GET /anything-else     → 404        HEAD / POST / ...  → 405
//!  head over the limit    → 431        not HTTP           → 400
//! ```

use crate::shard::NodeShared;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head (request line + headers) the metrics listener reads.
pub const METRICS_REQUEST_HEAD_MAX: usize = 8 * 1024;

/// How long a metrics connection may take to send its request, and to take the reply.
pub const METRICS_IO_TIMEOUT_MS: u64 = 2_000;

/// Bytes of an oversized request read and dropped after its 431 answer, so that closing the
/// socket does not reset the connection before the client has read the answer.
const METRICS_DRAIN_MAX: usize = 64 * 1024;

/// Bind `addr` now (so a bad address fails the start), then serve it on a thread for the
/// life of the process. Returns the bound address.
pub fn spawn(
    addr: SocketAddr,
    shared: Arc<NodeShared>,
    wall_ms: fn() -> u64,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = serve(s, &shared, wall_ms()) {
                            log::debug!("metrics connection: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("metrics listener: {e}");
                        // Out of file descriptors, say: do not spin.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(local)
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics,
    NotFound,
    BadMethod,
    Malformed,
}

/// Read a request head, answer it, close.
fn serve(mut s: TcpStream, shared: &NodeShared, now_ms: u64) -> io::Result<()> {
    let timeout = Some(Duration::from_millis(METRICS_IO_TIMEOUT_MS));
    s.set_read_timeout(timeout)?;
    s.set_write_timeout(timeout)?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let asked = loop {
        if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
            break parse_head(&head[..end]);
        }
        if head.len() > METRICS_REQUEST_HEAD_MAX {
            respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            )?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut drained = 0;
            while drained < METRICS_DRAIN_MAX {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            return Ok(());
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    match asked {
        Asked::Metrics => {
            let body = super::render(shared, now_ms);
            respond(
                &mut s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
            )
        }
        Asked::NotFound => respond(&mut s, "404 Not Found", "text/plain", b"try /metrics\n"),
        Asked::BadMethod => respond(&mut s, "405 Method Not Allowed", "text/plain", b""),
        Asked::Malformed => respond(&mut s, "400 Bad Request", "text/plain", b""),
    }
}

/// The request line of a head: `GET /metrics` (a query string is ignored) is the only thing
/// served.
fn parse_head(head: &[u8]) -> Asked {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Asked::Malformed;
    };
    if !version.starts_with(b"HTTP/1.") {
        return Asked::Malformed;
    }
    if method != b"GET" {
        return Asked::BadMethod;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path == b"/metrics" {
        Asked::Metrics
    } else {
        Asked::NotFound
    }
}

fn respond(s: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Asked::Metrics
        );
        assert_eq!(parse_head(b"GET /metrics?x=1 HTTP/1.0"), Asked::Metrics);
        assert_eq!(parse_head(b"GET / HTTP/1.1"), Asked::NotFound);
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1"), Asked::BadMethod);
        assert_eq!(parse_head(b"GET /metrics"), Asked::Malformed);
        assert_eq!(parse_head(b"\x00\x01"), Asked::Malformed);
        assert_eq!(parse_head(b""), Asked::Malformed);
    }
}
