//! The node's data directory: an exclusive lock, a small meta file, and one sub-directory per
//! shard.
//!
//! ```text
//! DIR/LOCK           flock(2)-ed for the life of the process: two nodes never share a DIR
//! DIR/dkv.meta       text: `format 1`, `shards K`, `node_id I` (written once, then checked)
//! DIR/shard-000/     shard 0's store files
//! DIR/shard-001/     ...
//! ```
//!
//! Keys are placed on shards by their hash modulo the shard count, so data written with K
//! shards is only found again with K shards: a restart with another `--shards` is refused with
//! a clear message instead of silently losing sight of keys.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Version of the directory layout.
pub const DATADIR_FORMAT: u32 = 1;

/// An opened, locked data directory.
pub struct DataDir {
    root: PathBuf,
    /// Held open for the lock's lifetime.
    _lock: File,
}

/// Why the directory cannot be used.
#[derive(Debug)]
pub enum DataDirError {
    /// Another process holds the lock.
    Locked(PathBuf),
    /// The meta file disagrees with the options.
    Mismatch(String),
    /// I/O.
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for DataDirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataDirError::Locked(p) => write!(
                f,
                "data directory {} is in use by another kvd process",
                p.display()
            ),
            DataDirError::Mismatch(why) => f.write_str(why),
            DataDirError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for DataDirError {}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |e| DataDirError::Io(p.to_path_buf(), e)
}

impl DataDir {
    /// Create (if needed), lock and check `root` for a node `node_id` with `shards` shards.
    pub fn open(root: &Path, node_id: u32, shards: usize) -> Result<DataDir, DataDirError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        let lock_path = root.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(DataDirError::Locked(root.to_path_buf()));
        }
        let meta_path = root.join("dkv.meta");
        let wanted = format!("format {DATADIR_FORMAT}\nshards {shards}\nnode_id {node_id}\n");
        match fs::read_to_string(&meta_path) {
            Ok(found) => {
                let field = |name: &str| {
                    found
                        .lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                };
                if field("format ") != Some(DATADIR_FORMAT as u64) {
                    return Err(DataDirError::Mismatch(format!(
                        "{} has an unknown format; this kvd reads format {DATADIR_FORMAT}",
                        meta_path.display()
                    )));
                }
                if field("shards ") != Some(shards as u64) {
                    return Err(DataDirError::Mismatch(format!(
                        "{} was written with {} shards; start with --shards {} (keys are placed by shard count)",
                        root.display(),
                        field("shards ").map_or("?".into(), |s| s.to_string()),
                        field("shards ").map_or("?".into(), |s| s.to_string()),
                    )));
                }
                if field("node_id ") != Some(node_id as u64) {
                    return Err(DataDirError::Mismatch(format!(
                        "{} belongs to node {}, not node {node_id}",
                        root.display(),
                        field("node_id ").map_or("?".into(), |s| s.to_string()),
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Write, sync, rename, sync the directory: the meta file is whole or absent.
                let tmp = root.join("dkv.meta.tmp");
                let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
                f.write_all(wanted.as_bytes()).map_err(io_err(&tmp))?;
                f.sync_all().map_err(io_err(&tmp))?;
                fs::rename(&tmp, &meta_path).map_err(io_err(&meta_path))?;
                File::open(root)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(root))?;
            }
            Err(e) => return Err(DataDirError::Io(meta_path, e)),
        }
        for shard in 0..shards {
            let p = root.join(format!("shard-{shard:03}"));
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory of shard `shard`.
    pub fn shard_dir(&self, shard: usize) -> PathBuf {
        self.root.join(format!("shard-{shard:03}"))
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where SNAPSHOT keeps snapshots (`DIR/snapshots/NAME/`): on the data's file system, so
    /// that a snapshot is hard links.
    pub fn snapshot_root(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Fill this (fresh) data directory from the snapshot directory `snapshot` (kvd
    /// `--restore`): check it is whole (its SNAPSHOT file) and taken with this shard count,
    /// check every file against its shard's manifest (size, CRC32C), then copy the files into
    /// the shard directories. Copies, not links: the restored node's recovery may truncate a
    /// torn tail or append to its newest segment, which through a link would change the
    /// snapshot. Refused if any shard directory already holds files. Returns (files, bytes).
    pub fn restore_snapshot(&self, snapshot: &Path, shards: usize) -> Result<(usize, u64), String> {
        use crate::shard::snapshot::{shard_part, SNAPSHOT_FILE, SNAPSHOT_HEADER};
        use crate::storage::logstore::snapshot::verify_manifest;
        let marker = snapshot.join(SNAPSHOT_FILE);
        let text = fs::read_to_string(&marker).map_err(|e| {
            format!(
                "{}: {e} (not a whole snapshot: the file is written last)",
                marker.display()
            )
        })?;
        if !text.starts_with(SNAPSHOT_HEADER) {
            return Err(format!("{}: not a snapshot file", marker.display()));
        }
        let taken_with = text
            .lines()
            .find_map(|l| l.strip_prefix("shards ")?.parse::<usize>().ok());
        if taken_with != Some(shards) {
            return Err(format!(
                "the snapshot was taken with {} shards; restore it with --shards {0}",
                taken_with.map_or("?".to_string(), |k| k.to_string())
            ));
        }
        for shard in 0..shards {
            let dir = self.shard_dir(shard);
            let used = fs::read_dir(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .next()
                .is_some();
            if used {
                return Err(format!(
                    "{} already holds data: --restore needs a fresh data directory",
                    dir.display()
                ));
            }
        }
        let mut totals = (0, 0);
        for shard in 0..shards {
            let from = shard_part(snapshot, shard);
            let files = verify_manifest(&crate::storage::vfs::RealVfs, &from)?;
            let to = self.shard_dir(shard);
            for f in &files {
                let (src, dst) = (from.join(&f.name), to.join(&f.name));
                fs::copy(&src, &dst)
                    .and_then(|_| File::open(&dst)?.sync_all())
                    .map_err(|e| format!("copying {}: {e}", src.display()))?;
                totals.0 += 1;
                totals.1 += f.size;
            }
            File::open(&to)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("{}: {e}", to.display()))?;
        }
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_and_meta_checks() {
        let dir = std::env::temp_dir().join(format!("dkv-datadir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let d = DataDir::open(&dir, 1, 2).unwrap();
        assert!(d.shard_dir(1).is_dir());
        assert!(matches!(
            DataDir::open(&dir, 1, 2),
            Err(DataDirError::Locked(_))
        ));
        drop(d);
        let e = DataDir::open(&dir, 1, 3).err().unwrap().to_string();
        assert!(e.contains("--shards 2"), "{e}");
        assert!(DataDir::open(&dir, 2, 2).is_err());
        assert!(DataDir::open(&dir, 1, 2).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }
}
