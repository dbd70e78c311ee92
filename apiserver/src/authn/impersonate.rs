//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): the
//! `Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid` and
//! `Impersonate-Extra-<key>` headers replace the request's user, after the
//! real user is authorized to `impersonate` each of them (`users`,
//! `groups`, `serviceaccounts` for `system:serviceaccount:<ns>:<name>`,
//! `uids` and `userextras/<key>` in `authentication.k8s.io`), as
//! Kubernetes' impersonation filter does.

use axum::http::HeaderMap;

use crate::auth::User;
use crate::authn::service_account::split_user_name;
use crate::authz::Attributes;
use crate::handlers::App;
use crate::status::{ApiError, ApiResult};

/// `Impersonate-User`.
pub const USER: &str = "impersonate-user";
/// `Impersonate-Group` (repeated).
pub const GROUP: &str = "impersonate-group";
/// `Impersonate-Uid`.
pub const UID: &str = "impersonate-uid";
/// `Impersonate-Extra-<key>` (repeated).
pub const EXTRA_PREFIX: &str = "impersonate-extra-";

/// What the headers ask for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    /// The user to act as.
    pub user: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Uid.
    pub uid: Option<String>,
    /// Extra attributes (key, value).
    pub extra: Vec<(String, String)>,
}

fn text(v: &axum::http::HeaderValue) -> ApiResult<String> {
    v.to_str()
        .map(str::to_string)
        .map_err(|_| ApiError::bad_request("impersonation headers must be ASCII text"))
}

/// Reads the impersonation headers (`None` when there are none).
pub fn parse(headers: &HeaderMap) -> ApiResult<Option<Request>> {
    let mut r = Request::default();
    let mut any = false;
    for (name, value) in headers {
        let n = name.as_str();
        if n == USER {
            r.user = Some(text(value)?);
        } else if n == GROUP {
            r.groups.push(text(value)?);
        } else if n == UID {
            r.uid = Some(text(value)?);
        } else if let Some(key) = n.strip_prefix(EXTRA_PREFIX) {
            let key = form_urlencoded::parse(format!("k={key}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| key.to_string());
            r.extra.push((key, text(value)?));
        } else {
            continue;
        }
        any = true;
    }
    if !any {
        return Ok(None);
    }
    if r.user.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "impersonating groups, a uid or extra attributes requires impersonating a user (Impersonate-User)",
        ));
    }
    Ok(Some(r))
}

fn attrs(user: &User, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
    Attributes {
        user: user.clone(),
        verb: "impersonate".into(),
        resource_request: true,
        namespace: ns.into(),
        api_group: group.into(),
        resource: resource.into(),
        subresource: sub.into(),
        name: name.into(),
        ..Attributes::default()
    }
}

/// The user a request acts as: `real` itself, or the impersonated user
/// if the headers ask for one and `real` may impersonate it (else 403).
pub async fn apply(app: &App, real: User, headers: &HeaderMap) -> ApiResult<User> {
    let Some(req) = parse(headers)? else {
        return Ok(real);
    };
    let name = req.user.clone().unwrap_or_default();
    let sa = split_user_name(&name);
    let mut checks = vec![match sa {
        Some((ns, n)) => attrs(&real, "", "serviceaccounts", "", ns, n),
        None => attrs(&real, "", "users", "", "", &name),
    }];
    for g in &req.groups {
        checks.push(attrs(&real, "", "groups", "", "", g));
    }
    if let Some(uid) = &req.uid {
        checks.push(attrs(&real, "authentication.k8s.io", "uids", "", "", uid));
    }
    for (k, v) in &req.extra {
        checks.push(attrs(
            &real,
            "authentication.k8s.io",
            "userextras",
            k,
            "",
            v,
        ));
    }
    for a in &checks {
        app.authz.check(app, a).await?;
    }
    let mut groups = req.groups.clone();
    if let (Some((ns, _)), true) = (sa, groups.is_empty()) {
        groups = vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ];
    }
    let mut user = if name == "system:anonymous" {
        if !groups.iter().any(|g| g == "system:unauthenticated") {
            groups.push("system:unauthenticated".into());
        }
        User {
            name,
            groups,
            ..User::default()
        }
    } else {
        User::authenticated(name, req.uid.clone().unwrap_or_default(), groups)
    };
    for (k, v) in req.extra {
        user.extra.entry(k).or_default().push(v);
    }
    tracing::debug!(real = %real.name, as_user = %user.name, "impersonating");
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn headers_parse() {
        let mut h = HeaderMap::new();
        assert_eq!(parse(&h).expect("none"), None);
        h.append("Impersonate-Group", HeaderValue::from_static("devs"));
        assert!(parse(&h).is_err(), "a group without a user");
        h.append("Impersonate-User", HeaderValue::from_static("alice"));
        h.append("Impersonate-Group", HeaderValue::from_static("ops"));
        h.append("Impersonate-Extra-Scopes", HeaderValue::from_static("view"));
        let r = parse(&h).expect("parse").expect("some");
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert_eq!(r.groups, ["devs", "ops"]);
        assert_eq!(r.extra, [("scopes".to_string(), "view".to_string())]);
    }
}
