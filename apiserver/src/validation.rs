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

/// Messages with a JSON form of their own (times, quantities, …): not
/// walked into.
pub(crate) fn opaque(m: &MessageDescriptor) -> bool {
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

/// What a walk found: unknown fields, and values of the wrong JSON type.
#[derive(Debug, Default)]
struct Findings {
    unknown: Vec<String>,
    wrong_type: Vec<String>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a scalar (or opaque message) value against the field's kind.
fn scalar_ok(kind: &Kind, v: &Value) -> Option<&'static str> {
    let ok = match kind {
        Kind::Bool => v.is_boolean(),
        Kind::String => v.is_string(),
        Kind::Bytes => v.is_string(),
        Kind::Double | Kind::Float => v.is_number(),
        Kind::Enum(_) => v.is_string() || v.is_i64(),
        Kind::Message(m) => match m.full_name() {
            "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => v.is_string() || v.is_i64(),
            "k8s.io.apimachinery.pkg.api.resource.Quantity" => v.is_string() || v.is_number(),
            "k8s.io.apimachinery.pkg.apis.meta.v1.Time"
            | "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime"
            | "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => v.is_string(),
            _ => true,
        },
        // Integers: JSON numbers without a fraction.
        _ => v.is_i64() || v.is_u64(),
    };
    if ok {
        return None;
    }
    Some(match kind {
        Kind::Bool => "a boolean",
        Kind::String | Kind::Bytes => "a string",
        Kind::Double | Kind::Float => "a number",
        Kind::Message(_) => "a string or a number",
        _ => "an integer",
    })
}

fn check_value(kind: &Kind, v: &Value, here: &str, out: &mut Findings) {
    if v.is_null() {
        return;
    }
    match kind {
        Kind::Message(m) if !opaque(m) => {
            if v.is_object() {
                walk(m, v, here, false, out);
            } else {
                out.wrong_type
                    .push(format!("{here}: expected an object, got {}", json_type(v)));
            }
        }
        other => {
            if let Some(want) = scalar_ok(other, v) {
                out.wrong_type
                    .push(format!("{here}: expected {want}, got {}", json_type(v)));
            }
        }
    }
}

fn walk(desc: &MessageDescriptor, v: &Value, path: &str, top: bool, out: &mut Findings) {
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
        // Go's embedded structs (a volume's source, a probe's handler) are
        // inlined in JSON: their fields count as the parent's.
        let Some((_, f)) = crate::apply::schema::find_field(desc, k) else {
            out.unknown.push(here);
            continue;
        };
        if child.is_null() {
            continue;
        }
        if f.is_map() {
            let Some(entries) = child.as_object() else {
                out.wrong_type.push(format!(
                    "{here}: expected an object, got {}",
                    json_type(child)
                ));
                continue;
            };
            if let Kind::Message(entry) = f.kind() {
                let vk = entry.map_entry_value_field().kind();
                for (mk, mv) in entries {
                    check_value(&vk, mv, &format!("{here}[{mk}]"), out);
                }
            }
        } else if f.is_list() {
            let Some(items) = child.as_array() else {
                out.wrong_type.push(format!(
                    "{here}: expected an array, got {}",
                    json_type(child)
                ));
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                check_value(&f.kind(), item, &format!("{here}[{i}]"), out);
            }
        } else {
            check_value(&f.kind(), child, &here, out);
        }
    }
}

fn findings(res: &ResourceInfo, obj: &Value) -> Findings {
    let mut out = Findings::default();
    if res.custom {
        // A custom resource's schema is its CRD's (types are checked
        // with the 422 of schema validation, not here).
        out.unknown = crate::crd::unknown_fields(res, obj);
        return out;
    }
    let desc = crate::protobuf::package(res.group, res.kind)
        .and_then(|p| crate::protobuf::pool()?.get_message_by_name(&format!("{p}.{}", res.kind)));
    if let Some(d) = desc {
        walk(&d, obj, "", true, &mut out);
    }
    out
}

/// The paths of the fields of `obj` that kind `res` does not have (empty
/// when the kind has no known schema).
pub fn unknown_fields(res: &ResourceInfo, obj: &Value) -> Vec<String> {
    findings(res, obj).unknown
}

/// Applies the directive: `Err` under Strict, else the warnings to send.
/// A value of the wrong JSON type is a 400 whatever the directive (the
/// object could not be decoded into its type).
pub fn check(mode: FieldValidation, res: &ResourceInfo, obj: &Value) -> ApiResult<Vec<String>> {
    let found = findings(res, obj);
    if !found.wrong_type.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {}",
            found.wrong_type.join(", "),
            kind = res.kind,
            v = res.version,
        )));
    }
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let unknown: Vec<String> = found
        .unknown
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

    #[test]
    fn fields_of_inlined_structs_are_known() {
        let res = crate::registry::lookup("", "v1", "pods").expect("pods");
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "c", "image": "i",
                    "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
                    "livenessProbe": {"exec": {"command": ["true"]}},
                    "lifecycle": {"preStop": {"exec": {"command": ["true"]}}}}],
                "volumes": [{"name": "v", "configMap": {"name": "x"}},
                            {"name": "w", "projected": {"sources": []}}]
            }
        });
        assert_eq!(unknown_fields(res, &pod), Vec::<String>::new());
        let mut bad = pod.clone();
        bad["spec"]["volumes"][0]["configMapp"] = serde_json::json!({});
        assert_eq!(
            unknown_fields(res, &bad),
            vec!["spec.volumes[0].configMapp".to_string()]
        );
    }

    #[test]
    fn wrong_types_are_a_400_even_when_ignored() {
        let cm = crate::registry::lookup("", "v1", "configmaps").expect("configmaps");
        let bad = json!({"metadata": {"name": "a", "labels": 5}});
        let err = check(FieldValidation::Ignore, cm, &bad).expect_err("labels: 5");
        assert!(
            err.message
                .contains("metadata.labels: expected an object, got a number"),
            "{}",
            err.message
        );
        let deploy = crate::registry::lookup("apps", "v1", "deployments").expect("deployments");
        let bad =
            json!({"spec": {"replicas": "3", "template": {"spec": {"containers": [{"name": 1}]}}}});
        let err = check(FieldValidation::Warn, deploy, &bad).expect_err("types");
        assert!(
            err.message
                .contains("spec.replicas: expected an integer, got a string"),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("spec.template.spec.containers[0].name: expected a string"),
            "{}",
            err.message
        );
        let ok = json!({"metadata": {"name": "a", "labels": null, "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"replicas": 2, "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}},
                     "template": {"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}}]}}}});
        assert!(check(FieldValidation::Strict, deploy, &ok)
            .expect("valid")
            .is_empty());
    }
}
