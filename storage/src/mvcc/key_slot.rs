//! How the key index stores one key's history: most keys are written once
//! and never deleted, so their whole [`KeyIndex`] is one revision.
//!
//! A [`KeyIndex`] is 56 bytes inline; a key put once needs only its
//! revision. A slot holds that revision alone (24 bytes) and boxes the full
//! history only for keys that have more (a second put, a deletion, a
//! compacted generation). With a million keys put once, that is 32 MB less
//! per member. Readers get the same answers either way: a single-revision
//! slot answers as the one-generation, one-revision [`KeyIndex`] it stands
//! for, and every change goes through that [`KeyIndex`].

use super::key_index::{KeyAt, KeyIndex};
use super::revision::Revision;

/// One key's history, compact when it is a single put. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySlot {
    /// Put once at this revision (created there, version 1), never deleted.
    Once(Revision),
    /// Anything else.
    History(Box<KeyIndex>),
}

impl KeySlot {
    /// The slot for `ki`, compact if it is a single put.
    pub fn new(ki: KeyIndex) -> KeySlot {
        match single_put(&ki) {
            Some(rev) => KeySlot::Once(rev),
            None => KeySlot::History(Box::new(ki)),
        }
    }

    /// The key as it was at main revision `at`, if it was alive then
    /// ([`KeyIndex::get`]).
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        match self {
            KeySlot::Once(rev) => (rev.main <= at).then_some(KeyAt {
                modified: *rev,
                created: *rev,
                version: 1,
            }),
            KeySlot::History(ki) => ki.get(at),
        }
    }

    /// True if the key's latest change is a put ([`KeyIndex::is_alive`]).
    pub fn is_alive(&self) -> bool {
        match self {
            KeySlot::Once(_) => true,
            KeySlot::History(ki) => ki.is_alive(),
        }
    }

    /// True if the key has no revisions left ([`KeyIndex::is_empty`]).
    pub fn is_empty(&self) -> bool {
        match self {
            KeySlot::Once(_) => false,
            KeySlot::History(ki) => ki.is_empty(),
        }
    }

    /// Changes the history through its full form, then stores it compactly
    /// again if it has become (or stayed) a single put.
    pub fn update<R>(&mut self, f: impl FnOnce(&mut KeyIndex) -> R) -> R {
        match self {
            KeySlot::Once(rev) => {
                let mut ki = KeyIndex::default();
                ki.put(*rev);
                let r = f(&mut ki);
                *self = KeySlot::new(ki);
                r
            }
            KeySlot::History(ki) => {
                let r = f(ki);
                if let Some(rev) = single_put(ki) {
                    *self = KeySlot::Once(rev);
                }
                r
            }
        }
    }
}

/// The revision of `ki` if its whole history is one put.
fn single_put(ki: &KeyIndex) -> Option<Revision> {
    match ki.generations.as_slice() {
        [g] if g.ver == 1 && g.revs.len() == 1 && g.revs[0] == g.created => Some(g.created),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// Every answer of a slot equals its full [`KeyIndex`]'s, through puts,
    /// tombstones and compactions, and the slot is compact exactly when the
    /// history is one put.
    #[test]
    fn slot_answers_as_its_key_index() {
        let mut slot = KeySlot::new({
            let mut ki = KeyIndex::default();
            ki.put(r(2));
            ki
        });
        let mut full = KeyIndex::default();
        full.put(r(2));
        assert_eq!(slot, KeySlot::Once(r(2)));
        let check = |slot: &KeySlot, full: &KeyIndex| {
            for at in 0..12 {
                assert_eq!(slot.get(at), full.get(at), "at {at}");
            }
            assert_eq!(slot.is_alive(), full.is_alive());
            assert_eq!(slot.is_empty(), full.is_empty());
        };
        check(&slot, &full);
        slot.update(|ki| ki.put(r(4)));
        full.put(r(4));
        assert!(matches!(slot, KeySlot::History(_)));
        check(&slot, &full);
        assert!(slot.update(|ki| ki.tombstone(r(6))));
        assert!(full.tombstone(r(6)));
        check(&slot, &full);
        slot.update(|ki| ki.put(r(8)));
        full.put(r(8));
        check(&slot, &full);
        // Compacting past the tombstone leaves one put: compact again.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        slot.update(|ki| ki.compact(9, &mut a));
        full.compact(9, &mut b);
        assert_eq!(a, b);
        assert_eq!(slot, KeySlot::Once(r(8)));
        check(&slot, &full);
        // A tombstone of a single put goes through the full form.
        assert!(slot.update(|ki| ki.tombstone(r(10))));
        assert!(full.tombstone(r(10)));
        check(&slot, &full);
        assert!(!slot.is_alive());
    }

    #[test]
    fn slot_is_small() {
        assert!(std::mem::size_of::<KeySlot>() <= 24);
    }
}
