//! The built-in Ingress controller end to end (seed 004, "使用 Ingress"): two containerd nodes,
//! each serving Ingresses on its own address (ports 80/443), backends in real containers, and
//! real clients (curl, busybox nc) on the control-plane host. The seed's example — backend A
//! on /hello, backend B on /httpd, 404 elsewhere — then host routing, HTTPS with a Secret-held
//! certificate verified by its CA (and a certificate swap that keeps open connections),
//! scaling, retries past a dead endpoint, websockets, forwarded headers and rewrites,
//! metrics, Ingress status, and a deleted Ingress stopping within 2 s.
//!
//! Needs what tests/agent_containerd.rs needs, plus curl; without it, says why and passes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::hosts::{AgentSpec, ContainerdCluster, missing_prerequisite};
use common::wait_for;

const NODE_A: &str = "10.99.0.11";
const NODE_B: &str = "10.99.0.12";

#[test]
fn ingress_routes_hosts_paths_and_tls_to_pods() {
    if let Some(reason) = missing_prerequisite().or_else(|| {
        let curl = Command::new("sh").args(["-c", "command -v curl"]).output();
        (!curl.is_ok_and(|o| o.status.success())).then(|| "curl is not installed".to_string())
    }) {
        eprintln!("skipping the ingress test: {reason}");
        return;
    }
    let fixture = ContainerdCluster::start(
        64,
        &[],
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
                args: &[],
            },
        ],
    );
    fixture.run_flows(|f| {
        deploy_backends(f);
        the_seeds_example(f);
        hosts_route_by_host_header(f);
        https_with_a_secret_certificate(f);
        scaling_spreads_requests(f);
        dead_endpoints_are_retried_and_empty_services_answer_503(f);
        websockets_pass_through(f);
        forwarded_headers_and_rewrites(f);
        metrics_and_access_log(f);
        status_lists_the_node_addresses(f);
        deleting_an_ingress_stops_routing(f);
    });
}

/// curl on the control-plane host: (stdout, exit code).
fn curl(f: &ContainerdCluster, args: &[&str]) -> (String, i32) {
    let mut all = vec!["-s", "--max-time", "5"];
    all.extend_from_slice(args);
    let out = f.hosts.run("cp", "curl", &all);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// The body of GET `url` with `Host: host` (None: the URL's), "" on failure.
fn get(f: &ContainerdCluster, url: &str, host: Option<&str>) -> String {
    let header = host.map(|h| format!("Host: {h}"));
    let mut args = vec![url];
    if let Some(header) = &header {
        args.extend(["-H", header]);
    }
    curl(f, &args).0
}

/// The HTTP status of GET `url` with `Host: host`.
fn status(f: &ContainerdCluster, url: &str, host: &str) -> String {
    let header = format!("Host: {host}");
    curl(
        f,
        &["-o", "/dev/null", "-w", "%{http_code}", "-H", &header, url],
    )
    .0
}

/// Agent `i`'s log without the terminal colour codes.
fn agent_log(f: &ContainerdCluster, i: usize) -> String {
    let log = std::fs::read_to_string(f.agents[i].log_path()).expect("agent log");
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The pods answering `count` requests for `url` (Host `host`); empty unless all answered.
fn answering_hosts(f: &ContainerdCluster, url: &str, host: &str, count: usize) -> Vec<String> {
    let hosts: Vec<String> = (0..count)
        .filter_map(|_| {
            get(f, url, Some(host))
                .split("From host: ")
                .nth(1)
                .map(|h| h.trim().to_string())
        })
        .collect();
    if hosts.len() == count {
        hosts
    } else {
        Vec::new()
    }
}

fn deploy_backends(f: &ContainerdCluster) {
    f.kubectl.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hellok8s-go-http}
spec:
  replicas: 2
  selector: {matchLabels: {app: hellok8s}}
  template:
    metadata: {labels: {app: hellok8s}}
    spec:
      containers:
      - name: hellok8s
        image: skiff/echo:v1
        env: [{name: HELLO_VERSION, value: v3}]
        readinessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: service-hellok8s-clusterip}
spec:
  selector: {app: hellok8s}
  ports: [{port: 3000, targetPort: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpd}
spec:
  replicas: 1
  selector: {matchLabels: {app: httpd}}
  template:
    metadata: {labels: {app: httpd}}
    spec:
      containers:
      - name: httpd
        image: skiff/busybox:1.35
        command: ["sh", "-c"]
        args:
        - |
          mkdir -p /www/cgi-bin
          echo '<html><body><h1>It works!</h1></body></html>' > /www/index.html
          printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\nenv | sort\n' > /www/cgi-bin/env
          chmod +x /www/cgi-bin/env
          exec httpd -f -p 80 -h /www
        readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: httpd-svc}
spec:
  selector: {app: httpd}
  ports: [{name: http, port: 8080, targetPort: 80}]
"#,
    );
    wait_for(
        Duration::from_secs(120),
        "2 hellok8s pods and the httpd pod ready",
        || f.ready_pods("app=hellok8s").len() == 2 && f.ready_pods("app=httpd").len() == 1,
    );
    let classes = f.kubectl.ok(&["get", "ingressclass"]);
    assert!(
        classes.contains("skiff") && classes.contains("skiff.dev/ingress"),
        "{classes}"
    );
    let default = f.field(
        "ingressclass",
        "skiff",
        "{.metadata.annotations.ingressclass\\.kubernetes\\.io/is-default-class}",
    );
    assert_eq!(default, "true");
}

/// The seed's Ingress: no class (skiff is the default), /hello to A and /httpd to B on any
/// host, with its annotations (ssl-redirect off; rewrite-target / because neither backend
/// serves those paths itself, as the seed's comment explains).
fn the_seeds_example(f: &ContainerdCluster) {
    f.kubectl.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: hellok8s-ingress
  annotations:
    nginx.ingress.kubernetes.io/ssl-redirect: "false"
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  rules:
  - http:
      paths:
      - path: /hello
        pathType: Prefix
        backend:
          service:
            name: service-hellok8s-clusterip
            port: {number: 3000}
      - path: /httpd
        pathType: Prefix
        backend:
          service:
            name: httpd-svc
            port: {number: 8080}
"#,
    );
    for node in [NODE_A, NODE_B] {
        wait_for(
            Duration::from_secs(30),
            &format!("/hello on {node}"),
            || {
                get(f, &format!("http://{node}/hello"), None)
                    .contains("[v3] Hello, Kubernetes! From host: hellok8s-go-http-")
            },
        );
        assert_eq!(
            get(f, &format!("http://{node}/httpd"), None).trim(),
            "<html><body><h1>It works!</h1></body></html>"
        );
    }
    for path in ["/", "/other", "/hellothere"] {
        let header = "Host: 10.99.0.11";
        let url = format!("http://{NODE_A}{path}");
        let (body, _) = curl(f, &["-w", "\n%{http_code}", "-H", header, &url]);
        assert!(body.ends_with("\n404"), "{path}: {body}");
        assert!(body.contains("no Ingress rule matches"), "{path}: {body}");
    }
}

fn hosts_route_by_host_header(f: &ContainerdCluster) {
    f.kubectl.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: hosts}
spec:
  ingressClassName: skiff
  rules:
  - host: a.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: service-hellok8s-clusterip, port: {number: 3000}}}}
  - host: b.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: httpd-svc, port: {name: http}}}}
  - host: "*.wild.example.com"
    http:
      paths:
      - {path: /, pathType: Exact, backend: {service: {name: httpd-svc, port: {name: http}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: for-nginx}
spec:
  ingressClassName: nginx
  rules:
  - host: c.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: service-hellok8s-clusterip, port: {number: 3000}}}}
"#,
    );
    let url = format!("http://{NODE_B}/");
    wait_for(Duration::from_secs(30), "b.example.com routed", || {
        get(f, &url, Some("b.example.com")).contains("It works!")
    });
    assert!(get(f, &url, Some("a.example.com")).contains("Hello, Kubernetes!"));
    assert!(get(f, &url, Some("x.wild.example.com")).contains("It works!"));
    assert_eq!(
        status(f, &url, "x.y.wild.example.com"),
        "404",
        "a wildcard covers one label"
    );
    // Another controller's class is left alone.
    assert_eq!(status(f, &url, "c.example.com"), "404");
    // Host rules fall back to the host-less ones for paths they do not have.
    assert!(
        get(
            f,
            &format!("http://{NODE_B}/hello"),
            Some("x.wild.example.com")
        )
        .contains("Hello, Kubernetes!")
    );
    // HTTP/2 with prior knowledge on the plain port.
    let (version, _) = curl(
        f,
        &[
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "-H",
            "Host: a.example.com",
            &url,
        ],
    );
    assert_eq!(version, "2");
}

/// A CA and a certificate for `host` signed by it (PEM): (ca, cert, key).
fn issue(host: &str, ca_name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![host.to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// `kubectl create secret tls NAME` from PEMs written under `dir`, as YAML to apply.
fn tls_secret_yaml(f: &ContainerdCluster, dir: &Path, name: &str, cert: &str, key: &str) -> String {
    let (cert_file, key_file) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_file, cert).expect("write cert");
    std::fs::write(&key_file, key).expect("write key");
    f.kubectl.ok(&[
        "create",
        "secret",
        "tls",
        name,
        &format!("--cert={}", cert_file.display()),
        &format!("--key={}", key_file.display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ])
}

fn https_with_a_secret_certificate(f: &ContainerdCluster) {
    let dir = f.work.path();
    let (ca1, cert1, key1) = issue("secure.example.com", "test CA one");
    let ca1_file = dir.join("ca1.pem");
    std::fs::write(&ca1_file, &ca1).expect("write CA");
    f.kubectl
        .apply(&tls_secret_yaml(f, dir, "secure-tls", &cert1, &key1));
    f.kubectl.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure}
spec:
  tls:
  - hosts: [secure.example.com]
    secretName: secure-tls
  rules:
  - host: secure.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: service-hellok8s-clusterip, port: {number: 3000}}}}
"#,
    );
    let resolve = format!("secure.example.com:443:{NODE_A}");
    let https = |ca: &Path, extra: &[&str]| {
        let ca = ca.to_string_lossy().into_owned();
        let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push("https://secure.example.com/");
        curl(f, &args)
    };
    wait_for(
        Duration::from_secs(30),
        "HTTPS verified with the CA",
        || https(&ca1_file, &[]).0.contains("Hello, Kubernetes!"),
    );
    let (version, code) = https(&ca1_file, &["-o", "/dev/null", "-w", "%{http_version}"]);
    assert_eq!((version.as_str(), code), ("2", 0), "HTTP/2 over ALPN");
    // Plain HTTP for a TLS host: 308 to HTTPS (ssl-redirect's default).
    let (headers, _) = curl(
        f,
        &[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "Host: secure.example.com",
            &format!("http://{NODE_A}/x?y=1"),
        ],
    );
    assert!(headers.starts_with("HTTP/1.1 308"), "{headers}");
    assert!(
        headers
            .to_lowercase()
            .contains("location: https://secure.example.com/x?y=1"),
        "{headers}"
    );

    // A new certificate from another CA while a keep-alive connection is open: the open
    // connection keeps working, new handshakes get the new certificate.
    let (ca2, cert2, key2) = issue("secure.example.com", "test CA two");
    let ca2_file = dir.join("ca2.pem");
    std::fs::write(&ca2_file, &ca2).expect("write CA");
    let held = Command::new("ip")
        .args([
            "netns",
            "exec",
            &f.hosts.ns("cp"),
            "curl",
            "-s",
            "--max-time",
            "20",
        ])
        .args([
            "--cacert",
            &ca1_file.to_string_lossy(),
            "--resolve",
            &resolve,
        ])
        .args(["--rate", "10/m", "-w", "\nconnects=%{num_connects}\n"])
        .args(["https://secure.example.com/", "https://secure.example.com/"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_secs(1));
    f.kubectl
        .apply(&tls_secret_yaml(f, dir, "secure-tls", &cert2, &key2));
    wait_for(
        Duration::from_secs(10),
        "the new certificate served",
        || https(&ca2_file, &[]).0.contains("Hello, Kubernetes!"),
    );
    let (_, code) = https(&ca1_file, &[]);
    assert_eq!(code, 60, "the old CA no longer verifies new handshakes");
    let out = held.wait_with_output().expect("curl output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("Hello, Kubernetes!").count(), 2, "{text}");
    assert!(
        text.contains("connects=1") && text.contains("connects=0"),
        "the second request reused the first connection: {text}"
    );
}

fn scaling_spreads_requests(f: &ContainerdCluster) {
    f.kubectl
        .ok(&["scale", "deployment", "hellok8s-go-http", "--replicas=4"]);
    wait_for(Duration::from_secs(90), "4 ready hellok8s pods", || {
        f.ready_pods("app=hellok8s").len() == 4
    });
    let ready = f.ready_pods("app=hellok8s");
    let url = format!("http://{NODE_A}/");
    wait_for(
        Duration::from_secs(10),
        "every pod answers through the ingress",
        || {
            let seen: BTreeSet<String> = answering_hosts(f, &url, "a.example.com", 16)
                .into_iter()
                .collect();
            seen == ready
        },
    );
    // Round-robin: 40 requests, 10 each.
    let hosts = answering_hosts(f, &url, "a.example.com", 40);
    for pod in &ready {
        let n = hosts.iter().filter(|h| *h == pod).count();
        assert!((8..=12).contains(&n), "{pod} answered {n} of 40: {hosts:?}");
    }
}

fn dead_endpoints_are_retried_and_empty_services_answer_503(f: &ContainerdCluster) {
    let pod = f
        .ready_pods("app=httpd")
        .into_iter()
        .next()
        .expect("httpd pod");
    let ip = f.field("pod", &pod, "{.status.podIP}");
    // One live endpoint (port 80) and one that refuses connections (port 81, nothing there).
    f.kubectl.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: half-dead}}
spec:
  ports: [{{port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: half-dead-live
  labels: {{kubernetes.io/service-name: half-dead}}
addressType: IPv4
ports: [{{name: "", port: 80, protocol: TCP}}]
endpoints: [{{addresses: ["{ip}"]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: half-dead-dead
  labels: {{kubernetes.io/service-name: half-dead}}
addressType: IPv4
ports: [{{name: "", port: 81, protocol: TCP}}]
endpoints: [{{addresses: ["{ip}"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: nobody}}
spec:
  selector: {{app: nobody}}
  ports: [{{port: 80}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: failures
  annotations: {{nginx.ingress.kubernetes.io/rewrite-target: /}}
spec:
  rules:
  - host: failures.example.com
    http:
      paths:
      - {{path: /half-dead, pathType: Prefix, backend: {{service: {{name: half-dead, port: {{number: 80}}}}}}}}
      - {{path: /nobody, pathType: Prefix, backend: {{service: {{name: nobody, port: {{number: 80}}}}}}}}
      - {{path: /missing, pathType: Prefix, backend: {{service: {{name: no-such-service, port: {{number: 80}}}}}}}}
"#
    ));
    let url = |path: &str| format!("http://{NODE_A}{path}");
    wait_for(
        Duration::from_secs(30),
        "the failures Ingress routed",
        || status(f, &url("/nobody"), "failures.example.com") == "503",
    );
    let (body, _) = curl(f, &["-H", "Host: failures.example.com", &url("/nobody")]);
    assert!(
        body.contains("service default/nobody:80 has no ready endpoint"),
        "{body}"
    );
    let (body, _) = curl(f, &["-H", "Host: failures.example.com", &url("/missing")]);
    assert!(
        body.contains("service default/no-such-service does not exist"),
        "{body}"
    );
    // Every request succeeds although every other pick is the dead endpoint.
    for i in 0..10 {
        assert_eq!(
            status(f, &url("/half-dead/"), "failures.example.com"),
            "200",
            "request {i}"
        );
    }
    let log = agent_log(f, 0);
    assert!(
        log.contains("endpoint refused; trying the next") && log.contains(&format!("{ip}:81")),
        "the dead endpoint was tried and skipped"
    );
}

fn websockets_pass_through(f: &ContainerdCluster) {
    f.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ws-echo, labels: {app: ws-echo}}
spec:
  containers:
  - name: ws
    image: skiff/busybox:1.35
    command: ["sh", "-c"]
    args:
    - |
      cat > /ws.sh <<'EOF'
      while read -r line; do
        line=$(printf %s "$line" | tr -d '\r')
        [ -z "$line" ] && break
      done
      printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'
      exec cat
      EOF
      exec nc -ll -p 8080 -e sh /ws.sh
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: ws-echo}
spec:
  selector: {app: ws-echo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: ws}
spec:
  rules:
  - http:
      paths:
      - {path: /ws, pathType: Exact, backend: {service: {name: ws-echo, port: {number: 80}}}}
"#,
    );
    wait_for(Duration::from_secs(60), "the websocket pod ready", || {
        f.ready_pods("app=ws-echo").len() == 1
    });
    let script = format!(
        "(printf 'GET /ws HTTP/1.1\\r\\nHost: ws.example\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n\\r\\nping-through-the-tunnel\\n'; sleep 2) | timeout 5 busybox nc {NODE_B} 80"
    );
    let mut answer = String::new();
    wait_for(
        Duration::from_secs(30),
        "the upgrade answered and echoed",
        || {
            let out = f.hosts.run("cp", "sh", &["-c", &script]);
            answer = String::from_utf8_lossy(&out.stdout).into_owned();
            answer.contains("ping-through-the-tunnel")
        },
    );
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(
        answer.to_lowercase().contains("upgrade: websocket"),
        "{answer}"
    );
}

/// The httpd pod's CGI prints its environment: what the backend received.
fn forwarded_headers_and_rewrites(f: &ContainerdCluster) {
    f.kubectl.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: inspect
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /cgi-bin/$2
spec:
  rules:
  - host: inspect.example.com
    http:
      paths:
      - path: /inspect(/|$)(.*)
        pathType: ImplementationSpecific
        backend: {service: {name: httpd-svc, port: {number: 8080}}}
"#,
    );
    let url = format!("http://{NODE_A}/inspect/env?probe=1");
    let mut env = String::new();
    wait_for(
        Duration::from_secs(30),
        "the rewritten CGI path answers",
        || {
            env = get(f, &url, Some("inspect.example.com"));
            env.contains("REQUEST_URI=")
        },
    );
    for expected in [
        "REQUEST_URI=/cgi-bin/env?probe=1",
        "HTTP_X_FORWARDED_PROTO=http",
        "HTTP_X_FORWARDED_HOST=inspect.example.com",
        "HTTP_X_FORWARDED_FOR=10.99.0.",
        "HTTP_X_REAL_IP=10.99.0.",
    ] {
        assert!(env.contains(expected), "{expected} missing in:\n{env}");
    }
    // An earlier proxy's X-Forwarded-For is kept, this hop appended.
    let (env, _) = curl(
        f,
        &[
            "-H",
            "Host: inspect.example.com",
            "-H",
            "X-Forwarded-For: 192.0.2.7",
            &url,
        ],
    );
    assert!(
        env.contains("HTTP_X_FORWARDED_FOR=192.0.2.7, 10.99.0."),
        "{env}"
    );
}

fn metrics_and_access_log(f: &ContainerdCluster) {
    let out = f.hosts.run(
        "n1",
        "curl",
        &["-s", &format!("http://{NODE_A}:10249/metrics")],
    );
    let metrics = String::from_utf8_lossy(&out.stdout);
    let seed = r#"skiff_ingress_requests_total{namespace="default",ingress="hellok8s-ingress",service="default/service-hellok8s-clusterip:3000",code="200"}"#;
    assert!(metrics.contains(seed), "{metrics}");
    assert!(
        metrics.contains(
            r#"skiff_ingress_requests_total{namespace="",ingress="",service="",code="404"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"skiff_ingress_request_duration_seconds_count{namespace="default",ingress="failures",service="default/nobody:80"}"#),
        "{metrics}"
    );
    let access = agent_log(f, 0);
    let access = access
        .lines()
        .find(|l| {
            l.contains("skiff::ingress::access") && l.contains("ingress=default/hellok8s-ingress")
        })
        .unwrap_or_default();
    assert!(
        access.contains("status=200") && access.contains("upstream=10.42."),
        "{access}"
    );
}

fn status_lists_the_node_addresses(f: &ContainerdCluster) {
    wait_for(
        Duration::from_secs(30),
        "Ingress status with both nodes",
        || {
            f.field(
                "ingress",
                "hellok8s-ingress",
                "{.status.loadBalancer.ingress[*].ip}",
            ) == format!("{NODE_A} {NODE_B}")
        },
    );
    let listed = f.kubectl.ok(&["get", "ingress", "hellok8s-ingress"]);
    assert!(
        listed.contains(&format!("{NODE_A},{NODE_B}")),
        "ADDRESS column: {listed}"
    );
    let secure = f.kubectl.ok(&["get", "ingress", "secure"]);
    assert!(secure.contains("80, 443"), "{secure}");
    // Another controller's Ingress gets no addresses from skiff.
    assert_eq!(
        f.field("ingress", "for-nginx", "{.status.loadBalancer.ingress}"),
        ""
    );
    let labels = f.kubectl.ok(&[
        "get",
        "nodes",
        "-l",
        "node.skiff.dev/ingress=true",
        "-o",
        "name",
    ]);
    assert_eq!(labels.lines().count(), 2, "{labels}");
}

fn deleting_an_ingress_stops_routing(f: &ContainerdCluster) {
    let url = format!("http://{NODE_A}/");
    assert_eq!(status(f, &url, "a.example.com"), "200");
    let started = Instant::now();
    f.kubectl.ok(&["delete", "ingress", "hosts"]);
    wait_for(Duration::from_secs(5), "a.example.com unrouted", || {
        status(f, &url, "a.example.com") == "404"
    });
    let took = started.elapsed();
    eprintln!("deleting the Ingress stopped its routing after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The others still route.
    assert!(get(f, &format!("http://{NODE_A}/hello"), None).contains("Hello"));
}
