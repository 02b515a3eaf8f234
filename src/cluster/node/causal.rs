//! Siblings mode (`--conflicts siblings`) at the coordinating node: a client's PUT or DELETE
//! with the causal context it read becomes the key's new causal state *here*, at a replica
//! of the key, and that state is what the coordinator replicates (replicas merge it).
//!
//! Why here: a write's dot is `(this node, counter)`, and the version vector's entry for this
//! node claims every dot of this node up to it. That claim is true only if every earlier dot
//! of this node for the key is in the state the new one is made from, so the dot must be made
//! where this node's own writes of the key all are: its own copy, updated first (before any
//! frame leaves, so a refused local write sends nothing). The counter is the write's HLC
//! version, which grows across restarts (the clock ceiling), so dots are never reused. A node
//! that is not a current owner of the key (a pending owner's copy may be incomplete) hands the
//! write to one that is (COORDINATE, [`crate::cluster::peer::coordinate`]), first alive in
//! preference order, and answers with its outcome; a handed-over write is never handed on
//! (UNAVAILABLE).
//!
//! The limit of this scheme: the vector entry of a node's new dot claims every earlier dot of
//! that node, so a replica that *lost* writes it coordinated (unsynced writes under `--sync
//! interval|never` after an operating-system crash or power loss; `kill -9` loses nothing)
//! and then coordinates a write of the same key would supersede its lost writes' copies on
//! the other replicas. Riak's answer is a fresh actor id after such a loss (vnode epochs);
//! here, run siblings mode with `--sync always` where that matters.

use super::{alive_in, ClusterNode, Output};
use crate::causal::{CausalError, CausalState, NewValue, VersionVector};
use crate::cluster::coordinator::Outcome;
use crate::cluster::peer::coordinate::Coordinate;
use crate::protocol::{Consistency, Status};
use crate::storage::Store;
use crate::version::Version;

impl<C> ClusterNode<C> {
    fn reply_failed(&mut self, ctx: C, status: Status, message: String) {
        self.outputs.push_back(Output::Reply {
            ctx,
            outcome: Outcome::Failed { status, message },
        });
    }

    /// Siblings mode: start a client write of `value` (`None`: a delete) to `key` carrying
    /// the causal `context` the client read (its encoding; empty: none). `handed`: another
    /// node handed it over (COORDINATE): it is coordinated here or refused, never passed on.
    #[allow(clippy::too_many_arguments)]
    pub fn causal_write(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        ctx: C,
        key: &[u8],
        context: &[u8],
        value: Option<&[u8]>,
        expires_at_ms: u64,
        consistency: Consistency,
        handed: bool,
    ) {
        let seen = match VersionVector::decode_context(context) {
            Ok(vv) => vv,
            Err(e) => {
                return self.reply_failed(ctx, Status::BadRequest, format!("causal context: {e}"))
            }
        };
        if !self.ring_lease_valid(now_ms) {
            let held = super::lease::Held {
                key,
                value,
                expires_at_ms,
                consistency,
                write: true,
                context: Some(context),
                handed,
            };
            self.hold_request(now_ms, ctx, held);
            return;
        }
        let me = self.config.node_id;
        let p = crate::hash::partition_of(key);
        let mut set = std::mem::take(&mut self.write_set);
        let pending = self.ring.write_set(p, &mut set);
        // Only a current owner coordinates: a pending owner's copy may still lack some of its
        // own earlier dots (a partition moving back to a node that held it before), which the
        // new dot's vector entry would claim to have seen, dropping them everywhere.
        if !self.ring.preference_list(p).contains(&me) {
            let request = Coordinate {
                key,
                consistency,
                expires_at_ms,
                context,
                value,
            };
            self.hand_over(now_ms, store, ctx, p, &set, &request, handed);
            self.write_set = set;
            return;
        }
        // The max-offset rule, as for `write`: this node issues the version.
        if let Some(why) = self.clock_refusal(now_ms) {
            self.replica_stats.clock_refused += 1;
            self.write_set = set;
            return self.reply_failed(ctx, Status::ClockOffset, why);
        }
        // Refused for want of replicas (or room) before this copy is written: UNAVAILABLE and
        // OVERLOADED promise that nothing was written (kvsim --conflicts siblings seed 5: the
        // state made here used to stay, and spread, under an UNAVAILABLE answer).
        let required = self.required(consistency) + pending;
        let (role, membership) = (&self.role, &self.membership);
        let alive = |n| alive_in(role, membership, me, n);
        if let Some((status, message)) = self.coordinator.refusal(&set, &alive, required) {
            self.write_set = set;
            return self.reply_failed(ctx, status, message);
        }
        // The version, above every tombstone horizon adopted here (as for `write`).
        let ahead = self.ahead_ms_max();
        crate::cluster::coordinator::observe(
            self.coordinator.hlc_mut(),
            now_ms,
            self.aae.horizon_max(),
            ahead,
        );
        let version = self.coordinator.hlc_mut().issue(now_ms);
        let made = self.made_state(store, key, &seen, me, version, value, expires_at_ms);
        let state = match made {
            Ok(state) => state,
            Err((status, message)) => {
                self.write_set = set;
                return self.reply_failed(ctx, status, message);
            }
        };
        let (role, membership) = (&self.role, &self.membership);
        let started = self.coordinator.start_causal_write(
            now_ms,
            ctx,
            key,
            state.0,
            state.1,
            version,
            &set,
            &|n| alive_in(role, membership, me, n),
            required,
        );
        // Its own copy, applied above, waits for the turn's one write like a replica's: if that
        // fails, the write is aborted whole (`Coordinator::abort_causal`).
        if let Some(id) = started {
            if store.unflushed() {
                self.local_unflushed.push(id);
            }
        }
        self.write_set = set;
        self.drain(now_ms, store);
    }

    /// This node is not a current owner of the key (partition `p`, write set `set`): hand the
    /// write to the first alive current owner, in preference order.
    #[allow(clippy::too_many_arguments)]
    fn hand_over(
        &mut self,
        now_ms: u64,
        store: &mut dyn Store,
        ctx: C,
        p: usize,
        set: &[u32],
        request: &Coordinate<'_>,
        handed: bool,
    ) {
        let me = self.config.node_id;
        let names: Vec<String> = set.iter().map(u32::to_string).collect();
        if handed {
            // Our ring and the sender's disagree: the sender retries once it has ours.
            let why = format!(
                "siblings mode: node {me} is not a current owner of this key by its ring \
                 (version {}); the replicas are nodes {}",
                self.ring.version(),
                names.join(", ")
            );
            return self.reply_failed(ctx, Status::Unavailable, why);
        }
        let (role, membership) = (&self.role, &self.membership);
        let owners = self.ring.preference_list(p);
        let to = (owners.iter())
            .copied()
            .find(|&n| n != me && alive_in(role, membership, me, n));
        let Some(to) = to else {
            let why =
                format!(
                "siblings mode: none of the key's owners (nodes {}) is alive, and only an owner \
                 coordinates its writes",
                owners.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            );
            return self.reply_failed(ctx, Status::Unavailable, why);
        };
        self.coordinator.start_forward(now_ms, ctx, to, request);
        self.drain(now_ms, store);
    }

    /// The key's new state, made from this replica's own and applied to it: `(encoding,
    /// expiry)`, or the reply's status and message when the write is refused (nothing written).
    #[allow(clippy::too_many_arguments)]
    fn made_state(
        &mut self,
        store: &mut dyn Store,
        key: &[u8],
        seen: &VersionVector,
        me: u32,
        version: Version,
        value: Option<&[u8]>,
        expires_at_ms: u64,
    ) -> Result<(Vec<u8>, u64), (Status, String)> {
        let storage = |e: crate::storage::StoreError| (Status::StorageError, e.to_string());
        let held = store.get(key).map_err(storage)?;
        let mut state = crate::cluster::siblings::state_of(key, held.as_ref()).map_err(storage)?;
        let near_before = crate::cluster::siblings::near_limit(&state);
        let write = value.map(|v| NewValue {
            version: version.0,
            expires_at_ms,
            value: v.to_vec(),
        });
        let actor = u16::try_from(me).expect("node ids fit the version's 10 bits");
        if let Err(e) = state.update_at(seen, actor, write, version.0) {
            let status = match e {
                CausalError::TooManySiblings { .. } | CausalError::StateTooLarge { .. } => {
                    Status::TooManySiblings
                }
                CausalError::ContextTooLarge { .. } | CausalError::Malformed(_) => {
                    Status::BadRequest
                }
            };
            return Err((status, e.to_string()));
        }
        let mut bytes = Vec::with_capacity(state.encoded_len());
        state.encode(&mut bytes);
        let expires = crate::cluster::siblings::record_expiry(&state);
        // This copy first: a write its own replica refuses sends nothing (see the module doc).
        // It waits in the turn's buffer for the turn's one write; if that fails, the store
        // undoes it and the write is aborted whole, its frames dropped before they leave
        // (`Coordinator::abort_causal`): otherwise this node's next dot for the key, made
        // from a copy without this one, would claim it superseded, and replicas merging that
        // state would drop it (kvsim --conflicts siblings seed 267).
        // The record's version is above the held one's (which a peer's clock may have set
        // ahead of ours), so that the store takes it; the sibling keeps the write's version.
        let record_version = crate::cluster::siblings::record_version(version, held.as_ref());
        let w = crate::storage::Write {
            key,
            value: Some(&bytes),
            version: record_version,
            expires_at_ms: expires,
            causal: true,
        };
        if held.is_none() && state == CausalState::empty() {
            // A DELETE with an empty context of a key held nowhere here: nothing to write (an
            // empty state stored beside replicas holding nothing would differ from them
            // forever, since merging changes neither; the replicas skip it alike).
            return Ok((bytes, expires));
        }
        let tree = crate::cluster::siblings::tree_meta(&state, record_version);
        let near = (near_before, crate::cluster::siblings::near_limit(&state));
        self.aae
            .tracked(store)
            .buffered()
            .apply_made(w, tree, near)
            .map_err(storage)?;
        Ok((bytes, expires))
    }
}
