//! Authentication and authorization end-to-end with the real kubectl:
//! static token users refused with Kubernetes' exact 403 messages until a
//! RoleBinding lets them in, `kubectl auth can-i` (yes/no, `--list`,
//! `--as`), impersonation, `kubectl auth whoami`, aggregated ClusterRoles,
//! service account tokens from `kubectl create token` (and their end when
//! the service account is deleted and recreated), anonymous requests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_tests::kube::KubeApi;
use keel_tests::CtlOutput;

/// kubectl's words for a 401 (which depend on whether discovery was cached).
fn is_unauthorized(out: &CtlOutput) -> bool {
    !out.success()
        && (out
            .stderr
            .contains("error: You must be logged in to the server (Unauthorized)")
            || out
                .stderr
                .contains("the server has asked for the client to provide credentials"))
}

/// Asserts [`is_unauthorized`].
trait AssertUnauthorized {
    /// Panics unless kubectl was refused with a 401.
    fn assert_unauthorized(self);
}

impl AssertUnauthorized for CtlOutput {
    #[track_caller]
    fn assert_unauthorized(self) {
        assert!(is_unauthorized(&self), "expected 401 Unauthorized: {self}");
    }
}

/// A token file with two users (bob in the group `devs`).
fn token_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("tokens.csv");
    std::fs::write(
        &path,
        "alice-token,alice,uid-alice\nbob-token,bob,uid-bob,\"devs,qa\"\n",
    )
    .expect("write token file");
    path
}

/// An apiserver with the token file and `extra` flags (and the dir that
/// holds the token file, to keep as long as the server).
fn start(extra: &[&str]) -> Option<(KubeApi, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "--token-auth-file".to_string(),
        token_file(dir.path()).display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    KubeApi::start_with_or_skip(&args).map(|api| (api, dir))
}

/// Decodes unpadded base64url (a JWT segment).
fn b64url(s: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => continue,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

/// Polls `f` for up to five seconds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn token_users_rbac_can_i_and_impersonation() {
    let Some((api, _dir)) = start(&[]) else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "prod"]);
    let alice = api.token_kubeconfig("alice", Some("alice-token"));
    let bob = api.token_kubeconfig("bob", Some("bob-token"));

    // Refused, in Kubernetes' words: namespaced, cluster scope, subresource.
    api.kubectl_with(&alice, &["-n", "prod", "get", "pods"]).fails_with(
        r#"Error from server (Forbidden): pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "prod""#,
    );
    api.kubectl_with(&alice, &["get", "nodes"]).fails_with(
        r#"Error from server (Forbidden): nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#,
    );
    api.kubectl_with(&alice, &["-n", "prod", "get", "deploy", "web"]).fails_with(
        r#"deployments.apps "web" is forbidden: User "alice" cannot get resource "deployments" in API group "apps" in the namespace "prod""#,
    );
    api.kubectl_with(&alice, &["-n", "prod", "create", "token", "default"]).fails_with(
        r#"serviceaccounts "default" is forbidden: User "alice" cannot create resource "serviceaccounts/token" in API group "" in the namespace "prod""#,
    );
    // Discovery and the self reviews are open to every authenticated user.
    let who = api.kubectl_with(&alice, &["auth", "whoami"]).ok();
    assert!(
        who.contains("alice") && who.contains("system:authenticated"),
        "{who}"
    );
    assert!(who.contains("uid-alice"), "{who}");
    let who = api.kubectl_ok(&["auth", "whoami"]);
    assert!(
        who.contains("kubernetes-admin") && who.contains("system:masters"),
        "{who}"
    );
    let no = api.kubectl_with(&alice, &["auth", "can-i", "list", "pods", "-n", "prod"]);
    assert_eq!(
        (no.status.code(), no.stdout.trim()),
        (Some(1), "no"),
        "{no}"
    );

    // A RoleBinding to the (aggregated) view role lets alice read prod.
    assert_eq!(
        api.kubectl_ok(&[
            "-n",
            "prod",
            "create",
            "rolebinding",
            "alice-view",
            "--clusterrole=view",
            "--user=alice"
        ]),
        "rolebinding.rbac.authorization.k8s.io/alice-view created\n"
    );
    let out = api.kubectl_with(&alice, &["-n", "prod", "get", "pods"]);
    assert!(
        out.success() && out.stderr.contains("No resources found"),
        "{out}"
    );
    api.kubectl_with(&alice, &["-n", "default", "get", "pods"])
        .fails_with(r#"User "alice" cannot list resource "pods" in API group "" in the namespace "default""#);
    api.kubectl_with(&alice, &["-n", "prod", "create", "configmap", "c1"])
        .fails_with(r#"configmaps is forbidden: User "alice" cannot create resource "configmaps" in API group "" in the namespace "prod""#);
    let table = api.kubectl_ok(&["-n", "prod", "get", "rolebindings"]);
    assert!(
        table.contains("alice-view") && table.contains("ClusterRole/view"),
        "{table}"
    );

    // kubectl auth can-i, as alice and as the admin impersonating her.
    let can = |kc: &std::path::Path, args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        api.kubectl_with(kc, &a).stdout.trim().to_string()
    };
    assert_eq!(can(&alice, &["list", "pods", "-n", "prod"]), "yes");
    assert_eq!(
        can(&alice, &["get", "deployments.apps", "-n", "prod"]),
        "yes"
    );
    assert_eq!(can(&alice, &["delete", "pods", "-n", "prod"]), "no");
    assert_eq!(can(&alice, &["list", "pods", "-n", "default"]), "no");
    assert_eq!(can(&alice, &["get", "secrets", "-n", "prod"]), "no");
    let admin = api.kubeconfig();
    assert_eq!(
        can(&admin, &["list", "pods", "-n", "prod", "--as", "alice"]),
        "yes"
    );
    assert_eq!(
        can(&admin, &["create", "pods", "-n", "prod", "--as", "alice"]),
        "no"
    );
    assert_eq!(
        can(&admin, &["list", "pods", "-n", "prod", "--as", "bob"]),
        "no"
    );
    assert_eq!(can(&admin, &["delete", "nodes"]), "yes");
    let list = api
        .kubectl_with(&alice, &["auth", "can-i", "--list", "-n", "prod"])
        .ok();
    let pods = list
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_else(|| panic!("no pods line in {list}"));
    assert!(pods.contains("[get list watch]"), "{list}");
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );
    assert!(list.contains("[/api/*]"), "{list}");
    let list = api.kubectl_ok(&["auth", "can-i", "--list", "-n", "prod", "--as", "alice"]);
    assert!(list.contains("deployments.apps"), "{list}");

    // Impersonation needs the impersonate verb.
    api.kubectl_with(&alice, &["--as", "bob", "-n", "prod", "get", "pods"])
        .fails_with(r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#);
    let who = api.kubectl_ok(&["auth", "whoami", "--as", "bob", "--as-group", "devs"]);
    assert!(who.contains("bob") && who.contains("devs"), "{who}");

    // A group binding; cluster-wide.
    api.kubectl_with(&bob, &["get", "pods", "-A"])
        .fails_with(r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" at the cluster scope"#);
    api.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "devs-view",
        "--clusterrole=view",
        "--group=devs",
    ]);
    api.kubectl_with(&bob, &["get", "pods", "-A"]).ok();
    // A binding to a missing role says so.
    api.kubectl_ok(&[
        "-n",
        "prod",
        "create",
        "rolebinding",
        "bob-ghost",
        "--role=ghost",
        "--user=bob",
    ]);
    api.kubectl_with(&bob, &["-n", "prod", "delete", "pod", "x"])
        .fails_with(r#"pods "x" is forbidden: User "bob" cannot delete resource "pods" in API group "" in the namespace "prod": RBAC: role.rbac.authorization.k8s.io "ghost" not found"#);

    // Aggregation: a ClusterRole labelled aggregate-to-view adds to view.
    api.kubectl_ok(&[
        "create",
        "clusterrole",
        "lease-reader",
        "--verb=get,list",
        "--resource=leases.coordination.k8s.io",
    ]);
    assert_eq!(
        can(
            &alice,
            &["list", "leases.coordination.k8s.io", "-n", "prod"]
        ),
        "no"
    );
    api.kubectl_ok(&[
        "label",
        "clusterrole",
        "lease-reader",
        "rbac.authorization.k8s.io/aggregate-to-view=true",
    ]);
    eventually("view to aggregate lease-reader", || {
        api.kubectl_ok(&["get", "clusterrole", "view", "-o", "json"])
            .contains("\"leases\"")
    });
    assert_eq!(
        can(
            &alice,
            &["list", "leases.coordination.k8s.io", "-n", "prod"]
        ),
        "yes"
    );
    assert_eq!(
        can(
            &alice,
            &["list", "leases.coordination.k8s.io", "-n", "default"]
        ),
        "no"
    );
    let roles = api.kubectl_ok(&["get", "clusterroles"]);
    for r in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
    ] {
        assert!(
            roles
                .lines()
                .any(|l| l.split_whitespace().next() == Some(r)),
            "{r} missing: {roles}"
        );
    }
}

#[test]
fn service_account_tokens_and_anonymous_requests() {
    let Some((api, _dir)) = start(&["--service-account-max-token-expiration=2h"]) else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "ci"]);
    api.kubectl_ok(&["-n", "ci", "create", "serviceaccount", "robot"]);
    let token = api.kubectl_ok(&["-n", "ci", "create", "token", "robot"]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let robot = api.token_kubeconfig("robot", Some(token));
    // Issuer discovery, for service accounts: the JWKS has the token's key.
    let disc: serde_json::Value = serde_json::from_str(
        &api.kubectl_with(
            &robot,
            &["get", "--raw", "/.well-known/openid-configuration"],
        )
        .ok(),
    )
    .expect("discovery JSON");
    assert_eq!(
        disc["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        disc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    let jwks: serde_json::Value = serde_json::from_str(
        &api.kubectl_with(&robot, &["get", "--raw", "/openid/v1/jwks"])
            .ok(),
    )
    .expect("JWKS JSON");
    let header: serde_json::Value =
        serde_json::from_slice(&b64url(token.split('.').next().unwrap_or(""))).expect("JWT header");
    assert_eq!(jwks["keys"][0]["kid"], header["kid"], "{jwks} vs {header}");
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    api.kubectl_with(
        &api.token_kubeconfig("alice", Some("alice-token")),
        &["get", "--raw", "/openid/v1/jwks"],
    )
    .fails_with(r#"forbidden: User "alice" cannot get path "/openid/v1/jwks""#);
    api.kubectl_with(&robot, &["-n", "ci", "get", "configmaps"]).fails_with(
        r#"configmaps is forbidden: User "system:serviceaccount:ci:robot" cannot list resource "configmaps" in API group "" in the namespace "ci""#,
    );
    let who = api
        .kubectl_with(&robot, &["auth", "whoami", "-o", "json"])
        .ok();
    for want in [
        "system:serviceaccount:ci:robot",
        "system:serviceaccounts:ci",
        "system:serviceaccounts",
        "system:authenticated",
    ] {
        assert!(who.contains(&format!("\"{want}\"")), "{want}: {who}");
    }
    api.kubectl_ok(&[
        "-n",
        "ci",
        "create",
        "rolebinding",
        "robot-edit",
        "--clusterrole=edit",
        "--serviceaccount=ci:robot",
    ]);
    assert_eq!(
        api.kubectl_with(
            &robot,
            &["-n", "ci", "create", "configmap", "made-by-robot"]
        )
        .ok(),
        "configmap/made-by-robot created\n"
    );
    api.kubectl_with(&robot, &["-n", "ci", "get", "roles"])
        .fails_with(r#"roles.rbac.authorization.k8s.io is forbidden: User "system:serviceaccount:ci:robot" cannot list resource "roles" in API group "rbac.authorization.k8s.io" in the namespace "ci""#);
    // Too long a lifetime is cut to the maximum; too short is refused.
    let long = api.kubectl_ok(&[
        "-n",
        "ci",
        "create",
        "token",
        "robot",
        "--duration=48h",
        "-o",
        "json",
    ]);
    let long: serde_json::Value = serde_json::from_str(&long).expect("TokenRequest JSON");
    assert_eq!(long["kind"], "TokenRequest");
    assert_eq!(long["spec"]["expirationSeconds"], 7200, "{long}");
    assert!(long["status"]["token"]
        .as_str()
        .is_some_and(|t| t.split('.').count() == 3));
    // A missing service account.
    api.kubectl(&["-n", "ci", "create", "token", "robot", "--duration=1m"])
        .fails_with("may not specify a duration less than 10 minutes");
    api.kubectl(&["-n", "ci", "create", "token", "nobody"])
        .fails_with(r#"serviceaccounts "nobody" not found"#);

    // Deleted and recreated: same name, new uid; the old token is dead.
    api.kubectl_ok(&["-n", "ci", "delete", "serviceaccount", "robot"]);
    // Checked against the watch cache (as Kubernetes' informers do): the
    // deletion counts once it has reached the cache, a few ms later.
    eventually(
        "the token of the deleted service account to stop working",
        || is_unauthorized(&api.kubectl_with(&robot, &["-n", "ci", "get", "configmaps"])),
    );
    api.kubectl_ok(&["-n", "ci", "create", "serviceaccount", "robot"]);
    api.kubectl_with(&robot, &["-n", "ci", "get", "configmaps"])
        .assert_unauthorized();
    let fresh = api.kubectl_ok(&["-n", "ci", "create", "token", "robot", "--duration=20m"]);
    let fresh = api.token_kubeconfig("robot2", Some(fresh.trim()));
    let cms = api
        .kubectl_with(&fresh, &["-n", "ci", "get", "configmaps", "-o", "name"])
        .ok();
    assert!(cms.contains("configmap/made-by-robot"), "{cms}");

    // A token bound to a pod lives as long as the pod.
    api.kubectl_ok(&["-n", "ci", "run", "p1", "--image=busybox"]);
    let bound = api.kubectl_ok(&[
        "-n",
        "ci",
        "create",
        "token",
        "robot",
        "--bound-object-kind=Pod",
        "--bound-object-name=p1",
    ]);
    let bound = api.token_kubeconfig("robot-p1", Some(bound.trim()));
    let who = api
        .kubectl_with(&bound, &["auth", "whoami", "-o", "json"])
        .ok();
    assert!(
        who.contains("authentication.kubernetes.io/pod-name") && who.contains("\"p1\""),
        "{who}"
    );
    api.kubectl_with(&bound, &["-n", "ci", "get", "configmaps"])
        .ok();
    api.kubectl_ok(&[
        "-n",
        "ci",
        "delete",
        "pod",
        "p1",
        "--grace-period=0",
        "--force",
    ]);
    api.kubectl(&["-n", "ci", "get", "pod", "p1"])
        .fails_with(r#"pods "p1" not found"#);
    // Checked against the watch cache (as Kubernetes' informers): at once
    // once the deletion has reached it.
    eventually("the pod-bound token to stop working", || {
        let out = api.kubectl_with(&bound, &["-n", "ci", "get", "configmaps"]);
        is_unauthorized(&out)
    });
    api.kubectl(&[
        "-n",
        "ci",
        "create",
        "token",
        "robot",
        "--bound-object-kind=Pod",
        "--bound-object-name=p1",
    ])
    .fails_with(r#"pods "p1" not found"#);
    // Anonymous and bad tokens: 401.
    let anon = api.token_kubeconfig("anon", None);
    api.kubectl_with(&anon, &["get", "pods"])
        .assert_unauthorized();
    let bad = api.token_kubeconfig("bad", Some("not-a-token"));
    api.kubectl_with(&bad, &["get", "ns"]).assert_unauthorized();
    let raw = api.kubectl_with(&anon, &["get", "--raw", "/api/v1/namespaces"]);
    assert!(
        !raw.success() && raw.stderr.contains("Unauthorized"),
        "{raw}"
    );
}

#[test]
fn anonymous_auth_on_and_always_allow() {
    let Some((api, _dir)) = start(&["--anonymous-auth=true"]) else {
        return;
    };
    let anon = api.token_kubeconfig("anon", None);
    // Not even discovery (system:discovery is for system:authenticated).
    api.kubectl_with(&anon, &["get", "--raw", "/api/v1/namespaces/default/pods"]).fails_with(
        r#"Error from server (Forbidden): pods is forbidden: User "system:anonymous" cannot list resource "pods" in API group "" in the namespace "default""#,
    );
    api.kubectl_with(&anon, &["get", "--raw", "/apis"])
        .fails_with(r#"forbidden: User "system:anonymous" cannot get path "/apis""#);
    // system:public-info-viewer is bound to system:unauthenticated.
    assert!(api
        .kubectl_with(&anon, &["get", "--raw", "/version"])
        .ok()
        .contains("gitVersion"));
    // A bad token is still refused when anonymous requests are on.
    let bad = api.token_kubeconfig("bad", Some("nope"));
    api.kubectl_with(&bad, &["get", "pods"])
        .assert_unauthorized();
    drop(api);

    let Some((api, _dir2)) = start(&["--authorization-mode=AlwaysAllow"]) else {
        return;
    };
    let alice = api.token_kubeconfig("alice", Some("alice-token"));
    api.kubectl_with(&alice, &["get", "nodes"]).ok();
    let yes = api
        .kubectl_with(&alice, &["auth", "can-i", "delete", "nodes"])
        .ok();
    assert_eq!(yes.trim(), "yes");
}

/// `--authorization-mode=Webhook`: a second apiserver asks the first one
/// (its SubjectAccessReview endpoint, as a webhook) about every request.
#[test]
fn webhook_mode_asks_a_subject_access_review_endpoint() {
    let Some((mut api, dir)) = start(&[]) else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "prod"]);
    let hook = dir.path().join("webhook.kubeconfig");
    let sar = format!(
        "{}/apis/authorization.k8s.io/v1/subjectaccessreviews",
        api.url()
    );
    let out = std::process::Command::new(keel_tests::keel_bin())
        .args(["kubeconfig", "--cert-dir"])
        .arg(api.cert_dir())
        .args(["--server", &sar, "--output"])
        .arg(&hook)
        .output()
        .expect("keel kubeconfig");
    assert!(out.status.success(), "{out:?}");
    let (port, _) = api
        .add_apiserver_with(&[
            "--token-auth-file".into(),
            dir.path().join("tokens.csv").display().to_string(),
            "--authorization-mode=Webhook".into(),
            "--authorization-webhook-config-file".into(),
            hook.display().to_string(),
            // "No" is not remembered, so the new binding counts at once.
            "--authorization-webhook-cache-unauthorized-ttl=0s".into(),
        ])
        .expect("webhook apiserver");
    let alice = api.token_kubeconfig_at(
        &format!("https://127.0.0.1:{port}"),
        "alice-peer",
        Some("alice-token"),
    );
    api.kubectl_with(&alice, &["-n", "prod", "get", "pods"]).fails_with(
        r#"Error from server (Forbidden): pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "prod""#,
    );
    api.kubectl_ok(&[
        "-n",
        "prod",
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ]);
    let out = api.kubectl_with(&alice, &["-n", "prod", "get", "pods"]);
    assert!(
        out.success() && out.stderr.contains("No resources found"),
        "{out}"
    );
    let yes = api
        .kubectl_with(&alice, &["auth", "can-i", "watch", "pods", "-n", "prod"])
        .ok();
    assert_eq!(yes.trim(), "yes");
    // "Yes" is remembered (5m by default): the same request again asks nobody.
    let reviews = || {
        api.log()
            .matches("path=/apis/authorization.k8s.io/v1/subjectaccessreviews ")
            .count()
    };
    let before = reviews();
    assert!(before > 0, "the webhook was never asked");
    api.kubectl_with(&alice, &["-n", "prod", "get", "pods"])
        .ok();
    assert_eq!(reviews(), before, "the webhook was asked again");
}

/// No escalation: a namespace admin may write roles and bindings only for
/// rights they hold themselves.
#[test]
fn roles_and_bindings_cannot_grant_more_than_one_holds() {
    let Some((api, _dir)) = start(&[]) else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "team"]);
    api.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "alice-admin",
        "--clusterrole=admin",
        "--user=alice",
    ]);
    let alice = api.token_kubeconfig("alice", Some("alice-token"));
    assert_eq!(
        api.kubectl_with(
            &alice,
            &[
                "-n",
                "team",
                "create",
                "role",
                "pod-reader",
                "--verb=get,list",
                "--resource=pods"
            ]
        )
        .ok(),
        "role.rbac.authorization.k8s.io/pod-reader created\n"
    );
    api.kubectl_with(&alice, &["-n", "team", "create", "role", "node-reader", "--verb=get", "--resource=nodes"]).fails_with(
        "roles.rbac.authorization.k8s.io \"node-reader\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}",
    );
    let patch = r#"[{"op": "add", "path": "/rules/-", "value": {"verbs": ["delete"], "apiGroups": [""], "resources": ["nodes"]}}]"#;
    api.kubectl_with(&alice, &["-n", "team", "patch", "role", "pod-reader", "--type=json", "-p", patch])
        .fails_with("is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"delete\"]}");
    api.kubectl_with(
        &alice,
        &[
            "-n",
            "team",
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
        ],
    )
    .ok();
    api.kubectl_with(&alice, &["-n", "team", "create", "rolebinding", "bob-root", "--clusterrole=cluster-admin", "--user=bob"]).fails_with(
        "rolebindings.rbac.authorization.k8s.io \"bob-root\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}",
    );
    // Aggregation rules need full authority.
    api.kubectl_ok(&[
        "create",
        "clusterrole",
        "role-writer",
        "--verb=create",
        "--resource=clusterroles.rbac.authorization.k8s.io",
    ]);
    api.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "alice-role-writer",
        "--clusterrole=role-writer",
        "--user=alice",
    ]);
    api.kubectl_with(&alice, &["create", "clusterrole", "grab-all", "--aggregation-rule=rbac.authorization.k8s.io/aggregate-to-admin=true"])
        .fails_with(r#"clusterroles.rbac.authorization.k8s.io "grab-all" is forbidden: must have cluster-admin privileges to use the aggregationRule"#);
    // With the bind verb on cluster-admin she may bind it (as Kubernetes).
    api.kubectl_ok(&[
        "create",
        "clusterrole",
        "bind-root",
        "--verb=bind",
        "--resource=clusterroles",
        "--resource-name=cluster-admin",
    ]);
    api.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "alice-bind-root",
        "--clusterrole=bind-root",
        "--user=alice",
    ]);
    api.kubectl_with(
        &alice,
        &[
            "-n",
            "team",
            "create",
            "rolebinding",
            "bob-root",
            "--clusterrole=cluster-admin",
            "--user=bob",
        ],
    )
    .ok();
}

/// SubjectAccessReview, LocalSubjectAccessReview and TokenReview through
/// `kubectl create -f`, as an admission webhook or a proxy would use them.
#[test]
fn review_apis_through_kubectl_create() {
    let Some((api, _dir)) = start(&[]) else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "prod"]);
    api.kubectl_ok(&[
        "-n",
        "prod",
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ]);
    let create = |body: serde_json::Value| -> serde_json::Value {
        let out = api
            .kubectl_stdin(
                &["create", "-f", "-", "-o", "json"],
                Some(&body.to_string()),
            )
            .ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let sar = |spec: serde_json::Value| {
        create(
            serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}),
        )
    };
    let r = sar(
        serde_json::json!({"user": "alice", "resourceAttributes": {"namespace": "prod", "verb": "list", "resource": "pods"}}),
    );
    assert_eq!(r["status"]["allowed"], true, "{r}");
    assert_eq!(
        r["status"]["reason"],
        r#"RBAC: allowed by RoleBinding "alice-view/prod" of ClusterRole "view" to User "alice""#
    );
    let r = sar(
        serde_json::json!({"user": "alice", "resourceAttributes": {"namespace": "prod", "verb": "delete", "resource": "pods"}}),
    );
    assert_eq!(r["status"]["allowed"], false, "{r}");
    let r = sar(
        serde_json::json!({"user": "nobody", "groups": ["system:authenticated"], "nonResourceAttributes": {"path": "/apis/apps", "verb": "get"}}),
    );
    assert_eq!(r["status"]["allowed"], true, "{r}");
    let r = sar(
        serde_json::json!({"user": "nobody", "nonResourceAttributes": {"path": "/metrics", "verb": "get"}}),
    );
    assert_eq!(r["status"]["allowed"], false, "{r}");
    let r = create(serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": "prod"},
        "spec": {"user": "alice", "resourceAttributes": {"namespace": "prod", "verb": "get", "group": "apps", "resource": "deployments"}},
    }));
    assert_eq!(
        (r["kind"].as_str(), r["status"]["allowed"].as_bool()),
        (Some("LocalSubjectAccessReview"), Some(true)),
        "{r}"
    );
    let body = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": "prod"},
        "spec": {"user": "alice", "resourceAttributes": {"namespace": "other", "verb": "get", "resource": "pods"}},
    });
    api.kubectl_stdin(&["create", "-f", "-"], Some(&body.to_string()))
        .fails_with("spec.resourceAttributes.namespace must match namespace: prod");
    let tr = |token: &str| {
        create(
            serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}),
        )
    };
    let r = tr("bob-token");
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["user"]["username"], "bob");
    assert_eq!(
        r["status"]["user"]["groups"],
        serde_json::json!(["devs", "qa", "system:authenticated"])
    );
    let r = tr("forged");
    assert_ne!(r["status"]["authenticated"], true, "{r}");
    // Only who may create SubjectAccessReviews may ask about others.
    let alice = api.token_kubeconfig("alice", Some("alice-token"));
    let body = serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "bob", "nonResourceAttributes": {"path": "/", "verb": "get"}}});
    let path = api.scratch().join("sar.json");
    std::fs::write(&path, body.to_string()).expect("write sar.json");
    api.kubectl_with(&alice, &["create", "-f", &path.display().to_string()]).fails_with(
        r#"subjectaccessreviews.authorization.k8s.io is forbidden: User "alice" cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope"#,
    );
}

/// An apiserver starting on a store puts back what the default roles and
/// bindings lack, unless they say `autoupdate: "false"`.
#[test]
fn default_roles_are_reconciled_at_startup() {
    let Some((mut api, _dir)) = start(&[]) else {
        return;
    };
    let rules = |api: &KubeApi, role: &str| -> String {
        api.kubectl_ok(&["get", "clusterrole", role, "-o", "jsonpath={.rules}"])
    };
    let strip = r#"[{"op": "replace", "path": "/rules", "value": []}]"#;
    api.kubectl_ok(&[
        "patch",
        "clusterrole",
        "system:basic-user",
        "--type=json",
        "-p",
        strip,
    ]);
    api.kubectl_ok(&[
        "patch",
        "clusterrole",
        "system:public-info-viewer",
        "--type=json",
        "-p",
        strip,
    ]);
    api.kubectl_ok(&[
        "annotate",
        "--overwrite",
        "clusterrole",
        "system:public-info-viewer",
        "rbac.authorization.kubernetes.io/autoupdate=false",
    ]);
    api.kubectl_ok(&["patch", "clusterrolebinding", "system:discovery", "--type=json", "-p", r#"[{"op": "replace", "path": "/subjects", "value": [{"kind": "User", "name": "carol", "apiGroup": "rbac.authorization.k8s.io"}]}]"#]);
    assert!(!rules(&api, "system:basic-user").contains("selfsubjectreviews"));
    api.add_apiserver().expect("a second apiserver");
    assert!(
        rules(&api, "system:basic-user").contains("selfsubjectreviews"),
        "{}",
        rules(&api, "system:basic-user")
    );
    assert!(
        !rules(&api, "system:public-info-viewer").contains("/healthz"),
        "autoupdate=false is left alone"
    );
    let subjects = api.kubectl_ok(&[
        "get",
        "clusterrolebinding",
        "system:discovery",
        "-o",
        "jsonpath={.subjects[*].name}",
    ]);
    assert_eq!(subjects, "carol system:authenticated");
}

/// The audit log: one `audit.k8s.io/v1` Event line per request, at the
/// Metadata level, for allowed, forbidden (403) and unauthenticated (401)
/// requests alike; nothing is written for a refused create.
#[test]
fn audit_log_records_every_request() {
    let logs = tempfile::tempdir().expect("tempdir");
    let path = logs.path().join("audit.log");
    let path_arg = path.display().to_string();
    let Some((api, _dir)) = start(&["--audit-log-path", &path_arg]) else {
        return;
    };
    api.kubectl_ok(&["create", "ns", "audited"]);
    let alice = api.token_kubeconfig("alice", Some("alice-token"));
    api.kubectl_with(&alice, &["-n", "audited", "create", "configmap", "x"])
        .fails_with(r#"User "alice" cannot create resource "configmaps""#);
    let stranger = api.token_kubeconfig("stranger", Some("no-such-token"));
    api.kubectl_with(&stranger, &["get", "ns"])
        .assert_unauthorized();
    api.kubectl(&["-n", "audited", "get", "configmap", "x"])
        .fails_with("NotFound");

    let events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
            .collect()
    };
    let find = |evs: &[serde_json::Value], f: &dyn Fn(&serde_json::Value) -> bool| {
        evs.iter().find(|e| f(e)).cloned()
    };
    eventually("the audit lines", || {
        let evs = events();
        find(&evs, &|e| {
            e["objectRef"]["name"] == "x" && e["verb"] == "get"
        })
        .is_some()
    });
    let evs = events();
    for e in &evs {
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1", "{e}");
        assert_eq!(e["kind"], "Event", "{e}");
        assert_eq!(e["level"], "Metadata", "{e}");
        assert!(e["auditID"].as_str().is_some_and(|s| s.len() == 36), "{e}");
        assert!(e["requestReceivedTimestamp"].is_string(), "{e}");
        assert!(e["stageTimestamp"].is_string(), "{e}");
    }
    let created = find(&evs, &|e| {
        e["verb"] == "create" && e["objectRef"]["resource"] == "namespaces"
    })
    .expect("the namespace create is audited");
    assert_eq!(created["user"]["username"], "kubernetes-admin");
    assert!(created["user"]["groups"]
        .as_array()
        .is_some_and(|g| g.iter().any(|g| g == "system:masters")));
    assert_eq!(created["responseStatus"]["code"], 201);
    assert_eq!(created["sourceIPs"], serde_json::json!(["127.0.0.1"]));
    assert!(
        created["requestURI"]
            .as_str()
            .is_some_and(|u| u.starts_with("/api/v1/namespaces")),
        "path and query only: {created}"
    );

    let refused = find(&evs, &|e| {
        e["user"]["username"] == "alice" && e["verb"] == "create"
    })
    .expect("the forbidden create is audited");
    assert_eq!(refused["responseStatus"]["code"], 403);
    assert_eq!(refused["objectRef"]["resource"], "configmaps");
    assert_eq!(refused["objectRef"]["namespace"], "audited");

    let unauthenticated = find(&evs, &|e| e["responseStatus"]["code"] == 401)
        .expect("the unauthenticated request is audited");
    assert_eq!(unauthenticated["user"]["username"], "system:anonymous");

    let missing = find(&evs, &|e| {
        e["objectRef"]["name"] == "x" && e["verb"] == "get"
    })
    .expect("the get is audited");
    assert_eq!(missing["responseStatus"]["code"], 404);
    assert_eq!(missing["objectRef"]["apiVersion"], "v1");
    // Nothing was written by the refused create.
    api.kubectl(&["-n", "audited", "get", "configmap", "x"])
        .fails_with("NotFound");
}

/// A client certificate signed by another CA is refused in the TLS
/// handshake (as kube-apiserver's `VerifyClientCertIfGiven` does), so no
/// request runs and nothing is written.
#[test]
fn client_certificate_from_another_ca_is_refused() {
    let Some((api, dir)) = start(&[]) else {
        return;
    };
    // An admin certificate (O=system:masters) from a CA of its own...
    let other = dir.path().join("other-pki");
    let other_kc = dir.path().join("other-kubeconfig");
    let out = std::process::Command::new(keel_tests::keel_bin())
        .args(["kubeconfig", "--cert-dir"])
        .arg(&other)
        .args(["--server", &api.url(), "--output"])
        .arg(&other_kc)
        .output()
        .expect("run keel kubeconfig");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...presented to our server, whose CA the client does trust.
    let real_ca = std::fs::read_to_string(api.kubeconfig()).expect("kubeconfig");
    let ca_line = |text: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
            .expect("CA line")
            .to_string()
    };
    let text = std::fs::read_to_string(&other_kc).expect("other kubeconfig");
    let forged = text.replace(&ca_line(&text), &ca_line(&real_ca));
    std::fs::write(&other_kc, forged).expect("write");
    let out = api.kubectl_with(&other_kc, &["create", "ns", "from-another-ca"]);
    assert!(!out.success(), "a foreign certificate was accepted: {out}");
    assert!(
        ["Unable to connect to the server", "certificate", "tls"]
            .iter()
            .any(|w| out.stderr.contains(w))
            && !out.stderr.contains("Error from server"),
        "refused in the handshake, not by a request: {}",
        out.stderr
    );
    api.kubectl(&["get", "ns", "from-another-ca"])
        .fails_with("NotFound");
}
