//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! Kubernetes' strategic merge patch.
//!
//! The strategic merge patch knows the merge keys of the common built-in
//! list fields (containers, env, volumes by `name`; volumeMounts by
//! `mountPath`; container ports by `containerPort`, service ports by `port`;
//! conditions by `type`; ...) and the directives `$patch: replace|delete|merge`,
//! `$setElementOrder/<field>`, `$retainKeys` and
//! `$deleteFromPrimitiveList/<field>`. Lists it has no merge key for are
//! replaced whole, as Kubernetes does for atomic lists.

use serde_json::{Map, Value};

use crate::status::{ApiError, ApiResult};

/// The patch types a PATCH request can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`: server-side apply, done by
    /// [`crate::apply`] (it needs the object's managed fields), not by
    /// [`apply`].
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type`, or a 415.
    pub fn from_content_type(ct: &str) -> ApiResult<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" => Ok(PatchType::Apply),
            _ => Err(ApiError::unsupported_media_type(ct)),
        }
    }
}

/// Applies `body` (a patch of type `pt`) to `doc`, returning the new document.
pub fn apply(pt: PatchType, doc: &Value, body: &[u8]) -> ApiResult<Value> {
    match pt {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            let mut out = doc.clone();
            json_patch::patch(&mut out, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the JSON patch could not be applied: {e}"),
                )
            })?;
            Ok(out)
        }
        PatchType::Apply => Err(ApiError::internal(
            "apply patches are handled by server-side apply (crate::apply)",
        )),
        PatchType::Merge => {
            let p: Value = parse_object(body)?;
            let mut out = doc.clone();
            json_patch::merge(&mut out, &p);
            Ok(out)
        }
        PatchType::Strategic => {
            let p: Value = parse_object(body)?;
            let mut out = doc.clone();
            strategic_merge(&mut out, &p);
            Ok(out)
        }
    }
}

fn parse_object(body: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    Ok(v)
}

/// The merge key of a list field, judged by its name and its elements.
fn merge_key(field: &str, elems: &[Value]) -> Option<&'static str> {
    let has = |k: &str| elems.iter().any(|e| e.get(k).is_some());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => Some("name"),
        "readinessGates" => Some("conditionType"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "taints" => Some("key"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" if has("containerPort") => Some("containerPort"),
        "ports" if has("port") => Some("port"),
        _ => None,
    }
}

/// List fields of primitives merged as sets (`patchStrategy: merge`).
fn primitive_merge(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

/// Applies a strategic merge patch object to `doc` in place.
pub fn strategic_merge(doc: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    if directive(patch) == Some("replace") {
        let mut clean = Value::Object(Map::new());
        let mut rest = p.clone();
        rest.remove("$patch");
        strategic_merge(&mut clean, &Value::Object(rest));
        *doc = clean;
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Some(d) = doc.as_object_mut() else {
        return;
    };
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (d.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() || directive(v) == Some("delete") {
            d.remove(k);
            continue;
        }
        let order = p
            .get(&format!("$setElementOrder/{k}"))
            .and_then(Value::as_array);
        match (d.get_mut(k), v) {
            (Some(cur @ Value::Object(_)), Value::Object(_)) => strategic_merge(cur, v),
            (Some(Value::Array(cur)), Value::Array(pv)) => merge_list(cur, pv, k, order),
            (_, Value::Object(_)) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge(&mut fresh, v);
                d.insert(k.clone(), fresh);
            }
            (_, Value::Array(pv)) => {
                let mut fresh = Vec::new();
                merge_list(&mut fresh, pv, k, order);
                d.insert(k.clone(), Value::Array(fresh));
            }
            _ => {
                d.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        d.retain(|k, _| keep.contains(&k.as_str()));
    }
}

fn merge_list(cur: &mut Vec<Value>, patch: &[Value], field: &str, order: Option<&Vec<Value>>) {
    if patch.iter().any(|e| directive(e) == Some("replace")) {
        cur.clear();
        for e in patch.iter().filter(|e| directive(e).is_none()) {
            let mut fresh = Value::Object(Map::new());
            strategic_merge(&mut fresh, e);
            cur.push(if e.is_object() { fresh } else { e.clone() });
        }
        return;
    }
    if primitive_merge(field) {
        for e in patch {
            if !cur.contains(e) {
                cur.push(e.clone());
            }
        }
        return;
    }
    let Some(key) = merge_key(field, patch).or_else(|| merge_key(field, cur)) else {
        *cur = patch.to_vec();
        return;
    };
    for e in patch {
        let Some(kv) = e.get(key) else {
            cur.push(e.clone());
            continue;
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(kv));
        match (directive(e), pos) {
            (Some("delete"), Some(_)) => cur.retain(|c| c.get(key) != Some(kv)),
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic_merge(&mut cur[i], e),
            (_, None) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge(&mut fresh, e);
                cur.push(fresh);
            }
        }
    }
    if let Some(order) = order {
        let rank = |v: &Value| {
            v.get(key)
                .and_then(|kv| order.iter().position(|o| o.get(key) == Some(kv)))
                .unwrap_or(usize::MAX)
        };
        cur.sort_by_key(rank);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: Value, patch: Value) -> Value {
        apply(PatchType::Strategic, &doc, patch.to_string().as_bytes()).expect("patch")
    }

    #[test]
    fn strategic_merges_containers_and_env_by_name() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "b", "image": "y"}
        ]}});
        // kubectl apply's patch for "remove env B, change image of a".
        let out = smp(
            doc,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "a", "image": "z",
                    "$setElementOrder/env": [{"name": "A"}],
                    "env": [{"$patch": "delete", "name": "B"}]}]
            }}),
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "a", "image": "z", "env": [{"name": "A", "value": "1"}]},
                {"name": "b", "image": "y"}
            ]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
                         "spec": {"ports": [{"port": 80, "name": "http"}], "args": ["1", "2"]}});
        let out = smp(
            doc,
            json!({
                "metadata": {"labels": {"a": null, "c": "3"},
                             "$deleteFromPrimitiveList/finalizers": ["x"], "finalizers": ["z"]},
                "spec": {"ports": [{"port": 443, "name": "https"}], "args": ["3"]}
            }),
        );
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}, "finalizers": ["y", "z"]},
            "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}], "args": ["3"]}})
        );
        let out = smp(
            json!({"spec": {"a": {"x": 1}, "b": 1}}),
            json!({"spec": {"a": {"$patch": "replace", "y": 2}, "$retainKeys": ["a"]}}),
        );
        assert_eq!(out, json!({"spec": {"a": {"y": 2}}}));
    }

    #[test]
    fn merge_and_json_patches() {
        let doc = json!({"a": {"b": 1, "c": 2}});
        let out = apply(PatchType::Merge, &doc, br#"{"a":{"b":null,"d":[1]}}"#).expect("merge");
        assert_eq!(out, json!({"a": {"c": 2, "d": [1]}}));
        let out = apply(
            PatchType::Json,
            &doc,
            br#"[{"op":"replace","path":"/a/b","value":5}]"#,
        )
        .expect("json");
        assert_eq!(out, json!({"a": {"b": 5, "c": 2}}));
        let err = apply(
            PatchType::Json,
            &doc,
            br#"[{"op":"test","path":"/a/b","value":9}]"#,
        )
        .expect_err("test fails");
        assert_eq!(err.code, 422);
        assert_eq!(
            apply(PatchType::Merge, &doc, b"[1]")
                .expect_err("array")
                .code,
            400
        );
        assert_eq!(
            PatchType::from_content_type("application/yaml")
                .expect_err("yaml")
                .code,
            415
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml").expect("apply"),
            PatchType::Apply
        );
    }
}
