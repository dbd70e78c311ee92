//! Request handling: path parsing into a [`Target`], the verb dispatch and
//! the request log line. The verbs live in [`read`] and [`write`](mod@write); watches
//! in [`crate::watch`].

pub mod logs;
pub mod pods;
pub mod propagation;
pub mod read;
pub mod scale;
pub mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_storage::proto::mvccpb::KeyValue;
use serde_json::Value;

use crate::auth::User;
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult, ErrorReason};
use crate::store::{Store, StoreError};
use crate::{discovery, object, openapi};

/// Largest request body accepted (Kubernetes' limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared state of the server.
#[derive(Debug)]
pub struct App {
    /// The store.
    pub store: Store,
    /// `host:port` clients reach this server at (for `/api`).
    pub server_address: String,
    /// The default namespaces exist (`/readyz`).
    pub ready: AtomicBool,
    /// Request metrics (`/metrics`).
    pub metrics: crate::metrics::Metrics,
    /// The watch caches, one per resource type.
    pub caches: crate::cache::Caches,
    /// The admission plugins.
    pub admission: crate::admission::Chain,
    /// Who a request comes from (certificates, tokens, impersonation).
    pub authn: crate::authn::Authenticator,
    /// What they may do (`--authorization-mode`).
    pub authz: crate::authz::Authorizer,
    /// The audit log (a no-op without `--audit-log-path`).
    pub audit: crate::audit::AuditLog,
    /// The client of the kubelets (`pods/log`).
    pub kubelet: crate::kubelet::KubeletClient,
    /// Cancelled when the server starts to stop: `/readyz` fails, and
    /// long-running responses (watches, log streams) end so that their
    /// connections can drain (watches served from the caches end through
    /// [`crate::cache::Caches::end_watches`], at no cost per event).
    pub stopping: tokio_util::sync::CancellationToken,
}

impl App {
    /// `body`, ended when the server starts to stop (for long-running
    /// responses such as log streams: a stopping server waits for the
    /// requests in flight, as Kubernetes does, but not for these).
    pub fn until_stopping<S: futures::Stream + Send + 'static>(
        &self,
        body: S,
    ) -> impl futures::Stream<Item = S::Item> + Send + 'static {
        futures::StreamExt::take_until(body, self.stopping.clone().cancelled_owned())
    }
}

/// A boolean query parameter as Kubernetes converts it
/// (`Convert_Slice_string_To_bool`): absent, `0` or `false` (any case) is
/// false, anything else (`true`, `True` as Python clients send it, even
/// empty) true.
pub fn query_bool(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| bool_param(v))
}

/// A present boolean query parameter's value (see [`query_bool`]).
pub fn bool_param(v: &str) -> bool {
    v != "0" && !v.eq_ignore_ascii_case("false")
}

/// The client's address, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The object(s) a request is about.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource type.
    pub res: &'static ResourceInfo,
    /// The namespace from the path (`None`: cluster-scoped or all namespaces).
    pub namespace: Option<String>,
    /// The object name (`None`: the collection).
    pub name: Option<String>,
    /// The subresource (`status`).
    pub sub: Option<String>,
}

impl Target {
    /// The store key of the named object.
    pub fn key(&self) -> String {
        self.res.key(
            self.namespace.as_deref(),
            self.name.as_deref().unwrap_or(""),
        )
    }
}

/// Everything a verb handler needs about its request.
#[derive(Debug)]
pub struct Ctx {
    /// The target.
    pub target: Target,
    /// Query parameters (last value wins).
    pub query: HashMap<String, String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// The body (at most [`MAX_BODY`]).
    pub body: Bytes,
    /// Who asks (after impersonation).
    pub user: User,
}

impl Ctx {
    /// A query parameter.
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    /// A boolean query parameter, as Kubernetes converts it (see
    /// [`query_bool`]).
    pub fn q_bool(&self, k: &str) -> bool {
        query_bool(&self.query, k)
    }

    /// A header as a string.
    pub fn header(&self, h: header::HeaderName) -> Option<&str> {
        self.headers.get(h).and_then(|v| v.to_str().ok())
    }

    /// `?dryRun=All` (any other value is a 400).
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.q("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {v:?}: supported values: \"All\""
            ))),
        }
    }
}

/// Maps a store failure to a Status.
pub fn store_err(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted(_) => {
            ApiError::expired("The resourceVersion for the provided list is too old.")
        }
        StoreError::FutureRevision => ApiError::new(
            504,
            "Timeout",
            "Too large resource version: the store has not reached it yet",
        ),
        other => ApiError::unavailable(other.to_string()),
    }
}

/// Decodes a stored object and stamps its `resourceVersion`.
pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "undecodable object at {}: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::internal(format!(
            "the value at {} is not a JSON object",
            String::from_utf8_lossy(&kv.key)
        )));
    }
    object::set_resource_version(&mut v, kv.mod_revision);
    Ok(v)
}

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, axum::Json(v)).into_response()
}

/// A JSON object response re-encoded as protobuf, for a client that prefers
/// it; streams, tables and kinds without a descriptor stay JSON.
async fn protobuf_response(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c == "application/json");
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "response body lost").into_response();
    };
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| crate::protobuf::from_json(&v));
    let Some(encoded) = encoded else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(crate::protobuf::CONTENT_TYPE),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(encoded))
}

/// Adds one `Warning: 299 - "…"` header per warning (kubectl prints them).
pub fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// What the request log line says about a request.
#[derive(Debug, Default)]
struct Info {
    verb: &'static str,
    resource: String,
    /// The user the request acted as (after authentication and impersonation).
    user: String,
    /// Its groups and uid.
    groups: Vec<String>,
    uid: String,
    /// The object of a resource request (audit `objectRef`).
    object: Option<crate::audit::ObjectRef>,
}

/// The single axum handler: routes by path, runs the verb, logs the request.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let start = Instant::now();
    let user = req
        .extensions()
        .get::<User>()
        .cloned()
        .unwrap_or_else(User::anonymous);
    let received = time::OffsetDateTime::now_utc();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // Path and query, as Kubernetes records it (HTTP/2 requests carry the
    // scheme and authority in the URI too).
    let request_uri = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.to_string());
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip().to_string());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut info = Info {
        user: user.name.clone(),
        groups: user.groups.clone(),
        ..Info::default()
    };
    let protobuf = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(crate::protobuf::wants_protobuf);
    let resp = match route(&app, &user, req, &mut info).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let resp = if protobuf && info.verb != "watch" {
        protobuf_response(resp).await
    } else {
        resp
    };
    let status = resp.status().as_u16();
    if !info.verb.is_empty() {
        app.metrics
            .observe(info.verb, &info.resource, status, start.elapsed());
    }
    let reason = resp
        .extensions()
        .get::<ErrorReason>()
        .map(|r| r.0)
        .unwrap_or("");
    tracing::info!(
        user = %info.user,
        verb = %info.verb,
        resource = %info.resource,
        method = %method,
        path = %path,
        status,
        reason,
        latency_ms = format!("{:.2}", start.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    if !public(&path) {
        let verb = if info.verb.is_empty() || info.object.is_none() {
            method.as_str().to_ascii_lowercase()
        } else {
            info.verb.to_string()
        };
        // As Kubernetes: watches and log streams are audited when their
        // response starts.
        let long_running =
            info.verb == "watch" || info.object.as_ref().is_some_and(|o| o.subresource == "log");
        app.audit.record(&crate::audit::Record {
            user: &info.user,
            groups: &info.groups,
            uid: &info.uid,
            verb: &verb,
            request_uri: &request_uri,
            source_ip: peer,
            user_agent: &user_agent,
            object: info.object.take(),
            code: status,
            reason,
            received,
            latency: start.elapsed(),
            long_running,
        });
    }
    resp
}

/// Public endpoints anonymous clients may read.
fn public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
}

/// Authenticates, then applies impersonation. Health endpoints stay
/// open to requests without credentials. `info.user` names the
/// authenticated user (for the log) even if impersonation is refused.
async fn who(
    app: &App,
    cert: &User,
    path: &str,
    headers: &HeaderMap,
    info: &mut Info,
) -> ApiResult<Option<User>> {
    let user = match app.authn.authenticate(app, cert, headers).await {
        Ok(u) => u,
        Err(_) if public(path) && crate::authn::bearer_token(headers).is_none() => return Ok(None),
        Err(e) => return Err(e),
    };
    info.user = user.name.clone();
    info.groups = user.groups.clone();
    Ok(Some(
        crate::authn::impersonate::apply(app, user, headers).await?,
    ))
}

async fn route(app: &App, cert: &User, req: Request, info: &mut Info) -> ApiResult<Response> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let headers = req.headers().clone();
    let user = who(app, cert, &path, &headers, info).await?;
    let authorize = user.is_some();
    let user = user.unwrap_or_else(User::anonymous);
    info.user = user.name.clone();
    info.groups = user.groups.clone();
    info.uid = user.uid.clone();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let get_only = |v: Value| -> ApiResult<Response> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(&path));
        }
        Ok(json_response(StatusCode::OK, &v))
    };
    info.verb = "get";
    let watch = query_bool(&query, "watch");
    if authorize {
        let attrs = crate::authz::request_attributes(&user, &method, &path, &segs, watch);
        if attrs.resource_request {
            // For the log line of a refused request (routing sets them again).
            info.verb = registry::VERBS
                .iter()
                .find(|v| **v == attrs.verb)
                .copied()
                .unwrap_or("get");
            info.resource = match (attrs.api_group.as_str(), attrs.subresource.as_str()) {
                ("", "") => attrs.resource.clone(),
                ("", sub) => format!("{}/{sub}", attrs.resource),
                (g, "") => format!("{}.{g}", attrs.resource),
                (g, sub) => format!("{}.{g}/{sub}", attrs.resource),
            };
            info.object = Some(crate::audit::ObjectRef {
                resource: attrs.resource.clone(),
                namespace: attrs.namespace.clone(),
                name: attrs.name.clone(),
                api_group: attrs.api_group.clone(),
                api_version: attrs.api_version.clone(),
                subresource: attrs.subresource.clone(),
            });
        }
        app.authz.check(app, &attrs).await?;
    }
    match segs.as_slice() {
        ["healthz"] | ["livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["readyz"] => {
            return Ok(if app.stopping.is_cancelled() {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down").into_response()
            } else if app.ready.load(Ordering::Acquire) {
                (StatusCode::OK, "ok").into_response()
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready: bootstrapping").into_response()
            })
        }
        ["version"] => return get_only(discovery::version()),
        [".well-known", "openid-configuration"] => {
            return get_only(app.authn.issuer.discovery(&app.server_address))
        }
        ["openid", "v1", "jwks"] => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(&path));
            }
            let mut resp = json_response(StatusCode::OK, &app.authn.issuer.jwks());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/jwk-set+json"),
            );
            return Ok(resp);
        }
        ["metrics"] => {
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                app.metrics.render() + &app.store.render_metrics(),
            )
                .into_response())
        }
        ["api"] | ["apis"] if discovery::wants_aggregated(accept.as_deref()) => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(&path));
            }
            let body = discovery::aggregated(segs[0] == "api");
            let mut resp = json_response(StatusCode::OK, &body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(discovery::AGGREGATED),
            );
            return Ok(resp);
        }
        ["api"] => {
            discovery::require_plain_json(accept.as_deref())?;
            return get_only(discovery::api_versions(&app.server_address));
        }
        ["apis"] => {
            discovery::require_plain_json(accept.as_deref())?;
            return get_only(discovery::api_groups());
        }
        ["apis", g] => {
            return match discovery::api_group(g) {
                Some(v) => get_only(v),
                None => Err(ApiError::no_route(&path)),
            }
        }
        ["api", v] | ["apis", _, v] => {
            let g = if segs[0] == "api" { "" } else { segs[1] };
            discovery::require_plain_json(accept.as_deref())?;
            return match discovery::resource_list(g, v) {
                Some(l) => get_only(l),
                None => Err(ApiError::no_route(&path)),
            };
        }
        ["openapi", "v3"] => return get_only(openapi::index()),
        ["openapi", "v2"] => {
            let doc = openapi::v2_protobuf().ok_or_else(|| ApiError::no_route(&path))?;
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(&path));
            }
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, openapi::V2_PROTOBUF)],
                doc,
            )
                .into_response());
        }
        ["openapi", "v3", "api", v] => {
            return openapi::document("", v)
                .map_or_else(|| Err(ApiError::no_route(&path)), get_only)
        }
        ["openapi", "v3", "apis", g, v] => {
            return openapi::document(g, v).map_or_else(|| Err(ApiError::no_route(&path)), get_only)
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route(&path)),
    };
    let target = parse_target(group, version, rest).ok_or_else(|| ApiError::no_route(&path))?;
    info.resource = match &target.sub {
        Some(s) => format!("{}/{s}", target.res.qualified()),
        None => target.res.qualified(),
    };
    info.object = Some(crate::audit::ObjectRef {
        resource: target.res.plural.to_string(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
        api_group: target.res.group.to_string(),
        api_version: target.res.version.to_string(),
        subresource: target.sub.clone().unwrap_or_default(),
    });
    info.verb = match (&method, target.name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::POST, true) if target.sub.is_some() => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed(&path)),
    };
    if let Some(sub) = &target.sub {
        let is_pod = target.res.kind == "Pod";
        let served = match sub.as_str() {
            "status" => target.res.status && matches!(info.verb, "get" | "update" | "patch"),
            "scale" => target.res.scale && matches!(info.verb, "get" | "update" | "patch"),
            "binding" | "eviction" => is_pod && info.verb == "create",
            "log" => is_pod && info.verb == "get",
            "token" => target.res.kind == "ServiceAccount" && info.verb == "create",
            "finalize" => target.res.kind == "Namespace" && info.verb == "update",
            _ => false,
        };
        if !served {
            return Err(ApiError::no_route(&path));
        }
    }
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))?;
    let ctx = Ctx {
        target,
        query,
        headers,
        body,
        user: user.clone(),
    };
    match ctx.target.sub.as_deref() {
        Some("scale") => return scale::handle(app, &ctx, info.verb).await,
        Some("binding") => return pods::bind(app, &ctx).await,
        Some("eviction") => return pods::evict(app, &ctx).await,
        Some("log") => return logs::log(app, &ctx).await,
        Some("token") => return crate::authn::review::token_request(app, &ctx).await,
        Some("finalize") => return write::finalize_namespace(app, &ctx).await,
        _ => {}
    }
    if !ctx.target.res.stored {
        if info.verb != "create" {
            return Err(ApiError::method_not_allowed(&path));
        }
        return match ctx.target.res.kind {
            "SelfSubjectReview" => Ok(crate::authn::review::self_subject_review(&user)),
            "TokenReview" => crate::authn::review::token_review(app, &ctx).await,
            "SelfSubjectAccessReview" => {
                crate::authz::review::self_subject_access_review(app, &ctx, &user).await
            }
            "SelfSubjectRulesReview" => {
                crate::authz::review::self_subject_rules_review(app, &ctx, &user).await
            }
            _ => crate::authz::review::subject_access_review(app, &ctx).await,
        };
    }
    match info.verb {
        "watch" => crate::watch::watch(app, &ctx).await,
        "get" => read::get(app, &ctx).await,
        "list" => read::list(app, &ctx).await,
        "create" => write::create(app, &ctx).await,
        "update" => write::update(app, &ctx).await,
        "patch" => write::patch(app, &ctx).await,
        "delete" => write::delete(app, &ctx).await,
        _ => write::delete_collection(app, &ctx).await,
    }
}

/// Parses the part of a resource path after `/api/v1` or `/apis/<g>/<v>`.
pub fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let namespaced_path = rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"));
    let (namespace, rest) = if namespaced_path {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let res = registry::lookup(group, version, plural)?;
    if namespace.is_some() && !res.namespaced {
        return None;
    }
    if res.namespaced && namespace.is_none() && name.is_some() {
        return None;
    }
    Some(Target {
        res,
        namespace,
        name,
        sub,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn paths() {
        let t = parse_target("", "v1", &["namespaces", "default", "pods", "a", "status"])
            .expect("pod status");
        assert_eq!(
            (
                t.res.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("default"), Some("a"), Some("status"))
        );
        let t = parse_target("", "v1", &["namespaces", "x"]).expect("namespace");
        assert_eq!((t.res.plural, t.name.as_deref()), ("namespaces", Some("x")));
        let t = parse_target("", "v1", &["namespaces", "x", "status"]).expect("namespace status");
        assert_eq!(
            (t.res.plural, t.sub.as_deref()),
            ("namespaces", Some("status"))
        );
        let t = parse_target("", "v1", &["pods"]).expect("all pods");
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(parse_target("", "v1", &["pods", "a"]).is_none());
        assert!(parse_target("", "v1", &["namespaces", "x", "nodes"]).is_none());
        assert!(parse_target("apps", "v1", &["pods"]).is_none());
    }
}
