//! Snapshots of a store: every record sealed into immutable segment files, then each segment
//! and its hint hard-linked into the snapshot's directory, with a manifest of sizes and
//! checksums. The links take milliseconds whatever the data size, and compaction deleting a
//! segment later does not touch the snapshot's link to it.
//!
//! ```text
//!   INTO/0000000003.seg    hard links of the sealed segments (the active one is sealed
//!   INTO/0000000003.hint   first, so the snapshot holds every record written before it)
//!   INTO/MANIFEST          text, written last (tmp + sync + rename):
//!                            dkv-snapshot-shard 1
//!                            file 0000000003.seg 67108864 crc32c=1a2b3c4d
//!                            file 0000000003.hint 1234567 crc32c=...
//! ```
//!
//! The checksums read each linked file once (page cache, hardware CRC32C): about 10 ms per
//! 100 MB here. [`verify_manifest`] checks a snapshot directory against its manifest before
//! a restore copies it.

use super::names::{hint_name, segment_name};
use super::LogStore;
use crate::storage::record::SEGMENT_HEADER_SIZE;
use crate::storage::vfs::Vfs;
use crate::storage::StoreError;
use std::io;
use std::path::Path;

/// First line of a shard's snapshot manifest.
pub const SNAPSHOT_MANIFEST_HEADER: &str = "dkv-snapshot-shard 1";

/// Name of a shard's snapshot manifest.
pub const SNAPSHOT_MANIFEST_NAME: &str = "MANIFEST";

/// Bytes read per call while checksumming a snapshot file.
const SNAPSHOT_READ_CHUNK: usize = 1 << 20;

/// One file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    /// File name inside the shard's snapshot directory.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// CRC32C of the whole file.
    pub crc: u32,
}

impl<V: Vfs> LogStore<V> {
    /// Take a snapshot into the directory `into` (created; it must be on the store's file
    /// system, for the hard links): seal the active segment if it holds records, link every
    /// sealed segment and its hint, then write the manifest. Returns the files.
    pub fn snapshot_into(&mut self, into: &Path) -> Result<Vec<SnapshotFile>, StoreError> {
        if self.segments[&self.active].len > SEGMENT_HEADER_SIZE as u64 {
            self.roll()?;
        } else {
            self.flush_pending()?;
        }
        self.vfs.create_dir_all(into).map_err(StoreError::Io)?;
        let mut files = Vec::new();
        let sealed: Vec<u32> = self
            .segments
            .iter()
            .filter(|(id, s)| **id != self.active && s.sealed)
            .map(|(id, _)| *id)
            .collect();
        let present = self.vfs.list(&self.dir).map_err(StoreError::Io)?;
        for id in sealed {
            for name in [segment_name(id), hint_name(id)] {
                if !present.contains(&name) {
                    continue; // a segment whose hint could not be written: recovery scans it
                }
                self.vfs
                    .link(&self.path(&name), &into.join(&name))
                    .map_err(StoreError::Io)?;
                let (size, crc) = checksum(&self.vfs, &into.join(&name)).map_err(StoreError::Io)?;
                files.push(SnapshotFile { name, size, crc });
            }
        }
        let mut text = format!("{SNAPSHOT_MANIFEST_HEADER}\n");
        for f in &files {
            text.push_str(&format!(
                "file {} {} crc32c={:08x}\n",
                f.name, f.size, f.crc
            ));
        }
        let tmp = into.join(format!("{SNAPSHOT_MANIFEST_NAME}.tmp"));
        let write = || -> io::Result<()> {
            let mut f = self.vfs.create(&tmp)?;
            self.vfs.append(&mut f, text.as_bytes())?;
            self.vfs.sync(&mut f)?;
            self.vfs.rename(&tmp, &into.join(SNAPSHOT_MANIFEST_NAME))?;
            self.vfs.sync_dir(into)
        };
        write().map_err(StoreError::Io)?;
        Ok(files)
    }
}

/// (size, CRC32C) of a file, read in chunks.
fn checksum<V: Vfs>(vfs: &V, path: &Path) -> io::Result<(u64, u32)> {
    let f = vfs.open(path)?;
    let size = vfs.len(&f)?;
    let mut crc = 0u32;
    let mut buf = vec![0u8; SNAPSHOT_READ_CHUNK.min(size as usize)];
    let mut at = 0u64;
    while at < size {
        let n = SNAPSHOT_READ_CHUNK.min((size - at) as usize);
        vfs.read_at(&f, at, &mut buf[..n])?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    Ok((size, crc))
}

/// Parse a shard snapshot manifest.
pub fn parse_manifest(text: &str) -> Result<Vec<SnapshotFile>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(SNAPSHOT_MANIFEST_HEADER) {
        return Err(format!(
            "not a snapshot manifest (first line is not {SNAPSHOT_MANIFEST_HEADER:?})"
        ));
    }
    lines
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            let bad = || format!("bad manifest line {l:?}");
            match w.as_slice() {
                ["file", name, size, crc] => {
                    let ok_name = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
                    let crc = crc.strip_prefix("crc32c=").ok_or_else(bad)?;
                    Ok(SnapshotFile {
                        name: ok_name.then(|| name.to_string()).ok_or_else(bad)?,
                        size: size.parse().map_err(|_| bad())?,
                        crc: u32::from_str_radix(crc, 16).map_err(|_| bad())?,
                    })
                }
                _ => Err(bad()),
            }
        })
        .collect()
}

/// Check every file of a shard's snapshot directory against its manifest (size, CRC32C);
/// returns the files.
pub fn verify_manifest<V: Vfs>(vfs: &V, dir: &Path) -> Result<Vec<SnapshotFile>, String> {
    let path = dir.join(SNAPSHOT_MANIFEST_NAME);
    let f = vfs
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = vfs
        .len(&f)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = vec![0u8; len as usize];
    vfs.read_at(&f, 0, &mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let files = parse_manifest(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for f in &files {
        let p = dir.join(&f.name);
        let (size, crc) = checksum(vfs, &p).map_err(|e| format!("{}: {e}", p.display()))?;
        if (size, crc) != (f.size, f.crc) {
            return Err(format!(
                "{}: {size} bytes with CRC32C {crc:08x}, the manifest says {} bytes with {:08x}",
                p.display(),
                f.size,
                f.crc
            ));
        }
    }
    Ok(files)
}
