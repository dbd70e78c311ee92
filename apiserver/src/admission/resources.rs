//! Resource lists (`{"cpu": "100m", "memory": "64Mi"}`) and the requests
//! and limits of pods, as LimitRanger and ResourceQuota read them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::quantity::{self, Quantity};
use crate::status::{ApiError, ApiResult};

/// Resource name → quantity, sorted by name.
pub type ResourceList = BTreeMap<String, Quantity>;

/// Parses a resource list; `field` names it in the error (`spec.hard`).
pub fn parse_list(v: Option<&Value>, field: &str) -> ApiResult<ResourceList> {
    let mut out = ResourceList::new();
    let Some(m) = v.and_then(Value::as_object) else {
        return Ok(out);
    };
    for (k, q) in m {
        let parsed = quantity::from_json(q)
            .map_err(|e| ApiError::bad_request(format!("{field}[{k}]: Invalid value: {q}: {e}")))?;
        out.insert(k.clone(), parsed);
    }
    Ok(out)
}

/// A resource list as JSON (canonical quantity strings).
pub fn to_json(list: &ResourceList) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, q)| (k.clone(), Value::String(q.to_string())))
            .collect::<Map<String, Value>>(),
    )
}

/// `a=1,b=2` (Kubernetes' `prettyPrint` of a resource list).
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, q)| format!("{k}={q}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One container's resources.
#[derive(Debug, Clone)]
pub struct ContainerResources {
    /// The container name.
    pub name: String,
    /// An init container.
    pub init: bool,
    /// `resources.requests`.
    pub requests: ResourceList,
    /// `resources.limits`.
    pub limits: ResourceList,
}

/// The resources of every container and init container of a pod.
pub fn containers(pod: &Value) -> ApiResult<Vec<ContainerResources>> {
    let mut out = Vec::new();
    for (list, init) in [("containers", false), ("initContainers", true)] {
        let Some(cs) = pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for (i, c) in cs.iter().enumerate() {
            let field = format!("spec.{list}[{i}].resources");
            out.push(ContainerResources {
                name: c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                init,
                requests: parse_list(
                    c.pointer("/resources/requests"),
                    &format!("{field}.requests"),
                )?,
                limits: parse_list(c.pointer("/resources/limits"), &format!("{field}.limits"))?,
            });
        }
    }
    Ok(out)
}

fn add_into(total: &mut ResourceList, list: &ResourceList) -> ApiResult<()> {
    for (k, q) in list {
        let sum = match total.get(k) {
            Some(t) => t.checked_add(*q),
            None => Ok(*q),
        }
        .map_err(|e| ApiError::bad_request(format!("{k}: {e}")))?;
        total.insert(k.clone(), sum);
    }
    Ok(())
}

/// The pod's total: the sum over its containers, or the largest init
/// container's value where that is larger (init containers run one at a
/// time), plus `spec.overhead`.
fn total(
    pod: &Value,
    cs: &[ContainerResources],
    pick: fn(&ContainerResources) -> &ResourceList,
) -> ApiResult<ResourceList> {
    let mut sum = ResourceList::new();
    for c in cs.iter().filter(|c| !c.init) {
        add_into(&mut sum, pick(c))?;
    }
    for c in cs.iter().filter(|c| c.init) {
        for (k, q) in pick(c) {
            if sum.get(k).is_none_or(|s| q > s) {
                sum.insert(k.clone(), *q);
            }
        }
    }
    add_into(
        &mut sum,
        &parse_list(pod.pointer("/spec/overhead"), "spec.overhead")?,
    )?;
    Ok(sum)
}

/// The pod's requests (`PodRequests`).
pub fn pod_requests(pod: &Value, cs: &[ContainerResources]) -> ApiResult<ResourceList> {
    total(pod, cs, |c| &c.requests)
}

/// The pod's limits (`PodLimits`).
pub fn pod_limits(pod: &Value, cs: &[ContainerResources]) -> ApiResult<ResourceList> {
    total(pod, cs, |c| &c.limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_totals_take_the_largest_init_container() {
        let pod = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m"}, "limits": {"cpu": "1"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "500m", "memory": "32Mi"}}}],
            "overhead": {"cpu": "10m"},
        }});
        let cs = containers(&pod).expect("containers");
        let req = pod_requests(&pod, &cs).expect("requests");
        assert_eq!(pretty(&req), "cpu=510m,memory=64Mi");
        let lim = pod_limits(&pod, &cs).expect("limits");
        assert_eq!(pretty(&lim), "cpu=1010m");
        let bad = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "lots"}}}]}});
        let err = containers(&bad).expect_err("bad quantity");
        assert!(
            err.message
                .contains("spec.containers[0].resources.limits[cpu]"),
            "{}",
            err.message
        );
    }
}
