//! The replica side of replication: answer a peer's REPLICATE and READ from the local store.
//!
//! This is the whole of it: a write is applied last-write-wins ([`Store::apply`]) and the ack
//! says whether it became the key's record or a newer one was already held; a read returns the
//! record as stored, tombstones and expired records included, because the coordinator needs
//! their versions to pick the newest and to repair. A version-only read returns just the
//! version, from the store's key index ([`Store::read_version`]). The caller must not send a
//! REPLICATE ack before the store has synced the write when its sync policy promises
//! durability on ack (the driver groups the syncs of one event-loop turn, then releases the
//! acks).

use super::peer::{self, PeerRequest, WriteAck};
use crate::storage::{Store, StoreError, Stored};

/// What serving a peer request did, for STATS and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// A REPLICATE was applied (or found stale); `hint` and `repair` echo its `aux` bits.
    Write {
        /// The store now holds this write as the key's record.
        stored: bool,
        /// It was a hint delivery.
        hint: bool,
        /// It was a read repair.
        repair: bool,
    },
    /// A REPLICATE was refused by the store.
    WriteRefused,
    /// A READ was answered.
    Read,
}

/// Serve a REPLICATE or READ (not GOSSIP: membership owns that) and append the reply frame
/// with request id `id` to `out`. Returns `None` for a GOSSIP request, which it leaves alone.
pub fn serve(
    store: &mut dyn Store,
    id: u32,
    req: &PeerRequest<'_>,
    out: &mut Vec<u8>,
) -> Option<Served> {
    match req {
        PeerRequest::Replicate { write, aux, .. } => {
            let hint = aux & peer::AUX_HINT != 0;
            let repair = aux & peer::AUX_REPAIR != 0;
            match store.apply(*write) {
                Ok(applied) => {
                    peer::put_write_ack(out, id, &WriteAck::Done(applied));
                    Some(Served::Write {
                        stored: applied == crate::storage::Applied::Stored,
                        hint,
                        repair,
                    })
                }
                Err(e) => {
                    peer::put_write_ack(out, id, &WriteAck::Refused(e.to_string()));
                    Some(Served::WriteRefused)
                }
            }
        }
        PeerRequest::Read {
            key,
            version_only: true,
            ..
        } => {
            // From the key index alone: the coordinator has the data from another copy.
            let held = store.read_version(key).map_err(|e| e.to_string());
            peer::put_read_version_reply(out, id, &held);
            Some(Served::Read)
        }
        PeerRequest::Read { key, .. } => {
            let record: Result<Option<Stored>, String> =
                store.get(key).map_err(|e: StoreError| e.to_string());
            peer::put_read_reply(out, id, &record);
            if let Ok(Some(Stored { value: Some(v), .. })) = record {
                crate::pool::give_bytes(v); // encoded: the buffer serves a later read
            }
            Some(Served::Read)
        }
        PeerRequest::Gossip { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::peer::PeerReply;
    use crate::protocol::{frame, Response};
    use crate::storage::memory::MemoryStore;
    use crate::storage::{Applied, Write};
    use crate::version::Version;

    fn reply_of(out: &[u8]) -> PeerReply {
        let (f, _) = frame::parse(out).unwrap().unwrap();
        let r = Response::from_frame(&f).unwrap();
        PeerReply::decode(f.op, r.status, r.body).unwrap()
    }

    #[test]
    fn replicate_then_read() {
        let mut store = MemoryStore::new();
        let w = Write {
            key: b"k",
            value: Some(b"v"),
            version: Version(5),
            expires_at_ms: 0,
            causal: false,
        };
        let mut out = Vec::new();
        let served = serve(
            &mut store,
            1,
            &PeerRequest::Replicate {
                write: w,
                aux: 0,
                ring: 1,
            },
            &mut out,
        );
        assert_eq!(
            served,
            Some(Served::Write {
                stored: true,
                hint: false,
                repair: false
            })
        );
        assert_eq!(
            reply_of(&out),
            PeerReply::Write(WriteAck::Done(Applied::Stored))
        );

        out.clear();
        let older = Write {
            version: Version(4),
            ..w
        };
        serve(
            &mut store,
            2,
            &PeerRequest::Replicate {
                write: older,
                aux: peer::AUX_HINT,
                ring: 1,
            },
            &mut out,
        );
        assert_eq!(
            reply_of(&out),
            PeerReply::Write(WriteAck::Done(Applied::Stale {
                current: Version(5)
            }))
        );

        out.clear();
        serve(
            &mut store,
            3,
            &PeerRequest::Read {
                key: b"k",
                ring: 1,
                version_only: false,
            },
            &mut out,
        );
        match reply_of(&out) {
            PeerReply::Read(Ok(Some(s))) => {
                assert_eq!(s.version, Version(5));
                assert_eq!(s.value.as_deref(), Some(&b"v"[..]));
            }
            other => panic!("{other:?}"),
        }
        out.clear();
        serve(
            &mut store,
            4,
            &PeerRequest::Read {
                key: b"zz",
                ring: 1,
                version_only: false,
            },
            &mut out,
        );
        assert_eq!(reply_of(&out), PeerReply::Read(Ok(None)));

        // Version only: the version held, or absent, and never the value.
        for (key, want) in [
            (&b"k"[..], PeerReply::ReadVersion(Version(5))),
            (&b"zz"[..], PeerReply::Read(Ok(None))),
        ] {
            out.clear();
            let req = PeerRequest::Read {
                key,
                ring: 1,
                version_only: true,
            };
            assert_eq!(serve(&mut store, 5, &req, &mut out), Some(Served::Read));
            assert_eq!(reply_of(&out), want);
        }
    }
}
