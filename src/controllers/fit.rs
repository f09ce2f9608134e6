//! Whether a pod fits a node and how well: the scheduler's filter and score plugins as pure
//! functions over JSON objects, after kube-scheduler's NodeUnschedulable, NodeName,
//! TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit (filters, in that order, a node
//! failing at its first), then PodTopologySpread and InterPodAffinity (`topology_spread`,
//! `pod_affinity`, which look at the other pods: `PodRules`), and LeastAllocated, default
//! spreading, NodeAffinity, PodTopologySpread and InterPodAffinity (scores).
//! Kept apart from `scheduler` (queueing, assuming, binding) so each can be read and tested on
//! its own; the DaemonSet controller uses the same node selection and taint rules.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use super::ownership::{controller_uid, labels};
use super::pod_affinity::{self, InterPodAffinity, NamespaceLabels, PlacedGroup, PlacedPod};
use super::topology_spread::{self, TopologySpread};
use super::volume_fit::volumes_allow;
use crate::apiserver::objects::name_of;
use crate::json_path::JsonPath;
use crate::registry::quantity;

/// The taint a not-Ready node carries (the node lifecycle controller's).
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
/// What kube-scheduler assumes a container without requests uses, for scoring only.
const DEFAULT_CPU: f64 = 0.1;
const DEFAULT_MEMORY: f64 = 200.0 * 1024.0 * 1024.0;
/// Pods a node takes when its status says nothing (the kubelet's default maxPods).
const DEFAULT_MAX_PODS: f64 = 110.0;

/// CPU (cores) and memory (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resources {
    pub cpu: f64,
    pub memory: f64,
}

fn quantity_at(value: &Value, pointer: &str) -> Option<f64> {
    value.at(pointer).and_then(|q| match q {
        Value::String(s) => quantity::parse(s),
        Value::Number(n) => n.as_f64(),
        _ => None,
    })
}

/// What a pod requests: the sum over its containers (a container without requests but with
/// limits requests its limits), at least any single init container's. With `non_zero`,
/// containers requesting nothing count kube's scoring defaults.
pub fn pod_requests(pod: &Value, non_zero: bool) -> Resources {
    let container = |c: &Value| {
        let get = |r: &str| {
            quantity_at(c, &format!("/resources/requests/{r}"))
                .or_else(|| quantity_at(c, &format!("/resources/limits/{r}")))
        };
        let (cpu, memory) = (get("cpu"), get("memory"));
        Resources {
            cpu: cpu.unwrap_or(if non_zero { DEFAULT_CPU } else { 0.0 }),
            memory: memory.unwrap_or(if non_zero { DEFAULT_MEMORY } else { 0.0 }),
        }
    };
    let list = |field: &str| {
        pod.at(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    };
    let mut total = Resources::default();
    for c in list("containers") {
        let r = container(c);
        total.cpu += r.cpu;
        total.memory += r.memory;
    }
    for c in list("initContainers") {
        let r = container(c);
        total.cpu = total.cpu.max(r.cpu);
        total.memory = total.memory.max(r.memory);
    }
    total
}

/// (protocol, port) of every hostPort the pod asks for.
pub fn host_ports(pod: &Value) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for c in pod
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
            let Some(port) = p.get("hostPort").and_then(Value::as_i64).filter(|p| *p > 0) else {
                continue;
            };
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            out.push((protocol.to_string(), port));
        }
    }
    out
}

/// The node's taints, plus the not-ready taint a not-Ready node would carry.
pub fn node_taints(node: &Value) -> Vec<Value> {
    let mut taints: Vec<Value> = node
        .at("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !crate::registry::node::is_ready(node)
        && !taints
            .iter()
            .any(|t| t.get("key") == Some(&json!(NOT_READY_TAINT)))
    {
        taints.push(json!({"key": NOT_READY_TAINT, "effect": "NoSchedule"}));
    }
    taints
}

/// Whether one toleration tolerates one taint (core/v1 Toleration.ToleratesTaint).
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let text = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    let effect = text(toleration, "effect");
    if !effect.is_empty() && effect != text(taint, "effect") {
        return false;
    }
    let key = text(toleration, "key");
    if !key.is_empty() && key != text(taint, "key") {
        return false;
    }
    match text(toleration, "operator").as_str() {
        "Exists" => true,
        "" | "Equal" => text(toleration, "value") == text(taint, "value"),
        _ => false,
    }
}

/// The first NoSchedule/NoExecute taint of `taints` that `pod` does not tolerate.
pub fn untolerated_taint<'a>(pod: &Value, taints: &'a [Value]) -> Option<&'a Value> {
    let tolerations = pod
        .at("/spec/tolerations")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    taints.iter().find(|taint| {
        let effect = taint.get("effect").and_then(Value::as_str).unwrap_or("");
        matches!(effect, "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

/// One NodeSelectorRequirement against a value source (labels, or fields for matchFields).
fn requirement_matches(req: &Value, values_of: &BTreeMap<String, String>) -> bool {
    let key = req.get("key").and_then(Value::as_str).unwrap_or("");
    let values: Vec<&str> = req
        .get("values")
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let actual = values_of.get(key);
    let number = |s: &str| s.parse::<i64>().ok();
    match req.get("operator").and_then(Value::as_str).unwrap_or("") {
        "In" => actual.is_some_and(|a| values.contains(&a.as_str())),
        "NotIn" => actual.is_none_or(|a| !values.contains(&a.as_str())),
        "Exists" => actual.is_some(),
        "DoesNotExist" => actual.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(a), [bound]) = (actual.and_then(|a| number(a)), values.as_slice()) else {
                return false;
            };
            let Some(bound) = number(bound) else {
                return false;
            };
            if op == "Gt" { a > bound } else { a < bound }
        }
        _ => false,
    }
}

/// One NodeSelectorTerm: all its expressions and fields match; an empty term matches nothing.
pub fn term_matches(term: &Value, node: &Value) -> bool {
    term_matches_labels(term, name_of(node), &labels(node))
}

/// `term_matches` for a node whose labels are already at hand.
fn term_matches_labels(
    term: &Value,
    node_name: &str,
    node_labels: &BTreeMap<String, String>,
) -> bool {
    let list = |f: &str| {
        term.get(f)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    };
    let (expressions, fields) = (list("matchExpressions"), list("matchFields"));
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    if !expressions
        .iter()
        .all(|r| requirement_matches(r, node_labels))
    {
        return false;
    }
    if fields.is_empty() {
        return true;
    }
    let node_fields = BTreeMap::from([("metadata.name".to_string(), node_name.to_string())]);
    fields.iter().all(|r| requirement_matches(r, &node_fields))
}

/// nodeSelector and required node affinity (the NodeAffinity filter).
pub fn matches_node_selection(pod: &Value, node: &Value) -> bool {
    matches_node_labels(pod, name_of(node), &labels(node))
}

/// `matches_node_selection` for a node whose labels are already at hand.
fn matches_node_labels(
    pod: &Value,
    node_name: &str,
    node_labels: &BTreeMap<String, String>,
) -> bool {
    let selector_ok = match pod.at("/spec/nodeSelector").and_then(Value::as_object) {
        Some(selector) => selector
            .iter()
            // Non-string values are ignored, as the map form of the selector drops them.
            .all(|(k, v)| {
                v.as_str()
                    .is_none_or(|v| node_labels.get(k).is_some_and(|l| l == v))
            }),
        None => true,
    };
    if !selector_ok {
        return false;
    }
    let required = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";
    match pod
        .at(&format!("{required}/nodeSelectorTerms"))
        .and_then(Value::as_array)
    {
        Some(terms) => terms
            .iter()
            .any(|t| term_matches_labels(t, node_name, node_labels)),
        None => true,
    }
}

/// The sum of the weights of the preferred node affinity terms the node matches.
fn preferred_affinity_weight(
    pod: &Value,
    node_name: &str,
    node_labels: &BTreeMap<String, String>,
) -> i64 {
    pod.at("/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| {
            p.get("preference")
                .is_some_and(|t| term_matches_labels(t, node_name, node_labels))
        })
        .filter_map(|p| p.get("weight").and_then(Value::as_i64))
        .sum()
}

/// What one pod takes from its node.
#[derive(Clone, Debug, Default)]
pub struct PodUsage {
    requested: Resources,
    /// Requests with kube's non-zero defaults, for scoring.
    scored: Resources,
    ports: Vec<(String, i64)>,
    owner: Option<String>,
    /// Namespace, labels and pod (anti-)affinity terms, for the rules of the pods after it.
    pub pod: Arc<PlacedPod>,
}

impl PodUsage {
    pub fn of(pod: &Value) -> Self {
        PodUsage {
            requested: pod_requests(pod, false),
            scored: pod_requests(pod, true),
            ports: host_ports(pod),
            owner: controller_uid(pod).map(str::to_string),
            pod: Arc::new(PlacedPod::of(pod)),
        }
    }
}

/// The rules that look at the pods already placed (topology spreading, inter-pod affinity),
/// worked out once per scheduling cycle; the default applies none.
#[derive(Default)]
pub struct PodRules {
    /// Each node's facts (for its labels), parallel to the cycle's `NodeInfo`s.
    nodes: Vec<Arc<NodeFacts>>,
    spread: Option<TopologySpread>,
    affinity: Option<InterPodAffinity>,
}

impl PodRules {
    /// Whether a cycle for `pod` needs them: it has pod (anti-)affinity or spread
    /// constraints, or some placed pod has pod (anti-)affinity (which may concern it).
    pub fn needed(pod: &Value, placed_with_affinity: bool) -> bool {
        let spec = |p: &str| pod.at(p).is_some_and(|v| !v.is_null());
        placed_with_affinity
            || spec("/spec/affinity/podAffinity")
            || spec("/spec/affinity/podAntiAffinity")
            || spec("/spec/topologySpreadConstraints")
    }

    /// `placed`: the pods on the nodes, in groups of alike pods with their nodes as indexes
    /// into `infos`.
    pub fn new(
        pod: &Value,
        infos: &[NodeInfo],
        placed: &[PlacedGroup],
        namespace_labels: &NamespaceLabels,
    ) -> Self {
        let incoming = Arc::new(PlacedPod::of(pod));
        let node_labels: Vec<&BTreeMap<String, String>> =
            infos.iter().map(|i| &i.facts.labels).collect();
        let nodes: Vec<&Value> = infos.iter().map(|i| &*i.node).collect();
        let spread = TopologySpread::new(pod, &incoming, &nodes, &node_labels, placed);
        let affinity = InterPodAffinity::new(incoming, &node_labels, placed, namespace_labels);
        PodRules {
            nodes: infos.iter().map(|i| i.facts.clone()).collect(),
            spread,
            affinity,
        }
    }

    /// kube's filter order: PodTopologySpread, then InterPodAffinity.
    fn filter(&self, node: usize) -> Option<&'static str> {
        let labels = &self.nodes.get(node)?.labels;
        let spread = self.spread.as_ref().and_then(|s| s.filter(labels));
        spread.or_else(|| self.affinity.as_ref().and_then(|a| a.filter(labels)))
    }
}

/// What the pods on one node take together; kept up to date from pod events so a
/// scheduling cycle costs O(nodes), not O(pods).
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub requested: Resources,
    scored: Resources,
    pub pods: usize,
    /// Host ports in use, with how many pods use each.
    ports: HashMap<(String, i64), usize>,
    /// Pods per controller uid.
    owners: HashMap<String, usize>,
}

impl Usage {
    fn apply(&mut self, pod: &PodUsage, sign: f64) {
        self.requested.cpu += sign * pod.requested.cpu;
        self.requested.memory += sign * pod.requested.memory;
        self.scored.cpu += sign * pod.scored.cpu;
        self.scored.memory += sign * pod.scored.memory;
        let step = |count: &mut usize| {
            *count = if sign > 0.0 {
                *count + 1
            } else {
                count.saturating_sub(1)
            }
        };
        step(&mut self.pods);
        for port in &pod.ports {
            step(self.ports.entry(port.clone()).or_default());
        }
        if let Some(owner) = &pod.owner {
            step(self.owners.entry(owner.clone()).or_default());
        }
        self.ports.retain(|_, n| *n > 0);
        self.owners.retain(|_, n| *n > 0);
    }

    pub fn add(&mut self, pod: &PodUsage) {
        self.apply(pod, 1.0);
    }

    pub fn remove(&mut self, pod: &PodUsage) {
        self.apply(pod, -1.0);
    }
}

/// What the filters and scores read from a Node object, worked out once per version of the
/// node instead of once per pod and node: a scheduling cycle would otherwise rebuild every
/// node's label map and re-parse its quantities, hundreds of allocations per pod.
#[derive(Debug)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    /// With the not-ready taint of a not-Ready node (`node_taints`).
    taints: Vec<Value>,
    unschedulable: bool,
    allocatable: Resources,
    max_pods: f64,
}

impl NodeFacts {
    pub fn of(node: &Value) -> Self {
        NodeFacts {
            labels: labels(node),
            taints: node_taints(node),
            unschedulable: node.at("/spec/unschedulable") == Some(&json!(true)),
            allocatable: Resources {
                cpu: quantity_at(node, "/status/allocatable/cpu").unwrap_or(0.0),
                memory: quantity_at(node, "/status/allocatable/memory").unwrap_or(0.0),
            },
            max_pods: quantity_at(node, "/status/allocatable/pods").unwrap_or(DEFAULT_MAX_PODS),
        }
    }
}

/// A node and what is already placed on it.
pub struct NodeInfo {
    pub node: Arc<Value>,
    pub facts: Arc<NodeFacts>,
    usage: Arc<Usage>,
}

impl NodeInfo {
    /// A node with its facts worked out now (tests; the scheduler keeps them: `with_facts`).
    #[cfg(test)]
    pub fn new(node: Arc<Value>, usage: Usage) -> Self {
        let facts = Arc::new(NodeFacts::of(&node));
        NodeInfo::with_facts(node, facts, Arc::new(usage))
    }

    /// A node whose facts (and usage) the caller keeps between cycles.
    pub fn with_facts(node: Arc<Value>, facts: Arc<NodeFacts>, usage: Arc<Usage>) -> Self {
        NodeInfo { node, facts, usage }
    }

    #[cfg(test)]
    pub fn add_pod(&mut self, pod: &Value) {
        Arc::make_mut(&mut self.usage).add(&PodUsage::of(pod));
    }

    /// Why `pod` cannot go here (empty: it fits): the first failing filter's reasons.
    /// `takes` is what the pod takes, worked out once for all nodes.
    fn filter(&self, pod: &Value, takes: &PodUsage, volumes: &[Vec<Value>]) -> Vec<String> {
        let node = &*self.node;
        let facts = &*self.facts;
        let tolerations_unschedulable = || {
            let taint = json!({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"});
            untolerated_taint(pod, std::slice::from_ref(&taint)).is_none()
        };
        if facts.unschedulable && !tolerations_unschedulable() {
            return vec!["node(s) were unschedulable".into()];
        }
        let wanted = pod
            .at("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !wanted.is_empty() && wanted != name_of(node) {
            return vec!["node(s) didn't match the requested node name".into()];
        }
        if let Some(taint) = untolerated_taint(pod, &facts.taints) {
            let text = |f: &str| taint.get(f).and_then(Value::as_str).unwrap_or("");
            return vec![format!(
                "node(s) had untolerated taint {{{}: {}}}",
                text("key"),
                text("value")
            )];
        }
        if !matches_node_labels(pod, name_of(node), &facts.labels) {
            return vec!["node(s) didn't match Pod's node affinity/selector".into()];
        }
        if takes.ports.iter().any(|p| self.usage.ports.contains_key(p)) {
            return vec!["node(s) didn't have free ports for the requested pod ports".into()];
        }
        let mut reasons = Vec::new();
        if (self.usage.pods + 1) as f64 > facts.max_pods {
            reasons.push("Too many pods".to_string());
        }
        let want = takes.requested;
        // A little slack so "500m" + "500m" fits in "1" despite floating point.
        const EPSILON: f64 = 1e-9;
        if want.cpu > 0.0 && self.usage.requested.cpu + want.cpu > facts.allocatable.cpu + EPSILON {
            reasons.push("Insufficient cpu".into());
        }
        if want.memory > 0.0
            && self.usage.requested.memory + want.memory > facts.allocatable.memory + EPSILON
        {
            reasons.push("Insufficient memory".into());
        }
        if reasons.is_empty() && !volumes_allow(volumes, node) {
            reasons.push("node(s) had volume node affinity conflict".into());
        }
        reasons
    }

    /// LeastAllocated: the share of cpu and memory left free after placing `pod`, 0..100.
    fn least_requested(&self, takes: &PodUsage) -> f64 {
        let want = takes.scored;
        let free = |used: f64, alloc: f64| {
            if alloc <= 0.0 {
                0.0
            } else {
                ((alloc - used) * 100.0 / alloc).max(0.0)
            }
        };
        let alloc = self.facts.allocatable;
        (free(self.usage.scored.cpu + want.cpu, alloc.cpu)
            + free(self.usage.scored.memory + want.memory, alloc.memory))
            / 2.0
    }
}

/// Whether a filter reason comes from a rule about other pods (a pod arriving may lift it).
pub fn depends_on_pods(reason: &str) -> bool {
    [
        pod_affinity::AFFINITY_NOT_MATCHED,
        pod_affinity::ANTI_AFFINITY_NOT_MATCHED,
        pod_affinity::EXISTING_ANTI_AFFINITY_NOT_MATCHED,
        topology_spread::SPREAD_NOT_MATCHED,
    ]
    .contains(&reason)
}

/// Kube's failure message: "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) ...".
pub fn unschedulable_message(total: usize, reasons: &[Vec<String>]) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in reasons.iter().flatten() {
        *counts.entry(reason.as_str()).or_default() += 1;
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// The chosen node, or the reasons each node was rejected.
/// `volumes`: the node selector terms of the volumes the pod uses (`volume_fit`).
pub fn select_node(
    pod: &Value,
    infos: &[NodeInfo],
    volumes: &[Vec<Value>],
    rules: &PodRules,
) -> Result<usize, Vec<Vec<String>>> {
    let takes = PodUsage::of(pod);
    let mut rejected = Vec::new();
    let mut feasible = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        let mut reasons = info.filter(pod, &takes, volumes);
        if reasons.is_empty()
            && let Some(reason) = rules.filter(i)
        {
            reasons.push(reason.to_string());
        }
        if reasons.is_empty() {
            feasible.push(i);
        } else {
            rejected.push(reasons);
        }
    }
    if feasible.is_empty() {
        return Err(rejected);
    }
    let owner = controller_uid(pod);
    let owned_on = |i: usize| {
        owner
            .and_then(|u| infos[i].usage.owners.get(u))
            .copied()
            .unwrap_or(0)
    };
    let max_owned = feasible.iter().map(|&i| owned_on(i)).max().unwrap_or(0);
    let max_preferred = feasible
        .iter()
        .map(|&i| preferred_affinity_weight(pod, name_of(&infos[i].node), &infos[i].facts.labels))
        .max()
        .unwrap_or(0);
    let feasible_labels: Vec<&BTreeMap<String, String>> = feasible
        .iter()
        .filter_map(|&i| rules.nodes.get(i).map(|f| &f.labels))
        .collect();
    // Explicit spread constraints replace the default spreading of a controller's pods.
    let spread_scores = rules.spread.as_ref().map(|s| s.scores(&feasible_labels));
    let affinity_scores = rules.affinity.as_ref().map(|a| a.scores(&feasible_labels));
    let score = |n: usize, i: usize| {
        let spread = match &spread_scores {
            Some(scores) => scores.get(n).copied().unwrap_or(0.0),
            None if max_owned == 0 => 100.0,
            None => (max_owned - owned_on(i)) as f64 * 100.0 / max_owned as f64,
        };
        let inter_pod = affinity_scores
            .as_ref()
            .and_then(|s| s.get(n).copied())
            .unwrap_or(0.0);
        let preferred = if max_preferred <= 0 {
            0.0
        } else {
            let weight =
                preferred_affinity_weight(pod, name_of(&infos[i].node), &infos[i].facts.labels);
            weight as f64 * 100.0 / max_preferred as f64
        };
        // kube's default weights: spreading and inter-pod affinity count twice.
        infos[i].least_requested(&takes) + 2.0 * spread + 2.0 * inter_pod + preferred
    };
    let mut best = feasible[0];
    let mut best_score = score(0, best);
    for (n, &i) in feasible.iter().enumerate().skip(1) {
        let s = score(n, i);
        let better = s > best_score + 1e-9
            || ((s - best_score).abs() <= 1e-9
                && name_of(&infos[i].node) < name_of(&infos[best].node));
        if better {
            best = i;
            best_score = s;
        }
    }
    Ok(best)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, memory: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(cpu: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}})
    }

    fn infos(nodes: Vec<Value>) -> Vec<NodeInfo> {
        nodes
            .into_iter()
            .map(|n| NodeInfo::new(Arc::new(n), Usage::default()))
            .collect()
    }

    #[test]
    fn requests_sum_containers_and_fall_back_to_limits() {
        let p = json!({"spec": {"containers": [
            {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"resources": {"limits": {"cpu": "1"}}}
        ], "initContainers": [{"resources": {"requests": {"cpu": "2"}}}]}});
        let r = pod_requests(&p, false);
        assert!((r.cpu - 2.0).abs() < 1e-9);
        assert!((r.memory - 64.0 * 1024.0 * 1024.0).abs() < 1.0);
        assert!(
            (pod_requests(&json!({"spec": {"containers": [{}]}}), true).cpu - 0.1).abs() < 1e-9
        );
    }

    #[test]
    fn pods_go_where_they_fit_and_the_message_counts_reasons() {
        let mut tainted = node("a", "4", "8Gi");
        tainted["spec"]["taints"] =
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
        let mut nodes = infos(vec![tainted, node("b", "1", "1Gi"), node("c", "2", "1Gi")]);
        assert_eq!(
            select_node(&pod("1500m"), &nodes, &[], &PodRules::default()).ok(),
            Some(2)
        );
        nodes[2].add_pod(&pod("1500m"));
        let reasons =
            select_node(&pod("1500m"), &nodes, &[], &PodRules::default()).expect_err("no fit");
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu."
        );
        let mut tolerant = pod("3");
        tolerant["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Exists"}]);
        assert_eq!(
            select_node(&tolerant, &nodes, &[], &PodRules::default()).ok(),
            Some(0)
        );
    }

    #[test]
    fn selectors_affinity_ports_and_readiness_filter() {
        let mut gpu = node("a", "4", "8Gi");
        gpu["metadata"]["labels"]["disk"] = json!("ssd");
        gpu["metadata"]["labels"]["cores"] = json!("16");
        let mut not_ready = node("b", "4", "8Gi");
        not_ready["status"]["conditions"][0]["status"] = json!("False");
        let cordoned = {
            let mut n = node("c", "4", "8Gi");
            n["spec"]["unschedulable"] = json!(true);
            n
        };
        let nodes = infos(vec![
            gpu.clone(),
            not_ready,
            cordoned,
            node("d", "4", "8Gi"),
        ]);
        let mut p = pod("1");
        p["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        assert_eq!(
            select_node(&p, &nodes, &[], &PodRules::default()).ok(),
            Some(0)
        );
        let mut p = pod("1");
        p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "cores", "operator": "Gt", "values": ["8"]},
                {"key": "disk", "operator": "NotIn", "values": ["hdd"]}]}]}}});
        assert_eq!(
            select_node(&p, &nodes, &[], &PodRules::default()).ok(),
            Some(0)
        );
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["operator"] = json!("Lt");
        let reasons = select_node(&p, &nodes, &[], &PodRules::default()).expect_err("no fit");
        let message = unschedulable_message(4, &reasons);
        assert!(
            message.contains("2 node(s) didn't match Pod's node affinity/selector"),
            "{message}"
        );
        assert!(
            message.contains("1 node(s) were unschedulable"),
            "{message}"
        );
        assert!(
            message.contains("untolerated taint {node.kubernetes.io/not-ready: }"),
            "{message}"
        );
        let mut web = pod("100m");
        web["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
        let mut nodes = infos(vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")]);
        nodes[0].add_pod(&web);
        assert_eq!(
            select_node(&web, &nodes, &[], &PodRules::default()).ok(),
            Some(1)
        );
        nodes[1].add_pod(&web);
        let reasons =
            select_node(&web, &nodes, &[], &PodRules::default()).expect_err("ports taken");
        assert!(unschedulable_message(2, &reasons).contains("2 node(s) didn't have free ports"));
    }

    #[test]
    fn scores_spread_owners_and_honour_preferences() {
        let mut owned = pod("100m");
        owned["metadata"]["ownerReferences"] = json!([{"uid": "rs1", "controller": true}]);
        let mut nodes = infos(vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")]);
        nodes[0].add_pod(&owned);
        assert_eq!(
            select_node(&owned, &nodes, &[], &PodRules::default()).ok(),
            Some(1)
        );
        let mut p = pod("100m");
        p["spec"]["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": ["b"]}]}}]}});
        let nodes = infos(vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")]);
        assert_eq!(
            select_node(&p, &nodes, &[], &PodRules::default()).ok(),
            Some(1)
        );
    }

    #[test]
    fn a_local_volume_pins_the_pod_to_its_node() {
        let nodes = infos(vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")]);
        let on_b = vec![json!({"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}
        ]})];
        assert_eq!(
            select_node(
                &pod("1"),
                &nodes,
                std::slice::from_ref(&on_b),
                &PodRules::default()
            )
            .ok(),
            Some(1)
        );
        let on_c = vec![json!({"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["c"]}
        ]})];
        let reasons = select_node(&pod("1"), &nodes, &[on_c], &PodRules::default())
            .expect_err("no node holds it");
        assert_eq!(
            unschedulable_message(2, &reasons),
            "0/2 nodes are available: 2 node(s) had volume node affinity conflict."
        );
    }
}
