//! Admission that needs other objects than the one written: ServiceAccount (a pod's account
//! must exist), LimitRanger (defaults and bounds from a namespace's LimitRanges) and
//! ResourceQuota (usage charged in the write's own transaction). NamespaceLifecycle stays with the verbs in `objects`; per-kind defaults and
//! validation are the registry's.
//!
//! Both read the namespace's policy objects from this member's replica when it leads (every
//! acknowledged write is applied there) and through read index otherwise, so a LimitRange or
//! quota created a moment ago applies to the very next request on any member.

pub mod limit_ranger;
pub mod quota;
pub mod usage;

use serde_json::Value;

use super::objects::Objects;
use super::status::ApiError;
use super::store::{Stored, list_prefix};
use crate::json_path::JsonPath;
use crate::registry::{self, Kind, KindInfo};

/// Every object of `kind` in `namespace` (a namespace's LimitRanges or ResourceQuotas), with
/// the revisions they were read at.
pub async fn namespace_policies(
    objects: &Objects,
    kind: &'static dyn Kind,
    namespace: &str,
    linearizable: bool,
) -> Result<Vec<Stored>, ApiError> {
    let prefix = list_prefix(kind.info(), Some(namespace));
    let page = objects
        .store()
        .list(&prefix, None, 0, 0, linearizable)
        .await?;
    Ok(page.items)
}

/// Whether admission must read through read index: on a follower, or after a lost race.
pub fn read_linearizable(objects: &Objects, attempt: usize) -> bool {
    attempt > 0 || !objects.store().node().is_leader()
}

/// ServiceAccount admission: a new pod may only run as an account that exists. The `default`
/// account is let through even before the serviceaccount controller has made it (kube refuses
/// such pods for the moment it takes; nothing is gained by making users retry).
pub async fn service_account(
    objects: &Objects,
    info: &KindInfo,
    name: &str,
    namespace: &str,
    pod: &Value,
) -> Result<(), ApiError> {
    if (info.group, info.resource) != ("", "pods") {
        return Ok(());
    }
    let account = pod
        .at("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let Some(kind) = registry::lookup("", "v1", "serviceaccounts").filter(|_| account != "default")
    else {
        return Ok(());
    };
    let key = super::store::object_key(kind.info(), Some(namespace), account);
    let linearizable = read_linearizable(objects, 0);
    if objects.store().get(&key, linearizable).await?.is_some() {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "{} \"{name}\" is forbidden: error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found",
        info.qualified_resource()
    )))
}

/// LimitRanger for a new pod or claim in `namespace`: defaults applied to `object`, then its
/// bounds checked (403 Forbidden with kube's message when outside them).
pub async fn limit_ranges(
    objects: &Objects,
    info: &KindInfo,
    name: &str,
    namespace: &str,
    object: &mut Value,
) -> Result<(), ApiError> {
    let is_pod = (info.group, info.resource) == ("", "pods");
    let is_claim = (info.group, info.resource) == ("", "persistentvolumeclaims");
    let kind = registry::lookup("", "v1", "limitranges");
    let Some(kind) = kind.filter(|_| is_pod || is_claim) else {
        return Ok(());
    };
    let ranges: Vec<Value> =
        namespace_policies(objects, kind, namespace, read_linearizable(objects, 0))
            .await?
            .into_iter()
            .map(|s| s.object)
            .collect();
    if ranges.is_empty() {
        return Ok(());
    }
    let errors = if is_pod {
        limit_ranger::default_pod(object, &ranges);
        limit_ranger::check_pod(object, &ranges)
    } else {
        limit_ranger::check_claim(object, &ranges)
    };
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "{} \"{name}\" is forbidden: {}",
        info.qualified_resource(),
        limit_ranger::aggregate(&errors)
    )))
}
