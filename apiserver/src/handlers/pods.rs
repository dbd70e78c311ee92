//! Pod subresources: `binding` (the scheduler assigns a node) and
//! `eviction` (a polite delete; no disruption budgets yet, so it always
//! succeeds unless the pod is gone).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::read::read_object;
use super::write::{delete_or_mark, parse_body, to_store, Deletion};
use super::{json_response, store_err, App, Ctx};
use crate::object;
use crate::status::{success, ApiError, ApiResult};
use crate::store::Cas;

fn created(details: Value) -> Response {
    let mut s = success(details);
    s["code"] = json!(201);
    json_response(StatusCode::CREATED, &s)
}

/// The body of a POST to `pods/<name>/<sub>`: parsed, and refused unless its
/// `kind` (when given) is `kind`.
fn subresource_body(ctx: &Ctx, sub: &str, kind: &str, what: &str) -> ApiResult<Value> {
    let body = parse_body(ctx)?;
    if body
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != kind)
    {
        return Err(ApiError::bad_request(format!(
            "the body of a pods/{sub} request must be {what}"
        )));
    }
    Ok(body)
}

/// POST `pods/<name>/binding`: sets `spec.nodeName` of an unbound pod.
pub async fn bind(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or("");
    let body = subresource_body(ctx, "binding", "Binding", "a Binding")?;
    let node = body
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::new(422, "Invalid", "Binding.target.name: Required value"))?
        .to_string();
    if ctx.dry_run()? {
        return Ok(created(json!({"name": name, "kind": "pods"})));
    }
    for _ in 0..5 {
        let (pod, rev) = read_object(app, &t.key())
            .await?
            .ok_or_else(|| ApiError::not_found(t.res, name))?;
        if let Some(uid) = body.pointer("/metadata/uid").and_then(Value::as_str) {
            if object::meta_str(&pod, "uid") != Some(uid) {
                return Err(ApiError::conflict(
                    t.res,
                    name,
                    "the pod's UID does not match the binding",
                ));
            }
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict(t.res, name, "the pod is being deleted"));
        }
        if let Some(bound) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                t.res,
                name,
                &format!("pod {name} is already assigned to node \"{bound}\""),
            ));
        }
        let mut new = pod.clone();
        if !new.get("spec").is_some_and(Value::is_object) {
            new["spec"] = json!({});
        }
        new["spec"]["nodeName"] = json!(node);
        match app
            .store
            .update(&t.key(), to_store(&new)?, rev)
            .await
            .map_err(store_err)?
        {
            Cas::Done(_) => return Ok(created(json!({"name": name, "kind": "pods"}))),
            Cas::Failed(None) => return Err(ApiError::not_found(t.res, name)),
            Cas::Failed(Some(_)) => continue,
        }
    }
    Err(ApiError::conflict(
        t.res,
        name,
        "too many concurrent writes",
    ))
}

/// POST `pods/<name>/eviction`: deletes the pod (gracefully, as a delete does).
pub async fn evict(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or("");
    let body = subresource_body(ctx, "eviction", "Eviction", "an Eviction")?;
    let grace = body
        .pointer("/deleteOptions/gracePeriodSeconds")
        .and_then(Value::as_i64);
    let dry = ctx.dry_run()?
        || body
            .pointer("/deleteOptions/dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    for _ in 0..5 {
        let (pod, rev) = read_object(app, &t.key())
            .await?
            .ok_or_else(|| ApiError::not_found(t.res, name))?;
        if dry {
            return Ok(created(json!({"name": name, "kind": "pods"})));
        }
        match delete_or_mark(app, t.res, &t.key(), &pod, rev, grace, None).await? {
            Deletion::Removed | Deletion::Terminating(_) => {
                return Ok(created(json!({"name": name, "kind": "pods"})))
            }
            Deletion::Conflict => continue,
        }
    }
    Err(ApiError::conflict(
        t.res,
        name,
        "too many concurrent writes",
    ))
}
