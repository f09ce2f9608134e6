//! The pods of this node: one worker task per pod (by uid) that drives the runtime towards the
//! pod's spec and reports its status. The manager routes watch events to workers and keeps the
//! registry `kubectl logs/exec` use to find containers.

mod events;
mod files;
pub mod probe;
pub mod status;
mod tokens;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::info;

use super::control_plane::ControlPlane;
use super::env::NodeResources;
use super::runtime::Runtime;
use crate::json_path::JsonPath;
pub use events::EventRecorder;

/// What every pod worker shares.
pub struct NodeContext {
    pub node_ip: String,
    pub runtime: Arc<dyn Runtime>,
    pub control: Arc<ControlPlane>,
    /// `<data>/pods`: one directory per pod uid (volumes, logs, etc-hosts, resolv.conf).
    pub pods_dir: PathBuf,
    pub services: Arc<ServiceCache>,
    pub resources: NodeResources,
    /// The cluster DNS server pods use (ClusterFirst); None: the node's resolv.conf.
    pub cluster_dns: Option<String>,
    pub cluster_domain: String,
    pub registry: Arc<PodRegistry>,
    pub events: EventRecorder,
}

/// The Services of the cluster (service links in pod environments), kept by the agent's
/// service watch.
#[derive(Default)]
pub struct ServiceCache {
    services: RwLock<HashMap<(String, String), Value>>,
}

impl ServiceCache {
    pub fn upsert(&self, svc: Value) {
        let key = key_of(&svc);
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, svc);
    }

    pub fn remove(&self, svc: &Value) {
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key_of(svc));
    }

    pub fn replace(&self, all: Vec<Value>) {
        let map = all.into_iter().map(|s| (key_of(&s), s)).collect();
        *self.services.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    pub fn all(&self) -> Vec<Value> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

fn key_of(object: &Value) -> (String, String) {
    let text = |p: &str| {
        object
            .at(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (text("/metadata/namespace"), text("/metadata/name"))
}

/// One container as `kubectl logs/exec` need it.
#[derive(Clone, Debug, Default)]
pub struct ContainerEntry {
    pub id: Option<String>,
    pub running: bool,
    /// The log of the current (or last) attempt, and of the one before.
    pub log: Option<PathBuf>,
    pub previous_log: Option<PathBuf>,
}

/// Pods running here, by namespace/name: their containers and IP.
#[derive(Default)]
pub struct PodRegistry {
    pods: Mutex<HashMap<(String, String), RegisteredPod>>,
}

#[derive(Clone, Debug, Default)]
pub struct RegisteredPod {
    pub uid: String,
    pub ip: String,
    /// In spec order (init containers first).
    pub containers: Vec<(String, ContainerEntry)>,
}

impl PodRegistry {
    pub fn set(&self, namespace: &str, name: &str, pod: RegisteredPod) {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.into(), name.into()), pod);
    }

    pub fn remove(&self, namespace: &str, name: &str, uid: &str) {
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_string(), name.to_string());
        if pods.get(&key).is_some_and(|p| p.uid == uid) {
            pods.remove(&key);
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<RegisteredPod> {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Pods registered here and how many of their containers run (kubelet_running_* gauges).
    pub fn counts(&self) -> (usize, usize) {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let containers = pods
            .values()
            .flat_map(|p| &p.containers)
            .filter(|(_, c)| c.running)
            .count();
        (pods.len(), containers)
    }

    pub fn all(&self) -> Vec<((String, String), RegisteredPod)> {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Routes pod updates to per-pod workers.
pub struct PodManager {
    context: Arc<NodeContext>,
    workers: HashMap<String, mpsc::UnboundedSender<Option<Value>>>,
}

impl PodManager {
    pub fn new(context: Arc<NodeContext>) -> Self {
        PodManager {
            context,
            workers: HashMap::new(),
        }
    }

    fn uid(pod: &Value) -> String {
        pod.at("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    /// A pod bound to this node was added or changed.
    pub fn update(&mut self, pod: Value) {
        let uid = Self::uid(&pod);
        if let Some(tx) = self.workers.get(&uid)
            && tx.send(Some(pod.clone())).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let name = pod
            .at("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        info!(pod = %name, uid, "starting pod worker");
        let _ = tx.send(Some(pod));
        tokio::spawn(worker::run(self.context.clone(), rx));
        self.workers.insert(uid, tx);
    }

    /// The pod is gone from the API (deleted for good, or no longer bound here).
    pub fn delete(&mut self, pod: &Value) {
        if let Some(tx) = self.workers.remove(&Self::uid(pod)) {
            let _ = tx.send(None);
        }
    }

    /// After a re-list: everything not in `current` is gone.
    pub fn retain(&mut self, current: &[Value]) {
        let keep: std::collections::HashSet<String> = current.iter().map(Self::uid).collect();
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|u| !keep.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(tx) = self.workers.remove(&uid) {
                let _ = tx.send(None);
            }
        }
        self.workers.retain(|_, tx| !tx.is_closed());
        // Sandboxes of pods this node no longer runs (left by an earlier agent) go away.
        let runtime = self.context.runtime.clone();
        tokio::spawn(async move {
            let sandboxes = match runtime.list_sandboxes().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list sandboxes");
                    return;
                }
            };
            for sandbox in sandboxes.into_iter().filter(|s| !keep.contains(&s.pod_uid)) {
                info!(sandbox = %sandbox.id, pod_uid = %sandbox.pod_uid, "removing a sandbox no pod of this node owns");
                if let Err(e) = runtime.remove_sandbox(&sandbox.id).await {
                    tracing::warn!(error = %e, "removing an orphaned sandbox failed");
                }
            }
        });
    }
}
