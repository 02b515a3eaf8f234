//! Mail between the shards of one node: the batches a turn hands the driver ([`Outbox`]:
//! forwarded requests, replies to other shards' connections, peer frames) and the handling of
//! a batch received from another shard ([`ShardCore::on_mail`]), which executes forwarded
//! requests here and queues their replies back to the shard owning the connection. The record
//! format is in the module doc of `shard/mod.rs`.

use super::{ConnId, ShardCore};
use crate::protocol::{frame, Request};
use byteorder::{BigEndian, ByteOrder};
use std::sync::atomic::Ordering;

/// Mail between shards of one node.
#[derive(Debug)]
pub enum Mail {
    /// Requests from shard `from` for keys this shard owns, as records.
    Requests {
        /// The shard whose connections sent them.
        from: usize,
        /// Records: `| conn id u64 | request frame |`.
        records: Vec<u8>,
    },
    /// Replies to this shard's connections, as records.
    Replies {
        /// Records: `| conn id u64 | reply frame |`.
        records: Vec<u8>,
    },
}

/// What the core hands the driver at the end of a turn.
#[derive(Default, Debug)]
pub struct Outbox {
    /// Request records per destination shard (index = shard).
    pub requests: Vec<Vec<u8>>,
    /// Reply records per destination shard; the entry of this shard itself holds replies for
    /// its own connections that were released late (after a sync).
    pub replies: Vec<Vec<u8>>,
    /// Peer frames to send, as (node id, whole frame), in order (cluster mode only).
    pub peer: Vec<(u32, Vec<u8>)>,
}

impl Outbox {
    pub(super) fn new(shards: usize) -> Outbox {
        Outbox {
            requests: vec![Vec::new(); shards],
            replies: vec![Vec::new(); shards],
            peer: Vec::new(),
        }
    }

    /// Hand the turn's mail to `send` as `(destination shard, mail)`, and append the reply
    /// records for shard `me`'s own connections to `own`. One routine for every driver (the
    /// worker's mailboxes, the simulator's mail events), so that what the core puts in its
    /// outbox reaches the other shards the same way in both.
    pub fn drain_mail(&mut self, me: usize, own: &mut Vec<u8>, mut send: impl FnMut(usize, Mail)) {
        for dest in 0..self.requests.len() {
            if !self.requests[dest].is_empty() {
                debug_assert_ne!(dest, me, "a shard never forwards to itself");
                let records = std::mem::take(&mut self.requests[dest]);
                send(dest, Mail::Requests { from: me, records });
            }
            if !self.replies[dest].is_empty() {
                if dest == me {
                    own.append(&mut self.replies[dest]);
                } else {
                    let records = std::mem::take(&mut self.replies[dest]);
                    send(dest, Mail::Replies { records });
                }
            }
        }
    }

    /// Whether there is nothing to deliver.
    pub fn is_empty(&self) -> bool {
        self.requests.iter().all(Vec::is_empty)
            && self.replies.iter().all(Vec::is_empty)
            && self.peer.is_empty()
    }
}

impl Mail {
    /// Whether a full mailbox may refuse this mail (the sender then answers the requests in
    /// it OVERLOADED). Everything else answers or informs what was already admitted, so it
    /// is never refused.
    pub fn may_be_refused(&self) -> bool {
        matches!(self, Mail::Requests { .. })
    }
}

impl ShardCore {
    /// Handle mail from another shard.
    pub fn on_mail(&mut self, now_ms: u64, mail: Mail, own_replies: &mut Vec<u8>) {
        match mail {
            Mail::Requests { from, records } => {
                let mut at = 0;
                while at < records.len() {
                    let conn = ConnId(BigEndian::read_u64(&records[at..at + 8]));
                    at += 8;
                    // Records are written by `on_frame` of a shard of this process from frames
                    // that already parsed: a failure here is a bug, not bad input.
                    let (f, n) = frame::parse(&records[at..])
                        .expect("forwarded record is a whole frame")
                        .expect("forwarded record is complete");
                    at += n;
                    self.counters().forwarded_in.fetch_add(1, Ordering::Relaxed);
                    let mut reply = std::mem::take(&mut self.scratch);
                    reply.clear();
                    let held = match Request::decode(&f) {
                        Ok(req) => {
                            match self.cluster_mail(now_ms, from, conn, &req, &f, &mut reply) {
                                Some(Some(held)) => held,
                                Some(None) => {
                                    // Coordinated: the reply comes later as a record.
                                    self.scratch = reply;
                                    continue;
                                }
                                None => self.execute(now_ms, &req, f.id, &mut reply),
                            }
                        }
                        Err(e) => {
                            // The origin shard decoded this frame already; answer anyway.
                            self.reject(&f, &e, &mut reply);
                            false
                        }
                    };
                    let dest = if held {
                        &mut self.held[from]
                    } else {
                        &mut self.outbox.replies[from]
                    };
                    dest.extend_from_slice(&conn.0.to_be_bytes());
                    dest.extend_from_slice(&reply);
                    self.scratch = reply;
                }
            }
            Mail::Replies { records } => own_replies.extend_from_slice(&records),
        }
    }
}
