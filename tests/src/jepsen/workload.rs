//! Workloads: many concurrent etcd gRPC clients, every op recorded into a
//! [`History`] with its call and return times.
//!
//! - registers: read / write / compare-and-swap on a few hot keys `reg/N`;
//! - list-append: multi-key transactions guarded by `mod_revision` on keys
//!   `la/N`, whose values are space-separated lists of unique elements;
//! - leases: grant (short TTL), attach a key, revoke or let expire, then
//!   prove the key is gone;
//! - watchers on prefixes from revision 0, an old revision, a compacted one
//!   and a future one, resuming after errors from the last revision + 1;
//! - a compactor (so compacted starts and `ErrCompacted` happen) and a
//!   status sampler.
//!
//! Every written value is unique (`c<client>-<counter>`). An error that
//! proves the request never took effect (refused connection, invalid
//! request) records a write as `Fail`; a timeout or any other error as
//! `Unknown`. A failed read is always `Fail` (it changed nothing).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_storage::proto::etcdserverpb as pb;
use keel_storage::proto::etcdserverpb::kv_client::KvClient;
use keel_storage::proto::etcdserverpb::lease_client::LeaseClient;
use keel_storage::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_storage::proto::etcdserverpb::watch_client::WatchClient;
use keel_storage::proto::mvccpb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use super::db::channel;
use super::history::{
    CmpOp, CmpTarget, Compare, EventKind, FaultEvent, History, KeyValue, Op, OpResult, Request,
    Response, StatusSample, TxnOp, TxnOpResult, WatchEvent, WatchLog, WatchRecord,
};
use super::netns::SocketFactory;

/// How long one client call may take before it counts as unknown.
pub const OP_TIMEOUT: Duration = Duration::from_millis(2000);

/// Collects the history of a run from every client, watcher and the nemesis.
pub struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
    watches: Mutex<Vec<Arc<Mutex<WatchLog>>>>,
    faults: Mutex<Vec<FaultEvent>>,
    status: Mutex<Vec<StatusSample>>,
    /// Compactions done by the compactor.
    pub compactions: AtomicU64,
    /// The last compaction revision.
    pub compact_rev: AtomicI64,
}

impl Recorder {
    /// A recorder whose time 0 is now.
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            next_id: AtomicU64::new(0),
            ops: Mutex::new(Vec::new()),
            watches: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            status: Mutex::new(Vec::new()),
            compactions: AtomicU64::new(0),
            compact_rev: AtomicI64::new(0),
        })
    }

    /// Nanoseconds since the start of the run.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records one finished op.
    pub fn op(&self, client: u32, member: &str, call_ns: u64, req: Request, resp: Response) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let op = Op {
            id,
            client,
            member: Some(member.to_string()),
            call_ns,
            return_ns: Some(self.now()),
            req,
            resp,
        };
        lock(&self.ops).push(op);
        id
    }

    /// Records a fault that starts now; returns its index for [`Recorder::fault_end`].
    pub fn fault_start(&self, kind: &str, members: Vec<String>, description: String) -> usize {
        let mut f = lock(&self.faults);
        f.push(FaultEvent {
            start_ns: self.now(),
            end_ns: None,
            kind: kind.to_string(),
            members,
            description,
        });
        f.len() - 1
    }

    /// Marks fault `i` healed now.
    pub fn fault_end(&self, i: usize) {
        let now = self.now();
        if let Some(f) = lock(&self.faults).get_mut(i) {
            f.end_ns = Some(now);
        }
    }

    /// Adds to the description of fault `i`.
    pub fn fault_note(&self, i: usize, note: &str) {
        if let Some(f) = lock(&self.faults).get_mut(i) {
            f.description.push_str("; ");
            f.description.push_str(note);
        }
    }

    /// A new watch log, kept by the recorder.
    pub fn watch_log(&self, key: &str, prefix: bool) -> Arc<Mutex<WatchLog>> {
        let mut w = lock(&self.watches);
        let log = Arc::new(Mutex::new(WatchLog {
            watcher: w.len() as u32,
            key: key.to_string(),
            prefix,
            records: Vec::new(),
        }));
        w.push(log.clone());
        log
    }

    /// Records a status sample.
    pub fn status(&self, s: StatusSample) {
        lock(&self.status).push(s);
    }

    /// Ops recorded so far.
    pub fn op_count(&self) -> usize {
        lock(&self.ops).len()
    }

    /// A snapshot of everything recorded, as a [`History`].
    pub fn history(&self) -> History {
        let mut ops = lock(&self.ops).clone();
        ops.sort_by_key(|o| o.id);
        History {
            ops,
            watches: lock(&self.watches)
                .iter()
                .map(|w| lock(w).clone())
                .collect(),
            faults: lock(&self.faults).clone(),
            status: lock(&self.status).clone(),
            meta: Default::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The members clients may talk to (changes with membership), and one
/// shared channel per member.
pub struct Endpoints {
    sockets: SocketFactory,
    list: RwLock<Vec<(String, SocketAddr)>>,
    channels: Mutex<HashMap<SocketAddr, Channel>>,
}

impl Endpoints {
    /// Endpoints reached through `sockets`.
    pub fn new(sockets: SocketFactory, list: Vec<(String, SocketAddr)>) -> Arc<Endpoints> {
        Arc::new(Endpoints {
            sockets,
            list: RwLock::new(list),
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the member list.
    pub fn set(&self, list: Vec<(String, SocketAddr)>) {
        *self.list.write().unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// The member list.
    pub fn list(&self) -> Vec<(String, SocketAddr)> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A random member and a channel to it. Must run inside the runtime.
    pub fn pick(&self, rng: &mut StdRng) -> Option<(String, Channel)> {
        let list = self.list();
        if list.is_empty() {
            return None;
        }
        let (name, addr) = list[rng.random_range(0..list.len())].clone();
        Some((name, self.channel(addr)))
    }

    /// The shared channel to `addr`.
    pub fn channel(&self, addr: SocketAddr) -> Channel {
        lock(&self.channels)
            .entry(addr)
            .or_insert_with(|| channel(&self.sockets, addr, Duration::ZERO))
            .clone()
    }

    /// A fresh (unshared) channel to `addr`, for a watch stream.
    pub fn fresh_channel(&self, addr: SocketAddr) -> Channel {
        channel(&self.sockets, addr, Duration::ZERO)
    }
}

/// What a client call's error means for its op.
pub fn classify(e: &tonic::Status, write: bool) -> Response {
    let error = format!("{:?}: {}", e.code(), e.message());
    if !write {
        return Response::Fail { error };
    }
    use tonic::Code;
    let msg = e.message().to_ascii_lowercase();
    let never_sent = e.code() == Code::Unavailable
        && (msg.contains("error trying to connect")
            || msg.contains("connection refused")
            || msg.contains("tcp connect error"));
    let rejected = matches!(
        e.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
    );
    if never_sent || rejected {
        Response::Fail { error }
    } else {
        Response::Unknown { error }
    }
}

/// Runs `fut` with [`OP_TIMEOUT`]; maps a timeout to a `DeadlineExceeded` status.
async fn timed<T>(
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r.map(|r| r.into_inner()),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {OP_TIMEOUT:?}"
        ))),
    }
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A history [`KeyValue`] from the wire's.
pub fn kv_of(kv: &mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        key: s(&kv.key),
        value: s(&kv.value),
        mod_revision: kv.mod_revision,
        create_revision: kv.create_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

fn rev(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// The wire key of a prefix: the empty prefix (every key) is `\0`.
fn prefix_key(p: &str) -> Bytes {
    if p.is_empty() {
        Bytes::from_static(b"\0")
    } else {
        Bytes::from(p.to_string())
    }
}

/// The range end of a prefix (`\0`, i.e. no end, for the empty prefix).
fn prefix_end(p: &str) -> Bytes {
    Bytes::from(crate::cluster::prefix_end(p))
}

fn to_pb_compare(c: &Compare) -> pb::Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match c.op {
        CmpOp::Equal => R::Equal,
        CmpOp::NotEqual => R::NotEqual,
        CmpOp::Less => R::Less,
        CmpOp::Greater => R::Greater,
    };
    let (target, union) = match &c.target {
        CmpTarget::Value(v) => (T::Value, U::Value(Bytes::from(v.clone()))),
        CmpTarget::ModRevision(r) => (T::Mod, U::ModRevision(*r)),
        CmpTarget::CreateRevision(r) => (T::Create, U::CreateRevision(*r)),
        CmpTarget::Version(v) => (T::Version, U::Version(*v)),
        CmpTarget::Lease(l) => (T::Lease, U::Lease(*l)),
    };
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: Bytes::from(c.key.clone()),
        range_end: Bytes::new(),
        target_union: Some(union),
    }
}

fn to_pb_op(o: &TxnOp) -> pb::RequestOp {
    use pb::request_op::Request as R;
    let r = match o {
        TxnOp::Get { key } => R::RequestRange(pb::RangeRequest {
            key: Bytes::from(key.clone()),
            ..Default::default()
        }),
        TxnOp::Put { key, value, lease } => R::RequestPut(pb::PutRequest {
            key: Bytes::from(key.clone()),
            value: Bytes::from(value.clone()),
            lease: *lease,
            ..Default::default()
        }),
        TxnOp::Delete { key } => R::RequestDeleteRange(pb::DeleteRangeRequest {
            key: Bytes::from(key.clone()),
            ..Default::default()
        }),
    };
    pb::RequestOp { request: Some(r) }
}

fn from_pb_result(r: &pb::ResponseOp) -> TxnOpResult {
    use pb::response_op::Response as R;
    match &r.response {
        Some(R::ResponseRange(rr)) => TxnOpResult::Get {
            kv: rr.kvs.first().map(kv_of),
        },
        Some(R::ResponseDeleteRange(d)) => TxnOpResult::Delete { deleted: d.deleted },
        _ => TxnOpResult::Put,
    }
}

/// Executes one [`Request`] on `ch`; returns the response to record.
pub async fn execute(ch: Channel, req: &Request) -> Response {
    let write = req.is_write();
    let mut kv = KvClient::new(ch.clone());
    let res: Result<(i64, OpResult), tonic::Status> = match req {
        Request::Get {
            key,
            serializable,
            revision,
        } => {
            let key = Bytes::from(key.clone());
            range(&mut kv, key, Bytes::new(), *serializable, *revision)
                .await
                .map(|(r, kvs)| {
                    let kv = kvs.into_iter().next();
                    (r, OpResult::Get { kv })
                })
        }
        Request::Range {
            prefix,
            serializable,
            revision,
        } => {
            let (key, end) = (prefix_key(prefix), prefix_end(prefix));
            range(&mut kv, key, end, *serializable, *revision)
                .await
                .map(|(r, kvs)| (r, OpResult::Range { kvs }))
        }
        Request::Put { key, value, lease } => timed(kv.put(pb::PutRequest {
            key: Bytes::from(key.clone()),
            value: Bytes::from(value.clone()),
            lease: *lease,
            ..Default::default()
        }))
        .await
        .map(|r| (rev(&r.header), OpResult::Put)),
        Request::Delete { key } => timed(kv.delete_range(pb::DeleteRangeRequest {
            key: Bytes::from(key.clone()),
            ..Default::default()
        }))
        .await
        .map(|r| (rev(&r.header), OpResult::Delete { deleted: r.deleted })),
        Request::Txn {
            compares,
            success,
            failure,
        } => timed(kv.txn(pb::TxnRequest {
            compare: compares.iter().map(to_pb_compare).collect(),
            success: success.iter().map(to_pb_op).collect(),
            failure: failure.iter().map(to_pb_op).collect(),
        }))
        .await
        .map(|r| {
            (
                rev(&r.header),
                OpResult::Txn {
                    succeeded: r.succeeded,
                    results: r.responses.iter().map(from_pb_result).collect(),
                },
            )
        }),
        Request::LeaseGrant { ttl, id } => timed(
            LeaseClient::new(ch.clone()).lease_grant(pb::LeaseGrantRequest { ttl: *ttl, id: *id }),
        )
        .await
        .and_then(|r| {
            if r.error.is_empty() {
                Ok((rev(&r.header), OpResult::LeaseGrant { id: r.id }))
            } else {
                Err(tonic::Status::unknown(r.error))
            }
        }),
        Request::LeaseRevoke { id } => {
            timed(LeaseClient::new(ch.clone()).lease_revoke(pb::LeaseRevokeRequest { id: *id }))
                .await
                .map(|r| (rev(&r.header), OpResult::LeaseRevoke))
        }
        Request::LeaseKeepAlive { id } => keepalive_once(ch.clone(), *id)
            .await
            .map(|r| (rev(&r.header), OpResult::LeaseKeepAlive { ttl: r.ttl })),
        Request::LeaseTimeToLive { id } => timed(LeaseClient::new(ch.clone()).lease_time_to_live(
            pb::LeaseTimeToLiveRequest {
                id: *id,
                keys: false,
            },
        ))
        .await
        .map(|r| (rev(&r.header), OpResult::LeaseTimeToLive { ttl: r.ttl })),
        Request::LeaseExpire { .. } => Err(tonic::Status::invalid_argument(
            "LeaseExpire is synthetic: the checkers make it, nobody sends it",
        )),
    };
    match res {
        Ok((revision, result)) => Response::Ok { revision, result },
        Err(e) => classify(&e, write),
    }
}

/// One `Range` call: the header revision and the key-values.
async fn range(
    kv: &mut KvClient<Channel>,
    key: Bytes,
    range_end: Bytes,
    serializable: bool,
    revision: i64,
) -> Result<(i64, Vec<KeyValue>), tonic::Status> {
    timed(kv.range(pb::RangeRequest {
        key,
        range_end,
        serializable,
        revision,
        ..Default::default()
    }))
    .await
    .map(|r| (rev(&r.header), r.kvs.iter().map(kv_of).collect()))
}

async fn keepalive_once(ch: Channel, id: i64) -> Result<pb::LeaseKeepAliveResponse, tonic::Status> {
    let fut = async move {
        let req = futures::stream::iter(vec![pb::LeaseKeepAliveRequest { id }])
            .chain(futures::stream::pending());
        let mut stream = LeaseClient::new(ch)
            .lease_keep_alive(req)
            .await?
            .into_inner();
        match stream.message().await? {
            Some(r) => Ok(r),
            None => Err(tonic::Status::unavailable("keepalive stream ended")),
        }
    };
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded("keepalive timed out")),
    }
}

use futures::StreamExt;

/// Shared state of a running workload.
#[derive(Clone)]
pub struct Ctx {
    /// The recorder.
    pub rec: Arc<Recorder>,
    /// Where to send requests.
    pub eps: Arc<Endpoints>,
    /// Set to stop every client.
    pub stop: Arc<AtomicBool>,
    /// Client ids.
    pub next_client: Arc<AtomicU32>,
}

impl Ctx {
    /// A new context.
    pub fn new(rec: Arc<Recorder>, eps: Arc<Endpoints>) -> Ctx {
        Ctx {
            rec,
            eps,
            stop: Arc::new(AtomicBool::new(false)),
            next_client: Arc::new(AtomicU32::new(0)),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sends `req` to a random member and records it as client `client`.
    pub async fn call(&self, client: u32, rng: &mut StdRng, req: Request) -> Response {
        let Some((member, ch)) = self.eps.pick(rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Response::Fail {
                error: "no endpoints".into(),
            };
        };
        self.call_on(client, &member, ch, req).await
    }

    /// Sends `req` to `member` over `ch` and records it.
    pub async fn call_on(&self, client: u32, member: &str, ch: Channel, req: Request) -> Response {
        let t = self.rec.now();
        let resp = execute(ch, &req).await;
        self.rec.op(client, member, t, req, resp.clone());
        if !matches!(resp, Response::Ok { .. }) {
            // Do not spin against a dead member.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        resp
    }
}

/// Keys of the register workload.
pub const REGISTERS: usize = 5;
/// Keys of the list-append workload.
pub const LISTS: usize = 6;

/// A register client: get / put / CAS on `reg/0..REGISTERS`.
pub async fn register_client(ctx: Ctx, seed: u64) {
    let c = ctx.next_client.fetch_add(1, Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x9e37));
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut n = 0u64;
    while !ctx.stopped() {
        let key = format!("reg/{}", rng.random_range(0..REGISTERS));
        let dice = rng.random_range(0..10);
        n += 1;
        let value = format!("c{c}-{n}");
        let req = if dice < 4 {
            // One read in four is serializable (served from the member's
            // own state, maybe stale): checked against the history at the
            // revision it reports.
            Request::Get {
                key: key.clone(),
                serializable: dice == 0,
                revision: 0,
            }
        } else if dice < 7 {
            Request::Put {
                key: key.clone(),
                value,
                lease: 0,
            }
        } else {
            let target = match seen.get(&key) {
                Some(v) => CmpTarget::Value(v.clone()),
                None => CmpTarget::ModRevision(0),
            };
            Request::Txn {
                compares: vec![Compare {
                    key: key.clone(),
                    op: CmpOp::Equal,
                    target,
                }],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value,
                    lease: 0,
                }],
                failure: vec![TxnOp::Get { key: key.clone() }],
            }
        };
        let resp = ctx.call(c, &mut rng, req.clone()).await;
        if let Response::Ok { result, .. } = resp {
            match (result, req) {
                (OpResult::Get { kv: Some(kv) }, _) => {
                    seen.insert(key, kv.value);
                }
                (OpResult::Put, Request::Put { value, .. }) => {
                    seen.insert(key, value);
                }
                (OpResult::Txn { succeeded, results }, Request::Txn { success, .. }) => {
                    if succeeded {
                        if let Some(TxnOp::Put { value, .. }) = success.first() {
                            seen.insert(key, value.clone());
                        }
                    } else if let Some(TxnOpResult::Get { kv }) = results.first() {
                        match kv {
                            Some(kv) => seen.insert(key, kv.value.clone()),
                            None => seen.remove(&key),
                        };
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..25))).await;
    }
}

/// A list-append client: read a few `la/N` keys, then append to some of
/// them in one transaction guarded by the read `mod_revision`s.
pub async fn list_append_client(ctx: Ctx, seed: u64) {
    let c = ctx.next_client.fetch_add(1, Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x51ed));
    let mut n = 0u64;
    while !ctx.stopped() {
        let k = rng.random_range(1..=3usize);
        let mut keys: Vec<String> = Vec::new();
        while keys.len() < k {
            let key = format!("la/{}", rng.random_range(0..LISTS));
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let Some((member, ch)) = ctx.eps.pick(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Read them all at one revision.
        let read = Request::Txn {
            compares: vec![],
            success: keys.iter().map(|k| TxnOp::Get { key: k.clone() }).collect(),
            failure: vec![],
        };
        let resp = ctx.call_on(c, &member, ch.clone(), read).await;
        let Response::Ok {
            result: OpResult::Txn { results, .. },
            ..
        } = resp
        else {
            continue;
        };
        let current: Vec<Option<KeyValue>> = results
            .into_iter()
            .map(|r| match r {
                TxnOpResult::Get { kv } => kv,
                _ => None,
            })
            .collect();
        let mut compares = Vec::new();
        let mut success = Vec::new();
        for (key, kv) in keys.iter().zip(&current) {
            compares.push(Compare {
                key: key.clone(),
                op: CmpOp::Equal,
                target: CmpTarget::ModRevision(kv.as_ref().map_or(0, |kv| kv.mod_revision)),
            });
            if rng.random_bool(0.7) {
                n += 1;
                let elem = format!("c{c}-{n}");
                let value = match kv {
                    Some(kv) if !kv.value.is_empty() => format!("{} {elem}", kv.value),
                    _ => elem,
                };
                success.push(TxnOp::Put {
                    key: key.clone(),
                    value,
                    lease: 0,
                });
            } else {
                success.push(TxnOp::Get { key: key.clone() });
            }
        }
        let write = Request::Txn {
            compares,
            success,
            failure: vec![],
        };
        ctx.call_on(c, &member, ch, write).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..25))).await;
    }
}

/// Whether keys are attached to leases that are left to expire (revoked
/// leases always carry a key). The checkers model an expiry as a synthetic
/// op of unknown outcome per lease (`super::expiry`), placed by the watch
/// events of its deletes or before the `LeaseTimeToLive` that finds the
/// lease gone.
pub const EXPIRE_WITH_KEYS: bool = true;

/// A lease client. Half the leases get a key and are revoked (TTL 30 s,
/// the revoke retried until it is known to have happened); the other half
/// are short (2–3 s), get a key too if [`EXPIRE_WITH_KEYS`], are kept alive
/// once and left to expire. Finally it asks the lease's TTL and reads the
/// key (which must be gone once the TTL says -1).
pub async fn lease_client(ctx: Ctx, seed: u64) {
    let c = ctx.next_client.fetch_add(1, Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x1ea5));
    let mut n = 0u64;
    while !ctx.stopped() {
        n += 1;
        let revoke = rng.random_bool(0.5);
        let ttl = if revoke { 30 } else { rng.random_range(2..=3) };
        let Response::Ok {
            result: OpResult::LeaseGrant { id },
            ..
        } = ctx
            .call(c, &mut rng, Request::LeaseGrant { ttl, id: 0 })
            .await
        else {
            continue;
        };
        let key = format!("lease/c{c}/{n}");
        if revoke || EXPIRE_WITH_KEYS {
            ctx.call(
                c,
                &mut rng,
                Request::Put {
                    key: key.clone(),
                    value: format!("c{c}-{n}"),
                    lease: id,
                },
            )
            .await;
        }
        if revoke {
            let deadline = Instant::now() + Duration::from_secs(25);
            // Until it is known to be gone: Ok, or NotFound (revoked by an
            // earlier attempt whose answer was lost).
            while Instant::now() < deadline {
                match ctx.call(c, &mut rng, Request::LeaseRevoke { id }).await {
                    Response::Ok { .. } | Response::Fail { .. } => break,
                    Response::Unknown { .. } => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            ctx.call(c, &mut rng, Request::LeaseKeepAlive { id }).await;
            // Past its expiry (the TTL, plus slack for the leader's clock).
            let deadline = Instant::now() + Duration::from_secs(ttl as u64 + 2);
            while Instant::now() < deadline && !ctx.stopped() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        ctx.call(c, &mut rng, Request::LeaseTimeToLive { id }).await;
        ctx.call(
            c,
            &mut rng,
            Request::Get {
                key,
                serializable: false,
                revision: 0,
            },
        )
        .await;
    }
}

/// Where a watcher starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchStart {
    /// From now (`start_revision` 0).
    Now,
    /// From this (old) revision.
    At(i64),
    /// From a revision below the last compaction (expects a compact cancel).
    Compacted,
    /// From this many revisions in the future.
    Future(i64),
}

/// Current revision through any member (linearizable), if one answers.
pub async fn current_revision(eps: &Endpoints, rng: &mut StdRng) -> Option<i64> {
    for _ in 0..20 {
        if let Some((_, ch)) = eps.pick(rng) {
            if let Ok(r) = timed(KvClient::new(ch).range(pb::RangeRequest {
                key: Bytes::from_static(b"\0"),
                ..Default::default()
            }))
            .await
            {
                return Some(rev(&r.header));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// A watcher on `prefix`: logs every response; on any error or cancel it
/// reconnects (to a random member) from the last revision it saw + 1
/// (after a compaction cancel: from the compact revision).
pub async fn watcher(ctx: Ctx, prefix: String, start: WatchStart, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ prefix.len() as u64 ^ 0x3a7c);
    let log = ctx.rec.watch_log(&prefix, true);
    let mut next = match start {
        WatchStart::Now => 0,
        WatchStart::At(r) => r,
        WatchStart::Compacted => (ctx.rec.compact_rev.load(Ordering::Relaxed) - 5).max(1),
        WatchStart::Future(d) => current_revision(&ctx.eps, &mut rng).await.unwrap_or(1) + d,
    };
    let push = |r: WatchRecord| lock(&log).records.push(r);
    while !ctx.stopped() {
        let list = ctx.eps.list();
        if list.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let (member, addr) = list[rng.random_range(0..list.len())].clone();
        let ch = ctx.eps.fresh_channel(addr);
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(4);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix_key(&prefix),
                    range_end: prefix_end(&prefix),
                    start_revision: next,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        let _ = tx.send(create).await;
        push(WatchRecord::Start {
            time_ns: ctx.rec.now(),
            member: Some(member.clone()),
            start_rev: next,
            progress_notify: true,
        });
        let reqs = tokio_stream_from(rx);
        let stream = tokio::time::timeout(OP_TIMEOUT, WatchClient::new(ch).watch(reqs)).await;
        let mut stream = match stream {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(e)) => {
                end(&ctx, &push, 0, format!("{:?}: {}", e.code(), e.message()));
                continue;
            }
            Err(_) => {
                end(&ctx, &push, 0, "watch: no stream within timeout".into());
                continue;
            }
        };
        let mut silent = 0;
        let reason = loop {
            if ctx.stopped() {
                break "stopped".to_string();
            }
            let msg = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
            let resp = match msg {
                Err(_) => {
                    // Quiet: ask for progress; give up on a dead stream.
                    silent += 1;
                    if silent > 2 {
                        break "silent for 6 s".to_string();
                    }
                    let _ = tx
                        .send(pb::WatchRequest {
                            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                                pb::WatchProgressRequest {},
                            )),
                        })
                        .await;
                    continue;
                }
                Ok(Err(e)) => break format!("{:?}: {}", e.code(), e.message()),
                Ok(Ok(None)) => break "stream ended".to_string(),
                Ok(Ok(Some(r))) => r,
            };
            silent = 0;
            let now = ctx.rec.now();
            let hrev = rev(&resp.header);
            if resp.canceled {
                push(WatchRecord::End {
                    time_ns: now,
                    compact_revision: resp.compact_revision,
                    reason: format!("canceled: {}", resp.cancel_reason),
                });
                if resp.compact_revision > 0 {
                    next = resp.compact_revision;
                }
                break String::new();
            }
            if !resp.events.is_empty() {
                let events: Vec<WatchEvent> = resp
                    .events
                    .iter()
                    .map(|e| WatchEvent {
                        kind: if e.r#type == mvccpb::event::EventType::Delete as i32 {
                            EventKind::Delete
                        } else {
                            EventKind::Put
                        },
                        kv: e.kv.as_ref().map(kv_of).unwrap_or_else(|| KeyValue {
                            key: String::new(),
                            value: String::new(),
                            mod_revision: 0,
                            create_revision: 0,
                            version: 0,
                            lease: 0,
                        }),
                        prev_kv: e.prev_kv.as_ref().map(kv_of),
                    })
                    .collect();
                let last = events.last().map_or(0, |e| e.kv.mod_revision);
                push(WatchRecord::Events {
                    time_ns: now,
                    header_revision: hrev,
                    events,
                });
                next = next.max(last + 1);
            } else if resp.created {
                push(WatchRecord::Created {
                    time_ns: now,
                    header_revision: hrev,
                });
                if next == 0 {
                    next = hrev + 1;
                }
            } else {
                push(WatchRecord::Progress {
                    time_ns: now,
                    revision: hrev,
                });
                if next > 0 {
                    next = next.max(hrev + 1);
                }
            }
        };
        if !reason.is_empty() {
            end(&ctx, &push, 0, reason);
        }
    }
}

fn end(ctx: &Ctx, push: &impl Fn(WatchRecord), compact_revision: i64, reason: String) {
    push(WatchRecord::End {
        time_ns: ctx.rec.now(),
        compact_revision,
        reason,
    });
}

/// A `Stream` over an mpsc receiver.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// Compacts every `every` to (current revision - `keep`).
pub async fn compactor(ctx: Ctx, every: Duration, keep: i64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc0c0);
    loop {
        let t = Instant::now();
        while t.elapsed() < every {
            if ctx.stopped() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(cur) = current_revision(&ctx.eps, &mut rng).await else {
            continue;
        };
        let target = cur - keep;
        if target <= ctx.rec.compact_rev.load(Ordering::Relaxed) {
            continue;
        }
        let Some((_, ch)) = ctx.eps.pick(&mut rng) else {
            continue;
        };
        let r = timed(KvClient::new(ch).compact(pb::CompactionRequest {
            revision: target,
            physical: false,
        }))
        .await;
        if r.is_ok() {
            ctx.rec.compactions.fetch_add(1, Ordering::Relaxed);
            ctx.rec.compact_rev.fetch_max(target, Ordering::Relaxed);
        }
    }
}

/// Samples every member's `Status` every `every`.
pub async fn status_sampler(ctx: Ctx, every: Duration) {
    while !ctx.stopped() {
        for (name, addr) in ctx.eps.list() {
            let ch = ctx.eps.channel(addr);
            let call = ctx.rec.now();
            let r = tokio::time::timeout(
                Duration::from_millis(500),
                MaintenanceClient::new(ch).status(pb::StatusRequest {}),
            )
            .await;
            // The member answered somewhere between call and return: the
            // checks order samples by both.
            if let Ok(Ok(r)) = r {
                let r = r.into_inner();
                ctx.rec.status(StatusSample {
                    call_ns: call,
                    return_ns: ctx.rec.now(),
                    member: name,
                    revision: rev(&r.header),
                    raft_term: r.raft_term,
                    raft_index: r.raft_applied_index,
                });
            }
        }
        tokio::time::sleep(every).await;
    }
}
