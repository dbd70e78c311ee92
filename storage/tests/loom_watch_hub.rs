//! Loom models of the watch hub: registration, live notification and the
//! catch-up sync step racing each other, checked over every interleaving
//! (with a preemption bound).
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p keel-storage --no-default-features --release --test loom_watch_hub`
#![cfg(loom)]

use std::collections::BTreeMap;
// Shared ownership only (the hub's API takes std `Arc`s); the state the
// model checks is behind the shim's locks.
use std::sync::Arc;

use bytes::Bytes;
use keel_storage::mvcc::{KeyRange, MvccError};
use keel_storage::proto::mvccpb::{event::EventType, Event, KeyValue};
use keel_storage::sync::{thread, RwLock};
use keel_storage::watch::{Delivery, History, Outbox, WatchHub, WatchHubConfig, WatchSpec};

/// History as revision -> events behind the shim's `RwLock`.
struct Hist {
    revs: RwLock<(i64, BTreeMap<i64, Vec<Event>>)>,
}

fn put(key: &str, rev: i64) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            mod_revision: rev,
            ..Default::default()
        }),
        prev_kv: None,
    }
}

impl Hist {
    /// A store at revision 1 holding one change of "k".
    fn new() -> Self {
        let mut m = BTreeMap::new();
        m.insert(1, vec![put("k", 1)]);
        Hist {
            revs: RwLock::new((1, m)),
        }
    }

    /// Applies revision `rev` (what the apply thread does before notifying).
    fn apply(&self, rev: i64) -> Vec<Event> {
        let evs = vec![put("k", rev)];
        let mut g = self.revs.write().unwrap();
        g.0 = rev;
        g.1.insert(rev, evs.clone());
        evs
    }
}

impl History for Hist {
    fn events(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        _prev_kv: bool,
        _max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        if from > to {
            return Ok(Vec::new());
        }
        let g = self.revs.read().unwrap();
        Ok(g.1
            .range(from..=to)
            .flat_map(|(_, e)| e.iter())
            .filter(|e| e.kv.as_ref().is_some_and(|kv| range.contains(&kv.key)))
            .cloned()
            .collect())
    }

    fn current_rev(&self) -> i64 {
        self.revs.read().unwrap().0
    }

    fn compact_rev(&self) -> i64 {
        -1
    }
}

fn revs(ds: &[Delivery]) -> Vec<i64> {
    ds.iter()
        .filter_map(|d| match d {
            Delivery::Events { events, .. } => Some(events),
            _ => None,
        })
        .flatten()
        .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
        .collect()
}

fn spec_from(rev: i64) -> WatchSpec {
    WatchSpec::new(KeyRange::new(&Bytes::from_static(b"k"), &Bytes::new()), rev)
}

/// One thread applies and notifies revisions 2 and 3 while another
/// registers a watcher from revision 1 and runs a sync step: the watcher
/// gets 1, 2, 3 exactly once, in order, whichever way they interleave.
#[test]
fn loom_register_notify_sync_exactly_once() {
    loom::model(|| {
        let hist = Arc::new(Hist::new());
        let hub = Arc::new(WatchHub::new(
            Box::new(hist.clone()),
            WatchHubConfig::default(),
        ));
        let outbox = Arc::new(Outbox::new(16));
        let stream = hub.open_stream(outbox.clone());

        let notifier = {
            let (hub, hist) = (hub.clone(), hist.clone());
            thread::spawn(move || {
                for rev in 2..=3 {
                    let evs = hist.apply(rev);
                    hub.notify(rev, &evs);
                }
            })
        };
        let id = hub.watch(stream, spec_from(1));
        hub.sync_step();
        notifier.join().unwrap();
        // Whatever is left behind is caught up afterwards.
        while hub.sync_step() {}

        let ds: Vec<Delivery> = std::iter::from_fn(|| outbox.pop()).collect();
        assert_eq!(ds.first().map(Delivery::watch_id), Some(id));
        assert_eq!(revs(&ds), vec![1, 2, 3]);
        assert_eq!(hub.watcher_position(stream, id), Some((true, 4)));
    });
}

/// A victim: the outbox holds one batch, a consumer pops concurrently with
/// the notifier, and the sync step catches the watcher up: still every
/// revision exactly once, in order.
#[test]
fn loom_victim_catches_up_exactly_once() {
    loom::model(|| {
        let hist = Arc::new(Hist::new());
        let hub = Arc::new(WatchHub::new(
            Box::new(hist.clone()),
            WatchHubConfig::default(),
        ));
        let outbox = Arc::new(Outbox::new(1));
        let stream = hub.open_stream(outbox.clone());
        let id = hub.watch(stream, spec_from(0));

        let notifier = {
            let (hub, hist) = (hub.clone(), hist.clone());
            thread::spawn(move || {
                for rev in 2..=3 {
                    let evs = hist.apply(rev);
                    hub.notify(rev, &evs);
                }
            })
        };
        let mut ds = Vec::new();
        ds.extend(outbox.pop());
        hub.sync_step();
        notifier.join().unwrap();
        loop {
            ds.extend(std::iter::from_fn(|| outbox.pop()));
            if !hub.sync_step() {
                break;
            }
        }
        ds.extend(std::iter::from_fn(|| outbox.pop()));
        assert_eq!(ds.first().map(Delivery::watch_id), Some(id));
        assert_eq!(revs(&ds), vec![2, 3]);
        assert_eq!(hub.watcher_position(stream, id), Some((true, 4)));
    });
}
