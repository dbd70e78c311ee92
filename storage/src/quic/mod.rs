//! The native QUIC client API of a store member, served next to the etcd
//! gRPC API (`--listen-client-quic-urls quic://host:port`), and its client.
//!
//! The API server talks to the store over it: every watch gets its own QUIC
//! stream, so a watch whose reader is slow (or stopped reading) holds back
//! only itself, never another watch or a request (gRPC multiplexes all
//! watches of a channel over one HTTP/2 connection, whose flow control they
//! share, and the etcd protocol puts many watchers on one gRPC stream).
//!
//! - [`server`]: the member's endpoint ([`QuicServer`]).
//! - [`client`]: the client ([`Client`]): one connection per endpoint,
//!   reconnect with backoff, failover between endpoints.
//! - `connected_socket`: the client's per-connection UDP socket, which
//!   notices a member whose port refuses datagrams (its process is gone).
//! - [`tls`]: certificates of the endpoint and the client's trust.
//! - `wire`: framing.
//!
//! # Wire format
//!
//! ALPN [`ALPN`] (`keel-store/1`), TLS 1.3 (rustls with ring). The client
//! opens bidirectional streams; each carries *frames*:
//!
//! ```text
//! frame = len u32 LE | tag u8 | payload[len - 1]
//! ```
//!
//! The payloads are the etcd v3 protobuf messages (`etcdserverpb`), so a
//! request means exactly what the same gRPC call means; the server runs
//! the same service code as its gRPC handlers (followers forward writes to
//! the leader and serve linearizable reads through ReadIndex, as for gRPC).
//!
//! - **Unary stream** (Range, Put, DeleteRange, Txn, Compaction,
//!   LeaseGrant, LeaseRevoke, LeaseTimeToLive): the client sends one frame
//!   whose tag is the [`Method`] and whose payload is the request, then
//!   finishes its side; the server answers with one frame and finishes:
//!   tag [`TAG_OK`] with the response message, or tag [`TAG_ERROR`] with
//!   `code u32 LE | message` (the gRPC status code and message the gRPC
//!   API would have answered with).
//! - **Watch stream**: the client sends a frame tagged [`Method::Watch`]
//!   with a `WatchRequest` (normally a create request; later frames on the
//!   same stream may ask for progress), and keeps its side open; the server
//!   answers with a stream of [`TAG_OK`] frames each holding a
//!   `WatchResponse`. The client cancels the watch by finishing or resetting
//!   its side of the stream, or by stopping the server's side; the server
//!   then drops every watcher of the stream.
//!
//! Request frames may be at most `--max-request-bytes` plus 512 KiB (as the
//! gRPC server allows); a longer one is answered with etcd's "request is too
//! large" and the stream is closed. Response frames are limited by the
//! client ([`ClientConfig::max_response_bytes`], 64 MiB by default, as the
//! API server's gRPC client). A frame the server cannot parse (unknown tag,
//! bad protobuf, a stream ending inside a frame) gets an error frame or a
//! reset of that stream only: the connection and every other stream go on.
//!
//! # Trust
//!
//! The server presents `--cert-file`/`--key-file` if given, else a
//! self-signed certificate generated on first start in the data dir
//! (`<data-dir>/fixtures/client/`, where etcd's `--auto-tls` keeps its own; kept across restarts). The client always
//! verifies the server: against the PEM certificates of
//! [`ClientConfig::trusted_ca_pem`] (the API server's `--etcd-cafile`), as a
//! CA (chain and the dialed host name or IP checked by webpki) or as a
//! pinned certificate (a certificate byte-for-byte in that file is trusted
//! as is, for self-signed auto certificates). `keel up` issues each member
//! a certificate from a store CA of its own and gives the API server that
//! CA. Clients present no certificate (no client-certificate
//! authentication yet): anyone who can reach the port can use the store, as
//! with the plain-HTTP gRPC port.

pub mod client;
mod connected_socket;
pub mod server;
pub mod tls;
mod wire;

pub use client::{Client, ClientConfig, WatchStream};
pub use server::QuicServer;
pub use tls::ServerTls;
pub use wire::{Method, ALPN, TAG_ERROR, TAG_OK};

/// Errors of the QUIC client API (both ends).
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// An endpoint URL that is not `quic://host:port`.
    #[error("bad store endpoint {url:?}: {reason}")]
    BadEndpoint {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Certificates or keys could not be loaded, generated or used.
    #[error("QUIC TLS: {0}")]
    Tls(String),
    /// Binding the UDP socket.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No connection to an endpoint could be made (or it is backing off).
    #[error("connecting to {endpoint}: {reason}")]
    Connect {
        /// The endpoint URL.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The connection or stream broke while a request was under way.
    #[error("QUIC stream: {0}")]
    Stream(String),
    /// The peer broke the protocol (a bad frame or message).
    #[error("QUIC protocol violation: {0}")]
    Protocol(String),
    /// A frame longer than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The server answered with an error (the gRPC status the gRPC API
    /// would have answered with).
    #[error("{0}")]
    Status(tonic::Status),
}

impl From<QuicError> for tonic::Status {
    fn from(e: QuicError) -> Self {
        match e {
            QuicError::Status(s) => s,
            QuicError::Protocol(_) | QuicError::FrameTooLarge { .. } => {
                tonic::Status::internal(e.to_string())
            }
            QuicError::BadEndpoint { .. } | QuicError::Tls(_) => {
                tonic::Status::invalid_argument(e.to_string())
            }
            _ => tonic::Status::unavailable(e.to_string()),
        }
    }
}

/// Splits `quic://host:port` into the host (the TLS server name) and the
/// `host:port` to resolve.
pub fn parse_quic_url(url: &str) -> Result<(String, String), QuicError> {
    let bad = |reason: &str| QuicError::BadEndpoint {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("quic://")
        .ok_or_else(|| bad("expected quic://host:port"))?;
    let hostport = rest.trim_end_matches('/');
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| bad("a port is required"))?;
    port.parse::<u16>().map_err(|_| bad("bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("a host is required"));
    }
    Ok((host.to_string(), hostport.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse_quic_url;

    #[test]
    fn quic_urls_parse() {
        assert_eq!(
            parse_quic_url("quic://127.0.0.1:2381").expect("url"),
            ("127.0.0.1".to_string(), "127.0.0.1:2381".to_string())
        );
        assert_eq!(
            parse_quic_url("quic://[::1]:2381/").expect("url").0,
            "::1".to_string()
        );
        assert!(parse_quic_url("http://127.0.0.1:2379").is_err());
        assert!(parse_quic_url("quic://127.0.0.1").is_err());
        assert!(parse_quic_url("quic://:80").is_err());
    }
}
