//! A simulated node's life: its disk, clock and shards; start (the shard cores built by
//! [`assemble_node`] over the node's [`MemVfs`], exactly as `kvd` builds them), crash, the
//! end of a shard's step, and the connections the simulator keeps on the node's behalf
//! (clients' requests, inbound peer links) so that reply records find their way back.
//!
//! A connection id tells the simulator what a reply record answers:
//!
//! ```text
//!  client request   | 1 | 0 | 0 ... | op id (32 bits) |
//!  inbound peer     | 0 | 1 | from node (14 bits) | from shard (16 bits) | from life (32 bits) |
//!  scripted request | 0 | 0 | 1 | 0 ... | request number (32 bits) |   (script.rs)
//!  admin command    | 0 | 0 | 0 | 1 | 0 ... | command number (32 bits) | (elastic.rs)
//! ```

use super::trace::trace;
use super::world::{Ev, World, BASE_MS};
use crate::assembly::{assemble_node, open_shard, Ceiling, NodeConfig};
use crate::cluster::coordinator::Outcome;
use crate::cluster::ringpeer::ChangeRequest;
use crate::cluster::ClusterConfig;
use crate::limits::MAINTENANCE_TICK_MS;
use crate::protocol::{frame, Role};
use crate::shard::{ConnId, NodeShared, Session, ShardCore, SyncPolicy};
use crate::storage::vfs::{CrashMode, MemVfs, Vfs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Store maintenance units per maintenance tick of a shard: small (`kvd` gives 4096), so that
/// compaction advances in many small steps interleaved with everything else.
const MAINTENANCE_BUDGET: usize = 16;

/// The node's data root and its hint directory on the simulated disk.
pub(super) const DATA_DIR: &str = "/data";
pub(super) const HINT_DIR: &str = "/hints";

/// Connections a simulated node allows (clients' requests are one connection each).
const CONNECTIONS_MAX: usize = 1 << 20;

const CLIENT_CONN: u64 = 1 << 63;
const PEER_CONN: u64 = 1 << 62;
const SCRIPT_CONN: u64 = 1 << 61;
const ADMIN_CONN: u64 = 1 << 60;

/// The connection of client op `op`.
pub(super) fn client_conn(op: u64) -> ConnId {
    assert!(op <= u64::from(u32::MAX));
    ConnId(CLIENT_CONN | op)
}

/// The inbound link of `(from node, from shard, from life)`.
pub(super) fn peer_conn(from: u32, from_shard: usize, from_life: u64) -> ConnId {
    assert!(from < 1 << 14 && from_shard < 1 << 16);
    ConnId(
        PEER_CONN
            | (u64::from(from) << 48)
            | ((from_shard as u64) << 32)
            | (from_life & 0xFFFF_FFFF),
    )
}

/// The connection of the scripted cluster's request number `n`.
pub(super) fn script_conn(n: u64) -> ConnId {
    assert!(n <= u64::from(u32::MAX));
    ConnId(SCRIPT_CONN | n)
}

/// The connection of the fault schedule's operator command number `n`.
pub(super) fn admin_conn(n: u64) -> ConnId {
    assert!(n <= u64::from(u32::MAX));
    ConnId(ADMIN_CONN | n)
}

/// What a connection id stands for.
pub(super) enum Conn {
    Client(u64),
    Script(u64),
    Admin(u64),
    Peer {
        from: u32,
        from_shard: usize,
        from_life: u64,
    },
}

pub(super) fn conn_of(c: ConnId) -> Conn {
    if c.0 & CLIENT_CONN != 0 {
        Conn::Client(c.0 & 0xFFFF_FFFF)
    } else if c.0 & PEER_CONN == 0 && c.0 & ADMIN_CONN != 0 {
        Conn::Admin(c.0 & 0xFFFF_FFFF)
    } else if c.0 & PEER_CONN == 0 {
        Conn::Script(c.0 & 0xFFFF_FFFF)
    } else {
        Conn::Peer {
            from: ((c.0 >> 48) & 0x3FFF) as u32,
            from_shard: ((c.0 >> 32) & 0xFFFF) as usize,
            from_life: c.0 & 0xFFFF_FFFF,
        }
    }
}

/// The directory of shard `shard` on a node's disk (as `kvd`'s data directory names it).
pub(super) fn shard_dir(shard: usize) -> PathBuf {
    Path::new(DATA_DIR).join(format!("shard-{shard:03}"))
}

/// A node that is up: its shards and the connections the simulator keeps for them.
pub(super) struct Running {
    pub cores: Vec<ShardCore>,
    /// Inbound peer links: `(from node, from shard, from life)` → the shard that accepted it.
    pub links: BTreeMap<(u32, usize, u64), usize>,
    /// Sessions of the inbound peer links.
    pub sessions: BTreeMap<u64, Session>,
    /// Coordinators' outcomes by (connection, request id), until the reply reaches the
    /// connection: the checkers want what the wire does not carry (re-issues, expiry).
    pub outcomes: BTreeMap<(u64, u32), Outcome>,
    /// Per shard: when its next maintenance tick is due (node clock ms), as `kvd`'s loop
    /// schedules it.
    pub next_maintenance_ms: Vec<u64>,
    /// Per shard: how its last maintenance tick paced the next ([`crate::shard::Pace`]).
    pub maintenance_pace: Vec<crate::shard::Pace>,
}

pub(super) struct Node {
    pub id: u32,
    pub vfs: MemVfs,
    pub sync: SyncPolicy,
    /// Shards of the node (`kvd --shards`).
    pub shards: usize,
    pub up: Option<Running>,
    /// Restarts so far: frames from an earlier life are dropped.
    pub life: u64,
    /// Simulated ms until which the node is paused (0: running).
    pub paused_until: u64,
    /// Its clock's offset from true time.
    pub offset_ms: i64,
    /// Its clock runs minutes off (`Params::far_nodes`): it must not coordinate writes, so
    /// its offset does not widen what the clock checkers allow. Cleared when the liveness
    /// phase sets the clocks right.
    pub far: bool,
    /// A late sync is scheduled (ack-before-sync).
    pub late_sync: bool,
    /// Removed from the cluster while down: it never restarts (its disk is gone).
    pub gone: bool,
    /// A spare id not taken yet by a join or a replacement: it does not run (see
    /// `joins.rs`).
    pub spare: bool,
    /// The cluster configuration of a node that joined (`kvd --join`: the cluster's ring
    /// map fetched from a seed); `None`: the world's (a node the cluster started with).
    pub cluster: Option<ClusterConfig>,
    /// What a node that joined asks the leader until the ring lists it (`--join`, with
    /// `--replace`), on each start, as `kvd` restarted with the same command line does.
    pub join: Option<ChangeRequest>,
}

impl Node {
    pub fn new(id: u32, sync: SyncPolicy, shards: usize, offset_ms: i64, far: bool) -> Node {
        Node {
            id,
            vfs: MemVfs::new(),
            sync,
            shards,
            up: None,
            life: 0,
            paused_until: 0,
            offset_ms,
            far,
            late_sync: false,
            gone: false,
            spare: false,
            cluster: None,
            join: None,
        }
    }

    /// Whether some shard refuses writes until a restart (a failed sync).
    pub fn refuses_writes(&self) -> bool {
        self.up
            .as_ref()
            .is_some_and(|r| r.cores.iter().any(|c| c.writes_refused().is_some()))
    }
}

impl World {
    pub(super) fn running(&mut self, id: u32) -> &mut Running {
        self.node_mut(id)
            .up
            .as_mut()
            .expect("callers check the node is up")
    }

    /// Start (or restart) node `id`: open every shard's parts on its disk and assemble it.
    pub(super) fn start_node(&mut self, id: u32) {
        if self.node(id).gone || self.node(id).spare {
            return;
        }
        let now_ms = self.node_now(id);
        let n = self.node(id);
        let mut config = n.cluster.clone().unwrap_or_else(|| self.config.clone());
        config.node_id = id;
        let join = n.join.clone();
        let (vfs, shards, life) = (n.vfs.clone(), n.shards, n.life);
        let ceiling = if self.p.raw_clock_recovery {
            Ceiling::Absent
        } else {
            Ceiling::Durable
        };
        let mut parts = Vec::with_capacity(shards);
        let (mut keys, mut segments, mut corrupt, mut truncated) = (0, 0, 0, 0);
        for shard in 0..shards {
            let hints = Some((&config, Some(Path::new(HINT_DIR))));
            match open_shard(
                vfs.clone(),
                shard,
                &shard_dir(shard),
                self.log_config.clone(),
                hints,
                ceiling,
            ) {
                Ok((p, report)) => {
                    keys += report.keys;
                    segments += report.segments;
                    corrupt += report.corrupt_count;
                    truncated += report.truncated.as_ref().map_or(0, |t| t.bytes);
                    parts.push(p);
                }
                Err(e) => {
                    let checker = if e.part == "store" {
                        "storage-recovery"
                    } else {
                        "hint-recovery"
                    };
                    let d = format!("n{id} shard {shard} cannot restart after a crash: {e}");
                    trace!(self.trace, "{d}");
                    self.hist.report(checker, None, d);
                    return;
                }
            }
        }
        let pending: usize = parts
            .iter()
            .map(|p| p.hints.as_ref().map_or(0, |h| h.stats().pending as usize))
            .sum();
        let shared = Arc::new(NodeShared::new(id, shards, now_ms, CONNECTIONS_MAX));
        let cfg = NodeConfig {
            node_id: id,
            shards,
            sync: self.node(id).sync,
            client_token: None,
            admin_token: None,
            cluster: Some(config),
            join,
            stream_bytes_per_s: 0,
            transfer_limit: crate::cluster::antientropy::TRANSFER_LIMIT_DEFAULT,
        };
        let mut cores = assemble_node(&cfg, shared, parts, now_ms);
        for c in &mut cores {
            c.keep_outcomes();
        }
        let highest = cores
            .iter()
            .map(|c| c.store().highest_version())
            .max()
            .unwrap_or_default();
        trace!(
            self.trace,
            "n{id} start life={life} shards={shards} incarnation={} keys={keys} highest={} \
             segments={segments} corrupt={corrupt} truncated={truncated} hints={pending}",
            now_ms as i64 - BASE_MS as i64,
            self.v(highest),
        );
        let n = self.node_mut(id);
        n.up = Some(Running {
            cores,
            links: BTreeMap::new(),
            sessions: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            next_maintenance_ms: vec![0; shards],
            maintenance_pace: vec![crate::shard::Pace::Idle; shards],
        });
        n.paused_until = 0;
        // Every life runs its own interval timer, as `kvd`'s loop does (the timer of an
        // earlier life stops at its first tick after the crash).
        if let SyncPolicy::Interval { ms } = self.node(id).sync {
            let life = self.node(id).life;
            self.at(
                self.now + ms,
                Ev::Sync {
                    node: id,
                    life,
                    periodic: true,
                },
            );
        }
    }

    /// Crash node `id`: its process dies, its disk loses (or tears) what was not synced.
    pub(super) fn crash(&mut self, id: u32) {
        let torn = range_percent(self, self.p.torn_percent);
        let mode = if torn {
            CrashMode::Torn {
                seed: self.rng.next_u64(),
            }
        } else {
            CrashMode::DropUnsynced
        };
        // The moves' byte counters of the life that ends (STATS restart from 0).
        self.elastic.moved_dead += self.moved_bytes_of(id);
        let n = self.node_mut(id);
        if n.up.take().is_none() {
            return;
        }
        n.vfs.crash(mode);
        n.life += 1;
        n.paused_until = 0;
        n.late_sync = false;
        self.stats.crashes += 1;
        trace!(
            self.trace,
            "n{id} CRASH ({})",
            if torn { "torn tail" } else { "unsynced lost" }
        );
        if self.node(id).sync != SyncPolicy::Always {
            self.hist.loss(id, self.now);
        }
        if self.p.bad_disk == Some(id) && self.rng.below(2) == 0 {
            self.flip_a_bit(id);
        }
    }

    /// The bad disk flips a bit at rest in a sealed segment of node `id` (one with a hint
    /// file: the store wrote it whole and moved on).
    fn flip_a_bit(&mut self, id: u32) {
        let vfs = self.node(id).vfs.clone();
        let mut sealed = Vec::new();
        for shard in 0..self.node(id).shards {
            let dir = shard_dir(shard);
            let names = vfs.list(&dir).unwrap_or_default();
            for name in &names {
                if let Some(stem) = name.strip_suffix(".seg") {
                    if names.iter().any(|h| h == &format!("{stem}.hint")) {
                        sealed.push(dir.join(name));
                    }
                }
            }
        }
        if sealed.is_empty() {
            return;
        }
        let path = sealed[self.rng.below(sealed.len() as u64) as usize].clone();
        let Some(len) = vfs.contents(&path).map(|c| c.len() as u64) else {
            return;
        };
        if len == 0 {
            return;
        }
        let at = self.rng.below(len);
        let bit = self.rng.below(8) as u8;
        if vfs.flip_bit(&path, at, bit).is_ok() {
            trace!(
                self.trace,
                "n{id} disk flips bit {bit} at {} offset {at}",
                path.display()
            );
            self.hist.loss(id, self.now);
            // Half the time the segment's hint file goes too, so recovery scans the segment
            // and meets the damage; otherwise recovery trusts the hint and a read meets it
            // (BUG(sim-1), fixed in 6d14b8c: such a record used to stay unreadable and
            // unrepairable forever).
            if self.rng.below(2) == 0 {
                let hint = path.with_extension("hint");
                if vfs.remove(&hint).is_ok() {
                    let _ = vfs.sync_dir(path.parent().expect("a segment is in a directory"));
                }
            }
        }
    }

    /// An operator's reaction to a node that refuses writes: restart it.
    pub(super) fn operator_restart(&mut self, id: u32) {
        if self.node(id).refuses_writes() {
            trace!(self.trace, "n{id} refuses writes: the operator restarts it");
            self.crash(id);
            self.start_node(id);
        }
        // Otherwise the failure was not hit yet: it stays armed until a sync or a crash.
    }

    /// Sync every shard of node `id` (the interval timer, or the late sync of
    /// ack-before-sync). A failure is sticky in the shard: it refuses writes until a restart.
    pub(super) fn sync_node(&mut self, id: u32) {
        let Some(run) = self.node_mut(id).up.as_mut() else {
            return;
        };
        let mut failed = Vec::new();
        for (k, core) in run.cores.iter_mut().enumerate() {
            if let Err(e) = core.sync() {
                failed.push((k, e.to_string()));
            }
        }
        for (k, e) in failed {
            trace!(
                self.trace,
                "n{id} shard {k} sync failed, refusing writes from now on: {e}"
            );
        }
    }

    /// A tick of shard `shard` of node `id`: the cluster core's time (gossip, timeouts,
    /// hints, anti-entropy) and, when due, the store's maintenance, at the pace of `kvd`'s
    /// loop (maintenance every [`MAINTENANCE_TICK_MS`], sooner and in smaller steps while the
    /// store has work left, sooner with its whole budget while the disk is short).
    pub(super) fn tick_shard(&mut self, id: u32, shard: usize) {
        let now_ms = self.node_now(id);
        let run = self.running(id);
        let core = &mut run.cores[shard];
        core.on_cluster_tick(now_ms);
        let due = run.next_maintenance_ms[shard];
        // (A clock stepped back far below the due time counts as due.)
        if now_ms >= due || due > now_ms + MAINTENANCE_TICK_MS {
            let budget = run.maintenance_pace[shard].budget(MAINTENANCE_BUDGET);
            let pace = core.on_tick(now_ms, budget);
            run.maintenance_pace[shard] = pace;
            run.next_maintenance_ms[shard] = now_ms + pace.next_tick_ms();
        }
        self.finish(id, shard);
    }

    /// The end of a step of shard `shard` of node `id` (one input handled): the core's
    /// `finish_turn` (clock ceiling, group commit, held replies released), then everything
    /// it put out moves: peer frames to the network, mail to the other shards, reply records
    /// to their connections.
    pub(super) fn finish(&mut self, id: u32, shard: usize) {
        let Some(run) = self.node_mut(id).up.as_mut() else {
            return;
        };
        let core = &mut run.cores[shard];
        if let Err(e) = core.finish_turn() {
            // `kvd` aborts: the process is gone, and restarted a little later.
            trace!(self.trace, "n{id} stops: {e}");
            self.crash(id);
            let t = self.now + range_ms(self, 20, 500);
            self.at(t, Ev::Restart(id));
            return;
        }
        for (conn, rid, outcome) in core.take_outcomes() {
            run.outcomes.insert((conn.0, rid), outcome);
        }
        let outbox = core.take_outbox();
        let peer: Vec<(u32, Vec<u8>)> = outbox.peer.drain(..).collect();
        let mut own = Vec::new();
        let mut mail = Vec::new();
        outbox.drain_mail(shard, &mut own, |dest, m| mail.push((dest, m)));
        let needs_late_sync = self.p.mutation == super::options::Mutation::AckBeforeSync
            && self.node(id).sync == SyncPolicy::Always
            && run_needs_sync(self.node(id));
        for (to, frame) in peer {
            self.send_request(id, shard, to, frame);
        }
        for (dest, m) in mail {
            self.send_mail(id, dest, m);
        }
        self.deliver_records(id, &own);
        if needs_late_sync && !self.node(id).late_sync {
            // test-only mutation: the shard acknowledged before its sync; the sync comes a
            // little later (a crash in between loses acknowledged writes).
            let life = self.node(id).life;
            let t = self.now + range_ms(self, 1, 2_000);
            self.node_mut(id).late_sync = true;
            self.at(
                t,
                Ev::Sync {
                    node: id,
                    life,
                    periodic: false,
                },
            );
        }
    }

    /// Hand reply records (`| conn id u64 | frame |`) of node `id` to their connections: a
    /// client's answer, or a reply on an inbound peer link back to its sender.
    pub(super) fn deliver_records(&mut self, id: u32, records: &[u8]) {
        let mut at = 0;
        while at < records.len() {
            let conn = ConnId(u64::from_be_bytes(
                records[at..at + 8].try_into().expect("8 bytes"),
            ));
            at += 8;
            let Ok(Some((f, n))) = frame::parse(&records[at..]) else {
                self.hist.report(
                    "reply-record",
                    None,
                    format!("n{id} produced a reply record that is not a whole frame"),
                );
                return;
            };
            let bytes = records[at..at + n].to_vec();
            at += n;
            self.deliver_reply(id, conn, f.id, bytes);
        }
    }

    /// One reply frame of node `id` for connection `conn`.
    pub(super) fn deliver_reply(&mut self, id: u32, conn: ConnId, rid: u32, bytes: Vec<u8>) {
        match conn_of(conn) {
            Conn::Client(op) => {
                let kept = self
                    .node_mut(id)
                    .up
                    .as_mut()
                    .and_then(|r| r.outcomes.remove(&(conn.0, rid)));
                self.client_answer(op, &bytes, kept);
            }
            Conn::Admin(n) => self.admin_answer(n, &bytes),
            Conn::Script(n) => {
                let kept = self
                    .node_mut(id)
                    .up
                    .as_mut()
                    .and_then(|r| r.outcomes.remove(&(conn.0, rid)));
                self.script_answer(n, bytes, kept);
            }
            Conn::Peer {
                from,
                from_shard,
                from_life,
            } => self.send_reply(id, from, from_shard, from_life, bytes),
        }
    }

    /// The session of an inbound peer link (the handshake is `kvd`'s and is tested there;
    /// the simulator's links start authenticated).
    pub(super) fn peer_session(from: u32) -> Session {
        Session {
            role: Some(Role::Peer),
            peer_id: Some(from),
            ..Session::default()
        }
    }
}

/// Whether some shard of `n` has unsynced writes.
fn run_needs_sync(n: &Node) -> bool {
    n.up.as_ref()
        .is_some_and(|r| r.cores.iter().any(|c| c.store().needs_sync()))
}

fn range_ms(w: &mut World, lo: u64, hi: u64) -> u64 {
    super::options::range(&mut w.rng, lo, hi)
}

fn range_percent(w: &mut World, percent: u32) -> bool {
    super::options::range(&mut w.rng, 1, 100) <= u64::from(percent)
}
