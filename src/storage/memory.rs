//! An in-memory [`Store`]: a hash map from key to its newest record. No persistence; used by
//! tests and by nodes started without a data directory.

use super::{Applied, KeyMeta, Store, StoreError, Stored, Write};
use crate::version::Version;
use std::collections::HashMap;

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    map: HashMap<Box<[u8]>, Stored>,
    highest: Version,
    dirty: bool,
    bytes: u64,
    /// Keys added or removed: either may reorder the map's iteration (see
    /// [`Store::scan_epoch`]); replacing a held key's record does not.
    changes: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn get(&mut self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        Ok(self.map.get(key).cloned())
    }

    fn version_of(&self, key: &[u8]) -> Option<Version> {
        self.map.get(key).map(|s| s.version)
    }

    fn apply(&mut self, w: Write<'_>) -> Result<Applied, StoreError> {
        if w.causal && w.value.is_none() {
            return Err(super::causal_tombstone_error());
        }
        let record = Stored {
            version: w.version,
            expires_at_ms: w.expires_at_ms,
            value: w.value.map(|v| v.to_vec()),
            causal: w.causal,
        };
        let added = (w.key.len() + w.value.map_or(0, |v| v.len())) as u64;
        match self.map.get_mut(w.key) {
            Some(held) if held.version >= w.version => {
                return Ok(Applied::Stale {
                    current: held.version,
                })
            }
            Some(held) => {
                self.bytes -= (w.key.len() + held.value.as_ref().map_or(0, |v| v.len())) as u64;
                *held = record;
            }
            None => {
                self.map.insert(w.key.into(), record);
                self.changes += 1;
            }
        }
        self.bytes += added;
        self.highest = self.highest.max(w.version);
        self.dirty = true;
        Ok(Applied::Stored)
    }

    fn needs_sync(&self) -> bool {
        self.dirty
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.dirty = false;
        Ok(())
    }

    fn maintenance(&mut self, _now_ms: u64, _budget: usize) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn highest_version(&self) -> Version {
        self.highest
    }

    fn stats(&self, report: &mut dyn FnMut(&'static str, u64)) {
        report("storage_keys", self.map.len() as u64);
        report("storage_bytes", self.bytes);
    }

    /// One step does the whole map (a store for tests).
    fn forget_step(
        &mut self,
        doomed: &mut dyn FnMut(&[u8]) -> bool,
        _cursor: u64,
        _limit: usize,
    ) -> Result<(u64, Option<u64>), StoreError> {
        let before = self.map.len();
        let mut freed = 0u64;
        self.map.retain(|k, s| {
            let gone = doomed(k);
            if gone {
                freed += (k.len() + s.value.as_ref().map_or(0, |v| v.len())) as u64;
            }
            !gone
        });
        self.bytes = self.bytes.saturating_sub(freed);
        self.changes += (before - self.map.len()) as u64;
        Ok(((before - self.map.len()) as u64, None))
    }

    fn scan_epoch(&self) -> u64 {
        self.changes
    }

    /// The cursor is a position in the map's iteration order, stable while the map is not
    /// modified (each step skips `cursor` entries: O(cursor); this store is for tests).
    fn scan_keys(
        &self,
        cursor: u64,
        limit: usize,
        f: &mut dyn FnMut(&[u8], KeyMeta),
    ) -> Result<Option<u64>, StoreError> {
        let start = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut n = 0;
        for (k, s) in self.map.iter().skip(start).take(limit) {
            f(
                k,
                KeyMeta {
                    version: s.version,
                    tombstone: s.value.is_none(),
                    expires_at_ms: s.expires_at_ms,
                    causal: s.causal,
                },
            );
            n += 1;
        }
        let next = start + n;
        Ok((next < self.map.len()).then_some(next as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put<'a>(key: &'a [u8], value: Option<&'a [u8]>, v: u64) -> Write<'a> {
        Write {
            key,
            value,
            version: Version(v),
            expires_at_ms: 0,
            causal: false,
        }
    }

    #[test]
    fn last_write_wins_in_any_order() {
        let mut a = MemoryStore::new();
        let mut b = MemoryStore::new();
        let writes = [
            put(b"k", Some(b"1"), 10),
            put(b"k", None, 30),
            put(b"k", Some(b"2"), 20),
        ];
        for w in writes {
            a.apply(w).unwrap();
        }
        for w in writes.iter().rev() {
            b.apply(*w).unwrap();
        }
        assert_eq!(a.get(b"k").unwrap(), b.get(b"k").unwrap());
        assert_eq!(a.get(b"k").unwrap().unwrap().value, None);
        assert_eq!(
            a.apply(put(b"k", Some(b"x"), 30)).unwrap(),
            Applied::Stale {
                current: Version(30)
            }
        );
    }

    #[test]
    fn the_causal_flag_is_kept_and_returned() {
        let mut m = MemoryStore::new();
        let causal = |key, value, v| Write {
            causal: true,
            ..put(key, Some(value), v)
        };
        m.apply(causal(b"c", b"state", 10)).unwrap();
        m.apply(causal(b"e", b"", 10)).unwrap();
        m.apply(put(b"p", Some(b"plain"), 10)).unwrap();
        let got = m.get(b"c").unwrap().unwrap();
        assert!(got.causal);
        assert_eq!(got.value.as_deref(), Some(&b"state"[..]));
        // An empty state is still a causal value.
        let got = m.get(b"e").unwrap().unwrap();
        assert!(got.causal && got.value.as_deref() == Some(&b""[..]));
        assert!(!m.get(b"p").unwrap().unwrap().causal);
        let mut listed = Vec::new();
        m.scan_keys(0, 10, &mut |k, meta| listed.push((k.to_vec(), meta.causal)))
            .unwrap();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                (b"c".to_vec(), true),
                (b"e".to_vec(), true),
                (b"p".to_vec(), false)
            ]
        );
        // Last-write-wins by version, whatever the flag: an older causal write is stale, a
        // newer plain one replaces the causal record (and clears the flag).
        assert_eq!(
            m.apply(causal(b"p", b"old", 5)).unwrap(),
            Applied::Stale {
                current: Version(10)
            }
        );
        m.apply(put(b"c", Some(b"plain"), 11)).unwrap();
        assert!(!m.get(b"c").unwrap().unwrap().causal);
        // A causal delete is refused and changes nothing.
        let bad = Write {
            causal: true,
            ..put(b"p", None, 20)
        };
        assert!(m.apply(bad).is_err());
        assert_eq!(m.get(b"p").unwrap().unwrap().version, Version(10));
    }
}
