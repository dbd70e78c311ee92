//! Defaulting: the fields Kubernetes fills in on create and update when a
//! client leaves them out, for the kinds users create most (pods and pod
//! templates, deployments, replica sets, services). Only fields that are
//! absent are set.

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
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set(p, "protocol", json!("TCP"));
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
}
