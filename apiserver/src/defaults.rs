//! Defaulting: the fields Kubernetes fills in on create and update when a
//! client leaves them out, for the kinds users create most (pods and pod
//! templates, deployments, replica sets, services, namespaces, limit
//! ranges). Only fields that are absent are set. Also a pod's QoS class,
//! which Kubernetes sets on create after mutating admission.

use serde_json::{json, Map, Value};

fn set(m: &mut Map<String, Value>, k: &str, v: Value) {
    if !m.contains_key(k) {
        m.insert(k.to_string(), v);
    }
}

fn field_map<'a>(v: &'a mut Value, k: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(k).and_then(Value::as_object_mut)
}

/// `IfNotPresent`, or `Always` for `:latest` or untagged images.
fn pull_policy(image: &str) -> &'static str {
    let name = image.rsplit('/').next().unwrap_or(image);
    let tagged = name.contains(':') && !name.ends_with(":latest");
    if tagged || image.contains('@') {
        "IfNotPresent"
    } else {
        "Always"
    }
}

fn container(c: &mut Value) {
    let Some(m) = c.as_object_mut() else { return };
    let image = m
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    set(m, "imagePullPolicy", json!(pull_policy(&image)));
    set(m, "terminationMessagePath", json!("/dev/termination-log"));
    set(m, "terminationMessagePolicy", json!("File"));
    set(m, "resources", json!({}));
    requests_from_limits(m);
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe).and_then(Value::as_object_mut) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
        }
    }
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set(p, "protocol", json!("TCP"));
        }
    }
}

/// A container's requests default to its limits (for the resources it
/// limits but does not request).
fn requests_from_limits(c: &mut Map<String, Value>) {
    let Some(r) = c.get_mut("resources").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(limits) = r.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    if limits.is_empty() {
        return;
    }
    if !r.get("requests").is_some_and(Value::is_object) {
        r.insert("requests".into(), json!({}));
    }
    if let Some(req) = r.get_mut("requests").and_then(Value::as_object_mut) {
        for (k, v) in limits {
            req.entry(k).or_insert(v);
        }
    }
}

/// Defaults of a pod spec (also inside templates).
pub fn pod_spec(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    set(m, "restartPolicy", json!("Always"));
    set(m, "dnsPolicy", json!("ClusterFirst"));
    set(m, "terminationGracePeriodSeconds", json!(30));
    set(m, "schedulerName", json!("default-scheduler"));
    set(m, "securityContext", json!({}));
    set(m, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = m.get_mut(list) {
            cs.iter_mut().for_each(container);
        }
    }
}

fn template(spec: &mut Map<String, Value>) {
    if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        pod_spec(t);
    }
}

/// Applies the defaults of `kind` to `obj` in place.
pub fn apply(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
            }
        }
        "PriorityClass" => {
            if let Some(m) = obj.as_object_mut() {
                set(m, "preemptionPolicy", json!("PreemptLowerPriority"));
            }
        }
        "Namespace" => {
            if !obj.get("spec").is_some_and(Value::is_object) {
                obj["spec"] = json!({});
            }
            if let Some(spec) = field_map(obj, "spec") {
                set(spec, "finalizers", json!(["kubernetes"]));
            }
        }
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            let mutating = kind.starts_with("Mutating");
            if let Some(Value::Array(hooks)) = obj.get_mut("webhooks") {
                for h in hooks.iter_mut().filter_map(Value::as_object_mut) {
                    set(h, "failurePolicy", json!("Fail"));
                    set(h, "matchPolicy", json!("Equivalent"));
                    set(h, "namespaceSelector", json!({}));
                    set(h, "objectSelector", json!({}));
                    set(h, "timeoutSeconds", json!(10));
                    if mutating {
                        set(h, "reinvocationPolicy", json!("Never"));
                    }
                    if let Some(Value::Array(rules)) = h.get_mut("rules") {
                        for r in rules.iter_mut().filter_map(Value::as_object_mut) {
                            set(r, "scope", json!("*"));
                        }
                    }
                }
            }
        }
        "LimitRange" => {
            if let Some(Value::Array(items)) = obj.pointer_mut("/spec/limits") {
                items.iter_mut().for_each(limit_range_item);
            }
        }
        "Deployment" => {
            let Some(spec) = field_map(obj, "spec") else {
                return;
            };
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            set(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            template(spec);
        }
        "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            let Some(spec) = field_map(obj, "spec") else {
                return;
            };
            if kind == "ReplicaSet" || kind == "StatefulSet" {
                set(spec, "replicas", json!(1));
            }
            template(spec);
        }
        "Service" => {
            let Some(spec) = field_map(obj, "spec") else {
                return;
            };
            set(spec, "type", json!("ClusterIP"));
            set(spec, "sessionAffinity", json!("None"));
            if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set(p, "targetPort", port);
                    }
                }
            }
        }
        _ => {}
    }
}

/// A Container item's `default` comes from `max`, its `defaultRequest` from
/// `default`, then from `min` (Kubernetes' `SetDefaults_LimitRangeItem`).
fn limit_range_item(item: &mut Value) {
    let Some(m) = item.as_object_mut() else {
        return;
    };
    if m.get("type").and_then(Value::as_str) != Some("Container") {
        return;
    }
    let copy = |m: &mut Map<String, Value>, from: &str, to: &str| {
        let Some(src) = m.get(from).and_then(Value::as_object).cloned() else {
            return;
        };
        if !m.get(to).is_some_and(Value::is_object) {
            m.insert(to.to_string(), json!({}));
        }
        if let Some(dst) = m.get_mut(to).and_then(Value::as_object_mut) {
            for (k, v) in src {
                dst.entry(k).or_insert(v);
            }
        }
    };
    copy(m, "max", "default");
    copy(m, "default", "defaultRequest");
    copy(m, "min", "defaultRequest");
}

/// A pod's QoS class: `Guaranteed` if every container has equal cpu and
/// memory requests and limits, `BestEffort` if none has any, else `Burstable`.
pub fn qos_class(pod: &Value) -> &'static str {
    use crate::quantity::from_json;
    let mut any = false;
    let mut guaranteed = true;
    for list in ["containers", "initContainers"] {
        let Some(cs) = pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for c in cs {
            for res in ["cpu", "memory"] {
                let req = c.pointer(&format!("/resources/requests/{res}"));
                let lim = c.pointer(&format!("/resources/limits/{res}"));
                let nonzero = |v: Option<&Value>| {
                    v.and_then(|q| from_json(q).ok())
                        .is_some_and(|q| !q.is_zero())
                };
                any |= nonzero(req) || nonzero(lim);
                let equal = match (req.map(from_json), lim.map(from_json)) {
                    (Some(Ok(r)), Some(Ok(l))) => r == l && !l.is_zero(),
                    _ => false,
                };
                guaranteed &= equal;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_defaults_fill_only_what_is_missing() {
        let mut d = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
            {"name": "a", "image": "nginx"}, {"name": "b", "image": "busybox:1.36", "imagePullPolicy": "Never"}
        ]}}}});
        apply("Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["imagePullPolicy"], "Always");
        assert_eq!(cs[1]["imagePullPolicy"], "Never");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn service_ports_default_their_target() {
        let mut s =
            json!({"spec": {"ports": [{"port": 80}, {"port": 443, "targetPort": "https"}]}});
        apply("Service", &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(s["spec"]["ports"][1]["targetPort"], "https");
        assert_eq!(pull_policy("registry:5000/app"), "Always");
        assert_eq!(pull_policy("registry:5000/app:v1"), "IfNotPresent");
    }

    #[test]
    fn pod_defaults_as_kubernetes_sets_them() {
        let mut p = json!({"spec": {"containers": [{"name": "a", "image": "nginx:1.25",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}},
            "readinessProbe": {"httpGet": {"path": "/", "port": 80}}}]}});
        apply("Pod", &mut p);
        let spec = &p["spec"];
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "500m", "memory": "1Gi"})
        );
        assert_eq!(c["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(qos_class(&p), "Burstable");
        let g = json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        assert_eq!(
            qos_class(&json!({"spec": {"containers": [{}]}})),
            "BestEffort"
        );
    }

    #[test]
    fn namespaces_and_limit_ranges() {
        let mut ns = json!({"metadata": {"name": "x"}});
        apply("Namespace", &mut ns);
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        let mut lr = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "1Mi"}},
            {"type": "Pod", "max": {"cpu": "4"}},
        ]}});
        apply("LimitRange", &mut lr);
        let c = &lr["spec"]["limits"][0];
        assert_eq!(c["default"], json!({"cpu": "2"}));
        assert_eq!(c["defaultRequest"], json!({"cpu": "2", "memory": "1Mi"}));
        assert!(lr["spec"]["limits"][1].get("default").is_none());
    }
}
