//! ResourceQuota admission. A write that grows what a namespace uses is checked against every
//! quota there that selects it; the quotas' status.used is charged in the same raft
//! transaction as the write itself, each quota guarded by the revision it was read at. Two
//! racing creates cannot both take the last unit: one loses the guard and is re-checked.
//! (kube-apiserver charges the quota in a separate write before the object's, and can leave
//! it over-counted when the object's write then fails; here nothing is charged for a write
//! that did not happen.)
//!
//! Releases (deletes, finished pods) are not admission's business: the quota controller
//! recounts (`recount`, shared with it) and writes the lower figure.

use std::collections::BTreeSet;

use serde_json::Value;
use skiff_storage::Revision;

use super::usage::{self, Usage};
use crate::apiserver::objects::{ListOptions, Objects, Scope, name_of};
use crate::apiserver::status::ApiError;
use crate::apiserver::store::{GuardedPut, object_key};
use crate::json_path::JsonPath;
use crate::registry::{self, Kind, KindInfo};

/// The quotas of a namespace, with the revisions they were read at.
pub async fn quotas_of(
    objects: &Objects,
    namespace: &str,
    linearizable: bool,
) -> Result<Vec<(Value, Revision)>, ApiError> {
    let Some(kind) = quota_kind() else {
        return Ok(Vec::new());
    };
    Ok(
        super::namespace_policies(objects, kind, namespace, linearizable)
            .await?
            .into_iter()
            .map(|s| (s.object, s.mod_revision))
            .collect(),
    )
}

pub fn quota_kind() -> Option<&'static dyn Kind> {
    registry::lookup("", "v1", "resourcequotas")
}

/// The quota rewrites that admit `new` (replacing `old`, if an update) into `namespace`, or
/// 403 Forbidden in kube's words when a quota would be exceeded.
pub async fn charge(
    objects: &Objects,
    info: &KindInfo,
    name: &str,
    namespace: &str,
    new: &Value,
    old: Option<&Value>,
    linearizable: bool,
) -> Result<Vec<GuardedPut>, ApiError> {
    let grown = match old {
        Some(old) => usage::growth(&usage::of_object(info, new), &usage::of_object(info, old)),
        None => usage::of_object(info, new),
    };
    let Some(quota_kind) = quota_kind().filter(|_| !grown.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut writes = Vec::new();
    let mut quotas = quotas_of(objects, namespace, linearizable).await?;
    quotas.sort_by(|a, b| name_of(&a.0).cmp(name_of(&b.0)));
    let forbidden = |reason: String| {
        ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: {reason}",
            info.qualified_resource()
        ))
    };
    for (quota, revision) in quotas {
        if !usage::quota_matches(&quota, info, new) {
            continue;
        }
        let quota_name = name_of(&quota).to_string();
        let hard = usage::parse_list(quota.at("/spec/hard"));
        let names: BTreeSet<String> = hard.keys().cloned().collect();
        let requested = usage::mask(&grown, &names);
        if requested.is_empty() {
            continue;
        }
        if (info.group, info.resource) == ("", "pods")
            && let Some(missing) = usage::missing_compute(new, &hard)
        {
            return Err(forbidden(format!(
                "failed quota: {quota_name}: must specify {missing}"
            )));
        }
        let mut used = match current_usage(&quota) {
            Some(used) => used,
            None => recount(objects, namespace, &quota).await?,
        };
        let exceeded: BTreeSet<String> = requested
            .iter()
            .filter(|(n, v)| {
                let limit = hard.get(*n).copied().unwrap_or(0);
                used.get(*n).copied().unwrap_or(0) + **v > limit
            })
            .map(|(n, _)| n.clone())
            .collect();
        if !exceeded.is_empty() {
            return Err(forbidden(format!(
                "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
                usage::pretty(&usage::mask(&requested, &exceeded)),
                usage::pretty(&usage::mask(&used, &exceeded)),
                usage::pretty(&usage::mask(&hard, &exceeded)),
            )));
        }
        usage::add(&mut used, &requested);
        let key = object_key(quota_kind.info(), Some(namespace), &quota_name);
        writes.push(GuardedPut::new(key, revision, &with_status(quota, &used))?);
    }
    Ok(writes)
}

/// status.used when it was computed for the current spec.hard; None when the quota is new or
/// its hard limits changed since (then admission recounts rather than trusting it).
fn current_usage(quota: &Value) -> Option<Usage> {
    let spec = quota.at("/spec/hard")?;
    let status_hard = quota.at("/status/hard")?;
    let used = quota.at("/status/used")?;
    let same = usage::parse_list(Some(spec)) == usage::parse_list(Some(status_hard));
    same.then(|| usage::parse_list(Some(used)))
}

/// `quota` with status.hard = spec.hard and status.used = `used` (every hard resource listed,
/// zero included, as kube's controller writes it).
pub fn with_status(mut quota: Value, used: &Usage) -> Value {
    let hard = quota.at("/spec/hard").cloned().unwrap_or_default();
    let names: BTreeSet<String> = hard
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut full = usage::mask(used, &names);
    for name in &names {
        full.entry(name.clone()).or_insert(0);
    }
    quota["status"] = serde_json::json!({"hard": hard, "used": usage::to_json(&full)});
    quota
}

/// The kinds whose objects can count toward any of `names`.
fn kinds_counted(names: &BTreeSet<String>) -> Vec<&'static dyn Kind> {
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    let core = |r: &str| (String::new(), r.to_string());
    for name in names {
        let kind = if let Some(counted) = name.strip_prefix("count/") {
            match counted.split_once('.') {
                Some((resource, group)) => (group.to_string(), resource.to_string()),
                None => core(counted),
            }
        } else if name == "requests.storage"
            || name == "persistentvolumeclaims"
            || name.contains(".storageclass.storage.k8s.io/")
        {
            core("persistentvolumeclaims")
        } else if name.starts_with("services") {
            core("services")
        } else if matches!(
            name.as_str(),
            "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas"
        ) {
            core(name)
        } else {
            // pods, cpu, memory, requests.*, limits.*, hugepages-*, ephemeral-storage
            core("pods")
        };
        wanted.insert(kind);
    }
    registry::all_kinds()
        .into_iter()
        .filter(|k| {
            let info = k.info();
            info.namespaced && wanted.contains(&(info.group.to_string(), info.resource.to_string()))
        })
        .collect()
}

/// What the objects of `namespace` use of `quota`'s hard resources, counted from the store.
pub async fn recount(objects: &Objects, namespace: &str, quota: &Value) -> Result<Usage, ApiError> {
    let hard = usage::parse_list(quota.at("/spec/hard"));
    let names: BTreeSet<String> = hard.keys().cloned().collect();
    let mut used: Usage = names.iter().map(|n| (n.clone(), 0)).collect();
    for kind in kinds_counted(&names) {
        let scope = Scope::new(kind, Some(namespace));
        for object in objects.list(scope, &ListOptions::default()).await?.items {
            if usage::quota_matches(quota, kind.info(), &object) {
                let counted = usage::of_object(kind.info(), &object);
                usage::add(&mut used, &usage::mask(&counted, &names));
            }
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_lists_every_hard_resource() {
        let quota = json!({"spec": {"hard": {"pods": "2", "requests.memory": "1Gi"}}});
        let used = Usage::from([("pods".to_string(), 1000), ("count/pods".to_string(), 1000)]);
        let out = with_status(quota, &used);
        assert_eq!(
            out["status"],
            json!({"hard": {"pods": "2", "requests.memory": "1Gi"}, "used": {"pods": "1", "requests.memory": "0"}})
        );
        assert_eq!(current_usage(&out).map(|u| u["pods"]), Some(1000));
    }

    #[test]
    fn a_changed_hard_limit_means_recount() {
        let quota = json!({"spec": {"hard": {"pods": "3"}}, "status": {"hard": {"pods": "2"}, "used": {"pods": "1"}}});
        assert_eq!(current_usage(&quota), None);
    }

    #[test]
    fn counted_kinds_follow_the_hard_names() {
        let names: BTreeSet<String> = [
            "requests.cpu",
            "count/deployments.apps",
            "services.nodeports",
            "secrets",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut kinds: Vec<&str> = kinds_counted(&names)
            .iter()
            .map(|k| k.info().resource)
            .collect();
        kinds.sort();
        assert_eq!(kinds, ["deployments", "pods", "secrets", "services"]);
    }
}
