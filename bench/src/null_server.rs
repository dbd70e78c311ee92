//! The floor of the serving stack: an etcd KV gRPC server that stores
//! nothing. Put, Range, DeleteRange, Txn and Compact answer at once with an
//! empty response, over the same stack as a keel member's client port
//! (tonic routes in an axum router, `axum::serve`, `TCP_NODELAY`, this
//! binary's tokio runtime, set up as keel's). What keel-bench measures
//! against it is what gRPC over loopback and the load generator cost on
//! this machine with no store at all: the latency no store can go under,
//! and the throughput no store can go over, with this client.

use anyhow::{Context, Result};
use keel_storage::proto::etcdserverpb::{
    kv_server::{Kv, KvServer},
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

/// The KV service that keeps nothing.
struct Null;

#[tonic::async_trait]
impl Kv for Null {
    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(RangeResponse::default()))
    }

    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
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

/// Serves the null KV service on `listen` (`host:port`) until killed.
pub async fn serve(listen: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    serve_on(listener).await
}

/// Serves the null KV service on `listener` until killed.
async fn serve_on(listener: tokio::net::TcpListener) -> Result<()> {
    // `/health` as etcd answers it, so scripts wait for it as for a member.
    let app = tonic::service::Routes::new(KvServer::new(Null))
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
        .context("serving the null KV service")
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::proto::etcdserverpb::kv_client::KvClient;

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
