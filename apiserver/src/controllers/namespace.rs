//! The namespace controller: a namespace marked for deletion
//! (`deletionTimestamp`, phase `Terminating`) is emptied in the background,
//! every namespaced object deleted as a client delete would (finalizers and
//! pod grace periods honoured, so it may take several passes); once nothing
//! is left the `kubernetes` finalizer leaves `spec.finalizers` and the
//! namespace itself goes. Meanwhile the namespace's `status.conditions` say
//! how far it got, as Kubernetes' namespace controller words them
//! (`NamespaceContentRemaining`: `Some resources are remaining: configmaps.
//! has 1 resource instances`, `NamespaceFinalizersRemaining`, and the three
//! failure conditions, always `False` here).

use std::collections::BTreeMap;
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
        let ours = ns
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.contains(&json!(FINALIZER)));
        if ns.pointer("/metadata/deletionTimestamp").is_none() || !ours {
            continue;
        }
        let name = meta_str(&ns, "name").unwrap_or("").to_string();
        let left = empty(app, &name).await?;
        if left.is_empty() {
            finalize(app, nsres, &name, ns, rev).await?;
        } else {
            set_conditions(app, nsres, &name, ns, rev, &left).await?;
        }
    }
    Ok(())
}

/// What is left in a namespace after a pass of deletions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    /// `resource.group` (core: `resource.`) → objects left.
    pub resources: BTreeMap<String, usize>,
    /// Finalizer → objects left that carry it.
    pub finalizers: BTreeMap<String, usize>,
}

impl Remaining {
    /// True if nothing is left.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

/// Deletes what is left in `ns`; returns what still is.
async fn empty(app: &App, ns: &str) -> ApiResult<Remaining> {
    let mut left = Remaining::default();
    let mut seen = std::collections::HashSet::new();
    for res in registry::all()
        .into_iter()
        .filter(|r| r.namespaced && r.stored)
    {
        if !seen.insert(res.prefix(None)) {
            continue;
        }
        let (objs, _) = list_prefix(app, &res.prefix(Some(ns))).await?;
        for (obj, rev) in objs {
            let key = res.key(Some(ns), meta_str(&obj, "name").unwrap_or(""));
            let still = match delete_or_mark(app, res, &key, &obj, rev, None, None).await? {
                Deletion::Removed => continue,
                Deletion::Terminating(o) => o,
                Deletion::Conflict => obj,
            };
            *left
                .resources
                .entry(format!("{}.{}", res.plural, res.group))
                .or_default() += 1;
            for f in crate::handlers::propagation::finalizers(&still) {
                *left.finalizers.entry(f).or_default() += 1;
            }
        }
    }
    if !left.is_empty() {
        tracing::debug!(namespace = ns, ?left, "namespace not empty yet");
    }
    Ok(left)
}

/// The condition types, in Kubernetes' order, with the reason and message
/// each has when nothing is wrong (status `False`).
const CONDITIONS: [(&str, &str, &str); 5] = [
    (
        "NamespaceDeletionDiscoveryFailure",
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        "NamespaceDeletionGroupVersionParsingFailure",
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        "NamespaceDeletionContentFailure",
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        "NamespaceContentRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        "NamespaceFinalizersRemaining",
        "ContentHasNoFinalizers",
        "All content-preserving finalizers finished",
    ),
];

/// The deletion conditions for `left`, keeping the `lastTransitionTime` of
/// conditions in `old` that did not change (Kubernetes'
/// `namespaceConditionUpdater`).
pub fn conditions(old: &[Value], left: &Remaining, now: &str) -> Vec<Value> {
    let remaining = |m: &BTreeMap<String, usize>, fmt: &dyn Fn(&str, usize) -> String| {
        let mut v: Vec<String> = m
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| fmt(k, *n))
            .collect();
        v.sort();
        v.join(", ")
    };
    let mut out = Vec::with_capacity(CONDITIONS.len());
    for (ty, ok_reason, ok_message) in CONDITIONS {
        let (status, reason, message) = match ty {
            "NamespaceContentRemaining" if !left.resources.is_empty() => (
                "True",
                "SomeResourcesRemain".to_string(),
                format!(
                    "Some resources are remaining: {}",
                    remaining(&left.resources, &|r, n| format!(
                        "{r} has {n} resource instances"
                    ))
                ),
            ),
            "NamespaceFinalizersRemaining" if !left.finalizers.is_empty() => (
                "True",
                "SomeFinalizersRemain".to_string(),
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    remaining(&left.finalizers, &|f, n| format!(
                        "{f} in {n} resource instances"
                    ))
                ),
            ),
            _ => ("False", ok_reason.to_string(), ok_message.to_string()),
        };
        let kept = old.iter().find(|c| {
            c.get("type").and_then(Value::as_str) == Some(ty)
                && c.get("status").and_then(Value::as_str) == Some(status)
                && c.get("reason").and_then(Value::as_str) == Some(reason.as_str())
                && c.get("message").and_then(Value::as_str) == Some(message.as_str())
        });
        out.push(match kept {
            Some(c) => c.clone(),
            None => json!({
                "type": ty,
                "status": status,
                "lastTransitionTime": now,
                "reason": reason,
                "message": message,
            }),
        });
    }
    out
}

/// Writes the deletion conditions for `left` into the namespace's status
/// (compare-and-swap; nothing if they are unchanged).
async fn set_conditions(
    app: &App,
    nsres: &ResourceInfo,
    name: &str,
    mut ns: Value,
    rev: i64,
    left: &Remaining,
) -> ApiResult<()> {
    let old: Vec<Value> = ns
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new = conditions(&old, left, &crate::object::now_rfc3339());
    if new == old {
        return Ok(());
    }
    if !ns.get("status").is_some_and(Value::is_object) {
        ns["status"] = json!({});
    }
    ns["status"]["conditions"] = Value::Array(new);
    let key = nsres.key(None, name);
    if let Cas::Failed(_) = app
        .store
        .update(&key, to_store(&ns)?, rev)
        .await
        .map_err(store_err)?
    {
        tracing::debug!(namespace = name, "namespace changed; conditions next pass");
    }
    Ok(())
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
    if let Some(Value::Array(f)) = ns.pointer_mut("/spec/finalizers") {
        f.retain(|x| x != &json!(FINALIZER));
    }
    let others = has_spec_finalizers(&ns)
        || ns
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
    let result = if others {
        let old: Vec<Value> = ns
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !ns.get("status").is_some_and(Value::is_object) {
            ns["status"] = json!({});
        }
        ns["status"]["conditions"] = Value::Array(conditions(
            &old,
            &Remaining::default(),
            &crate::object::now_rfc3339(),
        ));
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

    #[test]
    fn conditions_say_what_is_left() {
        let mut left = Remaining::default();
        left.resources.insert("configmaps.".into(), 2);
        left.resources.insert("widgets.example.com".into(), 1);
        left.finalizers.insert("example.com/hold".into(), 1);
        let c = conditions(&[], &left, "t1");
        let types: Vec<&str> = c.iter().filter_map(|c| c["type"].as_str()).collect();
        assert_eq!(
            types,
            [
                "NamespaceDeletionDiscoveryFailure",
                "NamespaceDeletionGroupVersionParsingFailure",
                "NamespaceDeletionContentFailure",
                "NamespaceContentRemaining",
                "NamespaceFinalizersRemaining"
            ]
        );
        assert_eq!(c[0]["status"], "False");
        assert_eq!(c[3]["status"], "True");
        assert_eq!(
            c[3]["message"],
            "Some resources are remaining: configmaps. has 2 resource instances, widgets.example.com has 1 resource instances"
        );
        assert_eq!(
            c[4]["message"],
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
        );
        // Unchanged conditions keep their transition time.
        let again = conditions(&c, &left, "t2");
        assert_eq!(again, c);
        let done = conditions(&c, &Remaining::default(), "t3");
        assert_eq!(done[0]["lastTransitionTime"], "t1");
        assert_eq!(done[3]["reason"], "ContentRemoved");
        assert_eq!(done[3]["lastTransitionTime"], "t3");
    }
}
