//! keel-raft: the replicated log under keel's store.
//!
//! Table of contents:
//! - [`wal`]: the write-ahead log on disk: segmented, preallocated files of
//!   CRC-framed records, group commit, crash recovery.
//! - [`core`]: the Raft protocol as a sans-IO state machine.
//! - [`read_lease`]: the leader's read lease, timed by the driver's clock.
//! - [`failpoint`]: named crash points at the durability boundaries (feature
//!   `failpoints`), for fault testing.
//! - [`sync`]: the shim through which shared-state concurrency is written, so
//!   that loom can model it.
#![warn(missing_docs)]

pub mod core;
pub mod failpoint;
pub mod read_lease;
pub mod sync;
#[cfg(feature = "transport")]
pub mod transport;
pub mod wal;
