//! kvd's command line: the usage text and every option's definition (parsed in main.rs
//! and join.rs).

use super::*;

pub(super) fn usage(opts: &getopts::Options) -> String {
    let brief = "\
Usage: kvd [OPTIONS]

Runs one dkv node: a key-value store served over the dkv binary protocol (protocol.md) on one
TCP port, with one event-loop thread per shard. Stop it with SIGINT or SIGTERM: every shard
syncs its data, tells each client connection SHUTTING_DOWN (protocol.md § 6) and exits.

Logging: set RUST_LOG (error, warn, info, debug, trace); default info.

Secrets: the cluster secret, the client token and the admin token each come from exactly one
of the option, its -file variant (the file's content, one trailing newline removed) or an
environment variable (DKV_CLUSTER_SECRET, DKV_CLIENT_TOKEN, DKV_ADMIN_TOKEN); giving two is
an error. Prefer the file or
the variable: an option's value is visible to every user of the machine in `ps`.";
    opts.usage(brief)
}

pub(super) fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt(
        "l",
        "listen",
        &format!("address to listen on for clients and peers [default: 127.0.0.1:{PORT_DEFAULT}]"),
        "ADDR",
    );
    o.optopt(
        "d",
        "data",
        "data directory (created if missing) [default: ./kvdata]",
        "DIR",
    );
    o.optopt(
        "s",
        "shards",
        &format!("event-loop threads, each owning a slice of the keys [default: number of cores, at most {SHARDS_MAX}]"),
        "K",
    );
    o.optopt(
        "",
        "sync",
        "when writes are acknowledged: always (after fsync, group-committed), interval:MS (fsync every MS ms), never (OS decides) [default: interval:1000]",
        "POLICY",
    );
    o.optopt(
        "",
        "segment-size-mb",
        &format!(
            "seal a log segment when it reaches this size [default: {}]",
            SEGMENT_SIZE_MAX_DEFAULT / (1024 * 1024)
        ),
        "MB",
    );
    o.optopt(
        "",
        "compaction-dead-percent",
        &format!("compact a sealed segment once this share of it is dead (overwritten, deleted, expired) [default: {COMPACTION_DEAD_PERCENT_DEFAULT}]"),
        "PCT",
    );
    disk_options(&mut o);
    o.optopt(
        "",
        "max-connections",
        &format!("connection limit of the node; lowered to fit the open-file limit [default: {CONNECTIONS_MAX_DEFAULT}]"),
        "N",
    );
    o.optopt(
        "",
        "idle-timeout-ms",
        &format!("close connections idle this long [default: {IDLE_TIMEOUT_MS_DEFAULT}]"),
        "MS",
    );
    o.optopt(
        "",
        "client-token",
        "require clients to present this token in HELLO [default: none, HELLO optional]",
        "TOKEN",
    );
    o.optopt(
        "",
        "admin-token",
        &format!(
            "allow the admin opcodes (ANTI_ENTROPY, COMPACT, CLUSTER_ADMIN) only to clients whose \
             HELLO presents this token (kvcat --token); without it they are allowed only from \
             loopback (or set {ADMIN_TOKEN_ENV})"
        ),
        "TOKEN",
    );
    secret_options(&mut o);
    memory_options(&mut o);
    cluster_options(&mut o);
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

/// Environment variable holding the cluster secret (instead of an option).
pub(super) const CLUSTER_SECRET_ENV: &str = "DKV_CLUSTER_SECRET";
/// Environment variable holding the client token (instead of an option).
pub(super) const CLIENT_TOKEN_ENV: &str = "DKV_CLIENT_TOKEN";
/// Environment variable holding the admin token (instead of an option).
pub(super) const ADMIN_TOKEN_ENV: &str = "DKV_ADMIN_TOKEN";

/// The file variants of the secret options (the secrets themselves are where they always were).
pub(super) fn secret_options(o: &mut getopts::Options) {
    o.optopt(
        "",
        "client-token-file",
        &format!("like --client-token, read from FILE (or set {CLIENT_TOKEN_ENV})"),
        "FILE",
    );
    o.optopt(
        "",
        "admin-token-file",
        &format!("like --admin-token, read from FILE (or set {ADMIN_TOKEN_ENV})"),
        "FILE",
    );
    o.optopt(
        "",
        "cluster-secret-file",
        &format!("like --cluster-secret, read from FILE (or set {CLUSTER_SECRET_ENV})"),
        "FILE",
    );
}

/// Compaction thresholds and the disk-space reserve (storage/policy.rs).
pub(super) fn disk_options(o: &mut getopts::Options) {
    o.optopt(
        "",
        "compaction-min-dead-percent-of-segment",
        &format!("start a compaction only once the candidate segments hold this percentage of --segment-size-mb in dead bytes (the active segment is sealed for compaction once it alone meets both thresholds) [default: {COMPACTION_DEAD_MIN_PERCENT_OF_SEGMENT_DEFAULT}]"),
        "PCT",
    );
    o.optopt(
        "",
        "disk-reserve-mb",
        "free disk space kept so that compaction can always run: writes are refused (STORAGE_ERROR \"disk full\") below it, and compaction works below its thresholds under twice it. auto = 2 x min(segment size, live data) per shard + 1 MiB [default: auto]",
        "MB|auto",
    );
}

/// The options of the memory budget of connection buffers (`dkv::budget`).
pub(super) fn memory_options(o: &mut getopts::Options) {
    o.optopt(
        "",
        "connection-buffer-kb",
        &format!(
            "per connection: unsent replies plus the room reserved for replies still to come              (a GET reserves a largest value); past it the connection is not read until it              reads its replies [default: {}]",
            CONNECTION_BUFFER_BYTES_MAX_DEFAULT / 1024
        ),
        "KB",
    );
    o.optopt(
        "",
        "node-buffer-mb",
        &format!(
            "node-wide: bytes in connection read and write buffers; past it read buffers stop              growing and the connections holding the most unread replies are dropped              [default: {}]",
            NODE_BUFFER_BYTES_MAX_DEFAULT / (1024 * 1024)
        ),
        "MB",
    );
    o.optopt(
        "",
        "frame-timeout-ms",
        &format!(
            "a frame must arrive whole this long after its first byte, or the connection is              dropped [default: {FRAME_TIMEOUT_MS_DEFAULT}]"
        ),
        "MS",
    );
}

/// The options of the cluster issue (all optional: without `--nodes` the node runs alone).
pub(super) fn cluster_options(o: &mut getopts::Options) {
    o.optopt(
        "",
        "id",
        "this node's id in --nodes, or a new id with --join [default: 0 alone, required with --nodes or --join]",
        "ID",
    );
    o.optopt(
        "",
        "nodes",
        "every node of the cluster, this one included: ID=HOST:PORT,... e.g. 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 (--listen defaults to this node's address)",
        "LIST",
    );
    o.optopt(
        "",
        "join",
        "join a running cluster through any of its nodes (instead of --nodes): fetches the cluster's ring map from HOST:PORT (retrying for up to 30 s), then starts as a new node that owns nothing yet; needs --id (an id no node has), --listen (the address the other nodes reach this node at) and the cluster secret",
        "HOST:PORT",
    );
    o.optopt(
        "",
        "replicas",
        "copies of each key (N) [default: min(3, nodes)]",
        "N",
    );
    o.optopt(
        "",
        "cluster-secret",
        "secret the nodes prove to each other without sending it; with --nodes or --join, this, --cluster-secret-file or DKV_CLUSTER_SECRET is required",
        "SECRET",
    );
    o.optopt(
        "",
        "gossip-interval-ms",
        &format!("time between two heartbeats [default: {GOSSIP_INTERVAL_MS_DEFAULT}]"),
        "MS",
    );
    o.optopt(
        "",
        "failure-threshold",
        &format!("gossip intervals without a heartbeat before a node is marked failed [default: {FAILURE_THRESHOLD_DEFAULT}]"),
        "BEATS",
    );
    o.optopt(
        "",
        "hinted-handoff",
        "keep writes for unreachable replicas and deliver them later: on|off [default: on]",
        "on|off",
    );
    o.optopt(
        "",
        "anti-entropy-interval-ms",
        &format!("time between anti-entropy rounds [default: {ANTI_ENTROPY_INTERVAL_MS_DEFAULT}]"),
        "MS",
    );
    o.optopt(
        "",
        "tombstone-window-ms",
        &format!(
            "a replica failed for longer no longer holds back tombstone collection, and a node \
             away for longer rejoins through a full anti-entropy round before serving reads \
             [default: {TOMBSTONE_WINDOW_MS_DEFAULT}]"
        ),
        "MS",
    );
    o.optopt(
        "",
        "read-repair",
        "reads repair the stale replicas they find: on|off [default: on]",
        "on|off",
    );
    o.optopt(
        "",
        "read-repair-every",
        &format!(
            "one read in N asks every replica, not only as many as its consistency level \
             needs, so reads find and repair stale replicas at a bounded share of the load; \
             1 = every read, 0 = none (anti-entropy still repairs) [default: {READ_REPAIR_EVERY_DEFAULT}]"
        ),
        "N",
    );
    o.optopt(
        "",
        "conflicts",
        "how writes to one key that did not see each other are resolved, the same on every \
         node of a cluster: lww (last write wins by version: one of them is dropped) or \
         siblings (both are kept; a GET returns every sibling and a causal context, a write \
         that carries the context supersedes what it read; protocol.md § 19) [default: lww]",
        "MODE",
    );
    o.optopt(
        "",
        "default-consistency",
        "level of a request that asks for the node's default (protocol.md § 5): one|quorum|all [default: quorum]",
        "LEVEL",
    );
    o.optopt(
        "",
        "request-timeout-ms",
        &format!(
            "how long a coordinator waits for replicas [default: {REQUEST_TIMEOUT_MS_DEFAULT}]"
        ),
        "MS",
    );
    // The elastic cluster (issue 12).
    o.optopt(
        "",
        "replace",
        "with --join: take over dead node ID's partitions (streamed from the surviving copies) \
         instead of taking a share from every node",
        "ID",
    );
    o.optopt(
        "",
        "stream-mb-per-s",
        "byte rate of the partition copies this node receives when nodes join, leave or are \
         replaced, in MB/s (0 = unlimited; changeable with kvcat CLUSTER THROTTLE) [default: 0]",
        "MB",
    );
    o.optopt(
        "",
        "transfer-limit",
        &format!(
            "partition copies this node runs at once [default: {}]",
            dkv::cluster::antientropy::TRANSFER_LIMIT_DEFAULT
        ),
        "N",
    );
    o.optopt(
        "",
        "slow-ms",
        &format!(
            "log requests answered later than this (opcode, key length, consistency, where the \
             time went), at most {} lines a second per shard; 0 = never [default: {}]",
            dkv::server::slowlog::SLOW_LOG_LINES_PER_S,
            dkv::server::slowlog::SLOW_MS_DEFAULT
        ),
        "MS",
    );
    o.optopt(
        "",
        "restore",
        "before starting, fill the (fresh) --data directory from a snapshot directory taken \
         by kvcat SNAPSHOT TAKE (DATA/snapshots/NAME), after checking every file's checksum",
        "PATH",
    );
    o.optopt(
        "",
        "metrics-listen",
        "serve HTTP on ADDR (off by default), e.g. 127.0.0.1:9401: Prometheus metrics at \
         /metrics and the key-value API PUT/GET/DELETE /kv/KEY (README, Operating)",
        "ADDR",
    );
    // Clocks (issue 10).
    o.optopt(
        "",
        "max-clock-offset-ms",
        &format!(
            "a node whose clock is further than this from the cluster's (the median of its \
             measured offsets to its peers) refuses to coordinate writes (CLOCK_OFFSET); \
             replicas refuse versions further than this ahead of the cluster's clock \
             [default: {}]",
            dkv::limits::MAX_CLOCK_OFFSET_MS_DEFAULT
        ),
        "MS",
    );
}
