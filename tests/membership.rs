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

/// Stops a `skiff up` the test started even when an assertion fails (SIGINT: it cleans up
/// its members, agents and namespaces), SIGKILL if it does not go within 30 s.
struct UpGuard(std::process::Child);

impl Drop for UpGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGINT);
        }
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Both layouts, one after the other (they share 127.0.0.1:6443): the process runtime
/// anywhere, then — as root with containerd installed (CI) — network-namespace hosts with
/// real containers.
#[test]
fn skiff_up_brings_up_ready_nodes_and_stops_on_sigint() {
    skiff_up_starts_members_and_agents_and_stops_on_sigint("process", "process runtime");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping skiff up's containerd layout: needs root");
        return;
    }
    skiff_up_starts_members_and_agents_and_stops_on_sigint("containerd", "with containerd");
}

fn skiff_up_starts_members_and_agents_and_stops_on_sigint(runtime: &str, says: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("skiff.kubeconfig");
    let data = dir.path().join("up");
    let mut up = UpGuard(
        Command::new(SKIFF)
            .arg("up")
            .arg("--runtime")
            .arg(runtime)
            .arg("--data")
            .arg(&data)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("skiff up"),
    );
    let up = &mut up.0;
    // "skiff is up" comes once every node is Ready (the first-hour goal: within 60 s).
    let started = std::time::Instant::now();
    let stdout = up.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("skiff up printed nothing within 120 s"));
    assert!(
        banner.starts_with("skiff is up") && banner.contains(says),
        "{banner}"
    );
    eprintln!("skiff up ({runtime}) ready after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "nodes Ready within 60 s"
    );
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let nodes = kubectl(&["get", "nodes", "--no-headers"]);
    assert_eq!(
        nodes.lines().filter(|l| l.contains(" Ready ")).count(),
        2,
        "{nodes}"
    );
    kubectl(&[
        "run",
        "hello",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "echo hello from up; sleep 3600",
    ]);
    wait_for(Duration::from_secs(60), "the pod's log", || {
        kubectl(&["logs", "hello"]).contains("hello from up")
    });
    let status = Command::new(SKIFF)
        .args([
            "status",
            "-o",
            "json",
            "--server",
            "https://127.0.0.1:6443",
            "--data",
        ])
        .arg(data.join("node1"))
        .output()
        .expect("status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(
        status["members"].as_array().map(|m| m.len()),
        Some(3),
        "{status}"
    );
    assert!(status["leader"].is_string());
    // A second `skiff up` on the same data is refused while this one runs.
    let second = Command::new(SKIFF)
        .arg("up")
        .arg("--data")
        .arg(&data)
        .output()
        .expect("skiff up");
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGINT);
    }
    let mut exited = None;
    for _ in 0..300 {
        if let Ok(Some(code)) = up.try_wait() {
            exited = Some(code);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = exited.unwrap_or_else(|| {
        let _ = up.kill();
        panic!("skiff up did not stop within 30 s of SIGINT")
    });
    assert!(code.success(), "skiff up exits 0 on Ctrl-C: {code:?}");
    // Every member and agent is gone: the API and kubelet ports are free again, and the
    // containerd layout's namespaces are deleted.
    assert!(
        std::net::TcpListener::bind("127.0.0.1:6443").is_ok(),
        "members stopped"
    );
    assert!(
        std::net::TcpListener::bind("127.0.0.11:10250").is_ok(),
        "agents stopped"
    );
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains("skiff-up-"));
    // And so is the pod: no process of it (its containers set HOSTNAME to the pod's name) is
    // left running under init.
    let pod_processes = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
                environ
                    .split(|byte| *byte == 0)
                    .any(|var| var == b"HOSTNAME=hello")
            })
            .filter(|entry| {
                // Zombies have left everything behind but their exit status.
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut left = pod_processes();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        left = pod_processes();
    }
    assert!(
        left.is_empty(),
        "the pod's processes {left:?} outlived skiff up"
    );
    // --down removes what it made.
    let down = Command::new(SKIFF)
        .args(["up", "--down", "--data"])
        .arg(&data)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .expect("skiff up --down");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!data.exists() && !kubeconfig.exists());
}
