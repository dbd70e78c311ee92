//! What an object counts against a `ResourceQuota` (Kubernetes' quota
//! evaluators): object counts (`pods`, `services`, `configmaps`, `secrets`,
//! `persistentvolumeclaims`, `resourcequotas`, `count/<resource>.<group>`),
//! pod compute (`requests.cpu`, `limits.memory`, `cpu`, `memory`, …),
//! `services.nodeports`/`services.loadbalancers` and `requests.storage`.

use serde_json::Value;

use super::resources::{self, ResourceList};
use crate::quantity::Quantity;
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult};

/// Resources whose quota makes every container state them
/// (Kubernetes' backward-compatibility rule for cpu and memory).
pub const MUST_SPECIFY: &[&str] = &[
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
    "cpu",
    "memory",
];

/// Compute resources that also count under their bare name (`cpu` = `requests.cpu`).
const BARE: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// The `count/…` name of a resource type.
pub fn count_name(res: &ResourceInfo) -> String {
    format!("count/{}", res.qualified())
}

/// The legacy object-count name of a core resource type, if it has one.
fn legacy_count(res: &ResourceInfo) -> Option<&'static str> {
    if !res.group.is_empty() {
        return None;
    }
    match res.plural {
        p @ ("pods"
        | "services"
        | "configmaps"
        | "secrets"
        | "persistentvolumeclaims"
        | "resourcequotas"
        | "replicationcontrollers") => Some(p),
        _ => None,
    }
}

fn one() -> Quantity {
    Quantity::from_units(1)
}

/// True if a pod no longer uses resources (it ended).
fn terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// The usage of a container's requests and limits, by quota name.
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    for (k, q) in requests {
        out.insert(format!("requests.{k}"), *q);
        if BARE.contains(&k.as_str()) {
            out.insert(k.clone(), *q);
        }
    }
    for (k, q) in limits {
        out.insert(format!("limits.{k}"), *q);
    }
    out
}

/// Everything `obj` (of `res`) counts against quotas.
pub fn usage(res: &ResourceInfo, obj: &Value) -> ApiResult<ResourceList> {
    let mut out = ResourceList::new();
    if res.group.is_empty() && res.kind == "Pod" && terminal(obj) {
        return Ok(out);
    }
    out.insert(count_name(res), one());
    if let Some(legacy) = legacy_count(res) {
        out.insert(legacy.to_string(), one());
    }
    if !res.group.is_empty() {
        return Ok(out);
    }
    match res.kind {
        "Pod" => {
            let cs = resources::containers(obj)?;
            let req = resources::pod_requests(obj, &cs)?;
            let lim = resources::pod_limits(obj, &cs)?;
            out.extend(compute_usage(&req, &lim));
        }
        "Service" => {
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as i64;
            match obj.pointer("/spec/type").and_then(Value::as_str) {
                Some("NodePort") => {
                    out.insert("services.nodeports".into(), Quantity::from_units(ports));
                }
                Some("LoadBalancer") => {
                    out.insert("services.loadbalancers".into(), one());
                    out.insert("services.nodeports".into(), Quantity::from_units(ports));
                }
                _ => {}
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(q) = resources::parse_list(
                obj.pointer("/spec/resources/requests"),
                "spec.resources.requests",
            )?
            .get("storage")
            {
                out.insert("requests.storage".into(), *q);
            }
        }
        _ => {}
    }
    Ok(out)
}

/// The containers missing a request or limit a quota with `hard` requires:
/// `Err("must specify limits.cpu for: a,b; …")`.
pub fn constraints(
    res: &ResourceInfo,
    obj: &Value,
    hard: &ResourceList,
) -> ApiResult<Result<(), String>> {
    if !(res.group.is_empty() && res.kind == "Pod") {
        return Ok(Ok(()));
    }
    let required: Vec<&str> = MUST_SPECIFY
        .iter()
        .copied()
        .filter(|r| hard.contains_key(*r))
        .collect();
    if required.is_empty() {
        return Ok(Ok(()));
    }
    let mut missing: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for c in resources::containers(obj)? {
        let has = compute_usage(&c.requests, &c.limits);
        for r in &required {
            if !has.contains_key(*r) {
                missing.entry(r).or_default().push(c.name.clone());
            }
        }
    }
    if missing.is_empty() {
        return Ok(Ok(()));
    }
    let parts: Vec<String> = missing
        .iter_mut()
        .map(|(r, names)| {
            names.sort();
            format!("{r} for: {}", names.join(","))
        })
        .collect();
    Ok(Err(format!("must specify {}", parts.join("; "))))
}

/// One scope condition: a scope name (`Terminating`, `NotTerminating`,
/// `BestEffort`, `NotBestEffort`, `PriorityClass`), an operator and values.
fn scope_matches(scope: &str, op: &str, values: &[&str], pod: &Value) -> bool {
    let active_deadline = pod
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|s| s >= 0);
    let best_effort = crate::defaults::qos_class(pod) == "BestEffort";
    match scope {
        "Terminating" => active_deadline,
        "NotTerminating" => !active_deadline,
        "BestEffort" => best_effort,
        "NotBestEffort" => !best_effort,
        "PriorityClass" => {
            let class = pod
                .pointer("/spec/priorityClassName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            match op {
                "In" => class.is_some_and(|c| values.contains(&c)),
                "NotIn" => class.is_none_or(|c| !values.contains(&c)),
                "Exists" => class.is_some(),
                "DoesNotExist" => class.is_none(),
                _ => false,
            }
        }
        _ => false,
    }
}

/// True if the quota's `scopes` and `scopeSelector` (all of them) select
/// `obj`. Scoped quotas only ever track pods, as in Kubernetes.
pub fn scopes_match(quota: &Value, res: &ResourceInfo, obj: &Value) -> bool {
    let scopes: Vec<&str> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let exprs = quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if scopes.is_empty() && exprs.is_empty() {
        return true;
    }
    if !(res.group.is_empty() && res.kind == "Pod") {
        return false;
    }
    scopes.iter().all(|s| scope_matches(s, "Exists", &[], obj))
        && exprs.iter().all(|e| {
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            scope_matches(
                e.get("scopeName").and_then(Value::as_str).unwrap_or(""),
                e.get("operator").and_then(Value::as_str).unwrap_or(""),
                &values,
                obj,
            )
        })
}

/// The resource types whose objects can count towards `key`.
pub fn kinds_for(key: &str) -> Vec<&'static ResourceInfo> {
    let core = |p: &str| {
        registry::lookup("", "v1", p)
            .into_iter()
            .collect::<Vec<_>>()
    };
    if let Some(rest) = key.strip_prefix("count/") {
        let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
        let mut out: Vec<&'static ResourceInfo> = Vec::new();
        for r in registry::all() {
            // Every version of a custom resource shares one store prefix.
            if r.namespaced
                && r.plural == plural
                && r.group == group
                && !out.iter().any(|o| o.prefix(None) == r.prefix(None))
            {
                out.push(r);
            }
        }
        return out;
    }
    match key {
        "services" | "services.nodeports" | "services.loadbalancers" => core("services"),
        "configmaps" | "secrets" | "resourcequotas" | "persistentvolumeclaims" => core(key),
        "requests.storage" => core("persistentvolumeclaims"),
        _ => core("pods"),
    }
}

/// Adds `delta` into `total`, for the keys `total` has.
pub fn add_tracked(total: &mut ResourceList, delta: &ResourceList) -> ApiResult<()> {
    for (k, t) in total.iter_mut() {
        if let Some(d) = delta.get(k) {
            *t = t
                .checked_add(*d)
                .map_err(|e| ApiError::bad_request(format!("{k}: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(plural: &str, group: &str) -> &'static ResourceInfo {
        registry::RESOURCES
            .iter()
            .find(|r| r.plural == plural && r.group == group)
            .expect("registered")
    }

    #[test]
    fn pod_usage_counts_objects_and_compute() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}}},
        ]}});
        let u = usage(res("pods", ""), &pod).expect("usage");
        assert_eq!(
            resources::pretty(&u),
            "count/pods=1,cpu=500m,limits.cpu=500m,memory=64Mi,pods=1,requests.cpu=500m,requests.memory=64Mi"
        );
        let done = json!({"spec": {}, "status": {"phase": "Succeeded"}});
        assert!(usage(res("pods", ""), &done).expect("usage").is_empty());
        let d = usage(res("deployments", "apps"), &json!({})).expect("usage");
        assert_eq!(resources::pretty(&d), "count/deployments.apps=1");
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 1}, {"port": 2}]}});
        let s = usage(res("services", ""), &svc).expect("usage");
        assert_eq!(
            resources::pretty(&s),
            "count/services=1,services=1,services.nodeports=2"
        );
    }

    #[test]
    fn compute_quota_requires_every_container_to_state_it() {
        let hard = resources::parse_list(
            Some(&json!({"limits.cpu": "2", "requests.memory": "1Gi", "pods": "3"})),
            "hard",
        )
        .expect("hard");
        let pod = json!({"spec": {"containers": [
            {"name": "b", "resources": {"requests": {"memory": "64Mi"}}},
            {"name": "a"},
        ]}});
        let r = constraints(res("pods", ""), &pod, &hard).expect("checked");
        assert_eq!(
            r,
            Err("must specify limits.cpu for: a,b; requests.memory for: a".into())
        );
        assert_eq!(kinds_for("count/deployments.apps")[0].kind, "Deployment");
        let pods = res("pods", "");
        let best_effort = json!({"spec": {"scopes": ["BestEffort"]}});
        assert!(scopes_match(
            &best_effort,
            pods,
            &json!({"spec": {"containers": [{"name": "a"}]}})
        ));
        assert!(!scopes_match(&best_effort, pods, &pod));
        assert!(!scopes_match(
            &best_effort,
            res("configmaps", ""),
            &json!({})
        ));
        assert!(scopes_match(
            &json!({"spec": {}}),
            res("configmaps", ""),
            &json!({})
        ));
        let high = json!({"spec": {"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        assert!(scopes_match(
            &high,
            pods,
            &json!({"spec": {"priorityClassName": "high"}})
        ));
        assert!(!scopes_match(&high, pods, &json!({"spec": {}})));
        let terminating = json!({"spec": {"scopes": ["Terminating"]}});
        assert!(scopes_match(
            &terminating,
            pods,
            &json!({"spec": {"activeDeadlineSeconds": 30}})
        ));
        assert!(!scopes_match(&terminating, pods, &json!({"spec": {}})));
        assert_eq!(kinds_for("requests.cpu")[0].kind, "Pod");
    }
}
