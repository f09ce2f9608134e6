//! The `containerd` runtime: CRI v1 over containerd's socket, the production path. The agent
//! starts a private containerd per node (its own root, state, socket, CNI config and runc root,
//! inside the node's network namespace when given) unless pointed at an existing socket.
//!
//! Pod networking is CNI's `bridge` + `host-local` over the node's podCIDR (Debian's
//! containernetworking-plugins). Images are never pulled from a registry here: they are built
//! and imported locally (images/build.sh); a missing image fails like kubelet's ErrImagePull.
//! `exec` enters the container's namespaces with nsenter, with the container's environment.

mod config;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use skiff_proto::cri::image_service_client::ImageServiceClient;
use skiff_proto::cri::runtime_service_client::RuntimeServiceClient;
use skiff_proto::cri::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest, DnsConfig,
    ImageSpec, ImageStatusRequest, KeyValue, LinuxContainerConfig, LinuxContainerResources,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, Mount as CriMount,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata,
    PodSandboxStatusRequest, PortMapping as CriPortMapping, Protocol, PullImageRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{info, warn};

use super::{
    ContainerSpec, ContainerState, PullPolicy, Runtime, RuntimeError, Sandbox, SandboxSpec, Usage,
};

/// Label carrying the pod uid on every sandbox, read back by `list_sandboxes`.
const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

/// How to reach (or start) this node's containerd.
#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// Where a private containerd keeps everything (config, root, state, CNI, logs).
    pub state_dir: PathBuf,
    /// An existing containerd socket: nothing is started.
    pub socket: Option<PathBuf>,
    /// The node's pod CIDR (CNI host-local range).
    pub pod_cidr: Option<String>,
    /// The node's network namespace (path); containerd is started inside it.
    pub netns: Option<PathBuf>,
    /// The cgroup parent of this node's pods (distinct per node on one host).
    pub cgroup_parent: String,
    /// Image tarballs (images/build.sh) imported once containerd answers.
    pub import_images: Option<PathBuf>,
}

pub struct ContainerdRuntime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    cgroup_parent: String,
    /// Sandbox configs by id: CreateContainer needs the sandbox's config again.
    sandboxes: Mutex<HashMap<String, PodSandboxConfig>>,
    /// The containerd we started. It is left running when the agent stops, like the
    /// kubelet's containerd: pods survive an agent restart.
    _child: Option<std::process::Child>,
}

fn rpc_error(context: &str, status: tonic::Status) -> RuntimeError {
    if status.code() == tonic::Code::NotFound {
        return RuntimeError::NotFound(format!("{context}: {}", status.message()));
    }
    RuntimeError::Runtime(format!("{context}: {}", status.message()))
}

async fn connect(socket: &Path) -> Result<Channel, RuntimeError> {
    let path = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the unix socket.
    Endpoint::from_static("http://containerd.sock")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| RuntimeError::Runtime(format!("connecting to {}: {e}", socket.display())))
}

/// Whether a containerd answers CRI on `socket`.
async fn answers(socket: &Path) -> bool {
    if !socket.exists() {
        return false;
    }
    match connect(socket).await {
        Ok(channel) => RuntimeServiceClient::new(channel)
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .is_ok(),
        Err(_) => false,
    }
}

fn nanos(t: i64) -> Option<SystemTime> {
    (t > 0).then(|| UNIX_EPOCH + Duration::from_nanos(t as u64))
}

/// Kubernetes' image name normalization: `busybox` is `docker.io/library/busybox:latest`.
pub fn normalize_image(image: &str) -> String {
    let (name, tagged) = match image.rsplit_once('/') {
        Some((_, last)) => (image.to_string(), last.contains(':') || image.contains('@')),
        None => (
            image.to_string(),
            image.contains(':') || image.contains('@'),
        ),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_registry {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    if !tagged {
        full.push_str(":latest");
    }
    full
}

impl ContainerdRuntime {
    /// Connects to containerd (starting a private one when no socket is given) and waits
    /// until it answers.
    pub async fn start(options: ContainerdOptions) -> Result<Self, RuntimeError> {
        let own_socket = options.state_dir.join("containerd.sock");
        let (socket, child) = match &options.socket {
            Some(socket) => (socket.clone(), None),
            // Our containerd outlives an agent restart (its containers keep running): reuse it.
            None if answers(&own_socket).await => {
                info!(socket = %own_socket.display(), "reusing this node's running containerd");
                (own_socket, None)
            }
            None => {
                let (socket, child) = config::launch(&options)?;
                (socket, Some(child))
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let channel = loop {
            match connect(&socket).await {
                Ok(channel) => {
                    let mut probe = RuntimeServiceClient::new(channel.clone());
                    match probe
                        .version(VersionRequest {
                            version: "v1".into(),
                        })
                        .await
                    {
                        Ok(v) => {
                            let v = v.into_inner();
                            info!(runtime = %v.runtime_name, version = %v.runtime_version, api = %v.runtime_api_version, "containerd ready");
                            break channel;
                        }
                        Err(e) if tokio::time::Instant::now() > deadline => {
                            return Err(rpc_error("containerd's CRI plugin", e));
                        }
                        Err(_) => {}
                    }
                }
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Some(dir) = &options.import_images {
            import_images(&socket, dir).await?;
        }
        Ok(ContainerdRuntime {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            cgroup_parent: options.cgroup_parent.clone(),
            sandboxes: Mutex::new(HashMap::new()),
            _child: child,
        })
    }

    async fn sandbox_config(&self, id: &str) -> Result<PodSandboxConfig, RuntimeError> {
        self.sandboxes.lock().await.get(id).cloned().ok_or_else(|| {
            RuntimeError::NotFound(format!("sandbox {id} (created by an earlier agent)"))
        })
    }

    /// The container's init process id (from the verbose status).
    async fn pid(&self, container_id: &str) -> Result<u32, RuntimeError> {
        let status = self
            .runtime
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: container_id.into(),
                verbose: true,
            })
            .await
            .map_err(|e| rpc_error("container status", e))?
            .into_inner();
        let info = status.info.get("info").map(String::as_str).unwrap_or("{}");
        serde_json::from_str::<serde_json::Value>(info)
            .ok()
            .and_then(|v| v.get("pid").and_then(serde_json::Value::as_u64))
            .filter(|pid| *pid > 0)
            .map(|pid| pid as u32)
            .ok_or_else(|| RuntimeError::Start {
                reason: "ContainerNotRunning",
                message: format!("container {container_id} has no running process"),
            })
    }
}

#[async_trait::async_trait]
impl Runtime for ContainerdRuntime {
    fn name(&self) -> &'static str {
        "containerd"
    }

    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), RuntimeError> {
        let reference = normalize_image(image);
        let present = self
            .images
            .clone()
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: reference.clone(),
                }),
                verbose: false,
            })
            .await
            .map_err(|e| rpc_error("image status", e))?
            .into_inner()
            .image
            .is_some();
        // Images are local here: one that is present serves even under `Always`.
        if present {
            return Ok(());
        }
        if policy == PullPolicy::Never {
            return Err(RuntimeError::ImageNeverPull(image.to_string()));
        }
        match self
            .images
            .clone()
            .pull_image(PullImageRequest {
                image: Some(ImageSpec { image: reference }),
                sandbox_config: None,
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) => Err(RuntimeError::ImagePull {
                image: image.to_string(),
                message: status.message().to_string(),
            }),
        }
    }

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let resolv = std::fs::read_to_string(&spec.resolv_conf).unwrap_or_default();
        let mut dns = DnsConfig::default();
        for line in resolv.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => dns.servers.extend(words.map(str::to_string)),
                Some("search") => dns.searches.extend(words.map(str::to_string)),
                Some("options") => dns.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        let mut labels = spec.labels.clone().into_iter().collect::<HashMap<_, _>>();
        labels.insert(POD_UID_LABEL.into(), spec.uid.clone());
        labels.insert("io.kubernetes.pod.name".into(), spec.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.clone());
        let logs = spec.pod_dir.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| RuntimeError::Runtime(format!("creating {}: {e}", logs.display())))?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            hostname: if spec.host_network {
                String::new()
            } else {
                spec.hostname.clone()
            },
            log_directory: logs.to_string_lossy().into_owned(),
            dns_config: Some(dns),
            port_mappings: spec
                .port_mappings
                .iter()
                .map(|p| CriPortMapping {
                    protocol: match p.protocol.as_str() {
                        "UDP" => Protocol::Udp as i32,
                        "SCTP" => Protocol::Sctp as i32,
                        _ => Protocol::Tcp as i32,
                    },
                    container_port: i32::from(p.container_port),
                    host_port: i32::from(p.host_port),
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                })
                .collect(),
            labels,
            annotations: HashMap::new(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: if spec.host_network {
                            NamespaceMode::Node
                        } else {
                            NamespaceMode::Pod
                        } as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                    }),
                }),
            }),
        };
        let id = self
            .runtime
            .clone()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| RuntimeError::Start {
                reason: "CreatePodSandboxError",
                message: e.message().to_string(),
            })?
            .into_inner()
            .pod_sandbox_id;
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .map_err(|e| rpc_error("sandbox status", e))?
            .into_inner();
        let ip = status
            .status
            .and_then(|s| s.network)
            .and_then(|n| n.ip.parse::<IpAddr>().ok());
        self.sandboxes.lock().await.insert(id.clone(), config);
        Ok(Sandbox {
            id,
            ip,
            pod_uid: spec.uid.clone(),
        })
    }

    async fn stop_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        match self
            .runtime
            .clone()
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: sandbox_id.into(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(rpc_error("stopping the sandbox", e)),
        }
    }

    async fn remove_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        self.stop_sandbox(sandbox_id).await?;
        self.sandboxes.lock().await.remove(sandbox_id);
        match self
            .runtime
            .clone()
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: sandbox_id.into(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(rpc_error("removing the sandbox", e)),
        }
    }

    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, RuntimeError> {
        let items = self
            .runtime
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter::default()),
            })
            .await
            .map_err(|e| rpc_error("listing sandboxes", e))?
            .into_inner()
            .items;
        Ok(items
            .into_iter()
            .map(|s| Sandbox {
                pod_uid: s.labels.get(POD_UID_LABEL).cloned().unwrap_or_default(),
                id: s.id,
                ip: None,
            })
            .collect())
    }

    async fn start_container(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        let sandbox_config = self.sandbox_config(&sandbox.id).await?;
        // CRI logs to log_directory/log_path: the spec's path must lie under the directory.
        let log_path = spec
            .log_path
            .strip_prefix(&sandbox_config.log_directory)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|_| {
                RuntimeError::Runtime(format!(
                    "log path {} is outside the pod's log directory",
                    spec.log_path.display()
                ))
            })?;
        if let Some(parent) = spec.log_path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let resources = LinuxContainerResources {
            cpu_period: spec.limits.cpu_millis.map(|_| 100_000).unwrap_or(0),
            cpu_quota: spec
                .limits
                .cpu_millis
                .map(|m| (m * 100) as i64)
                .unwrap_or(0),
            cpu_shares: 0,
            memory_limit_in_bytes: spec.limits.memory_bytes.map(|b| b as i64).unwrap_or(0),
            oom_score_adj: 0,
        };
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.name.clone(),
                attempt: spec.attempt,
            }),
            image: Some(ImageSpec {
                image: normalize_image(&spec.image),
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            working_dir: spec.working_dir.clone().unwrap_or_default(),
            envs: spec
                .env
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|m| CriMount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.to_string_lossy().into_owned(),
                    readonly: m.read_only,
                })
                .collect(),
            labels: HashMap::from([(
                "io.kubernetes.container.name".to_string(),
                spec.name.clone(),
            )]),
            annotations: HashMap::new(),
            log_path,
            stdin: spec.stdin,
            stdin_once: false,
            tty: spec.tty,
            linux: Some(LinuxContainerConfig {
                resources: Some(resources),
            }),
        };
        let id = self
            .runtime
            .clone()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .map_err(|e| RuntimeError::Start {
                reason: "CreateContainerError",
                message: e.message().to_string(),
            })?
            .into_inner()
            .container_id;
        if let Err(e) = self
            .runtime
            .clone()
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            let _ = self.remove_container(&id).await;
            return Err(RuntimeError::Start {
                reason: "RunContainerError",
                message: e.message().to_string(),
            });
        }
        Ok(id)
    }

    async fn container_state(&self, container_id: &str) -> Result<ContainerState, RuntimeError> {
        let status = self
            .runtime
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: container_id.into(),
                verbose: false,
            })
            .await
            .map_err(|e| rpc_error("container status", e))?
            .into_inner()
            .status
            .ok_or_else(|| RuntimeError::NotFound(format!("container {container_id}")))?;
        Ok(
            match skiff_proto::cri::ContainerState::try_from(status.state) {
                Ok(skiff_proto::cri::ContainerState::ContainerCreated) => ContainerState::Created,
                Ok(skiff_proto::cri::ContainerState::ContainerRunning) => ContainerState::Running {
                    started_at: nanos(status.started_at).unwrap_or_else(SystemTime::now),
                },
                Ok(skiff_proto::cri::ContainerState::ContainerExited) => ContainerState::Exited {
                    exit_code: status.exit_code,
                    reason: match status.reason.as_str() {
                        "" if status.exit_code == 0 => "Completed".into(),
                        "" => "Error".into(),
                        other => other.to_string(),
                    },
                    started_at: nanos(status.started_at),
                    finished_at: nanos(status.finished_at).unwrap_or_else(SystemTime::now),
                },
                _ => ContainerState::Unknown,
            },
        )
    }

    async fn stop_container(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        match self
            .runtime
            .clone()
            .stop_container(StopContainerRequest {
                container_id: container_id.into(),
                timeout: grace.as_secs() as i64,
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(rpc_error("stopping the container", e)),
        }
    }

    async fn remove_container(&self, container_id: &str) -> Result<(), RuntimeError> {
        match self
            .runtime
            .clone()
            .remove_container(RemoveContainerRequest {
                container_id: container_id.into(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(rpc_error("removing the container", e)),
        }
    }

    async fn exec_command(
        &self,
        container_id: &str,
        argv: &[String],
    ) -> Result<tokio::process::Command, RuntimeError> {
        if argv.is_empty() {
            return Err(RuntimeError::Start {
                reason: "InvalidCommand",
                message: "an empty command".into(),
            });
        }
        let pid = self.pid(container_id).await?;
        // The container's own environment (what `kubectl exec -- env` shows).
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let mut command = tokio::process::Command::new("nsenter");
        command
            .arg("-t")
            .arg(pid.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"])
            .args(argv)
            .env_clear()
            .stdin(Stdio::null());
        for pair in environ.split(|b| *b == 0).filter(|p| !p.is_empty()) {
            let pair = String::from_utf8_lossy(pair);
            if let Some((k, v)) = pair.split_once('=') {
                command.env(k, v);
            }
        }
        Ok(command)
    }

    async fn usage(&self, container_id: &str) -> Result<Usage, RuntimeError> {
        let pid = self.pid(container_id).await?;
        Ok(cgroup_usage(pid).unwrap_or_default())
    }
}

/// Imports every `*.tar` of `dir` into containerd's k8s.io namespace with ctr.
async fn import_images(socket: &Path, dir: &Path) -> Result<(), RuntimeError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        RuntimeError::Runtime(format!("reading images from {}: {e}", dir.display()))
    })?;
    let mut tarballs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    tarballs.sort();
    for tarball in tarballs {
        let output = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&tarball)
            .output()
            .await
            .map_err(|e| RuntimeError::Runtime(format!("running ctr: {e}")))?;
        if !output.status.success() {
            return Err(RuntimeError::Runtime(format!(
                "importing {}: {}",
                tarball.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        info!(image = %tarball.display(), "imported");
    }
    Ok(())
}

/// CPU and memory of the cgroup (v1) a process runs in.
fn cgroup_usage(pid: u32) -> Option<Usage> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path_of = |controller: &str| {
        cgroups.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
    };
    let read = |file: String| {
        std::fs::read_to_string(file)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    let memory = path_of("memory")
        .and_then(|p| read(format!("/sys/fs/cgroup/memory{p}/memory.usage_in_bytes")));
    let cpu =
        path_of("cpuacct").and_then(|p| read(format!("/sys/fs/cgroup/cpuacct{p}/cpuacct.usage")));
    if memory.is_none() && cpu.is_none() {
        warn!(pid, "no cgroup v1 usage for this container");
    }
    Some(Usage {
        cpu_nanos: cpu.unwrap_or(0),
        memory_bytes: memory.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_normalize_like_kubernetes() {
        assert_eq!(
            normalize_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_image("busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(normalize_image("skiff/echo"), "docker.io/skiff/echo:latest");
        assert_eq!(
            normalize_image("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(
            normalize_image("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
    }
}
