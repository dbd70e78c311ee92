//! Garbage collection with the real kubectl: owners and dependents linked
//! by `ownerReferences` (configmaps, secrets, a custom resource, and a
//! deployment with replica sets and pods made by hand: keel has no
//! deployment controller), deleted with `--cascade=background`, `orphan`
//! and `foreground`; the collector runs inside the API server.

use std::time::{Duration, Instant};

use keel_tests::kube::KubeApi;
use serde_json::{json, Value};

/// How long the collector gets to do something (it runs every 200 ms).
const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `f` until it holds, failing the test after [`PATIENCE`].
#[track_caller]
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The object, or `None` if kubectl says it is not found.
fn get(api: &KubeApi, ns: &str, what: &str) -> Option<Value> {
    let out = api.kubectl(&["-n", ns, "get", what, "-o", "json"]);
    if out.success() {
        return Some(json(&out.stdout));
    }
    assert!(out.stderr.contains("NotFound"), "unexpected failure: {out}");
    None
}

fn uid(api: &KubeApi, ns: &str, what: &str) -> String {
    get(api, ns, what)
        .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{what} has no uid"))
}

/// An owner reference (JSON) to `kind/name` with `uid`.
fn owner(api_version: &str, kind: &str, name: &str, uid: &str, block: bool) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "blockOwnerDeletion": block})
}

/// Creates `obj` (JSON) with `kubectl create -f -`.
fn create(api: &KubeApi, obj: Value) {
    api.kubectl_stdin(&["create", "-f", "-"], Some(&obj.to_string()))
        .ok();
}

fn configmap(ns: &str, name: &str, owners: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "ownerReferences": owners},
           "data": {"k": "v"}})
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A deployment `name` with a replica set `<name>-rs` and a pod
/// `<name>-rs-pod` owned by it (both blocking, as controllers make them).
fn deployment_chain(api: &KubeApi, ns: &str, name: &str) -> (String, String) {
    api.kubectl_ok(&["-n", ns, "create", "deployment", name, "--image=nginx"]);
    let d = uid(api, ns, &format!("deployment/{name}"));
    let labels = json!({"app": name});
    create(
        api,
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": format!("{name}-rs"), "namespace": ns, "labels": labels,
                            "ownerReferences": [owner("apps/v1", "Deployment", name, &d, true)]},
               "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                        "template": {"metadata": {"labels": labels},
                                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
    );
    let rs = uid(api, ns, &format!("rs/{name}-rs"));
    create(
        api,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{name}-rs-pod"), "namespace": ns, "labels": labels,
                            "ownerReferences": [owner("apps/v1", "ReplicaSet", &format!("{name}-rs"), &rs, true)]},
               "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
    );
    (d, rs)
}

const CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "widgets.example.com"},
  "spec": {"group": "example.com", "scope": "Namespaced",
    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
    "versions": [{"name": "v1", "served": true, "storage": true,
      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}"#;

/// `--cascade=background` (kubectl's default): the owner goes at once, its
/// dependents after it, down the chain; a dependent with another owner that
/// still exists only loses its reference; a dependent naming an owner in
/// another namespace is collected even while that owner exists.
#[test]
fn background_deletes_dependents() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "gc"]);
    api.kubectl_ok(&["create", "ns", "elsewhere"]);
    api.kubectl_stdin(&["create", "-f", "-"], Some(CRD)).ok();
    api.kubectl_ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/widgets.example.com",
    ]);

    api.kubectl_ok(&["-n", "gc", "create", "configmap", "owner"]);
    api.kubectl_ok(&["-n", "gc", "create", "configmap", "other"]);
    let o = uid(&api, "gc", "cm/owner");
    let other = uid(&api, "gc", "cm/other");
    let to_owner = || owner("v1", "ConfigMap", "owner", &o, false);
    create(&api, configmap("gc", "dep", vec![to_owner()]));
    let dep = uid(&api, "gc", "cm/dep");
    create(
        &api,
        configmap(
            "gc",
            "dep-of-dep",
            vec![owner("v1", "ConfigMap", "dep", &dep, false)],
        ),
    );
    create(
        &api,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "dep-secret", "namespace": "gc", "ownerReferences": [to_owner()]},
               "stringData": {"k": "v"}}),
    );
    create(
        &api,
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
               "metadata": {"name": "dep-widget", "namespace": "gc", "ownerReferences": [to_owner()]},
               "spec": {"size": 1}}),
    );
    create(
        &api,
        configmap(
            "gc",
            "shared",
            vec![to_owner(), owner("v1", "ConfigMap", "other", &other, false)],
        ),
    );
    // The owner is in "gc", not "elsewhere": absent from there.
    create(&api, configmap("elsewhere", "stray", vec![to_owner()]));
    eventually("the cross-namespace dependent to be collected", || {
        get(&api, "elsewhere", "cm/stray").is_none()
    });
    // Nothing with a present owner was touched.
    for what in [
        "cm/dep",
        "cm/dep-of-dep",
        "secret/dep-secret",
        "widget/dep-widget",
    ] {
        assert!(
            get(&api, "gc", what).is_some(),
            "{what} was collected early"
        );
    }
    assert_eq!(
        owner_uids(&get(&api, "gc", "cm/shared").expect("shared")),
        vec![o.clone(), other.clone()]
    );

    api.kubectl_ok(&[
        "-n",
        "gc",
        "delete",
        "cm",
        "owner",
        "--cascade=background",
        "--timeout=30s",
    ]);
    assert!(get(&api, "gc", "cm/owner").is_none());
    for what in [
        "cm/dep",
        "cm/dep-of-dep",
        "secret/dep-secret",
        "widget/dep-widget",
    ] {
        eventually(&format!("{what} to be collected"), || {
            get(&api, "gc", what).is_none()
        });
    }
    eventually("shared to lose its reference to the deleted owner", || {
        get(&api, "gc", "cm/shared").is_some_and(|s| owner_uids(&s) == vec![other.clone()])
    });
    assert!(get(&api, "gc", "cm/other").is_some());

    // A deployment deleted with kubectl's default cascade takes its replica
    // set, and that its pod.
    deployment_chain(&api, "gc", "web");
    api.kubectl_ok(&["-n", "gc", "delete", "deployment", "web", "--timeout=30s"]);
    for what in ["rs/web-rs", "pod/web-rs-pod"] {
        eventually(&format!("{what} to be collected"), || {
            get(&api, "gc", what).is_none()
        });
    }
}

/// `--cascade=orphan`: the owner goes once its dependents no longer name
/// it; they stay, without that owner reference (other references kept).
#[test]
fn orphan_keeps_dependents() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "gc"]);
    api.kubectl_ok(&["-n", "gc", "create", "configmap", "owner"]);
    api.kubectl_ok(&["-n", "gc", "create", "configmap", "other"]);
    let o = uid(&api, "gc", "cm/owner");
    let other = uid(&api, "gc", "cm/other");
    create(
        &api,
        configmap(
            "gc",
            "dep",
            vec![owner("v1", "ConfigMap", "owner", &o, true)],
        ),
    );
    create(
        &api,
        configmap(
            "gc",
            "shared",
            vec![
                owner("v1", "ConfigMap", "owner", &o, true),
                owner("v1", "ConfigMap", "other", &other, false),
            ],
        ),
    );
    // kubectl waits until the owner is gone (the collector drops the
    // `orphan` finalizer once the dependents are orphaned).
    api.kubectl_ok(&[
        "-n",
        "gc",
        "delete",
        "cm",
        "owner",
        "--cascade=orphan",
        "--timeout=30s",
    ]);
    assert!(get(&api, "gc", "cm/owner").is_none());
    let dep = get(&api, "gc", "cm/dep").expect("the orphan stays");
    assert!(dep["metadata"].get("ownerReferences").is_none(), "{dep}");
    let shared = get(&api, "gc", "cm/shared").expect("shared stays");
    assert_eq!(owner_uids(&shared), vec![other]);

    // The same for a deployment: its replica set and pod stay.
    let (_, rs) = deployment_chain(&api, "gc", "web");
    api.kubectl_ok(&[
        "-n",
        "gc",
        "delete",
        "deployment",
        "web",
        "--cascade=orphan",
        "--timeout=30s",
    ]);
    let rs_obj = get(&api, "gc", "rs/web-rs").expect("the replica set stays");
    assert!(owner_uids(&rs_obj).is_empty(), "{rs_obj}");
    let pod = get(&api, "gc", "pod/web-rs-pod").expect("the pod stays");
    assert_eq!(owner_uids(&pod), vec![rs]);
    // Still there a while later: nothing collects orphans.
    std::thread::sleep(Duration::from_secs(1));
    assert!(get(&api, "gc", "rs/web-rs").is_some());
}

/// `--cascade=foreground`: the owner shows `deletionTimestamp` and the
/// `foregroundDeletion` finalizer while a blocking dependent (held by its own
/// finalizer) exists; it goes once that dependent's finalizer is removed.
/// Two API servers share the store, so two collectors race (CAS decides).
#[test]
fn foreground_waits_for_blocking_dependents() {
    let Some(mut api) = KubeApi::start_or_skip() else {
        return;
    };
    let second = api.add_apiserver().expect("a second apiserver");
    api.kubectl_ok(&["create", "ns", "gc"]);
    api.kubectl_ok(&["-n", "gc", "create", "configmap", "owner"]);
    let o = uid(&api, "gc", "cm/owner");
    let mut blocker = configmap(
        "gc",
        "blocker",
        vec![owner("v1", "ConfigMap", "owner", &o, true)],
    );
    blocker["metadata"]["finalizers"] = json!(["example.com/hold"]);
    create(&api, blocker);
    create(
        &api,
        configmap(
            "gc",
            "plain",
            vec![owner("v1", "ConfigMap", "owner", &o, true)],
        ),
    );
    create(
        &api,
        configmap(
            "gc",
            "loose",
            vec![owner("v1", "ConfigMap", "owner", &o, false)],
        ),
    );

    api.kubectl_ok(&[
        "-n",
        "gc",
        "delete",
        "cm",
        "owner",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let marked = get(&api, "gc", "cm/owner").expect("the owner waits");
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    assert!(
        finalizers(&marked).contains(&"foregroundDeletion".to_string()),
        "{marked}"
    );
    for what in ["cm/plain", "cm/loose"] {
        eventually(&format!("{what} to be deleted"), || {
            get(&api, "gc", what).is_none()
        });
    }
    eventually("the blocker to be marked for deletion", || {
        get(&api, "gc", "cm/blocker")
            .is_some_and(|b| b["metadata"]["deletionTimestamp"].is_string())
    });
    // The blocker still holds the owner.
    let still = get(&api, "gc", "cm/owner").expect("the owner still waits");
    assert_eq!(finalizers(&still), vec!["foregroundDeletion".to_string()]);

    api.kubectl_ok(&[
        "-n",
        "gc",
        "patch",
        "cm",
        "blocker",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    eventually("the blocker to go", || {
        get(&api, "gc", "cm/blocker").is_none()
    });
    eventually("the owner to go", || get(&api, "gc", "cm/owner").is_none());

    // A deployment in the foreground: the replica set (which has a pod) is
    // itself deleted in the foreground, then the pod, the replica set and
    // the deployment go.
    deployment_chain(&api, "gc", "web");
    api.kubectl_with(
        &second,
        &[
            "-n",
            "gc",
            "delete",
            "deployment",
            "web",
            "--cascade=foreground",
            "--timeout=30s",
        ],
    )
    .ok();
    assert!(get(&api, "gc", "deployment/web").is_none());
    assert!(get(&api, "gc", "rs/web-rs").is_none());
    assert!(get(&api, "gc", "pod/web-rs-pod").is_none());
}

/// The delete options kubectl does not send: an unknown policy and both
/// `propagationPolicy` and `orphanDependents` are 422s, as in Kubernetes,
/// as is an object with both GC finalizers; `orphanDependents=true`
/// orphans.
#[test]
fn delete_options_are_checked() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "configmap", "owner"]);
    let o = uid(&api, "default", "cm/owner");
    create(
        &api,
        configmap(
            "default",
            "dep",
            vec![owner("v1", "ConfigMap", "owner", &o, false)],
        ),
    );
    api.kubectl(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps/owner?propagationPolicy=Sideways",
    ])
    .fails_with("Unsupported value: \"Sideways\"");
    api.kubectl(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps/owner?propagationPolicy=Orphan&orphanDependents=true",
    ])
    .fails_with("cannot be both set");
    assert!(get(&api, "default", "cm/owner").is_some());
    // Both GC finalizers on one object: refused.
    let mut both = configmap("default", "both", vec![]);
    both["metadata"]["finalizers"] = json!(["orphan", "foregroundDeletion"]);
    api.kubectl_stdin(&["create", "-f", "-"], Some(&both.to_string()))
        .fails_with("finalizer orphan and foregroundDeletion cannot be both set");
    api.kubectl(&[
        "patch",
        "cm",
        "owner",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["orphan","foregroundDeletion"]}}"#,
    ])
    .fails_with("cannot be both set");
    api.kubectl_ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps/owner?orphanDependents=true",
    ]);
    eventually("the owner to go", || {
        get(&api, "default", "cm/owner").is_none()
    });
    let dep = get(&api, "default", "cm/dep").expect("the orphan stays");
    assert!(owner_uids(&dep).is_empty(), "{dep}");
}

/// Namespace deletion: while content held by a finalizer remains, the
/// terminating namespace's conditions say what is left (Kubernetes'
/// wording); it goes once the finalizer is removed. `PUT .../finalize`
/// with no `spec.finalizers` removes a terminating namespace at once.
/// Namespaces as owners: `--cascade=orphan` keeps their dependents.
#[test]
fn namespace_conditions_and_finalize() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "term"]);
    let mut held = configmap("term", "held", vec![]);
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    create(&api, held);
    api.kubectl_ok(&["delete", "ns", "term", "--wait=false"]);
    let condition = |ns: &Value, ty: &str| -> Option<Value> {
        ns["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == ty)
            .cloned()
    };
    eventually("the namespace to report what is left", || {
        get(&api, "default", "ns/term").is_some_and(|ns| {
            condition(&ns, "NamespaceContentRemaining").is_some_and(|c| {
                c["status"] == "True"
                    && c["reason"] == "SomeResourcesRemain"
                    && c["message"]
                        == "Some resources are remaining: configmaps. has 1 resource instances"
            }) && condition(&ns, "NamespaceFinalizersRemaining").is_some_and(|c| {
                c["status"] == "True"
                    && c["message"]
                        == "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
            })
        })
    });
    let ns = get(&api, "default", "ns/term").expect("terminating");
    assert_eq!(ns["status"]["phase"], "Terminating");
    assert_eq!(
        condition(&ns, "NamespaceDeletionDiscoveryFailure").map(|c| c["status"].clone()),
        Some(json!("False"))
    );
    api.kubectl_ok(&[
        "-n",
        "term",
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    eventually("the namespace to go", || {
        get(&api, "default", "ns/term").is_none()
    });

    // The finalize subresource: dropping `kubernetes` removes the namespace
    // even though content remains.
    api.kubectl_ok(&["create", "ns", "stuck"]);
    let mut held = configmap("stuck", "held", vec![]);
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    create(&api, held);
    api.kubectl_ok(&["delete", "ns", "stuck", "--wait=false"]);
    let ns = get(&api, "default", "ns/stuck").expect("terminating");
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    let body = json!({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": "stuck"}, "spec": {"finalizers": []}});
    let file = api.scratch().join("finalize.json");
    std::fs::write(&file, body.to_string()).expect("write the body");
    let path = file.to_string_lossy().to_string();
    api.kubectl_ok(&[
        "replace",
        "--raw",
        "/api/v1/namespaces/stuck/finalize",
        "-f",
        &path,
    ]);
    assert!(get(&api, "default", "ns/stuck").is_none());

    // A namespace deleted with --cascade=orphan: its (cluster-scoped)
    // dependents stay, without the reference; with the default
    // (background) they go.
    api.kubectl_ok(&["create", "ns", "parent"]);
    let p = uid(&api, "default", "ns/parent");
    create(
        &api,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "kept-role", "ownerReferences": [owner("v1", "Namespace", "parent", &p, false)]},
               "rules": []}),
    );
    api.kubectl_ok(&[
        "delete",
        "ns",
        "parent",
        "--cascade=orphan",
        "--timeout=30s",
    ]);
    assert!(get(&api, "default", "ns/parent").is_none());
    let role = get(&api, "default", "clusterrole/kept-role").expect("the orphan stays");
    assert!(owner_uids(&role).is_empty(), "{role}");

    api.kubectl_ok(&["create", "ns", "parent2"]);
    let p = uid(&api, "default", "ns/parent2");
    create(
        &api,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "gone-role", "ownerReferences": [owner("v1", "Namespace", "parent2", &p, false)]},
               "rules": []}),
    );
    api.kubectl_ok(&["delete", "ns", "parent2", "--timeout=30s"]);
    eventually("the namespace's dependent to be collected", || {
        get(&api, "default", "clusterrole/gone-role").is_none()
    });
}
