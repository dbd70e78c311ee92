//! keel-storage: the store.
//!
//! Table of contents:
//! - [`proto`]: etcd v3 wire types and gRPC services, compiled from our own `.proto`.
//! - [`mvcc`]: revisions, the key index and the multi-version key-value store.
//! - [`lease`]: leases and their expiry.
//! - [`apply`]: the state machine that applies log entries with etcd's semantics.
//! - [`error`]: the errors clients see, mapped to etcd's gRPC statuses.
//! - [`go_duration`]: Go-style durations for etcd's duration flags.
//! - [`watch`]: the watch hub: watchers, catch-up from history, the synced group.
//! - `member`: one replicated member: opening a data dir, the Raft driver
//!   and apply loop, snapshots (feature `server`).
//! - [`server`]: the member's gRPC and HTTP servers.
//! - [`quic`]: the native QUIC client API (server and client; feature `server`).
//! - [`sync`]: the loom-able sync shim.
#![warn(missing_docs)]

pub mod apply;
pub mod error;
pub mod go_duration;
pub mod lease;
#[cfg(feature = "server")]
pub mod member;
pub mod mvcc;
pub mod proto;
#[cfg(feature = "server")]
pub mod quic;
#[cfg(feature = "server")]
pub mod server;
pub mod sync;
pub mod watch;
