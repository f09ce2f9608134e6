//! Static pods (`skiff agent --pod-manifest-path`) on a real member and agent (process
//! runtime): a manifest runs as `<name>-<node>` with a mirror pod in the API owned by the
//! Node, `kubectl logs` reads it, a mirror deleted through the API comes back, a changed
//! manifest replaces the pod, and a removed manifest stops it.

mod common;

use std::time::Duration;

use common::kubectl::{Kubectl, kubectl};
use common::{Cluster, agents, wait_for};
use serde_json::Value;

fn pod(k: &Kubectl, name: &str) -> Option<Value> {
    let out = k.run(&["get", "pod", name, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn manifest(message: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {{app: static}}\nspec:\n  containers:\n  - name: app\n    image: busybox\n    command: [sh, -c, 'echo {message}; sleep 3600']\n"
    )
}

#[test]
fn manifests_run_as_static_pods_with_mirrors() {
    let cluster = Cluster::start(72, 1, &["--cluster-dns-listen", "off"]);
    let manifests = cluster.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifest dir");
    std::fs::write(manifests.join("web.yaml"), manifest("first")).expect("manifest");
    // Not a pod: skipped with a warning, the rest still runs.
    std::fs::write(manifests.join("notes.txt"), "just notes").expect("notes");
    let dir = manifests.to_str().expect("path").to_string();
    let agents = agents::start(&cluster, 1, &["--pod-manifest-path", &dir]);
    let k = kubectl(&cluster, None);
    let mirror = "web-agent1";

    let running = |k: &Kubectl| pod(k, mirror).filter(|p| p["status"]["phase"] == "Running");
    let mut first = None;
    wait_for(Duration::from_secs(60), "the static pod running", || {
        first = running(&k);
        first.is_some()
    });
    let first = first.unwrap_or_default();
    assert_eq!(first["spec"]["nodeName"], "agent1");
    assert_eq!(first["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert_eq!(first["metadata"]["ownerReferences"][0]["name"], "agent1");
    let annotations = &first["metadata"]["annotations"];
    assert!(
        annotations["kubernetes.io/config.mirror"].is_string(),
        "{annotations}"
    );
    assert_eq!(annotations["kubernetes.io/config.source"], "file");
    wait_for(Duration::from_secs(30), "its log", || {
        k.run(&["logs", mirror]).stdout.starts_with(b"first")
    });

    // A mirror deleted through the API is made again.
    let uid = first["metadata"]["uid"].as_str().unwrap_or("").to_string();
    k.ok(&["delete", "pod", mirror, "--wait=false"]);
    wait_for(Duration::from_secs(60), "the mirror back", || {
        running(&k).is_some_and(|p| p["metadata"]["uid"] != uid.as_str())
    });

    // A changed manifest replaces the pod.
    std::fs::write(manifests.join("web.yaml"), manifest("second")).expect("manifest");
    wait_for(Duration::from_secs(60), "the new version running", || {
        k.run(&["logs", mirror]).stdout.starts_with(b"second")
    });

    // A removed manifest stops it.
    std::fs::remove_file(manifests.join("web.yaml")).expect("remove");
    wait_for(Duration::from_secs(60), "the static pod gone", || {
        pod(&k, mirror).is_none()
    });
    drop(agents);
}
