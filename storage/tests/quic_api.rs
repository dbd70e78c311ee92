//! The native QUIC client API against a real one-member store: requests,
//! errors as gRPC reports them, watches on streams of their own (a watch
//! that is not read holds back no other), garbage on a stream, and the
//! client's trust (an untrusted certificate is refused).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use keel_storage::member::{Member, MemberConfig};
use keel_storage::proto::etcdserverpb::{
    watch_request::RequestUnion, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use keel_storage::quic::{Client, ClientConfig, QuicServer, ServerTls};

struct Fixture {
    _dir: tempfile::TempDir,
    member: Arc<Member>,
    url: String,
    cert_pem: Vec<u8>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.member.shutdown();
    }
}

async fn start() -> Fixture {
    start_serving_at_most(keel_storage::quic::server::MAX_CONNECTIONS).await
}

/// [`start`] with a server that serves at most `connections` at once.
async fn start_serving_at_most(connections: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = format!("quic://127.0.0.1:{}", free_udp_port());
    let cfg = MemberConfig {
        name: "q1".into(),
        data_dir: dir.path().join("data"),
        peer_urls: vec![peer.clone()],
        listen_peer_urls: vec![peer.clone()],
        initial_cluster: vec![("q1".into(), peer)],
        heartbeat_interval: Duration::from_millis(20),
        election_timeout: Duration::from_millis(200),
        ..MemberConfig::default()
    };
    let member = Member::open(cfg.clone()).await.expect("open member");
    let tls = ServerTls::Auto {
        dir: cfg.data_dir.join("fixtures").join("client"),
        hosts: vec![],
    };
    let server = QuicServer::bind(member.clone(), "127.0.0.1:0".parse().expect("addr"), &tls)
        .expect("bind")
        .with_max_connections(connections);
    let url = format!(
        "quic://127.0.0.1:{}",
        server.local_addr().expect("addr").port()
    );
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(server.serve(async move {
        let _ = stop_rx.await;
    }));
    let cert_pem = std::fs::read(cfg.data_dir.join("fixtures/client/cert.pem")).expect("cert");
    // Wait for the member to lead its one-member cluster.
    for _ in 0..200 {
        if member.is_leader() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Fixture {
        _dir: dir,
        member,
        url,
        cert_pem,
        stop: Some(stop),
    }
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.local_addr().expect("addr").port()
}

fn client(f: &Fixture) -> Client {
    Client::new(ClientConfig::new(vec![f.url.clone()], f.cert_pem.clone())).expect("client")
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }
}

fn watch_create(prefix: &str, start: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::copy_from_slice(prefix.as_bytes()),
            range_end: Bytes::copy_from_slice(&keel_storage_prefix_end(prefix.as_bytes())),
            start_revision: start,
            ..Default::default()
        })),
    }
}

fn keel_storage_prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_requests_and_errors_match_the_grpc_services() {
    let f = start().await;
    let c = client(&f);
    let p = c.put(&put("a", "1")).await.expect("put");
    let rev = p.header.expect("header").revision;
    let r = c
        .range(&RangeRequest {
            key: Bytes::from_static(b"a"),
            ..Default::default()
        })
        .await
        .expect("range");
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].value.as_ref(), b"1");
    assert_eq!(r.kvs[0].mod_revision, rev);
    // A future revision: the same error as gRPC.
    let err = c
        .range(&RangeRequest {
            key: Bytes::from_static(b"a"),
            revision: rev + 100,
            ..Default::default()
        })
        .await
        .expect_err("future revision");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert!(status.message().contains("future rev"), "{status:?}");
    // An empty key: InvalidArgument, as etcd answers.
    let err = c.put(&put("", "x")).await.expect_err("empty key");
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_watch_that_is_not_read_does_not_block_another() {
    let f = start().await;
    let c = client(&f);
    // The stalled watch: created, then never read again.
    let (_keep_stalled, rx) = tokio::sync::mpsc::channel(1);
    let mut stalled = c.watch(watch_create("big/", 1), rx).await.expect("watch");
    let created = stalled.next().await.expect("created").expect("ok");
    assert!(created.created);
    let (_keep, rx) = tokio::sync::mpsc::channel(1);
    let mut live = c.watch(watch_create("small/", 1), rx).await.expect("watch");
    assert!(live.next().await.expect("created").expect("ok").created);
    // Far more than the stalled stream's flow-control window.
    let big = "x".repeat(256 * 1024);
    for i in 0..40 {
        c.put(&put(&format!("big/{i}"), &big))
            .await
            .expect("put big");
    }
    for i in 0..20 {
        c.put(&put(&format!("small/{i}"), "v"))
            .await
            .expect("put small");
        let resp = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .expect("the live watch is not held back")
            .expect("event")
            .expect("ok");
        assert_eq!(resp.events.len(), 1);
        assert_eq!(
            resp.events[0].kv.as_ref().expect("kv").key.as_ref(),
            format!("small/{i}").as_bytes()
        );
    }
    // The stalled watch still delivers everything, in order, once read.
    let mut seen = 0;
    while seen < 40 {
        let resp = tokio::time::timeout(Duration::from_secs(10), stalled.next())
            .await
            .expect("stalled watch catches up")
            .expect("event")
            .expect("ok");
        for ev in resp.events {
            assert_eq!(
                ev.kv.expect("kv").key.as_ref(),
                format!("big/{seen}").as_bytes()
            );
            seen += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_garbage_on_a_stream_is_refused_and_the_connection_keeps_serving() {
    let f = start().await;
    let c = client(&f);
    c.put(&put("g", "1")).await.expect("put");
    let cases: Vec<Vec<u8>> = vec![
        // An unknown method tag.
        vec![3, 0, 0, 0, 99, 1, 2],
        // A Range whose payload is not a RangeRequest.
        vec![5, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
        // A frame longer than the limit.
        vec![0xff, 0xff, 0xff, 0x7f, 1],
        // An empty frame.
        vec![0, 0, 0, 0],
        // A stream ending inside a frame.
        vec![100, 0, 0, 0, 1, 2, 3],
        // A watch whose request is garbage.
        vec![3, 0, 0, 0, 16, 0xff, 0xff],
    ];
    for garbage in cases {
        let (mut send, mut recv) = c.open_raw_stream().await.expect("stream");
        send.write_all(&garbage).await.expect("write");
        let _ = send.finish();
        // An error frame or a reset: either way the stream ends promptly.
        let _ = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
            .await
            .expect("the server ends a garbage stream");
    }
    // Garbage UDP datagrams at the endpoint are ignored.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let addr = f.url.trim_start_matches("quic://");
    for n in [1usize, 20, 1200, 1500] {
        let _ = sock.send_to(&vec![0xabu8; n], addr);
    }
    let r = c
        .range(&RangeRequest {
            key: Bytes::from_static(b"g"),
            ..Default::default()
        })
        .await
        .expect("still serving");
    assert_eq!(r.kvs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_client_refuses_an_untrusted_server() {
    let f = start().await;
    let other = rcgen_free_self_signed();
    let c = Client::new(ClientConfig::new(vec![f.url.clone()], other)).expect("client");
    let err = c
        .range(&RangeRequest {
            key: Bytes::from_static(b"a"),
            ..Default::default()
        })
        .await
        .expect_err("untrusted certificate");
    assert!(err.to_string().contains("connecting"), "{err}");
}

/// A client past the server's connection limit is refused at the
/// handshake; the clients already connected keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connections_past_the_limit_are_refused() {
    let f = start_serving_at_most(2).await;
    let get = RangeRequest {
        key: Bytes::from_static(b"a"),
        ..Default::default()
    };
    let (a, b) = (client(&f), client(&f));
    a.put(&put("a", "1")).await.expect("first connection");
    b.range(&get).await.expect("second connection");
    let c = client(&f);
    let third = tokio::time::timeout(Duration::from_secs(5), c.range(&get)).await;
    assert!(
        !matches!(third, Ok(Ok(_))),
        "a third connection was served: {third:?}"
    );
    let r = a.range(&get).await.expect("first connection still served");
    assert_eq!(r.kvs.len(), 1);
    b.range(&get).await.expect("second connection still served");
}

/// Another store's auto certificate: a valid certificate that is not the
/// server's.
fn rcgen_free_self_signed() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = ServerTls::Auto {
        dir: dir.path().to_path_buf(),
        hosts: vec![],
    };
    // Generating the server config writes the certificate.
    tls.ensure().expect("generate");
    std::fs::read(dir.path().join("cert.pem")).expect("cert")
}

/// Waits until the hub has `n` open streams.
async fn wait_streams(f: &Fixture, n: usize) {
    for _ in 0..500 {
        if f.member.hub().stats().streams == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "hub has {} streams, expected {n}",
        f.member.hub().stats().streams
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_watch_progress_and_cancel_by_closing_the_stream() {
    let f = start().await;
    let c = client(&f);
    let base = f.member.hub().stats().streams;
    let (progress_tx, rx) = tokio::sync::mpsc::channel(1);
    let mut w1 = c.watch(watch_create("p/", 0), rx).await.expect("watch");
    assert!(w1.next().await.expect("created").expect("ok").created);
    let (keep, rx) = tokio::sync::mpsc::channel(1);
    let mut w2 = c.watch(watch_create("q/", 0), rx).await.expect("watch");
    assert!(w2.next().await.expect("created").expect("ok").created);
    wait_streams(&f, base + 2).await;
    // A progress request on the watch's own stream.
    let rev = c
        .put(&put("other", "x"))
        .await
        .expect("put")
        .header
        .expect("h")
        .revision;
    progress_tx
        .send(WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(Default::default())),
        })
        .await
        .expect("send progress request");
    let p = tokio::time::timeout(Duration::from_secs(5), w1.next())
        .await
        .expect("progress")
        .expect("response")
        .expect("ok");
    assert!(p.events.is_empty());
    assert!(p.header.expect("header").revision >= rev);
    // Dropping the response stream cancels that watch only.
    drop(w1);
    wait_streams(&f, base + 1).await;
    c.put(&put("q/1", "v")).await.expect("put");
    let e = w2.next().await.expect("event").expect("ok");
    assert_eq!(e.events.len(), 1);
    // Ending the request side cancels it too.
    drop(keep);
    wait_streams(&f, base).await;
    drop(progress_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_client_fails_over_to_the_next_endpoint() {
    let f = start().await;
    let dead = format!("quic://127.0.0.1:{}", free_udp_port());
    let mut cfg = ClientConfig::new(vec![dead.clone(), f.url.clone()], f.cert_pem.clone());
    cfg.connect_timeout = Duration::from_millis(300);
    let c = Client::new(cfg).expect("client");
    assert_eq!(c.pinned_endpoint(), dead);
    c.put(&put("fo", "1"))
        .await
        .expect("put through the live endpoint");
    assert_eq!(c.pinned_endpoint(), f.url);
    // Pinned to the live one now: no more waiting on the dead one.
    let t = std::time::Instant::now();
    let r = c
        .range(&RangeRequest {
            key: Bytes::from_static(b"fo"),
            ..Default::default()
        })
        .await
        .expect("range");
    assert_eq!(r.kvs.len(), 1);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_dial_to_a_port_nobody_listens_on_is_refused_not_timed_out() {
    // A member whose process is gone: its port answers with ICMP port
    // unreachable, which the client takes as a refusal at once (its dial
    // timeout is far longer than this test may run).
    let f = start().await;
    let dead = format!("quic://127.0.0.1:{}", free_udp_port());
    let mut cfg = ClientConfig::new(vec![dead], f.cert_pem.clone());
    cfg.connect_timeout = Duration::from_secs(600);
    let c = Client::new(cfg).expect("client");
    let e = tokio::time::timeout(
        Duration::from_secs(60),
        c.range(&RangeRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        }),
    )
    .await
    .expect("the dial ended before its own timeout")
    .expect_err("nobody listens");
    assert!(e.to_string().contains("connection refused"), "{e}");
}
