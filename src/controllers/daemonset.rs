//! The DaemonSet controller: one pod on every node the DaemonSet's pods may run on, after
//! Kubernetes' daemon controller.
//!
//! A node is eligible when the template's nodeSelector and required node affinity match it and
//! the pod (with the tolerations every daemon pod gets) tolerates its NoSchedule/NoExecute
//! taints. As in Kubernetes the pod is not bound here: it gets a required node affinity to its
//! node (`matchFields metadata.name`) and the scheduler binds it, so resources and readiness
//! are still checked.
//!
//! One reconcile:
//! 1. record the template as a ControllerRevision (`kubectl rollout history ds/x` lists them);
//! 2. per node: create the missing pod, delete duplicates and failed pods, delete pods on
//!    nodes no longer eligible or gone (creates wait until the cache shows earlier ones);
//! 3. RollingUpdate: delete old-revision pods, the not-ready ones at once and the others only
//!    while fewer than maxUnavailable (default 1, or a percentage of the desired count,
//!    rounded up) daemon pods are unavailable; step 2 recreates them at the new revision;
//! 4. write status: desired/current/misscheduled/ready/updated/available/unavailable.
//!
//! Not yet: maxSurge, minReadySeconds, OnDelete beyond "never replace".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::expectations::Expectations;
use super::fit::{matches_node_selection, untolerated_taint};
use super::informer::{Informer, Informers, object_key, uid_of};
use super::ownership::{controller_uid, enqueue_controller, enqueue_self, is_deleting, labels};
use super::queue::WorkQueue;
use super::recorder::{EventType, Recorder};
use super::replicaset::is_ready;
use super::templates::{
    REVISION_HASH_LABEL, Revisions, revision_hash, revision_pod, set_label, written_revision,
};
use super::workloads::{live, write_status};
use super::{Action, Error, Reconcile};
use crate::apiserver::objects::{Objects, Scope, name_of};
use crate::json_path::JsonPath;
use crate::registry::Kind;

const EXPECTATIONS_RECHECK: Duration = Duration::from_secs(5);

/// The kinds the DaemonSet controller reads and writes.
#[derive(Clone, Copy)]
pub struct Kinds {
    pub daemonsets: &'static dyn Kind,
    pub pods: &'static dyn Kind,
    pub nodes: &'static dyn Kind,
    pub revisions: &'static dyn Kind,
}

/// The tolerations Kubernetes adds to every daemon pod, so node conditions do not evict or
/// keep away what runs the node.
fn default_tolerations() -> Vec<Value> {
    let mut out: Vec<Value> = ["not-ready", "unreachable"]
        .iter()
        .map(|t| json!({"key": format!("node.kubernetes.io/{t}"), "operator": "Exists", "effect": "NoExecute"}))
        .collect();
    for t in [
        "disk-pressure",
        "memory-pressure",
        "pid-pressure",
        "unschedulable",
    ] {
        out.push(json!({"key": format!("node.kubernetes.io/{t}"), "operator": "Exists", "effect": "NoSchedule"}));
    }
    out
}

/// The daemon pod template with the default tolerations added.
pub fn daemon_template(ds: &Value) -> Value {
    let mut template = ds.at("/spec/template").cloned().unwrap_or(json!({}));
    if !template
        .at("/spec/tolerations")
        .is_some_and(Value::is_array)
    {
        template["spec"]["tolerations"] = json!([]);
    }
    if let Some(list) = template["spec"]["tolerations"].as_array_mut() {
        for t in default_tolerations() {
            if !list
                .iter()
                .any(|x| x.get("key") == t.get("key") && x.get("effect") == t.get("effect"))
            {
                list.push(t);
            }
        }
    }
    template
}

/// Whether the daemon pod (from `daemon_template`) should run on `node`: its node selection
/// matches and it tolerates the node's own taints.
pub fn should_run(template: &Value, node: &Value) -> bool {
    let taints = node
        .at("/spec/taints")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    matches_node_selection(template, node) && untolerated_taint(template, taints).is_none()
}

/// The node a daemon pod is for: its nodeName, or the node its required affinity names.
pub fn target_node(pod: &Value) -> Option<&str> {
    if let Some(node) = pod
        .at("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Some(node);
    }
    pod.at("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields")?
        .as_array()?
        .iter()
        .find(|f| f.get("key") == Some(&json!("metadata.name")))?
        .at("/values/0")?
        .as_str()
}

/// Pins a pod to `node` through required node affinity (replacing any required terms, as
/// Kubernetes' ReplaceDaemonSetPodNodeNameNodeAffinity does).
fn pin_to_node(pod: &mut Value, node: &str) {
    let terms =
        json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]);
    if !pod["spec"]["affinity"].is_object() {
        pod["spec"]["affinity"] = json!({});
    }
    if !pod["spec"]["affinity"]["nodeAffinity"].is_object() {
        pod["spec"]["affinity"]["nodeAffinity"] = json!({});
    }
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
        json!({"nodeSelectorTerms": terms});
}

/// maxUnavailable against `desired` pods: an integer, or a percentage rounded up; at least 1.
pub fn max_unavailable(ds: &Value, desired: usize) -> usize {
    let value = ds.at("/spec/updateStrategy/rollingUpdate/maxUnavailable");
    let n = match value {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(1) as usize,
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<usize>().ok()) {
            Some(percent) => (desired * percent).div_ceil(100),
            None => 1,
        },
        _ => 1,
    };
    n.max(1)
}

pub struct DaemonSetController {
    objects: Objects,
    kinds: Kinds,
    daemonsets: Arc<Informer>,
    pods: Arc<Informer>,
    nodes: Arc<Informer>,
    revisions: Arc<Informer>,
    expectations: Expectations,
    recorder: Recorder,
}

impl DaemonSetController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kinds: Kinds,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let daemonsets = informers.of(kinds.daemonsets);
        let pods = informers.of(kinds.pods);
        let nodes = informers.of(kinds.nodes);
        let revisions = informers.of(kinds.revisions);
        daemonsets.add_handler(enqueue_self(queue.clone()));
        pods.add_handler(enqueue_controller(queue.clone(), daemonsets.clone()));
        // Any node change may add or remove a daemon pod of every DaemonSet.
        let (q, all) = (queue.clone(), daemonsets.clone());
        nodes.add_handler(Arc::new(move |_, _| {
            for ds in all.list() {
                q.add(object_key(&ds));
            }
        }));
        let controller = Arc::new(DaemonSetController {
            recorder: Recorder::new(objects.clone(), "daemonset-controller"),
            objects,
            kinds,
            daemonsets,
            pods,
            nodes,
            revisions,
            expectations: Expectations::default(),
        });
        (controller, queue)
    }

    async fn delete_pod(&self, key: &str, ds: &Value, pod: &Value) -> Result<(), Error> {
        self.expectations.deleted(key, uid_of(pod));
        let message = format!("Deleted pod: {}", name_of(pod));
        self.recorder
            .delete_dependent(ds, self.kinds.pods, pod, None, &message)
            .await?;
        Ok(())
    }

    async fn create_pod(
        &self,
        key: &str,
        ds: &Value,
        namespace: &str,
        template: &Value,
        hash: &str,
        node: &str,
    ) -> Result<(), Error> {
        let mut pod = revision_pod(ds, self.kinds.daemonsets.info(), template, hash)?;
        pod["metadata"]["generateName"] = json!(format!("{}-", name_of(ds)));
        if let Some(generation) = ds.at("/metadata/generation").and_then(Value::as_i64) {
            set_label(&mut pod, "pod-template-generation", &generation.to_string());
        }
        pin_to_node(&mut pod, node);
        let scope = Scope::new(self.kinds.pods, Some(namespace));
        let created = self.objects.create(scope, pod, false).await?;
        self.expectations.created(key, written_revision(&created));
        let message = format!("Created pod: {}", name_of(&created));
        self.recorder
            .record(ds, EventType::Normal, "SuccessfulCreate", &message)
            .await;
        Ok(())
    }
}

/// What one reconcile saw, for the status.
#[derive(Default)]
struct Tally {
    desired: usize,
    current: usize,
    misscheduled: usize,
    ready: usize,
    updated: usize,
}

impl Reconcile for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some((ds, namespace)) = live(&self.daemonsets, key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let namespace = namespace.as_str();
        // Step 1.
        let revisions = Revisions {
            objects: &self.objects,
            kind: self.kinds.revisions,
            cache: &self.revisions,
        };
        let update = revisions
            .sync(&ds, self.kinds.daemonsets.info(), namespace, &[])
            .await?;
        let hash = revision_hash(&update).to_string();
        let template = daemon_template(&ds);

        let uid = uid_of(&ds);
        let mut by_node: BTreeMap<String, Vec<Arc<Value>>> = BTreeMap::new();
        for pod in self.pods.list_namespace(namespace) {
            if controller_uid(&pod) == Some(uid) && !is_deleting(&pod) {
                let node = target_node(&pod).unwrap_or("").to_string();
                by_node.entry(node).or_default().push(pod);
            }
        }
        let satisfied = self
            .expectations
            .satisfied(key, self.pods.revision(), |uid| {
                self.pods.get_by_uid(uid).is_some_and(|p| !is_deleting(&p))
            });
        // Step 2.
        let mut tally = Tally::default();
        let mut old = Vec::new();
        let mut unavailable = 0;
        let mut nodes = self.nodes.list();
        nodes.sort_by(|a, b| name_of(a).cmp(name_of(b)));
        for node in &nodes {
            let node_name = name_of(node);
            let mut pods = by_node.remove(node_name).unwrap_or_default();
            if !should_run(&template, node) {
                tally.misscheduled += usize::from(!pods.is_empty());
                for pod in &pods {
                    self.delete_pod(key, &ds, pod).await?;
                }
                continue;
            }
            tally.desired += 1;
            pods.sort_by(|a, b| {
                let created = |p: &Value| {
                    p.at("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                created(a)
                    .cmp(&created(b))
                    .then_with(|| name_of(a).cmp(name_of(b)))
            });
            let failed: Vec<Arc<Value>> = pods
                .iter()
                .filter(|p| p.at("/status/phase") == Some(&json!("Failed")))
                .cloned()
                .collect();
            for pod in failed
                .iter()
                .chain(pods.iter().skip(1).filter(|p| !failed.contains(p)))
            {
                self.delete_pod(key, &ds, pod).await?;
            }
            let kept = pods.into_iter().find(|p| !failed.contains(p));
            match kept {
                None => {
                    unavailable += 1;
                    if satisfied {
                        self.create_pod(key, &ds, namespace, &template, &hash, node_name)
                            .await?;
                    }
                }
                Some(pod) => {
                    tally.current += 1;
                    let ready = is_ready(&pod);
                    tally.ready += usize::from(ready);
                    unavailable += usize::from(!ready);
                    if labels(&pod).get(REVISION_HASH_LABEL) == Some(&hash) {
                        tally.updated += 1;
                    } else {
                        old.push((ready, pod));
                    }
                }
            }
        }
        // Pods on nodes that are gone.
        for pod in by_node.values().flatten() {
            self.delete_pod(key, &ds, pod).await?;
        }
        // Step 3.
        let rolling = ds
            .at("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        if rolling && satisfied {
            let mut budget = max_unavailable(&ds, tally.desired).saturating_sub(unavailable);
            old.sort_by_key(|(ready, _)| *ready);
            for (ready, pod) in old {
                if ready {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                }
                self.delete_pod(key, &ds, &pod).await?;
            }
        }
        // Step 4.
        let mut status = json!({
            "desiredNumberScheduled": tally.desired,
            "currentNumberScheduled": tally.current,
            "numberMisscheduled": tally.misscheduled,
            "numberReady": tally.ready,
            "updatedNumberScheduled": tally.updated,
            "numberAvailable": tally.ready,
            "numberUnavailable": tally.desired.saturating_sub(tally.ready),
        });
        if let Some(generation) = ds.at("/metadata/generation") {
            status["observedGeneration"] = generation.clone();
        }
        write_status(&self.objects, self.kinds.daemonsets, &ds, status).await?;
        Ok(if satisfied {
            Action::Done
        } else {
            Action::RequeueAfter(EXPECTATIONS_RECHECK)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    #[test]
    fn eligibility_follows_selectors_and_taints() {
        let ds = json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "edge"}}}}});
        let t = daemon_template(&ds);
        assert!(should_run(
            &t,
            &node("a", json!({"role": "edge"}), json!([]))
        ));
        assert!(!should_run(&t, &node("b", json!({}), json!([]))));
        let tainted = node(
            "c",
            json!({"role": "edge"}),
            json!([{"key": "gpu", "effect": "NoSchedule"}]),
        );
        assert!(!should_run(&t, &tainted));
        let cordoned = node(
            "d",
            json!({"role": "edge"}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        assert!(
            should_run(&t, &cordoned),
            "daemon pods tolerate cordoned nodes"
        );
    }

    #[test]
    fn pods_are_pinned_by_affinity() {
        let mut pod = json!({"spec": {"affinity": {"podAntiAffinity": {}}}});
        pin_to_node(&mut pod, "n1");
        assert_eq!(target_node(&pod), Some("n1"));
        assert!(pod["spec"]["affinity"]["podAntiAffinity"].is_object());
        pod["spec"]["nodeName"] = json!("n2");
        assert_eq!(target_node(&pod), Some("n2"));
    }

    #[test]
    fn max_unavailable_takes_numbers_and_percentages() {
        let ds = |v: Value| json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": v}}}});
        assert_eq!(max_unavailable(&json!({}), 10), 1);
        assert_eq!(max_unavailable(&ds(json!(3)), 10), 3);
        assert_eq!(max_unavailable(&ds(json!("25%")), 10), 3);
        assert_eq!(max_unavailable(&ds(json!("0%")), 10), 1);
    }
}
