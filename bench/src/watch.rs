//! Watch workloads.
//!
//! `watch-latency` (etcd `benchmark watch-latency`): `--watchers` watchers
//! over `--streams` watch streams watch one key; puts to that key at
//! `--put-rate`, one at a time (the next put waits until every watcher has
//! seen the previous one). Latency is from just before the put is sent to
//! each watcher's receipt of its event.
//!
//! `watch` (fan-out): `--watchers` watchers over `--streams` streams watch one
//! prefix while `--clients` clients put `--put-total` keys under it as fast as
//! `--put-rate` allows. Reports events delivered per second and the same
//! per-event latency.
//!
//! Each put's value starts with its sequence number, so a watcher finds the
//! send time of the put whose event it received.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use futures::channel::mpsc;
use hdrhistogram::Histogram;
use keel_storage::proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request, PutRequest, WatchCreateRequest,
    WatchRequest,
};
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::stats::{new_histogram, record, Errors, Limiter};

/// What to watch and how to put.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The watched key, or prefix when `prefix` is set.
    pub key: Vec<u8>,
    /// Watch every key starting with `key`.
    pub prefix: bool,
    /// Total watchers.
    pub watchers: usize,
    /// Watch streams the watchers are spread over.
    pub streams: usize,
    /// Puts in total.
    pub put_total: u64,
    /// Puts per second (0: unlimited).
    pub put_rate: f64,
    /// Concurrent putters (fan-out only; watch-latency puts one at a time).
    pub putters: usize,
    /// Wait for every watcher to see a put before the next (watch-latency).
    pub lockstep: bool,
    /// Value size in bytes (at least the 20 digits of the sequence number).
    pub val_size: usize,
}

/// The value of put `seq`: its decimal sequence number, padded to `size`.
pub fn seq_value(seq: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{seq:020}").into_bytes();
    v.resize(size.max(20), b'v');
    v
}

/// The sequence number at the start of a value written by [`seq_value`].
pub fn parse_seq(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..20)?).ok()?.parse().ok()
}

/// The etcd range end that covers every key with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // the whole keyspace
}

struct Shared {
    starts: Vec<OnceLock<Instant>>,
    got: Vec<AtomicU64>,
    delivered: AtomicU64,
    created: AtomicU64,
    last_event: Mutex<Option<Instant>>,
    notify: Notify,
    hist: Mutex<Histogram<u64>>,
    errors: Arc<Errors>,
}

/// Runs a watch workload, watchers on `conns` and puts on `put_conns` (own
/// connections, as etcd's benchmark does); returns the per-event latency histogram (µs) and
/// the time from the first put to the last event received.
pub async fn run(
    cfg: &WatchConfig,
    conns: &[Channel],
    put_conns: &[Channel],
    errors: Arc<Errors>,
) -> Result<(Histogram<u64>, Duration)> {
    if conns.is_empty() || put_conns.is_empty() {
        return Err(anyhow!("no connections"));
    }
    let watchers = cfg.watchers.max(1);
    let streams = cfg.streams.clamp(1, watchers);
    let shared = Arc::new(Shared {
        starts: (0..cfg.put_total).map(|_| OnceLock::new()).collect(),
        got: (0..cfg.put_total).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
        created: AtomicU64::new(0),
        last_event: Mutex::new(None),
        notify: Notify::new(),
        hist: Mutex::new(new_histogram()),
        errors,
    });
    let range_end = if cfg.prefix {
        prefix_end(&cfg.key)
    } else {
        Vec::new()
    };
    // Open the streams and register the watchers.
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for s in 0..streams {
        let n = watchers / streams + usize::from(s < watchers % streams);
        let (tx, rx) = mpsc::unbounded();
        for _ in 0..n {
            let create = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: cfg.key.clone().into(),
                        range_end: range_end.clone().into(),
                        ..Default::default()
                    },
                )),
            };
            tx.unbounded_send(create)
                .map_err(|_| anyhow!("watch request channel closed"))?;
        }
        let mut client = WatchClient::new(conns[s % conns.len()].clone());
        let stream = client
            .watch(rx)
            .await
            .context("opening a watch stream")?
            .into_inner();
        senders.push(tx);
        readers.push(tokio::spawn(read_stream(stream, shared.clone())));
    }
    wait_for(&shared.notify, Duration::from_secs(60), || {
        shared.created.load(Ordering::Relaxed) >= watchers as u64
    })
    .await;
    let created = shared.created.load(Ordering::Relaxed);
    if created < watchers as u64 {
        return Err(anyhow!("only {created} of {watchers} watchers created"));
    }

    // Put.
    let mut kv = KvClient::new(put_conns[0].clone());
    let limiter = Arc::new(Limiter::new(cfg.put_rate));
    let start = Instant::now();
    let expected = watchers as u64;
    if cfg.lockstep {
        for seq in 0..cfg.put_total {
            if let Some(l) = limiter.as_ref() {
                l.wait().await;
            }
            put(&mut kv, cfg.key.clone(), seq, cfg.val_size, &shared).await;
            // Wait until every watcher has this event (or give up after 5 s).
            wait_for(&shared.notify, Duration::from_secs(5), || {
                shared.got[seq as usize].load(Ordering::Relaxed) >= expected
            })
            .await;
        }
    } else {
        let next = Arc::new(AtomicU64::new(0));
        let mut putters = Vec::new();
        for p in 0..cfg.putters.max(1) {
            let (next, limiter, shared) = (next.clone(), limiter.clone(), shared.clone());
            let mut kv = KvClient::new(put_conns[p % put_conns.len()].clone());
            let (key, total, val_size) = (cfg.key.clone(), cfg.put_total, cfg.val_size);
            putters.push(tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= total {
                        break;
                    }
                    if let Some(l) = limiter.as_ref() {
                        l.wait().await;
                    }
                    let mut k = key.clone();
                    k.extend_from_slice(format!("{seq:010}").as_bytes());
                    put(&mut kv, k, seq, val_size, &shared).await;
                }
            }));
        }
        for p in putters {
            p.await.context("putter task")?;
        }
    }
    // Wait for the stragglers: until everything arrived, or nothing arrived
    // for 5 s.
    let all = expected * cfg.put_total;
    let mut seen = shared.delivered.load(Ordering::Relaxed);
    let mut idle_since = Instant::now();
    while seen < all && idle_since.elapsed() < Duration::from_secs(5) {
        wait_for(&shared.notify, Duration::from_millis(100), || {
            shared.delivered.load(Ordering::Relaxed) >= all
        })
        .await;
        let now = shared.delivered.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            idle_since = Instant::now();
        }
    }
    let last = shared
        .last_event
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(Instant::now);
    drop(senders);
    for r in readers {
        r.abort();
    }
    let missing = all.saturating_sub(seen);
    if missing > 0 {
        shared
            .errors
            .add_n(missing, format!("{missing} of {all} events not delivered"));
    }
    let h = shared
        .hist
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok((h, last.saturating_duration_since(start)))
}

/// Waits until `done()` holds or `max` has passed, woken by `notify`.
async fn wait_for(notify: &Notify, max: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + max;
    loop {
        let n = notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if done() || Instant::now() >= until {
            return;
        }
        let _ = tokio::time::timeout_at(until.into(), n).await;
    }
}

async fn put(kv: &mut KvClient<Channel>, key: Vec<u8>, seq: u64, val_size: usize, shared: &Shared) {
    let value = seq_value(seq, val_size);
    let _ = shared.starts[seq as usize].set(Instant::now());
    if let Err(e) = kv
        .put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
    {
        shared.errors.add(format!("put: {e}"));
    }
}

async fn read_stream(
    mut stream: tonic::codec::Streaming<keel_storage::proto::etcdserverpb::WatchResponse>,
    shared: Arc<Shared>,
) {
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                shared.errors.add(format!("watch stream: {e}"));
                return;
            }
        };
        let now = Instant::now();
        if resp.created {
            shared.created.fetch_add(1, Ordering::Relaxed);
            shared.notify.notify_waiters();
        }
        if resp.canceled {
            shared.errors.add(format!(
                "watch {} canceled: {} (compact revision {})",
                resp.watch_id, resp.cancel_reason, resp.compact_revision
            ));
        }
        if resp.events.is_empty() {
            continue;
        }
        {
            let mut h = shared.hist.lock().unwrap_or_else(|e| e.into_inner());
            for ev in &resp.events {
                let Some(seq) = ev.kv.as_ref().and_then(|kv| parse_seq(&kv.value)) else {
                    continue;
                };
                let Some(start) = shared.starts.get(seq as usize).and_then(|s| s.get()) else {
                    continue;
                };
                record(&mut h, now.saturating_duration_since(*start));
                shared.got[seq as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        shared
            .delivered
            .fetch_add(resp.events.len() as u64, Ordering::Relaxed);
        *shared.last_event.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        shared.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_sequence_number() {
        let v = seq_value(1234, 32);
        assert_eq!(v.len(), 32);
        assert_eq!(parse_seq(&v), Some(1234));
        assert_eq!(seq_value(7, 4).len(), 20);
        assert_eq!(parse_seq(b"short"), None);
        assert_eq!(parse_seq(b"xxxxxxxxxxxxxxxxxxxxxxx"), None);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
