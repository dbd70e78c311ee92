//! The sync shim (see `keel_raft::sync`): re-exported so storage code that
//! loom models imports from one place.
pub use keel_raft::sync::*;
