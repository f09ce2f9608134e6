//! The `process` runtime: each container's command runs as a supervised host process (like
//! Nomad's raw_exec), the zero-install default for laptops. No image is pulled or unpacked: the
//! command runs with the host's programs, so `kubectl describe` shows the runtime as `process`.
//!
//! What it isolates: when running as root, each container gets a private mount namespace (its
//! volumes bind-mounted at their container paths, /etc/hosts and /etc/resolv.conf from the pod)
//! and its own UTS namespace (hostname = pod hostname). Without root it runs the command as
//! is, with volumes only under the pod directory. The pod shares the node's network (its IP is
//! the node's, as for hostNetwork pods); hostPorts are relayed (`host_ports`). Stdio stays
//! attachable for `kubectl attach` (`stdio`).
//!
//! State lives in memory and in `<state>/containers/<id>.json`; a container whose process the
//! agent no longer supervises (agent restarted) is killed and reported as exited, and the pod
//! worker starts it again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

mod host_ports;
pub mod reaper;
mod stdio;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    AttachOptions, Attachment, ContainerSpec, ContainerState, PullPolicy, Runtime, RuntimeError,
    Sandbox, SandboxSpec, Usage,
};
use host_ports::HostPorts;
use reaper::Reaper;
use stdio::{ContainerIo, Wiring};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SandboxRecord {
    id: String,
    pod_uid: String,
    namespace: String,
    name: String,
    hostname: String,
    resolv_conf: PathBuf,
    hosts_file: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ContainerRecord {
    id: String,
    sandbox_id: String,
    name: String,
    pid: Option<u32>,
    /// The process's start time (/proc/<pid>/stat field 22): pids are reused, so a recorded
    /// pid is only signalled while this still matches.
    #[serde(default)]
    pid_start: Option<u64>,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    started_at: Option<SystemTime>,
    exit_code: Option<i32>,
    finished_at: Option<SystemTime>,
}

/// One supervised container process.
struct Supervised {
    record: ContainerRecord,
    /// Becomes Some(exit code) when the process ends.
    exited: watch::Receiver<Option<i32>>,
    io: Arc<ContainerIo>,
}

pub struct ProcessRuntime {
    state_dir: PathBuf,
    isolate: bool,
    sandboxes: Mutex<HashMap<String, SandboxRecord>>,
    containers: Mutex<HashMap<String, Arc<Supervised>>>,
    host_ports: HostPorts,
    /// Kills what is left of the containers once this agent is gone.
    reaper: Arc<Reaper>,
}

fn runtime_error(context: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Runtime(format!("{context}: {e}"))
}

fn new_id() -> String {
    let bytes: [u8; 8] = rand::random();
    hex::encode(bytes)
}

impl ProcessRuntime {
    /// Opens the runtime's state under `state_dir`, killing processes a previous agent left
    /// behind (nobody supervises their output any more). Pods are reached at `node_ip`;
    /// `reaper` stops the containers' process groups when the agent exits.
    pub fn open(state_dir: &Path, node_ip: IpAddr, reaper: Reaper) -> Result<Self, RuntimeError> {
        let isolate = unsafe { libc::geteuid() } == 0;
        for sub in ["sandboxes", "containers"] {
            std::fs::create_dir_all(state_dir.join(sub))
                .map_err(|e| runtime_error("creating the runtime state", e))?;
        }
        let mut sandboxes = HashMap::new();
        for record in read_records::<SandboxRecord>(&state_dir.join("sandboxes")) {
            sandboxes.insert(record.id.clone(), record);
        }
        for record in read_records::<ContainerRecord>(&state_dir.join("containers")) {
            if let (Some(pid), None) = (record.pid, record.exit_code)
                && record.pid_start.is_some()
                && crate::procfs::start_time(pid) == record.pid_start
            {
                info!(container = %record.name, pid, "stopping a container left by a previous agent");
                kill_group(pid, libc::SIGKILL);
            }
            let _ = std::fs::remove_file(
                state_dir
                    .join("containers")
                    .join(format!("{}.json", record.id)),
            );
        }
        Ok(ProcessRuntime {
            state_dir: state_dir.to_path_buf(),
            isolate,
            sandboxes: Mutex::new(sandboxes),
            containers: Mutex::new(HashMap::new()),
            host_ports: HostPorts::new(node_ip),
            reaper: Arc::new(reaper),
        })
    }

    fn save<T: Serialize>(&self, folder: &str, id: &str, record: &T) -> Result<(), RuntimeError> {
        let path = self.state_dir.join(folder).join(format!("{id}.json"));
        let bytes = serde_json::to_vec(record).map_err(|e| runtime_error("encoding state", e))?;
        std::fs::write(&path, bytes).map_err(|e| runtime_error("writing state", e))
    }

    fn supervised(&self, id: &str) -> Result<Arc<Supervised>, RuntimeError> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))
    }

    fn sandbox_record(&self, id: &str) -> Result<SandboxRecord, RuntimeError> {
        self.sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("sandbox {id}")))
    }

    /// The argv with, when isolating, a shell-free wrapper: our own binary re-executed as
    /// `skiff agent-exec` would be cleaner, but `unshare`+`mount` from util-linux are always
    /// present with root; the mount setup runs in `pre_exec` instead (no extra programs).
    fn command(
        &self,
        sandbox: &SandboxRecord,
        spec: &ContainerSpec,
    ) -> Result<(tokio::process::Command, Wiring), RuntimeError> {
        let argv: Vec<String> = spec.command.iter().chain(&spec.args).cloned().collect();
        let Some((program, rest)) = argv.split_first() else {
            return Err(RuntimeError::Start {
                reason: "CreateContainerError",
                message: format!(
                    "the process runtime runs a container's command, and {:?} has none (image entrypoints need the containerd runtime)",
                    spec.name
                ),
            });
        };
        let mut command = tokio::process::Command::new(program);
        command.args(rest);
        command.env_clear();
        command.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        command.env("HOSTNAME", &sandbox.hostname);
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        let pod_dir = sandbox_dir(&self.state_dir, &sandbox.id);
        std::fs::create_dir_all(&pod_dir).map_err(|e| runtime_error("creating the pod dir", e))?;
        match &spec.working_dir {
            Some(dir) if self.isolate || Path::new(dir).is_dir() => {
                command.current_dir(dir);
            }
            _ => {
                command.current_dir(&pod_dir);
            }
        }
        let wiring = stdio::wire(&mut command, spec)?;
        // No shim outlives the agent here: a container dies with it (the next agent start
        // would find nobody reading its output anyway).
        // SAFETY: prctl in the forked child before exec; no allocation.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if self.isolate {
            let mut mounts: Vec<(PathBuf, PathBuf, bool)> = spec
                .mounts
                .iter()
                .map(|m| {
                    (
                        m.host_path.clone(),
                        PathBuf::from(&m.container_path),
                        m.read_only,
                    )
                })
                .collect();
            mounts.push((sandbox.hosts_file.clone(), "/etc/hosts".into(), true));
            mounts.push((sandbox.resolv_conf.clone(), "/etc/resolv.conf".into(), true));
            let hostname = sandbox.hostname.clone();
            let prepared = isolation::prepare(&mounts, &hostname)?;
            // SAFETY: pre_exec runs in the forked child before exec; `isolation::enter` only
            // makes raw syscalls on data prepared (allocated) before the fork.
            unsafe {
                command.pre_exec(move || isolation::enter(&prepared));
            }
        }
        Ok((command, wiring))
    }
}

fn sandbox_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("pods").join(id)
}

fn read_records<T: for<'de> Deserialize<'de>>(dir: &Path) -> Vec<T> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect()
}

/// Signals process group `pid` (never init's or the caller's own); whether it was delivered.
fn kill_group(pid: u32, signal: i32) -> bool {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory involved.
    pid > 1 && unsafe { libc::kill(-(pid as i32), signal) } == 0
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn ensure_image(&self, _image: &str, _policy: PullPolicy) -> Result<(), RuntimeError> {
        // No images: the host's programs run. Every image counts as present.
        Ok(())
    }

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let record = SandboxRecord {
            id: new_id(),
            pod_uid: spec.uid.clone(),
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            hostname: spec.hostname.clone(),
            resolv_conf: spec.resolv_conf.clone(),
            hosts_file: spec.hosts_file.clone(),
        };
        self.host_ports
            .open(&record.id, &spec.port_mappings)
            .await?;
        if let Err(e) = self.save("sandboxes", &record.id, &record) {
            self.host_ports.close(&record.id).await;
            return Err(e);
        }
        let sandbox = Sandbox {
            id: record.id.clone(),
            ip: None,
            pod_uid: record.pod_uid.clone(),
        };
        self.sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), record);
        Ok(sandbox)
    }

    async fn stop_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.record.sandbox_id == sandbox_id)
            .map(|c| c.record.id.clone())
            .collect();
        for id in ids {
            self.stop_container(&id, Duration::ZERO).await?;
        }
        self.host_ports.close(sandbox_id).await;
        Ok(())
    }

    async fn remove_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        self.stop_sandbox(sandbox_id).await?;
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.record.sandbox_id == sandbox_id)
            .map(|c| c.record.id.clone())
            .collect();
        for id in ids {
            self.remove_container(&id).await?;
        }
        self.sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sandbox_id);
        let _ = std::fs::remove_file(
            self.state_dir
                .join("sandboxes")
                .join(format!("{sandbox_id}.json")),
        );
        let _ = std::fs::remove_dir_all(sandbox_dir(&self.state_dir, sandbox_id));
        Ok(())
    }

    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, RuntimeError> {
        Ok(self
            .sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| Sandbox {
                id: r.id.clone(),
                ip: None,
                pod_uid: r.pod_uid.clone(),
            })
            .collect())
    }

    async fn start_container(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        let sandbox_record = self.sandbox_record(&sandbox.id)?;
        let (mut command, wiring) = self.command(&sandbox_record, spec)?;
        if let Some(parent) = spec.log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| runtime_error("creating the log dir", e))?;
        }
        let log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .await
            .map_err(|e| runtime_error("opening the container log", e))?;
        let mut child = command.spawn().map_err(|e| RuntimeError::Start {
            reason: "RunContainerError",
            message: format!(
                "cannot run {:?}: {e}",
                spec.command.first().or(spec.args.first())
            ),
        })?;
        let pid = child.id();
        let pid_start = pid.and_then(crate::procfs::start_time);
        if let (Some(pid), Some(start)) = (pid, pid_start) {
            self.reaper.started(pid, start);
        }
        let id = new_id();
        let mut record = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            name: spec.name.clone(),
            pid,
            pid_start,
            env: spec.env.clone(),
            working_dir: spec.working_dir.clone(),
            started_at: Some(SystemTime::now()),
            exit_code: None,
            finished_at: None,
        };
        self.save("containers", &id, &record)?;
        let (io, copies) = ContainerIo::supervise(wiring, &mut child, log)?;
        let (exit_tx, exit_rx) = watch::channel(None);
        let state_file = self.state_dir.join("containers").join(format!("{id}.json"));
        let mut finished = record.clone();
        let output = io.clone();
        let reaper = self.reaper.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)),
                Err(e) => {
                    warn!(error = %e, "lost a container process");
                    137
                }
            };
            // A container ends with its main process, as on Kubernetes: what it started in
            // the background goes too (the group outlives its reaped leader only while it has
            // members, so its id cannot have been reused).
            if let Some(pid) = pid {
                kill_group(pid, libc::SIGKILL);
                reaper.exited(pid);
            }
            for copy in copies {
                let _ = copy.await;
            }
            output.output_ended();
            finished.exit_code = Some(code);
            finished.finished_at = Some(SystemTime::now());
            if let Ok(bytes) = serde_json::to_vec(&finished) {
                let _ = tokio::fs::write(&state_file, bytes).await;
            }
            debug!(container = %finished.name, code, "container exited");
            let _ = exit_tx.send(Some(code));
        });
        record.exit_code = None;
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                Arc::new(Supervised {
                    record,
                    exited: exit_rx,
                    io,
                }),
            );
        Ok(id)
    }

    async fn container_state(&self, container_id: &str) -> Result<ContainerState, RuntimeError> {
        let container = self.supervised(container_id)?;
        let exited = *container.exited.borrow();
        Ok(match exited {
            None => ContainerState::Running {
                started_at: container.record.started_at.unwrap_or(SystemTime::now()),
            },
            Some(code) => {
                let finished = read_records::<ContainerRecord>(&self.state_dir.join("containers"))
                    .into_iter()
                    .find(|r| r.id == container_id)
                    .and_then(|r| r.finished_at)
                    .unwrap_or(SystemTime::now());
                ContainerState::Exited {
                    exit_code: code,
                    reason: if code == 0 { "Completed" } else { "Error" }.into(),
                    started_at: container.record.started_at,
                    finished_at: finished,
                }
            }
        })
    }

    async fn stop_container(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let container = match self.supervised(container_id) {
            Ok(c) => c,
            Err(RuntimeError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some(pid) = container.record.pid else {
            return Ok(());
        };
        let mut exited = container.exited.clone();
        if exited.borrow().is_some() {
            return Ok(());
        }
        kill_group(pid, libc::SIGTERM);
        let wait = exited.wait_for(|code| code.is_some());
        if tokio::time::timeout(grace, wait).await.is_err() {
            kill_group(pid, libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|c| c.is_some()))
                .await;
        }
        Ok(())
    }

    async fn remove_container(&self, container_id: &str) -> Result<(), RuntimeError> {
        self.stop_container(container_id, Duration::ZERO).await?;
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(container_id);
        let _ = std::fs::remove_file(
            self.state_dir
                .join("containers")
                .join(format!("{container_id}.json")),
        );
        Ok(())
    }

    async fn exec_command(
        &self,
        container_id: &str,
        argv: &[String],
    ) -> Result<tokio::process::Command, RuntimeError> {
        let container = self.supervised(container_id)?;
        let record = &container.record;
        if container.exited.borrow().is_some() {
            return Err(RuntimeError::Start {
                reason: "ContainerNotRunning",
                message: format!("container {} is not running", record.name),
            });
        }
        let Some((program, rest)) = argv.split_first() else {
            return Err(RuntimeError::Start {
                reason: "InvalidCommand",
                message: "an empty command".into(),
            });
        };
        let mut command = match (self.isolate, record.pid) {
            // Enter the container's mount and UTS namespaces (its volumes and hostname).
            (true, Some(pid)) => {
                let mut c = tokio::process::Command::new("nsenter");
                c.arg("-t").arg(pid.to_string()).args(["-m", "-u", "--"]);
                c.arg(program).args(rest);
                c
            }
            _ => {
                let mut c = tokio::process::Command::new(program);
                c.args(rest);
                c
            }
        };
        command.env_clear();
        command.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        for (k, v) in &record.env {
            command.env(k, v);
        }
        if let Some(dir) = &record.working_dir
            && (self.isolate || Path::new(dir).is_dir())
        {
            command.current_dir(dir);
        }
        Ok(command)
    }

    async fn attach(
        &self,
        container_id: &str,
        options: AttachOptions,
    ) -> Result<Attachment, RuntimeError> {
        let container = self.supervised(container_id)?;
        if container.exited.borrow().is_some() {
            return Err(RuntimeError::Start {
                reason: "ContainerNotRunning",
                message: format!("container {} is not running", container.record.name),
            });
        }
        container.io.attach(&container.record.name, options)
    }

    async fn usage(&self, container_id: &str) -> Result<Usage, RuntimeError> {
        let container = self.supervised(container_id)?;
        let Some(pid) = container.record.pid else {
            return Ok(Usage::default());
        };
        Ok(process_usage(pid).unwrap_or_default())
    }
}

/// CPU time and resident memory of a process, from /proc.
fn process_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(Usage {
        cpu_nanos: ticks * 1_000_000_000 / hz,
        memory_bytes: resident * page,
    })
}

/// Private mount + UTS namespaces for a container process (root only).
mod isolation {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    use super::{RuntimeError, runtime_error};

    /// Everything `enter` needs, allocated before the fork.
    pub struct Prepared {
        mounts: Vec<(CString, CString, bool)>,
        hostname: CString,
    }

    /// Creates missing mount points (files or directories, matching the source) and turns
    /// paths into C strings.
    pub fn prepare(
        mounts: &[(PathBuf, PathBuf, bool)],
        hostname: &str,
    ) -> Result<Prepared, RuntimeError> {
        let mut out = Vec::new();
        for (source, target, read_only) in mounts {
            if !source.exists() {
                continue;
            }
            if !target.exists() {
                if source.is_dir() {
                    std::fs::create_dir_all(target)
                        .map_err(|e| runtime_error("creating a mount point", e))?;
                } else {
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| runtime_error("creating a mount point", e))?;
                    }
                    std::fs::write(target, b"")
                        .map_err(|e| runtime_error("creating a mount point", e))?;
                }
            }
            let c = |p: &PathBuf| {
                CString::new(p.as_os_str().as_bytes()).map_err(|e| runtime_error("a mount path", e))
            };
            out.push((c(source)?, c(target)?, *read_only));
        }
        Ok(Prepared {
            mounts: out,
            hostname: CString::new(hostname).map_err(|e| runtime_error("the hostname", e))?,
        })
    }

    /// Runs in the child between fork and exec: only async-signal-safe syscalls.
    pub fn enter(prepared: &Prepared) -> std::io::Result<()> {
        // SAFETY: plain syscalls on NUL-terminated strings owned by `prepared`.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let root = c"/";
            let none = c"none";
            if libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for (source, target, read_only) in &prepared.mounts {
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if *read_only {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC;
                    if libc::mount(
                        none.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        flags,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            let name = prepared.hostname.as_bytes();
            if libc::sethostname(prepared.hostname.as_ptr(), name.len()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
