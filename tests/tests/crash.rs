//! Crash recovery: concurrent writers through the etcd gRPC API, `kill -9` at a
//! random moment, restart on the same data dir, and check that every
//! acknowledged put survived with its value and revision, and that the
//! revision never went backward. `KEEL_CRASH_ROUNDS` sets the number of rounds
//! (default 20).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_storage::proto::etcdserverpb::kv_client::KvClient;
use keel_storage::proto::etcdserverpb::{PutRequest, RangeRequest};
use keel_tests::{e2e_test, Backend, Member, MemberOpts};
use rand::Rng;
use tonic::transport::Channel;

const WRITERS: usize = 8;
const PREFIX: &str = "crash/";

/// One acknowledged put.
#[derive(Clone, Debug)]
struct Ack {
    key: String,
    value: String,
    revision: i64,
}

fn rounds() -> usize {
    std::env::var("KEEL_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

async fn connect(url: &str) -> KvClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match KvClient::connect(url.to_string()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect {url}: {e}"),
        }
    }
}

/// Puts unique keys until a put fails (the server died) or `stop` is set.
/// Returns the acknowledged puts; panics if the revisions it saw went backward.
async fn writer(
    url: String,
    round: usize,
    id: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) -> usize {
    // Connect, unless the member is killed before we get there.
    let mut client = loop {
        if stop.load(Ordering::Relaxed) {
            return 0;
        }
        match KvClient::connect(url.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut last_rev = 0;
    let mut n = 0;
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("{PREFIX}r{round:03}/w{id}/{seq:06}");
        let value = format!("value-{round}-{id}-{seq}-{}", rand::rng().random::<u32>());
        let req = PutRequest {
            key: key.clone().into_bytes().into(),
            value: value.clone().into_bytes().into(),
            ..Default::default()
        };
        let res = tokio::time::timeout(Duration::from_secs(5), client.put(req)).await;
        let resp = match res {
            Ok(Ok(resp)) => resp.into_inner(),
            // The server is gone (or going): this put is not acknowledged.
            Ok(Err(_)) | Err(_) => break,
        };
        let revision = resp.header.expect("put response has a header").revision;
        assert!(
            revision > last_rev,
            "writer {id}: put revision went from {last_rev} to {revision}"
        );
        last_rev = revision;
        acks.lock().unwrap().push(Ack {
            key,
            value,
            revision,
        });
        n += 1;
    }
    n
}

/// Reads everything under PREFIX: key → (value, mod_revision), plus the header revision.
async fn read_all(url: &str) -> (BTreeMap<String, (String, i64)>, i64) {
    let mut client = connect(url).await;
    let mut end = PREFIX.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let resp = client
        .range(RangeRequest {
            key: PREFIX.as_bytes().to_vec().into(),
            range_end: end.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("range after restart: {e}"))
        .into_inner();
    let rev = resp.header.expect("range response has a header").revision;
    assert_eq!(
        resp.count as usize,
        resp.kvs.len(),
        "unlimited range returns everything"
    );
    let kvs = resp
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key.to_vec()).expect("utf8 key"),
                (
                    String::from_utf8(kv.value.to_vec()).expect("utf8 value"),
                    kv.mod_revision,
                ),
            )
        })
        .collect();
    (kvs, rev)
}

fn crash_recovery(b: Backend) {
    let rounds = rounds();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // A small snapshot count so that recovery also goes through snapshots.
    let mut m = Member::start(b, MemberOpts::default().snapshot_count(1000));
    let url = m.client_url();
    let mut acked: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut max_rev = 0i64;
    let started = Instant::now();

    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|id| rt.spawn(writer(url.clone(), round, id, stop.clone(), acks.clone())))
            .collect();
        let delay = rand::rng().random_range(50..400);
        std::thread::sleep(Duration::from_millis(delay));
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        let counts: Vec<usize> = rt.block_on(async {
            let mut counts = Vec::new();
            for t in tasks {
                counts.push(t.await.expect("writer task panicked"));
            }
            counts
        });
        let acks = std::mem::take(&mut *acks.lock().unwrap());
        for a in &acks {
            assert!(
                a.revision > max_rev,
                "round {round}: acked revision {} not above the previous maximum {max_rev}",
                a.revision
            );
        }
        let round_max = acks.iter().map(|a| a.revision).max().unwrap_or(max_rev);
        for a in acks.iter() {
            acked.insert(a.key.clone(), (a.value.clone(), a.revision));
        }
        max_rev = max_rev.max(round_max);

        m.restart()
            .unwrap_or_else(|e| panic!("round {round}: restart failed: {e:#}"));
        let (kvs, rev) = rt.block_on(read_all(&url));
        assert!(
            rev >= max_rev,
            "round {round}: revision went backward after restart: {rev} < {max_rev}"
        );
        let mut missing = Vec::new();
        for (key, (value, revision)) in &acked {
            match kvs.get(key) {
                None => missing.push(format!("{key} (rev {revision}) is missing")),
                Some((v, r)) if v != value || r != revision => missing.push(format!(
                    "{key}: acked {value:?}@{revision}, found {v:?}@{r}"
                )),
                Some(_) => {}
            }
        }
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged puts lost or changed, e.g.:\n{}",
            missing.len(),
            acked.len(),
            missing[..missing.len().min(20)].join("\n")
        );
        max_rev = max_rev.max(rev);
        println!(
            "round {round}: killed after {delay} ms, {} acked ({:?} per writer), {} keys total, revision {rev}",
            acks.len(),
            counts,
            kvs.len()
        );
    }
    assert!(!acked.is_empty(), "no put was ever acknowledged");
    println!(
        "{rounds} crash rounds against {}: {} acknowledged puts all survived, {:?}",
        b.name(),
        acked.len(),
        started.elapsed()
    );
}
e2e_test!(crash_recovery: etcd, keel);
