//! The Cluster service: the member list and membership changes, one member
//! at a time through the Raft log.

use std::sync::Arc;

use keel_raft::core::ConfChange;
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
        self.member
            .read()
            .members
            .iter()
            .map(|(id, m)| PbMember {
                id: *id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: m.learner,
            })
            .collect()
    }

    fn header(&self) -> Option<crate::proto::etcdserverpb::ResponseHeader> {
        let rev = self.member.read().kv.current_rev();
        Some(self.member.header().at(rev))
    }

    fn exists(&self, id: u64) -> Result<crate::apply::MemberInfo, Status> {
        self.member
            .read()
            .members
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found("etcdserver: member not found"))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let r = req.into_inner();
        if r.peer_ur_ls.is_empty()
            || r.peer_ur_ls
                .iter()
                .any(|u| crate::member::config::peer_addr(u).is_none())
        {
            return Err(Status::invalid_argument(
                "etcdserver: peer URLs must be quic://host:port (http:// and https:// are taken as QUIC too)",
            ));
        }
        let id = self.member.config().id_for(&r.peer_ur_ls);
        let taken = self
            .member
            .read()
            .members
            .values()
            // A member described by an earlier MemberAdd that never made it
            // into the configuration may be added again.
            .any(|m| m.in_conf && m.peer_urls.iter().any(|u| r.peer_ur_ls.contains(u)));
        if taken {
            return Err(Status::failed_precondition(
                "etcdserver: Peer URLs already exists",
            ));
        }
        let info = PbMember {
            id,
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: r.is_learner,
        };
        let cc = if r.is_learner {
            ConfChange::AddLearner(id)
        } else {
            ConfChange::AddNode(id)
        };
        self.member
            .change_membership(cc, Some(info.clone()))
            .await?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(info),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        self.exists(id)?;
        self.member
            .change_membership(ConfChange::RemoveNode(id), None)
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let r = req.into_inner();
        let cur = self.exists(r.id)?;
        if r.peer_ur_ls != cur.peer_urls {
            return Err(Status::unimplemented(
                "keel: a member's peer URLs are its identity; remove it and add it back",
            ));
        }
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.member.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = req.into_inner().id;
        let m = self.exists(id)?;
        if !m.learner {
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member",
            ));
        }
        self.member
            .change_membership(ConfChange::AddNode(id), None)
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(),
        }))
    }
}
