//! Where the hub reads past events: the [`History`] trait, implemented for
//! the member's state machine (and by fakes in tests).

use crate::apply::StateMachine;
use crate::mvcc::{KeyRange, MvccError};
use crate::proto::mvccpb::Event;
use std::sync::Arc;

use crate::sync::RwLock;

/// Read access to the store's history of changes.
///
/// The hub calls it without holding its own lock, so an implementation may
/// block briefly (e.g. on the state machine's read lock).
pub trait History: Send + Sync {
    /// Changes on keys in `range` with main revision in `[from, to]`, in
    /// revision order, at most about `max` of them (never splitting a
    /// revision; 0 = no limit), with `prev_kv` filled when `prev_kv` is set
    /// and the previous value is retained. `Err(Compacted)` if `from` is
    /// below the compaction revision. See [`crate::mvcc::KvStore::events`].
    fn events(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        prev_kv: bool,
        max: usize,
    ) -> Result<Vec<Event>, MvccError>;

    /// The store's current revision (where a new hub starts).
    fn current_rev(&self) -> i64;

    /// The store's compaction revision (what a watcher that fell behind it
    /// is told).
    fn compact_rev(&self) -> i64;
}

impl<T: History> History for Arc<T> {
    fn events(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        prev_kv: bool,
        max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        (**self).events(range, from, to, prev_kv, max)
    }

    fn current_rev(&self) -> i64 {
        (**self).current_rev()
    }

    fn compact_rev(&self) -> i64 {
        (**self).compact_rev()
    }
}

/// Anything that holds a [`KvStore`](crate::mvcc::KvStore) behind the shim's
/// `RwLock` serves history from it.
pub trait HasKv: Send + Sync {
    /// The store.
    fn kv(&self) -> &crate::mvcc::KvStore;
}

impl HasKv for StateMachine {
    fn kv(&self) -> &crate::mvcc::KvStore {
        &self.kv
    }
}

impl HasKv for crate::mvcc::KvStore {
    fn kv(&self) -> &crate::mvcc::KvStore {
        self
    }
}

impl<T: HasKv> History for RwLock<T> {
    fn events(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        prev_kv: bool,
        max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        let g = self.read().unwrap_or_else(|e| e.into_inner());
        g.kv().events(range, from, to, prev_kv, max)
    }

    fn current_rev(&self) -> i64 {
        let g = self.read().unwrap_or_else(|e| e.into_inner());
        g.kv().current_rev()
    }

    fn compact_rev(&self) -> i64 {
        let g = self.read().unwrap_or_else(|e| e.into_inner());
        g.kv().compact_rev()
    }
}
