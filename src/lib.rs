//! dkv: a distributed key-value store with a raw binary TCP protocol.
//!
//! Module map:
//!
//! ```text
//! limits     every bound as a named constant
//! assembly   the one way to build a node's shards, for kvd and the simulator
//! auth       peer-handshake proofs (HMAC-SHA256) and the failed-handshake throttle (pure)
//! budget     the node-wide memory budget for connection buffers (atomics)
//! protocol   frames, requests, replies, the ring map: bytes <-> values (pure)
//! hash       the stable key hash, partitions, shard placement (pure)
//! histogram  lock-free latency histograms for STATS
//! metrics    Prometheus text of the STATS counters
//! http       the HTTP listener: GET /metrics and the /kv/{key} API (threads, bounded)
//! version    versions and the hybrid logical clock (pure)
//! causal     dotted version vectors with siblings, for `--conflicts siblings` (pure)
//! storage    the Store interface and its implementations
//! cluster    ownership (versioned ring), membership, replication, repair, hints, leader (pure)
//! shard      one shard's core: decode, execute, encode (pure)
//! server     the only place with mio and sockets: event loops, listeners, mailboxes
//! client     a small blocking client used by kvcat, tests and tools
//! shard_port shard-aware connections, client side: a local port that lands on a shard
//! datadir    the data directory: lock, meta file, per-shard sub-directories
//! ```
//!
//! Threads of one `kvd` process:
//!
//! ```text
//!   main thread: parse options, raise fd limit, spawn shards, wait for SIGINT/SIGTERM
//!   shard 0 ─┐  each: own mio::Poll, own SO_REUSEPORT listener on the node's port,
//!   shard 1 ─┤        own connections (Slab), own Store, own mailbox (+ mio::Waker)
//!   ...      ─┘  requests for keys owned elsewhere travel shard → shard through mailboxes
//! ```
#![warn(missing_docs)]

pub mod assembly;
pub mod auth;
pub mod budget;
pub mod causal;
pub mod client;
pub mod cluster;
pub mod datadir;
pub mod hash;
pub mod histogram;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod shard_port;
pub mod sim;
pub mod storage;
pub mod version;
