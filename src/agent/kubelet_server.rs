//! The Kubelet API of this node (gRPC, mutual TLS, port 10250): the API server relays
//! `kubectl logs`, `exec`, `attach` and `port-forward` here, and reads usage for `kubectl top`.
//! Only callers in `system:masters` (the members' kubelet-client identity, or an admin) are
//! served: other nodes' certificates are signed by the same CA and must not read this node's
//! pods.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skiff_proto::agent::kubelet_server::{Kubelet, KubeletServer};
use skiff_proto::agent::{
    ContainerUsage, ExecInput, ExecOutput, ExecStart, LogChunk, LogsRequest, PortForwardInput,
    PortForwardOutput, UsageRequest, UsageResponse, exec_input, exec_output, port_forward_input,
    port_forward_output,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info_span};

use super::control_plane::Credentials;
use super::logs::{self, LogOptions};
use super::pods::{PodRegistry, RegisteredPod};
use super::runtime::{AttachInput, AttachOptions, AttachOutput, Attachment, Runtime};

/// The group whose members may use a node's Kubelet API.
const ALLOWED_GROUP: &str = "system:masters";

pub struct KubeletService {
    registry: Arc<PodRegistry>,
    runtime: Arc<dyn Runtime>,
}

/// Binds the Kubelet port and serves it in the background.
pub async fn serve(
    listen: SocketAddr,
    credentials: &Credentials,
    registry: Arc<PodRegistry>,
    runtime: Arc<dyn Runtime>,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} for the Kubelet API: {e}"))?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            &credentials.cert_pem,
            &credentials.key_pem,
        ))
        .client_ca_root(Certificate::from_pem(&credentials.ca_pem));
    let service = KubeletServer::new(KubeletService { registry, runtime });
    let server = Server::builder()
        .tls_config(tls)?
        .add_service(service)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    Ok(tokio::spawn(server))
}

/// Refuses callers whose certificate is not in `system:masters`.
fn authorize<T>(request: &Request<T>) -> Result<(), Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let first = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
    let allowed = cert
        .subject()
        .iter_organization()
        .any(|o| o.as_str().is_ok_and(|o| o == ALLOWED_GROUP));
    if allowed {
        Ok(())
    } else {
        Err(Status::permission_denied(
            "only the control plane may use the Kubelet API",
        ))
    }
}

impl KubeletService {
    fn pod(&self, namespace: &str, name: &str) -> Result<RegisteredPod, Status> {
        self.registry.get(namespace, name).ok_or_else(|| {
            Status::not_found(format!(
                "pod {namespace}/{name} is not running on this node"
            ))
        })
    }

    /// An exec or attach stream: its first message names the container, which must run.
    /// Returns the rest of the stream, that message and the container's runtime id.
    async fn open_stream(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<(Streaming<ExecInput>, ExecStart, String), Status> {
        authorize(&request)?;
        let mut input = request.into_inner();
        let start = match input.message().await? {
            Some(ExecInput {
                input: Some(exec_input::Input::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must name the container",
                ));
            }
        };
        let pod = self.pod(&start.namespace, &start.pod)?;
        let entry = container(&pod, &start.container, &start.pod)?;
        let id = entry.id.clone().filter(|_| entry.running).ok_or_else(|| {
            Status::failed_precondition(format!("container {} is not running", start.container))
        })?;
        Ok((input, start, id))
    }
}

/// The named container, or the pod's only app container when no name is given.
fn container<'a>(
    pod: &'a RegisteredPod,
    name: &str,
    pod_name: &str,
) -> Result<&'a super::pods::ContainerEntry, Status> {
    if name.is_empty() {
        return match pod.containers.last() {
            Some((_, entry)) => Ok(entry),
            None => Err(Status::not_found(format!(
                "pod {pod_name} has no containers"
            ))),
        };
    }
    pod.containers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, e)| e)
        .ok_or_else(|| {
            Status::not_found(format!("container {name} is not valid for pod {pod_name}"))
        })
}

type ByteStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Kubelet for KubeletService {
    type LogsStream = ByteStream<LogChunk>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        authorize(&request)?;
        let r = request.into_inner();
        let pod = self.pod(&r.namespace, &r.pod)?;
        let entry = container(&pod, &r.container, &r.pod)?;
        let path = if r.previous {
            entry.previous_log.clone().ok_or_else(|| {
                Status::invalid_argument(format!(
                    "previous terminated container {:?} in pod {:?} not found",
                    r.container, r.pod
                ))
            })?
        } else {
            entry.log.clone().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "container {:?} in pod {:?} is waiting to start",
                    r.container, r.pod
                ))
            })?
        };
        let options = LogOptions {
            follow: r.follow && !r.previous,
            tail_lines: (r.tail_lines >= 0).then_some(r.tail_lines as usize),
            since: (r.since_seconds > 0)
                .then(|| SystemTime::now() - Duration::from_secs(r.since_seconds as u64)),
            timestamps: r.timestamps,
            limit_bytes: (r.limit_bytes > 0).then_some(r.limit_bytes as usize),
        };
        let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
        let registry = self.registry.clone();
        let (namespace, pod_name, container_name, uid) = (
            r.namespace.clone(),
            r.pod.clone(),
            r.container.clone(),
            pod.uid.clone(),
        );
        let current = path.clone();
        // Following ends when the container stops (or is replaced by a new attempt).
        let running = move || {
            registry.get(&namespace, &pod_name).is_some_and(|p| {
                p.uid == uid
                    && container(&p, &container_name, &pod_name)
                        .is_ok_and(|c| c.running && c.log.as_ref() == Some(&current))
            })
        };
        tokio::spawn(
            async move {
                if let Err(e) = logs::stream(path, options, tx, running).await {
                    debug!(error = %e, "log stream ended");
                }
            }
            .instrument(info_span!("logs", pod = %r.pod)),
        );
        let stream =
            tokio_stream::StreamExt::map(ReceiverStream::new(rx), |data| Ok(LogChunk { data }));
        Ok(Response::new(Box::pin(stream)))
    }

    type ExecStream = ByteStream<ExecOutput>;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let (mut input, start, id) = self.open_stream(request).await?;
        let mut command = self
            .runtime
            .exec_command(&id, &start.command)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        command
            .stdin(if start.stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            Status::failed_precondition(format!("cannot run {:?}: {e}", start.command))
        })?;
        let (tx, rx) = mpsc::channel::<Result<ExecOutput, Status>>(64);
        let mut stdin = child.stdin.take();
        tokio::spawn(async move {
            while let Ok(Some(message)) = input.message().await {
                match message.input {
                    Some(exec_input::Input::Stdin(data)) => {
                        if let Some(s) = stdin.as_mut()
                            && s.write_all(&data).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    Some(exec_input::Input::CloseStdin(_)) => stdin = None,
                    _ => {}
                }
            }
        });
        let pipe = |reader: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
                    stderr: bool,
                    tx: mpsc::Sender<Result<ExecOutput, Status>>| async move {
            let Some(mut reader) = reader else { return };
            let mut buffer = vec![0u8; 16 * 1024];
            while let Ok(n) = reader.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                let data = buffer[..n].to_vec();
                let output = if stderr {
                    exec_output::Output::Stderr(data)
                } else {
                    exec_output::Output::Stdout(data)
                };
                if tx
                    .send(Ok(ExecOutput {
                        output: Some(output),
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
        let out_task = tokio::spawn(pipe(stdout, false, tx.clone()));
        let err_task = tokio::spawn(pipe(stderr, true, tx.clone()));
        tokio::spawn(async move {
            let _ = out_task.await;
            let _ = err_task.await;
            let code = match child.wait().await {
                Ok(status) => status.code().unwrap_or(137),
                Err(_) => 137,
            };
            let _ = tx
                .send(Ok(ExecOutput {
                    output: Some(exec_output::Output::ExitCode(code)),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type AttachStream = ByteStream<ExecOutput>;

    async fn attach(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let (mut input, start, id) = self.open_stream(request).await?;
        let options = AttachOptions {
            stdin: start.stdin,
            stdout: start.stdout,
            stderr: start.stderr,
            tty: start.tty,
        };
        let Attachment {
            output,
            input: to_process,
        } = self
            .runtime
            .attach(&id, options)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let span = info_span!("attach", pod = %start.pod, container = %start.container);
        // Dropping `to_process` when the client goes detaches it.
        tokio::spawn(
            async move {
                while let Ok(Some(message)) = input.message().await {
                    let event = match message.input {
                        Some(exec_input::Input::Stdin(data)) => AttachInput::Stdin(data),
                        Some(exec_input::Input::CloseStdin(_)) => AttachInput::CloseStdin,
                        Some(exec_input::Input::Resize(size)) => AttachInput::Resize {
                            width: u16::try_from(size.width).unwrap_or(u16::MAX),
                            height: u16::try_from(size.height).unwrap_or(u16::MAX),
                        },
                        _ => continue,
                    };
                    if to_process.send(event).await.is_err() {
                        break;
                    }
                }
                debug!("attached client left");
            }
            .instrument(span),
        );
        // The output until the process's ends, then a clean end (exit code 0): attach reports
        // how the stream went, not how the process did.
        let chunks = tokio_stream::StreamExt::map(ReceiverStream::new(output), |chunk| {
            let output = match chunk {
                AttachOutput::Stdout(data) => exec_output::Output::Stdout(data),
                AttachOutput::Stderr(data) => exec_output::Output::Stderr(data),
            };
            Ok::<_, Status>(ExecOutput {
                output: Some(output),
            })
        });
        let end = tokio_stream::once(Ok::<_, Status>(ExecOutput {
            output: Some(exec_output::Output::ExitCode(0)),
        }));
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(
            chunks, end,
        ))))
    }

    type PortForwardStream = ByteStream<PortForwardOutput>;

    async fn port_forward(
        &self,
        request: Request<Streaming<PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        authorize(&request)?;
        let mut input = request.into_inner();
        let start = match input.message().await? {
            Some(PortForwardInput {
                input: Some(port_forward_input::Input::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must name the pod and port",
                ));
            }
        };
        let pod = self.pod(&start.namespace, &start.pod)?;
        let address = format!("{}:{}", pod.ip, start.port);
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to {address}: {e}")))?;
        let (mut reader, mut writer) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Result<PortForwardOutput, Status>>(64);
        tokio::spawn(async move {
            while let Ok(Some(message)) = input.message().await {
                if let Some(port_forward_input::Input::Data(data)) = message.input
                    && writer.write_all(&data).await.is_err()
                {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let out = PortForwardOutput {
                            output: Some(port_forward_output::Output::Data(buffer[..n].to_vec())),
                        };
                        if tx.send(Ok(out)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let out = PortForwardOutput {
                            output: Some(port_forward_output::Output::Error(e.to_string())),
                        };
                        let _ = tx.send(Ok(out)).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn usage(
        &self,
        request: Request<UsageRequest>,
    ) -> Result<Response<UsageResponse>, Status> {
        authorize(&request)?;
        let mut containers = Vec::new();
        for ((namespace, pod), registered) in self.registry.all() {
            for (name, entry) in registered.containers {
                let Some(id) = entry.id.filter(|_| entry.running) else {
                    continue;
                };
                if let Ok(usage) = self.runtime.usage(&id).await {
                    containers.push(ContainerUsage {
                        namespace: namespace.clone(),
                        pod: pod.clone(),
                        container: name,
                        cpu_nanos: usage.cpu_nanos,
                        memory_bytes: usage.memory_bytes,
                    });
                }
            }
        }
        let (node_cpu_nanos, node_memory_bytes) = node_usage();
        Ok(Response::new(UsageResponse {
            timestamp_unix_nanos: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            node_cpu_nanos,
            node_memory_bytes,
            containers,
        }))
    }
}

/// Whole-node CPU time (all cores) and memory in use, from /proc.
fn node_usage() -> (u64, u64) {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            // user nice system (idle iowait excluded) irq softirq steal
            let busy: u64 = fields
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .map(|(_, v)| v)
                .sum();
            Some(busy * 1_000_000_000 / hz)
        })
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .map(|m| {
            let field = |name: &str| {
                m.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            field("MemTotal:").saturating_sub(field("MemAvailable:")) * 1024
        })
        .unwrap_or(0);
    (cpu, memory)
}
