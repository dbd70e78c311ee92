//! The QUIC client of the store: one connection per endpoint, dialed on
//! first use; requests go to the endpoint that last worked (the *pinned*
//! one, as etcd's client pins one), and fail over to the next endpoint when
//! it cannot be reached.
//!
//! Each connection has a UDP socket of its own, connected to its member,
//! so that a member whose process is gone is noticed when its port
//! refuses a datagram, as TCP notices a RST (see [`super::connected_socket`]),
//! rather than after the idle timeout.
//!
//! A broken connection is redialed on the next request; an endpoint that
//! could not be dialed is skipped for a backoff (`backoff_min` doubling up
//! to `backoff_max`) while another one can be tried. A request that was
//! never sent (no connection, or the stream could not be opened) is tried
//! on the next endpoint; once sent, only reads (Range) are retried
//! elsewhere after a broken connection, since a write may have been
//! applied. Watches are streams of their own: a watch whose connection
//! breaks ends with an error, and the caller watches again from the last
//! revision it saw (as with gRPC).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use prost::Message;

use super::connected_socket;
use super::wire::{self, Method, TAG_ERROR, TAG_OK};
use super::{parse_quic_url, QuicError};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
};

/// Settings of a [`Client`]. Build with [`ClientConfig::new`], then adjust.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `quic://host:port` URLs of the members' QUIC client endpoints.
    pub endpoints: Vec<String>,
    /// PEM certificates the server's certificate must chain to, or be one
    /// of (pinned): the API server's `--etcd-cafile`.
    pub trusted_ca_pem: Vec<u8>,
    /// How long a dial may take.
    pub connect_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// A connection silent for this long is dead: how long a member whose
    /// host is gone or cut off takes to be noticed. (A member whose process
    /// died on a reachable host is noticed at once: its port refuses.)
    pub idle_timeout: Duration,
    /// First wait before redialing an endpoint that failed.
    pub backoff_min: Duration,
    /// Longest wait before redialing.
    pub backoff_max: Duration,
    /// Largest response frame accepted.
    pub max_response_bytes: usize,
}

impl ClientConfig {
    /// Defaults for `endpoints`, trusting `trusted_ca_pem`.
    pub fn new(endpoints: Vec<String>, trusted_ca_pem: Vec<u8>) -> Self {
        ClientConfig {
            endpoints,
            trusted_ca_pem,
            connect_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            max_response_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One endpoint and its connection.
#[derive(Debug)]
struct Target {
    url: String,
    /// TLS server name (the URL's host).
    host: String,
    /// `host:port`, resolved at each dial.
    hostport: String,
    state: tokio::sync::Mutex<TargetState>,
}

#[derive(Debug, Default)]
struct TargetState {
    /// The connection, on an endpoint (socket) of its own.
    conn: Option<(quinn::Connection, quinn::Endpoint)>,
    /// Dials failed in a row.
    failures: u32,
    /// No dial before this.
    retry_at: Option<Instant>,
}

/// A client of the members' QUIC client API (cheap to clone).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// QUIC and TLS settings of every dial.
    quinn: quinn::ClientConfig,
    targets: Vec<Target>,
    /// The endpoint requests go to first.
    pinned: AtomicUsize,
    cfg: ClientConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &mut self.targets {
            if let Some((conn, endpoint)) = t.state.get_mut().conn.take() {
                conn.close(0u32.into(), b"client dropped");
                endpoint.close(0u32.into(), b"client dropped");
            }
        }
    }
}

/// A stream of watch responses (see [`Client::watch`]).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, QuicError>> + Send>>;

impl Client {
    /// A client of `cfg.endpoints`; connects lazily. Must be called inside
    /// a tokio runtime.
    pub fn new(cfg: ClientConfig) -> Result<Client, QuicError> {
        if cfg.endpoints.is_empty() {
            return Err(QuicError::BadEndpoint {
                url: String::new(),
                reason: "no endpoints".into(),
            });
        }
        let mut targets = Vec::new();
        for url in &cfg.endpoints {
            let (host, hostport) = parse_quic_url(url)?;
            targets.push(Target {
                url: url.clone(),
                host,
                hostport,
                state: tokio::sync::Mutex::new(TargetState::default()),
            });
        }
        let crypto = super::tls::client_config(&cfg.trusted_ca_pem)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut tc = quinn::TransportConfig::default();
        tc.keep_alive_interval(Some(cfg.keep_alive));
        tc.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(cfg.idle_timeout)
                .map_err(|e| QuicError::Tls(format!("idle timeout: {e}")))?,
        ));
        tc.max_concurrent_uni_streams(0u32.into());
        tc.max_concurrent_bidi_streams(0u32.into());
        client.transport_config(Arc::new(tc));
        Ok(Client {
            inner: Arc::new(Inner {
                quinn: client,
                targets,
                pinned: AtomicUsize::new(0),
                cfg,
            }),
        })
    }

    /// The endpoint URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.cfg.endpoints
    }

    /// The URL of the endpoint requests currently go to first.
    pub fn pinned_endpoint(&self) -> &str {
        let i = self.inner.pinned.load(Ordering::Relaxed) % self.inner.targets.len();
        &self.inner.targets[i].url
    }

    /// A live connection to endpoint `i`: the current one, or a new dial
    /// unless the endpoint is backing off.
    async fn connection(&self, i: usize) -> Result<quinn::Connection, QuicError> {
        let target = &self.inner.targets[i];
        let mut st = target.state.lock().await;
        if let Some((c, _)) = &st.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        if let Some((_, endpoint)) = st.conn.take() {
            // Its connection is gone: free its socket now, not when a
            // dial finally succeeds.
            endpoint.close(0u32.into(), b"connection lost");
        }
        let connect_err = |reason: String| QuicError::Connect {
            endpoint: target.url.clone(),
            reason,
        };
        if let Some(at) = st.retry_at {
            if Instant::now() < at {
                return Err(connect_err("backing off after a failed dial".into()));
            }
        }
        let dialed = self.dial(target).await;
        match dialed {
            Ok((c, endpoint)) => {
                st.failures = 0;
                st.retry_at = None;
                st.conn = Some((c.clone(), endpoint));
                tracing::info!(endpoint = %target.url, "QUIC store connection up");
                Ok(c)
            }
            Err(reason) => {
                let cfg = &self.inner.cfg;
                let wait = cfg
                    .backoff_min
                    .saturating_mul(1u32 << st.failures.min(16))
                    .min(cfg.backoff_max);
                st.failures = st.failures.saturating_add(1);
                st.retry_at = Some(Instant::now() + wait);
                tracing::debug!(endpoint = %target.url, %reason, ?wait, "QUIC store dial failed");
                Err(connect_err(reason))
            }
        }
    }

    /// Dials `target` on a socket of its own, connected to the member's
    /// address (see [`super::connected_socket`]): the dial fails, and later
    /// the connection closes, as soon as the member's port refuses a
    /// datagram (its process is gone), instead of after a timeout.
    async fn dial(&self, target: &Target) -> Result<(quinn::Connection, quinn::Endpoint), String> {
        let addr = tokio::net::lookup_host(&target.hostport)
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| "no address".to_string())?;
        let (endpoint, refusal) =
            connected_socket::endpoint_to(addr).map_err(|e| format!("UDP socket: {e}"))?;
        let dialed = async {
            let connecting = endpoint
                .connect_with(self.inner.quinn.clone(), addr, &target.host)
                .map_err(|e| e.to_string())?;
            tokio::select! {
                r = tokio::time::timeout(self.inner.cfg.connect_timeout, connecting) => match r {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_string()),
                },
                () = refusal.wait() => Err("connection refused".to_string()),
            }
        }
        .await;
        let conn = match dialed {
            Ok(c) => c,
            Err(e) => {
                endpoint.close(0u32.into(), b"dial failed");
                return Err(e);
            }
        };
        // Close at the first refusal: every stream on it fails at once, and
        // the next request dials again or fails over.
        let watched = conn.clone();
        let url = target.url.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = refusal.wait() => {
                    tracing::info!(endpoint = %url, "QUIC store connection refused by the member's port (its process is gone): closing it");
                    watched.close(0u32.into(), b"peer port unreachable");
                }
                _ = watched.closed() => {}
            }
        });
        Ok((conn, endpoint))
    }

    /// Opens a stream on the first endpoint that takes one, starting at the
    /// pinned one; pins the endpoint that worked.
    async fn open(&self) -> Result<(quinn::SendStream, quinn::RecvStream, usize), QuicError> {
        let n = self.inner.targets.len();
        let start = self.inner.pinned.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let conn = match self.connection(i).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match conn.open_bi().await {
                Ok((send, recv)) => {
                    if i != start {
                        tracing::info!(endpoint = %self.inner.targets[i].url, "QUIC store client: failover to this endpoint");
                    }
                    self.inner.pinned.store(i, Ordering::Relaxed);
                    return Ok((send, recv, i));
                }
                Err(e) => {
                    last = Some(QuicError::Connect {
                        endpoint: self.inner.targets[i].url.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| QuicError::Connect {
            endpoint: String::new(),
            reason: "no endpoints".into(),
        }))
    }

    /// Sends one request and reads its answer.
    async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        method: Method,
        req: &Req,
    ) -> Result<Resp, QuicError> {
        let frame = wire::frame(method as u8, &req.encode_to_vec());
        let retry_after_send = method == Method::Range;
        let mut attempts = self.inner.targets.len();
        loop {
            attempts -= 1;
            let (mut send, mut recv, i) = self.open().await?;
            match self.exchange(&mut send, &mut recv, &frame).await {
                Err(e @ (QuicError::Stream(_) | QuicError::Protocol(_)))
                    if retry_after_send && attempts > 0 =>
                {
                    tracing::debug!(error = %e, "QUIC store read failed; trying the next endpoint");
                    self.skip(i);
                    continue;
                }
                Err(e) => {
                    if matches!(e, QuicError::Stream(_)) {
                        self.skip(i);
                    }
                    return Err(e);
                }
                Ok(payload) => {
                    return Resp::decode(payload.as_ref())
                        .map_err(|e| QuicError::Protocol(format!("bad response message: {e}")))
                }
            }
        }
    }

    /// Moves the pin past endpoint `i` (its connection broke).
    fn skip(&self, i: usize) {
        let n = self.inner.targets.len();
        if n > 1
            && self
                .inner
                .pinned
                .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(endpoint = %self.inner.targets[i].url, "QUIC store client: failover away from this endpoint");
        }
    }

    async fn exchange(
        &self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        frame: &[u8],
    ) -> Result<bytes::Bytes, QuicError> {
        send.write_all(frame)
            .await
            .map_err(|e| QuicError::Stream(e.to_string()))?;
        let _ = send.finish();
        match wire::read_frame(recv, self.inner.cfg.max_response_bytes).await? {
            Some((TAG_OK, payload)) => Ok(payload),
            Some((TAG_ERROR, payload)) => Err(wire::decode_error(&payload)),
            Some((tag, _)) => Err(QuicError::Protocol(format!("response frame tag {tag}"))),
            None => Err(QuicError::Stream("stream ended without a response".into())),
        }
    }

    /// etcd `Range`.
    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse, QuicError> {
        self.unary(Method::Range, req).await
    }

    /// etcd `Put`.
    pub async fn put(&self, req: &PutRequest) -> Result<PutResponse, QuicError> {
        self.unary(Method::Put, req).await
    }

    /// etcd `DeleteRange`.
    pub async fn delete_range(
        &self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, QuicError> {
        self.unary(Method::DeleteRange, req).await
    }

    /// etcd `Txn`.
    pub async fn txn(&self, req: &TxnRequest) -> Result<TxnResponse, QuicError> {
        self.unary(Method::Txn, req).await
    }

    /// etcd `Compact`.
    pub async fn compact(&self, req: &CompactionRequest) -> Result<CompactionResponse, QuicError> {
        self.unary(Method::Compact, req).await
    }

    /// etcd `LeaseGrant`.
    pub async fn lease_grant(
        &self,
        req: &LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, QuicError> {
        self.unary(Method::LeaseGrant, req).await
    }

    /// etcd `LeaseRevoke`.
    pub async fn lease_revoke(
        &self,
        req: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, QuicError> {
        self.unary(Method::LeaseRevoke, req).await
    }

    /// etcd `LeaseTimeToLive`.
    pub async fn lease_time_to_live(
        &self,
        req: &LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, QuicError> {
        self.unary(Method::LeaseTimeToLive, req).await
    }

    /// Opens a watch stream: `create` (a `WatchRequest` with a create
    /// request) first, then every request `more` yields (progress
    /// requests) on the same stream. Dropping the returned stream, or the
    /// end of `more`, cancels the watch (the stream is reset). Responses
    /// are read only as the returned stream is polled: a watch that is not
    /// read holds back only its own QUIC stream.
    pub async fn watch(
        &self,
        create: WatchRequest,
        mut more: tokio::sync::mpsc::Receiver<WatchRequest>,
    ) -> Result<WatchStream, QuicError> {
        let first = wire::frame(Method::Watch as u8, &create.encode_to_vec());
        let (mut send, recv) = {
            let mut attempts = self.inner.targets.len();
            loop {
                attempts -= 1;
                let (mut send, recv, i) = self.open().await?;
                match send.write_all(&first).await {
                    Ok(()) => break (send, recv),
                    Err(e) if attempts > 0 => {
                        tracing::debug!(error = %e, "QUIC store watch: retrying elsewhere");
                        self.skip(i);
                    }
                    Err(e) => return Err(QuicError::Stream(e.to_string())),
                }
            }
        };
        // The writer: later requests, until the reader is dropped, `more`
        // ends, or the server stops reading.
        let (dropped_tx, mut dropped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let stopped = send.stopped();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = &mut dropped => break,
                    req = more.recv() => match req {
                        Some(req) => {
                            let f = wire::frame(Method::Watch as u8, &req.encode_to_vec());
                            if send.write_all(&f).await.is_err() {
                                return;
                            }
                        }
                        None => break,
                    },
                }
            }
            let _ = send.reset(0u32.into());
        });
        let max = self.inner.cfg.max_response_bytes;
        let stream = futures::stream::unfold(Some((recv, dropped_tx)), move |state| async move {
            let (mut recv, guard) = state?;
            let item = match wire::read_frame(&mut recv, max).await {
                Ok(Some((TAG_OK, payload))) => match WatchResponse::decode(payload.as_ref()) {
                    Ok(r) => return Some((Ok(r), Some((recv, guard)))),
                    Err(e) => QuicError::Protocol(format!("bad watch response: {e}")),
                },
                Ok(Some((TAG_ERROR, payload))) => wire::decode_error(&payload),
                Ok(Some((tag, _))) => QuicError::Protocol(format!("watch frame tag {tag}")),
                Ok(None) => QuicError::Stream("the store ended the watch stream".into()),
                Err(e) => e,
            };
            let _ = recv.stop(0u32.into());
            Some((Err(item), None))
        });
        Ok(Box::pin(stream))
    }

    /// Opens a raw stream to the pinned endpoint, for tests and
    /// diagnostics that speak the wire format themselves.
    pub async fn open_raw_stream(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), QuicError> {
        let (send, recv, _) = self.open().await?;
        Ok((send, recv))
    }
}
