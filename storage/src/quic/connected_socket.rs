//! A UDP socket connected to one member, for one client connection, that
//! reports the kernel's "connection refused" (an ICMP port unreachable: no
//! process listens on the member's port any more) as a [`Refusal`].
//!
//! Over TCP a crashed member's kernel answers the next segment with a RST
//! and the client fails over at once. QUIC runs over UDP, where that signal
//! is an ICMP error; the kernel hands it to a socket only if the socket is
//! connected to that peer, and quinn's own socket (unconnected, shared by
//! every connection) drops it, so the client would wait out the idle
//! timeout instead. With a connected socket per connection, the client
//! closes a connection as soon as the member's port refuses a datagram.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;

/// Set once the peer's port refused a datagram; waited on by the client.
///
/// The kernel raises the socket's error (`SO_ERROR`) and reports it to
/// epoll as an error event only (not as readable), so quinn's receive path
/// may never see it: [`Refusal::wait`] watches for it on a second
/// descriptor of the same socket.
#[derive(Debug)]
pub(crate) struct Refusal {
    refused: AtomicBool,
    notify: tokio::sync::Notify,
    /// A duplicate of the socket's descriptor, watched for errors.
    errors: tokio::net::UdpSocket,
}

impl Refusal {
    fn raise(&self) {
        self.refused.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether a refusal was seen.
    pub(crate) fn is_raised(&self) -> bool {
        self.refused.load(Ordering::SeqCst)
    }

    /// Resolves once the peer's port refused a datagram.
    pub(crate) async fn wait(&self) {
        let mut watch_errors = true;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_raised() {
                return;
            }
            tokio::select! {
                () = &mut notified => {}
                r = self.errors.ready(Interest::ERROR), if watch_errors => match r {
                    Ok(_) => {
                        match self.errors.take_error() {
                            Ok(Some(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                                self.raise()
                            }
                            Ok(Some(e)) => {
                                tracing::debug!(error = %e, "QUIC store client: UDP socket error")
                            }
                            Ok(None) | Err(_) => {}
                        }
                        // tokio keeps the error readiness until an
                        // operation reports WouldBlock: clear it, or the
                        // next `ready` would return at once.
                        let _ = self.errors.try_io(Interest::ERROR, || {
                            Err::<(), _>(io::ErrorKind::WouldBlock.into())
                        });
                    }
                    // Not watchable: rely on the receive path alone.
                    Err(_) => watch_errors = false,
                },
            }
        }
    }
}

/// The socket quinn drives: tokio readiness plus quinn-udp's send and
/// receive (as quinn's own tokio socket), keeping the errors quinn's drops.
struct ConnectedSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    refusal: Arc<Refusal>,
}

impl fmt::Debug for ConnectedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectedSocket")
            .field("peer", &self.io.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for ConnectedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable(self))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let sent = self.io.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.io).into(), transmit)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                // The socket's pending error is reported by whichever call
                // comes first, here or in a receive.
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    self.refusal.raise();
                } else {
                    // As quinn's socket: a lost datagram, which QUIC
                    // retransmits (EMSGSIZE: an MTU probe too large).
                    tracing::debug!(error = %e, "QUIC store client: UDP send error");
                }
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.io.poll_recv_ready(cx))?;
            match self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                Ok(n) => return Poll::Ready(Ok(n)),
                // Readiness was stale: poll again (registers the waker).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => self.refusal.raise(),
                // Other errors (as quinn's socket does): skip and go on.
                Err(e) => tracing::debug!(error = %e, "QUIC store client: UDP receive error"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

/// Send readiness for quinn. Each endpoint carries one connection, which
/// has one poller, so tokio's single send-readiness waker is enough.
struct Writable(Arc<ConnectedSocket>);

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Writable").finish()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.0.io.poll_send_ready(cx)
    }
}

/// A client endpoint whose socket is connected to `peer` (bound to the
/// unspecified address of its family), and the refusal it reports.
pub(crate) fn endpoint_to(peer: SocketAddr) -> io::Result<(quinn::Endpoint, Arc<Refusal>)> {
    let bind: SocketAddr = match peer {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = std::net::UdpSocket::bind(bind)?;
    sock.connect(peer)?;
    let state = UdpSocketState::new((&sock).into())?;
    sock.set_nonblocking(true)?;
    let refusal = Arc::new(Refusal {
        refused: AtomicBool::new(false),
        notify: tokio::sync::Notify::new(),
        errors: tokio::net::UdpSocket::from_std(sock.try_clone()?)?,
    });
    let socket = Arc::new(ConnectedSocket {
        io: tokio::net::UdpSocket::from_std(sock)?,
        state,
        refusal: refusal.clone(),
    });
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok((endpoint, refusal))
}
