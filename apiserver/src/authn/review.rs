//! The `authentication.k8s.io/v1` endpoints: SelfSubjectReview (`kubectl
//! auth whoami`), TokenReview (is this token valid, and whose is it) and
//! the `serviceaccounts/token` subresource (TokenRequest, `kubectl create
//! token`). Nothing here is stored.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::service_account::{
    Bound, ObjectRef, DEFAULT_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS,
};
use crate::auth::User;
use crate::handlers::read::read_object;
use crate::handlers::write::parse_body;
use crate::handlers::{json_response, App, Ctx};
use crate::status::{ApiError, ApiResult, Cause};
use crate::{object, registry};

/// The group-version of these kinds.
pub const GROUP_VERSION: &str = "authentication.k8s.io/v1";

/// `UserInfo` of a user.
pub fn user_info(u: &User) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

/// POST `selfsubjectreviews`: the requester's own user.
pub fn self_subject_review(user: &User) -> Response {
    json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectReview",
            "apiVersion": GROUP_VERSION,
            "metadata": {"creationTimestamp": object::now_rfc3339()},
            "status": {"userInfo": user_info(user)},
        }),
    )
}

/// The object a TokenRequest's `boundObjectRef` names (it must exist, with
/// the given uid if one is given), and the reference as echoed back.
async fn bound_object(app: &App, ns: &str, r: Option<&Value>) -> ApiResult<(Bound, Value)> {
    let Some(r) = r.filter(|r| !r.is_null()) else {
        return Ok((Bound::default(), Value::Null));
    };
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (kind, name, want_uid) = (s("kind"), s("name"), s("uid"));
    let plural = match kind.as_str() {
        "Pod" => "pods",
        "Secret" => "secrets",
        other => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for object of type {other:?}: only Pod and Secret are supported"
            )))
        }
    };
    let res = registry::lookup("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let (obj, _) = read_object(app, &res.key(Some(ns), &name))
        .await?
        .ok_or_else(|| ApiError::not_found(res, &name))?;
    let uid = object::meta_str(&obj, "uid").unwrap_or("").to_string();
    if !want_uid.is_empty() && want_uid != uid {
        return Err(ApiError::conflict(
            res,
            &name,
            &format!("the UID in the bound object reference ({want_uid}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"),
        ));
    }
    let oref = ObjectRef {
        name: name.clone(),
        uid: uid.clone(),
    };
    let bound = match plural {
        "pods" => Bound {
            pod: Some(oref),
            secret: None,
        },
        _ => Bound {
            pod: None,
            secret: Some(oref),
        },
    };
    Ok((
        bound,
        json!({"kind": kind, "apiVersion": "v1", "name": name, "uid": uid}),
    ))
}

/// POST `tokenreviews`: authenticates `spec.token`.
pub async fn token_review(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let mut obj = parse_body(ctx)?;
    let token = obj
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if token.is_empty() {
        return Err(ApiError::invalid(
            ctx.target.res,
            "",
            vec![Cause {
                reason: "FieldValueRequired",
                message: "Required value: token".into(),
                field: "spec.token".into(),
            }],
        ));
    }
    let status = match app.authn.authenticate_token(app, &token).await? {
        Some(u) => json!({
            "authenticated": true,
            "user": user_info(&u),
            "audiences": app.authn.issuer.audiences(),
        }),
        None => json!({"user": {}, "error": "invalid bearer token"}),
    };
    obj["status"] = status;
    obj["kind"] = json!("TokenReview");
    obj["apiVersion"] = json!(GROUP_VERSION);
    Ok(json_response(StatusCode::CREATED, &obj))
}

/// POST `serviceaccounts/<name>/token`: a TokenRequest. Signs a token for
/// the service account (which must exist) with the requested audiences
/// (default: the API server's) and lifetime (default one hour, at least
/// ten minutes, at most `--service-account-max-token-expiration`).
/// A `boundObjectRef` (a Pod or Secret in the namespace) binds the token
/// to that object: it stops working when the object goes.
pub async fn token_request(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.clone().unwrap_or_default();
    let ns = t.namespace.clone().unwrap_or_default();
    let mut req = if ctx.body.is_empty() {
        json!({})
    } else {
        parse_body(ctx)?
    };
    if let Some(k) = req.get("kind").and_then(Value::as_str) {
        if k != "TokenRequest" {
            return Err(ApiError::bad_request(format!(
                "the body is a {k}, not a TokenRequest"
            )));
        }
    }
    let (sa, _) = read_object(app, &t.key())
        .await?
        .ok_or_else(|| ApiError::not_found(t.res, &name))?;
    let uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let spec = req.get("spec").cloned().unwrap_or_else(|| json!({}));
    let (bound, bound_ref) = bound_object(app, &ns, spec.get("boundObjectRef")).await?;
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::bad_request("TokenRequest: spec.expirationSeconds must be an integer")
        })?,
    };
    let invalid = |message: String, field: &str| {
        ApiError::invalid(
            t.res,
            &name,
            vec![Cause {
                reason: "FieldValueInvalid",
                message,
                field: field.into(),
            }],
        )
    };
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
            "spec.expirationSeconds",
        ));
    }
    if seconds > 1 << 32 {
        return Err(invalid(
            format!(
                "Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"
            ),
            "spec.expirationSeconds",
        ));
    }
    // Kubernetes cuts longer requests to --service-account-max-token-expiration.
    let seconds = match app.authn.issuer.max_expiration() {
        Some(max) if seconds > max => max,
        _ => seconds,
    };
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("audiences must be strings".into(), "spec.audiences"))
            })
            .collect::<ApiResult<_>>()?,
        _ => app.authn.issuer.audiences().to_vec(),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (token, claims) = app
        .authn
        .issuer
        .issue_bound(&ns, &name, &uid, bound, audiences.clone(), now, seconds)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let expires = time::OffsetDateTime::from_unix_timestamp(claims.exp)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    req["kind"] = json!("TokenRequest");
    req["apiVersion"] = json!(GROUP_VERSION);
    req["metadata"] = json!({
        "name": name,
        "namespace": ns,
        "creationTimestamp": object::now_rfc3339(),
    });
    req["spec"] = json!({
        "audiences": audiences,
        "expirationSeconds": seconds,
        "boundObjectRef": bound_ref,
    });
    req["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(json_response(StatusCode::CREATED, &req))
}
