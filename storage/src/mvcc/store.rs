//! The multi-version key-value store: the key index plus every retained
//! change, by revision (etcd's `store` over its `key` bucket).
//!
//! Reads at any retained revision, write transactions that bump the main
//! revision once however many changes they make, and compaction. The store
//! is plain data: callers serialise writes (one writer at a time holds
//! `&mut KvStore`), readers share `&KvStore`.

use bytes::Bytes;

use super::record::{PutMeta, Record};
use super::rev_log::RevLog;
use super::revision::Revision;
use super::tree_index::{KeyRange, TreeIndex};
use super::MvccError;
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// Records with moved bytes, from [`KvStore::rebased`].
pub struct Rebased(Vec<std::sync::Arc<Vec<(Revision, Record)>>>);

/// Options of a range read (etcd's `mvcc.RangeOptions`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// At most this many key-values; 0 = no limit.
    pub limit: usize,
    /// Read at this main revision; <= 0 = the current one.
    pub rev: i64,
    /// Only count the keys.
    pub count_only: bool,
}

/// The result of a range read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    /// The key-values, in key order.
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds at that revision (ignoring `limit`).
    pub count: i64,
    /// The store's current revision.
    pub rev: i64,
}

/// What a finished write transaction did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteResult {
    /// The store's revision after the transaction.
    pub rev: i64,
    /// One event per change, in order, with `prev_kv` filled where the key
    /// had a value before.
    pub events: Vec<Event>,
}

/// The store. See the module docs.
#[derive(Debug, Clone)]
pub struct KvStore {
    index: TreeIndex,
    revs: RevLog<Record>,
    current_rev: i64,
    compact_rev: i64,
    size_bytes: u64,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore {
            index: TreeIndex::default(),
            revs: RevLog::default(),
            current_rev: 1,
            compact_rev: -1,
            size_bytes: 0,
        }
    }
}

impl KvStore {
    /// An empty store at revision 1, as a new etcd member starts.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current revision (the main revision of the last change).
    pub fn current_rev(&self) -> i64 {
        self.current_rev
    }

    /// The revision of the last compaction, or -1 if never compacted.
    pub fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    /// Approximate bytes held by retained records.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Number of retained records (all revisions of all keys).
    pub fn record_count(&self) -> usize {
        self.revs.len()
    }

    /// Number of keys that have history.
    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    /// Reads `range` at `opts.rev`, as etcd's `rangeKeys`.
    pub fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.range_at(range, opts, self.current_rev)
    }

    fn range_at(
        &self,
        range: &KeyRange,
        opts: RangeOptions,
        cur: i64,
    ) -> Result<RangeResult, MvccError> {
        if opts.rev > cur {
            return Err(MvccError::FutureRev);
        }
        let rev = if opts.rev <= 0 { cur } else { opts.rev };
        if rev < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let mut count = 0i64;
        let mut kvs = Vec::new();
        self.index.visit(range, rev, |_, at| {
            count += 1;
            if !opts.count_only && (opts.limit == 0 || kvs.len() < opts.limit) {
                if let Some(rec) = self.revs.get(&at.modified) {
                    kvs.push(rec.kv(at.modified));
                }
            }
            true
        });
        Ok(RangeResult {
            kvs,
            count,
            rev: cur,
        })
    }

    /// Starts a write transaction. Every change it makes gets main revision
    /// `current_rev + 1`; the revision is bumped once, at `end`, if anything
    /// changed.
    pub fn write(&mut self) -> WriteTxn<'_> {
        let begin = self.current_rev;
        WriteTxn {
            store: self,
            begin,
            events: Vec::new(),
        }
    }

    /// Compacts history at `rev` (etcd's `Compact` with physical = true):
    /// afterwards reads below `rev` fail with `Compacted`, watches from
    /// `rev` on still get every event.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRev);
        }
        self.compact_rev = rev;
        let mut keep = self.index.compact(rev);
        keep.sort_unstable();
        // Everything below `rev` that the index no longer needs goes. The
        // changes made *at* `rev` stay (tombstones included) so a watcher
        // starting at the compaction revision still sees its deletes (the
        // etcd bug of dropping a delete event at the compaction revision).
        let floor = Revision::new(rev, 0);
        let mut freed = 0u64;
        self.revs.retain(
            |r, _| *r >= floor || keep.binary_search(r).is_ok(),
            |rec| freed += rec.cost(),
        );
        self.size_bytes = self.size_bytes.saturating_sub(freed);
        Ok(())
    }

    /// Every change with main revision in `[from, to]` on keys in `range`, as
    /// watch events in revision order, with `prev_kv` looked up when asked
    /// for (absent if compacted away). Errors with `Compacted` if `from` is
    /// below the compaction revision.
    pub fn events(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        with_prev_kv: bool,
        max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        if from < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let mut last_main = None;
        let upper = Revision::new(to.saturating_add(1), 0);
        for (r, rec) in self.revs.range(Revision::new(from, 0), upper) {
            // Stop at `max`, but never in the middle of one revision.
            if max > 0 && out.len() >= max && last_main != Some(r.main) {
                break;
            }
            if !range.contains(rec.key()) {
                continue;
            }
            let prev_kv = if with_prev_kv {
                self.index
                    .get(rec.key(), r.main - 1)
                    .and_then(|at| self.revs.get(&at.modified).map(|p| p.kv(at.modified)))
            } else {
                None
            };
            let kind = if rec.is_tombstone() {
                EventType::Delete
            } else {
                EventType::Put
            };
            out.push(Event {
                r#type: kind as i32,
                kv: Some(rec.kv(*r)),
                prev_kv,
            });
            last_main = Some(r.main);
        }
        Ok(out)
    }

    /// CRC32 over the retained changes with main revision <= `rev` (etcd's
    /// HashKV shape: backend key then encoded value, in revision order).
    /// Identical stores give identical hashes.
    pub fn hash_kv(&self, rev: i64) -> Result<u32, MvccError> {
        use prost::Message;
        // etcd's HashByRev: an explicit revision at or below the compaction
        // revision is compacted (unlike a range, which may read at it).
        if rev > self.current_rev {
            return Err(MvccError::FutureRev);
        }
        if rev > 0 && rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let rev = if rev <= 0 { self.current_rev } else { rev };
        let mut h = crc32fast::Hasher::new();
        h.update(b"key");
        for (r, rec) in self
            .revs
            .range(Revision::new(i64::MIN, 0), Revision::new(rev + 1, 0))
        {
            h.update(&r.to_backend_key(rec.is_tombstone()));
            h.update(&rec.kv(*r).encode_to_vec());
        }
        Ok(h.finalize())
    }

    /// Every retained record in revision order (snapshots).
    pub fn records(&self) -> impl Iterator<Item = (&Revision, &Record)> + Clone {
        self.revs.iter()
    }

    /// This store's records with their bytes (key then value) moved to the
    /// buffers `data` gives (called in [`KvStore::records`] order); built
    /// off the writer's path, then handed to [`KvStore::adopt`] on the live
    /// store this one was cloned from. After a snapshot this moves the
    /// records it covers from the heap to the mapped file.
    pub fn rebased(&self, mut data: impl FnMut(&Revision, &Record) -> Bytes) -> Rebased {
        Rebased(self.revs.map_chunks(|r, rec| rec.with_data(data(r, rec))))
    }

    /// Takes the records of `rebased` (made from `base`, a clone of this
    /// store) wherever this store still holds exactly what `base` held;
    /// records written or compacted since keep theirs. Returns how many
    /// records were swapped.
    pub fn adopt(&mut self, base: &KvStore, rebased: Rebased) -> usize {
        self.revs.adopt(&base.revs, rebased.0)
    }

    /// Rebuilds a store from retained records in revision order (snapshot
    /// load). `records` must be what [`KvStore::records`] produced.
    pub fn restore(
        records: impl IntoIterator<Item = (Revision, Record)>,
        current_rev: i64,
        compact_rev: i64,
    ) -> Self {
        let mut s = KvStore {
            current_rev,
            compact_rev,
            ..KvStore::default()
        };
        let mut revs = Vec::new();
        for (r, rec) in records {
            s.index.restore_record(
                rec.key(),
                r,
                rec.is_tombstone(),
                rec.meta().create_revision,
                rec.meta().version,
            );
            s.size_bytes += rec.cost();
            revs.push((r, rec));
        }
        // Records come in revision order: a bulk build, not a million inserts.
        s.revs = revs.into_iter().collect();
        s
    }
}

/// A write transaction in progress; see [`KvStore::write`]. Reads inside it
/// see its own changes, as in etcd.
pub struct WriteTxn<'a> {
    store: &'a mut KvStore,
    begin: i64,
    events: Vec<Event>,
}

impl WriteTxn<'_> {
    /// The revision this transaction's reads see: its own changes included.
    pub fn read_rev(&self) -> i64 {
        if self.events.is_empty() {
            self.begin
        } else {
            self.begin + 1
        }
    }

    /// The revision its changes get.
    pub fn write_rev(&self) -> i64 {
        self.begin + 1
    }

    /// The store as it stands, for checks.
    pub fn store(&self) -> &KvStore {
        self.store
    }

    /// Reads inside the transaction.
    pub fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.store.range_at(range, opts, self.read_rev())
    }

    fn next_rev(&self) -> Revision {
        Revision::new(self.begin + 1, self.events.len() as i64)
    }

    /// The current value of one key, if alive (own changes included).
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let at = self.store.index.get(key, self.begin + 1)?;
        self.store.revs.get(&at.modified).map(|r| r.kv(at.modified))
    }

    /// Puts `key` = `value` with `lease`; returns the revision it was written at.
    pub fn put(&mut self, key: Bytes, value: Bytes, lease: i64) -> i64 {
        let prev = self.get(&key);
        self.put_over(key, value, lease, prev)
    }

    /// [`put`](Self::put) for a caller that has just read the key's current
    /// value with [`get`](Self::get) in this transaction (`prev`), so the
    /// key is not looked up twice.
    pub fn put_over(
        &mut self,
        key: Bytes,
        value: Bytes,
        lease: i64,
        prev: Option<KeyValue>,
    ) -> i64 {
        let rev = self.next_rev();
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev.main, 1),
        };
        self.store.index.put(&key, rev);
        let rec = Record::put(
            &key,
            &value,
            PutMeta {
                create_revision,
                version,
                lease,
            },
        );
        let kv = rec.kv(rev);
        self.store.size_bytes += rec.cost();
        // next_rev() is above everything logged: the push cannot refuse.
        let _ = self.store.revs.push(rev, rec);
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
        rev.main
    }

    /// Deletes every key in `range` alive now; returns the deleted
    /// key-values (as they were), in key order.
    pub fn delete_range(&mut self, range: &KeyRange) -> Vec<KeyValue> {
        let keys = self.store.index.alive_keys(range);
        let mut deleted = Vec::with_capacity(keys.len());
        for key in keys {
            let rev = self.next_rev();
            let prev = self.get(&key);
            if !self.store.index.tombstone(&key, rev) {
                continue;
            }
            let rec = Record::tombstone(&key);
            let kv = rec.kv(rev);
            self.store.size_bytes += rec.cost();
            let _ = self.store.revs.push(rev, rec);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(kv),
                prev_kv: prev.clone(),
            });
            if let Some(p) = prev {
                deleted.push(p);
            }
        }
        deleted
    }

    /// Number of changes so far.
    pub fn changes(&self) -> usize {
        self.events.len()
    }

    /// Finishes: bumps the revision if anything changed.
    pub fn end(self) -> WriteResult {
        if !self.events.is_empty() {
            self.store.current_rev = self.begin + 1;
        }
        WriteResult {
            rev: self.store.current_rev,
            events: self.events,
        }
    }
}
