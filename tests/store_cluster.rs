//! Acceptance tests of the replicated store (issue: replicated MVCC store), against three real
//! `skiff server` processes on loopback, driven by the real etcdctl 3.4.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn three_nodes_replicate_fail_over_and_catch_up() {
    let mut cluster = Cluster::start(11, 3, &[]);

    // Writes through every member are read back (linearizably) from every member.
    for i in 0..3 {
        assert_ok(
            &cluster.etcdctl(i, &["put", &format!("/t/from-{i}"), &format!("v{i}")]),
            "put",
        );
    }
    for i in 0..3 {
        let out = assert_ok(
            &cluster.etcdctl(i, &["get", "/t/", "--prefix", "--print-value-only"]),
            "get",
        );
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            vec!["v0", "v1", "v2"],
            "member {i} sees every write"
        );
    }

    // SIGKILL the leader: a new leader accepts writes within 2 s.
    let leader = cluster.leader();
    let survivor = (leader + 1) % 3;
    cluster.kill(leader);
    let killed_at = Instant::now();
    let mut accepted = None;
    while killed_at.elapsed() < Duration::from_secs(10) {
        let out = cluster.etcdctl(
            survivor,
            &["put", "/t/after-kill", "yes", "--command-timeout=1s"],
        );
        if out.status.success() {
            accepted = Some(killed_at.elapsed());
            break;
        }
    }
    let failover = accepted.expect("a write succeeded after the leader was killed");
    eprintln!("failover: first successful write {failover:?} after SIGKILL of the leader");
    assert!(
        failover <= Duration::from_secs(2),
        "failover took {failover:?}"
    );

    // More writes while it is down, then it comes back and catches up.
    for n in 0..20 {
        assert_ok(
            &cluster.etcdctl(survivor, &["put", &format!("/t/while-down-{n:02}"), "x"]),
            "put",
        );
    }
    cluster.restart(leader);
    wait_for(
        Duration::from_secs(30),
        "restarted member to catch up",
        || {
            let out = cluster.etcdctl(
                leader,
                &[
                    "get",
                    "/t/while-down-19",
                    "--print-value-only",
                    "--consistency=s",
                ],
            );
            out.status.success() && stdout(&out).trim() == "x"
        },
    );
    assert_eq!(
        cluster.count(leader, "/t/", true),
        24,
        "restarted member has all 24 keys"
    );
}

#[test]
fn lagging_follower_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(
        12,
        3,
        &["--snapshot-after-logs", "50", "--logs-to-keep", "5"],
    );
    cluster.kill(2);
    let leader = cluster.leader();
    for n in 0..200 {
        assert_ok(
            &cluster.etcdctl(leader, &["put", &format!("/snap/{n:03}"), &format!("{n}")]),
            "put",
        );
    }
    cluster.restart(2);
    wait_for(
        Duration::from_secs(60),
        "lagging member to receive the snapshot",
        || {
            let out = cluster.etcdctl(
                2,
                &["get", "/snap/199", "--print-value-only", "--consistency=s"],
            );
            out.status.success() && stdout(&out).trim() == "199"
        },
    );
    assert_eq!(cluster.count(2, "/snap/", true), 200);
    let log = std::fs::read_to_string(cluster.nodes[2].log_path()).unwrap_or_default();
    assert!(
        log.contains("snapshot"),
        "member 3 log mentions the installed snapshot"
    );
}

#[test]
fn stale_mod_revision_txn_fails_and_changes_nothing() {
    let cluster = Cluster::start(13, 3, &[]);
    assert_ok(&cluster.etcdctl(0, &["put", "/cas/k", "v1"]), "put");
    let out = assert_ok(
        &cluster.etcdctl(0, &["get", "/cas/k", "--write-out=fields"]),
        "get",
    );
    let stale = field(&out, "\"ModRevision\"");
    assert_ok(&cluster.etcdctl(1, &["put", "/cas/k", "v2"]), "put");

    let mut txn = cluster.etcdctl_command(2, &["txn"]);
    txn.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = txn.spawn().expect("etcdctl txn");
    write!(
        child.stdin.take().expect("stdin"),
        "mod(\"/cas/k\") = \"{stale}\"\n\nput /cas/k v3\n\nget /cas/k\n\n"
    )
    .expect("write txn");
    let out = assert_ok(&child.wait_with_output().expect("txn output"), "txn");
    assert!(out.starts_with("FAILURE"), "stale compare fails: {out}");
    assert!(
        out.contains("v2"),
        "failure branch read the current value: {out}"
    );
    for i in 0..3 {
        let value = assert_ok(
            &cluster.etcdctl(i, &["get", "/cas/k", "--print-value-only"]),
            "get",
        );
        assert_eq!(value.trim(), "v2", "nothing changed on member {i}");
    }
}

fn field(fields_output: &str, name: &str) -> i64 {
    fields_output
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {fields_output}"))
}
