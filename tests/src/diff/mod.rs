//! Differential testing: the same seeded random operations applied to a real
//! etcd and to keel, every response compared field by field (see
//! `tests/tests/differential.rs`).
//!
//! - [`gen`]: the seeded operation generator (puts, deletes, ranges, txns,
//!   leases, compactions over a small colliding key space).
//! - [`norm`]: applying an op over gRPC and normalising the response to JSON;
//!   the field-by-field diff.
//! - [`watch`]: watch streams whose events are compared at the end.
//! - [`run`]: the driver ([`run::run`]) and its [`run::Report`].

pub mod gen;
pub mod norm;
pub mod run;
pub mod watch;

pub use run::{run, Config, Mismatch, Report};
