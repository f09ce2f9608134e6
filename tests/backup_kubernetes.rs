//! Backup and restore at the Kubernetes level (issue 8): objects created with kubectl survive a
//! compressed, encrypted backup (unreadable without the cluster token), a selective restore brings one deleted namespace back into the running cluster
//! intact (controllers recreate what they own), and a full restore into a new member serves
//! them to kubectl.

mod common;

use std::process::Command;
use std::time::Duration;

use common::kubectl::{Kubectl, kubectl};
use common::*;

fn names(k: &Kubectl, namespace: &str) -> Vec<String> {
    let out = k.ok(&[
        "get",
        "deployments,services,configmaps,secrets,serviceaccounts,rolebindings",
        "-n",
        namespace,
        "-o",
        "name",
    ]);
    let mut names: Vec<String> = out.lines().map(str::to_string).collect();
    names.sort();
    names
}

/// The data of the Secret the test keeps in `shop`.
fn secret_pw(k: &Kubectl) -> String {
    k.ok(&[
        "get",
        "secret",
        "pw",
        "-n",
        "shop",
        "-o",
        "jsonpath={.data.p}",
    ])
}

#[test]
fn a_deleted_namespace_comes_back_and_a_restored_cluster_serves_kubectl() {
    let mut cluster = Cluster::start(35, 1, &[]);
    let k = kubectl(&cluster, None);
    k.ok(&["create", "namespace", "shop"]);
    k.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "shop",
        "--image=nginx",
        "--replicas=2",
    ]);
    k.ok(&["expose", "deployment", "web", "-n", "shop", "--port=80"]);
    k.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "shop",
        "--from-literal=color=blue",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "-n",
        "shop",
        "--from-literal=p=s3cret",
    ]);
    k.ok(&["create", "serviceaccount", "robot", "-n", "shop"]);
    k.ok(&[
        "create",
        "rolebinding",
        "rb",
        "-n",
        "shop",
        "--clusterrole=view",
        "--user=bob",
    ]);
    k.ok(&[
        "create",
        "configmap",
        "keep",
        "-n",
        "default",
        "--from-literal=a=b",
    ]);
    wait_for(Duration::from_secs(20), "the deployment's pods", || {
        k.ok(&["get", "pods", "-n", "shop", "-o", "name"])
            .lines()
            .count()
            == 2
    });
    wait_for(
        Duration::from_secs(10),
        "the default ServiceAccount",
        || {
            k.run(&["get", "configmap", "kube-root-ca.crt", "-n", "shop"])
                .status
                .success()
                && k.run(&["get", "serviceaccount", "default", "-n", "shop"])
                    .status
                    .success()
        },
    );
    let before = names(&k, "shop");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.snap");
    let out = Command::new(SKIFF)
        .args(["backup", "--data"])
        .arg(&cluster.nodes[0].data)
        .arg("--out")
        .arg(&file)
        .args(["--compress", "--encrypt"])
        .output()
        .expect("skiff backup");
    assert_ok(&out, "skiff backup");
    // Encrypted with the cluster token: unreadable without it.
    let out = Command::new(SKIFF)
        .args(["backup", "verify"])
        .arg(&file)
        .output()
        .expect("skiff backup verify");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("encrypted"));
    let token = std::fs::read_to_string(cluster.nodes[0].data.join("token")).expect("token");
    let out = Command::new(SKIFF)
        .args(["backup", "verify", "--token", token.trim()])
        .arg(&file)
        .output()
        .expect("skiff backup verify");
    let verified = assert_ok(&out, "skiff backup verify --token");
    assert!(
        verified.contains("at-rest keys: carried"),
        "the backup carries the keys its Secrets are sealed with: {verified}"
    );

    // Lose the namespace, then bring it back from the backup into the running cluster.
    k.ok(&["delete", "namespace", "shop"]);
    assert!(!k.run(&["get", "namespace", "shop"]).status.success());
    let out = Command::new(SKIFF)
        .args(["restore", "--from"])
        .arg(&file)
        .arg("--only")
        .arg("namespace=shop")
        .arg("--data")
        .arg(&cluster.nodes[0].data)
        .output()
        .expect("skiff restore --only");
    assert_ok(&out, "skiff restore --only");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while names(&k, "shop") != before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        names(&k, "shop"),
        before,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        k.ok(&[
            "get",
            "configmap",
            "cfg",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.color}"
        ]),
        "blue"
    );
    assert_eq!(secret_pw(&k), "czNjcmV0");
    wait_for(
        Duration::from_secs(20),
        "the pods, recreated by the controllers",
        || {
            k.ok(&["get", "pods", "-n", "shop", "-o", "name"])
                .lines()
                .count()
                == 2
        },
    );
    assert_eq!(
        k.ok(&["get", "cm", "keep", "-o", "jsonpath={.data.a}"]),
        "b",
        "nothing else touched"
    );

    // A full restore into a new member serves the same objects to kubectl.
    cluster.kill(0);
    let mut restored = Cluster {
        dir: tempfile::tempdir().expect("tempdir"),
        nodes: vec![Node {
            index: 1,
            ip: "127.0.36.1".into(),
            data: std::path::PathBuf::new(),
            child: None,
            extra_args: Vec::new(),
        }],
        subnet: 36,
        netns: None,
    };
    restored.nodes[0].data = restored.dir.path().join("node1");
    let out = Command::new(SKIFF)
        .args(["restore", "--from"])
        .arg(&file)
        .arg("--data")
        .arg(&restored.nodes[0].data)
        .args([
            "--advertise",
            "127.0.36.1",
            "--name",
            "node1",
            "--token",
            token.trim(),
        ])
        .output()
        .expect("skiff restore");
    assert_ok(&out, "skiff restore");
    restored.spawn(0, &[]);
    restored.wait_for_voters(1);
    let k2 = kubectl(&restored, None);
    wait_for(
        Duration::from_secs(20),
        "kubectl on the restored cluster",
        || k2.run(&["get", "namespace", "shop"]).status.success(),
    );
    assert_eq!(names(&k2, "shop"), before);
    // A new CA, but the backup's at-rest keys: its sealed Secrets open.
    assert_eq!(secret_pw(&k2), "czNjcmV0");
    assert_eq!(
        k2.ok(&[
            "get",
            "configmap",
            "cfg",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.color}"
        ]),
        "blue"
    );
}
