//! etcd's key-value store as a deterministic sequential state machine.
//!
//! [`KvState`] is the single source of truth about what a request does to the
//! store and what it returns, with etcd's exact revision rules (as etcd's
//! `tests/robustness/model` does it):
//! - every write transaction that changes something bumps the revision by
//!   one; all its changes carry that revision (`mod_revision`);
//! - a put sets `create_revision` (first put of a generation), `version`
//!   (+1 per put) and `lease`; a delete of a missing key changes nothing;
//! - a txn's compares see the state before it, its ops run in order and each
//!   sees the earlier ones; a value compare on a missing key is false;
//! - `LeaseRevoke` and `LeaseExpire` (the synthetic op of an expiry, which
//!   the primary carries out as a revoke) delete every key attached to the
//!   lease in one revision (none if it has no keys);
//! - a lease that was revoked or expired is gone: a revoke, an expiry or a
//!   put (or a txn branch putting) with it is refused (`apply` gives
//!   `None`: etcd's `ErrLeaseNotFound`, so nothing happens).
//!
//! Grants and keep-alives are not modelled: a lease is alive until it is
//! revoked or expires; when it may expire is the search's business (the
//! expiry op's time window, see `super::expiry`).
//!
//! [`KvState::apply`] mutates in place and returns an [`Undo`], so the
//! linearizability search can step and step back without cloning the store;
//! [`KvState::fingerprint`] is maintained incrementally for its memo cache.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use super::history::{
    CmpOp, CmpTarget, Compare, EventKind, KeyValue, OpResult, Request, TxnOp, TxnOpResult,
    WatchEvent,
};

/// The whole key-value store at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvState {
    revision: i64,
    kvs: BTreeMap<String, KeyValue>,
    /// XOR of `hash_kv` over all keys and `hash_lease` over all dead leases
    /// (the revision is mixed in on read).
    kv_hash: u64,
    /// Leases revoked or expired.
    dead: BTreeSet<i64>,
}

/// What [`KvState::apply`] did: the response it implies and the watch events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The response header revision.
    pub revision: i64,
    /// The response body.
    pub result: OpResult,
    /// The watch events the request produced, in order (all at `revision`).
    pub events: Vec<WatchEvent>,
}

/// How to take back one [`KvState::apply`].
#[derive(Clone, Debug, Default)]
pub struct Undo {
    revision: i64,
    kv_hash: u64,
    /// Each changed key with its value before the apply (first change only).
    old: Vec<(String, Option<KeyValue>)>,
    /// The lease the apply revoked or expired.
    killed: Option<i64>,
}

fn hash_kv(kv: &KeyValue) -> u64 {
    let mut h = DefaultHasher::new();
    kv.hash(&mut h);
    h.finish()
}

fn hash_lease(id: i64) -> u64 {
    let mut h = DefaultHasher::new();
    (0x1ea5e_u32, id).hash(&mut h);
    h.finish()
}

impl KvState {
    /// An empty store at `revision` (a fresh etcd is at revision 1).
    pub fn new(revision: i64) -> KvState {
        KvState {
            revision,
            kvs: BTreeMap::new(),
            kv_hash: 0,
            dead: BTreeSet::new(),
        }
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The key, if present.
    pub fn get(&self, key: &str) -> Option<&KeyValue> {
        self.kvs.get(key)
    }

    /// Every present key starting with `prefix`, in key order.
    pub fn range(&self, prefix: &str) -> Vec<KeyValue> {
        self.kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    /// True if the lease was revoked or expired.
    pub fn lease_gone(&self, id: i64) -> bool {
        self.dead.contains(&id)
    }

    /// A hash of the whole state (revision, every key-value and the dead
    /// leases), kept up to date incrementally; equal states have equal
    /// fingerprints.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.revision.hash(&mut h);
        self.kv_hash.hash(&mut h);
        h.finish()
    }

    /// A short human description (for reports): revision and key-values.
    pub fn describe(&self) -> String {
        let mut s = format!("revision {}", self.revision);
        for kv in self.kvs.values() {
            s.push_str(&format!(
                "\n  {} = {:?} (mod {}, create {}, ver {}, lease {})",
                kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease
            ));
        }
        if !self.dead.is_empty() {
            let dead: Vec<String> = self.dead.iter().map(|l| format!("{l:x}")).collect();
            s.push_str(&format!("\n  leases gone: {}", dead.join(" ")));
        }
        s
    }

    /// Applies `req` and returns the response etcd would give plus an undo
    /// record. `None` for requests outside the model (reads at an old
    /// revision, lease grant / keep-alive / time-to-live) and for requests
    /// etcd refuses, changing nothing (anything with a dead lease).
    pub fn apply(&mut self, req: &Request) -> Option<(Applied, Undo)> {
        let mut undo = Undo {
            revision: self.revision,
            kv_hash: self.kv_hash,
            old: Vec::new(),
            killed: None,
        };
        let next = self.revision + 1;
        let mut events = Vec::new();
        let result = match req {
            Request::Get { key, revision, .. } => {
                if *revision != 0 {
                    return None;
                }
                OpResult::Get {
                    kv: self.get(key).cloned(),
                }
            }
            Request::Range {
                prefix, revision, ..
            } => {
                if *revision != 0 {
                    return None;
                }
                OpResult::Range {
                    kvs: self.range(prefix),
                }
            }
            Request::Put { key, value, lease } => {
                if self.lease_gone(*lease) {
                    return None;
                }
                self.put(key, value, *lease, next, &mut undo, &mut events);
                OpResult::Put
            }
            Request::Delete { key } => OpResult::Delete {
                deleted: self.delete(key, next, &mut undo, &mut events),
            },
            Request::Txn {
                compares,
                success,
                failure,
            } => {
                let succeeded = compares.iter().all(|c| self.compare(c));
                let branch = if succeeded { success } else { failure };
                let dead_lease =
                    |op: &TxnOp| matches!(op, TxnOp::Put { lease, .. } if self.lease_gone(*lease));
                if branch.iter().any(dead_lease) {
                    return None;
                }
                let mut results = Vec::with_capacity(branch.len());
                for op in branch {
                    results.push(match op {
                        TxnOp::Get { key } => TxnOpResult::Get {
                            kv: self.get(key).cloned(),
                        },
                        TxnOp::Put { key, value, lease } => {
                            self.put(key, value, *lease, next, &mut undo, &mut events);
                            TxnOpResult::Put
                        }
                        TxnOp::Delete { key } => TxnOpResult::Delete {
                            deleted: self.delete(key, next, &mut undo, &mut events),
                        },
                    });
                }
                OpResult::Txn { succeeded, results }
            }
            Request::LeaseRevoke { id } | Request::LeaseExpire { id } => {
                if *id == 0 || !self.dead.insert(*id) {
                    return None;
                }
                self.kv_hash ^= hash_lease(*id);
                undo.killed = Some(*id);
                let keys: Vec<String> = self
                    .kvs
                    .values()
                    .filter(|kv| kv.lease == *id)
                    .map(|kv| kv.key.clone())
                    .collect();
                for key in keys {
                    self.delete(&key, next, &mut undo, &mut events);
                }
                OpResult::LeaseRevoke
            }
            Request::LeaseGrant { .. }
            | Request::LeaseKeepAlive { .. }
            | Request::LeaseTimeToLive { .. } => return None,
        };
        if !events.is_empty() {
            self.revision = next;
        }
        Some((
            Applied {
                revision: self.revision,
                result,
                events,
            },
            undo,
        ))
    }

    /// Takes back the [`KvState::apply`] that returned `undo` (the last one
    /// not yet undone).
    pub fn undo(&mut self, undo: Undo) {
        for (key, old) in undo.old.into_iter().rev() {
            match old {
                Some(kv) => {
                    self.kvs.insert(key, kv);
                }
                None => {
                    self.kvs.remove(&key);
                }
            }
        }
        if let Some(id) = undo.killed {
            self.dead.remove(&id);
        }
        self.revision = undo.revision;
        self.kv_hash = undo.kv_hash;
    }

    fn remember(&self, key: &str, undo: &mut Undo) {
        if !undo.old.iter().any(|(k, _)| k == key) {
            undo.old.push((key.to_string(), self.kvs.get(key).cloned()));
        }
    }

    fn put(
        &mut self,
        key: &str,
        value: &str,
        lease: i64,
        rev: i64,
        undo: &mut Undo,
        events: &mut Vec<WatchEvent>,
    ) {
        self.remember(key, undo);
        let prev = self.kvs.get(key).cloned();
        let kv = KeyValue {
            key: key.to_string(),
            value: value.to_string(),
            mod_revision: rev,
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        if let Some(p) = &prev {
            self.kv_hash ^= hash_kv(p);
        }
        self.kv_hash ^= hash_kv(&kv);
        self.kvs.insert(key.to_string(), kv.clone());
        events.push(WatchEvent {
            kind: EventKind::Put,
            kv,
            prev_kv: prev,
        });
    }

    fn delete(
        &mut self,
        key: &str,
        rev: i64,
        undo: &mut Undo,
        events: &mut Vec<WatchEvent>,
    ) -> i64 {
        if !self.kvs.contains_key(key) {
            return 0;
        }
        self.remember(key, undo);
        let prev = self.kvs.remove(key).expect("checked above");
        self.kv_hash ^= hash_kv(&prev);
        events.push(WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_string(),
                value: String::new(),
                mod_revision: rev,
                create_revision: 0,
                version: 0,
                lease: 0,
            },
            prev_kv: Some(prev),
        });
        1
    }

    fn compare(&self, c: &Compare) -> bool {
        let kv = self.kvs.get(&c.key);
        let ord = match (&c.target, kv) {
            // etcd: a value compare on a missing key always fails.
            (CmpTarget::Value(_), None) => return false,
            (CmpTarget::Value(v), Some(kv)) => kv.value.as_str().cmp(v.as_str()),
            (CmpTarget::ModRevision(r), kv) => kv.map_or(0, |k| k.mod_revision).cmp(r),
            (CmpTarget::CreateRevision(r), kv) => kv.map_or(0, |k| k.create_revision).cmp(r),
            (CmpTarget::Version(r), kv) => kv.map_or(0, |k| k.version).cmp(r),
            (CmpTarget::Lease(r), kv) => kv.map_or(0, |k| k.lease).cmp(r),
        };
        match c.op {
            CmpOp::Equal => ord.is_eq(),
            CmpOp::NotEqual => ord.is_ne(),
            CmpOp::Less => ord.is_lt(),
            CmpOp::Greater => ord.is_gt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Request {
        Request::Put {
            key: k.into(),
            value: v.into(),
            lease: 0,
        }
    }

    #[test]
    fn revisions_versions_and_undo() {
        let mut s = KvState::new(1);
        let empty = s.clone();
        let fp0 = s.fingerprint();
        let (a, u1) = s.apply(&put("k", "a")).unwrap();
        assert_eq!(a.revision, 2);
        let (b, _) = s.apply(&put("k", "b")).unwrap();
        assert_eq!(b.revision, 3);
        let kv = s.get("k").unwrap();
        assert_eq!((kv.mod_revision, kv.create_revision, kv.version), (3, 2, 2));
        // Deleting a missing key changes nothing.
        let (d, _) = s.apply(&Request::Delete { key: "x".into() }).unwrap();
        assert_eq!(d.revision, 3);
        assert!(d.events.is_empty());
        // CAS on mod_revision.
        let cas = Request::Txn {
            compares: vec![Compare {
                key: "k".into(),
                op: CmpOp::Equal,
                target: CmpTarget::ModRevision(3),
            }],
            success: vec![TxnOp::Put {
                key: "k".into(),
                value: "c".into(),
                lease: 0,
            }],
            failure: vec![TxnOp::Get { key: "k".into() }],
        };
        let (c, cu) = s.apply(&cas).unwrap();
        assert_eq!(c.revision, 4);
        assert!(matches!(
            c.result,
            OpResult::Txn {
                succeeded: true,
                ..
            }
        ));
        let fp = s.fingerprint();
        s.undo(cu);
        let (c2, _) = s.apply(&cas).unwrap();
        assert_eq!(c2, c);
        assert_eq!(s.fingerprint(), fp);
        let mut t = KvState::new(1);
        let (_, u) = t.apply(&put("k", "a")).unwrap();
        t.undo(u);
        assert_eq!(t, empty);
        assert_eq!(t.fingerprint(), fp0);
        drop(u1);
    }

    #[test]
    fn expiry_deletes_the_lease_keys_and_kills_the_lease() {
        let mut s = KvState::new(1);
        let leased = |k: &str, l| Request::Put {
            key: k.into(),
            value: "v".into(),
            lease: l,
        };
        s.apply(&leased("a", 5)).unwrap(); // rev 2
        s.apply(&leased("b", 5)).unwrap(); // rev 3
        s.apply(&leased("c", 0)).unwrap(); // rev 4
        let before = (s.clone(), s.fingerprint());
        let (a, u) = s.apply(&Request::LeaseExpire { id: 5 }).unwrap();
        assert_eq!(a.revision, 5);
        assert_eq!(a.events.len(), 2);
        assert!(s.get("a").is_none() && s.get("c").is_some());
        // Gone: no second expiry, no revoke, no put with it.
        assert!(s.apply(&Request::LeaseExpire { id: 5 }).is_none());
        assert!(s.apply(&Request::LeaseRevoke { id: 5 }).is_none());
        assert!(s.apply(&leased("d", 5)).is_none());
        assert_eq!(s.revision(), 5);
        s.undo(u);
        assert_eq!((s.clone(), s.fingerprint()), before);
        // A lease without keys dies without a revision.
        let (a, _) = s.apply(&Request::LeaseExpire { id: 6 }).unwrap();
        assert_eq!((a.revision, a.events.len()), (4, 0));
        assert!(s.lease_gone(6));
        assert_ne!(s.fingerprint(), before.1);
    }
}
