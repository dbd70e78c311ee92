//! Which webhooks a request goes to: `rules` (operations, API groups and
//! versions, resources with subresources, scope), `namespaceSelector` and
//! `objectSelector` (label selectors: `matchLabels`, `matchExpressions`).

use serde_json::Value;

use crate::admission::Operation;
use crate::registry::ResourceInfo;

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The operation's name in webhook rules.
pub fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
    }
}

/// True if `pattern` (`pods`, `pods/status`, `*`, `*/*`, `pods/*`,
/// `*/status`) names the resource and subresource, as Kubernetes' rule
/// matcher decides (a `*` subresource also matches the resource itself).
fn resource_matches(pattern: &str, plural: &str, sub: Option<&str>) -> bool {
    let (pr, ps) = pattern.split_once('/').unwrap_or((pattern, ""));
    (pr == "*" || pr == plural) && (ps == "*" || ps == sub.unwrap_or(""))
}

/// True if one of the webhook's `rules` covers the request.
pub fn rules_match(
    rules: Option<&Value>,
    op: Operation,
    res: &ResourceInfo,
    sub: Option<&str>,
) -> bool {
    let Some(rules) = rules.and_then(Value::as_array) else {
        return false;
    };
    rules.iter().any(|r| {
        let ops = strings(r.get("operations"));
        let groups = strings(r.get("apiGroups"));
        let versions = strings(r.get("apiVersions"));
        let resources = strings(r.get("resources"));
        let scope = r.get("scope").and_then(Value::as_str).unwrap_or("*");
        (ops.contains(&"*") || ops.contains(&operation_name(op)))
            && (groups.contains(&"*") || groups.contains(&res.group))
            && (versions.contains(&"*") || versions.contains(&res.version))
            && resources
                .iter()
                .any(|p| resource_matches(p, res.plural, sub))
            && match scope {
                "Cluster" => !res.namespaced,
                "Namespaced" => res.namespaced,
                _ => true,
            }
    })
}

/// True if a structured label selector matches `labels` (an absent or
/// empty selector matches everything).
pub fn selector_matches(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    let Some(sel) = selector.filter(|s| s.is_object()) else {
        return true;
    };
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        if ml.iter().any(|(k, v)| label(k) != v.as_str()) {
            return false;
        }
    }
    let exprs = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    exprs.iter().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values = strings(e.get("values"));
        match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => label(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
            "Exists" => label(key).is_some(),
            "DoesNotExist" => label(key).is_none(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;
    use serde_json::json;

    #[test]
    fn rules_cover_operations_resources_and_scope() {
        let pods = registry::lookup("", "v1", "pods").expect("pods");
        let ns = registry::lookup("", "v1", "namespaces").expect("namespaces");
        let rules = json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}]);
        assert!(rules_match(Some(&rules), Operation::Create, pods, None));
        assert!(!rules_match(Some(&rules), Operation::Update, pods, None));
        assert!(!rules_match(
            Some(&rules),
            Operation::Create,
            pods,
            Some("status")
        ));
        let all = json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"], "scope": "Cluster"}]);
        assert!(rules_match(Some(&all), Operation::Delete, ns, None));
        assert!(!rules_match(Some(&all), Operation::Delete, pods, None));
        assert!(resource_matches("*/status", "pods", Some("status")));
        assert!(!resource_matches("*", "pods", Some("status")));
        assert!(resource_matches("pods/*", "pods", None));
    }

    #[test]
    fn label_selectors() {
        let labels = json!({"webhooks": "on", "tier": "web"});
        assert!(selector_matches(None, Some(&labels)));
        assert!(selector_matches(Some(&json!({})), None));
        assert!(selector_matches(
            Some(&json!({"matchLabels": {"webhooks": "on"}})),
            Some(&labels)
        ));
        assert!(!selector_matches(
            Some(&json!({"matchLabels": {"webhooks": "off"}})),
            Some(&labels)
        ));
        let expr = |op: &str, values: Value| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
        assert!(selector_matches(
            Some(&expr("In", json!(["web", "db"]))),
            Some(&labels)
        ));
        assert!(!selector_matches(
            Some(&expr("NotIn", json!(["web"]))),
            Some(&labels)
        ));
        assert!(selector_matches(
            Some(&expr("Exists", json!(null))),
            Some(&labels)
        ));
        assert!(!selector_matches(
            Some(&expr("DoesNotExist", json!(null))),
            Some(&labels)
        ));
    }
}
