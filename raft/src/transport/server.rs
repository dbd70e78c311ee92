//! The receiving side: accepts connections, checks each stream's hello, reads
//! message frames and snapshot files, and disconnects misbehaving peers.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::wire::{self, close, Hello, HelloError};
use super::{stop_requested, tls, Inner, ReceivedSnapshot, ALPN};

/// Read buffer of a message stream.
const MESSAGE_READ_BUF: usize = 64 << 10;
/// Read buffer (and copy chunk) of a snapshot stream.
const SNAPSHOT_READ_BUF: usize = 256 << 10;

/// Why a stream handler wants its connection closed.
#[derive(Debug)]
pub(crate) struct Reject {
    code: u32,
    reason: String,
}

impl Reject {
    fn protocol(reason: impl Into<String>) -> Reject {
        Reject {
            code: close::PROTOCOL,
            reason: reason.into(),
        }
    }
}

/// Who is at the other end of a connection.
struct PeerIdentity {
    /// The member the connection speaks for: set by its first hello; every
    /// later hello on the connection must name the same member.
    member: Mutex<Option<u64>>,
    /// The peer's end-entity certificate (checked against the member's
    /// address in CA mode).
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

type Identity = Arc<PeerIdentity>;

/// Accepts connections until stop is requested; each is served by its own task.
pub(crate) async fn accept_loop(
    inner: Arc<Inner>,
    endpoint: Endpoint,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop_requested(&mut stop) => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    conns.spawn(serve_connection(inner.clone(), incoming, stop.clone()));
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Completes the handshake and serves the connection's streams.
async fn serve_connection(
    inner: Arc<Inner>,
    incoming: quinn::Incoming,
    mut stop: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(inner.limits.connect_timeout, incoming).await {
        Err(_) => {
            tracing::debug!(%remote, "peer handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "peer handshake failed");
            return;
        }
        Ok(Ok(conn)) => conn,
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() != Some(ALPN) {
        tracing::warn!(%remote, "peer connection without the keel-raft ALPN; closing");
        conn.close(close::PROTOCOL.into(), b"alpn");
        return;
    }
    let cert = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().cloned());
    let identity: Identity = Arc::new(PeerIdentity {
        member: Mutex::new(None),
        cert,
    });
    let mut streams: JoinSet<Result<(), Reject>> = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop_requested(&mut stop) => break,
            s = conn.accept_uni() => match s {
                Ok(recv) => {
                    streams.spawn(read_messages(inner.clone(), recv, identity.clone()));
                }
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "peer connection ended");
                    break;
                }
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    streams.spawn(receive_snapshot(inner.clone(), send, recv, identity.clone()));
                }
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "peer connection ended");
                    break;
                }
            },
            Some(done) = streams.join_next(), if !streams.is_empty() => {
                if let Ok(Err(reject)) = done {
                    disconnect(&conn, remote, &identity, &reject);
                    break;
                }
            }
        }
    }
    streams.shutdown().await;
}

fn disconnect(conn: &Connection, remote: std::net::SocketAddr, identity: &Identity, r: &Reject) {
    let member = identity.member.lock().map(|g| *g).unwrap_or(None);
    tracing::warn!(%remote, ?member, reason = %r.reason, "disconnecting peer");
    conn.close(r.code.into(), r.reason.as_bytes());
}

/// Reads and checks a stream's hello: well-formed, of the expected kind,
/// addressed to this member, from a configured peer, consistent with the
/// connection's earlier hellos. Returns the sender's member ID.
async fn check_hello<R: tokio::io::AsyncRead + Unpin>(
    inner: &Inner,
    r: &mut R,
    kind: u8,
    identity: &Identity,
) -> Result<u64, Reject> {
    let hello: Hello = match wire::read_hello(r, inner.limits.connect_timeout).await {
        Ok(h) => h,
        Err(HelloError::Malformed) => return Err(Reject::protocol("bad hello")),
        Err(HelloError::Timeout) => return Err(Reject::protocol("no hello")),
        Err(HelloError::Io(e)) => return Err(Reject::protocol(format!("truncated hello: {e}"))),
    };
    if hello.kind != kind {
        return Err(Reject::protocol("hello of the wrong stream kind"));
    }
    if hello.to != inner.id {
        return Err(Reject::protocol(format!(
            "hello addressed to member {}, this is member {}",
            hello.to, inner.id
        )));
    }
    let addr = match inner.peer_addr(hello.from) {
        Some(addr) if hello.from != inner.id => addr,
        _ => {
            return Err(Reject {
                code: close::UNKNOWN_PEER,
                reason: format!("member {} is not a peer", hello.from),
            })
        }
    };
    // CA mode: the certificate must name the member's address, as the
    // dialer requires of the server's.
    if inner.verify_names
        && !identity
            .cert
            .as_ref()
            .is_some_and(|c| tls::names_ip(c, addr.ip()))
    {
        return Err(Reject {
            code: close::UNKNOWN_PEER,
            reason: format!(
                "certificate does not name {}, the address of member {}",
                addr.ip(),
                hello.from
            ),
        });
    }
    let mut id = identity
        .member
        .lock()
        .map_err(|_| Reject::protocol("identity lock poisoned"))?;
    match *id {
        None => *id = Some(hello.from),
        Some(known) if known == hello.from => {}
        Some(known) => {
            return Err(Reject::protocol(format!(
                "connection of member {known} claims to be member {}",
                hello.from
            )))
        }
    }
    Ok(hello.from)
}

/// Serves a message stream: frames are handed to [`Incoming::messages`](super::Incoming::messages)
/// in order.
async fn read_messages(
    inner: Arc<Inner>,
    recv: RecvStream,
    identity: Identity,
) -> Result<(), Reject> {
    let mut r = BufReader::with_capacity(MESSAGE_READ_BUF, recv);
    let from = check_hello(&inner, &mut r, wire::KIND_MESSAGES, &identity).await?;
    let max = inner.limits.max_message_bytes;
    let mut membership = inner.membership.load(Ordering::Acquire);
    loop {
        let len = match r.read_u32_le().await {
            Ok(len) => len as usize,
            Err(e) => {
                tracing::debug!(peer = from, error = %e, "message stream ended");
                return Ok(());
            }
        };
        if len > max {
            return Err(Reject::protocol(format!(
                "frame of {len} bytes exceeds the {max}-byte limit"
            )));
        }
        let mut payload = vec![0u8; len];
        if let Err(e) = r.read_exact(&mut payload).await {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Err(Reject::protocol("stream finished inside a frame"));
            }
            tracing::debug!(peer = from, error = %e, "message stream broke");
            return Ok(());
        }
        let now = inner.membership.load(Ordering::Acquire);
        if now != membership {
            membership = now;
            if !inner.is_peer(from) {
                return Err(Reject {
                    code: close::UNKNOWN_PEER,
                    reason: format!("member {from} was removed"),
                });
            }
        }
        if inner.messages.send((from, payload)).await.is_err() {
            return Ok(()); // Incoming dropped: nobody listens any more.
        }
    }
}

/// Deletes a partially received snapshot file unless disarmed.
struct PartialFile(Option<PathBuf>);

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Serves a snapshot stream: stores the file under the snapshot dir, fsyncs
/// it, hands it to [`Incoming::snapshots`](super::Incoming::snapshots) and
/// answers with a status byte.
async fn receive_snapshot(
    inner: Arc<Inner>,
    mut send: SendStream,
    recv: RecvStream,
    identity: Identity,
) -> Result<(), Reject> {
    let mut r = BufReader::with_capacity(SNAPSHOT_READ_BUF, recv);
    let from = check_hello(&inner, &mut r, wire::KIND_SNAPSHOT, &identity).await?;
    let max = inner.limits.max_message_bytes;
    // A stream that ends early is a protocol violation; one that breaks
    // (connection lost, stream reset by the sender) is just abandoned.
    macro_rules! read_or_end {
        ($read:expr) => {
            match $read.await {
                Ok(v) => v,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(Reject::protocol("snapshot stream truncated"))
                }
                Err(e) => {
                    tracing::debug!(peer = from, error = %e, "snapshot stream broke");
                    return Ok(());
                }
            }
        };
    }
    let meta_len = read_or_end!(r.read_u32_le()) as usize;
    if meta_len > max {
        return Err(Reject::protocol(format!(
            "snapshot metadata of {meta_len} bytes exceeds the {max}-byte limit"
        )));
    }
    let mut meta = vec![0u8; meta_len];
    read_or_end!(r.read_exact(&mut meta));
    let len = read_or_end!(r.read_u64_le());

    let seq = inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("snap-{from}-{nanos}-{seq}");
    let path = inner.snapshot_dir.join(format!("{name}.snap"));
    let partial_path = inner.snapshot_dir.join(format!("{name}.partial"));
    let mut partial = PartialFile(Some(partial_path.clone()));

    let stored = async {
        let mut f = tokio::fs::File::create(&partial_path).await?;
        let mut crc = crc32fast::Hasher::new();
        let mut chunk = vec![0u8; SNAPSHOT_READ_BUF];
        let mut remaining = len;
        while remaining > 0 {
            let want = usize::try_from(remaining).map_or(chunk.len(), |r| r.min(chunk.len()));
            let n = r.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            crc.update(&chunk[..n]);
            f.write_all(&chunk[..n]).await?;
            remaining -= n as u64;
        }
        let sum = r.read_u32_le().await?;
        f.sync_all().await?;
        drop(f);
        Ok::<bool, std::io::Error>(sum == crc.finalize())
    }
    .await;
    let ok = match stored {
        Ok(ok) => ok,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(Reject::protocol("snapshot stream truncated"))
        }
        Err(e) => {
            // Either our disk (refuse, the sender retries later) or the stream.
            tracing::warn!(peer = from, error = %e, "snapshot not stored");
            false
        }
    };
    let ok = ok
        && match tokio::fs::rename(&partial_path, &path).await {
            Ok(()) => {
                partial.0 = Some(path.clone());
                true
            }
            Err(e) => {
                tracing::warn!(peer = from, error = %e, "snapshot not stored");
                false
            }
        };
    let delivered = ok
        && inner
            .snapshots
            .send(ReceivedSnapshot {
                from,
                meta,
                path: path.clone(),
            })
            .await
            .is_ok();
    if delivered {
        partial.0 = None; // The receiver owns the file now.
        tracing::debug!(peer = from, bytes = len, path = %path.display(), "snapshot received");
    }
    let status = if delivered {
        wire::SNAPSHOT_STORED
    } else {
        wire::SNAPSHOT_REFUSED
    };
    // Dropping a finished stream still delivers it while the connection lives.
    if send.write_all(&[status]).await.is_ok() {
        let _ = send.finish();
    }
    Ok(())
}
