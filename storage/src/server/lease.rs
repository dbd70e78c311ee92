//! The Lease service: grant, revoke, keep-alive, time-to-live, list.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::Applied;
use crate::error::StoreError;
use crate::member::Member;
use crate::proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::keelpb::internal_request::Request as Cmd;

/// The etcd Lease service over a member.
#[derive(Debug, Clone)]
pub struct LeaseService {
    member: Arc<Member>,
}

impl LeaseService {
    /// A Lease service for `member`.
    pub fn new(member: Arc<Member>) -> Self {
        LeaseService { member }
    }
}

/// Renews on the leader: locally if this member leads, else forwarded to
/// the leader's client URL (as etcd followers forward keep-alives), since
/// only the leader's expiry clock revokes leases.
async fn renew_anywhere(member: &Arc<Member>, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    if member.is_leader() {
        member.wait_applied_commit().await?;
        return Ok(renew(member, id));
    }
    let mut client = leader_client(member).await?;
    let mut answers = client
        .lease_keep_alive(tokio_stream::iter([LeaseKeepAliveRequest { id }]))
        .await?
        .into_inner();
    match answers.next().await {
        Some(r) => r,
        None => Err(StoreError::NoLeader.into()),
    }
}

/// A Lease client on the leader's client URL: leases live by the leader's
/// clock, so a follower forwards what depends on it (as etcd does).
async fn leader_client(
    member: &Member,
) -> Result<crate::proto::etcdserverpb::lease_client::LeaseClient<tonic::transport::Channel>, Status>
{
    let leader = member.leader();
    let url = member
        .read()
        .members
        .get(&leader)
        .and_then(|m| m.client_urls.first().cloned());
    let Some(url) = url else {
        return Err(StoreError::NoLeader.into());
    };
    Ok(crate::proto::etcdserverpb::lease_client::LeaseClient::new(
        leader_channel(&url)?,
    ))
}

/// One lazily connected channel per leader client URL, shared by every
/// forwarded request (a connection per keep-alive would cost a TCP and
/// HTTP/2 handshake each time); it reconnects by itself.
fn leader_channel(url: &str) -> Result<tonic::transport::Channel, Status> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CHANNELS: OnceLock<Mutex<HashMap<String, tonic::transport::Channel>>> = OnceLock::new();
    let mut map = CHANNELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = map.get(url) {
        return Ok(c.clone());
    }
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| Status::unavailable(format!("etcdserver: bad leader URL {url}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(1))
        .timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    map.insert(url.to_string(), channel.clone());
    Ok(channel)
}

fn renew(member: &Member, id: i64) -> LeaseKeepAliveResponse {
    let (ttl, rev) = {
        let mut sm = member.write();
        // An unknown lease answers TTL 0 (etcd's keep-alive convention).
        let ttl = sm.lessor.renew(id, Instant::now()).unwrap_or(0);
        (ttl, sm.kv.current_rev())
    };
    LeaseKeepAliveResponse {
        header: Some(member.header().at(rev)),
        id,
        ttl,
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut r = req.into_inner();
        if r.id == 0 {
            // etcd: a random positive ID not in use.
            let sm = self.member.read();
            loop {
                let id = (rand::random::<u64>() >> 1) as i64;
                if id != 0 && !sm.lessor.contains(id) {
                    r.id = id;
                    break;
                }
            }
        }
        if r.ttl > crate::lease::MAX_LEASE_TTL {
            return Err(StoreError::LeaseTtlTooLarge.into());
        }
        match self.member.propose(Cmd::LeaseGrant(r)).await? {
            Applied::LeaseGrant(mut resp) => {
                self.member.header().fill(&mut resp.header, 0);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal("keel: unexpected apply result")),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // Whether the lease exists is decided where the revoke applies (as
        // in etcd): this member's own state may be behind.
        let r = req.into_inner();
        match self.member.propose(Cmd::LeaseRevoke(r)).await? {
            Applied::LeaseRevoke(mut resp) => {
                self.member.header().fill(&mut resp.header, 0);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal("keel: unexpected apply result")),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let member = self.member.clone();
        let mut inbound = req.into_inner();
        let out = async_stream(move |tx| async move {
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { break };
                if tx
                    .send(renew_anywhere(&member, msg.id).await)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(out))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        if !self.member.is_leader() {
            let mut client = leader_client(&self.member).await?;
            let mut resp = client.lease_time_to_live(r).await?.into_inner();
            let rev = self.member.read().kv.current_rev();
            self.member.header().fill(&mut resp.header, rev);
            return Ok(Response::new(resp));
        }
        self.member.wait_applied_commit().await?;
        let sm = self.member.read();
        let rev = sm.kv.current_rev();
        let resp = match sm.lessor.get(r.id) {
            Some(l) => LeaseTimeToLiveResponse {
                header: Some(self.member.header().at(rev)),
                id: r.id,
                ttl: l.remaining(Instant::now()),
                granted_ttl: l.ttl,
                keys: if r.keys {
                    l.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
            None => LeaseTimeToLiveResponse {
                header: Some(self.member.header().at(rev)),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.member.read_barrier().await?;
        let sm = self.member.read();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.member.header().at(sm.kv.current_rev())),
            leases: sm
                .lessor
                .leases()
                .map(|l| LeaseStatus { id: l.id })
                .collect(),
        }))
    }
}

/// Runs `f` as a task feeding a bounded channel, returned as a stream.
pub(crate) fn async_stream<T, F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
