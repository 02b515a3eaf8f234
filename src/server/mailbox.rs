//! A bounded mailbox between shards of one node, woken through `mio::Waker`.
//!
//! Producers push whole batches (one per destination per event-loop turn); the owner drains
//! everything at once. Only the push that finds the box empty wakes the owner: the owner takes
//! the whole queue under the same lock, so a wake-up is never lost and never repeated per
//! message.

use crate::limits::MAILBOX_CAPACITY;
use crate::shard::Mail;
use std::sync::Mutex;

/// One shard's inbox.
pub struct Mailbox {
    queue: Mutex<Vec<Mail>>,
    waker: mio::Waker,
}

/// The mailbox is at capacity; the mail is handed back.
pub struct Full(pub Mail);

impl Mailbox {
    /// A mailbox that wakes its owner through `waker`.
    pub fn new(waker: mio::Waker) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Vec::with_capacity(64)),
            waker,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Mail>> {
        // A poisoned lock means a shard panicked; the release profile aborts on panic, so this
        // only happens in tests, where carrying on with the data is fine.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue request mail; refused when the box is full (the caller answers OVERLOADED).
    pub fn push_requests(&self, mail: Mail) -> Result<(), Full> {
        let mut q = self.lock();
        if q.len() >= MAILBOX_CAPACITY {
            return Err(Full(mail));
        }
        self.push_locked(q.as_mut(), mail);
        Ok(())
    }

    /// Queue replies. Never refused: every reply answers a request that was admitted, and
    /// requests in flight are bounded per connection, so replies are bounded too.
    pub fn push_replies(&self, mail: Mail) {
        let mut q = self.lock();
        self.push_locked(q.as_mut(), mail);
    }

    fn push_locked(&self, q: &mut Vec<Mail>, mail: Mail) {
        let was_empty = q.is_empty();
        q.push(mail);
        if was_empty {
            if let Err(e) = self.waker.wake() {
                log::error!("mailbox wake failed: {e}");
            }
        }
    }

    /// Take everything queued.
    pub fn drain(&self, into: &mut Vec<Mail>) {
        let mut q = self.lock();
        std::mem::swap(&mut *q, into);
    }
}
