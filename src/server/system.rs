//! The few process-wide operating-system matters: the shutdown flag set by SIGINT/SIGTERM, the
//! open-file limit, and random bytes from the OS (the handshake nonces).

use std::sync::atomic::{AtomicBool, Ordering};

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe. The shard loops look at it at least every
    // POLL_TIMEOUT_MS_MAX.
    SHUTDOWN.store(true, Ordering::SeqCst);
}

/// Route SIGINT and SIGTERM to the shutdown flag, and ignore SIGPIPE (a peer that closed its
/// socket must give EPIPE on write, not kill the node).
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic; sigaction is given valid pointers.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Whether shutdown was asked for.
pub fn shutdown_requested() -> bool {
    SHUTDOWN.load(Ordering::Relaxed)
}

/// Ask for shutdown (tests, fatal errors).
pub fn request_shutdown() {
    SHUTDOWN.store(true, Ordering::SeqCst);
}

/// Raise the soft open-file limit as far as the hard limit allows; returns the limit in effect.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// Fill `buf` with random bytes from the OS (`getrandom(2)`, which blocks only until the
/// kernel's pool is first seeded at boot; `/dev/urandom` where the call is missing).
pub fn os_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let rest = &mut buf[at..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            at += n as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOSYS) => {
                use std::io::Read;
                return std::fs::File::open("/dev/urandom")?.read_exact(rest);
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

/// A fresh handshake nonce from the OS.
pub fn random_nonce() -> std::io::Result<crate::auth::Nonce> {
    let mut n = [0u8; crate::auth::NONCE_SIZE];
    os_random(&mut n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nonces_are_fresh() {
        let a = super::random_nonce().unwrap();
        let b = super::random_nonce().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }
}
