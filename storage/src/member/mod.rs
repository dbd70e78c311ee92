//! A store member: the log (WAL), the state machine, the watch hub and the
//! loops that join them.
//!
//! - [`config`]: the member's settings (etcd's flag names) and IDs.
//! - [`snapshot`]: rkyv snapshots of the state machine.
//!
//! Write path: a client request is checked, encoded as an
//! `InternalRequest` and appended to the WAL with the next index; the WAL
//! group-commits everything queued (one write, one fdatasync) and hands the
//! durable entries, in index order, to the apply thread, which applies each
//! to the state machine, publishes its events to the watch hub and answers
//! the proposer. A member alone is its own quorum: durable = committed.
//! Nothing is acknowledged before it is on disk and applied.
//!
//! Reads take the state machine's read lock: every acknowledged write is
//! already applied, so they are linearizable.

pub mod config;
pub mod snapshot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_raft::wal::{Entry, EntryKind, HardState, SnapshotMark, Wal, WalError, WalOptions};
use prost::Message;
use tokio::sync::oneshot;

pub use config::MemberConfig;

use crate::apply::{Applied, Limits, StateMachine};
use crate::error::{Result, StoreError};
use crate::proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use crate::proto::keelpb::{internal_request::Request, InternalRequest};
use crate::server::header::Header;
use crate::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use crate::watch::{SyncHandle, WatchHub, WatchHubConfig};

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
}

/// A proposal waiting to be applied.
type Waiter = oneshot::Sender<Result<Applied>>;

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
    /// Next log index; held while an entry is enqueued so the WAL receives
    /// entries in index order.
    next_index: Mutex<u64>,
    waiters: Arc<Mutex<HashMap<u64, Waiter>>>,
    next_id: AtomicU64,
    /// Set once the log failed (fatal): the member refuses everything.
    failed: Arc<AtomicBool>,
    /// The lowest index the WAL refused without failing (no space), or
    /// `u64::MAX`.
    rewind_to: Arc<AtomicU64>,
    apply_tx: Mutex<Option<mpsc::Sender<Entry>>>,
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

impl Member {
    /// Opens the member's data dir: loads the newest snapshot, replays the
    /// WAL after it, and starts the apply thread.
    pub fn open(cfg: MemberConfig) -> Result<Arc<Member>, OpenError> {
        let snap_dir = cfg.snap_dir();
        let wal_dir = cfg.wal_dir();
        for d in [&snap_dir, &wal_dir] {
            std::fs::create_dir_all(d).map_err(|source| OpenError::DataDir {
                path: d.clone(),
                source,
            })?;
        }
        let limits = Limits {
            quota_bytes: cfg.quota_backend_bytes,
            member_id: cfg.member_id(),
        };
        let min_ttl = cfg.min_lease_ttl();
        let started = Instant::now();
        let mut sm = match snapshot::list(&snap_dir).first() {
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
        let snap_index = recovered.snapshot.as_ref().map_or(0, |m| m.index);
        if snap_index > sm.applied_index {
            return Err(OpenError::MissingSnapshot(wal_dir, snap_index));
        }
        let wal_opened = started.elapsed();
        let mut last_index = sm.applied_index.max(snap_index);
        let now = Instant::now();
        let mut replayed = 0u64;
        for e in recovered.entries {
            last_index = last_index.max(e.index);
            if e.index <= sm.applied_index {
                continue;
            }
            let req = InternalRequest::decode(e.data.as_slice()).unwrap_or_default();
            sm.apply(e.index, e.term, req, now);
            replayed += 1;
        }
        // Restarted: a new term, as a new election would give, opened (as a
        // Raft leader does) by an empty entry of that term.
        let term = recovered.hard_state.term.max(sm.applied_term) + 1;
        last_index += 1;
        let noop = InternalRequest::default();
        wal.append_sync(
            vec![Entry {
                term,
                index: last_index,
                kind: EntryKind::Normal,
                data: noop.encode_to_vec(),
            }],
            Some(HardState {
                term,
                vote: cfg.member_id(),
                commit: last_index,
            }),
        )?;
        sm.apply(last_index, term, noop, now);
        tracing::info!(
            name = %cfg.name,
            applied = sm.applied_index,
            replayed,
            revision = sm.kv.current_rev(),
            term,
            ?snapshot_loaded,
            ?wal_opened,
            total = ?started.elapsed(),
            "store member recovered"
        );
        let header = Header::new(cfg.cluster_id(), cfg.member_id(), term);
        let sm = Arc::new(RwLock::new(sm));
        let hub = Arc::new(WatchHub::new(
            Box::new(sm.clone()),
            WatchHubConfig::default(),
        ));
        let hub_sync = hub.start();
        let (apply_tx, apply_rx) = mpsc::channel::<Entry>();
        let member = Arc::new(Member {
            cfg,
            sm,
            wal: Arc::new(wal),
            hub,
            hub_sync: Mutex::new(Some(hub_sync)),
            header,
            next_index: Mutex::new(last_index + 1),
            waiters: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            failed: Arc::new(AtomicBool::new(false)),
            rewind_to: Arc::new(AtomicU64::new(u64::MAX)),
            apply_tx: Mutex::new(Some(apply_tx)),
            metrics: Arc::new(Metrics::default()),
            revoking: Mutex::new(Default::default()),
            snapshotting: AtomicBool::new(false),
        });
        let m = member.clone();
        std::thread::Builder::new()
            .name("keel-apply".into())
            .spawn(move || m.apply_loop(apply_rx))
            .map_err(|source| OpenError::DataDir {
                path: member.cfg.data_dir.clone(),
                source,
            })?;
        Ok(member)
    }

    /// The member's settings.
    pub fn config(&self) -> &MemberConfig {
        &self.cfg
    }

    /// The response header source.
    pub fn header(&self) -> &Header {
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
        self.failed.load(Ordering::SeqCst)
    }

    /// The last log index handed to the WAL.
    pub fn last_index(&self) -> u64 {
        self.next_index.lock().map(|n| *n - 1).unwrap_or(0)
    }

    /// Proposes a write and waits until it is durable and applied.
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
        let (tx, rx) = oneshot::channel();
        self.lock_waiters().insert(id, tx);
        {
            let mut next = self.next_index.lock().unwrap_or_else(|p| p.into_inner());
            if self.rewind_to.load(Ordering::SeqCst) != u64::MAX {
                // An append was refused: let every queued append finish
                // (callbacks run in order), then continue from the first
                // refused index, so the log never has a hole.
                let _ = self.wal.append_sync(Vec::new(), None);
                *next = self.rewind_to.swap(u64::MAX, Ordering::SeqCst).min(*next);
            }
            let index = *next;
            let entry = Entry {
                term: self.header.term(),
                index,
                kind: EntryKind::Normal,
                data,
            };
            let apply_tx = self
                .apply_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let Some(apply_tx) = apply_tx else {
                self.lock_waiters().remove(&id);
                return Err(StoreError::Stopped);
            };
            let waiters = self.waiters.clone();
            let failed = self.failed.clone();
            let rewind_to = self.rewind_to.clone();
            let metrics = self.metrics.clone();
            let for_apply = entry.clone();
            self.wal.append(
                vec![entry],
                None,
                Box::new(move |res| match res {
                    Ok(()) => {
                        let _ = apply_tx.send(for_apply);
                    }
                    Err(e) => {
                        metrics.proposals_failed.fetch_add(1, Ordering::Relaxed);
                        let err = match e {
                            // Nothing of it was written (a full disk, or an
                            // index after one the disk refused): the next
                            // proposal rewinds to the first refused index.
                            WalError::NoSpace { .. } | WalError::InvalidAppend(_) => {
                                rewind_to.fetch_min(for_apply.index, Ordering::SeqCst);
                                StoreError::Storage(format!("no space left for the log: {e}"))
                            }
                            e => {
                                tracing::error!(error = %e, "WAL write failed: stopping the member");
                                failed.store(true, Ordering::SeqCst);
                                StoreError::Storage(e.to_string())
                            }
                        };
                        let w = waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        if let Some(w) = w {
                            let _ = w.send(Err(err));
                        }
                        // The index was not written: the apply thread must
                        // not wait for it.
                        let _ = apply_tx.send(Entry {
                            term: 0,
                            index: for_apply.index,
                            kind: EntryKind::Normal,
                            data: Vec::new(),
                        });
                    }
                }),
            );
            *next = index + 1;
        }
        match tokio::time::timeout(self.cfg.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => {
                self.lock_waiters().remove(&id);
                Err(StoreError::Timeout)
            }
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_loop(self: Arc<Self>, rx: mpsc::Receiver<Entry>) {
        let mut since_snapshot = 0u64;
        while let Ok(entry) = rx.recv() {
            if entry.term == 0 && entry.data.is_empty() {
                // A failed append; nothing to apply.
                continue;
            }
            let req = match InternalRequest::decode(entry.data.as_slice()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(index = entry.index, error = %e, "undecodable log entry skipped");
                    continue;
                }
            };
            let id = req.id;
            let now = Instant::now();
            let out = {
                let mut sm = self.write();
                sm.apply(entry.index, entry.term, req, now)
            };
            self.metrics.applied.fetch_add(1, Ordering::Relaxed);
            if !out.events.is_empty() {
                self.hub.notify(out.rev, &out.events);
            }
            if let Some(w) = self.lock_waiters().remove(&id) {
                let _ = w.send(out.result);
            }
            since_snapshot += 1;
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
    pub fn snapshot_bytes(&self) -> Result<Vec<u8>, snapshot::SnapshotError> {
        snapshot::encode(&self.read())
    }

    /// Writes a snapshot of the applied state, records it in the WAL and
    /// releases the WAL segments it covers, and old snapshot files.
    pub fn snapshot_now(&self) -> Result<(), OpenError> {
        let state = self.read().clone();
        self.save_snapshot(&state)
    }

    fn save_snapshot(&self, sm: &StateMachine) -> Result<(), OpenError> {
        let (bytes, index, term) = (snapshot::encode(sm)?, sm.applied_index, sm.applied_term);
        let dir = self.cfg.snap_dir();
        snapshot::write_file(&dir.join(snapshot::file_name(index)), &bytes)?;
        self.wal.save_snapshot_mark(SnapshotMark { index, term })?;
        self.wal.release_to(index)?;
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
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
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

    /// Stops accepting proposals and lets the apply thread finish.
    pub fn shutdown(&self) {
        self.apply_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
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
    let path = snap_dir.join(snapshot::file_name(index));
    snapshot::write_file(&path, bytes)?;
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
