//! The node agent with containerd, on hosts made of network namespaces (tests/common/hosts.rs):
//! the 3 control-plane members in one namespace, each agent with its own private containerd in
//! its own. Real images (built locally by images/build.sh), real pod IPs from each node's
//! podCIDR: the kubelet flows of the seeds. Services and DNS from pods: tests/services.rs.
//!
//! Needs root, containerd, runc, containernetworking-plugins, busybox-static, nftables and gcc
//! (.ci/run installs them); without them it says why and passes vacuously.

mod common;

use std::time::Duration;

use common::attach::{Streaming, run_once_with_input};
use common::hosts::{AgentSpec, ContainerdCluster, missing_prerequisite};
use common::kubectl::Kubectl;
use common::wait_for;

#[test]
fn containerd_nodes_run_real_containers() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("skipping the containerd test: {reason}");
        return;
    }
    // SAFETY: set before any thread of this test process starts (one test in this file).
    unsafe {
        std::env::set_var("SKIFF_NODE_MONITOR_GRACE_SECONDS", "20");
    }
    let mut fixture = ContainerdCluster::start(
        62,
        &[],
        &[
            AgentSpec {
                name: "node-a",
                host: "n1",
                address: "10.99.0.11",
                args: &[],
            },
            AgentSpec {
                name: "node-b",
                host: "n2",
                address: "10.99.0.12",
                args: &[],
            },
        ],
    );
    fixture.run_flows_mut(flows);
}

/// A child process (kubectl port-forward) that goes with the test, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn field(k: &Kubectl, kind: &str, name: &str, path: &str) -> String {
    let out = k.run(&["get", kind, name, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl autoscale` on CPU: a busy pod (limited to 0.1 core, requesting 20m) is far above
/// 50% utilization, so the autoscaler grows the Deployment to its maximum.
fn horizontal_autoscaling(k: &Kubectl) {
    k.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burner}
spec:
  replicas: 1
  selector: {matchLabels: {app: burner}}
  template:
    metadata: {labels: {app: burner}}
    spec:
      containers:
      - name: main
        image: busybox
        command: ["sh", "-c", "while :; do :; done"]
        resources: {requests: {cpu: 20m}, limits: {cpu: 100m}}
"#,
    );
    k.ok(&[
        "autoscale",
        "deployment",
        "burner",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    wait_for(
        Duration::from_secs(120),
        "the autoscaler grows burner to 3",
        || {
            field(k, "deployment", "burner", "{.spec.replicas}") == "3"
                && field(k, "hpa", "burner", "{.status.desiredReplicas}") == "3"
        },
    );
    let table = k.ok(&["get", "hpa", "burner", "--no-headers"]);
    assert!(
        table.contains("cpu: ") && table.contains("%/50%"),
        "{table}"
    );
    let described = k.ok(&["describe", "hpa", "burner"]);
    assert!(
        described.contains("SuccessfulRescale") && described.contains("New size: 3"),
        "{described}"
    );
    assert!(described.contains("TooManyReplicas"), "{described}");
    k.ok(&["delete", "hpa", "burner"]);
    k.ok(&["delete", "deployment", "burner"]);
}

/// `kubectl attach` through containerd's streaming server: live output of a running
/// container, stdin to a shell, and `kubectl run -i --rm` end to end (stdinOnce).
fn attach(k: &Kubectl) {
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  containers:
  - {name: sh, image: busybox, command: ["sh"], stdin: true}
"#,
    );
    wait_for(Duration::from_secs(90), "shell Running", || {
        field(k, "pod", "shell", "{.status.phase}") == "Running"
    });
    let mut shell = Streaming::start(k, &["attach", "-i", "shell"]);
    // kubectl reads its stdin only once connected: nothing written before is lost.
    shell.send("echo answer-$((40+2))\n");
    shell.line(Duration::from_secs(20), "the shell's answer", |l| {
        l == "answer-42"
    });
    shell.send("echo second-$((1+1))\n");
    shell.line(Duration::from_secs(20), "the second answer", |l| {
        l == "second-2"
    });
    drop(shell);
    wait_for(Duration::from_secs(20), "the shell's log", || {
        String::from_utf8_lossy(&k.run(&["logs", "shell"]).stdout).contains("second-2")
    });
    run_once_with_input(k);
    k.ok(&["delete", "pod", "shell", "--wait=false"]);
}

fn flows(fixture: &mut ContainerdCluster) {
    let ContainerdCluster {
        agents,
        kubectl,
        hosts,
        ..
    } = fixture;
    let k = &*kubectl;
    assert!(
        k.ok(&["get", "nodes", "-o", "wide"])
            .contains("containerd://")
    );

    // A pod runs from a locally built image and `kubectl logs` shows its output.
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hello}
spec:
  initContainers:
  - {name: setup, image: busybox, command: ["sh", "-c", "echo init ran > /work/marker"], volumeMounts: [{name: work, mountPath: /work}]}
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "cat /work/marker; echo hello from $(hostname); while true; do sleep 1; done"]
    env:
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: settings, mountPath: /etc/settings}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: settings, configMap: {name: settings}}
"#,
    );
    k.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ]);
    wait_for(Duration::from_secs(90), "hello Running", || {
        field(k, "pod", "hello", "{.status.phase}") == "Running"
    });
    wait_for(Duration::from_secs(20), "hello's log", || {
        let log = String::from_utf8_lossy(&k.run(&["logs", "hello"]).stdout).into_owned();
        log.contains("init ran") && log.contains("hello from hello")
    });
    let pod_ip = field(k, "pod", "hello", "{.status.podIP}");
    assert!(
        pod_ip.starts_with("10.42."),
        "pod IP from the node's podCIDR: {pod_ip}"
    );
    // metrics.k8s.io from the nodes' usage: kubectl top node and pod.
    let top_nodes = k.ok(&["top", "node", "--no-headers"]);
    assert_eq!(top_nodes.lines().count(), 2, "{top_nodes}");
    assert!(
        top_nodes
            .lines()
            .all(|l| l.contains('m') && l.contains("Mi")),
        "{top_nodes}"
    );
    wait_for(Duration::from_secs(30), "kubectl top pod hello", || {
        let out = k.run(&["top", "pod", "hello", "--no-headers"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.starts_with("hello ") && text.contains("Mi")
    });
    let containers = k.ok(&["top", "pod", "hello", "--containers", "--no-headers"]);
    assert!(containers.contains("main"), "{containers}");
    horizontal_autoscaling(k);
    let env = k.ok(&["exec", "hello", "--", "env"]);
    assert!(
        env.contains(&format!("POD_IP={pod_ip}")) && env.contains("MODE=fast"),
        "{env}"
    );
    assert_eq!(
        k.ok(&["exec", "hello", "--", "cat", "/etc/settings/mode"]),
        "fast"
    );
    attach(k);

    // A Deployment's pods spread over both nodes and reach READY 1/1 (HTTP readiness probes
    // against the pods' own IPs).
    k.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hellok8s}
spec:
  replicas: 2
  selector: {matchLabels: {app: hellok8s}}
  template:
    metadata: {labels: {app: hellok8s}}
    spec:
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
      - name: hellok8s
        image: skiff/echo
        readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}
"#,
    );
    wait_for(Duration::from_secs(90), "hellok8s 2/2 available", || {
        field(k, "deployment", "hellok8s", "{.status.availableReplicas}") == "2"
    });
    let placed = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=hellok8s",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    let mut nodes: Vec<&str> = placed.split_whitespace().collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes, vec!["node-a", "node-b"], "spread: {placed}");

    // kubectl port-forward (seed 004): a local port on the client's host reaches a pod's port
    // through the API server and the pod's node; several connections, one session.
    let target = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=hellok8s",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let forward = KillOnDrop(
        k.command(&["port-forward", &format!("pod/{target}"), "4000:80"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl port-forward"),
    );
    wait_for(Duration::from_secs(20), "port-forward answers", || {
        hosts
            .http_get("cp", "http://127.0.0.1:4000/")
            .contains(&format!("From host: {target}"))
    });
    for _ in 0..5 {
        let answer = hosts.http_get("cp", "http://127.0.0.1:4000/");
        assert!(
            answer.contains(&target),
            "through the port-forward: {answer:?}"
        );
    }
    drop(forward);

    // Pods on node A reach pods on node B by IP.
    let hello_node = field(k, "pod", "hello", "{.spec.nodeName}");
    let other = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=hellok8s",
        "-o",
        &format!("jsonpath={{.items[?(@.spec.nodeName!=\"{hello_node}\")].status.podIP}}"),
    ]);
    let other_ip = other
        .split_whitespace()
        .next()
        .expect("a hellok8s pod on the other node")
        .to_string();
    wait_for(Duration::from_secs(30), "cross-node pod traffic", || {
        let out = k.run(&[
            "exec",
            "hello",
            "--",
            "sh",
            "-c",
            &format!("timeout 3 wget -qO- http://{other_ip}/"),
        ]);
        String::from_utf8_lossy(&out.stdout).contains("Hello, Kubernetes! From host: hellok8s-")
    });

    // Dynamic provisioning (the default local-path class, WaitForFirstConsumer): a claim
    // without a class gets a hostPath PV on its first pod's node; data outlives the pod.
    k.apply(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: notes}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: busybox, command: ["sh", "-c", "echo kept > /data/note"], volumeMounts: [{name: data, mountPath: /data}]}
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: notes}}
"#,
    );
    wait_for(Duration::from_secs(60), "the writer pod succeeds", || {
        field(k, "pod", "writer", "{.status.phase}") == "Succeeded"
    });
    assert_eq!(field(k, "pvc", "notes", "{.status.phase}"), "Bound");
    assert_eq!(
        field(k, "pvc", "notes", "{.spec.storageClassName}"),
        "local-path"
    );
    let volume = field(k, "pvc", "notes", "{.spec.volumeName}");
    let writer_node = field(k, "pod", "writer", "{.spec.nodeName}");
    assert_eq!(
        field(
            k,
            "pv",
            &volume,
            "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}"
        ),
        writer_node,
        "the volume lives on the writer's node"
    );
    k.ok(&["delete", "pod", "writer"]);
    // The scheduler sends the next pod of the claim where the volume is.
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  containers:
  - {name: main, image: busybox, command: ["sh", "-c", "cat /data/note; sleep 3600"], volumeMounts: [{name: data, mountPath: /data}]}
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: notes}}
"#,
    );
    wait_for(Duration::from_secs(60), "the reader sees the note", || {
        String::from_utf8_lossy(&k.run(&["logs", "reader"]).stdout).contains("kept")
    });
    assert_eq!(field(k, "pod", "reader", "{.spec.nodeName}"), writer_node);
    // Deleting the claim deletes its volume (reclaim policy Delete).
    k.ok(&["delete", "pod", "reader", "--grace-period=1"]);
    k.ok(&["delete", "pvc", "notes"]);
    wait_for(
        Duration::from_secs(30),
        "the provisioned volume is deleted",
        || !k.run(&["get", "pv", &volume]).status.success(),
    );

    // A crashing container backs off.
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - {name: main, image: busybox, command: ["sh", "-c", "echo dying; exit 1"]}
"#,
    );
    wait_for(Duration::from_secs(60), "crash in CrashLoopBackOff", || {
        field(
            k,
            "pod",
            "crash",
            "{.status.containerStatuses[0].state.waiting.reason}",
        ) == "CrashLoopBackOff"
    });

    // Killing an agent: its node goes NotReady and its Deployment pods come back on the other.
    let victim_index = agents
        .iter()
        .position(|a| a.name == hello_node)
        .unwrap_or(0);
    let survivor = if victim_index == 0 {
        "node-b"
    } else {
        "node-a"
    };
    agents[victim_index].kill();
    wait_for(Duration::from_secs(90), "the killed node NotReady", || {
        let out = k.run(&["get", "node", &hello_node, "--no-headers"]);
        String::from_utf8_lossy(&out.stdout).contains("NotReady")
    });
    wait_for(
        Duration::from_secs(120),
        "hellok8s pods all Running on the survivor",
        || {
            let out = k.ok(&[
            "get", "pods", "-l", "app=hellok8s", "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}/{.status.phase}/{.metadata.deletionTimestamp} {end}",
        ]);
            let live: Vec<&str> = out
                .split_whitespace()
                .filter(|p| p.ends_with('/'))
                .collect();
            live.len() == 2 && live.iter().all(|p| *p == format!("{survivor}/Running/"))
        },
    );
}
