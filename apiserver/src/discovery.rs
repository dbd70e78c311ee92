//! Discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`.
//! `/api` and `/apis` answer in the aggregated form (`apidiscovery.k8s.io/v2`
//! `APIGroupDiscoveryList`: every resource in one response) when the Accept
//! header prefers exactly that (kubectl ≥ 1.30 does), else in the legacy
//! form, which every kubectl understands; a request that accepts only other
//! aggregated versions gets 406.

use serde_json::{json, Value};

use crate::registry;
use crate::status::{ApiError, ApiResult};

/// The Kubernetes version keel's API corresponds to.
pub const KUBE_MINOR: &str = "32";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-keel.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// Checks that `accept` allows a plain JSON answer (406 otherwise).
pub fn require_plain_json(accept: Option<&str>) -> ApiResult<()> {
    let Some(accept) = accept else { return Ok(()) };
    if accept.trim().is_empty() {
        return Ok(());
    }
    let ok = accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let plain =
            parts.all(|p| !p.starts_with("as=") && !p.starts_with("g=") && !p.starts_with("v="));
        matches!(media, "application/json" | "*/*" | "application/*") && plain
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_acceptable(format!(
            "only the legacy discovery form is served as application/json; the Accept header {accept:?} allows none of it"
        )))
    }
}

/// The media type of aggregated discovery.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// True if the Accept header's first choice is aggregated discovery v2.
pub fn wants_aggregated(accept: Option<&str>) -> bool {
    let Some(first) = accept.and_then(|a| a.split(',').next()) else {
        return false;
    };
    let mut parts = first.split(';').map(str::trim);
    if parts.next() != Some("application/json") {
        return false;
    }
    let params: Vec<&str> = parts.collect();
    params.contains(&"g=apidiscovery.k8s.io")
        && params.contains(&"v=v2")
        && params.contains(&"as=APIGroupDiscoveryList")
}

/// Kubernetes' version priority: GA before beta before alpha, higher
/// numbers first, then other names alphabetically.
fn version_key(v: &str) -> (u8, i64, i64, String) {
    let parse = |s: &str| -> Option<(i64, u8, i64)> {
        let rest = s.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: i64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((major, 0, 0));
        }
        for (word, rank) in [("beta", 1u8), ("alpha", 2u8)] {
            if let Some(n) = tail.strip_prefix(word) {
                return Some((major, rank, n.parse().ok()?));
            }
        }
        None
    };
    match parse(v) {
        Some((major, rank, minor)) => (rank, -major, -minor, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

/// The served groups, each with its versions (preferred first), core
/// first, in table order.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for (g, v) in registry::group_versions() {
        match out.iter_mut().find(|(x, _)| *x == g) {
            Some((_, vs)) => vs.push(v),
            None => out.push((g, vec![v])),
        }
    }
    for (_, vs) in &mut out {
        vs.sort_by_key(|v| version_key(v));
    }
    out
}

/// `/api` (`core`) or `/apis` in the aggregated form.
pub fn aggregated(core: bool) -> Value {
    let mut items = Vec::new();
    for (g, vs) in groups() {
        if g.is_empty() != core {
            continue;
        }
        let mut versions = Vec::new();
        for v in vs {
            let mut resources = Vec::new();
            for r in registry::resources_of(g, v) {
                let kind = |k: &str| json!({"group": r.group, "version": r.version, "kind": k});
                let mut subs = Vec::new();
                if r.status {
                    subs.push(json!({"subresource": "status", "responseKind": kind(r.kind), "verbs": ["get", "patch", "update"]}));
                }
                if r.scale {
                    subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
                }
                if r.kind == "Pod" {
                    subs.push(json!({"subresource": "binding", "responseKind": {"group": "", "version": "v1", "kind": "Binding"}, "verbs": ["create"]}));
                    subs.push(json!({"subresource": "eviction", "responseKind": {"group": "policy", "version": "v1", "kind": "Eviction"}, "verbs": ["create"]}));
                    subs.push(json!({"subresource": "log", "responseKind": {"group": "", "version": "v1", "kind": "Pod"}, "verbs": ["get"]}));
                }
                if r.kind == "ServiceAccount" {
                    subs.push(json!({"subresource": "token", "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, "verbs": ["create"]}));
                }
                let mut e = json!({
                    "resource": r.plural,
                    "responseKind": kind(r.kind),
                    "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": r.singular,
                    "verbs": r.verbs(),
                });
                if !r.short_names.is_empty() {
                    e["shortNames"] = json!(r.short_names);
                }
                if !r.categories.is_empty() {
                    e["categories"] = json!(r.categories);
                }
                if !subs.is_empty() {
                    e["subresources"] = Value::Array(subs);
                }
                resources.push(e);
            }
            versions.push(json!({"version": v, "resources": resources, "freshness": "Current"}));
        }
        items.push(json!({
            "metadata": {"name": g},
            "versions": versions,
        }));
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`.
pub fn api_groups() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .filter_map(|(g, vs)| api_group_of(g, &vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    let (g, vs) = groups()
        .into_iter()
        .find(|(g, _)| *g == group && !g.is_empty())?;
    let mut out = api_group_of(g, &vs)?;
    out["kind"] = json!("APIGroup");
    out["apiVersion"] = json!("v1");
    Some(out)
}

/// One group's entry: its versions, the first preferred.
fn api_group_of(g: &str, vs: &[&str]) -> Option<Value> {
    let list: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = list.first()?.clone();
    Some(json!({"name": g, "versions": list, "preferredVersion": preferred}))
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in registry::resources_of(group, version) {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        resources.push(e);
        if r.kind == "Pod" {
            resources.push(
                json!({"name": "pods/binding", "singularName": "", "namespaced": true,
                "kind": "Binding", "verbs": ["create"]}),
            );
            resources.push(
                json!({"name": "pods/eviction", "singularName": "", "namespaced": true,
                "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}),
            );
            resources.push(
                json!({"name": "pods/log", "singularName": "", "namespaced": true,
                "kind": "Pod", "verbs": ["get"]}),
            );
        }
        if r.kind == "ServiceAccount" {
            resources.push(
                json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}),
            );
        }
        if r.scale {
            resources.push(json!({
                "name": format!("{}/scale", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(require_plain_json(Some(kubectl)).is_ok());
        assert!(require_plain_json(None).is_ok());
        assert!(require_plain_json(Some("*/*")).is_ok());
        let only = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        assert_eq!(require_plain_json(Some(only)).expect_err("406").code, 406);
    }

    #[test]
    fn aggregated_discovery() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(wants_aggregated(Some(kubectl)));
        assert!(!wants_aggregated(Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")));
        assert!(!wants_aggregated(Some("application/json")));
        let apis = aggregated(false);
        let names: Vec<&str> = apis["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["metadata"]["name"].as_str())
            // Other tests may serve custom groups meanwhile.
            .filter(|n| !n.ends_with("keel.dev"))
            .collect();
        assert_eq!(
            names,
            [
                "apps",
                "batch",
                "coordination.k8s.io",
                "autoscaling",
                "networking.k8s.io",
                "scheduling.k8s.io",
                "admissionregistration.k8s.io",
                "apiextensions.k8s.io",
                "rbac.authorization.k8s.io",
                "authentication.k8s.io",
                "authorization.k8s.io"
            ]
        );
        let core = aggregated(true);
        let pods = &core["items"][0]["versions"][0]["resources"][1];
        assert_eq!(
            (pods["resource"].as_str(), pods["scope"].as_str()),
            (Some("pods"), Some("Namespaced"))
        );
    }

    #[test]
    fn versions_sort_by_kubernetes_priority() {
        let mut vs = vec!["v1alpha1", "foo", "v1beta1", "v2", "v1", "v1beta2", "bar"];
        vs.sort_by_key(|v| version_key(v));
        assert_eq!(
            vs,
            ["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "bar", "foo"]
        );
    }

    #[test]
    fn resource_lists() {
        let core = resource_list("", "v1").expect("core");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"configmaps")
        );
        let log = core["resources"]
            .as_array()
            .expect("array")
            .iter()
            .find(|r| r["name"] == "pods/log")
            .expect("pods/log");
        assert_eq!(
            (&log["kind"], &log["verbs"], &log["namespaced"]),
            (&json!("Pod"), &json!(["get"]), &json!(true))
        );
        let core = aggregated(true);
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["resource"] == "pods")
            .expect("pods");
        let sub = pods["subresources"]
            .as_array()
            .expect("subresources")
            .iter()
            .find(|s| s["subresource"] == "log")
            .expect("log");
        assert_eq!(
            (&sub["responseKind"], &sub["verbs"]),
            (
                &json!({"group": "", "version": "v1", "kind": "Pod"}),
                &json!(["get"])
            )
        );
        assert!(resource_list("apps", "v2").is_none());
        let builtin = api_groups()["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter(|g| !g["name"].as_str().unwrap_or("").ends_with("keel.dev"))
            .count();
        assert_eq!(builtin, 11);
        let authz = resource_list("authorization.k8s.io", "v1").expect("authorization");
        assert_eq!(
            authz["resources"][0]["verbs"],
            serde_json::json!(["create"])
        );
    }
}
