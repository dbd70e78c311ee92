//! The service account and root CA controllers: every namespace that is not
//! terminating has a `default` ServiceAccount and a `kube-root-ca.crt`
//! ConfigMap holding the cluster CA (what pods' token volumes project).
//! New namespaces are handled within one interval; all of them again every
//! resync (a deleted `default` account comes back).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::list_prefix;
use crate::admission::lifecycle::terminating;
use crate::admission::service_account::{DEFAULT_SERVICE_ACCOUNT, ROOT_CA_CONFIGMAP};
use crate::handlers::read::read_object;
use crate::handlers::write::to_store;
use crate::handlers::{store_err, App};
use crate::object::{self, meta_str};
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult};

/// The description Kubernetes puts on `kube-root-ca.crt`.
const CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

fn core(plural: &str) -> ApiResult<&'static ResourceInfo> {
    registry::lookup("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))
}

/// Runs the loop.
pub async fn run(app: Arc<App>, ca_pem: Option<String>, every: Duration, resync: Duration) {
    let mut done: HashSet<String> = HashSet::new();
    let mut last_resync = Instant::now();
    loop {
        if last_resync.elapsed() >= resync {
            done.clear();
            last_resync = Instant::now();
        }
        if let Err(e) = pass(&app, ca_pem.as_deref(), &mut done).await {
            tracing::debug!(error = %e, "service account controller pass failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// One pass: every namespace not in `done` (by uid) gets its objects.
pub async fn pass(app: &App, ca_pem: Option<&str>, done: &mut HashSet<String>) -> ApiResult<()> {
    let (all, _) = list_prefix(app, &core("namespaces")?.prefix(None)).await?;
    for (ns, _) in all {
        let uid = meta_str(&ns, "uid").unwrap_or("").to_string();
        if terminating(&ns) || done.contains(&uid) {
            continue;
        }
        let name = meta_str(&ns, "name").unwrap_or("").to_string();
        ensure(app, &name, ca_pem).await?;
        done.insert(uid);
    }
    Ok(())
}

fn new_object(kind: &str, ns: &str, name: &str) -> Value {
    json!({
        "kind": kind,
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": object::new_uid(),
            "creationTimestamp": object::now_rfc3339(),
        },
    })
}

/// Creates the `default` account and the root CA ConfigMap of `ns` if
/// missing; brings the CA up to date.
pub async fn ensure(app: &App, ns: &str, ca_pem: Option<&str>) -> ApiResult<()> {
    let sa = core("serviceaccounts")?;
    let key = sa.key(Some(ns), DEFAULT_SERVICE_ACCOUNT);
    if read_object(app, &key).await?.is_none() {
        let obj = new_object("ServiceAccount", ns, DEFAULT_SERVICE_ACCOUNT);
        app.store
            .create(&key, to_store(&obj)?)
            .await
            .map_err(store_err)?;
        tracing::debug!(namespace = ns, "created the default service account");
    }
    let Some(pem) = ca_pem else { return Ok(()) };
    let cm = core("configmaps")?;
    let key = cm.key(Some(ns), ROOT_CA_CONFIGMAP);
    match read_object(app, &key).await? {
        None => {
            let mut obj = new_object("ConfigMap", ns, ROOT_CA_CONFIGMAP);
            obj["metadata"]["annotations"] = json!({"kubernetes.io/description": CA_DESCRIPTION});
            obj["data"] = json!({"ca.crt": pem});
            app.store
                .create(&key, to_store(&obj)?)
                .await
                .map_err(store_err)?;
        }
        Some((mut obj, rev)) => {
            if obj.pointer("/data/ca.crt").and_then(Value::as_str) != Some(pem) {
                if !obj.get("data").is_some_and(Value::is_object) {
                    obj["data"] = json!({});
                }
                obj["data"]["ca.crt"] = json!(pem);
                app.store
                    .update(&key, to_store(&obj)?, rev)
                    .await
                    .map_err(store_err)?;
            }
        }
    }
    Ok(())
}
