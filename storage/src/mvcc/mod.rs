//! Multi-version concurrency control: the store's data model, after etcd's
//! `server/storage/mvcc`.
//!
//! - [`revision`]: `Revision {main, sub}`.
//! - [`chunk_map`]: the ordered map (sorted chunks) the key index lives in.
//! - [`key_index`]: one key's history in generations.
//! - [`key_slot`]: how the index holds it (a single put as one revision).
//! - [`record`]: one retained change (key and value in one buffer).
//! - [`rev_log`]: every retained change in revision order (append-only chunks).
//! - [`tree_index`]: the B-tree of key indexes, and [`KeyRange`].
//! - [`store`]: [`KvStore`], values by revision, reads at any retained
//!   revision, write transactions, compaction, history for watches.

pub mod chunk_map;
pub mod key_index;
pub mod key_slot;
pub mod record;
pub mod rev_log;
pub mod revision;
pub mod store;
pub mod tree_index;

pub use record::{PutMeta, Record};
pub use revision::Revision;
pub use store::{KvStore, RangeOptions, RangeResult, Rebased, WriteResult, WriteTxn};
pub use tree_index::KeyRange;

/// Errors of the MVCC layer, each one of etcd's `mvcc` errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// The revision asked for was compacted away.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is newer than the store.
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
}
