//! The ReplicaSet controller: keeps `spec.replicas` live pods matching the template. It runs
//! ReplicationControllers too (their selector is a plain label map; the rest is the same).
//!
//! One reconcile, after Kubernetes' syncReplicaSet:
//! 1. claim pods: own the ones whose controller reference names this ReplicaSet and that still
//!    match its selector; release owned pods that stopped matching; adopt matching orphans;
//! 2. if the cache shows every earlier create and delete (`Expectations`), create the missing
//!    pods (in doubling batches, so a failing create fails fast) or delete the surplus (the least
//!    useful first: unscheduled, then pending, then not ready, then the newest);
//! 3. write status (replicas, fullyLabeled, ready, available, observedGeneration) from the pods
//!    counted in 1, through the status subresource, when it changed.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::expectations::Expectations;
use super::informer::{Informer, Informers, split_key, uid_of};
use super::ownership::{
    adopt, controller_uid, enqueue_controller, enqueue_self, is_deleting, label, parse_selector,
    release, selects, string_map,
};
use super::queue::WorkQueue;
use super::templates;
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{DeleteOptions, Objects, Part, Scope, name_of};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

/// At most this many pods are created or deleted by one reconcile (Kubernetes' burstReplicas).
const BURST: usize = 500;
/// How long to wait for the cache before looking again when expectations are unmet.
const EXPECTATIONS_RECHECK: Duration = Duration::from_secs(5);

pub struct ReplicaSetController {
    objects: Objects,
    rs_kind: &'static dyn Kind,
    pod_kind: &'static dyn Kind,
    replicasets: Arc<Informer>,
    pods: Arc<Informer>,
    expectations: Expectations,
}

impl ReplicaSetController {
    /// The controller and its queue, with its handlers registered on the shared informers.
    pub fn new(
        objects: Objects,
        informers: &Informers,
        rs_kind: &'static dyn Kind,
        pod_kind: &'static dyn Kind,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let replicasets = informers.of(rs_kind);
        let pods = informers.of(pod_kind);
        replicasets.add_handler(enqueue_self(queue.clone()));
        let enqueue_owner = enqueue_controller(queue.clone(), replicasets.clone());
        pods.add_handler(Arc::new(move |old, new| {
            if concerns_replicaset(old, new) {
                enqueue_owner(old, new);
            }
        }));
        let controller = Arc::new(ReplicaSetController {
            objects,
            rs_kind,
            pod_kind,
            replicasets,
            pods,
            expectations: Expectations::default(),
        });
        (controller, queue)
    }

    /// The selector as a LabelSelector: a ReplicationController's map is its matchLabels.
    fn selector_of(&self, rs: &Value) -> Option<Value> {
        let selector = rs.at("/spec/selector")?;
        if self.rs_kind.info().kind == "ReplicationController" {
            return Some(json!({"matchLabels": selector}));
        }
        Some(selector.clone())
    }

    /// Step 1: the active pods this ReplicaSet owns after adopting and releasing. Only its
    /// own pods and the namespace's orphans can change hands (pods another controller owns are
    /// left alone), so those two index entries are read, not the whole namespace: a reconcile
    /// costs O(its pods) however many other pods the namespace holds.
    async fn claim_pods(&self, rs: &Value, namespace: &str) -> Result<Vec<Arc<Value>>, Error> {
        let rs_uid = uid_of(rs);
        let selector = self.selector_of(rs);
        let selector = parse_selector(selector.as_ref());
        let in_namespace = |pod: &Arc<Value>| {
            pod.at("/metadata/namespace").and_then(Value::as_str) == Some(namespace)
        };
        let mut candidates = self.pods.list_controlled_by(rs_uid);
        candidates.retain(in_namespace);
        candidates.extend(self.pods.list_orphans(namespace));
        let mut owned = Vec::new();
        for pod in candidates {
            let matches = selector.as_ref().is_some_and(|s| selects(s, &pod));
            match controller_uid(&pod) {
                Some(uid) if uid == rs_uid => {
                    if matches {
                        owned.push(pod);
                    } else if !is_deleting(rs) {
                        tracing::info!(
                            pod = name_of(&pod),
                            "releasing a pod that no longer matches"
                        );
                        release(
                            &self.objects,
                            self.pod_kind,
                            Some(namespace),
                            name_of(&pod),
                            rs_uid,
                        )
                        .await?;
                    }
                }
                Some(_) => {}
                None if matches && !is_deleting(&pod) && !is_deleting(rs) => {
                    let info = self.rs_kind.info();
                    if let Some(adopted) =
                        adopt(&self.objects, self.pod_kind, namespace, &pod, rs, info).await?
                    {
                        tracing::info!(pod = name_of(&pod), "adopted an orphan pod");
                        owned.push(Arc::new(adopted));
                    }
                }
                None => {}
            }
        }
        Ok(owned.into_iter().filter(|p| is_active(p)).collect())
    }

    /// Step 2: create or delete pods towards `want`.
    async fn manage(
        &self,
        key: &str,
        rs: &Value,
        namespace: &str,
        active: &[Arc<Value>],
        want: usize,
    ) -> Result<(), Error> {
        if active.len() < want {
            let missing = (want - active.len()).min(BURST);
            let pod = pod_from_template(rs, self.rs_kind.info())?;
            tracing::info!(missing, "creating pods");
            let scope = Scope::new(self.pod_kind, Some(namespace));
            let mut done = 0;
            let mut batch = 1;
            while done < missing {
                let size = batch.min(missing - done);
                let creates = (0..size).map(|_| self.objects.create(scope, pod.clone(), false));
                let results = futures::future::join_all(creates).await;
                let mut failure = None;
                for result in results {
                    match result {
                        Ok(created) => self
                            .expectations
                            .created(key, templates::written_revision(&created)),
                        Err(e) => failure = Some(e),
                    }
                }
                if let Some(e) = failure {
                    return Err(e.into());
                }
                done += size;
                batch *= 2;
            }
        } else if active.len() > want {
            let surplus = (active.len() - want).min(BURST);
            let victims = pods_to_delete(active, surplus);
            tracing::info!(surplus, "deleting pods");
            let scope = Scope::new(self.pod_kind, Some(namespace));
            for pod in victims {
                let options = DeleteOptions {
                    uid: Some(uid_of(&pod).to_string()),
                    ..DeleteOptions::default()
                };
                self.expectations.deleted(key, uid_of(&pod));
                match self.objects.delete(scope, name_of(&pod), &options).await {
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Step 3: status from the counted pods, written only when it changed.
    async fn update_status(
        &self,
        rs: &Value,
        namespace: &str,
        active: &[Arc<Value>],
    ) -> Result<(), Error> {
        let min_ready = rs
            .at("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let template_labels = string_map(rs.at("/spec/template/metadata/labels"));
        let now = jiff::Timestamp::now();
        let fully_labeled = active
            .iter()
            .filter(|p| {
                template_labels
                    .iter()
                    .all(|(k, v)| label(p, k) == Some(v.as_str()))
            })
            .count();
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let available = active
            .iter()
            .filter(|p| is_available(p, min_ready, now))
            .count();
        let mut status = rs.get("status").cloned().unwrap_or_else(|| json!({}));
        let Some(fields) = status.as_object_mut() else {
            return Ok(());
        };
        fields.insert("replicas".into(), json!(active.len()));
        for (field, count) in [
            ("fullyLabeledReplicas", fully_labeled),
            ("readyReplicas", ready),
            ("availableReplicas", available),
        ] {
            // Zero counts are omitted, as Kubernetes' omitempty does.
            if count == 0 {
                fields.remove(field);
            } else {
                fields.insert(field.into(), json!(count));
            }
        }
        if let Some(generation) = rs.at("/metadata/generation") {
            fields.insert("observedGeneration".into(), generation.clone());
        }
        if rs.get("status") == Some(&status) {
            return Ok(());
        }
        let change = |rs: &mut Value| rs["status"] = status.clone();
        let namespace = Some(namespace);
        modify(
            &self.objects,
            self.rs_kind,
            namespace,
            name_of(rs),
            Part::Status,
            change,
        )
        .await?;
        Ok(())
    }
}

impl Reconcile for ReplicaSetController {
    fn name(&self) -> &'static str {
        if self.rs_kind.info().kind == "ReplicationController" {
            "replicationcontroller"
        } else {
            "replicaset"
        }
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(rs) = self.replicasets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let (Some(namespace), _) = split_key(key) else {
            return Ok(Action::Done);
        };
        let satisfied = self
            .expectations
            .satisfied(key, self.pods.revision(), |uid| {
                self.pods.get_by_uid(uid).is_some_and(|p| !is_deleting(&p))
            });
        let active = self.claim_pods(&rs, namespace).await?;
        let want = rs.at("/spec/replicas").and_then(Value::as_u64).unwrap_or(1) as usize;
        if satisfied && !is_deleting(&rs) {
            self.manage(key, &rs, namespace, &active, want).await?;
        }
        self.update_status(&rs, namespace, &active).await?;
        if !satisfied {
            return Ok(Action::RequeueAfter(EXPECTATIONS_RECHECK));
        }
        // Pods become available minReadySeconds after turning ready: look again then.
        let min_ready = rs
            .at("/spec/minReadySeconds")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let now = jiff::Timestamp::now();
        let waiting = active
            .iter()
            .any(|p| is_ready(p) && !is_available(p, min_ready as i64, now));
        if waiting {
            return Ok(Action::RequeueAfter(Duration::from_secs(min_ready.max(1))));
        }
        Ok(Action::Done)
    }
}

/// Whether a pod change can matter to the ReplicaSet controlling (or able to adopt) it: what
/// the claim, the status counts and the expectations read (labels, owners, uid, deletion,
/// phase, conditions). A binding changes only spec.nodeName, and re-reading thousands of pods
/// for each of a thousand bindings a second would keep a core busy for nothing (Kubernetes'
/// endpoints controller filters pod updates the same way). Adds, deletes and resyncs (same
/// resourceVersion) always count.
pub fn concerns_replicaset(old: Option<&Value>, new: Option<&Value>) -> bool {
    let (Some(old), Some(new)) = (old, new) else {
        return true;
    };
    let unchanged = |p: &str| old.at(p) == new.at(p);
    if unchanged("/metadata/resourceVersion") {
        return true;
    }
    ![
        "/metadata/uid",
        "/metadata/labels",
        "/metadata/ownerReferences",
        "/metadata/deletionTimestamp",
        "/status/phase",
        "/status/conditions",
    ]
    .iter()
    .all(|p| unchanged(p))
}

/// A new pod for `rs`: the template's metadata and spec, named `<rs>-<random>`, controlled by it.
fn pod_from_template(rs: &Value, rs_info: &crate::registry::KindInfo) -> Result<Value, Error> {
    let template = rs.at("/spec/template").cloned().unwrap_or(Value::Null);
    let mut pod = templates::pod_from_template(rs, rs_info, &template)?;
    pod["metadata"]["generateName"] = json!(format!("{}-", name_of(rs)));
    Ok(pod)
}

fn phase(pod: &Value) -> &str {
    pod.at("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

/// Counted towards replicas: not being deleted and not finished.
pub fn is_active(pod: &Value) -> bool {
    !is_deleting(pod) && !matches!(phase(pod), "Succeeded" | "Failed")
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod.at("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

pub fn is_ready(pod: &Value) -> bool {
    ready_condition(pod)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

/// Ready for at least `min_ready` seconds (Kubernetes' IsPodAvailable: without a transition
/// time a pod only counts when no wait is asked for).
pub fn is_available(pod: &Value, min_ready: i64, now: jiff::Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    ready_condition(pod)
        .and_then(|c| c.get("lastTransitionTime"))
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|since| since + jiff::SignedDuration::from_secs(min_ready) < now)
}

/// The `count` pods to delete first, after Kubernetes' ActivePods ordering: unscheduled before
/// scheduled, Pending before Unknown before Running, not ready before ready, newest first.
pub fn pods_to_delete(pods: &[Arc<Value>], count: usize) -> Vec<Arc<Value>> {
    let mut ranked: Vec<&Arc<Value>> = pods.iter().collect();
    ranked.sort_by_key(|p| {
        let scheduled = p
            .at("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let phase_rank = match phase(p) {
            "Pending" => 0,
            "Unknown" => 1,
            "Running" => 2,
            _ => 3,
        };
        let created = p
            .at("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        (
            scheduled,
            phase_rank,
            is_ready(p),
            Reverse(created),
            Reverse(name_of(p).to_string()),
        )
    });
    ranked.into_iter().take(count).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Arc<Value> {
        let mut p = json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ]},
        });
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        Arc::new(p)
    }

    fn names(pods: &[Arc<Value>]) -> Vec<&str> {
        pods.iter().map(|p| name_of(p)).collect()
    }

    #[test]
    fn surplus_prefers_unscheduled_then_pending_then_not_ready_then_newest() {
        let pods = vec![
            pod(
                "old-ready",
                Some("n1"),
                "Running",
                true,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "new-ready",
                Some("n1"),
                "Running",
                true,
                "2026-01-02T00:00:00Z",
            ),
            pod(
                "not-ready",
                Some("n1"),
                "Running",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n1"),
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "unscheduled",
                None,
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
        ];
        assert_eq!(
            names(&pods_to_delete(&pods, 5)),
            [
                "unscheduled",
                "pending",
                "not-ready",
                "new-ready",
                "old-ready"
            ]
        );
        assert_eq!(names(&pods_to_delete(&pods, 1)), ["unscheduled"]);
    }

    #[test]
    fn bindings_do_not_concern_the_replicaset_but_readiness_does() {
        let pending = json!({"metadata": {"name": "p", "resourceVersion": "5",
            "labels": {"app": "web"}}, "spec": {}, "status": {"phase": "Pending"}});
        let mut bound = pending.clone();
        bound["spec"]["nodeName"] = json!("n1");
        bound["metadata"]["resourceVersion"] = json!("6");
        assert!(!concerns_replicaset(Some(&pending), Some(&bound)));
        assert!(
            concerns_replicaset(Some(&bound), Some(&bound)),
            "a resync counts"
        );
        assert!(concerns_replicaset(None, Some(&bound)));
        assert!(concerns_replicaset(Some(&bound), None));
        let mut ready = bound.clone();
        ready["metadata"]["resourceVersion"] = json!("7");
        ready["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        assert!(concerns_replicaset(Some(&bound), Some(&ready)));
        let mut relabeled = bound.clone();
        relabeled["metadata"]["resourceVersion"] = json!("8");
        relabeled["metadata"]["labels"]["app"] = json!("db");
        assert!(concerns_replicaset(Some(&bound), Some(&relabeled)));
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let mut p = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:30Z"}
        ]}});
        assert!(is_available(&p, 0, now));
        assert!(is_available(&p, 10, now));
        assert!(!is_available(&p, 60, now));
        p["status"]["conditions"][0]["status"] = json!("False");
        assert!(!is_available(&p, 0, now));
    }

    #[test]
    fn pods_from_templates_carry_labels_and_a_controller_reference() {
        let rs = json!({
            "metadata": {"name": "web-abc", "uid": "u1"},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}},
        });
        let info = crate::registry::lookup("apps", "v1", "deployments")
            .expect("deployments")
            .info();
        let p = pod_from_template(&rs, info).expect("pod");
        assert_eq!(p["metadata"]["generateName"], "web-abc-");
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
            true
        );
    }
}
