//! One pod's worker: creates its sandbox and volumes, runs init containers in order, then the
//! containers with their restart policy (exponential back-off 10 s .. 5 min, reset after 10 min
//! of running), probes and lifecycle hooks; reports status whenever it changes; and on deletion
//! stops everything (preStop, SIGTERM, grace period, SIGKILL) before removing the pod for good.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use super::probe::{ProbeFailure, Probes, Target, Verdict};
use super::status::{self, ContainerView, PodView, State, Terminated};
use super::tokens::TokenCache;
use super::{ContainerEntry, NodeContext, RegisteredPod, files};
use crate::agent::env::{self, ConfigError, ObjectSource};
use crate::agent::logs::log_path;
use crate::agent::runtime::{
    ContainerSpec, ContainerState, Limits, PortMapping, PullPolicy, RuntimeError, Sandbox,
    SandboxSpec,
};
use crate::agent::volumes::{self, TokenSource, VolumeContext};
use crate::json_path::JsonPath;
use crate::registry::pod::service_account_of;
use crate::registry::quantity;

/// How often a pod is re-checked without news (container exits, probes, volume refresh).
const SYNC_PERIOD: Duration = Duration::from_secs(1);
/// How often ConfigMap/Secret/Downward API volumes are rewritten from their sources.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long starts its back-off afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// One container slot of the pod (init or regular), across restarts.
struct Slot {
    name: String,
    init: bool,
    id: Option<String>,
    /// Times started so far (restartCount = starts - 1).
    starts: u32,
    state: ContainerState,
    waiting: Option<(String, String)>,
    last: Option<Terminated>,
    current_terminated: Option<Terminated>,
    backoff: Duration,
    backoff_until: Option<Instant>,
    probes: Option<Probes>,
    /// Killed by the agent for a failed liveness/startup probe: restart regardless of policy.
    restart_requested: bool,
}

impl Slot {
    fn new(name: &str, init: bool) -> Self {
        Slot {
            name: name.to_string(),
            init,
            id: None,
            starts: 0,
            state: ContainerState::Created,
            waiting: Some(("ContainerCreating".into(), String::new())),
            last: None,
            current_terminated: None,
            backoff: BACKOFF_START,
            backoff_until: None,
            probes: None,
            restart_requested: false,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. }) && self.id.is_some()
    }

    fn exited(&self) -> Option<i32> {
        match (&self.state, &self.id) {
            (ContainerState::Exited { exit_code, .. }, Some(_)) => Some(*exit_code),
            _ => None,
        }
    }

    fn ready(&self) -> bool {
        if !self.running() {
            return false;
        }
        let Some(probes) = &self.probes else {
            return true;
        };
        if probes
            .startup
            .as_ref()
            .is_some_and(|s| *s.borrow() != Verdict::Success)
        {
            return false;
        }
        match &probes.readiness {
            Some(r) => *r.borrow() == Verdict::Success,
            None => true,
        }
    }

    fn started(&self) -> bool {
        self.running()
            && self
                .probes
                .as_ref()
                .and_then(|p| p.startup.as_ref())
                .is_none_or(|s| *s.borrow() == Verdict::Success)
    }
}

struct Worker {
    context: Arc<NodeContext>,
    pod: Value,
    uid: String,
    namespace: String,
    name: String,
    pod_dir: PathBuf,
    sandbox: Option<Sandbox>,
    /// When to try the sandbox again after a failure, and the last failure's message.
    sandbox_retry: Option<(Instant, Duration, String)>,
    pod_ip: String,
    volumes: Option<BTreeMap<String, PathBuf>>,
    volumes_at: Option<Instant>,
    /// Service account tokens of the pod's projected volumes, reused while fresh.
    tokens: TokenCache,
    config_error: Option<String>,
    slots: Vec<Slot>,
    start_time: SystemTime,
    reported: Value,
    probe_failures: mpsc::Sender<ProbeFailure>,
    probe_rx: mpsc::Receiver<ProbeFailure>,
    /// Set once the pod failed or succeeded for good (restartPolicy Never/OnFailure).
    finished: Option<&'static str>,
}

/// The worker task for one pod: runs until the pod is deleted and cleaned up.
pub async fn run(context: Arc<NodeContext>, mut updates: mpsc::UnboundedReceiver<Option<Value>>) {
    let Some(Some(pod)) = updates.recv().await else {
        return;
    };
    let (probe_failures, probe_rx) = mpsc::channel(64);
    let uid = text(&pod, "/metadata/uid").to_string();
    let namespace = text(&pod, "/metadata/namespace").to_string();
    let name = text(&pod, "/metadata/name").to_string();
    let span = tracing::info_span!("pod", namespace = %namespace, name = %name);
    let mut worker = Worker {
        pod_dir: context.pods_dir.join(&uid),
        context,
        reported: pod.get("status").cloned().unwrap_or(json!({})),
        pod,
        uid,
        namespace,
        name,
        sandbox: None,
        sandbox_retry: None,
        pod_ip: String::new(),
        volumes: None,
        volumes_at: None,
        tokens: TokenCache::default(),
        config_error: None,
        slots: Vec::new(),
        start_time: SystemTime::now(),
        probe_failures,
        probe_rx,
        finished: None,
    };
    worker.slots = worker.declared_slots();
    async move {
        loop {
            if worker.deleting() {
                worker.terminate().await;
                return;
            }
            worker.sync().await;
            worker.report().await;
            tokio::select! {
                update = updates.recv() => match update {
                    Some(Some(pod)) => worker.pod = pod,
                    // Gone from the API (or the manager stopped): stop and clean up.
                    Some(None) | None => {
                        worker.stop_all(Some(Duration::from_secs(2))).await;
                        worker.cleanup().await;
                        return;
                    }
                },
                Some(failure) = worker.probe_rx.recv() => worker.probe_failed(failure).await,
                _ = tokio::time::sleep(SYNC_PERIOD) => {}
            }
        }
    }
    .instrument(span)
    .await
}

impl Worker {
    fn declared_slots(&self) -> Vec<Slot> {
        let mut slots = Vec::new();
        for (list, init) in [("initContainers", true), ("containers", false)] {
            for c in self
                .pod
                .at(&format!("/spec/{list}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                slots.push(Slot::new(text(c, "/name"), init));
            }
        }
        slots
    }

    fn container_spec(&self, slot: &Slot) -> Value {
        let list = if slot.init {
            "initContainers"
        } else {
            "containers"
        };
        self.pod
            .at(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| text(c, "/name") == slot.name)
            .cloned()
            .unwrap_or(json!({}))
    }

    fn deleting(&self) -> bool {
        self.pod.at("/metadata/deletionTimestamp").is_some()
    }

    fn restart_policy(&self) -> &str {
        match text(&self.pod, "/spec/restartPolicy") {
            "" => "Always",
            p => p,
        }
    }

    fn ip(&self) -> String {
        if self.pod_ip.is_empty() {
            self.context.node_ip.clone()
        } else {
            self.pod_ip.clone()
        }
    }

    async fn event(&self, kind: &str, reason: &str, message: &str, field_path: Option<String>) {
        let now = status::timestamp(SystemTime::now());
        let mut involved = json!({
            "kind": "Pod", "apiVersion": "v1", "namespace": self.namespace, "name": self.name, "uid": self.uid,
        });
        if let Some(path) = field_path {
            involved["fieldPath"] = json!(path);
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{}.", self.name), "namespace": self.namespace},
            "involvedObject": involved,
            "type": kind, "reason": reason, "message": message,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        self.context.events.record(event);
    }

    /// One pass towards the spec.
    async fn sync(&mut self) {
        if self.finished.is_some() {
            return;
        }
        if self.sandbox.is_none() && !self.create_sandbox().await {
            return;
        }
        let refresh = self
            .volumes_at
            .is_none_or(|at| at.elapsed() >= VOLUME_REFRESH);
        if refresh {
            self.prepare_volumes().await;
        }
        // Init containers, in order: each must exit 0 before the next (and the app) starts.
        let count = self.slots.len();
        for index in 0..count {
            if !self.slots[index].init {
                continue;
            }
            self.observe(index).await;
            match self.slots[index].exited() {
                Some(0) => continue,
                Some(code) => {
                    if self.restart_policy() == "Never" {
                        self.finished = Some("Failed");
                        info!(container = %self.slots[index].name, code, "init container failed; the pod fails");
                        return;
                    }
                    self.restart_with_backoff(index).await;
                    return;
                }
                None if self.slots[index].running() => return,
                None => {
                    self.start_when_due(index).await;
                    return;
                }
            }
        }
        for index in 0..count {
            if self.slots[index].init {
                continue;
            }
            self.observe(index).await;
            self.check_liveness(index).await;
            if self.slots[index].running() {
                continue;
            }
            match self.slots[index].exited() {
                None => self.start_when_due(index).await,
                Some(code) => {
                    let restart = self.slots[index].restart_requested
                        || match self.restart_policy() {
                            "Always" => true,
                            "OnFailure" => code != 0,
                            _ => false,
                        };
                    if restart {
                        self.restart_with_backoff(index).await;
                    }
                }
            }
        }
        // Every app container done for good: the pod is finished.
        let apps: Vec<&Slot> = self.slots.iter().filter(|s| !s.init).collect();
        let policy = self.restart_policy();
        if policy != "Always" && !apps.is_empty() {
            let codes: Vec<Option<i32>> = apps.iter().map(|s| s.exited()).collect();
            let done = codes.iter().all(|c| match c {
                Some(0) => true,
                Some(_) => policy == "Never",
                None => false,
            });
            if done {
                let failed = codes.iter().any(|c| c.is_some_and(|c| c != 0));
                self.finished = Some(if failed { "Failed" } else { "Succeeded" });
                for slot in &mut self.slots {
                    slot.probes = None;
                }
            }
        }
    }

    async fn create_sandbox(&mut self) -> bool {
        if self
            .sandbox_retry
            .as_ref()
            .is_some_and(|(at, _, _)| Instant::now() < *at)
        {
            return false;
        }
        let host_network = self
            .pod
            .at("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let hosts = self.pod_dir.join("etc-hosts");
        let resolv = self.pod_dir.join("resolv.conf");
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv_text = files::resolv_conf(
            &self.pod,
            self.context.cluster_dns.as_deref(),
            &self.context.cluster_domain,
            &host_resolv,
        );
        if let Err(e) = std::fs::create_dir_all(&self.pod_dir)
            .and_then(|()| std::fs::write(&resolv, resolv_text))
        {
            warn!(error = %e, "cannot write the pod's files");
            return false;
        }
        let mut port_mappings = Vec::new();
        for c in self
            .pod
            .at("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for p in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let host_port = p.get("hostPort").and_then(Value::as_u64).unwrap_or(0);
                let container_port = p.get("containerPort").and_then(Value::as_u64).unwrap_or(0);
                if host_port > 0 && container_port > 0 {
                    port_mappings.push(PortMapping {
                        protocol: p
                            .get("protocol")
                            .and_then(Value::as_str)
                            .unwrap_or("TCP")
                            .into(),
                        container_port: container_port as u16,
                        host_port: host_port as u16,
                        host_ip: p.get("hostIP").and_then(Value::as_str).map(str::to_string),
                    });
                }
            }
        }
        let labels = self
            .pod
            .at("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        // The hosts file needs the pod IP, known only once the sandbox exists: write a
        // placeholder first, rewrite it right after.
        let _ = std::fs::write(
            &hosts,
            files::etc_hosts(
                &self.pod,
                &self.context.node_ip,
                &self.context.cluster_domain,
            ),
        );
        let spec = SandboxSpec {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            hostname: files::hostname(&self.pod),
            host_network,
            pod_dir: self.pod_dir.clone(),
            resolv_conf: resolv,
            hosts_file: hosts.clone(),
            port_mappings,
            labels,
        };
        // A sandbox an earlier agent made for this pod is replaced (its containers restart):
        // this agent did not see their history.
        if let Ok(existing) = self.context.runtime.sandboxes_of(&self.uid).await {
            for old in &existing {
                info!(sandbox = %old.id, "replacing the sandbox an earlier agent made");
                let _ = self.context.runtime.remove_sandbox(&old.id).await;
            }
        }
        match self.context.runtime.run_sandbox(&spec).await {
            Ok(sandbox) => {
                self.pod_ip = match (host_network, sandbox.ip) {
                    (false, Some(ip)) => ip.to_string(),
                    _ => self.context.node_ip.clone(),
                };
                let _ = std::fs::write(
                    &hosts,
                    files::etc_hosts(&self.pod, &self.pod_ip, &self.context.cluster_domain),
                );
                info!(ip = %self.pod_ip, "pod sandbox ready");
                self.sandbox = Some(sandbox);
                self.publish();
                true
            }
            Err(e) => {
                let message = format!("Failed to create pod sandbox: {e}");
                let delay = match &self.sandbox_retry {
                    Some((_, delay, _)) => (*delay * 2).min(Duration::from_secs(30)),
                    None => Duration::from_secs(1),
                };
                let repeated = self
                    .sandbox_retry
                    .as_ref()
                    .is_some_and(|(_, _, m)| *m == message);
                if !repeated {
                    warn!(error = %e, "cannot create the pod sandbox");
                    self.event("Warning", "FailedCreatePodSandBox", &message, None)
                        .await;
                }
                self.sandbox_retry = Some((Instant::now() + delay, delay, message));
                false
            }
        }
    }

    async fn prepare_volumes(&mut self) {
        let objects = Source(self.context.clone());
        let tokens = PodTokens {
            context: &self.context,
            cache: &self.tokens,
        };
        let ca = self.context.control.credentials().ca_pem.clone();
        let context = VolumeContext {
            pod_dir: &self.pod_dir,
            objects: &objects,
            tokens: &tokens,
            node: &self.context.resources,
            ca_pem: &ca,
        };
        match volumes::prepare(&self.pod, &context).await {
            Ok(volumes) => {
                self.volumes = Some(volumes);
                self.volumes_at = Some(Instant::now());
                self.config_error = None;
            }
            Err(ConfigError(message)) => {
                if self.config_error.as_deref() != Some(message.as_str()) {
                    warn!(%message, "volumes not ready");
                    self.event(
                        "Warning",
                        "FailedMount",
                        &format!("MountVolume.SetUp failed: {message}"),
                        None,
                    )
                    .await;
                }
                self.config_error = Some(message);
                // Keep the last good volumes for running containers; retry next sync.
                self.volumes_at = None;
            }
        }
    }

    /// Reads the runtime's view of the slot's current container.
    async fn observe(&mut self, index: usize) {
        let Some(id) = self.slots[index].id.clone() else {
            return;
        };
        let state = match self.context.runtime.container_state(&id).await {
            Ok(state) => state,
            Err(RuntimeError::NotFound(_)) => ContainerState::Unknown,
            Err(e) => {
                debug!(error = %e, "container state unavailable");
                return;
            }
        };
        let slot = &mut self.slots[index];
        if let ContainerState::Exited {
            exit_code,
            reason,
            started_at,
            finished_at,
        } = &state
            && !matches!(slot.state, ContainerState::Exited { .. })
        {
            slot.probes = None;
            slot.current_terminated = Some(Terminated {
                exit_code: *exit_code,
                reason: reason.clone(),
                message: String::new(),
                started_at: *started_at,
                finished_at: *finished_at,
                container_id: format!("{}://{id}", self.context.runtime.name()),
            });
        }
        if state == ContainerState::Unknown {
            slot.probes = None;
            slot.current_terminated = Some(Terminated {
                exit_code: 137,
                reason: "ContainerStatusUnknown".into(),
                message: "The container could not be located when the pod was terminated".into(),
                started_at: None,
                finished_at: SystemTime::now(),
                container_id: format!("{}://{id}", self.context.runtime.name()),
            });
            slot.state = ContainerState::Exited {
                exit_code: 137,
                reason: "ContainerStatusUnknown".into(),
                started_at: None,
                finished_at: SystemTime::now(),
            };
            return;
        }
        slot.state = state;
    }

    /// Restarts an exited container once its back-off has passed (the first restart at once,
    /// then 10 s, 20 s, ... 5 min; reset after 10 min of running).
    async fn restart_with_backoff(&mut self, index: usize) {
        let now = Instant::now();
        let slot = &mut self.slots[index];
        if slot.backoff_until.is_none() {
            let ran = match &slot.state {
                ContainerState::Exited {
                    started_at: Some(s),
                    finished_at,
                    ..
                } => finished_at.duration_since(*s).unwrap_or_default(),
                _ => Duration::ZERO,
            };
            if ran >= BACKOFF_RESET {
                slot.backoff = BACKOFF_START;
            }
            // The first restart is immediate whatever ended the container, a failed liveness
            // probe included (as the kubelet does): waiting would show CrashLoopBackOff with
            // RESTARTS 0 for a container that never crashed.
            let delay = if slot.starts <= 1 {
                Duration::ZERO
            } else {
                slot.backoff
            };
            if slot.starts > 1 {
                slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
            }
            slot.backoff_until = Some(now + delay);
            if !delay.is_zero() {
                let message = format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    delay.as_secs(),
                    slot.name,
                    self.name,
                    self.namespace,
                    self.uid
                );
                slot.waiting = Some(("CrashLoopBackOff".into(), message));
                let field = format!(
                    "spec.{}{{{}}}",
                    if slot.init {
                        "initContainers"
                    } else {
                        "containers"
                    },
                    slot.name
                );
                self.event(
                    "Warning",
                    "BackOff",
                    "Back-off restarting failed container",
                    Some(field),
                )
                .await;
            }
        }
        let slot = &self.slots[index];
        if slot.backoff_until.is_some_and(|until| now >= until) {
            self.start(index).await;
        }
    }

    async fn start_when_due(&mut self, index: usize) {
        let due = self.slots[index]
            .backoff_until
            .is_none_or(|until| Instant::now() >= until);
        if due {
            self.start(index).await;
        }
    }

    /// Creates and starts the slot's container (a new attempt).
    async fn start(&mut self, index: usize) {
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        let spec_json = self.container_spec(&self.slots[index]);
        let field = format!(
            "spec.{}{{{}}}",
            if self.slots[index].init {
                "initContainers"
            } else {
                "containers"
            },
            self.slots[index].name
        );
        let image = text(&spec_json, "/image").to_string();
        let policy = PullPolicy::parse(
            spec_json.get("imagePullPolicy").and_then(Value::as_str),
            &image,
        );
        if let Err(e) = self.context.runtime.ensure_image(&image, policy).await {
            let reason = match (&e, self.slots[index].waiting.as_ref().map(|w| w.0.as_str())) {
                (RuntimeError::ImagePull { .. }, Some("ErrImagePull" | "ImagePullBackOff")) => {
                    "ImagePullBackOff"
                }
                _ => e.reason(),
            };
            self.fail_start(index, reason, &e.to_string(), &field).await;
            return;
        }
        if let Some(message) = self.config_error.clone() {
            self.fail_start(index, "CreateContainerConfigError", &message, &field)
                .await;
            return;
        }
        let objects = Source(self.context.clone());
        let services = self.context.services.all();
        // The Downward API sees the addresses this sandbox has, even before they are reported.
        let mut pod = self.pod.clone();
        pod["status"]["podIP"] = json!(self.ip());
        pod["status"]["podIPs"] = json!([{"ip": self.ip()}]);
        pod["status"]["hostIP"] = json!(self.context.node_ip);
        pod["status"]["hostIPs"] = json!([{"ip": self.context.node_ip}]);
        let env = match env::build(
            &pod,
            &spec_json,
            &services,
            &objects,
            &self.context.resources,
        )
        .await
        {
            Ok(env) => env,
            Err(ConfigError(message)) => {
                self.fail_start(index, "CreateContainerConfigError", &message, &field)
                    .await;
                return;
            }
        };
        let empty = BTreeMap::new();
        let mounts = match volumes::mounts(
            &self.pod,
            &spec_json,
            self.volumes.as_ref().unwrap_or(&empty),
        ) {
            Ok(m) => m,
            Err(ConfigError(message)) => {
                self.fail_start(index, "CreateContainerConfigError", &message, &field)
                    .await;
                return;
            }
        };
        let env_map: BTreeMap<String, String> = env.iter().cloned().collect();
        let strings = |key: &str| -> Vec<String> {
            spec_json
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|s| env::expand(s, &env_map))
                .collect()
        };
        let attempt = self.slots[index].starts;
        let logs_dir = self.pod_dir.join("logs");
        let spec = ContainerSpec {
            name: self.slots[index].name.clone(),
            image: image.clone(),
            command: strings("command"),
            args: strings("args"),
            env,
            working_dir: spec_json
                .get("workingDir")
                .and_then(Value::as_str)
                .map(str::to_string),
            mounts,
            log_path: log_path(&logs_dir, &self.slots[index].name, attempt),
            limits: limits(&spec_json),
            tty: spec_json
                .get("tty")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            stdin: spec_json
                .get("stdin")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            stdin_once: spec_json
                .get("stdinOnce")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attempt,
        };
        // The previous attempt's container goes (its log stays for --previous).
        if let Some(old) = self.slots[index].id.take() {
            let _ = self.context.runtime.remove_container(&old).await;
        }
        if attempt == 0 {
            self.event(
                "Normal",
                "Pulled",
                &format!("Container image \"{image}\" already present on machine"),
                Some(field.clone()),
            )
            .await;
        }
        match self.context.runtime.start_container(&sandbox, &spec).await {
            Ok(id) => {
                let runtime = self.context.runtime.clone();
                let target = Target {
                    container: spec.name.clone(),
                    container_id: id.clone(),
                    ip: self.ip(),
                    spec: spec_json.clone(),
                    runtime,
                };
                let slot = &mut self.slots[index];
                if let Some(t) = slot.current_terminated.take() {
                    slot.last = Some(t);
                }
                slot.id = Some(id.clone());
                slot.starts += 1;
                slot.state = ContainerState::Running {
                    started_at: SystemTime::now(),
                };
                slot.waiting = None;
                slot.backoff_until = None;
                slot.restart_requested = false;
                slot.probes = Some(Probes::start(target.clone(), self.probe_failures.clone()));
                self.event(
                    "Normal",
                    "Created",
                    &format!("Created container {}", spec.name),
                    Some(field.clone()),
                )
                .await;
                self.event(
                    "Normal",
                    "Started",
                    &format!("Started container {}", spec.name),
                    Some(field.clone()),
                )
                .await;
                self.publish();
                if let Some(hook) = spec_json.at("/lifecycle/postStart")
                    && let Err(message) = super::probe::probe_once(hook, &target).await
                {
                    self.event(
                        "Warning",
                        "FailedPostStartHook",
                        &format!("PostStartHook failed: {message}"),
                        Some(field.clone()),
                    )
                    .await;
                    let _ = self
                        .context
                        .runtime
                        .stop_container(&id, Duration::from_secs(2))
                        .await;
                }
            }
            Err(e) => {
                let message = e.to_string();
                self.fail_start(index, e.reason(), &message, &field).await;
            }
        }
    }

    async fn fail_start(&mut self, index: usize, reason: &str, message: &str, field: &str) {
        let slot = &mut self.slots[index];
        let repeated = slot
            .waiting
            .as_ref()
            .is_some_and(|(r, m)| r == reason && m == message);
        slot.waiting = Some((reason.to_string(), message.to_string()));
        // Try again after a back-off, growing like a crash loop's.
        slot.backoff_until = Some(Instant::now() + slot.backoff.min(BACKOFF_START));
        if !repeated {
            warn!(container = %slot.name, reason, message, "container not started");
            // The kubelet reports image and start failures alike as "Failed".
            self.event(
                "Warning",
                "Failed",
                &format!("Error: {message}"),
                Some(field.to_string()),
            )
            .await;
        }
    }

    /// Liveness (and startup) failure: kill the container so it restarts.
    async fn check_liveness(&mut self, index: usize) {
        let slot = &self.slots[index];
        let Some(probes) = &slot.probes else { return };
        let failed = probes
            .liveness
            .as_ref()
            .is_some_and(|v| *v.borrow() == Verdict::Failure)
            || probes
                .startup
                .as_ref()
                .is_some_and(|v| *v.borrow() == Verdict::Failure);
        if !failed || !slot.running() {
            return;
        }
        let Some(id) = slot.id.clone() else { return };
        let name = slot.name.clone();
        let field = format!("spec.containers{{{name}}}");
        let grace = self.grace();
        self.event(
            "Normal",
            "Killing",
            &format!("Container {name} failed liveness probe, will be restarted"),
            Some(field),
        )
        .await;
        self.slots[index].probes = None;
        self.slots[index].restart_requested = true;
        self.kill(&id, &self.container_spec(&self.slots[index]), grace)
            .await;
        self.observe(index).await;
    }

    async fn probe_failed(&mut self, failure: ProbeFailure) {
        let field = format!("spec.containers{{{}}}", failure.container);
        let message = format!("{} probe failed: {}", failure.kind.label(), failure.message);
        self.event("Warning", "Unhealthy", &message, Some(field))
            .await;
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .at("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .or_else(|| {
                self.pod
                    .at("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    /// preStop hook, then SIGTERM and SIGKILL after what is left of the grace period.
    async fn kill(&self, id: &str, spec: &Value, grace: Duration) {
        let started = Instant::now();
        if let Some(hook) = spec.at("/lifecycle/preStop") {
            let target = Target {
                container: text(spec, "/name").into(),
                container_id: id.into(),
                ip: self.ip(),
                spec: spec.clone(),
                runtime: self.context.runtime.clone(),
            };
            if let Ok(Err(message)) =
                tokio::time::timeout(grace, super::probe::probe_once(hook, &target)).await
            {
                self.event(
                    "Warning",
                    "FailedPreStopHook",
                    &format!("PreStopHook failed: {message}"),
                    None,
                )
                .await;
            }
        }
        let left = grace.saturating_sub(started.elapsed());
        if let Err(e) = self.context.runtime.stop_container(id, left).await {
            warn!(error = %e, "stopping a container failed");
        }
    }

    /// Stops every running container in parallel within the grace period.
    async fn stop_all(&mut self, grace: Option<Duration>) {
        let grace = grace.unwrap_or_else(|| self.grace());
        let mut running = Vec::new();
        for slot in &mut self.slots {
            slot.probes = None;
            if let Some(id) = slot.id.clone()
                && matches!(slot.state, ContainerState::Running { .. })
            {
                running.push((id, slot.name.clone(), slot.init));
            }
        }
        let this = &*self;
        let kills = running.iter().map(|(id, name, init)| {
            let spec = this.container_spec(&Slot::new(name, *init));
            async move {
                this.event(
                    "Normal",
                    "Killing",
                    &format!("Stopping container {name}"),
                    Some(format!("spec.containers{{{name}}}")),
                )
                .await;
                this.kill(id, &spec, grace).await;
            }
        });
        futures::future::join_all(kills).await;
        for index in 0..self.slots.len() {
            self.observe(index).await;
        }
    }

    /// The pod is being deleted: stop it, report, remove it from the API, clean up.
    async fn terminate(&mut self) {
        info!(grace = self.grace().as_secs(), "terminating pod");
        self.stop_all(None).await;
        if let Some(sandbox) = &self.sandbox
            && let Err(e) = self.context.runtime.stop_sandbox(&sandbox.id).await
        {
            warn!(error = %e, "stopping the sandbox failed");
        }
        self.report().await;
        for attempt in 0..30 {
            match self.context.control.delete_pod(&self.pod).await {
                Ok(()) => break,
                Err(e) => {
                    debug!(attempt, error = %e.message(), "final pod delete failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.cleanup().await;
    }

    async fn cleanup(&mut self) {
        if let Some(sandbox) = self.sandbox.take()
            && let Err(e) = self.context.runtime.remove_sandbox(&sandbox.id).await
        {
            warn!(error = %e, "removing the sandbox failed");
        }
        self.context
            .registry
            .remove(&self.namespace, &self.name, &self.uid);
        if let Err(e) = std::fs::remove_dir_all(&self.pod_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(error = %e, "removing the pod directory failed");
        }
        info!("pod cleaned up");
    }

    /// Tells `kubectl logs/exec` where the containers are.
    fn publish(&self) {
        let logs_dir = self.pod_dir.join("logs");
        let containers = self
            .slots
            .iter()
            .map(|s| {
                let current = s.starts.checked_sub(1);
                (
                    s.name.clone(),
                    ContainerEntry {
                        id: s.id.clone(),
                        running: s.running(),
                        log: current.map(|a| log_path(&logs_dir, &s.name, a)),
                        previous_log: current
                            .and_then(|a| a.checked_sub(1))
                            .map(|a| log_path(&logs_dir, &s.name, a)),
                    },
                )
            })
            .collect();
        self.context.registry.set(
            &self.namespace,
            &self.name,
            RegisteredPod {
                uid: self.uid.clone(),
                ip: self.ip(),
                containers,
            },
        );
    }

    fn view(&self) -> PodView {
        let runtime = self.context.runtime.name();
        let views = |init: bool| -> Vec<ContainerView> {
            self.slots
                .iter()
                .filter(|s| s.init == init)
                .map(|s| {
                    let spec = self.container_spec(s);
                    let state = match (&s.waiting, &s.state, &s.current_terminated) {
                        (Some((reason, message)), _, _) if !s.running() => State::Waiting {
                            reason: reason.clone(),
                            message: message.clone(),
                        },
                        (_, ContainerState::Running { started_at }, _) if s.id.is_some() => {
                            State::Running {
                                started_at: *started_at,
                            }
                        }
                        (_, _, Some(t)) => State::Terminated(t.clone()),
                        _ => State::Waiting {
                            reason: "ContainerCreating".into(),
                            message: String::new(),
                        },
                    };
                    ContainerView {
                        name: s.name.clone(),
                        image: text(&spec, "/image").to_string(),
                        container_id: s.id.as_ref().map(|id| format!("{runtime}://{id}")),
                        state,
                        last: s.last.clone(),
                        ready: s.ready(),
                        started: s.started(),
                        restart_count: s.starts.saturating_sub(1),
                    }
                })
                .collect()
        };
        let init = views(true);
        let containers = views(false);
        let initialized = self
            .slots
            .iter()
            .filter(|s| s.init)
            .all(|s| s.exited() == Some(0));
        let any_started = self.slots.iter().any(|s| !s.init && s.starts > 0);
        let phase = match self.finished {
            Some(phase) => phase,
            None if initialized && any_started => "Running",
            None => "Pending",
        };
        PodView {
            phase,
            reason: String::new(),
            message: String::new(),
            host_ip: self.context.node_ip.clone(),
            pod_ip: if self.sandbox.is_some() {
                self.ip()
            } else {
                String::new()
            },
            start_time: self.start_time,
            sandbox_ready: self.sandbox.is_some(),
            initialized,
            init,
            containers,
        }
    }

    /// Sends the status when it differs from the last one the API has.
    async fn report(&mut self) {
        self.publish();
        let current = self.pod.get("status").cloned().unwrap_or(json!({}));
        let base = if current.get("startTime").is_some() || self.reported.get("startTime").is_none()
        {
            current
        } else {
            self.reported.clone()
        };
        if let Some(started) = base.get("startTime").and_then(Value::as_str)
            && let Ok(t) = started.parse::<jiff::Timestamp>()
        {
            self.start_time = SystemTime::from(t);
        }
        let new = status::build(&base, &self.view());
        if new == base || new == self.reported {
            return;
        }
        match self
            .context
            .control
            .update_pod_status(&self.pod, &new)
            .await
        {
            Ok(stored) => {
                self.reported = stored.get("status").cloned().unwrap_or(new);
                self.pod = stored;
            }
            Err(e) => debug!(error = %e.message(), "status update failed; retrying next sync"),
        }
    }
}

/// Container resources as runtime limits.
fn limits(spec: &Value) -> Limits {
    let quantity_at = |p: &str| spec.at(p).and_then(Value::as_str).and_then(quantity::parse);
    Limits {
        memory_bytes: quantity_at("/resources/limits/memory").map(|b| b as u64),
        cpu_millis: quantity_at("/resources/limits/cpu").map(|c| (c * 1000.0).ceil() as u64),
    }
}

/// Reads objects and tokens over the control-plane connection.
struct Source(Arc<NodeContext>);

#[async_trait::async_trait]
impl ObjectSource for Source {
    async fn get(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, String> {
        self.0
            .control
            .get(resource, namespace, name)
            .await
            .map_err(|s| s.message().to_string())
    }
}

/// A pod's service account tokens: from its cache while fresh, else from the control plane.
struct PodTokens<'a> {
    context: &'a NodeContext,
    cache: &'a TokenCache,
}

#[async_trait::async_trait]
impl TokenSource for PodTokens<'_> {
    async fn token(
        &self,
        pod: &Value,
        audiences: &[String],
        expiration_seconds: i64,
    ) -> Result<String, String> {
        let account = service_account_of(pod);
        let now = SystemTime::now();
        if let Some(token) = self.cache.get(account, audiences, expiration_seconds, now) {
            return Ok(token);
        }
        let (token, expires_unix) = self
            .context
            .control
            .service_account_token(pod, audiences, expiration_seconds)
            .await
            .map_err(|s| s.message().to_string())?;
        let expires =
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(expires_unix).unwrap_or(0));
        self.cache.put(
            account,
            audiences,
            expiration_seconds,
            token.clone(),
            now,
            expires,
        );
        Ok(token)
    }
}
