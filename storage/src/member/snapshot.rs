//! State-machine snapshots: an rkyv archive of the whole replicated state,
//! read back through memmap2 without deserializing it: keys and values of
//! the restored store are slices of the mapped file (zero copy).
//!
//! - Writing streams the archive from the store to the file ([`save`]): the
//!   records are serialized from borrows, one by one, so memory stays flat
//!   whatever the store's size.
//! - After a member saved one, the records it covers move from the heap to
//!   the file ([`rebase_on_file`], then `KvStore::adopt`): a running member
//!   holds its values the way a restarted one does, in clean page-cache
//!   pages the kernel can take back (compare etcd's bbolt mmap).
//!
//! File layout (format 2): a 32-byte header (`KEELSNP2`, archive length u64
//! LE, CRC32 of the archive u32 LE, zero padding) followed by the archive,
//! which starts 32-byte aligned. A record's key and value are one byte
//! string (key first) with the key's length.

use std::fs::{self, File};
use std::io::{Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use rkyv::rancor::Error as RkyvError;
use rkyv::ser::writer::IoWriter;
use rkyv::ser::Positional;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::{ArchiveWith, InlineAsBox, SerializeWith};
use rkyv::Place;

use crate::apply::{Limits, StateMachine};
use crate::mvcc::{KvStore, PutMeta, Rebased, Record, Revision};

/// Format 2: records archived from borrowed keys and values (boxes).
const MAGIC: &[u8; 8] = b"KEELSNP2";
const HEADER_LEN: usize = 32;

/// Errors reading or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system failed.
    #[error("snapshot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid keel snapshot.
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// One retained change, archived. Serialized straight from the store's
/// record (key and value borrowed, never copied); read back through
/// [`ArchivedSnapRecord`] in the mapped file.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub struct SnapRecord<'a> {
    main: i64,
    sub: i64,
    /// The key's bytes, then the value's.
    #[rkyv(with = InlineAsBox)]
    data: &'a [u8],
    key_len: u32,
    create_revision: i64,
    version: i64,
    lease: i64,
    tombstone: bool,
}

/// One lease, archived.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub struct SnapLease {
    id: i64,
    ttl: i64,
    remaining_ttl: i64,
    keys: Vec<Vec<u8>>,
}

/// One member, archived.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub struct SnapMember {
    id: u64,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    learner: bool,
    in_conf: bool,
}

/// The whole replicated state at one log index. The records are a view of
/// the store that serializes them one by one ([`Records`]).
#[derive(rkyv::Archive, rkyv::Serialize)]
pub struct SnapshotData<'a> {
    index: u64,
    term: u64,
    current_rev: i64,
    compact_rev: i64,
    #[rkyv(with = Records)]
    records: &'a KvStore,
    leases: Vec<SnapLease>,
    alarms: Vec<(u64, i32)>,
    members: Vec<SnapMember>,
}

/// Archives a store's records as an `ArchivedVec<ArchivedSnapRecord>`
/// straight from the store, without collecting them first.
pub struct Records;

/// The store's records with their count, as `serialize_from_iter` wants.
#[derive(Clone)]
struct RecordIter<'a, I> {
    inner: I,
    left: usize,
    _store: std::marker::PhantomData<&'a KvStore>,
}

impl<'a, I: Iterator<Item = (&'a Revision, &'a Record)>> Iterator for RecordIter<'a, I> {
    type Item = SnapRecord<'a>;

    fn next(&mut self) -> Option<SnapRecord<'a>> {
        let (r, rec) = self.inner.next()?;
        self.left = self.left.saturating_sub(1);
        let meta = rec.meta();
        Some(SnapRecord {
            main: r.main,
            sub: r.sub,
            data: rec.data(),
            key_len: rec.key_len(),
            create_revision: meta.create_revision,
            version: meta.version,
            lease: meta.lease,
            tombstone: rec.is_tombstone(),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<'a, I: Iterator<Item = (&'a Revision, &'a Record)>> ExactSizeIterator for RecordIter<'a, I> {}

impl<'a> ArchiveWith<&'a KvStore> for Records {
    type Archived = ArchivedVec<ArchivedSnapRecord<'a>>;
    type Resolver = VecResolver;

    fn resolve_with(kv: &&'a KvStore, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(kv.record_count(), resolver, out);
    }
}

impl<'a, S> SerializeWith<&'a KvStore, S> for Records
where
    S: rkyv::rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
{
    fn serialize_with(kv: &&'a KvStore, s: &mut S) -> Result<VecResolver, S::Error> {
        let iter = RecordIter {
            inner: kv.records(),
            left: kv.record_count(),
            _store: std::marker::PhantomData,
        };
        ArchivedVec::<ArchivedSnapRecord<'a>>::serialize_from_iter::<SnapRecord<'a>, _, _>(iter, s)
    }
}

/// A writer that keeps a CRC32 of everything written through it.
struct Crc<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams the state machine as a snapshot (header, then the archive) into
/// `out`, which must be positioned at its start. Keys and values go from the
/// store to `out` without an intermediate copy of the state; the header's
/// length and CRC are written last (hence `Seek`).
pub fn write_to<W: Write + Seek>(sm: &StateMachine, out: W) -> Result<W, std::io::Error> {
    let data = SnapshotData {
        index: sm.applied_index,
        term: sm.applied_term,
        current_rev: sm.kv.current_rev(),
        compact_rev: sm.kv.compact_rev(),
        records: &sm.kv,
        leases: sm
            .lessor
            .leases()
            .map(|l| SnapLease {
                id: l.id,
                ttl: l.ttl,
                remaining_ttl: l.remaining_ttl,
                keys: l.keys.iter().map(|k| k.to_vec()).collect(),
            })
            .collect(),
        alarms: sm.alarms.iter().copied().collect(),
        members: sm
            .members
            .iter()
            .map(|(id, m)| SnapMember {
                id: *id,
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
                learner: m.learner,
                in_conf: m.in_conf,
            })
            .collect(),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    out.write_all(&[0u8; HEADER_LEN])?;
    let body = Crc {
        inner: out,
        crc: crc32fast::Hasher::new(),
    };
    let body = rkyv::api::high::to_bytes_in::<_, RkyvError>(&data, IoWriter::new(body))
        .map_err(std::io::Error::other)?;
    let len = body.pos() as u64;
    let Crc { inner: out, crc } = body.into_inner();
    let mut out = out.into_inner().map_err(|e| e.into_error())?;
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&len.to_le_bytes());
    header[16..20].copy_from_slice(&crc.finalize().to_le_bytes());
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&header)?;
    out.seek(SeekFrom::End(0))?;
    Ok(out)
}

/// Encodes the state machine as a snapshot file's bytes (header included).
pub fn encode(sm: &StateMachine) -> Result<Vec<u8>, SnapshotError> {
    write_to(sm, Cursor::new(Vec::new()))
        .map(Cursor::into_inner)
        .map_err(|e| SnapshotError::Corrupt {
            path: PathBuf::new(),
            reason: format!("encode: {e}"),
        })
}

/// Writes a snapshot of `sm` durably to `path`, streamed (temp file, fsync,
/// rename, fsync dir): memory stays flat whatever the store's size.
pub fn save(sm: &StateMachine, path: &Path) -> Result<(), SnapshotError> {
    let tmp = path.with_extension("tmp");
    let f = File::create(&tmp).map_err(io("create", &tmp))?;
    let f = write_to(sm, f).map_err(io("write", &tmp))?;
    commit(f, &tmp, path)
}

/// fsyncs `f` (written at `tmp`), renames it to `path`, fsyncs the dir.
fn commit(f: File, tmp: &Path, path: &Path) -> Result<(), SnapshotError> {
    f.sync_all().map_err(io("fsync", tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(io("rename", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync dir", dir))?;
    }
    Ok(())
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Writes snapshot bytes durably to `path` (temp file, fsync, rename, fsync dir).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    commit(f, &tmp, path)
}

/// Strips and checks the SHA-256 trailer that `Maintenance.Snapshot`
/// appends (as etcd does, for `etcdctl snapshot save`); bytes without one
/// (a member's own snapshot file) pass through.
pub fn strip_digest<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], SnapshotError> {
    // etcd's rule: a snapshot with a digest is 512-byte blocks + 32 bytes.
    if bytes.len() % 512 != 32 {
        return Ok(bytes);
    }
    let (data, digest) = bytes.split_at(bytes.len() - 32);
    if <sha2::Sha256 as sha2::Digest>::digest(data).as_slice() != digest {
        return Err(SnapshotError::Corrupt {
            path: path.to_owned(),
            reason: "sha256 trailer mismatch".into(),
        });
    }
    Ok(data)
}

/// Checks snapshot bytes and returns (index, term) without loading them.
pub fn verify(path: &Path, bytes: &[u8]) -> Result<(u64, u64), SnapshotError> {
    let data = access(path, bytes)?;
    Ok((data.index.to_native(), data.term.to_native()))
}

fn access<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<&'a ArchivedSnapshotData<'static>, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() >= HEADER_LEN && &bytes[..8] == b"KEELSNP1" {
        return Err(corrupt(
            "snapshot format 1 (an older keel); this keel reads format 2".into(),
        ));
    }
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt("not a keel snapshot (bad magic)".into()));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len8) as usize;
    let mut crc4 = [0u8; 4];
    crc4.copy_from_slice(&bytes[16..20]);
    let end = HEADER_LEN.checked_add(len).filter(|&e| e <= bytes.len());
    let Some(end) = end else {
        return Err(corrupt(format!("truncated: header says {len} bytes")));
    };
    let archive = &bytes[HEADER_LEN..end];
    if crc32fast::hash(archive) != u32::from_le_bytes(crc4) {
        return Err(corrupt("checksum mismatch".into()));
    }
    rkyv::access::<ArchivedSnapshotData<'static>, RkyvError>(archive)
        .map_err(|e| corrupt(format!("invalid archive: {e}")))
}

/// Maps a snapshot file read-only (snapshot files are written once, temp +
/// rename, never modified in place) as one shared buffer that slices of it
/// keep alive.
fn map(path: &Path) -> Result<Bytes, SnapshotError> {
    let file = File::open(path).map_err(io("open", path))?;
    // SAFETY: snapshot files are written once (temp + rename) and never
    // modified in place, so the mapping does not change under us.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("mmap", path))?;
    Ok(Bytes::from_owner(map))
}

/// The slice of `whole` that `part` (a reference into it) covers.
fn slice_of(whole: &Bytes, part: &[u8]) -> Bytes {
    let off = part.as_ptr() as usize - whole.as_ptr() as usize;
    whole.slice(off..off + part.len())
}

/// Lets the kernel take back the resident pages of a mapped snapshot: the
/// file stays mapped and its pages stay in the page cache (clean,
/// reclaimable), so reads fault them back in without I/O unless memory was
/// short. Checking a snapshot reads every page; this keeps those pages from
/// counting against the process.
fn release_pages(whole: &Bytes) {
    #[cfg(unix)]
    {
        let page = 4096;
        let start = whole.as_ptr() as usize;
        let aligned = start - start % page;
        // SAFETY: the range lies within (page-rounded) a read-only shared
        // file mapping that `whole` keeps alive; MADV_DONTNEED on such a
        // mapping only drops this process's page-table entries (contents
        // are re-read from the file), it never changes data.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                whole.len() + (start - aligned),
                libc::MADV_DONTNEED,
            );
        }
    }
}

/// The records of a just-written snapshot of `sm`, with their keys and
/// values moved from the heap into the mapped file: built off the apply
/// path, then adopted by the live store ([`KvStore::adopt`]). `None` if the
/// file does not hold exactly `sm`'s records (nothing is moved then).
pub fn rebase_on_file(sm: &StateMachine, path: &Path) -> Result<Option<Rebased>, SnapshotError> {
    let whole = map(path)?;
    let data = access(path, &whole)?;
    if data.records.len() != sm.kv.record_count() {
        return Ok(None);
    }
    let mut file = data.records.iter();
    let mut same = true;
    let rebased = sm.kv.rebased(|r, rec| match file.next() {
        Some(f)
            if f.main.to_native() == r.main
                && f.sub.to_native() == r.sub
                && f.key_len.to_native() == rec.key_len()
                && f.data.get() == rec.data() =>
        {
            slice_of(&whole, f.data.get())
        }
        _ => {
            same = false;
            Bytes::copy_from_slice(rec.data())
        }
    });
    release_pages(&whole);
    Ok(same.then_some(rebased))
}

/// Loads a state machine from a mapped snapshot file. Keys and values stay
/// in the mapping (the returned state keeps it alive).
pub fn load(
    path: &Path,
    limits: Limits,
    min_lease_ttl: i64,
) -> Result<StateMachine, SnapshotError> {
    let whole = map(path)?;
    let data = access(path, &whole)?;
    let slice = |s: &[u8]| slice_of(&whole, s);
    let mut bad = None;
    let records = data.records.iter().map_while(|r| {
        let rev = Revision::new(r.main.to_native(), r.sub.to_native());
        let meta = PutMeta {
            create_revision: r.create_revision.to_native(),
            version: r.version.to_native(),
            lease: r.lease.to_native(),
        };
        let rec = Record::from_parts(
            slice(r.data.get()),
            r.key_len.to_native(),
            r.tombstone,
            meta,
        );
        if rec.is_none() {
            bad = Some(rev);
        }
        rec.map(|rec| (rev, rec))
    });
    let kv = KvStore::restore(
        records,
        data.current_rev.to_native(),
        data.compact_rev.to_native(),
    );
    if let Some(rev) = bad {
        return Err(SnapshotError::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "record at revision {}/{}: key longer than its data",
                rev.main, rev.sub
            ),
        });
    }
    let mut sm = StateMachine::new(limits, min_lease_ttl);
    sm.kv = kv;
    let now = Instant::now();
    for l in data.leases.iter() {
        let id = l.id.to_native();
        sm.lessor
            .restore(id, l.ttl.to_native(), l.remaining_ttl.to_native(), now);
        for k in l.keys.iter() {
            sm.lessor.attach(id, &slice(k.as_slice()));
        }
    }
    for a in data.alarms.iter() {
        sm.alarms.insert((a.0.to_native(), a.1.to_native()));
    }
    for m in data.members.iter() {
        sm.members.insert(
            m.id.to_native(),
            crate::apply::MemberInfo {
                name: m.name.to_string(),
                peer_urls: m.peer_urls.iter().map(|u| u.to_string()).collect(),
                client_urls: m.client_urls.iter().map(|u| u.to_string()).collect(),
                learner: m.learner,
                in_conf: m.in_conf,
            },
        );
    }
    sm.applied_index = data.index.to_native();
    sm.applied_term = data.term.to_native();
    release_pages(&whole);
    Ok(sm)
}

/// The snapshot files in `dir`, newest (highest index) first.
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name()?.to_str()?;
            let idx = name.strip_suffix(".snap")?;
            Some((u64::from_str_radix(idx, 16).ok()?, p))
        })
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    out
}

/// The file name of the snapshot at `index`.
pub fn file_name(index: u64) -> String {
    format!("{index:016x}.snap")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::MemberInfo;
    use crate::mvcc::KeyRange;
    use crate::proto::etcdserverpb::{LeaseGrantRequest, PutRequest, RangeRequest};
    use crate::proto::keelpb::{internal_request::Request, InternalRequest};
    use crate::proto::mvccpb::KeyValue;

    fn limits() -> Limits {
        Limits {
            quota_bytes: 0,
            member_id: 1,
        }
    }

    fn apply(sm: &mut StateMachine, index: u64, r: Request) {
        let req = InternalRequest {
            request: Some(r),
            ..Default::default()
        };
        let out = sm.apply(index, 1, req, Instant::now());
        assert!(out.result.is_ok(), "{:?}", out.result);
    }

    /// A state with history (overwrites, a delete, a compaction), a lease
    /// with keys, an alarm-free member list.
    fn state() -> StateMachine {
        let mut sm = StateMachine::new(limits(), 1);
        let mut i = 0;
        apply(
            &mut sm,
            {
                i += 1;
                i
            },
            Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 7 }),
        );
        for n in 0..300u32 {
            i += 1;
            let put = PutRequest {
                key: Bytes::from(format!("k{:03}", n % 100)),
                value: Bytes::from(vec![n as u8; (n % 7) as usize * 50]),
                lease: if n % 10 == 0 { 7 } else { 0 },
                ..Default::default()
            };
            apply(&mut sm, i, Request::Put(put));
        }
        sm.kv.write().delete_range(&KeyRange::new(
            &Bytes::from_static(b"k050"),
            &Bytes::from_static(b"k060"),
        ));
        sm.kv.compact(120).expect("compact");
        sm.members.insert(
            9,
            MemberInfo {
                name: "m9".into(),
                peer_urls: vec!["quic://127.0.0.1:1".into()],
                client_urls: vec!["http://127.0.0.1:2".into()],
                learner: true,
                in_conf: true,
            },
        );
        sm.applied_index = i;
        sm.applied_term = 3;
        sm
    }

    fn everything(sm: &StateMachine, rev: i64) -> Vec<KeyValue> {
        let r = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            revision: rev,
            ..Default::default()
        };
        sm.range(&r).expect("range").kvs
    }

    #[test]
    fn save_then_load_gives_back_the_same_state() {
        let sm = state();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(file_name(sm.applied_index));
        save(&sm, &path).expect("save");
        let bytes = fs::read(&path).expect("read");
        assert_eq!(bytes, encode(&sm).expect("encode"), "file = encode()");
        assert_eq!(verify(&path, &bytes).expect("verify"), (301, 3));
        let back = load(&path, limits(), 1).expect("load");
        assert_eq!(back.kv.current_rev(), sm.kv.current_rev());
        assert_eq!(back.kv.compact_rev(), 120);
        assert_eq!(back.kv.record_count(), sm.kv.record_count());
        for rev in [0, 120, 200, sm.kv.current_rev()] {
            assert_eq!(everything(&back, rev), everything(&sm, rev), "at {rev}");
        }
        assert!(back.kv.records().zip(sm.kv.records()).all(|(a, b)| a == b));
        let lease = back.lessor.get(7).expect("lease restored");
        assert_eq!(lease.ttl, 60);
        assert_eq!(lease.keys, sm.lessor.get(7).expect("lease").keys);
        assert_eq!(back.members.get(&9).map(|m| m.name.as_str()), Some("m9"));
        assert_eq!((back.applied_index, back.applied_term), (301, 3));
    }

    #[test]
    fn records_move_to_the_file_and_reads_stay_the_same() {
        let mut live = state();
        for n in 0..9000u32 {
            let mut w = live.kv.write();
            w.put(
                Bytes::from(format!("bulk{n:05}")),
                Bytes::from(vec![n as u8; 40]),
                0,
            );
            w.end();
        }
        let snap = live.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(file_name(snap.applied_index));
        save(&snap, &path).expect("save");
        // The live store moves on while the snapshot is written: its last
        // chunk is copied on write and keeps its heap records.
        for n in 0..5u8 {
            let mut w = live.kv.write();
            w.put(Bytes::from(vec![b'z', n]), Bytes::from_static(b"new"), 0);
            w.end();
        }
        let revs = [0, 150, 5000, live.kv.current_rev()];
        let want: Vec<Vec<KeyValue>> = revs.iter().map(|r| everything(&live, *r)).collect();
        let rebased = rebase_on_file(&snap, &path)
            .expect("map")
            .expect("file matches the state");
        let total = snap.kv.record_count();
        let moved = live.kv.adopt(&snap.kv, rebased);
        assert_eq!(moved, total - total % 4096, "every untouched chunk moved");
        drop(snap);
        let got: Vec<Vec<KeyValue>> = revs.iter().map(|r| everything(&live, *r)).collect();
        assert_eq!(got, want, "same answers after the move");
        // A file that does not hold the state's records moves nothing.
        let other = StateMachine::new(limits(), 1);
        assert!(rebase_on_file(&other, &path).expect("map").is_none());
    }

    #[test]
    fn damaged_or_old_files_are_refused_by_name() {
        let sm = state();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.snap");
        let good = encode(&sm).expect("encode");
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        let err = verify(&path, &flipped).expect_err("bit flip");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        let err = verify(&path, &good[..good.len() - 1]).expect_err("cut");
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut old = good.clone();
        old[..8].copy_from_slice(b"KEELSNP1");
        let err = verify(&path, &old).expect_err("format 1");
        assert!(err.to_string().contains("format 1"), "{err}");
        assert!(err.to_string().contains("x.snap"), "{err}");
    }
}
