//! The store member's servers: the etcd v3 gRPC services and the HTTP
//! endpoints (`/health`, `/metrics`), all on the client URL (as etcd serves
//! them on one port).
//!
//! - [`header`]: response headers.
//! - [`kv`], [`watch`], [`lease`], [`maintenance`], [`cluster`]: the services.
//! - [`http`]: `/health` and `/metrics`.
//!
//! The native QUIC client API ([`crate::quic`]), on a port of its own,
//! runs requests through these same services.

pub mod cluster;
pub mod header;
pub mod http;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;

use crate::member::Member;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer,
};

/// Extra room over `--max-request-bytes` for gRPC framing (etcd's
/// `grpcOverheadBytes`): an oversized request is refused with etcd's
/// "request is too large" rather than a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Serves the member's client API on `listener` until `shutdown` resolves.
pub async fn serve(
    member: Arc<Member>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max_recv = member.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
    let routes = tonic::service::Routes::new(
        KvServer::new(kv::KvService::new(member.clone())).max_decoding_message_size(max_recv),
    )
    .add_service(
        watch::WatchService::new(
            member.hub().clone(),
            member.header().clone(),
            member.config().max_request_bytes,
        )
        .into_server()
        .max_decoding_message_size(max_recv),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService::new(member.clone()))
            .max_decoding_message_size(max_recv),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService::new(member.clone()))
            .max_decoding_message_size(max_recv),
    )
    .add_service(ClusterServer::new(cluster::ClusterService::new(
        member.clone(),
    )));
    let app = routes
        .prepare()
        .into_axum_router()
        .merge(http::router(member.clone()));
    use axum::serve::ListenerExt;
    // Small gRPC frames must not wait for delayed ACKs (Nagle).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
