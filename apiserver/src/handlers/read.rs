//! get and list (with selectors, `limit`/`continue` and Table output).

use axum::http::{header, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::{json, Value};

use super::{decode, json_response, store_err, App, Ctx};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::store::prefix_end;
use crate::table::{self, IncludeObject};

/// Reads one object (`None` if it does not exist).
pub async fn read_object(app: &App, key: &str) -> ApiResult<Option<(Value, i64)>> {
    let (kv, _) = app.store.get(key).await.map_err(store_err)?;
    match kv {
        Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
        None => Ok(None),
    }
}

/// GET of one object (or its status subresource).
pub async fn get(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or_default();
    let (mut obj, _) = read_object(app, &t.key())
        .await?
        .ok_or_else(|| ApiError::not_found(t.res, name))?;
    crate::crd::convert_out(t.res, &mut obj);
    if table::wants_table(ctx.header(header::ACCEPT)) {
        let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)});
        let include = IncludeObject::parse(ctx.q("includeObject"));
        return Ok(json_response(
            StatusCode::OK,
            &table::table(t.res, &[obj], meta, include),
        ));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

/// A `continue` token: where the next page starts and at which revision.
fn encode_continue(rev: i64, next_key: &[u8]) -> String {
    let token =
        json!({"rv": rev, "start": base64::engine::general_purpose::STANDARD.encode(next_key)});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(s: &str) -> ApiResult<(i64, Vec<u8>)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {s:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(bad)?;
    Ok((rev, start))
}

/// Parses a `resourceVersion` parameter ("" and "0" are `None`).
pub fn parse_rv(s: Option<&str>) -> ApiResult<Option<i64>> {
    match s {
        None | Some("") | Some("0") => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("invalid resource version {v:?}"))),
    }
}

/// The selected objects of a collection and the revision they were read at.
pub struct Listing {
    /// The objects, in key order.
    pub items: Vec<Value>,
    /// The store revision of the read.
    pub revision: i64,
    /// The continue token, if more items follow.
    pub continue_token: Option<String>,
    /// With a continue token and no selector: how many items follow
    /// (`metadata.remainingItemCount`; with a selector Kubernetes leaves it
    /// out rather than count objects that may not match).
    pub remaining: Option<i64>,
}

/// Lists the target's collection with the request's selectors, `limit`,
/// `continue` and `resourceVersion`/`resourceVersionMatch`.
pub async fn select(app: &App, ctx: &Ctx) -> ApiResult<Listing> {
    let t = &ctx.target;
    let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""), t.res.kind)?;
    let limit: usize = match ctx.q("limit") {
        None | Some("") => 0,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
            .max(0) as usize,
    };
    let prefix = t.res.prefix(t.namespace.as_deref());
    let unselected = labels.0.is_empty() && fields.0.is_empty();
    // Lists without a continue token come from the watch cache:
    // `resourceVersion=0` ("any"; what informers list with) as it is, a
    // consistent list (no resourceVersion) once the cache has reached the
    // store's current revision (a quorum read). A first page's continue
    // token points at the cache's revision, so the next pages, read from the
    // store at that revision, are consistent with it.
    let no_continue = ctx.q("continue").is_none_or(str::is_empty);
    let any = ctx.q("resourceVersion") == Some("0");
    let consistent = ctx.q("resourceVersion").is_none_or(str::is_empty);
    if no_continue && (any || consistent) {
        if let Some(listing) =
            from_cache(app, ctx, &prefix, consistent, limit, &labels, &fields).await?
        {
            return Ok(listing);
        }
    }
    let end = prefix_end(prefix.as_bytes());
    let (mut revision, mut start) = match ctx.q("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let (rev, start) = decode_continue(c)?;
            if !start.starts_with(prefix.as_bytes()) {
                return Err(ApiError::bad_request(
                    "continue key is not valid for this list",
                ));
            }
            (rev, start)
        }
        None => {
            let rev = match ctx.q("resourceVersionMatch") {
                Some("Exact") => parse_rv(ctx.q("resourceVersion"))?.ok_or_else(|| {
                    ApiError::bad_request("resourceVersionMatch=Exact needs a resourceVersion")
                })?,
                _ => 0,
            };
            (rev, prefix.as_bytes().to_vec())
        }
    };
    let batch = if limit == 0 {
        0
    } else {
        (limit as i64).max(64)
    };
    let mut items = Vec::new();
    let mut continue_token = None;
    loop {
        let page = app
            .store
            .range(&start, &end, batch, revision)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Compacted(_) if ctx.q("continue").is_some() => {
                    ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                }
                other => store_err(other),
            })?;
        if revision == 0 {
            revision = page.revision;
        }
        let n = page.kvs.len();
        for (i, kv) in page.kvs.iter().enumerate() {
            let obj = super::decode(kv)?;
            if labels.matches(obj.pointer("/metadata/labels")) && fields.matches(&obj) {
                items.push(obj);
            }
            let last_of_all = i + 1 == n && !page.more;
            if limit > 0 && items.len() == limit && !last_of_all {
                let mut next = kv.key.to_vec();
                next.push(0);
                continue_token = Some(encode_continue(revision, &next));
                // `count` counts the keys from this request's start.
                let remaining = unselected.then_some(page.count - i as i64 - 1);
                return Ok(Listing {
                    items,
                    revision,
                    continue_token,
                    remaining,
                });
            }
        }
        match page.kvs.last() {
            Some(kv) if page.more => {
                start = kv.key.to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    continue_token.take();
    Ok(Listing {
        items,
        revision,
        continue_token,
        remaining: None,
    })
}

/// How long a consistent list waits for the watch cache before reading the store.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A list served from the watch cache, or `None` (then the store serves it).
async fn from_cache(
    app: &App,
    ctx: &Ctx,
    prefix: &str,
    consistent: bool,
    limit: usize,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> ApiResult<Option<Listing>> {
    let unselected = labels.0.is_empty() && fields.0.is_empty();
    let Ok(cache) = app.caches.get(&app.store, ctx.target.res).await else {
        return Ok(None);
    };
    if consistent {
        let end = prefix_end(prefix.as_bytes());
        let Ok(head) = app.store.range(prefix.as_bytes(), &end, 1, 0).await else {
            return Ok(None);
        };
        if !cache.wait_for(head.revision, CACHE_WAIT).await {
            return Ok(None);
        }
    }
    let (kvs, revision) = cache.snapshot(prefix.as_bytes());
    if !cache.is_live() {
        return Ok(None);
    }
    let mut items = Vec::new();
    let mut continue_token = None;
    let mut remaining = None;
    for (i, kv) in kvs.iter().enumerate() {
        let obj = super::decode(kv)?;
        if labels.matches(obj.pointer("/metadata/labels")) && fields.matches(&obj) {
            items.push(obj);
        }
        if limit > 0 && items.len() == limit && i + 1 < kvs.len() {
            let mut next = kv.key.to_vec();
            next.push(0);
            continue_token = Some(encode_continue(revision, &next));
            remaining = unselected.then_some((kvs.len() - i - 1) as i64);
            break;
        }
    }
    Ok(Some(Listing {
        items,
        revision,
        continue_token,
        remaining,
    }))
}

/// GET of a collection: a `<Kind>List`, or a Table.
pub async fn list(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let res = ctx.target.res;
    let mut l = select(app, ctx).await?;
    for o in &mut l.items {
        crate::crd::convert_out(res, o);
    }
    let mut meta = json!({"resourceVersion": l.revision.to_string()});
    if let Some(c) = &l.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(n) = l.remaining {
        meta["remainingItemCount"] = json!(n);
    }
    if table::wants_table(ctx.header(header::ACCEPT)) {
        let include = IncludeObject::parse(ctx.q("includeObject"));
        return Ok(json_response(
            StatusCode::OK,
            &table::table(res, &l.items, meta, include),
        ));
    }
    // Built by hand: json! would copy every item before encoding it.
    let mut body = serde_json::Map::new();
    body.insert("kind".into(), Value::String(format!("{}List", res.kind)));
    body.insert("apiVersion".into(), Value::String(res.group_version()));
    body.insert("metadata".into(), meta);
    body.insert("items".into(), Value::Array(l.items));
    Ok(json_response(StatusCode::OK, &Value::Object(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, b"/registry/pods/default/a\0");
        assert_eq!(
            decode_continue(&t).expect("decode"),
            (42, b"/registry/pods/default/a\0".to_vec())
        );
        assert_eq!(decode_continue("!!").expect_err("bad").code, 400);
        assert_eq!(parse_rv(Some("0")).expect("0"), None);
        assert_eq!(parse_rv(Some("12")).expect("12"), Some(12));
        assert!(parse_rv(Some("x")).is_err());
    }
}
