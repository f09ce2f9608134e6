//! Container runtimes behind one trait, so the pod workers (what to run, when, restart policy,
//! probes, status) never care whether a container is a containerd task or a host process.
//!
//! The contract every runtime keeps:
//! - A pod is a *sandbox* (network + hostname + IPC identity) holding *containers*.
//! - Container output goes to the `log_path` the agent chooses, in the CRI log format
//!   (`<RFC3339Nano> <stdout|stderr> <F|P> <line>`), so `kubectl logs` reads every runtime the
//!   same way (see `crate::agent::logs`).
//! - `start_container` returns once the container's process is running (or failed to start).
//! - A running container's main process can be attached to (`kubectl attach`): its output
//!   from that moment, its stdin when the spec asked for one (`stdin: true`, kept open until
//!   the first client detaches when `stdinOnce`), its terminal size when it has a `tty`.
//! - State survives an agent restart: `list_sandboxes` and `container_state` read it back from
//!   the runtime, never from agent memory.

pub mod containerd;
pub mod process;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Why a runtime call failed. `reason` strings mirror the kubelet's (they end up in container
/// statuses' `waiting.reason`).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not present and the pull policy forbids pulling (`ErrImageNeverPull`).
    #[error("container image {0:?} is not present with pull policy of Never")]
    ImageNeverPull(String),
    /// The image could not be obtained (`ErrImagePull`): no registry is reachable here.
    #[error("failed to pull image {image:?}: {message}")]
    ImagePull { image: String, message: String },
    /// The container could not be created or started (`CreateContainerError`,
    /// `RunContainerError`).
    #[error("{reason}: {message}")]
    Start {
        reason: &'static str,
        message: String,
    },
    /// The runtime does not know this sandbox or container (already removed).
    #[error("{0} not found")]
    NotFound(String),
    /// The runtime itself failed (socket gone, I/O error, ...).
    #[error("runtime error: {0}")]
    Runtime(String),
}

impl RuntimeError {
    /// The `waiting.reason` a container status shows for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::ImageNeverPull(_) => "ErrImageNeverPull",
            RuntimeError::ImagePull { .. } => "ErrImagePull",
            RuntimeError::Start { reason, .. } => reason,
            RuntimeError::NotFound(_) | RuntimeError::Runtime(_) => "RunContainerError",
        }
    }
}

/// `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// Kubernetes' default: Always for `:latest` or untagged images, IfNotPresent otherwise.
    pub fn parse(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                let last = image.rsplit('/').next().unwrap_or(image);
                let tagged = last.contains(':') || image.contains('@');
                if !tagged || image.ends_with(":latest") {
                    PullPolicy::Always
                } else {
                    PullPolicy::IfNotPresent
                }
            }
        }
    }
}

/// A hostPort mapping (`containerPort` reachable on the node's `hostPort`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    pub host_ip: Option<String>,
}

/// Everything the runtime needs to create a pod's sandbox.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod's hostname (pod name, or spec.hostname).
    pub hostname: String,
    pub host_network: bool,
    /// The agent's directory for this pod (volumes, etc-hosts, resolv.conf live under it).
    pub pod_dir: PathBuf,
    /// Files the agent prepared; runtimes bind-mount them at /etc/resolv.conf and /etc/hosts.
    pub resolv_conf: PathBuf,
    pub hosts_file: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
}

/// A created sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    /// The pod's IP (None for the process runtime without a network of its own: the node's IP
    /// is used, as for hostNetwork pods).
    pub ip: Option<IpAddr>,
    /// The pod uid the sandbox was created for (read back after an agent restart).
    pub pod_uid: String,
}

/// A bind mount into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// Resource limits applied as cgroup limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU in millicores.
    pub cpu_millis: Option<u64>,
}

/// Everything the runtime needs to create and start one container.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// The resolved argv: command + args, with `$(VAR)` expanded (empty = the image's own).
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    /// Where the runtime writes the container's output, in the CRI log format.
    pub log_path: PathBuf,
    pub limits: Limits,
    pub tty: bool,
    pub stdin: bool,
    /// Close the process's stdin once the first attached client detaches.
    pub stdin_once: bool,
    /// Restart count so far (runtimes label containers with it).
    pub attempt: u32,
}

/// What a container is doing, as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running {
        started_at: SystemTime,
    },
    Exited {
        exit_code: i32,
        /// "Completed", "Error", "OOMKilled" (the kubelet's terminated reasons).
        reason: String,
        started_at: Option<SystemTime>,
        finished_at: SystemTime,
    },
    /// The runtime lost track of it (e.g. host reboot).
    Unknown,
}

/// CPU and memory use of one container, for `kubectl top` and the metrics API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time used.
    pub cpu_nanos: u64,
    /// Working set.
    pub memory_bytes: u64,
}

/// Which streams an attaching client (`kubectl attach`) wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Output of an attached container's main process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// What an attached client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachInput {
    Stdin(Vec<u8>),
    /// The client's stdin ended (the process's stdin closes only with `stdinOnce`).
    CloseStdin,
    Resize {
        width: u16,
        height: u16,
    },
}

/// One client attached to a container's main process.
pub struct Attachment {
    /// The process's output from the moment of attaching; closed when that output ends.
    pub output: tokio::sync::mpsc::Receiver<AttachOutput>,
    /// Stdin and resizes. Dropping it detaches the client (as `CloseStdin` does for stdin).
    pub input: tokio::sync::mpsc::Sender<AttachInput>,
}

/// A container runtime: containerd over CRI (`containerd`) or host processes (`process`).
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// "containerd" or "process" (shown in Node status and `kubectl describe`).
    fn name(&self) -> &'static str;

    /// Makes sure `image` is present, honouring the pull policy.
    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), RuntimeError>;

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError>;
    /// Stops every container of the sandbox and frees its network; idempotent.
    async fn stop_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError>;
    /// Removes a stopped sandbox and its containers; idempotent.
    async fn remove_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError>;
    /// Sandboxes that exist now (after an agent restart too).
    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, RuntimeError>;
    /// The sandboxes of one pod (an earlier agent's, to replace). A runtime that can filter
    /// on its side overrides this: a pod worker asks once per pod, so a whole listing each
    /// time costs O(pods) per pod start.
    async fn sandboxes_of(&self, pod_uid: &str) -> Result<Vec<Sandbox>, RuntimeError> {
        let mut all = self.list_sandboxes().await?;
        all.retain(|s| s.pod_uid == pod_uid);
        Ok(all)
    }

    /// Creates and starts a container; returns its id.
    async fn start_container(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<String, RuntimeError>;
    async fn container_state(&self, container_id: &str) -> Result<ContainerState, RuntimeError>;
    /// SIGTERM, then SIGKILL after `grace`; returns when the container has exited.
    async fn stop_container(&self, container_id: &str, grace: Duration)
    -> Result<(), RuntimeError>;
    async fn remove_container(&self, container_id: &str) -> Result<(), RuntimeError>;

    /// A command that runs `argv` inside the container (its namespaces, root and environment),
    /// for `kubectl exec` and exec probes. The caller sets up stdio and spawns it.
    async fn exec_command(
        &self,
        container_id: &str,
        argv: &[String],
    ) -> Result<tokio::process::Command, RuntimeError>;

    /// Attaches a client to the running container's main process (`kubectl attach`).
    /// Asking for stdin fails unless the container was started with `stdin`.
    async fn attach(
        &self,
        container_id: &str,
        options: AttachOptions,
    ) -> Result<Attachment, RuntimeError>;

    async fn usage(&self, container_id: &str) -> Result<Usage, RuntimeError>;
}
