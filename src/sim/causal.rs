//! Siblings mode (`kvsim --conflicts siblings`, protocol.md § 19): the checkers that replace
//! the last-write-wins ones, and the replicas' causal states as the end checks read them.
//!
//! Every PUT's value is unique to the run, so a sibling names its write; an acknowledged PUT
//! answered version `v` has the dot `(v.node_id(), v)` (`cluster/node/causal.rs`). A PUT or
//! DELETE carries the context its client read (empty: blind); a write *supersedes* a dot when
//! its context contains it. What is checked:
//!
//! * **Reads name real writes** (`phantom-read`): every sibling a GET returns is the value of
//!   a PUT of that key, with the version that PUT was acknowledged with, if it was.
//! * **Quorum reads see acknowledged writes** (`stale-read`, the siblings analogue of the
//!   last-write-wins one): a GET with R replies that started after a PUT without a time to
//!   live was acknowledged by W replicas, R + W > N, returns that PUT among its siblings,
//!   unless a write whose context contains its dot was sent before the GET was answered (it
//!   may have superseded it), or a replica of the key may have lost data in between.
//! * **No acknowledged write is lost** (`lost-write`): after convergence, every acknowledged
//!   PUT covered by the durability promise is a sibling of the key's final state (same dot,
//!   or its value; live or expired), or was superseded by some PUT or DELETE that was sent
//!   (acknowledged or not, but not refused with a status that promises nothing was written)
//!   with a context containing its dot. Expired siblings count: they stay in the state until a
//!   write whose context saw them (`cluster/siblings.rs`, `record_expiry`).
//! * **Final siblings are real** (`phantom-read`, `sibling-dot`, `refused-write`): every
//!   sibling of a final state is the value of a PUT of that key; if that PUT was
//!   acknowledged, the sibling has its dot and version; and no PUT answered UNAVAILABLE,
//!   OVERLOADED, CLOCK_OFFSET, TOO_MANY_SIBLINGS or BAD_REQUEST ("nothing was written") is
//!   ever read or held.
//! * **Superseded writes stay superseded** (`resurrected`): no final sibling's dot is in the
//!   context of an acknowledged write covered by the durability promise (that write's state,
//!   which dropped the sibling, survives on a replica, and the merge keeps it dropped).
//! * **Replicas converge** (`convergence`, `liveness.rs`): after the liveness phase, every
//!   replica of a key holds the same causal state (record versions differ between replicas
//!   holding one state: they are not compared), or each holds none (no record, or a plain
//!   tombstone).
//! * `flip` (`elastic.rs`): the new owners of a flipped partition know every acknowledged,
//!   covered PUT of its keys (its dot is in their state's vector: held, or superseded) at
//!   least as often as its level asked.
//!
//! `version-order` and `clock-bound` hold as in last-write-wins mode (the versions are the
//! coordinators' hybrid clocks'); `write-order` does not apply (causality is the dots', and
//! two writes ordered in time by different coordinators may get versions in either order);
//! nor does `ttl` (a causal read does not carry expiries).

use super::check::{key_name, show_version, History, OpKind};
use super::trace::trace;
use super::world::World;
use crate::causal::{CausalState, Dot};
use crate::cluster::coordinator::Outcome;
use crate::hash::shard_of;
use crate::storage::Stored;
use crate::version::Version;

/// What one replica holds for a key, as the end checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// No record, a plain tombstone (a siblings-mode cluster writes none but the
    /// anti-entropy's drop of a collected key), or a causal state without siblings.
    Dead,
    /// A causal state (its siblings, live or expired, and its vector).
    State(CausalState),
}

/// Decode a replica's record of a key.
pub(super) fn held_of(rec: Option<&Stored>) -> Result<Held, String> {
    let Some(rec) = rec else {
        return Ok(Held::Dead);
    };
    if !rec.causal {
        return match rec.value {
            None => Ok(Held::Dead),
            Some(_) => Err("a last-write-wins value".into()),
        };
    }
    let state = CausalState::decode(rec.value.as_deref().unwrap_or(&[]))
        .map_err(|e| format!("a damaged state: {e}"))?;
    if state.siblings().is_empty() {
        // A state without siblings (a delete's) is a tombstone: collected below the horizon,
        // so one replica may hold it while another already dropped it, as with tombstones.
        return Ok(Held::Dead);
    }
    Ok(Held::State(state))
}

/// A state for a report: `[vector] {dot=value ...}`.
pub(super) fn show_state(s: &CausalState) -> String {
    let sibs: Vec<String> = s
        .siblings()
        .iter()
        .map(|x| format!("{}={}", x.dot, super::client::short_value(&x.value)))
        .collect();
    format!("{} {{{}}}", super::client::show_vv(s.vv()), sibs.join(" "))
}

impl History {
    /// Whether a PUT or DELETE of `key` that was sent by `until` (and not refused: see
    /// [`OpRecord::refused`]) carried a context containing `dot`: it may have superseded it.
    pub(super) fn superseded(&self, key: u32, dot: Dot, until: u64) -> Option<u64> {
        self.by_key[&key]
            .iter()
            .map(|&s| &self.ops[s as usize])
            .find(|s| {
                s.start_ms <= until
                    && !s.refused()
                    && s.ctx.as_ref().is_some_and(|c| c.contains(dot))
            })
            .map(|s| s.id)
    }

    /// Whether a DELETE of `key` (not refused: see [`OpRecord::refused`]) carried a context
    /// containing `dot`.
    pub(super) fn deleted(&self, key: u32, dot: Dot) -> bool {
        self.by_key[&key]
            .iter()
            .map(|&s| &self.ops[s as usize])
            .any(|s| {
                s.kind == OpKind::Delete
                    && !s.refused()
                    && s.ctx.as_ref().is_some_and(|c| c.contains(dot))
            })
    }

    /// Siblings mode: `phantom-read` and `stale-read` of GET op `id`, answered at `t`.
    pub(super) fn check_read_siblings(&mut self, id: u64, t: u64) {
        let op = self.ops[id as usize].clone();
        let key = op.key;
        let base = self.base_ms;
        let values: Vec<(Version, Vec<u8>)> = match &op.outcome {
            Some(Outcome::Siblings { values, .. }) => values.clone(),
            // A plain GET: its one sibling, or none.
            Some(Outcome::Found { version, value, .. }) => vec![(*version, value.clone())],
            Some(Outcome::NotFound) => Vec::new(),
            _ => return, // failed reads (and SIBLINGS to a plain GET) promise nothing
        };
        for (version, value) in &values {
            let d = match self.values.get(value).map(|&w| &self.ops[w as usize]) {
                None => Some(format!(
                    "GET op {id} returned {:?} (version {}), a value never written",
                    String::from_utf8_lossy(value),
                    show_version(*version, base)
                )),
                Some(w) if w.key != key => Some(format!(
                    "GET op {id} returned the value of op {} on another key",
                    w.id
                )),
                // A causal write is never issued again: its sibling has its version.
                Some(w) if w.acked_version().is_some_and(|v| v != *version) => Some(format!(
                    "GET op {id} returned the value of PUT op {} with version {}, but that \
                     PUT was acknowledged with version {}",
                    w.id,
                    show_version(*version, base),
                    show_version(w.acked_version().expect("matched"), base)
                )),
                Some(_) => None,
            };
            if let Some(d) = d {
                self.violation("phantom-read", Some(key), d);
            }
        }
        // stale-read: every acknowledged, covered PUT without a time to live, with R + W > N,
        // that nothing sent before this answer may have superseded, is among the siblings.
        let n = self.replicas;
        let mut judged = false;
        let mut missing = None;
        for &w in &self.by_key[&key] {
            let w = &self.ops[w as usize];
            let Some(dot) = w.dot() else { continue };
            // (Not a PUT with a time to live: a coordinator whose clock runs ahead, one minutes
            // off among them, reads it as expired early; last-write-wins's `stale-read` leaves
            // them out too.)
            if w.ttl_ms > 0
                || w.end_ms.is_none_or(|e| e >= op.start_ms)
                || w.required + op.required <= n
                || !self.covered(w, t, true)
                || self.superseded(key, dot, t).is_some()
            {
                continue;
            }
            judged = true;
            if !values.iter().any(|(_, v)| Some(v) == w.value.as_ref()) {
                missing = Some(w.id);
                break;
            }
        }
        self.reads_checked += u64::from(judged);
        if let Some(w) = missing {
            let w = &self.ops[w as usize];
            let shown: Vec<String> = values
                .iter()
                .map(|(v, x)| {
                    format!(
                        "{}={}",
                        show_version(*v, base),
                        super::client::short_value(x)
                    )
                })
                .collect();
            let d = format!(
                "GET op {id} ({} via n{}, started {} ms) returned [{}], but PUT op {} ({} via \
                 n{}, value {}) was acknowledged with version {} at {} ms and no write sent \
                 since carried a context containing its dot",
                super::options::consistency_name(op.consistency),
                op.coordinator,
                op.start_ms,
                shown.join(" "),
                w.id,
                super::options::consistency_name(w.consistency),
                w.coordinator,
                super::client::short_value(w.value.as_deref().unwrap_or_default()),
                show_version(w.acked_version().expect("acked"), base),
                w.end_ms.unwrap_or(0)
            );
            self.violation("stale-read", Some(key), d);
        }
    }

    /// Siblings mode, the end checks of one key whose replicas converged on `held` at `t`:
    /// final siblings are real, not refused, not resurrected; acknowledged PUTs are not lost.
    pub(super) fn check_final_siblings(&mut self, key: u32, held: &Held, t: u64) {
        let base = self.base_ms;
        let empty = CausalState::empty();
        let state = match held {
            Held::State(s) => s,
            Held::Dead => &empty,
        };
        let mut found: Vec<(&'static str, String)> = Vec::new();
        for sib in state.siblings() {
            let Some(w) = self.values.get(&sib.value).map(|&w| &self.ops[w as usize]) else {
                found.push((
                    "phantom-read",
                    format!(
                        "the final state holds sibling {} = {:?}, a value never written",
                        sib.dot,
                        String::from_utf8_lossy(&sib.value)
                    ),
                ));
                continue;
            };
            if w.key != key {
                found.push((
                    "phantom-read",
                    format!(
                        "the final state holds the value of op {} on another key",
                        w.id
                    ),
                ));
                continue;
            }
            if let (Some(v), Some(dot)) = (w.acked_version(), w.dot()) {
                if sib.dot != dot || sib.version != v.0 {
                    found.push((
                        "sibling-dot",
                        format!(
                            "the final state holds PUT op {}'s value as dot {} version {}, but \
                             it was acknowledged with version {} (dot {dot})",
                            w.id,
                            sib.dot,
                            show_version(Version(sib.version), base),
                            show_version(v, base)
                        ),
                    ));
                }
            }
            if w.refused() {
                found.push((
                    "refused-write",
                    format!(
                        "the final state holds the value of PUT op {} (via n{}), which was \
                         answered {:?}: nothing was written",
                        w.id, w.coordinator, w.outcome
                    ),
                ));
            }
            let resurrected = self.by_key[&key]
                .iter()
                .map(|&s| &self.ops[s as usize])
                .find(|s| {
                    s.acked_version().is_some()
                        && s.ctx.as_ref().is_some_and(|c| c.contains(sib.dot))
                        && self.covered(s, t, false)
                });
            if let Some(s) = resurrected {
                found.push((
                    "resurrected",
                    format!(
                        "the final state holds PUT op {}'s sibling {}, which {:?} op {} ({} via \
                         n{}, acknowledged with version {} at {} ms) superseded",
                        w.id,
                        sib.dot,
                        s.kind,
                        s.id,
                        super::options::consistency_name(s.consistency),
                        s.coordinator,
                        show_version(s.acked_version().expect("acked"), base),
                        s.end_ms.unwrap_or(0)
                    ),
                ));
            }
        }
        let mut judged = false;
        for &w in &self.by_key[&key] {
            let w = &self.ops[w as usize];
            let Some(dot) = w.dot() else { continue };
            if !self.covered(w, t, false) {
                continue;
            }
            judged = true;
            let present = state
                .siblings()
                .iter()
                .any(|s| s.dot == dot || Some(&s.value) == w.value.as_ref());
            if present || self.superseded(key, dot, u64::MAX).is_some() {
                continue;
            }
            found.push((
                "lost-write",
                format!(
                    "replicas converged on {} but PUT op {} ({} via n{}, value {}) was \
                     acknowledged with version {} (dot {dot}) at {} ms, and no write sent \
                     carried a context containing its dot",
                    match held {
                        Held::State(s) => show_state(s),
                        Held::Dead => "nothing".into(),
                    },
                    w.id,
                    super::options::consistency_name(w.consistency),
                    w.coordinator,
                    super::client::short_value(w.value.as_deref().unwrap_or_default()),
                    show_version(w.acked_version().expect("acked"), base),
                    w.end_ms.unwrap_or(0)
                ),
            ));
        }
        self.keys_checked += u64::from(judged);
        for (checker, d) in found {
            self.violation(checker, Some(key), d);
        }
    }
}

impl World {
    /// Siblings mode: the state every replica of `key` holds, if they all agree (the same
    /// state, or nothing that reads); else what each holds.
    pub(super) fn agreed_causal(&mut self, key: u32) -> Result<Held, String> {
        let kname = key_name(key);
        let prefs = self.ring.preference_for_key(&kname).to_vec();
        let mut held = Vec::with_capacity(prefs.len());
        for &r in &prefs {
            let n = &mut self.nodes[r as usize - 1];
            let shards = n.shards;
            let Some(run) = n.up.as_mut() else {
                return Err(format!("n{r} is down"));
            };
            // The shard that owns the key there, as requests are routed.
            let got = run.cores[shard_of(&kname, shards)]
                .store_mut()
                .get(&kname)
                .map_err(|e| format!("n{r} cannot read it: {e}"))?;
            held.push(held_of(got.as_ref()).map_err(|e| format!("n{r} holds {e}"))?);
        }
        if held.windows(2).all(|w| w[0] == w[1]) {
            return Ok(held.pop().unwrap_or(Held::Dead));
        }
        let seen: Vec<String> = prefs
            .iter()
            .zip(&held)
            .map(|(r, h)| match h {
                Held::Dead => format!("n{r}=nothing"),
                Held::State(s) => format!("n{r}={}", show_state(s)),
            })
            .collect();
        Err(seen.join(" "))
    }

    /// Siblings mode, `flip` (see [`World::check_flip`]): partition `p` just flipped to
    /// `owners`: every acknowledged, covered PUT of its keys is known (its dot in the state's
    /// vector: a sibling, or superseded) by as many of them as its level asked. Owners down
    /// are given the benefit of the doubt.
    pub(super) fn check_flip_causal(&mut self, p: usize, owners: &[u32], version: u64) {
        let now = self.now;
        for k in 0..self.p.keys {
            let kname = key_name(k);
            if crate::hash::partition_of(&kname) != p {
                continue;
            }
            let Some(ops) = self.hist.by_key.get(&k) else {
                continue;
            };
            let writes: Vec<(u64, Dot, usize)> = ops
                .iter()
                .map(|&w| &self.hist.ops[w as usize])
                .filter(|w| w.kind == OpKind::Put && self.hist.covered(w, now, true))
                .filter_map(|w| w.dot().map(|d| (w.id, d, w.required)))
                // A PUT a DELETE's context saw may be in a state without siblings, which is
                // collected below the tombstone horizon like a tombstone (and not copied to a
                // new owner then): left to `lost-write`, as the last-write-wins check leaves
                // a PUT a delete may shadow.
                .filter(|&(_, dot, _)| !self.hist.deleted(k, dot))
                .collect();
            if writes.is_empty() {
                continue;
            }
            // What each owner holds: `None` when down (benefit of the doubt).
            let mut states: Vec<(u32, Option<Option<CausalState>>)> = Vec::new();
            for &n in owners {
                let node = &mut self.nodes[n as usize - 1];
                let shards = node.shards;
                let got = node.up.as_mut().map(|run| {
                    run.cores[shard_of(&kname, shards)]
                        .store_mut()
                        .get(&kname)
                        .ok()
                        .flatten()
                        .filter(|s| s.causal)
                        .and_then(|s| CausalState::decode(s.value.as_deref().unwrap_or(&[])).ok())
                });
                states.push((n, got));
            }
            for (id, dot, required) in writes {
                let holding: Vec<u32> = states
                    .iter()
                    .filter(|(_, s)| match s {
                        None => true,
                        Some(Some(state)) => state.vv().contains(dot),
                        Some(None) => false,
                    })
                    .map(|(n, _)| *n)
                    .collect();
                if holding.len() < required {
                    let d = format!(
                        "partition {p} flipped to {owners:?} (ring version {version}), but only \
                         {holding:?} know PUT op {id} (dot {dot}), acknowledged by {required}"
                    );
                    trace!(self.trace, "flip k{k}: {d}");
                    self.hist.report("flip", Some(k), d);
                }
            }
        }
    }
}
