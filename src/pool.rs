//! Recycled buffers: keys, values, peer frames and replica slot lists of the replicated path.
//!
//! A replicated operation used to cost about five heap allocations on its coordinator (the
//! key and value it keeps, its replica slots, its peer frame and a copy per extra peer) and
//! three per read (the value read from the store here, on the replica, and decoded from the
//! replica's reply), all freed together at the end of the turn or of the operation. A turn of
//! a pipelined load starts hundreds of operations, so those frees overflowed the allocator's
//! per-thread cache and every allocation took glibc's slow path: malloc and free were a fifth
//! of a cluster node's CPU (issue 14). Buffers now come back to a pool when their use ends
//! (a frame once the driver copied it into its link, a value once its reply is encoded, an
//! operation's key, value and slots when it ends) and are handed out again, so the steady
//! state allocates next to nothing.
//!
//! Byte buffers pass between the store, the replica, the coordinator and the driver of one
//! shard, so their pool is per thread ([`take_bytes`], [`give_bytes`]): a shard is one
//! thread, and the simulator's single thread only shares capacity between its nodes, never
//! contents (a buffer comes back empty). Bounded: at most [`POOL_BUFFERS_MAX`] buffers per
//! pool, none larger than [`POOL_BUFFER_BYTES_MAX`] (a large value's buffer goes back to the
//! allocator), so a pool holds at most 8 MiB. Giving a buffer back is never required: one
//! that is simply dropped is freed as before.

use crate::limits::{POOL_BUFFERS_MAX, POOL_BUFFER_BYTES_MAX};
use std::cell::RefCell;

thread_local! {
    static BYTES: RefCell<Pool<u8>> = RefCell::new(Pool::default());
}

/// An empty byte buffer from this thread's pool.
pub fn take_bytes() -> Vec<u8> {
    BYTES.with_borrow_mut(Pool::take)
}

/// A byte buffer from this thread's pool holding a copy of `bytes`.
pub fn copy_bytes(bytes: &[u8]) -> Vec<u8> {
    BYTES.with_borrow_mut(|p| p.copy_of(bytes))
}

/// Give a byte buffer whose use has ended back to this thread's pool.
pub fn give_bytes(v: Vec<u8>) {
    BYTES.with_borrow_mut(|p| p.give(v));
}

/// Free buffers of one element type.
#[derive(Debug)]
pub struct Pool<T> {
    free: Vec<Vec<T>>,
}

impl<T> Default for Pool<T> {
    fn default() -> Pool<T> {
        Pool { free: Vec::new() }
    }
}

impl<T> Pool<T> {
    /// An empty buffer, recycled if one is free.
    pub fn take(&mut self) -> Vec<T> {
        self.free.pop().unwrap_or_default()
    }

    /// A buffer holding a copy of `items`.
    pub fn copy_of(&mut self, items: &[T]) -> Vec<T>
    where
        T: Clone,
    {
        let mut v = self.take();
        v.extend_from_slice(items);
        v
    }

    /// Take `v` back (emptied), unless the pool is full or `v` is large.
    pub fn give(&mut self, mut v: Vec<T>) {
        let bytes = v.capacity() * std::mem::size_of::<T>();
        if bytes > 0 && bytes <= POOL_BUFFER_BYTES_MAX && self.free.len() < POOL_BUFFERS_MAX {
            v.clear();
            self.free.push(v);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_with_their_capacity_and_the_pool_is_bounded() {
        let mut p: Pool<u8> = Pool::default();
        let v = p.copy_of(b"hello");
        let cap = v.capacity();
        p.give(v);
        let again = p.take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap, "the same buffer, recycled");
        // Large buffers and buffers past the count go back to the allocator.
        p.give(Vec::with_capacity(POOL_BUFFER_BYTES_MAX + 1));
        assert!(p.is_empty());
        for _ in 0..POOL_BUFFERS_MAX + 10 {
            p.give(Vec::with_capacity(16));
        }
        assert_eq!(p.len(), POOL_BUFFERS_MAX);
        // Never-allocated buffers are not kept (nothing to save).
        let mut q: Pool<u8> = Pool::default();
        q.give(Vec::new());
        assert!(q.is_empty());
    }

    #[test]
    fn the_thread_pool_hands_back_what_it_was_given() {
        let v = copy_bytes(b"a value");
        assert_eq!(v, b"a value");
        let ptr = v.as_ptr();
        give_bytes(v);
        let again = take_bytes();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same buffer");
    }
}
