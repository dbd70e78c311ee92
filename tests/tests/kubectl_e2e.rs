//! kubectl end-to-end: a real `keel store` and `keel apiserver` started as
//! processes, a kubeconfig from `keel kubeconfig`, and the real kubectl
//! (`/usr/bin/kubectl`, `$KUBECTL_BIN` overrides) driving them.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

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

/// `kubectl get ns`, `create ns`, `create configmap` (a protobuf body),
/// `get -o json`, `label`, `annotate`, selectors, `--chunk-size`,
/// `--dry-run=server`, `delete`, and the errors kubectl users see.
#[test]
fn namespaces_and_configmaps() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let ns = api.kubectl_ok(&["get", "ns"]);
    for system in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(system), "{ns}");
    }
    assert!(ns.starts_with("NAME") && ns.contains("Active"), "{ns}");
    assert_eq!(
        api.kubectl_ok(&["create", "ns", "demo"]),
        "namespace/demo created\n"
    );
    api.kubectl(&["create", "ns", "demo"])
        .fails_with("namespaces \"demo\" already exists");

    let cm = "configmap/c1 created\n";
    assert_eq!(
        api.kubectl_ok(&[
            "-n",
            "demo",
            "create",
            "configmap",
            "c1",
            "--from-literal=a=b"
        ]),
        cm
    );
    let obj = get_json(&api, &["-n", "demo", "cm", "c1"]);
    assert_eq!(obj["data"]["a"], "b");
    assert_eq!(obj["kind"], "ConfigMap");
    assert_eq!(obj["metadata"]["namespace"], "demo");
    let rv: i64 = obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion");
    assert!(rv > 0);
    assert_eq!(obj["metadata"]["uid"].as_str().map(str::len), Some(36));
    assert!(obj["metadata"]["creationTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    assert_eq!(
        api.kubectl_ok(&["-n", "demo", "label", "cm", "c1", "tier=web"]),
        "configmap/c1 labeled\n"
    );
    assert_eq!(
        api.kubectl_ok(&["-n", "demo", "annotate", "cm", "c1", "note=hi"]),
        "configmap/c1 annotated\n"
    );
    api.kubectl_ok(&["-n", "demo", "create", "configmap", "c2"]);
    api.kubectl_ok(&["-n", "demo", "create", "configmap", "c3"]);
    let names = |sel: &str| api.kubectl_ok(&["-n", "demo", "get", "cm", "-l", sel, "-o", "name"]);
    assert_eq!(names("tier=web"), "configmap/c1\n");
    assert_eq!(
        names("tier!=web"),
        "configmap/c2\nconfigmap/c3\nconfigmap/kube-root-ca.crt\n"
    );
    assert_eq!(names("tier in (web,db)"), "configmap/c1\n");
    // Every namespace holds the cluster CA (kube-root-ca.crt).
    assert_eq!(
        names("!tier"),
        "configmap/c2\nconfigmap/c3\nconfigmap/kube-root-ca.crt\n"
    );
    let obj = get_json(&api, &["-n", "demo", "cm", "c1"]);
    assert_eq!(obj["metadata"]["annotations"]["note"], "hi");
    // limit/continue, one object per page.
    let chunked = api.kubectl_ok(&["-n", "demo", "get", "cm", "--chunk-size=1", "-o", "name"]);
    assert_eq!(
        chunked,
        "configmap/c1\nconfigmap/c2\nconfigmap/c3\nconfigmap/kube-root-ca.crt\n"
    );
    // resourceVersion=0 ("any", what informers use) is served from the watch cache.
    let cached = json(&api.kubectl_ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/demo/configmaps?resourceVersion=0&labelSelector=tier%3Dweb",
    ]));
    assert_eq!(
        cached["items"].as_array().map(Vec::len),
        Some(1),
        "{cached}"
    );
    assert_eq!(cached["items"][0]["metadata"]["name"], "c1");
    let by_field = api.kubectl_ok(&[
        "get",
        "cm",
        "-A",
        "--field-selector",
        "metadata.name=c2",
        "-o",
        "name",
    ]);
    assert_eq!(by_field, "configmap/c2\n");
    // Tables: the familiar columns.
    let table = api.kubectl_ok(&["-n", "demo", "get", "cm", "c1"]);
    assert!(
        table.starts_with("NAME") && table.contains("DATA") && table.contains("AGE"),
        "{table}"
    );

    // dryRun=All writes nothing.
    api.kubectl_ok(&[
        "-n",
        "demo",
        "create",
        "configmap",
        "dry",
        "--dry-run=server",
    ]);
    api.kubectl(&["-n", "demo", "get", "cm", "dry"])
        .fails_with("NotFound");

    // Errors are Kubernetes Statuses.
    api.kubectl(&["-n", "nowhere", "create", "configmap", "x"])
        .fails_with("namespaces \"nowhere\" not found");
    api.kubectl(&["-n", "demo", "create", "configmap", "Bad_Name"])
        .fails_with("is invalid: metadata.name: Invalid value");
    api.kubectl(&["delete", "ns", "default"])
        .fails_with("Forbidden");

    assert_eq!(
        api.kubectl_ok(&["-n", "demo", "delete", "cm", "c1"]),
        "configmap \"c1\" deleted\n"
    );
    api.kubectl(&["-n", "demo", "get", "cm", "c1"])
        .fails_with("configmaps \"c1\" not found");
    // Deleting a namespace deletes what is in it (kubectl waits until the
    // namespace controller has emptied and removed it).
    api.kubectl_ok(&["delete", "ns", "demo"]);
    assert_eq!(
        api.kubectl_ok(&[
            "get",
            "cm",
            "-A",
            "--field-selector",
            "metadata.namespace=demo",
            "-o",
            "name"
        ]),
        ""
    );
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: busybox:1
        env:
        - {name: A, value: "1"}
        - {name: B, value: "2"}
        ports:
        - {containerPort: 80}
        - {containerPort: 81}
      - name: side
        image: busybox:1
"#;

/// `kubectl apply -f` (create; change with a removed env var, port and
/// container; unchanged), strategic/merge/json patches, `replace` with a
/// stale resourceVersion, and status kept out of the main resource.
#[test]
fn apply_patch_replace() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let file = api.scratch().join("web.yaml");
    std::fs::write(&file, DEPLOYMENT).expect("write manifest");
    let f = file.to_string_lossy().to_string();
    assert_eq!(
        api.kubectl_ok(&["apply", "-f", &f]),
        "deployment.apps/web created\n"
    );
    let d = get_json(&api, &["deploy", "web"]);
    assert_eq!(d["metadata"]["generation"], 1);
    assert!(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    let changed = DEPLOYMENT
        .replace("replicas: 1", "replicas: 3")
        .replace("        - {name: B, value: \"2\"}\n", "")
        .replace("        - {containerPort: 81}\n", "")
        .replace("      - name: side\n        image: busybox:1\n", "");
    std::fs::write(&file, &changed).expect("write manifest");
    assert_eq!(
        api.kubectl_ok(&["apply", "-f", &f]),
        "deployment.apps/web configured\n"
    );
    assert_eq!(
        api.kubectl_ok(&["apply", "-f", &f]),
        "deployment.apps/web unchanged\n"
    );
    let d = get_json(&api, &["deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["generation"], 2);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0]["env"], json(r#"[{"name":"A","value":"1"}]"#));
    assert_eq!(
        containers[0]["ports"],
        json(r#"[{"containerPort":80,"protocol":"TCP"}]"#)
    );

    // Patches of all three kinds.
    api.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"busybox:2"}]}}}}"#,
    ]);
    api.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"m":"1"}}}"#,
    ]);
    api.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
    ]);
    let d = get_json(&api, &["deploy", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:2"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"],
        "A"
    );
    assert_eq!(d["metadata"]["labels"]["m"], "1");
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        d["metadata"]["generation"], 4,
        "labels do not bump the generation"
    );
    api.kubectl(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
    ])
    .fails_with("could not be applied");
    // The main resource ignores status; /status takes only status.
    api.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"replicas":7}}"#,
    ]);
    assert_eq!(get_json(&api, &["deploy", "web"])["status"], json("{}"));
    api.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"replicas":7},"spec":{"replicas":1}}"#,
    ]);
    let d = get_json(&api, &["deploy", "web"]);
    assert_eq!(
        (
            d["status"]["replicas"].clone(),
            d["spec"]["replicas"].clone()
        ),
        (json("7"), json("5"))
    );

    // kubectl apply validates strictly by default: an unknown field is a 400
    // and nothing is written; --validate=warn writes it with a warning.
    let bogus = api.scratch().join("bogus.yaml");
    std::fs::write(
        &bogus,
        DEPLOYMENT
            .replace("name: web", "name: bogus")
            .replace("  replicas: 1\n", "  replicas: 1\n  bogus: 1\n"),
    )
    .expect("write");
    let b = bogus.to_string_lossy().to_string();
    api.kubectl(&["apply", "-f", &b])
        .fails_with("strict decoding error: unknown field \"spec.bogus\"");
    api.kubectl(&["get", "deploy", "bogus"])
        .fails_with("NotFound");
    let warned = api.kubectl(&["apply", "-f", &b, "--validate=warn"]);
    assert!(
        warned.stderr.contains("unknown field \"spec.bogus\""),
        "{warned}"
    );
    api.kubectl_ok(&["delete", "deploy", "bogus"]);

    // Server-side apply (approximated as a merge; no field ownership yet).
    let ssa = api.scratch().join("ssa.yaml");
    std::fs::write(&ssa, DEPLOYMENT.replace("name: web", "name: ssa")).expect("write");
    let s = ssa.to_string_lossy().to_string();
    assert_eq!(
        api.kubectl_ok(&["apply", "--server-side", "-f", &s]),
        "deployment.apps/ssa serverside-applied\n"
    );
    std::fs::write(
        &ssa,
        DEPLOYMENT
            .replace("name: web", "name: ssa")
            .replace("replicas: 1", "replicas: 4"),
    )
    .expect("write");
    api.kubectl_ok(&["apply", "--server-side", "-f", &s]);
    assert_eq!(get_json(&api, &["deploy", "ssa"])["spec"]["replicas"], 4);
    api.kubectl_ok(&["delete", "deploy", "ssa"]);

    // kubectl scale: the /scale subresource.
    assert_eq!(
        api.kubectl_ok(&["scale", "deploy", "web", "--replicas=2"]),
        "deployment.apps/web scaled\n"
    );
    assert_eq!(get_json(&api, &["deploy", "web"])["spec"]["replicas"], 2);
    api.kubectl(&[
        "scale",
        "deploy",
        "web",
        "--replicas=3",
        "--current-replicas=9",
    ])
    .fails_with("Expected replicas to be 9, was 2");

    // kubectl edit (through KUBE_EDITOR), diff against the server, describe.
    let mut edit = api.kubectl_cmd(&["edit", "deploy", "web"]);
    let out = edit
        .env(
            "KUBE_EDITOR",
            "sed -i s/image:.busybox:2/image:\\ busybox:3/",
        )
        .output()
        .expect("kubectl edit");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deployment.apps/web edited\n"
    );
    let d = get_json(&api, &["deploy", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:3"
    );
    let diff = api.kubectl(&["diff", "-f", &f]);
    assert_eq!(diff.status.code(), Some(1), "{diff}");
    assert!(
        diff.stdout.contains("-        image: busybox:3")
            && diff.stdout.contains("+        image: busybox:1"),
        "{diff}"
    );
    let described = api.kubectl_ok(&["describe", "deploy", "web"]);
    assert!(
        described.contains("Name:") && described.contains("web") && described.contains("busybox:3"),
        "{described}"
    );

    // replace with a stale resourceVersion: 409.
    let stale = api.kubectl_ok(&["get", "deploy", "web", "-o", "json"]);
    api.kubectl_ok(&["label", "deploy", "web", "bump=1"]);
    let stale_file = api.scratch().join("stale.json");
    std::fs::write(&stale_file, stale).expect("write");
    api.kubectl(&["replace", "-f", &stale_file.to_string_lossy()])
        .fails_with("the object has been modified");
    assert_eq!(
        api.kubectl_ok(&["delete", "-f", &f]),
        "deployment.apps \"web\" deleted\n"
    );
}

/// `kubectl get -w` sees an object created after it started.
#[test]
fn get_watch_sees_events() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let (mut child, rx) = api.kubectl_watch(&["cm"]);
    // The watch starts from the list kubectl makes first; give it a moment.
    std::thread::sleep(Duration::from_millis(700));
    api.kubectl_ok(&["create", "configmap", "watched", "--from-literal=k=v"]);
    api.kubectl_ok(&["delete", "configmap", "watched"]);
    let mut seen = String::new();
    let mut events = Vec::new();
    while events.len() < 2 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                // One JSON watch event per line.
                let ev = json(&line);
                let name = ev["object"]["metadata"]["name"].clone();
                events.push((ev["type"].as_str().unwrap_or("").to_string(), name));
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    // A watch from a resourceVersion older than the watch cache's window
    // (which starts at the first watch) and compacted in the store gets an
    // ERROR event with a 410 Expired Status; one from within the window is
    // replayed from the cache; one from the current revision gets only new
    // events. The 410 is asked of events, which nothing watches before: the
    // ConfigMap cache starts at boot (the garbage collector follows every
    // type but events), at revision 1 when it wins the race with the first
    // writes, and then a watch from revision 1 is within its window and
    // rightly replayed.
    let list = json(&api.kubectl_ok(&["get", "--raw", "/api/v1/configmaps"]));
    let head: i64 = list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("list resourceVersion");
    keel_tests::etcdctl(api.store(), &["compact", &head.to_string()]).ok();
    let old = "/api/v1/events?watch=true&timeoutSeconds=2&resourceVersion=1";
    let ev = json(api.kubectl_ok(&["get", "--raw", old]).trim());
    assert_eq!(
        (ev["type"].as_str(), ev["object"]["code"].as_i64()),
        (Some("ERROR"), Some(410)),
        "{ev}"
    );
    assert_eq!(ev["object"]["reason"], "Expired");
    let recent = format!(
        "/api/v1/configmaps?watch=true&timeoutSeconds=1&resourceVersion={}",
        head - 1
    );
    let replayed = api.kubectl_ok(&["get", "--raw", &recent]);
    let ev = json(replayed.trim());
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("watched")),
        "{replayed}"
    );
    // allowWatchBookmarks: BOOKMARK events carry the current revision
    // (the watch cache asks the store for progress every 5 s).
    let bookmarked = format!("/api/v1/configmaps?watch=true&allowWatchBookmarks=true&timeoutSeconds=7&resourceVersion={head}");
    let out = api.kubectl_ok(&["get", "--raw", &bookmarked]);
    let ev = json(out.lines().next().unwrap_or("null"));
    assert_eq!(ev["type"], "BOOKMARK", "{out}");
    let bookmark_rv: i64 = ev["object"]["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("bookmark rv");
    assert!(bookmark_rv >= head, "{out}");
    // Streaming list: current state (kube-system holds only the root CA
    // ConfigMap), then the initial-events-end bookmark.
    let streaming = "/api/v1/namespaces/kube-system/configmaps?watch=true&timeoutSeconds=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true";
    let out = api.kubectl_ok(&["get", "--raw", streaming]);
    let mut lines = out.lines();
    let ev = json(lines.next().unwrap_or("null"));
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("kube-root-ca.crt")),
        "{out}"
    );
    let ev = json(lines.next().unwrap_or("null"));
    assert_eq!(ev["type"], "BOOKMARK", "{out}");
    assert_eq!(
        ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true",
        "{out}"
    );
    let current = format!("/api/v1/configmaps?watch=true&timeoutSeconds=1&resourceVersion={head}");
    assert_eq!(api.kubectl_ok(&["get", "--raw", &current]), "");
    assert_eq!(
        events,
        vec![
            ("ADDED".to_string(), json("\"watched\"")),
            ("DELETED".to_string(), json("\"watched\""))
        ],
        "partial output: {seen}"
    );
}

/// Two apiservers on one store: a watch through one sees writes made
/// through the other, and a conflict is detected across them.
#[test]
fn two_apiservers_one_store() {
    let Some(mut api) = KubeApi::start_or_skip() else {
        return;
    };
    let other = api.add_apiserver().expect("second apiserver");
    let mut child = api
        .kubectl_cmd(&[
            "get",
            "cm",
            "-w",
            "--watch-only",
            "-o",
            "json",
            "--output-watch-events",
        ])
        .env("KUBECONFIG", &other)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubectl get -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    api.kubectl_ok(&["create", "configmap", "shared", "--from-literal=k=v"]);
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("an event through the other apiserver");
    let _ = child.kill();
    let _ = child.wait();
    let ev = json(&line);
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("shared"))
    );

    // A stale update through one, after a write through the other: 409.
    let stale = api.kubectl_ok(&["get", "cm", "shared", "-o", "json"]);
    let mut label = api.kubectl_cmd(&["label", "cm", "shared", "x=y"]);
    let labeled = label.env("KUBECONFIG", &other).output().expect("kubectl");
    assert!(labeled.status.success(), "{labeled:?}");
    let stale_file = api.scratch().join("shared.json");
    std::fs::write(&stale_file, stale).expect("write");
    api.kubectl(&["replace", "-f", &stale_file.to_string_lossy()])
        .fails_with("the object has been modified");
}

/// Deletion: an object with finalizers is marked (`deletionTimestamp`) and
/// goes when the last finalizer is removed; a pod bound to a node waits for
/// its grace period (the node confirms with grace 0, here `--force`); an
/// unbound pod goes at once.
#[test]
fn finalizers_and_graceful_pod_deletion() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "configmap", "held"]);
    api.kubectl_ok(&[
        "patch",
        "cm",
        "held",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    api.kubectl_ok(&["delete", "cm", "held", "--wait=false"]);
    let held = get_json(&api, &["cm", "held"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    api.kubectl_ok(&[
        "patch",
        "cm",
        "held",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    api.kubectl(&["get", "cm", "held"]).fails_with("NotFound");

    let pod = |name: &str, node: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  {node}containers: [{{name: c, image: busybox}}]\n")
    };
    api.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&pod("bound", "nodeName: node-a\n  ")),
    )
    .ok();
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&pod("loose", "")))
        .ok();
    api.kubectl_ok(&["delete", "pod", "loose", "--wait=false"]);
    api.kubectl(&["get", "pod", "loose"]).fails_with("NotFound");
    api.kubectl_ok(&["delete", "pod", "bound", "--wait=false"]);
    let table = api.kubectl_ok(&["get", "pod", "bound"]);
    assert!(table.contains("Terminating"), "{table}");
    assert_eq!(
        get_json(&api, &["pod", "bound"])["metadata"]["deletionGracePeriodSeconds"],
        30
    );
    api.kubectl_ok(&["delete", "pod", "bound", "--grace-period=0", "--force"]);
    api.kubectl(&["get", "pod", "bound"]).fails_with("NotFound");
}

/// Pod subresources: `binding` (what a scheduler does) and `eviction`
/// (through `kubectl drain`, which also cordons the node).
#[test]
fn binding_and_drain() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a"}}"#),
    )
    .ok();
    api.kubectl_ok(&["run", "p1", "--image=busybox"]);
    let binding = api.scratch().join("binding.json");
    std::fs::write(&binding, r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p1"},"target":{"apiVersion":"v1","kind":"Node","name":"node-a"}}"#).expect("write");
    let b = binding.to_string_lossy().to_string();
    let path = "/api/v1/namespaces/default/pods/p1/binding";
    let status = json(&api.kubectl_ok(&["create", "--raw", path, "-f", &b]));
    assert_eq!(
        (status["status"].as_str(), status["code"].as_i64()),
        (Some("Success"), Some(201))
    );
    assert_eq!(get_json(&api, &["pod", "p1"])["spec"]["nodeName"], "node-a");
    api.kubectl(&["create", "--raw", path, "-f", &b])
        .fails_with("already assigned to node");

    let drained = api.kubectl(&[
        "drain",
        "node-a",
        "--force",
        "--grace-period=0",
        "--timeout=20s",
    ]);
    assert!(
        drained.success() && drained.stdout.contains("pod/p1 evicted"),
        "{drained}"
    );
    api.kubectl(&["get", "pod", "p1"]).fails_with("NotFound");
    let nodes = api.kubectl_ok(&["get", "nodes"]);
    assert!(nodes.contains("SchedulingDisabled"), "{nodes}");
}

/// Services get a cluster IP (and node ports) that no other service has,
/// keep it across a replace, and give it back when deleted; defaults are
/// filled in (deployment strategy, image pull policy, service port target).
#[test]
fn services_and_defaults() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "service", "clusterip", "a", "--tcp=80:8080"]);
    api.kubectl_ok(&["create", "service", "nodeport", "b", "--tcp=8080:80"]);
    let a = get_json(&api, &["svc", "a"]);
    let b = get_json(&api, &["svc", "b"]);
    let ip = a["spec"]["clusterIP"]
        .as_str()
        .expect("cluster IP")
        .to_string();
    assert!(
        ip.starts_with("10.96.") && Some(ip.as_str()) != b["spec"]["clusterIP"].as_str(),
        "{a} {b}"
    );
    let np = b["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("node port");
    assert!((30000..=32767).contains(&np), "{b}");
    let table = api.kubectl_ok(&["get", "svc", "b"]);
    assert!(table.contains(&format!("8080:{np}/TCP")), "{table}");
    // Replacing without the IP keeps it.
    let mut without: Value = a.clone();
    without["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIP");
    without["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIPs");
    api.kubectl_stdin(&["replace", "-f", "-"], Some(&without.to_string()))
        .ok();
    assert_eq!(
        get_json(&api, &["svc", "a"])["spec"]["clusterIP"],
        ip.as_str()
    );
    // Asking for a taken IP is a 422; after a delete the IP is free again.
    let taken = format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"c"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":1}}]}}}}"#
    );
    api.kubectl_stdin(&["create", "-f", "-"], Some(&taken))
        .fails_with("already allocated");
    api.kubectl_ok(&["delete", "svc", "a"]);
    api.kubectl_stdin(&["create", "-f", "-"], Some(&taken)).ok();
    assert_eq!(
        get_json(&api, &["svc", "c"])["spec"]["ports"][0]["targetPort"],
        1
    );

    api.kubectl_ok(&["create", "deployment", "d", "--image=nginx"]);
    let d = get_json(&api, &["deploy", "d"]);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
}

/// Discovery, health, authentication, and bad input answered with a Status.
#[test]
fn discovery_auth_and_bad_input() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let resources = api.kubectl_ok(&["api-resources"]);
    for r in [
        "deployments",
        "configmaps",
        "horizontalpodautoscalers",
        "leases",
        "ingresses",
        "cronjobs",
    ] {
        assert!(resources.contains(r), "{resources}");
    }
    assert!(api
        .kubectl_ok(&["version"])
        .contains("Server Version: v1.32"));
    assert_eq!(api.kubectl_ok(&["get", "--raw", "/healthz"]), "ok");
    let explain = api.kubectl_ok(&["explain", "deployment.spec"]);
    assert!(explain.contains("replicas\t<integer>"), "{explain}");
    assert!(explain.contains("template\t<PodTemplateSpec>"), "{explain}");
    let metrics = api.kubectl_ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains("apiserver_request_total{verb=\"get\",resource=\"\",code=\"200\"}"),
        "{metrics}"
    );
    let group = json(&api.kubectl_ok(&["get", "--raw", "/apis/apps/v1"]));
    // `get --raw` asks for plain JSON: the legacy form; kubectl's own
    // discovery asks for (and gets) the aggregated one.
    assert_eq!(
        json(&api.kubectl_ok(&["get", "--raw", "/apis"]))["kind"],
        "APIGroupList"
    );
    assert_eq!(group["kind"], "APIResourceList");

    // No client certificate (a bearer token keel does not accept yet): 401.
    let kc = std::fs::read_to_string(api.kubeconfig()).expect("kubeconfig");
    let anon: String = kc
        .lines()
        .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
        .map(|l| {
            if l.trim() == "user:" {
                "  user: {token: not-a-known-token}\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let anon_path = api.scratch().join("anonymous");
    std::fs::write(&anon_path, anon).expect("write");
    let mut cmd = api.kubectl_cmd(&["get", "ns"]);
    cmd.env("KUBECONFIG", &anon_path);
    let out = cmd.output().expect("kubectl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{out:?}"
    );

    // Raw bodies: malformed JSON, a kind that does not match the URL, too big.
    let post = |body: &str| {
        let p = api.scratch().join("body.json");
        std::fs::write(&p, body).expect("write");
        api.kubectl(&[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            &p.to_string_lossy(),
        ])
    };
    post("{not json").fails_with("BadRequest");
    post(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#)
        .fails_with("does not match");
    post(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"gen-"}}"#).ok();
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    post(&big).fails_with("RequestEntityTooLarge");
    let names = api.kubectl_ok(&[
        "get",
        "cm",
        "-o",
        "name",
        "--field-selector",
        "metadata.name!=kube-root-ca.crt",
    ]);
    assert!(
        names.starts_with("configmap/gen-") && names.lines().count() == 1,
        "{names}"
    );
    api.kubectl(&["get", "--raw", "/apis/apps/v1/namespaces/default/nothing"])
        .fails_with("NotFound");
    api.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20(b",
    ])
    .fails_with("BadRequest");
}

/// Older kubectls (1.27 reads `/openapi/v2` as protobuf to decide on
/// validation): `get ns`, `create configmap`, `apply -f` twice with the
/// default `--validate`. Skipped when the binaries are not installed.
#[test]
fn older_kubectl_versions() {
    let dir = std::path::Path::new("/usr/lib/google-cloud-sdk/bin");
    let versions: Vec<_> = ["1.27", "1.29", "1.31"]
        .iter()
        .map(|v| dir.join(format!("kubectl.{v}")))
        .filter(|p| p.exists())
        .collect();
    if versions.is_empty() {
        println!("skipped: no kubectl.1.NN under {}", dir.display());
        return;
    }
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let file = api.scratch().join("web.yaml");
    for (i, bin) in versions.iter().enumerate() {
        let run = |args: &[&str]| api.run_kubectl(bin, args, None).ok();
        assert!(run(&["get", "ns"]).contains("kube-system"));
        let cm = format!("cm-{i}");
        assert_eq!(
            run(&["create", "configmap", &cm]),
            format!("configmap/{cm} created\n")
        );
        std::fs::write(
            &file,
            DEPLOYMENT.replace("name: web", &format!("name: web-{i}")),
        )
        .expect("write");
        let f = file.to_string_lossy().to_string();
        assert_eq!(
            run(&["apply", "-f", &f]),
            format!("deployment.apps/web-{i} created\n")
        );
        assert_eq!(
            run(&["apply", "-f", &f]),
            format!("deployment.apps/web-{i} unchanged\n")
        );
    }
}

/// Manifests with fields Go inlines from embedded structs (a volume's
/// source, a probe's handler, a config map reference's name) pass strict
/// validation and read back whole (`emptyDir: {}` included); a misspelt
/// one is still an unknown field.
#[test]
fn manifests_with_inlined_fields() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: inl
spec:
  containers:
  - name: c
    image: nginx
    readinessProbe:
      httpGet:
        path: /
        port: 80
    env:
    - name: A
      valueFrom:
        configMapKeyRef:
          name: cfg
          key: a
    volumeMounts:
    - name: cfg
      mountPath: /etc/cfg
  volumes:
  - name: cfg
    configMap:
      name: cfg
  - name: scratch
    emptyDir: {}
"#;
    let out = api.kubectl_stdin(&["create", "-f", "-"], Some(pod)).ok();
    assert_eq!(out, "pod/inl created\n");
    let got = api
        .kubectl(&["get", "pod", "inl", "-o", "jsonpath={.spec.volumes[0].configMap.name} {.spec.volumes[1].emptyDir} {.spec.containers[0].readinessProbe.httpGet.port} {.spec.containers[0].env[0].valueFrom.configMapKeyRef.name}"])
        .ok();
    assert_eq!(got, "cfg {} 80 cfg");
    let bad = pod.replace(
        "configMap:\n      name: cfg",
        "configMapp:\n      name: cfg",
    );
    let out = api.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&bad.replace("name: inl", "name: inl2")),
    );
    assert!(
        !out.success()
            && out
                .stderr
                .contains("unknown field \"spec.volumes[0].configMapp\""),
        "{out}"
    );
}
