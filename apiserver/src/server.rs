//! The HTTPS server: TLS (rustls) with optional client certificates, the
//! user of each connection, HTTP/1.1 and HTTP/2 (hyper), one axum handler.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{user_from_der, User};
use crate::conn_threads::ConnThreads;
use crate::handlers::{self, App};
use crate::store::Store;
use crate::tls;
use crate::Error;

/// `keel apiserver` settings (named after kube-apiserver's flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// `--etcd-servers`: store client URLs, `quic://host:port` (keel's
    /// QUIC client API) or `http://host:port` (etcd gRPC).
    pub etcd_servers: Vec<String>,
    /// `--etcd-cafile`: the PEM certificates a `quic://` member's
    /// certificate must chain to (a CA) or be one of (pinned).
    pub etcd_cafile: Option<PathBuf>,
    /// `--bind-address`.
    pub bind_address: IpAddr,
    /// `--secure-port` (0: any free port).
    pub secure_port: u16,
    /// `--cert-dir`: the CA and serving certificate (created if missing).
    pub cert_dir: PathBuf,
    /// `--enable-admission-plugins` / `--disable-admission-plugins`.
    pub admission: crate::admission::Options,
    /// Token files, service account keys, anonymous requests.
    pub authn: crate::authn::AuthnConfig,
    /// `--authorization-mode` (empty: RBAC).
    pub authorization_modes: Vec<crate::authz::Mode>,
    /// `--authorization-webhook-config-file` (the `Webhook` mode's endpoint).
    pub authorization_webhook_config_file: Option<PathBuf>,
    /// `--authorization-webhook-cache-authorized-ttl` and
    /// `--authorization-webhook-cache-unauthorized-ttl`.
    pub authorization_webhook_cache_ttls: (Duration, Duration),
    /// `--audit-log-path`, `--audit-log-maxsize`, `--audit-log-maxbackup`.
    pub audit: crate::audit::AuditConfig,
    /// `--kubelet-preferred-address-types`, `--kubelet-client-certificate`,
    /// `--kubelet-client-key`, `--kubelet-certificate-authority`.
    pub kubelet: crate::kubelet::KubeletConfig,
    /// `--etcd-compaction-interval`: how often the store's history is
    /// compacted (zero: never; kube-apiserver's default is 5 minutes).
    pub etcd_compaction_interval: Duration,
}

/// A bound, not yet serving API server.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Arc<App>,
    /// The cluster CA (PEM) for the `kube-root-ca.crt` ConfigMaps.
    ca_pem: Option<String>,
    /// `--etcd-compaction-interval`.
    compaction_interval: Duration,
}

impl Server {
    /// Creates the PKI if needed, connects (lazily) to the store and binds the port.
    pub async fn bind(cfg: &Config) -> Result<Server, Error> {
        tls::ensure_pki(&cfg.cert_dir, &[cfg.bind_address.to_string()])?;
        let tls_cfg = tls::server_config(&cfg.cert_dir)?;
        let store = Store::connect(&cfg.etcd_servers, cfg.etcd_cafile.as_deref())?;
        let admission = crate::admission::Chain::new(&cfg.admission)?;
        tracing::info!(plugins = ?admission.names(), "admission plugins");
        let ca_pem = std::fs::read_to_string(cfg.cert_dir.join(tls::CA_CERT))
            .map_err(|e| tracing::warn!(error = %e, "no cluster CA for kube-root-ca.crt"))
            .ok();
        let authn = crate::authn::Authenticator::load(&cfg.authn, &cfg.cert_dir)?;
        let modes = if cfg.authorization_modes.is_empty() {
            vec![crate::authz::Mode::Rbac]
        } else {
            cfg.authorization_modes.clone()
        };
        let webhook = match &cfg.authorization_webhook_config_file {
            Some(p) => {
                let (allowed, other) = cfg.authorization_webhook_cache_ttls;
                Some(crate::authz::webhook::Webhook::load(p)?.with_cache(
                    crate::authz::decision_cache::DecisionCache::new(allowed, other),
                ))
            }
            None => None,
        };
        let authz = crate::authz::Authorizer::new(modes, webhook).map_err(Error::Authz)?;
        let audit = crate::audit::AuditLog::open(&cfg.audit).map_err(Error::Audit)?;
        let kubelet = crate::kubelet::KubeletClient::new(&cfg.kubelet).map_err(Error::Kubelet)?;
        let addr = SocketAddr::new(cfg.bind_address, cfg.secure_port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Server {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls_cfg)),
            app: Arc::new(App {
                store,
                server_address: local.to_string(),
                ready: Default::default(),
                metrics: Default::default(),
                caches: Default::default(),
                admission,
                authn,
                authz,
                audit,
                kubelet,
                stopping: Default::default(),
            }),
            ca_pem,
            compaction_interval: cfg.etcd_compaction_interval,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` resolves. Creates the system namespaces in the
    /// background as soon as the store answers (`/readyz` turns 200 then).
    ///
    /// When it stops, so does everything it started: controllers, open
    /// connections and the watch caches (which end their store watches), so
    /// a process that goes on (`keel up`) can stop the store after it
    /// quietly.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let background = Background::default();
        // However serve ends (returns, or its future is dropped), what it
        // started stops.
        let _stop_on_exit = background.stop.clone().drop_guard();
        let app = self.app.clone();
        crate::controllers::spawn(
            app.clone(),
            self.ca_pem.clone(),
            Default::default(),
            &background,
        );
        if !self.compaction_interval.is_zero() {
            background.spawn(crate::compactor::run(
                app.store.clone(),
                self.compaction_interval,
                background.stop.clone(),
            ));
        }
        let ca_pem = self.ca_pem.clone();
        let tasks = background.clone();
        background.spawn(async move {
            loop {
                let boot = async {
                    handlers::write::bootstrap(&app).await?;
                    if app.authz.rbac_enabled() {
                        crate::authz::bootstrap::ensure(&app).await?;
                        // admin/edit/view have their rules before we are ready.
                        crate::authz::aggregation::reconcile(&app).await?;
                    }
                    crate::controllers::bootstrap(&app, ca_pem.as_deref()).await?;
                    Ok::<(), crate::status::ApiError>(())
                };
                match boot.await {
                    Ok(()) => {
                        app.ready.store(true, Ordering::Release);
                        tracing::info!("system namespaces ready");
                        if app.authz.rbac_enabled() {
                            tasks.spawn(crate::authz::aggregation::run(app.clone()));
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "waiting for the store");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let router: Router = Router::new()
            .fallback(handlers::handle)
            .with_state(self.app.clone());
        tokio::pin!(shutdown);
        let connections = tokio_util::task::TaskTracker::new();
        let conn_threads = ConnThreads::per_core().map_err(Error::ConnThreads)?;
        let shared = tokio::runtime::Handle::current();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => {
                    self.drain(&connections).await;
                    // What the connection threads still run ends with
                    // them, while the shared runtime's timers still tick.
                    conn_threads.stop().await;
                    background.stop.cancel();
                    background.tracker.close();
                    if tokio::time::timeout(Duration::from_secs(5), background.tracker.wait())
                        .await
                        .is_err()
                    {
                        tracing::warn!("background tasks still running 5 s after the stop");
                    }
                    self.app.caches.clear().await;
                    return Ok(());
                }
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            widen_send_buffer(&tcp);
            // Moved to its connection thread's runtime there.
            let tcp = match tcp.into_std() {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "could not hand a connection over");
                    continue;
                }
            };
            let acceptor = self.acceptor.clone();
            let (router, shared) = (router.clone(), shared.clone());
            let (stopping, stop) = (self.app.stopping.clone(), background.stop.clone());
            // Tracked apart from the background tasks: a stopping server
            // waits for its connections to drain before it stops the rest.
            conn_threads.spawn(|executor| {
                connections.track_future(stop.clone().run_until_cancelled_owned(async move {
                    let tcp = match tokio::net::TcpStream::from_std(tcp) {
                        Ok(tcp) => tcp,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "could not register a connection");
                            return;
                        }
                    };
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let user = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| user_from_der(der))
                        .unwrap_or_else(User::anonymous);
                    let svc = hyper::service::service_fn(
                        move |mut req: hyper::Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(user.clone());
                            req.extensions_mut().insert(crate::handlers::PeerAddr(peer));
                            ConnThreads::handler(
                                &shared,
                                tower::ServiceExt::oneshot(router.clone(), req.map(Body::new)),
                            )
                        },
                    );
                    let builder = hyper_util::server::conn::auto::Builder::new(executor);
                    let conn = builder
                        .serve_connection(TokioIo::new(crate::coalesce::Coalesce::new(tls)), svc);
                    tokio::pin!(conn);
                    let ended = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = stopping.cancelled() => {
                            // HTTP/2: GOAWAY, then the streams in flight finish;
                            // HTTP/1.1: the request in flight finishes, then the
                            // connection closes.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }))
            });
        }
    }

    /// The first half of a stop, as kube-apiserver's: no new connections
    /// (the accept loop has ended), `/readyz` fails, watches and log streams
    /// end, and the requests in flight get up to [`DRAIN`] to finish, on
    /// connections closed as they do.
    async fn drain(&self, connections: &tokio_util::task::TaskTracker) {
        self.app.stopping.cancel();
        self.app.caches.end_watches().await;
        connections.close();
        let started = std::time::Instant::now();
        match tokio::time::timeout(DRAIN, connections.wait()).await {
            Ok(()) => tracing::info!(took = ?started.elapsed(), "requests in flight drained"),
            Err(_) => tracing::warn!(
                connections = connections.len(),
                "requests still in flight {DRAIN:?} after the stop; cutting them"
            ),
        }
    }
}

/// How long a stopping server waits for the requests in flight.
/// kube-apiserver waits as long as its request timeout; `keel up` stops an
/// API server that takes more than 5 s, so this stays below that.
const DRAIN: Duration = Duration::from_secs(3);

/// What a server starts and stops with it (controllers, connections): tasks
/// dropped once `stop` is cancelled, tracked so that the server can wait for
/// them to be gone.
#[derive(Clone, Default)]
pub(crate) struct Background {
    stop: tokio_util::sync::CancellationToken,
    tracker: tokio_util::task::TaskTracker,
}

impl Background {
    /// Spawns `fut`, to run until the server stops.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            stop.run_until_cancelled_owned(fut).await;
        });
    }
}

/// Gives an accepted connection the send buffer that the kernel's
/// autotuning would reach for it (`tcp_wmem`'s maximum) from the start.
///
/// A connection starts with a 16 KiB send buffer that autotuning grows only
/// as the connection carries bulk data, so the first large responses on a
/// connection (a list of 10,000 pods is 20 MB), which with kubectl means
/// every list (one connection per command), went out in small writes with
/// the server idle in between: 100-230 ms against 30-40 ms once the buffer
/// had grown (`keel-bench kube-list`, 2 cores). Set only where the
/// administrator's `wmem_max` allows the whole autotuning maximum, so it
/// never lowers the ceiling a connection could grow to.
fn widen_send_buffer(tcp: &tokio::net::TcpStream) {
    static SIZE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let size = *SIZE.get_or_init(|| {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let autotune_max: usize = read("/proc/sys/net/ipv4/tcp_wmem")?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()?;
        let wmem_max: usize = read("/proc/sys/net/core/wmem_max")?.trim().parse().ok()?;
        // The kernel doubles the value it is given (for its bookkeeping)
        // after capping it at wmem_max.
        let ask = autotune_max / 2;
        (ask <= wmem_max).then_some(ask)
    });
    if let Some(size) = size {
        if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(size) {
            tracing::debug!(error = %e, "could not widen a connection's send buffer");
        }
    }
}
