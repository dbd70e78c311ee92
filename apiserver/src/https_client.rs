//! One HTTP/1.1 connection over TLS to an HTTPS server the API server
//! calls (admission and authorization webhooks, kubelets): TCP dial, TLS
//! handshake and HTTP handshake, with the connection driven on its own
//! task. Each caller words the failures its own way ([`OpenError`] says
//! which step failed).

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

/// Which step of [`open`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// The TCP connection failed.
    Dial(std::io::Error),
    /// The TCP connection took longer than its timeout.
    DialTimeout,
    /// The server name is not a valid DNS name or IP address.
    Name(String),
    /// The TLS handshake failed (bad certificate, …).
    Tls(std::io::Error),
    /// The TLS handshake took longer than its timeout.
    TlsTimeout,
    /// The HTTP handshake failed.
    Http(hyper::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Dial(e) => write!(f, "dial: {e}"),
            OpenError::DialTimeout => f.write_str("dial: i/o timeout"),
            OpenError::Name(n) => write!(f, "invalid server name {n:?}"),
            OpenError::Tls(e) => write!(f, "tls: {e}"),
            OpenError::TlsTimeout => f.write_str("TLS handshake timeout"),
            OpenError::Http(e) => e.fmt(f),
        }
    }
}

/// Optional limits on the dial and on the TLS handshake.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// For the TCP connection.
    pub dial: Option<Duration>,
    /// For the TLS handshake.
    pub tls: Option<Duration>,
}

async fn within<T>(
    limit: Option<Duration>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// Connects to `dial` (host, port), verifies the server as `server_name`
/// under `tls`, and returns the request sender of an HTTP/1.1 connection
/// (`what` names the server in the log line when the connection ends).
pub async fn open<B>(
    tls: Arc<rustls::ClientConfig>,
    dial: (&str, u16),
    server_name: &str,
    timeouts: Timeouts,
    what: &'static str,
) -> Result<SendRequest<B>, OpenError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = within(timeouts.dial, tokio::net::TcpStream::connect(dial))
        .await
        .ok_or(OpenError::DialTimeout)?
        .map_err(OpenError::Dial)?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| OpenError::Name(server_name.to_string()))?;
    let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
    let stream = within(timeouts.tls, handshake)
        .await
        .ok_or(OpenError::TlsTimeout)?
        .map_err(OpenError::Tls)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(OpenError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "{what} connection ended");
        }
    });
    Ok(sender)
}
