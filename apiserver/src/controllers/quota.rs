//! The resource quota controller: recomputes every quota's `status.used`
//! from the objects in its namespace (deletions lower usage only here) and
//! copies `spec.hard` to `status.hard`. The objects are read at the same
//! store revision as the quota, and the write is conditional on the quota
//! being unchanged since: admission charges quotas in the transaction that
//! creates an object, so a count that missed a newer object cannot win.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::resource_quota::{hard_of, quota_resource, recalculate, with_status};
use crate::handlers::write::to_store;
use crate::handlers::{decode, store_err, App};
use crate::object::meta_str;
use crate::status::ApiResult;
use crate::store::{prefix_end, Cas};

/// Runs the loop.
pub async fn run(app: Arc<App>, every: Duration) {
    loop {
        if let Err(e) = pass(&app).await {
            tracing::debug!(error = %e, "quota controller pass failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// One pass over every quota; returns how many were updated.
pub async fn pass(app: &App) -> ApiResult<usize> {
    let qres = quota_resource()?;
    let prefix = qres.prefix(None);
    let page = app
        .store
        .range(prefix.as_bytes(), &prefix_end(prefix.as_bytes()), 0, 0)
        .await
        .map_err(store_err)?;
    let mut updated = 0;
    for kv in &page.kvs {
        let quota = decode(kv)?;
        let Some(hard) = hard_of(&quota) else {
            continue;
        };
        let ns = meta_str(&quota, "namespace").unwrap_or("").to_string();
        let used = recalculate(app, &quota, &hard, page.revision).await?;
        let new = with_status(&quota, &used);
        if new.get("status") == quota.get("status") {
            continue;
        }
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        match app
            .store
            .update(&key, to_store(&new)?, kv.mod_revision)
            .await
            .map_err(store_err)?
        {
            Cas::Done(_) => {
                updated += 1;
                tracing::debug!(quota = meta_str(&quota, "name").unwrap_or(""), namespace = %ns, used = %new["status"]["used"], "quota usage recalculated");
            }
            Cas::Failed(_) => {}
        }
    }
    Ok(updated)
}
