//! The sans-IO Raft core: a pure, deterministic state machine.
//!
//! [`RawNode`] has no clock, no threads and no I/O. It takes ticks
//! ([`RawNode::tick`]), messages from peers ([`RawNode::step`]), proposals and
//! read requests, and hands back, in a [`Ready`], what to persist, what to
//! send, what is committed and what reads are confirmed. Its only randomness
//! (election timeouts) comes from a generator seeded by [`Config::seed`], so
//! the same inputs always give the same outputs: that is what makes
//! simulation testing of thousands of schedules possible (see
//! `raft/tests/sim.rs`). The shape follows tikv/raft-rs (`RawNode`/`Ready`)
//! and quinn-proto (inputs in, outputs polled).
//!
//! Table of contents:
//! - this file: configuration, membership, the [`Ready`] bundle and the other
//!   plain types, [`RaftError`].
//! - `node`: [`RawNode`], the Raft protocol itself (elections with pre-vote
//!   and check-quorum, replication, commit, ReadIndex and the rounds that
//!   time read leases, snapshots, membership, leadership transfer).
//! - `message`: [`Message`] and its validated rkyv wire encoding.
//! - `log`: the in-memory log (entries after the last snapshot, with the
//!   persisted/committed/applied marks).
//! - `progress`: the leader's view of each follower (probe / replicate /
//!   snapshot, inflight window).
//! - `rng`: the seeded generator.
//!
//! # What the driver must do
//!
//! See [`RawNode`] for the call-order contract. In short: feed inputs, then
//! while [`RawNode::has_ready`], take a [`Ready`] and (1) send
//! [`Ready::messages`] now, (2) install [`Ready::snapshot`], persist
//! [`Ready::entries`] and [`Ready::hard_state`], (3) only then send
//! [`Ready::persisted_messages`] and call [`RawNode::on_persisted`], (4) apply
//! [`Ready::committed_entries`] in order and call [`RawNode::on_applied`].
//!
//! # Read leases
//!
//! The core has no clock, so it cannot tell whether its lease still holds;
//! it tells the driver which ReadIndex round a quorum confirmed
//! ([`RawNode::confirmed_read_round`]) and whether leases may be used at all
//! this term ([`RawNode::lease_read_index`]), and the driver times the lease
//! with its monotonic clock ([`crate::read_lease::ReadLease`]) and vouches
//! for it around each read ([`RawNode::set_read_lease`]).

mod log;
mod message;
mod node;
mod progress;
mod rng;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

pub use crate::wal::{Entry, EntryKind, HardState};
pub use message::{Message, MessageKind};
pub use node::RawNode;
pub use progress::ProgressState;

/// Tuning and identity of one [`RawNode`].
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id (non-zero, unique in the cluster).
    pub id: u64,
    /// Ticks without hearing from a leader before a follower campaigns. The
    /// actual timeout is drawn at random in `[election_tick, 2 *
    /// election_tick)` each time the timer resets. A leader with
    /// `check_quorum` also uses it as the period of its quorum check. Must be
    /// greater than `heartbeat_tick`.
    pub election_tick: usize,
    /// Ticks between two heartbeats of a leader.
    pub heartbeat_tick: usize,
    /// Run a pre-vote round (which changes no state) before a real election,
    /// so a node rejoining from a partition cannot disrupt a stable leader by
    /// bumping the term.
    pub pre_vote: bool,
    /// The leader steps down when it has not heard from a quorum within an
    /// election timeout, and followers that hear from a leader ignore vote
    /// requests (and refuse pre-votes) for an election timeout (the leader
    /// lease).
    pub check_quorum: bool,
    /// Maximum number of Append messages in flight to one follower in
    /// replicate state (the pipelining window).
    pub max_inflight_msgs: usize,
    /// Maximum bytes of entry payload in one Append message (at least one
    /// entry is always sent).
    pub max_size_per_msg: u64,
    /// Maximum number of entries in one Append message (0: no limit).
    pub max_entries_per_msg: usize,
    /// Seed of the node's random generator (election timeouts).
    pub seed: u64,
}

impl Config {
    /// A configuration with the usual defaults: election 10 ticks, heartbeat
    /// 1 tick, pre-vote and check-quorum on, 256 inflight messages, 1 MiB
    /// per message, the seed derived from the id.
    pub fn new(id: u64) -> Config {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 256,
            max_size_per_msg: 1 << 20,
            max_entries_per_msg: 0,
            seed: id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED,
        }
    }

    fn validate(&self) -> Result<(), RaftError> {
        if self.id == 0 {
            return Err(RaftError::InvalidConfig("id must not be 0".into()));
        }
        if self.heartbeat_tick == 0 {
            return Err(RaftError::InvalidConfig(
                "heartbeat_tick must be > 0".into(),
            ));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(RaftError::InvalidConfig(
                "election_tick must be > heartbeat_tick".into(),
            ));
        }
        if self.max_inflight_msgs == 0 {
            return Err(RaftError::InvalidConfig(
                "max_inflight_msgs must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// The cluster membership: who votes and who only receives the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfState {
    /// Members that vote and count in quorums.
    pub voters: BTreeSet<u64>,
    /// Members that receive the log but neither vote nor count in quorums.
    pub learners: BTreeSet<u64>,
}

impl ConfState {
    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Voters and learners, ascending.
    pub fn members(&self) -> impl Iterator<Item = u64> + '_ {
        let mut all: Vec<u64> = self.voters.iter().chain(&self.learners).copied().collect();
        all.sort_unstable();
        all.dedup();
        all.into_iter()
    }

    /// Applies one membership change. Adding a voter that is a learner
    /// promotes it; adding a voter as a learner (demotion) is ignored.
    fn apply(&mut self, cc: &ConfChange) {
        match *cc {
            ConfChange::AddNode(id) => {
                self.learners.remove(&id);
                self.voters.insert(id);
            }
            ConfChange::AddLearner(id) => {
                if !self.voters.contains(&id) {
                    self.learners.insert(id);
                }
            }
            ConfChange::RemoveNode(id) => {
                self.voters.remove(&id);
                self.learners.remove(&id);
            }
        }
    }
}

/// What a snapshot covers: everything up to `index`, and the membership then.
/// The snapshot's data (the state machine image) is the application's and
/// travels outside the core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last log index the snapshot covers.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// The membership as of `index`.
    pub conf_state: ConfState,
}

/// One membership change, carried through the log in an entry of kind
/// [`EntryKind::ConfChange`] (one member at a time). It takes effect on a node
/// when the application applies the committed entry and calls
/// [`RawNode::apply_conf_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChange {
    /// Add a voter, or promote a learner to voter.
    AddNode(u64),
    /// Add a learner.
    AddLearner(u64),
    /// Remove a voter or learner.
    RemoveNode(u64),
}

impl ConfChange {
    /// Encodes the change as an entry payload: a tag byte (1 add, 2 add
    /// learner, 3 remove) and the id (u64 LE).
    pub fn encode(&self) -> Vec<u8> {
        let (tag, id) = match *self {
            ConfChange::AddNode(id) => (1u8, id),
            ConfChange::AddLearner(id) => (2, id),
            ConfChange::RemoveNode(id) => (3, id),
        };
        let mut v = Vec::with_capacity(9);
        v.push(tag);
        v.extend_from_slice(&id.to_le_bytes());
        v
    }

    /// Decodes an entry payload written by [`ConfChange::encode`].
    pub fn decode(data: &[u8]) -> Result<ConfChange, RaftError> {
        if data.len() != 9 {
            return Err(RaftError::Decode(format!(
                "conf change of {} bytes, want 9",
                data.len()
            )));
        }
        let mut idb = [0u8; 8];
        idb.copy_from_slice(&data[1..]);
        let id = u64::from_le_bytes(idb);
        if id == 0 {
            return Err(RaftError::Decode("conf change of node 0".into()));
        }
        match data[0] {
            1 => Ok(ConfChange::AddNode(id)),
            2 => Ok(ConfChange::AddLearner(id)),
            3 => Ok(ConfChange::RemoveNode(id)),
            t => Err(RaftError::Decode(format!("unknown conf change tag {t}"))),
        }
    }
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Running a pre-vote round (no term change yet).
    PreCandidate,
    /// Running an election.
    Candidate,
    /// Leads the cluster for its term.
    Leader,
}

/// The volatile state worth telling the application about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SoftState {
    /// The known leader (0: none).
    pub leader: u64,
    /// This node's role.
    pub role: Role,
}

/// A confirmed linearizable read: once the application has applied up to
/// `index`, it may serve the read identified by `ctx` from its state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    /// The commit index at the time the read was received by the leader.
    pub index: u64,
    /// The caller's context, as passed to [`RawNode::read_index`].
    pub ctx: Vec<u8>,
}

/// A leader's request that the driver stream its latest snapshot to a
/// follower whose next entries were compacted away.
///
/// The driver sends the snapshot data (of the snapshot at `meta.index`, which
/// the application took before calling [`RawNode::compact`]) and `message`
/// to `to`; the receiving driver steps `message` once the data is at hand.
/// The sender reports the outcome with [`RawNode::report_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The follower to send to.
    pub to: u64,
    /// The snapshot to send.
    pub meta: SnapshotMeta,
    /// The Snapshot message to deliver with the data.
    pub message: Message,
}

/// Everything the driver must act on, taken with [`RawNode::ready`].
///
/// Handle the fields in this order: `messages` (send now, any time),
/// `snapshot` + `entries` + `hard_state` (make durable: snapshot first, then
/// entries, then hard state), then `persisted_messages` (send only once the
/// previous step is durable), `committed_entries` (apply in order),
/// `read_states`, `snapshot_requests`. Readies must be persisted in the order
/// they were taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    /// Set if the leader or role changed since the last Ready.
    pub soft_state: Option<SoftState>,
    /// Set if the hard state changed since the last Ready: persist it.
    pub hard_state: Option<HardState>,
    /// Entries to append to the durable log. The first one may overwrite
    /// (truncate) entries persisted earlier at the same or higher indexes.
    pub entries: Vec<Entry>,
    /// A snapshot received from the leader to install: its data arrived with
    /// the Snapshot message. Install it durably (and replace the state
    /// machine with it, dropping the log it covers) before the entries, then
    /// call [`RawNode::on_snapshot_installed`].
    pub snapshot: Option<SnapshotMeta>,
    /// Messages to send now (a leader's Append may go out before its own
    /// entries are durable; pre-votes and their answers bind no one).
    pub messages: Vec<Message>,
    /// Messages to send only after `entries`, `hard_state` and `snapshot` of
    /// this Ready are durable (votes, acknowledgements).
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply to the state machine, in order. They are
    /// always durable locally already.
    pub committed_entries: Vec<Entry>,
    /// Linearizable reads confirmed since the last Ready.
    pub read_states: Vec<ReadState>,
    /// Snapshots to stream to lagging followers.
    pub snapshot_requests: Vec<SnapshotRequest>,
}

/// The state a node restarts from (all of it read from durable storage).
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The last persisted hard state (default for a new node).
    pub hard_state: HardState,
    /// The membership as of `applied` (for a new cluster,
    /// [`RawNode::bootstrap`]; for a node joining a running cluster, the
    /// cluster's bootstrap membership too: the log replays the rest).
    pub conf_state: ConfState,
    /// The latest durable snapshot (the log starts after it).
    pub snapshot: Option<SnapshotMeta>,
    /// The durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The index the state machine has applied (at least the snapshot's).
    pub applied: u64,
}

/// The leader's view of one follower, for [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProgress {
    /// Highest index known replicated (durably) on the peer.
    pub matched: u64,
    /// Next index to send.
    pub next: u64,
    /// Replication state.
    pub state: ProgressState,
    /// Whether the peer is a learner.
    pub learner: bool,
}

/// A snapshot of a node's state, for monitoring and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Vote in the current term (0: none).
    pub vote: u64,
    /// Known leader (0: none).
    pub leader: u64,
    /// Current role.
    pub role: Role,
    /// Commit index.
    pub commit: u64,
    /// Applied index (as reported by [`RawNode::on_applied`]).
    pub applied: u64,
    /// Index of the last entry in the log (durable or not).
    pub last_index: u64,
    /// Index of the last durable entry.
    pub persisted: u64,
    /// Index of the latest snapshot (the log starts after it).
    pub snapshot_index: u64,
    /// Current membership.
    pub conf_state: ConfState,
    /// Per-peer replication progress (leaders only; empty otherwise).
    pub progress: BTreeMap<u64, PeerProgress>,
}

/// Errors of the Raft core. None is fatal: each fails only the call it is
/// returned to and leaves the node consistent.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RaftError {
    /// The request needs the leader; this node is not it (or a leadership
    /// transfer is in progress, in which case `leader` is `None`).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader, if any.
        leader: Option<u64>,
    },
    /// A membership change is still uncommitted or unapplied; only one may
    /// be in flight.
    #[error("a membership change is already in progress")]
    ConfChangePending,
    /// The membership change does not apply to the current membership.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
    /// Bytes that do not decode as a message or conf change.
    #[error("decode error: {0}")]
    Decode(String),
    /// A message that is not for this node or is malformed (ignored).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A configuration value out of range.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The restored state is inconsistent (e.g. commit beyond the log).
    #[error("invalid restored state: {0}")]
    InvalidState(String),
    /// A compaction index outside the durable, applied log.
    #[error("cannot compact: {0}")]
    Compaction(String),
}
