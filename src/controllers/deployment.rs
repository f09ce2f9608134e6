//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets.
//!
//! One reconcile, after Kubernetes' syncDeployment:
//! 1. claim ReplicaSets (controller reference, adopt matching orphans, release non-matching);
//! 2. split them into the new one (template equal but for pod-template-hash) and the old ones,
//!    and give the new one the next revision (`rollout undo` makes an old template new again,
//!    so it is renumbered and keeps its earlier numbers in revision-history);
//! 3. paused: only scale, no rollout; Recreate: old to zero, wait for their pods to go, then
//!    the new one at full size; RollingUpdate: grow the new one within maxSurge, shrink old ones
//!    within maxUnavailable (`rollout` module), one step per reconcile, the ReplicaSet events
//!    driving the next;
//! 4. once complete, delete scaled-down old ReplicaSets beyond revisionHistoryLimit;
//! 5. status: counts summed over the ReplicaSets, Available and Progressing conditions
//!    (NewReplicaSetAvailable when done, ProgressDeadlineExceeded when stuck).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::deployment_status::{Step, is_complete, next_status};
use super::informer::{Informer, Informers, split_key, uid_of};
use super::ownership::{
    adopt, controller_name, controller_reference, controller_uid, enqueue_controller, enqueue_self,
    is_deleting, labels, release, selector_matches,
};
use super::queue::WorkQueue;
use super::replicaset::is_active;
use super::rollout::{
    Counts, Share, TEMPLATE_HASH_LABEL, counts_of, desired_replicas, equal_ignoring_hash,
    max_unavailable, new_rs_replicas, proportional_sizes, replicas_of, rolling_fenceposts,
    scale_down_old, template_hash,
};
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{DeleteOptions, Objects, Part, Scope, name_of};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Deployment annotations never copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

pub struct DeploymentController {
    objects: Objects,
    deploy_kind: &'static dyn Kind,
    rs_kind: &'static dyn Kind,
    deployments: Arc<Informer>,
    replicasets: Arc<Informer>,
    pods: Arc<Informer>,
}

impl DeploymentController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        deploy_kind: &'static dyn Kind,
        rs_kind: &'static dyn Kind,
        pod_kind: &'static dyn Kind,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let deployments = informers.of(deploy_kind);
        let replicasets = informers.of(rs_kind);
        let pods = informers.of(pod_kind);
        deployments.add_handler(enqueue_self(queue.clone()));
        replicasets.add_handler(enqueue_controller(queue.clone(), deployments.clone()));
        // A Recreate rollout waits for the old pods to be gone: their deletion is news.
        let q = queue.clone();
        let (rs_cache, owners) = (replicasets.clone(), deployments.clone());
        pods.add_handler(Arc::new(move |old, new| {
            let (Some(pod), None) = (old, new) else {
                return;
            };
            let namespace = namespace_of(pod);
            if let Some(rs_name) = controller_name(pod, rs_cache.info())
                && let Some(rs) = rs_cache.get(&format!("{namespace}/{rs_name}"))
                && let Some(d_name) = controller_name(&rs, owners.info())
            {
                q.add(format!("{namespace}/{d_name}"));
            }
        }));
        let controller = Arc::new(DeploymentController {
            objects,
            deploy_kind,
            rs_kind,
            deployments,
            replicasets,
            pods,
        });
        (controller, queue)
    }

    /// Changes the Deployment `d` as stored now (see `modify`).
    async fn modify_deployment(
        &self,
        d: &Value,
        part: Part,
        change: impl Fn(&mut Value) + Send + Sync,
    ) -> Result<Option<Value>, Error> {
        let namespace = Some(namespace_of(d));
        modify(
            &self.objects,
            self.deploy_kind,
            namespace,
            name_of(d),
            part,
            change,
        )
        .await
    }

    /// Changes the ReplicaSet `rs` as stored now (see `modify`).
    async fn modify_replicaset(
        &self,
        rs: &Value,
        change: impl Fn(&mut Value) + Send + Sync,
    ) -> Result<Option<Value>, Error> {
        let namespace = Some(namespace_of(rs));
        modify(
            &self.objects,
            self.rs_kind,
            namespace,
            name_of(rs),
            Part::Main,
            change,
        )
        .await
    }

    /// Step 1: the ReplicaSets this Deployment controls.
    async fn claim_replicasets(&self, d: &Value, namespace: &str) -> Result<Vec<Value>, Error> {
        let d_uid = uid_of(d);
        let selector = d.at("/spec/selector");
        let mut owned = Vec::new();
        for rs in self.replicasets.list_namespace(namespace) {
            let matches = selector_matches(selector, &labels(&rs));
            match controller_uid(&rs) {
                Some(uid) if uid == d_uid => {
                    if matches {
                        owned.push((*rs).clone());
                    } else {
                        release(
                            &self.objects,
                            self.rs_kind,
                            Some(namespace),
                            name_of(&rs),
                            d_uid,
                        )
                        .await?;
                    }
                }
                None if matches && !is_deleting(&rs) => {
                    let info = self.deploy_kind.info();
                    if let Some(adopted) =
                        adopt(&self.objects, self.rs_kind, namespace, &rs, d, info).await?
                    {
                        owned.push(adopted);
                    }
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    /// Step 2 for an existing new ReplicaSet: the next revision, the Deployment's annotations
    /// and minReadySeconds; then the Deployment's own revision annotation.
    async fn sync_revision(&self, d: &Value, new: Value, old: &[Value]) -> Result<Value, Error> {
        let next_revision = old.iter().map(revision).max().unwrap_or(0) + 1;
        let mut updated = new.clone();
        let new = if sync_new_rs(d, &mut updated, next_revision) {
            let change = |rs: &mut Value| {
                sync_new_rs(d, rs, next_revision);
            };
            self.modify_replicaset(&new, change).await?.unwrap_or(new)
        } else {
            new
        };
        self.set_deployment_revision(d, revision(&new)).await?;
        Ok(new)
    }

    async fn set_deployment_revision(&self, d: &Value, revision: i64) -> Result<(), Error> {
        let text = revision.to_string();
        if annotation(d, REVISION) == Some(text.as_str()) {
            return Ok(());
        }
        let change = |d: &mut Value| set_annotation(d, REVISION, &text);
        self.modify_deployment(d, Part::Main, change).await?;
        Ok(())
    }

    /// Step 2 without a new ReplicaSet: creates `<deployment>-<hash>` with `replicas`.
    async fn create_new_rs(&self, d: &Value, old: &[Value], replicas: i64) -> Result<Value, Error> {
        let namespace = namespace_of(d);
        let collisions = d.at("/status/collisionCount").and_then(Value::as_i64);
        let mut template = d.at("/spec/template").cloned().unwrap_or_else(|| json!({}));
        let hash = template_hash(&template, collisions);
        template["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!(hash);
        let mut selector = d.at("/spec/selector").cloned().unwrap_or_else(|| json!({}));
        selector["matchLabels"][TEMPLATE_HASH_LABEL] = json!(hash);
        let name = format!("{}-{hash}", name_of(d));
        let mut rs = json!({
            "apiVersion": self.rs_kind.info().api_version(),
            "kind": self.rs_kind.info().kind,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": template["metadata"]["labels"].clone(),
                "ownerReferences": [controller_reference(d, self.deploy_kind.info())],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": d.at("/spec/minReadySeconds").cloned().unwrap_or(json!(0)),
                "selector": selector,
                "template": template,
            },
        });
        let next_revision = old.iter().map(revision).max().unwrap_or(0) + 1;
        set_new_rs_annotations(d, &mut rs, next_revision);
        set_replicas_annotations(d, &mut rs);
        let scope = Scope::new(self.rs_kind, Some(namespace));
        let created = match self.objects.create(scope, rs, false).await {
            Ok(created) => {
                tracing::info!(replicaset = name, replicas, "created a new replica set");
                created
            }
            Err(ApiError::AlreadyExists { .. }) => {
                // Ours, but not in the cache yet; or a hash collision with someone else's.
                let existing = self.objects.get(scope, &name, true).await?;
                let template = d.at("/spec/template").unwrap_or(&Value::Null);
                let same = existing
                    .at("/spec/template")
                    .is_some_and(|t| equal_ignoring_hash(t, template));
                if controller_uid(&existing) == Some(uid_of(d)) && same {
                    existing
                } else {
                    self.bump_collision_count(d).await?;
                    return Err(ApiError::AlreadyExists {
                        resource: self.rs_kind.info().qualified_resource(),
                        name,
                    }
                    .into());
                }
            }
            Err(e) => return Err(e.into()),
        };
        self.set_deployment_revision(d, revision(&created)).await?;
        Ok(created)
    }

    /// A hash collision: the next template hash is computed with a higher collisionCount.
    async fn bump_collision_count(&self, d: &Value) -> Result<(), Error> {
        let change = |d: &mut Value| {
            let count = d
                .at("/status/collisionCount")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            d["status"]["collisionCount"] = json!(count + 1);
        };
        self.modify_deployment(d, Part::Status, change).await?;
        Ok(())
    }

    /// Sets a ReplicaSet's size (and the replica annotations), if it differs.
    async fn scale(&self, d: &Value, rs: &Value, replicas: i64) -> Result<(), Error> {
        let mut annotated = rs.clone();
        set_replicas_annotations(d, &mut annotated);
        // The annotations record the size this set was scaled for: a resize shows as a
        // mismatch (`is_scaling_event`) until every active set carries the new one.
        if replicas_of(rs) == replicas && annotated == *rs {
            return Ok(());
        }
        tracing::info!(
            replicaset = name_of(rs),
            from = replicas_of(rs),
            to = replicas,
            "scaling replica set"
        );
        let change = |rs: &mut Value| {
            rs["spec"]["replicas"] = json!(replicas);
            set_replicas_annotations(d, rs);
        };
        self.modify_replicaset(rs, change).await?;
        Ok(())
    }

    /// Step 3, RollingUpdate: one move (grow the new set, or shrink old ones) per reconcile.
    async fn rolling(
        &self,
        d: &Value,
        new: Option<Value>,
        old: &[Value],
    ) -> Result<(Option<Value>, Step), Error> {
        let desired = desired_replicas(d);
        let (surge, _) = rolling_fenceposts(d);
        let old_total: i64 = old.iter().map(replicas_of).sum();
        let (new, step) = match new {
            Some(rs) => (self.sync_revision(d, rs, old).await?, Step::Nothing),
            None => {
                let initial = new_rs_replicas(desired, surge, old_total, 0);
                let rs = self.create_new_rs(d, old, initial).await?;
                return Ok((Some(rs), Step::CreatedNewReplicaSet));
            }
        };
        let current = replicas_of(&new);
        let target = if current > desired {
            desired
        } else {
            new_rs_replicas(desired, surge, old_total + current, current)
        };
        if target != current {
            self.scale(d, &new, target).await?;
            return Ok((Some(new), step));
        }
        let mut sorted: Vec<&Value> = old.iter().collect();
        sorted.sort_by_key(|rs| (created_at(rs), name_of(rs).to_string()));
        let counts: Vec<Counts> = sorted.iter().map(|rs| counts_of(rs)).collect();
        let plan = scale_down_old(&counts, counts_of(&new), desired, max_unavailable(d));
        for (i, size) in plan {
            self.scale(d, sorted[i], size).await?;
        }
        Ok((Some(new), step))
    }

    /// Step 3, Recreate: old sets to zero, their pods gone, then the new set at full size.
    async fn recreate(
        &self,
        d: &Value,
        new: Option<Value>,
        old: &[Value],
    ) -> Result<(Option<Value>, Step), Error> {
        let mut scaled_down = false;
        for rs in old.iter().filter(|rs| replicas_of(rs) > 0) {
            self.scale(d, rs, 0).await?;
            scaled_down = true;
        }
        let old_uids: Vec<&str> = old.iter().map(uid_of).collect();
        let old_pods_running =
            self.pods.list_namespace(namespace_of(d)).iter().any(|p| {
                is_active(p) && controller_uid(p).is_some_and(|uid| old_uids.contains(&uid))
            });
        if scaled_down || old_pods_running {
            let new = match new {
                Some(rs) => Some(self.sync_revision(d, rs, old).await?),
                None => None,
            };
            return Ok((new, Step::Nothing));
        }
        let desired = desired_replicas(d);
        match new {
            Some(rs) => {
                let rs = self.sync_revision(d, rs, old).await?;
                self.scale(d, &rs, desired).await?;
                Ok((Some(rs), Step::Nothing))
            }
            None => {
                let rs = self.create_new_rs(d, old, desired).await?;
                Ok((Some(rs), Step::CreatedNewReplicaSet))
            }
        }
    }

    /// Step 3 without a rollout (paused, or resized mid-rollout), after Kubernetes' `scale`:
    /// a lone active set (or, with none, the newest) takes spec.replicas; a saturated new set
    /// leaves the old ones nothing; otherwise every active set changes in proportion.
    async fn scale_only(
        &self,
        d: &Value,
        new: Option<Value>,
        old: &[Value],
    ) -> Result<Option<Value>, Error> {
        let new = match new {
            Some(rs) => Some(self.sync_revision(d, rs, old).await?),
            None => None,
        };
        let desired = desired_replicas(d);
        let active: Vec<&Value> = new
            .iter()
            .chain(old.iter())
            .filter(|rs| replicas_of(rs) > 0)
            .collect();
        if active.len() <= 1 {
            let newest_old = old.iter().max_by_key(|rs| created_at(rs));
            if let Some(rs) = active.first().copied().or(new.as_ref()).or(newest_old) {
                self.scale(d, rs, desired).await?;
            }
            return Ok(new);
        }
        if let Some(rs) = &new
            && replicas_of(rs) == desired
            && annotation(rs, DESIRED_REPLICAS) == Some(desired.to_string().as_str())
            && counts_of(rs).available == desired
        {
            for old_rs in old.iter().filter(|rs| replicas_of(rs) > 0) {
                self.scale(d, old_rs, 0).await?;
            }
            return Ok(new);
        }
        if is_recreate(d) {
            return Ok(new);
        }
        let shares: Vec<Share> = active
            .iter()
            .map(|rs| Share {
                replicas: replicas_of(rs),
                max_replicas: annotation(rs, MAX_REPLICAS).and_then(|v| v.parse().ok()),
                created: created_at(rs),
            })
            .collect();
        let status_replicas = d
            .at("/status/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let (surge, _) = rolling_fenceposts(d);
        let sizes = proportional_sizes(&shares, desired, surge, status_replicas);
        for (rs, size) in active.iter().zip(sizes) {
            self.scale(d, rs, size).await?;
        }
        Ok(new)
    }

    /// Step 4: deletes the oldest scaled-down ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&self, d: &Value, old: &[Value]) -> Result<(), Error> {
        let Some(limit) = d.at("/spec/revisionHistoryLimit").and_then(Value::as_i64) else {
            return Ok(());
        };
        let mut cleanable: Vec<&Value> = old.iter().filter(|rs| !is_deleting(rs)).collect();
        let excess = cleanable.len() as i64 - limit;
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| revision(rs));
        let scope = Scope::new(self.rs_kind, Some(namespace_of(d)));
        for rs in cleanable.into_iter().take(excess as usize) {
            let observed = rs
                .at("/status/observedGeneration")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let generation = rs
                .at("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let status_replicas = rs
                .at("/status/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if replicas_of(rs) != 0 || status_replicas != 0 || generation > observed {
                continue;
            }
            tracing::info!(
                replicaset = name_of(rs),
                "deleting an old replica set beyond the history limit"
            );
            match self
                .objects
                .delete(scope, name_of(rs), &DeleteOptions::default())
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Step 5: writes the status when it changed; returns it.
    async fn sync_status(
        &self,
        d: &Value,
        new: Option<&Value>,
        old: &[Value],
        step: Step,
    ) -> Result<Value, Error> {
        let status = next_status(d, new, old, step, jiff::Timestamp::now());
        if d.get("status") != Some(&status) {
            let change = |d: &mut Value| d["status"] = status.clone();
            self.modify_deployment(d, Part::Status, change).await?;
        }
        Ok(status)
    }
}

impl Reconcile for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(d) = self.deployments.get(key) else {
            return Ok(Action::Done);
        };
        let (Some(namespace), _) = split_key(key) else {
            return Ok(Action::Done);
        };
        // Being deleted: the garbage collector takes its ReplicaSets down; do not fight it.
        if is_deleting(&d) || !selects_something(&d) {
            return Ok(Action::Done);
        }
        let all = self.claim_replicasets(&d, namespace).await?;
        let template = d.at("/spec/template").cloned().unwrap_or(Value::Null);
        let collisions = d.at("/status/collisionCount").and_then(Value::as_i64);
        let hash = template_hash(&template, collisions);
        let position = all
            .iter()
            .position(|rs| {
                rs.at("/spec/template")
                    .is_some_and(|t| equal_ignoring_hash(t, &template))
            })
            .or_else(|| {
                all.iter().position(|rs| {
                    rs.at(&format!(
                        "/spec/template/metadata/labels/{TEMPLATE_HASH_LABEL}"
                    ))
                    .and_then(Value::as_str)
                        == Some(hash.as_str())
                })
            });
        let mut old = all;
        let new = position.map(|i| old.remove(i));
        let paused = d.at("/spec/paused").and_then(Value::as_bool) == Some(true);
        let (new, step) = if paused || is_scaling_event(&d, new.as_ref(), &old) {
            (self.scale_only(&d, new, &old).await?, Step::Nothing)
        } else if is_recreate(&d) {
            self.recreate(&d, new, &old).await?
        } else {
            self.rolling(&d, new, &old).await?
        };
        let status = self.sync_status(&d, new.as_ref(), &old, step).await?;
        if paused || is_complete(&d, &status) {
            self.cleanup(&d, &old).await?;
            return Ok(Action::Done);
        }
        // Look again when the progress deadline would pass, to report it.
        let deadline = d
            .at("/spec/progressDeadlineSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(600);
        Ok(Action::RequeueAfter(Duration::from_secs(
            deadline.clamp(1, 600) + 1,
        )))
    }
}

fn is_recreate(d: &Value) -> bool {
    d.at("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate")
}

/// spec.replicas changed since an active ReplicaSet was last scaled (its desired-replicas
/// annotation says another size).
fn is_scaling_event(d: &Value, new: Option<&Value>, old: &[Value]) -> bool {
    let desired = desired_replicas(d).to_string();
    new.into_iter()
        .chain(old.iter())
        .filter(|rs| replicas_of(rs) > 0)
        .filter_map(|rs| annotation(rs, DESIRED_REPLICAS))
        .any(|annotated| annotated != desired)
}

fn namespace_of(object: &Value) -> &str {
    object
        .at("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn selects_something(d: &Value) -> bool {
    d.at("/spec/selector")
        .and_then(Value::as_object)
        .is_some_and(|s| {
            s.values().any(|v| {
                v.as_object().is_some_and(|m| !m.is_empty())
                    || v.as_array().is_some_and(|a| !a.is_empty())
            })
        })
}

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .at("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn set_annotation(object: &mut Value, key: &str, value: &str) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(map) = annotations.as_object_mut() {
            map.insert(key.to_string(), json!(value));
        }
    }
}

/// The revision annotation as a number (0 when absent).
pub fn revision(object: &Value) -> i64 {
    annotation(object, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn created_at(object: &Value) -> String {
    object
        .at("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// What the new ReplicaSet takes from its Deployment besides the template: annotations and
/// revision (below) and minReadySeconds. True when something changed.
fn sync_new_rs(d: &Value, rs: &mut Value, next_revision: i64) -> bool {
    let mut changed = set_new_rs_annotations(d, rs, next_revision);
    let min_ready = d.at("/spec/minReadySeconds").cloned().unwrap_or(json!(0));
    if rs.at("/spec/minReadySeconds").unwrap_or(&json!(0)) != &min_ready {
        rs["spec"]["minReadySeconds"] = min_ready;
        changed = true;
    }
    changed
}

/// Copies the Deployment's annotations to its new ReplicaSet and raises the ReplicaSet's
/// revision to `next_revision`, keeping its earlier revision in revision-history. True when
/// something changed.
fn set_new_rs_annotations(d: &Value, rs: &mut Value, next_revision: i64) -> bool {
    let before = rs.at("/metadata/annotations").cloned();
    let copied: Map<String, Value> = d
        .at("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let current = revision(rs);
    let had_revision = annotation(rs, REVISION).is_some();
    let history = annotation(rs, REVISION_HISTORY).unwrap_or("").to_string();
    for (k, v) in copied {
        set_annotation(rs, &k, v.as_str().unwrap_or(""));
    }
    if current < next_revision {
        set_annotation(rs, REVISION, &next_revision.to_string());
        if had_revision {
            let history = if history.is_empty() {
                current.to_string()
            } else {
                format!("{history},{current}")
            };
            set_annotation(rs, REVISION_HISTORY, &history);
        }
    }
    rs.at("/metadata/annotations").cloned() != before
}

fn set_replicas_annotations(d: &Value, rs: &mut Value) {
    let desired = desired_replicas(d);
    set_annotation(rs, DESIRED_REPLICAS, &desired.to_string());
    let (surge, _) = rolling_fenceposts(d);
    let max = if is_recreate(d) {
        desired
    } else {
        desired + surge
    };
    set_annotation(rs, MAX_REPLICAS, &max.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64) -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 2,
                         "annotations": {"kubernetes.io/change-cause": "v2", REVISION: "1"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}},
        })
    }

    #[test]
    fn undo_renumbers_the_old_replica_set_and_keeps_its_history() {
        let d = deployment(3);
        let mut rs = json!({"metadata": {"name": "web-1", "annotations": {REVISION: "1"}}});
        assert!(set_new_rs_annotations(&d, &mut rs, 3));
        assert_eq!(annotation(&rs, REVISION), Some("3"));
        assert_eq!(annotation(&rs, REVISION_HISTORY), Some("1"));
        assert_eq!(annotation(&rs, "kubernetes.io/change-cause"), Some("v2"));
        // Idempotent.
        assert!(!set_new_rs_annotations(&d, &mut rs, 3));
        // A fresh set gets a revision but no history.
        let mut fresh = json!({"metadata": {"name": "web-2"}});
        set_new_rs_annotations(&d, &mut fresh, 1);
        assert_eq!(annotation(&fresh, REVISION), Some("1"));
        assert_eq!(annotation(&fresh, REVISION_HISTORY), None);
    }
}
