//! The simulated network and the mail between a node's shards.
//!
//! Peer frames travel between shards of different nodes with a seeded delay, drop,
//! duplication and reordering (safety phase only), and partitions (isolate one, halves,
//! random split, one-way, with a bridge node). A request lands on the shard of the receiving
//! node that accepted its link; its reply goes back on the same link to the shard that sent
//! it. Mail between the shards of one node is delivered in a small seeded delay, so its order
//! against frames and ticks is part of the seed too.

use super::node::peer_conn;
use super::options::{range, Mutation};
use super::trace::trace;
use super::world::{Ev, Msg, Phase, World};
use crate::cluster::antientropy::ae_op;
use crate::cluster::peer::{op as peer_op, PeerReply, PeerRequest, WriteAck};
use crate::cluster::ringpeer::ring_op;
use crate::protocol::{frame, RESPONSE_BIT};
use crate::shard::Mail;
use crate::storage::Applied;

/// Mail between two shards of a node takes up to this long (a wake-up and a turn).
const MAIL_DELAY_MAX_MS: u64 = 2;

impl World {
    /// Shard `from_shard` of node `from` sends a request frame to node `to`.
    pub(super) fn send_request(&mut self, from: u32, from_shard: usize, to: u32, frame: Vec<u8>) {
        let to_life = self.node(to).life;
        if self.node(to).up.is_none() {
            return; // no connection to a node that is down
        }
        self.send_to_life(from, from_shard, to, None, to_life, frame);
    }

    /// Node `from` answers on the inbound link of `(to, to_shard, to_life)`.
    pub(super) fn send_reply(
        &mut self,
        from: u32,
        to: u32,
        to_shard: usize,
        to_life: u64,
        frame: Vec<u8>,
    ) {
        self.send_to_life(from, 0, to, Some(to_shard), to_life, frame);
    }

    fn send_to_life(
        &mut self,
        from: u32,
        from_shard: usize,
        to: u32,
        to_shard: Option<usize>,
        to_life: u64,
        frame: Vec<u8>,
    ) {
        let from_life = self.node(from).life;
        let faults = self.phase == Phase::Safety;
        if faults && self.p.drop_percent > 0 && self.rng.below(100) < u64::from(self.p.drop_percent)
        {
            trace!(self.trace, "drop n{from}->n{to} {}", self.describe(&frame));
            return;
        }
        // Duplicates stand for a frame a node could see twice, and every peer request is
        // idempotent but COORDINATE (siblings mode: each delivery is a client's write, a new
        // sibling). A node never sends one twice and TCP never delivers one twice, so its
        // duplicate is not a fault the real node can meet (the draw is made all the same, so
        // that the seed's other draws are unchanged).
        let dup = faults && self.rng.below(100) < u64::from(self.p.dup_percent);
        let copies = if dup && frame.get(4) != Some(&crate::cluster::peer::coordinate::OP) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = range(&mut self.rng, self.p.delay_min_ms, self.p.delay_max_ms);
            if faults && self.reorder && self.rng.below(20) == 0 {
                delay *= 10; // a straggler: reordering
            }
            let m = Msg {
                from,
                from_shard,
                to,
                to_shard,
                from_life,
                to_life,
                frame: frame.clone(),
            };
            self.at(self.now + delay.max(1), Ev::Net(m));
        }
    }

    pub(super) fn describe(&self, frame: &[u8]) -> String {
        let Ok(Some((f, _))) = frame::parse(frame) else {
            return format!("unparsable frame of {} bytes", frame.len());
        };
        let reply = f.op & RESPONSE_BIT != 0;
        let op = f.op & !RESPONSE_BIT;
        let name = match op {
            peer_op::REPLICATE => "REPLICATE",
            peer_op::READ => "READ",
            peer_op::GOSSIP => "GOSSIP",
            ae_op::TREE => "AE_TREE",
            ae_op::KEYS => "AE_KEYS",
            ae_op::PUSH => "AE_PUSH",
            ae_op::STATUS => "AE_STATUS",
            ring_op::PULL => "RING_PULL",
            ring_op::CHANGE => "RING_CHANGE",
            ring_op::VOTE => "RING_VOTE",
            ring_op::ACCEPT => "RING_ACCEPT",
            _ => "OP?",
        };
        if reply {
            let what = match PeerReply::decode(f.op, f.aux, f.body) {
                Ok(PeerReply::Write(WriteAck::Done(Applied::Stored))) => "stored".to_string(),
                Ok(PeerReply::Write(WriteAck::Done(Applied::Stale { current }))) => {
                    format!("stale (holds {})", self.v(current))
                }
                Ok(PeerReply::Write(WriteAck::Refused(why))) => format!("refused: {why}"),
                Ok(PeerReply::Read(Ok(Some(r)))) => format!(
                    "{} {}",
                    self.v(r.version),
                    if r.value.is_some() {
                        "value"
                    } else {
                        "tombstone"
                    }
                ),
                Ok(PeerReply::Read(Ok(None))) => "absent".to_string(),
                Ok(PeerReply::ReadVersion(v)) => format!("{} (version only)", self.v(v)),
                Ok(PeerReply::Read(Err(why))) => format!("error: {why}"),
                Ok(PeerReply::StaleRing { ring, .. }) => format!("stale ring (holds {ring})"),
                _ => format!("status={}", f.aux),
            };
            return format!("{name}-reply id={} {what}", f.id);
        }
        match PeerRequest::decode(f.op, f.aux, f.body) {
            Ok(PeerRequest::Replicate { write, aux, ring }) => format!(
                "{name} id={} aux={aux} ring={ring} {} {} {}",
                f.id,
                String::from_utf8_lossy(write.key),
                self.v(write.version),
                if write.value.is_some() {
                    "value"
                } else {
                    "tombstone"
                }
            ),
            Ok(PeerRequest::Read {
                key,
                ring,
                version_only,
            }) => {
                format!(
                    "{name} id={} ring={ring}{} {}",
                    f.id,
                    if version_only { " version-only" } else { "" },
                    String::from_utf8_lossy(key)
                )
            }
            _ => format!("{name} id={}", f.id),
        }
    }

    /// A peer frame arrives at its node.
    pub(super) fn deliver(&mut self, m: Msg) {
        let (from, to) = (m.from, m.to);
        let (fi, ti) = (from as usize - 1, to as usize - 1);
        let dead = self.nodes[ti].up.is_none()
            || self.nodes[ti].life != m.to_life
            || self.nodes[fi].life != m.from_life;
        if dead || self.blocked[fi][ti] {
            trace!(
                self.trace,
                "lost n{from}->n{to} ({}) {}",
                if dead { "connection gone" } else { "partition" },
                self.describe(&m.frame)
            );
            return;
        }
        if self.nodes[ti].paused_until != 0 {
            let t = self.nodes[ti].paused_until + 1;
            self.at(t, Ev::Net(m));
            return;
        }
        self.stats.frames += 1;
        let Ok(Some((f, _))) = frame::parse(&m.frame) else {
            self.hist.report(
                "peer-frame",
                None,
                format!("n{from} sent an unparsable frame"),
            );
            return;
        };
        let is_gossip = f.op & !RESPONSE_BIT == peer_op::GOSSIP;
        if !is_gossip {
            trace!(self.trace, "n{from}->n{to} {}", self.describe(&m.frame));
        }
        let now_ms = self.node_now(to);
        if let Some(shard) = m.to_shard {
            // A reply on the link shard `shard` opened.
            let core = &mut self.running(to).cores[shard];
            core.on_peer_reply(now_ms, from, &f);
            self.finish(to, shard);
            return;
        }
        // A request: on the shard that accepted this link (drawn when first used).
        let key = (from, m.from_shard, m.from_life);
        let shards = self.node(to).shards as u64;
        let drawn = self.rng.below(shards) as usize;
        let run = self.running(to);
        let shard = *run.links.entry(key).or_insert(drawn);
        let conn = peer_conn(from, m.from_shard, m.from_life);
        let session = run
            .sessions
            .entry(conn.0)
            .or_insert_with(|| World::peer_session(from));
        let mut wbuf = Vec::new();
        let _ = run.cores[shard].on_frame(now_ms, conn, session, f, &mut wbuf);
        if !wbuf.is_empty() {
            self.send_reply(to, from, m.from_shard, m.from_life, wbuf);
        }
        self.finish(to, shard);
    }

    /// Shard mail of node `id` for shard `dest`, delivered a little later.
    pub(super) fn send_mail(&mut self, id: u32, dest: usize, mail: Mail) {
        if self.p.mutation == Mutation::DropForwardedReply
            && matches!(mail, Mail::Replies { .. })
            && self.rng.below(20) == 0
        {
            // test-only mutation: a batch of forwarded replies is lost between shards.
            trace!(self.trace, "n{id} loses a reply batch for shard {dest}");
            return;
        }
        if self.p.mutation == Mutation::DropView && matches!(mail, Mail::View(_)) {
            // test-only mutation: the node's view never reaches its other shards.
            return;
        }
        let life = self.node(id).life;
        let t = self.now + range(&mut self.rng, 0, MAIL_DELAY_MAX_MS);
        self.at(
            t,
            Ev::Mail {
                node: id,
                life,
                shard: dest,
                mail,
            },
        );
    }

    pub(super) fn deliver_mail(&mut self, id: u32, life: u64, shard: usize, mail: Mail) {
        let n = self.node(id);
        if n.up.is_none() || n.life != life {
            return; // the process died with its mailboxes
        }
        if n.paused_until != 0 {
            let t = n.paused_until + 1;
            self.at(
                t,
                Ev::Mail {
                    node: id,
                    life,
                    shard,
                    mail,
                },
            );
            return;
        }
        self.stats.mail += 1;
        if let Mail::Requests { records, .. } = &mail {
            self.note_forwarded(records);
        }
        let now_ms = self.node_now(id);
        let mut own = Vec::new();
        self.running(id).cores[shard].on_mail(now_ms, mail, &mut own);
        self.deliver_records(id, &own);
        self.finish(id, shard);
    }

    pub(super) fn partition(&mut self) {
        let n = self.born() as usize;
        let mut side = vec![false; n];
        let shape = self.rng.below(4);
        let name = match shape {
            0 => {
                side[self.rng.below(n as u64) as usize] = true;
                "isolate one"
            }
            1 => {
                for s in side.iter_mut().take(n / 2) {
                    *s = true;
                }
                "halves"
            }
            _ => {
                for s in side.iter_mut() {
                    *s = self.rng.below(2) == 0;
                }
                "random split"
            }
        };
        let one_way = shape == 3;
        for a in 0..n {
            for b in 0..n {
                if side[a] != side[b] && (!one_way || side[a]) {
                    self.blocked[a][b] = true;
                }
            }
        }
        // A bridge: sometimes one node keeps both sides.
        if shape != 0 && self.rng.below(4) == 0 {
            let b = self.rng.below(n as u64) as usize;
            for x in 0..n {
                self.blocked[b][x] = false;
                self.blocked[x][b] = false;
            }
        }
        self.partitioned = true;
        let rows: Vec<String> = self
            .blocked
            .iter()
            .map(|r| r.iter().map(|&x| if x { '#' } else { '.' }).collect())
            .collect();
        trace!(
            self.trace,
            "PARTITION {name}{} blocked(from>to)={}",
            if one_way { " one-way" } else { "" },
            rows.join("|")
        );
    }

    pub(super) fn heal(&mut self) {
        if self.partitioned {
            for r in &mut self.blocked {
                r.iter_mut().for_each(|x| *x = false);
            }
            self.partitioned = false;
            trace!(self.trace, "partition heals");
        }
    }
}
