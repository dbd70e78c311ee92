//! Certificate plumbing shared by keel's QUIC endpoints (the peer transport
//! here, the store's client API in `keel-storage`): the crypto provider, PEM
//! files in and out, the handshake-signature checks every custom verifier
//! needs, and endpoint keys derived from the certificate's key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// A certificate or key file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Not PEM, or no certificate in it.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The crypto provider of every keel TLS endpoint (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let pem = |e: rustls::pki_types::pem::Error| PkiError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            path: path.to_owned(),
            reason: "no certificate".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| PkiError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes `data` to `path` atomically (temp file, fsync, rename),
/// owner-only when `secret`.
pub fn write_atomically(path: &Path, data: &[u8], secret: bool) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| PkiError::Io { path: p, source }
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A QUIC endpoint configuration whose stateless-reset key and
/// connection-ID hash key derive from the endpoint's private key
/// (`key_der`, DER) and `label`: the same after a restart, so that peers
/// still holding a connection to the old process are reset at once
/// instead of waiting for their idle timeout.
pub fn stable_endpoint_config(label: &[u8], key_der: &[u8]) -> quinn::EndpointConfig {
    let seed = ring::digest::digest(&ring::digest::SHA256, &[label, key_der].concat());
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_ref());
    let mut cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
    // The connection IDs carry a keyed hash that the endpoint checks before
    // answering with a reset; the key must survive restarts too.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&seed.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    cfg
}

/// Handshake-signature checks against the presented certificate's key,
/// for verifiers that decide on the certificate themselves: whatever they
/// accept, the peer must hold the key.
#[derive(Debug, Clone)]
pub struct Signatures(pub Arc<CryptoProvider>);

impl Signatures {
    /// Checks a TLS 1.2 handshake signature.
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// Checks a TLS 1.3 handshake signature.
    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// The signature schemes the provider verifies.
    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts any certificate chain, but checks that the handshake was
/// signed by the presented certificate's key: peers under auto TLS, and
/// the API server's kubelet client without a kubelet CA (as
/// kube-apiserver).
#[derive(Debug)]
pub struct AcceptAnyPeer(pub Signatures);

impl ServerCertVerifier for AcceptAnyPeer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    crate::forward_handshake_signatures!(0);
}

impl ClientCertVerifier for AcceptAnyPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    crate::forward_handshake_signatures!(0);
}

/// The handshake-signature methods of a rustls certificate verifier
/// (server or client side), checked by the [`Signatures`] in field
/// `$field`: `forward_handshake_signatures!(signatures);` inside the `impl`.
#[macro_export]
macro_rules! forward_handshake_signatures {
    ($field:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            self.$field.tls12(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            self.$field.tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.$field.schemes()
        }
    };
}
