//! Watch guarantees across members and a leader kill, resume and compaction, with etcdctl.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

struct WatchProcess {
    child: Child,
    out: std::path::PathBuf,
}

fn start_watch(
    cluster: &Cluster,
    endpoints: &str,
    args: &[&str],
    out: std::path::PathBuf,
) -> WatchProcess {
    let file = std::fs::File::create(&out).expect("watch output");
    let mut cmd = cluster.etcdctl_command(0, &["watch", "-w", "json"]);
    cmd.args(args);
    // etcdctl keeps the last --endpoints flag: the watcher's own list.
    cmd.arg("--endpoints").arg(endpoints);
    let child = cmd
        .stdout(Stdio::from(file))
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    WatchProcess { child, out }
}

/// (revision, key, value) of every event a watcher printed.
fn events(path: &std::path::Path) -> Vec<(i64, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut all = Vec::new();
    for line in text.lines() {
        let Ok(resp) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for ev in resp["Events"].as_array().cloned().unwrap_or_default() {
            let kv = &ev["kv"];
            let decode = |v: &serde_json::Value| {
                v.as_str()
                    .map(|s| {
                        String::from_utf8_lossy(&b64.decode(s).unwrap_or_default()).to_string()
                    })
                    .unwrap_or_default()
            };
            all.push((
                kv["mod_revision"].as_i64().unwrap_or(0),
                decode(&kv["key"]),
                decode(&kv["value"]),
            ));
        }
    }
    all
}

#[test]
fn watchers_on_every_member_see_the_same_history_across_a_leader_kill() {
    let mut cluster = Cluster::start(14, 3, &[]);
    assert_ok(&cluster.etcdctl(0, &["put", "/w/start", "0"]), "put");
    let leader = cluster.leader();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let dir = cluster.dir.path().to_path_buf();
    let mut watchers = Vec::new();
    for (n, i) in [leader, followers[0], followers[1]].into_iter().enumerate() {
        // The watcher on the leader may fail over to another member when the leader dies.
        let endpoints = format!(
            "{},{}",
            cluster.nodes[i].client_endpoint(),
            cluster.nodes[followers[0]].client_endpoint()
        );
        watchers.push(start_watch(
            &cluster,
            &endpoints,
            &["/w/", "--prefix"],
            dir.join(format!("watch{n}.json")),
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let writer = followers[1];
    for n in 0..60 {
        if n == 30 {
            cluster.kill(leader);
        }
        let key = format!("/w/k{n:02}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = cluster.etcdctl(
                writer,
                &["put", &key, &format!("v{n}"), "--command-timeout=2s"],
            );
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "put {key} kept failing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let final_rev = {
        let out = assert_ok(
            &cluster.etcdctl(writer, &["get", "/w/k59", "--write-out=json"]),
            "get",
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["header"]["revision"].as_i64().expect("revision")
    };
    wait_for(
        Duration::from_secs(30),
        "every watcher to reach the final revision",
        || {
            watchers
                .iter()
                .all(|w| events(&w.out).last().is_some_and(|e| e.0 >= final_rev))
        },
    );
    for w in watchers.iter_mut() {
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
    let histories: Vec<_> = watchers.iter().map(|w| events(&w.out)).collect();
    for (n, h) in histories.iter().enumerate() {
        let revisions: Vec<i64> = h.iter().map(|e| e.0).collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "watcher {n}: ordered and unique: {revisions:?}"
        );
        let keys: BTreeSet<&str> = h.iter().map(|e| e.1.as_str()).collect();
        for k in 0..60 {
            assert!(
                keys.contains(format!("/w/k{k:02}").as_str()),
                "watcher {n} got /w/k{k:02}"
            );
        }
    }
    assert_eq!(
        histories[0], histories[1],
        "leader-side and follower watchers agree"
    );
    assert_eq!(histories[1], histories[2], "follower watchers agree");

    // Resume from a revision in the middle: exactly the suffix.
    let middle = histories[1][20].0;
    let mut resumed = start_watch(
        &cluster,
        &cluster.nodes[writer].client_endpoint(),
        &["/w/", "--prefix", &format!("--rev={middle}")],
        dir.join("resumed.json"),
    );
    let expected: Vec<_> = histories[1]
        .iter()
        .filter(|e| e.0 >= middle)
        .cloned()
        .collect();
    wait_for(Duration::from_secs(15), "resumed watcher", || {
        events(&resumed.out).len() >= expected.len()
    });
    let _ = resumed.child.kill();
    let _ = resumed.child.wait();
    assert_eq!(
        events(&resumed.out),
        expected,
        "a watch resumed from {middle} sees exactly what followed"
    );

    // Compact, then a watch from before the compaction is refused.
    assert_ok(
        &cluster.etcdctl(writer, &["compaction", &middle.to_string()]),
        "compaction",
    );
    let out = cluster.etcdctl(writer, &["watch", "/w/", "--prefix", "--rev=2"]);
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("compacted"),
        "watch from a compacted revision is refused: {text}"
    );
}
