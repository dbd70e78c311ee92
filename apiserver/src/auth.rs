//! Authentication by x509 client certificate: CN is the user, O the groups.
//! The TLS layer has already verified the chain against the cluster CA.

use x509_parser::prelude::{FromDer, X509Certificate};

/// The authenticated user of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// User name (`system:anonymous` when no certificate was offered).
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// False for anonymous connections.
    pub authenticated: bool,
}

impl User {
    /// The anonymous user.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            authenticated: false,
        }
    }
}

/// The user of a verified client certificate (DER).
pub fn user_from_der(der: &[u8]) -> Option<User> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User {
        name,
        groups,
        authenticated: true,
    })
}

/// The user of a PEM certificate (tests and tools).
pub fn user_from_pem(pem: &str) -> Option<User> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    user_from_der(&der).map(|mut u| {
        u.groups.retain(|g| g != "system:authenticated");
        u
    })
}
