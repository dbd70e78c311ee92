//! `additionalPrinterColumns`: the Table columns of a custom resource
//! (`NAME`, then the CRD's columns; without any, `NAME` and `AGE`), with
//! their simple JSONPaths (`.spec.replicas`, `.status.conditions[0].type`,
//! `.metadata.labels.app`) evaluated on each object.

use serde_json::{json, Value};

use super::registry::PrinterColumn;

/// Evaluates a simple JSONPath (dot fields and `[n]` indexes, optionally
/// wrapped in `{}`); `None` where the object has nothing.
pub fn eval<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(p);
    let mut cur = obj;
    for part in p
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
    {
        let (field, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        for idx in indexes.split('[').filter(|s| !s.is_empty()) {
            let n: usize = idx.trim_end_matches(']').trim().parse().ok()?;
            cur = cur.get(n)?;
        }
    }
    Some(cur)
}

/// The column definitions (Table `columnDefinitions`).
pub fn definitions(cols: &[PrinterColumn]) -> Vec<Value> {
    let name = json!({"name": "Name", "type": "string", "format": "name",
                      "description": "Name must be unique within a namespace.", "priority": 0});
    if cols.is_empty() {
        return vec![
            name,
            json!({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0}),
        ];
    }
    std::iter::once(name)
        .chain(cols.iter().map(|c| {
            json!({"name": c.name, "type": c.type_, "format": c.format,
                   "description": c.description, "priority": c.priority})
        }))
        .collect()
}

/// One row's cells.
pub fn cells(cols: &[PrinterColumn], obj: &Value, now: i64) -> Vec<Value> {
    let age = |v: Option<&Value>| -> Value {
        v.and_then(Value::as_str)
            .and_then(crate::object::parse_rfc3339)
            .map(|t| json!(crate::table::human_duration(now - t)))
            .unwrap_or(Value::Null)
    };
    let mut out = vec![json!(crate::object::meta_str(obj, "name").unwrap_or(""))];
    if cols.is_empty() {
        out.push(age(obj.pointer("/metadata/creationTimestamp")));
        return out;
    }
    for c in cols {
        let v = eval(obj, &c.json_path);
        out.push(match (c.type_.as_str(), v) {
            (_, None) => Value::Null,
            ("date", v) => age(v),
            ("string", Some(Value::String(s))) => json!(s),
            ("string", Some(other)) if !other.is_object() && !other.is_array() => {
                json!(other.to_string())
            }
            (_, Some(v)) => v.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_and_cells() {
        let obj = json!({"metadata": {"name": "a", "creationTimestamp": "2020-01-01T00:00:00Z",
                                      "labels": {"app": "web"}},
                         "spec": {"replicas": 3, "image": "nginx"},
                         "status": {"conditions": [{"type": "Ready"}]}});
        assert_eq!(eval(&obj, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(
            eval(&obj, "{.status.conditions[0].type}"),
            Some(&json!("Ready"))
        );
        assert_eq!(eval(&obj, ".metadata.labels.app"), Some(&json!("web")));
        assert_eq!(eval(&obj, ".spec.missing"), None);
        let col = |name: &str, t: &str, p: &str| PrinterColumn {
            name: name.into(),
            type_: t.into(),
            format: String::new(),
            description: String::new(),
            priority: 0,
            json_path: p.into(),
        };
        let cols = vec![
            col("Replicas", "integer", ".spec.replicas"),
            col("Image", "string", ".spec.image"),
            col("Missing", "string", ".spec.nope"),
            col("Age", "date", ".metadata.creationTimestamp"),
        ];
        let now = crate::object::parse_rfc3339("2020-01-01T00:02:05Z").expect("time");
        assert_eq!(
            cells(&cols, &obj, now),
            vec![
                json!("a"),
                json!(3),
                json!("nginx"),
                Value::Null,
                json!("2m5s")
            ]
        );
        assert_eq!(definitions(&cols).len(), 5);
        assert_eq!(cells(&[], &obj, now), vec![json!("a"), json!("2m5s")]);
    }
}
