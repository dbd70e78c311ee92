//! `ResourceQuota`: a new object is refused if it would take a namespace's
//! usage past a quota's `spec.hard`, with kube-apiserver's message
//! (`exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2`).
//! Otherwise the quota's `status.used` grows by the object's usage in the
//! same store transaction that creates the object, on condition that the
//! quota is unchanged since it was read: two concurrent creates cannot both
//! take the last unit (the loser's transaction fails and it is admitted
//! again against the new usage). Deletions lower usage through the
//! recalculation loop ([`crate::controllers::quota`]), which uses
//! [`recalculate`].

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::quota_usage::{self, add_tracked, usage};
use super::reads::Read;
use super::resources::{self, ResourceList};
use super::{Attributes, Charge, Operation, Plugin};
use crate::handlers::{decode, store_err, App};
use crate::object::meta_str;
use crate::quantity::Quantity;
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult};
use crate::store::prefix_end;

/// The plugin.
#[derive(Debug)]
pub struct ResourceQuota;

/// The resource quota type.
pub fn quota_resource() -> ApiResult<&'static ResourceInfo> {
    registry::lookup("", "v1", "resourcequotas")
        .ok_or_else(|| ApiError::internal("resourcequotas are not registered"))
}

/// `spec.hard` of a quota (`None`, with a warning, if it does not parse).
pub fn hard_of(quota: &Value) -> Option<ResourceList> {
    match resources::parse_list(quota.pointer("/spec/hard"), "spec.hard") {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(quota = meta_str(quota, "name").unwrap_or(""), error = %e.message, "ignoring a quota with a bad quantity");
            None
        }
    }
}

fn used_of(quota: &Value) -> ResourceList {
    resources::parse_list(quota.pointer("/status/used"), "status.used").unwrap_or_default()
}

/// The namespace's usage of every resource in `quota`'s `hard` (objects its
/// scopes select), from the objects as they were at store revision
/// `revision` (0: now).
pub async fn recalculate(
    app: &App,
    quota: &Value,
    hard: &ResourceList,
    revision: i64,
) -> ApiResult<ResourceList> {
    let ns = meta_str(quota, "namespace").unwrap_or("");
    let mut total: ResourceList = hard.keys().map(|k| (k.clone(), Quantity::ZERO)).collect();
    let mut kinds: Vec<&ResourceInfo> = hard
        .keys()
        .flat_map(|k| quota_usage::kinds_for(k))
        .collect();
    kinds.sort_by_key(|r| (r.group, r.plural));
    kinds.dedup();
    for res in kinds {
        let prefix = res.prefix(Some(ns));
        let page = app
            .store
            .range(
                prefix.as_bytes(),
                &prefix_end(prefix.as_bytes()),
                0,
                revision,
            )
            .await
            .map_err(store_err)?;
        for kv in &page.kvs {
            let obj = decode(kv)?;
            if !quota_usage::scopes_match(quota, res, &obj) {
                continue;
            }
            match usage(res, &obj) {
                Ok(u) => add_tracked(&mut total, &u)?,
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e.message, "object not counted")
                }
            }
        }
    }
    Ok(total)
}

/// The quota object with `status.hard` from its spec and `status.used`.
pub fn with_status(quota: &Value, used: &ResourceList) -> Value {
    let mut q = quota.clone();
    let hard = quota.pointer("/spec/hard").cloned().unwrap_or(json!({}));
    if !q.get("status").is_some_and(Value::is_object) {
        q["status"] = json!({});
    }
    q["status"]["hard"] = hard;
    q["status"]["used"] = resources::to_json(used);
    q
}

/// True for updates that can grow usage (Kubernetes' evaluators handle
/// updates of services and persistent volume claims; pods are immutable).
fn charged_update(attrs: &Attributes) -> bool {
    attrs.operation == Operation::Update
        && attrs.res.group.is_empty()
        && matches!(attrs.res.kind, "Service" | "PersistentVolumeClaim")
}

/// What the request adds to usage: all of a new object's usage; the
/// growth (never negative) of an updated one.
fn requested(attrs: &Attributes) -> ApiResult<ResourceList> {
    let new = usage(attrs.res, &attrs.object)?;
    if attrs.operation == Operation::Create {
        return Ok(new);
    }
    let old = match &attrs.old {
        Some(o) => usage(attrs.res, o)?,
        None => ResourceList::new(),
    };
    let mut delta = ResourceList::new();
    for (k, q) in new {
        let grown = match old.get(&k) {
            Some(o) => q
                .checked_sub(*o)
                .map_err(|e| ApiError::bad_request(format!("{k}: {e}")))?,
            None => q,
        };
        if grown > Quantity::ZERO {
            delta.insert(k, grown);
        }
    }
    Ok(delta)
}

/// The namespace whose quotas a request may be charged to.
fn charged_in(attrs: &Attributes) -> Option<String> {
    let charged = attrs.operation == Operation::Create || charged_update(attrs);
    if !charged || attrs.subresource.is_some() || !attrs.res.namespaced {
        return None;
    }
    attrs.namespace.clone()
}

async fn validate(app: &App, attrs: &mut Attributes) -> ApiResult<()> {
    let Some(ns) = charged_in(attrs) else {
        return Ok(());
    };
    let delta = requested(attrs)?;
    if delta.is_empty() {
        return Ok(());
    }
    let qres = quota_resource()?;
    let (quotas, _) = attrs.reads.list(app, &qres.prefix(Some(&ns))).await?;
    for (quota, rev) in quotas {
        let name = meta_str(&quota, "name").unwrap_or("").to_string();
        let Some(hard) = hard_of(&quota) else {
            continue;
        };
        if !quota_usage::scopes_match(&quota, attrs.res, &attrs.object) {
            continue;
        }
        if let Err(why) = quota_usage::constraints(attrs.res, &attrs.object, &hard)? {
            return Err(attrs.forbidden(format!("failed quota: {name}: {why}")));
        }
        if !hard.keys().any(|k| delta.contains_key(k)) {
            continue;
        }
        let mut used = used_of(&quota);
        if hard.keys().any(|k| !used.contains_key(k)) {
            // No usage recorded yet (a new quota): count it now. The charge
            // below is conditional on the quota's revision, so this count
            // cannot miss an object admitted meanwhile.
            used = recalculate(app, &quota, &hard, 0).await?;
        }
        used.retain(|k, _| hard.contains_key(k));
        let mut new_used = used.clone();
        add_tracked(&mut new_used, &delta)?;
        let exceeded: Vec<&String> = hard
            .iter()
            .filter(|(k, h)| delta.contains_key(*k) && new_used.get(*k).is_some_and(|n| n > *h))
            .map(|(k, _)| k)
            .collect();
        if !exceeded.is_empty() {
            let pick = |l: &ResourceList| -> ResourceList {
                exceeded
                    .iter()
                    .filter_map(|k| l.get(*k).map(|q| ((*k).clone(), *q)))
                    .collect()
            };
            return Err(attrs.forbidden(format!(
                "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                resources::pretty(&pick(&delta)),
                resources::pretty(&pick(&used)),
                resources::pretty(&pick(&hard)),
            )));
        }
        if attrs.dry_run {
            continue;
        }
        let key = qres.key(Some(&ns), &name);
        attrs.charges.push(Charge {
            value: crate::handlers::write::to_store(&with_status(&quota, &new_used))?,
            key,
            mod_revision: rev,
        });
    }
    Ok(())
}

impl Plugin for ResourceQuota {
    fn name(&self) -> &'static str {
        "ResourceQuota"
    }

    fn reads(&self, attrs: &Attributes) -> Vec<Read> {
        let prefix =
            charged_in(attrs).and_then(|ns| Some(quota_resource().ok()?.prefix(Some(&ns))));
        prefix.map(Read::Prefix).into_iter().collect()
    }

    fn validate<'a>(
        &'a self,
        app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(validate(app, attrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mirrors_hard_and_used() {
        let q = json!({"spec": {"hard": {"pods": "2", "requests.memory": "1Gi"}}});
        let used =
            resources::parse_list(Some(&json!({"pods": "1", "requests.memory": "512Mi"})), "u")
                .expect("used");
        let s = with_status(&q, &used);
        assert_eq!(s["status"]["hard"], q["spec"]["hard"]);
        assert_eq!(
            s["status"]["used"],
            json!({"pods": "1", "requests.memory": "512Mi"})
        );
        assert_eq!(hard_of(&q).map(|h| h.len()), Some(2));
        assert!(hard_of(&json!({"spec": {"hard": {"pods": "two"}}})).is_none());
    }

    #[test]
    fn updates_request_only_growth() {
        let svc = crate::registry::lookup("", "v1", "services").expect("services");
        let old = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}, {"port": 81}]}});
        let mut attrs = Attributes {
            operation: Operation::Update,
            res: svc,
            subresource: None,
            namespace: Some("ns".into()),
            name: "a".into(),
            object: json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}}),
            old: Some(old.clone()),
            dry_run: false,
            charges: Vec::new(),
            reads: Default::default(),
        };
        assert!(charged_update(&attrs));
        assert_eq!(
            resources::pretty(&requested(&attrs).expect("delta")),
            "services.nodeports=2"
        );
        // Back to ClusterIP: nothing requested (usage drops via the controller).
        attrs.object = old;
        attrs.old = Some(json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}}));
        assert!(requested(&attrs).expect("delta").is_empty());
    }
}
