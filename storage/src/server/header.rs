//! Response headers: who answered (cluster, member, term) and at what revision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::proto::etcdserverpb::ResponseHeader;

/// Fills etcd's `ResponseHeader` for this member. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Header {
    /// The cluster's ID.
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: u64,
    term: Arc<AtomicU64>,
}

impl Header {
    /// A header source for `member_id` in `cluster_id` at `term`.
    pub fn new(cluster_id: u64, member_id: u64, term: u64) -> Self {
        Header {
            cluster_id,
            member_id,
            term: Arc::new(AtomicU64::new(term)),
        }
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Relaxed)
    }

    /// Records a new term.
    pub fn set_term(&self, term: u64) {
        self.term.store(term, Ordering::Relaxed);
    }

    /// A complete header at `revision`.
    pub fn at(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.term(),
        }
    }

    /// Completes a header the state machine started: identity and term, and
    /// `current_rev` if it carries no revision (etcd's `header.fill`).
    pub fn fill(&self, h: &mut Option<ResponseHeader>, current_rev: i64) {
        let h = h.get_or_insert_with(Default::default);
        h.cluster_id = self.cluster_id;
        h.member_id = self.member_id;
        h.raft_term = self.term();
        if h.revision == 0 {
            h.revision = current_rev;
        }
    }
}
