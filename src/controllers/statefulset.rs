//! The StatefulSet controller: pods with stable names `<name>-<ordinal>`, stable hostnames
//! (`hostname` = pod name, `subdomain` = serviceName) and stable storage (a PVC
//! `<claim>-<name>-<ordinal>` per volumeClaimTemplate, never deleted with the pod), after
//! Kubernetes' StatefulSet controller.
//!
//! One reconcile:
//! 1. record the template as a ControllerRevision (the update revision; the current revision
//!    is the one every pod ran before the template changed);
//! 2. bring up ordinals 0..replicas in order: a missing pod gets its claims, then is created at
//!    the current revision below the partition and the update revision from it on. With
//!    OrderedReady (the default) nothing further happens until that pod is Running and Ready,
//!    and a finished pod is deleted to be recreated; Parallel does all at once;
//! 3. remove ordinals >= replicas from the highest down, one at a time with OrderedReady (only
//!    once the lower ones are healthy);
//! 4. RollingUpdate: once all pods are healthy, delete the highest-ordinal pod at or above the
//!    partition still at an old revision; step 2 of a later reconcile recreates it;
//! 5. write status: replicas, ready/available/current/updated counts, the revisions.
//!
//! Pod names are fixed, so a create or delete the cache has not shown yet is repeated
//! harmlessly (AlreadyExists / NotFound) instead of being tracked with expectations.
//! Not yet: minReadySeconds, persistentVolumeClaimRetentionPolicy, maxUnavailable, OnDelete
//! (treated as "never replace"), start ordinals.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::informer::{Informer, Informers};
use super::ownership::{enqueue_controller, enqueue_self, is_deleting, labels};
use super::queue::WorkQueue;
use super::recorder::{EventType, Recorder};
use super::replicaset::is_ready;
use super::templates::{
    REVISION_HASH_LABEL, Revisions, revision_hash, revision_pod, revision_template, set_label,
};
use super::workloads::{controlled_by, live, write_status};
use super::{Action, Error, Reconcile};
use crate::apiserver::objects::{Objects, Scope, name_of};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The kinds the StatefulSet controller reads and writes.
#[derive(Clone, Copy)]
pub struct Kinds {
    pub statefulsets: &'static dyn Kind,
    pub pods: &'static dyn Kind,
    pub revisions: &'static dyn Kind,
    pub claims: &'static dyn Kind,
}

/// The ordinal of a pod of the set `set`, from its name.
pub fn ordinal(set: &str, pod: &str) -> Option<usize> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.starts_with('0') && rest.len() > 1 {
        return None;
    }
    rest.parse().ok()
}

pub fn claim_name(claim: &str, set: &str, ordinal: usize) -> String {
    format!("{claim}-{set}-{ordinal}")
}

fn phase(pod: &Value) -> &str {
    pod.at("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

/// Running and Ready, and not on its way out.
pub fn is_healthy(pod: &Value) -> bool {
    phase(pod) == "Running" && is_ready(pod) && !is_deleting(pod)
}

/// The pod for `ordinal` from `template` at revision `hash`.
pub fn stateful_pod(
    set: &Value,
    info: &crate::registry::KindInfo,
    template: &Value,
    hash: &str,
    ordinal: usize,
) -> Result<Value, Error> {
    let set_name = name_of(set);
    let name = format!("{set_name}-{ordinal}");
    let mut pod = revision_pod(set, info, template, hash)?;
    pod["metadata"]["name"] = json!(name);
    set_label(&mut pod, POD_NAME_LABEL, &name);
    set_label(&mut pod, POD_INDEX_LABEL, &ordinal.to_string());
    pod["spec"]["hostname"] = json!(name);
    if let Some(service) = set
        .at("/spec/serviceName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        pod["spec"]["subdomain"] = json!(service);
    }
    for claim in claim_templates(set) {
        let claim_template = name_of(claim);
        let volume = json!({"name": claim_template,
            "persistentVolumeClaim": {"claimName": claim_name(claim_template, set_name, ordinal)}});
        if !pod["spec"]["volumes"].is_array() {
            pod["spec"]["volumes"] = json!([]);
        }
        if let Some(volumes) = pod["spec"]["volumes"].as_array_mut() {
            volumes.retain(|v| v.get("name") != Some(&json!(claim_template)));
            volumes.push(volume);
        }
    }
    Ok(pod)
}

fn claim_templates(set: &Value) -> &[Value] {
    set.at("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub struct StatefulSetController {
    objects: Objects,
    kinds: Kinds,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
    revisions: Arc<Informer>,
    recorder: Recorder,
}

/// What step 2 and 3 leave to do.
enum Progress {
    /// Waiting for a pod to come up, go away, or turn ready.
    Waiting,
    /// Every wanted pod exists and is healthy.
    Settled,
}

impl StatefulSetController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kinds: Kinds,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let sets = informers.of(kinds.statefulsets);
        let pods = informers.of(kinds.pods);
        let revisions = informers.of(kinds.revisions);
        sets.add_handler(enqueue_self(queue.clone()));
        pods.add_handler(enqueue_controller(queue.clone(), sets.clone()));
        let controller = Arc::new(StatefulSetController {
            recorder: Recorder::new(objects.clone(), "statefulset-controller"),
            objects,
            kinds,
            sets,
            pods,
            revisions,
        });
        (controller, queue)
    }

    async fn create_claims(
        &self,
        set: &Value,
        namespace: &str,
        ordinal: usize,
    ) -> Result<(), Error> {
        let selector_labels = set
            .at("/spec/selector/matchLabels")
            .cloned()
            .unwrap_or(json!({}));
        let scope = Scope::new(self.kinds.claims, Some(namespace));
        for template in claim_templates(set) {
            let name = claim_name(name_of(template), name_of(set), ordinal);
            let mut claim_labels = template
                .at("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            if let (Some(l), Some(s)) = (claim_labels.as_object_mut(), selector_labels.as_object())
            {
                l.extend(s.clone());
            }
            let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "labels": claim_labels},
                "spec": template.get("spec").cloned().unwrap_or(json!({}))});
            match self.objects.create(scope, claim, false).await {
                Ok(_) => {
                    let message = format!(
                        "create Claim {name} Pod {}-{ordinal} in StatefulSet {} success",
                        name_of(set),
                        name_of(set)
                    );
                    self.recorder
                        .record(set, EventType::Normal, "SuccessfulCreate", &message)
                        .await;
                }
                Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn create_pod(&self, set: &Value, namespace: &str, pod: Value) -> Result<(), Error> {
        let scope = Scope::new(self.kinds.pods, Some(namespace));
        let name = name_of(&pod).to_string();
        match self.objects.create(scope, pod, false).await {
            Ok(_) => {
                let message = format!(
                    "create Pod {name} in StatefulSet {} successful",
                    name_of(set)
                );
                self.recorder
                    .record(set, EventType::Normal, "SuccessfulCreate", &message)
                    .await;
                Ok(())
            }
            Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_pod(&self, set: &Value, pod: &Value) -> Result<(), Error> {
        let message = format!(
            "delete Pod {} in StatefulSet {} successful",
            name_of(pod),
            name_of(set)
        );
        self.recorder
            .delete_dependent(set, self.kinds.pods, pod, None, &message)
            .await?;
        Ok(())
    }

    /// Steps 2 and 3.
    async fn scale(
        &self,
        set: &Value,
        namespace: &str,
        pods: &BTreeMap<usize, Arc<Value>>,
        templates: [(&Value, &str); 2],
        partition: usize,
    ) -> Result<Progress, Error> {
        let info = self.kinds.statefulsets.info();
        let replicas = set
            .at("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize;
        let parallel = set.at("/spec/podManagementPolicy") == Some(&json!("Parallel"));
        let [(current, current_hash), (update, update_hash)] = templates;
        let mut waiting = false;
        for i in 0..replicas {
            match pods.get(&i) {
                None => {
                    self.create_claims(set, namespace, i).await?;
                    let (template, hash) = if i < partition {
                        (current, current_hash)
                    } else {
                        (update, update_hash)
                    };
                    self.create_pod(set, namespace, stateful_pod(set, info, template, hash, i)?)
                        .await?;
                    waiting = true;
                }
                Some(pod) if matches!(phase(pod), "Succeeded" | "Failed") && !is_deleting(pod) => {
                    // Recreated by a later reconcile, with the same name and claims.
                    self.delete_pod(set, pod).await?;
                    waiting = true;
                }
                Some(pod) if !is_healthy(pod) => waiting = true,
                Some(_) => continue,
            }
            if !parallel {
                return Ok(Progress::Waiting);
            }
        }
        let condemned: Vec<&Arc<Value>> = pods.range(replicas..).rev().map(|(_, p)| p).collect();
        if !condemned.is_empty() {
            for pod in condemned {
                if !is_deleting(pod) {
                    self.delete_pod(set, pod).await?;
                }
                if !parallel {
                    break;
                }
            }
            return Ok(Progress::Waiting);
        }
        Ok(if waiting {
            Progress::Waiting
        } else {
            Progress::Settled
        })
    }

    async fn update_status(
        &self,
        set: &Value,
        pods: &BTreeMap<usize, Arc<Value>>,
        revisions: [&str; 2],
        hashes: [&str; 2],
    ) -> Result<(), Error> {
        let replicas = set
            .at("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let live: Vec<&Arc<Value>> = pods.values().filter(|p| !is_deleting(p)).collect();
        let with_hash = |h: &str| {
            live.iter()
                .filter(|p| labels(p).get(REVISION_HASH_LABEL).map(String::as_str) == Some(h))
                .count() as i64
        };
        let ready = live.iter().filter(|p| is_ready(p)).count() as i64;
        let updated = with_hash(hashes[1]);
        let rolled = updated == replicas && ready == replicas;
        let current_revision = if rolled { revisions[1] } else { revisions[0] };
        let current = if rolled {
            updated
        } else {
            with_hash(hashes[0])
        };
        let mut status = json!({
            "replicas": live.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": revisions[1],
            "collisionCount": 0,
        });
        if let Some(generation) = set.at("/metadata/generation") {
            status["observedGeneration"] = generation.clone();
        }
        write_status(&self.objects, self.kinds.statefulsets, set, status).await?;
        Ok(())
    }
}

impl Reconcile for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some((set, namespace)) = live(&self.sets, key) else {
            return Ok(Action::Done);
        };
        let (namespace, name) = (namespace.as_str(), name_of(&set));
        // Step 1.
        let revisions = Revisions {
            objects: &self.objects,
            kind: self.kinds.revisions,
            cache: &self.revisions,
        };
        let current_name = set
            .at("/status/currentRevision")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let info = self.kinds.statefulsets.info();
        let update = revisions
            .sync(&set, info, namespace, &[current_name.as_str()])
            .await?;
        let owned = revisions.owned(&set, namespace);
        let current = owned
            .iter()
            .find(|r| name_of(r) == current_name)
            .map(|r| (**r).clone())
            .unwrap_or_else(|| update.clone());
        let template_of = |r: &Value| {
            revision_template(r)
                .or_else(|| set.at("/spec/template").cloned())
                .unwrap_or(json!({}))
        };
        let (current_template, update_template) = (template_of(&current), template_of(&update));
        let (current_hash, update_hash) = (
            revision_hash(&current).to_string(),
            revision_hash(&update).to_string(),
        );

        let pods: BTreeMap<usize, Arc<Value>> = controlled_by(&self.pods, &set)
            .into_iter()
            .filter_map(|p| Some((ordinal(name, name_of(&p))?, p)))
            .collect();
        let rolling = set
            .at("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        let partition = if rolling {
            set.at("/spec/updateStrategy/rollingUpdate/partition")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize
        } else {
            usize::MAX
        };
        let templates = [
            (&current_template, current_hash.as_str()),
            (&update_template, update_hash.as_str()),
        ];
        let progress = self
            .scale(&set, namespace, &pods, templates, partition)
            .await?;
        // Step 4: one pod at a time, highest ordinal first, only when all are healthy.
        if let (Progress::Settled, true) = (&progress, rolling) {
            let stale = pods.range(partition..).rev().map(|(_, p)| p).find(|p| {
                labels(p).get(REVISION_HASH_LABEL).map(String::as_str) != Some(update_hash.as_str())
            });
            if let Some(pod) = stale {
                tracing::info!(pod = name_of(pod), "replacing a pod at an old revision");
                self.delete_pod(&set, pod).await?;
            }
        }
        let names = [name_of(&current), name_of(&update)];
        self.update_status(
            &set,
            &pods,
            names,
            [current_hash.as_str(), update_hash.as_str()],
        )
        .await?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_names() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(claim_name("www", "web", 2), "www-web-2");
    }

    #[test]
    fn pods_get_stable_identity_and_claims() {
        let info = crate::registry::lookup("apps", "v1", "statefulsets")
            .expect("kind")
            .info();
        let set = json!({"metadata": {"name": "web", "uid": "u1"},
            "spec": {"serviceName": "nginx",
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"}}]}});
        let pod = stateful_pod(&set, info, &set["spec"]["template"], "h1", 1).expect("pod");
        assert_eq!(pod["metadata"]["name"], "web-1");
        assert_eq!(pod["metadata"]["labels"][POD_NAME_LABEL], "web-1");
        assert_eq!(pod["metadata"]["labels"][REVISION_HASH_LABEL], "h1");
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["spec"]["hostname"], "web-1");
        assert_eq!(pod["spec"]["subdomain"], "nginx");
        assert_eq!(
            pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "www-web-1"
        );
    }

    #[test]
    fn health_needs_running_and_ready() {
        let pod = |phase: &str, ready: &str| {
            json!({"status": {"phase": phase,
            "conditions": [{"type": "Ready", "status": ready}]}})
        };
        assert!(is_healthy(&pod("Running", "True")));
        assert!(!is_healthy(&pod("Pending", "True")));
        assert!(!is_healthy(&pod("Running", "False")));
    }
}
