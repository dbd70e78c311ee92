//! A stopping API server drains, as kube-apiserver does: on SIGTERM it
//! takes no new connections, ends its watches, and lets the requests in
//! flight finish before it exits.

use std::time::{Duration, Instant};

use keel_tests::kube::KubeApi;

/// Allows every request, after a pause long enough to stop the API server
/// while the request waits on it.
fn slow_allow(_req: &serde_json::Value) -> serde_json::Value {
    std::thread::sleep(Duration::from_millis(1500));
    serde_json::json!({"allowed": true})
}

const SLOW_WEBHOOK: &str = r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: slow}
webhooks:
- name: slow.keel.test
  clientConfig: {url: "URL/validate", caBundle: "CA"}
  rules: [{operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"]}]
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: slow}}
  sideEffects: None
  timeoutSeconds: 10
  admissionReviewVersions: ["v1"]
"#;

/// A create waiting on a webhook when SIGTERM comes is answered 201 and
/// stored; a watch open at the time ends; the server exits soon after.
#[test]
fn requests_in_flight_finish_when_the_server_stops() {
    let Some(mut api) = KubeApi::start_or_skip() else {
        return;
    };
    let hook = keel_tests::webhook::WebhookServer::start(slow_allow).expect("webhook server");
    api.kubectl_ok(&["create", "ns", "slow"]);
    let config = hook.configure(SLOW_WEBHOOK);
    api.kubectl_stdin(&["create", "-f", "-"], Some(&config))
        .ok();
    let (mut watch, _events) = api.kubectl_watch(&["-n", "slow", "configmaps"]);

    let create = api.kubectl_cmd(&["-n", "slow", "create", "configmap", "inflight"]);
    let in_flight = std::thread::spawn(move || {
        let mut create = create;
        create.output().expect("run kubectl")
    });
    // The create is now waiting on the webhook.
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    let status = api
        .terminate(Duration::from_secs(10))
        .expect("the API server exits");
    let took = stopping.elapsed();

    let out = in_flight.join().expect("kubectl thread");
    assert!(
        out.status.success(),
        "the create in flight failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configmap/inflight created"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(status.success(), "the API server exited with {status}");
    // It waited for the webhook (about a second more), not for the watch.
    assert!(
        took < Duration::from_secs(5),
        "the API server took {took:?} to stop"
    );
    let stored = keel_tests::etcdctl(
        api.store(),
        &["get", "/registry/configmaps/slow/inflight", "--keys-only"],
    )
    .ok();
    assert!(
        stored.contains("/registry/configmaps/slow/inflight"),
        "{stored:?}"
    );
    // The watch ended with the server: kubectl exits on its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    while watch.try_wait().expect("wait kubectl").is_none() {
        assert!(Instant::now() < deadline, "kubectl get -w still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
}
