//! Server-side printing: `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`
//! turns a list (or one object, or a watch event's object) into a
//! `meta.k8s.io/v1 Table` with the columns kubectl users know.

use serde_json::{json, Value};

use crate::object::parse_rfc3339;
use crate::registry::ResourceInfo;

/// True if the `Accept` header asks for a Table.
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    })
}

/// What each row carries (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses `?includeObject=` (default `Metadata`).
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Kubernetes' `duration.HumanDuration`, as the AGE column prints it.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age(obj: &Value, now: i64) -> Value {
    match obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
    {
        Some(t) => json!(human_duration(now - t)),
        None => json!("<unknown>"),
    }
}

fn s(obj: &Value, ptr: &str) -> Option<String> {
    match obj.pointer(ptr)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn n(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn len(obj: &Value, ptr: &str) -> usize {
    match obj.pointer(ptr) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn none(v: Option<String>) -> Value {
    json!(v.unwrap_or_else(|| "<none>".into()))
}

/// A column: (name, type, format, priority).
type Col = (&'static str, &'static str, &'static str, u8);

const NAME: Col = ("Name", "string", "name", 0);
const AGE: Col = ("Age", "string", "", 0);

fn columns(kind: &str) -> Vec<Col> {
    match kind {
        "Pod" => vec![
            NAME,
            ("Ready", "string", "", 0),
            ("Status", "string", "", 0),
            ("Restarts", "string", "", 0),
            AGE,
            ("IP", "string", "", 1),
            ("Node", "string", "", 1),
        ],
        "Namespace" => vec![NAME, ("Status", "string", "", 0), AGE],
        "Node" => vec![
            NAME,
            ("Status", "string", "", 0),
            ("Roles", "string", "", 0),
            AGE,
            ("Version", "string", "", 0),
        ],
        "Deployment" => vec![
            NAME,
            ("Ready", "string", "", 0),
            ("Up-to-date", "integer", "", 0),
            ("Available", "integer", "", 0),
            AGE,
        ],
        "ReplicaSet" => vec![
            NAME,
            ("Desired", "integer", "", 0),
            ("Current", "integer", "", 0),
            ("Ready", "integer", "", 0),
            AGE,
        ],
        "Service" => vec![
            NAME,
            ("Type", "string", "", 0),
            ("Cluster-IP", "string", "", 0),
            ("External-IP", "string", "", 0),
            ("Port(s)", "string", "", 0),
            AGE,
        ],
        "ConfigMap" => vec![NAME, ("Data", "integer", "", 0), AGE],
        "Secret" => vec![
            NAME,
            ("Type", "string", "", 0),
            ("Data", "integer", "", 0),
            AGE,
        ],
        "Event" => vec![
            ("Last Seen", "string", "", 0),
            ("Type", "string", "", 0),
            ("Reason", "string", "", 0),
            ("Object", "string", "", 0),
            ("Message", "string", "", 0),
        ],
        _ => vec![NAME, AGE],
    }
}

fn cells(kind: &str, o: &Value, now: i64) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name").unwrap_or_default());
    match kind {
        "Pod" => {
            let total = len(o, "/spec/containers");
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let ready = statuses.map_or(0, |st| {
                st.iter()
                    .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                    .count()
            });
            let restarts: i64 = statuses.map_or(0, |st| {
                st.iter()
                    .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                    .sum()
            });
            let status = if o.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                s(o, "/status/reason")
                    .or_else(|| s(o, "/status/phase"))
                    .unwrap_or_else(|| "Unknown".into())
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age(o, now),
                none(s(o, "/status/podIP")),
                none(s(o, "/spec/nodeName")),
            ]
        }
        "Namespace" => vec![
            name,
            json!(s(o, "/status/phase").unwrap_or_else(|| "Active".into())),
            age(o, now),
        ],
        "Node" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
                .and_then(|c| c.get("status").and_then(Value::as_str).map(str::to_string));
            let status = match ready.as_deref() {
                Some("True") => "Ready",
                Some("False") => "NotReady",
                _ => "Unknown",
            };
            let roles: Vec<String> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(status),
                none((!roles.is_empty()).then(|| roles.join(","))),
                age(o, now),
                json!(s(o, "/status/nodeInfo/kubeletVersion").unwrap_or_default()),
            ]
        }
        "Deployment" => vec![
            name,
            json!(format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                o.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )),
            json!(n(o, "/status/updatedReplicas")),
            json!(n(o, "/status/availableReplicas")),
            age(o, now),
        ],
        "ReplicaSet" => vec![
            name,
            json!(o
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)),
            json!(n(o, "/status/replicas")),
            json!(n(o, "/status/readyReplicas")),
            age(o, now),
        ],
        "Service" => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = n(p, "/port");
                            let proto = s(p, "/protocol").unwrap_or_else(|| "TCP".into());
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(np) => format!("{port}:{np}/{proto}"),
                                None => format!("{port}/{proto}"),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let external: Vec<String> = o
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(o, "/spec/type").unwrap_or_else(|| "ClusterIP".into())),
                none(s(o, "/spec/clusterIP")),
                none((!external.is_empty()).then(|| external.join(","))),
                none((!ports.is_empty()).then(|| ports.join(","))),
                age(o, now),
            ]
        }
        "ConfigMap" => vec![
            name,
            json!(len(o, "/data") + len(o, "/binaryData")),
            age(o, now),
        ],
        "Secret" => vec![
            name,
            json!(s(o, "/type").unwrap_or_else(|| "Opaque".into())),
            json!(len(o, "/data")),
            age(o, now),
        ],
        "Event" => {
            let last = s(o, "/lastTimestamp")
                .or_else(|| s(o, "/eventTime"))
                .or_else(|| s(o, "/metadata/creationTimestamp"))
                .and_then(|t| parse_rfc3339(&t))
                .map(|t| human_duration(now - t))
                .unwrap_or_else(|| "<unknown>".into());
            let object = format!(
                "{}/{}",
                s(o, "/involvedObject/kind")
                    .unwrap_or_default()
                    .to_lowercase(),
                s(o, "/involvedObject/name").unwrap_or_default()
            );
            vec![
                json!(last),
                json!(s(o, "/type").unwrap_or_default()),
                json!(s(o, "/reason").unwrap_or_default()),
                json!(object),
                json!(s(o, "/message").unwrap_or_default()),
            ]
        }
        _ => vec![name, age(o, now)],
    }
}

fn row_object(o: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => o.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    }
}

/// A Table of `objects` of `res` with list metadata `list_meta`.
pub fn table(
    res: &ResourceInfo,
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let defs: Vec<Value> = columns(res.kind)
        .into_iter()
        .map(|(name, ty, format, priority)| {
            json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(res.kind, o, now)});
            let obj = row_object(o, include);
            if !obj.is_null() {
                row["object"] = obj;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubernetes() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
        ] {
            assert_eq!(human_duration(secs), want);
        }
    }

    #[test]
    fn pod_rows() {
        let pods = crate::registry::lookup("", "v1", "pods").expect("pods");
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": crate::object::now_rfc3339()},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let t = table(pods, &[pod], json!({}), IncludeObject::Metadata);
        assert_eq!(t["rows"][0]["cells"][0], "p");
        assert_eq!(t["rows"][0]["cells"][1], "1/2");
        assert_eq!(t["rows"][0]["cells"][2], "Running");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert!(wants_table(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        )));
        assert!(!wants_table(Some("application/json")));
    }
}
