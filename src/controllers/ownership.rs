//! ownerReferences and label selectors as the controllers use them: who controls an object,
//! adopting an orphan that matches a controller's selector and releasing one that stopped
//! matching (Kubernetes' ControllerRefManager), the reference a controller puts on what it
//! creates, and the informer handlers that turn a changed dependent into its owner's key.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::informer::{Handler, Informer, object_key};
use super::queue::WorkQueue;
use super::{Error, modify};
use crate::apiserver::objects::{Objects, Part, name_of};
use crate::json_path::JsonPath;
use crate::registry::{Kind, KindInfo, pod_template};

pub fn owner_references(object: &Value) -> &[Value] {
    object
        .at("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The owner reference with `controller: true`, if any.
pub fn controller_ref(object: &Value) -> Option<&Value> {
    owner_references(object)
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// The uid of the object's controller, if it has one.
pub fn controller_uid(object: &Value) -> Option<&str> {
    controller_ref(object)?.get("uid").and_then(Value::as_str)
}

/// Whether `object` is controlled by an object of `info`'s kind named `name`.
pub fn controller_name<'a>(object: &'a Value, info: &KindInfo) -> Option<&'a str> {
    let reference = controller_ref(object)?;
    let text = |f: &str| reference.get(f).and_then(Value::as_str).unwrap_or("");
    (text("kind") == info.kind && text("apiVersion") == info.api_version())
        .then(|| reference.get("name").and_then(Value::as_str))
        .flatten()
}

/// The reference a controller puts on what it creates or adopts: controller, and blocking
/// the owner's foreground deletion until the dependent is gone.
pub fn controller_reference(owner: &Value, info: &KindInfo) -> Value {
    json!({
        "apiVersion": info.api_version(),
        "kind": info.kind,
        "name": name_of(owner),
        "uid": super::informer::uid_of(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

pub fn labels(object: &Value) -> BTreeMap<String, String> {
    string_map(object.at("/metadata/labels"))
}

pub fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A metav1.LabelSelector given as JSON, parsed once for matching many objects; None when it
/// is empty, absent or malformed, which selects nothing here: a controller with one would
/// otherwise adopt everything in its namespace.
pub fn parse_selector(selector: Option<&Value>) -> Option<LabelSelector> {
    let selector = LabelSelector::deserialize(selector?).ok()?;
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    (!empty).then_some(selector)
}

/// One label of an object, read in place.
pub fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get("metadata")?.get("labels")?.get(key)?.as_str()
}

/// Whether an object's labels satisfy a parsed selector, without copying them.
pub fn selects(selector: &LabelSelector, object: &Value) -> bool {
    pod_template::selector_matches_by(selector, |key| label(object, key))
}

/// Whether `labels` satisfy a metav1.LabelSelector given as JSON (see `parse_selector`).
pub fn selector_matches(selector: Option<&Value>, labels: &BTreeMap<String, String>) -> bool {
    parse_selector(selector).is_some_and(|s| pod_template::selector_matches(&s, labels))
}

/// A handler queueing the changed object's own key.
pub fn enqueue_self(queue: Arc<WorkQueue>) -> Handler {
    Arc::new(move |old, new| {
        if let Some(object) = new.or(old) {
            queue.add(object_key(object));
        }
    })
}

/// A handler queueing every object of `selectors`' kind, in the changed object's namespace,
/// whose selector covers the object before or after the change (`selects(selector_object,
/// labels)`): the Services of a pod, the disruption budgets of a pod.
pub fn enqueue_selecting(
    queue: Arc<WorkQueue>,
    selectors: Arc<Informer>,
    selects: fn(&Value, &BTreeMap<String, String>) -> bool,
) -> Handler {
    Arc::new(move |old, new| {
        for object in [old, new].into_iter().flatten() {
            let namespace = object
                .at("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let object_labels = labels(object);
            for selector in selectors.list_namespace(namespace) {
                if selects(&selector, &object_labels) {
                    queue.add(object_key(&selector));
                }
            }
        }
    })
}

/// A handler queueing the owner (of `owners`' kind) of a changed dependent: its controller,
/// or for an orphan every owner whose selector matches it (it may be adopted).
pub fn enqueue_controller(queue: Arc<WorkQueue>, owners: Arc<Informer>) -> Handler {
    Arc::new(move |old, new| {
        for dependent in [old, new].into_iter().flatten() {
            let namespace = dependent
                .at("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            if controller_ref(dependent).is_some() {
                if let Some(name) = controller_name(dependent, owners.info()) {
                    queue.add(format!("{namespace}/{name}"));
                }
                continue;
            }
            let dependent_labels = labels(dependent);
            for owner in owners.list_namespace(namespace) {
                if selector_matches(owner.at("/spec/selector"), &dependent_labels) {
                    queue.add(object_key(&owner));
                }
            }
        }
    })
}

pub fn is_deleting(object: &Value) -> bool {
    object.at("/metadata/deletionTimestamp").is_some()
}

/// Makes `owner` the controller of the object `name` (of `kind`, in `namespace`), unless in
/// the meantime it gained another controller or was replaced (uid changed). Returns the
/// updated object, or None when it is no longer adoptable.
pub async fn adopt(
    objects: &Objects,
    kind: &'static dyn Kind,
    namespace: &str,
    dependent: &Value,
    owner: &Value,
    owner_info: &KindInfo,
) -> Result<Option<Value>, Error> {
    let uid = super::informer::uid_of(dependent).to_string();
    let owner_uid = super::informer::uid_of(owner);
    let reference = controller_reference(owner, owner_info);
    // Unchanged (a no-op update, nothing written) when it is no longer adoptable.
    let change = |current: &mut Value| {
        if super::informer::uid_of(current) == uid && controller_ref(current).is_none() {
            push_reference(current, reference.clone());
        }
    };
    let name = name_of(dependent);
    let written = modify(objects, kind, Some(namespace), name, Part::Main, change).await?;
    Ok(written.filter(|v| controller_uid(v) == Some(owner_uid)))
}

/// Removes the owner reference to `owner_uid` from the object `name`.
pub async fn release(
    objects: &Objects,
    kind: &'static dyn Kind,
    namespace: Option<&str>,
    name: &str,
    owner_uid: &str,
) -> Result<(), Error> {
    let change = |current: &mut Value| remove_reference(current, owner_uid);
    modify(objects, kind, namespace, name, Part::Main, change).await?;
    Ok(())
}

fn push_reference(object: &mut Value, reference: Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let refs = meta.entry("ownerReferences").or_insert_with(|| json!([]));
        if let Some(list) = refs.as_array_mut() {
            list.push(reference);
        }
    }
}

/// Drops the references to `owner_uid`, and the field when none remain.
pub fn remove_reference(object: &mut Value, owner_uid: &str) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let remaining: Vec<Value> = meta
        .get("ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if remaining.is_empty() {
        meta.remove("ownerReferences");
    } else {
        meta.insert("ownerReferences".into(), Value::Array(remaining));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let web = labels_of(&[("app", "web"), ("tier", "front")]);
        let s = json!({"matchLabels": {"app": "web"}});
        assert!(selector_matches(Some(&s), &web));
        let s = json!({"matchLabels": {"app": "db"}});
        assert!(!selector_matches(Some(&s), &web));
        let s = json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "back"]},
            {"key": "legacy", "operator": "DoesNotExist"}
        ]});
        assert!(selector_matches(Some(&s), &web));
        assert!(!selector_matches(Some(&json!({})), &web));
        assert!(!selector_matches(None, &web));
    }

    #[test]
    fn controller_refs_are_found_and_removed() {
        let mut pod = json!({"metadata": {"name": "p", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Thing", "name": "t", "uid": "u0"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true}
        ]}});
        assert_eq!(controller_uid(&pod), Some("u1"));
        remove_reference(&mut pod, "u1");
        assert_eq!(controller_uid(&pod), None);
        assert_eq!(owner_references(&pod).len(), 1);
        remove_reference(&mut pod, "u0");
        assert!(pod.at("/metadata/ownerReferences").is_none());
    }
}
