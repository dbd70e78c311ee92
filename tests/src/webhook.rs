//! An HTTPS admission webhook server for end-to-end tests: a self-signed
//! certificate for 127.0.0.1 (its PEM, base64, is the `caBundle`), and a
//! handler that turns each `AdmissionReview` request into a response.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::tls_server::TlsServer;

/// Decides on one `AdmissionReview.request`: returns the `response`
/// without `uid` (filled in by the server).
pub type Handler = fn(&Value) -> Value;

/// A running webhook server (stopped on drop).
pub struct WebhookServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The server's certificate, PEM then base64 (a `caBundle` value).
    pub ca_bundle: String,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    _server: TlsServer,
}

impl WebhookServer {
    /// `template` (webhook configuration YAML) with this server in it: `URL`
    /// becomes its URL and `"CA"` its `caBundle`.
    pub fn configure(&self, template: &str) -> String {
        template
            .replace("URL", &self.url)
            .replace("\"CA\"", &format!("\"{}\"", self.ca_bundle))
    }

    /// Starts a server on a free loopback port, answering with `handler`.
    pub fn start(handler: Handler) -> Result<WebhookServer> {
        Self::start_for(handler, &[])
    }

    /// [`WebhookServer::start`] with a certificate also valid for `names`
    /// (`svc.ns.svc`, for a webhook reached through a service).
    pub fn start_for(handler: Handler, names: &[&str]) -> Result<WebhookServer> {
        let mut sans = vec!["127.0.0.1".to_string()];
        sans.extend(names.iter().map(|n| n.to_string()));
        let cert = rcgen::generate_simple_self_signed(sans).context("webhook certificate")?;
        let pem = cert.cert.pem();
        let cert_der = cert.cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("webhook key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .context("TLS config")?;
        let server = TlsServer::start("webhook", cfg, move |tls| async move {
            let svc = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let request = &review["request"];
                    let mut response = handler(request);
                    response["uid"] = request["uid"].clone();
                    let out = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        out.to_string(),
                    ))))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        })?;
        let port = server.port;
        Ok(WebhookServer {
            url: format!("https://127.0.0.1:{port}"),
            port,
            ca_bundle: base64::engine::general_purpose::STANDARD.encode(pem),
            _server: server,
        })
    }
}

/// A JSONPatch response (base64, as AdmissionReview carries it).
pub fn patch_response(ops: &Value) -> Value {
    json!({
        "allowed": true,
        "patchType": "JSONPatch",
        "patch": base64::engine::general_purpose::STANDARD.encode(ops.to_string()),
    })
}
