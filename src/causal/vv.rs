//! [`VersionVector`]: for each actor, the highest counter of its dots that is known. An entry
//! `actor: n` stands for every dot `(actor, 1..=n)` (see the module doc for why that holds).

use super::Dot;

/// A version vector: `(actor, counter)` pairs, actors strictly ascending, counters above 0
/// (an absent actor reads as 0). A sorted `Vec` rather than a map: a key's vector names a
/// handful of nodes, and the order is the encoding's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    /// Strictly ascending by actor; every counter > 0. `codec.rs` builds it from bytes.
    pub(super) entries: Vec<(u16, u64)>,
}

impl VersionVector {
    /// The empty vector (no dot known).
    pub fn new() -> VersionVector {
        VersionVector {
            entries: Vec::new(),
        }
    }

    /// The highest counter of `actor`'s dots known; 0 if none.
    pub fn get(&self, actor: u16) -> u64 {
        match self.entries.binary_search_by_key(&actor, |&(a, _)| a) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// Whether the vector covers `dot`: `dot.counter <= get(dot.actor)`.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.actor)
    }

    /// Pointwise maximum with `other`.
    pub fn merge(&mut self, other: &VersionVector) {
        if other.entries.is_empty() {
            return;
        }
        if self.entries.is_empty() {
            self.entries.clone_from(&other.entries);
            return;
        }
        let (a, b) = (&self.entries, &other.entries);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                std::cmp::Ordering::Less => {
                    out.push(a[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(b[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push((a[i].0, a[i].1.max(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
        self.entries = out;
    }

    /// Raise `actor`'s counter to at least `counter` (0 changes nothing: counters stay > 0).
    pub fn raise(&mut self, actor: u16, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.entries.binary_search_by_key(&actor, |&(a, _)| a) {
            Ok(i) => self.entries[i].1 = self.entries[i].1.max(counter),
            Err(i) => self.entries.insert(i, (actor, counter)),
        }
    }

    /// Actors with a counter.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no dot is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `(actor, counter)` pairs, actors ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// Whether every dot `other` covers is covered here (`self >= other` pointwise).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|&(a, c)| self.get(a) >= c)
    }
}
