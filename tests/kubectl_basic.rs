//! The real kubectl (1.32) against a 3-member skiff cluster: discovery, CRUD, table output,
//! label/annotate/patch (merge and JSON), apply twice, optimistic concurrency (409), watch,
//! label selectors, NotFound, and a follower serving (and forwarding) everything.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::kubectl::kubectl;
use common::{Cluster, wait_for};

const NS_AND_CM: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
  labels:
    app: web
data:
  color: blue
";

#[test]
fn kubectl_basic_flows() {
    let cluster = Cluster::start(50, 3, &[]);
    let k = kubectl(&cluster, None);

    // System namespaces exist; the table has kube's columns.
    wait_for(Duration::from_secs(20), "system namespaces", || {
        let out = k.run(&["get", "namespaces"]);
        String::from_utf8_lossy(&out.stdout).contains("kube-system")
    });
    let table = k.ok(&["get", "namespaces"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.split_whitespace().collect::<Vec<_>>() == ["NAME", "STATUS", "AGE"]),
        "{table}"
    );
    assert!(
        table.contains("default") && table.contains("Active"),
        "{table}"
    );

    // Apply creates; apply again with a change configures.
    let out = k.apply(NS_AND_CM);
    assert!(
        out.contains("namespace/demo created") && out.contains("configmap/settings created"),
        "{out}"
    );
    let out = k.apply(&NS_AND_CM.replace("color: blue", "color: green"));
    assert!(out.contains("configmap/settings configured"), "{out}");
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.color}"
        ]),
        "green"
    );

    // get: table, yaml, json.
    let table = k.ok(&["get", "configmaps", "-n", "demo"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "DATA", "AGE"], "{table}");
    assert!(table.contains("settings"), "{table}");
    let yaml = k.ok(&["get", "cm", "settings", "-n", "demo", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: ConfigMap")
            && yaml.contains("uid:")
            && yaml.contains("creationTimestamp:"),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "cm", "settings", "-n", "demo", "-o", "json"]))
            .expect("json");
    let stale_rv = json["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();

    // label, annotate, merge patch, JSON patch.
    k.ok(&["label", "cm", "settings", "-n", "demo", "tier=front"]);
    k.ok(&["annotate", "cm", "settings", "-n", "demo", "owner=team-a"]);
    k.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"size":"xl"}}"#,
    ]);
    k.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "demo",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/data/shape","value":"round"}]"#,
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "cm", "settings", "-n", "demo", "-o", "json"]))
            .expect("json");
    assert_eq!(json["metadata"]["labels"]["tier"], "front");
    assert_eq!(json["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(json["data"]["size"], "xl");
    assert_eq!(json["data"]["shape"], "round");
    let err = k.fails(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "demo",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/data/nope"}]"#,
    ]);
    assert!(
        err.contains("BadRequest") || err.contains("Invalid"),
        "{err}"
    );

    // Label selector.
    let out = k.ok(&["get", "cm", "-n", "demo", "-l", "tier=front", "-o", "name"]);
    assert_eq!(out.trim(), "configmap/settings");
    let out = k.run(&["get", "cm", "-n", "demo", "-l", "tier=back", "-o", "name"]);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());

    // replace with a stale resourceVersion: 409 Conflict.
    let stale = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: demo\n  resourceVersion: \"{stale_rv}\"\ndata:\n  color: red\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stale.yaml");
    std::fs::write(&file, stale).expect("write");
    let err = k.fails(&["replace", "-f", file.to_str().expect("path")]);
    assert!(
        err.contains(r#"Operation cannot be fulfilled on configmaps "settings": the object has been modified; please apply your changes to the latest version and try again"#),
        "{err}"
    );

    // NotFound, exactly as kube-apiserver words it.
    let err = k.fails(&["get", "cm", "missing", "-n", "demo"]);
    assert!(
        err.contains(r#"Error from server (NotFound): configmaps "missing" not found"#),
        "{err}"
    );
    // A namespaced create into a missing namespace.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nowhere.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lost\n  namespace: nowhere\n",
    )
    .expect("write");
    let err = k.fails(&["create", "-f", file.to_str().expect("path")]);
    assert!(err.contains(r#"namespaces "nowhere" not found"#), "{err}");

    // get -w prints an event as it happens.
    let mut watch = k
        .command(&["get", "cm", "-n", "demo", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let mut stdout = watch.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
            if seen.contains("watched") {
                break;
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_secs(2));
    k.apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\n  namespace: demo\n");
    let seen = reader.join().expect("reader");
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        seen.contains("ADDED") && seen.contains("watched"),
        "watch printed: {seen}"
    );

    // Through a follower: reads served, writes forwarded to the leader.
    let k2 = kubectl(&cluster, Some(1));
    k2.apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: via-node2\n  namespace: demo\ndata:\n  k: v\n");
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "via-node2",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.k}"
        ]),
        "v"
    );
    let out = k2.ok(&["get", "cm", "-n", "demo", "-o", "name"]);
    assert!(
        out.contains("configmap/settings") && out.contains("configmap/via-node2"),
        "{out}"
    );

    // delete, then it is gone.
    let out = k.ok(&["delete", "cm", "settings", "-n", "demo"]);
    assert!(out.contains(r#"configmap "settings" deleted"#), "{out}");
    let err = k.fails(&["get", "cm", "settings", "-n", "demo"]);
    assert!(err.contains("NotFound"), "{err}");
}

#[test]
fn kubectl_pods_and_deployments_print_like_kube() {
    let cluster = Cluster::start(51, 1, &[]);
    let k = kubectl(&cluster, None);
    wait_for(Duration::from_secs(20), "default namespace", || {
        k.run(&["get", "namespace", "default"]).status.success()
    });
    k.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
    );
    let table = k.ok(&["get", "pods"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{table}"
    );
    assert!(
        table.contains("0/1") && table.contains("Pending"),
        "{table}"
    );
    let wide = k.ok(&["get", "pods", "-o", "wide"]);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        &header[..7],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"],
        "{wide}"
    );
    let pod: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "pod", "web", "-o", "json"])).expect("json");
    assert_eq!(pod["spec"]["restartPolicy"], "Always");
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");

    k.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\nspec:\n  selector:\n    matchLabels: {app: api}\n  template:\n    metadata:\n      labels: {app: api}\n    spec:\n      containers:\n      - name: c\n        image: busybox:1.36\n",
    );
    let table = k.ok(&["get", "deployments"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{table}"
    );
    assert!(table.contains("0/1"), "{table}");

    // An invalid object is a 422 with the field named.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\nspec:\n  selector:\n    matchLabels: {app: one}\n  template:\n    metadata:\n      labels: {app: two}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n",
    )
    .expect("write");
    let err = k.fails(&["apply", "-f", file.to_str().expect("path")]);
    assert!(err.contains("Invalid") && err.contains("selector"), "{err}");
}
