//! `metadata.managedFields`: the entries (manager, operation, apiVersion,
//! time, subresource, FieldsV1 set), read from and written to objects in
//! Kubernetes' order.

use serde_json::{json, Value};

use super::fieldpath::{DecodeError, Set};

/// `Apply` or `Update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Create, update or a non-apply patch.
    Update,
}

impl Operation {
    /// The name Kubernetes writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The field manager's name.
    pub manager: String,
    /// How it wrote.
    pub operation: Operation,
    /// The API version it wrote with.
    pub api_version: String,
    /// When it last changed what it owns (RFC 3339).
    pub time: Option<String>,
    /// The subresource it wrote through (`status`), or empty.
    pub subresource: String,
    /// The fields it owns.
    pub set: Set,
}

/// A `managedFields` list that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// Not a list of objects.
    #[error("metadata.managedFields must be a list of objects")]
    NotAList,
    /// An entry lacks a manager or has an unknown operation.
    #[error("metadata.managedFields[{0}]: {1}")]
    BadEntry(usize, String),
    /// The fieldsV1 of an entry is malformed.
    #[error("metadata.managedFields[{0}].fieldsV1: {1}")]
    Fields(usize, DecodeError),
}

impl Entry {
    /// True if `self` and `other` are the same manager (Apply managers are
    /// one whatever the API version; Update managers are one per version).
    pub fn same_manager(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == Operation::Apply || self.api_version == other.api_version)
    }

    /// How conflict messages name the manager (`"m"`, `"m" using apps/v1`).
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.set.to_fields_v1(),
        });
        if let Some(t) = &self.time {
            v["time"] = json!(t);
        }
        if !self.subresource.is_empty() {
            v["subresource"] = json!(self.subresource);
        }
        v
    }
}

/// The entries of `obj`'s `metadata.managedFields` (none if unset).
pub fn decode(obj: &Value) -> Result<Vec<Entry>, ManagedError> {
    match obj.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => decode_list(v),
    }
}

/// Reads a `managedFields` list.
pub fn decode_list(v: &Value) -> Result<Vec<Entry>, ManagedError> {
    let items = v.as_array().ok_or(ManagedError::NotAList)?;
    let mut out = Vec::new();
    for (i, e) in items.iter().enumerate() {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let operation = match s("operation").as_str() {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            other => {
                return Err(ManagedError::BadEntry(
                    i,
                    format!("operation: Unsupported value: {other:?}"),
                ))
            }
        };
        if !matches!(s("fieldsType").as_str(), "FieldsV1" | "") {
            return Err(ManagedError::BadEntry(
                i,
                format!("fieldsType: Unsupported value: {:?}", s("fieldsType")),
            ));
        }
        let set = match e.get("fieldsV1") {
            None | Some(Value::Null) => Set::new(),
            Some(f) => Set::from_fields_v1(f).map_err(|err| ManagedError::Fields(i, err))?,
        };
        out.push(Entry {
            manager: s("manager"),
            operation,
            api_version: s("apiVersion"),
            time: e.get("time").and_then(Value::as_str).map(str::to_string),
            subresource: s("subresource"),
            set,
        });
    }
    Ok(out)
}

/// The entries as `managedFields` JSON, in Kubernetes' order (Apply before
/// Update, then by time, manager, API version, subresource); entries that
/// own nothing are left out.
pub fn encode(entries: &[Entry]) -> Value {
    let mut sorted: Vec<&Entry> = entries.iter().filter(|e| !e.set.is_empty()).collect();
    sorted.sort_by(|a, b| {
        let t = |e: &Entry| {
            e.time
                .as_deref()
                .and_then(crate::object::parse_rfc3339)
                .unwrap_or(0)
        };
        (
            a.operation,
            t(a),
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                b.operation,
                t(b),
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    Value::Array(sorted.into_iter().map(Entry::to_json).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_in_kubernetes_order() {
        let v = json!([
            {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "v1",
             "time": "2024-01-02T00:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:data": {"f:b": {}}}},
            {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
             "time": "2024-01-03T00:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:data": {"f:a": {}}}},
            {"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
             "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:data": {"f:c": {}}}}
        ]);
        let entries = decode_list(&v).expect("decodes");
        let out = encode(&entries);
        let managers: Vec<&str> = out
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(managers, ["kubectl", "kubectl-create", "kubectl-edit"]);
        assert_eq!(out[0], v[1]);
        assert_eq!(entries[0].describe(), "\"kubectl-edit\" using v1");
        assert_eq!(entries[1].describe(), "\"kubectl\"");
    }

    #[test]
    fn malformed_entries_are_errors() {
        assert!(decode_list(&json!({})).is_err());
        assert!(decode_list(&json!([{"manager": "m", "operation": "Nope"}])).is_err());
        assert!(decode_list(
            &json!([{"manager": "m", "operation": "Apply", "fieldsV1": {"z": {}}}])
        )
        .is_err());
    }
}
