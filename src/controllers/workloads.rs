//! Starts the scheduler and the Job, CronJob, StatefulSet and DaemonSet controllers for one
//! leadership term, and holds the small steps those controllers all take (find the live
//! object of a key, write a changed status). Kept apart from `mod.rs` so each of these
//! controllers is registered in one place, and a kind this build does not serve disables only
//! its own controller.

use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinSet;

use super::informer::{Informer, Informers, split_key, uid_of};
use super::ownership::{controller_uid, is_deleting};
use super::{Error, modify, start_when_synced};
use super::{cronjob, daemonset, job, scheduler, statefulset};
use crate::apiserver::objects::{Objects, Part, name_of};
use crate::json_path::JsonPath;
use crate::registry::{self, Kind};

fn kind(group: &str, resource: &str) -> Option<&'static dyn Kind> {
    registry::lookup(group, "v1", resource)
}

pub fn start(objects: &Objects, informers: &Arc<Informers>, tasks: &mut JoinSet<()>) {
    let (Some(pods), Some(nodes)) = (kind("", "pods"), kind("", "nodes")) else {
        tracing::warn!("pods or nodes are not served; scheduler and workloads disabled");
        return;
    };
    let volume_kinds = match (
        kind("", "persistentvolumeclaims"),
        kind("", "persistentvolumes"),
        kind("storage.k8s.io", "storageclasses"),
    ) {
        (Some(claims), Some(volumes), Some(classes)) => Some([claims, volumes, classes]),
        _ => None,
    };
    let (s, s_queue) = scheduler::Scheduler::new(
        objects.clone(),
        informers,
        pods,
        nodes,
        kind("", "namespaces"),
        volume_kinds,
    );
    tasks.spawn(scheduler::run(s, s_queue));
    if let Some(jobs) = kind("batch", "jobs") {
        let base = job::DEFAULT_BACKOFF_BASE;
        let (c, queue) = job::JobController::new(objects.clone(), informers, jobs, pods, base);
        tasks.spawn(start_when_synced(c, queue, informers.clone()));
    }
    if let (Some(cronjobs), Some(jobs)) = (kind("batch", "cronjobs"), kind("batch", "jobs")) {
        let (c, queue) =
            cronjob::CronJobController::new(objects.clone(), informers, cronjobs, jobs);
        tasks.spawn(start_when_synced(c, queue, informers.clone()));
    }
    let apps = |resource: &str| registry::lookup("apps", "v1", resource);
    let (Some(revisions), Some(claims)) = (
        apps("controllerrevisions"),
        kind("", "persistentvolumeclaims"),
    ) else {
        tracing::warn!(
            "controllerrevisions or persistentvolumeclaims are not served; statefulsets and daemonsets disabled"
        );
        return;
    };
    if let Some(statefulsets) = apps("statefulsets") {
        let kinds = statefulset::Kinds {
            statefulsets,
            pods,
            revisions,
            claims,
        };
        let (c, queue) = statefulset::StatefulSetController::new(objects.clone(), informers, kinds);
        tasks.spawn(start_when_synced(c, queue, informers.clone()));
    }
    if let Some(daemonsets) = apps("daemonsets") {
        let kinds = daemonset::Kinds {
            daemonsets,
            pods,
            nodes,
            revisions,
        };
        let (c, queue) = daemonset::DaemonSetController::new(objects.clone(), informers, kinds);
        tasks.spawn(start_when_synced(c, queue, informers.clone()));
    }
}

/// The cached object of a namespaced `key` and its namespace, unless it is gone or being
/// deleted (the garbage collector then removes what it owns; nothing to reconcile).
pub fn live(cache: &Informer, key: &str) -> Option<(Arc<Value>, String)> {
    let object = cache.get(key)?;
    let (Some(namespace), _) = split_key(key) else {
        return None;
    };
    (!is_deleting(&object)).then(|| (object, namespace.to_string()))
}

/// Writes `status` through the status subresource unless `object` already has it, so a
/// reconcile that changed nothing writes nothing (and wakes no watcher).
pub async fn write_status(
    objects: &Objects,
    kind: &'static dyn Kind,
    object: &Value,
    status: Value,
) -> Result<(), Error> {
    if object.get("status") == Some(&status) {
        return Ok(());
    }
    let namespace = object.at("/metadata/namespace").and_then(Value::as_str);
    let change = |o: &mut Value| o["status"] = status.clone();
    modify(
        objects,
        kind,
        namespace,
        name_of(object),
        Part::Status,
        change,
    )
    .await?;
    Ok(())
}

/// The cached objects in `owner`'s namespace that `owner` controls (by uid, so a deleted and
/// recreated owner of the same name does not claim its predecessor's dependents).
pub fn controlled_by(cache: &Informer, owner: &Value) -> Vec<Arc<Value>> {
    let namespace = owner
        .at("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let uid = uid_of(owner);
    cache
        .list_namespace(namespace)
        .into_iter()
        .filter(|o| controller_uid(o) == Some(uid))
        .collect()
}
