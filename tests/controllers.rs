//! The controllers against a real 3-member cluster, driven by the real kubectl: a Deployment
//! creates its pods through a ReplicaSet, scales, rolls out a new image within maxSurge and
//! maxUnavailable (pods made ready through the status subresource, as there is no kubelet yet),
//! rolls back with `rollout undo`, survives the leader being killed without duplicate pods, and
//! is deleted in foreground with everything it owns. A bare ReplicaSet's pods are orphaned and
//! adopted again; a ReplicationController keeps and scales its pods.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::fake_nodes::items;
use common::kubectl::{Kubectl, kubectl};
use common::{Cluster, wait_for};
use serde_json::Value;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    kubernetes.io/change-cause: "first"
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - {name: nginx, image: "nginx:1.27"}
"#;

const REPLICASET: &str = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: solo
spec:
  replicas: 2
  selector:
    matchLabels: {app: solo}
  template:
    metadata:
      labels: {app: solo}
    spec:
      containers:
      - {name: c, image: "busybox:1.36"}
"#;

const REPLICATION_CONTROLLER: &str = r#"apiVersion: v1
kind: ReplicationController
metadata:
  name: legacy
spec:
  replicas: 3
  template:
    metadata:
      labels: {app: legacy}
    spec:
      containers:
      - {name: c, image: "busybox:1.36"}
"#;

const RECREATE: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: batch
spec:
  replicas: 2
  selector:
    matchLabels: {app: batch}
  strategy: {type: Recreate}
  template:
    metadata:
      labels: {app: batch}
    spec:
      containers:
      - {name: worker, image: "busybox:1.36"}
"#;

fn names(objects: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn wait_pods(k: &Kubectl, selector: &str, count: usize) -> Vec<Value> {
    let mut pods = Vec::new();
    wait_for(
        Duration::from_secs(60),
        &format!("{count} pods {selector}"),
        || {
            pods = items(k, "pods", selector);
            pods.len() == count
        },
    );
    pods
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// What a kubelet would report: Running and Ready, through the status subresource.
fn mark_ready(k: &Kubectl, pods: &[Value]) {
    for pod in pods.iter().filter(|p| !is_ready(p)) {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        // A pod deleted meanwhile is fine.
        let _ = k.run(&[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#,
        ]);
    }
}

fn rs_replicas(rs: &Value) -> i64 {
    rs.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(-1)
}

fn annotation<'a>(object: &'a Value, key: &str) -> &'a str {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Starts `kubectl rollout status`, then plays kubelet (marking pods ready) until it exits,
/// checking that the pod count never exceeds `max_pods` nor ready pods drop below `min_ready`.
fn roll_out(k: &Kubectl, max_pods: usize, min_ready: usize) {
    roll_out_checking(k, "web", |pods| {
        assert!(pods.len() <= max_pods, "{} pods > {max_pods}", pods.len());
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        assert!(ready >= min_ready, "{ready} ready pods < {min_ready}");
    });
}

/// `kubectl rollout status` of deployment `name` while playing kubelet; `check` sees the pods
/// (label app=<name>) at every step.
fn roll_out_checking(k: &Kubectl, name: &str, check: impl Fn(&[Value])) {
    let target = format!("deployment/{name}");
    let selector = format!("app={name}");
    let child = k
        .command(&["rollout", "status", &target, "--timeout=90s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rollout status");
    let mut status = Reaper(Some(child));
    let deadline = Instant::now() + Duration::from_secs(100);
    loop {
        let exited = status.0.as_mut().map(|c| c.try_wait().expect("wait"));
        if let Some(Some(exit)) = exited {
            let out = status
                .0
                .take()
                .expect("child")
                .wait_with_output()
                .expect("output");
            assert!(
                exit.success(),
                "rollout status failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(text.contains("successfully rolled out"), "{text}");
            return;
        }
        assert!(Instant::now() < deadline, "rollout did not finish");
        let pods = items(k, "pods", &selector);
        check(&pods);
        mark_ready(k, &pods);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills a child process left running when a check fails.
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// Members whose log says their controllers run: started after they last stopped (a member
/// that loses leadership logs the stop).
fn running_controllers(cluster: &Cluster) -> Vec<usize> {
    (0..cluster.nodes.len())
        .filter(|i| {
            let log = std::fs::read_to_string(cluster.nodes[*i].log_path()).unwrap_or_default();
            log.rfind("starting controllers") > log.rfind("controllers stopped")
        })
        .collect()
}

#[test]
fn deployments_roll_out_scale_undo_and_survive_the_leader() {
    let mut cluster = Cluster::start(54, 3, &[]);
    let k = kubectl(&cluster, None);
    wait_for(Duration::from_secs(30), "default namespace", || {
        k.run(&["get", "namespace", "default"]).status.success()
    });

    // A Deployment of 3: one ReplicaSet `web-<hash>`, 3 pods it controls.
    k.apply(DEPLOYMENT);
    let pods = wait_pods(&k, "app=web", 3);
    let sets = items(&k, "rs", "app=web");
    assert_eq!(sets.len(), 1, "{sets:?}");
    let first = sets[0].clone();
    let first_name = first["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let hash = first
        .pointer("/metadata/labels/pod-template-hash")
        .and_then(Value::as_str)
        .expect("pod-template-hash");
    assert_eq!(first_name, format!("web-{hash}"));
    assert_eq!(annotation(&first, "deployment.kubernetes.io/revision"), "1");
    assert_eq!(annotation(&first, "kubernetes.io/change-cause"), "first");
    assert_eq!(
        first["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );
    for pod in &pods {
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["name"], first_name.as_str());
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert_eq!(pod["metadata"]["labels"]["pod-template-hash"], hash);
    }

    // Scale up and down.
    k.ok(&["scale", "deployment/web", "--replicas=5"]);
    wait_pods(&k, "app=web", 5);
    k.ok(&["scale", "deployment/web", "--replicas=2"]);
    let pods = wait_pods(&k, "app=web", 2);
    mark_ready(&k, &pods);
    roll_out(&k, 2, 0);
    let table = k.ok(&["get", "deployment", "web"]);
    assert!(table.contains("2/2"), "{table}");
    k.ok(&["scale", "deployment/web", "--replicas=3"]);
    roll_out(&k, 3, 0);

    // A new image: a second ReplicaSet, never more than 4 pods (surge 1) nor fewer than 2
    // ready (maxUnavailable 1).
    k.ok(&["set", "image", "deployment/web", "nginx=nginx:1.28"]);
    roll_out(&k, 4, 2);
    let sets = items(&k, "rs", "app=web");
    assert_eq!(sets.len(), 2, "{sets:?}");
    let second = sets
        .iter()
        .find(|rs| rs["metadata"]["name"] != first_name.as_str())
        .expect("second replica set")
        .clone();
    let second_name = second["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(rs_replicas(&second), 3);
    assert_eq!(
        annotation(&second, "deployment.kubernetes.io/revision"),
        "2"
    );
    let old = sets
        .iter()
        .find(|rs| rs["metadata"]["name"] == first_name.as_str());
    assert_eq!(old.map(rs_replicas), Some(0));
    let history = k.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo: the first ReplicaSet comes back as revision 3; no third one appears.
    let out = k.ok(&["rollout", "undo", "deployment/web"]);
    assert!(out.contains("rolled back"), "{out}");
    roll_out(&k, 4, 2);
    let sets = items(&k, "rs", "app=web");
    assert_eq!(sets.len(), 2, "{sets:?}");
    let back = sets
        .iter()
        .find(|rs| rs["metadata"]["name"] == first_name.as_str())
        .expect("first replica set");
    assert_eq!(rs_replicas(back), 3);
    assert_eq!(annotation(back, "deployment.kubernetes.io/revision"), "3");
    assert_eq!(
        annotation(back, "deployment.kubernetes.io/revision-history"),
        "1"
    );
    let pods = items(&k, "pods", "app=web");
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["ownerReferences"][0]["name"] == first_name.as_str()),
        "{:?}",
        names(&pods)
    );
    assert!(
        !pods
            .iter()
            .any(|p| p["metadata"]["ownerReferences"][0]["name"] == second_name.as_str())
    );

    // Paused: a template change waits; resumed, it rolls out.
    k.ok(&["rollout", "pause", "deployment/web"]);
    k.ok(&["set", "image", "deployment/web", "nginx=nginx:1.29"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        items(&k, "rs", "app=web").len(),
        2,
        "no rollout while paused"
    );
    k.ok(&["rollout", "resume", "deployment/web"]);
    roll_out(&k, 4, 2);
    assert_eq!(items(&k, "rs", "app=web").len(), 3);

    // `rollout restart` changes a template annotation: one more ReplicaSet.
    k.ok(&["rollout", "restart", "deployment/web"]);
    roll_out(&k, 4, 2);
    assert_eq!(items(&k, "rs", "app=web").len(), 4);

    // revisionHistoryLimit 1: only the newest old ReplicaSet is kept.
    k.ok(&[
        "patch",
        "deployment/web",
        "--type=merge",
        "-p",
        r#"{"spec":{"revisionHistoryLimit":1}}"#,
    ]);
    wait_for(
        Duration::from_secs(30),
        "old replica sets cleaned up",
        || items(&k, "rs", "app=web").len() == 2,
    );

    // Resized mid-rollout: every active ReplicaSet grows in proportion. With no pod made
    // ready the rollout stalls at old 2 + new 2 (3 wanted, surge 1, unavailable 1); at 6
    // replicas (7 allowed) the 3 more split as 1 old + 2 new (ties go to the newer set).
    k.ok(&["set", "image", "deployment/web", "nginx=nginx:1.30"]);
    let sizes = |k: &Kubectl| {
        let sets = items(k, "rs", "app=web");
        let image = |rs: &Value| rs["spec"]["template"]["spec"]["containers"][0]["image"].clone();
        let new = sets
            .iter()
            .find(|rs| image(rs) == "nginx:1.30")
            .map(rs_replicas);
        let old = sets
            .iter()
            .filter(|rs| image(rs) != "nginx:1.30")
            .map(rs_replicas)
            .sum::<i64>();
        (old, new.unwrap_or(-1))
    };
    wait_for(Duration::from_secs(30), "a stalled rollout", || {
        sizes(&k) == (2, 2)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sizes(&k), (2, 2));
    k.ok(&["scale", "deployment/web", "--replicas=6"]);
    wait_for(Duration::from_secs(30), "proportional scaling", || {
        sizes(&k) == (3, 4)
    });
    roll_out(&k, 7, 0);
    assert_eq!(sizes(&k), (0, 6));

    // A bare ReplicaSet: orphaned pods stay, and are adopted by a new one with that selector.
    k.apply(REPLICASET);
    let solo = names(&wait_pods(&k, "app=solo", 2));
    k.ok(&["delete", "rs", "solo", "--cascade=orphan"]);
    wait_for(Duration::from_secs(30), "solo replica set gone", || {
        items(&k, "rs", "app=solo").is_empty()
    });
    wait_for(Duration::from_secs(30), "orphaned pods", || {
        let pods = items(&k, "pods", "app=solo");
        names(&pods) == solo
            && pods
                .iter()
                .all(|p| p.pointer("/metadata/ownerReferences").is_none())
    });
    k.apply(REPLICASET);
    wait_for(Duration::from_secs(30), "pods adopted", || {
        let pods = items(&k, "pods", "app=solo");
        names(&pods) == solo
            && pods
                .iter()
                .all(|p| p["metadata"]["ownerReferences"][0]["name"] == "solo")
    });
    // Background deletion: the garbage collector removes the pods after their owner.
    k.ok(&["delete", "rs", "solo"]);
    wait_pods(&k, "app=solo", 0);

    // A ReplicationController (plain-map selector, defaulted from the template) keeps its
    // replicas like a ReplicaSet, scales, and takes its pods with it.
    k.apply(REPLICATION_CONTROLLER);
    let pods = wait_pods(&k, "app=legacy", 3);
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicationController"),
        "{pods:?}"
    );
    k.ok(&["scale", "rc", "legacy", "--replicas=1"]);
    wait_pods(&k, "app=legacy", 1);
    wait_for(Duration::from_secs(30), "rc status", || {
        let table = k.ok(&["get", "rc", "legacy", "--no-headers"]);
        table.split_whitespace().take(3).collect::<Vec<_>>() == ["legacy", "1", "1"]
    });
    k.ok(&["delete", "rc", "legacy"]);
    wait_pods(&k, "app=legacy", 0);

    // Recreate: the old pods are all gone before any new one exists.
    k.apply(RECREATE);
    roll_out_checking(&k, "batch", |_| {});
    k.ok(&["set", "image", "deployment/batch", "worker=busybox:1.37"]);
    roll_out_checking(&k, "batch", |pods| {
        let hashes: std::collections::BTreeSet<&str> = pods
            .iter()
            .filter_map(|p| {
                p.pointer("/metadata/labels/pod-template-hash")
                    .and_then(Value::as_str)
            })
            .collect();
        assert!(hashes.len() <= 1, "old and new pods together: {hashes:?}");
    });
    let pods = wait_pods(&k, "app=batch", 2);
    assert!(
        pods.iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.37")
    );
    k.ok(&["delete", "deployment", "batch"]);
    wait_pods(&k, "app=batch", 0);

    // Only the leader runs the controllers.
    let leader = cluster.leader();
    assert_eq!(running_controllers(&cluster), vec![leader]);

    // A leader frozen (SIGSTOP) loses leadership; the new leader's controllers take over, and
    // the old one, resumed, stops its own.
    let pid = cluster.nodes[leader]
        .child
        .as_ref()
        .expect("leader process")
        .id();
    signal(pid, "-STOP");
    // (`skiff status` would wait on the frozen member; the logs say who took over.)
    let mut next = None;
    wait_for(
        Duration::from_secs(30),
        "another member starting controllers",
        || {
            next = running_controllers(&cluster)
                .into_iter()
                .find(|i| *i != leader);
            next.is_some()
        },
    );
    let next = next.expect("new leader");
    let k = kubectl(&cluster, Some(next));
    k.ok(&["scale", "deployment/web", "--replicas=5"]);
    wait_pods(&k, "app=web", 5);
    signal(pid, "-CONT");
    wait_for(
        Duration::from_secs(30),
        "the old leader stopping its controllers",
        || running_controllers(&cluster) == vec![next],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(items(&k, "pods", "app=web").len(), 5, "duplicate pods");

    // The leader dies: the next one runs the controllers, without duplicating pods.
    let leader = next;
    cluster.kill(leader);
    let survivor = (0..3).find(|i| *i != leader).expect("a survivor");
    let k = kubectl(&cluster, Some(survivor));
    wait_for(Duration::from_secs(30), "a new leader", || {
        k.run(&["scale", "deployment/web", "--replicas=4"])
            .status
            .success()
    });
    wait_pods(&k, "app=web", 4);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(items(&k, "pods", "app=web").len(), 4, "duplicate pods");
    assert_eq!(items(&k, "rs", "app=web").len(), 2);

    // Foreground deletion removes the ReplicaSets and pods before the Deployment.
    k.ok(&[
        "delete",
        "deployment",
        "web",
        "--cascade=foreground",
        "--wait=false",
    ]);
    wait_for(
        Duration::from_secs(60),
        "deployment, sets and pods gone",
        || {
            items(&k, "pods", "app=web").is_empty()
                && items(&k, "rs", "app=web").is_empty()
                && !k.run(&["get", "deployment", "web"]).status.success()
        },
    );
}
