//! get and list (with selectors, `limit`/`continue` and Table output).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

use super::{decode, json_response, store_err, App, Ctx};
use crate::cache::Entry;
use crate::registry::ResourceInfo;
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

/// A list read from the watch cache: the selected objects as prepared
/// there (their values are the objects as the API returns them).
struct CachedListing {
    /// The objects, in key order.
    entries: Vec<Entry>,
    /// The cache's revision.
    revision: i64,
    /// The continue token, if more items follow.
    continue_token: Option<String>,
    /// As [`Listing::remaining`].
    remaining: Option<i64>,
}

impl CachedListing {
    /// The objects parsed.
    fn decode(self) -> ApiResult<Listing> {
        Ok(Listing {
            items: self
                .entries
                .iter()
                .map(|e| decode(&e.kv))
                .collect::<ApiResult<_>>()?,
            revision: self.revision,
            continue_token: self.continue_token,
            remaining: self.remaining,
        })
    }
}

/// A selection from the watch cache (objects not parsed) or the store.
enum Selected {
    Cached(CachedListing),
    Decoded(Listing),
}

/// Lists the target's collection with the request's selectors, `limit`,
/// `continue` and `resourceVersion`/`resourceVersionMatch`.
pub async fn select(app: &App, ctx: &Ctx) -> ApiResult<Listing> {
    match select_any(app, ctx).await? {
        Selected::Cached(c) => c.decode(),
        Selected::Decoded(l) => Ok(l),
    }
}

/// [`select`], leaving a list from the watch cache unparsed.
async fn select_any(app: &App, ctx: &Ctx) -> ApiResult<Selected> {
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
            return Ok(Selected::Cached(listing));
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
                return Ok(Selected::Decoded(Listing {
                    items,
                    revision,
                    continue_token,
                    remaining,
                }));
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
    Ok(Selected::Decoded(Listing {
        items,
        revision,
        continue_token,
        remaining: None,
    }))
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
) -> ApiResult<Option<CachedListing>> {
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
    let (entries, revision) = cache.entries(prefix.as_bytes());
    if !cache.is_live() {
        return Ok(None);
    }
    select_entries(entries, revision, limit, labels, fields).map(Some)
}

/// The cached objects `labels` and `fields` select, at most `limit` (0:
/// all) of them, with a continue token at `revision` if more follow.
/// Selectors read what the cache took out of each object; an object the
/// cache could not prepare (or a field it did not take out) is parsed.
fn select_entries(
    entries: Vec<Entry>,
    revision: i64,
    limit: usize,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> ApiResult<CachedListing> {
    let n = entries.len();
    let everything = labels.0.is_empty() && fields.0.is_empty();
    let mut items = Vec::with_capacity(if everything { n } else { 0 });
    let mut continue_token = None;
    let mut remaining = None;
    for (i, entry) in entries.into_iter().enumerate() {
        let selected = match entry
            .selectable
            .as_deref()
            .and_then(|s| s.matches(labels, fields))
        {
            Some(m) => m,
            None => {
                let obj = decode(&entry.kv)?;
                labels.matches(obj.pointer("/metadata/labels")) && fields.matches(&obj)
            }
        };
        let key = entry.kv.key.clone();
        if selected {
            items.push(entry);
        }
        if limit > 0 && items.len() == limit && i + 1 < n {
            let mut next = key.to_vec();
            next.push(0);
            continue_token = Some(encode_continue(revision, &next));
            remaining = everything.then_some((n - i - 1) as i64);
            break;
        }
    }
    Ok(CachedListing {
        entries: items,
        revision,
        continue_token,
        remaining,
    })
}

/// A `<Kind>List` of parsed objects, as JSON.
fn list_body(res: &ResourceInfo, l: Listing) -> Value {
    let meta = list_meta(&l);
    // Built by hand: json! would copy every item before encoding it.
    let mut body = serde_json::Map::new();
    body.insert("kind".into(), Value::String(format!("{}List", res.kind)));
    body.insert("apiVersion".into(), Value::String(res.group_version()));
    body.insert("metadata".into(), meta);
    body.insert("items".into(), Value::Array(l.items));
    Value::Object(body)
}

/// A list's `metadata`: its resourceVersion, continue token and count of
/// the items that follow.
fn list_meta(l: &Listing) -> Value {
    let mut meta = json!({"resourceVersion": l.revision.to_string()});
    if let Some(c) = &l.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(n) = l.remaining {
        meta["remainingItemCount"] = json!(n);
    }
    meta
}

/// Writes `s` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// The `<Kind>List` of objects from the watch cache, joined from their
/// prepared bytes: byte for byte what [`list_body`] encodes for the same
/// objects parsed (keys in order: `apiVersion`, `items`, `kind`,
/// `metadata` with `continue`, `remainingItemCount` and `resourceVersion`), without parsing
/// them. `None` if an object was not prepared.
fn spliced_body(res: &ResourceInfo, l: &CachedListing) -> Option<Vec<u8>> {
    if l.entries.iter().any(|e| e.selectable.is_none()) {
        return None;
    }
    let size: usize = l.entries.iter().map(|e| e.kv.value.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 256);
    out.extend_from_slice(b"{\"apiVersion\":");
    push_json_str(&mut out, &res.group_version());
    out.extend_from_slice(b",\"items\":[");
    for (i, e) in l.entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.kv.value);
    }
    out.extend_from_slice(b"],\"kind\":");
    push_json_str(&mut out, &format!("{}List", res.kind));
    out.extend_from_slice(b",\"metadata\":{");
    if let Some(c) = &l.continue_token {
        out.extend_from_slice(b"\"continue\":");
        push_json_str(&mut out, c);
        out.push(b',');
    }
    if let Some(n) = l.remaining {
        out.extend_from_slice(format!("\"remainingItemCount\":{n},").as_bytes());
    }
    out.extend_from_slice(b"\"resourceVersion\":");
    push_json_str(&mut out, &l.revision.to_string());
    out.extend_from_slice(b"}}");
    Some(out)
}

/// GET of a collection: a `<Kind>List`, or a Table.
pub async fn list(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let res = ctx.target.res;
    let wants_table = table::wants_table(ctx.header(header::ACCEPT));
    let mut l = match select_any(app, ctx).await? {
        // Built-in kinds from the cache, as JSON: joined from the cached
        // bytes (custom objects get their version's defaults, so they
        // are parsed; a protobuf client's list is re-encoded from this).
        Selected::Cached(c) if !res.custom && !wants_table => match spliced_body(res, &c) {
            Some(body) => {
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response())
            }
            None => c.decode()?,
        },
        Selected::Cached(c) => c.decode()?,
        Selected::Decoded(l) => l,
    };
    for o in &mut l.items {
        crate::crd::convert_out(res, o);
    }
    if wants_table {
        let meta = list_meta(&l);
        let include = IncludeObject::parse(ctx.q("includeObject"));
        return Ok(json_response(
            StatusCode::OK,
            &table::table(res, &l.items, meta, include),
        ));
    }
    Ok(json_response(StatusCode::OK, &list_body(res, l)))
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

    use crate::cache::Entry;
    use bytes::Bytes;
    use keel_storage::proto::mvccpb::KeyValue;

    /// Stored pods (no resourceVersion, as writes store them), with labels
    /// and fields of every shape selectors meet.
    fn stored_pods() -> Vec<KeyValue> {
        let objs = [
            json!({"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": "a", "namespace": "default", "labels": {"app": "web", "n": "3"}},
                   "spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}}),
            json!({"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": "b", "namespace": "default", "labels": {"app": "db", "odd": 5}},
                   "spec": {"nodeName": "n2", "containers": [{"name": "c", "image": "x"}]},
                   "status": {"phase": "Pending", "ratio": 0.1}}),
            json!({"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": "c", "namespace": "default", "labels": "not a map"},
                   "spec": {}, "status": {"phase": "Running"}}),
            json!({"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": "d", "namespace": "kube-system", "labels": {"app": "web", "n": "10"},
                                "annotations": {"q": "\"quoted\" \u{e9}\n"}},
                   "spec": {"nodeName": "n1", "restartPolicy": "Never"}}),
            json!({"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": "e", "namespace": "kube-system"},
                   "spec": {"nodeName": "n3"}, "status": {"phase": "Succeeded", "podIP": "10.0.0.5"}}),
        ];
        objs.iter()
            .enumerate()
            .map(|(i, o)| {
                let m = &o["metadata"];
                KeyValue {
                    key: Bytes::from(format!(
                        "/registry/pods/{}/{}",
                        m["namespace"].as_str().unwrap_or_default(),
                        m["name"].as_str().unwrap_or_default()
                    )),
                    mod_revision: 10 + i as i64,
                    // Written with spaces and out of order, as a client
                    // other than the API server might have.
                    value: Bytes::from(serde_json::to_string_pretty(o).expect("encode")),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// The list as the cache served it before objects were prepared: each
    /// stored value parsed, selected, and the `<Kind>List` encoded.
    fn parsed_list(
        kvs: &[KeyValue],
        revision: i64,
        limit: usize,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<u8> {
        let mut items = Vec::new();
        let mut continue_token = None;
        let mut remaining = None;
        for (i, kv) in kvs.iter().enumerate() {
            let obj = decode(kv).expect("decode");
            if labels.matches(obj.pointer("/metadata/labels")) && fields.matches(&obj) {
                items.push(obj);
            }
            if limit > 0 && items.len() == limit && i + 1 < kvs.len() {
                let mut next = kv.key.to_vec();
                next.push(0);
                continue_token = Some(encode_continue(revision, &next));
                let unselected = labels.0.is_empty() && fields.0.is_empty();
                remaining = unselected.then_some((kvs.len() - i - 1) as i64);
                break;
            }
        }
        let res = crate::registry::lookup("", "v1", "pods").expect("pods");
        serde_json::to_vec(&list_body(
            res,
            Listing {
                items,
                revision,
                continue_token,
                remaining,
            },
        ))
        .expect("encode")
    }

    #[test]
    fn spliced_lists_are_the_parsed_lists() {
        let res = crate::registry::lookup("", "v1", "pods").expect("pods");
        let kvs = stored_pods();
        let entries: Vec<Entry> = kvs.iter().map(|kv| Entry::new(kv.clone(), "Pod")).collect();
        // A prepared value decodes to the stored object with its resourceVersion.
        for (kv, e) in kvs.iter().zip(&entries) {
            assert_eq!(
                decode(kv).expect("stored"),
                decode(&e.kv).expect("prepared")
            );
            assert!(e.selectable.is_some());
        }
        let label_sels = [
            "",
            "app=web",
            "app!=web",
            "app in (web,db)",
            "!app",
            "odd",
            "n>4",
            "app,n<5",
        ];
        let field_sels = [
            "",
            "spec.nodeName=n1",
            "status.phase!=Running",
            "metadata.namespace=kube-system,spec.nodeName!=n3",
            "spec.hostNetwork=true",
            "status.podIP=",
        ];
        let mut compared = 0;
        for l in label_sels {
            for f in field_sels {
                let labels = LabelSelector::parse(l).expect(l);
                let fields = FieldSelector::parse(f, "Pod").expect(f);
                for limit in 0..=kvs.len() + 1 {
                    let want = parsed_list(&kvs, 42, limit, &labels, &fields);
                    let got = select_entries(entries.clone(), 42, limit, &labels, &fields)
                        .expect("select");
                    let body = spliced_body(res, &got).expect("prepared");
                    assert_eq!(
                        String::from_utf8_lossy(&body),
                        String::from_utf8_lossy(&want),
                        "labels {l:?} fields {f:?} limit {limit}"
                    );
                    compared += 1;
                }
            }
        }
        assert_eq!(
            compared,
            label_sels.len() * field_sels.len() * (kvs.len() + 2)
        );
        // A page: the token names the revision and where the next page starts.
        let everything = (LabelSelector::default(), FieldSelector::default());
        let page =
            select_entries(entries.clone(), 42, 2, &everything.0, &everything.1).expect("select");
        let token = page.continue_token.as_deref().expect("more follow");
        assert_eq!(
            decode_continue(token).expect("token"),
            (42, b"/registry/pods/default/b\0".to_vec())
        );
        let body: Value =
            serde_json::from_slice(&spliced_body(res, &page).expect("prepared")).expect("json");
        assert_eq!(
            body["metadata"],
            json!({"resourceVersion": "42", "continue": token, "remainingItemCount": 3})
        );
        assert_eq!(body["items"][1]["metadata"]["resourceVersion"], json!("11"));
    }

    #[test]
    fn unprepared_objects_fail_the_list_as_before() {
        let kv = KeyValue {
            key: Bytes::from_static(b"/registry/pods/default/x"),
            mod_revision: 3,
            value: Bytes::from_static(b"[1, 2]"),
            ..Default::default()
        };
        let e = Entry::new(kv.clone(), "Pod");
        assert!(e.selectable.is_none());
        assert_eq!(e.kv.value, kv.value);
        let none = (LabelSelector::default(), FieldSelector::default());
        assert_eq!(
            select_entries(vec![e], 3, 0, &none.0, &none.1)
                .err()
                .map(|e| e.code),
            Some(500)
        );
    }
}
