//! Container probes (liveness, readiness, startup) with the kubelet's semantics: an initial
//! delay, a period, a timeout, success/failure thresholds; liveness and readiness wait for the
//! startup probe. Each probe of a running container is a task that publishes its verdict on a
//! watch channel the pod worker reads, and reports failures so they become `Unhealthy` events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::agent::runtime::Runtime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub fn label(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }

    fn field(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Startup => "startupProbe",
        }
    }
}

/// The current verdict of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet (readiness counts this as not ready, liveness as alive).
    Unknown,
    Success,
    Failure,
}

/// A failed probe, for the `Unhealthy` event.
#[derive(Debug)]
pub struct ProbeFailure {
    pub container: String,
    pub kind: ProbeKind,
    pub message: String,
}

/// Where probes connect and exec.
#[derive(Clone)]
pub struct Target {
    pub container: String,
    pub container_id: String,
    /// The pod's IP (httpGet/tcpSocket default host).
    pub ip: String,
    /// The container spec (named ports).
    pub spec: Value,
    pub runtime: Arc<dyn Runtime>,
}

/// The running probes of one container; dropping it stops them.
pub struct Probes {
    pub liveness: Option<watch::Receiver<Verdict>>,
    pub readiness: Option<watch::Receiver<Verdict>>,
    pub startup: Option<watch::Receiver<Verdict>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Probes {
    /// Starts the probes `target.spec` declares.
    pub fn start(target: Target, failures: mpsc::Sender<ProbeFailure>) -> Probes {
        let mut tasks = Vec::new();
        let startup_spec = target.spec.get(ProbeKind::Startup.field()).cloned();
        let (startup_tx, startup_rx) = watch::channel(Verdict::Unknown);
        let startup = startup_spec.map(|spec| {
            tasks.push(tokio::spawn(run(
                ProbeKind::Startup,
                spec,
                target.clone(),
                startup_tx,
                None,
                failures.clone(),
            )));
            startup_rx.clone()
        });
        let mut start = |kind: ProbeKind, initial: Verdict| {
            let spec = target.spec.get(kind.field()).cloned()?;
            let (tx, rx) = watch::channel(initial);
            let gate = startup.clone();
            tasks.push(tokio::spawn(run(
                kind,
                spec,
                target.clone(),
                tx,
                gate,
                failures.clone(),
            )));
            Some(rx)
        };
        let liveness = start(ProbeKind::Liveness, Verdict::Unknown);
        let readiness = start(ProbeKind::Readiness, Verdict::Unknown);
        Probes {
            liveness,
            readiness,
            startup,
            tasks,
        }
    }
}

fn seconds(spec: &Value, field: &str, default: u64) -> u64 {
    spec.get(field).and_then(Value::as_u64).unwrap_or(default)
}

/// The probe loop: waits for the startup gate, the initial delay, then probes every period.
async fn run(
    kind: ProbeKind,
    spec: Value,
    target: Target,
    verdict: watch::Sender<Verdict>,
    gate: Option<watch::Receiver<Verdict>>,
    failures: mpsc::Sender<ProbeFailure>,
) {
    if let Some(mut gate) = gate
        && gate.wait_for(|v| *v == Verdict::Success).await.is_err()
    {
        return;
    }
    let period = Duration::from_secs(seconds(&spec, "periodSeconds", 10).max(1));
    let timeout = Duration::from_secs(seconds(&spec, "timeoutSeconds", 1).max(1));
    let failure_threshold = seconds(&spec, "failureThreshold", 3).max(1);
    let success_threshold = seconds(&spec, "successThreshold", 1).max(1);
    tokio::time::sleep(Duration::from_secs(seconds(
        &spec,
        "initialDelaySeconds",
        0,
    )))
    .await;
    let (mut successes, mut failed) = (0u64, 0u64);
    loop {
        let outcome = match tokio::time::timeout(timeout, probe_once(&spec, &target)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
        };
        match outcome {
            Ok(()) => {
                failed = 0;
                successes += 1;
                if successes >= success_threshold {
                    verdict.send_replace(Verdict::Success);
                    // A startup probe is done once it succeeds.
                    if kind == ProbeKind::Startup {
                        return;
                    }
                }
            }
            Err(message) => {
                successes = 0;
                failed += 1;
                let _ = failures
                    .send(ProbeFailure {
                        container: target.container.clone(),
                        kind,
                        message,
                    })
                    .await;
                if failed >= failure_threshold {
                    verdict.send_replace(Verdict::Failure);
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Resolves a probe's port: a number or the name of a container port.
fn port(spec: &Value, container: &Value) -> Result<u16, String> {
    match spec.get("port") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("invalid port {n}")),
        Some(Value::String(name)) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("no container port named {name:?}"))
        }
        _ => Err("probe without a port".into()),
    }
}

fn host(spec: &Value, target: &Target) -> String {
    match spec.get("host").and_then(Value::as_str) {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => target.ip.clone(),
    }
}

/// Runs a probe action once (also used for lifecycle hooks).
pub async fn probe_once(spec: &Value, target: &Target) -> Result<(), String> {
    if let Some(exec) = spec.get("exec") {
        let argv: Vec<String> = exec
            .get("command")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let mut command = target
            .runtime
            .exec_command(&target.container_id, &argv)
            .await
            .map_err(|e| e.to_string())?;
        command.stdin(std::process::Stdio::null());
        command.kill_on_drop(true);
        let output = command
            .output()
            .await
            .map_err(|e| format!("exec failed: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(format!(
            "command {:?} exited with {}: {}",
            argv.join(" "),
            output.status.code().unwrap_or(-1),
            text.trim()
        ));
    }
    if let Some(http) = spec.get("httpGet") {
        return http_get(http, target).await;
    }
    if let Some(tcp) = spec.get("tcpSocket") {
        let addr = format!("{}:{}", host(tcp, target), port(tcp, &target.spec)?);
        return tokio::net::TcpStream::connect(&addr)
            .await
            .map(|_| ())
            .map_err(|e| format!("dial tcp {addr}: {e}"));
    }
    if let Some(grpc) = spec.get("grpc") {
        return grpc_health(grpc, target).await;
    }
    Err("probe has no action".into())
}

async fn http_get(http: &Value, target: &Target) -> Result<(), String> {
    let scheme = http.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
    if scheme.eq_ignore_ascii_case("HTTPS") {
        return Err("HTTPS probes are not supported by this node".into());
    }
    let port = port(http, &target.spec)?;
    let host = host(http, target);
    let path = match http.get("path").and_then(Value::as_str) {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
        None => "/".into(),
    };
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|_| format!("invalid probe address {host}:{port}"))?;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("Get \"http://{addr}{path}\": dial tcp {addr}: {e}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for header in http
        .get("httpHeaders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = header.get("name").and_then(Value::as_str).unwrap_or("");
        let value = header.get("value").and_then(Value::as_str).unwrap_or("");
        if !name.is_empty() && !name.contains(['\r', '\n']) && !value.contains(['\r', '\n']) {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "malformed HTTP response".to_string())?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// `grpc.health.v1.Health/Check` request and response (the two fields used).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// SERVING in grpc.health.v1.
const SERVING: i32 = 1;

async fn grpc_health(grpc: &Value, target: &Target) -> Result<(), String> {
    let port = port(grpc, &target.spec)?;
    let service = grpc
        .get("service")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}:{port}", target.ip))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service {}:{port}: {e}", target.ip))?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| e.to_string())?;
    let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    let response = client
        .unary(
            tonic::Request::new(HealthCheckRequest { service }),
            path,
            codec,
        )
        .await
        .map_err(|s| format!("health rpc failed: {}", s.message()))?;
    if response.get_ref().status == SERVING {
        Ok(())
    } else {
        Err(format!(
            "service unhealthy (responded with status {})",
            response.get_ref().status
        ))
    }
}
