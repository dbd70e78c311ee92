//! The watch cache: one store watch per resource type feeds every HTTP
//! watch of that type, so thousands of watchers cost the store nothing
//! extra.
//!
//! A [`Cache`] starts from a list at the store's head, then applies the
//! store watch from the next revision. It keeps the current objects, a
//! window of the most recent events ([`WINDOW`]) and a broadcast channel.
//! [`Cache::subscribe`] hands a watcher the buffered events after its
//! revision and a receiver for the rest, both under the cache's lock, so no
//! event is lost or sent twice between the two. A watcher from a revision
//! older than the window is not served here (the caller falls back to a
//! store watch, which replays history or answers 410). A watcher that falls
//! more than [`FANOUT`] events behind is ended, and re-watches from its last
//! resourceVersion, as Kubernetes' watchers do. If the store watch fails,
//! the cache closes every subscription and the next watch builds a new one.
//!
//! Each object is prepared once, as it enters the cache ([`Entry`]): its
//! value is kept as the API returns it (parsed, `metadata.resourceVersion`
//! stamped and encoded again), with what label and field selectors read of
//! it taken out beside it, so that a list is a matter of joining bytes and
//! needs no parsing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use keel_storage::proto::mvccpb::{event::EventType, KeyValue};
use tokio::sync::broadcast;

use crate::registry::ResourceInfo;
use crate::selectors::{self, FieldSelector, LabelSelector};
use crate::store::{prefix_end, Store, StoreError};

/// Events kept for watchers that resume from a recent revision.
pub const WINDOW: usize = 10_000;

/// Events a subscriber may lag behind before it is ended.
pub const FANOUT: usize = 4_096;

/// How often the cache asks the store for progress (bookmarks, idle revisions).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One change, or the store's progress.
// Events live behind an Arc each; boxing the large variant would only add
// a second allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// A put (`put`) or delete of `kv.key` at `kv.mod_revision`.
    Change {
        /// Put (else delete).
        put: bool,
        /// The key-value after (for a delete: the key and the revision).
        kv: KeyValue,
        /// The key-value before, if any.
        prev: Option<KeyValue>,
        /// What selectors read of `kv` (a put of a JSON object) and of
        /// `prev` (when the cache held that very version), so that watches
        /// with selectors need not parse objects they do not send.
        selectable: (Option<Arc<Selectable>>, Option<Arc<Selectable>>),
        /// The event's chunk (its lines joined) for watches that select
        /// everything, made by the first such watch and shared by the rest
        /// (thousands of watchers must not each parse and encode the same
        /// object): `(the resource it was made for, the chunk)`.
        shared: std::sync::OnceLock<(usize, Option<Bytes>)>,
    },
    /// The store has reached this revision with nothing more for this type.
    Progress(i64),
}

impl Event {
    /// The revision of the event.
    pub fn revision(&self) -> i64 {
        match self {
            Event::Change { kv, .. } => kv.mod_revision,
            Event::Progress(r) => *r,
        }
    }
}

/// What label and field selectors read of a cached object, taken out when
/// it enters the cache.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selectable {
    /// The string-valued `metadata.labels` (others count as missing).
    labels: Vec<(Box<str>, Box<str>)>,
    /// The selectable fields of the cache's kind and their values, as
    /// [`selectors::field_value`] reads them.
    fields: Vec<(&'static str, Box<str>)>,
}

impl Selectable {
    /// Takes out the labels and the selectable fields of `kind` of `obj`.
    pub fn of(obj: &serde_json::Value, kind: &str) -> Selectable {
        let labels = obj
            .pointer("/metadata/labels")
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
                    .collect()
            })
            .unwrap_or_default();
        let fields = selectors::selectable_fields(kind)
            .map(|p| (p, selectors::field_value(obj, p).into_boxed_str()))
            .collect();
        Selectable { labels, fields }
    }

    /// The value of label `k`, if it is a string.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| &**key == k)
            .map(|(_, v)| &**v)
    }

    /// The value of the selectable field `path` (`None`: not taken out).
    pub fn field(&self, path: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| &**v)
    }

    /// Whether the object is selected: the same answer as
    /// [`LabelSelector::matches`] and [`FieldSelector::matches`] on the
    /// parsed object, or `None` if the field selector names a field that
    /// was not taken out (then the caller parses the object).
    pub fn matches(&self, labels: &LabelSelector, fields: &FieldSelector) -> Option<bool> {
        let f = fields.matches_by(|p| self.field(p))?;
        Some(f && labels.matches_by(|k| self.label(k)))
    }
}

/// One object of the cache, prepared when it entered it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key-value. When the stored value is a JSON object, `kv.value`
    /// is that object as the API returns it: what
    /// [`crate::handlers::decode`] makes of the stored bytes (with
    /// `metadata.resourceVersion`), encoded again (compact, keys in order),
    /// so decoding it gives the same object. Otherwise the stored bytes.
    pub kv: KeyValue,
    /// What selectors read of the object (`None`: not a JSON object).
    pub selectable: Option<Arc<Selectable>>,
}

impl Entry {
    /// Prepares a stored key-value of `kind` (parses it once).
    pub fn new(mut kv: KeyValue, kind: &str) -> Entry {
        let Ok(obj) = crate::handlers::decode(&kv) else {
            return Entry {
                kv,
                selectable: None,
            };
        };
        let Ok(json) = serde_json::to_vec(&obj) else {
            return Entry {
                kv,
                selectable: None,
            };
        };
        kv.value = Bytes::from(json);
        Entry {
            kv,
            selectable: Some(Arc::new(Selectable::of(&obj, kind))),
        }
    }
}

struct Inner {
    /// The current objects by key.
    state: BTreeMap<Bytes, Entry>,
    /// The revision the cache has reached.
    revision: i64,
    /// Recent changes, oldest first.
    window: VecDeque<Arc<Event>>,
    /// Watchers may resume after any revision ≥ this.
    base: i64,
    /// `None` once the store watch has failed.
    tx: Option<broadcast::Sender<Arc<Event>>>,
    /// `tx`'s number (see [`Subscription::channel`]).
    channel: u64,
}

/// A new broadcast channel for a cache's watchers, and its number: no two
/// channels of this process share one.
fn new_channel() -> (broadcast::Sender<Arc<Event>>, u64) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (broadcast::channel(FANOUT).0, number)
}

/// The watch cache of one resource type (one store prefix).
pub struct Cache {
    inner: Mutex<Inner>,
    /// The kind of the objects (which fields [`Selectable`] takes out).
    kind: &'static str,
    /// Asks the store watch for a progress notification now.
    kick: Arc<tokio::sync::Notify>,
    /// The revision the cache has reached, for readers waiting on it.
    reached: tokio::sync::watch::Sender<i64>,
}

/// What a new subscription starts with.
pub struct Subscription {
    /// Buffered changes after the requested revision, in order.
    pub replay: Vec<Arc<Event>>,
    /// Everything after them.
    pub live: broadcast::Receiver<Arc<Event>>,
    /// Which channel `live` reads: it tells apart the channels of
    /// different caches, and of one cache before and after its watches
    /// were ended (`local_wake` keys its relays by it).
    pub channel: u64,
}

impl Cache {
    /// Lists `prefix` at the store's head and starts following it, until
    /// `closed` turns true.
    async fn start(
        store: &Store,
        prefix: String,
        kind: &'static str,
        closed: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Cache>, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let page = store.range(prefix.as_bytes(), &end, 0, 0).await?;
        let kick = Arc::new(tokio::sync::Notify::new());
        let stream = store
            .watch_prefix_kicked(
                &prefix,
                page.revision + 1,
                Some(PROGRESS_EVERY),
                Some(kick.clone()),
            )
            .await?;
        let (tx, channel) = new_channel();
        let cache = Arc::new(Cache {
            inner: Mutex::new(Inner {
                state: page
                    .kvs
                    .into_iter()
                    .map(|kv| (kv.key.clone(), Entry::new(kv, kind)))
                    .collect(),
                revision: page.revision,
                window: VecDeque::new(),
                base: page.revision,
                tx: Some(tx),
                channel,
            }),
            kind,
            kick,
            reached: tokio::sync::watch::channel(page.revision).0,
        });
        let weak = Arc::downgrade(&cache);
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                let next = tokio::select! {
                    r = stream.next() => r,
                    _ = closed.cancelled() => break,
                };
                let Some(resp) = next else { break };
                let Some(cache) = weak.upgrade() else { return };
                let resp = match resp {
                    Ok(r) if !r.canceled && r.compact_revision == 0 => r,
                    Ok(r) => {
                        tracing::warn!(%prefix, reason = %r.cancel_reason, "watch cache: the store cancelled its watch");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(%prefix, error = %e, "watch cache: the store watch failed");
                        break;
                    }
                };
                if resp.created {
                    continue;
                }
                let header_rev = resp.header.map(|h| h.revision).unwrap_or(0);
                cache.apply(resp.events, header_rev);
            }
            if let Some(cache) = weak.upgrade() {
                cache.close();
            }
        });
        Ok(cache)
    }

    /// Applies one store watch response (events, or progress when empty).
    fn apply(&self, events: Vec<keel_storage::proto::mvccpb::Event>, header_rev: i64) {
        // Objects are prepared before the lock is taken: readers wait for
        // no parsing.
        let events = events
            .into_iter()
            .filter_map(|ev| {
                let kv = ev.kv?;
                let put = ev.r#type == EventType::Put as i32;
                let entry = put.then(|| Entry::new(kv.clone(), self.kind));
                Some((kv, entry, ev.prev_kv))
            })
            .collect();
        let reached = self.apply_locked(events, header_rev);
        self.reached.send_if_modified(|r| {
            let moved = reached > *r;
            *r = (*r).max(reached);
            moved
        });
    }

    /// [`Cache::apply`] under the lock, with each event's key-value, its
    /// prepared entry (puts) and previous key-value; returns the revision
    /// reached.
    fn apply_locked(
        &self,
        events: Vec<(KeyValue, Option<Entry>, Option<KeyValue>)>,
        header_rev: i64,
    ) -> i64 {
        let Ok(mut inner) = self.inner.lock() else {
            return 0;
        };
        if events.is_empty() {
            if header_rev > inner.revision {
                inner.revision = header_rev;
            }
            let rev = inner.revision;
            if let Some(tx) = &inner.tx {
                let _ = tx.send(Arc::new(Event::Progress(rev)));
            }
            return rev;
        }
        for (kv, entry, prev) in events {
            let put = entry.is_some();
            // A put's event carries the prepared value (it decodes to the
            // same object), shared with the state.
            let (kv, selectable, replaced) = match entry {
                Some(entry) => {
                    let kv = entry.kv.clone();
                    let selectable = entry.selectable.clone();
                    let replaced = inner.state.insert(kv.key.clone(), entry);
                    (kv, selectable, replaced)
                }
                None => {
                    let replaced = inner.state.remove(&kv.key);
                    (kv, None, replaced)
                }
            };
            let prev_selectable = replaced
                .filter(|r| {
                    prev.as_ref()
                        .is_some_and(|p| p.mod_revision == r.kv.mod_revision)
                })
                .and_then(|r| r.selectable);
            inner.revision = inner.revision.max(kv.mod_revision);
            let event = Arc::new(Event::Change {
                put,
                kv,
                prev,
                selectable: (selectable, prev_selectable),
                shared: std::sync::OnceLock::new(),
            });
            inner.window.push_back(event.clone());
            while inner.window.len() > WINDOW {
                if let Some(old) = inner.window.pop_front() {
                    inner.base = old.revision();
                }
            }
            if let Some(tx) = &inner.tx {
                let _ = tx.send(event);
            }
        }
        inner.revision
    }

    /// Waits (at most `timeout`) until the cache has reached `revision`,
    /// asking the store for progress; false if it has not.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.reached.subscribe();
        if *rx.borrow() >= revision {
            return true;
        }
        self.kick.notify_one();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn close(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.tx = None;
        }
    }

    /// Ends the watches subscribed so far (their streams end as if the
    /// cache had closed); the cache itself goes on serving lists, new
    /// subscriptions and the server's own readers.
    fn end_watches(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.tx.is_some() {
                let (tx, channel) = new_channel();
                (inner.tx, inner.channel) = (Some(tx), channel);
            }
        }
    }

    /// True while the store watch runs.
    pub fn is_live(&self) -> bool {
        self.inner.lock().map(|i| i.tx.is_some()).unwrap_or(false)
    }

    /// The revision the cache has reached.
    pub fn revision(&self) -> i64 {
        self.inner.lock().map(|i| i.revision).unwrap_or(0)
    }

    /// Changes after revision `after`: the buffered ones and a receiver for
    /// the rest. `None` if `after` is older than the window (or the cache is
    /// closed). Live events at or before `after` (a watcher ahead of the
    /// cache) are the caller's to skip.
    pub fn subscribe(&self, after: i64) -> Option<Subscription> {
        let inner = self.inner.lock().ok()?;
        let tx = inner.tx.as_ref()?;
        if after < inner.base {
            return None;
        }
        let replay = inner
            .window
            .iter()
            .filter(|e| e.revision() > after)
            .cloned()
            .collect();
        Some(Subscription {
            replay,
            live: tx.subscribe(),
            channel: inner.channel,
        })
    }

    /// The current objects under `prefix` and the cache's revision (values
    /// as [`Entry::kv`] says).
    pub fn snapshot(&self, prefix: &[u8]) -> (Vec<KeyValue>, i64) {
        let (entries, rev) = self.entries(prefix);
        (entries.into_iter().map(|e| e.kv).collect(), rev)
    }

    /// The current objects under `prefix`, prepared, in key order, and the
    /// cache's revision.
    pub fn entries(&self, prefix: &[u8]) -> (Vec<Entry>, i64) {
        let Ok(inner) = self.inner.lock() else {
            return (Vec::new(), 0);
        };
        let end = Bytes::from(prefix_end(prefix));
        let entries = inner
            .state
            .range(Bytes::copy_from_slice(prefix)..end)
            .map(|(_, e)| e.clone())
            .collect();
        (entries, inner.revision)
    }
}

/// The caches of every resource type, created on first use.
#[derive(Default)]
pub struct Caches {
    map: tokio::sync::Mutex<HashMap<String, Arc<Cache>>>,
    /// Cancelled once [`Caches::clear`] ran: every cache stops following
    /// the store, and no new one starts.
    closed: tokio_util::sync::CancellationToken,
}

impl Drop for Caches {
    fn drop(&mut self) {
        // Caches dropped without `clear` stop following the store too.
        self.closed.cancel();
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Caches")
    }
}

impl Caches {
    /// The live cache of `res`, started if needed.
    pub async fn get(
        &self,
        store: &Store,
        res: &'static ResourceInfo,
    ) -> Result<Arc<Cache>, StoreError> {
        // Keyed by store prefix: the versions of a custom resource share one.
        let prefix = res.prefix(None);
        let mut map = self.map.lock().await;
        if let Some(c) = map.get(&prefix).filter(|c| c.is_live()) {
            return Ok(c.clone());
        }
        if self.closed.is_cancelled() {
            return Err(StoreError::Unavailable("the API server is stopping".into()));
        }
        let cache = Cache::start(store, prefix.clone(), res.kind, self.closed.clone()).await?;
        map.insert(prefix, cache.clone());
        Ok(cache)
    }

    /// Ends every watch served from the caches (the server starts to stop:
    /// its connections drain, which watches would never do).
    pub async fn end_watches(&self) {
        for cache in self.map.lock().await.values() {
            cache.end_watches();
        }
    }

    /// Stops every cache (the server stops): each ends its store watch,
    /// and its watchers' streams end; no new cache starts after this.
    pub async fn clear(&self) {
        let mut map = self.map.lock().await;
        self.closed.cancel();
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::proto::mvccpb;

    fn cache_at(rev: i64) -> Cache {
        let (tx, channel) = new_channel();
        Cache {
            inner: Mutex::new(Inner {
                state: BTreeMap::new(),
                revision: rev,
                window: VecDeque::new(),
                base: rev,
                tx: Some(tx),
                channel,
            }),
            kind: "Pod",
            kick: Arc::new(tokio::sync::Notify::new()),
            reached: tokio::sync::watch::channel(rev).0,
        }
    }

    #[tokio::test]
    async fn readers_wait_for_the_revision() {
        let c = Arc::new(cache_at(10));
        assert!(c.wait_for(10, Duration::from_millis(1)).await);
        assert!(!c.wait_for(12, Duration::from_millis(20)).await);
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.wait_for(12, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.apply(vec![], 12);
        assert!(waiter.await.expect("join"));
    }

    fn put(key: &str, rev: i64) -> mvccpb::Event {
        mvccpb::Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                mod_revision: rev,
                value: Bytes::from_static(b"{}"),
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn revs(events: &[Arc<Event>]) -> Vec<i64> {
        events.iter().map(|e| e.revision()).collect()
    }

    #[test]
    fn replay_then_live_without_gaps_or_duplicates() {
        let c = cache_at(10);
        c.apply(
            vec![put("/registry/pods/a/x", 11), put("/registry/pods/a/y", 12)],
            12,
        );
        let mut sub = c.subscribe(11).expect("within the window");
        assert_eq!(revs(&sub.replay), vec![12]);
        c.apply(vec![put("/registry/pods/b/z", 13)], 13);
        let live = sub.live.try_recv().expect("live event");
        assert_eq!(live.revision(), 13);
        // Progress moves the revision without a change.
        c.apply(vec![], 20);
        assert!(matches!(
            *sub.live.try_recv().expect("progress"),
            Event::Progress(20)
        ));
        assert_eq!(c.revision(), 20);
        let (kvs, rev) = c.snapshot(b"/registry/pods/a/");
        assert_eq!((kvs.len(), rev), (2, 20));
        // Older than the cache: not served here.
        assert!(c.subscribe(9).is_none());
        c.close();
        assert!(!c.is_live());
        assert!(c.subscribe(12).is_none());
        assert!(matches!(
            sub.live.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn ending_the_watches_keeps_the_cache() {
        let c = cache_at(10);
        let mut old = c.subscribe(10).expect("subscribed");
        c.end_watches();
        assert!(matches!(
            old.live.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        // The cache goes on: changes, lists, new subscriptions.
        assert!(c.is_live());
        let mut new = c.subscribe(10).expect("subscribed again");
        c.apply(vec![put("/registry/pods/a/x", 11)], 11);
        assert_eq!(new.live.try_recv().expect("live").revision(), 11);
        assert_eq!(c.snapshot(b"/registry/pods/").0.len(), 1);
    }

    #[test]
    fn the_window_moves_its_base() {
        let c = cache_at(0);
        let events: Vec<_> = (1..=(WINDOW as i64 + 5))
            .map(|r| put("/registry/pods/a/x", r))
            .collect();
        c.apply(events, WINDOW as i64 + 5);
        assert!(c.subscribe(4).is_none());
        let sub = c.subscribe(5).expect("the base");
        assert_eq!(sub.replay.len(), WINDOW);
        assert_eq!(sub.replay.first().map(|e| e.revision()), Some(6));
    }
}
