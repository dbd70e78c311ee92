//! create, update (PUT), patch, delete and deletecollection: every write is
//! a compare-and-swap on the store (create: `create_revision == 0`; the
//! others: `mod_revision == resourceVersion`).

use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::propagation::{self, Propagation};
use super::read::{read_object, select};
use super::{json_response, store_err, with_warnings, App, Ctx};
use crate::admission::{Attributes, Charge, Operation};
use crate::apply;
use crate::controllers::namespace::{has_spec_finalizers, mark_terminating};
use crate::object::{self, meta_mut, meta_str};
use crate::patch::{self, PatchType};
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult};
use crate::store::Cas;
use crate::validation::{self, FieldValidation};

/// How often a write without a client precondition is retried on a conflict.
const RETRIES: usize = 5;

/// Namespaces that exist from the start and cannot be deleted (but the last).
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The bytes stored for an object (no `resourceVersion`: that is the key's mod revision).
pub(crate) fn to_store(obj: &Value) -> ApiResult<Vec<u8>> {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    crate::crd::to_storage_version(&mut o);
    serde_json::to_vec(&o).map_err(|e| ApiError::internal(format!("encoding object: {e}")))
}

/// The request body as JSON: `application/json` (or no type), or a
/// Kubernetes protobuf body converted to JSON; anything else is a 415.
pub(crate) fn parse_body(ctx: &Ctx) -> ApiResult<Value> {
    let ct = ctx.header(header::CONTENT_TYPE).unwrap_or("");
    let base = ct.split(';').next().map(str::trim).unwrap_or("");
    let v: Value = match base {
        "" | "application/json" | "application/apply-patch+yaml" => {
            serde_json::from_slice(&ctx.body).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
            })?
        }
        crate::protobuf::CONTENT_TYPE => crate::protobuf::to_json(&ctx.body)?,
        _ => return Err(ApiError::unsupported_media_type(ct)),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// Checks `kind`/`apiVersion` against the URL and fills them in if missing.
fn type_meta(obj: &mut Value, res: &ResourceInfo) -> ApiResult<()> {
    let gv = res.group_version();
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if k != res.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the body ({k}) does not match the kind of the URL ({})",
                res.kind
            )));
        }
    }
    if let Some(v) = obj.get("apiVersion").and_then(Value::as_str) {
        // Any served version of a custom resource's group converts (None).
        let same_group = res.custom && v.split_once('/').is_some_and(|(g, _)| g == res.group);
        if v != gv && !same_group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({gv})"
            )));
        }
    }
    obj["kind"] = json!(res.kind);
    obj["apiVersion"] = json!(gv);
    Ok(())
}

/// Checks `metadata.namespace` against the URL and sets it (clears it for
/// cluster-scoped kinds).
fn namespace_meta(obj: &mut Value, ctx: &Ctx) -> ApiResult<()> {
    let t = &ctx.target;
    let m = meta_mut(obj);
    if !t.res.namespaced {
        m.remove("namespace");
        return Ok(());
    }
    let Some(ns) = t.namespace.as_deref() else {
        return Err(ApiError::bad_request(
            "a namespaced object must be written under /namespaces/<namespace>/",
        ));
    };
    match m.get("namespace").and_then(Value::as_str) {
        Some(b) if !b.is_empty() && b != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            m.insert("namespace".into(), json!(ns));
            Ok(())
        }
    }
}

fn tracks_generation(res: &ResourceInfo, obj: &Value) -> bool {
    res.status || obj.get("spec").is_some()
}

/// Runs the admission chain on `object` for the request's target;
/// returns the admitted object and the writes to commit with it.
async fn admit(
    app: &App,
    ctx: &Ctx,
    operation: Operation,
    name: &str,
    object: Value,
    old: Option<&Value>,
    dry_run: bool,
) -> ApiResult<(Value, Vec<Charge>)> {
    let t = &ctx.target;
    let mut attrs = Attributes {
        operation,
        res: t.res,
        subresource: t.sub.clone(),
        // A collection across namespaces: each object's own.
        namespace: t
            .namespace
            .clone()
            .or_else(|| meta_str(&object, "namespace").map(str::to_string))
            .filter(|_| t.res.namespaced),
        name: name.to_string(),
        object,
        old: old.cloned(),
        dry_run,
        charges: Vec::new(),
        reads: Default::default(),
    };
    app.admission.run(app, &mut attrs).await?;
    Ok((attrs.object, attrs.charges))
}

/// How often a create is admitted again because a quota it charges changed
/// under it (each round, one of the racing creates wins).
const QUOTA_RETRIES: usize = 50;

/// The field manager of this request's writes (`fieldManager`, else the
/// user agent's name).
fn writer(ctx: &Ctx) -> apply::Writer<'_> {
    apply::Writer {
        res: ctx.target.res,
        subresource: ctx.target.sub.as_deref(),
        manager: apply::update_manager(ctx.q("fieldManager"), ctx.header(header::USER_AGENT)),
    }
}

/// POST to a collection.
pub async fn create(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    apply::check_manager(ctx.q("fieldManager"), false)?;
    let obj = parse_body(ctx)?;
    create_object(app, ctx, obj, None).await
}

/// Creates `obj`. `applied`: the `managedFields` of a server-side apply
/// that creates the object (else the create is recorded as an update by
/// the request's manager).
async fn create_object(
    app: &App,
    ctx: &Ctx,
    mut obj: Value,
    applied: Option<Value>,
) -> ApiResult<Response> {
    let res = ctx.target.res;
    let dry = ctx.dry_run()?;
    let mode = FieldValidation::parse(ctx.q("fieldValidation"))?;
    type_meta(&mut obj, res)?;
    let warnings = validation::check(mode, res, &obj)?;
    namespace_meta(&mut obj, ctx)?;
    let generate = meta_str(&obj, "generateName").unwrap_or("").to_string();
    let mut name = meta_str(&obj, "name").unwrap_or("").to_string();
    if name.is_empty() && generate.is_empty() {
        return Err(ApiError::invalid(
            res,
            "",
            vec![crate::status::Cause {
                reason: "FieldValueRequired",
                message: "Required value: name or generateName is required".into(),
                field: "metadata.name".into(),
            }],
        ));
    }
    let generated = name.is_empty();
    if generated {
        name = format!("{generate}{}", object::random_suffix(5));
    }
    if let Some(cause) = object::validate_name(&name, res.dns_label_names) {
        return Err(ApiError::invalid(res, &name, vec![cause]));
    }
    if let Some(cause) = propagation::validate_finalizers(&obj) {
        return Err(ApiError::invalid(res, &name, vec![cause]));
    }
    object::clear_server_fields(&mut obj);
    let tracked = tracks_generation(res, &obj);
    {
        let m = meta_mut(&mut obj);
        m.insert("name".into(), json!(name));
        m.insert("uid".into(), json!(object::new_uid()));
        m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
        if tracked {
            m.insert("generation".into(), json!(1));
        }
    }
    if res.status {
        obj["status"] = object::initial_status(res.kind);
    }
    if res.kind == "Namespace" {
        name_label(&mut obj, &name);
    }
    crate::defaults::apply(res.kind, &mut obj);
    match applied {
        Some(managed) => {
            meta_mut(&mut obj).insert("managedFields".into(), managed);
        }
        None => apply::record_update(&writer(ctx), None, &mut obj, None)?,
    }
    crate::authz::escalation::check(app, ctx, &obj).await?;
    for attempt in 0..QUOTA_RETRIES {
        let (mut obj, charges) =
            admit(app, ctx, Operation::Create, &name, obj.clone(), None, dry).await?;
        if res.kind == "Pod" && res.group.is_empty() {
            obj["status"]["qosClass"] = json!(crate::defaults::qos_class(&obj));
        }
        if dry {
            return Ok(with_warnings(
                json_response(StatusCode::CREATED, &obj),
                &warnings,
            ));
        }
        let claimed = if res.kind == "Service" {
            crate::alloc::allocate(&app.store, &mut obj).await?
        } else {
            Vec::new()
        };
        let written = create_key(
            app,
            ctx,
            obj,
            name.clone(),
            (&generate, generated),
            &warnings,
            &charges,
        )
        .await;
        match written {
            Ok(Some(resp)) => return Ok(resp),
            Ok(None) => {
                // A charged quota changed: admit again against its new usage.
                crate::alloc::release(&app.store, &claimed).await;
                tokio::time::sleep(std::time::Duration::from_millis(
                    (attempt as u64 * 3).min(30),
                ))
                .await;
            }
            Err(e) => {
                crate::alloc::release(&app.store, &claimed).await;
                return Err(e);
            }
        }
    }
    Err(ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {}: the resource quota changed too often; please try again",
            res.qualified()
        ),
    ))
}

/// Writes a new object (new generated names on a clash when `generated`)
/// with the admission `charges` in the same transaction. `Ok(None)`: a
/// charged key changed since admission read it.
async fn create_key(
    app: &App,
    ctx: &Ctx,
    mut obj: Value,
    mut name: String,
    (generate, generated): (&str, bool),
    warnings: &[String],
    charges: &[Charge],
) -> ApiResult<Option<Response>> {
    let res = ctx.target.res;
    let ns = ctx.target.namespace.as_deref();
    for _ in 0..RETRIES {
        let key = res.key(ns, &name);
        match app
            .store
            .create_with(&key, to_store(&obj)?, charges)
            .await
            .map_err(store_err)?
        {
            Cas::Done(rev) => {
                object::set_resource_version(&mut obj, rev);
                return Ok(Some(with_warnings(
                    json_response(StatusCode::CREATED, &obj),
                    warnings,
                )));
            }
            Cas::Failed(None) => return Ok(None),
            Cas::Failed(_) if generated => {
                name = format!("{generate}{}", object::random_suffix(5));
                meta_mut(&mut obj).insert("name".into(), json!(name));
            }
            Cas::Failed(_) => return Err(ApiError::already_exists(res, &name)),
        }
    }
    Err(ApiError::new(
        500,
        "AlreadyExists",
        format!("could not generate a unique name for prefix {generate:?}"),
    ))
}

/// Namespaces carry their name as the label `kubernetes.io/metadata.name`.
fn name_label(obj: &mut Value, name: &str) {
    let m = meta_mut(obj);
    if !m.get("labels").is_some_and(Value::is_object) {
        m.insert("labels".into(), json!({}));
    }
    if let Some(Value::Object(labels)) = m.get_mut("labels") {
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
}

/// The object to store when `new` replaces `old` (server fields kept;
/// the main resource keeps the old status, `/status` changes only status).
fn merge_update(res: &ResourceInfo, old: &Value, mut new: Value, status_sub: bool) -> Value {
    if status_sub {
        let mut out = old.clone();
        match new.get_mut("status").map(Value::take) {
            Some(s) => out["status"] = s,
            None => {
                if let Some(m) = out.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        return out;
    }
    object::keep_server_fields(old, &mut new);
    if res.status {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    if res.kind == "Namespace" {
        if let Some(name) = object::meta_str(old, "name").map(str::to_string) {
            name_label(&mut new, &name);
        }
    }
    if res.kind == "Service" {
        keep_cluster_ip(old, &mut new);
    }
    crate::defaults::apply(res.kind, &mut new);
    if tracks_generation(res, &new) && object::spec_changed(old, &new) {
        let g = object::generation(old) + 1;
        meta_mut(&mut new).insert("generation".into(), json!(g));
    }
    new
}

/// A service keeps its allocated cluster IP when an update leaves it out
/// (as Kubernetes does; it cannot be changed).
fn keep_cluster_ip(old: &Value, new: &mut Value) {
    let unset = new
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let (Some(old_spec), Some(spec)) = (
        old.get("spec").and_then(Value::as_object),
        new.get_mut("spec").and_then(Value::as_object_mut),
    ) else {
        return;
    };
    if unset {
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if let Some(v) = old_spec.get(f) {
                spec.insert(f.to_string(), v.clone());
            }
        }
    }
}

/// What [`write_if`] did.
enum Written {
    /// Stored (or unchanged): the object as it is now.
    Done(Value),
    /// The object changed since it was read.
    Stale,
    /// A charged quota changed since admission read it (admit again).
    QuotaChanged,
}

/// Writes `new` over the object at `ctx`'s key if it is still at `rev`,
/// with the admission `charges` in the same transaction.
async fn write_if(
    app: &App,
    ctx: &Ctx,
    old: &Value,
    new: Value,
    rev: i64,
    charges: &[Charge],
) -> ApiResult<Written> {
    let mut new = new;
    let unchanged = {
        let strip = |v: &Value| {
            let mut v = v.clone();
            meta_mut(&mut v).remove("resourceVersion");
            v
        };
        strip(old) == strip(&new)
    };
    if !unchanged {
        crate::authz::escalation::check(app, ctx, &new).await?;
    }
    if unchanged || ctx.dry_run()? {
        object::set_resource_version(&mut new, rev);
        return Ok(Written::Done(new));
    }
    if ready_to_remove(ctx.target.res, &new) {
        // The last finalizer is gone (or the node confirmed): remove it.
        return match app
            .store
            .delete(&ctx.target.key(), rev)
            .await
            .map_err(store_err)?
        {
            Cas::Done(r) => {
                object::set_resource_version(&mut new, r);
                Ok(Written::Done(new))
            }
            Cas::Failed(None) => Err(ApiError::not_found(
                ctx.target.res,
                ctx.target.name.as_deref().unwrap_or(""),
            )),
            Cas::Failed(Some(_)) => Ok(Written::Stale),
        };
    }
    match app
        .store
        .update_with(&ctx.target.key(), to_store(&new)?, rev, charges)
        .await
        .map_err(store_err)?
    {
        Cas::Done(r) => {
            object::set_resource_version(&mut new, r);
            Ok(Written::Done(new))
        }
        Cas::Failed(None) => Err(ApiError::not_found(
            ctx.target.res,
            ctx.target.name.as_deref().unwrap_or(""),
        )),
        Cas::Failed(Some(kv)) if kv.mod_revision == rev => Ok(Written::QuotaChanged),
        Cas::Failed(Some(_)) => Ok(Written::Stale),
    }
}

fn conflict(ctx: &Ctx) -> ApiError {
    ApiError::conflict(
        ctx.target.res,
        ctx.target.name.as_deref().unwrap_or(""),
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

fn check_name(obj: &Value, ctx: &Ctx) -> ApiResult<()> {
    let url = ctx.target.name.as_deref().unwrap_or("");
    match meta_str(obj, "name") {
        Some(n) if n == url => Ok(()),
        Some("") | None => Err(ApiError::bad_request(
            "metadata.name is required in the body",
        )),
        Some(n) => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({url})"
        ))),
    }
}

fn parse_body_rv(obj: &Value) -> ApiResult<Option<i64>> {
    super::read::parse_rv(meta_str(obj, "resourceVersion"))
}

/// PUT of an object or its status.
pub async fn update(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    ctx.dry_run()?;
    apply::check_manager(ctx.q("fieldManager"), false)?;
    let mode = FieldValidation::parse(ctx.q("fieldValidation"))?;
    let mut body = parse_body(ctx)?;
    let client_managed = body.pointer("/metadata/managedFields").cloned();
    type_meta(&mut body, t.res)?;
    let warnings = if t.sub.is_none() {
        validation::check(mode, t.res, &body)?
    } else {
        Vec::new()
    };
    namespace_meta(&mut body, ctx)?;
    check_name(&body, ctx)?;
    let expected = parse_body_rv(&body)?;
    let name = t.name.as_deref().unwrap_or("");
    for _ in 0..RETRIES {
        let (old, rev) = read_object(app, &t.key())
            .await?
            .ok_or_else(|| ApiError::not_found(t.res, name))?;
        if expected.is_some_and(|e| e != rev) {
            return Err(conflict(ctx));
        }
        let mut new = merge_update(t.res, &old, body.clone(), t.sub.is_some());
        if let Some(cause) = propagation::validate_finalizers(&new) {
            return Err(ApiError::invalid(t.res, name, vec![cause]));
        }
        apply::record_update(&writer(ctx), Some(&old), &mut new, client_managed.as_ref())?;
        let (new, charges) = admit(
            app,
            ctx,
            Operation::Update,
            name,
            new,
            Some(&old),
            ctx.dry_run()?,
        )
        .await?;
        match write_if(app, ctx, &old, new, rev, &charges).await? {
            Written::Done(done) => {
                return Ok(with_warnings(
                    json_response(StatusCode::OK, &done),
                    &warnings,
                ))
            }
            Written::Stale if expected.is_some() => return Err(conflict(ctx)),
            Written::Stale | Written::QuotaChanged => continue,
        }
    }
    Err(conflict(ctx))
}

/// PATCH of an object or its status.
pub async fn patch(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let pt = PatchType::from_content_type(ctx.header(header::CONTENT_TYPE).unwrap_or(""))?;
    let mode = FieldValidation::parse(ctx.q("fieldValidation"))?;
    ctx.dry_run()?;
    let name = t.name.as_deref().unwrap_or("");
    let is_apply = pt == PatchType::Apply;
    apply::check_manager(ctx.q("fieldManager"), is_apply)?;
    let force = match ctx.q("force") {
        None | Some("") | Some("false") => false,
        Some("true") if is_apply => true,
        Some("true") => {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
            ))
        }
        Some(v) => return Err(ApiError::bad_request(format!("invalid force {v:?}"))),
    };
    // The applied configuration (apply patches).
    let config = if is_apply {
        let mut c = apply::parse_config(&ctx.body)?;
        type_meta(&mut c, t.res)?;
        Some(c)
    } else {
        None
    };
    for _ in 0..RETRIES {
        let Some((old, rev)) = read_object(app, &t.key()).await? else {
            if let (Some(config), None) = (&config, &t.sub) {
                // Server-side apply creates what does not exist yet.
                if object::meta_str(config, "name") != Some(name) {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object does not match the name on the URL ({name})"
                    )));
                }
                let mut created = apply::apply(&writer(ctx), None, config, force)?;
                let managed = meta_mut(&mut created).remove("managedFields");
                return create_object(app, ctx, created, managed).await;
            }
            return Err(ApiError::not_found(t.res, name));
        };
        let mut new = match &config {
            Some(config) => apply::apply(&writer(ctx), Some(&old), config, force)?,
            None => patch::apply(pt, &old, &ctx.body)?,
        };
        let client_managed = new.pointer("/metadata/managedFields").cloned();
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the patched object is not a JSON object",
            ));
        }
        type_meta(&mut new, t.res)?;
        // An apply is judged by its configuration (what the client sent).
        let warnings = match (&t.sub, &config) {
            (None, Some(config)) => validation::check(mode, t.res, config)?,
            (None, None) => validation::check(mode, t.res, &new)?,
            (Some(_), _) => Vec::new(),
        };
        namespace_meta(&mut new, ctx)?;
        check_name(&new, ctx)?;
        // A resourceVersion the patch sets is a precondition (an apply's:
        // the one in its configuration; without one, it is retried).
        let precondition = match parse_body_rv(config.as_ref().unwrap_or(&new))? {
            Some(r) if r != rev => return Err(conflict(ctx)),
            Some(r) => Some(r),
            None => None,
        };
        let mut merged = merge_update(t.res, &old, new, t.sub.is_some());
        if let Some(cause) = propagation::validate_finalizers(&merged) {
            return Err(ApiError::invalid(t.res, name, vec![cause]));
        }
        match (is_apply, client_managed) {
            // The apply computed the managed fields itself.
            (true, Some(managed)) => {
                meta_mut(&mut merged).insert("managedFields".into(), managed);
            }
            (true, None) => {
                meta_mut(&mut merged).remove("managedFields");
            }
            (false, client) => {
                apply::record_update(&writer(ctx), Some(&old), &mut merged, client.as_ref())?
            }
        }
        let (merged, charges) = admit(
            app,
            ctx,
            Operation::Update,
            name,
            merged,
            Some(&old),
            ctx.dry_run()?,
        )
        .await?;
        match write_if(app, ctx, &old, merged, rev, &charges).await? {
            Written::Done(done) => {
                return Ok(with_warnings(
                    json_response(StatusCode::OK, &done),
                    &warnings,
                ))
            }
            Written::Stale if precondition.is_some() => return Err(conflict(ctx)),
            Written::Stale | Written::QuotaChanged => continue,
        }
    }
    Err(conflict(ctx))
}

/// `DeleteOptions` from the body and query.
struct DeleteOptions {
    uid: Option<String>,
    resource_version: Option<i64>,
    dry_run: bool,
    grace_period: Option<i64>,
    /// `propagationPolicy` / `orphanDependents`, if the client set one.
    propagation: Option<Propagation>,
}

fn delete_options(ctx: &Ctx) -> ApiResult<DeleteOptions> {
    let mut dry_run = ctx.dry_run()?;
    let body: Value = if ctx.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_body(ctx)?
    };
    if let Some(dr) = body.get("dryRun").and_then(Value::as_array) {
        for v in dr {
            match v.as_str() {
                Some("All") => dry_run = true,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "dryRun: Unsupported value: {other:?}"
                    )))
                }
            }
        }
    }
    let uid = body
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let resource_version = super::read::parse_rv(
        body.pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str),
    )?;
    let grace_period =
        match body.get("gracePeriodSeconds").and_then(Value::as_i64) {
            Some(g) => Some(g),
            None => match ctx.q("gracePeriodSeconds") {
                None | Some("") => None,
                Some(g) => Some(g.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}"))
                })?),
            },
        };
    let propagation = super::propagation::from_options(&body, |k| ctx.q(k))?;
    Ok(DeleteOptions {
        uid,
        resource_version,
        dry_run,
        grace_period,
        propagation,
    })
}

/// What deleting one object did.
pub(crate) enum Deletion {
    /// The key is gone.
    Removed,
    /// The object is marked for deletion (`deletionTimestamp`): it waits for
    /// its finalizers, or for its node to confirm a pod stopped.
    Terminating(Value),
    /// It changed since it was read.
    Conflict,
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn bound_pod(res: &ResourceInfo, obj: &Value) -> bool {
    res.kind == "Pod"
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
}

/// True if a marked object may now go: no finalizers left, and a pod's node
/// has confirmed (grace 0) or it is not bound.
pub(crate) fn ready_to_remove(res: &ResourceInfo, obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
        && !has_finalizers(obj)
        && !(res.kind == "Namespace" && has_spec_finalizers(obj))
        && (!bound_pod(res, obj)
            || obj
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                == Some(0))
}

/// What deleting an object comes to (see [`plan_deletion`]).
pub(crate) enum Planned {
    /// Remove the key.
    Remove,
    /// Nothing to write: it is already marked as asked.
    Keep,
    /// Store this (marked, or with other GC finalizers).
    Write(Value),
}

/// Decides how `obj` is deleted: at once, or by marking it with a
/// `deletionTimestamp` when it has finalizers, or is a pod bound to a node
/// with a grace period (the node agent removes it with grace 0).
/// `propagation` (else the object's own GC finalizer, else `Background`)
/// first sets the `orphan` / `foregroundDeletion` finalizer the garbage
/// collector acts on; an object already marked may still change it, as
/// with Kubernetes (not a pod in its grace period).
pub(crate) fn plan_deletion(
    res: &ResourceInfo,
    obj: &Value,
    grace: Option<i64>,
    propagation: Option<Propagation>,
) -> Planned {
    let pod_grace = bound_pod(res, obj)
        .then(|| {
            grace.unwrap_or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            })
        })
        .filter(|g| *g > 0);
    let marked = obj.pointer("/metadata/deletionTimestamp").is_some();
    let existing = propagation::finalizers(obj);
    let wanted = if marked && bound_pod(res, obj) {
        existing.clone()
    } else {
        propagation::deletion_finalizers(&existing, propagation)
    };
    let mut new = obj.clone();
    let refinalized = !propagation::same_set(&existing, &wanted);
    if refinalized {
        let m = meta_mut(&mut new);
        if wanted.is_empty() {
            m.remove("finalizers");
        } else {
            m.insert("finalizers".into(), json!(wanted));
        }
    }
    if !has_finalizers(&new) && pod_grace.is_none() {
        return Planned::Remove;
    }
    if marked && !refinalized {
        return Planned::Keep;
    }
    if !marked {
        let when =
            time::OffsetDateTime::now_utc() + time::Duration::seconds(pod_grace.unwrap_or(0));
        let when = when
            .replace_nanosecond(0)
            .unwrap_or(when)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let m = meta_mut(&mut new);
        m.insert("deletionTimestamp".into(), json!(when));
        m.insert(
            "deletionGracePeriodSeconds".into(),
            json!(pod_grace.unwrap_or(0)),
        );
    }
    Planned::Write(new)
}

/// Deletes `obj` (read at `rev`) as [`plan_deletion`] decides.
pub(crate) async fn delete_or_mark(
    app: &App,
    res: &ResourceInfo,
    key: &str,
    obj: &Value,
    rev: i64,
    grace: Option<i64>,
    propagation: Option<Propagation>,
) -> ApiResult<Deletion> {
    Ok(match plan_deletion(res, obj, grace, propagation) {
        Planned::Remove => match app.store.delete(key, rev).await.map_err(store_err)? {
            Cas::Done(_) => {
                if res.kind == "Service" {
                    crate::alloc::release(&app.store, &crate::alloc::held_keys(obj)).await;
                }
                Deletion::Removed
            }
            Cas::Failed(_) => Deletion::Conflict,
        },
        Planned::Keep => Deletion::Terminating(obj.clone()),
        Planned::Write(mut new) => match app
            .store
            .update(key, to_store(&new)?, rev)
            .await
            .map_err(store_err)?
        {
            Cas::Done(r) => {
                object::set_resource_version(&mut new, r);
                Deletion::Terminating(new)
            }
            Cas::Failed(_) => Deletion::Conflict,
        },
    })
}

/// Marks a namespace `Terminating` (the namespace controller empties and
/// then removes it). On the first DELETE an explicit `propagation` sets
/// the GC finalizers in `metadata.finalizers`, as Kubernetes' namespace
/// storage does (namespaces have no default policy).
async fn terminate_namespace(
    app: &App,
    key: &str,
    ns: &Value,
    rev: i64,
    propagation: Option<Propagation>,
) -> ApiResult<Deletion> {
    let mut marked = mark_terminating(ns);
    if let (Some(p), None) = (propagation, ns.pointer("/metadata/deletionTimestamp")) {
        let existing = propagation::finalizers(ns);
        let wanted = propagation::deletion_finalizers(&existing, Some(p));
        let m = meta_mut(&mut marked);
        if wanted.is_empty() {
            m.remove("finalizers");
        } else {
            m.insert("finalizers".into(), json!(wanted));
        }
    }
    if &marked == ns {
        return Ok(Deletion::Terminating(marked));
    }
    Ok(
        match app
            .store
            .update(key, to_store(&marked)?, rev)
            .await
            .map_err(store_err)?
        {
            Cas::Done(r) => {
                let mut marked = marked;
                object::set_resource_version(&mut marked, r);
                Deletion::Terminating(marked)
            }
            Cas::Failed(_) => Deletion::Conflict,
        },
    )
}

/// DELETE of one object. A namespace turns `Terminating`; the namespace
/// controller deletes its content in the background, then the namespace.
pub async fn delete(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let opts = delete_options(ctx)?;
    let name = t.name.as_deref().unwrap_or("");
    let is_namespace = t.res.kind == "Namespace";
    for _ in 0..RETRIES {
        let (obj, rev) = read_object(app, &t.key())
            .await?
            .ok_or_else(|| ApiError::not_found(t.res, name))?;
        if let Some(uid) = &opts.uid {
            let actual = meta_str(&obj, "uid").unwrap_or("");
            if uid != actual {
                return Err(ApiError::conflict(t.res, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}")));
            }
        }
        if let Some(want) = opts.resource_version {
            if want != rev {
                return Err(ApiError::conflict(t.res, name, &format!("Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}")));
            }
        }
        let (obj, _) = admit(app, ctx, Operation::Delete, name, obj, None, opts.dry_run).await?;
        if opts.dry_run {
            // The object as the deletion would leave it (or as it was, if
            // it would go at once).
            let preview = match plan_deletion(t.res, &obj, opts.grace_period, opts.propagation) {
                Planned::Write(new) if !is_namespace => new,
                _ if is_namespace => mark_terminating(&obj),
                _ => obj,
            };
            return Ok(json_response(StatusCode::OK, &preview));
        }
        let deletion = if is_namespace {
            terminate_namespace(app, &t.key(), &obj, rev, opts.propagation).await?
        } else {
            delete_or_mark(
                app,
                t.res,
                &t.key(),
                &obj,
                rev,
                opts.grace_period,
                opts.propagation,
            )
            .await?
        };
        match deletion {
            Deletion::Removed => return Ok(json_response(StatusCode::OK, &obj)),
            Deletion::Terminating(marked) => return Ok(json_response(StatusCode::OK, &marked)),
            Deletion::Conflict if opts.resource_version.is_some() => return Err(conflict(ctx)),
            Deletion::Conflict => continue,
        }
    }
    Err(conflict(ctx))
}

/// PUT of `namespaces/<name>/finalize`: only `spec.finalizers` is taken
/// from the body (as Kubernetes' finalize strategy does); a terminating
/// namespace left with no finalizers at all is removed.
pub async fn finalize_namespace(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    ctx.dry_run()?;
    let mut body = parse_body(ctx)?;
    type_meta(&mut body, t.res)?;
    check_name(&body, ctx)?;
    let expected = parse_body_rv(&body)?;
    let finalizers = match body.pointer("/spec/finalizers") {
        None | Some(Value::Null) => None,
        Some(Value::Array(f)) if f.iter().all(Value::is_string) => Some(Value::Array(f.clone())),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "spec.finalizers must be a list of strings, not {other}"
            )))
        }
    };
    let name = t.name.as_deref().unwrap_or("");
    for _ in 0..RETRIES {
        let (old, rev) = read_object(app, &t.key())
            .await?
            .ok_or_else(|| ApiError::not_found(t.res, name))?;
        if expected.is_some_and(|e| e != rev) {
            return Err(conflict(ctx));
        }
        let mut new = old.clone();
        if !new.get("spec").is_some_and(Value::is_object) {
            new["spec"] = json!({});
        }
        match (
            &finalizers,
            new.get_mut("spec").and_then(Value::as_object_mut),
        ) {
            (Some(f), Some(spec)) => {
                spec.insert("finalizers".into(), f.clone());
            }
            (None, Some(spec)) => {
                spec.remove("finalizers");
            }
            (_, None) => {}
        }
        match write_if(app, ctx, &old, new, rev, &[]).await? {
            Written::Done(done) => return Ok(json_response(StatusCode::OK, &done)),
            Written::Stale if expected.is_some() => return Err(conflict(ctx)),
            Written::Stale | Written::QuotaChanged => continue,
        }
    }
    Err(conflict(ctx))
}

/// DELETE of a collection (with the list's selectors): the deleted objects.
pub async fn delete_collection(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let opts = delete_options(ctx)?;
    let listing = select(app, ctx).await?;
    let res = ctx.target.res;
    let mut deleted = Vec::new();
    for obj in listing.items {
        let ns = meta_str(&obj, "namespace");
        let name = meta_str(&obj, "name").unwrap_or("");
        if res.kind == "Namespace" && SYSTEM_NAMESPACES.contains(&name) {
            continue;
        }
        let rev = super::read::parse_rv(meta_str(&obj, "resourceVersion"))?.unwrap_or(0);
        let (obj, _) = admit(
            app,
            ctx,
            Operation::Delete,
            name,
            obj.clone(),
            None,
            opts.dry_run,
        )
        .await?;
        if !opts.dry_run {
            let key = res.key(ns, name);
            let deletion = if res.kind == "Namespace" {
                terminate_namespace(app, &key, &obj, rev, opts.propagation).await?
            } else {
                delete_or_mark(
                    app,
                    res,
                    &key,
                    &obj,
                    rev,
                    opts.grace_period,
                    opts.propagation,
                )
                .await?
            };
            match deletion {
                Deletion::Removed => {}
                Deletion::Terminating(marked) => {
                    deleted.push(marked);
                    continue;
                }
                Deletion::Conflict => continue,
            }
        }
        deleted.push(obj);
    }
    let body = json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.group_version(),
        "metadata": {"resourceVersion": listing.revision.to_string()},
        "items": deleted,
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// Creates the system namespaces that do not exist yet.
pub async fn bootstrap(app: &App) -> ApiResult<()> {
    let nsres = registry::lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
    for ns in SYSTEM_NAMESPACES {
        let obj = json!({
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {
                "name": ns,
                "uid": object::new_uid(),
                "creationTimestamp": object::now_rfc3339(),
                "labels": {"kubernetes.io/metadata.name": ns},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        app.store
            .create(&nsres.key(None, ns), to_store(&obj)?)
            .await
            .map_err(store_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmaps() -> &'static ResourceInfo {
        registry::lookup("", "v1", "configmaps").expect("registered")
    }

    #[test]
    fn deletion_follows_the_propagation_policy() {
        let cm = json!({"metadata": {"name": "c"}});
        // Background (or nothing asked): removed at once.
        assert!(matches!(
            plan_deletion(configmaps(), &cm, None, Some(Propagation::Background)),
            Planned::Remove
        ));
        assert!(matches!(
            plan_deletion(configmaps(), &cm, None, None),
            Planned::Remove
        ));
        // Orphan: marked, with the finalizer.
        let Planned::Write(marked) =
            plan_deletion(configmaps(), &cm, None, Some(Propagation::Orphan))
        else {
            panic!("orphan marks the object");
        };
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 0);
        assert_eq!(marked["metadata"]["finalizers"], json!(["orphan"]));
        // Again without a policy: kept as it is.
        assert!(matches!(
            plan_deletion(configmaps(), &marked, None, None),
            Planned::Keep
        ));
        // Switched to foreground: same timestamp, the other finalizer.
        let Planned::Write(fg) =
            plan_deletion(configmaps(), &marked, None, Some(Propagation::Foreground))
        else {
            panic!("a new policy rewrites the finalizers");
        };
        assert_eq!(
            fg["metadata"]["deletionTimestamp"],
            marked["metadata"]["deletionTimestamp"]
        );
        assert_eq!(fg["metadata"]["finalizers"], json!(["foregroundDeletion"]));
        // Switched to background with nothing else holding it: removed.
        assert!(matches!(
            plan_deletion(configmaps(), &marked, None, Some(Propagation::Background)),
            Planned::Remove
        ));
        // Another finalizer keeps it (marked, without GC finalizers).
        let held = json!({"metadata": {"name": "c", "finalizers": ["x/y"]}});
        let Planned::Write(m) = plan_deletion(configmaps(), &held, None, None) else {
            panic!("a finalizer holds it");
        };
        assert_eq!(m["metadata"]["finalizers"], json!(["x/y"]));
    }
}
