//! Joins and replacements in the simulation (issue 12): a fault schedule's JOIN or REPLACE
//! event starts a brand-new node as `kvd --join SEED [--replace OLD]` starts one, through the
//! same code (`ClusterConfig::apply_join`, `assemble_node` with a join request), on a fresh
//! disk, under a spare id.
//!
//! ```text
//!  membership event ── JOIN / REPLACE old ──▶ spare id `new` (Params::spares)
//!     seed = a random running member
//!     RING (the client request kvd --join sends) to a shard of the seed ──▶ ring map
//!     config = the cluster's tunables, this node alone + the map (ClusterConfig::apply_join)
//!     start `new` with ChangeRequest::Join { new } | Replace { old, new }: its membership
//!       core asks the leader (RING_CHANGE) until the ring lists it; the leader refuses while
//!       a change runs (busy), before it sees `old` failed, or without a majority: it asks on
//!     goal Join(new) / Replace { old, new }: met once the ring lists `new`
//! ```
//!
//! A replacement takes a crashed member (or, when none is down, a running member the
//! operator stops first), which then stays down for good (its disk is gone: a loss event for
//! the checkers), as a removal does, and only on a settled ring with a majority of the
//! members left alive (see `elastic.rs`): the leader refuses it until it sees the old node
//! failed, and the new node asks again. A node that joined is a node like
//! the others from then on: clients send it requests, faults crash, pause and partition it,
//! later events may make it leave or replace it, and the checkers (flip, ring, placement,
//! moved-bytes, and the safety checkers of `check.rs`) count it. A restart runs it with the
//! same configuration and request again, as `kvd` restarted with the same command line
//! (the leader answers a request it already granted with "already a member").
//!
//! A seed holds [`super::options::SPARES_MAX`] spare ids at most, so each run joins or
//! replaces at most that many nodes.

use super::elastic::Goal;
use super::node::admin_conn;
use super::trace::trace;
use super::world::World;
use crate::cluster::ringpeer::ChangeRequest;
use crate::cluster::NodeAddr;
use crate::protocol::ringmap::RingMap;
use crate::protocol::{frame, Request, Response, Status};
use crate::shard::Session;
use std::net::SocketAddr;

/// The port of node `id`'s simulated address (`127.0.0.1:BASE+id`, as the first members'
/// addresses in the world's configuration).
const PORT_BASE: u16 = 7000;

/// Node `id`'s address (in the ring's member list; the simulated network routes by id).
pub(super) fn addr_of(id: u32) -> SocketAddr {
    let port = PORT_BASE + u16::try_from(id).expect("simulated ids are small");
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl World {
    /// A JOIN event (`old` = `None`) or a REPLACE of dead member `old`: start the next spare
    /// id as a new node through a random running member (module doc). Nothing happens when
    /// no member runs or the seed's answer is not a ring map (an operator tries later).
    pub(super) fn join_event(&mut self, old: Option<u32>) {
        let new = self.born() + 1;
        assert!(new <= self.p.nodes + self.p.spares, "a spare id is left");
        let seeds: Vec<u32> = (1..=self.born())
            .filter(|&id| self.runnable(id) && !self.elastic.departed.contains(&id))
            .filter(|&id| Some(id) != old)
            .collect();
        if seeds.is_empty() {
            return;
        }
        let seed = seeds[self.rng.below(seeds.len() as u64) as usize];
        let map = match self.fetch_ring_map(seed) {
            Ok(map) => map,
            Err(why) => {
                trace!(self.trace, "n{new} cannot join through n{seed}: {why}");
                return;
            }
        };
        // As kvd's `cluster_config` builds it for --join: the cluster's tunables (the
        // simulated nodes all share them), this node alone, then the seed's map.
        let mut config = self.config.clone();
        config.node_id = new;
        config.nodes = vec![NodeAddr {
            id: new,
            addr: addr_of(new),
        }];
        config.replicas = 1;
        config.initial_ring = None;
        if let Err(e) = config
            .apply_join(&map, addr_of(seed))
            .and_then(|()| config.validate())
        {
            // The simulator built the request wrongly: not the cluster's fault.
            panic!("n{new} cannot join with the map of n{seed}: {e}");
        }
        let addr = addr_of(new).to_string();
        let (request, goal) = match old {
            None => {
                self.elastic.joins += 1;
                trace!(
                    self.trace,
                    "n{new} JOIN through n{seed} (its ring map: version {}, nodes {:?})",
                    map.version(),
                    map.ownership.nodes()
                );
                (ChangeRequest::Join { node: new, addr }, Goal::Join(new))
            }
            Some(old) => {
                if self.node(old).up.is_some() {
                    // The operator stops it for good before replacing it.
                    trace!(self.trace, "n{old} is stopped for good, to be replaced");
                    self.crash(old);
                }
                // Its disk is gone for good: whatever only it held is lost.
                self.node_mut(old).gone = true;
                self.hist.loss(old, self.now);
                self.elastic.departed.insert(old);
                self.elastic.replaces += 1;
                trace!(
                    self.trace,
                    "n{old} is gone for good: n{new} REPLACE {old} through n{seed} (its ring \
                     map: version {}, nodes {:?})",
                    map.version(),
                    map.ownership.nodes()
                );
                (
                    ChangeRequest::Replace { old, new, addr },
                    Goal::Replace { old, new },
                )
            }
        };
        self.elastic.joined += 1;
        let n = self.node_mut(new);
        n.spare = false;
        n.cluster = Some(config);
        n.join = Some(request);
        self.note_offset(new);
        self.start_node(new);
        self.first_ticks(new, self.now);
        self.add_goal(goal);
    }

    /// The cluster's ring map, asked of node `seed` with a RING request on a client
    /// connection of its own (what `kvd --join` asks its seed), answered in the same step.
    fn fetch_ring_map(&mut self, seed: u32) -> Result<RingMap, String> {
        let shard = self.rng.below(self.node(seed).shards as u64) as usize;
        self.elastic.sent += 1;
        let n = self.elastic.sent;
        let mut bytes = Vec::new();
        Request::Ring.encode(n as u32, &mut bytes);
        let (f, _) = frame::parse(&bytes)
            .expect("an encoded request is a frame")
            .expect("and a whole one");
        let now_ms = self.node_now(seed);
        let mut session = Session::default();
        let mut wbuf = Vec::new();
        let _ = self.running(seed).cores[shard].on_frame(
            now_ms,
            admin_conn(n),
            &mut session,
            f,
            &mut wbuf,
        );
        self.finish(seed, shard);
        let (f, _) = frame::parse(&wbuf)
            .map_err(|e| format!("not a frame: {e:?}"))?
            .ok_or("no answer in the same step")?;
        let r = Response::from_frame(&f).ok_or("not a response")?;
        if r.status() != Some(Status::Ok) {
            return Err(format!("{:?}: {}", r.status(), r.message()));
        }
        RingMap::decode(r.body).map_err(|e| e.to_string())
    }
}
