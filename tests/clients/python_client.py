"""The Python `kubernetes` client (PyPI) against a skiff cluster: list, create, patch (strategic
merge, JSON patch, server-side apply), paginate and watch ConfigMaps and a Deployment.

Usage: python_client.py KUBECONFIG NAMESPACE. Exits non-zero (with a traceback) on the first
mismatch; prints "python-client: all passed" at the end.
"""

import sys
import threading

from kubernetes import client, config, watch


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def main():
    kubeconfig, ns = sys.argv[1], sys.argv[2]
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    version = client.VersionApi().get_code()
    check(version.major == "1", "version %s.%s" % (version.major, version.minor))

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    names = [n.metadata.name for n in core.list_namespace().items]
    check(ns in names and "default" in names, "namespace %s listed" % ns)

    # Create and list, with a label selector and pages of 2.
    for i in range(5):
        core.create_namespaced_config_map(
            ns,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="page-%d" % i, labels={"set": "pages"}),
                data={"i": str(i)},
            ),
        )
    seen, token, pages = [], None, 0
    while True:
        page = core.list_namespaced_config_map(
            ns, label_selector="set=pages", limit=2, _continue=token
        )
        pages += 1
        seen += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
    check(sorted(seen) == ["page-%d" % i for i in range(5)] and pages == 3,
          "5 ConfigMaps in 3 pages of 2: %s" % seen)

    created = core.create_namespaced_config_map(
        ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="py-cm", labels={"app": "py"}),
            data={"k": "v1"},
        ),
    )
    rv = created.metadata.resource_version
    check(rv and created.metadata.uid, "created py-cm at resourceVersion %s" % rv)

    # Watch from the creation's resourceVersion in a thread: the patches and the delete must
    # arrive in order.
    events, started = [], threading.Event()

    def follow():
        w = watch.Watch()
        started.set()
        for ev in w.stream(core.list_namespaced_config_map, ns, label_selector="app=py",
                           resource_version=rv, timeout_seconds=30):
            obj = ev["object"]
            events.append((ev["type"], obj.metadata.name, dict(obj.data or {})))
            if ev["type"] == "DELETED":
                w.stop()

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    started.wait(5)

    # A dict body is sent as a strategic merge patch; a list as a JSON patch.
    patched = core.patch_namespaced_config_map("py-cm", ns, {"data": {"k": "v2"}})
    check(patched.data == {"k": "v2"}, "strategic merge patch: %s" % patched.data)
    patched = core.patch_namespaced_config_map(
        "py-cm", ns, [{"op": "add", "path": "/data/extra", "value": "x"}]
    )
    check(patched.data == {"k": "v2", "extra": "x"}, "JSON patch: %s" % patched.data)
    core.delete_namespaced_config_map("py-cm", ns)

    watcher.join(30)
    check(not watcher.is_alive(), "the watch ended with DELETED")
    kinds = [(t, d.get("k"), d.get("extra")) for t, _, d in events]
    check(kinds == [("MODIFIED", "v2", None), ("MODIFIED", "v2", "x"), ("DELETED", "v2", "x")],
          "watch events in order: %s" % kinds)

    # A Deployment: create, read, scale through the scale subresource, server-side apply.
    labels = {"app": "web"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web", labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[
                    client.V1Container(name="web", image="busybox", command=["sleep", "3600"])
                ]),
            ),
        ),
    )
    made = apps.create_namespaced_deployment(ns, deployment)
    check(made.spec.strategy.type == "RollingUpdate", "Deployment defaulted (strategy %s)"
          % made.spec.strategy.type)
    listed = apps.list_namespaced_deployment(ns, label_selector="app=web").items
    check([d.metadata.name for d in listed] == ["web"], "Deployment listed")
    scale = apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}})
    check(scale.spec.replicas == 3, "scaled to 3 through the scale subresource")
    check(apps.read_namespaced_deployment("web", ns).spec.replicas == 3, "spec.replicas is 3")

    applied = apps.patch_namespaced_deployment(
        "web", ns,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"owner": "python"}},
        },
        field_manager="python-client",
        _content_type="application/apply-patch+yaml",
    )
    managers = [m.manager for m in applied.metadata.managed_fields or []]
    check(applied.metadata.annotations.get("owner") == "python" and "python-client" in managers,
          "server-side apply: managers %s" % managers)

    try:
        core.read_namespaced_config_map("absent", ns)
        raise AssertionError("reading a missing ConfigMap succeeded")
    except client.exceptions.ApiException as e:
        check(e.status == 404, "a missing object is a 404 ApiException")

    core.delete_namespace(ns)
    print("python-client: all passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except client.exceptions.ApiException as e:
        # The Status object the server answered with says why.
        print("ApiException %s %s: %s" % (e.status, e.reason, e.body), file=sys.stderr, flush=True)
        raise
