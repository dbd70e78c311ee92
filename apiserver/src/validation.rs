//! Field validation (`?fieldValidation=Strict|Warn|Ignore`): fields the
//! Kubernetes schema of a kind does not have. The schema is the kind's
//! protobuf descriptor (whose field names are the JSON names).
//!
//! - `Strict`: a 400 naming every unknown field (kubectl apply's default).
//! - `Warn` (the default when unset): the object is written and each unknown
//!   field comes back as a `Warning` header, which kubectl prints.
//! - `Ignore`: nothing.

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::{ApiError, ApiResult};

/// The `fieldValidation` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Unknown fields are kept silently.
    Ignore,
    /// Unknown fields are kept and reported as warnings.
    Warn,
    /// Unknown fields fail the request.
    Strict,
}

impl FieldValidation {
    /// Parses `?fieldValidation=` (unset: `Warn`, as Kubernetes does).
    pub fn parse(s: Option<&str>) -> ApiResult<FieldValidation> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(v) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {v:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Messages with a JSON form of their own: not walked into.
fn opaque(m: &MessageDescriptor) -> bool {
    matches!(
        m.full_name(),
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time"
            | "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime"
            | "k8s.io.apimachinery.pkg.apis.meta.v1.Duration"
            | "k8s.io.apimachinery.pkg.util.intstr.IntOrString"
            | "k8s.io.apimachinery.pkg.api.resource.Quantity"
            | "k8s.io.apimachinery.pkg.runtime.RawExtension"
            | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1"
    )
}

fn walk(desc: &MessageDescriptor, v: &Value, path: &str, top: bool, out: &mut Vec<String>) {
    let Some(obj) = v.as_object() else { return };
    for (k, child) in obj {
        if top && (k == "kind" || k == "apiVersion") {
            continue;
        }
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let Some(f) = desc.get_field_by_name(k) else {
            out.push(here);
            continue;
        };
        let Kind::Message(m) = f.kind() else { continue };
        if f.is_map() {
            if let Kind::Message(vm) = m.map_entry_value_field().kind() {
                if !opaque(&vm) {
                    for (mk, mv) in child.as_object().into_iter().flatten() {
                        walk(&vm, mv, &format!("{here}[{mk}]"), false, out);
                    }
                }
            }
        } else if opaque(&m) {
            continue;
        } else if f.is_list() {
            for (i, item) in child.as_array().into_iter().flatten().enumerate() {
                walk(&m, item, &format!("{here}[{i}]"), false, out);
            }
        } else {
            walk(&m, child, &here, false, out);
        }
    }
}

/// The paths of the fields of `obj` that kind `res` does not have (empty
/// when the kind has no known schema).
pub fn unknown_fields(res: &ResourceInfo, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let desc = crate::protobuf::package(res.group, res.kind)
        .and_then(|p| crate::protobuf::pool()?.get_message_by_name(&format!("{p}.{}", res.kind)));
    if let Some(d) = desc {
        walk(&d, obj, "", true, &mut out);
    }
    out
}

/// Applies the directive: `Err` under Strict, else the warnings to send.
pub fn check(mode: FieldValidation, res: &ResourceInfo, obj: &Value) -> ApiResult<Vec<String>> {
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let unknown: Vec<String> = unknown_fields(res, obj)
        .into_iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    if mode == FieldValidation::Strict && !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
            unknown.join(", "),
            kind = res.kind,
            v = res.version,
        )));
    }
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        let deploy = crate::registry::lookup("apps", "v1", "deployments").expect("deployments");
        let obj = json!({
            "kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": {"name": "a", "labels": {"x": "y"}, "bogus": 1, "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "c", "image": "i", "ports": [{"containerPort": 80}], "resources": {"limits": {"cpu": "1"}}},
                {"name": "d", "imag": "typo"}
            ]}}, "strategy": {"rollingUpdate": {"maxSurge": "25%"}}},
            "status": {}
        });
        assert_eq!(
            unknown_fields(deploy, &obj),
            vec![
                "metadata.bogus".to_string(),
                "spec.template.spec.containers[1].imag".to_string()
            ]
        );
        assert_eq!(
            check(FieldValidation::Strict, deploy, &obj)
                .expect_err("strict")
                .code,
            400
        );
        assert_eq!(
            check(FieldValidation::Warn, deploy, &obj)
                .expect("warn")
                .len(),
            2
        );
        assert!(check(FieldValidation::Ignore, deploy, &obj)
            .expect("ignore")
            .is_empty());
        assert!(FieldValidation::parse(Some("Loud")).is_err());
    }
}
