//! The scheduler's rules about other pods (inter-pod affinity and anti-affinity, topology
//! spread constraints) and PodDisruptionBudgets (the disruption controller, pods/eviction,
//! `kubectl drain`) against a real skiff process and the real kubectl, on fake nodes.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::fake_nodes::{add_node, get, items, node_of, pod_manifest, set_phase};
use common::kubectl::{Kubectl, kubectl};
use common::{Cluster, wait_for};
use serde_json::{Value, json};

const HOST: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn bound_node(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or_default()
}

fn deployment(app: &str, replicas: u32, spec: Value) -> String {
    let mut pod_spec = json!({"containers": [{"name": "c", "image": "busybox:1.36",
        "resources": {"requests": {"cpu": "100m"}}}]});
    if let (Some(pod_spec), Some(extra)) = (pod_spec.as_object_mut(), spec.as_object()) {
        pod_spec.extend(extra.clone());
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": pod_spec}}})
    .to_string()
}

fn labelled_pod(pod: &str, app: &str, spec: Value) -> String {
    let mut manifest: Value = serde_json::from_str(&pod_manifest(pod, "100m", spec)).expect("json");
    manifest["metadata"]["labels"] = json!({"app": app});
    manifest.to_string()
}

/// Waits until `describe pod` shows a FailedScheduling event with `message`.
fn wait_failed_scheduling(k: &Kubectl, pod: &str, message: &str) {
    let mut described = String::new();
    let found = Instant::now() + Duration::from_secs(30);
    while Instant::now() < found {
        described = k.ok(&["describe", "pod", pod]);
        if described.contains("FailedScheduling") && described.contains(message) {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("no FailedScheduling {message:?} for {pod}:\n{described}");
}

/// Required anti-affinity by hostname: one replica per node, the one too many stays Pending.
fn anti_affinity(k: &Kubectl) {
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": HOST, "labelSelector": {"matchLabels": {"app": "apart"}}}]}});
    k.apply(&deployment("apart", 4, json!({"affinity": anti})));
    let mut pods = Vec::new();
    wait_for(Duration::from_secs(60), "3 replicas placed, 1 left", || {
        pods = items(k, "pods", "app=apart");
        pods.len() == 4 && pods.iter().filter(|p| !bound_node(p).is_empty()).count() == 3
    });
    let mut nodes: Vec<&str> = pods
        .iter()
        .map(bound_node)
        .filter(|n| !n.is_empty())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "one replica per node");
    let pending = pods
        .iter()
        .find(|p| bound_node(p).is_empty())
        .map(name)
        .unwrap_or_default();
    wait_failed_scheduling(
        k,
        pending,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.",
    );
    k.ok(&["delete", "deployment", "apart"]);
    wait_for(Duration::from_secs(30), "apart's pods gone", || {
        items(k, "pods", "app=apart").is_empty()
    });
}

/// Required affinity: a pod goes where its target is (by host, by zone), and one whose
/// target does not exist yet waits for it.
fn affinity(k: &Kubectl) {
    let on = |node: &str| json!({"nodeSelector": {HOST: node}});
    k.apply(&labelled_pod("db", "db", on("n2")));
    wait_for(Duration::from_secs(30), "db on n2", || {
        node_of(k, "db") == "n2"
    });
    let near = |app: &str, key: &str| {
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": key, "labelSelector": {"matchLabels": {"app": app}}}]}}})
    };
    // Without the rule the emptier n1 or n3 would score higher than n2.
    k.apply(&labelled_pod("web", "web", near("db", HOST)));
    wait_for(Duration::from_secs(30), "web beside db", || {
        node_of(k, "web") == "n2"
    });
    k.apply(&labelled_pod("worker", "worker", near("queue", ZONE)));
    wait_failed_scheduling(
        k,
        "worker",
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules.",
    );
    // The target arrives in zone b (n3 alone): the waiting pod follows at once.
    k.apply(&labelled_pod("queue", "queue", on("n3")));
    wait_for(Duration::from_secs(30), "worker in queue's zone", || {
        node_of(k, "worker") == "n3"
    });
    for pod in ["db", "web", "worker", "queue"] {
        k.ok(&["delete", "pod", pod, "--grace-period=0", "--force"]);
    }
}

/// Pods of `app` per zone (nodes without a zone under their own name).
fn per_zone(k: &Kubectl, app: &str, zones: &BTreeMap<&str, &str>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for pod in items(k, "pods", &format!("app={app}")) {
        let node = bound_node(&pod);
        if !node.is_empty() {
            let zone = zones.get(node).copied().unwrap_or(node);
            *out.entry(zone.to_string()).or_default() += 1;
        }
    }
    out
}

/// maxSkew 1 over zones a (n1, n2) and b (n3); n4 has no zone and takes none.
fn topology_spread(k: &Kubectl) {
    add_node(k, "n4", "8", json!({}), json!([]));
    let zones = BTreeMap::from([("n1", "a"), ("n2", "a"), ("n3", "b")]);
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE,
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "zonal"}}}]});
    k.apply(&deployment("zonal", 4, spread));
    let even = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 2)]);
    wait_for(Duration::from_secs(60), "2 pods per zone", || {
        per_zone(k, "zonal", &zones) == even
    });
    // Zone b cordoned: a may run one ahead, then the next pod must wait.
    k.ok(&["cordon", "n3"]);
    k.ok(&["scale", "deployment", "zonal", "--replicas=6"]);
    let ahead = BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 2)]);
    let mut pending = String::new();
    wait_for(Duration::from_secs(60), "3 in a, 2 in b, 1 pending", || {
        let pods = items(k, "pods", "app=zonal");
        if let Some(p) = pods.iter().find(|p| bound_node(p).is_empty()) {
            pending = name(p).to_string();
        }
        pods.len() == 6 && per_zone(k, "zonal", &zones) == ahead
    });
    wait_failed_scheduling(
        k,
        &pending,
        "0/4 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label), 1 node(s) were unschedulable, 2 node(s) didn't match pod topology spread constraints.",
    );
    k.ok(&["uncordon", "n3"]);
    let level = BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 3)]);
    wait_for(Duration::from_secs(30), "the waiting pod in zone b", || {
        per_zone(k, "zonal", &zones) == level
    });
    k.ok(&["delete", "deployment", "zonal"]);
}

/// Marks every live pod of `app` Running and Ready, as a kubelet would.
fn ready_all(k: &Kubectl, app: &str) {
    for pod in items(k, "pods", &format!("app={app}")) {
        let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if !ready && !bound_node(&pod).is_empty() {
            set_phase(k, name(&pod), "Running", true);
        }
    }
}

fn budget_status(k: &Kubectl) -> Value {
    get(k, &["get", "pdb", "guarded"])["status"].clone()
}

fn allowed(k: &Kubectl) -> i64 {
    budget_status(k)["disruptionsAllowed"]
        .as_i64()
        .unwrap_or(-1)
}

/// `kubectl create --raw .../eviction`: the command's output.
fn evict(k: &Kubectl, pod: &str) -> std::process::Output {
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": pod, "namespace": "default"}});
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("eviction.json");
    std::fs::write(&file, eviction.to_string()).expect("write");
    let path = format!("/api/v1/namespaces/default/pods/{pod}/eviction");
    k.run(&["create", "--raw", &path, "-f", file.to_str().expect("path")])
}

fn ready_guarded(k: &Kubectl) -> Vec<String> {
    items(k, "pods", "app=guarded")
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .map(|p| name(p).to_string())
        .collect()
}

const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// A budget of minAvailable 2 over 3 replicas: one eviction at a time, never two at once.
fn disruption_budget(k: &Kubectl) {
    k.apply(&deployment("guarded", 3, json!({})));
    wait_for(Duration::from_secs(60), "3 guarded pods Running", || {
        ready_all(k, "guarded");
        ready_guarded(k).len() == 3
    });
    k.apply(
        r#"{"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}}"#,
    );
    wait_for(Duration::from_secs(30), "the budget allows 1", || {
        allowed(k) == 1
    });
    let status = budget_status(k);
    assert_eq!(status["currentHealthy"], 3, "{status}");
    assert_eq!(status["desiredHealthy"], 2, "{status}");
    assert_eq!(status["expectedPods"], 3, "{status}");
    assert_eq!(status["observedGeneration"], 1, "{status}");
    assert_eq!(
        status["conditions"][0]["type"], "DisruptionAllowed",
        "{status}"
    );
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");
    let table = k.ok(&["get", "pdb", "guarded"]);
    assert!(table.contains("ALLOWED DISRUPTIONS"), "{table}");
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["guarded", "2", "N/A", "1"], "{table}");

    let pods = ready_guarded(k);
    let first = evict(k, &pods[0]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The replacement is not Ready yet: nothing more may go.
    wait_for(Duration::from_secs(30), "the budget spent", || {
        allowed(k) == 0
    });
    let refused = evict(k, &pods[1]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("TooManyRequests") && stderr.contains(REFUSED),
        "{stderr}"
    );
    assert!(ready_guarded(k).contains(&pods[1]), "the refused pod stays");

    // Two evictions racing for the one allowed disruption: exactly one wins.
    wait_for(
        Duration::from_secs(30),
        "one disruption allowed again",
        || {
            ready_all(k, "guarded");
            allowed(k) == 1
        },
    );
    let racers: Vec<std::process::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = [&pods[1], &pods[2]]
            .into_iter()
            .map(|pod| s.spawn(move || evict(k, pod)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("evict"))
            .collect()
    });
    let won = racers.iter().filter(|o| o.status.success()).count();
    assert_eq!(won, 1, "one eviction may pass: {racers:?}");
    drain_waits_for_the_budget(k);
    k.ok(&["delete", "pdb", "guarded"]);
    k.ok(&["delete", "deployment", "guarded"]);
}

/// `kubectl drain` stops at the budget and retries until a replacement is Ready.
fn drain_waits_for_the_budget(k: &Kubectl) {
    wait_for(Duration::from_secs(30), "the budget spent again", || {
        allowed(k) == 0
    });
    let pods = items(k, "pods", "app=guarded");
    let running = pods
        .iter()
        .find(|p| p["status"]["phase"] == "Running")
        .expect("a running pod");
    let node = bound_node(running).to_string();
    let drain = k
        .command(&[
            "drain",
            &node,
            "--ignore-daemonsets",
            "--pod-selector=app=guarded",
            "--timeout=120s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl drain");
    // Retried every 5 s by kubectl while the budget is spent.
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        items(k, "pods", "app=guarded")
            .iter()
            .any(|p| name(p) == name(running))
    );
    wait_for(Duration::from_secs(30), "the replacement Ready", || {
        ready_all(k, "guarded");
        allowed(k) >= 1
    });
    let out = drain.wait_with_output().expect("drain output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(REFUSED) && stderr.contains("will retry"),
        "{stderr}"
    );
    assert!(stdout.contains(&format!("node/{node} drained")), "{stdout}");
    k.ok(&["uncordon", &node]);
}

#[test]
fn affinity_spread_and_disruption_budgets_on_fake_nodes() {
    let cluster = Cluster::start(71, 1, &[]);
    let k = kubectl(&cluster, None);
    wait_for(Duration::from_secs(30), "default namespace", || {
        k.run(&["get", "namespace", "default"]).status.success()
    });
    for (node, zone) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
        add_node(&k, node, "8", json!({ZONE: zone}), json!([]));
    }
    anti_affinity(&k);
    affinity(&k);
    topology_spread(&k);
    disruption_budget(&k);
}
