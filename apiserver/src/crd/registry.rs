//! The CRD-fed layer of the registry: what each served version of each
//! established CustomResourceDefinition adds (a [`ResourceInfo`] row in
//! `crate::registry`'s dynamic layer) and what only custom resources have
//! (schema, printer columns, scale paths, storage version), looked up by
//! row through [`version_of`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use serde_json::Value;

use crate::registry::{self, intern, intern_list, ResourceInfo};

/// One printer column (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Header.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean`, `date`.
    pub type_: String,
    /// Format (`int32`, `date`…), may be empty.
    pub format: String,
    /// Description.
    pub description: String,
    /// 0: shown by `kubectl get`; more: `-o wide` only.
    pub priority: i64,
    /// A simple JSONPath (`.spec.replicas`).
    pub json_path: String,
}

/// What a custom resource version has besides its registry row.
#[derive(Debug, Clone, PartialEq)]
pub struct CrdVersion {
    /// The CRD's name (`crontabs.stable.example.com`).
    pub crd_name: String,
    /// The version objects are stored in.
    pub storage_version: String,
    /// `openAPIV3Schema`.
    pub schema: Value,
    /// `additionalPrinterColumns` (empty: Kubernetes' default NAME, AGE).
    pub columns: Vec<PrinterColumn>,
    /// The `scale` subresource's paths (`.spec.replicas`, `.status.replicas`,
    /// optional `.status.selector`), if declared.
    pub scale: Option<ScalePaths>,
    /// The CRD is being deleted: its objects are still served (to be
    /// read and deleted) but no new one is created.
    pub terminating: bool,
}

/// `subresources.scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    /// `specReplicasPath`.
    pub spec: String,
    /// `statusReplicasPath`.
    pub status: String,
    /// `labelSelectorPath`.
    pub selector: Option<String>,
}

type Key = (String, String, String);

/// The details by (group, version, plural).
type Details = RwLock<Arc<HashMap<Key, Arc<CrdVersion>>>>;

fn details() -> &'static Details {
    static D: OnceLock<Details> = OnceLock::new();
    D.get_or_init(Default::default)
}

/// The custom resource details of a registry row (None for built-ins).
pub fn version_of(res: &ResourceInfo) -> Option<Arc<CrdVersion>> {
    if !res.custom {
        return None;
    }
    let d = details().read().unwrap_or_else(|p| p.into_inner()).clone();
    d.get(&(
        res.group.to_string(),
        res.version.to_string(),
        res.plural.to_string(),
    ))
    .cloned()
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn strings(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The rows and details of one CRD's served versions (names from
/// `status.acceptedNames` when set, else `spec.names`).
pub fn rows_of(crd: &Value) -> Vec<(ResourceInfo, CrdVersion)> {
    let group = s(crd, "/spec/group");
    let names = match crd.pointer("/status/acceptedNames/plural") {
        Some(Value::String(p)) if !p.is_empty() => "/status/acceptedNames",
        _ => "/spec/names",
    };
    let plural = s(crd, &format!("{names}/plural"));
    let kind = s(crd, &format!("{names}/kind"));
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let singular = match s(crd, &format!("{names}/singular")) {
        "" => kind.to_lowercase(),
        x => x.to_string(),
    };
    let namespaced = s(crd, "/spec/scope") != "Cluster";
    let short = strings(crd, &format!("{names}/shortNames"));
    let categories = strings(crd, &format!("{names}/categories"));
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .map(|v| s(v, "/name").to_string())
        .unwrap_or_default();
    let mut out = Vec::new();
    for v in &versions {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let name = s(v, "/name");
        let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
            spec: s(sc, "/specReplicasPath").to_string(),
            status: s(sc, "/statusReplicasPath").to_string(),
            selector: sc
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
        let row = ResourceInfo {
            group: intern(group),
            version: intern(name),
            kind: intern(kind),
            plural: intern(plural),
            singular: intern(&singular),
            namespaced,
            short_names: intern_list(&short),
            status: v.pointer("/subresources/status").is_some(),
            categories: intern_list(&categories),
            dns_label_names: false,
            scale: scale.is_some(),
            stored: true,
            custom: true,
        };
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: s(c, "/name").to_string(),
                        type_: s(c, "/type").to_string(),
                        format: s(c, "/format").to_string(),
                        description: s(c, "/description").to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: s(c, "/jsonPath").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            row,
            CrdVersion {
                crd_name: crate::object::meta_str(crd, "name")
                    .unwrap_or("")
                    .to_string(),
                storage_version: storage.clone(),
                schema: v
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                columns,
                scale,
                terminating: crd.pointer("/metadata/deletionTimestamp").is_some(),
            },
        ));
    }
    out
}

/// Serves exactly the given CRDs (the accepted ones): replaces the
/// registry's dynamic layer and the details. Returns true if the served
/// set changed.
pub fn serve(crds: &[Value]) -> bool {
    let mut rows = Vec::new();
    let mut map = HashMap::new();
    for crd in crds {
        for (row, v) in rows_of(crd) {
            let key = (
                row.group.to_string(),
                row.version.to_string(),
                row.plural.to_string(),
            );
            if map.contains_key(&key) {
                continue;
            }
            map.insert(key, Arc::new(v));
            rows.push(row);
        }
    }
    let changed_details = {
        let cur = details().read().unwrap_or_else(|p| p.into_inner()).clone();
        *cur != map
    };
    if changed_details {
        *details().write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }
    let changed_rows = registry::set_dynamic(rows);
    if changed_details && !changed_rows {
        // Schemas or columns moved: OpenAPI documents must get a new hash.
        registry::bump_generation();
    }
    changed_rows || changed_details
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn served_versions_become_rows() {
        let crd = json!({
            "metadata": {"name": "widgets.rows.keel.dev"},
            "spec": {"group": "rows.keel.dev", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
                     "versions": [
                        {"name": "v1", "served": true, "storage": true,
                         "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                         "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]},
                        {"name": "v1beta1", "served": true, "storage": false},
                        {"name": "v1alpha1", "served": false, "storage": false}]}
        });
        let rows = rows_of(&crd);
        assert_eq!(rows.len(), 2);
        let (r, v) = &rows[0];
        assert_eq!(
            (r.kind, r.singular, r.short_names, r.categories),
            ("Widget", "widget", &["wd"][..], &["all"][..])
        );
        assert!(r.status && r.scale && r.custom && r.namespaced);
        assert_eq!(
            v.scale.as_ref().map(|s| s.spec.as_str()),
            Some(".spec.size")
        );
        assert_eq!(v.columns[0].json_path, ".spec.size");
        assert_eq!(rows[1].1.storage_version, "v1");
        assert!(!rows[1].0.status);
    }
}
