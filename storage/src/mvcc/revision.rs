//! Revisions: the logical clock of the store.

/// A point in the store's history: `main` is bumped by every write
/// transaction that changes something, `sub` numbers the changes inside one
/// transaction. Orders by `main`, then `sub` (as etcd's `revision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The transaction's revision, as clients see it (`mod_revision`).
    pub main: i64,
    /// The change's position inside the transaction.
    pub sub: i64,
}

impl Revision {
    /// A revision from its two parts.
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The 17-byte key etcd's backend stores a change under: big-endian
    /// `main`, `_`, big-endian `sub`, and a trailing `t` for a tombstone.
    /// Sorting these bytes sorts the revisions (used for HashKV).
    pub fn to_backend_key(self, tombstone: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(18);
        b.extend_from_slice(&self.main.to_be_bytes());
        b.push(b'_');
        b.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            b.push(b't');
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_main_then_sub() {
        assert!(Revision::new(1, 5) < Revision::new(2, 0));
        assert!(Revision::new(2, 0) < Revision::new(2, 1));
        let a = Revision::new(3, 1).to_backend_key(false);
        let b = Revision::new(3, 2).to_backend_key(false);
        assert!(a < b);
        assert_eq!(Revision::new(1, 0).to_backend_key(true).len(), 18);
    }
}
