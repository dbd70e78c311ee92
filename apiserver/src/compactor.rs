//! Compaction of the store's history (`--etcd-compaction-interval`), as
//! kube-apiserver's `storage/etcd3/compact.go` does it.
//!
//! Every object write adds a revision that the store keeps until it is
//! compacted; without compaction a cluster's history (node heartbeats,
//! leader-election leases, status updates) grows for as long as it runs.
//! Every interval the compactor compacts the store to the revision it saw
//! one interval earlier, so at least one interval of history stays for
//! watches and paginated lists to resume from.
//!
//! Several API servers share one store: they take turns through a
//! compare-and-swap on the version of [`COMPACT_REV_KEY`], which each turn
//! bumps. Only the server whose view of that version is current compacts in
//! a given interval; the others learn the new version and try again later.
//! The key and the protocol are kube-apiserver's, so keel's API servers and
//! Kubernetes' would also take turns on one store.

use std::time::Duration;

use bytes::Bytes;
use keel_storage::proto::etcdserverpb::{
    compare, request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// The key whose version counts compaction turns (kube-apiserver's name).
pub const COMPACT_REV_KEY: &str = "compact_rev_key";

/// What a compactor knows between turns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// The version of [`COMPACT_REV_KEY`] this server last saw.
    pub version: i64,
    /// The store's revision at that time: what the next turn compacts to.
    pub revision: i64,
}

/// Compacts every `interval` until `stop` fires. A failed turn is logged and
/// tried again at the next interval.
pub async fn run(store: Store, interval: Duration, stop: CancellationToken) {
    let mut turn = Turn::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match step(&store, turn).await {
            Ok(next) => turn = next,
            Err(e) => tracing::warn!(error = %e, "compacting the store failed"),
        }
    }
}

/// One turn: if nobody else took one since `turn`, claim this one (bump the
/// key's version, record the current revision in it) and compact to the
/// revision of the last turn; otherwise only learn the current version.
/// The first turn of a server never compacts (it has no earlier revision).
pub async fn step(store: &Store, turn: Turn) -> Result<Turn, StoreError> {
    let key = Bytes::from_static(COMPACT_REV_KEY.as_bytes());
    let resp = store
        .txn_req(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: key.clone(),
                target_union: Some(compare::TargetUnion::Version(turn.version)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: turn.revision.to_string().into_bytes().into(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key,
                    ..Default::default()
                })),
            }],
        })
        .await?;
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    if !resp.succeeded {
        // Another server took the turn: follow its count.
        let version = resp
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(response_op::Response::ResponseRange(rr)) => {
                    rr.kvs.into_iter().next().map(|kv| kv.version)
                }
                _ => None,
            })
            .unwrap_or(0);
        return Ok(Turn { version, revision });
    }
    let next = Turn {
        version: turn.version + 1,
        revision,
    };
    if turn.revision > 0 {
        match store.compact(turn.revision).await {
            Ok(()) => tracing::debug!(revision = turn.revision, "compacted the store"),
            // Someone compacted further already (etcdctl, the store's own
            // auto-compaction): nothing left to do for this turn.
            Err(StoreError::Compacted(_)) => {}
            // The turn is taken (the key's version moved on) either way; as
            // kube-apiserver, go on from it, and the next turn compacts
            // further.
            Err(e) => {
                tracing::warn!(error = %e, revision = turn.revision, "compacting the store failed")
            }
        }
    }
    Ok(next)
}
