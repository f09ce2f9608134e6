//! The cluster-level controllers through the real kubectl: every namespace gets its `default`
//! ServiceAccount and `kube-root-ca.crt`; a deleted namespace is Terminating (refusing new
//! content) until emptied, then gone; Endpoints and EndpointSlices follow the pods a Service
//! selects as they turn ready; `default/kubernetes` lists the API servers.

mod common;

use std::time::Duration;

use common::kubectl::kubectl;
use common::{Cluster, wait_for};

#[test]
fn namespaces_service_accounts_and_endpoints() {
    let cluster = Cluster::start(58, 1, &[]);
    let k = kubectl(&cluster, None);

    wait_for(
        Duration::from_secs(15),
        "default/kubernetes endpoints",
        || {
            k.run(&[
                "get",
                "endpoints",
                "kubernetes",
                "-n",
                "default",
                "-o",
                "jsonpath={.subsets[0].addresses[0].ip}",
            ])
            .stdout
            .starts_with(b"127.0.58.1")
        },
    );

    k.ok(&["create", "namespace", "shop"]);
    wait_for(
        Duration::from_secs(10),
        "the default ServiceAccount and root CA",
        || {
            k.run(&["get", "serviceaccount", "default", "-n", "shop"])
                .status
                .success()
                && k.run(&["get", "configmap", "kube-root-ca.crt", "-n", "shop"])
                    .status
                    .success()
        },
    );
    let ca = k.ok(&[
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "shop",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    let ca_file = std::fs::read_to_string(cluster.pki("ca.crt")).expect("ca.crt");
    assert_eq!(
        ca.trim(),
        ca_file.trim(),
        "kube-root-ca.crt is the cluster CA"
    );
    // Deleted, it comes back.
    k.ok(&["delete", "serviceaccount", "default", "-n", "shop"]);
    wait_for(
        Duration::from_secs(10),
        "the default ServiceAccount to return",
        || {
            k.run(&["get", "serviceaccount", "default", "-n", "shop"])
                .status
                .success()
        },
    );

    // Endpoints follow readiness.
    k.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "shop",
        "--image=nginx",
        "--replicas=2",
        "--port=8080",
    ]);
    k.ok(&[
        "expose",
        "deployment",
        "web",
        "-n",
        "shop",
        "--port=80",
        "--target-port=8080",
    ]);
    wait_for(Duration::from_secs(20), "two pods", || {
        k.ok(&["get", "pods", "-n", "shop", "-o", "name"])
            .lines()
            .count()
            == 2
    });
    let pods: Vec<String> = k
        .ok(&["get", "pods", "-n", "shop", "-o", "name"])
        .lines()
        .map(str::to_string)
        .collect();
    for (i, pod) in pods.iter().enumerate() {
        let ready = if i == 0 { "True" } else { "False" };
        let patch = format!(
            r#"{{"status":{{"phase":"Running","podIP":"10.42.0.{}","conditions":[{{"type":"Ready","status":"{ready}"}}]}}}}"#,
            10 + i
        );
        k.ok(&[
            "patch",
            "-n",
            "shop",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }
    wait_for(
        Duration::from_secs(10),
        "one ready and one not-ready address",
        || {
            let ready = k.ok(&[
                "get",
                "endpoints",
                "web",
                "-n",
                "shop",
                "-o",
                "jsonpath={.subsets[0].addresses[*].ip}",
            ]);
            let not_ready = k.ok(&[
                "get",
                "endpoints",
                "web",
                "-n",
                "shop",
                "-o",
                "jsonpath={.subsets[0].notReadyAddresses[*].ip}",
            ]);
            ready.trim() == "10.42.0.10" && not_ready.trim() == "10.42.0.11"
        },
    );
    let slice = k.ok(&[
        "get",
        "endpointslices",
        "-n",
        "shop",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={.items[0].endpoints[*].conditions.ready} {.items[0].ports[0].port}",
    ]);
    assert_eq!(slice.trim(), "true false 8080", "{slice}");

    // Namespace termination.
    k.ok(&["delete", "namespace", "shop", "--wait=false"]);
    let phase = k.ok(&["get", "namespace", "shop", "-o", "jsonpath={.status.phase}"]);
    let refused = k.run(&["create", "configmap", "late", "-n", "shop"]);
    let gone_already = phase.trim().is_empty();
    if !gone_already {
        assert_eq!(phase.trim(), "Terminating");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("because it is being terminated")
                || !refused.status.success(),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
    wait_for(Duration::from_secs(20), "the namespace to go", || {
        !k.run(&["get", "namespace", "shop"]).status.success()
    });
    assert!(
        k.ok(&[
            "get",
            "deployments,pods,services",
            "-n",
            "shop",
            "-o",
            "name"
        ])
        .trim()
        .is_empty()
    );
}
