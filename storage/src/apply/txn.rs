//! Transactions: compares, then the chosen branch's ops, nested
//! transactions included (etcd's `applierV3backend.Txn`). Every compare of
//! the whole tree is evaluated first, against the state before any op runs;
//! then every op's preconditions are checked, so a txn either applies
//! entirely or not at all.

use super::{header, range, ReadView};
use crate::error::{Result, StoreError};
use crate::lease::Lessor;
use crate::mvcc::{KeyRange, KvStore, RangeOptions, WriteTxn};
use crate::proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp,
    ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

/// True if no op in any branch, at any depth, writes.
pub fn is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) | None => true,
            Some(Request::RequestTxn(n)) => is_read_only(n),
            _ => false,
        })
}

/// Upper bound of the bytes the txn's puts add (for the quota).
pub fn put_cost(t: &TxnRequest) -> u64 {
    t.success
        .iter()
        .chain(t.failure.iter())
        .map(|op| match &op.request {
            Some(Request::RequestPut(p)) => (p.key.len() + p.value.len() + 64) as u64,
            Some(Request::RequestTxn(n)) => put_cost(n),
            _ => 0,
        })
        .sum()
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let ord: Ordering = match target {
        CompareTarget::Value => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(v)
        }
        CompareTarget::Create => kv.create_revision.cmp(&match c.target_union {
            Some(TargetUnion::CreateRevision(r)) => r,
            _ => 0,
        }),
        CompareTarget::Mod => kv.mod_revision.cmp(&match c.target_union {
            Some(TargetUnion::ModRevision(r)) => r,
            _ => 0,
        }),
        CompareTarget::Version => kv.version.cmp(&match c.target_union {
            Some(TargetUnion::Version(r)) => r,
            _ => 0,
        }),
        CompareTarget::Lease => kv.lease.cmp(&match c.target_union {
            Some(TargetUnion::Lease(r)) => r,
            _ => 0,
        }),
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

fn apply_compare(view: &impl ReadView, c: &Compare) -> bool {
    let Ok(rr) = view.range(
        &KeyRange::new(&c.key, &c.range_end),
        RangeOptions::default(),
    ) else {
        return false;
    };
    if rr.kvs.is_empty() {
        // A missing key has no value to compare; its revisions are 0.
        if c.target == CompareTarget::Value as i32 {
            return false;
        }
        return compare_kv(c, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, kv))
}

/// Which branch each txn of the tree takes, in pre-order.
fn compare_to_path(view: &impl ReadView, t: &TxnRequest, path: &mut Vec<bool>) {
    let ok = t.compare.iter().all(|c| apply_compare(view, c));
    path.push(ok);
    let ops = if ok { &t.success } else { &t.failure };
    for op in ops {
        if let Some(Request::RequestTxn(n)) = &op.request {
            compare_to_path(view, n, path);
        }
    }
}

/// Runs `f` on every op that will execute, following `path`.
fn check_ops(
    t: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    f: &mut impl FnMut(&RequestOp) -> Result<()>,
) -> Result<()> {
    let ok = path.get(*pos).copied().unwrap_or(false);
    *pos += 1;
    for op in if ok { &t.success } else { &t.failure } {
        f(op)?;
        if let Some(Request::RequestTxn(n)) = &op.request {
            check_ops(n, path, pos, f)?;
        }
    }
    Ok(())
}

/// Where a txn's ops go: a read-only view, or a write transaction.
enum Target<'a, 'b> {
    Read(&'a KvStore),
    Write(&'a mut WriteTxn<'b>, &'a mut Lessor),
}

/// Applies a txn in a write transaction (`writes` = it has puts or deletes).
pub fn apply_txn(
    w: &mut WriteTxn<'_>,
    lessor: &mut Lessor,
    t: &TxnRequest,
    writes: bool,
) -> Result<TxnResponse> {
    let mut path = Vec::new();
    compare_to_path(w, t, &mut path);
    if writes {
        check_ops(t, &path, &mut 0, &mut |op| check_put(w, lessor, op))?;
    }
    check_ops(t, &path, &mut 0, &mut |op| check_range(w, op))?;
    let mut resp = run_ops(&mut Target::Write(w, lessor), t, &path, &mut 0)?;
    resp.header = header(w.read_rev());
    Ok(resp)
}

/// Applies a read-only txn against the store as it is.
pub fn read_only_txn(kv: &KvStore, t: &TxnRequest) -> Result<TxnResponse> {
    let mut path = Vec::new();
    compare_to_path(kv, t, &mut path);
    check_ops(t, &path, &mut 0, &mut |op| check_range(kv, op))?;
    let mut resp = run_ops(&mut Target::Read(kv), t, &path, &mut 0)?;
    resp.header = header(kv.current_rev());
    Ok(resp)
}

fn check_put(view: &WriteTxn<'_>, lessor: &Lessor, op: &RequestOp) -> Result<()> {
    let Some(Request::RequestPut(p)) = &op.request else {
        return Ok(());
    };
    if (p.ignore_value || p.ignore_lease) && view.get(&p.key).is_none() {
        return Err(StoreError::KeyNotFound);
    }
    if p.lease != 0 && !lessor.contains(p.lease) {
        return Err(StoreError::LeaseNotFound);
    }
    Ok(())
}

fn check_range(view: &impl ReadView, op: &RequestOp) -> Result<()> {
    let Some(Request::RequestRange(r)) = &op.request else {
        return Ok(());
    };
    if r.revision == 0 {
        Ok(())
    } else if r.revision > view.rev() {
        Err(StoreError::FutureRev)
    } else if r.revision < view.first_rev() {
        Err(StoreError::Compacted)
    } else {
        Ok(())
    }
}

fn run_ops(
    target: &mut Target<'_, '_>,
    t: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse> {
    let succeeded = path.get(*pos).copied().unwrap_or(false);
    *pos += 1;
    let ops = if succeeded { &t.success } else { &t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match (&op.request, &mut *target) {
            (Some(Request::RequestRange(r)), Target::Read(kv)) => {
                Response::ResponseRange(range(*kv, r)?)
            }
            (Some(Request::RequestRange(r)), Target::Write(w, _)) => {
                Response::ResponseRange(range(&**w, r)?)
            }
            (Some(Request::RequestPut(p)), Target::Write(w, l)) => {
                Response::ResponsePut(put(w, l, p.clone())?)
            }
            (Some(Request::RequestDeleteRange(d)), Target::Write(w, l)) => {
                Response::ResponseDeleteRange(delete_range(w, l, d.clone())?)
            }
            (Some(Request::RequestTxn(n)), _) => {
                let mut nested = run_ops(target, n, path, pos)?;
                nested.header = Some(Default::default());
                Response::ResponseTxn(nested)
            }
            (None, _) => continue,
            // A read-only txn has no writes: `is_read_only` chose the target.
            (_, Target::Read(_)) => return Err(StoreError::NotCapable),
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

/// A put inside a write transaction (etcd's `applierV3backend.Put`).
pub fn put(w: &mut WriteTxn<'_>, lessor: &mut Lessor, p: PutRequest) -> Result<PutResponse> {
    if p.lease != 0 && !lessor.contains(p.lease) {
        return Err(StoreError::LeaseNotFound);
    }
    let prev = w.get(&p.key);
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(StoreError::KeyNotFound);
    }
    let value = match (&prev, p.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => p.value,
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => p.lease,
    };
    if let Some(old) = prev.as_ref().filter(|o| o.lease != 0) {
        lessor.detach(old.lease, &p.key);
    }
    if lease != 0 {
        lessor.attach(lease, &p.key);
    }
    let prev_kv = if p.prev_kv { prev.clone() } else { None };
    let rev = w.put_over(p.key, value, lease, prev);
    Ok(PutResponse {
        header: header(rev),
        prev_kv,
    })
}

/// A delete inside a write transaction (etcd's `applierV3backend.DeleteRange`).
pub fn delete_range(
    w: &mut WriteTxn<'_>,
    lessor: &mut Lessor,
    d: DeleteRangeRequest,
) -> Result<DeleteRangeResponse> {
    let deleted = w.delete_range(&KeyRange::new(&d.key, &d.range_end));
    for kv in deleted.iter().filter(|kv| kv.lease != 0) {
        lessor.detach(kv.lease, &kv.key);
    }
    let rev = if deleted.is_empty() && w.changes() == 0 {
        w.read_rev()
    } else {
        w.write_rev()
    };
    Ok(DeleteRangeResponse {
        header: header(rev),
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
    })
}
