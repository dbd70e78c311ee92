//! GET `pods/<name>/log` (what `kubectl logs` reads), as Kubernetes'
//! `LogREST`: the query is a `PodLogOptions`, the pod names the container
//! and node, and the request is proxied to that node's kubelet
//! (`/containerLogs/<ns>/<pod>/<container>`), its body streamed back as it
//! arrives.

use std::collections::HashMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::read::read_object;
use super::{App, Ctx};
use crate::registry;
use crate::status::{ApiError, ApiResult};

/// The most of a kubelet's error body put in the Status (Kubernetes' `maxReadLength`).
const MAX_ERROR_BODY: usize = 50_000;

/// `PodLogOptions` from the query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `container` (empty: the pod's only container).
    pub container: String,
    /// `follow`: stream new lines until the client goes away.
    pub follow: bool,
    /// `previous`: the previous instance of the container.
    pub previous: bool,
    /// `sinceSeconds`.
    pub since_seconds: Option<i64>,
    /// `sinceTime` (RFC 3339).
    pub since_time: Option<OffsetDateTime>,
    /// `timestamps`: prefix each line with its time.
    pub timestamps: bool,
    /// `tailLines`.
    pub tail_lines: Option<i64>,
    /// `limitBytes`.
    pub limit_bytes: Option<i64>,
    /// `insecureSkipTLSVerifyBackend`: do not verify the kubelet's certificate.
    pub insecure_skip_tls_verify_backend: bool,
}

/// A query integer; a malformed one is a 400 worded as Go's `strconv.ParseInt`.
fn query_int(q: &HashMap<String, String>, k: &str) -> ApiResult<Option<i64>> {
    let Some(v) = q.get(k).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    v.parse::<i64>().map(Some).map_err(|e| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                "value out of range"
            }
            _ => "invalid syntax",
        };
        ApiError::bad_request(format!("strconv.ParseInt: parsing {v:?}: {why}"))
    })
}

impl LogOptions {
    /// Parses the query (malformed values: 400 BadRequest).
    pub fn parse(q: &HashMap<String, String>) -> ApiResult<LogOptions> {
        let since_time = match q.get("sinceTime").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(
                OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).map_err(
                    |e| {
                        ApiError::bad_request(format!(
                            "parsing time {v:?} as \"2006-01-02T15:04:05Z07:00\": {e}"
                        ))
                    },
                )?,
            ),
        };
        Ok(LogOptions {
            container: q.get("container").cloned().unwrap_or_default(),
            follow: super::query_bool(q, "follow"),
            previous: super::query_bool(q, "previous"),
            since_seconds: query_int(q, "sinceSeconds")?,
            since_time,
            timestamps: super::query_bool(q, "timestamps"),
            tail_lines: query_int(q, "tailLines")?,
            limit_bytes: query_int(q, "limitBytes")?,
            insecure_skip_tls_verify_backend: super::query_bool(q, "insecureSkipTLSVerifyBackend"),
        })
    }

    /// Kubernetes' `ValidatePodLogOptions`: 422 Invalid (kind
    /// `PodLogOptions`) naming every bad field.
    pub fn validate(&self, pod: &str) -> ApiResult<()> {
        // (field, reason, body)
        let mut errs: Vec<(&str, &str, String)> = Vec::new();
        if let Some(n) = self.tail_lines.filter(|n| *n < 0) {
            errs.push((
                "tailLines",
                "FieldValueInvalid",
                format!("Invalid value: {n}: must be greater than or equal to 0"),
            ));
        }
        if let Some(n) = self.limit_bytes.filter(|n| *n < 1) {
            errs.push((
                "limitBytes",
                "FieldValueInvalid",
                format!("Invalid value: {n}: must be greater than 0"),
            ));
        }
        match (self.since_seconds, self.since_time) {
            (Some(_), Some(_)) => errs.push((
                "",
                "FieldValueForbidden",
                "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
            )),
            (Some(n), None) if n < 1 => errs.push((
                "sinceSeconds",
                "FieldValueInvalid",
                format!("Invalid value: {n}: must be greater than 0"),
            )),
            _ => {}
        }
        if errs.is_empty() {
            return Ok(());
        }
        let each: Vec<String> = errs.iter().map(|(f, _, b)| format!("{f}: {b}")).collect();
        let summary = if each.len() == 1 {
            each[0].clone()
        } else {
            format!("[{}]", each.join(", "))
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|(f, r, b)| {
                let mut c = json!({"reason": r, "message": b});
                if !f.is_empty() {
                    c["field"] = json!(f);
                }
                c
            })
            .collect();
        Err(ApiError {
            details: Some(json!({"name": pod, "kind": "PodLogOptions", "causes": causes})),
            ..ApiError::new(
                422,
                "Invalid",
                format!("PodLogOptions {pod:?} is invalid: {summary}"),
            )
        })
    }

    /// The query of the kubelet request: the set options, keys sorted (Go's
    /// `url.Values.Encode`); `container` is in the path, the TLS choice is ours.
    pub fn kubelet_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let flag = |on: bool| on.then_some("true".to_string());
        let since_time = self.since_time.and_then(|t| {
            t.to_offset(time::UtcOffset::UTC)
                .format(time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
                ))
                .ok()
        });
        let pairs = [
            ("follow", flag(self.follow)),
            ("limitBytes", self.limit_bytes.map(|n| n.to_string())),
            ("previous", flag(self.previous)),
            ("sinceSeconds", self.since_seconds.map(|n| n.to_string())),
            ("sinceTime", since_time),
            ("tailLines", self.tail_lines.map(|n| n.to_string())),
            ("timestamps", flag(self.timestamps)),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                q.append_pair(k, &v);
            }
        }
        q.finish()
    }
}

fn names<'a>(pod: &'a Value, list: &str) -> impl Iterator<Item = &'a str> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
}

/// The container to read, as Kubernetes' `validateContainer`: the one
/// asked for if the pod has it (containers, init or ephemeral containers),
/// else the pod's only container; otherwise 400 BadRequest.
pub fn select_container(pod: &Value, pod_name: &str, asked: &str) -> ApiResult<String> {
    let kinds = ["initContainers", "containers", "ephemeralContainers"];
    if !asked.is_empty() {
        if kinds.iter().any(|k| names(pod, k).any(|n| n == asked)) {
            return Ok(asked.to_string());
        }
        return Err(ApiError::bad_request(format!(
            "container {asked} is not valid for pod {pod_name}"
        )));
    }
    let regular: Vec<&str> = names(pod, "containers").collect();
    match regular.as_slice() {
        [only] => Ok(only.to_string()),
        [] => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}"
        ))),
        _ => {
            // Every container, in `VisitContainers` order, as Go prints a []string.
            let all: Vec<&str> = kinds.iter().flat_map(|k| names(pod, k)).collect();
            Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                all.join(" ")
            )))
        }
    }
}

/// A non-2xx kubelet answer as Kubernetes' `GenericHttpResponseChecker`
/// words it for `pods/log`.
fn kubelet_error(code: u16, body: &str, pod: &str) -> ApiError {
    match code {
        500 => ApiError {
            details: Some(json!({"causes": [{"message": body}]})),
            ..ApiError::internal(format!("Internal error occurred: {body}"))
        },
        400 => ApiError::bad_request(body),
        _ => generic_server_response(code, body, pod),
    }
}

/// Kubernetes' `NewGenericServerResponse` (verb "", resource `pods/log`).
fn generic_server_response(code: u16, body: &str, pod: &str) -> ApiError {
    let (reason, message) = match code {
        409 => ("Conflict", "the server reported a conflict".to_string()),
        404 => (
            "NotFound",
            "the server could not find the requested resource".to_string(),
        ),
        401 => (
            "Unauthorized",
            "the server has asked for the client to provide credentials".to_string(),
        ),
        403 => ("Forbidden", body.to_string()),
        405 => (
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_string(),
        ),
        422 => (
            "Invalid",
            "the server rejected our request due to an error in our request".to_string(),
        ),
        406 => (
            "NotAcceptable",
            "the server was unable to respond with a content type that the client supports"
                .to_string(),
        ),
        415 => (
            "UnsupportedMediaType",
            "the server was unable to respond with a content type that the client supports"
                .to_string(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_string(),
        ),
        504 => ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing the request".to_string()),
        429 => ("TooManyRequests", "the server has received too many requests and has asked us to try again later".to_string()),
        c if c >= 500 => (
            "InternalError",
            format!("an error on the server ({body:?}) has prevented the request from succeeding"),
        ),
        c => (
            "",
            format!("the server responded with the status code {c} but did not return more information"),
        ),
    };
    ApiError {
        details: Some(json!({"name": pod, "kind": "pods/log"})),
        ..ApiError::new(code, reason, format!("{message} ( pods/log {pod})"))
    }
}

/// An error that is not a Kubernetes API status (a failed kubelet dial):
/// 500 with no reason, the message as is.
fn unknown(message: String) -> ApiError {
    ApiError::new(500, "", message)
}

/// GET `pods/<name>/log`.
pub async fn log(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or("");
    let ns = t.namespace.as_deref().unwrap_or("");
    let opts = LogOptions::parse(&ctx.query)?;
    opts.validate(name)?;
    let (pod, _) = read_object(app, &t.key())
        .await?
        .ok_or_else(|| ApiError::not_found(t.res, name))?;
    let container = select_container(&pod, name, &opts.container)?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node_name.is_empty() {
        // Kubernetes: no host, no location, an empty 204.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let nodes = registry::lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("the nodes resource is not registered"))?;
    let (node, _) = read_object(app, &nodes.key(None, node_name))
        .await?
        .ok_or_else(|| ApiError::not_found(nodes, node_name))?;
    let (host, port) = app.kubelet.endpoint(&node).map_err(unknown)?;
    let path = format!(
        "/containerLogs/{}/{}/{}",
        segment(ns),
        segment(name),
        segment(&container)
    );
    let query = opts.kubelet_query();
    let path_and_query = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let resp = app
        .kubelet
        .get(
            &host,
            port,
            &path_and_query,
            opts.insecure_skip_tls_verify_backend,
        )
        .await
        .map_err(unknown)?;
    let code = resp.status().as_u16();
    if !(200..=206).contains(&code) {
        let body = error_body(resp.into_body()).await;
        return Err(kubelet_error(code, &String::from_utf8_lossy(&body), name));
    }
    // A follow (`-f`) never ends on its own: it ends when the server stops.
    let stream = axum::body::Body::new(resp.into_body()).into_data_stream();
    let mut out = Response::new(axum::body::Body::from_stream(app.until_stopping(stream)));
    out.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(out)
}

/// The first [`MAX_ERROR_BODY`] bytes of a kubelet's error answer (what
/// arrived before a read error, if one happens).
async fn error_body(mut body: hyper::body::Incoming) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < MAX_ERROR_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = MAX_ERROR_BODY - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    out
}

/// A path segment, percent-encoded where a URL path needs it (names are
/// DNS labels, so this rarely changes anything).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_option_and_sorts_the_kubelet_query() {
        let o = LogOptions::parse(&q(&[
            ("container", "c2"),
            ("follow", "true"),
            ("previous", "1"),
            ("timestamps", "True"),
            ("tailLines", "5"),
            ("limitBytes", "100"),
            ("sinceTime", "2024-05-06T07:08:09+02:00"),
            ("insecureSkipTLSVerifyBackend", "true"),
        ]))
        .expect("parse");
        assert_eq!(o.container, "c2");
        assert!(o.follow && o.previous && o.timestamps && o.insecure_skip_tls_verify_backend);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(5), Some(100)));
        assert_eq!(
            o.kubelet_query(),
            "follow=true&limitBytes=100&previous=true&sinceTime=2024-05-06T05%3A08%3A09Z&tailLines=5&timestamps=true"
        );
        let o =
            LogOptions::parse(&q(&[("sinceSeconds", "30"), ("follow", "false")])).expect("parse");
        assert_eq!(o.kubelet_query(), "sinceSeconds=30");
        assert_eq!(
            LogOptions::parse(&q(&[])).expect("empty").kubelet_query(),
            ""
        );
    }

    #[test]
    fn booleans_are_lenient_as_in_kubernetes() {
        for (v, want) in [
            ("false", false),
            ("FALSE", false),
            ("0", false),
            ("", true),
            ("yes", true),
            ("1", true),
        ] {
            let o = LogOptions::parse(&q(&[("follow", v)])).expect("parse");
            assert_eq!(o.follow, want, "follow={v:?}");
        }
    }

    #[test]
    fn malformed_numbers_and_times_are_400() {
        let e = LogOptions::parse(&q(&[("tailLines", "ten")])).expect_err("bad int");
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(
            e.message,
            "strconv.ParseInt: parsing \"ten\": invalid syntax"
        );
        let e = LogOptions::parse(&q(&[("limitBytes", "99999999999999999999")])).expect_err("big");
        assert_eq!(
            e.message,
            "strconv.ParseInt: parsing \"99999999999999999999\": value out of range"
        );
        let e = LogOptions::parse(&q(&[("sinceTime", "yesterday")])).expect_err("bad time");
        assert_eq!(e.code, 400);
        assert!(
            e.message.starts_with("parsing time \"yesterday\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn validation_is_422_with_kubernetes_messages() {
        let bad = |pairs: &[(&str, &str)]| {
            LogOptions::parse(&q(pairs))
                .expect("parse")
                .validate("p")
                .expect_err("invalid")
        };
        let e = bad(&[("tailLines", "-1")]);
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(
            e.message,
            "PodLogOptions \"p\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
        let d = e.details.expect("details");
        assert_eq!(d["kind"], "PodLogOptions");
        assert_eq!(d["causes"][0]["field"], "tailLines");
        assert_eq!(
            bad(&[("sinceSeconds", "5"), ("sinceTime", "2024-01-01T00:00:00Z")]).message,
            "PodLogOptions \"p\" is invalid: : Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
        );
        assert_eq!(
            bad(&[("sinceSeconds", "0"), ("limitBytes", "0")]).message,
            "PodLogOptions \"p\" is invalid: [limitBytes: Invalid value: 0: must be greater than 0, sinceSeconds: Invalid value: 0: must be greater than 0]"
        );
        for ok in [
            &[("tailLines", "0")][..],
            &[("sinceSeconds", "1"), ("limitBytes", "1")],
        ] {
            LogOptions::parse(&q(ok))
                .expect("parse")
                .validate("p")
                .expect("valid");
        }
    }

    #[test]
    fn container_selection() {
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(select_container(&one, "p", "").expect("only"), "a");
        let many = json!({"spec": {
            "initContainers": [{"name": "setup"}],
            "containers": [{"name": "a"}, {"name": "b"}],
            "ephemeralContainers": [{"name": "debug"}],
        }});
        let e = select_container(&many, "p", "").expect_err("ambiguous");
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [setup a b debug]"
        );
        for c in ["setup", "b", "debug"] {
            assert_eq!(select_container(&many, "p", c).expect("named"), c);
        }
        assert_eq!(
            select_container(&many, "p", "zz")
                .expect_err("unknown")
                .message,
            "container zz is not valid for pod p"
        );
        assert_eq!(
            select_container(&json!({"spec": {}}), "p", "")
                .expect_err("none")
                .message,
            "a container name must be specified for pod p"
        );
    }

    #[test]
    fn kubelet_errors_are_wrapped_as_kubernetes_does() {
        let e = kubelet_error(404, "no such container", "p");
        assert_eq!((e.code, e.reason), (404, "NotFound"));
        assert_eq!(
            e.message,
            "the server could not find the requested resource ( pods/log p)"
        );
        let e = kubelet_error(500, "boom", "p");
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (500, "InternalError", "Internal error occurred: boom")
        );
        let e = kubelet_error(400, "bad tail", "p");
        assert_eq!((e.code, e.message.as_str()), (400, "bad tail"));
        let e = kubelet_error(502, "gateway", "p");
        assert_eq!(
            e.message,
            "an error on the server (\"gateway\") has prevented the request from succeeding ( pods/log p)"
        );
    }
}
