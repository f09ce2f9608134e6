//! Mirror pods: the API's view of a node's static pods (kubelet's `--pod-manifest-path`).
//! A node may create only mirror pods (annotated `kubernetes.io/config.mirror`) bound to
//! itself — kube's NodeRestriction rule — and each is owned by its Node, so the garbage
//! collector takes it away with the node. A mirror of an older manifest version (another
//! `config.mirror` hash) is replaced; the same version is returned as it is, so an agent
//! restarting over existing mirrors changes nothing.

use serde_json::{Value, json};

use crate::apiserver::objects::{DeleteOptions, Objects, Scope, WriteOptions, str_at};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

fn mirror_hash(pod: &Value) -> &str {
    pod.at("/metadata/annotations")
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Creates (or keeps, or replaces) the mirror pod `pod` of node `node`.
pub async fn create(
    objects: &Objects,
    kinds: (&'static dyn Kind, &'static dyn Kind),
    node: &str,
    mut pod: Value,
    options: &WriteOptions,
) -> Result<Value, ApiError> {
    let (pods, nodes) = kinds;
    let name = str_at(&pod, "/metadata/name").to_string();
    if str_at(&pod, "/spec/nodeName") != node {
        return Err(ApiError::Forbidden(format!(
            "node \"{node}\" can only create pods with spec.nodeName set to itself"
        )));
    }
    let hash = mirror_hash(&pod).to_string();
    if hash.is_empty() {
        return Err(ApiError::Forbidden(format!(
            "pod does not have \"{MIRROR_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"
        )));
    }
    let owner = objects.get(Scope::new(nodes, None), node, true).await?;
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "v1",
        "kind": "Node",
        "name": node,
        "uid": str_at(&owner, "/metadata/uid"),
        "controller": true,
    }]);
    let namespace = match str_at(&pod, "/metadata/namespace") {
        "" => "default".to_string(),
        ns => ns.to_string(),
    };
    pod["metadata"]["namespace"] = json!(namespace);
    let scope = Scope::new(pods, Some(&namespace));
    // Create; on a name clash keep a current mirror of ours, replace an outdated one.
    for _ in 0..3 {
        match objects.create_with(scope, pod.clone(), options).await {
            Err(ApiError::AlreadyExists { .. }) => {}
            other => return other,
        }
        let existing = match objects.get(scope, &name, true).await {
            Ok(existing) => existing,
            Err(ApiError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let ours =
            str_at(&existing, "/spec/nodeName") == node && !mirror_hash(&existing).is_empty();
        if !ours {
            return Err(ApiError::already_exists(pods.info(), &name));
        }
        if mirror_hash(&existing) == hash && existing.at("/metadata/deletionTimestamp").is_none() {
            return Ok(existing);
        }
        let delete = DeleteOptions {
            uid: Some(str_at(&existing, "/metadata/uid").to_string()),
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        match objects.delete(scope, &name, &delete).await {
            Ok(_) | Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(
        pods.info(),
        &name,
        "the mirror pod kept changing; try again",
    ))
}
