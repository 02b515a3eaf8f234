//! Unit tests of the shard core, driven by a tiny in-memory driver (`roundtrip`).

use super::*;
use crate::hash::shard_of;
use crate::protocol::{Consistency, Response};
use crate::storage::memory::MemoryStore;
use crate::storage::{Applied, StoreError, Write};
use crate::version::Version;

pub(super) const NOW: u64 = 1_700_000_000_000;

/// A store whose sync fails, to check that failed syncs are never acknowledged.
struct FailingSync(MemoryStore);

impl Store for FailingSync {
    fn get(&mut self, key: &[u8]) -> Result<Option<crate::storage::Stored>, StoreError> {
        self.0.get(key)
    }
    fn version_of(&self, key: &[u8]) -> Option<Version> {
        self.0.version_of(key)
    }
    fn apply(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
        self.0.apply(w)
    }
    fn needs_sync(&self) -> bool {
        self.0.needs_sync()
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        Err(StoreError::WritesRefused("fsync: EIO".into()))
    }
    fn maintenance(&mut self, now_ms: u64, budget: usize) -> Result<bool, StoreError> {
        self.0.maintenance(now_ms, budget)
    }
    fn scan_epoch(&self) -> u64 {
        self.0.scan_epoch()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn highest_version(&self) -> Version {
        self.0.highest_version()
    }
    fn stats(&self, report: &mut dyn FnMut(&'static str, u64)) {
        self.0.stats(report)
    }
}

fn cores(shards: usize, sync: SyncPolicy, failing: bool) -> Vec<ShardCore> {
    let shared = Arc::new(NodeShared::new(1, shards, NOW, 100));
    (0..shards)
        .map(|shard| {
            let store: Box<dyn Store> = if failing {
                Box::new(FailingSync(MemoryStore::new()))
            } else {
                Box::new(MemoryStore::new())
            };
            ShardCore::new(
                ShardConfig {
                    shard,
                    shards,
                    sync,
                    client_token: None,
                    admin_token: None,
                },
                shared.clone(),
                store,
                Box::new(crate::storage::ceiling::NoCeiling),
            )
        })
        .collect()
}

/// A tiny in-memory driver: feeds a request to shard `at`, runs turns until the reply for
/// connection `conn` comes back, and returns the reply frames addressed to it.
fn roundtrip(cores: &mut [ShardCore], at: usize, req: Request<'_>, id: u32) -> Vec<u8> {
    let conn = ConnId::new(7, 1);
    let mut session = Session::default();
    let mut bytes = Vec::new();
    req.encode(id, &mut bytes);
    let (f, _) = frame::parse(&bytes).unwrap().unwrap();
    let mut wbuf = Vec::new();
    cores[at].on_frame(NOW, conn, &mut session, f, &mut wbuf);
    let mut own = Vec::new();
    // Bounded: a request crosses at most two mailboxes.
    for _ in 0..4 {
        let mut mail: Vec<(usize, Mail)> = Vec::new();
        for (i, core) in cores.iter_mut().enumerate() {
            core.finish_turn().expect("no ceiling to fail");
            let mut own_i = Vec::new();
            core.take_outbox()
                .drain_mail(i, &mut own_i, |dest, m| mail.push((dest, m)));
            if i == at {
                own.extend_from_slice(&own_i);
            }
        }
        for (dest, m) in mail {
            cores[dest].on_mail(NOW, m, &mut own);
        }
    }
    // Own records carry the conn id first.
    let mut at_byte = 0;
    while at_byte < own.len() {
        assert_eq!(&own[at_byte..at_byte + 8], &conn.0.to_be_bytes());
        at_byte += 8;
        let (_, n) = frame::parse(&own[at_byte..]).unwrap().unwrap();
        wbuf.extend_from_slice(&own[at_byte..at_byte + n]);
        at_byte += n;
    }
    wbuf
}

pub(super) fn reply(bytes: &[u8]) -> (u8, Status, u32, Vec<u8>) {
    let (f, n) = frame::parse(bytes).unwrap().expect("a whole reply");
    assert_eq!(n, bytes.len(), "exactly one reply");
    let r = Response::from_frame(&f).unwrap();
    (r.op, r.status().unwrap(), r.id, r.body.to_vec())
}

#[test]
fn put_get_delete_through_any_shard() {
    let mut cs = cores(3, SyncPolicy::Never, false);
    let key = b"some key";
    let owner = shard_of(key, 3);
    let other = (owner + 1) % 3;
    for at in [owner, other] {
        let put = Request::Put {
            key,
            value: b"v",
            ttl_seconds: 0,
            consistency: Consistency::Default,
        };
        let (o, st, id, body) = reply(&roundtrip(&mut cs, at, put, 11));
        assert_eq!((o, st, id, body.len()), (op::PUT, Status::Ok, 11, 8));
        let get = Request::Get {
            key,
            consistency: Consistency::One,
        };
        let (_, st, id, body) = reply(&roundtrip(&mut cs, at, get, 12));
        assert_eq!((st, id, &body[8..]), (Status::Ok, 12, &b"v"[..]));
        let del = Request::Delete {
            key,
            consistency: Consistency::All,
        };
        assert_eq!(reply(&roundtrip(&mut cs, at, del, 13)).1, Status::Ok);
        let lget = Request::LocalGet { key };
        let (_, st, _, body) = reply(&roundtrip(&mut cs, at, lget, 14));
        assert_eq!((st, body.len()), (Status::NotFound, 8), "tombstone version");
    }
    // Only the owner holds the key.
    for (i, c) in cs.iter_mut().enumerate() {
        assert_eq!(c.store_mut().len(), usize::from(i == owner));
    }
}

#[test]
fn always_policy_holds_acks_until_the_sync() {
    let mut cs = cores(1, SyncPolicy::Always, false);
    let conn = ConnId::new(0, 1);
    let mut session = Session::default();
    let mut bytes = Vec::new();
    Request::Put {
        key: b"k",
        value: b"v",
        ttl_seconds: 0,
        consistency: Consistency::Default,
    }
    .encode(1, &mut bytes);
    let (f, _) = frame::parse(&bytes).unwrap().unwrap();
    let mut wbuf = Vec::new();
    cs[0].on_frame(NOW, conn, &mut session, f, &mut wbuf);
    assert!(wbuf.is_empty(), "no ack before the sync");
    assert!(cs[0].wants_sync_now());
    cs[0].finish_turn().expect("no ceiling to fail");
    assert!(!cs[0].wants_sync_now());
    let records = std::mem::take(&mut cs[0].take_outbox().replies[0]);
    let (_, st, id, _) = reply(&records[8..]);
    assert_eq!((st, id), (Status::Ok, 1));
}

#[test]
fn a_failed_sync_is_never_acknowledged() {
    let mut cs = cores(1, SyncPolicy::Always, true);
    let put = Request::Put {
        key: b"k",
        value: b"v",
        ttl_seconds: 0,
        consistency: Consistency::Default,
    };
    let (_, st, _, msg) = reply(&roundtrip(&mut cs, 0, put, 1));
    assert_eq!(st, Status::StorageError);
    assert!(String::from_utf8_lossy(&msg).contains("sync failed"));
    // Later writes are refused outright; reads still work.
    let (_, st, _, _) = reply(&roundtrip(&mut cs, 0, put, 2));
    assert_eq!(st, Status::StorageError);
    let get = Request::Get {
        key: b"k",
        consistency: Consistency::Default,
    };
    assert_eq!(reply(&roundtrip(&mut cs, 0, get, 3)).1, Status::Ok);
}

fn stats_of(core: &ShardCore) -> String {
    core.stats_text(NOW)
}

fn stat(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn compact_waits_for_every_shard_and_answers_what_was_reclaimed() {
    let mut cs = cores(2, SyncPolicy::Never, false);
    let conn = ConnId::new(3, 1);
    let mut session = Session::default();
    let mut bytes = Vec::new();
    Request::Compact.encode(9, &mut bytes);
    let (f, _) = frame::parse(&bytes).unwrap().unwrap();
    let mut wbuf = Vec::new();
    let after = cs[0].on_frame(NOW, conn, &mut session, f, &mut wbuf);
    assert_eq!(after, After::Deferred);
    assert!(wbuf.is_empty(), "no answer before the pass ran");
    // Shard 0 ticks first: shard 1 has not run its pass yet, so no answer.
    cs[0].on_tick(NOW, 16);
    assert!(cs[0].take_outbox().replies[0].is_empty());
    cs[1].on_tick(NOW, 16);
    cs[0].on_tick(NOW + 100, 16);
    let records = std::mem::take(&mut cs[0].take_outbox().replies[0]);
    assert_eq!(&records[..8], &conn.0.to_be_bytes());
    let (o, st, id, body) = reply(&records[8..]);
    assert_eq!((o, st, id), (op::COMPACT, Status::Ok, 9));
    let text = String::from_utf8(body).unwrap();
    assert_eq!(stat(&text, "complete"), Some(1), "{text}");
    assert_eq!(stat(&text, "bytes_reclaimed"), Some(0), "{text}");
}

#[test]
fn refused_writes_are_counted_on_a_single_node() {
    use crate::storage::logstore::{LogConfig, LogStore};
    use crate::storage::vfs::MemVfs;
    // A disk with no room beyond the store's reserve: every write is refused.
    let vfs = MemVfs::new();
    vfs.set_capacity(Some(1024 * 1024));
    let (store, _) = LogStore::open(vfs, std::path::Path::new("/s"), LogConfig::default()).unwrap();
    let shared = Arc::new(NodeShared::new(1, 1, NOW, 100));
    let cfg = ShardConfig {
        shard: 0,
        shards: 1,
        sync: SyncPolicy::Never,
        client_token: None,
        admin_token: None,
    };
    let mut cs = vec![ShardCore::new(
        cfg,
        shared,
        Box::new(store),
        Box::new(crate::storage::ceiling::NoCeiling),
    )];
    for i in 0..3 {
        let put = Request::Put {
            key: b"k",
            value: b"v",
            ttl_seconds: 0,
            consistency: Consistency::Default,
        };
        let (_, st, _, body) = reply(&roundtrip(&mut cs, 0, put, 20 + i));
        assert_eq!(st, Status::StorageError);
        let msg = String::from_utf8_lossy(&body[2..]).to_string();
        assert!(msg.contains("disk full"), "{msg}");
    }
    cs[0].on_tick(NOW, 16);
    let text = stats_of(&cs[0]);
    assert_eq!(stat(&text, "storage_writes_refused"), Some(3), "{text}");
    assert_eq!(stat(&text, "replies_storage_error"), Some(3), "{text}");
}

// --- STATS from typed per-shard figures (issue 11 item 6) ---

/// Every name of a clustered two-shard node's STATS over log stores, in order, as the node
/// answered before the figures were typed (captured then): STATS output stays the same.
const STATS_NAMES: &[&str] = &[
    "node_id",
    "uptime_ms",
    "shards",
    "connections_max",
    "connections",
    "connections_total",
    "connections_refused",
    "connections_dropped",
    "bytes_in",
    "bytes_out",
    "syncs",
    "key_requests_owned",
    "key_requests_not_owned",
    "peer_frames_dropped",
    "peer_frames_no_addr",
    "handshake_failures",
    "handshakes_throttled",
    "handshake_throttle_sources",
    "requests_put",
    "replies_clock_offset",
    "shard_0_requests",
    "shard_0_forwarded_out",
    "shard_0_connections",
    "shard_1_requests",
    "shard_1_forwarded_out",
    "shard_1_connections",
    "latency_requests",
    "latency_p50_us",
    "latency_p90_us",
    "latency_p99_us",
    "latency_p999_us",
    "latency_max_us",
    "memory_buffered_bytes",
    "memory_buffered_peak_bytes",
    "memory_reserved_bytes",
    "memory_node_bytes_limit",
    "memory_connection_bytes_limit",
    "memory_frame_timeout_ms",
    "memory_paused_connection",
    "memory_paused_node",
    "memory_dropped_node",
    "memory_dropped_frame_timeout",
    "cluster_leader",
    "cluster_alive",
    "cluster_nodes",
    "cluster_replicas",
    "cluster_incarnation",
    "clock_offset_ms",
    "clock_offset_max_ms",
    "clock_peers_live",
    "clock_peers_measured",
    "clock_writes_refused",
    "clock_peer_2_offset_ms",
    "clock_peer_2_rtt_ms",
    "storage_keys",
    "storage_live_bytes",
    "storage_dead_bytes",
    "storage_segments",
    "storage_keydir_bytes",
    "storage_compactions",
    "storage_bytes_reclaimed",
    "storage_recovery_ms",
    "storage_corrupt_records",
    "storage_writes_refused",
    "storage_read_only",
    "storage_segments_reclaimed",
    "storage_disk_free_bytes_min",
    "storage_disk_reserve_bytes_max",
    "storage_disk_pressure_max",
    "cluster_pauses",
    "gossip_sent",
    "gossip_merged",
    "failures_detected",
    "recoveries",
    "coord_writes",
    "coord_reads",
    "coord_unavailable",
    "coord_timeouts",
    "coord_overloaded",
    "coord_in_flight",
    "read_repairs_sent",
    "read_repairs_received",
    "hints_stored",
    "hints_delivered",
    "hints_dropped",
    "hints_pending",
    "hints_received",
    "replicate_served",
    "peer_errors",
    "coord_maybe_applied",
    "coord_reissues",
    "coord_superseded",
    "coord_full_reads",
    "coord_spares_asked",
    "coord_read_fetches",
    "coord_clock_refused",
    "replicate_refused_ahead",
    "clock_samples",
    "clock_samples_dropped",
    "members_added",
    "members_ignored",
    "clock_shards_refusing",
    "clock_shards_accepting",
    "aae_rounds",
    "aae_full_rounds",
    "aae_ms_since_full_round_max",
    "aae_exchanges",
    "aae_exchanges_failed",
    "aae_exchanges_served",
    "aae_keys_sent",
    "aae_keys_repaired",
    "aae_keys_dropped",
    "aae_bytes_sent",
    "aae_guard_refused",
    "aae_swept",
    "aae_refused_ahead",
    "aae_shards_rejoining",
    "aae_horizon_ms_min",
    "aae_tree_keys",
    "aae_tree_bytes",
    "aae_exchanges_in_flight",
    "aae_tree_builds",
    "ring_version_max",
    "ring_moving_partitions_max",
    "ring_change_running_max",
    "ring_moves_paused_max",
    "transfers_waiting",
    "transfers_running",
    "transfers_copied",
    "transfer_bytes",
    "transfer_keys",
    "ring_flips",
    "keys_forgotten",
];

/// A clustered node of two shards over log stores on disks of different sizes, after some
/// writes and a tick of every shard; returns the cores.
fn clustered_pair() -> Vec<ShardCore> {
    use crate::cluster::ClusterConfig;
    use crate::storage::logstore::{LogConfig, LogStore};
    use crate::storage::vfs::MemVfs;
    let shared = Arc::new(NodeShared::new(1, 2, NOW, 100));
    let config =
        ClusterConfig::build(1, "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003", 3).unwrap();
    let mut cs: Vec<ShardCore> = (0..2)
        .map(|shard| {
            // Different disks, so that the _min and _max figures differ per shard.
            let vfs = MemVfs::new();
            vfs.set_capacity(Some((64 << 20) * (shard as u64 + 1)));
            let (store, _) =
                LogStore::open(vfs, std::path::Path::new("/s"), LogConfig::default()).unwrap();
            let cfg = ShardConfig {
                shard,
                shards: 2,
                sync: SyncPolicy::Never,
                client_token: None,
                admin_token: None,
            };
            ShardCore::new(
                cfg,
                shared.clone(),
                Box::new(store),
                Box::new(crate::storage::ceiling::NoCeiling),
            )
            .with_cluster(config.clone(), NOW, None)
        })
        .collect();
    for i in 0..20u32 {
        let key = format!("key {i}");
        let put = Request::Put {
            key: key.as_bytes(),
            value: b"value",
            ttl_seconds: 0,
            consistency: Consistency::One,
        };
        // Refused (CLOCK_OFFSET: no peer's clock is measured here), but counted.
        let (_, st, _, _) = reply(&roundtrip(&mut cs, (i % 2) as usize, put, i));
        assert_eq!(st, Status::ClockOffset);
    }
    // Records straight into the stores, a different number per shard.
    for (shard, c) in cs.iter_mut().enumerate() {
        for i in 0..3 + 4 * shard as u64 {
            let key = format!("stored {i}");
            let w = Write {
                key: key.as_bytes(),
                value: Some(b"value"),
                version: Version((NOW << 16) + i),
                expires_at_ms: 0,
                causal: false,
            };
            assert!(matches!(c.store_mut().apply(w), Ok(Applied::Stored)));
        }
    }
    for c in cs.iter_mut() {
        c.on_tick(NOW + 10, 16);
        c.on_cluster_tick(NOW + 10);
    }
    // Node 2 answers shard 0's gossip with its clock 30 ms ahead: a measured peer (per-peer
    // clock lines), published with the view on shard 0's next cluster tick.
    let mut bytes = Vec::new();
    let stamp = crate::cluster::peer::ClockStamp {
        sent_ms: NOW + 10 + 30,
        echo_ms: NOW + 10,
    };
    crate::cluster::peer::put_gossip_reply(&mut bytes, 1, 2, &[], stamp);
    let (f, _) = frame::parse(&bytes).unwrap().unwrap();
    cs[0].on_peer_reply(NOW + 12, 2, &f);
    // Late enough for its figures to be published again (they are at most every
    // STATS_PUBLISH_INTERVAL_MS).
    cs[0].on_cluster_tick(NOW + 10 + super::cluster::STATS_PUBLISH_INTERVAL_MS);
    // The view goes to shard 1 as mail.
    let mut mail = Vec::new();
    cs[0]
        .take_outbox()
        .drain_mail(0, &mut Vec::new(), |dest, m| mail.push((dest, m)));
    assert!(!mail.is_empty(), "shard 0 sends its view");
    for (dest, m) in mail {
        cs[dest].on_mail(NOW + 15, m, &mut Vec::new());
    }
    cs
}

#[test]
fn stats_names_stay_the_same() {
    let cs = clustered_pair();
    let text = cs[1].stats_text(NOW + 20);
    let names: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(names, STATS_NAMES, "{text}");
}

/// Storage figures combine over the shards as their names say: `_min` by min, `_max` by max,
/// the rest summed; cluster counters are summed too.
#[test]
fn stats_combine_the_shards_figures_by_name() {
    let mut cs = clustered_pair();
    let text = cs[0].stats_text(NOW + 20);
    let mut per_shard: Vec<Vec<(&'static str, u64)>> = Vec::new();
    for c in cs.iter_mut() {
        let mut figures = Vec::new();
        c.store_mut().stats(&mut |name, v| figures.push((name, v)));
        per_shard.push(figures);
    }
    assert_eq!(per_shard[0].len(), per_shard[1].len());
    for (i, &(name, a)) in per_shard[0].iter().enumerate() {
        let (name_1, b) = per_shard[1][i];
        assert_eq!(name, name_1);
        let want = if name.ends_with("_min") {
            a.min(b)
        } else if name.ends_with("_max") {
            a.max(b)
        } else {
            a + b
        };
        assert_eq!(stat(&text, name), Some(want), "{name}: {text}");
    }
    // The disks differ, so each rule is seen at work.
    let free = |s: usize| {
        per_shard[s]
            .iter()
            .find(|f| f.0 == "storage_disk_free_bytes_min")
    };
    assert_ne!(free(0), free(1));
    assert_eq!(stat(&text, "storage_keys"), Some(3 + 7), "{text}");
    // Cluster counters: every put was refused by a coordinator's clock rule, and each
    // shard's core refuses writes for its clock.
    assert_eq!(stat(&text, "coord_clock_refused"), Some(20), "{text}");
    assert_eq!(stat(&text, "clock_shards_refusing"), Some(2), "{text}");
    // A _max figure of the cluster: time since the last full anti-entropy round.
    assert_eq!(
        stat(&text, "aae_ms_since_full_round_max"),
        Some(10 + super::cluster::STATS_PUBLISH_INTERVAL_MS),
        "{text}"
    );
    // The clock lines are shard 0's view, shown as they are by any shard (never summed).
    let text_1 = cs[1].stats_text(NOW + 20);
    for t in [&text, &text_1] {
        assert_eq!(stat(t, "clock_peer_2_offset_ms"), Some(29), "{t}");
        assert_eq!(stat(t, "clock_peers_measured"), Some(1), "{t}");
    }
}

/// Issue 13: under `never` a write's acknowledgement waits for the turn's one write of its
/// record; if that write fails (disk full), every acknowledgement of the turn becomes
/// STORAGE_ERROR, the writes read as never made, and the next turn's writes work again.
#[test]
fn a_failed_write_of_the_turn_refuses_every_write_of_the_turn() {
    use crate::storage::logstore::{LogConfig, LogStore};
    use crate::storage::vfs::MemVfs;
    let vfs = MemVfs::new();
    let (store, _) = LogStore::open(
        vfs.clone(),
        std::path::Path::new("/d"),
        LogConfig::default(),
    )
    .expect("open");
    let shared = Arc::new(NodeShared::new(1, 1, NOW, 100));
    let mut core = ShardCore::new(
        ShardConfig {
            shard: 0,
            shards: 1,
            sync: SyncPolicy::Never,
            client_token: None,
            admin_token: None,
        },
        shared,
        Box::new(store),
        Box::new(crate::storage::ceiling::NoCeiling),
    );
    let conn = ConnId::new(0, 1);
    let mut session = Session::default();
    let mut turn = |core: &mut ShardCore, keys: &[&[u8]], first_id: u32| -> Vec<(Status, u32)> {
        let mut wbuf = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let mut bytes = Vec::new();
            Request::Put {
                key,
                value: b"value",
                ttl_seconds: 0,
                consistency: Consistency::Default,
            }
            .encode(first_id + i as u32, &mut bytes);
            let (f, _) = frame::parse(&bytes).unwrap().unwrap();
            let after = core.on_frame(NOW, conn, &mut session, f, &mut wbuf);
            assert_eq!(after, After::Deferred, "held until the turn's write");
        }
        assert!(wbuf.is_empty(), "no acknowledgement before the write");
        core.finish_turn().expect("no ceiling to fail");
        let records = std::mem::take(&mut core.take_outbox().replies[0]);
        let mut out = Vec::new();
        let mut at = 0;
        while at < records.len() {
            at += 8;
            let (f, n) = frame::parse(&records[at..]).unwrap().unwrap();
            let r = Response::from_frame(&f).unwrap();
            out.push((r.status().unwrap(), r.id));
            at += n;
        }
        out
    };
    assert_eq!(
        turn(&mut core, &[b"a"], 1),
        vec![(Status::Ok, 1)],
        "a working turn"
    );
    vfs.set_space_max(Some(vfs.used_bytes() + 20)); // part of the turn lands, then ENOSPC
    let refused = turn(&mut core, &[b"b", b"c", b"a"], 10);
    assert_eq!(
        refused,
        vec![
            (Status::StorageError, 10),
            (Status::StorageError, 11),
            (Status::StorageError, 12)
        ]
    );
    let store = core.store_mut();
    assert!(store.get(b"b").unwrap().is_none(), "undone");
    assert!(
        store.get(b"a").unwrap().is_some(),
        "the earlier write stays"
    );
    assert!(core.writes_refused().is_none(), "not sticky");
    vfs.set_space_max(None);
    assert_eq!(turn(&mut core, &[b"b"], 20), vec![(Status::Ok, 20)]);
}
