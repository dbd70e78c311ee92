//! The in-memory B-tree from key to its revision history (etcd's `treeIndex`).

use std::ops::Bound;

use bytes::Bytes;

use super::chunk_map::ChunkMap;
use super::key_index::{KeyAt, KeyIndex};
use super::key_slot::KeySlot;
use super::revision::Revision;

/// Lower and upper bounds over keys.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Which keys an operation covers, decoded once from etcd's
/// `key`/`range_end` convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key (`range_end` empty).
    Single(Bytes),
    /// `[start, end)`; `end: None` means every key >= `start`
    /// (`range_end` = `"\0"`).
    Span {
        /// First key, inclusive.
        start: Bytes,
        /// Last key, exclusive; `None` is "no upper bound".
        end: Option<Bytes>,
    },
}

impl KeyRange {
    /// Decodes etcd's `key` + `range_end`.
    pub fn new(key: &Bytes, range_end: &Bytes) -> Self {
        if range_end.is_empty() {
            KeyRange::Single(key.clone())
        } else if range_end.as_ref() == b"\0" {
            KeyRange::Span {
                start: key.clone(),
                end: None,
            }
        } else {
            KeyRange::Span {
                start: key.clone(),
                end: Some(range_end.clone()),
            }
        }
    }

    /// True if `k` falls in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => key.as_ref() == k,
            KeyRange::Span { start, end } => {
                k >= start.as_ref() && end.as_ref().is_none_or(|e| k < e.as_ref())
            }
        }
    }

    /// The bounds to walk a `BTreeMap<Bytes, _>` with; `None` for an empty span.
    fn bounds(&self) -> Option<KeyBounds<'_>> {
        match self {
            KeyRange::Single(k) => Some((Bound::Included(k.as_ref()), Bound::Included(k.as_ref()))),
            KeyRange::Span { start, end } => match end {
                Some(e) if e.as_ref() <= start.as_ref() => None,
                Some(e) => Some((Bound::Included(start.as_ref()), Bound::Excluded(e.as_ref()))),
                None => Some((Bound::Included(start.as_ref()), Bound::Unbounded)),
            },
        }
    }
}

/// Key -> its history ([`KeyIndex`], held compactly as a [`KeySlot`]),
/// ordered by key.
#[derive(Debug, Default, Clone)]
pub struct TreeIndex {
    tree: ChunkMap<KeySlot>,
}

impl TreeIndex {
    /// Records a put of `key` at `rev`.
    pub fn put(&mut self, key: &Bytes, rev: Revision) {
        match self.tree.get_mut(key.as_ref()) {
            Some(slot) => slot.update(|ki| ki.put(rev)),
            None => self.tree.insert(key, KeySlot::Once(rev)),
        }
    }

    /// Replays one retained record, in revision order, into the key's
    /// history (snapshot load): a put continues or starts a generation; the
    /// first retained put of a compacted generation restores it from the
    /// record's create revision and version; a tombstone ends it.
    pub fn restore_record(
        &mut self,
        key: &[u8],
        rev: Revision,
        tombstone: bool,
        created: i64,
        version: i64,
    ) {
        if tombstone {
            // A tombstone with no history left (kept only for watchers at
            // the compaction revision) has nothing to end.
            if let Some(slot) = self.tree.get_mut(key) {
                slot.update(|ki| ki.tombstone(rev));
            }
            return;
        }
        let restore = |ki: &mut KeyIndex| {
            if ki.is_alive() || version == 1 {
                ki.put(rev);
            } else {
                ki.restore(Revision::new(created, 0), rev, version);
            }
        };
        match self.tree.get_mut(key) {
            Some(slot) => slot.update(restore),
            None => {
                let mut ki = KeyIndex::default();
                restore(&mut ki);
                self.tree.insert(key, KeySlot::new(ki));
            }
        }
    }

    /// Records the deletion of `key` at `rev`; false if it was not alive.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.tree
            .get_mut(key)
            .is_some_and(|slot| slot.update(|ki| ki.tombstone(rev)))
    }

    /// One key's state at `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.tree.get(key).and_then(|ki| ki.get(at))
    }

    /// Visits, in key order, every key in `range` alive at `at`; stops when
    /// `f` returns false.
    pub fn visit(&self, range: &KeyRange, at: i64, mut f: impl FnMut(&[u8], KeyAt) -> bool) {
        let Some(bounds) = range.bounds() else {
            return;
        };
        for (k, ki) in self.tree.range(bounds) {
            if let Some(s) = ki.get(at) {
                if !f(k, s) {
                    return;
                }
            }
        }
    }

    /// Keys in `range` alive now (for deletion), in key order.
    pub fn alive_keys(&self, range: &KeyRange) -> Vec<Bytes> {
        let Some(bounds) = range.bounds() else {
            return Vec::new();
        };
        self.tree
            .range(bounds)
            .filter(|(_, ki)| ki.is_alive())
            .map(|(k, _)| Bytes::copy_from_slice(k))
            .collect()
    }

    /// Compacts every key at `at`; returns the revisions that stay readable.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut available = Vec::new();
        self.tree.retain(|_, slot| {
            slot.update(|ki| ki.compact(at, &mut available));
            !slot.is_empty()
        });
        available
    }

    /// Number of keys with any history.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True if no key has any history.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}
