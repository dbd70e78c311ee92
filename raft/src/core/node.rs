//! [`RawNode`]: the Raft protocol as a pure state machine.

use std::collections::{BTreeMap, VecDeque};

use super::log::RaftLog;
use super::progress::{Progress, ProgressState};
use super::rng::Rng;
use super::{
    ConfChange, ConfState, Config, Entry, EntryKind, HardState, Message, MessageKind, PeerProgress,
    RaftError, ReadState, Ready, Restored, Role, SnapshotMeta, SnapshotRequest, SoftState, Status,
};

/// A read waiting for the leader to confirm it is still the leader.
#[derive(Debug, Clone)]
struct PendingRead {
    /// ReadIndex round: confirmed once a quorum acknowledged a heartbeat
    /// carrying a round `>= seq`.
    seq: u64,
    /// Commit index when the read arrived.
    index: u64,
    /// Who asked (this node, or a follower that forwarded it).
    from: u64,
    ctx: Vec<u8>,
}

/// One Raft node, without I/O: the driver feeds it ticks, messages,
/// proposals and reads, and acts on the [`Ready`]s it hands back.
///
/// # Call-order contract
///
/// 1. Create with [`RawNode::new`] from durable state (a new cluster:
///    `Restored { conf_state: RawNode::bootstrap(&ids), ..Default::default() }`
///    on every initial member; a node joining later starts the same way with
///    the cluster's bootstrap membership and an empty log, and the log or a
///    snapshot brings it up to date).
/// 2. Feed inputs in any order: [`tick`](RawNode::tick) at a fixed period
///    (the unit of `election_tick`/`heartbeat_tick`), [`step`](RawNode::step)
///    for every message received, [`propose`](RawNode::propose),
///    [`propose_conf_change`](RawNode::propose_conf_change),
///    [`read_index`](RawNode::read_index),
///    [`transfer_leader`](RawNode::transfer_leader),
///    [`report_unreachable`](RawNode::report_unreachable),
///    [`report_snapshot`](RawNode::report_snapshot).
/// 3. Whenever [`has_ready`](RawNode::has_ready), take a [`Ready`] with
///    [`ready`](RawNode::ready) and:
///    1. send `messages` right away;
///    2. durably install `snapshot` (if any), then append `entries` to the
///       log (the first may overwrite a suffix), then store `hard_state`;
///       Readies must be made durable in the order they were taken, and
///       several may be in flight at once;
///    3. once step 2 of this Ready is durable: send `persisted_messages`,
///       call [`on_snapshot_installed`](RawNode::on_snapshot_installed) if
///       it had a snapshot, and call
///       [`on_persisted`](RawNode::on_persisted) with the index and term of
///       its last entry if it had entries;
///    4. apply `committed_entries` in order (calling
///       [`apply_conf_change`](RawNode::apply_conf_change) for each
///       [`EntryKind::ConfChange`] entry, in log order), then call
///       [`on_applied`](RawNode::on_applied); serve `read_states` once
///       applied up to their index; stream a snapshot for each of
///       `snapshot_requests` and report the outcome with
///       [`report_snapshot`](RawNode::report_snapshot).
/// 4. After the application took a durable snapshot of its state machine at
///    its applied index, call [`compact`](RawNode::compact) and then drop the
///    log entries it covers from disk.
///
/// The node may be stepped between `ready()` and `on_persisted()`: it never
/// counts entries as durable before `on_persisted`. If a durable write fails
/// the driver must stop the node and restart it from what is on disk.
///
/// Messages (and the Appends of proposals) are produced when the Ready is
/// taken: proposals made between two Readies travel in one Append, and
/// reads made between two Readies are confirmed by one heartbeat round.
#[derive(Debug)]
pub struct RawNode {
    pub(crate) cfg: Config,
    id: u64,
    rng: Rng,
    term: u64,
    vote: u64,
    leader: u64,
    role: Role,
    log: RaftLog,
    conf: ConfState,
    /// Membership after each applied change: (index of the change, conf).
    conf_history: Vec<(u64, ConfState)>,
    /// Indexes of conf-change entries handed out to apply, not yet applied.
    unapplied_confs: VecDeque<u64>,
    /// The latest snapshot the log starts after.
    snap_meta: SnapshotMeta,
    /// Leader: progress of every other member.
    prs: BTreeMap<u64, Progress>,
    /// Candidate / pre-candidate: votes received.
    votes: BTreeMap<u64, bool>,
    election_elapsed: usize,
    heartbeat_elapsed: usize,
    randomized_timeout: usize,
    /// Leader: index of the latest conf change proposed (a new one waits
    /// until it is applied).
    pending_conf_index: u64,
    /// Leader: target of a leadership transfer in progress.
    transferee: Option<u64>,
    /// Leader: ticks since the transfer started (abandoned after an
    /// election timeout). Kept apart from `election_elapsed` so repeated
    /// transfer requests cannot postpone the quorum check.
    transfer_elapsed: usize,
    /// ReadIndex round: bumped by every read that needs one and by every
    /// periodic heartbeat, so a quorum's acknowledgements also time the
    /// leader's read lease (see [`RawNode::lease_read_index`]).
    read_seq: u64,
    pending_reads: VecDeque<PendingRead>,
    /// Leader: a TimeoutNow went out this term. Its target may win an
    /// election at any time (its votes override followers' leases), so
    /// lease reads stop until the next term.
    lease_revoked: bool,
    /// The driver's word that its read lease holds at this instant (see
    /// [`RawNode::set_read_lease`]).
    read_lease_holds: bool,
    /// Since start, until an election timeout passed: vote requests are
    /// ignored (pre-votes refused) as if a leader had just been heard. A
    /// member that restarts quickly forgets the leader it heard before;
    /// without this it could elect a new leader while the old one still
    /// serves lease reads.
    startup_guard: bool,
    /// Leader: reads waiting for the first commit of the term.
    reads_before_commit: Vec<(u64, Vec<u8>)>,
    /// Leader: a heartbeat round for new reads is owed.
    read_heartbeat_due: bool,
    /// Leader: new entries to broadcast.
    bcast_due: bool,
    /// PreCandidate: this is the first pre-vote round since it followed a
    /// leader, the one where two followers that lost the leader together
    /// race; only here are pre-votes ranked (see `handle_vote`). Ranking in
    /// later rounds could let a pre-candidate that can never win (cut off
    /// from a quorum) refuse, round after round, one that could.
    rank_pre_votes: bool,
    /// The term and vote of this node's own campaign may not be durable yet.
    /// A leader elected by others' votes is past this (its vote requests
    /// went out only after the write); a lone voter wins in the same step
    /// it campaigns, so until an entry of its term is reported durable its
    /// messages (appends to learners) wait for the WAL like a follower's.
    /// Otherwise a crash before the write could let it win the same term
    /// again and send different entries under it.
    term_unsynced: bool,
    msgs: Vec<Message>,
    persisted_msgs: Vec<Message>,
    read_states: Vec<ReadState>,
    snapshot_requests: Vec<SnapshotRequest>,
    prev_soft: SoftState,
    prev_hard: HardState,
    /// A received snapshot not yet handed out.
    pending_snapshot: Option<SnapshotMeta>,
    /// A snapshot handed out, not yet reported installed.
    installing: Option<SnapshotMeta>,
}

impl RawNode {
    /// Creates a node from its durable state (see [`Restored`]).
    ///
    /// Fails if the configuration is out of range or the state is
    /// inconsistent (entries not contiguous after the snapshot, commit
    /// beyond the log, applied beyond commit).
    pub fn new(cfg: Config, restored: Restored) -> Result<RawNode, RaftError> {
        cfg.validate()?;
        let Restored {
            hard_state,
            conf_state,
            snapshot,
            entries,
            applied,
        } = restored;
        let (offset, offset_term) = snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term));
        for (k, e) in entries.iter().enumerate() {
            if e.index != offset + 1 + k as u64 {
                return Err(RaftError::InvalidState(format!(
                    "entry {k} has index {}, want {}",
                    e.index,
                    offset + 1 + k as u64
                )));
            }
        }
        let last = offset + entries.len() as u64;
        let commit = hard_state.commit.max(offset);
        if commit > last {
            return Err(RaftError::InvalidState(format!(
                "commit {commit} beyond the last entry {last}"
            )));
        }
        let applied = applied.max(offset);
        if applied > commit {
            return Err(RaftError::InvalidState(format!(
                "applied {applied} beyond commit {commit}"
            )));
        }
        let snap_meta = snapshot.unwrap_or(SnapshotMeta {
            index: 0,
            term: 0,
            conf_state: conf_state.clone(),
        });
        let mut node = RawNode {
            id: cfg.id,
            rng: Rng::new(cfg.seed),
            term: hard_state.term,
            vote: hard_state.vote,
            leader: 0,
            role: Role::Follower,
            log: RaftLog {
                offset,
                offset_term,
                entries,
                committed: commit,
                persisted: last,
                handed: last,
                applied,
                applied_handed: applied,
            },
            conf_history: vec![(applied, conf_state.clone())],
            conf: conf_state,
            unapplied_confs: VecDeque::new(),
            snap_meta,
            prs: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: cfg.election_tick,
            pending_conf_index: 0,
            transferee: None,
            transfer_elapsed: 0,
            read_seq: 0,
            pending_reads: VecDeque::new(),
            lease_revoked: false,
            read_lease_holds: false,
            startup_guard: cfg.check_quorum,
            reads_before_commit: Vec::new(),
            read_heartbeat_due: false,
            bcast_due: false,
            rank_pre_votes: false,
            term_unsynced: false,
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            read_states: Vec::new(),
            snapshot_requests: Vec::new(),
            prev_soft: SoftState::default(),
            prev_hard: HardState {
                term: hard_state.term,
                vote: hard_state.vote,
                commit,
            },
            pending_snapshot: None,
            installing: None,
            cfg,
        };
        node.reset_randomized_timeout();
        Ok(node)
    }

    /// The membership of a new cluster whose voters are `voters`.
    pub fn bootstrap(voters: &[u64]) -> ConfState {
        ConfState {
            voters: voters.iter().copied().collect(),
            learners: Default::default(),
        }
    }

    // ---- inspection ------------------------------------------------------

    /// The configuration the node was created with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Known leader (0: none).
    pub fn leader(&self) -> u64 {
        self.leader
    }

    /// Commit index.
    pub fn commit(&self) -> u64 {
        self.log.committed
    }

    /// The in-memory log: entries after the latest snapshot (durable or
    /// not), for inspection and tests.
    pub fn log_entries(&self) -> &[Entry] {
        &self.log.entries
    }

    /// The term of the entry at `index`, if known (the snapshot's index
    /// counts; compacted or missing entries do not).
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }

    /// Index of the last entry in the log (durable or not).
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// Index of the latest snapshot (the log starts after it).
    pub fn snapshot_index(&self) -> u64 {
        self.log.offset
    }

    /// Current membership.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// A full status report (allocates).
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            role: self.role,
            commit: self.log.committed,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            persisted: self.log.persisted,
            snapshot_index: self.log.offset,
            conf_state: self.conf.clone(),
            progress: self
                .prs
                .iter()
                .map(|(&id, p)| {
                    (
                        id,
                        PeerProgress {
                            matched: p.matched,
                            next: p.next,
                            state: p.state,
                            learner: p.learner,
                        },
                    )
                })
                .collect(),
        }
    }

    // ---- inputs ----------------------------------------------------------

    /// Advances the logical clock by one tick: followers count towards an
    /// election, leaders towards a heartbeat and their quorum check.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    /// Handles a message from a peer. Messages that are malformed or not
    /// addressed to this node are refused with
    /// [`RaftError::InvalidMessage`]; stale or irrelevant ones are ignored
    /// (`Ok`). Never panics on peer input.
    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        m.validate()?;
        if m.to != self.id {
            return Err(RaftError::InvalidMessage(format!(
                "message for {} delivered to {}",
                m.to, self.id
            )));
        }
        if m.from == self.id {
            return Err(RaftError::InvalidMessage("message from self".into()));
        }
        if m.term > self.term {
            match m.kind {
                MessageKind::Vote { transfer, .. } => {
                    if !transfer && self.in_lease() {
                        return Ok(());
                    }
                    self.become_follower(m.term, 0);
                }
                MessageKind::PreVote { .. } => {
                    if self.in_lease() {
                        // Refused (etcd ignores it): a pre-candidate that
                        // knows we refused it grants our own pre-vote later
                        // regardless of rank (see `handle_vote`).
                        self.send(m.from, MessageKind::PreVoteResp { reject: true });
                        return Ok(());
                    }
                }
                MessageKind::PreVoteResp { reject: false } => {}
                MessageKind::Append { .. }
                | MessageKind::Heartbeat { .. }
                | MessageKind::Snapshot { .. } => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, 0),
            }
        } else if m.term < self.term {
            match m.kind {
                MessageKind::Append { .. } | MessageKind::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A stale leader (perhaps cut off and unaware): tell it
                    // about our term so it steps down.
                    self.send(
                        m.from,
                        MessageKind::AppendResp {
                            reject: false,
                            index: 0,
                            hint_index: 0,
                            hint_term: 0,
                        },
                    );
                }
                MessageKind::PreVote { .. } => {
                    self.send(m.from, MessageKind::PreVoteResp { reject: true });
                }
                _ => {}
            }
            return Ok(());
        }

        match m.kind {
            MessageKind::Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote(m.from, m.term, last_index, last_term, false),
            MessageKind::PreVote {
                last_index,
                last_term,
            } => self.handle_vote(m.from, m.term, last_index, last_term, true),
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
        Ok(())
    }

    /// Proposes a command. Fails with [`RaftError::NotLeader`] unless this
    /// node is the leader and no leadership transfer is in progress. The
    /// proposal may still be lost (if leadership changes before it commits):
    /// the caller learns of success only by seeing it committed.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        self.check_can_propose()?;
        self.append_entry(EntryKind::Normal, data);
        Ok(())
    }

    /// Proposes a membership change (one member at a time). Refused while
    /// another change is not yet applied by the leader
    /// ([`RaftError::ConfChangePending`]), or if it does not apply to the
    /// current membership.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(), RaftError> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied {
            return Err(RaftError::ConfChangePending);
        }
        let bad = |s: &str| Err(RaftError::InvalidConfChange(s.to_string()));
        match cc {
            ConfChange::AddNode(id) | ConfChange::AddLearner(id) | ConfChange::RemoveNode(id)
                if id == 0 =>
            {
                return bad("node id 0");
            }
            ConfChange::AddNode(id) if self.conf.voters.contains(&id) => {
                return bad("already a voter")
            }
            ConfChange::AddLearner(id) if self.conf.contains(id) => return bad("already a member"),
            ConfChange::RemoveNode(id) if !self.conf.contains(id) => return bad("not a member"),
            ConfChange::RemoveNode(id)
                if self.conf.voters.len() == 1 && self.conf.voters.contains(&id) =>
            {
                return bad("cannot remove the last voter")
            }
            _ => {}
        }
        self.append_entry(EntryKind::ConfChange, cc.encode());
        self.pending_conf_index = self.log.last_index();
        Ok(())
    }

    /// Asks for a linearizable read. The leader records its commit index and
    /// confirms it is still the leader with a heartbeat quorum (reads that
    /// arrive between two Readies share one round); a follower forwards the
    /// request to its leader. The answer is a [`ReadState`] carrying `ctx`
    /// in a later [`Ready::read_states`]. A read is dropped, without an
    /// answer, if there is no known leader or leadership changes: the
    /// caller retries after a timeout.
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        if self.role == Role::Leader {
            self.handle_read(self.id, ctx);
        } else if self.leader != 0 {
            self.send(self.leader, MessageKind::ReadIndex { ctx });
        }
    }

    /// The current ReadIndex round (see [`RawNode::confirmed_read_round`]).
    /// Heartbeats carry the round current when their Ready was taken.
    pub fn read_round(&self) -> u64 {
        self.read_seq
    }

    /// Leader: the highest ReadIndex round a quorum of voters (this node
    /// included) acknowledged in this term; 0 otherwise. A voter that
    /// acknowledged round `r` received, after round `r` began, a heartbeat
    /// of this leader, and ignores votes for an election timeout after it
    /// (the followers' lease, with check-quorum).
    pub fn confirmed_read_round(&self) -> u64 {
        if self.role != Role::Leader {
            return 0;
        }
        if self.conf.voters.len() == 1 && self.conf.voters.contains(&self.id) {
            return self.read_seq;
        }
        let mut acks: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|&v| {
                if v == self.id {
                    u64::MAX
                } else {
                    self.prs.get(&v).map_or(0, |p| p.read_ack)
                }
            })
            .collect();
        acks.sort_unstable_by(|a, b| b.cmp(a));
        acks.get(self.quorum() - 1).copied().unwrap_or(0)
    }

    /// Leader: the index a lease read may be served at, if leases may be
    /// used at all in this term: check-quorum is on, an entry of this term
    /// is committed and no leadership transfer was started. Whether the
    /// lease is still current is the driver's to judge with a real clock:
    /// it holds from the moment round [`confirmed_read_round`] began for a
    /// little less than the followers' election timeout (ticks stall when
    /// a process is paused; clocks do not).
    ///
    /// [`confirmed_read_round`]: RawNode::confirmed_read_round
    pub fn lease_read_index(&self) -> Option<u64> {
        let usable = self.role == Role::Leader
            && self.cfg.check_quorum
            && !self.lease_revoked
            && self.transferee.is_none()
            && self.log.term(self.log.committed) == Some(self.term);
        usable.then_some(self.log.committed)
    }

    /// The driver's clock says its read lease holds now (see
    /// [`lease_read_index`](RawNode::lease_read_index)): reads handled
    /// until the next call, from this node or forwarded by a follower, are
    /// answered at once at the commit index instead of waiting for a
    /// heartbeat round. The driver must read its clock after the read
    /// arrived and call `set_read_lease(false)` right after handing it in,
    /// so that a stale answer never outlives the instant it was true for.
    pub fn set_read_lease(&mut self, holds: bool) {
        self.read_lease_holds = holds;
    }

    /// Asks that leadership move to `to` (a voter). The leader brings `to`'s
    /// log up to date, then tells it to campaign at once (TimeoutNow);
    /// proposals are refused meanwhile. The transfer is abandoned after an
    /// election timeout. A follower forwards the request to its leader.
    pub fn transfer_leader(&mut self, to: u64) {
        if self.role != Role::Leader {
            if self.leader != 0 && self.leader != self.id {
                self.send(self.leader, MessageKind::TransferLeader { target: to });
            }
            return;
        }
        if to == self.id || !self.conf.voters.contains(&to) || self.transferee == Some(to) {
            return;
        }
        self.transferee = Some(to);
        self.transfer_elapsed = 0;
        let caught_up = self
            .prs
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.lease_revoked = true;
            self.send(to, MessageKind::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
    }

    /// The driver could not reach `id`: stop pipelining to it and probe.
    pub fn report_unreachable(&mut self, id: u64) {
        if let Some(pr) = self.prs.get_mut(&id) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// The driver finished streaming a snapshot to `id` (`ok`) or gave up.
    /// Either way the leader goes back to probing `id`.
    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.prs.get_mut(&id) {
            if let ProgressState::Snapshot { .. } = pr.state {
                if !ok {
                    pr.state = ProgressState::Probe;
                }
                pr.become_probe();
                // Wait for the next heartbeat answer before probing.
                pr.probe_sent = true;
            }
        }
    }

    // ---- outputs ---------------------------------------------------------

    /// Whether there is anything for the driver to do.
    pub fn has_ready(&self) -> bool {
        self.current_soft() != self.prev_soft
            || self.current_hard() != self.prev_hard
            || !self.log.unhanded().is_empty()
            || self.pending_snapshot.is_some()
            || !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || self.committed_available()
            || !self.read_states.is_empty()
            || !self.snapshot_requests.is_empty()
            || (self.role == Role::Leader && (self.bcast_due || self.read_heartbeat_due))
    }

    /// Takes everything the driver must act on (see [`Ready`] and the
    /// call-order contract on [`RawNode`]).
    #[must_use]
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if std::mem::take(&mut self.bcast_due) {
                // Fill each follower's window (one message in probe state).
                let peers: Vec<u64> = self.prs.keys().copied().collect();
                for to in peers {
                    while self.send_append(to, false) {}
                }
            }
            if std::mem::take(&mut self.read_heartbeat_due) {
                self.bcast_heartbeat();
            }
        }
        self.bcast_due = false;
        self.read_heartbeat_due = false;
        let mut rd = Ready::default();
        let soft = self.current_soft();
        if soft != self.prev_soft {
            self.prev_soft = soft;
            rd.soft_state = Some(soft);
        }
        let hard = self.current_hard();
        if hard != self.prev_hard {
            self.prev_hard = hard;
            rd.hard_state = Some(hard);
        }
        if let Some(meta) = self.pending_snapshot.take() {
            self.installing = Some(meta.clone());
            rd.snapshot = Some(meta);
        }
        rd.entries = self.log.unhanded().to_vec();
        self.log.handed = self.log.last_index();
        rd.messages = std::mem::take(&mut self.msgs);
        rd.persisted_messages = std::mem::take(&mut self.persisted_msgs);
        if self.committed_available() {
            let lo = self.log.applied_handed + 1;
            let hi = self.log.applicable_to();
            let ents = self.log.slice(lo, hi + 1, u64::MAX, 0).unwrap_or_default();
            for e in &ents {
                if e.kind == EntryKind::ConfChange {
                    self.unapplied_confs.push_back(e.index);
                }
            }
            self.log.applied_handed = hi;
            rd.committed_entries = ents;
        }
        rd.read_states = std::mem::take(&mut self.read_states);
        rd.snapshot_requests = std::mem::take(&mut self.snapshot_requests);
        rd
    }

    /// Entries up to (`index`, `term`) and the hard state of the Ready they
    /// came in are durable. Ignored if that entry has since been replaced.
    /// A leader counts itself towards a commit quorum only from here.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        if index > self.log.persisted
            && index <= self.log.handed
            && self.log.match_term(index, term)
        {
            self.log.persisted = index;
            if term == self.term {
                self.term_unsynced = false;
            }
            if self.role == Role::Leader && self.maybe_commit() {
                self.bcast_append(true);
            }
        }
    }

    /// The state machine has applied every committed entry up to `index`.
    pub fn on_applied(&mut self, index: u64) {
        self.log.applied = self.log.applied.max(index.min(self.log.applied_handed));
    }

    /// The application applies a committed conf-change entry (call it in
    /// log order, for each conf-change entry of `committed_entries`).
    /// Returns the new membership. A leader removed by the change steps down.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> ConfState {
        let idx = self
            .unapplied_confs
            .pop_front()
            .unwrap_or(self.log.applied_handed);
        self.conf.apply(cc);
        self.conf_history.push((idx, self.conf.clone()));
        if self.role == Role::Leader {
            let next = self.log.last_index() + 1;
            match *cc {
                ConfChange::AddNode(x) | ConfChange::AddLearner(x) if x != self.id => {
                    let learner = !self.conf.voters.contains(&x);
                    self.prs
                        .entry(x)
                        .or_insert_with(|| Progress::new(next, learner))
                        .learner = learner;
                }
                ConfChange::RemoveNode(x) => {
                    self.prs.remove(&x);
                }
                _ => {}
            }
            if !self.conf.voters.contains(&self.id) {
                let term = self.term;
                self.become_follower(term, 0);
            } else {
                if self
                    .transferee
                    .is_some_and(|t| !self.conf.voters.contains(&t))
                {
                    self.transferee = None;
                }
                if self.maybe_commit() {
                    self.bcast_append(true);
                }
                self.advance_reads();
            }
        }
        self.conf.clone()
    }

    /// The driver durably installed the snapshot handed out in a Ready (the
    /// state machine now reflects it).
    pub fn on_snapshot_installed(&mut self, meta: &SnapshotMeta) {
        if self
            .installing
            .as_ref()
            .is_some_and(|m| m.index == meta.index)
        {
            self.installing = None;
        }
        if meta.index <= self.log.offset {
            self.log.persisted = self.log.persisted.max(meta.index);
            self.log.applied_handed = self.log.applied_handed.max(meta.index);
            self.log.applied = self.log.applied.max(meta.index);
        }
    }

    /// The application durably took a snapshot of its state machine at
    /// `index` (its applied index): drop the in-memory log up to it. Returns
    /// the snapshot's metadata (term and membership at `index`) to store
    /// with the data; the leader sends this snapshot to followers that need
    /// the dropped entries. Fails if `index` is not both applied and
    /// durable, or was already compacted.
    pub fn compact(&mut self, index: u64) -> Result<SnapshotMeta, RaftError> {
        if index <= self.log.offset {
            return Err(RaftError::Compaction(format!(
                "index {index} already compacted (snapshot at {})",
                self.log.offset
            )));
        }
        if index > self.log.applied || index > self.log.persisted {
            return Err(RaftError::Compaction(format!(
                "index {index} is beyond applied {} or durable {}",
                self.log.applied, self.log.persisted
            )));
        }
        let Some(term) = self.log.term(index) else {
            return Err(RaftError::Compaction(format!("no entry at {index}")));
        };
        self.log.compact(index);
        // The membership as of `index`: the last change applied at or before it.
        let pos = self
            .conf_history
            .iter()
            .rposition(|(i, _)| *i <= index)
            .unwrap_or(0);
        self.conf_history.drain(..pos);
        let conf_state = self.conf_history[0].1.clone();
        self.snap_meta = SnapshotMeta {
            index,
            term,
            conf_state,
        };
        Ok(self.snap_meta.clone())
    }

    // ---- internals: roles --------------------------------------------------

    fn current_soft(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    fn current_hard(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    fn committed_available(&self) -> bool {
        self.pending_snapshot.is_none()
            && self.installing.is_none()
            && self.log.applied_handed >= self.log.offset
            && self.log.applicable_to() > self.log.applied_handed
    }

    fn quorum(&self) -> usize {
        self.conf.voters.len() / 2 + 1
    }

    fn promotable(&self) -> bool {
        self.conf.voters.contains(&self.id)
    }

    /// Followers that heard from a leader within an election timeout ignore
    /// votes (unless for a transfer) and refuse pre-votes.
    /// So does a member within an election timeout of its start.
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.leader != 0 || self.startup_guard)
            && self.election_elapsed < self.cfg.election_tick
    }

    fn reset_randomized_timeout(&mut self) {
        let e = self.cfg.election_tick;
        self.randomized_timeout = e + self.rng.below(e as u64) as usize;
    }

    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = 0;
        }
        self.leader = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.votes.clear();
        self.prs.clear();
        self.transferee = None;
        self.pending_reads.clear();
        self.reads_before_commit.clear();
        self.read_heartbeat_due = false;
        self.bcast_due = false;
    }

    fn become_follower(&mut self, term: u64, leader: u64) {
        self.reset(term);
        self.leader = leader;
        self.role = Role::Follower;
    }

    fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.id;
        self.lease_revoked = false;
        self.startup_guard = false;
        let next = self.log.last_index() + 1;
        for id in self.conf.members().collect::<Vec<_>>() {
            if id != self.id {
                let learner = !self.conf.voters.contains(&id);
                self.prs.insert(id, Progress::new(next, learner));
            }
        }
        // Raft §5.4.2: commit an entry of our own term first; a conf change
        // waits for it to be applied (the single-server change fix).
        self.append_entry(EntryKind::Normal, Vec::new());
        self.pending_conf_index = self.log.last_index();
        self.bcast_append(true);
        self.bcast_due = false;
    }

    fn has_unapplied_conf_changes(&self) -> bool {
        let lo = self.log.applied.max(self.log.offset) + 1;
        (lo..=self.log.committed).any(|i| {
            self.log
                .entry(i)
                .is_some_and(|e| e.kind == EntryKind::ConfChange)
        })
    }

    /// Starts an election now, as an election timeout would (pre-vote
    /// first). For a lone voter, which needs no timeout: it wins at once.
    /// Does nothing on a learner or while a committed membership change is
    /// not yet applied.
    pub fn campaign_now(&mut self) {
        self.campaign(false);
    }

    pub(crate) fn campaign(&mut self, transfer: bool) {
        if !self.promotable() || self.has_unapplied_conf_changes() {
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.rank_pre_votes = self.role == Role::Follower && self.leader != 0;
            self.role = Role::PreCandidate;
            self.leader = 0;
            self.votes.clear();
            self.election_elapsed = 0;
            self.reset_randomized_timeout();
            if self.poll(self.id, true) == Some(true) {
                self.campaign_real(false);
                return;
            }
            let (li, lt) = (self.log.last_index(), self.log.last_term());
            let term = self.term + 1;
            for v in self.conf.voters.clone() {
                if v != self.id {
                    self.send_with_term(
                        v,
                        term,
                        MessageKind::PreVote {
                            last_index: li,
                            last_term: lt,
                        },
                    );
                }
            }
        } else {
            self.campaign_real(transfer);
        }
    }

    fn campaign_real(&mut self, transfer: bool) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.role = Role::Candidate;
        self.term_unsynced = true;
        if self.poll(self.id, true) == Some(true) {
            self.become_leader();
            return;
        }
        let (li, lt) = (self.log.last_index(), self.log.last_term());
        for v in self.conf.voters.clone() {
            if v != self.id {
                self.send(
                    v,
                    MessageKind::Vote {
                        last_index: li,
                        last_term: lt,
                        transfer,
                    },
                );
            }
        }
    }

    /// Records a vote; `Some(true)`: won, `Some(false)`: lost, `None`: open.
    fn poll(&mut self, from: u64, granted: bool) -> Option<bool> {
        if !self.conf.voters.contains(&from) {
            return None;
        }
        self.votes.entry(from).or_insert(granted);
        let yes = self.votes.values().filter(|g| **g).count();
        let no = self.votes.len() - yes;
        let q = self.quorum();
        if yes >= q {
            Some(true)
        } else if self.conf.voters.len() - no < q {
            Some(false)
        } else {
            None
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.startup_guard = false;
        }
        if self.promotable() && self.election_elapsed >= self.randomized_timeout {
            self.election_elapsed = 0;
            self.campaign(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let active = self
                    .conf
                    .voters
                    .iter()
                    .filter(|&&v| v == self.id || self.prs.get(&v).is_some_and(|p| p.recent_active))
                    .count();
                for p in self.prs.values_mut() {
                    p.recent_active = false;
                }
                if active < self.quorum() {
                    let term = self.term;
                    self.become_follower(term, 0);
                    return;
                }
            }
        }
        if self.transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.election_tick {
                // A transfer that did not finish within an election timeout.
                self.transferee = None;
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            // Every heartbeat is a new round: its acknowledgements keep the
            // read lease current without any read asking for it.
            self.read_seq += 1;
            self.bcast_heartbeat();
        }
    }

    // ---- internals: messages -------------------------------------------------

    fn send(&mut self, to: u64, kind: MessageKind) {
        let term = self.term;
        self.send_with_term(to, term, kind);
    }

    /// A leader's messages go out at once (its term and vote are durable
    /// since it campaigned; see `term_unsynced`), and so do pre-votes and
    /// their answers (they bind no one and change no durable state; holding
    /// them for a WAL write only widens the window in which two
    /// pre-candidates both win and then split the real vote). Everything
    /// else waits for the Ready's persistence (votes, acknowledgements of
    /// entries).
    fn send_with_term(&mut self, to: u64, term: u64, kind: MessageKind) {
        let immediate = (self.role == Role::Leader && !self.term_unsynced)
            || matches!(
                kind,
                MessageKind::PreVote { .. } | MessageKind::PreVoteResp { .. }
            );
        let m = Message {
            from: self.id,
            to,
            term,
            kind,
        };
        if immediate {
            self.msgs.push(m);
        } else {
            self.persisted_msgs.push(m);
        }
    }

    fn handle_vote(&mut self, from: u64, mterm: u64, last_index: u64, last_term: u64, pre: bool) {
        let can_vote =
            self.vote == from || (self.vote == 0 && self.leader == 0) || (pre && mterm > self.term);
        // Two pre-candidates that each grant the other's pre-vote both go on
        // to campaign in the same term and split the vote, which costs
        // another election timeout. So in its first round after losing its
        // leader a pre-candidate grants only a pre-vote that outranks its
        // own (a longer log, or as long a log and a higher id), unless the
        // asker already refused ours (then ours cannot win with it anyway).
        // Of two followers that lost the leader together at most one wins
        // the other's grant. Pre-votes bind no one, so this touches
        // liveness only, never safety.
        let outranks = || {
            self.role != Role::PreCandidate
                || !self.rank_pre_votes
                || self.votes.get(&from) == Some(&false)
                || (last_term, last_index, from)
                    > (self.log.last_term(), self.log.last_index(), self.id)
        };
        if can_vote && self.log.is_up_to_date(last_index, last_term) && (!pre || outranks()) {
            if pre {
                self.send_with_term(from, mterm, MessageKind::PreVoteResp { reject: false });
            } else {
                self.election_elapsed = 0;
                self.vote = from;
                self.send(from, MessageKind::VoteResp { reject: false });
            }
        } else if pre {
            self.send(from, MessageKind::PreVoteResp { reject: true });
        } else {
            self.send(from, MessageKind::VoteResp { reject: true });
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.kind {
            MessageKind::Append { .. }
            | MessageKind::Heartbeat { .. }
            | MessageKind::Snapshot { .. } => {
                self.become_follower(m.term, m.from);
                self.step_follower(m);
            }
            MessageKind::VoteResp { reject } if self.role == Role::Candidate => {
                // An answer proves our vote request left, and it left only
                // once our term and vote were durable.
                self.term_unsynced = false;
                match self.poll(m.from, !reject) {
                    Some(true) => self.become_leader(),
                    Some(false) => self.become_follower(self.term, 0),
                    None => {}
                }
            }
            MessageKind::PreVoteResp { reject } if self.role == Role::PreCandidate => {
                match self.poll(m.from, !reject) {
                    Some(true) => self.campaign_real(false),
                    Some(false) => self.become_follower(self.term, 0),
                    None => {}
                }
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.kind {
            MessageKind::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_append(m.from, prev_index, prev_term, &entries, commit);
            }
            MessageKind::Heartbeat { commit, read_seq } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.log.commit_to(commit);
                self.send(m.from, MessageKind::HeartbeatResp { read_seq });
            }
            MessageKind::Snapshot { meta } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_snapshot(m.from, meta);
            }
            MessageKind::TimeoutNow => self.campaign(true),
            MessageKind::TransferLeader { target } if self.leader != 0 && self.leader != m.from => {
                let leader = self.leader;
                self.send(leader, MessageKind::TransferLeader { target });
            }
            MessageKind::ReadIndexResp { index, ctx } => {
                self.read_states.push(ReadState { index, ctx });
            }
            _ => {}
        }
    }

    fn handle_append(
        &mut self,
        from: u64,
        prev_index: u64,
        prev_term: u64,
        entries: &[Entry],
        commit: u64,
    ) {
        if prev_index < self.log.committed {
            self.ack_committed(from);
            return;
        }
        match self.log.maybe_append(prev_index, prev_term, entries) {
            Some(last_new) => {
                self.log.commit_to(commit.min(last_new));
                self.send(
                    from,
                    MessageKind::AppendResp {
                        reject: false,
                        index: last_new,
                        hint_index: 0,
                        hint_term: 0,
                    },
                );
            }
            None => {
                let hint = prev_index.min(self.log.last_index());
                let hint = self.log.find_conflict_by_term(hint, prev_term);
                let hint_term = self.log.term(hint).unwrap_or(0);
                self.send(
                    from,
                    MessageKind::AppendResp {
                        reject: true,
                        index: prev_index,
                        hint_index: hint,
                        hint_term,
                    },
                );
            }
        }
    }

    /// Tells the leader this node holds everything up to its commit index
    /// (for an Append or Snapshot that is already covered, or just installed).
    fn ack_committed(&mut self, from: u64) {
        let c = self.log.committed;
        self.send(
            from,
            MessageKind::AppendResp {
                reject: false,
                index: c,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    fn handle_snapshot(&mut self, from: u64, meta: SnapshotMeta) {
        if meta.index <= self.log.committed {
            self.ack_committed(from);
            return;
        }
        if self.log.match_term(meta.index, meta.term) {
            // We have the entries: just fast-forward the commit.
            self.log.commit_to(meta.index);
        } else {
            self.log.restore(meta.index, meta.term);
            self.conf = meta.conf_state.clone();
            self.conf_history = vec![(meta.index, meta.conf_state.clone())];
            self.unapplied_confs.clear();
            self.snap_meta = meta.clone();
            self.pending_snapshot = Some(meta);
        }
        self.ack_committed(from);
    }

    fn step_leader(&mut self, m: Message) {
        match m.kind {
            MessageKind::AppendResp {
                reject,
                index,
                hint_index,
                hint_term,
            } => self.handle_append_resp(m.from, reject, index, hint_index, hint_term),
            MessageKind::HeartbeatResp { read_seq } => self.handle_heartbeat_resp(m.from, read_seq),
            MessageKind::ReadIndex { ctx } if self.prs.contains_key(&m.from) => {
                self.handle_read(m.from, ctx);
            }
            MessageKind::TransferLeader { target } => self.transfer_leader(target),
            _ => {}
        }
    }

    fn handle_append_resp(
        &mut self,
        from: u64,
        reject: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    ) {
        let last = self.log.last_index();
        let Some(pr) = self.prs.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if reject {
            let mut next_probe = hint_index.min(last);
            if hint_term > 0 {
                next_probe = self.log.find_conflict_by_term(next_probe, hint_term);
            }
            let pr = self.prs.get_mut(&from).expect("checked above");
            if pr.maybe_decr_to(index, next_probe) {
                self.send_append(from, false);
                // In probe state with nothing new, still probe.
                if self
                    .prs
                    .get(&from)
                    .is_some_and(|p| !p.probe_sent && p.state == ProgressState::Probe)
                {
                    self.send_append(from, true);
                }
            }
            return;
        }
        if index > last {
            return; // acknowledges entries we never sent
        }
        let first = self.log.first_index();
        if pr.maybe_update(index) {
            match pr.state {
                ProgressState::Probe => pr.become_replicate(),
                ProgressState::Snapshot { .. } if pr.matched + 1 >= first => pr.become_replicate(),
                _ => {}
            }
            if self.maybe_commit() {
                self.bcast_append(true);
            }
            while self.send_append(from, false) {}
            if self.transferee == Some(from)
                && self
                    .prs
                    .get(&from)
                    .is_some_and(|p| p.matched == self.log.last_index())
            {
                self.lease_revoked = true;
                self.send(from, MessageKind::TimeoutNow);
            }
        }
    }

    fn handle_heartbeat_resp(&mut self, from: u64, read_seq: u64) {
        let last = self.log.last_index();
        let max_inflight = self.cfg.max_inflight_msgs;
        let Some(pr) = self.prs.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.len() >= max_inflight {
            pr.inflights.pop_front();
        }
        let behind = pr.matched < last;
        if read_seq > pr.read_ack {
            pr.read_ack = read_seq;
        }
        if behind {
            self.send_append(from, true);
        }
        self.advance_reads();
    }

    /// Sends an Append (or a snapshot request) to `to` if flow control
    /// allows. Returns whether a message with entries (or an empty one when
    /// `send_if_empty`) was sent.
    fn send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let max_inflight = self.cfg.max_inflight_msgs;
        let last = self.log.last_index();
        let Some(pr) = self.prs.get_mut(&to) else {
            return false;
        };
        if pr.is_paused(max_inflight) {
            return false;
        }
        pr.next = pr.next.clamp(1, last + 1);
        let prev = pr.next - 1;
        let prev_term = self.log.term(prev);
        let ents = self.log.slice(
            pr.next,
            last + 1,
            self.cfg.max_size_per_msg,
            self.cfg.max_entries_per_msg,
        );
        match (prev_term, ents) {
            (Some(prev_term), Some(entries)) => {
                if entries.is_empty() && !send_if_empty {
                    return false;
                }
                pr.sent_entries(entries.last().map(|e| e.index));
                let commit = self.log.committed;
                self.send(
                    to,
                    MessageKind::Append {
                        prev_index: prev,
                        prev_term,
                        entries,
                        commit,
                    },
                );
                true
            }
            _ => {
                // The entries the follower needs were compacted away.
                let meta = self.snap_meta.clone();
                pr.become_snapshot(meta.index);
                let message = Message {
                    from: self.id,
                    to,
                    term: self.term,
                    kind: MessageKind::Snapshot { meta: meta.clone() },
                };
                self.snapshot_requests
                    .push(SnapshotRequest { to, meta, message });
                false
            }
        }
    }

    fn bcast_append(&mut self, send_if_empty: bool) {
        let peers: Vec<u64> = self.prs.keys().copied().collect();
        for to in peers {
            self.send_append(to, send_if_empty);
        }
    }

    fn bcast_heartbeat(&mut self) {
        let peers: Vec<(u64, u64)> = self.prs.iter().map(|(&id, p)| (id, p.matched)).collect();
        let read_seq = self.read_seq;
        for (to, matched) in peers {
            let commit = self.log.committed.min(matched);
            self.send(to, MessageKind::Heartbeat { commit, read_seq });
        }
        self.read_heartbeat_due = false;
    }

    fn append_entry(&mut self, kind: EntryKind, data: Vec<u8>) {
        let e = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            kind,
            data,
        };
        self.log.entries.push(e);
        self.bcast_due = true;
    }

    fn check_can_propose(&self) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: (self.leader != 0).then_some(self.leader),
            });
        }
        if self.transferee.is_some() {
            return Err(RaftError::NotLeader { leader: None });
        }
        Ok(())
    }

    /// Advances the commit index to the highest index durable on a quorum
    /// of voters, if that entry is of the current term (Raft §5.4.2).
    fn maybe_commit(&mut self) -> bool {
        let mut matched: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|&v| {
                if v == self.id {
                    self.log.persisted
                } else {
                    self.prs.get(&v).map_or(0, |p| p.matched)
                }
            })
            .collect();
        if matched.is_empty() {
            return false;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let mci = matched[self.quorum() - 1];
        if mci > self.log.committed && self.log.term(mci) == Some(self.term) {
            self.log.committed = mci;
            if !self.reads_before_commit.is_empty() {
                for (from, ctx) in std::mem::take(&mut self.reads_before_commit) {
                    self.handle_read(from, ctx);
                }
            }
            true
        } else {
            false
        }
    }

    // ---- internals: reads ------------------------------------------------------

    fn handle_read(&mut self, from: u64, ctx: Vec<u8>) {
        if self.log.term(self.log.committed) != Some(self.term) {
            // Our commit index may lag until an entry of our term commits.
            self.reads_before_commit.push((from, ctx));
            return;
        }
        let index = self.log.committed;
        if self.conf.voters.len() == 1
            || (self.read_lease_holds && self.lease_read_index().is_some())
        {
            self.deliver_read(PendingRead {
                seq: 0,
                index,
                from,
                ctx,
            });
            return;
        }
        self.read_seq += 1;
        self.pending_reads.push_back(PendingRead {
            seq: self.read_seq,
            index,
            from,
            ctx,
        });
        self.read_heartbeat_due = true;
    }

    fn advance_reads(&mut self) {
        if self.pending_reads.is_empty() || self.role != Role::Leader {
            return;
        }
        let confirmed = self.confirmed_read_round();
        while self
            .pending_reads
            .front()
            .is_some_and(|r| r.seq <= confirmed)
        {
            if let Some(r) = self.pending_reads.pop_front() {
                self.deliver_read(r);
            }
        }
    }

    fn deliver_read(&mut self, r: PendingRead) {
        if r.from == self.id {
            self.read_states.push(ReadState {
                index: r.index,
                ctx: r.ctx,
            });
        } else {
            self.send(
                r.from,
                MessageKind::ReadIndexResp {
                    index: r.index,
                    ctx: r.ctx,
                },
            );
        }
    }
}
