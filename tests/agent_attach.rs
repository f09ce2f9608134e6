//! `kubectl attach` and hostPort with the `process` runtime: one member and one agent as real
//! processes on loopback (127.0.90.x), driven by the real kubectl and curl.
//! Attach: live output, stdin sent to a shell and its answers read back, a terminal for
//! `tty: true`, `kubectl run -i --rm` end to end, and the Status errors for bad requests.
//! hostPort: NODE_IP:hostPort reaches the pod's containerPort through the agent's relay, a
//! second pod asking for the same hostPort on the node does not start until the first is gone.

mod common;

use std::time::Duration;

use common::attach::{Streaming, run_once_with_input};
use common::kubectl::{Kubectl, kubectl};
use common::{Cluster, agents, wait_for};

/// The node's address (agents::start puts agent1 on 127.0.<subnet>.11).
const NODE_IP: &str = "127.0.90.11";

#[test]
fn process_runtime_attach_and_host_ports() {
    let cluster = Cluster::start(90, 1, &["--cluster-dns-listen", "off"]);
    let _agents = agents::start(&cluster, 1, &[]);
    let k = kubectl(&cluster, None);
    wait_for(Duration::from_secs(60), "the node Ready", || {
        String::from_utf8_lossy(&k.run(&["get", "nodes", "--no-headers"]).stdout)
            .contains(" Ready ")
    });
    wait_for(Duration::from_secs(30), "default namespace", || {
        k.run(&["get", "namespace", "default"]).status.success()
    });
    attach(&k);
    host_ports(&k);
}

fn phase(k: &Kubectl, pod: &str) -> String {
    let out = k.run(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl get --raw` on a pod's attach subresource (no upgrade: only its refusals matter).
fn raw_attach(k: &Kubectl, pod: &str, query: &str) -> String {
    let path = format!("/api/v1/namespaces/default/pods/{pod}/attach?{query}");
    let out = k.run(&["get", "--raw", &path]);
    assert!(!out.status.success(), "attach {pod}?{query} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn attach(k: &Kubectl) {
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  containers:
  - name: sh
    image: busybox
    command: ["sh"]
    stdin: true
---
apiVersion: v1
kind: Pod
metadata: {name: terminal}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "while true; do tty; sleep 0.3; done"]
    tty: true
    stdin: true
"#,
    );
    for pod in ["talker", "shell", "terminal"] {
        wait_for(Duration::from_secs(60), &format!("{pod} Running"), || {
            phase(k, pod) == "Running"
        });
    }

    // Live output: lines printed after attaching, not the log's.
    let tick = |line: &str| {
        line.strip_prefix("tick ")
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    std::thread::sleep(Duration::from_secs(1));
    let logged = String::from_utf8_lossy(&k.run(&["logs", "talker"]).stdout)
        .lines()
        .filter_map(tick)
        .max()
        .expect("talker logged ticks");
    let attached = Streaming::start(k, &["attach", "talker", "-c", "main"]);
    let first = attached.line(Duration::from_secs(20), "tick through attach", |l| {
        tick(l).is_some()
    });
    let second = attached.line(Duration::from_secs(5), "a later tick", |l| {
        tick(l).is_some()
    });
    let (first, second) = (tick(&first).unwrap_or(0), tick(&second).unwrap_or(0));
    assert!(
        first >= logged && second > first,
        "attach shows new output: logged up to {logged}, then {first}, {second}"
    );
    drop(attached);

    // stdin to a shell and its answers back; stdin stays open for the next client.
    let mut shell = Streaming::start(k, &["attach", "-i", "shell"]);
    shell.send("echo answer-$((40+2))\n");
    shell.line(Duration::from_secs(20), "the shell's answer", |l| {
        l == "answer-42"
    });
    drop(shell);
    let mut again = Streaming::start(k, &["attach", "-i", "shell"]);
    again.send("echo still-$((1+1))\n");
    again.line(Duration::from_secs(20), "the shell's second answer", |l| {
        l == "still-2"
    });
    drop(again);

    // A tty container: kubectl attaches with a terminal, the process sees one.
    let terminal = Streaming::start(k, &["attach", "terminal"]);
    terminal.line(Duration::from_secs(20), "a terminal name", |l| {
        l.trim().starts_with("/dev/pts/")
    });
    drop(terminal);

    // kubectl run -i --rm: attach with stdinOnce, piped input, the pod deleted after.
    run_once_with_input(k);

    // RBAC: a WebSocket attach (GET) needs `create` on pods/attach, as on kube-apiserver.
    k.ok(&[
        "create",
        "role",
        "attach-get",
        "--verb=get",
        "--resource=pods,pods/attach",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "carol-get",
        "--role=attach-get",
        "--user=carol",
    ]);
    wait_for(Duration::from_secs(10), "carol's get binding", || {
        k.run(&["get", "pod", "talker", "--as", "carol"])
            .status
            .success()
    });
    let denied = k.run(&["attach", "talker", "--as", "carol"]);
    let denied = String::from_utf8_lossy(&denied.stderr);
    assert!(
        denied.contains(r#"cannot create resource "pods/attach""#),
        "{denied}"
    );
    k.ok(&[
        "create",
        "role",
        "attach-create",
        "--verb=create",
        "--resource=pods/attach",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "carol-create",
        "--role=attach-create",
        "--user=carol",
    ]);
    let allowed = Streaming::start(k, &["attach", "talker", "--as", "carol"]);
    allowed.line(Duration::from_secs(20), "a tick attached as carol", |l| {
        tick(l).is_some()
    });
    drop(allowed);

    // Bad requests are Status errors with their codes.
    let missing = raw_attach(k, "talker", "container=nope&stdout=true");
    assert!(
        missing.contains("BadRequest") && missing.contains("container nope is not valid"),
        "{missing}"
    );
    let no_stdin = raw_attach(k, "talker", "container=main&stdin=true&stdout=true");
    assert!(
        no_stdin.contains("BadRequest") && no_stdin.contains("stdin: true"),
        "{no_stdin}"
    );
    let absent = raw_attach(k, "nobody", "stdout=true");
    assert!(absent.contains("NotFound"), "{absent}");
    let refused = k.run(&["attach", "-i", "talker"]);
    assert!(!refused.status.success(), "attach -i without stdin");
    let refused = String::from_utf8_lossy(&refused.stderr);
    assert!(refused.contains("stdin: true"), "{refused}");
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: finished}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: busybox, command: ["true"]}
---
apiVersion: v1
kind: Pod
metadata: {name: unplaced}
spec:
  nodeSelector: {nowhere: "true"}
  containers:
  - {name: main, image: busybox, command: ["true"]}
"#,
    );
    wait_for(Duration::from_secs(60), "finished Succeeded", || {
        phase(k, "finished") == "Succeeded"
    });
    let completed = raw_attach(k, "finished", "stdout=true");
    assert!(
        completed.contains("BadRequest") && completed.contains("completed pod"),
        "{completed}"
    );
    let pending = raw_attach(k, "unplaced", "stdout=true");
    assert!(
        pending.contains("BadRequest") && pending.contains("does not have a host assigned"),
        "{pending}"
    );
    k.ok(&[
        "delete",
        "pod",
        "talker",
        "shell",
        "terminal",
        "finished",
        "unplaced",
        "--wait=false",
    ]);
}

fn curl(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "3", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod serving HTTP on containerPort `port` of the node's address, asking for `host_port`.
fn web_pod(name: &str, port: u16, host_port: u16, pinned: bool) -> String {
    let node = if pinned { "nodeName: agent1" } else { "" };
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  {node}
  containers:
  - name: web
    image: busybox
    command: ["sh", "-c", "mkdir -p www && echo served-by-{name} > www/index.html && exec busybox httpd -f -p $(POD_IP):{port} -h www"]
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    ports:
    - {{containerPort: {port}, hostPort: {host_port}}}
"#
    )
}

fn host_ports(k: &Kubectl) {
    // hostPort differs from containerPort: the agent relays.
    k.apply(&web_pod("web", 39180, 39181, false));
    wait_for(Duration::from_secs(60), "web Running", || {
        phase(k, "web") == "Running"
    });
    let url = format!("http://{NODE_IP}:39181/");
    wait_for(Duration::from_secs(20), "the hostPort answers", || {
        curl(&url).contains("served-by-web")
    });
    // The same hostPort on the same node (bypassing the scheduler) waits for it.
    k.apply(&web_pod("web2", 39182, 39181, true));
    wait_for(Duration::from_secs(30), "web2's sandbox refused", || {
        let events = k.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web2",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        events.contains("hostPort 39181/TCP")
    });
    assert_ne!(phase(k, "web2"), "Running");
    assert!(
        curl(&url).contains("served-by-web"),
        "web keeps its hostPort"
    );
    k.ok(&["delete", "pod", "web"]);
    wait_for(
        Duration::from_secs(60),
        "web2 Running once web is gone",
        || phase(k, "web2") == "Running",
    );
    wait_for(Duration::from_secs(20), "the hostPort reaches web2", || {
        curl(&url).contains("served-by-web2")
    });
    k.ok(&["delete", "pod", "web2"]);
    wait_for(Duration::from_secs(30), "the hostPort released", || {
        curl(&url).is_empty()
    });
}
