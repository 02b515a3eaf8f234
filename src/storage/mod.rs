//! Storage: the interface a shard's store offers, and its implementations.
//!
//! A shard owns one [`Store`]. The store keeps, per key, the newest *record* it has seen: a
//! value or a tombstone, with its [`Version`] and optional expiry. Writes are applied
//! last-write-wins: a record older than (or equal to) the one held is ignored, so replicas that
//! see the same writes in any order end up identical.
//!
//! The store is sans-IO in the sense of ARCHITECTURE.md: it never reads the clock (`now_ms`
//! is a parameter) and the shard decides when to write and sync. At the end of every
//! event-loop turn the shard calls [`Store::flush`] (the turn's records reach the file in one
//! write) and then, under the `always` policy, [`Store::sync`] (group commit: one fsync for all
//! the writes of the turn). Acknowledgements of the turn's writes are held until then and
//! leave only if those succeeded: a reply never leaves before the write holding its record
//! returned, so `kill -9` loses nothing acknowledged.
//!
//! A record may be *causal* ([`Write::causal`]): its value is an encoded causal state (a
//! dotted version vector and its siblings, `--conflicts siblings`) rather than a client value.
//! The stores keep that flag with the record through every path (reads, listings, restarts,
//! compaction) and never look inside the value; on disk it is a record flag of storage format
//! 2 ([`record`], "Format versions").
//!
//! Implementations: [`memory::MemoryStore`] (no persistence; tests and `--data` left unset)
//! and [`logstore::LogStore`] (durable, log-structured: segments of checksummed records, a compact
//! in-memory key directory, hint files, crash recovery, compaction in bounded steps). All of
//! the log store's file I/O goes through [`vfs::Vfs`]: [`vfs::RealVfs`] in `kvd`,
//! [`vfs::MemVfs`] (a disk that can crash, tear writes, flip bits, fill up) in tests.
//!
//! ```text
//! storage/
//!   mod.rs     the Store trait
//!   ceiling.rs the durable clock ceiling (CLOCK file) of a shard
//!   memory.rs  MemoryStore
//!   logstore/  LogStore: write path, recovery, compaction (see its mod.rs: files, design)
//!   policy.rs  compaction thresholds, disk-space reserve and pressure: pure functions
//!   record.rs  on-disk formats with byte diagrams (segment, record, hint, manifest) and
//!              their versions (format 2 written, formats 1 and 2 read)
//!   keydir.rs  the compact key directory (28 bytes + u32 index slot + key bytes per key)
//!   mmap.rs    read-only memory maps of segments, surviving truncation (SIGBUS)
//!   prefetch.rs software prefetch of the lines a batch of look-ups will touch
//!   vfs.rs     the file-system seam
//! ```

pub mod ceiling;
pub mod keydir;
pub mod logstore;
pub mod memory;
pub mod mmap;
pub mod policy;
pub mod prefetch;
pub mod record;
pub mod vfs;

use crate::version::Version;

/// The newest record held for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Version of the write that produced this record.
    pub version: Version,
    /// Absolute expiry in ms since the Unix epoch; 0 = never.
    pub expires_at_ms: u64,
    /// The value, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The value is an encoded causal state (siblings mode), not a client value; the store
    /// does not interpret it. Always `false` for a tombstone.
    pub causal: bool,
}

impl Stored {
    /// Whether this record reads as a live value at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.value.is_some() && !expired(self.expires_at_ms, now_ms)
    }
}

/// The absolute expiry of a write made at `now_ms` with a TTL of `ttl_seconds` (0 = none).
#[inline]
pub fn expiry_of_ttl(now_ms: u64, ttl_seconds: u32) -> u64 {
    if ttl_seconds == 0 {
        0
    } else {
        now_ms + ttl_seconds as u64 * 1000
    }
}

/// Whether a record with expiry `expires_at_ms` has expired at `now_ms`.
#[inline]
pub fn expired(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms != 0 && expires_at_ms <= now_ms
}

/// A write to apply.
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value, or `None` for a delete (tombstone).
    pub value: Option<&'a [u8]>,
    /// The write's version (decides last-write-wins).
    pub version: Version,
    /// Absolute expiry in ms since the Unix epoch; 0 = never.
    pub expires_at_ms: u64,
    /// The value is an encoded causal state (siblings mode), not a client value; the store
    /// does not interpret it, and keeps and returns the flag with the record (last-write-wins
    /// by version as for any write). A delete (`value` `None`) is never causal: the store
    /// refuses such a write (an `InvalidInput` error).
    pub causal: bool,
}

/// The error [`Store::apply`] returns for a write that is both a delete and causal (a causal
/// state is a value).
pub(crate) fn causal_tombstone_error() -> StoreError {
    StoreError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "a delete cannot be causal (a causal state is a value)",
    ))
}

/// What [`Store::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The write was newer and is now the key's record.
    Stored,
    /// The store already held this version or a newer one, which it keeps.
    Stale {
        /// The version kept.
        current: Version,
    },
}

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// The store refuses writes: an I/O error (disk full, failed fsync). Reads keep working.
    /// After a failed sync the store stays read-only: what was acknowledged is kept, nothing
    /// new is acknowledged (fail loudly, never pretend).
    WritesRefused(String),
    /// A read hit damaged data: it is reported, never served as a value.
    Corrupt(String),
    /// Any other I/O error.
    Io(std::io::Error),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::WritesRefused(why) => write!(f, "storage refuses writes: {why}"),
            StoreError::Corrupt(why) => write!(f, "corrupt data: {why}"),
            StoreError::Io(e) => write!(f, "storage I/O error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// What [`Store::scan_keys`] reports per key: enough to summarise the record, not its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    /// Version of the key's record.
    pub version: Version,
    /// The record is a tombstone.
    pub tombstone: bool,
    /// Expiry in ms since the epoch, 0 = never (a store may round it up to whole seconds).
    pub expires_at_ms: u64,
    /// The value is an encoded causal state (siblings mode), not a client value; the store
    /// does not interpret it. Never set with `tombstone`.
    pub causal: bool,
}

/// One shard's key-value store.
pub trait Store: Send {
    /// The newest record held for `key`, tombstones and expired records included (the caller
    /// decides what they mean; see [`Stored::is_live`]).
    fn get(&mut self, key: &[u8]) -> Result<Option<Stored>, StoreError>;

    /// The version held for `key`, without reading its value.
    fn version_of(&self, key: &[u8]) -> Option<Version>;

    /// The version a read of `key` would find, tombstones and expired records included,
    /// without reading its value (a replica's answer to a version-only READ): refused where
    /// [`Store::get`] would be refused for the whole store (a node rejoining through
    /// anti-entropy serves no reads). A damaged record is found by `get`, not here.
    fn read_version(&mut self, key: &[u8]) -> Result<Option<Version>, StoreError> {
        Ok(self.version_of(key))
    }

    /// A hint that `keys` are about to be looked up, and (bit i of `reads`) the value of key
    /// i read: start loading what that will touch (`storage/prefetch.rs`). Changes nothing a
    /// caller can observe. Default: nothing.
    fn prefetch(&self, keys: &[&[u8]], reads: u32) {
        let _ = (keys, reads);
    }

    /// Apply a write last-write-wins. The write is in the store's memory (reads see it) when
    /// this returns; it reaches the operating system at the next [`Store::flush`] (or earlier)
    /// and is durable only after the next [`Store::sync`].
    fn apply(&mut self, write: Write<'_>) -> Result<Applied, StoreError>;

    /// Hand every write applied since the last flush to the operating system (one write
    /// call for all of them). An error means some of them (possibly written early, during
    /// `apply`) did not reach the file: they were undone (the store reads as if they never
    /// happened) and their acknowledgements must become STORAGE_ERROR. Not sticky: later
    /// writes are tried again. Default: writes are never buffered.
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether writes were applied that the next [`Store::flush`] has yet to hand to the
    /// operating system (or a flush failed since the last call): their acknowledgements must
    /// wait for it. Default: never.
    fn unflushed(&self) -> bool {
        false
    }

    /// Whether writes were applied since the last sync.
    fn needs_sync(&self) -> bool;

    /// Make every write applied so far durable (flushing first). An error here is sticky: the
    /// store refuses writes from then on.
    fn sync(&mut self) -> Result<(), StoreError>;

    /// Do up to `budget` units of background work (compaction, expiry); `Ok(true)` when more
    /// work remains. Each unit is small (one record), so the event loop stays responsive.
    fn maintenance(&mut self, now_ms: u64, budget: usize) -> Result<bool, StoreError>;

    /// Number of keys with a record (tombstones included).
    fn len(&self) -> usize;

    /// Whether the store holds no record.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest version held, so a restarted node's clock starts above it.
    fn highest_version(&self) -> Version;

    /// Tombstones (and expired values) with a version below `horizon` may be dropped by
    /// compaction once that cannot resurrect an older value. The cluster raises it when no
    /// replica can still deliver an older write. Default: keep every tombstone.
    fn set_tombstone_horizon(&mut self, _horizon: Version) {}

    /// The driver measured how long opening the store took (a store never reads the clock);
    /// reported in STATS. Default: not reported.
    fn set_recovery_ms(&mut self, _ms: u64) {}

    /// Why the store refuses every write from now on (a failed sync: the operating system may
    /// have dropped the unsynced pages), if it does. Default: never.
    fn writes_refused(&self) -> Option<&str> {
        None
    }

    /// Move into `out` the keys whose newest record was found damaged (by a read or by the
    /// background scrub) and forgotten since the last call, and those whose buffered write a
    /// failed [`Store::flush`] undid (the store holds their previous record, or none, again).
    /// The cluster drops them from its anti-entropy trees, so that the next exchange repairs
    /// them from another replica.
    fn take_damaged(&mut self, _out: &mut Vec<Vec<u8>>) {}

    /// Start a forced compaction pass (the COMPACT request): reclaim everything reclaimable
    /// in the segments that exist now, whatever the thresholds, sealing the active segment
    /// first if it holds dead bytes. It runs in bounded steps through [`Store::maintenance`].
    /// Default: nothing to compact.
    fn force_compaction(&mut self) {}

    /// Whether a forced pass asked for by [`Store::force_compaction`] is still running.
    fn forcing(&self) -> bool {
        false
    }

    /// Whether the disk is short of space (writes refused, or close to it): the driver then
    /// runs maintenance more often while it has work.
    fn disk_pressure(&self) -> bool {
        false
    }

    /// Why the last refused write was refused, if any was (for the shard's rate-limited log;
    /// the count is `storage_writes_refused` in [`Store::stats`]).
    fn last_refusal(&self) -> Option<&str> {
        None
    }

    /// Report figures for STATS as `(name, value)` pairs, names prefixed `storage_`. Names are
    /// static (a fixed set per store): the shard publishes the pairs as they are and the node
    /// combines its shards' figures by name, `_max` / `_min` by max / min and the rest summed.
    fn stats(&self, report: &mut dyn FnMut(&'static str, u64));

    /// Forget the keys `doomed` picks among up to `limit` keys from `cursor` (0 to start),
    /// writing nothing: their records become dead and compaction reclaims them. Returns how
    /// many were forgotten and the cursor of the next step (`None`: the pass is over). For a
    /// cluster node that no longer holds a partition (the flip that moved it away is known
    /// here): done in bounded steps so the shard keeps serving, and repeated until a pass
    /// forgets nothing (keys the store moved around during a pass may be skipped by it). A
    /// restart finds those records again, and the node forgets them again (it knows its ring
    /// from disk). Default: unsupported (an error).
    fn forget_step(
        &mut self,
        _doomed: &mut dyn FnMut(&[u8]) -> bool,
        _cursor: u64,
        _limit: usize,
    ) -> Result<(u64, Option<u64>), StoreError> {
        Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this store cannot forget keys",
        )))
    }

    /// Take a snapshot into the directory `into` (on the store's file system): every record
    /// written so far, in files that later writes and compactions leave alone, and a manifest
    /// with their checksums (see [`logstore::snapshot`]). Default: unsupported (an error).
    fn snapshot(
        &mut self,
        _into: &std::path::Path,
    ) -> Result<Vec<logstore::snapshot::SnapshotFile>, StoreError> {
        Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this store keeps nothing on disk to snapshot",
        )))
    }

    /// List up to `limit` keys (tombstones included) with their record summaries, starting at
    /// `cursor` (0 for the first call), calling `f` for each. Returns the cursor of the next
    /// step, or `None` when every key was listed. Used to build the anti-entropy trees in
    /// bounded steps while the store serves writes (writes made meanwhile reach the trees
    /// through their own hook): a listing is exact as long as [`Store::scan_epoch`] does not
    /// change between its steps. Default: unsupported (an error).
    fn scan_keys(
        &self,
        _cursor: u64,
        _limit: usize,
        _f: &mut dyn FnMut(&[u8], KeyMeta),
    ) -> Result<Option<u64>, StoreError> {
        Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this store cannot list its keys",
        )))
    }

    /// A number that changes whenever a key may have moved between positions of
    /// [`Store::scan_keys`]' order (a removal, a rehash): a stepwise listing that sees it
    /// change may have skipped a key, and starts over.
    fn scan_epoch(&self) -> u64;
}
