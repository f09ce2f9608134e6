//! The process runtime's attachable stdio and hostPort relays, against real processes and
//! sockets on 127.0.91.1.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::host_ports::HostPorts;
use super::*;
use crate::agent::runtime::{AttachInput, AttachOutput, Limits, PortMapping};

const NODE_IP: &str = "127.0.91.1";

/// A runtime with state under `dir` running `spec` in one sandbox; the container's id.
async fn run(dir: &Path, spec: &ContainerSpec) -> (ProcessRuntime, Sandbox, String) {
    let node_ip: IpAddr = NODE_IP.parse().expect("ip");
    let runtime =
        ProcessRuntime::open(&dir.join("state"), node_ip, super::Reaper::none()).expect("runtime");
    let sandbox = runtime
        .run_sandbox(&sandbox_spec(dir))
        .await
        .expect("sandbox");
    let id = runtime
        .start_container(&sandbox, spec)
        .await
        .expect("start");
    (runtime, sandbox, id)
}

fn sandbox_spec(dir: &Path) -> SandboxSpec {
    SandboxSpec {
        uid: "uid-1".into(),
        namespace: "default".into(),
        name: "p".into(),
        hostname: "p".into(),
        host_network: false,
        pod_dir: dir.join("pod"),
        resolv_conf: dir.join("resolv.conf"),
        hosts_file: dir.join("hosts"),
        port_mappings: Vec::new(),
        labels: Default::default(),
    }
}

fn container_spec(dir: &Path, script: &str, stdin: bool, stdin_once: bool) -> ContainerSpec {
    ContainerSpec {
        name: "c".into(),
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        args: Vec::new(),
        env: Vec::new(),
        working_dir: None,
        mounts: Vec::new(),
        log_path: dir.join("logs").join("c.log"),
        limits: Limits::default(),
        tty: false,
        stdin,
        stdin_once,
        attempt: 0,
    }
}

async fn next_stdout(attachment: &mut Attachment) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(10), attachment.output.recv()).await {
        Ok(Some(AttachOutput::Stdout(data))) => Some(String::from_utf8_lossy(&data).into_owned()),
        Ok(Some(AttachOutput::Stderr(data))) => panic!("stderr: {data:?}"),
        Ok(None) => None,
        Err(_) => panic!("no output within 10 s"),
    }
}

#[tokio::test]
async fn attached_stdin_reaches_the_process_and_stdin_once_closes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = container_spec(dir.path(), "cat; echo stdin-closed", true, true);
    let (runtime, sandbox, id) = run(dir.path(), &spec).await;
    let options = AttachOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let mut attachment = runtime.attach(&id, options).await.expect("attach");
    attachment
        .input
        .send(AttachInput::Stdin(b"ping\n".to_vec()))
        .await
        .expect("send");
    assert_eq!(
        next_stdout(&mut attachment).await.as_deref(),
        Some("ping\n")
    );
    // The first client's stdin ends: with stdinOnce, cat sees its end.
    attachment
        .input
        .send(AttachInput::CloseStdin)
        .await
        .expect("close");
    assert_eq!(
        next_stdout(&mut attachment).await.as_deref(),
        Some("stdin-closed\n")
    );
    assert_eq!(next_stdout(&mut attachment).await, None, "output ends");
    let log = std::fs::read_to_string(&spec.log_path).expect("log");
    assert!(
        log.contains(" stdout F ping\n") && log.contains(" stdout F stdin-closed\n"),
        "{log}"
    );
    runtime.remove_sandbox(&sandbox.id).await.expect("remove");
}

#[tokio::test]
async fn stdin_needs_a_container_started_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = container_spec(dir.path(), "sleep 30", false, false);
    let (runtime, sandbox, id) = run(dir.path(), &spec).await;
    let options = AttachOptions {
        stdin: true,
        stdout: true,
        ..AttachOptions::default()
    };
    let refused = runtime.attach(&id, options).await.err().expect("refused");
    assert!(refused.to_string().contains("no stdin"), "{refused}");
    runtime.remove_sandbox(&sandbox.id).await.expect("remove");
}

#[tokio::test]
async fn a_tty_container_gets_a_terminal_that_attach_resizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ContainerSpec {
        tty: true,
        ..container_spec(dir.path(), "read x; stty size", true, false)
    };
    let (runtime, sandbox, id) = run(dir.path(), &spec).await;
    let options = AttachOptions {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let mut attachment = runtime.attach(&id, options).await.expect("attach");
    let input = |event| attachment.input.send(event);
    input(AttachInput::Resize {
        width: 100,
        height: 40,
    })
    .await
    .expect("resize");
    input(AttachInput::Stdin(b"go\n".to_vec()))
        .await
        .expect("send");
    // The terminal echoes the input, then the process prints the size it sees.
    let mut seen = String::new();
    while let Some(text) = next_stdout(&mut attachment).await {
        seen.push_str(&text);
    }
    assert!(
        seen.contains("go\r\n") && seen.contains("40 100"),
        "{seen:?}"
    );
    runtime.remove_sandbox(&sandbox.id).await.expect("remove");
}

/// A port on the node's address nobody listens on now.
async fn free_port() -> u16 {
    let probe = tokio::net::TcpListener::bind((NODE_IP, 0))
        .await
        .expect("bind");
    probe.local_addr().expect("addr").port()
}

#[tokio::test]
async fn host_ports_relay_and_conflict() {
    let node_ip: IpAddr = NODE_IP.parse().expect("ip");
    let app = tokio::net::TcpListener::bind((NODE_IP, 0))
        .await
        .expect("bind");
    let container_port = app.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = app.accept().await {
            let _ = conn.write_all(b"from the container").await;
        }
    });
    let host_port = free_port().await;
    let mapping = PortMapping {
        protocol: "TCP".into(),
        container_port,
        host_port,
        host_ip: None,
    };
    let ports = HostPorts::new(node_ip);
    ports
        .open("a", std::slice::from_ref(&mapping))
        .await
        .expect("open");
    let mut conn = tokio::net::TcpStream::connect((NODE_IP, host_port))
        .await
        .expect("connect to the hostPort");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("read");
    assert_eq!(answer, "from the container");
    let taken = ports
        .open("b", std::slice::from_ref(&mapping))
        .await
        .expect_err("taken");
    assert!(taken.to_string().contains("already taken"), "{taken}");
    ports.close("a").await;
    ports.open("b", &[mapping]).await.expect("free again");
    ports.close("b").await;
}
