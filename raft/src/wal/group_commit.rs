//! The group-commit queue: appenders enqueue, one writer takes everything
//! queued (up to a byte cap), makes it durable in one go, then calls the
//! callbacks in queue order.
//!
//! It knows nothing of files: the writer hands batches to a [`Sink`], so a
//! loom model can drive it with a fake sink. Shared state goes through
//! [`crate::sync`], never `std::sync`, for that reason.

use std::collections::VecDeque;

use super::error::WalError;
use crate::sync::{Condvar, Mutex, MutexGuard};

/// Called exactly once with the outcome of a queued request.
pub type Callback = Box<dyn FnOnce(Result<(), WalError>) + Send>;

/// One queued request.
pub struct Pending<T> {
    /// What to make durable.
    pub item: T,
    /// Its size in bytes, counted against the batch cap.
    pub size: usize,
    /// Called after the batch holding `item` is durable (or failed).
    pub done: Callback,
}

struct State<T> {
    queue: VecDeque<Pending<T>>,
    closed: bool,
}

/// A multi-producer, single-consumer queue of requests awaiting group commit.
pub struct Queue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Queue<T> {
    /// An empty, open queue.
    pub fn new() -> Self {
        Queue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the queue half-updated
        // (push/pop are single calls), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues a request and wakes the writer. Never blocks on I/O. If the
    /// queue is already closed, `done` is called at once, here, with
    /// [`WalError::Closed`].
    pub fn push(&self, item: T, size: usize, done: Callback) {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            done(Err(WalError::Closed));
            return;
        }
        st.queue.push_back(Pending { item, size, done });
        drop(st);
        self.ready.notify_one();
    }

    /// Whether [`Queue::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Closes the queue: the writer drains what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Blocks until something is queued. Returns `false` once the queue is
    /// closed and empty.
    pub fn wait_nonempty(&self) -> bool {
        let mut st = self.lock();
        loop {
            if !st.queue.is_empty() {
                return true;
            }
            if st.closed {
                return false;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes queued requests in order until their sizes would exceed
    /// `max_bytes` (at least one, if any is queued). Never blocks.
    pub fn try_take(&self, max_bytes: usize) -> Vec<Pending<T>> {
        let mut st = self.lock();
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some(front) = st.queue.front() {
            if !batch.is_empty() && bytes.saturating_add(front.size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(front.size);
            match st.queue.pop_front() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        batch
    }
}

/// Where the writer makes batches durable.
pub trait Sink<T> {
    /// Makes `items` durable together (one write, one sync) and returns one
    /// result per item, in order. A sink that has failed fatally returns the
    /// fatal error for every item from then on.
    fn commit(&mut self, items: Vec<T>) -> Vec<Result<(), WalError>>;
}

fn lock_sink<S>(sink: &Mutex<S>) -> MutexGuard<'_, S> {
    // A sink that panicked mid-commit has marked itself failed (or wrote
    // nothing); its state is still the truth about the disk.
    sink.lock().unwrap_or_else(|p| p.into_inner())
}

/// Commits `items` through `sink` and calls each callback with its result,
/// in order; `own`'s result (if given, committed last) is returned instead.
fn commit_batch<T, S: Sink<T>>(
    sink: &mut S,
    batch: Vec<Pending<T>>,
    own: Option<T>,
) -> Option<Result<(), WalError>> {
    let n = batch.len();
    let mut items = Vec::with_capacity(n + 1);
    let mut dones = Vec::with_capacity(n);
    for p in batch {
        items.push(p.item);
        dones.push(p.done);
    }
    let has_own = own.is_some();
    items.extend(own);
    let mut results = sink.commit(items).into_iter();
    for done in dones {
        // A sink returning too few results is a bug; fail loudly but keep going.
        let r = results.next().unwrap_or(Err(WalError::WriterPanicked));
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done(r))).is_err() {
            tracing::error!("a WAL append callback panicked");
        }
    }
    has_own.then(|| results.next().unwrap_or(Err(WalError::WriterPanicked)))
}

/// The writer loop: waits for requests until the queue is closed and
/// drained; for each batch it takes the sink, takes what is queued, commits
/// it and calls the callbacks in queue order.
///
/// Requests are only ever taken from the queue by whoever holds the sink
/// (this loop, or [`commit_direct`]), so everything is committed, and its
/// callbacks called, in queue order. A panicking callback is contained (and
/// logged) so that it cannot stop the writer and strand every later caller.
pub fn run<T, S: Sink<T>>(queue: &Queue<T>, sink: &Mutex<S>, max_batch_bytes: usize) {
    while queue.wait_nonempty() {
        let mut s = lock_sink(sink);
        let batch = queue.try_take(max_batch_bytes);
        if !batch.is_empty() {
            commit_batch(&mut *s, batch, None);
        }
    }
}

/// Commits `item` on the calling thread, with no hand-off to the writer:
/// takes the sink, commits whatever is queued ahead of `item` together with
/// it (one write, one sync), calls their callbacks, and returns `item`'s
/// result. For a single appender that waits for durability anyway, this
/// saves two thread wake-ups per write. Ignores the byte cap for `item`.
pub fn commit_direct<T, S: Sink<T>>(
    queue: &Queue<T>,
    sink: &Mutex<S>,
    item: T,
    max_batch_bytes: usize,
) -> Result<(), WalError> {
    if queue.is_closed() {
        return Err(WalError::Closed);
    }
    let mut s = lock_sink(sink);
    let batch = queue.try_take(max_batch_bytes);
    commit_batch(&mut *s, batch, Some(item)).unwrap_or(Err(WalError::WriterPanicked))
}
