//! The scheduler and the Job, CronJob, StatefulSet and DaemonSet controllers against a real
//! skiff process, driven by the real kubectl. There is no kubelet yet: nodes are registered
//! through the API (Ready, with allocatable cpu/memory/pods) and pods are marked Running,
//! Ready, Succeeded through the status subresource, as a kubelet would report them.

mod common;

use std::time::{Duration, Instant};

use common::fake_nodes::{add_node, get, items, node_of, pod_manifest, set_phase};
use common::kubectl::{Kubectl, kubectl};
use common::{Cluster, wait_for};
use serde_json::{Value, json};

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn scheduling(k: &Kubectl) {
    add_node(k, "small", "1", json!({"size": "small"}), json!([]));
    add_node(
        k,
        "big",
        "4",
        json!({"size": "big", "disk": "ssd"}),
        json!([]),
    );
    add_node(
        k,
        "gpu",
        "8",
        json!({"gpu": "true"}),
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    );
    k.apply(&pod_manifest("needs-3", "3", json!({})));
    k.apply(&pod_manifest(
        "wants-ssd",
        "500m",
        json!({"nodeSelector": {"disk": "ssd"}}),
    ));
    let gpu_affinity = json!({
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}}}});
    k.apply(&pod_manifest("wants-gpu", "1", gpu_affinity));
    k.apply(&pod_manifest(
        "other-scheduler",
        "1",
        json!({"schedulerName": "custom"}),
    ));
    for (pod, node) in [
        ("needs-3", "big"),
        ("wants-ssd", "big"),
        ("wants-gpu", "gpu"),
    ] {
        wait_for(Duration::from_secs(30), &format!("{pod} on {node}"), || {
            node_of(k, pod) == node
        });
    }
    k.apply(&pod_manifest("too-big", "16", json!({})));
    let expected = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu.";
    let mut described = String::new();
    wait_for(Duration::from_secs(30), "a FailedScheduling event", || {
        described = k.ok(&["describe", "pod", "too-big"]);
        described.contains("FailedScheduling") && described.contains(expected)
    });
    let scheduled = get(k, &["get", "pod", "too-big"]);
    let condition = scheduled["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled").cloned())
        .unwrap_or_default();
    assert_eq!(condition["status"], "False", "{scheduled}");
    assert_eq!(condition["reason"], "Unschedulable");
    assert_eq!(
        node_of(k, "other-scheduler"),
        "",
        "another scheduler's pod is left alone"
    );
    // A node with room arrives: the pending pod is placed without waiting for a long backoff.
    add_node(k, "huge", "32", json!({}), json!([]));
    wait_for(Duration::from_secs(20), "too-big on huge", || {
        node_of(k, "too-big") == "huge"
    });
}

/// The VolumeBinding filter: a pod waits for its claim, then goes where the claim's local
/// volume is (and nowhere else, even when another node has more room).
fn volumes(k: &Kubectl) {
    let claim_user =
        json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "local"}}]});
    k.apply(&pod_manifest("uses-local", "100m", claim_user));
    let expected = r#"0/4 nodes are available: persistentvolumeclaim "local" not found."#;
    wait_for(Duration::from_secs(30), "waits for its claim", || {
        k.ok(&["describe", "pod", "uses-local"]).contains(expected)
    });
    assert_eq!(node_of(k, "uses-local"), "");
    k.apply(
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {name: local-on-small}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  hostPath: {path: /tmp/local-on-small}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [small]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: local}
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#,
    );
    wait_for(
        Duration::from_secs(30),
        "the pod follows its volume",
        || node_of(k, "uses-local") == "small",
    );
    k.ok(&["delete", "pod", "uses-local", "--grace-period=0", "--force"]);
}

const JOB: &str = r#"apiVersion: batch/v1
kind: Job
metadata: {name: pi}
spec:
  completions: 5
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: pi, image: "busybox:1.36"}
"#;

fn job(k: &Kubectl) {
    k.apply(JOB);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods = items(k, "pods", "job-name=pi");
        let running: Vec<&Value> = pods
            .iter()
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .collect();
        assert!(
            running.len() <= 2,
            "more than parallelism pods active: {}",
            running.len()
        );
        let job = get(k, &["get", "job", "pi"]);
        let complete = job["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Complete" && c["status"] == "True")
        });
        if complete {
            assert_eq!(job["status"]["succeeded"], 5, "{job}");
            assert!(job["status"]["completionTime"].is_string(), "{job}");
            assert_eq!(pods.len(), 5, "one pod per completion");
            break;
        }
        assert!(Instant::now() < deadline, "job did not complete: {job}");
        // Finish one pod per round so the controller has to keep topping up.
        if let Some(pod) = running.first() {
            set_phase(k, name(pod), "Succeeded", false);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

const STATEFULSET: &str = r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - {name: nginx, image: "nginx:1.27"}
  volumeClaimTemplates:
  - metadata: {name: www}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#;

fn exists(k: &Kubectl, resource: &str, object: &str) -> bool {
    let out = k.run(&["get", resource, object, "--ignore-not-found", "-o", "name"]);
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

fn statefulset(k: &Kubectl) {
    k.apply(STATEFULSET);
    wait_for(Duration::from_secs(30), "web-0", || {
        exists(k, "pod", "web-0")
    });
    let web0 = get(k, &["get", "pod", "web-0"]);
    assert_eq!(web0["spec"]["hostname"], "web-0");
    assert_eq!(web0["spec"]["subdomain"], "web");
    assert!(exists(k, "pvc", "www-web-0"), "claim www-web-0");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !exists(k, "pod", "web-1"),
        "web-1 must wait for web-0 to be ready"
    );
    set_phase(k, "web-0", "Running", true);
    wait_for(Duration::from_secs(30), "web-1", || {
        exists(k, "pod", "web-1")
    });
    set_phase(k, "web-1", "Running", true);
    wait_for(Duration::from_secs(30), "2 ready replicas", || {
        get(k, &["get", "statefulset", "web"])["status"]["readyReplicas"] == 2
    });
    rolling_update(k);
    k.ok(&["scale", "statefulset", "web", "--replicas=0"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (zero, one) = (exists(k, "pod", "web-0"), exists(k, "pod", "web-1"));
        assert!(zero || !one, "web-0 went before web-1");
        if !zero && !one {
            break;
        }
        assert!(Instant::now() < deadline, "pods not deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(exists(k, "pvc", "www-web-1"), "claims outlive their pods");
}

/// The image of a StatefulSet pod, and whether it is ready; None while it does not exist.
fn stateful_pod(k: &Kubectl, pod: &str) -> Option<(String, bool)> {
    let out = k.run(&["get", "pod", pod, "--ignore-not-found", "-o", "json"]);
    let pod: Value = serde_json::from_slice(&out.stdout).ok()?;
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return None;
    }
    let image = pod["spec"]["containers"][0]["image"].as_str()?.to_string();
    let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    Some((image, ready))
}

/// A new image rolls out highest ordinal first, one pod at a time, through a new revision.
fn rolling_update(k: &Kubectl) {
    let before = get(k, &["get", "statefulset", "web"])["status"].clone();
    k.ok(&["set", "image", "statefulset/web", "nginx=nginx:1.28"]);
    let mut order = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for pod in ["web-1", "web-0"] {
            if let Some((image, ready)) = stateful_pod(k, pod)
                && image == "nginx:1.28"
            {
                if !order.contains(&pod) {
                    order.push(pod);
                }
                if !ready {
                    set_phase(k, pod, "Running", true);
                }
            }
        }
        let status = get(k, &["get", "statefulset", "web"])["status"].clone();
        if status["updatedReplicas"] == 2
            && status["readyReplicas"] == 2
            && status["currentRevision"] == status["updateRevision"]
        {
            assert_ne!(
                status["updateRevision"], before["updateRevision"],
                "{status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "rollout stalled: {status}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(order, ["web-1", "web-0"], "highest ordinal first");
}

const DAEMONSET: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - {name: agent, image: "busybox:1.36"}
"#;

fn daemon_nodes(k: &Kubectl) -> Vec<String> {
    let mut nodes: Vec<String> = items(k, "pods", "app=agent")
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
        .collect();
    nodes.sort();
    nodes
}

fn daemonset(k: &Kubectl) {
    k.apply(DAEMONSET);
    // Every node but the tainted one (the DaemonSet does not tolerate dedicated=gpu).
    let expected = ["big", "huge", "small"];
    wait_for(Duration::from_secs(30), "a daemon pod per node", || {
        daemon_nodes(k) == expected
    });
    add_node(k, "extra", "2", json!({}), json!([]));
    wait_for(
        Duration::from_secs(30),
        "a daemon pod on the new node",
        || daemon_nodes(k) == ["big", "extra", "huge", "small"],
    );
    k.ok(&["delete", "node", "extra"]);
    wait_for(
        Duration::from_secs(30),
        "the removed node's pod gone",
        || daemon_nodes(k) == expected,
    );
    wait_for(Duration::from_secs(30), "daemonset status", || {
        let status = &get(k, &["get", "ds", "agent"])["status"];
        status["desiredNumberScheduled"] == 3 && status["currentNumberScheduled"] == 3
    });
    let history = k.ok(&["rollout", "history", "ds/agent"]);
    assert!(history.contains("1 "), "{history}");
}

const CRONJOB: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/1 * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - {name: tick, image: "busybox:1.36"}
"#;

fn cron_jobs(k: &Kubectl) -> Vec<Value> {
    get(k, &["get", "jobs"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|j| name(j).starts_with("tick-"))
        .collect()
}

/// Marks every pod of the CronJob's jobs Succeeded.
fn finish_cron_pods(k: &Kubectl) {
    for job in cron_jobs(k) {
        for pod in items(k, "pods", &format!("job-name={}", name(&job))) {
            if pod["status"]["phase"] != "Succeeded" {
                set_phase(k, name(&pod), "Succeeded", false);
            }
        }
    }
}

fn cronjob(k: &Kubectl, created: Instant) {
    // Two schedule ticks: at most ~2 minutes after the CronJob was created.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = created + Duration::from_secs(190);
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "two jobs from the cronjob; saw {seen:?}"
        );
        for job in cron_jobs(k) {
            let owner = &job["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "CronJob");
            assert_eq!(owner["name"], "tick");
            seen.insert(name(&job).to_string());
        }
        finish_cron_pods(k);
        std::thread::sleep(Duration::from_secs(1));
    }
    wait_for(
        Duration::from_secs(30),
        "history limited to one job",
        || {
            finish_cron_pods(k);
            cron_jobs(k).len() == 1
        },
    );
    let status = get(k, &["get", "cronjob", "tick"])["status"].clone();
    assert!(status["lastScheduleTime"].is_string(), "{status}");
}

#[test]
fn workloads_are_scheduled_and_run_on_fake_nodes() {
    let _one_cluster = SUBNET.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(57, 1, &[]);
    let k = kubectl(&cluster, None);
    wait_for(Duration::from_secs(30), "default namespace", || {
        k.run(&["get", "namespace", "default"]).status.success()
    });
    k.apply(CRONJOB);
    let cron_created = Instant::now();
    scheduling(&k);
    volumes(&k);
    job(&k);
    statefulset(&k);
    daemonset(&k);
    cronjob(&k, cron_created);
}

/// Both tests use the same loopback subnet: one cluster at a time.
static SUBNET: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Counts (pods, bound pods) of the benchmark ReplicaSet.
fn bench_progress(k: &Kubectl) -> (usize, usize) {
    let out = k.run(&[
        "get",
        "pods",
        "-l",
        "app=bench",
        "--chunk-size=0",
        "-o",
        r#"jsonpath={range .items[*]}{.spec.nodeName}{"\n"}{end}"#,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    (
        lines.len(),
        lines.iter().filter(|l| !l.trim().is_empty()).count(),
    )
}

/// Schedules 5000 pods (one ReplicaSet) onto 100 fake nodes and prints pods/s: overall (from
/// the ReplicaSet's creation, so it includes the pod creates) and the best binding rate seen
/// over a sampling interval.
#[test]
#[ignore = "benchmark (minutes): cargo test --test scheduling -- --ignored --nocapture"]
fn bench_schedule_5000_pods_on_100_nodes() {
    const NODES: usize = 100;
    const PODS: usize = 5000;
    let _one_cluster = SUBNET.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(57, 1, &[]);
    let k = kubectl(&cluster, None);
    wait_for(Duration::from_secs(30), "default namespace", || {
        k.run(&["get", "namespace", "default"]).status.success()
    });
    let nodes: Vec<Value> = (0..NODES)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("bench-{i:03}")},
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                    "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"}}})
        })
        .collect();
    // One request per node, but one kubectl: a List (which the openapi validation does not know).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nodes.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": nodes});
    std::fs::write(&file, list.to_string()).expect("write nodes");
    let path = file.to_str().expect("path");
    k.ok(&["create", "--validate=false", "-f", path]);
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "bench"},
        "spec": {"replicas": PODS, "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
    let start = Instant::now();
    k.apply(&rs.to_string());
    let mut samples = vec![(Duration::ZERO, 0usize, 0usize)];
    loop {
        // Listing 5000 pods loads the server too: not too often.
        std::thread::sleep(Duration::from_secs(5));
        let (pods, bound) = bench_progress(&k);
        samples.push((start.elapsed(), pods, bound));
        if bound >= PODS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "stalled: {samples:?}"
        );
    }
    let total = start.elapsed().as_secs_f64();
    let best = samples
        .windows(2)
        .map(|w| w[1].2.saturating_sub(w[0].2) as f64 / (w[1].0 - w[0].0).as_secs_f64())
        .fold(0.0, f64::max);
    println!(
        "scheduled {PODS} pods onto {NODES} nodes: {:.0} pods/s overall ({total:.1} s including creates), best interval {best:.0} pods/s",
        PODS as f64 / total
    );
    println!("samples (elapsed, pods, bound): {samples:?}");
}
