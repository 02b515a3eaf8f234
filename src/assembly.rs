//! One way to assemble a node: `kvd` ([`crate::server::run`]) and the simulator
//! ([`crate::sim`]) open a shard's parts with [`open_shard`] and build the node's shard cores
//! with [`assemble_node`], so the simulator runs exactly the shards that ship: the same store
//! over a [`Vfs`], the same durable clock ceiling, the same hint log, the same cluster role,
//! the same clock recovery. Only the disk differs (`RealVfs` against the crashable `MemVfs`)
//! and the driver that moves bytes and mail (mio event loops against simulated events).
//!
//! ```text
//!  open_shard(vfs, dir, ..)  ──▶  ShardParts { store, clock ceiling, hints }   one per shard
//!  assemble_node(cfg, shared, parts, start)  ──▶  Vec<ShardCore>               the node
//! ```
//!
//! A shard's files, under its directory and the node's hint directory:
//!
//! ```text
//!  <shard dir>/          segments, hint files, manifest (storage/logstore), CLOCK (storage/ceiling)
//!  <shard 0 dir>/RING    the node's ring state (cluster/ringfile), on its membership shard
//!  <hint dir>/hints-NNN.log    hinted handoff log of shard NNN (cluster/hintfile)
//! ```

use crate::cluster::hintfile::FileHintLog;
use crate::cluster::hints::HintQueue;
use crate::cluster::ringfile::{KeptRing, RingFile, RingStore};
use crate::cluster::ringpeer::ChangeRequest;
use crate::cluster::ringstate::RingState;
use crate::cluster::{ClusterConfig, MEMBERSHIP_SHARD};
use crate::shard::{NodeShared, ShardConfig, ShardCore, SyncPolicy};
use crate::storage::ceiling::{
    lease_for_offset, ClockCeiling, DurableClock, NoCeiling, CLOCK_LEASE_MS,
};
use crate::storage::logstore::{LogConfig, LogStore, RecoveryReport};
use crate::storage::vfs::Vfs;
use crate::storage::Store;
use crate::version::Version;
use std::path::Path;
use std::sync::Arc;

/// What a node is, beyond its shards' parts.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: u32,
    /// Shards of the node.
    pub shards: usize,
    /// When writes are acknowledged.
    pub sync: SyncPolicy,
    /// Token clients must present in HELLO (`None`: clients may skip the handshake).
    pub client_token: Option<Vec<u8>>,
    /// Token that makes a HELLO an admin's (`--admin-token`; `None`: admin from loopback).
    pub admin_token: Option<Vec<u8>>,
    /// The cluster, when the node runs with `--nodes` (validated).
    pub cluster: Option<ClusterConfig>,
    /// What the node asks the leader until the ring lists it: admission (`--join`) or
    /// the replacement of a dead node (`--replace`).
    pub join: Option<ChangeRequest>,
    /// Byte rate of the node's partition copies (`--stream-mb-per-s`), 0 = unlimited.
    pub stream_bytes_per_s: u64,
    /// Partition copies the node runs at once (`--transfer-limit`).
    pub transfer_limit: usize,
}

/// What one shard is built from: its store, its clock ceiling, its durable hints.
pub struct ShardParts {
    /// The shard's store.
    pub store: Box<dyn Store>,
    /// The durable bound on the versions the shard lets out.
    pub clock: Box<dyn DurableClock>,
    /// Hints kept on disk (`None`: in memory, or not clustered).
    pub hints: Option<HintQueue>,
    /// On the membership shard of a cluster member: where the node's ring state is kept, and
    /// the state read back from it.
    pub ring: Option<(Box<dyn RingStore>, Option<KeptRing>)>,
}

/// Why a shard's parts could not be opened, naming the part.
#[derive(Debug)]
pub struct OpenError {
    /// `store`, `clock ceiling` or `hint log`.
    pub part: &'static str,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot open the {}: {}", self.part, self.message)
    }
}

/// How a shard's clock ceiling is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ceiling {
    /// In `CLOCK` in the shard's directory (always, in `kvd`).
    Durable,
    /// Not at all: only the simulator's `--raw-clock-recovery`, to show the bug it prevents.
    Absent,
}

/// Open shard `shard`'s parts on `vfs`: its store and clock ceiling in `dir`, and, for a
/// cluster member, its hint log in `hint_dir` (hints stay in memory when that is `None`).
pub fn open_shard<V: Vfs + Clone + 'static>(
    vfs: V,
    shard: usize,
    dir: &Path,
    log: LogConfig,
    cluster: Option<(&ClusterConfig, Option<&Path>)>,
    ceiling: Ceiling,
) -> Result<(ShardParts, RecoveryReport), OpenError> {
    let err = |part: &'static str| {
        move |e: &dyn std::fmt::Display| OpenError {
            part,
            message: e.to_string(),
        }
    };
    let (store, report) = LogStore::open(vfs.clone(), dir, log).map_err(|e| err("store")(&e))?;
    let clock: Box<dyn DurableClock> = match ceiling {
        Ceiling::Durable => {
            let lease_ms = cluster.map_or(CLOCK_LEASE_MS, |(c, _)| {
                lease_for_offset(c.max_clock_offset_ms)
            });
            Box::new(
                ClockCeiling::open(vfs.clone(), dir, lease_ms)
                    .map_err(|e| err("clock ceiling")(&e))?,
            )
        }
        Ceiling::Absent => Box::new(NoCeiling),
    };
    let hints = match cluster {
        Some((c, Some(hint_dir))) => {
            let log =
                FileHintLog::open(vfs.clone(), hint_dir, shard).map_err(|e| err("hint log")(&e))?;
            let q = HintQueue::open(Box::new(log), ShardCore::hint_resend_ms(c))
                .map_err(|e| err("hint log")(&e))?;
            Some(q)
        }
        _ => None,
    };
    // The node's ring state lives in the membership shard's directory. A damaged file is
    // logged and ignored: the cluster's newest state is pulled from a peer.
    let ring = match cluster {
        Some(_) if shard == MEMBERSHIP_SHARD => {
            let file = RingFile::new(vfs, dir).map_err(|e| err("ring file")(&e))?;
            let kept = file.load().unwrap_or_else(|e| {
                log::error!("ring file not read ({e}): the ring is pulled from a peer");
                None
            });
            Some((Box::new(file) as Box<dyn RingStore>, kept))
        }
        _ => None,
    };
    Ok((
        ShardParts {
            store: Box::new(store),
            clock,
            hints,
            ring,
        },
        report,
    ))
}

/// Build the shard cores of node `cfg` from one [`ShardParts`] per shard, started at wall
/// time `started_at_ms` (a cluster member's incarnation). The one constructor of a node, for
/// `kvd` and the simulator alike.
pub fn assemble_node(
    cfg: &NodeConfig,
    shared: Arc<NodeShared>,
    parts: Vec<ShardParts>,
    started_at_ms: u64,
) -> Vec<ShardCore> {
    assert_eq!(parts.len(), cfg.shards);
    assert_eq!(shared.shards, cfg.shards);
    shared
        .stream_bytes_per_s
        .store(cfg.stream_bytes_per_s, std::sync::atomic::Ordering::Relaxed);
    shared.transfer_limit.store(
        cfg.transfer_limit as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut parts = parts;
    let mut ring_file = parts.get_mut(MEMBERSHIP_SHARD).and_then(|p| p.ring.take());
    let kept: Option<RingState> = ring_file
        .as_ref()
        .and_then(|(_, k)| k.as_ref().map(|k| k.committed.clone()));
    parts
        .into_iter()
        .enumerate()
        .map(|(shard, p)| {
            let core = ShardCore::new(
                ShardConfig {
                    shard,
                    shards: cfg.shards,
                    sync: cfg.sync,
                    client_token: cfg.client_token.clone(),
                    admin_token: cfg.admin_token.clone(),
                },
                shared.clone(),
                p.store,
                p.clock,
            );
            let mut core = match &cfg.cluster {
                Some(c) => core.with_cluster(c.clone(), started_at_ms, p.hints),
                None => {
                    // A single node has no replica that could later deliver an older write,
                    // so compaction may drop any tombstone that no longer shadows an older
                    // record on this node's own disk (the store checks that part itself).
                    let mut core = core;
                    core.store_mut().set_tombstone_horizon(Version(u64::MAX));
                    core
                }
            };
            if cfg.cluster.is_some() {
                // Every shard starts from the ring the node last knew (it holds, and drops,
                // partitions by it); the membership shard also saves the ones it adopts.
                if shard == MEMBERSHIP_SHARD {
                    if let Some((file, kept)) = ring_file.take() {
                        core.set_ring_store(file, kept);
                    }
                    if let Some(join) = &cfg.join {
                        core.set_join(join.clone());
                    }
                } else if let Some(k) = &kept {
                    core.start_with_ring(k.clone());
                }
            }
            // Versions issued before a restart may live only on other nodes (keys this shard
            // coordinated but does not hold): start above the durable ceiling as well.
            core.recover_ceiling();
            core
        })
        .collect()
}
