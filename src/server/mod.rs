//! The only place with mio and sockets: one event-loop thread per shard, each with its own
//! `SO_REUSEPORT` listener on the node's one port, its connections and its mailbox.
//!
//! [`run`] binds every listener before starting any thread (so a bad address fails at once
//! with a clear message) and steers connections to shards by source port ([`steering`]),
//! raises the open-file limit, derives the connection cap, starts the shard threads and waits
//! for them; SIGINT/SIGTERM make every loop sync its store and stop.

mod conn;
pub mod mailbox;
pub mod peers;
pub mod readbuf;
pub mod slowlog;
pub mod steering;
pub mod system;
pub mod worker;

use crate::assembly::{assemble_node, NodeConfig, ShardParts};
use crate::limits::{FD_RESERVE, SHARDS_MAX};
use crate::shard::{NodeShared, SyncPolicy};
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
    /// Token that allows the admin opcodes (`--admin-token`), if any.
    pub admin_token: Option<Vec<u8>>,
    /// The cluster this node belongs to (`--nodes`); `None` runs a single node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Limits of the memory budget of connection buffers.
    pub memory: crate::budget::MemoryLimits,
    /// What the node asks the leader until the ring lists it (`--join`, `--replace`).
    pub join: Option<crate::cluster::ringpeer::ChangeRequest>,
    /// Byte rate of partition copies (`--stream-mb-per-s`), 0 = unlimited.
    pub stream_bytes_per_s: u64,
    /// Partition copies at once (`--transfer-limit`).
    pub transfer_limit: usize,
    /// Where to serve Prometheus metrics (`--metrics-listen`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where SNAPSHOT keeps snapshots (the data directory's), if anywhere.
    pub snapshot_root: Option<std::path::PathBuf>,
    /// Requests slower than this are logged (`--slow-ms`; 0: never).
    pub slow_ms: u64,
}

impl ServerConfig {
    /// The node these options describe, for [`assemble_node`].
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            node_id: self.node_id,
            shards: self.shards,
            sync: self.sync,
            client_token: self.client_token.clone(),
            admin_token: self.admin_token.clone(),
            cluster: self.cluster.clone(),
            join: self.join.clone(),
            stream_bytes_per_s: self.stream_bytes_per_s,
            transfer_limit: self.transfer_limit,
        }
    }
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
/// Each one listens before the next is bound, so the reuseport group holds them in shard
/// order, which is the order the steering program indexes ([`steering`]): with more than one
/// shard, a connection from source port P then lands on shard (P div 2) mod `shards`. If the
/// program cannot be attached, the kernel's hash spreads connections as before (requests are
/// still forwarded to their owner); that is logged, not fatal.
pub fn bind_listeners(addr: SocketAddr, shards: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reuseport(addr)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..shards {
        all.push(bind_reuseport(actual)?);
    }
    if shards > 1 {
        match steering::attach(&all[0], shards) {
            Ok(()) => {
                log::info!("connections steered by source port: shard = (port div 2) mod {shards}")
            }
            Err(e) => log::warn!(
                "cannot steer connections by source port ({e}); \
                 the kernel spreads them and requests are forwarded"
            ),
        }
    }
    Ok(all)
}

/// The connection cap that fits the open-file limit.
pub fn effective_connection_cap(asked: usize, fd_limit: u64) -> usize {
    let fit = (fd_limit as usize).saturating_sub(FD_RESERVE).max(1);
    asked.min(fit)
}

/// Run a node until SIGINT/SIGTERM, from one [`ShardParts`] per shard (see
/// [`crate::assembly::open_shard`]).
pub fn run(cfg: ServerConfig, parts: Vec<ShardParts>, started_at_ms: u64) -> io::Result<()> {
    assert!(cfg.shards >= 1 && cfg.shards <= SHARDS_MAX);
    assert_eq!(parts.len(), cfg.shards);
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

    let mut shared = NodeShared::new(cfg.node_id, cfg.shards, started_at_ms, conn_cap)
        .with_memory_limits(cfg.memory);
    if let Some(root) = &cfg.snapshot_root {
        shared = shared.with_snapshot_root(root.clone());
    }
    let shared = Arc::new(shared);
    if let Some(addr) = cfg.metrics_listen {
        let bound = crate::http::spawn(
            addr,
            local,
            cfg.client_token.is_some(),
            shared.clone(),
            worker::wall_ms,
        )?;
        log::info!("HTTP at http://{bound}: /metrics and /kv/KEY");
    }
    let mut polls = Vec::with_capacity(cfg.shards);
    let mut boxes = Vec::with_capacity(cfg.shards);
    for _ in 0..cfg.shards {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        boxes.push(Arc::new(Mailbox::new(waker)));
        polls.push(poll);
    }
    let mailboxes = Arc::new(boxes);

    let cores = assemble_node(&cfg.node_config(), shared.clone(), parts, started_at_ms);
    let mut threads = Vec::with_capacity(cfg.shards);
    for (shard, ((poll, listener), core)) in polls.into_iter().zip(listeners).zip(cores).enumerate()
    {
        let worker = Worker::new(WorkerParts {
            shard,
            poll,
            listener,
            core,
            mailboxes: mailboxes.clone(),
            shared: shared.clone(),
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            slow_ms: cfg.slow_ms,
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
