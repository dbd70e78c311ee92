//! Lease expiry as ops the checkers can place.
//!
//! An expiry deletes keys at a revision no client op caused: the primary
//! proposes a revoke once the lease's TTL ran out (one revision per lease,
//! every attached key deleted at once). The checkers model it as one
//! synthetic op per granted lease, [`Request::LeaseExpire`], of unknown
//! outcome, whose window is derived from the history:
//!
//! - **call**: the grant's call time + the requested TTL − [`EXPIRY_SLACK_NS`].
//!   A lease expires no earlier than TTL after the primary applied the grant
//!   (a granted TTL is never below the requested one; a new primary, a
//!   restart or a checkpoint only push the expiry later). Keep-alives are
//!   deliberately not used to move it: one answered by a deposed leader does
//!   not extend the lease on the new one.
//! - **deadline** (the op's return): when the lease is known gone, so the
//!   expiry certainly happened: the return of a `LeaseTimeToLive` answering
//!   -1 (unless a revoke of the lease was called before it: then the revoke
//!   may be what removed it), or the arrival of a watch event deleting a key
//!   only this expiry can delete. Without one, the expiry may never have
//!   happened (as an unknown write that never returned).
//! - **pin**: the revision of such a watch event: the expiry happened there.
//!
//! No expiry is made for a lease with an acknowledged revoke (it was alive at
//! the revoke, and gone after).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::history::{EventKind, History, Op, OpResult, Request, Response, WatchRecord};

/// Timing slack subtracted from a lease's earliest expiry (ns).
pub const EXPIRY_SLACK_NS: u64 = 100_000_000;

/// Which keys hang on which lease, from the ops that did not fail.
#[derive(Clone, Debug, Default)]
pub struct LeaseKeys<'a> {
    /// Lease → every key put with it.
    pub keys: BTreeMap<i64, BTreeSet<&'a str>>,
    /// Key → the lease whose expiry is the only thing that can delete it:
    /// every put of the key is with that lease, no op deletes the key, and
    /// no op revokes the lease. A delete event of such a key is the expiry.
    pub exclusive: HashMap<&'a str, i64>,
}

impl<'a> LeaseKeys<'a> {
    /// Collects the leases' keys of `h`.
    pub fn of(h: &'a History) -> LeaseKeys<'a> {
        let mut keys: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
        let mut owners: HashMap<&str, BTreeSet<i64>> = HashMap::new();
        let mut deleted: HashSet<&str> = HashSet::new();
        let mut revoked: HashSet<i64> = HashSet::new();
        for o in h.ops.iter().filter(|o| !o.is_fail()) {
            for (k, _, l) in o.req.puts() {
                owners.entry(k).or_default().insert(l);
                if l != 0 {
                    keys.entry(l).or_default().insert(k);
                }
            }
            deleted.extend(o.req.deletes());
            if let Request::LeaseRevoke { id } = o.req {
                revoked.insert(id);
            }
        }
        let exclusive = owners
            .into_iter()
            .filter_map(|(k, ls)| match ls.iter().collect::<Vec<_>>()[..] {
                [&l] if l != 0 && !deleted.contains(k) && !revoked.contains(&l) => Some((k, l)),
                _ => None,
            })
            .collect();
        LeaseKeys { keys, exclusive }
    }

    /// Expiries seen by watchers: lease → (revision of the delete event of
    /// one of its exclusive keys, earliest arrival of such an event).
    pub fn seen_expiries(&self, h: &History) -> BTreeMap<i64, (i64, u64)> {
        let mut seen: BTreeMap<i64, (i64, u64)> = BTreeMap::new();
        for w in &h.watches {
            for r in &w.records {
                let WatchRecord::Events {
                    time_ns, events, ..
                } = r
                else {
                    continue;
                };
                for e in events.iter().filter(|e| e.kind == EventKind::Delete) {
                    let Some(&l) = self.exclusive.get(e.kv.key.as_str()) else {
                        continue;
                    };
                    let s = seen.entry(l).or_insert((e.kv.mod_revision, *time_ns));
                    if s.0 == e.kv.mod_revision {
                        s.1 = s.1.min(*time_ns);
                    }
                }
            }
        }
        seen
    }
}

/// One lease's possible expiry (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseExpiry {
    /// The lease.
    pub lease: i64,
    /// The earliest time it may expire (grant call + TTL − slack).
    pub earliest_ns: u64,
    /// When it certainly had expired, if known.
    pub deadline_ns: Option<u64>,
    /// The revision of its deletes, if a watch saw them.
    pub pin: Option<i64>,
    /// The op whose answer proves it gone (a `LeaseTimeToLive` of -1) if
    /// that is where the deadline comes from.
    pub proof: Option<u64>,
}

impl LeaseExpiry {
    /// True if it was known gone before it could expire: an anomaly (the
    /// lease was cut short), or a revoke nobody recorded.
    pub fn early(&self) -> bool {
        self.deadline_ns.is_some_and(|d| d < self.earliest_ns)
    }

    /// The synthetic op: id `id`, unknown outcome, called at the earliest
    /// expiry (or the deadline, if earlier), returning at the deadline.
    pub fn op(&self, id: u64) -> Op {
        Op {
            id,
            client: u32::MAX,
            member: None,
            call_ns: self
                .deadline_ns
                .map_or(self.earliest_ns, |d| d.min(self.earliest_ns)),
            return_ns: self.deadline_ns,
            req: Request::LeaseExpire { id: self.lease },
            resp: Response::Unknown {
                error: "synthetic: the lease may expire".into(),
            },
        }
    }
}

/// The possible expiry of every lease `h` granted and did not revoke for
/// sure, in lease order; watch logs are used for deadlines and pins if
/// `use_watches`.
pub fn lease_expiries(h: &History, use_watches: bool) -> Vec<LeaseExpiry> {
    let mut grants: BTreeMap<i64, u64> = BTreeMap::new(); // lease → earliest expiry
    let mut revoked_ok: HashSet<i64> = HashSet::new();
    let mut revoke_calls: HashMap<i64, u64> = HashMap::new(); // earliest not-failed revoke
    for o in h.ops.iter().filter(|o| !o.is_fail()) {
        match (&o.req, &o.resp) {
            (
                Request::LeaseGrant { ttl, .. },
                Response::Ok {
                    result: OpResult::LeaseGrant { id },
                    ..
                },
            ) => {
                let at = (o.call_ns + (*ttl).max(0) as u64 * 1_000_000_000)
                    .saturating_sub(EXPIRY_SLACK_NS);
                let e = grants.entry(*id).or_insert(at);
                *e = (*e).min(at);
            }
            (Request::LeaseRevoke { id }, _) => {
                if o.ok_revision().is_some() {
                    revoked_ok.insert(*id);
                }
                let e = revoke_calls.entry(*id).or_insert(o.call_ns);
                *e = (*e).min(o.call_ns);
            }
            _ => {}
        }
    }
    // Lease → (earliest return of a TTL of -1 no revoke can explain, op).
    let mut gone: HashMap<i64, (u64, u64)> = HashMap::new();
    for o in &h.ops {
        let (
            Request::LeaseTimeToLive { id },
            Some(ret),
            Response::Ok {
                result: OpResult::LeaseTimeToLive { ttl: -1 },
                ..
            },
        ) = (&o.req, o.return_ns, &o.resp)
        else {
            continue;
        };
        if revoke_calls.get(id).is_some_and(|&c| c < ret) {
            continue;
        }
        let e = gone.entry(*id).or_insert((ret, o.id));
        if ret < e.0 {
            *e = (ret, o.id);
        }
    }
    let keys = LeaseKeys::of(h);
    let seen = if use_watches {
        keys.seen_expiries(h)
    } else {
        BTreeMap::new()
    };
    grants
        .into_iter()
        .filter(|(l, _)| !revoked_ok.contains(l))
        .map(|(lease, earliest_ns)| {
            let by_ttl = gone.get(&lease).copied();
            let by_watch = seen.get(&lease).copied();
            let deadline_ns = match (by_ttl, by_watch) {
                (Some((t, _)), Some((_, w))) => Some(t.min(w)),
                (t, w) => t.map(|t| t.0).or(w.map(|w| w.1)),
            };
            LeaseExpiry {
                lease,
                earliest_ns,
                deadline_ns,
                pin: by_watch.map(|w| w.0),
                proof: by_ttl.filter(|t| Some(t.0) == deadline_ns).map(|t| t.1),
            }
        })
        .collect()
}
