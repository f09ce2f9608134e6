//! Node lifecycle: a node whose agent stops renewing its Lease (kube-node-lease/<node>) for the
//! grace period (40 s, as kube-controller-manager's --node-monitor-grace-period) becomes
//! Ready=Unknown and is tainted `node.kubernetes.io/unreachable` (NoSchedule and NoExecute);
//! pods on it are evicted once their toleration of that taint runs out (300 s by default, from
//! DefaultTolerationSeconds), so their controllers recreate them elsewhere. A renewed Lease
//! lifts the taints.
//!
//! Nodes that never had a Lease (registered by hand, without an agent) are left alone: there
//! is no heartbeat to miss. `SKIFF_NODE_MONITOR_GRACE_SECONDS` overrides the grace period.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::informer::{Informer, Informers};
use super::ownership::{enqueue_self, is_deleting};
use super::queue::WorkQueue;
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{DeleteOptions, Objects, Part, Scope};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;
use crate::registry::pod::UNREACHABLE_TAINT;

const DEFAULT_GRACE: Duration = Duration::from_secs(40);
/// How often every managed node is looked at.
const MONITOR_EVERY: Duration = Duration::from_secs(5);
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

pub fn grace() -> Duration {
    std::env::var("SKIFF_NODE_MONITOR_GRACE_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_GRACE)
}

pub struct Kinds {
    pub nodes: &'static dyn Kind,
    pub pods: &'static dyn Kind,
}

pub struct NodeLifecycleController {
    objects: Objects,
    kinds: Kinds,
    nodes: Arc<Informer>,
    leases: Arc<Informer>,
    pods: Arc<Informer>,
    grace: Duration,
}

fn seconds(text: Option<&str>) -> Option<i64> {
    text.and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

/// Whether the pod tolerates the unreachable NoExecute taint, and for how long (None: forever).
fn toleration_of_unreachable(pod: &Value) -> Option<Option<i64>> {
    pod.at("/spec/tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|t| {
            let key = t.get("key").and_then(Value::as_str).unwrap_or("");
            let operator = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (key == UNREACHABLE_TAINT || (key.is_empty() && operator == "Exists"))
                && (effect.is_empty() || effect == "NoExecute")
        })
        .map(|t| t.get("tolerationSeconds").and_then(Value::as_i64))
}

/// When the pod must go, given when the NoExecute taint was added (None: never).
pub fn eviction_time(pod: &Value, tainted_at: i64) -> Option<i64> {
    match toleration_of_unreachable(pod) {
        None => Some(tainted_at),
        Some(None) => None,
        Some(Some(seconds)) => Some(tainted_at + seconds.max(0)),
    }
}

fn unreachable_taints(now: &str) -> Value {
    json!([
        {"key": UNREACHABLE_TAINT, "effect": "NoSchedule", "timeAdded": now},
        {"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": now},
    ])
}

fn taint_added_at(node: &Value) -> Option<i64> {
    node.at("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|t| {
            t.get("key").and_then(Value::as_str) == Some(UNREACHABLE_TAINT)
                && t.get("effect").and_then(Value::as_str) == Some("NoExecute")
        })
        .map(|t| seconds(t.get("timeAdded").and_then(Value::as_str)).unwrap_or(0))
}

impl NodeLifecycleController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kinds: Kinds,
        leases: &'static dyn Kind,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let nodes = informers.of(kinds.nodes);
        nodes.add_handler(enqueue_self(queue.clone()));
        let leases = informers.of(leases);
        let lease_queue = queue.clone();
        leases.add_handler(Arc::new(move |old, new| {
            for lease in [old, new].into_iter().flatten() {
                if lease.at("/metadata/namespace").and_then(Value::as_str) == Some(LEASE_NAMESPACE)
                    && let Some(name) = lease.at("/metadata/name").and_then(Value::as_str)
                {
                    lease_queue.add(name.to_string());
                }
            }
        }));
        let pods = informers.of(kinds.pods);
        let controller = Arc::new(NodeLifecycleController {
            objects,
            kinds,
            nodes,
            leases,
            pods,
            grace: grace(),
        });
        (controller, queue)
    }

    async fn mark_unreachable(&self, name: &str, now: &str) -> Result<(), Error> {
        tracing::warn!(
            node = name,
            "node stopped renewing its lease; marking it unreachable"
        );
        let now = now.to_string();
        modify(
            &self.objects,
            self.kinds.nodes,
            None,
            name,
            Part::Status,
            |node| {
                let conditions = node["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let mut conditions: Vec<Value> = conditions
                    .into_iter()
                    .filter(|c| c.get("type").and_then(Value::as_str) != Some("Ready"))
                    .collect();
                conditions.push(json!({
                    "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                    "message": "Kubelet stopped posting node status.",
                    "lastHeartbeatTime": now, "lastTransitionTime": now,
                }));
                node["status"]["conditions"] = json!(conditions);
            },
        )
        .await?;
        modify(
            &self.objects,
            self.kinds.nodes,
            None,
            name,
            Part::Main,
            |node| {
                let mut taints = node["spec"]["taints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                taints.retain(|t| t.get("key").and_then(Value::as_str) != Some(UNREACHABLE_TAINT));
                taints.extend(
                    unreachable_taints(&now)
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                );
                node["spec"]["taints"] = json!(taints);
            },
        )
        .await?;
        Ok(())
    }

    async fn clear_taints(&self, name: &str) -> Result<(), Error> {
        tracing::info!(
            node = name,
            "node renews its lease again; lifting the unreachable taints"
        );
        modify(
            &self.objects,
            self.kinds.nodes,
            None,
            name,
            Part::Main,
            |node| {
                if let Some(taints) = node["spec"]["taints"].as_array_mut() {
                    taints.retain(|t| {
                        t.get("key").and_then(Value::as_str) != Some(UNREACHABLE_TAINT)
                    });
                }
            },
        )
        .await?;
        Ok(())
    }

    /// Evicts the pods on `node` whose toleration ran out; returns the next eviction time.
    async fn evict(&self, node: &str, tainted_at: i64, now: i64) -> Result<Option<i64>, Error> {
        let mut next: Option<i64> = None;
        for pod in self.pods.list() {
            if pod.at("/spec/nodeName").and_then(Value::as_str) != Some(node) || is_deleting(&pod) {
                continue;
            }
            let Some(at) = eviction_time(&pod, tainted_at) else {
                continue;
            };
            if at > now {
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            let text = |p: &str| pod.at(p).and_then(Value::as_str).unwrap_or("");
            tracing::info!(
                node,
                pod = text("/metadata/name"),
                "evicting a pod from an unreachable node"
            );
            let scope = Scope::new(self.kinds.pods, Some(text("/metadata/namespace")));
            match self
                .objects
                .delete(scope, text("/metadata/name"), &DeleteOptions::default())
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(next)
    }
}

impl Reconcile for NodeLifecycleController {
    fn name(&self) -> &'static str {
        "nodelifecycle"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(node) = self.nodes.get(key) else {
            return Ok(Action::Done);
        };
        let Some(lease) = self.leases.get(&format!("{LEASE_NAMESPACE}/{key}")) else {
            return Ok(Action::Done);
        };
        let now = jiff::Timestamp::now();
        let renewed = seconds(lease.at("/spec/renewTime").and_then(Value::as_str)).unwrap_or(0);
        let stale = now.as_second() - renewed > self.grace.as_secs() as i64;
        let tainted_at = taint_added_at(&node);
        match (stale, tainted_at) {
            (true, None) => {
                self.mark_unreachable(key, &now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .await?;
            }
            (false, Some(_)) => self.clear_taints(key).await?,
            (true, Some(at)) => {
                if let Some(next) = self.evict(key, at, now.as_second()).await? {
                    let wait = (next - now.as_second()).clamp(1, MONITOR_EVERY.as_secs() as i64);
                    return Ok(Action::RequeueAfter(Duration::from_secs(wait as u64)));
                }
            }
            (false, None) => {}
        }
        Ok(Action::RequeueAfter(MONITOR_EVERY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_follow_tolerations() {
        let plain = json!({"spec": {}});
        assert_eq!(
            eviction_time(&plain, 100),
            Some(100),
            "no toleration: at once"
        );
        let five_minutes = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}});
        assert_eq!(eviction_time(&five_minutes, 100), Some(400));
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(eviction_time(&forever, 100), None);
        let other = json!({"spec": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}});
        assert_eq!(eviction_time(&other, 100), Some(100));
    }

    #[test]
    fn the_taint_time_is_read_back() {
        let node = json!({"spec": {"taints": unreachable_taints("2026-01-01T00:00:10Z")}});
        assert_eq!(taint_added_at(&node), Some(1_767_225_610));
        assert_eq!(taint_added_at(&json!({"spec": {}})), None);
    }
}
