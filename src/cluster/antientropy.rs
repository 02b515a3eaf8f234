//! Active anti-entropy: replicas of a partition compare their hash trees
//! ([`super::merkle`]) and exchange only the keys that differ, newest version winning; the
//! leader turns completed exchanges into per-partition tombstone horizons below which
//! tombstones may be dropped without a deleted key ever coming back.
//!
//! ## Trees
//! One [`PartitionTree`] per partition this core holds (per the ring, and owned by its shard),
//! built once at start from [`Store::scan_keys`] and then maintained by a hook on every store
//! apply: every write the cluster core applies goes through [`Tracked`], a `Store` wrapper that
//! updates the tree when the store reports `Applied::Stored`.
//!
//! ## Rounds and exchanges
//! Every `anti_entropy_interval_ms` (and on demand: [`AntiEntropy::trigger`], the client
//! ANTI_ENTROPY opcode) a *round* starts: one exchange with every other replica of every
//! partition held, at most [`AE_EXCHANGES_IN_FLIGHT_MAX`] at once. Both ends of a pair start
//! exchanges (the one whose round comes first does the work; the other's then finds equal
//! roots at the cost of one small round trip). An exchange, initiator I and responder R:
//!
//! ```text
//!  I ── AE_TREE level 0 [root] ──────────▶ R      equal root: done (one round trip)
//!  I ◀── R's hashes ─────────────────────── R
//!  I ── AE_TREE level 1 [differing mids] ▶ R      then level 2 (segments) likewise
//!  I ── AE_KEYS (I's key lists of the differing segments) ─▶ R
//!  I ◀── records R holds newer (values included) + keys R wants ── R
//!  I ── AE_PUSH (the wanted records) ────▶ R     acknowledged; repeat AE_KEYS/AE_PUSH
//! ```
//!
//! Pulled records arrive inside replies and pushed ones are acknowledged, so when the last
//! reply arrives both replicas hold the newer of the two records for every key that differed
//! when the exchange looked: the exchange is *complete* and is reported to the leader with its
//! start time. Bounds: [`AE_MESSAGE_BYTES_MAX`] per message (key lists, records), tree nodes
//! per message, keys and bytes moved per round ([`AE_ROUND_KEYS_MAX`], [`AE_ROUND_BYTES_MAX`]:
//! past them the round stops and is not full), exchanges in flight, and sweep work per tick.
//!
//! ## Tombstone horizon (decided by the leader)
//! Each node sends the leader (AE_STATUS) the start times of its completed exchanges, per
//! (partition, peer). For partition p with replicas R_p the leader takes the *included*
//! replicas — all of R_p except nodes failed for longer than `tombstone_window_ms` — and, if
//! every pair of them has a completed exchange, `S = min over pairs of the latest start`.
//! Every record any included replica held at S is then held by all of them (each pair
//! exchanged after S), so the horizon `H_p = version(S − grace, 0, 0)` (grace = the request
//! timeout, covering writes still in flight at S and small clock skew) is safe: every
//! tombstone below H_p is on every included replica. The leader answers AE_STATUS with its
//! horizons; nodes keep the maximum they have seen (also carried in every AE frame), sweep
//! collectable entries (tombstones, expired values) below it out of their trees, and give the
//! store `min H_p` over the partitions they hold as its compaction horizon. Horizons are kept
//! in memory only: after a restart a node learns them again from its first exchanges.
//!
//! Two rules keep collected tombstones from resurrecting their keys:
//! 1. **Guard.** A replica refuses (answers stale) any write below `H_p` for a key it holds
//!    no record of: such a write is older than a collected tombstone (everything below `H_p`
//!    reached every included replica, so an absent key below the horizon was deleted).
//!    Records moved by anti-entropy from a peer that is not rejoining bypass it (they are
//!    authoritative).
//! 2. **Rejoin.** A node that may have been excluded — its newest record, or the gap between
//!    two of its ticks, is older than `tombstone_window_ms` — is *rejoining*: it answers no
//!    reads (peer READs and local reads of its coordinator fail, so coordinators use the
//!    other replicas; `kvd` answers LGET UNAVAILABLE) until a round in which every partition
//!    it holds completed an exchange with a live replica and no exchange failed (replicas
//!    known dead are skipped, so a dead peer cannot keep it unreadable); that round starts
//!    soon rather than an interval later. In its exchanges with a peer that is not
//!    rejoining, a non-collectable record below `H_p` that only the rejoining side holds is
//!    deleted there (a tombstone one above its version): the peer proves the key was deleted
//!    and collected. Choice: reads skip the rejoining node rather than block.
//!
//! A tombstone swept from the trees stays in the store until compaction drops it, so an
//! exchange also consults the store: a key one side lists and the other's tree lacks is
//! answered with the store's record when that is newer (the swept tombstone), and a pulled
//! record the store finds stale is pushed back, newest winning.
//!
//! Crashes: a node that lost unsynced writes (`--sync never|interval`) may have vouched for
//! them in an earlier exchange. Anti-entropy then prefers keeping data: a value it lost is
//! restored from its peers, and a tombstone it lost may let the value come back on it — the
//! same as losing that (unsynced) delete, which the sync policy allows. With `--sync always`
//! nothing an exchange moved is acknowledged before it is durable.
//!
//! Limit: a node cut off by a network partition (not stopped) for longer than the window, that
//! accepted writes meanwhile, is not detected as rejoining; as with Cassandra's gc_grace, the
//! window must be longer than any outage whose writes must survive.

use super::config::ClusterConfig;
use super::membership::MemberEvent;
use super::merkle::{self, Entry, PartitionTree, FANOUT, LEVELS, SEGMENTS};
use super::peer::{op, PeerError};
use super::ring::Ring;
use crate::hash::{partition_of, shard_of_partition};
use crate::limits::{
    AE_BUILD_KEYS_PER_STEP, AE_EXCHANGES_IN_FLIGHT_MAX, AE_EXCHANGE_STEPS_MAX,
    AE_MESSAGE_BYTES_MAX, AE_ROUND_BYTES_MAX, AE_ROUND_KEYS_MAX, AE_SWEEP_ENTRIES_PER_TICK,
    AE_SWEEP_SEGMENTS_PER_TICK, KEY_SIZE_MAX, PARTITION_COUNT, VALUE_SIZE_MAX,
};
use crate::protocol::{frame, message, FrameRef, Status, RESPONSE_BIT};
use crate::storage::{keydir::expiry_s_of, Applied, KeyMeta, Store, StoreError, Stored, Write};
use crate::version::Version;
use std::collections::{BTreeMap, VecDeque};

/// Anti-entropy opcodes (in the range `peer::op` reserves).
pub mod ae_op {
    /// Compare tree nodes.
    pub const TREE: u8 = 0x23;
    /// Compare key lists of segments; pull newer records.
    pub const KEYS: u8 = 0x24;
    /// Push records.
    pub const PUSH: u8 = 0x25;
    /// Report completed exchanges to the leader; get horizons back.
    pub const STATUS: u8 = 0x26;
}

/// Whether `op` (request or reply) belongs to anti-entropy.
pub fn is_anti_entropy_op(op: u8) -> bool {
    (op::ANTI_ENTROPY_FIRST..=op::ANTI_ENTROPY_LAST).contains(&(op & !RESPONSE_BIT))
}

/// Flags byte of AE_KEYS and AE_PUSH: the sender is rejoining (its records are not
/// authoritative).
const FLAG_REJOINING: u8 = 0x01;
/// Entry flags in AE_KEYS: collectable (a tombstone or expired value).
const ENTRY_COLLECTABLE: u8 = 0x01;
/// Record flags: tombstone.
const RECORD_TOMBSTONE: u8 = 0x01;

fn bad(why: impl Into<String>) -> PeerError {
    PeerError::Malformed(why.into())
}

/// A bounds-checked reader over a frame body.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], PeerError> {
        if self.b.len() < n {
            return Err(bad(format!("body ends inside {what}")));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &str) -> Result<u8, PeerError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, PeerError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, PeerError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64, PeerError> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    fn key(&mut self) -> Result<&'a [u8], PeerError> {
        let n = self.u16("a key length")? as usize;
        if n == 0 || n > KEY_SIZE_MAX {
            return Err(bad(format!("key length {n} outside 1..={KEY_SIZE_MAX}")));
        }
        self.take(n, "a key")
    }
    fn partition(&mut self) -> Result<usize, PeerError> {
        let p = self.u16("the partition")? as usize;
        if p >= PARTITION_COUNT {
            return Err(bad(format!("partition {p} out of range")));
        }
        Ok(p)
    }
    fn end(&self) -> Result<(), PeerError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} bytes after the body", self.b.len())))
        }
    }
}

/// A record as carried by AE_KEYS replies and AE_PUSH requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: Vec<u8>,
    /// Its version.
    pub version: u64,
    /// Expiry, ms since the epoch; 0 = never.
    pub expires_at_ms: u64,
    /// The value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

impl Record {
    fn encoded_len(&self) -> usize {
        2 + self.key.len() + 8 + 8 + 1 + 4 + self.value.as_ref().map_or(0, |v| v.len())
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.key.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.push(if self.value.is_none() {
            RECORD_TOMBSTONE
        } else {
            0
        });
        let v = self.value.as_deref().unwrap_or(&[]);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Record, PeerError> {
        let key = r.key()?.to_vec();
        let version = r.u64("a record version")?;
        let expires_at_ms = r.u64("a record expiry")?;
        let flags = r.u8("record flags")?;
        if flags & !RECORD_TOMBSTONE != 0 {
            return Err(bad(format!("record reserved flag bits 0x{flags:02x}")));
        }
        let n = r.u32("a value length")? as usize;
        if n > VALUE_SIZE_MAX {
            return Err(bad(format!("value of {n} bytes too large")));
        }
        let v = r.take(n, "a value")?;
        let value = if flags & RECORD_TOMBSTONE != 0 {
            if n != 0 {
                return Err(bad("tombstone record with a value"));
            }
            None
        } else {
            Some(v.to_vec())
        };
        Ok(Record {
            key,
            version,
            expires_at_ms,
            value,
        })
    }
    fn as_write(&self) -> Write<'_> {
        Write {
            key: &self.key,
            value: self.value.as_deref(),
            version: Version(self.version),
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// Counters for STATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AaeStats {
    /// Rounds started.
    pub rounds: u64,
    /// Rounds that completed an exchange with every replica of every partition.
    pub full_rounds: u64,
    /// Exchanges this node started that completed.
    pub exchanges: u64,
    /// Exchanges abandoned (timeout, error reply, budget).
    pub exchanges_failed: u64,
    /// Exchanges answered as responder (AE_TREE requests at level 0).
    pub exchanges_served: u64,
    /// Records sent to a peer (pushed, or sent in a reply).
    pub keys_sent: u64,
    /// Records received from a peer that became the local record (repairs here).
    pub keys_repaired: u64,
    /// Local records deleted because an authoritative peer proved them collected (rejoin).
    pub keys_dropped: u64,
    /// Bytes of anti-entropy frames sent (requests and replies).
    pub bytes_sent: u64,
    /// Writes refused by the horizon guard (older than a collected tombstone).
    pub guard_refused: u64,
    /// Collectable entries swept out of the trees below the horizon.
    pub swept: u64,
    /// Records received whose version was further ahead of this node's clock than the max
    /// clock offset (not applied; a later round brings them once the clock has caught up).
    pub refused_ahead: u64,
    /// When the last full round ended (ms), 0 = never.
    pub last_full_round_ms: u64,
}

/// The trees and horizons: what the store hook ([`Tracked`]) needs.
pub struct TreeIndex {
    trees: Vec<Option<Box<PartitionTree>>>,
    /// Per partition, the tombstone horizon known here (a raw version; 0 = none).
    horizons: Vec<u64>,
    /// Whether partition p is tracked here (held per the ring and owned by this shard).
    held: Vec<bool>,
    rejoining: bool,
    stats: AaeStats,
}

impl TreeIndex {
    fn tree_mut(&mut self, p: usize) -> &mut PartitionTree {
        self.trees[p].get_or_insert_with(|| Box::new(PartitionTree::new()))
    }

    fn note(&mut self, key: &[u8], meta: KeyMeta) {
        let p = partition_of(key);
        if !self.held[p] {
            return;
        }
        self.tree_mut(p).upsert(Entry {
            key,
            version: meta.version.0,
            tombstone: meta.tombstone,
            expires_s: expiry_s_of(meta.expires_at_ms),
        });
    }

    /// The tree of `p`, if it has one.
    pub fn tree(&self, p: usize) -> Option<&PartitionTree> {
        self.trees[p].as_deref()
    }

    /// The horizon of `p` (raw version).
    pub fn horizon(&self, p: usize) -> u64 {
        self.horizons[p]
    }
}

/// A [`Store`] wrapper through which the cluster core applies every write: it keeps the
/// partition trees in step with the store (the hook), refuses writes below the horizon for
/// absent keys (the guard), and refuses reads while the node is rejoining.
pub struct Tracked<'a> {
    /// The wrapped store.
    pub store: &'a mut dyn Store,
    index: &'a mut TreeIndex,
    /// Apply without the guard (records from an authoritative peer, read repairs).
    trusted: bool,
    /// Answer a guarded write "stale" instead of refusing it: for hint deliveries, where stale
    /// tells the holder to drop an obsolete hint (a refusal would keep it forever).
    guard_answers_stale: bool,
}

impl Tracked<'_> {
    /// Apply a read repair: as [`Store::apply`], without the horizon guard (see
    /// [`AntiEntropy::tracked_repair`]).
    pub fn apply_repair(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
        let trusted = std::mem::replace(&mut self.trusted, true);
        let r = self.apply(w);
        self.trusted = trusted;
        r
    }

    fn guarded(&self, w: &Write<'_>) -> bool {
        let h = self.index.horizons[partition_of(w.key)];
        !self.trusted && w.version.0 < h && self.store.version_of(w.key).is_none()
    }
}

impl Store for Tracked<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        if self.index.rejoining {
            return Err(StoreError::Io(std::io::Error::other(
                "not serving reads: rejoining through anti-entropy",
            )));
        }
        self.store.get(key)
    }
    fn version_of(&self, key: &[u8]) -> Option<Version> {
        self.store.version_of(key)
    }
    fn apply(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
        if self.guarded(&w) {
            self.index.stats.guard_refused += 1;
            if self.guard_answers_stale {
                return Ok(Applied::Stale {
                    current: Version(self.index.horizons[partition_of(w.key)]),
                });
            }
            // Refused, never "stale": a stale answer counts as an acknowledgement, and the
            // write would be acknowledged while stored nowhere (simulator seed 312).
            return Err(StoreError::Io(std::io::Error::other(format!(
                "version {} is below the tombstone horizon {} of its partition and the key is absent here",
                w.version,
                self.index.horizons[partition_of(w.key)]
            ))));
        }
        let a = self.store.apply(w)?;
        if a == Applied::Stored {
            self.index.note(
                w.key,
                KeyMeta {
                    version: w.version,
                    tombstone: w.value.is_none(),
                    expires_at_ms: w.expires_at_ms,
                },
            );
        }
        Ok(a)
    }
    fn needs_sync(&self) -> bool {
        self.store.needs_sync()
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        self.store.sync()
    }
    fn maintenance(&mut self, now_ms: u64, budget: usize) -> Result<bool, StoreError> {
        self.store.maintenance(now_ms, budget)
    }
    fn len(&self) -> usize {
        self.store.len()
    }
    fn highest_version(&self) -> Version {
        self.store.highest_version()
    }
    fn set_tombstone_horizon(&mut self, horizon: Version) {
        self.store.set_tombstone_horizon(horizon)
    }
    fn stats(&self, report: &mut dyn FnMut(&'static str, u64)) {
        self.store.stats(report)
    }
    fn scan_keys(
        &self,
        cursor: u64,
        limit: usize,
        f: &mut dyn FnMut(&[u8], KeyMeta),
    ) -> Result<Option<u64>, StoreError> {
        self.store.scan_keys(cursor, limit, f)
    }
}

enum Phase {
    /// Waiting for hashes of `asked` nodes at `level`.
    Tree { level: u8, asked: Vec<u16> },
    /// Waiting for the answer to our key lists of `asked` segments.
    Keys { asked: Vec<u16> },
    /// Waiting for the ack of a push.
    Push,
}

struct Exchange {
    partition: usize,
    peer: u32,
    start_ms: u64,
    deadline_ms: u64,
    phase: Phase,
    /// Differing segments not yet compared by key.
    pending: VecDeque<u16>,
    /// Keys the peer wants from us.
    wants: VecDeque<Vec<u8>>,
    steps: u32,
}

struct Round {
    queue: VecDeque<(usize, u32)>,
    /// Every exchange with every other replica completed.
    full: bool,
    /// No exchange failed (peers known dead were skipped, not failed).
    clean: bool,
    /// Partitions with at least one completed exchange in this round.
    synced: Vec<bool>,
    keys_moved: u64,
    bytes_moved: u64,
}

/// Anti-entropy of one cluster core (node or shard).
pub struct AntiEntropy {
    me: u32,
    /// Records with a version further ahead of the local clock than this are not applied
    /// (`--max-clock-offset-ms`; `u64::MAX` under the simulator's `accept_future_versions`).
    ahead_ms_max: u64,
    /// The local wall clock as of the last input (for the bound above).
    now_ms: u64,
    /// This node's clock minus the cluster's (the bound is on the cluster's clock).
    clock_offset_ms: i64,
    ring: Ring,
    interval_ms: u64,
    /// Delay of the first round, and between rounds, while rejoining: a node that refuses
    /// reads should not wait a whole interval for its peers.
    retry_ms: u64,
    window_ms: u64,
    grace_ms: u64,
    timeout_ms: u64,
    index: TreeIndex,
    /// Partitions tracked, ascending.
    held_list: Vec<usize>,
    store_horizon: u64,
    next_round_ms: u64,
    round: Option<Round>,
    exchanges: BTreeMap<u32, Exchange>,
    next_id: u32,
    /// Completed exchanges not yet reported to the leader: (partition, peer) → start ms.
    unreported: BTreeMap<(u16, u32), u64>,
    status_in_flight: Option<(u32, Reports, u64)>,
    // Leader state.
    reports: BTreeMap<(u16, u32, u32), u64>,
    failed_since: BTreeMap<u32, u64>,
    decided: Vec<u64>,
    // Sweep of collectable entries below the horizon: (index into held_list, segment).
    sweep: Option<(usize, usize)>,
    sweep_again: bool,
    last_tick_ms: u64,
    start_ms: u64,
    transmits: VecDeque<(u32, Vec<u8>)>,
    /// The highest horizon adopted (raw version).
    horizon_max: u64,
}

/// Completed exchanges to report: (partition, peer) → start ms.
type Reports = BTreeMap<(u16, u32), u64>;

/// A segment's key list as received: (segment, [(key, version, collectable)]).
type SegmentList<'a> = (usize, Vec<(&'a [u8], u64, bool)>);

/// What a key of a compared segment needs.
enum Answer {
    /// Our record, read from the store.
    Ours,
    /// This record (a tombstone deleting a record proved collected).
    Record(Record),
    /// Theirs: the initiator pushes it.
    Want,
}

/// An AE_KEYS reply being built, bounded in bytes (records and wants together, one item
/// always fits an empty reply, so a record of the largest value still fits a frame) and in
/// count (u16 on the wire).
#[derive(Default)]
struct KeysReply {
    records: Vec<u8>,
    nrec: u16,
    wants: Vec<u8>,
    nwant: u16,
}

impl KeysReply {
    fn fits(&self, extra: usize) -> bool {
        let used = self.records.len() + self.wants.len();
        used == 0 || used + extra <= AE_MESSAGE_BYTES_MAX
    }

    fn add_record(&mut self, rec: &Record) -> bool {
        if self.nrec == u16::MAX || !self.fits(rec.encoded_len()) {
            return false;
        }
        rec.encode(&mut self.records);
        self.nrec += 1;
        true
    }

    fn add_want(&mut self, key: &[u8]) -> bool {
        if self.nwant == u16::MAX || !self.fits(2 + key.len()) {
            return false;
        }
        push_key(&mut self.wants, key);
        self.nwant += 1;
        true
    }
}

fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

/// The horizon (raw version) for a sync point `s_ms`.
fn horizon_of(s_ms: u64, grace_ms: u64) -> u64 {
    let ms = s_ms.saturating_sub(grace_ms).min((1 << 42) - 1);
    Version::new(ms, 0, 0).0
}

impl AntiEntropy {
    /// Anti-entropy for node `config.node_id` holding the partitions `ring` gives it, all of
    /// them owned by this core until [`AntiEntropy::set_shard`] says otherwise.
    pub fn new(config: &ClusterConfig, ring: Ring, start_ms: u64) -> AntiEntropy {
        let mut a = AntiEntropy {
            me: config.node_id,
            ahead_ms_max: if config.mutations.accept_future_versions {
                u64::MAX
            } else {
                config.max_clock_offset_ms
            },
            now_ms: start_ms,
            clock_offset_ms: 0,
            ring,
            interval_ms: config.anti_entropy_interval_ms,
            retry_ms: config.anti_entropy_interval_ms.min(
                config
                    .failure_timeout_ms()
                    .max(2 * config.gossip_interval_ms),
            ),
            window_ms: config.tombstone_window_ms,
            grace_ms: config.request_timeout_ms,
            timeout_ms: config.request_timeout_ms,
            index: TreeIndex {
                trees: (0..PARTITION_COUNT).map(|_| None).collect(),
                horizons: vec![0; PARTITION_COUNT],
                held: vec![false; PARTITION_COUNT],
                rejoining: false,
                stats: AaeStats::default(),
            },
            held_list: Vec::new(),
            store_horizon: 0,
            next_round_ms: start_ms.saturating_add(config.anti_entropy_interval_ms),
            round: None,
            exchanges: BTreeMap::new(),
            next_id: 1,
            unreported: BTreeMap::new(),
            status_in_flight: None,
            reports: BTreeMap::new(),
            failed_since: BTreeMap::new(),
            decided: vec![0; PARTITION_COUNT],
            sweep: None,
            sweep_again: false,
            last_tick_ms: start_ms,
            start_ms,
            transmits: VecDeque::new(),
            horizon_max: 0,
        };
        a.set_shard(0, 1);
        a
    }

    /// Track only the partitions shard `shard` of `shards` owns (call before
    /// [`AntiEntropy::build`]). Anti-entropy frames start with the partition, so a driver
    /// routes them to `hash::shard_of_partition(partition, shards)`.
    pub fn set_shard(&mut self, shard: usize, shards: usize) {
        assert!(shards >= 1 && shard < shards);
        self.held_list.clear();
        for p in 0..PARTITION_COUNT {
            let held = self.ring.holds(self.me, p) && shard_of_partition(p, shards) == shard;
            self.index.held[p] = held;
            if held {
                self.held_list.push(p);
            } else {
                self.index.trees[p] = None;
            }
        }
    }

    /// Build the trees from the store in bounded steps (one pass over its keys), and decide
    /// whether this node must rejoin: its newest record is older than the tombstone window.
    pub fn build(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        let mut cursor = Some(0);
        // Bounded: each step lists AE_BUILD_KEYS_PER_STEP keys or ends the listing.
        let steps_max = store.len() / AE_BUILD_KEYS_PER_STEP + 2;
        for _ in 0..steps_max {
            let Some(c) = cursor else { break };
            let index = &mut self.index;
            cursor = store.scan_keys(c, AE_BUILD_KEYS_PER_STEP, &mut |k, m| index.note(k, m))?;
        }
        let newest_ms = store.highest_version().physical_ms();
        if !store.is_empty() && self.start_ms.saturating_sub(newest_ms) > self.window_ms {
            self.start_rejoin();
        }
        Ok(())
    }

    fn start_rejoin(&mut self) {
        // A single replica has nobody to rejoin from.
        if self.ring.replicas() > 1 && !self.held_list.is_empty() {
            if !self.index.rejoining {
                log::warn!(
                    "node {}: possibly out of the cluster for longer than the tombstone window: \
                     not serving reads until a full anti-entropy round completes",
                    self.me
                );
            }
            self.index.rejoining = true;
            // Do not wait a whole interval: reads are refused until a full round.
            self.next_round_ms = self
                .next_round_ms
                .min(self.last_tick_ms.saturating_add(self.retry_ms));
        }
    }

    /// Whether this node serves reads (false while rejoining).
    pub fn serving_reads(&self) -> bool {
        !self.index.rejoining
    }

    /// The trees and horizons.
    pub fn index(&self) -> &TreeIndex {
        &self.index
    }

    /// Counters.
    pub fn stats(&self) -> AaeStats {
        self.index.stats
    }

    /// Wrap `store` so that writes update the trees (use it for every apply).
    pub fn tracked<'a>(&'a mut self, store: &'a mut dyn Store) -> Tracked<'a> {
        Tracked {
            store,
            index: &mut self.index,
            trusted: false,
            guard_answers_stale: false,
        }
    }

    /// Like [`AntiEntropy::tracked`] but without the horizon guard, for read
    /// repairs. The guard exists so that an old write (a late hint or REPLICATE) cannot bring
    /// back a key whose tombstone was collected; a repair instead carries the newest record among
    /// current replicas, and a tombstone is collected only once every replica held it. A
    /// replica that lost a key below the horizon to a crash or a damaged record must be
    /// repairable, or it never converges (simulator seed 25).
    pub fn tracked_repair<'a>(&'a mut self, store: &'a mut dyn Store) -> Tracked<'a> {
        Tracked {
            store,
            index: &mut self.index,
            trusted: true,
            guard_answers_stale: false,
        }
    }

    /// Like [`AntiEntropy::tracked`], for hint deliveries: a hint below the horizon for an absent
    /// key is obsolete (its key's newer tombstone was collected, or the key is restored by
    /// repair from the replicas that hold it) and is answered "stale" so its holder drops it.
    pub fn tracked_hint<'a>(&'a mut self, store: &'a mut dyn Store) -> Tracked<'a> {
        Tracked {
            store,
            index: &mut self.index,
            trusted: false,
            guard_answers_stale: true,
        }
    }

    /// The next frame to send: `(node, frame)`.
    pub fn poll_transmit(&mut self) -> Option<(u32, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// When `on_tick` must run next at the latest.
    pub fn next_timeout_ms(&self) -> u64 {
        let mut t = self.next_round_ms;
        for x in self.exchanges.values() {
            t = t.min(x.deadline_ms);
        }
        t
    }

    fn alloc_id(&mut self) -> u32 {
        let id = self.next_id;
        // Ids only need to be unique among this core's outstanding anti-entropy requests.
        self.next_id = if id >= 0x7FFF_FFFE { 1 } else { id + 1 };
        id
    }

    fn send(&mut self, to: u32, frame: Vec<u8>) {
        self.index.stats.bytes_sent += frame.len() as u64;
        self.transmits.push_back((to, frame));
    }

    /// Note this node's clock offset from the cluster's: records are bounded by the
    /// cluster's clock, not this node's.
    pub fn set_clock_offset(&mut self, offset_ms: i64) {
        self.clock_offset_ms = offset_ms;
    }

    /// Start a round now (on demand), or right after the running one.
    pub fn trigger(&mut self, now_ms: u64) {
        self.next_round_ms = now_ms;
    }

    /// A membership event (the leader tracks how long nodes have been failed).
    pub fn on_member_event(&mut self, now_ms: u64, e: &MemberEvent) {
        match *e {
            MemberEvent::Failed { node } => {
                self.failed_since.entry(node).or_insert(now_ms);
            }
            MemberEvent::Recovered { node, .. } | MemberEvent::Restarted { node, .. } => {
                self.failed_since.remove(&node);
            }
            _ => {}
        }
    }

    /// Advance time: start rounds and exchanges, expire exchanges, report to the leader,
    /// sweep the trees. `alive` is the membership view; `leader` its leader.
    pub fn on_tick(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        alive: &dyn Fn(u32) -> bool,
        leader: u32,
    ) {
        self.now_ms = now_ms;
        if now_ms.saturating_sub(self.last_tick_ms) > self.window_ms {
            // The process was stopped (SIGSTOP, swap storm) for longer than the window.
            self.start_rejoin();
        }
        self.last_tick_ms = now_ms;
        // Expire exchanges.
        let late: Vec<u32> = self
            .exchanges
            .iter()
            .filter(|(_, x)| x.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.fail_exchange(id);
        }
        if self
            .status_in_flight
            .as_ref()
            .is_some_and(|s| s.2 <= now_ms)
        {
            // The leader did not answer: report these again.
            let (_, batch, _) = self.status_in_flight.take().expect("checked");
            for (k, v) in batch {
                let e = self.unreported.entry(k).or_insert(v);
                *e = (*e).max(v);
            }
        }
        if self.round.is_none() && now_ms >= self.next_round_ms {
            self.start_round(now_ms);
        }
        self.dispatch(now_ms, alive);
        self.finish_round_if_done(now_ms, store, alive, leader);
        self.sweep_step(now_ms);
    }

    fn start_round(&mut self, now_ms: u64) {
        // Rounds start `interval` apart, or back to back when a round takes longer.
        self.next_round_ms = self
            .next_round_ms
            .max(now_ms)
            .saturating_add(self.interval_ms);
        let mut queue = VecDeque::new();
        for &p in &self.held_list {
            for &peer in self.ring.preference_list(p) {
                if peer != self.me {
                    queue.push_back((p, peer));
                }
            }
        }
        self.index.stats.rounds += 1;
        self.round = Some(Round {
            queue,
            full: true,
            clean: true,
            synced: vec![false; PARTITION_COUNT],
            keys_moved: 0,
            bytes_moved: 0,
        });
    }

    fn dispatch(&mut self, now_ms: u64, alive: &dyn Fn(u32) -> bool) {
        while self.exchanges.len() < AE_EXCHANGES_IN_FLIGHT_MAX {
            let Some(round) = self.round.as_mut() else {
                return;
            };
            let Some((p, peer)) = round.queue.pop_front() else {
                return;
            };
            if !alive(peer) {
                round.full = false;
                continue;
            }
            let tree = self.index.tree_mut(p);
            tree.rehash();
            let id = self.alloc_id();
            let mut f = Vec::new();
            put_tree_request(&mut f, id, p, self.me, self.index.horizons[p], 0, &[0]);
            self.send(peer, f);
            self.exchanges.insert(
                id,
                Exchange {
                    partition: p,
                    peer,
                    start_ms: now_ms,
                    deadline_ms: now_ms.saturating_add(self.timeout_ms),
                    phase: Phase::Tree {
                        level: 0,
                        asked: vec![0],
                    },
                    pending: VecDeque::new(),
                    wants: VecDeque::new(),
                    steps: 0,
                },
            );
        }
    }

    fn fail_exchange(&mut self, id: u32) {
        if self.exchanges.remove(&id).is_some() {
            self.index.stats.exchanges_failed += 1;
            if let Some(r) = self.round.as_mut() {
                r.full = false;
                r.clean = false;
            }
        }
    }

    fn finish_round_if_done(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        alive: &dyn Fn(u32) -> bool,
        leader: u32,
    ) {
        let done =
            matches!(&self.round, Some(r) if r.queue.is_empty()) && self.exchanges.is_empty();
        if done {
            let r = self.round.take().expect("checked");
            if r.full {
                self.index.stats.full_rounds += 1;
                self.index.stats.last_full_round_ms = now_ms;
            }
            // Rejoined: every partition exchanged with at least one live replica and nothing
            // failed (a replica that stays dead must not keep this node unreadable).
            let rejoined = r.full || (r.clean && self.held_list.iter().all(|&p| r.synced[p]));
            if rejoined {
                if self.index.rejoining {
                    log::info!(
                        "node {}: rejoined through a full anti-entropy round",
                        self.me
                    );
                }
                self.index.rejoining = false;
            } else if self.index.rejoining {
                self.next_round_ms = self.next_round_ms.min(now_ms.saturating_add(self.retry_ms));
            }
        }
        // Report completed exchanges to the leader (at most one report in flight).
        if self.status_in_flight.is_none() && self.round.is_none() && !self.unreported.is_empty() {
            let batch = std::mem::take(&mut self.unreported);
            if leader == self.me {
                self.leader_record(self.me, &batch);
                let hs = self.leader_decide(now_ms, alive);
                self.adopt_horizons(store, &hs);
            } else if alive(leader) {
                let id = self.alloc_id();
                let mut f = Vec::new();
                put_status_request(&mut f, id, self.me, &batch);
                self.send(leader, f);
                self.status_in_flight = Some((id, batch, now_ms.saturating_add(self.timeout_ms)));
            } else {
                self.unreported = batch;
            }
        }
    }

    fn leader_record(&mut self, from: u32, batch: &BTreeMap<(u16, u32), u64>) {
        for (&(p, peer), &start) in batch {
            let (a, b) = pair(from, peer);
            let e = self.reports.entry((p, a, b)).or_insert(start);
            *e = (*e).max(start);
        }
    }

    /// The leader's horizons: for each partition whose included replicas all exchanged
    /// pairwise, the oldest of the pairs' latest exchange starts, minus the grace.
    fn leader_decide(&mut self, now_ms: u64, alive: &dyn Fn(u32) -> bool) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for p in 0..PARTITION_COUNT {
            let prefs = self.ring.preference_list(p);
            let included: Vec<u32> = prefs
                .iter()
                .copied()
                .filter(|&n| {
                    n == self.me
                        || alive(n)
                        || self
                            .failed_since
                            .get(&n)
                            .is_none_or(|&t| now_ms.saturating_sub(t) <= self.window_ms)
                })
                .collect();
            let h = if prefs.len() == 1 {
                horizon_of(now_ms, self.grace_ms)
            } else if included.len() < 2 {
                continue;
            } else {
                let mut s = u64::MAX;
                for (i, &a) in included.iter().enumerate() {
                    for &b in &included[i + 1..] {
                        let (x, y) = pair(a, b);
                        match self.reports.get(&(p as u16, x, y)) {
                            Some(&t) => s = s.min(t),
                            None => s = 0,
                        }
                    }
                }
                if s == 0 {
                    continue;
                }
                horizon_of(s, self.grace_ms)
            };
            self.decided[p] = self.decided[p].max(h);
            out.push((p as u16, self.decided[p]));
        }
        out
    }

    /// Drop `key` from its partition's tree: its store lost the record (found damaged), and
    /// the difference makes the next exchange bring it back from another replica.
    pub fn forget(&mut self, key: &[u8]) {
        let p = partition_of(key);
        if let Some(t) = self.index.trees[p].as_deref_mut() {
            t.remove(key);
        }
    }

    /// The highest tombstone horizon adopted here: a coordinator issues versions above it, so
    /// that its writes are never refused by the horizon guard of replicas whose horizon came
    /// from a node whose clock ran ahead.
    pub fn horizon_max(&self) -> Version {
        Version(self.horizon_max)
    }

    fn adopt(&mut self, p: usize, h: u64) {
        if h > self.index.horizons[p] {
            self.index.horizons[p] = h;
            self.horizon_max = self.horizon_max.max(h);
            if self.index.held[p] {
                if self.sweep.is_none() {
                    self.sweep = Some((0, 0));
                } else {
                    self.sweep_again = true;
                }
            }
        }
    }

    fn adopt_horizons(&mut self, store: &mut dyn Store, hs: &[(u16, u64)]) {
        for &(p, h) in hs {
            if (p as usize) < PARTITION_COUNT {
                self.adopt(p as usize, h);
            }
        }
        self.update_store_horizon(store);
    }

    fn update_store_horizon(&mut self, store: &mut dyn Store) {
        let min = self
            .held_list
            .iter()
            .map(|&p| self.index.horizons[p])
            .min()
            .unwrap_or(0);
        if min > self.store_horizon {
            self.store_horizon = min;
            store.set_tombstone_horizon(Version(min));
        }
    }

    fn sweep_step(&mut self, now_ms: u64) {
        let Some((mut pi, mut s)) = self.sweep else {
            return;
        };
        let mut entries = 0;
        for _ in 0..AE_SWEEP_SEGMENTS_PER_TICK {
            if pi >= self.held_list.len() || entries >= AE_SWEEP_ENTRIES_PER_TICK {
                break;
            }
            let p = self.held_list[pi];
            let h = self.index.horizons[p];
            match self.index.trees[p].as_mut() {
                Some(t) if t.mortal() > 0 => {
                    entries += t.segment_bytes(s) / merkle::ENTRY_HEADER_SIZE;
                    let n = t.remove_where(s, |e| e.version < h && e.collectable(now_ms));
                    self.index.stats.swept += n as u64;
                    s += 1;
                }
                // No tree, or nothing that could be collected: skip the partition.
                _ => s = SEGMENTS,
            }
            if s == SEGMENTS {
                s = 0;
                pi += 1;
            }
        }
        self.sweep = if pi < self.held_list.len() {
            Some((pi, s))
        } else if std::mem::take(&mut self.sweep_again) {
            Some((0, 0))
        } else {
            None
        };
    }

    /// Serve an anti-entropy request from `from`, appending the reply to `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_request(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        id: u32,
        opc: u8,
        aux: u8,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        self.now_ms = now_ms;
        let before = out.len();
        let r = self.serve(now_ms, store, from, id, opc, aux, body, out);
        if let Err(e) = &r {
            out.truncate(before);
            message::put_error(out, opc, id, e.status(), &e.to_string());
        }
        self.index.stats.bytes_sent += (out.len() - before) as u64;
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn serve(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        id: u32,
        opc: u8,
        aux: u8,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        if aux != 0 {
            return Err(bad(format!("aux must be 0, got 0x{aux:02x}")));
        }
        let mut r = Reader { b: body };
        match opc {
            ae_op::TREE => {
                let p = r.partition()?;
                let from = sender(&mut r, from)?;
                let h = r.u64("the horizon")?;
                let level = r.u8("the level")?;
                if level >= LEVELS {
                    return Err(bad(format!("tree level {level} out of range")));
                }
                let count = r.u16("the node count")? as usize;
                let width = [1, FANOUT, SEGMENTS][level as usize];
                if count > width {
                    return Err(bad(format!("{count} nodes asked at level {level}")));
                }
                let mut idx = Vec::with_capacity(count);
                for _ in 0..count {
                    let i = r.u16("a node index")? as usize;
                    if i >= width {
                        return Err(bad(format!("node {i} out of range at level {level}")));
                    }
                    idx.push(i);
                }
                r.end()?;
                self.check_held(p, from)?;
                self.adopt(p, h);
                self.update_store_horizon(store);
                if level == 0 {
                    self.index.stats.exchanges_served += 1;
                }
                let t = self.index.tree_mut(p);
                t.rehash();
                let mut hashes = Vec::with_capacity(count * 8);
                for i in idx {
                    hashes.extend_from_slice(&t.hash(level, i).expect("checked").to_be_bytes());
                }
                message::put_ok(
                    out,
                    ae_op::TREE,
                    id,
                    &[
                        &(p as u16).to_be_bytes(),
                        &self.index.horizons[p].to_be_bytes(),
                        &[level],
                        &(count as u16).to_be_bytes(),
                        &hashes,
                    ],
                );
                Ok(())
            }
            ae_op::KEYS => {
                let p = r.partition()?;
                let from = sender(&mut r, from)?;
                let h = r.u64("the horizon")?;
                let flags = r.u8("the flags")?;
                let count = r.u16("the segment count")? as usize;
                if count > SEGMENTS {
                    return Err(bad(format!("{count} segments")));
                }
                let mut segs: Vec<SegmentList<'_>> = Vec::with_capacity(count);
                for _ in 0..count {
                    let s = r.u16("a segment")? as usize;
                    if s >= SEGMENTS {
                        return Err(bad(format!("segment {s} out of range")));
                    }
                    let n = r.u32("an entry count")? as usize;
                    // Each entry takes at least 12 bytes: bounds n before allocating.
                    if n > r.b.len() / 12 {
                        return Err(bad("entry count larger than the body"));
                    }
                    let mut list = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = r.key()?;
                        let v = r.u64("a version")?;
                        let fl = r.u8("entry flags")?;
                        if fl & !ENTRY_COLLECTABLE != 0 {
                            return Err(bad(format!("entry reserved flag bits 0x{fl:02x}")));
                        }
                        if merkle::segment_of(k) != s || partition_of(k) != p {
                            return Err(bad("key listed in the wrong segment"));
                        }
                        list.push((k, v, fl & ENTRY_COLLECTABLE != 0));
                    }
                    segs.push((s, list));
                }
                r.end()?;
                if flags & !FLAG_REJOINING != 0 {
                    return Err(bad(format!("reserved flag bits 0x{flags:02x}")));
                }
                self.check_held(p, from)?;
                self.adopt(p, h);
                self.update_store_horizon(store);
                let peer_rejoining = flags & FLAG_REJOINING != 0;
                self.answer_keys(now_ms, store, id, p, peer_rejoining, &segs, out);
                Ok(())
            }
            ae_op::PUSH => {
                let p = r.partition()?;
                let from = sender(&mut r, from)?;
                let flags = r.u8("the flags")?;
                if flags & !FLAG_REJOINING != 0 {
                    return Err(bad(format!("reserved flag bits 0x{flags:02x}")));
                }
                let count = r.u16("the record count")? as usize;
                let mut recs = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let rec = Record::decode(&mut r)?;
                    if partition_of(&rec.key) != p {
                        return Err(bad("record of another partition"));
                    }
                    recs.push(rec);
                }
                r.end()?;
                self.check_held(p, from)?;
                let trusted = flags & FLAG_REJOINING == 0;
                match self.apply_records(store, &recs, trusted) {
                    Ok(applied) => {
                        message::put_ok(out, ae_op::PUSH, id, &[&(applied as u16).to_be_bytes()])
                    }
                    // The frame was fine; the store refuses writes (the exchange fails).
                    Err(e) => message::put_error(
                        out,
                        ae_op::PUSH,
                        id,
                        Status::StorageError,
                        &e.to_string(),
                    ),
                }
                Ok(())
            }
            ae_op::STATUS => {
                let _routing = r.u16("the routing partition")?;
                let from = sender(&mut r, from)?;
                let count = r.u16("the entry count")? as usize;
                if count > PARTITION_COUNT * crate::limits::REPLICAS_MAX {
                    return Err(bad(format!("{count} status entries")));
                }
                let mut batch = BTreeMap::new();
                for _ in 0..count {
                    let p = r.partition()? as u16;
                    let peer = r.u32("a peer")?;
                    let start = r.u64("a start time")?;
                    batch.insert((p, peer), start);
                }
                r.end()?;
                self.leader_record(from, &batch);
                // Liveness here comes from failures seen: a node failed for longer than the
                // window is excluded; others count as alive.
                let failed = self.failed_since.clone();
                let hs = self.leader_decide(now_ms, &|n| !failed.contains_key(&n));
                let mut b = Vec::with_capacity(2 + hs.len() * 10);
                b.extend_from_slice(&(hs.len() as u16).to_be_bytes());
                for (p, h) in &hs {
                    b.extend_from_slice(&p.to_be_bytes());
                    b.extend_from_slice(&h.to_be_bytes());
                }
                message::put_ok(out, ae_op::STATUS, id, &[&b]);
                self.adopt_horizons(store, &hs);
                Ok(())
            }
            other => Err(PeerError::UnknownOp(other)),
        }
    }

    fn check_held(&self, p: usize, from: u32) -> Result<(), PeerError> {
        if !self.ring.holds(from, p) || !self.ring.holds(self.me, p) {
            return Err(bad(format!(
                "partition {p} is not held by both node {from} and node {}",
                self.me
            )));
        }
        Ok(())
    }

    /// Apply records through the hook; returns how many became the local record.
    fn apply_records(
        &mut self,
        store: &mut dyn Store,
        recs: &[Record],
        trusted: bool,
    ) -> Result<usize, StoreError> {
        let mut t = Tracked {
            store,
            index: &mut self.index,
            trusted,
            guard_answers_stale: false,
        };
        let mut n = 0;
        let limit_ms = self
            .now_ms
            .saturating_add_signed(self.clock_offset_ms.saturating_neg())
            .saturating_add(self.ahead_ms_max);
        for rec in recs {
            if Version(rec.version).physical_ms() > limit_ms {
                t.index.stats.refused_ahead += 1;
                continue;
            }
            if t.apply(rec.as_write())? == Applied::Stored {
                n += 1;
            }
        }
        self.index.stats.keys_repaired += n as u64;
        Ok(n)
    }

    /// A tombstone one above `version`: deletes a record proved collected elsewhere.
    fn drop_record(key: &[u8], version: u64) -> Record {
        Record {
            key: key.to_vec(),
            version: version.saturating_add(1),
            expires_at_ms: 0,
            value: None,
        }
    }

    /// Compare the initiator's key lists with ours (responder side) and answer.
    #[allow(clippy::too_many_arguments)]
    fn answer_keys(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        id: u32,
        p: usize,
        peer_rejoining: bool,
        segs: &[SegmentList<'_>],
        out: &mut Vec<u8>,
    ) {
        let h = self.index.horizons[p];
        let me_rejoining = self.index.rejoining;
        let mut reply = KeysReply::default();
        let mut local_drops: Vec<Record> = Vec::new();
        let mut done = 0u16;
        'segments: for (s, theirs) in segs {
            let theirs: BTreeMap<&[u8], (u64, bool)> =
                theirs.iter().map(|&(k, v, c)| (k, (v, c))).collect();
            let ours: Vec<(Vec<u8>, u64, bool)> = match self.index.trees[p].as_deref() {
                Some(t) => t
                    .entries(*s)
                    .map(|e| {
                        (
                            e.key.to_vec(),
                            e.version,
                            e.version < h && e.collectable(now_ms),
                        )
                    })
                    .collect(),
                None => Vec::new(),
            };
            let ours_map: BTreeMap<&[u8], (u64, bool)> =
                ours.iter().map(|(k, v, c)| (&k[..], (*v, *c))).collect();
            let mut keys: Vec<&[u8]> = theirs.keys().chain(ours_map.keys()).copied().collect();
            keys.sort_unstable();
            keys.dedup();
            for k in keys {
                // What this key needs: nothing, our record, or theirs.
                let answer = match (theirs.get(k), ours_map.get(k)) {
                    (Some(&(tv, _)), Some(&(ov, _))) if tv == ov => None,
                    (Some(&(tv, _)), Some(&(ov, _))) if tv > ov => Some(Answer::Want),
                    (Some(_), Some(_)) | (None, Some(_)) => {
                        let (ov, collectable) = ours_map[k];
                        let absent_there = !theirs.contains_key(k);
                        if absent_there && collectable {
                            None
                        } else if absent_there && ov < h && me_rejoining && !peer_rejoining {
                            local_drops.push(Self::drop_record(k, ov));
                            None
                        } else {
                            Some(Answer::Ours)
                        }
                    }
                    (Some(&(tv, collectable)), None) => match store.version_of(k) {
                        // Our tree may have swept a collectable record the store still holds:
                        // when it is newer than theirs, it is the answer.
                        Some(sv) if sv.0 > tv => Some(Answer::Ours),
                        Some(sv) if sv.0 == tv => None,
                        _ if collectable => None,
                        _ if tv < h && peer_rejoining && !me_rejoining => {
                            Some(Answer::Record(Self::drop_record(k, tv)))
                        }
                        _ => Some(Answer::Want),
                    },
                    (None, None) => unreachable!("every key comes from one of the lists"),
                };
                let added = match answer {
                    None => true,
                    Some(Answer::Want) => reply.add_want(k),
                    Some(Answer::Record(rec)) => reply.add_record(&rec),
                    Some(Answer::Ours) => match store.get(k) {
                        Ok(Some(stored)) => reply.add_record(&Record {
                            key: k.to_vec(),
                            version: stored.version.0,
                            expires_at_ms: stored.expires_at_ms,
                            value: stored.value,
                        }),
                        _ => true, // compacted away or unreadable: nothing to send
                    },
                };
                if !added {
                    // The reply is full: this segment is asked again (with the lists updated
                    // by what this reply moves), so every reply makes progress.
                    break 'segments;
                }
            }
            done += 1;
        }
        let KeysReply {
            records,
            nrec,
            wants,
            nwant,
        } = reply;
        if !local_drops.is_empty() {
            // Best effort: a failing store reports itself through its own writes.
            if let Ok(n) = self.apply_records(store, &local_drops, true) {
                self.index.stats.keys_dropped += n as u64;
                self.index.stats.keys_repaired -= n as u64;
            }
        }
        self.index.stats.keys_sent += u64::from(nrec);
        let flags = if me_rejoining { FLAG_REJOINING } else { 0 };
        message::put_ok(
            out,
            ae_op::KEYS,
            id,
            &[
                &(p as u16).to_be_bytes(),
                &h.to_be_bytes(),
                &[flags],
                &done.to_be_bytes(),
                &nrec.to_be_bytes(),
                &records,
                &nwant.to_be_bytes(),
                &wants,
            ],
        );
    }

    /// A reply from `from` to one of our anti-entropy requests.
    pub fn on_reply(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        from: u32,
        f: &FrameRef<'_>,
        alive: &dyn Fn(u32) -> bool,
    ) {
        self.now_ms = now_ms;
        let opc = f.op & !RESPONSE_BIT;
        if opc == ae_op::STATUS {
            if self.status_in_flight.as_ref().is_none_or(|s| s.0 != f.id) {
                return;
            }
            let (_, batch, _) = self.status_in_flight.take().expect("checked");
            match decode_status_reply(f) {
                Ok(hs) => self.adopt_horizons(store, &hs),
                Err(_) => {
                    for (k, v) in batch {
                        self.unreported.entry(k).or_insert(v);
                    }
                }
            }
            return;
        }
        let Some(mut x) = self.exchanges.remove(&f.id) else {
            return; // late or unknown
        };
        if x.peer != from || f.aux != Status::Ok as u8 {
            self.index.stats.exchanges_failed += 1;
            if let Some(r) = self.round.as_mut() {
                r.full = false;
                r.clean = false;
            }
            return;
        }
        x.steps += 1;
        let r = match (&x.phase, opc) {
            (Phase::Tree { level, asked }, ae_op::TREE) => {
                let (level, asked) = (*level, asked.clone());
                self.on_tree_reply(store, &mut x, level, &asked, f.body)
            }
            (Phase::Keys { asked }, ae_op::KEYS) => {
                let asked = asked.clone();
                self.on_keys_reply(store, &mut x, &asked, f.body)
            }
            (Phase::Push, ae_op::PUSH) => {
                if f.body.len() == 2 {
                    Ok(())
                } else {
                    Err(bad("PUSH reply is not 2 bytes"))
                }
            }
            _ => Err(bad("reply does not match the exchange")),
        };
        if r.is_err() || x.steps > AE_EXCHANGE_STEPS_MAX {
            self.index.stats.exchanges_failed += 1;
            if let Some(r) = self.round.as_mut() {
                r.full = false;
                r.clean = false;
            }
            return;
        }
        self.advance(now_ms, store, x);
        self.dispatch(now_ms, alive);
    }

    fn on_tree_reply(
        &mut self,
        store: &mut dyn Store,
        x: &mut Exchange,
        level: u8,
        asked: &[u16],
        body: &[u8],
    ) -> Result<(), PeerError> {
        let mut r = Reader { b: body };
        let p = r.partition()?;
        let h = r.u64("the horizon")?;
        let l = r.u8("the level")?;
        let count = r.u16("the count")? as usize;
        if p != x.partition || l != level || count != asked.len() {
            return Err(bad("TREE reply does not match its request"));
        }
        let mut theirs = Vec::with_capacity(count);
        for _ in 0..count {
            theirs.push(r.u64("a hash")?);
        }
        r.end()?;
        self.adopt(p, h);
        self.update_store_horizon(store);
        let t = self.index.tree_mut(p);
        t.rehash();
        let differing: Vec<u16> = asked
            .iter()
            .zip(&theirs)
            .filter(|(&i, &hh)| t.hash(level, i as usize) != Some(hh))
            .map(|(&i, _)| i)
            .collect();
        if level + 1 < LEVELS {
            let next: Vec<u16> = differing
                .iter()
                .flat_map(|&i| (0..FANOUT as u16).map(move |c| i * FANOUT as u16 + c))
                .collect();
            x.phase = Phase::Tree {
                level: level + 1,
                asked: next,
            };
        } else {
            x.pending.extend(differing);
            x.phase = Phase::Push; // placeholder: advance() picks the next step
        }
        Ok(())
    }

    fn on_keys_reply(
        &mut self,
        store: &mut dyn Store,
        x: &mut Exchange,
        asked: &[u16],
        body: &[u8],
    ) -> Result<(), PeerError> {
        let mut r = Reader { b: body };
        let p = r.partition()?;
        let h = r.u64("the horizon")?;
        let flags = r.u8("the flags")?;
        let done = r.u16("the done count")? as usize;
        if p != x.partition || done > asked.len() || flags & !FLAG_REJOINING != 0 {
            return Err(bad("KEYS reply does not match its request"));
        }
        let nrec = r.u16("the record count")? as usize;
        let mut recs = Vec::with_capacity(nrec.min(1024));
        for _ in 0..nrec {
            let rec = Record::decode(&mut r)?;
            if partition_of(&rec.key) != p {
                return Err(bad("record of another partition"));
            }
            recs.push(rec);
        }
        let nwant = r.u16("the want count")? as usize;
        let mut wants = Vec::with_capacity(nwant.min(1024));
        for _ in 0..nwant {
            let k = r.key()?;
            if partition_of(k) != p {
                return Err(bad("wanted key of another partition"));
            }
            wants.push(k.to_vec());
        }
        r.end()?;
        self.adopt(p, h);
        self.update_store_horizon(store);
        let trusted = flags & FLAG_REJOINING == 0;
        let bytes: usize = recs.iter().map(Record::encoded_len).sum();
        let drops = recs
            .iter()
            .filter(|r| {
                r.value.is_none()
                    && self
                        .index
                        .tree(p)
                        .and_then(|t| t.get(&r.key))
                        .is_some_and(|e| e.version.saturating_add(1) == r.version && !e.tombstone)
            })
            .count();
        let n = self
            .apply_records(store, &recs, trusted)
            .map_err(|e| bad(format!("storage: {e}")))?;
        // A pulled record older than what the store holds (a tombstone swept from our tree,
        // say): push ours back, newest wins on both sides.
        for rec in &recs {
            if store
                .version_of(&rec.key)
                .is_some_and(|v| v.0 > rec.version)
            {
                x.wants.push_back(rec.key.clone());
            }
        }
        let dropped = drops.min(n);
        self.index.stats.keys_dropped += dropped as u64;
        self.index.stats.keys_repaired -= dropped as u64;
        if let Some(round) = self.round.as_mut() {
            round.keys_moved += recs.len() as u64;
            round.bytes_moved += bytes as u64;
        }
        for _ in 0..done {
            x.pending.pop_front();
        }
        x.wants.extend(wants);
        x.phase = Phase::Push;
        Ok(())
    }

    /// Send the exchange's next request, or finish it.
    fn advance(&mut self, now_ms: u64, store: &mut dyn Store, mut x: Exchange) {
        let over_budget = self.round.as_ref().is_some_and(|r| {
            r.keys_moved >= AE_ROUND_KEYS_MAX || r.bytes_moved >= AE_ROUND_BYTES_MAX
        });
        if over_budget {
            self.index.stats.exchanges_failed += 1;
            if let Some(r) = self.round.as_mut() {
                r.full = false;
                r.clean = false;
            }
            return;
        }
        let p = x.partition;
        let h = self.index.horizons[p];
        let rejoining = if self.index.rejoining {
            FLAG_REJOINING
        } else {
            0
        };
        let id = self.alloc_id();
        let mut f = Vec::new();
        if let Phase::Tree { level, asked } = &x.phase {
            if asked.is_empty() {
                return self.complete(x);
            }
            put_tree_request(&mut f, id, p, self.me, h, *level, asked);
        } else if !x.wants.is_empty() {
            // Push what the peer wants, up to a message's worth.
            let mut recs = Vec::new();
            let mut buf = Vec::new();
            while let Some(k) = x.wants.front() {
                let rec = match store.get(k) {
                    Ok(Some(s)) => Record {
                        key: k.clone(),
                        version: s.version.0,
                        expires_at_ms: s.expires_at_ms,
                        value: s.value,
                    },
                    _ => {
                        x.wants.pop_front();
                        continue;
                    }
                };
                if !buf.is_empty() && buf.len() + rec.encoded_len() > AE_MESSAGE_BYTES_MAX {
                    break;
                }
                rec.encode(&mut buf);
                recs.push(());
                x.wants.pop_front();
                if recs.len() == u16::MAX as usize {
                    break;
                }
            }
            if recs.is_empty() {
                return self.advance_keys(now_ms, x, id, h, rejoining);
            }
            self.index.stats.keys_sent += recs.len() as u64;
            if let Some(r) = self.round.as_mut() {
                r.keys_moved += recs.len() as u64;
                r.bytes_moved += buf.len() as u64;
            }
            frame::put_frame(
                &mut f,
                ae_op::PUSH,
                0,
                id,
                &[
                    &(p as u16).to_be_bytes(),
                    &self.me.to_be_bytes(),
                    &[rejoining],
                    &(recs.len() as u16).to_be_bytes(),
                    &buf,
                ],
            );
            x.phase = Phase::Push;
        } else {
            return self.advance_keys(now_ms, x, id, h, rejoining);
        }
        x.deadline_ms = now_ms.saturating_add(self.timeout_ms);
        let peer = x.peer;
        self.exchanges.insert(id, x);
        self.send(peer, f);
    }

    fn advance_keys(&mut self, now_ms: u64, mut x: Exchange, id: u32, h: u64, flags: u8) {
        if x.pending.is_empty() {
            return self.complete(x);
        }
        let p = x.partition;
        // A segment whose list alone exceeds a message (tens of thousands of keys in one
        // 1/262,144th of the key space) is not compared: the exchange cannot complete.
        let too_large =
            |s: &u16, t: &PartitionTree| t.segment_bytes(*s as usize) > AE_MESSAGE_BYTES_MAX;
        if x.pending
            .front()
            .is_some_and(|s| too_large(s, self.index.tree_mut(p)))
        {
            log::warn!("anti-entropy: partition {p} segment too large to compare");
            self.index.stats.exchanges_failed += 1;
            if let Some(r) = self.round.as_mut() {
                r.full = false;
                r.clean = false;
            }
            return;
        }
        let tree = self.index.tree_mut(p);
        let mut body = Vec::new();
        let mut asked = Vec::new();
        for &s in &x.pending {
            let bytes = tree.segment_bytes(s as usize);
            // A list is 14 + key bytes per entry in the tree, 11 + key bytes on the wire.
            if !asked.is_empty() && body.len() + bytes > AE_MESSAGE_BYTES_MAX {
                break;
            }
            body.extend_from_slice(&s.to_be_bytes());
            let n_at = body.len();
            body.extend_from_slice(&0u32.to_be_bytes());
            let mut n = 0u32;
            for e in tree.entries(s as usize) {
                push_key(&mut body, e.key);
                body.extend_from_slice(&e.version.to_be_bytes());
                body.push(if e.version < h && e.collectable(now_ms) {
                    ENTRY_COLLECTABLE
                } else {
                    0
                });
                n += 1;
            }
            body[n_at..n_at + 4].copy_from_slice(&n.to_be_bytes());
            asked.push(s);
        }
        let mut f = Vec::new();
        frame::put_frame(
            &mut f,
            ae_op::KEYS,
            0,
            id,
            &[
                &(p as u16).to_be_bytes(),
                &self.me.to_be_bytes(),
                &h.to_be_bytes(),
                &[flags],
                &(asked.len() as u16).to_be_bytes(),
                &body,
            ],
        );
        x.phase = Phase::Keys { asked };
        x.deadline_ms = now_ms.saturating_add(self.timeout_ms);
        let peer = x.peer;
        self.exchanges.insert(id, x);
        self.send(peer, f);
    }

    fn complete(&mut self, x: Exchange) {
        self.index.stats.exchanges += 1;
        if let Some(r) = self.round.as_mut() {
            r.synced[x.partition] = true;
        }
        let e = self
            .unreported
            .entry((x.partition as u16, x.peer))
            .or_insert(x.start_ms);
        *e = (*e).max(x.start_ms);
    }

    /// STATS figures as `(name, value)` pairs: counters that add up over shards, and `_max` /
    /// `_min` figures that combine by max / min.
    pub fn stats_report(&self, now_ms: u64, report: &mut dyn FnMut(&'static str, u64)) {
        let s = self.index.stats;
        // Since the last full round, or since start when there was none yet.
        let since = now_ms.saturating_sub(s.last_full_round_ms.max(self.start_ms));
        let min_h = self
            .held_list
            .iter()
            .map(|&p| self.index.horizons[p])
            .min()
            .unwrap_or(0);
        let tree_keys: usize = self.index.trees.iter().flatten().map(|t| t.len()).sum();
        let tree_bytes: usize = self
            .index
            .trees
            .iter()
            .flatten()
            .map(|t| t.memory_bytes())
            .sum();
        let lines: [(&str, u64); 18] = [
            ("aae_rounds", s.rounds),
            ("aae_full_rounds", s.full_rounds),
            ("aae_ms_since_full_round_max", since),
            ("aae_exchanges", s.exchanges),
            ("aae_exchanges_failed", s.exchanges_failed),
            ("aae_exchanges_served", s.exchanges_served),
            ("aae_keys_sent", s.keys_sent),
            ("aae_keys_repaired", s.keys_repaired),
            ("aae_keys_dropped", s.keys_dropped),
            ("aae_bytes_sent", s.bytes_sent),
            ("aae_guard_refused", s.guard_refused),
            ("aae_swept", s.swept),
            ("aae_refused_ahead", s.refused_ahead),
            ("aae_shards_rejoining", u64::from(self.index.rejoining)),
            ("aae_horizon_ms_min", Version(min_h).physical_ms()),
            ("aae_tree_keys", tree_keys as u64),
            ("aae_tree_bytes", tree_bytes as u64),
            ("aae_exchanges_in_flight", self.exchanges.len() as u64),
        ];
        for (name, v) in lines {
            report(name, v);
        }
    }
}

/// Read the sender id of a request. `from` is the peer session's node id, or 0 when the frame
/// was forwarded from another shard (which does not carry it); a mismatch is an error.
fn sender(r: &mut Reader<'_>, from: u32) -> Result<u32, PeerError> {
    let s = r.u32("the sender")?;
    if from != 0 && from != s {
        return Err(bad(format!("sender {s} on node {from}'s session")));
    }
    Ok(s)
}

/// The partition an anti-entropy request addresses (its first two body bytes), for drivers
/// that route peer frames to the shard owning it; `None` if `op` is not anti-entropy or the
/// body is too short (the owning shard's decoder then reports it).
pub fn routing_partition(op: u8, body: &[u8]) -> Option<usize> {
    if !is_anti_entropy_op(op) || body.len() < 2 {
        return None;
    }
    let p = u16::from_be_bytes([body[0], body[1]]) as usize;
    (p < PARTITION_COUNT).then_some(p)
}

fn push_key(out: &mut Vec<u8>, k: &[u8]) {
    out.extend_from_slice(&(k.len() as u16).to_be_bytes());
    out.extend_from_slice(k);
}

#[allow(clippy::too_many_arguments)]
fn put_tree_request(out: &mut Vec<u8>, id: u32, p: usize, me: u32, h: u64, level: u8, idx: &[u16]) {
    assert!(idx.len() <= SEGMENTS);
    let mut b = Vec::with_capacity(idx.len() * 2);
    for i in idx {
        b.extend_from_slice(&i.to_be_bytes());
    }
    frame::put_frame(
        out,
        ae_op::TREE,
        0,
        id,
        &[
            &(p as u16).to_be_bytes(),
            &me.to_be_bytes(),
            &h.to_be_bytes(),
            &[level],
            &(idx.len() as u16).to_be_bytes(),
            &b,
        ],
    );
}

fn put_status_request(out: &mut Vec<u8>, id: u32, me: u32, batch: &Reports) {
    let mut b = Vec::with_capacity(8 + batch.len() * 14);
    // Routing partition: a driver with several shards serves STATUS on the shard of the first
    // entry's partition (a batch holds the partitions of one sending shard).
    let routing = batch.keys().next().map_or(0, |k| k.0);
    b.extend_from_slice(&routing.to_be_bytes());
    b.extend_from_slice(&me.to_be_bytes());
    b.extend_from_slice(&(batch.len() as u16).to_be_bytes());
    for (&(p, peer), &start) in batch {
        b.extend_from_slice(&p.to_be_bytes());
        b.extend_from_slice(&peer.to_be_bytes());
        b.extend_from_slice(&start.to_be_bytes());
    }
    frame::put_frame(out, ae_op::STATUS, 0, id, &[&b]);
}

fn decode_status_reply(f: &FrameRef<'_>) -> Result<Vec<(u16, u64)>, PeerError> {
    if f.aux != Status::Ok as u8 {
        return Err(bad("STATUS refused"));
    }
    let mut r = Reader { b: f.body };
    let n = r.u16("the count")? as usize;
    let mut hs = Vec::with_capacity(n.min(PARTITION_COUNT));
    for _ in 0..n {
        let p = r.partition()? as u16;
        hs.push((p, r.u64("a horizon")?));
    }
    r.end()?;
    Ok(hs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rng::SplitMix64;
    use crate::protocol::frame;
    use crate::storage::memory::MemoryStore;

    fn pair_of_nodes() -> (AntiEntropy, AntiEntropy) {
        let mut c = ClusterConfig::build(1, "1=127.0.0.1:1,2=127.0.0.1:2", 2).unwrap();
        c.anti_entropy_interval_ms = 10_000;
        let ring = Ring::new(&c.node_ids(), 2);
        let a = AntiEntropy::new(&c, ring.clone(), 1_000_000);
        c.node_id = 2;
        let b = AntiEntropy::new(&c, ring, 1_000_000);
        (a, b)
    }

    fn put(aae: &mut AntiEntropy, store: &mut MemoryStore, key: &[u8], v: u64, tomb: bool) {
        aae.tracked(store)
            .apply(Write {
                key,
                value: if tomb { None } else { Some(b"value") },
                version: Version(v),
                expires_at_ms: 0,
            })
            .unwrap();
    }

    /// Run node 1's round against node 2, handing frames over directly. Returns the frames
    /// node 1 sent.
    fn round(
        a: &mut AntiEntropy,
        sa: &mut MemoryStore,
        b: &mut AntiEntropy,
        sb: &mut MemoryStore,
        now: u64,
    ) -> Vec<Vec<u8>> {
        let alive = |_: u32| true;
        a.trigger(now);
        a.on_tick(now, sa, &alive, 1);
        let mut sent = Vec::new();
        for _ in 0..100_000 {
            let Some((to, req)) = a.poll_transmit() else {
                break;
            };
            assert_eq!(to, b.me, "node 2's STATUS goes to the leader, node 1");
            let (f, _) = frame::parse(&req).unwrap().unwrap();
            let mut reply = Vec::new();
            b.on_request(now, sb, a.me, f.id, f.op, f.aux, f.body, &mut reply)
                .unwrap();
            let (rf, _) = frame::parse(&reply).unwrap().unwrap();
            a.on_reply(now, sa, b.me, &rf, &alive);
            sent.push(req);
        }
        a.on_tick(now, sa, &alive, 1);
        sent
    }

    #[test]
    fn an_exchange_repairs_both_sides_newest_wins() {
        let (mut a, mut b) = pair_of_nodes();
        let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
        let v = |ms: u64| Version::new(ms, 0, 1).0;
        for i in 0..500 {
            let k = format!("k{i}");
            put(&mut a, &mut sa, k.as_bytes(), v(1_000_000), false);
            put(&mut b, &mut sb, k.as_bytes(), v(1_000_000), false);
        }
        put(&mut a, &mut sa, b"only-a", v(1_000_001), false);
        put(&mut b, &mut sb, b"only-b", v(1_000_001), false);
        put(&mut a, &mut sa, b"k1", v(1_000_002), true); // a newer tombstone on a
        put(&mut b, &mut sb, b"k2", v(1_000_003), false); // a newer value on b
        round(&mut a, &mut sa, &mut b, &mut sb, 1_000_010);
        for (k, ver, live) in [
            (&b"only-a"[..], v(1_000_001), true),
            (b"only-b", v(1_000_001), true),
            (b"k1", v(1_000_002), false),
            (b"k2", v(1_000_003), true),
        ] {
            for s in [&mut sa, &mut sb] {
                let r = s.get(k).unwrap().unwrap();
                assert_eq!((r.version.0, r.value.is_some()), (ver, live));
            }
        }
        assert_eq!(a.stats().keys_sent, 2);
        assert_eq!(a.stats().keys_repaired, 2);
        assert_eq!(a.stats().exchanges, PARTITION_COUNT as u64);
        // Equal now: the next round is one root comparison per partition.
        let sent = round(&mut a, &mut sa, &mut b, &mut sb, 1_000_020);
        assert_eq!(sent.len(), PARTITION_COUNT);
        assert!(sent.iter().all(|f| f[4] == ae_op::TREE));
    }

    #[test]
    fn the_guard_refuses_old_writes_for_absent_keys_below_the_horizon() {
        let (mut a, _) = pair_of_nodes();
        let mut s = MemoryStore::new();
        let p = partition_of(b"gone");
        a.adopt(p, Version::new(2_000_000, 0, 0).0);
        let old = Version::new(1_000_000, 0, 1).0;
        let w = Write {
            key: b"gone",
            value: Some(b"value"),
            version: Version(old),
            expires_at_ms: 0,
        };
        // A coordinator's write is refused (never acknowledged as "stale")...
        assert!(a.tracked(&mut s).apply(w).is_err());
        assert!(s.get(b"gone").unwrap().is_none(), "refused");
        // ...a hint delivery is answered stale, so its holder drops the obsolete hint...
        assert!(matches!(
            a.tracked_hint(&mut s).apply(w),
            Ok(Applied::Stale { .. })
        ));
        assert!(s.get(b"gone").unwrap().is_none());
        assert_eq!(a.stats().guard_refused, 2);
        // ...and a read repair, carrying the newest record of current replicas, is applied.
        a.tracked_repair(&mut s).apply(w).unwrap();
        assert_eq!(s.get(b"gone").unwrap().unwrap().version.0, old);
        // A key still held takes an older-than-horizon write that is newer than its record.
        let q = partition_of(b"held");
        put(
            &mut a,
            &mut s,
            b"held",
            Version::new(900_000, 0, 1).0,
            false,
        );
        a.adopt(q, Version::new(2_000_000, 0, 0).0);
        put(&mut a, &mut s, b"held", old, false);
        assert_eq!(s.get(b"held").unwrap().unwrap().version.0, old);
    }

    #[test]
    fn the_leader_excludes_only_replicas_failed_longer_than_the_window() {
        let (mut a, _) = pair_of_nodes();
        a.window_ms = 1_000;
        let mut batch = Reports::new();
        for p in 0..PARTITION_COUNT as u16 {
            batch.insert((p, 2), 1_500_000);
        }
        a.leader_record(1, &batch);
        let all = |_: u32| true;
        let hs = a.leader_decide(1_600_000, &all);
        assert_eq!(hs.len(), PARTITION_COUNT);
        let h = horizon_of(1_500_000, a.grace_ms);
        assert!(hs.iter().all(|&(_, x)| x == h));
        // Node 2 fails: its pair's old report holds the horizon back until the window ends.
        let (mut a, _) = pair_of_nodes();
        a.window_ms = 1_000;
        a.on_member_event(1_600_000, &MemberEvent::Failed { node: 2 });
        let down = |n: u32| n != 2;
        assert!(
            a.leader_decide(1_600_500, &down).is_empty(),
            "no pair report"
        );
        a.leader_record(1, &batch);
        let hs = a.leader_decide(1_600_500, &down);
        assert!(hs.iter().all(|&(_, x)| x == h));
        // Past the window node 2 is excluded, but one replica of two is not enough to move
        // the horizon (nobody to have exchanged with): nothing is decided.
        assert!(a.leader_decide(1_700_000, &down).is_empty());
    }

    /// Replies and pushes stay within a frame whatever the values: large records go a few per
    /// message, the largest value alone, and everything arrives.
    #[test]
    fn large_values_move_in_bounded_messages() {
        for b_starts in [true, false] {
            let (mut a, mut b) = pair_of_nodes();
            let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
            let v = Version::new(1_000_000, 0, 1);
            let big = vec![7u8; crate::limits::VALUE_SIZE_MAX];
            let mid = vec![8u8; 200 * 1024];
            for i in 0..12 {
                let k = format!("big{i}");
                let value: &[u8] = if i % 4 == 0 { &big } else { &mid };
                a.tracked(&mut sa)
                    .apply(Write {
                        key: k.as_bytes(),
                        value: Some(value),
                        version: v,
                        expires_at_ms: 0,
                    })
                    .unwrap();
            }
            let sent = if b_starts {
                round(&mut b, &mut sb, &mut a, &mut sa, 1_000_100)
            } else {
                round(&mut a, &mut sa, &mut b, &mut sb, 1_000_100)
            };
            assert!(sent
                .iter()
                .all(|f| f.len() <= 4 + crate::limits::FRAME_SIZE_MAX));
            for i in 0..12 {
                let got = sb.get(format!("big{i}").as_bytes()).unwrap().unwrap();
                assert_eq!(
                    got.value.unwrap().len(),
                    if i % 4 == 0 { big.len() } else { mid.len() }
                );
            }
        }
    }

    /// A tombstone swept from one tree (below the horizon) but still in its store beats an
    /// older value on the other replica, whichever side starts the exchange.
    #[test]
    fn swept_tombstones_still_in_the_store_win() {
        for a_starts in [true, false] {
            let (mut a, mut b) = pair_of_nodes();
            let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
            let old = Version::new(1_000_000, 0, 1).0;
            let tomb = Version::new(1_000_500, 0, 1).0;
            put(&mut a, &mut sa, b"k", old, false);
            put(&mut b, &mut sb, b"k", old, false);
            put(&mut a, &mut sa, b"k", tomb, true);
            let p = partition_of(b"k");
            a.adopt(p, Version::new(1_001_000, 0, 0).0);
            for _ in 0..100 {
                a.sweep_step(1_002_000);
            }
            assert!(a.index.tree(p).unwrap().get(b"k").is_none(), "swept");
            if a_starts {
                round(&mut a, &mut sa, &mut b, &mut sb, 1_002_000);
            } else {
                round(&mut b, &mut sb, &mut a, &mut sa, 1_002_000);
            }
            let got = sb.get(b"k").unwrap().unwrap();
            assert_eq!(
                (got.version.0, got.value),
                (tomb, None),
                "a_starts {a_starts}"
            );
        }
    }

    #[test]
    fn rejoin_after_a_long_pause_or_absence() {
        // A restart over a non-empty store whose newest record is recent: serving reads.
        let (mut a, _) = pair_of_nodes();
        let mut s = MemoryStore::new();
        put(&mut a, &mut s, b"k", Version::new(999_000, 0, 1).0, false);
        let (mut a, _) = pair_of_nodes();
        a.build(&s).unwrap();
        assert!(a.serving_reads());
        // A newest record older than the window: rejoining, and the first round comes soon.
        let (mut a, _) = pair_of_nodes();
        a.window_ms = 500;
        a.build(&s).unwrap();
        assert!(!a.serving_reads());
        assert!(a.next_round_ms < 1_000_000 + a.interval_ms);
        let mut t = a.tracked(&mut s);
        assert!(t.get(b"k").is_err(), "reads refused while rejoining");
        // A tick gap longer than the window (the process was stopped) starts a rejoin too.
        let (mut b, _) = pair_of_nodes();
        b.window_ms = 500;
        let none = |_: u32| false;
        b.on_tick(1_000_100, &mut s, &none, 1);
        assert!(b.serving_reads());
        b.on_tick(1_000_700, &mut s, &none, 1);
        assert!(!b.serving_reads());
    }

    /// Random and mutated bodies for every anti-entropy request and reply decode to an error
    /// or a value, never a panic.
    #[test]
    fn garbage_frames_never_panic() {
        let (mut a, mut b) = pair_of_nodes();
        let (mut sa, mut sb) = (MemoryStore::new(), MemoryStore::new());
        for i in 0..200 {
            let k = format!("k{i}");
            put(
                &mut a,
                &mut sa,
                k.as_bytes(),
                Version::new(1_000_000, 0, 1).0,
                i % 5 == 0,
            );
            put(
                &mut b,
                &mut sb,
                k.as_bytes(),
                Version::new(1_000_001, 0, 2).0,
                false,
            );
        }
        // Collect real frames of an exchange to mutate.
        let mut valid = round(&mut a, &mut sa, &mut b, &mut sb, 1_000_100);
        let mut status = Vec::new();
        let mut batch = Reports::new();
        batch.insert((3, 2), 5);
        put_status_request(&mut status, 9, 1, &batch);
        valid.push(status);
        let mut rng = SplitMix64::new(99);
        let alive = |_: u32| true;
        for f in valid.iter().step_by(7).take(200) {
            let (op, body) = (f[4], &f[10..]);
            for cut in 0..body.len().min(64) {
                let mut out = Vec::new();
                let _ = b.on_request(1_000_200, &mut sb, 1, 1, op, 0, &body[..cut], &mut out);
            }
            for _ in 0..50 {
                let mut g = body.to_vec();
                if g.is_empty() {
                    break;
                }
                let i = rng.below(g.len() as u64) as usize;
                g[i] = rng.next_u64() as u8;
                let mut out = Vec::new();
                let _ = b.on_request(1_000_200, &mut sb, 1, 1, op, 0, &g, &mut out);
                // The same bytes as a reply to any outstanding id.
                let rf = FrameRef {
                    op: op | RESPONSE_BIT,
                    aux: 0,
                    id: 1 + rng.below(2_000) as u32,
                    body: &g,
                };
                a.on_reply(1_000_200, &mut sa, 2, &rf, &alive);
            }
        }
        for op in [ae_op::TREE, ae_op::KEYS, ae_op::PUSH, ae_op::STATUS, 0x2F] {
            for _ in 0..200 {
                let n = rng.below(48) as usize;
                let g: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                let mut out = Vec::new();
                let _ = b.on_request(1_000_300, &mut sb, 1, 1, op, 0, &g, &mut out);
                assert!(!out.is_empty(), "every request is answered");
            }
        }
    }
}
