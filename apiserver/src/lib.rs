//! keel-apiserver: the Kubernetes REST API on the store, for the stock kubectl.
//!
//! Table of contents:
//! - [`server`]: HTTPS (rustls), client-certificate users, the accept loop.
//! - `conn_threads`: each connection (and its HTTP/2 streams) on one
//!   thread; handlers on the shared runtime; `local_wake`: a watch event
//!   wakes a connection thread's streams from that thread.
//! - [`coalesce`]: many small HTTP/2 frames in one TLS write per flush.
//! - [`tls`]: the cluster CA, serving and client certificates, kubeconfig files.
//! - [`auth`]: the user of a client certificate (CN = user, O = groups).
//! - [`authn`]: bearer tokens (static file, service account JWTs),
//!   anonymous requests, impersonation, TokenRequest and the reviews.
//! - [`authz`]: `--authorization-mode` (RBAC, AlwaysAllow), the RBAC
//!   evaluator, default roles, aggregation, SubjectAccessReviews.
//! - [`handlers`]: path routing and the verbs (get, list, create, update,
//!   patch, delete, deletecollection); [`watch`]: watch streams, served
//!   from [`cache`] (one store watch per resource type).
//! - [`registry`]: the table of resource types everything else reads.
//! - [`discovery`], [`openapi`], [`table`]: what kubectl reads besides objects.
//! - [`selectors`], [`patch`], [`object`]: label/field selectors, the three
//!   patch types, metadata rules.
//! - [`store`]: the store client (keel's native QUIC client API, or etcd v3
//!   gRPC); [`compactor`]: compacts the store's history every
//!   `--etcd-compaction-interval`, taking turns with other API servers.
//! - [`status`]: Kubernetes `Status` errors; [`metrics`]: `/metrics`.
//! - [`audit`]: the audit log (one `audit.k8s.io/v1` Event per request,
//!   rotated by size).
//! - [`admission`]: the admission plugins (mutating, then validating) every
//!   write passes; [`controllers`]: the loops inside the server (namespace
//!   termination, service accounts, quota usage, the garbage collector);
//!   [`quantity`]: resource quantities.
//! - [`kubelet`]: the client of the kubelets (`pods/log` proxies to them).
//! - [`crd`]: CustomResourceDefinitions: their validation and status, the
//!   registry's dynamic layer, custom objects' structural schemas.
#![warn(missing_docs)]

pub mod admission;
pub mod alloc;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod coalesce;
pub mod compactor;
pub(crate) mod conn_threads;
pub mod controllers;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod handlers;
pub mod https_client;
pub mod kubelet;
pub(crate) mod local_wake;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod registry;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod tls;
pub mod validation;
pub mod watch;

pub use server::{Config, Server};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificates or the TLS config.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Token files or service account keys.
    #[error(transparent)]
    Authn(#[from] authn::AuthnError),
    /// The authorization webhook's kubeconfig.
    #[error(transparent)]
    Webhook(#[from] authz::webhook::WebhookError),
    /// An unusable authorization setup.
    #[error("authorization: {0}")]
    Authz(String),
    /// The `--kubelet-*` client certificate or CA.
    #[error("kubelet client: {0}")]
    Kubelet(String),
    /// The store client.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The admission flags.
    #[error(transparent)]
    Admission(#[from] admission::AdmissionError),
    /// The audit log file.
    #[error("audit log: {0}")]
    Audit(std::io::Error),
    /// Starting the connection threads.
    #[error("starting the connection threads: {0}")]
    ConnThreads(std::io::Error),
    /// Binding the listening socket.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}
