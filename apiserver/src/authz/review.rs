//! The `authorization.k8s.io/v1` endpoints (`kubectl auth can-i`):
//! SelfSubjectAccessReview (may I?), SubjectAccessReview (may this user?),
//! LocalSubjectAccessReview (the same, in one namespace) and
//! SelfSubjectRulesReview (what may I do in this namespace? `--list`).
//! Nothing here is stored.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::rbac::PolicyRule;
use super::{Attributes, Decision, SUPERUSER_GROUP};
use crate::auth::User;
use crate::handlers::write::parse_body;
use crate::handlers::{json_response, App, Ctx};
use crate::status::{ApiError, ApiResult, Cause};

/// The group-version of these kinds.
pub const GROUP_VERSION: &str = "authorization.k8s.io/v1";

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn invalid(ctx: &Ctx, field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        ctx.target.res,
        "",
        vec![Cause {
            reason: "FieldValueRequired",
            message: message.into(),
            field: field.into(),
        }],
    )
}

/// The attributes a review's `spec` asks about, for `user`.
fn spec_attributes(ctx: &Ctx, spec: &Value, user: User) -> ApiResult<Attributes> {
    let res = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let non = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    match (res, non) {
        (Some(r), None) => Ok(Attributes {
            user,
            verb: s(r, "/verb").into(),
            resource_request: true,
            namespace: s(r, "/namespace").into(),
            api_group: s(r, "/group").into(),
            api_version: s(r, "/version").into(),
            resource: s(r, "/resource").into(),
            subresource: s(r, "/subresource").into(),
            name: s(r, "/name").into(),
            path: String::new(),
        }),
        (None, Some(n)) => Ok(Attributes {
            user,
            verb: s(n, "/verb").into(),
            path: s(n, "/path").into(),
            ..Attributes::default()
        }),
        (Some(_), Some(_)) => Err(invalid(
            ctx,
            "spec.nonResourceAttributes",
            "Invalid value: \"null\": cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => Err(invalid(
            ctx,
            "spec.resourceAttributes",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// Fills in `status` and answers 201.
async fn answer(app: &App, mut obj: Value, a: &Attributes, kind: &str) -> ApiResult<Response> {
    let status = match app.authz.authorize(app, a).await? {
        Decision::Allow(reason) => {
            let mut st = json!({"allowed": true});
            if !reason.is_empty() {
                st["reason"] = json!(reason);
            }
            st
        }
        Decision::Deny(reason) => json!({"allowed": false, "denied": true, "reason": reason}),
        Decision::NoOpinion(reason) => {
            let mut st = json!({"allowed": false});
            if !reason.is_empty() {
                st["reason"] = json!(reason);
            }
            st
        }
    };
    obj["status"] = status;
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!(GROUP_VERSION);
    if obj.get("metadata").is_none_or(|m| !m.is_object()) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    Ok(json_response(StatusCode::CREATED, &obj))
}

/// POST `selfsubjectaccessreviews`.
pub async fn self_subject_access_review(app: &App, ctx: &Ctx, user: &User) -> ApiResult<Response> {
    let mut obj = parse_body(ctx)?;
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let a = spec_attributes(ctx, &spec, user.clone())?;
    // Kubernetes echoes nothing about the user in a self review.
    obj["spec"] = spec;
    answer(app, obj, &a, "SelfSubjectAccessReview").await
}

/// The user a SubjectAccessReview names.
fn spec_user(ctx: &Ctx, spec: &Value) -> ApiResult<User> {
    let name = s(spec, "/user").to_string();
    let groups = strings(spec.get("groups"));
    if name.is_empty() && groups.is_empty() {
        return Err(invalid(
            ctx,
            "spec.user",
            "Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    let extra: BTreeMap<String, Vec<String>> = spec
        .get("extra")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), strings(Some(v))))
                .collect()
        })
        .unwrap_or_default();
    Ok(User {
        name,
        groups,
        authenticated: true,
        uid: s(spec, "/uid").to_string(),
        extra,
    })
}

/// POST `subjectaccessreviews` (cluster) or
/// `namespaces/<ns>/localsubjectaccessreviews`.
pub async fn subject_access_review(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let obj = parse_body(ctx)?;
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let user = spec_user(ctx, &spec)?;
    let a = spec_attributes(ctx, &spec, user)?;
    match ctx.target.namespace.as_deref() {
        Some(ns) => {
            if !a.resource_request || a.namespace != ns {
                return Err(ApiError::bad_request(format!(
                    "spec.resourceAttributes.namespace must match namespace: {ns}"
                )));
            }
            answer(app, obj, &a, "LocalSubjectAccessReview").await
        }
        None => answer(app, obj, &a, "SubjectAccessReview").await,
    }
}

fn resource_rule(r: &PolicyRule) -> Value {
    let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
    if !r.resource_names.is_empty() {
        v["resourceNames"] = json!(r.resource_names);
    }
    v
}

/// POST `selfsubjectrulesreviews`: the requester's rules in `spec.namespace`.
pub async fn self_subject_rules_review(app: &App, ctx: &Ctx, user: &User) -> ApiResult<Response> {
    let mut obj = parse_body(ctx)?;
    let ns = s(&obj, "/spec/namespace").to_string();
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    let mut errors = Vec::new();
    if user.in_group(SUPERUSER_GROUP) || app.authz.always_allows() {
        resource_rules.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        non_resource_rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    if app.authz.rbac_enabled() {
        let policy = app.authz.policy.policy(app).await?;
        let (found, errs) = policy.rules_for(user, &ns);
        errors = errs;
        for f in found {
            // Each rule once (a superuser's cluster-admin rules repeat `*`).
            if !f.rule.resources.is_empty() {
                let r = resource_rule(f.rule);
                if !resource_rules.contains(&r) {
                    resource_rules.push(r);
                }
            }
            if !f.rule.non_resource_urls.is_empty() {
                let r = json!({"verbs": f.rule.verbs, "nonResourceURLs": f.rule.non_resource_urls});
                if !non_resource_rules.contains(&r) {
                    non_resource_rules.push(r);
                }
            }
        }
    }
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        // A webhook's rules cannot be listed.
        "incomplete": app.authz.webhook_enabled(),
    });
    if !errors.is_empty() {
        status["evaluationError"] = json!(errors.join(", "));
    }
    obj["status"] = status;
    obj["kind"] = json!("SelfSubjectRulesReview");
    obj["apiVersion"] = json!(GROUP_VERSION);
    obj["metadata"] = json!({"creationTimestamp": null});
    Ok(json_response(StatusCode::CREATED, &obj))
}
