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
        let record = Stored {
            version: w.version,
            expires_at_ms: w.expires_at_ms,
            value: w.value.map(|v| v.to_vec()),
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
        Ok(((before - self.map.len()) as u64, None))
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
}
