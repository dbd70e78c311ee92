//! [`Outbox`]: the bounded queue between the hub and one stream's consumer.
//!
//! The hub pushes while holding its lock, so a push never blocks: event
//! batches are refused when the queue holds `capacity` of them (the watcher
//! then becomes a victim and catches up from history later), while control
//! messages (created, canceled, progress) are always accepted, since they
//! are bounded by the client's own requests and must keep their order
//! relative to the events. The consumer is either async ([`Outbox::poll_pop`],
//! used by the gRPC server) or a plain thread ([`Outbox::pop`],
//! [`Outbox::pop_wait`]). Built on [`crate::sync`] so loom can model it.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::Delivery;
use crate::sync::{Condvar, Mutex, MutexGuard};

/// A bounded queue of [`Delivery`]s for one stream. See the module docs.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    cond: Condvar,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Delivery>,
    /// How many `Delivery::Events` the queue holds (what `capacity` bounds).
    event_batches: usize,
    /// A push of events was refused since the last `take_overflowed`.
    overflowed: bool,
    /// No more pushes are accepted; the consumer drains what is left.
    closed: bool,
    waker: Option<Waker>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` (at least 1) event batches.
    pub fn new(capacity: usize) -> Self {
        Outbox {
            inner: Mutex::new(Inner::default()),
            cond: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event batch unless `capacity` batches are already queued
    /// (or the outbox is closed); gives it back if refused.
    pub fn try_push_events(&self, d: Delivery) -> Result<(), Delivery> {
        let mut g = self.lock();
        if g.closed || g.event_batches >= self.capacity {
            g.overflowed = true;
            return Err(d);
        }
        g.event_batches += 1;
        g.queue.push_back(d);
        Self::wake(g);
        self.cond.notify_one();
        Ok(())
    }

    /// Queues a control message (or anything that must not be refused).
    /// Dropped silently if the outbox is closed.
    pub fn push_control(&self, d: Delivery) {
        let mut g = self.lock();
        if g.closed {
            return;
        }
        if matches!(d, Delivery::Events { .. }) {
            g.event_batches += 1;
        }
        g.queue.push_back(d);
        Self::wake(g);
        self.cond.notify_one();
    }

    fn wake(mut g: MutexGuard<'_, Inner>) {
        let w = g.waker.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
    }

    fn pop_locked(g: &mut Inner) -> Option<Delivery> {
        let d = g.queue.pop_front()?;
        if matches!(d, Delivery::Events { .. }) {
            g.event_batches = g.event_batches.saturating_sub(1);
        }
        Some(d)
    }

    /// Takes the oldest delivery, if any.
    pub fn pop(&self) -> Option<Delivery> {
        Self::pop_locked(&mut self.lock())
    }

    /// Takes the oldest delivery, waiting up to `timeout` for one.
    pub fn pop_wait(&self, timeout: Duration) -> Option<Delivery> {
        let mut g = self.lock();
        if let Some(d) = Self::pop_locked(&mut g) {
            return Some(d);
        }
        if g.closed {
            return None;
        }
        let (mut g, _) = self
            .cond
            .wait_timeout(g, timeout)
            .unwrap_or_else(|e| e.into_inner());
        Self::pop_locked(&mut g)
    }

    /// Async pop: `Ready(Some)` with the oldest delivery, `Ready(None)` once
    /// the outbox is closed and drained, else `Pending` (woken by a push).
    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let mut g = self.lock();
        if let Some(d) = Self::pop_locked(&mut g) {
            return Poll::Ready(Some(d));
        }
        if g.closed {
            return Poll::Ready(None);
        }
        g.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// True (once) if a push of events was refused since the last call: the
    /// consumer should then wake the hub's sync task after draining.
    pub fn take_overflowed(&self) -> bool {
        std::mem::take(&mut self.lock().overflowed)
    }

    /// Refuses further pushes; the consumer still drains what is queued.
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        Self::wake(g);
        self.cond.notify_all();
    }

    /// True once [`Outbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Number of queued deliveries (control messages included).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most event batches it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ev(id: i64) -> Delivery {
        Delivery::Events {
            watch_id: id,
            revision: 1,
            events: vec![],
            fragment: false,
        }
    }

    #[test]
    fn watch_outbox_bounds_events_not_control() {
        let o = Outbox::new(2);
        assert!(o.try_push_events(ev(1)).is_ok());
        assert!(o.try_push_events(ev(2)).is_ok());
        assert_eq!(o.try_push_events(ev(3)), Err(ev(3)));
        assert!(o.take_overflowed());
        assert!(!o.take_overflowed());
        o.push_control(Delivery::Progress {
            watch_id: -1,
            revision: 1,
        });
        assert_eq!(o.len(), 3);
        assert_eq!(o.pop(), Some(ev(1)));
        assert!(o.try_push_events(ev(4)).is_ok());
        assert_eq!(o.pop(), Some(ev(2)));
        assert!(matches!(o.pop(), Some(Delivery::Progress { .. })));
        assert_eq!(o.pop(), Some(ev(4)));
        assert_eq!(o.pop(), None);
        o.close();
        assert!(o.try_push_events(ev(5)).is_err());
        assert_eq!(o.pop_wait(Duration::from_millis(1)), None);
    }
}
