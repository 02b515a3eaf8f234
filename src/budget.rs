//! The node-wide memory budget for connection buffers (ARCHITECTURE § 1: "memory is budgeted,
//! never implied").
//!
//! Every byte a client can make a node hold counts against two limits:
//!
//! * **per connection** ([`MemoryBudget::connection_bytes_max`]): unsent replies plus a
//!   reservation for every reply still to come (requests forwarded to another shard, waiting for
//!   a sync, or coordinated across the cluster). A reply's size is not known before the owner of
//!   the key produces it, so a request that may return a value reserves the largest reply
//!   ([`reply_reserve_bytes`]) and gives the reservation back when its reply arrives. A
//!   connection that would pass the limit is not decoded further until its replies drain.
//! * **per node** ([`MemoryBudget::node_bytes_max`]): the bytes actually held in connection
//!   read and write buffers, summed over every shard in one atomic counter. Past it, no
//!   connection's read buffer grows beyond one read chunk (small frames keep flowing, large
//!   half-received ones wait and meet the frame timeout), and shards drop the connections that
//!   hold the most unsent replies without reading them.
//!
//! Reservations are not added to the node counter: they are worst cases (a GET reserves a whole
//! largest value), and 50 well-behaved pipelining clients would otherwise look like gigabytes.
//! What is in transit between shards is bounded by the per-connection limit times the
//! connections; what is actually buffered is bounded by the node limit.
//!
//! This module is plain atomics (no sockets, no clock): the event loops in [`crate::server`]
//! charge and release it, and STATS reads it.

use crate::limits::{
    CONNECTION_BUFFER_BYTES_MAX_DEFAULT, FRAME_SIZE_MAX, FRAME_TIMEOUT_MS_DEFAULT,
    NODE_BUFFER_BYTES_MAX_DEFAULT, REPLY_RESERVE_SMALL_BYTES,
};
use crate::protocol::{op, RESPONSE_BIT};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The configurable limits (kvd options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Unsent replies plus reservations of one connection, in bytes (`--connection-buffer-kb`).
    pub connection_bytes_max: usize,
    /// Bytes in every connection's read and write buffers of the node (`--node-buffer-mb`).
    pub node_bytes_max: usize,
    /// A frame must arrive whole this long after its first byte (`--frame-timeout-ms`).
    pub frame_timeout_ms: u64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            connection_bytes_max: CONNECTION_BUFFER_BYTES_MAX_DEFAULT,
            node_bytes_max: NODE_BUFFER_BYTES_MAX_DEFAULT,
            frame_timeout_ms: FRAME_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// The node's budget: its limits and what is in use, shared by every shard.
#[derive(Debug, Default)]
pub struct MemoryBudget {
    /// The limits.
    pub limits: MemoryLimits,
    /// Bytes held in connection read and write buffers (allocated capacity), node-wide.
    buffered: AtomicUsize,
    /// Bytes reserved for replies not yet delivered to their connections, node-wide.
    reserved: AtomicUsize,
    /// Highest `buffered` seen.
    buffered_peak: AtomicUsize,
    /// Times a connection stopped being decoded because its replies reached the connection limit.
    pub paused_connection: AtomicU64,
    /// Times a connection's read buffer was not grown because the node was at its limit.
    pub paused_node: AtomicU64,
    /// Connections dropped because the node was over its limit and they were not reading.
    pub dropped_node: AtomicU64,
    /// Connections dropped because a frame did not arrive whole within the frame timeout.
    pub dropped_frame_timeout: AtomicU64,
}

impl MemoryBudget {
    /// A budget with these limits and nothing in use.
    pub fn new(limits: MemoryLimits) -> MemoryBudget {
        MemoryBudget {
            limits,
            ..MemoryBudget::default()
        }
    }

    /// The per-connection limit.
    pub fn connection_bytes_max(&self) -> usize {
        self.limits.connection_bytes_max
    }

    /// The node-wide limit.
    pub fn node_bytes_max(&self) -> usize {
        self.limits.node_bytes_max
    }

    /// Bytes buffered node-wide now.
    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Bytes reserved node-wide now.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Whether `more` bytes of buffers fit under the node limit.
    pub fn has_room(&self, more: usize) -> bool {
        self.buffered().saturating_add(more) <= self.limits.node_bytes_max
    }

    /// Whether the node holds more than its limit.
    pub fn over(&self) -> bool {
        self.buffered() > self.limits.node_bytes_max
    }

    /// A connection's buffers changed from `old` to `new` bytes.
    pub fn resize(&self, old: usize, new: usize) {
        if new > old {
            let now = self.buffered.fetch_add(new - old, Ordering::Relaxed) + (new - old);
            self.buffered_peak.fetch_max(now, Ordering::Relaxed);
        } else if old > new {
            let was = self.buffered.fetch_sub(old - new, Ordering::Relaxed);
            debug_assert!(was >= old - new, "memory budget released more than it held");
        }
    }

    /// Reserve `n` bytes for a reply to come.
    pub fn reserve(&self, n: usize) {
        self.reserved.fetch_add(n, Ordering::Relaxed);
    }

    /// Give back `n` bytes of reservations.
    pub fn unreserve(&self, n: usize) {
        let was = self.reserved.fetch_sub(n, Ordering::Relaxed);
        debug_assert!(was >= n, "memory budget unreserved more than it reserved");
    }

    /// STATS lines (`memory_*`).
    pub fn stats_text(&self, t: &mut String) {
        let l = &self.limits;
        let _ = writeln!(t, "memory_buffered_bytes {}", self.buffered());
        let _ = writeln!(
            t,
            "memory_buffered_peak_bytes {}",
            self.buffered_peak.load(Ordering::Relaxed)
        );
        let _ = writeln!(t, "memory_reserved_bytes {}", self.reserved());
        let _ = writeln!(t, "memory_node_bytes_limit {}", l.node_bytes_max);
        let _ = writeln!(
            t,
            "memory_connection_bytes_limit {}",
            l.connection_bytes_max
        );
        let _ = writeln!(t, "memory_frame_timeout_ms {}", l.frame_timeout_ms);
        let counters = [
            ("memory_paused_connection", &self.paused_connection),
            ("memory_paused_node", &self.paused_node),
            ("memory_dropped_node", &self.dropped_node),
            ("memory_dropped_frame_timeout", &self.dropped_frame_timeout),
        ];
        for (name, c) in counters {
            let _ = writeln!(t, "{name} {}", c.load(Ordering::Relaxed));
        }
    }
}

/// Bytes a request reserves for its reply until the reply reaches the connection: the largest
/// frame for requests whose reply may carry a value, a small bound for the others (their
/// replies are a version or an error message). `op` may be a request or reply opcode, so the
/// same number is given back when the reply arrives.
pub fn reply_reserve_bytes(opcode: u8) -> usize {
    match opcode & !RESPONSE_BIT {
        op::GET | op::LOCAL_GET => 4 + FRAME_SIZE_MAX,
        _ => REPLY_RESERVE_SMALL_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_and_releases() {
        let b = MemoryBudget::new(MemoryLimits {
            node_bytes_max: 100,
            ..MemoryLimits::default()
        });
        assert!(b.has_room(100));
        b.resize(0, 60);
        assert!(!b.has_room(41));
        assert!(b.has_room(40));
        b.resize(60, 120);
        assert!(b.over());
        b.resize(120, 10);
        assert!(!b.over());
        assert_eq!(b.buffered(), 10);
        let mut t = String::new();
        b.stats_text(&mut t);
        assert!(t.contains("memory_buffered_bytes 10\n"));
        assert!(t.contains("memory_buffered_peak_bytes 120\n"));
    }

    #[test]
    fn reservations_match_on_request_and_reply() {
        for opc in [op::GET, op::PUT, op::DELETE, op::LOCAL_GET, 0x21] {
            assert_eq!(
                reply_reserve_bytes(opc),
                reply_reserve_bytes(opc | RESPONSE_BIT)
            );
        }
        assert!(reply_reserve_bytes(op::GET) > FRAME_SIZE_MAX);
        assert!(reply_reserve_bytes(op::PUT) < reply_reserve_bytes(op::GET));
    }
}
