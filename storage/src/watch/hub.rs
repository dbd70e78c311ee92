//! [`WatchHub`]: the synced and unsynced groups (see the module docs of
//! [`crate::watch`] for the design).
//!
//! Locking: one mutex (`state`) guards every watcher and stream and
//! `notified_rev`; the hub never holds it while reading history (the
//! history's own lock may be held by the apply thread that is about to call
//! [`WatchHub::notify`]). [`WatchHub::sync_step`] therefore runs in three
//! phases: pick unsynced watchers under the lock, read history without it,
//! then deliver under the lock again, discarding a result if the watcher
//! changed in between (cancelled, or re-created under the same ID).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::history::History;
use super::watcher::{WatchSpec, Watcher};
use super::{Delivery, Outbox, ERR_DUPLICATE_WATCH_ID, ERR_EMPTY_WATCHER_RANGE, INVALID_WATCH_ID};
use crate::mvcc::MvccError;
use crate::proto::mvccpb::Event;
// `Arc` is std's even under loom: it only shares ownership (and is the
// receiver of `start`, which loom's `Arc` cannot be); everything the model
// checks sits behind the shim's `Mutex`/`Condvar`.
use std::sync::Arc;

use crate::sync::{thread, Condvar, Mutex, MutexGuard};

/// Tunables of the hub.
#[derive(Debug, Clone)]
pub struct WatchHubConfig {
    /// How long a `progress_notify` watcher may stay without events before
    /// it gets a progress notification (etcd: 10 minutes).
    pub progress_interval: Duration,
    /// How often the sync task looks at the unsynced group when nothing
    /// wakes it (etcd: 100 ms).
    pub sync_interval: Duration,
    /// The most events one catch-up read returns per watcher (whole
    /// revisions are never split, so a batch may hold a few more).
    pub max_events_per_batch: usize,
    /// The most revisions one catch-up read spans, so a read never holds
    /// the store's lock for long.
    pub max_revs_per_read: i64,
    /// The most unsynced watchers one sync step serves (etcd: 512).
    pub max_watchers_per_sync: usize,
    /// The event batches a stream's outbox holds before its watchers
    /// become victims (etcd's `chanBufLen`: 128).
    pub outbox_capacity: usize,
}

impl Default for WatchHubConfig {
    fn default() -> Self {
        WatchHubConfig {
            progress_interval: Duration::from_secs(600),
            sync_interval: Duration::from_millis(100),
            max_events_per_batch: 1000,
            max_revs_per_read: 10_000,
            max_watchers_per_sync: 512,
            outbox_capacity: 128,
        }
    }
}

/// Identifies one client stream (one gRPC `Watch` call): its watchers
/// share an outbox and a watch ID space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(u64);

/// Counts, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Open streams.
    pub streams: usize,
    /// Watchers in the synced group.
    pub synced: usize,
    /// Watchers in the unsynced group (behind, or victims).
    pub unsynced: usize,
    /// The highest revision passed to [`WatchHub::notify`].
    pub notified_rev: i64,
}

#[derive(Debug)]
struct StreamState {
    outbox: Arc<Outbox>,
    /// Next auto-assigned watch ID (only ever grows, as in etcd).
    next_id: i64,
    watchers: BTreeSet<i64>,
    /// A progress request waits for every watcher to be synced.
    progress_deferred: bool,
}

#[derive(Debug)]
struct State {
    notified_rev: i64,
    next_stream: u64,
    next_uid: u64,
    streams: BTreeMap<StreamId, StreamState>,
    watchers: BTreeMap<(StreamId, i64), Watcher>,
}

#[derive(Debug, Default)]
struct Wake {
    /// Work may be waiting: run a sync step without sleeping.
    pending: bool,
    /// The sync task must end.
    stop: bool,
}

/// One unsynced watcher picked for a sync step.
struct Job {
    key: (StreamId, i64),
    uid: u64,
    next: i64,
    spec: WatchSpec,
}

/// The watch hub. Cheap to share through an `Arc`; every method takes
/// `&self`. See the [module docs](crate::watch).
pub struct WatchHub {
    state: Mutex<State>,
    history: Box<dyn History>,
    /// Serialises sync steps (the background task and explicit calls).
    sync_lock: Mutex<()>,
    wake: Mutex<Wake>,
    wake_cond: Condvar,
    config: WatchHubConfig,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl WatchHub {
    /// A hub reading past events from `history` (the member passes its
    /// `Arc<RwLock<StateMachine>>`), starting at the history's current
    /// revision: the next `notify` is expected for the one after. No sync
    /// task runs until [`WatchHub::start`] (or call
    /// [`WatchHub::sync_step`] yourself, as tests do).
    pub fn new(history: Box<dyn History>, config: WatchHubConfig) -> Self {
        let rev = history.current_rev();
        WatchHub {
            state: Mutex::new(State {
                notified_rev: rev,
                next_stream: 0,
                next_uid: 0,
                streams: BTreeMap::new(),
                watchers: BTreeMap::new(),
            }),
            history,
            sync_lock: Mutex::new(()),
            wake: Mutex::new(Wake::default()),
            wake_cond: Condvar::new(),
            config,
        }
    }

    /// The hub's tunables.
    pub fn config(&self) -> &WatchHubConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The highest revision passed to [`WatchHub::notify`] (or the
    /// history's revision when the hub was made).
    pub fn notified_rev(&self) -> i64 {
        self.lock().notified_rev
    }

    /// Counts of streams and watchers.
    pub fn stats(&self) -> HubStats {
        let st = self.lock();
        let synced = st.watchers.values().filter(|w| w.synced).count();
        HubStats {
            streams: st.streams.len(),
            synced,
            unsynced: st.watchers.len() - synced,
            notified_rev: st.notified_rev,
        }
    }

    /// Spawns the background sync task (a thread): it runs
    /// [`WatchHub::sync_step`] whenever woken (a watcher fell behind, an
    /// outbox was drained) and every `sync_interval`. Dropping the handle
    /// stops the task and waits for it.
    pub fn start(self: &Arc<Self>) -> SyncHandle {
        let hub = self.clone();
        let join = thread::spawn(move || hub.sync_loop());
        SyncHandle {
            hub: self.clone(),
            join: Some(join),
        }
    }

    fn sync_loop(&self) {
        loop {
            {
                let mut g = self.wake.lock().unwrap_or_else(|e| e.into_inner());
                if !g.pending && !g.stop {
                    g = self
                        .wake_cond
                        .wait_timeout(g, self.config.sync_interval)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if g.stop {
                    return;
                }
                g.pending = false;
            }
            // Catch up while that makes progress, checking for a stop now
            // and then.
            while self.sync_step() {
                if self.wake.lock().map(|g| g.stop).unwrap_or(true) {
                    return;
                }
            }
        }
    }

    fn stop_sync(&self) {
        let mut g = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        g.stop = true;
        self.wake_cond.notify_all();
    }

    /// Wakes the sync task (e.g. after a full outbox was drained).
    pub fn wake_sync(&self) {
        let mut g = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        g.pending = true;
        self.wake_cond.notify_one();
    }

    /// Registers a client stream whose deliveries go to `outbox`.
    pub fn open_stream(&self, outbox: Arc<Outbox>) -> StreamId {
        let mut st = self.lock();
        let id = StreamId(st.next_stream);
        st.next_stream += 1;
        st.streams.insert(
            id,
            StreamState {
                outbox,
                next_id: 0,
                watchers: BTreeSet::new(),
                progress_deferred: false,
            },
        );
        id
    }

    /// Removes a stream and all its watchers, and closes its outbox.
    pub fn close_stream(&self, stream: StreamId) {
        let mut st = self.lock();
        if let Some(s) = st.streams.remove(&stream) {
            for id in &s.watchers {
                st.watchers.remove(&(stream, *id));
            }
            s.outbox.close();
        }
    }

    /// Creates a watcher on `stream` (etcd's `watchStream.Watch`) and
    /// queues its `Created` answer before any of its events. Returns the
    /// watch ID, or [`INVALID_WATCH_ID`] if the create failed (the answer
    /// then says why: duplicate watch ID, empty range) or the stream is
    /// closed.
    pub fn watch(&self, stream: StreamId, spec: WatchSpec) -> i64 {
        let mut st = self.lock();
        let rev = st.notified_rev;
        let uid = st.next_uid;
        let Some(s) = st.streams.get_mut(&stream) else {
            return INVALID_WATCH_ID;
        };
        let fail = |s: &StreamState, reason: &str| {
            s.outbox.push_control(Delivery::Created {
                watch_id: INVALID_WATCH_ID,
                revision: rev,
                cancel_reason: Some(reason.to_string()),
            });
            INVALID_WATCH_ID
        };
        if spec.empty_range {
            return fail(s, ERR_EMPTY_WATCHER_RANGE);
        }
        let id = if spec.watch_id != 0 {
            if s.watchers.contains(&spec.watch_id) {
                return fail(s, ERR_DUPLICATE_WATCH_ID);
            }
            spec.watch_id
        } else {
            while s.watchers.contains(&s.next_id) {
                s.next_id += 1;
            }
            s.next_id += 1;
            s.next_id - 1
        };
        // etcd: start 0 = "from the next revision"; a start at or before
        // the current revision catches up from history; a future start
        // waits in the synced group and gets nothing before it.
        let next = match spec.start_revision {
            0 => rev + 1,
            r => r.max(1),
        };
        let synced = next > rev;
        s.watchers.insert(id);
        s.outbox.push_control(Delivery::Created {
            watch_id: id,
            revision: rev,
            cancel_reason: None,
        });
        let outbox = s.outbox.clone();
        st.next_uid += 1;
        st.watchers.insert(
            (stream, id),
            Watcher {
                uid,
                id,
                spec,
                next,
                synced,
                idle: true,
                outbox,
            },
        );
        drop(st);
        if !synced {
            self.wake_sync();
        }
        id
    }

    /// Cancels watcher `watch_id` of `stream` and queues its `Canceled`
    /// answer. False (and no answer, as etcd) if there is no such watcher.
    pub fn cancel(&self, stream: StreamId, watch_id: i64) -> bool {
        let mut st = self.lock();
        let rev = st.notified_rev;
        let Some(w) = st.watchers.remove(&(stream, watch_id)) else {
            return false;
        };
        w.outbox.push_control(Delivery::Canceled {
            watch_id,
            revision: rev,
            compact_revision: 0,
        });
        if let Some(s) = st.streams.get_mut(&stream) {
            s.watchers.remove(&watch_id);
        }
        Self::check_deferred(&mut st, stream);
        true
    }

    /// Publishes the events of revision `rev` (all of them, in order) to the
    /// synced watchers. Called by the apply thread once per revision, in
    /// increasing order; a revision at or below the last one is ignored,
    /// and a skipped revision sends the synced watchers to catch up from
    /// history. Never blocks on a consumer: a watcher whose outbox is full
    /// becomes a victim and catches up later.
    pub fn notify(&self, rev: i64, events: &[Event]) {
        let mut st = self.lock();
        if rev <= st.notified_rev {
            tracing::debug!(
                rev,
                notified = st.notified_rev,
                "watch hub: stale notify ignored"
            );
            return;
        }
        let gap = rev > st.notified_rev + 1;
        st.notified_rev = rev;
        let mut behind = false;
        for w in st.watchers.values_mut() {
            if !w.synced || w.next > rev {
                continue;
            }
            if gap && w.next < rev {
                // Revisions between were never notified: read them.
                w.synced = false;
                behind = true;
                continue;
            }
            let evs = w.spec.select(events);
            if evs.is_empty() {
                w.next = rev + 1;
                continue;
            }
            let d = Delivery::Events {
                watch_id: w.id,
                revision: rev,
                events: evs,
                fragment: w.spec.fragment,
            };
            match w.outbox.try_push_events(d) {
                Ok(()) => {
                    w.next = rev + 1;
                    w.idle = false;
                }
                Err(_) => {
                    // A victim: it catches up from history from `rev`.
                    w.synced = false;
                    behind = true;
                }
            }
        }
        drop(st);
        if behind {
            self.wake_sync();
        }
    }

    /// After the store was replaced by a snapshot at revision `rev`: every
    /// synced watcher catches up from the new history (etcd's `Restore`).
    pub fn restore(&self, rev: i64) {
        let mut st = self.lock();
        st.notified_rev = rev;
        for w in st.watchers.values_mut() {
            if w.next <= rev {
                w.synced = false;
            }
        }
        drop(st);
        self.wake_sync();
    }

    /// etcd's `RequestProgress`: a progress notification for one watcher,
    /// only if it is synced.
    pub fn request_progress(&self, stream: StreamId, watch_id: i64) {
        let st = self.lock();
        if let Some(w) = st.watchers.get(&(stream, watch_id)) {
            if w.synced {
                w.outbox.push_control(Delivery::Progress {
                    watch_id,
                    revision: st.notified_rev,
                });
            }
        }
    }

    /// etcd's `RequestProgressAll` for a `WatchProgressRequest`: one
    /// progress notification (watch ID -1) at the current revision once
    /// every watcher of the stream is synced; if some are not, it is sent
    /// when they are. Returns true if it was sent now.
    pub fn request_progress_all(&self, stream: StreamId) -> bool {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(&stream) else {
            return false;
        };
        s.progress_deferred = true;
        Self::check_deferred(&mut st, stream)
    }

    /// Sends a deferred stream-wide progress notification if every watcher
    /// of `stream` is synced now.
    fn check_deferred(st: &mut State, stream: StreamId) -> bool {
        let Some(s) = st.streams.get(&stream) else {
            return false;
        };
        if !s.progress_deferred {
            return false;
        }
        let all_synced = s
            .watchers
            .iter()
            .all(|id| st.watchers.get(&(stream, *id)).is_none_or(|w| w.synced));
        if !all_synced {
            return false;
        }
        s.outbox.push_control(Delivery::Progress {
            watch_id: INVALID_WATCH_ID,
            revision: st.notified_rev,
        });
        if let Some(s) = st.streams.get_mut(&stream) {
            s.progress_deferred = false;
        }
        true
    }

    /// The periodic progress check of one stream (etcd's `progressTicker`,
    /// run every `progress_interval` by the stream's server): every
    /// `progress_notify` watcher that got no events since the previous tick
    /// and is synced gets a progress notification.
    pub fn progress_tick(&self, stream: StreamId) {
        let mut st = self.lock();
        let rev = st.notified_rev;
        let Some(s) = st.streams.get(&stream) else {
            return;
        };
        let ids: Vec<i64> = s.watchers.iter().copied().collect();
        for id in ids {
            let Some(w) = st.watchers.get_mut(&(stream, id)) else {
                continue;
            };
            if !w.spec.progress_notify {
                continue;
            }
            if w.idle && w.synced {
                w.outbox.push_control(Delivery::Progress {
                    watch_id: id,
                    revision: rev,
                });
            }
            w.idle = true;
        }
    }

    /// One round of catch-up: up to `max_watchers_per_sync` unsynced
    /// watchers each get one bounded batch from history (up to the hub's
    /// `notified_rev`), and those that reach it join the synced group. A
    /// watcher whose next revision was compacted is cancelled with the
    /// compact revision. Returns true if any watcher moved on (so another
    /// round may have more to do). The background task calls this; tests
    /// may call it directly.
    pub fn sync_step(&self) -> bool {
        let _serial = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Phase 1: pick under the lock.
        let (to, jobs) = {
            let mut st = self.lock();
            let to = st.notified_rev;
            let mut jobs = Vec::new();
            for (key, w) in st.watchers.iter_mut() {
                if w.synced {
                    continue;
                }
                if w.next > to {
                    w.synced = true;
                    continue;
                }
                jobs.push(Job {
                    key: *key,
                    uid: w.uid,
                    next: w.next,
                    spec: w.spec.clone(),
                });
                if jobs.len() >= self.config.max_watchers_per_sync {
                    break;
                }
            }
            (to, jobs)
        };
        if jobs.is_empty() {
            return false;
        }
        // Phase 2: read history without the hub's lock.
        let span = self.config.max_revs_per_read.max(1);
        let max = self.config.max_events_per_batch;
        let reads: Vec<(i64, Result<Vec<Event>, i64>)> = jobs
            .iter()
            .map(|j| {
                let upper = to.min(j.next.saturating_add(span - 1));
                let res =
                    match self
                        .history
                        .events(&j.spec.range, j.next, upper, j.spec.prev_kv, max)
                    {
                        Ok(evs) => Ok(evs),
                        Err(MvccError::Compacted) => Err(self.history.compact_rev()),
                        Err(MvccError::FutureRev) => Ok(Vec::new()),
                    };
                (upper, res)
            })
            .collect();
        // Phase 3: deliver under the lock.
        let mut st = self.lock();
        let rev = st.notified_rev;
        let mut moved = false;
        let mut touched = BTreeSet::new();
        for (job, (upper, res)) in jobs.into_iter().zip(reads) {
            let Some(w) = st.watchers.get_mut(&job.key) else {
                continue;
            };
            if w.uid != job.uid || w.next != job.next || w.synced {
                continue;
            }
            match res {
                Err(compact_rev) => {
                    w.outbox.push_control(Delivery::Canceled {
                        watch_id: w.id,
                        revision: rev,
                        compact_revision: compact_rev,
                    });
                    st.watchers.remove(&job.key);
                    if let Some(s) = st.streams.get_mut(&job.key.0) {
                        s.watchers.remove(&job.key.1);
                    }
                    touched.insert(job.key.0);
                    moved = true;
                }
                Ok(evs) => {
                    let truncated = max > 0 && evs.len() >= max;
                    let last = evs
                        .last()
                        .and_then(|e| e.kv.as_ref())
                        .map(|kv| kv.mod_revision);
                    let new_next = match (truncated, last) {
                        (true, Some(last)) => last + 1,
                        _ => upper + 1,
                    };
                    let sel = w.spec.select(&evs);
                    if !sel.is_empty() {
                        let d = Delivery::Events {
                            watch_id: w.id,
                            revision: rev,
                            events: sel,
                            fragment: w.spec.fragment,
                        };
                        if w.outbox.try_push_events(d).is_err() {
                            // Still full: try again on a later step.
                            continue;
                        }
                        w.idle = false;
                    }
                    w.next = new_next.max(w.next);
                    if w.next > rev {
                        w.synced = true;
                        touched.insert(job.key.0);
                    }
                    moved = true;
                }
            }
        }
        for stream in touched {
            Self::check_deferred(&mut st, stream);
        }
        moved
    }

    /// Where a watcher is: `(synced, next revision)`, for tests and
    /// debugging.
    pub fn watcher_position(&self, stream: StreamId, watch_id: i64) -> Option<(bool, i64)> {
        self.lock()
            .watchers
            .get(&(stream, watch_id))
            .map(|w| (w.synced, w.next))
    }
}

/// The running sync task of a hub; dropping it stops the task and waits
/// for it.
pub struct SyncHandle {
    hub: Arc<WatchHub>,
    join: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle").finish_non_exhaustive()
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.hub.stop_sync();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}
