//! The store's errors, one per etcd error a client can see, mapped once to
//! the gRPC status etcd sends (same code, same message) so that etcd client
//! libraries recognise them.

use crate::mvcc::MvccError;

/// A request the store refused, or a failure of the store itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A key-based request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More operations in one txn branch than `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// The same key written twice in one txn.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The revision was compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The revision is in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// The NOSPACE alarm is raised: writes are refused.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// No lease with that ID.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with that ID already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A TTL over etcd's maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A request over `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// No member with that ID.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// No leader is known (an election is under way, or this member is
    /// cut off from the majority).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The member cannot take the request now (stopping, or its log failed).
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The request did not complete in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A feature this member does not have.
    #[error("etcdserver: not capable")]
    NotCapable,
    /// The log refused the write (for example the disk is full); nothing of
    /// the request was applied.
    #[error("etcdserver: {0}")]
    Storage(String),
}

impl From<MvccError> for StoreError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => StoreError::Compacted,
            MvccError::FutureRev => StoreError::FutureRev,
        }
    }
}

#[cfg(feature = "server")]
impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        use tonic::Code;
        let code = match e {
            StoreError::EmptyKey
            | StoreError::KeyNotFound
            | StoreError::ValueProvided
            | StoreError::LeaseProvided
            | StoreError::TooManyOps
            | StoreError::DuplicateKey
            | StoreError::RequestTooLarge => Code::InvalidArgument,
            StoreError::Compacted | StoreError::FutureRev | StoreError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            StoreError::NoSpace => Code::ResourceExhausted,
            StoreError::LeaseNotFound | StoreError::MemberNotFound => Code::NotFound,
            StoreError::LeaseExists => Code::FailedPrecondition,
            StoreError::Stopped | StoreError::Storage(_) => Code::Unavailable,
            StoreError::Timeout | StoreError::NoLeader => Code::Unavailable,
            StoreError::NotCapable => Code::Unavailable,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// Results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
