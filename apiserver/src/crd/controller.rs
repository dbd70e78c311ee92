//! The CRD controller (apiextensions-apiserver's naming, establishing and
//! finalizing controllers in one loop). Each pass, over the CRDs in their
//! watch cache:
//!
//! 1. names: a CRD whose plural, singular, kind, list kind or a short name
//!    is already taken in its group by an older CRD (or a built-in type)
//!    gets `NamesAccepted` False (`NameConflict`); the others have their
//!    names accepted;
//! 2. serving: the accepted CRDs become the registry's dynamic layer
//!    ([`super::registry::serve`]), before any status says so, so a
//!    client that saw `Established` finds the resource (a terminating
//!    CRD stays served, refusing creates, until it is gone);
//! 3. status: `acceptedNames`, conditions `NamesAccepted` and `Established`
//!    (and `Terminating`), `storedVersions` (every storage version ever
//!    used), written compare-and-swap;
//! 4. cleanup: a CRD marked for deletion has its objects deleted (as
//!    clients' deletes would: finalizers honoured), then loses the
//!    `customresourcecleanup.apiextensions.k8s.io` finalizer and goes.
//!
//! Passes run when the CRDs change (and every [`RESYNC`]), and every
//! [`BUSY`] while a CRD is being cleaned up.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::validate::CLEANUP_FINALIZER;
use crate::handlers::write::{delete_or_mark, to_store, Deletion};
use crate::handlers::{decode, store_err, App};
use crate::object::{meta_mut, meta_str};
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult};
use crate::store::Cas;

/// Longest wait between passes.
pub const RESYNC: Duration = Duration::from_secs(2);

/// Wait between passes while objects are being deleted.
pub const BUSY: Duration = Duration::from_millis(100);

fn crds() -> ApiResult<&'static ResourceInfo> {
    registry::lookup(super::GROUP, "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("customresourcedefinitions are not registered"))
}

/// Runs the loop.
pub async fn run(app: Arc<App>) {
    let mut seen = 0;
    loop {
        let res = match crds() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e.message, "CRD controller stopped");
                return;
            }
        };
        let cache = match app.caches.get(&app.store, res).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "CRD cache unavailable");
                tokio::time::sleep(RESYNC).await;
                continue;
            }
        };
        let busy = match pass(&app, res, &cache).await {
            Ok((busy, rev)) => {
                seen = rev;
                busy
            }
            Err(e) => {
                tracing::debug!(error = %e.message, "CRD controller pass failed");
                true
            }
        };
        if busy {
            // Soon, or as soon as the CRDs change (a finalized CRD leaves
            // the registry right after it leaves the store).
            cache.wait_for(seen + 1, BUSY).await;
        } else {
            cache.wait_for(seen + 1, RESYNC).await;
        }
    }
}

/// A CRD as the cache holds it.
struct Item {
    obj: Value,
    rev: i64,
    created: i64,
}

/// The names a CRD claims in its group.
fn claimed(crd: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for f in ["plural", "singular"] {
        if let Some(s) = crd
            .pointer(&format!("/spec/names/{f}"))
            .and_then(Value::as_str)
        {
            out.push(format!("resource:{s}"));
        }
    }
    for f in ["kind", "listKind"] {
        if let Some(s) = crd
            .pointer(&format!("/spec/names/{f}"))
            .and_then(Value::as_str)
        {
            out.push(format!("kind:{s}"));
        }
    }
    if let Some(a) = crd
        .pointer("/spec/names/shortNames")
        .and_then(Value::as_array)
    {
        out.extend(
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| format!("resource:{s}")),
        );
    }
    out
}

/// One pass; `(busy, cache revision)`.
async fn pass(
    app: &App,
    res: &'static ResourceInfo,
    cache: &crate::cache::Cache,
) -> ApiResult<(bool, i64)> {
    let (kvs, rev) = cache.snapshot(res.prefix(None).as_bytes());
    let mut items = Vec::with_capacity(kvs.len());
    for kv in &kvs {
        match decode(kv) {
            Ok(obj) => items.push(Item {
                obj,
                rev: kv.mod_revision,
                created: kv.create_revision,
            }),
            Err(e) => tracing::warn!(error = %e.message, "skipping an undecodable CRD"),
        }
    }
    items.sort_by_key(|i| i.created);
    // 1. names, oldest first, after the built-in types' own.
    let mut taken: Vec<(String, String)> = registry::RESOURCES
        .iter()
        .flat_map(|r| {
            let g = r.group.to_string();
            [
                (g.clone(), format!("resource:{}", r.plural)),
                (g, format!("kind:{}", r.kind)),
            ]
        })
        .collect();
    let mut accepted = Vec::with_capacity(items.len());
    for it in &items {
        let group = it
            .obj
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let names = claimed(&it.obj);
        let clash = names
            .iter()
            .find(|n| taken.contains(&(group.clone(), (*n).clone())))
            .cloned();
        if clash.is_none() {
            taken.extend(names.into_iter().map(|n| (group.clone(), n)));
        }
        accepted.push(clash);
    }
    // 2. serving.
    let served: Vec<Value> = items
        .iter()
        .zip(&accepted)
        .filter(|(_, clash)| clash.is_none())
        .map(|(it, _)| with_accepted_names(&it.obj))
        .collect();
    if super::registry::serve(&served) {
        tracing::info!(crds = served.len(), "custom resources served");
    }
    // 3. status, 4. cleanup.
    let mut busy = false;
    for (it, clash) in items.iter().zip(&accepted) {
        let key = res.key(None, meta_str(&it.obj, "name").unwrap_or(""));
        let terminating = it.obj.pointer("/metadata/deletionTimestamp").is_some();
        let status = desired_status(&it.obj, clash.as_deref(), terminating);
        if it.obj.get("status") != Some(&status) {
            let mut new = it.obj.clone();
            new["status"] = status;
            match app
                .store
                .update(&key, to_store(&new)?, it.rev)
                .await
                .map_err(store_err)?
            {
                Cas::Done(_) => {}
                Cas::Failed(_) => busy = true,
            }
            // Clean up on a later pass, from the updated object.
            busy |= terminating;
            continue;
        }
        if terminating {
            busy = true;
            if cleanup(app, &key, &it.obj, it.rev).await? {
                // Gone from the store: stop serving it now, not next pass.
                let name = meta_str(&it.obj, "name");
                let rest: Vec<Value> = served
                    .iter()
                    .filter(|c| meta_str(c, "name") != name)
                    .cloned()
                    .collect();
                super::registry::serve(&rest);
            }
        }
    }
    Ok((busy, rev))
}

/// The CRD with `status.acceptedNames` set to its names (what serving reads).
fn with_accepted_names(crd: &Value) -> Value {
    let mut c = crd.clone();
    if let Some(names) = crd.pointer("/spec/names") {
        c["status"]["acceptedNames"] = names.clone();
    }
    c
}

fn condition(old: &Value, type_: &str, status: &str, reason: &str, message: &str) -> Value {
    let prev = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_));
    let since = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(crate::object::now_rfc3339()),
    };
    json!({"type": type_, "status": status, "lastTransitionTime": since,
           "reason": reason, "message": message})
}

/// The status a CRD should have.
fn desired_status(crd: &Value, clash: Option<&str>, terminating: bool) -> Value {
    let mut conditions = Vec::new();
    let accepted_names = match clash {
        None => {
            conditions.push(condition(
                crd,
                "NamesAccepted",
                "True",
                "NoConflicts",
                "no conflicts found",
            ));
            conditions.push(condition(
                crd,
                "Established",
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ));
            crd.pointer("/spec/names")
                .cloned()
                .unwrap_or_else(|| json!({}))
        }
        Some(name) => {
            let shown = name.split_once(':').map_or(name, |(_, n)| n);
            conditions.push(condition(
                crd,
                "NamesAccepted",
                "False",
                "NameConflict",
                &format!("{shown:?} is already in use"),
            ));
            conditions.push(condition(
                crd,
                "Established",
                "False",
                "NotAccepted",
                "not all names are accepted",
            ));
            crd.pointer("/status/acceptedNames")
                .cloned()
                .unwrap_or_else(|| json!({"plural": "", "kind": ""}))
        }
    };
    if terminating {
        conditions.push(condition(
            crd,
            "Terminating",
            "True",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
        ));
    }
    let mut stored: Vec<Value> = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(v) = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .and_then(|v| v.get("name"))
    {
        if !stored.contains(v) {
            stored.push(v.clone());
        }
    }
    json!({"conditions": conditions, "acceptedNames": accepted_names, "storedVersions": stored})
}

/// Deletes the objects of a terminating CRD; once none is left, removes
/// the cleanup finalizer (and the CRD, when that was the last one: then
/// true).
async fn cleanup(app: &App, key: &str, crd: &Value, rev: i64) -> ApiResult<bool> {
    let mut left = 0usize;
    // Any row will do: every version shares the store prefix.
    let spec_only = {
        let mut c = crd.clone();
        if let Some(m) = c.as_object_mut() {
            m.remove("status");
        }
        c
    };
    if let Some((row, _)) = super::registry::rows_of(&spec_only).into_iter().next() {
        let (objs, _) = crate::controllers::list_prefix(app, &row.prefix(None)).await?;
        for (obj, orev) in objs {
            let okey = row.key(
                meta_str(&obj, "namespace"),
                meta_str(&obj, "name").unwrap_or(""),
            );
            match delete_or_mark(app, &row, &okey, &obj, orev, None, None).await? {
                Deletion::Removed => {}
                Deletion::Terminating(_) | Deletion::Conflict => left += 1,
            }
        }
    }
    if left > 0 {
        tracing::debug!(crd = key, left, "custom objects left");
        return Ok(false);
    }
    let mut new = crd.clone();
    let m = meta_mut(&mut new);
    let mut remaining = 0;
    if let Some(Value::Array(f)) = m.get_mut("finalizers") {
        f.retain(|x| x != CLEANUP_FINALIZER);
        remaining = f.len();
    }
    let done = if remaining == 0 {
        app.store.delete(key, rev).await.map_err(store_err)?
    } else {
        app.store
            .update(key, to_store(&new)?, rev)
            .await
            .map_err(store_err)?
    };
    let finalized = matches!(done, Cas::Done(_));
    if finalized {
        tracing::info!(crd = key, "custom resource definition finalized");
    }
    Ok(finalized && remaining == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_accepts_names_establishes_and_remembers_storage_versions() {
        let crd = json!({"spec": {"names": {"plural": "as", "kind": "A"},
                                  "versions": [{"name": "v2", "storage": true}]},
                         "status": {"storedVersions": ["v1"]}});
        let s = desired_status(&crd, None, false);
        let types: Vec<(&str, &str)> = s["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            types,
            vec![("NamesAccepted", "True"), ("Established", "True")]
        );
        assert_eq!(s["acceptedNames"]["kind"], "A");
        assert_eq!(s["storedVersions"], json!(["v1", "v2"]));
        // A settled status is stable (no write loop).
        let mut settled = crd.clone();
        settled["status"] = s.clone();
        assert_eq!(desired_status(&settled, None, false), s);
        let clash = desired_status(&crd, Some("resource:as"), true);
        assert_eq!(clash["conditions"][0]["status"], "False");
        assert_eq!(
            clash["conditions"][0]["message"],
            "\"as\" is already in use"
        );
        assert_eq!(clash["conditions"][2]["type"], "Terminating");
    }
}
