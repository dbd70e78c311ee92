//! The watch hub over the real MVCC store, and the Watch gRPC service
//! (driven in-process, and once over a real gRPC connection).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use keel_storage::mvcc::{KeyRange, KvStore};
use keel_storage::proto::etcdserverpb::watch_client::WatchClient;
use keel_storage::proto::etcdserverpb::{
    watch_request::RequestUnion, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse,
};
use keel_storage::proto::mvccpb::event::EventType;
use keel_storage::server::header::Header;
use keel_storage::server::watch::{WatchResponseStream, WatchService};
use keel_storage::sync::RwLock;
use keel_storage::watch::{Delivery, Outbox, SyncHandle, WatchHub, WatchHubConfig, WatchSpec};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A store, its hub (with its sync task running) and the writes that feed it.
struct Store {
    kv: Arc<RwLock<KvStore>>,
    hub: Arc<WatchHub>,
    _sync: SyncHandle,
}

impl Store {
    fn new() -> Self {
        Self::with(WatchHubConfig {
            sync_interval: Duration::from_millis(5),
            ..WatchHubConfig::default()
        })
    }

    fn with(cfg: WatchHubConfig) -> Self {
        let kv = Arc::new(RwLock::new(KvStore::new()));
        let hub = Arc::new(WatchHub::new(Box::new(kv.clone()), cfg));
        let sync = hub.start();
        Store {
            kv,
            hub,
            _sync: sync,
        }
    }

    fn put(&self, key: &str, value: &str) -> i64 {
        let res = {
            let mut kv = self.kv.write().unwrap();
            let mut txn = kv.write();
            txn.put(
                Bytes::copy_from_slice(key.as_bytes()),
                Bytes::copy_from_slice(value.as_bytes()),
                0,
            );
            txn.end()
        };
        self.hub.notify(res.rev, &res.events);
        res.rev
    }

    fn delete(&self, key: &str) -> i64 {
        let res = {
            let mut kv = self.kv.write().unwrap();
            let mut txn = kv.write();
            txn.delete_range(&KeyRange::new(
                &Bytes::copy_from_slice(key.as_bytes()),
                &Bytes::new(),
            ));
            txn.end()
        };
        self.hub.notify(res.rev, &res.events);
        res.rev
    }

    fn compact(&self, rev: i64) {
        self.kv.write().unwrap().compact(rev).unwrap();
    }

    fn service(&self, max_request_bytes: usize) -> WatchService {
        WatchService::new(self.hub.clone(), Header::new(11, 22, 3), max_request_bytes)
    }
}

fn create(key: &str, end: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        range_end: Bytes::copy_from_slice(end.as_bytes()),
        start_revision: start,
        ..Default::default()
    }
}

fn wrap(u: RequestUnion) -> WatchRequest {
    WatchRequest {
        request_union: Some(u),
    }
}

/// One in-process client stream.
struct Client {
    tx: mpsc::Sender<Result<WatchRequest, tonic::Status>>,
    rx: WatchResponseStream,
}

impl Client {
    fn open(svc: &WatchService) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let rx = svc.serve(ReceiverStream::new(rx));
        Client { tx, rx }
    }

    async fn send(&self, u: RequestUnion) {
        self.tx.send(Ok(wrap(u))).await.unwrap();
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.next())
            .await
            .expect("a response within 5s")
            .expect("stream open")
            .expect("not an error")
    }

    async fn nothing_for(&mut self, d: Duration) {
        if let Ok(r) = tokio::time::timeout(d, self.rx.next()).await {
            panic!("unexpected response {r:?}");
        }
    }
}

fn rev_of(r: &WatchResponse) -> i64 {
    r.header.as_ref().map_or(0, |h| h.revision)
}

fn event_revs(r: &WatchResponse) -> Vec<i64> {
    r.events
        .iter()
        .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
        .collect()
}

#[test]
fn delete_event_at_the_compaction_revision_is_delivered() {
    // put a@2, put b@3, delete a@4; compact at 4; a watch from 4 must see
    // the DELETE (etcd once dropped it: the tombstone at the compaction
    // revision was compacted away).
    let s = Store::new();
    s.put("a", "1");
    s.put("b", "1");
    let del = s.delete("a");
    s.compact(del);
    let o = Arc::new(Outbox::new(16));
    let st = s.hub.open_stream(o.clone());
    let id = s
        .hub
        .watch(st, WatchSpec::from_request(&create("a", "\0", del)));
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(o.pop_wait(Duration::from_secs(5)).expect("a delivery"));
    }
    let Delivery::Events {
        watch_id, events, ..
    } = &got[1]
    else {
        panic!("expected events, got {:?}", got[1]);
    };
    assert_eq!(*watch_id, id);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].r#type, EventType::Delete as i32);
    let kv = events[0].kv.clone().unwrap();
    assert_eq!((kv.key.as_ref(), kv.mod_revision), (&b"a"[..], del));
    // One below the compaction revision: cancelled with it.
    let id2 = s
        .hub
        .watch(st, WatchSpec::from_request(&create("a", "", del - 1)));
    let mut last = None;
    while !matches!(last, Some(Delivery::Canceled { .. })) {
        last = o.pop_wait(Duration::from_secs(5));
        assert!(last.is_some(), "no cancel");
    }
    assert_eq!(
        last,
        Some(Delivery::Canceled {
            watch_id: id2,
            revision: del,
            compact_revision: del
        })
    );
}

#[test]
fn watch_history_prev_kv_from_the_real_store() {
    let s = Store::new();
    s.put("a", "1");
    s.put("a", "2");
    s.delete("a");
    let o = Arc::new(Outbox::new(16));
    let st = s.hub.open_stream(o.clone());
    let mut c = create("a", "", 2);
    c.prev_kv = true;
    s.hub.watch(st, WatchSpec::from_request(&c));
    let mut events = Vec::new();
    while events.len() < 3 {
        match o.pop_wait(Duration::from_secs(5)).expect("a delivery") {
            Delivery::Events { events: e, .. } => events.extend(e),
            Delivery::Created { .. } => {}
            d => panic!("unexpected {d:?}"),
        }
    }
    let prev: Vec<Option<Bytes>> = events
        .iter()
        .map(|e| e.prev_kv.as_ref().map(|p| p.value.clone()))
        .collect();
    assert_eq!(
        prev,
        vec![None, Some(Bytes::from("1")), Some(Bytes::from("2"))]
    );
}

#[tokio::test]
async fn watch_service_create_events_cancel() {
    let s = Store::new();
    let svc = s.service(1 << 20);
    let mut c = Client::open(&svc);
    c.send(RequestUnion::CreateRequest(create("k", "", 0)))
        .await;
    let created = c.next().await;
    assert!(created.created && !created.canceled);
    assert_eq!(created.watch_id, 0);
    let h = created.header.unwrap();
    assert_eq!(
        (h.cluster_id, h.member_id, h.raft_term, h.revision),
        (11, 22, 3, 1)
    );
    let r2 = s.put("k", "v");
    s.put("other", "v");
    let r4 = s.put("k", "w");
    let e1 = c.next().await;
    let e2 = c.next().await;
    assert_eq!((event_revs(&e1), rev_of(&e1)), (vec![r2], r2));
    assert_eq!((event_revs(&e2), rev_of(&e2)), (vec![r4], r4));
    assert!(e1.events[0].prev_kv.is_none());
    c.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 0,
    }))
    .await;
    let canceled = c.next().await;
    assert!(canceled.canceled);
    assert_eq!((canceled.watch_id, canceled.compact_revision), (0, 0));
    s.put("k", "x");
    c.nothing_for(Duration::from_millis(50)).await;
    // Duplicate IDs are refused, as etcd does.
    let mut dup = create("k", "", 0);
    dup.watch_id = 7;
    c.send(RequestUnion::CreateRequest(dup.clone())).await;
    assert_eq!(c.next().await.watch_id, 7);
    c.send(RequestUnion::CreateRequest(dup)).await;
    let r = c.next().await;
    assert!(r.created && r.canceled);
    assert_eq!(r.watch_id, -1);
    assert_eq!(
        r.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
}

#[tokio::test]
async fn watch_service_catch_up_compacted_and_progress() {
    let s = Store::new();
    for i in 0..10 {
        s.put("k", &i.to_string());
    }
    s.compact(5);
    let svc = s.service(1 << 20);
    let mut c = Client::open(&svc);
    c.send(RequestUnion::CreateRequest(create("k", "", 3)))
        .await;
    assert!(c.next().await.created);
    let r = c.next().await;
    assert!(r.canceled);
    assert_eq!(r.compact_revision, 5);
    c.send(RequestUnion::CreateRequest(create("k", "", 6)))
        .await;
    assert!(c.next().await.created);
    let mut got = Vec::new();
    while got.len() < 6 {
        got.extend(event_revs(&c.next().await));
    }
    assert_eq!(got, (6..=11).collect::<Vec<_>>());
    c.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let p = c.next().await;
    assert_eq!((p.watch_id, rev_of(&p), p.events.len()), (-1, 11, 0));
    assert!(!p.created && !p.canceled);
}

#[tokio::test]
async fn watch_service_fragments_when_asked() {
    let s = Store::new();
    let big = "x".repeat(600 * 1024);
    s.put("a", &big);
    s.put("b", &big);
    s.put("c", &big);
    // max_request_bytes 0: the threshold is etcd's 512 KiB gRPC overhead.
    let svc = s.service(0);
    let mut c = Client::open(&svc);
    let mut f = create("a", "z", 2);
    f.fragment = true;
    c.send(RequestUnion::CreateRequest(f)).await;
    assert!(c.next().await.created);
    let mut frags = Vec::new();
    loop {
        let r = c.next().await;
        let more = r.fragment;
        frags.push(r);
        if !more {
            break;
        }
    }
    assert_eq!(frags.len(), 3);
    let revs: Vec<i64> = frags.iter().flat_map(event_revs).collect();
    assert_eq!(revs, vec![2, 3, 4]);
    // Without the flag: one response with every event.
    c.send(RequestUnion::CreateRequest(create("a", "z", 2)))
        .await;
    assert!(c.next().await.created);
    let r = c.next().await;
    assert_eq!((r.fragment, event_revs(&r)), (false, vec![2, 3, 4]));
}

#[tokio::test]
async fn watch_service_progress_notify_interval() {
    let s = Store::with(WatchHubConfig {
        sync_interval: Duration::from_millis(5),
        progress_interval: Duration::from_millis(30),
        ..WatchHubConfig::default()
    });
    let svc = s.service(1 << 20);
    let mut c = Client::open(&svc);
    let mut r = create("k", "", 0);
    r.progress_notify = true;
    c.send(RequestUnion::CreateRequest(r)).await;
    assert!(c.next().await.created);
    s.put("other", "v");
    let p = c.next().await;
    assert_eq!((p.watch_id, rev_of(&p), p.events.len()), (0, 2, 0));
}

#[tokio::test]
async fn watch_service_dropping_the_stream_removes_watchers() {
    let s = Store::new();
    let svc = s.service(1 << 20);
    let mut c = Client::open(&svc);
    c.send(RequestUnion::CreateRequest(create("k", "", 0)))
        .await;
    c.send(RequestUnion::CreateRequest(create("k", "", 1)))
        .await;
    c.next().await;
    c.next().await;
    assert_eq!(s.hub.stats().streams, 1);
    drop(c);
    let st = s.hub.stats();
    assert_eq!((st.streams, st.synced, st.unsynced), (0, 0, 0));
}

#[tokio::test]
async fn watch_service_slow_client_gets_every_event() {
    let s = Store::with(WatchHubConfig {
        sync_interval: Duration::from_millis(5),
        outbox_capacity: 2,
        ..WatchHubConfig::default()
    });
    let svc = s.service(1 << 20);
    let mut c = Client::open(&svc);
    c.send(RequestUnion::CreateRequest(create("k", "", 0)))
        .await;
    assert!(c.next().await.created);
    for i in 0..300 {
        s.put("k", &i.to_string());
    }
    let mut got = Vec::new();
    while got.len() < 300 {
        got.extend(event_revs(&c.next().await));
    }
    assert_eq!(got, (2..=301).collect::<Vec<_>>());
}

#[tokio::test]
async fn watch_grpc_round_trip_and_disconnect_cleans_up() {
    let s = Store::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(s.service(1 << 20).into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = WatchClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(wrap(RequestUnion::CreateRequest(create("k", "l", 0))))
        .await
        .unwrap();
    let mut responses = client
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = responses.message().await.unwrap().unwrap();
    assert!(created.created);
    let rev = s.put("k1", "v");
    let ev = responses.message().await.unwrap().unwrap();
    assert_eq!(event_revs(&ev), vec![rev]);
    assert_eq!(s.hub.stats().synced, 1);
    drop(tx);
    drop(responses);
    drop(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.hub.stats().streams != 0 {
        assert!(tokio::time::Instant::now() < deadline, "watchers leaked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.abort();
}
