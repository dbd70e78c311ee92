//! `Priority`: a new pod's `spec.priority` comes from its PriorityClass
//! (`priorityClassName`), or from the cluster's global default class, or is
//! 0; a class that does not exist refuses the pod. The built-in
//! `system-node-critical` and `system-cluster-critical` classes are created
//! at start ([`bootstrap_classes`]). A second `globalDefault` class is
//! refused.

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::reads::{Read, Reads};
use super::{Attributes, Operation, Plugin};
use crate::handlers::{store_err, App};
use crate::object::{self, meta_str};
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult};

/// The plugin.
#[derive(Debug)]
pub struct Priority;

/// The preemption policy of classes and pods that do not name one.
pub const DEFAULT_PREEMPTION: &str = "PreemptLowerPriority";

/// The built-in classes: (name, value, description).
pub const SYSTEM_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

fn classes() -> ApiResult<&'static ResourceInfo> {
    registry::lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| ApiError::internal("priorityclasses are not registered"))
}

/// Creates the built-in classes that do not exist yet.
pub async fn bootstrap_classes(app: &App) -> ApiResult<()> {
    let res = classes()?;
    for (name, value, description) in SYSTEM_CLASSES {
        let obj = json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name, "uid": object::new_uid(), "creationTimestamp": object::now_rfc3339()},
            "value": value,
            "description": description,
            "preemptionPolicy": DEFAULT_PREEMPTION,
        });
        app.store
            .create(
                &res.key(None, name),
                crate::handlers::write::to_store(&obj)?,
            )
            .await
            .map_err(store_err)?;
    }
    Ok(())
}

/// Every class marked `globalDefault`.
async fn global_defaults(app: &App, reads: &Reads) -> ApiResult<Vec<Value>> {
    let (all, _) = reads.list_decodable(app, &classes()?.prefix(None)).await?;
    Ok(all
        .into_iter()
        .map(|(c, _)| c)
        .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
        .collect())
}

/// What resolving a pod's priority reads: its class, or every class.
fn resolve_reads(attrs: &Attributes) -> Option<Read> {
    if !attrs.is_core_create("Pod") {
        return None;
    }
    let res = classes().ok()?;
    Some(match class_name(attrs) {
        Some(name) => Read::Object(res.key(None, name)),
        None => Read::Prefix(res.prefix(None)),
    })
}

/// The PriorityClass a pod names, if any.
fn class_name(attrs: &Attributes) -> Option<&str> {
    attrs
        .object
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

/// (class name, value, preemption policy) for a pod.
async fn resolve(app: &App, attrs: &Attributes) -> ApiResult<(String, i64, String)> {
    let policy = |c: &Value| {
        c.get("preemptionPolicy")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_PREEMPTION)
            .to_string()
    };
    let value = |c: &Value| c.get("value").and_then(Value::as_i64).unwrap_or(0);
    match class_name(attrs) {
        Some(name) => match attrs.reads.object(app, &classes()?.key(None, name)).await? {
            Some((c, _)) => Ok((name.to_string(), value(&c), policy(&c))),
            None => Err(attrs.forbidden(format!("no PriorityClass with name {name} was found"))),
        },
        None => {
            // The lowest of the global defaults, as Kubernetes picks.
            let chosen = global_defaults(app, &attrs.reads)
                .await?
                .into_iter()
                .min_by_key(value);
            Ok(match chosen {
                Some(c) => (
                    meta_str(&c, "name").unwrap_or("").to_string(),
                    value(&c),
                    policy(&c),
                ),
                None => (String::new(), 0, DEFAULT_PREEMPTION.to_string()),
            })
        }
    }
}

async fn admit(app: &App, attrs: &mut Attributes) -> ApiResult<()> {
    if !attrs.is_core_create("Pod") {
        return Ok(());
    }
    let (class, value, policy) = resolve(app, attrs).await?;
    if let Some(given) = attrs
        .object
        .pointer("/spec/priority")
        .and_then(Value::as_i64)
    {
        if given != value {
            return Err(attrs.forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
    }
    if let Some(spec) = attrs.object.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("priority".into(), json!(value));
        spec.insert("preemptionPolicy".into(), json!(policy));
        if !class.is_empty() {
            spec.insert("priorityClassName".into(), json!(class));
        }
    }
    Ok(())
}

async fn validate(app: &App, attrs: &Attributes) -> ApiResult<()> {
    let is_class = attrs.res.group == "scheduling.k8s.io" && attrs.res.kind == "PriorityClass";
    if !is_class
        || attrs.operation == Operation::Delete
        || attrs.object.get("globalDefault").and_then(Value::as_bool) != Some(true)
    {
        return Ok(());
    }
    for other in global_defaults(app, &attrs.reads).await? {
        let name = meta_str(&other, "name").unwrap_or("");
        if name != attrs.name {
            return Err(attrs.forbidden(format!(
                "PriorityClass {name} is already marked as default. Only one default can exist"
            )));
        }
    }
    Ok(())
}

impl Plugin for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    fn reads(&self, attrs: &Attributes) -> Vec<Read> {
        resolve_reads(attrs).into_iter().collect()
    }

    fn admit<'a>(
        &'a self,
        app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(admit(app, attrs))
    }

    fn validate<'a>(
        &'a self,
        app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(validate(app, attrs))
    }
}
