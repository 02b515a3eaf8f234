//! The node's ring state on disk (`RING` in the membership shard's directory), through the
//! storage [`Vfs`] so that `kvd` and the simulator keep it alike.
//!
//! A node persists every ring state it adopts before it acts on it: a restarted node knows
//! which partitions it holds (it drops the copies of the others at start) and which change
//! runs, before it has heard from anyone. A lost or damaged file only costs a pull from a
//! peer: the newest ring state is on every node.
//!
//! The file is replaced whole: written to `RING.tmp`, synced, renamed over `RING`, and the
//! directory synced, so a crash leaves the old file or the new one, never a torn one.
//!
//! ```text
//!  +------------------+-------------+--------------------+--------------------------------+
//!  | magic "DKVRING1" | length u32  | CRC32C u32 of the  | ring state encoding            |
//!  | 8 bytes          | of the body | body               | (cluster/ringstate.rs)         |
//!  +------------------+-------------+--------------------+--------------------------------+
//! ```

use super::ringstate::RingState;
use crate::storage::vfs::Vfs;
use byteorder::{BigEndian, ByteOrder};
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"DKVRING1";
const HEADER_SIZE: usize = 16;
/// The file's name in the membership shard's directory.
pub const RING_FILE_NAME: &str = "RING";
const TEMP_NAME: &str = "RING.tmp";
/// Largest ring file read back: a ring state is a few kilobytes; anything far larger is not
/// ours.
const RING_FILE_SIZE_MAX: u64 = 1 << 20;

/// Where a node keeps its ring state. Object-safe: the shard core holds one whatever disk it
/// runs on.
pub trait RingStore: Send {
    /// Replace the kept ring state with `state`, durably. An error means it may not be on
    /// disk: the caller logs it (a restart then pulls the ring from a peer).
    fn save(&mut self, state: &RingState) -> io::Result<()>;
}

/// The ring file in a directory of the disk `V`.
pub struct RingFile<V: Vfs> {
    vfs: V,
    dir: PathBuf,
}

impl<V: Vfs> RingFile<V> {
    /// The ring file of directory `dir` (created when missing).
    pub fn new(vfs: V, dir: &Path) -> io::Result<RingFile<V>> {
        vfs.create_dir_all(dir)?;
        Ok(RingFile {
            vfs,
            dir: dir.to_path_buf(),
        })
    }

    /// The ring state kept, `None` when there is none. A damaged file is an error (the
    /// caller logs it and starts from its configuration: the cluster's newer state is pulled).
    pub fn load(&self) -> io::Result<Option<RingState>> {
        let path = self.dir.join(RING_FILE_NAME);
        let file = match self.vfs.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = self.vfs.len(&file)?;
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        if !(HEADER_SIZE as u64..=RING_FILE_SIZE_MAX).contains(&len) {
            return Err(bad(format!("{}: {len} bytes", path.display())));
        }
        let mut buf = vec![0u8; len as usize];
        self.vfs.read_at(&file, 0, &mut buf)?;
        if &buf[..8] != MAGIC {
            return Err(bad(format!("{}: not a ring file", path.display())));
        }
        let body_len = BigEndian::read_u32(&buf[8..12]) as usize;
        let body = &buf[HEADER_SIZE..];
        if body.len() != body_len || crc32c::crc32c(body) != BigEndian::read_u32(&buf[12..16]) {
            return Err(bad(format!(
                "{}: damaged (length or checksum)",
                path.display()
            )));
        }
        RingState::decode(body)
            .map(Some)
            .map_err(|e| bad(format!("{}: {e}", path.display())))
    }
}

impl<V: Vfs + Send> RingStore for RingFile<V> {
    fn save(&mut self, state: &RingState) -> io::Result<()> {
        let body = state.to_bytes();
        let mut buf = Vec::with_capacity(HEADER_SIZE + body.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        buf.extend_from_slice(&body);
        let tmp = self.dir.join(TEMP_NAME);
        let mut f = self.vfs.create(&tmp)?;
        self.vfs.append(&mut f, &buf)?;
        self.vfs.sync(&mut f)?;
        drop(f);
        self.vfs.rename(&tmp, &self.dir.join(RING_FILE_NAME))?;
        self.vfs.sync_dir(&self.dir)
    }
}

/// No ring file (tests, a node without a data directory of its own).
pub struct NoRingFile;

impl RingStore for NoRingFile {
    fn save(&mut self, _state: &RingState) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::vfs::MemVfs;

    #[test]
    fn saves_loads_and_rejects_damage() {
        let vfs = MemVfs::new();
        let dir = Path::new("/d");
        let mut f = RingFile::new(vfs.clone(), dir).unwrap();
        assert_eq!(f.load().unwrap(), None);
        let nodes: Vec<(u32, String)> = (1..=3).map(|i| (i, format!("h:{i}"))).collect();
        let s = RingState::initial(&nodes, 2).unwrap();
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap(), Some(s.clone()));
        let s2 = s.admit(4, "h:4").unwrap();
        f.save(&s2).unwrap();
        assert_eq!(f.load().unwrap(), Some(s2));
        vfs.flip_bit(&dir.join(RING_FILE_NAME), 40, 3).unwrap();
        assert!(f.load().is_err());
    }
}
