//! The watch hub: watchers on a key or a range from a start revision, after
//! etcd's `watchableStore`.
//!
//! - [`hub`]: [`WatchHub`], the synced and unsynced groups, live delivery
//!   from [`WatchHub::notify`] and catch-up from history in
//!   [`WatchHub::sync_step`].
//! - [`watcher`]: one watcher ([`WatchSpec`] is what a client asked for).
//! - [`history`]: the [`History`] trait the hub reads past events through.
//! - [`outbox`]: [`Outbox`], the bounded per-stream queue the hub delivers
//!   into and a server drains.
//!
//! # Design
//!
//! A watcher is in exactly one of two groups:
//!
//! ```text
//!             start <= notified_rev          next > notified_rev
//!   watch() ────────────────────► unsynced ───────────────────► synced
//!      │                             ▲   sync_step() reads          │
//!      │ start 0 or in the future     │   history [next, notified]   │
//!      └──────────────────────────────┼─────────────────────────────►│
//!                                     │  outbox full during notify   │
//!                                     └──────────── (victim) ────────┘
//! ```
//!
//! The hub tracks `notified_rev`, the highest revision passed to
//! [`WatchHub::notify`]. A synced watcher expects revision
//! `notified_rev + 1` next and gets it from `notify`; an unsynced watcher
//! reads history only up to `notified_rev`, and its move to the synced
//! group happens under the same lock `notify` takes, so live delivery and
//! catch-up never overlap or leave a gap. A watcher whose outbox is full
//! when `notify` runs is not dropped: it becomes unsynced at the revision
//! it missed and catches up from history later (or is cancelled with the
//! compact revision if that history was compacted meanwhile).
//!
//! Every piece of state shared between threads is behind
//! [`crate::sync`] types, so `tests/loom_watch_hub.rs` model-checks it.

pub mod history;
pub mod hub;
pub mod outbox;
pub mod watcher;

pub use history::History;
pub use hub::{HubStats, StreamId, SyncHandle, WatchHub, WatchHubConfig};
pub use outbox::Outbox;
pub use watcher::WatchSpec;

use crate::proto::mvccpb::Event;

/// The watch ID etcd uses for a progress response on behalf of every
/// watcher of a stream (`clientv3.InvalidWatchID`), and for a failed create.
pub const INVALID_WATCH_ID: i64 = -1;

/// etcd's error text for a create request whose `watch_id` is in use.
pub const ERR_DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// etcd's error text for a create request whose range is empty.
pub const ERR_EMPTY_WATCHER_RANGE: &str = "mvcc: watcher range is empty";

/// One message the hub hands to a stream's [`Outbox`]; the server turns it
/// into a `WatchResponse` (adding the header at `revision`).
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The answer to a create request. `cancel_reason` is set (and the
    /// watch ID is [`INVALID_WATCH_ID`]) when the create failed.
    Created {
        /// The new watcher's ID.
        watch_id: i64,
        /// The hub's revision when the watcher was created.
        revision: i64,
        /// Why the create failed, if it did.
        cancel_reason: Option<String>,
    },
    /// Events for one watcher: whole revisions, in revision order.
    Events {
        /// The watcher.
        watch_id: i64,
        /// The hub's revision when the batch was built (>= every event's).
        revision: i64,
        /// The events, prev_kv stripped unless the watcher asked for it.
        events: Vec<Event>,
        /// The watcher asked for large responses to be fragmented.
        fragment: bool,
    },
    /// The watcher is gone: cancelled by the client, or (with
    /// `compact_revision` > 0) because the revision it needed was compacted.
    Canceled {
        /// The watcher.
        watch_id: i64,
        /// The hub's revision at cancellation.
        revision: i64,
        /// The compaction revision that ended the watch, or 0.
        compact_revision: i64,
    },
    /// A progress notification: everything up to `revision` was delivered.
    Progress {
        /// The watcher, or [`INVALID_WATCH_ID`] for the whole stream.
        watch_id: i64,
        /// The hub's revision.
        revision: i64,
    },
}

impl Delivery {
    /// The watch ID this delivery is for.
    pub fn watch_id(&self) -> i64 {
        match self {
            Delivery::Created { watch_id, .. }
            | Delivery::Events { watch_id, .. }
            | Delivery::Canceled { watch_id, .. }
            | Delivery::Progress { watch_id, .. } => *watch_id,
        }
    }

    /// The revision the response header carries.
    pub fn revision(&self) -> i64 {
        match self {
            Delivery::Created { revision, .. }
            | Delivery::Events { revision, .. }
            | Delivery::Canceled { revision, .. }
            | Delivery::Progress { revision, .. } => *revision,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
