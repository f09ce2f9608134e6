//! Every long-running role exits non-zero with a clear message on bad flags, a used port, or a
//! data dir that belongs to another cluster; shell completion scripts load in the real shell.

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(SKIFF)
        .args(args)
        .env("SKIFF_LOG", "error")
        .output()
        .expect("run skiff");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn bad_flags_are_refused() {
    let (ok, text) = run(&[
        "server",
        "--init",
        "--advertise",
        "not-an-ip",
        "--data",
        "/nonexistent/x",
    ]);
    assert!(!ok);
    assert!(text.contains("--advertise must be an IP address"), "{text}");
    let (ok, text) = run(&["server", "--join", "https://127.0.0.1:6443"]);
    assert!(!ok);
    assert!(text.contains("--token"), "{text}");
    // A runtime without workers could run nothing.
    let (ok, text) = run(&["server", "--init", "--worker-threads", "0"]);
    assert!(!ok);
    assert!(
        text.contains("--worker-threads") && text.contains("not in 1..=1024"),
        "{text}"
    );
    let (ok, text) = run(&[
        "server",
        "--join",
        "https://127.0.0.1:6443",
        "--token",
        "garbage",
        "--advertise",
        "127.0.17.9",
    ]);
    assert!(!ok);
    assert!(text.contains("K10"), "malformed token is explained: {text}");
    // Raft timings raft cannot work with are refused before anything is bound or written.
    let (ok, text) = run(&[
        "server",
        "--init",
        "--advertise",
        "127.0.17.9",
        "--data",
        "/nonexistent/x",
        "--heartbeat-interval",
        "200",
        "--election-timeout",
        "300",
    ]);
    assert!(!ok);
    assert!(
        text.contains("must be at least twice --heartbeat-interval"),
        "{text}"
    );
}

#[test]
fn a_used_port_is_reported() {
    let _holder = std::net::TcpListener::bind("127.0.17.1:6443").expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, text) = run(&[
        "server",
        "--init",
        "--advertise",
        "127.0.17.1",
        "--data",
        path_str(dir.path()),
    ]);
    assert!(!ok);
    assert!(text.contains("cannot listen on 127.0.17.1:6443"), "{text}");
    assert!(
        !dir.path().join("node.json").exists(),
        "nothing was created"
    );
}

#[test]
fn a_data_dir_of_another_cluster_is_refused() {
    let mut a = Cluster::start(18, 1, &[]);
    let b = Cluster::start(19, 1, &[]);
    let other_token = b.token();
    let a_data = a.nodes[0].data.clone();
    a.kill(0);
    let (ok, text) = run(&[
        "server",
        "--join",
        "https://127.0.19.1:6443",
        "--token",
        &other_token,
        "--advertise",
        "127.0.18.1",
        "--data",
        path_str(&a_data),
    ]);
    assert!(!ok);
    assert!(text.contains("belongs to cluster"), "{text}");
}

#[test]
fn completion_scripts_load_in_bash_and_unknown_shells_are_refused() {
    let (ok, script) = run(&["completion", "bash"]);
    assert!(ok && script.contains("skiff"), "{script}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("skiff.bash");
    std::fs::write(&path, &script).expect("write script");
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p skiff", path.display()))
        .output()
        .expect("run bash");
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    for shell in ["zsh", "fish"] {
        let (ok, script) = run(&["completion", shell]);
        assert!(ok && script.contains("server"), "{shell}: {script}");
    }
    let (ok, text) = run(&["completion", "tcsh"]);
    assert!(!ok && text.contains("invalid value"), "{text}");
}
