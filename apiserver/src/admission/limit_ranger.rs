//! `LimitRanger`: the `LimitRange` objects of a namespace give new pods'
//! containers their default limits (`default`) and requests
//! (`defaultRequest`), then bound them (`min`, `max`,
//! `maxLimitRequestRatio`, per `Container` or per `Pod`), with
//! kube-apiserver's messages. Pods only (not yet persistent volume claims).

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::reads::{Read, Reads};
use super::resources::{self, parse_list, ContainerResources, ResourceList};
use super::{Attributes, Plugin};
use crate::handlers::App;
use crate::quantity::Quantity;
use crate::registry;
use crate::status::{ApiError, ApiResult};

/// The plugin.
#[derive(Debug)]
pub struct LimitRanger;

/// The annotation saying what the plugin set.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// One `spec.limits[]` item, parsed (bad quantities are left out).
#[derive(Debug, Default, Clone)]
pub struct Item {
    /// `Container`, `Pod` or `PersistentVolumeClaim`.
    pub kind: String,
    /// `min`.
    pub min: ResourceList,
    /// `max`.
    pub max: ResourceList,
    /// `default` (limits).
    pub default: ResourceList,
    /// `defaultRequest`.
    pub default_request: ResourceList,
    /// `maxLimitRequestRatio`.
    pub ratio: ResourceList,
}

fn lenient(v: Option<&Value>) -> ResourceList {
    match parse_list(v, "limits") {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e.message, "ignoring a LimitRange item with a bad quantity");
            ResourceList::new()
        }
    }
}

impl Item {
    /// Parses an item and applies Kubernetes' defaulting of Container items:
    /// `default` from `max`, `defaultRequest` from `default`, then from `min`.
    pub fn parse(v: &Value) -> Item {
        let mut item = Item {
            kind: v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            min: lenient(v.get("min")),
            max: lenient(v.get("max")),
            default: lenient(v.get("default")),
            default_request: lenient(v.get("defaultRequest")),
            ratio: lenient(v.get("maxLimitRequestRatio")),
        };
        if item.kind == "Container" {
            for (k, q) in &item.max {
                item.default.entry(k.clone()).or_insert(*q);
            }
            for (k, q) in item.default.iter().chain(&item.min) {
                item.default_request.entry(k.clone()).or_insert(*q);
            }
        }
        item
    }
}

/// The store prefix of the LimitRanges in `ns`.
fn limit_ranges_in(ns: &str) -> ApiResult<String> {
    let res = registry::lookup("", "v1", "limitranges")
        .ok_or_else(|| ApiError::internal("limitranges are not registered"))?;
    Ok(res.prefix(Some(ns)))
}

/// The items of every LimitRange in `ns`.
async fn items(app: &App, reads: &Reads, ns: &str) -> ApiResult<Vec<Item>> {
    let (lrs, _) = reads.list(app, &limit_ranges_in(ns)?).await?;
    Ok(lrs
        .iter()
        .flat_map(|(lr, _)| {
            lr.pointer("/spec/limits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .map(|v| Item::parse(&v))
        .collect())
}

/// Sets missing limits and requests of every container from the Container
/// items; returns the annotation text (empty if nothing was set).
pub fn apply_defaults(pod: &mut Value, items: &[Item]) -> String {
    let mut limits = ResourceList::new();
    let mut requests = ResourceList::new();
    for it in items.iter().filter(|i| i.kind == "Container") {
        limits.extend(it.default.clone());
        requests.extend(it.default_request.clone());
    }
    if limits.is_empty() && requests.is_empty() {
        return String::new();
    }
    let mut notes = Vec::new();
    for (list, what) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        let Some(Value::Array(cs)) = pod.pointer_mut(&format!("/spec/{list}")) else {
            continue;
        };
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if !c.get("resources").is_some_and(Value::is_object) {
                c.insert("resources".into(), json!({}));
            }
            let Some(r) = c.get_mut("resources").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut set = |field: &str, defaults: &ResourceList| -> Vec<String> {
                if !r.get(field).is_some_and(Value::is_object) {
                    r.insert(field.to_string(), json!({}));
                }
                let mut done = Vec::new();
                if let Some(m) = r.get_mut(field).and_then(Value::as_object_mut) {
                    for (k, q) in defaults {
                        if !m.contains_key(k) {
                            m.insert(k.clone(), json!(q.to_string()));
                            done.push(k.clone());
                        }
                    }
                }
                if r.get(field)
                    .and_then(Value::as_object)
                    .is_some_and(|m| m.is_empty())
                {
                    r.remove(field);
                }
                done
            };
            let set_requests = set("requests", &requests);
            let set_limits = set("limits", &limits);
            if !set_requests.is_empty() {
                notes.push(format!(
                    "{} request for {what} {name}",
                    set_requests.join(", ")
                ));
            }
            if !set_limits.is_empty() {
                notes.push(format!("{} limit for {what} {name}", set_limits.join(", ")));
            }
        }
    }
    if notes.is_empty() {
        return String::new();
    }
    let text = format!("LimitRanger plugin set: {}", notes.join("; "));
    let m = crate::object::meta_mut(pod);
    if !m.get("annotations").is_some_and(Value::is_object) {
        m.insert("annotations".into(), json!({}));
    }
    if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
        a.insert(ANNOTATION.into(), json!(text));
    }
    text
}

fn min_constraint(
    kind: &str,
    res: &str,
    enforced: &Quantity,
    req: Option<&Quantity>,
    lim: Option<&Quantity>,
) -> Option<String> {
    let Some(req) = req else {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}.  No request is specified"
        ));
    };
    if req < enforced {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}, but request is {req}"
        ));
    }
    match lim {
        Some(lim) if lim < enforced => Some(format!(
            "minimum {res} usage per {kind} is {enforced}, but limit is {lim}"
        )),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    res: &str,
    enforced: &Quantity,
    req: Option<&Quantity>,
    lim: Option<&Quantity>,
) -> Option<String> {
    let Some(lim) = lim else {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}.  No limit is specified"
        ));
    };
    if lim > enforced {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but limit is {lim}"
        ));
    }
    match req {
        Some(req) if req > enforced => Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but request is {req}"
        )),
        _ => None,
    }
}

fn ratio_constraint(
    kind: &str,
    res: &str,
    enforced: &Quantity,
    req: Option<&Quantity>,
    lim: Option<&Quantity>,
) -> Option<String> {
    let Some(req) = req.filter(|r| !r.is_zero()) else {
        return Some(format!("{res} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"));
    };
    let Some(lim) = lim.filter(|l| !l.is_zero()) else {
        return Some(format!("{res} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"));
    };
    let observed = lim.as_f64() / req.as_f64();
    (observed > enforced.as_f64()).then(|| {
        format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}"
        )
    })
}

/// Checks one set of requests and limits against an item.
fn check(kind: &str, item: &Item, req: &ResourceList, lim: &ResourceList, errs: &mut Vec<String>) {
    for (res, q) in &item.min {
        errs.extend(min_constraint(kind, res, q, req.get(res), lim.get(res)));
    }
    for (res, q) in &item.max {
        errs.extend(max_constraint(kind, res, q, req.get(res), lim.get(res)));
    }
    for (res, q) in &item.ratio {
        errs.extend(ratio_constraint(kind, res, q, req.get(res), lim.get(res)));
    }
}

/// Every violation of the items by the pod, in Kubernetes' words.
pub fn violations(pod: &Value, items: &[Item]) -> ApiResult<Vec<String>> {
    let cs: Vec<ContainerResources> = resources::containers(pod)?;
    let mut errs = Vec::new();
    for item in items {
        match item.kind.as_str() {
            "Container" => {
                for c in &cs {
                    check("Container", item, &c.requests, &c.limits, &mut errs);
                }
            }
            "Pod" => {
                let req = resources::pod_requests(pod, &cs)?;
                let lim = resources::pod_limits(pod, &cs)?;
                check("Pod", item, &req, &lim, &mut errs);
            }
            _ => {}
        }
    }
    Ok(errs)
}

/// Kubernetes' aggregate of errors: one as it is, several in brackets.
pub fn aggregate(errs: &[String]) -> String {
    match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

fn pod_namespace(attrs: &Attributes) -> Option<String> {
    attrs
        .namespace
        .clone()
        .filter(|_| attrs.is_core_create("Pod"))
}

impl Plugin for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    fn reads(&self, attrs: &Attributes) -> Vec<Read> {
        let prefix = pod_namespace(attrs).and_then(|ns| limit_ranges_in(&ns).ok());
        prefix.map(Read::Prefix).into_iter().collect()
    }

    fn admit<'a>(
        &'a self,
        app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let Some(ns) = pod_namespace(attrs) else {
                return Ok(());
            };
            let items = items(app, &attrs.reads, &ns).await?;
            apply_defaults(&mut attrs.object, &items);
            Ok(())
        })
    }

    fn validate<'a>(
        &'a self,
        app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let Some(ns) = pod_namespace(attrs) else {
                return Ok(());
            };
            let items = items(app, &attrs.reads, &ns).await?;
            let errs = violations(&attrs.object, &items)?;
            if errs.is_empty() {
                Ok(())
            } else {
                Err(attrs.forbidden(aggregate(&errs)))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lr_items(v: Value) -> Vec<Item> {
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(Item::parse)
            .collect()
    }

    #[test]
    fn defaults_fill_missing_requests_and_limits() {
        let items = lr_items(json!([{"type": "Container",
            "default": {"cpu": "500m", "memory": "128Mi"},
            "defaultRequest": {"cpu": "100m"}}]));
        // defaultRequest.memory comes from default.memory.
        assert_eq!(
            resources::pretty(&items[0].default_request),
            "cpu=100m,memory=128Mi"
        );
        let mut pod = json!({"metadata": {}, "spec": {"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}},
        ]}});
        let note = apply_defaults(&mut pod, &items);
        let a = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(a["limits"], json!({"cpu": "500m", "memory": "128Mi"}));
        assert_eq!(a["requests"], json!({"cpu": "100m", "memory": "128Mi"}));
        let b = &pod["spec"]["containers"][1]["resources"];
        assert_eq!(b["limits"], json!({"cpu": "1", "memory": "128Mi"}));
        assert_eq!(
            note,
            "LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a; memory request for container b; memory limit for container b"
        );
        assert_eq!(pod["metadata"]["annotations"][ANNOTATION], json!(note));
    }

    #[test]
    fn max_defaults_the_limit_and_bounds_it() {
        let items = lr_items(
            json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "10Mi"}}]),
        );
        assert_eq!(resources::pretty(&items[0].default), "cpu=1");
        let pod = json!({"spec": {"containers": [{"name": "a", "resources": {
            "limits": {"cpu": "2"}, "requests": {"cpu": "2", "memory": "5Mi"}}}]}});
        assert_eq!(
            violations(&pod, &items).expect("checked"),
            [
                "minimum memory usage per Container is 10Mi, but request is 5Mi",
                "maximum cpu usage per Container is 1, but limit is 2",
            ]
        );
        let ok = json!({"spec": {"containers": [{"name": "a", "resources": {
            "limits": {"cpu": "500m"}, "requests": {"cpu": "500m", "memory": "10Mi"}}}]}});
        assert!(violations(&ok, &items).expect("checked").is_empty());
    }

    #[test]
    fn ratio_and_pod_totals() {
        let items = lr_items(json!([
            {"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}},
            {"type": "Pod", "max": {"memory": "1Gi"}},
        ]));
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "768Mi"}, "requests": {"cpu": "250m"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "1"}}},
        ]}});
        let errs = violations(&pod, &items).expect("checked");
        assert_eq!(
            errs,
            [
                "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000",
                "maximum memory usage per Pod is 1Gi, but limit is 1280Mi",
            ]
        );
        assert_eq!(aggregate(&errs[..1]), errs[0]);
        assert!(aggregate(&errs).starts_with("[cpu max"));
    }
}
