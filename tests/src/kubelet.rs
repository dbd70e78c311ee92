//! A stand-in kubelet for end-to-end tests of `pods/log` (keel has no node
//! agent yet): an HTTPS server on a free 127.0.0.1 port with a self-signed
//! certificate that serves `/containerLogs/<ns>/<pod>/<container>` and
//! records every request (path, query, the client certificate presented).
//!
//! What it answers:
//! - container `gone`: 404 `container "gone" not found` (as a kubelet
//!   whose container has not started);
//! - `follow=true`: `follow 1`, then one more line per
//!   [`FakeKubelet::release`], ending after `follow 3`;
//! - otherwise ten lines `<container> line <i>`, the last `tailLines` of
//!   them, each prefixed with `2024-01-01T00:00:<i>.000000000Z ` when
//!   `timestamps=true`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::tls_server::TlsServer;

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The path and query, as sent.
    pub uri: String,
    /// The client certificate presented (DER), if any.
    pub client_cert: Option<Vec<u8>>,
}

/// A running stand-in kubelet (stopped on drop).
pub struct FakeKubelet {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its serving certificate (PEM; self-signed for 127.0.0.1).
    pub cert_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<tokio::sync::Semaphore>,
    ended: Arc<std::sync::atomic::AtomicUsize>,
    _server: TlsServer,
}

type Body = BoxBody<Bytes, Infallible>;

fn text(code: u16, body: String) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
    r
}

fn answer(uri: &hyper::Uri, gate: Arc<tokio::sync::Semaphore>) -> hyper::Response<Body> {
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let ["containerLogs", _ns, _pod, container] = parts.as_slice() else {
        return text(404, "404 page not found\n".into());
    };
    let query: Vec<(&str, &str)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let q = |k: &str| query.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    if *container == "gone" {
        return text(404, format!("container {container:?} not found\n"));
    }
    if q("follow") == Some("true") {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            for i in 1..=3 {
                if i > 1 {
                    match gate.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                }
                let line = Frame::data(Bytes::from(format!("follow {i}\n")));
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        return hyper::Response::new(StreamBody::new(stream).boxed());
    }
    let mut lines: Vec<String> = (1..=10)
        .map(|i| {
            let stamp = if q("timestamps") == Some("true") {
                format!("2024-01-01T00:00:{i:02}.000000000Z ")
            } else {
                String::new()
            };
            format!("{stamp}{container} line {i}\n")
        })
        .collect();
    if let Some(n) = q("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        lines = lines.split_off(lines.len().saturating_sub(n));
    }
    text(200, lines.concat())
}

impl FakeKubelet {
    /// Starts the stand-in; with `client_ca` (PEM), it requires a client
    /// certificate that chains to it (a self-signed one may be its own CA).
    pub fn start(client_ca: Option<&str>) -> Result<FakeKubelet> {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .context("kubelet certificate")?;
        let cert_pem = cert.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("kubelet key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?;
        let builder = match client_ca {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.context("client CA")?).context("client CA")?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .context("client verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let cfg = builder
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .context("TLS config")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let ended = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen2, gate2, ended2) = (seen.clone(), gate.clone(), ended.clone());
        let server = TlsServer::start("kubelet", cfg, move |tls| {
            let (seen, gate, ended) = (seen2.clone(), gate2.clone(), ended2.clone());
            async move {
                let client_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec());
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let uri = req.uri().clone();
                        if let Ok(mut s) = seen.lock() {
                            s.push(Seen {
                                uri: uri.to_string(),
                                client_cert: client_cert.clone(),
                            });
                        }
                        let resp = answer(&uri, gate.clone());
                        async move { Ok::<_, Infallible>(resp) }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
                ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })?;
        Ok(FakeKubelet {
            port: server.port,
            cert_pem,
            seen,
            gate,
            ended,
            _server: server,
        })
    }

    /// The requests so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The path and query of the latest request.
    pub fn last_uri(&self) -> Option<String> {
        self.seen().last().map(|s| s.uri.clone())
    }

    /// How many client connections have ended.
    pub fn connections_ended(&self) -> usize {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets a `follow` stream send its next line.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        // Open follow streams end; the server stops after this.
        self.gate.close();
    }
}
