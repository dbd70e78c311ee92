//! Service account tokens: JWTs signed by the API server's key, with
//! Kubernetes' claims (`iss`, `sub` = `system:serviceaccount:<ns>:<name>`,
//! `aud`, `exp`/`iat`/`nbf`, `jti` and the `kubernetes.io` claim naming the
//! namespace and the service account's name and uid).
//!
//! The signing key is `--service-account-signing-key-file` or, without it,
//! `sa.key` in the cert dir (an ECDSA P-256 key created on first start,
//! with its public half in `sa.pub`). Tokens verify against the public key
//! of the signing key plus every `--service-account-key-file` (public or
//! private keys, PEM, ECDSA or RSA). This module checks signatures and
//! claims only; that the service account still exists with the token's uid
//! is checked by [`crate::authn`] against the store.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::User;

/// The generated signing key in the cert dir (PKCS#8 PEM).
pub const SA_KEY: &str = "sa.key";
/// The generated key's public half (SPKI PEM).
pub const SA_PUB: &str = "sa.pub";
/// The default `--service-account-issuer`.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Default token lifetime of a TokenRequest without `expirationSeconds`.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime a TokenRequest may ask for (Kubernetes' 10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// Errors loading keys, signing or verifying tokens.
#[derive(Debug, thiserror::Error)]
pub enum SaTokenError {
    /// A key file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file holds no usable key.
    #[error("service account key {path}: {why}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Signing failed.
    #[error("signing a service account token: {0}")]
    Sign(String),
    /// The token is not a valid service account token of this server.
    #[error("invalid service account token: {0}")]
    Invalid(String),
}

/// A reference inside the `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: ObjectRef,
    /// The pod the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    /// The secret the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
}

/// The object a token is bound to (at most one of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bound {
    /// A pod in the service account's namespace.
    pub pod: Option<ObjectRef>,
    /// A secret in the service account's namespace.
    pub secret: Option<ObjectRef>,
}

/// A service account token's claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (`--service-account-issuer`).
    pub iss: String,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Token id.
    #[serde(default)]
    pub jti: String,
    /// Namespace, service account (and bound objects).
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

impl Claims {
    /// The user these claims stand for (Kubernetes' service account user:
    /// name `system:serviceaccount:<ns>:<name>`, groups
    /// `system:serviceaccounts`, `system:serviceaccounts:<ns>`,
    /// `system:authenticated`).
    pub fn user(&self) -> User {
        let ns = &self.kubernetes.namespace;
        let mut user = User::authenticated(
            user_name(ns, &self.kubernetes.serviceaccount.name),
            self.kubernetes.serviceaccount.uid.clone(),
            vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ],
        );
        if !self.jti.is_empty() {
            user.extra.insert(
                "authentication.kubernetes.io/credential-id".into(),
                vec![format!("JTI={}", self.jti)],
            );
        }
        if let Some(pod) = &self.kubernetes.pod {
            user.extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.name.clone()],
            );
            user.extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![pod.uid.clone()],
            );
        }
        user
    }
}

/// `system:serviceaccount:<ns>:<name>`.
pub fn user_name(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Splits `system:serviceaccount:<ns>:<name>` into (ns, name).
pub fn split_user_name(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// Service account token settings (kube-apiserver's flags).
#[derive(Debug, Clone, Default)]
pub struct SaConfig {
    /// `--service-account-signing-key-file` (`None`: `sa.key` in the cert dir).
    pub signing_key_file: Option<PathBuf>,
    /// `--service-account-key-file` (repeatable): more verification keys.
    pub key_files: Vec<PathBuf>,
    /// `--service-account-issuer` (repeatable; the first one signs;
    /// empty: [`DEFAULT_ISSUER`]).
    pub issuers: Vec<String>,
    /// `--api-audiences` (empty: the issuers).
    pub api_audiences: Vec<String>,
    /// `--service-account-jwks-uri` (the discovery document's `jwks_uri`;
    /// `None`: `https://<this server>/openid/v1/jwks`).
    pub jwks_uri: Option<String>,
    /// `--service-account-max-token-expiration` in seconds (longer
    /// TokenRequests are cut to it; `None`: no limit).
    pub max_expiration_seconds: Option<i64>,
}

/// Parses a Go duration (`48h`, `1h30m`, `90s`, `1.5h`) into seconds.
pub fn parse_duration_seconds(s: &str) -> Result<i64, String> {
    keel_storage::go_duration::parse(s)
        .map(|d| d.as_secs() as i64)
        .ok_or_else(|| format!("invalid duration {s:?} (e.g. 48h, 1h30m, 3600s)"))
}

/// Signs and verifies service account tokens.
pub struct TokenIssuer {
    signing: EncodingKey,
    alg: Algorithm,
    /// Kubernetes' key id: the unpadded base64url SHA-256 of the public
    /// key's DER.
    kid: String,
    max_expiration: Option<i64>,
    /// `--service-account-jwks-uri`.
    jwks_uri: Option<String>,
    /// Every verification key's public key (SPKI DER), for the JWKS.
    public_keys: Vec<Vec<u8>>,
    verify: Vec<VerifyKey>,
    issuers: Vec<String>,
    audiences: Vec<String>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("alg", &self.alg)
            .field("keys", &self.verify.len())
            .field("issuers", &self.issuers)
            .finish()
    }
}

fn read(path: &Path) -> Result<String, SaTokenError> {
    std::fs::read_to_string(path).map_err(|source| SaTokenError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), SaTokenError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| SaTokenError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(io)?;
    if private {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Creates `sa.key`/`sa.pub` (ECDSA P-256) in `dir` unless they exist.
pub fn ensure_key(dir: &Path) -> Result<(), SaTokenError> {
    let key_path = dir.join(SA_KEY);
    if key_path.exists() && dir.join(SA_PUB).exists() {
        return Ok(());
    }
    let key = rcgen::KeyPair::generate().map_err(|e| SaTokenError::Key {
        path: key_path.clone(),
        why: e.to_string(),
    })?;
    std::fs::create_dir_all(dir).map_err(|source| SaTokenError::Io {
        what: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    write(&key_path, &key.serialize_pem(), true)?;
    write(&dir.join(SA_PUB), &key.public_key_pem(), false)
}

/// Kubernetes' `keyIDFromPublicKey`.
fn key_id(public_der: &[u8]) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, public_der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// A private key file: the signing key, its algorithm, public half and key id.
/// A key that verifies tokens signed with its algorithm.
type VerifyKey = (Algorithm, DecodingKey);

/// A loaded private key: signing half, algorithm, verifying half, public key (SPKI DER).
type PrivateKey = (EncodingKey, Algorithm, DecodingKey, Vec<u8>);

fn load_private(path: &Path) -> Result<PrivateKey, SaTokenError> {
    let pem = read(path)?;
    let bad = |why: String| SaTokenError::Key {
        path: path.to_path_buf(),
        why,
    };
    let pair = rcgen::KeyPair::from_pem(&pem)
        .map_err(|e| bad(format!("not a PKCS#8 private key: {e}")))?;
    let public = pair.public_key_pem();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&pair);
    if let Ok(enc) = EncodingKey::from_ec_pem(pem.as_bytes()) {
        let dec = DecodingKey::from_ec_pem(public.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let alg = if pair.algorithm() == &rcgen::PKCS_ECDSA_P384_SHA384 {
            Algorithm::ES384
        } else {
            Algorithm::ES256
        };
        return Ok((enc, alg, dec, spki));
    }
    let enc = EncodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| bad(format!("neither an ECDSA nor an RSA key: {e}")))?;
    let dec = DecodingKey::from_rsa_pem(public.as_bytes()).map_err(|e| bad(e.to_string()))?;
    Ok((enc, Algorithm::RS256, dec, spki))
}

/// The verification keys of a `--service-account-key-file`, and its
/// public key (SPKI DER).
fn load_verification(path: &Path) -> Result<(Vec<VerifyKey>, Vec<u8>), SaTokenError> {
    use rustls::pki_types::{pem::PemObject, SubjectPublicKeyInfoDer};
    let pem = read(path)?;
    if pem.contains("PRIVATE KEY") {
        let (_, alg, dec, spki) = load_private(path)?;
        return Ok((vec![(alg, dec)], spki));
    }
    let bad = |why: String| SaTokenError::Key {
        path: path.to_path_buf(),
        why,
    };
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| bad(format!("not a PEM public key: {e}")))?
        .to_vec();
    if let Ok(dec) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        return Ok((
            vec![(Algorithm::ES256, dec.clone()), (Algorithm::ES384, dec)],
            spki,
        ));
    }
    let dec = DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| bad(format!("neither an ECDSA nor an RSA public key: {e}")))?;
    Ok((vec![(Algorithm::RS256, dec)], spki))
}

impl TokenIssuer {
    /// Loads the keys (creating `sa.key` in `cert_dir` if no signing key
    /// file is given).
    pub fn load(cfg: &SaConfig, cert_dir: &Path) -> Result<TokenIssuer, SaTokenError> {
        let signing_path = match &cfg.signing_key_file {
            Some(p) => p.clone(),
            None => {
                ensure_key(cert_dir)?;
                cert_dir.join(SA_KEY)
            }
        };
        let (signing, alg, dec, spki) = load_private(&signing_path)?;
        let kid = key_id(&spki);
        let mut verify = vec![(alg, dec)];
        let mut public_keys = vec![spki];
        for f in &cfg.key_files {
            let (keys, spki) = load_verification(f)?;
            verify.extend(keys);
            if !public_keys.contains(&spki) {
                public_keys.push(spki);
            }
        }
        let issuers = if cfg.issuers.is_empty() {
            vec![DEFAULT_ISSUER.to_string()]
        } else {
            cfg.issuers.clone()
        };
        let audiences = if cfg.api_audiences.is_empty() {
            issuers[..1].to_vec()
        } else {
            cfg.api_audiences.clone()
        };
        Ok(TokenIssuer {
            signing,
            alg,
            kid,
            max_expiration: cfg.max_expiration_seconds,
            jwks_uri: cfg.jwks_uri.clone(),
            public_keys,
            verify,
            issuers,
            audiences,
        })
    }

    /// `/openid/v1/jwks`: every verification key as a JWK.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .public_keys
            .iter()
            .filter_map(|spki| super::oidc::jwk(spki, &key_id(spki)))
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// `/.well-known/openid-configuration`; `server` is this server's
    /// `host:port` (for the default `jwks_uri`).
    pub fn discovery(&self, server: &str) -> serde_json::Value {
        let jwks_uri = self
            .jwks_uri
            .clone()
            .unwrap_or_else(|| format!("https://{server}/openid/v1/jwks"));
        let mut algs: Vec<String> = Vec::new();
        for k in self.jwks()["keys"].as_array().into_iter().flatten() {
            if let Some(a) = k["alg"].as_str().filter(|a| !algs.iter().any(|x| x == a)) {
                algs.push(a.to_string());
            }
        }
        super::oidc::discovery(&self.issuers[0], &jwks_uri, &algs)
    }

    /// The longest lifetime a TokenRequest gets (`None`: no limit).
    pub fn max_expiration(&self) -> Option<i64> {
        self.max_expiration
    }

    /// The API server's audiences (a TokenRequest's default).
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Signs a token for service account `ns/name` (uid `uid`), valid
    /// from `now` for `seconds`.
    pub fn issue(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        audiences: Vec<String>,
        now: i64,
        seconds: i64,
    ) -> Result<(String, Claims), SaTokenError> {
        self.issue_bound(ns, name, uid, Bound::default(), audiences, now, seconds)
    }

    /// [`TokenIssuer::issue`] for a token bound to a pod or a secret: it
    /// is valid only while that object exists with that uid.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_bound(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        bound: Bound,
        audiences: Vec<String>,
        now: i64,
        seconds: i64,
    ) -> Result<(String, Claims), SaTokenError> {
        let claims = Claims {
            iss: self.issuers[0].clone(),
            sub: user_name(ns, name),
            aud: audiences,
            exp: now + seconds,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaim {
                namespace: ns.to_string(),
                serviceaccount: ObjectRef {
                    name: name.to_string(),
                    uid: uid.to_string(),
                },
                pod: bound.pod,
                secret: bound.secret,
            },
        };
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing)
            .map_err(|e| SaTokenError::Sign(e.to_string()))?;
        Ok((token, claims))
    }

    /// True if `token` looks like a JWT (three dot-separated parts).
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// Checks the signature, issuer, audience, lifetime and the claims'
    /// shape; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, SaTokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| SaTokenError::Invalid(e.to_string()))?;
        let mut last = String::from("no key for the token's algorithm");
        for (alg, key) in self.verify.iter().filter(|(a, _)| *a == header.alg) {
            let mut v = Validation::new(*alg);
            v.set_issuer(&self.issuers);
            v.set_audience(&self.audiences);
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    let k = &c.kubernetes;
                    if c.sub != user_name(&k.namespace, &k.serviceaccount.name) {
                        return Err(SaTokenError::Invalid(
                            "sub does not match the kubernetes.io claim".into(),
                        ));
                    }
                    return Ok(c);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(SaTokenError::Invalid(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn tokens_round_trip_and_carry_kubernetes_claims() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = TokenIssuer::load(&SaConfig::default(), dir.path()).expect("load");
        let aud = issuer.audiences().to_vec();
        let (token, _) = issuer
            .issue("prod", "robot", "uid-1", aud, now(), 600)
            .expect("issue");
        assert!(TokenIssuer::looks_like_jwt(&token));
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(
            header.kid.as_deref().map(str::len),
            Some(43),
            "sha256, base64url"
        );
        let c = issuer.verify(&token).expect("verify");
        assert_eq!(c.iss, DEFAULT_ISSUER);
        assert_eq!(c.sub, "system:serviceaccount:prod:robot");
        assert_eq!(c.kubernetes.serviceaccount.uid, "uid-1");
        let u = c.user();
        assert_eq!(u.name, "system:serviceaccount:prod:robot");
        assert_eq!(u.uid, "uid-1");
        assert_eq!(
            u.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:prod",
                "system:authenticated"
            ]
        );
        // The JWKS holds the key the token names.
        let jwks = issuer.jwks();
        assert_eq!(jwks["keys"][0]["kid"].as_str(), header.kid.as_deref());
        assert_eq!(
            issuer.discovery("h:1")["jwks_uri"],
            "https://h:1/openid/v1/jwks"
        );
        // The same key is used after a restart.
        let again = TokenIssuer::load(&SaConfig::default(), dir.path()).expect("reload");
        again.verify(&token).expect("verify after reload");
    }

    #[test]
    fn foreign_expired_and_wrong_audience_tokens_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let issuer = TokenIssuer::load(&SaConfig::default(), dir.path()).expect("load");
        let foreign = TokenIssuer::load(&SaConfig::default(), other.path()).expect("load");
        let aud = issuer.audiences().to_vec();
        let (t, _) = foreign
            .issue("a", "b", "u", aud.clone(), now(), 600)
            .expect("issue");
        assert!(issuer.verify(&t).is_err(), "another key");
        let (t, _) = issuer
            .issue("a", "b", "u", aud, now() - 7200, 600)
            .expect("issue");
        assert!(issuer.verify(&t).is_err(), "expired");
        let (t, _) = issuer
            .issue("a", "b", "u", vec!["vault".into()], now(), 600)
            .expect("issue");
        assert!(issuer.verify(&t).is_err(), "audience");
        assert!(issuer.verify("a.b.c").is_err());
        // The other server's key as an extra verification key.
        let cfg = SaConfig {
            key_files: vec![other.path().join(SA_PUB)],
            ..SaConfig::default()
        };
        let both = TokenIssuer::load(&cfg, dir.path()).expect("load");
        let (t, _) = foreign
            .issue("a", "b", "u", both.audiences().to_vec(), now(), 600)
            .expect("issue");
        both.verify(&t)
            .expect("accepted with --service-account-key-file");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration_seconds("48h"), Ok(172_800));
        assert_eq!(parse_duration_seconds("1h30m"), Ok(5400));
        assert_eq!(parse_duration_seconds("90s"), Ok(90));
        assert_eq!(parse_duration_seconds("1.5h"), Ok(5400));
        assert_eq!(parse_duration_seconds("0"), Ok(0));
        assert_eq!(parse_duration_seconds("0s"), Ok(0));
        assert!(parse_duration_seconds("").is_err());
        assert!(parse_duration_seconds("10").is_err());
        assert!(parse_duration_seconds("3d").is_err());
    }

    #[test]
    fn service_account_user_names_split() {
        assert_eq!(
            split_user_name("system:serviceaccount:ns:sa"),
            Some(("ns", "sa"))
        );
        assert_eq!(split_user_name("system:serviceaccount:ns"), None);
        assert_eq!(split_user_name("alice"), None);
    }
}
