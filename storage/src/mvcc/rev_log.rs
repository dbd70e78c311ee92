//! Every retained change in revision order: the store's "values by
//! revision" (etcd's `key` bucket, whose keys are revisions).
//!
//! Revisions only ever grow, so changes are appended, never inserted: the
//! log is a list of fixed-capacity chunks, found by binary search. Next to a
//! B-tree map this saves the nodes' pointers and half-empty leaves (about
//! 100 bytes a change) and keeps appends O(1); compaction rebuilds it once.
//!
//! Chunks are shared (`Arc`) between clones and copied on write, so cloning
//! the log (a snapshot of the store) costs a reference per chunk, not a copy
//! of every change, and does not hold up the writer.

use std::sync::Arc;

use super::revision::Revision;

/// Changes per chunk: big enough that the chunk list stays short, small
/// enough that growing never copies much.
const CHUNK: usize = 4096;

/// An append-only, revision-ordered list of `(Revision, T)`.
#[derive(Debug, Clone)]
pub struct RevLog<T> {
    chunks: Vec<Arc<Vec<(Revision, T)>>>,
    len: usize,
}

impl<T> Default for RevLog<T> {
    fn default() -> Self {
        RevLog {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> RevLog<T> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The highest revision held.
    pub fn last_rev(&self) -> Option<Revision> {
        self.chunks.last().and_then(|c| c.last()).map(|(r, _)| *r)
    }

    /// Appends `(rev, value)`. `rev` must be above every revision held
    /// (revisions only grow); returns the value back otherwise.
    pub fn push(&mut self, rev: Revision, value: T) -> Result<(), T> {
        if self.last_rev().is_some_and(|last| rev <= last) {
            return Err(value);
        }
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => Arc::make_mut(c).push((rev, value)),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push((rev, value));
                self.chunks.push(Arc::new(c));
            }
        }
        self.len += 1;
        Ok(())
    }

    /// The position (chunk, offset) of the first entry `>= rev`.
    fn lower_bound(&self, rev: Revision) -> (usize, usize) {
        // The first chunk whose last entry is >= rev holds it, if any does.
        let ci = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|(r, _)| *r < rev));
        match self.chunks.get(ci) {
            Some(c) => (ci, c.partition_point(|(r, _)| *r < rev)),
            None => (ci, 0),
        }
    }

    /// The value at exactly `rev`.
    pub fn get(&self, rev: &Revision) -> Option<&T> {
        let (ci, i) = self.lower_bound(*rev);
        match self.chunks.get(ci).and_then(|c| c.get(i)) {
            Some((r, v)) if r == rev => Some(v),
            _ => None,
        }
    }

    /// Entries with `from <= revision < to`, in order.
    pub fn range(&self, from: Revision, to: Revision) -> impl Iterator<Item = (&Revision, &T)> {
        let (ci, i) = self.lower_bound(from);
        self.chunks
            .iter()
            .skip(ci)
            .enumerate()
            .flat_map(move |(k, c)| c[if k == 0 { i } else { 0 }..].iter())
            .take_while(move |(r, _)| *r < to)
            .map(|(r, v)| (r, v))
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Revision, &T)> + Clone {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .map(|(r, v)| (r, v))
    }

    /// A copy of every chunk with each value replaced by `f(rev, value)`,
    /// in order: the new values for [`RevLog::adopt`].
    pub fn map_chunks(
        &self,
        mut f: impl FnMut(&Revision, &T) -> T,
    ) -> Vec<Arc<Vec<(Revision, T)>>> {
        self.chunks
            .iter()
            .map(|c| Arc::new(c.iter().map(|(r, v)| (*r, f(r, v))).collect()))
            .collect()
    }

    /// Swaps in `new[i]` for every chunk still the very chunk `base` had at
    /// position `i` (same allocation: untouched since `base` was cloned
    /// from this log). `new` must come from `base.map_chunks` with
    /// equivalent values. Chunks changed since (appended to, compacted)
    /// keep theirs. Returns how many entries were swapped.
    pub fn adopt(&mut self, base: &RevLog<T>, new: Vec<Arc<Vec<(Revision, T)>>>) -> usize {
        let mut swapped = 0;
        for ((mine, old), new) in self.chunks.iter_mut().zip(&base.chunks).zip(new) {
            if Arc::ptr_eq(mine, old) && new.len() == old.len() {
                swapped += new.len();
                *mine = new;
            }
        }
        swapped
    }

    /// Keeps only the entries `keep` says yes to (compaction): one pass,
    /// rebuilding the chunks densely. `dropped` sees each removed entry.
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(&Revision, &T) -> bool,
        mut dropped: impl FnMut(T),
    ) {
        let old = std::mem::take(&mut self.chunks);
        self.len = 0;
        for c in old {
            let c = Arc::try_unwrap(c).unwrap_or_else(|shared| (*shared).clone());
            for (r, v) in c {
                if keep(&r, &v) {
                    // In order by construction: push cannot refuse.
                    if let Err(v) = self.push(r, v) {
                        dropped(v);
                    }
                } else {
                    dropped(v);
                }
            }
        }
    }
}

impl<T: Clone> FromIterator<(Revision, T)> for RevLog<T> {
    /// Builds from entries in ascending revision order; out-of-order entries
    /// are skipped.
    fn from_iter<I: IntoIterator<Item = (Revision, T)>>(iter: I) -> Self {
        let mut log = RevLog::default();
        for (r, v) in iter {
            let _ = log.push(r, v);
        }
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rev(n: i64) -> Revision {
        Revision::new(n / 3, n % 3)
    }

    #[test]
    fn matches_a_btreemap_across_chunks_and_compaction() {
        let mut log = RevLog::default();
        let mut model = BTreeMap::new();
        for n in 1..(3 * CHUNK as i64 + 17) {
            if n % 5 == 0 {
                continue;
            }
            log.push(rev(n), n).expect("ascending");
            model.insert(rev(n), n);
        }
        assert!(log.push(rev(1), 0).is_err(), "a lower revision is refused");
        let check = |log: &RevLog<i64>, model: &BTreeMap<Revision, i64>| {
            assert_eq!(log.len(), model.len());
            assert!(log
                .iter()
                .map(|(r, v)| (*r, *v))
                .eq(model.iter().map(|(r, v)| (*r, *v))));
            for n in 0..(3 * CHUNK as i64 + 20) {
                assert_eq!(log.get(&rev(n)), model.get(&rev(n)), "get {n}");
            }
            for (a, b) in [
                (0, 5),
                (7, 4100),
                (4095, 4097),
                (9000, 20000),
                (50, 50),
                (60, 40),
            ] {
                let got: Vec<i64> = log.range(rev(a), rev(b)).map(|(_, v)| *v).collect();
                let want: Vec<i64> = if a < b {
                    model.range(rev(a)..rev(b)).map(|(_, v)| *v).collect()
                } else {
                    Vec::new()
                };
                assert_eq!(got, want, "range {a}..{b}");
            }
        };
        check(&log, &model);
        let mut gone = 0;
        log.retain(|_, v| v % 2 == 0 || *v > 10_000, |_| gone += 1);
        model.retain(|_, v| *v % 2 == 0 || *v > 10_000);
        assert!(gone > 0);
        check(&log, &model);
    }

    #[test]
    fn adopt_swaps_only_chunks_untouched_since_the_clone() {
        let mut log = RevLog::default();
        for n in 1..(2 * CHUNK as i64 + 10) {
            log.push(rev(n), n).expect("ascending");
        }
        let base = log.clone();
        // Appending copies the (shared) last chunk: it is no longer base's.
        log.push(rev(10_000), 10_000).expect("ascending");
        let new = base.map_chunks(|_, v| -v);
        assert_eq!(log.adopt(&base, new), 2 * CHUNK);
        let got: Vec<i64> = log.iter().map(|(_, v)| *v).collect();
        assert_eq!(got.len(), 2 * CHUNK + 10);
        assert!(
            got[..2 * CHUNK].iter().all(|v| *v < 0),
            "full chunks swapped"
        );
        assert!(
            got[2 * CHUNK..].iter().all(|v| *v > 0),
            "the appended-to chunk kept"
        );
        // After a compaction every chunk is new: nothing is swapped.
        let base = log.clone();
        log.retain(|_, v| *v != -1, |_| {});
        let new = base.map_chunks(|_, v| *v * 2);
        assert_eq!(log.adopt(&base, new), 0);
    }
}
