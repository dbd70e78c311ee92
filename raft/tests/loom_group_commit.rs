//! Loom model of the WAL's group-commit queue: two producers and the writer
//! over a fake sink. Checks that every callback is called exactly once, in
//! queue order, and only after its batch was "synced".
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p keel-raft --release --test loom_group_commit`
#![cfg(loom)]

use keel_raft::sync::{thread, Arc, AtomicU64, Mutex, Ordering};
use keel_raft::wal::queue::{commit_direct, run, Queue, Sink};
use keel_raft::wal::WalError;

/// Item id: producer * 10 + sequence number within the producer.
type Id = u64;

/// Records the order items were "written" and publishes how many are "synced".
struct FakeSink {
    written: Arc<Mutex<Vec<Id>>>,
    synced: Arc<AtomicU64>,
}

impl Sink<Id> for FakeSink {
    fn commit(&mut self, items: Vec<Id>) -> Vec<Result<(), WalError>> {
        let n = {
            let mut w = self.written.lock().unwrap();
            w.extend(items.iter().copied());
            w.len() as u64
        };
        // The "fdatasync": everything written so far is now durable.
        self.synced.store(n, Ordering::SeqCst);
        items.iter().map(|_| Ok(())).collect()
    }
}

/// Panics unless `id` was written and its batch synced (checked when its
/// appender is told so).
fn assert_synced(written: &Mutex<Vec<Id>>, synced: &AtomicU64, id: Id) {
    let pos = written
        .lock()
        .unwrap()
        .iter()
        .position(|&x| x == id)
        .expect("acknowledged before being written");
    assert!(
        (pos as u64) < synced.load(Ordering::SeqCst),
        "{id} acknowledged before its batch was synced"
    );
}

/// `producers` threads push `per_producer` items each; with `direct`,
/// producer 0 commits its items itself ([`commit_direct`]) instead.
fn model(producers: u64, per_producer: u64, max_batch_bytes: usize, direct: bool) {
    loom::model(move || {
        let queue = Arc::new(Queue::<Id>::new());
        let written = Arc::new(Mutex::new(Vec::new()));
        let synced = Arc::new(AtomicU64::new(0));
        let called = Arc::new(Mutex::new(Vec::new()));

        let (sink, writer) = {
            let queue = queue.clone();
            let sink = Arc::new(Mutex::new(FakeSink {
                written: written.clone(),
                synced: synced.clone(),
            }));
            let s = sink.clone();
            (
                sink,
                thread::spawn(move || run(&*queue, &*s, max_batch_bytes)),
            )
        };

        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let (queue, written, synced, called, sink) = (
                    queue.clone(),
                    written.clone(),
                    synced.clone(),
                    called.clone(),
                    sink.clone(),
                );
                thread::spawn(move || {
                    for s in 0..per_producer {
                        let id = p * 10 + s;
                        if direct && p == 0 {
                            let r = commit_direct(&*queue, &*sink, id, max_batch_bytes);
                            assert!(r.is_ok());
                            assert_synced(&written, &synced, id);
                            continue;
                        }
                        let (written, synced, called) =
                            (written.clone(), synced.clone(), called.clone());
                        queue.push(
                            id,
                            1,
                            Box::new(move |r: Result<(), WalError>| {
                                assert!(r.is_ok());
                                assert_synced(&written, &synced, id);
                                called.lock().unwrap().push(id);
                            }),
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        queue.close();
        writer.join().unwrap();

        let written = written.lock().unwrap().clone();
        let called = called.lock().unwrap().clone();
        // Every item written once, every callback called once, in queue order.
        assert_eq!(written.len() as u64, producers * per_producer);
        let queued: Vec<Id> = written
            .iter()
            .copied()
            .filter(|id| !(direct && id / 10 == 0))
            .collect();
        assert_eq!(called, queued);
        let mut all = written.clone();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), written.len(), "an item was written twice");
        let mut sorted = called.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), called.len(), "a callback ran twice");
        // Each producer's items keep their push order.
        for p in 0..producers {
            let mine: Vec<Id> = written.iter().copied().filter(|id| id / 10 == p).collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "producer {p} reordered: {mine:?}"
            );
        }
    });
}

/// Two producers with two items each; everything queued goes in one batch.
#[test]
fn two_producers_group_commit() {
    model(2, 2, usize::MAX, false);
}

/// A batch cap of one item forces a batch per item.
#[test]
fn two_producers_capped_batches() {
    model(2, 2, 1, false);
}

/// One appender commits on its own thread while another queues for the
/// writer thread: each item written once, in order per producer, and
/// acknowledged only once synced.
#[test]
fn direct_commit_beside_the_writer() {
    model(2, 2, usize::MAX, true);
}

/// A push racing with close and a running writer: the callback is called
/// exactly once either way (served by the writer, or refused with `Closed`).
#[test]
fn push_racing_close_is_served_or_refused() {
    loom::model(|| {
        let queue = Arc::new(Queue::<Id>::new());
        let outcome = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let queue = queue.clone();
            let sink = Mutex::new(FakeSink {
                written: Arc::new(Mutex::new(Vec::new())),
                synced: Arc::new(AtomicU64::new(0)),
            });
            thread::spawn(move || run(&*queue, &sink, usize::MAX))
        };
        let closer = {
            let queue = queue.clone();
            thread::spawn(move || queue.close())
        };
        let o = outcome.clone();
        queue.push(
            1,
            1,
            Box::new(move |r: Result<(), WalError>| {
                o.lock().unwrap().push(r.is_ok());
            }),
        );
        closer.join().unwrap();
        writer.join().unwrap();
        assert_eq!(
            outcome.lock().unwrap().len(),
            1,
            "callback not called exactly once"
        );
    });
}
