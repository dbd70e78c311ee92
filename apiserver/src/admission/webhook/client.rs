//! The HTTPS client that calls admission webhooks: one HTTP/1.1 POST per
//! call over rustls, trusting only the configuration's `caBundle`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::https_client::{open, OpenError, Timeouts};

/// Why a webhook could not be called.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL is not `https://host[:port]/path`.
    #[error("invalid webhook URL {0:?}")]
    BadUrl(String),
    /// The `caBundle` holds no usable certificate.
    #[error("invalid caBundle: {0}")]
    BadCa(String),
    /// Connecting, TLS, or the HTTP exchange failed.
    #[error("{0}")]
    Transport(String),
    /// No answer within `timeoutSeconds`.
    #[error("context deadline exceeded")]
    Timeout,
    /// The answer was not a 200.
    #[error("the server responded with status {0}")]
    Status(u16),
}

fn tls_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, CallError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| CallError::BadCa(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| CallError::BadCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(CallError::BadCa("no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CallError::Transport(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Where to connect instead of the URL's host (a service's endpoint); the
/// URL's host stays the TLS server name and the `Host` header.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The address to connect to.
    pub host: String,
    /// The port to connect to.
    pub port: u16,
}

/// POSTs `body` (JSON) to `url` (connecting to `dial` if given), trusting
/// `ca_pem`; returns the response body.
pub async fn post(
    url: &str,
    dial: Option<Dial>,
    ca_pem: &[u8],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    match tokio::time::timeout(timeout, post_inner(url, dial, ca_pem, body)).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout),
    }
}

async fn post_inner(
    url: &str,
    dial: Option<Dial>,
    ca_pem: &[u8],
    body: Vec<u8>,
) -> Result<Vec<u8>, CallError> {
    let uri: hyper::Uri = url.parse().map_err(|_| CallError::BadUrl(url.into()))?;
    if uri.scheme_str() != Some("https") {
        return Err(CallError::BadUrl(url.into()));
    }
    let host = uri
        .host()
        .ok_or_else(|| CallError::BadUrl(url.into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let (dial_host, dial_port) = match dial {
        Some(d) => (d.host, d.port),
        None => (host.clone(), port),
    };
    let tls = Arc::new(tls_config(ca_pem)?);
    let mut sender = open(
        tls,
        (dial_host.as_str(), dial_port),
        &host,
        Timeouts::default(),
        "webhook",
    )
    .await
    .map_err(|e| match e {
        OpenError::Dial(e) => {
            CallError::Transport(format!("dial tcp {dial_host}:{dial_port}: {e}"))
        }
        OpenError::Name(_) => CallError::BadUrl(url.into()),
        e => CallError::Transport(e.to_string()),
    })?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host);
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?
        .to_bytes();
    if status != 200 {
        return Err(CallError::Status(status));
    }
    Ok(bytes.to_vec())
}
