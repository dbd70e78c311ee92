//! Control loops that run inside the API server (kube-controller-manager's
//! jobs that admission depends on):
//! - [`namespace`]: empties a terminating namespace, then removes it;
//! - [`service_accounts`]: the `default` ServiceAccount and the
//!   `kube-root-ca.crt` ConfigMap in every namespace;
//! - [`quota`]: recalculates `ResourceQuota` usage (deletions lower it);
//! - [`gc`]: the garbage collector (owner references, propagation policies).
//!
//! Every write they make is a compare-and-swap or create-if-absent, so
//! several API servers on one store can run them side by side.

pub mod gc;
pub mod namespace;
pub mod quota;
pub mod service_accounts;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::handlers::{decode, store_err, App};
use crate::status::ApiResult;
use crate::store::prefix_end;

/// How often each loop looks again.
#[derive(Debug, Clone)]
pub struct Intervals {
    /// Terminating namespaces.
    pub namespace: Duration,
    /// New namespaces (service account, root CA).
    pub service_accounts: Duration,
    /// Every namespace again (recreates a deleted `default` account).
    pub service_accounts_resync: Duration,
    /// Quota usage.
    pub quota: Duration,
    /// Garbage collector passes.
    pub gc: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            namespace: Duration::from_millis(200),
            service_accounts: Duration::from_millis(200),
            service_accounts_resync: Duration::from_secs(10),
            quota: Duration::from_secs(1),
            gc: Duration::from_millis(200),
        }
    }
}

/// Starts the loops, which run until the server stops. `ca_pem` is the
/// cluster CA for `kube-root-ca.crt`.
pub(crate) fn spawn(
    app: Arc<App>,
    ca_pem: Option<String>,
    every: Intervals,
    background: &crate::server::Background,
) {
    background.spawn(namespace::run(app.clone(), every.namespace));
    background.spawn(service_accounts::run(
        app.clone(),
        ca_pem,
        every.service_accounts,
        every.service_accounts_resync,
    ));
    background.spawn(crate::crd::controller::run(app.clone()));
    background.spawn(gc::run(app.clone(), every.gc));
    background.spawn(quota::run(app, every.quota));
}

/// What the controllers create for the system namespaces, and the built-in
/// PriorityClasses, done before the server reports ready (so clients never
/// see them appear).
pub async fn bootstrap(app: &App, ca_pem: Option<&str>) -> ApiResult<()> {
    for ns in crate::handlers::write::SYSTEM_NAMESPACES {
        service_accounts::ensure(app, ns, ca_pem).await?;
    }
    crate::admission::priority::bootstrap_classes(app).await
}

/// Every object under `prefix`, with its mod revision, and the read's revision.
pub(crate) async fn list_prefix(app: &App, prefix: &str) -> ApiResult<(Vec<(Value, i64)>, i64)> {
    let page = app
        .store
        .range(prefix.as_bytes(), &prefix_end(prefix.as_bytes()), 0, 0)
        .await
        .map_err(store_err)?;
    Ok((decodable(&page.kvs), page.revision))
}

/// The objects of `kvs` that decode, with their mod revisions; the others
/// are skipped with a warning.
pub(crate) fn decodable(kvs: &[keel_storage::proto::mvccpb::KeyValue]) -> Vec<(Value, i64)> {
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        match decode(kv) {
            Ok(v) => out.push((v, kv.mod_revision)),
            Err(e) => tracing::warn!(error = %e.message, "skipping an undecodable object"),
        }
    }
    out
}
