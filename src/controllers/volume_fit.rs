//! What a pod's PersistentVolumeClaims ask of the node it goes to: kube-scheduler's
//! VolumeBinding plugin, reduced to what skiff's volumes need.
//!
//! - A claim that does not exist keeps the pod pending (`persistentvolumeclaim "x" not found`),
//!   as does a claim being deleted.
//! - A bound claim's PersistentVolume may carry `spec.nodeAffinity` (a local or hostPath
//!   volume, like the ones the `local-path` provisioner makes): the pod may only go to a node
//!   those terms select, or it would find its data missing.
//! - An unbound claim whose class binds `WaitForFirstConsumer` is no obstacle: the binder
//!   provisions it on the node the pod is given. Any other unbound claim waits for the binder
//!   first ("pod has unbound immediate PersistentVolumeClaims").
//!
//! The scheduler retries pending pods whenever a claim, volume or class changes.

use std::sync::Arc;

use serde_json::Value;

use super::fit::term_matches;
use super::informer::Informer;
use super::volume_binding::class_of;
use crate::apiserver::objects::str_at;
use crate::json_path::JsonPath;

/// The caches the filter reads.
pub struct VolumeInformers {
    pub claims: Arc<Informer>,
    pub volumes: Arc<Informer>,
    pub classes: Arc<Informer>,
}

/// The node selector terms of each volume a pod uses: a node must match at least one term of
/// every entry.
pub type VolumeTerms = Vec<Vec<Value>>;

impl VolumeInformers {
    /// The constraints the pod's claims put on its node, or why it cannot be placed yet.
    pub fn requirements(&self, pod: &Value) -> Result<VolumeTerms, String> {
        let namespace = str_at(pod, "/metadata/namespace");
        let mut terms = VolumeTerms::new();
        let claim_names = pod
            .at("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|v| str_at(v, "/persistentVolumeClaim/claimName"))
            .filter(|name| !name.is_empty());
        for name in claim_names {
            let claim = self
                .claims
                .get(&format!("{namespace}/{name}"))
                .ok_or_else(|| format!("persistentvolumeclaim \"{name}\" not found"))?;
            if claim.at("/metadata/deletionTimestamp").is_some() {
                return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
            }
            let volume_name = str_at(&claim, "/spec/volumeName");
            if volume_name.is_empty() {
                if self.waits_for_first_consumer(&claim) {
                    continue;
                }
                return Err("pod has unbound immediate PersistentVolumeClaims".into());
            }
            let Some(volume) = self.volumes.get(volume_name) else {
                return Err(format!("persistentvolume \"{volume_name}\" not found"));
            };
            if let Some(required) = volume
                .at("/spec/nodeAffinity/required/nodeSelectorTerms")
                .and_then(Value::as_array)
            {
                terms.push(required.clone());
            }
        }
        Ok(terms)
    }

    fn waits_for_first_consumer(&self, claim: &Value) -> bool {
        let class = class_of(claim, &self.classes);
        !class.is_empty()
            && self.classes.get(&class).is_some_and(|c| {
                c.get("volumeBindingMode").and_then(Value::as_str) == Some("WaitForFirstConsumer")
            })
    }
}

/// Whether `node` is one every volume's terms allow.
pub fn volumes_allow(terms: &[Vec<Value>], node: &Value) -> bool {
    terms
        .iter()
        .all(|any_of| any_of.iter().any(|term| term_matches(term, node)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
    }

    #[test]
    fn every_volume_must_allow_the_node() {
        let on = |host: &str| {
            vec![json!({"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}
            ]})]
        };
        assert!(volumes_allow(&[], &node("a")));
        assert!(volumes_allow(&[on("a")], &node("a")));
        assert!(!volumes_allow(&[on("a")], &node("b")));
        assert!(!volumes_allow(&[on("a"), on("b")], &node("a")));
        let either = vec![on("a").remove(0), on("b").remove(0)];
        assert!(volumes_allow(&[either], &node("b")));
    }
}
