//! topologySpreadConstraints, after kube-scheduler's PodTopologySpread plugin.
//!
//! For one incoming pod, `TopologySpread::new` counts, per constraint, the pods of the pod's
//! namespace that the constraint's selector matches (terminating ones left out) in each
//! domain (a value of the node label named by topologyKey). A node adds its domain only when
//! it carries the topology keys of every constraint of the same kind (DoNotSchedule or
//! ScheduleAnyway) and passes the constraint's node inclusion policies (nodeAffinityPolicy
//! Honor by default: the pod's nodeSelector and required node affinity; nodeTaintsPolicy
//! Ignore by default). Then:
//! - filter (DoNotSchedule): placing the pod in the node's domain must keep
//!   `count + self-match - global minimum <= maxSkew`, where the global minimum is 0 while
//!   fewer than minDomains domains exist; a node without the key is refused;
//! - score (ScheduleAnyway): fewer matching pods in the node's domains is better, each
//!   constraint weighted by log(domains + 2), normalised to 0..100 (nodes without the keys 0).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::fit::{matches_node_selection, node_taints, untolerated_taint};
use super::pod_affinity::{PlacedGroup, PlacedPod, parse_selector, selects};
use crate::apiserver::objects::strings_at;
use crate::json_path::JsonPath;

pub const SPREAD_NOT_MATCHED: &str = "node(s) didn't match pod topology spread constraints";
pub const SPREAD_LABEL_MISSING: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

struct Constraint {
    max_skew: i64,
    key: String,
    /// DoNotSchedule (a filter) rather than ScheduleAnyway (a score).
    hard: bool,
    selector: Option<LabelSelector>,
    min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
    /// The incoming pod matches its own selector (it adds one to the domain it goes to).
    self_match: bool,
}

impl Constraint {
    fn parse(c: &Value, pod: &PlacedPod) -> Self {
        let text = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or("");
        let selector = parse_selector(
            c.get("labelSelector"),
            &strings_at(c, "/matchLabelKeys"),
            &[],
            &pod.labels,
        );
        Constraint {
            max_skew: c.get("maxSkew").and_then(Value::as_i64).unwrap_or(1),
            key: text("topologyKey").to_string(),
            hard: text("whenUnsatisfiable") != "ScheduleAnyway",
            self_match: selects(selector.as_ref(), &pod.labels),
            selector,
            min_domains: c
                .get("minDomains")
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(1),
            honor_affinity: text("nodeAffinityPolicy") != "Ignore",
            honor_taints: text("nodeTaintsPolicy") == "Honor",
        }
    }
}

/// The spreading state of one scheduling cycle (module docs).
pub struct TopologySpread {
    constraints: Vec<Constraint>,
    /// Per constraint: matching pods per domain value.
    counts: Vec<HashMap<String, i64>>,
}

impl TopologySpread {
    /// None when the pod has no topologySpreadConstraints. `nodes` and `node_labels` are
    /// parallel; `placed` is (node index, pod) for every pod on a node.
    pub fn new<L: Borrow<BTreeMap<String, String>>>(
        pod: &Value,
        incoming: &PlacedPod,
        nodes: &[&Value],
        node_labels: &[L],
        placed: &[PlacedGroup],
    ) -> Option<Self> {
        let constraints: Vec<Constraint> = pod
            .at("/spec/topologySpreadConstraints")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())?
            .iter()
            .map(|c| Constraint::parse(c, incoming))
            .collect();
        let mut per_node = vec![vec![0i64; constraints.len()]; nodes.len()];
        for group in placed {
            let other = &group.pod;
            if other.terminating || other.namespace != incoming.namespace {
                continue;
            }
            let matched: Vec<bool> = constraints
                .iter()
                .map(|c| selects(c.selector.as_ref(), &other.labels))
                .collect();
            for (node, pods) in &group.nodes {
                let Some(row) = per_node.get_mut(*node) else {
                    continue;
                };
                for (n, _) in row.iter_mut().zip(&matched).filter(|(_, m)| **m) {
                    *n += pods;
                }
            }
        }
        let mut counts = vec![HashMap::new(); constraints.len()];
        for (i, (node, labels)) in nodes.iter().zip(node_labels).enumerate() {
            let labels: &BTreeMap<String, String> = labels.borrow();
            for (j, c) in constraints.iter().enumerate() {
                let has_keys = constraints
                    .iter()
                    .filter(|o| o.hard == c.hard)
                    .all(|o| labels.contains_key(&o.key));
                if !has_keys || !included(c, pod, node) {
                    continue;
                }
                let value = labels.get(&c.key).cloned().unwrap_or_default();
                *counts[j].entry(value).or_insert(0) += per_node[i][j];
            }
        }
        Some(TopologySpread {
            constraints,
            counts,
        })
    }

    /// Why the pod cannot go to a node with these labels (the DoNotSchedule constraints).
    pub fn filter(&self, labels: &BTreeMap<String, String>) -> Option<&'static str> {
        for (c, counts) in self.constraints.iter().zip(&self.counts) {
            if !c.hard {
                continue;
            }
            let Some(value) = labels.get(&c.key) else {
                return Some(SPREAD_LABEL_MISSING);
            };
            let minimum = if counts.len() < c.min_domains {
                0
            } else {
                counts.values().copied().min().unwrap_or(0)
            };
            let here = counts.get(value).copied().unwrap_or(0);
            if here + i64::from(c.self_match) - minimum > c.max_skew {
                return Some(SPREAD_NOT_MATCHED);
            }
        }
        None
    }

    /// Scores 0..100 of the nodes with these labels (the ScheduleAnyway constraints; all 0
    /// when there are none).
    pub fn scores(&self, nodes: &[&BTreeMap<String, String>]) -> Vec<f64> {
        let soft: Vec<(&Constraint, &HashMap<String, i64>)> = self
            .constraints
            .iter()
            .zip(&self.counts)
            .filter(|(c, _)| !c.hard)
            .collect();
        if soft.is_empty() {
            return vec![0.0; nodes.len()];
        }
        // Raw: matching pods in the node's domain per constraint, weighted; None: ignored.
        let raw: Vec<Option<f64>> = nodes
            .iter()
            .map(|labels| {
                soft.iter()
                    .map(|(c, counts)| {
                        let value = labels.get(&c.key)?;
                        let weight = ((counts.len() + 2) as f64).ln();
                        let here = counts.get(value).copied().unwrap_or(0);
                        Some((here as f64 * weight + (c.max_skew - 1) as f64).round())
                    })
                    .sum()
            })
            .collect();
        let present = raw.iter().flatten();
        let max = present.clone().copied().fold(f64::MIN, f64::max);
        let min = present.copied().fold(f64::MAX, f64::min);
        raw.iter()
            .map(|r| match r {
                None => 0.0,
                Some(_) if max <= 0.0 => 100.0,
                Some(s) => 100.0 * (max + min - s) / max,
            })
            .collect()
    }
}

/// The constraint's node inclusion policies.
fn included(c: &Constraint, pod: &Value, node: &Value) -> bool {
    (!c.honor_affinity || matches_node_selection(pod, node))
        && (!c.honor_taints || untolerated_taint(pod, &node_taints(node)).is_none())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use serde_json::json;

    fn zoned(zones: &[&str]) -> (Vec<Value>, Vec<BTreeMap<String, String>>) {
        let nodes: Vec<Value> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                let mut labels = json!({"kubernetes.io/hostname": format!("n{i}")});
                if !z.is_empty() {
                    labels["topology.kubernetes.io/zone"] = json!(z);
                }
                json!({"metadata": {"name": format!("n{i}"), "labels": labels}})
            })
            .collect();
        let labels = nodes.iter().map(super::super::ownership::labels).collect();
        (nodes, labels)
    }

    fn web(constraint: Value) -> Value {
        json!({"metadata": {"name": "w", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"topologySpreadConstraints": [constraint]}})
    }

    fn placed(on: &[usize]) -> Vec<PlacedGroup> {
        on.iter()
            .map(|n| {
                let pod = json!({"metadata": {"namespace": "default", "labels": {"app": "web"}}});
                PlacedGroup::one(*n, Arc::new(PlacedPod::of(&pod)))
            })
            .collect()
    }

    fn constraint(when: &str) -> Value {
        json!({"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "web"}}})
    }

    #[test]
    fn max_skew_one_over_zones_and_nodes_without_the_key() {
        let (nodes, labels) = zoned(&["a", "a", "b", ""]);
        let refs: Vec<&Value> = nodes.iter().collect();
        let pod = web(constraint("DoNotSchedule"));
        let incoming = PlacedPod::of(&pod);
        // Zone a holds 1, zone b none: only b may take the next one.
        let state = TopologySpread::new(&pod, &incoming, &refs, &labels, &placed(&[0]))
            .expect("constraints");
        assert_eq!(state.filter(&labels[1]), Some(SPREAD_NOT_MATCHED));
        assert_eq!(state.filter(&labels[2]), None);
        assert_eq!(state.filter(&labels[3]), Some(SPREAD_LABEL_MISSING));
        // One in each: either zone.
        let state = TopologySpread::new(&pod, &incoming, &refs, &labels, &placed(&[0, 2]))
            .expect("constraints");
        assert_eq!(state.filter(&labels[1]), None);
        // minDomains 3 with two zones: the minimum counts as 0, so one pod per zone at most.
        let mut c = constraint("DoNotSchedule");
        c["minDomains"] = json!(3);
        let pod = web(c);
        let state = TopologySpread::new(&pod, &incoming, &refs, &labels, &placed(&[0, 2]))
            .expect("constraints");
        assert_eq!(state.filter(&labels[1]), Some(SPREAD_NOT_MATCHED));
    }

    #[test]
    fn schedule_anyway_prefers_the_emptier_zone() {
        let (nodes, labels) = zoned(&["a", "b", ""]);
        let refs: Vec<&Value> = nodes.iter().collect();
        let pod = web(constraint("ScheduleAnyway"));
        let incoming = PlacedPod::of(&pod);
        let state = TopologySpread::new(&pod, &incoming, &refs, &labels, &placed(&[0, 0]))
            .expect("constraints");
        assert_eq!(state.filter(&labels[0]), None, "a preference only");
        let scores = state.scores(&labels.iter().collect::<Vec<_>>());
        assert!(scores[1] > scores[0], "{scores:?}");
        assert_eq!(scores[2], 0.0, "no zone label: ignored");
    }
}
