//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`) and the custom
//! resources they define.
//!
//! - [`validate`]: defaulting and validation of the CRD objects themselves;
//! - [`schema`]: structural schemas: pruning, defaulting, validation of
//!   custom objects;
//! - [`registry`]: the CRD-fed layer of `crate::registry` (rows per served
//!   version) and the details only custom resources have;
//! - [`controller`]: the loop that keeps that layer current, sets the
//!   CRDs' status (`NamesAccepted`, `Established`, `storedVersions`) and
//!   deletes the objects of a deleted CRD before the CRD itself;
//! - [`columns`]: `additionalPrinterColumns` in Table output.
//!
//! Writes reach this module at three points: [`unknown_fields`] (the
//! `fieldValidation` directive, from `crate::validation`), [`admit`]
//! (between the mutating and the validating admission plugins, as
//! Kubernetes validates objects) and [`to_storage_version`] (the bytes
//! stored); reads at [`convert_out`].

pub mod columns;
pub mod controller;
pub mod registry;
pub mod schema;
pub mod validate;

use serde_json::{json, Value};

use crate::admission::{Attributes, Operation};
use crate::registry::ResourceInfo;
use crate::status::{ApiError, ApiResult};

/// The CRD resource's group.
pub const GROUP: &str = "apiextensions.k8s.io";

/// True for the `customresourcedefinitions` resource itself.
pub fn is_crd(res: &ResourceInfo) -> bool {
    res.group == GROUP && res.plural == "customresourcedefinitions"
}

/// The paths of the fields of a custom object its schema does not
/// specify (what pruning will drop), for `fieldValidation`.
pub fn unknown_fields(res: &ResourceInfo, obj: &Value) -> Vec<String> {
    let Some(v) = registry::version_of(res) else {
        return Vec::new();
    };
    let mut copy = obj.clone();
    schema::prune(&v.schema, &mut copy, true)
}

/// A 422 for a custom resource or a CRD, worded as Kubernetes does
/// (`CronTab.stable.example.com "a" is invalid: …`).
fn invalid(res: &ResourceInfo, name: &str, causes: Vec<crate::status::Cause>) -> ApiError {
    let mut e = ApiError::invalid(res, name, causes);
    let qualified = format!("{}.{}", res.kind, res.group);
    if let Some(rest) = e.message.strip_prefix(res.kind) {
        e.message = format!("{qualified}{rest}");
    }
    e
}

/// The status a new CRD starts with.
fn initial_crd_status() -> Value {
    json!({
        "conditions": [],
        "acceptedNames": {"plural": "", "kind": ""},
        "storedVersions": [],
    })
}

/// Prunes, defaults and validates a custom object, or defaults and
/// validates a CRD (and gives a new one its cleanup finalizer and initial
/// status). Deletes pass untouched.
pub fn admit(attrs: &mut Attributes) -> ApiResult<()> {
    if attrs.operation == Operation::Delete {
        return Ok(());
    }
    let res = attrs.res;
    if is_crd(res) {
        if attrs.subresource.is_none() {
            validate::default_crd(&mut attrs.object);
        }
        if attrs.operation == Operation::Create {
            attrs.object["status"] = initial_crd_status();
            let m = crate::object::meta_mut(&mut attrs.object);
            let fins = m.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = fins.as_array_mut() {
                if !list.iter().any(|f| f == validate::CLEANUP_FINALIZER) {
                    list.push(json!(validate::CLEANUP_FINALIZER));
                }
            }
        }
        let causes = validate::validate_crd(&attrs.object, attrs.old.as_ref());
        if !causes.is_empty() {
            return Err(invalid(res, &attrs.name, causes));
        }
        return Ok(());
    }
    let Some(v) = registry::version_of(res) else {
        return Ok(());
    };
    if attrs.operation == Operation::Create && v.terminating {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "create not allowed while custom resource definition is terminating",
        ));
    }
    if attrs.operation == Operation::Create && res.status {
        // The status subresource owns status: a create does not set it.
        if let Some(m) = attrs.object.as_object_mut() {
            m.remove("status");
        }
    }
    schema::prune(&v.schema, &mut attrs.object, true);
    schema::default(&v.schema, &mut attrs.object);
    let causes = schema::validate(&v.schema, &attrs.object);
    if !causes.is_empty() {
        return Err(invalid(res, &attrs.name, causes));
    }
    Ok(())
}

/// An object about to be stored, in its storage version (conversion
/// `None`: only `apiVersion` changes); anything but a custom object in a
/// non-storage version is left alone.
pub fn to_storage_version(obj: &mut Value) {
    let (Some(api_version), Some(kind)) = (
        obj.get("apiVersion").and_then(Value::as_str),
        obj.get("kind").and_then(Value::as_str),
    ) else {
        return;
    };
    let Some((group, version)) = api_version.split_once('/') else {
        return;
    };
    let Some(res) = crate::registry::by_kind(group, version, kind).filter(|r| r.custom) else {
        return;
    };
    if let Some(v) = registry::version_of(res) {
        if !v.storage_version.is_empty() && v.storage_version != version {
            obj["apiVersion"] = json!(format!("{group}/{}", v.storage_version));
        }
    }
}

/// An object read from the store, as version `res.version` shows it
/// (conversion `None`: `apiVersion` rewritten), with the version's schema
/// defaults (added since the object was written) filled in, as Kubernetes
/// defaults on reads too.
pub fn convert_out(res: &ResourceInfo, obj: &mut Value) {
    if !res.custom {
        return;
    }
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(res.group_version()));
    }
    if let Some(v) = registry::version_of(res) {
        schema::default(&v.schema, obj);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(res: &'static ResourceInfo, operation: Operation, object: Value) -> Attributes {
        Attributes {
            operation,
            res,
            subresource: None,
            namespace: Some("default".into()),
            name: "a".into(),
            object,
            old: None,
            dry_run: false,
            charges: Vec::new(),
            reads: Default::default(),
        }
    }

    #[test]
    fn custom_objects_are_pruned_defaulted_validated_and_stored_in_the_storage_version() {
        let crd = json!({
            "metadata": {"name": "gizmos.admit.keel.dev"},
            "spec": {"group": "admit.keel.dev", "scope": "Namespaced",
                     "names": {"plural": "gizmos", "kind": "Gizmo"},
                     "versions": [
                        {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                         "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                            "spec": {"type": "object", "properties": {
                                "size": {"type": "integer", "default": 1, "maximum": 5}}}}}}},
                        {"name": "v1beta1", "served": true, "storage": false,
                         "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}
        });
        let _layer = crate::registry::TEST_LAYER
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        registry::serve(std::slice::from_ref(&crd));
        let v1 = crate::registry::lookup("admit.keel.dev", "v1", "gizmos").expect("served");
        let beta = crate::registry::lookup("admit.keel.dev", "v1beta1", "gizmos").expect("served");
        assert_eq!(
            unknown_fields(v1, &json!({"spec": {"size": 2, "colour": "red"}})),
            vec!["spec.colour"]
        );
        let mut a = attrs(
            v1,
            Operation::Create,
            json!({
            "apiVersion": "admit.keel.dev/v1", "kind": "Gizmo", "metadata": {"name": "a"},
            "spec": {"colour": "red"}, "status": {"x": 1}}),
        );
        admit(&mut a).expect("admitted");
        assert_eq!(a.object["spec"], json!({"size": 1}));
        assert!(
            a.object.get("status").is_none(),
            "status belongs to /status"
        );
        let mut big = attrs(
            v1,
            Operation::Update,
            json!({"metadata": {"name": "a"}, "spec": {"size": 9}}),
        );
        let e = admit(&mut big).expect_err("422");
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .starts_with("Gizmo.admit.keel.dev \"a\" is invalid: spec.size: Invalid value: 9"),
            "{}",
            e.message
        );
        let mut b = attrs(
            beta,
            Operation::Create,
            json!({
            "apiVersion": "admit.keel.dev/v1beta1", "kind": "Gizmo", "metadata": {"name": "a"}, "spec": {}}),
        );
        admit(&mut b).expect("admitted");
        assert_eq!(
            b.object["apiVersion"], "admit.keel.dev/v1beta1",
            "the response's"
        );
        let mut out = b.object.clone();
        to_storage_version(&mut out);
        assert_eq!(out["apiVersion"], "admit.keel.dev/v1", "the store's");
        convert_out(beta, &mut out);
        assert_eq!(out["apiVersion"], "admit.keel.dev/v1beta1");
        // A terminating CRD's resources take no new objects.
        let mut dying = crd;
        dying["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
        registry::serve(&[dying]);
        let mut late = attrs(v1, Operation::Create, json!({"metadata": {"name": "b"}}));
        let e = admit(&mut late).expect_err("405");
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                405,
                "create not allowed while custom resource definition is terminating"
            )
        );
        registry::serve(&[]);
    }
}
