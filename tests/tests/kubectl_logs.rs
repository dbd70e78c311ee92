//! `kubectl logs` end to end: a real `keel store` and `keel apiserver`,
//! the real kubectl, and a stand-in kubelet (keel has no node agent yet)
//! that the API server reaches with its `--kubelet-*` identity, as
//! kube-apiserver reaches a kubelet's `/containerLogs`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keel_tests::kube::{kubectl_bin, KubeApi};
use keel_tests::kubelet::FakeKubelet;
use serde_json::{json, Value};

/// A node whose kubelet is at `addresses`, port `port`.
fn add_node(api: &KubeApi, name: &str, addresses: Value, port: u16) {
    api.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}).to_string()),
    )
    .ok();
    let status = json!({"status": {
        "addresses": addresses,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
    }});
    api.kubectl_ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}

/// A pod on `node` (`None`: unscheduled) with these containers.
fn add_pod(api: &KubeApi, name: &str, node: Option<&str>, containers: &[&str]) {
    let mut spec = json!({
        "containers": containers.iter().map(|c| json!({"name": c, "image": "busybox"})).collect::<Vec<_>>(),
    });
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&pod.to_string()))
        .ok();
}

fn lines(from: u32, to: u32, container: &str, stamps: bool) -> String {
    (from..=to)
        .map(|i| {
            let stamp = if stamps {
                format!("2024-01-01T00:00:{i:02}.000000000Z ")
            } else {
                String::new()
            };
            format!("{stamp}{container} line {i}\n")
        })
        .collect()
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// kubectl started with `args`; its stdout lines on the channel.
fn spawn_lines(api: &KubeApi, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = api
        .kubectl_cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubectl");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

#[test]
fn kubectl_logs_through_the_kubelet() {
    if !kubectl_bin().exists() {
        println!("skipped: no kubectl at {}", kubectl_bin().display());
        return;
    }
    // The API server's kubelet client identity, and the kubelet that
    // requires it (and whose serving certificate the API server trusts).
    let pki = tempfile::tempdir().expect("tempdir");
    let client = rcgen::generate_simple_self_signed(Vec::<String>::new()).expect("client cert");
    let client_pem = client.cert.pem();
    let client_der = client.cert.der().to_vec();
    let file = |name: &str, data: &str| {
        let p = pki.path().join(name);
        std::fs::write(&p, data).expect("write pki");
        p.to_string_lossy().to_string()
    };
    let cert_file = file("kubelet-client.crt", &client_pem);
    let key_file = file("kubelet-client.key", &client.signing_key.serialize_pem());
    let kubelet = FakeKubelet::start(Some(&client_pem)).expect("kubelet");
    let ca_file = file("kubelet-ca.crt", &kubelet.cert_pem);
    // A kubelet whose certificate the API server does not trust.
    let stranger = FakeKubelet::start(None).expect("untrusted kubelet");

    let Some(api) = KubeApi::start_with_args_or_skip(&[
        "--kubelet-client-certificate",
        &cert_file,
        "--kubelet-client-key",
        &key_file,
        "--kubelet-certificate-authority",
        &ca_file,
        "--kubelet-preferred-address-types",
        "InternalIP,Hostname",
    ]) else {
        return;
    };
    let raw = api.kubectl_ok(&["get", "--raw", "/api/v1"]);
    assert!(raw.contains(r#""name":"pods/log""#), "{raw}");

    let ip = |a: &str| json!([{"type": "Hostname", "address": "node-x"}, {"type": "InternalIP", "address": a}]);
    add_node(&api, "node-a", ip("127.0.0.1"), kubelet.port);
    add_node(&api, "node-b", ip("127.0.0.1"), stranger.port);
    let closed = closed_port();
    add_node(&api, "node-c", ip("127.0.0.1"), closed);
    add_node(
        &api,
        "node-d",
        json!([{"type": "ExternalDNS", "address": "kubelet.example"}]),
        kubelet.port,
    );
    add_pod(&api, "solo", Some("node-a"), &["app"]);
    add_pod(&api, "duo", Some("node-a"), &["c1", "c2", "gone"]);

    // One container: it is the one read; the options become the query.
    assert_eq!(
        api.kubectl_ok(&["logs", "solo"]),
        lines(1, 10, "app", false)
    );
    assert_eq!(
        kubelet.last_uri().as_deref(),
        Some("/containerLogs/default/solo/app")
    );
    assert_eq!(
        api.kubectl_ok(&["logs", "duo", "-c", "c2", "--tail=5", "--timestamps"]),
        lines(6, 10, "c2", true)
    );
    assert_eq!(
        kubelet.last_uri().as_deref(),
        Some("/containerLogs/default/duo/c2?tailLines=5&timestamps=true")
    );
    api.kubectl_ok(&["logs", "solo", "--since=1h", "--limit-bytes=100", "-p"]);
    assert_eq!(
        kubelet.last_uri().as_deref(),
        Some("/containerLogs/default/solo/app?limitBytes=100&previous=true&sinceSeconds=3600")
    );
    api.kubectl_ok(&["logs", "solo", "--since-time=2024-05-06T07:08:09+02:00"]);
    assert_eq!(
        kubelet.last_uri().as_deref(),
        Some("/containerLogs/default/solo/app?sinceTime=2024-05-06T05%3A08%3A09Z")
    );
    // Every request carried the API server's kubelet client certificate.
    let seen = kubelet.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.client_cert.as_deref() == Some(&client_der[..])),
        "{seen:?}"
    );

    // `-f` streams: a line arrives while the kubelet holds the stream open.
    let (mut follow, rx) = spawn_lines(&api, &["logs", "-f", "solo"]);
    let next = |rx: &mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(15));
    assert_eq!(next(&rx).as_deref(), Ok("follow 1"));
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "no line before the kubelet sends it"
    );
    assert!(
        follow.try_wait().expect("try_wait").is_none(),
        "the stream is still open"
    );
    assert_eq!(
        kubelet.last_uri().as_deref(),
        Some("/containerLogs/default/solo/app?follow=true")
    );
    kubelet.release();
    assert_eq!(next(&rx).as_deref(), Ok("follow 2"));
    assert!(
        follow.try_wait().expect("try_wait").is_none(),
        "the stream is still open"
    );
    kubelet.release();
    assert_eq!(next(&rx).as_deref(), Ok("follow 3"));
    let status = follow.wait().expect("wait kubectl logs -f");
    assert!(status.success(), "{status}");
    // A client that goes away ends the kubelet connection too.
    let (mut follow, rx) = spawn_lines(&api, &["logs", "-f", "solo"]);
    assert_eq!(next(&rx).as_deref(), Ok("follow 1"));
    let ended = kubelet.connections_ended();
    follow.kill().expect("kill kubectl logs -f");
    let _ = follow.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kubelet.connections_ended() == ended {
        assert!(
            std::time::Instant::now() < deadline,
            "the kubelet stream outlived its client"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Several containers: kubectl picks the first; the API alone refuses.
    let out = api.kubectl(&["logs", "duo"]);
    assert!(
        out.success()
            && out
                .stderr
                .contains(r#"Defaulted container "c1" out of: c1, c2, gone"#),
        "{out}"
    );
    assert_eq!(out.stdout, lines(1, 10, "c1", false));
    let path = "/api/v1/namespaces/default/pods/duo/log";
    api.kubectl(&["get", "--raw", path]).fails_with(
        "Error from server (BadRequest): a container name must be specified for pod duo, choose one of: [c1 c2 gone]",
    );
    // An unknown container: kubectl checks first; the API agrees.
    api.kubectl(&["logs", "duo", "-c", "zz"])
        .fails_with("container zz is not valid for pod duo");
    api.kubectl(&["get", "--raw", &format!("{path}?container=zz")])
        .fails_with("Error from server (BadRequest): container zz is not valid for pod duo");
    // Bad options.
    api.kubectl(&["get", "--raw", &format!("{path}?container=c1&tailLines=-1")])
        .fails_with(r#"PodLogOptions "duo" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"#);
    api.kubectl(&[
        "get",
        "--raw",
        &format!("{path}?container=c1&sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z"),
    ])
    .fails_with("at most one of `sinceTime` or `sinceSeconds` may be specified");
    api.kubectl(&[
        "get",
        "--raw",
        &format!("{path}?container=c1&limitBytes=ten"),
    ])
    .fails_with(r#"strconv.ParseInt: parsing "ten": invalid syntax"#);
    // A kubelet error is wrapped as Kubernetes does.
    api.kubectl(&["logs", "duo", "-c", "gone"]).fails_with(
        "Error from server (NotFound): the server could not find the requested resource ( pods/log duo)",
    );
    assert_eq!(
        kubelet.last_uri().as_deref(),
        Some("/containerLogs/default/duo/gone")
    );
    let before = kubelet.seen().len();

    // No node yet: nothing to read (an empty 204), no kubelet asked.
    add_pod(&api, "loose", None, &["app"]);
    assert_eq!(api.kubectl_ok(&["logs", "loose"]), "");
    // The node is missing, has no usable address, or its kubelet is down.
    add_pod(&api, "ghost", Some("node-z"), &["app"]);
    api.kubectl(&["logs", "ghost"])
        .fails_with(r#"Error from server (NotFound): nodes "node-z" not found"#);
    add_pod(&api, "nameless", Some("node-d"), &["app"]);
    api.kubectl(&["logs", "nameless"]).fails_with(
        "Error from server: no preferred addresses found; known addresses: [{ExternalDNS kubelet.example}]",
    );
    add_pod(&api, "down", Some("node-c"), &["app"]);
    api.kubectl(&["logs", "down"]).fails_with(&format!(
        r#"Error from server: Get "https://127.0.0.1:{closed}/containerLogs/default/down/app": dial tcp 127.0.0.1:{closed}: connect: connection refused"#
    ));
    assert_eq!(kubelet.seen().len(), before, "{:?}", kubelet.seen());

    // A kubelet whose certificate does not chain to the CA is refused,
    // unless the request skips the verification.
    add_pod(&api, "elsewhere", Some("node-b"), &["app"]);
    let err = api.kubectl(&["logs", "elsewhere"]).err();
    assert!(
        err.contains(&format!(
            r#"Get "https://127.0.0.1:{}/containerLogs/default/elsewhere/app": tls: "#,
            stranger.port
        )),
        "{err}"
    );
    assert_eq!(
        api.kubectl_ok(&["logs", "elsewhere", "--insecure-skip-tls-verify-backend"]),
        lines(1, 10, "app", false)
    );
    assert_eq!(
        stranger.last_uri().as_deref(),
        Some("/containerLogs/default/elsewhere/app")
    );
}
