//! `--etcd-compaction-interval`: the API server compacts the store's history
//! every interval to the revision of the interval before, as kube-apiserver
//! does, and API servers sharing a store take turns through the version of
//! `compact_rev_key`.

use std::time::{Duration, Instant};

use keel_tests::kube::KubeApi;
use keel_tests::{etcdctl, etcdctl_json, kvs};

/// Polls `done` every 200 ms until it holds; panics with `what` after `within`.
fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The version of `compact_rev_key` (compaction turns taken) and its value
/// (the revision the last turn recorded); zeros while it does not exist.
fn compact_key(api: &KubeApi) -> (i64, i64) {
    let resp = etcdctl_json(api.store(), &["get", "compact_rev_key"]);
    kvs(&resp).first().map_or((0, 0), |kv| {
        let rev = kv.value.parse().expect("compact_rev_key holds a revision");
        (kv.version, rev)
    })
}

#[test]
fn the_api_server_compacts_the_store_and_takes_turns_with_others() {
    let Some(mut api) = KubeApi::start_with_args_or_skip(&["--etcd-compaction-interval", "1s"])
    else {
        return;
    };
    api.kubectl_ok(&["create", "configmap", "c", "--from-literal=v=0"]);
    let rv0 = api.kubectl_ok(&[
        "get",
        "configmap",
        "c",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let rv0 = rv0.trim().to_string();
    // A paginated list started now holds a continue token at this revision.
    let page = api.kubectl_ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?limit=1",
    ]);
    let page: serde_json::Value = serde_json::from_str(&page).expect("list json");
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token (kube-root-ca.crt and c)")
        .to_string();
    for i in 1..=5 {
        api.kubectl_ok(&["label", "configmap", "c", &format!("v={i}"), "--overwrite"]);
    }

    // Within a few turns the object's first revision is compacted away.
    eventually(Duration::from_secs(30), "revision {rv0} compacted", || {
        let out = etcdctl(
            api.store(),
            &["get", "/registry/configmaps/default/c", "--rev", &rv0],
        );
        !out.success() && out.stderr.contains("compacted")
    });
    // What is current is intact.
    let labels = api.kubectl_ok(&[
        "get",
        "configmap",
        "c",
        "-o",
        "jsonpath={.metadata.labels.v}",
    ]);
    assert_eq!(labels.trim(), "5");
    // The list's continue token becomes too old: 410 Expired, as
    // Kubernetes. (The list's revision may be one past the object's: the
    // compactor's own write can fall in between; polled until compaction
    // passes it.)
    let continued = format!("/api/v1/namespaces/default/configmaps?limit=1&continue={token}");
    eventually(
        Duration::from_secs(30),
        "the continue token expired",
        || {
            let out = api.kubectl(&["get", "--raw", &continued]);
            if out.success() {
                return false;
            }
            assert!(
                out.stderr.contains("Expired") || out.stderr.contains("410"),
                "{out}"
            );
            true
        },
    );

    // A second API server on the store: the turns go on, each taken by
    // exactly one server (the version counts them), and no turn fails.
    let (turns_before, _) = compact_key(&api);
    assert!(turns_before >= 2, "turns taken so far: {turns_before}");
    api.add_apiserver_with(&["--etcd-compaction-interval".into(), "1s".into()])
        .expect("second API server");
    let (mut last_version, mut last_rev) = (turns_before, 0);
    eventually(Duration::from_secs(30), "four more turns", || {
        let (version, rev) = compact_key(&api);
        assert!(
            version >= last_version,
            "turns went back: {version} < {last_version}"
        );
        assert!(
            rev >= last_rev,
            "recorded revision went back: {rev} < {last_rev}"
        );
        (last_version, last_rev) = (version, rev);
        version >= turns_before + 4
    });
    let failures = api.log_lines_with("compacting the store failed");
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn a_zero_interval_never_compacts() {
    let Some(api) = KubeApi::start_with_args_or_skip(&["--etcd-compaction-interval", "0"]) else {
        return;
    };
    api.kubectl_ok(&["create", "configmap", "c"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(compact_key(&api), (0, 0), "no turn taken");
}
