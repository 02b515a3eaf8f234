//! Siblings mode (`--conflicts siblings`) at the coordinating node: a client's PUT or DELETE
//! with the causal context it read becomes the key's new causal state *here*, at a replica
//! of the key, and that state is what the coordinator replicates (replicas merge it).
//!
//! Why here: a write's dot is `(this node, counter)`, and the version vector's entry for this
//! node claims every dot of this node up to it. That claim is true only if every earlier dot
//! of this node for the key is in the state the new one is made from, so the dot must be made
//! where this node's own writes of the key all are: its own copy, updated first (before any
//! frame leaves, so a refused local write sends nothing). The counter is the write's HLC
//! version, which grows across restarts (the clock ceiling), so a node that lost unsynced
//! writes never reuses a dot. A node that holds no replica of the key does not coordinate
//! siblings-mode writes (UNAVAILABLE, naming the replicas): a client routes them by the ring
//! map (protocol.md § 11.1).

use super::{alive_in, ClusterNode, Output};
use crate::causal::{CausalError, NewValue, VersionVector};
use crate::cluster::coordinator::Outcome;
use crate::protocol::{Consistency, Status};
use crate::storage::Store;

impl<C> ClusterNode<C> {
    fn reply_failed(&mut self, ctx: C, status: Status, message: String) {
        self.outputs.push_back(Output::Reply {
            ctx,
            outcome: Outcome::Failed { status, message },
        });
    }

    /// Siblings mode: start a client write of `value` (`None`: a delete) to `key` carrying
    /// the causal `context` the client read (its encoding; empty: none).
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
    ) {
        let seen = match VersionVector::decode_context(context) {
            Ok(vv) => vv,
            Err(e) => {
                return self.reply_failed(ctx, Status::BadRequest, format!("causal context: {e}"))
            }
        };
        if let Some(why) = self.clock_refusal(now_ms) {
            self.replica_stats.clock_refused += 1;
            return self.reply_failed(ctx, Status::ClockOffset, why);
        }
        if !self.ring_lease_valid(now_ms) {
            let held = super::lease::Held {
                key,
                value,
                expires_at_ms,
                consistency,
                write: true,
                context: Some(context),
            };
            self.hold_request(now_ms, ctx, held);
            return;
        }
        let me = self.config.node_id;
        let p = crate::hash::partition_of(key);
        let mut set = std::mem::take(&mut self.write_set);
        let pending = self.ring.write_set(p, &mut set);
        if !set.contains(&me) {
            let owners: Vec<String> = set.iter().map(u32::to_string).collect();
            self.write_set = set;
            return self.reply_failed(
                ctx,
                Status::Unavailable,
                format!(
                    "siblings mode: node {me} holds no replica of this key; send the write to \
                     one of nodes {} (the ring map, protocol.md § 11.1, says where)",
                    owners.join(", ")
                ),
            );
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
        self.coordinator.start_causal_write(
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
        self.write_set = set;
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
        version: crate::version::Version,
        value: Option<&[u8]>,
        expires_at_ms: u64,
    ) -> Result<(Vec<u8>, u64), (Status, String)> {
        let storage = |e: crate::storage::StoreError| (Status::StorageError, e.to_string());
        let held = store.get(key).map_err(storage)?;
        let mut state = crate::cluster::siblings::state_of(key, held.as_ref()).map_err(storage)?;
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
        // (The record never expires: see `siblings::RECORD_EXPIRY`.)
        let expires = crate::cluster::siblings::RECORD_EXPIRY;
        // This copy first: a write its own replica refuses sends nothing (see the module doc).
        // Written out now, not left in the turn's buffer: if the turn's one write failed, the
        // store would undo this copy while the REPLICATEs went out, and this node's next dot
        // for the key, made from a copy without this one, would claim it superseded, so
        // replicas merging that state would drop it (kvsim --conflicts siblings seed 267: an
        // acknowledged PUT lost after a disk-full write failure on its coordinator).
        let w = crate::storage::Write {
            key,
            value: Some(&bytes),
            version,
            expires_at_ms: expires,
            causal: true,
        };
        self.aae.tracked(store).apply(w).map_err(storage)?;
        Ok((bytes, expires))
    }
}
