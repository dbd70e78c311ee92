//! The garbage collector's pure half: objects reduced to what the
//! collector needs ([`Node`]), the owner → dependents graph over them
//! ([`Graph`]), the work a pass finds ([`Graph::plan`]) and what to do with
//! one dependent given its owners' live states ([`decide`]). No I/O here:
//! the loop in [`super`] reads the store and writes the results.
//!
//! Owner references are resolved as Kubernetes resolves them (v1.20+): the
//! owner's kind is looked up by group and kind (any served version); a
//! namespaced owner is looked for in the dependent's own namespace (an
//! owner in another namespace is absent from the dependent's point of view,
//! so the dependent is collected once all its owners are absent); a
//! cluster-scoped dependent naming a namespaced kind, or a kind that is not
//! served, is *unresolvable*: such a dependent is never collected. An owner
//! is present only if the object at its coordinates has the reference's uid.

use std::collections::HashMap;

use serde_json::Value;

use crate::handlers::propagation::{Propagation, FOREGROUND, ORPHAN};
use crate::object::meta_str;
use crate::registry::ResourceInfo;

/// One entry of `metadata.ownerReferences`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    /// `apiVersion` of the owner (`apps/v1`).
    pub api_version: String,
    /// `kind` of the owner.
    pub kind: String,
    /// Name of the owner (in the dependent's namespace if namespaced).
    pub name: String,
    /// The owner's uid: the reference holds only while they match.
    pub uid: String,
    /// `blockOwnerDeletion`: a foreground deletion of the owner waits for
    /// this dependent to be gone.
    pub block: bool,
}

impl OwnerRef {
    /// The API group of the owner's `apiVersion` (`""` for `v1`).
    pub fn group(&self) -> &str {
        self.api_version
            .split_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }
}

/// The owner references of `obj` (malformed entries skipped).
pub fn owner_refs(obj: &Value) -> Vec<OwnerRef> {
    let Some(refs) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    refs.iter()
        .filter_map(|r| {
            let s = |f: &str| r.get(f).and_then(Value::as_str).map(str::to_string);
            Some(OwnerRef {
                api_version: s("apiVersion")?,
                kind: s("kind")?,
                name: s("name")?,
                uid: s("uid")?,
                block: r
                    .get("blockOwnerDeletion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        })
        .collect()
}

/// What the collector knows of one object.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its resource type.
    pub res: &'static ResourceInfo,
    /// Its store key (its identity in the graph, with `uid`).
    pub key: String,
    /// Its namespace (`None`: cluster-scoped).
    pub namespace: Option<String>,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.ownerReferences`.
    pub owners: Vec<OwnerRef>,
    /// Has a `deletionTimestamp`.
    pub deleting: bool,
    /// Has the `orphan` finalizer.
    pub orphan: bool,
    /// Has the `foregroundDeletion` finalizer.
    pub foreground: bool,
}

impl Node {
    /// The node of `obj` stored at `key` (`None` without a uid).
    pub fn from_object(res: &'static ResourceInfo, key: &str, obj: &Value) -> Option<Node> {
        let uid = meta_str(obj, "uid").filter(|u| !u.is_empty())?.to_string();
        let fins = crate::handlers::propagation::finalizers(obj);
        Some(Node {
            res,
            key: key.to_string(),
            namespace: meta_str(obj, "namespace")
                .filter(|n| !n.is_empty() && res.namespaced)
                .map(str::to_string),
            uid,
            owners: owner_refs(obj),
            deleting: obj.pointer("/metadata/deletionTimestamp").is_some(),
            orphan: fins.iter().any(|f| f == ORPHAN),
            foreground: fins.iter().any(|f| f == FOREGROUND),
        })
    }

    /// Marked for deletion and waiting for its dependents (foreground).
    pub fn deleting_dependents(&self) -> bool {
        self.deleting && self.foreground
    }
}

/// The served kinds by (group, kind), to resolve owner references.
#[derive(Debug, Default)]
pub struct Kinds(HashMap<(&'static str, &'static str), &'static ResourceInfo>);

impl Kinds {
    /// The index of `rows` (the first row of a group and kind wins).
    pub fn new(rows: &[&'static ResourceInfo]) -> Kinds {
        let mut m = HashMap::new();
        for r in rows.iter().filter(|r| r.stored) {
            m.entry((r.group, r.kind)).or_insert(*r);
        }
        Kinds(m)
    }

    /// The store key the owner reference `r` of a dependent in `namespace`
    /// points at; `None` if it is unresolvable (kind not served, or a
    /// namespaced kind named by a cluster-scoped dependent).
    pub fn owner_key(&self, namespace: Option<&str>, r: &OwnerRef) -> Option<String> {
        let res = self.0.get(&(r.group(), r.kind.as_str()))?;
        if res.namespaced {
            Some(res.key(Some(namespace?), &r.name))
        } else {
            Some(res.key(None, &r.name))
        }
    }
}

/// An owner as the object at its coordinates shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerView<'a> {
    /// Its uid.
    pub uid: &'a str,
    /// Being deleted in the foreground (`deletionTimestamp` and the
    /// `foregroundDeletion` finalizer).
    pub deleting_dependents: bool,
}

/// The state of one owner reference (Kubernetes' `classifyReferences`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists and is not waiting for its dependents.
    Solid,
    /// No object with the reference's uid at its coordinates.
    Dangling,
    /// The owner is being deleted in the foreground.
    Waiting,
    /// The reference cannot be resolved (the dependent is left alone).
    Unresolvable,
}

/// Classifies `r` given where it points (`None`: unresolvable) and what is
/// there (`None`: nothing).
pub fn classify(r: &OwnerRef, key: Option<&str>, found: Option<OwnerView<'_>>) -> OwnerState {
    match (key, found) {
        (None, _) => OwnerState::Unresolvable,
        (Some(_), Some(o)) if o.uid == r.uid => {
            if o.deleting_dependents {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            }
        }
        (Some(_), _) => OwnerState::Dangling,
    }
}

/// What to do with a dependent (Kubernetes' `attemptToDeleteItem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave it.
    Nothing,
    /// It keeps a solid owner: drop the references to these (dangling or
    /// waiting) owner uids.
    RemoveRefs(Vec<String>),
    /// Delete it with `policy`; first set `blockOwnerDeletion: false` on its
    /// references if `unblock` (a dependent of it waits for its own
    /// dependents: blocking could deadlock).
    Delete {
        /// The propagation of its own deletion.
        policy: Propagation,
        /// Unblock its owner references first.
        unblock: bool,
    },
}

/// Decides for a live dependent whose owner references are in `states`.
/// `own`: its `(orphan, foregroundDeletion)` finalizers; `has_dependents`:
/// something names it as owner; `dependent_deleting_dependents`: one of
/// those is itself deleting in the foreground.
pub fn decide(
    states: &[(OwnerRef, OwnerState)],
    own: (bool, bool),
    has_dependents: bool,
    dependent_deleting_dependents: bool,
) -> Decision {
    if states.is_empty() || states.iter().any(|(_, s)| *s == OwnerState::Unresolvable) {
        return Decision::Nothing;
    }
    let of = |want: OwnerState| -> Vec<String> {
        states
            .iter()
            .filter(|(_, s)| *s == want)
            .map(|(r, _)| r.uid.clone())
            .collect()
    };
    let (solid, dangling, waiting) = (
        of(OwnerState::Solid),
        of(OwnerState::Dangling),
        of(OwnerState::Waiting),
    );
    if !solid.is_empty() {
        if dangling.is_empty() && waiting.is_empty() {
            return Decision::Nothing;
        }
        return Decision::RemoveRefs(dangling.into_iter().chain(waiting).collect());
    }
    if !waiting.is_empty() && has_dependents {
        return Decision::Delete {
            policy: Propagation::Foreground,
            unblock: dependent_deleting_dependents,
        };
    }
    let policy = match own {
        (true, _) => Propagation::Orphan,
        (false, true) => Propagation::Foreground,
        (false, false) => Propagation::Background,
    };
    Decision::Delete {
        policy,
        unblock: false,
    }
}

/// Work a pass found (each item is checked again against the store before
/// anything is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The dependent at this key has a dangling owner or one deleting in the
    /// foreground: [`decide`] on its live state.
    AttemptToDelete(String),
    /// The owner at this key is deleting with the `orphan` finalizer: strip
    /// its uid from its dependents' references, then drop the finalizer.
    Orphan(String),
    /// The owner at this key is deleting in the foreground and no dependent
    /// blocks it any more: drop the `foregroundDeletion` finalizer.
    FinishForeground(String),
}

impl Action {
    /// True for actions that must see every dependent: they run only once
    /// every watch cache has caught up.
    pub fn needs_complete_view(&self) -> bool {
        !matches!(self, Action::AttemptToDelete(_))
    }
}

/// The owner → dependents graph of a set of objects.
#[derive(Debug)]
pub struct Graph<'a> {
    nodes: HashMap<&'a str, &'a Node>,
    /// Owner key → (dependent key, `blockOwnerDeletion`).
    dependents: HashMap<&'a str, Vec<(&'a str, bool)>>,
    kinds: &'a Kinds,
}

impl<'a> Graph<'a> {
    /// The graph of `nodes`: each resolvable owner reference whose owner is
    /// present (same uid) links the dependent to it.
    pub fn new(nodes: impl IntoIterator<Item = &'a Node>, kinds: &'a Kinds) -> Graph<'a> {
        let nodes: HashMap<&'a str, &'a Node> =
            nodes.into_iter().map(|n| (n.key.as_str(), n)).collect();
        let mut dependents: HashMap<&'a str, Vec<(&'a str, bool)>> = HashMap::new();
        for n in nodes.values() {
            for r in &n.owners {
                let Some(k) = kinds.owner_key(n.namespace.as_deref(), r) else {
                    continue;
                };
                if let Some((owner_key, owner)) = nodes.get_key_value(k.as_str()) {
                    if owner.uid == r.uid {
                        dependents
                            .entry(owner_key)
                            .or_default()
                            .push((n.key.as_str(), r.block));
                    }
                }
            }
        }
        Graph {
            nodes,
            dependents,
            kinds,
        }
    }

    /// The node at `key`.
    pub fn node(&self, key: &str) -> Option<&'a Node> {
        self.nodes.get(key).copied()
    }

    /// The keys of the dependents of the owner at `key`.
    pub fn dependents(&self, key: &str) -> Vec<&'a str> {
        self.dependents
            .get(key)
            .map(|d| d.iter().map(|(k, _)| *k).collect())
            .unwrap_or_default()
    }

    /// True if something names the object at `key` as its owner.
    pub fn has_dependents(&self, key: &str) -> bool {
        self.dependents.get(key).is_some_and(|d| !d.is_empty())
    }

    /// The dependents with `blockOwnerDeletion: true` of the owner at `key`.
    pub fn blocking_dependents(&self, key: &str) -> Vec<&'a str> {
        self.dependents
            .get(key)
            .map(|d| d.iter().filter(|(_, b)| *b).map(|(k, _)| *k).collect())
            .unwrap_or_default()
    }

    /// True if a dependent of the object at `key` is itself deleting in the
    /// foreground.
    pub fn dependent_deleting_dependents(&self, key: &str) -> bool {
        self.dependents(key)
            .iter()
            .any(|d| self.node(d).is_some_and(Node::deleting_dependents))
    }

    /// How the graph sees the owner reference `r` of `n`.
    fn state(&self, n: &Node, r: &OwnerRef) -> OwnerState {
        let key = self.kinds.owner_key(n.namespace.as_deref(), r);
        let found = key
            .as_deref()
            .and_then(|k| self.node(k))
            .map(|o| OwnerView {
                uid: &o.uid,
                deleting_dependents: o.deleting_dependents(),
            });
        classify(r, key.as_deref(), found)
    }

    /// The work this graph shows, in key order: owners deleting with a GC
    /// finalizer, and dependents whose owners are dangling or waiting.
    pub fn plan(&self) -> Vec<Action> {
        let mut keys: Vec<&&str> = self.nodes.keys().collect();
        keys.sort();
        let mut out = Vec::new();
        for key in keys {
            let n = self.nodes[*key];
            if n.deleting {
                if n.orphan {
                    out.push(Action::Orphan(n.key.clone()));
                } else if n.foreground && self.blocking_dependents(&n.key).is_empty() {
                    out.push(Action::FinishForeground(n.key.clone()));
                }
                continue;
            }
            let states: Vec<OwnerState> = n.owners.iter().map(|r| self.state(n, r)).collect();
            if !states.contains(&OwnerState::Unresolvable)
                && states
                    .iter()
                    .any(|s| matches!(s, OwnerState::Dangling | OwnerState::Waiting))
            {
                out.push(Action::AttemptToDelete(n.key.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds() -> Kinds {
        Kinds::new(&crate::registry::all())
    }

    fn res(plural: &str) -> &'static ResourceInfo {
        crate::registry::all()
            .into_iter()
            .find(|r| r.plural == plural)
            .expect("registered")
    }

    /// A node from a compact description; `owners`: (kind, name, uid, block).
    fn node(
        plural: &str,
        ns: Option<&str>,
        name: &str,
        uid: &str,
        owners: &[(&str, &str, &str, bool)],
        fins: &[&str],
        deleting: bool,
    ) -> Node {
        let r = res(plural);
        let refs: Vec<Value> = owners
            .iter()
            .map(|(kind, n, u, b)| {
                let api = match *kind {
                    "Deployment" | "ReplicaSet" => "apps/v1",
                    _ => "v1",
                };
                json!({"apiVersion": api, "kind": kind, "name": n, "uid": u, "blockOwnerDeletion": b})
            })
            .collect();
        let mut obj = json!({"metadata": {"name": name, "uid": uid, "ownerReferences": refs, "finalizers": fins}});
        if let Some(ns) = ns {
            obj["metadata"]["namespace"] = json!(ns);
        }
        if deleting {
            obj["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        }
        Node::from_object(r, &r.key(ns, name), &obj).expect("has a uid")
    }

    fn cm(name: &str, uid: &str, owners: &[(&str, &str, &str, bool)]) -> Node {
        node("configmaps", Some("a"), name, uid, owners, &[], false)
    }

    #[test]
    fn a_dependent_of_a_missing_owner_is_collected() {
        // owner "o" (uid 1) is gone; "d" still names it; "e" names a present
        // owner "p" (uid 2).
        let nodes = [
            cm("p", "2", &[]),
            cm("d", "10", &[("ConfigMap", "o", "1", false)]),
            cm("e", "11", &[("ConfigMap", "p", "2", false)]),
        ];
        let k = kinds();
        let g = Graph::new(&nodes, &k);
        assert_eq!(
            g.plan(),
            vec![Action::AttemptToDelete("/registry/configmaps/a/d".into())]
        );
        assert!(g.has_dependents("/registry/configmaps/a/p"));
    }

    #[test]
    fn a_recreated_owner_with_another_uid_does_not_hold() {
        let nodes = [
            cm("o", "99", &[]),
            cm("d", "10", &[("ConfigMap", "o", "1", false)]),
        ];
        let k = kinds();
        let g = Graph::new(&nodes, &k);
        assert!(!g.has_dependents("/registry/configmaps/a/o"));
        assert_eq!(g.plan().len(), 1);
    }

    #[test]
    fn cross_namespace_and_cluster_scoped_rules() {
        // A namespaced owner is looked for in the dependent's namespace: the
        // one in "b" does not count, so the dependent in "a" is dangling.
        let owner_b = node("configmaps", Some("b"), "o", "1", &[], &[], false);
        let dep_a = cm("d", "10", &[("ConfigMap", "o", "1", false)]);
        // A cluster-scoped dependent naming a namespaced kind: unresolvable.
        let cluster_dep = node(
            "namespaces",
            None,
            "n",
            "20",
            &[("ConfigMap", "o", "1", false)],
            &[],
            false,
        );
        // A namespaced dependent of a cluster-scoped owner that exists.
        let ns_owner = node("namespaces", None, "x", "30", &[], &[], false);
        let dep_of_ns = cm("e", "11", &[("Namespace", "x", "30", false)]);
        // A kind nobody serves: unresolvable, left alone.
        let unknown = cm("f", "12", &[("Gizmo", "g", "40", false)]);
        let nodes = [owner_b, dep_a, cluster_dep, ns_owner, dep_of_ns, unknown];
        let k = kinds();
        let g = Graph::new(&nodes, &k);
        assert_eq!(
            g.plan(),
            vec![Action::AttemptToDelete("/registry/configmaps/a/d".into())]
        );
        assert!(g.has_dependents("/registry/namespaces/x"));
        assert!(!g.has_dependents("/registry/configmaps/b/o"));
    }

    #[test]
    fn owners_with_gc_finalizers() {
        // "o" orphans; "f" waits in the foreground for a blocking dependent;
        // "g" is in the foreground with only a non-blocking one left.
        let nodes = [
            node("configmaps", Some("a"), "o", "1", &[], &["orphan"], true),
            cm("d1", "10", &[("ConfigMap", "o", "1", true)]),
            node(
                "configmaps",
                Some("a"),
                "f",
                "2",
                &[],
                &["foregroundDeletion"],
                true,
            ),
            cm("d2", "11", &[("ConfigMap", "f", "2", true)]),
            node(
                "configmaps",
                Some("a"),
                "g",
                "3",
                &[],
                &["foregroundDeletion"],
                true,
            ),
            node(
                "configmaps",
                Some("a"),
                "d3",
                "12",
                &[("ConfigMap", "g", "3", false)],
                &["x"],
                true,
            ),
        ];
        let k = kinds();
        let g = Graph::new(&nodes, &k);
        assert_eq!(
            g.plan(),
            vec![
                Action::AttemptToDelete("/registry/configmaps/a/d2".into()),
                Action::FinishForeground("/registry/configmaps/a/g".into()),
                Action::Orphan("/registry/configmaps/a/o".into()),
            ]
        );
        assert_eq!(
            g.blocking_dependents("/registry/configmaps/a/f"),
            vec!["/registry/configmaps/a/d2"]
        );
        assert_eq!(
            g.dependents("/registry/configmaps/a/o"),
            vec!["/registry/configmaps/a/d1"]
        );
    }

    fn r(uid: &str) -> OwnerRef {
        OwnerRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: format!("o{uid}"),
            uid: uid.into(),
            block: true,
        }
    }

    #[test]
    fn decisions() {
        use OwnerState::*;
        let bg = Decision::Delete {
            policy: Propagation::Background,
            unblock: false,
        };
        // All owners dangling: background, or the policy its finalizers ask.
        assert_eq!(
            decide(&[(r("1"), Dangling)], (false, false), true, false),
            bg
        );
        assert_eq!(
            decide(&[(r("1"), Dangling)], (true, false), false, false),
            Decision::Delete {
                policy: Propagation::Orphan,
                unblock: false
            }
        );
        // A solid owner keeps it; the other references go.
        assert_eq!(
            decide(
                &[(r("1"), Solid), (r("2"), Dangling), (r("3"), Waiting)],
                (false, false),
                false,
                false
            ),
            Decision::RemoveRefs(vec!["2".into(), "3".into()])
        );
        assert_eq!(
            decide(&[(r("1"), Solid)], (false, false), false, false),
            Decision::Nothing
        );
        // An owner in the foreground: a dependent with dependents of its own
        // goes in the foreground too (unblocking if one of those waits).
        assert_eq!(
            decide(&[(r("1"), Waiting)], (false, false), true, true),
            Decision::Delete {
                policy: Propagation::Foreground,
                unblock: true
            }
        );
        assert_eq!(
            decide(&[(r("1"), Waiting)], (false, false), false, false),
            bg
        );
        // Unresolvable references: never collected.
        assert_eq!(
            decide(
                &[(r("1"), Dangling), (r("2"), Unresolvable)],
                (false, false),
                false,
                false
            ),
            Decision::Nothing
        );
    }

    #[test]
    fn classification() {
        let o = r("1");
        let view = |uid, fg| OwnerView {
            uid,
            deleting_dependents: fg,
        };
        assert_eq!(classify(&o, None, None), OwnerState::Unresolvable);
        assert_eq!(classify(&o, Some("k"), None), OwnerState::Dangling);
        assert_eq!(
            classify(&o, Some("k"), Some(view("2", false))),
            OwnerState::Dangling
        );
        assert_eq!(
            classify(&o, Some("k"), Some(view("1", false))),
            OwnerState::Solid
        );
        assert_eq!(
            classify(&o, Some("k"), Some(view("1", true))),
            OwnerState::Waiting
        );
    }
}
