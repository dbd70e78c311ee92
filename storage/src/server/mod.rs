//! The store member's servers: the etcd v3 gRPC services and the HTTP
//! endpoints (`/health`, `/metrics`) on the client URL.
//!
//! - [`header`]: response headers.
//! - [`watch`]: the Watch service.

pub mod header;
pub mod watch;
