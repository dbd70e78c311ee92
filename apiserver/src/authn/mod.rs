//! Authentication: who a request comes from. Tried in order, the first
//! that decides wins (as kube-apiserver's union authenticator):
//!
//! 1. an x509 client certificate verified by the TLS layer ([`crate::auth`]);
//! 2. a bearer token from `--token-auth-file` ([`token_file`]);
//! 3. a service account token: a JWT signed by this server's key
//!    ([`service_account`]), whose service account must still exist with
//!    the uid in the token, as must the pod or secret it is bound to (read
//!    from the watch cache, falling back to the store when the cache
//!    disagrees or lags);
//! 4. anonymous (`system:anonymous` in `system:unauthenticated`) if
//!    `--anonymous-auth=true`; otherwise 401.
//!
//! A bearer token that no authenticator accepts is a 401 even when
//! anonymous requests are allowed. Then [`impersonate`] may swap the user
//! for the one named in `Impersonate-*` headers. The review endpoints
//! (SelfSubjectReview, TokenReview, TokenRequest) are in [`review`].

pub mod impersonate;
pub mod oidc;
pub mod review;
pub mod service_account;
pub mod token_file;

use std::path::{Path, PathBuf};

use axum::http::{header, HeaderMap};
use serde_json::Value;

use crate::auth::User;
use crate::handlers::{read::read_object, App};
use crate::registry;
use crate::status::{ApiError, ApiResult};
use service_account::{SaConfig, SaTokenError, TokenIssuer};
use token_file::{TokenFile, TokenFileError};

/// Authentication settings (kube-apiserver's flags).
#[derive(Debug, Clone, Default)]
pub struct AuthnConfig {
    /// `--token-auth-file`.
    pub token_auth_file: Option<PathBuf>,
    /// Service account token keys and issuer.
    pub service_accounts: SaConfig,
    /// `--anonymous-auth`.
    pub anonymous_auth: bool,
}

/// Errors setting up authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// The token file.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    /// The service account keys.
    #[error(transparent)]
    ServiceAccount(#[from] SaTokenError),
}

/// The authenticator chain.
#[derive(Debug)]
pub struct Authenticator {
    tokens: TokenFile,
    /// Signs and verifies service account tokens.
    pub issuer: TokenIssuer,
    anonymous: bool,
}

/// The bearer token of `Authorization: Bearer <token>`, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Authenticator {
    /// Loads the token file and the service account keys (creating the
    /// key in `cert_dir` when none is configured).
    pub fn load(cfg: &AuthnConfig, cert_dir: &Path) -> Result<Authenticator, AuthnError> {
        let tokens = match &cfg.token_auth_file {
            Some(p) => {
                let t = TokenFile::load(p)?;
                tracing::info!(file = %p.display(), users = t.len(), "static tokens loaded");
                t
            }
            None => TokenFile::default(),
        };
        Ok(Authenticator {
            tokens,
            issuer: TokenIssuer::load(&cfg.service_accounts, cert_dir)?,
            anonymous: cfg.anonymous_auth,
        })
    }

    /// The user of a request: `cert` is the connection's certificate user
    /// (anonymous if none was offered). 401 if nobody is authenticated and
    /// anonymous requests are off, or a bearer token is not valid.
    pub async fn authenticate(
        &self,
        app: &App,
        cert: &User,
        headers: &HeaderMap,
    ) -> ApiResult<User> {
        if cert.authenticated {
            return Ok(cert.clone());
        }
        if let Some(token) = bearer_token(headers) {
            return self
                .authenticate_token(app, token)
                .await?
                .ok_or_else(ApiError::unauthorized);
        }
        if self.anonymous {
            return Ok(User::anonymous());
        }
        Err(ApiError::unauthorized())
    }

    /// The user of a bearer token (`None`: no authenticator accepts it).
    pub async fn authenticate_token(&self, app: &App, token: &str) -> ApiResult<Option<User>> {
        if let Some(u) = self.tokens.user(token) {
            return Ok(Some(u));
        }
        if !TokenIssuer::looks_like_jwt(token) {
            return Ok(None);
        }
        let claims = match self.issuer.verify(token) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "bearer token rejected");
                return Ok(None);
            }
        };
        let k = &claims.kubernetes;
        let sa = &k.serviceaccount;
        let mut checks = vec![("serviceaccounts", sa)];
        if let Some(pod) = &k.pod {
            checks.push(("pods", pod));
        }
        if let Some(secret) = &k.secret {
            checks.push(("secrets", secret));
        }
        for (plural, r) in checks {
            if !object_current(app, plural, &k.namespace, &r.name, &r.uid).await? {
                tracing::debug!(
                    namespace = %k.namespace,
                    resource = plural,
                    name = %r.name,
                    "service account token whose object is gone or was recreated"
                );
                return Ok(None);
            }
        }
        Ok(Some(claims.user()))
    }
}

fn uid_of(v: &Value) -> &str {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// True if the core object `plural` `ns/name` (a service account, or the
/// pod or secret a token is bound to) exists with uid `uid`: the watch
/// cache answers when it agrees; otherwise the store decides (the cache
/// may lag an object created a moment ago).
pub async fn object_current(
    app: &App,
    plural: &str,
    ns: &str,
    name: &str,
    uid: &str,
) -> ApiResult<bool> {
    let res = registry::lookup("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let key = res.key(Some(ns), name);
    if let Ok(cache) = app.caches.get(&app.store, res).await {
        let (kvs, _) = cache.snapshot(key.as_bytes());
        if let Some(kv) = kvs.iter().find(|kv| kv.key.as_ref() == key.as_bytes()) {
            if let Ok(v) = serde_json::from_slice::<Value>(&kv.value) {
                if uid_of(&v) == uid {
                    return Ok(true);
                }
            }
        }
    }
    Ok(read_object(app, &key)
        .await?
        .is_some_and(|(v, _)| uid_of(&v) == uid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  xyz "),
        );
        assert_eq!(bearer_token(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }
}
