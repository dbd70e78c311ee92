//! The default roles and bindings (a subset of Kubernetes' bootstrap
//! policy, for the resources keel serves), created at startup when
//! missing; existing ones get what they lack ([`super::reconcile`]).
//!
//! - `cluster-admin` (everything), bound to the group `system:masters`;
//! - `admin`, `edit`, `view`: aggregated ClusterRoles filled from
//!   `system:aggregate-to-{admin,edit,view}` (and any ClusterRole with the
//!   `rbac.authorization.k8s.io/aggregate-to-*` labels), with the labels
//!   that aggregate `view` into `edit` and `edit` into `admin`;
//! - `system:discovery`, `system:basic-user` (bound to
//!   `system:authenticated`) and `system:public-info-viewer` (bound to
//!   `system:authenticated` and `system:unauthenticated`),
//!   `system:service-account-issuer-discovery` (bound to
//!   `system:serviceaccounts`).

use serde_json::{json, Value};

use super::policy_cache::rbac_resource;
use crate::handlers::{decode, store_err, App};
use crate::object;
use crate::status::{ApiError, ApiResult};
use crate::store::Cas;

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn meta(name: &str, labels: Value) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let (Some(l), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
        l.extend(extra.clone());
    }
    json!({
        "name": name,
        "labels": l,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({
        "kind": "ClusterRole",
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": meta(name, labels),
        "rules": rules,
    })
}

fn aggregated(name: &str, labels: Value, selector: &str) -> Value {
    let mut r = cluster_role(name, labels, vec![]);
    r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {selector: "true"}}]});
    r
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
        .collect();
    json!({
        "kind": "ClusterRoleBinding",
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": meta(name, json!({})),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let to_admin = json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"});
    let to_edit = json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"});
    let to_view = json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"});
    let view_core = [
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "pods",
        "pods/log",
        "pods/status",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
        "serviceaccounts",
        "services",
        "services/status",
        "bindings",
        "events",
        "limitranges",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces",
        "namespaces/status",
    ];
    let apps = [
        "controllerrevisions",
        "daemonsets",
        "daemonsets/status",
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
    ];
    let hpa = [
        "horizontalpodautoscalers",
        "horizontalpodautoscalers/status",
    ];
    let batch = ["cronjobs", "cronjobs/status", "jobs", "jobs/status"];
    let ingress = ["ingresses", "ingresses/status", "networkpolicies"];
    let pdb = ["poddisruptionbudgets", "poddisruptionbudgets/status"];
    let view = vec![
        rule(READ, &[""], &view_core),
        rule(READ, &["apps"], &apps),
        rule(READ, &["autoscaling"], &hpa),
        rule(READ, &["batch"], &batch),
        rule(READ, &["networking.k8s.io"], &ingress),
        rule(READ, &["policy"], &pdb),
    ];
    let edit = vec![
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
        ),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            WRITE,
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(WRITE, &["apps"], &apps[1..]),
        rule(WRITE, &["autoscaling"], &hpa[..1]),
        rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(WRITE, &["policy"], &pdb[..1]),
        rule(WRITE, &["coordination.k8s.io"], &["leases"]),
    ];
    let admin = vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
        ),
    ];
    let discovery_urls = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        ),
        aggregated(
            "admin",
            json!({}),
            "rbac.authorization.k8s.io/aggregate-to-admin",
        ),
        aggregated(
            "edit",
            to_admin.clone(),
            "rbac.authorization.k8s.io/aggregate-to-edit",
        ),
        aggregated(
            "view",
            to_edit.clone(),
            "rbac.authorization.k8s.io/aggregate-to-view",
        ),
        cluster_role("system:aggregate-to-admin", to_admin, admin),
        cluster_role("system:aggregate-to-edit", to_edit, edit),
        cluster_role("system:aggregate-to-view", to_view, view),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![url_rule(&["get"], &discovery_urls)],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            json!({}),
            vec![url_rule(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![url_rule(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &["system:serviceaccounts"],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
    ]
}

/// Creates every default role and binding that does not exist yet, and
/// reconciles the ones that do ([`super::reconcile`]).
pub async fn ensure(app: &App) -> ApiResult<()> {
    let sets = [
        ("clusterroles", cluster_roles()),
        ("clusterrolebindings", cluster_role_bindings()),
    ];
    for (plural, objects) in sets {
        let res = rbac_resource(plural)?;
        for mut obj in objects {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("uid".into(), json!(object::new_uid()));
                m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
            }
            let bytes = serde_json::to_vec(&obj)
                .map_err(|e| ApiError::internal(format!("encoding {name}: {e}")))?;
            let key = res.key(None, &name);
            let Cas::Failed(Some(kv)) = app.store.create(&key, bytes).await.map_err(store_err)?
            else {
                continue;
            };
            // It exists: add what a default lacks (see `reconcile`).
            let existing = decode(&kv)?;
            let Some(mut updated) = super::reconcile::reconcile(&obj, &existing) else {
                continue;
            };
            if let Some(m) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            let bytes = serde_json::to_vec(&updated)
                .map_err(|e| ApiError::internal(format!("encoding {name}: {e}")))?;
            match app
                .store
                .update(&key, bytes, kv.mod_revision)
                .await
                .map_err(store_err)?
            {
                Cas::Done(_) => {
                    tracing::info!(%name, kind = %res.kind, "default RBAC object reconciled")
                }
                Cas::Failed(_) => {
                    tracing::info!(%name, "default RBAC object changed meanwhile; reconciled next start")
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::rbac::rules_of;

    #[test]
    fn default_roles_parse_and_bindings_point_at_them() {
        let roles = cluster_roles();
        for r in &roles {
            if r.get("aggregationRule").is_none() {
                assert!(!rules_of(r).is_empty(), "{r}");
            }
        }
        for b in cluster_role_bindings() {
            let role = b["roleRef"]["name"].as_str().expect("roleRef");
            assert!(
                roles.iter().any(|r| r["metadata"]["name"] == role),
                "{role}"
            );
        }
    }
}
