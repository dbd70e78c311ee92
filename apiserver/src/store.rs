//! Store access, over one of two transports chosen by the endpoint URLs:
//!
//! - `quic://host:port`: keel's native QUIC client API
//!   ([`keel_storage::quic`]): one QUIC stream per request and per watch, so
//!   a watch that is read slowly holds back no other watch; one connection
//!   per member, reconnects with backoff, failover between members. The
//!   server's certificate is verified against `--etcd-cafile`. `keel up`
//!   uses this.
//! - `http://host:port`: the etcd v3 gRPC API (tonic), balanced over the
//!   endpoints, so the API server also works against a real etcd.
//!
//! Both carry the same etcd protobuf messages, so everything above
//! [`Store`] is the same for both.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use keel_storage::proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, response_op, watch_client::WatchClient,
    watch_request, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use keel_storage::proto::etcdserverpb::{DeleteRangeResponse, RangeResponse, TxnResponse};
use keel_storage::proto::mvccpb::KeyValue;
use tonic::transport::{Channel, Endpoint};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A read at a revision older than the compaction point.
    #[error("required revision has been compacted (compacted at {0})")]
    Compacted(i64),
    /// A read at a revision newer than the store's head.
    #[error("required revision is a future revision")]
    FutureRevision,
    /// The store answered with another error or could not be reached.
    #[error("store request failed: {0}")]
    Unavailable(String),
    /// A bad endpoint URL.
    #[error("bad store endpoint {0:?}: {1}")]
    BadEndpoint(String, String),
}

fn map_status(s: tonic::Status) -> StoreError {
    let msg = s.message();
    if msg.contains("compacted") {
        StoreError::Compacted(0)
    } else if msg.contains("future rev") {
        StoreError::FutureRevision
    } else {
        StoreError::Unavailable(format!("{}: {}", s.code(), msg))
    }
}

/// The result of a compare-and-swap write.
#[derive(Debug)]
pub enum Cas {
    /// Written at this revision.
    Done(i64),
    /// The precondition failed; the key's current value, if it exists.
    Failed(Option<KeyValue>),
}

/// A write that commits only if its key is still at `mod_revision`
/// (written with another write in one transaction: [`Store::create_with`]).
#[derive(Debug, Clone)]
pub struct CasWrite {
    /// The key.
    pub key: String,
    /// The value to write.
    pub value: Vec<u8>,
    /// The mod revision the key must have.
    pub mod_revision: i64,
}

/// A page of a range read.
#[derive(Debug, Clone)]
pub struct Page {
    /// The key-values, in key order.
    pub kvs: Vec<KeyValue>,
    /// The revision the read was served at.
    pub revision: i64,
    /// More keys follow the last one.
    pub more: bool,
    /// How many keys the range holds (ignoring the limit).
    pub count: i64,
}

/// A stream of watch responses.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, StoreError>> + Send>>;

/// A handle to the store (cheap to clone).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// Requests sent, by kind (clones share them).
    sent: std::sync::Arc<Sent>,
}

/// Store requests sent, by kind, for `/metrics`.
#[derive(Debug, Default)]
struct Sent {
    range: AtomicU64,
    txn: AtomicU64,
    delete_range: AtomicU64,
}

/// The transport to the store.
// One per API server (clones share the connections): its size does not
// matter, and boxing would add an allocation to every clone.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Backend {
    /// etcd v3 gRPC.
    Grpc {
        kv: KvClient<Channel>,
        watch: WatchClient<Channel>,
    },
    /// keel's native QUIC client API.
    Quic(keel_storage::quic::Client),
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Store {
    /// A lazily connecting client of `endpoints`: all `quic://host:port`
    /// (the QUIC client API; `trusted_ca` is then required: the PEM file
    /// the members' certificates must chain to or be one of), or all
    /// `http://host:port` (etcd gRPC, balanced over them). Must be called
    /// inside a tokio runtime.
    pub fn connect(
        endpoints: &[String],
        trusted_ca: Option<&std::path::Path>,
    ) -> Result<Store, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::BadEndpoint(
                String::new(),
                "no endpoints".into(),
            ));
        }
        let quic = endpoints
            .iter()
            .filter(|e| e.starts_with("quic://"))
            .count();
        if quic > 0 {
            if quic != endpoints.len() {
                return Err(StoreError::BadEndpoint(
                    endpoints.join(","),
                    "quic:// and other endpoints cannot be mixed".into(),
                ));
            }
            let Some(ca) = trusted_ca else {
                return Err(StoreError::BadEndpoint(
                    endpoints.join(","),
                    "quic:// endpoints need --etcd-cafile (the CA or certificates of the members' QUIC endpoints)".into(),
                ));
            };
            let pem = std::fs::read(ca).map_err(|e| {
                StoreError::BadEndpoint(endpoints.join(","), format!("{}: {e}", ca.display()))
            })?;
            let cfg = keel_storage::quic::ClientConfig::new(endpoints.to_vec(), pem);
            let client = keel_storage::quic::Client::new(cfg)
                .map_err(|e| StoreError::BadEndpoint(endpoints.join(","), e.to_string()))?;
            return Ok(Store {
                sent: Default::default(),
                backend: Backend::Quic(client),
            });
        }
        let mut eps = Vec::new();
        for e in endpoints {
            let ep = Endpoint::from_shared(e.clone())
                .map_err(|err| StoreError::BadEndpoint(e.clone(), err.to_string()))?
                .connect_timeout(std::time::Duration::from_secs(3))
                .tcp_nodelay(true);
            eps.push(ep);
        }
        let channel = Channel::balance_list(eps.into_iter());
        let max = 64 * 1024 * 1024;
        Ok(Store {
            sent: Default::default(),
            backend: Backend::Grpc {
                kv: KvClient::new(channel.clone()).max_decoding_message_size(max),
                watch: WatchClient::new(channel).max_decoding_message_size(max),
            },
        })
    }

    /// Whether this client speaks the QUIC client API.
    pub fn is_quic(&self) -> bool {
        matches!(self.backend, Backend::Quic(_))
    }

    /// `keel_apiserver_store_requests_total` by operation, in Prometheus'
    /// text format.
    pub fn render_metrics(&self) -> String {
        let name = "keel_apiserver_store_requests_total";
        let mut out = format!(
            "# HELP {name} Requests the API server sent to the store.\n# TYPE {name} counter\n"
        );
        for (op, n) in [
            ("range", &self.sent.range),
            ("txn", &self.sent.txn),
            ("delete_range", &self.sent.delete_range),
        ] {
            out.push_str(&format!(
                "{name}{{operation=\"{op}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        out
    }

    async fn range_req(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.sent.range.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Grpc { kv, .. } => Ok(kv
                .clone()
                .range(req)
                .await
                .map_err(map_status)?
                .into_inner()),
            Backend::Quic(c) => c.range(&req).await.map_err(|e| map_status(e.into())),
        }
    }

    /// Sends one transaction as given.
    pub(crate) async fn txn_req(&self, req: TxnRequest) -> Result<TxnResponse, StoreError> {
        self.sent.txn.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Grpc { kv, .. } => {
                Ok(kv.clone().txn(req).await.map_err(map_status)?.into_inner())
            }
            Backend::Quic(c) => c.txn(&req).await.map_err(|e| map_status(e.into())),
        }
    }

    /// Compacts the store's history up to `revision` (not physically: as
    /// kube-apiserver, no wait for the members' disks).
    pub(crate) async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        match &self.backend {
            Backend::Grpc { kv, .. } => {
                kv.clone().compact(req).await.map_err(map_status)?;
            }
            Backend::Quic(c) => {
                c.compact(&req).await.map_err(|e| map_status(e.into()))?;
            }
        }
        Ok(())
    }

    async fn delete_range_req(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StoreError> {
        self.sent.delete_range.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Grpc { kv, .. } => Ok(kv
                .clone()
                .delete_range(req)
                .await
                .map_err(map_status)?
                .into_inner()),
            Backend::Quic(c) => c.delete_range(&req).await.map_err(|e| map_status(e.into())),
        }
    }

    /// One key (linearizable read); `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<(Option<KeyValue>, i64), StoreError> {
        let resp = self
            .range_req(RangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })
            .await?;
        let rev = resp.header.map(|h| h.revision).unwrap_or(0);
        Ok((resp.kvs.into_iter().next(), rev))
    }

    /// Keys in `[start, end)`, at most `limit` (0: all), at `revision` (0: head).
    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: i64,
        revision: i64,
    ) -> Result<Page, StoreError> {
        let resp = self
            .range_req(RangeRequest {
                key: Bytes::copy_from_slice(start),
                range_end: Bytes::copy_from_slice(end),
                limit,
                revision,
                ..Default::default()
            })
            .await?;
        Ok(Page {
            revision: resp.header.map(|h| h.revision).unwrap_or(0),
            kvs: resp.kvs,
            more: resp.more,
            count: resp.count,
        })
    }

    /// Several ranges (`[start, end)`, an empty `end`: the key alone) read
    /// in one round trip, all at one revision: a read-only transaction,
    /// which the store serves as a linearizable read.
    pub async fn read_many(&self, ranges: &[(Bytes, Bytes)]) -> Result<Vec<Page>, StoreError> {
        let success = ranges
            .iter()
            .map(|(key, range_end)| RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: key.clone(),
                    range_end: range_end.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let resp = self
            .txn_req(TxnRequest {
                success,
                ..Default::default()
            })
            .await?;
        let revision = resp.header.map(|h| h.revision).unwrap_or(0);
        let pages: Vec<Page> = resp
            .responses
            .into_iter()
            .filter_map(|r| match r.response {
                Some(response_op::Response::ResponseRange(rr)) => Some(Page {
                    revision,
                    kvs: rr.kvs,
                    more: rr.more,
                    count: rr.count,
                }),
                _ => None,
            })
            .collect();
        if pages.len() != ranges.len() {
            return Err(StoreError::Unavailable(format!(
                "the store answered {} of {} reads",
                pages.len(),
                ranges.len()
            )));
        }
        Ok(pages)
    }

    async fn txn(
        &self,
        key: &str,
        cmp: Compare,
        op: request_op::Request,
    ) -> Result<Cas, StoreError> {
        let success = vec![RequestOp { request: Some(op) }];
        self.cas(Bytes::copy_from_slice(key.as_bytes()), vec![cmp], success)
            .await
    }

    /// Runs `success` if every `compare` holds; otherwise reads `key` back
    /// (the object the caller lost the race to).
    async fn cas(
        &self,
        k: Bytes,
        compare: Vec<Compare>,
        success: Vec<RequestOp>,
    ) -> Result<Cas, StoreError> {
        let resp = self
            .txn_req(TxnRequest {
                compare,
                success,
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: k,
                        ..Default::default()
                    })),
                }],
            })
            .await?;
        if resp.succeeded {
            return Ok(Cas::Done(resp.header.map(|h| h.revision).unwrap_or(0)));
        }
        let current = resp.responses.into_iter().find_map(|r| match r.response {
            Some(response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
            _ => None,
        });
        Ok(Cas::Failed(current))
    }

    /// Writes `value` at `key` if the key does not exist.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<Cas, StoreError> {
        let k = Bytes::copy_from_slice(key.as_bytes());
        self.txn(
            key,
            Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: k.clone(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            },
            request_op::Request::RequestPut(PutRequest {
                key: k,
                value: value.into(),
                ..Default::default()
            }),
        )
        .await
    }

    /// Writes `value` at `key` if the key does not exist, together with
    /// `also` (each only if its key is still at its mod revision), in one
    /// transaction: all or nothing. `Cas::Failed(Some(_))`: the key exists;
    /// `Cas::Failed(None)`: one of `also` changed.
    pub async fn create_with(
        &self,
        key: &str,
        value: Vec<u8>,
        also: &[CasWrite],
    ) -> Result<Cas, StoreError> {
        if also.is_empty() {
            return self.create(key, value).await;
        }
        let k = Bytes::copy_from_slice(key.as_bytes());
        let cmp = Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: k,
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        };
        self.put_guarded(key, cmp, value, also).await
    }

    /// Writes `value` at `key` if its mod revision is `rev`, together with
    /// `also` (each only if still at its mod revision), in one transaction.
    /// On failure, the key's current value: if it is still at `rev`, one
    /// of `also` changed.
    pub async fn update_with(
        &self,
        key: &str,
        value: Vec<u8>,
        rev: i64,
        also: &[CasWrite],
    ) -> Result<Cas, StoreError> {
        if also.is_empty() {
            return self.update(key, value, rev).await;
        }
        let k = Bytes::copy_from_slice(key.as_bytes());
        self.put_guarded(key, mod_is(&k, rev), value, also).await
    }

    /// One transaction: if `cmp` holds for `key` and every `also` key is at
    /// its mod revision, put `value` at `key` and every `also` write; else
    /// read `key`.
    async fn put_guarded(
        &self,
        key: &str,
        cmp: Compare,
        value: Vec<u8>,
        also: &[CasWrite],
    ) -> Result<Cas, StoreError> {
        let k = Bytes::copy_from_slice(key.as_bytes());
        let mut compare = vec![cmp];
        let mut success = vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.clone(),
                value: value.into(),
                ..Default::default()
            })),
        }];
        for w in also {
            let wk = Bytes::copy_from_slice(w.key.as_bytes());
            compare.push(mod_is(&wk, w.mod_revision));
            success.push(RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: wk,
                    value: w.value.clone().into(),
                    ..Default::default()
                })),
            });
        }
        self.cas(k, compare, success).await
    }

    /// Writes `value` at `key` if its mod revision is `rev`.
    pub async fn update(&self, key: &str, value: Vec<u8>, rev: i64) -> Result<Cas, StoreError> {
        let k = Bytes::copy_from_slice(key.as_bytes());
        self.txn(
            key,
            mod_is(&k, rev),
            request_op::Request::RequestPut(PutRequest {
                key: k.clone(),
                value: value.into(),
                ..Default::default()
            }),
        )
        .await
    }

    /// Deletes `key` if its mod revision is `rev`.
    pub async fn delete(&self, key: &str, rev: i64) -> Result<Cas, StoreError> {
        let k = Bytes::copy_from_slice(key.as_bytes());
        self.txn(
            key,
            mod_is(&k, rev),
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.clone(),
                ..Default::default()
            }),
        )
        .await
    }

    /// Deletes every key under `prefix`; returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64, StoreError> {
        let resp = self
            .delete_range_req(DeleteRangeRequest {
                key: Bytes::copy_from_slice(prefix.as_bytes()),
                range_end: prefix_end(prefix.as_bytes()).into(),
                ..Default::default()
            })
            .await?;
        Ok(resp.deleted)
    }

    /// Watches every key under `prefix` from `start_revision`, with previous
    /// values. A progress request is sent every `progress` (bookmarks).
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
        progress: Option<std::time::Duration>,
    ) -> Result<WatchStream, StoreError> {
        self.watch_prefix_kicked(prefix, start_revision, progress, None)
            .await
    }

    /// [`Store::watch_prefix`], also sending a progress request whenever
    /// `kick` is notified (a reader waiting for the watch to catch up).
    pub async fn watch_prefix_kicked(
        &self,
        prefix: &str,
        start_revision: i64,
        progress: Option<std::time::Duration>,
        kick: Option<std::sync::Arc<tokio::sync::Notify>>,
    ) -> Result<WatchStream, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: Bytes::copy_from_slice(prefix.as_bytes()),
                    range_end: prefix_end(prefix.as_bytes()).into(),
                    start_revision,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        };
        if matches!(self.backend, Backend::Grpc { .. }) {
            // gRPC: the create request goes first on the request stream.
            tx.send(create.clone())
                .await
                .map_err(|_| StoreError::Unavailable("watch request channel closed".into()))?;
        }
        if let Some(every) = progress {
            let kick = kick.unwrap_or_default();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = kick.notified() => {}
                        _ = tx.closed() => return,
                    }
                    let req = WatchRequest {
                        request_union: Some(watch_request::RequestUnion::ProgressRequest(
                            WatchProgressRequest {},
                        )),
                    };
                    if tx.send(req).await.is_err() {
                        return;
                    }
                }
            });
        } else {
            // Keep the request side open for as long as the watch lives.
            tokio::spawn(async move { tx.closed().await });
        }
        match &self.backend {
            Backend::Grpc { watch, .. } => {
                let stream = watch
                    .clone()
                    .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map_err(map_status)?
                    .into_inner();
                Ok(Box::pin(stream.map(|r| r.map_err(map_status))))
            }
            Backend::Quic(c) => {
                // Its own QUIC stream; progress requests follow on it.
                let stream = c
                    .watch(create, rx)
                    .await
                    .map_err(|e| map_status(e.into()))?;
                Ok(Box::pin(
                    stream.map(|r| r.map_err(|e| map_status(e.into()))),
                ))
            }
        }
    }
}

fn mod_is(k: &Bytes, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: k.clone(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(&[0x61, 0xff]), vec![0x62]);
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
