//! Software prefetch: start loading a cache line that a later step will read.
//!
//! A key look-up is a chain of dependent cache misses (index slot → entry → key bytes →
//! record), each about 100 ns on a store larger than the caches. A pipelined client sends a
//! batch of requests in one read, so the server knows the next keys before it handles the
//! first: it walks the batch once per link of the chain, asking for every key's next line
//! before reading any of them ([`crate::storage::keydir::KeyDir::prefetch`]). The misses of a
//! batch then overlap instead of following one another. A prefetch is only a hint: it never
//! faults (not even on an address past the end of a truncated map) and changes no state, so
//! what a request does is the same with or without it.

/// Bytes of one cache line on the targets we build for.
pub const CACHE_LINE_SIZE: usize = 64;

/// Ask the CPU to bring the cache line holding `p` into its caches.
#[inline(always)]
pub fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: PREFETCHT0 (SSE, which every x86_64 has) is a hint that never faults,
        // whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Ask for every cache line of `len` bytes from `p` (at most `max` bytes of them).
#[inline]
pub fn lines(p: *const u8, len: usize, max: usize) {
    let len = len.min(max);
    let mut at = 0;
    while at < len {
        line(p.wrapping_add(at));
        at += CACHE_LINE_SIZE;
    }
    // The last byte may start a line the steps above did not reach.
    if len > 0 {
        line(p.wrapping_add(len - 1));
    }
}
