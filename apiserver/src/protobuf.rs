//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! Typed Go clients, and so kubectl's imperative commands (`kubectl create
//! namespace|configmap|secret|deployment …`), send their bodies as protobuf:
//! the magic `k8s\0`, then a `runtime.Unknown` whose `raw` is the object in
//! the schema of `k8s.io/api`. The schemas are Kubernetes' own file
//! descriptors (`proto/k8s.fds`, pulled out of a kubectl binary by
//! `proto/extract.py`); [`to_json`] decodes a body with them and converts it
//! to the object's JSON form (Kubernetes' proto field names are its JSON
//! names; `Time`, `IntOrString`, `Quantity` and `RawExtension` have their
//! JSON forms; bytes are base64). Responses are always JSON, which those
//! clients accept too.

use std::sync::OnceLock;

use base64::Engine;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage, Value as PValue};
use serde_json::{json, Map, Value};

use crate::status::{ApiError, ApiResult};

/// The protobuf media type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const FDS: &[u8] = include_bytes!("../proto/k8s.fds");
const MAGIC: &[u8] = b"k8s\0";

pub(crate) fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| match DescriptorPool::decode(FDS) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(error = %e, "the Kubernetes protobuf descriptors do not load");
            None
        }
    })
    .as_ref()
}

/// `runtime.TypeMeta`.
#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// `runtime.Unknown`: the envelope of every protobuf body.
#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    content_encoding: Option<String>,
    #[prost(string, optional, tag = "4")]
    content_type: Option<String>,
}

/// The protobuf package of an API group.
pub(crate) fn package(group: &str, kind: &str) -> Option<&'static str> {
    if matches!(
        kind,
        "DeleteOptions" | "CreateOptions" | "UpdateOptions" | "PatchOptions"
    ) {
        return Some("k8s.io.apimachinery.pkg.apis.meta.v1");
    }
    Some(match group {
        "" => "k8s.io.api.core.v1",
        "apps" => "k8s.io.api.apps.v1",
        "batch" => "k8s.io.api.batch.v1",
        "coordination.k8s.io" => "k8s.io.api.coordination.v1",
        "autoscaling" => "k8s.io.api.autoscaling.v2",
        "networking.k8s.io" => "k8s.io.api.networking.v1",
        "policy" => "k8s.io.api.policy.v1",
        "rbac.authorization.k8s.io" => "k8s.io.api.rbac.v1",
        "authentication.k8s.io" => "k8s.io.api.authentication.v1",
        "authorization.k8s.io" => "k8s.io.api.authorization.v1",
        _ => return None,
    })
}

/// Decodes a protobuf body into the object's JSON form.
pub fn to_json(body: &[u8]) -> ApiResult<Value> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ApiError::bad_request("protobuf body without the k8s\\0 prefix"))?;
    let env = Unknown::decode(rest)
        .map_err(|e| ApiError::bad_request(format!("undecodable protobuf envelope: {e}")))?;
    let tm = env.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let full = package(group, &kind)
        .map(|p| format!("{p}.{kind}"))
        .ok_or_else(|| ApiError::unsupported_media_type(CONTENT_TYPE))?;
    let desc = pool()
        .and_then(|p| p.get_message_by_name(&full))
        .ok_or_else(|| {
            ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("no protobuf schema for {api_version} {kind}; send application/json"),
            )
        })?;
    let raw = env.raw.unwrap_or_default();
    let msg = DynamicMessage::decode(desc, raw.as_slice())
        .map_err(|e| ApiError::bad_request(format!("undecodable protobuf {kind}: {e}")))?;
    let mut v = message(&msg);
    if !v.is_object() {
        v = json!({});
    }
    v["kind"] = json!(kind);
    v["apiVersion"] = json!(api_version);
    Ok(v)
}

fn rfc3339(secs: i64, nanos: i64, micros: bool) -> Value {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs) else {
        return Value::Null;
    };
    let t = if micros {
        t + time::Duration::microseconds(nanos / 1000)
    } else {
        t
    };
    let fmt = if micros {
        time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        )
    } else {
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z")
    };
    t.format(fmt).map(Value::String).unwrap_or(Value::Null)
}

fn int_field(m: &DynamicMessage, name: &str) -> i64 {
    match m.get_field_by_name(name).as_deref() {
        Some(PValue::I64(n)) => *n,
        Some(PValue::I32(n)) => i64::from(*n),
        _ => 0,
    }
}

fn str_field(m: &DynamicMessage, name: &str) -> String {
    match m.get_field_by_name(name).as_deref() {
        Some(PValue::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn raw_json(m: &DynamicMessage, name: &str) -> Value {
    match m.get_field_by_name(name).as_deref() {
        Some(PValue::Bytes(b)) if !b.is_empty() => serde_json::from_slice(b).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// A message in its JSON form (`Null` for "empty": omitted by the caller).
fn message(m: &DynamicMessage) -> Value {
    let desc = m.descriptor();
    match desc.full_name() {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => {
            let secs = int_field(m, "seconds");
            if secs == 0 && int_field(m, "nanos") == 0 {
                return Value::Null;
            }
            rfc3339(secs, 0, false)
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (secs, nanos) = (int_field(m, "seconds"), int_field(m, "nanos"));
            if secs == 0 && nanos == 0 {
                return Value::Null;
            }
            rfc3339(secs, nanos, true)
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            json!(format!("{}s", int_field(m, "duration") / 1_000_000_000))
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            if int_field(m, "type") == 1 {
                json!(str_field(m, "strVal"))
            } else {
                json!(int_field(m, "intVal"))
            }
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => json!(str_field(m, "string")),
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => raw_json(m, "raw"),
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => raw_json(m, "Raw"),
        _ => {
            let mut out = Map::new();
            for (f, v) in m.fields() {
                let j = value(v);
                if !is_empty(&j) {
                    out.insert(f.name().to_string(), j);
                }
            }
            if out.is_empty() {
                Value::Null
            } else {
                Value::Object(out)
            }
        }
    }
}

/// Go's `omitempty` as the clients meant it: unset pointers, empty strings,
/// lists and maps are left out; numbers and booleans are kept.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn value(v: &PValue) -> Value {
    match v {
        PValue::Bool(b) => json!(b),
        PValue::I32(n) => json!(n),
        PValue::I64(n) => json!(n),
        PValue::U32(n) => json!(n),
        PValue::U64(n) => json!(n),
        PValue::F32(n) => json!(n),
        PValue::F64(n) => json!(n),
        PValue::String(s) => json!(s),
        PValue::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => json!(n),
        PValue::Message(m) => message(m),
        PValue::List(items) => Value::Array(
            items
                .iter()
                .map(value)
                .map(|j| if j.is_null() { json!({}) } else { j })
                .collect(),
        ),
        PValue::Map(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                let j = value(v);
                out.insert(key, if j.is_null() { json!("") } else { j });
            }
            Value::Object(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `msg` (a message of `full_name` given as JSON-ish fields) the
    /// way a Go client does: magic + Unknown.
    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let env = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(env.encode_to_vec());
        out
    }

    #[test]
    fn descriptors_load() {
        let p = pool().expect("pool");
        for name in [
            "k8s.io.api.core.v1.Pod",
            "k8s.io.api.apps.v1.Deployment",
            "k8s.io.api.networking.v1.Ingress",
            "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions",
        ] {
            assert!(p.get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn a_configmap_round_trips_to_json() {
        let p = pool().expect("pool");
        let desc = p
            .get_message_by_name("k8s.io.api.core.v1.ConfigMap")
            .expect("desc");
        let mut msg = DynamicMessage::new(desc.clone());
        let meta_desc = p
            .get_message_by_name("k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            .expect("meta");
        let mut meta = DynamicMessage::new(meta_desc);
        meta.set_field_by_name("name", PValue::String("c1".into()));
        meta.set_field_by_name("namespace", PValue::String(String::new()));
        msg.set_field_by_name("metadata", PValue::Message(meta));
        let mut data = std::collections::HashMap::new();
        data.insert(MapKey::String("a".into()), PValue::String("b".into()));
        msg.set_field_by_name("data", PValue::Map(data));
        let body = envelope("v1", "ConfigMap", msg.encode_to_vec());
        let v = to_json(&body).expect("decode");
        assert_eq!(
            v,
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c1"}, "data": {"a": "b"}})
        );
        assert_eq!(to_json(b"nope").expect_err("magic").code, 400);
        assert_eq!(
            to_json(&envelope("foo/v1", "Bar", vec![]))
                .expect_err("unknown")
                .code,
            415
        );
    }
}
