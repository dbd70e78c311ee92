//! The RBAC policy snapshot the evaluator reads, built from the watch
//! caches of the four RBAC resource types (the same caches that serve
//! watches) and rebuilt only when one of them has moved.
//!
//! Before answering "no", the authorizer catches up with the store's head
//! (it waits, briefly, until the caches have reached the revision a quorum
//! read returns), so a binding created just before a request is honoured:
//! a client that wrote a RoleBinding and then uses it is not refused
//! because the watch had not delivered it yet.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::rbac::Policy;
use super::Attributes;
use crate::cache::Cache;
use crate::handlers::{store_err, App};
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult};

/// The RBAC API group.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The RBAC resource plurals.
const PLURALS: [&str; 4] = [
    "roles",
    "clusterroles",
    "rolebindings",
    "clusterrolebindings",
];

/// How long a denial waits for the caches to reach the store's head.
const CATCH_UP: Duration = Duration::from_secs(2);

/// The RBAC resource of `plural`.
pub fn rbac_resource(plural: &str) -> ApiResult<&'static ResourceInfo> {
    registry::lookup(RBAC_GROUP, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural}.{RBAC_GROUP} are not registered")))
}

/// The current [`Policy`], rebuilt when the RBAC watch caches move.
#[derive(Debug, Default)]
pub struct PolicyCache {
    /// The caches' revisions the snapshot was built at, and the snapshot.
    current: Mutex<Option<(Vec<i64>, Arc<Policy>)>>,
}

impl PolicyCache {
    async fn caches(app: &App) -> ApiResult<Vec<(&'static ResourceInfo, Arc<Cache>)>> {
        let mut out = Vec::with_capacity(PLURALS.len());
        for p in PLURALS {
            let res = rbac_resource(p)?;
            let cache = app.caches.get(&app.store, res).await.map_err(store_err)?;
            out.push((res, cache));
        }
        Ok(out)
    }

    /// The policy as the watch caches have it now.
    pub async fn policy(&self, app: &App) -> ApiResult<Arc<Policy>> {
        let caches = Self::caches(app).await?;
        let revs: Vec<i64> = caches.iter().map(|(_, c)| c.revision()).collect();
        if let Ok(cur) = self.current.lock() {
            if let Some((_, p)) = cur.as_ref().filter(|(r, _)| *r == revs) {
                return Ok(p.clone());
            }
        }
        let mut policy = Policy::default();
        for (res, cache) in &caches {
            let (kvs, _) = cache.snapshot(res.prefix(None).as_bytes());
            for kv in kvs {
                match serde_json::from_slice(&kv.value) {
                    Ok(v) => policy.add(res.kind, &v),
                    Err(e) => tracing::warn!(
                        key = %String::from_utf8_lossy(&kv.key),
                        error = %e,
                        "RBAC: skipping an undecodable object"
                    ),
                }
            }
        }
        let policy = Arc::new(policy);
        if let Ok(mut cur) = self.current.lock() {
            *cur = Some((revs, policy.clone()));
        }
        Ok(policy)
    }

    /// Waits until every RBAC cache has reached the store's current revision.
    pub async fn catch_up(&self, app: &App) -> ApiResult<()> {
        let (_, head) = app
            .store
            .get(&rbac_resource("clusterroles")?.key(None, ""))
            .await
            .map_err(store_err)?;
        let caches = Self::caches(app).await?;
        let waits = caches.iter().map(|(_, c)| c.wait_for(head, CATCH_UP));
        if !futures::future::join_all(waits)
            .await
            .into_iter()
            .all(|ok| ok)
        {
            tracing::warn!(head, "RBAC: the watch caches did not catch up in time");
        }
        Ok(())
    }

    /// RBAC's decision: (allowed, reason). A denial is decided on a policy
    /// at least as new as the store's head when it was asked.
    pub async fn authorize(&self, app: &App, a: &Attributes) -> ApiResult<(bool, String)> {
        let first = self.policy(app).await?.authorize(a);
        if first.0 {
            return Ok(first);
        }
        self.catch_up(app).await?;
        Ok(self.policy(app).await?.authorize(a))
    }
}
