//! The write-ahead log: the Raft log and hard state on disk.
//!
//! Table of contents:
//! - [`Wal`] (this file): open/recover, append with group commit, snapshot
//!   marks, releasing old segments, close.
//! - `record`: record framing (length, type, CRC) and payload encoding (rkyv).
//! - `segment`: segment file naming, header, preallocation, atomic creation.
//! - `group_commit`: the queue between appenders and the writer thread.
//! - `writer`: the writer thread's sink (write + fdatasync, rollover, release).
//! - `recovery`: reading segments back, torn-tail repair, corruption checks.
//! - `error`: [`WalError`].
//!
//! # On-disk format
//!
//! A directory of segment files named `{seq:016x}-{first_index:016x}.wal`
//! (hex, so names sort by sequence), plus a `LOCK` file (flock) and, after a
//! repair, `<segment>.broken` copies of cut tails. Each segment is
//! preallocated (`fallocate`, falling back to `set_len`) and created
//! atomically (`.tmp`, fsync, rename, fsync of the directory).
//!
//! - **Header** (32 bytes): magic `KEELWAL\0`, version (u32 LE, 1), CRC32 of
//!   the header, sequence number and first index (u64 LE, as in the name).
//! - **Records** follow at offset 32. Each is a 16-byte frame header — payload
//!   length (u32 LE), type (1 entry, 2 hard state, 3 snapshot mark), three
//!   zero bytes, CRC32 (of the other header bytes and the payload), batch start
//!   (u32 LE, offset of the write it belongs to, in 8-byte units) — then the
//!   payload, then zero padding to a multiple of 8.
//! - **Alignment**: every frame starts 8-aligned, so the first 8 bytes of a
//!   header (length and type) sit in one aligned word and are never torn
//!   across sectors; a zero word means "end of log" (preallocated space reads
//!   as zeros, and no valid frame has a zero length).
//! - **CRC** is per record and not chained, so recovery can recognise a valid
//!   frame at any offset past a bad one (see below). Entries are rkyv archives
//!   validated with bytecheck on read; hard state and snapshot marks are
//!   fixed little-endian fields.
//! - Every new segment starts with a prologue: the latest snapshot mark (if
//!   any) and hard state, so deleting older segments never loses them.
//!
//! # Writes
//!
//! Appends are queued; a writer thread takes everything queued (up to
//! [`WalOptions::max_batch_bytes`]), writes it with one `pwrite` and one
//! `fdatasync`, then calls the callbacks in order. A batch never spans
//! segments: if it does not fit, a new segment is created first. A write or
//! fsync error stops the WAL for good ([`WalError::Fatal`]); ENOSPC while
//! preallocating a new segment fails only that batch ([`WalError::NoSpace`]).
//!
//! # Recovery rules
//!
//! Segments are read in sequence order through memmap2. An entry at index `i`
//! discards any entry logged earlier at `>= i` (a follower overwriting a
//! conflicting suffix); a snapshot mark discards entries at or below its
//! index; the last hard state and snapshot mark win. The remaining entries
//! must be contiguous from the snapshot index + 1 (or 1).
//!
//! A torn tail of the last segment is cut at the first bad record (copied to
//! `<segment>.broken`, logged with `tracing::warn!`). A bad record is taken as
//! a torn tail unless a valid record *from a later write* follows it (its
//! batch start lies after the bad record): later writes only start once the
//! earlier write is durable, so that is corruption, as is any bad record in a
//! segment other than the last, a bad header, or a missing segment. Corruption
//! refuses to start with [`WalError::Corrupt`] naming the file and offset.

mod error;
mod group_commit;
mod record;
mod recovery;
mod segment;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

pub use error::{Result, WalError};
pub use group_commit::Callback;
pub use recovery::{inspect_segment, list_segments, RecordInfo, RecordKind};

use crate::sync::{Arc, AtomicU64, Mutex, Ordering};
use group_commit::Queue;
use writer::{Request, Writer};

/// Group-commit machinery, exposed so it can be model-checked (loom) and
/// reused with other sinks.
pub mod queue {
    pub use super::group_commit::{commit_direct, run, Callback, Pending, Queue, Sink};
}

/// One Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The leader's term when the entry was created.
    pub term: u64,
    /// Its position in the log (1-based).
    pub index: u64,
    /// What the payload is.
    pub kind: EntryKind,
    /// The opaque payload (a command for the state machine, or a config change).
    pub data: Vec<u8>,
}

/// What an entry's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A command for the state machine.
    Normal,
    /// A cluster membership change.
    ConfChange,
}

/// The Raft state that must survive a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: u64,
    /// Who this node voted for in `term` (0: nobody).
    pub vote: u64,
    /// The highest index known to be committed.
    pub commit: u64,
}

/// A record that a state-machine snapshot covers everything up to `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMark {
    /// Last index the snapshot covers.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
}

/// Tuning of a [`Wal`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size each segment file is preallocated to (default 64 MiB). A batch
    /// larger than this gets a segment of its own, sized to fit.
    pub segment_size: u64,
    /// Cap on the bytes of one group commit (default 4 MiB); a single larger
    /// append still goes out, alone.
    pub max_batch_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 << 20,
            max_batch_bytes: 4 << 20,
        }
    }
}

/// A torn tail that recovery cut off the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    /// The segment that was truncated.
    pub file: PathBuf,
    /// Where it was truncated (the first bad record).
    pub offset: u64,
    /// How many bytes were cut (up to the last non-zero byte).
    pub bytes_cut: u64,
    /// Where a copy of the cut bytes was kept.
    pub broken: PathBuf,
}

/// What [`Wal::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The latest hard state (default if none was ever logged).
    pub hard_state: HardState,
    /// The last snapshot mark recorded.
    pub snapshot: Option<SnapshotMark>,
    /// Every entry after `snapshot.index` (or from 1), contiguous; a later
    /// write of an index overrides earlier ones and discards what followed.
    pub entries: Vec<Entry>,
    /// Set if a torn tail was cut off the last segment.
    pub repaired_tail: Option<TailRepair>,
}

/// The write-ahead log. `Send + Sync`: share it with [`std::sync::Arc`].
///
/// Writes go through one writer thread that group-commits them; dropping the
/// `Wal` (or [`Wal::close`]) drains the queue and stops the thread.
pub struct Wal {
    queue: Arc<Queue<Request>>,
    /// The sink, shared by the writer thread and [`Wal::append_direct`].
    sink: Arc<Mutex<Writer>>,
    max_batch_bytes: usize,
    writer: Option<JoinHandle<Result<()>>>,
    disk_size: Arc<AtomicU64>,
    dir: PathBuf,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("disk_size", &self.disk_size())
            .finish_non_exhaustive()
    }
}

/// Waits for a callback's result delivered on `rx`.
fn wait(rx: mpsc::Receiver<Result<()>>) -> Result<()> {
    rx.recv().unwrap_or(Err(WalError::Closed))
}

impl Wal {
    /// Opens (creating if absent) the WAL in `dir`, recovering what is there.
    ///
    /// Fails with [`WalError::Corrupt`] if the log is damaged anywhere but a
    /// torn tail of the last segment (which is repaired and reported in
    /// [`Recovered::repaired_tail`]), and with [`WalError::Locked`] if another
    /// `Wal` has the directory open.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered)> {
        let mut opts = opts;
        opts.segment_size = opts.segment_size.clamp(4096, (u32::MAX as u64) * 8);
        opts.max_batch_bytes = opts.max_batch_bytes.max(1);
        std::fs::create_dir_all(dir).map_err(|e| WalError::io("create directory", dir, e))?;
        let lock = segment::DirLock::acquire(dir)?;
        let mut opened = recovery::recover(dir, &opts)?;
        // Hand the entries to the caller without copying; the writer needs
        // only the hard state and snapshot mark.
        let recovered = Recovered {
            entries: std::mem::take(&mut opened.recovered.entries),
            ..opened.recovered.clone()
        };
        let disk_size = Arc::new(AtomicU64::new(0));
        let queue = Arc::new(Queue::new());
        let max_batch = opts.max_batch_bytes;
        let sink = Arc::new(Mutex::new(Writer::new(
            dir.to_path_buf(),
            opts,
            opened,
            disk_size.clone(),
        )));
        let (q, w) = (queue.clone(), sink.clone());
        let handle = std::thread::Builder::new()
            .name("keel-wal-writer".into())
            .spawn(move || {
                // The writer owns the directory lock: it is released only
                // once nothing more can be written.
                let _lock = lock;
                group_commit::run(&*q, &*w, max_batch);
                let fatal = w.lock().unwrap_or_else(|p| p.into_inner()).fatal();
                match fatal {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            })
            .map_err(|e| WalError::io("spawn writer thread", dir, e))?;
        let wal = Wal {
            queue,
            sink,
            max_batch_bytes: max_batch,
            writer: Some(handle),
            disk_size,
            dir: dir.to_path_buf(),
        };
        Ok((wal, recovered))
    }

    /// Queues entries and/or a hard state for group commit.
    ///
    /// `done` is called exactly once, from the WAL's writer thread, after the
    /// batch is durable (write + fdatasync) or with the error. Callbacks are
    /// called in append order and must not block for long (they hold up the
    /// writer). Does not block on I/O: it only encodes and enqueues.
    ///
    /// `entries` must ascend by one with index >= 1, and start at most one past
    /// the last logged index (or the snapshot mark); starting lower overwrites
    /// the log from there. Otherwise `done` gets [`WalError::InvalidAppend`].
    pub fn append(&self, entries: Vec<Entry>, hard_state: Option<HardState>, done: Callback) {
        let req = Self::encode_append(&entries, hard_state, true);
        let size = req.size();
        self.queue.push(req, size, done);
    }

    fn encode_append(entries: &[Entry], hard_state: Option<HardState>, sync: bool) -> Request {
        let range = match (entries.first(), entries.last()) {
            (Some(f), Some(l)) => Some((f.index, l.index)),
            _ => None,
        };
        if entries.first().is_some_and(|e| e.index == 0) {
            return Request::Invalid(WalError::InvalidAppend("entry index 0".into()));
        }
        if entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
            return Request::Invalid(WalError::InvalidAppend(
                "entries do not ascend by one".into(),
            ));
        }
        let mut encoded = Vec::with_capacity(entries.len());
        for e in entries {
            match record::encode_entry(e) {
                Ok(r) => encoded.push(r),
                Err(reason) => return Request::Invalid(WalError::InvalidAppend(reason)),
            }
        }
        Request::Append {
            entries: encoded,
            range,
            hard_state,
            sync,
        }
    }

    /// Blocking convenience: [`Wal::append`] and wait until durable.
    pub fn append_sync(&self, entries: Vec<Entry>, hard_state: Option<HardState>) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.append(
            entries,
            hard_state,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        wait(rx)
    }

    /// Blocking, on the calling thread: writes `entries` and/or `hard_state`
    /// (with whatever else is queued ahead of them) and fdatasyncs, without
    /// handing off to the writer thread. The same contract as
    /// [`Wal::append`]; for the one thread that persists the Raft log, it
    /// saves two thread wake-ups per write.
    pub fn append_direct(&self, entries: &[Entry], hard_state: Option<HardState>) -> Result<()> {
        let req = Self::encode_append(entries, hard_state, true);
        group_commit::commit_direct(&self.queue, &self.sink, req, self.max_batch_bytes)
    }

    /// On the calling thread: writes `hard_state` but does not fdatasync it
    /// (etcd's `MustSync` is false when only the commit index moved). A
    /// process crash keeps it (the page cache has it), so a restarted
    /// member still knows how far it had applied; a power cut may lose it,
    /// which costs only re-learning the commit index from the leader. It
    /// becomes durable with the next synced write (or segment roll-over).
    pub fn save_hard_state_unsynced(&self, hard_state: HardState) -> Result<()> {
        let req = Self::encode_append(&[], Some(hard_state), false);
        group_commit::commit_direct(&self.queue, &self.sink, req, self.max_batch_bytes)
    }

    /// Records (durably, through the same queue, blocking) that a
    /// state-machine snapshot covers everything up to `mark.index`: recovery
    /// then returns entries after it only. A mark behind the last one is
    /// rejected with [`WalError::InvalidAppend`].
    pub fn save_snapshot_mark(&self, mark: SnapshotMark) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        let req = Request::Snapshot(mark);
        let size = req.size();
        self.queue.push(
            req,
            size,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        wait(rx)
    }

    /// Deletes whole segment files that hold only entries `<= index` and
    /// `<=` the latest durable snapshot mark (entries a snapshot does not
    /// cover are needed for recovery), oldest first, never the live segment.
    /// Without a snapshot mark nothing is released. Returns how many files
    /// were removed. Blocks; runs on the writer thread between batches.
    pub fn release_to(&self, index: u64) -> Result<usize> {
        let (tx, rx) = mpsc::sync_channel(1);
        let (reply, count) = mpsc::channel();
        self.queue.push(
            Request::Release { index, reply },
            0,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        wait(rx)?;
        Ok(count.try_recv().unwrap_or(0))
    }

    /// Flushes what is queued and stops the writer thread (also done on drop).
    /// Returns the fatal error if the WAL had stopped.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        self.queue.close();
        match self.writer.take() {
            // The last owner dropped the Wal inside a callback, on the writer
            // thread itself: it cannot join itself; it exits once it returns.
            Some(h) if h.thread().id() == std::thread::current().id() => Ok(()),
            Some(h) => h.join().unwrap_or(Err(WalError::WriterPanicked)),
            None => Ok(()),
        }
    }

    /// Bytes on disk: the sum of the segment files' (preallocated) sizes.
    pub fn disk_size(&self) -> u64 {
        self.disk_size.load(Ordering::Relaxed)
    }

    /// The directory this WAL lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "WAL closed after an error");
        }
    }
}

#[cfg(test)]
mod failpoints;
#[cfg(all(test, not(loom)))]
mod tests;
