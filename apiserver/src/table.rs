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
        "StatefulSet" => vec![NAME, ("Ready", "string", "", 0), AGE],
        "DaemonSet" => vec![
            NAME,
            ("Desired", "integer", "", 0),
            ("Current", "integer", "", 0),
            ("Ready", "integer", "", 0),
            ("Up-to-date", "integer", "", 0),
            ("Available", "integer", "", 0),
            ("Node Selector", "string", "", 0),
            AGE,
        ],
        "Job" => vec![
            NAME,
            ("Status", "string", "", 0),
            ("Completions", "string", "", 0),
            AGE,
        ],
        "CronJob" => vec![
            NAME,
            ("Schedule", "string", "", 0),
            ("Suspend", "boolean", "", 0),
            ("Active", "integer", "", 0),
            ("Last Schedule", "string", "", 0),
            AGE,
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            ("Status", "string", "", 0),
            ("Volume", "string", "", 0),
            ("Capacity", "string", "", 0),
            ("Access Modes", "string", "", 0),
            ("StorageClass", "string", "", 0),
            AGE,
        ],
        "PersistentVolume" => vec![
            NAME,
            ("Capacity", "string", "", 0),
            ("Access Modes", "string", "", 0),
            ("Reclaim Policy", "string", "", 0),
            ("Status", "string", "", 0),
            ("Claim", "string", "", 0),
            ("StorageClass", "string", "", 0),
            AGE,
        ],
        "ServiceAccount" => vec![NAME, ("Secrets", "integer", "", 0), AGE],
        "Role" | "ClusterRole" | "CustomResourceDefinition" => {
            vec![NAME, ("Created At", "date", "", 0)]
        }
        "RoleBinding" | "ClusterRoleBinding" => vec![
            NAME,
            ("Role", "string", "", 0),
            AGE,
            ("Users", "string", "", 1),
            ("Groups", "string", "", 1),
            ("ServiceAccounts", "string", "", 1),
        ],
        "Endpoints" => vec![NAME, ("Endpoints", "string", "", 0), AGE],
        "Lease" => vec![NAME, ("Holder", "string", "", 0), AGE],
        "PriorityClass" => vec![
            NAME,
            ("Value", "integer", "", 0),
            ("Global-Default", "boolean", "", 0),
            AGE,
            ("PreemptionPolicy", "string", "", 0),
        ],
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            vec![NAME, ("Webhooks", "integer", "", 0), AGE]
        }
        "ResourceQuota" => vec![
            NAME,
            AGE,
            ("Request", "string", "", 0),
            ("Limit", "string", "", 0),
        ],
        "HorizontalPodAutoscaler" => vec![
            NAME,
            ("Reference", "string", "", 0),
            ("MinPods", "string", "", 0),
            ("MaxPods", "integer", "", 0),
            ("Replicas", "integer", "", 0),
            AGE,
        ],
        "Ingress" => vec![
            NAME,
            ("Class", "string", "", 0),
            ("Hosts", "string", "", 0),
            ("Address", "string", "", 0),
            ("Ports", "string", "", 0),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// The strings of an array field (`None` when empty or missing).
fn strings(o: &Value, ptr: &str, field: Option<&str>) -> Option<String> {
    let items: Vec<String> = o
        .pointer(ptr)
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|v| match field {
            Some(f) => v.get(f).and_then(Value::as_str).map(str::to_string),
            None => v.as_str().map(str::to_string),
        })
        .collect();
    (!items.is_empty()).then(|| items.join(","))
}

/// `ReadWriteOnce` → `RWO`, as kubectl prints access modes.
fn access_modes(o: &Value, ptr: &str) -> Value {
    let short = strings(o, ptr, None).map(|s| {
        s.split(',')
            .map(|m| match m {
                "ReadWriteOnce" => "RWO",
                "ReadOnlyMany" => "ROX",
                "ReadWriteMany" => "RWX",
                "ReadWriteOncePod" => "RWOP",
                other => other,
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    json!(short.unwrap_or_default())
}

fn condition_true(o: &Value, kind: &str) -> bool {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(kind)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn more_cells(kind: &str, o: &Value, now: i64) -> Option<Vec<Value>> {
    let name = json!(s(o, "/metadata/name").unwrap_or_default());
    Some(match kind {
        "StatefulSet" => vec![
            name,
            json!(format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                o.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )),
            age(o, now),
        ],
        "DaemonSet" => {
            let selector = o
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .filter(|m| !m.is_empty())
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                });
            vec![
                name,
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                none(selector),
                age(o, now),
            ]
        }
        "Job" => {
            let status = if condition_true(o, "Complete") {
                "Complete"
            } else if condition_true(o, "Failed") {
                "Failed"
            } else if o.pointer("/spec/suspend") == Some(&json!(true)) {
                "Suspended"
            } else {
                "Running"
            };
            let completions = o
                .pointer("/spec/completions")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            vec![
                name,
                json!(status),
                json!(format!("{}/{completions}", n(o, "/status/succeeded"))),
                age(o, now),
            ]
        }
        "CronJob" => vec![
            name,
            json!(s(o, "/spec/schedule").unwrap_or_default()),
            json!(o
                .pointer("/spec/suspend")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            json!(len(o, "/status/active")),
            none(
                s(o, "/status/lastScheduleTime")
                    .and_then(|t| parse_rfc3339(&t))
                    .map(|t| human_duration(now - t)),
            ),
            age(o, now),
        ],
        "PersistentVolumeClaim" => vec![
            name,
            json!(s(o, "/status/phase").unwrap_or_else(|| "Pending".into())),
            json!(s(o, "/spec/volumeName").unwrap_or_default()),
            json!(s(o, "/status/capacity/storage").unwrap_or_default()),
            access_modes(o, "/status/accessModes"),
            none(s(o, "/spec/storageClassName")),
            age(o, now),
        ],
        "PersistentVolume" => {
            let claim = match (
                s(o, "/spec/claimRef/namespace"),
                s(o, "/spec/claimRef/name"),
            ) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => String::new(),
            };
            vec![
                name,
                json!(s(o, "/spec/capacity/storage").unwrap_or_default()),
                access_modes(o, "/spec/accessModes"),
                json!(
                    s(o, "/spec/persistentVolumeReclaimPolicy").unwrap_or_else(|| "Retain".into())
                ),
                json!(s(o, "/status/phase").unwrap_or_else(|| "Pending".into())),
                json!(claim),
                json!(s(o, "/spec/storageClassName").unwrap_or_default()),
                age(o, now),
            ]
        }
        "ServiceAccount" => vec![name, json!(len(o, "/secrets")), age(o, now)],
        "Role" | "ClusterRole" | "CustomResourceDefinition" => vec![
            name,
            json!(s(o, "/metadata/creationTimestamp").unwrap_or_default()),
        ],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |kind: &str| {
                let names: Vec<String> = o
                    .pointer("/subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|x| x.get("kind").and_then(Value::as_str) == Some(kind))
                    .map(|x| {
                        let n = x.get("name").and_then(Value::as_str).unwrap_or("");
                        match x.get("namespace").and_then(Value::as_str) {
                            Some(ns) if kind == "ServiceAccount" => format!("{ns}/{n}"),
                            _ => n.to_string(),
                        }
                    })
                    .collect();
                json!(names.join(", "))
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(o, "/roleRef/kind").unwrap_or_default(),
                    s(o, "/roleRef/name").unwrap_or_default()
                )),
                age(o, now),
                subjects("User"),
                subjects("Group"),
                subjects("ServiceAccount"),
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for subset in o
                .pointer("/subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| p.get("port").and_then(Value::as_i64))
                            .collect()
                    })
                    .unwrap_or_default();
                for a in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let ip = a.get("ip").and_then(Value::as_str).unwrap_or_default();
                    if ports.is_empty() {
                        eps.push(ip.to_string());
                    }
                    for p in &ports {
                        eps.push(format!("{ip}:{p}"));
                    }
                }
            }
            vec![
                name,
                none((!eps.is_empty()).then(|| eps.join(","))),
                age(o, now),
            ]
        }
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            vec![name, json!(len(o, "/webhooks")), age(o, now)]
        }
        "PriorityClass" => vec![
            name,
            json!(o.get("value").and_then(Value::as_i64).unwrap_or(0)),
            json!(o
                .get("globalDefault")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            age(o, now),
            json!(s(o, "/preemptionPolicy").unwrap_or_default()),
        ],
        "ResourceQuota" => {
            let hard = o.pointer("/status/hard").and_then(Value::as_object);
            let used = |k: &str| {
                s(o, &format!("/status/used/{}", k.replace('/', "~1")))
                    .unwrap_or_else(|| "0".into())
            };
            let mut keys: Vec<&String> = hard.map(|h| h.keys().collect()).unwrap_or_default();
            keys.sort();
            let part = |limits: bool| {
                let cells: Vec<String> = keys
                    .iter()
                    .filter(|k| k.starts_with("limits.") == limits)
                    .map(|k| {
                        let h = hard
                            .and_then(|h| h.get(k.as_str()))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        format!("{k}: {}/{h}", used(k))
                    })
                    .collect();
                json!(cells.join(", "))
            };
            vec![name, age(o, now), part(false), part(true)]
        }
        "Lease" => vec![
            name,
            json!(s(o, "/spec/holderIdentity").unwrap_or_default()),
            age(o, now),
        ],
        "HorizontalPodAutoscaler" => vec![
            name,
            json!(format!(
                "{}/{}",
                s(o, "/spec/scaleTargetRef/kind").unwrap_or_default(),
                s(o, "/spec/scaleTargetRef/name").unwrap_or_default()
            )),
            json!(o
                .pointer("/spec/minReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .to_string()),
            json!(n(o, "/spec/maxReplicas")),
            json!(n(o, "/status/currentReplicas")),
            age(o, now),
        ],
        "Ingress" => {
            let hosts = strings(o, "/spec/rules", Some("host")).unwrap_or_else(|| "*".into());
            let address = strings(o, "/status/loadBalancer/ingress", Some("ip"))
                .or_else(|| strings(o, "/status/loadBalancer/ingress", Some("hostname")));
            let ports = if len(o, "/spec/tls") > 0 {
                "80, 443"
            } else {
                "80"
            };
            vec![
                name,
                none(s(o, "/spec/ingressClassName")),
                json!(hosts),
                json!(address.unwrap_or_default()),
                json!(ports),
                age(o, now),
            ]
        }
        _ => return None,
    })
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
            let mut status = match ready.as_deref() {
                Some("True") => "Ready",
                Some("False") => "NotReady",
                _ => "Unknown",
            }
            .to_string();
            if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
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
        _ => more_cells(kind, o, now).unwrap_or_else(|| vec![name, age(o, now)]),
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
    if let Some(v) = crate::crd::registry::version_of(res) {
        return custom_table(&v.columns, objects, list_meta, include, now);
    }
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

/// A Table of custom objects (their CRD's printer columns).
fn custom_table(
    cols: &[crate::crd::registry::PrinterColumn],
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
    now: i64,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": crate::crd::columns::cells(cols, o, now)});
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
        "columnDefinitions": crate::crd::columns::definitions(cols),
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

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": crate::object::now_rfc3339()},
            "spec": {"rules": [{"host": "a"}], "accessModes": ["ReadWriteOnce"]},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]});
        for r in crate::registry::RESOURCES {
            let t = table(
                r,
                std::slice::from_ref(&obj),
                json!({}),
                IncludeObject::None,
            );
            let cols = t["columnDefinitions"].as_array().map(Vec::len);
            assert_eq!(
                t["rows"][0]["cells"].as_array().map(Vec::len),
                cols,
                "{}",
                r.kind
            );
        }
        let ep = crate::registry::lookup("", "v1", "endpoints").expect("endpoints");
        assert_eq!(
            table(ep, &[obj], json!({}), IncludeObject::None)["rows"][0]["cells"][1],
            "10.0.0.1:80"
        );
    }
}
