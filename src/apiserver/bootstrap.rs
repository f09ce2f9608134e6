//! Objects every cluster starts with: the `default`, `kube-system` and `kube-public`
//! namespaces, the `default/kubernetes` Service, the default IngressClass `skiff` and the
//! default StorageClass `local-path`, created
//! by the leader if absent (create-if-absent transactions, so any number of members or
//! restarts running this at once is harmless).

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use skiff_raft::RaftNode;

use super::objects::{Objects, Part, Scope, WriteOptions};
use super::service_network::{KUBERNETES_SERVICE_OFFSET, cluster_dns_ip};
use super::status::ApiError;
use super::store::{CreateOutcome, ObjectStore, namespace_key};
use crate::json_path::JsonPath;
use crate::registry;

pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Runs until the namespaces exist in this member's replica, then the `kubernetes` Service,
/// then the default IngressClass.
pub async fn ensure_system_namespaces(node: RaftNode) {
    let mut namespaces = Vec::new();
    for name in SYSTEM_NAMESPACES {
        match namespace_object(name) {
            Ok(object) => namespaces.push((namespace_key(name), object)),
            Err(e) => tracing::error!(namespace = name, error = %e, "no system namespace"),
        }
    }
    ensure_stored(&node, "system namespace", namespaces).await;
    ensure_kubernetes_service(node.clone()).await;
    match default_ingress_class() {
        Ok(class) => ensure_stored(&node, "default IngressClass", vec![class]).await,
        Err(e) => tracing::error!(error = %e, "no default IngressClass"),
    }
    match default_storage_class() {
        Ok(class) => ensure_stored(&node, "default StorageClass", vec![class]).await,
        Err(e) => tracing::error!(error = %e, "no default StorageClass"),
    }
}

/// The `local-path` StorageClass, marked default: claims without a class get a hostPath
/// volume on the node of their first pod (controllers/volume_binding.rs). Created once; an
/// operator may delete or unmark it.
fn default_storage_class() -> Result<(String, serde_json::Value), ApiError> {
    use crate::controllers::volume_binding::{
        DEFAULT_CLASS, DEFAULT_CLASS_ANNOTATION, PROVISIONER,
    };
    let kind = registry::lookup("storage.k8s.io", "v1", "storageclasses")
        .ok_or_else(|| ApiError::Internal("storageclasses are not registered".into()))?;
    let object = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": DEFAULT_CLASS,
            "uid": super::objects::new_uid(),
            "creationTimestamp": super::objects::now_rfc3339(),
            "labels": {"app.kubernetes.io/managed-by": "skiff"},
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    });
    let admitted = kind
        .admit_create(object)
        .map_err(|e| ApiError::Internal(format!("StorageClass {DEFAULT_CLASS}: {e}")))?;
    Ok((
        super::store::object_key(kind.info(), None, DEFAULT_CLASS),
        admitted,
    ))
}

/// The `skiff` IngressClass, marked default: an Ingress without a class is served by the
/// ingress role every agent runs (src/ingress), with nothing else installed. Created once;
/// an operator may delete it or unmark it and it stays so.
fn default_ingress_class() -> Result<(String, serde_json::Value), ApiError> {
    use crate::ingress::class::{CLASS_NAME, CONTROLLER, DEFAULT_CLASS_ANNOTATION};
    let kind = registry::lookup("networking.k8s.io", "v1", "ingressclasses")
        .ok_or_else(|| ApiError::Internal("ingressclasses are not registered".into()))?;
    let object = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": CLASS_NAME,
            "uid": super::objects::new_uid(),
            "creationTimestamp": super::objects::now_rfc3339(),
            "generation": 1,
            "labels": {"app.kubernetes.io/managed-by": "skiff"},
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
        },
        "spec": {"controller": CONTROLLER},
    });
    let admitted = kind
        .admit_create(object)
        .map_err(|e| ApiError::Internal(format!("IngressClass {CLASS_NAME}: {e}")))?;
    Ok((
        super::store::object_key(kind.info(), None, CLASS_NAME),
        admitted,
    ))
}

/// Creates each (key, object) that is missing, while this member leads; returns once all of
/// them exist in this member's replica (created here or replicated from the leader). Creates
/// are create-if-absent, so any number of members or restarts running this at once is harmless.
pub async fn ensure_stored(node: &RaftNode, what: &str, wanted: Vec<(String, serde_json::Value)>) {
    let store = ObjectStore::new(node.clone());
    loop {
        match missing(&store, &wanted).await {
            Ok(missing) if missing.is_empty() => return,
            Ok(missing) if node.is_leader() => {
                for (key, object) in missing {
                    match store.create(key, object, None).await {
                        Ok(CreateOutcome::Created(_)) => tracing::info!(key, "created {what}"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(key, error = %e, "cannot create {what} yet"),
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "waiting to create {what}"),
        }
        // Short: until this returns, a first `kubectl apply` can find no `default` namespace.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The entries of `wanted` absent from this member's replica (a local read: a stale "missing"
/// only costs a no-op create).
async fn missing<'a>(
    store: &ObjectStore,
    wanted: &'a [(String, serde_json::Value)],
) -> Result<Vec<(&'a str, &'a serde_json::Value)>, ApiError> {
    let mut out = Vec::new();
    for (key, object) in wanted {
        if store.get(key, false).await?.is_none() {
            out.push((key.as_str(), object));
        }
    }
    Ok(out)
}

/// The `default/kubernetes` Service at the first address of the service range, port 443 to the
/// API servers' 6443 (its endpoints are the endpoints controller's business).
async fn ensure_kubernetes_service(node: RaftNode) {
    let objects = Objects::new(ObjectStore::new(node.clone()));
    let ip = objects
        .service_network()
        .address(KUBERNETES_SERVICE_OFFSET)
        .to_string();
    let service = json!({
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
            "sessionAffinity": "None",
        },
    });
    ensure_object(&node, &objects, "services", service).await;
}

/// `kube-public/cluster-info`: a kubeconfig with the cluster CA and an API server address, no
/// credentials (kubeadm publishes the same); the root-CA controller reads the CA from it.
pub async fn ensure_cluster_info(node: RaftNode, ca_pem: String, server: String) {
    let objects = Objects::new(ObjectStore::new(node.clone()));
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server}\ncontexts: null\ncurrent-context: \"\"\npreferences: {{}}\nusers: null\n"
    );
    let info = json!({
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig},
    });
    ensure_object(&node, &objects, "configmaps", info).await;
}

/// Creates a core/v1 object (named and namespaced by its metadata) while this member leads,
/// until it exists in this member's replica.
async fn ensure_object(
    node: &RaftNode,
    objects: &Objects,
    resource: &str,
    object: serde_json::Value,
) {
    let Some(kind) = registry::lookup("", "v1", resource) else {
        return;
    };
    let text = |p: &str| {
        object
            .at(p)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (namespace, name) = (text("/metadata/namespace"), text("/metadata/name"));
    let scope = Scope::new(kind, Some(namespace.as_str()).filter(|n| !n.is_empty()));
    loop {
        if objects.get(scope, &name, false).await.is_ok() {
            return;
        }
        if node.is_leader() {
            match objects.create(scope, object.clone(), false).await {
                Ok(_) => tracing::info!(resource, name, "created"),
                Err(ApiError::AlreadyExists { .. }) => return,
                Err(e) => tracing::warn!(resource, name, error = %e, "cannot create yet"),
            }
        }
        // Short: until this returns, a first `kubectl apply` can find no `default` namespace.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A system namespace as admission makes it.
fn namespace_object(name: &str) -> Result<serde_json::Value, ApiError> {
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
    kind.admit_create(object)
        .map_err(|e| ApiError::Internal(format!("system namespace {name}: {e}")))
}

/// The EndpointSlice of `kube-system/kube-dns` listing the members whose DNS serves pods; each
/// member adds itself, the endpoints controller drops members that left.
pub const DNS_MEMBERS_SLICE: &str = "kube-dns-members";

/// Publishes this member's cluster DNS as an endpoint of `kube-system/kube-dns` (a Service
/// without selector at 10.43.0.10, created if missing), so pods reach DNS through the node's
/// proxy. Retries until it is written; members that leave are not removed yet.
pub async fn register_cluster_dns(objects: Objects, member_ip: String) {
    let (Some(services), Some(slices)) = (
        registry::lookup("", "v1", "services"),
        registry::lookup("discovery.k8s.io", "v1", "endpointslices"),
    ) else {
        return;
    };
    let ports = json!([
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]);
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "skiff-dns"}},
        "spec": {"clusterIP": cluster_dns_ip().to_string(), "ports": ports},
    });
    let endpoint = json!({"addresses": [member_ip], "conditions": {"ready": true}});
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": DNS_MEMBERS_SLICE, "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": "skiff-server"}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": [endpoint],
    });
    let scope_svc = Scope::new(services, Some("kube-system"));
    let scope_slice = Scope::new(slices, Some("kube-system"));
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        let outcome = async {
            match objects.create(scope_svc, service.clone(), false).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            match objects.create(scope_slice, slice.clone(), false).await {
                Ok(_) => return Ok(()),
                Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            let add = |current: &serde_json::Value| -> Result<serde_json::Value, ApiError> {
                let mut next = current.clone();
                let listed = next
                    .get("endpoints")
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|eps| {
                        eps.iter()
                            .any(|e| e.at("/addresses/0") == Some(&json!(member_ip)))
                    });
                if !listed {
                    match next
                        .get_mut("endpoints")
                        .and_then(serde_json::Value::as_array_mut)
                    {
                        Some(eps) => eps.push(endpoint.clone()),
                        None => next["endpoints"] = json!([endpoint.clone()]),
                    }
                }
                Ok(next)
            };
            objects
                .update_with(
                    scope_slice,
                    DNS_MEMBERS_SLICE,
                    Part::Main,
                    &add,
                    &WriteOptions::default(),
                )
                .await
                .map(|_| ())
        }
        .await;
        match outcome {
            Ok(()) => {
                tracing::info!(member = %member_ip, "cluster DNS published as kube-system/kube-dns");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "publishing cluster DNS; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }
}
