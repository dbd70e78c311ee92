//! Loom model of the WAL's group-commit queue: two producers and the writer
//! over a fake sink. Checks that every callback is called exactly once, in
//! queue order, and only after its batch was "synced".
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p keel-raft --release --test loom_group_commit`
#![cfg(loom)]

use keel_raft::sync::{thread, Arc, AtomicU64, Mutex, Ordering};
use keel_raft::wal::queue::{run, Queue, Sink};
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

fn model(producers: u64, per_producer: u64, max_batch_bytes: usize) {
    loom::model(move || {
        let queue = Arc::new(Queue::<Id>::new());
        let written = Arc::new(Mutex::new(Vec::new()));
        let synced = Arc::new(AtomicU64::new(0));
        let called = Arc::new(Mutex::new(Vec::new()));

        let writer = {
            let queue = queue.clone();
            let mut sink = FakeSink {
                written: written.clone(),
                synced: synced.clone(),
            };
            thread::spawn(move || run(&*queue, &mut sink, max_batch_bytes))
        };

        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let (queue, written, synced, called) = (
                    queue.clone(),
                    written.clone(),
                    synced.clone(),
                    called.clone(),
                );
                thread::spawn(move || {
                    for s in 0..per_producer {
                        let id = p * 10 + s;
                        let (written, synced, called) =
                            (written.clone(), synced.clone(), called.clone());
                        queue.push(
                            id,
                            1,
                            Box::new(move |r: Result<(), WalError>| {
                                assert!(r.is_ok());
                                let pos = written
                                    .lock()
                                    .unwrap()
                                    .iter()
                                    .position(|&x| x == id)
                                    .expect("called back before being written");
                                assert!(
                                    (pos as u64) < synced.load(Ordering::SeqCst),
                                    "callback for {id} before its batch was synced"
                                );
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
        assert_eq!(called, written);
        let mut sorted = called.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), called.len(), "a callback ran twice");
        // Each producer's items keep their push order.
        for p in 0..producers {
            let mine: Vec<Id> = called.iter().copied().filter(|id| id / 10 == p).collect();
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
    model(2, 2, usize::MAX);
}

/// A batch cap of one item forces a batch per item.
#[test]
fn two_producers_capped_batches() {
    model(2, 2, 1);
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
            let mut sink = FakeSink {
                written: Arc::new(Mutex::new(Vec::new())),
                synced: Arc::new(AtomicU64::new(0)),
            };
            thread::spawn(move || run(&*queue, &mut sink, usize::MAX))
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
