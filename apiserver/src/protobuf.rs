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
//! JSON forms; bytes are base64). A client that asks for protobuf
//! responses (`Accept: application/vnd.kubernetes.protobuf`) gets them for
//! the kinds these descriptors know ([`from_json`], the inverse); anything
//! else (tables, watch streams, kinds without a descriptor) is JSON, which
//! those clients accept too when they list it in `Accept`.

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
        "DeleteOptions" | "CreateOptions" | "UpdateOptions" | "PatchOptions" | "Status"
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

/// True if `accept` asks for protobuf before JSON (Go clients send
/// `application/vnd.kubernetes.protobuf, application/json`).
pub fn wants_protobuf(accept: &str) -> bool {
    accept
        .split(',')
        .map(|m| m.split(';').next().unwrap_or("").trim())
        .find(|m| *m == CONTENT_TYPE || m.starts_with("application/json") || *m == "*/*")
        .is_some_and(|m| m == CONTENT_TYPE)
}

/// Encodes an object in its JSON form as a protobuf body (magic +
/// `runtime.Unknown`), the inverse of [`to_json`]. `None` if its kind has no
/// descriptor or the object does not fit it (the caller answers in JSON).
pub fn from_json(v: &Value) -> Option<Vec<u8>> {
    let api_version = v.get("apiVersion")?.as_str()?;
    let kind = v.get("kind")?.as_str()?;
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let full = format!("{}.{kind}", package(group, kind)?);
    let desc = pool()?.get_message_by_name(&full)?;
    let msg = to_message(&desc, v)?;
    let env = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.to_string()),
        }),
        raw: Some(msg.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(env.encode_to_vec());
    Some(out)
}

/// Seconds and nanoseconds of an RFC 3339 time.
fn parse_time(s: &str) -> Option<(i64, i32)> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp(), t.nanosecond() as i32))
}

/// A JSON value as a message of `desc` (`None`: it does not fit).
fn to_message(desc: &prost_reflect::MessageDescriptor, v: &Value) -> Option<DynamicMessage> {
    let mut m = DynamicMessage::new(desc.clone());
    match desc.full_name() {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (secs, nanos) = parse_time(v.as_str()?)?;
            m.try_set_field_by_name("seconds", PValue::I64(secs)).ok()?;
            if desc.full_name().ends_with("MicroTime") {
                m.try_set_field_by_name("nanos", PValue::I32(nanos)).ok()?;
            }
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            let secs: i64 = v.as_str()?.strip_suffix('s')?.parse().ok()?;
            m.try_set_field_by_name("duration", PValue::I64(secs.checked_mul(1_000_000_000)?))
                .ok()?;
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => match v {
            Value::Number(n) => {
                m.try_set_field_by_name("type", PValue::I64(0)).ok()?;
                m.try_set_field_by_name("intVal", PValue::I32(i32::try_from(n.as_i64()?).ok()?))
                    .ok()?;
            }
            Value::String(s) => {
                m.try_set_field_by_name("type", PValue::I64(1)).ok()?;
                m.try_set_field_by_name("strVal", PValue::String(s.clone()))
                    .ok()?;
            }
            _ => return None,
        },
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            m.try_set_field_by_name("string", PValue::String(s)).ok()?;
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => {
            m.try_set_field_by_name("raw", PValue::Bytes(serde_json::to_vec(v).ok()?.into()))
                .ok()?;
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            m.try_set_field_by_name("Raw", PValue::Bytes(serde_json::to_vec(v).ok()?.into()))
                .ok()?;
        }
        _ => {
            for (name, fv) in v.as_object()? {
                if fv.is_null() {
                    continue;
                }
                // Fields the schema does not know (kind, apiVersion) are
                // the envelope's, or not representable: left out.
                let Some(field) = desc.get_field_by_name(name) else {
                    continue;
                };
                m.try_set_field(&field, field_value(&field, fv)?).ok()?;
            }
        }
    }
    Some(m)
}

/// A JSON value as the value of `field` (repeated and map fields included).
fn field_value(field: &prost_reflect::FieldDescriptor, v: &Value) -> Option<PValue> {
    if field.is_map() {
        let prost_reflect::Kind::Message(entry) = field.kind() else {
            return None;
        };
        let value_field = entry.map_entry_value_field();
        let mut out = std::collections::HashMap::new();
        for (k, item) in v.as_object()? {
            out.insert(
                MapKey::String(k.clone()),
                single(&value_field.kind(), item)?,
            );
        }
        return Some(PValue::Map(out));
    }
    if field.is_list() {
        let items = v.as_array()?;
        return items
            .iter()
            .map(|i| single(&field.kind(), i))
            .collect::<Option<Vec<_>>>()
            .map(PValue::List);
    }
    single(&field.kind(), v)
}

/// One JSON value as a protobuf value of `kind`.
fn single(kind: &prost_reflect::Kind, v: &Value) -> Option<PValue> {
    use prost_reflect::Kind as K;
    Some(match kind {
        K::String => PValue::String(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        K::Bool => PValue::Bool(v.as_bool()?),
        K::Int32 | K::Sint32 | K::Sfixed32 => PValue::I32(i32::try_from(v.as_i64()?).ok()?),
        K::Int64 | K::Sint64 | K::Sfixed64 => PValue::I64(v.as_i64()?),
        K::Uint32 | K::Fixed32 => PValue::U32(u32::try_from(v.as_u64()?).ok()?),
        K::Uint64 | K::Fixed64 => PValue::U64(v.as_u64()?),
        K::Double => PValue::F64(v.as_f64()?),
        K::Float => PValue::F32(v.as_f64()? as f32),
        K::Bytes => PValue::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str()?)
                .ok()?
                .into(),
        ),
        K::Enum(_) => PValue::EnumNumber(i32::try_from(v.as_i64()?).ok()?),
        K::Message(d) => PValue::Message(to_message(d, v)?),
    })
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
    fn objects_round_trip_through_protobuf_responses() {
        for obj in [
            json!({"kind": "ConfigMap", "apiVersion": "v1",
                   "metadata": {"name": "c1", "namespace": "d", "resourceVersion": "7",
                                "labels": {"a": "b"}, "creationTimestamp": "2026-11-23T10:00:00Z"},
                   "data": {"k": "v"}, "binaryData": {"b": "AAE="}}),
            json!({"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": "p", "namespace": "d"},
                   "spec": {"containers": [{"name": "c", "image": "nginx",
                             "ports": [{"containerPort": 80, "protocol": "TCP"}],
                             "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}],
                            "terminationGracePeriodSeconds": 30, "hostNetwork": true},
                   "status": {"phase": "Pending"}}),
            json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s"},
                   "spec": {"ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8081}]}}),
            json!({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "d"},
                   "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "x"}},
                            "template": {"metadata": {"labels": {"app": "x"}},
                                         "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "pods \"x\" not found", "reason": "NotFound",
                   "details": {"name": "x", "kind": "pods"}, "code": 404}),
        ] {
            let body = from_json(&obj).unwrap_or_else(|| panic!("encodes {obj}"));
            assert!(body.starts_with(MAGIC));
            let mut back = to_json(&body).expect("decodes");
            if obj
                .get("metadata")
                .is_some_and(|m| m.as_object().is_some_and(|m| m.is_empty()))
            {
                back["metadata"] = json!({});
            }
            assert_eq!(back, obj);
        }
        // Kinds without a descriptor, and objects that do not fit, stay JSON.
        assert!(from_json(&json!({"kind": "Widget", "apiVersion": "example.com/v1"})).is_none());
        assert!(
            from_json(&json!({"kind": "ConfigMap", "apiVersion": "v1", "data": {"k": 1}}))
                .is_some()
        );
        assert!(from_json(
            &json!({"kind": "Pod", "apiVersion": "v1", "spec": {"hostNetwork": "yes"}})
        )
        .is_none());
    }

    #[test]
    fn accept_headers_choose_protobuf_only_when_preferred() {
        assert!(wants_protobuf(
            "application/vnd.kubernetes.protobuf, application/json"
        ));
        assert!(wants_protobuf("application/vnd.kubernetes.protobuf"));
        assert!(!wants_protobuf(
            "application/json, application/vnd.kubernetes.protobuf"
        ));
        assert!(!wants_protobuf(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_protobuf("*/*"));
        assert!(!wants_protobuf(""));
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
