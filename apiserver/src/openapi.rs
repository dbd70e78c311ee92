//! `/openapi/v3`: one document per group-version. For now it carries the
//! paths and operations of every resource (with `x-kubernetes-group-version-kind`
//! and the `fieldValidation` query parameter on PATCH), which is what
//! kubectl's field-validation check reads, so `kubectl apply` works with its
//! default `--validate=true` (validation is then left to the server). The
//! schemas (`components.schemas`, what `kubectl explain` reads) are not
//! served yet.

use serde_json::{json, Map, Value};

use crate::registry::{self, ResourceInfo};

/// The URL path (without `/openapi/v3/`) of a group-version's document.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of documents.
pub fn index() -> Value {
    let mut paths = Map::new();
    for (g, v) in registry::group_versions() {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=keel{}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json!({ "paths": paths })
}

fn param(name: &str, location: &str) -> Value {
    json!({"name": name, "in": location, "schema": {"type": "string", "uniqueItems": true}})
}

fn op(r: &ResourceInfo, action: &str, id: &str, write: bool) -> Value {
    let mut params = Vec::new();
    if write {
        for p in ["dryRun", "fieldManager", "fieldValidation"] {
            params.push(param(p, "query"));
        }
    }
    let mut o = json!({
        "operationId": format!("{id}{}", r.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
    });
    if action == "patch" {
        o["requestBody"] = json!({"content": {
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
        }});
    }
    o
}

/// The document for one group-version, if served.
pub fn document(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in registry::resources_of(group, version) {
        let base = format!("/{}", gv_path(r.group, r.version));
        let coll = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let mut ns_param = Vec::new();
        if r.namespaced {
            ns_param.push(param("namespace", "path"));
        }
        paths.insert(
            coll.clone(),
            json!({
                "get": op(r, "list", "list", false),
                "post": op(r, "post", "create", true),
                "delete": op(r, "deletecollection", "deleteCollection", true),
                "parameters": ns_param,
            }),
        );
        let mut item_params = ns_param.clone();
        item_params.push(param("name", "path"));
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({
                "get": op(r, "get", "read", false),
                "put": op(r, "put", "replace", true),
                "patch": op(r, "patch", "patch", true),
                "delete": op(r, "delete", "delete", true),
                "parameters": item_params,
            }),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_has_a_document_with_patch_operations() {
        let idx = index();
        let paths = idx["paths"].as_object().expect("paths");
        assert!(paths.contains_key("api/v1") && paths.contains_key("apis/apps/v1"));
        let doc = document("apps", "v1").expect("apps");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .expect("params")
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
    }
}
