//! Cluster DNS against real `skiff server` processes: Services created with kubectl, an
//! EndpointSlice written by hand (no endpoints controller yet), answers checked with dig on every
//! member's own DNS address.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::kubectl::kubectl;
use common::{Cluster, wait_for};

const ZONE: &str = "svc.cluster.local";

/// One dig answer: the status and the answer section's rdata (type and data), sorted.
#[derive(Debug, PartialEq)]
struct Dig {
    status: String,
    flags: String,
    answers: Vec<String>,
}

fn dig(server: &str, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{server}"))
        .args(["+noall", "+comments", "+answer", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig (apt-get install dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    // The text between `marker` and the next `end` in dig's header comments.
    let field = |marker: &str, end: char| {
        let rest = text.split(marker).nth(1)?;
        rest.split(end).next().map(String::from)
    };
    let status = field("status: ", ',').unwrap_or_else(|| "NO-REPLY".into());
    let flags = field(";; flags: ", ';').unwrap_or_default();
    let mut answers: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
        .collect();
    answers.sort();
    Dig {
        status,
        flags,
        answers,
    }
}

/// Polls until dig's answer satisfies `check` (the feed applies changes asynchronously).
fn eventually(server: &str, args: &[&str], check: impl Fn(&Dig) -> bool) -> Dig {
    let mut last = None;
    wait_for(Duration::from_secs(10), &format!("dig {args:?}"), || {
        let answer = dig(server, args);
        let ok = check(&answer);
        last = Some(answer);
        ok
    });
    last.expect("dig ran")
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: nginx, namespace: default}
spec:
  clusterIP: None
  selector: {app: nginx}
  ports: [{name: web, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  type: ExternalName
  externalName: db.example.com
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: nginx-abcde
  namespace: default
  labels: {kubernetes.io/service-name: nginx}
addressType: IPv4
ports: [{name: web, port: 8080, protocol: TCP}]
endpoints:
- addresses: ["10.42.0.5"]
  hostname: web-0
  conditions: {ready: true}
- addresses: ["10.42.0.6"]
  hostname: web-1
  conditions: {ready: true}
- addresses: ["10.42.0.7"]
  hostname: web-2
  conditions: {ready: false}
"#;

/// A headless Service with enough endpoints that its answer exceeds 512 bytes.
fn many_endpoints_manifest(count: usize) -> String {
    let endpoints: String = (0..count)
        .map(|i| format!("- addresses: [\"10.42.3.{}\"]\n", i + 1))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: many, namespace: default}}\n\
         spec: {{clusterIP: None, ports: [{{port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: many-1, namespace: default, labels: {{kubernetes.io/service-name: many}}}}\n\
         addressType: IPv4\nendpoints:\n{endpoints}"
    )
}

#[test]
fn cluster_dns_answers_service_discovery_names() {
    let cluster = Cluster::start(56, 3, &[]);
    let kubectl = kubectl(&cluster, None);
    kubectl.apply(MANIFEST);
    let cluster_ip = kubectl.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let dns: Vec<String> = cluster.nodes.iter().map(|n| n.ip.clone()).collect();
    let web = format!("web.default.{ZONE}");

    // ClusterIP A, from every member's in-process server; case-insensitive.
    for server in &dns {
        let answer = eventually(server, &[&web, "A"], |d| !d.answers.is_empty());
        assert_eq!(answer.answers, [format!("A {cluster_ip}")], "{server}");
        assert!(answer.flags.contains("aa"), "authoritative: {answer:?}");
    }
    let upper = dig(&dns[0], &["WEB.Default.SVC.cluster.LOCAL", "A"]);
    assert_eq!(upper.answers, [format!("A {cluster_ip}")]);
    // The member's /metrics counts its DNS queries.
    let metrics = kubectl.ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains("skiff_dns_requests_total{type=\"A\",rcode=\"NOERROR\"}"),
        "{metrics}"
    );

    // Headless: one A per ready endpoint.
    let headless = eventually(&dns[1], &[&format!("nginx.default.{ZONE}"), "A"], |d| {
        d.answers.len() == 2
    });
    assert_eq!(headless.answers, ["A 10.42.0.5", "A 10.42.0.6"]);
    // Endpoint hostnames (StatefulSet style); an unready one does not resolve.
    let web1 = dig(&dns[2], &[&format!("web-1.nginx.default.{ZONE}"), "A"]);
    assert_eq!(web1.answers, ["A 10.42.0.6"]);
    let web2 = dig(&dns[2], &[&format!("web-2.nginx.default.{ZONE}"), "A"]);
    assert_eq!(web2.status, "NXDOMAIN");

    // SRV for named ports: the ClusterIP service, and one per endpoint for headless.
    let srv = dig(&dns[0], &[&format!("_http._tcp.web.default.{ZONE}"), "SRV"]);
    assert_eq!(srv.answers, [format!("SRV 0 100 80 {web}.")]);
    let srv = dig(
        &dns[0],
        &[&format!("_web._tcp.nginx.default.{ZONE}"), "SRV"],
    );
    assert_eq!(
        srv.answers,
        [
            format!("SRV 0 100 8080 web-0.nginx.default.{ZONE}."),
            format!("SRV 0 100 8080 web-1.nginx.default.{ZONE}."),
        ]
    );

    // PTR for a ClusterIP and for an endpoint IP.
    let ptr = dig(&dns[0], &["-x", &cluster_ip]);
    assert_eq!(ptr.answers, [format!("PTR {web}.")]);
    let ptr = dig(&dns[0], &["-x", "10.42.0.5"]);
    assert_eq!(ptr.answers, [format!("PTR web-0.nginx.default.{ZONE}.")]);

    // ExternalName: a CNAME (not chased: no upstream is configured).
    let cname = dig(&dns[0], &[&format!("db.default.{ZONE}"), "A"]);
    assert_eq!(cname.status, "NOERROR");
    assert_eq!(cname.answers, ["CNAME db.example.com."]);

    // NXDOMAIN for a missing name, NODATA (NOERROR, empty) for a missing type, dns-version.
    let missing = dig(&dns[0], &[&format!("nope.default.{ZONE}"), "A"]);
    assert_eq!(missing.status, "NXDOMAIN");
    let nodata = dig(&dns[0], &[&web, "AAAA"]);
    assert_eq!(
        (nodata.status.as_str(), nodata.answers.len()),
        ("NOERROR", 0)
    );
    let version = dig(&dns[0], &["dns-version.cluster.local", "TXT"]);
    assert_eq!(version.answers, ["TXT \"1.1.0\""]);
    // Non-cluster names are refused: no upstream is configured, nothing leaves the machine.
    let foreign = dig(&dns[0], &["example.com", "A"]);
    assert_eq!(foreign.status, "REFUSED");

    // UDP without EDNS truncates at 512 bytes; TCP carries the whole answer.
    kubectl.apply(&many_endpoints_manifest(60));
    let many = format!("many.default.{ZONE}");
    let tcp = eventually(&dns[0], &[&many, "A", "+tcp"], |d| d.answers.len() == 60);
    assert_eq!(tcp.answers.len(), 60);
    let udp = dig(&dns[0], &[&many, "A", "+noedns", "+ignore"]);
    assert!(udp.flags.contains("tc"), "truncated: {udp:?}");
    assert!(udp.answers.len() < 60);
    let edns = dig(&dns[0], &[&many, "A", "+bufsize=4096", "+ignore"]);
    assert_eq!(edns.answers.len(), 60, "fits the 1232-byte EDNS payload");

    // A deleted Service is NXDOMAIN within 1 s, on the member that took the delete and others.
    kubectl.ok(&["delete", "service", "web", "--wait=false"]);
    let deleted = Instant::now();
    for server in [&dns[0], &dns[2]] {
        while dig(server, &[&web, "A", "+time=1"]).status != "NXDOMAIN" {
            assert!(
                deleted.elapsed() < Duration::from_secs(1),
                "{web} still resolves on {server} after {:?}",
                deleted.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("deleted Service NXDOMAIN after {:?}", deleted.elapsed());
}
