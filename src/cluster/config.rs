//! The cluster's configuration: who this node is, who the others are, and the knobs of
//! replication and failure detection. Built from `kvd`'s options and validated once at start,
//! so a misconfigured node refuses to start with a message that says what is wrong.
//!
//! The node list is written `ID=HOST:PORT` separated by commas, e.g.
//! `1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003`. Every node of a cluster must be given
//! the same list, replica count and secret (placement is computed from them). A node started
//! later with `--join` is configured from the cluster's ring map instead
//! ([`ClusterConfig::apply_join`]): the map's nodes and N, and its ring to start from.

use crate::limits::{
    ANTI_ENTROPY_INTERVAL_MS_DEFAULT, CLUSTER_NODES_MAX, CLUSTER_SECRET_SIZE_MAX,
    FAILURE_THRESHOLD_DEFAULT, FAILURE_THRESHOLD_MAX, GOSSIP_INTERVAL_MS_DEFAULT,
    GOSSIP_INTERVAL_MS_MAX, GOSSIP_INTERVAL_MS_MIN, READ_REPAIR_EVERY_DEFAULT, REPLICAS_MAX,
    REQUEST_TIMEOUT_MS_DEFAULT, REQUEST_TIMEOUT_MS_MAX, TOMBSTONE_WINDOW_MS_DEFAULT,
    TOMBSTONE_WINDOW_MS_MIN,
};
use crate::limits::{
    MAX_CLOCK_OFFSET_MS_DEFAULT, MAX_CLOCK_OFFSET_MS_MAX, MAX_CLOCK_OFFSET_MS_MIN,
};
use crate::protocol::Consistency;
use crate::version::NODE_ID_MAX;
use std::net::SocketAddr;

/// Why a cluster configuration is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// An entry of the node list is not `ID=HOST:PORT`.
    BadNodeEntry(String),
    /// A node id is above [`NODE_ID_MAX`] (it must fit the version's node bits).
    NodeIdTooLarge(u32),
    /// The same id appears twice in the node list.
    DuplicateId(u32),
    /// The same address appears twice in the node list.
    DuplicateAddr(SocketAddr),
    /// This node's own id is not in the node list.
    OwnIdMissing(u32),
    /// The node list is empty or longer than [`CLUSTER_NODES_MAX`].
    NodeCount(usize),
    /// The replica count is 0, above the node count or above [`REPLICAS_MAX`].
    Replicas {
        /// The replica count asked for.
        replicas: usize,
        /// Nodes in the list.
        nodes: usize,
    },
    /// Some other value is out of its range.
    OutOfRange(String),
    /// The cluster's ring map does not admit this node (`--join`): the message says why.
    Join(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::BadNodeEntry(e) => write!(
                f,
                "bad node list entry {e:?}: expected ID=HOST:PORT, e.g. 1=127.0.0.1:7001"
            ),
            ConfigError::NodeIdTooLarge(id) => {
                write!(f, "node id {id} is above the maximum of {NODE_ID_MAX}")
            }
            ConfigError::DuplicateId(id) => write!(f, "node id {id} appears twice in --nodes"),
            ConfigError::DuplicateAddr(a) => write!(f, "address {a} appears twice in --nodes"),
            ConfigError::OwnIdMissing(id) => {
                write!(
                    f,
                    "this node's id {id} (--id) is not in the node list (--nodes)"
                )
            }
            ConfigError::NodeCount(n) => write!(
                f,
                "the node list has {n} nodes; it must have between 1 and {CLUSTER_NODES_MAX}"
            ),
            ConfigError::Replicas { replicas, nodes } => write!(
                f,
                "--replicas {replicas} is impossible with {nodes} nodes: it must be between 1 \
                 and the number of nodes (at most {REPLICAS_MAX})"
            ),
            ConfigError::OutOfRange(why) => f.write_str(why),
            ConfigError::Join(why) => write!(f, "--join: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A node of the cluster as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    /// The node's id (1..=NODE_ID_MAX; 0 is allowed but unusual).
    pub id: u32,
    /// The node's one port (clients and peers).
    pub addr: SocketAddr,
}

/// The validated cluster configuration of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: u32,
    /// Every node, this one included, sorted by id.
    pub nodes: Vec<NodeAddr>,
    /// Replicas of each key (N).
    pub replicas: usize,
    /// The secret peers prove to each other in the peer handshake ([`crate::auth`]), never
    /// sending it; connections that cannot prove it are refused.
    pub secret: Vec<u8>,
    /// Time between two heartbeats of this node.
    pub gossip_interval_ms: u64,
    /// Gossip intervals without heartbeat progress before a node is marked failed.
    pub failure_threshold: u32,
    /// Whether writes for unreachable replicas are kept as hints and delivered later.
    pub hinted_handoff: bool,
    /// Whether reads repair the stale replicas they find (off only to show that anti-entropy
    /// converges on its own, and for the simulator's mutations).
    pub read_repair: bool,
    /// One read in this many asks every replica rather than the ones its level needs, and so
    /// repairs every stale replica (`--read-repair-every`; 1: every read, 0: none).
    pub read_repair_every: u32,
    /// How long a coordinator waits for replicas before answering TIMEOUT.
    pub request_timeout_ms: u64,
    /// Time between anti-entropy rounds.
    pub anti_entropy_interval_ms: u64,
    /// A replica failed for longer than this stops holding back tombstone collection; a node
    /// out for longer rejoins through a full anti-entropy round (`--tombstone-window-ms`).
    pub tombstone_window_ms: u64,
    /// The level of a GET, PUT or DELETE that asks for the node's default (consistency bits 0,
    /// protocol.md § 5): `--default-consistency`, QUORUM unless set. Not `Default` itself.
    pub default_consistency: Consistency,
    /// Directory of the durable hint logs (one file per shard); `None` keeps hints in memory.
    /// Only the driver opens it: the core sees a `HintLog`.
    pub hint_dir: Option<std::path::PathBuf>,
    /// Test-only mutations (all off outside the simulator): see [`Mutations`].
    pub mutations: Mutations,
    /// Keys a background build of the anti-entropy trees lists per tick; 0 (the default):
    /// by the store's size (`limits::AE_TREE_BUILD_TICKS`). Not a `kvd` flag: the simulator
    /// sets a few keys so that its small stores' builds span many ticks.
    pub tree_build_keys_per_tick: usize,
    /// The ring to start from: the ownership a node started with `--join` fetched from the
    /// cluster (its nodes are among `nodes`, its N is `replicas`). `None`: the first ring of
    /// `nodes` ([`super::Ownership::initial`]), as every node started with `--nodes` computes.
    pub initial_ring: Option<super::Ownership>,
    /// The largest clock offset from the cluster at which this node coordinates writes, and
    /// how far ahead of this node's clock a version may be to be stored or observed
    /// (`--max-clock-offset-ms`, see [`crate::limits::MAX_CLOCK_OFFSET_MS_DEFAULT`]).
    pub max_clock_offset_ms: u64,
    /// How concurrent writes to one key are resolved (`--conflicts`): the same on every node
    /// of a cluster, which peers check in the handshake (protocol.md § 8.1).
    pub conflicts: Conflicts,
}

/// How a cluster resolves writes to one key that did not see each other (`kvd --conflicts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Conflicts {
    /// Last write wins by version (the hybrid clock): one of two concurrent writes is dropped.
    #[default]
    Lww,
    /// Dotted version vectors with siblings ([`crate::causal`]): concurrent writes are kept
    /// side by side until a write that read them all (its causal context) supersedes them.
    Siblings,
}

impl Conflicts {
    /// Parse `lww` or `siblings`.
    pub fn parse(word: &str) -> Option<Conflicts> {
        match word {
            "lww" => Some(Conflicts::Lww),
            "siblings" => Some(Conflicts::Siblings),
            _ => None,
        }
    }

    /// The option's word for this mode.
    pub fn name(self) -> &'static str {
        match self {
            Conflicts::Lww => "lww",
            Conflicts::Siblings => "siblings",
        }
    }
}

/// Test-only mutations: deliberate bugs the simulator (`kvsim --mutation NAME`, `src/sim/`)
/// switches on to prove that its checkers catch them. Every field is `false` in `kvd`; each
/// is read at exactly one place, marked `// test-only mutation:`. (The simulator's
/// `skip-read-repair` uses [`ClusterConfig::read_repair`]; its `drop-forwarded-reply` is a
/// fault of the simulator's mail delivery.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// A delete's tombstone gets a back-dated version that does not beat the values written
    /// just before it (coordinator).
    pub no_tombstone_version: bool,
    /// Versions from too far ahead are accepted: a coordinator whose clock is ahead of the
    /// cluster's still coordinates writes, replicas store versions however far ahead of their
    /// clock, and the hybrid clock follows any version it sees (issue 10's max-offset rule
    /// switched off on the "ahead" side).
    pub accept_future_versions: bool,
    /// A shard acknowledges writes before its store synced (the simulator syncs a little
    /// later), on nodes whose sync policy promises durability on acknowledgement (shard).
    pub ack_before_sync: bool,
    /// A peer REPLICATE or READ is served by the shard whose connection received it instead
    /// of the shard owning the key (shard).
    pub no_peer_routing: bool,
    /// The leader flips a settled change's moving partitions without waiting for their
    /// pending owners' "copied" reports (node/ring.rs, `leader_chores`).
    pub flip_before_copy: bool,
    /// Writes go to a partition's current owners only, not to its pending owners while it
    /// moves (node/mod.rs, `write`).
    pub no_pending_writes: bool,
    /// A leader's ring state takes effect at once, without a majority's acceptance (and a
    /// leader leads without a majority's promises): two leaders may make different states
    /// at one version (node/ringvote.rs).
    pub no_majority_commit: bool,
    /// Replicas serve a REPLICATE or READ whatever ring version its sender holds, even one
    /// older than the last change of the key's partition (node/mod.rs, `refuse_stale_ring`).
    pub no_ring_version_check: bool,
    /// Siblings mode: a causal record that anti-entropy or a partition copy brings replaces
    /// the held state when its record's version is higher (else the held state stays),
    /// instead of being merged into it: last-write-wins where only a merge is right
    /// (antientropy/mod.rs, `AntiEntropy::new`; applied by `Tracked`).
    pub lww_anti_entropy: bool,
}

/// Parse a node list `1=127.0.0.1:7001,2=127.0.0.1:7002`. Whitespace around entries is
/// ignored; an empty list is an error. Ids and addresses are checked for duplicates here.
pub fn parse_nodes(list: &str) -> Result<Vec<NodeAddr>, ConfigError> {
    let mut nodes = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| ConfigError::BadNodeEntry(entry.to_string()))?;
        let id: u32 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::BadNodeEntry(entry.to_string()))?;
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|_| ConfigError::BadNodeEntry(entry.to_string()))?;
        nodes.push(NodeAddr { id, addr });
        if nodes.len() > CLUSTER_NODES_MAX {
            return Err(ConfigError::NodeCount(nodes.len()));
        }
    }
    Ok(nodes)
}

impl ClusterConfig {
    /// A configuration with the defaults for every knob: `replicas` copies over `nodes`.
    /// Call [`ClusterConfig::validate`] (or use [`ClusterConfig::build`]) before use.
    pub fn with_defaults(node_id: u32, nodes: Vec<NodeAddr>, replicas: usize) -> ClusterConfig {
        ClusterConfig {
            node_id,
            nodes,
            replicas,
            secret: Vec::new(),
            gossip_interval_ms: GOSSIP_INTERVAL_MS_DEFAULT,
            failure_threshold: FAILURE_THRESHOLD_DEFAULT,
            hinted_handoff: true,
            read_repair: true,
            read_repair_every: READ_REPAIR_EVERY_DEFAULT,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            anti_entropy_interval_ms: ANTI_ENTROPY_INTERVAL_MS_DEFAULT,
            tombstone_window_ms: TOMBSTONE_WINDOW_MS_DEFAULT,
            default_consistency: Consistency::Quorum,
            hint_dir: None,
            mutations: Mutations::default(),
            tree_build_keys_per_tick: 0,
            initial_ring: None,
            max_clock_offset_ms: MAX_CLOCK_OFFSET_MS_DEFAULT,
            conflicts: Conflicts::Lww,
        }
    }

    /// A single-node cluster (N = 1) at `addr`: what `kvd` runs when `--nodes` is not given.
    pub fn single(node_id: u32, addr: SocketAddr) -> ClusterConfig {
        ClusterConfig::with_defaults(node_id, vec![NodeAddr { id: node_id, addr }], 1)
    }

    /// Parse the node list, apply defaults, validate.
    pub fn build(node_id: u32, nodes: &str, replicas: usize) -> Result<ClusterConfig, ConfigError> {
        let mut c = ClusterConfig::with_defaults(node_id, parse_nodes(nodes)?, replicas);
        c.validate()?;
        Ok(c)
    }

    /// Check every rule; sorts the node list by id. Refuses: an empty or too long node list,
    /// ids above [`NODE_ID_MAX`], duplicate ids or addresses, own id missing, N == 0,
    /// N > nodes, intervals and thresholds out of range, a secret longer than the limit.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() || self.nodes.len() > CLUSTER_NODES_MAX {
            return Err(ConfigError::NodeCount(self.nodes.len()));
        }
        self.nodes.sort_by_key(|n| n.id);
        for n in &self.nodes {
            if n.id > NODE_ID_MAX {
                return Err(ConfigError::NodeIdTooLarge(n.id));
            }
        }
        if self.node_id > NODE_ID_MAX {
            return Err(ConfigError::NodeIdTooLarge(self.node_id));
        }
        for pair in self.nodes.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(ConfigError::DuplicateId(pair[0].id));
            }
        }
        let mut addrs: Vec<SocketAddr> = self.nodes.iter().map(|n| n.addr).collect();
        addrs.sort();
        for pair in addrs.windows(2) {
            if pair[0] == pair[1] {
                return Err(ConfigError::DuplicateAddr(pair[0]));
            }
        }
        if !self.nodes.iter().any(|n| n.id == self.node_id) {
            return Err(ConfigError::OwnIdMissing(self.node_id));
        }
        if self.replicas == 0 || self.replicas > self.nodes.len() || self.replicas > REPLICAS_MAX {
            return Err(ConfigError::Replicas {
                replicas: self.replicas,
                nodes: self.nodes.len(),
            });
        }
        if !(GOSSIP_INTERVAL_MS_MIN..=GOSSIP_INTERVAL_MS_MAX).contains(&self.gossip_interval_ms) {
            return Err(ConfigError::OutOfRange(format!(
                "--gossip-interval-ms {} is outside {GOSSIP_INTERVAL_MS_MIN}..={GOSSIP_INTERVAL_MS_MAX}",
                self.gossip_interval_ms
            )));
        }
        if self.failure_threshold == 0 || self.failure_threshold > FAILURE_THRESHOLD_MAX {
            return Err(ConfigError::OutOfRange(format!(
                "--failure-threshold {} is outside 1..={FAILURE_THRESHOLD_MAX}",
                self.failure_threshold
            )));
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > REQUEST_TIMEOUT_MS_MAX {
            return Err(ConfigError::OutOfRange(format!(
                "--request-timeout-ms {} is outside 1..={REQUEST_TIMEOUT_MS_MAX}",
                self.request_timeout_ms
            )));
        }
        if self.anti_entropy_interval_ms == 0 {
            return Err(ConfigError::OutOfRange(
                "--anti-entropy-interval-ms must be above 0".into(),
            ));
        }
        if self.tombstone_window_ms < TOMBSTONE_WINDOW_MS_MIN
            || self.tombstone_window_ms < self.failure_timeout_ms()
        {
            return Err(ConfigError::OutOfRange(format!(
                "--tombstone-window-ms {} must be at least {TOMBSTONE_WINDOW_MS_MIN} and at \
                 least the failure timeout ({} ms)",
                self.tombstone_window_ms,
                self.failure_timeout_ms()
            )));
        }
        if !(MAX_CLOCK_OFFSET_MS_MIN..=MAX_CLOCK_OFFSET_MS_MAX).contains(&self.max_clock_offset_ms)
        {
            return Err(ConfigError::OutOfRange(format!(
                "--max-clock-offset-ms {} is outside {MAX_CLOCK_OFFSET_MS_MIN}..={MAX_CLOCK_OFFSET_MS_MAX}",
                self.max_clock_offset_ms
            )));
        }
        if let Some(o) = &self.initial_ring {
            if o.replicas() != self.replicas {
                return Err(ConfigError::OutOfRange(format!(
                    "the initial ring has {} replicas of each partition, the configuration {}",
                    o.replicas(),
                    self.replicas
                )));
            }
            if let Some(id) = o.nodes().iter().find(|&&id| self.addr_of(id).is_none()) {
                return Err(ConfigError::OutOfRange(format!(
                    "node {id} of the initial ring has no address in the node list"
                )));
            }
        }
        if self.secret.len() > CLUSTER_SECRET_SIZE_MAX {
            return Err(ConfigError::OutOfRange(format!(
                "--cluster-secret of {} bytes is longer than {CLUSTER_SECRET_SIZE_MAX}",
                self.secret.len()
            )));
        }
        Ok(())
    }

    /// Make this configuration (of this node alone, at the address the others will reach
    /// it at) that of a node joining the cluster whose ring map `map` was fetched from the
    /// member at `seed`: its nodes become the map's nodes and this one, N the map's, and the
    /// map's ownership the ring to start from ([`ClusterConfig::initial_ring`]); the joining
    /// node owns nothing until the ring gives it partitions. Refused: an id the map already
    /// lists at another address (a node restarting at the address the map has for it joins
    /// again), an address of the map that is not `ip:port`, an unspecified own address.
    /// Call [`ClusterConfig::validate`] after.
    pub fn apply_join(
        &mut self,
        map: &crate::protocol::ringmap::RingMap,
        seed: SocketAddr,
    ) -> Result<(), ConfigError> {
        let me = self.node_id;
        let own = self.addr_of(me).ok_or(ConfigError::OwnIdMissing(me))?;
        if own.ip().is_unspecified() {
            return Err(ConfigError::Join(format!(
                "--listen {own} is not an address the other nodes can reach this node at; give this node's own address"
            )));
        }
        let mut nodes = vec![NodeAddr { id: me, addr: own }];
        for (id, text) in &map.addrs {
            // An empty address is the replying node's: the seed's.
            let addr = if text.is_empty() {
                seed
            } else {
                text.parse().map_err(|_| {
                    ConfigError::Join(format!(
                        "the cluster's map gives node {id} the address {text:?}, not IP:PORT"
                    ))
                })?
            };
            if *id == me {
                if addr != own {
                    let ids: Vec<String> = map.addrs.iter().map(|(i, _)| i.to_string()).collect();
                    return Err(ConfigError::Join(format!(
                        "node id {me} is already in the cluster, at {addr}; choose an id no node has (the cluster's ids: {})",
                        ids.join(", ")
                    )));
                }
                continue;
            }
            nodes.push(NodeAddr { id: *id, addr });
        }
        self.nodes = nodes;
        self.replicas = map.ownership.replicas();
        self.initial_ring = Some(map.ownership.clone());
        Ok(())
    }

    /// The ids of every node, ascending.
    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The address of node `id`.
    pub fn addr_of(&self, id: u32) -> Option<SocketAddr> {
        self.nodes.iter().find(|n| n.id == id).map(|n| n.addr)
    }

    /// How long a node's heartbeat may stand still before it is marked failed.
    pub fn failure_timeout_ms(&self) -> u64 {
        self.gossip_interval_ms * self.failure_threshold as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";

    #[test]
    fn parses_and_sorts() {
        let c = ClusterConfig::build(2, "3=127.0.0.1:7003, 1=127.0.0.1:7001,2=127.0.0.1:7002", 3)
            .unwrap();
        assert_eq!(c.node_ids(), vec![1, 2, 3]);
        assert_eq!(c.addr_of(3), Some("127.0.0.1:7003".parse().unwrap()));
        assert_eq!(c.failure_timeout_ms(), 200 * 5);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let err = |id, list: &str, n| ClusterConfig::build(id, list, n).unwrap_err();
        assert_eq!(err(4, THREE, 3), ConfigError::OwnIdMissing(4));
        assert_eq!(
            err(1, "1=127.0.0.1:1,1=127.0.0.1:2", 1),
            ConfigError::DuplicateId(1)
        );
        assert_eq!(
            err(1, "1=127.0.0.1:1,2=127.0.0.1:1", 1),
            ConfigError::DuplicateAddr("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(
            err(1, THREE, 4),
            ConfigError::Replicas {
                replicas: 4,
                nodes: 3
            }
        );
        assert!(matches!(err(1, THREE, 0), ConfigError::Replicas { .. }));
        assert_eq!(
            err(1, "1=127.0.0.1:1,5000=127.0.0.1:2", 1),
            ConfigError::NodeIdTooLarge(5000)
        );
        assert!(matches!(
            err(1, "1=nowhere", 1),
            ConfigError::BadNodeEntry(_)
        ));
        assert!(matches!(
            err(1, "127.0.0.1:1", 1),
            ConfigError::BadNodeEntry(_)
        ));
        assert_eq!(err(1, "", 1), ConfigError::NodeCount(0));
        let msg = err(4, THREE, 3).to_string();
        assert!(msg.contains("4") && msg.contains("--nodes"), "{msg}");
        let msg = err(1, THREE, 4).to_string();
        assert!(
            msg.contains("--replicas 4") && msg.contains("3 nodes"),
            "{msg}"
        );

        let mut c = ClusterConfig::build(1, THREE, 3).unwrap();
        c.failure_threshold = 0;
        assert!(matches!(c.validate(), Err(ConfigError::OutOfRange(_))));
        c.failure_threshold = 3;
        c.gossip_interval_ms = 0;
        assert!(matches!(c.validate(), Err(ConfigError::OutOfRange(_))));
    }

    #[test]
    fn a_joining_node_takes_the_maps_nodes_and_ring() {
        use crate::protocol::ringmap::RingMap;
        let o = crate::cluster::Ownership::initial(&[1, 2, 3], 2).unwrap();
        let map = RingMap {
            ownership: o.clone(),
            addrs: vec![
                (1, "127.0.0.1:7001".into()),
                (2, String::new()),
                (3, "127.0.0.1:7003".into()),
            ],
        };
        let seed: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let alone = |id: u32, addr: &str| ClusterConfig::single(id, addr.parse().unwrap());
        let mut c = alone(4, "127.0.0.1:7004");
        c.apply_join(&map, seed).unwrap();
        c.validate().unwrap();
        assert_eq!(c.node_ids(), vec![1, 2, 3, 4]);
        assert_eq!(c.addr_of(2), Some(seed));
        assert_eq!(c.replicas, 2);
        assert_eq!(c.initial_ring, Some(o));
        // An id the cluster has, at another address: refused.
        let e = alone(3, "127.0.0.1:7009")
            .apply_join(&map, seed)
            .unwrap_err();
        assert!(e.to_string().contains("already in the cluster"), "{e}");
        // At its own address: a restart, admitted.
        alone(3, "127.0.0.1:7003").apply_join(&map, seed).unwrap();
        // No reachable address of its own.
        assert!(alone(4, "0.0.0.0:7004").apply_join(&map, seed).is_err());
        let mut bad = map.clone();
        bad.addrs[0].1 = "localhost:7001".into();
        assert!(alone(4, "127.0.0.1:7004").apply_join(&bad, seed).is_err());
    }
}
