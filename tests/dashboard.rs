//! The web dashboard at /ui in headless Chromium: a 3-member cluster with one process-runtime
//! agent. With a cluster-admin ServiceAccount token the page shows the members (leader, term,
//! applied index), the node Ready, workloads, pods and events, and the write chart; a pod
//! created with kubectl appears without a reload (the page's watch) and goes away when deleted;
//! no token, a wrong token and a non-admin token are refused by the server (401/403 on the data
//! endpoint) and the page says so.

mod common;

use std::process::Command;
use std::time::Duration;

use common::kubectl::{Kubectl, kubectl};
use common::webdriver::Browser;
use common::{Cluster, agents, wait_for};
use serde_json::json;

const SUBNET: u8 = 73;
const WAIT: Duration = Duration::from_secs(60);

/// The HTTP code of GET `url` with an optional bearer token (curl; the cluster CA is not
/// passed, certificates are not what this checks).
fn http_code(url: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-w", "\n%{http_code}", url]);
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A ServiceAccount token, the account bound cluster-wide to `role`.
fn token_for(k: &Kubectl, account: &str, role: &str) -> String {
    k.ok(&["create", "serviceaccount", account]);
    k.ok(&[
        "create",
        "clusterrolebinding",
        account,
        &format!("--clusterrole={role}"),
        &format!("--serviceaccount=default:{account}"),
    ]);
    k.ok(&["create", "token", account]).trim().to_string()
}

#[test]
fn dashboard_in_headless_chromium() {
    let cluster = Cluster::start(SUBNET, 3, &["--cluster-dns-listen", "off"]);
    let _agents = agents::start(&cluster, 1, &[]);
    let k = kubectl(&cluster, None);
    dashboard(&cluster, &k);
}

fn dashboard(cluster: &Cluster, k: &Kubectl) {
    let base = format!("https://{}", cluster.nodes[0].api());
    wait_for(WAIT, "agent1 Ready", || {
        k.run(&["get", "nodes", "--no-headers"])
            .stdout
            .split(|b| *b == b'\n')
            .any(|l| String::from_utf8_lossy(l).contains(" Ready "))
    });
    let admin = token_for(k, "dash-admin", "cluster-admin");
    let viewer = token_for(k, "dash-viewer", "view");
    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=1",
        "--",
        "sleep",
        "3600",
    ]);

    // The data endpoint: only an administrator gets the members.
    let cluster_api = format!("{base}/ui/api/cluster");
    let (code, _) = http_code(&cluster_api, None);
    assert!(code == 401 || code == 403, "anonymous: {code}");
    let (code, _) = http_code(&cluster_api, Some("not-a-token"));
    assert_eq!(code, 401, "a wrong token");
    let (code, body) = http_code(&cluster_api, Some(&viewer));
    assert_eq!(code, 403, "a view-only token: {body}");
    let (code, body) = http_code(&cluster_api, Some(&admin));
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("cluster JSON");
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(3),
        "{body}"
    );
    assert!(status["leader"].is_string(), "{body}");
    // The shell itself loads without credentials; it holds no data.
    let (code, shell) = http_code(&format!("{base}/ui/"), None);
    assert_eq!(code, 200);
    assert!(shell.contains("/ui/app.js"), "{shell}");

    let browser = Browser::start();
    browser.navigate(&format!("{base}/ui/"));
    browser.wait_until(WAIT, "the sign-in form", |b| b.visible("#login"));

    // Refused: no token, a wrong token, a token that may only read.
    for (token, expected) in [
        ("", "403"),
        ("not-a-token", "401"),
        (viewer.as_str(), "403"),
    ] {
        browser.execute("document.getElementById('error').textContent = '';", &[]);
        browser.type_into("#token", token);
        browser.click("#sign-in");
        browser.wait_until(WAIT, &format!("the {expected} error"), |b| {
            b.text("#error").starts_with(expected)
        });
        assert!(
            !browser.visible("#dashboard"),
            "no data shown after a refusal"
        );
        assert!(browser.visible("#login"));
    }
    let refusal = browser.text("#error");
    assert!(refusal.contains("Forbidden"), "{refusal}");

    // An administrator's token: every panel fills in.
    browser.type_into("#token", &admin);
    browser.click("#sign-in");
    browser.wait_until(WAIT, "the dashboard", |b| b.visible("#dashboard"));
    browser.wait_until(WAIT, "three members and a leader", |b| {
        let members = b.text("#members tbody");
        members.lines().count() == 3
            && members.contains("leader")
            && b.text("#leader").starts_with("leader node")
    });
    let members = browser.text("#members tbody");
    assert_eq!(members.matches("\tok").count(), 3, "all healthy: {members}");
    browser.wait_until(WAIT, "agent1 Ready", |b| {
        b.text("#nodes tbody").contains("agent1\tReady")
    });
    browser.wait_until(WAIT, "the Deployment 1/1 and its pod", |b| {
        b.text("#workloads tbody")
            .contains("Deployment\tdefault\tweb\t1/1")
            && b.text("#pods tbody").contains("web-")
    });
    browser.wait_until(WAIT, "events", |b| {
        b.text("#events tbody").contains("Scheduled")
    });
    browser.wait_until(WAIT, "the live watch", |b| b.text("#watch-state") == "live");

    // A pod created now appears without a reload, through the page's watch.
    browser.execute("window.skiffNoReload = 42;", &[]);
    k.ok(&[
        "run",
        "live-pod",
        "--image=busybox",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
    browser.wait_until(WAIT, "live-pod Running on the page", |b| {
        b.text("#pods tbody")
            .lines()
            .any(|l| l.contains("live-pod") && l.contains("Running") && l.contains("agent1"))
    });
    k.ok(&["delete", "pod", "live-pod", "--wait=false"]);
    browser.wait_until(WAIT, "live-pod gone from the page", |b| {
        !b.text("#pods tbody").contains("live-pod")
    });
    assert_eq!(
        browser.execute("return window.skiffNoReload;", &[]),
        json!(42),
        "the page was not reloaded"
    );

    // The write chart: a line drawn from /metrics samples, with a current value.
    browser.wait_until(WAIT, "the write chart", |b| {
        b.execute(
            "return document.querySelectorAll('#chart-rate polyline, #chart-latency polyline').length;",
            &[],
        ) == json!(2)
            && b.text("#rate-now").starts_with("now ")
    });
    let user = browser.text("#whoami");
    assert_eq!(user, "system:serviceaccount:default:dash-admin");

    // Deleting the admin's ServiceAccount revokes the token: the page is refused and says so.
    k.ok(&["delete", "serviceaccount", "dash-admin"]);
    browser.wait_until(WAIT, "the revoked token refused", |b| {
        b.visible("#login") && b.text("#error").starts_with("401")
    });
}
