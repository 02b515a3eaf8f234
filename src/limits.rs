//! Every bound in dkv as a named constant, with the assertions that tie them together.
//!
//! A limit that is not written here does not exist: queues, buffers, loops, connections and
//! frame sizes are all bounded (TigerBeetle's "put a limit on everything"). Units are the last
//! word of each name. Where a limit is also a command-line option, the constant is its default
//! and the option is checked against the `*_MAX` constant beside it.

/// Largest key, in bytes. Keys are arbitrary bytes of length 1..=KEY_SIZE_MAX.
pub const KEY_SIZE_MAX: usize = 1024;

/// Largest value, in bytes. Values are arbitrary bytes, possibly empty.
pub const VALUE_SIZE_MAX: usize = 1024 * 1024;

/// Bytes of the frame header that follow the 4-byte length: op (1), aux (1), request id (4).
pub const FRAME_HEADER_AFTER_LENGTH: usize = 6;

/// Total size of the frame header including the 4-byte length prefix.
pub const FRAME_HEADER_SIZE: usize = 4 + FRAME_HEADER_AFTER_LENGTH;

/// Largest body of a PUT: key length (2) + key + ttl (4) + value.
pub const PUT_BODY_SIZE_MAX: usize = 2 + KEY_SIZE_MAX + 4 + VALUE_SIZE_MAX;

/// Largest value of the length prefix of any frame, in bytes (everything after the prefix).
/// Peer frames carry at most one write each, with a few more header bytes than a PUT, so 4 KiB
/// of slack above the largest PUT covers every frame we define. A frame that declares more is
/// refused before any byte of its body is buffered.
pub const FRAME_SIZE_MAX: usize = FRAME_HEADER_AFTER_LENGTH + PUT_BODY_SIZE_MAX + 4096;

/// Largest auth token in a HELLO frame, in bytes.
pub const TOKEN_SIZE_MAX: usize = 256;

/// Largest STATS or CLUSTER reply body, in bytes; the text is cut (with a final `truncated 1`
/// line) rather than grown past it.
pub const TEXT_REPLY_SIZE_MAX: usize = 64 * 1024;

/// Largest error message carried in an error frame, in bytes.
pub const ERROR_MESSAGE_SIZE_MAX: usize = 512;

/// Default cap on open connections per node (clients and peers together), split evenly over the
/// shards. The effective cap is lowered at start if the open-file limit cannot be raised enough.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

/// Hard upper bound for `--max-connections`.
pub const CONNECTIONS_MAX_LIMIT: usize = 1_000_000;

/// File descriptors kept in reserve (segments, hint files, listeners, wakers, stdio) when the
/// connection cap is derived from the open-file limit.
pub const FD_RESERVE: usize = 256;

/// Bytes read from a socket in one `read` call, and the size of an idle connection's read
/// buffer (16 KiB, as Redis; 10,000 idle connections hold 160 MiB).
pub const READ_CHUNK_SIZE: usize = 16 * 1024;

/// A connection's read buffer never holds more than one largest frame plus one read chunk.
pub const READ_BUFFER_SIZE_MAX: usize = 4 + FRAME_SIZE_MAX + READ_CHUNK_SIZE;

/// A connection whose unsent replies exceed this many bytes is not reading them: it is
/// disconnected rather than buffered forever. One largest reply always fits.
pub const WRITE_BUFFER_SIZE_MAX: usize = 8 * 1024 * 1024;

/// When a connection's unsent bytes pass this mark, the server stops reading new requests from
/// it until the client drains its replies (backpressure before disconnection).
pub const WRITE_BUFFER_HIGH_WATER: usize = 2 * 1024 * 1024;

/// Requests decoded from one connection per readiness event before the loop moves on, so one
/// busy pipelining client cannot starve the others on its shard.
pub const REQUESTS_PER_READ_EVENT_MAX: usize = 1024;

/// Requests one connection may have in flight (forwarded or replicating, not yet answered).
/// Past it the server stops reading from that connection until replies drain.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 4096;

/// Default idle timeout: a connection with no traffic and nothing in flight for this long is
/// closed. Peers send gossip well inside it.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;

/// Events taken from `mio::Poll` per iteration.
pub const POLL_EVENTS_MAX: usize = 1024;

/// Longest sleep in `poll`, so timers and the shutdown flag are looked at regularly.
pub const POLL_TIMEOUT_MS_MAX: u64 = 50;

/// Polls in one event-loop turn: while a poll found events, the shard polls again without
/// waiting (up to this many times) before it ends the turn, so that the turn's one store
/// write and one write per socket carry what arrived while it worked. Measured with
/// `tools/ab` (issue 14, 2 cores): one node at P16 made 6% (get=50,put=50) and 18% (get=100)
/// more operations per CPU-second, with a lower p99 in every one of 14 alternated runs; three
/// nodes sharing the cores were unchanged. 16 did no better than 6. An idle or lightly loaded
/// shard pays one empty poll a turn.
pub const POLLS_PER_TURN_MAX: usize = 6;

/// Messages one shard's mailbox may hold. A full mailbox answers the request OVERLOADED
/// instead of queueing without bound.
pub const MAILBOX_CAPACITY: usize = 64 * 1024;

/// Most shards per node.
pub const SHARDS_MAX: usize = 256;

/// Number of ring partitions. Fixed for the life of a cluster: it is part of the placement of
/// data and of the protocol (smart clients compute it).
pub const PARTITION_COUNT: usize = 256;

/// Default TCP port of a node.
pub const PORT_DEFAULT: u16 = 7379;

/// Longest TTL a PUT may ask for (ten years), in seconds.
pub const TTL_SECONDS_MAX: u32 = 10 * 365 * 24 * 3600;

const _: () = assert!(FRAME_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(KEY_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(WRITE_BUFFER_HIGH_WATER < WRITE_BUFFER_SIZE_MAX);
const _: () = assert!(WRITE_BUFFER_SIZE_MAX > FRAME_SIZE_MAX + 4);
const _: () = assert!(READ_BUFFER_SIZE_MAX > FRAME_SIZE_MAX + 4);
const _: () = assert!(PARTITION_COUNT.is_power_of_two() && PARTITION_COUNT <= 65_536);
const _: () = assert!(SHARDS_MAX <= PARTITION_COUNT);

// ---- connection memory budget (see `budget.rs`) ----

/// Default per-connection limit (`--connection-buffer-mb`): unsent replies plus the bytes
/// reserved for replies still to come. A GET reserves a largest frame (about 1 MiB) until its
/// reply arrives, so 32 MiB lets a connection keep 31 GETs in flight that another shard or the
/// replicas answer, whatever their values: a client pipelining 16 or 24 is never paused
/// mid-batch (at 16 MiB the sixteenth GET of a batch waited, and the batch reached the client
/// in two halves, each a system call on both sides). The reservations are worst cases; the
/// bytes actually buffered count against the node limit, which bounds what many such
/// clients hold together. It is also the most unsent reply bytes a connection may hold.
pub const CONNECTION_BUFFER_BYTES_MAX_DEFAULT: usize = 32 * 1024 * 1024;

/// Default node-wide limit (`--node-buffer-mb`) on the bytes held in connection read and write
/// buffers. Past it read buffers do not grow beyond one chunk and the connections holding the
/// most unread replies are dropped, so a node with the defaults holds at most this plus one
/// chunk per connection and the per-connection reservations in transit.
pub const NODE_BUFFER_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;

/// Smallest `--connection-buffer-mb` and `--node-buffer-mb`, in bytes: a connection must be able
/// to reserve a largest reply (plus one more) or a GET of a large value could never be admitted.
pub const CONNECTION_BUFFER_BYTES_MIN: usize = 2 * (4 + FRAME_SIZE_MAX) + WRITE_BUFFER_HIGH_WATER;

/// Largest `--connection-buffer-mb` and `--node-buffer-mb`, in bytes (a typo guard).
pub const BUFFER_BYTES_LIMIT: usize = 1 << 40;

/// Bytes one shard reads from its connections in one event-loop turn; past it the connections
/// still readable are read next turn, after the next poll's events. Copying 500 MB that 1,000
/// clients uploaded at once in one turn stalled every other client of the shard for 0.6 s.
pub const READ_BYTES_PER_TURN_MAX: usize = 8 * 1024 * 1024;

/// Default `--frame-timeout-ms`: once its first byte arrived, a frame must arrive whole within
/// this, or the connection is dropped. A largest frame (1 MiB) takes 10 s only below about
/// 100 KiB/s; a client trickling bytes to hold buffers (slow loris) is cut off.
pub const FRAME_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Smallest and largest `--frame-timeout-ms`.
pub const FRAME_TIMEOUT_MS_MIN: u64 = 10;
/// Largest `--frame-timeout-ms`.
pub const FRAME_TIMEOUT_MS_MAX: u64 = 3_600_000;

/// Bytes a request whose reply carries no value (PUT, DELETE, peer operations) reserves for
/// it: a header, a version, or an error frame with its longest message.
pub const REPLY_RESERVE_SMALL_BYTES: usize = FRAME_HEADER_SIZE + 16 + ERROR_MESSAGE_SIZE_MAX;

/// A write buffer that is empty keeps at most this much capacity: a burst of large replies
/// must not leave megabytes allocated per connection.
pub const WRITE_BUFFER_IDLE_CAPACITY_MAX: usize = READ_CHUNK_SIZE;

/// Shard-wide scratch buffers (replies in transit between shards) that are empty at the end of
/// a turn keep at most this much capacity.
pub const SCRATCH_IDLE_CAPACITY_MAX: usize = 1024 * 1024;

/// Freed buffer bytes (per shard) after which the shard asks the allocator to return free
/// memory to the system (glibc keeps freed heap pages otherwise).
pub const TRIM_AFTER_FREED_BYTES: usize = 32 * 1024 * 1024;

/// Allocations from this size up are mapped on their own and unmapped when freed (glibc's
/// `M_MMAP_THRESHOLD`, fixed so that it does not rise after large frees). Above a largest read
/// buffer: unmapping costs a TLB shootdown per buffer (measured: closing 466 connections that
/// held 512 KiB each took 260 ms), while arena memory is freed cheaply and returned by the trim
/// threshold below and `malloc_trim`.
pub const MALLOC_MMAP_THRESHOLD_BYTES: usize = 4 * 1024 * 1024;

/// Free memory at the top of an allocator arena past this is returned to the system (glibc's
/// `M_TRIM_THRESHOLD`, fixed for the same reason).
pub const MALLOC_TRIM_THRESHOLD_BYTES: usize = 1024 * 1024;

const _: () = assert!(CONNECTION_BUFFER_BYTES_MAX_DEFAULT >= CONNECTION_BUFFER_BYTES_MIN);
const _: () = assert!(NODE_BUFFER_BYTES_MAX_DEFAULT >= CONNECTION_BUFFER_BYTES_MIN);
const _: () = assert!(FRAME_TIMEOUT_MS_MIN <= FRAME_TIMEOUT_MS_DEFAULT);
const _: () = assert!(READ_BYTES_PER_TURN_MAX >= READ_CHUNK_SIZE);
const _: () = assert!(MALLOC_MMAP_THRESHOLD_BYTES > READ_BUFFER_SIZE_MAX);
const _: () = assert!(FRAME_TIMEOUT_MS_DEFAULT <= FRAME_TIMEOUT_MS_MAX);

// ---- cluster ----

/// Most nodes in one cluster. Node ids are also bounded by `version::NODE_ID_MAX`; this bounds
/// the membership table, gossip frames and the ring.
pub const CLUSTER_NODES_MAX: usize = 64;

/// Most replicas of a key (`--replicas`).
pub const REPLICAS_MAX: usize = 7;

/// Peers a node sends its membership view to per gossip interval.
pub const GOSSIP_FANOUT: usize = 2;

/// Default gossip interval (`--gossip-interval-ms`).
pub const GOSSIP_INTERVAL_MS_DEFAULT: u64 = 200;

/// Smallest and largest `--gossip-interval-ms`.
pub const GOSSIP_INTERVAL_MS_MIN: u64 = 10;
/// Largest `--gossip-interval-ms`.
pub const GOSSIP_INTERVAL_MS_MAX: u64 = 60_000;

/// Default number of gossip intervals without heartbeat progress before a node is marked
/// failed (`--failure-threshold`).
pub const FAILURE_THRESHOLD_DEFAULT: u32 = 5;

/// Largest `--failure-threshold`.
pub const FAILURE_THRESHOLD_MAX: u32 = 1_000;

/// Default time a coordinator waits for replicas before answering TIMEOUT
/// (`--request-timeout-ms`).
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 2_000;

/// Largest `--request-timeout-ms`.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 600_000;

/// A read still short of answers this long after it started asks its spare replicas (those
/// its level did not need; at most half the request timeout). Far above a loaded node's
/// reply time, so spares are asked when a replica failed unnoticed, not when it is busy.
pub const READ_SPARE_AFTER_MS: u64 = 200;

/// Bytes appended to the active segment between two starts of its writeback
/// (`Vfs::start_writeback`; RocksDB's `bytes_per_sync` is the same idea): the sync that seals
/// a segment then waits for at most this much plus metadata, not for the whole segment.
pub const WRITEBACK_STEP_BYTES: u64 = 1024 * 1024;

/// A replica that refused a version-only READ (a node from before it, during a rolling
/// upgrade) is asked for whole records for this long before the coordinator tries again.
pub const VERSION_ONLY_RETRY_MS: u64 = 60_000;
/// Most replicas a coordinator remembers as refusing version-only READs (a cluster upgrading
/// has at most its nodes; beyond this, the oldest refusal is forgotten first).
pub const VERSION_ONLY_REFUSALS_MAX: usize = 64;

/// Default `--read-repair-every`: one read in this many asks every replica, so stale ones
/// are found and repaired by reads at a tenth of the read rate (Cassandra's
/// `read_repair_chance` defaulted to 0.1).
pub const READ_REPAIR_EVERY_DEFAULT: u32 = 10;

/// Client requests a shard holds while its ring lease is not confirmed (`cluster/node/lease.rs`);
/// more are refused UNAVAILABLE at once.
pub const RING_HELD_REQUESTS_MAX: usize = 4_096;

/// Key and value bytes those held requests may take in all.
pub const RING_HELD_BYTES_MAX: usize = 16 << 20;

/// Default time between anti-entropy rounds (`--anti-entropy-interval-ms`).
pub const ANTI_ENTROPY_INTERVAL_MS_DEFAULT: u64 = 60_000;

/// Replicated operations one shard's coordinator may track at once (waiting for acks, or
/// collecting late read replies for repair). Past it new requests get OVERLOADED.
pub const COORDINATOR_OPS_MAX: usize = 16_384;

/// Backpressure: past this many replicated operations in flight on a shard, its event loop
/// stops reading requests from client connections (peer connections are always read: pausing
/// them would slow down the very acknowledgements the backlog waits for)...
pub const COORDINATOR_OPS_HIGH_WATER: usize = COORDINATOR_OPS_MAX / 2;

/// ...and resumes once the backlog is below this.
pub const COORDINATOR_OPS_LOW_WATER: usize = COORDINATOR_OPS_MAX / 4;
const _: () = assert!(COORDINATOR_OPS_LOW_WATER < COORDINATOR_OPS_HIGH_WATER);
const _: () =
    assert!(COORDINATOR_OPS_HIGH_WATER + IN_FLIGHT_PER_CONNECTION_MAX < COORDINATOR_OPS_MAX);

/// Hints held for one target node, by count. On overflow the oldest hint is dropped (and
/// counted): anti-entropy repairs what hints lose.
pub const HINTS_PER_TARGET_MAX: usize = 100_000;

/// Hints held for one target node, by bytes of key and value.
pub const HINT_BYTES_PER_TARGET_MAX: usize = 64 * 1024 * 1024;

/// Hint deliveries in flight to one target at once (sent, not yet acknowledged).
pub const HINT_DELIVERY_WINDOW: usize = 64;

/// Hint logs are synced at most this often (when something was appended): hints are best
/// effort, and an fsync per write on the event loop would cost more than the hint is worth.
pub const HINT_SYNC_INTERVAL_MS: u64 = 100;

/// Longest cluster secret, in bytes (a bound on what an operator passes; it never travels).
pub const CLUSTER_SECRET_SIZE_MAX: usize = TOKEN_SIZE_MAX;

const _: () = assert!(CLUSTER_NODES_MAX <= crate::version::NODE_ID_MAX as usize);
// A gossip frame carries the whole view (48 bytes an entry): 64 keeps it near 3 KiB.
const _: () = assert!(CLUSTER_NODES_MAX <= 64);
const _: () = assert!(REPLICAS_MAX <= CLUSTER_NODES_MAX);
const _: () = assert!(GOSSIP_FANOUT >= 1);
const _: () = assert!(HINT_DELIVERY_WINDOW >= 1);

// ---- siblings mode (`--conflicts siblings`, src/causal/) ----

/// A write whose result would leave a key with more siblings than this is refused: siblings
/// pile up only while clients write without the context of their read, every read returns all
/// of them, and 32 unresolved concurrent writes is a client that does not resolve, not a
/// workload. (Riak warns at 25 siblings and refuses at 100.)
pub const SIBLINGS_MAX: usize = 32;

/// Siblings a replica accepts in a state it decodes or merges. Concurrent coordinators each
/// checked their own result against [`SIBLINGS_MAX`], but their merge holds the siblings of
/// all of them: four times the write limit leaves room for four coordinators that diverged at
/// once (a partition), while still bounding what a peer can make a replica hold.
pub const SIBLINGS_HARD_MAX: usize = 4 * SIBLINGS_MAX;

/// Keys with at least this many siblings are counted in STATS, so an operator sees the
/// clients that do not resolve before their writes start being refused.
pub const SIBLINGS_NEAR_LIMIT: usize = SIBLINGS_MAX * 3 / 4;

/// Most actors (nodes that coordinated a write of the key) in a causal context. A key's
/// vector gains an entry for every node that ever coordinated one of its writes and never
/// loses one, so it must at least hold a whole cluster at its largest.
pub const CONTEXT_ACTORS_MAX: usize = 64;

/// Largest encoded causal context: format (1), count (2), then 10 bytes an actor.
pub const CONTEXT_SIZE_MAX: usize = 3 + 10 * CONTEXT_ACTORS_MAX;

/// Largest encoded causal state (a key's siblings and vector) a replica accepts. The state is
/// stored and shipped where a value goes (a record, a replication frame), so it must fit
/// where a value fits.
pub const CAUSAL_STATE_BYTES_MAX: usize = VALUE_SIZE_MAX;

/// Largest encoded causal state a write may leave: a quarter of what a replica accepts, the
/// same headroom as [`SIBLINGS_HARD_MAX`] gives siblings, so the merge of the results of four
/// coordinators that wrote concurrently still fits. It is also the largest value a client can
/// write in siblings mode (less the state's own bytes).
pub const CAUSAL_STATE_WRITE_BYTES_MAX: usize = CAUSAL_STATE_BYTES_MAX / 4;

const _: () = assert!(SIBLINGS_NEAR_LIMIT >= 1 && SIBLINGS_NEAR_LIMIT < SIBLINGS_MAX);
const _: () = assert!(SIBLINGS_MAX < SIBLINGS_HARD_MAX);
// Counts travel as u16 in the state and context encodings.
const _: () = assert!(SIBLINGS_HARD_MAX <= u16::MAX as usize);
const _: () = assert!(CONTEXT_ACTORS_MAX <= u16::MAX as usize);
const _: () = assert!(CONTEXT_ACTORS_MAX >= CLUSTER_NODES_MAX);
const _: () = assert!(CAUSAL_STATE_BYTES_MAX <= VALUE_SIZE_MAX);
// A sibling's value length travels as a u32.
const _: () = assert!(CAUSAL_STATE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(
    CAUSAL_STATE_WRITE_BYTES_MAX * (SIBLINGS_HARD_MAX / SIBLINGS_MAX) <= CAUSAL_STATE_BYTES_MAX
);
const _: () = assert!(CONTEXT_SIZE_MAX < CAUSAL_STATE_WRITE_BYTES_MAX);

// ---- storage (log-structured store) ----

/// Default size at which the active segment is sealed and a new one started.
pub const SEGMENT_SIZE_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Largest allowed segment size: offsets in the keydir are u32.
pub const SEGMENT_SIZE_MAX_LIMIT: u64 = u32::MAX as u64;

/// Highest segment id a shard's store uses: ids are never reused, and the keydir keeps 31
/// bits of a record's segment id (the 32nd is its causal flag). At one id per 1 MiB segment
/// that is 2 PiB written per shard; past it writes and compaction are refused.
pub const SEGMENT_ID_MAX: u32 = (1 << 31) - 1;

/// Default: a sealed segment is worth compacting once this percentage of its bytes is dead.
pub const COMPACTION_DEAD_PERCENT_DEFAULT: u8 = 50;

/// Default: compaction starts only once the dead bytes of the candidate segments reach this
/// percentage of the segment size (`--compaction-min-dead-percent-of-segment`). Relative, so
/// that a small disk with small segments compacts too (a fixed 16 MiB never triggered on a
/// 24 MiB disk); 25 % of the default 64 MiB segment is the 16 MiB of earlier versions.
pub const COMPACTION_DEAD_MIN_PERCENT_OF_SEGMENT_DEFAULT: u8 = 25;

/// Default: compaction starts only once the dead bytes of the candidate segments reach this
/// (the percentage above, of the default segment size).
pub const COMPACTION_DEAD_BYTES_MIN_DEFAULT: u64 =
    SEGMENT_SIZE_MAX_DEFAULT * COMPACTION_DEAD_MIN_PERCENT_OF_SEGMENT_DEFAULT as u64 / 100;

/// Most input segments one compaction job takes (bounds its duration and its output).
pub const COMPACTION_INPUTS_MAX: usize = 8;

/// Records appended during one event-loop turn are buffered and reach the active segment in
/// one write at the end of the turn; a turn that appends more than this writes early (the
/// buffer's RAM is bounded, and a single larger record is written alone).
pub const APPEND_BUFFER_BYTES_MAX: usize = 256 * 1024;

/// Segment files mapped into memory at once by the whole process (every shard): the size of
/// the table the SIGBUS handler reads (storage/mmap.rs). A segment past it is read with pread.
/// At the default 64 MiB segments that is 256 GiB of data.
pub const MAPPED_FILES_MAX: usize = 4096;

/// Bytes read from a segment at a time when scanning it (recovery, compaction).
pub const SCAN_CHUNK_SIZE: usize = 256 * 1024;

/// The active segment's hint entries are written out in pieces of about this size (so the
/// hint costs no RAM).
pub const HINT_WRITE_CHUNK_SIZE: usize = 64 * 1024;

/// Corrupt records listed one by one in a recovery report (the rest are only counted).
pub const RECOVERY_REPORT_CORRUPT_LISTED_MAX: usize = 1000;

/// Entries per chunk of the keydir's dense entry array (chunks are never copied on growth).
pub const KEYDIR_CHUNK_ENTRIES: usize = 64 * 1024;

/// The keydir index grows when it would be fuller than this percentage.
pub const KEYDIR_LOAD_MAX_PERCENT: usize = 80;

/// The keydir index's new size when it grows, in percent of the old: half more keeps it at
/// least 53% full (80 / 1.5), 5 to 7.5 bytes of index a key. Each growth rehashes every key:
/// smaller steps (a quarter: 5 to 6.25 bytes) grew, and paused the shard, twice as often.
pub const KEYDIR_INDEX_GROWTH_PERCENT: usize = 150;

/// Free buffers a shard's coordinator keeps of each kind for reuse
/// (`cluster/coordinator/pool.rs`): a turn of pipelined load starts a few hundred operations.
pub const POOL_BUFFERS_MAX: usize = 2048;

/// Largest buffer (in bytes of capacity) the coordinator keeps for reuse: frames and values of
/// ordinary size; a large value's buffer goes back to the allocator. With
/// [`POOL_BUFFERS_MAX`] this bounds what a pool holds at 8 MiB.
pub const POOL_BUFFER_BYTES_MAX: usize = 4096;

/// Requests whose keys one prefetch pass covers (`storage/prefetch.rs`): enough to overlap
/// the misses of a pipelined batch, few enough that the lines it brings are still cached when
/// the requests are handled.
pub const PREFETCH_BATCH_MAX: usize = 32;

/// Index slots a prefetch pass looks at per key for a matching tag before giving up (a hint:
/// a key further from its home slot is simply not prefetched).
pub const PREFETCH_PROBES_MAX: usize = 4;

/// Bytes of a record a prefetch pass asks for: a large value is copied at memory speed
/// anyway, only its first lines are latency.
pub const PREFETCH_RECORD_BYTES_MAX: usize = 256;

/// The keydir's key arena is compacted when at least this many of its bytes are dead (and
/// more than half of it is).
pub const KEYDIR_ARENA_DEAD_MIN: usize = 1024 * 1024;

/// Records the background scrub verifies per store maintenance call (one per shard tick, 10
/// a second): 320 records/s per shard, a pass over 10M keys on 2 shards in about 4 hours.
pub const SCRUB_RECORDS_PER_STEP: usize = 32;

/// Damaged keys a store lists for the cluster between two ticks; more are still forgotten and
/// counted, and repaired by reads or the next full anti-entropy comparison.
pub const DAMAGED_KEYS_LISTED_MAX: usize = 4096;

/// Size of one chunk of the keydir's key arena: the most it holds unused is one chunk.
pub const KEYDIR_ARENA_CHUNK_SIZE: usize = 1024 * 1024;
const _: () = assert!(KEYDIR_ARENA_CHUNK_SIZE > KEY_SIZE_MAX);

/// Most keys (tombstones included) one shard's keydir holds: its u32 index slots keep 26
/// bits for the entry number. Writes of new keys past it are refused.
pub const KEYDIR_KEYS_MAX: usize = (1 << 26) - 2;

// ---- disk space (see storage/policy.rs) ----

/// Free space kept above the computed compaction reserve: covers the drift of the free-space
/// figure between two measurements (the store re-measures every
/// [`SPACE_MEASURE_INTERVAL_BYTES`] appended, and other shards write meanwhile) and the files
/// writes still grow while the store refuses them (the active segment's hint).
pub const SPACE_RESERVE_MARGIN_BYTES: u64 = 1024 * 1024;

/// Headers, hint headers and trailers and the manifest of one compaction job, on top of its
/// copies and their hint entries.
pub const COMPACTION_OUTPUT_OVERHEAD_BYTES: u64 = 64 * 1024;

/// The disk is under pressure while its free space is below this many times the reserve:
/// compaction then runs below its normal thresholds, so that writes are refused as rarely as
/// possible.
pub const SPACE_PRESSURE_RESERVE_MULTIPLE: u64 = 2;

/// Under pressure, a segment is compacted once at least this percentage of it is reclaimable:
/// below it the copy costs more disk traffic than it is worth.
pub const COMPACTION_PRESSURE_DEAD_PERCENT_MIN: u64 = 10;

/// The active segment is sealed (to be compacted) only once it holds this many reclaimable
/// bytes, under pressure as in normal operation: fewer would make many tiny segments under a
/// hot-key load (or with `--compaction-min-dead-percent-of-segment 0`).
pub const COMPACTION_SEAL_ACTIVE_BYTES_MIN: u64 = 64 * 1024;

/// The store re-measures the free space after this many bytes appended (and at every
/// maintenance call): a `statvfs` per write would cost more than the figure's drift.
pub const SPACE_MEASURE_INTERVAL_BYTES: u64 = 256 * 1024;

/// After a compaction job failed (disk full, I/O error), the next one waits this long: no
/// tight retry loop, yet a disk that had no room a moment ago (another shard was compacting)
/// is tried again soon.
pub const COMPACTION_RETRY_MS: u64 = 1_000;

/// Bytes of segments one maintenance call may scan, besides its record budget: with large
/// values, a record budget alone could copy gigabytes in one event-loop turn.
pub const COMPACTION_STEP_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Refused writes are logged at most once per this interval per shard (with the count since
/// the last line), so a client hammering a full disk cannot flood the log.
pub const WRITES_REFUSED_LOG_INTERVAL_MS: u64 = 10_000;

/// COMPACT requests one shard holds while their pass runs; more are answered OVERLOADED.
pub const COMPACT_PENDING_MAX: usize = 64;

/// A COMPACT request is answered after this long even if some shard's pass is still running
/// (the reply then says `complete 0`): an admin request must not hang for ever.
pub const COMPACT_REPLY_WAIT_MS_MAX: u64 = 60_000;

/// Period of a shard's maintenance tick (`ShardCore::on_tick`: store maintenance, STATS of
/// the store), in `kvd` and in the simulator alike.
pub const MAINTENANCE_TICK_MS: u64 = 100;

/// While the store is under disk pressure with compaction work left, the shard's maintenance
/// tick comes this often instead of every [`MAINTENANCE_TICK_MS`].
pub const MAINTENANCE_URGENT_TICK_MS: u64 = 10;

/// While the store has maintenance work left (no disk pressure), the shard's maintenance tick
/// comes this often, each with its share of the budget of a [`MAINTENANCE_TICK_MS`]
/// (`shard/maintenance.rs`, `Pace`): shorter stalls of the event loop, the same rate.
pub const MAINTENANCE_BUSY_TICK_MS: u64 = 10;
const _: () = assert!(MAINTENANCE_BUSY_TICK_MS <= MAINTENANCE_TICK_MS);

const _: () = assert!(SPACE_PRESSURE_RESERVE_MULTIPLE >= 2);
const _: () = assert!(COMPACTION_PRESSURE_DEAD_PERCENT_MIN > 0);
const _: () = assert!(SPACE_MEASURE_INTERVAL_BYTES < SPACE_RESERVE_MARGIN_BYTES);

const _: () = assert!(SEGMENT_SIZE_MAX_DEFAULT <= SEGMENT_SIZE_MAX_LIMIT);
const _: () = assert!(KEYDIR_LOAD_MAX_PERCENT < 100);
const _: () = assert!(KEYDIR_INDEX_GROWTH_PERCENT > 100);

// ---- anti-entropy ----

/// Default tombstone window (`--tombstone-window-ms`): a replica failed for longer than this
/// no longer holds back tombstone collection, and a node whose newest record (or tick gap) is
/// older than this rejoins through a full anti-entropy round before serving reads.
pub const TOMBSTONE_WINDOW_MS_DEFAULT: u64 = 3_600_000;

/// Smallest `--tombstone-window-ms`: well above any failure-detection time.
pub const TOMBSTONE_WINDOW_MS_MIN: u64 = 100;

/// Exchanges one core runs at once (each has one request outstanding).
pub const AE_EXCHANGES_IN_FLIGHT_MAX: usize = 16;

/// Soft bound on the key lists or records of one anti-entropy message, in bytes. One record
/// always goes even if larger (a record fits a frame on its own).
pub const AE_MESSAGE_BYTES_MAX: usize = 256 * 1024;

/// Records moved (pulled, pushed) per round by one core; past it the round stops early
/// (and is not full: it cannot advance the tombstone horizon).
pub const AE_ROUND_KEYS_MAX: u64 = 200_000;

/// Bytes of records moved per round by one core.
pub const AE_ROUND_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Requests one exchange may make before it is abandoned (a loop bound; a normal exchange
/// needs 3 tree steps plus one per message of key lists or pushes).
pub const AE_EXCHANGE_STEPS_MAX: u32 = 10_000;

/// Tree segments visited per tick when sweeping collectable entries out of the trees below the
/// horizon (CPU per tick; an empty segment costs a few nanoseconds).
pub const AE_SWEEP_SEGMENTS_PER_TICK: usize = 65_536;

/// Tree entries (at most, roughly) examined per tick by the sweep.
pub const AE_SWEEP_ENTRIES_PER_TICK: usize = 16_384;

/// Keys listed per step when trees are built from the store in one go (siblings mode at
/// start, partitions a live core takes over).
pub const AE_BUILD_KEYS_PER_STEP: usize = 65_536;

/// A core builds its trees for anti-entropy in the background over about this many cluster
/// ticks (5 s at the shard's 5 ms tick), listing `keys / AE_TREE_BUILD_TICKS` keys a tick
/// within the bounds below: small steps keep the event loop's stalls short (a step of 1,024
/// keys is about 0.3 ms; a whole build about 0.3 µs a key of CPU).
pub const AE_TREE_BUILD_TICKS: usize = 1_000;
/// Fewest keys a tree build lists per tick.
pub const AE_TREE_BUILD_KEYS_PER_TICK_MIN: usize = 1_024;
/// Most keys a tree build lists per tick (past 8M keys a build takes longer than
/// [`AE_TREE_BUILD_TICKS`]).
pub const AE_TREE_BUILD_KEYS_PER_TICK_MAX: usize = 8_192;

/// Times a background tree build starts over because the store moved keys under its cursor
/// (a removal) before it lists the rest in one step: a store removing keys all the time
/// cannot keep a build from ending.
pub const AE_TREE_BUILD_RESTARTS_MAX: u32 = 3;

/// A core may drop its trees after this long without anti-entropy work (no round, exchange,
/// copy or request served), once their upkeep since has cost about a build: from then on
/// writes skip it, and the next round or request builds them again. Longer than the gap
/// between two requests of one exchange.
pub const AE_TREES_IDLE_MS: u64 = 2_000;

/// What building a core's trees costs, in writes' tree upkeep per key of the store: the
/// listing notes each key once, and writes during the build window (about
/// [`AE_TREE_BUILD_TICKS`] ticks) pay the upkeep as well — measured, a build under load
/// costs about what twice as many writes' upkeep do. Idle trees are dropped once the upkeep
/// since their last use reaches this many writes per key (rent-or-buy), so a core whose
/// rounds come often keeps them.
pub const AE_TREE_BUILD_COST_PER_KEY: u64 = 2;

/// Idle trees whose upkeep since their last use is under this many writes (about 20 ms of
/// CPU) are kept whatever the store's size: dropping them saves nothing worth a build.
pub const AE_TREES_DROP_NOTES_MIN: u64 = 65_536;

/// Dropped partition trees freed per tick: one holds about 4,000 keys' lists at 1M keys
/// (0.1 ms to free), all 256 at once stall the event loop for ~25 ms.
pub const AE_TREES_FREED_PER_TICK: usize = 4;

/// An initiator whose peer answered OVERLOADED (its trees are being built) asks again after
/// this long.
pub const AE_BUSY_RETRY_MS: u64 = 20;

/// How long an exchange may keep waiting for a peer's trees to be built before it fails
/// (a build of 8M keys takes about 5 s; 40M, 25 s).
pub const AE_BUSY_WAIT_MS_MAX: u64 = 60_000;

const _: () = assert!(AE_MESSAGE_BYTES_MAX + 64 * 1024 < FRAME_SIZE_MAX);
const _: () = assert!(AE_EXCHANGES_IN_FLIGHT_MAX >= 1);

// ---------------------------------------------------------------------------------------------
// Authentication: failed handshakes (src/auth.rs) and the peer links' answer to a refusal.

/// Failed handshakes (wrong client token, wrong cluster secret) one source may make before it
/// is slowed down: a typo, or a node restarted with an old secret, costs nothing.
pub const HANDSHAKE_FAILURES_FREE: u32 = 5;

/// The pause after the first failure past the free ones; each further failure doubles it.
pub const HANDSHAKE_PENALTY_MS_MIN: u64 = 100;

/// The longest pause: past it a source gets one examined guess per this long (2,880 a day),
/// while an operator who fixed a typo waits at most this long.
pub const HANDSHAKE_PENALTY_MS_MAX: u64 = 30_000;

/// A source with no failure for this long starts over with its free failures.
pub const HANDSHAKE_FAILURE_MEMORY_MS: u64 = 600_000;

/// Sources the node-wide throttle remembers (about 64 bytes each); past it the one quiet
/// longest is forgotten, so a flood of addresses costs bounded memory.
pub const HANDSHAKE_THROTTLE_ENTRIES_MAX: usize = 4096;

/// Bytes below which a cluster secret draws a warning at start: whoever records a handshake
/// can test guesses of the secret against it offline, so it must not be guessable.
pub const CLUSTER_SECRET_SIZE_ADVISED: usize = 16;

/// How long an outbound peer link whose handshake was refused (or whose peer failed to prove
/// the secret) waits before trying again: a wrong secret does not fix itself, and retrying at
/// the reconnect pace would only feed the peer's throttle and logs.
pub const PEER_AUTH_RETRY_MS: u64 = 5_000;

const _: () = assert!(HANDSHAKE_PENALTY_MS_MIN >= 1);
const _: () = assert!(HANDSHAKE_PENALTY_MS_MIN <= HANDSHAKE_PENALTY_MS_MAX);
const _: () = assert!(HANDSHAKE_PENALTY_MS_MAX < HANDSHAKE_FAILURE_MEMORY_MS);
const _: () = assert!(HANDSHAKE_THROTTLE_ENTRIES_MAX >= 1);
const _: () = assert!(CLUSTER_SECRET_SIZE_ADVISED <= CLUSTER_SECRET_SIZE_MAX);

// --- Shutdown (protocol.md § 6) ---

/// How long a stopping shard keeps writing what its client connections are owed (their
/// replies, then the SHUTTING_DOWN frame) before it closes them anyway: a client that does
/// not read must not hold up the stop, and a reading one takes far less.
pub const SHUTDOWN_FLUSH_MS_MAX: u64 = 500;

const _: () = assert!(SHUTDOWN_FLUSH_MS_MAX <= 5_000);
// ---- Clocks (issue 10): measured offsets, the max-offset rule, re-issued writes ----

/// Default of `--max-clock-offset-ms`: a node whose clock is further than this from the
/// cluster's (the median of the offsets it measures to its peers, itself counted as 0)
/// refuses to coordinate writes (CLOCK_OFFSET); a replica refuses versions whose physical
/// time is further than this ahead of the cluster's clock (its own, corrected by its measured
/// offset); and a version seen from a peer moves the
/// local hybrid clock forward only if it is at most this far ahead. NTP keeps real clocks
/// within milliseconds of each other, so half a second only trips on a broken clock, while it
/// still bounds how far one bad clock can shorten or stretch a TTL.
pub const MAX_CLOCK_OFFSET_MS_DEFAULT: u64 = 500;

/// Smallest `--max-clock-offset-ms`: below a few ms, measurement noise (half a round trip)
/// would make healthy nodes refuse writes.
pub const MAX_CLOCK_OFFSET_MS_MIN: u64 = 10;

/// Largest `--max-clock-offset-ms`: an hour. Beyond it the rule protects nothing (and the
/// HLC could be dragged that far ahead by one bad clock).
pub const MAX_CLOCK_OFFSET_MS_MAX: u64 = 3_600_000;

/// A gossip round trip longer than this does not give a clock sample: the offset is known
/// only to within half the round trip, and a slow answer (a paused peer, a stalled loop)
/// would pass its delay off as clock offset.
pub const CLOCK_SAMPLE_RTT_MS_MAX: u64 = 1_000;

/// How many times a coordinator issues a write again above a newer version a replica reports.
/// One is enough unless other writes to the same key keep racing it; on the last attempt a
/// newer version counts as a concurrent write's acknowledgement once the attempts cover a read
/// quorum (src/cluster/coordinator/mod.rs), so the bound ends such a race, acknowledged.
pub const WRITE_REISSUES_MAX: u32 = 8;

/// The "clock too far from the cluster" warning is logged at most this often.
pub const CLOCK_WARN_INTERVAL_MS: u64 = 10_000;

const _: () = assert!(MAX_CLOCK_OFFSET_MS_MIN <= MAX_CLOCK_OFFSET_MS_DEFAULT);
const _: () = assert!(MAX_CLOCK_OFFSET_MS_DEFAULT <= MAX_CLOCK_OFFSET_MS_MAX);
const _: () = assert!(WRITE_REISSUES_MAX >= 1);
