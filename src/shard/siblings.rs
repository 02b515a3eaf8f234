//! Siblings mode (`--conflicts siblings`, protocol.md § 19) at the shard: the replies of a
//! GET whose answer is a set of siblings, and COORDINATE, a siblings-mode write another node
//! hands over to this replica.

use super::cluster::ReplyTo;
use super::{ConnId, ShardCore};
use crate::cluster::peer;
use crate::protocol::message::{put_error, put_ok, put_reply};
use crate::protocol::{op, FrameRef, Status};

impl ShardCore {
    /// COORDINATE: another node hands this (owning) shard a siblings-mode write of a key this
    /// node holds a replica of; the reply goes to `origin`'s peer session `conn` once the
    /// write is done (or refused), as a client's would.
    pub(super) fn coordinate_request(
        &mut self,
        now_ms: u64,
        origin: usize,
        conn: ConnId,
        f: &FrameRef<'_>,
    ) {
        let ctx = ReplyTo {
            shard: origin,
            conn,
            op: f.op,
            id: f.id,
            causal: false,
        };
        let request = match peer::coordinate::Coordinate::decode(f.aux, f.body) {
            Ok(r) => r,
            Err(e) => return self.refuse(ctx, e.status(), e.to_string()),
        };
        let Some(c) = self.cluster.as_mut() else {
            return self.refuse(ctx, Status::Unauthorized, "not part of a cluster".into());
        };
        if c.node.config().conflicts != crate::cluster::Conflicts::Siblings {
            let why = "COORDINATE needs --conflicts siblings on every node".to_string();
            return self.refuse(ctx, Status::BadRequest, why);
        }
        if let Some(why) = &self.write_error {
            return self.refuse_write(ctx, why.clone());
        }
        let store = self.store.as_mut();
        let c = self.cluster.as_mut().expect("checked above");
        c.node.causal_write(
            now_ms,
            store,
            ctx,
            request.key,
            request.context,
            request.value,
            request.expires_at_ms,
            request.consistency,
            true,
        );
        self.pump();
    }
}

/// Encode a siblings-mode GET's answer: the causal reply for a request with the causal flag;
/// for one without, the plain reply of its one sibling (or NOT_FOUND), and SIBLINGS when there
/// are several (a plain reply cannot carry them, and picking one would hide the others).
pub(super) fn siblings_reply(
    dest: &mut Vec<u8>,
    ctx: &ReplyTo,
    context: &[u8],
    mut values: Vec<(crate::version::Version, Vec<u8>)>,
) -> Status {
    if ctx.causal {
        return crate::protocol::siblings::put_causal_get_reply(dest, ctx.id, context, &values);
    }
    match values.len() {
        0 => {
            put_reply(dest, op::GET, Status::NotFound, ctx.id, &[]);
            Status::NotFound
        }
        1 => {
            let (version, value) = values.pop().expect("one");
            put_ok(dest, op::GET, ctx.id, &[&version.0.to_be_bytes(), &value]);
            Status::Ok
        }
        n => {
            let message = format!(
                "the key has {n} siblings (concurrent writes): read it with the causal flag \
                 (aux bit 2, protocol.md § 19) and write with its context to resolve them"
            );
            put_error(dest, op::GET, ctx.id, Status::Siblings, &message);
            Status::Siblings
        }
    }
}
