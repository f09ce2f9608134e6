//! The default scheduler: assigns pods with an empty `spec.nodeName` and schedulerName
//! `default-scheduler` to a node through `pods/binding` (`Part::Binding`), after
//! kube-scheduler's filter-then-score cycle, one pod at a time. The filters and scores
//! themselves are in `fit`.
//!
//! One reconcile of a pod:
//! 1. build a snapshot of every node: what the pods on it (bound, or bound by us and not yet
//!    in the cache: "assumed") request, their host ports and owners;
//! 2. filter, in kube's plugin order, stopping at a node's first failing plugin:
//!    NodeUnschedulable, NodeName, TaintToleration (a not-Ready node counts as tainted
//!    `node.kubernetes.io/not-ready`, as the node lifecycle controller would taint it),
//!    NodeAffinity (nodeSelector and required affinity), NodePorts, NodeResourcesFit,
//!    VolumeBinding (the claims exist, and the node is one their volumes allow: `volume_fit`),
//!    PodTopologySpread and InterPodAffinity (`PodRules`, over every placed pod, worked out
//!    only when the pod or a placed pod has such rules);
//! 3. score the feasible nodes: least requested (cpu and memory, with kube's non-zero defaults
//!    for pods that request nothing), spreading (the pod's ScheduleAnyway constraints, or by
//!    default the pods of one controller across nodes), preferred node affinity and preferred
//!    inter-pod (anti-)affinity; the best score wins, ties go to the first name;
//! 4. assume the pod on the chosen node and bind it in a task of its own (kube's asynchronous
//!    binding cycle: the next pod is placed while the write commits; its "Scheduled" event
//!    is written after the binding's slot is given back, and dropped rather than queued past
//!    1000, as client-go's recorder does); or, when no node fits, set PodScheduled=False
//!    (reason Unschedulable) with kube's
//!    "0/N nodes are available: ..." message, record a FailedScheduling event when the message
//!    changed, and retry after a backoff or as soon as a node changes or a pod leaves a node
//!    (or, for a pod refused by the rules about other pods, a pod arrives on one).
//!
//! The pods of one scheduler are placed by a single worker: two placements at once could both
//! take the last free cpu of a node. Not yet: preemption.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use serde_json::{Value, json};

use super::fit::{
    NodeFacts, NodeInfo, PodRules, PodUsage, Usage, depends_on_pods, select_node,
    unschedulable_message,
};
use super::informer::{Handler, Informer, Informers, object_key};
use super::ownership::is_deleting;
use super::pod_affinity::{PlacedGroup, PlacedPod, namespace_labels_of};
use super::queue::WorkQueue;
use super::recorder::{EventType, Recorder};
use super::replicaset::is_active;
use super::volume_fit::VolumeInformers;
use super::{Action, Error, Reconcile, modify, run_workers};
use crate::apiserver::objects::{Objects, Part, Scope, WriteOptions, name_of};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// Retry delays for an unschedulable pod (kube's podInitialBackoff .. podMaxBackoff).
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub fn is_ours_and_pending(pod: &Value) -> bool {
    let node = pod
        .at("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let scheduler = pod
        .at("/spec/schedulerName")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_SCHEDULER);
    node.is_empty() && scheduler == DEFAULT_SCHEDULER && !is_deleting(pod) && is_active(pod)
}

/// State the informer handlers share with the reconciler.
#[derive(Default)]
struct Placement {
    /// Pods bound by us that the pod cache still shows unbound: pod key -> node.
    assumed: HashMap<String, String>,
    /// Pods that did not fit, with their failed attempts.
    unschedulable: HashMap<String, u32>,
    /// Those of them refused by a rule about other pods: a pod arriving may let them in.
    wait_for_pods: HashSet<String>,
    /// The groups of alike placed pods (`PlacedPod`'s equality: namespace, labels,
    /// termination, pod (anti-)affinity), each with its pods per node: the inter-pod rules
    /// of a cycle walk these, not every placed pod. Alike pods share the group's `PlacedPod`.
    groups: HashMap<Arc<PlacedPod>, HashMap<String, i64>>,
    /// The groups with pod (anti-)affinity terms: the only ones a pod without such terms or
    /// spread constraints must be checked against (kube's PodsWithAffinity lists).
    with_affinity: HashSet<Arc<PlacedPod>>,
    /// Every pod counted on a node (bound, or assumed): pod key -> (node, what it takes).
    placed: HashMap<String, (String, PodUsage)>,
    /// The sum of `placed` per node; shared with the snapshot of a cycle under way (a change
    /// meanwhile copies that node's usage, `Arc::make_mut`).
    usage: HashMap<String, Arc<Usage>>,
}

impl Placement {
    fn place(&mut self, key: &str, node: &str, mut pod: PodUsage) {
        self.unplace(key);
        Arc::make_mut(self.usage.entry(node.to_string()).or_default()).add(&pod);
        match self.groups.get_key_value(&pod.pod) {
            Some((group, _)) => pod.pod = group.clone(),
            None if pod.pod.terms.is_some() => {
                self.with_affinity.insert(pod.pod.clone());
            }
            None => {}
        }
        let group = self.groups.entry(pod.pod.clone()).or_default();
        *group.entry(node.to_string()).or_default() += 1;
        self.placed.insert(key.to_string(), (node.to_string(), pod));
    }

    fn unplace(&mut self, key: &str) {
        if let Some((node, pod)) = self.placed.remove(key) {
            if let Some(group) = self.groups.get_mut(&pod.pod) {
                if let Some(count) = group.get_mut(&node) {
                    *count -= 1;
                    if *count <= 0 {
                        group.remove(&node);
                    }
                }
                if group.is_empty() {
                    self.groups.remove(&pod.pod);
                    self.with_affinity.remove(&pod.pod);
                }
            }
            let Some(usage) = self.usage.get_mut(&node) else {
                return;
            };
            let usage = Arc::make_mut(usage);
            usage.remove(&pod);
            if usage.pods == 0 {
                self.usage.remove(&node);
            }
        }
    }

    /// Counts a pod the cache shows: on its node while bound and not finished.
    fn observe(&mut self, key: &str, pod: Option<&Value>) {
        let node = pod
            .and_then(|p| p.at("/spec/nodeName"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        match (pod, node) {
            (Some(p), Some(node)) => {
                self.assumed.remove(key);
                if occupies(p) {
                    self.place(key, node, PodUsage::of(p));
                } else {
                    self.unplace(key);
                }
            }
            // Unbound: still counted where we bound it until the cache catches up.
            (Some(_), None) if self.assumed.contains_key(key) => {}
            _ => {
                self.assumed.remove(key);
                self.unplace(key);
            }
        }
        if pod.is_none() {
            self.forget_unschedulable(key);
        }
    }

    fn forget_unschedulable(&mut self, key: &str) {
        self.unschedulable.remove(key);
        self.wait_for_pods.remove(key);
    }

    /// The placed pods on `infos`' nodes in groups of alike pods, nodes as indexes into
    /// `infos`; with `only_with_affinity`, the groups with pod (anti-)affinity terms alone.
    fn placed_on(&self, infos: &[NodeInfo], only_with_affinity: bool) -> Vec<PlacedGroup> {
        let index: HashMap<&str, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, info)| (name_of(&info.node), i))
            .collect();
        let group = |pod: &Arc<PlacedPod>| {
            let nodes = self.groups.get(pod)?;
            let nodes: Vec<(usize, i64)> = nodes
                .iter()
                .filter_map(|(node, pods)| Some((*index.get(node.as_str())?, *pods)))
                .collect();
            (!nodes.is_empty()).then(|| PlacedGroup {
                pod: pod.clone(),
                nodes,
            })
        };
        if only_with_affinity {
            self.with_affinity.iter().filter_map(group).collect()
        } else {
            self.groups.keys().filter_map(group).collect()
        }
    }
}

/// Whether a bound pod still takes room on its node (finished pods do not).
fn occupies(pod: &Value) -> bool {
    !matches!(
        pod.at("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

pub struct Scheduler {
    objects: Objects,
    pod_kind: &'static dyn Kind,
    pods: Arc<Informer>,
    nodes: Arc<Informer>,
    /// For terms with a namespaceSelector.
    namespaces: Option<Arc<Informer>>,
    /// Claims, volumes and classes, when this build serves them (the VolumeBinding filter).
    volumes: Option<VolumeInformers>,
    placement: Arc<Mutex<Placement>>,
    /// The nodes sorted by name with their facts, as of the last node event.
    node_cache: Mutex<Vec<(Arc<Value>, Arc<NodeFacts>)>>,
    /// Set by every node event: the next cycle rebuilds `node_cache`.
    nodes_changed: Arc<AtomicBool>,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    /// Binds under way; dropped (aborted) with the scheduler at the end of a leadership term.
    binds: Mutex<JoinSet<()>>,
    in_flight: Arc<Semaphore>,
    events_in_flight: Arc<Semaphore>,
}

/// Binds under way at most: enough to keep raft's batches full, few enough that a failing
/// store is not flooded.
const MAX_IN_FLIGHT_BINDS: usize = 64;
/// "Scheduled" events being written at most; beyond that they are dropped, as client-go's
/// event broadcaster drops events when its queue (1000) is full: an event is worth less than
/// the next binding.
const MAX_QUEUED_EVENTS: usize = 1000;

/// The binding cycle of one pod, run beside the scheduling of the next ones (kube-scheduler's
/// asynchronous binding): the pod is already assumed on its node, so the next pods see the
/// room it takes; a failed bind forgets the assumption and queues the pod again.
#[derive(Clone)]
struct Binder {
    objects: Objects,
    pod_kind: &'static dyn Kind,
    placement: Arc<Mutex<Placement>>,
    queue: Arc<WorkQueue>,
}

impl Binder {
    /// Writes the binding on top of the cached pod (the store is read only when the cache
    /// was behind: `WriteOptions::cached`); whether it was written.
    async fn bind(&self, pod: &Arc<Value>, node: &str) -> bool {
        let key = object_key(pod);
        let namespace = pod.at("/metadata/namespace").and_then(Value::as_str);
        let info = self.pod_kind.info();
        let transform = move |current: &Value| {
            if !is_ours_and_pending(current) {
                return Err(ApiError::conflict(
                    info,
                    name_of(current),
                    "pod is no longer waiting to be scheduled".to_string(),
                ));
            }
            let mut next = current.clone();
            next["spec"]["nodeName"] = json!(node);
            Ok(next)
        };
        let scope = Scope::new(self.pod_kind, namespace);
        let options = WriteOptions {
            cached: Some(pod.clone()),
            ..WriteOptions::default()
        };
        let result = self
            .objects
            .update_with(scope, name_of(pod), Part::Binding, &transform, &options)
            .await;
        let Err(e) = result else {
            return true;
        };
        {
            let mut placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
            // Unless the cache has meanwhile shown where the pod really is.
            if placement.assumed.remove(&key).is_some() {
                placement.unplace(&key);
            }
        }
        match e {
            // Deleted, or bound by someone else meanwhile: nothing left to do.
            ApiError::NotFound { .. } | ApiError::Conflict { .. } => {}
            e => {
                tracing::warn!(error = %e, "binding failed; retrying");
                self.queue.add_rate_limited(key);
            }
        }
        false
    }
}

/// Records "Scheduled" for a bound pod. Called once the bind permit is given back, so the
/// event's write never holds up the next binding; dropped when `MAX_QUEUED_EVENTS` are
/// already being written.
async fn record_scheduled(recorder: &Recorder, events: &Arc<Semaphore>, pod: &Value, node: &str) {
    let Ok(_permit) = events.clone().try_acquire_owned() else {
        tracing::debug!(
            pod = name_of(pod),
            "event queue full; dropping a Scheduled event"
        );
        return;
    };
    let message = format!(
        "Successfully assigned {}/{} to {node}",
        pod.at("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(""),
        name_of(pod)
    );
    recorder
        .record(pod, EventType::Normal, "Scheduled", &message)
        .await;
}

impl Scheduler {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        pod_kind: &'static dyn Kind,
        node_kind: &'static dyn Kind,
        namespace_kind: Option<&'static dyn Kind>,
        volume_kinds: Option<[&'static dyn Kind; 3]>,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let pods = informers.of(pod_kind);
        let nodes = informers.of(node_kind);
        let namespaces = namespace_kind.map(|kind| informers.of(kind));
        let volumes = volume_kinds.map(|[claims, volumes, classes]| VolumeInformers {
            claims: informers.of(claims),
            volumes: informers.of(volumes),
            classes: informers.of(classes),
        });
        let placement = Arc::new(Mutex::new(Placement::default()));
        pods.add_handler(pod_handler(queue.clone(), placement.clone()));
        let retry = || {
            let (q, p) = (queue.clone(), placement.clone());
            Arc::new(move |_: Option<&Value>, _: Option<&Value>| retry_unschedulable(&q, &p))
        };
        nodes.add_handler(retry());
        let nodes_changed = Arc::new(AtomicBool::new(true));
        let changed = nodes_changed.clone();
        nodes.add_handler(Arc::new(move |_, _| changed.store(true, Ordering::Release)));
        for informer in volumes
            .iter()
            .flat_map(|v| [&v.claims, &v.volumes, &v.classes])
        {
            informer.add_handler(retry());
        }
        let scheduler = Arc::new(Scheduler {
            recorder: Recorder::new(objects.clone(), DEFAULT_SCHEDULER),
            objects,
            pod_kind,
            pods,
            nodes,
            namespaces,
            volumes,
            placement,
            node_cache: Mutex::new(Vec::new()),
            nodes_changed,
            queue: queue.clone(),
            binds: Mutex::new(JoinSet::new()),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT_BINDS)),
            events_in_flight: Arc::new(Semaphore::new(MAX_QUEUED_EVENTS)),
        });
        (scheduler, queue)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Placement> {
        self.placement.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Step 1: every node with what the pods placed on it take. The sorted nodes and their
    /// facts are kept between cycles and rebuilt only after a node changed (facts of nodes
    /// whose resourceVersion stayed are reused); the usages are shared, not copied.
    fn snapshot(&self) -> Vec<NodeInfo> {
        let mut cache = self.node_cache.lock().unwrap_or_else(|e| e.into_inner());
        // Cleared before listing: a change after this point sets it again for the next cycle.
        if self.nodes_changed.swap(false, Ordering::AcqRel) {
            let previous: HashMap<String, (Arc<Value>, Arc<NodeFacts>)> = cache
                .drain(..)
                .map(|(node, facts)| (name_of(&node).to_string(), (node, facts)))
                .collect();
            let mut nodes = self.nodes.list();
            nodes.sort_by(|a, b| name_of(a).cmp(name_of(b)));
            let version = |n: &Value| n.at("/metadata/resourceVersion").cloned();
            *cache = nodes
                .into_iter()
                .map(|node| {
                    let facts = match previous.get(name_of(&node)) {
                        Some((old, facts)) if version(old) == version(&node) => facts.clone(),
                        _ => Arc::new(NodeFacts::of(&node)),
                    };
                    (node, facts)
                })
                .collect();
        }
        let placement = self.lock();
        let empty = Arc::new(Usage::default());
        cache
            .iter()
            .map(|(node, facts)| {
                let usage = placement.usage.get(name_of(node)).unwrap_or(&empty);
                NodeInfo::with_facts(node.clone(), facts.clone(), usage.clone())
            })
            .collect()
    }

    /// Step 4: counts the pod on `node` before the bind is written.
    fn assume(&self, key: &str, pod: &Value, node: &str) {
        let mut placement = self.lock();
        placement.assumed.insert(key.to_string(), node.to_string());
        placement.place(key, node, PodUsage::of(pod));
        placement.forget_unschedulable(key);
    }

    /// Step 2's rules about other pods, when the pod or a placed pod has any. A pod without
    /// pod (anti-)affinity or spread constraints of its own is only checked against the placed
    /// pods that have terms (their anti-affinity may refuse it, their preferences score it):
    /// the same outcome as counting every placed pod, at O(pods with terms) instead of
    /// O(placed pods) per cycle.
    fn pod_rules(&self, pod: &Value, infos: &[NodeInfo]) -> PodRules {
        let placed = {
            let placement = self.lock();
            if !PodRules::needed(pod, !placement.with_affinity.is_empty()) {
                return PodRules::default();
            }
            placement.placed_on(infos, !PodRules::needed(pod, false))
        };
        let namespace_labels = |name: &str| {
            let namespace = self.namespaces.as_ref().and_then(|n| n.get(name));
            namespace_labels_of(namespace.as_deref())
        };
        PodRules::new(pod, infos, &placed, &namespace_labels)
    }

    /// Step 4, no fit: the PodScheduled condition, an event when the reason is new, a retry.
    /// `waits_for_pods`: a rule about other pods refused it somewhere.
    async fn unschedulable(
        &self,
        key: &str,
        pod: &Value,
        message: &str,
        waits_for_pods: bool,
    ) -> Result<Action, Error> {
        let current = pod
            .at("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("type") == Some(&json!("PodScheduled")))
            })
            .and_then(|c| c.get("message"))
            .and_then(Value::as_str);
        if current != Some(message) {
            tracing::info!(message, "pod does not fit any node");
            self.recorder
                .record(pod, EventType::Warning, "FailedScheduling", message)
                .await;
            let condition = json!({
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": crate::apiserver::objects::now_rfc3339(),
            });
            let change = |p: &mut Value| set_condition(p, condition.clone());
            let namespace = pod.at("/metadata/namespace").and_then(Value::as_str);
            modify(
                &self.objects,
                self.pod_kind,
                namespace,
                name_of(pod),
                Part::Status,
                change,
            )
            .await?;
        }
        let attempts = {
            let mut placement = self.lock();
            if waits_for_pods {
                placement.wait_for_pods.insert(key.to_string());
            }
            let n = placement.unschedulable.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        Ok(Action::RequeueAfter(retry_delay(attempts)))
    }
}

/// 1 s, 2 s, 4 s, ... up to 10 s.
pub fn retry_delay(attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(10));
    (INITIAL_BACKOFF * factor).min(MAX_BACKOFF)
}

/// Replaces (or adds) the condition of the same type in status.conditions.
pub fn set_condition(object: &mut Value, condition: Value) {
    let kind = condition.get("type").cloned();
    if !object.get("status").is_some_and(Value::is_object) {
        object["status"] = json!({});
    }
    let conditions = &mut object["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    if let Some(list) = conditions.as_array_mut() {
        match list.iter_mut().find(|c| c.get("type") == kind.as_ref()) {
            Some(existing) => *existing = condition,
            None => list.push(condition),
        }
    }
}

/// Queues every pod that did not fit: something that might make room changed.
fn retry_unschedulable(queue: &WorkQueue, placement: &Mutex<Placement>) {
    let keys: Vec<String> = placement
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unschedulable
        .keys()
        .cloned()
        .collect();
    for key in keys {
        queue.add(key);
    }
}

/// Queues the pods refused by a rule about other pods: a pod arrived on a node or changed
/// its labels there, which may satisfy an affinity or even out a spread.
fn retry_waiting_for_pods(queue: &WorkQueue, placement: &Mutex<Placement>) {
    let keys: Vec<String> = placement
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .wait_for_pods
        .iter()
        .cloned()
        .collect();
    for key in keys {
        queue.add(key);
    }
}

/// Queues new pending pods; forgets assumptions the cache caught up with; a pod leaving a node
/// (deleted or finished) may make room for the unschedulable ones.
fn pod_handler(queue: Arc<WorkQueue>, placement: Arc<Mutex<Placement>>) -> Handler {
    Arc::new(move |old, new| {
        let Some(pod) = new.or(old) else {
            return;
        };
        let key = object_key(pod);
        let freed = match (old, new) {
            (Some(_), None) => true,
            (Some(o), Some(n)) => occupies(o) && !occupies(n),
            _ => false,
        };
        let bound = |p: &Value| {
            p.at("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
        };
        let arrived = new.is_some_and(|n| {
            bound(n)
                && old.is_none_or(|o| {
                    !bound(o) || o.at("/metadata/labels") != n.at("/metadata/labels")
                })
        });
        placement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(&key, new);
        if let Some(n) = new
            && is_ours_and_pending(n)
        {
            // Our own condition writes change only status: no need to look again for those.
            let spec_changed = old.is_none_or(|o| {
                o.get("spec") != n.get("spec")
                    || o.at("/metadata/labels") != n.at("/metadata/labels")
                    || o.at("/metadata/resourceVersion") == n.at("/metadata/resourceVersion")
            });
            if spec_changed {
                queue.add(key.clone());
            }
        }
        if freed {
            retry_unschedulable(&queue, &placement);
        } else if arrived {
            retry_waiting_for_pods(&queue, &placement);
        }
    })
}

impl Reconcile for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(pod) = self.pods.get(key) else {
            self.lock().forget_unschedulable(key);
            return Ok(Action::Done);
        };
        if !is_ours_and_pending(&pod) || self.lock().assumed.contains_key(key) {
            self.lock().forget_unschedulable(key);
            return Ok(Action::Done);
        }
        let infos = self.snapshot();
        let volume_terms = match self.volumes.as_ref().map(|v| v.requirements(&pod)) {
            None => Vec::new(),
            Some(Ok(terms)) => terms,
            Some(Err(reason)) => {
                let message = format!("0/{} nodes are available: {reason}.", infos.len());
                return self.unschedulable(key, &pod, &message, false).await;
            }
        };
        let rules = self.pod_rules(&pod, &infos);
        match select_node(&pod, &infos, &volume_terms, &rules) {
            Ok(i) => {
                let node = name_of(&infos[i].node).to_string();
                tracing::debug!(node, "binding");
                self.assume(key, &pod, &node);
                let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                    return Ok(Action::Done);
                };
                let binder = Binder {
                    objects: self.objects.clone(),
                    pod_kind: self.pod_kind,
                    placement: self.placement.clone(),
                    queue: self.queue.clone(),
                };
                let (recorder, events) = (self.recorder.clone(), self.events_in_flight.clone());
                let span = tracing::Span::current();
                let mut binds = self.binds.lock().unwrap_or_else(|e| e.into_inner());
                while binds.try_join_next().is_some() {}
                binds.spawn(
                    async move {
                        let bound = binder.bind(&pod, &node).await;
                        drop(permit);
                        if bound {
                            record_scheduled(&recorder, &events, &pod, &node).await;
                        }
                    }
                    .instrument(span),
                );
                Ok(Action::Done)
            }
            Err(reasons) => {
                let message = unschedulable_message(infos.len(), &reasons);
                let waits = reasons.iter().flatten().any(|r| depends_on_pods(r));
                self.unschedulable(key, &pod, &message, waits).await
            }
        }
    }
}

/// Runs the scheduler once pods and nodes are listed, with one worker (see the module docs).
pub async fn run(scheduler: Arc<Scheduler>, queue: Arc<WorkQueue>) {
    scheduler.pods.wait_synced().await;
    scheduler.nodes.wait_synced().await;
    if let Some(namespaces) = &scheduler.namespaces {
        namespaces.wait_synced().await;
    }
    if let Some(v) = &scheduler.volumes {
        for informer in [&v.claims, &v.volumes, &v.classes] {
            informer.wait_synced().await;
        }
    }
    tracing::info!("caches synced; scheduling");
    run_workers(scheduler, queue, 1).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(cpu: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}})
    }

    #[test]
    fn node_usage_follows_pod_events_and_assumptions() {
        let mut p = Placement::default();
        let mut a = pod("1");
        a["spec"]["nodeName"] = json!("n1");
        p.observe("default/a", Some(&a));
        p.observe("default/a", Some(&a));
        assert_eq!(p.usage["n1"].pods, 1, "an update is not counted twice");
        assert!((p.usage["n1"].requested.cpu - 1.0).abs() < 1e-9);
        a["status"] = json!({"phase": "Succeeded"});
        p.observe("default/a", Some(&a));
        assert!(!p.usage.contains_key("n1"), "finished pods free their node");
        p.assumed.insert("default/b".into(), "n2".into());
        p.place("default/b", "n2", PodUsage::of(&pod("2")));
        p.observe("default/b", Some(&pod("2")));
        assert_eq!(
            p.usage["n2"].pods, 1,
            "assumed until the cache shows the binding"
        );
        p.observe("default/b", None);
        assert!(!p.usage.contains_key("n2"));
        assert!(p.assumed.is_empty());
    }

    #[test]
    fn pods_with_affinity_terms_are_listed_apart() {
        let mut p = Placement::default();
        let mut anti = pod("1");
        anti["metadata"]["labels"] = json!({"app": "web"});
        anti["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}]}});
        p.place("default/anti", "n1", PodUsage::of(&anti));
        p.place("default/plain", "n1", PodUsage::of(&pod("1")));
        let node = json!({"metadata": {"name": "n1"}});
        let infos = [NodeInfo::new(Arc::new(node), Usage::default())];
        assert_eq!(p.placed_on(&infos, false).len(), 2);
        assert_eq!(p.placed_on(&infos, true).len(), 1);
        // Alike pods share one group, counted per node.
        p.place("default/plain-2", "n1", PodUsage::of(&pod("2")));
        let groups = p.placed_on(&infos, false);
        assert_eq!(groups.len(), 2);
        let pods: i64 = groups.iter().flat_map(|g| &g.nodes).map(|(_, n)| n).sum();
        assert_eq!(pods, 3);
        assert!(Arc::ptr_eq(
            &p.placed["default/plain"].1.pod,
            &p.placed["default/plain-2"].1.pod
        ));
        p.unplace("default/plain-2");
        p.unplace("default/anti");
        assert!(p.with_affinity.is_empty());
        assert!(p.placed_on(&infos, true).is_empty());
    }

    #[test]
    fn only_our_pending_pods_are_scheduled_and_retries_back_off() {
        let mut p = pod("1");
        assert!(is_ours_and_pending(&p));
        p["spec"]["schedulerName"] = json!("other");
        assert!(!is_ours_and_pending(&p));
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(50), MAX_BACKOFF);
        let mut q = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}});
        set_condition(&mut q, json!({"type": "PodScheduled", "status": "False"}));
        assert_eq!(q["status"]["conditions"].as_array().map(Vec::len), Some(1));
        assert_eq!(q["status"]["conditions"][0]["status"], "False");
    }
}
