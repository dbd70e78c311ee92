//! Store access: the etcd v3 gRPC API of a keel store (or a real etcd).
//!
//! This is the first step. The design's native QUIC client of the store (one
//! QUIC stream per watch, no head-of-line blocking between watches) replaces
//! this gRPC client later; the API server only uses the operations below, so
//! the swap stays inside this module.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use keel_storage::proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, response_op, watch_client::WatchClient,
    watch_request, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
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
#[derive(Debug)]
pub struct Page {
    /// The key-values, in key order.
    pub kvs: Vec<KeyValue>,
    /// The revision the read was served at.
    pub revision: i64,
    /// More keys follow the last one.
    pub more: bool,
}

/// A stream of watch responses.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, StoreError>> + Send>>;

/// A handle to the store (cheap to clone).
#[derive(Clone, Debug)]
pub struct Store {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
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
    /// A lazily connecting client balanced over `endpoints` (`http://host:port`).
    pub fn connect(endpoints: &[String]) -> Result<Store, StoreError> {
        let mut eps = Vec::new();
        for e in endpoints {
            let ep = Endpoint::from_shared(e.clone())
                .map_err(|err| StoreError::BadEndpoint(e.clone(), err.to_string()))?
                .connect_timeout(std::time::Duration::from_secs(3))
                .tcp_nodelay(true);
            eps.push(ep);
        }
        if eps.is_empty() {
            return Err(StoreError::BadEndpoint(
                String::new(),
                "no endpoints".into(),
            ));
        }
        let channel = Channel::balance_list(eps.into_iter());
        let max = 64 * 1024 * 1024;
        Ok(Store {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(max),
            watch: WatchClient::new(channel).max_decoding_message_size(max),
        })
    }

    /// One key (linearizable read); `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<(Option<KeyValue>, i64), StoreError> {
        let resp = self
            .kv
            .clone()
            .range(RangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })
            .await
            .map_err(map_status)?
            .into_inner();
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
            .kv
            .clone()
            .range(RangeRequest {
                key: Bytes::copy_from_slice(start),
                range_end: Bytes::copy_from_slice(end),
                limit,
                revision,
                ..Default::default()
            })
            .await
            .map_err(map_status)?
            .into_inner();
        Ok(Page {
            revision: resp.header.map(|h| h.revision).unwrap_or(0),
            kvs: resp.kvs,
            more: resp.more,
        })
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
            .kv
            .clone()
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: k,
                        ..Default::default()
                    })),
                }],
            })
            .await
            .map_err(map_status)?
            .into_inner();
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
            .kv
            .clone()
            .delete_range(DeleteRangeRequest {
                key: Bytes::copy_from_slice(prefix.as_bytes()),
                range_end: prefix_end(prefix.as_bytes()).into(),
                ..Default::default()
            })
            .await
            .map_err(map_status)?
            .into_inner();
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
        tx.send(create)
            .await
            .map_err(|_| StoreError::Unavailable("watch request channel closed".into()))?;
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
        let stream = self
            .watch
            .clone()
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(map_status)?
            .into_inner();
        Ok(Box::pin(stream.map(|r| r.map_err(map_status))))
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
