//! Mail between the shards of one node: the batches a turn hands the driver ([`Outbox`]:
//! forwarded requests, replies to other shards' connections, peer frames, the membership
//! shard's view and the anti-entropy reports for it) and the handling of
//! a batch received from another shard ([`ShardCore::on_mail`]), which executes forwarded
//! requests here and queues their replies back to the shard owning the connection. The record
//! format is in the module doc of `shard/mod.rs`.

use super::{ConnId, ShardCore};
use crate::cluster::antientropy::Reports;
use crate::cluster::{NodeView, MEMBERSHIP_SHARD};
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
    /// The node's membership view, from the membership shard to every other shard (see
    /// [`crate::cluster::view`]). Delivered like replies: never refused, never lost. Boxed:
    /// far larger than the other variants, and rare.
    View(Box<NodeView>),
    /// Completed anti-entropy exchanges of another shard, for the membership shard to report
    /// to the leader. Delivered like replies.
    Reports(Reports),
    /// Partitions another shard copied whole (partition, the change's ring version), for
    /// the membership shard to report to the leader. Delivered like replies.
    Copied(Vec<(u16, u64)>),
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
    /// On the membership shard: its view, when it changed, for every other shard (as
    /// [`Mail::View`]; a newer one replaces an undelivered one, each view being whole).
    pub view: Option<NodeView>,
    /// On the other shards: completed anti-entropy exchanges for the membership shard
    /// ([`crate::cluster::MEMBERSHIP_SHARD`]), as [`Mail::Reports`].
    pub reports: Reports,
    /// On the other shards: partitions copied whole, for the membership shard (as
    /// [`Mail::Copied`]).
    pub copied: Vec<(u16, u64)>,
}

impl Outbox {
    pub(super) fn new(shards: usize) -> Outbox {
        Outbox {
            requests: vec![Vec::new(); shards],
            replies: vec![Vec::new(); shards],
            peer: Vec::new(),
            view: None,
            reports: Reports::new(),
            copied: Vec::new(),
        }
    }

    /// Add completed exchanges for the membership shard (the latest start of a pair wins).
    pub(super) fn add_reports(&mut self, reports: Reports) {
        for (k, v) in reports {
            let e = self.reports.entry(k).or_insert(v);
            *e = (*e).max(v);
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
                    if own.is_empty() {
                        // The usual case, a turn's own replies: handed over, not copied.
                        std::mem::swap(own, &mut self.replies[dest]);
                    } else {
                        own.append(&mut self.replies[dest]);
                    }
                } else {
                    let records = std::mem::take(&mut self.replies[dest]);
                    send(dest, Mail::Replies { records });
                }
            }
        }
        // The membership shard's view goes to every other shard; the others' anti-entropy
        // reports go to the membership shard.
        if let Some(view) = self.view.take() {
            for dest in (0..self.replies.len()).filter(|&d| d != me) {
                send(dest, Mail::View(Box::new(view.clone())));
            }
        }
        if !self.reports.is_empty() {
            let reports = std::mem::take(&mut self.reports);
            debug_assert_ne!(
                MEMBERSHIP_SHARD, me,
                "the membership shard reports for itself"
            );
            send(MEMBERSHIP_SHARD, Mail::Reports(reports));
        }
        if !self.copied.is_empty() {
            send(
                MEMBERSHIP_SHARD,
                Mail::Copied(std::mem::take(&mut self.copied)),
            );
        }
    }

    /// Whether there is nothing to deliver.
    pub fn is_empty(&self) -> bool {
        self.requests.iter().all(Vec::is_empty)
            && self.replies.iter().all(Vec::is_empty)
            && self.peer.is_empty()
            && self.view.is_none()
            && self.reports.is_empty()
            && self.copied.is_empty()
    }
}

impl Mail {
    /// Whether a full mailbox may refuse this mail (the sender then answers the requests in
    /// it OVERLOADED). Everything else answers what was already admitted, or is the node's
    /// view and reports (at most one of each per turn, and never to be lost), so it is never
    /// refused.
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
            Mail::View(view) => self.on_view(now_ms, *view),
            Mail::Reports(reports) => self.on_reports(reports),
            Mail::Copied(list) => self.on_copied(&list),
        }
    }
}
