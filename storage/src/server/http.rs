//! Plain HTTP next to gRPC on the client URL: `/health` and `/metrics`.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::member::Member;

/// The HTTP routes of a member.
pub fn router(member: Arc<Member>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(member)
}

async fn health(State(m): State<Arc<Member>>) -> (StatusCode, &'static str) {
    if m.has_failed() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"health\":\"false\",\"reason\":\"wal failed\"}",
        )
    } else if m.leader() == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}",
        )
    } else {
        (StatusCode::OK, "{\"health\":\"true\"}")
    }
}

/// Prometheus text exposition of the member's state, with etcd's metric
/// names where etcd has one.
pub fn render_metrics(m: &Member) -> String {
    let (rev, compact, keys, records, size, leases, applied) = {
        let sm = m.read();
        (
            sm.kv.current_rev(),
            sm.kv.compact_rev(),
            sm.kv.key_count(),
            sm.kv.record_count(),
            sm.kv.size_bytes(),
            sm.lessor.len(),
            sm.applied_index,
        )
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        "etcd_debugging_mvcc_current_revision",
        "The current revision of the store.",
        rev as f64,
    );
    gauge(
        "etcd_debugging_mvcc_compact_revision",
        "The last compaction revision.",
        compact as f64,
    );
    gauge(
        "etcd_debugging_mvcc_keys_total",
        "Keys with history in the index.",
        keys as f64,
    );
    gauge(
        "keel_mvcc_records_total",
        "Retained revisions of all keys.",
        records as f64,
    );
    gauge(
        "etcd_mvcc_db_total_size_in_bytes",
        "Bytes held by the store.",
        size as f64,
    );
    gauge(
        "keel_wal_disk_bytes",
        "Bytes of WAL on disk.",
        m.wal_size() as f64,
    );
    gauge("etcd_debugging_lease_total", "Leases.", leases as f64);
    let has_leader = f64::from(u8::from(m.leader() != 0));
    gauge(
        "etcd_server_has_leader",
        "Whether a leader exists.",
        has_leader,
    );
    let leads = f64::from(u8::from(m.is_leader()));
    gauge("etcd_server_is_leader", "Whether this member leads.", leads);
    gauge(
        "etcd_server_applied_index",
        "The applied log index.",
        applied as f64,
    );
    gauge(
        "etcd_server_term",
        "The Raft term.",
        m.header().term() as f64,
    );
    let met = &m.metrics;
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        "etcd_server_proposals_applied_total",
        "Applied entries.",
        met.applied.load(Ordering::Relaxed),
    );
    counter(
        "etcd_server_proposals_failed_total",
        "Failed proposals.",
        met.proposals_failed.load(Ordering::Relaxed),
    );
    counter(
        "keel_snapshots_total",
        "Snapshots saved.",
        met.snapshots.load(Ordering::Relaxed),
    );
    out
}

async fn metrics(State(m): State<Arc<Member>>) -> String {
    render_metrics(&m)
}
