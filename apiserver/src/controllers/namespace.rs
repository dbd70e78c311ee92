//! The namespace controller: a namespace marked for deletion
//! (`deletionTimestamp`, phase `Terminating`) is emptied in the background,
//! every namespaced object deleted as a client delete would (finalizers and
//! pod grace periods honoured, so it may take several passes); once nothing
//! is left the `kubernetes` finalizer leaves `spec.finalizers` and the
//! namespace itself goes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::list_prefix;
use crate::handlers::write::{delete_or_mark, to_store, Deletion};
use crate::handlers::{store_err, App};
use crate::object::meta_str;
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult};
use crate::store::Cas;

/// The finalizer namespaces carry until they are empty.
pub const FINALIZER: &str = "kubernetes";

fn namespaces() -> ApiResult<&'static ResourceInfo> {
    registry::lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not registered"))
}

/// Runs the loop.
pub async fn run(app: Arc<App>, every: Duration) {
    loop {
        if let Err(e) = sweep(&app).await {
            tracing::debug!(error = %e, "namespace controller pass failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// One pass over every terminating namespace.
pub async fn sweep(app: &App) -> ApiResult<()> {
    let nsres = namespaces()?;
    let (all, _) = list_prefix(app, &nsres.prefix(None)).await?;
    for (ns, rev) in all {
        if ns.pointer("/metadata/deletionTimestamp").is_none() {
            continue;
        }
        let name = meta_str(&ns, "name").unwrap_or("").to_string();
        if empty(app, &name).await? {
            finalize(app, nsres, &name, ns, rev).await?;
        }
    }
    Ok(())
}

/// Deletes what is left in `ns`; true when nothing is.
async fn empty(app: &App, ns: &str) -> ApiResult<bool> {
    let mut left = 0usize;
    for res in registry::all().into_iter().filter(|r| r.namespaced) {
        let (objs, _) = list_prefix(app, &res.prefix(Some(ns))).await?;
        for (obj, rev) in objs {
            let key = res.key(Some(ns), meta_str(&obj, "name").unwrap_or(""));
            match delete_or_mark(app, res, &key, &obj, rev, None).await? {
                Deletion::Removed => {}
                Deletion::Terminating(_) | Deletion::Conflict => left += 1,
            }
        }
    }
    if left > 0 {
        tracing::debug!(namespace = ns, left, "namespace not empty yet");
    }
    Ok(left == 0)
}

/// Drops the `kubernetes` finalizer; removes the namespace if no other
/// finalizer holds it.
async fn finalize(
    app: &App,
    nsres: &ResourceInfo,
    name: &str,
    mut ns: Value,
    rev: i64,
) -> ApiResult<()> {
    let key = nsres.key(None, name);
    let others = ns
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let result = if others {
        if let Some(Value::Array(f)) = ns.pointer_mut("/spec/finalizers") {
            f.retain(|x| x != &json!(FINALIZER));
        }
        app.store
            .update(&key, to_store(&ns)?, rev)
            .await
            .map_err(store_err)?
    } else {
        app.store.delete(&key, rev).await.map_err(store_err)?
    };
    match result {
        Cas::Done(_) => tracing::info!(namespace = name, removed = !others, "namespace finalized"),
        Cas::Failed(_) => tracing::debug!(namespace = name, "namespace changed; next pass"),
    }
    Ok(())
}

/// The namespace as DELETE leaves it: `deletionTimestamp`, phase
/// `Terminating`, the `kubernetes` finalizer in `spec.finalizers`.
pub fn mark_terminating(ns: &Value) -> Value {
    let mut new = ns.clone();
    if new.pointer("/metadata/deletionTimestamp").is_none() {
        let m = crate::object::meta_mut(&mut new);
        m.insert(
            "deletionTimestamp".into(),
            json!(crate::object::now_rfc3339()),
        );
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
    }
    if !new.get("spec").is_some_and(Value::is_object) {
        new["spec"] = json!({});
    }
    match new.pointer_mut("/spec/finalizers") {
        Some(Value::Array(f)) => {
            if !f.contains(&json!(FINALIZER)) {
                f.push(json!(FINALIZER));
            }
        }
        _ => new["spec"]["finalizers"] = json!([FINALIZER]),
    }
    if !new.get("status").is_some_and(Value::is_object) {
        new["status"] = json!({});
    }
    new["status"]["phase"] = json!("Terminating");
    new
}

/// True if the namespace still waits for its content to go.
pub fn has_spec_finalizers(ns: &Value) -> bool {
    ns.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marking_sets_timestamp_phase_and_finalizer() {
        let ns = json!({"metadata": {"name": "x"}, "spec": {}, "status": {"phase": "Active"}});
        let m = mark_terminating(&ns);
        assert!(m.pointer("/metadata/deletionTimestamp").is_some());
        assert_eq!(m["status"]["phase"], "Terminating");
        assert_eq!(m["spec"]["finalizers"], json!(["kubernetes"]));
        assert!(has_spec_finalizers(&m));
        // Marking again keeps the first timestamp and one finalizer.
        let again = mark_terminating(&m);
        assert_eq!(again, m);
    }
}
