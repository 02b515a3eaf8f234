//! A [`HintLog`] in an append-only file, through the storage engine's [`Vfs`] (so the storage
//! model tests' fault injection applies to it too).
//!
//! One file per shard, `DIR/hints-NNN.log`, a sequence of framed records:
//!
//! ```text
//!  +-------------+---------------+--------------------------------+
//!  | len u32 BE  | crc32c u32 BE | record (len bytes, see hints)  |
//!  +-------------+---------------+--------------------------------+
//!    crc32c covers the record bytes only; len ≤ HINT_RECORD_SIZE_MAX
//! ```
//!
//! Replay reads the file front to back and stops at the first frame that is incomplete or
//! fails its checksum: everything from there on is cut off (a torn tail after a crash, or
//! damage; either way hints are best effort and anti-entropy repairs what they lose), and the
//! cut is reported in [`FileHintLog::truncated_bytes`]. `replace` writes a new file next to the
//! old one, syncs it, renames it over the old one and syncs the directory.

use super::hints::{HintLog, HintLogError};
use crate::limits::{KEY_SIZE_MAX, VALUE_SIZE_MAX};
use crate::storage::vfs::Vfs;
use std::path::{Path, PathBuf};

/// Largest hint record: the ADD header, a largest key and a largest value.
pub const HINT_RECORD_SIZE_MAX: usize = 64 + KEY_SIZE_MAX + VALUE_SIZE_MAX;

/// Bytes of the frame around a record.
const FRAME_SIZE: usize = 8;

/// The hint log of one shard in a file.
pub struct FileHintLog<V: Vfs> {
    vfs: V,
    dir: PathBuf,
    path: PathBuf,
    file: V::File,
    truncated_bytes: u64,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> HintLogError {
    HintLogError::Io(format!("{what} {}: {e}", path.display()))
}

fn frame(record: &[u8], out: &mut Vec<u8>) {
    assert!(
        record.len() <= HINT_RECORD_SIZE_MAX,
        "hint record too large"
    );
    out.extend_from_slice(&(record.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(record).to_be_bytes());
    out.extend_from_slice(record);
}

impl<V: Vfs> FileHintLog<V> {
    /// Open (or create) `dir/hints-NNN.log` for shard `shard`.
    pub fn open(vfs: V, dir: &Path, shard: usize) -> Result<FileHintLog<V>, HintLogError> {
        vfs.create_dir_all(dir)
            .map_err(|e| io_err("create", dir, e))?;
        let path = dir.join(format!("hints-{shard:03}.log"));
        let exists = vfs
            .list(dir)
            .map_err(|e| io_err("list", dir, e))?
            .iter()
            .any(|n| Path::new(n) == path.file_name().expect("a file name"));
        let file = if exists {
            vfs.open(&path).map_err(|e| io_err("open", &path, e))?
        } else {
            let f = vfs.create(&path).map_err(|e| io_err("create", &path, e))?;
            vfs.sync_dir(dir).map_err(|e| io_err("sync", dir, e))?;
            f
        };
        Ok(FileHintLog {
            vfs,
            dir: dir.to_path_buf(),
            path,
            file,
            truncated_bytes: 0,
        })
    }

    /// Bytes cut off the end of the file at replay (torn or damaged tail).
    pub fn truncated_bytes(&self) -> u64 {
        self.truncated_bytes
    }
}

impl<V: Vfs> HintLog for FileHintLog<V> {
    fn append(&mut self, record: &[u8]) -> Result<(), HintLogError> {
        let mut buf = Vec::with_capacity(FRAME_SIZE + record.len());
        frame(record, &mut buf);
        self.vfs
            .append(&mut self.file, &buf)
            .map_err(|e| io_err("append to", &self.path, e))
    }

    fn sync(&mut self) -> Result<(), HintLogError> {
        self.vfs
            .sync(&mut self.file)
            .map_err(|e| io_err("sync", &self.path, e))
    }

    fn replay(&mut self, visit: &mut dyn FnMut(&[u8])) -> Result<(), HintLogError> {
        let len = self
            .vfs
            .len(&self.file)
            .map_err(|e| io_err("stat", &self.path, e))?;
        let mut at = 0u64;
        let mut head = [0u8; FRAME_SIZE];
        let mut record = Vec::new();
        while at + FRAME_SIZE as u64 <= len {
            self.vfs
                .read_at(&self.file, at, &mut head)
                .map_err(|e| io_err("read", &self.path, e))?;
            let rec_len = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
            if rec_len > HINT_RECORD_SIZE_MAX || at + (FRAME_SIZE + rec_len) as u64 > len {
                break;
            }
            record.resize(rec_len, 0);
            self.vfs
                .read_at(&self.file, at + FRAME_SIZE as u64, &mut record)
                .map_err(|e| io_err("read", &self.path, e))?;
            if crc32c::crc32c(&record) != crc {
                break;
            }
            visit(&record);
            at += (FRAME_SIZE + rec_len) as u64;
        }
        if at < len {
            self.truncated_bytes = len - at;
            self.vfs
                .truncate(&mut self.file, at)
                .map_err(|e| io_err("truncate", &self.path, e))?;
            self.vfs
                .sync(&mut self.file)
                .map_err(|e| io_err("sync", &self.path, e))?;
        }
        Ok(())
    }

    fn replace(&mut self, records: &[Vec<u8>]) -> Result<(), HintLogError> {
        let tmp = self.path.with_extension("log.tmp");
        let mut file = self
            .vfs
            .create(&tmp)
            .map_err(|e| io_err("create", &tmp, e))?;
        let mut buf = Vec::new();
        for r in records {
            frame(r, &mut buf);
            if buf.len() >= 1 << 20 {
                self.vfs
                    .append(&mut file, &buf)
                    .map_err(|e| io_err("append to", &tmp, e))?;
                buf.clear();
            }
        }
        self.vfs
            .append(&mut file, &buf)
            .map_err(|e| io_err("append to", &tmp, e))?;
        self.vfs
            .sync(&mut file)
            .map_err(|e| io_err("sync", &tmp, e))?;
        self.vfs
            .rename(&tmp, &self.path)
            .map_err(|e| io_err("rename", &tmp, e))?;
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| io_err("sync", &self.dir, e))?;
        self.file = file;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::coordinator::OwnedWrite;
    use crate::cluster::hints::HintQueue;
    use crate::cluster::peer::WriteAck;
    use crate::storage::vfs::RealVfs;
    use crate::storage::Applied;
    use crate::version::Version;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dkv-hintfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn w(key: &str, v: u64) -> OwnedWrite {
        OwnedWrite {
            key: key.as_bytes().to_vec(),
            value: Some(b"value".to_vec()),
            version: Version(v),
            expires_at_ms: 0,
            causal: false,
        }
    }

    #[test]
    fn hints_survive_a_restart_and_a_torn_tail_is_cut() {
        let d = dir("restart");
        let log = FileHintLog::open(RealVfs, &d, 0).unwrap();
        let mut q = HintQueue::open(Box::new(log), 100).unwrap();
        q.add(2, w("a", 1));
        q.add(2, w("b", 2));
        q.add(3, w("c", 3));
        q.sync();
        let mut out = Vec::new();
        q.poll_delivery(0, 1, &|n| n == 3, &mut out);
        let id = u32::from_be_bytes(out[0].1[6..10].try_into().unwrap());
        q.on_ack(3, id, &WriteAck::Done(Applied::Stored));
        q.sync();
        drop(q);

        // A crash mid-append leaves half a frame at the end.
        let path = d.join("hints-000.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&[0, 0, 0, 50, 1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();

        let log = FileHintLog::open(RealVfs, &d, 0).unwrap();
        let q = HintQueue::open(Box::new(log), 100).unwrap();
        assert_eq!(q.pending_for(2), 2);
        assert_eq!(q.pending_for(3), 0);
        assert!(std::fs::metadata(&path).unwrap().len() <= good as u64);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_flipped_bit_cuts_the_log_there() {
        let d = dir("flip");
        let mut log = FileHintLog::open(RealVfs, &d, 1).unwrap();
        log.append(b"first").unwrap();
        log.append(b"second").unwrap();
        log.sync().unwrap();
        let path = d.join("hints-001.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let mut log = FileHintLog::open(RealVfs, &d, 1).unwrap();
        let mut seen = Vec::new();
        log.replay(&mut |r| seen.push(r.to_vec())).unwrap();
        assert_eq!(seen, vec![b"first".to_vec()]);
        assert_eq!(log.truncated_bytes(), 8 + 6);
        let _ = std::fs::remove_dir_all(&d);
    }
}
