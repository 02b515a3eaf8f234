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
//!  <hint dir>/hints-NNN.log    hinted handoff log of shard NNN (cluster/hintfile)
//! ```

use crate::cluster::hintfile::FileHintLog;
use crate::cluster::hints::HintQueue;
use crate::cluster::ClusterConfig;
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
    /// The cluster, when the node runs with `--nodes` (validated).
    pub cluster: Option<ClusterConfig>,
}

/// What one shard is built from: its store, its clock ceiling, its durable hints.
pub struct ShardParts {
    /// The shard's store.
    pub store: Box<dyn Store>,
    /// The durable bound on the versions the shard lets out.
    pub clock: Box<dyn DurableClock>,
    /// Hints kept on disk (`None`: in memory, or not clustered).
    pub hints: Option<HintQueue>,
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
            let log = FileHintLog::open(vfs, hint_dir, shard).map_err(|e| err("hint log")(&e))?;
            let q = HintQueue::open(Box::new(log), ShardCore::hint_resend_ms(c))
                .map_err(|e| err("hint log")(&e))?;
            Some(q)
        }
        _ => None,
    };
    Ok((
        ShardParts {
            store: Box::new(store),
            clock,
            hints,
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
            // Versions issued before a restart may live only on other nodes (keys this shard
            // coordinated but does not hold): start above the durable ceiling as well.
            core.recover_ceiling();
            core
        })
        .collect()
}
