//! The kube-rs client end to end (issue 6): a real `keel store` and
//! `keel apiserver` (started by [`KubeApi`]), driven by `kube::Client`
//! built from the kubeconfig `keel kubeconfig` writes (client certificate,
//! cluster CA), with the typed `k8s-openapi` objects: list (selectors,
//! limit/continue), watch (`Api::watch` and `kube::runtime::watcher`,
//! resuming, 410 after a compaction), the four patch types, an update
//! conflict, and two API servers on one store.

mod kube_rs;

use kube_rs::client_for;
use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, ServiceAccount};
use keel_storage::proto::etcdserverpb::{kv_client::KvClient, CompactionRequest};
use keel_tests::kube::KubeApi;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

/// How long a test waits for a watch event before failing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn config_map(name: &str, label: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: labels(label),
            ..ObjectMeta::default()
        },
        data: labels(data),
        ..ConfigMap::default()
    }
}

fn pod(name: &str, label: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": label.iter().cloned().collect::<BTreeMap<_, _>>()},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]},
    }))
    .expect("pod from JSON")
}

fn rv(meta: &ObjectMeta) -> i64 {
    meta.resource_version
        .as_deref()
        .expect("resourceVersion set")
        .parse()
        .expect("resourceVersion is a number")
}

fn data(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.data.clone().unwrap_or_default()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels(pairs).unwrap_or_default()
}

/// The `kube::Error::Api` status of `r`, which must be an error.
fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The next item of `stream`, within [`EVENT_TIMEOUT`].
async fn next<S, T, E>(stream: &mut S, what: &str) -> T
where
    S: Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Debug,
{
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("{what}: watch error {e:?}"),
        Ok(None) => panic!("{what}: the watch ended"),
        Err(_) => panic!("{what}: nothing within {EVENT_TIMEOUT:?}"),
    }
}

/// The next watch event of `stream` that is not a bookmark.
async fn next_event<S, K>(stream: &mut S, what: &str) -> WatchEvent<K>
where
    S: Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    loop {
        match next(stream, what).await {
            WatchEvent::Bookmark(_) => continue,
            ev => return ev,
        }
    }
}

/// The `(type, name, data)` of a ConfigMap watch event.
fn describe(ev: &WatchEvent<ConfigMap>) -> (&'static str, String, BTreeMap<String, String>, i64) {
    let (kind, cm) = match ev {
        WatchEvent::Added(cm) => ("ADDED", cm),
        WatchEvent::Modified(cm) => ("MODIFIED", cm),
        WatchEvent::Deleted(cm) => ("DELETED", cm),
        other => panic!("unexpected watch event {other:?}"),
    };
    (kind, cm.name_any(), data(cm), rv(&cm.metadata))
}

/// Waits until the `default` service account exists in `default` (the
/// ServiceAccount admission plugin refuses pods before that).
async fn wait_default_service_account(client: &Client) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    for _ in 0..100 {
        if sas
            .get_opt("default")
            .await
            .expect("get serviceaccount")
            .is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no default service account in namespace default after 10 s");
}

/// Lists, following `continue`, `limit` items per page; returns the pages'
/// names.
async fn list_pages<K>(api: &Api<K>, selector: &str, limit: u32) -> (Vec<Vec<String>>, Vec<i64>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut pages = Vec::new();
    let mut rvs = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().labels(selector).limit(limit);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let list = api.list(&lp).await.expect("list a page");
        rvs.push(
            list.metadata
                .resource_version
                .as_deref()
                .expect("list resourceVersion")
                .parse::<i64>()
                .expect("list resourceVersion is a number"),
        );
        pages.push(list.items.iter().map(|o| o.name_any()).collect());
        assert!(pages.len() <= 20, "pagination does not end: {pages:?}");
        match list.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return (pages, rvs),
        }
    }
}

/// Typed create and list: label selectors (equality and set-based) on
/// ConfigMaps and Pods, limit/continue pagination that yields every item
/// exactly once, from one consistent snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_selectors_and_pagination() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let client = client_for(&api.kubeconfig()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let mut created_rvs = Vec::new();
    for i in 0..7 {
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        let cm = config_map(
            &format!("cm-{i}"),
            &[("suite", "list"), ("parity", parity)],
            &[("i", &i.to_string())],
        );
        let created = cms
            .create(&PostParams::default(), &cm)
            .await
            .expect("create configmap");
        assert_eq!(created.name_any(), format!("cm-{i}"));
        assert_eq!(created.namespace().as_deref(), Some("default"));
        assert_eq!(data(&created), map(&[("i", &i.to_string())]));
        assert_eq!(created.uid().map(|u| u.len()), Some(36));
        created_rvs.push(rv(&created.metadata));
    }
    assert!(
        created_rvs.windows(2).all(|w| w[0] < w[1]),
        "resourceVersions grow: {created_rvs:?}"
    );
    // One more that no selector below matches.
    cms.create(
        &PostParams::default(),
        &config_map("other", &[("suite", "other")], &[]),
    )
    .await
    .expect("create configmap other");

    let even = cms
        .list(&ListParams::default().labels("suite=list,parity=even"))
        .await
        .expect("list even");
    let names: Vec<String> = even.iter().map(|c| c.name_any()).collect();
    assert_eq!(names, ["cm-0", "cm-2", "cm-4", "cm-6"]);
    let list_rv: i64 = even
        .metadata
        .resource_version
        .as_deref()
        .expect("list resourceVersion")
        .parse()
        .expect("numeric list resourceVersion");
    assert!(list_rv >= *created_rvs.last().expect("rvs"), "{list_rv}");
    for cm in &even {
        let i: i64 = cm.name_any()[3..].parse().expect("index");
        assert_eq!(rv(&cm.metadata), created_rvs[i as usize]);
        assert_eq!(data(cm), map(&[("i", &i.to_string())]));
    }

    let odd = cms
        .list(&ListParams::default().labels("parity in (odd),suite!=other"))
        .await
        .expect("list odd (set-based selector)");
    let names: Vec<String> = odd.iter().map(|c| c.name_any()).collect();
    assert_eq!(names, ["cm-1", "cm-3", "cm-5"]);
    let none = cms
        .list(&ListParams::default().labels("suite=list,parity notin (even,odd)"))
        .await
        .expect("list none");
    assert!(none.items.is_empty(), "{:?}", none.items);
    let named = cms
        .list(&ListParams::default().fields("metadata.name=cm-3"))
        .await
        .expect("list by field selector");
    assert_eq!(
        named.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        ["cm-3"]
    );

    // limit/continue: pages of 3, 3, 1 and every item once, in key order.
    let (pages, rvs) = list_pages(&cms, "suite=list", 3).await;
    assert_eq!(
        pages,
        [
            vec!["cm-0", "cm-1", "cm-2"],
            vec!["cm-3", "cm-4", "cm-5"],
            vec!["cm-6"]
        ]
    );
    assert!(rvs.iter().all(|r| *r == rvs[0]), "one snapshot: {rvs:?}");

    // A page's continue token lists the snapshot of the first page: an
    // object created (or deleted) in between does not show up (or stays).
    let first = cms
        .list(&ListParams::default().labels("suite=list").limit(4))
        .await
        .expect("first page");
    let token = first.metadata.continue_.clone().expect("continue token");
    // With a selector the count would be a guess: Kubernetes leaves it out.
    assert_eq!(first.metadata.remaining_item_count, None);
    cms.create(
        &PostParams::default(),
        &config_map("cm-9", &[("suite", "list")], &[]),
    )
    .await
    .expect("create cm-9");
    cms.delete("cm-6", &DeleteParams::default())
        .await
        .expect("delete cm-6");
    let rest = cms
        .list(
            &ListParams::default()
                .labels("suite=list")
                .limit(4)
                .continue_token(&token),
        )
        .await
        .expect("second page");
    let names: Vec<String> = rest.iter().map(|c| c.name_any()).collect();
    assert_eq!(names, ["cm-4", "cm-5", "cm-6"]);
    assert_eq!(
        rest.metadata.resource_version,
        first.metadata.resource_version
    );
    let now: Vec<String> = cms
        .list(&ListParams::default().labels("suite=list"))
        .await
        .expect("list now")
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(
        now,
        ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4", "cm-5", "cm-9"]
    );

    // Without a selector every page but the last says how many items
    // follow it (the first page is served by the watch cache, the next
    // ones by the store), and that many follow.
    let mut counts = Vec::new();
    let mut sizes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(2);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = cms.list(&lp).await.expect("a page, no selector");
        sizes.push(page.items.len() as i64);
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => {
                counts.push(
                    page.metadata
                        .remaining_item_count
                        .expect("remainingItemCount without a selector"),
                );
                token = Some(t);
            }
            _ => {
                assert_eq!(page.metadata.remaining_item_count, None);
                break;
            }
        }
    }
    let after: Vec<i64> = (1..sizes.len()).map(|k| sizes[k..].iter().sum()).collect();
    assert_eq!(counts, after, "page sizes {sizes:?}");
    assert!(sizes.iter().sum::<i64>() >= 8, "{sizes:?}");

    // Pods, across namespaces with Api::all.
    wait_default_service_account(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, app) in [("web-1", "web"), ("web-2", "web"), ("db-1", "db")] {
        let p = pods
            .create(&PostParams::default(), &pod(name, &[("app", app)]))
            .await
            .expect("create pod");
        assert_eq!(p.name_any(), name);
        let spec = p.spec.expect("pod spec");
        assert_eq!(spec.containers[0].image.as_deref(), Some("busybox:1.36"));
        // Defaulted by the server, as Kubernetes does.
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
    }
    let all: Api<Pod> = Api::all(client.clone());
    let web = all
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list web pods");
    let names: Vec<(String, Option<String>)> =
        web.iter().map(|p| (p.name_any(), p.namespace())).collect();
    assert_eq!(
        names,
        [
            ("web-1".to_string(), Some("default".to_string())),
            ("web-2".to_string(), Some("default".to_string()))
        ]
    );
    let (pages, _) = list_pages(&all, "app", 1).await;
    assert_eq!(pages, [vec!["db-1"], vec!["web-1"], vec!["web-2"]]);
}

/// `Api::watch` from a resourceVersion sees ADDED, MODIFIED and DELETED in
/// order with the objects' contents; a watch resumed from a later
/// resourceVersion sees only what came after it; the runtime `watcher`
/// lists then watches; a compacted resourceVersion gives a 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_in_order() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let client = client_for(&api.kubeconfig()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &config_map("before", &[("w", "yes")], &[]),
    )
    .await
    .expect("create before");
    let start = cms
        .list(&ListParams::default().labels("w=yes"))
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("list resourceVersion");

    let wp = WatchParams::default().labels("w=yes");
    let mut stream = cms.watch(&wp, &start).await.expect("watch").boxed();

    // The runtime watcher (list, then watch from the list's revision).
    let mut runtime = watcher(cms.clone(), watcher::Config::default().labels("w=yes")).boxed();
    let mut init = Vec::new();
    loop {
        match next(&mut runtime, "runtime watcher init").await {
            watcher::Event::Init => {}
            watcher::Event::InitApply(cm) => init.push(cm.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected event before InitDone: {other:?}"),
        }
    }
    assert_eq!(init, ["before"]);
    // And one with a streaming list (`sendInitialEvents=true`: the current
    // state as ADDED events up to an `initial-events-end` bookmark).
    let mut streaming = watcher(
        cms.clone(),
        watcher::Config::default().labels("w=yes").streaming_lists(),
    )
    .boxed();
    let mut init = Vec::new();
    loop {
        match next(&mut streaming, "streaming watcher init").await {
            watcher::Event::Init => {}
            watcher::Event::InitApply(cm) => init.push(cm.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected event before InitDone: {other:?}"),
        }
    }
    assert_eq!(init, ["before"]);

    let created = cms
        .create(
            &PostParams::default(),
            &config_map("watched", &[("w", "yes")], &[("a", "1")]),
        )
        .await
        .expect("create watched");
    let patched = cms
        .patch(
            "watched",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "2", "b": "x"}})),
        )
        .await
        .expect("patch watched");
    assert!(rv(&patched.metadata) > rv(&created.metadata));
    // Not watched (no label): no event.
    cms.create(&PostParams::default(), &config_map("unwatched", &[], &[]))
        .await
        .expect("create unwatched");
    cms.delete("watched", &DeleteParams::default())
        .await
        .expect("delete watched");

    let added = describe(&next_event(&mut stream, "ADDED").await);
    let modified = describe(&next_event(&mut stream, "MODIFIED").await);
    let deleted = describe(&next_event(&mut stream, "DELETED").await);
    assert_eq!(
        (added.0, added.1.as_str(), &added.2, added.3),
        (
            "ADDED",
            "watched",
            &map(&[("a", "1")]),
            rv(&created.metadata)
        )
    );
    assert_eq!(
        (modified.0, modified.1.as_str(), &modified.2, modified.3),
        (
            "MODIFIED",
            "watched",
            &map(&[("a", "2"), ("b", "x")]),
            rv(&patched.metadata)
        )
    );
    assert_eq!(
        (deleted.0, deleted.1.as_str(), &deleted.2),
        ("DELETED", "watched", &map(&[("a", "2"), ("b", "x")]))
    );
    assert!(deleted.3 > modified.3, "{deleted:?} after {modified:?}");

    // The runtime watchers: the same three, as Apply, Apply, Delete.
    for (what, stream) in [
        ("runtime watcher", &mut runtime),
        ("streaming watcher", &mut streaming),
    ] {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match next(stream, what).await {
                watcher::Event::Apply(cm) => seen.push(("apply", cm.name_any(), data(&cm))),
                watcher::Event::Delete(cm) => seen.push(("delete", cm.name_any(), data(&cm))),
                other => panic!("{what}: unexpected event {other:?}"),
            }
        }
        let a2 = map(&[("a", "2"), ("b", "x")]);
        assert_eq!(
            seen,
            [
                ("apply", "watched".to_string(), map(&[("a", "1")])),
                ("apply", "watched".to_string(), a2.clone()),
                ("delete", "watched".to_string(), a2),
            ],
            "{what}"
        );
    }

    // Resumed from the create's revision: only the update and the delete.
    let mut resumed = cms
        .watch(&wp, &rv(&created.metadata).to_string())
        .await
        .expect("watch from the create's revision")
        .boxed();
    let kinds = [
        describe(&next_event(&mut resumed, "resumed MODIFIED").await),
        describe(&next_event(&mut resumed, "resumed DELETED").await),
    ];
    assert_eq!(
        kinds.iter().map(|k| (k.0, k.3)).collect::<Vec<_>>(),
        [("MODIFIED", modified.3), ("DELETED", deleted.3)]
    );

    // Compact the store at its head: a watch from a compacted revision
    // older than the watch cache's window ends with a 410 Expired. Events
    // (which no loop inside the server watches) get their watch cache only
    // with this watch, so its window starts at the head. (A ConfigMap watch
    // from revision 1 may be served by a cache whose window began at 1, as
    // Kubernetes' watch cache serves what its window holds.)
    let head = rv(&cms
        .create(&PostParams::default(), &config_map("last", &[], &[]))
        .await
        .expect("create last")
        .metadata);
    let channel = tonic::transport::Channel::from_shared(api.store().client_url())
        .expect("store URL")
        .connect()
        .await
        .expect("connect to the store's gRPC API");
    KvClient::new(channel)
        .compact(CompactionRequest {
            revision: head,
            physical: true,
        })
        .await
        .expect("compact the store");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let mut old = events
        .watch(&WatchParams::default(), "1")
        .await
        .expect("watch events from revision 1")
        .boxed();
    match next_event(&mut old, "410").await {
        WatchEvent::Error(status) => {
            assert_eq!(
                (status.code, status.reason.as_str()),
                (410, "Expired"),
                "{status:?}"
            );
        }
        other => panic!("expected a 410 ERROR event after compacting at {head}, got {other:?}"),
    }
}

/// Strategic merge patch (containers merged by name, `$patch: delete`),
/// JSON merge patch (null removes a key; lists replaced whole), JSON patch
/// (ops, a failing `test`), and server-side apply (managers, conflicts,
/// force, removal of fields no longer applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_types() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let client = client_for(&api.kubeconfig()).await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                    {"name": "b", "image": "b:1"},
                ]},
            },
        },
    }))
    .expect("deployment from JSON");
    let created = deploys
        .create(&PostParams::default(), &deploy)
        .await
        .expect("create deployment");
    let containers = |d: &Deployment| -> Vec<(String, Option<String>, Vec<String>)> {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| {
                        let env = c
                            .env
                            .iter()
                            .flatten()
                            .map(|e| format!("{}={}", e.name, e.value.clone().unwrap_or_default()))
                            .collect();
                        (c.name.clone(), c.image.clone(), env)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let c = |name: &str, image: &str, env: &[&str]| {
        (
            name.to_string(),
            Some(image.to_string()),
            env.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        containers(&created),
        [c("a", "a:1", &["X=1"]), c("b", "b:1", &[])]
    );
    let gen0 = created.metadata.generation.expect("generation");

    // Strategic: containers merge by name (and env by name inside them);
    // a new name is appended.
    let pp = PatchParams::default();
    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "b", "image": "b:2"},
                {"name": "a", "env": [{"name": "Y", "value": "2"}]},
                {"name": "c", "image": "c:1"},
            ]}}}})),
        )
        .await
        .expect("strategic patch");
    assert_eq!(
        containers(&d),
        [
            c("a", "a:1", &["X=1", "Y=2"]),
            c("b", "b:2", &[]),
            c("c", "c:1", &[])
        ]
    );
    assert!(d.metadata.generation.expect("generation") > gen0);
    // `$patch: delete` removes one container by name.
    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "a", "$patch": "delete"},
            ]}}}})),
        )
        .await
        .expect("strategic delete patch");
    assert_eq!(containers(&d), [c("b", "b:2", &[]), c("c", "c:1", &[])]);
    // JSON merge patch: the list is replaced whole; null removes a key.
    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({
                "metadata": {"labels": {"team": "x"}},
                "spec": {"replicas": 3, "template": {"spec": {"containers": [
                    {"name": "only", "image": "o:1"},
                ]}}},
            })),
        )
        .await
        .expect("merge patch on deployment");
    assert_eq!(containers(&d), [c("only", "o:1", &[])]);
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(d.metadata.labels, labels(&[("team", "x")]));
    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"team": null}}})),
        )
        .await
        .expect("merge patch removing a label");
    assert!(d.labels().is_empty(), "{:?}", d.labels());

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &config_map("p", &[], &[("a", "1"), ("b", "2"), ("c", "3")]),
    )
    .await
    .expect("create configmap p");
    let cm = cms
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"data": {"a": null, "c": "33", "d": "4"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(data(&cm), map(&[("b", "2"), ("c", "33"), ("d", "4")]));

    // JSON patch.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/b", "value": "22"},
        {"op": "remove", "path": "/data/c"},
        {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
        {"op": "copy", "from": "/data/d", "path": "/data/e"},
    ]))
    .expect("JSON patch ops");
    let cm = cms
        .patch("p", &pp, &Patch::Json::<()>(ops))
        .await
        .expect("JSON patch");
    assert_eq!(data(&cm), map(&[("b", "22"), ("d", "4"), ("e", "4")]));
    assert_eq!(cm.metadata.labels, labels(&[("k", "v")]));
    let failing: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/b", "value": "nope"},
    ]))
    .expect("JSON patch ops");
    let status = api_error(cms.patch("p", &pp, &Patch::Json::<()>(failing)).await);
    assert_eq!(status.code, 422, "{status:?}");
    let cm = cms.get("p").await.expect("get p");
    assert_eq!(data(&cm).get("b").map(String::as_str), Some("22"));

    // Server-side apply: creates, records the manager, conflicts with
    // another manager unless forced, and drops fields no longer applied.
    let applied = cms
        .patch(
            "ssa",
            &PatchParams::apply("mgr-a"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ssa"},
                "data": {"x": "1", "y": "1"},
            })),
        )
        .await
        .expect("apply (create)");
    assert_eq!(data(&applied), map(&[("x", "1"), ("y", "1")]));
    let managers = |cm: &ConfigMap| -> Vec<(String, String)> {
        cm.managed_fields()
            .iter()
            .map(|m| {
                (
                    m.manager.clone().unwrap_or_default(),
                    m.operation.clone().unwrap_or_default(),
                )
            })
            .collect()
    };
    assert_eq!(
        managers(&applied),
        [("mgr-a".to_string(), "Apply".to_string())]
    );
    let status = api_error(
        cms.patch(
            "ssa",
            &PatchParams::apply("mgr-b"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ssa"},
                "data": {"x": "2"},
            })),
        )
        .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "Conflict"),
        "{status:?}"
    );
    assert!(status.message.contains("mgr-a"), "{status:?}");
    let forced = cms
        .patch(
            "ssa",
            &PatchParams::apply("mgr-b").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ssa"},
                "data": {"x": "2"},
            })),
        )
        .await
        .expect("forced apply");
    assert_eq!(data(&forced), map(&[("x", "2"), ("y", "1")]));
    let mut ms = managers(&forced);
    ms.sort();
    assert_eq!(
        ms,
        [
            ("mgr-a".to_string(), "Apply".to_string()),
            ("mgr-b".to_string(), "Apply".to_string())
        ]
    );
    // mgr-a stops applying y (it now owns only y; x went to mgr-b): y goes.
    let dropped = cms
        .patch(
            "ssa",
            &PatchParams::apply("mgr-a"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ssa"},
                "data": {"z": "3"},
            })),
        )
        .await
        .expect("apply without y");
    assert_eq!(data(&dropped), map(&[("x", "2"), ("z", "3")]));

    // Apply on a Deployment: containers are a list keyed by name, so two
    // managers' containers sit side by side, and one manager dropping its
    // container removes only that one.
    let apply_deploy = |containers: serde_json::Value| {
        Patch::Apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "ssa-web"},
            "spec": {
                "selector": {"matchLabels": {"app": "ssa-web"}},
                "template": {
                    "metadata": {"labels": {"app": "ssa-web"}},
                    "spec": {"containers": containers},
                },
            },
        }))
    };
    deploys
        .patch(
            "ssa-web",
            &PatchParams::apply("mgr-x"),
            &apply_deploy(json!([{"name": "a", "image": "a:1"}])),
        )
        .await
        .expect("apply deployment (mgr-x)");
    let d = deploys
        .patch(
            "ssa-web",
            &PatchParams::apply("mgr-y"),
            &apply_deploy(json!([{"name": "b", "image": "b:1"}])),
        )
        .await
        .expect("apply deployment (mgr-y)");
    assert_eq!(containers(&d), [c("a", "a:1", &[]), c("b", "b:1", &[])]);
    let d = deploys
        .patch(
            "ssa-web",
            &PatchParams::apply("mgr-x"),
            &apply_deploy(json!([{"name": "a", "image": "a:2"}])),
        )
        .await
        .expect("apply deployment (mgr-x again)");
    assert_eq!(containers(&d), [c("a", "a:2", &[]), c("b", "b:1", &[])]);
    let status = api_error(
        deploys
            .patch(
                "ssa-web",
                &PatchParams::apply("mgr-y"),
                &apply_deploy(json!([{"name": "a", "image": "a:3"}])),
            )
            .await,
    );
    assert_eq!(status.code, 409, "{status:?}");
    let d = deploys
        .patch(
            "ssa-web",
            &PatchParams::apply("mgr-y"),
            &apply_deploy(json!([])),
        )
        .await
        .expect("apply deployment without b (mgr-y)");
    assert_eq!(containers(&d), [c("a", "a:2", &[])]);
}

/// An update with a stale resourceVersion is a 409 Conflict (replace and
/// a patch that carries the resourceVersion); the fresh one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_conflict() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let client = client_for(&api.kubeconfig()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &config_map("cas", &[], &[("v", "0")]),
    )
    .await
    .expect("create cas");
    let stale = cms.get("cas").await.expect("get cas");
    let rv0 = rv(&stale.metadata);

    let mut first = stale.clone();
    first.data = labels(&[("v", "1")]);
    let updated = cms
        .replace("cas", &PostParams::default(), &first)
        .await
        .expect("first replace");
    let rv1 = rv(&updated.metadata);
    assert!(rv1 > rv0, "{rv1} > {rv0}");
    assert_eq!(data(&updated), map(&[("v", "1")]));
    assert_eq!(updated.uid(), stale.uid());

    let mut second = stale.clone();
    second.data = labels(&[("v", "2")]);
    let status = api_error(cms.replace("cas", &PostParams::default(), &second).await);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "Conflict"),
        "{status:?}"
    );
    assert!(
        status
            .message
            .contains("the object has been modified; please apply your changes to the latest version and try again"),
        "{status:?}"
    );
    let details = status.details.as_ref().expect("status details");
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("cas", "configmaps")
    );

    // A merge patch carrying the stale resourceVersion is refused too.
    let status = api_error(
        cms.patch(
            "cas",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"resourceVersion": rv0.to_string()}, "data": {"v": "3"}}),
            ),
        )
        .await,
    );
    assert_eq!(status.code, 409, "{status:?}");

    // Nothing of the refused writes landed.
    let now = cms.get("cas").await.expect("get cas");
    assert_eq!((data(&now), rv(&now.metadata)), (map(&[("v", "1")]), rv1));

    // Retried on the fresh object, it goes through.
    let mut retry = now.clone();
    retry.data = labels(&[("v", "2")]);
    let done = cms
        .replace("cas", &PostParams::default(), &retry)
        .await
        .expect("replace on the fresh object");
    assert_eq!(data(&done), map(&[("v", "2")]));
    assert!(rv(&done.metadata) > rv1);

    // A replace of something that is not there is a 404, a create of
    // something that is, a 409 AlreadyExists.
    let mut ghost = now.clone();
    ghost.metadata.name = Some("ghost".into());
    let status = api_error(cms.replace("ghost", &PostParams::default(), &ghost).await);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (404, "NotFound"),
        "{status:?}"
    );
    let status = api_error(
        cms.create(&PostParams::default(), &config_map("cas", &[], &[]))
            .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists"),
        "{status:?}"
    );
}

/// Two API servers on one store: a watch through either sees what is
/// written through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apiservers_one_store() {
    let Some(mut api) = KubeApi::start_or_skip() else {
        return;
    };
    let second = api.add_apiserver().expect("second apiserver");
    let one = client_for(&api.kubeconfig()).await;
    let two = client_for(&second).await;
    let cms_one: Api<ConfigMap> = Api::namespaced(one, "default");
    let cms_two: Api<ConfigMap> = Api::namespaced(two, "default");

    let rv_one = cms_one
        .list(&ListParams::default())
        .await
        .expect("list through one")
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let wp = WatchParams::default().labels("shared=yes");
    let mut watch_one = cms_one
        .watch(&wp, &rv_one)
        .await
        .expect("watch one")
        .boxed();
    let mut watch_two = watcher(
        cms_two.clone(),
        watcher::Config::default().labels("shared=yes"),
    )
    .boxed();
    loop {
        if let watcher::Event::InitDone = next(&mut watch_two, "watcher two init").await {
            break;
        }
    }

    let created = cms_two
        .create(
            &PostParams::default(),
            &config_map("shared", &[("shared", "yes")], &[("from", "two")]),
        )
        .await
        .expect("create through two");
    let ev = describe(&next_event(&mut watch_one, "ADDED through one").await);
    assert_eq!(
        (ev.0, ev.1.as_str(), &ev.2, ev.3),
        (
            "ADDED",
            "shared",
            &map(&[("from", "two")]),
            rv(&created.metadata)
        )
    );
    match next(&mut watch_two, "watcher two sees the create").await {
        watcher::Event::Apply(cm) => assert_eq!(data(&cm), map(&[("from", "two")])),
        other => panic!("unexpected {other:?}"),
    }

    // Written through one, read and watched through two.
    let patched = cms_one
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"from": "one"}})),
        )
        .await
        .expect("patch through one");
    match next(&mut watch_two, "watcher two sees the patch").await {
        watcher::Event::Apply(cm) => {
            assert_eq!(data(&cm), map(&[("from", "one")]));
            assert_eq!(rv(&cm.metadata), rv(&patched.metadata));
        }
        other => panic!("unexpected {other:?}"),
    }
    let ev = describe(&next_event(&mut watch_one, "MODIFIED through one").await);
    assert_eq!((ev.0, ev.3), ("MODIFIED", rv(&patched.metadata)));
    let got = cms_two.get("shared").await.expect("get through two");
    assert_eq!(rv(&got.metadata), rv(&patched.metadata));

    cms_two
        .delete("shared", &DeleteParams::default())
        .await
        .expect("delete through two");
    let ev = describe(&next_event(&mut watch_one, "DELETED through one").await);
    assert_eq!((ev.0, ev.1.as_str()), ("DELETED", "shared"));
    match next(&mut watch_two, "watcher two sees the delete").await {
        watcher::Event::Delete(cm) => assert_eq!(cm.name_any(), "shared"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(cms_one
        .get_opt("shared")
        .await
        .expect("get through one")
        .is_none());
}
