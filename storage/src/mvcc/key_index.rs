//! The revision history of one key, in generations (etcd's `keyIndex`).
//!
//! A generation is the life of the key from a creation to a deletion: the
//! revisions of its puts, closed by a tombstone. A deleted key starts a new,
//! empty generation; its next put fills it.
//!
//! ```text
//! put(1.0); put(2.0); tombstone(3.0); put(4.0); tombstone(5.0)
//! generations:
//!     {empty}
//!     {4.0, 5.0(t)}
//!     {1.0, 2.0, 3.0(t)}
//! ```
//!
//! Compaction at revision R keeps, in the generation alive at R, the largest
//! revision <= R and everything after it; older generations go, and a
//! generation left holding only its tombstone goes too. A key index left
//! with one empty generation is removed from the tree.

use smallvec::{smallvec, SmallVec};

use super::revision::Revision;

/// One life of a key, from a creation to a tombstone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    /// Number of puts in this generation (the `version` of its last put).
    pub ver: i64,
    /// The revision that created the key in this generation.
    pub created: Revision,
    /// Every revision of the key in this generation, ascending; a closed
    /// generation ends with its tombstone. Inline while there is one (most
    /// keys), so a key costs no allocation beyond its tree entry.
    pub revs: SmallVec<[Revision; 1]>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }
}

/// What the index says about a key at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    /// The revision of the change that holds the key's value at that point.
    pub modified: Revision,
    /// The revision that created the key (`create_revision`).
    pub created: Revision,
    /// How many puts the key had in this generation up to that point.
    pub version: i64,
}

/// All the revisions of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    /// Oldest first; the last one is the current generation. Inline while
    /// there is one.
    pub generations: SmallVec<[Generation; 1]>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            generations: smallvec![Generation::default()],
        }
    }
}

impl KeyIndex {
    /// Records a put at `rev`.
    pub fn put(&mut self, rev: Revision) {
        debug_assert!(self.modified().is_none_or(|m| rev > m));
        let g = self.current_mut();
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    /// Records a deletion at `rev`: the tombstone closes the current
    /// generation and an empty one begins. Returns false if the key was not
    /// alive (nothing to delete).
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.current().is_empty() {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// The key as it was at main revision `at`, if it was alive then.
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        let g = self.find_generation(at)?;
        let pos = g.revs.iter().rposition(|r| r.main <= at)?;
        Some(KeyAt {
            modified: g.revs[pos],
            created: g.created,
            version: g.ver - (g.revs.len() - pos - 1) as i64,
        })
    }

    /// The generation that holds the key's state at `at`, if the key was
    /// alive then (etcd's `findGeneration`).
    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            if g.is_empty() {
                continue;
            }
            // A closed generation whose tombstone is at or before `at`: the
            // key was deleted by then.
            if i != last {
                if let Some(tomb) = g.revs.last() {
                    if tomb.main <= at {
                        return None;
                    }
                }
            }
            if g.revs[0].main <= at {
                return Some(g);
            }
        }
        None
    }

    /// True if the key has no revisions left.
    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// True if the key's latest change is a put (it is alive now).
    pub fn is_alive(&self) -> bool {
        !self.current().is_empty()
    }

    /// Compacts the history at main revision `at`. Revisions that must stay
    /// readable (the latest one <= `at` of the generation alive at `at`) are
    /// pushed to `available`.
    pub fn compact(&mut self, at: i64, available: &mut Vec<Revision>) {
        let mut gen_idx = 0;
        while gen_idx < self.generations.len() - 1 {
            let g = &self.generations[gen_idx];
            match g.revs.last() {
                Some(tomb) if tomb.main > at => break,
                _ => gen_idx += 1,
            }
        }
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gen_idx];
        if !g.is_empty() {
            if let Some(pos) = g.revs.iter().rposition(|r| r.main <= at) {
                available.push(g.revs[pos]);
                g.revs.drain(..pos);
            }
            // A generation left with only its tombstone is gone.
            if g.revs.len() == 1 && gen_idx != last {
                available.pop();
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
    }

    /// The latest revision of the key (put or tombstone), if any is left.
    pub fn modified(&self) -> Option<Revision> {
        self.generations
            .iter()
            .rev()
            .find_map(|g| g.revs.last().copied())
    }

    fn current(&self) -> &Generation {
        // Invariant: there is always at least one generation.
        &self.generations[self.generations.len() - 1]
    }

    fn current_mut(&mut self) -> &mut Generation {
        let n = self.generations.len();
        &mut self.generations[n - 1]
    }
}

impl KeyIndex {
    /// Starts the history from a retained record: the key was created at
    /// `created`, last changed at `modified`, with `version` puts so far.
    pub fn restore(&mut self, created: Revision, modified: Revision, version: i64) {
        let g = self.current_mut();
        g.created = created;
        g.ver = version;
        g.revs = smallvec![modified];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    // put(2) put(4) tomb(6) put(8) put(10) tomb(12) put(14) put(16)
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        assert!(ki.tombstone(r(12)));
        ki.put(r(14));
        ki.put(r(16));
        ki
    }

    #[test]
    fn get_at_each_revision() {
        let ki = sample();
        // (at, Some((modified, created, version)))
        type Case = (i64, Option<(i64, i64, i64)>);
        let cases: &[Case] = &[
            (1, None),
            (2, Some((2, 2, 1))),
            (3, Some((2, 2, 1))),
            (4, Some((4, 2, 2))),
            (5, Some((4, 2, 2))),
            (6, None),
            (7, None),
            (8, Some((8, 8, 1))),
            (11, Some((10, 8, 2))),
            (12, None),
            (13, None),
            (14, Some((14, 14, 1))),
            (16, Some((16, 14, 2))),
            (100, Some((16, 14, 2))),
        ];
        for &(at, want) in cases {
            let got = ki
                .get(at)
                .map(|k| (k.modified.main, k.created.main, k.version));
            assert_eq!(got, want, "at {at}");
        }
    }

    #[test]
    fn tombstone_of_dead_key_is_refused() {
        let mut ki = KeyIndex::default();
        assert!(!ki.tombstone(r(1)));
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        assert!(!ki.tombstone(r(4)));
    }

    #[test]
    fn compact_table() {
        // (compact at, generations' revs after, available)
        // (compact at, generations' revs after, available)
        type Case = (i64, Vec<Vec<i64>>, Vec<i64>);
        let cases: &[Case] = &[
            (
                1,
                vec![vec![2, 4, 6], vec![8, 10, 12], vec![14, 16]],
                vec![],
            ),
            (
                2,
                vec![vec![2, 4, 6], vec![8, 10, 12], vec![14, 16]],
                vec![2],
            ),
            (5, vec![vec![4, 6], vec![8, 10, 12], vec![14, 16]], vec![4]),
            (6, vec![vec![8, 10, 12], vec![14, 16]], vec![]),
            (7, vec![vec![8, 10, 12], vec![14, 16]], vec![]),
            (9, vec![vec![8, 10, 12], vec![14, 16]], vec![8]),
            (11, vec![vec![10, 12], vec![14, 16]], vec![10]),
            (12, vec![vec![14, 16]], vec![]),
            (15, vec![vec![14, 16]], vec![14]),
            (16, vec![vec![16]], vec![16]),
            (17, vec![vec![16]], vec![16]),
        ];
        for (at, gens, avail) in cases {
            let mut ki = sample();
            let mut got = Vec::new();
            ki.compact(*at, &mut got);
            let got_gens: Vec<Vec<i64>> = ki
                .generations
                .iter()
                .map(|g| g.revs.iter().map(|r| r.main).collect())
                .collect();
            assert_eq!(&got_gens, gens, "at {at}");
            let got: Vec<i64> = got.iter().map(|r| r.main).collect();
            assert_eq!(&got, avail, "available at {at}");
        }
    }

    #[test]
    fn compact_after_final_tombstone_empties_the_key() {
        let mut ki = KeyIndex::default();
        ki.put(r(1));
        ki.tombstone(r(2));
        let mut avail = Vec::new();
        ki.compact(2, &mut avail);
        assert!(ki.is_empty());
        assert!(avail.is_empty());
    }
}
