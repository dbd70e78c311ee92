//! The replication driver: joins the sans-IO Raft core
//! ([`keel_raft::core::RawNode`]), the WAL, the QUIC transport and the apply
//! thread.
//!
//! One tokio task owns the core. It feeds it ticks, peer messages and local
//! requests, and for every [`Ready`]: sends `messages` at once (a leader
//! replicates before its own write is durable), hands the entries and hard
//! state to the persister thread, which group-commits everything queued in
//! one WAL write + fdatasync and only then sends `persisted_messages` and
//! reports `on_persisted`. `committed_entries` (which the core hands out only
//! once durable here) go straight to the apply thread, in log order.
//!
//! A full disk does not stop the member: the persister retries the refused
//! batch until space returns (nothing of it is acknowledged meanwhile) and
//! raises [`Shared::no_space`] so proposals fail fast with a clear error.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use keel_raft::core::{
    ConfChange, Entry, HardState, Message, RaftError, RawNode, Ready, Role, SnapshotMeta, Status,
};
use keel_raft::read_lease::ReadLease;
use keel_raft::transport::{Incoming, ReceivedSnapshot, Transport};

use super::waiters::{Outcome, Waiters};
use keel_raft::wal::{SnapshotMark, Wal, WalError};
use tokio::sync::{mpsc, oneshot};

/// At most this many queued inputs, as many queued peer messages and as many
/// persistence events are taken into one Ready.
const DRAIN_MAX: usize = 1024;

/// Transport payload tag: a Raft message.
const TAG_RAFT: u8 = 0;
/// Transport payload tag: a proposal forwarded to the leader.
const TAG_PROPOSAL: u8 = 1;
/// Transport payload tag: a membership change forwarded to the leader.
const TAG_CONF_CHANGE: u8 = 2;
/// Transport payload tag: "you were removed from the cluster" (a removed
/// member may never see its own removal committed: its peers stop talking
/// to it), so it stops instead of lingering.
const TAG_REMOVED: u8 = 3;

/// State the driver shares with the rest of the member.
#[derive(Debug, Default)]
pub struct Shared {
    /// The known leader (0: none).
    pub leader: AtomicU64,
    /// The current term.
    pub term: AtomicU64,
    /// The commit index.
    pub commit: AtomicU64,
    /// The last log index.
    pub last_index: AtomicU64,
    /// True while this member leads.
    pub is_leader: AtomicBool,
    /// True while the WAL refuses writes for lack of space.
    pub no_space: AtomicBool,
    /// True once a write or fsync failed: the member must stop.
    pub failed: AtomicBool,
    /// True once this member was removed from the cluster: it must stop.
    pub removed: AtomicBool,
}

/// What the apply thread receives, in log order.
#[derive(Debug)]
pub enum ApplyItem {
    /// Committed entries.
    Entries(Vec<Entry>),
    /// A snapshot from the leader, already durable at `path`: replace the
    /// state machine with it.
    Snapshot {
        /// What it covers.
        meta: SnapshotMeta,
        /// The snapshot file (in the member's snap dir).
        path: PathBuf,
    },
}

/// Requests to the driver.
#[derive(Debug)]
pub enum Input {
    /// Propose an entry. Only a refusal is answered here (through
    /// `waiters`); an accepted entry is answered when applied.
    Propose {
        /// The proposal's id (the key in `waiters`).
        id: u64,
        /// The encoded command.
        data: Vec<u8>,
    },
    /// Propose a membership change.
    ProposeConfChange {
        /// The change.
        cc: ConfChange,
        /// Accepted, or why not.
        done: oneshot::Sender<Result<(), RaftError>>,
    },
    /// A linearizable read: answered with the index to wait for.
    ReadIndex {
        /// Unique per request.
        ctx: u64,
        /// The read index.
        done: oneshot::Sender<u64>,
    },
    /// Hand leadership to another member.
    TransferLeader(u64),
    /// The apply thread applied a membership change.
    ConfApplied(ConfChange),
    /// The apply thread applied everything up to this index.
    Applied(u64),
    /// A snapshot was saved at `index` (file at `path`): compact the log.
    Compact {
        /// The snapshot's index.
        index: u64,
        /// Its file.
        path: PathBuf,
    },
    /// The core's status.
    Status(oneshot::Sender<Status>),
    /// A member's peer address (after a membership change).
    AddPeer(u64, SocketAddr),
    /// Stop the driver.
    Stop,
}

/// Internal events (from the persister and snapshot senders).
enum Event {
    Persisted { index: u64, term: u64 },
    SnapshotSent { to: u64, ok: bool },
}

/// One Ready's durable part, for the persister, which handles batches
/// strictly in order.
#[derive(Default)]
struct Batch {
    entries: Vec<Entry>,
    /// A hard state that must be synced (new term or vote, or with entries).
    hard_state: Option<HardState>,
    /// A hard state that moved only the commit index: written, not synced.
    commit_only: Option<HardState>,
    /// Sent once everything before them and the batch itself is durable.
    persisted_messages: Vec<Message>,
    /// A snapshot from the leader to mark in the WAL (after everything
    /// queued before it); the outcome goes back to the waiting driver.
    snapshot: Option<(SnapshotMark, std_mpsc::SyncSender<Result<(), WalError>>)>,
}

/// Everything the driver needs to start.
pub struct DriverParts {
    /// The core, restored from disk.
    pub node: RawNode,
    /// The WAL.
    pub wal: Arc<Wal>,
    /// The transport and its incoming queues.
    pub transport: (Transport, Incoming),
    /// Where committed entries go.
    pub apply_tx: std_mpsc::Sender<ApplyItem>,
    /// Shared status.
    pub shared: Arc<Shared>,
    /// The member's snapshot dir (received snapshots are moved there).
    pub snap_dir: PathBuf,
    /// The latest local snapshot, if any.
    pub latest_snapshot: Option<(SnapshotMeta, PathBuf)>,
    /// Tick period (`--heartbeat-interval`).
    pub tick: Duration,
    /// Where the highest index handed to the apply thread is noted.
    pub commit_hint: super::commit_hint::CommitHint,
    /// Proposals waiting for their outcome (refusals are answered here).
    pub waiters: Arc<Waiters>,
}

/// Starts the driver task; returns its input queue.
pub fn spawn(parts: DriverParts) -> mpsc::UnboundedSender<Input> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (persist_tx, persist_rx) = std_mpsc::channel::<Batch>();
    {
        let wal = parts.wal.clone();
        let transport = parts.transport.0.clone();
        let shared = parts.shared.clone();
        let ev_tx = ev_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-persist".into())
            .spawn(move || persister(persist_rx, wal, transport, shared, ev_tx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the persister thread");
            parts.shared.failed.store(true, Ordering::SeqCst);
        }
    }
    let (transport, incoming) = parts.transport;
    let lease = ReadLease::new(parts.tick, parts.node.config().election_tick);
    let driver = Driver {
        node: parts.node,
        transport,
        persist_tx,
        apply_tx: parts.apply_tx,
        shared: parts.shared,
        snap_dir: parts.snap_dir,
        latest_snapshot: parts.latest_snapshot,
        commit_hint: parts.commit_hint,
        waiters: parts.waiters,
        received: BTreeMap::new(),
        reads: HashMap::new(),
        ev_tx,
        sent_hs: HardState::default(),
        held_commit: None,
        hint_failed: false,
        lease,
        ready_term: 0,
    };
    tokio::spawn(driver.run(rx, ev_rx, incoming, parts.tick));
    tx
}

struct Driver {
    node: RawNode,
    transport: Transport,
    persist_tx: std_mpsc::Sender<Batch>,
    apply_tx: std_mpsc::Sender<ApplyItem>,
    shared: Arc<Shared>,
    snap_dir: PathBuf,
    latest_snapshot: Option<(SnapshotMeta, PathBuf)>,
    /// Snapshot files received from the leader, by index.
    received: BTreeMap<u64, PathBuf>,
    /// Pending linearizable reads, by context.
    reads: HashMap<Vec<u8>, oneshot::Sender<u64>>,
    ev_tx: mpsc::UnboundedSender<Event>,
    /// The hard state last handed to the persister, or held for it.
    sent_hs: HardState,
    /// A hard state that moved only the commit index, held back until the
    /// next batch that goes to the persister anyway (see `process_ready`).
    held_commit: Option<HardState>,
    /// The last commit-hint write failed.
    hint_failed: bool,
    commit_hint: super::commit_hint::CommitHint,
    waiters: Arc<Waiters>,
    /// The leader's read lease (linearizable reads without a round trip).
    lease: ReadLease,
    /// The node's term when the last Ready was taken: a Ready being filled
    /// is handed over before a message is stepped in another term.
    ready_term: u64,
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.push(tag);
    v.extend_from_slice(body);
    v
}

fn send_all(transport: &Transport, msgs: Vec<Message>) {
    for m in msgs {
        keel_raft::failpoint::crash_point("raft::before_send");
        transport.send(m.to, frame(TAG_RAFT, &m.encode()));
    }
}

impl Driver {
    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut incoming: Incoming,
        tick: Duration,
    ) {
        // Start ticking at a random point within the first tick: members
        // started together (tests, `keel up`) would otherwise tick in step,
        // and two followers that draw the same whole number of ticks for
        // their election timeout would campaign within a millisecond of
        // each other after the leader dies, split the vote and lose another
        // election timeout.
        let phase = tick.mul_f64(rand::random::<f64>());
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A lone voter needs no election timeout: campaign at once.
        if self.node.conf_state().voters.len() == 1
            && self.node.conf_state().voters.contains(&self.node.id())
        {
            self.node.campaign_now();
            self.process_ready();
        }
        'run: loop {
            tokio::select! {
                _ = ticker.tick() => self.node.tick(),
                input = inputs.recv() => match input {
                    None | Some(Input::Stop) => break,
                    Some(i) => self.handle_input(i),
                },
                Some(ev) = events.recv() => self.handle_event(ev),
                Some((from, bytes)) = incoming.messages.recv() => self.handle_peer(from, bytes),
                Some(snap) = incoming.snapshots.recv() => self.handle_snapshot(snap),
            }
            // Take whatever else is queued before building a Ready, so one
            // Ready (one WAL write, one append per follower) carries many
            // proposals, forwarded ones included, and a follower makes a run
            // of appends durable with one write. Bounded, so a flood on one
            // queue cannot hold back the others or the ticks.
            for _ in 0..DRAIN_MAX {
                let Ok(i) = inputs.try_recv() else { break };
                if matches!(i, Input::Stop) {
                    break 'run;
                }
                self.handle_input(i);
            }
            for _ in 0..DRAIN_MAX {
                let Ok((from, bytes)) = incoming.messages.try_recv() else {
                    break;
                };
                self.handle_peer(from, bytes);
            }
            for _ in 0..DRAIN_MAX {
                let Ok(ev) = events.try_recv() else { break };
                self.handle_event(ev);
            }
            self.process_ready();
            if self.shared.failed.load(Ordering::SeqCst) {
                break;
            }
        }
        self.transport.shutdown().await;
    }

    fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Persisted { index, term } => self.node.on_persisted(index, term),
            Event::SnapshotSent { to, ok } => self.node.report_snapshot(to, ok),
        }
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Propose { id, data } => {
                if let Err(e) = self.propose(data) {
                    self.waiters.answer(id, Outcome::Refused(e));
                }
                tracing::trace!(target: "keel::lat", idx = self.node.last_index(), "proposed");
            }
            Input::ProposeConfChange { cc, done } => {
                let r = match self.node.propose_conf_change(cc) {
                    Err(RaftError::NotLeader {
                        leader: Some(leader),
                    }) if leader != self.node.id() => {
                        self.transport
                            .send(leader, frame(TAG_CONF_CHANGE, &cc.encode()));
                        Ok(())
                    }
                    r => r,
                };
                let _ = done.send(r);
            }
            Input::ReadIndex { ctx, done } => {
                // The core drops reads on a leadership change; their callers
                // retry with a new context and stop listening for the old.
                if self.reads.len() >= 1024 {
                    self.reads.retain(|_, tx| !tx.is_closed());
                }
                // The clock is read after the request arrived: a lease that
                // holds now covers a read invoked before now.
                let now = Instant::now();
                if let Some(index) = self.node.lease_read_index() {
                    if self.lease.holds(self.node.term(), now) {
                        let _ = done.send(index);
                        return;
                    }
                }
                let ctx = ctx.to_le_bytes().to_vec();
                self.reads.insert(ctx.clone(), done);
                self.node.read_index(ctx);
            }
            Input::TransferLeader(to) => self.node.transfer_leader(to),
            Input::ConfApplied(cc) => {
                self.node.apply_conf_change(&cc);
                if let ConfChange::RemoveNode(id) = cc {
                    if id == self.node.id() {
                        self.removed();
                    } else {
                        // Tell it, then forget it once the notice had time to go.
                        self.transport.send(id, vec![TAG_REMOVED]);
                        let transport = self.transport.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            transport.remove_peer(id);
                        });
                    }
                }
            }
            Input::Applied(index) => self.node.on_applied(index),
            Input::Compact { index, path } => match self.node.compact(index) {
                Ok(meta) => self.latest_snapshot = Some((meta, path)),
                Err(e) => tracing::debug!(error = %e, "log compaction skipped"),
            },
            Input::Status(done) => {
                let _ = done.send(self.node.status());
            }
            Input::AddPeer(id, addr) => {
                if id != self.node.id() {
                    self.transport.add_peer(id, addr);
                }
            }
            Input::Stop => {}
        }
    }

    fn removed(&mut self) {
        if !self.shared.removed.swap(true, Ordering::SeqCst) {
            tracing::warn!("this member has been permanently removed from the cluster; stopping");
        }
    }

    /// Proposes locally, or forwards to the leader (as etcd does).
    /// Appends `data` as the leader, or passes it to the known leader (as
    /// etcd forwards a follower's writes).
    fn propose(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        let leader = self.node.leader();
        if self.node.role() != Role::Leader && leader != 0 && leader != self.node.id() {
            self.transport.send(leader, frame(TAG_PROPOSAL, &data));
            return Ok(());
        }
        self.node.propose(data)
    }

    fn handle_peer(&mut self, from: u64, bytes: Vec<u8>) {
        let Some((&tag, body)) = bytes.split_first() else {
            return;
        };
        match tag {
            TAG_RAFT => match Message::decode(body) {
                Ok(m) if m.from == from => {
                    // A newer term may make the node drop entries that the
                    // pending Ready appends and acknowledges: hand that Ready
                    // over first, so no acknowledgement ever goes out for
                    // entries the WAL never got (as when each message made
                    // its own Ready). The same if the term already moved
                    // since the last Ready (a TimeoutNow in this round).
                    let term = self.node.term();
                    if (m.term > term || term != self.ready_term) && self.node.has_ready() {
                        self.process_ready();
                    }
                    tracing::trace!(target: "keel::lat", from, kind = ?std::mem::discriminant(&m.kind), "peer msg");
                    // A follower's read: answered at once while the lease
                    // holds (the clock is read after it arrived).
                    let read = matches!(m.kind, keel_raft::core::MessageKind::ReadIndex { .. });
                    if read {
                        let holds = self.lease.holds(self.node.term(), Instant::now());
                        self.node.set_read_lease(holds);
                    }
                    if let Err(e) = self.node.step(m) {
                        tracing::debug!(from, error = %e, "peer message ignored");
                    }
                    if read {
                        self.node.set_read_lease(false);
                    }
                }
                Ok(m) => tracing::warn!(
                    from,
                    claimed = m.from,
                    "peer message with a forged sender dropped"
                ),
                Err(e) => tracing::warn!(from, error = %e, "undecodable peer message dropped"),
            },
            TAG_PROPOSAL => {
                // A follower's client write: propose it here (or pass it on
                // if leadership moved; the proposer's timeout covers loss).
                if let Err(e) = self.propose(body.to_vec()) {
                    tracing::debug!(from, error = %e, "forwarded proposal dropped");
                }
            }
            TAG_CONF_CHANGE => match ConfChange::decode(body) {
                Ok(cc) => {
                    if let Err(e) = self.node.propose_conf_change(cc) {
                        tracing::warn!(from, error = %e, "forwarded membership change refused");
                    }
                }
                Err(e) => tracing::warn!(from, error = %e, "undecodable membership change dropped"),
            },
            TAG_REMOVED => {
                let conf = self.node.conf_state();
                if conf.contains(from) || conf.members().next().is_none() {
                    self.removed();
                }
            }
            t => tracing::warn!(from, tag = t, "unknown peer payload dropped"),
        }
    }

    fn handle_snapshot(&mut self, snap: ReceivedSnapshot) {
        let msg = match Message::decode(&snap.meta) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(from = snap.from, error = %e, "snapshot with bad metadata dropped");
                let _ = std::fs::remove_file(&snap.path);
                return;
            }
        };
        if let keel_raft::core::MessageKind::Snapshot { meta } = &msg.kind {
            self.received.insert(meta.index, snap.path);
        }
        if let Err(e) = self.node.step(msg) {
            tracing::debug!(error = %e, "snapshot message ignored");
        }
    }

    fn process_ready(&mut self) {
        let term = self.node.term();
        self.ready_term = term;
        self.lease
            .on_confirmed(term, self.node.confirmed_read_round());
        while self.node.has_ready() {
            let rd = self.node.ready();
            // Noted before the Ready's heartbeats leave (see read_lease).
            self.lease
                .on_ready(self.node.term(), self.node.read_round(), Instant::now());
            self.handle_ready(rd);
        }
        let st = &self.shared;
        st.commit.store(self.node.commit(), Ordering::Relaxed);
        st.last_index
            .store(self.node.last_index(), Ordering::Relaxed);
    }

    fn handle_ready(&mut self, rd: Ready) {
        let Ready {
            soft_state,
            hard_state,
            entries,
            snapshot,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
            snapshot_requests,
        } = rd;
        if let Some(ss) = soft_state {
            // As etcd logs elections: rare, and what an operator looks for
            // first when writes stalled.
            tracing::info!(
                term = self.node.term(),
                role = ?ss.role,
                leader = format_args!("{:x}", ss.leader),
                "raft state changed"
            );
            self.shared.leader.store(ss.leader, Ordering::SeqCst);
            self.shared
                .is_leader
                .store(ss.role == Role::Leader, Ordering::SeqCst);
            if ss.role != Role::Leader {
                // Reads waiting on a lost leadership are dropped by the
                // core; their callers time out and retry.
            }
        }
        self.shared.term.store(self.node.term(), Ordering::SeqCst);
        if let Some(meta) = snapshot {
            self.install_snapshot(meta);
        }
        // Committed entries are durable here already (the core hands out
        // only those): straight to the apply thread, in order, first thing,
        // since a client waits on them.
        if let Some(last) = committed_entries.last() {
            // Noted before anything is applied: a restart must never know
            // less than what clients may have seen (see commit_hint).
            match self.commit_hint.record(last.index) {
                Ok(()) => self.hint_failed = false,
                Err(e) => {
                    tracing::warn!(error = %e, "could not write the commit hint");
                    self.hint_failed = true;
                }
            }
        }
        if !committed_entries.is_empty()
            && self
                .apply_tx
                .send(ApplyItem::Entries(committed_entries))
                .is_err()
        {
            self.shared.failed.store(true, Ordering::SeqCst);
        }
        send_all(&self.transport, messages);
        // etcd's MustSync: a new term or vote, or entries, need an
        // fdatasync; a hard state that only moves the commit index is
        // written without one.
        let (hard_state, commit_only) = match hard_state {
            Some(hs) if hs.term == self.sent_hs.term && hs.vote == self.sent_hs.vote => {
                (None, Some(hs))
            }
            hs => (hs, None),
        };
        if let Some(hs) = hard_state.or(commit_only) {
            self.sent_hs = hs;
        }
        // A commit-only hard state does not wake the persister by itself
        // (one more write and thread wake-up per commit): it rides with the
        // next batch. Until then the commit hint, written above before the
        // entries were handed to the apply thread, is what a restart after
        // a crash of the process learns the commit index from (so while the
        // hint cannot be written, the hard state goes at once, as before);
        // after a power cut both may be older, and an unsynced hard state
        // could be lost the same way.
        let commit_only = match (commit_only, hard_state) {
            (_, Some(_)) => {
                self.held_commit = None;
                None
            }
            (Some(hs), None) => {
                if entries.is_empty() && persisted_messages.is_empty() && !self.hint_failed {
                    self.held_commit = Some(hs);
                    None
                } else {
                    self.held_commit = None;
                    Some(hs)
                }
            }
            (None, None) if !entries.is_empty() || !persisted_messages.is_empty() => {
                self.held_commit.take()
            }
            (None, None) => None,
        };
        if !entries.is_empty()
            || hard_state.is_some()
            || commit_only.is_some()
            || !persisted_messages.is_empty()
        {
            let batch = Batch {
                entries,
                hard_state,
                commit_only,
                persisted_messages,
                snapshot: None,
            };
            if self.persist_tx.send(batch).is_err() {
                self.shared.failed.store(true, Ordering::SeqCst);
            }
        }
        for rs in read_states {
            if let Some(done) = self.reads.remove(&rs.ctx) {
                let _ = done.send(rs.index);
            }
        }
        for req in snapshot_requests {
            let Some((meta, path)) = self.latest_snapshot.clone() else {
                self.node.report_snapshot(req.to, false);
                continue;
            };
            if meta.index != req.meta.index {
                self.node.report_snapshot(req.to, false);
                continue;
            }
            let transport = self.transport.clone();
            let ev_tx = self.ev_tx.clone();
            let body = frame(TAG_RAFT, &req.message.encode());
            tokio::spawn(async move {
                // The receiver steps the message itself: strip our tag.
                let meta_bytes = body[1..].to_vec();
                let ok = match transport.send_snapshot(req.to, meta_bytes, path).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(to = req.to, error = %e, "snapshot transfer failed");
                        false
                    }
                };
                let _ = ev_tx.send(Event::SnapshotSent { to: req.to, ok });
            });
        }
    }

    /// Makes a snapshot received from the leader durable (moved into the
    /// snap dir, marked in the WAL) and queues it for the apply thread.
    fn install_snapshot(&mut self, meta: SnapshotMeta) {
        let Some(src) = self.received.remove(&meta.index) else {
            tracing::error!(index = meta.index, "snapshot to install was never received");
            self.shared.failed.store(true, Ordering::SeqCst);
            return;
        };
        self.received.retain(|i, p| {
            if *i < meta.index {
                let _ = std::fs::remove_file(p);
                false
            } else {
                true
            }
        });
        let dst = self.snap_dir.join(super::snapshot::file_name(meta.index));
        let durable = std::fs::rename(&src, &dst)
            .and_then(|()| std::fs::File::open(&self.snap_dir)?.sync_all())
            .map_err(|e| e.to_string())
            .and_then(|()| {
                // Through the persister, so that the mark lands after every
                // batch queued before it (a batch of older entries written
                // after the mark would break the log's order). Rare and
                // short: block for it.
                let (tx, rx) = std_mpsc::sync_channel(1);
                let mark = SnapshotMark {
                    index: meta.index,
                    term: meta.term,
                };
                let batch = Batch {
                    snapshot: Some((mark, tx)),
                    ..Batch::default()
                };
                self.persist_tx
                    .send(batch)
                    .map_err(|_| "the persister stopped".to_string())?;
                rx.recv()
                    .map_err(|_| "the persister stopped".to_string())?
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = durable {
            tracing::error!(error = %e, "installing a snapshot failed");
            self.shared.failed.store(true, Ordering::SeqCst);
            return;
        }
        self.latest_snapshot = Some((meta.clone(), dst.clone()));
        let _ = self.apply_tx.send(ApplyItem::Snapshot {
            meta: meta.clone(),
            path: dst,
        });
        self.node.on_snapshot_installed(&meta);
    }
}

/// What the persister writes in one go: contiguous entries and the newest
/// hard state of a run of batches.
#[derive(Default)]
struct Group {
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    must_sync: bool,
    messages: Vec<Vec<Message>>,
}

/// The persister thread: takes the driver's batches in order and makes them
/// durable, several at a time (one WAL write and fdatasync for a run of
/// batches whose entries continue one another), on this thread
/// ([`Wal::append_direct`]); then sends the messages that waited on them and
/// reports what is durable. A batch that overwrites or jumps (a follower
/// truncating a conflicting suffix, entries after a snapshot) starts a new
/// write, so every acknowledgement stays true when it is sent.
fn persister(
    rx: std_mpsc::Receiver<Batch>,
    wal: Arc<Wal>,
    transport: Transport,
    shared: Arc<Shared>,
    ev_tx: mpsc::UnboundedSender<Event>,
) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let mut group = Group::default();
        for b in batches {
            if let Some((mark, reply)) = b.snapshot {
                if !flush(&mut group, &wal, &transport, &shared, &ev_tx) {
                    let _ = reply.send(Err(WalError::Closed));
                    return;
                }
                let _ = reply.send(wal.save_snapshot_mark(mark));
            }
            let continues = match (group.entries.last(), b.entries.first()) {
                (Some(l), Some(f)) => f.index == l.index + 1,
                _ => true,
            };
            if !continues && !flush(&mut group, &wal, &transport, &shared, &ev_tx) {
                return;
            }
            group.must_sync |= !b.entries.is_empty() || b.hard_state.is_some();
            group.entries.extend(b.entries);
            if let Some(hs) = b.hard_state.or(b.commit_only) {
                group.hard_state = Some(hs);
            }
            group.messages.push(b.persisted_messages);
        }
        if !flush(&mut group, &wal, &transport, &shared, &ev_tx) {
            return;
        }
    }
}

/// Writes `group` (synced if it must be), then sends its messages and
/// reports its last entry durable. False if the WAL failed for good (the
/// member must stop).
fn flush(
    group: &mut Group,
    wal: &Wal,
    transport: &Transport,
    shared: &Shared,
    ev_tx: &mpsc::UnboundedSender<Event>,
) -> bool {
    let Group {
        entries,
        hard_state,
        must_sync,
        messages,
    } = std::mem::take(group);
    let last = entries.last().map(|e| (e.index, e.term));
    tracing::trace!(target: "keel::lat", idx = last.map_or(0, |l| l.0), "persist start");
    loop {
        let r = match (must_sync, hard_state) {
            (true, _) => wal.append_direct(&entries, hard_state),
            (false, Some(hs)) => wal.save_hard_state_unsynced(hs),
            (false, None) => Ok(()),
        };
        match r {
            Ok(()) => {
                shared.no_space.store(false, Ordering::SeqCst);
                break;
            }
            Err(WalError::NoSpace { .. }) => {
                // Nothing of it was written: retry until space returns.
                if !shared.no_space.swap(true, Ordering::SeqCst) {
                    tracing::warn!("WAL: no space left; writes wait for space");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL write failed: stopping the member");
                shared.failed.store(true, Ordering::SeqCst);
                return false;
            }
        }
    }
    tracing::trace!(target: "keel::lat", idx = last.map_or(0, |l| l.0), "persist end");
    for m in messages {
        send_all(transport, m);
    }
    if let Some((index, term)) = last {
        let _ = ev_tx.send(Event::Persisted { index, term });
    }
    true
}
