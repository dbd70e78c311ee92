//! Reconciliation of the default roles and bindings with what is stored,
//! as kube-apiserver does at startup: unless an object is annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "false"`, a default role
//! gets the default rules it lacks (rules are only ever added, never
//! removed), an aggregated default role the selectors it lacks (its rules
//! belong to the aggregation loop), and a default binding the subjects it
//! lacks. Labels and annotations are merged (stored values win).

use serde_json::{json, Value};

use super::escalation::missing;
use super::rbac::{rules_of, PolicyRule};

/// The annotation that turns reconciliation off for one object.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

fn merge_map(existing: &mut Value, expected: &Value, field: &str) {
    let Some(want) = expected
        .pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_object)
    else {
        return;
    };
    let Some(meta) = existing.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let have = meta.entry(field).or_insert_with(|| json!({}));
    if !have.is_object() {
        *have = json!({});
    }
    if let Some(have) = have.as_object_mut() {
        for (k, v) in want {
            have.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

fn array_union(existing: &mut Value, ptr: &str, wanted: &[Value]) {
    let mut items: Vec<Value> = existing
        .pointer(ptr)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for w in wanted {
        if !items.contains(w) {
            items.push(w.clone());
        }
    }
    if let Some(slot) = existing.pointer_mut(ptr) {
        *slot = Value::Array(items);
    }
}

/// The stored object updated toward `expected` (a default role or
/// binding), or `None` if nothing needs to change.
pub fn reconcile(expected: &Value, existing: &Value) -> Option<Value> {
    let off = existing
        .pointer(&format!(
            "/metadata/annotations/{}",
            AUTOUPDATE.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        == Some("false");
    if off {
        return None;
    }
    let mut out = existing.clone();
    merge_map(&mut out, expected, "labels");
    merge_map(&mut out, expected, "annotations");
    let kind = expected.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind.ends_with("Binding") {
        let wanted = expected
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if out.get("subjects").is_none_or(|s| !s.is_array()) {
            out["subjects"] = json!([]);
        }
        array_union(&mut out, "/subjects", &wanted);
    } else if let Some(selectors) = expected
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
    {
        if out
            .pointer("/aggregationRule/clusterRoleSelectors")
            .is_none_or(|s| !s.is_array())
        {
            out["aggregationRule"] = json!({"clusterRoleSelectors": []});
        }
        array_union(&mut out, "/aggregationRule/clusterRoleSelectors", selectors);
    } else {
        let have = rules_of(&out);
        let lacking: Vec<PolicyRule> = rules_of(expected)
            .into_iter()
            .filter(|r| !missing(&have, std::slice::from_ref(r)).is_empty())
            .collect();
        if !lacking.is_empty() {
            let mut rules = have;
            rules.extend(lacking);
            out["rules"] = json!(rules);
        }
    }
    (out != *existing).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_and_subjects_are_added_never_removed() {
        let expected = json!({"kind": "ClusterRole", "metadata": {"name": "r", "labels": {"a": "1"}},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}]});
        let existing = json!({"kind": "ClusterRole", "metadata": {"name": "r", "labels": {"a": "mine"}},
            "rules": [{"verbs": ["*"], "apiGroups": [""], "resources": ["pods", "secrets"]}]});
        let out = reconcile(&expected, &existing).expect("a change");
        assert_eq!(out["metadata"]["labels"]["a"], "mine", "stored labels win");
        let rules = rules_of(&out);
        assert_eq!(rules.len(), 2, "pods were covered, /x was added: {rules:?}");
        assert_eq!(rules[1].non_resource_urls, ["/x"]);
        assert!(reconcile(&expected, &out).is_none(), "settled");
        let mut off = existing.clone();
        off["metadata"]["annotations"] = json!({AUTOUPDATE: "false"});
        assert!(reconcile(&expected, &off).is_none());

        let b = json!({"kind": "ClusterRoleBinding", "metadata": {"name": "b"}, "subjects": [{"kind": "Group", "name": "g1"}]});
        let have = json!({"kind": "ClusterRoleBinding", "metadata": {"name": "b"}, "subjects": [{"kind": "User", "name": "u"}]});
        let out = reconcile(&b, &have).expect("a subject added");
        assert_eq!(out["subjects"].as_array().map(Vec::len), Some(2));

        let agg = json!({"kind": "ClusterRole", "metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"k": "v"}}]}, "rules": []});
        let have = json!({"kind": "ClusterRole", "metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"mine": "x"}}]}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]});
        let out = reconcile(&agg, &have).expect("a selector added");
        assert_eq!(
            out["aggregationRule"]["clusterRoleSelectors"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(
            out["rules"], have["rules"],
            "aggregated rules are the loop's"
        );
    }
}
