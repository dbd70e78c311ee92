//! RBAC privilege-escalation prevention, as Kubernetes' role and binding
//! storage: a user may only write a Role/ClusterRole whose rules they
//! already hold (or with the `escalate` verb on it), and only bind a role
//! whose rules they already hold (or with the `bind` verb on it).
//! A ClusterRole with an `aggregationRule` takes full authority (or
//! `escalate`). `system:masters` may do anything. "Already hold" is Kubernetes'
//! `Covers`: every rule is broken down into single verb × group ×
//! resource (× name) and verb × URL parts, and each part must be covered
//! by one of the user's rules in that namespace.

use std::collections::BTreeMap;

use serde_json::Value;

use super::rbac::{rules_of, Binding, PolicyRule};
use super::{Attributes, Decision, SUPERUSER_GROUP};
use crate::auth::User;
use crate::handlers::{App, Ctx};
use crate::status::{ApiError, ApiResult};

/// Kubernetes' `BreakdownRule`: one verb, group, resource (and name) per
/// rule, or one verb and URL.
pub fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for g in &rule.api_groups {
        for r in &rule.resources {
            for v in &rule.verbs {
                let base = PolicyRule {
                    verbs: vec![v.clone()],
                    api_groups: vec![g.clone()],
                    resources: vec![r.clone()],
                    ..PolicyRule::default()
                };
                if rule.resource_names.is_empty() {
                    out.push(base);
                } else {
                    for n in &rule.resource_names {
                        out.push(PolicyRule {
                            resource_names: vec![n.clone()],
                            ..base.clone()
                        });
                    }
                }
            }
        }
    }
    for u in &rule.non_resource_urls {
        for v in &rule.verbs {
            out.push(PolicyRule {
                verbs: vec![v.clone()],
                non_resource_urls: vec![u.clone()],
                ..PolicyRule::default()
            });
        }
    }
    out
}

fn has_all(set: &[String], want: &[String]) -> bool {
    want.iter().all(|w| set.contains(w))
}

fn resource_covers_all(owner: &[String], want: &[String]) -> bool {
    if owner.iter().any(|o| o == "*") || has_all(owner, want) {
        return true;
    }
    want.iter().all(|w| {
        owner.iter().any(|o| {
            o == w
                || o.strip_prefix('*')
                    .is_some_and(|sub| sub.starts_with('/') && w.ends_with(sub))
        })
    })
}

fn urls_cover_all(owner: &[String], want: &[String]) -> bool {
    want.iter().all(|w| {
        owner.iter().any(|o| {
            o == w
                || o == "*"
                || o.strip_suffix('*')
                    .is_some_and(|prefix| w.starts_with(prefix))
        })
    })
}

/// Kubernetes' `ruleCovers`: does `owner` cover the broken-down `sub`?
pub fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let verbs = owner.verbs.iter().any(|v| v == "*") || has_all(&owner.verbs, &sub.verbs);
    let groups =
        owner.api_groups.iter().any(|g| g == "*") || has_all(&owner.api_groups, &sub.api_groups);
    let names = if sub.resource_names.is_empty() {
        owner.resource_names.is_empty()
    } else {
        owner.resource_names.is_empty() || has_all(&owner.resource_names, &sub.resource_names)
    };
    verbs
        && groups
        && resource_covers_all(&owner.resources, &sub.resources)
        && urls_cover_all(&owner.non_resource_urls, &sub.non_resource_urls)
        && names
}

/// Kubernetes' `Covers`: the parts of `servant` no rule of `owner` covers.
pub fn missing(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for r in servant {
        for sub in breakdown(r) {
            if !owner.iter().any(|o| rule_covers(o, &sub)) && !out.contains(&sub) {
                out.push(sub);
            }
        }
    }
    out
}

/// Kubernetes' `CompactString`: `{APIGroups:["apps"], Resources:["deployments"], Verbs:["get" "list"]}`.
pub fn compact_string(r: &PolicyRule) -> String {
    let q = |v: &[String]| {
        let parts: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", parts.join(" "))
    };
    let mut parts = Vec::new();
    if !r.api_groups.is_empty() {
        parts.push(format!("APIGroups:{}", q(&r.api_groups)));
    }
    if !r.resources.is_empty() {
        parts.push(format!("Resources:{}", q(&r.resources)));
    }
    if !r.non_resource_urls.is_empty() {
        parts.push(format!("NonResourceURLs:{}", q(&r.non_resource_urls)));
    }
    if !r.resource_names.is_empty() {
        parts.push(format!("ResourceNames:{}", q(&r.resource_names)));
    }
    if !r.verbs.is_empty() {
        parts.push(format!("Verbs:{}", q(&r.verbs)));
    }
    format!("{{{}}}", parts.join(", "))
}

/// Kubernetes' `CompactRules`: simple resource rules that differ only in
/// their verb become one rule.
fn compact(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let mut merged: BTreeMap<(String, String, String), PolicyRule> = BTreeMap::new();
    let mut out = Vec::new();
    for r in rules {
        let simple = r.api_groups.len() == 1
            && r.resources.len() == 1
            && r.resource_names.is_empty()
            && r.non_resource_urls.is_empty();
        if !simple {
            out.push(r);
            continue;
        }
        let key = (
            r.api_groups[0].clone(),
            r.resources[0].clone(),
            String::new(),
        );
        match merged.get_mut(&key) {
            Some(m) => {
                for v in r.verbs {
                    if !m.verbs.contains(&v) {
                        m.verbs.push(v);
                    }
                }
            }
            None => {
                merged.insert(key, r);
            }
        }
    }
    let mut all: Vec<PolicyRule> = merged.into_values().collect();
    all.extend(out);
    all
}

/// The error text of Kubernetes' `ConfirmNoEscalation`.
pub fn escalation_message(user: &User, missing: Vec<PolicyRule>, errors: &[String]) -> String {
    let mut lines: Vec<String> = compact(missing).iter().map(compact_string).collect();
    lines.sort();
    lines.dedup();
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let mut msg = format!(
        "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        groups.join(" "),
        lines.join("\n")
    );
    if !errors.is_empty() {
        msg.push_str(&format!("; resolution errors: [{}]", errors.join(" ")));
    }
    msg
}

/// Kubernetes' `fullAuthority`: everything, resources and paths.
fn full_authority() -> Vec<PolicyRule> {
    let all = || vec!["*".to_string()];
    vec![
        PolicyRule {
            verbs: all(),
            api_groups: all(),
            resources: all(),
            ..PolicyRule::default()
        },
        PolicyRule {
            verbs: all(),
            non_resource_urls: all(),
            ..PolicyRule::default()
        },
    ]
}

fn allowed(d: Decision) -> bool {
    matches!(d, Decision::Allow(_))
}

/// Checks a write of an RBAC object (`obj`, as it would be stored) by
/// `ctx.user`; a 403 Forbidden if it would grant what the user lacks.
/// Objects of other kinds pass.
pub async fn check(app: &App, ctx: &Ctx, obj: &Value) -> ApiResult<()> {
    let res = ctx.target.res;
    let user = &ctx.user;
    if res.group != super::policy_cache::RBAC_GROUP
        || user.in_group(SUPERUSER_GROUP)
        || !app.authz.rbac_enabled()
    {
        return Ok(());
    }
    let ns = ctx.target.namespace.clone().unwrap_or_default();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let forbid = |why: String| ApiError::forbidden(res.group, res.plural, &name, why);
    let ask = |verb: &str, resource: &str, role: &str| Attributes {
        user: user.clone(),
        verb: verb.into(),
        resource_request: true,
        namespace: ns.clone(),
        api_group: super::policy_cache::RBAC_GROUP.into(),
        api_version: "v1".into(),
        resource: resource.into(),
        name: role.into(),
        ..Attributes::default()
    };
    // Decided on the cached policy; a "no" is decided again once the
    // caches have caught up with the store.
    let mut last = None;
    for attempt in 0..2 {
        if attempt == 1 {
            app.authz.policy.catch_up(app).await?;
        }
        let policy = app.authz.policy.policy(app).await?;
        let servant: Vec<PolicyRule> = match res.kind {
            "Role" | "ClusterRole" => {
                if allowed(
                    app.authz
                        .authorize(app, &ask("escalate", res.plural, &name))
                        .await?,
                ) {
                    return Ok(());
                }
                rules_of(obj)
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let binding = Binding::from_json(obj).unwrap_or_default();
                let r = &binding.role_ref;
                let plural = match r.kind.as_str() {
                    "Role" => "roles",
                    _ => "clusterroles",
                };
                if allowed(
                    app.authz
                        .authorize(app, &ask("bind", plural, &r.name))
                        .await?,
                ) {
                    return Ok(());
                }
                let rules = match r.kind.as_str() {
                    "ClusterRole" => policy.cluster_roles.get(&r.name).cloned().ok_or_else(|| {
                        format!("clusterrole.rbac.authorization.k8s.io {:?} not found", r.name)
                    }),
                    "Role" => policy
                        .roles
                        .get(&(ns.clone(), r.name.clone()))
                        .cloned()
                        .ok_or_else(|| format!("role.rbac.authorization.k8s.io {:?} not found", r.name)),
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "roleRef.kind: Unsupported value: {other:?}: supported values: \"Role\", \"ClusterRole\""
                        )))
                    }
                };
                match rules {
                    Ok(r) => r,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            _ => return Ok(()),
        };
        let (found, errors) = policy.rules_for(user, &ns);
        let owner: Vec<PolicyRule> = found.into_iter().map(|f| f.rule.clone()).collect();
        let lacking = missing(&owner, &servant);
        if !lacking.is_empty() {
            last = Some(escalation_message(user, lacking, &errors));
            continue;
        }
        // An aggregation rule can gather anything: it takes `*` on `*.*`.
        let aggregates =
            res.kind == "ClusterRole" && obj.get("aggregationRule").is_some_and(|a| !a.is_null());
        if aggregates && !missing(&owner, &full_authority()).is_empty() {
            last = Some("must have cluster-admin privileges to use the aggregationRule".into());
            continue;
        }
        return Ok(());
    }
    Err(forbid(last.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: Value) -> Vec<PolicyRule> {
        serde_json::from_value(v).expect("rules")
    }

    #[test]
    fn covers_like_kubernetes() {
        let owner = rules(json!([
            {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "configmaps"]},
            {"verbs": ["*"], "apiGroups": ["apps"], "resources": ["*/scale"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]},
            {"verbs": ["get"], "nonResourceURLs": ["/apis/*"]},
        ]));
        let ok = rules(json!([
            {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["update"], "apiGroups": ["apps"], "resources": ["deployments/scale"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]},
            {"verbs": ["get"], "nonResourceURLs": ["/apis/apps"]},
        ]));
        assert!(missing(&owner, &ok).is_empty());
        let too_much = rules(json!([
            {"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]},
            {"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "nonResourceURLs": ["/metrics"]},
        ]));
        let lacking = missing(&owner, &too_much);
        let shown: Vec<String> = lacking.iter().map(compact_string).collect();
        assert_eq!(
            shown,
            [
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#,
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["*"]}"#,
                r#"{NonResourceURLs:["/metrics"], Verbs:["get"]}"#,
            ]
        );
        let user = User::authenticated("alice", "", vec![]);
        let msg = escalation_message(&user, lacking, &[]);
        assert!(msg.starts_with("user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n"), "{msg}");
        assert!(
            msg.contains(r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete" "*"]}"#),
            "{msg}"
        );
    }
}
