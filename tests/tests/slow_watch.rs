//! A watcher that reads too slowly, end to end: a real `keel store` and
//! `keel apiserver` ([`KubeApi`]), a ConfigMap watch over HTTPS (HTTP/1.1,
//! kube-rs' client with the admin client certificate) that is not read
//! while thousands of sizeable ConfigMaps are created, so that the server
//! side falls behind past its lag limit.
//!
//! What the API server does with a lagging watcher (apiserver/src/cache.rs
//! and apiserver/src/watch.rs, as read for this test):
//!
//! - Every `?watch=true` within the cache's window is served from the
//!   resource type's watch cache: one store watch per type, fanned out over
//!   a `tokio::sync::broadcast` channel of capacity `FANOUT` (4096) to every
//!   HTTP watch of that type (all namespaces; progress notifications go
//!   through it too).
//! - The HTTP body is a stream polled by hyper only when it can write, so a
//!   client that does not read stops the polling once TCP (and hyper's
//!   write buffer) is full; the subscriber's broadcast receiver then stays
//!   where it was while the cache goes on sending.
//! - Once more than `FANOUT` events have been sent past it, the receiver's
//!   next `recv` is `Err(Lagged)`; `cache_body` turns that (like a closed
//!   channel) into the end of the stream (`ev.ok()?`). No ERROR event is
//!   sent: the client sees the body end cleanly (the terminating chunk),
//!   exactly as when `timeoutSeconds` expires. Everything it received
//!   before that is in order and complete up to its last resourceVersion.
//! - A new watch from that resourceVersion is replayed from the cache's
//!   window (`WINDOW`, 10000 events) if it is within it, else watched on
//!   the store directly (which replays history, or answers one ERROR event
//!   with a 410 Expired Status if the store has compacted it).
//!
//! The test asserts Kubernetes' guarantee across the two watches: strictly
//! increasing resourceVersions, no duplicates, and exactly the created set
//! (no gap); and that the first watch really ended early (it lagged), with
//! a clean end or a 410. Measured here (debug build): the unread watch
//! delivers some 275 events of 16 KiB (about 4.4 MB in flight) before the
//! server stops pulling, then ends; the re-watch is replayed from the
//! cache's window. A server that skipped ahead on `Lagged` instead of
//! ending the watch (`continue` in `cache_body`) fails the test: about a
//! thousand ConfigMaps are then never delivered.

mod kube_rs;

use kube_rs::client_for;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use keel_tests::kube::KubeApi;
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchParams};
use kube::Client;
use serde_json::Value;

/// The watch cache's source: its constants are read from it, so the test
/// follows them.
const CACHE_RS: &str = include_str!("../../apiserver/src/cache.rs");

/// The value of `pub const <name>: usize = ...;` in cache.rs.
fn cache_const(name: &str) -> usize {
    let prefix = format!("pub const {name}: usize = ");
    let line = CACHE_RS
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in apiserver/src/cache.rs"));
    line.trim_end_matches(';')
        .replace('_', "")
        .parse()
        .unwrap_or_else(|e| panic!("{name} = {line:?}: {e}"))
}

/// The namespace watched.
const NS: &str = "slow-watch";

/// Bytes of data in each of the first ConfigMaps: enough of them
/// ([`BUFFERED_BYTES`] in all) fill every buffer between the server's event
/// stream and the unread client.
const DATA_BYTES: usize = 16 * 1024;

/// What the kernel and the two HTTP stacks may hold between the server's
/// event stream and the unread client, at most: loopback TCP send buffers
/// grow to `net.ipv4.tcp_wmem`'s 4 MiB, the unread receiver's stays small
/// (measured: the first watch delivers about 4.3 MB before it ends).
const BUFFERED_BYTES: usize = 12 * 1024 * 1024;

/// Small ConfigMaps created after the big ones, beyond `FANOUT`: the
/// stalled subscriber is then this many events past its limit.
const OVER_LIMIT: usize = 512;

/// How long one read of a watch may take before the test gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// One event a watch delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: String,
    name: String,
    rv: i64,
}

/// How a watch stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The body ended (cleanly).
    Eof,
    /// An ERROR event (its Status `code`), then the end.
    Error(i64),
    /// `stop` said so (the re-watch has what it needs).
    Stopped,
}

/// Opens a ConfigMap watch on [`NS`] from `rv` (raw lines, so that the test
/// decides when to read).
async fn open_watch(client: &Client, rv: i64) -> impl futures::AsyncBufRead + Unpin {
    let req = kube::core::Request::new(format!("/api/v1/namespaces/{NS}/configmaps"))
        .watch(&WatchParams::default().timeout(290), &rv.to_string())
        .expect("watch request");
    Box::pin(client.request_stream(req).await.expect("open the watch"))
}

/// Reads `body`'s events until it ends or `stop` says enough; bookmarks
/// are skipped. Panics if a read takes longer than [`READ_TIMEOUT`].
async fn read_watch(
    body: impl futures::AsyncBufRead + Unpin,
    what: &str,
    mut stop: impl FnMut(&[Seen]) -> bool,
) -> (Vec<Seen>, End) {
    let mut lines = body.lines();
    let mut seen = Vec::new();
    loop {
        if stop(&seen) {
            return (seen, End::Stopped);
        }
        let line = match tokio::time::timeout(READ_TIMEOUT, lines.next()).await {
            Err(_) => panic!(
                "{what}: nothing within {READ_TIMEOUT:?} after {} events (last {:?})",
                seen.len(),
                seen.last()
            ),
            Ok(None) => return (seen, End::Eof),
            Ok(Some(line)) => line.unwrap_or_else(|e| panic!("{what}: read error {e}")),
        };
        if line.is_empty() {
            continue;
        }
        let ev: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{what}: bad event line ({e}): {line:.200}"));
        let kind = ev["type"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "BOOKMARK" => continue,
            "ERROR" => {
                let code = ev["object"]["code"].as_i64().unwrap_or(0);
                // Nothing may follow an ERROR event.
                let rest = tokio::time::timeout(READ_TIMEOUT, lines.next()).await;
                assert!(
                    matches!(rest, Ok(None)),
                    "{what}: more after an ERROR event: {rest:?}"
                );
                return (seen, End::Error(code));
            }
            _ => {}
        }
        let meta = &ev["object"]["metadata"];
        let rv = meta["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no resourceVersion in {line:.200}"));
        seen.push(Seen {
            kind,
            name: meta["name"].as_str().unwrap_or_default().to_string(),
            rv,
        });
    }
}

/// A watch that is not read falls more than `FANOUT` events behind; its
/// stream ends early, and a re-watch from the last resourceVersion it
/// delivered gets exactly the rest: nothing is skipped or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_ends_and_resumes_without_gaps() {
    let fanout = cache_const("FANOUT");
    let window = cache_const("WINDOW");
    // Big ConfigMaps enough to fill every buffer between the unread client
    // and the server's event stream, then small ones, more than FANOUT:
    // the server stops pulling events for the watch during the first part
    // and falls more than FANOUT behind during the second.
    let big = BUFFERED_BYTES / DATA_BYTES;
    let total = big + fanout + OVER_LIMIT;
    assert!(
        total < window,
        "the re-watch should be served by the cache's window ({total} events, window {window})"
    );

    let api = KubeApi::start();
    let client = client_for(&api.kubeconfig()).await;
    // The watch gets a client (a connection) of its own.
    let watch_client = client_for(&api.kubeconfig()).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NS.to_string()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create the namespace");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    // A first watch starts the ConfigMap watch cache (its window begins at
    // the store's head then), so that the watch below, from a later
    // revision, is served by the cache and not by a store watch.
    drop(open_watch(&client, 0).await);
    let start_rv: i64 = cms
        .list(&ListParams::default())
        .await
        .expect("list configmaps")
        .metadata
        .resource_version
        .expect("list resourceVersion")
        .parse()
        .expect("numeric resourceVersion");

    let first = open_watch(&watch_client, start_rv).await;

    // Create `total` ConfigMaps (a few writers at once, the big ones
    // first) without reading the watch.
    let t0 = Instant::now();
    let blob = "x".repeat(DATA_BYTES);
    let created: Vec<(String, i64)> = futures::stream::iter(0..total)
        .map(|i| {
            let name = format!("cm-{i:05}");
            let blob = if i < big { blob.clone() } else { i.to_string() };
            let cms = cms.clone();
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                data: Some([("blob".to_string(), blob)].into()),
                ..ConfigMap::default()
            };
            async move {
                let made = cms
                    .create(&PostParams::default(), &cm)
                    .await
                    .unwrap_or_else(|e| panic!("create {name}: {e}"));
                let rv = made
                    .metadata
                    .resource_version
                    .and_then(|r| r.parse::<i64>().ok())
                    .expect("created resourceVersion");
                Ok::<_, ()>((name, rv))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .expect("creates");
    let create_time = t0.elapsed();
    let created_names: BTreeSet<String> = created.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(created_names.len(), total);
    let last_created_rv = created.iter().map(|(_, rv)| *rv).max().unwrap_or(0);

    // Now read the first watch to its end.
    // (It stops by itself once it has everything: then it never lagged.)
    let (first_seen, first_end) = read_watch(first, "first watch", |seen| {
        seen.last().is_some_and(|s| s.rv >= last_created_rv)
    })
    .await;
    let first_mine = first_seen
        .iter()
        .filter(|s| created_names.contains(&s.name))
        .count();
    println!(
        "{total} ConfigMaps ({big} of {DATA_BYTES} B) created in {create_time:?}; the first watch \
         delivered {} events ({first_mine} of them created here) and ended with {first_end:?}",
        first_seen.len()
    );
    // It must have lagged: ended before it delivered everything.
    assert!(
        first_mine < total,
        "the first watch delivered all {total} events: it never lagged, the test tests nothing"
    );
    assert!(
        first_mine > 0,
        "the first watch delivered nothing before it ended ({first_end:?})"
    );

    // Re-watch from the last resourceVersion the first watch delivered, as
    // a client does, and read until every created ConfigMap has been seen.
    let resume_rv = first_seen.last().map(|s| s.rv).unwrap_or(start_rv);
    let (second_seen, second_end) = if resume_rv < last_created_rv {
        let second = open_watch(&watch_client, resume_rv).await;
        read_watch(second, "re-watch", |seen| {
            seen.last().is_some_and(|s| s.rv >= last_created_rv)
        })
        .await
    } else {
        (Vec::new(), End::Stopped)
    };
    println!(
        "the re-watch from resourceVersion {resume_rv} delivered {} events; {:?} since the creates began",
        second_seen.len(),
        t0.elapsed()
    );

    // Both watches, in order: strictly increasing resourceVersions (so no
    // duplicates), only ADDED events, and exactly the created set.
    let all: Vec<&Seen> = first_seen.iter().chain(&second_seen).collect();
    for w in all.windows(2) {
        assert!(
            w[0].rv < w[1].rv,
            "resourceVersions out of order: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    let mut names = BTreeSet::new();
    for s in &all {
        assert!(names.insert(s.name.clone()), "{} delivered twice", s.name);
        // The namespace's kube-root-ca.crt may come from the controller.
        if s.name != "kube-root-ca.crt" {
            assert_eq!(s.kind, "ADDED", "{s:?}");
            assert!(created_names.contains(&s.name), "unexpected event {s:?}");
        }
    }
    names.remove("kube-root-ca.crt");
    let gap: Vec<&String> = created_names.difference(&names).collect();
    assert!(
        gap.is_empty(),
        "{} created ConfigMaps never delivered (first: {:?})",
        gap.len(),
        gap.first()
    );
    // The first watch ended as Kubernetes' watches may (its body ended
    // cleanly, or an ERROR event with a 410), not by skipping ahead; the
    // re-watch went on until it had everything.
    assert!(
        matches!(first_end, End::Eof | End::Error(410)),
        "the first watch ended with {first_end:?}"
    );
    assert_eq!(
        second_end,
        End::Stopped,
        "the re-watch from {resume_rv} ended after {} events",
        second_seen.len()
    );
    // Each event carries the resourceVersion its create returned.
    let created_rv: std::collections::BTreeMap<&str, i64> =
        created.iter().map(|(n, rv)| (n.as_str(), *rv)).collect();
    for s in &all {
        if let Some(rv) = created_rv.get(s.name.as_str()) {
            assert_eq!(s.rv, *rv, "{}", s.name);
        }
    }
}
