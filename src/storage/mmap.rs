//! Read-only memory maps of segment files ([`Mapping`]), and how a read survives a file that
//! was cut short under its map.
//!
//! ## Why maps
//! A GET used to cost one `pread64` (a system call and a copy through the page cache). A
//! sealed segment never changes, and the active segment only grows by appends that go
//! through the same page cache a `MAP_SHARED` map shows, so a read is a `memcpy` from the map
//! with no call into the kernel (issue 13).
//!
//! ## Truncation and SIGBUS
//! Touching a page of a map that lies wholly past the end of its file raises `SIGBUS` (so does
//! an I/O error paging the data in). Nothing in `kvd` shortens a segment it has mapped (the
//! active segment is only cut back over bytes no reader can reach), but an operator, a full
//! file system or a failing disk can. Checking the file's length before each read would put a
//! system call back on every read, and the file could still shrink between the check and the
//! copy. So the fault itself is handled instead:
//!
//! - one process-wide `SIGBUS` handler (`SA_SIGINFO`), installed on the first map;
//! - every map is entered in a fixed table of [`MAPPED_FILES_MAX`] slots (start, length,
//!   fault count) that the handler can read without locks or allocation;
//! - when the faulting address (`si_addr`) lies in a map of the table, the handler maps an
//!   anonymous zero page over the faulting page (`MAP_FIXED`), counts the fault in the slot and
//!   returns: the copy resumes and reads zeros;
//! - [`Mapping::read`] compares the slot's fault count before and after its copy and reports
//!   a fault as [`io::ErrorKind::UnexpectedEof`] ("the file no longer holds these bytes").
//!   Zeros that a later read meets on the same page fail the record's CRC just as well. The
//!   store treats both as a damaged record: STORAGE_ERROR, the key forgotten so that a replica
//!   can repair it (`logstore/scrub.rs`), the segment kept out of compaction;
//! - a fault anywhere else is not ours: the previous handler (Rust's stack-overflow handler,
//!   or the default action) gets it, so real crashes still crash.
//!
//! `mmap` is not on POSIX's list of async-signal-safe functions, but on Linux it is a plain
//! system call with no user-space state (the JVM and several databases map over faulting
//! pages the same way). The handler only runs on the faulting thread, during a copy made by
//! [`Mapping::read`], and a map is only removed by the thread that owns it (a shard's store),
//! so the table entry it looks at cannot be removed under it.

use crate::limits::{MAPPED_FILES_MAX, PREFETCH_RECORD_BYTES_MAX};
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{compiler_fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// One entry of the table the `SIGBUS` handler reads.
struct Slot {
    /// Taken by a live map (claimed before `start` is published, released after it is
    /// cleared).
    taken: AtomicUsize,
    /// First byte of the map; 0 = no map (the handler skips the slot).
    start: AtomicUsize,
    /// Length of the map in bytes.
    len: AtomicUsize,
    /// Faults the handler repaired in this map.
    faults: AtomicU64,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            taken: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            faults: AtomicU64::new(0),
        }
    }
}

static SLOTS: [Slot; MAPPED_FILES_MAX] = [const { Slot::new() }; MAPPED_FILES_MAX];

/// The page size, read once before the handler is installed (the handler cannot ask).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// The `SIGBUS` action that was in place before ours: faults outside our maps go there.
struct Previous(libc::sigaction);
// SAFETY: a `sigaction` is plain data (a handler address, flags and a signal mask); it is
// written once before the handler is installed and only read afterwards.
unsafe impl Sync for Previous {}
unsafe impl Send for Previous {}
static PREVIOUS: OnceLock<Previous> = OnceLock::new();
static INSTALL: Once = Once::new();
/// Faults repaired over the life of the process (all maps), for tests and logs.
static FAULTS_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Faults the handler has repaired in mapped files since the process started.
pub fn faults_total() -> u64 {
    FAULTS_TOTAL.load(Ordering::Relaxed)
}

fn install_handler() -> io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        PAGE_SIZE.store(
            if page > 0 { page as usize } else { 4096 },
            Ordering::Relaxed,
        );
        // SAFETY: zeroed sigaction structs are valid (no handler, empty mask), then filled in;
        // `on_sigbus` has the SA_SIGINFO signature.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            // Read the previous action first, publish it, then install ours: the handler
            // may run as soon as it is installed.
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                result = Err(io::Error::last_os_error());
                return;
            }
            let _ = PREVIOUS.set(Previous(old));
            if libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result?;
    if PREVIOUS.get().is_none() {
        return Err(io::Error::other("SIGBUS handler not installed"));
    }
    Ok(())
}

/// The `SIGBUS` handler: repair a fault in one of our maps, pass any other on.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler. errno is saved
    // and restored because the interrupted code may be about to read it.
    unsafe {
        let errno = *libc::__errno_location();
        let addr = (*info).si_addr() as usize;
        let page = PAGE_SIZE.load(Ordering::Relaxed).max(1);
        for slot in SLOTS.iter() {
            let start = slot.start.load(Ordering::Acquire);
            if start == 0 {
                continue;
            }
            let len = slot.len.load(Ordering::Acquire);
            if addr < start || addr >= start + len {
                continue;
            }
            let at = addr & !(page - 1);
            let p = libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                break; // cannot repair: let the previous action have it
            }
            slot.faults.fetch_add(1, Ordering::AcqRel);
            FAULTS_TOTAL.fetch_add(1, Ordering::Relaxed);
            *libc::__errno_location() = errno;
            return;
        }
        // Not ours. A handler function gets the signal as it would have; the default (or
        // ignore) action is put back and the faulting instruction, run again on return,
        // meets it.
        let Some(Previous(prev)) = PREVIOUS.get() else {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
            return;
        };
        let handler = prev.sa_sigaction;
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            libc::sigaction(libc::SIGBUS, prev, std::ptr::null_mut());
        } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
        *libc::__errno_location() = errno;
    }
}

/// A read-only, shared memory map of the first bytes of a file.
pub struct Mapping {
    ptr: *const u8,
    len: usize,
    slot: usize,
}

// SAFETY: the map is read-only memory owned by this value; it moves between threads with its
// store (a shard is built on one thread and runs on another) but is only used by one at a time.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Map the first `len` bytes of `file` (which may be longer than the file: bytes past its
    /// end become readable as the file grows).
    pub fn new(file: &std::fs::File, len: u64) -> io::Result<Mapping> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad map length"))?;
        install_handler()?;
        let slot = claim_slot().ok_or_else(|| {
            io::Error::other(format!(
                "more than {MAPPED_FILES_MAX} mapped files; reading this one with pread"
            ))
        })?;
        // SAFETY: a fresh read-only shared map of an open file descriptor; the kernel picks
        // the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            SLOTS[slot].taken.store(0, Ordering::Release);
            return Err(e);
        }
        let s = &SLOTS[slot];
        s.faults.store(0, Ordering::Relaxed);
        s.len.store(len, Ordering::Release);
        s.start.store(p as usize, Ordering::Release);
        Ok(Mapping {
            ptr: p as *const u8,
            len,
            slot,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the map is empty (never: maps have a length).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ask the CPU to start loading the first [`PREFETCH_RECORD_BYTES_MAX`] of the `len`
    /// bytes at `offset` (nothing if they lie outside the map). A prefetch never faults, not
    /// even on a page the file no longer backs.
    pub fn prefetch(&self, offset: u64, len: usize) {
        if offset.saturating_add(len as u64) <= self.len as u64 {
            crate::storage::prefetch::lines(
                self.ptr.wrapping_add(offset as usize),
                len,
                PREFETCH_RECORD_BYTES_MAX,
            );
        }
    }

    /// Copy the bytes at `offset` into `buf`. `UnexpectedEof` if they lie outside the map or
    /// the file no longer holds them (a fault was repaired during the copy; see the module
    /// doc).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len as u64) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let faults = &SLOTS[self.slot].faults;
        let before = faults.load(Ordering::Acquire);
        // The handler runs on this thread inside the copy: keep the compiler from moving the
        // fault-count loads across it.
        compiler_fence(Ordering::SeqCst);
        // SAFETY: offset + len is within the map (checked above); the map is readable for its
        // whole length, and a page the file no longer backs is replaced by zeros by the
        // SIGBUS handler before the copy resumes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.add(offset as usize),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        compiler_fence(Ordering::SeqCst);
        if faults.load(Ordering::Acquire) != before {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than its memory map (truncated under it)",
            ));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let s = &SLOTS[self.slot];
        s.start.store(0, Ordering::Release);
        // SAFETY: unmapping the map this value owns; nothing borrows it past this point.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
        s.taken.store(0, Ordering::Release);
    }
}

fn claim_slot() -> Option<usize> {
    SLOTS.iter().position(|s| {
        s.taken
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_cut_short_under_its_map_reads_as_missing_not_as_a_crash() {
        let path = std::env::temp_dir().join(format!("dkv-mmap-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let page = 4096usize;
        let data: Vec<u8> = (0..3 * page).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all(&data).unwrap();
        // Mapped longer than the file: the tail is readable once written.
        let m = Mapping::new(&f, 4 * page as u64).unwrap();
        let mut buf = vec![0u8; 100];
        m.read(page as u64 + 5, &mut buf).unwrap();
        assert_eq!(buf, data[page + 5..page + 105]);
        f.write_all(&[7u8; 10]).unwrap();
        let mut tail = [0u8; 10];
        m.read(3 * page as u64, &mut tail).unwrap();
        assert_eq!(tail, [7u8; 10], "appends show through the map");
        assert!(
            m.read(4 * page as u64 - 5, &mut buf).is_err(),
            "outside the map"
        );

        // Cut the file to one page: a prefetch of the pages it no longer backs is a hint that
        // never faults; reading the second page faults, is repaired, reported.
        f.set_len(page as u64).unwrap();
        let faults = faults_total();
        for at in (0..4 * page as u64).step_by(64) {
            m.prefetch(at, 256);
        }
        assert_eq!(faults_total(), faults, "a prefetch does not fault");
        let e = m.read(2 * page as u64 + 1, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(faults_total() > faults);
        // The same page again reads zeros now (a record there fails its CRC).
        m.read(2 * page as u64 + 1, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        // What the file still holds reads as before.
        m.read(5, &mut buf).unwrap();
        assert_eq!(buf, data[5..105]);
        drop(m);
        let _ = std::fs::remove_file(&path);
    }
}
