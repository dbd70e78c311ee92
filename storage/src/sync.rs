//! The sync shim (see `keel_raft::sync`): re-exported, plus `RwLock`, so
//! storage code that loom models imports from one place.
pub use keel_raft::sync::*;

#[cfg(loom)]
pub use loom::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(loom))]
pub use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
