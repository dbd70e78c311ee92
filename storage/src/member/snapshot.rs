//! State-machine snapshots: an rkyv archive of the whole replicated state,
//! read back through memmap2 without deserializing it: keys and values of
//! the restored store are slices of the mapped file (zero copy).
//!
//! File layout: a 32-byte header (`KEELSNP1`, archive length u64 LE, CRC32
//! of the archive u32 LE, zero padding) followed by the archive, which
//! starts 32-byte aligned.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use rkyv::rancor::Error as RkyvError;

use crate::apply::{Limits, StateMachine};
use crate::mvcc::{KvStore, Record, Revision};
use crate::proto::mvccpb::KeyValue;

const MAGIC: &[u8; 8] = b"KEELSNP1";
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

/// One retained change, archived.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub struct SnapRecord {
    main: i64,
    sub: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    create_revision: i64,
    version: i64,
    lease: i64,
    tombstone: bool,
}

/// One lease, archived.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub struct SnapLease {
    id: i64,
    ttl: i64,
    remaining_ttl: i64,
    keys: Vec<Vec<u8>>,
}

/// One member, archived.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub struct SnapMember {
    id: u64,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    learner: bool,
    in_conf: bool,
}

/// The whole replicated state at one log index.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub struct SnapshotData {
    index: u64,
    term: u64,
    current_rev: i64,
    compact_rev: i64,
    records: Vec<SnapRecord>,
    leases: Vec<SnapLease>,
    alarms: Vec<(u64, i32)>,
    members: Vec<SnapMember>,
}

/// Encodes the state machine as a snapshot file's bytes (header included).
pub fn encode(sm: &StateMachine) -> Result<Vec<u8>, SnapshotError> {
    let data = SnapshotData {
        index: sm.applied_index,
        term: sm.applied_term,
        current_rev: sm.kv.current_rev(),
        compact_rev: sm.kv.compact_rev(),
        records: sm
            .kv
            .records()
            .map(|(r, rec)| SnapRecord {
                main: r.main,
                sub: r.sub,
                key: rec.kv.key.to_vec(),
                value: rec.kv.value.to_vec(),
                create_revision: rec.kv.create_revision,
                version: rec.kv.version,
                lease: rec.kv.lease,
                tombstone: rec.tombstone,
            })
            .collect(),
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
    let archive = rkyv::to_bytes::<RkyvError>(&data).map_err(|e| SnapshotError::Corrupt {
        path: PathBuf::new(),
        reason: format!("encode: {e}"),
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + archive.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(archive.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&archive).to_le_bytes());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&archive);
    Ok(out)
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
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync dir", dir))?;
    }
    Ok(())
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

fn access<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a ArchivedSnapshotData, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.to_owned(),
        reason,
    };
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
    rkyv::access::<ArchivedSnapshotData, RkyvError>(archive)
        .map_err(|e| corrupt(format!("invalid archive: {e}")))
}

/// Loads a state machine from a mapped snapshot file. Keys and values stay
/// in the mapping (the returned state keeps it alive).
pub fn load(
    path: &Path,
    limits: Limits,
    min_lease_ttl: i64,
) -> Result<StateMachine, SnapshotError> {
    let file = File::open(path).map_err(io("open", path))?;
    // SAFETY: snapshot files are written once (temp + rename) and never
    // modified in place, so the mapping does not change under us.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("mmap", path))?;
    let whole = Bytes::from_owner(map);
    let data = access(path, &whole)?;
    let base = whole.as_ptr() as usize;
    let slice = |s: &[u8]| -> Bytes {
        let off = s.as_ptr() as usize - base;
        whole.slice(off..off + s.len())
    };
    let records = data.records.iter().map(|r| {
        let rev = Revision::new(r.main.to_native(), r.sub.to_native());
        let key = slice(r.key.as_slice());
        let kv = if r.tombstone {
            KeyValue {
                key,
                mod_revision: rev.main,
                ..Default::default()
            }
        } else {
            KeyValue {
                key,
                create_revision: r.create_revision.to_native(),
                mod_revision: rev.main,
                version: r.version.to_native(),
                value: slice(r.value.as_slice()),
                lease: r.lease.to_native(),
            }
        };
        (
            rev,
            Record {
                kv,
                tombstone: r.tombstone,
            },
        )
    });
    let kv = KvStore::restore(
        records,
        data.current_rev.to_native(),
        data.compact_rev.to_native(),
    );
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
