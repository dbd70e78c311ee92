//! One watcher: what the client asked for ([`WatchSpec`]) and where it is
//! in the history (`Watcher`, internal to the hub).

use std::sync::Arc;

use bytes::Bytes;

use super::Outbox;
use crate::mvcc::KeyRange;
use crate::proto::etcdserverpb::{watch_create_request::FilterType, WatchCreateRequest};
use crate::proto::mvccpb::{event::EventType, Event};

/// A watch as a client asked for it, decoded from a `WatchCreateRequest`
/// with etcd's conventions (an empty key is `"\0"`, a `range_end` of `"\0"`
/// means every key >= `key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// The keys watched.
    pub range: KeyRange,
    /// The first revision wanted; 0 = the next one.
    pub start_revision: i64,
    /// Drop PUT events.
    pub no_put: bool,
    /// Drop DELETE events.
    pub no_delete: bool,
    /// Include the previous key-value in events.
    pub prev_kv: bool,
    /// Wants periodic progress notifications when idle.
    pub progress_notify: bool,
    /// Wants large responses split into fragments.
    pub fragment: bool,
    /// The requested watch ID; 0 = assign one.
    pub watch_id: i64,
    /// etcd's "watcher range is empty" (`range_end` <= `key`).
    pub empty_range: bool,
}

impl WatchSpec {
    /// A spec for `range` from `start_revision` with no options.
    pub fn new(range: KeyRange, start_revision: i64) -> Self {
        WatchSpec {
            range,
            start_revision,
            no_put: false,
            no_delete: false,
            prev_kv: false,
            progress_notify: false,
            fragment: false,
            watch_id: 0,
            empty_range: false,
        }
    }

    /// Decodes a create request (etcd's `recvLoop` normalisation).
    pub fn from_request(r: &WatchCreateRequest) -> Self {
        let key = if r.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            r.key.clone()
        };
        let range = KeyRange::new(&key, &r.range_end);
        let empty_range = match &range {
            KeyRange::Span {
                start,
                end: Some(end),
            } => start.as_ref() >= end.as_ref(),
            _ => false,
        };
        let mut spec = WatchSpec::new(range, r.start_revision);
        for f in &r.filters {
            match FilterType::try_from(*f) {
                Ok(FilterType::Noput) => spec.no_put = true,
                Ok(FilterType::Nodelete) => spec.no_delete = true,
                Err(_) => {}
            }
        }
        spec.prev_kv = r.prev_kv;
        spec.progress_notify = r.progress_notify;
        spec.fragment = r.fragment;
        spec.watch_id = r.watch_id;
        spec.empty_range = empty_range;
        spec
    }

    /// True if `ev` passes the key range and the type filters.
    pub fn wants(&self, ev: &Event) -> bool {
        let Some(kv) = &ev.kv else { return false };
        if !self.range.contains(&kv.key) {
            return false;
        }
        let put = ev.r#type == EventType::Put as i32;
        !(put && self.no_put || !put && self.no_delete)
    }

    /// The events of `evs` this watcher gets, `prev_kv` stripped unless
    /// asked for.
    pub fn select(&self, evs: &[Event]) -> Vec<Event> {
        evs.iter()
            .filter(|e| self.wants(e))
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

/// A registered watcher (hub-internal state, guarded by the hub's lock).
#[derive(Debug)]
pub(crate) struct Watcher {
    /// Unique over the hub's life, to tell a re-created watch ID apart.
    pub(crate) uid: u64,
    /// The ID the client knows it by (unique per stream).
    pub(crate) id: i64,
    pub(crate) spec: WatchSpec,
    /// The next revision this watcher has not been given yet.
    pub(crate) next: i64,
    /// In the synced group (fed by `notify`), else unsynced (fed by sync).
    pub(crate) synced: bool,
    /// No events went out since the last progress tick (etcd's
    /// `progress[id]`): the next tick sends a progress notification.
    pub(crate) idle: bool,
    pub(crate) outbox: Arc<Outbox>,
}
