//! The `authentication.k8s.io/v1` endpoints: SelfSubjectReview (`kubectl
//! auth whoami`), TokenReview (is this token valid, and whose is it) and
//! the `serviceaccounts/token` subresource (TokenRequest, `kubectl create
//! token`). Nothing here is stored.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::service_account::{DEFAULT_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS};
use crate::auth::User;
use crate::handlers::read::read_object;
use crate::handlers::write::parse_body;
use crate::handlers::{json_response, App, Ctx};
use crate::object;
use crate::status::{ApiError, ApiResult, Cause};

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
/// `boundObjectRef` is not supported yet (400).
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
    if spec.get("boundObjectRef").is_some_and(|b| !b.is_null()) {
        return Err(ApiError::bad_request(
            "TokenRequest: spec.boundObjectRef is not supported by this server",
        ));
    }
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
        .issue(&ns, &name, &uid, audiences.clone(), now, seconds)
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
        "boundObjectRef": null,
    });
    req["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(json_response(StatusCode::CREATED, &req))
}
