//! The Watch gRPC service (etcd's `v3rpc/watch.go`): one bidirectional
//! stream per client call, many watchers per stream.
//!
//! Per stream: a receive task turns create / cancel / progress requests
//! into [`WatchHub`] calls; the response stream drains the stream's
//! [`Outbox`] (turning each [`Delivery`] into a `WatchResponse` with a full
//! header, split into fragments when the watcher asked for it and the
//! response is too large), and runs the stream's progress ticker. Dropping
//! the response stream (the client went away) removes every watcher of the
//! stream from the hub.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tonic::{Request, Response, Status, Streaming};

use super::header::Header;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::{Watch, WatchServer};
use crate::proto::etcdserverpb::{WatchRequest, WatchResponse};
use crate::watch::{Delivery, Outbox, StreamId, WatchHub, WatchSpec};

/// Extra room over `--max-request-bytes` before a response is fragmented
/// (etcd's `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The response stream type of [`WatchService`].
pub type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// The etcd Watch service over a [`WatchHub`].
#[derive(Debug, Clone)]
pub struct WatchService {
    hub: Arc<WatchHub>,
    header: Header,
    /// Responses of fragmenting watchers larger than this are split.
    fragment_bytes: usize,
}

impl WatchService {
    /// A Watch service over `hub`; `max_request_bytes` is the member's
    /// `--max-request-bytes` (etcd default 1.5 MiB): a response of a
    /// watcher that asked for fragments is split once it reaches that plus
    /// gRPC's overhead allowance, as etcd does.
    pub fn new(hub: Arc<WatchHub>, header: Header, max_request_bytes: usize) -> Self {
        WatchService {
            hub,
            header,
            fragment_bytes: max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES),
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> WatchServer<Self> {
        WatchServer::new(self)
    }

    /// Serves one watch stream fed by `inbound`: what [`Watch::watch`] does
    /// with the client's gRPC stream (public so tests can drive a stream
    /// without a network). Must be called inside a tokio runtime.
    pub fn serve<S>(&self, inbound: S) -> WatchResponseStream
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let outbox = Arc::new(Outbox::new(self.hub.config().outbox_capacity));
        let stream = self.hub.open_stream(outbox.clone());
        let recv = tokio::spawn(recv_loop(self.hub.clone(), stream, inbound));
        let interval = progress_interval(self.hub.config().progress_interval);
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Box::pin(ResponseStream {
            hub: self.hub.clone(),
            stream,
            outbox,
            header: self.header.clone(),
            fragment_bytes: self.fragment_bytes,
            pending: VecDeque::new(),
            ticker,
            recv,
        })
    }
}

/// etcd's `GetProgressReportInterval`: the interval plus up to 10% jitter,
/// so watchers created together do not all report together.
fn progress_interval(base: Duration) -> Duration {
    let tenth = base.as_millis() / 10;
    let jitter = if tenth > 0 {
        (rand::random::<u64>() as u128 % tenth) as u64
    } else {
        0
    };
    (base + Duration::from_millis(jitter)).max(Duration::from_millis(1))
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(self.serve(request.into_inner())))
    }
}

/// Reads the client's requests until its stream ends. A broken stream
/// closes the hub side (the response stream then ends); a clean
/// half-close leaves the watchers running, as etcd does.
async fn recv_loop<S>(hub: Arc<WatchHub>, stream: StreamId, mut inbound: S)
where
    S: Stream<Item = Result<WatchRequest, Status>> + Unpin,
{
    while let Some(msg) = inbound.next().await {
        let req = match msg {
            Ok(req) => req,
            Err(status) => {
                tracing::debug!(%status, "watch stream: receive failed");
                hub.close_stream(stream);
                return;
            }
        };
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                hub.watch(stream, WatchSpec::from_request(&c));
            }
            Some(RequestUnion::CancelRequest(c)) => {
                hub.cancel(stream, c.watch_id);
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                hub.request_progress_all(stream);
            }
            // etcd ignores a request it does not understand.
            None => {}
        }
    }
}

/// The server side of one watch stream.
struct ResponseStream {
    hub: Arc<WatchHub>,
    stream: StreamId,
    outbox: Arc<Outbox>,
    header: Header,
    fragment_bytes: usize,
    /// Responses made from one delivery, not yet handed to gRPC.
    pending: VecDeque<WatchResponse>,
    ticker: Interval,
    recv: JoinHandle<()>,
}

impl Stream for ResponseStream {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(r) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(r)));
            }
            match this.outbox.poll_pop(cx) {
                Poll::Ready(Some(d)) => {
                    if this.outbox.take_overflowed() {
                        // A slot is free again: let victims catch up.
                        this.hub.wake_sync();
                    }
                    this.pending
                        .extend(to_responses(d, &this.header, this.fragment_bytes));
                    continue;
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            match this.ticker.poll_tick(cx) {
                Poll::Ready(_) => this.hub.progress_tick(this.stream),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        self.recv.abort();
        self.hub.close_stream(self.stream);
    }
}

/// Turns one delivery into the response(s) etcd would send for it.
pub fn to_responses(d: Delivery, header: &Header, fragment_bytes: usize) -> Vec<WatchResponse> {
    let base = |watch_id: i64, revision: i64| WatchResponse {
        header: Some(header.at(revision)),
        watch_id,
        ..Default::default()
    };
    match d {
        Delivery::Created {
            watch_id,
            revision,
            cancel_reason,
        } => vec![WatchResponse {
            created: true,
            canceled: cancel_reason.is_some(),
            cancel_reason: cancel_reason.unwrap_or_default(),
            ..base(watch_id, revision)
        }],
        Delivery::Events {
            watch_id,
            revision,
            events,
            fragment,
        } => {
            let r = WatchResponse {
                events,
                ..base(watch_id, revision)
            };
            if fragment {
                fragments(r, fragment_bytes)
            } else {
                vec![r]
            }
        }
        Delivery::Canceled {
            watch_id,
            revision,
            compact_revision,
        } => vec![WatchResponse {
            canceled: true,
            compact_revision,
            ..base(watch_id, revision)
        }],
        Delivery::Progress { watch_id, revision } => vec![base(watch_id, revision)],
    }
}

/// etcd's `sendFragments`: a response of at least `limit` bytes with two or
/// more events is split into responses under `limit` (each with at least
/// one event), all but the last marked `fragment`.
pub fn fragments(wr: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if wr.encoded_len() < limit || wr.events.len() < 2 {
        return vec![wr];
    }
    let mut shell = wr.clone();
    shell.events = Vec::new();
    shell.fragment = true;
    let shell_len = shell.encoded_len();
    let mut out = Vec::new();
    let mut cur = shell.clone();
    let mut cur_len = shell_len;
    for ev in wr.events {
        let ev_len = prost::encoding::message::encoded_len(11, &ev);
        if !cur.events.is_empty() && cur_len + ev_len >= limit {
            out.push(std::mem::replace(&mut cur, shell.clone()));
            cur_len = shell_len;
        }
        cur_len += ev_len;
        cur.events.push(ev);
    }
    cur.fragment = false;
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::Event;
    use crate::proto::mvccpb::KeyValue;

    fn big_event(i: usize, size: usize) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: format!("k{i}").into_bytes().into(),
                value: vec![b'x'; size].into(),
                mod_revision: 5,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn watch_fragments_split_large_responses() {
        let header = Header::new(1, 2, 3);
        let d = Delivery::Events {
            watch_id: 7,
            revision: 5,
            events: (0..10).map(|i| big_event(i, 1000)).collect(),
            fragment: true,
        };
        let rs = to_responses(d.clone(), &header, 3500);
        assert!(rs.len() >= 3, "{} responses", rs.len());
        let (last, rest) = rs.split_last().expect("responses");
        assert!(!last.fragment);
        assert!(rest.iter().all(|r| r.fragment));
        for r in &rs {
            assert!(r.encoded_len() < 3500);
            assert_eq!(r.watch_id, 7);
            assert_eq!(r.header.as_ref().map(|h| h.revision), Some(5));
        }
        let keys: Vec<_> = rs
            .iter()
            .flat_map(|r| r.events.iter())
            .map(|e| e.kv.as_ref().map(|kv| kv.key.clone()))
            .collect();
        let want: Vec<_> = (0..10)
            .map(|i| Some(bytes::Bytes::from(format!("k{i}"))))
            .collect();
        assert_eq!(keys, want);
        // Without the flag, or under the limit: one response.
        let Delivery::Events { events, .. } = d else {
            unreachable!()
        };
        let no_flag = Delivery::Events {
            watch_id: 7,
            revision: 5,
            events: events.clone(),
            fragment: false,
        };
        assert_eq!(to_responses(no_flag, &header, 3500).len(), 1);
        let small = Delivery::Events {
            watch_id: 7,
            revision: 5,
            events,
            fragment: true,
        };
        assert_eq!(to_responses(small, &header, 1 << 20).len(), 1);
    }

    #[test]
    fn watch_fragments_single_huge_event_is_not_split() {
        let wr = WatchResponse {
            events: vec![big_event(0, 10_000)],
            ..Default::default()
        };
        let rs = fragments(wr, 100);
        assert_eq!(rs.len(), 1);
        assert!(!rs[0].fragment);
    }
}
