//! Services end to end (seed 004, "使用 Service"): kube-proxy on two containerd nodes — node-a
//! with the nftables data plane, node-b with iptables — and cluster DNS reached from pods
//! through kube-dns's ClusterIP. Real containers, real packets, on network-namespace hosts
//! (tests/common/hosts.rs); clients are busybox in pods, and wget/dig on other hosts.
//!
//! Needs what tests/agent_containerd.rs needs, plus dig; without it, says why and passes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::hosts::{AgentSpec, ContainerdCluster, MEMBERS, missing_prerequisite};
use common::wait_for;

const NODE_A: &str = "10.99.0.11";
const NODE_B: &str = "10.99.0.12";

#[test]
fn services_route_and_resolve_from_pods() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("skipping the services test: {reason}");
        return;
    }
    let fixture = ContainerdCluster::start(
        63,
        &["--service-lb-pool", "10.99.0.200-10.99.0.210"],
        &[
            AgentSpec {
                name: "node-a",
                host: "n1",
                address: NODE_A,
                args: &[],
            },
            AgentSpec {
                name: "node-b",
                host: "n2",
                address: NODE_B,
                args: &["--proxy-mode", "iptables"],
            },
        ],
    );
    fixture.run_flows(|f| {
        deploy_backends_and_client(f);
        cluster_ip_balances_over_ready_backends(f);
        node_port_and_load_balancer_from_other_hosts(f);
        readiness_and_scaling_change_backends(f);
        session_affinity_sticks(f);
        dns_from_pods(f);
        cleanup_removes_rules(f);
    });
}

/// The hostnames answering `count` requests to `url` from the client pod; empty unless every
/// request was answered (so no check below passes on a broken client).
fn answering_hosts(f: &ContainerdCluster, url: &str, count: usize) -> Vec<String> {
    let script = format!("for i in $(seq {count}); do timeout 3 wget -qO- {url}; done");
    let hosts: Vec<String> = f
        .exec_sh("client", &script)
        .lines()
        .filter_map(|l| l.split("From host: ").nth(1))
        .map(|h| h.trim().to_string())
        .collect();
    if hosts.len() == count {
        hosts
    } else {
        Vec::new()
    }
}

/// The names of the hellok8s pods that are Ready.
fn ready_pods(f: &ContainerdCluster) -> BTreeSet<String> {
    let out = f.kubectl.ok(&[
        "get", "pods", "-l", "app=hellok8s", "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}/{.metadata.deletionTimestamp} {end}",
    ]);
    out.split_whitespace()
        .filter_map(|p| p.strip_suffix("=True/"))
        .map(str::to_string)
        .collect()
}

fn deploy_backends_and_client(f: &ContainerdCluster) {
    f.kubectl.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hellok8s}
spec:
  replicas: 3
  selector: {matchLabels: {app: hellok8s}}
  template:
    metadata: {labels: {app: hellok8s}}
    spec:
      containers:
      - name: hellok8s
        image: skiff/echo:v1
        readinessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Service
metadata: {name: service-hellok8s-clusterip}
spec:
  selector: {app: hellok8s}
  ports: [{port: 3000, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: service-hellok8s-clusterip-headless}
spec:
  clusterIP: None
  selector: {app: hellok8s}
  ports: [{port: 3000, targetPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - {name: client, image: skiff/busybox:1.35, command: ["sh", "-c", "sleep 100000"]}
"#,
    );
    wait_for(
        Duration::from_secs(120),
        "3 hellok8s pods ready and the client running",
        || ready_pods(f).len() == 3 && f.field("pod", "client", "{.status.phase}") == "Running",
    );
}

fn cluster_ip_balances_over_ready_backends(f: &ContainerdCluster) {
    let resolv = f.exec_sh("client", "cat /etc/resolv.conf");
    assert!(
        resolv.contains("nameserver 10.43.0.10") && resolv.contains("ndots:5"),
        "{resolv}"
    );
    let ready = ready_pods(f);
    // The short name through the search path, over 50 requests: every ready backend answers.
    wait_for(
        Duration::from_secs(60),
        "every backend answers the short name",
        || {
            let seen: BTreeSet<String> =
                answering_hosts(f, "http://service-hellok8s-clusterip:3000", 50)
                    .into_iter()
                    .collect();
            seen == ready
        },
    );
}

fn node_port_and_load_balancer_from_other_hosts(f: &ContainerdCluster) {
    f.kubectl.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: hellok8s-nodeport}
spec:
  type: NodePort
  selector: {app: hellok8s}
  ports: [{port: 3000, targetPort: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: hellok8s-lb}
spec:
  type: LoadBalancer
  selector: {app: hellok8s}
  ports: [{port: 80, targetPort: 80}]
"#,
    );
    // From the control-plane host, on every node's address (nftables and iptables nodes).
    for node in [NODE_A, NODE_B] {
        wait_for(
            Duration::from_secs(30),
            &format!("NodePort on {node}"),
            || {
                f.hosts
                    .http_get("cp", &format!("http://{node}:30080/"))
                    .contains("Hello, Kubernetes!")
            },
        );
    }
    let mut external = String::new();
    wait_for(
        Duration::from_secs(30),
        "a LoadBalancer address from the pool",
        || {
            external = f.field(
                "service",
                "hellok8s-lb",
                "{.status.loadBalancer.ingress[0].ip}",
            );
            !external.is_empty()
        },
    );
    assert!(
        external.starts_with("10.99.0.2"),
        "pool address: {external}"
    );
    let listed = f.kubectl.ok(&["get", "service", "hellok8s-lb"]);
    assert!(listed.contains(&external), "EXTERNAL-IP column: {listed}");
    wait_for(
        Duration::from_secs(30),
        "the LoadBalancer address answers",
        || {
            f.hosts
                .http_get("cp", &format!("http://{external}/"))
                .contains("Hello, Kubernetes!")
        },
    );
}

fn readiness_and_scaling_change_backends(f: &ContainerdCluster) {
    // A backend failing readiness leaves the Service.
    let victim = ready_pods(f).into_iter().next().expect("a ready pod");
    f.kubectl
        .ok(&["exec", &victim, "--", "rm", "/var/www/healthz"]);
    wait_for(
        Duration::from_secs(20),
        "the unready pod leaves the Service",
        || {
            let hosts = answering_hosts(f, "http://service-hellok8s-clusterip:3000", 20);
            !ready_pods(f).contains(&victim) && !hosts.is_empty() && !hosts.contains(&victim)
        },
    );
    // It stays out: 50 more requests, all answered, never by it.
    let hosts = answering_hosts(f, "http://service-hellok8s-clusterip:3000", 50);
    assert!(
        !hosts.is_empty() && !hosts.contains(&victim),
        "{victim} still answers: {hosts:?}"
    );
    // And the headless name drops its address.
    let victim_ip = f.field("pod", &victim, "{.status.podIP}");
    let others: Vec<String> = ready_pods(f)
        .iter()
        .map(|p| f.field("pod", p, "{.status.podIP}"))
        .collect();
    wait_for(
        Duration::from_secs(10),
        "the unready pod leaves the headless A records",
        || {
            let answer = f.exec_sh(
                "client",
                "nslookup service-hellok8s-clusterip-headless.default.svc.cluster.local",
            );
            others.iter().all(|ip| answer.contains(ip)) && !answer.contains(&victim_ip)
        },
    );
    f.kubectl.ok(&[
        "exec",
        &victim,
        "--",
        "sh",
        "-c",
        "echo ok > /var/www/healthz",
    ]);
    wait_for(Duration::from_secs(20), "the pod is back", || {
        ready_pods(f).contains(&victim)
    });

    // Scaling up adds backends within 2 s of their readiness; scaling down removes them.
    f.kubectl
        .ok(&["scale", "deployment", "hellok8s", "--replicas=4"]);
    wait_for(Duration::from_secs(90), "4 ready pods", || {
        ready_pods(f).len() == 4
    });
    let ready = ready_pods(f);
    let started = Instant::now();
    wait_for(Duration::from_secs(10), "the new backend answers", || {
        answering_hosts(f, "http://service-hellok8s-clusterip:3000", 40)
            .into_iter()
            .collect::<BTreeSet<_>>()
            == ready
    });
    eprintln!(
        "scale-up reached every backend {:?} after all were Ready",
        started.elapsed()
    );
    f.kubectl
        .ok(&["scale", "deployment", "hellok8s", "--replicas=2"]);
    wait_for(Duration::from_secs(60), "2 ready pods", || {
        ready_pods(f).len() == 2
    });
    let remaining = ready_pods(f);
    wait_for(
        Duration::from_secs(5),
        "only the remaining backends answer",
        || {
            let hosts = answering_hosts(f, "http://service-hellok8s-clusterip:3000", 30);
            !hosts.is_empty() && hosts.iter().all(|h| remaining.contains(h))
        },
    );
}

fn session_affinity_sticks(f: &ContainerdCluster) {
    f.kubectl.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: hellok8s}
  sessionAffinity: ClientIP
  ports: [{port: 3000, targetPort: 80}]
"#,
    );
    wait_for(
        Duration::from_secs(30),
        "the sticky Service answers",
        || !answering_hosts(f, "http://sticky:3000", 1).is_empty(),
    );
    let hosts: BTreeSet<String> = answering_hosts(f, "http://sticky:3000", 20)
        .into_iter()
        .collect();
    assert_eq!(hosts.len(), 1, "one client, one backend: {hosts:?}");
}

fn dns_from_pods(f: &ContainerdCluster) {
    f.kubectl.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: service-hellok8s-externalname}
spec:
  type: ExternalName
  externalName: service-hellok8s-clusterip.default.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: web, port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: nginx
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: skiff/echo:v1, ports: [{name: web, containerPort: 80}]}
"#,
    );
    // The headless name lists each ready pod, as the seed's nslookup shows.
    let pod_ips = f.kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=hellok8s",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    wait_for(
        Duration::from_secs(30),
        "headless A records in a pod",
        || {
            let answer = f.exec_sh(
                "client",
                "nslookup service-hellok8s-clusterip-headless.default.svc.cluster.local",
            );
            pod_ips.split_whitespace().all(|ip| answer.contains(ip))
        },
    );
    wait_for(
        Duration::from_secs(30),
        "the headless Service answers by name",
        || {
            f.exec_sh(
            "client",
            "timeout 3 wget -qO- http://service-hellok8s-clusterip-headless.default.svc.cluster.local:80",
        )
        .contains("Hello, Kubernetes!")
        },
    );
    wait_for(
        Duration::from_secs(90),
        "web-0 and web-1 resolve and answer",
        || {
            f.exec_sh("client", "timeout 3 wget -qO- http://web-0.nginx")
                .contains("From host: web-0")
                && f.exec_sh(
                    "client",
                    "timeout 3 wget -qO- http://web-1.nginx.default.svc.cluster.local",
                )
                .contains("From host: web-1")
        },
    );
    // ExternalName is a CNAME to the ClusterIP Service, which answers through it.
    let cluster_ip = f.field("service", "service-hellok8s-clusterip", "{.spec.clusterIP}");
    let answer = f.exec_sh(
        "client",
        "nslookup service-hellok8s-externalname.default.svc.cluster.local",
    );
    assert!(answer.contains(&cluster_ip), "{answer}");
    // The same names with dig from another host, at a member.
    let out = f.hosts.run(
        "cp",
        "dig",
        &[
            &format!("@{}", MEMBERS[1]),
            "+short",
            "SRV",
            "_web._tcp.nginx.default.svc.cluster.local",
        ],
    );
    let srv = String::from_utf8_lossy(&out.stdout);
    assert!(
        srv.contains("web-0.nginx.default.svc.cluster.local."),
        "{srv}"
    );
    // In-cluster clients reach the API servers through default/kubernetes (10.43.0.1:443).
    wait_for(
        Duration::from_secs(30),
        "kubernetes.default reached from a pod",
        || {
            f.exec_sh(
                "client",
                "echo | timeout 3 nc kubernetes.default.svc 443 >/dev/null && echo reached",
            )
            .contains("reached")
        },
    );
    let dns_members = f.kubectl.ok(&[
        "get",
        "endpointslice",
        "-n",
        "kube-system",
        "kube-dns-members",
        "-o",
        "jsonpath={.endpoints[*].addresses[0]}",
    ]);
    let mut listed: Vec<&str> = dns_members.split_whitespace().collect();
    listed.sort();
    assert_eq!(listed, MEMBERS, "every member serves pods' DNS");
    // A deleted Service is gone from DNS within a second.
    f.kubectl.ok(&["delete", "service", "sticky"]);
    let deleted = Instant::now();
    wait_for(Duration::from_secs(5), "sticky NXDOMAIN", || {
        let out = f.hosts.run(
            "cp",
            "dig",
            &[
                &format!("@{}", MEMBERS[0]),
                "sticky.default.svc.cluster.local",
            ],
        );
        String::from_utf8_lossy(&out.stdout).contains("NXDOMAIN")
    });
    assert!(
        deleted.elapsed() < Duration::from_secs(1),
        "took {:?}",
        deleted.elapsed()
    );
}

fn cleanup_removes_rules(f: &ContainerdCluster) {
    for (agent, host) in [("node-a", "n1"), ("node-b", "n2")] {
        let ns = f.hosts.ns(host);
        let cleanup = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .args(["--", common::SKIFF, "agent", "--cleanup"])
            .output()
            .expect("skiff agent --cleanup");
        assert!(
            cleanup.status.success(),
            "{agent}: {}",
            String::from_utf8_lossy(&cleanup.stderr)
        );
        let tables = String::from_utf8_lossy(&f.hosts.run(host, "nft", &["list", "tables"]).stdout)
            .into_owned();
        assert!(!tables.contains("skiff-proxy"), "{agent}: {tables}");
        let nat =
            String::from_utf8_lossy(&f.hosts.run(host, "iptables", &["-t", "nat", "-S"]).stdout)
                .into_owned();
        assert!(!nat.contains("SKIFF-"), "{agent}: {nat}");
    }
}
