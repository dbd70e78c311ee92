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

/// The Scale view of an object.
pub fn to_scale(obj: &Value) -> Value {
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
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector(obj),
        },
    })
}

/// GET, PUT or PATCH of `<resource>/<name>/scale`.
pub async fn handle(app: &App, ctx: &Ctx, verb: &str) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or("");
    let dry = ctx.dry_run()?;
    for _ in 0..5 {
        let (obj, rev) = read_object(app, &t.key())
            .await?
            .ok_or_else(|| ApiError::not_found(t.res, name))?;
        let scale = to_scale(&obj);
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
        let unchanged = obj.pointer("/spec/replicas").and_then(Value::as_i64) == Some(replicas);
        let mut new = obj.clone();
        if let Some(m) = new.as_object_mut() {
            let spec = m.entry("spec").or_insert_with(|| json!({}));
            if !spec.is_object() {
                *spec = json!({});
            }
            if let Some(spec) = spec.as_object_mut() {
                spec.insert("replicas".into(), json!(replicas));
            }
        }
        if unchanged || dry {
            return Ok(json_response(StatusCode::OK, &to_scale(&new)));
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
                return Ok(json_response(StatusCode::OK, &to_scale(&new)));
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
