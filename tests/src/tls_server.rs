//! An HTTPS server for the stand-ins of end-to-end tests (webhooks, a
//! kubelet): a free 127.0.0.1 port, its own thread and current-thread
//! runtime, each TLS connection handed to the caller's function on a task.
//! Stopped (and its thread joined) on drop.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A running TLS server.
pub struct TlsServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    /// Listens with `cfg`; every connection whose handshake succeeds is
    /// served by `serve` (`what` names the server in errors).
    pub fn start<F, Fut>(what: &str, cfg: rustls::ServerConfig, serve: F) -> Result<TlsServer>
    where
        F: Fn(TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").with_context(|| format!("bind {what}"))?;
        listener.set_nonblocking(true).context("nonblocking")?;
        let port = listener.local_addr().context("addr")?.port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let serve = Arc::new(serve);
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stopped => return,
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    };
                    let (acceptor, serve) = (acceptor.clone(), serve.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve(tls).await;
                        }
                    });
                }
            });
        });
        Ok(TlsServer {
            port,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
