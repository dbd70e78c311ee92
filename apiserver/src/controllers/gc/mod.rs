//! The garbage collector (kube-controller-manager's, inside the API server):
//! dependents go with their owners, as `metadata.ownerReferences` and
//! `DeleteOptions.propagationPolicy` ask.
//!
//! Each pass mirrors every stored resource type (built-in and custom, but
//! not events) from its watch cache, re-reading only objects whose
//! revision moved, builds the owner → dependents [`graph::Graph`] and acts
//! on what [`graph::Graph::plan`] finds:
//! - a dependent whose owners are all absent is deleted (background, or the
//!   policy its own `orphan`/`foregroundDeletion` finalizer asks); one that
//!   keeps a present owner only loses its references to absent ones;
//! - an owner deleting with the `orphan` finalizer has its uid removed from
//!   its dependents' `ownerReferences`, then loses the finalizer (and goes,
//!   if nothing else holds it);
//! - an owner deleting with `foregroundDeletion` has its dependents deleted
//!   (in the foreground themselves if they have dependents), and loses the
//!   finalizer once no dependent with `blockOwnerDeletion: true` is left.
//!
//! Caches may lag each other, so nothing is decided on them alone: a
//! dependent's and its owners' live states are read from the store before
//! it is touched, owners' finalizers are removed only once every cache has
//! reached the revision the pass started from, and every write is a
//! compare-and-swap on the revision read. Several API servers on one store
//! may therefore all run the collector: the first write wins, the others'
//! fail their CAS and find nothing left to do.

pub mod graph;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_storage::proto::mvccpb::KeyValue;
use serde_json::{json, Value};

use graph::{classify, decide, Action, Decision, Graph, Kinds, Node, OwnerView};

use crate::cache::Cache;
use crate::handlers::propagation::{self, FOREGROUND, ORPHAN};
use crate::handlers::read::read_object;
use crate::handlers::write::{delete_or_mark, ready_to_remove, to_store};
use crate::handlers::{decode, store_err, App};
use crate::object::{meta_mut, meta_str};
use crate::registry::{self, ResourceInfo};
use crate::status::ApiResult;
use crate::store::Cas;

/// How long a pass that must see every dependent waits for lagging caches.
const CATCH_UP: Duration = Duration::from_secs(2);

/// How often one write is retried when its object changed under it.
const RETRIES: usize = 5;

/// Runs the collector every `every`.
pub async fn run(app: Arc<App>, every: Duration) {
    let mut gc = Collector::default();
    loop {
        if let Err(e) = gc.pass(&app).await {
            tracing::debug!(error = %e, "garbage collector pass failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// The objects of one store prefix as its cache showed them.
#[derive(Default)]
struct Mirror {
    /// The cache's revision then.
    revision: i64,
    /// Key → (mod revision, node).
    objects: HashMap<Bytes, (i64, Option<Node>)>,
}

/// The collector's memory between passes: the decoded objects, so a pass
/// decodes only what changed.
#[derive(Default)]
pub struct Collector {
    mirrors: HashMap<String, Mirror>,
    /// The last pass found nothing to do (and nothing changed since, a
    /// pass skips planning).
    idle: bool,
}

/// The resource types the collector watches: every stored one once per
/// store prefix (the versions of a custom resource share one), events aside
/// (as Kubernetes' collector ignores them).
fn watched() -> Vec<&'static ResourceInfo> {
    let mut seen = std::collections::HashSet::new();
    registry::all()
        .into_iter()
        .filter(|r| r.stored && !(r.plural == "events" && r.kind == "Event"))
        .filter(|r| seen.insert(r.prefix(None)))
        .collect()
}

/// `old` brought up to `cache`; true if a change can alter the collector's
/// plan (see [`may_change_plan`]). A mirror the cache's window still
/// reaches is brought up by the changes since (a pass costs what changed,
/// not what is stored); otherwise the whole cache is compared (only
/// changed objects decoded).
fn mirror(res: &'static ResourceInfo, cache: &Cache, prefix: &str, old: Mirror) -> (Mirror, bool) {
    if old.revision > 0 {
        if let Some(sub) = cache.subscribe(old.revision) {
            return catch_up(res, old, &sub.replay);
        }
    }
    let (kvs, revision) = cache.snapshot(prefix.as_bytes());
    let mut old = old.objects;
    let mut changed = false;
    let mut objects = HashMap::with_capacity(kvs.len());
    for kv in kvs {
        let entry = match old.remove(&kv.key) {
            Some(e) if e.0 == kv.mod_revision => e,
            before => {
                let node = node_of(res, &kv);
                changed |= may_change_plan(before.and_then(|b| b.1).as_ref(), node.as_ref());
                (kv.mod_revision, node)
            }
        };
        objects.insert(kv.key, entry);
    }
    // Anything gone may have been an owner.
    changed |= !old.is_empty();
    (Mirror { revision, objects }, changed)
}

/// `m` with `events` (the cache's changes after its revision) applied.
fn catch_up(
    res: &'static ResourceInfo,
    mut m: Mirror,
    events: &[Arc<crate::cache::Event>],
) -> (Mirror, bool) {
    let mut changed = false;
    for ev in events {
        m.revision = m.revision.max(ev.revision());
        let crate::cache::Event::Change { put, kv, .. } = &**ev else {
            continue;
        };
        let before = m.objects.remove(&kv.key);
        if *put {
            let node = node_of(res, kv);
            changed |= may_change_plan(before.and_then(|b| b.1).as_ref(), node.as_ref());
            m.objects.insert(kv.key.clone(), (kv.mod_revision, node));
        } else {
            // Anything gone may have been an owner.
            changed |= before.is_some();
        }
    }
    (m, changed)
}

/// The collector's node of a stored object (`None`: no uid, or it does not
/// decode).
fn node_of(res: &'static ResourceInfo, kv: &KeyValue) -> Option<Node> {
    match decode(kv) {
        Ok(v) => Node::from_object(res, &String::from_utf8_lossy(&kv.key), &v),
        Err(e) => {
            tracing::debug!(error = %e.message, "collector skips an undecodable object");
            None
        }
    }
}

/// True if an object's change from `before` to `after` (either absent) can
/// change what the collector plans: either version has owners, is being
/// deleted or carries one of the collector's finalizers, or the key now
/// holds another uid (the owner its dependents name is gone). Plain objects
/// arriving or changing cannot: they have no owner to lose, and no
/// dependent can be waiting for one that did not exist (a plan that found
/// nothing to do stays empty), so a pass after 1,000 ConfigMap creates
/// need not rebuild the graph.
fn may_change_plan(before: Option<&Node>, after: Option<&Node>) -> bool {
    let matters = |n: Option<&Node>| {
        n.is_some_and(|n| !n.owners.is_empty() || n.deleting || n.orphan || n.foreground)
    };
    let replaced = before.is_some() && before.map(|b| &b.uid) != after.map(|a| &a.uid);
    replaced || matters(before) || matters(after)
}

impl Collector {
    /// Brings the mirrors up to the caches; returns the caches, whether
    /// every cache could be had (a missing one's mirror is the last one
    /// seen, or empty) and whether any object changed.
    async fn refresh(&mut self, app: &App) -> (Vec<Arc<Cache>>, bool, bool) {
        let mut caches = Vec::new();
        let mut mirrors = HashMap::new();
        let mut complete = true;
        let mut changed = false;
        for res in watched() {
            let prefix = res.prefix(None);
            let old = self.mirrors.remove(&prefix);
            let cache = match app.caches.get(&app.store, res).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(resource = %res.qualified(), error = %e, "collector has no cache");
                    complete = false;
                    if let Some(m) = old {
                        mirrors.insert(prefix, m);
                    }
                    continue;
                }
            };
            let mirror = match old {
                Some(m) if m.revision == cache.revision() => m,
                old => {
                    let (m, moved) = mirror(res, &cache, &prefix, old.unwrap_or_default());
                    changed |= moved;
                    m
                }
            };
            mirrors.insert(prefix, mirror);
            caches.push(cache);
        }
        changed |= !self.mirrors.is_empty();
        self.mirrors = mirrors;
        (caches, complete, changed)
    }

    fn nodes(mirrors: &HashMap<String, Mirror>) -> impl Iterator<Item = &Node> {
        mirrors
            .values()
            .flat_map(|m| m.objects.values().filter_map(|(_, n)| n.as_ref()))
    }

    /// One pass: mirror, plan, act.
    pub async fn pass(&mut self, app: &App) -> ApiResult<()> {
        let (caches, _, changed) = self.refresh(app).await;
        if self.idle && !changed {
            return Ok(());
        }
        let kinds = Kinds::new(&registry::all());
        {
            let g = Graph::new(Self::nodes(&self.mirrors), &kinds);
            let plan = g.plan();
            self.idle = plan.is_empty();
            if plan.is_empty() {
                return Ok(());
            }
            if !plan.iter().any(Action::needs_complete_view) {
                return execute(app, &g, &kinds, plan).await;
            }
        }
        // Finalizers are about to be removed: first let every cache reach
        // the newest revision any of them has shown, so no dependent made
        // before this pass is missed.
        let target = caches.iter().map(|c| c.revision()).max().unwrap_or(0);
        let reached =
            futures::future::join_all(caches.iter().map(|c| c.wait_for(target, CATCH_UP))).await;
        let (_, complete, _) = self.refresh(app).await;
        let all = complete && reached.into_iter().all(|r| r);
        let g = Graph::new(Self::nodes(&self.mirrors), &kinds);
        let plan: Vec<Action> = g
            .plan()
            .into_iter()
            .filter(|a| all || !a.needs_complete_view())
            .collect();
        execute(app, &g, &kinds, plan).await
    }
}

/// Carries out `plan` (each action on its own; a failure is logged and the
/// next pass tries again).
async fn execute(app: &App, g: &Graph<'_>, kinds: &Kinds, plan: Vec<Action>) -> ApiResult<()> {
    for action in plan {
        let done = match &action {
            Action::AttemptToDelete(key) => attempt_to_delete(app, g, kinds, key).await,
            Action::Orphan(key) => orphan(app, g, key).await,
            Action::FinishForeground(key) => match g.node(key) {
                Some(n) => remove_finalizer(app, n.res, key, &n.uid, FOREGROUND).await,
                None => Ok(()),
            },
        };
        if let Err(e) = done {
            tracing::debug!(?action, error = %e, "garbage collector action failed");
        }
    }
    Ok(())
}

/// Decides on the dependent at `key` from its and its owners' live state
/// (Kubernetes' `attemptToDeleteItem`), and does it.
async fn attempt_to_delete(app: &App, g: &Graph<'_>, kinds: &Kinds, key: &str) -> ApiResult<()> {
    let Some(node) = g.node(key) else {
        return Ok(());
    };
    for _ in 0..RETRIES {
        let Some((obj, rev)) = read_object(app, key).await? else {
            return Ok(());
        };
        if meta_str(&obj, "uid") != Some(node.uid.as_str())
            || obj.pointer("/metadata/deletionTimestamp").is_some()
        {
            return Ok(());
        }
        let refs = graph::owner_refs(&obj);
        let mut states = Vec::with_capacity(refs.len());
        for r in refs {
            let okey = kinds.owner_key(node.namespace.as_deref(), &r);
            let owner = match &okey {
                Some(k) => read_object(app, k).await?.map(|(o, _)| o),
                None => None,
            };
            let view = owner.as_ref().and_then(|o| {
                Some(OwnerView {
                    uid: meta_str(o, "uid")?,
                    deleting_dependents: o.pointer("/metadata/deletionTimestamp").is_some()
                        && propagation::finalizers(o).iter().any(|f| f == FOREGROUND),
                })
            });
            let state = classify(&r, okey.as_deref(), view);
            states.push((r, state));
        }
        let fins = propagation::finalizers(&obj);
        let own = (
            fins.iter().any(|f| f == ORPHAN),
            fins.iter().any(|f| f == FOREGROUND),
        );
        let decision = decide(
            &states,
            own,
            g.has_dependents(key),
            g.dependent_deleting_dependents(key),
        );
        let written = match decision {
            Decision::Nothing => return Ok(()),
            Decision::RemoveRefs(uids) => {
                tracing::info!(key, ?uids, "removing owner references to absent owners");
                let mut new = obj.clone();
                strip_owner_refs(&mut new, &uids);
                update(app, key, &new, rev).await?
            }
            Decision::Delete { policy, unblock } => {
                let (obj, rev) = if unblock {
                    let mut new = obj.clone();
                    unblock_owner_refs(&mut new);
                    match app
                        .store
                        .update(key, to_store(&new)?, rev)
                        .await
                        .map_err(store_err)?
                    {
                        Cas::Done(r) => (new, r),
                        Cas::Failed(_) => continue,
                    }
                } else {
                    (obj, rev)
                };
                tracing::info!(
                    key,
                    ?policy,
                    "deleting a dependent whose owners are gone or going"
                );
                !matches!(
                    delete_or_mark(app, node.res, key, &obj, rev, None, Some(policy)).await?,
                    crate::handlers::write::Deletion::Conflict
                )
            }
        };
        if written {
            return Ok(());
        }
    }
    Ok(())
}

/// Removes the references to `uids` (the field goes when none are left).
fn strip_owner_refs(obj: &mut Value, uids: &[String]) -> bool {
    let m = meta_mut(obj);
    let Some(Value::Array(refs)) = m.get_mut("ownerReferences") else {
        return false;
    };
    let before = refs.len();
    refs.retain(|r| {
        r.get("uid")
            .and_then(Value::as_str)
            .is_none_or(|u| !uids.iter().any(|x| x == u))
    });
    let changed = refs.len() != before;
    if refs.is_empty() {
        m.remove("ownerReferences");
    }
    changed
}

/// Sets `blockOwnerDeletion: false` on every reference that blocks.
fn unblock_owner_refs(obj: &mut Value) {
    if let Some(Value::Array(refs)) = obj.pointer_mut("/metadata/ownerReferences") {
        for r in refs.iter_mut() {
            if r.get("blockOwnerDeletion") == Some(&json!(true)) {
                r["blockOwnerDeletion"] = json!(false);
            }
        }
    }
}

/// Writes `new` at `key` if it is still at `rev`; false if it changed.
async fn update(app: &App, key: &str, new: &Value, rev: i64) -> ApiResult<bool> {
    Ok(matches!(
        app.store
            .update(key, to_store(new)?, rev)
            .await
            .map_err(store_err)?,
        Cas::Done(_)
    ))
}

/// Orphans the dependents of the owner at `key`, then drops its `orphan`
/// finalizer (Kubernetes' `orphanDependents` + `removeFinalizer`).
async fn orphan(app: &App, g: &Graph<'_>, key: &str) -> ApiResult<()> {
    let Some(owner) = g.node(key) else {
        return Ok(());
    };
    let uids = [owner.uid.clone()];
    for dep in g.dependents(key) {
        let mut done = false;
        for _ in 0..RETRIES {
            let Some((mut obj, rev)) = read_object(app, dep).await? else {
                done = true;
                break;
            };
            if !strip_owner_refs(&mut obj, &uids) {
                done = true;
                break;
            }
            if update(app, dep, &obj, rev).await? {
                tracing::info!(owner = key, dependent = dep, "orphaned a dependent");
                done = true;
                break;
            }
        }
        if !done {
            // Next pass.
            return Ok(());
        }
    }
    remove_finalizer(app, owner.res, key, &owner.uid, ORPHAN).await
}

/// Drops `finalizer` from the object at `key` (if it still has `uid` and is
/// marked for deletion); removes the object if nothing holds it any more.
async fn remove_finalizer(
    app: &App,
    res: &ResourceInfo,
    key: &str,
    uid: &str,
    finalizer: &str,
) -> ApiResult<()> {
    for _ in 0..RETRIES {
        let Some((obj, rev)) = read_object(app, key).await? else {
            return Ok(());
        };
        if meta_str(&obj, "uid") != Some(uid)
            || obj.pointer("/metadata/deletionTimestamp").is_none()
        {
            return Ok(());
        }
        let fins = propagation::finalizers(&obj);
        if !fins.iter().any(|f| f == finalizer) {
            return Ok(());
        }
        let left: Vec<String> = fins.into_iter().filter(|f| f != finalizer).collect();
        let mut new = obj.clone();
        {
            let m = meta_mut(&mut new);
            if left.is_empty() {
                m.remove("finalizers");
            } else {
                m.insert("finalizers".into(), json!(left));
            }
        }
        let result = if ready_to_remove(res, &new) {
            app.store.delete(key, rev).await.map_err(store_err)?
        } else {
            app.store
                .update(key, to_store(&new)?, rev)
                .await
                .map_err(store_err)?
        };
        if let Cas::Done(_) = result {
            let removed = ready_to_remove(res, &new);
            if removed && res.kind == "Service" {
                crate::alloc::release(&app.store, &crate::alloc::held_keys(&new)).await;
            }
            tracing::info!(
                key,
                finalizer,
                removed,
                "garbage collector removed a finalizer"
            );
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripping_and_unblocking_references() {
        let mut obj = json!({"metadata": {"ownerReferences": [
            {"uid": "1", "blockOwnerDeletion": true},
            {"uid": "2", "blockOwnerDeletion": true},
        ]}});
        assert!(strip_owner_refs(&mut obj, &["1".into()]));
        assert!(!strip_owner_refs(&mut obj, &["1".into()]));
        unblock_owner_refs(&mut obj);
        assert_eq!(
            obj["metadata"]["ownerReferences"],
            json!([{"uid": "2", "blockOwnerDeletion": false}])
        );
        assert!(strip_owner_refs(&mut obj, &["2".into()]));
        assert!(obj["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn only_changes_that_can_alter_the_plan_count() {
        let res = registry::lookup("", "v1", "configmaps").expect("configmaps");
        let node = |obj: Value| Node::from_object(res, "/registry/configmaps/d/c", &obj);
        let plain = node(json!({"metadata": {"name": "c", "uid": "u1"}}));
        let plain_again =
            node(json!({"metadata": {"name": "c", "uid": "u1", "labels": {"a": "b"}}}));
        let recreated = node(json!({"metadata": {"name": "c", "uid": "u2"}}));
        let owned = node(
            json!({"metadata": {"name": "c", "uid": "u1", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u9"}]}}),
        );
        let deleting = node(json!({"metadata": {"name": "c", "uid": "u1",
            "deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        // Plain objects created or updated: nothing to plan.
        assert!(!may_change_plan(None, plain.as_ref()));
        assert!(!may_change_plan(plain.as_ref(), plain_again.as_ref()));
        assert!(!may_change_plan(None, None));
        // A new uid at the key, owners gained or lost, a deletion started.
        assert!(may_change_plan(plain.as_ref(), recreated.as_ref()));
        assert!(may_change_plan(None, owned.as_ref()));
        assert!(may_change_plan(owned.as_ref(), plain.as_ref()));
        assert!(may_change_plan(plain.as_ref(), deleting.as_ref()));
    }

    fn change(put: bool, key: &str, rev: i64, obj: Value) -> Arc<crate::cache::Event> {
        Arc::new(crate::cache::Event::Change {
            put,
            kv: KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from(obj.to_string()),
                mod_revision: rev,
                ..Default::default()
            },
            prev: None,
            selectable: (None, None),
            shared: Default::default(),
        })
    }

    /// A mirror is brought up by the cache's changes since its revision:
    /// plain creates move it without a plan; an owned object, a deletion
    /// and a recreated owner each call for one.
    #[test]
    fn mirrors_catch_up_on_changes() {
        let res = registry::lookup("", "v1", "configmaps").expect("configmaps");
        let (a, b) = ("/registry/configmaps/d/a", "/registry/configmaps/d/b");
        let plain = |uid: &str| json!({"metadata": {"name": "x", "namespace": "d", "uid": uid}});
        let m = Mirror {
            revision: 10,
            objects: HashMap::new(),
        };
        let (m, changed) = catch_up(
            res,
            m,
            &[
                change(true, a, 11, plain("u1")),
                change(true, b, 12, plain("u2")),
            ],
        );
        assert!(!changed, "plain creates");
        assert_eq!((m.revision, m.objects.len()), (12, 2));
        let owned = json!({"metadata": {"name": "b", "namespace": "d", "uid": "u2",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": "u1"}]}});
        let (m, changed) = catch_up(res, m, &[change(true, b, 13, owned)]);
        assert!(changed, "owners gained");
        let (m, changed) = catch_up(res, m, &[change(true, a, 14, plain("u3"))]);
        assert!(changed, "the owner recreated with a new uid");
        assert_eq!(m.objects.get(a.as_bytes()).map(|e| e.0), Some(14));
        let (m, changed) = catch_up(res, m, &[change(false, a, 15, json!({}))]);
        assert!(changed, "a deletion");
        assert_eq!((m.revision, m.objects.len()), (15, 1));
    }

    #[test]
    fn events_are_not_watched() {
        let w = watched();
        assert!(w.iter().all(|r| r.plural != "events"));
        assert!(w.iter().any(|r| r.plural == "configmaps"));
        assert!(w.iter().all(|r| r.stored));
    }
}
