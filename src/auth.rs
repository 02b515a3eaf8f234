//! Authentication, pure: the proofs of the peer handshake, and the throttle that slows down
//! failed handshakes.
//!
//! **Peer handshake** (protocol.md § 8.1). The cluster secret never crosses the network: each
//! side sends a fresh random nonce, and each proves it holds the secret with
//! `HMAC-SHA256(secret, label || initiator id || responder id || nonce_I || nonce_R)`.
//! The labels differ by direction, so a proof cannot be reflected back to its sender; the node
//! ids bind the proof to the two nodes, so it cannot be replayed between other nodes; the
//! nonces make every connection's proofs new. The initiator proves first, so a stranger
//! connecting to a node learns nothing it could test guesses of the secret against offline;
//! the responder proves second, so a node never sends cluster frames to an impostor.
//! Verification is constant-time (RustCrypto's `verify_slice`).
//!
//! **Throttle.** A failed handshake (a wrong client token, a wrong peer proof, a peer id that
//! is not in the cluster) counts against its source address; past
//! [`HANDSHAKE_FAILURES_FREE`] failures, the source must wait a pause that doubles with every
//! further failure (from [`HANDSHAKE_PENALTY_MS_MIN`] to [`HANDSHAKE_PENALTY_MS_MAX`]) before
//! a handshake from it is examined again; until then it is refused unexamined, so it gets no
//! guess however many connections it opens. Sources are IPv4 addresses and IPv6 /64 prefixes
//! (one host owns a whole /64). A client and each claimed peer id of the cluster are counted
//! apart (ids outside the cluster count together), so a misconfigured node does not lock its
//! healthy neighbours on the same host out. The table is bounded
//! ([`HANDSHAKE_THROTTLE_ENTRIES_MAX`]).
//!
//! Nothing here touches a socket, a clock or the OS: nonces come from the driver (OS
//! randomness), time comes in as `now_ms`.

use crate::limits::{
    HANDSHAKE_FAILURES_FREE, HANDSHAKE_FAILURE_MEMORY_MS, HANDSHAKE_PENALTY_MS_MAX,
    HANDSHAKE_PENALTY_MS_MIN, HANDSHAKE_THROTTLE_ENTRIES_MAX,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::IpAddr;

/// The peer-protocol version of this build, carried in the `version` field of a peer HELLO.
/// Version 1 sent the secret itself as the HELLO token; it is refused. Version 2 sent
/// REPLICATE and READ without the sender's ring version (protocol.md § 18.2); it is refused
/// too (a cluster moves from 2 to 3 by a full restart).
pub const PEER_PROTOCOL_VERSION: u16 = 3;

/// Bytes of a handshake nonce.
pub const NONCE_SIZE: usize = 32;

/// Bytes of a handshake proof (an HMAC-SHA256 tag).
pub const PROOF_SIZE: usize = 32;

/// The byte a node of a `--conflicts siblings` cluster appends to its nonce in a peer HELLO
/// (and to its HELLO reply): peers must agree on how conflicts are resolved, and a node of the
/// other mode is refused with a message that says so (protocol.md § 8.1). A `lww` node appends
/// nothing, so its handshake is byte for byte that of the nodes before the mode existed.
pub const CONFLICTS_SIBLINGS_BYTE: u8 = 1;

/// The conflict mode a peer announced after its nonce: `None` when the bytes say nothing
/// valid (a length or a byte this build does not know).
pub fn conflicts_announced(after_nonce: &[u8]) -> Option<crate::cluster::Conflicts> {
    match after_nonce {
        [] => Some(crate::cluster::Conflicts::Lww),
        [CONFLICTS_SIBLINGS_BYTE] => Some(crate::cluster::Conflicts::Siblings),
        _ => None,
    }
}

/// What a node of mode `c` appends after its nonce (see [`CONFLICTS_SIBLINGS_BYTE`]).
pub fn conflicts_suffix(c: crate::cluster::Conflicts) -> &'static [u8] {
    match c {
        crate::cluster::Conflicts::Lww => &[],
        crate::cluster::Conflicts::Siblings => &[CONFLICTS_SIBLINGS_BYTE],
    }
}

/// A handshake nonce: fresh random bytes from the OS, one per connection and side.
pub type Nonce = [u8; NONCE_SIZE];

/// A handshake proof.
pub type Proof = [u8; PROOF_SIZE];

/// Which side of a peer connection a proof comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The node that opened the connection.
    Initiator,
    /// The node that accepted it.
    Responder,
}

impl Side {
    /// The label the proof starts with (16 bytes each: the MAC input has no ambiguity).
    pub fn label(self) -> &'static [u8; 16] {
        match self {
            Side::Initiator => b"dkv-peer-v2-init",
            Side::Responder => b"dkv-peer-v2-resp",
        }
    }
}

fn mac(
    secret: &[u8],
    side: Side,
    initiator: u32,
    responder: u32,
    nonce_i: &Nonce,
    nonce_r: &Nonce,
) -> Hmac<Sha256> {
    // HMAC takes a key of any length (longer than a block is hashed first).
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    m.update(side.label());
    m.update(&initiator.to_be_bytes());
    m.update(&responder.to_be_bytes());
    m.update(nonce_i);
    m.update(nonce_r);
    m
}

/// The proof `side` sends on the connection from node `initiator` to node `responder`.
pub fn proof(
    secret: &[u8],
    side: Side,
    initiator: u32,
    responder: u32,
    nonce_i: &Nonce,
    nonce_r: &Nonce,
) -> Proof {
    mac(secret, side, initiator, responder, nonce_i, nonce_r)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `got` is the proof `side` must send; constant-time in the bytes compared.
pub fn verify(
    secret: &[u8],
    side: Side,
    initiator: u32,
    responder: u32,
    nonce_i: &Nonce,
    nonce_r: &Nonce,
    got: &[u8],
) -> bool {
    got.len() == PROOF_SIZE
        && mac(secret, side, initiator, responder, nonce_i, nonce_r)
            .verify_slice(got)
            .is_ok()
}

/// Who a handshake claimed to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Claim {
    /// A client (HELLO role 1).
    Client,
    /// A peer with this node id of the cluster (HELLO role 2).
    Peer(u32),
    /// A peer claiming an id that is not a known member of the cluster (a joining node, or
    /// a guess): one key for all such ids, so a source cannot make itself thousands of
    /// entries and flush the table.
    UnknownPeer,
}

/// A source address as the throttle counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

/// What the throttle counts failures of: a source and the identity it claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThrottleKey {
    source: Source,
    claim: Claim,
}

impl ThrottleKey {
    /// The key of a handshake from `ip` claiming `claim`.
    pub fn new(ip: IpAddr, claim: Claim) -> ThrottleKey {
        let source = match ip {
            IpAddr::V4(a) => Source::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6((u128::from(a) >> 64) as u64),
            },
        };
        ThrottleKey { source, claim }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last_failure_ms: u64,
    /// No handshake from this key is examined before this time.
    retry_at_ms: u64,
}

/// Counters of a throttle (STATS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Handshakes examined and found wrong.
    pub failures: u64,
    /// Handshakes refused unexamined, their source being in a pause.
    pub refused: u64,
}

/// Failed-handshake counts per source (see the module doc). One per node, shared by its shards.
#[derive(Debug, Default)]
pub struct HandshakeThrottle {
    entries: HashMap<ThrottleKey, Entry>,
    stats: ThrottleStats,
}

/// The pause imposed after `failures` failures.
pub fn penalty_ms(failures: u32) -> u64 {
    if failures <= HANDSHAKE_FAILURES_FREE {
        return 0;
    }
    let doublings = (failures - HANDSHAKE_FAILURES_FREE - 1).min(32);
    HANDSHAKE_PENALTY_MS_MIN
        .saturating_mul(1u64 << doublings)
        .min(HANDSHAKE_PENALTY_MS_MAX)
}

impl HandshakeThrottle {
    /// `Some(ms)` when a handshake from `key` must be refused unexamined, retrying in `ms`.
    pub fn check(&mut self, key: ThrottleKey, now_ms: u64) -> Option<u64> {
        let e = self.entries.get_mut(&key)?;
        if now_ms.saturating_sub(e.last_failure_ms) >= HANDSHAKE_FAILURE_MEMORY_MS {
            self.entries.remove(&key);
            return None;
        }
        if now_ms >= e.retry_at_ms {
            return None;
        }
        // A wall clock stepped back must not turn a pause into a lock-out.
        e.retry_at_ms = e.retry_at_ms.min(now_ms + HANDSHAKE_PENALTY_MS_MAX);
        self.stats.refused += 1;
        Some(e.retry_at_ms - now_ms)
    }

    /// An examined handshake from `key` was wrong; returns the pause it now has to wait.
    pub fn on_failure(&mut self, key: ThrottleKey, now_ms: u64) -> u64 {
        self.stats.failures += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= HANDSHAKE_THROTTLE_ENTRIES_MAX
        {
            self.make_room(now_ms);
        }
        let e = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            last_failure_ms: now_ms,
            retry_at_ms: 0,
        });
        if now_ms.saturating_sub(e.last_failure_ms) >= HANDSHAKE_FAILURE_MEMORY_MS {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure_ms = now_ms;
        let pause = penalty_ms(e.failures);
        e.retry_at_ms = now_ms + pause;
        pause
    }

    /// A handshake from `key` succeeded: its failures are forgotten.
    pub fn on_success(&mut self, key: ThrottleKey) {
        if !self.entries.is_empty() {
            self.entries.remove(&key);
        }
    }

    /// Drop what is past memory; if the table is still full, the entry with the fewest
    /// failures (the oldest of those): a guesser's own entry, with many failures, outlives a
    /// flood of single failures sent to push it out.
    fn make_room(&mut self, now_ms: u64) {
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.last_failure_ms) < HANDSHAKE_FAILURE_MEMORY_MS);
        if self.entries.len() >= HANDSHAKE_THROTTLE_ENTRIES_MAX {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| (e.failures, e.last_failure_ms))
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
    }

    /// Sources remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> ThrottleStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn the_conflict_mode_after_the_nonce_round_trips_and_lww_adds_nothing() {
        use crate::cluster::Conflicts;
        for c in [Conflicts::Lww, Conflicts::Siblings] {
            assert_eq!(conflicts_announced(conflicts_suffix(c)), Some(c));
        }
        assert!(conflicts_suffix(Conflicts::Lww).is_empty());
        assert_eq!(conflicts_announced(&[2]), None);
        assert_eq!(conflicts_announced(&[1, 1]), None);
    }

    fn hex(s: &str) -> Vec<u8> {
        let d: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..d.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&d[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 4231 test case 2 (a key shorter than the block) and 6 (longer): the crate
    /// computes the HMAC-SHA256 the handshake is specified with.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            m.finalize().into_bytes().to_vec(),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        let mut m = Hmac::<Sha256>::new_from_slice(&[0xaa; 131]).unwrap();
        m.update(b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            m.finalize().into_bytes().to_vec(),
            hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    #[test]
    fn proofs_depend_on_every_input() {
        let (ni, nr) = ([1u8; 32], [2u8; 32]);
        let p = proof(b"s", Side::Initiator, 1, 2, &ni, &nr);
        assert!(verify(b"s", Side::Initiator, 1, 2, &ni, &nr, &p));
        // Reflected, other ids, other nonces, other secret, cut short: all wrong.
        assert!(!verify(b"s", Side::Responder, 1, 2, &ni, &nr, &p));
        assert!(!verify(b"s", Side::Initiator, 2, 1, &ni, &nr, &p));
        assert!(!verify(b"s", Side::Initiator, 1, 3, &ni, &nr, &p));
        assert!(!verify(b"s", Side::Initiator, 1, 2, &nr, &ni, &p));
        assert!(!verify(b"t", Side::Initiator, 1, 2, &ni, &nr, &p));
        assert!(!verify(b"s", Side::Initiator, 1, 2, &ni, &nr, &p[..31]));
        assert!(!verify(b"s", Side::Initiator, 1, 2, &ni, &nr, &[]));
        let mut flipped = p;
        flipped[31] ^= 1;
        assert!(!verify(b"s", Side::Initiator, 1, 2, &ni, &nr, &flipped));
    }

    fn key(last: u8) -> ThrottleKey {
        ThrottleKey::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), Claim::Client)
    }

    #[test]
    fn free_failures_then_doubling_pauses_up_to_the_cap() {
        let mut t = HandshakeThrottle::default();
        let k = key(1);
        let mut now = 1_000_000;
        for _ in 0..HANDSHAKE_FAILURES_FREE {
            assert_eq!(t.check(k, now), None);
            assert_eq!(t.on_failure(k, now), 0);
        }
        let mut expect = HANDSHAKE_PENALTY_MS_MIN;
        for _ in 0..20 {
            assert_eq!(t.check(k, now), None, "the pause is over");
            assert_eq!(t.on_failure(k, now), expect);
            assert_eq!(t.check(k, now), Some(expect));
            assert_eq!(t.check(k, now + expect - 1), Some(1));
            now += expect;
            expect = (expect * 2).min(HANDSHAKE_PENALTY_MS_MAX);
        }
        assert_eq!(penalty_ms(u32::MAX), HANDSHAKE_PENALTY_MS_MAX);
        // Other sources and other claims are not affected; success forgets.
        assert_eq!(t.check(key(2), now), None);
        let peer = ThrottleKey::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), Claim::Peer(3));
        assert_eq!(t.check(peer, now), None);
        t.on_failure(k, now);
        assert!(t.check(k, now).is_some());
        t.on_success(k);
        assert_eq!(t.check(k, now), None);
        assert!(t.stats().failures > 20 && t.stats().refused > 20);
    }

    #[test]
    fn guesses_in_a_window_are_few() {
        // An attacker retrying as fast as it can for 3 s gets its guesses examined only when
        // its pause is over: the free ones plus one per doubling pause.
        let mut t = HandshakeThrottle::default();
        let k = key(9);
        let (mut examined, mut refused) = (0, 0);
        for now in 0..3_000u64 {
            match t.check(k, now) {
                Some(_) => refused += 1,
                None => {
                    examined += 1;
                    t.on_failure(k, now);
                }
            }
        }
        // 5 free, then pauses of 100, 200, 400, 800, 1600 ms: 10 by 3.1 s.
        assert_eq!(examined, 10, "examined {examined}, refused {refused}");
    }

    #[test]
    fn memory_expires_and_clock_steps_are_bounded() {
        let mut t = HandshakeThrottle::default();
        let k = key(3);
        for _ in 0..HANDSHAKE_FAILURES_FREE + 3 {
            t.on_failure(k, 5_000_000);
        }
        assert!(t.check(k, 5_000_000).is_some());
        // The clock stepped back an hour: still at most the longest pause.
        assert!(t.check(k, 5_000_000 - 3_600_000).unwrap() <= HANDSHAKE_PENALTY_MS_MAX);
        // Quiet for the memory time: forgotten.
        assert_eq!(t.check(k, 5_000_000 + HANDSHAKE_FAILURE_MEMORY_MS), None);
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_least_failed() {
        let mut t = HandshakeThrottle::default();
        // A guesser paused after its free failures...
        let guesser = key(200);
        for _ in 0..=HANDSHAKE_FAILURES_FREE {
            t.on_failure(guesser, 500);
        }
        // ...is not pushed out by a flood of single failures from other sources.
        for i in 0..HANDSHAKE_THROTTLE_ENTRIES_MAX as u32 + 100 {
            let k = ThrottleKey::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), Claim::Client);
            t.on_failure(k, 1_000 + u64::from(i));
            assert!(t.len() <= HANDSHAKE_THROTTLE_ENTRIES_MAX);
        }
        assert_eq!(t.len(), HANDSHAKE_THROTTLE_ENTRIES_MAX);
        // The newest are kept.
        let newest = ThrottleKey::new(
            IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000 + HANDSHAKE_THROTTLE_ENTRIES_MAX as u32 + 99,
            )),
            Claim::Client,
        );
        assert!(t.entries.contains_key(&newest));
        assert!(
            t.check(guesser, 550).is_some(),
            "the guesser is still paused"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        let k = |ip: Ipv6Addr| ThrottleKey::new(IpAddr::V6(ip), Claim::Client);
        assert_eq!(k(a), k(b));
        assert_ne!(k(a), k(c));
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(k(mapped), key(1));
    }
}
