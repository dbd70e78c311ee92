//! Jepsen-grade fault testing (issue 4): histories, checkers and reports.
//!
//! A run records a [`history::History`] (client ops, watch logs, faults,
//! status samples); the checkers judge it; the report draws it as an HTML
//! timeline so a failure can be read and re-checked after a fix.

/// The recorded history of a run and its on-disk (JSON lines) form.
pub mod history;

/// Network namespaces: one host per member, partitions and link shaping.
pub mod netns;
/// The cluster under test: `keel store` processes on those hosts.
pub mod db;
