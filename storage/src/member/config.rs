//! A member's settings, named after etcd's flags, and the IDs derived from them.

use std::path::PathBuf;
use std::time::Duration;

/// Settings of one store member.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// `--name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// `--initial-cluster`: (name, peer URL) pairs.
    pub initial_cluster: Vec<(String, String)>,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--snapshot-count`: applied entries between snapshots.
    pub snapshot_count: u64,
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: u64,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `--election-timeout`.
    pub election_timeout: Duration,
    /// How often remaining lease TTLs are checkpointed into the log.
    pub lease_checkpoint_interval: Duration,
    /// How long a proposal may wait to be applied.
    pub request_timeout: Duration,
    /// Bytes preallocated per WAL segment.
    pub wal_segment_size: u64,
    /// `--listen-peer-urls` (`quic://host:port`).
    pub listen_peer_urls: Vec<String>,
    /// `--initial-cluster-state`: true for `new`.
    pub initial_cluster_new: bool,
    /// Peer TLS: `--peer-cert-file`/`--peer-key-file`/`--peer-trusted-ca-file`,
    /// or `None` for auto TLS (`--peer-auto-tls`, the default: QUIC is
    /// always encrypted).
    pub peer_tls_files: Option<(PathBuf, PathBuf, PathBuf)>,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`.
    pub auto_compaction: super::auto_compaction::AutoCompaction,
}

impl Default for MemberConfig {
    fn default() -> Self {
        MemberConfig {
            name: "default".into(),
            data_dir: PathBuf::from("default.keel"),
            client_urls: vec!["http://127.0.0.1:2379".into()],
            peer_urls: vec!["quic://127.0.0.1:2380".into()],
            initial_cluster: Vec::new(),
            initial_cluster_token: "etcd-cluster".into(),
            snapshot_count: 100_000,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            lease_checkpoint_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(7),
            wal_segment_size: 64 * 1024 * 1024,
            listen_peer_urls: vec!["quic://127.0.0.1:2380".into()],
            initial_cluster_new: true,
            peer_tls_files: None,
            auto_compaction: Default::default(),
        }
    }
}

/// Resolves `quic://host:port` (or `host:port`) to a socket address.
pub fn peer_addr(url: &str) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let hostport = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .trim_end_matches('/');
    hostport.to_socket_addrs().ok()?.next()
}

/// FNV-1a, 64 bits: a stable hash for IDs (never changes across builds).
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl MemberConfig {
    /// The WAL directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("member").join("wal")
    }

    /// The snapshot directory.
    pub fn snap_dir(&self) -> PathBuf {
        self.data_dir.join("member").join("snap")
    }

    /// This member's ID: a hash of its peer URLs and the cluster token (as
    /// etcd derives it), stable across restarts.
    pub fn member_id(&self) -> u64 {
        self.id_for(&self.peer_urls)
    }

    /// The ID of the member with these peer URLs.
    pub fn id_for(&self, peer_urls: &[String]) -> u64 {
        let mut urls = peer_urls.to_vec();
        urls.sort();
        let joined = urls.join(",");
        fnv64(&[joined.as_bytes(), self.initial_cluster_token.as_bytes()]).max(1)
    }

    /// The initial members: (ID, name, peer URL).
    pub fn initial_members(&self) -> Vec<(u64, String, String)> {
        let mut out: Vec<(u64, String, String)> = self
            .initial_cluster
            .iter()
            .map(|(n, u)| (self.id_for(std::slice::from_ref(u)), n.clone(), u.clone()))
            .collect();
        if out.is_empty() {
            let url = self.peer_urls.first().cloned().unwrap_or_default();
            out.push((self.member_id(), self.name.clone(), url));
        }
        out
    }

    /// The cluster's ID: a hash of every initial member's peer URL.
    pub fn cluster_id(&self) -> u64 {
        let mut urls: Vec<&str> = self
            .initial_cluster
            .iter()
            .map(|(_, u)| u.as_str())
            .collect();
        if urls.is_empty() {
            urls = self.peer_urls.iter().map(String::as_str).collect();
        }
        urls.sort();
        fnv64(&[
            b"cluster",
            urls.join(",").as_bytes(),
            self.initial_cluster_token.as_bytes(),
        ])
        .max(1)
    }

    /// etcd's minimum lease TTL: 3/2 of the election timeout, rounded up to
    /// whole seconds.
    pub fn min_lease_ttl(&self) -> i64 {
        let ms = self.election_timeout.as_millis() as i64 * 3 / 2;
        (ms + 999) / 1000
    }
}
