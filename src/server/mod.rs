//! The only place with mio and sockets: one event-loop thread per shard, each with its own
//! `SO_REUSEPORT` listener on the node's one port, its connections and its mailbox.
//!
//! [`run`] binds every listener before starting any thread (so a bad address fails at once
//! with a clear message), raises the open-file limit, derives the connection cap, starts the
//! shard threads and waits for them; SIGINT/SIGTERM make every loop sync its store and stop.

pub mod mailbox;
pub mod peers;
pub mod readbuf;
pub mod system;
pub mod worker;

use crate::datadir::ClockCeiling;
use crate::limits::{FD_RESERVE, SHARDS_MAX};
use crate::shard::{NodeShared, ShardConfig, ShardCore, SyncPolicy};
use crate::storage::Store;
use mailbox::Mailbox;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use worker::{Worker, WorkerParts, WAKER};

/// Pending-connection queue length asked of the kernel per listener.
const LISTEN_BACKLOG: i32 = 1024;

/// Everything `run` needs to know.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (one port for clients and peers).
    pub listen: SocketAddr,
    /// Number of shards (threads).
    pub shards: usize,
    /// Connection cap asked for (may be lowered to fit the open-file limit).
    pub connections_max: usize,
    /// Idle connections are closed after this long.
    pub idle_timeout_ms: u64,
    /// This node's id.
    pub node_id: u32,
    /// When writes are acknowledged.
    pub sync: SyncPolicy,
    /// Token clients must present, if any.
    pub client_token: Option<Vec<u8>>,
    /// The cluster this node belongs to (`--nodes`); `None` runs a single node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Limits of the memory budget of connection buffers.
    pub memory: crate::budget::MemoryLimits,
}

/// Bind one listener with SO_REUSEPORT.
fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Bind the shard listeners: the first decides the port (it may be 0), the others join it.
pub fn bind_listeners(addr: SocketAddr, shards: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reuseport(addr)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..shards {
        all.push(bind_reuseport(actual)?);
    }
    Ok(all)
}

/// The connection cap that fits the open-file limit.
pub fn effective_connection_cap(asked: usize, fd_limit: u64) -> usize {
    let fit = (fd_limit as usize).saturating_sub(FD_RESERVE).max(1);
    asked.min(fit)
}

/// Open shard `shard`'s durable hint queue in `dir`.
fn open_hints(
    c: &crate::cluster::ClusterConfig,
    dir: &std::path::Path,
    shard: usize,
) -> io::Result<crate::cluster::hints::HintQueue> {
    use crate::cluster::hintfile::FileHintLog;
    use crate::cluster::hints::HintQueue;
    let err = |e: crate::cluster::hints::HintLogError| io::Error::other(e.to_string());
    let log = FileHintLog::open(crate::storage::vfs::RealVfs, dir, shard).map_err(err)?;
    let q = HintQueue::open(Box::new(log), ShardCore::hint_resend_ms(c)).map_err(err)?;
    let s = q.stats();
    if s.pending > 0 {
        log::info!(
            "shard {shard}: {} hints recovered from {}",
            s.pending,
            dir.display()
        );
    }
    Ok(q)
}

/// Run a node until SIGINT/SIGTERM. `stores` holds one store per shard, `clocks` each shard's
/// durable clock ceiling.
pub fn run(
    cfg: ServerConfig,
    stores: Vec<Box<dyn Store>>,
    clocks: Vec<ClockCeiling>,
    started_at_ms: u64,
) -> io::Result<()> {
    assert!(cfg.shards >= 1 && cfg.shards <= SHARDS_MAX);
    assert_eq!(stores.len(), cfg.shards);
    assert_eq!(clocks.len(), cfg.shards);
    system::install_signal_handlers();
    system::tune_allocator();
    let fd_limit = system::raise_fd_limit();
    let conn_cap = effective_connection_cap(cfg.connections_max, fd_limit);
    if conn_cap < cfg.connections_max {
        log::warn!(
            "open-file limit {fd_limit} allows only {conn_cap} connections (asked {})",
            cfg.connections_max
        );
    }
    let listeners = bind_listeners(cfg.listen, cfg.shards)?;
    let local = listeners[0].local_addr()?;
    log::info!(
        "node {} listening on {local} with {} shards; connection limit {conn_cap} (open-file limit {fd_limit}); sync {:?}",
        cfg.node_id,
        cfg.shards,
        cfg.sync
    );

    let shared = Arc::new(
        NodeShared::new(cfg.node_id, cfg.shards, started_at_ms, conn_cap)
            .with_memory_limits(cfg.memory),
    );
    let mut polls = Vec::with_capacity(cfg.shards);
    let mut boxes = Vec::with_capacity(cfg.shards);
    for _ in 0..cfg.shards {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        boxes.push(Arc::new(Mailbox::new(waker)));
        polls.push(poll);
    }
    let mailboxes = Arc::new(boxes);

    let mut threads = Vec::with_capacity(cfg.shards);
    for (shard, (((poll, listener), store), clock)) in polls
        .into_iter()
        .zip(listeners)
        .zip(stores)
        .zip(clocks)
        .enumerate()
    {
        let core = ShardCore::new(
            ShardConfig {
                shard,
                shards: cfg.shards,
                sync: cfg.sync,
                client_token: cfg.client_token.clone(),
            },
            shared.clone(),
            store,
        );
        let core = match &cfg.cluster {
            Some(c) => {
                let hints = match &c.hint_dir {
                    Some(dir) => Some(open_hints(c, dir, shard)?),
                    None => None,
                };
                core.with_cluster(c.clone(), started_at_ms, hints)
            }
            None => {
                // A single node has no replica that could later deliver an older write, so
                // compaction may drop any tombstone that no longer shadows an older record on
                // this node's own disk (the store checks that part itself).
                let mut core = core;
                core.store_mut()
                    .set_tombstone_horizon(crate::version::Version(u64::MAX));
                core
            }
        };
        // Versions issued before a restart may live only on other nodes (keys this shard
        // coordinated but does not hold): start above the durable ceiling as well.
        let mut core = core;
        core.clock_mut().recover_above_ms(clock.ceiling_ms());
        let worker = Worker::new(WorkerParts {
            shard,
            poll,
            listener,
            core,
            clock,
            mailboxes: mailboxes.clone(),
            shared: shared.clone(),
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            sync: cfg.sync,
        })?;
        let t = std::thread::Builder::new()
            .name(format!("shard-{shard}"))
            .spawn(move || {
                let r = worker.run();
                if r.is_err() {
                    // One shard down means the node is down: stop the others too.
                    system::request_shutdown();
                }
                r
            })?;
        threads.push(t);
    }
    let mut result = Ok(());
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log::error!("shard loop failed: {e}");
                system::request_shutdown();
                result = Err(e);
            }
            Err(_) => {
                system::request_shutdown();
                result = Err(io::Error::other("a shard thread panicked"));
            }
        }
    }
    log::info!("node {} stopped", cfg.node_id);
    result
}
