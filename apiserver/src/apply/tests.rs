//! Apply and update ownership, end to end on JSON objects.

use serde_json::{json, Value};

use super::*;

fn writer<'a>(res: &'a ResourceInfo, manager: &str) -> Writer<'a> {
    Writer {
        res,
        subresource: None,
        manager: manager.to_string(),
    }
}

fn configmaps() -> &'static ResourceInfo {
    crate::registry::lookup("", "v1", "configmaps").expect("configmaps")
}

fn deployments() -> &'static ResourceInfo {
    crate::registry::lookup("apps", "v1", "deployments").expect("deployments")
}

fn fields_of(obj: &Value, manager: &str) -> Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["manager"] == manager))
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or(Value::Null)
}

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
}

#[test]
fn apply_creates_and_owns_its_fields() {
    let out = apply(
        &writer(configmaps(), "a"),
        None,
        &cm(json!({"x": "1"})),
        false,
    )
    .expect("apply");
    assert_eq!(out["data"], json!({"x": "1"}));
    let entry = &out["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "a");
    assert_eq!(entry["operation"], "Apply");
    assert_eq!(entry["apiVersion"], "v1");
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert_eq!(entry["fieldsV1"], json!({"f:data": {"f:x": {}}}));
}

#[test]
fn conflicts_with_another_applier_unless_forced() {
    let live = apply(
        &writer(configmaps(), "a"),
        None,
        &cm(json!({"x": "1", "y": "1"})),
        false,
    )
    .expect("first");
    // Same value: shared ownership, no conflict.
    let shared = apply(
        &writer(configmaps(), "b"),
        Some(&live),
        &cm(json!({"x": "1"})),
        false,
    )
    .expect("same value");
    assert_eq!(
        fields_of(&shared, "a"),
        json!({"f:data": {"f:x": {}, "f:y": {}}})
    );
    assert_eq!(fields_of(&shared, "b"), json!({"f:data": {"f:x": {}}}));
    // Different values: one conflict per field.
    let err = apply(
        &writer(configmaps(), "b"),
        Some(&live),
        &cm(json!({"x": "2", "y": "2"})),
        false,
    )
    .expect_err("conflicts");
    assert_eq!(err.code, 409);
    assert_eq!(
        err.message,
        "Apply failed with 2 conflicts: conflicts with \"a\":\n- .data.x\n- .data.y"
    );
    let err = apply(
        &writer(configmaps(), "b"),
        Some(&live),
        &cm(json!({"x": "2"})),
        false,
    )
    .expect_err("conflict");
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"a\": .data.x"
    );
    assert_eq!(
        err.details.expect("causes")["causes"][0]["type"],
        "FieldManagerConflict"
    );
    // Forced: the value and the ownership move.
    let forced = apply(
        &writer(configmaps(), "b"),
        Some(&live),
        &cm(json!({"x": "2"})),
        true,
    )
    .expect("forced");
    assert_eq!(forced["data"], json!({"x": "2", "y": "1"}));
    assert_eq!(fields_of(&forced, "a"), json!({"f:data": {"f:y": {}}}));
    assert_eq!(fields_of(&forced, "b"), json!({"f:data": {"f:x": {}}}));
}

#[test]
fn dropped_fields_are_removed_unless_someone_else_owns_them() {
    let w = writer(configmaps(), "a");
    let live = apply(&w, None, &cm(json!({"x": "1", "y": "1", "z": "1"})), false).expect("first");
    let live = apply(
        &writer(configmaps(), "b"),
        Some(&live),
        &cm(json!({"z": "1"})),
        false,
    )
    .expect("b shares z");
    let out = apply(&w, Some(&live), &cm(json!({"x": "1"})), false).expect("drop y and z");
    assert_eq!(out["data"], json!({"x": "1", "z": "1"}));
    assert_eq!(fields_of(&out, "a"), json!({"f:data": {"f:x": {}}}));
}

#[test]
fn no_op_apply_keeps_the_object_as_it_is() {
    let w = writer(configmaps(), "a");
    let mut live = apply(&w, None, &cm(json!({"x": "1"})), false).expect("first");
    live["metadata"]["managedFields"][0]["time"] = json!("2020-01-01T00:00:00Z");
    let again = apply(&w, Some(&live), &cm(json!({"x": "1"})), false).expect("again");
    assert_eq!(again, live);
}

fn deployment(replicas: i64, containers: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}},
      "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": containers}}}})
}

#[test]
fn updates_are_recorded_and_conflict_with_appliers() {
    let res = deployments();
    let mut created = deployment(
        1,
        json!([{"name": "c", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]),
    );
    record_update(
        &writer(res, "kubectl-client-side-apply"),
        None,
        &mut created,
        None,
    )
    .expect("create");
    let f = fields_of(&created, "kubectl-client-side-apply");
    assert_eq!(f["f:metadata"], json!({"f:labels": {".": {}, "f:app": {}}}));
    assert_eq!(f["f:spec"]["f:replicas"], json!({}));
    assert_eq!(
        f["f:spec"]["f:template"]["f:spec"]["f:containers"],
        json!({"k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:image": {},
            "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:protocol": {}}}}})
    );
    assert_eq!(
        created["metadata"]["managedFields"][0]["operation"],
        "Update"
    );
    let err = apply(
        &writer(res, "kubectl"),
        Some(&created),
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 3}}),
        false,
    )
    .expect_err("conflict");
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
    );
    // An update by another manager takes the fields it changes.
    let mut edited = created.clone();
    edited["spec"]["replicas"] = json!(5);
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("j");
    record_update(
        &writer(res, "kubectl-edit"),
        Some(&created),
        &mut edited,
        None,
    )
    .expect("edit");
    assert_eq!(
        fields_of(&edited, "kubectl-edit"),
        json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {"f:image": {}}}}}}})
    );
    assert!(fields_of(&edited, "kubectl-client-side-apply")["f:spec"]
        .get("f:replicas")
        .is_none());
}

#[test]
fn apply_merges_containers_by_name_and_removes_dropped_ones() {
    let res = deployments();
    let w = writer(res, "kubectl");
    let two = json!([{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]);
    let live = apply(&w, None, &deployment(1, two), false).expect("create");
    let one = json!([{"name": "a", "image": "3"}]);
    let out = apply(&w, Some(&live), &deployment(1, one), false).expect("drop b");
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        json!([{"name": "a", "image": "3"}])
    );
    assert_eq!(
        fields_of(&out, "kubectl")["f:spec"]["f:template"]["f:spec"]["f:containers"],
        json!({"k:{\"name\":\"a\"}": {".": {}, "f:name": {}, "f:image": {}}})
    );
}

#[test]
fn client_managed_fields_replace_the_live_ones() {
    let res = configmaps();
    let mut live = cm(json!({"x": "1"}));
    record_update(
        &writer(res, "kubectl-client-side-apply"),
        None,
        &mut live,
        None,
    )
    .expect("create");
    let moved = json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
        "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:x": {}}}}]);
    let mut new = live.clone();
    record_update(&writer(res, "kubectl"), Some(&live), &mut new, Some(&moved)).expect("upgrade");
    assert_eq!(new["metadata"]["managedFields"], moved);
    let bad = json!([{"manager": "m", "operation": "Nope"}]);
    let mut new = live.clone();
    assert_eq!(
        record_update(&writer(res, "m"), Some(&live), &mut new, Some(&bad))
            .expect_err("bad")
            .code,
        400
    );
}

#[test]
fn yaml_and_json_configurations() {
    let v =
        parse_config(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"1\"\n")
            .expect("yaml");
    assert_eq!(v["data"]["a"], "1");
    assert_eq!(parse_config(br#"{"a":1}"#).expect("json")["a"], 1);
    assert_eq!(parse_config(b"- 1").expect_err("list").code, 400);
    assert_eq!(parse_config(b"a: [").expect_err("bad").code, 400);
    assert!(check_manager(None, true).is_err());
    assert!(check_manager(Some("m"), true).is_ok());
    assert_eq!(
        update_manager(
            None,
            Some("kubectl-edit/v1.32.4 (linux/amd64) kubernetes/abc")
        ),
        "kubectl-edit"
    );
    assert_eq!(update_manager(Some("x"), Some("kubectl/v1")), "x");
}

#[test]
fn kubectl_takes_over_its_client_side_applied_fields() {
    let res = configmaps();
    let last = r#"{"apiVersion":"v1","data":{"x":"1"},"kind":"ConfigMap","metadata":{"annotations":{},"name":"c"}}"#;
    let mut live = cm(json!({"x": "1"}));
    live["metadata"]["annotations"] = json!({last_applied::ANNOTATION: last});
    record_update(
        &writer(res, "kubectl-client-side-apply"),
        None,
        &mut live,
        None,
    )
    .expect("create");
    // Another applier conflicts; kubectl does not, and the annotation follows.
    assert_eq!(
        apply(
            &writer(res, "other"),
            Some(&live),
            &cm(json!({"x": "2"})),
            false
        )
        .expect_err("conflict")
        .code,
        409
    );
    let out = apply(
        &writer(res, "kubectl"),
        Some(&live),
        &cm(json!({"x": "2"})),
        false,
    )
    .expect("kubectl upgrades");
    assert_eq!(out["data"]["x"], "2");
    assert_eq!(
        out["metadata"]["annotations"][last_applied::ANNOTATION],
        "{\"apiVersion\":\"v1\",\"data\":{\"x\":\"2\"},\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"c\"}}\n"
    );
    // A field changed since the client-side apply still conflicts.
    let mut drifted = live.clone();
    drifted["data"]["x"] = json!("5");
    let mut drifted_out = drifted.clone();
    record_update(
        &writer(res, "kubectl-edit"),
        Some(&live),
        &mut drifted_out,
        None,
    )
    .expect("edit");
    drifted = drifted_out;
    let err = apply(
        &writer(res, "kubectl"),
        Some(&drifted),
        &cm(json!({"x": "2"})),
        false,
    )
    .expect_err("drifted field conflicts");
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.x"
    );
}

#[test]
fn status_is_owned_through_the_status_subresource_only() {
    let res = deployments();
    let mut created = deployment(1, json!([]));
    created["status"] = json!({"replicas": 1});
    record_update(&writer(res, "m"), None, &mut created, None).expect("create");
    assert!(fields_of(&created, "m").get("f:status").is_none());
    let mut updated = created.clone();
    updated["status"]["replicas"] = json!(2);
    let w = Writer {
        res,
        subresource: Some("status"),
        manager: "controller".into(),
    };
    record_update(&w, Some(&created), &mut updated, None).expect("status");
    let e = updated["metadata"]["managedFields"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["manager"] == "controller"))
        .cloned()
        .expect("status entry");
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));
}

#[test]
fn clearing_managed_fields() {
    let res = configmaps();
    let mut live = cm(json!({"x": "1"}));
    record_update(&writer(res, "a"), None, &mut live, None).expect("create");
    let mut new = live.clone();
    record_update(&writer(res, "b"), Some(&live), &mut new, Some(&json!([{}]))).expect("clear");
    assert!(new["metadata"].get("managedFields").is_none(), "{new}");
    // An empty list is ignored: the stored entries stay.
    let mut new = live.clone();
    record_update(&writer(res, "b"), Some(&live), &mut new, Some(&json!([]))).expect("keep");
    assert_eq!(
        new["metadata"]["managedFields"],
        live["metadata"]["managedFields"]
    );
}

/// The example of Kubernetes' "Server-Side Apply" documentation: the
/// ConfigMap `test-cm` applied by `kubectl` owns exactly
/// `f:metadata.f:labels.f:test-label` and `f:data.f:key`.
#[test]
fn kubernetes_documentation_example() {
    let config = parse_config(
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: test-cm\n  namespace: default\n  labels:\n    test-label: test\ndata:\n  key: some value\n",
    )
    .expect("yaml");
    let out = apply(&writer(configmaps(), "kubectl"), None, &config, false).expect("apply");
    let entry = &out["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "kubectl");
    assert_eq!(entry["operation"], "Apply");
    assert_eq!(
        entry["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:test-label": {}}}, "f:data": {"f:key": {}}})
    );
}
