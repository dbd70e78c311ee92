//! TLS 1.3 of the QUIC client API: the member's certificate
//! ([`ServerTls`]) and the client's verification of it (a CA, or pinned
//! certificates).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_raft::transport::pki::{self, provider};
/// The handshake-signature checks and the accept-any-chain verifier, for
/// the API server's kubelet client (which has no keel-raft dependency).
pub use keel_raft::transport::pki::{AcceptAnyPeer, Signatures};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::RootCertStore;

use super::{QuicError, ALPN};

/// File names of the generated certificate and key in [`ServerTls::Auto`]'s dir.
pub const AUTO_CERT: &str = "cert.pem";
/// See [`AUTO_CERT`].
pub const AUTO_KEY: &str = "key.pem";

/// The certificate a member's QUIC client endpoint presents.
#[derive(Debug, Clone)]
pub enum ServerTls {
    /// `--cert-file` and `--key-file` (PEM: the chain, then the key).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A self-signed certificate generated into `dir` on first use (and
    /// reused after restarts), naming `localhost`, `127.0.0.1`, `::1` and
    /// `hosts`. Clients pin it (see the module docs of [`super`]).
    Auto {
        /// Where `cert.pem` and `key.pem` live.
        dir: PathBuf,
        /// Extra names or IPs (the listen hosts).
        hosts: Vec<String>,
    },
}

fn tls_err(what: impl std::fmt::Display) -> QuicError {
    QuicError::Tls(what.to_string())
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, QuicError> {
    pki::load_certs(path).map_err(tls_err)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, QuicError> {
    pki::load_key(path).map_err(tls_err)
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), QuicError> {
    pki::write_atomically(path, data, secret).map_err(tls_err)
}

impl ServerTls {
    /// Loads the certificate and key (in auto mode generating them first):
    /// checks them before the endpoint starts.
    pub fn ensure(&self) -> Result<(), QuicError> {
        self.load().map(|_| ())
    }

    /// The certificate chain and key, generating them first in auto mode.
    fn load(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), QuicError> {
        match self {
            ServerTls::Files { cert, key } => Ok((load_certs(cert)?, load_key(key)?)),
            ServerTls::Auto { dir, hosts } => {
                let cert = dir.join(AUTO_CERT);
                let key = dir.join(AUTO_KEY);
                if !(cert.exists() && key.exists()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| tls_err(format!("{}: {e}", dir.display())))?;
                    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    for h in hosts {
                        if !h.is_empty() && !names.contains(h) && h != "0.0.0.0" && h != "::" {
                            names.push(h.clone());
                        }
                    }
                    let generated = rcgen::generate_simple_self_signed(names).map_err(tls_err)?;
                    write_file(&key, generated.signing_key.serialize_pem().as_bytes(), true)?;
                    write_file(&cert, generated.cert.pem().as_bytes(), false)?;
                    tracing::info!(dir = %dir.display(), "generated self-signed QUIC client-API certificate");
                }
                Ok((load_certs(&cert)?, load_key(&key)?))
            }
        }
    }

    /// The rustls server configuration (TLS 1.3, ALPN `keel-store/1`, no
    /// client certificates) and the private key (DER), from which the
    /// endpoint derives its stateless-reset key.
    pub(crate) fn server_config(&self) -> Result<(rustls::ServerConfig, Vec<u8>), QuicError> {
        let (chain, key) = self.load()?;
        let key_der = key.secret_der().to_vec();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok((cfg, key_der))
    }
}

/// The client's rustls configuration: trusts the PEM certificates in
/// `trusted_pem` as CAs (webpki: chain, validity, the dialed name) or as
/// pinned end-entity certificates (byte-for-byte equal).
pub(crate) fn client_config(trusted_pem: &[u8]) -> Result<rustls::ClientConfig, QuicError> {
    let provider = provider();
    let pinned = CertificateDer::pem_slice_iter(trusted_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("trusted certificates: {e}")))?;
    if pinned.is_empty() {
        return Err(tls_err("trusted certificates: none in the file"));
    }
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(pinned.iter().cloned());
    let webpki = if roots.is_empty() {
        None
    } else {
        Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(tls_err)?,
        )
    };
    let verifier = Arc::new(TrustedServer {
        webpki,
        pinned,
        signatures: Signatures(provider.clone()),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Accepts a server certificate that is one of `pinned`, or that webpki
/// verifies against the same certificates as roots. Handshake signatures
/// are always checked against the presented certificate's key.
#[derive(Debug)]
struct TrustedServer {
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    pinned: Vec<CertificateDer<'static>>,
    signatures: Signatures,
}

impl ServerCertVerifier for TrustedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    keel_raft::forward_handshake_signatures!(signatures);
}
