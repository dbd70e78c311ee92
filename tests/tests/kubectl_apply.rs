//! Server-side apply with the real kubectl: `apply --server-side` (create,
//! change, drop a field), conflicts between managers and
//! `--force-conflicts`, the move from client-side apply, `--dry-run=server`,
//! and `managedFields` as `get --show-managed-fields` shows them.

use keel_tests::kube::KubeApi;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn get_managed(api: &KubeApi, what: &str) -> Value {
    json(&api.kubectl_ok(&["get", what, "-o", "json", "--show-managed-fields"]))
}

/// The managedFields entry of `manager` (panics if there is none).
fn entry<'a>(obj: &'a Value, manager: &str) -> &'a Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["manager"] == manager))
        .unwrap_or_else(|| panic!("no managedFields entry for {manager}: {obj}"))
}

fn has_entry(obj: &Value, manager: &str) -> bool {
    obj["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e["manager"] == manager))
}

fn write(api: &KubeApi, name: &str, text: &str) -> String {
    let path = api.scratch().join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.display().to_string()
}

fn deployment(image: &str, replicas: Option<u32>, env: bool) -> String {
    let replicas = replicas
        .map(|r| format!("  replicas: {r}\n"))
        .unwrap_or_default();
    let env = if env {
        "        env:\n        - name: MODE\n          value: fast\n"
    } else {
        ""
    };
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n{replicas}  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: nginx\n        image: {image}\n        ports:\n        - containerPort: 80\n{env}"
    )
}

/// `apply --server-side`: create, change, drop a field; a second manager's
/// conflict (Kubernetes' exact message), `--force-conflicts`, dry runs.
#[test]
fn server_side_apply_flows() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let f = write(&api, "web.yaml", &deployment("nginx:1", Some(2), true));
    assert_eq!(
        api.kubectl_ok(&["apply", "--server-side", "-f", &f]),
        "deployment.apps/web serverside-applied\n"
    );
    let obj = get_managed(&api, "deployment/web");
    let e = entry(&obj, "kubectl");
    assert_eq!(e["operation"], "Apply");
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["fieldsType"], "FieldsV1");
    let containers = &e["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"];
    let nginx = &containers["k:{\"name\":\"nginx\"}"];
    assert_eq!(nginx["."], serde_json::json!({}), "{e}");
    assert_eq!(nginx["f:image"], serde_json::json!({}), "{e}");
    assert!(
        nginx["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object(),
        "{e}"
    );
    assert!(nginx["f:env"]["k:{\"name\":\"MODE\"}"].is_object(), "{e}");
    assert_eq!(e["fieldsV1"]["f:spec"]["f:replicas"], serde_json::json!({}));

    // Change the image and drop the env var and the replicas: the image
    // changes, the dropped fields are removed.
    let f = write(&api, "web.yaml", &deployment("nginx:2", None, false));
    api.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    let obj = get_managed(&api, "deployment/web");
    let c = &obj["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:2");
    assert!(c.get("env").is_none(), "{c}");
    assert!(entry(&obj, "kubectl")["fieldsV1"]["f:spec"]
        .get("f:replicas")
        .is_none());

    // A second manager setting the image differently: a conflict.
    let g = write(&api, "other.yaml", &deployment("nginx:3", Some(4), false));
    let out = api.kubectl(&["apply", "--server-side", "--field-manager=other", "-f", &g]);
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.template.spec.containers[name=\"nginx\"].image"
        ),
        "{}",
        out.stderr
    );
    // A server dry run with force changes nothing.
    api.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "--dry-run=server",
        "-f",
        &g,
    ]);
    let obj = get_managed(&api, "deployment/web");
    assert_eq!(
        obj["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:2"
    );
    assert!(!has_entry(&obj, "other"));
    // Forced: the value and the ownership move to "other".
    api.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &g,
    ]);
    let obj = get_managed(&api, "deployment/web");
    assert_eq!(
        obj["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:3"
    );
    assert_eq!(obj["spec"]["replicas"], 4);
    let mine = &entry(&obj, "kubectl")["fieldsV1"]["f:spec"]["f:template"]["f:spec"]
        ["f:containers"]["k:{\"name\":\"nginx\"}"];
    assert!(mine.get("f:image").is_none(), "{mine}");
    let theirs = &entry(&obj, "other")["fieldsV1"]["f:spec"];
    assert!(theirs["f:replicas"].is_object(), "{theirs}");
    // The YAML view kubectl users read.
    let yaml = api.kubectl_ok(&[
        "get",
        "deployment/web",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    for needle in [
        "managedFields:",
        "manager: other",
        "operation: Apply",
        "fieldsType: FieldsV1",
        "f:replicas: {}",
    ] {
        assert!(yaml.contains(needle), "{needle} missing in\n{yaml}");
    }
    assert!(!api
        .kubectl_ok(&["get", "deployment/web", "-o", "yaml"])
        .contains("managedFields"));
}

/// `kubectl apply` (client side), then `--server-side`: kubectl moves the
/// fields to the `kubectl` applier, so a later drop removes them; updates
/// are recorded under kubectl's manager names; a client-side applier's
/// field conflicts as Kubernetes words it.
#[test]
fn client_side_apply_then_server_side() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let cm = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n{data}")
    };
    let f = write(&api, "cm.yaml", &cm("  a: \"1\"\n  b: \"2\"\n"));
    assert_eq!(
        api.kubectl_ok(&["apply", "-f", &f]),
        "configmap/settings created\n"
    );
    let obj = get_managed(&api, "cm/settings");
    let csa = entry(&obj, "kubectl-client-side-apply");
    assert_eq!(csa["operation"], "Update");
    assert_eq!(csa["apiVersion"], "v1");
    assert!(csa["fieldsV1"]["f:data"]["f:a"].is_object(), "{csa}");

    // Another manager changing a client-side-applied field: a conflict.
    let g = write(&api, "other.yaml", &cm("  a: \"9\"\n"));
    api.kubectl(&["apply", "--server-side", "--field-manager=other", "-f", &g])
        .fails_with("Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1: .data.a");

    // The move to server-side apply, then a dropped key is removed.
    let f = write(&api, "cm.yaml", &cm("  a: \"1\"\n  b: \"3\"\n"));
    api.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    let obj = get_managed(&api, "cm/settings");
    assert_eq!(obj["data"]["b"], "3");
    assert_eq!(entry(&obj, "kubectl")["operation"], "Apply");
    let f = write(&api, "cm.yaml", &cm("  a: \"1\"\n"));
    api.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    let obj = get_managed(&api, "cm/settings");
    assert_eq!(obj["data"], serde_json::json!({"a": "1"}), "{obj}");

    // Updates: kubectl's manager names.
    api.kubectl_ok(&["label", "cm/settings", "tier=x"]);
    api.kubectl_ok(&["create", "configmap", "plain", "--from-literal=k=v"]);
    let obj = get_managed(&api, "cm/settings");
    assert!(
        entry(&obj, "kubectl-label")["fieldsV1"]["f:metadata"]["f:labels"]["f:tier"].is_object()
    );
    let plain = get_managed(&api, "cm/plain");
    let e = entry(&plain, "kubectl-create");
    assert_eq!(e["operation"], "Update");
    assert!(e["fieldsV1"]["f:data"]["f:k"].is_object(), "{e}");
    assert!(e["time"].is_string());
}

/// Update managers as Kubernetes names them: `kubectl edit` →
/// `kubectl-edit` (taking the field from `kubectl-create`), a request
/// without `fieldManager` → its user agent's name (`kubectl`), and
/// `status` written by a server-side apply is not the main resource's.
#[test]
fn update_managers() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "configmap", "ed", "--from-literal=k=first"]);
    let out = api
        .kubectl_cmd(&["edit", "configmap/ed"])
        .env("KUBE_EDITOR", "sed -i s/first/second/")
        .output()
        .expect("kubectl edit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let obj = get_managed(&api, "cm/ed");
    assert_eq!(obj["data"]["k"], "second");
    let edit = entry(&obj, "kubectl-edit");
    assert_eq!(edit["operation"], "Update");
    assert!(edit["fieldsV1"]["f:data"]["f:k"].is_object(), "{edit}");
    // The create's entry lost the field; it keeps the data map itself.
    assert_eq!(
        entry(&obj, "kubectl-create")["fieldsV1"],
        serde_json::json!({"f:data": {}})
    );

    let raw = write(
        &api,
        "raw.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"raw"},"data":{"a":"b"}}"#,
    );
    api.kubectl_ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &raw,
    ]);
    let obj = get_managed(&api, "cm/raw");
    assert!(entry(&obj, "kubectl")["fieldsV1"]["f:data"]["f:a"].is_object());
    assert_eq!(entry(&obj, "kubectl")["operation"], "Update");
}

/// Services (ports keyed by port and protocol) and pods (fields added by
/// admission and defaults are no one's to remove) under server-side apply.
#[test]
fn services_and_pods() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let svc = |ports: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  selector:\n    app: web\n  ports:\n{ports}")
    };
    let two = "  - name: http\n    port: 80\n  - name: https\n    port: 443\n";
    let f = write(&api, "svc.yaml", &svc(two));
    api.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    let obj = get_managed(&api, "svc/front");
    let ip = obj["spec"]["clusterIP"].clone();
    assert!(ip.is_string(), "{obj}");
    let ports = &entry(&obj, "kubectl")["fieldsV1"]["f:spec"]["f:ports"];
    assert!(
        ports["k:{\"port\":443,\"protocol\":\"TCP\"}"].is_object(),
        "{ports}"
    );
    let f = write(&api, "svc.yaml", &svc("  - name: http\n    port: 80\n"));
    api.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    let obj = get_managed(&api, "svc/front");
    assert_eq!(
        obj["spec"]["ports"].as_array().map(Vec::len),
        Some(1),
        "{obj}"
    );
    assert_eq!(obj["spec"]["clusterIP"], ip);

    let pod = |image: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: {image}\n")
    };
    let f = write(&api, "pod.yaml", &pod("busybox:1"));
    api.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    let f = write(&api, "pod.yaml", &pod("busybox:2"));
    api.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    let obj = get_managed(&api, "pod/p");
    let c = &obj["spec"]["containers"][0];
    assert_eq!(c["image"], "busybox:2");
    assert!(
        c["volumeMounts"].is_array(),
        "service account mount kept: {c}"
    );
    assert!(obj["spec"]["volumes"].is_array(), "{obj}");
}
