//! Applying an [`Op`] to one server and normalising the response into JSON, and
//! the field-by-field JSON diff.
//!
//! Normalisation drops only what legitimately differs between two servers:
//! `cluster_id`, `member_id`, `raft_term` in headers (only `revision` is kept),
//! hash values (HashKV keeps `compact_revision`), the remaining TTL of a lease
//! (only whether it is positive), the order of a lease's keys and of the lease
//! list (sets), and the order among sort ties (see [`range_json`]).

use std::time::Duration;

use keel_storage::proto::etcdserverpb::kv_client::KvClient;
use keel_storage::proto::etcdserverpb::lease_client::LeaseClient;
use keel_storage::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_storage::proto::etcdserverpb::range_request::SortTarget;
use keel_storage::proto::etcdserverpb::request_op::Request;
use keel_storage::proto::etcdserverpb::response_op::Response;
use keel_storage::proto::etcdserverpb::{
    DeleteRangeResponse, LeaseLeasesRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, TxnRequest, TxnResponse,
};
use keel_storage::proto::mvccpb::{Event, KeyValue};
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::gen::Op;

/// The gRPC clients of one server.
#[derive(Clone)]
pub struct Clients {
    pub kv: KvClient<Channel>,
    pub lease: LeaseClient<Channel>,
    pub maint: MaintenanceClient<Channel>,
}

impl Clients {
    pub async fn connect(url: &str) -> anyhow::Result<Clients> {
        let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(Clients {
            kv: KvClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            lease: LeaseClient::new(ch.clone()),
            maint: MaintenanceClient::new(ch),
        })
    }
}

/// Bytes as a JSON string: the text if it is printable UTF-8, else `0x<hex>`.
/// Long values are abbreviated (length + prefix) to keep reports readable.
pub fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => {
            if s.len() > 40 {
                Value::String(format!("{}…(len {})", &s[..20], s.len()))
            } else {
                Value::String(s.to_string())
            }
        }
        _ => Value::String(format!(
            "0x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
    }
}

pub fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": bytes_json(&kv.key),
        "value": bytes_json(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    })
}

fn opt_kv_json(kv: &Option<KeyValue>) -> Value {
    kv.as_ref().map(kv_json).unwrap_or(Value::Null)
}

fn header_json(h: &Option<ResponseHeader>) -> Value {
    match h {
        Some(h) => json!({ "revision": h.revision }),
        None => Value::Null,
    }
}

fn status_json(s: &tonic::Status) -> Value {
    json!({ "error": { "code": format!("{:?}", s.code()), "message": s.message() } })
}

/// The value a range sorts by.
fn sort_key(t: SortTarget, kv: &KeyValue) -> Value {
    match t {
        SortTarget::Key => bytes_json(&kv.key),
        SortTarget::Version => kv.version.into(),
        SortTarget::Create => kv.create_revision.into(),
        SortTarget::Mod => kv.mod_revision.into(),
        SortTarget::Value => bytes_json(&kv.value),
    }
}

/// A range response. Sort ties: when sorting by a non-unique target
/// (VERSION/CREATE/MOD/VALUE; even CREATE/MOD tie for keys written by one
/// txn), etcd's order among equal targets is unspecified (Go's unstable
/// sort), so each run of equal targets is re-sorted by key; the sequence of
/// target values itself is compared as returned. If the result was truncated
/// by `limit` (`more`), *which* members of the last run made it in is also
/// unspecified, so the last run's entries are replaced by their target value.
pub fn range_json(req: Option<&RangeRequest>, r: &RangeResponse) -> Value {
    let mut kvs: Vec<Value> = r.kvs.iter().map(kv_json).collect();
    if let Some(req) = req {
        let t = req.sort_target();
        if t != SortTarget::Key && !r.kvs.is_empty() {
            let targets: Vec<Value> = r.kvs.iter().map(|kv| sort_key(t, kv)).collect();
            let mut start = 0;
            while start < kvs.len() {
                let mut end = start + 1;
                while end < kvs.len() && targets[end] == targets[start] {
                    end += 1;
                }
                kvs[start..end].sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
                if end == kvs.len() && r.more {
                    for v in &mut kvs[start..end] {
                        *v = json!({ "tie_at_limit": targets[start].clone() });
                    }
                }
                start = end;
            }
        }
    }
    json!({
        "header": header_json(&r.header),
        "kvs": kvs,
        "more": r.more,
        "count": r.count,
    })
}

fn put_json(r: &PutResponse) -> Value {
    json!({ "header": header_json(&r.header), "prev_kv": opt_kv_json(&r.prev_kv) })
}

fn delete_json(r: &DeleteRangeResponse) -> Value {
    json!({
        "header": header_json(&r.header),
        "deleted": r.deleted,
        "prev_kvs": r.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
    })
}

/// A txn response; nested responses are normalised against the request ops of
/// the branch this server says it took.
pub fn txn_json(req: Option<&TxnRequest>, r: &TxnResponse) -> Value {
    let branch = req.map(|t| if r.succeeded { &t.success } else { &t.failure });
    let responses: Vec<Value> = r
        .responses
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let rq = branch
                .and_then(|b| b.get(i))
                .and_then(|o| o.request.as_ref());
            match &op.response {
                Some(Response::ResponseRange(x)) => {
                    let rr = match rq {
                        Some(Request::RequestRange(q)) => Some(q),
                        _ => None,
                    };
                    json!({ "range": range_json(rr, x) })
                }
                Some(Response::ResponsePut(x)) => json!({ "put": put_json(x) }),
                Some(Response::ResponseDeleteRange(x)) => json!({ "delete": delete_json(x) }),
                Some(Response::ResponseTxn(x)) => {
                    let tq = match rq {
                        Some(Request::RequestTxn(q)) => Some(q),
                        _ => None,
                    };
                    json!({ "txn": txn_json(tq, x) })
                }
                None => Value::Null,
            }
        })
        .collect();
    json!({
        "header": header_json(&r.header),
        "succeeded": r.succeeded,
        "responses": responses,
    })
}

pub fn event_json(e: &Event) -> Value {
    json!({
        "type": if e.r#type == 0 { "PUT".to_string() } else if e.r#type == 1 { "DELETE".to_string() } else { format!("type {}", e.r#type) },
        "kv": opt_kv_json(&e.kv),
        "prev_kv": opt_kv_json(&e.prev_kv),
    })
}

const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies `op` and returns the normalised response (or `{"error": …}`).
pub async fn exec(c: &mut Clients, op: &Op) -> Value {
    match tokio::time::timeout(OP_TIMEOUT, exec_inner(c, op)).await {
        Ok(v) => v,
        Err(_) => {
            json!({ "error": { "code": "client timeout", "message": format!("no response in {OP_TIMEOUT:?}") } })
        }
    }
}

async fn exec_inner(c: &mut Clients, op: &Op) -> Value {
    macro_rules! call {
        ($fut:expr, |$r:ident| $body:expr) => {
            match $fut.await {
                Ok(resp) => {
                    let $r = resp.into_inner();
                    $body
                }
                Err(s) => status_json(&s),
            }
        };
    }
    match op {
        Op::Range(q) => call!(c.kv.range(q.clone()), |r| range_json(Some(q), &r)),
        Op::Put(q) => call!(c.kv.put(q.clone()), |r| put_json(&r)),
        Op::Delete(q) => call!(c.kv.delete_range(q.clone()), |r| delete_json(&r)),
        Op::Txn(q) => call!(c.kv.txn(q.clone()), |r| txn_json(Some(q), &r)),
        Op::Compact(q) => call!(c.kv.compact(*q), |r| json!({
            "header": header_json(&r.header)
        })),
        Op::LeaseGrant(q) => call!(c.lease.lease_grant(*q), |r| json!({
            "header": header_json(&r.header), "ID": r.id, "TTL": r.ttl, "error_field": r.error,
        })),
        Op::LeaseRevoke(q) => call!(c.lease.lease_revoke(*q), |r| json!({
            "header": header_json(&r.header)
        })),
        Op::LeaseTtl(q) => call!(c.lease.lease_time_to_live(*q), |r| {
            let mut keys: Vec<Value> = r.keys.iter().map(|k| bytes_json(k)).collect();
            keys.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            json!({
                "header": header_json(&r.header),
                "ID": r.id,
                // The remaining TTL ticks down: compare only its sign.
                "TTL": if r.ttl > 0 { json!("positive") } else { json!(r.ttl) },
                "grantedTTL": r.granted_ttl,
                "keys (sorted)": keys,
            })
        }),
        Op::LeaseLeases => call!(c.lease.lease_leases(LeaseLeasesRequest {}), |r| {
            let mut ids: Vec<i64> = r.leases.iter().map(|l| l.id).collect();
            ids.sort();
            json!({ "header": header_json(&r.header), "leases (sorted)": ids })
        }),
        Op::HashKv(q) => call!(c.maint.hash_kv(*q), |r| json!({
            "header": header_json(&r.header), "compact_revision": r.compact_revision,
        })),
        Op::LeaseKeepAlive(id) => {
            use futures::StreamExt;
            let req = keel_storage::proto::etcdserverpb::LeaseKeepAliveRequest { id: *id };
            let reqs = futures::stream::iter(vec![req]).chain(futures::stream::pending());
            match c.lease.lease_keep_alive(reqs).await {
                Ok(resp) => match resp.into_inner().message().await {
                    Ok(Some(r)) => json!({
                        "header": header_json(&r.header), "ID": r.id, "TTL": r.ttl,
                    }),
                    Ok(None) => json!({ "error": { "code": "stream ended", "message": "" } }),
                    Err(s) => status_json(&s),
                },
                Err(s) => status_json(&s),
            }
        }
        Op::StateCheck => {
            let q = RangeRequest {
                key: vec![0u8].into(),
                range_end: vec![0u8].into(),
                ..Default::default()
            };
            let kvs = call!(c.kv.range(q.clone()), |r| range_json(Some(&q), &r));
            let leases = Box::pin(exec_inner(c, &Op::LeaseLeases)).await;
            json!({ "all keys": kvs, "leases": leases })
        }
    }
}

/// The header revision of a normalised response, if it has one.
pub fn header_rev(v: &Value) -> Option<i64> {
    v.get("header")?.get("revision")?.as_i64()
}

/// One differing leaf: (path, etcd's value, keel's value).
pub type Diff = (String, Value, Value);

/// Field-by-field differences between two normalised responses. Arrays of
/// different lengths are reported whole (element-wise paths would cascade).
pub fn diff(a: &Value, b: &Value) -> Vec<Diff> {
    let mut out = Vec::new();
    diff_at(String::new(), a, b, &mut out);
    out
}

fn diff_at(path: String, a: &Value, b: &Value, out: &mut Vec<Diff>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let null = Value::Null;
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_at(p, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff_at(format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a == b => {}
        _ => out.push((path, a.clone(), b.clone())),
    }
}

/// A mismatch signature: the op kind and the differing paths with indices
/// removed (plus the error messages, so distinct errors are distinct bugs).
pub fn signature(kind: &str, diffs: &[Diff]) -> String {
    let mut paths: Vec<String> = diffs
        .iter()
        .map(|(p, a, b)| {
            let mut s = String::new();
            let mut skip = false;
            for ch in p.chars() {
                match ch {
                    '[' => {
                        skip = true;
                        s.push('[');
                    }
                    ']' => {
                        skip = false;
                        s.push(']');
                    }
                    _ if skip => {}
                    _ => s.push(ch),
                }
            }
            if s.ends_with("error.message") || s.ends_with("error.code") {
                s = format!("{s}={a}/{b}");
            }
            if s == "error" {
                let msg = |v: &Value| {
                    v.get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                        .unwrap_or_else(|| "ok".into())
                };
                s = format!("error={}/{}", msg(a), msg(b));
            }
            s
        })
        .collect();
    paths.sort();
    paths.dedup();
    format!("{kind}: {}", paths.join(", "))
}

/// Pretty JSON on one line per small value.
pub fn show(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Used by the state check: pull the `"kvs"` array out of a range response.
pub fn kvs_of(v: &Value) -> Vec<Value> {
    v.get("kvs")
        .and_then(|k| k.as_array())
        .cloned()
        .unwrap_or_default()
}
