//! Every active namespace gets the `default` ServiceAccount and the `kube-root-ca.crt`
//! ConfigMap (the cluster CA, for in-cluster clients to verify the API server), recreated if
//! deleted and corrected if changed, as kube-controller-manager's serviceaccount and
//! root-ca-cert-publisher controllers do.
//!
//! The CA comes from `kube-public/cluster-info` (written at bootstrap, as kubeadm does), so the
//! controllers need no file from any member's data dir.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::informer::{Informer, Informers};
use super::ownership::{enqueue_self, is_deleting};
use super::queue::WorkQueue;
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{Objects, Part, Scope};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

pub const DEFAULT_ACCOUNT: &str = "default";
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Where bootstrap publishes the cluster's CA and server (kubeadm's `cluster-info`).
pub const CLUSTER_INFO: (&str, &str) = ("kube-public", "cluster-info");
/// How long to wait for bootstrap to publish cluster-info.
const WAIT_FOR_CLUSTER_INFO: Duration = Duration::from_secs(2);

pub struct Kinds {
    pub namespaces: &'static dyn Kind,
    pub service_accounts: &'static dyn Kind,
    pub config_maps: &'static dyn Kind,
}

pub struct ServiceAccountController {
    objects: Objects,
    kinds: Kinds,
    namespaces: Arc<Informer>,
}

/// A handler queueing the namespace of a changed object named `name`.
fn enqueue_namespace_of(queue: Arc<WorkQueue>, name: &'static str) -> super::informer::Handler {
    Arc::new(move |old, new| {
        for object in [old, new].into_iter().flatten() {
            if object.at("/metadata/name").and_then(Value::as_str) == Some(name)
                && let Some(ns) = object.at("/metadata/namespace").and_then(Value::as_str)
            {
                queue.add(ns.to_string());
            }
        }
    })
}

/// The CA certificate (PEM) inside cluster-info's kubeconfig.
pub fn ca_from_cluster_info(cluster_info: &Value) -> Option<String> {
    let kubeconfig = cluster_info.at("/data/kubeconfig")?.as_str()?;
    let parsed: Value = serde_yaml_ng::from_str(kubeconfig).ok()?;
    let data = parsed
        .at("/clusters/0/cluster/certificate-authority-data")?
        .as_str()?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    String::from_utf8(pem).ok()
}

impl ServiceAccountController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kinds: Kinds,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let namespaces = informers.of(kinds.namespaces);
        namespaces.add_handler(enqueue_self(queue.clone()));
        informers
            .of(kinds.service_accounts)
            .add_handler(enqueue_namespace_of(queue.clone(), DEFAULT_ACCOUNT));
        informers
            .of(kinds.config_maps)
            .add_handler(enqueue_namespace_of(queue.clone(), ROOT_CA_CONFIGMAP));
        let controller = Arc::new(ServiceAccountController {
            objects,
            kinds,
            namespaces,
        });
        (controller, queue)
    }

    /// Creates `object` unless something of that name exists; true when it already did.
    async fn create_if_absent(
        &self,
        kind: &'static dyn Kind,
        namespace: &str,
        object: Value,
    ) -> Result<bool, Error> {
        match self
            .objects
            .create(Scope::new(kind, Some(namespace)), object, false)
            .await
        {
            Ok(_) => Ok(false),
            Err(ApiError::AlreadyExists { .. }) => Ok(true),
            // The namespace began terminating meanwhile; nothing to add to it.
            Err(ApiError::Forbidden(_) | ApiError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Reconcile for ServiceAccountController {
    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(namespace) = self.namespaces.get(key) else {
            return Ok(Action::Done);
        };
        if is_deleting(&namespace) {
            return Ok(Action::Done);
        }
        self.create_if_absent(
            self.kinds.service_accounts,
            key,
            json!({"metadata": {"name": DEFAULT_ACCOUNT}}),
        )
        .await?;
        let info_scope = Scope::new(self.kinds.config_maps, Some(CLUSTER_INFO.0));
        let ca = match self.objects.get(info_scope, CLUSTER_INFO.1, false).await {
            Ok(info) => ca_from_cluster_info(&info),
            Err(ApiError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(ca) = ca else {
            return Ok(Action::RequeueAfter(WAIT_FOR_CLUSTER_INFO));
        };
        let existed = self
            .create_if_absent(
                self.kinds.config_maps,
                key,
                json!({"metadata": {"name": ROOT_CA_CONFIGMAP}, "data": {"ca.crt": ca}}),
            )
            .await?;
        if existed {
            modify(
                &self.objects,
                self.kinds.config_maps,
                Some(key),
                ROOT_CA_CONFIGMAP,
                Part::Main,
                |cm| {
                    cm["data"] = json!({"ca.crt": ca});
                },
            )
            .await?;
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_comes_out_of_cluster_info() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let data = base64::engine::general_purpose::STANDARD.encode(pem);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: {data}\n"
        );
        let info = json!({"data": {"kubeconfig": kubeconfig}});
        assert_eq!(ca_from_cluster_info(&info).as_deref(), Some(pem));
        assert_eq!(ca_from_cluster_info(&json!({"data": {}})), None);
    }
}
