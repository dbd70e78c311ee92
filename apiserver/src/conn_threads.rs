//! Connection threads: each served connection, with the HTTP/2 stream
//! tasks hyper spawns for it, lives on one thread of a small pool (one
//! thread per core, each a tokio current-thread runtime). Request handlers
//! still run on the shared multi-thread runtime (see [`ConnThreads::handler`]).
//!
//! Why: a watch event reaches every watch stream of a connection from the
//! stream's own task. On the shared runtime those tasks spread over all
//! workers as they are stolen, so the workers take turns on the
//! connection's HTTP/2 state (one lock per connection in h2) and wake each
//! other, and the connection task flushes while another worker is still
//! adding frames. On one thread, and woken from that thread a connection
//! at a time ([`crate::local_wake`]), a connection's stream tasks run one
//! after another, and its write coalescing ([`crate::coalesce`]) sends
//! their frames together. Measured with 10,000 watchers over 100
//! connections (`bench/apiserver.sh`'s watch step, 2 cores): see
//! `bench/RESULTS.md`.
//!
//! Handlers do not run here because a thread has no one to steal its work:
//! a 20 MB list encoded on a connection thread would hold up every other
//! connection of that thread for its whole length.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::response::Response;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::local_wake;

/// The pool. [`ConnThreads::stop`] stops the threads and waits for them;
/// dropping the pool stops them without waiting. Either way the tasks
/// still on a thread are dropped with its runtime, on that thread.
pub(crate) struct ConnThreads {
    threads: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped to stop the threads: each thread's runtime ends then.
    stops: Vec<oneshot::Sender<()>>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl ConnThreads {
    /// Starts `n` threads (at least one).
    pub(crate) fn start(n: usize) -> std::io::Result<ConnThreads> {
        let n = n.max(1);
        let mut pool = ConnThreads {
            threads: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(n),
            joins: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (stop, stopped) = oneshot::channel::<()>();
            let (started, handle) = std::sync::mpsc::sync_channel(1);
            // The runtime is built, run and dropped on its own thread: a
            // runtime may not be dropped on a runtime's thread (here, if
            // the spawn failed), and a failed build is reported back.
            let join = std::thread::Builder::new()
                .name(format!("keel-api-conn-{i}"))
                .spawn(move || {
                    let rt = match Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    let _ = started.send(Ok(rt.handle().clone()));
                    local_wake::mark_conn_thread();
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            // On failure `pool` drops: the threads started so far stop.
            let handle = handle
                .recv()
                .map_err(|_| std::io::Error::other("a connection thread ended at its start"))??;
            pool.threads.push(handle);
            pool.stops.push(stop);
            pool.joins.push(join);
        }
        Ok(pool)
    }

    /// Stops the threads and waits until they are gone, with the
    /// connections and tasks they still ran.
    pub(crate) async fn stop(mut self) {
        self.stops.clear();
        let joins = std::mem::take(&mut self.joins);
        let _ = tokio::task::spawn_blocking(move || {
            for j in joins {
                let _ = j.join();
            }
        })
        .await;
    }

    /// One thread per core this process may use.
    pub(crate) fn per_core() -> std::io::Result<ConnThreads> {
        Self::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Runs a connection's future, made by `conn` from the executor its
    /// HTTP/2 stream tasks are to be spawned with, on the next thread, in
    /// turn.
    pub(crate) fn spawn<F>(&self, conn: impl FnOnce(ConnExecutor) -> F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Connection numbers start at 1 (0 is no connection).
        let id = n as u64 + 1;
        let fut = local_wake::conn_scoped(id, conn(ConnExecutor { conn: id }));
        drop(self.threads[n % self.threads.len()].spawn(fut));
    }

    /// Runs a request's handler `fut` on the shared runtime `shared` and
    /// returns its response to the connection thread. Dropping the returned
    /// future (the client reset the stream) drops the handler, as if it
    /// had run in place; a handler that did not finish (it panicked, or the
    /// runtime is stopping) answers a bare 500.
    pub(crate) fn handler<F>(
        shared: &Handle,
        fut: F,
    ) -> impl Future<Output = Result<Response, Infallible>> + Send + 'static
    where
        F: Future<Output = Result<Response, Infallible>> + Send + 'static,
    {
        let task = tokio_util::task::AbortOnDropHandle::new(shared.spawn(fut));
        async move {
            match task.await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::error!(error = %e, "request handler failed");
                    let mut r = Response::new(axum::body::Body::empty());
                    *r.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(r)
                }
            }
        }
    }
}

/// hyper's executor for one connection's stream tasks: they run on the
/// connection's thread, as tasks of that connection
/// ([`local_wake::conn_scoped`]).
#[derive(Clone, Copy)]
pub(crate) struct ConnExecutor {
    conn: u64,
}

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        drop(tokio::spawn(local_wake::conn_scoped(self.conn, fut)));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Connections take turns over the threads; what hyper spawns through a
    /// connection's executor runs on that connection's thread, as a task of
    /// that connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_take_turns_and_their_streams_stay_with_them() {
        let pool = ConnThreads::start(2).expect("threads");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let tx = tx.clone();
            pool.spawn(|executor| async move {
                let conn = (std::thread::current().id(), local_wake::current_conn());
                let (stream_tx, stream_rx) = oneshot::channel();
                hyper::rt::Executor::execute(&executor, async move {
                    let stream = (std::thread::current().id(), local_wake::current_conn());
                    let _ = stream_tx.send(stream);
                });
                let stream = stream_rx.await.expect("the stream task ran");
                let _ = tx.send((conn, stream));
            });
        }
        drop(tx);
        let (mut threads, mut conns) = (Vec::new(), Vec::new());
        while let Some((conn, stream)) = rx.recv().await {
            assert_eq!(
                conn, stream,
                "a stream runs on its connection's thread, in its scope"
            );
            assert_ne!(conn.1, 0, "a connection has a number");
            threads.push(format!("{:?}", conn.0));
            conns.push(conn.1);
        }
        threads.sort();
        threads.dedup();
        assert_eq!(
            threads.len(),
            2,
            "four connections over two threads use both"
        );
        conns.sort();
        conns.dedup();
        assert_eq!(conns.len(), 4, "every connection has a number of its own");
        assert_eq!(local_wake::current_conn(), 0, "no connection out here");
    }

    /// `stop` returns once the threads are gone, and what they ran has been
    /// dropped by then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_waits_for_the_threads_and_drops_their_tasks() {
        struct Dropped(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let pool = ConnThreads::start(2).expect("threads");
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (running_tx, running) = oneshot::channel();
        let guard = Dropped(dropped.clone());
        pool.spawn(move |_| async move {
            let _guard = guard;
            let _ = running_tx.send(());
            std::future::pending::<()>().await;
        });
        running.await.expect("the connection started");
        tokio::time::timeout(std::time::Duration::from_secs(10), pool.stop())
            .await
            .expect("the threads stopped");
        assert!(dropped.load(Ordering::SeqCst), "the connection was dropped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handlers_run_on_the_shared_runtime_and_a_panic_answers_500() {
        let pool = ConnThreads::start(1).expect("threads");
        let shared = Handle::current();
        let (tx, rx) = oneshot::channel();
        pool.spawn(|_| async move {
            let conn_thread = std::thread::current().id();
            let ok = ConnThreads::handler(&shared, async {
                Ok::<_, std::convert::Infallible>(axum::response::Response::new(
                    axum::body::Body::from(format!("{:?}", std::thread::current().id())),
                ))
            })
            .await;
            let failed = ConnThreads::handler(&shared, async {
                if true {
                    panic!("a handler bug");
                }
                Ok::<axum::response::Response, _>(axum::response::Response::default())
            })
            .await;
            let _ = tx.send((conn_thread, ok, failed));
        });
        let (conn_thread, ok, failed) = rx.await.expect("connection ran");
        let ok = ok.expect("infallible");
        let body = axum::body::to_bytes(ok.into_body(), 1024)
            .await
            .expect("body");
        assert_ne!(
            body,
            format!("{conn_thread:?}").as_bytes(),
            "handler ran elsewhere"
        );
        let failed = failed.expect("infallible");
        assert_eq!(
            failed.status(),
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
