//! The `keel` binary: CLI dispatch only.

mod memcpy;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use keel_storage::member::auto_compaction::AutoCompaction;
use keel_storage::member::{restore_snapshot, Member, MemberConfig};

/// mimalloc: less fragmentation than glibc's per-thread arenas under keel's
/// many small, long-lived allocations (keys, values, index nodes).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `keel --version`: the crate version, marked when crash points are compiled in.
const VERSION: &str = if keel_raft::failpoint::ENABLED {
    concat!(env!("CARGO_PKG_VERSION"), " (failpoints)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// keel: the Kubernetes architecture rebuilt in Rust, storage first.
#[derive(Parser, Debug)]
#[command(name = "keel", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a local cluster in the foreground: a 3-member store cluster.
    Up {
        /// Where the cluster keeps its data.
        #[arg(long, default_value = "./keel-data")]
        data_dir: PathBuf,
        /// Client port of the first member (etcd's 2379); the others use
        /// +100 and +200, peers the client port + 1, the QUIC client API
        /// the client port + 2.
        #[arg(long, default_value_t = 2379)]
        client_port: u16,
    },
    /// Run one store member; flags mirror etcd's.
    Store(Box<StoreArgs>),
    /// Run the Kubernetes API server on a store; flags mirror kube-apiserver's.
    Apiserver(Box<ApiserverArgs>),
    /// Write a kubeconfig (embedded CA, admin client certificate) for an apiserver.
    Kubeconfig(KubeconfigArgs),
    /// Snapshot tools.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    /// Rebuild a member's data dir from a snapshot (`etcdctl snapshot save`).
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The new member's data dir (must not hold a WAL).
        #[arg(long)]
        data_dir: PathBuf,
        /// The restored member's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The restored member's peer URLs.
        #[arg(long, default_value = "quic://127.0.0.1:2380")]
        initial_advertise_peer_urls: String,
        /// The restored cluster (`name=url,...`).
        #[arg(long, default_value = "")]
        initial_cluster: String,
        /// The restored cluster's token.
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
    },
}

/// `keel apiserver` flags, named as kube-apiserver's.
#[derive(Args, Debug, Clone)]
struct ApiserverArgs {
    /// Store client URLs (comma-separated): `quic://host:port` for keel's
    /// native QUIC client API (needs --etcd-cafile), `http://host:port`
    /// for the etcd gRPC API (keel or a real etcd).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    etcd_servers: String,
    /// PEM certificates that the members' QUIC certificates must chain to
    /// (a CA) or be one of (pinned self-signed certificates).
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// The HTTPS port.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: std::net::IpAddr,
    /// Where the CA and serving certificate live (created on first start).
    #[arg(long, default_value = "./keel-pki")]
    cert_dir: PathBuf,
    /// Log level (`error`, `warn`, `info`, `debug`).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Admission plugins to turn on besides the defaults (NamespaceLifecycle,
    /// LimitRanger, ServiceAccount, DefaultTolerationSeconds, ResourceQuota);
    /// comma-separated, e.g. `AlwaysPullImages`.
    #[arg(long, value_delimiter = ',')]
    enable_admission_plugins: Vec<String>,
    /// Admission plugins to turn off, even default ones (comma-separated).
    #[arg(long, value_delimiter = ',')]
    disable_admission_plugins: Vec<String>,
    /// Static bearer tokens: CSV `token,user,uid[,"group1,group2"]`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// More keys that verify service account tokens (PEM, public or private; repeatable).
    #[arg(long)]
    service_account_key_file: Vec<PathBuf>,
    /// The key that signs service account tokens (PKCS#8 PEM, ECDSA or RSA;
    /// default: `sa.key` in the cert dir, created on first start).
    #[arg(long)]
    service_account_signing_key_file: Option<PathBuf>,
    /// Issuer of service account tokens (repeatable; the first one signs).
    #[arg(long)]
    service_account_issuer: Vec<String>,
    /// Audiences the API accepts in service account tokens (default: the issuer).
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// The `jwks_uri` of the service account issuer discovery document
    /// (default: https://<this server>/openid/v1/jwks).
    #[arg(long)]
    service_account_jwks_uri: Option<String>,
    /// The longest lifetime of a requested service account token (Go duration, e.g. `48h`).
    #[arg(long)]
    service_account_max_token_expiration: Option<String>,
    /// Serve requests without credentials as `system:anonymous`.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    anonymous_auth: bool,
    /// Authorizers, in order (comma list): `RBAC`, `AlwaysAllow`, `Webhook`.
    #[arg(long, default_value = "RBAC")]
    authorization_mode: String,
    /// A kubeconfig naming the HTTPS endpoint of the `Webhook` mode.
    #[arg(long)]
    authorization_webhook_config_file: Option<PathBuf>,
    /// How long the webhook's "allowed" answers are reused (Go duration; 0s: never).
    #[arg(long, default_value = "5m")]
    authorization_webhook_cache_authorized_ttl: String,
    /// How long the webhook's other answers are reused (Go duration; 0s: never).
    #[arg(long, default_value = "30s")]
    authorization_webhook_cache_unauthorized_ttl: String,
    /// The audit log: one `audit.k8s.io/v1` Event (Metadata level) per
    /// request, as a JSON line; `-` is standard output. Unset: no audit log.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// Megabytes before the audit log is rotated (0: never).
    #[arg(long, default_value_t = 100)]
    audit_log_maxsize: u64,
    /// Rotated audit logs kept (0: all).
    #[arg(long, default_value_t = 0)]
    audit_log_maxbackup: usize,
    /// The node address types to reach kubelets at, in order (comma list of
    /// Hostname, InternalDNS, InternalIP, ExternalDNS, ExternalIP).
    #[arg(
        long,
        default_value = "Hostname,InternalDNS,InternalIP,ExternalDNS,ExternalIP"
    )]
    kubelet_preferred_address_types: String,
    /// The client certificate (PEM) presented to kubelets.
    #[arg(long)]
    kubelet_client_certificate: Option<PathBuf>,
    /// The key of --kubelet-client-certificate (PEM).
    #[arg(long)]
    kubelet_client_key: Option<PathBuf>,
    /// CA certificates (PEM) kubelets' serving certificates must chain to;
    /// unset: kubelets' certificates are not verified (as kube-apiserver).
    #[arg(long)]
    kubelet_certificate_authority: Option<PathBuf>,
    /// How often the store's history is compacted (Go duration; 0: never).
    /// API servers sharing a store take turns, as kube-apiserver's do.
    #[arg(long, default_value = "5m")]
    etcd_compaction_interval: String,
}

/// `keel kubeconfig` flags.
#[derive(Args, Debug, Clone)]
struct KubeconfigArgs {
    /// The apiserver's cert dir (its CA signs the admin certificate).
    #[arg(long, default_value = "./keel-pki")]
    cert_dir: PathBuf,
    /// The apiserver URL.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    server: String,
    /// Where to write the kubeconfig (`-`: stdout).
    #[arg(long, short, default_value = "-")]
    output: String,
}

/// `keel store`'s flags alone, to build them from `keel up`'s defaults.
#[derive(Parser, Debug)]
struct StoreOnly {
    #[command(flatten)]
    args: StoreArgs,
}

/// `keel store` flags, named as etcd's.
#[derive(Args, Debug, Clone)]
struct StoreArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, default_value = "http://localhost:2379")]
    listen_client_urls: String,
    /// Client URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2379")]
    advertise_client_urls: String,
    /// URLs (`quic://host:port`, comma-separated) to serve keel's native
    /// QUIC client API on, next to the gRPC API (off unless given). The
    /// endpoint presents --cert-file/--key-file, else a self-signed
    /// certificate generated in `<data-dir>/fixtures/client`.
    #[arg(long, default_value = "")]
    listen_client_quic_urls: String,
    /// URLs to listen on for peer traffic (`quic://host:port`).
    #[arg(long, default_value = "quic://localhost:2380")]
    listen_peer_urls: String,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "quic://localhost:2380")]
    initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (`name=url,...`).
    #[arg(long, default_value = "")]
    initial_cluster: String,
    /// Initial cluster state (`new` or `existing`).
    #[arg(long, default_value = "new")]
    initial_cluster_state: String,
    /// Initial cluster token.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// Client TLS certificate (today: of the QUIC client endpoint only).
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// Client TLS key (with --cert-file).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Client TLS trusted CA.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Peer TLS certificate.
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// Peer TLS key.
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// Peer TLS trusted CA.
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Peer TLS with generated self-signed certificates.
    #[arg(long)]
    peer_auto_tls: bool,
    /// `periodic` (retention is a duration, or a number of hours) or
    /// `revision` (retention is a number of revisions).
    #[arg(long, default_value = "periodic")]
    auto_compaction_mode: String,
    /// How much history the leader keeps when it compacts on its own
    /// (`0`: it never does; see --auto-compaction-mode).
    #[arg(long, default_value = "0")]
    auto_compaction_retention: String,
    /// Committed entries between snapshots.
    #[arg(long, default_value_t = 100_000)]
    snapshot_count: u64,
    /// Raise the NOSPACE alarm when the store exceeds this many bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    quota_backend_bytes: u64,
    /// Largest client request accepted, in bytes.
    #[arg(long, default_value_t = 1536 * 1024)]
    max_request_bytes: usize,
    /// Most operations in one txn branch.
    #[arg(long, default_value_t = 128)]
    max_txn_ops: usize,
    /// Heartbeat interval, in ms.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Election timeout, in ms.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Bytes preallocated per WAL segment (keel-specific).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    experimental_wal_segment_size: u64,
    /// Log level (`error`, `warn`, `info`, `debug`).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

fn parse_cluster(s: &str) -> Result<Vec<(String, String)>> {
    split_urls(s)
        .into_iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(n, u)| (n.to_string(), u.to_string()))
                .with_context(|| format!("--initial-cluster entry {kv:?} is not name=url"))
        })
        .collect()
}

/// `http://host:port` → a bindable `host:port`.
fn listen_addr(url: &str) -> Result<String> {
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            bail!("client TLS (--listen-client-urls {url}) is not supported yet; use http://");
        }
        bail!("--listen-client-urls {url}: expected http://host:port");
    };
    let hostport = rest.trim_end_matches('/');
    if !hostport.contains(':') {
        bail!("--listen-client-urls {url}: a port is required");
    }
    Ok(hostport.to_string())
}

impl StoreArgs {
    fn config(&self) -> Result<MemberConfig> {
        let cluster = parse_cluster(&self.initial_cluster)?;
        let peer_urls = split_urls(&self.initial_advertise_peer_urls);
        if !cluster.is_empty() && !cluster.iter().any(|(n, _)| *n == self.name) {
            bail!("--initial-cluster has no entry for --name {}", self.name);
        }
        if let Some((_, url)) = cluster.iter().find(|(n, _)| *n == self.name) {
            if !peer_urls.contains(url) {
                bail!(
                    "--initial-cluster gives {} the peer URL {url}, but --initial-advertise-peer-urls is {}",
                    self.name,
                    self.initial_advertise_peer_urls
                );
            }
        }
        // Peers always speak QUIC (TLS 1.3). `quic://` is the native scheme;
        // `http://` and `https://` are accepted as the same, because etcd's
        // tools (`etcdctl member add --peer-urls`) refuse any other scheme.
        for u in split_urls(&self.listen_peer_urls).iter().chain(&peer_urls) {
            if !["quic://", "https://", "http://"]
                .iter()
                .any(|s| u.starts_with(s))
            {
                bail!("peer URL {u}: expected quic://host:port");
            }
        }
        let initial_cluster_new = match self.initial_cluster_state.as_str() {
            "new" => true,
            "existing" => false,
            other => bail!("--initial-cluster-state must be new or existing, not {other}"),
        };
        if self.trusted_ca_file.is_some() {
            bail!("client certificate authentication (--trusted-ca-file) is not supported yet");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("--cert-file and --key-file go together");
        }
        if self.cert_file.is_some() && self.listen_client_quic_urls.trim().is_empty() {
            bail!("--cert-file applies to the QUIC client endpoint only (--listen-client-quic-urls); the gRPC API is plain http:// for now");
        }
        let peer_tls_files = match (&self.peer_cert_file, &self.peer_key_file, &self.peer_trusted_ca_file) {
            (Some(c), Some(k), Some(ca)) => Some((c.clone(), k.clone(), ca.clone())),
            (None, None, None) => None,
            _ => bail!("peer TLS needs all of --peer-cert-file, --peer-key-file and --peer-trusted-ca-file"),
        };
        if peer_tls_files.is_some() && self.peer_auto_tls {
            bail!("--peer-auto-tls and --peer-cert-file are exclusive");
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.keel", self.name)));
        Ok(MemberConfig {
            name: self.name.clone(),
            data_dir,
            client_urls: split_urls(&self.advertise_client_urls),
            peer_urls,
            initial_cluster: cluster,
            initial_cluster_token: self.initial_cluster_token.clone(),
            snapshot_count: self.snapshot_count.max(1),
            quota_backend_bytes: self.quota_backend_bytes,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            wal_segment_size: self.experimental_wal_segment_size.max(64 * 1024),
            listen_peer_urls: split_urls(&self.listen_peer_urls),
            initial_cluster_new,
            peer_tls_files,
            auto_compaction: AutoCompaction::parse(
                &self.auto_compaction_mode,
                &self.auto_compaction_retention,
            )
            .map_err(anyhow::Error::msg)?,
            ..MemberConfig::default()
        })
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `quic://host:port` → a socket address to bind.
fn quic_listen_addr(url: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let (_, hostport) = keel_storage::quic::parse_quic_url(url)
        .map_err(|e| anyhow::anyhow!("--listen-client-quic-urls: {e}"))?;
    hostport
        .to_socket_addrs()
        .with_context(|| format!("--listen-client-quic-urls {url}"))?
        .next()
        .with_context(|| format!("--listen-client-quic-urls {url}: no address"))
}

/// A member serving its client URLs.
struct Running {
    member: std::sync::Arc<Member>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Stops serving; `hand_over`: a leader first hands leadership to
    /// another member (not worth it when the whole cluster stops).
    async fn stop(self, hand_over: bool) {
        if hand_over {
            self.member.transfer_leadership_away().await;
        }
        let _ = self.stop.send(true);
        for s in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        self.member.shutdown();
    }
}

async fn start_member(args: &StoreArgs) -> Result<Running> {
    let cfg = args.config()?;
    let listen: Vec<String> = split_urls(&args.listen_client_urls)
        .iter()
        .map(|u| listen_addr(u))
        .collect::<Result<_>>()?;
    let quic_listen: Vec<std::net::SocketAddr> = split_urls(&args.listen_client_quic_urls)
        .iter()
        .map(|u| quic_listen_addr(u))
        .collect::<Result<_>>()?;
    let member = Member::open(cfg.clone())
        .await
        .with_context(|| format!("opening data dir {}", cfg.data_dir.display()))?;
    member.spawn_lease_loops();
    member.spawn_auto_compaction();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    // The QUIC endpoints first: their certificate exists by the time the
    // gRPC port answers /health (tests wait on that, then pin it).
    let quic_tls = match (&args.cert_file, &args.key_file) {
        (Some(cert), Some(key)) => keel_storage::quic::ServerTls::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => keel_storage::quic::ServerTls::Auto {
            dir: cfg.data_dir.join("fixtures").join("client"),
            hosts: quic_listen.iter().map(|a| a.ip().to_string()).collect(),
        },
    };
    for addr in &quic_listen {
        let server = keel_storage::quic::QuicServer::bind(member.clone(), *addr, &quic_tls)
            .with_context(|| format!("serving the QUIC client API on {addr}"))?;
        tracing::info!(%addr, "serving QUIC client requests");
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            server
                .serve(async move {
                    let _ = rx.changed().await;
                })
                .await;
            Ok(())
        }));
    }
    for addr in &listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(%addr, "serving client requests");
        let mut rx = stop_rx.clone();
        let m = member.clone();
        servers.push(tokio::spawn(async move {
            keel_storage::server::serve(m, listener, async move {
                let _ = rx.changed().await;
            })
            .await
        }));
    }
    Ok(Running {
        member,
        servers,
        stop,
    })
}

/// Runs members until Ctrl-C/SIGTERM, or until one's WAL fails; then runs
/// `before_stop` (what depends on the members stops first) and stops them.
async fn run_until_stopped(
    running: Vec<Running>,
    before_stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let members: Vec<_> = running.iter().map(|r| r.member.clone()).collect();
    let failed = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Some(m) = members.iter().find(|m| m.has_failed() || m.was_removed()) {
                return if m.was_removed() {
                    "the member has been permanently removed from the cluster"
                } else {
                    "the WAL failed (write or fsync error): stopped; restart recovers from the log"
                };
            }
        }
    };
    let fatal = tokio::select! {
        _ = shutdown_signal() => None,
        why = failed => Some(why),
    };
    tracing::info!("shutting down");
    before_stop.await;
    let hand_over = running.len() == 1;
    for r in running {
        r.stop(hand_over).await;
    }
    if let Some(why) = fatal {
        bail!("{why}");
    }
    Ok(())
}

async fn run_store(args: StoreArgs) -> Result<()> {
    let running = start_member(&args).await?;
    let cfg = running.member.config();
    println!(
        "keel store {} ready: client URLs {} (ETCDCTL_API=3 etcdctl --endpoints={} ...)",
        cfg.name,
        cfg.client_urls.join(","),
        cfg.client_urls.first().cloned().unwrap_or_default()
    );
    run_until_stopped(vec![running], async {}).await
}

/// A Go-style duration flag (`5m`, `30s`, `500ms`, `0`).
fn go_duration(flag: &str, value: &str) -> Result<std::time::Duration> {
    keel_storage::go_duration::parse(value)
        .ok_or_else(|| anyhow::anyhow!("{flag}: invalid duration {value:?} (e.g. 5m, 30s, 500ms)"))
}

/// Runs an apiserver until `stop` fires.
async fn run_apiserver(
    args: &ApiserverArgs,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let cfg = keel_apiserver::Config {
        etcd_servers: split_urls(&args.etcd_servers),
        etcd_cafile: args.etcd_cafile.clone(),
        bind_address: args.bind_address,
        secure_port: args.secure_port,
        cert_dir: args.cert_dir.clone(),
        admission: keel_apiserver::admission::Options {
            enable: args.enable_admission_plugins.clone(),
            disable: args.disable_admission_plugins.clone(),
        },
        authn: keel_apiserver::authn::AuthnConfig {
            token_auth_file: args.token_auth_file.clone(),
            service_accounts: keel_apiserver::authn::service_account::SaConfig {
                signing_key_file: args.service_account_signing_key_file.clone(),
                key_files: args.service_account_key_file.clone(),
                issuers: args.service_account_issuer.clone(),
                api_audiences: args.api_audiences.clone(),
                jwks_uri: args.service_account_jwks_uri.clone(),
                max_expiration_seconds: args
                    .service_account_max_token_expiration
                    .as_deref()
                    .map(keel_apiserver::authn::service_account::parse_duration_seconds)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--service-account-max-token-expiration: {e}"))?,
            },
            anonymous_auth: args.anonymous_auth,
        },
        authorization_modes: keel_apiserver::authz::parse_modes(&args.authorization_mode)
            .map_err(|e| anyhow::anyhow!("--authorization-mode: {e}"))?,
        authorization_webhook_config_file: args.authorization_webhook_config_file.clone(),
        authorization_webhook_cache_ttls: (
            go_duration(
                "--authorization-webhook-cache-authorized-ttl",
                &args.authorization_webhook_cache_authorized_ttl,
            )?,
            go_duration(
                "--authorization-webhook-cache-unauthorized-ttl",
                &args.authorization_webhook_cache_unauthorized_ttl,
            )?,
        ),
        audit: keel_apiserver::audit::AuditConfig {
            path: args.audit_log_path.clone(),
            max_size_mb: args.audit_log_maxsize,
            max_backups: args.audit_log_maxbackup,
        },
        kubelet: keel_apiserver::kubelet::KubeletConfig {
            preferred_address_types: keel_apiserver::kubelet::parse_address_types(
                &args.kubelet_preferred_address_types,
            )
            .map_err(|e| anyhow::anyhow!("--kubelet-preferred-address-types: {e}"))?,
            client_certificate: args.kubelet_client_certificate.clone(),
            client_key: args.kubelet_client_key.clone(),
            certificate_authority: args.kubelet_certificate_authority.clone(),
        },
        etcd_compaction_interval: go_duration(
            "--etcd-compaction-interval",
            &args.etcd_compaction_interval,
        )?,
    };
    let server = keel_apiserver::Server::bind(&cfg)
        .await
        .context("starting the apiserver")?;
    let addr = server
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, store = %args.etcd_servers, "apiserver serving HTTPS");
    server.serve(stop).await.context("serving the API")
}

/// `keel kubeconfig`.
fn write_kubeconfig(args: &KubeconfigArgs) -> Result<()> {
    keel_apiserver::tls::ensure_pki(&args.cert_dir, &[])
        .with_context(|| format!("cert dir {}", args.cert_dir.display()))?;
    if args.output == "-" {
        print!(
            "{}",
            keel_apiserver::tls::kubeconfig(&args.cert_dir, &args.server)?
        );
    } else {
        keel_apiserver::tls::write_kubeconfig(&args.cert_dir, &args.server, args.output.as_ref())?;
    }
    Ok(())
}

/// `keel up`: a 3-member store cluster in this process (separate data
/// dirs, real QUIC between the members) and an apiserver on
/// https://127.0.0.1:6443 against it, talking to the members over their
/// QUIC client endpoints (certificates from a store CA in `pki/etcd`).
async fn run_up(data_dir: PathBuf, client_port: u16) -> Result<()> {
    let names = ["keel-1", "keel-2", "keel-3"];
    let port = |i: usize, peer: bool| client_port + 100 * i as u16 + u16::from(peer);
    let cluster = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}=quic://127.0.0.1:{}", port(i, true)))
        .collect::<Vec<_>>()
        .join(",");
    // The members' QUIC client endpoints present certificates from a store
    // CA of their own, which the API server trusts (--etcd-cafile).
    let store_pki = data_dir.join("pki").join("etcd");
    keel_apiserver::tls::ensure_store_pki(&store_pki, &names)
        .context("creating the store CA and member certificates")?;
    let mut running = Vec::new();
    let mut endpoints = Vec::new();
    let mut quic_endpoints = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let client = format!("http://127.0.0.1:{}", port(i, false));
        let peer = format!("quic://127.0.0.1:{}", port(i, true));
        let quic = format!("quic://127.0.0.1:{}", port(i, true) + 1);
        let dir = data_dir.join(name);
        let cert = store_pki.join(format!("{name}.crt"));
        let key = store_pki.join(format!("{name}.key"));
        let args = StoreOnly::parse_from([
            "store",
            "--name",
            name,
            "--data-dir",
            &dir.to_string_lossy(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster,
            "--listen-client-quic-urls",
            &quic,
            "--cert-file",
            &cert.to_string_lossy(),
            "--key-file",
            &key.to_string_lossy(),
        ])
        .args;
        running.push(start_member(&args).await?);
        endpoints.push(client);
        quic_endpoints.push(quic);
    }
    let store_ca = store_pki.join("ca.crt");
    let api = ApiserverArgs {
        etcd_servers: quic_endpoints.join(","),
        etcd_cafile: Some(store_ca.clone()),
        secure_port: 6443,
        bind_address: std::net::Ipv4Addr::LOCALHOST.into(),
        cert_dir: data_dir.join("pki"),
        log_level: "info".into(),
        enable_admission_plugins: Vec::new(),
        disable_admission_plugins: Vec::new(),
        token_auth_file: None,
        service_account_key_file: Vec::new(),
        service_account_signing_key_file: None,
        service_account_issuer: Vec::new(),
        api_audiences: Vec::new(),
        service_account_max_token_expiration: None,
        service_account_jwks_uri: None,
        anonymous_auth: false,
        authorization_mode: "RBAC".into(),
        authorization_webhook_config_file: None,
        authorization_webhook_cache_authorized_ttl: "5m".into(),
        authorization_webhook_cache_unauthorized_ttl: "30s".into(),
        audit_log_path: Some(data_dir.join("audit").join("audit.log")),
        audit_log_maxsize: 100,
        audit_log_maxbackup: 3,
        kubelet_preferred_address_types: keel_apiserver::kubelet::ADDRESS_TYPES.join(","),
        kubelet_client_certificate: None,
        kubelet_client_key: None,
        kubelet_certificate_authority: None,
        etcd_compaction_interval: "5m".into(),
    };
    let kubeconfig = data_dir.join("kubeconfig");
    keel_apiserver::tls::ensure_pki(&api.cert_dir, &[]).context("creating the cluster CA")?;
    keel_apiserver::tls::write_kubeconfig(&api.cert_dir, "https://127.0.0.1:6443", &kubeconfig)
        .context("writing the kubeconfig")?;
    let (api_stop, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut api_task = tokio::spawn(async move {
        run_apiserver(&api, async {
            let _ = api_stop_rx.await;
        })
        .await
    });
    // `kubectl get ns` must work right after the banner: wait until the
    // apiserver has created the system namespaces (the store has a leader).
    let store = keel_apiserver::store::Store::connect(&quic_endpoints, Some(&store_ca))
        .context("store client")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok((Some(_), _)) = store.get("/registry/namespaces/kube-node-lease").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kubeconfig_abs = std::fs::canonicalize(&kubeconfig).unwrap_or(kubeconfig);
    println!(
        "keel up: a 3-member store cluster, data in {} (QUIC client API on {})\n  ETCDCTL_API=3 etcdctl --endpoints={} endpoint status -w table\nAPI server on https://127.0.0.1:6443:\n  export KUBECONFIG={}\n  kubectl get ns\n(Ctrl-C stops it)",
        data_dir.display(),
        quic_endpoints.join(","),
        endpoints.join(","),
        kubeconfig_abs.display()
    );
    // The API server stops before the store it reads from.
    run_until_stopped(running, async {
        let _ = api_stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), &mut api_task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "apiserver"),
            Ok(Err(e)) => tracing::warn!(error = %e, "apiserver task"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!("the API server did not stop within 5 s; stopping it");
                api_task.abort();
            }
        }
    })
    .await
}

fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Opts the process out of transparent huge pages: keel's heap is many
/// small long-lived objects, and a huge page that is partly free still
/// counts 2 MiB (measured: 412 vs 453 MB RSS after 1M puts).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and affects
    // nothing but this process's page-fault policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> Result<()> {
    memcpy::tune();
    no_transparent_huge_pages();
    let cli = Cli::parse();
    keel_raft::failpoint::setup();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Without the LIFO slot a task woken by another (a connection woken by a
    // finished request) queues behind the requests already runnable, so one
    // write carries many responses. Measured, one member, 100 clients: 8.4
    // vs 10.3-11.2 µs of system time per put, 42.8-44.6k vs 36.7-41.4k
    // puts/s; one client: no difference beyond noise.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let rt = builder.build().context("starting the runtime")?;
    match cli.cmd {
        Cmd::Store(args) => {
            init_logs(&args.log_level);
            rt.block_on(run_store(*args))
        }
        Cmd::Apiserver(args) => {
            init_logs(&args.log_level);
            rt.block_on(run_apiserver(&args, shutdown_signal()))
        }
        Cmd::Kubeconfig(args) => write_kubeconfig(&args),
        Cmd::Up {
            data_dir,
            client_port,
        } => {
            init_logs("info");
            rt.block_on(run_up(data_dir, client_port))
        }
        Cmd::Snapshot {
            cmd:
                SnapshotCmd::Restore {
                    file,
                    data_dir,
                    name,
                    initial_advertise_peer_urls,
                    initial_cluster,
                    initial_cluster_token,
                },
        } => {
            init_logs("warn");
            let cfg = MemberConfig {
                name,
                data_dir: data_dir.clone(),
                peer_urls: split_urls(&initial_advertise_peer_urls),
                initial_cluster: parse_cluster(&initial_cluster)?,
                initial_cluster_token,
                ..MemberConfig::default()
            };
            let (index, rev) = restore_snapshot(&file, &cfg).with_context(|| {
                format!("restoring {} into {}", file.display(), data_dir.display())
            })?;
            println!(
                "restored snapshot {} (index {index}, revision {rev}) into {}",
                file.display(),
                data_dir.display()
            );
            Ok(())
        }
    }
}
