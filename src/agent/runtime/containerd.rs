//! The `containerd` runtime: CRI v1 over containerd's socket, the production path. The agent
//! starts a private containerd per node (its own root, state, socket, CNI config and runc root,
//! inside the node's network namespace when given) unless pointed at an existing socket.
//!
//! Pod networking is CNI's `bridge` + `host-local` over the node's podCIDR (Debian's
//! containernetworking-plugins). Images are never pulled from a registry here: they are built
//! and imported locally (images/build.sh); a missing image fails like kubelet's ErrImagePull.
//! `exec` enters the container's namespaces with nsenter, with the container's environment;
//! `attach` goes through CRI's streaming server (`attach`).
//!
//! What lives where: `config` renders containerd's and CNI's files, `launcher` runs containerd,
//! `client` is the gRPC channel, `sandbox` and `container` translate specs to CRI and back,
//! `images` names and imports images, `usage` reads stats. This file only sequences RPCs.

mod attach;
mod client;
mod config;
mod container;
mod images;
mod launcher;
mod sandbox;
mod usage;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use skiff_proto::cri::image_service_client::ImageServiceClient;
use skiff_proto::cri::runtime_service_client::RuntimeServiceClient;
use skiff_proto::cri::{
    AttachRequest, ContainerStatsRequest, ContainerStatusRequest, CreateContainerRequest,
    ImageSpec, ImageStatusRequest, ListPodSandboxRequest, PodSandboxConfig, PodSandboxFilter,
    PodSandboxState, PodSandboxStatusRequest, PullImageRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tracing::{info, instrument, warn};

use super::{
    AttachOptions, Attachment, ContainerSpec, ContainerState, PullPolicy, Runtime, RuntimeError,
    Sandbox, SandboxSpec, Usage,
};
use client::rpc_error;
pub use images::normalize_image;
use launcher::Launched;

/// How long a containerd gets to answer CRI after it starts (or to be found answering).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach (or start) this node's containerd.
#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// Where a private containerd keeps everything (config, root, state, CNI, log).
    pub state_dir: PathBuf,
    /// An existing containerd socket: nothing is started, nothing is configured.
    pub socket: Option<PathBuf>,
    /// The node's pod CIDR (CNI host-local range); required to start a private containerd.
    pub pod_cidr: Option<String>,
    /// The node's network namespace (a path such as /var/run/netns/n1); containerd is started
    /// inside it.
    pub netns: Option<PathBuf>,
    /// The cgroup parent of this node's pods, distinct per node on one host; also names the
    /// node's CNI network.
    pub cgroup_parent: String,
    /// Image tarballs (a `*.tar` or a directory of them, from images/build.sh) imported once
    /// containerd answers.
    pub import_images: Option<PathBuf>,
}

/// A node's containerd, driven over CRI.
pub struct ContainerdRuntime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    cgroup_parent: String,
    /// Sandbox configs by id: CreateContainer needs the sandbox's config again. A cache only:
    /// misses are read back from containerd (sandboxes made by an earlier agent).
    sandboxes: Mutex<HashMap<String, PodSandboxConfig>>,
    /// The containerd this agent started, stopped on shutdown or drop. None when it was given
    /// a socket or found this node's containerd already running (an agent restart: the
    /// earlier agent's containerd keeps serving, with the pods it runs).
    launched: std::sync::Mutex<Option<Launched>>,
}

impl ContainerdRuntime {
    /// Connects to containerd, starting a private one for the node unless `options.socket`
    /// names an existing one (or this node's own is already answering), waits until its CRI
    /// plugin answers, and imports `options.import_images`.
    #[instrument(skip_all, fields(state_dir = %options.state_dir.display()))]
    pub async fn start(options: ContainerdOptions) -> Result<Self, RuntimeError> {
        let own_socket = config::Layout::new(&options.state_dir).socket();
        let (channel, launched) = match &options.socket {
            Some(socket) => (
                client::wait_ready(socket, READY_TIMEOUT, || Ok(())).await?,
                None,
            ),
            None if client::answers(&own_socket).await => {
                info!(socket = %own_socket.display(), "reusing this node's running containerd");
                (client::connect(&own_socket).await?, None)
            }
            None => {
                let mut launched = launcher::launch(&options)?;
                let log = config::Layout::new(&options.state_dir).log();
                // On failure `launched` is dropped here, which stops that containerd.
                let channel = client::wait_ready(&launched.socket.clone(), READY_TIMEOUT, || {
                    launched.check_alive(&log)
                })
                .await?;
                (channel, Some(launched))
            }
        };
        let socket = options.socket.clone().unwrap_or(own_socket);
        if let Some(source) = &options.import_images {
            images::import_images(&socket, source).await?;
        }
        Ok(ContainerdRuntime {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            cgroup_parent: options.cgroup_parent.clone(),
            sandboxes: Mutex::new(HashMap::new()),
            launched: std::sync::Mutex::new(launched),
        })
    }

    /// Stops the containerd this runtime started (no-op otherwise), without blocking the
    /// caller's thread as the drop does. Pods are left alone: their shims keep them running
    /// for the next containerd on this state dir; callers that want them gone stop and remove
    /// the sandboxes first. (For the agent's graceful stop; the tests use it today.)
    #[allow(dead_code)]
    pub async fn shutdown(&self) {
        let launched = self.launched.lock().ok().and_then(|mut l| l.take());
        if let Some(mut launched) = launched {
            let _ = tokio::task::spawn_blocking(move || launched.stop()).await;
        }
    }

    /// The config a sandbox was created with, from the cache or from containerd.
    async fn sandbox_config(&self, id: &str) -> Result<PodSandboxConfig, RuntimeError> {
        if let Some(config) = self.sandboxes.lock().await.get(id) {
            return Ok(config.clone());
        }
        let response = self
            .runtime
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await
            .map_err(|e| rpc_error("sandbox status", e))?
            .into_inner();
        let config = response
            .info
            .get("info")
            .and_then(|info| sandbox::config_from_verbose_info(info))
            .ok_or_else(|| {
                RuntimeError::Runtime(format!("containerd did not report sandbox {id}'s config"))
            })?;
        self.sandboxes
            .lock()
            .await
            .insert(id.to_string(), config.clone());
        Ok(config)
    }

    /// The sandbox's pod IP (None for host-network pods and stopped sandboxes).
    async fn sandbox_ip(&self, id: &str) -> Result<Option<IpAddr>, RuntimeError> {
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(|e| rpc_error("sandbox status", e))?
            .into_inner();
        Ok(status
            .status
            .and_then(|s| s.network)
            .and_then(|n| n.ip.parse::<IpAddr>().ok()))
    }

    /// Sandboxes CRI lists for `filter`, with the IPs of the ready ones.
    async fn sandboxes_matching(
        &self,
        filter: PodSandboxFilter,
    ) -> Result<Vec<Sandbox>, RuntimeError> {
        let items = self
            .runtime
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|e| rpc_error("listing sandboxes", e))?
            .into_inner()
            .items;
        let mut sandboxes = Vec::with_capacity(items.len());
        for item in items {
            let ip = if item.state == PodSandboxState::SandboxReady as i32 {
                // A sandbox removed between the list and this call has no IP to report.
                self.sandbox_ip(&item.id).await.unwrap_or(None)
            } else {
                None
            };
            sandboxes.push(Sandbox {
                pod_uid: item
                    .labels
                    .get(sandbox::POD_UID_LABEL)
                    .cloned()
                    .unwrap_or_default(),
                id: item.id,
                ip,
            });
        }
        Ok(sandboxes)
    }

    /// The container's init process id (from the verbose status).
    async fn pid(&self, container_id: &str) -> Result<u32, RuntimeError> {
        let response = self
            .runtime
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: container_id.into(),
                verbose: true,
            })
            .await
            .map_err(|e| rpc_error("container status", e))?
            .into_inner();
        response
            .info
            .get("info")
            .and_then(|info| container::pid_from_verbose_info(info))
            .ok_or_else(|| RuntimeError::Start {
                reason: "ContainerNotRunning",
                message: format!("container {container_id} has no running process"),
            })
    }
}

/// Treats NotFound as done: stop/remove calls are idempotent by contract.
fn idempotent<T>(result: Result<T, tonic::Status>, context: &str) -> Result<(), RuntimeError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
        Err(e) => Err(rpc_error(context, e)),
    }
}

#[async_trait::async_trait]
impl Runtime for ContainerdRuntime {
    fn name(&self) -> &'static str {
        "containerd"
    }

    #[instrument(skip(self))]
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
        // Images are local here: one that is present serves even under `Always` (no registry
        // is reachable to ask whether it changed).
        if present {
            return Ok(());
        }
        if policy == PullPolicy::Never {
            return Err(RuntimeError::ImageNeverPull(image.to_string()));
        }
        self.images
            .clone()
            .pull_image(PullImageRequest {
                image: Some(ImageSpec { image: reference }),
                sandbox_config: None,
            })
            .await
            .map(|_| ())
            .map_err(|status| RuntimeError::ImagePull {
                image: image.to_string(),
                message: status.message().to_string(),
            })
    }

    #[instrument(skip_all, fields(pod = %spec.name, namespace = %spec.namespace, uid = %spec.uid))]
    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let resolv = std::fs::read_to_string(&spec.resolv_conf).unwrap_or_default();
        let config = sandbox::sandbox_config(spec, &resolv, &self.cgroup_parent);
        let logs = sandbox::log_directory(&spec.pod_dir);
        std::fs::create_dir_all(&logs)
            .map_err(|e| RuntimeError::Runtime(format!("creating {}: {e}", logs.display())))?;
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
        self.sandboxes.lock().await.insert(id.clone(), config);
        let ip = self.sandbox_ip(&id).await?;
        info!(sandbox = %id, ?ip, "sandbox running");
        Ok(Sandbox {
            id,
            ip,
            pod_uid: spec.uid.clone(),
        })
    }

    #[instrument(skip(self))]
    async fn stop_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        let result = self
            .runtime
            .clone()
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: sandbox_id.into(),
            })
            .await;
        idempotent(result, "stopping the sandbox")
    }

    #[instrument(skip(self))]
    async fn remove_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        self.stop_sandbox(sandbox_id).await?;
        self.sandboxes.lock().await.remove(sandbox_id);
        let result = self
            .runtime
            .clone()
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: sandbox_id.into(),
            })
            .await;
        idempotent(result, "removing the sandbox")
    }

    #[instrument(skip(self))]
    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, RuntimeError> {
        self.sandboxes_matching(PodSandboxFilter::default()).await
    }

    #[instrument(skip(self))]
    async fn sandboxes_of(&self, pod_uid: &str) -> Result<Vec<Sandbox>, RuntimeError> {
        self.sandboxes_matching(PodSandboxFilter {
            label_selector: HashMap::from([(
                sandbox::POD_UID_LABEL.to_string(),
                pod_uid.to_string(),
            )]),
            ..PodSandboxFilter::default()
        })
        .await
    }

    #[instrument(skip_all, fields(sandbox = %sandbox.id, container = %spec.name, attempt = spec.attempt))]
    async fn start_container(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        let sandbox_config = self.sandbox_config(&sandbox.id).await?;
        let config = container::container_config(spec, &sandbox_config)?;
        // containerd opens the log file but does not create its directory.
        if let Some(parent) = spec.log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                RuntimeError::Runtime(format!("creating {}: {e}", parent.display()))
            })?;
        }
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
            if let Err(removal) = self.remove_container(&id).await {
                warn!(container = %id, error = %removal, "removing the container that did not start");
            }
            return Err(RuntimeError::Start {
                reason: "RunContainerError",
                message: e.message().to_string(),
            });
        }
        Ok(id)
    }

    #[instrument(skip(self))]
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
        Ok(container::state_of(&status))
    }

    #[instrument(skip(self))]
    async fn stop_container(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let result = self
            .runtime
            .clone()
            .stop_container(StopContainerRequest {
                container_id: container_id.into(),
                timeout: container::stop_timeout_secs(grace),
            })
            .await;
        idempotent(result, "stopping the container")
    }

    #[instrument(skip(self))]
    async fn remove_container(&self, container_id: &str) -> Result<(), RuntimeError> {
        let result = self
            .runtime
            .clone()
            .remove_container(RemoveContainerRequest {
                container_id: container_id.into(),
            })
            .await;
        idempotent(result, "removing the container")
    }

    #[instrument(skip(self))]
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
        // The container's own environment (what `kubectl exec -- env` shows), read before
        // entering: nsenter keeps the environment it is given.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).map_err(|e| {
            RuntimeError::Runtime(format!(
                "reading container {container_id}'s environment: {e}"
            ))
        })?;
        let mut command = tokio::process::Command::new("nsenter");
        command
            .arg("-t")
            .arg(pid.to_string())
            // mount, UTS, IPC, network and PID namespaces, then the container's root and cwd.
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

    #[instrument(skip(self))]
    async fn attach(
        &self,
        container_id: &str,
        options: AttachOptions,
    ) -> Result<Attachment, RuntimeError> {
        // A terminal has one output stream; CRI refuses tty with stderr.
        let options = AttachOptions {
            stderr: options.stderr && !options.tty,
            ..options
        };
        let url = self
            .runtime
            .clone()
            .attach(AttachRequest {
                container_id: container_id.into(),
                stdin: options.stdin,
                tty: options.tty,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
            .map_err(|e| rpc_error("attach", e))?
            .into_inner()
            .url;
        attach::connect(&url, options).await
    }

    #[instrument(skip(self))]
    async fn usage(&self, container_id: &str) -> Result<Usage, RuntimeError> {
        let stats = self
            .runtime
            .clone()
            .container_stats(ContainerStatsRequest {
                container_id: container_id.into(),
            })
            .await;
        match stats {
            Ok(reply) => {
                if let Some(usage) = reply
                    .into_inner()
                    .stats
                    .as_ref()
                    .and_then(usage::from_stats)
                {
                    return Ok(usage);
                }
            }
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Err(rpc_error("container stats", e));
            }
            Err(e) => warn!(error = %e.message(), "ContainerStats failed; reading the cgroup"),
        }
        let pid = self.pid(container_id).await?;
        Ok(usage::from_cgroup(pid).unwrap_or_default())
    }
}
