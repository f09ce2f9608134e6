//! What an operator sees: `skiff doctor` on a healthy 3-member cluster, with one member down
//! (quorum WARN) and with two down (quorum and leader FAIL, non-zero exit); JSON logs
//! (`--log-format json`) whose API request lines carry the request id the client sent, echoed
//! in the response and the audit log, and a slow-request warning; the agent's /metrics with the
//! kubelet's series.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::kubectl::kubectl;
use common::{Cluster, SKIFF, agents, path_str, wait_for};
use serde_json::Value;

fn doctor(args: &[&str]) -> (Output, Value) {
    let out = Command::new(SKIFF)
        .arg("doctor")
        .args(args)
        .args(["-o", "json"])
        .output()
        .expect("run skiff doctor");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn status_of(report: &Value, name: &str) -> String {
    check(report, name)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The exit status says whether any check failed, and only that.
fn assert_exit_matches(out: &Output, report: &Value) {
    let failed = report["summary"]["fail"].as_u64().unwrap_or(0);
    assert_eq!(
        out.status.success(),
        failed == 0,
        "exit {:?} with {failed} failed check(s): {report:#}",
        out.status
    );
}

/// curl against member `node` with the admin certificate; returns headers + body.
fn curl(cluster: &Cluster, node: usize, path: &str, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "30"])
        .arg("--cacert")
        .arg(cluster.pki("ca.crt"))
        .arg("--cert")
        .arg(cluster.pki("admin.crt"))
        .arg("--key")
        .arg(cluster.pki("admin.key"))
        .args(extra)
        .arg(format!("https://{}{path}", cluster.nodes[node].api()))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The log lines of a process run with --log-format json. Its log file also holds what the
/// process prints for its user on stdout (the join token banner): those lines are skipped, but
/// no line may be a text-format log line, and every `{` line must be JSON.
fn json_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("log");
    text.lines()
        .filter(|l| {
            let level = [" TRACE ", " DEBUG ", " INFO ", " WARN ", " ERROR "];
            assert!(
                !level.iter().any(|lvl| l.contains(lvl)),
                "a text log line: {l}"
            );
            l.starts_with('{')
        })
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn request_id_of(line: &Value) -> Option<&str> {
    line["spans"]
        .as_array()?
        .iter()
        .find_map(|s| s["request_id"].as_str())
}

#[test]
fn doctor_and_request_logs_through_quorum_loss() {
    let mut cluster = Cluster::start(
        110,
        3,
        &["--cluster-dns-listen", "off", "--log-format", "json"],
    );
    let data1 = cluster.nodes[0].data.clone();
    let data1 = path_str(&data1).to_string();

    // Healthy: quorum, leader and clocks OK, every certificate under DATA/pki checked.
    let (out, report) = doctor(&["--data", &data1]);
    assert_exit_matches(&out, &report);
    for name in ["quorum", "leader", "clock skew", "db size"] {
        assert_eq!(status_of(&report, name), "OK", "{name}: {report:#}");
    }
    for cert in ["ca.crt", "node.crt", "admin.crt"] {
        let c = check(&report, &format!("certificate {cert}"));
        assert_eq!(c["status"], "OK", "{c}");
        assert!(c["detail"].as_str().unwrap_or("").contains("expires in"));
    }
    assert!(
        check(&report, "quorum")["detail"]
            .as_str()
            .unwrap_or("")
            .contains("3 of 3 voters answer; 1 more can fail"),
        "{report:#}"
    );
    // The disk is this machine's: any verdict, but measured.
    let fsync = check(&report, "disk fsync");
    assert!(
        fsync["detail"]
            .as_str()
            .unwrap_or("")
            .contains("fdatasyncs"),
        "{fsync}"
    );
    assert_ne!(status_of(&report, "disk space"), "SKIP");

    // The table, and the kubeconfig mode (no data dir: disk skipped, the kubeconfig's
    // certificates checked).
    let table = Command::new(SKIFF)
        .args(["doctor", "--data", &data1])
        .output()
        .expect("doctor table");
    let text = String::from_utf8_lossy(&table.stdout);
    eprintln!("skiff doctor, healthy:\n{text}");
    assert!(
        text.contains("CHECK")
            && text
                .lines()
                .any(|l| l.starts_with("quorum") && l.contains(" OK ")),
        "{text}"
    );
    let kubeconfig = cluster.nodes[0].data.join("admin.kubeconfig");
    let nowhere = cluster.dir.path().join("no-member-here");
    let (out, report) = doctor(&[
        "--kubeconfig",
        path_str(&kubeconfig),
        "--data",
        path_str(&nowhere),
    ]);
    assert_exit_matches(&out, &report);
    assert_eq!(status_of(&report, "quorum"), "OK");
    assert_eq!(status_of(&report, "disk fsync"), "SKIP");
    assert_eq!(status_of(&report, "certificate kubeconfig CA"), "OK");
    assert_eq!(status_of(&report, "certificate kubeconfig user"), "OK");

    // Request ids: the client's X-Request-Id is echoed and becomes the audit auditID; without
    // one the server makes one up.
    let response = curl(
        &cluster,
        0,
        "/api/v1/namespaces/default/configmaps",
        &["-H", "X-Request-Id: obs-test-42"],
    );
    assert_eq!(
        header(&response, "x-request-id"),
        Some("obs-test-42"),
        "{response}"
    );
    assert_eq!(
        header(&response, "audit-id"),
        Some("obs-test-42"),
        "{response}"
    );
    let response = curl(&cluster, 0, "/api/v1/namespaces", &[]);
    let generated = header(&response, "x-request-id").unwrap_or_default();
    assert_eq!(generated.len(), 36, "a UUID: {response}");
    wait_for(Duration::from_secs(10), "auditID in the audit log", || {
        std::fs::read_to_string(cluster.nodes[0].data.join("audit.log"))
            .is_ok_and(|log| log.contains(r#""auditID":"obs-test-42""#))
    });

    // One member down (not node1, whose data dir doctor reads): one failure left -> WARN.
    cluster.kill(2);
    cluster.leader();
    let mut report = Value::Null;
    wait_for(Duration::from_secs(30), "doctor sees 2 of 3", || {
        let (out, r) = doctor(&["--data", &data1]);
        assert_exit_matches(&out, &r);
        report = r;
        status_of(&report, "quorum") == "WARN" && status_of(&report, "leader") == "OK"
    });
    let quorum = check(&report, "quorum");
    assert!(
        quorum["detail"]
            .as_str()
            .unwrap_or("")
            .contains("2 of 3 voters answer; 0 more can fail"),
        "{quorum}"
    );
    assert!(
        quorum["advice"].as_str().unwrap_or("").contains("node3"),
        "{quorum}"
    );
    assert_eq!(status_of(&report, "member node3"), "WARN");

    // Two down: no quorum, no live leader -> FAIL and a non-zero exit.
    cluster.kill(1);
    wait_for(
        Duration::from_secs(30),
        "doctor fails without quorum",
        || {
            let (out, r) = doctor(&["--data", &data1]);
            assert_exit_matches(&out, &r);
            report = r;
            status_of(&report, "quorum") == "FAIL" && status_of(&report, "leader") == "FAIL"
        },
    );
    let table = Command::new(SKIFF)
        .args(["doctor", "--data", &data1])
        .output()
        .expect("doctor table");
    assert_eq!(table.status.code(), Some(1), "doctor exits 1 on FAIL");
    let text = String::from_utf8_lossy(&table.stdout);
    eprintln!("skiff doctor, two of three members down:\n{text}");
    assert!(text.contains("What to do:"), "{text}");
    assert!(
        String::from_utf8_lossy(&table.stderr).contains("check(s) failed"),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    assert!(
        check(&report, "quorum")["advice"]
            .as_str()
            .unwrap_or("")
            .contains("restart the stopped members"),
        "{report:#}"
    );

    // A read without a quorum waits for the read index until it gives up: the member logs it
    // as a slow request, with the client's request id on the line.
    let started = Instant::now();
    curl(
        &cluster,
        0,
        "/api/v1/namespaces/default/configmaps",
        &["-H", "X-Request-Id: obs-slow-7"],
    );
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the read waited"
    );
    let log = cluster.nodes[0].log_path();
    wait_for(Duration::from_secs(10), "the slow-request warning", || {
        json_lines(&log).iter().any(|l| {
            l["message"] == "slow request"
                && l["level"] == "WARN"
                && request_id_of(l) == Some("obs-slow-7")
                && l["elapsed_ms"].as_u64().is_some_and(|ms| ms >= 1000)
        })
    });
    // Every line every member wrote is JSON.
    for node in &cluster.nodes {
        assert!(!json_lines(&node.log_path()).is_empty());
    }
}

#[test]
fn agent_serves_kubelet_metrics_and_json_logs() {
    let cluster = Cluster::start(113, 1, &["--cluster-dns-listen", "off"]);
    let agents = agents::start(&cluster, 1, &["--log-format", "json"]);
    let k = kubectl(&cluster, None);
    wait_for(Duration::from_secs(60), "agent1 Ready", || {
        k.run(&["get", "nodes", "--no-headers"])
            .stdout
            .windows(7)
            .any(|w| w == b" Ready ")
    });
    // The member makes the default namespace shortly after it leads, as kube-apiserver does.
    wait_for(Duration::from_secs(30), "namespace default", || {
        k.run(&["get", "namespace", "default"]).status.success()
    });
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "while true; do sleep 1; done"]
"#,
    );
    let url = format!("http://{}:10249/metrics", agents[0].address);
    let mut metrics = String::new();
    wait_for(
        Duration::from_secs(60),
        "one pod and its container running",
        || {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "5", &url])
                .output()
                .expect("curl");
            metrics = String::from_utf8_lossy(&out.stdout).into_owned();
            metrics.contains("\nkubelet_running_pods 1\n")
                && metrics.contains(r#"kubelet_running_containers{container_state="running"} 1"#)
        },
    );
    assert!(
        metrics.contains(r#"kubelet_node_name{node="agent1"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE kubelet_running_pods gauge"));
    let lines = json_lines(&agents[0].log_path());
    assert!(
        lines.iter().any(|l| l["message"] == "skiff agent running"),
        "{lines:?}"
    );
    k.ok(&["delete", "pod", "sleeper", "--wait=false"]);
}
