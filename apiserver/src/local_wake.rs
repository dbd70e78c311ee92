//! Thread-local wake-ups for watch streams on a connection thread
//! ([`crate::conn_threads`]).
//!
//! A watch stream reads its events from the watch cache's broadcast
//! channel. Waiting on that channel directly, every stream is woken from
//! the thread that sent the event: 10,000 wake-ups from another thread, each
//! a push onto the connection thread's shared queue and a system call to
//! wake it. The thread starts on the first streams while the rest are still
//! being woken, so their connections flush after a few streams each instead
//! of once for all of them (measured: ~1.5M writes for 1M deliveries,
//! against ~70k with the relays below).
//!
//! Here the streams of a connection thread wait on a [`Notify`] of their
//! connection instead, and one relay task per channel and thread waits on
//! the channel and wakes them, a connection at a time: a single wake-up
//! crosses threads, the rest are queued on the thread from there, and each
//! connection's streams run together, so its task flushes their frames
//! together while the next connection's streams run. Each stream still reads its own receiver, so what it gets (and a lag
//! that ends it) is exactly as before.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::Notify;

use crate::cache::Event;

/// The streams of one connection waiting on one channel.
struct ConnLane {
    conn: u64,
    notify: Arc<Notify>,
}

/// A channel's relay on this thread and its connections' lanes.
struct Lane {
    channel: u64,
    conns: Arc<Mutex<Vec<ConnLane>>>,
    relay: tokio::task::JoinHandle<()>,
}

thread_local! {
    /// `Some` on a connection thread: its lanes.
    static LANES: RefCell<Option<Vec<Lane>>> = const { RefCell::new(None) };
    /// The connection whose task is being polled (0: none).
    static CONN: Cell<u64> = const { Cell::new(0) };
}

/// Marks the calling thread as a connection thread (its runtime must be
/// current-thread: relays are spawned on it).
pub(crate) fn mark_conn_thread() {
    LANES.with(|l| *l.borrow_mut() = Some(Vec::new()));
}

/// The connection whose task is being polled on this thread (0: none).
#[cfg(test)]
pub(crate) fn current_conn() -> u64 {
    CONN.with(|c| c.get())
}

/// Polls `fut` as a task of connection `conn` (see [`ConnScoped`]).
pub(crate) fn conn_scoped<F: Future>(conn: u64, fut: F) -> ConnScoped<F> {
    ConnScoped { conn, fut }
}

pin_project_lite::pin_project! {
    /// A task of one connection: while it is polled, the streams it
    /// polls wait on that connection's lane.
    pub(crate) struct ConnScoped<F> {
        conn: u64,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for ConnScoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let outer = CONN.with(|c| c.replace(*this.conn));
        let out = this.fut.poll(cx);
        CONN.with(|c| c.set(outer));
        out
    }
}

/// Goes to the back of the thread's run queue once.
struct Requeue(bool);

impl Future for Requeue {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Relays `feed`'s events to the lanes in `conns`: one connection's
/// streams at a time, each time behind the tasks already queued, so a
/// connection's task (woken by its streams) flushes its frames while the
/// next connections' streams run, rather than all of them at the end.
async fn relay(mut feed: broadcast::Receiver<Arc<Event>>, conns: Arc<Mutex<Vec<ConnLane>>>) {
    loop {
        let mut closed = matches!(feed.recv().await, Err(RecvError::Closed));
        // One round for everything sent meanwhile.
        loop {
            match feed.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => {
                    closed = true;
                    break;
                }
            }
        }
        let notifies: Vec<Arc<Notify>> = match conns.lock() {
            Ok(mut conns) => {
                // A lane no stream waits on goes; a stream that comes back
                // makes a new one.
                conns.retain(|c| Arc::strong_count(&c.notify) > 1);
                conns.iter().map(|c| c.notify.clone()).collect()
            }
            Err(_) => return,
        };
        for notify in notifies {
            notify.notify_waiters();
            Requeue(false).await;
        }
        if closed {
            return;
        }
    }
}

/// The lane of `channel` and of the connection being polled on this
/// thread, started on first use; `None` off a connection thread.
fn lane(channel: u64, rx: &broadcast::Receiver<Arc<Event>>) -> Option<Arc<Notify>> {
    LANES.with(|l| {
        let mut l = l.borrow_mut();
        let lanes = l.as_mut()?;
        lanes.retain(|lane| !lane.relay.is_finished());
        let conns = match lanes.iter().find(|lane| lane.channel == channel) {
            Some(lane) => lane.conns.clone(),
            None => {
                let conns = Arc::new(Mutex::new(Vec::new()));
                let relay = tokio::spawn(relay(rx.resubscribe(), conns.clone()));
                lanes.push(Lane {
                    channel,
                    conns: conns.clone(),
                    relay,
                });
                conns
            }
        };
        let conn = CONN.with(|c| c.get());
        let mut conns = conns.lock().ok()?;
        if let Some(c) = conns.iter().find(|c| c.conn == conn) {
            return Some(c.notify.clone());
        }
        let notify = Arc::new(Notify::new());
        conns.push(ConnLane {
            conn,
            notify: notify.clone(),
        });
        Some(notify)
    })
}

/// The next event on `rx` (a receiver of the cache channel numbered
/// `channel`), or `None` once the receiver lagged or the channel closed,
/// as [`broadcast::Receiver::recv`] would tell. On a connection thread the
/// wait is on the lane of the connection being polled.
pub(crate) async fn recv(
    channel: u64,
    rx: &mut broadcast::Receiver<Arc<Event>>,
) -> Option<Arc<Event>> {
    let Some(notify) = lane(channel, rx) else {
        return rx.recv().await.ok();
    };
    // `try_recv` spends none of the task's cooperative budget, as `recv`
    // does: a stream that skips most events (a selector) or has a backlog
    // still gives the thread back every so often.
    tokio::task::consume_budget().await;
    loop {
        match rx.try_recv() {
            Ok(ev) => return Some(ev),
            Err(TryRecvError::Empty) => {}
            Err(_) => return None,
        }
        // Registered before the second look: an event sent after it
        // wakes this wait through the relay.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match rx.try_recv() {
            Ok(ev) => return Some(ev),
            Err(TryRecvError::Empty) => {}
            Err(_) => return None,
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(rev: i64) -> Arc<Event> {
        Arc::new(Event::Progress(rev))
    }

    fn rev(ev: &Event) -> i64 {
        ev.revision()
    }

    /// `fut`'s output, or a failed test if a wake-up went missing.
    async fn within<F: std::future::IntoFuture>(fut: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(10), fut)
            .await
            .expect("no wake-up within 10 s")
    }

    /// On a connection thread, streams get every event in order through
    /// the lane, a lag ends them as a direct receive would, and a closed
    /// channel ends them and its relay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_on_a_connection_thread_get_every_event_and_the_end() {
        let pool = crate::conn_threads::ConnThreads::start(1).expect("threads");
        let (tx, _) = broadcast::channel::<Arc<Event>>(8);
        let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..3 {
            let mut rx = tx.subscribe();
            let got = got_tx.clone();
            pool.spawn(|_| async move {
                let mut revs = Vec::new();
                while let Some(ev) = recv(7, &mut rx).await {
                    revs.push(rev(&ev));
                }
                let _ = got.send(revs);
            });
        }
        drop(got_tx);
        // Let the streams reach their wait, then send from this runtime.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        for r in 1..=5 {
            tx.send(progress(r)).expect("subscribers");
            tokio::task::yield_now().await;
        }
        drop(tx);
        for _ in 0..3 {
            let revs = within(got_rx.recv()).await.expect("a stream ended");
            assert_eq!(revs, vec![1, 2, 3, 4, 5]);
        }
    }

    /// One event at a time, each awaited at every stream before the next
    /// is sent: a lost wake-up is a stream that never gets its event (the
    /// channel is neither closed nor full to wake it some other way).
    /// Streams run as hyper's would: several per connection, spawned
    /// through the connection's executor, some yielding between events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_event_wakes_every_waiting_stream() {
        const CONNS: usize = 4;
        const STREAMS: usize = 3;
        let pool = crate::conn_threads::ConnThreads::start(2).expect("threads");
        let (tx, _) = broadcast::channel::<Arc<Event>>(64);
        let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
        for c in 0..CONNS {
            let receivers: Vec<_> = (0..STREAMS).map(|_| tx.subscribe()).collect();
            let got = got_tx.clone();
            pool.spawn(move |executor| async move {
                for (s, mut rx) in receivers.into_iter().enumerate() {
                    let got = got.clone();
                    hyper::rt::Executor::execute(&executor, async move {
                        while let Some(ev) = recv(5, &mut rx).await {
                            let _ = got.send((c, s, rev(&ev)));
                            if (c + s) % 2 == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                    });
                }
                std::future::pending::<()>().await;
            });
        }
        drop(got_tx);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        for r in 1..=200 {
            tx.send(progress(r)).expect("subscribers");
            let mut seen = Vec::new();
            for _ in 0..CONNS * STREAMS {
                let (c, s, got) = within(got_rx.recv()).await.expect("streams run");
                assert_eq!(got, r, "stream {s} of connection {c}");
                seen.push((c, s));
            }
            seen.sort();
            seen.dedup();
            assert_eq!(
                seen.len(),
                CONNS * STREAMS,
                "event {r} reached every stream once"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_stream_ends_and_a_new_channel_gets_a_new_relay() {
        let pool = crate::conn_threads::ConnThreads::start(1).expect("threads");
        let (tx, mut rx) = broadcast::channel::<Arc<Event>>(2);
        for r in 1..=4 {
            tx.send(progress(r)).expect("subscriber");
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        pool.spawn(|_| async move {
            let _ = done_tx.send(recv(1, &mut rx).await.map(|e| rev(&e)));
        });
        assert_eq!(
            within(done_rx).await.expect("ran"),
            None,
            "lagged: the stream ends"
        );
        // Channel 1 closes; channel 2 (another cache, or the same one
        // after its watches were ended) gets a relay of its own.
        drop(tx);
        let (tx2, mut rx2) = broadcast::channel::<Arc<Event>>(2);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        pool.spawn(|_| async move {
            let _ = done_tx.send(recv(2, &mut rx2).await.map(|e| rev(&e)));
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        tx2.send(progress(9)).expect("subscriber");
        assert_eq!(
            within(done_rx).await.expect("ran"),
            Some(9),
            "woken by the relay"
        );
    }

    #[tokio::test]
    async fn off_a_connection_thread_it_is_a_plain_receive() {
        let (tx, mut rx) = broadcast::channel::<Arc<Event>>(2);
        tx.send(progress(3)).expect("subscriber");
        assert_eq!(recv(1, &mut rx).await.map(|e| rev(&e)), Some(3));
        drop(tx);
        assert!(recv(1, &mut rx).await.is_none());
    }
}
