//! Objects every cluster starts with: the `default`, `kube-system` and `kube-public`
//! namespaces, created by the leader if absent (create-if-absent transactions, so any number of
//! members or restarts running this at once is harmless).

use std::time::Duration;

use serde_json::json;
use skiff_raft::RaftNode;

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
            Ok(missing) if missing.is_empty() => return,
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
        CreateOutcome::NamespaceMissing => Ok(()),
    }
}
