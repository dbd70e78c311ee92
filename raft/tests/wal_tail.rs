//! Crash and damage tests of WAL recovery: torn tails at every byte offset,
//! bit flips, zeroed sectors, and corruption that must refuse to start.

use std::path::{Path, PathBuf};

use keel_raft::wal::{
    inspect_segment, list_segments, Entry, EntryKind, HardState, RecordInfo, RecordKind, Recovered,
    Wal, WalError, WalOptions,
};

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 4096,
        max_batch_bytes: 1 << 20,
    }
}

fn entry(i: u64) -> Entry {
    Entry {
        term: 1 + i / 10,
        index: i,
        kind: EntryKind::Normal,
        data: vec![(i % 251) as u8 + 1; 20 + (i as usize * 7) % 41],
    }
}

/// A pristine WAL image: segment file names and bytes, plus each segment's records.
struct Fixture {
    files: Vec<(String, Vec<u8>)>,
    records: Vec<Vec<RecordInfo>>,
}

const N: u64 = 80;

/// The fixtures are built once per test binary: each costs ~N fsyncs.
fn plain() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| fixture(0))
}

/// Entries 1..=N, one append (one write) each; every 5th also carries a
/// hard state, the last one does not. Then `extra` more entries in one final batch.
fn fixture(extra: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
        for i in 1..=N {
            let hs = (i % 5 == 4 && i != N).then_some(HardState {
                term: 1,
                vote: 1,
                commit: i,
            });
            wal.append_sync(vec![entry(i)], hs).expect("append");
        }
        if extra > 0 {
            wal.append_sync((N + 1..=N + extra).map(entry).collect(), None)
                .expect("batch");
        }
        wal.close().expect("close");
    }
    let segs = list_segments(dir.path()).expect("list");
    assert!(segs.len() >= 2, "need a non-last segment");
    let mut files = Vec::new();
    let mut records = Vec::new();
    for (_, _, path) in &segs {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        files.push((name, std::fs::read(path).expect("read")));
        records.push(inspect_segment(path).expect("inspect"));
    }
    Fixture { files, records }
}

impl Fixture {
    fn last(&self) -> usize {
        self.files.len() - 1
    }

    /// Writes the image into a fresh directory, with segment `seg` replaced by `bytes`.
    fn restore(&self, seg: usize, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = scratch();
        let mut damaged = PathBuf::new();
        for (i, (name, data)) in self.files.iter().enumerate() {
            let p = dir.path().join(name);
            std::fs::write(&p, if i == seg { bytes } else { data }).expect("write");
            if i == seg {
                damaged = p;
            }
        }
        (dir, damaged)
    }

    /// Entry indexes of records in segments before `seg`, plus those of
    /// `seg` for which `keep` holds.
    fn expected(&self, seg: usize, mut keep: impl FnMut(&RecordInfo) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, recs) in self.records.iter().enumerate().take(seg + 1) {
            for r in recs {
                if let RecordKind::Entry { index, .. } = r.kind {
                    if i < seg || keep(r) {
                        out.push(index);
                    }
                }
            }
        }
        out
    }

    fn last_entries(&self, k: usize) -> Vec<RecordInfo> {
        let recs = &self.records[self.last()];
        recs[recs.len() - k..].to_vec()
    }
}

/// A scratch directory for one damaged copy: on tmpfs when there is one, so
/// the hundreds of repairs (each a few fsyncs) do not wait on a busy disk.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// Every bit of a record's frame.
fn bits(r: &RecordInfo) -> std::ops::Range<u64> {
    r.offset * 8..(r.offset + r.len) * 8
}

fn open(dir: &Path) -> Result<(Wal, Recovered), WalError> {
    Wal::open(dir, opts())
}

fn indexes(r: &Recovered) -> Vec<u64> {
    r.entries.iter().map(|e| e.index).collect()
}

fn check_entries(r: &Recovered) {
    for e in &r.entries {
        assert_eq!(*e, entry(e.index), "entry {} content", e.index);
    }
}

#[test]
fn truncation_at_every_offset_recovers_the_durable_prefix() {
    let fx = plain();
    let seg = fx.last();
    let data = &fx.files[seg].1;
    let tail = fx.last_entries(4);
    let start = tail[0].offset;
    let end = tail[3].offset + tail[3].len;
    for cut in start..=end {
        let (dir, path) = fx.restore(seg, &data[..cut as usize]);
        let (wal, rec) = open(dir.path()).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let want = fx.expected(seg, |r| r.offset + r.len <= cut);
        assert_eq!(indexes(&rec), want, "cut at {cut}");
        check_entries(&rec);
        // The first record not wholly before the cut, if the cut is inside it.
        let torn = tail
            .iter()
            .find(|r| r.offset < cut && cut < r.offset + r.len)
            .filter(|r| {
                data[r.offset as usize..cut as usize]
                    .iter()
                    .any(|&b| b != 0)
            });
        match (torn, &rec.repaired_tail) {
            (None, None) => {}
            (Some(r), Some(rep)) => {
                assert_eq!(rep.file, path);
                assert_eq!(rep.offset, r.offset, "cut at {cut}");
                assert!(rep.bytes_cut > 0 && rep.bytes_cut <= cut - r.offset);
                let broken = std::fs::read(&rep.broken).expect(".broken copy");
                assert_eq!(
                    broken,
                    data[r.offset as usize..(r.offset + rep.bytes_cut) as usize]
                );
                assert!(rep.broken.to_string_lossy().ends_with(".wal.broken"));
            }
            (t, r) => panic!("cut at {cut}: torn record {t:?} but repair {r:?}"),
        }
        // The repaired log takes appends and recovers them.
        if cut % 16 == 0 {
            let next = want.last().map_or(1, |i| i + 1);
            wal.append_sync(vec![entry(next)], None)
                .expect("append after repair");
            drop(wal);
            let (_wal, rec2) = open(dir.path()).expect("reopen");
            assert!(rec2.repaired_tail.is_none());
            assert_eq!(indexes(&rec2).last(), Some(&next));
        }
    }
}

fn flip(data: &[u8], bit: u64) -> Vec<u8> {
    let mut d = data.to_vec();
    d[(bit / 8) as usize] ^= 1 << (bit % 8);
    d
}

#[test]
fn a_bit_flip_in_the_last_record_drops_it() {
    let fx = plain();
    let seg = fx.last();
    let data = &fx.files[seg].1;
    let last = fx.last_entries(1)[0].clone();
    assert!(matches!(last.kind, RecordKind::Entry { index: N, .. }));
    let want = fx.expected(seg, |r| r.offset < last.offset);
    for bit in bits(&last) {
        let (dir, _) = fx.restore(seg, &flip(data, bit));
        let (_wal, rec) = open(dir.path()).unwrap_or_else(|e| panic!("bit {bit}: {e}"));
        assert_eq!(indexes(&rec), want, "bit {bit}");
        let rep = rec.repaired_tail.as_ref().expect("repaired");
        assert_eq!(rep.offset, last.offset);
        assert!(rep.broken.exists());
    }
}

fn assert_corrupt(r: Result<(Wal, Recovered), WalError>, file: &Path, offset: u64, what: &str) {
    match r {
        Err(e @ WalError::Corrupt { .. }) => {
            let WalError::Corrupt {
                file: f, offset: o, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((f.as_path(), *o), (file, offset), "{what}: {e}");
            let shown = e.to_string();
            assert!(
                shown.contains(&file.display().to_string()) && shown.contains(&offset.to_string()),
                "{shown}"
            );
        }
        Err(e) => panic!("{what}: expected Corrupt, got {e}"),
        Ok((_, rec)) => panic!("{what}: expected Corrupt, recovered {:?}", indexes(&rec)),
    }
}

#[test]
fn a_bit_flip_in_a_non_last_segment_is_corruption() {
    let fx = plain();
    let data = &fx.files[0].1;
    let recs = &fx.records[0];
    let mid = recs[recs.len() / 2].clone();
    for bit in bits(&mid) {
        let (dir, path) = fx.restore(0, &flip(data, bit));
        assert_corrupt(open(dir.path()), &path, mid.offset, &format!("bit {bit}"));
    }
    // Also the last record of that segment, and its header.
    let last = recs[recs.len() - 1].clone();
    for bit in (last.offset * 8..(last.offset + last.len) * 8).step_by(7) {
        let (dir, path) = fx.restore(0, &flip(data, bit));
        assert_corrupt(
            open(dir.path()),
            &path,
            last.offset,
            &format!("last record, bit {bit}"),
        );
    }
    for bit in (0..32 * 8).step_by(5) {
        let (dir, path) = fx.restore(0, &flip(data, bit));
        assert_corrupt(open(dir.path()), &path, 0, &format!("header bit {bit}"));
    }
}

#[test]
fn a_bit_flip_in_a_record_followed_by_later_writes_is_corruption() {
    let fx = plain();
    let seg = fx.last();
    let data = &fx.files[seg].1;
    let victim = fx.last_entries(3)[0].clone();
    for bit in bits(&victim) {
        let (dir, path) = fx.restore(seg, &flip(data, bit));
        assert_corrupt(
            open(dir.path()),
            &path,
            victim.offset,
            &format!("bit {bit}"),
        );
    }
    // Zeroing a whole record that later writes follow is corruption too.
    let mut zeroed = data.clone();
    zeroed[victim.offset as usize..(victim.offset + victim.len) as usize].fill(0);
    let (dir, path) = fx.restore(seg, &zeroed);
    assert_corrupt(open(dir.path()), &path, victim.offset, "zeroed record");
}

#[test]
fn zeroed_last_sectors_recover_the_prefix() {
    let fx = plain();
    let seg = fx.last();
    let data = &fx.files[seg].1;
    let end = fx.last_entries(1)[0].offset + fx.last_entries(1)[0].len;
    for k in 1..=3u64 {
        let z = (end.div_ceil(512) - k) * 512;
        let mut d = data.clone();
        d[z as usize..end as usize].fill(0);
        let (dir, _) = fx.restore(seg, &d);
        let (_wal, rec) = open(dir.path()).unwrap_or_else(|e| panic!("{k} sectors: {e}"));
        // Records whose bytes survived, up to the first damaged one.
        let mut intact = true;
        let want = fx.expected(seg, |r| {
            let range = r.offset as usize..(r.offset + r.len) as usize;
            intact &= d[range.clone()] == data[range];
            intact
        });
        assert!(want.len() < fx.expected(seg, |_| true).len());
        assert_eq!(indexes(&rec), want, "{k} sectors zeroed from {z}");
        check_entries(&rec);
    }
}

#[test]
fn a_torn_multi_sector_write_is_a_tail_not_corruption() {
    // One final write of 30 entries spanning several sectors; a crash lost a
    // sector in its middle while later sectors of the same write landed.
    let fx = fixture(30);
    let seg = fx.last();
    let data = &fx.files[seg].1;
    let recs = &fx.records[seg];
    let batch = recs.last().expect("records").batch_start;
    let first_of_batch = recs
        .iter()
        .position(|r| r.offset == batch)
        .expect("batch start");
    let end = recs.last().map(|r| r.offset + r.len).expect("end");
    let hole = (batch + 512).next_multiple_of(512);
    assert!(hole + 512 < end, "the batch spans more than two sectors");
    let mut d = data.clone();
    d[hole as usize..hole as usize + 512].fill(0);
    let (dir, path) = fx.restore(seg, &d);
    let (_wal, rec) = open(dir.path()).expect("torn tail, not corruption");
    let damaged = recs[first_of_batch..]
        .iter()
        .find(|r| r.offset + r.len > hole)
        .expect("a damaged record");
    assert_eq!(
        indexes(&rec),
        fx.expected(seg, |r| r.offset < damaged.offset)
    );
    let rep = rec.repaired_tail.expect("repaired");
    assert_eq!((rep.file, rep.offset), (path, damaged.offset));
    // Cut up to the last non-zero byte of the write.
    let last_nonzero = d[..end as usize]
        .iter()
        .rposition(|&b| b != 0)
        .expect("data") as u64
        + 1;
    assert_eq!(rep.bytes_cut, last_nonzero - damaged.offset);
}
