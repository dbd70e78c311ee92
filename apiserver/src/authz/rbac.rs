//! The RBAC evaluator, as Kubernetes' `RBACAuthorizer`: a [`Policy`] is a
//! snapshot of every Role, ClusterRole, RoleBinding and ClusterRoleBinding;
//! a request is allowed if a rule of a role bound to the user (cluster-wide
//! through a ClusterRoleBinding, or in the request's namespace through a
//! RoleBinding there) allows it. There are no deny rules.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Attributes;
use crate::auth::User;
use crate::authn::service_account;

/// One rule of a Role or ClusterRole (`rbac.authorization.k8s.io/v1 PolicyRule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Verbs (`*`: all).
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups (`""` core, `*` all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/log`, `*/scale`, `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Object names (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Non-resource paths (`/healthz`, `/apis/*`, `*`).
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn has_or_star(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

impl PolicyRule {
    /// Kubernetes' `VerbMatches`.
    pub fn verb_matches(&self, verb: &str) -> bool {
        has_or_star(&self.verbs, verb)
    }

    /// Kubernetes' `APIGroupMatches`.
    pub fn api_group_matches(&self, group: &str) -> bool {
        has_or_star(&self.api_groups, group)
    }

    /// Kubernetes' `ResourceMatches`: `*`, the exact `resource[/sub]`, or
    /// `*/sub` for any resource's subresource `sub`.
    pub fn resource_matches(&self, resource: &str, sub: &str) -> bool {
        let combined = if sub.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}/{sub}")
        };
        self.resources.iter().any(|r| {
            r == "*" || *r == combined || (!sub.is_empty() && r.strip_prefix("*/") == Some(sub))
        })
    }

    /// Kubernetes' `ResourceNameMatches` (no names: any object).
    pub fn resource_name_matches(&self, name: &str) -> bool {
        self.resource_names.is_empty() || self.resource_names.iter().any(|n| n == name)
    }

    /// Kubernetes' `NonResourceURLMatches`: `*`, the exact path, or a
    /// prefix ending in `*`.
    pub fn non_resource_url_matches(&self, path: &str) -> bool {
        self.non_resource_urls.iter().any(|u| {
            u == "*"
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
    }

    /// Kubernetes' `RuleAllows`.
    pub fn allows(&self, a: &Attributes) -> bool {
        if a.resource_request {
            self.verb_matches(&a.verb)
                && self.api_group_matches(&a.api_group)
                && self.resource_matches(&a.resource, &a.subresource)
                && self.resource_name_matches(&a.name)
        } else {
            self.verb_matches(&a.verb) && self.non_resource_url_matches(&a.path)
        }
    }
}

/// A binding's `roleRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    /// `rbac.authorization.k8s.io`.
    #[serde(default)]
    pub api_group: String,
    /// `Role` or `ClusterRole`.
    #[serde(default)]
    pub kind: String,
    /// The role's name.
    #[serde(default)]
    pub name: String,
}

/// A binding's subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// A service account's namespace (default: the binding's).
    #[serde(default)]
    pub namespace: String,
}

impl Subject {
    /// Kubernetes' `appliesToUser`; `binding_ns` is the binding's namespace
    /// (empty for ClusterRoleBindings).
    pub fn applies_to(&self, user: &User, binding_ns: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.in_group(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_ns
                } else {
                    &self.namespace
                };
                !ns.is_empty() && user.name == service_account::user_name(ns, &self.name)
            }
            _ => false,
        }
    }

    /// Kubernetes' `describeSubject` (for reasons).
    fn describe(&self, binding_ns: &str) -> String {
        match self.kind.as_str() {
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_ns
                } else {
                    &self.namespace
                };
                format!("{} \"{}/{ns}\"", self.kind, self.name)
            }
            _ => format!("{} \"{}\"", self.kind, self.name),
        }
    }
}

/// A RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// Name.
    pub name: String,
    /// Namespace (empty: a ClusterRoleBinding).
    pub namespace: String,
    /// The bound role.
    pub role_ref: RoleRef,
    /// Who it binds.
    pub subjects: Vec<Subject>,
}

impl Binding {
    /// Reads a binding object; `None` if it has no name.
    pub fn from_json(v: &Value) -> Option<Binding> {
        let meta = v.get("metadata")?;
        Some(Binding {
            name: meta.get("name")?.as_str()?.to_string(),
            namespace: meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            role_ref: v
                .get("roleRef")
                .and_then(|r| serde_json::from_value(r.clone()).ok())
                .unwrap_or_default(),
            subjects: v
                .get("subjects")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default(),
        })
    }
}

/// The rules of a role object (a missing or malformed `rules` is no rules).
pub fn rules_of(v: &Value) -> Vec<PolicyRule> {
    v.get("rules")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default()
}

/// A snapshot of all RBAC objects.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Roles by (namespace, name).
    pub roles: HashMap<(String, String), Vec<PolicyRule>>,
    /// ClusterRoles by name.
    pub cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// RoleBindings by namespace.
    pub role_bindings: HashMap<String, Vec<Binding>>,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: Vec<Binding>,
}

/// One rule found for a user, with where it came from.
#[derive(Debug, Clone)]
pub struct Found<'a> {
    /// The rule.
    pub rule: &'a PolicyRule,
    /// `ClusterRoleBinding "x" of ClusterRole "y" to User "z"`.
    pub source: String,
}

impl Policy {
    /// Adds role and binding objects (as stored) of `kind`.
    pub fn add(&mut self, kind: &str, v: &Value) {
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match kind {
            "Role" => {
                self.roles.insert((ns, name), rules_of(v));
            }
            "ClusterRole" => {
                self.cluster_roles.insert(name, rules_of(v));
            }
            "RoleBinding" => {
                if let Some(b) = Binding::from_json(v) {
                    self.role_bindings.entry(ns).or_default().push(b);
                }
            }
            "ClusterRoleBinding" => {
                if let Some(b) = Binding::from_json(v) {
                    self.cluster_role_bindings.push(b);
                }
            }
            _ => {}
        }
    }

    fn role_rules(&self, r: &RoleRef, ns: &str) -> Result<&[PolicyRule], String> {
        match r.kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .get(&r.name)
                .map(Vec::as_slice)
                .ok_or_else(|| {
                    format!(
                        "clusterrole.rbac.authorization.k8s.io \"{}\" not found",
                        r.name
                    )
                }),
            "Role" => self
                .roles
                .get(&(ns.to_string(), r.name.clone()))
                .map(Vec::as_slice)
                .ok_or_else(|| format!("role.rbac.authorization.k8s.io \"{}\" not found", r.name)),
            other => Err(format!("unsupported role reference kind: {other:?}")),
        }
    }

    /// Every rule that applies to `user` in `namespace` (empty: cluster
    /// scope only), in Kubernetes' order (ClusterRoleBindings, then the
    /// namespace's RoleBindings), and the errors met (missing roles).
    pub fn rules_for(&self, user: &User, namespace: &str) -> (Vec<Found<'_>>, Vec<String>) {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        let mut visit = |b: &Binding, kind: &str, label: String| {
            let Some(subject) = b.subjects.iter().find(|s| s.applies_to(user, &b.namespace)) else {
                return;
            };
            match self.role_rules(&b.role_ref, &b.namespace) {
                Ok(rules) => {
                    let source = format!(
                        "{kind} \"{label}\" of {} \"{}\" to {}",
                        b.role_ref.kind,
                        b.role_ref.name,
                        subject.describe(&b.namespace)
                    );
                    found.extend(rules.iter().map(|rule| Found {
                        rule,
                        source: source.clone(),
                    }));
                }
                Err(e) => errors.push(e),
            }
        };
        for b in &self.cluster_role_bindings {
            visit(b, "ClusterRoleBinding", b.name.clone());
        }
        if !namespace.is_empty() {
            for b in self.role_bindings.get(namespace).into_iter().flatten() {
                visit(b, "RoleBinding", format!("{}/{}", b.name, b.namespace));
            }
        }
        (found, errors)
    }

    /// Kubernetes' `RBACAuthorizer.Authorize`: (allowed, reason).
    pub fn authorize(&self, a: &Attributes) -> (bool, String) {
        let (found, errors) = self.rules_for(&a.user, &a.namespace);
        if let Some(f) = found.iter().find(|f| f.rule.allows(a)) {
            return (true, format!("RBAC: allowed by {}", f.source));
        }
        let reason = match errors.as_slice() {
            [] => String::new(),
            [one] => format!("RBAC: {one}"),
            many => format!("RBAC: [{}]", many.join(", ")),
        };
        (false, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> PolicyRule {
        serde_json::from_value(v).expect("rule")
    }

    fn res(
        user: &User,
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            namespace: ns.into(),
            api_group: group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    fn path(user: &User, verb: &str, p: &str) -> Attributes {
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: false,
            path: p.into(),
            ..Attributes::default()
        }
    }

    #[test]
    fn rules_match_like_kubernetes() {
        let u = User::authenticated("alice", "", vec![]);
        // | rule                                         | request                 | allowed |
        let cases = [
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
                res(&u, "get", "", "pods", "", "a", "x"),
                true,
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
                res(&u, "list", "", "pods", "", "a", ""),
                false,
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
                res(&u, "get", "apps", "pods", "", "a", "x"),
                false,
            ),
            (
                json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                res(&u, "delete", "apps", "deployments", "scale", "a", "x"),
                true,
            ),
            // A resource rule does not cover its subresources ...
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
                res(&u, "get", "", "pods", "log", "a", "x"),
                false,
            ),
            // ... unless named,
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
                res(&u, "get", "", "pods", "log", "a", "x"),
                true,
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
                res(&u, "get", "", "pods", "", "a", "x"),
                false,
            ),
            // or through */sub.
            (
                json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["*/scale"]}),
                res(&u, "get", "apps", "deployments", "scale", "a", "x"),
                true,
            ),
            (
                json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["*/scale"]}),
                res(&u, "get", "apps", "deployments", "status", "a", "x"),
                false,
            ),
            // resourceNames restrict to named objects (and so never match lists).
            (
                json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["c1"]}),
                res(&u, "get", "", "configmaps", "", "a", "c1"),
                true,
            ),
            (
                json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["c1"]}),
                res(&u, "get", "", "configmaps", "", "a", "c2"),
                false,
            ),
            (
                json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["c1"]}),
                res(&u, "list", "", "configmaps", "", "a", ""),
                false,
            ),
            // Non-resource URLs: exact, prefix*, *; never for resource requests.
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}),
                path(&u, "get", "/healthz"),
                true,
            ),
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}),
                path(&u, "get", "/healthz/etcd"),
                false,
            ),
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}),
                path(&u, "get", "/apis/apps/v1"),
                true,
            ),
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}),
                path(&u, "post", "/apis/apps/v1"),
                false,
            ),
            (
                json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
                path(&u, "delete", "/anything"),
                true,
            ),
            (
                json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
                res(&u, "get", "", "pods", "", "a", "x"),
                false,
            ),
            (
                json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                path(&u, "get", "/healthz"),
                false,
            ),
        ];
        for (i, (r, a, want)) in cases.into_iter().enumerate() {
            assert_eq!(rule(r.clone()).allows(&a), want, "case {i}: {r} vs {a:?}");
        }
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.add("ClusterRole", &json!({"metadata": {"name": "view"}, "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}));
        p.add("Role", &json!({"metadata": {"name": "cm-writer", "namespace": "prod"}, "rules": [{"verbs": ["create"], "apiGroups": [""], "resources": ["configmaps"]}]}));
        p.add("RoleBinding", &json!({"metadata": {"name": "alice-view", "namespace": "prod"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "alice"}]}));
        p.add("RoleBinding", &json!({"metadata": {"name": "bot-cm", "namespace": "prod"}, "roleRef": {"kind": "Role", "name": "cm-writer"}, "subjects": [{"kind": "ServiceAccount", "name": "bot"}]}));
        p.add("RoleBinding", &json!({"metadata": {"name": "dangling", "namespace": "dev"}, "roleRef": {"kind": "Role", "name": "gone"}, "subjects": [{"kind": "Group", "name": "devs"}]}));
        p.add("ClusterRoleBinding", &json!({"metadata": {"name": "devs-view"}, "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "Group", "name": "devs"}]}));
        p
    }

    #[test]
    fn bindings_grant_in_their_scope() {
        let p = policy();
        let alice = User::authenticated("alice", "", vec![]);
        let (ok, why) = p.authorize(&res(&alice, "list", "", "pods", "", "prod", ""));
        assert!(ok);
        assert_eq!(why, "RBAC: allowed by RoleBinding \"alice-view/prod\" of ClusterRole \"view\" to User \"alice\"");
        assert!(
            !p.authorize(&res(&alice, "list", "", "pods", "", "dev", ""))
                .0
        );
        assert!(
            !p.authorize(&res(&alice, "list", "", "pods", "", "", "")).0,
            "cluster scope"
        );
        // Service accounts: the binding's namespace is the subject's default.
        let bot = User::authenticated("system:serviceaccount:prod:bot", "", vec![]);
        assert!(
            p.authorize(&res(&bot, "create", "", "configmaps", "", "prod", ""))
                .0
        );
        let other = User::authenticated("system:serviceaccount:dev:bot", "", vec![]);
        assert!(
            !p.authorize(&res(&other, "create", "", "configmaps", "", "prod", ""))
                .0
        );
        // Groups, cluster-wide; a missing role is the reason of a denial.
        let dev = User::authenticated("dan", "", vec!["devs".into()]);
        assert!(p.authorize(&res(&dev, "get", "", "pods", "", "", "x")).0);
        let (ok, why) = p.authorize(&res(&dev, "delete", "", "pods", "", "dev", "x"));
        assert!(!ok);
        assert_eq!(
            why,
            "RBAC: role.rbac.authorization.k8s.io \"gone\" not found"
        );
        let (rules, errors) = p.rules_for(&dev, "dev");
        assert_eq!((rules.len(), errors.len()), (1, 1));
    }
}
