//! Object metadata rules: names, server-set fields, timestamps, generation.

use serde_json::{json, Map, Value};

use crate::status::Cause;

/// The current time as Kubernetes writes it (`2006-01-02T15:04:05Z`).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 timestamp into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// A random lowercase suffix for `generateName` (Kubernetes' alphabet, no vowels).
pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    (0..n)
        .map(|i| ALPHABET[bytes[i % bytes.len()] as usize % ALPHABET.len()] as char)
        .collect()
}

/// A fresh object UID.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn dns_label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks an object name: a DNS label (`label`) or a DNS subdomain.
pub fn validate_name(name: &str, label: bool) -> Option<Cause> {
    let ok = if label {
        dns_label_ok(name)
    } else {
        name.len() <= 253 && name.split('.').all(dns_label_ok)
    };
    if ok {
        return None;
    }
    let what = if label {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    };
    Some(Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {name:?}: {what}"),
        field: "metadata.name".into(),
    })
}

/// `obj.metadata`, created if missing (a non-object `obj` becomes `{}`).
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(root) = obj else {
        unreachable!("obj was just made an object")
    };
    let m = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    let Value::Object(map) = m else {
        unreachable!("metadata was just made an object")
    };
    map
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(obj: &mut Value, rev: i64) {
    if obj.is_object() {
        meta_mut(obj).insert("resourceVersion".into(), json!(rev.to_string()));
    }
}

/// The object without `metadata` and `status`: what a generation counts.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("kind");
        m.remove("apiVersion");
    }
    o
}

/// True if anything but metadata and status differs (bumps `generation`).
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    spec_part(old) != spec_part(new)
}

/// `metadata.generation` as a number (0 if unset).
pub fn generation(obj: &Value) -> i64 {
    obj.get("metadata")
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The status a new object of `kind` starts with (the status subresource
/// owns it; clients cannot set it on create).
pub fn initial_status(kind: &str) -> Value {
    match kind {
        "Namespace" => json!({"phase": "Active"}),
        "Pod" => json!({"phase": "Pending", "qosClass": "BestEffort"}),
        "PersistentVolume" | "PersistentVolumeClaim" => json!({"phase": "Pending"}),
        _ => json!({}),
    }
}

/// Server-owned metadata fields clients may not set.
const SERVER_FIELDS: &[&str] = &[
    "uid",
    "creationTimestamp",
    "resourceVersion",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// Copies the server-owned metadata of `old` into `new` (update/patch).
pub fn keep_server_fields(old: &Value, new: &mut Value) {
    let old_meta = old.get("metadata").and_then(Value::as_object).cloned();
    let m = meta_mut(new);
    for f in SERVER_FIELDS {
        m.remove(*f);
        if let Some(v) = old_meta.as_ref().and_then(|om| om.get(*f)) {
            m.insert((*f).to_string(), v.clone());
        }
    }
}

/// Clears server-owned metadata before a create.
pub fn clear_server_fields(obj: &mut Value) {
    let m = meta_mut(obj);
    for f in SERVER_FIELDS {
        m.remove(*f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a-b.c", false).is_none());
        assert!(validate_name("a-b.c", true).is_some());
        assert!(validate_name("Abc", false).is_some());
        assert!(validate_name("", false).is_some());
        assert!(validate_name(&"a".repeat(64), true).is_some());
        assert!(validate_name("-a", false).is_some());
    }

    #[test]
    fn generation_ignores_metadata_and_status() {
        let a = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1}, "status": {"y": 1}});
        let b = json!({"metadata": {"labels": {"a": "2"}}, "spec": {"x": 1}, "status": {"y": 2}});
        assert!(!spec_changed(&a, &b));
        let c = json!({"metadata": {}, "spec": {"x": 2}});
        assert!(spec_changed(&a, &c));
    }

    #[test]
    fn timestamps_round_trip() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z'), "{now}");
        assert!(parse_rfc3339(&now).is_some());
        assert_eq!(random_suffix(5).len(), 5);
    }
}
