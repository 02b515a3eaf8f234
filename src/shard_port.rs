//! The client side of shard-aware connections (protocol.md § 11.2): a node lands a connection
//! from TCP source port `P` on shard `(P div 2) mod K` (K: its shard count, from any HELLO
//! reply; why `div 2`: [`crate::server::steering`]), so a
//! client that binds a local port with the right remainder before connecting reaches the shard
//! that owns its keys, and its requests skip the hop between shards.
//!
//! Ports are taken from the IANA dynamic range, 49152..=65535 (the range ScyllaDB's drivers
//! use for the same purpose), starting at a per-process pseudo-random point and moving on for
//! every connection, so that processes and successive connections rarely try the same port.
//! A port that is busy (bound by someone else, or held in TIME_WAIT) fails `bind` with
//! EADDRINUSE, or `connect` with EADDRNOTAVAIL when the whole 4-tuple is taken: the next
//! candidate is tried, up to [`BIND_ATTEMPTS_MAX`] times.
//!
//! The node's side is [`crate::server::steering`]. A node that could not attach its steering
//! program still serves the connection on some shard; the HELLO reply says which.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Lowest local port a shard-aware connection binds.
pub const LOCAL_PORT_MIN: u16 = 49152;

/// Highest local port a shard-aware connection binds.
pub const LOCAL_PORT_MAX: u16 = 65535;

/// Candidate ports tried for one connection before giving up with the last error.
pub const BIND_ATTEMPTS_MAX: usize = 64;

/// The shard a connection from `source_port` lands on, on a node with `shards` shards:
/// `(source_port div 2) mod shards`.
#[inline]
pub fn shard_of_port(source_port: u16, shards: usize) -> usize {
    debug_assert!(shards > 0);
    (source_port as usize >> 1) % shards.max(1)
}

/// The `n`-th port of [`LOCAL_PORT_MIN`]..=[`LOCAL_PORT_MAX`] that lands on `shard` (wrapping
/// around the ports of that shard). `None` if `shard >= shards` or `shards` is 0.
pub fn candidate_port(shard: usize, shards: usize, n: u32) -> Option<u16> {
    if shards == 0 || shard >= shards {
        return None;
    }
    // Ports come in pairs 2q, 2q+1 that land on shard q mod K; walk the pairs of the shard.
    let (min, max) = (LOCAL_PORT_MIN as usize / 2, LOCAL_PORT_MAX as usize / 2);
    let first = min + (shard + shards - min % shards) % shards;
    if first > max {
        return None;
    }
    let count = (max - first) / shards + 1;
    let pair = first + ((n as usize >> 1) % count) * shards;
    let port = 2 * pair + (n as usize & 1);
    debug_assert_eq!(shard_of_port(port as u16, shards), shard);
    u16::try_from(port).ok()
}

/// Where this process tries next: a pseudo-random start (process id and clock), then one
/// step per attempt.
fn next_n() -> u32 {
    static START: OnceLock<u32> = OnceLock::new();
    static STEP: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        crate::hash::fmix64(nanos ^ (std::process::id() as u64) << 32) as u32
    });
    start.wrapping_add(STEP.fetch_add(1, Ordering::Relaxed))
}

fn unspecified(peer: &SocketAddr, port: u16) -> SocketAddr {
    let ip = match peer.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, port)
}

/// Is this the error of a port (or 4-tuple) already taken, worth another candidate?
fn port_taken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
    )
}

/// Open a TCP connection to `peer` from a local port that lands on `shard` of a node with
/// `shards` shards. With `nonblocking`, the connect is only started (the stream is
/// non-blocking and becomes writable once connected, as for `mio`); otherwise it is complete
/// on return. Returns the stream and the local port it uses.
pub fn connect_to_shard(
    peer: SocketAddr,
    shard: usize,
    shards: usize,
    nonblocking: bool,
) -> io::Result<(TcpStream, u16)> {
    if shards == 0 || shard >= shards {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shard {shard} of {shards}"),
        ));
    }
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no local port tried");
    for _ in 0..BIND_ATTEMPTS_MAX {
        let port = candidate_port(shard, shards, next_n()).expect("shard < shards, checked");
        let socket = Socket::new(Domain::for_address(peer), Type::STREAM, Some(Protocol::TCP))?;
        if nonblocking {
            socket.set_nonblocking(true)?;
        }
        if let Err(e) = socket.bind(&SockAddr::from(unspecified(&peer, port))) {
            if port_taken(&e) {
                last = e;
                continue;
            }
            return Err(e);
        }
        match socket.connect(&SockAddr::from(peer)) {
            Ok(()) => {}
            Err(e) if nonblocking && e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) if port_taken(&e) => {
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        }
        return Ok((socket.into(), port));
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_land_on_their_shard_and_stay_in_range() {
        for shards in [1usize, 2, 3, 4, 5, 8, 256] {
            for shard in 0..shards {
                for n in [0u32, 1, 2, 1000, u32::MAX] {
                    let p = candidate_port(shard, shards, n).expect("a port");
                    assert!((LOCAL_PORT_MIN..=LOCAL_PORT_MAX).contains(&p));
                    assert_eq!(shard_of_port(p, shards), shard);
                }
            }
        }
        assert_eq!(candidate_port(2, 2, 0), None);
        assert_eq!(candidate_port(0, 0, 0), None);
        // Successive steps give distinct ports of the shard.
        let ports: Vec<u16> = (0..6)
            .map(|n| candidate_port(1, 4, n).expect("a port"))
            .collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }

    #[test]
    fn connects_from_a_port_of_the_shard() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        for shard in 0..3 {
            let (stream, port) = connect_to_shard(addr, shard, 3, false).expect("connect");
            assert_eq!(stream.local_addr().expect("local").port(), port);
            assert_eq!(shard_of_port(port, 3), shard);
            let (accepted, from) = listener.accept().expect("accept");
            assert_eq!(from.port(), port);
            drop(accepted);
        }
    }
}
