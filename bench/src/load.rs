//! Closed-loop request workloads (put, range, txn-put, lease-keepalive):
//! `--clients` concurrent clients share `--conns` gRPC connections round-robin
//! and together send `--total` requests, at most `--rate` per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use futures::future::BoxFuture;
use futures::StreamExt;
use hdrhistogram::Histogram;
use keel_storage::proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    request_op, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, PutRequest,
    RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use tonic::transport::Channel;

use crate::stats::{new_histogram, record, Errors, Limiter};

/// Opens `n` gRPC connections, spread round-robin over `endpoints`.
pub async fn connect(endpoints: &[String], n: usize) -> Result<Vec<Channel>> {
    if endpoints.is_empty() {
        return Err(anyhow!("no endpoints"));
    }
    let mut conns = Vec::with_capacity(n.max(1));
    for i in 0..n.max(1) {
        let ep = &endpoints[i % endpoints.len()];
        let ch = Channel::from_shared(ep.clone())
            .with_context(|| format!("bad endpoint {ep}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {ep}"))?;
        conns.push(ch);
    }
    Ok(conns)
}

/// `endpoints` with the one of the Raft leader first (as each member's
/// Status reports it); the others keep their order.
pub async fn leader_first(endpoints: &[String]) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut leader = 0;
    for ch in connect(endpoints, endpoints.len()).await? {
        let st = MaintenanceClient::new(ch)
            .status(StatusRequest {})
            .await
            .context("Status")?
            .into_inner();
        ids.push(st.header.map(|h| h.member_id).unwrap_or(0));
        if st.leader != 0 {
            leader = st.leader;
        }
    }
    let mut out = endpoints.to_vec();
    if let Some(i) = ids.iter().position(|&id| id == leader) {
        let l = out.remove(i);
        out.insert(0, l);
    }
    Ok(out)
}

/// The key of number `i`: decimal, zero-padded to `size` bytes.
pub fn key_bytes(i: u64, size: usize) -> Vec<u8> {
    let size = size.max(1);
    let mut k = format!("{i:0size$}").into_bytes();
    // Keep the low digits when `i` has more digits than `size`.
    k.drain(..k.len() - size);
    k
}

/// Picks the key number of request `i`.
#[derive(Debug, Clone, Copy)]
pub struct KeyPicker {
    /// Number of distinct keys.
    pub space: u64,
    /// `i % space` instead of a random key.
    pub sequential: bool,
}

impl KeyPicker {
    fn pick(&self, i: u64) -> u64 {
        let space = self.space.max(1);
        if self.sequential {
            i % space
        } else {
            rand::random::<u64>() % space
        }
    }
}

/// One client's requests.
pub trait Worker: Send + 'static {
    /// Sends request number `i` and waits for its response.
    fn call(&mut self, i: u64) -> BoxFuture<'_, Result<()>>;
}

/// Runs `workers` concurrently until `total` requests are done; returns the
/// merged latency histogram (µs) and the wall time.
pub async fn closed_loop(
    workers: Vec<Box<dyn Worker>>,
    total: u64,
    limiter: Option<Limiter>,
    timeout: Duration,
    errors: Arc<Errors>,
) -> Result<(Histogram<u64>, Duration)> {
    let next = Arc::new(AtomicU64::new(0));
    let limiter = Arc::new(limiter);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut w in workers {
        let (next, limiter, errors) = (next.clone(), limiter.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = new_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if let Some(l) = limiter.as_ref() {
                    l.wait().await;
                }
                let t0 = Instant::now();
                match tokio::time::timeout(timeout, w.call(i)).await {
                    Ok(Ok(())) => record(&mut h, t0.elapsed()),
                    Ok(Err(e)) => errors.add(format!("{e:#}")),
                    Err(_) => errors.add(format!("request {i} timed out after {timeout:?}")),
                }
            }
            h
        }));
    }
    let mut all = new_histogram();
    for t in tasks {
        let h = t.await.context("client task")?;
        all.add(&h)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
    }
    Ok((all, start.elapsed()))
}

/// `put`: one put per request.
pub struct PutWorker {
    /// The connection.
    pub client: KvClient<Channel>,
    /// Key size in bytes.
    pub key_size: usize,
    /// The value sent.
    pub value: bytes::Bytes,
    /// Which keys.
    pub keys: KeyPicker,
}

impl Worker for PutWorker {
    fn call(&mut self, i: u64) -> BoxFuture<'_, Result<()>> {
        let key = key_bytes(self.keys.pick(i), self.key_size);
        Box::pin(async move {
            self.client
                .put(PutRequest {
                    key: key.into(),
                    value: self.value.clone(),
                    ..Default::default()
                })
                .await?;
            Ok(())
        })
    }
}

/// `range`: one get of a key per request.
pub struct RangeWorker {
    /// The connection.
    pub client: KvClient<Channel>,
    /// The key.
    pub key: bytes::Bytes,
    /// Serializable (`--consistency s`) instead of linearizable.
    pub serializable: bool,
}

impl Worker for RangeWorker {
    fn call(&mut self, _i: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.client
                .range(RangeRequest {
                    key: self.key.clone(),
                    serializable: self.serializable,
                    ..Default::default()
                })
                .await?;
            Ok(())
        })
    }
}

/// `txn-put`: one transaction of `ops` puts (no compares) per request, to
/// keys `(i * ops + j) % space` as in etcd's `benchmark txn-put` (distinct
/// within a transaction, which etcd requires).
pub struct TxnPutWorker {
    /// The connection.
    pub client: KvClient<Channel>,
    /// Key size in bytes.
    pub key_size: usize,
    /// The value sent.
    pub value: bytes::Bytes,
    /// Number of distinct keys.
    pub space: u64,
    /// Puts per transaction.
    pub ops: usize,
}

impl Worker for TxnPutWorker {
    fn call(&mut self, i: u64) -> BoxFuture<'_, Result<()>> {
        let success = (0..self.ops.max(1) as u64)
            .map(|j| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key_bytes((i * self.ops as u64 + j) % self.space.max(1), self.key_size)
                        .into(),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        Box::pin(async move {
            self.client
                .txn(TxnRequest {
                    success,
                    ..Default::default()
                })
                .await?;
            Ok(())
        })
    }
}

/// `lease-keepalive`: one keep-alive round trip per request, on the client's
/// own `LeaseKeepAlive` stream, or on a new stream each time with `once`
/// (etcd's `benchmark lease-keepalive`, which calls `KeepAliveOnce`).
pub struct KeepAliveWorker {
    id: i64,
    client: LeaseClient<Channel>,
    once: bool,
    stream: Option<KeepAliveStream>,
}

type KeepAliveStream = (
    futures::channel::mpsc::UnboundedSender<LeaseKeepAliveRequest>,
    tonic::codec::Streaming<LeaseKeepAliveResponse>,
);

/// Opens a keep-alive stream and does its first round trip.
async fn open_keep_alive(
    client: &mut LeaseClient<Channel>,
    id: i64,
) -> Result<(KeepAliveStream, LeaseKeepAliveResponse)> {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    // The server sends its response headers with its first response: send
    // the keep-alive before waiting for the stream to open.
    tx.unbounded_send(LeaseKeepAliveRequest { id })
        .map_err(|_| anyhow!("keep-alive channel closed"))?;
    let mut rx = client
        .lease_keep_alive(rx)
        .await
        .context("LeaseKeepAlive")?
        .into_inner();
    let first = rx
        .message()
        .await?
        .ok_or_else(|| anyhow!("keep-alive stream ended"))?;
    Ok(((tx, rx), first))
}

fn check_ttl(r: &LeaseKeepAliveResponse) -> Result<()> {
    if r.ttl > 0 {
        Ok(())
    } else {
        Err(anyhow!("lease {} not found (ttl {})", r.id, r.ttl))
    }
}

impl KeepAliveWorker {
    /// Grants a lease of `ttl` seconds (and opens its keep-alive stream
    /// unless `once`).
    pub async fn new(ch: Channel, ttl: i64, once: bool) -> Result<KeepAliveWorker> {
        let mut client = LeaseClient::new(ch);
        let id = client
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
            .context("LeaseGrant")?
            .into_inner()
            .id;
        let stream = if once {
            None
        } else {
            Some(open_keep_alive(&mut client, id).await?.0)
        };
        Ok(KeepAliveWorker {
            id,
            client,
            once,
            stream,
        })
    }
}

impl Worker for KeepAliveWorker {
    fn call(&mut self, _i: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.once {
                let (_, r) = open_keep_alive(&mut self.client, self.id).await?;
                return check_ttl(&r);
            }
            let (tx, rx) = self
                .stream
                .as_mut()
                .ok_or_else(|| anyhow!("no keep-alive stream"))?;
            tx.unbounded_send(LeaseKeepAliveRequest { id: self.id })
                .map_err(|_| anyhow!("keep-alive stream closed"))?;
            match rx.next().await {
                Some(Ok(r)) => check_ttl(&r),
                Some(Err(e)) => Err(e.into()),
                None => Err(anyhow!("keep-alive stream ended")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every third request.
    struct Flaky;

    impl Worker for Flaky {
        fn call(&mut self, i: u64) -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                if matches!(i % 3, 0) {
                    Err(anyhow!("request {i} failed"))
                } else {
                    Ok(())
                }
            })
        }
    }

    #[tokio::test]
    async fn closed_loop_sends_total_and_counts_errors() {
        let errors = Arc::new(Errors::default());
        let workers: Vec<Box<dyn Worker>> = (0..4).map(|_| Box::new(Flaky) as _).collect();
        let (h, _) = closed_loop(
            workers,
            30,
            Limiter::new(100_000.0),
            Duration::from_secs(10),
            errors.clone(),
        )
        .await
        .expect("runs");
        assert_eq!(errors.get(), 10);
        assert_eq!(h.len(), 20);
    }

    #[test]
    fn keys_are_padded_and_keep_low_digits() {
        assert_eq!(key_bytes(42, 8), b"00000042");
        assert_eq!(key_bytes(123_456, 3), b"456");
        assert_eq!(key_bytes(7, 0), b"7");
        let seq = KeyPicker {
            space: 10,
            sequential: true,
        };
        assert_eq!(seq.pick(13), 3);
        let rnd = KeyPicker {
            space: 5,
            sequential: false,
        };
        assert!((0..100).all(|i| rnd.pick(i) < 5));
    }
}
