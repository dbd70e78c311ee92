//! Admission end-to-end with the real kubectl: namespace lifecycle and
//! termination, service accounts and their token volume, LimitRange
//! defaults and bounds, ResourceQuota counts, messages and concurrency,
//! AlwaysPullImages as an opt-in plugin.

use std::time::{Duration, Instant};

use keel_tests::kube::KubeApi;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn get_json(api: &KubeApi, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    json(&api.kubectl_ok(&a))
}

/// Polls `f` until it returns true or `secs` pass.
#[track_caller]
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn apply(api: &KubeApi, yaml: &str) -> keel_tests::CtlOutput {
    api.kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
}

const HELD_CM: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: held
  namespace: doomed
  finalizers: ["example.com/hold"]
"#;

/// Creating in a missing namespace; `delete ns` turning it `Terminating`
/// while its content goes (new content refused), then removing it once a
/// finalizer lets go; a plain `kubectl delete ns` returning with the
/// namespace gone; the system namespaces cannot be deleted.
#[test]
fn namespace_lifecycle_and_termination() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl(&["-n", "nowhere", "create", "configmap", "x"])
        .fails_with("namespaces \"nowhere\" not found");
    let pod = POD
        .replace("NAME", "p")
        .replace("namespace: quota", "namespace: nowhere");
    apply(&api, &pod).fails_with("Error from server (NotFound): error when creating \"STDIN\": namespaces \"nowhere\" not found");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        api.kubectl(&["delete", "ns", ns]).fails_with(&format!(
            "namespaces \"{ns}\" is forbidden: this namespace may not be deleted"
        ));
    }

    api.kubectl_ok(&["create", "ns", "doomed"]);
    let ns = get_json(&api, &["ns", "doomed"]);
    assert_eq!(ns["spec"]["finalizers"], serde_json::json!(["kubernetes"]));
    api.kubectl_ok(&["-n", "doomed", "create", "configmap", "plain"]);
    api.kubectl_ok(&["-n", "doomed", "create", "secret", "generic", "s1"]);
    apply(&api, HELD_CM).ok();
    api.kubectl_ok(&["delete", "ns", "doomed", "--wait=false"]);
    let ns = get_json(&api, &["ns", "doomed"]);
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");
    let table = api.kubectl_ok(&["get", "ns", "doomed"]);
    assert!(table.contains("Terminating"), "{table}");
    api.kubectl(&["-n", "doomed", "create", "configmap", "late"])
        .fails_with("configmaps \"late\" is forbidden: unable to create new content in namespace doomed because it is being terminated");
    // The content goes in the background, except what a finalizer holds.
    eventually(10, "the namespace's content to go", || {
        api.kubectl_ok(&["-n", "doomed", "get", "cm,secrets,sa", "-o", "name"])
            == "configmap/held\n"
    });
    assert_eq!(
        api.kubectl_ok(&["get", "ns", "doomed", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    api.kubectl_ok(&[
        "-n",
        "doomed",
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    eventually(10, "the namespace to go", || {
        !api.kubectl(&["get", "ns", "doomed"]).success()
    });
    api.kubectl(&["get", "ns", "doomed"])
        .fails_with("namespaces \"doomed\" not found");

    // The waiting form returns once it is gone.
    api.kubectl_ok(&["create", "ns", "quick"]);
    api.kubectl_ok(&["-n", "quick", "create", "configmap", "c"]);
    let start = Instant::now();
    assert_eq!(
        api.kubectl_ok(&["delete", "ns", "quick"]),
        "namespace \"quick\" deleted\n"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    api.kubectl(&["get", "ns", "quick"]).fails_with("not found");
    assert_eq!(
        api.kubectl_ok(&[
            "get",
            "cm",
            "-A",
            "--field-selector",
            "metadata.namespace=quick",
            "-o",
            "name"
        ]),
        ""
    );
}

const BUILDER_SA: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: builder
  namespace: apps
automountServiceAccountToken: false
imagePullSecrets:
- name: regcred
"#;

/// Every namespace gets a `default` service account and `kube-root-ca.crt`;
/// pods get the account, the token volume and its mounts, tolerations and
/// Kubernetes' defaults; a missing account is refused; an account's
/// automount setting and pull secrets are respected.
#[test]
fn service_accounts_and_pod_defaults() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "apps"]);
    // No waiting: admission gives the controller time to create `default`.
    api.kubectl_ok(&["-n", "apps", "run", "web", "--image=nginx"]);
    let pod = get_json(&api, &["-n", "apps", "pod", "web"]);
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "default", "{pod}");
    assert_eq!(spec["serviceAccount"], "default");
    let vol = &spec["volumes"][0];
    let vname = vol["name"].as_str().unwrap_or("");
    assert!(
        vname.starts_with("kube-api-access-") && vname.len() == "kube-api-access-".len() + 5,
        "{vol}"
    );
    assert_eq!(
        vol["projected"],
        serde_json::json!({
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        })
    );
    let c = &spec["containers"][0];
    assert_eq!(
        c["volumeMounts"][0],
        serde_json::json!({"name": vname, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    );
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["terminationMessagePolicy"], "File");
    let tolerations = spec["tolerations"].to_string();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        assert!(tolerations.contains(key), "{tolerations}");
    }
    assert_eq!(spec["tolerations"][0]["tolerationSeconds"], 300);
    assert_eq!(spec["priority"], 0);
    assert_eq!(spec["enableServiceLinks"], true);
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["schedulerName"], "default-scheduler");
    assert_eq!(pod["status"]["qosClass"], "BestEffort");

    assert_eq!(
        api.kubectl_ok(&["-n", "apps", "get", "sa", "-o", "name"]),
        "serviceaccount/default\n"
    );
    let ca = api.kubectl_ok(&[
        "-n",
        "apps",
        "get",
        "cm",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    api.kubectl(&[
        "-n",
        "apps",
        "run",
        "lost",
        "--image=busybox:1.36",
        "--overrides",
        r#"{"spec":{"serviceAccountName":"missing"}}"#,
    ])
    .fails_with("pods \"lost\" is forbidden: error looking up service account apps/missing: serviceaccount \"missing\" not found");

    apply(&api, BUILDER_SA).ok();
    api.kubectl_ok(&[
        "-n",
        "apps",
        "run",
        "build",
        "--image=busybox:1.36",
        "--overrides",
        r#"{"spec":{"serviceAccountName":"builder"}}"#,
    ]);
    let pod = get_json(&api, &["-n", "apps", "pod", "build"]);
    assert!(pod["spec"].get("volumes").is_none(), "{pod}");
    assert!(
        pod["spec"]["containers"][0].get("volumeMounts").is_none()
            || pod["spec"]["containers"][0]["volumeMounts"] == serde_json::json!([])
    );
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    assert_eq!(
        pod["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );

    // Priority: from the pod's PriorityClass; unknown classes are refused.
    let pcs = api.kubectl_ok(&["get", "priorityclasses", "-o", "name"]);
    assert_eq!(
        pcs,
        "priorityclass.scheduling.k8s.io/system-cluster-critical\npriorityclass.scheduling.k8s.io/system-node-critical\n"
    );
    api.kubectl_ok(&[
        "-n",
        "apps",
        "run",
        "crit",
        "--image=busybox:1.36",
        "--overrides",
        r#"{"spec":{"priorityClassName":"system-cluster-critical"}}"#,
    ]);
    let pod = get_json(&api, &["-n", "apps", "pod", "crit"]);
    assert_eq!(pod["spec"]["priority"], 2_000_000_000_i64);
    assert_eq!(pod["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    api.kubectl(&[
        "-n",
        "apps",
        "run",
        "nope",
        "--image=busybox:1.36",
        "--overrides",
        r#"{"spec":{"priorityClassName":"nope"}}"#,
    ])
    .fails_with("pods \"nope\" is forbidden: no PriorityClass with name nope was found");

    // A deleted default account comes back.
    api.kubectl_ok(&["-n", "apps", "delete", "sa", "default"]);
    eventually(15, "the default service account to come back", || {
        api.kubectl(&["-n", "apps", "get", "sa", "default"])
            .success()
    });
}

const LIMITS: &str = r#"apiVersion: v1
kind: LimitRange
metadata:
  name: limits
  namespace: lr
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 128Mi}
    defaultRequest: {cpu: 100m}
    max: {cpu: "1"}
    min: {memory: 16Mi}
"#;

const BIG: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: big, namespace: lr}
spec:
  containers:
  - name: app
    image: busybox:1.36
    resources:
      limits: {cpu: "2"}
"#;

/// LimitRange defaults fill in missing requests and limits; `max` and
/// `min` refuse pods with Kubernetes' messages.
#[test]
fn limit_range_defaults_and_bounds() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "lr"]);
    apply(&api, LIMITS).ok();
    api.kubectl_ok(&["-n", "lr", "run", "small", "--image=busybox:1.36"]);
    let pod = get_json(&api, &["-n", "lr", "pod", "small"]);
    let r = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(
        r["limits"],
        serde_json::json!({"cpu": "500m", "memory": "128Mi"}),
        "{pod}"
    );
    assert_eq!(
        r["requests"],
        serde_json::json!({"cpu": "100m", "memory": "128Mi"})
    );
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container small; cpu, memory limit for container small"
    );
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    apply(&api, BIG).fails_with(
        "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2",
    );
    let tiny = BIG
        .replace("name: big", "name: tiny")
        .replace("limits: {cpu: \"2\"}", "limits: {memory: 8Mi}");
    apply(&api, &tiny).fails_with(
        "pods \"tiny\" is forbidden: minimum memory usage per Container is 16Mi, but request is 8Mi",
    );
    api.kubectl(&["-n", "lr", "get", "pod", "big"])
        .fails_with("not found");
}

/// The API server's count of requests sent to the store
/// (`keel_apiserver_store_requests_total`, all operations).
fn store_requests(api: &KubeApi) -> u64 {
    api.kubectl_ok(&["get", "--raw", "/metrics"])
        .lines()
        .filter(|l| l.starts_with("keel_apiserver_store_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The admission plugins' reads of a pod create (namespace, LimitRanges,
/// service account, PriorityClasses, webhook configurations, quotas) go to
/// the store together in one round trip, and the create in one more: ten
/// creates cost about 20 store requests, where one read per plugin cost
/// over 90.
#[test]
fn pod_create_reads_the_store_in_one_round_trip() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "reads"]);
    eventually(30, "the default service account", || {
        api.kubectl(&["-n", "reads", "get", "sa", "default"])
            .success()
    });
    apply(&api, &LIMITS.replace("namespace: lr", "namespace: reads")).ok();
    let before = store_requests(&api);
    for i in 0..10 {
        api.kubectl_ok(&[
            "-n",
            "reads",
            "run",
            &format!("p{i}"),
            "--image=busybox:1.36",
        ]);
    }
    let sent = store_requests(&api) - before;
    // The LimitRange was read: its defaults are on the pods.
    let pod = get_json(&api, &["-n", "reads", "pod", "p9"]);
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["cpu"], "500m",
        "{pod}"
    );
    assert!(
        sent <= 40,
        "10 pod creates sent {sent} requests to the store"
    );
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: quota}
spec:
  containers:
  - name: app
    image: busybox:1.36
"#;

fn pod(name: &str) -> String {
    POD.replace("NAME", name)
}

/// A quota of two pods refuses the third with Kubernetes' exact message,
/// shows its usage in `kubectl describe quota`, lowers it after a delete;
/// compute quotas need every container to state the resource.
#[test]
fn resource_quota_counts_and_messages() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "quota"]);
    api.kubectl_ok(&["-n", "quota", "create", "quota", "q", "--hard=pods=2"]);
    apply(&api, &pod("p1")).ok();
    apply(&api, &pod("p2")).ok();
    apply(&api, &pod("p3")).fails_with(
        "Error from server (Forbidden): error when creating \"STDIN\": pods \"p3\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2",
    );
    let q = get_json(&api, &["-n", "quota", "quota", "q"]);
    assert_eq!(q["status"]["used"]["pods"], "2", "{q}");
    assert_eq!(q["status"]["hard"]["pods"], "2", "{q}");
    let described = api.kubectl_ok(&["-n", "quota", "describe", "quota", "q"]);
    let row = described
        .lines()
        .find(|l| l.starts_with("pods"))
        .unwrap_or_default();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["pods", "2", "2"],
        "{described}"
    );
    // Deletions lower usage (the recalculation loop), so p3 fits then.
    api.kubectl_ok(&["-n", "quota", "delete", "pod", "p1"]);
    eventually(10, "usage to drop after a delete", || {
        api.kubectl_ok(&[
            "-n",
            "quota",
            "get",
            "quota",
            "q",
            "-o",
            "jsonpath={.status.used.pods}",
        ]) == "1"
    });
    apply(&api, &pod("p3")).ok();

    // Compute quotas: containers must state what is limited.
    api.kubectl_ok(&[
        "-n",
        "quota",
        "create",
        "quota",
        "compute",
        "--hard=requests.cpu=1,limits.memory=1Gi",
    ]);
    api.kubectl_ok(&["-n", "quota", "delete", "quota", "q"]);
    apply(&api, &pod("bare")).fails_with(
        "pods \"bare\" is forbidden: failed quota: compute: must specify limits.memory for: app; requests.cpu for: app",
    );
    let sized = |name: &str, cpu: &str| {
        pod(name).replace(
            "    image: busybox:1.36\n",
            &format!("    image: busybox:1.36\n    resources:\n      requests: {{cpu: {cpu}}}\n      limits: {{memory: 256Mi}}\n"),
        )
    };
    apply(&api, &sized("c1", "600m")).ok();
    apply(&api, &sized("c2", "600m")).fails_with(
        "exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1",
    );
    apply(&api, &sized("c3", "400m")).ok();
    let mut last = Value::Null;
    eventually(10, "compute usage", || {
        last = get_json(&api, &["-n", "quota", "quota", "compute"]);
        last["status"]["used"] == serde_json::json!({"requests.cpu": "1", "limits.memory": "512Mi"})
    });
    let table = api.kubectl_ok(&["-n", "quota", "get", "quota", "compute"]);
    assert!(
        table.contains("requests.cpu: 1/1") && table.contains("limits.memory: 512Mi/1Gi"),
        "{table}\n{last}"
    );

    // Scopes: a BestEffort quota counts only best-effort pods (p2, p3).
    api.kubectl_ok(&["-n", "quota", "delete", "quota", "compute"]);
    api.kubectl_ok(&[
        "-n",
        "quota",
        "create",
        "quota",
        "be",
        "--hard=pods=2",
        "--scopes=BestEffort",
    ]);
    apply(&api, &pod("p4")).fails_with(
        "pods \"p4\" is forbidden: exceeded quota: be, requested: pods=1, used: pods=2, limited: pods=2",
    );
    apply(&api, &sized("c4", "100m")).ok();

    // Updates are charged what they add: a service turned NodePort.
    api.kubectl_ok(&[
        "-n",
        "quota",
        "create",
        "quota",
        "ports",
        "--hard=services.nodeports=1",
    ]);
    api.kubectl_ok(&[
        "-n",
        "quota",
        "create",
        "service",
        "clusterip",
        "a",
        "--tcp=80:80",
        "--tcp=81:81",
    ]);
    api.kubectl(&["-n", "quota", "patch", "svc", "a", "-p", r#"{"spec":{"type":"NodePort"}}"#])
        .fails_with("services \"a\" is forbidden: exceeded quota: ports, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1");
    api.kubectl_ok(&[
        "-n",
        "quota",
        "create",
        "service",
        "nodeport",
        "b",
        "--tcp=80:80",
    ]);
    assert_eq!(
        api.kubectl_ok(&[
            "-n",
            "quota",
            "get",
            "quota",
            "ports",
            "-o",
            "jsonpath={.status.used.services\\.nodeports}",
        ]),
        "1"
    );
}

/// Concurrent creates through two API servers never take a namespace past
/// its quota (the charge is a compare-and-swap in the create's transaction).
#[test]
fn concurrent_creates_do_not_exceed_quota() {
    let Some(mut api) = KubeApi::start_or_skip() else {
        return;
    };
    let second = api.add_apiserver().expect("second apiserver");
    api.kubectl_ok(&["create", "ns", "race"]);
    api.kubectl_ok(&["-n", "race", "create", "quota", "few", "--hard=secrets=5"]);
    let children: Vec<_> = (0..12)
        .map(|i| {
            let mut cmd = api.kubectl_cmd(&[
                "-n",
                "race",
                "create",
                "secret",
                "generic",
                &format!("s{i}"),
            ]);
            if i % 2 == 1 {
                cmd.env("KUBECONFIG", &second);
            }
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn kubectl")
        })
        .collect();
    let mut created = 0;
    for c in children {
        let out = c.wait_with_output().expect("kubectl");
        if out.status.success() {
            created += 1;
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("exceeded quota: few"), "{err}");
        }
    }
    assert_eq!(created, 5);
    let names = api.kubectl_ok(&["-n", "race", "get", "secrets", "-o", "name"]);
    assert_eq!(names.lines().count(), 5, "{names}");
    let used = api.kubectl_ok(&[
        "-n",
        "race",
        "get",
        "quota",
        "few",
        "-o",
        "jsonpath={.status.used.secrets}",
    ]);
    assert_eq!(used, "5");
}

/// `--enable-admission-plugins=AlwaysPullImages` makes every container pull.
#[test]
fn always_pull_images_when_enabled() {
    let Some(api) =
        KubeApi::start_with_args_or_skip(&["--enable-admission-plugins=AlwaysPullImages"])
    else {
        return;
    };
    api.kubectl_ok(&[
        "-n",
        "default",
        "run",
        "p",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
    ]);
    let pod = get_json(&api, &["-n", "default", "pod", "p"]);
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
}

/// The webhook server's decisions: pods get a label (JSONPatch),
/// configmaps named `bad…` are denied.
fn decide(req: &Value) -> Value {
    match req["resource"]["resource"].as_str() {
        Some("pods") => {
            let ops = if req["object"]["metadata"]["labels"].is_object() {
                serde_json::json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
            } else {
                serde_json::json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
            };
            keel_tests::webhook::patch_response(&ops)
        }
        _ => {
            let name = req["object"]["metadata"]["name"].as_str().unwrap_or("");
            if name.starts_with("bad") {
                serde_json::json!({"allowed": false, "status": {"code": 403,
                    "message": format!("names starting with bad are not allowed: {name}")}})
            } else {
                serde_json::json!({"allowed": true})
            }
        }
    }
}

/// The service (and its endpoints) the mutating webhook is reached through.
const HOOK_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: hooksvc, namespace: hooks}
spec:
  ports: [{name: https, port: 443, targetPort: PORT}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: hooksvc, namespace: hooks}
subsets:
- addresses: [{ip: 127.0.0.1}]
  ports: [{name: https, port: PORT}]
"#;

const WEBHOOKS: &str = r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: label-pods}
webhooks:
- name: label.keel.test
  clientConfig:
    service: {namespace: hooks, name: hooksvc, path: /mutate, port: 443}
    caBundle: "CA"
  rules: [{operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"]}]
  sideEffects: None
  admissionReviewVersions: ["v1"]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: checks}
webhooks:
- name: names.keel.test
  clientConfig: {url: "URL/validate", caBundle: "CA"}
  rules: [{operations: ["CREATE", "UPDATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"]}]
  namespaceSelector: {matchLabels: {webhooks: "on"}}
  sideEffects: None
  admissionReviewVersions: ["v1"]
- name: down.keel.test
  clientConfig: {url: "https://127.0.0.1:1/", caBundle: "CA"}
  rules: [{operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["secrets"]}]
  namespaceSelector: {matchLabels: {webhooks: "on"}}
  sideEffects: None
  admissionReviewVersions: ["v1"]
- name: down-ignored.keel.test
  clientConfig: {url: "https://127.0.0.1:1/", caBundle: "CA"}
  rules: [{operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["services"]}]
  failurePolicy: Ignore
  sideEffects: None
  admissionReviewVersions: ["v1"]
"#;

/// Mutating and validating webhooks over HTTPS: a JSONPatch applied (from
/// a webhook reached through a service and its endpoints), a denial with
/// the webhook's message, `namespaceSelector`, and `failurePolicy` Fail
/// and Ignore for an unreachable webhook.
#[test]
fn admission_webhooks() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let hook = keel_tests::webhook::WebhookServer::start_for(decide, &["hooksvc.hooks.svc"])
        .expect("webhook server");
    api.kubectl_ok(&["create", "ns", "hooks"]);
    let service = HOOK_SERVICE.replace("PORT", &hook.port.to_string());
    api.kubectl_stdin(&["create", "-f", "-"], Some(&service))
        .ok();
    api.kubectl_ok(&["label", "ns", "hooks", "webhooks=on"]);
    api.kubectl_ok(&["create", "ns", "plain"]);
    let config = hook.configure(WEBHOOKS);
    api.kubectl_stdin(&["create", "-f", "-"], Some(&config))
        .ok();
    let table = api.kubectl_ok(&["get", "validatingwebhookconfigurations"]);
    assert!(table.contains("checks") && table.contains('3'), "{table}");

    api.kubectl_ok(&[
        "-n",
        "hooks",
        "run",
        "p",
        "--image=busybox:1.36",
        "--labels=app=p",
    ]);
    let pod = get_json(&api, &["-n", "hooks", "pod", "p"]);
    assert_eq!(pod["metadata"]["labels"]["mutated"], "yes", "{pod}");
    assert_eq!(pod["metadata"]["labels"]["app"], "p");

    api.kubectl(&["-n", "hooks", "create", "configmap", "bad-1"]).fails_with(
        "admission webhook \"names.keel.test\" denied the request: names starting with bad are not allowed: bad-1",
    );
    api.kubectl_ok(&["-n", "hooks", "create", "configmap", "good-1"]);
    // The namespace selector: no label, no webhook.
    api.kubectl_ok(&["-n", "plain", "create", "configmap", "bad-2"]);

    api.kubectl(&["-n", "hooks", "create", "secret", "generic", "s"])
        .fails_with("failed calling webhook \"down.keel.test\"");
    api.kubectl_ok(&["-n", "plain", "create", "secret", "generic", "s"]);
    api.kubectl_ok(&[
        "-n",
        "hooks",
        "create",
        "service",
        "clusterip",
        "svc",
        "--tcp=80:80",
    ]);
}
