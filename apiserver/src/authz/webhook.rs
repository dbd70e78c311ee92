//! The `Webhook` authorization mode: each request's attributes are POSTed
//! as an `authorization.k8s.io/v1` SubjectAccessReview to the HTTPS
//! endpoint named by `--authorization-webhook-config-file` (a kubeconfig:
//! the current context's cluster `server`, `certificate-authority[-data]`,
//! and the user's `client-certificate[-data]`/`client-key[-data]` or
//! `token`), as kube-apiserver does. `status.allowed` allows,
//! `status.denied` denies (ending the chain), anything else (or a failed
//! call) has no opinion.
//!
//! Answers are cached ([`super::decision_cache`]). Not done: retries with
//! backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

use super::decision_cache::DecisionCache;
use super::Attributes;

/// How long one webhook call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Errors loading the webhook's kubeconfig or calling it.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The kubeconfig is not usable.
    #[error("authorization webhook kubeconfig {path}: {why}")]
    Config {
        /// The kubeconfig.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The call failed.
    #[error("authorization webhook {server}: {why}")]
    Call {
        /// The endpoint.
        server: String,
        /// What went wrong.
        why: String,
    },
}

/// The webhook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `status.allowed`.
    Allow(String),
    /// `status.denied`.
    Deny(String),
    /// Neither.
    NoOpinion(String),
}

/// A YAML document as JSON (kubeconfigs are plain maps, lists and strings).
pub fn yaml_to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) | Yaml::Real(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        _ => String::new(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

/// A call-ready webhook.
pub struct Webhook {
    cache: DecisionCache,
    server: String,
    host: String,
    port: u16,
    path: String,
    token: Option<String>,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("server", &self.server)
            .finish()
    }
}

/// The named entry (`clusters`, `users`, `contexts`) of a kubeconfig.
fn named<'a>(cfg: &'a Value, list: &str, field: &str, name: Option<&str>) -> Option<&'a Value> {
    let items = cfg.get(list)?.as_array()?;
    let item = match name {
        Some(n) => items
            .iter()
            .find(|i| i.get("name").and_then(Value::as_str) == Some(n))?,
        None => items.first()?,
    };
    item.get(field)
}

impl Webhook {
    /// Reads the kubeconfig at `path`.
    pub fn load(path: &Path) -> Result<Webhook, WebhookError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebhookError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_kubeconfig(&text, path.parent().unwrap_or(Path::new("."))).map_err(|why| {
            WebhookError::Config {
                path: path.to_path_buf(),
                why,
            }
        })
    }

    /// Parses a kubeconfig; relative file names are relative to `dir`.
    pub fn from_kubeconfig(text: &str, dir: &Path) -> Result<Webhook, String> {
        let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
        let cfg = docs.first().map(yaml_to_json).ok_or("empty kubeconfig")?;
        let ctx_name = cfg.get("current-context").and_then(Value::as_str);
        let ctx = ctx_name.and_then(|n| named(&cfg, "contexts", "context", Some(n)));
        let cluster_name = ctx.and_then(|c| c.get("cluster")).and_then(Value::as_str);
        let user_name = ctx.and_then(|c| c.get("user")).and_then(Value::as_str);
        let cluster = named(&cfg, "clusters", "cluster", cluster_name).ok_or("no cluster")?;
        let user = named(&cfg, "users", "user", user_name)
            .cloned()
            .unwrap_or(Value::Null);
        let read = |v: &Value, data: &str, file: &str| -> Result<Option<Vec<u8>>, String> {
            if let Some(d) = v.get(data).and_then(Value::as_str) {
                return base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .map(Some)
                    .map_err(|e| format!("{data}: {e}"));
            }
            match v.get(file).and_then(Value::as_str) {
                Some(f) => std::fs::read(dir.join(f))
                    .map(Some)
                    .map_err(|e| format!("{file} {f}: {e}")),
                None => Ok(None),
            }
        };
        let server = cluster
            .get("server")
            .and_then(Value::as_str)
            .ok_or("the cluster has no server")?
            .to_string();
        let rest = server
            .strip_prefix("https://")
            .ok_or("the server must be an https:// URL")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in {server}"))?,
            ),
            _ => (authority.to_string(), 443),
        };
        let ca = read(
            cluster,
            "certificate-authority-data",
            "certificate-authority",
        )?
        .ok_or("the cluster needs certificate-authority or certificate-authority-data")?;
        let cert = read(&user, "client-certificate-data", "client-certificate")?;
        let key = read(&user, "client-key-data", "client-key")?;
        let token = user
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_string);
        let tls = client_tls(&ca, cert.as_deref(), key.as_deref())?;
        Ok(Webhook {
            cache: DecisionCache::default(),
            server,
            host,
            port,
            path,
            token,
            tls: Arc::new(tls),
        })
    }

    /// The SubjectAccessReview sent for `a`.
    pub fn review(a: &Attributes) -> Value {
        let mut spec = json!({
            "user": a.user.name,
            "groups": a.user.groups,
        });
        if !a.user.uid.is_empty() {
            spec["uid"] = json!(a.user.uid);
        }
        if !a.user.extra.is_empty() {
            spec["extra"] = json!(a.user.extra);
        }
        if a.resource_request {
            spec["resourceAttributes"] = json!({
                "namespace": a.namespace,
                "verb": a.verb,
                "group": a.api_group,
                "version": a.api_version,
                "resource": a.resource,
                "subresource": a.subresource,
                "name": a.name,
            });
        } else {
            spec["nonResourceAttributes"] = json!({"path": a.path, "verb": a.verb});
        }
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": {"allowed": false},
        })
    }

    /// Reads the verdict of a SubjectAccessReview response.
    pub fn verdict(resp: &Value) -> Verdict {
        let st = resp.get("status").cloned().unwrap_or(Value::Null);
        let reason = st
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if st.get("allowed").and_then(Value::as_bool) == Some(true) {
            Verdict::Allow(reason)
        } else if st.get("denied").and_then(Value::as_bool) == Some(true) {
            Verdict::Deny(reason)
        } else {
            Verdict::NoOpinion(reason)
        }
    }

    /// Replaces the decision cache (its TTLs).
    pub fn with_cache(mut self, cache: DecisionCache) -> Webhook {
        self.cache = cache;
        self
    }

    /// Asks the webhook about `a` (or its cache).
    pub async fn authorize(&self, a: &Attributes) -> Result<Verdict, WebhookError> {
        let review = Self::review(a);
        let key = review["spec"].to_string();
        if let Some(v) = self.cache.get(&key, std::time::Instant::now()) {
            return Ok(v);
        }
        let body = serde_json::to_vec(&review).map_err(|e| self.err(e))?;
        let resp = tokio::time::timeout(TIMEOUT, self.post(body))
            .await
            .map_err(|_| self.err("timed out"))??;
        let verdict = Self::verdict(&resp);
        self.cache
            .put(key, verdict.clone(), std::time::Instant::now());
        Ok(verdict)
    }

    fn err(&self, why: impl std::fmt::Display) -> WebhookError {
        WebhookError::Call {
            server: self.server.clone(),
            why: why.to_string(),
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<Value, WebhookError> {
        let mut send = crate::https_client::open(
            self.tls.clone(),
            (self.host.as_str(), self.port),
            &self.host,
            crate::https_client::Timeouts::default(),
            "authorization webhook",
        )
        .await
        .map_err(|e| self.err(e))?;
        let mut req = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| self.err(e))?;
        let resp = send.send_request(req).await.map_err(|e| self.err(e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.err(e))?
            .to_bytes();
        if !status.is_success() {
            return Err(self.err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| self.err(format!("bad response: {e}")))
    }
}

/// The TLS client config: the CA, and a client certificate if given.
fn client_tls(
    ca: &[u8],
    cert: Option<&[u8]>,
    key: Option<&[u8]>,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots
            .add(c.map_err(|e| format!("CA: {e}"))?)
            .map_err(|e| format!("CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match (cert, key) {
        (Some(c), Some(k)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(c)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(k).map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("a client certificate needs its key (and the other way round)".into()),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;

    #[test]
    fn reviews_and_verdicts() {
        let a = Attributes {
            user: User::authenticated("alice", "u1", vec!["devs".into()]),
            verb: "list".into(),
            resource_request: true,
            namespace: "prod".into(),
            resource: "pods".into(),
            api_version: "v1".into(),
            ..Attributes::default()
        };
        let r = Webhook::review(&a);
        assert_eq!(r["spec"]["user"], "alice");
        assert_eq!(r["spec"]["groups"], json!(["devs", "system:authenticated"]));
        assert_eq!(r["spec"]["resourceAttributes"]["namespace"], "prod");
        assert_eq!(r["spec"]["resourceAttributes"]["verb"], "list");
        assert!(r["spec"].get("nonResourceAttributes").is_none());
        assert_eq!(
            Webhook::verdict(&json!({"status": {"allowed": true, "reason": "ok"}})),
            Verdict::Allow("ok".into())
        );
        assert_eq!(
            Webhook::verdict(&json!({"status": {"allowed": false, "denied": true}})),
            Verdict::Deny(String::new())
        );
        assert_eq!(
            Webhook::verdict(&json!({"status": {"allowed": false}})),
            Verdict::NoOpinion(String::new())
        );
    }

    #[test]
    fn kubeconfigs_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::tls::ensure_pki(dir.path(), &[]).expect("pki");
        let kc = crate::tls::kubeconfig(dir.path(), "https://127.0.0.1:7443/authz").expect("kc");
        let w = Webhook::from_kubeconfig(&kc, dir.path()).expect("parse");
        assert_eq!(
            (w.host.as_str(), w.port, w.path.as_str()),
            ("127.0.0.1", 7443, "/authz")
        );
        let no_ca = "clusters:\n- name: c\n  cluster:\n    server: https://h\n";
        assert!(Webhook::from_kubeconfig(no_ca, dir.path()).is_err());
        let http = "clusters:\n- name: c\n  cluster:\n    server: http://h\n";
        assert!(Webhook::from_kubeconfig(http, dir.path()).is_err());
    }
}
