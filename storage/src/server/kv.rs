//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::apply::{validate, Applied};
use crate::error::StoreError;
use crate::member::Member;
use crate::proto::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::proto::keelpb::internal_request::Request as Cmd;

/// The etcd KV service over a member.
#[derive(Debug, Clone)]
pub struct KvService {
    member: Arc<Member>,
}

impl KvService {
    /// A KV service for `member`.
    pub fn new(member: Arc<Member>) -> Self {
        KvService { member }
    }
}

/// The state machine answered with a different kind of response than asked:
/// a bug, reported rather than panicking.
fn mismatch() -> Status {
    Status::internal("keel: unexpected apply result")
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = req.into_inner();
        validate::check_range(&r)?;
        if !r.serializable {
            self.member.read_barrier().await?;
        }
        let (mut resp, rev) = {
            let sm = self.member.read();
            (sm.range(&r)?, sm.kv.current_rev())
        };
        self.member.header().fill(&mut resp.header, rev);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = req.into_inner();
        tracing::trace!(target: "keel::lat", "put start");
        validate::check_put(&r)?;
        match self.member.propose(Cmd::Put(r)).await? {
            Applied::Put(mut resp) => {
                tracing::trace!(target: "keel::lat", "put done");
                self.member.header().fill(&mut resp.header, 0);
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let r = req.into_inner();
        validate::check_delete(&r)?;
        match self.member.propose(Cmd::DeleteRange(r)).await? {
            Applied::DeleteRange(mut resp) => {
                self.member.header().fill(&mut resp.header, 0);
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = req.into_inner();
        validate::check_txn(&r, self.member.config().max_txn_ops)?;
        let mut resp = if crate::apply::txn::is_read_only(&r) {
            self.member.read_barrier().await?;
            self.member.read().read_txn(&r)?
        } else {
            match self.member.propose(Cmd::Txn(r)).await? {
                Applied::Txn(resp) => resp,
                _ => return Err(mismatch()),
            }
        };
        self.member.header().fill(&mut resp.header, 0);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = req.into_inner();
        // Refuse before proposing what can only fail.
        {
            let sm = self.member.read();
            if r.revision <= sm.kv.compact_rev() {
                return Err(StoreError::Compacted.into());
            }
            if r.revision > sm.kv.current_rev() {
                return Err(StoreError::FutureRev.into());
            }
        }
        match self.member.propose(Cmd::Compaction(r)).await? {
            Applied::Compaction(mut resp) => {
                self.member.header().fill(&mut resp.header, 0);
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }
}
