//! Inter-pod affinity and anti-affinity, after kube-scheduler's InterPodAffinity plugin: where
//! a pod may go, and how well, given the pods already placed and the topology domains (node
//! label values under a term's topologyKey) they sit in.
//!
//! For one incoming pod, `InterPodAffinity::new` counts once over every placed pod (kube's
//! PreFilter and PreScore):
//! 1. for the pod's required affinity: the domains holding a pod that matches all its terms;
//! 2. for the pod's required anti-affinity: the domains holding a pod that matches a term;
//! 3. for every placed pod's required anti-affinity that the incoming pod matches (symmetry):
//!    the domains the incoming pod must stay out of;
//! 4. for scoring: the weights of the preferred terms of both sides (and the placed pods'
//!    required affinity terms at kube's hardPodAffinityWeight, 1) per domain.
//!
//! Then `filter` and `score` are lookups per node. A term selects pods in the namespaces it
//! lists, or those its namespaceSelector picks, or (neither given) its own pod's namespace; a
//! missing labelSelector selects nothing, an empty one everything.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde::Deserialize as _;
use serde_json::Value;

use super::ownership::{labels, string_map};
use crate::apiserver::objects::strings_at;
use crate::json_path::JsonPath;
use crate::registry::pod_template;

pub const AFFINITY_NOT_MATCHED: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY_NOT_MATCHED: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY_NOT_MATCHED: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
/// kube-scheduler's default weight of a placed pod's required affinity term in scoring.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Labels of a namespace, by name (for namespaceSelector).
pub type NamespaceLabels<'a> = dyn Fn(&str) -> BTreeMap<String, String> + 'a;

/// A LabelSelector from JSON, narrowed by `matchLabelKeys` (key In the pod's value) and
/// `mismatchLabelKeys` (key NotIn the pod's value). None: absent or malformed, selects nothing.
pub fn parse_selector(
    value: Option<&Value>,
    match_keys: &[String],
    mismatch_keys: &[String],
    pod_labels: &BTreeMap<String, String>,
) -> Option<LabelSelector> {
    let mut selector = LabelSelector::deserialize(value?).ok()?;
    let narrowing = match_keys
        .iter()
        .map(|k| (k, "In"))
        .chain(mismatch_keys.iter().map(|k| (k, "NotIn")));
    for (key, operator) in narrowing {
        if let Some(v) = pod_labels.get(key) {
            let requirement = LabelSelectorRequirement {
                key: key.clone(),
                operator: operator.to_string(),
                values: Some(vec![v.clone()]),
            };
            selector
                .match_expressions
                .get_or_insert_with(Vec::new)
                .push(requirement);
        }
    }
    Some(selector)
}

pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_some_and(|s| pod_template::selector_matches(s, labels))
}

/// One PodAffinityTerm, parsed once per pod.
#[derive(Debug)]
pub struct AffinityTerm {
    selector: Option<LabelSelector>,
    namespaces: Vec<String>,
    namespace_selector: Option<LabelSelector>,
    topology_key: String,
}

impl AffinityTerm {
    fn parse(term: &Value, namespace: &str, pod_labels: &BTreeMap<String, String>) -> Self {
        let mut namespaces = strings_at(term, "/namespaces");
        let namespace_selector = term
            .get("namespaceSelector")
            .and_then(|s| LabelSelector::deserialize(s).ok());
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.push(namespace.to_string());
        }
        AffinityTerm {
            selector: parse_selector(
                term.get("labelSelector"),
                &strings_at(term, "/matchLabelKeys"),
                &strings_at(term, "/mismatchLabelKeys"),
                pod_labels,
            ),
            namespaces,
            namespace_selector,
            topology_key: term
                .get("topologyKey")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }
    }

    fn matches(&self, pod: &PlacedPod, namespace_labels: &NamespaceLabels) -> bool {
        let in_namespace = self.namespaces.contains(&pod.namespace)
            || self.namespace_selector.as_ref().is_some_and(|s| {
                pod_template::selector_matches(s, &namespace_labels(&pod.namespace))
            });
        in_namespace && selects(self.selector.as_ref(), &pod.labels)
    }
}

/// The pod (anti-)affinity terms of one pod.
#[derive(Debug, Default)]
pub struct AffinityTerms {
    required_affinity: Vec<AffinityTerm>,
    required_anti: Vec<AffinityTerm>,
    preferred_affinity: Vec<(i64, AffinityTerm)>,
    preferred_anti: Vec<(i64, AffinityTerm)>,
}

impl AffinityTerms {
    /// None when the pod has no pod (anti-)affinity at all.
    fn of(pod: &Value, namespace: &str, pod_labels: &BTreeMap<String, String>) -> Option<Self> {
        let affinity = pod.at("/spec/affinity")?;
        let list = |path: &str| {
            affinity
                .at(path)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
        };
        let required = |kind: &str| -> Vec<AffinityTerm> {
            list(&format!(
                "/{kind}/requiredDuringSchedulingIgnoredDuringExecution"
            ))
            .iter()
            .map(|t| AffinityTerm::parse(t, namespace, pod_labels))
            .collect()
        };
        let preferred = |kind: &str| -> Vec<(i64, AffinityTerm)> {
            list(&format!(
                "/{kind}/preferredDuringSchedulingIgnoredDuringExecution"
            ))
            .iter()
            .filter_map(|w| {
                let weight = w.get("weight").and_then(Value::as_i64)?;
                let term = w.get("podAffinityTerm")?;
                Some((weight, AffinityTerm::parse(term, namespace, pod_labels)))
            })
            .collect()
        };
        let terms = AffinityTerms {
            required_affinity: required("podAffinity"),
            required_anti: required("podAntiAffinity"),
            preferred_affinity: preferred("podAffinity"),
            preferred_anti: preferred("podAntiAffinity"),
        };
        let empty = terms.required_affinity.is_empty()
            && terms.required_anti.is_empty()
            && terms.preferred_affinity.is_empty()
            && terms.preferred_anti.is_empty();
        (!empty).then_some(terms)
    }
}

/// What the inter-pod rules need of a pod: where it lives, its labels, its own terms.
///
/// Two pods with the same namespace, labels, termination and pod (anti-)affinity are alike for
/// every inter-pod rule, so equality and hashing look at those alone (`terms` is derived from
/// them): the scheduler keeps one `PlacedPod` per group of alike pods (`PlacedGroup`).
#[derive(Debug, Default)]
pub struct PlacedPod {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Being deleted: still on its node, but no longer counted by topology spreading.
    pub terminating: bool,
    pub terms: Option<AffinityTerms>,
    /// The pod's `podAffinity` and `podAntiAffinity` as JSON text ("" when it has neither):
    /// what `terms` was parsed from, compared instead of the parsed terms.
    terms_source: String,
}

impl PlacedPod {
    pub fn of(pod: &Value) -> Self {
        let namespace = pod
            .at("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let labels = labels(pod);
        let terms = AffinityTerms::of(pod, &namespace, &labels);
        let terms_source = match &terms {
            None => String::new(),
            Some(_) => {
                let affinity = pod.at("/spec/affinity");
                let part = |name: &str| affinity.and_then(|a| a.get(name)).unwrap_or(&Value::Null);
                format!("{}{}", part("podAffinity"), part("podAntiAffinity"))
            }
        };
        PlacedPod {
            terms,
            terminating: pod.at("/metadata/deletionTimestamp").is_some(),
            namespace,
            labels,
            terms_source,
        }
    }

    fn alike_key(&self) -> (&str, &BTreeMap<String, String>, bool, &str) {
        (
            &self.namespace,
            &self.labels,
            self.terminating,
            &self.terms_source,
        )
    }
}

impl PartialEq for PlacedPod {
    fn eq(&self, other: &Self) -> bool {
        self.alike_key() == other.alike_key()
    }
}

impl Eq for PlacedPod {}

impl std::hash::Hash for PlacedPod {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.alike_key().hash(state);
    }
}

/// Placed pods that are alike (`PlacedPod`'s equality), with how many of them sit on each
/// node: the replicas of a controller share one group, so a scheduling cycle matches terms
/// once per group and counts per node, instead of once per placed pod.
#[derive(Debug, Clone)]
pub struct PlacedGroup {
    pub pod: Arc<PlacedPod>,
    /// (node index, pods of the group on it), every count > 0.
    pub nodes: Vec<(usize, i64)>,
}

#[cfg(test)]
impl PlacedGroup {
    /// One pod on one node.
    pub fn one(node: usize, pod: Arc<PlacedPod>) -> Self {
        PlacedGroup {
            pod,
            nodes: vec![(node, 1)],
        }
    }
}

/// Which per-domain count a matching term adds to.
#[derive(Clone, Copy)]
enum Tally {
    Affinity,
    AntiAffinity,
    ExistingAntiAffinity,
    Preferences,
}

/// Counts per topology domain, by topologyKey and then value: a node's domain under a key is
/// two lookups without allocating, and a node's score visits only the keys in use, not every
/// domain (with one domain per hostname, a scan of all of them made each cycle O(nodes²)).
#[derive(Default)]
struct Domains(HashMap<String, HashMap<String, i64>>);

impl Domains {
    /// Adds `by` to the domain of `node_labels` under `key`, if the node has that label.
    fn count(&mut self, node_labels: &BTreeMap<String, String>, key: &str, by: i64) {
        let Some(value) = node_labels.get(key) else {
            return;
        };
        let values = match self.0.get_mut(key) {
            Some(values) => values,
            None => self.0.entry(key.to_string()).or_default(),
        };
        match values.get_mut(value) {
            Some(n) => *n += by,
            None => {
                values.insert(value.clone(), by);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The count of the node's domain under `key` (0 when it has no such label).
    fn of(&self, node_labels: &BTreeMap<String, String>, key: &str) -> i64 {
        node_labels
            .get(key)
            .and_then(|v| self.0.get(key)?.get(v))
            .copied()
            .unwrap_or(0)
    }

    /// The counts of every domain the node is in, one per key in use.
    fn node_counts<'a>(
        &'a self,
        node_labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = i64> + 'a {
        self.0
            .iter()
            .filter_map(|(key, values)| values.get(node_labels.get(key)?).copied())
    }
}

/// The inter-pod state of one scheduling cycle (module docs, steps 1-4).
pub struct InterPodAffinity {
    incoming: Arc<PlacedPod>,
    affinity: Domains,
    anti_affinity: Domains,
    existing_anti_affinity: Domains,
    preferences: Domains,
}

impl InterPodAffinity {
    /// None when neither the incoming pod nor any placed pod has pod (anti-)affinity terms.
    /// `placed`: the placed pods in groups of alike pods, with their nodes as indexes into
    /// `node_labels`.
    pub fn new<L: Borrow<BTreeMap<String, String>>>(
        incoming: Arc<PlacedPod>,
        node_labels: &[L],
        placed: &[PlacedGroup],
        namespace_labels: &NamespaceLabels,
    ) -> Option<Self> {
        let any_placed = placed.iter().any(|g| g.pod.terms.is_some());
        if incoming.terms.is_none() && !any_placed {
            return None;
        }
        let mut state = InterPodAffinity {
            incoming,
            affinity: Domains::default(),
            anti_affinity: Domains::default(),
            existing_anti_affinity: Domains::default(),
            preferences: Domains::default(),
        };
        for group in placed {
            let tallies = state.tallies(&group.pod, namespace_labels);
            for (node, pods) in &group.nodes {
                let Some(labels) = node_labels.get(*node) else {
                    continue;
                };
                for (tally, key, weight) in &tallies {
                    state
                        .domains(*tally)
                        .count(labels.borrow(), key, weight * pods);
                }
            }
        }
        Some(state)
    }

    fn domains(&mut self, tally: Tally) -> &mut Domains {
        match tally {
            Tally::Affinity => &mut self.affinity,
            Tally::AntiAffinity => &mut self.anti_affinity,
            Tally::ExistingAntiAffinity => &mut self.existing_anti_affinity,
            Tally::Preferences => &mut self.preferences,
        }
    }

    /// What one placed pod adds, per pod, to the domains of its node: (count, topologyKey,
    /// weight) for each term of either side that matches the other side. It does not depend
    /// on the node, so alike pods share it.
    fn tallies(
        &self,
        existing: &PlacedPod,
        namespace_labels: &NamespaceLabels,
    ) -> Vec<(Tally, String, i64)> {
        let mut out = Vec::new();
        let mut add = |tally, term: &AffinityTerm, weight| {
            out.push((tally, term.topology_key.clone(), weight));
        };
        if let Some(own) = &self.incoming.terms {
            let required = &own.required_affinity;
            if !required.is_empty()
                && required
                    .iter()
                    .all(|t| t.matches(existing, namespace_labels))
            {
                for t in required {
                    add(Tally::Affinity, t, 1);
                }
            }
            for t in &own.required_anti {
                if t.matches(existing, namespace_labels) {
                    add(Tally::AntiAffinity, t, 1);
                }
            }
            for (sign, terms) in [(1, &own.preferred_affinity), (-1, &own.preferred_anti)] {
                for (weight, t) in terms {
                    if t.matches(existing, namespace_labels) {
                        add(Tally::Preferences, t, sign * weight);
                    }
                }
            }
        }
        let Some(theirs) = &existing.terms else {
            return out;
        };
        for t in &theirs.required_anti {
            if t.matches(&self.incoming, namespace_labels) {
                add(Tally::ExistingAntiAffinity, t, 1);
            }
        }
        let hard = theirs
            .required_affinity
            .iter()
            .map(|t| (HARD_POD_AFFINITY_WEIGHT, t));
        let weighted = theirs
            .preferred_affinity
            .iter()
            .map(|(w, t)| (*w, t))
            .chain(theirs.preferred_anti.iter().map(|(w, t)| (-w, t)));
        for (weight, t) in hard.chain(weighted) {
            if t.matches(&self.incoming, namespace_labels) {
                add(Tally::Preferences, t, weight);
            }
        }
        out
    }

    /// Why the pod cannot go to a node with these labels, in kube's order: its affinity, its
    /// anti-affinity, then the placed pods' anti-affinity.
    pub fn filter(&self, node_labels: &BTreeMap<String, String>) -> Option<&'static str> {
        let in_domain = |map: &Domains, key: &str| map.of(node_labels, key) > 0;
        let empty = AffinityTerms::default();
        let own = self.incoming.terms.as_ref().unwrap_or(&empty);
        if !own.required_affinity.is_empty() {
            if own
                .required_affinity
                .iter()
                .any(|t| !node_labels.contains_key(&t.topology_key))
            {
                return Some(AFFINITY_NOT_MATCHED);
            }
            let all_found = own
                .required_affinity
                .iter()
                .all(|t| in_domain(&self.affinity, &t.topology_key));
            // The first pod of a group with affinity to itself may go anywhere, or it would wait
            // for itself forever.
            let first_of_group = self.affinity.is_empty()
                && own
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(&self.incoming, &|_| BTreeMap::new()));
            if !all_found && !first_of_group {
                return Some(AFFINITY_NOT_MATCHED);
            }
        }
        if own
            .required_anti
            .iter()
            .any(|t| in_domain(&self.anti_affinity, &t.topology_key))
        {
            return Some(ANTI_AFFINITY_NOT_MATCHED);
        }
        let blocked = self
            .existing_anti_affinity
            .node_counts(node_labels)
            .any(|n| n > 0);
        blocked.then_some(EXISTING_ANTI_AFFINITY_NOT_MATCHED)
    }

    /// The raw preference for a node: the weights of every domain it belongs to.
    pub fn score(&self, node_labels: &BTreeMap<String, String>) -> i64 {
        self.preferences.node_counts(node_labels).sum()
    }

    /// Scores 0..100 of the nodes with these labels: the raw preferences scaled from the
    /// lowest to the highest (all 0 when they are equal), as kube normalises them.
    pub fn scores(&self, nodes: &[&BTreeMap<String, String>]) -> Vec<f64> {
        let raw: Vec<i64> = nodes.iter().map(|labels| self.score(labels)).collect();
        let (min, max) = (
            raw.iter().copied().min().unwrap_or(0),
            raw.iter().copied().max().unwrap_or(0),
        );
        raw.iter()
            .map(|s| {
                if max > min {
                    (s - min) as f64 * 100.0 / (max - min) as f64
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// Labels of a namespace object (for the scheduler's namespace lookup).
pub fn namespace_labels_of(namespace: Option<&Value>) -> BTreeMap<String, String> {
    string_map(namespace.and_then(|n| n.at("/metadata/labels")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(namespace: &str, labels: Value, affinity: Value) -> Arc<PlacedPod> {
        Arc::new(PlacedPod::of(&json!({
            "metadata": {"name": "p", "namespace": namespace, "labels": labels},
            "spec": {"affinity": affinity}})))
    }

    fn nodes() -> Vec<BTreeMap<String, String>> {
        ["a", "b", "c"]
            .iter()
            .zip(["z1", "z1", "z2"])
            .map(|(host, zone)| {
                BTreeMap::from([
                    ("kubernetes.io/hostname".to_string(), host.to_string()),
                    ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
                ])
            })
            .collect()
    }

    fn term(key: &str, selector: Value) -> Value {
        json!({"topologyKey": key, "labelSelector": selector})
    }

    fn no_labels(_: &str) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn anti_affinity_by_hostname_keeps_replicas_apart_both_ways() {
        let web = json!({"matchLabels": {"app": "web"}});
        let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            [term("kubernetes.io/hostname", web)]}});
        let placed = vec![PlacedGroup::one(
            0,
            pod("default", json!({"app": "web"}), anti.clone()),
        )];
        let n = nodes();
        let incoming = pod("default", json!({"app": "web"}), anti);
        let state = InterPodAffinity::new(incoming, &n, &placed, &no_labels).expect("terms");
        assert_eq!(state.filter(&n[0]), Some(ANTI_AFFINITY_NOT_MATCHED));
        assert_eq!(state.filter(&n[1]), None);
        // A plain pod matching the placed pod's anti-affinity is kept off its node too.
        let plain = pod("default", json!({"app": "web"}), json!({}));
        let state = InterPodAffinity::new(plain, &n, &placed, &no_labels).expect("placed terms");
        assert_eq!(
            state.filter(&n[0]),
            Some(EXISTING_ANTI_AFFINITY_NOT_MATCHED)
        );
        // Another namespace is not concerned.
        let other = pod("other", json!({"app": "web"}), json!({}));
        let state = InterPodAffinity::new(other, &n, &placed, &no_labels).expect("placed terms");
        assert_eq!(state.filter(&n[0]), None);
    }

    #[test]
    fn affinity_by_zone_follows_the_target_and_the_first_of_a_group_goes_anywhere() {
        let n = nodes();
        let affinity = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            [term("topology.kubernetes.io/zone", json!({"matchLabels": {"app": "db"}}))]}});
        let placed = vec![PlacedGroup::one(
            2,
            pod("default", json!({"app": "db"}), json!({})),
        )];
        let incoming = pod("default", json!({"app": "web"}), affinity.clone());
        let state =
            InterPodAffinity::new(incoming.clone(), &n, &placed, &no_labels).expect("terms");
        assert_eq!(state.filter(&n[0]), Some(AFFINITY_NOT_MATCHED));
        assert_eq!(state.filter(&n[2]), None);
        let state = InterPodAffinity::new(incoming, &n, &[], &no_labels).expect("terms");
        assert_eq!(
            state.filter(&n[2]),
            Some(AFFINITY_NOT_MATCHED),
            "no target yet"
        );
        let self_affine = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            [term("topology.kubernetes.io/zone", json!({"matchLabels": {"app": "web"}}))]}});
        let first = pod("default", json!({"app": "web"}), self_affine);
        let state = InterPodAffinity::new(first, &n, &[], &no_labels).expect("terms");
        assert_eq!(state.filter(&n[0]), None);
    }

    #[test]
    fn preferences_weigh_domains_and_namespace_selectors_widen_terms() {
        let n = nodes();
        let preferred = json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution":
            [{"weight": 50, "podAffinityTerm": {"topologyKey": "topology.kubernetes.io/zone",
                "labelSelector": {"matchLabels": {"app": "cache"}},
                "namespaceSelector": {"matchLabels": {"team": "a"}}}}]}});
        let placed = vec![PlacedGroup::one(
            0,
            pod("cache-ns", json!({"app": "cache"}), json!({})),
        )];
        let incoming = pod("default", json!({}), preferred);
        let team = |ns: &str| {
            if ns == "cache-ns" {
                BTreeMap::from([("team".to_string(), "a".to_string())])
            } else {
                BTreeMap::new()
            }
        };
        let state = InterPodAffinity::new(incoming, &n, &placed, &team).expect("terms");
        assert_eq!(state.score(&n[1]), 50, "same zone as the cache");
        assert_eq!(state.score(&n[2]), 0);
    }
}
