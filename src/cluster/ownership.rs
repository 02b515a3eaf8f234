//! Ownership: the versioned placement of every ring partition, and how it changes when a node
//! joins or leaves. Pure: no I/O, no clock, no randomness beyond a fixed hash.
//!
//! An [`Ownership`] lists, for each of the [`PARTITION_COUNT`] partitions, its N distinct
//! owners in preference order (the first is the primary, the node clients route to first).
//! It is a *value with a version*: the leader decides a new one when membership changes, gossip
//! spreads it, nodes persist it, and clients fetch it (the RING opcode). [`crate::cluster::Ring`]
//! is a read-only view of one.
//!
//! # Why explicit owner lists, not tokens
//!
//! Consistent hashing with random vnodes (the first ring of dkv, Cassandra before its token
//! allocator) leaves nodes ±35% off their share with 128 vnodes and moves whatever the new
//! tokens happen to cover. Riak's claim (`riak_core_claim`: `wants_claim` / `choose_claim`)
//! and Scylla's tablet load balancer instead treat placement as an assignment that an
//! algorithm edits: a join *takes* replicas from the most loaded nodes, a leave *gives* the
//! leaver's replicas to the least loaded. Keeping the N owners of each partition as an
//! explicit list (like a tablet's replica set) makes "distinct owners", "balanced" and "moved
//! as little as possible" properties we can state and test exactly, rather than hope for.
//!
//! # The algorithm
//!
//! Counts: `load(n)` = placements (partition, slot) node n holds, `prim(n)` = partitions it is
//! primary of. With `k` nodes there are `P·N` placements and `P` primaries.
//!
//! * **Join of node j** (k → k+1 nodes). j must end with `q = ⌊P·N/(k+1)⌋` placements and
//!   `⌊P/(k+1)⌋` primaries; everything j gets is one move, and nothing else moves, so the
//!   number of moves is exactly `q`, the minimum any balanced placement needs. One step takes
//!   a slot of a partition j does not hold yet:
//!   1. while j lacks primaries: the partition whose primary D has the most primaries, and in
//!      it the owner E with the most placements (E may be D); j takes E's slot and then swaps
//!      slots with D, so j is primary and D keeps its copy (a reorder moves no data);
//!   2. then, while j lacks placements: the secondary slot whose owner has the most
//!      placements.
//!
//!   Ties go to the lowest spread rank of (j, partition). Taking always from the most loaded
//!   keeps the old nodes within one of each other, and j lands on the floor of the new share,
//!   so all nodes end at ⌊P·N/(k+1)⌋ or one more.
//! * **Leave of node l** (k → k-1, needs k-1 ≥ N). Only l's placements move: its primary slots
//!   first, then its secondary ones (each group in spread order), each to the node with the
//!   fewest placements that does not own the partition yet. Where l was primary, the owner of
//!   the partition with the fewest primaries becomes primary. Owner distinctness can leave a
//!   node two placements off another (measured by the tests); data never moves to fix that.
//! * **Primaries after a change** are evened out by reordering only: while a partition's
//!   primary has two more primaries than one of its secondaries, they swap slots.
//! * **Initial ring** of a cluster started with `--nodes`: the first N nodes (by id) hold every
//!   partition, primaries rotated (`owners(p)[i] = nodes[(p + i) mod N]`); then the other nodes
//!   join one by one in id order. So a cluster started with nodes 1..=5 has the very ring a
//!   cluster of 1..=3 reaches by joining 4 and then 5, and every node computes it alike.
//!
//! The *spread rank* of (node, partition) is `fmix64(salt ^ node << 32 ^ partition)`: a fixed
//! pseudo-random order, so a new node takes partitions scattered over the key space (not a
//! run of neighbours) and ties never depend on `HashMap` order or on id order alone.
//!
//! # Encoding (gossip, persistence, the RING reply)
//!
//! All integers big-endian. Owners are indexes into the node table, one byte each:
//!
//! ```text
//!  0        1        2        3        4                 12            14
//!  +--------+--------+--------+--------+-----------------+-------------+------------------+---------------------+
//!  | format | N      | k      | 0      | version u64     | partitions  | node ids         | owners              |
//!  | u8 = 1 | u8     | u8     | u8     |                 | u16 (= 256) | k × u32, ascend. | partitions × N × u8 |
//!  +--------+--------+--------+--------+-----------------+-------------+------------------+---------------------+
//!    owners of partition p: bytes [14 + 4k + p·N, 14 + 4k + (p+1)·N), each an index < k into
//!    the node ids, primary first.
//! ```
//!
//! 256 partitions, N = 3, k = 5: 14 + 20 + 768 = 802 bytes. [`Ownership::decode`] checks
//! every field (format, reserved byte, N and k in range, ids strictly ascending, indexes in
//! range, owners of a partition distinct, exact length) and returns an error, never panics.

use crate::hash::fmix64;
use crate::limits::{CLUSTER_NODES_MAX, PARTITION_COUNT, REPLICAS_MAX};
use crate::version::NODE_ID_MAX;

/// The format byte of the encoding this build writes and reads.
pub const OWNERSHIP_FORMAT: u8 = 1;

/// Bytes before the node table.
pub const OWNERSHIP_HEADER_SIZE: usize = 14;

/// The version of a cluster's first ring.
pub const INITIAL_VERSION: u64 = 1;

/// Largest encoding: header, the most nodes, the most owners.
pub const OWNERSHIP_ENCODED_SIZE_MAX: usize =
    OWNERSHIP_HEADER_SIZE + 4 * CLUSTER_NODES_MAX + PARTITION_COUNT * REPLICAS_MAX;

/// Mixed into spread ranks so they share no structure with the key hash.
const SPREAD_SALT: u64 = 0x6f77_6e65_7273_6870; // "ownershp"

// Owners travel as one-byte node indexes and the partition count as a u16.
const _: () = assert!(CLUSTER_NODES_MAX <= u8::MAX as usize);
const _: () = assert!(REPLICAS_MAX <= u8::MAX as usize);
const _: () = assert!(PARTITION_COUNT <= u16::MAX as usize);

/// Why an ownership cannot be built, changed or decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnershipError {
    /// No nodes, or more than [`CLUSTER_NODES_MAX`].
    NodeCount(usize),
    /// N is 0, above [`REPLICAS_MAX`], or above the node count.
    Replicas {
        /// N asked for.
        replicas: usize,
        /// Nodes there would be.
        nodes: usize,
    },
    /// A node id appears twice, or is above [`NODE_ID_MAX`].
    BadNode(u32),
    /// A join of a node that already owns.
    AlreadyMember(u32),
    /// A leave of a node that is not a member.
    NotMember(u32),
    /// The bytes are not an ownership encoding.
    Decode(String),
}

impl std::fmt::Display for OwnershipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnershipError::NodeCount(n) => write!(
                f,
                "a ring of {n} nodes: it must have between 1 and {CLUSTER_NODES_MAX}"
            ),
            OwnershipError::Replicas { replicas, nodes } => write!(
                f,
                "{replicas} replicas on {nodes} nodes: N must be between 1 and the node count \
                 (at most {REPLICAS_MAX})"
            ),
            OwnershipError::BadNode(id) => write!(
                f,
                "node id {id} is repeated or above the maximum of {NODE_ID_MAX}"
            ),
            OwnershipError::AlreadyMember(id) => write!(f, "node {id} already owns partitions"),
            OwnershipError::NotMember(id) => write!(f, "node {id} is not in the ring"),
            OwnershipError::Decode(why) => write!(f, "bad ring encoding: {why}"),
        }
    }
}

impl std::error::Error for OwnershipError {}

/// One replica placement that a change of ownership moves: partition `partition`'s copy on
/// `from` is to be held by `to` instead (what the change must stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Move {
    /// The partition.
    pub partition: usize,
    /// The owner that gives it up.
    pub from: u32,
    /// The owner that takes it.
    pub to: u32,
}

/// The owners of every partition, with a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    version: u64,
    replicas: usize,
    /// Member nodes, ascending.
    nodes: Vec<u32>,
    /// `PARTITION_COUNT × replicas` node ids: partition p's owners are
    /// `owners[p * replicas .. (p + 1) * replicas]`, primary first.
    owners: Vec<u32>,
}

/// The spread rank of `node` for `partition` (see the module doc).
fn spread_rank(node: u32, partition: usize) -> u64 {
    fmix64(SPREAD_SALT ^ ((node as u64) << 32) ^ partition as u64)
}

fn check_shape(nodes: usize, replicas: usize) -> Result<(), OwnershipError> {
    if nodes == 0 || nodes > CLUSTER_NODES_MAX {
        return Err(OwnershipError::NodeCount(nodes));
    }
    if replicas == 0 || replicas > REPLICAS_MAX || replicas > nodes {
        return Err(OwnershipError::Replicas { replicas, nodes });
    }
    Ok(())
}

/// Placement counts per member, indexed like `Ownership::nodes`.
struct Counts {
    load: Vec<usize>,
    prim: Vec<usize>,
}

impl Ownership {
    /// The first ring of a cluster of `nodes` (distinct ids, any order) with `replicas` copies
    /// of each partition, at version [`INITIAL_VERSION`] (algorithm in the module doc).
    pub fn initial(nodes: &[u32], replicas: usize) -> Result<Ownership, OwnershipError> {
        check_shape(nodes.len(), replicas)?;
        let mut sorted = nodes.to_vec();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[0] == w[1] {
                return Err(OwnershipError::BadNode(w[0]));
            }
        }
        if let Some(&id) = sorted.iter().find(|&&id| id > NODE_ID_MAX) {
            return Err(OwnershipError::BadNode(id));
        }
        let base = &sorted[..replicas];
        let mut owners = Vec::with_capacity(PARTITION_COUNT * replicas);
        for p in 0..PARTITION_COUNT {
            for i in 0..replicas {
                owners.push(base[(p + i) % replicas]);
            }
        }
        let mut o = Ownership {
            version: INITIAL_VERSION,
            replicas,
            nodes: base.to_vec(),
            owners,
        };
        for &id in &sorted[replicas..] {
            o.join_in_place(id);
        }
        o.version = INITIAL_VERSION;
        Ok(o)
    }

    /// The ring's version: a change of ownership always has a higher one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Copies of each partition (N).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The member nodes, ascending.
    pub fn nodes(&self) -> &[u32] {
        &self.nodes
    }

    /// The owners of partition `p`, primary first.
    pub fn owners(&self, p: usize) -> &[u32] {
        &self.owners[p * self.replicas..(p + 1) * self.replicas]
    }

    /// Placements (partition copies) each member holds, in [`Ownership::nodes`] order.
    pub fn loads(&self) -> Vec<usize> {
        self.counts().load
    }

    /// Partitions each member is primary of, in [`Ownership::nodes`] order.
    pub fn primaries(&self) -> Vec<usize> {
        self.counts().prim
    }

    fn index_of(&self, node: u32) -> Option<usize> {
        self.nodes.binary_search(&node).ok()
    }

    fn counts(&self) -> Counts {
        let mut c = Counts {
            load: vec![0; self.nodes.len()],
            prim: vec![0; self.nodes.len()],
        };
        for p in 0..PARTITION_COUNT {
            for (slot, &n) in self.owners(p).iter().enumerate() {
                // Every owner is a member: an invariant of every constructor and of decode.
                let i = self.index_of(n).expect("owners are members");
                c.load[i] += 1;
                if slot == 0 {
                    c.prim[i] += 1;
                }
            }
        }
        c
    }

    /// The ownership after `node` joins, one version up: it takes ⌊P·N/(k+1)⌋ placements (and
    /// its share of primaries) from the most loaded nodes, and nothing else moves.
    pub fn plan_join(&self, node: u32) -> Result<Ownership, OwnershipError> {
        if self.index_of(node).is_some() {
            return Err(OwnershipError::AlreadyMember(node));
        }
        if node > NODE_ID_MAX {
            return Err(OwnershipError::BadNode(node));
        }
        check_shape(self.nodes.len() + 1, self.replicas)?;
        let mut next = self.clone();
        next.join_in_place(node);
        next.version = self.version + 1;
        Ok(next)
    }

    /// The ownership after `node` leaves, one version up: only its placements move, each to
    /// the least loaded node that does not own the partition yet.
    pub fn plan_leave(&self, node: u32) -> Result<Ownership, OwnershipError> {
        let Some(gone) = self.index_of(node) else {
            return Err(OwnershipError::NotMember(node));
        };
        check_shape(self.nodes.len() - 1, self.replicas)?;
        let counts = self.counts();
        let mut next = self.clone();
        next.version = self.version + 1;
        next.nodes.remove(gone);
        let mut load = counts.load;
        let mut prim = counts.prim;
        load.remove(gone);
        prim.remove(gone);

        // The leaver's slots, primaries first, each group in spread order.
        let mut slots: Vec<(bool, u64, usize, usize)> = Vec::new();
        for p in 0..PARTITION_COUNT {
            if let Some(slot) = self.owners(p).iter().position(|&n| n == node) {
                slots.push((slot != 0, spread_rank(node, p), p, slot));
            }
        }
        slots.sort_unstable();
        for (secondary, _, p, slot) in slots {
            let row = p * next.replicas;
            let owners = next.owners(p).to_vec();
            let pick = (0..next.nodes.len())
                .filter(|&i| !owners.contains(&next.nodes[i]))
                .min_by_key(|&i| (load[i], prim[i], spread_rank(next.nodes[i], p)))
                // k-1 ≥ N members, of which at most N-1 other owners: one is always eligible.
                .expect("a leave keeps at least N members");
            load[pick] += 1;
            next.owners[row + slot] = next.nodes[pick];
            if !secondary {
                // The new primary is whichever owner has the fewest primaries: the receiver,
                // or a remaining owner promoted in its place (a swap of slots moves no data).
                let promote = (0..next.replicas)
                    .min_by_key(|&s| {
                        let x = next.owners[row + s];
                        let i = next.index_of(x).expect("owners are members");
                        (prim[i], spread_rank(x, p))
                    })
                    .expect("N ≥ 1");
                next.owners.swap(row, row + promote);
                let i = next.index_of(next.owners[row]).expect("owners are members");
                prim[i] += 1;
            }
        }
        next.balance_primaries();
        Ok(next)
    }

    /// Even out primaries by reordering owners, which moves no data: while some partition's
    /// primary A has at least two more primaries than one of its secondary owners B, swap
    /// them (the swap with the largest gap first, then the lowest partition). Each swap lowers
    /// the sum of squared primary counts, so the loop ends; [`PARTITION_COUNT`] × N swaps
    /// bound it regardless.
    fn balance_primaries(&mut self) {
        let mut prim = self.counts().prim;
        let n = self.replicas;
        for _ in 0..PARTITION_COUNT * n {
            let mut best: Option<(usize, usize, usize)> = None;
            for p in 0..PARTITION_COUNT {
                let a = self
                    .index_of(self.owners[p * n])
                    .expect("owners are members");
                for slot in 1..n {
                    let b = self
                        .index_of(self.owners[p * n + slot])
                        .expect("owners are members");
                    let gap = prim[a].saturating_sub(prim[b]);
                    if gap >= 2 && best.is_none_or(|(g, _, _)| gap > g) {
                        best = Some((gap, p, slot));
                    }
                }
            }
            let Some((_, p, slot)) = best else {
                return;
            };
            let a = self
                .index_of(self.owners[p * n])
                .expect("owners are members");
            let b = self
                .index_of(self.owners[p * n + slot])
                .expect("owners are members");
            self.owners.swap(p * n, p * n + slot);
            prim[a] -= 1;
            prim[b] += 1;
        }
    }

    /// Add `node` to the members and give it its share (the join of the module doc), keeping
    /// the version.
    fn join_in_place(&mut self, node: u32) {
        let counts = self.counts();
        let pos = self.nodes.partition_point(|&n| n < node);
        self.nodes.insert(pos, node);
        let mut load = counts.load;
        let mut prim = counts.prim;
        load.insert(pos, 0);
        prim.insert(pos, 0);
        let k = self.nodes.len();
        let want_load = PARTITION_COUNT * self.replicas / k;
        let want_prim = PARTITION_COUNT / k;
        let n = self.replicas;

        // One step takes a placement for the new node from the most loaded owner E of some
        // partition p it does not hold yet (E's slot gets the new node). In the primary phase
        // the new node also becomes p's primary: it swaps slots with p's primary D, which keeps
        // its copy (no data moves for D), so load comes off the most loaded node and the
        // primary off the node with the most primaries, not necessarily the same one.
        let step = |o: &mut Ownership, load: &mut [usize], prim: &mut [usize], primary: bool| {
            let mut best: Option<((usize, usize, u64), usize, usize)> = None;
            for p in 0..PARTITION_COUNT {
                let owners = o.owners(p);
                if owners.contains(&node) {
                    continue;
                }
                let d = o.index_of(owners[0]).expect("owners are members");
                let first = usize::from(!primary);
                for (slot, &e) in owners.iter().enumerate().skip(first) {
                    let e = o.index_of(e).expect("owners are members");
                    let key = if primary {
                        (
                            usize::MAX - prim[d],
                            usize::MAX - load[e],
                            spread_rank(node, p),
                        )
                    } else {
                        (usize::MAX - load[e], 0, spread_rank(node, p))
                    };
                    if best.is_none_or(|(b, _, _)| key < b) {
                        best = Some((key, p, slot));
                    }
                }
            }
            let Some((_, p, slot)) = best else {
                return false;
            };
            let row = p * n;
            let e = o
                .index_of(o.owners[row + slot])
                .expect("owners are members");
            let d = o.index_of(o.owners[row]).expect("owners are members");
            o.owners[row + slot] = node;
            load[e] -= 1;
            load[pos] += 1;
            if primary {
                o.owners.swap(row, row + slot);
                prim[d] -= 1;
                prim[pos] += 1;
            }
            true
        };
        while prim[pos] < want_prim && step(self, &mut load, &mut prim, true) {}
        while load[pos] < want_load && step(self, &mut load, &mut prim, false) {}
        self.balance_primaries();
    }

    /// What changing from `from` to `to` moves: for each partition, each owner of `to` that
    /// was not an owner in `from`, paired with an owner of `from` that is not one in `to` (in
    /// slot order). Ascending by partition. Both must have the same N.
    pub fn moves(from: &Ownership, to: &Ownership) -> Vec<Move> {
        assert_eq!(from.replicas, to.replicas, "moves between rings of one N");
        let mut out = Vec::new();
        for p in 0..PARTITION_COUNT {
            let (a, b) = (from.owners(p), to.owners(p));
            let gone = a.iter().filter(|x| !b.contains(x));
            let came = b.iter().filter(|x| !a.contains(x));
            for (&f, &t) in gone.zip(came) {
                out.push(Move {
                    partition: p,
                    from: f,
                    to: t,
                });
            }
        }
        out
    }

    /// The ownership after `new` takes every placement of `old` (a node replaced by another
    /// with the same share: exactly `old`'s placements move, and nothing else), one version up.
    pub fn plan_replace(&self, old: u32, new: u32) -> Result<Ownership, OwnershipError> {
        if self.index_of(old).is_none() {
            return Err(OwnershipError::NotMember(old));
        }
        if self.index_of(new).is_some() {
            return Err(OwnershipError::AlreadyMember(new));
        }
        if new > NODE_ID_MAX {
            return Err(OwnershipError::BadNode(new));
        }
        let mut next = self.clone();
        for n in next.owners.iter_mut().filter(|n| **n == old) {
            *n = new;
        }
        next.nodes.retain(|&n| n != old);
        let at = next.nodes.binary_search(&new).unwrap_err();
        next.nodes.insert(at, new);
        next.version = self.version + 1;
        Ok(next)
    }

    /// This ownership with partition `p`'s owners replaced by `owners` (N distinct nodes,
    /// primary first) at `version`: one partition's flip when a move completes. The member
    /// table follows (a node that owns nothing any more leaves it, a new owner enters it).
    pub fn with_owners(
        &self,
        p: usize,
        owners: &[u32],
        version: u64,
    ) -> Result<Ownership, OwnershipError> {
        if p >= PARTITION_COUNT || owners.len() != self.replicas {
            return Err(OwnershipError::Replicas {
                replicas: owners.len(),
                nodes: self.nodes.len(),
            });
        }
        for (i, &n) in owners.iter().enumerate() {
            if n > NODE_ID_MAX || owners[..i].contains(&n) {
                return Err(OwnershipError::BadNode(n));
            }
        }
        let mut next = self.clone();
        next.owners[p * self.replicas..(p + 1) * self.replicas].copy_from_slice(owners);
        let mut nodes = next.owners.clone();
        nodes.sort_unstable();
        nodes.dedup();
        check_shape(nodes.len(), self.replicas)?;
        next.nodes = nodes;
        next.version = version;
        Ok(next)
    }

    /// Whether `self` and `other` place every partition alike (versions aside).
    pub fn same_placement(&self, other: &Ownership) -> bool {
        self.replicas == other.replicas && self.owners == other.owners
    }

    /// This ownership with another version (the leader stamps a plan it commits).
    pub fn with_version(mut self, version: u64) -> Ownership {
        self.version = version;
        self
    }

    /// Append the encoding (module doc) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(OWNERSHIP_FORMAT);
        out.push(self.replicas as u8);
        out.push(self.nodes.len() as u8);
        out.push(0);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&(PARTITION_COUNT as u16).to_be_bytes());
        for &n in &self.nodes {
            out.extend_from_slice(&n.to_be_bytes());
        }
        for &n in &self.owners {
            // Owners are members (invariant), and members fit a byte index (const assert).
            out.push(self.index_of(n).expect("owners are members") as u8);
        }
    }

    /// The encoding as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_size());
        self.encode(&mut out);
        out
    }

    /// Bytes [`Ownership::encode`] appends.
    pub fn encoded_size(&self) -> usize {
        OWNERSHIP_HEADER_SIZE + 4 * self.nodes.len() + PARTITION_COUNT * self.replicas
    }

    /// Decode an encoding at the start of `bytes`; returns it and the bytes it used (a RING
    /// reply carries more after it). Every field is checked; bad input is an error.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Ownership, usize), OwnershipError> {
        let bad = |why: String| Err(OwnershipError::Decode(why));
        if bytes.len() < OWNERSHIP_HEADER_SIZE {
            return bad(format!("{} bytes, shorter than its header", bytes.len()));
        }
        if bytes[0] != OWNERSHIP_FORMAT {
            return bad(format!(
                "format {} (this build reads {OWNERSHIP_FORMAT})",
                bytes[0]
            ));
        }
        let replicas = bytes[1] as usize;
        let k = bytes[2] as usize;
        if bytes[3] != 0 {
            return bad("reserved byte is not 0".into());
        }
        if let Err(e) = check_shape(k, replicas) {
            return bad(e.to_string());
        }
        let version = u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"));
        let partitions = u16::from_be_bytes([bytes[12], bytes[13]]) as usize;
        if partitions != PARTITION_COUNT {
            return bad(format!(
                "{partitions} partitions (this build has {PARTITION_COUNT})"
            ));
        }
        let size = OWNERSHIP_HEADER_SIZE + 4 * k + PARTITION_COUNT * replicas;
        if bytes.len() < size {
            return bad(format!("{} bytes, {size} expected", bytes.len()));
        }
        let mut nodes = Vec::with_capacity(k);
        for i in 0..k {
            let at = OWNERSHIP_HEADER_SIZE + 4 * i;
            let id = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            if id > NODE_ID_MAX || nodes.last().is_some_and(|&last| last >= id) {
                return bad(format!("node id {id} out of range or not ascending"));
            }
            nodes.push(id);
        }
        let table = &bytes[OWNERSHIP_HEADER_SIZE + 4 * k..size];
        let mut owners = Vec::with_capacity(table.len());
        for (p, row) in table.chunks_exact(replicas).enumerate() {
            for (slot, &ix) in row.iter().enumerate() {
                if ix as usize >= k {
                    return bad(format!("partition {p}: node index {ix} of {k} nodes"));
                }
                if row[..slot].contains(&ix) {
                    return bad(format!("partition {p}: an owner appears twice"));
                }
                owners.push(nodes[ix as usize]);
            }
        }
        Ok((
            Ownership {
                version,
                replicas,
                nodes,
                owners,
            },
            size,
        ))
    }

    /// Decode exactly one encoding (nothing may follow it).
    pub fn decode(bytes: &[u8]) -> Result<Ownership, OwnershipError> {
        let (o, used) = Ownership::decode_prefix(bytes)?;
        if used != bytes.len() {
            return Err(OwnershipError::Decode(format!(
                "{} bytes after the ring",
                bytes.len() - used
            )));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(k: u32) -> Vec<u32> {
        (1..=k).collect()
    }

    fn assert_valid(o: &Ownership) {
        for p in 0..PARTITION_COUNT {
            let mut s = o.owners(p).to_vec();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), o.replicas(), "partition {p}: {:?}", o.owners(p));
            for n in &s {
                assert!(o.nodes().contains(n));
            }
        }
    }

    /// Largest minus smallest of `v`.
    fn spread(v: &[usize]) -> usize {
        v.iter().max().unwrap() - v.iter().min().unwrap()
    }

    #[test]
    fn initial_is_valid_balanced_and_order_free() {
        for n in 1..=REPLICAS_MAX.min(5) {
            for k in n as u32..=32 {
                let o = Ownership::initial(&ids(k), n).unwrap();
                assert_valid(&o);
                assert_eq!(o.version(), INITIAL_VERSION);
                assert!(spread(&o.loads()) <= 1, "N={n} k={k}: {:?}", o.loads());
                assert!(
                    spread(&o.primaries()) <= 1,
                    "N={n} k={k}: {:?}",
                    o.primaries()
                );
                let mut rev = ids(k);
                rev.reverse();
                assert_eq!(Ownership::initial(&rev, n).unwrap(), o);
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Ownership::initial(&[], 1).is_err());
        assert!(Ownership::initial(&[1, 2], 3).is_err());
        assert!(Ownership::initial(&[1, 1, 2], 1).is_err());
        assert!(Ownership::initial(&[1, 2], 0).is_err());
        let o = Ownership::initial(&[1, 2, 3], 3).unwrap();
        assert_eq!(
            o.plan_leave(3),
            Err(OwnershipError::Replicas {
                replicas: 3,
                nodes: 2
            })
        );
        assert_eq!(o.plan_leave(9), Err(OwnershipError::NotMember(9)));
        assert_eq!(o.plan_join(2), Err(OwnershipError::AlreadyMember(2)));
    }

    /// Joins 3 → 4 → ... → 32: exactly ⌊P·N/(k+1)⌋ placements move (the minimum: the new
    /// node must end with at least that many), all to the new node, and every node ends within
    /// one placement and one primary of every other.
    #[test]
    fn joins_move_the_minimum_and_stay_balanced() {
        for n in 1..=3 {
            let mut o = Ownership::initial(&ids(3), n).unwrap();
            let mut moved = Vec::new();
            for j in 4..=32u32 {
                let next = o.plan_join(j).unwrap();
                assert_valid(&next);
                assert_eq!(next.version(), o.version() + 1);
                let moves = Ownership::moves(&o, &next);
                let minimum = PARTITION_COUNT * n / j as usize;
                assert_eq!(moves.len(), minimum, "N={n} join of {j}");
                assert!(moves.iter().all(|m| m.to == j));
                moved.push(moves.len());
                assert!(
                    spread(&next.loads()) <= 1,
                    "N={n} j={j}: {:?}",
                    next.loads()
                );
                assert!(
                    spread(&next.primaries()) <= 1,
                    "N={n} j={j}: {:?}",
                    next.primaries()
                );
                o = next;
            }
            eprintln!("N={n}: placements moved by the joins 3→4 … 31→32: {moved:?}");
        }
    }

    /// Leaves 32 → 31 → ... → N+1 (highest, lowest and middle ids in turn): only the leaver's
    /// placements move, and loads stay within two (owner distinctness can cost one).
    #[test]
    fn leaves_move_only_the_leaver() {
        for n in 1..=3 {
            let mut o = Ownership::initial(&ids(32), n).unwrap();
            let mut worst = 0;
            let mut worst_prim = 0;
            let mut step = 0;
            while o.nodes().len() > n.max(3) {
                let members = o.nodes().to_vec();
                let l = match step % 3 {
                    0 => members[members.len() - 1],
                    1 => members[0],
                    _ => members[members.len() / 2],
                };
                step += 1;
                let held = o.loads()[o.index_of(l).unwrap()];
                let next = o.plan_leave(l).unwrap();
                assert_valid(&next);
                let moves = Ownership::moves(&o, &next);
                assert_eq!(moves.len(), held, "N={n} leave of {l}");
                assert!(moves.iter().all(|m| m.from == l));
                worst = worst.max(spread(&next.loads()));
                worst_prim = worst_prim.max(spread(&next.primaries()));
                assert!(spread(&next.loads()) <= 2, "N={n} -{l}: {:?}", next.loads());
                assert!(
                    spread(&next.primaries()) <= 2,
                    "N={n} -{l}: {:?}",
                    next.primaries()
                );
                o = next;
            }
            eprintln!(
                "N={n}: worst spread after a leave: placements {worst}, primaries {worst_prim}"
            );
        }
    }

    #[test]
    fn a_joined_ring_equals_the_initial_one() {
        let grown = Ownership::initial(&[1, 2, 3], 3)
            .unwrap()
            .plan_join(4)
            .unwrap()
            .plan_join(5)
            .unwrap();
        let direct = Ownership::initial(&[1, 2, 3, 4, 5], 3).unwrap();
        assert_eq!(grown.with_version(INITIAL_VERSION), direct);
    }

    #[test]
    fn encoding_round_trips_and_rejects_bad_bytes() {
        for (k, n) in [
            (1, 1),
            (3, 3),
            (5, 3),
            (32, 7),
            (CLUSTER_NODES_MAX as u32, 2),
        ] {
            let o = Ownership::initial(&ids(k), n)
                .unwrap()
                .with_version(0xdead_beef);
            let bytes = o.to_bytes();
            assert_eq!(bytes.len(), o.encoded_size());
            assert!(bytes.len() <= OWNERSHIP_ENCODED_SIZE_MAX);
            assert_eq!(Ownership::decode(&bytes).unwrap(), o);
            // Every truncation and every single-byte corruption is an error or a valid ring,
            // never a panic.
            for cut in 0..bytes.len() {
                assert!(Ownership::decode(&bytes[..cut]).is_err());
            }
            for i in 0..bytes.len().min(64) {
                let mut b = bytes.clone();
                b[i] ^= 0xff;
                if let Ok(d) = Ownership::decode(&b) {
                    assert_valid(&d);
                }
            }
        }
        let o = Ownership::initial(&[1, 2, 3], 2).unwrap();
        let mut b = o.to_bytes();
        b.push(0);
        assert!(Ownership::decode(&b).is_err());
        let mut b = o.to_bytes();
        let at = OWNERSHIP_HEADER_SIZE + 12;
        b[at + 1] = b[at]; // partition 0's second owner = its first
        assert!(Ownership::decode(&b).is_err());
    }
}
