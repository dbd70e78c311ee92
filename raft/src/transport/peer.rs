//! The sending side: one task per peer that owns the outgoing connection's
//! message stream, and snapshot streams opened on the same connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, SendStream};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::wire::{self, Hello};
use super::{stop_requested, tls, Inner, TransportError};

/// Frames are coalesced into writes of up to this many bytes.
const BATCH_BYTES: usize = 256 << 10;
/// Snapshot files are read and sent in chunks of this size.
const SNAPSHOT_CHUNK: usize = 256 << 10;
/// How long a stopping peer task waits for its queued frames to be acknowledged.
const LINGER: Duration = Duration::from_secs(1);
/// Priority of the message stream; snapshot streams use the default, 0.
/// quinn sends pending data of higher-priority streams first.
const MESSAGE_PRIORITY: i32 = 1;

/// State of one peer shared by its task, `send_snapshot` and the public
/// accessors.
pub(crate) struct PeerShared {
    pub id: u64,
    pub addr: SocketAddr,
    /// An outgoing connection is established.
    pub reachable: AtomicBool,
    /// Messages dropped: queue full, oversized, or lost with a broken connection.
    pub dropped: AtomicU64,
    /// Payload bytes in the send queue.
    pub queued_bytes: AtomicUsize,
    /// The outgoing connection, shared by the message stream and snapshots.
    /// Held across a dial, which serializes dials to this peer.
    conn: tokio::sync::Mutex<Option<Connection>>,
}

impl PeerShared {
    pub(crate) fn new(id: u64, addr: SocketAddr) -> PeerShared {
        PeerShared {
            id,
            addr,
            reachable: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The live outgoing connection, dialing it if there is none.
    pub(crate) async fn connection(&self, inner: &Inner) -> Result<Connection, TransportError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
            self.reachable.store(false, Ordering::Relaxed);
            *slot = None;
        }
        let endpoint = inner.endpoint().ok_or(TransportError::Shutdown)?;
        let server_name = if inner.verify_names {
            self.addr.ip().to_string()
        } else {
            tls::AUTO_SERVER_NAME.to_string()
        };
        let connect_err = |reason: String| TransportError::Connect {
            id: self.id,
            reason,
        };
        let connecting = endpoint
            .connect(self.addr, &server_name)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = match tokio::time::timeout(inner.limits.connect_timeout, connecting).await {
            Err(_) => return Err(connect_err("handshake timed out".into())),
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Ok(Ok(c)) => c,
        };
        tracing::debug!(peer = self.id, addr = %self.addr, "connected");
        self.reachable.store(true, Ordering::Relaxed);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets `conn` if it is still the current connection.
    async fn forget(&self, conn: &Connection) {
        let mut slot = self.conn.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            *slot = None;
            self.reachable.store(false, Ordering::Relaxed);
        }
    }

    /// Closes the outgoing connection (after the caller has flushed its streams).
    async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            c.close(wire::close::SHUTDOWN.into(), b"bye");
        }
        self.reachable.store(false, Ordering::Relaxed);
    }
}

/// Opens the message stream on the (possibly new) connection and writes its hello.
async fn open_message_stream(
    inner: &Inner,
    peer: &PeerShared,
) -> Result<(Connection, SendStream), TransportError> {
    let conn = peer.connection(inner).await?;
    let opened = async {
        let mut send = conn.open_uni().await?;
        // Only fails if the stream is already closed; the write below reports that.
        let _ = send.set_priority(MESSAGE_PRIORITY);
        let hello = Hello {
            kind: wire::KIND_MESSAGES,
            from: inner.id,
            to: peer.id,
        };
        send.write_all(&hello.encode()).await?;
        Ok::<_, TransportError>(send)
    }
    .await;
    match opened {
        Ok(send) => Ok((conn, send)),
        Err(e) => {
            peer.forget(&conn).await;
            Err(e)
        }
    }
}

impl PeerShared {
    /// Admits a message of `len` bytes to the send queue's byte budget
    /// (a single message is always admitted into an empty queue).
    pub(crate) fn admit(&self, len: usize, budget: usize) -> bool {
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > budget {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Returns a message's bytes to the budget (it left the queue).
    pub(crate) fn release(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

/// The receiving end of a peer's send queue; keeps the byte count.
struct Queue {
    rx: mpsc::Receiver<Vec<u8>>,
    peer: Arc<PeerShared>,
}

impl Queue {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        let m = self.rx.recv().await?;
        self.peer.release(m.len());
        Some(m)
    }

    fn try_recv(&mut self) -> Option<Vec<u8>> {
        let m = self.rx.try_recv().ok()?;
        self.peer.release(m.len());
        Some(m)
    }

    /// Empties the queue, returning how many messages were dropped.
    fn drain(&mut self) -> u64 {
        let mut n = 0;
        while self.try_recv().is_some() {
            n += 1;
        }
        n
    }
}

/// Finishes the message stream, waits (bounded) until the peer has
/// acknowledged everything, then closes the connection: closing first would
/// drop frames the peer has not read yet.
async fn linger_and_close(peer: &PeerShared, mut send: SendStream) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(LINGER, send.stopped()).await;
    }
    peer.close().await;
}

/// Whether the peer closed the connection because it refuses us (bad
/// certificate, unknown member, protocol violation) rather than because it
/// went away: such a peer is redialed only after a backoff.
fn refused(reason: Option<&quinn::ConnectionError>) -> bool {
    match reason {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            c.error_code != wire::close::SHUTDOWN.into()
        }
        // A transport-level error sent by the peer, e.g. a TLS alert about
        // our certificate.
        Some(quinn::ConnectionError::ConnectionClosed(_)) => true,
        _ => false,
    }
}

/// The per-peer sender task: dials lazily on the first message, writes queued
/// messages as frames on one long-lived uni stream, and redials when the
/// connection breaks. A failed dial or a refusal by the peer drops what is
/// queued and delays the next dial by an exponential backoff; a connection
/// that merely went away is redialed on the next message.
pub(crate) async fn run(
    inner: Arc<Inner>,
    peer: Arc<PeerShared>,
    rx: mpsc::Receiver<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = Queue {
        rx,
        peer: peer.clone(),
    };
    let limits = &inner.limits;
    let mut backoff = limits.backoff_min;
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    loop {
        // Idle until there is something to send: connections are dialed lazily.
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = stop_requested(&mut stop) => break,
        };
        let opened = tokio::select! {
            r = open_message_stream(&inner, &peer) => r,
            _ = stop_requested(&mut stop) => break,
        };
        let (conn, mut send) = match opened {
            Ok(x) => x,
            Err(e) => {
                // Like etcd, drop what is queued for an unreachable peer: Raft
                // resends, and stale messages only delay the fresh ones.
                let n = 1 + rx.drain();
                peer.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(peer = peer.id, error = %e, dropped = n, retry_in = ?backoff, "peer unreachable");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_requested(&mut stop) => break,
                }
                backoff = (backoff * 2).min(limits.backoff_max);
                continue;
            }
        };
        let connected_at = tokio::time::Instant::now();
        // Frames written on this connection, for the drop count if refused.
        let mut written_frames = 0u64;
        let mut next = Some(first);
        loop {
            buf.clear();
            let mut n = 0u64;
            if let Some(m) = next.take() {
                wire::push_frame(&mut buf, &m);
                n += 1;
            }
            while buf.len() < BATCH_BYTES {
                match rx.try_recv() {
                    Some(m) => {
                        wire::push_frame(&mut buf, &m);
                        n += 1;
                    }
                    None => break,
                }
            }
            let written = tokio::select! {
                r = send.write_all(&buf) => r,
                _ = stop_requested(&mut stop) => {
                    linger_and_close(&peer, send).await;
                    return;
                }
            };
            if let Err(e) = written {
                peer.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(peer = peer.id, error = %e, lost = n, "message stream broke");
                break;
            }
            written_frames += n;
            tokio::select! {
                biased;
                _ = stop_requested(&mut stop) => {
                    linger_and_close(&peer, send).await;
                    return;
                }
                m = rx.recv() => match m {
                    Some(m) => next = Some(m),
                    None => {
                        linger_and_close(&peer, send).await;
                        return;
                    }
                },
                e = conn.closed() => {
                    tracing::debug!(peer = peer.id, error = %e, "connection closed");
                    break;
                }
            }
        }
        peer.forget(&conn).await;
        let reason = conn.close_reason();
        if refused(reason.as_ref()) {
            let n = written_frames + rx.drain();
            peer.dropped.fetch_add(n, Ordering::Relaxed);
            if let Some(reason) = reason {
                tracing::warn!(peer = peer.id, %reason, dropped = n, retry_in = ?backoff, "peer refused the connection");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_requested(&mut stop) => break,
            }
            backoff = (backoff * 2).min(limits.backoff_max);
        } else if connected_at.elapsed() >= limits.backoff_max {
            // It was a healthy connection: start over with short delays.
            backoff = limits.backoff_min;
        }
    }
    peer.close().await;
}

/// Sends one snapshot on its own bi stream of the peer's connection; see
/// [`Transport::send_snapshot`](super::Transport::send_snapshot).
pub(crate) async fn send_snapshot(
    inner: &Inner,
    peer: &PeerShared,
    meta: &[u8],
    path: &Path,
) -> Result<(), TransportError> {
    let io = |source| TransportError::Io {
        path: path.to_path_buf(),
        source,
    };
    if meta.len() > inner.limits.max_message_bytes {
        return Err(TransportError::TooLarge {
            len: meta.len(),
            max: inner.limits.max_message_bytes,
        });
    }
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let len = file.metadata().await.map_err(io)?.len();

    let conn = peer.connection(inner).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut head = Vec::with_capacity(wire::HELLO_LEN + 4 + meta.len() + 8);
    head.extend_from_slice(
        &Hello {
            kind: wire::KIND_SNAPSHOT,
            from: inner.id,
            to: peer.id,
        }
        .encode(),
    );
    wire::push_frame(&mut head, meta);
    head.extend_from_slice(&len.to_le_bytes());
    send.write_all(&head).await?;

    let mut crc = crc32fast::Hasher::new();
    let mut chunk = vec![0u8; SNAPSHOT_CHUNK];
    let mut sent = 0u64;
    while sent < len {
        let want = usize::try_from(len - sent).map_or(SNAPSHOT_CHUNK, |r| r.min(SNAPSHOT_CHUNK));
        let n = file.read(&mut chunk[..want]).await.map_err(io)?;
        if n == 0 {
            break;
        }
        crc.update(&chunk[..n]);
        send.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    if sent != len || file.read(&mut chunk[..1]).await.map_err(io)? != 0 {
        // The receiver will see a truncated stream and discard it.
        let _ = send.reset(wire::close::PROTOCOL.into());
        return Err(TransportError::SnapshotChanged {
            path: path.to_path_buf(),
        });
    }
    send.write_all(&crc.finalize().to_le_bytes()).await?;
    // Only fails if the stream was already reset by the peer; the read below reports it.
    let _ = send.finish();
    let mut status = [0u8; 1];
    recv.read_exact(&mut status).await?;
    if status[0] != wire::SNAPSHOT_STORED {
        return Err(TransportError::SnapshotRefused(peer.id));
    }
    tracing::debug!(peer = peer.id, bytes = len, "snapshot delivered");
    Ok(())
}
