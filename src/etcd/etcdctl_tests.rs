//! The real `etcdctl` (3.4, ETCDCTL_API=3) against these services on a loopback port, over a
//! real store without raft (`StoreBackend`). Skipped, with a note, when etcdctl is not installed.
//! End-to-end runs against skiff processes with mTLS live in tests/.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_stream::wrappers::TcpListenerStream;

use super::test_backend::StoreBackend;
use super::{EtcdLimits, KvBackend, services};

const ETCDCTL: &str = "etcdctl";

struct Etcd {
    addr: SocketAddr,
    backend: StoreBackend,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn start(limits: EtcdLimits) -> Option<Etcd> {
    let probe = Command::new(ETCDCTL)
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .await;
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("etcdctl not installed; skipping");
        return None;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let backend = StoreBackend::open();
    let routes = services(backend.clone(), limits);
    let server = tokio::spawn(async move {
        let serve = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(TcpListenerStream::new(listener));
        if let Err(err) = serve.await {
            eprintln!("test server failed: {err}");
        }
    });
    Some(Etcd {
        addr,
        backend,
        server,
    })
}

impl Etcd {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            // No scheme: for direct dials (endpoint status) etcdctl 3.4 sends an `http://` endpoint
            // verbatim as the HTTP/2 :authority, which hyper's h2 refuses as malformed.
            .arg(format!("--endpoints={}", self.addr))
            .arg("--dial-timeout=5s")
            .arg("--command-timeout=5s")
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).await.expect("write stdin");
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("etcdctl finishes")
            .expect("etcdctl output");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, b"").await
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(out.ok, "etcdctl {args:?} failed: {}", out.stderr);
        out.stdout
    }

    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            !out.ok,
            "etcdctl {args:?} should fail, printed {}",
            out.stdout
        );
        out.stdout + &out.stderr
    }
}

#[tokio::test]
async fn put_get_delete() {
    let Some(etcd) = start(EtcdLimits::default()).await else {
        return;
    };
    assert_eq!(etcd.ok(&["put", "foo", "bar"]).await, "OK\n");
    assert_eq!(etcd.ok(&["get", "foo"]).await, "foo\nbar\n");
    assert_eq!(
        etcd.ok(&["put", "--prev-kv", "foo", "baz"]).await,
        "OK\nfoo\nbar\n"
    );
    assert_eq!(
        etcd.ok(&["get", "foo", "--print-value-only"]).await,
        "baz\n"
    );
    assert_eq!(etcd.ok(&["get", "foo", "--rev=1"]).await, "foo\nbar\n");
    let old = etcd.ok(&["get", "foo", "--rev=1", "-w", "json"]).await;
    assert!(
        old.contains("\"revision\":2"),
        "an old read reports the current revision: {old}"
    );
    assert_eq!(
        etcd.ok(&["get", "foo", "--consistency=s"]).await,
        "foo\nbaz\n"
    );
    assert_eq!(etcd.ok(&["get", "missing"]).await, "");

    for (k, v) in [("/p/a", "3"), ("/p/b", "1"), ("/p/c", "2"), ("/q", "x")] {
        etcd.ok(&["put", k, v]).await;
    }
    assert_eq!(
        etcd.ok(&["get", "--prefix", "/p/", "--keys-only"]).await,
        "/p/a\n\n/p/b\n\n/p/c\n\n"
    );
    assert_eq!(
        etcd.ok(&[
            "get",
            "--prefix",
            "/p/",
            "--sort-by=VALUE",
            "--order=DESCEND",
            "--limit=2"
        ])
        .await,
        "/p/a\n3\n/p/c\n2\n"
    );
    assert_eq!(
        etcd.ok(&["get", "/p/b", "--from-key", "--keys-only"]).await,
        "/p/b\n\n/p/c\n\n/q\n\nfoo\n\n"
    );
    assert_eq!(
        etcd.ok(&["get", "/p/a", "/p/c", "--print-value-only"])
            .await,
        "3\n1\n"
    );
    let json = etcd
        .ok(&["get", "--prefix", "/p/", "--limit=1", "-w", "json"])
        .await;
    assert!(json.contains("\"more\":true"), "{json}");
    assert!(json.contains("\"count\":3"), "{json}");
    assert!(json.contains("\"cluster_id\":7"), "{json}");

    assert_eq!(etcd.ok(&["del", "--prev-kv", "foo"]).await, "1\nfoo\nbaz\n");
    assert_eq!(etcd.ok(&["del", "--prefix", "/p/"]).await, "3\n");
    assert_eq!(etcd.ok(&["del", "nothing"]).await, "0\n");
}

#[tokio::test]
async fn txn_from_stdin() {
    let Some(etcd) = start(EtcdLimits::default()).await else {
        return;
    };
    etcd.ok(&["put", "k", "v1"]).await;
    let script =
        b"value(\"k\") = \"v1\"\nmod(\"k\") > \"0\"\n\nput k v2\nget k\n\nput k failed\n\n";
    let out = etcd.run_with_stdin(&["txn"], script).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "SUCCESS\n\nOK\n\nk\nv2\n");
    let out = etcd.run_with_stdin(&["txn"], script).await;
    assert_eq!(out.stdout, "FAILURE\n\nOK\n");
    assert_eq!(
        etcd.ok(&["get", "k", "--print-value-only"]).await,
        "failed\n"
    );

    let dup = etcd
        .run_with_stdin(&["txn"], b"\nput a 1\nput a 2\n\n\n")
        .await;
    assert!(
        dup.stderr
            .contains("etcdserver: duplicate key given in txn request"),
        "{}",
        dup.stderr
    );
}

#[tokio::test]
async fn compaction_and_errors() {
    let Some(etcd) = start(EtcdLimits {
        max_request_bytes: 64 * 1024,
        max_txn_ops: 128,
    })
    .await
    else {
        return;
    };
    for v in ["1", "2", "3"] {
        etcd.ok(&["put", "k", v]).await;
    }
    assert_eq!(
        etcd.ok(&["compaction", "2"]).await,
        "compacted revision 2\n"
    );
    assert_eq!(
        etcd.ok(&["compaction", "--physical", "3"]).await,
        "compacted revision 3\n"
    );
    let err = etcd.fails(&["get", "k", "--rev=1"]).await;
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    let err = etcd.fails(&["get", "k", "--rev=99"]).await;
    assert!(
        err.contains("etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );
    let err = etcd.fails(&["put", "k", "v", "--lease=1234"]).await;
    assert!(err.contains("leases are not supported"), "{err}");

    let big = vec![b'x'; 100 * 1024];
    let out = etcd.run_with_stdin(&["put", "big"], &big).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("etcdserver: request is too large"),
        "{}",
        out.stderr
    );

    let err = etcd.fails(&["lease", "grant", "10"]).await;
    assert!(err.contains("Unimplemented"), "{err}");
}

#[tokio::test]
async fn watch_streams_events_and_reports_compaction() {
    let Some(etcd) = start(EtcdLimits::default()).await else {
        return;
    };
    // Start from a known revision so that the first put is seen however long etcdctl takes to
    // set the watch up.
    let from = (etcd.backend.header().revision + 1).to_string();
    let mut child = etcd
        .command(&["watch", "--prefix", "/w/", "--prev-kv", "--rev", &from])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl watch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    etcd.ok(&["put", "/w/a", "1"]).await;
    while seen.len() < 3 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("watch output in time");
        seen.push(line.expect("read").expect("watch still running"));
    }
    assert_eq!(seen, ["PUT", "/w/a", "1"]);
    etcd.ok(&["put", "/w/a", "2"]).await;
    etcd.ok(&["del", "/w/a"]).await;
    let mut rest = Vec::new();
    while rest.len() < 10 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("watch output in time");
        rest.push(line.expect("read").expect("watch still running"));
    }
    // With --prev-kv every event prints the previous pair first (none for a create).
    assert_eq!(
        rest,
        [
            "PUT", "/w/a", "1", "/w/a", "2", "DELETE", "/w/a", "2", "/w/a", ""
        ]
    );
    child.kill().await.expect("kill watch");

    let current = etcd.backend.header().revision;
    etcd.ok(&["compaction", &current.to_string()]).await;
    let out = etcd.run(&["watch", "/w/a", "--rev=1"]).await;
    assert!(
        out.stderr.contains(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        ),
        "stdout {} stderr {}",
        out.stdout,
        out.stderr
    );
}

#[tokio::test]
async fn status_health_and_members() {
    let Some(etcd) = start(EtcdLimits::default()).await else {
        return;
    };
    let status = etcd.ok(&["endpoint", "status"]).await;
    assert!(
        status.contains("3.4.0") && status.contains(&etcd.addr.to_string()),
        "{status}"
    );
    let status = etcd.ok(&["endpoint", "status", "-w", "json"]).await;
    assert!(status.contains("\"leader\":1"), "{status}");
    // etcdctl 3.4 prints the health verdict on stderr.
    let health = etcd.run(&["endpoint", "health"]).await;
    assert!(
        health.ok && health.stderr.contains("is healthy"),
        "{}",
        health.stderr
    );
    let members = etcd.ok(&["member", "list"]).await;
    assert_eq!(
        members,
        "1, started, test, https://127.0.0.1:2380, https://127.0.0.1:2379, false\n"
    );
    let err = etcd
        .fails(&["member", "add", "x", "--peer-urls=https://10.0.0.9:2380"])
        .await;
    assert!(err.contains("not supported"), "{err}");
    let alarms = etcd.ok(&["alarm", "list"]).await;
    assert_eq!(alarms, "");
}

#[tokio::test]
async fn interactive_watch_answers_progress_requests() {
    let Some(etcd) = start(EtcdLimits::default()).await else {
        return;
    };
    etcd.ok(&["put", "/w/a", "1"]).await;
    let rev = etcd.backend.header().revision;
    let mut child = etcd
        .command(&["watch", "-i"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl watch -i");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"watch /w/a\nprogress\n")
        .await
        .expect("write commands");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("progress in time")
        .expect("read")
        .expect("watch still running");
    assert_eq!(line, format!("progress notify: {rev}"));
    etcd.ok(&["put", "/w/a", "2"]).await;
    let mut event = Vec::new();
    while event.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("event in time");
        event.push(line.expect("read").expect("watch still running"));
    }
    assert_eq!(event, ["PUT", "/w/a", "2"]);
    child.kill().await.expect("kill watch");
}
