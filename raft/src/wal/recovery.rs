//! Recovery: reads every segment through memmap2, rebuilds the log view
//! (hard state, snapshot mark, entries), repairs a torn tail of the last
//! segment, and refuses to start on corruption anywhere else.
//!
//! How a torn tail is told apart from mid-log corruption: a crash can only
//! tear the last write, and every write is one batch whose frames all carry
//! the offset at which that write began (the batch start). Scanning the last
//! segment stops at the first offset `X` that does not hold a valid frame (a
//! zero word, a short or overlong frame, a CRC mismatch, non-zero padding, an
//! undecodable payload). Then:
//! - the rest of the file is zeros: the clean end of the log;
//! - some later 8-aligned offset holds a valid frame whose batch start is
//!   after `X`: that frame was written by a later write, which only starts
//!   once the write holding `X` was fsynced, so `X` is damage to durable data:
//!   [`WalError::Corrupt`] at `X`;
//! - otherwise (garbage, zeros, or valid frames of the same torn write):
//!   a torn tail. The bytes from `X` to the last non-zero byte are copied to
//!   `<segment>.broken`, the segment is truncated at `X` (and preallocated
//!   again), and a warning is logged.
//!
//! In a segment other than the last, anything but valid frames followed by
//! zeros is corruption. So is a header that does not check, a missing
//! sequence number, or entries that leave a gap after the snapshot mark.
//!
//! Limit: damage to the very last write after it was acknowledged (media
//! corruption, not a crash) looks exactly like a torn write and is cut.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{Result, WalError};
use super::record::{self, Frame, Record};
use super::segment::{self, HEADER_LEN};
use super::{Entry, HardState, Recovered, SnapshotMark, TailRepair, WalOptions};

/// What the writer needs to know about each segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentState {
    pub(crate) seq: u64,
    pub(crate) path: PathBuf,
    /// Highest entry index written into this segment (None: no entries).
    pub(crate) max_index: Option<u64>,
    /// Bytes the file takes (its length, preallocation included).
    pub(crate) size: u64,
}

/// Everything `open` hands the writer.
pub(crate) struct Opened {
    pub(crate) recovered: Recovered,
    pub(crate) segments: Vec<SegmentState>,
    pub(crate) live: File,
    pub(crate) offset: u64,
    pub(crate) capacity: u64,
    pub(crate) last_index: u64,
}

/// Segment files in `dir` as `(seq, first_index, path)`, sorted by seq.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| WalError::io("read directory", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| WalError::io("read directory", dir, e))?;
        let name = ent.file_name();
        if let Some((seq, first)) = name.to_str().and_then(segment::parse_name) {
            out.push((seq, first, ent.path()));
        }
    }
    out.sort_by_key(|s| s.0);
    Ok(out)
}

/// Maps a file read-only. An empty file maps to an empty slice.
fn map(path: &Path) -> Result<Option<Mmap>> {
    let f = File::open(path).map_err(|e| WalError::io("open", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| WalError::io("stat", path, e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the WAL directory is locked (flock on LOCK) for the lifetime of
    // the Wal, and this map is dropped before anything writes to the file;
    // files are not truncated by others while mapped.
    let m = unsafe { Mmap::map(&f) }.map_err(|e| WalError::io("mmap", path, e))?;
    Ok(Some(m))
}

/// How scanning one segment ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Valid frames up to `at`, zeros after.
    Clean { at: u64 },
    /// Torn tail: cut `[at, cut_end)` (cut_end = end of the last non-zero byte).
    Torn {
        at: u64,
        cut_end: u64,
        reason: String,
    },
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Scans the records of a segment image (header already checked), feeding
/// each valid frame and its offset to `apply`. Pure: no I/O, never panics.
/// `Err((offset, reason))` is corruption.
pub(crate) fn scan(
    data: &[u8],
    last: bool,
    mut apply: impl FnMut(u64, Frame) -> std::result::Result<(), String>,
) -> std::result::Result<End, (u64, String)> {
    let mut pos = HEADER_LEN as usize;
    let bad = loop {
        match record::parse_frame(data, pos, HEADER_LEN) {
            Ok(Some(frame)) => {
                let len = frame.len as usize;
                apply(pos as u64, frame).map_err(|r| (pos as u64, r))?;
                pos += len;
            }
            Ok(None) => break "end of log".to_string(),
            Err(reason) => break reason,
        }
    };
    let at = pos as u64;
    let rest = data.get(pos..).unwrap_or(&[]);
    if all_zero(rest) {
        return Ok(End::Clean { at });
    }
    if !last {
        let reason = if bad == "end of log" {
            "non-zero data after the end of the log in a segment that is not the last".to_string()
        } else {
            bad
        };
        return Err((at, reason));
    }
    // Look for a valid frame of a later write anywhere after `at`.
    let mut y = pos + 8;
    while y + 8 <= data.len() {
        if data[y..y + 8] != [0u8; 8] {
            if let Ok(Some(f)) = record::parse_frame(data, y, HEADER_LEN) {
                if f.batch_start > at {
                    return Err((
                        at,
                        format!("{bad}, followed by a valid record written later (at offset {y})"),
                    ));
                }
            }
        }
        y += 8;
    }
    let last_nonzero = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    Ok(End::Torn {
        at,
        cut_end: at + last_nonzero as u64,
        reason: bad,
    })
}

/// The log as rebuilt so far.
#[derive(Default)]
struct LogView {
    hard_state: HardState,
    snapshot: Option<SnapshotMark>,
    /// Sorted by index; may have gaps until the end (see `finish`).
    entries: Vec<Entry>,
    /// Where each entry came from: (segment number in the list, offset).
    locs: Vec<(usize, u64)>,
}

impl LogView {
    fn apply(&mut self, seg: usize, offset: u64, rec: Record) -> Option<u64> {
        match rec {
            Record::Entry(e) => {
                let idx = e.index;
                // A later write of index i discards everything logged at >= i.
                let cut = self.entries.partition_point(|x| x.index < idx);
                self.entries.truncate(cut);
                self.locs.truncate(cut);
                self.entries.push(e);
                self.locs.push((seg, offset));
                Some(idx)
            }
            Record::HardState(hs) => {
                self.hard_state = hs;
                None
            }
            Record::SnapshotMark(m) => {
                let keep = self.entries.partition_point(|x| x.index <= m.index);
                self.entries.drain(..keep);
                self.locs.drain(..keep);
                self.snapshot = Some(m);
                None
            }
        }
    }

    /// Drops entries covered by the snapshot and checks the rest are
    /// contiguous from the snapshot index + 1 (or from 1).
    fn finish(
        mut self,
        paths: &[PathBuf],
    ) -> Result<(HardState, Option<SnapshotMark>, Vec<Entry>)> {
        let base = self.snapshot.map_or(0, |s| s.index);
        let keep = self.entries.partition_point(|x| x.index <= base);
        self.entries.drain(..keep);
        self.locs.drain(..keep);
        for (expect, (e, &(seg, off))) in (base + 1..).zip(self.entries.iter().zip(&self.locs)) {
            if e.index != expect {
                let file = paths.get(seg).cloned().unwrap_or_default();
                return Err(WalError::corrupt(
                    file,
                    off,
                    format!("log gap: expected entry {expect}, found {}", e.index),
                ));
            }
        }
        Ok((self.hard_state, self.snapshot, self.entries))
    }
}

fn broken_path(seg: &Path) -> PathBuf {
    let base = format!("{}.broken", seg.display());
    let mut p = PathBuf::from(&base);
    let mut n = 1;
    while p.exists() {
        p = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    p
}

/// Copies the cut bytes aside, truncates the segment at `at` and
/// preallocates it back to `len`. Returns the repair record.
fn repair(dir: &Path, path: &Path, cut: &[u8], at: u64, len: u64) -> Result<TailRepair> {
    let broken = broken_path(path);
    let mut f = File::create(&broken).map_err(|e| WalError::io("create", &broken, e))?;
    f.write_all(cut)
        .map_err(|e| WalError::io("write", &broken, e))?;
    f.sync_all()
        .map_err(|e| WalError::io("fsync", &broken, e))?;
    segment::sync_dir(dir)?;
    let seg = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io("open", path, e))?;
    seg.set_len(at)
        .map_err(|e| WalError::io("truncate", path, e))?;
    if let Err(e) = segment::preallocate(&seg, len) {
        tracing::warn!(path = %path.display(), error = %e, "could not preallocate the repaired WAL segment again");
    }
    seg.sync_all().map_err(|e| WalError::io("fsync", path, e))?;
    Ok(TailRepair {
        file: path.to_path_buf(),
        offset: at,
        bytes_cut: cut.len() as u64,
        broken,
    })
}

/// The prologue of a new segment: the latest snapshot mark and hard state,
/// so that deleting older segments never loses them.
pub(crate) fn prologue(snapshot: Option<SnapshotMark>, hs: HardState) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(m) = snapshot {
        record::encode_frame(&mut buf, &record::encode_snapshot_mark(m), HEADER_LEN);
    }
    record::encode_frame(&mut buf, &record::encode_hard_state(hs), HEADER_LEN);
    buf
}

/// Opens the log in `dir` (already created and locked), recovering it.
pub(crate) fn recover(dir: &Path, opts: &WalOptions) -> Result<Opened> {
    // Leftovers of a segment creation that crashed before its rename.
    let rd = fs::read_dir(dir).map_err(|e| WalError::io("read directory", dir, e))?;
    for ent in rd.flatten() {
        if ent
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".wal.tmp"))
        {
            let p = ent.path();
            fs::remove_file(&p).map_err(|e| WalError::io("remove", &p, e))?;
        }
    }
    let list = list_segments(dir)?;
    if list.is_empty() {
        let pro = prologue(None, HardState::default());
        let capacity = opts.segment_size.max(HEADER_LEN + pro.len() as u64);
        let (live, path) = segment::create(dir, 1, 1, &pro, capacity).map_err(|e| match e {
            segment::CreateError::Before(e) | segment::CreateError::After(e) => e,
        })?;
        return Ok(Opened {
            recovered: Recovered {
                hard_state: HardState::default(),
                snapshot: None,
                entries: Vec::new(),
                repaired_tail: None,
            },
            segments: vec![SegmentState {
                seq: 1,
                path,
                max_index: None,
                size: capacity,
            }],
            live,
            offset: HEADER_LEN + pro.len() as u64,
            capacity,
            last_index: 0,
        });
    }

    let paths: Vec<PathBuf> = list.iter().map(|s| s.2.clone()).collect();
    let mut view = LogView::default();
    let mut segments = Vec::with_capacity(list.len());
    let mut repaired_tail = None;
    let mut live_end = HEADER_LEN;
    for (i, (seq, first, path)) in list.iter().enumerate() {
        let last = i + 1 == list.len();
        if i > 0 && *seq != list[i - 1].0 + 1 {
            return Err(WalError::corrupt(
                path,
                0,
                format!("segment {} is missing", list[i - 1].0 + 1),
            ));
        }
        let mapped = map(path)?;
        let data: &[u8] = mapped.as_deref().unwrap_or(&[]);
        segment::check_header(data, *seq, *first).map_err(|r| WalError::corrupt(path, 0, r))?;
        let mut max_index = None;
        let end = scan(data, last, |off, frame| {
            if let Some(idx) = view.apply(i, off, frame.record) {
                max_index = Some(max_index.map_or(idx, |m: u64| m.max(idx)));
            }
            Ok(())
        })
        .map_err(|(off, r)| WalError::corrupt(path, off, r))?;
        let size = data.len() as u64;
        match end {
            End::Clean { at } => live_end = at,
            End::Torn {
                at,
                cut_end,
                reason,
            } => {
                let cut = data
                    .get(at as usize..cut_end as usize)
                    .unwrap_or(&[])
                    .to_vec();
                drop(mapped);
                let rep = repair(dir, path, &cut, at, size)?;
                tracing::warn!(
                    file = %path.display(),
                    offset = at,
                    bytes_cut = rep.bytes_cut,
                    broken = %rep.broken.display(),
                    reason = %reason,
                    "WAL: truncated a torn tail of the last segment"
                );
                repaired_tail = Some(rep);
                live_end = at;
            }
        }
        segments.push(SegmentState {
            seq: *seq,
            path: path.clone(),
            max_index,
            size,
        });
    }
    let (hard_state, snapshot, entries) = view.finish(&paths)?;
    let last_index = entries
        .last()
        .map_or(0, |e| e.index)
        .max(snapshot.map_or(0, |s| s.index));
    let live_path = paths.last().cloned().unwrap_or_default();
    let live = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&live_path)
        .map_err(|e| WalError::io("open", &live_path, e))?;
    let capacity = live
        .metadata()
        .map_err(|e| WalError::io("stat", &live_path, e))?
        .len();
    if let Some(s) = segments.last_mut() {
        s.size = capacity;
    }
    Ok(Opened {
        recovered: Recovered {
            hard_state,
            snapshot,
            entries,
            repaired_tail,
        },
        segments,
        live,
        offset: live_end,
        capacity,
        last_index,
    })
}

/// One record as found on disk, for tools and tests (see [`inspect_segment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo {
    /// Offset of the frame in the segment.
    pub offset: u64,
    /// Length of the frame, header and padding included.
    pub len: u64,
    /// Offset at which the write (batch) holding this record began.
    pub batch_start: u64,
    /// What the record holds.
    pub kind: RecordKind,
}

/// The content of a record, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    /// A log entry.
    Entry {
        /// Its index.
        index: u64,
        /// Its term.
        term: u64,
    },
    /// A hard state.
    HardState(HardState),
    /// A snapshot mark.
    SnapshotMark(SnapshotMark),
}

/// Lists the valid records of one segment file from its start up to the
/// first offset that does not hold a valid frame (no repair, no tail logic).
/// For dump tools and tests; the WAL itself never calls it.
pub fn inspect_segment(path: &Path) -> Result<Vec<RecordInfo>> {
    let mut data = Vec::new();
    let f = File::open(path).map_err(|e| WalError::io("open", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| WalError::io("stat", path, e))?
        .len();
    // Read into an 8-aligned buffer so rkyv can access entries in place.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(len as usize);
    data.resize(len as usize, 0u8);
    f.read_exact_at(&mut data, 0)
        .map_err(|e| WalError::io("read", path, e))?;
    aligned.extend_from_slice(&data);
    if aligned.len() < HEADER_LEN as usize {
        return Err(WalError::corrupt(path, 0, "shorter than a segment header"));
    }
    let mut out = Vec::new();
    let mut pos = HEADER_LEN as usize;
    while let Ok(Some(f)) = record::parse_frame(&aligned, pos, HEADER_LEN) {
        let kind = match f.record {
            Record::Entry(e) => RecordKind::Entry {
                index: e.index,
                term: e.term,
            },
            Record::HardState(h) => RecordKind::HardState(h),
            Record::SnapshotMark(m) => RecordKind::SnapshotMark(m),
        };
        out.push(RecordInfo {
            offset: pos as u64,
            len: f.len,
            batch_start: f.batch_start,
            kind,
        });
        pos += f.len as usize;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Recovery's scan of an arbitrary segment image never panics.
        #[test]
        fn scanning_arbitrary_images_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), last in any::<bool>()) {
            let mut img = rkyv::util::AlignedVec::<16>::new();
            img.extend_from_slice(&bytes);
            let _ = scan(&img, last, |_, _| Ok(()));
        }
    }
}
