//! The seeded operation generator.
//!
//! Everything it produces depends only on the seed and on the *reference's*
//! (etcd's) responses (current revision, compacted revision, the live keys
//! peeked before a txn), so a seed replays the same operation sequence.

use std::collections::BTreeMap;

use keel_storage::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_storage::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_storage::proto::etcdserverpb::request_op::Request;
use keel_storage::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, HashKvRequest, LeaseGrantRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_storage::proto::mvccpb::KeyValue;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// The key space: a few shared prefixes so ranges, prefixes and deletes collide.
pub const KEYS: &[&str] = &[
    "a", "a/1", "a/2", "a/3", "a/4", "a/5", "a/b/1", "a/b/2", "a/b/3", "a/b/c", "a0", "b/1", "b/2",
    "b/3", "b/4", "b/5", "b/6", "c", "c/1", "c/2", "c0", "d/x/1", "d/x/2", "d/y", "e",
];

/// Prefixes used for prefix ranges/deletes/compares.
pub const PREFIXES: &[&str] = &["a", "a/", "a/b/", "b/", "c", "c/", "d/", "d/x/", "e"];

/// Lease IDs the generator grants explicitly (so they are the same on both servers).
pub const LEASE_IDS: &[i64] = &[0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107];

const VALUES: &[&str] = &["v0", "v1", "v2", "x", "y"];

/// One operation applied to both servers.
#[derive(Clone, Debug)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseTtl(LeaseTimeToLiveRequest),
    LeaseLeases,
    HashKv(HashKvRequest),
    /// One LeaseKeepAlive request on a fresh stream; compares ID and TTL.
    LeaseKeepAlive(i64),
    /// Not generated: a full read of the key space (`"\0".."\0"`) and the lease
    /// list, used to detect that the two stores' states diverged.
    StateCheck,
}

impl Op {
    /// Short name used in mismatch signatures.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Range(_) => "range",
            Op::Put(_) => "put",
            Op::Delete(_) => "delete",
            Op::Txn(_) => "txn",
            Op::Compact(_) => "compact",
            Op::LeaseGrant(_) => "lease_grant",
            Op::LeaseRevoke(_) => "lease_revoke",
            Op::LeaseTtl(_) => "lease_ttl",
            Op::LeaseLeases => "lease_leases",
            Op::HashKv(_) => "hash_kv",
            Op::LeaseKeepAlive(_) => "lease_keep_alive",
            Op::StateCheck => "state_check",
        }
    }

    /// True if the op may change the store (so a mismatch may mean the states diverged).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Put(_)
                | Op::Delete(_)
                | Op::Txn(_)
                | Op::Compact(_)
                | Op::LeaseGrant(_)
                | Op::LeaseRevoke(_)
        )
    }
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The smallest key greater than every key with this prefix (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Put/delete intervals already used in one txn branch, so generated txns are
/// valid unless a duplicate is injected on purpose. Conservative (it forbids
/// some combinations etcd would accept), which is fine.
#[derive(Clone, Default)]
struct Intervals {
    puts: Vec<Vec<u8>>,
    dels: Vec<(Vec<u8>, Vec<u8>)>,
}

fn covers((k, end): &(Vec<u8>, Vec<u8>), key: &[u8]) -> bool {
    if end.is_empty() {
        return k.as_slice() == key;
    }
    if end.as_slice() == [0] {
        return key >= k.as_slice();
    }
    key >= k.as_slice() && key < end.as_slice()
}

impl Intervals {
    fn put_ok(&self, key: &[u8]) -> bool {
        !self.puts.iter().any(|p| p.as_slice() == key) && !self.dels.iter().any(|d| covers(d, key))
    }
    fn del_ok(&self, d: &(Vec<u8>, Vec<u8>)) -> bool {
        !self.puts.iter().any(|p| covers(d, p))
    }
    fn absorb(&mut self, other: &Intervals) {
        for p in &other.puts {
            if !self.puts.contains(p) {
                self.puts.push(p.clone());
            }
        }
        for d in &other.dels {
            self.dels.push(d.clone());
        }
    }
}

/// The generator's view of the reference server.
pub struct Gen {
    rng: StdRng,
    /// Current revision (etcd's latest header revision).
    pub cur_rev: i64,
    /// Last revision etcd accepted a compaction at (0 = none).
    pub compact_rev: i64,
    /// The live keys as of the last peek (filled before generating a txn).
    pub live: BTreeMap<Vec<u8>, KeyValue>,
    /// Op index at which the next compaction is generated.
    pub next_compact: usize,
    /// Leases etcd granted and did not revoke (txns mostly attach these).
    pub leases: std::collections::BTreeSet<i64>,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        let mut rng = StdRng::seed_from_u64(seed);
        let next_compact = rng.random_range(250..450);
        Gen {
            rng,
            cur_rev: 1,
            compact_rev: 0,
            live: BTreeMap::new(),
            next_compact,
            leases: Default::default(),
        }
    }

    /// Starts over on fresh stores (revision 1, nothing compacted) at op `i`.
    pub fn reset(&mut self, i: usize) {
        self.cur_rev = 1;
        self.compact_rev = 0;
        self.live.clear();
        self.leases.clear();
        self.next_compact = i + self.rng.random_range(250..450);
    }

    /// Picks the kind of op `i` (for a txn the driver first peeks etcd's live
    /// keys into [`Gen::live`]). Must be followed by [`Gen::next_op`].
    pub fn choose_kind(&mut self, i: usize) -> Kind {
        if i >= self.next_compact {
            self.next_compact = i + self.rng.random_range(150..400);
            return Kind::Compact;
        }
        let x = self.rng.random_range(0..1000);
        match x {
            0..250 => Kind::Put,
            250..530 => Kind::Range,
            530..610 => Kind::Delete,
            610..850 => Kind::Txn,
            850..885 => Kind::LeaseGrant,
            885..910 => Kind::LeaseRevoke,
            910..945 => Kind::LeaseTtl,
            945..955 => Kind::LeaseLeases,
            955..962 => Kind::HashKv,
            962..977 => Kind::LeaseKeepAlive,
            _ => Kind::Put,
        }
    }

    pub fn next_op(&mut self, kind: Kind) -> Op {
        match kind {
            Kind::Put => Op::Put(self.put(true)),
            Kind::Range => Op::Range(self.range(true)),
            Kind::Delete => Op::Delete(self.delete(true)),
            Kind::Txn => Op::Txn(self.txn()),
            Kind::Compact => Op::Compact(self.compact()),
            Kind::LeaseGrant => Op::LeaseGrant(LeaseGrantRequest {
                ttl: *[600i64, 900, 3600].choose(&mut self.rng).unwrap(),
                id: self.lease_id(),
            }),
            Kind::LeaseRevoke => Op::LeaseRevoke(LeaseRevokeRequest {
                id: self.lease_id(),
            }),
            Kind::LeaseTtl => Op::LeaseTtl(LeaseTimeToLiveRequest {
                id: self.lease_id(),
                keys: self.rng.random_bool(0.7),
            }),
            Kind::LeaseLeases => Op::LeaseLeases,
            Kind::HashKv => Op::HashKv(HashKvRequest {
                revision: if self.rng.random_bool(0.5) {
                    0
                } else {
                    self.revision(true)
                },
            }),
            Kind::LeaseKeepAlive => Op::LeaseKeepAlive(self.lease_id()),
        }
    }

    fn lease_id(&mut self) -> i64 {
        *LEASE_IDS.choose(&mut self.rng).unwrap()
    }

    fn key(&mut self) -> Vec<u8> {
        // A few binary keys (not UTF-8, a NUL inside, 0xff whose prefix end is "\0").
        if self.rng.random_bool(0.03) {
            return [&b"\xff"[..], b"\xff\xfe", b"a\x00", b"b/\xff"]
                .choose(&mut self.rng)
                .unwrap()
                .to_vec();
        }
        b(KEYS.choose(&mut self.rng).unwrap())
    }

    fn value(&mut self) -> Vec<u8> {
        let x = self.rng.random_range(0..100);
        match x {
            0..50 => b(VALUES.choose(&mut self.rng).unwrap()),
            50..53 => Vec::new(),
            53..55 => vec![b'z'; self.rng.random_range(500..2000)],
            _ => format!("v{}", self.rng.random_range(0..1_000_000)).into_bytes(),
        }
    }

    /// A (key, range_end) pair. `allow_invalid`: sometimes an empty key.
    fn interval(&mut self, allow_invalid: bool) -> (Vec<u8>, Vec<u8>) {
        let x = self.rng.random_range(0..1000);
        match x {
            0..350 => (self.key(), Vec::new()),
            350..650 => {
                let p = if self.rng.random_bool(0.03) {
                    vec![0xff]
                } else {
                    b(PREFIXES.choose(&mut self.rng).unwrap())
                };
                let e = prefix_end(&p);
                (p, e)
            }
            // A random pair; unordered about a quarter of the time (an empty range).
            650..850 => {
                let (mut k1, mut k2) = (self.key(), self.key());
                if k1 > k2 && self.rng.random_bool(0.75) {
                    std::mem::swap(&mut k1, &mut k2);
                }
                (k1, k2)
            }
            850..950 => (self.key(), vec![0]),
            950..995 => (vec![0], vec![0]),
            _ if allow_invalid => (Vec::new(), Vec::new()),
            _ => (self.key(), Vec::new()),
        }
    }

    fn put(&mut self, allow_invalid: bool) -> PutRequest {
        let key = if allow_invalid && self.rng.random_bool(0.003) {
            Vec::new()
        } else {
            self.key()
        };
        self.put_key(key, allow_invalid)
    }

    fn put_key(&mut self, key: Vec<u8>, allow_invalid: bool) -> PutRequest {
        let mut req = PutRequest {
            key: key.into(),
            value: self.value().into(),
            lease: if !self.rng.random_bool(0.2) {
                0
            } else if allow_invalid || self.rng.random_bool(0.05) {
                self.lease_id()
            } else {
                let live: Vec<i64> = self.leases.iter().copied().collect();
                live.choose(&mut self.rng).copied().unwrap_or(0)
            },
            prev_kv: self.rng.random_bool(0.4),
            ignore_value: false,
            ignore_lease: false,
        };
        // In txns (where one failing op fails the whole txn), ignore_value
        // (etcd: "key not found" on a missing key) mostly only on live keys.
        let live = self.live.contains_key(req.key.as_ref());
        if self.rng.random_bool(0.08) && (allow_invalid || live || self.rng.random_bool(0.1)) {
            req.ignore_value = true;
            // etcd: "value is provided" if both are set.
            if !(allow_invalid && self.rng.random_bool(0.1)) {
                req.value = Vec::new().into();
            }
        }
        if self.rng.random_bool(0.08) {
            req.ignore_lease = true;
            // etcd: "lease is provided" if both are set.
            if !(allow_invalid && self.rng.random_bool(0.1)) {
                req.lease = 0;
            }
        }
        req
    }

    fn delete(&mut self, allow_invalid: bool) -> DeleteRangeRequest {
        let (key, range_end) = loop {
            let iv = self.interval(allow_invalid);
            // Wiping the whole key space is rare on purpose.
            if iv.0.as_slice() == [0] && iv.1.as_slice() == [0] && !self.rng.random_bool(0.2) {
                continue;
            }
            break iv;
        };
        DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: self.rng.random_bool(0.5),
        }
    }

    fn revision(&mut self, allow_invalid: bool) -> i64 {
        let x = self.rng.random_range(0..100);
        // In txns, compacted/future revisions (which fail the whole txn) are rarer.
        let x = if !allow_invalid && x >= 90 && self.rng.random_bool(0.8) {
            0
        } else {
            x
        };
        match x {
            0..65 => 0,
            65..88 => self
                .rng
                .random_range(self.compact_rev.max(1)..=self.cur_rev),
            88..90 => self.cur_rev,
            90..95 if self.compact_rev > 1 => self.rng.random_range(1..self.compact_rev),
            90..95 => self.compact_rev,
            95..98 => self.cur_rev + self.rng.random_range(1..4),
            _ => self.rng.random_range(-2..=0),
        }
    }

    fn range(&mut self, allow_invalid: bool) -> RangeRequest {
        let (key, range_end) = self.interval(allow_invalid);
        let mut req = RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            revision: self.revision(allow_invalid),
            ..Default::default()
        };
        if self.rng.random_bool(0.3) {
            req.limit = *[1i64, 1, 2, 3, 5, 10, -1].choose(&mut self.rng).unwrap();
        }
        if self.rng.random_bool(0.35) {
            req.set_sort_order(
                *[SortOrder::None, SortOrder::Ascend, SortOrder::Descend]
                    .choose(&mut self.rng)
                    .unwrap(),
            );
            req.set_sort_target(
                *[
                    SortTarget::Key,
                    SortTarget::Version,
                    SortTarget::Create,
                    SortTarget::Mod,
                    SortTarget::Value,
                ]
                .choose(&mut self.rng)
                .unwrap(),
            );
        }
        // keys_only + sort by VALUE is not generated: the normaliser could not
        // see the (stripped) values to resolve sort ties.
        if self.rng.random_bool(0.15) && req.sort_target() != SortTarget::Value {
            req.keys_only = true;
        }
        if self.rng.random_bool(0.1) {
            req.count_only = true;
        }
        if self.rng.random_bool(0.25) {
            let hi = self.cur_rev.max(2);
            let mut r = || self.rng.random_range(0..=hi);
            match r() % 4 {
                0 => req.min_mod_revision = r(),
                1 => req.max_mod_revision = r(),
                2 => req.min_create_revision = r(),
                _ => req.max_create_revision = r(),
            }
            if self.rng.random_bool(0.3) {
                req.max_mod_revision = self.rng.random_range(0..=hi);
                req.min_create_revision = self.rng.random_range(0..=hi);
            }
        }
        if self.rng.random_bool(0.1) {
            req.serializable = true;
        }
        req
    }

    fn compact(&mut self) -> CompactionRequest {
        let x = self.rng.random_range(0..100);
        let revision = match x {
            0..12 if self.compact_rev > 0 => self.rng.random_range(1..=self.compact_rev),
            12..17 => self.cur_rev + self.rng.random_range(1..3),
            _ if self.cur_rev > self.compact_rev + 1 => {
                self.rng.random_range(self.compact_rev + 1..=self.cur_rev)
            }
            _ => self.cur_rev,
        };
        CompactionRequest {
            revision,
            physical: self.rng.random_bool(0.5),
        }
    }

    fn compare(&mut self) -> Compare {
        let (key, range_end) = if self.rng.random_bool(0.005) {
            (Vec::new(), Vec::new())
        } else if self.rng.random_bool(0.02) {
            (vec![0], vec![0])
        } else if self.rng.random_bool(0.8) {
            (self.key(), Vec::new())
        } else if self.rng.random_bool(0.8) {
            let p = b(PREFIXES.choose(&mut self.rng).unwrap());
            let e = prefix_end(&p);
            (p, e)
        } else {
            (self.key(), vec![0])
        };
        let actual = self.live.get(&key).cloned();
        let target = *[
            CompareTarget::Version,
            CompareTarget::Create,
            CompareTarget::Mod,
            CompareTarget::Value,
            CompareTarget::Lease,
        ]
        .choose(&mut self.rng)
        .unwrap();
        let result = *[
            CompareResult::Equal,
            CompareResult::Equal,
            CompareResult::NotEqual,
            CompareResult::Greater,
            CompareResult::Less,
        ]
        .choose(&mut self.rng)
        .unwrap();
        let use_actual = actual.is_some() && self.rng.random_bool(0.6);
        let a = actual.unwrap_or_default();
        let nudge = self.rng.random_range(-1..=1);
        let hi = self.cur_rev.max(2);
        let tu = match target {
            CompareTarget::Version => TargetUnion::Version(if use_actual {
                a.version + nudge
            } else {
                self.rng.random_range(0..4)
            }),
            CompareTarget::Create => TargetUnion::CreateRevision(if use_actual {
                a.create_revision + nudge
            } else {
                self.rng.random_range(0..=hi)
            }),
            CompareTarget::Mod => TargetUnion::ModRevision(if use_actual {
                a.mod_revision + nudge
            } else {
                self.rng.random_range(0..=hi)
            }),
            CompareTarget::Value => TargetUnion::Value(
                if use_actual {
                    a.value.to_vec()
                } else {
                    self.value()
                }
                .into(),
            ),
            CompareTarget::Lease => TargetUnion::Lease(if use_actual {
                a.lease
            } else if self.rng.random_bool(0.5) {
                0
            } else {
                self.lease_id()
            }),
        };
        let mut c = Compare {
            key: key.into(),
            range_end: range_end.into(),
            target_union: Some(tu),
            ..Default::default()
        };
        c.set_target(target);
        c.set_result(result);
        c
    }

    fn txn(&mut self) -> TxnRequest {
        if self.rng.random_bool(0.002) {
            // 129 compares, or a nested txn with 129 ops (limit 128).
            let mut t = TxnRequest::default();
            if self.rng.random_bool(0.5) {
                t.compare = (0..129).map(|_| self.compare()).collect();
            } else {
                let inner = (0..129)
                    .map(|_| RequestOp {
                        request: Some(Request::RequestRange(RangeRequest {
                            key: self.key().into(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                t.success.push(RequestOp {
                    request: Some(Request::RequestTxn(TxnRequest {
                        compare: Vec::new(),
                        success: inner,
                        failure: Vec::new(),
                    })),
                });
            }
            return t;
        }
        if self.rng.random_bool(0.002) {
            // More ops than etcd's default --max-txn-ops (128).
            let ops = (0..129)
                .map(|_| RequestOp {
                    request: Some(Request::RequestRange(RangeRequest {
                        key: self.key().into(),
                        ..Default::default()
                    })),
                })
                .collect();
            return TxnRequest {
                compare: Vec::new(),
                success: ops,
                failure: Vec::new(),
            };
        }
        let mut t = self.txn_at(0, &Intervals::default()).0;
        if self.rng.random_bool(0.07) {
            self.inject_duplicate(&mut t);
        }
        t
    }

    /// A txn whose branches respect `outer`; returns it and the puts/deletes it adds.
    fn txn_at(&mut self, depth: usize, outer: &Intervals) -> (TxnRequest, Intervals) {
        let ncmp = *[0usize, 1, 1, 1, 2, 2, 3].choose(&mut self.rng).unwrap();
        let compare = (0..ncmp).map(|_| self.compare()).collect();
        let nsucc = self.rng.random_range(0..=4);
        let nfail = self.rng.random_range(0..=3);
        let (success, s_iv) = self.branch(depth, nsucc, outer);
        let (failure, f_iv) = self.branch(depth, nfail, outer);
        let mut added = s_iv;
        added.absorb(&f_iv);
        (
            TxnRequest {
                compare,
                success,
                failure,
            },
            added,
        )
    }

    fn branch(&mut self, depth: usize, n: usize, outer: &Intervals) -> (Vec<RequestOp>, Intervals) {
        let mut iv = outer.clone();
        let mut added = Intervals::default();
        let mut ops = Vec::new();
        for _ in 0..n {
            let x = self.rng.random_range(0..100);
            let req = match x {
                0..40 => {
                    let mut found = None;
                    for _ in 0..10 {
                        let k = self.key();
                        if iv.put_ok(&k) {
                            found = Some(k);
                            break;
                        }
                    }
                    match found {
                        Some(k) => {
                            iv.puts.push(k.clone());
                            added.puts.push(k.clone());
                            Request::RequestPut(self.put_key(k, false))
                        }
                        None => Request::RequestRange(self.range(false)),
                    }
                }
                40..60 => {
                    let mut found = None;
                    for _ in 0..10 {
                        let d = self.delete(false);
                        let pair = (d.key.to_vec(), d.range_end.to_vec());
                        if iv.del_ok(&pair) {
                            found = Some((d, pair));
                            break;
                        }
                    }
                    match found {
                        Some((d, pair)) => {
                            iv.dels.push(pair.clone());
                            added.dels.push(pair);
                            Request::RequestDeleteRange(d)
                        }
                        None => Request::RequestRange(self.range(false)),
                    }
                }
                _ if x < 85 || depth >= 2 => Request::RequestRange(self.range(false)),
                _ => {
                    let (t, t_iv) = self.txn_at(depth + 1, &iv);
                    iv.absorb(&t_iv);
                    added.absorb(&t_iv);
                    Request::RequestTxn(t)
                }
            };
            ops.push(RequestOp { request: Some(req) });
        }
        (ops, added)
    }

    /// Makes `t` invalid on purpose (etcd: "duplicate key given in txn request"),
    /// or in one case valid despite looking like a duplicate.
    fn inject_duplicate(&mut self, t: &mut TxnRequest) {
        let branch = if self.rng.random_bool(0.5) {
            &mut t.success
        } else {
            &mut t.failure
        };
        let key = self.key();
        let x = self.rng.random_range(0..5);
        let put = |k: &[u8]| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.to_vec().into(),
                value: b"dup".to_vec().into(),
                ..Default::default()
            })),
        };
        let del = |k: &[u8], e: Vec<u8>| RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.to_vec().into(),
                range_end: e.into(),
                prev_kv: false,
            })),
        };
        let nested = |s: Vec<RequestOp>, f: Vec<RequestOp>| RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: Vec::new(),
                success: s,
                failure: f,
            })),
        };
        match x {
            // Two puts of one key at the same level: invalid.
            0 => {
                branch.push(put(&key));
                branch.push(put(&key));
            }
            // A put and a delete covering it at the same level: invalid.
            1 => {
                let p = b(PREFIXES.choose(&mut self.rng).unwrap());
                branch.push(del(&p, prefix_end(&p)));
                let mut k = p.clone();
                k.extend_from_slice(b"1");
                branch.push(put(&k));
            }
            // A put in a nested txn and the same put outside it: invalid.
            2 => {
                branch.push(nested(vec![put(&key)], Vec::new()));
                branch.push(put(&key));
            }
            // An outer delete covering a nested put: invalid.
            3 => {
                branch.push(del(&key, Vec::new()));
                branch.push(nested(Vec::new(), vec![put(&key)]));
            }
            // The same put in a nested txn's then and else branches: valid.
            _ => {
                branch.push(nested(vec![put(&key)], vec![put(&key)]));
            }
        }
    }
}

/// What [`Gen::choose_kind`] picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Put,
    Range,
    Delete,
    Txn,
    Compact,
    LeaseGrant,
    LeaseRevoke,
    LeaseTtl,
    LeaseLeases,
    HashKv,
    LeaseKeepAlive,
}
