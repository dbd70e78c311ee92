//! The safety invariants, checked after every simulation step. Each check
//! returns `Err(description)` on the first violation.
//!
//! - **Election safety**: at most one leader per term.
//! - **Leader append-only**: a leader never overwrites or deletes entries
//!   of its log during its term (compaction aside).
//! - **Log matching**: two logs holding an entry with the same index and
//!   term hold the same entry and agree on everything before it. Checked by
//!   a registry of every (index, term) ever written to a log, with its
//!   payload and the term of its predecessor: by induction the whole prefix
//!   is then fixed by (index, term).
//! - **Leader completeness**: a leader of term T holds every entry known
//!   committed by a node whose term was below T.
//! - **State machine safety**: every node applies the same entry at the same
//!   index, in order, with nothing skipped or applied twice (state machine
//!   fingerprints chain every applied entry; snapshots must match them).
//! - **Committed entries never change**.
//! - **Linearizable reads**: a ReadIndex answer covers every entry known
//!   committed when the read was issued. (The cluster checks leases on
//!   its own after every step: a lease that holds covers every entry
//!   committed anywhere.)

use std::collections::BTreeMap;

use keel_raft::core::{Entry, RawNode, ReadState, Role, SnapshotMeta};

use super::rng::{chain, fnv};

/// A committed entry as first observed.
#[derive(Debug, Clone, Copy)]
struct Committed {
    term: u64,
    data: u64,
    /// Lowest term of a node that saw it committed.
    seen_term: u64,
}

#[derive(Debug, Default)]
pub struct Checker {
    leaders: BTreeMap<u64, u64>,
    /// Per term: the leader's log (index, term) as last observed.
    leader_logs: BTreeMap<u64, Vec<(u64, u64)>>,
    /// (index, term) -> (payload fingerprint, term of the entry before).
    registry: BTreeMap<(u64, u64), (u64, u64)>,
    committed: BTreeMap<u64, Committed>,
    max_committed: u64,
    /// Global state machine fingerprint after applying each index.
    applied_hash: BTreeMap<u64, u64>,
    /// Payload fingerprint -> index it was applied at (non-empty payloads).
    applied_at: BTreeMap<u64, u64>,
    /// Per node: how far its commit index was checked.
    commit_seen: BTreeMap<u64, u64>,
    /// Read context -> minimum index the answer must carry.
    reads: BTreeMap<Vec<u8>, u64>,
    pub reads_ok: u64,
    pub applied_max: u64,
}

pub type Check = Result<(), String>;

impl Checker {
    /// Observes one live node after a step.
    pub fn observe(&mut self, raw: &RawNode) -> Check {
        let id = raw.id();
        let term = raw.term();
        let off = raw.snapshot_index();
        let log = raw.log_entries();
        if raw.role() == Role::Leader {
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    return Err(format!(
                        "election safety: {other} and {id} both lead term {term}"
                    ));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                    // Leader completeness.
                    for (&i, c) in self.committed.range(off + 1..) {
                        if c.seen_term >= term {
                            continue;
                        }
                        if raw.log_term(i) != Some(c.term) {
                            return Err(format!(
                                "leader completeness: leader {id} of term {term} lacks committed entry {i} (term {}), has {:?}",
                                c.term,
                                raw.log_term(i)
                            ));
                        }
                    }
                }
            }
            // Append-only.
            let now: Vec<(u64, u64)> = log.iter().map(|e| (e.index, e.term)).collect();
            if let Some(prev) = self.leader_logs.get(&term) {
                for &(i, t) in prev {
                    if i > off && raw.log_term(i) != Some(t) {
                        return Err(format!(
                            "leader append-only: leader {id} of term {term} changed entry {i} (term {t} -> {:?})",
                            raw.log_term(i)
                        ));
                    }
                }
            }
            self.leader_logs.insert(term, now);
        }
        // Commit observations.
        let commit = raw.commit();
        let seen = self.commit_seen.get(&id).copied().unwrap_or(0).max(off);
        for i in seen + 1..=commit {
            let Some(e) = log.get((i - off - 1) as usize) else {
                return Err(format!("node {id} committed {i} beyond its log"));
            };
            self.record_committed(e, term)?;
        }
        self.commit_seen.insert(id, commit.max(seen));
        Ok(())
    }

    /// A node (re)started: its checks start over.
    pub fn restarted(&mut self, id: u64) {
        self.commit_seen.remove(&id);
    }

    fn record_committed(&mut self, e: &Entry, seen_term: u64) -> Check {
        let data = fnv(&e.data);
        match self.committed.get_mut(&e.index) {
            Some(c) => {
                if c.term != e.term || c.data != data {
                    return Err(format!(
                        "committed entry {} changed: term {} -> {}",
                        e.index, c.term, e.term
                    ));
                }
                c.seen_term = c.seen_term.min(seen_term);
            }
            None => {
                self.committed.insert(
                    e.index,
                    Committed {
                        term: e.term,
                        data,
                        seen_term,
                    },
                );
                self.max_committed = self.max_committed.max(e.index);
            }
        }
        Ok(())
    }

    /// Entries a node hands out to persist (log matching registry).
    pub fn appended(&mut self, raw: &RawNode, entries: &[Entry]) -> Check {
        for e in entries {
            let prev_term = if e.index == 1 {
                0
            } else {
                match raw.log_term(e.index - 1) {
                    Some(t) => t,
                    None => {
                        return Err(format!(
                            "node {} appended {} after a hole",
                            raw.id(),
                            e.index
                        ))
                    }
                }
            };
            let v = (fnv(&e.data), prev_term);
            match self.registry.get(&(e.index, e.term)) {
                Some(&old) if old != v => {
                    return Err(format!(
                        "log matching: entry ({}, {}) on node {} differs from an earlier copy (payload/prev term {:?} vs {:?})",
                        e.index, e.term, raw.id(), v, old
                    ));
                }
                Some(_) => {}
                None => {
                    self.registry.insert((e.index, e.term), v);
                }
            }
        }
        Ok(())
    }

    /// A node applies `e` on top of a state machine at (`applied`, `hash`);
    /// returns the new fingerprint.
    pub fn apply(
        &mut self,
        id: u64,
        node_term: u64,
        applied: u64,
        hash: u64,
        e: &Entry,
    ) -> Result<u64, String> {
        if e.index != applied + 1 {
            return Err(format!(
                "state machine safety: node {id} applies {} after {applied}",
                e.index
            ));
        }
        self.record_committed(e, node_term)?;
        let data = fnv(&e.data);
        let h = chain(hash, e.index, e.term, data);
        match self.applied_hash.get(&e.index) {
            Some(&g) if g != h => {
                return Err(format!(
                    "state machine safety: node {id} applied a different entry (or history) at {}",
                    e.index
                ));
            }
            Some(_) => {}
            None => {
                self.applied_hash.insert(e.index, h);
                if !e.data.is_empty() {
                    if let Some(at) = self.applied_at.insert(data, e.index) {
                        if at != e.index {
                            return Err(format!(
                                "state machine safety: payload applied at {at} and again at {}",
                                e.index
                            ));
                        }
                    }
                }
            }
        }
        self.applied_max = self.applied_max.max(e.index);
        Ok(h)
    }

    /// A node installs a snapshot whose state machine fingerprint is `hash`.
    pub fn install(&mut self, id: u64, meta: &SnapshotMeta, hash: u64) -> Check {
        if let Some(c) = self.committed.get(&meta.index) {
            if c.term != meta.term {
                return Err(format!(
                    "snapshot at {} has term {}, committed entry has {}",
                    meta.index, meta.term, c.term
                ));
            }
        }
        match self.applied_hash.get(&meta.index) {
            Some(&g) if g != hash => Err(format!(
                "state machine safety: node {id} installed a snapshot at {} that differs from what was applied",
                meta.index
            )),
            _ => Ok(()),
        }
    }

    /// A read is issued: its answer must cover everything committed now.
    pub fn read_issued(&mut self, ctx: Vec<u8>) {
        self.reads.insert(ctx, self.max_committed);
    }

    /// A read is answered.
    pub fn read_answered(&mut self, id: u64, rs: &ReadState) -> Check {
        match self.reads.get(&rs.ctx) {
            Some(&min) if rs.index < min => Err(format!(
                "linearizability: node {id} read at {} but {min} was committed before the read",
                rs.index
            )),
            Some(_) => {
                self.reads_ok += 1;
                Ok(())
            }
            None => Err(format!(
                "node {id} answered a read never issued: {:?}",
                rs.ctx
            )),
        }
    }

    /// Index of the highest entry known committed.
    pub fn max_committed(&self) -> u64 {
        self.max_committed
    }

    /// The term of the committed entry at `index`, if known committed.
    pub fn committed_term(&self, index: u64) -> Option<u64> {
        self.committed.get(&index).map(|c| c.term)
    }

    /// Number of terms that had a leader.
    pub fn leader_terms(&self) -> usize {
        self.leaders.len()
    }
}
