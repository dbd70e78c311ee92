//! Structural schemas (a CRD version's `openAPIV3Schema`): pruning of
//! unknown fields, defaulting, and validation of custom objects, with
//! Kubernetes' field paths and messages.
//!
//! The schema stays the JSON the CRD holds; each function walks it along
//! the object. Supported: `type`, `properties`, `additionalProperties`,
//! `items`, `required`, `enum`, `minimum`/`maximum` (and their
//! `exclusive*`), `pattern`, `minLength`/`maxLength`, `minItems`/`maxItems`,
//! `nullable`, `default`, `x-kubernetes-int-or-string`,
//! `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-embedded-resource`.
//! Not supported: `x-kubernetes-validations` (CEL), `oneOf`/`anyOf`/`allOf`
//! /`not` (accepted, ignored), `format` checks, `uniqueItems`, list types.

use serde_json::{Map, Value};

use crate::status::Cause;

/// `parent.child`, or `child` at the root.
fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// Fields every embedded object (and the root) keeps besides its schema's.
const TYPE_META: &[&str] = &["apiVersion", "kind", "metadata"];

/// Removes the fields of `obj` that `schema` does not specify (unless it
/// preserves unknown fields); returns their paths (`spec.foo`). At the root
/// (`root`), `apiVersion`, `kind` and `metadata` are kept.
pub fn prune(schema: &Value, obj: &mut Value, root: bool) -> Vec<String> {
    let mut out = Vec::new();
    prune_at(schema, obj, "", root, &mut out);
    out
}

fn prune_at(schema: &Value, obj: &mut Value, path: &str, keep_meta: bool, out: &mut Vec<String>) {
    match obj {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields")
                || schema.get("additionalProperties") == Some(&Value::Bool(true));
            let embedded = keep_meta || flag(schema, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if embedded && TYPE_META.contains(&k.as_str()) {
                    continue;
                }
                let here = child(path, &k);
                let sub = props.and_then(|p| p.get(&k)).or(additional);
                match sub {
                    Some(s) => {
                        if let Some(v) = map.get_mut(&k) {
                            prune_at(s, v, &here, false, out);
                        }
                    }
                    None if preserve => {}
                    None => {
                        map.remove(&k);
                        out.push(here);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    prune_at(s, v, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        _ => {}
    }
}

/// Sets the schema's `default`s on fields that are missing (or null and not
/// nullable), wherever their parent object exists.
pub fn default(schema: &Value, obj: &mut Value) {
    match obj {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    let missing = match map.get(k) {
                        None => true,
                        Some(Value::Null) => !flag(s, "nullable"),
                        Some(_) => false,
                    };
                    if missing {
                        if let Some(d) = s.get("default") {
                            map.insert(k.clone(), d.clone());
                        }
                    }
                    if let Some(v) = map.get_mut(k) {
                        default(s, v);
                    }
                }
            }
            if let Some(a) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in map.values_mut() {
                    default(a, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for v in items {
                    default(s, v);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as Kubernetes quotes it in `Invalid value: …`.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".to_string(),
        Value::Array(_) => "\"array\"".to_string(),
        other => other.to_string(),
    }
}

fn invalid(path: &str, reason: &'static str, message: String) -> Cause {
    Cause {
        reason,
        message,
        field: path.to_string(),
    }
}

fn type_ok(want: &str, v: &Value) -> bool {
    match (want, type_name(v)) {
        ("number", "integer") => true,
        (w, got) => w == got,
    }
}

/// Validates `obj` against `schema`; the causes of a 422, with field paths
/// as Kubernetes writes them (`spec.replicas`, `spec.items[0].name`).
pub fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_at(schema, obj, "", true, &mut out);
    out
}

fn validate_at(schema: &Value, v: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let shown_path = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if flag(schema, "nullable") || schema.get("type").is_none() {
            return;
        }
        let want = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("object");
        out.push(invalid(
            path,
            "FieldValueTypeInvalid",
            format!(
                "Invalid value: \"null\": {shown_path} in body must be of type {want}: \"null\""
            ),
        ));
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !matches!(type_name(v), "integer" | "string") {
            out.push(invalid(
                path,
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{t}\": {shown_path} in body must be of type integer,string: \"{t}\"",
                    t = type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(want) = schema.get("type").and_then(Value::as_str) {
        if !type_ok(want, v) {
            out.push(invalid(
                path,
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{t}\": {shown_path} in body must be of type {want}: \"{t}\"",
                    t = type_name(v)
                ),
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            let list: Vec<String> = options.iter().map(|o| o.to_string()).collect();
            out.push(invalid(
                path,
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: {}: supported values: {}",
                    v,
                    list.join(", ")
                ),
            ));
        }
    }
    match v {
        Value::Number(n) => number_rules(schema, n, v, path, shown_path, out),
        Value::String(s) => string_rules(schema, s, v, path, shown_path, out),
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if n > max {
                    out.push(invalid(
                        path,
                        "FieldValueTooMany",
                        format!("Too many: {n}: must have at most {max} items"),
                    ));
                }
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if n < min {
                    out.push(invalid(
                        path,
                        "FieldValueInvalid",
                        format!("Invalid value: {n}: {shown_path} in body should have at least {min} items"),
                    ));
                }
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_at(s, item, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        Value::Object(map) => object_rules(schema, map, path, root, out),
        _ => {}
    }
}

fn number_rules(
    schema: &Value,
    n: &serde_json::Number,
    v: &Value,
    path: &str,
    shown_path: &str,
    out: &mut Vec<Cause>,
) {
    let Some(x) = n.as_f64() else { return };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let excl = flag(schema, "exclusiveMinimum");
        if x < min || (excl && x == min) {
            let rel = if excl {
                "greater than"
            } else {
                "greater than or equal to"
            };
            out.push(invalid(
                path,
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: {shown_path} in body should be {rel} {}",
                    shown(v),
                    schema["minimum"]
                ),
            ));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let excl = flag(schema, "exclusiveMaximum");
        if x > max || (excl && x == max) {
            let rel = if excl {
                "less than"
            } else {
                "less than or equal to"
            };
            out.push(invalid(
                path,
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: {shown_path} in body should be {rel} {}",
                    shown(v),
                    schema["maximum"]
                ),
            ));
        }
    }
}

fn string_rules(
    schema: &Value,
    s: &str,
    v: &Value,
    path: &str,
    shown_path: &str,
    out: &mut Vec<Cause>,
) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if len > max {
            out.push(invalid(
                path,
                "FieldValueTooLong",
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if len < min {
            out.push(invalid(
                path,
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: {shown_path} in body should be at least {min} chars long",
                    shown(v)
                ),
            ));
        }
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        // A pattern that does not compile was refused with the CRD.
        if let Ok(re) = regex::Regex::new(p) {
            if !re.is_match(s) {
                out.push(invalid(
                    path,
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {}: {shown_path} in body should match '{p}'",
                        shown(v)
                    ),
                ));
            }
        }
    }
}

fn object_rules(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    out: &mut Vec<Cause>,
) {
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                out.push(invalid(
                    &child(path, r),
                    "FieldValueRequired",
                    "Required value".to_string(),
                ));
            }
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
    for (k, val) in map {
        if embedded && TYPE_META.contains(&k.as_str()) && !props.is_some_and(|p| p.contains_key(k))
        {
            continue;
        }
        if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
            validate_at(s, val, &child(path, k), false, out);
        }
    }
    if flag(schema, "x-kubernetes-embedded-resource") {
        for f in ["apiVersion", "kind"] {
            if map.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                out.push(invalid(
                    &child(path, f),
                    "FieldValueRequired",
                    "Required value: must not be empty".to_string(),
                ));
            }
        }
    }
}

/// Why `schema` is not structural (or not usable), as causes under `path`
/// (`spec.versions[0].schema.openAPIV3Schema`).
pub fn structural_errors(schema: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    match schema.get("type").and_then(Value::as_str) {
        None if !flag(schema, "x-kubernetes-preserve-unknown-fields") => out.push(invalid(
            &format!("{path}.type"),
            "FieldValueRequired",
            "Required value: must not be empty at the root".into(),
        )),
        Some(t) if t != "object" => out.push(invalid(
            &format!("{path}.type"),
            "FieldValueInvalid",
            format!("Invalid value: {t:?}: must be object at the root"),
        )),
        _ => {}
    }
    structural_at(schema, path, &mut out);
    out
}

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

fn structural_at(schema: &Value, path: &str, out: &mut Vec<Cause>) {
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    match schema.get("type") {
        Some(Value::String(t)) if !TYPES.contains(&t.as_str()) => out.push(invalid(
            &format!("{path}.type"),
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {t:?}: supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
            ),
        )),
        Some(Value::String(_)) => {}
        Some(_) => out.push(invalid(
            &format!("{path}.type"),
            "FieldValueInvalid",
            "Invalid value: must be a string".into(),
        )),
        None if !int_or_string && !preserve && !path.ends_with("openAPIV3Schema") => {
            out.push(invalid(
                &format!("{path}.type"),
                "FieldValueRequired",
                "Required value: must not be empty for specified object fields".into(),
            ))
        }
        None => {}
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        if let Err(e) = regex::Regex::new(p) {
            out.push(invalid(
                &format!("{path}.pattern"),
                "FieldValueInvalid",
                format!("Invalid value: {p:?}: must be a valid regular expression: {e}"),
            ));
        }
    }
    if schema.get("type").and_then(Value::as_str) == Some("array") && schema.get("items").is_none()
    {
        out.push(invalid(
            &format!("{path}.items"),
            "FieldValueRequired",
            "Required value: must be specified".into(),
        ));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        if schema
            .get("additionalProperties")
            .is_some_and(Value::is_object)
        {
            out.push(invalid(
                &format!("{path}.additionalProperties"),
                "FieldValueForbidden",
                "Forbidden: additionalProperties and properties are mutual exclusive".into(),
            ));
        }
        for (k, s) in props {
            structural_at(s, &format!("{path}.properties[{k}]"), out);
        }
    }
    if let Some(a) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        structural_at(a, &format!("{path}.additionalProperties"), out);
    }
    if let Some(i) = schema.get("items") {
        if i.is_object() {
            structural_at(i, &format!("{path}.items"), out);
        } else {
            out.push(invalid(
                &format!("{path}.items"),
                "FieldValueForbidden",
                "Forbidden: items must be a schema object and not an array".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crontab() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["cronSpec"],
                    "properties": {
                        "cronSpec": {"type": "string", "pattern": "^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$"},
                        "image": {"type": "string", "minLength": 1, "maxLength": 8},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                        "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "string"}},
                        "note": {"type": "string", "nullable": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                     "properties": {"spec": {"type": "object"}}},
                    }
                },
                "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
            }
        })
    }

    fn fields(causes: &[Cause]) -> Vec<(String, String)> {
        causes
            .iter()
            .map(|c| (c.field.clone(), c.message.clone()))
            .collect()
    }

    #[test]
    fn unknown_fields_are_pruned_with_their_paths() {
        // spec.extra and spec.template.spec.x go; preserved and embedded
        // type meta stay.
        let mut obj = json!({
            "apiVersion": "stable.example.com/v1", "kind": "CronTab",
            "metadata": {"name": "a", "whatever": 1},
            "spec": {"cronSpec": "* * * * *", "extra": true,
                     "free": {"any": {"thing": 1}},
                     "labels": {"a": "b"},
                     "tags": [{"x": 1}],
                     "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {}, "junk": 1}},
            "top": 1,
        });
        let mut gone = prune(&crontab(), &mut obj, true);
        gone.sort();
        // An object where the schema wants a string keeps no fields.
        assert_eq!(
            gone,
            vec!["spec.extra", "spec.tags[0].x", "spec.template.junk", "top"]
        );
        assert_eq!(obj["spec"]["free"]["any"]["thing"], 1);
        assert_eq!(obj["metadata"]["whatever"], 1);
        assert_eq!(obj["spec"]["template"]["kind"], "Pod");
        assert_eq!(obj["spec"]["tags"][0], json!({}));
    }

    #[test]
    fn defaults_fill_missing_fields_under_existing_parents() {
        let mut obj = json!({"spec": {"cronSpec": "* * * * *"}});
        default(&crontab(), &mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["mode"], "a");
        assert!(obj.get("status").is_none(), "no parent, no default");
        let mut set = json!({"spec": {"replicas": 4, "mode": "b"}});
        default(&crontab(), &mut set);
        assert_eq!(
            (set["spec"]["replicas"].clone(), set["spec"]["mode"].clone()),
            (json!(4), json!("b"))
        );
    }

    #[test]
    fn validation_reports_kubernetes_paths_and_messages() {
        let obj = json!({
            "apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "a"},
            "spec": {"image": "", "replicas": 0, "mode": "c", "port": true,
                     "tags": ["a", "b", "c"], "labels": {"x": 1}, "note": null,
                     "template": {"spec": {}}},
            "status": {"replicas": "two"},
        });
        let got = fields(&validate(&crontab(), &obj));
        let want = [
            ("spec.cronSpec", "Required value"),
            ("spec.image", "Invalid value: \"\": spec.image in body should be at least 1 chars long"),
            ("spec.replicas", "Invalid value: 0: spec.replicas in body should be greater than or equal to 1"),
            ("spec.mode", "Unsupported value: \"c\": supported values: \"a\", \"b\""),
            ("spec.port", "Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\""),
            ("spec.tags", "Too many: 3: must have at most 2 items"),
            ("spec.labels.x", "Invalid value: \"integer\": spec.labels.x in body must be of type string: \"integer\""),
            ("spec.template.apiVersion", "Required value: must not be empty"),
            ("status.replicas", "Invalid value: \"string\": status.replicas in body must be of type integer: \"string\""),
        ];
        for (f, m) in want {
            assert!(
                got.contains(&(f.to_string(), m.to_string())),
                "missing {f}: {m} in {got:#?}"
            );
        }
        assert!(!got.iter().any(|(f, _)| f == "spec.note"), "nullable");
        assert_eq!(
            got.len(),
            want.len() + 1,
            "spec.template.kind too: {got:#?}"
        );
    }

    #[test]
    fn patterns_lengths_and_bounds() {
        let obj = json!({"spec": {"cronSpec": "every minute", "image": "123456789", "replicas": 11, "tags": []}});
        let got = fields(&validate(&crontab(), &obj));
        assert!(got.iter().any(|(f, m)| f == "spec.cronSpec"
            && m.starts_with(
                "Invalid value: \"every minute\": spec.cronSpec in body should match '^("
            )));
        assert!(got.contains(&(
            "spec.image".into(),
            "Too long: may not be more than 8 bytes".into()
        )));
        assert!(got.contains(&(
            "spec.replicas".into(),
            "Invalid value: 11: spec.replicas in body should be less than or equal to 10".into()
        )));
        assert!(got.contains(&(
            "spec.tags".into(),
            "Invalid value: 0: spec.tags in body should have at least 1 items".into()
        )));
        let ok = json!({"spec": {"cronSpec": "*/5 * * * *", "image": "nginx", "replicas": 3, "port": "http", "note": null}});
        assert_eq!(
            fields(&validate(&crontab(), &ok)),
            Vec::<(String, String)>::new()
        );
    }

    #[test]
    fn non_structural_schemas_are_refused() {
        let p = "spec.versions[0].schema.openAPIV3Schema";
        assert!(structural_errors(&crontab(), p).is_empty());
        let bad = json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "strin"}}},
                                                          "list": {"type": "array"}}});
        let got = fields(&structural_errors(&bad, p));
        assert!(got.contains(&(
            format!("{p}.properties[spec].type"),
            "Required value: must not be empty for specified object fields".into()
        )));
        assert!(got.iter().any(
            |(f, m)| f == &format!("{p}.properties[spec].properties[a].type")
                && m.starts_with("Unsupported value: \"strin\"")
        ));
        assert!(got.contains(&(
            format!("{p}.properties[list].items"),
            "Required value: must be specified".into()
        )));
        let root = fields(&structural_errors(&json!({"type": "string"}), p));
        assert_eq!(
            root,
            vec![(
                format!("{p}.type"),
                "Invalid value: \"string\": must be object at the root".to_string()
            )]
        );
    }
}
