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
//! Beside the committed state the node acts on, the file keeps the node's part in the ring's
//! consensus (`cluster/node/ringvote.rs`): the highest ballot it promised, and the state it
//! accepted last when that is not the committed one. Both must survive a restart, or a node
//! could vote twice in one term or forget a state a majority may have committed.
//!
//! ```text
//!  +------------------+-------------+--------------------+--------------------------------+
//!  | magic "DKVRING2" | length u32  | CRC32C u32 of the  | body                           |
//!  | 8 bytes          | of the body | body               |                                |
//!  +------------------+-------------+--------------------+--------------------------------+
//!  body: +-----------------+-----------------+---------------+-----------------------------+
//!        | promised term   | promised node   | committed len | committed state encoding    |
//!        | u64             | u32             | u32           | (cluster/ringstate.rs)      |
//!        +-----------------+-----------------+---------------+-----------------------------+
//!        +---------------+---------------------------------------------------------------+
//!        | accepted len  | accepted state encoding (len 0: the committed one)            |
//!        | u32           |                                                               |
//!        +---------------+---------------------------------------------------------------+
//! ```
//!
//! A file of the first format (magic "DKVRING1", body = one ring state) still opens: its
//! state is the committed one, nothing was promised or accepted beyond it.

use super::ringstate::RingState;
use crate::storage::vfs::Vfs;
use byteorder::{BigEndian, ByteOrder};
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"DKVRING2";
/// The first format's magic (body: one ring state), still read.
const MAGIC_V1: &[u8; 8] = b"DKVRING1";
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
    /// Replace what is kept with the `committed` state, the ballot `promised` and the
    /// `accepted` state (`None`: the committed one), durably. An error means it may not be
    /// on disk: the caller does not act on it (a promise or an acceptance is not answered).
    fn save(
        &mut self,
        committed: &RingState,
        promised: (u64, u32),
        accepted: Option<&RingState>,
    ) -> io::Result<()>;
}

/// What a ring file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptRing {
    /// The state the node acts on.
    pub committed: RingState,
    /// The highest ballot promised: (term, node).
    pub promised: (u64, u32),
    /// The state accepted last, when it is not the committed one.
    pub accepted: Option<RingState>,
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
    pub fn load(&self) -> io::Result<Option<KeptRing>> {
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
        let v1 = &buf[..8] == MAGIC_V1;
        if &buf[..8] != MAGIC && !v1 {
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
        let state =
            |b: &[u8]| RingState::decode(b).map_err(|e| bad(format!("{}: {e}", path.display())));
        if v1 {
            return Ok(Some(KeptRing {
                committed: state(body)?,
                promised: (0, 0),
                accepted: None,
            }));
        }
        let truncated = || bad(format!("{}: truncated body", path.display()));
        let head = body.get(..16).ok_or_else(truncated)?;
        let promised = (
            BigEndian::read_u64(&head[..8]),
            BigEndian::read_u32(&head[8..12]),
        );
        let clen = BigEndian::read_u32(&head[12..16]) as usize;
        let committed = state(body.get(16..16 + clen).ok_or_else(truncated)?)?;
        let rest = &body[16 + clen..];
        let alen = rest
            .get(..4)
            .map(BigEndian::read_u32)
            .ok_or_else(truncated)? as usize;
        if rest.len() != 4 + alen {
            return Err(truncated());
        }
        let accepted = if alen == 0 {
            None
        } else {
            Some(state(&rest[4..])?)
        };
        Ok(Some(KeptRing {
            committed,
            promised,
            accepted,
        }))
    }
}

impl<V: Vfs + Send> RingStore for RingFile<V> {
    fn save(
        &mut self,
        committed: &RingState,
        promised: (u64, u32),
        accepted: Option<&RingState>,
    ) -> io::Result<()> {
        let c = committed.to_bytes();
        let a = accepted.map(RingState::to_bytes).unwrap_or_default();
        let mut body = Vec::with_capacity(24 + c.len() + a.len());
        body.extend_from_slice(&promised.0.to_be_bytes());
        body.extend_from_slice(&promised.1.to_be_bytes());
        body.extend_from_slice(&(c.len() as u32).to_be_bytes());
        body.extend_from_slice(&c);
        body.extend_from_slice(&(a.len() as u32).to_be_bytes());
        body.extend_from_slice(&a);
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
    fn save(&mut self, _: &RingState, _: (u64, u32), _: Option<&RingState>) -> io::Result<()> {
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
        f.save(&s, (0, 0), None).unwrap();
        let kept = |c: &RingState, p, a: Option<&RingState>| KeptRing {
            committed: c.clone(),
            promised: p,
            accepted: a.cloned(),
        };
        assert_eq!(f.load().unwrap(), Some(kept(&s, (0, 0), None)));
        let s2 = s.admit(4, "h:4").unwrap().with_ballot(3, 1);
        f.save(&s, (3, 1), Some(&s2)).unwrap();
        assert_eq!(f.load().unwrap(), Some(kept(&s, (3, 1), Some(&s2))));
        f.save(&s2, (3, 1), None).unwrap();
        assert_eq!(f.load().unwrap(), Some(kept(&s2, (3, 1), None)));
        vfs.flip_bit(&dir.join(RING_FILE_NAME), 40, 3).unwrap();
        assert!(f.load().is_err());
    }

    /// A file of the first format (one format-1 ring state) opens as the committed state.
    #[test]
    fn reads_the_first_format() {
        let vfs = MemVfs::new();
        let dir = Path::new("/d");
        let f = RingFile::new(vfs.clone(), dir).unwrap();
        let nodes: Vec<(u32, String)> = (1..=3).map(|i| (i, format!("h:{i}"))).collect();
        let s = RingState::initial(&nodes, 2).unwrap();
        let mut body = s.to_bytes();
        body[0] = 1;
        body.truncate(body.len() - 12);
        let mut buf = MAGIC_V1.to_vec();
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        buf.extend_from_slice(&body);
        let mut file = vfs.create(&dir.join(RING_FILE_NAME)).unwrap();
        vfs.append(&mut file, &buf).unwrap();
        vfs.sync(&mut file).unwrap();
        let kept = f.load().unwrap().unwrap();
        assert_eq!(kept.committed, s);
        assert_eq!((kept.promised, kept.accepted), ((0, 0), None));
    }
}
