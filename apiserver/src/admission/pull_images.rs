//! `AlwaysPullImages` (off by default): every container of a new or updated
//! pod pulls its image (`imagePullPolicy: Always`), so a pod cannot use an
//! image cached on its node without the credentials to pull it.

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::{Attributes, Operation, Plugin};
use crate::handlers::App;
use crate::status::ApiResult;

/// The plugin.
#[derive(Debug)]
pub struct AlwaysPullImages;

/// The container lists of a pod spec.
pub const CONTAINER_LISTS: &[&str] = &["initContainers", "containers", "ephemeralContainers"];

fn applies(attrs: &Attributes) -> bool {
    matches!(attrs.operation, Operation::Create | Operation::Update)
        && attrs.subresource.is_none()
        && attrs.res.group.is_empty()
        && attrs.res.kind == "Pod"
}

/// Sets `imagePullPolicy: Always` on every container of `pod`.
pub fn force_always(pod: &mut Value) {
    for list in CONTAINER_LISTS {
        if let Some(Value::Array(cs)) = pod.pointer_mut(&format!("/spec/{list}")) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                c.insert("imagePullPolicy".into(), json!("Always"));
            }
        }
    }
}

/// The first container whose policy is not `Always`: (field path, policy).
fn not_always(pod: &Value) -> Option<(String, String)> {
    for list in CONTAINER_LISTS {
        let Some(cs) = pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for (i, c) in cs.iter().enumerate() {
            let p = c
                .get("imagePullPolicy")
                .and_then(Value::as_str)
                .unwrap_or("");
            if p != "Always" {
                return Some((format!("spec.{list}[{i}].imagePullPolicy"), p.to_string()));
            }
        }
    }
    None
}

impl Plugin for AlwaysPullImages {
    fn name(&self) -> &'static str {
        "AlwaysPullImages"
    }

    fn admit<'a>(
        &'a self,
        _app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        if applies(attrs) {
            force_always(&mut attrs.object);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn validate<'a>(
        &'a self,
        _app: &'a App,
        attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        let result = match not_always(&attrs.object).filter(|_| applies(attrs)) {
            Some((field, policy)) => Err(attrs.forbidden(format!(
                "{field}: Unsupported value: {policy:?}: supported values: \"Always\""
            ))),
            None => Ok(()),
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_pulls() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i", "imagePullPolicy": "Never"}],
            "containers": [{"name": "a", "imagePullPolicy": "IfNotPresent"}, {"name": "b"}],
        }});
        assert_eq!(
            not_always(&pod),
            Some((
                "spec.initContainers[0].imagePullPolicy".into(),
                "Never".into()
            ))
        );
        force_always(&mut pod);
        assert_eq!(not_always(&pod), None);
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "Always");
    }
}
