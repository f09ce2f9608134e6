//! The disruption controller: keeps each PodDisruptionBudget's status, which the eviction
//! subresource (`apiserver::eviction`) spends, after kube-controller-manager's
//! DisruptionController.
//!
//! One reconcile of a budget:
//! 1. the pods of its namespace its selector covers (an empty selector: all of them);
//! 2. expectedPods and desiredHealthy: minAvailable as a count is desiredHealthy itself over
//!    the covered pods; a percentage, or maxUnavailable, is taken of the replicas their
//!    controllers ask for (a ReplicaSet's Deployment, a StatefulSet, a ReplicationController;
//!    pods without a controller are not counted), rounding up; a covered pod whose controller
//!    has no scale fails the sync (nothing allowed, condition reason SyncFailed);
//! 3. the disrupted pods: those an eviction recorded in `status.disruptedPods` that still
//!    exist, are not yet being deleted, and were recorded less than 2 minutes ago (after that
//!    the eviction is taken to have failed); the budget is looked at again when one expires;
//! 4. currentHealthy: covered pods that are Ready, not being deleted and not disrupted;
//!    disruptionsAllowed = currentHealthy - desiredHealthy, at least 0 (0 without expected
//!    pods); observedGeneration; the DisruptionAllowed condition.
//!
//! Steps 3-4 run on the stored budget inside a guarded write, so an eviction that spent a
//! disruption meanwhile is re-read, never overwritten by a stale count.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::informer::{Informer, Informers, split_key};
use super::ownership::{controller_ref, enqueue_selecting, enqueue_self, is_deleting, labels};
use super::queue::WorkQueue;
use super::replicaset::is_ready;
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{Objects, Part, name_of};
use crate::json_path::JsonPath;
use crate::registry::Kind;
use crate::registry::poddisruptionbudget::{selects, set_disruption_allowed};

/// How long an eviction's entry in disruptedPods keeps its pod out of the healthy count.
const DELETION_TIMEOUT: jiff::SignedDuration = jiff::SignedDuration::from_secs(120);
/// Retry delay after a failed sync (a controller not found may appear).
const SYNC_RETRY: Duration = Duration::from_secs(10);

pub struct Kinds {
    pub budgets: &'static dyn Kind,
    pub pods: &'static dyn Kind,
    /// The kinds whose replicas count as expected pods: ReplicaSet, Deployment, StatefulSet,
    /// ReplicationController (those this build serves).
    pub scaled: Vec<&'static dyn Kind>,
}

pub struct DisruptionController {
    objects: Objects,
    budgets_kind: &'static dyn Kind,
    budgets: Arc<Informer>,
    pods: Arc<Informer>,
    scaled: Vec<Arc<Informer>>,
}

/// A count, or `N%` of `total` rounded up.
fn scaled_value(value: Option<&Value>, total: i64) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let percent: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((percent * total + 99) / 100)
        }
        _ => None,
    }
}

/// Step 2: (expectedPods, desiredHealthy), or why they cannot be known.
fn expected_and_desired(
    pdb: &Value,
    pods: &[Arc<Value>],
    scale_of: impl Fn(&Value) -> Option<(String, i64)>,
) -> Result<(i64, i64), String> {
    let min_available = pdb.at("/spec/minAvailable");
    let max_unavailable = pdb.at("/spec/maxUnavailable");
    if let Some(Value::Number(n)) = min_available {
        return Ok((pods.len() as i64, n.as_i64().unwrap_or(0)));
    }
    if min_available.is_none() && max_unavailable.is_none() {
        return Ok((0, 0));
    }
    // The replicas the pods' controllers ask for, each controller once.
    let mut scales: HashMap<String, i64> = HashMap::new();
    for pod in pods.iter().filter(|p| controller_ref(p).is_some()) {
        let (uid, replicas) = scale_of(pod)
            .ok_or_else(|| format!("found no controllers for pod {:?}", name_of(pod)))?;
        scales.insert(uid, replicas);
    }
    let expected: i64 = scales.values().sum();
    let invalid = || "invalid budget value".to_string();
    match (min_available, max_unavailable) {
        (Some(min), _) => Ok((
            expected,
            scaled_value(Some(min), expected).ok_or_else(invalid)?,
        )),
        (None, max) => {
            let max = scaled_value(max, expected).ok_or_else(invalid)?;
            Ok((expected, (expected - max).max(0)))
        }
    }
}

/// Steps 3-4 on the stored budget: its new status.
fn budget_status(
    stored: &Value,
    pods: &[Arc<Value>],
    counts: Result<(i64, i64), &str>,
    now: jiff::Timestamp,
) -> Value {
    let mut status = stored.get("status").cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    status["observedGeneration"] = stored
        .at("/metadata/generation")
        .cloned()
        .unwrap_or(json!(0));
    let (expected, desired) = match counts {
        Ok(counts) => counts,
        Err(failure) => {
            status["disruptionsAllowed"] = json!(0);
            set_disruption_allowed(&mut status, Some(failure), &rfc3339(now));
            return status;
        }
    };
    let live: BTreeMap<&str, &Value> = pods
        .iter()
        .filter(|p| !is_deleting(p))
        .map(|p| (name_of(p), p.as_ref()))
        .collect();
    let disrupted: Map<String, Value> = status
        .get("disruptedPods")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(pod, at)| {
            live.contains_key(pod.as_str())
                && recorded_at(at).is_some_and(|t| t + DELETION_TIMEOUT > now)
        })
        .map(|(pod, at)| (pod.clone(), at.clone()))
        .collect();
    let healthy = live
        .iter()
        .filter(|(name, pod)| !disrupted.contains_key(**name) && is_ready(pod))
        .count() as i64;
    let allowed = if expected <= 0 {
        0
    } else {
        (healthy - desired).max(0)
    };
    status["currentHealthy"] = json!(healthy);
    status["desiredHealthy"] = json!(desired);
    status["expectedPods"] = json!(expected);
    status["disruptionsAllowed"] = json!(allowed);
    match status.as_object_mut() {
        Some(s) if disrupted.is_empty() => {
            s.remove("disruptedPods");
        }
        _ => status["disruptedPods"] = Value::Object(disrupted),
    }
    set_disruption_allowed(&mut status, None, &rfc3339(now));
    status
}

/// Seconds precision, as metav1.Time is written.
fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn recorded_at(at: &Value) -> Option<jiff::Timestamp> {
    at.as_str()?.parse().ok()
}

impl DisruptionController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kinds: Kinds,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let budgets = informers.of(kinds.budgets);
        budgets.add_handler(enqueue_self(queue.clone()));
        let pods = informers.of(kinds.pods);
        pods.add_handler(enqueue_selecting(queue.clone(), budgets.clone(), selects));
        let scaled = kinds.scaled.iter().map(|k| informers.of(*k)).collect();
        let controller = Arc::new(DisruptionController {
            objects,
            budgets_kind: kinds.budgets,
            budgets,
            pods,
            scaled,
        });
        (controller, queue)
    }

    /// The controller asking for `pod` (a ReplicaSet's Deployment in its place): its uid and
    /// spec.replicas.
    fn scale_of(&self, pod: &Value) -> Option<(String, i64)> {
        let uid = controller_ref(pod)?.get("uid").and_then(Value::as_str)?;
        let mut owner = self.scaled.iter().find_map(|i| i.get_by_uid(uid))?;
        if let Some(parent) = controller_ref(&owner)
            .and_then(|r| r.get("uid"))
            .and_then(Value::as_str)
            .and_then(|uid| self.scaled.iter().find_map(|i| i.get_by_uid(uid)))
        {
            owner = parent;
        }
        let replicas = owner
            .at("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let uid = owner.at("/metadata/uid").and_then(Value::as_str)?;
        Some((uid.to_string(), replicas))
    }
}

impl Reconcile for DisruptionController {
    fn name(&self) -> &'static str {
        "disruption"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(pdb) = self.budgets.get(key) else {
            return Ok(Action::Done);
        };
        let (Some(namespace), name) = split_key(key) else {
            return Ok(Action::Done);
        };
        if is_deleting(&pdb) {
            return Ok(Action::Done);
        }
        let pods: Vec<Arc<Value>> = self
            .pods
            .list_namespace(namespace)
            .into_iter()
            .filter(|p| selects(&pdb, &labels(p)))
            .collect();
        let counts = expected_and_desired(&pdb, &pods, |p| self.scale_of(p));
        if let Err(e) = &counts {
            tracing::warn!(budget = key, error = %e, "disruption budget cannot be computed");
        }
        let now = jiff::Timestamp::now();
        let change = |stored: &mut Value| {
            let counts = counts.as_ref().map(|c| *c).map_err(String::as_str);
            stored["status"] = budget_status(stored, &pods, counts, now);
        };
        let written = modify(
            &self.objects,
            self.budgets_kind,
            Some(namespace),
            name,
            Part::Status,
            change,
        )
        .await?;
        if counts.is_err() {
            return Ok(Action::RequeueAfter(SYNC_RETRY));
        }
        // Look again when the first recorded disruption expires.
        let expiry = written
            .as_ref()
            .and_then(|b| b.at("/status/disruptedPods"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(_, at)| recorded_at(at))
            .min()
            .map(|t| t + DELETION_TIMEOUT);
        Ok(
            match expiry.and_then(|t| Duration::try_from(t.duration_since(now)).ok()) {
                Some(wait) => Action::RequeueAfter(wait + Duration::from_secs(1)),
                None => Action::Done,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, owner: Option<&str>) -> Arc<Value> {
        let mut pod = json!({"metadata": {"name": name, "labels": {"app": "web"}},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if let Some(uid) = owner {
            pod["metadata"]["ownerReferences"] = json!([{"uid": uid, "controller": true}]);
        }
        Arc::new(pod)
    }

    fn budget(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "generation": 3}, "spec": spec})
    }

    #[test]
    fn min_available_counts_ready_pods() {
        let pods = vec![
            pod("a", true, None),
            pod("b", true, None),
            pod("c", false, None),
        ];
        let pdb = budget(json!({"minAvailable": 1}));
        let counts = expected_and_desired(&pdb, &pods, |_: &Value| None);
        assert_eq!(counts, Ok((3, 1)));
        let status = budget_status(&pdb, &pods, Ok((3, 1)), jiff::Timestamp::now());
        assert_eq!(status["currentHealthy"], 2);
        assert_eq!(status["disruptionsAllowed"], 1);
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["conditions"][0]["type"], "DisruptionAllowed");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["conditions"][0]["reason"], "SufficientPods");
    }

    #[test]
    fn percentages_and_max_unavailable_use_the_controllers_replicas() {
        let pods = vec![pod("a", true, Some("rs")), pod("b", true, Some("rs"))];
        let scale = |_: &Value| Some(("deploy".to_string(), 4));
        let half = budget(json!({"minAvailable": "50%"}));
        assert_eq!(expected_and_desired(&half, &pods, scale), Ok((4, 2)));
        let one = budget(json!({"maxUnavailable": "30%"}));
        assert_eq!(
            expected_and_desired(&one, &pods, scale),
            Ok((4, 2)),
            "30% of 4 rounds up to 2"
        );
        let missing =
            expected_and_desired(&one, &pods, |_: &Value| None).expect_err("no controller");
        let status = budget_status(&one, &pods, Err(missing.as_str()), jiff::Timestamp::now());
        assert_eq!(status["disruptionsAllowed"], 0);
        assert_eq!(status["conditions"][0]["reason"], "SyncFailed");
    }

    #[test]
    fn disrupted_pods_are_not_healthy_until_they_expire_or_go() {
        let pods = vec![pod("a", true, None), pod("b", true, None)];
        let now = jiff::Timestamp::now();
        let mut pdb = budget(json!({"minAvailable": 1}));
        pdb["status"] = json!({"disruptedPods": {
            "a": now.to_string(),
            "gone": now.to_string(),
            "b": (now - jiff::SignedDuration::from_secs(300)).to_string()}});
        let status = budget_status(&pdb, &pods, Ok((2, 1)), now);
        assert_eq!(status["currentHealthy"], 1);
        assert_eq!(status["disruptionsAllowed"], 0);
        assert_eq!(status["conditions"][0]["reason"], "InsufficientPods");
        let kept: Vec<&String> = status["disruptedPods"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(kept, ["a"]);
    }
}
