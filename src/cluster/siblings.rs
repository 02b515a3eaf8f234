//! Siblings mode (`kvd --conflicts siblings`) in a replica's store: how a causal write meets
//! the record a replica holds.
//!
//! In siblings mode a key's record holds its encoded [`CausalState`] (the store's `causal`
//! flag says so) instead of a client value. Every path that brings a write to a replica
//! (a coordinator's REPLICATE or its own copy, a hint, a read repair, anti-entropy, a
//! partition move) goes through [`crate::cluster::antientropy::Tracked`], which hands causal
//! writes to [`apply`] here: the incoming state is *merged* into the held one (the DVV sync,
//! [`CausalState::merge`]), never compared by timestamp, so replicas that see the same states
//! in any order, any number of times, end up with the same state.
//!
//! The store itself stays last-write-wins by version: the merged record is written with a
//! version above the held one (the later of the incoming write's version and one above the
//! held record's), so the newest record of the key is always the latest merge. Versions of a
//! causal record therefore differ between replicas holding the same state; the anti-entropy
//! trees compare states by their [`CausalState::digest`] instead ([`tree_meta`]), except for
//! a state without siblings (a delete's), which is a tombstone at its record's version: the
//! store collects it below the tombstone horizon, and the trees sweep it there alike.

use crate::causal::CausalState;
use crate::limits::SIBLINGS_NEAR_LIMIT;
use crate::storage::{Applied, KeyMeta, Store, StoreError, Stored, Write};
use crate::version::Version;

/// The state a replica's record holds: a causal record's state, or the empty state for no
/// record (or a plain tombstone: a siblings-mode cluster writes none but anti-entropy's drop of
/// a collected key). A plain value in a siblings-mode store (a data directory written under
/// last-write-wins) cannot be merged without dropping it: writes of that key are refused with
/// a message saying so, never silently merged over.
pub fn state_of(key: &[u8], held: Option<&Stored>) -> Result<CausalState, StoreError> {
    match held {
        None => Ok(CausalState::empty()),
        Some(s) if s.causal => {
            let bytes = s.value.as_deref().unwrap_or(&[]);
            CausalState::decode(bytes).map_err(|e| {
                StoreError::Corrupt(format!(
                    "the causal state of key {} is damaged: {e}",
                    show(key)
                ))
            })
        }
        Some(s) if s.value.is_none() => Ok(CausalState::empty()),
        Some(_) => Err(StoreError::WritesRefused(format!(
            "key {} holds a last-write-wins value in a --conflicts siblings store",
            show(key)
        ))),
    }
}

/// A key for a message: its text when printable, else hex (keys are arbitrary bytes).
fn show(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(t) if t.chars().all(|c| !c.is_control()) => format!("{t:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// The store-level expiry of a causal record of a state without siblings (everything was
/// deleted): expired from the start, so compaction collects it once it is below the tombstone
/// horizon, exactly as a tombstone (the store copies an expired causal record whole above the
/// horizon, never as a plain tombstone, which would lose its version vector).
pub const EMPTY_STATE_EXPIRY_MS: u64 = 1;

/// The store-level expiry of a causal record: a state without siblings is collectable (see
/// [`EMPTY_STATE_EXPIRY_MS`]); one with siblings never expires as a record (each sibling
/// carries its own expiry and readers hide expired ones; a state whose siblings have all
/// expired stays until a write supersedes them).
pub fn record_expiry(state: &CausalState) -> u64 {
    if state.siblings().is_empty() {
        EMPTY_STATE_EXPIRY_MS
    } else {
        0
    }
}

/// What the anti-entropy tree holds for a causal record of `state` stored under `version`:
/// the digest of a state with siblings (replicas holding the same state agree whatever the
/// versions their merges gave the record); for an empty state, a tombstone at the record's
/// version, so that it is swept below the horizon in step with the store's collection.
pub fn tree_meta(state: &CausalState, version: Version) -> KeyMeta {
    if state.siblings().is_empty() {
        KeyMeta {
            version,
            tombstone: true,
            expires_at_ms: 0,
            causal: true,
        }
    } else {
        KeyMeta {
            version: Version(tree_version(state.digest())),
            tombstone: false,
            expires_at_ms: 0,
            causal: true,
        }
    }
}

/// What [`apply`] did: the store's answer, and what the anti-entropy tree and the STATS
/// counter of keys near the limit must learn.
pub struct Merged {
    /// As [`Store::apply`] reports it: `Stale { current: write.version }` when the held state
    /// already contained the incoming one (nothing was written; a coordinator counts it as
    /// an acknowledgement, exactly as a duplicate delivery of one write).
    pub applied: Applied,
    /// The anti-entropy tree's entry for the record now held, when it changed.
    pub tree: Option<KeyMeta>,
    /// Whether the key held [`SIBLINGS_NEAR_LIMIT`] siblings or more before, and after.
    pub near_limit: (bool, bool),
}

/// Whether a key with state `s` counts as near the sibling limit (STATS).
pub fn near_limit(s: &CausalState) -> bool {
    s.siblings().len() >= SIBLINGS_NEAR_LIMIT
}

/// Merge the causal write `w` (its value an encoded [`CausalState`]) into what `store` holds
/// for its key, writing the merged state when it differs from the held one.
pub fn apply(store: &mut dyn Store, w: &Write<'_>) -> Result<Merged, StoreError> {
    debug_assert!(w.causal, "only causal writes are merged");
    let incoming = CausalState::decode(w.value.unwrap_or(&[])).map_err(|e| {
        StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a causal write carries a bad state: {e}"),
        ))
    })?;
    let held = store.get(w.key)?;
    let mut state = state_of(w.key, held.as_ref())?;
    let before = near_limit(&state);
    // (Also with no record held: an empty incoming state, a DELETE's over nothing, is not
    // written. Stored, it would differ forever from a replica holding nothing or a tombstone,
    // which merging it leaves as they are, and anti-entropy would send it every round:
    // kvsim --conflicts siblings seed 172.)
    if state.dominates(&incoming) {
        return Ok(Merged {
            applied: Applied::Stale { current: w.version },
            tree: None,
            near_limit: (before, before),
        });
    }
    state.merge(&incoming);
    state.check_hard_limits().map_err(|e| {
        StoreError::WritesRefused(format!(
            "merging key {} would pass a limit: {e}",
            show(w.key)
        ))
    })?;
    let mut bytes = Vec::with_capacity(state.encoded_len());
    state.encode(&mut bytes);
    let version = record_version(w.version, held.as_ref());
    let applied = store.apply(Write {
        key: w.key,
        value: Some(&bytes),
        version,
        expires_at_ms: record_expiry(&state),
        causal: true,
    })?;
    Ok(Merged {
        applied,
        tree: Some(tree_meta(&state, version)),
        near_limit: (before, near_limit(&state)),
    })
}

/// The version a causal record of a write of `version` is stored under: above the held
/// record's, so that the store (last-write-wins by version) takes the new state even when the
/// held one's version came from a clock ahead of this node's.
pub fn record_version(version: Version, held: Option<&Stored>) -> Version {
    let above_held = held.map_or(Version::ZERO, |h| Version(h.version.0.saturating_add(1)));
    version.max(above_held)
}

/// What the anti-entropy tree records as the "version" of a causal record: the digest of its
/// state (with the top bit set, so that it never reads as a small version), so that replicas
/// holding the same state agree whatever the versions their merges gave the record.
pub fn tree_version(digest: u64) -> u64 {
    digest | 1 << 63
}

/// The tree entry of a stored causal record and whether it is near the sibling limit, or
/// `None` when its value does not decode (the tree then leaves the key out, so anti-entropy
/// brings it from a replica whose copy is sound).
pub fn tree_meta_of_record(stored: &Stored) -> Option<(KeyMeta, bool)> {
    let state = CausalState::decode(stored.value.as_deref().unwrap_or(&[])).ok()?;
    Some((tree_meta(&state, stored.version), near_limit(&state)))
}
