//! Running a keyed request against the shard's own store: GET, PUT, DELETE and LOCAL_GET on
//! the single-node path (a clustered shard hands GET/PUT/DELETE to its coordinator, see
//! `cluster.rs`), and the replies that must wait for the end of the turn.
//!
//! **A reply leaves only after the write holding its record returned.** The store buffers
//! the records of a turn and writes them in one call ([`crate::storage::Store::flush`]), so a
//! write's acknowledgement is held (as a reply record, whatever the sync policy) until
//! [`ShardCore::finish_turn`] has flushed the store, and under the `always` policy synced it
//! too (group commit); it becomes STORAGE_ERROR if either failed. Immediate replies (reads)
//! sit in the connection's write buffer, which the driver writes to the socket only after
//! `finish_turn` (`server/worker.rs`, `end_turn`), so nothing of a turn leaves before its
//! records are in the operating system's hands, and `kill -9` loses nothing acknowledged.

use super::{Fatal, ShardCore, SyncPolicy};
use crate::limits::KEY_SIZE_MAX;
use crate::protocol::message::{put_error, put_ok, put_reply};
use crate::protocol::{frame, op, Request, Status, RESPONSE_BIT};
use crate::storage::{Applied, StoreError, Write};
use crate::version::Version;
use byteorder::{BigEndian, ByteOrder};
use std::sync::atomic::Ordering;

impl ShardCore {
    /// Whether a sync is due at the end of this turn under the `always` policy.
    pub fn wants_sync_now(&self) -> bool {
        self.cfg.sync == SyncPolicy::Always && self.store.needs_sync()
    }

    /// Whether the acknowledgement of a write applied now must be held until the end of the
    /// turn: its record is not yet written to the file (any policy), or not yet synced
    /// (`always`).
    pub(super) fn ack_waits(&self) -> bool {
        self.store.unflushed() || self.wants_sync_now()
    }

    /// Sync the store now (the driver calls this on its interval timer, or via
    /// [`ShardCore::finish_turn`]).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if !self.store.needs_sync() {
            return Ok(());
        }
        self.counters().syncs.fetch_add(1, Ordering::Relaxed);
        let r = self.store.sync();
        if let Err(e) = &r {
            log::error!(
                "shard {}: sync failed, refusing writes from now on: {e}",
                self.cfg.shard
            );
            self.write_error = Some(e.to_string());
        }
        r
    }

    /// End of a turn: cover the turn's versions with the durable clock ceiling, write the
    /// turn's records (one write), group commit under the `always` policy, then release the
    /// held replies (or turn them into STORAGE_ERROR if the write or the sync failed). An
    /// error means the node must stop (see [`Fatal`]).
    pub fn finish_turn(&mut self) -> Result<(), Fatal> {
        let clock_ms = self.clock_mut().last_ms();
        if let Err(e) = self.ceiling.cover(clock_ms) {
            return Err(Fatal(format!(
                "shard {}: cannot persist the clock ceiling ({e})",
                self.cfg.shard
            )));
        }
        // Before anything of the turn leaves: the turn's records reach the file. A failure
        // undid them (not sticky: the next turn's writes are tried again).
        let flush_error = match self.store.flush() {
            Ok(()) => None,
            Err(e) => {
                log::warn!(
                    "shard {}: writing the turn's records failed: {e}",
                    self.cfg.shard
                );
                // Most of the turn's writes were undone; some may have been written early.
                Some(format!("write failed ({e}); it may or may not be stored"))
            }
        };
        self.after_turn_write(flush_error.as_deref());
        // test-only mutation: acknowledge before the sync (the simulator syncs later).
        let ack_early = self.mutations().ack_before_sync;
        let synced = if flush_error.is_some() {
            false
        } else if self.wants_sync_now() && !ack_early {
            self.sync().is_ok()
        } else {
            self.write_error.is_none()
        };
        for dest in 0..self.cfg.shards {
            if self.held[dest].is_empty() {
                continue;
            }
            let held = std::mem::take(&mut self.held[dest]);
            if synced {
                self.outbox.replies[dest].extend_from_slice(&held);
            } else {
                let why = match (&flush_error, &self.write_error) {
                    (Some(why), _) => why.clone(),
                    (None, Some(why)) => {
                        format!("sync failed ({why}); it may or may not be on disk")
                    }
                    (None, None) => String::new(),
                };
                rewrite_as_errors(&held, &mut self.outbox.replies[dest], &why);
            }
            self.held[dest] = held;
            self.held[dest].clear();
        }
        Ok(())
    }

    /// Execute a keyed request on this shard's store, appending the reply to `out`. Returns
    /// true when the reply must wait for the next sync (a write under the `always` policy).
    pub(super) fn execute(
        &mut self,
        now_ms: u64,
        req: &Request<'_>,
        id: u32,
        out: &mut Vec<u8>,
    ) -> bool {
        debug_assert!(req.key().is_some_and(|k| k.len() <= KEY_SIZE_MAX));
        match *req {
            Request::Get { key, .. } => match self.store.get(key) {
                Ok(Some(s)) if s.is_live(now_ms) => {
                    let value = s.value.as_deref().unwrap_or_default();
                    self.count_reply(Status::Ok);
                    put_ok(out, op::GET, id, &[&s.version.0.to_be_bytes(), value]);
                    false
                }
                Ok(_) => {
                    self.count_reply(Status::NotFound);
                    put_reply(out, op::GET, Status::NotFound, id, &[]);
                    false
                }
                Err(e) => self.store_failure(op::GET, id, &e, out),
            },
            Request::LocalGet { .. } if !self.cluster_serving_reads() => {
                // Anti-entropy: this node may hold keys whose tombstones were collected
                // elsewhere until its first full round after a long absence.
                self.count_reply(Status::Unavailable);
                put_error(
                    out,
                    op::LOCAL_GET,
                    id,
                    Status::Unavailable,
                    "not serving reads: rejoining through anti-entropy",
                );
                false
            }
            Request::LocalGet { key } => match self.store.get(key) {
                Ok(Some(s)) if s.is_live(self.expiry_now_ms(now_ms)) => {
                    let value = s.value.as_deref().unwrap_or_default();
                    self.count_reply(Status::Ok);
                    put_ok(
                        out,
                        op::LOCAL_GET,
                        id,
                        &[
                            &s.version.0.to_be_bytes(),
                            &s.expires_at_ms.to_be_bytes(),
                            value,
                        ],
                    );
                    false
                }
                Ok(Some(s)) if s.value.is_none() => {
                    self.count_reply(Status::NotFound);
                    put_reply(
                        out,
                        op::LOCAL_GET,
                        Status::NotFound,
                        id,
                        &[&s.version.0.to_be_bytes()],
                    );
                    false
                }
                Ok(_) => {
                    self.count_reply(Status::NotFound);
                    put_reply(out, op::LOCAL_GET, Status::NotFound, id, &[]);
                    false
                }
                Err(e) => self.store_failure(op::LOCAL_GET, id, &e, out),
            },
            Request::Put {
                key,
                value,
                ttl_seconds,
                ..
            } => {
                let expires_at_ms = crate::storage::expiry_of_ttl(now_ms, ttl_seconds);
                self.write(now_ms, op::PUT, id, key, Some(value), expires_at_ms, out)
            }
            Request::Delete { key, .. } => self.write(now_ms, op::DELETE, id, key, None, 0, out),
            Request::CausalGet { .. }
            | Request::CausalPut { .. }
            | Request::CausalDelete { .. } => {
                self.count_reply(Status::BadRequest);
                put_error(
                    out,
                    req.op(),
                    id,
                    Status::BadRequest,
                    "the causal flag (aux bit 2) needs a cluster started with --conflicts siblings; \
                     this node resolves conflicts last-write-wins",
                );
                false
            }
            _ => unreachable!("execute is only called for keyed requests"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn write(
        &mut self,
        now_ms: u64,
        opc: u8,
        id: u32,
        key: &[u8],
        value: Option<&[u8]>,
        expires_at_ms: u64,
        out: &mut Vec<u8>,
    ) -> bool {
        if let Some(why) = &self.write_error {
            let msg = format!("writes are refused since a failed sync: {why}");
            self.count_reply(Status::StorageError);
            self.compacting.refused_here += 1;
            put_error(out, opc, id, Status::StorageError, &msg);
            return false;
        }
        let version = self.hlc.issue(now_ms);
        let w = Write {
            key,
            value,
            version,
            expires_at_ms,
            causal: false,
        };
        match self.store.apply(w) {
            Ok(Applied::Stored) => {
                self.count_reply(Status::Ok);
                put_ok(out, opc, id, &[&version.0.to_be_bytes()]);
                self.ack_waits()
            }
            Ok(Applied::Stale { current }) => {
                // Our clock issued a version below one the store holds: the clock must have
                // been recovered wrongly. Never acknowledge a write that did not take.
                self.hlc.observe(current);
                let msg = format!("clock behind stored version {current}; retry");
                self.count_reply(Status::Internal);
                put_error(out, opc, id, Status::Internal, &msg);
                false
            }
            Err(e) => self.store_failure(opc, id, &e, out),
        }
    }

    pub(super) fn store_failure(
        &mut self,
        opc: u8,
        id: u32,
        e: &StoreError,
        out: &mut Vec<u8>,
    ) -> bool {
        self.count_reply(Status::StorageError);
        put_error(out, opc, id, Status::StorageError, &e.to_string());
        false
    }
}

/// Turn held reply records into STORAGE_ERROR replies with the same opcode and id.
fn rewrite_as_errors(records: &[u8], out: &mut Vec<u8>, why: &str) {
    let msg = format!("write not acknowledged: {why}");
    let mut at = 0;
    while at < records.len() {
        out.extend_from_slice(&records[at..at + 8]);
        at += 8;
        let (f, n) = frame::parse(&records[at..])
            .expect("held record is a whole frame")
            .expect("held record is complete");
        put_error(out, f.op & !RESPONSE_BIT, f.id, Status::StorageError, &msg);
        at += n;
    }
}

/// Version of a write as carried in replies (for tests).
pub fn reply_version(body: &[u8]) -> Option<Version> {
    (body.len() >= 8).then(|| Version(BigEndian::read_u64(&body[..8])))
}
