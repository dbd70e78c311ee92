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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebhookServer {
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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind webhook")?;
        listener.set_nonblocking(true).context("nonblocking")?;
        let port = listener.local_addr().context("addr")?.port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stopped => return,
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let request = &review["request"];
                            let mut response = handler(request);
                            response["uid"] = request["uid"].clone();
                            let out = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(out.to_string()))))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        });
        Ok(WebhookServer {
            url: format!("https://127.0.0.1:{port}"),
            port,
            ca_bundle: base64::engine::general_purpose::STANDARD.encode(pem),
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
