//! The resource metrics API, `metrics.k8s.io/v1beta1` (what metrics-server serves, what
//! `kubectl top` and autoscalers read): NodeMetrics and PodMetrics built from the nodes'
//! Kubelet `Usage` RPC. CPU is a rate, so it needs two samples per node: the last one is kept,
//! and a request that has none recent enough takes a second sample a second after the first.
//! Memory is the working set of the latest sample. A pod whose containers have no earlier
//! sample yet is left out, as metrics-server does, until its next scrape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use skiff_proto::agent::{UsageRequest, UsageResponse};

use super::objects::{ListOptions, Objects, Scope};
use super::pod_streams::{Kubelets, kubelet_address};
use super::request::Query;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::{self, KindInfo};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// The two kinds, for discovery and errors.
pub static NODE_METRICS: KindInfo = KindInfo {
    group: GROUP,
    version: VERSION,
    kind: "NodeMetrics",
    resource: "nodes",
    singular: "",
    namespaced: false,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};
pub static POD_METRICS: KindInfo = KindInfo {
    group: GROUP,
    version: VERSION,
    kind: "PodMetrics",
    resource: "pods",
    singular: "",
    namespaced: true,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};

/// A sample older than this is not used for a rate: the window would be too coarse.
const MAX_WINDOW: Duration = Duration::from_secs(60);
/// The shortest window a rate is computed over.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// What a metrics path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum MetricsTarget {
    Nodes {
        name: Option<String>,
    },
    Pods {
        namespace: Option<String>,
        name: Option<String>,
    },
}

/// Parses `/apis/metrics.k8s.io/v1beta1/...`; None for other paths.
pub fn parse(path: &str) -> Option<MetricsTarget> {
    let rest = path.strip_prefix(&format!("/apis/{GROUP}/{VERSION}/"))?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let owned = |s: &&str| s.to_string();
    match parts.as_slice() {
        ["nodes"] => Some(MetricsTarget::Nodes { name: None }),
        ["nodes", name] => Some(MetricsTarget::Nodes {
            name: Some(name.to_string()),
        }),
        ["pods"] => Some(MetricsTarget::Pods {
            namespace: None,
            name: None,
        }),
        ["namespaces", ns, "pods"] => Some(MetricsTarget::Pods {
            namespace: Some(owned(ns)),
            name: None,
        }),
        ["namespaces", ns, "pods", name] => Some(MetricsTarget::Pods {
            namespace: Some(owned(ns)),
            name: Some(owned(name)),
        }),
        _ => None,
    }
}

/// One node's sample.
#[derive(Clone)]
struct Sample {
    at: Instant,
    wall: SystemTime,
    usage: UsageResponse,
}

/// CPU (nanocores) and memory (bytes) over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Rates {
    cpu_nanocores: u64,
    memory_bytes: u64,
}

/// A node's rates, and its containers' by (namespace, pod, container).
struct NodeRates {
    wall: SystemTime,
    window: Duration,
    node: Rates,
    containers: HashMap<(String, String), Vec<(String, Rates)>>,
}

fn rate(before: u64, after: u64, window: Duration) -> u64 {
    let seconds = window.as_secs_f64().max(1e-3);
    (after.saturating_sub(before) as f64 / seconds) as u64
}

fn rates_between(old: &Sample, new: &Sample) -> NodeRates {
    let window = new.at.duration_since(old.at);
    let before: HashMap<(&str, &str, &str), u64> = old
        .usage
        .containers
        .iter()
        .map(|c| {
            (
                (c.namespace.as_str(), c.pod.as_str(), c.container.as_str()),
                c.cpu_nanos,
            )
        })
        .collect();
    let mut containers: HashMap<(String, String), Vec<(String, Rates)>> = HashMap::new();
    for c in &new.usage.containers {
        let Some(cpu_before) =
            before.get(&(c.namespace.as_str(), c.pod.as_str(), c.container.as_str()))
        else {
            continue;
        };
        containers
            .entry((c.namespace.clone(), c.pod.clone()))
            .or_default()
            .push((
                c.container.clone(),
                Rates {
                    cpu_nanocores: rate(*cpu_before, c.cpu_nanos, window),
                    memory_bytes: c.memory_bytes,
                },
            ));
    }
    NodeRates {
        wall: new.wall,
        window,
        node: Rates {
            cpu_nanocores: rate(old.usage.node_cpu_nanos, new.usage.node_cpu_nanos, window),
            memory_bytes: new.usage.node_memory_bytes,
        },
        containers,
    }
}

/// The last sample of every node this member asked, shared by its requests.
#[derive(Clone, Default)]
pub struct UsageSamples {
    last: Arc<Mutex<HashMap<String, Sample>>>,
}

impl UsageSamples {
    async fn sample(kubelets: &Kubelets, address: &str) -> Result<Sample, ApiError> {
        let mut client = kubelets.client(address)?;
        let usage = tokio::time::timeout(Duration::from_secs(5), client.usage(UsageRequest {}))
            .await
            .map_err(|_| ApiError::Unavailable(format!("the kubelet at {address} did not answer")))?
            .map_err(|s| {
                ApiError::Unavailable(format!("the kubelet at {address}: {}", s.message()))
            })?
            .into_inner();
        Ok(Sample {
            at: Instant::now(),
            wall: SystemTime::now(),
            usage,
        })
    }

    /// Rates of the node at `address`: against its last sample when that is recent enough,
    /// else over a fresh one-second window.
    async fn rates(
        &self,
        kubelets: &Kubelets,
        node: &str,
        address: &str,
    ) -> Result<NodeRates, ApiError> {
        let mut new = Self::sample(kubelets, address).await?;
        let previous = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned();
        let old = match previous {
            Some(old) if (MIN_WINDOW..=MAX_WINDOW).contains(&new.at.duration_since(old.at)) => old,
            _ => {
                tokio::time::sleep(MIN_WINDOW).await;
                let old = new;
                new = Self::sample(kubelets, address).await?;
                old
            }
        };
        let rates = rates_between(&old, &new);
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), new);
        Ok(rates)
    }
}

fn timestamp(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_default()
}

fn usage_json(rates: Rates) -> Value {
    json!({"cpu": format!("{}n", rates.cpu_nanocores), "memory": format!("{}Ki", rates.memory_bytes / 1024)})
}

fn window_text(window: Duration) -> String {
    format!("{:.3}s", window.as_secs_f64())
}

/// Answers one metrics request.
pub async fn serve(
    objects: &Objects,
    kubelets: &Kubelets,
    samples: &UsageSamples,
    target: MetricsTarget,
    query: &Query,
) -> Result<Value, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?;
    let options = ListOptions {
        labels,
        fields,
        limit: 0,
        continue_token: None,
        any_revision: true,
    };
    let nodes_kind = registry::lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
    match target {
        MetricsTarget::Nodes { name } => {
            let nodes = match &name {
                Some(name) => vec![
                    objects
                        .get(Scope::new(nodes_kind, None), name, false)
                        .await?,
                ],
                None => {
                    objects
                        .list(Scope::new(nodes_kind, None), &options)
                        .await?
                        .items
                }
            };
            let mut items = Vec::new();
            for node in nodes {
                let node_name = node
                    .at("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let Some(address) = kubelet_address(&node) else {
                    continue;
                };
                let rates = match samples.rates(kubelets, node_name, &address).await {
                    Ok(rates) => rates,
                    Err(e) if name.is_some() => return Err(e),
                    Err(e) => {
                        tracing::debug!(node = node_name, error = %e, "no metrics for node");
                        continue;
                    }
                };
                items.push(json!({
                    "metadata": {"name": node_name, "labels": node.at("/metadata/labels").cloned().unwrap_or(json!({})),
                                 "creationTimestamp": timestamp(rates.wall)},
                    "timestamp": timestamp(rates.wall),
                    "window": window_text(rates.window),
                    "usage": usage_json(rates.node),
                }));
            }
            finish(name, items, &NODE_METRICS, "NodeMetrics")
        }
        MetricsTarget::Pods { namespace, name } => {
            let pods_kind = registry::lookup("", "v1", "pods")
                .ok_or_else(|| ApiError::Internal("pods are not registered".into()))?;
            let scope = Scope::new(pods_kind, namespace.as_deref());
            let pods = match &name {
                Some(name) => vec![objects.get(scope, name, false).await?],
                None => objects.list(scope, &options).await?.items,
            };
            let mut items = Vec::new();
            for (pod, rates) in pods_with_rates(objects, kubelets, samples, &pods).await {
                let ns = pod
                    .at("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let pod_name = pod
                    .at("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let Some(containers) = rates
                    .containers
                    .get(&(ns.to_string(), pod_name.to_string()))
                else {
                    continue;
                };
                let mut containers = containers.clone();
                containers.sort_by(|a, b| a.0.cmp(&b.0));
                items.push(json!({
                    "metadata": {"name": pod_name, "namespace": ns,
                                 "labels": pod.at("/metadata/labels").cloned().unwrap_or(json!({})),
                                 "creationTimestamp": timestamp(rates.wall)},
                    "timestamp": timestamp(rates.wall),
                    "window": window_text(rates.window),
                    "containers": containers.into_iter()
                        .map(|(name, r)| json!({"name": name, "usage": usage_json(r)}))
                        .collect::<Vec<_>>(),
                }));
            }
            finish(name, items, &POD_METRICS, "PodMetrics")
        }
    }
}

/// Each bound pod with its node's rates (one sample per node), for the pods whose node
/// answered.
async fn pods_with_rates<'a>(
    objects: &Objects,
    kubelets: &Kubelets,
    samples: &UsageSamples,
    pods: &'a [Value],
) -> Vec<(&'a Value, Arc<NodeRates>)> {
    let Some(nodes_kind) = registry::lookup("", "v1", "nodes") else {
        return Vec::new();
    };
    let mut by_node: HashMap<String, Option<Arc<NodeRates>>> = HashMap::new();
    let mut out = Vec::new();
    for pod in pods {
        let node_name = pod
            .at("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node_name.is_empty() {
            continue;
        }
        if !by_node.contains_key(node_name) {
            let rates = match objects
                .get(Scope::new(nodes_kind, None), node_name, false)
                .await
            {
                Ok(node) => match kubelet_address(&node) {
                    Some(address) => samples
                        .rates(kubelets, node_name, &address)
                        .await
                        .ok()
                        .map(Arc::new),
                    None => None,
                },
                Err(_) => None,
            };
            by_node.insert(node_name.to_string(), rates);
        }
        if let Some(Some(rates)) = by_node.get(node_name) {
            out.push((pod, rates.clone()));
        }
    }
    out
}

/// What one pod uses now, summed over its containers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PodUsage {
    pub cpu_cores: f64,
    pub memory_bytes: f64,
}

/// The resource metrics of pods, for in-process readers (the HorizontalPodAutoscaler
/// controller) — the same numbers the API serves, from the same samples.
#[derive(Clone)]
pub struct PodMetrics {
    pub kubelets: Kubelets,
    pub samples: UsageSamples,
}

impl PodMetrics {
    /// Usage by pod name for the pods (of one namespace) that have metrics.
    pub async fn usage(&self, objects: &Objects, pods: &[Value]) -> HashMap<String, PodUsage> {
        let mut usage = HashMap::new();
        for (pod, rates) in pods_with_rates(objects, &self.kubelets, &self.samples, pods).await {
            let text = |f: &str| pod.at(f).and_then(Value::as_str).unwrap_or("");
            let (ns, name) = (text("/metadata/namespace"), text("/metadata/name"));
            if let Some(containers) = rates.containers.get(&(ns.to_string(), name.to_string())) {
                let total = containers
                    .iter()
                    .fold(PodUsage::default(), |sum, (_, r)| PodUsage {
                        cpu_cores: sum.cpu_cores + r.cpu_nanocores as f64 / 1e9,
                        memory_bytes: sum.memory_bytes + r.memory_bytes as f64,
                    });
                usage.insert(name.to_string(), total);
            }
        }
        usage
    }
}

/// One object for a named request (404 when it has no metrics), else the list.
fn finish(
    name: Option<String>,
    mut items: Vec<Value>,
    info: &KindInfo,
    kind: &str,
) -> Result<Value, ApiError> {
    for item in &mut items {
        item["kind"] = json!(kind);
        item["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
    }
    match name {
        Some(name) => items.pop().ok_or_else(|| ApiError::not_found(info, &name)),
        None => Ok(json!({
            "kind": format!("{kind}List"),
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": {},
            "items": items,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::agent::ContainerUsage;

    #[test]
    fn paths() {
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/nodes"),
            Some(MetricsTarget::Nodes { name: None })
        );
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web"),
            Some(MetricsTarget::Pods {
                namespace: Some("default".into()),
                name: Some("web".into())
            })
        );
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/namespaces/default/services"),
            None
        );
        assert_eq!(parse("/apis/apps/v1/deployments"), None);
    }

    fn sample(at: Instant, node_cpu: u64, cpu: u64) -> Sample {
        Sample {
            at,
            wall: SystemTime::now(),
            usage: UsageResponse {
                timestamp_unix_nanos: 0,
                node_cpu_nanos: node_cpu,
                node_memory_bytes: 512 << 20,
                containers: vec![ContainerUsage {
                    namespace: "default".into(),
                    pod: "web".into(),
                    container: "main".into(),
                    cpu_nanos: cpu,
                    memory_bytes: 10 << 20,
                }],
            },
        }
    }

    #[test]
    fn cpu_is_a_rate_over_the_window_and_memory_the_latest() {
        let t0 = Instant::now();
        let old = sample(t0, 1_000_000_000, 100_000_000);
        let new = sample(t0 + Duration::from_secs(2), 3_000_000_000, 300_000_000);
        let rates = rates_between(&old, &new);
        assert_eq!(rates.node.cpu_nanocores, 1_000_000_000, "one core busy");
        let web = &rates.containers[&("default".to_string(), "web".to_string())];
        assert_eq!(web[0].1.cpu_nanocores, 100_000_000, "100m");
        assert_eq!(
            usage_json(web[0].1),
            json!({"cpu": "100000000n", "memory": "10240Ki"})
        );
        // A container without an earlier sample is left out.
        let mut fresh = new.clone();
        fresh.usage.containers[0].pod = "new".into();
        assert!(rates_between(&old, &fresh).containers.is_empty());
    }
}
