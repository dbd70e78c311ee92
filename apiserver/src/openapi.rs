//! `/openapi/v3`: one document per group-version, with the paths and
//! operations of every resource (with `x-kubernetes-group-version-kind` and
//! the `fieldValidation` query parameter on PATCH: what kubectl's
//! field-validation check reads, so `kubectl apply` works with its default
//! `--validate=true`, validation being left to the server), and the schemas
//! (`components.schemas`, what `kubectl explain` reads), derived from
//! Kubernetes' protobuf descriptors: field names and types are exact, but
//! there are no descriptions yet (the descriptors carry none).
//!
//! PATCH operations deliberately do not list the strategic-merge media type:
//! kubectl then computes strategic patches from its compiled-in types (which
//! know the merge keys) rather than from these schemas (which do not yet).

use serde_json::{json, Map, Value};

use crate::registry::{self, ResourceInfo};

/// The URL path (without `/openapi/v3/`) of a group-version's document.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of documents.
pub fn index() -> Value {
    let mut paths = Map::new();
    let generation = registry::generation();
    for (g, v) in registry::group_versions() {
        let p = gv_path(g, v);
        // Custom group-versions change with their CRDs: kubectl caches
        // documents by this URL, so the hash moves with the registry.
        let custom = registry::resources_of(g, v).iter().any(|r| r.custom);
        let hash = if custom {
            format!("keel{}-{generation}", env!("CARGO_PKG_VERSION"))
        } else {
            format!("keel{}", env!("CARGO_PKG_VERSION"))
        };
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    json!({ "paths": paths })
}

fn param(name: &str, location: &str) -> Value {
    json!({"name": name, "in": location, "schema": {"type": "string", "uniqueItems": true}})
}

fn op(r: &ResourceInfo, action: &str, id: &str, write: bool) -> Value {
    let mut params = Vec::new();
    if write {
        for p in ["dryRun", "fieldManager", "fieldValidation"] {
            params.push(param(p, "query"));
        }
    }
    let mut o = json!({
        "operationId": format!("{id}{}", r.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
    });
    if action == "patch" {
        o["requestBody"] = json!({"content": {
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
        }});
    }
    o
}

/// The document for one group-version, if served.
pub fn document(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in registry::resources_of(group, version) {
        let base = format!("/{}", gv_path(r.group, r.version));
        let coll = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let mut ns_param = Vec::new();
        if r.namespaced {
            ns_param.push(param("namespace", "path"));
        }
        paths.insert(
            coll.clone(),
            json!({
                "get": op(r, "list", "list", false),
                "post": op(r, "post", "create", true),
                "delete": op(r, "deletecollection", "deleteCollection", true),
                "parameters": ns_param,
            }),
        );
        let mut item_params = ns_param.clone();
        item_params.push(param("name", "path"));
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({
                "get": op(r, "get", "read", false),
                "put": op(r, "put", "replace", true),
                "patch": op(r, "patch", "patch", true),
                "delete": op(r, "delete", "delete", true),
                "parameters": item_params,
            }),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas(group, version)},
    }))
}

/// The OpenAPI name of a protobuf message (`io.k8s.api.apps.v1.Deployment`).
fn schema_name(full: &str) -> String {
    match full.strip_prefix("k8s.io.") {
        Some(rest) => format!("io.k8s.{rest}"),
        None => full.to_string(),
    }
}

fn scalar_schema(kind: &prost_reflect::Kind) -> Value {
    use prost_reflect::Kind as K;
    match kind {
        K::Bool => json!({"type": "boolean"}),
        K::Int32 | K::Sint32 | K::Sfixed32 | K::Uint32 | K::Fixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        K::Int64 | K::Sint64 | K::Sfixed64 | K::Uint64 | K::Fixed64 => {
            json!({"type": "integer", "format": "int64"})
        }
        K::Float | K::Double => json!({"type": "number", "format": "double"}),
        K::Bytes => json!({"type": "string", "format": "byte"}),
        _ => json!({"type": "string"}),
    }
}

/// The schema of a field's type; messages it refers to go onto `todo`.
fn type_schema(
    kind: &prost_reflect::Kind,
    todo: &mut Vec<prost_reflect::MessageDescriptor>,
) -> Value {
    let prost_reflect::Kind::Message(m) = kind else {
        return scalar_schema(kind);
    };
    match m.full_name() {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            json!({"type": "string", "format": "date-time"})
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => json!({"type": "string"}),
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            json!({"type": "string", "format": "int-or-string", "x-kubernetes-int-or-string": true})
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => json!({"type": "string"}),
        "k8s.io.apimachinery.pkg.runtime.RawExtension"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            json!({"type": "object"})
        }
        full => {
            todo.push(m.clone());
            json!({"allOf": [{"$ref": format!("#/components/schemas/{}", schema_name(full))}], "default": {}})
        }
    }
}

/// The schemas of one group-version's kinds and every type they use.
fn schemas(group: &str, version: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(pool) = crate::protobuf::pool() else {
        return out;
    };
    let mut todo = Vec::new();
    let mut kinds = Vec::new();
    let mut custom = Vec::new();
    for r in registry::resources_of(group, version) {
        if let Some(v) = crate::crd::registry::version_of(r) {
            custom.push((custom_schema_name(r), custom_schema(r, &v.schema)));
            if let Some(m) =
                pool.get_message_by_name("k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            {
                todo.push(m);
            }
            continue;
        }
        let Some(pkg) = crate::protobuf::package(r.group, r.kind) else {
            continue;
        };
        if let Some(m) = pool.get_message_by_name(&format!("{pkg}.{}", r.kind)) {
            kinds.push((schema_name(m.full_name()), r));
            todo.push(m);
        }
    }
    while let Some(m) = todo.pop() {
        let name = schema_name(m.full_name());
        if out.contains_key(&name) {
            continue;
        }
        let mut props = Map::new();
        for f in m.fields() {
            let schema = if f.is_map() {
                let value = match f.kind() {
                    prost_reflect::Kind::Message(entry) => {
                        type_schema(&entry.map_entry_value_field().kind(), &mut todo)
                    }
                    other => scalar_schema(&other),
                };
                json!({"type": "object", "additionalProperties": value})
            } else if f.is_list() {
                json!({"type": "array", "items": type_schema(&f.kind(), &mut todo)})
            } else {
                type_schema(&f.kind(), &mut todo)
            };
            props.insert(f.name().to_string(), schema);
        }
        out.insert(name, json!({"type": "object", "properties": props}));
    }
    for (name, r) in kinds {
        if let Some(s) = out.get_mut(&name) {
            s["x-kubernetes-group-version-kind"] =
                json!([{"group": r.group, "kind": r.kind, "version": r.version}]);
        }
    }
    for (name, s) in custom {
        out.insert(name, s);
    }
    out
}

/// The schema name of a custom kind, as Kubernetes builds it
/// (`com.example.stable.v1.CronTab` for `stable.example.com/v1`).
fn custom_schema_name(r: &ResourceInfo) -> String {
    let reversed: Vec<&str> = r.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), r.version, r.kind)
}

/// A custom kind's schema: its CRD's `openAPIV3Schema` with the type
/// meta, `metadata` (ObjectMeta) and the group-version-kind.
fn custom_schema(r: &ResourceInfo, schema: &Value) -> Value {
    let mut s = schema.clone();
    if !s.is_object() {
        s = json!({"type": "object"});
    }
    if !s.get("properties").is_some_and(Value::is_object) {
        s["properties"] = json!({});
    }
    s["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
    s["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
    s["properties"]["metadata"] = json!({
        "allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
        "description": "Standard object's metadata.",
    });
    s["x-kubernetes-group-version-kind"] =
        json!([{"group": r.group, "kind": r.kind, "version": r.version}]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_has_a_document_with_patch_operations() {
        let idx = index();
        let paths = idx["paths"].as_object().expect("paths");
        assert!(paths.contains_key("api/v1") && paths.contains_key("apis/apps/v1"));
        let doc = document("apps", "v1").expect("apps");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .expect("params")
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
    }
}

/// The media type of the protobuf OpenAPI v2 document.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2` as kubectl up to 1.27 reads it (protobuf, gnostic's
/// `openapi.v2.Document`): the PATCH operation of every resource with its
/// `x-kubernetes-group-version-kind` and the `fieldValidation` parameter, so
/// those kubectls leave validation to the server as newer ones do through
/// `/openapi/v3`. No definitions (schemas) yet. Built again when the
/// custom resources change (cached by [`registry::generation`]).
pub fn v2_protobuf() -> Option<bytes::Bytes> {
    type Cached = std::sync::Mutex<Option<(u64, Option<bytes::Bytes>)>>;
    static DOC: Cached = std::sync::Mutex::new(None);
    let generation = registry::generation();
    let mut doc = DOC.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((g, d)) = doc.as_ref() {
        if *g == generation {
            return d.clone();
        }
    }
    let built = build_v2().map(bytes::Bytes::from);
    *doc = Some((generation, built.clone()));
    built
}

fn build_v2() -> Option<Vec<u8>> {
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value as P};
    let pool = crate::protobuf::pool()?;
    let new = |name: &str| {
        pool.get_message_by_name(&format!("openapi.v2.{name}"))
            .map(DynamicMessage::new)
    };
    let with = |name: &str, fields: Vec<(&str, P)>| -> Option<P> {
        let mut m = new(name)?;
        for (f, v) in fields {
            m.try_set_field_by_name(f, v).ok()?;
        }
        Some(P::Message(m))
    };
    let s = |v: &str| P::String(v.to_string());
    let named_any = |name: &str, yaml: String| {
        with(
            "NamedAny",
            vec![
                ("name", s(name)),
                ("value", with("Any", vec![("yaml", P::String(yaml))])?),
            ],
        )
    };
    let mut paths = Vec::new();
    for r in registry::all() {
        let base = format!("/{}", gv_path(r.group, r.version));
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let query = with(
            "QueryParameterSubSchema",
            vec![
                ("in", s("query")),
                ("name", s("fieldValidation")),
                ("type", s("string")),
            ],
        )?;
        let param = with(
            "ParametersItem",
            vec![(
                "parameter",
                with(
                    "Parameter",
                    vec![(
                        "non_body_parameter",
                        with(
                            "NonBodyParameter",
                            vec![("query_parameter_sub_schema", query)],
                        )?,
                    )],
                )?,
            )],
        )?;
        let ok = with(
            "NamedResponseValue",
            vec![
                ("name", s("200")),
                (
                    "value",
                    with(
                        "ResponseValue",
                        vec![(
                            "response",
                            with("Response", vec![("description", s("OK"))])?,
                        )],
                    )?,
                ),
            ],
        )?;
        let gvk = format!(
            "group: \"{}\"\nkind: {}\nversion: {}\n",
            r.group, r.kind, r.version
        );
        let op = with(
            "Operation",
            vec![
                ("operation_id", P::String(format!("patch{}", r.kind))),
                (
                    "consumes",
                    P::List(vec![
                        s("application/json-patch+json"),
                        s("application/merge-patch+json"),
                        s("application/strategic-merge-patch+json"),
                    ]),
                ),
                ("parameters", P::List(vec![param])),
                (
                    "responses",
                    with("Responses", vec![("response_code", P::List(vec![ok]))])?,
                ),
                (
                    "vendor_extension",
                    P::List(vec![
                        named_any("x-kubernetes-action", "patch\n".into())?,
                        named_any("x-kubernetes-group-version-kind", gvk)?,
                    ]),
                ),
            ],
        )?;
        paths.push(with(
            "NamedPathItem",
            vec![
                ("name", P::String(item)),
                ("value", with("PathItem", vec![("patch", op)])?),
            ],
        )?);
    }
    let doc = with(
        "Document",
        vec![
            ("swagger", s("2.0")),
            (
                "info",
                with(
                    "Info",
                    vec![
                        ("title", s("Kubernetes")),
                        (
                            "version",
                            P::String(format!("v1.{}.0", crate::discovery::KUBE_MINOR)),
                        ),
                    ],
                )?,
            ),
            ("paths", with("Paths", vec![("path", P::List(paths))])?),
        ],
    )?;
    match doc {
        P::Message(m) => Some(m.encode_to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod v2_tests {
    #[test]
    fn the_v2_document_encodes() {
        let doc = super::v2_protobuf().expect("v2 document");
        assert!(doc.len() > 1000);
        assert!(doc.windows(15).any(|w| w == b"fieldValidation"));
    }
}
