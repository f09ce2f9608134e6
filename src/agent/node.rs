//! This node's Node object: what the host offers (capacity, allocatable, addresses, node
//! info), its registration, and the heartbeats (Lease every 10 s, status every minute or on
//! change), as the kubelet does.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::{info, warn};

use super::control_plane::ControlPlane;
use super::env::NodeResources;
use super::pods::status::timestamp;
use crate::json_path::JsonPath;

/// The kubelet renews its Lease every 10 s with a 40 s duration.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;
const STATUS_EVERY: Duration = Duration::from_secs(60);
/// The version string nodes report (`kubectl get nodes` VERSION column).
pub const KUBELET_VERSION: &str = "v1.32.0-skiff";

/// What the host offers.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub cpus: u64,
    pub memory_bytes: u64,
    pub max_pods: u64,
    pub machine_id: String,
    pub kernel: String,
    pub os_image: String,
}

impl HostInfo {
    pub fn probe(max_pods: u64) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0);
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        HostInfo {
            cpus,
            memory_bytes,
            max_pods,
            machine_id: read("/etc/machine-id"),
            kernel: read("/proc/sys/kernel/osrelease"),
            os_image,
        }
    }

    pub fn resources(&self) -> NodeResources {
        NodeResources {
            cpu_cores: self.cpus as f64,
            memory_bytes: self.memory_bytes as f64,
        }
    }
}

/// The Node as this agent registers it.
pub struct NodeSpec {
    pub name: String,
    pub address: String,
    pub kubelet_port: u16,
    pub labels: Vec<(String, String)>,
    pub runtime: &'static str,
    pub host: HostInfo,
}

impl NodeSpec {
    pub fn object(&self, ready: bool) -> Value {
        let mut labels = json!({
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch(),
        });
        for (k, v) in &self.labels {
            labels[k] = json!(v);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {},
            "status": self.status(ready),
        })
    }

    pub fn status(&self, ready: bool) -> Value {
        let host = &self.host;
        let capacity = json!({
            "cpu": host.cpus.to_string(),
            "memory": format!("{}Ki", host.memory_bytes / 1024),
            "pods": host.max_pods.to_string(),
            "ephemeral-storage": "50Gi",
        });
        let now = timestamp(std::time::SystemTime::now());
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            json!({"type": kind, "status": status, "reason": reason, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        json!({
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": self.address},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": host.machine_id,
                "systemUUID": host.machine_id,
                "bootID": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim(),
                "kernelVersion": host.kernel,
                "osImage": host.os_image,
                "containerRuntimeVersion": format!("{}://{}", self.runtime, env!("CARGO_PKG_VERSION")),
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": arch(),
            },
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                if ready {
                    condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
                } else {
                    condition("Ready", "False", "KubeletNotReady", "container runtime is starting")
                },
            ],
        })
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Registers the Node (retrying until a member answers); returns the stored Node.
///
/// A new Node starts NotReady ("container runtime is starting"), as kubelet's does: the
/// runtime is started only after registration (it needs the pod CIDR the control plane
/// assigns), and the scheduler must not bind pods to a node that cannot run them yet.
/// [`heartbeat`], started once the runtime answers, posts Ready.
pub async fn register(control: &ControlPlane, spec: &NodeSpec) -> Value {
    let mut delay = Duration::from_millis(500);
    loop {
        match control.register_node(&spec.object(false)).await {
            Ok(node) => {
                let cidr = node
                    .at("/spec/podCIDR")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                info!(node = %spec.name, pod_cidr = cidr, "node registered");
                return node;
            }
            Err(e) => {
                warn!(error = %e.message(), "node registration failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Renews the Lease every 10 s and re-posts the status every minute, forever.
pub async fn heartbeat(control: Arc<ControlPlane>, spec: Arc<NodeSpec>) {
    // Post the status at once: a node coming back must turn Ready without waiting a minute.
    let mut last_status: Option<tokio::time::Instant> = None;
    loop {
        if let Err(e) = control.renew_lease(LEASE_SECONDS).await {
            warn!(error = %e.message(), "lease renewal failed");
        }
        if last_status.is_none_or(|at| at.elapsed() >= STATUS_EVERY) {
            match control
                .update_node_status(&json!({"status": spec.status(true)}))
                .await
            {
                Ok(_) => last_status = Some(tokio::time::Instant::now()),
                Err(e) => warn!(error = %e.message(), "node status update failed"),
            }
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NodeSpec {
        NodeSpec {
            name: "n1".into(),
            address: "10.0.0.1".into(),
            kubelet_port: 10250,
            labels: vec![("zone".into(), "a".into())],
            runtime: "containerd",
            host: HostInfo {
                cpus: 2,
                memory_bytes: 1 << 30,
                max_pods: 110,
                machine_id: "m".into(),
                kernel: "6.1".into(),
                os_image: "Debian".into(),
            },
        }
    }

    fn ready(node: &Value) -> (String, String) {
        let conditions = node.at("/status/conditions").and_then(Value::as_array);
        let ready = conditions
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_default();
        (
            ready["status"].as_str().unwrap_or("").into(),
            ready["reason"].as_str().unwrap_or("").into(),
        )
    }

    #[test]
    fn registration_is_not_ready_until_the_runtime_answers() {
        let registered = spec().object(false);
        assert_eq!(
            ready(&registered),
            ("False".to_string(), "KubeletNotReady".to_string())
        );
        assert_eq!(registered["metadata"]["labels"]["zone"], "a");
        assert_eq!(
            registered["metadata"]["labels"]["kubernetes.io/hostname"],
            "n1"
        );
        let heartbeat = json!({"status": spec().status(true)});
        assert_eq!(
            ready(&heartbeat),
            ("True".to_string(), "KubeletReady".to_string())
        );
    }
}
