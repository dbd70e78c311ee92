//! Server-side apply and `metadata.managedFields` (structured-merge-diff's
//! model, as kube-apiserver runs it).
//!
//! - Every create, update and non-apply patch is an `Update` operation:
//!   the fields it added or changed become its manager's (taken from any
//!   other manager), fields it removed stop being anyone's
//!   ([`record_update`]).
//! - An apply (`PATCH` with `application/apply-patch+yaml`) merges the
//!   configuration into the object ([`apply`]): the configuration's fields
//!   become the applier's; changing a field another manager owns is a 409
//!   listing every conflict, unless `force=true` moves the ownership; fields
//!   the applier owned before and left out now are removed when no one else
//!   owns them.
//!
//! | module | job |
//! |---|---|
//! | [`fieldpath`] | field sets and their FieldsV1 encoding |
//! | [`schema`] | the shape of each field: structs, maps, list types and keys |
//! | [`merge`] | objects as field sets, comparison, merge, removal |
//! | [`managed`] | `managedFields` entries |
//! | [`last_applied`] | the move from kubectl's client-side apply |

pub mod fieldpath;
pub mod last_applied;
pub mod managed;
pub mod merge;
pub mod schema;

use serde_json::{json, Value};

use crate::registry::ResourceInfo;
use crate::status::{ApiError, ApiResult};
use fieldpath::{Element, Set};
use managed::{Entry, Operation};
use merge::{compare, fields, Fields, Mode};
use schema::Node;

/// Who writes, and through what.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// The resource written.
    pub res: &'a ResourceInfo,
    /// The subresource (`status`), if any.
    pub subresource: Option<&'a str>,
    /// The field manager.
    pub manager: String,
}

/// The longest field manager name Kubernetes accepts.
const MAX_MANAGER: usize = 128;

/// The manager of an update: the `fieldManager` parameter, else the user
/// agent up to its first `/` (`kubectl-edit/v1.32.4 (linux/amd64) …` →
/// `kubectl-edit`), as Kubernetes derives it.
pub fn update_manager(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    let ua = user_agent.unwrap_or("");
    let prefix = ua.split('/').next().unwrap_or("");
    prefix.chars().take(MAX_MANAGER).collect()
}

/// Checks the `fieldManager` parameter: required for apply, at most 128
/// characters (422 with Kubernetes' messages).
pub fn check_manager(field_manager: Option<&str>, is_apply: bool) -> ApiResult<()> {
    match field_manager {
        None | Some("") if is_apply => Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        )),
        Some(m) if m.chars().count() > MAX_MANAGER => Err(ApiError::new(
            422,
            "Invalid",
            format!("fieldManager: Too long: may not be more than {MAX_MANAGER} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Parses an applied configuration: YAML (or JSON, which is YAML) holding
/// one object.
pub fn parse_config(body: &[u8]) -> ApiResult<Value> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the apply configuration is not UTF-8"))?;
            let docs = yaml_rust2::YamlLoader::load_from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            match docs.as_slice() {
                [one] => crate::authz::webhook::yaml_to_json(one),
                _ => {
                    return Err(ApiError::bad_request(
                        "the apply configuration must be exactly one YAML document",
                    ))
                }
            }
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "an apply configuration must be an object",
        ));
    }
    Ok(v)
}

/// Metadata fields no manager owns (structured-merge-diff's `stripSet`).
const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// True if a manager writing through `w` may own `path`: never type and
/// server metadata; `status` only through `/status` (for kinds with a
/// status subresource), and only `status` there.
fn ownable(w: &Writer, path: &[Element]) -> bool {
    let first = path.first().map(String::as_str);
    if matches!(first, None | Some("f:apiVersion") | Some("f:kind")) {
        return false;
    }
    if first == Some("f:metadata") {
        match path.get(1) {
            None => return false,
            Some(f) => {
                if UNOWNED_META.iter().any(|m| f.strip_prefix("f:") == Some(m)) {
                    return false;
                }
            }
        }
    }
    if w.res.status {
        let status = first == Some("f:status");
        return status == (w.subresource == Some("status"));
    }
    true
}

fn owned_fields(w: &Writer, node: &Node, obj: &Value, mode: Mode) -> Fields {
    let mut f = fields(node, obj, mode);
    f.set = f.set.filter(|p| ownable(w, p));
    f
}

fn decode_entries(obj: Option<&Value>) -> Vec<Entry> {
    match obj.map(managed::decode) {
        Some(Ok(e)) => e,
        Some(Err(e)) => {
            // A stored object with unreadable managed fields: start afresh.
            tracing::warn!(error = %e, "dropping unreadable managedFields");
            Vec::new()
        }
        None => Vec::new(),
    }
}

fn set_managed(obj: &mut Value, entries: &[Entry]) {
    let encoded = managed::encode(entries);
    let m = crate::object::meta_mut(obj);
    if encoded.as_array().is_some_and(Vec::is_empty) {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), encoded);
    }
}

/// Records an `Update` by `w` that turned `old` (`None`: a create) into
/// `new`, in `new`'s `managedFields`. `client_managed` is the
/// `managedFields` the client sent: when it differs from `old`'s, it
/// replaces them (how kubectl moves fields from client-side to server-side
/// apply); `[{}]` clears them; `[]` is ignored, as Kubernetes ignores it.
pub fn record_update(
    w: &Writer,
    old: Option<&Value>,
    new: &mut Value,
    client_managed: Option<&Value>,
) -> ApiResult<()> {
    let live = old.and_then(|o| o.pointer("/metadata/managedFields"));
    let mut entries = match client_managed {
        // `[{}]`: the client clears the managed fields.
        Some(c)
            if c.as_array()
                .is_some_and(|a| a.len() == 1 && a[0] == json!({})) =>
        {
            Vec::new()
        }
        Some(c) if Some(c) != live && c.as_array().is_some_and(|a| !a.is_empty()) => {
            managed::decode_list(c).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        _ => decode_entries(old),
    };
    let node = Node::root(w.res);
    let empty = json!({});
    let before = owned_fields(w, &node, old.unwrap_or(&empty), Mode::Update);
    let after = owned_fields(w, &node, new, Mode::Update);
    let c = compare(&before, &after);
    let changed = c.changed();
    let me = Entry {
        manager: w.manager.clone(),
        operation: Operation::Update,
        api_version: w.res.group_version(),
        time: Some(crate::object::now_rfc3339()),
        subresource: w.subresource.unwrap_or("").to_string(),
        set: Set::new(),
    };
    for e in entries.iter_mut() {
        if !e.same_manager(&me) {
            e.set = e.set.difference(&changed).difference(&c.removed);
        } else {
            e.set = e.set.difference(&c.removed);
        }
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| e.same_manager(&me)) {
            Some(e) => {
                e.set = e.set.union(&changed);
                e.time = me.time.clone();
            }
            None => entries.push(Entry { set: changed, ..me }),
        }
    }
    set_managed(new, &entries);
    Ok(())
}

/// Fields another manager owns that an apply would change.
#[derive(Debug)]
struct Conflict {
    manager: String,
    paths: Vec<String>,
}

fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    let total: usize = conflicts.iter().map(|c| c.paths.len()).sum();
    let causes: Vec<Value> = conflicts
        .iter()
        .flat_map(|c| {
            c.paths.iter().map(move |p| {
                json!({"type": "FieldManagerConflict",
                       "message": format!("conflict with {}", c.manager),
                       "field": p})
            })
        })
        .collect();
    let single = conflicts
        .iter()
        .find_map(|c| c.paths.first().map(|p| (c, p)))
        .filter(|_| total == 1);
    let message = if let Some((c, path)) = single {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {path}",
            c.manager
        )
    } else {
        let mut sorted: Vec<&Conflict> = conflicts.iter().collect();
        sorted.sort_by(|a, b| a.manager.cmp(&b.manager));
        let mut lines = Vec::new();
        for c in sorted {
            lines.push(format!("conflicts with {}:", c.manager));
            lines.extend(c.paths.iter().map(|p| format!("- {p}")));
        }
        format!("Apply failed with {total} conflicts: {}", lines.join("\n"))
    };
    let mut err = ApiError::new(409, "Conflict", message);
    err.details = Some(json!({"causes": causes}));
    err
}

/// Applies `config` for `w` to `live` (`None`: the object does not exist
/// yet) and returns the new object with its `managedFields`; a 409 lists
/// the conflicts unless `force`.
pub fn apply(w: &Writer, live: Option<&Value>, config: &Value, force: bool) -> ApiResult<Value> {
    let node = Node::root(w.res);
    let mut config = config.clone();
    crate::object::meta_mut(&mut config).remove("managedFields");
    let mut entries = decode_entries(live);
    let me = Entry {
        manager: w.manager.clone(),
        operation: Operation::Apply,
        api_version: w.res.group_version(),
        time: Some(crate::object::now_rfc3339()),
        subresource: w.subresource.unwrap_or("").to_string(),
        set: owned_fields(w, &node, &config, Mode::Apply).set,
    };
    let last = entries
        .iter()
        .find(|e| e.same_manager(&me))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let others = entries
        .iter()
        .filter(|e| !e.same_manager(&me))
        .fold(Set::new(), |acc, e| acc.union(&e.set));
    let empty = json!({});
    let mut merged = merge::merge(&node, Some(live.unwrap_or(&empty)), &config);
    // Fields this applier dropped from its configuration, owned by no one else.
    let keep = |p: &[Element]| others.has_prefix(p) || me.set.has_prefix(p);
    for p in last.difference(&me.set).paths() {
        if !keep(&p) {
            merge::remove(&node, &mut merged, &p, &keep);
        }
    }
    let before = owned_fields(w, &node, live.unwrap_or(&empty), Mode::Apply);
    let after = owned_fields(w, &node, &merged, Mode::Apply);
    let c = compare(&before, &after);
    let changed = c.changed();
    // `kubectl` taking over from its own client-side apply.
    let allowed = live
        .filter(|_| w.manager == last_applied::MANAGER && !force)
        .and_then(|l| last_applied::allowed_conflicts(&node, l))
        .unwrap_or_default();
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !e.same_manager(&me)) {
        let clash = e.set.intersection(&changed);
        if !clash.is_empty() && clash.difference(&allowed).is_empty() {
            continue;
        }
        let clash = clash.difference(&allowed);
        if !clash.is_empty() {
            conflicts.push(Conflict {
                manager: e.describe(),
                paths: clash
                    .paths()
                    .iter()
                    .map(|p| fieldpath::display(p))
                    .collect(),
            });
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }
    if w.manager == last_applied::MANAGER {
        last_applied::sync_annotation(live, &config, &mut merged);
    }
    let old_entries = entries.clone();
    for e in entries.iter_mut().filter(|e| !e.same_manager(&me)) {
        e.set = e.set.difference(&changed).difference(&c.removed);
    }
    entries.retain(|e| !e.same_manager(&me));
    let unchanged_sets = old_entries
        .iter()
        .find(|e| e.same_manager(&me))
        .is_some_and(|e| e.set == me.set && e.api_version == me.api_version);
    entries.push(me);
    let same_object = live.is_some_and(|l| {
        let strip = |v: &Value| {
            let mut v = v.clone();
            let m = crate::object::meta_mut(&mut v);
            m.remove("managedFields");
            m.remove("resourceVersion");
            v
        };
        strip(l) == strip(&merged)
    });
    if same_object && unchanged_sets && changed.is_empty() {
        // A no-op apply changes nothing, not even the time.
        set_managed(&mut merged, &old_entries);
    } else {
        set_managed(&mut merged, &entries);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests;
