//! `?watch=true`: newline-delimited JSON watch events (`ADDED`, `MODIFIED`,
//! `DELETED`, `BOOKMARK`, `ERROR`) from a resourceVersion, served from the
//! resource's watch cache ([`crate::cache`]); a revision older than the
//! cache's window is watched on the store directly.
//!
//! - `resourceVersion` unset or `0`: synthetic `ADDED` events for the current
//!   state first, then changes after it. With `sendInitialEvents=true`
//!   (streaming lists) that state is followed by a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end`.
//! - `resourceVersion=R`: changes after R, nothing older replayed.
//! - R within the cache's window: replayed from the cache (as Kubernetes'
//!   watch cache does, even if the store has compacted it since); R older
//!   than the window: watched on the store, and if the store has compacted
//!   it, one `ERROR` event carrying a 410 `Expired` Status.
//! - Selectors: an object that stops matching is sent as `DELETED`, one that
//!   starts matching as `ADDED`, as Kubernetes does.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use keel_storage::proto::mvccpb::{event::EventType, KeyValue};
use serde_json::{json, Value};

use crate::cache::Selectable;
use crate::handlers::read::parse_rv;
use crate::handlers::{decode, store_err, App, Ctx};
use crate::registry::ResourceInfo;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::table::{self, IncludeObject};

/// A watch without `timeoutSeconds` ends after this long (Kubernetes picks
/// 30–60 minutes); clients re-watch from their last resourceVersion.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How often a watch with `allowWatchBookmarks=true` asks the store for progress.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

/// Filters and formats events for one HTTP watch.
struct Filter {
    res: &'static ResourceInfo,
    labels: LabelSelector,
    fields: FieldSelector,
    table: Option<IncludeObject>,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj.pointer("/metadata/labels")) && self.fields.matches(obj)
    }

    /// Whether an object is selected, from what the cache took out of it
    /// (`None`: not known that way; parse it).
    fn matches_prepared(&self, sel: Option<&Selectable>) -> Option<bool> {
        sel?.matches(&self.labels, &self.fields)
    }

    fn line(&self, kind: &str, mut obj: Value) -> Bytes {
        if obj.is_object() && kind != "ERROR" && kind != "BOOKMARK" {
            obj["kind"] = json!(self.res.kind);
            obj["apiVersion"] = json!(self.res.group_version());
            crate::crd::convert_out(self.res, &mut obj);
        }
        if let (Some(include), "ADDED" | "MODIFIED" | "DELETED") = (self.table, kind) {
            let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)});
            obj = table::table(self.res, &[obj], meta, include);
        }
        // Written around the object rather than through json!, which would
        // copy it first; `kind` is one of the fixed event types.
        let mut s = Vec::with_capacity(512);
        s.extend_from_slice(b"{\"type\":\"");
        s.extend_from_slice(kind.as_bytes());
        s.extend_from_slice(b"\",\"object\":");
        if serde_json::to_writer(&mut s, &obj).is_err() {
            s.extend_from_slice(b"null");
        }
        s.extend_from_slice(b"}\n");
        Bytes::from(s)
    }

    /// True if every event's lines depend on the event alone (no selector,
    /// no table): such watches share them.
    fn selects_everything(&self) -> bool {
        self.labels.0.is_empty() && self.fields.0.is_empty() && self.table.is_none()
    }

    fn bookmark(&self, rev: i64) -> Bytes {
        self.line(
            "BOOKMARK",
            json!({"kind": self.res.kind, "apiVersion": self.res.group_version(),
                   "metadata": {"resourceVersion": rev.to_string()}}),
        )
    }

    /// The event lines for one store event; `sel` is what the cache took
    /// out of the new and the previous object, if it did.
    fn event(
        &self,
        put: bool,
        kv: &KeyValue,
        prev: Option<&KeyValue>,
        sel: (Option<&Selectable>, Option<&Selectable>),
    ) -> Vec<Bytes> {
        // An object selected neither before nor after sends nothing: found
        // out without parsing either when the cache prepared both.
        let old_selected = match prev {
            None => Some(false),
            Some(_) => self.matches_prepared(sel.1),
        };
        let new_selected = if put {
            self.matches_prepared(sel.0)
        } else {
            Some(false)
        };
        if old_selected == Some(false) && new_selected == Some(false) {
            return vec![];
        }
        let old = prev
            .and_then(|p| decode(p).ok())
            .filter(|o| self.matches(o));
        if !put {
            return match old {
                Some(mut o) => {
                    crate::object::set_resource_version(&mut o, kv.mod_revision);
                    vec![self.line("DELETED", o)]
                }
                None => vec![],
            };
        }
        let Ok(new) = decode(kv) else {
            return vec![self.line(
                "ERROR",
                ApiError::internal(format!(
                    "undecodable object at {}",
                    String::from_utf8_lossy(&kv.key)
                ))
                .to_status(),
            )];
        };
        match (old.is_some(), self.matches(&new)) {
            (true, true) => vec![self.line("MODIFIED", new)],
            (false, true) => vec![self.line("ADDED", new)],
            (true, false) => vec![self.line("DELETED", new)],
            (false, false) => vec![],
        }
    }
}

/// Where a watch's events come from.
enum Source {
    /// The resource's watch cache (the usual case).
    Cache(crate::cache::Subscription),
    /// The store directly (a revision older than the cache's window).
    Store(crate::store::WatchStream),
}

/// One HTTP watch's event pump.
struct Watcher {
    filter: Filter,
    /// The key prefix watched (or the one key, when `exact`).
    prefix: String,
    exact: bool,
    /// Only changes after this revision are sent.
    after: i64,
    bookmarks: bool,
}

/// An event's lines as one chunk: none, the line itself, or the lines joined.
fn join(lines: Vec<Bytes>) -> Option<Bytes> {
    match lines.len() {
        0 => None,
        1 => lines.into_iter().next(),
        _ => Some(Bytes::from(lines.concat())),
    }
}

impl Watcher {
    fn wants(&self, key: &[u8]) -> bool {
        if self.exact {
            key == self.prefix.as_bytes()
        } else {
            key.starts_with(self.prefix.as_bytes())
        }
    }

    /// The chunk one cache event makes for this watch: its lines joined
    /// (a change may make two), or none if it does not concern it.
    fn chunk(&self, ev: &crate::cache::Event) -> Option<Bytes> {
        match ev {
            crate::cache::Event::Change {
                put,
                kv,
                prev,
                selectable,
                shared,
            } => {
                if kv.mod_revision <= self.after || !self.wants(&kv.key) {
                    return None;
                }
                let res = self.filter.res as *const ResourceInfo as usize;
                let sel = (selectable.0.as_deref(), selectable.1.as_deref());
                let made = || join(self.filter.event(*put, kv, prev.as_ref(), sel));
                if self.filter.selects_everything() {
                    let (made_for, chunk) = shared.get_or_init(|| (res, made()));
                    if *made_for == res {
                        return chunk.clone();
                    }
                }
                made()
            }
            crate::cache::Event::Progress(rev) if self.bookmarks && *rev >= self.after => {
                Some(self.filter.bookmark(*rev))
            }
            crate::cache::Event::Progress(_) => None,
        }
    }

    /// The watch's body from the cache: the buffered events after its
    /// revision, then live ones, until the deadline. The HTTP stream's task
    /// polls it directly: no task or channel in between, so one event costs
    /// each watcher one wake-up. Lagging too far behind, or the cache
    /// closing, ends the watch; the client re-watches from its last
    /// resourceVersion.
    fn cache_body(
        self,
        sub: crate::cache::Subscription,
        deadline: tokio::time::Instant,
    ) -> impl futures::Stream<Item = Bytes> + Send {
        struct State {
            w: Watcher,
            replay: std::vec::IntoIter<std::sync::Arc<crate::cache::Event>>,
            live: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::cache::Event>>,
            channel: u64,
            // One timer for the whole watch, not one per event.
            expiry: std::pin::Pin<Box<tokio::time::Sleep>>,
        }
        let state = State {
            w: self,
            replay: sub.replay.into_iter(),
            live: sub.live,
            channel: sub.channel,
            expiry: Box::pin(tokio::time::sleep_until(deadline)),
        };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                let ev = match st.replay.next() {
                    Some(ev) => ev,
                    // An event ready now is taken without polling the timer
                    // (the timer is armed only while the watch waits); a
                    // watch busy past its deadline still ends there.
                    None if st.expiry.deadline() <= tokio::time::Instant::now() => return None,
                    None => tokio::select! {
                        biased;
                        ev = crate::local_wake::recv(st.channel, &mut st.live) => ev?,
                        _ = &mut st.expiry => return None,
                    },
                };
                if let Some(chunk) = st.w.chunk(&ev) {
                    return Some((chunk, st));
                }
            }
        })
        // Ended for good: a poll after the end gets `None` again.
        .fuse()
    }

    async fn pump_store(
        self,
        mut stream: crate::store::WatchStream,
        deadline: tokio::time::Instant,
        tx: tokio::sync::mpsc::Sender<Bytes>,
        stopping: tokio_util::sync::CancellationToken,
    ) {
        let filter = &self.filter;
        let tx = &tx;
        let expiry = tokio::time::sleep_until(deadline);
        tokio::pin!(expiry);
        loop {
            let resp = tokio::select! {
                _ = &mut expiry => return,
                _ = tx.closed() => return,
                // The server stops: its connections drain.
                _ = stopping.cancelled() => return,
                r = stream.next() => r,
            };
            let resp = match resp {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let _ = tx
                        .send(filter.line("ERROR", store_err(e).to_status()))
                        .await;
                    return;
                }
                None => return,
            };
            if resp.canceled || resp.compact_revision > 0 {
                let status = if resp.compact_revision > 0 {
                    expired(self.after)
                } else {
                    ApiError::unavailable(format!(
                        "the store cancelled the watch: {}",
                        resp.cancel_reason
                    ))
                    .to_status()
                };
                let _ = tx.send(filter.line("ERROR", status)).await;
                return;
            }
            if resp.created {
                continue;
            }
            if resp.events.is_empty() {
                if self.bookmarks {
                    let rev = resp.header.map(|h| h.revision).unwrap_or(0);
                    if tx.send(filter.bookmark(rev)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            for ev in &resp.events {
                let Some(kv) = &ev.kv else { continue };
                if !self.wants(&kv.key) {
                    continue;
                }
                let put = ev.r#type == EventType::Put as i32;
                for line in filter.event(put, kv, ev.prev_kv.as_ref(), (None, None)) {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn expired(rev: i64) -> Value {
    ApiError::expired(format!("too old resource version: {rev}")).to_status()
}

/// Serves a watch request.
pub async fn watch(app: &App, ctx: &Ctx) -> ApiResult<Response> {
    let res = ctx.target.res;
    let filter = Filter {
        res,
        labels: LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""), res.kind)?,
        table: table::wants_table(ctx.header(header::ACCEPT))
            .then(|| IncludeObject::parse(ctx.q("includeObject"))),
    };
    // A watch on one object (`/pods/x?watch=true`) is a watch on its key.
    let prefix = match &ctx.target.name {
        Some(_) => ctx.target.key(),
        None => res.prefix(ctx.target.namespace.as_deref()),
    };
    let timeout = match ctx.q("timeoutSeconds") {
        None | Some("") => DEFAULT_TIMEOUT,
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
    };
    let bookmarks = ctx.q_bool("allowWatchBookmarks");
    // `sendInitialEvents=true` (streaming lists): the current state as ADDED
    // events, then a BOOKMARK marked `k8s.io/initial-events-end`, then changes.
    let stream_list = ctx.q_bool("sendInitialEvents");
    if stream_list && (ctx.q("resourceVersionMatch") != Some("NotOlderThan") || !bookmarks) {
        return Err(ApiError::new(
            422,
            "Invalid",
            "sendInitialEvents=true needs resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true",
        ));
    }
    let mut initial = Vec::new();
    let requested = parse_rv(ctx.q("resourceVersion"))?;
    let start = match requested.filter(|_| !stream_list) {
        Some(rv) => rv + 1,
        None => {
            let end = crate::store::prefix_end(prefix.as_bytes());
            let page = app
                .store
                .range(prefix.as_bytes(), &end, 0, 0)
                .await
                .map_err(store_err)?;
            for kv in &page.kvs {
                let obj = decode(kv)?;
                if filter.matches(&obj)
                    && (ctx.target.name.is_none() || kv.key.as_ref() == prefix.as_bytes())
                {
                    initial.push(filter.line("ADDED", obj));
                }
            }
            if stream_list {
                initial.push(filter.line(
                    "BOOKMARK",
                    json!({"kind": res.kind, "apiVersion": res.group_version(),
                           "metadata": {"resourceVersion": page.revision.to_string(),
                                        "annotations": {"k8s.io/initial-events-end": "true"}}}),
                ));
            }
            page.revision + 1
        }
    };
    let exact = ctx.target.name.is_some();
    let after = start - 1;
    let deadline = tokio::time::Instant::now() + timeout;
    let cache = match app.caches.get(&app.store, res).await {
        Ok(c) => c.subscribe(after),
        Err(e) => {
            tracing::debug!(error = %e, "watch cache unavailable; watching the store directly");
            None
        }
    };
    let source = match cache {
        Some(sub) => Source::Cache(sub),
        None => Source::Store(
            app.store
                .watch_prefix(&prefix, start, bookmarks.then_some(BOOKMARK_EVERY))
                .await
                .map_err(store_err)?,
        ),
    };
    let w = Watcher {
        filter,
        prefix,
        exact,
        after,
        bookmarks,
    };
    let rest = match source {
        Source::Cache(sub) => futures::future::Either::Left(w.cache_body(sub, deadline)),
        Source::Store(stream) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
            tokio::spawn(w.pump_store(stream, deadline, tx, app.stopping.clone()));
            futures::future::Either::Right(tokio_stream::wrappers::ReceiverStream::new(rx))
        }
    };
    let body = Body::from_stream(
        futures::stream::iter(initial)
            .chain(rest)
            .map(Ok::<_, std::convert::Infallible>),
    );
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Entry;

    fn pod(name: &str, rev: i64, app: &str, node: &str) -> KeyValue {
        let obj = json!({"kind": "Pod", "apiVersion": "v1",
                         "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
                         "spec": {"nodeName": node}});
        KeyValue {
            key: Bytes::from(format!("/registry/pods/default/{name}")),
            mod_revision: rev,
            value: Bytes::from(obj.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn prepared_events_make_the_same_lines() {
        let res = crate::registry::lookup("", "v1", "pods").expect("pods");
        let versions = [
            pod("a", 5, "web", "n1"),
            pod("a", 6, "db", "n1"),
            pod("a", 7, "db", "n2"),
            pod("a", 8, "web", "n2"),
        ];
        let deleted = KeyValue {
            key: versions[0].key.clone(),
            mod_revision: 9,
            ..Default::default()
        };
        for (l, f) in [
            ("", ""),
            ("app=web", ""),
            ("", "spec.nodeName=n1"),
            ("app!=web", "spec.nodeName=n2"),
        ] {
            let filter = Filter {
                res,
                labels: LabelSelector::parse(l).expect("labels"),
                fields: FieldSelector::parse(f, "Pod").expect("fields"),
                table: None,
            };
            let mut prev: Option<KeyValue> = None;
            for kv in versions.iter().chain([&deleted]) {
                let put = kv.mod_revision != 9;
                let entry = put.then(|| Entry::new(kv.clone(), "Pod"));
                let prev_entry = prev.clone().map(|p| Entry::new(p, "Pod"));
                let parsed = filter.event(put, kv, prev.as_ref(), (None, None));
                let prepared = filter.event(
                    put,
                    entry.as_ref().map_or(kv, |e| &e.kv),
                    prev.as_ref(),
                    (
                        entry.as_ref().and_then(|e| e.selectable.as_deref()),
                        prev_entry.as_ref().and_then(|e| e.selectable.as_deref()),
                    ),
                );
                assert_eq!(parsed, prepared, "{l:?} {f:?} at {}", kv.mod_revision);
                prev = put.then(|| kv.clone());
            }
        }
    }
}
