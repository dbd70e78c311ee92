//! The one error type of the WAL.
//!
//! Errors are `Clone` (I/O errors are wrapped in [`Arc`]) because one failed
//! group commit fails the callbacks of every append in the batch.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A `Result` whose error is a [`WalError`].
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Everything that can go wrong in the WAL.
///
/// Fatal vs. per-call errors: [`WalError::Io`] returned for a write or fsync
/// of the log, and [`WalError::Fatal`] afterwards, mean the WAL has stopped and
/// the process should restart and recover from the log. [`WalError::NoSpace`],
/// [`WalError::InvalidAppend`] and [`WalError::Closed`] fail only the call
/// they are returned to.
#[derive(thiserror::Error, Debug, Clone)]
pub enum WalError {
    /// The log on disk is damaged somewhere other than a torn tail of the last
    /// segment; the WAL refuses to start rather than lose acknowledged data.
    #[error("WAL corrupt: {file}: offset {offset}: {reason}", file = .file.display())]
    Corrupt {
        /// The segment file holding the damaged record.
        file: PathBuf,
        /// Byte offset of the damaged record (or header) in `file`.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// An I/O call failed: `op` says what was being done, `path` to what.
    #[error("WAL I/O error: {op} {path}: {source}", path = .path.display())]
    Io {
        /// The operation, e.g. `"fdatasync"`.
        op: &'static str,
        /// The file or directory operated on.
        path: PathBuf,
        /// The underlying error, shared so the error can be cloned to many waiters.
        source: Arc<io::Error>,
    },
    /// An earlier write or fsync failed, so the WAL stopped: every append after
    /// it fails with this error. Recover by restarting (reopening the WAL).
    #[error("the WAL is stopped after a failed write or fsync: {0}")]
    Fatal(Arc<WalError>),
    /// Preallocating a new segment failed with ENOSPC. Nothing of the batch was
    /// written or acknowledged; a later append retries creating the segment.
    #[error("no space left to preallocate WAL segment {path}", path = .path.display())]
    NoSpace {
        /// The segment that could not be preallocated.
        path: PathBuf,
    },
    /// The append breaks the log's rules (index 0, a gap after the last entry,
    /// entries not ascending by one, a snapshot mark that goes backwards, a
    /// record too large to frame). Nothing of it was written.
    #[error("invalid WAL append: {0}")]
    InvalidAppend(String),
    /// Another process (or another `Wal` in this process) holds the directory lock.
    #[error("WAL directory {dir} is locked by another user", dir = .dir.display())]
    Locked {
        /// The WAL directory.
        dir: PathBuf,
    },
    /// The writer thread panicked (a bug); nothing after the panic is durable.
    #[error("the WAL writer thread panicked")]
    WriterPanicked,
    /// The WAL was closed before the request could be served.
    #[error("the WAL is closed")]
    Closed,
}

impl WalError {
    /// Builds a [`WalError::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// Builds a [`WalError::Corrupt`].
    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        WalError::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }
}
