//! The `/scale` subresource (`autoscaling/v1 Scale`) of deployments,
//! replica sets and stateful sets: a view of `spec.replicas` that `kubectl
//! scale` reads and patches. Writes are compare-and-swap on the parent.

use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::read::{parse_rv, read_object};
use super::{json_response, store_err, App, Ctx};
use crate::object::{self, meta_mut};
use crate::patch::{self, PatchType};
use crate::status::{ApiError, ApiResult, Cause};
use crate::store::Cas;

/// `spec.selector.matchLabels` as a selector string (`status.selector`).
fn selector(obj: &Value) -> String {
    obj.pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Where an object keeps what its Scale shows (JSON pointers).
#[derive(Debug, Clone)]
pub struct Paths {
    /// Desired replicas (`/spec/replicas`).
    pub spec: String,
    /// Observed replicas (`/status/replicas`).
    pub status: String,
    /// A selector string (custom resources' `labelSelectorPath`); `None`:
    /// `spec.selector.matchLabels`.
    pub selector: Option<String>,
}

/// `.spec.replicas` → `/spec/replicas`.
fn pointer(json_path: &str) -> String {
    format!("/{}", json_path.trim_start_matches('.').replace('.', "/"))
}

impl Paths {
    /// The paths of a resource: a custom resource's CRD declares them.
    pub fn of(res: &crate::registry::ResourceInfo) -> Paths {
        match crate::crd::registry::version_of(res).and_then(|v| v.scale.clone()) {
            Some(s) => Paths {
                spec: pointer(&s.spec),
                status: pointer(&s.status),
                selector: s.selector.as_deref().map(pointer),
            },
            None => Paths {
                spec: "/spec/replicas".into(),
                status: "/status/replicas".into(),
                selector: None,
            },
        }
    }
}

/// Sets the value at JSON pointer `ptr`, creating objects on the way.
fn set_at(obj: &mut Value, ptr: &str, v: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(m) = cur.as_object_mut() else { return };
        if i + 1 == parts.len() {
            m.insert((*p).to_string(), v);
            return;
        }
        cur = m.entry((*p).to_string()).or_insert_with(|| json!({}));
    }
}

/// The Scale view of an object.
pub fn to_scale(obj: &Value) -> Value {
    to_scale_at(
        obj,
        &Paths {
            spec: "/spec/replicas".into(),
            status: "/status/replicas".into(),
            selector: None,
        },
    )
}

/// The Scale view of an object whose replicas live at `paths`.
pub fn to_scale_at(obj: &Value, paths: &Paths) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let keep = [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ];
    let meta: serde_json::Map<String, Value> = meta
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": obj.pointer(&paths.spec).and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": obj.pointer(&paths.status).and_then(Value::as_i64).unwrap_or(0),
            "selector": match &paths.selector {
                Some(p) => obj.pointer(p).and_then(Value::as_str).unwrap_or("").to_string(),
                None => selector(obj),
            },
        },
    })
}

/// GET, PUT or PATCH of `<resource>/<name>/scale`.
pub async fn handle(app: &App, ctx: &Ctx, verb: &str) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or("");
    let dry = ctx.dry_run()?;
    let paths = Paths::of(t.res);
    for _ in 0..5 {
        let (obj, rev) = read_object(app, &t.key())
            .await?
            .ok_or_else(|| ApiError::not_found(t.res, name))?;
        let scale = to_scale_at(&obj, &paths);
        let (new_scale, precondition) = match verb {
            "get" => return Ok(json_response(StatusCode::OK, &scale)),
            "update" => {
                let body: Value = serde_json::from_slice(&ctx.body).map_err(|e| {
                    ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
                })?;
                let rv = parse_rv(
                    body.pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str),
                )?;
                (body, rv)
            }
            _ => {
                let pt =
                    PatchType::from_content_type(ctx.header(header::CONTENT_TYPE).unwrap_or(""))?;
                let patched = patch::apply(pt, &scale, &ctx.body)?;
                let rv = parse_rv(
                    patched
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str),
                )?;
                (patched, rv)
            }
        };
        if precondition.is_some_and(|p| p != rev) {
            return Err(ApiError::conflict(t.res, name, "the object has been modified; please apply your changes to the latest version and try again"));
        }
        let replicas = match new_scale.pointer("/spec/replicas").and_then(Value::as_i64) {
            Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    t.res,
                    name,
                    vec![Cause {
                        reason: "FieldValueInvalid",
                        message: "Invalid value: must be a non-negative integer".into(),
                        field: "spec.replicas".into(),
                    }],
                ))
            }
        };
        let unchanged = obj.pointer(&paths.spec).and_then(Value::as_i64) == Some(replicas);
        let mut new = obj.clone();
        set_at(&mut new, &paths.spec, json!(replicas));
        if unchanged || dry {
            return Ok(json_response(StatusCode::OK, &to_scale_at(&new, &paths)));
        }
        let generation = object::generation(&obj) + 1;
        let m = meta_mut(&mut new);
        m.insert("generation".into(), json!(generation));
        m.remove("resourceVersion");
        let bytes = serde_json::to_vec(&new)
            .map_err(|e| ApiError::internal(format!("encoding object: {e}")))?;
        match app.store.update(&t.key(), bytes, rev).await.map_err(store_err)? {
            Cas::Done(r) => {
                object::set_resource_version(&mut new, r);
                return Ok(json_response(StatusCode::OK, &to_scale_at(&new, &paths)));
            }
            Cas::Failed(None) => return Err(ApiError::not_found(t.res, name)),
            Cas::Failed(Some(_)) if precondition.is_some() => {
                return Err(ApiError::conflict(t.res, name, "the object has been modified; please apply your changes to the latest version and try again"))
            }
            Cas::Failed(Some(_)) => continue,
        }
    }
    Err(ApiError::conflict(
        t.res,
        name,
        "too many concurrent writes",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_view() {
        let d = json!({"metadata": {"name": "web", "namespace": "ns", "labels": {"a": "b"}, "resourceVersion": "5"},
                       "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}},
                       "status": {"replicas": 2}});
        let s = to_scale(&d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"], json!({"replicas": 2, "selector": "app=web"}));
        assert!(s["metadata"].get("labels").is_none());
        assert_eq!(s["metadata"]["resourceVersion"], "5");
    }
}
