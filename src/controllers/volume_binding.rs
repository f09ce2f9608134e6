//! PersistentVolume binding and the built-in provisioner (kube-controller-manager's
//! PersistentVolumeController, and k3s's local-path provisioner in small):
//! - a Pending claim binds the smallest Available PV of its class whose capacity, access modes,
//!   volume mode and label selector fit (PV `claimRef` first, then the claim's `volumeName`);
//! - a claim whose class has skiff's provisioner gets a new hostPath PV made for it — at once
//!   (`Immediate`), or once a pod using it is bound to a node (`WaitForFirstConsumer`: the PV
//!   then carries node affinity to that node, where its directory lives);
//! - a claim without a class gets the default StorageClass, as the DefaultStorageClass
//!   admission plugin and retroactive default assignment do;
//! - a PV whose claim is gone is Released (`Retain`) or deleted (`Delete`).
//!
//! The node's agent creates the directory when a pod mounts it (src/agent/volumes.rs).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::informer::{Informer, Informers, split_key};
use super::ownership::{is_deleting, selector_matches};
use super::queue::WorkQueue;
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{DeleteOptions, Objects, Part, Scope, str_at};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;
use crate::registry::quantity;

/// The provisioner of skiff's default StorageClass.
pub const PROVISIONER: &str = "skiff.dev/local-path";
/// The default StorageClass created at bootstrap.
pub const DEFAULT_CLASS: &str = "local-path";
/// Where provisioned volumes live on the node, unless the class's `path` parameter says.
pub const DEFAULT_PATH: &str = "/var/lib/skiff/storage";
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

pub struct Kinds {
    pub volumes: &'static dyn Kind,
    pub claims: &'static dyn Kind,
    pub classes: &'static dyn Kind,
    pub pods: &'static dyn Kind,
}

pub struct VolumeBinder {
    objects: Objects,
    kinds: Kinds,
    volumes: Arc<Informer>,
    claims: Arc<Informer>,
    classes: Arc<Informer>,
    pods: Arc<Informer>,
    /// One reconcile at a time: two claims must never take the same volume.
    binding: Mutex<()>,
    /// Volumes this controller claimed but its cache has not seen claimed yet.
    claimed: std::sync::Mutex<BTreeSet<String>>,
}

const CLAIM: &str = "claim:";
const VOLUME: &str = "volume:";

fn claim_key(claim: &Value) -> String {
    format!(
        "{CLAIM}{}/{}",
        str_at(claim, "/metadata/namespace"),
        str_at(claim, "/metadata/name")
    )
}

/// Bytes a claim asks for, or a volume holds.
fn storage(v: &Value, pointer: &str) -> f64 {
    v.at(pointer)
        .and_then(Value::as_str)
        .and_then(quantity::parse)
        .unwrap_or(0.0)
}

fn strings(v: &Value, pointer: &str) -> BTreeSet<String> {
    v.at(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// Whether `volume` can serve `claim` of class `class` (not whether it is free).
fn fits(volume: &Value, claim: &Value, class: &str) -> bool {
    str_at(volume, "/spec/storageClassName") == class
        && strings(claim, "/spec/accessModes").is_subset(&strings(volume, "/spec/accessModes"))
        && storage(volume, "/spec/capacity/storage")
            >= storage(claim, "/spec/resources/requests/storage")
        && (str_at(volume, "/spec/volumeMode").is_empty()
            || str_at(volume, "/spec/volumeMode") == str_at(claim, "/spec/volumeMode")
            || str_at(claim, "/spec/volumeMode").is_empty())
        && claim
            .at("/spec/selector")
            .is_none_or(|s| selector_matches(Some(s), &super::ownership::labels(volume)))
}

fn is_free(volume: &Value) -> bool {
    volume.at("/spec/claimRef").is_none_or(Value::is_null) && !is_deleting(volume)
}

/// Whether `volume`'s claimRef names `claim` (by uid when the ref has one).
fn claimed_by(volume: &Value, claim: &Value) -> bool {
    let reference = volume.at("/spec/claimRef");
    reference.is_some_and(|r| {
        str_at(r, "/namespace") == str_at(claim, "/metadata/namespace")
            && str_at(r, "/name") == str_at(claim, "/metadata/name")
            && (str_at(r, "/uid").is_empty() || str_at(r, "/uid") == str_at(claim, "/metadata/uid"))
    })
}

fn claim_ref(claim: &Value) -> Value {
    json!({
        "kind": "PersistentVolumeClaim", "apiVersion": "v1",
        "namespace": str_at(claim, "/metadata/namespace"),
        "name": str_at(claim, "/metadata/name"),
        "uid": str_at(claim, "/metadata/uid"),
        "resourceVersion": str_at(claim, "/metadata/resourceVersion"),
    })
}

/// The class a claim uses: its own, or the default StorageClass when it names none.
pub fn class_of(claim: &Value, classes: &Informer) -> String {
    if let Some(class) = claim.at("/spec/storageClassName").and_then(Value::as_str) {
        return class.to_string();
    }
    let marker = format!(
        "/metadata/annotations/{}",
        DEFAULT_CLASS_ANNOTATION.replace('/', "~1")
    );
    classes
        .list()
        .iter()
        .find(|c| str_at(c, &marker) == "true")
        .map(|c| str_at(c, "/metadata/name").to_string())
        .unwrap_or_default()
}

impl VolumeBinder {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kinds: Kinds,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let claims = informers.of(kinds.claims);
        let volumes = informers.of(kinds.volumes);
        let classes = informers.of(kinds.classes);
        let pods = informers.of(kinds.pods);
        {
            let queue = queue.clone();
            // A claim's volume is looked at too: a deleted claim releases (or deletes) it.
            claims.add_handler(Arc::new(move |old, new| {
                for claim in [old, new].into_iter().flatten() {
                    queue.add(claim_key(claim));
                    let volume = str_at(claim, "/spec/volumeName");
                    if !volume.is_empty() {
                        queue.add(format!("{VOLUME}{volume}"));
                    }
                }
            }));
        }
        {
            // A volume that appears or frees up may serve a waiting claim.
            let (queue, all_claims) = (queue.clone(), claims.clone());
            volumes.add_handler(Arc::new(move |old, new| {
                for volume in [old, new].into_iter().flatten() {
                    queue.add(format!("{VOLUME}{}", str_at(volume, "/metadata/name")));
                }
                for claim in all_claims.list() {
                    if str_at(&claim, "/spec/volumeName").is_empty() {
                        queue.add(claim_key(&claim));
                    }
                }
            }));
        }
        {
            // A pod bound to a node lets its WaitForFirstConsumer claims be provisioned.
            let queue = queue.clone();
            pods.add_handler(Arc::new(move |_, new| {
                let Some(pod) = new else { return };
                if str_at(pod, "/spec/nodeName").is_empty() {
                    return;
                }
                for volume in pod
                    .at("/spec/volumes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = str_at(volume, "/persistentVolumeClaim/claimName");
                    if !name.is_empty() {
                        queue.add(format!(
                            "{CLAIM}{}/{name}",
                            str_at(pod, "/metadata/namespace")
                        ));
                    }
                }
            }));
        }
        let binder = Arc::new(VolumeBinder {
            objects,
            kinds,
            volumes,
            claims,
            classes,
            pods,
            binding: Mutex::new(()),
            claimed: std::sync::Mutex::default(),
        });
        (binder, queue)
    }

    /// The node of a pod that uses the claim, if one is bound.
    fn consumer_node(&self, claim: &Value) -> Option<String> {
        let namespace = str_at(claim, "/metadata/namespace");
        let name = str_at(claim, "/metadata/name");
        self.pods
            .list_namespace(namespace)
            .into_iter()
            .find_map(|pod| {
                let uses = pod
                    .at("/spec/volumes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|v| str_at(v, "/persistentVolumeClaim/claimName") == name);
                let node = str_at(&pod, "/spec/nodeName");
                (uses && !node.is_empty()).then(|| node.to_string())
            })
    }

    async fn reconcile_claim(&self, namespace: &str, name: &str) -> Result<Action, Error> {
        let Some(claim) = self.claims.get(&format!("{namespace}/{name}")) else {
            return Ok(Action::Done);
        };
        if is_deleting(&claim) {
            return Ok(Action::Done);
        }
        let class = class_of(&claim, &self.classes);
        if claim.at("/spec/storageClassName").is_none() && !class.is_empty() {
            // Retroactive default class; the next event binds it.
            self.update_claim(Part::Main, namespace, name, move |c| {
                c["spec"]["storageClassName"] = json!(class.clone());
            })
            .await?;
            return Ok(Action::Done);
        }
        let bound_to = str_at(&claim, "/spec/volumeName").to_string();
        if !bound_to.is_empty() {
            return self.finish_binding(&claim, &bound_to).await;
        }
        // A volume already pre-bound to this claim (by a provisioner or a user) comes first.
        let volumes = self.volumes.list();
        let claimed = self.claimed.lock().map(|c| c.clone()).unwrap_or_default();
        let chosen = volumes
            .iter()
            .find(|v| claimed_by(v, &claim) && fits(v, &claim, &class))
            .or_else(|| {
                volumes
                    .iter()
                    .filter(|v| is_free(v) && !claimed.contains(str_at(v, "/metadata/name")))
                    .filter(|v| fits(v, &claim, &class))
                    .min_by(|a, b| {
                        storage(a, "/spec/capacity/storage")
                            .total_cmp(&storage(b, "/spec/capacity/storage"))
                    })
            })
            .map(|v| str_at(v, "/metadata/name").to_string());
        if let Some(volume) = chosen {
            self.claim_volume(&volume, &claim).await?;
            return self.finish_binding(&claim, &volume).await;
        }
        let Some(storage_class) = self.classes.get(&class) else {
            return Ok(Action::Done);
        };
        if str_at(&storage_class, "/provisioner") != PROVISIONER {
            return Ok(Action::Done);
        }
        let node = match str_at(&storage_class, "/volumeBindingMode") {
            "WaitForFirstConsumer" => match self.consumer_node(&claim) {
                Some(node) => Some(node),
                None => return Ok(Action::Done),
            },
            _ => None,
        };
        let volume = self
            .provision(&claim, &storage_class, node.as_deref())
            .await?;
        self.finish_binding(&claim, &volume).await
    }

    /// Sets the volume's claimRef (and phase Bound), remembering it until the cache catches up.
    async fn claim_volume(&self, volume: &str, claim: &Value) -> Result<(), Error> {
        let reference = claim_ref(claim);
        modify(
            &self.objects,
            self.kinds.volumes,
            None,
            volume,
            Part::Main,
            move |v| {
                v["spec"]["claimRef"] = reference.clone();
            },
        )
        .await?;
        if let Ok(mut claimed) = self.claimed.lock() {
            claimed.insert(volume.to_string());
        }
        modify(
            &self.objects,
            self.kinds.volumes,
            None,
            volume,
            Part::Status,
            |v| {
                v["status"]["phase"] = json!("Bound");
            },
        )
        .await?;
        Ok(())
    }

    /// A new hostPath PV for `claim`, pre-bound to it.
    async fn provision(
        &self,
        claim: &Value,
        class: &Value,
        node: Option<&str>,
    ) -> Result<String, Error> {
        let uid = str_at(claim, "/metadata/uid");
        let name = format!("pvc-{uid}");
        let namespace = str_at(claim, "/metadata/namespace");
        let claim_name = str_at(claim, "/metadata/name");
        let base = match str_at(class, "/parameters/path") {
            "" => DEFAULT_PATH,
            path => path,
        };
        let mut volume = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
            "spec": {
                "capacity": {"storage": claim.at("/spec/resources/requests/storage").cloned().unwrap_or(json!("1Gi"))},
                "accessModes": claim.at("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"])),
                "persistentVolumeReclaimPolicy": match str_at(class, "/reclaimPolicy") { "" => "Delete", p => p },
                "storageClassName": str_at(class, "/metadata/name"),
                "volumeMode": "Filesystem",
                "hostPath": {"path": format!("{base}/{name}_{namespace}_{claim_name}"), "type": "DirectoryOrCreate"},
                "claimRef": claim_ref(claim),
            },
        });
        if let Some(node) = node {
            volume["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}});
        }
        match self
            .objects
            .create(Scope::new(self.kinds.volumes, None), volume, false)
            .await
        {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Ok(mut claimed) = self.claimed.lock() {
            claimed.insert(name.clone());
        }
        modify(
            &self.objects,
            self.kinds.volumes,
            None,
            &name,
            Part::Status,
            |v| {
                v["status"]["phase"] = json!("Bound");
            },
        )
        .await?;
        tracing::info!(claim = %format!("{namespace}/{claim_name}"), volume = %name, node = node.unwrap_or(""), "provisioned a volume");
        Ok(name)
    }

    /// The claim's side of a binding: volumeName, then phase, capacity and access modes.
    async fn finish_binding(&self, claim: &Value, volume_name: &str) -> Result<Action, Error> {
        let namespace = str_at(claim, "/metadata/namespace").to_string();
        let name = str_at(claim, "/metadata/name").to_string();
        let volume = match self.volumes.get(volume_name) {
            Some(v) => (*v).clone(),
            None => match self
                .objects
                .get(Scope::new(self.kinds.volumes, None), volume_name, false)
                .await
            {
                Ok(v) => v,
                Err(ApiError::NotFound { .. }) => {
                    if str_at(claim, "/status/phase") != "Lost" {
                        self.update_claim(Part::Status, &namespace, &name, |c| {
                            c["status"] = json!({"phase": "Lost"})
                        })
                        .await?;
                    }
                    return Ok(Action::Done);
                }
                Err(e) => return Err(e.into()),
            },
        };
        if str_at(claim, "/spec/volumeName").is_empty() {
            let volume_name = volume_name.to_string();
            self.update_claim(Part::Main, &namespace, &name, move |c| {
                c["spec"]["volumeName"] = json!(volume_name.clone());
            })
            .await?;
        }
        if str_at(claim, "/status/phase") != "Bound" {
            let capacity = volume.at("/spec/capacity").cloned().unwrap_or(json!({}));
            let modes = volume.at("/spec/accessModes").cloned().unwrap_or(json!([]));
            self.update_claim(Part::Status, &namespace, &name, move |c| {
                c["status"]["phase"] = json!("Bound");
                c["status"]["capacity"] = capacity.clone();
                c["status"]["accessModes"] = modes.clone();
            })
            .await?;
            tracing::info!(claim = %format!("{namespace}/{name}"), volume = %volume_name, "claim bound");
        }
        Ok(Action::Done)
    }

    /// Changes a claim's spec (`Part::Main`) or status (`Part::Status`).
    async fn update_claim(
        &self,
        part: Part,
        namespace: &str,
        name: &str,
        change: impl Fn(&mut Value) + Send + Sync,
    ) -> Result<(), Error> {
        modify(
            &self.objects,
            self.kinds.claims,
            Some(namespace),
            name,
            part,
            change,
        )
        .await?;
        Ok(())
    }

    async fn set_volume_phase(&self, name: &str, phase: &'static str) -> Result<(), Error> {
        let change = |v: &mut Value| v["status"]["phase"] = json!(phase);
        modify(
            &self.objects,
            self.kinds.volumes,
            None,
            name,
            Part::Status,
            change,
        )
        .await?;
        Ok(())
    }

    async fn reconcile_volume(&self, name: &str) -> Result<Action, Error> {
        let Some(volume) = self.volumes.get(name) else {
            if let Ok(mut claimed) = self.claimed.lock() {
                claimed.remove(name);
            }
            return Ok(Action::Done);
        };
        if is_deleting(&volume) {
            return Ok(Action::Done);
        }
        let phase = str_at(&volume, "/status/phase");
        let Some(reference) = volume.at("/spec/claimRef").filter(|r| !r.is_null()) else {
            if phase != "Available" {
                self.set_volume_phase(name, "Available").await?;
            }
            return Ok(Action::Done);
        };
        if let Ok(mut claimed) = self.claimed.lock() {
            claimed.remove(name);
        }
        let (namespace, claim_name) = (str_at(reference, "/namespace"), str_at(reference, "/name"));
        let claim_key = format!("{namespace}/{claim_name}");
        let claim = self.claims.get(&claim_key);
        let uid = str_at(reference, "/uid");
        let gone = claim
            .as_ref()
            .is_none_or(|c| !uid.is_empty() && str_at(c, "/metadata/uid") != uid);
        if !gone {
            return Ok(Action::Done);
        }
        // Re-read before acting on a deletion the cache may be ahead of or behind.
        let current = self
            .objects
            .get(
                Scope::new(self.kinds.claims, Some(namespace)),
                claim_name,
                true,
            )
            .await;
        if current.is_ok_and(|c| uid.is_empty() || str_at(&c, "/metadata/uid") == uid) {
            return Ok(Action::Done);
        }
        match str_at(&volume, "/spec/persistentVolumeReclaimPolicy") {
            "Delete" => {
                match self
                    .objects
                    .delete(
                        Scope::new(self.kinds.volumes, None),
                        name,
                        &DeleteOptions::default(),
                    )
                    .await
                {
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(volume = name, claim = %claim_key, "claim gone; volume deleted (reclaim policy Delete)");
            }
            _ if phase != "Released" => {
                self.set_volume_phase(name, "Released").await?;
                tracing::info!(volume = name, claim = %claim_key, "claim gone; volume released");
            }
            _ => {}
        }
        Ok(Action::Done)
    }
}

impl Reconcile for VolumeBinder {
    fn name(&self) -> &'static str {
        "persistentvolume-binder"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let _one_at_a_time = self.binding.lock().await;
        if let Some(claim) = key.strip_prefix(CLAIM) {
            let (Some(namespace), name) = split_key(claim) else {
                return Ok(Action::Done);
            };
            return self.reconcile_claim(namespace, name).await;
        }
        if let Some(volume) = key.strip_prefix(VOLUME) {
            return self.reconcile_volume(volume).await;
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(name: &str, class: &str, size: &str, modes: &[&str]) -> Value {
        json!({"metadata": {"name": name, "labels": {"tier": "fast"}},
               "spec": {"storageClassName": class, "capacity": {"storage": size}, "accessModes": modes}})
    }

    fn claim(class: &str, size: &str, modes: &[&str]) -> Value {
        json!({"metadata": {"namespace": "default", "name": "data", "uid": "u1"},
               "spec": {"storageClassName": class, "accessModes": modes,
                        "resources": {"requests": {"storage": size}}}})
    }

    #[test]
    fn a_volume_fits_by_class_capacity_modes_and_selector() {
        let want = claim("manual", "1Gi", &["ReadWriteOnce"]);
        let cases = [
            (
                volume("a", "manual", "1Gi", &["ReadWriteOnce", "ReadOnlyMany"]),
                true,
                "fits",
            ),
            (
                volume("b", "manual", "500Mi", &["ReadWriteOnce"]),
                false,
                "too small",
            ),
            (
                volume("c", "other", "5Gi", &["ReadWriteOnce"]),
                false,
                "class",
            ),
            (
                volume("d", "manual", "5Gi", &["ReadOnlyMany"]),
                false,
                "modes",
            ),
        ];
        for (candidate, expected, why) in cases {
            assert_eq!(fits(&candidate, &want, "manual"), expected, "{why}");
        }
        let mut selective = want.clone();
        selective["spec"]["selector"] = json!({"matchLabels": {"tier": "slow"}});
        assert!(!fits(
            &volume("e", "manual", "5Gi", &["ReadWriteOnce"]),
            &selective,
            "manual"
        ));
    }

    #[test]
    fn claim_refs_name_the_claim_by_uid() {
        let want = claim("manual", "1Gi", &["ReadWriteOnce"]);
        let mut v = volume("a", "manual", "1Gi", &["ReadWriteOnce"]);
        assert!(is_free(&v));
        v["spec"]["claimRef"] = claim_ref(&want);
        assert!(!is_free(&v) && claimed_by(&v, &want));
        let mut other = want.clone();
        other["metadata"]["uid"] = json!("u2");
        assert!(
            !claimed_by(&v, &other),
            "a new claim of the same name is another claim"
        );
    }
}
