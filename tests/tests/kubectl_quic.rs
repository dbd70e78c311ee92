//! The API server on the store's native QUIC client API, with real
//! processes and sockets: kubectl CRUD and watch against a 3-member keel
//! cluster, failover when the member the API server is connected to is
//! killed, a watch that is not read holding back no other watch, and
//! garbage at the QUIC endpoint refused while the store keeps serving.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use keel_storage::proto::etcdserverpb::{
    watch_request::RequestUnion, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use keel_storage::quic::{Client, ClientConfig};
use keel_tests::kube::KubeApi;
use keel_tests::{Backend, Member, MemberOpts};

/// Retries `f` until it returns true or `timeout` passes.
fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl get cm -w` in the background; its output lines on the channel.
fn watch_configmaps(api: &KubeApi, ns: &str) -> (std::process::Child, mpsc::Receiver<String>) {
    api.kubectl_watch(&["-n", ns, "cm"])
}

/// Reads watch output until it has seen every one of `wanted` (substrings).
fn expect_in_watch(rx: &mpsc::Receiver<String>, wanted: &[&str]) {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !wanted.iter().all(|w| seen.contains(w)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => panic!("watch did not show {wanted:?}; saw:\n{seen}"),
        }
    }
}

#[test]
fn apiserver_over_quic_on_three_members_crud_watch_and_failover() {
    let Some(mut api) = KubeApi::start_on_cluster_or_skip() else {
        return;
    };
    // CRUD and watch through kubectl.
    api.kubectl_ok(&["create", "ns", "quic"]);
    let (mut watcher, rx) = watch_configmaps(&api, "quic");
    std::thread::sleep(Duration::from_millis(700));
    api.kubectl_ok(&[
        "-n",
        "quic",
        "create",
        "configmap",
        "c1",
        "--from-literal=a=b",
    ]);
    api.kubectl_ok(&["-n", "quic", "label", "configmap", "c1", "x=y"]);
    let got = api.kubectl_ok(&[
        "-n",
        "quic",
        "get",
        "configmap",
        "c1",
        "-o",
        "jsonpath={.data.a}/{.metadata.labels.x}",
    ]);
    assert_eq!(got, "b/y");
    api.kubectl_ok(&["-n", "quic", "delete", "configmap", "c1"]);
    expect_in_watch(&rx, &["\"ADDED\"", "\"MODIFIED\"", "\"DELETED\"", "\"c1\""]);
    let _ = watcher.kill();
    let _ = watcher.wait();

    // Every member, followers included, serves writes (forwarded to the
    // leader) and linearizable reads over QUIC, as over gRPC.
    {
        let cluster = api.cluster_mut().expect("cluster");
        let leader = cluster.wait_leader(Duration::from_secs(10));
        let rt = runtime();
        for i in 0..cluster.len() {
            let m = cluster.member(i);
            rt.block_on(async {
                let c = quic_client(m);
                let key = format!("direct/{i}");
                let put = c.put(&put(&key, "v")).await.expect("put over QUIC");
                let rev = put.header.expect("header").revision;
                let r = c
                    .range(&RangeRequest {
                        key: Bytes::copy_from_slice(key.as_bytes()),
                        ..Default::default()
                    })
                    .await
                    .expect("range over QUIC");
                assert_eq!(r.kvs.len(), 1, "member {i} (leader {leader})");
                assert!(r.header.expect("header").revision >= rev);
            });
        }
    }
    // The API server pins the first endpoint; kill that member.
    let first = api.store().quic_url().expect("quic url");
    let logged_for_first = |api: &KubeApi, needle: &str| {
        api.log_lines_with(needle)
            .iter()
            .any(|l| l.contains(&first))
    };
    assert!(
        logged_for_first(&api, "QUIC store connection up"),
        "the API server is connected to {first}\n{}",
        api.log()
    );
    api.cluster_mut().expect("cluster").kill9(0);
    // Writes and reads go on through another member.
    eventually(
        Duration::from_secs(40),
        "a write after the failover",
        || {
            api.kubectl(&[
                "-n",
                "quic",
                "create",
                "configmap",
                "c2",
                "--from-literal=k=v",
            ])
            .success()
                || api
                    .kubectl(&["-n", "quic", "get", "configmap", "c2"])
                    .success()
        },
    );
    let got = api.kubectl_ok(&[
        "-n",
        "quic",
        "get",
        "configmap",
        "c2",
        "-o",
        "jsonpath={.data.k}",
    ]);
    assert_eq!(got, "v");
    assert!(
        !api.log_lines_with("QUIC store client: failover").is_empty(),
        "the client failed over\n{}",
        api.log()
    );
    // It noticed the killed member from its port's refusal (ICMP port
    // unreachable), as a TCP client notices a RST, not from a timeout.
    assert!(
        logged_for_first(&api, "refused by the member's port"),
        "the client saw {first} refuse\n{}",
        api.log()
    );
    // A watch through the new member.
    let (mut watcher, rx) = watch_configmaps(&api, "quic");
    std::thread::sleep(Duration::from_millis(700));
    eventually(Duration::from_secs(20), "create c3", || {
        api.kubectl(&["-n", "quic", "create", "configmap", "c3"])
            .success()
    });
    expect_in_watch(&rx, &["\"c3\""]);
    let _ = watcher.kill();
    let _ = watcher.wait();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn quic_client(m: &Member) -> Client {
    let pem = std::fs::read(m.quic_cert()).expect("member QUIC certificate");
    Client::new(ClientConfig::new(
        vec![m.quic_url().expect("member serves QUIC")],
        pem,
    ))
    .expect("client")
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }
}

fn watch_prefix(prefix: &str) -> WatchRequest {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::copy_from_slice(prefix.as_bytes()),
            range_end: end.into(),
            start_revision: 0,
            ..Default::default()
        })),
    }
}

#[test]
fn quic_watch_that_is_not_read_does_not_block_another() {
    let m = Member::start(Backend::Keel, MemberOpts::default().quic_client());
    let rt = runtime();
    rt.block_on(async {
        let c = quic_client(&m);
        // Both watches share one QUIC connection.
        let (_keep1, rx1) = tokio::sync::mpsc::channel(1);
        let mut stalled = c.watch(watch_prefix("big/"), rx1).await.expect("watch");
        assert!(stalled.next().await.expect("created").expect("ok").created);
        let (_keep2, rx2) = tokio::sync::mpsc::channel(1);
        let mut live = c.watch(watch_prefix("small/"), rx2).await.expect("watch");
        assert!(live.next().await.expect("created").expect("ok").created);
        // Far more than a stream's flow-control window, never read.
        let big = "x".repeat(512 * 1024);
        for i in 0..24 {
            c.put(&put(&format!("big/{i:02}"), &big))
                .await
                .expect("put big");
        }
        for i in 0..10 {
            c.put(&put(&format!("small/{i}"), "v")).await.expect("put");
            let r = tokio::time::timeout(Duration::from_secs(5), live.next())
                .await
                .expect("the live watch is not held back by the stalled one")
                .expect("event")
                .expect("ok");
            assert_eq!(r.events.len(), 1);
        }
        // Reads are not held back either.
        let r = c
            .range(&RangeRequest {
                key: Bytes::from_static(b"small/0"),
                ..Default::default()
            })
            .await
            .expect("range");
        assert_eq!(r.kvs.len(), 1);
        // And the stalled watch still gets everything, in order.
        let mut seen = 0;
        while seen < 24 {
            let r = tokio::time::timeout(Duration::from_secs(10), stalled.next())
                .await
                .expect("stalled watch catches up")
                .expect("event")
                .expect("ok");
            for ev in r.events {
                assert_eq!(
                    ev.kv.expect("kv").key.as_ref(),
                    format!("big/{seen:02}").as_bytes()
                );
                seen += 1;
            }
        }
    });
}

#[test]
fn quic_endpoint_refuses_garbage_and_keeps_serving() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl_ok(&["create", "configmap", "before", "--from-literal=a=b"]);
    let m = api.store();
    let addr = m
        .quic_url()
        .expect("quic url")
        .trim_start_matches("quic://")
        .to_string();
    // Datagrams that are not QUIC.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for n in [1usize, 7, 64, 1200, 1350, 1500] {
        let junk: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
        sock.send_to(&junk, &addr).expect("send garbage");
    }
    // Garbage frames on streams of a real connection.
    let rt = runtime();
    rt.block_on(async {
        let c = quic_client(m);
        let cases: Vec<Vec<u8>> = vec![
            vec![3, 0, 0, 0, 99, 1, 2],
            vec![5, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
            vec![0xff, 0xff, 0xff, 0xff, 1],
            vec![0, 0, 0, 0],
            vec![100, 0, 0, 0, 1, 2, 3],
            vec![3, 0, 0, 0, 16, 0xff, 0xff],
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ];
        for garbage in cases {
            let (mut send, mut recv) = c.open_raw_stream().await.expect("stream");
            send.write_all(&garbage).await.expect("write");
            let _ = send.finish();
            let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
                .await
                .expect("the server ends a garbage stream");
            if let Ok(bytes) = answer {
                // If it answered, it is an error frame.
                assert!(bytes.is_empty() || bytes.get(4) == Some(&1), "{bytes:?}");
            }
        }
        // The same connection still serves.
        c.put(&put("after-garbage", "ok")).await.expect("put");
    });
    // And so does the API server.
    api.kubectl_ok(&["create", "configmap", "after", "--from-literal=a=b"]);
    assert!(api.kubectl(&["get", "configmap", "before"]).success());
}

#[test]
fn apiserver_over_grpc_still_works() {
    if !keel_tests::kube::kubectl_bin().exists() {
        println!("skipped: no kubectl");
        return;
    }
    // `http://` endpoints keep the etcd gRPC client (a real etcd works too).
    let api = KubeApi::try_start_grpc().unwrap_or_else(|e| panic!("{e:#}"));
    api.kubectl_ok(&["create", "configmap", "g", "--from-literal=a=b"]);
    let got = api.kubectl_ok(&["get", "configmap", "g", "-o", "jsonpath={.data.a}"]);
    assert_eq!(got, "b");
    assert!(api.log_lines_with("QUIC store connection up").is_empty());
}
