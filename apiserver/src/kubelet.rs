//! The API server's client of the kubelets (what `pods/log` proxies to):
//! which address and port of a Node to dial (`--kubelet-preferred-address-types`,
//! `status.daemonEndpoints.kubeletEndpoint.Port`), and one HTTPS GET per
//! request with the API server's kubelet client identity
//! (`--kubelet-client-certificate`/`--kubelet-client-key`).
//!
//! As kube-apiserver does, the kubelet's serving certificate is verified
//! only when `--kubelet-certificate-authority` is given; without it the
//! connection is encrypted but the kubelet is not authenticated (a
//! man-in-the-middle could serve the logs). `insecureSkipTLSVerifyBackend`
//! skips the verification for one request even with a CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use keel_storage::quic::tls::{AcceptAnyPeer, Signatures};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use crate::https_client::{open, OpenError, Timeouts};

/// The kubelet port when a Node reports none (kube-apiserver's `--kubelet-port`).
pub const DEFAULT_PORT: u16 = 10250;

/// How long the TCP connection to a kubelet may take (the
/// dialer timeout of kube-apiserver's kubelet transport).
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the TLS handshake with a kubelet may take (Go's
/// `http.Transport.TLSHandshakeTimeout`, as kube-apiserver's kubelet
/// transport sets it).
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The node address types Kubernetes knows, in kube-apiserver's default
/// `--kubelet-preferred-address-types` order.
pub const ADDRESS_TYPES: [&str; 5] = [
    "Hostname",
    "InternalDNS",
    "InternalIP",
    "ExternalDNS",
    "ExternalIP",
];

/// The `--kubelet-*` flags.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// `--kubelet-preferred-address-types`, in order.
    pub preferred_address_types: Vec<String>,
    /// `--kubelet-client-certificate` (PEM).
    pub client_certificate: Option<PathBuf>,
    /// `--kubelet-client-key` (PEM).
    pub client_key: Option<PathBuf>,
    /// `--kubelet-certificate-authority` (PEM); unset: kubelets' serving
    /// certificates are not verified.
    pub certificate_authority: Option<PathBuf>,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        KubeletConfig {
            preferred_address_types: ADDRESS_TYPES.iter().map(|s| s.to_string()).collect(),
            client_certificate: None,
            client_key: None,
            certificate_authority: None,
        }
    }
}

/// Checks `--kubelet-preferred-address-types` (each a known type).
pub fn parse_address_types(value: &str) -> Result<Vec<String>, String> {
    let types: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if types.is_empty() {
        return Err("at least one address type is required".into());
    }
    for t in &types {
        if !ADDRESS_TYPES.contains(&t.as_str()) {
            return Err(format!(
                "{t:?} is not a node address type (one of {})",
                ADDRESS_TYPES.join(", ")
            ));
        }
    }
    Ok(types)
}

/// The HTTPS client for kubelets.
#[derive(Debug)]
pub struct KubeletClient {
    preferred: Vec<String>,
    /// Verifies the kubelet against the CA (no CA: accepts any certificate).
    tls: Arc<rustls::ClientConfig>,
    /// Never verifies (`insecureSkipTLSVerifyBackend`).
    insecure: Arc<rustls::ClientConfig>,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl KubeletClient {
    /// Loads the client identity and CA named by `cfg`.
    pub fn new(cfg: &KubeletConfig) -> Result<KubeletClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = match (&cfg.client_certificate, &cfg.client_key) {
            (Some(c), Some(k)) => {
                let pem = read("--kubelet-client-certificate", c)?;
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--kubelet-client-certificate {}: {e}", c.display()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "--kubelet-client-certificate {}: no certificate",
                        c.display()
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(&read("--kubelet-client-key", k)?)
                    .map_err(|e| format!("--kubelet-client-key {}: {e}", k.display()))?;
                Some((chain, key))
            }
            (None, None) => None,
            _ => {
                return Err(
                    "--kubelet-client-certificate and --kubelet-client-key go together".into(),
                )
            }
        };
        let roots = match &cfg.certificate_authority {
            Some(p) => {
                let pem = read("--kubelet-certificate-authority", p)?;
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| format!("--kubelet-certificate-authority: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("--kubelet-certificate-authority: {e}"))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "--kubelet-certificate-authority {}: no certificate",
                        p.display()
                    ));
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let tls = client_config(&provider, roots, identity.as_ref())?;
        let insecure = client_config(&provider, None, identity.as_ref())?;
        Ok(KubeletClient {
            preferred: cfg.preferred_address_types.clone(),
            tls: Arc::new(tls),
            insecure: Arc::new(insecure),
        })
    }

    /// Where the kubelet of `node` listens: its preferred address and port.
    pub fn endpoint(&self, node: &Value) -> Result<(String, u16), String> {
        Ok((
            preferred_address(node, &self.preferred)?,
            kubelet_port(node),
        ))
    }

    /// GETs `path_and_query` from the kubelet at `host:port`. The error is
    /// the message Kubernetes shows for a failed kubelet request
    /// (`Get "https://…": dial tcp …: connect: connection refused`).
    pub async fn get(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
        insecure: bool,
    ) -> Result<hyper::Response<Incoming>, String> {
        let authority = join_host_port(host, port);
        let url = format!("https://{authority}{path_and_query}");
        let fail = |what: String| format!("Get {url:?}: {what}");
        let cfg = if insecure { &self.insecure } else { &self.tls };
        let timeouts = Timeouts {
            dial: Some(DIAL_TIMEOUT),
            tls: Some(TLS_HANDSHAKE_TIMEOUT),
        };
        let mut sender = open(cfg.clone(), (host, port), host, timeouts, "kubelet")
            .await
            .map_err(|e| {
                fail(match e {
                    OpenError::Dial(e) => format!("dial tcp {authority}: connect: {}", io_text(&e)),
                    OpenError::DialTimeout => format!("dial tcp {authority}: i/o timeout"),
                    OpenError::Name(_) => format!("invalid host name {host:?}"),
                    OpenError::TlsTimeout => "net/http: TLS handshake timeout".into(),
                    e => e.to_string(),
                })
            })?;
        let req = hyper::Request::get(path_and_query)
            .header(hyper::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))
    }
}

/// An I/O error as Go words it (`connection refused`), else Rust's text.
fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => e.to_string(),
    }
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: Option<Arc<rustls::RootCertStore>>,
    identity: Option<&(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match roots {
        Some(roots) => builder.with_webpki_verifier(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyPeer(Signatures(
                provider.clone(),
            )))),
    };
    let mut cfg = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("kubelet client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// `host:port`, with an IPv6 host in brackets (Go's `net.JoinHostPort`).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The first address of `node` whose type comes first in `preferred`
/// (Kubernetes' `GetPreferredNodeAddress`).
pub fn preferred_address(node: &Value, preferred: &[String]) -> Result<String, String> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let field = |a: &Value, f: &str| a.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    for t in preferred {
        if let Some(a) = addresses.iter().find(|a| field(a, "type") == *t) {
            return Ok(field(a, "address"));
        }
    }
    // Go's `%v` of the []NodeAddress.
    let known: Vec<String> = addresses
        .iter()
        .map(|a| format!("{{{} {}}}", field(a, "type"), field(a, "address")))
        .collect();
    Err(format!(
        "no preferred addresses found; known addresses: [{}]",
        known.join(" ")
    ))
}

/// `status.daemonEndpoints.kubeletEndpoint.Port`, or [`DEFAULT_PORT`] when
/// it is missing or not positive.
pub fn kubelet_port(node: &Value) -> u16 {
    node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| *p > 0)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(DEFAULT_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> Vec<String> {
        KubeletConfig::default().preferred_address_types
    }

    #[test]
    fn address_follows_the_preferred_order() {
        let node = json!({"status": {"addresses": [
            {"type": "ExternalIP", "address": "203.0.113.1"},
            {"type": "InternalIP", "address": "10.0.0.1"},
            {"type": "Hostname", "address": "n1"},
        ]}});
        assert_eq!(preferred_address(&node, &defaults()).as_deref(), Ok("n1"));
        let ips = vec!["ExternalIP".to_string(), "InternalIP".to_string()];
        assert_eq!(preferred_address(&node, &ips).as_deref(), Ok("203.0.113.1"));
        let only_internal = json!({"status": {"addresses": [
            {"type": "ExternalIP", "address": "203.0.113.1"},
            {"type": "InternalIP", "address": "10.0.0.1"},
        ]}});
        assert_eq!(
            preferred_address(&only_internal, &defaults()).as_deref(),
            Ok("10.0.0.1")
        );
    }

    #[test]
    fn no_matching_address_is_go_worded() {
        let node =
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
        assert_eq!(
            preferred_address(&node, &["ExternalIP".to_string()]),
            Err("no preferred addresses found; known addresses: [{InternalIP 10.0.0.1}]".into())
        );
        assert_eq!(
            preferred_address(&json!({}), &defaults()),
            Err("no preferred addresses found; known addresses: []".into())
        );
    }

    #[test]
    fn port_falls_back_to_10250() {
        let with =
            |p: Value| json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": p}}}});
        assert_eq!(kubelet_port(&with(json!(12345))), 12345);
        assert_eq!(kubelet_port(&with(json!(0))), 10250);
        assert_eq!(kubelet_port(&with(json!(-1))), 10250);
        assert_eq!(kubelet_port(&with(json!(70000))), 10250);
        assert_eq!(kubelet_port(&json!({"status": {}})), 10250);
    }

    #[test]
    fn address_types_flag() {
        assert_eq!(
            parse_address_types("InternalIP, ExternalIP"),
            Ok(vec!["InternalIP".to_string(), "ExternalIP".to_string()])
        );
        assert!(parse_address_types("Internal").is_err());
        assert!(parse_address_types("").is_err());
        assert_eq!(join_host_port("::1", 10250), "[::1]:10250");
        assert_eq!(join_host_port("10.0.0.1", 10250), "10.0.0.1:10250");
    }

    #[tokio::test]
    async fn a_kubelet_that_is_down_is_named_in_the_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let client = KubeletClient::new(&KubeletConfig::default()).expect("client");
        let err = client
            .get(
                "127.0.0.1",
                port,
                "/containerLogs/ns/p/c?follow=true",
                false,
            )
            .await
            .expect_err("nothing listens");
        assert_eq!(
            err,
            format!("Get \"https://127.0.0.1:{port}/containerLogs/ns/p/c?follow=true\": dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
    }

    #[test]
    fn half_an_identity_is_refused() {
        let cfg = KubeletConfig {
            client_certificate: Some("/nonexistent/cert".into()),
            ..KubeletConfig::default()
        };
        assert!(KubeletClient::new(&cfg).is_err());
        assert!(KubeletClient::new(&KubeletConfig::default()).is_ok());
    }
}
