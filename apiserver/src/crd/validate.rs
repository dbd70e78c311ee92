//! Defaulting and validation of CustomResourceDefinition objects, with
//! Kubernetes' (apiextensions-apiserver's) field paths and messages.

use serde_json::{json, Value};

use super::schema::structural_errors;
use crate::status::Cause;

/// The finalizer that makes a CRD's deletion remove its objects first.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn cause(field: &str, reason: &'static str, message: impl Into<String>) -> Cause {
    Cause {
        reason,
        message: message.into(),
        field: field.to_string(),
    }
}

/// Fills what Kubernetes defaults: `names.singular` (lowercase kind),
/// `names.listKind` (`<Kind>List`), `conversion.strategy: None`.
pub fn default_crd(crd: &mut Value) {
    let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !kind.is_empty() {
            if names
                .get("singular")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                names.insert("singular".into(), json!(kind.to_lowercase()));
            }
            if names
                .get("listKind")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                names.insert("listKind".into(), json!(format!("{kind}List")));
            }
        }
    }
    if !spec.get("conversion").is_some_and(Value::is_object) {
        spec.insert("conversion".into(), json!({"strategy": "None"}));
    }
}

/// A lowercase RFC 1123 label (plural, singular, short names).
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// A DNS-1035 label (version names).
fn dns1035(s: &str) -> bool {
    dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn kind_ok(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
        && s.len() <= 63
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn check_names(crd: &Value, out: &mut Vec<Cause>) {
    let p = "spec.names";
    for (field, required) in [("plural", true), ("singular", false), ("listKind", false)] {
        let v = str_at(crd, &format!("/spec/names/{field}"));
        if v.is_empty() {
            if required {
                out.push(cause(
                    &format!("{p}.{field}"),
                    "FieldValueRequired",
                    "Required value",
                ));
            }
            continue;
        }
        let ok = if field == "listKind" {
            kind_ok(v)
        } else {
            dns_label(v)
        };
        if !ok {
            let msg = if field == "listKind" {
                format!("Invalid value: {v:?}: may have mixed case, but should otherwise match: [a-zA-Z][a-zA-Z0-9]*")
            } else {
                format!("Invalid value: {v:?}: {LABEL_MSG}")
            };
            out.push(cause(&format!("{p}.{field}"), "FieldValueInvalid", msg));
        }
    }
    let kind = str_at(crd, "/spec/names/kind");
    if kind.is_empty() {
        out.push(cause(
            &format!("{p}.kind"),
            "FieldValueRequired",
            "Required value",
        ));
    } else if !kind_ok(kind) {
        out.push(cause(
            &format!("{p}.kind"),
            "FieldValueInvalid",
            format!("Invalid value: {kind:?}: may have mixed case, but should otherwise match: [a-zA-Z][a-zA-Z0-9]*"),
        ));
    }
    if !kind.is_empty() && str_at(crd, "/spec/names/listKind") == kind {
        out.push(cause(
            &format!("{p}.listKind"),
            "FieldValueInvalid",
            format!("Invalid value: {kind:?}: kind and listKind may not be the same or parsing become ambiguous"),
        ));
    }
    if let Some(shorts) = crd
        .pointer("/spec/names/shortNames")
        .and_then(Value::as_array)
    {
        for (i, sn) in shorts.iter().enumerate() {
            let s = sn.as_str().unwrap_or("");
            if !dns_label(s) {
                out.push(cause(
                    &format!("{p}.shortNames[{i}]"),
                    "FieldValueInvalid",
                    format!("Invalid value: {s:?}: {LABEL_MSG}"),
                ));
            }
        }
    }
}

fn check_versions(crd: &Value, out: &mut Vec<Cause>) {
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        out.push(cause(
            "spec.versions",
            "FieldValueInvalid",
            "Invalid value: \"null\": must have exactly one version marked as storage version",
        ));
        return;
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if storage != 1 {
        out.push(cause(
            "spec.versions",
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: must have exactly one version marked as storage version",
                // The version names (Kubernetes prints the Go structs).
                Value::Array(
                    versions
                        .iter()
                        .map(|v| v.get("name").cloned().unwrap_or(Value::Null))
                        .collect()
                )
            ),
        ));
    }
    if !versions
        .iter()
        .any(|v| v.get("served").and_then(Value::as_bool) == Some(true))
    {
        out.push(cause(
            "spec.versions",
            "FieldValueInvalid",
            "Invalid value: must have at least one version marked as served",
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let p = format!("spec.versions[{i}]");
        let name = str_at(v, "/name");
        if name.is_empty() {
            out.push(cause(
                &format!("{p}.name"),
                "FieldValueRequired",
                "Required value",
            ));
        } else if !dns1035(name) {
            out.push(cause(
                &format!("{p}.name"),
                "FieldValueInvalid",
                format!("Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"),
            ));
        } else if seen.contains(&name) {
            out.push(cause(
                &format!("{p}.name"),
                "FieldValueDuplicate",
                format!("Duplicate value: {name:?}"),
            ));
        }
        seen.push(name);
        match v.pointer("/schema/openAPIV3Schema") {
            Some(s) if s.is_object() => {
                out.extend(structural_errors(s, &format!("{p}.schema.openAPIV3Schema")))
            }
            _ => out.push(cause(
                &format!("{p}.schema.openAPIV3Schema"),
                "FieldValueRequired",
                "Required value: schemas are required",
            )),
        }
        if let Some(sc) = v.pointer("/subresources/scale") {
            for f in ["specReplicasPath", "statusReplicasPath"] {
                let path = str_at(sc, &format!("/{f}"));
                let fp = format!("{p}.subresources.scale.{f}");
                if path.is_empty() {
                    out.push(cause(&fp, "FieldValueRequired", "Required value"));
                } else if !path.starts_with('.') || path.contains('[') {
                    out.push(cause(
                        &fp,
                        "FieldValueInvalid",
                        format!(
                            "Invalid value: {path:?}: should be a json path under .spec or .status"
                        ),
                    ));
                }
            }
        }
        if let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array) {
            for (j, c) in cols.iter().enumerate() {
                let cp = format!("{p}.additionalPrinterColumns[{j}]");
                for f in ["name", "type", "jsonPath"] {
                    if str_at(c, &format!("/{f}")).is_empty() {
                        out.push(cause(
                            &format!("{cp}.{f}"),
                            "FieldValueRequired",
                            "Required value",
                        ));
                    }
                }
                let t = str_at(c, "/type");
                if !t.is_empty() && !["integer", "number", "string", "boolean", "date"].contains(&t)
                {
                    out.push(cause(&format!("{cp}.type"), "FieldValueNotSupported", format!("Unsupported value: {t:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\"")));
                }
            }
        }
    }
}

/// The causes of a 422 for a CRD (after [`default_crd`]); `old` is the
/// stored CRD on an update (scope and group cannot change).
pub fn validate_crd(crd: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    let group = str_at(crd, "/spec/group");
    let plural = str_at(crd, "/spec/names/plural");
    let name = crate::object::meta_str(crd, "name").unwrap_or("");
    if name != format!("{plural}.{group}") {
        out.push(cause(
            "metadata.name",
            "FieldValueInvalid",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if group.is_empty() {
        out.push(cause("spec.group", "FieldValueRequired", "Required value"));
    } else if !group.contains('.') {
        out.push(cause(
            "spec.group",
            "FieldValueInvalid",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        ));
    }
    match str_at(crd, "/spec/scope") {
        "" => out.push(cause("spec.scope", "FieldValueRequired", "Required value")),
        "Cluster" | "Namespaced" => {}
        other => out.push(cause(
            "spec.scope",
            "FieldValueNotSupported",
            format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""),
        )),
    }
    check_names(crd, &mut out);
    check_versions(crd, &mut out);
    match str_at(crd, "/spec/conversion/strategy") {
        "" | "None" => {}
        "Webhook" => out.push(cause(
            "spec.conversion.strategy",
            "FieldValueNotSupported",
            "Unsupported value: \"Webhook\": supported values: \"None\" (keel does not call conversion webhooks)",
        )),
        other => out.push(cause(
            "spec.conversion.strategy",
            "FieldValueNotSupported",
            format!("Unsupported value: {other:?}: supported values: \"None\", \"Webhook\""),
        )),
    }
    if let Some(old) = old {
        if str_at(old, "/spec/scope") != str_at(crd, "/spec/scope") {
            out.push(cause(
                "spec.scope",
                "FieldValueInvalid",
                format!(
                    "Invalid value: {:?}: field is immutable",
                    str_at(crd, "/spec/scope")
                ),
            ));
        }
        if str_at(old, "/spec/group") != group {
            out.push(cause(
                "spec.group",
                "FieldValueInvalid",
                format!("Invalid value: {group:?}: field is immutable"),
            ));
        }
        // A version still holding objects cannot go (storedVersions).
        let served: Vec<&str> = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| vs.iter().map(|v| str_at(v, "/name")).collect())
            .unwrap_or_default();
        if let Some(stored) = old
            .pointer("/status/storedVersions")
            .and_then(Value::as_array)
        {
            for (i, s) in stored.iter().filter_map(Value::as_str).enumerate() {
                if !served.contains(&s) {
                    out.push(cause(
                        &format!("status.storedVersions[{i}]"),
                        "FieldValueInvalid",
                        format!("Invalid value: {s:?}: must appear in spec.versions"),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                     "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object"}}}]}
        })
    }

    fn messages(crd: &Value) -> Vec<String> {
        validate_crd(crd, None)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn a_good_crd_is_defaulted_and_valid() {
        let mut crd = good();
        default_crd(&mut crd);
        assert_eq!(crd["spec"]["names"]["singular"], "crontab");
        assert_eq!(crd["spec"]["names"]["listKind"], "CronTabList");
        assert_eq!(crd["spec"]["conversion"]["strategy"], "None");
        assert_eq!(messages(&crd), Vec::<String>::new());
    }

    #[test]
    fn bad_crds_get_kubernetes_messages() {
        let mut crd = good();
        crd["metadata"]["name"] = json!("crontab.stable.example.com");
        crd["spec"]["group"] = json!("example");
        crd["spec"]["scope"] = json!("Global");
        crd["spec"]["names"]["plural"] = json!("CronTabs");
        crd["spec"]["names"]["shortNames"] = json!(["C T"]);
        crd["spec"]["versions"][0]["storage"] = json!(false);
        crd["spec"]["versions"][0]["schema"] = json!({});
        let got = messages(&crd);
        for want in [
            "metadata.name: Invalid value: \"crontab.stable.example.com\": must be spec.names.plural+\".\"+spec.group",
            "spec.group: Invalid value: \"example\": should be a domain with at least one dot",
            "spec.scope: Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespaced\"",
            "spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want} in {got:#?}");
        }
        assert!(got.iter().any(|g| g.starts_with(
            "spec.names.plural: Invalid value: \"CronTabs\": a lowercase RFC 1123 label"
        )));
        assert!(got
            .iter()
            .any(|g| g.starts_with("spec.names.shortNames[0]: Invalid value: \"C T\"")));
        assert!(got
            .iter()
            .any(|g| g.starts_with("spec.versions: Invalid value: ")
                && g.ends_with("must have exactly one version marked as storage version")));
    }

    #[test]
    fn missing_names_and_two_storage_versions() {
        let mut crd = good();
        crd["spec"]["names"] = json!({});
        crd["spec"]["versions"] = json!([
            {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}},
            {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}},
        ]);
        let got = messages(&crd);
        assert!(got.contains(&"spec.names.plural: Required value".to_string()));
        assert!(got.contains(&"spec.names.kind: Required value".to_string()));
        assert!(got.contains(&"spec.versions[1].name: Duplicate value: \"v1\"".to_string()));
        assert!(got
            .iter()
            .any(|g| g.ends_with("must have exactly one version marked as storage version")));
    }
}
