//! Protobuf responses, as typed Go clients ask for them: an object read with
//! `Accept: application/vnd.kubernetes.protobuf, application/json` comes
//! back as `k8s\0` + `runtime.Unknown`; JSON-first and table requests stay
//! JSON. The client is `curl` with a service account token bound to
//! `cluster-admin` (kubectl cannot choose its `Accept`).

use std::process::Command;

use keel_tests::kube::KubeApi;

/// `curl` GET of `path` with `accept`: (content type, body).
fn get(api: &KubeApi, token: &str, path: &str, accept: &str) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-D", "-", "--cacert"])
        .arg(api.cert_dir().join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", &format!("Accept: {accept}")])
        .arg(format!("{}{path}", api.url()))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let sep = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&out.stdout[..sep]).to_lowercase();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type:"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    (ctype, out.stdout[sep + 4..].to_vec())
}

#[test]
fn go_clients_get_protobuf_when_they_prefer_it() {
    if Command::new("curl").arg("--version").output().is_err() {
        println!("skipped: no curl");
        return;
    }
    let Some(api) = KubeApi::start_or_skip() else {
        return;
    };
    api.kubectl(&[
        "create",
        "configmap",
        "pb",
        "--from-literal=greeting=hello-protobuf",
    ])
    .ok();
    api.kubectl(&["create", "serviceaccount", "reader"]).ok();
    api.kubectl(&[
        "create",
        "clusterrolebinding",
        "reader-admin",
        "--clusterrole=cluster-admin",
        "--serviceaccount=default:reader",
    ])
    .ok();
    let token = api.kubectl(&["create", "token", "reader"]).ok();
    let token = token.trim();

    let pb = "application/vnd.kubernetes.protobuf, application/json";
    let (ctype, body) = get(&api, token, "/api/v1/namespaces/default/configmaps/pb", pb);
    assert_eq!(ctype, "application/vnd.kubernetes.protobuf");
    assert!(
        body.starts_with(b"k8s\0"),
        "magic: {:?}",
        &body[..body.len().min(8)]
    );
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"ConfigMap") && has(b"hello-protobuf") && has(b"greeting"));

    // A list, and an error Status, are protobuf too.
    let (ctype, body) = get(&api, token, "/api/v1/namespaces/default/configmaps", pb);
    assert_eq!(ctype, "application/vnd.kubernetes.protobuf");
    assert!(body.windows(13).any(|w| w == b"ConfigMapList"));

    // JSON first, or a table: JSON.
    let (ctype, body) = get(
        &api,
        token,
        "/api/v1/namespaces/default/configmaps/pb",
        "application/json, application/vnd.kubernetes.protobuf",
    );
    assert_eq!(ctype, "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["data"]["greeting"], "hello-protobuf");
    let (ctype, _) = get(
        &api,
        token,
        "/api/v1/namespaces/default/configmaps",
        "application/json;as=Table;v=v1;g=meta.k8s.io, application/json",
    );
    assert!(ctype.starts_with("application/json"), "{ctype}");
}
