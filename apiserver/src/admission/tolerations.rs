//! `DefaultTolerationSeconds`: a new pod tolerates its node being not ready
//! or unreachable for 300 seconds before it is evicted, unless it already
//! tolerates those taints.

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::{Attributes, Plugin};
use crate::handlers::App;
use crate::status::ApiResult;

/// The plugin.
#[derive(Debug)]
pub struct DefaultTolerationSeconds;

/// Seconds a pod tolerates a not-ready or unreachable node
/// (`--default-not-ready-toleration-seconds`, `--default-unreachable-toleration-seconds`).
pub const DEFAULT_SECONDS: i64 = 300;

/// The taints the plugin adds tolerations for.
const TAINTS: &[&str] = &[
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// True if `t` tolerates the `NoExecute` taint `key` (as Kubernetes matches:
/// an empty key with `Exists` tolerates every taint; an empty effect every effect).
fn tolerates(t: &Value, key: &str) -> bool {
    let k = t.get("key").and_then(Value::as_str).unwrap_or("");
    let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
    let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
    let key_ok = k == key || (k.is_empty() && op == "Exists");
    key_ok && (effect.is_empty() || effect == "NoExecute")
}

/// Adds the two default tolerations to a pod that lacks them.
pub fn add_defaults(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if !spec.get("tolerations").is_some_and(Value::is_array) {
        spec.insert("tolerations".into(), json!([]));
    }
    let Some(Value::Array(ts)) = spec.get_mut("tolerations") else {
        return;
    };
    for key in TAINTS {
        if !ts.iter().any(|t| tolerates(t, key)) {
            ts.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_SECONDS,
            }));
        }
    }
}

impl Plugin for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    fn admit<'a>(
        &'a self,
        _app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        if attrs.is_core_create("Pod") {
            add_defaults(&mut attrs.object);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_only_missing_tolerations() {
        let mut pod = json!({"spec": {"containers": []}});
        add_defaults(&mut pod);
        assert_eq!(pod["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(pod["spec"]["tolerations"][0]["tolerationSeconds"], 300);
        let mut pod = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
        ]}});
        add_defaults(&mut pod);
        let ts = pod["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[0]["tolerationSeconds"], 5);
        assert_eq!(ts[1]["key"], "node.kubernetes.io/not-ready");
        let mut pod = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        add_defaults(&mut pod);
        assert_eq!(pod["spec"]["tolerations"].as_array().map(Vec::len), Some(1));
    }
}
