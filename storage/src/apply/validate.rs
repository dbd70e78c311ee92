//! Checks a client request must pass before it is proposed (etcd's
//! `checkRangeRequest`, `checkPutRequest`, `checkTxnRequest`,
//! `checkIntervals`): they need no state, so a bad request never reaches the log.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::error::{Result, StoreError};
use crate::proto::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// A range needs a key.
pub fn check_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

/// A put needs a key, and `ignore_value`/`ignore_lease` exclude a value/lease.
pub fn check_put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(StoreError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(StoreError::LeaseProvided);
    }
    Ok(())
}

/// A delete needs a key.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

/// The whole txn check: op counts, keys, then put/delete overlaps.
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<()> {
    check_txn_ops(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_txn_ops: i64) -> Result<()> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_txn_ops {
        return Err(StoreError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(StoreError::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        check_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: i64) -> Result<()> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(t)) => check_txn_ops(t, max_txn_ops),
        None => Ok(()),
    }
}

/// A half-open key interval; `end: None` is a single key, an empty `end`
/// is +infinity (etcd's `StringAffineInterval` conventions).
#[derive(Debug, Clone)]
struct Interval {
    start: Bytes,
    end: Option<Bytes>,
}

impl Interval {
    fn contains_point(&self, k: &[u8]) -> bool {
        match &self.end {
            None => self.start.as_ref() == k,
            Some(e) => k >= self.start.as_ref() && (e.is_empty() || k < e.as_ref()),
        }
    }
}

/// Puts and deletes of one txn level, for the overlap check.
struct Writes {
    puts: BTreeSet<Bytes>,
    dels: Vec<Interval>,
}

fn check_intervals(reqs: &[RequestOp]) -> Result<Writes> {
    let mut dels: Vec<Interval> = reqs
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval {
                start: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let hits = |dels: &[Interval], k: &[u8]| dels.iter().any(|iv| iv.contains_point(k));
    let mut puts = BTreeSet::new();
    for op in reqs {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let then = check_intervals(&t.success)?;
        let els = check_intervals(&t.failure)?;
        for branch in [&then, &els] {
            for k in &branch.puts {
                if puts.contains(k) || hits(&dels, k) {
                    return Err(StoreError::DuplicateKey);
                }
            }
        }
        puts.extend(then.puts);
        puts.extend(els.puts);
        dels.extend(then.dels);
        dels.extend(els.dels);
    }
    for op in reqs {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(StoreError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok(Writes { puts, dels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::request_op::Request as R;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(R::RequestPut(PutRequest {
                key: Bytes::from(k.to_owned()),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(R::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from(k.to_owned()),
                range_end: Bytes::from(end.to_owned()),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_and_overlapping_deletes_are_refused() {
        let cases: Vec<(TxnRequest, bool)> = vec![
            (txn(vec![put("a"), put("b")], vec![]), true),
            (txn(vec![put("a"), put("a")], vec![]), false),
            (txn(vec![put("a")], vec![put("a")]), true),
            (txn(vec![del("a", "c"), put("b")], vec![]), false),
            (txn(vec![del("a", "c"), put("c")], vec![]), true),
            (txn(vec![del("a", ""), put("a")], vec![]), false),
            (txn(vec![del("a", "\0"), put("b")], vec![]), true), // etcd's quirk: "\0" end is no interval
            (
                txn(
                    vec![
                        put("a"),
                        RequestOp {
                            request: Some(R::RequestTxn(txn(vec![put("a")], vec![]))),
                        },
                    ],
                    vec![],
                ),
                false,
            ),
            (
                txn(
                    vec![RequestOp {
                        request: Some(R::RequestTxn(txn(vec![put("x")], vec![put("x")]))),
                    }],
                    vec![],
                ),
                true,
            ),
        ];
        for (i, (t, ok)) in cases.into_iter().enumerate() {
            assert_eq!(check_txn(&t, 128).is_ok(), ok, "case {i}");
        }
    }

    #[test]
    fn too_many_ops_and_empty_keys() {
        let t = txn((0..129).map(|i| put(&format!("k{i}"))).collect(), vec![]);
        assert_eq!(check_txn(&t, 128), Err(StoreError::TooManyOps));
        let t = txn(vec![put("")], vec![]);
        assert_eq!(check_txn(&t, 128), Err(StoreError::EmptyKey));
    }
}
