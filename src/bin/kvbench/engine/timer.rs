//! The open-loop timer (a timerfd in the poll) and a small error helper.

use super::*;

/// The poll token of the open-loop timer (connections use their index).
pub(super) const TIMER_TOKEN: Token = Token(usize::MAX);

/// A timerfd in the poll set: it wakes `poll` at a nanosecond deadline, where `poll`'s own
/// timeout is rounded up to whole milliseconds by `epoll_wait`. Without it an open-loop run
/// would send in 1 ms bursts and charge each request up to 1 ms of kvbench's own delay.
pub(super) struct Timer {
    pub(super) fd: libc::c_int,
    pub(super) armed_at_ns: u64,
}

impl Timer {
    pub(super) fn new(poll: &Poll) -> io::Result<Timer> {
        // SAFETY: plain syscall with constant flags; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let t = Timer { fd, armed_at_ns: 0 };
        poll.registry()
            .register(&mut SourceFd(&t.fd), TIMER_TOKEN, Interest::READABLE)?;
        Ok(t)
    }

    /// Wake at `due_ns` (same clock as `now_ns`); re-arming for the same time is skipped.
    pub(super) fn arm_at(&mut self, due_ns: u64, now_ns: u64) {
        if due_ns == self.armed_at_ns {
            return;
        }
        self.armed_at_ns = due_ns;
        // 0 would disarm the timer: wake at once instead.
        let in_ns = due_ns.saturating_sub(now_ns).max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (in_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (in_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: fd is our open timerfd, spec is a valid itimerspec, old value not wanted.
        // It cannot fail with these arguments; if it did, the poll timeout still wakes us.
        unsafe { libc::timerfd_settime(self.fd, 0, &spec, std::ptr::null_mut()) };
    }

    /// The timer fired: consume its count so the next expiry is a new edge.
    pub(super) fn fired(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from our non-blocking timerfd.
        unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        self.armed_at_ns = 0;
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: closing the fd this struct owns, once.
        unsafe { libc::close(self.fd) };
    }
}
