//! A store member: the state machine, the watch hub, and the replication
//! that feeds them (Raft over QUIC, with the WAL underneath).
//!
//! - [`config`]: the member's settings (etcd's flag names) and IDs.
//! - [`replication`]: the driver joining the Raft core, WAL and transport.
//! - [`snapshot`]: rkyv snapshots of the state machine.
//! - [`auto_compaction`]: the leader's own compactions
//!   (`--auto-compaction-mode`, `--auto-compaction-retention`).
//!
//! Write path: a client request is checked, encoded as an
//! `InternalRequest` with an ID unique in the cluster, and proposed to the
//! Raft core (forwarded to the leader if this member does not lead). Once a
//! quorum has it on disk it is committed; every member's apply thread
//! applies committed entries in log order, publishes their events to the
//! watch hub, and the proposing member answers its client. A lone member is
//! its own quorum. Nothing is acknowledged before it is durable on a quorum
//! and applied.
//!
//! Reads: linearizable reads wait for a ReadIndex confirmed by a quorum (and
//! for the local apply to reach it); a leader whose read lease holds (see
//! [`keel_raft::read_lease`]) skips the round trip. Serializable reads are served from
//! the local state at once.

pub mod auto_compaction;
pub mod commit_hint;
pub mod config;
pub mod replication;
pub mod snapshot;
pub mod waiters;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commit_hint::CommitHint;
use keel_raft::core::{
    ConfChange, Config as RaftConfig, EntryKind, RawNode, Restored, SnapshotMeta, Status,
};
use keel_raft::failpoint;
use keel_raft::transport::{PeerTls, Transport, TransportConfig};
use keel_raft::wal::{HardState, SnapshotMark, Wal, WalError, WalOptions};
use prost::Message as _;
use tokio::sync::{mpsc as tmpsc, oneshot, watch};
use waiters::{Outcome, Waiters};

pub use config::MemberConfig;

use crate::apply::{Applied, Limits, MemberInfo, StateMachine};
use crate::error::{Result, StoreError};
use crate::proto::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest, Member as PbMember,
};
use crate::proto::keelpb::{internal_request::Request, InternalRequest};
use crate::server::header::Header;
use crate::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use crate::watch::{SyncHandle, WatchHub, WatchHubConfig};
use replication::{ApplyItem, Input, Shared};

/// Errors opening a member.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The WAL could not be opened or recovered.
    #[error("wal: {0}")]
    Wal(#[from] WalError),
    /// A snapshot could not be read or written.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The data directory could not be prepared.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The log and the snapshots disagree.
    #[error("data dir {0}: the WAL starts after index {1} but no snapshot covers it")]
    MissingSnapshot(PathBuf, u64),
    /// The Raft core refused the recovered state.
    #[error("raft: {0}")]
    Raft(#[from] keel_raft::core::RaftError),
    /// The peer transport could not start.
    #[error("peer transport: {0}")]
    Transport(String),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Entries applied.
    pub applied: AtomicU64,
    /// Proposals that failed before being applied.
    pub proposals_failed: AtomicU64,
    /// Snapshots taken.
    pub snapshots: AtomicU64,
}

/// A running store member. See the module docs.
pub struct Member {
    cfg: MemberConfig,
    sm: Arc<RwLock<StateMachine>>,
    wal: Arc<Wal>,
    hub: Arc<WatchHub>,
    hub_sync: Mutex<Option<SyncHandle>>,
    header: Header,
    raft: tmpsc::UnboundedSender<Input>,
    shared: Arc<Shared>,
    waiters: Arc<Waiters>,
    next_id: AtomicU64,
    applied: watch::Sender<u64>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    revoking: Mutex<std::collections::HashSet<i64>>,
    /// Set while a snapshot is being written.
    snapshotting: AtomicBool,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.cfg.name)
            .finish()
    }
}

fn data_dir_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::DataDir {
        path: path.to_owned(),
        source,
    }
}

/// Applies one committed entry to the state machine during recovery or from
/// the apply thread; returns the membership change it carried, if any.
fn apply_entry(
    sm: &mut StateMachine,
    e: keel_raft::core::Entry,
    now: Instant,
) -> (Option<crate::apply::ApplyOutput>, Option<ConfChange>, u64) {
    match e.kind {
        EntryKind::ConfChange => match ConfChange::decode(&e.data) {
            Ok(cc) => {
                sm.apply_conf_change(e.index, e.term, &cc);
                (None, Some(cc), 0)
            }
            Err(err) => {
                tracing::error!(index = e.index, error = %err, "undecodable conf change skipped");
                sm.applied_index = e.index;
                (None, None, 0)
            }
        },
        EntryKind::Normal => {
            // Decoded from the entry's own buffer: keys and values are
            // slices of it, copied once into the store's record.
            let req = InternalRequest::decode(bytes::Bytes::from(e.data)).unwrap_or_else(|err| {
                tracing::error!(index = e.index, error = %err, "undecodable log entry skipped");
                InternalRequest::default()
            });
            let id = req.id;
            (Some(sm.apply(e.index, e.term, req, now)), None, id)
        }
    }
}

impl Member {
    /// Opens the member's data dir: loads the newest snapshot, replays the
    /// committed WAL after it, starts the peer transport, the Raft driver
    /// and the apply thread. Must run inside a tokio runtime.
    pub async fn open(cfg: MemberConfig) -> Result<Arc<Member>, OpenError> {
        let snap_dir = cfg.snap_dir();
        let wal_dir = cfg.wal_dir();
        for d in [&snap_dir, &wal_dir] {
            std::fs::create_dir_all(d).map_err(data_dir_err(d))?;
        }
        let id = cfg.member_id();
        let limits = Limits {
            quota_bytes: cfg.quota_backend_bytes,
            member_id: id,
        };
        let min_ttl = cfg.min_lease_ttl();
        let started = Instant::now();
        let newest = snapshot::list(&snap_dir).into_iter().next();
        let mut sm = match &newest {
            Some((_, path)) => snapshot::load(path, limits, min_ttl)?,
            None => StateMachine::new(limits, min_ttl),
        };
        let snapshot_loaded = started.elapsed();
        let (wal, recovered) = Wal::open(
            &wal_dir,
            WalOptions {
                segment_size: cfg.wal_segment_size,
                ..WalOptions::default()
            },
        )?;
        if let Some(tail) = &recovered.repaired_tail {
            tracing::warn!(?tail, "WAL: truncated a torn tail");
        }
        let mark = recovered.snapshot.as_ref().map_or(0, |m| m.index);
        if mark > sm.applied_index {
            return Err(OpenError::MissingSnapshot(wal_dir, mark));
        }
        let fresh = newest.is_none()
            && recovered.entries.is_empty()
            && recovered.hard_state == HardState::default();
        if fresh || sm.members.is_empty() {
            for (mid, name, url) in cfg.initial_members() {
                sm.members.insert(
                    mid,
                    MemberInfo {
                        name,
                        peer_urls: vec![url],
                        client_urls: Vec::new(),
                        learner: false,
                        in_conf: true,
                    },
                );
            }
        }
        let snap_meta = newest.as_ref().map(|_| SnapshotMeta {
            index: sm.applied_index,
            term: sm.applied_term,
            conf_state: sm.conf_state(),
        });
        // Replay what is committed; the rest stays in the log for Raft. The
        // commit hint may know more than the hard state (see commit_hint).
        let (commit_hint, hinted) = CommitHint::open(&wal_dir).map_err(data_dir_err(&wal_dir))?;
        let last_logged = recovered
            .entries
            .last()
            .map_or(mark.max(sm.applied_index), |e| e.index);
        let mut hard_state = recovered.hard_state;
        hard_state.commit = hard_state.commit.max(hinted.min(last_logged));
        let commit = hard_state.commit;
        let now = Instant::now();
        let mut replayed = 0u64;
        let entries: Vec<_> = recovered
            .entries
            .into_iter()
            .filter(|e| e.index > sm.applied_index)
            .collect();
        for e in entries.iter().filter(|e| e.index <= commit) {
            apply_entry(&mut sm, e.clone(), now);
            replayed += 1;
        }
        let restored = Restored {
            hard_state,
            conf_state: sm.conf_state(),
            snapshot: snap_meta.clone(),
            entries,
            applied: sm.applied_index,
        };
        let heartbeat = cfg.heartbeat_interval.max(Duration::from_millis(1));
        let election_tick =
            (cfg.election_timeout.as_millis() / heartbeat.as_millis()).max(2) as usize;
        let mut rc = RaftConfig::new(id);
        rc.election_tick = election_tick;
        rc.heartbeat_tick = 1;
        rc.seed ^= std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let node = RawNode::new(rc, restored)?;
        tracing::info!(
            name = %cfg.name,
            id = format_args!("{id:x}"),
            applied = sm.applied_index,
            replayed,
            revision = sm.kv.current_rev(),
            ?snapshot_loaded,
            total = ?started.elapsed(),
            "store member recovered"
        );

        // The peer transport.
        let listen = cfg
            .listen_peer_urls
            .first()
            .and_then(|u| config::peer_addr(u))
            .ok_or_else(|| {
                OpenError::Config("--listen-peer-urls: no usable quic://host:port".into())
            })?;
        let tls = match &cfg.peer_tls_files {
            Some((cert, key, ca)) => PeerTls::Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
            None => PeerTls::Auto {
                dir: cfg.data_dir.join("fixtures").join("peer"),
            },
        };
        let mut tcfg = TransportConfig::new(id, listen, tls, snap_dir.join("incoming"));
        for (mid, m) in &sm.members {
            if *mid != id {
                if let Some(addr) = m.peer_urls.first().and_then(|u| config::peer_addr(u)) {
                    tcfg.peers.insert(*mid, addr);
                }
            }
        }
        let transport = Transport::start(tcfg)
            .await
            .map_err(|e| OpenError::Transport(e.to_string()))?;

        let header = Header::new(cfg.cluster_id(), id, recovered.hard_state.term);
        let applied_index = sm.applied_index;
        let sm = Arc::new(RwLock::new(sm));
        let hub = Arc::new(WatchHub::new(
            Box::new(sm.clone()),
            WatchHubConfig::default(),
        ));
        let hub_sync = hub.start();
        let wal = Arc::new(wal);
        let shared = Arc::new(Shared::default());
        let (apply_tx, apply_rx) = mpsc::channel::<ApplyItem>();
        let waiters = Arc::new(Waiters::default());
        let raft = replication::spawn(replication::DriverParts {
            node,
            wal: wal.clone(),
            transport,
            apply_tx,
            shared: shared.clone(),
            snap_dir: snap_dir.clone(),
            latest_snapshot: snap_meta.zip(newest.map(|(_, p)| p)),
            tick: heartbeat,
            commit_hint,
            waiters: waiters.clone(),
        });
        let (applied, _) = watch::channel(applied_index);
        let member = Arc::new(Member {
            cfg,
            sm,
            wal,
            hub,
            hub_sync: Mutex::new(Some(hub_sync)),
            header,
            raft,
            shared,
            waiters,
            next_id: AtomicU64::new(rand::random::<u64>() >> 2),
            applied,
            metrics: Arc::new(Metrics::default()),
            revoking: Mutex::new(Default::default()),
            snapshotting: AtomicBool::new(false),
        });
        let m = member.clone();
        std::thread::Builder::new()
            .name("keel-apply".into())
            .spawn(move || m.apply_loop(apply_rx))
            .map_err(data_dir_err(&member.cfg.data_dir))?;
        member.spawn_publish();
        Ok(member)
    }

    /// The member's settings.
    pub fn config(&self) -> &MemberConfig {
        &self.cfg
    }

    /// The response header source (with the current term).
    pub fn header(&self) -> &Header {
        self.header
            .set_term(self.shared.term.load(Ordering::Relaxed));
        &self.header
    }

    /// The watch hub.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// The state machine, for reads.
    pub fn read(&self) -> RwLockReadGuard<'_, StateMachine> {
        self.sm.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The state machine, for the few non-replicated writes (lease renewals).
    pub fn write(&self) -> RwLockWriteGuard<'_, StateMachine> {
        self.sm.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The state machine handle.
    pub fn state(&self) -> &Arc<RwLock<StateMachine>> {
        &self.sm
    }

    /// Bytes the WAL holds on disk.
    pub fn wal_size(&self) -> u64 {
        self.wal.disk_size()
    }

    /// True once the log failed; the member must stop.
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// True once this member was removed from the cluster; it must stop.
    pub fn was_removed(&self) -> bool {
        self.shared.removed.load(Ordering::SeqCst)
    }

    /// The last log index.
    pub fn last_index(&self) -> u64 {
        self.shared.last_index.load(Ordering::Relaxed)
    }

    /// The known leader (0: none).
    pub fn leader(&self) -> u64 {
        self.shared.leader.load(Ordering::Relaxed)
    }

    /// True while this member leads.
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader.load(Ordering::Relaxed)
    }

    /// The Raft core's status.
    pub async fn raft_status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.raft.send(Input::Status(tx)).ok()?;
        rx.await.ok()
    }

    /// Proposes a write and waits until it is committed and applied here.
    pub async fn propose(&self, request: Request) -> Result<Applied> {
        if self.has_failed() {
            return Err(StoreError::Stopped);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = InternalRequest {
            id,
            request: Some(request),
        }
        .encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        let fail = |e: StoreError| {
            self.waiters.remove(id);
            self.metrics
                .proposals_failed
                .fetch_add(1, Ordering::Relaxed);
            Err(e)
        };
        loop {
            if self.shared.no_space.load(Ordering::SeqCst) {
                return fail(StoreError::Storage(
                    "no space left for the log: writes resume when space returns".into(),
                ));
            }
            let mut rx = self.waiters.insert(id);
            let proposal = Input::Propose {
                id,
                data: data.clone(),
            };
            if self.raft.send(proposal).is_err() {
                return fail(StoreError::Stopped);
            }
            let every = Duration::from_millis(50);
            let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let outcome = loop {
                tokio::select! {
                    r = &mut rx => break r,
                    _ = tokio::time::sleep_until(deadline) => return fail(StoreError::Timeout),
                    _ = check.tick() => {
                        if self.shared.no_space.load(Ordering::SeqCst) {
                            // The log cannot take it now; it stays queued and
                            // may still apply once space returns (like a
                            // timeout, the outcome is not known).
                            return fail(StoreError::Storage(
                                "no space left for the log: the write is not durable yet and may still apply when space returns".into(),
                            ));
                        }
                    }
                }
            };
            match outcome {
                Ok(Outcome::Applied(r)) => return r,
                // No leader yet (an election), or a transfer: retry.
                Ok(Outcome::Refused(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Outcome::Refused(_)) => return fail(StoreError::NoLeader),
                Err(_) => return fail(StoreError::Stopped),
            }
        }
    }

    /// Waits until a linearizable read may be served locally: a ReadIndex
    /// confirmed by a quorum, and the local apply caught up to it.
    pub async fn read_barrier(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        loop {
            let ctx = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (done, rx) = oneshot::channel();
            if self.raft.send(Input::ReadIndex { ctx, done }).is_err() {
                return Err(StoreError::Stopped);
            }
            let wait = (self.cfg.heartbeat_interval * 5).max(Duration::from_millis(200));
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(index)) => return self.wait_applied(index, deadline).await,
                _ if tokio::time::Instant::now() >= deadline => return Err(StoreError::NoLeader),
                _ => {}
            }
        }
    }

    /// Waits until this member has applied everything committed when it
    /// was called (etcd 3.5's `waitAppliedIndex`). The leader answers lease
    /// questions from its own state: a leader whose apply lags (a slow or
    /// full disk) must not call a lease granted since "not found".
    pub async fn wait_applied_commit(&self) -> Result<()> {
        let commit = self.shared.commit.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        self.wait_applied(commit, deadline).await
    }

    /// Waits until this member has applied `index`, or fails at `deadline`.
    async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) -> Result<()> {
        let mut applied = self.applied.subscribe();
        let reached = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index))
            .await
            .map(|r| r.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Proposes a membership change and waits until it is applied here.
    pub async fn change_membership(&self, cc: ConfChange, info: Option<PbMember>) -> Result<()> {
        if let Some(m) = info {
            self.propose(Request::MemberAttrs(m)).await?;
        }
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        loop {
            let (done, rx) = oneshot::channel();
            self.raft
                .send(Input::ProposeConfChange { cc, done })
                .map_err(|_| StoreError::Stopped)?;
            match rx.await {
                Ok(Ok(())) => break,
                Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                    return Err(StoreError::Storage(format!(
                        "membership change refused: {e}"
                    )))
                }
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => return Err(StoreError::Stopped),
            }
        }
        let target = self.last_index();
        let mut applied = self.applied.subscribe();
        tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= target))
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|_| StoreError::Stopped)?;
        Ok(())
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leadership(&self, to: u64) {
        let _ = self.raft.send(Input::TransferLeader(to));
    }

    /// Publishes this member's name and client URLs through the log (etcd's
    /// `publish`), once a leader is there, unless already recorded.
    fn spawn_publish(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            for _ in 0..600 {
                let Some(m) = weak.upgrade() else { return };
                let id = m.header.member_id;
                let current = m.read().members.get(&id).cloned();
                if current
                    .as_ref()
                    .is_some_and(|c| c.name == m.cfg.name && c.client_urls == m.cfg.client_urls)
                {
                    return;
                }
                let attrs = PbMember {
                    id,
                    name: m.cfg.name.clone(),
                    peer_ur_ls: Vec::new(),
                    client_ur_ls: m.cfg.client_urls.clone(),
                    is_learner: false,
                };
                match m.propose(Request::MemberAttrs(attrs)).await {
                    Ok(_) => return,
                    Err(e) => tracing::debug!(error = %e, "publishing member attributes, retrying"),
                }
                drop(m);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    fn apply_loop(self: Arc<Self>, rx: mpsc::Receiver<ApplyItem>) {
        let mut since_snapshot = 0u64;
        while let Ok(item) = rx.recv() {
            match item {
                ApplyItem::Entries(entries) => {
                    let mut last = 0;
                    for e in entries {
                        let now = Instant::now();
                        let index = e.index;
                        let (out, cc, id) = {
                            // One lock per entry: the check and the apply.
                            let mut sm = self.write();
                            if e.index <= sm.applied_index {
                                continue;
                            }
                            failpoint::crash_point("apply::before_apply");
                            let applied = apply_entry(&mut sm, e, now);
                            failpoint::crash_point("apply::after_apply");
                            applied
                        };
                        last = index;
                        self.metrics.applied.fetch_add(1, Ordering::Relaxed);
                        if let Some(out) = out {
                            if !out.events.is_empty() {
                                self.hub.notify(out.rev, &out.events);
                            }
                            self.waiters.answer(id, Outcome::Applied(out.result));
                        }
                        if let Some(cc) = cc {
                            if let ConfChange::AddNode(nid) | ConfChange::AddLearner(nid) = cc {
                                let addr = self.read().members.get(&nid).and_then(|m| {
                                    m.peer_urls.first().and_then(|u| config::peer_addr(u))
                                });
                                if let Some(addr) = addr {
                                    let _ = self.raft.send(Input::AddPeer(nid, addr));
                                }
                            }
                            let _ = self.raft.send(Input::ConfApplied(cc));
                        }
                        since_snapshot += 1;
                    }
                    if last > 0 {
                        tracing::trace!(target: "keel::lat", idx = last, "applied");
                        self.applied.send_replace(last);
                        let _ = self.raft.send(Input::Applied(last));
                    }
                }
                ApplyItem::Snapshot { meta, path } => {
                    failpoint::crash_point("snapshot::before_restore");
                    let limits = self.read().limits();
                    match snapshot::load(&path, limits, self.cfg.min_lease_ttl()) {
                        Ok(new) => {
                            let rev = new.kv.current_rev();
                            *self.write() = new;
                            self.hub.restore(rev);
                            self.applied.send_replace(meta.index);
                            let _ = self.raft.send(Input::Applied(meta.index));
                            tracing::info!(
                                index = meta.index,
                                revision = rev,
                                "installed a snapshot from the leader"
                            );
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "loading a received snapshot failed: stopping");
                            self.shared.failed.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
            if since_snapshot >= self.cfg.snapshot_count
                && !self.snapshotting.swap(true, Ordering::SeqCst)
            {
                since_snapshot = 0;
                // Copy the state (cheap: keys and values are shared
                // buffers) and encode it off the apply path.
                let state = self.read().clone();
                let m = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("keel-snapshot".into())
                    .spawn(move || {
                        if let Err(e) = m.save_snapshot(&state) {
                            tracing::error!(error = %e, "snapshot failed");
                        }
                        m.snapshotting.store(false, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "could not start the snapshot thread");
                    self.snapshotting.store(false, Ordering::SeqCst);
                }
            }
        }
    }

    /// Encodes the current state as snapshot bytes (Maintenance.Snapshot).
    /// The state is cloned under the lock (chunks are shared, so that is
    /// cheap) and encoded outside it, so writes are not held up.
    pub fn snapshot_bytes(&self) -> Result<Vec<u8>, snapshot::SnapshotError> {
        let sm = self.read().clone();
        snapshot::encode(&sm)
    }

    /// Writes a snapshot of `sm` (a copy of the applied state), records it
    /// in the WAL, releases the WAL segments and old snapshot files it
    /// covers, and lets the Raft core compact its log.
    fn save_snapshot(&self, sm: &StateMachine) -> Result<(), OpenError> {
        let (index, term) = (sm.applied_index, sm.applied_term);
        let dir = self.cfg.snap_dir();
        let path = dir.join(snapshot::file_name(index));
        failpoint::crash_point("snapshot::before_save");
        snapshot::save(sm, &path)?;
        failpoint::crash_point("snapshot::after_save");
        self.wal.save_snapshot_mark(SnapshotMark { index, term })?;
        // The records the file holds are served from it from now on (as
        // after a restart): their heap copies go once the live store has
        // swapped them (compare etcd, whose values live in bbolt's mmap).
        match snapshot::rebase_on_file(sm, &path) {
            Ok(Some(rebased)) => {
                let moved = self.write().kv.adopt(&sm.kv, rebased);
                tracing::debug!(index, moved, "records now served from the snapshot file");
            }
            Ok(None) => tracing::warn!(
                index,
                "snapshot file differs from the state: records stay on the heap"
            ),
            Err(e) => {
                tracing::warn!(index, error = %e, "mapping the new snapshot failed: records stay on the heap")
            }
        }
        self.wal.release_to(index)?;
        let _ = self.raft.send(Input::Compact { index, path });
        for (_, old) in snapshot::list(&dir).into_iter().skip(2) {
            let _ = std::fs::remove_file(old);
        }
        self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
        release_freed_memory();
        tracing::info!(index, "snapshot saved");
        Ok(())
    }

    /// Starts the primary's lease duties: revoke expired leases, checkpoint
    /// remaining TTLs. Runs until the member is dropped.
    pub fn spawn_lease_loops(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last_checkpoint = Instant::now();
            let mut was_leader = false;
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                // Expiry and checkpoints are the leader's duties.
                if !m.is_leader() {
                    was_leader = false;
                    continue;
                }
                if !was_leader {
                    was_leader = true;
                    m.write().lessor.promote(Instant::now());
                }
                let now = Instant::now();
                let expired = m.read().lessor.expired(now, 1000);
                for id in expired {
                    let fresh = m.revoking.lock().map(|mut s| s.insert(id)).unwrap_or(false);
                    if !fresh {
                        continue;
                    }
                    let m2 = m.clone();
                    tokio::spawn(async move {
                        let r = m2
                            .propose(Request::LeaseRevoke(LeaseRevokeRequest { id }))
                            .await;
                        if let Err(e) = &r {
                            if *e != StoreError::LeaseNotFound {
                                tracing::warn!(lease = id, error = %e, "expired lease revoke failed");
                            }
                        }
                        if let Ok(mut s) = m2.revoking.lock() {
                            s.remove(&id);
                        }
                    });
                }
                if now.duration_since(last_checkpoint) >= m.cfg.lease_checkpoint_interval {
                    last_checkpoint = now;
                    let checkpoints: Vec<LeaseCheckpoint> = m
                        .read()
                        .lessor
                        .leases()
                        .map(|l| LeaseCheckpoint {
                            id: l.id,
                            remaining_ttl: l.remaining(now),
                        })
                        .filter(|c| c.remaining_ttl > 0)
                        .collect();
                    for chunk in checkpoints.chunks(1000) {
                        let req = Request::LeaseCheckpoint(LeaseCheckpointRequest {
                            checkpoints: chunk.to_vec(),
                        });
                        if let Err(e) = m.propose(req).await {
                            tracing::debug!(error = %e, "lease checkpoint failed");
                        }
                    }
                }
            }
        });
    }

    /// On a graceful stop, a leader hands leadership to its most caught-up
    /// voter first (as etcd does), so the cluster does not wait an election
    /// timeout for a new leader. Gives up after an election timeout.
    pub async fn transfer_leadership_away(&self) {
        if !self.is_leader() {
            return;
        }
        let Some(status) = self.raft_status().await else {
            return;
        };
        let me = self.header.member_id;
        let target = status
            .progress
            .iter()
            .filter(|(id, p)| **id != me && !p.learner && status.conf_state.voters.contains(id))
            .max_by_key(|(_, p)| p.matched)
            .map(|(id, _)| *id);
        let Some(target) = target else {
            return;
        };
        self.transfer_leadership(target);
        let deadline = Instant::now() + self.cfg.election_timeout;
        while self.is_leader() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(
            to = format_args!("{target:x}"),
            moved = !self.is_leader(),
            "leadership handed over before stopping"
        );
    }

    /// Stops accepting proposals and lets the apply thread finish.
    pub fn shutdown(&self) {
        let _ = self.raft.send(Input::Stop);
        self.hub_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// Hands memory freed by a snapshot (its encoding buffers and state copy)
/// back to the OS; glibc keeps it in its arenas otherwise.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no
    // preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Rebuilds a member's data dir from a snapshot file (what
/// `etcdctl snapshot save` wrote): the snapshot becomes the member's state,
/// and its WAL starts right after it. Refuses a data dir that has a WAL.
pub fn restore_snapshot(
    file: &std::path::Path,
    cfg: &MemberConfig,
) -> Result<(u64, i64), OpenError> {
    let bytes = std::fs::read(file).map_err(|source| snapshot::SnapshotError::Io {
        op: "read",
        path: file.to_owned(),
        source,
    })?;
    let bytes = snapshot::strip_digest(file, &bytes)?;
    let (index, term) = snapshot::verify(file, bytes)?;
    let wal_dir = cfg.wal_dir();
    let has_wal = std::fs::read_dir(&wal_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if has_wal {
        return Err(OpenError::DataDir {
            path: wal_dir,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "data dir already holds a WAL; restore into a new data dir",
            ),
        });
    }
    let snap_dir = cfg.snap_dir();
    for d in [&snap_dir, &wal_dir] {
        std::fs::create_dir_all(d).map_err(|source| OpenError::DataDir {
            path: d.clone(),
            source,
        })?;
    }
    // The restored member starts a new cluster: its membership is the one
    // given on the command line, not the one the snapshot was taken in.
    let tmp = snap_dir.join("restore.tmp");
    snapshot::write_file(&tmp, bytes)?;
    let mut sm = snapshot::load(
        &tmp,
        Limits {
            quota_bytes: 0,
            member_id: 0,
        },
        1,
    )?;
    sm.members = cfg
        .initial_members()
        .into_iter()
        .map(|(id, name, url)| {
            (
                id,
                MemberInfo {
                    name,
                    peer_urls: vec![url],
                    client_urls: Vec::new(),
                    learner: false,
                    in_conf: true,
                },
            )
        })
        .collect();
    let path = snap_dir.join(snapshot::file_name(index));
    snapshot::save(&sm, &path)?;
    drop(sm);
    let _ = std::fs::remove_file(&tmp);
    let (wal, _) = Wal::open(&wal_dir, WalOptions::default())?;
    wal.save_snapshot_mark(SnapshotMark { index, term })?;
    wal.append_sync(
        Vec::new(),
        Some(HardState {
            term,
            vote: 0,
            commit: index,
        }),
    )?;
    wal.close()?;
    let sm = snapshot::load(
        &path,
        Limits {
            quota_bytes: 0,
            member_id: 0,
        },
        1,
    )?;
    Ok((index, sm.kv.current_rev()))
}
