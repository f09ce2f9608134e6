//! Objects every cluster starts with: the `default`, `kube-system` and `kube-public`
//! namespaces and the `default/kubernetes` Service, created by the leader if absent
//! (create-if-absent transactions, so any number of members or restarts running this at once
//! is harmless).

use std::time::Duration;

use serde_json::json;
use skiff_raft::RaftNode;

use super::objects::{Objects, Scope};
use super::service_network::KUBERNETES_SERVICE_OFFSET;
use super::status::ApiError;
use super::store::{CreateOutcome, ObjectStore, namespace_key};
use crate::registry;

pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Runs until the namespaces exist in this member's replica: creates them while this member
/// leads, otherwise waits for the leader's to replicate.
pub async fn ensure_system_namespaces(node: RaftNode) {
    let store = ObjectStore::new(node.clone());
    loop {
        match missing(&store).await {
            Ok(missing) if missing.is_empty() => break,
            Ok(missing) if node.is_leader() => {
                for name in missing {
                    match create(&store, name).await {
                        Ok(()) => tracing::info!(namespace = name, "created namespace"),
                        Err(e) => {
                            tracing::warn!(namespace = name, error = %e, "cannot create namespace yet")
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "namespace bootstrap waiting"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure_kubernetes_service(node).await;
}

/// The `default/kubernetes` Service at the first address of the service range, port 443 to the
/// API servers' 6443 (its endpoints are the endpoints controller's business).
async fn ensure_kubernetes_service(node: RaftNode) {
    let objects = Objects::new(ObjectStore::new(node.clone()));
    let Some(kind) = registry::lookup("", "v1", "services") else {
        return;
    };
    let ip = objects
        .service_network()
        .address(KUBERNETES_SERVICE_OFFSET)
        .to_string();
    let service = json!({
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
            "sessionAffinity": "None",
        },
    });
    let scope = Scope::new(kind, Some("default"));
    loop {
        let exists = objects.get(scope, "kubernetes", false).await.is_ok();
        if exists {
            return;
        }
        if node.is_leader() {
            match objects.create(scope, service.clone(), false).await {
                Ok(_) => tracing::info!("created the kubernetes Service"),
                Err(ApiError::AlreadyExists { .. }) => return,
                Err(e) => tracing::warn!(error = %e, "cannot create the kubernetes Service yet"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn missing(store: &ObjectStore) -> Result<Vec<&'static str>, ApiError> {
    let mut out = Vec::new();
    for name in SYSTEM_NAMESPACES {
        // Local (serializable) read: a stale "missing" only costs a no-op create.
        if store.get(&namespace_key(name), false).await?.is_none() {
            out.push(*name);
        }
    }
    Ok(out)
}

async fn create(store: &ObjectStore, name: &str) -> Result<(), ApiError> {
    let kind = registry::lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::Internal("namespaces are not registered".into()))?;
    let object = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": super::objects::new_uid(),
            "creationTimestamp": super::objects::now_rfc3339(),
        },
    });
    let object = kind
        .admit_create(object)
        .map_err(|e| ApiError::Internal(format!("system namespace {name}: {e}")))?;
    match store.create(&namespace_key(name), &object, None).await? {
        CreateOutcome::Created(_) | CreateOutcome::AlreadyExists => Ok(()),
        CreateOutcome::NamespaceMissing | CreateOutcome::ClaimTaken(_) => Ok(()),
    }
}
