//! The member's QUIC endpoint for clients: accepts connections, and on each
//! connection bidirectional streams, each one request or one watch (see
//! the wire format in [`super`]). Requests run through the gRPC services'
//! own code ([`KvService`], [`LeaseService`], [`WatchService::serve`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tonic::{Request, Status};

use super::wire::{self, Method, TAG_OK};
use super::{QuicError, ServerTls};
use crate::member::Member;
use crate::proto::etcdserverpb::{
    kv_server::Kv, lease_server::Lease, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, TxnRequest, WatchRequest,
};
use crate::server::kv::KvService;
use crate::server::lease::LeaseService;
use crate::server::watch::WatchService;

/// Extra room over `--max-request-bytes` for a request frame (the gRPC
/// server's allowance).
const REQUEST_OVERHEAD_BYTES: usize = 512 * 1024;
/// How long a client may take to send a stream's first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams one connection may have open at once (a watch each, plus
/// requests in flight).
const MAX_STREAMS_PER_CONNECTION: u32 = 4096;
/// Connections a member's QUIC client endpoint serves at once; a client
/// past it is refused at the handshake (an API server holds one per
/// member, so this is room for thousands of clients, not a tuning knob).
pub const MAX_CONNECTIONS: usize = 4096;
/// QUIC stream error code for a stream the server gave up on.
const STREAM_ERROR: u32 = 1;

/// The services a stream is dispatched to (the gRPC handlers' code).
struct Services {
    kv: KvService,
    lease: LeaseService,
    watch: WatchService,
    max_request_frame: usize,
}

/// A bound QUIC client endpoint of a member; [`QuicServer::serve`] runs it.
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    services: Arc<Services>,
    /// One permit per connection being served.
    connections: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for QuicServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicServer")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish()
    }
}

impl QuicServer {
    /// Binds `listen` (UDP) with the certificate of `tls`. Must be called
    /// inside a tokio runtime.
    pub fn bind(
        member: Arc<Member>,
        listen: SocketAddr,
        tls: &ServerTls,
    ) -> Result<QuicServer, QuicError> {
        let (crypto, key_der) = tls.server_config()?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut tc = quinn::TransportConfig::default();
        tc.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into());
        tc.max_concurrent_uni_streams(0u32.into());
        // The client's keep-alives hold the connection; its idle timeout
        // (the smaller of both) decides when a silent peer is gone.
        tc.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            30_000,
        ))));
        server.transport_config(Arc::new(tc));

        // The same reset keys after a restart: clients holding a connection
        // to the old process learn at once that it is gone.
        let endpoint_cfg = keel_raft::transport::pki::stable_endpoint_config(
            b"keel-store quic stateless reset",
            &key_der,
        );
        let socket = std::net::UdpSocket::bind(listen).map_err(|source| QuicError::Bind {
            addr: listen,
            source,
        })?;
        let endpoint = quinn::Endpoint::new(
            endpoint_cfg,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| QuicError::Bind {
            addr: listen,
            source,
        })?;
        let max_request_bytes = member.config().max_request_bytes;
        let services = Arc::new(Services {
            kv: KvService::new(member.clone()),
            lease: LeaseService::new(member.clone()),
            watch: WatchService::new(
                member.hub().clone(),
                member.header().clone(),
                max_request_bytes,
            ),
            max_request_frame: max_request_bytes.saturating_add(REQUEST_OVERHEAD_BYTES),
        });
        Ok(QuicServer {
            endpoint,
            services,
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// Serves at most `n` connections at once instead of
    /// [`MAX_CONNECTIONS`].
    pub fn with_max_connections(mut self, n: usize) -> QuicServer {
        self.connections = Arc::new(tokio::sync::Semaphore::new(n));
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Accepts connections until `shutdown` resolves, then closes them.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                _ = &mut shutdown => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(
                    remote = %incoming.remote_address(),
                    "QUIC client refused: too many connections"
                );
                incoming.refuse();
                continue;
            };
            let services = self.services.clone();
            tokio::spawn(async move {
                // Held until the connection ends.
                let _permit = permit;
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "QUIC client handshake failed");
                        return;
                    }
                };
                serve_connection(services, conn).await;
            });
        }
        self.endpoint.close(0u32.into(), b"member stopping");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

/// Accepts the streams of one connection until it closes.
async fn serve_connection(services: Arc<Services>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    tracing::debug!(%remote, "QUIC client connected");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(services.clone(), send, recv));
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "QUIC client connection closed");
                return;
            }
        }
    }
}

/// Gives up on a stream: resets our side and stops the client's.
fn abandon(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    let _ = send.reset(STREAM_ERROR.into());
    let _ = recv.stop(STREAM_ERROR.into());
}

/// Answers with `status` and closes the stream.
async fn refuse(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, status: Status) {
    let _ = send.write_all(&wire::error_frame(&status)).await;
    let _ = send.finish();
    let _ = recv.stop(STREAM_ERROR.into());
}

/// Serves one stream: a request, or a watch.
async fn serve_stream(
    services: Arc<Services>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let first = tokio::time::timeout(
        FIRST_FRAME_TIMEOUT,
        wire::read_frame(&mut recv, services.max_request_frame),
    )
    .await;
    let (tag, body) = match first {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => {
            let _ = send.finish();
            return;
        }
        Ok(Err(QuicError::FrameTooLarge { .. })) => {
            refuse(
                &mut send,
                &mut recv,
                crate::error::StoreError::RequestTooLarge.into(),
            )
            .await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "QUIC client stream: bad first frame");
            abandon(&mut send, &mut recv);
            return;
        }
        Err(_) => {
            abandon(&mut send, &mut recv);
            return;
        }
    };
    let Some(method) = Method::from_tag(tag) else {
        refuse(
            &mut send,
            &mut recv,
            Status::unimplemented(format!("keel: unknown QUIC method tag {tag}")),
        )
        .await;
        return;
    };
    if method == Method::Watch {
        serve_watch(services, send, recv, body).await;
        return;
    }
    let answer = match unary(&services, method, &body).await {
        Ok(payload) => wire::frame(TAG_OK, &payload),
        Err(status) => wire::error_frame(&status),
    };
    if send.write_all(&answer).await.is_ok() {
        let _ = send.finish();
    }
}

fn decode<M: Message + Default>(body: &[u8]) -> Result<M, Status> {
    M::decode(body).map_err(|e| Status::invalid_argument(format!("keel: bad request message: {e}")))
}

/// Runs one request through the gRPC service code; the encoded response.
async fn unary(services: &Services, method: Method, body: &[u8]) -> Result<Vec<u8>, Status> {
    let (kv, lease) = (&services.kv, &services.lease);
    Ok(match method {
        Method::Range => kv
            .range(Request::new(decode::<RangeRequest>(body)?))
            .await?
            .into_inner()
            .encode_to_vec(),
        Method::Put => kv
            .put(Request::new(decode::<PutRequest>(body)?))
            .await?
            .into_inner()
            .encode_to_vec(),
        Method::DeleteRange => kv
            .delete_range(Request::new(decode::<DeleteRangeRequest>(body)?))
            .await?
            .into_inner()
            .encode_to_vec(),
        Method::Txn => kv
            .txn(Request::new(decode::<TxnRequest>(body)?))
            .await?
            .into_inner()
            .encode_to_vec(),
        Method::Compact => kv
            .compact(Request::new(decode::<CompactionRequest>(body)?))
            .await?
            .into_inner()
            .encode_to_vec(),
        Method::LeaseGrant => lease
            .lease_grant(Request::new(decode::<LeaseGrantRequest>(body)?))
            .await?
            .into_inner()
            .encode_to_vec(),
        Method::LeaseRevoke => lease
            .lease_revoke(Request::new(decode::<LeaseRevokeRequest>(body)?))
            .await?
            .into_inner()
            .encode_to_vec(),
        Method::LeaseTimeToLive => lease
            .lease_time_to_live(Request::new(decode::<LeaseTimeToLiveRequest>(body)?))
            .await?
            .into_inner()
            .encode_to_vec(),
        Method::Watch => return Err(Status::internal("keel: watch on a unary stream")),
    })
}

/// The client's later frames on a watch stream, as the gRPC watch service
/// reads them. The end of the client's side (finished or reset) and a bad
/// frame both end the watch: they come out as an error, on which the
/// service drops the stream's watchers.
fn inbound(
    first: WatchRequest,
    recv: quinn::RecvStream,
    max: usize,
) -> impl futures::Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static {
    let later = futures::stream::unfold(Some(recv), move |recv| async move {
        let mut recv = recv?;
        let item = match wire::read_frame(&mut recv, max).await {
            Ok(Some((tag, body))) if tag == Method::Watch as u8 => {
                match WatchRequest::decode(body.as_ref()) {
                    Ok(req) => return Some((Ok(req), Some(recv))),
                    Err(e) => Status::invalid_argument(format!("keel: bad watch request: {e}")),
                }
            }
            Ok(Some((tag, _))) => {
                Status::invalid_argument(format!("keel: frame tag {tag} on a watch stream"))
            }
            Ok(None) => Status::cancelled("watch stream finished by the client"),
            Err(e) => Status::cancelled(e.to_string()),
        };
        let _ = recv.stop(STREAM_ERROR.into());
        Some((Err(item), None))
    });
    Box::pin(futures::stream::once(async move { Ok(first) }).chain(later))
}

/// Serves one watch stream until either side ends it.
async fn serve_watch(
    services: Arc<Services>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    first: bytes::Bytes,
) {
    let first = match WatchRequest::decode(first.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            let status = Status::invalid_argument(format!("keel: bad watch request: {e}"));
            refuse(&mut send, &mut recv, status).await;
            return;
        }
    };
    let mut responses = services
        .watch
        .serve(inbound(first, recv, services.max_request_frame));
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            _ = &mut stopped => return,
            r = responses.next() => r,
        };
        match next {
            Some(Ok(resp)) => {
                if wire::write_frame(&mut send, TAG_OK, &resp.encode_to_vec())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(Err(status)) => {
                let _ = send.write_all(&wire::error_frame(&status)).await;
                break;
            }
            None => break,
        }
    }
    let _ = send.finish();
}
