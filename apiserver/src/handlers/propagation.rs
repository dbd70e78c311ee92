//! `DeleteOptions.propagationPolicy` (and the deprecated
//! `orphanDependents`): what becomes of an object's dependents when it is
//! deleted, expressed, as Kubernetes does, as finalizers on the object.
//!
//! - `Orphan`: the `orphan` finalizer; the garbage collector removes the
//!   object's uid from its dependents' `ownerReferences`, then the finalizer.
//! - `Foreground`: the `foregroundDeletion` finalizer; the garbage collector
//!   deletes the dependents and removes the finalizer once no dependent with
//!   `blockOwnerDeletion: true` is left.
//! - `Background`: neither; the object goes at once (if nothing else holds
//!   it) and the garbage collector deletes the dependents it left.
//!
//! Without an explicit policy an object keeps the GC finalizer it already
//! has, else gets its kind's default (`Background` for every kind keel
//! serves: the kinds whose Kubernetes default is `Orphan` are the legacy
//! `extensions/v1beta1`, `apps/v1beta1`/`v1beta2` ones and
//! ReplicationControllers, which keel does not serve).

use serde_json::Value;

use crate::status::{ApiError, ApiResult, Cause};

/// The finalizer of `propagationPolicy: Orphan`.
pub const ORPHAN: &str = "orphan";
/// The finalizer of `propagationPolicy: Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";

/// A deletion propagation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are kept; their owner references to the object are removed.
    Orphan,
    /// The object goes at once; the garbage collector deletes the dependents.
    Background,
    /// The dependents go first (those that block), then the object.
    Foreground,
}

impl Propagation {
    /// The policy named `s` (`Orphan`, `Background`, `Foreground`).
    pub fn parse(s: &str) -> ApiResult<Propagation> {
        match s {
            "Orphan" => Ok(Propagation::Orphan),
            "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            other => Err(invalid(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            ))),
        }
    }
}

/// A 422 about `DeleteOptions`, worded as Kubernetes words it.
fn invalid(why: String) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("DeleteOptions.meta.k8s.io \"\" is invalid: {why}"),
    )
}

/// The explicit policy of a DELETE: `propagationPolicy` or `orphanDependents`
/// from the `DeleteOptions` body, else from the query (`query` looks a
/// parameter up). Both set is a 422, as is an unknown policy.
pub fn from_options<'a>(
    body: &Value,
    query: impl Fn(&str) -> Option<&'a str>,
) -> ApiResult<Option<Propagation>> {
    let policy = match body.get("propagationPolicy") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => query("propagationPolicy")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy must be a string, not {other}"
            )))
        }
    };
    let orphan = match body.get("orphanDependents") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::Null) | None => query("orphanDependents")
            .filter(|s| !s.is_empty())
            .map(super::bool_param),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "orphanDependents must be a boolean, not {other}"
            )))
        }
    };
    match (policy, orphan) {
        (Some(p), Some(_)) => Err(invalid(format!(
            "propagationPolicy: Invalid value: {p:?}: orphanDependents and deletionPropagation cannot be both set"
        ))),
        (Some(p), None) => Propagation::parse(&p).map(Some),
        (None, Some(true)) => Ok(Some(Propagation::Orphan)),
        (None, Some(false)) => Ok(Some(Propagation::Background)),
        (None, None) => Ok(None),
    }
}

/// The object's `metadata.finalizers`.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The finalizers a deletion with `explicit` policy leaves on an object that
/// has `existing` (Kubernetes' `deletionFinalizersForGarbageCollection`):
/// both GC finalizers removed, then the one the policy asks for appended.
/// Without an explicit policy, a GC finalizer already there is kept.
pub fn deletion_finalizers(existing: &[String], explicit: Option<Propagation>) -> Vec<String> {
    let policy = explicit.unwrap_or_else(|| {
        if existing.iter().any(|f| f == ORPHAN) {
            Propagation::Orphan
        } else if existing.iter().any(|f| f == FOREGROUND) {
            Propagation::Foreground
        } else {
            Propagation::Background
        }
    });
    let mut out: Vec<String> = existing
        .iter()
        .filter(|f| *f != ORPHAN && *f != FOREGROUND)
        .cloned()
        .collect();
    match policy {
        Propagation::Orphan => out.push(ORPHAN.to_string()),
        Propagation::Foreground => out.push(FOREGROUND.to_string()),
        Propagation::Background => {}
    }
    out
}

/// The 422 cause of an object holding both GC finalizers (Kubernetes'
/// `ValidateFinalizers`), if it does.
pub fn validate_finalizers(obj: &Value) -> Option<Cause> {
    let f = finalizers(obj);
    if !(f.iter().any(|x| x == ORPHAN) && f.iter().any(|x| x == FOREGROUND)) {
        return None;
    }
    let shown: Vec<String> = f.iter().map(|x| format!("{x:?}")).collect();
    Some(Cause {
        reason: "FieldValueInvalid",
        message: format!(
            "Invalid value: []string{{{}}}: finalizer {ORPHAN} and {FOREGROUND} cannot be both set",
            shown.join(", ")
        ),
        field: "metadata.finalizers".into(),
    })
}

/// True if `a` and `b` hold the same finalizers (order aside).
pub fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_from_body_then_query() {
        let none = |_: &str| None;
        assert_eq!(from_options(&json!({}), none).ok(), Some(None));
        assert_eq!(
            from_options(&json!({"propagationPolicy": "Foreground"}), none).ok(),
            Some(Some(Propagation::Foreground))
        );
        assert_eq!(
            from_options(&json!({"orphanDependents": true}), none).ok(),
            Some(Some(Propagation::Orphan))
        );
        assert_eq!(
            from_options(&json!({"orphanDependents": false}), none).ok(),
            Some(Some(Propagation::Background))
        );
        let q = |k: &str| (k == "propagationPolicy").then_some("Orphan");
        assert_eq!(
            from_options(&json!({}), q).ok(),
            Some(Some(Propagation::Orphan))
        );
        let q = |k: &str| (k == "orphanDependents").then_some("true");
        assert_eq!(
            from_options(&json!({}), q).ok(),
            Some(Some(Propagation::Orphan))
        );
    }

    #[test]
    fn bad_options_are_422() {
        let none = |_: &str| None;
        let e = from_options(&json!({"propagationPolicy": "Sideways"}), none)
            .err()
            .map(|e| (e.code, e.message));
        assert_eq!(e.as_ref().map(|e| e.0), Some(422));
        assert!(e.is_some_and(|e| e.1.contains("Unsupported value: \"Sideways\"")));
        let e = from_options(
            &json!({"propagationPolicy": "Orphan", "orphanDependents": true}),
            none,
        )
        .err()
        .map(|e| (e.code, e.message));
        assert!(e.is_some_and(|e| e.0 == 422 && e.1.contains("cannot be both set")));
    }

    #[test]
    fn finalizers_follow_the_policy() {
        // Explicit policies replace any GC finalizer; others stay in place.
        assert_eq!(
            deletion_finalizers(&s(&["a", "foregroundDeletion"]), Some(Propagation::Orphan)),
            s(&["a", "orphan"])
        );
        assert_eq!(
            deletion_finalizers(&s(&["orphan"]), Some(Propagation::Foreground)),
            s(&["foregroundDeletion"])
        );
        assert_eq!(
            deletion_finalizers(&s(&["orphan", "a"]), Some(Propagation::Background)),
            s(&["a"])
        );
        // No policy: an existing GC finalizer is kept, else background.
        assert_eq!(deletion_finalizers(&s(&["orphan"]), None), s(&["orphan"]));
        assert_eq!(
            deletion_finalizers(&s(&["foregroundDeletion", "x"]), None),
            s(&["x", "foregroundDeletion"])
        );
        assert!(deletion_finalizers(&[], None).is_empty());
        assert!(same_set(&s(&["b", "a"]), &s(&["a", "b"])));
        let both = json!({"metadata": {"finalizers": ["orphan", "foregroundDeletion"]}});
        assert_eq!(
            validate_finalizers(&both).map(|c| c.message),
            Some("Invalid value: []string{\"orphan\", \"foregroundDeletion\"}: finalizer orphan and foregroundDeletion cannot be both set".to_string())
        );
        assert!(validate_finalizers(&json!({"metadata": {"finalizers": ["orphan"]}})).is_none());
        assert!(!same_set(&s(&["a"]), &s(&["a", "b"])));
    }
}
