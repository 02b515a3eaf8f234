//! Membership: gossip heartbeats, the failure detector, incarnations and the leader.
//!
//! Every node keeps a table of the members it knows: per node its address, an *incarnation*
//! and a *heartbeat* counter, the ring version it holds, and the local time at which the pair
//! last advanced. Every gossip
//! interval a node bumps its own heartbeat and sends its whole view to [`GOSSIP_FANOUT`] other
//! nodes chosen with the seeded PRNG (push); the receiver merges it and answers with its own
//! view (pull), which the sender merges too.
//!
//! * **Members.** The table starts with the configured nodes (`--nodes`, or the seed's map
//!   and this node for `--join`) and grows by gossip: an entry of an unknown id that carries
//!   an address adds that node (alive, progress now), so a node that joins through one
//!   member becomes known to all within a few rounds. It holds at most [`CLUSTER_NODES_MAX`]
//!   members (entries past it are ignored and counted). [`Membership::forget`] drops a node
//!   for good (a removed node): gossip never brings it back.
//! * **Merge.** For each entry, the pair `(incarnation, heartbeat)` is compared
//!   lexicographically: a higher incarnation wins, then a higher heartbeat. Anything that
//!   advances the pair counts as progress for that node, whoever relayed it. A node's address
//!   follows what the node says of itself (a node restarted on another port is reached
//!   there), except a configured one, which the operator's list fixes.
//!   Ring versions merge as the maximum heard: each node sends its own in its entry
//!   ([`Membership::set_ring_version`]), so every node learns which ring versions the others
//!   hold.
//! * **Failure.** A node whose pair has not advanced for `failure_threshold × gossip_interval`
//!   of local time is marked *failed* by this node. Each node judges failure locally from
//!   heartbeat progress; the state field in gossip entries is informational (CLUSTER output),
//!   so one node's stale opinion never fails a healthy node elsewhere.
//! * **Start.** A starting node counts every other node alive until the failure timeout,
//!   except that the first news of a node relayed as *failed* by a peer is taken as is (old
//!   news is not progress), so a restarted node does not elect a dead leader.
//! * **Recovery.** Any later progress marks the node alive again. A restarted node comes back
//!   with a higher incarnation: the incarnation is the node's start time in ms since the Unix
//!   epoch, passed in by the driver, so nothing needs to be persisted (a restart happens at a
//!   later millisecond). If the wall clock stepped back across a restart and a peer still
//!   holds a higher incarnation for us, we take that incarnation + 1 when we hear of it.
//! * **Leader.** The lowest-id node alive in the local view (this node counts itself alive).
//!   Once views converge every node names the same leader; when it fails, the next lowest id
//!   takes over as soon as the failure is detected, i.e. within about the failure timeout.
//!
//! * **Clocks.** Pushes and pull replies carry clock stamps; the pusher turns each reply into
//!   a sample of the replier's clock offset ([`super::clock`]), and [`Membership::cluster_clock`]
//!   says how far this node's clock is from the cluster's (its live peers' median). A member
//!   added by gossip counts among the live peers once measured (a push goes to it at once),
//!   so a node joining does not make the others refuse writes until they measure it.
//!
//! State changes come out as [`MemberEvent`]s (for logs, hint delivery and leader chores);
//! frames to send come out of [`Membership::poll_transmit`].

use super::clock::{ClockOffsets, ClusterClock, Sample};
use super::config::ClusterConfig;
use super::peer::{self, ClockStamp, GossipEntry, NodeState};
use super::rng::SplitMix64;
use crate::limits::{CLUSTER_NODES_MAX, GOSSIP_FANOUT};
use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;

/// A change in the membership view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// `node`'s heartbeat stood still for the failure timeout.
    Failed {
        /// The node.
        node: u32,
    },
    /// `node`, marked failed before, made progress again (or restarted: higher incarnation).
    Recovered {
        /// The node.
        node: u32,
        /// Its incarnation now.
        incarnation: u64,
    },
    /// `node` restarted (its incarnation rose) while this node still thought it alive.
    Restarted {
        /// The node.
        node: u32,
        /// Its new incarnation.
        incarnation: u64,
    },
    /// `node` was heard of for the first time (a gossip entry with its address) and added.
    Added {
        /// The node.
        node: u32,
    },
    /// The leader changed.
    LeaderChanged {
        /// The old leader.
        from: u32,
        /// The new leader.
        to: u32,
    },
}

/// What this node knows of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node's id.
    pub id: u32,
    /// Its address.
    pub addr: SocketAddr,
    /// Highest incarnation heard of.
    pub incarnation: u64,
    /// Highest heartbeat heard of within that incarnation.
    pub heartbeat: u64,
    /// Alive or failed, as judged here.
    pub state: NodeState,
    /// Local time the (incarnation, heartbeat) pair last advanced.
    pub last_progress_ms: u64,
    /// The highest ring version the node was heard to hold (0: none heard yet).
    pub ring_version: u64,
    /// Whether `addr` is from this node's configuration (`--nodes`, or the seed's map for a
    /// joining node): gossip never changes it. Other members' addresses follow what each
    /// node says of itself.
    pub configured: bool,
}

/// Counters for STATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// GOSSIP frames sent (pushes).
    pub gossip_sent: u64,
    /// Views merged (pushes and pull replies received).
    pub gossip_merged: u64,
    /// Times a node was marked failed.
    pub failures_detected: u64,
    /// Times a failed node was marked alive again.
    pub recoveries: u64,
    /// Times this node found it had not been running for several intervals.
    pub pauses: u64,
    /// Members added from gossip (nodes not configured at start).
    pub members_added: u64,
    /// Gossip entries of unknown nodes ignored because the table held
    /// [`CLUSTER_NODES_MAX`] members.
    pub members_ignored: u64,
}

/// Ticks further apart than this many gossip intervals mean this node itself was paused.
const PAUSE_INTERVALS: u64 = 3;

/// One node's membership view and failure detector.
#[derive(Clone, Debug)]
pub struct Membership {
    self_id: u32,
    /// Every known node, sorted by id, this node included; at most [`CLUSTER_NODES_MAX`].
    members: Vec<Member>,
    /// Nodes dropped for good ([`Membership::forget`]): gossip never adds them again.
    forgotten: BTreeSet<u32>,
    /// The latest time this view was given (start, ticks): when a member is added.
    now_ms: u64,
    interval_ms: u64,
    failure_timeout_ms: u64,
    next_gossip_ms: u64,
    /// When `on_tick` last ran (0: never).
    last_tick_ms: u64,
    leader: u32,
    next_frame_id: u32,
    events: VecDeque<MemberEvent>,
    transmit: VecDeque<(u32, Vec<u8>)>,
    stats: MembershipStats,
    /// The peers' clock offsets, measured from gossip round trips.
    clock: ClockOffsets,
}

impl Membership {
    /// The view of a node starting at `start_ms` (wall time, ms since the Unix epoch), which
    /// becomes its incarnation. Every other node starts alive with nothing heard yet; one that
    /// never gossips is marked failed after the failure timeout.
    pub fn new(config: &ClusterConfig, start_ms: u64) -> Membership {
        let members: Vec<Member> = config
            .nodes
            .iter()
            .map(|n| Member {
                id: n.id,
                addr: n.addr,
                incarnation: if n.id == config.node_id { start_ms } else { 0 },
                heartbeat: 0,
                state: NodeState::Alive,
                last_progress_ms: start_ms,
                ring_version: 0,
                configured: true,
            })
            .collect();
        assert!(
            members.len() <= CLUSTER_NODES_MAX,
            "validated configuration"
        );
        assert!(members.windows(2).all(|w| w[0].id < w[1].id), "sorted ids");
        assert!(members.iter().any(|m| m.id == config.node_id));
        let leader = members[0].id;
        Membership {
            self_id: config.node_id,
            members,
            forgotten: BTreeSet::new(),
            now_ms: start_ms,
            interval_ms: config.gossip_interval_ms,
            failure_timeout_ms: config.failure_timeout_ms(),
            next_gossip_ms: start_ms,
            last_tick_ms: 0,
            leader,
            next_frame_id: 1,
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            stats: MembershipStats::default(),
            clock: ClockOffsets::new(),
        }
    }

    fn index_of(&self, id: u32) -> Option<usize> {
        self.members.binary_search_by_key(&id, |m| m.id).ok()
    }

    fn me(&mut self) -> &mut Member {
        let i = self
            .index_of(self.self_id)
            .expect("own id is in the member list (checked in new)");
        &mut self.members[i]
    }

    /// This node's id.
    pub fn self_id(&self) -> u32 {
        self.self_id
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.member(self.self_id)
            .expect("own id is in the member list")
            .incarnation
    }

    /// Every node's entry, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The entry of node `id`.
    pub fn member(&self, id: u32) -> Option<&Member> {
        self.index_of(id).map(|i| &self.members[i])
    }

    /// Whether node `id` is alive in this view (unknown ids are not).
    pub fn is_alive(&self, id: u32) -> bool {
        self.member(id).is_some_and(|m| m.state == NodeState::Alive)
    }

    /// The ids of the nodes alive in this view, ascending.
    pub fn alive_ids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter(|m| m.state == NodeState::Alive)
            .map(|m| m.id)
            .collect()
    }

    /// The leader: the lowest-id alive node of this view.
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader == self.self_id
    }

    /// Counters for STATS.
    pub fn stats(&self) -> MembershipStats {
        self.stats
    }

    /// When the driver should call [`Membership::on_tick`] next at the latest.
    pub fn next_timeout_ms(&self) -> u64 {
        self.next_gossip_ms
    }

    /// The view as gossip entries.
    pub fn entries(&self) -> Vec<GossipEntry> {
        self.members
            .iter()
            .map(|m| GossipEntry {
                node_id: m.id,
                incarnation: m.incarnation,
                heartbeat: m.heartbeat,
                state: m.state,
                ring_version: m.ring_version,
                addr: Some(m.addr),
            })
            .collect()
    }

    /// The ring version this node holds: sent in its own entry, so the others learn it.
    pub fn set_ring_version(&mut self, version: u64) {
        self.me().ring_version = version;
    }

    /// The ring version this node holds (as set with [`Membership::set_ring_version`]).
    pub fn ring_version(&self) -> u64 {
        self.member(self.self_id)
            .expect("own id is in the member list")
            .ring_version
    }

    /// The address of node `id`, if it is a member.
    pub fn addr_of(&self, id: u32) -> Option<SocketAddr> {
        self.member(id).map(|m| m.addr)
    }

    /// Whether node `id` was dropped for good ([`Membership::forget`]).
    pub fn is_forgotten(&self, id: u32) -> bool {
        self.forgotten.contains(&id)
    }

    /// Add node `id` at `addr` (alive, progress now) if it is not a member, or give a member
    /// its new address (which the node's own gossip may change later, unless configured). An
    /// id forgotten before is a member again. Returns false (and changes nothing) when the
    /// table is full or `id` is this node.
    pub fn add_member(&mut self, id: u32, addr: SocketAddr) -> bool {
        if id == self.self_id {
            return false;
        }
        if let Some(i) = self.index_of(id) {
            self.members[i].addr = addr;
            return true;
        }
        if self.members.len() >= CLUSTER_NODES_MAX {
            self.stats.members_ignored += 1;
            return false;
        }
        self.forgotten.remove(&id);
        self.insert(id, addr);
        true
    }

    fn insert(&mut self, id: u32, addr: SocketAddr) -> usize {
        let i = self
            .members
            .binary_search_by_key(&id, |m| m.id)
            .expect_err("callers check the id is not a member");
        self.members.insert(
            i,
            Member {
                id,
                addr,
                incarnation: 0,
                heartbeat: 0,
                state: NodeState::Alive,
                last_progress_ms: self.now_ms,
                ring_version: 0,
                configured: false,
            },
        );
        self.stats.members_added += 1;
        self.events.push_back(MemberEvent::Added { node: id });
        i
    }

    /// Drop node `id` for good (a node removed from the cluster): it leaves the table, its
    /// clock sample is dropped, and gossip entries naming it are ignored from now on (until
    /// [`Membership::add_member`] adds it again). Not this node.
    pub fn forget(&mut self, id: u32) {
        if id == self.self_id {
            return;
        }
        self.forgotten.insert(id);
        if let Some(i) = self.index_of(id) {
            self.members.remove(i);
        }
        self.clock.forget(id);
        self.update_leader();
    }

    /// Advance time: detect failures, and when the gossip interval has passed, bump this
    /// node's heartbeat and queue GOSSIP pushes to up to [`GOSSIP_FANOUT`] other nodes drawn
    /// from `rng` (failed nodes included, so they learn of us as soon as they are back).
    pub fn on_tick(&mut self, now_ms: u64, rng: &mut SplitMix64) {
        let timeout = self.failure_timeout_ms;
        let self_id = self.self_id;
        // A gap of several intervals since the last tick means this node was not running
        // (SIGSTOP, a swapped-out process, a stalled disk): it heard nothing because it was
        // not listening, not because the others died. The gap does not count towards anyone's
        // failure; the others get a fresh timeout from now.
        let gap = now_ms.saturating_sub(self.last_tick_ms);
        if self.last_tick_ms != 0 && gap > PAUSE_INTERVALS * self.interval_ms {
            for m in self.members.iter_mut() {
                m.last_progress_ms = m.last_progress_ms.max(now_ms - self.interval_ms);
            }
            self.stats.pauses += 1;
        }
        if now_ms < self.last_tick_ms {
            // The wall clock stepped back (an operator set a clock that ran minutes ahead
            // right): times noted on the old clock are in the future now. Gossip at once, and
            // give everyone a fresh failure timeout on the new clock, rather than falling
            // silent (and deaf) until the clock catches up.
            self.next_gossip_ms = self.next_gossip_ms.min(now_ms);
            for m in self.members.iter_mut() {
                m.last_progress_ms = m.last_progress_ms.min(now_ms);
            }
        }
        self.last_tick_ms = now_ms;
        self.now_ms = now_ms;
        for m in self.members.iter_mut().filter(|m| m.id != self_id) {
            if m.state == NodeState::Alive && now_ms.saturating_sub(m.last_progress_ms) >= timeout {
                m.state = NodeState::Failed;
                self.stats.failures_detected += 1;
                self.events.push_back(MemberEvent::Failed { node: m.id });
            }
        }
        self.update_leader();

        if now_ms < self.next_gossip_ms {
            return;
        }
        // After a long pause (SIGSTOP, a slow disk) gossip once, not once per missed interval.
        self.next_gossip_ms = now_ms + self.interval_ms;
        let me = self.me();
        me.heartbeat += 1;
        me.last_progress_ms = now_ms;

        let mut others: Vec<u32> = self
            .members
            .iter()
            .map(|m| m.id)
            .filter(|&id| id != self_id)
            .collect();
        // A partial Fisher-Yates shuffle picks `fanout` distinct targets.
        let fanout = GOSSIP_FANOUT.min(others.len());
        for k in 0..fanout {
            let j = k + rng.below((others.len() - k) as u64) as usize;
            others.swap(k, j);
            self.push_to(now_ms, others[k]);
        }
    }

    /// Queue a GOSSIP push of this view to node `to`.
    fn push_to(&mut self, now_ms: u64, to: u32) {
        let mut frame = Vec::new();
        let id = self.frame_id();
        let stamp = ClockStamp {
            sent_ms: now_ms,
            echo_ms: 0,
        };
        peer::put_gossip(&mut frame, id, self.self_id, &self.entries(), stamp);
        self.transmit.push_back((to, frame));
        self.stats.gossip_sent += 1;
    }

    fn frame_id(&mut self) -> u32 {
        // Gossip ids stay in the coordinator's space (no HINT_ID_BIT, never 0); replies are
        // recognised by their opcode, so collisions with coordinator ids do not matter.
        let id = self.next_frame_id;
        self.next_frame_id = if id >= peer::HINT_ID_BIT - 1 {
            1
        } else {
            id + 1
        };
        id
    }

    /// Merge a view received from `sender` (a GOSSIP push or the reply to ours).
    pub fn on_gossip(&mut self, now_ms: u64, sender: u32, entries: &[GossipEntry]) {
        self.stats.gossip_merged += 1;
        self.now_ms = self.now_ms.max(now_ms);
        // Every entry is merged on its own merits, the sender's included (its entry alone
        // may change its address).
        // Nodes seen alive again: pushed to at once, like new members, so that their clocks
        // are measured within a round trip (until then this node refuses writes: a live peer
        // is not measured) rather than at their next turn among the gossip targets.
        let mut back: Vec<u32> = Vec::new();
        for e in entries {
            let i = match self.index_of(e.node_id) {
                Some(i) => i,
                None => {
                    // A node this one has not heard of: a member if its entry says where it
                    // listens, it was not removed, and the table has room.
                    let Some(addr) = e.addr else { continue };
                    if self.forgotten.contains(&e.node_id) {
                        continue;
                    }
                    if self.members.len() >= CLUSTER_NODES_MAX {
                        self.stats.members_ignored += 1;
                        continue;
                    }
                    let i = self.insert(e.node_id, addr);
                    // Push our view to it at once: it measures our clock sooner, and we
                    // measure its from the reply (until then our clock counts as not
                    // measured against every live peer, and writes are refused).
                    self.push_to(now_ms, e.node_id);
                    i
                }
            };
            if e.node_id == self.self_id {
                let me = &mut self.members[i];
                if e.incarnation > me.incarnation {
                    me.incarnation = e.incarnation.saturating_add(1);
                    me.heartbeat = 0;
                }
                continue;
            }
            let m = &mut self.members[i];
            m.ring_version = m.ring_version.max(e.ring_version);
            // A node's address is what it says of itself, in news at least as fresh as ours
            // (relays only introduce a node: with proxies or NAT, two relays may know it at
            // different addresses, and following each would flap its links). An address the
            // operator configured is kept: the others may reach the node only through it.
            if e.node_id == sender
                && !m.configured
                && (e.incarnation, e.heartbeat) >= (m.incarnation, m.heartbeat)
            {
                if let Some(addr) = e.addr {
                    m.addr = addr;
                }
            }
            if (e.incarnation, e.heartbeat) <= (m.incarnation, m.heartbeat) {
                continue;
            }
            if (m.incarnation, m.heartbeat) == (0, 0) && e.state == NodeState::Failed {
                // First news of a node, relayed by a peer that already holds it failed: that
                // is old news, not progress. Without this a freshly started node would count
                // a dead node alive (and maybe its leader) for a whole failure timeout.
                m.incarnation = e.incarnation;
                m.heartbeat = e.heartbeat;
                if m.state == NodeState::Alive {
                    m.state = NodeState::Failed;
                    self.stats.failures_detected += 1;
                    self.events
                        .push_back(MemberEvent::Failed { node: e.node_id });
                }
                continue;
            }
            let restarted = e.incarnation > m.incarnation && m.incarnation != 0;
            m.incarnation = e.incarnation;
            m.heartbeat = e.heartbeat;
            m.last_progress_ms = now_ms;
            if m.state == NodeState::Failed {
                m.state = NodeState::Alive;
                self.stats.recoveries += 1;
                self.events.push_back(MemberEvent::Recovered {
                    node: e.node_id,
                    incarnation: e.incarnation,
                });
                back.push(e.node_id);
            } else if restarted {
                self.events.push_back(MemberEvent::Restarted {
                    node: e.node_id,
                    incarnation: e.incarnation,
                });
            }
        }
        for id in back {
            self.push_to(now_ms, id);
        }
        self.update_leader();
    }

    /// Serve a GOSSIP request: merge it and append the reply (our view, our clock stamp
    /// echoing the request's) with id `id`.
    pub fn handle_gossip(
        &mut self,
        now_ms: u64,
        id: u32,
        sender: u32,
        entries: &[GossipEntry],
        clock: Option<ClockStamp>,
        out: &mut Vec<u8>,
    ) {
        self.on_gossip(now_ms, sender, entries);
        let stamp = ClockStamp {
            sent_ms: now_ms,
            echo_ms: clock.map_or(0, |c| c.sent_ms),
        };
        peer::put_gossip_reply(out, id, self.self_id, &self.entries(), stamp);
    }

    /// The clock stamp of a pull reply from `sender`, received at `now_ms`: a sample of its
    /// clock offset.
    pub fn on_clock_reply(&mut self, now_ms: u64, sender: u32, clock: Option<ClockStamp>) {
        if sender == self.self_id || self.index_of(sender).is_none() {
            return;
        }
        if let Some(c) = clock {
            self.clock.on_reply(sender, now_ms, c.sent_ms, c.echo_ms);
        }
    }

    /// This node's clock against its live peers' (see [`super::clock`]).
    pub fn cluster_clock(&self, now_ms: u64) -> ClusterClock {
        let me = self.self_id;
        // A member heard of by gossip (a node that joined) counts once its clock is measured:
        // counted before, it would make every node refuse writes (its clock not measured
        // against every live peer) from the moment it hears of the newcomer until a round
        // trip with it. This node's offset is the median over its peers, so one peer less
        // for a moment barely moves it; the configured ones must all be measured.
        let live = self
            .members
            .iter()
            .filter(move |m| m.id != me && m.state == NodeState::Alive)
            .filter(|m| m.configured || self.clock.sample(m.id).is_some())
            .map(|m| m.id);
        let _ = now_ms;
        self.clock.cluster(self.members.len() - 1, live)
    }

    /// The newest clock sample of `peer`, if any.
    pub fn clock_sample(&self, peer: u32) -> Option<Sample> {
        self.clock.sample(peer)
    }

    /// Clock samples taken and dropped.
    pub fn clock_counts(&self) -> (u64, u64) {
        self.clock.counts()
    }

    fn update_leader(&mut self) {
        let leader = self
            .members
            .iter()
            .find(|m| m.state == NodeState::Alive || m.id == self.self_id)
            .map(|m| m.id)
            .expect("this node is always counted alive");
        if leader != self.leader {
            self.events.push_back(MemberEvent::LeaderChanged {
                from: self.leader,
                to: leader,
            });
            self.leader = leader;
        }
    }

    /// The next frame to send: `(node id, frame bytes)`.
    pub fn poll_transmit(&mut self) -> Option<(u32, Vec<u8>)> {
        self.transmit.pop_front()
    }

    /// The next state change.
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// The CLUSTER reply: one line per node, `id addr state incarnation`, with ` leader`
    /// appended on the leader's line and ` self` on this node's line, then the clocks as of
    /// the last tick: ` clock_offset_ms=N rtt_ms=R` on a measured peer's line (its clock minus
    /// ours), ` cluster_offset_ms=N` on this node's (ours minus the cluster's), and last
    /// ` ring_version=V`, the ring version the node holds as heard here (0: none heard).
    pub fn render(&self) -> String {
        let now_ms = self.last_tick_ms;
        let mut s = String::new();
        for m in &self.members {
            let _ = write!(
                s,
                "{} {} {} {}",
                m.id,
                m.addr,
                m.state.name(),
                m.incarnation
            );
            if m.id == self.leader {
                s.push_str(" leader");
            }
            if m.id == self.self_id {
                s.push_str(" self");
                let c = self.cluster_clock(now_ms);
                let _ = write!(s, " cluster_offset_ms={}", c.offset_ms);
            } else if let Some(c) = self.clock.sample(m.id) {
                let _ = write!(s, " clock_offset_ms={} rtt_ms={}", c.offset_ms, c.rtt_ms);
            }
            let _ = write!(s, " ring_version={}", m.ring_version);
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests;
