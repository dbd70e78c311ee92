//! keel-storage: the store.
//!
//! Table of contents:
//! - [`proto`]: etcd v3 wire types and gRPC services, compiled from our own `.proto`.
//! - [`mvcc`]: revisions, the key index and the multi-version key-value store.
#![warn(missing_docs)]

pub mod mvcc;
pub mod proto;
pub mod sync;
