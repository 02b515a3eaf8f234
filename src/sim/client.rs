//! Simulated clients: each sends one request at a time, as a protocol frame on a connection
//! of its own to a shard of a random coordinator (the shard the kernel would have handed the
//! connection to), and reads the answer frame back. The coordinator's own outcome, kept by the
//! shard for the simulator ([`crate::shard::ShardCore::keep_outcomes`]), adds what the wire
//! does not carry (re-issues, expiry) for the checkers; the answer itself, and when it comes,
//! is the frame's.

use super::check::{key_name, OpKind, OpRecord, REPAIR_CLIENT};
use super::node::client_conn;
use super::options::{consistency_name, range};
use super::trace::trace;
use super::world::{Ev, Phase, World};
use crate::causal::VersionVector;
use crate::cluster::coordinator::Outcome;
use crate::cluster::Conflicts;
use crate::protocol::{frame, op, Consistency, Request, Response, Status};
use crate::shard::Session;
use crate::version::Version;

/// Longest time to live a simulated PUT carries, in seconds (the protocol's unit).
const TTL_SECONDS_MAX: u64 = 20;

/// Siblings mode: percent of PUTs that read the key first and write with its context; of the
/// rest, up to [`REUSE_PUT_PERCENT`] reuse the context of the client's last read of the key
/// (a client writing from an older read), the others are blind (no context: a new sibling).
const FRESH_PUT_PERCENT: u64 = 60;
/// See [`FRESH_PUT_PERCENT`].
const REUSE_PUT_PERCENT: u64 = 75;
/// Siblings mode: percent of DELETEs that read the key first; the others reuse the client's
/// last context of the key (a DELETE without one removes nothing, so it always has one).
const FRESH_DELETE_PERCENT: u64 = 80;
/// Siblings mode: one write in this many goes to any node, replica of the key or not (a
/// node that holds no replica refuses it: UNAVAILABLE, protocol.md § 19.2); the others go to a
/// replica by the newest ring the simulator saw, as a client routing by the ring map does.
const ANY_NODE_WRITE_ONE_IN: u64 = 20;
/// Siblings mode: one GET in this many is a plain GET (no causal flag): its answer is the one
/// sibling, NOT_FOUND, or SIBLINGS.
const PLAIN_GET_ONE_IN: u64 = 20;

/// Siblings mode: a write that waits for the answer of its client's read, to carry the
/// context that read returned (read-then-write).
pub(super) struct Then {
    kind: OpKind,
    key: u32,
    consistency: Consistency,
    ttl_ms: u64,
}

impl World {
    /// A client operation's kind (by the run's mix) and key: a skewed choice, low keys hot,
    /// so writes collide (and in siblings mode, siblings grow).
    fn draw_kind_and_key(&mut self) -> (OpKind, u32) {
        let x = self.rng.below(100) as u32;
        let kind = if x < self.p.put_percent {
            OpKind::Put
        } else if x < self.p.put_percent + self.p.get_percent {
            OpKind::Get
        } else {
            OpKind::Delete
        };
        let key = self.rng.below(u64::from(self.p.keys)) as u32;
        let key = key.min(self.rng.below(u64::from(self.p.keys)) as u32);
        (kind, key)
    }

    pub(super) fn client_next(&mut self, c: u32) {
        if self.phase != Phase::Safety || self.ops_issued >= self.p.ops {
            return;
        }
        if self.p.conflicts == Conflicts::Siblings {
            return self.client_next_causal(c);
        }
        self.ops_issued += 1;
        let (kind, key) = self.draw_kind_and_key();
        let born = u64::from(self.born());
        let coordinator = range(&mut self.rng, 1, born) as u32;
        let consistency = self.p.draw_consistency(&mut self.rng);
        let value = (kind == OpKind::Put).then(|| {
            let pad = range(&mut self.rng, 0, 48) as usize;
            let mut v = format!("c{c}-{}-", self.hist.ops.len()).into_bytes();
            v.extend(std::iter::repeat_n(b'x', pad));
            v
        });
        let ttl_ms = if kind == OpKind::Put && self.rng.below(100) < u64::from(self.p.ttl_percent) {
            range(&mut self.rng, 1, TTL_SECONDS_MAX) * 1_000
        } else {
            0
        };
        let id = self.issue(c, kind, key, value, consistency, coordinator);
        self.hist.ops[id as usize].ttl_ms = ttl_ms;
        self.clients[c as usize].busy = Some(id);
        let timeout = self.now + self.client_patience_ms();
        self.at(timeout, Ev::ClientTimeout(c, id));
    }

    /// Siblings mode: the client's next operation. A GET is causal (but one in
    /// [`PLAIN_GET_ONE_IN`]); a PUT or DELETE is most often a read-then-write, sometimes a
    /// write with an older context of the key or (PUT) a blind one; writes go to a replica of
    /// the key. Every PUT's value is unique to the run (a value read names its write).
    fn client_next_causal(&mut self, c: u32) {
        self.ops_issued += 1;
        let (kind, key) = self.draw_kind_and_key();
        let consistency = self.p.draw_consistency(&mut self.rng);
        let ttl_ms = if kind == OpKind::Put && self.rng.below(100) < u64::from(self.p.ttl_percent) {
            range(&mut self.rng, 1, TTL_SECONDS_MAX) * 1_000
        } else {
            0
        };
        let then = Then {
            kind,
            key,
            consistency,
            ttl_ms,
        };
        let how = self.rng.below(100);
        let last = self.clients[c as usize].contexts.get(&key).cloned();
        let read_first = match kind {
            OpKind::Get => {
                let plain = self.rng.below(PLAIN_GET_ONE_IN) == 0;
                return self.issue_causal_read(c, key, consistency, !plain);
            }
            OpKind::Put => how < FRESH_PUT_PERCENT,
            OpKind::Delete => how < FRESH_DELETE_PERCENT || last.is_none(),
        };
        if read_first {
            self.clients[c as usize].then = Some(then);
            return self.issue_causal_read(c, key, consistency, true);
        }
        let context = match kind {
            OpKind::Put if how >= REUSE_PUT_PERCENT => None,
            _ => last,
        };
        self.issue_causal_write(c, then, context);
    }

    /// Siblings mode: client `c` reads `key` through a random node (`causal`: with the
    /// causal flag).
    fn issue_causal_read(&mut self, c: u32, key: u32, consistency: Consistency, causal: bool) {
        let born = u64::from(self.born());
        let coordinator = range(&mut self.rng, 1, born) as u32;
        let id = self.issue(c, OpKind::Get, key, None, consistency, coordinator);
        self.hist.ops[id as usize].causal = causal;
        self.wait_for(c, id);
    }

    /// Siblings mode: client `c` sends the write `then` with `context` (as a GET returned it;
    /// `None`: blind, half of them as plain PUTs without the causal flag) to a replica of the
    /// key (but one in [`ANY_NODE_WRITE_ONE_IN`]).
    fn issue_causal_write(&mut self, c: u32, then: Then, context: Option<Vec<u8>>) {
        let Then {
            kind,
            key,
            consistency,
            ttl_ms,
        } = then;
        let value = (kind == OpKind::Put).then(|| {
            let pad = range(&mut self.rng, 0, 48) as usize;
            let mut v = format!("c{c}-{}-", self.hist.ops.len()).into_bytes();
            v.extend(std::iter::repeat_n(b'x', pad));
            v
        });
        let causal = context.is_some() || self.rng.below(2) == 0;
        let born = u64::from(self.born());
        let coordinator = if self.rng.below(ANY_NODE_WRITE_ONE_IN) == 0 {
            range(&mut self.rng, 1, born) as u32
        } else {
            let p = crate::hash::partition_of(&key_name(key));
            let set = self.ring.holders(p);
            set[self.rng.below(set.len() as u64) as usize]
        };
        // (Contexts come from answers whose context decoded: see `outcome_of`.)
        let ctx = context.map_or_else(VersionVector::new, |b| {
            VersionVector::decode_context(&b).unwrap_or_default()
        });
        let id = self.issue(c, kind, key, value, consistency, coordinator);
        let rec = &mut self.hist.ops[id as usize];
        rec.ttl_ms = ttl_ms;
        rec.causal = causal;
        rec.ctx = Some(ctx);
        self.wait_for(c, id);
    }

    /// Client `c` waits for op `id`, until its patience runs out.
    fn wait_for(&mut self, c: u32, id: u64) {
        self.clients[c as usize].busy = Some(id);
        let timeout = self.now + self.client_patience_ms();
        self.at(timeout, Ev::ClientTimeout(c, id));
    }

    /// How long a client waits for an answer: two coordinator timeouts, the largest clock
    /// jump (a coordinator's clock stepping back delays its timeouts), and slack for pauses.
    fn client_patience_ms(&self) -> u64 {
        2 * self.p.request_timeout_ms + self.p.jump_max_ms + 5_000
    }

    pub(super) fn client_timeout(&mut self, c: u32, op: u64) {
        if self.clients[c as usize].busy == Some(op) {
            trace!(self.trace, "client {c} gives up on op {op}");
            self.clients[c as usize].busy = None;
            self.clients[c as usize].then = None;
            self.at(self.now + 1, Ev::ClientNext(c));
        }
    }

    pub(super) fn issue(
        &mut self,
        client: u32,
        kind: OpKind,
        key: u32,
        value: Option<Vec<u8>>,
        consistency: Consistency,
        coordinator: u32,
    ) -> u64 {
        let required = consistency.required(self.p.replicas);
        let id = self.hist.add(OpRecord {
            id: 0,
            client,
            kind,
            key,
            value,
            ttl_ms: 0,
            consistency,
            required,
            coordinator,
            start_ms: self.now,
            issue_seq: 0,
            end_ms: None,
            outcome: None,
            causal: false,
            ctx: None,
        });
        let n = &self.nodes[coordinator as usize - 1];
        let (life, shards) = (n.life, n.shards as u64);
        let shard = self.rng.below(shards) as usize;
        let t = self.now + range(&mut self.rng, 0, 2);
        self.at(
            t,
            Ev::Request {
                node: coordinator,
                life,
                shard,
                op: id,
            },
        );
        id
    }

    /// Client op `op` reaches shard `shard` of node `node`.
    pub(super) fn request(&mut self, node: u32, life: u64, shard: usize, op: u64) {
        let n = self.node(node);
        if n.up.is_none() || n.life != life {
            trace!(self.trace, "op {op}: connection to n{node} refused");
            self.client_done(op);
            return;
        }
        if n.paused_until != 0 {
            let t = n.paused_until + 1;
            self.at(
                t,
                Ev::Request {
                    node,
                    life,
                    shard,
                    op,
                },
            );
            return;
        }
        self.reached.insert(op, (node, life));
        let rec = &self.hist.ops[op as usize];
        if crate::hash::shard_of(&key_name(rec.key), self.node(node).shards) == shard {
            // The owning shard coordinates it now; a forwarded request is noted when its mail
            // arrives (`note_forwarded`).
            self.note_issue(op);
        }
        let rec = &self.hist.ops[op as usize];
        let (kind, key, value, consistency, ttl_ms, causal) = (
            rec.kind,
            rec.key,
            rec.value.clone(),
            rec.consistency,
            rec.ttl_ms,
            rec.causal,
        );
        // Siblings mode: the context a write carries (an empty one as zero bytes).
        let mut context = Vec::new();
        let mut shown_ctx = String::new();
        if let Some(ctx) = &rec.ctx {
            if !ctx.is_empty() {
                ctx.encode_context(&mut context);
            }
            shown_ctx = format!(" ctx={}", show_vv(ctx));
        }
        if self.p.conflicts == Conflicts::Siblings && !causal {
            shown_ctx += " plain";
        }
        let kname = key_name(key);
        trace!(
            self.trace,
            "op {op} {:?} {} {} via n{node}/{shard}{}{}{}",
            kind,
            String::from_utf8_lossy(&kname),
            consistency_name(consistency),
            value.as_ref().map_or(String::new(), |v| format!(
                " value={}",
                String::from_utf8_lossy(v)
            )),
            if ttl_ms > 0 {
                format!(" ttl={ttl_ms}ms")
            } else {
                String::new()
            },
            shown_ctx
        );
        let req = match (kind, causal) {
            (OpKind::Get, false) => Request::Get {
                key: &kname,
                consistency,
            },
            (OpKind::Get, true) => Request::CausalGet {
                key: &kname,
                consistency,
            },
            (OpKind::Put, false) => Request::Put {
                key: &kname,
                value: value.as_deref().unwrap_or_default(),
                ttl_seconds: (ttl_ms / 1_000) as u32,
                consistency,
            },
            (OpKind::Put, true) => Request::CausalPut {
                key: &kname,
                value: value.as_deref().unwrap_or_default(),
                ttl_seconds: (ttl_ms / 1_000) as u32,
                context: &context,
                consistency,
            },
            (OpKind::Delete, false) => Request::Delete {
                key: &kname,
                consistency,
            },
            (OpKind::Delete, true) => Request::CausalDelete {
                key: &kname,
                context: &context,
                consistency,
            },
        };
        let mut bytes = Vec::new();
        req.encode(op as u32, &mut bytes);
        let (f, _) = frame::parse(&bytes)
            .expect("an encoded request is a frame")
            .expect("and a whole one");
        let now_ms = self.node_now(node);
        let conn = client_conn(op);
        let mut session = Session::default();
        let mut wbuf = Vec::new();
        let _ = self.running(node).cores[shard].on_frame(now_ms, conn, &mut session, f, &mut wbuf);
        if !wbuf.is_empty() {
            // Answered at once (the shard's own checks).
            self.deliver_records_of(node, conn, &wbuf);
        }
        self.finish(node, shard);
    }

    /// Client op `op` reaches the shard that coordinates it: its place in the issue order
    /// (`version-order`).
    fn note_issue(&mut self, op: u64) {
        self.issue_seq += 1;
        self.hist.ops[op as usize].issue_seq = self.issue_seq;
    }

    /// Forwarded request records (`| conn id | frame |`) reach the shard owning their keys:
    /// note the clients' requests among them in their order.
    pub(super) fn note_forwarded(&mut self, records: &[u8]) {
        let mut at = 0;
        while at + 8 <= records.len() {
            let conn = crate::shard::ConnId(u64::from_be_bytes(
                records[at..at + 8].try_into().expect("8 bytes"),
            ));
            at += 8;
            let Ok(Some((_, n))) = frame::parse(&records[at..]) else {
                return;
            };
            at += n;
            if let super::node::Conn::Client(op) = super::node::conn_of(conn) {
                self.note_issue(op);
            }
        }
    }

    /// Immediate reply frames of connection `conn` of node `node`.
    fn deliver_records_of(&mut self, node: u32, conn: crate::shard::ConnId, frames: &[u8]) {
        let mut at = 0;
        while let Ok(Some((f, n))) = frame::parse(&frames[at..]) {
            let rid = f.id;
            let bytes = frames[at..at + n].to_vec();
            at += n;
            self.deliver_reply(node, conn, rid, bytes);
        }
    }

    /// The answer frame of client op `op`, with the coordinator's outcome if it kept one.
    pub(super) fn client_answer(&mut self, op: u64, bytes: &[u8], kept: Option<Outcome>) {
        let outcome = match self.outcome_of(op, bytes, kept) {
            Ok(o) => o,
            Err(why) => {
                let key = self.hist.ops[op as usize].key;
                self.hist
                    .report("reply", Some(key), format!("op {op}: {why}"));
                return;
            }
        };
        let text = match &outcome {
            Outcome::Written { version, .. } => format!("written {}", self.v(*version)),
            Outcome::Found { version, value, .. } => format!(
                "found {} {}",
                self.v(*version),
                String::from_utf8_lossy(value)
            ),
            Outcome::NotFound => "not found".to_string(),
            Outcome::Failed { status, message } => format!("failed {status:?}: {message}"),
            Outcome::Text(t) => t.clone(),
            Outcome::Siblings { values, context } => {
                let ctx = VersionVector::decode_context(context)
                    .map_or_else(|e| format!("bad context: {e}"), |v| show_vv(&v));
                let shown: Vec<String> = values
                    .iter()
                    .map(|(v, x)| format!("{}={}", self.v(*v), short_value(x)))
                    .collect();
                format!("{} siblings [{}] ctx={ctx}", values.len(), shown.join(" "))
            }
        };
        let key = key_name(self.hist.ops[op as usize].key);
        trace!(
            self.trace,
            "op {op} answer {}: {text}",
            String::from_utf8_lossy(&key)
        );
        if self.hist.ops[op as usize].outcome.is_some() {
            self.hist.report(
                "reply",
                Some(self.hist.ops[op as usize].key),
                format!("op {op} answered twice"),
            );
            return;
        }
        self.hist.answer(op, outcome, self.now);
        self.client_done(op);
    }

    /// What an answer frame says, as an outcome: the coordinator's kept outcome when the
    /// frame agrees with it (it carries more), else the frame's own (a shard's refusal, or a
    /// held acknowledgement turned into STORAGE_ERROR by a failed sync).
    fn outcome_of(&self, op: u64, bytes: &[u8], kept: Option<Outcome>) -> Result<Outcome, String> {
        let (f, _) = frame::parse(bytes)
            .ok()
            .flatten()
            .ok_or("the answer is not a frame")?;
        let r = Response::from_frame(&f).ok_or("the answer is not a response")?;
        let status = r
            .status()
            .ok_or_else(|| format!("unknown status {}", r.status))?;
        let rec = &self.hist.ops[op as usize];
        if rec.kind == OpKind::Get && rec.causal {
            return causal_read_outcome(&r, status, kept);
        }
        let from_wire = match (status, r.op) {
            (Status::Ok, op::GET) => {
                let (v, value) = r
                    .version_and_rest()
                    .ok_or("a GET answer without a version")?;
                Outcome::Found {
                    version: Version(v),
                    value: value.to_vec(),
                    expires_at_ms: 0,
                }
            }
            (Status::Ok, _) => {
                let (v, _) = r
                    .version_and_rest()
                    .ok_or("a write answer without a version")?;
                Outcome::Written {
                    version: Version(v),
                    reissues: 0,
                }
            }
            (Status::NotFound, op::GET) => Outcome::NotFound,
            (status, _) => Outcome::Failed {
                status,
                message: r.message(),
            },
        };
        let wanted = if self.hist.ops[op as usize].kind == OpKind::Get {
            op::GET
        } else if self.hist.ops[op as usize].kind == OpKind::Put {
            op::PUT
        } else {
            op::DELETE
        };
        if r.op != wanted {
            return Err(format!("answered with opcode {:#04x}", r.op));
        }
        if let Some(Outcome::Siblings { values, .. }) = &kept {
            // Siblings mode, a plain GET: its answer is the one sibling the coordinator found,
            // NOT_FOUND for none, SIBLINGS for several.
            let agrees = match (&from_wire, values.len()) {
                (Outcome::Found { version, value, .. }, 1) => {
                    values[0].0 == *version && values[0].1 == *value
                }
                (Outcome::NotFound, 0) => true,
                (
                    Outcome::Failed {
                        status: Status::Siblings,
                        ..
                    },
                    n,
                ) => n >= 2,
                _ => false,
            };
            if !agrees {
                return Err(format!(
                    "the answer to a plain GET says {from_wire:?}, the coordinator found {} \
                     siblings",
                    values.len()
                ));
            }
            return Ok(from_wire);
        }
        Ok(match (kept, &from_wire) {
            (Some(k @ Outcome::Written { version, .. }), Outcome::Written { version: w, .. })
                if version == *w =>
            {
                k
            }
            (Some(k @ Outcome::Found { version, .. }), Outcome::Found { version: w, .. })
                if version == *w =>
            {
                k
            }
            (Some(k), Outcome::Written { .. } | Outcome::Found { .. }) => {
                return Err(format!(
                    "the answer frame says {from_wire:?}, the coordinator decided {k:?}"
                ))
            }
            _ => from_wire,
        })
    }

    pub(super) fn client_done(&mut self, op: u64) {
        let c = self.hist.ops[op as usize].client;
        if c == REPAIR_CLIENT {
            return;
        }
        if self.clients[c as usize].busy == Some(op) {
            self.clients[c as usize].busy = None;
            if self.p.conflicts == Conflicts::Siblings && self.follow_up(c, op) {
                return;
            }
            let t = self.now + range(&mut self.rng, 0, 30);
            self.at(t, Ev::ClientNext(c));
        }
    }

    /// Siblings mode: client `c`'s op `op` is done; if it was a causal read, keep its context
    /// and send the write waiting for it. Whether a write was sent.
    fn follow_up(&mut self, c: u32, op: u64) -> bool {
        let then = self.clients[c as usize].then.take();
        let rec = &self.hist.ops[op as usize];
        let Some(Outcome::Siblings { context, .. }) = &rec.outcome else {
            return false; // a failed read: the write it was for is not sent
        };
        let (key, context) = (rec.key, context.clone());
        self.clients[c as usize]
            .contexts
            .insert(key, context.clone());
        match then {
            Some(then) if self.phase == Phase::Safety => {
                self.issue_causal_write(c, then, Some(context));
                true
            }
            _ => false,
        }
    }

    /// `unanswered`: every client request that reached a node which is still in the same
    /// life at the end got an answer, if it started longer than a client's patience before.
    pub(super) fn check_answered(&mut self) {
        let mut missing = Vec::new();
        let patience = self.client_patience_ms();
        for (&op, &(node, life)) in &self.reached {
            let rec = &self.hist.ops[op as usize];
            let n = self.node(node);
            if rec.outcome.is_none()
                && rec.client != REPAIR_CLIENT
                && rec.start_ms + patience < self.now
                && n.up.is_some()
                && n.life == life
            {
                missing.push((op, node, rec.key));
            }
        }
        for (op, node, key) in missing {
            self.hist.report(
                "unanswered",
                Some(key),
                format!("op {op} reached n{node}, which never answered it nor restarted"),
            );
        }
    }
}

/// Siblings mode: the outcome of a causal GET's answer frame: its siblings and context
/// (`Outcome::Siblings`, as the coordinator decided it), or the failure.
fn causal_read_outcome(
    r: &Response<'_>,
    status: Status,
    kept: Option<Outcome>,
) -> Result<Outcome, String> {
    if r.op != op::GET {
        return Err(format!("answered with opcode {:#04x}", r.op));
    }
    let from_wire = match status {
        Status::Ok | Status::NotFound => {
            let found = status == Status::Ok;
            let got = crate::protocol::siblings::decode_causal_get_reply(r.body, found)
                .map_err(|e| e.to_string())?;
            VersionVector::decode_context(got.context)
                .map_err(|e| format!("the answer's context: {e}"))?;
            if found && got.values.is_empty() {
                return Err("a causal GET answered OK without a sibling".into());
            }
            Outcome::Siblings {
                context: got.context.to_vec(),
                values: got
                    .values
                    .iter()
                    .map(|&(v, x)| (Version(v), x.to_vec()))
                    .collect(),
            }
        }
        status => Outcome::Failed {
            status,
            message: r.message(),
        },
    };
    match kept {
        Some(k) if matches!(from_wire, Outcome::Siblings { .. }) && k != from_wire => Err(format!(
            "the answer frame says {from_wire:?}, the coordinator decided {k:?}"
        )),
        _ => Ok(from_wire),
    }
}

/// A version vector for the trace: `[actor:counter ...]`.
pub(super) fn show_vv(v: &VersionVector) -> String {
    let parts: Vec<String> = v.iter().map(|(a, c)| format!("{a}:{c}")).collect();
    format!("[{}]", parts.join(" "))
}

/// A simulated value for the trace: its name, without the padding (`c3-45`).
pub(super) fn short_value(v: &[u8]) -> String {
    let t = String::from_utf8_lossy(v);
    t.trim_end_matches('x').trim_end_matches('-').to_string()
}
