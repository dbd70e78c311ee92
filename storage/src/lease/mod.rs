//! Leases: TTLs that keys hang on (etcd's `lease.Lessor`).
//!
//! What a lease *is* (ID, granted TTL, checkpointed remaining TTL, attached
//! keys) is replicated state, changed only by applied log entries. *When* it
//! expires is the primary's business: the member that leads keeps an expiry
//! instant per lease, renews it on keep-alive, and proposes a revoke when it
//! passes. Time is an input (`now`), never read here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// etcd's largest TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease's ID (never 0).
    pub id: i64,
    /// The TTL it was granted with, in seconds.
    pub ttl: i64,
    /// The remaining TTL recorded by the last checkpoint (0 = none): after a
    /// restart the lease lives this long, not a whole `ttl`.
    pub remaining_ttl: i64,
    /// Keys attached to it.
    pub keys: BTreeSet<Bytes>,
    /// When it expires, as the primary sees it.
    pub expiry: Instant,
}

impl Lease {
    /// Seconds left at `now`, rounded up (0 once expired).
    pub fn remaining(&self, now: Instant) -> i64 {
        let left = self.expiry.saturating_duration_since(now);
        left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0)
    }
}

/// All leases.
#[derive(Debug, Clone)]
pub struct Lessor {
    leases: BTreeMap<i64, Lease>,
    min_ttl: i64,
}

impl Lessor {
    /// No leases; TTLs below `min_ttl` seconds are raised to it (etcd's
    /// minimum, 3/2 of the election timeout).
    pub fn new(min_ttl: i64) -> Self {
        Lessor {
            leases: BTreeMap::new(),
            min_ttl,
        }
    }

    /// The minimum TTL granted.
    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    /// Grants `id` for `ttl` seconds; returns the TTL granted. The caller has
    /// checked the ID is free and the TTL in range.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) -> i64 {
        let ttl = ttl.max(self.min_ttl);
        self.leases.insert(
            id,
            Lease {
                id,
                ttl,
                remaining_ttl: 0,
                keys: BTreeSet::new(),
                expiry: now + Duration::from_secs(ttl as u64),
            },
        );
        ttl
    }

    /// Restores a lease from a snapshot: it lives its checkpointed remaining
    /// TTL if it has one, else its whole TTL, from `now`.
    pub fn restore(&mut self, id: i64, ttl: i64, remaining_ttl: i64, now: Instant) {
        let live = if remaining_ttl > 0 {
            remaining_ttl
        } else {
            ttl
        };
        self.leases.insert(
            id,
            Lease {
                id,
                ttl,
                remaining_ttl,
                keys: BTreeSet::new(),
                expiry: now + Duration::from_secs(live.max(0) as u64),
            },
        );
    }

    /// Removes a lease, returning it (with its keys) if it existed.
    pub fn revoke(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Renews a lease from `now`; returns its TTL, or None if unknown.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let l = self.leases.get_mut(&id)?;
        l.expiry = now + Duration::from_secs(l.ttl as u64);
        l.remaining_ttl = 0;
        Some(l.ttl)
    }

    /// Records a checkpoint: the lease has `remaining` seconds left.
    pub fn checkpoint(&mut self, id: i64, remaining: i64, now: Instant) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.remaining_ttl = remaining;
            l.expiry = now + Duration::from_secs(remaining.max(0) as u64);
        }
    }

    /// A member becomes the primary: every lease lives at least its
    /// remaining (checkpointed) TTL, or its whole TTL, from `now`, since the
    /// old primary's renewals were not seen here (etcd's `Promote`).
    pub fn promote(&mut self, now: Instant) {
        for l in self.leases.values_mut() {
            let live = if l.remaining_ttl > 0 {
                l.remaining_ttl
            } else {
                l.ttl
            };
            l.expiry = now + Duration::from_secs(live.max(0) as u64);
        }
    }

    /// Every lease expired at `now`, at most `max` of them.
    pub fn expired(&self, now: Instant, max: usize) -> Vec<i64> {
        self.leases
            .values()
            .filter(|l| l.expiry <= now)
            .map(|l| l.id)
            .take(max)
            .collect()
    }

    /// Looks a lease up.
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// True if the lease exists.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Attaches `key` to lease `id` (ignored if the lease is unknown). The
    /// lease keeps its own copy, never a slice of a request or a file.
    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            if !l.keys.contains(key) {
                l.keys.insert(Bytes::copy_from_slice(key));
            }
        }
    }

    /// Detaches `key` from lease `id`.
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    /// Every lease, by ID.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// True if there are no leases.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_raises_to_min_ttl_and_expires() {
        let t0 = Instant::now();
        let mut l = Lessor::new(2);
        assert_eq!(l.grant(7, 1, t0), 2);
        assert!(l.expired(t0 + Duration::from_millis(1999), 10).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_secs(2), 10), vec![7]);
        assert_eq!(l.renew(7, t0 + Duration::from_secs(2)), Some(2));
        assert!(l.expired(t0 + Duration::from_secs(3), 10).is_empty());
        assert_eq!(l.renew(8, t0), None);
    }

    #[test]
    fn checkpoint_sets_remaining() {
        let t0 = Instant::now();
        let mut l = Lessor::new(1);
        l.grant(1, 100, t0);
        l.checkpoint(1, 10, t0);
        assert_eq!(l.get(1).map(|x| x.remaining(t0)), Some(10));
        let mut r = Lessor::new(1);
        r.restore(1, 100, 10, t0);
        assert_eq!(r.get(1).map(|x| x.remaining(t0)), Some(10));
    }
}
