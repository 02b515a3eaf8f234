//! Disk space: the free-space estimate (measured through the Vfs, lowered as bytes are
//! appended) and the admission of writes against the reserve compaction needs
//! ([`crate::storage::policy::reserve_bytes`]).

use super::LogStore;
use crate::limits::SPACE_MEASURE_INTERVAL_BYTES;
use crate::storage::policy::{self, Space};
use crate::storage::vfs::Vfs;
use crate::storage::StoreError;

impl<V: Vfs> LogStore<V> {
    fn live_bytes_total(&self) -> u64 {
        self.segments.values().map(|s| s.live_bytes).sum()
    }

    /// Measure the free space on the disk (through the Vfs). An error leaves the figure
    /// unknown, which admits writes: the disk itself still refuses them when full.
    pub(super) fn measure_space(&mut self) {
        self.free_bytes = match self.vfs.free_bytes(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("storage: cannot measure the free space: {e}");
                None
            }
        };
        self.appended_since_measure = 0;
    }

    /// The free space and the reserve, as the policy sees them.
    pub(super) fn space(&self) -> Space {
        Space {
            free_bytes: self.free_bytes,
            reserve_bytes: policy::reserve_bytes(
                self.config.space_reserve_bytes,
                self.config.segment_size_max,
                self.live_bytes_total(),
                self.config.stores_sharing_disk,
            ),
        }
    }

    /// Bytes were written to the disk: lower the estimate, re-measure now and then.
    pub(super) fn note_appended(&mut self, bytes: u64) {
        if let Some(f) = &mut self.free_bytes {
            *f = f.saturating_sub(bytes);
        }
        self.appended_since_measure += bytes;
        if self.appended_since_measure >= SPACE_MEASURE_INTERVAL_BYTES {
            self.measure_space();
        }
    }

    /// The refusal of a write that would eat into the reserve, if it would.
    pub(super) fn check_space(&mut self, record_bytes: u64) -> Result<(), StoreError> {
        if policy::write_admitted(self.space(), record_bytes) {
            return Ok(());
        }
        // The estimate only goes down between measurements; compaction (here or in another
        // shard) may have freed space since.
        self.measure_space();
        let space = self.space();
        if policy::write_admitted(space, record_bytes) {
            return Ok(());
        }
        let dead = self.dead_bytes_total();
        Err(StoreError::WritesRefused(format!(
            "disk full: {} bytes free, and writes must leave {} bytes free so that \
             compaction can run ({dead} dead bytes to reclaim in this shard); retry later",
            space.free_bytes.unwrap_or(0),
            space.reserve_bytes
        )))
    }
}
