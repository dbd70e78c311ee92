//! The Cluster service: the member list. Membership changes come with Raft.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::member::Member;
use crate::proto::etcdserverpb::{
    cluster_server::Cluster, Member as PbMember, MemberAddRequest, MemberAddResponse,
    MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};

/// The etcd Cluster service over a member.
#[derive(Debug, Clone)]
pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    /// A Cluster service for `member`.
    pub fn new(member: Arc<Member>) -> Self {
        ClusterService { member }
    }

    fn members(&self) -> Vec<PbMember> {
        let cfg = self.member.config();
        vec![PbMember {
            id: self.member.header().member_id,
            name: cfg.name.clone(),
            peer_ur_ls: cfg.peer_urls.clone(),
            client_ur_ls: cfg.client_urls.clone(),
            is_learner: false,
        }]
    }
}

fn single_member() -> Status {
    Status::unavailable(
        "keel: this member runs alone; membership changes need the replicated (Raft) store",
    )
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(single_member())
    }

    async fn member_remove(
        &self,
        _req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(single_member())
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(single_member())
    }

    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let rev = self.member.read().kv.current_rev();
        Ok(Response::new(MemberListResponse {
            header: Some(self.member.header().at(rev)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(single_member())
    }
}
