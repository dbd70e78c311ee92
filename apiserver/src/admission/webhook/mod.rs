//! Admission webhooks (`MutatingAdmissionWebhook`, `ValidatingAdmissionWebhook`):
//! the `admissionregistration.k8s.io/v1` `MutatingWebhookConfiguration` and
//! `ValidatingWebhookConfiguration` objects name HTTPS endpoints (by `url`,
//! or by `service`: the service's first ready endpoint is called, with
//! `<service>.<namespace>.svc` as the TLS server name) that receive an
//! `AdmissionReview` v1 for every request their `rules`,
//! `namespaceSelector` and `objectSelector` match. Mutating webhooks answer
//! with a JSONPatch, applied in turn (configurations by name, webhooks in
//! order, `reinvocationPolicy: IfNeeded` honoured once); validating ones,
//! called in parallel, only allow or deny. A webhook that cannot be
//! called refuses the request (`failurePolicy: Fail`, the default) or is
//! skipped (`Ignore`). Requests about webhook configurations themselves
//! are never sent to webhooks.

pub mod client;
pub mod rules;

use std::time::Duration;

use base64::Engine;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::reads::{Read, Reads};
use super::{Attributes, Operation, Plugin};
use crate::handlers::read::read_object;
use crate::handlers::App;
use crate::object;
use crate::registry;
use crate::status::{ApiError, ApiResult};

/// `MutatingAdmissionWebhook`.
#[derive(Debug)]
pub struct MutatingWebhook;

/// `ValidatingAdmissionWebhook`.
#[derive(Debug)]
pub struct ValidatingWebhook;

/// Seconds a webhook may take when its configuration does not say.
const DEFAULT_TIMEOUT: u64 = 10;

/// The resources holding the two kinds of webhook configurations.
const MUTATING: &str = "mutatingwebhookconfigurations";
const VALIDATING: &str = "validatingwebhookconfigurations";

fn is_config(attrs: &Attributes) -> bool {
    attrs.res.group == "admissionregistration.k8s.io"
}

/// The labels a `namespaceSelector` is matched against: the namespace's
/// (the object's own for a Namespace); `None` for other cluster-scoped
/// objects, which every namespace selector matches.
async fn namespace_labels(app: &App, attrs: &Attributes) -> ApiResult<Option<Value>> {
    if attrs.res.group.is_empty() && attrs.res.kind == "Namespace" {
        let o = attrs.old.as_ref().unwrap_or(&attrs.object);
        return Ok(Some(
            o.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
        ));
    }
    let Some(ns) = attrs.namespace.as_deref().filter(|_| attrs.res.namespaced) else {
        return Ok(None);
    };
    let nsres = registry::lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
    Ok(Some(
        attrs
            .reads
            .object(app, &nsres.key(None, ns))
            .await?
            .and_then(|(o, _)| o.pointer("/metadata/labels").cloned())
            .unwrap_or(json!({})),
    ))
}

/// The store prefix of the configurations of `plural`.
fn configs(plural: &str) -> ApiResult<String> {
    let res = registry::lookup("admissionregistration.k8s.io", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    Ok(res.prefix(None))
}

/// The configurations a request reads: none for requests about webhook
/// configurations themselves.
fn reads(attrs: &Attributes, plural: &str) -> Vec<Read> {
    let prefix = configs(plural).ok().filter(|_| !is_config(attrs));
    prefix.map(Read::Prefix).into_iter().collect()
}

/// The webhooks of every configuration of `plural`, in name order.
async fn webhooks(app: &App, reads: &Reads, plural: &str) -> ApiResult<Vec<Value>> {
    let (configs, _) = reads.list_decodable(app, &configs(plural)?).await?;
    Ok(configs
        .into_iter()
        .flat_map(|(c, _)| {
            c.get("webhooks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect())
}

/// True if the webhook is to see this request.
fn matches(hook: &Value, attrs: &Attributes, ns_labels: Option<&Value>) -> bool {
    if !rules::rules_match(
        hook.get("rules"),
        attrs.operation,
        attrs.res,
        attrs.subresource.as_deref(),
    ) {
        return false;
    }
    if ns_labels.is_some() && !rules::selector_matches(hook.get("namespaceSelector"), ns_labels) {
        return false;
    }
    let obj_sel = hook.get("objectSelector");
    let labels_of = |o: &Value| o.pointer("/metadata/labels").cloned();
    let new = (attrs.operation != Operation::Delete)
        .then(|| labels_of(&attrs.object))
        .flatten();
    let old = match attrs.operation {
        Operation::Delete => labels_of(&attrs.object),
        _ => attrs.old.as_ref().and_then(labels_of),
    };
    rules::selector_matches(obj_sel, new.as_ref()) || rules::selector_matches(obj_sel, old.as_ref())
}

/// The `AdmissionReview` sent for a request.
pub fn review(attrs: &Attributes, uid: &str) -> Value {
    let (object, old) = match attrs.operation {
        Operation::Delete => (Value::Null, attrs.object.clone()),
        _ => (
            attrs.object.clone(),
            attrs.old.clone().unwrap_or(Value::Null),
        ),
    };
    let options = match attrs.operation {
        Operation::Create => "CreateOptions",
        Operation::Update => "UpdateOptions",
        Operation::Delete => "DeleteOptions",
    };
    let kind =
        json!({"group": attrs.res.group, "version": attrs.res.version, "kind": attrs.res.kind});
    let resource = json!({"group": attrs.res.group, "version": attrs.res.version, "resource": attrs.res.plural});
    let mut req = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "operation": rules::operation_name(attrs.operation),
        "userInfo": {},
        "object": object,
        "oldObject": old,
        "dryRun": attrs.dry_run,
        "options": {"kind": options, "apiVersion": "meta.k8s.io/v1"},
    });
    if let Some(s) = &attrs.subresource {
        req["subResource"] = json!(s);
    }
    if !attrs.name.is_empty() {
        req["name"] = json!(attrs.name);
    }
    if let Some(ns) = &attrs.namespace {
        req["namespace"] = json!(ns);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// The URL of a `clientConfig.service` reference and the endpoint to dial:
/// `https://<name>.<namespace>.svc:<port><path>`, connecting to the first
/// ready address of the service's Endpoints on the matching port (or the
/// `externalName` of an ExternalName service).
async fn service_target(
    app: &App,
    svc: Option<&Value>,
) -> Result<(String, Option<client::Dial>), String> {
    let svc = svc.ok_or("clientConfig has neither url nor service")?;
    let ns = svc.get("namespace").and_then(Value::as_str).unwrap_or("");
    let name = svc.get("name").and_then(Value::as_str).unwrap_or("");
    let port = svc.get("port").and_then(Value::as_u64).unwrap_or(443);
    let path = svc.get("path").and_then(Value::as_str).unwrap_or("");
    let url = format!("https://{name}.{ns}.svc:{port}{path}");
    let read = |plural: &'static str| async move {
        let res = registry::lookup("", "v1", plural).ok_or("not registered")?;
        read_object(app, &res.key(Some(ns), name))
            .await
            .map_err(|e| e.message)
            .map(|o| o.map(|(v, _)| v))
    };
    let service = read("services")
        .await?
        .ok_or_else(|| format!("service \"{ns}/{name}\" not found"))?;
    if service.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        let host = service
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let port = u16::try_from(port).map_err(|_| "bad port")?;
        return Ok((url, Some(client::Dial { host, port })));
    }
    // The service port the webhook names, and its name in the endpoints.
    let port_name = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("port").and_then(Value::as_u64) == Some(port))
        })
        .map(|p| {
            p.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
        .ok_or_else(|| format!("service \"{ns}/{name}\" has no port {port}"))?;
    let endpoints = read("endpoints").await?.unwrap_or(Value::Null);
    let subsets = endpoints
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for subset in &subsets {
        let ip = subset.pointer("/addresses/0/ip").and_then(Value::as_str);
        let ep_port = subset
            .get("ports")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
                    .or_else(|| ps.first())
            })
            .and_then(|p| p.get("port"))
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        if let (Some(ip), Some(p)) = (ip, ep_port) {
            return Ok((
                url,
                Some(client::Dial {
                    host: ip.to_string(),
                    port: p,
                }),
            ));
        }
    }
    Err(format!("service \"{ns}/{name}\" has no ready endpoints"))
}

/// Why a webhook's answer could not be used.
fn bad_answer(why: impl std::fmt::Display) -> String {
    format!("received invalid webhook response: {why}")
}

/// Calls one webhook; `Ok(response)` is its `AdmissionReview.response`;
/// `Err(text)` a failure to call it (subject to `failurePolicy`).
async fn call(app: &App, hook: &Value, attrs: &Attributes) -> Result<Value, String> {
    let versions: Vec<&str> = hook
        .get("admissionReviewVersions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_else(|| vec!["v1"]);
    if !versions.contains(&"v1") {
        return Err(format!(
            "webhook does not accept v1 AdmissionReview (accepts {versions:?})"
        ));
    }
    let (url, dial) = match hook.pointer("/clientConfig/url").and_then(Value::as_str) {
        Some(u) => (u.to_string(), None),
        None => service_target(app, hook.pointer("/clientConfig/service")).await?,
    };
    let url = url.as_str();
    let ca = hook
        .pointer("/clientConfig/caBundle")
        .and_then(Value::as_str)
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        .transpose()
        .map_err(|e| format!("invalid caBundle: {e}"))?
        .unwrap_or_default();
    let secs = hook
        .get("timeoutSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_TIMEOUT)
        .clamp(1, 30);
    let uid = object::new_uid();
    let body = serde_json::to_vec(&review(attrs, &uid)).map_err(|e| e.to_string())?;
    let answer = client::post(url, dial, &ca, body, Duration::from_secs(secs))
        .await
        .map_err(|e| format!("failed to call webhook: Post \"{url}?timeout={secs}s\": {e}"))?;
    let v: Value = serde_json::from_slice(&answer).map_err(bad_answer)?;
    let resp = v
        .get("response")
        .cloned()
        .ok_or_else(|| bad_answer("no response"))?;
    if resp.get("uid").and_then(Value::as_str) != Some(uid.as_str()) {
        return Err(bad_answer(format!("expected response.uid={uid:?}")));
    }
    Ok(resp)
}

/// The error for a webhook's denial, as Kubernetes words it.
fn denied(name: &str, resp: &Value) -> ApiError {
    let status = resp.get("status");
    let code = status
        .and_then(|s| s.get("code"))
        .and_then(Value::as_u64)
        .filter(|c| (400..600).contains(c))
        .unwrap_or(400) as u16;
    let msg = status
        .and_then(|s| s.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .or_else(|| {
            status
                .and_then(|s| s.get("reason"))
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
        });
    let text = match msg {
        Some(m) => format!("admission webhook \"{name}\" denied the request: {m}"),
        None => format!("admission webhook \"{name}\" denied the request without explanation"),
    };
    let reason = match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "BadRequest",
    };
    ApiError::new(code, reason, text)
}

/// Applies a mutating webhook's JSONPatch to the object.
fn apply_patch(name: &str, resp: &Value, obj: &mut Value) -> Result<(), String> {
    let Some(p) = resp.get("patch").and_then(Value::as_str) else {
        return Ok(());
    };
    match resp.get("patchType").and_then(Value::as_str) {
        Some("JSONPatch") => {}
        other => return Err(bad_answer(format!("unsupported patchType {other:?}"))),
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(p)
        .map_err(|e| bad_answer(format!("patch is not base64: {e}")))?;
    let patch: json_patch::Patch =
        serde_json::from_slice(&raw).map_err(|e| bad_answer(format!("patch: {e}")))?;
    let mut out = obj.clone();
    json_patch::patch(&mut out, &patch)
        .map_err(|e| format!("JSONPatch from webhook {name:?} failed: {e}"))?;
    if !out.is_object() {
        return Err(bad_answer("the patched object is not an object"));
    }
    *obj = out;
    Ok(())
}

/// The webhooks of `plural` that see this request (none for requests about
/// webhook configurations); refuses a dry run a webhook cannot honour.
async fn matching(app: &App, attrs: &Attributes, plural: &str) -> ApiResult<Vec<Value>> {
    if is_config(attrs) {
        return Ok(Vec::new());
    }
    let hooks = webhooks(app, &attrs.reads, plural).await?;
    if hooks.is_empty() {
        return Ok(hooks);
    }
    let ns_labels = namespace_labels(app, attrs).await?;
    let hooks: Vec<Value> = hooks
        .into_iter()
        .filter(|h| matches(h, attrs, ns_labels.as_ref()))
        .collect();
    for hook in &hooks {
        let side_effects = hook
            .get("sideEffects")
            .and_then(Value::as_str)
            .unwrap_or("Unknown");
        if attrs.dry_run && !matches!(side_effects, "None" | "NoneOnDryRun") {
            return Err(ApiError::bad_request(format!(
                "admission webhook \"{}\" does not support dry run",
                hook_name(hook)
            )));
        }
    }
    Ok(hooks)
}

fn hook_name(hook: &Value) -> &str {
    hook.get("name").and_then(Value::as_str).unwrap_or("")
}

/// A failed call: the request's error, or `Ok` under `failurePolicy: Ignore`.
fn failed(hook: &Value, e: String) -> ApiResult<()> {
    let name = hook_name(hook);
    let ignore = hook.get("failurePolicy").and_then(Value::as_str) == Some("Ignore");
    tracing::warn!(webhook = name, error = %e, ignore, "calling admission webhook failed");
    if ignore {
        Ok(())
    } else {
        Err(ApiError::internal(format!(
            "Internal error occurred: failed calling webhook \"{name}\": {e}"
        )))
    }
}

/// Calls one mutating webhook and applies its patch.
async fn mutate_once(app: &App, hook: &Value, attrs: &mut Attributes) -> ApiResult<()> {
    let name = hook_name(hook);
    let outcome = match call(app, hook, attrs).await {
        Ok(resp) if resp.get("allowed").and_then(Value::as_bool) != Some(true) => {
            return Err(denied(name, &resp));
        }
        Ok(resp) => apply_patch(name, &resp, &mut attrs.object),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => failed(hook, e),
    }
}

/// Mutating webhooks, one after another; those with `reinvocationPolicy:
/// IfNeeded` are called once more if a later webhook changed the object.
async fn mutate(app: &App, attrs: &mut Attributes) -> ApiResult<()> {
    let hooks = matching(app, attrs, MUTATING).await?;
    let mut seen: Vec<(usize, Value)> = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        mutate_once(app, hook, attrs).await?;
        if hook.get("reinvocationPolicy").and_then(Value::as_str) == Some("IfNeeded") {
            seen.push((i, attrs.object.clone()));
        }
    }
    for (i, after) in seen {
        if after != attrs.object {
            mutate_once(app, &hooks[i], attrs).await?;
        }
    }
    Ok(())
}

/// Validating webhooks, called in parallel; the first refusal (in
/// configuration order) wins.
async fn validate(app: &App, attrs: &Attributes) -> ApiResult<()> {
    let hooks = matching(app, attrs, VALIDATING).await?;
    let answers = futures::future::join_all(hooks.iter().map(|h| call(app, h, attrs))).await;
    for (hook, answer) in hooks.iter().zip(answers) {
        match answer {
            Ok(resp) if resp.get("allowed").and_then(Value::as_bool) != Some(true) => {
                return Err(denied(hook_name(hook), &resp));
            }
            Ok(_) => {}
            Err(e) => failed(hook, e)?,
        }
    }
    Ok(())
}

impl Plugin for MutatingWebhook {
    fn name(&self) -> &'static str {
        "MutatingAdmissionWebhook"
    }

    fn reads(&self, attrs: &Attributes) -> Vec<Read> {
        reads(attrs, MUTATING)
    }

    fn admit<'a>(
        &'a self,
        app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(mutate(app, attrs))
    }
}

impl Plugin for ValidatingWebhook {
    fn name(&self) -> &'static str {
        "ValidatingAdmissionWebhook"
    }

    fn reads(&self, attrs: &Attributes) -> Vec<Read> {
        reads(attrs, VALIDATING)
    }

    fn validate<'a>(
        &'a self,
        app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(validate(app, attrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(op: Operation) -> Attributes {
        Attributes {
            operation: op,
            res: registry::lookup("", "v1", "pods").expect("pods"),
            subresource: None,
            namespace: Some("ns".into()),
            name: "p".into(),
            object: json!({"metadata": {"name": "p", "labels": {"app": "x"}}}),
            old: None,
            dry_run: false,
            charges: Vec::new(),
            reads: Default::default(),
        }
    }

    #[test]
    fn review_carries_the_request() {
        let r = review(&attrs(Operation::Create), "u1");
        assert_eq!(r["kind"], "AdmissionReview");
        assert_eq!(r["request"]["uid"], "u1");
        assert_eq!(r["request"]["operation"], "CREATE");
        assert_eq!(r["request"]["resource"]["resource"], "pods");
        assert_eq!(r["request"]["object"]["metadata"]["name"], "p");
        assert!(r["request"]["oldObject"].is_null());
        let d = review(&attrs(Operation::Delete), "u2");
        assert!(d["request"]["object"].is_null());
        assert_eq!(d["request"]["oldObject"]["metadata"]["name"], "p");
    }

    #[test]
    fn denials_and_patches() {
        let e = denied(
            "deny.example.com",
            &json!({"allowed": false, "status": {"message": "no", "code": 403}}),
        );
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(
            e.message,
            "admission webhook \"deny.example.com\" denied the request: no"
        );
        let e = denied("d", &json!({"allowed": false}));
        assert_eq!(e.code, 400);
        assert!(e
            .message
            .ends_with("denied the request without explanation"));
        let patch = base64::engine::general_purpose::STANDARD
            .encode(br#"[{"op":"add","path":"/metadata/labels/m","value":"yes"}]"#);
        let mut obj = json!({"metadata": {"labels": {}}});
        apply_patch(
            "m",
            &json!({"patch": patch, "patchType": "JSONPatch"}),
            &mut obj,
        )
        .expect("patched");
        assert_eq!(obj["metadata"]["labels"]["m"], "yes");
        let bad = json!({"patch": "!!", "patchType": "JSONPatch"});
        assert!(apply_patch("m", &bad, &mut obj).is_err());
    }

    #[test]
    fn selectors_pick_webhooks() {
        let hook = json!({"rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"webhooks": "on"}},
            "objectSelector": {"matchLabels": {"app": "x"}}});
        let a = attrs(Operation::Create);
        assert!(matches(&hook, &a, Some(&json!({"webhooks": "on"}))));
        assert!(!matches(&hook, &a, Some(&json!({}))));
        let mut other = attrs(Operation::Create);
        other.object = json!({"metadata": {"labels": {"app": "y"}}});
        assert!(!matches(&hook, &other, Some(&json!({"webhooks": "on"}))));
    }
}
