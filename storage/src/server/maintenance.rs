//! The Maintenance service: Status, Alarm, Hash, HashKV, Snapshot,
//! Defragment, MoveLeader.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::apply::Applied;
use crate::error::StoreError;
use crate::member::Member;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, maintenance_server::Maintenance, AlarmRequest, AlarmResponse,
    AlarmType, DefragmentRequest, DefragmentResponse, HashKvRequest, HashKvResponse, HashRequest,
    HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse,
};
use crate::proto::keelpb::internal_request::Request as Cmd;

/// The etcd API version keel's members report (the wire API they speak).
pub const API_VERSION: &str = "3.4.0";

/// Bytes per Snapshot stream message (etcd sends 32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// The etcd Maintenance service over a member.
#[derive(Debug, Clone)]
pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    /// A Maintenance service for `member`.
    pub fn new(member: Arc<Member>) -> Self {
        MaintenanceService { member }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

fn alarm_name(t: i32) -> &'static str {
    match AlarmType::try_from(t) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = req.into_inner();
        let mut resp = if r.action == AlarmAction::Get as i32 {
            let sm = self.member.read();
            AlarmResponse {
                header: None,
                alarms: sm.alarm_list(r.alarm),
            }
        } else {
            match self.member.propose(Cmd::Alarm(r)).await? {
                Applied::Alarm(resp) => resp,
                _ => return Err(Status::internal("keel: unexpected apply result")),
            }
        };
        let rev = self.member.read().kv.current_rev();
        self.member.header().fill(&mut resp.header, rev);
        Ok(Response::new(resp))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let m = &self.member;
        let sm = m.read();
        let db = (sm.kv.size_bytes() + m.wal_size()) as i64;
        let errors = sm
            .alarm_list(AlarmType::None as i32)
            .iter()
            .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
            .collect();
        Ok(Response::new(StatusResponse {
            header: Some(m.header().at(sm.kv.current_rev())),
            version: API_VERSION.into(),
            db_size: db,
            leader: m.leader(),
            raft_index: m.last_index(),
            raft_term: m.header().term(),
            raft_applied_index: sm.applied_index,
            errors,
            db_size_in_use: sm.kv.size_bytes() as i64,
            is_learner: sm
                .members
                .get(&m.header().member_id)
                .is_some_and(|me| me.learner),
        }))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        // The store lives in memory and compaction frees space at once:
        // there is nothing to defragment. Answer as etcd does when done.
        let rev = self.member.read().kv.current_rev();
        Ok(Response::new(DefragmentResponse {
            header: Some(self.member.header().at(rev)),
        }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let sm = self.member.read();
        let hash = sm.kv.hash_kv(0).map_err(StoreError::from)?;
        Ok(Response::new(HashResponse {
            header: Some(self.member.header().at(sm.kv.current_rev())),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let r = req.into_inner();
        let sm = self.member.read();
        let hash = sm.kv.hash_kv(r.revision).map_err(StoreError::from)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.member.header().at(sm.kv.current_rev())),
            hash,
            compact_revision: sm.kv.compact_rev(),
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let member = self.member.clone();
        let bytes = tokio::task::spawn_blocking(move || member.snapshot_bytes())
            .await
            .map_err(|e| Status::internal(format!("keel: snapshot task: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))?;
        // etcd's snapshot is a whole number of 512-byte blocks followed by
        // its SHA-256, and etcdctl checks both.
        let mut bytes = bytes;
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
        bytes.extend_from_slice(&digest);
        let header = self.member.header().at(self.member.read().kv.current_rev());
        let out = super::lease::async_stream(move |tx| async move {
            let total = bytes.len();
            let mut sent = 0usize;
            for chunk in bytes.chunks(SNAPSHOT_CHUNK) {
                sent += chunk.len();
                let resp = SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (total - sent) as u64,
                    blob: bytes::Bytes::copy_from_slice(chunk),
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(out))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let r = req.into_inner();
        let voter = self
            .member
            .read()
            .members
            .get(&r.target_id)
            .is_some_and(|m| m.in_conf && !m.learner);
        if !voter {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        if !self.member.is_leader() {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if r.target_id != self.member.header().member_id {
            self.member.transfer_leadership(r.target_id);
            let deadline = std::time::Instant::now() + self.member.config().election_timeout * 3;
            while self.member.leader() != r.target_id {
                if std::time::Instant::now() > deadline {
                    return Err(Status::unavailable(
                        "etcdserver: request timed out, leader transfer took too long",
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let rev = self.member.read().kv.current_rev();
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.member.header().at(rev)),
        }))
    }
}
