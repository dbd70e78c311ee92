//! The shape of each field, as server-side apply needs it: structs (named
//! fields), maps (string keys), lists (atomic, sets, or associative lists
//! with key fields) and scalars.
//!
//! Structs, maps and scalars come from the kind's protobuf descriptor
//! (`proto/k8s.fds`). Protobuf knows nothing of list types, so the list
//! types and keys (Kubernetes' `x-kubernetes-list-type` and
//! `x-kubernetes-list-map-keys`) come from a built-in table; lists it does
//! not name are atomic, as in Kubernetes' schema for most lists. Kinds
//! without a descriptor are "deduced": every object is a map, every list is
//! atomic (structured-merge-diff's deduced schema).

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::Value;

use crate::registry::ResourceInfo;

/// How the items of a list are merged and owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole; owned as one field.
    Atomic,
    /// A set of scalars (`v:<value>` items).
    Set,
    /// An associative list: items are identified by these key fields.
    Map(&'static [&'static str]),
}

/// The shape of one value.
#[derive(Debug, Clone)]
pub enum Node {
    /// A struct with named fields.
    Struct(MessageDescriptor),
    /// A map from strings to values of one shape.
    Map(Box<Node>),
    /// A list of items of one shape.
    List(Box<Node>, ListType),
    /// A scalar (or a type with a JSON form of its own: quantities, times, …).
    Scalar,
    /// No schema: objects are maps, lists are atomic.
    Deduced,
}

/// Messages with a JSON form of their own (scalars for apply).
fn opaque(m: &MessageDescriptor) -> bool {
    crate::validation::opaque(m)
}

/// Atomic structs (`x-kubernetes-map-type: atomic`): owned as one field.
fn atomic_struct(m: &MessageDescriptor) -> bool {
    matches!(
        m.full_name(),
        "k8s.io.apimachinery.pkg.apis.meta.v1.LabelSelector"
            | "k8s.io.api.core.v1.LocalObjectReference"
            | "k8s.io.api.core.v1.ObjectReference"
            | "k8s.io.api.core.v1.ConfigMapKeySelector"
            | "k8s.io.api.core.v1.SecretKeySelector"
            | "k8s.io.api.core.v1.ObjectFieldSelector"
            | "k8s.io.api.core.v1.ResourceFieldSelector"
            | "k8s.io.api.core.v1.NodeSelector"
            | "k8s.io.api.core.v1.TopologySelectorTerm"
    )
}

/// The list type of field `field` of message `parent` (the built-in table).
pub fn list_type(parent: &str, field: &str) -> ListType {
    let short = parent.rsplit('.').next().unwrap_or(parent);
    match (short, field) {
        ("Container" | "EphemeralContainer", "ports") => {
            ListType::Map(&["containerPort", "protocol"])
        }
        ("ServiceSpec", "ports") => ListType::Map(&["port", "protocol"]),
        (
            _,
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "env"
            | "volumes"
            | "imagePullSecrets"
            | "resourceClaims",
        ) => ListType::Map(&["name"]),
        (_, "volumeMounts") => ListType::Map(&["mountPath"]),
        (_, "volumeDevices") => ListType::Map(&["devicePath"]),
        (_, "hostAliases") => ListType::Map(&["ip"]),
        (_, "conditions") => ListType::Map(&["type"]),
        (_, "ownerReferences") => ListType::Map(&["uid"]),
        (_, "topologySpreadConstraints") => ListType::Map(&["topologyKey", "whenUnsatisfiable"]),
        (_, "finalizers") => ListType::Set,
        _ => ListType::Atomic,
    }
}

/// Defaults of key fields that clients may leave out (`protocol: TCP`).
pub fn key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| Value::String("TCP".into()))
}

/// Protobuf fields whose message is inlined in the JSON form (Go's
/// embedded structs: a volume's source, a probe's handler, …).
pub(crate) const INLINE: &[&str] = &[
    "volumeSource",
    "persistentVolumeSource",
    "ephemeralContainerCommon",
    "handler",
    "localObjectReference",
];

/// The field `name` of `m` as JSON spells it (looking into inlined messages).
pub(crate) fn find_field(
    m: &MessageDescriptor,
    name: &str,
) -> Option<(MessageDescriptor, FieldDescriptor)> {
    if let Some(f) = m.get_field_by_name(name) {
        // An inlined message is not a JSON field of its own.
        if !(INLINE.contains(&name) && matches!(f.kind(), Kind::Message(_))) {
            return Some((m.clone(), f));
        }
    }
    INLINE.iter().find_map(|inline| {
        let f = m.get_field_by_name(inline)?;
        match f.kind() {
            Kind::Message(inner) => find_field(&inner, name),
            _ => None,
        }
    })
}

fn kind_node(kind: &Kind) -> Node {
    match kind {
        Kind::Message(m) if opaque(m) || atomic_struct(m) => Node::Scalar,
        Kind::Message(m) => Node::Struct(m.clone()),
        _ => Node::Scalar,
    }
}

fn field_node(parent: &MessageDescriptor, f: &FieldDescriptor) -> Node {
    if f.is_map() {
        if let Kind::Message(entry) = f.kind() {
            return Node::Map(Box::new(kind_node(&entry.map_entry_value_field().kind())));
        }
        return Node::Map(Box::new(Node::Scalar));
    }
    if f.is_list() {
        let lt = list_type(parent.full_name(), f.name());
        return Node::List(Box::new(kind_node(&f.kind())), lt);
    }
    kind_node(&f.kind())
}

impl Node {
    /// The shape of objects of kind `res` (deduced if keel has no schema for it).
    pub fn root(res: &ResourceInfo) -> Node {
        crate::protobuf::package(res.group, res.kind)
            .and_then(|p| {
                crate::protobuf::pool()?.get_message_by_name(&format!("{p}.{}", res.kind))
            })
            .map(Node::Struct)
            .unwrap_or(Node::Deduced)
    }

    /// The shape of field or entry `name` (of a struct or map).
    pub fn field(&self, name: &str) -> Node {
        match self {
            Node::Struct(m) => find_field(m, name)
                .map(|(parent, f)| field_node(&parent, &f))
                .unwrap_or(Node::Deduced),
            Node::Map(elem) => (**elem).clone(),
            _ => Node::Deduced,
        }
    }

    /// True if `name` is a declared field of this struct (not a map entry).
    pub fn is_declared(&self, name: &str) -> bool {
        matches!(self, Node::Struct(m) if find_field(m, name).is_some())
    }

    /// True for map-typed values (labels, annotations, data, …).
    pub fn is_map(&self) -> bool {
        matches!(self, Node::Map(_) | Node::Deduced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_schema_shapes() {
        let pods = crate::registry::lookup("", "v1", "pods").expect("pods");
        let root = Node::root(pods);
        let spec = root.field("spec");
        assert!(matches!(spec, Node::Struct(_)));
        let Node::List(container, ListType::Map(keys)) = spec.field("containers") else {
            panic!("containers are an associative list");
        };
        assert_eq!(keys, &["name"]);
        assert!(matches!(
            container.field("ports"),
            Node::List(_, ListType::Map(&["containerPort", "protocol"]))
        ));
        assert!(matches!(
            container.field("args"),
            Node::List(_, ListType::Atomic)
        ));
        assert!(root.field("metadata").field("labels").is_map());
        assert!(matches!(
            root.field("metadata").field("finalizers"),
            Node::List(_, ListType::Set)
        ));
        assert!(matches!(
            container.field("resources").field("limits").field("cpu"),
            Node::Scalar
        ));
        // Inlined messages: a volume's source, a probe's handler.
        let Node::List(volume, _) = spec.field("volumes") else {
            panic!("volumes are a list");
        };
        assert!(volume.is_declared("projected"));
        assert!(matches!(volume.field("configMap"), Node::Struct(_)));
        assert!(container.field("livenessProbe").is_declared("httpGet"));
    }
}
