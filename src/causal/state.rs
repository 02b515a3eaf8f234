//! [`CausalState`]: a key's version vector and siblings, and the two ways it changes: a write
//! coordinated here ([`CausalState::update`]) and a state received from another replica
//! ([`CausalState::merge`]).

use super::codec::{SIBLING_HEADER_SIZE, STATE_FIXED_SIZE, VV_ENTRY_SIZE};
use super::{CausalError, Dot, VersionVector};
use crate::limits::{
    CAUSAL_STATE_BYTES_MAX, CAUSAL_STATE_WRITE_BYTES_MAX, CONTEXT_ACTORS_MAX, SIBLINGS_HARD_MAX,
    SIBLINGS_MAX,
};

/// One write that no later write has superseded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// The write's name.
    pub dot: Dot,
    /// The HLC version its coordinator gave the write: shown to readers, and what the store
    /// orders the key's records by. Not used for causality (that is the dot's job).
    pub version: u64,
    /// Absolute expiry in ms; 0 = never.
    pub expires_at_ms: u64,
    /// The value.
    pub value: Vec<u8>,
}

impl Sibling {
    /// Whether the sibling still reads at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms
    }

    /// What orders two copies of the same dot (only after dot reuse, see the module doc): any
    /// total order of the contents keeps the merge a join; this one prefers the newer write.
    fn content(&self) -> (u64, u64, &[u8]) {
        (self.version, self.expires_at_ms, &self.value)
    }

    fn encoded_len(&self) -> usize {
        SIBLING_HEADER_SIZE + self.value.len()
    }
}

/// The value of a write, for [`CausalState::update`]. Owned: it becomes a [`Sibling`] as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewValue {
    /// The HLC version the coordinator gave the write.
    pub version: u64,
    /// Absolute expiry in ms; 0 = never.
    pub expires_at_ms: u64,
    /// The value.
    pub value: Vec<u8>,
}

/// A key's causal state: the dots known (`vv`) and the writes not superseded (siblings).
/// Invariant (kept by every constructor and operation, checked by `decode`): siblings
/// strictly ascending by dot, and every sibling's dot contained in `vv`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CausalState {
    pub(super) vv: VersionVector,
    pub(super) siblings: Vec<Sibling>,
}

impl CausalState {
    /// The state of a key never written: no dot, no sibling.
    pub fn empty() -> CausalState {
        CausalState::default()
    }

    /// The dots known: the causal context a reader gets with the siblings.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// Every sibling, expired ones included, ascending by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// The siblings that have not expired at `now_ms`, ascending by dot.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &Sibling> + '_ {
        self.siblings.iter().filter(move |s| s.is_live(now_ms))
    }

    /// Whether the key reads as absent at `now_ms` (no live sibling): deleted, expired, or
    /// never written.
    pub fn is_tombstone(&self, now_ms: u64) -> bool {
        self.live(now_ms).next().is_none()
    }

    /// When the whole state reads as empty for good: 0 if there is no sibling or one never
    /// expires, else the latest expiry.
    pub fn expires_at_ms(&self) -> u64 {
        let mut latest = 0;
        for s in &self.siblings {
            if s.expires_at_ms == 0 {
                return 0;
            }
            latest = latest.max(s.expires_at_ms);
        }
        latest
    }

    /// Merge `other` into `self` (anti-entropy, replication, read repair). Per dot, the
    /// greater of absent < present < superseded (module doc): a sibling of `self` stays if
    /// `other` has it too or has not seen its dot; a sibling of `other` comes in if `self` had
    /// not seen its dot. The same dot present on both sides keeps the greater content.
    /// Commutative, associative, idempotent. The result may exceed the write limits (each
    /// side was within them): [`CausalState::check_hard_limits`] is the replica's check.
    pub fn merge(&mut self, other: &CausalState) {
        let mine = std::mem::take(&mut self.siblings);
        let mut out = Vec::with_capacity(mine.len().max(other.siblings.len()));
        let mut theirs = other.siblings.iter().peekable();
        // `self.vv` is still the vector from before the merge here.
        for s in mine {
            while let Some(o) = theirs.next_if(|o| o.dot < s.dot) {
                if !self.vv.contains(o.dot) {
                    out.push(o.clone());
                }
            }
            match theirs.next_if(|o| o.dot == s.dot) {
                Some(o) if o.content() > s.content() => out.push(o.clone()),
                Some(_) => out.push(s),
                None if !other.vv.contains(s.dot) => out.push(s),
                None => {}
            }
        }
        for o in theirs {
            if !self.vv.contains(o.dot) {
                out.push(o.clone());
            }
        }
        self.siblings = out;
        self.vv.merge(&other.vv);
    }

    /// The merge of `a` and `b` as a new state.
    pub fn merged(a: &CausalState, b: &CausalState) -> CausalState {
        let mut s = a.clone();
        s.merge(b);
        s
    }

    /// Whether merging `other` into `self` would change nothing (`self` is at least as new:
    /// a replica whose state `other` dominates is stale).
    pub fn dominates(&self, other: &CausalState) -> bool {
        // With other.vv covered, none of other's siblings can come in (each dot is in
        // other.vv); what remains is whether each of ours stays as it is.
        if !self.vv.dominates(&other.vv) {
            return false;
        }
        self.siblings.iter().all(
            |s| match other.siblings.binary_search_by_key(&s.dot, |o| o.dot) {
                Ok(i) => other.siblings[i].content() <= s.content(),
                Err(_) => !other.vv.contains(s.dot),
            },
        )
    }

    /// A write coordinated by replica `actor` with the client's context `ctx` (what its read
    /// returned; empty for a blind write). The siblings whose dots `ctx` contains are
    /// superseded (the client saw them) and dropped, `ctx` joins the vector, and a value gets
    /// the dot `(actor, max(vv[actor], ctx[actor]) + 1)`. `write: None` is a DELETE: it drops
    /// what `ctx` saw and adds no dot (the vector remembers the deletion).
    ///
    /// The result is measured before anything changes; on error `self` is unchanged. Refused:
    /// more than [`SIBLINGS_MAX`] siblings (expired ones count: they stay in the state), more
    /// than [`CONTEXT_ACTORS_MAX`] actors, more than [`CAUSAL_STATE_WRITE_BYTES_MAX`] encoded
    /// bytes, or a counter that cannot grow (a forged context at `u64::MAX`). Returns the new
    /// write's dot.
    pub fn update(
        &mut self,
        ctx: &VersionVector,
        actor: u16,
        write: Option<NewValue>,
    ) -> Result<Option<Dot>, CausalError> {
        self.update_at(ctx, actor, write, 0)
    }

    /// [`CausalState::update`] with the new dot's counter at least `counter_floor`. A node
    /// passes its write's HLC version, which only grows, even across restarts: its dots are
    /// then never reused, even after it lost writes it had made (gaps in an actor's counters
    /// are harmless: the vector's claim "every dot up to n" covers dots that never existed).
    pub fn update_at(
        &mut self,
        ctx: &VersionVector,
        actor: u16,
        write: Option<NewValue>,
        counter_floor: u64,
    ) -> Result<Option<Dot>, CausalError> {
        let mut vv = self.vv.clone();
        vv.merge(ctx);
        let dot = match write {
            None => None,
            Some(_) => {
                // vv.get(actor) is already max(self.vv[actor], ctx[actor]).
                let counter = vv
                    .get(actor)
                    .checked_add(1)
                    .ok_or_else(|| {
                        CausalError::Malformed(format!("counter of actor {actor} cannot grow"))
                    })?
                    .max(counter_floor);
                vv.raise(actor, counter);
                Some(Dot { actor, counter })
            }
        };
        let mut count = 0;
        let mut siblings_bytes = 0;
        for s in self.siblings.iter().filter(|s| !ctx.contains(s.dot)) {
            count += 1;
            siblings_bytes += s.encoded_len();
        }
        if let Some(w) = &write {
            count += 1;
            siblings_bytes += SIBLING_HEADER_SIZE + w.value.len();
        }
        if count > SIBLINGS_MAX {
            return Err(CausalError::TooManySiblings { count });
        }
        if vv.len() > CONTEXT_ACTORS_MAX {
            return Err(CausalError::ContextTooLarge { actors: vv.len() });
        }
        let bytes = STATE_FIXED_SIZE + VV_ENTRY_SIZE * vv.len() + siblings_bytes;
        if bytes > CAUSAL_STATE_WRITE_BYTES_MAX {
            return Err(CausalError::StateTooLarge { bytes });
        }

        self.siblings.retain(|s| !ctx.contains(s.dot));
        self.vv = vv;
        if let (Some(dot), Some(w)) = (dot, write) {
            // The new counter is above every counter of `actor` in the old vector, hence
            // above every sibling of `actor`: the dot is new, its place is free.
            let at = self.siblings.partition_point(|s| s.dot < dot);
            self.siblings.insert(
                at,
                Sibling {
                    dot,
                    version: w.version,
                    expires_at_ms: w.expires_at_ms,
                    value: w.value,
                },
            );
        }
        debug_assert_eq!(self.encoded_len(), bytes);
        Ok(dot)
    }

    /// What a replica checks of a state it received or merged: at most [`SIBLINGS_HARD_MAX`]
    /// siblings, [`CONTEXT_ACTORS_MAX`] actors, [`CAUSAL_STATE_BYTES_MAX`] encoded bytes.
    /// Merges of concurrent coordinators' results can pass the write limits; these bound them.
    pub fn check_hard_limits(&self) -> Result<(), CausalError> {
        if self.siblings.len() > SIBLINGS_HARD_MAX {
            return Err(CausalError::TooManySiblings {
                count: self.siblings.len(),
            });
        }
        if self.vv.len() > CONTEXT_ACTORS_MAX {
            return Err(CausalError::ContextTooLarge {
                actors: self.vv.len(),
            });
        }
        let bytes = self.encoded_len();
        if bytes > CAUSAL_STATE_BYTES_MAX {
            return Err(CausalError::StateTooLarge { bytes });
        }
        Ok(())
    }

    /// Bytes of [`CausalState::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        STATE_FIXED_SIZE
            + VV_ENTRY_SIZE * self.vv.len()
            + self
                .siblings
                .iter()
                .map(Sibling::encoded_len)
                .sum::<usize>()
    }

    /// A stable 64-bit digest of the state: [`crate::hash::key_hash`] (FNV-1a 64 + fmix64,
    /// fixed by the protocol) over the canonical encoding, so equal states have equal digests
    /// on every build and platform. Costs one pass over the encoding (about a nanosecond a
    /// byte) and a buffer of its size.
    pub fn digest(&self) -> u64 {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        crate::hash::key_hash(&buf)
    }
}
