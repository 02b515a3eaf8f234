//! The ring state: the cluster's one versioned value of who is a member, in what state, and
//! who owns each partition, including a change of ownership while it runs. Pure: no I/O.
//!
//! Riak keeps a "ring" with member statuses and a pending ownership it moves towards
//! (`riak_core_ring`: `joining/valid/leaving/exiting`, `next` list); Cassandra keeps "pending
//! ranges" beside the natural ones. dkv keeps both as explicit [`Ownership`] values:
//!
//! * `current`: the owners reads use, and the replica sets anti-entropy and tombstone
//!   collection reason about. Always a valid ownership (N distinct owners per partition).
//! * `target`: the ownership a change moves towards, `None` when nothing moves. For a
//!   partition whose owners differ, writes go to the current owners *and* the target's new
//!   ones (the *pending* owners), which stream the partition from a current owner.
//!
//! When a pending owner has the whole partition, the leader *flips* it: `current`'s owners of
//! that partition become `target`'s, with a new version. When every partition is flipped and
//! every live member holds that version, the leader *ends* the change: `target` is cleared,
//! joining members are up, leaving ones removed.
//!
//! Only the leader makes a new value ([`RingState::admit`], [`RingState::leave`],
//! [`RingState::remove`], [`RingState::replace`], [`RingState::complete`],
//! [`RingState::set_paused`]), each one version up, and it takes effect only once a majority
//! of the members accepted it (**one history**: see `cluster/node/ringvote.rs`, where each
//! state carries the *ballot* — leader term and id — it was proposed with); gossip spreads
//! it (a node that hears of a higher version pulls it), every node persists it, and a node
//! adopts a committed value only if its version is higher than the one it holds. One change runs at a time: a new one is refused
//! while `target` is set (the plan of a change is made against a settled ring, so two plans
//! never compete for the same partitions).
//!
//! Removed members stay listed (status removed), so that stale gossip never brings them back
//! and their ids are never reused.
//!
//! # Encoding (RING_PULL replies, the `ring` file of a data directory)
//!
//! All integers big-endian.
//!
//! ```text
//!  0        1        2        4              12             20       21         25
//!  +--------+--------+--------+--------------+--------------+--------+----------+----------+
//!  | format | flags  | 0 u16  | version u64  | since u64    | change | change a | change b |
//!  | u8 = 2 | bit0:  |        |              | (version the | kind u8| u32      | u32      |
//!  |        | paused |        |              | change began)|        |          |          |
//!  |        | bit1:  |        |              |              |        |          |          |
//!  |        | settled|        |              |              |        |          |          |
//!  +--------+--------+--------+--------------+--------------+--------+----------+----------+
//!  29             31
//!  +--------------+-----------------------------------------------------------+
//!  | members u16  | members × | id u32 | status u8 | addr len u8 | addr UTF-8 | |
//!  +--------------+-----------------------------------------------------------+
//!  +---------------------------------+-----------+---------------------------------------+
//!  | current (ownership encoding,    | target u8 | target (ownership encoding), if 1     |
//!  | cluster/ownership.rs)           | 0 | 1     |                                       |
//!  +---------------------------------+-----------+---------------------------------------+
//!  +-------------------------------------------------------------------+
//!  | leaver's partitions: PARTITION_COUNT bits (32 bytes), bit p of    |
//!  | byte p / 8 = p % 8; only while the change is a leave              |
//!  +-------------------------------------------------------------------+
//!  +--------------+--------------+
//!  | term u64     | proposer u32 |  the ballot (format 2; format 1, still read, has none:
//!  +--------------+--------------+  term 0, proposer 0)
//!   change kind: 0 none, 1 join (a = node), 2 leave (a), 3 remove (a), 4 replace (a = old,
//!   b = new); unused fields 0. status: 1 joining, 2 up, 3 leaving, 4 removed.
//! ```
//!
//! **A leaving node after a flip.** Nodes learn a flip at different times: one that has not
//! yet still reads a flipped partition from its old owners, the leaving node among them,
//! while writes by the new ring go to the new owners only; the leaving node could then
//! answer a quorum read with an older version than an acknowledged write (found by the
//! simulator). So until the leave ends, the leaving node stays a write destination of the
//! partitions it owned when the leave began (the *leaver's partitions*), with one more
//! acknowledgement asked for it as for a pending owner ([`RingState::departing`]): any
//! W + 1 acknowledgements among the N + 1 nodes put the write on W of the old owners too.
//! It forgets them when the leave ends.

use super::ownership::{Ownership, OwnershipError, INITIAL_VERSION};
use crate::limits::{CLUSTER_NODES_MAX, PARTITION_COUNT};
use byteorder::{BigEndian, ByteOrder};

/// The format byte of the encoding this build writes and reads.
pub const RING_STATE_FORMAT: u8 = 2;

/// Bytes before the member list.
const HEADER_SIZE: usize = 31;

/// Longest member address in bytes (its length travels as a u8).
pub const MEMBER_ADDR_SIZE_MAX: usize = u8::MAX as usize;

/// Members a ring state lists at most, removed ones included (they are kept so their ids are
/// never reused): room for the live cluster and a history of replaced nodes.
pub const RING_MEMBERS_MAX: usize = 4 * CLUSTER_NODES_MAX;
const _: () = assert!(RING_MEMBERS_MAX <= u16::MAX as usize);

/// A member's state in the ring (decided by the leader; *failed* is judged by each node's
/// failure detector, apart from this).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberStatus {
    /// Admitted; receives the partitions the running change gives it.
    Joining,
    /// A settled member.
    Up,
    /// Its partitions are moving to others (a decommission, a removal or a replacement).
    Leaving,
    /// Gone for good: owns nothing, never re-admitted.
    Removed,
}

impl MemberStatus {
    /// The name CLUSTER and STATS show.
    pub fn name(self) -> &'static str {
        match self {
            MemberStatus::Joining => "joining",
            MemberStatus::Up => "up",
            MemberStatus::Leaving => "leaving",
            MemberStatus::Removed => "removed",
        }
    }

    fn code(self) -> u8 {
        match self {
            MemberStatus::Joining => 1,
            MemberStatus::Up => 2,
            MemberStatus::Leaving => 3,
            MemberStatus::Removed => 4,
        }
    }

    fn from_code(c: u8) -> Option<MemberStatus> {
        Some(match c {
            1 => MemberStatus::Joining,
            2 => MemberStatus::Up,
            3 => MemberStatus::Leaving,
            4 => MemberStatus::Removed,
            _ => return None,
        })
    }
}

/// One member of the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingMember {
    /// The node's id.
    pub id: u32,
    /// Where it listens (`host:port`), as it announced itself.
    pub addr: String,
    /// Its state.
    pub status: MemberStatus,
}

/// The change of membership a ring state is moving through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `node` joins and takes its share of placements.
    Join {
        /// The new node.
        node: u32,
    },
    /// `node` decommissions: it streams its placements to the others, then leaves.
    Leave {
        /// The leaving node.
        node: u32,
    },
    /// `node` is dead and dropped: its placements are rebuilt from the other replicas.
    Remove {
        /// The removed node.
        node: u32,
    },
    /// `new` takes over every placement of `old` (dead), streaming from the other replicas.
    Replace {
        /// The node replaced.
        old: u32,
        /// The node that takes its place.
        new: u32,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Join { node } => write!(f, "join of node {node}"),
            Change::Leave { node } => write!(f, "leave of node {node}"),
            Change::Remove { node } => write!(f, "removal of node {node}"),
            Change::Replace { old, new } => write!(f, "replacement of node {old} by node {new}"),
        }
    }
}

/// Why the leader cannot make a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingChangeError {
    /// Another change is still moving partitions.
    Busy(Change),
    /// The node is not a member.
    UnknownNode(u32),
    /// The node's status does not allow it (e.g. leave of a joining node).
    WrongStatus(u32, MemberStatus),
    /// The node id is already taken (by a member, or a removed one).
    IdTaken(u32),
    /// No change is running, or the partition is already flipped.
    NothingToFlip(usize),
    /// Too many members, or a bad address.
    Limit(String),
    /// The placement cannot be made (too few nodes for N, ...).
    Ownership(OwnershipError),
}

impl std::fmt::Display for RingChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingChangeError::Busy(c) => write!(
                f,
                "the {c} is still moving partitions: one change runs at a time (see TRANSFERS)"
            ),
            RingChangeError::UnknownNode(n) => write!(f, "node {n} is not a member"),
            RingChangeError::WrongStatus(n, s) => {
                write!(f, "node {n} is {}: this change needs it up", s.name())
            }
            RingChangeError::IdTaken(n) => write!(
                f,
                "node id {n} is taken (a member, or a removed node: ids are never reused)"
            ),
            RingChangeError::NothingToFlip(p) => {
                write!(f, "partition {p} has nothing left to move")
            }
            RingChangeError::Limit(why) => f.write_str(why),
            RingChangeError::Ownership(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RingChangeError {}

impl From<OwnershipError> for RingChangeError {
    fn from(e: OwnershipError) -> Self {
        RingChangeError::Ownership(e)
    }
}

/// The cluster's membership and ownership, with a version. Two states are equal when
/// their content is: the ballot only records how one was accepted (a new leader proposes a
/// state it found accepted again under its own ballot; it is the same decision).
#[derive(Clone, Debug, Eq)]
pub struct RingState {
    version: u64,
    paused: bool,
    /// Every live member was seen holding `since` or later (see [`RingState::settled`]).
    settled: bool,
    /// The version at which the running change was planned (0: none).
    since: u64,
    change: Option<Change>,
    /// Sorted by id; removed members included.
    members: Vec<RingMember>,
    current: Ownership,
    target: Option<Ownership>,
    /// While the change is a leave: the partitions the leaving node owned when it began,
    /// [`LEAVER_BITS_SIZE`] bytes of bits (module doc).
    leaver_bits: Option<Vec<u8>>,
    /// The ballot the leader proposed this state with: its term and its id (module doc
    /// "One history"; 0 and 0 for a configured first ring).
    term: u64,
    proposer: u32,
}

impl PartialEq for RingState {
    fn eq(&self, o: &RingState) -> bool {
        (
            self.version,
            self.paused,
            self.settled,
            self.since,
            self.change,
        ) == (o.version, o.paused, o.settled, o.since, o.change)
            && (
                &self.members,
                &self.current,
                &self.target,
                &self.leaver_bits,
            ) == (&o.members, &o.current, &o.target, &o.leaver_bits)
    }
}

/// Bytes of the leaver's partitions bitmap.
const LEAVER_BITS_SIZE: usize = PARTITION_COUNT.div_ceil(8);

/// Members `(id, addr)`, every one up, ids ascending and distinct (the first address wins).
fn members_up(nodes: &[(u32, String)]) -> Vec<RingMember> {
    let mut members: Vec<RingMember> = nodes
        .iter()
        .map(|(id, addr)| RingMember {
            id: *id,
            addr: addr.clone(),
            status: MemberStatus::Up,
        })
        .collect();
    members.sort_by_key(|m| m.id);
    members.dedup_by_key(|m| m.id);
    members
}

impl RingState {
    /// The first ring of a cluster started with `--nodes`: every node up, the initial
    /// ownership ([`Ownership::initial`]), at [`INITIAL_VERSION`]. `nodes` are `(id, addr)`.
    pub fn initial(nodes: &[(u32, String)], replicas: usize) -> Result<RingState, OwnershipError> {
        let ids: Vec<u32> = nodes.iter().map(|n| n.0).collect();
        let current = Ownership::initial(&ids, replicas)?;
        let members = members_up(nodes);
        Ok(RingState {
            version: INITIAL_VERSION,
            paused: false,
            settled: false,
            since: 0,
            change: None,
            members,
            current,
            target: None,
            leaver_bits: None,
            term: 0,
            proposer: 0,
        })
    }

    /// A provisional state built from a RING map (a node starting with `--join` before it
    /// has pulled the real one): the map's owners and addresses, every node up, version 0 so
    /// that any state the cluster holds is newer.
    pub fn provisional(current: Ownership, addrs: &[(u32, String)]) -> RingState {
        let members = members_up(addrs);
        RingState {
            version: 0,
            paused: false,
            settled: false,
            since: 0,
            change: None,
            members,
            current: current.with_version(0),
            target: None,
            leaver_bits: None,
            term: 0,
            proposer: 0,
        }
    }

    /// The version: every change has a higher one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether partition moves are paused (cluster-wide, by the leader).
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Whether the running change is *settled*: the leader saw every live member hold the
    /// version that began it (or a later one), so every coordinator sends the moving
    /// partitions' writes to their pending owners too. Copies start only then: what they
    /// miss of the writes before, the pending owner gets directly from then on.
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// Whether copies may run: a change is settled and not paused.
    pub fn moves_may_run(&self) -> bool {
        self.change.is_some() && self.settled && !self.paused
    }

    /// The running change, if any.
    pub fn change(&self) -> Option<Change> {
        self.change
    }

    /// The version at which the running change was planned (0 if none): a pending owner
    /// streams only once every live node holds at least this version, so that no coordinator
    /// still writes by an older ring while the copy is made.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// Every member, removed ones included, by id.
    pub fn members(&self) -> &[RingMember] {
        &self.members
    }

    /// Member `id`, if listed.
    pub fn member(&self, id: u32) -> Option<&RingMember> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| &self.members[i])
    }

    /// Member `id`'s status, if listed.
    pub fn status(&self, id: u32) -> Option<MemberStatus> {
        self.member(id).map(|m| m.status)
    }

    /// Whether `id` takes part in the cluster (listed and not removed).
    pub fn is_member(&self, id: u32) -> bool {
        self.status(id).is_some_and(|s| s != MemberStatus::Removed)
    }

    /// The ownership reads use.
    pub fn current(&self) -> &Ownership {
        &self.current
    }

    /// The ownership the running change moves towards.
    pub fn target(&self) -> Option<&Ownership> {
        self.target.as_ref()
    }

    /// Copies of each partition (N).
    pub fn replicas(&self) -> usize {
        self.current.replicas()
    }

    /// The owners of partition `p` that reads use, primary first.
    pub fn owners(&self, p: usize) -> &[u32] {
        self.current.owners(p)
    }

    /// The pending owners of partition `p`: owners in the target that are not current owners
    /// (empty when `p` does not move).
    pub fn pending(&self, p: usize) -> impl Iterator<Item = u32> + '_ {
        let current = self.current.owners(p);
        self.target
            .as_ref()
            .map(|t| t.owners(p))
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(move |n| !current.contains(n))
    }

    /// Whether partition `p` still has to move (its target owners differ from its current).
    pub fn moving(&self, p: usize) -> bool {
        self.pending(p).next().is_some()
    }

    /// Whether `node` holds a copy of `p`: a current owner, a pending one (it is filling
    /// its copy, and writes reach it), or the leaving node of a running leave after the
    /// flip of one of its partitions ([`RingState::departing`]).
    pub fn holds(&self, node: u32, p: usize) -> bool {
        self.current.owners(p).contains(&node)
            || self.pending(p).any(|n| n == node)
            || self.departing(p) == Some(node)
    }

    /// The leaving node of a running leave, if `p` was one of its partitions and has
    /// flipped away from it: writes still reach it until the leave ends (module doc).
    pub fn departing(&self, p: usize) -> Option<u32> {
        let Some(Change::Leave { node }) = self.change else {
            return None;
        };
        let bits = self.leaver_bits.as_ref()?;
        let owned = p < PARTITION_COUNT && bits[p / 8] & (1 << (p % 8)) != 0;
        (owned && !self.current.owners(p).contains(&node)).then_some(node)
    }

    /// Partitions still to flip, ascending.
    pub fn moving_partitions(&self) -> Vec<usize> {
        (0..PARTITION_COUNT).filter(|&p| self.moving(p)).collect()
    }

    /// The ballot this state was proposed with: (term, proposer).
    pub fn ballot(&self) -> (u64, u32) {
        (self.term, self.proposer)
    }

    /// How states compare for the ring's consensus: by ballot, then version (module doc).
    pub fn rank(&self) -> (u64, u32, u64) {
        (self.term, self.proposer, self.version)
    }

    /// This state proposed with ballot `(term, proposer)` (the same version and content).
    pub fn with_ballot(&self, term: u64, proposer: u32) -> RingState {
        let mut s = self.clone();
        s.term = term;
        s.proposer = proposer;
        s
    }

    fn next(&self) -> RingState {
        let mut s = self.clone();
        s.version = self.version + 1;
        s
    }

    fn require_idle(&self) -> Result<(), RingChangeError> {
        match self.change {
            Some(c) => Err(RingChangeError::Busy(c)),
            None => Ok(()),
        }
    }

    fn require_up(&self, id: u32) -> Result<(), RingChangeError> {
        match self.status(id) {
            None => Err(RingChangeError::UnknownNode(id)),
            Some(MemberStatus::Up) => Ok(()),
            Some(s) => Err(RingChangeError::WrongStatus(id, s)),
        }
    }

    fn add_member(&mut self, id: u32, addr: &str) -> Result<(), RingChangeError> {
        if self.member(id).is_some() {
            return Err(RingChangeError::IdTaken(id));
        }
        if addr.len() > MEMBER_ADDR_SIZE_MAX {
            return Err(RingChangeError::Limit(format!(
                "address of {} bytes, longer than {MEMBER_ADDR_SIZE_MAX}",
                addr.len()
            )));
        }
        let live = self
            .members
            .iter()
            .filter(|m| m.status != MemberStatus::Removed);
        if live.count() >= CLUSTER_NODES_MAX || self.members.len() >= RING_MEMBERS_MAX {
            return Err(RingChangeError::Limit(format!(
                "the cluster has its maximum of {CLUSTER_NODES_MAX} nodes"
            )));
        }
        let at = self
            .members
            .binary_search_by_key(&id, |m| m.id)
            .unwrap_err();
        self.members.insert(
            at,
            RingMember {
                id,
                addr: addr.to_string(),
                status: MemberStatus::Joining,
            },
        );
        Ok(())
    }

    fn set_status(&mut self, id: u32, status: MemberStatus) {
        if let Ok(i) = self.members.binary_search_by_key(&id, |m| m.id) {
            self.members[i].status = status;
        }
    }

    fn begin(&mut self, change: Change, target: Ownership) {
        // Partitions whose owners only change order (a primary handed to another owner
        // moves no data) take their target order at once: no copy will ever flip them.
        for p in 0..PARTITION_COUNT {
            let (now, then) = (self.current.owners(p), target.owners(p));
            if now != then && then.iter().all(|n| now.contains(n)) {
                let owners = then.to_vec();
                if let Ok(c) = self.current.with_owners(p, &owners, self.version) {
                    self.current = c;
                }
            }
        }
        self.target = Some(target.with_version(self.version));
        self.change = Some(change);
        self.since = self.version;
        self.settled = false;
        // Partitions whose owners only change order (the plan evens out primaries) move no
        // data, so no copy reports them and no flip would take them: take their new order
        // now, or the change would never end (`complete` ends it on the same placement).
        let target = self.target.clone().expect("just set");
        for p in 0..PARTITION_COUNT {
            if self.current.owners(p) != target.owners(p) && !self.moving(p) {
                match self.current.with_owners(p, target.owners(p), self.version) {
                    Ok(c) => self.current = c,
                    Err(e) => log::error!("partition {p}: owners not reordered: {e}"),
                }
            }
        }
        self.leaver_bits = match change {
            Change::Leave { node } => {
                let mut bits = vec![0u8; LEAVER_BITS_SIZE];
                for p in 0..PARTITION_COUNT {
                    if self.current.owners(p).contains(&node) {
                        bits[p / 8] |= 1 << (p % 8);
                    }
                }
                Some(bits)
            }
            _ => None,
        };
        if !self
            .current
            .same_placement(self.target.as_ref().expect("just set"))
        {
            return;
        }
        // Nothing to move (cannot happen for the changes above, but never leave a change
        // that no flip would finish).
        self.finish();
    }

    /// Admit node `id` listening at `addr`: it joins as *joining* and the target gives it
    /// its share (see [`Ownership::plan_join`]).
    pub fn admit(&self, id: u32, addr: &str) -> Result<RingState, RingChangeError> {
        self.require_idle()?;
        let mut s = self.next();
        s.add_member(id, addr)?;
        let target = self.current.plan_join(id)?;
        s.begin(Change::Join { node: id }, target);
        Ok(s)
    }

    /// Decommission node `id` (up): its placements move to the others, streamed from it.
    pub fn leave(&self, id: u32) -> Result<RingState, RingChangeError> {
        self.depart(id, Change::Leave { node: id })
    }

    /// Drop dead node `id` (up) for good: its placements are rebuilt on others from the
    /// surviving replicas.
    pub fn remove(&self, id: u32) -> Result<RingState, RingChangeError> {
        self.depart(id, Change::Remove { node: id })
    }

    /// A leave or a removal of node `id`: the same plan (only its placements move); they
    /// differ in where the copies come from (see `transfer.rs`).
    fn depart(&self, id: u32, change: Change) -> Result<RingState, RingChangeError> {
        self.require_idle()?;
        self.require_up(id)?;
        let target = self.current.plan_leave(id)?;
        let mut s = self.next();
        s.set_status(id, MemberStatus::Leaving);
        s.begin(change, target);
        Ok(s)
    }

    /// The node the running change brings in (a join's, a replacement's new node).
    pub fn incoming(&self) -> Option<u32> {
        match self.change {
            Some(Change::Join { node }) => Some(node),
            Some(Change::Replace { new, .. }) => Some(new),
            _ => None,
        }
    }

    /// Give up the running join or replacement of node `id`, dead before its copies ended
    /// (otherwise its change would block every other one for good). The change stops where
    /// it is: partitions still moving stay with their owners (a replaced node is up again,
    /// to be removed or replaced anew); if `id` already took placements by flips, a removal
    /// of `id` begins, which rebuilds them on the others from the surviving replicas.
    pub fn abort_incoming(&self, id: u32) -> Result<RingState, RingChangeError> {
        let Some(change) = self.change.filter(|_| self.incoming() == Some(id)) else {
            return Err(match self.status(id) {
                None => RingChangeError::UnknownNode(id),
                Some(s) => RingChangeError::WrongStatus(id, s),
            });
        };
        let mut s = self.next();
        s.target = None;
        s.leaver_bits = None;
        s.change = None;
        s.since = 0;
        s.settled = false;
        if let Change::Replace { old, .. } = change {
            s.set_status(old, MemberStatus::Up);
        }
        let holds = (0..PARTITION_COUNT).any(|p| s.current.owners(p).contains(&id));
        if !holds {
            s.set_status(id, MemberStatus::Removed);
            return Ok(s);
        }
        let target = s.current.plan_leave(id)?;
        s.set_status(id, MemberStatus::Leaving);
        s.begin(Change::Remove { node: id }, target);
        Ok(s)
    }

    /// Node `new` (listening at `addr`) takes over every placement of `old` (up, normally
    /// dead), streaming from the surviving replicas.
    pub fn replace(&self, old: u32, new: u32, addr: &str) -> Result<RingState, RingChangeError> {
        self.require_idle()?;
        self.require_up(old)?;
        let target = self.current.plan_replace(old, new)?;
        let mut s = self.next();
        s.add_member(new, addr)?;
        s.set_status(old, MemberStatus::Leaving);
        s.begin(Change::Replace { old, new }, target);
        Ok(s)
    }

    /// Mark the running change settled (the leader saw every live member at `since` or
    /// later); `None` when there is nothing to settle.
    pub fn settle(&self) -> Option<RingState> {
        if self.change.is_none() || self.settled {
            return None;
        }
        let mut s = self.next();
        s.settled = true;
        Some(s)
    }

    /// Pause or resume the moves (a new version either way, so it spreads).
    pub fn set_paused(&self, paused: bool) -> RingState {
        let mut s = self.next();
        s.paused = paused;
        s
    }

    /// Flip partition `p` to its target owners (its pending owners have it all). The last
    /// flip does not end the change: [`RingState::end`] does, once every live member holds
    /// the version of the last flip (until then, a node that has not seen a flip still
    /// reads the partition from its old owners, which the leaving node stays among as a
    /// write destination: see the module doc).
    pub fn complete(&self, p: usize) -> Result<RingState, RingChangeError> {
        if p >= PARTITION_COUNT || !self.moving(p) {
            return Err(RingChangeError::NothingToFlip(p));
        }
        let target = self
            .target
            .as_ref()
            .ok_or(RingChangeError::NothingToFlip(p))?;
        let mut s = self.next();
        s.current = self.current.with_owners(p, target.owners(p), s.version)?;
        Ok(s)
    }

    /// Whether a change runs and every partition has flipped: it waits for
    /// [`RingState::end`].
    pub fn all_flipped(&self) -> bool {
        self.target
            .as_ref()
            .is_some_and(|t| t.same_placement(&self.current))
    }

    /// End the running change whose partitions have all flipped: joining members are up,
    /// leaving ones removed (the leaving node forgets what it still held). `None` while a
    /// partition still moves, or when no change runs.
    pub fn end(&self) -> Option<RingState> {
        if !self.all_flipped() {
            return None;
        }
        let mut s = self.next();
        s.current = s.current.with_version(s.version);
        s.finish();
        Some(s)
    }

    fn finish(&mut self) {
        self.target = None;
        self.leaver_bits = None;
        self.change = None;
        self.since = 0;
        self.settled = false;
        for m in &mut self.members {
            m.status = match m.status {
                MemberStatus::Joining => MemberStatus::Up,
                MemberStatus::Leaving => MemberStatus::Removed,
                s => s,
            };
        }
    }

    /// Append the encoding (module doc) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(RING_STATE_FORMAT);
        out.push(u8::from(self.paused) | u8::from(self.settled) << 1);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.since.to_be_bytes());
        let (kind, a, b) = match self.change {
            None => (0u8, 0u32, 0u32),
            Some(Change::Join { node }) => (1, node, 0),
            Some(Change::Leave { node }) => (2, node, 0),
            Some(Change::Remove { node }) => (3, node, 0),
            Some(Change::Replace { old, new }) => (4, old, new),
        };
        out.push(kind);
        out.extend_from_slice(&a.to_be_bytes());
        out.extend_from_slice(&b.to_be_bytes());
        out.extend_from_slice(&(self.members.len() as u16).to_be_bytes());
        for m in &self.members {
            out.extend_from_slice(&m.id.to_be_bytes());
            out.push(m.status.code());
            // Bounded on entry (add_member, decode).
            out.push(m.addr.len() as u8);
            out.extend_from_slice(m.addr.as_bytes());
        }
        self.current.encode(out);
        match &self.target {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                t.encode(out);
                if let Some(bits) = &self.leaver_bits {
                    out.extend_from_slice(bits);
                }
            }
        }
        out.extend_from_slice(&self.term.to_be_bytes());
        out.extend_from_slice(&self.proposer.to_be_bytes());
    }

    /// The encoding as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decode a whole encoding. Every field is checked; bad input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<RingState, String> {
        if bytes.len() < HEADER_SIZE {
            return Err(format!("{} bytes, shorter than its header", bytes.len()));
        }
        // Format 1 (no ballot) is still read: a RING file written before ballots.
        if bytes[0] != RING_STATE_FORMAT && bytes[0] != 1 {
            return Err(format!(
                "format {} (this build reads 1 and {RING_STATE_FORMAT})",
                bytes[0]
            ));
        }
        if bytes[1] > 3 || bytes[2] != 0 || bytes[3] != 0 {
            return Err("reserved bits set".into());
        }
        let version = BigEndian::read_u64(&bytes[4..12]);
        let since = BigEndian::read_u64(&bytes[12..20]);
        let (a, b) = (
            BigEndian::read_u32(&bytes[21..25]),
            BigEndian::read_u32(&bytes[25..29]),
        );
        let change = match bytes[20] {
            0 => None,
            1 => Some(Change::Join { node: a }),
            2 => Some(Change::Leave { node: a }),
            3 => Some(Change::Remove { node: a }),
            4 => Some(Change::Replace { old: a, new: b }),
            k => return Err(format!("change kind {k}")),
        };
        let count = BigEndian::read_u16(&bytes[29..31]) as usize;
        if count > RING_MEMBERS_MAX {
            return Err(format!("{count} members, more than {RING_MEMBERS_MAX}"));
        }
        let mut at = HEADER_SIZE;
        let mut members: Vec<RingMember> = Vec::with_capacity(count);
        for _ in 0..count {
            let Some(head) = bytes.get(at..at + 6) else {
                return Err("truncated member list".into());
            };
            let id = BigEndian::read_u32(head);
            let status = MemberStatus::from_code(head[4])
                .ok_or_else(|| format!("member {id}: status {}", head[4]))?;
            let len = head[5] as usize;
            let Some(addr) = bytes.get(at + 6..at + 6 + len) else {
                return Err("truncated member address".into());
            };
            let addr = std::str::from_utf8(addr)
                .map_err(|_| format!("member {id}: address is not UTF-8"))?;
            if members.last().is_some_and(|m| m.id >= id) {
                return Err("member ids not strictly ascending".into());
            }
            members.push(RingMember {
                id,
                addr: addr.to_string(),
                status,
            });
            at += 6 + len;
        }
        let (current, used) =
            Ownership::decode_prefix(&bytes[at..]).map_err(|e| format!("current: {e}"))?;
        at += used;
        let target = match bytes.get(at) {
            Some(0) => {
                at += 1;
                None
            }
            Some(1) => {
                let (t, used) = Ownership::decode_prefix(&bytes[at + 1..])
                    .map_err(|e| format!("target: {e}"))?;
                at += 1 + used;
                if t.replicas() != current.replicas() {
                    return Err("target and current differ in N".into());
                }
                Some(t)
            }
            _ => return Err("bad or missing target flag".into()),
        };
        let leaver_bits = match change {
            Some(Change::Leave { .. }) => {
                let bits = bytes
                    .get(at..at + LEAVER_BITS_SIZE)
                    .ok_or("the leaver's partitions are missing")?;
                at += LEAVER_BITS_SIZE;
                Some(bits.to_vec())
            }
            _ => None,
        };
        let (term, proposer) = if bytes[0] == 1 {
            (0, 0)
        } else {
            let b = bytes.get(at..at + 12).ok_or("the ballot is missing")?;
            at += 12;
            (BigEndian::read_u64(&b[..8]), BigEndian::read_u32(&b[8..]))
        };
        if at != bytes.len() {
            return Err(format!("{} bytes after the ring state", bytes.len() - at));
        }
        if target.is_some() != change.is_some() {
            return Err("a target without a change, or a change without a target".into());
        }
        let s = RingState {
            version,
            paused: bytes[1] & 1 != 0,
            settled: bytes[1] & 2 != 0,
            since,
            change,
            members,
            current,
            target,
            leaver_bits,
            term,
            proposer,
        };
        // Every owner must be a listed, non-removed member.
        for o in std::iter::once(&s.current).chain(s.target.as_ref()) {
            if let Some(&n) = o.nodes().iter().find(|&&n| !s.is_member(n)) {
                return Err(format!("owner {n} is not a member"));
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests;
