//! The floor of the serving stack: an etcd KV and Watch gRPC server that
//! stores nothing. Put, Range, DeleteRange, Txn and Compact answer at once
//! with an empty response; a put is also handed, as it came, to the
//! watchers whose key range holds its key (one event per watcher, a
//! revision counted up per put, no history; a watch stream's responses
//! are made as its response body polls for them). It runs over the same stack
//! as a keel member's client port (tonic routes in an axum router,
//! `axum::serve`, `TCP_NODELAY`, this binary's tokio runtime, set up as
//! keel's). What keel-bench measures against it is what gRPC over
//! loopback and the load generator cost on this machine with no store at
//! all: a latency and a throughput that no store served this way can be
//! expected to beat, with this client (within the spread between runs).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use keel_storage::mvcc::KeyRange;
use keel_storage::proto::etcdserverpb::{
    kv_server::{Kv, KvServer},
    watch_request::RequestUnion,
    watch_server::{Watch, WatchServer},
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
};
use keel_storage::proto::mvccpb::{Event, KeyValue};
use keel_storage::server::watch::WatchResponseStream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status, Streaming};

/// Puts not yet taken by every watch stream; a stream further behind
/// loses events (the load generator counts them as not delivered).
const EVENT_BACKLOG: usize = 1 << 16;

/// The services that keep nothing: puts go to the watchers, and no further.
#[derive(Clone)]
struct Null {
    revision: Arc<AtomicI64>,
    puts: broadcast::Sender<Arc<KeyValue>>,
}

#[tonic::async_trait]
impl Kv for Null {
    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(RangeResponse::default()))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let p = req.into_inner();
        let rev = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
        if self.puts.receiver_count() > 0 {
            // A watch stream gone since the count: nothing to hand on.
            let _ = self.puts.send(Arc::new(KeyValue {
                key: p.key,
                value: p.value,
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: p.lease,
            }));
        }
        Ok(Response::new(PutResponse::default()))
    }

    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(DeleteRangeResponse::default()))
    }

    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Ok(Response::new(TxnResponse::default()))
    }

    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Ok(Response::new(CompactionResponse::default()))
    }
}

/// One watcher of a stream: its id and the keys it watches.
struct Watcher {
    id: i64,
    range: KeyRange,
}

#[tonic::async_trait]
impl Watch for Null {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchResponseStream>, Status> {
        let stream = WatchStreamState {
            requests: Some(req.into_inner()),
            puts: self.puts.subscribe(),
            watchers: Vec::new(),
            next_id: 0,
            out: VecDeque::new(),
        };
        // Polled by the response body itself: no task or channel of its own
        // between a put and the stream.
        Ok(Response::new(Box::pin(futures::stream::unfold(
            stream,
            |mut st| async move { st.next().await.map(|r| (Ok(r), st)) },
        ))))
    }
}

/// One watch stream: its watchers, and responses not yet sent.
struct WatchStreamState {
    /// The client's requests; `None` once it has closed its side (as in
    /// etcd, its watchers keep going).
    requests: Option<Streaming<WatchRequest>>,
    puts: broadcast::Receiver<Arc<KeyValue>>,
    watchers: Vec<Watcher>,
    next_id: i64,
    out: VecDeque<WatchResponse>,
}

impl WatchStreamState {
    /// The next response: creates and cancels watchers, and sends each put
    /// to every watcher that wants it. `None` ends the stream.
    async fn next(&mut self) -> Option<WatchResponse> {
        loop {
            if let Some(r) = self.out.pop_front() {
                return Some(r);
            }
            let request = async {
                match self.requests.as_mut() {
                    Some(r) => r.message().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                req = request => match req {
                    Ok(Some(req)) => self.on_request(req),
                    Ok(None) => self.requests = None,
                    Err(_) => return None,
                },
                put = self.puts.recv() => match put {
                    Ok(kv) => self.on_put(&kv),
                    // Lost events show as not delivered in keel-bench.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }

    fn on_request(&mut self, req: WatchRequest) {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                let id = self.next_id;
                self.next_id += 1;
                self.watchers.push(Watcher {
                    id,
                    range: KeyRange::new(&c.key, &c.range_end),
                });
                self.out.push_back(WatchResponse {
                    watch_id: id,
                    created: true,
                    ..Default::default()
                });
            }
            Some(RequestUnion::CancelRequest(c)) => {
                self.watchers.retain(|w| w.id != c.watch_id);
                self.out.push_back(WatchResponse {
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                });
            }
            _ => {}
        }
    }

    fn on_put(&mut self, kv: &KeyValue) {
        for w in self.watchers.iter().filter(|w| w.range.contains(&kv.key)) {
            self.out.push_back(WatchResponse {
                watch_id: w.id,
                events: vec![Event {
                    kv: Some(kv.clone()),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
    }
}

/// Serves the null KV and Watch services on `listen` (`host:port`) until killed.
pub async fn serve(listen: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    serve_on(listener).await
}

/// Serves the null KV and Watch services on `listener` until killed.
async fn serve_on(listener: tokio::net::TcpListener) -> Result<()> {
    // `/health` as etcd answers it, so scripts wait for it as for a member.
    let null = Null {
        revision: Arc::new(AtomicI64::new(1)),
        puts: broadcast::channel(EVENT_BACKLOG).0,
    };
    let app = tonic::service::Routes::new(KvServer::new(null.clone()))
        .add_service(WatchServer::new(null))
        .prepare()
        .into_axum_router()
        .route(
            "/health",
            axum::routing::get(|| async { r#"{"health":"true","reason":""}"# }),
        );
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .await
        .context("serving the null KV and Watch services")
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::proto::etcdserverpb::{
        kv_client::KvClient, watch_client::WatchClient, WatchCreateRequest,
    };

    #[tokio::test]
    async fn answers_every_kv_request_empty_and_health() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_on(listener));
        let url = format!("http://{addr}");
        let ch = crate::load::connect(std::slice::from_ref(&url), 1)
            .await
            .expect("connect");
        let mut kv = KvClient::new(ch[0].clone());
        // A watcher on "k" and one on "other": only the first sees the put.
        let (wtx, wrx) = futures::channel::mpsc::unbounded();
        for key in [&b"k"[..], b"other"] {
            wtx.unbounded_send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: key.to_vec().into(),
                    ..Default::default()
                })),
            })
            .expect("queue create");
        }
        let mut watch = WatchClient::new(ch[0].clone())
            .watch(wrx)
            .await
            .expect("watch")
            .into_inner();
        for id in [0, 1] {
            let r = watch.message().await.expect("created").expect("open");
            assert!(r.created && r.watch_id == id, "{r:?}");
        }
        let put = kv
            .put(PutRequest {
                key: b"k".to_vec().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            })
            .await
            .expect("put")
            .into_inner();
        assert_eq!(put, PutResponse::default());
        let r = watch.message().await.expect("event").expect("open");
        assert_eq!(r.watch_id, 0, "{r:?}");
        let kv0 = r.events[0].kv.clone().expect("kv");
        assert_eq!(
            (&kv0.key[..], &kv0.value[..], kv0.mod_revision),
            (&b"k"[..], &b"v"[..], 2)
        );
        drop(wtx);
        let range = kv
            .range(RangeRequest {
                key: b"k".to_vec().into(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        assert!(range.kvs.is_empty(), "nothing is stored");
        // /health over plain HTTP/1.1, as curl asks it.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut body = String::new();
        tcp.read_to_string(&mut body).await.expect("read");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains(r#""health":"true""#), "{body}");
    }
}
