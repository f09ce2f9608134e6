//! The node agent with containerd, on hosts made of network namespaces: the 3 control-plane
//! members in one namespace, each agent (with its own private containerd) in its own, all
//! joined by a bridge living in a namespace of its own; nothing touches the host's network.
//! Real images (built locally by images/build.sh), real pod IPs from each node's podCIDR.
//!
//! Needs root, containerd, runc, containernetworking-plugins, busybox-static and gcc (.ci/run
//! installs them); without them it says why and passes vacuously.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::kubectl::{Kubectl, kubectl};
use common::{Cluster, agents::Agent, wait_for};

fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for program in ["containerd", "runc", "ctr", "nsenter", "gcc", "ip"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {program}"))
            .output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Some(format!("{program} is not installed"));
        }
    }
    for file in [
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/bin/busybox",
    ] {
        if !Path::new(file).exists() {
            return Some(format!("{file} is missing"));
        }
    }
    None
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's hosts; on drop: containerd and its shims stopped, mounts released, namespaces
/// deleted.
struct Hosts {
    prefix: String,
    names: Vec<String>,
    dir: PathBuf,
}

impl Hosts {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// A bridge namespace and one namespace per (host, addresses), each wired to the bridge.
    fn create(dir: &Path, hosts: &[(&str, &[&str])]) -> Hosts {
        let prefix = format!("skt{}", std::process::id() % 100_000);
        let mut created = Hosts {
            prefix: prefix.clone(),
            names: Vec::new(),
            dir: dir.to_path_buf(),
        };
        let bridge = created.ns("br");
        ip(&["netns", "add", &bridge]);
        created.names.push(bridge.clone());
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for (host, addresses) in hosts {
            let ns = created.ns(host);
            ip(&["netns", "add", &ns]);
            created.names.push(ns.clone());
            let port = format!("v-{host}");
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"]);
            for address in *addresses {
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{address}/24"),
                    "dev",
                    "eth0",
                ]);
            }
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        created
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        // containerd and its shims carry the node's state dir on their command lines.
        let _ = Command::new("pkill")
            .args(["-9", "-f", &format!("{dir}/agent")])
            .status();
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            let mut targets: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|t| t.starts_with(&dir))
                .collect();
            targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
            for target in targets {
                let _ = Command::new("umount").args(["-l", target]).status();
            }
        }
        for name in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn field(k: &Kubectl, kind: &str, name: &str, path: &str) -> String {
    let out = k.run(&["get", kind, name, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
    let members = ["10.99.0.1", "10.99.0.2", "10.99.0.3"];
    let work = tempfile::tempdir().expect("tempdir");
    let images = work.path().join("images");
    let build = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/images/build.sh"))
        .arg(&images)
        .output()
        .expect("images/build.sh");
    assert!(
        build.status.success(),
        "images/build.sh: {}",
        String::from_utf8_lossy(&build.stderr)
    );

    let hosts = Hosts::create(
        work.path(),
        &[
            ("cp", &members),
            ("n1", &["10.99.0.11"]),
            ("n2", &["10.99.0.12"]),
        ],
    );
    let member_ips: Vec<String> = members.iter().map(|s| s.to_string()).collect();
    let cluster = Cluster::start_at(
        62,
        &member_ips,
        Some(&hosts.ns("cp")),
        &["--cluster-dns-listen", "off"],
    );
    let mut agents: Vec<Agent> = [
        ("node-a", "n1", "10.99.0.11"),
        ("node-b", "n2", "10.99.0.12"),
    ]
    .iter()
    .map(|(name, host, address)| {
        let ns = hosts.ns(host);
        let mut agent = Agent {
            name: name.to_string(),
            address: address.to_string(),
            data: work.path().join(format!("agent-{name}")),
            child: None,
            args: vec![
                "--runtime".into(),
                "containerd".into(),
                "--netns".into(),
                format!("/var/run/netns/{ns}"),
                "--import-images".into(),
                images.to_string_lossy().into_owned(),
            ],
            netns: Some(ns),
        };
        agent.spawn(&cluster);
        agent
    })
    .collect();
    let k = kubectl(&cluster, None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        flows(&cluster, &mut agents, &k)
    }));
    if let Err(panic) = result {
        cluster.dump_logs();
        for agent in &agents {
            agent.dump_log();
            if let Ok(log) = std::fs::read_to_string(agent.data.join("containerd/containerd.log")) {
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "--- containerd of {} ---\n{}",
                    agent.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        drop(agents);
        drop(hosts);
        std::panic::resume_unwind(panic);
    }
    drop(agents);
    drop(hosts);
}

fn flows(cluster: &Cluster, agents: &mut [Agent], k: &Kubectl) {
    wait_for(
        Duration::from_secs(120),
        "both containerd nodes Ready",
        || {
            let out = k.run(&["get", "nodes", "--no-headers"]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(" Ready "))
                .count()
                == 2
        },
    );
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
    let env = k.ok(&["exec", "hello", "--", "env"]);
    assert!(
        env.contains(&format!("POD_IP={pod_ip}")) && env.contains("MODE=fast"),
        "{env}"
    );
    assert_eq!(
        k.ok(&["exec", "hello", "--", "cat", "/etc/settings/mode"]),
        "fast"
    );

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
    let _ = cluster;
}
