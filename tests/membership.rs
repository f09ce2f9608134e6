//! Membership changes and the local all-in-one: `skiff server --remove`, `skiff up`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn a_member_is_removed_and_the_rest_keep_serving() {
    let mut cluster = Cluster::start(20, 3, &[]);
    let out = Command::new(SKIFF)
        .args(["server", "--remove", "node3", "--data"])
        .arg(&cluster.nodes[0].data)
        .output()
        .expect("skiff server --remove");
    assert_ok(&out, "remove");
    wait_for(Duration::from_secs(20), "two members left", || {
        cluster
            .status(0)
            .and_then(|s| s["members"].as_array().map(|m| m.len()))
            == Some(2)
    });
    cluster.kill(2);
    assert_ok(
        &cluster.etcdctl(1, &["put", "/after-remove", "ok"]),
        "put after remove",
    );
    let value = assert_ok(
        &cluster.etcdctl(0, &["get", "/after-remove", "--print-value-only"]),
        "get",
    );
    assert_eq!(value.trim(), "ok");
}

#[test]
fn skiff_up_starts_three_members_and_stops_on_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("skiff.kubeconfig");
    let mut up = Command::new(SKIFF)
        .arg("up")
        .arg("--data")
        .arg(dir.path().join("up"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("skiff up");
    wait_for(
        Duration::from_secs(90),
        "skiff up to write the kubeconfig",
        || kubeconfig.exists(),
    );
    let status = Command::new(SKIFF)
        .args(["status", "-o", "json", "--data"])
        .arg(dir.path().join("up/node1"))
        .output()
        .expect("status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(
        status["members"].as_array().map(|m| m.len()),
        Some(3),
        "{status}"
    );
    assert!(status["leader"].is_string());
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGINT);
    }
    let mut exited = None;
    for _ in 0..200 {
        if let Ok(Some(code)) = up.try_wait() {
            exited = Some(code);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = exited.unwrap_or_else(|| {
        let _ = up.kill();
        panic!("skiff up did not stop within 20 s of SIGINT")
    });
    assert!(code.success(), "skiff up exits 0 on Ctrl-C: {code:?}");
    // Every member process is gone: the API port is free again.
    assert!(
        std::net::TcpListener::bind("127.0.0.1:6443").is_ok(),
        "members stopped"
    );
}
