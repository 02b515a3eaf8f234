//! Damage at rest: checking a record read at a keydir location, forgetting a key whose
//! newest record is damaged (so a replica can repair it), and the background scrub that
//! verifies records nobody reads.

use super::{record_len, LogStore};
use crate::limits::DAMAGED_KEYS_LISTED_MAX;
use crate::storage::keydir::Loc;
use crate::storage::record::decode_record;
use crate::storage::vfs::Vfs;

/// Why the bytes read for `key` at `loc` (in a segment of format `format`) are not its record,
/// if they are not.
pub(super) fn record_damage(buf: &[u8], key: &[u8], loc: &Loc, format: u16) -> Option<String> {
    match decode_record(buf, format) {
        Ok(r)
            if r.key == key
                && r.header.version == loc.version
                && r.header.tombstone == loc.value_len.is_none()
                && r.header.causal == loc.causal =>
        {
            None
        }
        Ok(_) => Some("record does not match the keydir".to_string()),
        Err(e) => Some(e.to_string()),
    }
}

impl<V: Vfs> LogStore<V> {
    /// Forget a key whose newest record is damaged: the key reads as absent from now on, so a
    /// repair from another replica (even of the same version) is accepted instead of being
    /// refused as stale forever, and the key is reported through `take_damaged`. The damaged
    /// bytes stay on disk until compaction; at the next start a repaired copy in a later
    /// segment wins the version tie (see `beats`). Returns the report.
    pub(super) fn forget_damaged(&mut self, key: &[u8], loc: &Loc, why: &str) -> String {
        self.counters.corrupt_records += 1;
        let msg = format!("segment {} offset {}: {why}", loc.segment, loc.offset);
        log::error!(
            "storage: corrupt record: {msg}; forgotten so that a replica can repair the key"
        );
        if let Some(old) = self.keydir.remove(key) {
            self.account(&old, key.len(), false);
        }
        if self.damaged.len() < DAMAGED_KEYS_LISTED_MAX {
            self.damaged.push(key.to_vec());
        }
        msg
    }

    /// Forget a key whose record the file no longer holds (it was cut short: a read through
    /// the map faulted, or `pread` met the end of the file), and keep its segment out of
    /// compaction, which could not account for the lost records. Returns the report.
    pub(super) fn forget_truncated(&mut self, key: &[u8], loc: &Loc, e: &std::io::Error) -> String {
        if let Some(seg) = self.segments.get_mut(&loc.segment) {
            seg.damaged = true;
        }
        self.forget_damaged(key, loc, &format!("record missing from its file: {e}"))
    }

    /// Verify up to `records` records the keydir points at, one cursor step each, so damage
    /// at rest (a flipped bit under a valid hint file) is found even for keys nobody reads.
    /// A full pass over N keys takes N / records maintenance calls.
    pub(super) fn scrub_step(&mut self, records: usize) {
        let mut buf = Vec::new();
        for _ in 0..records {
            if self.keydir.is_empty() {
                return;
            }
            if self.scrub_cursor >= self.keydir.len() {
                self.scrub_cursor = 0;
            }
            let Some((key, loc)) = self.keydir.at(self.scrub_cursor) else {
                return;
            };
            let key = key.to_vec();
            if !self.segments.contains_key(&loc.segment) {
                self.scrub_cursor += 1;
                continue;
            }
            buf.clear();
            buf.resize(record_len(key.len(), loc.value_len) as usize, 0);
            let format = self.segments[&loc.segment].header.format;
            let damage = match self.read_segment(loc.segment, loc.offset as u64, &mut buf) {
                Ok(()) => record_damage(&buf, &key, &loc, format).map(Ok),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Some(Err(e)),
                // Any other I/O error is not proof of damage: leave the key, try again next
                // pass.
                Err(_) => None,
            };
            match damage {
                // Removal moves the last entry into this slot: look at the same index again.
                Some(Ok(why)) => {
                    self.forget_damaged(&key, &loc, &why);
                }
                Some(Err(e)) => {
                    self.forget_truncated(&key, &loc, &e);
                }
                None => self.scrub_cursor += 1,
            }
        }
    }
}
