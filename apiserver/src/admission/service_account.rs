//! `ServiceAccount`: a new pod runs as a service account that exists
//! (`default` unless it names one), gets the projected API token volume
//! `kube-api-access-<suffix>` mounted at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in every container
//! (unless automounting is off, or something is mounted there already), and
//! the account's `imagePullSecrets` if it has none of its own.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::reads::{Read, Reads};
use super::{Attributes, Plugin};
use crate::handlers::read::read_object;
use crate::handlers::App;
use crate::object;
use crate::registry;
use crate::status::{ApiError, ApiResult};

/// The plugin.
#[derive(Debug)]
pub struct ServiceAccount;

/// The service account of pods that name none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Where the token volume is mounted.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token volume's name prefix.
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap with the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// How long a projected token asks to live (Kubernetes' warn-only value).
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// Lookups of the `default` account, which its controller may not have
/// created yet in a brand-new namespace (Kubernetes tries 10 times too).
const DEFAULT_LOOKUPS: usize = 10;

/// The projected volume Kubernetes adds for the API token.
pub fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Whether the token is mounted: the pod's setting, else the account's, else yes.
fn automount(sa: &Value, pod: &Value) -> bool {
    pod.pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true)
}

/// Mounts the token volume in every (init) container that has nothing at
/// the mount path, and adds the volume if any container mounts it.
pub fn mount_token(pod: &mut Value, suffix: &str) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .find(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
                .map(str::to_string)
        });
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{suffix}"));
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(Value::Array(cs)) = spec.get_mut(list) else {
            continue;
        };
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            if !c.get("volumeMounts").is_some_and(Value::is_array) {
                c.insert("volumeMounts".into(), json!([]));
            }
            let Some(Value::Array(mounts)) = c.get_mut("volumeMounts") else {
                continue;
            };
            let taken = mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH));
            if !taken {
                mounts.push(mount.clone());
                needed = true;
            }
        }
    }
    if needed && existing.is_none() {
        if !spec.get("volumes").is_some_and(Value::is_array) {
            spec.insert("volumes".into(), json!([]));
        }
        if let Some(Value::Array(vs)) = spec.get_mut("volumes") {
            vs.push(token_volume(&volume_name));
        }
    }
}

fn service_accounts() -> ApiResult<&'static registry::ResourceInfo> {
    registry::lookup("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not registered"))
}

/// The namespace and service account a pod create is admitted against
/// (`None`: the plugin leaves the request alone).
fn account_of(attrs: &Attributes) -> Option<(String, String)> {
    if !attrs.is_core_create("Pod") {
        return None;
    }
    let pod = &attrs.object;
    if pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
    {
        return None;
    }
    let ns = attrs.namespace.clone().unwrap_or_default();
    let name = ["serviceAccountName", "serviceAccount"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_str))
        .find(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_string();
    Some((ns, name))
}

/// Reads the service account, retrying a while for `default`.
async fn lookup(app: &App, reads: &Reads, ns: &str, name: &str) -> ApiResult<Option<Value>> {
    let key = service_accounts()?.key(Some(ns), name);
    let tries = if name == DEFAULT_SERVICE_ACCOUNT {
        DEFAULT_LOOKUPS
    } else {
        1
    };
    for i in 0..tries {
        let found = if i == 0 {
            reads.object(app, &key).await?
        } else {
            tokio::time::sleep(Duration::from_millis(100 + 10 * i as u64)).await;
            read_object(app, &key).await?
        };
        if let Some((sa, _)) = found {
            return Ok(Some(sa));
        }
    }
    Ok(None)
}

async fn admit(app: &App, attrs: &mut Attributes) -> ApiResult<()> {
    let Some((ns, name)) = account_of(attrs) else {
        return Ok(());
    };
    let Some(sa) = lookup(app, &attrs.reads, &ns, &name).await? else {
        return Err(attrs.forbidden(format!(
            "error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
        )));
    };
    let pod = &mut attrs.object;
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("serviceAccountName".into(), json!(name));
        spec.insert("serviceAccount".into(), json!(name));
    }
    if automount(&sa, pod) {
        mount_token(pod, &object::random_suffix(5));
    }
    let has_secrets = pod
        .pointer("/spec/imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    if let Some(secrets) = sa
        .get("imagePullSecrets")
        .filter(|s| !has_secrets && s.as_array().is_some_and(|a| !a.is_empty()))
    {
        if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("imagePullSecrets".into(), secrets.clone());
        }
    }
    Ok(())
}

impl Plugin for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    fn reads(&self, attrs: &Attributes) -> Vec<Read> {
        let key = account_of(attrs)
            .and_then(|(ns, name)| Some(service_accounts().ok()?.key(Some(&ns), &name)));
        key.map(Read::Object).into_iter().collect()
    }

    fn admit<'a>(
        &'a self,
        app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(admit(app, attrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_mounted_where_nothing_is() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a", "volumeMounts": [{"name": "x", "mountPath": "/x"}]},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]},
            ],
        }});
        mount_token(&mut pod, "abcde");
        let spec = &pod["spec"];
        assert_eq!(
            spec["volumes"],
            json!([token_volume("kube-api-access-abcde")])
        );
        assert_eq!(
            spec["containers"][0]["volumeMounts"][1],
            json!({"name": "kube-api-access-abcde", "readOnly": true, "mountPath": TOKEN_MOUNT_PATH})
        );
        assert_eq!(
            spec["initContainers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-abcde"
        );
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        // Admitting again reuses the volume.
        mount_token(&mut pod, "zzzzz");
        assert_eq!(pod["spec"]["volumes"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn automount_pod_wins_over_account() {
        let sa_off = json!({"automountServiceAccountToken": false});
        assert!(!automount(&sa_off, &json!({"spec": {}})));
        assert!(automount(
            &sa_off,
            &json!({"spec": {"automountServiceAccountToken": true}})
        ));
        assert!(automount(&json!({}), &json!({"spec": {}})));
        assert!(!automount(
            &json!({}),
            &json!({"spec": {"automountServiceAccountToken": false}})
        ));
    }
}
