//! Watch streams whose events are collected for comparison at the end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use keel_storage::proto::etcdserverpb::watch_client::WatchClient;
use keel_storage::proto::etcdserverpb::watch_request::RequestUnion;
use keel_storage::proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use keel_storage::proto::mvccpb::Event;
use tokio::task::JoinHandle;

/// Everything one watch stream delivered.
#[derive(Default, Debug)]
pub struct WatchLog {
    pub events: Vec<Event>,
    /// `(compact_revision, cancel_reason)` of a cancel response.
    pub canceled: Option<(i64, String)>,
    /// A stream error or end.
    pub error: Option<String>,
}

impl WatchLog {
    /// The mod_revision of the last event received (0 if none).
    pub fn last_rev(&self) -> i64 {
        self.events
            .last()
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
            .unwrap_or(0)
    }
}

/// A running watch stream.
pub struct Watch {
    pub name: String,
    pub log: Arc<Mutex<WatchLog>>,
    task: JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a watch on its own stream and waits for the `created` response.
pub async fn open(url: &str, name: &str, create: WatchCreateRequest) -> anyhow::Result<Watch> {
    let mut client = WatchClient::connect(url.to_string()).await?;
    let req = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    };
    // Keep the request stream open for the life of the watch.
    let reqs = futures::stream::iter(vec![req]).chain(futures::stream::pending());
    let mut stream = client.watch(reqs).await?.into_inner();
    let log = Arc::new(Mutex::new(WatchLog::default()));
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .map_err(|_| anyhow::anyhow!("watch {name}: no created response in 5 s"))??
        .ok_or_else(|| anyhow::anyhow!("watch {name}: stream ended before created"))?;
    let record = |log: &Arc<Mutex<WatchLog>>,
                  r: keel_storage::proto::etcdserverpb::WatchResponse| {
        let mut l = log.lock().unwrap();
        l.events.extend(r.events);
        if r.canceled {
            l.canceled = Some((r.compact_revision, r.cancel_reason));
        }
    };
    if !first.created {
        anyhow::bail!("watch {name}: first response is not `created`: {first:?}");
    }
    record(&log, first);
    let log2 = log.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            match stream.message().await {
                Ok(Some(r)) => record(&log2, r),
                Ok(None) => {
                    log2.lock().unwrap().error = Some("stream ended".into());
                    return;
                }
                Err(s) => {
                    log2.lock().unwrap().error = Some(format!("{:?}: {}", s.code(), s.message()));
                    return;
                }
            }
        }
    });
    Ok(Watch {
        name: name.to_string(),
        log,
        task,
    })
}
