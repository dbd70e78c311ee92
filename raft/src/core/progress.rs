//! The leader's view of one follower's log, and the flow control of
//! replication to it (etcd's `tracker.Progress`).
//!
//! - **Probe**: the leader does not know where the follower's log matches;
//!   it sends one Append at a time and waits for the answer (or a heartbeat
//!   answer) before sending another.
//! - **Replicate**: the logs match up to `matched`; the leader streams
//!   Appends optimistically (advancing `next` as it sends) with at most
//!   `max_inflight_msgs` unacknowledged messages.
//! - **Snapshot**: the follower needs entries the leader compacted away; the
//!   leader sends nothing until the driver reports the snapshot's fate.

use std::collections::VecDeque;

/// Replication state of a follower (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// One Append at a time until the logs match.
    Probe,
    /// Pipelined Appends within the inflight window.
    Replicate,
    /// Waiting for a snapshot at `pending` to be installed.
    Snapshot {
        /// Index of the snapshot being sent.
        pending: u64,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) matched: u64,
    pub(crate) next: u64,
    pub(crate) state: ProgressState,
    /// Probe: an Append was sent and is not answered yet.
    pub(crate) probe_sent: bool,
    /// Replicate: last index of each Append in flight, oldest first.
    pub(crate) inflights: VecDeque<u64>,
    /// Heard from since the last quorum check.
    pub(crate) recent_active: bool,
    /// Highest ReadIndex round the peer acknowledged in this term.
    pub(crate) read_ack: u64,
    pub(crate) learner: bool,
}

impl Progress {
    pub(crate) fn new(next: u64, learner: bool) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: VecDeque::new(),
            recent_active: true,
            read_ack: 0,
            learner,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        // After a snapshot, resume after it; otherwise after the match.
        let next = match self.state {
            ProgressState::Snapshot { pending } => (self.matched + 1).max(pending + 1),
            _ => self.matched + 1,
        };
        self.state = ProgressState::Probe;
        self.next = next;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub(crate) fn become_snapshot(&mut self, pending: u64) {
        self.state = ProgressState::Snapshot { pending };
        self.probe_sent = false;
        self.inflights.clear();
    }

    /// Whether the leader must hold back Appends to this peer.
    pub(crate) fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.len() >= max_inflight,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records an Append carrying entries up to `last` was sent.
    pub(crate) fn sent_entries(&mut self, last: Option<u64>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflights.push_back(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// The peer acknowledged its log matches up to `n`. Returns whether
    /// `matched` advanced.
    pub(crate) fn maybe_update(&mut self, n: u64) -> bool {
        let updated = n > self.matched;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next = self.next.max(n + 1);
        while self.inflights.front().is_some_and(|&i| i <= n) {
            self.inflights.pop_front();
        }
        updated
    }

    /// The peer rejected an Append at `rejected`; `match_hint` is where the
    /// logs may match. Returns false if the rejection is stale.
    pub(crate) fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.matched {
                    return false;
                }
                self.become_probe();
                true
            }
            ProgressState::Probe => {
                if self.next.saturating_sub(1) != rejected {
                    return false;
                }
                self.next = rejected.min(match_hint + 1).max(self.matched + 1);
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot { .. } => false,
        }
    }
}
