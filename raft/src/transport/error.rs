//! The transport's error type.

use std::path::PathBuf;

/// Errors returned by [`Transport`](super::Transport) operations.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A file (certificate, key, snapshot) could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The UDP socket could not be bound or set up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The listen address.
        addr: std::net::SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Bad certificate, key or CA material, or an unusable TLS configuration.
    #[error("peer TLS: {0}")]
    Tls(String),
    /// The member ID is not a configured peer.
    #[error("member {0} is not a peer")]
    UnknownPeer(u64),
    /// The peer could not be dialed (refused, unreachable, handshake timeout,
    /// certificate rejected).
    #[error("cannot connect to member {id}: {reason}")]
    Connect {
        /// The peer.
        id: u64,
        /// What went wrong.
        reason: String,
    },
    /// The connection broke while talking to the peer.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing a stream failed.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading a stream failed.
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The peer answered a snapshot with a refusal (bad checksum, disk error,
    /// receiver gone).
    #[error("member {0} refused the snapshot")]
    SnapshotRefused(u64),
    /// The snapshot file changed size while it was being sent.
    #[error("{}: changed while being sent", path.display())]
    SnapshotChanged {
        /// The snapshot file.
        path: PathBuf,
    },
    /// Snapshot metadata exceeds `max_message_bytes`.
    #[error("snapshot metadata of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The transport was shut down.
    #[error("transport is shut down")]
    Shutdown,
}
