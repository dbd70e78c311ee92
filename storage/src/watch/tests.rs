//! Hub tests against a fake history (the real store is used by
//! `tests/watch_service.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::mvcc::{KeyRange, MvccError};
use crate::proto::etcdserverpb::{watch_create_request::FilterType, WatchCreateRequest};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// History as a map from revision to its events, plus a compaction mark.
#[derive(Default)]
struct FakeHistory {
    revs: Mutex<BTreeMap<i64, Vec<Event>>>,
    current: AtomicI64,
    compact: AtomicI64,
    /// Latest value per key, to fill `prev_kv`.
    latest: Mutex<HashMap<Bytes, KeyValue>>,
}

impl FakeHistory {
    fn new() -> Arc<Self> {
        let h = FakeHistory::default();
        h.current.store(1, Ordering::SeqCst);
        h.compact.store(-1, Ordering::SeqCst);
        Arc::new(h)
    }

    /// Appends one revision; returns it and its events.
    fn write(&self, ops: &[(&str, bool)]) -> (i64, Vec<Event>) {
        let rev = self.current.load(Ordering::SeqCst) + 1;
        let mut latest = self.latest.lock().unwrap();
        let mut evs = Vec::new();
        for (key, put) in ops {
            let key = Bytes::copy_from_slice(key.as_bytes());
            let prev = latest.get(&key).cloned();
            let ev = if *put {
                let kv = KeyValue {
                    key: key.clone(),
                    value: Bytes::from(format!("v{rev}")),
                    mod_revision: rev,
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    lease: 0,
                };
                latest.insert(key, kv.clone());
                Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv),
                    prev_kv: prev,
                }
            } else {
                latest.remove(&key);
                Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key,
                        mod_revision: rev,
                        ..Default::default()
                    }),
                    prev_kv: prev,
                }
            };
            evs.push(ev);
        }
        self.revs.lock().unwrap().insert(rev, evs.clone());
        self.current.store(rev, Ordering::SeqCst);
        (rev, evs)
    }

    fn compact(&self, rev: i64) {
        self.compact.store(rev, Ordering::SeqCst);
        self.revs.lock().unwrap().retain(|r, _| *r >= rev);
    }
}

impl History for FakeHistory {
    fn events(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        prev_kv: bool,
        max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        if from < self.compact.load(Ordering::SeqCst) {
            return Err(MvccError::Compacted);
        }
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        for (_, evs) in self.revs.lock().unwrap().range(from..=to) {
            if max > 0 && out.len() >= max {
                break;
            }
            for e in evs {
                if e.kv.as_ref().is_some_and(|kv| range.contains(&kv.key)) {
                    let mut e = e.clone();
                    if !prev_kv {
                        e.prev_kv = None;
                    }
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    fn current_rev(&self) -> i64 {
        self.current.load(Ordering::SeqCst)
    }

    fn compact_rev(&self) -> i64 {
        self.compact.load(Ordering::SeqCst)
    }
}

struct Fixture {
    hist: Arc<FakeHistory>,
    hub: Arc<WatchHub>,
}

fn config() -> WatchHubConfig {
    WatchHubConfig {
        max_events_per_batch: 4,
        max_revs_per_read: 7,
        ..WatchHubConfig::default()
    }
}

impl Fixture {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(cfg: WatchHubConfig) -> Self {
        let hist = FakeHistory::new();
        let hub = Arc::new(WatchHub::new(Box::new(hist.clone()), cfg));
        Fixture { hist, hub }
    }

    /// Writes one revision and notifies the hub.
    fn write(&self, ops: &[(&str, bool)]) -> i64 {
        let (rev, evs) = self.hist.write(ops);
        self.hub.notify(rev, &evs);
        rev
    }

    fn put(&self, key: &str) -> i64 {
        self.write(&[(key, true)])
    }

    fn del(&self, key: &str) -> i64 {
        self.write(&[(key, false)])
    }

    fn stream(&self, cap: usize) -> (StreamId, Arc<Outbox>) {
        let o = Arc::new(Outbox::new(cap));
        (self.hub.open_stream(o.clone()), o)
    }

    fn sync_all(&self) {
        while self.hub.sync_step() {}
    }
}

fn req(key: &str, end: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        range_end: Bytes::copy_from_slice(end.as_bytes()),
        start_revision: start,
        ..Default::default()
    }
}

fn spec(key: &str, end: &str, start: i64) -> WatchSpec {
    WatchSpec::from_request(&req(key, end, start))
}

fn drain(o: &Outbox) -> Vec<Delivery> {
    std::iter::from_fn(|| o.pop()).collect()
}

/// (revision, key, is_put) of every event for `wid`, in delivery order.
fn evs(ds: &[Delivery], wid: i64) -> Vec<(i64, String, bool)> {
    ds.iter()
        .filter_map(|d| match d {
            Delivery::Events {
                watch_id, events, ..
            } if *watch_id == wid => Some(events),
            _ => None,
        })
        .flatten()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            (
                kv.mod_revision,
                String::from_utf8_lossy(&kv.key).into_owned(),
                e.r#type == EventType::Put as i32,
            )
        })
        .collect()
}

fn revs(ds: &[Delivery], wid: i64) -> Vec<i64> {
    evs(ds, wid).into_iter().map(|e| e.0).collect()
}

#[test]
fn watch_live_events_reach_synced_watcher() {
    let f = Fixture::new();
    let (s, o) = f.stream(16);
    let id = f.hub.watch(s, spec("a", "", 0));
    assert_eq!(id, 0);
    let r2 = f.put("a");
    f.put("b");
    let r4 = f.put("a");
    let ds = drain(&o);
    assert_eq!(
        ds[0],
        Delivery::Created {
            watch_id: 0,
            revision: 1,
            cancel_reason: None
        }
    );
    assert_eq!(revs(&ds, 0), vec![r2, r4]);
    // Header revision of a live batch is the revision notified.
    let hdr: Vec<i64> = ds[1..].iter().map(Delivery::revision).collect();
    assert_eq!(hdr, vec![r2, r4]);
    assert_eq!(
        f.hub.stats(),
        HubStats {
            streams: 1,
            synced: 1,
            unsynced: 0,
            notified_rev: 4
        }
    );
}

#[test]
fn watch_catch_up_from_old_revision_then_live() {
    let f = Fixture::new();
    for i in 0..20 {
        f.put(&format!("k{}", i % 3));
    }
    let (s, o) = f.stream(1000);
    let id = f.hub.watch(s, spec("k", "l", 2));
    assert_eq!(f.hub.watcher_position(s, id), Some((false, 2)));
    // Live notifies while unsynced do not reach it directly.
    let r22 = f.put("k1");
    assert!(revs(&drain(&o), id).is_empty());
    f.sync_all();
    assert_eq!(f.hub.watcher_position(s, id), Some((true, r22 + 1)));
    let r23 = f.put("k2");
    let got = revs(&drain(&o), id);
    assert_eq!(got, (2..=r23).collect::<Vec<_>>());
}

#[test]
fn watch_catch_up_races_live_notifies_without_gap_or_dup() {
    for round in 0..20 {
        let f = Fixture::new();
        for _ in 0..30 {
            f.put("x");
        }
        let (s, o) = f.stream(100_000);
        let id = f.hub.watch(s, spec("x", "", 1 + round % 5));
        let writer = {
            let hist = f.hist.clone();
            let hub = f.hub.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let (rev, evs) = hist.write(&[("x", true), ("y", true)]);
                    hub.notify(rev, &evs);
                }
            })
        };
        let mut done = false;
        while !done {
            done = writer.is_finished();
            f.hub.sync_step();
        }
        writer.join().unwrap();
        f.sync_all();
        let got = revs(&drain(&o), id);
        let want: Vec<i64> = (2.max(1 + round % 5)..=f.hub.notified_rev()).collect();
        assert_eq!(got, want, "round {round}");
    }
}

#[test]
fn watch_compacted_start_revision_is_cancelled_with_compact_revision() {
    let f = Fixture::new();
    for _ in 0..10 {
        f.put("a");
    }
    f.hist.compact(8);
    let (s, o) = f.stream(16);
    let id = f.hub.watch(s, spec("a", "", 5));
    f.sync_all();
    let ds = drain(&o);
    assert_eq!(
        ds.last(),
        Some(&Delivery::Canceled {
            watch_id: id,
            revision: 11,
            compact_revision: 8
        })
    );
    assert_eq!(f.hub.stats().synced + f.hub.stats().unsynced, 0);
    // At the compaction revision itself: still served.
    let id2 = f.hub.watch(s, spec("a", "", 8));
    f.sync_all();
    assert_eq!(revs(&drain(&o), id2), vec![8, 9, 10, 11]);
}

#[test]
fn watch_on_future_revision_returns_no_earlier_events() {
    let f = Fixture::new();
    f.put("a");
    let (s, o) = f.stream(16);
    let id = f.hub.watch(s, spec("a", "", 5));
    assert_eq!(f.hub.watcher_position(s, id), Some((true, 5)));
    for _ in 0..5 {
        f.put("a");
        f.sync_all();
    }
    assert_eq!(revs(&drain(&o), id), vec![5, 6, 7]);
}

#[test]
fn watch_filters_noput_nodelete() {
    let f = Fixture::new();
    let (s, o) = f.stream(16);
    let mut noput = req("a", "", 0);
    noput.filters = vec![FilterType::Noput as i32];
    let mut nodel = req("a", "", 0);
    nodel.filters = vec![FilterType::Nodelete as i32];
    let a = f.hub.watch(s, WatchSpec::from_request(&noput));
    let b = f.hub.watch(s, WatchSpec::from_request(&nodel));
    f.put("a");
    f.del("a");
    f.put("a");
    let ds = drain(&o);
    assert_eq!(evs(&ds, a), vec![(3, "a".into(), false)]);
    assert_eq!(
        evs(&ds, b),
        vec![(2, "a".into(), true), (4, "a".into(), true)]
    );
    // Same through catch-up.
    let c = f.hub.watch(s, WatchSpec::from_request(&noput));
    let mut from2 = nodel.clone();
    from2.start_revision = 2;
    let d = f.hub.watch(s, WatchSpec::from_request(&from2));
    noput.start_revision = 2;
    let c2 = f.hub.watch(s, WatchSpec::from_request(&noput));
    f.sync_all();
    let ds = drain(&o);
    assert!(evs(&ds, c).is_empty());
    assert_eq!(revs(&ds, d), vec![2, 4]);
    assert_eq!(revs(&ds, c2), vec![3]);
}

#[test]
fn watch_prev_kv_only_when_asked() {
    let f = Fixture::new();
    let (s, o) = f.stream(16);
    let mut with = req("a", "", 0);
    with.prev_kv = true;
    let p = f.hub.watch(s, WatchSpec::from_request(&with));
    let n = f.hub.watch(s, spec("a", "", 0));
    f.put("a");
    f.put("a");
    with.start_revision = 2;
    let p2 = f.hub.watch(s, WatchSpec::from_request(&with));
    let n2 = f.hub.watch(s, spec("a", "", 2));
    f.sync_all();
    let ds = drain(&o);
    let prevs = |wid: i64| -> Vec<Option<i64>> {
        ds.iter()
            .filter_map(|d| match d {
                Delivery::Events {
                    watch_id, events, ..
                } if *watch_id == wid => Some(events),
                _ => None,
            })
            .flatten()
            .map(|e| e.prev_kv.as_ref().map(|p| p.mod_revision))
            .collect()
    };
    assert_eq!(prevs(p), vec![None, Some(2)]);
    assert_eq!(prevs(p2), vec![None, Some(2)]);
    assert_eq!(prevs(n), vec![None, None]);
    assert_eq!(prevs(n2), vec![None, None]);
}

#[test]
fn watch_key_ranges() {
    let f = Fixture::new();
    let (s, o) = f.stream(64);
    let single = f.hub.watch(s, spec("b", "", 0));
    let span = f.hub.watch(s, spec("b", "d", 0));
    let prefix = f.hub.watch(s, spec("b", "c", 0));
    let from_c = f.hub.watch(s, spec("c", "\0", 0));
    let all = f.hub.watch(s, spec("\0", "\0", 0));
    let empty_key = f.hub.watch(s, spec("", "", 0));
    for k in ["a", "b", "ba", "c", "d", "\0"] {
        f.put(k);
    }
    let ds = drain(&o);
    let keys = |wid| -> Vec<String> { evs(&ds, wid).into_iter().map(|e| e.1).collect() };
    assert_eq!(keys(single), vec!["b"]);
    assert_eq!(keys(span), vec!["b", "ba", "c"]);
    assert_eq!(keys(prefix), vec!["b", "ba"]);
    assert_eq!(keys(from_c), vec!["c", "d"]);
    assert_eq!(keys(all), vec!["a", "b", "ba", "c", "d", "\0"]);
    assert_eq!(keys(empty_key), vec!["\0"]);
}

#[test]
fn watch_one_revision_is_never_split() {
    let f = Fixture::with(WatchHubConfig {
        max_events_per_batch: 2,
        ..config()
    });
    let (s, o) = f.stream(64);
    let id = f.hub.watch(s, spec("a", "b", 1));
    for _ in 0..3 {
        f.write(&[("a1", true), ("a2", true), ("a3", true)]);
    }
    f.sync_all();
    let ds = drain(&o);
    for d in &ds {
        if let Delivery::Events { events, .. } = d {
            let first = events[0].kv.as_ref().map(|kv| kv.mod_revision);
            let n = events
                .iter()
                .filter(|e| e.kv.as_ref().map(|kv| kv.mod_revision) == first)
                .count();
            assert_eq!(n % 3, 0, "revision split: {d:?}");
        }
    }
    assert_eq!(revs(&ds, id).len(), 9);
}

#[test]
fn slow_watcher_is_not_dropped() {
    // A victim (tiny outbox, many events, slow consumer) still gets every
    // event exactly once, in order.
    let f = Fixture::new();
    let (s, o) = f.stream(2);
    let id = f.hub.watch(s, spec("k", "", 0));
    let fast = f.hub.watch(s, spec("other", "", 0));
    let mut got = Vec::new();
    for i in 0..200 {
        f.put("k");
        if i % 7 == 0 {
            // The consumer takes one response now and then.
            got.extend(o.pop());
            f.hub.sync_step();
        }
    }
    assert!(f.hub.stats().unsynced > 0, "the watcher should be a victim");
    while f.hub.stats().unsynced > 0 {
        got.extend(o.pop());
        f.hub.sync_step();
    }
    got.extend(drain(&o));
    assert_eq!(revs(&got, id), (2..=201).collect::<Vec<_>>());
    assert!(revs(&got, fast).is_empty());
    assert_eq!(f.hub.watcher_position(s, id), Some((true, 202)));
}

#[test]
fn slow_watcher_behind_compaction_gets_compacted_cancel() {
    let f = Fixture::new();
    let (s, o) = f.stream(1);
    let id = f.hub.watch(s, spec("k", "", 0));
    for _ in 0..5 {
        f.put("k");
    }
    assert_eq!(f.hub.watcher_position(s, id), Some((false, 3)));
    f.hist.compact(5);
    drain(&o);
    f.sync_all();
    let ds = drain(&o);
    assert_eq!(
        ds,
        vec![Delivery::Canceled {
            watch_id: id,
            revision: 6,
            compact_revision: 5
        }]
    );
    assert_eq!(f.hub.watcher_position(s, id), None);
}

#[test]
fn watch_cancel_removes_the_watcher() {
    let f = Fixture::new();
    let (s, o) = f.stream(16);
    let id = f.hub.watch(s, spec("a", "", 0));
    f.put("a");
    assert!(f.hub.cancel(s, id));
    f.put("a");
    let ds = drain(&o);
    assert_eq!(revs(&ds, id), vec![2]);
    assert_eq!(
        ds.last(),
        Some(&Delivery::Canceled {
            watch_id: id,
            revision: 2,
            compact_revision: 0
        })
    );
    assert!(!f.hub.cancel(s, id));
    assert!(drain(&o).is_empty());
    assert_eq!(f.hub.stats().synced, 0);
    // An unsynced watcher cancelled mid-catch-up gets nothing more.
    let id2 = f.hub.watch(s, spec("a", "", 1));
    assert!(f.hub.cancel(s, id2));
    f.sync_all();
    assert!(revs(&drain(&o), id2).is_empty());
}

#[test]
fn watch_ids_auto_assigned_per_stream_and_duplicates_refused() {
    let f = Fixture::new();
    let (s, o) = f.stream(16);
    let (s2, _o2) = f.stream(16);
    assert_eq!(f.hub.watch(s, spec("a", "", 0)), 0);
    let mut r = req("a", "", 0);
    r.watch_id = 2;
    assert_eq!(f.hub.watch(s, WatchSpec::from_request(&r)), 2);
    assert_eq!(f.hub.watch(s, spec("a", "", 0)), 1);
    // 2 is taken: auto skips it.
    assert_eq!(f.hub.watch(s, spec("a", "", 0)), 3);
    assert_eq!(
        f.hub.watch(s, WatchSpec::from_request(&r)),
        INVALID_WATCH_ID
    );
    // Other streams have their own ID space.
    assert_eq!(f.hub.watch(s2, spec("a", "", 0)), 0);
    // Cancelled IDs are not reused by auto-assignment (as etcd).
    assert!(f.hub.cancel(s, 0));
    assert_eq!(f.hub.watch(s, spec("a", "", 0)), 4);
    let ds = drain(&o);
    assert!(ds.contains(&Delivery::Created {
        watch_id: -1,
        revision: 1,
        cancel_reason: Some(ERR_DUPLICATE_WATCH_ID.into())
    }));
    // An empty range is refused too.
    assert_eq!(f.hub.watch(s, spec("b", "a", 0)), INVALID_WATCH_ID);
    assert_eq!(
        drain(&o),
        vec![Delivery::Created {
            watch_id: -1,
            revision: 1,
            cancel_reason: Some(ERR_EMPTY_WATCHER_RANGE.into())
        }]
    );
}

#[test]
fn watch_progress_request_waits_for_all_synced() {
    let f = Fixture::new();
    for _ in 0..5 {
        f.put("a");
    }
    let (s, o) = f.stream(16);
    f.hub.watch(s, spec("a", "", 0));
    drain(&o);
    assert!(f.hub.request_progress_all(s));
    assert_eq!(
        drain(&o),
        vec![Delivery::Progress {
            watch_id: -1,
            revision: 6
        }]
    );
    let behind = f.hub.watch(s, spec("a", "", 2));
    drain(&o);
    assert!(!f.hub.request_progress_all(s));
    assert!(drain(&o).is_empty());
    f.put("a");
    f.sync_all();
    let ds = drain(&o);
    // Events first, then the deferred progress at the new revision.
    assert_eq!(revs(&ds, behind), vec![2, 3, 4, 5, 6, 7]);
    assert_eq!(
        ds.last(),
        Some(&Delivery::Progress {
            watch_id: -1,
            revision: 7
        })
    );
}

#[test]
fn watch_progress_notify_when_idle() {
    let f = Fixture::new();
    let (s, o) = f.stream(16);
    let mut r = req("a", "", 0);
    r.progress_notify = true;
    let p = f.hub.watch(s, WatchSpec::from_request(&r));
    let quiet = f.hub.watch(s, spec("a", "", 0));
    drain(&o);
    f.hub.progress_tick(s);
    assert_eq!(
        drain(&o),
        vec![Delivery::Progress {
            watch_id: p,
            revision: 1
        }]
    );
    f.put("a");
    drain(&o);
    // Had an event since the last tick: elided once.
    f.hub.progress_tick(s);
    assert!(drain(&o).is_empty());
    f.hub.progress_tick(s);
    assert_eq!(
        drain(&o),
        vec![Delivery::Progress {
            watch_id: p,
            revision: 2
        }]
    );
    // request_progress: only for a synced watcher.
    f.hub.request_progress(s, quiet);
    assert_eq!(
        drain(&o),
        vec![Delivery::Progress {
            watch_id: quiet,
            revision: 2
        }]
    );
}

#[test]
fn watch_close_stream_removes_its_watchers() {
    let f = Fixture::new();
    let (s, o) = f.stream(16);
    let (s2, _o2) = f.stream(16);
    f.hub.watch(s, spec("a", "", 0));
    f.hub.watch(s, spec("a", "", 1));
    f.hub.watch(s2, spec("a", "", 0));
    f.hub.close_stream(s);
    let st = f.hub.stats();
    assert_eq!((st.streams, st.synced, st.unsynced), (1, 1, 0));
    assert!(o.is_closed());
    assert_eq!(f.hub.watch(s, spec("a", "", 0)), INVALID_WATCH_ID);
}

#[test]
fn watch_notify_gap_catches_up_from_history() {
    let f = Fixture::new();
    let (s, o) = f.stream(16);
    let id = f.hub.watch(s, spec("a", "", 0));
    // Revision 2 is written but never notified; 3 is.
    f.hist.write(&[("a", true)]);
    f.put("a");
    f.put("a");
    // A stale notify is ignored.
    f.hub.notify(3, &[]);
    f.sync_all();
    f.put("a");
    assert_eq!(revs(&drain(&o), id), vec![2, 3, 4, 5]);
}

#[test]
fn watch_background_sync_task_catches_up() {
    let f = Fixture::with(WatchHubConfig {
        sync_interval: Duration::from_millis(5),
        ..config()
    });
    for _ in 0..30 {
        f.put("a");
    }
    let task = f.hub.start();
    let (s, o) = f.stream(4);
    let id = f.hub.watch(s, spec("a", "", 1));
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while revs(&got, id).len() < 40 && std::time::Instant::now() < deadline {
        if let Some(d) = o.pop_wait(Duration::from_millis(20)) {
            got.push(d);
            if o.take_overflowed() {
                f.hub.wake_sync();
            }
        }
        if f.hub.notified_rev() < 41 {
            f.put("a");
        }
    }
    drop(task);
    assert_eq!(revs(&got, id), (2..=41).collect::<Vec<_>>());
}
