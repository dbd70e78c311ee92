//! The Python `kubernetes` client (Debian's python3-kubernetes, installed by
//! `.ci/run`) against keel's API server: typed models for namespaces,
//! ConfigMaps and Deployments, label selectors, a watch, patch, scale and
//! the error statuses (`tests/python/kube_client.py`).

use std::process::Command;

use keel_tests::kube::KubeApi;

/// The interpreter Debian's python3-kubernetes is installed for.
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn python_kubernetes_client() {
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    let script = keel_tests::workspace_root().join("tests/python/kube_client.py");
    let out = Command::new(PYTHON)
        .arg(&script)
        .arg(api.kubeconfig())
        .output()
        .expect("run python3 (apt-get install python3-kubernetes; .ci/run does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Every step ran.
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        11,
        "{stdout}"
    );
}
