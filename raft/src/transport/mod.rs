//! The QUIC peer transport: moves opaque Raft messages and snapshot files
//! between members identified by `u64` IDs.
//!
//! The transport does not look inside messages: the Raft core encodes them,
//! [`Transport::send`] queues them, and the receiving member reads them from
//! [`Incoming::messages`] as `(from, bytes)`. Snapshots travel as files
//! ([`Transport::send_snapshot`] → [`Incoming::snapshots`]).
//!
//! # Connection model
//!
//! Every member binds one UDP socket (one quinn endpoint) at
//! [`TransportConfig::listen`] that both accepts and dials. Each member
//! **dials its own outgoing connection** to each peer, lazily on the first
//! message, and uses it only for sending: a pair of members therefore holds
//! two connections, one per direction. That avoids any tie-breaking between
//! simultaneous dials, and a member's sending state never depends on the
//! other side's dialing. On the outgoing connection:
//!
//! - one long-lived **uni stream** carries all messages in order, as
//!   length-prefixed frames, at stream priority 1;
//! - every snapshot gets its **own bi stream** (priority 0), so a multi-MB
//!   snapshot never delays heartbeats: quinn sends the message stream's data
//!   first, and per-stream flow control keeps the snapshot from filling the
//!   connection's send window.
//!
//! Each peer has a bounded send queue (in messages and in bytes) drained by
//! its own task. A full queue drops the newest message; when the peer cannot be dialed, everything
//! queued is dropped (as etcd does: Raft resends, stale messages only delay
//! fresh ones) and the dial is retried on the next message after an
//! exponential backoff (`backoff_min` doubling up to `backoff_max`). Drops are
//! counted ([`Transport::dropped_messages`]). Messages are never reordered;
//! the only loss is during a connection break or while a peer is down.
//!
//! Liveness: keep-alives every [`TransportConfig::keep_alive`] (default 2 s)
//! under an idle timeout of [`TransportConfig::idle_timeout`] (default 10 s).
//! The QUIC stateless-reset key is derived from the TLS private key, so a
//! member that crashed and restarted on the same address resets its peers'
//! stale connections at once instead of leaving them to time out.
//!
//! # Wire format
//!
//! ALPN `keel-raft/1`, TLS 1.3 (rustls with ring). Every stream starts with a
//! 22-byte hello:
//!
//! ```text
//! hello    = "KRFT" | version u8 = 1 | kind u8 | from u64 LE | to u64 LE
//! messages = hello(kind=1) { len u32 LE | payload[len] }*          (uni stream)
//! snapshot = hello(kind=2) | meta_len u32 LE | meta | file_len u64 LE
//!            | file bytes | crc32 u32 LE of the file               (bi stream, →)
//!          ← status u8: 0 = stored and handed over, 1 = refused     (same stream, ←)
//! ```
//!
//! The receiver checks every hello: magic, version and kind; `to` must be
//! its own ID; `from` must be a configured peer (re-checked after
//! [`Transport::remove_peer`]); all streams of one connection must name the
//! same `from`. Frames longer than [`TransportConfig::max_message_bytes`],
//! bad hellos and streams that end inside a frame are protocol violations:
//! the connection is closed (QUIC application error 1, or 2 for an unknown
//! member) and nothing more from it is delivered. Other connections are not
//! affected.
//!
//! # Trust
//!
//! Both sides present certificates (mutual TLS). With [`PeerTls::Files`] the
//! peer's chain must lead to the cluster CA, and the certificate must name
//! the member's IP address both ways: the dialer checks that the server's
//! certificate names the IP it dialed, and the receiver checks that the
//! client certificate names the configured IP of the member the hello
//! claims to be (so a member's certificate cannot speak for a member on
//! another host; members sharing a host share that check). With
//! [`PeerTls::Auto`] any certificate is accepted (etcd's `--peer-auto-tls`):
//! the traffic is encrypted, but anyone who can reach the port can claim to
//! be a member.
//!
//! # Delivery guarantees at shutdown
//!
//! [`Transport::shutdown`] finishes each message stream and waits (up to 1 s)
//! until the peer has acknowledged everything before closing, because closing
//! a QUIC connection discards data the peer has not read yet.

mod error;
mod peer;
pub mod pki;
mod server;
mod tls;
mod wire;

pub use error::TransportError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The ALPN protocol ID of the peer transport.
pub const ALPN: &[u8] = b"keel-raft/1";

/// Default [`TransportConfig::max_message_bytes`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// How long `shutdown` waits for a task before aborting it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// How long `shutdown` lets closed connections drain (so that the peers get
/// the close); handshakes that never got an answer would take seconds.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// Configuration of a [`Transport`]. Build it with [`TransportConfig::new`],
/// then adjust the public fields.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This member's ID.
    pub id: u64,
    /// UDP address to bind (from `--listen-peer-urls quic://host:port`); port
    /// 0 picks a free port (see [`Transport::local_addr`]).
    pub listen: SocketAddr,
    /// The other members and their peer addresses. This member's own ID, if
    /// present, is ignored. Changed at runtime with [`Transport::add_peer`]
    /// and [`Transport::remove_peer`].
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Certificates.
    pub tls: PeerTls,
    /// Directory where received snapshot files are written (created if
    /// missing; leftover `*.partial` files are deleted at start).
    pub snapshot_dir: PathBuf,
    /// Largest message (and snapshot metadata) accepted; a peer that sends a
    /// bigger frame is disconnected. Capped at `u32::MAX`. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Messages queued per peer before new ones are dropped. Default 4096.
    pub send_queue: usize,
    /// Payload bytes queued per peer before new messages are dropped (a
    /// single message always fits into an empty queue). Default 64 MiB.
    pub send_queue_bytes: usize,
    /// Capacity of [`Incoming::messages`]; when it is full, reading from the
    /// network pauses (QUIC flow control pushes back). Default 4096.
    pub receive_queue: usize,
    /// First redial delay after a failed dial. Default 50 ms.
    pub backoff_min: Duration,
    /// Largest redial delay. Default 2 s.
    pub backoff_max: Duration,
    /// Deadline for a dial (QUIC + TLS handshake) and for a stream's hello.
    /// Default 3 s.
    pub connect_timeout: Duration,
    /// QUIC idle timeout: a connection silent this long is dead. Default 10 s.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval; must be below `idle_timeout`. Default 2 s.
    pub keep_alive: Duration,
}

impl TransportConfig {
    /// A configuration with no peers and default limits and timeouts.
    pub fn new(id: u64, listen: SocketAddr, tls: PeerTls, snapshot_dir: PathBuf) -> Self {
        TransportConfig {
            id,
            listen,
            peers: BTreeMap::new(),
            tls,
            snapshot_dir,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            send_queue: 4096,
            send_queue_bytes: 64 << 20,
            receive_queue: 4096,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
        }
    }
}

/// Where the transport's TLS identity comes from.
#[derive(Debug, Clone)]
pub enum PeerTls {
    /// Mutual TLS with a cluster CA (`--peer-cert-file`, `--peer-key-file`,
    /// `--peer-trusted-ca-file`): PEM files. Each member's certificate must
    /// be issued by the CA, carry an IP subject alternative name for the
    /// address of its peer URL, and (if it has extended key usages) allow
    /// both server and client authentication, as etcd peer certificates do.
    Files {
        /// This member's certificate chain (PEM).
        cert: PathBuf,
        /// This member's private key (PEM, PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
        /// The cluster CA certificate(s) (PEM).
        ca: PathBuf,
    },
    /// `--peer-auto-tls`: a self-signed certificate generated into `dir`
    /// (`cert.pem`, `key.pem`; normally `<data-dir>/fixtures/peer`) on first
    /// start and reused afterwards. Peers' certificates are accepted without
    /// verification, as etcd's auto TLS does; connections are still TLS 1.3
    /// encrypted.
    Auto {
        /// Directory holding the generated certificate and key.
        dir: PathBuf,
    },
}

/// A snapshot file received from a peer.
#[derive(Debug)]
pub struct ReceivedSnapshot {
    /// The sending member.
    pub from: u64,
    /// The metadata passed to [`Transport::send_snapshot`].
    pub meta: Vec<u8>,
    /// The received file, fsynced, in [`TransportConfig::snapshot_dir`]. The
    /// receiver owns it: move or delete it when done.
    pub path: PathBuf,
}

/// What the transport receives, handed out once by [`Transport::start`].
#[derive(Debug)]
pub struct Incoming {
    /// `(from, message)` in the order each peer sent them.
    pub messages: mpsc::Receiver<(u64, Vec<u8>)>,
    /// Snapshots, once stored completely.
    pub snapshots: mpsc::Receiver<ReceivedSnapshot>,
}

/// A running peer transport. Cheap to clone; all clones share one endpoint.
/// Dropping the last clone stops it abruptly; prefer [`Transport::shutdown`].
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// Stops the tasks when the last [`Transport`] clone goes away (they hold
/// the shared state, so it would never be dropped otherwise).
struct DropGuard(Arc<Inner>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
        for p in self.0.lock_peers().values() {
            p.stop.send_replace(true);
        }
        if let Some(ep) = self.0.take_endpoint() {
            ep.close(wire::close::SHUTDOWN.into(), b"shutdown");
        }
    }
}

/// Limits and timeouts the tasks need.
pub(crate) struct Limits {
    pub max_message_bytes: usize,
    pub send_queue: usize,
    pub send_queue_bytes: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
}

/// One configured peer.
struct PeerHandle {
    tx: mpsc::Sender<Vec<u8>>,
    shared: Arc<peer::PeerShared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// State shared by the handles and all tasks. Lock order: `peers` before
/// `endpoint`; neither is held across an `.await`.
pub(crate) struct Inner {
    pub id: u64,
    pub limits: Limits,
    /// CA mode: dial with the peer's IP as server name and check it.
    pub verify_names: bool,
    /// `None` once shut down.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    peers: Mutex<BTreeMap<u64, PeerHandle>>,
    /// Bumped on every membership change, so stream readers re-check cheaply.
    pub membership: AtomicU64,
    stop: watch::Sender<bool>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    pub messages: mpsc::Sender<(u64, Vec<u8>)>,
    pub snapshots: mpsc::Sender<ReceivedSnapshot>,
    pub snapshot_dir: PathBuf,
    pub snapshot_seq: AtomicU64,
}

/// Resolves once `true` was sent on the stop channel (or its sender is gone).
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The protected maps stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn lock_peers(&self) -> MutexGuard<'_, BTreeMap<u64, PeerHandle>> {
        lock(&self.peers)
    }

    /// The endpoint, unless shut down.
    pub(crate) fn endpoint(&self) -> Option<quinn::Endpoint> {
        lock(&self.endpoint).clone()
    }

    fn take_endpoint(&self) -> Option<quinn::Endpoint> {
        lock(&self.endpoint).take()
    }

    /// Whether `id` is currently a configured peer.
    pub(crate) fn is_peer(&self, id: u64) -> bool {
        self.lock_peers().contains_key(&id)
    }

    /// The configured address of peer `id`.
    pub(crate) fn peer_addr(&self, id: u64) -> Option<SocketAddr> {
        self.lock_peers().get(&id).map(|p| p.shared.addr)
    }
}

/// Binds the UDP socket, retrying briefly while the address is still held
/// (a transport restarted on the same port right after shutdown).
async fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, TransportError> {
    let mut attempts = 0;
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 40 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => return Err(TransportError::Bind { addr, source }),
        }
    }
}

/// Deletes `*.partial` files left by an interrupted snapshot receive.
fn clean_partials(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "partial") {
            let _ = std::fs::remove_file(&p);
        }
    }
}

impl Transport {
    /// Binds the endpoint, loads or generates certificates and starts
    /// accepting peers. Must be called within a tokio runtime.
    pub async fn start(cfg: TransportConfig) -> Result<(Transport, Incoming), TransportError> {
        std::fs::create_dir_all(&cfg.snapshot_dir).map_err(|source| TransportError::Io {
            path: cfg.snapshot_dir.clone(),
            source,
        })?;
        clean_partials(&cfg.snapshot_dir);
        let tls = tls::setup(&cfg.tls)?;
        let tls_err = |e: &dyn std::fmt::Display| TransportError::Tls(e.to_string());

        let mut tc = quinn::TransportConfig::default();
        tc.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(cfg.idle_timeout).map_err(|e| tls_err(&e))?,
        ));
        tc.keep_alive_interval(Some(cfg.keep_alive));
        // One message stream per connection, plus snapshots.
        tc.max_concurrent_uni_streams(4u32.into());
        tc.max_concurrent_bidi_streams(16u32.into());
        let tc = Arc::new(tc);

        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server)
            .map_err(|e| tls_err(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(tc.clone());
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client)
            .map_err(|e| tls_err(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(tc);

        // Same keys after a restart: the restarted member resets stale
        // connections its peers still hold to it.
        let endpoint_cfg = pki::stable_endpoint_config(b"keel-raft stateless reset", &tls.key_der);
        let socket = bind(cfg.listen).await?;
        let mut endpoint = quinn::Endpoint::new(
            endpoint_cfg,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| TransportError::Bind {
            addr: cfg.listen,
            source,
        })?;
        endpoint.set_default_client_config(client);

        let (messages_tx, messages) = mpsc::channel(cfg.receive_queue.max(1));
        let (snapshots_tx, snapshots) = mpsc::channel(16);
        let (stop, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            id: cfg.id,
            limits: Limits {
                max_message_bytes: cfg.max_message_bytes.min(u32::MAX as usize),
                send_queue: cfg.send_queue.max(1),
                send_queue_bytes: cfg.send_queue_bytes,
                backoff_min: cfg.backoff_min,
                backoff_max: cfg.backoff_max.max(cfg.backoff_min),
                connect_timeout: cfg.connect_timeout,
            },
            verify_names: tls.verify_names,
            endpoint: Mutex::new(Some(endpoint.clone())),
            peers: Mutex::new(BTreeMap::new()),
            membership: AtomicU64::new(0),
            stop,
            accept_task: Mutex::new(None),
            messages: messages_tx,
            snapshots: snapshots_tx,
            snapshot_dir: cfg.snapshot_dir.clone(),
            snapshot_seq: AtomicU64::new(0),
        });
        let transport = Transport {
            _guard: Arc::new(DropGuard(inner.clone())),
            inner: inner.clone(),
        };
        for (&id, &addr) in &cfg.peers {
            transport.add_peer(id, addr);
        }
        let task = tokio::spawn(server::accept_loop(inner.clone(), endpoint, stop_rx));
        *lock(&inner.accept_task) = Some(task);
        tracing::info!(id = cfg.id, listen = %transport.local_addr().unwrap_or(cfg.listen), "peer transport started");
        Ok((
            transport,
            Incoming {
                messages,
                snapshots,
            },
        ))
    }

    /// This member's ID.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The bound UDP address (useful with port 0); `None` after shutdown.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint()?.local_addr().ok()
    }

    /// Queues `msg` for member `to`; never blocks. Dropped (and counted) when
    /// `to` is not a peer, the message exceeds `max_message_bytes`, the
    /// peer's queue is full (`send_queue` messages or `send_queue_bytes`),
    /// or the transport is shut down. Messages to one
    /// peer are delivered in the order they were queued.
    pub fn send(&self, to: u64, msg: Vec<u8>) {
        let peers = self.inner.lock_peers();
        let Some(p) = peers.get(&to) else {
            tracing::debug!(to, "message to unknown member dropped");
            return;
        };
        if msg.len() > self.inner.limits.max_message_bytes {
            p.shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(to, len = msg.len(), "oversized message dropped");
            return;
        }
        let len = msg.len();
        if !p.shared.admit(len, self.inner.limits.send_queue_bytes) {
            p.shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(to, "send queue full (bytes); message dropped");
            return;
        }
        if p.tx.try_send(msg).is_err() {
            p.shared.release(len);
            p.shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(to, "send queue full; message dropped");
        }
    }

    /// Sends a snapshot file to `to` on its own stream, in chunks, with
    /// `meta` (at most `max_message_bytes`) ahead of it. Returns once the
    /// receiver has stored the file completely (fsynced) and handed it to
    /// its [`Incoming::snapshots`]. Dials the peer if needed (once; no
    /// backoff). Snapshots to one peer may run concurrently.
    pub async fn send_snapshot(
        &self,
        to: u64,
        meta: Vec<u8>,
        file: PathBuf,
    ) -> Result<(), TransportError> {
        let shared = self
            .inner
            .lock_peers()
            .get(&to)
            .map(|p| p.shared.clone())
            .ok_or(TransportError::UnknownPeer(to))?;
        peer::send_snapshot(&self.inner, &shared, &meta, &file).await
    }

    /// Adds member `id` at `addr`, or moves it to a new address (its queue
    /// and connection are then replaced). Must be called within a tokio
    /// runtime. Ignored for this member's own ID and after shutdown.
    pub fn add_peer(&self, id: u64, addr: SocketAddr) {
        if id == self.inner.id || *self.inner.stop.borrow() {
            return;
        }
        let mut peers = self.inner.lock_peers();
        if peers.get(&id).is_some_and(|p| p.shared.addr == addr) {
            return;
        }
        if let Some(old) = peers.remove(&id) {
            old.stop.send_replace(true);
        }
        let (tx, rx) = mpsc::channel(self.inner.limits.send_queue);
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(peer::PeerShared::new(id, addr));
        let task = tokio::spawn(peer::run(self.inner.clone(), shared.clone(), rx, stop_rx));
        peers.insert(
            id,
            PeerHandle {
                tx,
                shared,
                stop,
                task,
            },
        );
        self.inner.membership.fetch_add(1, Ordering::Release);
        tracing::info!(peer = id, %addr, "peer added");
    }

    /// Removes member `id`: its queue is flushed (briefly) and dropped, its
    /// outgoing connection closed, and its incoming streams are refused from
    /// the next frame on.
    pub fn remove_peer(&self, id: u64) {
        if let Some(old) = self.inner.lock_peers().remove(&id) {
            old.stop.send_replace(true);
            self.inner.membership.fetch_add(1, Ordering::Release);
            tracing::info!(peer = id, "peer removed");
        }
    }

    /// Whether an outgoing connection to `id` is currently established.
    pub fn peer_reachable(&self, id: u64) -> bool {
        self.inner
            .lock_peers()
            .get(&id)
            .is_some_and(|p| p.shared.reachable.load(Ordering::Relaxed))
    }

    /// Messages to `id` dropped so far (queue full, oversized, peer down);
    /// `None` if `id` is not a peer.
    pub fn dropped_messages(&self, id: u64) -> Option<u64> {
        self.inner
            .lock_peers()
            .get(&id)
            .map(|p| p.shared.dropped.load(Ordering::Relaxed))
    }

    /// Stops the transport: flushes each peer's message stream (waiting up
    /// to 1 s for acknowledgements), closes all connections and releases the
    /// UDP port. Later sends are dropped; `send_snapshot` fails. Idempotent.
    pub async fn shutdown(&self) {
        if self.inner.stop.send_replace(true) {
            return;
        }
        let peers = std::mem::take(&mut *self.inner.lock_peers());
        for p in peers.values() {
            p.stop.send_replace(true);
        }
        for (id, p) in peers {
            let abort = p.task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_WAIT, p.task).await.is_err() {
                tracing::debug!(peer = id, "peer task did not stop in time; aborted");
                abort.abort();
            }
        }
        let accept = lock(&self.inner.accept_task).take();
        if let Some(task) = accept {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_WAIT, task).await.is_err() {
                abort.abort();
            }
        }
        if let Some(ep) = self.inner.take_endpoint() {
            ep.close(wire::close::SHUTDOWN.into(), b"shutdown");
            let _ = tokio::time::timeout(DRAIN_WAIT, ep.wait_idle()).await;
        }
        tracing::info!(id = self.inner.id, "peer transport stopped");
    }
}
