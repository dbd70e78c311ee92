//! The writer: the [`Sink`] that turns a batch of requests into one write and
//! one fdatasync on the live segment, rolling over to a new segment when the
//! batch does not fit, and deleting released segments. Runs on the WAL's own
//! thread, so its state needs no locks.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc as StdArc;

use super::error::WalError;
use super::group_commit::Sink;
use super::record::{self, Encoded};
use super::recovery::{self, Opened, SegmentState};
use super::segment::{self, CreateError, HEADER_LEN};
use super::{HardState, SnapshotMark, WalOptions};
use crate::sync::{Arc, AtomicU64, Ordering};

/// A request in the group-commit queue.
pub(crate) enum Request {
    /// Entries (already encoded, contiguous) and/or a hard state.
    Append {
        entries: Vec<Encoded>,
        /// Index range of `entries`, if any.
        range: Option<(u64, u64)>,
        hard_state: Option<HardState>,
        /// False: written, not fdatasynced (a commit-only hard state, as
        /// etcd's `MustSync`); it becomes durable with the next synced write.
        sync: bool,
    },
    /// A snapshot mark.
    Snapshot(SnapshotMark),
    /// Delete segments fully covered by `index` (and the snapshot mark);
    /// the count removed is sent on `reply`.
    Release {
        index: u64,
        reply: mpsc::Sender<usize>,
    },
    /// Rejected when enqueued; carried through the queue so its callback
    /// still comes in order, from the writer.
    Invalid(WalError),
}

impl Request {
    /// Bytes this request adds to a batch (for the group-commit cap).
    pub(crate) fn size(&self) -> usize {
        match self {
            Request::Append {
                entries,
                hard_state,
                ..
            } => {
                let e: u64 = entries.iter().map(Encoded::framed_len).sum();
                (e + if hard_state.is_some() {
                    record::framed_len(24)
                } else {
                    0
                }) as usize
            }
            Request::Snapshot(_) => record::framed_len(16) as usize,
            Request::Release { .. } | Request::Invalid(_) => 0,
        }
    }
}

/// Largest segment offset a frame's batch-start field can express.
const MAX_SEGMENT: u64 = (u32::MAX as u64) * 8;

pub(crate) struct Writer {
    dir: PathBuf,
    opts: WalOptions,
    segments: Vec<SegmentState>,
    file: File,
    offset: u64,
    capacity: u64,
    /// max(last entry index, snapshot index): the next append may start at +1.
    last_index: u64,
    snapshot: Option<SnapshotMark>,
    hard_state: HardState,
    fatal: Option<StdArc<WalError>>,
    disk_size: Arc<AtomicU64>,
    buf: Vec<u8>,
    /// The live segment holds writes not yet fdatasynced.
    unsynced: bool,
}

impl Writer {
    pub(crate) fn new(
        dir: PathBuf,
        opts: WalOptions,
        opened: Opened,
        disk_size: Arc<AtomicU64>,
    ) -> Writer {
        let total: u64 = opened.segments.iter().map(|s| s.size).sum();
        disk_size.store(total, Ordering::Relaxed);
        Writer {
            dir,
            opts,
            segments: opened.segments,
            file: opened.live,
            offset: opened.offset,
            capacity: opened.capacity,
            last_index: opened.last_index,
            snapshot: opened.recovered.snapshot,
            hard_state: opened.recovered.hard_state,
            fatal: None,
            disk_size,
            buf: Vec::new(),
            unsynced: false,
        }
    }

    /// The error the WAL stopped with, if it did.
    pub(crate) fn fatal(&self) -> Option<WalError> {
        self.fatal.as_ref().map(|f| WalError::Fatal(f.clone()))
    }

    fn live_path(&self) -> PathBuf {
        self.segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }

    /// Starts a new segment big enough for `need` more bytes.
    fn roll_over(&mut self, need: u64) -> Result<(), WalError> {
        if self.unsynced {
            // Later segments must never be durable ahead of this one:
            // recovery takes damage before the last segment for corruption.
            let path = self.live_path();
            if let Err(e) = self.file.sync_data() {
                return Err(self.stop(WalError::io("fdatasync", &path, e)));
            }
            self.unsynced = false;
        }
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let pro = recovery::prologue(self.snapshot, self.hard_state);
        let start = HEADER_LEN + pro.len() as u64;
        let capacity = self.opts.segment_size.max(start + need);
        if start > MAX_SEGMENT {
            return Err(WalError::InvalidAppend(
                "batch too large for one segment".into(),
            ));
        }
        match segment::create(&self.dir, seq, self.last_index + 1, &pro, capacity) {
            Ok((file, path)) => {
                self.file = file;
                self.offset = start;
                self.capacity = capacity;
                self.segments.push(SegmentState {
                    seq,
                    path,
                    max_index: None,
                    size: capacity,
                });
                self.disk_size.fetch_add(capacity, Ordering::Relaxed);
                Ok(())
            }
            Err(CreateError::Before(e)) => {
                if let WalError::NoSpace { path } = &e {
                    tracing::warn!(path = %path.display(), "WAL: no space to preallocate a new segment; failing the batch");
                }
                Err(e)
            }
            Err(CreateError::After(e)) => Err(self.stop(e)),
        }
    }

    /// Records a fatal error; returns it for the current batch.
    fn stop(&mut self, e: WalError) -> WalError {
        tracing::error!(error = %e, "WAL stopped: a write or fsync failed");
        self.fatal = Some(StdArc::new(e.clone()));
        e
    }

    /// Deletes leading segments whose entries are all covered by both `index`
    /// and the durable snapshot mark; never the live segment.
    fn release(&mut self, index: u64) -> Result<usize, WalError> {
        let limit = index.min(self.snapshot.map_or(0, |s| s.index));
        let mut removed = 0;
        while self.segments.len() > 1 {
            let s = &self.segments[0];
            if s.max_index.is_some_and(|m| m > limit) {
                break;
            }
            fs::remove_file(&s.path).map_err(|e| WalError::io("remove", &s.path, e))?;
            // One segment at a time, so a crash never leaves a hole in the sequence.
            segment::sync_dir(&self.dir)?;
            self.disk_size.fetch_sub(s.size, Ordering::Relaxed);
            self.segments.remove(0);
            removed += 1;
        }
        Ok(removed)
    }
}

impl Sink<Request> for Writer {
    fn commit(&mut self, items: Vec<Request>) -> Vec<Result<(), WalError>> {
        if let Some(f) = self.fatal() {
            return items.iter().map(|_| Err(f.clone())).collect();
        }
        let n = items.len();
        let mut results: Vec<Result<(), WalError>> = vec![Ok(()); n];
        // Validate against the state as it will be once earlier items land.
        let mut last_index = self.last_index;
        let mut snapshot = self.snapshot;
        let mut hard_state = self.hard_state;
        let mut max_entry: Option<u64> = None;
        let mut records: Vec<(usize, Encoded)> = Vec::new();
        let mut releases = Vec::new();
        let mut need_sync = false;
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Request::Invalid(e) => results[i] = Err(e),
                Request::Append {
                    entries,
                    range,
                    hard_state: hs,
                    sync,
                } => {
                    need_sync |= sync;
                    if let Some((first, last)) = range {
                        if first > last_index + 1 {
                            results[i] = Err(WalError::InvalidAppend(format!(
                                "entry {first} would leave a gap after {last_index}"
                            )));
                            continue;
                        }
                        last_index = last.max(snapshot.map_or(0, |s| s.index));
                        max_entry = Some(max_entry.map_or(last, |m| m.max(last)));
                    }
                    records.extend(entries.into_iter().map(|e| (i, e)));
                    if let Some(hs) = hs {
                        hard_state = hs;
                        records.push((i, record::encode_hard_state(hs)));
                    }
                }
                Request::Snapshot(m) => {
                    need_sync = true;
                    if let Some(s) = snapshot {
                        if m.index < s.index {
                            results[i] = Err(WalError::InvalidAppend(format!(
                                "snapshot mark {} is behind the recorded {}",
                                m.index, s.index
                            )));
                            continue;
                        }
                    }
                    snapshot = Some(m);
                    last_index = last_index.max(m.index);
                    records.push((i, record::encode_snapshot_mark(m)));
                }
                Request::Release { index, reply } => releases.push((i, index, reply)),
            }
        }

        if !records.is_empty() {
            let total: u64 = records.iter().map(|(_, r)| r.framed_len()).sum();
            if self.offset + total > self.capacity || self.offset > MAX_SEGMENT {
                if let Err(e) = self.roll_over(total) {
                    let fatal = self.fatal.is_some();
                    for (i, _) in &records {
                        results[*i] = Err(e.clone());
                    }
                    if fatal {
                        return results.into_iter().map(|_| Err(e.clone())).collect();
                    }
                    // Nothing written: the state stays as it was; releases still run.
                    return self.finish_releases(results, releases);
                }
            }
            let batch_start = self.offset;
            self.buf.clear();
            for (_, r) in &records {
                record::encode_frame(&mut self.buf, r, batch_start);
            }
            let path = self.live_path();
            #[cfg(test)]
            if super::failpoints::hit(&self.dir, super::failpoints::Fault::Write) {
                let e = self.stop(WalError::io(
                    "write",
                    &path,
                    std::io::Error::from_raw_os_error(libc::EIO),
                ));
                return results.into_iter().map(|_| Err(e.clone())).collect();
            }
            crate::failpoint::crash_point("wal::before_write");
            let io = self
                .file
                .write_all_at(&self.buf, batch_start)
                .map_err(|e| WalError::io("write", &path, e))
                .and_then(|()| {
                    if !need_sync {
                        return Ok(());
                    }
                    if crate::failpoint::hit("wal::before_fsync") {
                        self.power_loss(batch_start);
                    }
                    self.file
                        .sync_data()
                        .map_err(|e| WalError::io("fdatasync", &path, e))
                });
            if let Err(e) = io {
                let e = self.stop(e);
                return results.into_iter().map(|_| Err(e.clone())).collect();
            }
            self.unsynced = !need_sync;
            if need_sync {
                crate::failpoint::crash_point("wal::after_fsync");
            }
            self.offset += total;
            if self.buf.capacity() > 2 * self.opts.max_batch_bytes {
                self.buf = Vec::new();
            }
            self.last_index = last_index;
            self.snapshot = snapshot;
            self.hard_state = hard_state;
            if let (Some(m), Some(seg)) = (max_entry, self.segments.last_mut()) {
                seg.max_index = Some(seg.max_index.map_or(m, |x| x.max(m)));
            }
        }
        self.finish_releases(results, releases)
    }
}

impl Writer {
    /// The `wal::before_fsync` failpoint: a power cut between the write and
    /// the fdatasync. Whatever had not reached the disk is lost: the second
    /// half of the batch just written is zeroed (a torn write; the first
    /// half may or may not have made it), then the process dies.
    fn power_loss(&self, batch_start: u64) -> ! {
        let keep = (self.buf.len() / 2) as u64;
        let zeros = vec![0u8; self.buf.len() - keep as usize];
        let _ = self.file.write_all_at(&zeros, batch_start + keep);
        crate::failpoint::crash("wal::before_fsync")
    }

    fn finish_releases(
        &mut self,
        mut results: Vec<Result<(), WalError>>,
        releases: Vec<(usize, u64, mpsc::Sender<usize>)>,
    ) -> Vec<Result<(), WalError>> {
        for (i, index, reply) in releases {
            match self.release(index) {
                Ok(k) => {
                    let _ = reply.send(k);
                }
                Err(e) => results[i] = Err(e),
            }
        }
        results
    }
}
