//! CustomResourceDefinitions with the real kubectl: define a CRD, wait for
//! it to be established, use its resources like built-in ones (CRUD,
//! printer columns, short names, selectors, status and scale
//! subresources, explain, watch), schema validation, pruning and
//! defaulting, and deleting the CRD with its objects.

use std::time::Duration;

use keel_tests::kube::KubeApi;
use serde_json::Value;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names:
    plural: crontabs
    singular: crontab
    kind: CronTab
    shortNames: [ct]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    additionalPrinterColumns:
    - name: Spec
      type: string
      jsonPath: .spec.cronSpec
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [cronSpec]
            properties:
              cronSpec:
                type: string
                description: The schedule, in cron format.
                pattern: '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'
              image:
                type: string
                default: busybox
              replicas:
                type: integer
                minimum: 0
                maximum: 10
          status:
            type: object
            properties:
              replicas:
                type: integer
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

const CRD_NAME: &str = "crontabs.stable.example.com";

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn write(api: &KubeApi, name: &str, text: &str) -> String {
    let path = api.scratch().join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.to_string_lossy().into_owned()
}

/// Applies the CronTab CRD and waits until it is established.
fn define(api: &KubeApi) {
    let f = write(api, "crd.yaml", CRD);
    assert_eq!(
        api.kubectl_ok(&["apply", "-f", &f]),
        format!("customresourcedefinition.apiextensions.k8s.io/{CRD_NAME} created\n")
    );
    api.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=20s",
        &format!("crd/{CRD_NAME}"),
    ]);
}

fn crontab(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: {name}\n  labels:\n    app: {name}\nspec:\n  cronSpec: '*/5 * * * *'\n  replicas: 1\n{extra_spec}"
    )
}

/// The CRD's own status, discovery, CRUD, printer columns, short names,
/// selectors, defaulting, validation (422 with field paths), pruning and
/// `--validate=strict`, the status and scale subresources, `explain`, a
/// second served version, and deletion of the CRD with its objects.
#[test]
fn custom_resources_end_to_end() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    define(&api);
    let crd = json(&api.kubectl_ok(&["get", "crd", CRD_NAME, "-o", "json"]));
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "CronTab");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));
    assert_eq!(
        crd["metadata"]["finalizers"],
        serde_json::json!(["customresourcecleanup.apiextensions.k8s.io"])
    );
    assert!(api.kubectl_ok(&["get", "crds"]).contains(CRD_NAME));

    let resources = api.kubectl_ok(&["api-resources", "--api-group=stable.example.com"]);
    let line = resources
        .lines()
        .find(|l| l.starts_with("crontabs"))
        .unwrap_or_else(|| panic!("crontabs not in api-resources:\n{resources}"));
    for want in ["ct", "stable.example.com/v1", "true", "CronTab"] {
        assert!(line.contains(want), "{want} missing: {line}");
    }

    // Create, with the schema's default filled in.
    let f = write(&api, "a.yaml", &crontab("a", ""));
    assert_eq!(
        api.kubectl_ok(&["apply", "-f", &f]),
        "crontab.stable.example.com/a created\n"
    );
    let a = json(&api.kubectl_ok(&["get", "ct", "a", "-o", "json"]));
    assert_eq!(a["spec"]["image"], "busybox");
    assert_eq!(a["metadata"]["generation"], 1);
    assert!(a.get("status").is_none(), "{a}");

    // Printer columns, by plural, short name and category.
    let table = api.kubectl_ok(&["get", "crontabs"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"], "{table}");
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(&row[..2], ["a", "*/5"], "{table}");
    assert!(api
        .kubectl_ok(&["get", "all"])
        .contains("crontab.stable.example.com/a"));

    // Patch; label and field selectors.
    api.kubectl_ok(&[
        "patch",
        "ct",
        "a",
        "--type=merge",
        "-p",
        r#"{"spec":{"image":"nginx"}}"#,
    ]);
    let f = write(&api, "b.yaml", &crontab("b", ""));
    api.kubectl_ok(&["create", "-f", &f]);
    assert_eq!(
        api.kubectl_ok(&["get", "ct", "-l", "app=b", "-o", "name"]),
        "crontab.stable.example.com/b\n"
    );
    assert_eq!(
        api.kubectl_ok(&[
            "get",
            "ct",
            "--field-selector",
            "metadata.name=a",
            "-o",
            "jsonpath={.items[*].spec.image}"
        ]),
        "nginx"
    );
    assert_eq!(
        api.kubectl_ok(&["get", "ct", "--chunk-size=1", "-o", "name"])
            .lines()
            .count(),
        2
    );

    // Schema validation: 422 with Kubernetes' paths and messages.
    let f = write(
        &api,
        "bad.yaml",
        &crontab("bad", "  image: 5\n")
            .replace("replicas: 1", "replicas: 11")
            .replace("'*/5 * * * *'", "'often'"),
    );
    let err = api.kubectl(&["create", "-f", &f]).err();
    for want in [
        // kubectl words the summary from the Status details.
        "The CronTab \"bad\" is invalid",
        "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
        "spec.image: Invalid value: \"integer\": spec.image in body must be of type string: \"integer\"",
        "spec.cronSpec: Invalid value: \"often\": spec.cronSpec in body should match",
    ] {
        assert!(err.contains(want), "{want} missing: {err}");
    }
    let f = write(&api, "noreq.yaml", "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: noreq\nspec:\n  image: x\n");
    api.kubectl(&["create", "-f", &f])
        .fails_with("spec.cronSpec: Required value");

    // Unknown fields: pruned, or refused under --validate=strict.
    let f = write(&api, "extra.yaml", &crontab("extra", "  colour: blue\n"));
    api.kubectl(&["create", "--validate=strict", "-f", &f])
        .fails_with("unknown field \"spec.colour\"");
    api.kubectl_ok(&["create", "--validate=false", "-f", &f]);
    let extra = json(&api.kubectl_ok(&["get", "ct", "extra", "-o", "json"]));
    assert!(extra["spec"].get("colour").is_none(), "{extra}");
    let f = write(&api, "warn.yaml", &crontab("warned", "  colour: blue\n"));
    let warned = api.kubectl(&["create", "--validate=warn", "-f", &f]);
    assert!(warned.success(), "{warned:?}");
    assert!(
        warned
            .stderr
            .contains("Warning: unknown field \"spec.colour\""),
        "{}",
        warned.stderr
    );

    // Status subresource: the main resource ignores status, /status takes it.
    api.kubectl_ok(&[
        "patch",
        "ct",
        "a",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":7}}"#,
    ]);
    let a = json(&api.kubectl_ok(&["get", "ct", "a", "-o", "json"]));
    assert!(a.pointer("/status/replicas").is_none(), "{a}");
    api.kubectl_ok(&[
        "patch",
        "ct",
        "a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":2}}"#,
    ]);
    let a = json(&api.kubectl_ok(&["get", "ct", "a", "-o", "json"]));
    assert_eq!(a["status"]["replicas"], 2);
    assert_eq!(
        a["metadata"]["generation"], 2,
        "the image patch bumped it once"
    );

    // Scale subresource.
    assert_eq!(
        api.kubectl_ok(&["scale", "ct", "a", "--replicas=3"]),
        "crontab.stable.example.com/a scaled\n"
    );
    assert_eq!(
        api.kubectl_ok(&["get", "ct", "a", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );

    // explain reads the schema from /openapi/v3.
    let explain = api.kubectl_ok(&["explain", "crontab.spec"]);
    assert!(
        explain.contains("cronSpec") && explain.contains("<string>"),
        "{explain}"
    );

    // The second served version: same objects, its own apiVersion.
    let beta = json(&api.kubectl_ok(&[
        "get",
        "crontabs.v1beta1.stable.example.com",
        "a",
        "-o",
        "json",
    ]));
    assert_eq!(beta["apiVersion"], "stable.example.com/v1beta1");
    assert_eq!(beta["spec"]["replicas"], 3);
    // Written through v1beta1: answered in v1beta1, read back in v1 (with
    // v1's defaults).
    let f = write(
        &api,
        "beta.yaml",
        &crontab("beta", "").replace("stable.example.com/v1", "stable.example.com/v1beta1"),
    );
    let created = json(&api.kubectl_ok(&["create", "-f", &f, "-o", "json"]));
    assert_eq!(created["apiVersion"], "stable.example.com/v1beta1");
    let v1 = json(&api.kubectl_ok(&[
        "get",
        "crontabs.v1.stable.example.com",
        "beta",
        "-o",
        "json",
    ]));
    assert_eq!(
        (v1["apiVersion"].as_str(), v1["spec"]["image"].as_str()),
        (Some("stable.example.com/v1"), Some("busybox"))
    );

    // Deleting the CRD deletes its objects, then the resource goes.
    api.kubectl_ok(&["delete", "crd", CRD_NAME, "--timeout=30s"]);
    // kubectl's discovery cache may still name it: then the server's 404.
    let gone = api.kubectl(&["get", "crontabs"]).err();
    assert!(
        gone.contains("the server doesn't have a resource type \"crontabs\"")
            || gone.contains("the server could not find the requested resource"),
        "{gone}"
    );
    let after = api.kubectl_ok(&["api-resources", "--api-group=stable.example.com"]);
    assert!(!after.contains("crontabs"), "{after}");
    // Defined again, it starts empty.
    define(&api);
    assert_eq!(api.kubectl_ok(&["get", "ct", "-o", "name"]), "");
}

/// `kubectl get -w` on a custom resource sees its events (served by the
/// watch cache).
#[test]
fn custom_resources_watch() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    define(&api);
    // One JSON watch event per line.
    let (mut child, rx) = api.kubectl_watch(&["crontabs"]);
    std::thread::sleep(Duration::from_millis(700));
    let f = write(&api, "w.yaml", &crontab("watched", ""));
    api.kubectl_ok(&["create", "-f", &f]);
    let ev = rx
        .recv_timeout(Duration::from_secs(10))
        .map(|s| json(&s))
        .unwrap_or(Value::Null);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ev["type"], "ADDED", "{ev}");
    assert_eq!(ev["object"]["metadata"]["name"], "watched");
    assert_eq!(ev["object"]["kind"], "CronTab");

    // Changing the CRD changes what is served within seconds: a new
    // short name, and a new default that reads fill in.
    api.kubectl_ok(&[
        "patch",
        "crd",
        CRD_NAME,
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/names/shortNames/-","value":"cts"},
            {"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/owner","value":{"type":"string","default":"nobody"}}]"#,
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = api.kubectl(&["get", "cts", "watched", "-o", "jsonpath={.spec.owner}"]);
        if out.success() && out.stdout == "nobody" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CRD change not served: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A CRD that breaks the rules is refused with Kubernetes' messages.
#[test]
fn invalid_crds_are_refused() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let bad = CRD
        .replace(
            "name: crontabs.stable.example.com",
            "name: crontab.stable.example.com",
        )
        .replace("scope: Namespaced", "scope: Global")
        .replace("    storage: false", "    storage: true");
    let f = write(&api, "bad-crd.yaml", &bad);
    let err = api.kubectl(&["apply", "-f", &f]).err();
    for want in [
        "The CustomResourceDefinition \"crontab.stable.example.com\" is invalid",
        "metadata.name: Invalid value: \"crontab.stable.example.com\": must be spec.names.plural+\".\"+spec.group",
        "spec.scope: Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespaced\"",
        "must have exactly one version marked as storage version",
    ] {
        assert!(err.contains(want), "{want} missing: {err}");
    }
    let noschema = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: things.x.example.com\nspec:\n  group: x.example.com\n  scope: Cluster\n  names: {plural: things, kind: Thing}\n  versions: [{name: v1, served: true, storage: true}]\n";
    let f = write(&api, "noschema.yaml", noschema);
    api.kubectl(&["create", "-f", &f]).fails_with(
        "spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required",
    );
}

/// Custom resources are authorized by group and resource like built-in
/// ones, and a ClusterRole aggregated into `view` can grant them.
#[test]
fn custom_resources_rbac() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    define(&api);
    let f = write(&api, "a.yaml", &crontab("a", ""));
    api.kubectl_ok(&["create", "-f", &f]);
    api.kubectl_ok(&[
        "create",
        "role",
        "ct-reader",
        "--verb=get,list",
        "--resource=crontabs.stable.example.com",
    ]);
    api.kubectl_ok(&[
        "create",
        "rolebinding",
        "alice-ct",
        "--role=ct-reader",
        "--user=alice",
    ]);
    assert_eq!(
        api.kubectl_ok(&["--as=alice", "get", "ct", "-o", "name"]),
        "crontab.stable.example.com/a\n"
    );
    api.kubectl(&["--as=alice", "delete", "ct", "a"]).fails_with(
        "crontabs.stable.example.com \"a\" is forbidden: User \"alice\" cannot delete resource \"crontabs\" in API group \"stable.example.com\" in the namespace \"default\"",
    );
    api.kubectl(&["--as=bob", "get", "ct"]).fails_with(
        "User \"bob\" cannot list resource \"crontabs\" in API group \"stable.example.com\" in the namespace \"default\"",
    );
    // Aggregated into `view`, then granted through it.
    let agg = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: crontab-view\n  labels:\n    rbac.authorization.k8s.io/aggregate-to-view: \"true\"\nrules:\n- apiGroups: [stable.example.com]\n  resources: [crontabs]\n  verbs: [get, list, watch]\n";
    let f = write(&api, "agg.yaml", agg);
    api.kubectl_ok(&["create", "-f", &f]);
    api.kubectl_ok(&[
        "create",
        "rolebinding",
        "bob-view",
        "--clusterrole=view",
        "--user=bob",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = api.kubectl(&["--as=bob", "get", "ct", "-o", "name"]);
        if out.success() {
            assert_eq!(out.ok(), "crontab.stable.example.com/a\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "view never granted crontabs: {}",
            out.err()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A deleted CRD waits for its objects: one held by a finalizer keeps it
/// `Terminating` (still readable, no creates) until the finalizer goes.
#[test]
fn deleting_a_crd_waits_for_its_objects() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    define(&api);
    let held = crontab("held", "").replace("  labels:", "  finalizers: [keel.dev/hold]\n  labels:");
    let f = write(&api, "held.yaml", &held);
    api.kubectl_ok(&["create", "-f", &f]);
    api.kubectl_ok(&["delete", "crd", CRD_NAME, "--wait=false"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let obj = json(&api.kubectl_ok(&["get", "ct", "held", "-o", "json"]));
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never marked: {obj}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let crd = json(&api.kubectl_ok(&["get", "crd", CRD_NAME, "-o", "json"]));
    let terminating = crd["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Terminating").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(terminating["status"], "True", "{crd}");
    let f = write(&api, "late.yaml", &crontab("late", ""));
    api.kubectl(&["create", "-f", &f])
        .fails_with("create not allowed while custom resource definition is terminating");
    api.kubectl_ok(&[
        "patch",
        "ct",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    api.kubectl_ok(&[
        "wait",
        "--for=delete",
        &format!("crd/{CRD_NAME}"),
        "--timeout=20s",
    ]);
}

/// Older kubectls: 1.27 (`/openapi/v2`, legacy discovery) and 1.29
/// (legacy discovery: no aggregated `v2beta1`) find the custom resource,
/// apply a custom object twice and print its columns. Skipped when the
/// binaries are not installed.
#[test]
fn older_kubectls_use_custom_resources() {
    let dir = std::path::Path::new("/usr/lib/google-cloud-sdk/bin");
    let versions: Vec<_> = ["1.27", "1.29"]
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
    define(&api);
    for (i, bin) in versions.iter().enumerate() {
        let run = |args: &[&str]| api.run_kubectl(bin, args, None).ok();
        let name = format!("old-{i}");
        let f = write(&api, &format!("{name}.yaml"), &crontab(&name, ""));
        assert_eq!(
            run(&["apply", "-f", &f]),
            format!("crontab.stable.example.com/{name} created\n")
        );
        assert_eq!(
            run(&["apply", "-f", &f]),
            format!("crontab.stable.example.com/{name} unchanged\n")
        );
        let table = run(&["get", "ct", &name]);
        assert!(
            table.starts_with("NAME") && table.contains("REPLICAS"),
            "{table}"
        );
    }
}

/// Server-side apply on a custom object: created, owned by its manager,
/// pruned and validated like other writes, and a second manager's change
/// of an owned field is a conflict.
#[test]
fn custom_resources_server_side_apply() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    define(&api);
    let f = write(&api, "ssa.yaml", &crontab("ssa", ""));
    assert_eq!(
        api.kubectl_ok(&["apply", "--server-side", "-f", &f]),
        "crontab.stable.example.com/ssa serverside-applied\n"
    );
    let obj = json(&api.kubectl_ok(&["get", "ct", "ssa", "-o", "json", "--show-managed-fields"]));
    assert_eq!(
        obj["metadata"]["managedFields"][0]["manager"], "kubectl",
        "{obj}"
    );
    assert_eq!(obj["spec"]["image"], "busybox", "defaulted");
    let other = write(
        &api,
        "ssa2.yaml",
        &crontab("ssa", "").replace("replicas: 1", "replicas: 4"),
    );
    api.kubectl(&["apply", "--server-side", "--field-manager=ci", "-f", &other])
        .fails_with("conflict with \"kubectl\"");
    let bad = write(
        &api,
        "ssa3.yaml",
        &crontab("ssa", "").replace("replicas: 1", "replicas: 40"),
    );
    api.kubectl(&["apply", "--server-side", "-f", &bad])
        .fails_with("spec.replicas in body should be less than or equal to 10");
}
