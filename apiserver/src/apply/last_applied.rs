//! The move from client-side to server-side apply (kube-apiserver's
//! `lastAppliedManager` and `lastAppliedUpdater`): when the manager
//! `kubectl` applies to an object that carries kubectl's
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, conflicts
//! on fields whose live value is still the last client-side applied one
//! are allowed (the apply is forced), and the annotation is kept in step
//! with the applied configuration.

use serde_json::Value;

use super::fieldpath::Set;
use super::merge::{fields, Mode};
use super::schema::Node;

/// kubectl's client-side apply annotation.
pub const ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The manager whose applies upgrade client-side apply.
pub const MANAGER: &str = "kubectl";

fn annotation(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations")?
        .get(ANNOTATION)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// The fields an apply by `kubectl` may take without a conflict: those of
/// the last client-side applied configuration whose live value is still
/// the applied one (`None`: the object has no usable annotation).
pub fn allowed_conflicts(node: &Node, live: &Value) -> Option<Set> {
    let last: Value = serde_json::from_str(annotation(live)?).ok()?;
    if !last.is_object() {
        return None;
    }
    let last = fields(node, &last, Mode::Apply);
    let now = fields(node, live, Mode::Update);
    Some(last.set.filter(|p| match last.leaves.get(p) {
        Some(v) => now.leaves.get(p) == Some(v),
        None => now.set.has(p),
    }))
}

/// Writes the applied `config` (without the annotation itself) as the
/// annotation of `merged`, if `live` carried one.
pub fn sync_annotation(live: Option<&Value>, config: &Value, merged: &mut Value) {
    if live.and_then(annotation).is_none() {
        return;
    }
    let mut applied = config.clone();
    if let Some(a) = applied
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(ANNOTATION);
        if a.is_empty() {
            if let Some(m) = applied
                .pointer_mut("/metadata")
                .and_then(Value::as_object_mut)
            {
                m.remove("annotations");
            }
        }
    }
    let Ok(text) = serde_json::to_string(&applied) else {
        return;
    };
    if let Some(a) = merged
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.insert(ANNOTATION.into(), Value::String(format!("{text}\n")));
    }
}
