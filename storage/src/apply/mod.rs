//! The state machine: applies log entries to the MVCC store, the lessor and
//! the alarms, with etcd's request semantics (`etcdserver/apply.go`), and
//! serves reads.
//!
//! - [`validate`]: stateless checks run before a request is proposed.
//! - [`txn`]: compare evaluation and nested transactions.
//!
//! Applying is deterministic given the entries (time only feeds lease
//! expiry, which is the primary's concern), so every member that applies the
//! same log holds the same data.

pub mod txn;
pub mod validate;

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;

use crate::error::{Result, StoreError};
use crate::lease::{Lessor, MAX_LEASE_TTL};
use crate::mvcc::{KeyRange, KvStore, MvccError, RangeOptions, RangeResult, WriteTxn};
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, range_request::SortOrder, range_request::SortTarget, AlarmMember,
    AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, LeaseCheckpointRequest, LeaseGrantRequest,
    LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::keelpb::{internal_request::Request, InternalRequest};
use crate::proto::mvccpb::{Event, KeyValue};

/// The result of applying one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// A put.
    Put(PutResponse),
    /// A delete.
    DeleteRange(DeleteRangeResponse),
    /// A transaction.
    Txn(TxnResponse),
    /// A compaction.
    Compaction(CompactionResponse),
    /// A lease grant.
    LeaseGrant(LeaseGrantResponse),
    /// A lease revoke.
    LeaseRevoke(LeaseRevokeResponse),
    /// A lease checkpoint (no client waits for it).
    LeaseCheckpoint,
    /// An alarm change or query.
    Alarm(AlarmResponse),
    /// An entry with no command (e.g. a leader's empty entry).
    Nothing,
}

/// What applying one entry produced: the client's answer and the watch
/// events (all of one revision, in order).
#[derive(Debug, Clone)]
pub struct ApplyOutput {
    /// The answer for the proposer.
    pub result: Result<Applied>,
    /// Events to publish to watchers; empty if nothing changed.
    pub events: Vec<Event>,
    /// The store's revision after the entry.
    pub rev: i64,
}

/// Tunables of the state machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--quota-backend-bytes`: writes beyond it raise the NOSPACE alarm.
    pub quota_bytes: u64,
    /// This member's ID (alarms are raised for it).
    pub member_id: u64,
}

/// The replicated state: KV store, leases, alarms, applied index.
#[derive(Debug, Clone)]
pub struct StateMachine {
    /// The MVCC store.
    pub kv: KvStore,
    /// The leases.
    pub lessor: Lessor,
    /// Raised alarms: (member, type).
    pub alarms: BTreeSet<(u64, i32)>,
    /// Index of the last applied log entry.
    pub applied_index: u64,
    /// Term of the last applied log entry.
    pub applied_term: u64,
    /// The cluster's members, by ID.
    pub members: std::collections::BTreeMap<u64, MemberInfo>,
    limits: Limits,
}

/// One cluster member as the replicated state knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberInfo {
    /// `--name` (empty until the member published it).
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs (empty until the member published them).
    pub client_urls: Vec<String>,
    /// A learner: receives the log, does not vote.
    pub learner: bool,
    /// Part of the Raft configuration (its membership change was applied,
    /// or it is an initial member); described but not yet added otherwise.
    pub in_conf: bool,
}

/// Read access shared by the store and a write transaction.
pub trait ReadView {
    /// Range over the view.
    fn range(&self, r: &KeyRange, o: RangeOptions) -> Result<RangeResult, MvccError>;
    /// The view's revision.
    fn rev(&self) -> i64;
    /// The compaction revision.
    fn first_rev(&self) -> i64;
}

impl ReadView for KvStore {
    fn range(&self, r: &KeyRange, o: RangeOptions) -> Result<RangeResult, MvccError> {
        KvStore::range(self, r, o)
    }
    fn rev(&self) -> i64 {
        self.current_rev()
    }
    fn first_rev(&self) -> i64 {
        self.compact_rev()
    }
}

impl ReadView for WriteTxn<'_> {
    fn range(&self, r: &KeyRange, o: RangeOptions) -> Result<RangeResult, MvccError> {
        WriteTxn::range(self, r, o)
    }
    fn rev(&self) -> i64 {
        self.read_rev()
    }
    fn first_rev(&self) -> i64 {
        self.store().compact_rev()
    }
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

/// A Range with etcd's semantics over any view (etcd's `applierV3backend.Range`).
pub fn range(view: &impl ReadView, r: &RangeRequest) -> Result<RangeResponse> {
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let mut limit = if sort_order != SortOrder::None || filtered {
        0
    } else {
        r.limit.max(0) as usize
    };
    if limit > 0 {
        limit += 1; // one more, to know whether there is `more`
    }
    let range = KeyRange::new(&r.key, &r.range_end);
    let mut rr = view.range(
        &range,
        RangeOptions {
            limit,
            rev: r.revision,
            count_only: r.count_only,
        },
    )?;
    if r.max_mod_revision != 0 {
        rr.kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        rr.kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        rr.kvs
            .retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        rr.kvs
            .retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let order = if sort_target != SortTarget::Key && sort_order == SortOrder::None {
        // The store returns keys ascending; another target sorts ascending
        // unless told otherwise.
        SortOrder::Ascend
    } else {
        sort_order
    };
    if order != SortOrder::None {
        let key = |kv: &KeyValue| -> (i64, Bytes) {
            match sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, Bytes::new()),
                SortTarget::Create => (kv.create_revision, Bytes::new()),
                SortTarget::Mod => (kv.mod_revision, Bytes::new()),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        rr.kvs.sort_by_key(key);
        if order == SortOrder::Descend {
            rr.kvs.reverse();
        }
    }
    let mut more = false;
    if r.limit > 0 && rr.kvs.len() > r.limit as usize {
        rr.kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut rr.kvs {
            kv.value = Bytes::new();
        }
    }
    Ok(RangeResponse {
        header: header(rr.rev),
        kvs: rr.kvs,
        more,
        count: rr.count,
    })
}

impl StateMachine {
    /// An empty state machine.
    pub fn new(limits: Limits, min_lease_ttl: i64) -> Self {
        StateMachine {
            kv: KvStore::new(),
            lessor: Lessor::new(min_lease_ttl),
            alarms: BTreeSet::new(),
            applied_index: 0,
            applied_term: 0,
            members: Default::default(),
            limits,
        }
    }

    /// Replaces the tunables (after a snapshot load).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The tunables.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Serves a read.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse> {
        range(&self.kv, r)
    }

    /// Serves a read-only txn without the log (all its ops are ranges).
    pub fn read_txn(&self, r: &TxnRequest) -> Result<TxnResponse> {
        txn::read_only_txn(&self.kv, r)
    }

    /// True if the NOSPACE alarm is raised.
    pub fn no_space(&self) -> bool {
        self.alarms
            .iter()
            .any(|(_, a)| *a == AlarmType::Nospace as i32)
    }

    /// Applies one committed entry at `index`/`term`.
    pub fn apply(
        &mut self,
        index: u64,
        term: u64,
        req: InternalRequest,
        now: Instant,
    ) -> ApplyOutput {
        self.applied_index = index;
        self.applied_term = term;
        let before = self.kv.current_rev();
        let mut events = Vec::new();
        let result = match req.request {
            None => Ok(Applied::Nothing),
            Some(Request::Put(p)) => self.put(p, &mut events).map(Applied::Put),
            Some(Request::DeleteRange(d)) => self.delete(d, &mut events).map(Applied::DeleteRange),
            Some(Request::Txn(t)) => self.txn(t, &mut events).map(Applied::Txn),
            Some(Request::Compaction(c)) => self.compact(c).map(Applied::Compaction),
            Some(Request::LeaseGrant(g)) => self.lease_grant(g, now).map(Applied::LeaseGrant),
            Some(Request::LeaseRevoke(r)) => {
                self.lease_revoke(r, &mut events).map(Applied::LeaseRevoke)
            }
            Some(Request::LeaseCheckpoint(c)) => {
                self.lease_checkpoint(c, now);
                Ok(Applied::LeaseCheckpoint)
            }
            Some(Request::Alarm(a)) => Ok(Applied::Alarm(self.alarm(a))),
            Some(Request::MemberAttrs(m)) => {
                let e = self.members.entry(m.id).or_default();
                if !m.name.is_empty() {
                    e.name = m.name;
                }
                if !m.client_ur_ls.is_empty() {
                    e.client_urls = m.client_ur_ls;
                }
                if !m.peer_ur_ls.is_empty() && !e.in_conf {
                    // A member about to be added: described, not yet in
                    // the configuration (its conf change does that).
                    e.peer_urls = m.peer_ur_ls;
                    e.learner = m.is_learner;
                }
                Ok(Applied::Nothing)
            }
        };
        let rev = self.kv.current_rev();
        debug_assert!(events.is_empty() || rev == before + 1);
        ApplyOutput {
            result,
            events,
            rev,
        }
    }

    fn check_quota(&mut self, cost: u64) -> Result<()> {
        if self.no_space() {
            return Err(StoreError::NoSpace);
        }
        if self.limits.quota_bytes > 0 && self.kv.size_bytes() + cost > self.limits.quota_bytes {
            self.alarms
                .insert((self.limits.member_id, AlarmType::Nospace as i32));
            return Err(StoreError::NoSpace);
        }
        Ok(())
    }

    fn put(&mut self, p: PutRequest, events: &mut Vec<Event>) -> Result<PutResponse> {
        self.check_quota((p.key.len() + p.value.len() + 64) as u64)?;
        let mut w = self.kv.write();
        let resp = txn::put(&mut w, &mut self.lessor, p)?;
        events.extend(w.end().events);
        Ok(resp)
    }

    fn delete(
        &mut self,
        d: DeleteRangeRequest,
        events: &mut Vec<Event>,
    ) -> Result<DeleteRangeResponse> {
        let mut w = self.kv.write();
        let resp = txn::delete_range(&mut w, &mut self.lessor, d)?;
        events.extend(w.end().events);
        Ok(resp)
    }

    fn txn(&mut self, t: TxnRequest, events: &mut Vec<Event>) -> Result<TxnResponse> {
        let writes = !txn::is_read_only(&t);
        if writes {
            self.check_quota(txn::put_cost(&t))?;
        }
        let mut w = self.kv.write();
        let resp = txn::apply_txn(&mut w, &mut self.lessor, &t, writes)?;
        events.extend(w.end().events);
        Ok(resp)
    }

    fn compact(&mut self, c: CompactionRequest) -> Result<CompactionResponse> {
        keel_raft::failpoint::crash_point("compact::before");
        self.kv.compact(c.revision)?;
        keel_raft::failpoint::crash_point("compact::after");
        Ok(CompactionResponse {
            header: header(self.kv.current_rev()),
        })
    }

    fn lease_grant(&mut self, g: LeaseGrantRequest, now: Instant) -> Result<LeaseGrantResponse> {
        if self.no_space() {
            return Err(StoreError::NoSpace);
        }
        if g.id == 0 {
            // The proposer picks the ID; 0 never reaches the log.
            return Err(StoreError::LeaseNotFound);
        }
        if g.ttl > MAX_LEASE_TTL {
            return Err(StoreError::LeaseTtlTooLarge);
        }
        if self.lessor.contains(g.id) {
            return Err(StoreError::LeaseExists);
        }
        let ttl = self.lessor.grant(g.id, g.ttl, now);
        Ok(LeaseGrantResponse {
            header: header(self.kv.current_rev()),
            id: g.id,
            ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(
        &mut self,
        r: LeaseRevokeRequest,
        events: &mut Vec<Event>,
    ) -> Result<LeaseRevokeResponse> {
        let lease = self.lessor.revoke(r.id).ok_or(StoreError::LeaseNotFound)?;
        // Every attached key goes in one revision, in key order.
        let mut w = self.kv.write();
        for key in &lease.keys {
            w.delete_range(&KeyRange::Single(key.clone()));
        }
        events.extend(w.end().events);
        Ok(LeaseRevokeResponse {
            header: header(self.kv.current_rev()),
        })
    }

    fn lease_checkpoint(&mut self, c: LeaseCheckpointRequest, now: Instant) {
        for cp in c.checkpoints {
            self.lessor.checkpoint(cp.id, cp.remaining_ttl, now);
        }
    }

    fn alarm(&mut self, a: AlarmRequest) -> AlarmResponse {
        let action = AlarmAction::try_from(a.action).unwrap_or(AlarmAction::Get);
        let mut alarms = Vec::new();
        match action {
            AlarmAction::Get => {}
            AlarmAction::Activate => {
                if a.alarm != AlarmType::None as i32 && self.alarms.insert((a.member_id, a.alarm)) {
                    alarms.push(AlarmMember {
                        member_id: a.member_id,
                        alarm: a.alarm,
                    });
                }
            }
            AlarmAction::Deactivate => {
                if self.alarms.remove(&(a.member_id, a.alarm)) {
                    alarms.push(AlarmMember {
                        member_id: a.member_id,
                        alarm: a.alarm,
                    });
                }
            }
        }
        if action == AlarmAction::Get {
            alarms = self.alarm_list(a.alarm);
        }
        AlarmResponse {
            header: header(self.kv.current_rev()),
            alarms,
        }
    }

    /// Applies a committed membership change to the member list.
    pub fn apply_conf_change(&mut self, index: u64, term: u64, cc: &keel_raft::core::ConfChange) {
        use keel_raft::core::ConfChange;
        self.applied_index = index;
        self.applied_term = term;
        match *cc {
            ConfChange::AddNode(id) => {
                let m = self.members.entry(id).or_default();
                m.learner = false;
                m.in_conf = true;
            }
            ConfChange::AddLearner(id) => {
                let m = self.members.entry(id).or_default();
                m.learner = true;
                m.in_conf = true;
            }
            ConfChange::RemoveNode(id) => {
                self.members.remove(&id);
            }
        }
    }

    /// The voters and learners, as the Raft core wants them.
    pub fn conf_state(&self) -> keel_raft::core::ConfState {
        let mut cs = keel_raft::core::ConfState::default();
        for (id, m) in self.members.iter().filter(|(_, m)| m.in_conf) {
            if m.learner {
                cs.learners.insert(*id);
            } else {
                cs.voters.insert(*id);
            }
        }
        cs
    }

    /// Raised alarms, all or of one type (`NONE` = all).
    pub fn alarm_list(&self, only: i32) -> Vec<AlarmMember> {
        self.alarms
            .iter()
            .filter(|(_, t)| only == AlarmType::None as i32 || *t == only)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }
}
