//! Unit tests of the Wal: round trips across reopen, overwrite semantics,
//! rollover, release, concurrency, invalid appends, ENOSPC and fatal errors.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::failpoints::{self, Fault};
use super::*;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        kind: if index % 7 == 6 {
            EntryKind::ConfChange
        } else {
            EntryKind::Normal
        },
        data: format!("entry {index} of term {term}").into_bytes(),
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn small() -> WalOptions {
    WalOptions {
        segment_size: 4096,
        max_batch_bytes: 4 << 20,
    }
}

fn open(dir: &Path, opts: WalOptions) -> (Wal, Recovered) {
    Wal::open(dir, opts).expect("open")
}

fn indexes(r: &Recovered) -> Vec<u64> {
    r.entries.iter().map(|e| e.index).collect()
}

#[test]
fn fresh_directory_recovers_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, rec) = open(dir.path(), WalOptions::default());
    assert_eq!(rec.hard_state, HardState::default());
    assert!(rec.snapshot.is_none() && rec.entries.is_empty() && rec.repaired_tail.is_none());
    assert_eq!(wal.disk_size(), 64 << 20);
    wal.close().expect("close");
    assert_eq!(list_segments(dir.path()).expect("list").len(), 1);
}

#[test]
fn round_trip_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hs = HardState {
        term: 3,
        vote: 2,
        commit: 4,
    };
    {
        let (wal, _) = open(dir.path(), WalOptions::default());
        wal.append_sync(
            entries(1..=5, 1),
            Some(HardState {
                term: 1,
                vote: 1,
                commit: 0,
            }),
        )
        .expect("append");
        wal.append_sync(entries(6..=8, 3), Some(hs))
            .expect("append");
        wal.close().expect("close");
    }
    let (wal, rec) = open(dir.path(), WalOptions::default());
    assert_eq!(rec.hard_state, hs);
    let mut want = entries(1..=5, 1);
    want.extend(entries(6..=8, 3));
    assert_eq!(rec.entries, want);
    assert!(rec.repaired_tail.is_none());

    // A snapshot mark hides what it covers; hard state alone is an append too.
    wal.save_snapshot_mark(SnapshotMark { index: 6, term: 3 })
        .expect("mark");
    let hs2 = HardState {
        term: 3,
        vote: 2,
        commit: 8,
    };
    wal.append_sync(Vec::new(), Some(hs2))
        .expect("hard state only");
    drop(wal);
    let (_wal, rec) = open(dir.path(), WalOptions::default());
    assert_eq!(rec.snapshot, Some(SnapshotMark { index: 6, term: 3 }));
    assert_eq!(rec.hard_state, hs2);
    assert_eq!(rec.entries, entries(7..=8, 3));
}

#[test]
fn later_writes_overwrite_a_conflicting_suffix() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (wal, _) = open(dir.path(), WalOptions::default());
        wal.append_sync(entries(1..=10, 1), None).expect("append");
        wal.append_sync(entries(5..=7, 2), None).expect("overwrite");
    }
    let (wal, rec) = open(dir.path(), WalOptions::default());
    let mut want = entries(1..=4, 1);
    want.extend(entries(5..=7, 2));
    assert_eq!(rec.entries, want);
    // The log continues from 8 (not 11) after the overwrite.
    wal.append_sync(entries(8..=8, 2), None).expect("append 8");
    let gap = wal.append_sync(entries(10..=10, 2), None);
    assert!(matches!(gap, Err(WalError::InvalidAppend(_))), "{gap:?}");
    drop(wal);
    let (_wal, rec) = open(dir.path(), WalOptions::default());
    assert_eq!(indexes(&rec), (1..=8).collect::<Vec<_>>());
}

#[test]
fn invalid_appends_fail_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = open(dir.path(), WalOptions::default());
    let bad = [
        entries(2..=3, 1),              // gap after 0
        vec![entry(0, 1)],              // index 0
        vec![entry(1, 1), entry(3, 1)], // not ascending by one
    ];
    for b in bad {
        assert!(matches!(
            wal.append_sync(b, None),
            Err(WalError::InvalidAppend(_))
        ));
    }
    wal.append_sync(entries(1..=3, 1), None)
        .expect("valid append still works");
    wal.save_snapshot_mark(SnapshotMark { index: 2, term: 1 })
        .expect("mark");
    assert!(matches!(
        wal.save_snapshot_mark(SnapshotMark { index: 1, term: 1 }),
        Err(WalError::InvalidAppend(_))
    ));
    // A snapshot beyond the log (InstallSnapshot) moves the next index past it.
    wal.save_snapshot_mark(SnapshotMark { index: 20, term: 4 })
        .expect("mark");
    assert!(wal.append_sync(entries(22..=22, 4), None).is_err());
    wal.append_sync(entries(21..=22, 4), None)
        .expect("after snapshot");
    drop(wal);
    let (_wal, rec) = open(dir.path(), WalOptions::default());
    assert_eq!(rec.snapshot, Some(SnapshotMark { index: 20, term: 4 }));
    assert_eq!(rec.entries, entries(21..=22, 4));
}

/// Appends entries 1..=n with `size`-byte payloads, one append each.
fn fill(wal: &Wal, from: u64, to: u64, size: usize) {
    for i in from..=to {
        let e = Entry {
            term: 1,
            index: i,
            kind: EntryKind::Normal,
            data: vec![i as u8; size],
        };
        wal.append_sync(
            vec![e],
            Some(HardState {
                term: 1,
                vote: 1,
                commit: i,
            }),
        )
        .expect("append");
    }
}

#[test]
fn segments_roll_over_and_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (wal, _) = open(dir.path(), small());
        fill(&wal, 1, 60, 300);
        // A batch bigger than a segment gets a segment of its own.
        let big = Entry {
            term: 1,
            index: 61,
            kind: EntryKind::Normal,
            data: vec![9; 10_000],
        };
        wal.append_sync(vec![big], None).expect("big append");
        assert_eq!(
            wal.disk_size(),
            list_segments(dir.path())
                .expect("list")
                .iter()
                .map(|s| std::fs::metadata(&s.2).expect("stat").len())
                .sum::<u64>()
        );
    }
    let segs = list_segments(dir.path()).expect("list");
    assert!(segs.len() > 4, "only {} segments", segs.len());
    for w in segs.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1);
        assert!(w[1].1 > w[0].1, "first indexes ascend");
    }
    let (_wal, rec) = open(dir.path(), small());
    assert_eq!(indexes(&rec), (1..=61).collect::<Vec<_>>());
    assert_eq!(rec.entries[60].data.len(), 10_000);
    assert_eq!(rec.hard_state.commit, 60);
}

#[test]
fn release_removes_old_segments_and_recovery_still_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (wal, _) = open(dir.path(), small());
        fill(&wal, 1, 60, 300);
        let before = list_segments(dir.path()).expect("list").len();
        assert_eq!(
            wal.release_to(60).expect("release"),
            0,
            "no snapshot: nothing released"
        );
        wal.save_snapshot_mark(SnapshotMark { index: 40, term: 1 })
            .expect("mark");
        let size_before = wal.disk_size();
        let removed = wal.release_to(1000).expect("release");
        assert!(removed > 0);
        assert!(wal.disk_size() < size_before);
        let after = list_segments(dir.path()).expect("list");
        assert_eq!(after.len(), before - removed);
        // Every remaining segment but the first starts after the snapshot...
        // and nothing above the mark was deleted: the first remaining segment
        // begins at or below 41.
        assert!(
            after[0].1 <= 41,
            "first remaining segment starts at {}",
            after[0].1
        );
        fill(&wal, 61, 65, 300);
    }
    let (wal, rec) = open(dir.path(), small());
    assert_eq!(rec.snapshot, Some(SnapshotMark { index: 40, term: 1 }));
    assert_eq!(indexes(&rec), (41..=65).collect::<Vec<_>>());
    assert_eq!(rec.hard_state.commit, 65);
    // Releasing everything keeps the live segment.
    wal.save_snapshot_mark(SnapshotMark { index: 65, term: 1 })
        .expect("mark");
    wal.release_to(u64::MAX).expect("release");
    assert_eq!(list_segments(dir.path()).expect("list").len(), 1);
    drop(wal);
    let (_wal, rec) = open(dir.path(), small());
    assert_eq!(rec.snapshot, Some(SnapshotMark { index: 65, term: 1 }));
    assert_eq!(
        rec.hard_state.commit, 65,
        "hard state survives via the segment prologue"
    );
    assert!(rec.entries.is_empty());
}

#[test]
fn concurrent_appends_all_complete_in_order_and_recover() {
    const THREADS: u64 = 8;
    const PER: u64 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (wal, _) = open(
            dir.path(),
            WalOptions {
                segment_size: 64 << 10,
                max_batch_bytes: 2048,
            },
        );
        let wal = Arc::new(wal);
        // The index is taken and the append queued under one lock, so queue
        // order is index order; callbacks must come back in that order.
        let next = Arc::new(Mutex::new(1u64));
        let done = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (wal, next, done) = (wal.clone(), next.clone(), done.clone());
                std::thread::spawn(move || {
                    for _ in 0..PER {
                        let mut n = next.lock().expect("lock");
                        let i = *n;
                        *n += 1;
                        let done = done.clone();
                        wal.append(
                            vec![entry(i, 1)],
                            None,
                            Box::new(move |r| {
                                r.expect("durable");
                                done.lock().expect("lock").push(i);
                            }),
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("join");
        }
        let wal = Arc::into_inner(wal).expect("sole owner");
        wal.close().expect("close");
        let done = done.lock().expect("lock");
        assert_eq!(*done, (1..=THREADS * PER).collect::<Vec<_>>());
    }
    let (_wal, rec) = open(dir.path(), WalOptions::default());
    assert_eq!(rec.entries, entries(1..=THREADS * PER, 1));
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_wal, _) = open(dir.path(), WalOptions::default());
    assert!(matches!(
        Wal::open(dir.path(), WalOptions::default()),
        Err(WalError::Locked { .. })
    ));
}

#[test]
fn enospc_on_a_new_segment_fails_only_that_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = open(dir.path(), small());
    fill(&wal, 1, 10, 300);
    let segs = list_segments(dir.path()).expect("list").len();
    failpoints::arm(dir.path(), Fault::Enospc, 2);
    // Fill until a rollover is needed: those batches fail with NoSpace...
    let mut i = 11;
    let mut failures = 0;
    while failures < 2 {
        match wal.append_sync(vec![entry(i, 1)], None) {
            Ok(()) => i += 1,
            Err(WalError::NoSpace { .. }) => failures += 1,
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(i < 1000);
    }
    assert_eq!(
        list_segments(dir.path()).expect("list").len(),
        segs,
        "no segment created"
    );
    // ...and once space is back, the same append succeeds.
    wal.append_sync(vec![entry(i, 1)], None).expect("retry");
    assert_eq!(list_segments(dir.path()).expect("list").len(), segs + 1);
    drop(wal);
    let (_wal, rec) = open(dir.path(), small());
    assert_eq!(indexes(&rec), (1..=i).collect::<Vec<_>>());
}

#[test]
fn write_error_is_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = open(dir.path(), WalOptions::default());
    wal.append_sync(entries(1..=3, 1), None).expect("append");
    failpoints::arm(dir.path(), Fault::Write, 1);
    assert!(matches!(
        wal.append_sync(entries(4..=4, 1), None),
        Err(WalError::Io { op: "write", .. })
    ));
    // Never retried: every later append fails, even though the fault is gone.
    for _ in 0..2 {
        assert!(matches!(
            wal.append_sync(entries(4..=4, 1), None),
            Err(WalError::Fatal(_))
        ));
    }
    assert!(matches!(wal.close(), Err(WalError::Fatal(_))));
    let (_wal, rec) = open(dir.path(), WalOptions::default());
    assert_eq!(indexes(&rec), vec![1, 2, 3]);
}

#[test]
fn errors_are_clone_and_name_file_and_offset() {
    let e = WalError::Corrupt {
        file: "/x/0000000000000001-0000000000000001.wal".into(),
        offset: 96,
        reason: "CRC mismatch".into(),
    };
    let s = e.clone().to_string();
    assert!(
        s.contains("0000000000000001-0000000000000001.wal") && s.contains("96"),
        "{s}"
    );
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Wal>();
    send_sync::<WalError>();
}

#[test]
fn dropping_the_last_handle_inside_a_callback_does_not_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = open(dir.path(), WalOptions::default());
    let wal = Arc::new(wal);
    let (tx, rx) = std::sync::mpsc::channel();
    let held = Mutex::new(Some(wal.clone()));
    wal.append(
        entries(1..=1, 1),
        None,
        Box::new(move |r| {
            // The callback owns the last handle once the test drops its own.
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(held.lock().expect("lock").take());
            let _ = tx.send(r);
        }),
    );
    drop(wal);
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("callback ran")
        .expect("durable");
    // The lock is released once the writer thread finishes.
    let start = std::time::Instant::now();
    loop {
        match Wal::open(dir.path(), WalOptions::default()) {
            Ok((_w, rec)) => {
                assert_eq!(indexes(&rec), vec![1]);
                break;
            }
            Err(WalError::Locked { .. }) if start.elapsed().as_secs() < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn direct_appends_interleave_with_queued_ones_and_roll_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = open(dir.path(), small());
    let wal = Arc::new(wal);
    // Queued appends (the writer thread) and direct ones (this thread)
    // alternate; small segments force rollovers on both paths.
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut next = 1;
    for round in 0..40u64 {
        let batch = entries(next..=next + 2, 1);
        next += 3;
        if round % 2 == 0 {
            let d = done.clone();
            wal.append(
                batch,
                None,
                Box::new(move |r| d.lock().expect("lock").push(r.is_ok())),
            );
        } else {
            wal.append_direct(
                &batch,
                Some(HardState {
                    term: 1,
                    vote: 1,
                    commit: next - 1,
                }),
            )
            .expect("direct append");
        }
    }
    let wal = Arc::try_unwrap(wal).expect("sole owner");
    wal.close().expect("close");
    assert_eq!(*done.lock().expect("lock"), vec![true; 20]);
    assert!(list_segments(dir.path()).expect("list").len() > 1);
    let (_wal, rec) = open(dir.path(), small());
    assert_eq!(indexes(&rec), (1..next).collect::<Vec<_>>());
    assert_eq!(rec.hard_state.commit, next - 1);
}

#[test]
fn unsynced_hard_state_is_logged_and_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = open(dir.path(), small());
    wal.append_direct(
        &entries(1..=3, 2),
        Some(HardState {
            term: 2,
            vote: 1,
            commit: 1,
        }),
    )
    .expect("append");
    // Only the commit index moves: written without an fdatasync, across
    // segment roll-overs too (the old segment is synced first).
    for commit in 2..=3 {
        wal.save_hard_state_unsynced(HardState {
            term: 2,
            vote: 1,
            commit,
        })
        .expect("unsynced hard state");
    }
    fill(&wal, 4, 40, 300);
    wal.save_hard_state_unsynced(HardState {
        term: 2,
        vote: 1,
        commit: 40,
    })
    .expect("unsynced hard state");
    wal.close().expect("close");
    let (_wal, rec) = open(dir.path(), small());
    assert_eq!(rec.hard_state.commit, 40);
    assert_eq!(indexes(&rec), (1..=40).collect::<Vec<_>>());
}
