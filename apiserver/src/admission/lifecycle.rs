//! `NamespaceLifecycle`: nothing new is created in a namespace that does not
//! exist or is being terminated, and the system namespaces cannot be deleted
//! (kube-apiserver's words in both errors).

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::reads::Read;
use super::{Attributes, Operation, Plugin};
use crate::handlers::App;
use crate::registry;
use crate::status::{ApiError, ApiResult};

/// Namespaces that can never be deleted.
pub const IMMORTAL: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The plugin.
#[derive(Debug)]
pub struct NamespaceLifecycle;

/// True if a namespace object is being terminated.
pub fn terminating(ns: &Value) -> bool {
    ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
        || ns.pointer("/metadata/deletionTimestamp").is_some()
}

/// The namespace a request creates something in: the one this plugin
/// reads.
fn created_in(attrs: &Attributes) -> Option<&str> {
    let is_namespace = attrs.res.group.is_empty() && attrs.res.kind == "Namespace";
    if is_namespace || attrs.operation != Operation::Create {
        return None;
    }
    attrs.namespace.as_deref().filter(|_| attrs.res.namespaced)
}

fn namespaces() -> ApiResult<&'static registry::ResourceInfo> {
    registry::lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not registered"))
}

async fn check(app: &App, attrs: &Attributes) -> ApiResult<()> {
    let is_namespace = attrs.res.group.is_empty() && attrs.res.kind == "Namespace";
    if is_namespace {
        if attrs.operation == Operation::Delete && IMMORTAL.contains(&attrs.name.as_str()) {
            return Err(attrs.forbidden("this namespace may not be deleted"));
        }
        return Ok(());
    }
    let Some(ns) = created_in(attrs) else {
        return Ok(());
    };
    let nsres = namespaces()?;
    let Some((namespace, _)) = attrs.reads.object(app, &nsres.key(None, ns)).await? else {
        return Err(ApiError::not_found(nsres, ns));
    };
    if terminating(&namespace) {
        let mut err = attrs.forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        ));
        if let Some(d) = err.details.as_mut() {
            d["causes"] = json!([{
                "reason": "NamespaceTerminating",
                "message": format!("namespace {ns} is being terminated"),
                "field": "metadata.namespace",
            }]);
        }
        return Err(err);
    }
    Ok(())
}

impl Plugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    fn reads(&self, attrs: &Attributes) -> Vec<Read> {
        let key = created_in(attrs).and_then(|ns| Some(namespaces().ok()?.key(None, ns)));
        key.map(Read::Object).into_iter().collect()
    }

    /// Runs in the mutating phase, first of all plugins (as in
    /// kube-apiserver), so no other plugin works on a request for a
    /// namespace that does not exist.
    fn admit<'a>(
        &'a self,
        app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(check(app, attrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminating_by_phase_or_timestamp() {
        assert!(terminating(&json!({"status": {"phase": "Terminating"}})));
        assert!(terminating(
            &json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
        ));
        assert!(!terminating(&json!({"status": {"phase": "Active"}})));
    }
}
