//! TLS 1.3 setup for the peer transport: mutual TLS against a cluster CA
//! ([`PeerTls::Files`]) or self-signed auto TLS ([`PeerTls::Auto`]).
//!
//! Both sides of every connection present a certificate (the dialer as a
//! client certificate). In auto mode any certificate is accepted, as etcd's
//! `--peer-auto-tls` does, but the handshake signatures are still verified, so
//! the connection is encrypted to whoever holds the presented key.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::pki::{
    load_certs, load_key, provider, write_atomically, AcceptAnyPeer, PkiError, Signatures,
};
use super::{PeerTls, TransportError, ALPN};

/// File names of the auto-TLS certificate and key inside [`PeerTls::Auto`]'s dir.
pub(crate) const AUTO_CERT: &str = "cert.pem";
/// See [`AUTO_CERT`].
pub(crate) const AUTO_KEY: &str = "key.pem";

/// Server name the dialer asks for in auto mode (the verifier ignores it).
pub(crate) const AUTO_SERVER_NAME: &str = "keel-peer";

/// The rustls configurations for both directions, plus what the endpoint
/// derives from the key.
pub(crate) struct TlsSetup {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
    /// True in CA mode: the dialer checks the peer's certificate names its IP.
    pub verify_names: bool,
    /// The private key (DER), from which the stateless-reset key is derived so
    /// that it stays the same across restarts.
    pub key_der: Vec<u8>,
}

fn tls_err(what: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(what.to_string())
}

impl From<PkiError> for TransportError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::Io { path, source } => TransportError::Io { path, source },
            e @ PkiError::Pem { .. } => TransportError::Tls(e.to_string()),
        }
    }
}

/// Loads the auto-TLS certificate and key from `dir`, generating them on
/// first use (so restarts present the same certificate).
fn auto_cert(
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let cert_path: PathBuf = dir.join(AUTO_CERT);
    let key_path: PathBuf = dir.join(AUTO_KEY);
    if !(cert_path.exists() && key_path.exists()) {
        fs::create_dir_all(dir).map_err(|source| TransportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let generated = rcgen::generate_simple_self_signed(vec![
            AUTO_SERVER_NAME.to_string(),
            "localhost".to_string(),
        ])
        .map_err(tls_err)?;
        write_atomically(
            &key_path,
            generated.signing_key.serialize_pem().as_bytes(),
            true,
        )?;
        write_atomically(&cert_path, generated.cert.pem().as_bytes(), false)?;
        tracing::info!(dir = %dir.display(), "generated self-signed peer certificate (auto TLS)");
    }
    Ok((load_certs(&cert_path)?, load_key(&key_path)?))
}

/// Builds the TLS configuration for `tls`.
pub(crate) fn setup(tls: &PeerTls) -> Result<TlsSetup, TransportError> {
    let provider = provider();
    let (chain, key, roots) = match tls {
        PeerTls::Auto { dir } => {
            let (chain, key) = auto_cert(dir)?;
            (chain, key, None)
        }
        PeerTls::Files { cert, key, ca } => {
            let chain = load_certs(cert)?;
            let key = load_key(key)?;
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
            }
            (chain, key, Some(Arc::new(roots)))
        }
    };
    let key_der = key.secret_der().to_vec();

    let client_verifier: Arc<dyn ClientCertVerifier> = match &roots {
        None => Arc::new(AcceptAnyPeer(Signatures(provider.clone()))),
        Some(roots) => WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(tls_err)?,
    };
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls_err)?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?;
    let builder = match &roots {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyPeer(Signatures(
                provider.clone(),
            )))),
        Some(roots) => builder.with_webpki_verifier(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .map_err(tls_err)?,
        ),
    };
    let mut client = builder.with_client_auth_cert(chain, key).map_err(tls_err)?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    Ok(TlsSetup {
        server,
        client,
        verify_names: roots.is_some(),
        key_der,
    })
}

/// Whether `cert` (an end-entity certificate) has a subject alternative
/// name for `ip`.
pub(crate) fn names_ip(cert: &CertificateDer<'_>, ip: std::net::IpAddr) -> bool {
    rustls::server::ParsedCertificate::try_from(cert).is_ok_and(|parsed| {
        rustls::client::verify_server_name(&parsed, &ServerName::IpAddress(ip.into())).is_ok()
    })
}
