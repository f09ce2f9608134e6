//! The node agent with the `process` runtime (no root or containerd needed for the core):
//! 3 control-plane members + 2 agents as real processes on loopback, driven by the real kubectl.
//! Covers the issue's core flow: logs, Deployment spread and READY 1/1, CrashLoopBackOff,
//! liveness restarts with Unhealthy events, readiness keeping a pod out of Endpoints, the seed's
//! Downward API values, ConfigMap/Secret env (and files as root), init containers first,
//! `kubectl exec`, graceful deletion, and a killed agent's pods coming back elsewhere.

mod common;

use std::time::Duration;

use common::kubectl::kubectl;
use common::{Cluster, agents, wait_for};

fn pod_field(k: &common::kubectl::Kubectl, pod: &str, path: &str) -> String {
    let out = k.run(&["get", "pod", pod, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn process_runtime_runs_the_seed_flows() {
    // SAFETY: set before any thread of this test process starts (one test in this file).
    unsafe {
        std::env::set_var("SKIFF_NODE_MONITOR_GRACE_SECONDS", "20");
    }
    let cluster = Cluster::start(60, 3, &["--cluster-dns-listen", "off"]);
    let mut agents = agents::start(&cluster, 2, &[]);
    let k = kubectl(&cluster, None);
    flows(&cluster, &mut agents, &k);
}

fn flows(cluster: &Cluster, agents: &mut [agents::Agent], k: &common::kubectl::Kubectl) {
    wait_for(Duration::from_secs(60), "both nodes Ready", || {
        let out = k.run(&["get", "nodes", "--no-headers"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().filter(|l| l.contains(" Ready ")).count() == 2
    });
    let nodes = k.ok(&["get", "nodes", "-o", "wide"]);
    assert!(nodes.contains("process://"), "runtime shown: {nodes}");
    let cidrs = k.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
    assert_eq!(
        cidrs.split_whitespace().count(),
        2,
        "each node has a pod CIDR: {cidrs}"
    );
    wait_for(Duration::from_secs(30), "agent1's Lease", || {
        k.ok(&["get", "lease", "-n", "kube-node-lease"])
            .contains("agent1")
    });

    // A pod runs and `kubectl logs` shows its output.
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hello}
spec:
  initContainers:
  - name: setup
    image: busybox
    command: ["sh", "-c", "echo init-done"]
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "echo hello from $(hostname); while true; do sleep 1; done"]
"#,
    );
    wait_for(Duration::from_secs(60), "hello Running", || {
        pod_field(k, "hello", "{.status.phase}") == "Running"
    });
    wait_for(Duration::from_secs(20), "hello's log", || {
        String::from_utf8_lossy(&k.run(&["logs", "hello"]).stdout).contains("hello from")
    });
    assert!(
        k.ok(&["logs", "hello", "-c", "setup"])
            .contains("init-done")
    );
    let init_finished = pod_field(
        k,
        "hello",
        "{.status.initContainerStatuses[0].state.terminated.finishedAt}",
    );
    let main_started = pod_field(
        k,
        "hello",
        "{.status.containerStatuses[0].state.running.startedAt}",
    );
    assert!(
        !init_finished.is_empty() && init_finished <= main_started,
        "init ran first: {init_finished} vs {main_started}"
    );
    let env = k.ok(&["exec", "hello", "--", "env"]);
    assert!(
        env.contains("KUBERNETES_SERVICE_HOST=10.43.0.1"),
        "service links: {env}"
    );
    let status = k.run(&["exec", "hello", "--", "sh", "-c", "exit 3"]);
    assert_eq!(status.status.code(), Some(3), "exec exit code");

    // A Deployment's pods spread over both nodes and reach READY 1/1.
    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
        "--",
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ]);
    wait_for(Duration::from_secs(60), "web 2/2 available", || {
        k.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ]) == "2"
    });
    let web_nodes = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    let mut distinct: Vec<&str> = web_nodes.split_whitespace().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "spread over both nodes: {web_nodes}");
    let ready = k.ok(&["get", "pods", "-l", "app=web", "--no-headers"]);
    assert_eq!(
        ready
            .lines()
            .filter(|l| l.contains("1/1") && l.contains("Running"))
            .count(),
        2,
        "{ready}"
    );

    // Crash loop, liveness restarts, readiness.
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - {name: main, image: busybox, command: ["sh", "-c", "echo dying; exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: live}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "sleep 3600"]
    livenessProbe:
      exec: {command: ["sh", "-c", "exit 1"]}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {name: notready, labels: {app: notready}}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "sleep 3600"]
    readinessProbe:
      tcpSocket: {port: 1}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: notready}
spec:
  selector: {app: notready}
  ports: [{port: 80}]
"#,
    );
    wait_for(Duration::from_secs(60), "crash in CrashLoopBackOff", || {
        pod_field(
            k,
            "crash",
            "{.status.containerStatuses[0].state.waiting.reason}",
        ) == "CrashLoopBackOff"
    });
    let restarts = |pod: &str| {
        pod_field(k, pod, "{.status.containerStatuses[0].restartCount}")
            .parse::<u32>()
            .unwrap_or(0)
    };
    let first = restarts("crash");
    wait_for(Duration::from_secs(60), "crash restarts grow", || {
        restarts("crash") > first
    });
    assert!(k.ok(&["logs", "crash", "--previous"]).contains("dying"));
    // The first restart after a liveness kill is immediate, as the kubelet does: never
    // CrashLoopBackOff while RESTARTS is still 0.
    wait_for(
        Duration::from_secs(60),
        "live restarted by its liveness probe",
        || {
            let seen = pod_field(
                k,
                "live",
                "{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.waiting.reason}",
            );
            assert_ne!(
                seen.trim(),
                "0 CrashLoopBackOff",
                "back-off before any restart"
            );
            restarts("live") >= 1
        },
    );
    let described = k.ok(&["describe", "pod", "live"]);
    assert!(
        described.contains("Unhealthy") && described.contains("Liveness probe failed"),
        "{described}"
    );
    wait_for(Duration::from_secs(30), "notready Running", || {
        pod_field(k, "notready", "{.status.phase}") == "Running"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        pod_field(k, "notready", "{.status.containerStatuses[0].ready}"),
        "false"
    );
    let listed = k.ok(&["get", "pod", "notready", "--no-headers"]);
    assert!(listed.contains("0/1"), "{listed}");
    let endpoints = k.ok(&[
        "get",
        "endpoints",
        "notready",
        "-o",
        "jsonpath={.subsets[*].addresses}",
    ]);
    assert!(
        endpoints.trim().is_empty(),
        "not-ready pod kept out of Endpoints: {endpoints}"
    );

    // The Downward API pod of seed 003, ConfigMap and Secret as env.
    k.ok(&[
        "create",
        "configmap",
        "app-config",
        "--from-literal=mode=fast",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "app-secret",
        "--from-literal=password=s3cr3t",
    ]);
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: downward, labels: {app: downward}}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "sleep 3600"]
    resources:
      requests: {cpu: 15m, memory: 100Ki}
      limits: {cpu: 100m, memory: 8Mi}
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: SERVICE_ACCOUNT, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    - {name: CONTAINER_CPU_REQUEST_MILLICORES, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}
    - {name: CONTAINER_MEMORY_LIMIT_KIBIBYTES, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Ki}}}
    - {name: MODE, valueFrom: {configMapKeyRef: {name: app-config, key: mode}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: app-secret, key: password}}}
    volumeMounts:
    - {name: config, mountPath: /etc/skiff-test-config}
  volumes:
  - name: config
    configMap: {name: app-config}
"#,
    );
    wait_for(Duration::from_secs(60), "downward Running", || {
        pod_field(k, "downward", "{.status.phase}") == "Running"
    });
    let env = k.ok(&["exec", "downward", "--", "env"]);
    let node = pod_field(k, "downward", "{.spec.nodeName}");
    for expected in [
        "POD_NAME=downward".to_string(),
        "POD_NAMESPACE=default".to_string(),
        format!("NODE_NAME={node}"),
        "SERVICE_ACCOUNT=default".to_string(),
        "CONTAINER_CPU_REQUEST_MILLICORES=15".to_string(),
        "CONTAINER_MEMORY_LIMIT_KIBIBYTES=8192".to_string(),
        "MODE=fast".to_string(),
        "PASSWORD=s3cr3t".to_string(),
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} in {env}");
    }
    let pod_ip = pod_field(k, "downward", "{.status.podIP}");
    assert!(
        env.contains(&format!("POD_IP={pod_ip}")) && !pod_ip.is_empty(),
        "{env}"
    );
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } == 0 {
        let file = k.ok(&[
            "exec",
            "downward",
            "--",
            "cat",
            "/etc/skiff-test-config/mode",
        ]);
        assert_eq!(file, "fast");
        let token = k.ok(&[
            "exec",
            "downward",
            "--",
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
        ]);
        assert_eq!(token, "default");
    }

    // Graceful deletion: the pod goes once its containers stopped.
    k.ok(&["delete", "pod", "hello", "--timeout=60s"]);
    assert!(k.fails(&["get", "pod", "hello"]).contains("NotFound"));

    // A killed agent: its node goes NotReady and the Deployment's pods come back on the other.
    k.ok(&[
        "patch", "deployment", "web", "--type=json", "-p",
        r#"[{"op":"add","path":"/spec/template/spec/tolerations","value":[{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":2},{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":2}]}]"#,
    ]);
    wait_for(
        Duration::from_secs(90),
        "web rolled out with tolerations",
        || {
            k.ok(&[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.status.updatedReplicas}/{.status.availableReplicas}",
            ]) == "2/2"
        },
    );
    let running = agents[0].container_processes();
    agents[0].kill();
    // Its containers die with it, and what they started too (`sh -c '...; sleep'`).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut left = running.clone();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = agents[0].container_processes();
    }
    assert!(left.is_empty(), "of {running:?}, {left:?} outlived agent1");
    wait_for(Duration::from_secs(60), "agent1 NotReady", || {
        let out = k.ok(&["get", "node", "agent1", "--no-headers"]);
        out.contains("NotReady")
    });
    // Pods evicted from the dead node stay Terminating there (nobody can stop them) while
    // their replacements run on agent2, as on Kubernetes.
    let web = || {
        let out = k.ok(&[
            "get", "pods", "-l", "app=web", "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}/{.status.phase}/{.metadata.deletionTimestamp} {end}",
        ]);
        out.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_for(
        Duration::from_secs(90),
        "web's live pods all on agent2 and Running",
        || {
            let live: Vec<String> = web().into_iter().filter(|p| p.ends_with('/')).collect();
            live.len() == 2 && live.iter().all(|p| p == "agent2/Running/")
        },
    );
    agents[0].spawn(cluster);
    wait_for(Duration::from_secs(60), "agent1 Ready again", || {
        let out = k.ok(&["get", "node", "agent1", "--no-headers"]);
        out.contains(" Ready ")
    });
    // Back, agent1 finishes the deletions it missed.
    wait_for(
        Duration::from_secs(60),
        "no Terminating web pods left",
        || web().iter().all(|p| p.ends_with('/')),
    );
}
