//! Aggregated ClusterRoles, as Kubernetes' ClusterRole aggregation
//! controller: a ClusterRole with an `aggregationRule` gets as `rules` the
//! union of the rules of every other ClusterRole whose labels match one of
//! its `clusterRoleSelectors` (in name order, each rule once).
//!
//! [`run`] is the loop: whenever the ClusterRole watch cache moves it
//! recomputes every aggregated role ([`plan`], pure) and writes the ones
//! that changed (compare-and-swap on their revision; a conflict is retried
//! on the next turn).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::policy_cache::rbac_resource;
use super::rbac::{rules_of, PolicyRule};
use crate::handlers::{decode, store_err, App};
use crate::status::ApiResult;
use crate::store::Cas;

/// How often the loop looks at the ClusterRole cache.
const EVERY: Duration = Duration::from_millis(300);

/// True if `labels` satisfy one label selector (`matchLabels` and
/// `matchExpressions`, all of them). An empty selector matches nothing,
/// as in the aggregation controller.
pub fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let exprs = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if match_labels.is_none_or(|m| m.is_empty()) && exprs.is_empty() {
        return false;
    }
    for (k, v) in match_labels.into_iter().flatten() {
        if labels.get(k).map(String::as_str) != v.as_str() {
            return false;
        }
    }
    exprs.iter().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let have = labels.get(key).map(String::as_str);
        match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => have.is_some_and(|h| values.contains(&h)),
            "NotIn" => have.is_none_or(|h| !values.contains(&h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    })
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The aggregated roles among `roles` whose rules must change: (index in
/// `roles`, the new rules). Aggregated roles that aggregate others (admin
/// takes edit, edit takes view) are followed to the fixpoint, so one pass
/// writes the final rules.
pub fn plan(roles: &[Value]) -> Vec<(usize, Vec<PolicyRule>)> {
    let mut work = roles.to_vec();
    for _ in 0..=roles.len() {
        let step = plan_once(&work);
        if step.is_empty() {
            break;
        }
        for (i, rules) in step {
            work[i]["rules"] = json!(rules);
        }
    }
    (0..roles.len())
        .filter(|&i| rules_of(&work[i]) != rules_of(&roles[i]))
        .map(|i| (i, rules_of(&work[i])))
        .collect()
}

/// One step of [`plan`]: each aggregated role from the others as they are.
fn plan_once(roles: &[Value]) -> Vec<(usize, Vec<PolicyRule>)> {
    let mut order: Vec<usize> = (0..roles.len()).collect();
    order.sort_by(|a, b| name_of(&roles[*a]).cmp(name_of(&roles[*b])));
    let mut out = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let Some(selectors) = role
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
        else {
            continue;
        };
        let mut rules: Vec<PolicyRule> = Vec::new();
        for &j in &order {
            if j == i {
                continue;
            }
            let labels = labels_of(&roles[j]);
            if !selectors.iter().any(|s| selector_matches(s, &labels)) {
                continue;
            }
            for r in rules_of(&roles[j]) {
                if !rules.contains(&r) {
                    rules.push(r);
                }
            }
        }
        if rules != rules_of(role) {
            out.push((i, rules));
        }
    }
    out
}

/// One pass: recompute and write the aggregated roles that changed.
pub async fn reconcile(app: &App) -> ApiResult<usize> {
    let res = rbac_resource("clusterroles")?;
    let cache = app.caches.get(&app.store, res).await.map_err(store_err)?;
    let (kvs, _) = cache.snapshot(res.prefix(None).as_bytes());
    let mut roles = Vec::with_capacity(kvs.len());
    let mut revs = Vec::with_capacity(kvs.len());
    for kv in &kvs {
        if let Ok(v) = decode(kv) {
            roles.push(v);
            revs.push(kv.mod_revision);
        }
    }
    let mut written = 0;
    for (i, rules) in plan(&roles) {
        let mut obj = roles[i].clone();
        obj["rules"] = json!(rules);
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let bytes = serde_json::to_vec(&obj).map_err(|e| {
            crate::status::ApiError::internal(format!("encoding a ClusterRole: {e}"))
        })?;
        let key = res.key(None, name_of(&obj));
        match app
            .store
            .update(&key, bytes, revs[i])
            .await
            .map_err(store_err)?
        {
            Cas::Done(_) => {
                written += 1;
                tracing::info!(role = name_of(&obj), "aggregated ClusterRole updated");
            }
            Cas::Failed(_) => {
                tracing::debug!(
                    role = name_of(&obj),
                    "aggregated ClusterRole changed meanwhile"
                )
            }
        }
    }
    Ok(written)
}

/// The aggregation loop: reconciles whenever the ClusterRole cache moves.
pub async fn run(app: Arc<App>) {
    let mut seen = -1;
    loop {
        let rev = match rbac_resource("clusterroles") {
            Ok(res) => match app.caches.get(&app.store, res).await {
                Ok(c) => c.revision(),
                Err(e) => {
                    tracing::debug!(error = %e, "aggregation: no ClusterRole cache yet");
                    -1
                }
            },
            Err(_) => return,
        };
        if rev >= 0 && rev != seen {
            match reconcile(&app).await {
                Ok(_) => seen = rev,
                Err(e) => tracing::warn!(error = %e, "aggregating ClusterRoles"),
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    #[test]
    fn selectors() {
        let l: BTreeMap<String, String> =
            [("a".to_string(), "1".to_string())].into_iter().collect();
        assert!(selector_matches(&json!({"matchLabels": {"a": "1"}}), &l));
        assert!(!selector_matches(&json!({"matchLabels": {"a": "2"}}), &l));
        assert!(!selector_matches(&json!({}), &l), "empty matches nothing");
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}),
            &l
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]}),
            &l
        ));
        assert!(!selector_matches(
            &json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}),
            &l
        ));
        assert!(selector_matches(
            &json!({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "a", "operator": "Exists"}]}),
            &l
        ));
    }

    #[test]
    fn aggregated_roles_collect_matching_rules_once_in_name_order() {
        let r1 = json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        let r2 = json!([{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        let mut agg = role("agg", json!({}), json!([]));
        agg["aggregationRule"] =
            json!({"clusterRoleSelectors": [{"matchLabels": {"to-agg": "true"}}]});
        let roles = vec![
            agg,
            role("zeta", json!({"to-agg": "true"}), r2),
            role("alpha", json!({"to-agg": "true"}), r1),
            role(
                "other",
                json!({}),
                json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]),
            ),
        ];
        let plan1 = plan(&roles);
        assert_eq!(plan1.len(), 1);
        let (i, rules) = &plan1[0];
        assert_eq!(*i, 0);
        let verbs: Vec<&str> = rules.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(verbs, ["get", "list"]);
        // Once written, nothing more to do.
        let mut done = roles.clone();
        done[0]["rules"] = json!(rules);
        assert!(plan(&done).is_empty());
        // Chains (admin ← edit ← view) settle in one plan.
        let mut chain = roles.clone();
        let mut top = role("top", json!({}), json!([]));
        top["aggregationRule"] =
            json!({"clusterRoleSelectors": [{"matchLabels": {"to-top": "true"}}]});
        chain[0]["metadata"]["labels"] = json!({"to-top": "true"});
        chain.insert(0, top);
        let p = plan(&chain);
        let top_rules = &p.iter().find(|(i, _)| *i == 0).expect("top planned").1;
        assert_eq!(top_rules.len(), 2, "{top_rules:?}");
        // A role that stops matching is dropped from the union.
        done[1]["metadata"]["labels"] = json!({});
        let plan2 = plan(&done);
        assert_eq!(plan2[0].1.len(), 1);
    }
}
