//! Authorization: the request's [`Attributes`] (as Kubernetes'
//! `RequestInfo`), the chain of authorizers of `--authorization-mode`
//! (`AlwaysAllow`, `RBAC`), the superuser group `system:masters`, and the
//! 403 Forbidden error in Kubernetes' words.
//!
//! - [`rbac`]: rule matching and the evaluator over a policy snapshot.
//! - [`policy_cache`]: that snapshot, built from the watch caches.
//! - [`bootstrap`]: the default roles and bindings created at startup;
//!   [`reconcile`]: what existing defaults lack, added.
//! - [`aggregation`]: the loop that fills aggregated ClusterRoles' rules.
//! - [`escalation`]: no granting (or binding) of rights one lacks.
//! - [`review`]: SubjectAccessReview and friends (`kubectl auth can-i`).
//! - [`webhook`]: the `Webhook` mode (a SubjectAccessReview POSTed to an
//!   HTTPS endpoint); [`decision_cache`]: its answers, kept for a while.

pub mod aggregation;
pub mod bootstrap;
pub mod decision_cache;
pub mod escalation;
pub mod policy_cache;
pub mod rbac;
pub mod reconcile;
pub mod review;
pub mod webhook;

use axum::http::Method;

use crate::auth::User;
use crate::handlers::App;
use crate::status::ApiError;

/// The group whose members may do anything.
pub const SUPERUSER_GROUP: &str = "system:masters";

/// What a request asks to do (Kubernetes' `authorizer.Attributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Who asks.
    pub user: User,
    /// `get`, `list`, `watch`, `create`, ... (non-resource: the lowercase
    /// HTTP method).
    pub verb: String,
    /// An API object request (else a non-resource path).
    pub resource_request: bool,
    /// The namespace (empty: cluster scope).
    pub namespace: String,
    /// API group.
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Resource (`pods`).
    pub resource: String,
    /// Subresource (`log`).
    pub subresource: String,
    /// Object name (empty: a collection).
    pub name: String,
    /// The request path (non-resource requests).
    pub path: String,
}

/// Kubernetes' `RequestInfoFactory`: the attributes of a request path.
/// `segs` are the path's segments, `watch` is `?watch=true`.
pub fn request_attributes(
    user: &User,
    method: &Method,
    path: &str,
    segs: &[&str],
    watch: bool,
) -> Attributes {
    let http_verb = method.as_str().to_ascii_lowercase();
    let non_resource = || Attributes {
        user: user.clone(),
        verb: http_verb.clone(),
        path: path.to_string(),
        ..Attributes::default()
    };
    let (group, version, parts) = match segs {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return non_resource(),
    };
    let mut a = Attributes {
        user: user.clone(),
        resource_request: true,
        api_group: group.to_string(),
        api_version: version.to_string(),
        path: path.to_string(),
        ..Attributes::default()
    };
    let mut parts = parts;
    if parts[0] == "namespaces" && parts.len() > 1 {
        a.namespace = parts[1].to_string();
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts = &parts[2..];
        }
    }
    a.resource = parts[0].to_string();
    if let Some(n) = parts.get(1) {
        a.name = n.to_string();
    }
    if let Some(s) = parts.get(2) {
        a.subresource = s.to_string();
    }
    a.verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if a.name.is_empty() => "list",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if a.name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => "",
    }
    .to_string();
    if a.verb.is_empty() {
        a.verb = http_verb;
    }
    a
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the reason.
    Allow(String),
    /// No rule allows it; the next authorizer may (reason, possibly empty).
    NoOpinion(String),
    /// Explicitly denied (a webhook's `denied`): no later authorizer is asked.
    Deny(String),
}

/// One `--authorization-mode` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything is allowed.
    AlwaysAllow,
    /// Roles and bindings.
    Rbac,
    /// A SubjectAccessReview webhook (`--authorization-webhook-config-file`).
    Webhook,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.trim() {
            "AlwaysAllow" => Ok(Mode::AlwaysAllow),
            "RBAC" => Ok(Mode::Rbac),
            "Webhook" => Ok(Mode::Webhook),
            other => Err(format!(
                "authorization mode {other:?} is not supported (supported: AlwaysAllow, RBAC, Webhook)"
            )),
        }
    }
}

/// Parses `--authorization-mode` (a comma list).
pub fn parse_modes(s: &str) -> Result<Vec<Mode>, String> {
    let modes: Vec<Mode> = s
        .split(',')
        .filter(|m| !m.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if modes.is_empty() {
        return Err("--authorization-mode must name at least one mode".into());
    }
    Ok(modes)
}

/// The authorizer chain.
#[derive(Debug)]
pub struct Authorizer {
    modes: Vec<Mode>,
    /// The RBAC policy snapshot.
    pub policy: policy_cache::PolicyCache,
    /// The webhook of the `Webhook` mode.
    webhook: Option<webhook::Webhook>,
}

impl Authorizer {
    /// A chain of `modes`, tried in order. `Webhook` needs `webhook`.
    pub fn new(modes: Vec<Mode>, webhook: Option<webhook::Webhook>) -> Result<Authorizer, String> {
        if modes.contains(&Mode::Webhook) && webhook.is_none() {
            return Err(
                "authorization mode Webhook needs --authorization-webhook-config-file".into(),
            );
        }
        Ok(Authorizer {
            modes,
            policy: policy_cache::PolicyCache::default(),
            webhook,
        })
    }

    /// True if `AlwaysAllow` is one of the modes.
    pub fn always_allows(&self) -> bool {
        self.modes.contains(&Mode::AlwaysAllow)
    }

    /// True if the webhook is one of the modes (its rules cannot be listed).
    pub fn webhook_enabled(&self) -> bool {
        self.modes.contains(&Mode::Webhook)
    }

    /// True if RBAC is one of the modes.
    pub fn rbac_enabled(&self) -> bool {
        self.modes.contains(&Mode::Rbac)
    }

    /// Asks each authorizer in turn; the first that allows wins.
    /// `system:masters` are always allowed. A failure to read the policy
    /// is an error (500/503), never an allow.
    pub async fn authorize(&self, app: &App, a: &Attributes) -> Result<Decision, ApiError> {
        if a.user.in_group(SUPERUSER_GROUP) {
            return Ok(Decision::Allow(String::new()));
        }
        let mut reasons = Vec::new();
        for mode in &self.modes {
            match mode {
                Mode::AlwaysAllow => return Ok(Decision::Allow(String::new())),
                Mode::Rbac => {
                    let (ok, why) = self.policy.authorize(app, a).await?;
                    if ok {
                        return Ok(Decision::Allow(why));
                    }
                    if !why.is_empty() {
                        reasons.push(why);
                    }
                }
                Mode::Webhook => {
                    let Some(hook) = &self.webhook else { continue };
                    match hook.authorize(a).await {
                        Ok(webhook::Verdict::Allow(why)) => return Ok(Decision::Allow(why)),
                        Ok(webhook::Verdict::Deny(why)) => return Ok(Decision::Deny(why)),
                        Ok(webhook::Verdict::NoOpinion(why)) if !why.is_empty() => {
                            reasons.push(why)
                        }
                        Ok(webhook::Verdict::NoOpinion(_)) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "authorization webhook failed");
                            reasons.push(e.to_string());
                        }
                    }
                }
            }
        }
        Ok(Decision::NoOpinion(reasons.join("\n")))
    }

    /// [`Authorizer::authorize`], as an error if not allowed.
    pub async fn check(&self, app: &App, a: &Attributes) -> Result<(), ApiError> {
        match self.authorize(app, a).await? {
            Decision::Allow(_) => Ok(()),
            Decision::NoOpinion(reason) | Decision::Deny(reason) => Err(forbidden(a, &reason)),
        }
    }
}

/// Kubernetes' `forbiddenMessage`.
pub fn forbidden_message(a: &Attributes) -> String {
    let user = &a.user.name;
    if !a.resource_request {
        return format!("User {user:?} cannot {} path {:?}", a.verb, a.path);
    }
    let mut resource = a.resource.clone();
    if !a.subresource.is_empty() {
        resource = format!("{resource}/{}", a.subresource);
    }
    if !a.namespace.is_empty() {
        format!(
            "User {user:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
            a.verb, a.api_group, a.namespace
        )
    } else {
        format!(
            "User {user:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
            a.verb, a.api_group
        )
    }
}

/// The 403 of a denied request, as Kubernetes' `responsewriters.Forbidden`.
pub fn forbidden(a: &Attributes, reason: &str) -> ApiError {
    let mut msg = forbidden_message(a);
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    let (group, resource) = if a.resource_request {
        (a.api_group.as_str(), a.resource.as_str())
    } else {
        ("", "")
    };
    ApiError::forbidden(group, resource, &a.name, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: Method, path: &str, watch: bool) -> Attributes {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        request_attributes(
            &User::authenticated("alice", "", vec![]),
            &method,
            path,
            &segs,
            watch,
        )
    }

    #[test]
    fn request_info_like_kubernetes() {
        let a = attrs(Method::GET, "/api/v1/namespaces/prod/pods", false);
        assert_eq!(
            (
                a.verb.as_str(),
                a.namespace.as_str(),
                a.resource.as_str(),
                a.name.as_str()
            ),
            ("list", "prod", "pods", "")
        );
        let a = attrs(Method::GET, "/api/v1/namespaces/prod/pods/p1/log", false);
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.name.as_str(),
                a.subresource.as_str()
            ),
            ("get", "pods", "p1", "log")
        );
        let a = attrs(Method::GET, "/apis/apps/v1/deployments", true);
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str(), a.namespace.as_str()),
            ("watch", "apps", "")
        );
        let a = attrs(Method::GET, "/api/v1/namespaces/prod", false);
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.name.as_str(),
                a.namespace.as_str()
            ),
            ("get", "namespaces", "prod", "prod")
        );
        let a = attrs(Method::PUT, "/api/v1/namespaces/prod/finalize", false);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.subresource.as_str()),
            ("update", "namespaces", "finalize")
        );
        let a = attrs(Method::DELETE, "/api/v1/namespaces/prod/configmaps", false);
        assert_eq!(a.verb, "deletecollection");
        let a = attrs(Method::GET, "/apis/apps/v1", false);
        assert!(!a.resource_request);
        assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", "/apis/apps/v1"));
        let a = attrs(Method::POST, "/healthz", false);
        assert_eq!(a.verb, "post");
    }

    #[test]
    fn forbidden_messages_match_kubernetes() {
        let a = attrs(Method::GET, "/api/v1/namespaces/prod/pods", false);
        let e = forbidden(&a, "");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "prod""#
        );
        let a = attrs(Method::GET, "/api/v1/namespaces/prod/pods/p1/log", false);
        assert_eq!(
            forbidden(&a, "").message,
            r#"pods "p1" is forbidden: User "alice" cannot get resource "pods/log" in API group "" in the namespace "prod""#
        );
        let a = attrs(Method::GET, "/apis/apps/v1/deployments", false);
        assert_eq!(
            forbidden(&a, "").message,
            r#"deployments.apps is forbidden: User "alice" cannot list resource "deployments" in API group "apps" at the cluster scope"#
        );
        let a = attrs(Method::GET, "/metrics", false);
        assert_eq!(
            forbidden(&a, "").message,
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
        let a = attrs(Method::GET, "/api/v1/nodes/n1", false);
        assert_eq!(
            forbidden(
                &a,
                "RBAC: clusterrole.rbac.authorization.k8s.io \"x\" not found"
            )
            .message,
            r#"nodes "n1" is forbidden: User "alice" cannot get resource "nodes" in API group "" at the cluster scope: RBAC: clusterrole.rbac.authorization.k8s.io "x" not found"#
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!(parse_modes("RBAC").expect("rbac"), [Mode::Rbac]);
        assert_eq!(
            parse_modes("RBAC,AlwaysAllow").expect("two"),
            [Mode::Rbac, Mode::AlwaysAllow]
        );
        assert_eq!(
            parse_modes("Webhook,RBAC").expect("webhook"),
            [Mode::Webhook, Mode::Rbac]
        );
        assert!(Authorizer::new(vec![Mode::Webhook], None).is_err());
        assert!(parse_modes("Node").is_err());
        assert!(parse_modes("").is_err());
    }
}
