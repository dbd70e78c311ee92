//! Model-based test: the MVCC store against a plain `BTreeMap` model that
//! keeps a full copy of the key space at every revision.

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_storage::mvcc::{KeyRange, KvStore, MvccError, RangeOptions};
use keel_storage::proto::mvccpb::{event::EventType, KeyValue};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8, Option<u8>),
    Txn(Vec<(u8, u8)>, Vec<u8>),
    Range(u8, Option<u8>, i64, usize),
    Compact(i64),
    Events(u8, Option<u8>, i64),
}

fn key(k: u8) -> Bytes {
    Bytes::from(format!("k{:02}", k % 16))
}

fn range_of(k: u8, end: Option<u8>) -> KeyRange {
    match end {
        None => KeyRange::new(&key(k), &Bytes::new()),
        Some(0) => KeyRange::new(&key(k), &Bytes::from_static(b"\0")),
        Some(e) => KeyRange::new(&key(k), &key(e)),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (any::<u8>(), proptest::option::of(any::<u8>())).prop_map(|(k, e)| Op::Delete(k, e)),
        2 => (proptest::collection::vec((any::<u8>(), any::<u8>()), 0..4), proptest::collection::vec(any::<u8>(), 0..3))
            .prop_map(|(p, d)| Op::Txn(p, d)),
        3 => (any::<u8>(), proptest::option::of(any::<u8>()), -2i64..40, 0usize..4)
            .prop_map(|(k, e, r, l)| Op::Range(k, e, r, l)),
        1 => (0i64..40).prop_map(Op::Compact),
        1 => (any::<u8>(), proptest::option::of(any::<u8>()), 0i64..40).prop_map(|(k, e, r)| Op::Events(k, e, r)),
    ]
}

/// The model: the whole key space at every revision.
struct Model {
    at: Vec<BTreeMap<Bytes, KeyValue>>, // index = revision
    compacted: i64,
}

impl Model {
    fn new() -> Self {
        // Revision 1 is the empty store (etcd starts at 1).
        Model {
            at: vec![BTreeMap::new(), BTreeMap::new()],
            compacted: -1,
        }
    }
    fn cur(&self) -> i64 {
        self.at.len() as i64 - 1
    }
    fn head(&self) -> BTreeMap<Bytes, KeyValue> {
        self.at[self.at.len() - 1].clone()
    }
    /// Applies puts then deletes as one transaction.
    fn write(&mut self, puts: &[(Bytes, Bytes)], dels: &[KeyRange]) {
        let rev = self.cur() + 1;
        let mut m = self.head();
        let mut changed = false;
        for (k, v) in puts {
            let prev = m.get(k).cloned();
            m.insert(
                k.clone(),
                KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    lease: 0,
                },
            );
            changed = true;
        }
        for r in dels {
            let keys: Vec<Bytes> = m.keys().filter(|k| r.contains(k)).cloned().collect();
            for k in keys {
                m.remove(&k);
                changed = true;
            }
        }
        if changed {
            self.at.push(m);
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut s = KvStore::new();
    let mut m = Model::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let mut w = s.write();
                w.put(key(k), Bytes::from(vec![v]), 0);
                w.end();
                m.write(&[(key(k), Bytes::from(vec![v]))], &[]);
            }
            Op::Delete(k, e) => {
                let r = range_of(k, e);
                let mut w = s.write();
                w.delete_range(&r);
                w.end();
                m.write(&[], &[r]);
            }
            Op::Txn(puts, dels) => {
                // Distinct keys, deletes of keys not put (as etcd's txn rules).
                let mut seen = std::collections::BTreeSet::new();
                let puts: Vec<(Bytes, Bytes)> = puts
                    .into_iter()
                    .filter(|(k, _)| seen.insert(key(*k)))
                    .map(|(k, v)| (key(k), Bytes::from(vec![v])))
                    .collect();
                let dels: Vec<KeyRange> = dels
                    .into_iter()
                    .filter(|k| !seen.contains(&key(*k)))
                    .map(|k| range_of(k, None))
                    .collect();
                let mut w = s.write();
                for (k, v) in &puts {
                    w.put(k.clone(), v.clone(), 0);
                }
                for r in &dels {
                    w.delete_range(r);
                }
                w.end();
                m.write(&puts, &dels);
            }
            Op::Range(k, e, rev, limit) => {
                let r = range_of(k, e);
                let got = s.range(
                    &r,
                    RangeOptions {
                        limit,
                        rev,
                        count_only: false,
                    },
                );
                if rev > m.cur() {
                    prop_assert_eq!(got, Err(MvccError::FutureRev));
                    continue;
                }
                let at = if rev <= 0 { m.cur() } else { rev };
                if at < m.compacted {
                    prop_assert_eq!(got, Err(MvccError::Compacted));
                    continue;
                }
                let want: Vec<KeyValue> = m.at[at as usize]
                    .values()
                    .filter(|kv| r.contains(&kv.key))
                    .cloned()
                    .collect();
                let got = got.map_err(|e| TestCaseError::fail(format!("range at {at}: {e}")))?;
                prop_assert_eq!(got.count, want.len() as i64);
                prop_assert_eq!(got.rev, m.cur());
                let want: Vec<KeyValue> = if limit > 0 {
                    want.into_iter().take(limit).collect()
                } else {
                    want
                };
                prop_assert_eq!(got.kvs, want);
            }
            Op::Compact(rev) => {
                let got = s.compact(rev);
                if rev <= m.compacted {
                    prop_assert_eq!(got, Err(MvccError::Compacted));
                } else if rev > m.cur() {
                    prop_assert_eq!(got, Err(MvccError::FutureRev));
                } else {
                    prop_assert_eq!(got, Ok(()));
                    m.compacted = rev;
                }
            }
            Op::Events(k, e, from) => {
                let r = range_of(k, e);
                let got = s.events(&r, from, m.cur(), true, 0);
                if from < m.compacted {
                    prop_assert_eq!(got, Err(MvccError::Compacted));
                    continue;
                }
                // The model's events: per revision, the keys whose value changed.
                let mut want = Vec::new();
                for rev in from.max(2)..=m.cur() {
                    let (before, after) = (&m.at[rev as usize - 1], &m.at[rev as usize]);
                    let keys: std::collections::BTreeSet<&Bytes> =
                        before.keys().chain(after.keys()).collect();
                    for k in keys {
                        if !r.contains(k) {
                            continue;
                        }
                        match (before.get(k), after.get(k)) {
                            (_, Some(a)) if a.mod_revision == rev => {
                                want.push((EventType::Put as i32, k.clone(), a.mod_revision))
                            }
                            (Some(_), None) => {
                                want.push((EventType::Delete as i32, k.clone(), rev))
                            }
                            _ => {}
                        }
                    }
                }
                let got =
                    got.map_err(|e| TestCaseError::fail(format!("events from {from}: {e}")))?;
                // Within a revision the store orders by change order; the
                // model by key: compare per revision as sets.
                let mut got: Vec<(i32, Bytes, i64)> = got
                    .iter()
                    .map(|ev| {
                        let kv = ev.kv.clone().unwrap_or_default();
                        (ev.r#type, kv.key, kv.mod_revision)
                    })
                    .collect();
                got.sort_by(|a, b| (a.2, &a.1).cmp(&(b.2, &b.1)));
                want.sort_by(|a, b| (a.2, &a.1).cmp(&(b.2, &b.1)));
                prop_assert_eq!(got, want);
            }
        }
        prop_assert_eq!(s.current_rev(), m.cur());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_btreemap_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}

/// A snapshot round trip (records out, store rebuilt) answers every read the same.
#[test]
fn restore_from_records_matches_original() {
    let mut s = KvStore::new();
    for i in 0..200u32 {
        let mut w = s.write();
        let k = Bytes::from(format!("k{}", i % 17));
        if i % 7 == 3 {
            w.delete_range(&KeyRange::new(&k, &Bytes::new()));
        } else {
            w.put(k, Bytes::from(i.to_string()), 0);
        }
        w.end();
        if i == 120 {
            s.compact(90).expect("compact");
        }
    }
    let records: Vec<_> = s.records().map(|(r, rec)| (*r, rec.clone())).collect();
    let restored = KvStore::restore(records, s.current_rev(), s.compact_rev());
    let all = KeyRange::new(&Bytes::from_static(b"\0"), &Bytes::from_static(b"\0"));
    for rev in s.compact_rev()..=s.current_rev() {
        let opts = RangeOptions {
            rev,
            ..Default::default()
        };
        assert_eq!(s.range(&all, opts), restored.range(&all, opts), "rev {rev}");
    }
    // Writes after a restore continue versions and create revisions.
    let mut a = s.clone();
    let mut b = restored;
    for st in [&mut a, &mut b] {
        let mut w = st.write();
        w.put(Bytes::from_static(b"k1"), Bytes::from_static(b"x"), 0);
        w.end();
    }
    assert_eq!(
        a.range(&all, RangeOptions::default()),
        b.range(&all, RangeOptions::default())
    );
}

/// Regression (found by the differential test against etcd): HashKV at
/// exactly the compaction revision is compacted, as etcd's HashByRev says,
/// while a range may still read at it.
#[test]
fn hash_kv_at_the_compaction_revision_is_compacted() {
    let mut s = KvStore::new();
    for i in 0..5u8 {
        let mut w = s.write();
        w.put(Bytes::from_static(b"k"), Bytes::from(vec![i]), 0);
        w.end();
    }
    s.compact(4).expect("compact");
    assert_eq!(s.hash_kv(4), Err(MvccError::Compacted));
    assert_eq!(s.hash_kv(3), Err(MvccError::Compacted));
    assert!(s.hash_kv(5).is_ok());
    assert!(s.hash_kv(0).is_ok());
    assert_eq!(s.hash_kv(7), Err(MvccError::FutureRev));
    let k = KeyRange::new(&Bytes::from_static(b"k"), &Bytes::new());
    assert!(s
        .range(
            &k,
            RangeOptions {
                rev: 4,
                ..Default::default()
            }
        )
        .is_ok());
}
