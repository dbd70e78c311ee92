"""keel's API server through the Python `kubernetes` client (Debian's
python3-kubernetes): typed models, so every response must deserialize as
Kubernetes' does. Run by tests/tests/python_client.rs with the admin
kubeconfig as the only argument; prints one line per step and exits non-zero
on the first failure."""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def step(name):
    print("ok", name, flush=True)


def expect_status(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        if e.status != code:
            raise AssertionError(f"expected {code}, got {e.status}: {e.body}")
        return e
    raise AssertionError(f"expected {code}, got success")


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()
    ns = "py"

    version = client.VersionApi().get_code()
    assert version.major and version.git_version, version
    step("version")

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    names = [n.metadata.name for n in core.list_namespace().items]
    assert ns in names and "default" in names, names
    step("namespaces")

    cm = core.create_namespaced_config_map(
        ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="one", labels={"app": "py"}),
            data={"k": "v"},
        ),
    )
    assert cm.metadata.uid and cm.metadata.resource_version, cm.metadata
    assert cm.metadata.creation_timestamp is not None
    expect_status(409, core.create_namespaced_config_map, ns,
                  client.V1ConfigMap(metadata=client.V1ObjectMeta(name="one")))
    step("create, 409 AlreadyExists")

    listed = core.list_namespaced_config_map(ns, label_selector="app=py")
    assert [c.metadata.name for c in listed.items] == ["one"], listed.items
    assert listed.metadata.resource_version
    # "app" too: the namespace's kube-root-ca.crt (published by the service
    # account controller, some time after the namespace) has no app label,
    # so "notin" alone matches it once it exists, as in Kubernetes.
    none = core.list_namespaced_config_map(ns, label_selector="app,app notin (py)")
    assert none.items == [], none.items
    step("list with label selectors")

    patched = core.patch_namespaced_config_map("one", ns, {"data": {"k2": "v2"}})
    assert patched.data == {"k": "v", "k2": "v2"}, patched.data
    stale = cm
    stale.data = {"k": "stale"}
    err = expect_status(409, core.replace_namespaced_config_map, "one", ns, stale)
    assert "the object has been modified" in err.body, err.body
    step("patch, replace with a stale resourceVersion: 409 Conflict")

    # A watch from the list's resourceVersion sees what is created after it.
    rv = core.list_namespaced_config_map(ns).metadata.resource_version

    def create_later():
        time.sleep(0.5)
        core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="two")))
        core.delete_namespaced_config_map("two", ns)

    threading.Thread(target=create_later, daemon=True).start()
    seen = []
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, ns, resource_version=rv,
                       timeout_seconds=10):
        # The namespace's kube-root-ca.crt may arrive too (its controller
        # creates it at any time after the namespace).
        if ev["object"].metadata.name != "two":
            continue
        seen.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()
    assert seen == [("ADDED", "two"), ("DELETED", "two")], seen
    step("watch")

    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[
                    client.V1Container(name="c", image="nginx:1.25")]),
            ),
        ),
    )
    created = apps.create_namespaced_deployment(ns, dep)
    assert created.spec.strategy.type == "RollingUpdate", created.spec.strategy
    assert created.metadata.generation == 1
    scaled = apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 5}})
    assert scaled.spec.replicas == 5, scaled.spec
    assert apps.read_namespaced_deployment("web", ns).spec.replicas == 5
    step("deployment with defaults, scale subresource")

    for i in range(5):
        core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"page-{i}")))
    page = core.list_namespaced_config_map(ns, limit=2)
    names = [c.metadata.name for c in page.items]
    while page.metadata._continue:
        page = core.list_namespaced_config_map(ns, limit=2, _continue=page.metadata._continue)
        names += [c.metadata.name for c in page.items]
    assert [n for n in names if n.startswith("page-")] == [f"page-{i}" for i in range(5)], names
    step("limit and continue")

    pod = core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="p"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36")])))
    assert pod.spec.service_account_name == "default", pod.spec
    assert pod.status.phase == "Pending" and pod.status.qos_class == "BestEffort", pod.status
    found = core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={ns},status.phase=Pending")
    assert [p.metadata.name for p in found.items] == ["p"], found.items
    core.delete_namespaced_pod("p", ns, body=client.V1DeleteOptions(grace_period_seconds=0))
    apps.delete_namespaced_deployment(
        "web", ns, body=client.V1DeleteOptions(propagation_policy="Background"))
    step("pods across namespaces with field selectors, deletes with options")

    expect_status(404, core.read_namespaced_config_map, "missing", ns)
    expect_status(422, core.create_namespaced_config_map, ns,
                  client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Not_Valid")))
    step("404 and 422 as ApiException")

    core.delete_namespaced_config_map("one", ns)
    expect_status(404, core.read_namespaced_config_map, "one", ns)
    step("delete")


if __name__ == "__main__":
    main(sys.argv[1])
