//! Field sets in Kubernetes' `FieldsV1` encoding (structured-merge-diff's
//! `fieldpath.Set`).
//!
//! A set is a tree whose edges are path elements, written as FieldsV1 keys:
//! `f:<name>` (a field of a struct or an entry of a map), `k:{"name":"x"}`
//! (an item of an associative list, by its key fields, sorted by name),
//! `v:<json>` (an item of a set list), `i:<n>` (a list index). A node is a
//! *member* when the path to it is itself owned; in JSON a member with
//! children carries `".": {}`, a member without children is `{}`.
//!
//! ```text
//! {"f:metadata":{"f:labels":{".":{},"f:app":{}}},
//!  "f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{}}}}}
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One element of a path, in its FieldsV1 spelling (`f:x`, `k:{..}`, `v:..`, `i:0`).
pub type Element = String;

/// A path from the object's root: its elements in order.
pub type Path = Vec<Element>;

/// A set of paths (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    /// True if the path leading here is in the set.
    member: bool,
    /// The subtrees, by element.
    children: BTreeMap<Element, Set>,
}

/// A FieldsV1 document that is not a valid field set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid fieldsV1: {0}")]
pub struct DecodeError(pub String);

/// `f:<name>`: a struct field or map entry.
pub fn field(name: &str) -> Element {
    format!("f:{name}")
}

/// `k:{...}`: an associative list item by its key fields (sorted by name,
/// compact JSON, as structured-merge-diff writes them).
pub fn key(fields: &[(&str, &Value)]) -> Element {
    let mut sorted: Vec<&(&str, &Value)> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let inner: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::String((*k).to_string()), v))
        .collect();
    format!("k:{{{}}}", inner.join(","))
}

/// `v:<json>`: an item of a set list.
pub fn value(v: &Value) -> Element {
    format!("v:{v}")
}

/// `i:<n>`: a list index.
pub fn index(i: usize) -> Element {
    format!("i:{i}")
}

/// How structured-merge-diff prints a path in messages (`.spec.replicas`,
/// `.spec.containers[name="nginx"].image`, `.metadata.finalizers[="x"]`).
pub fn display(path: &[Element]) -> String {
    let mut out = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            match serde_json::from_str::<Map<String, Value>>(k) {
                Ok(m) => {
                    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    out.push_str(&format!("[{}]", parts.join(",")));
                }
                Err(_) => out.push_str(&format!("[{k}]")),
            }
        } else if let Some(v) = e.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            out.push_str(&format!("[{i}]"));
        } else {
            out.push_str(e);
        }
    }
    out
}

impl Set {
    /// The empty set.
    pub fn new() -> Set {
        Set::default()
    }

    /// True if the set holds no path.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(Set::is_empty)
    }

    /// Adds `path`.
    pub fn insert(&mut self, path: &[Element]) {
        let mut node = self;
        for e in path {
            node = node.children.entry(e.clone()).or_default();
        }
        node.member = true;
    }

    /// True if `path` is in the set.
    pub fn has(&self, path: &[Element]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    /// True if `path` or anything below it is in the set.
    pub fn has_prefix(&self, path: &[Element]) -> bool {
        self.node(path).is_some_and(|n| !n.is_empty())
    }

    fn node(&self, path: &[Element]) -> Option<&Set> {
        let mut node = self;
        for e in path {
            node = node.children.get(e)?;
        }
        Some(node)
    }

    /// Every path in the set, parents before children, in element order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, here: &mut Path, out: &mut Vec<Path>) {
        if self.member {
            out.push(here.clone());
        }
        for (e, child) in &self.children {
            here.push(e.clone());
            child.collect(here, out);
            here.pop();
        }
    }

    /// The paths in `self` or `other`.
    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        for p in other.paths() {
            out.insert(&p);
        }
        out
    }

    /// The paths in `self` but not in `other`.
    pub fn difference(&self, other: &Set) -> Set {
        self.filter(|p| !other.has(p))
    }

    /// The paths in both.
    pub fn intersection(&self, other: &Set) -> Set {
        self.filter(|p| other.has(p))
    }

    /// The paths for which `keep` holds.
    pub fn filter(&self, keep: impl Fn(&[Element]) -> bool) -> Set {
        let mut out = Set::new();
        for p in self.paths() {
            if keep(&p) {
                out.insert(&p);
            }
        }
        out
    }

    /// The set as FieldsV1 JSON.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        for (e, child) in &self.children {
            if child.is_empty() {
                continue;
            }
            let mut inner = match child.to_fields_v1() {
                Value::Object(inner) => inner,
                _ => Map::new(),
            };
            if child.member && !inner.is_empty() {
                inner.insert(".".into(), Value::Object(Map::new()));
            }
            m.insert(e.clone(), Value::Object(inner));
        }
        Value::Object(m)
    }

    /// Reads FieldsV1 JSON.
    pub fn from_fields_v1(v: &Value) -> Result<Set, DecodeError> {
        let mut out = Set::new();
        decode_into(v, &mut out)?;
        Ok(out)
    }
}

fn decode_into(v: &Value, node: &mut Set) -> Result<(), DecodeError> {
    let Some(m) = v.as_object() else {
        return Err(DecodeError(format!("expected an object, got {v}")));
    };
    for (k, child) in m {
        if k == "." {
            node.member = true;
            continue;
        }
        if !["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p)) {
            return Err(DecodeError(format!("unknown path element {k:?}")));
        }
        let sub = node.children.entry(k.clone()).or_default();
        decode_into(child, sub)?;
        if child.as_object().is_some_and(Map::is_empty) {
            sub.member = true;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The managed fields of a Deployment created by `kubectl create -f`
    /// (as the Kubernetes documentation on server-side apply shows them).
    fn k8s_example() -> Value {
        json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"nginx\"}": {
                        ".": {},
                        "f:image": {},
                        "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}, "f:protocol": {}
                        }}
                    }
                }}}
            },
            "f:data": {"f:key": {}},
            "f:metadata2": {"f:finalizers": {"v:\"example.com/x\"": {}}}
        })
    }

    #[test]
    fn fields_v1_round_trip() {
        let v = k8s_example();
        let set = Set::from_fields_v1(&v).expect("decodes");
        assert_eq!(set.to_fields_v1(), v);
        assert!(set.has(&[field("spec"), field("replicas")]));
        assert!(!set.has(&[field("spec")]));
        assert!(set.has(&[field("metadata"), field("labels")]));
        let port = key(&[("protocol", &json!("TCP")), ("containerPort", &json!(80))]);
        assert_eq!(port, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}");
        assert!(set.has(&[
            field("spec"),
            field("template"),
            field("spec"),
            field("containers"),
            key(&[("name", &json!("nginx"))]),
            field("ports"),
            port,
        ]));
        assert!(set.has(&[
            field("metadata2"),
            field("finalizers"),
            value(&json!("example.com/x"))
        ]));
    }

    #[test]
    fn bad_fields_v1_is_an_error() {
        assert!(Set::from_fields_v1(&json!({"x:y": {}})).is_err());
        assert!(Set::from_fields_v1(&json!({"f:y": 1})).is_err());
        assert!(Set::from_fields_v1(&json!([])).is_err());
    }

    #[test]
    fn paths_print_as_kubernetes_does() {
        let p = vec![
            field("spec"),
            field("containers"),
            key(&[("name", &json!("nginx"))]),
            field("image"),
        ];
        assert_eq!(display(&p), ".spec.containers[name=\"nginx\"].image");
        let p = vec![
            field("spec"),
            field("ports"),
            key(&[("port", &json!(80)), ("protocol", &json!("TCP"))]),
        ];
        assert_eq!(display(&p), ".spec.ports[port=80,protocol=\"TCP\"]");
        assert_eq!(
            display(&[field("metadata"), field("finalizers"), value(&json!("a"))]),
            ".metadata.finalizers[=\"a\"]"
        );
        assert_eq!(
            display(&[field("spec"), field("replicas")]),
            ".spec.replicas"
        );
    }

    #[test]
    fn set_algebra() {
        let mut a = Set::new();
        a.insert(&[field("a"), field("b")]);
        a.insert(&[field("a"), field("c")]);
        let mut b = Set::new();
        b.insert(&[field("a"), field("c")]);
        b.insert(&[field("d")]);
        assert_eq!(
            a.intersection(&b).paths(),
            vec![vec![field("a"), field("c")]]
        );
        assert_eq!(a.difference(&b).paths(), vec![vec![field("a"), field("b")]]);
        assert_eq!(a.union(&b).paths().len(), 3);
        assert!(a.has_prefix(&[field("a")]));
        assert!(a.difference(&a).is_empty());
    }
}
