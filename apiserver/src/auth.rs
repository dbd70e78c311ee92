//! The [`User`] of a request, and authentication by x509 client
//! certificate: CN is the user, O the groups. The TLS layer has already
//! verified the chain against the cluster CA. Bearer tokens and
//! impersonation live in [`crate::authn`].

use std::collections::BTreeMap;

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
    /// The user's uid (service accounts, token-file users), if any.
    pub uid: String,
    /// Extra attributes (`authentication.kubernetes.io/credential-id`, ...).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The anonymous user.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            authenticated: false,
            ..User::default()
        }
    }

    /// An authenticated user; `system:authenticated` is added to `groups`.
    pub fn authenticated(
        name: impl Into<String>,
        uid: impl Into<String>,
        groups: Vec<String>,
    ) -> User {
        let mut groups = groups;
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User {
            name: name.into(),
            groups,
            authenticated: true,
            uid: uid.into(),
            extra: BTreeMap::new(),
        }
    }

    /// True if the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
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
    let groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User::authenticated(name, "", groups))
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
