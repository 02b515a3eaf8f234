//! The durable clock ceiling of a shard: an upper bound, kept on disk through the [`Vfs`], on
//! the versions the shard has let out, so that a restart never issues a version at or below
//! one issued before it, even when the wall clock stepped back and those versions are not in
//! the shard's own store (it coordinated writes for keys it does not replicate, or their
//! records were never synced).
//!
//! The shard core covers its clock before anything of a turn leaves the node
//! ([`crate::shard::ShardCore::finish_turn`]); `kvd` and the simulator run this same code,
//! over the real file system and over the crashable in-memory disk.
//!
//! The file `CLOCK` is a log of 16-byte slots, one appended (and synced) per lease; the newest
//! valid slot wins, so a torn append damages at most the slot being written and an older one
//! still bounds what was let out before it. Past [`CEILING_SLOTS_MAX`] slots, or when a slot
//! is damaged, the file is rewritten with the one current slot (a new file, synced, renamed
//! over the old one). Files of the earlier two-slot layout read the same way.
//!
//! ```text
//!  slot (16 bytes) = | ceiling ms u64 BE | sequence u32 BE | CRC32C of the first 12 bytes u32 BE |
//!  file            = | slot | slot | ... |      newest = highest (sequence, ceiling) with a good CRC
//! ```

use super::vfs::Vfs;
use std::io;
use std::path::{Path, PathBuf};

/// How far ahead of the clock the ceiling is written, at most: one small fsync per lease while
/// the shard issues versions, and a restarted shard's versions lead its wall clock by at most
/// the lease. A cluster member uses a quarter of its max clock offset (see
/// [`lease_for_offset`]), so that a quick restart stays well inside the offset its replicas
/// accept.
pub const CLOCK_LEASE_MS: u64 = 2_000;

/// The shortest lease: at most this many fsyncs a second per shard while it issues versions.
pub const CLOCK_LEASE_MS_MIN: u64 = 50;

/// The lease for a cluster whose max clock offset is `max_offset_ms`: a quarter of it,
/// within [`CLOCK_LEASE_MS_MIN`]..=[`CLOCK_LEASE_MS`].
pub fn lease_for_offset(max_offset_ms: u64) -> u64 {
    (max_offset_ms / 4).clamp(CLOCK_LEASE_MS_MIN, CLOCK_LEASE_MS)
}

/// Slots the `CLOCK` file grows to before it is rewritten with one.
pub const CEILING_SLOTS_MAX: u64 = 256;

const SLOT_SIZE: usize = 16;
const FILE_NAME: &str = "CLOCK";
const TEMP_NAME: &str = "CLOCK.tmp";

/// A durable bound on the versions a shard lets out (see the module doc). Object-safe, so
/// a shard core holds one whatever disk it runs on.
pub trait DurableClock: Send {
    /// The ceiling recovered or last written, ms since the Unix epoch.
    fn ceiling_ms(&self) -> u64;
    /// Make sure the ceiling on disk is at least `clock_ms`: writes `clock_ms + lease` and
    /// syncs when it is not. Returns whether it wrote. An error means the bound may not be
    /// durable: the node must stop before letting anything out.
    fn cover(&mut self, clock_ms: u64) -> io::Result<bool>;
}

/// The ceiling in `dir/CLOCK` on the disk `V`.
pub struct ClockCeiling<V: Vfs> {
    vfs: V,
    dir: PathBuf,
    file: V::File,
    ceiling_ms: u64,
    sequence: u32,
    slots: u64,
    lease_ms: u64,
}

fn decode_slot(b: &[u8]) -> Option<(u64, u32)> {
    let crc = u32::from_be_bytes(b[12..16].try_into().ok()?);
    if crc32c::crc32c(&b[..12]) != crc {
        return None;
    }
    Some((
        u64::from_be_bytes(b[..8].try_into().ok()?),
        u32::from_be_bytes(b[8..12].try_into().ok()?),
    ))
}

fn encode_slot(ceiling_ms: u64, sequence: u32) -> [u8; SLOT_SIZE] {
    let mut slot = [0u8; SLOT_SIZE];
    slot[..8].copy_from_slice(&ceiling_ms.to_be_bytes());
    slot[8..12].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32c::crc32c(&slot[..12]);
    slot[12..].copy_from_slice(&crc.to_be_bytes());
    slot
}

impl<V: Vfs> ClockCeiling<V> {
    /// Open (or create) `dir/CLOCK` on `vfs`, writing ceilings `lease_ms` ahead of the clock;
    /// the ceiling recovered from it (0 for a new file).
    pub fn open(vfs: V, dir: &Path, lease_ms: u64) -> io::Result<ClockCeiling<V>> {
        vfs.create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let existing = vfs.list(dir)?.iter().any(|n| n == FILE_NAME);
        let (bytes, file) = if existing {
            let file = vfs.open(&path)?;
            let len = vfs.len(&file)?;
            let mut bytes = vec![0u8; len as usize];
            vfs.read_at(&file, 0, &mut bytes)?;
            (bytes, file)
        } else {
            let file = vfs.create(&path)?;
            vfs.sync_dir(dir)?;
            (Vec::new(), file)
        };
        let slots: Vec<Option<(u64, u32)>> = bytes
            .chunks(SLOT_SIZE)
            .map(|c| {
                if c.len() == SLOT_SIZE {
                    decode_slot(c)
                } else {
                    None
                }
            })
            .collect();
        let best = slots
            .iter()
            .flatten()
            .max_by_key(|&&(ms, seq)| (seq, ms))
            .copied();
        let damaged = slots.iter().any(Option::is_none);
        if !bytes.is_empty() && best.is_none() {
            log::error!(
                "{}: no valid clock ceiling; versions restart from the store's highest",
                path.display()
            );
        }
        let (ceiling_ms, sequence) = best.unwrap_or((0, 0));
        let mut c = ClockCeiling {
            vfs,
            dir: dir.to_path_buf(),
            file,
            ceiling_ms,
            sequence,
            slots: slots.len() as u64,
            lease_ms,
        };
        if damaged {
            // Appending after a torn slot would misalign every later one: start over.
            c.rewrite(ceiling_ms, sequence)?;
        }
        Ok(c)
    }

    /// Replace the file with one holding the single slot `(ceiling_ms, sequence)`.
    fn rewrite(&mut self, ceiling_ms: u64, sequence: u32) -> io::Result<()> {
        let temp = self.dir.join(TEMP_NAME);
        let mut f = self.vfs.create(&temp)?;
        self.vfs
            .append(&mut f, &encode_slot(ceiling_ms, sequence))?;
        self.vfs.sync(&mut f)?;
        drop(f);
        self.vfs.rename(&temp, &self.dir.join(FILE_NAME))?;
        self.vfs.sync_dir(&self.dir)?;
        self.file = self.vfs.open(&self.dir.join(FILE_NAME))?;
        self.slots = 1;
        Ok(())
    }
}

impl<V: Vfs> DurableClock for ClockCeiling<V> {
    fn ceiling_ms(&self) -> u64 {
        self.ceiling_ms
    }

    fn cover(&mut self, clock_ms: u64) -> io::Result<bool> {
        if clock_ms < self.ceiling_ms {
            return Ok(false);
        }
        let ceiling = clock_ms + self.lease_ms;
        let sequence = self.sequence.wrapping_add(1);
        if self.slots >= CEILING_SLOTS_MAX {
            self.rewrite(ceiling, sequence)?;
        } else {
            self.vfs
                .append(&mut self.file, &encode_slot(ceiling, sequence))?;
            self.vfs.sync(&mut self.file)?;
            self.slots += 1;
        }
        self.ceiling_ms = ceiling;
        self.sequence = sequence;
        Ok(true)
    }
}

/// No ceiling at all: versions restart from the store's highest. Only the simulator's
/// `--raw-clock-recovery` uses it, to show the bug the ceiling fixes (sim-2).
pub struct NoCeiling;

impl DurableClock for NoCeiling {
    fn ceiling_ms(&self) -> u64 {
        0
    }
    fn cover(&mut self, _clock_ms: u64) -> io::Result<bool> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::vfs::{CrashMode, MemVfs};

    #[test]
    fn ceiling_survives_reopen_a_torn_slot_and_rotation() {
        let vfs = MemVfs::new();
        let dir = Path::new("/shard");
        let mut c = ClockCeiling::open(vfs.clone(), dir, CLOCK_LEASE_MS).unwrap();
        assert_eq!(c.ceiling_ms(), 0);
        assert!(c.cover(1_000).unwrap());
        assert!(!c.cover(1_500).unwrap(), "inside the lease: no write");
        assert!(c.cover(5_000).unwrap());
        drop(c);
        vfs.crash(CrashMode::DropUnsynced);
        let c = ClockCeiling::open(vfs.clone(), dir, CLOCK_LEASE_MS).unwrap();
        assert_eq!(c.ceiling_ms(), 5_000 + CLOCK_LEASE_MS);
        drop(c);
        // Damage the newest slot: the older one still bounds what was let out before it.
        let path = dir.join(FILE_NAME);
        let len = vfs.contents(&path).unwrap().len() as u64;
        vfs.flip_bit(&path, len - 3, 1).unwrap();
        let mut c = ClockCeiling::open(vfs.clone(), dir, CLOCK_LEASE_MS).unwrap();
        assert_eq!(c.ceiling_ms(), 1_000 + CLOCK_LEASE_MS);
        assert_eq!(vfs.contents(&path).unwrap().len(), SLOT_SIZE, "rewritten");
        // Many leases: the file is rewritten instead of growing without bound.
        for i in 0..2 * CEILING_SLOTS_MAX {
            assert!(c.cover(10_000 + i * CLOCK_LEASE_MS).unwrap());
        }
        assert!(vfs.contents(&path).unwrap().len() as u64 <= CEILING_SLOTS_MAX * SLOT_SIZE as u64);
        let top = c.ceiling_ms();
        drop(c);
        vfs.crash(CrashMode::DropUnsynced);
        assert_eq!(
            ClockCeiling::open(vfs, dir, CLOCK_LEASE_MS)
                .unwrap()
                .ceiling_ms(),
            top
        );
    }

    #[test]
    fn the_two_slot_layout_reads_the_same() {
        let vfs = MemVfs::new();
        let dir = Path::new("/old");
        let mut f = vfs.create(&dir.join(FILE_NAME)).unwrap();
        vfs.append(&mut f, &encode_slot(9_000, 2)).unwrap();
        vfs.append(&mut f, &encode_slot(7_000, 1)).unwrap();
        vfs.sync(&mut f).unwrap();
        assert_eq!(
            ClockCeiling::open(vfs, dir, CLOCK_LEASE_MS)
                .unwrap()
                .ceiling_ms(),
            9_000
        );
    }
}
