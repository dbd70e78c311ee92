//! Jepsen-grade fault testing (issue 4): histories, checkers and reports.
//!
//! A run records a [`history::History`] (client ops, watch logs, faults,
//! status samples); [`checks::check_all`] judges it; [`report::write_report`]
//! keeps it with an HTML timeline so a failure can be read and re-checked
//! after a fix.

/// Watch guarantees, revision monotonicity, serializable reads, leases;
/// `check_all` runs every checker.
pub mod checks;
/// Lease expiries as synthetic ops of unknown outcome, with time windows.
pub mod expiry;
/// The recorded history of a run and its on-disk (JSON lines) form.
pub mod history;
/// Linearizability of the KV ops (Wing–Gong/Lowe search with memoization).
pub mod linearizable;
/// etcd's KV store as a deterministic sequential state machine.
pub mod model;
/// The report of a checked run: history, verdicts, HTML timeline.
pub mod report;
/// Checker verdicts and violations.
pub mod result;

/// A campaign: cluster, workloads, nemesis schedule, checks, kept report.
pub mod campaign;
/// The cluster under test: `keel store` processes on those hosts.
pub mod db;
/// The nemesis: fault schedules and their injection.
pub mod nemesis;
/// Network namespaces: one host per member, partitions and link shaping.
pub mod netns;
/// Workloads: concurrent etcd clients recording a history.
pub mod workload;
