//! Objects as field sets, their comparison, and the merge of an applied
//! configuration into a live object (structured-merge-diff's `ToFieldSet`,
//! `Compare`, `Merge` and `RemoveItems`, on JSON values and a [`Node`]).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::fieldpath::{self, Element, Path, Set};
use super::schema::{key_default, ListType, Node};

/// Which operation a field set is taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An applied configuration: map-typed fields are owned through their
    /// entries only.
    Apply,
    /// An update: a map-typed field that is set is owned itself too (as
    /// Kubernetes records `f:labels: {".": {}, …}` for `kubectl create`).
    Update,
}

/// The owned paths of an object, with the value of each leaf (scalars and
/// atomic values), so that two objects can be compared.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    /// Every path (leaves and owned containers such as list items).
    pub set: Set,
    /// The leaves' values.
    pub leaves: BTreeMap<Path, Value>,
}

impl Fields {
    fn leaf(&mut self, path: &Path, v: &Value) {
        self.set.insert(path);
        self.leaves.insert(path.clone(), v.clone());
    }
}

/// The element naming `item` in a list of type `lt` (`None`: an
/// associative-list item without its keys, named by index).
pub fn item_element(lt: &ListType, item: &Value) -> Option<Element> {
    match lt {
        ListType::Atomic => None,
        ListType::Set => Some(fieldpath::value(item)),
        ListType::Map(keys) => {
            let obj = item.as_object()?;
            let mut fields: Vec<(&str, Value)> = Vec::new();
            for k in keys.iter() {
                match obj.get(*k).cloned().or_else(|| key_default(k)) {
                    Some(v) => fields.push((k, v)),
                    None if keys.len() == 1 => return None,
                    None => {}
                }
            }
            let refs: Vec<(&str, &Value)> = fields.iter().map(|(k, v)| (*k, v)).collect();
            (!refs.is_empty()).then(|| fieldpath::key(&refs))
        }
    }
}

/// The field set of `v` (of shape `node`).
pub fn fields(node: &Node, v: &Value, mode: Mode) -> Fields {
    let mut out = Fields::default();
    walk(node, v, &mut Vec::new(), mode, &mut out);
    out
}

fn walk(node: &Node, v: &Value, path: &mut Path, mode: Mode, out: &mut Fields) {
    match (node, v) {
        (Node::Struct(_) | Node::Map(_) | Node::Deduced, Value::Object(m)) => {
            for (k, child) in m {
                path.push(fieldpath::field(k));
                let cnode = node.field(k);
                let empty = child.is_null() || child.as_object().is_some_and(Map::is_empty);
                if empty {
                    out.leaf(path, child);
                } else {
                    walk(&cnode, child, path, mode, out);
                    let entry = !node.is_declared(k);
                    let owned_map = mode == Mode::Update && cnode.is_map() && child.is_object();
                    if (entry || owned_map) && !out.leaves.contains_key(path) {
                        out.set.insert(path);
                    }
                }
                path.pop();
            }
        }
        (Node::List(item, lt), Value::Array(items)) if *lt != ListType::Atomic => {
            for (i, it) in items.iter().enumerate() {
                let e = item_element(lt, it).unwrap_or_else(|| fieldpath::index(i));
                path.push(e);
                if *lt == ListType::Set {
                    out.leaf(path, it);
                } else {
                    walk(item, it, path, mode, out);
                    if !out.leaves.contains_key(path) {
                        out.set.insert(path);
                    }
                }
                path.pop();
            }
        }
        _ => out.leaf(path, v),
    }
}

/// What changed from `old` to `new`.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Paths only in `new`.
    pub added: Set,
    /// Leaves in both whose values differ.
    pub modified: Set,
    /// Paths only in `old`.
    pub removed: Set,
}

impl Comparison {
    /// `added ∪ modified`: what the writer set.
    pub fn changed(&self) -> Set {
        self.added.union(&self.modified)
    }
}

/// Compares two field sets.
pub fn compare(old: &Fields, new: &Fields) -> Comparison {
    let mut c = Comparison {
        added: new.set.difference(&old.set),
        removed: old.set.difference(&new.set),
        ..Comparison::default()
    };
    for p in new.set.intersection(&old.set).paths() {
        if old.leaves.get(&p) != new.leaves.get(&p) {
            c.modified.insert(&p);
        }
    }
    c
}

/// Merges the applied configuration `config` into `live`.
pub fn merge(node: &Node, live: Option<&Value>, config: &Value) -> Value {
    match (node, live, config) {
        (
            Node::Struct(_) | Node::Map(_) | Node::Deduced,
            Some(Value::Object(l)),
            Value::Object(c),
        ) => {
            let mut out = l.clone();
            for (k, cv) in c {
                if cv.is_null() {
                    out.remove(k);
                    continue;
                }
                let merged = merge(&node.field(k), l.get(k), cv);
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Node::Struct(_) | Node::Map(_) | Node::Deduced, _, Value::Object(c)) => {
            let mut out = Map::new();
            for (k, cv) in c {
                if !cv.is_null() {
                    out.insert(k.clone(), merge(&node.field(k), None, cv));
                }
            }
            Value::Object(out)
        }
        (Node::List(_, ListType::Set), Some(Value::Array(l)), Value::Array(c)) => {
            let mut out = l.clone();
            for it in c {
                if !out.contains(it) {
                    out.push(it.clone());
                }
            }
            Value::Array(out)
        }
        (Node::List(item, lt @ ListType::Map(_)), Some(Value::Array(l)), Value::Array(c)) => {
            let mut out = l.clone();
            for ci in c {
                let e = item_element(lt, ci);
                let pos = e.as_ref().and_then(|e| {
                    out.iter()
                        .position(|li| item_element(lt, li).as_ref() == Some(e))
                });
                match pos {
                    Some(i) => out[i] = merge(item, Some(&out[i]), ci),
                    None => out.push(merge(item, None, ci)),
                }
            }
            Value::Array(out)
        }
        (Node::List(item, ListType::Map(_)), _, Value::Array(c)) => {
            Value::Array(c.iter().map(|ci| merge(item, None, ci)).collect())
        }
        _ => config.clone(),
    }
}

/// Removes the value at `path` from `obj` (nothing if it is not there).
/// A struct or map left empty by the removal is removed too, unless
/// `keep` holds for its path.
pub fn remove(node: &Node, obj: &mut Value, path: &[Element], keep: &dyn Fn(&[Element]) -> bool) {
    remove_at(node, obj, path, 0, keep);
}

fn remove_at(
    node: &Node,
    obj: &mut Value,
    path: &[Element],
    depth: usize,
    keep: &dyn Fn(&[Element]) -> bool,
) {
    let Some(e) = path.get(depth) else { return };
    let last = depth + 1 == path.len();
    if let Some(name) = e.strip_prefix("f:") {
        let Some(m) = obj.as_object_mut() else { return };
        if last {
            m.remove(name);
            return;
        }
        let child_node = node.field(name);
        let now_empty = match m.get_mut(name) {
            Some(child) => {
                remove_at(&child_node, child, path, depth + 1, keep);
                child.as_object().is_some_and(Map::is_empty)
                    || child.as_array().is_some_and(Vec::is_empty)
            }
            None => false,
        };
        if now_empty && !keep(&path[..=depth]) {
            m.remove(name);
        }
        return;
    }
    let (Node::List(item, lt), Some(items)) = (node, obj.as_array_mut()) else {
        return;
    };
    let pos = if let Some(i) = e.strip_prefix("i:") {
        i.parse::<usize>().ok().filter(|i| *i < items.len())
    } else {
        items
            .iter()
            .position(|it| item_element(lt, it).as_deref() == Some(e.as_str()))
    };
    let Some(i) = pos else { return };
    if last {
        items.remove(i);
    } else {
        remove_at(item, &mut items[i], path, depth + 1, keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployments() -> Node {
        Node::root(crate::registry::lookup("apps", "v1", "deployments").expect("deployments"))
    }

    #[test]
    fn field_set_of_a_deployment() {
        let d = json!({"metadata": {"name": "d", "labels": {"app": "x"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}},
              "template": {"spec": {"containers": [{"name": "c", "image": "i",
                 "ports": [{"containerPort": 80}], "args": ["a"]}]}}}});
        let applied = fields(&deployments(), &d, Mode::Apply).set.to_fields_v1();
        assert_eq!(
            applied,
            json!({"f:metadata": {"f:name": {}, "f:labels": {"f:app": {}}},
            "f:spec": {"f:replicas": {}, "f:selector": {},
              "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
                 ".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                 "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
              }}}}}})
        );
        let updated = fields(&deployments(), &d, Mode::Update).set.to_fields_v1();
        assert_eq!(
            updated["f:metadata"],
            json!({"f:name": {}, "f:labels": {".": {}, "f:app": {}}})
        );
    }

    #[test]
    fn merges_associative_lists_by_key_and_replaces_atomic_ones() {
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "1", "args": ["x", "y"], "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "2"}
        ]}}}});
        let config = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "b", "image": "3"},
            {"name": "a", "args": ["z"], "env": [{"name": "F", "value": "2"}]},
            {"name": "c", "image": "4"}
        ]}}}});
        let out = merge(&deployments(), Some(&live), &config);
        assert_eq!(
            out,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "a", "image": "1", "args": ["z"], "env": [{"name": "E", "value": "1"}, {"name": "F", "value": "2"}]},
                {"name": "b", "image": "3"},
                {"name": "c", "image": "4"}
            ]}}}})
        );
    }

    #[test]
    fn compare_and_remove() {
        let node = deployments();
        let old = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "1"}]}}}});
        let new = json!({"spec": {"replicas": 2, "paused": true, "template": {"spec": {"containers": []}}}});
        let c = compare(
            &fields(&node, &old, Mode::Apply),
            &fields(&node, &new, Mode::Apply),
        );
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(c.modified.has(&p(&["f:spec", "f:replicas"])));
        assert!(c.added.has(&p(&["f:spec", "f:paused"])));
        assert!(c.removed.has(&p(&[
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"a\"}"
        ])));
        let mut obj = old.clone();
        remove(
            &node,
            &mut obj,
            &p(&[
                "f:spec",
                "f:template",
                "f:spec",
                "f:containers",
                "k:{\"name\":\"a\"}",
                "f:image",
            ]),
            &|_| false,
        );
        assert_eq!(
            obj,
            json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}]}}}})
        );
        remove(
            &node,
            &mut obj,
            &p(&[
                "f:spec",
                "f:template",
                "f:spec",
                "f:containers",
                "k:{\"name\":\"a\"}",
            ]),
            &|_| false,
        );
        assert_eq!(obj, json!({"spec": {"replicas": 1}}));
    }
}
