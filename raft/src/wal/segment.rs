//! Segment files: naming, the header, preallocation, atomic creation, and the
//! directory lock. No record logic here.
//!
//! A segment is named `{seq:016x}-{first_index:016x}.wal` so that names sort
//! by sequence number (as etcd's do). It starts with a 32-byte header:
//!
//! ```text
//! 0..8   magic "KEELWAL\0"
//! 8..12  format version, u32 LE (1)
//! 12..16 CRC32 of bytes 0..12 and 16..32
//! 16..24 sequence number, u64 LE (matches the file name)
//! 24..32 first index: the index after the last entry logged when the segment
//!        was created, u64 LE (matches the file name)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{Result, WalError};

/// Magic bytes at the start of every segment.
pub(crate) const MAGIC: [u8; 8] = *b"KEELWAL\0";
/// On-disk format version.
pub(crate) const VERSION: u32 = 1;
/// Bytes of the segment header; records start here.
pub(crate) const HEADER_LEN: u64 = 32;

/// File name of segment `seq` whose first index is `first_index`.
pub(crate) fn file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// Parses a segment file name into `(seq, first_index)`.
pub(crate) fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(first, 16).ok()?,
    ))
}

/// Encodes a segment header.
pub(crate) fn encode_header(seq: u64, first_index: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&first_index.to_le_bytes());
    let crc = header_crc(&h);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

fn header_crc(h: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&h[0..12]);
    c.update(&h[16..32]);
    c.finalize()
}

/// Checks a segment header against the name's `(seq, first_index)`.
/// Returns the reason it is bad.
pub(crate) fn check_header(
    data: &[u8],
    seq: u64,
    first_index: u64,
) -> std::result::Result<(), String> {
    let h = data.get(..HEADER_LEN as usize).ok_or_else(|| {
        format!(
            "file of {} bytes is shorter than the segment header",
            data.len()
        )
    })?;
    if h[0..8] != MAGIC {
        return Err("bad magic: not a keel WAL segment".into());
    }
    let stored = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if stored != header_crc(h) {
        return Err("segment header CRC mismatch".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != VERSION {
        return Err(format!("unsupported WAL format version {version}"));
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&h[16..24]);
    let hseq = u64::from_le_bytes(word);
    word.copy_from_slice(&h[24..32]);
    let hfirst = u64::from_le_bytes(word);
    if (hseq, hfirst) != (seq, first_index) {
        return Err(format!(
            "header says segment {hseq} first index {hfirst}, file name says {seq} / {first_index}"
        ));
    }
    Ok(())
}

/// Whether an I/O error is "no space left on device".
pub(crate) fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

/// Makes sure `len` bytes of `file` are allocated (so later writes within them
/// cannot fail for lack of space and fdatasync need not update the size).
/// Uses `fallocate(2)`; falls back to `set_len` where it is not supported.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::io::AsRawFd;
        let len_off =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: fallocate only reads its integer arguments; the fd is open for writing.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => {}
            _ => return Err(err),
        }
    }
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

/// fsyncs a directory so that creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| WalError::io("open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| WalError::io("fsync directory", dir, e))
}

/// Why creating a segment failed, and whether the log is affected.
#[derive(Debug)]
pub(crate) enum CreateError {
    /// Failed before the segment became part of the log (nothing of it is
    /// visible to recovery): fail the batch only.
    Before(WalError),
    /// Failed after the rename (the directory fsync): the log's state on disk
    /// is unknown, which is fatal.
    After(WalError),
}

/// Creates segment `seq` atomically: writes the header and `prologue` (framed
/// records) into `<name>.tmp`, preallocates `capacity` bytes, fsyncs, renames
/// to the final name and fsyncs the directory. Returns the open file and path.
pub(crate) fn create(
    dir: &Path,
    seq: u64,
    first_index: u64,
    prologue: &[u8],
    capacity: u64,
) -> std::result::Result<(File, PathBuf), CreateError> {
    let path = dir.join(file_name(seq, first_index));
    let tmp = dir.join(format!("{}.tmp", file_name(seq, first_index)));
    let before = |op, e: io::Error| {
        let _ = fs::remove_file(&tmp);
        if is_enospc(&e) {
            CreateError::Before(WalError::NoSpace { path: path.clone() })
        } else {
            CreateError::Before(WalError::io(op, &tmp, e))
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| before("create", e))?;
    #[cfg(test)]
    if super::failpoints::hit(dir, super::failpoints::Fault::Enospc) {
        return Err(before(
            "preallocate",
            io::Error::from_raw_os_error(libc::ENOSPC),
        ));
    }
    preallocate(&file, capacity).map_err(|e| before("preallocate", e))?;
    let mut head = Vec::with_capacity(HEADER_LEN as usize + prologue.len());
    head.extend_from_slice(&encode_header(seq, first_index));
    head.extend_from_slice(prologue);
    file.write_all_at(&head, 0)
        .map_err(|e| before("write", e))?;
    file.sync_all().map_err(|e| before("fsync", e))?;
    fs::rename(&tmp, &path).map_err(|e| before("rename", e))?;
    sync_dir(dir).map_err(CreateError::After)?;
    Ok((file, path))
}

/// An exclusive `flock` on `<dir>/LOCK`, held while a `Wal` is open.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock or fails with [`WalError::Locked`].
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        use std::os::unix::io::AsRawFd;
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| WalError::io("open", &path, e))?;
        // SAFETY: flock only takes the fd and flags; the fd stays open in `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(WalError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            return Err(WalError::io("flock", &path, e));
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        let a = file_name(2, 100);
        let b = file_name(10, 5);
        assert!(a < b);
        assert_eq!(parse_name(&a), Some((2, 100)));
        assert_eq!(
            parse_name("0000000000000001-0000000000000001.wal.broken"),
            None
        );
        assert_eq!(parse_name("zz.wal"), None);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = encode_header(3, 42);
        assert_eq!(check_header(&h, 3, 42), Ok(()));
        assert!(check_header(&h, 4, 42).is_err());
        assert!(check_header(&h[..10], 3, 42).is_err());
        for bit in 0..HEADER_LEN as usize * 8 {
            let mut d = h;
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(check_header(&d, 3, 42).is_err(), "bit {bit}");
        }
    }
}
