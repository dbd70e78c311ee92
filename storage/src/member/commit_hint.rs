//! The commit hint: the highest log index handed to the apply thread,
//! written (not fsynced) before those entries are applied.
//!
//! The WAL's hard state carries the commit index too, but it is written
//! after the entries are handed over (and only when there is something to
//! write). A member killed in between would restart knowing a lower commit
//! index than the revision it had already served, and its clients would see
//! the revision go backwards until the leader told it again. The hint closes
//! that window for process crashes: it is one small `pwrite` into the page
//! cache per batch, which a crash of the process does not lose. After a
//! power cut it may be older, never newer than what is durable: only
//! entries that are durable here are ever applied.
//!
//! Format (16 bytes at offset 0): the index (u64 LE), its CRC32 (u32 LE),
//! four zero bytes. A hint that fails its CRC is ignored.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The file name, in the member's WAL directory.
pub const FILE_NAME: &str = "commit-hint";

/// An open commit-hint file.
#[derive(Debug)]
pub struct CommitHint {
    file: File,
}

fn encode(index: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_le_bytes());
    let crc = crc32fast::hash(&index.to_le_bytes());
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<u64> {
    let idx: [u8; 8] = b.get(..8)?.try_into().ok()?;
    let crc: [u8; 4] = b.get(8..12)?.try_into().ok()?;
    (crc32fast::hash(&idx) == u32::from_le_bytes(crc)).then(|| u64::from_le_bytes(idx))
}

impl CommitHint {
    /// Opens (creating) the hint in `dir`; returns it with the index it
    /// holds (0 if none or unreadable).
    pub fn open(dir: &Path) -> io::Result<(CommitHint, u64)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(FILE_NAME))?;
        let mut b = [0u8; 16];
        let index = match file.read_exact_at(&mut b, 0) {
            Ok(()) => decode(&b).unwrap_or(0),
            Err(_) => 0,
        };
        Ok((CommitHint { file }, index))
    }

    /// Records that entries up to `index` are about to be applied.
    pub fn record(&self, index: u64) -> io::Result<()> {
        self.file.write_all_at(&encode(index), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h, i) = CommitHint::open(dir.path()).expect("open");
        assert_eq!(i, 0);
        h.record(42).expect("record");
        h.record(4242).expect("record");
        drop(h);
        assert_eq!(CommitHint::open(dir.path()).expect("open").1, 4242);
        std::fs::write(dir.path().join(FILE_NAME), [7u8; 16]).expect("write");
        assert_eq!(CommitHint::open(dir.path()).expect("open").1, 0);
    }
}
