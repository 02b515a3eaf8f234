//! The file-system seam: every byte the log store reads or writes goes through [`Vfs`].
//!
//! Two implementations:
//! - [`RealVfs`]: `std::fs`, reads with `pread` (`FileExt::read_exact_at`), so many readers
//!   never move a shared file cursor; [`Vfs::map`] gives a read-only memory map
//!   ([`super::mmap::Mapping`]) so that the hot read path makes no system call.
//! - [`MemVfs`]: an in-memory disk for tests and, later, the simulator. It models what a crash
//!   does to a POSIX file system: file bytes not yet `fsync`ed are lost (or, optionally, a
//!   random prefix of them survives: a *torn* write), and directory changes (create, rename,
//!   remove) not yet made durable by syncing the directory are undone. It can also flip bits
//!   on "disk", run out of space (ENOSPC, possibly after a partial write, as a real disk does)
//!   and fail `fsync`.
//!
//! The interface is deliberately small: the log store only ever appends to files, reads at
//! offsets (through a map where it can), truncates a torn tail, and creates/renames/removes
//! whole files in one directory.

use super::mmap::Mapping;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The file operations the log store needs.
pub trait Vfs: Send {
    /// An open file: appendable and readable at any offset.
    type File: Send;
    /// A read-only view of a file's first bytes that reads without a system call (a memory
    /// map on a real disk). It shows what is appended to the file later, up to its length.
    type Map: Send;

    /// Create `path` empty (truncating any file of that name), open for append and read.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Open an existing file for append and read.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Append all of `data` at the end of the file. On error, part of `data` may have been
    /// written (a real disk that fills up mid-write does that): the caller truncates it back.
    fn append(&self, file: &mut Self::File, data: &[u8]) -> io::Result<()>;
    /// Fill `buf` from `offset`; an error if the file ends first.
    fn read_at(&self, file: &Self::File, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Map the first `len` bytes of `file` for [`Vfs::read_map`]; `len` may run past the end
    /// of the file (bytes appended later show through). An error leaves the caller on
    /// [`Vfs::read_at`].
    fn map(&self, file: &Self::File, len: u64) -> io::Result<Self::Map>;
    /// Fill `buf` from `offset` through a map. `UnexpectedEof` if the file (or the map) does
    /// not hold those bytes, also when the file was cut short under the map.
    fn read_map(&self, map: &Self::Map, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// A hint that `len` bytes at `offset` will be read through `map` soon (a prefetch: no
    /// effect but speed). Default: nothing.
    fn prefetch_map(&self, map: &Self::Map, offset: u64, len: usize) {
        let _ = (map, offset, len);
    }
    /// Make the file's bytes durable (`fdatasync`).
    fn sync(&self, file: &mut Self::File) -> io::Result<()>;
    /// Start writing `len` bytes at `offset` of the file to the device, without waiting for
    /// them (a hint, like `sync_file_range(SYNC_FILE_RANGE_WRITE)`: no durability promised),
    /// so that a later [`Vfs::sync`] has little left to wait for. Default: nothing.
    fn start_writeback(&self, file: &Self::File, offset: u64, len: u64) {
        let _ = (file, offset, len);
    }
    /// The file's length in bytes.
    fn len(&self, file: &Self::File) -> io::Result<u64>;
    /// Cut the file to `len` bytes.
    fn truncate(&self, file: &mut Self::File, len: u64) -> io::Result<()>;
    /// Make the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Rename a file (atomically replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Remove a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Give the file `from` a second name `to` (a hard link: the same bytes, which outlive
    /// the removal of `from`).
    fn link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Names of the regular files in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Create `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Bytes free for this process on the file system holding `dir` (`None`: unknown). The
    /// log store keeps a reserve free so that compaction can always run (storage/policy.rs).
    fn free_bytes(&self, _dir: &Path) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealVfs;

impl Vfs for RealVfs {
    type File = std::fs::File;
    type Map = Mapping;

    fn create(&self, path: &Path) -> io::Result<std::fs::File> {
        // Append mode (every write lands at the end, even after a truncate), so "create
        // empty" is remove-then-create-new rather than O_TRUNC.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(path)
    }

    fn open(&self, path: &Path) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
    }

    fn append(&self, file: &mut std::fs::File, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        file.write_all(data)
    }

    fn read_at(&self, file: &std::fs::File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }

    fn map(&self, file: &std::fs::File, len: u64) -> io::Result<Mapping> {
        Mapping::new(file, len)
    }

    fn read_map(&self, map: &Mapping, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        map.read(offset, buf)
    }

    fn prefetch_map(&self, map: &Mapping, offset: u64, len: usize) {
        map.prefetch(offset, len)
    }

    fn sync(&self, file: &mut std::fs::File) -> io::Result<()> {
        file.sync_data()
    }

    fn start_writeback(&self, file: &std::fs::File, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: a plain syscall on a file descriptor this `File` owns; no memory is passed.
        // A failure only means the later sync does the writing, as it would have anyway.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    fn len(&self, file: &std::fs::File) -> io::Result<u64> {
        Ok(file.metadata()?.len())
    }

    fn truncate(&self, file: &mut std::fs::File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn free_bytes(&self, dir: &Path) -> io::Result<Option<u64>> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: `path` is a valid NUL-terminated string and `st` a properly sized, writable
        // statvfs that the call fills in.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Blocks available to unprivileged users: kvd must not count on root's reserve.
        Ok(Some(
            (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
        ))
    }
}

/// One in-memory file ("inode").
#[derive(Default)]
struct Inode {
    /// What a reader sees now.
    data: Vec<u8>,
    /// What survives a crash: the bytes as of the last `sync`.
    durable: Vec<u8>,
}

#[derive(Default)]
struct MemState {
    inodes: HashMap<u64, Inode>,
    /// Directory entries as seen now.
    names: BTreeMap<PathBuf, u64>,
    /// Directory entries that survive a crash (as of the last `sync_dir` of their directory).
    durable_names: BTreeMap<PathBuf, u64>,
    next_inode: u64,
    /// Bumped by each crash: handles from before it are dead.
    epoch: u64,
    /// Total bytes the disk holds (None = unlimited); appends past it fail with ENOSPC.
    space_max: Option<u64>,
    /// The disk's capacity (None = unlimited): like `space_max`, and also reported by
    /// `free_bytes` (as a real file system does), and kept across crashes.
    capacity: Option<u64>,
    /// The next this-many `sync`/`sync_dir` calls fail with EIO.
    fail_syncs: u32,
    syncs_done: u64,
    /// Mutating operations left before the power goes (None = no cut planned). At zero every
    /// operation fails, as on a machine that lost power, until `crash` is called.
    ops_until_power_cut: Option<u64>,
}

impl MemState {
    /// Count one mutating operation against a planned power cut.
    fn tick(&mut self) -> io::Result<()> {
        match &mut self.ops_until_power_cut {
            None => Ok(()),
            Some(0) => Err(io::Error::other("power cut (simulated)")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
        }
    }

    fn used(&self) -> u64 {
        self.inodes.values().map(|i| i.data.len() as u64).sum()
    }

    fn inode(&mut self, file: &MemFile) -> io::Result<&mut Inode> {
        if file.epoch != self.epoch {
            return Err(io::Error::other("stale handle from before a crash"));
        }
        self.inodes
            .get_mut(&file.inode)
            .ok_or_else(|| io::Error::other("file was removed"))
    }

    /// Inodes no directory entry (current or durable) references are gone.
    fn collect(&mut self) {
        let live: std::collections::HashSet<u64> = self
            .names
            .values()
            .chain(self.durable_names.values())
            .copied()
            .collect();
        self.inodes.retain(|id, _| live.contains(id));
    }
}

/// An open [`MemVfs`] file.
#[derive(Debug)]
pub struct MemFile {
    inode: u64,
    epoch: u64,
}

/// A [`MemVfs`] "map": reads the file's current bytes, up to the map's length.
#[derive(Debug)]
pub struct MemMap {
    inode: u64,
    epoch: u64,
    len: u64,
}

/// An in-memory file system that can crash. Clones share the same disk.
#[derive(Clone, Default)]
pub struct MemVfs {
    state: Arc<Mutex<MemState>>,
}

/// How a simulated crash treats bytes written but not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced byte is lost.
    DropUnsynced,
    /// A prefix of each file's unsynced bytes, of a length picked from `seed`, survives (a
    /// write torn by the crash).
    Torn {
        /// Seed that picks the surviving prefix lengths.
        seed: u64,
    },
}

impl MemVfs {
    /// An empty disk.
    pub fn new() -> MemVfs {
        MemVfs::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panic while holding the lock is a bug in a test; keep going with the state as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulate a power loss: unsynced bytes and unsynced directory changes are lost (see
    /// [`CrashMode`]). Handles opened before the crash stop working.
    pub fn crash(&self, mode: CrashMode) {
        let mut s = self.lock();
        let mut rng = match mode {
            CrashMode::DropUnsynced => 0,
            CrashMode::Torn { seed } => seed | 1,
        };
        let mut ids: Vec<u64> = s.inodes.keys().copied().collect();
        ids.sort_unstable(); // deterministic order for the seeded choices
        for id in ids {
            let inode = s.inodes.get_mut(&id).expect("id taken from the map");
            let mut keep = inode.durable.clone();
            if rng != 0 && inode.data.len() > keep.len() && inode.data.starts_with(&keep) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let extra = inode.data.len() - keep.len();
                let n = (rng % (extra as u64 + 1)) as usize;
                keep.extend_from_slice(&inode.data[inode.durable.len()..inode.durable.len() + n]);
            }
            inode.data = keep.clone();
            inode.durable = keep;
        }
        s.names = s.durable_names.clone();
        s.collect();
        s.epoch += 1;
        s.fail_syncs = 0;
        s.space_max = None;
        s.ops_until_power_cut = None;
    }

    /// After `ops` more mutating operations (create, append, sync, truncate, rename, remove),
    /// every operation fails until [`MemVfs::crash`]: a power cut at an arbitrary point.
    pub fn cut_power_after(&self, ops: u64) {
        self.lock().ops_until_power_cut = Some(ops);
    }

    /// Flip one bit of a file's bytes, durably (as a failing disk would).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut s = self.lock();
        let id = *s.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        let inode = s.inodes.get_mut(&id).expect("names point at inodes");
        let at = offset as usize;
        if at >= inode.data.len() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        inode.data[at] ^= 1 << (bit % 8);
        if at < inode.durable.len() {
            inode.durable[at] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// Limit the disk to `space_max` bytes in all files (None = unlimited).
    pub fn set_space_max(&self, space_max: Option<u64>) {
        self.lock().space_max = space_max;
    }

    /// Give the disk a capacity (None = unlimited): appends past it fail with ENOSPC, and
    /// `free_bytes` reports what is left, so the store's space reserve engages. Unlike
    /// [`MemVfs::set_space_max`], it survives crashes.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.lock().capacity = capacity;
    }

    /// Make the next `n` calls to `sync`/`sync_dir` fail.
    pub fn fail_next_syncs(&self, n: u32) {
        self.lock().fail_syncs = n;
    }

    /// Bytes held in all files now.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used()
    }

    /// How many `sync`/`sync_dir` calls succeeded so far.
    pub fn syncs_done(&self) -> u64 {
        self.lock().syncs_done
    }

    /// The current bytes of a file (tests inspect segments with it).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        let id = s.names.get(path)?;
        Some(s.inodes[id].data.clone())
    }

    fn take_sync(s: &mut MemState) -> io::Result<()> {
        s.tick()?;
        if s.fail_syncs > 0 {
            s.fail_syncs -= 1;
            return Err(io::Error::other("injected fsync failure"));
        }
        s.syncs_done += 1;
        Ok(())
    }
}

impl Vfs for MemVfs {
    type File = MemFile;
    type Map = MemMap;

    fn create(&self, path: &Path) -> io::Result<MemFile> {
        let mut s = self.lock();
        s.tick()?;
        let id = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(id, Inode::default());
        s.names.insert(path.to_path_buf(), id);
        s.collect();
        Ok(MemFile {
            inode: id,
            epoch: s.epoch,
        })
    }

    fn open(&self, path: &Path) -> io::Result<MemFile> {
        let s = self.lock();
        let id = *s.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(MemFile {
            inode: id,
            epoch: s.epoch,
        })
    }

    fn append(&self, file: &mut MemFile, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        let room = match s.space_max.into_iter().chain(s.capacity).min() {
            Some(max) => max.saturating_sub(s.used()),
            None => u64::MAX,
        };
        let inode = s.inode(file)?;
        if (data.len() as u64) > room {
            // A real disk fills up mid-write: part of the data lands.
            inode.data.extend_from_slice(&data[..room as usize]);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        inode.data.extend_from_slice(data);
        Ok(())
    }

    fn read_at(&self, file: &MemFile, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut s = self.lock();
        let inode = s.inode(file)?;
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        if end > inode.data.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&inode.data[start..end]);
        Ok(())
    }

    fn map(&self, file: &MemFile, len: u64) -> io::Result<MemMap> {
        self.lock().inode(file)?;
        Ok(MemMap {
            inode: file.inode,
            epoch: file.epoch,
            len,
        })
    }

    fn read_map(&self, map: &MemMap, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > map.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let file = MemFile {
            inode: map.inode,
            epoch: map.epoch,
        };
        self.read_at(&file, offset, buf)
    }

    fn sync(&self, file: &mut MemFile) -> io::Result<()> {
        let mut s = self.lock();
        s.inode(file)?;
        MemVfs::take_sync(&mut s)?;
        let inode = s.inode(file)?;
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn len(&self, file: &MemFile) -> io::Result<u64> {
        let mut s = self.lock();
        Ok(s.inode(file)?.data.len() as u64)
    }

    fn truncate(&self, file: &mut MemFile, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        let inode = s.inode(file)?;
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        if len <= inode.data.len() {
            inode.data.truncate(len);
        } else {
            inode.data.resize(len, 0);
        }
        // Shrinking is not durable until the next sync; a crash may bring the bytes back,
        // which recovery must handle (it truncates torn tails again).
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        MemVfs::take_sync(&mut s)?;
        let in_dir = |p: &Path| p.parent() == Some(dir);
        let current: Vec<(PathBuf, u64)> = s
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        s.durable_names.retain(|p, _| !in_dir(p));
        s.durable_names.extend(current);
        s.collect();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        let id = s.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        s.names.insert(to.to_path_buf(), id);
        s.collect();
        Ok(())
    }

    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        let id = *s.names.get(from).ok_or(io::ErrorKind::NotFound)?;
        if s.names.contains_key(to) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        s.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        s.names.remove(path).ok_or(io::ErrorKind::NotFound)?;
        s.collect();
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn free_bytes(&self, _dir: &Path) -> io::Result<Option<u64>> {
        let s = self.lock();
        Ok(s.capacity.map(|c| c.saturating_sub(s.used())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_drops_unsynced_bytes_and_directory_changes() {
        let vfs = MemVfs::new();
        let dir = Path::new("/d");
        let a = dir.join("a");
        let mut f = vfs.create(&a).unwrap();
        vfs.append(&mut f, b"hello").unwrap();
        vfs.sync(&mut f).unwrap();
        vfs.sync_dir(dir).unwrap();
        vfs.append(&mut f, b" world").unwrap();
        let b = dir.join("b");
        let mut g = vfs.create(&b).unwrap();
        vfs.append(&mut g, b"x").unwrap();
        vfs.sync(&mut g).unwrap(); // file synced, directory not: b vanishes
        vfs.crash(CrashMode::DropUnsynced);
        assert_eq!(vfs.list(dir).unwrap(), vec!["a".to_string()]);
        assert_eq!(vfs.contents(&a).unwrap(), b"hello");
        assert!(
            vfs.len(&f).is_err(),
            "handles from before the crash are dead"
        );
    }

    #[test]
    fn torn_crash_keeps_a_prefix() {
        let vfs = MemVfs::new();
        let dir = Path::new("/d");
        let a = dir.join("a");
        let mut f = vfs.create(&a).unwrap();
        vfs.sync_dir(dir).unwrap();
        vfs.append(&mut f, b"0123456789").unwrap();
        vfs.crash(CrashMode::Torn { seed: 7 });
        let got = vfs.contents(&a).unwrap();
        assert!(b"0123456789".starts_with(&got));
    }

    #[test]
    fn enospc_writes_part_then_fails_and_sync_failures_are_injected() {
        let vfs = MemVfs::new();
        let mut f = vfs.create(Path::new("/d/a")).unwrap();
        vfs.set_space_max(Some(4));
        let e = vfs.append(&mut f, b"123456").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(vfs.len(&f).unwrap(), 4);
        vfs.fail_next_syncs(1);
        assert!(vfs.sync(&mut f).is_err());
        assert!(vfs.sync(&mut f).is_ok());
    }

    #[test]
    fn rename_and_remove_need_a_directory_sync() {
        let vfs = MemVfs::new();
        let dir = Path::new("/d");
        let mut f = vfs.create(&dir.join("t")).unwrap();
        vfs.append(&mut f, b"x").unwrap();
        vfs.sync(&mut f).unwrap();
        vfs.sync_dir(dir).unwrap();
        vfs.rename(&dir.join("t"), &dir.join("u")).unwrap();
        vfs.crash(CrashMode::DropUnsynced);
        assert_eq!(vfs.list(dir).unwrap(), vec!["t".to_string()]);
        vfs.rename(&dir.join("t"), &dir.join("u")).unwrap();
        vfs.sync_dir(dir).unwrap();
        vfs.remove(&dir.join("u")).unwrap();
        vfs.crash(CrashMode::DropUnsynced);
        assert_eq!(vfs.list(dir).unwrap(), vec!["u".to_string()]);
        assert_eq!(vfs.contents(&dir.join("u")).unwrap(), b"x");
    }
}
