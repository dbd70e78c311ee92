//! The cluster PKI: a CA and the apiserver's serving certificate generated
//! into the cert dir on first start (`ca.crt`, `ca.key`, `apiserver.crt`,
//! `apiserver.key`), client certificates signed by that CA, the rustls
//! server config that asks for (but does not require) a client
//! certificate, and kubeconfig files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// PKI and TLS errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Generating or parsing a certificate or key.
    #[error("certificate {0}: {1}")]
    Cert(&'static str, String),
    /// Building the rustls config.
    #[error("TLS config: {0}")]
    Config(String),
}

type Result<T> = std::result::Result<T, TlsError>;

/// CA certificate file name in the cert dir.
pub const CA_CERT: &str = "ca.crt";
/// CA key file name.
pub const CA_KEY: &str = "ca.key";
/// Serving certificate file name.
pub const SERVING_CERT: &str = "apiserver.crt";
/// Serving key file name.
pub const SERVING_KEY: &str = "apiserver.key";

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &str, private: bool) -> Result<()> {
    let io = |source| TlsError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn cert_err(what: &'static str) -> impl Fn(rcgen::Error) -> TlsError {
    move |e| TlsError::Cert(what, e.to_string())
}

fn validity(params: &mut CertificateParams, years: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365 * years);
}

fn dn(cn: &str, orgs: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// Creates the CA, the serving certificate and the service account
/// signing key (`sa.key`) in `dir` unless they exist.
/// `hosts` are extra names/IPs for the serving certificate.
pub fn ensure_pki(dir: &Path, hosts: &[String]) -> Result<()> {
    if ensure_ca(dir, "keel-ca")? {
        // A new CA invalidates any old serving certificate.
        let _ = std::fs::remove_file(dir.join(SERVING_CERT));
    }
    if !dir.join(SERVING_CERT).exists() || !dir.join(SERVING_KEY).exists() {
        let mut sans: Vec<String> = [
            "localhost",
            "127.0.0.1",
            "::1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for h in hosts {
            if !h.is_empty() && !sans.contains(h) && h != "0.0.0.0" && h != "::" {
                sans.push(h.clone());
            }
        }
        let (cert, key) = sign_server(dir, "kube-apiserver", sans, "serving params")?;
        write(&dir.join(SERVING_KEY), &key, true)?;
        write(&dir.join(SERVING_CERT), &cert, false)?;
    }
    crate::authn::service_account::ensure_key(dir)
        .map_err(|e| TlsError::Cert("service account key", e.to_string()))
}

/// Creates a CA (`ca.crt`, `ca.key`) named `cn` in `dir` unless it exists;
/// true if it was created.
fn ensure_ca(dir: &Path, cn: &str) -> Result<bool> {
    if dir.join(CA_CERT).exists() && dir.join(CA_KEY).exists() {
        return Ok(false);
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA params"))?;
    params.distinguished_name = dn(cn, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 10);
    let key = KeyPair::generate().map_err(cert_err("CA key"))?;
    let cert = params.self_signed(&key).map_err(cert_err("CA"))?;
    write(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
    write(&dir.join(CA_CERT), &cert.pem(), false)?;
    Ok(true)
}

/// A store PKI for `keel up` (as kubeadm gives etcd a CA of its own): a CA
/// in `dir` (`ca.crt`, `ca.key`) and, for each member name, a serving
/// certificate `<name>.crt`/`<name>.key` for `localhost`, `127.0.0.1` and
/// `::1`, which the member's QUIC client endpoint presents
/// (`--cert-file`/`--key-file`) and the API server checks against
/// `ca.crt` (`--etcd-cafile`). Existing files are kept.
pub fn ensure_store_pki(dir: &Path, members: &[&str]) -> Result<()> {
    if ensure_ca(dir, "keel-store-ca")? {
        for m in members {
            let _ = std::fs::remove_file(dir.join(format!("{m}.crt")));
        }
    }
    for m in members {
        let (crt, key) = (dir.join(format!("{m}.crt")), dir.join(format!("{m}.key")));
        if crt.exists() && key.exists() {
            continue;
        }
        let sans: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (cert_pem, key_pem) = sign_server(dir, m, sans, "store params")?;
        write(&key, &key_pem, true)?;
        write(&crt, &cert_pem, false)?;
    }
    Ok(())
}

/// Issues a serving certificate (CN `cn`, names `sans`, one year) signed
/// by the CA in `dir`; returns (cert PEM, key PEM).
fn sign_server(
    dir: &Path,
    cn: &str,
    sans: Vec<String>,
    what: &'static str,
) -> Result<(String, String)> {
    let params = leaf_params(sans, dn(cn, &[]), ExtendedKeyUsagePurpose::ServerAuth, what)?;
    sign(dir, &params)
}

/// The parameters of a leaf certificate valid for a year: `sans`, `name`,
/// the one extended key usage `usage`, signing and key encipherment.
fn leaf_params(
    sans: Vec<String>,
    name: DistinguishedName,
    usage: ExtendedKeyUsagePurpose,
    what: &'static str,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(sans).map_err(cert_err(what))?;
    params.distinguished_name = name;
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 1);
    Ok(params)
}

/// Signs `params` with the CA in `dir`; returns (cert PEM, key PEM).
fn sign(dir: &Path, params: &CertificateParams) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?).map_err(cert_err("CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(&dir.join(CA_CERT))?, ca_key).map_err(cert_err("CA"))?;
    let key = KeyPair::generate().map_err(cert_err("key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_err("signing"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a client certificate (CN = `user`, O = `groups`) signed by the CA
/// in `dir`; returns (cert PEM, key PEM).
pub fn issue_client_cert(dir: &Path, user: &str, groups: &[String]) -> Result<(String, String)> {
    let params = leaf_params(
        Vec::new(),
        dn(user, groups),
        ExtendedKeyUsagePurpose::ClientAuth,
        "client params",
    )?;
    sign(dir, &params)
}

/// Writes [`kubeconfig`] to `path` (mode 0600).
pub fn write_kubeconfig(dir: &Path, server: &str, path: &Path) -> Result<()> {
    write(path, &kubeconfig(dir, server)?, true)
}

/// A kubeconfig for `server` with the CA of `dir` embedded and a new admin
/// client certificate (CN `kubernetes-admin`, O `system:masters`).
pub fn kubeconfig(dir: &Path, server: &str) -> Result<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let ca = read(&dir.join(CA_CERT))?;
    let (cert, key) = issue_client_cert(dir, "kubernetes-admin", &["system:masters".to_string()])?;
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: keel
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: keel-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: keel
  context:
    cluster: keel
    user: keel-admin
    namespace: default
current-context: keel
preferences: {{}}
",
        ca = b64(&ca),
        cert = b64(&cert),
        key = b64(&key),
    );
    Ok(yaml)
}

/// The rustls server config: the serving certificate, ALPN h2 + http/1.1,
/// client certificates verified against the CA when offered (none offered:
/// the request is anonymous and gets 401 where authentication is needed).
pub fn server_config(dir: &Path) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem_err = |what: &'static str| {
        move |e: rustls::pki_types::pem::Error| TlsError::Cert(what, e.to_string())
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(read(&dir.join(SERVING_CERT))?.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(pem_err("serving cert"))?;
    let key = PrivateKeyDer::from_pem_slice(read(&dir.join(SERVING_KEY))?.as_bytes())
        .map_err(pem_err("serving key"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(read(&dir.join(CA_CERT))?.as_bytes()) {
        roots
            .add(ca.map_err(pem_err("CA"))?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_created_once_and_signs_clients() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_pki(dir.path(), &["10.0.0.1".into()]).expect("pki");
        let ca = std::fs::read(dir.path().join(CA_CERT)).expect("ca");
        ensure_pki(dir.path(), &[]).expect("pki again");
        assert_eq!(ca, std::fs::read(dir.path().join(CA_CERT)).expect("ca"));
        server_config(dir.path()).expect("server config");
        let (cert, _key) =
            issue_client_cert(dir.path(), "alice", &["devs".into()]).expect("client");
        let user = crate::auth::user_from_pem(&cert).expect("parse");
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, vec!["devs".to_string()]);
        let kc = dir.path().join("kubeconfig");
        write_kubeconfig(dir.path(), "https://127.0.0.1:6443", &kc).expect("kubeconfig");
        assert!(std::fs::read_to_string(kc)
            .expect("read")
            .contains("certificate-authority-data"));
    }
}
