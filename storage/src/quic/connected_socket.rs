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
use std::future::Future;
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
    /// The socket reported some error (a refusal or another).
    errored: AtomicBool,
    notify: tokio::sync::Notify,
    /// A duplicate of the socket's descriptor, watched for errors (Linux).
    errors: Option<tokio::net::UdpSocket>,
}

impl Refusal {
    fn new(errors: Option<tokio::net::UdpSocket>) -> Refusal {
        Refusal {
            refused: AtomicBool::new(false),
            errored: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
            errors,
        }
    }

    /// Takes note of an error the socket reported: a refusal is raised;
    /// any error leaves the socket "write closed" for tokio (see
    /// [`Writable`]).
    fn note(&self, e: &io::Error) {
        self.errored.store(true, Ordering::SeqCst);
        if e.kind() == io::ErrorKind::ConnectionRefused {
            self.refused.store(true, Ordering::SeqCst);
            self.notify.notify_waiters();
        } else {
            tracing::debug!(error = %e, "QUIC store client: UDP socket error");
        }
    }

    /// Resolves once a refusal was raised by the send or receive path.
    async fn notified_refusal(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }

    /// Whether a refusal was seen.
    fn is_raised(&self) -> bool {
        self.refused.load(Ordering::SeqCst)
    }

    /// Resolves once the peer's port refused a datagram.
    pub(crate) async fn wait(&self) {
        tokio::select! {
            () = self.notified_refusal() => {}
            () = self.watch_errors() => {}
        }
    }

    /// Reads the socket's errors as the kernel reports them; never ends.
    async fn watch_errors(&self) {
        let Some(errors) = &self.errors else {
            return std::future::pending().await;
        };
        loop {
            if errors.ready(Interest::ERROR).await.is_err() {
                // Not watchable: the send and receive paths still note.
                return std::future::pending().await;
            }
            // Taken inside `try_io`: tokio clears the error readiness only
            // when this reports WouldBlock (no error left), so one that
            // arrives meanwhile is seen on the next round, not lost.
            let taken = errors.try_io(Interest::ERROR, || match errors.take_error() {
                Ok(Some(e)) => Ok(e),
                Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            });
            match taken {
                Ok(e) => self.note(&e),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC store client: SO_ERROR unreadable");
                    return std::future::pending().await;
                }
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
        Box::pin(Writable {
            socket: self,
            backoff: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let sent = self.io.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.io).into(), transmit)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                // The socket's pending error is reported by whichever call
                // comes first, here or in a receive. Otherwise as quinn's
                // socket: a lost datagram, which QUIC retransmits (EMSGSIZE:
                // an MTU probe too large).
                self.refusal.note(&e);
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
                // Other errors (as quinn's socket does): skip and go on.
                Err(e) => self.refusal.note(&e),
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
///
/// Once the socket reported an error, tokio takes it as "write closed" for
/// good and reports it writable at every poll; quinn polls only after a
/// send would block, and would then retry at once, for as long as the send
/// buffer stays full. So after an error, a send that would block is retried
/// after a millisecond instead.
struct Writable {
    socket: Arc<ConnectedSocket>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.socket.refusal.errored.load(Ordering::SeqCst) {
            let sleep = this.backoff.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep(std::time::Duration::from_millis(1)))
            });
            std::task::ready!(sleep.as_mut().poll(cx));
            this.backoff = None;
            return Poll::Ready(Ok(()));
        }
        this.socket.io.poll_send_ready(cx)
    }
}

/// A client endpoint whose socket is connected to `peer` (bound to the
/// unspecified address of its family), and the refusal it reports.
///
/// Linux only: elsewhere (the BSDs, macOS) a connected socket refuses the
/// destination address quinn-udp gives every send, so the socket stays
/// unconnected there and no refusal is ever raised (the idle timeout
/// notices a dead member, as with quinn's own socket).
pub(crate) fn endpoint_to(peer: SocketAddr) -> io::Result<(quinn::Endpoint, Arc<Refusal>)> {
    let bind: SocketAddr = match peer {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = std::net::UdpSocket::bind(bind)?;
    let linux = cfg!(target_os = "linux");
    if linux {
        sock.connect(peer)?;
    }
    let state = UdpSocketState::new((&sock).into())?;
    sock.set_nonblocking(true)?;
    let errors = if linux {
        Some(tokio::net::UdpSocket::from_std(sock.try_clone()?)?)
    } else {
        None
    };
    let refusal = Arc::new(Refusal::new(errors));
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
