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
    /// The first revision of each chunk: finding a chunk searches this one
    /// small array instead of following a pointer into every chunk probed.
    firsts: Vec<Revision>,
    len: usize,
}

impl<T> Default for RevLog<T> {
    fn default() -> Self {
        RevLog {
            chunks: Vec::new(),
            firsts: Vec::new(),
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
                self.firsts.push(rev);
            }
        }
        self.len += 1;
        Ok(())
    }

    /// The position (chunk, offset) of the first entry `>= rev`.
    fn lower_bound(&self, rev: Revision) -> (usize, usize) {
        // The last chunk starting at or below rev holds it, if any does;
        // else it is the first entry of the next chunk.
        let after = self.firsts.partition_point(|f| *f <= rev);
        let Some(ci) = after.checked_sub(1) else {
            return (0, 0);
        };
        let (c, first) = (&self.chunks[ci], self.firsts[ci]);
        // Most revisions are one change each, so the offset is usually the
        // distance in main revisions: try there first, search otherwise.
        let guess = usize::try_from(rev.main - first.main)
            .unwrap_or(0)
            .min(c.len() - 1);
        let i = if c[guess].0 < rev {
            guess + 1 + c[guess + 1..].partition_point(|(r, _)| *r < rev)
        } else if guess == 0 || c[guess - 1].0 < rev {
            guess
        } else {
            c[..guess].partition_point(|(r, _)| *r < rev)
        };
        if i == c.len() {
            (ci + 1, 0)
        } else {
            (ci, i)
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
        self.firsts.clear();
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

    /// One change per revision (where the lookup's first guess is right),
    /// with runs of missing revisions and of several changes in one
    /// revision (where it is too high or too low).
    #[test]
    fn finds_every_revision_whatever_the_spacing() {
        let mut log = RevLog::default();
        let mut model = BTreeMap::new();
        let mut main = 0;
        for n in 0..(3 * CHUNK as i64) {
            main += match n % 1000 {
                0..=599 => 1,
                600..=799 => 9,
                _ => 0,
            };
            let sub = if n % 1000 >= 800 { n % 1000 - 799 } else { 0 };
            log.push(Revision::new(main, sub), n).expect("ascending");
            model.insert(Revision::new(main, sub), n);
        }
        for m in 0..=main + 1 {
            for sub in 0..3 {
                let r = Revision::new(m, sub);
                assert_eq!(log.get(&r), model.get(&r), "get {m}.{sub}");
                let next = |it: &mut dyn Iterator<Item = (&Revision, &i64)>| {
                    it.next().map(|(r, v)| (*r, *v))
                };
                assert_eq!(
                    next(&mut log.range(r, Revision::new(i64::MAX, 0))),
                    next(&mut model.range(r..)),
                    "first at or after {m}.{sub}"
                );
            }
        }
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
