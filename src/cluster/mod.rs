//! The cluster layer: sans-IO logic that turns single nodes into a Dynamo-style cluster.
//!
//! ```text
//! config       ClusterConfig: node list, N, secret, intervals; validated at start
//! ownership    the versioned owners of every partition: initial, join, leave, moves, encoding
//! ring         partitions → preference lists (a read-only view of an Ownership)
//! ringstate    the versioned members, statuses and ownership, with the change in progress
//! ringfile     the node's ring state on disk (through the storage Vfs)
//! ringpeer     the peer frames of the elastic ring: RING_PULL, RING_CHANGE
//! peer         the peer frames (opcodes 0x20..=0x3F): REPLICATE, READ, GOSSIP
//! membership   gossip heartbeats, failure detector, incarnations, leader
//! clock        clock offsets to peers (from gossip round trips), the max-offset rule
//! coordinator  one shard's replicated reads and writes: quorums, timeouts, read repair, hints
//! replica      the replica side: answer REPLICATE and READ from the local Store
//! siblings     siblings mode at a replica: causal writes merge into the held causal state
//! node         ClusterNode: all of the above behind one input/output interface
//! view         NodeView: the membership shard's view, sent to the node's other shards
//! hints        bounded hint queues per target node, with a narrow durability interface
//! hintfile     that interface on an append-only, checksummed file (through the storage Vfs)
//! rng          SplitMix64, the seeded PRNG the core draws from
//! merkle       per-partition hash trees over (key, version) with key lists (anti-entropy)
//! antientropy  Merkle exchanges between replicas, tombstone horizons, rejoin gate
//! ```
//!
//! Nothing here touches a socket, a thread, a file or the clock: every input carries `now`
//! (ms since the Unix epoch, from the driver or the simulator) and every output is a value the
//! caller acts on (frames to send, replies, writes to apply). The call order for a driver:
//! feed inputs (`on_*`), then drain outputs (`poll_*` / `take_*`) before the next input.

pub mod antientropy;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod hintfile;
pub mod hints;
pub mod membership;
pub mod merkle;
pub mod node;
pub mod ownership;
pub mod peer;
pub mod replica;
pub mod ring;
pub mod ringfile;
pub mod ringpeer;
pub mod ringstate;
pub mod rng;
pub mod siblings;
pub mod view;

pub use config::{ClusterConfig, ConfigError, Conflicts, Mutations, NodeAddr};
pub use ownership::{Move, Ownership, OwnershipError};
pub use ring::Ring;
pub use rng::SplitMix64;
pub use view::{NodeView, MEMBERSHIP_SHARD};
