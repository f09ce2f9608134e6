//! core/v1 PersistentVolumeClaim: volume mode Filesystem by default; access modes and a
//! storage request required; phase Pending until bound. After creation the spec is fixed
//! except that the storage request may grow and an unset volumeName may be filled (binding).

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
};
use serde_json::Value;

use super::fields::{FieldError, NameRule, validate_meta};
use super::persistentvolume::{
    access_modes_short, or_unset, phase_cell, storage_cell, storage_class, validate_access_modes,
    validate_storage, validate_volume_mode,
};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct PersistentVolumeClaimStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "PersistentVolumeClaim",
    resource: "persistentvolumeclaims",
    singular: "persistentvolumeclaim",
    namespaced: true,
    short_names: &["pvc"],
    categories: &[],
    tracks_generation: false,
};

const STORAGE_FIELD: &str = "spec.resources.requests.storage";

/// The claim's storage request in bytes, when it has a valid one.
fn requested_storage(spec: &PersistentVolumeClaimSpec) -> Option<f64> {
    let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
    validate_storage(STORAGE_FIELD, requests, &mut FieldErrors::default())
}

impl Strategy for PersistentVolumeClaimStrategy {
    type Object = PersistentVolumeClaim;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, pvc: &mut PersistentVolumeClaim) {
        let spec = pvc
            .spec
            .get_or_insert_with(PersistentVolumeClaimSpec::default);
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    }

    fn prepare_for_create(&self, pvc: &mut PersistentVolumeClaim) {
        pvc.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
    }

    fn prepare_for_update(&self, new: &mut PersistentVolumeClaim, old: &PersistentVolumeClaim) {
        new.status = old.status.clone();
    }

    fn validate(&self, pvc: &PersistentVolumeClaim) -> FieldErrors {
        let mut errors = validate_meta(&pvc.metadata, NameRule::Subdomain);
        let Some(spec) = &pvc.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        validate_access_modes("spec.accessModes", spec.access_modes.as_ref(), &mut errors);
        let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
        validate_storage(STORAGE_FIELD, requests, &mut errors);
        validate_volume_mode(spec.volume_mode.as_ref(), &mut errors);
        errors
    }

    fn validate_update(
        &self,
        new: &PersistentVolumeClaim,
        old: &PersistentVolumeClaim,
    ) -> FieldErrors {
        let mut errors = self.validate(new);
        let (Some(new_spec), Some(old_spec)) = (&new.spec, &old.spec) else {
            return errors;
        };
        // The spec minus what may change must equal the old one.
        let mut fixed = new_spec.clone();
        let old_requests = old_spec.resources.as_ref().and_then(|r| r.requests.clone());
        if let Some(resources) = fixed.resources.as_mut() {
            resources.requests = old_requests;
        }
        if old_spec.volume_name.as_deref().unwrap_or("").is_empty() {
            fixed.volume_name = old_spec.volume_name.clone();
        }
        // A claim without a class may be given the default one (retroactive default
        // StorageClass assignment, as Kubernetes 1.28+ does).
        if old_spec.storage_class_name.is_none() {
            fixed.storage_class_name = None;
        }
        if fixed != *old_spec {
            errors.push(FieldError::forbidden(
                "spec",
                "spec is immutable after creation except resources.requests, and volumeName and storageClassName when they were unset",
            ));
        }
        if let (Some(now), Some(before)) =
            (requested_storage(new_spec), requested_storage(old_spec))
            && now < before
        {
            errors.push(FieldError::forbidden(
                STORAGE_FIELD,
                "field can not be less than previous value",
            ));
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Status",
                "string",
                "phase represents the current phase of PersistentVolumeClaim.",
            ),
            Column::new(
                "Volume",
                "string",
                "volumeName is the binding reference to the PersistentVolume backing this claim.",
            ),
            Column::new(
                "Capacity",
                "string",
                "capacity represents the actual resources of the underlying volume.",
            ),
            Column::new(
                "Access Modes",
                "string",
                "accessModes contains the actual access modes the volume backing the PVC has.",
            ),
            Column::new("StorageClass", "string", "StorageClass of the pvc"),
            Column::new(
                "VolumeAttributesClass",
                "string",
                "VolumeAttributesClass of the pvc",
            ),
            Column::new(
                "VolumeMode",
                "string",
                "volumeMode defines what type of volume is required by the claim.",
            )
            .wide(),
        ]
    }

    fn cells(&self, pvc: &PersistentVolumeClaim, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = pvc.spec.clone().unwrap_or_default();
        let status = pvc.status.clone().unwrap_or_default();
        let volume = spec.volume_name.clone().unwrap_or_default();
        // Capacity and modes are the bound volume's, shown once there is one.
        let (capacity, modes) = if volume.is_empty() {
            (Value::String(String::new()), String::new())
        } else {
            let modes = access_modes_short(status.access_modes.as_ref());
            (storage_cell(status.capacity.as_ref()), modes)
        };
        vec![
            phase_cell(&pvc.metadata, status.phase),
            Value::String(volume),
            capacity,
            Value::String(modes),
            Value::String(storage_class(
                &pvc.metadata,
                spec.storage_class_name.as_ref(),
            )),
            or_unset(spec.volume_attributes_class_name.as_ref()),
            or_unset(spec.volume_mode.as_ref()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn claim(storage: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}},
        })
    }

    fn invalid_fields(result: Result<Value, AdmitError>) -> Vec<String> {
        match result {
            Err(AdmitError::Invalid(errors)) => errors.0.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_pending_phase() {
        let out = PersistentVolumeClaimStrategy
            .admit_create(claim("1Gi"))
            .expect("admitted");
        assert_eq!(out["spec"]["volumeMode"], "Filesystem");
        assert_eq!(out["status"]["phase"], "Pending");
    }

    #[test]
    fn storage_request_required_and_only_grows() {
        let mut no_request = claim("1Gi");
        no_request["spec"]["resources"] = json!({});
        assert_eq!(
            invalid_fields(PersistentVolumeClaimStrategy.admit_create(no_request)),
            [STORAGE_FIELD]
        );
        let old = PersistentVolumeClaimStrategy
            .admit_create(claim("2Gi"))
            .expect("admitted");
        let mut grown = old.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("3Gi");
        grown["spec"]["volumeName"] = json!("pv-1");
        PersistentVolumeClaimStrategy
            .admit_update(grown, &old)
            .expect("grow and bind");
        let mut shrunk = old.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = json!("1Gi");
        assert_eq!(
            invalid_fields(PersistentVolumeClaimStrategy.admit_update(shrunk, &old)),
            [STORAGE_FIELD]
        );
        let mut other_mode = old.clone();
        other_mode["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(
            invalid_fields(PersistentVolumeClaimStrategy.admit_update(other_mode, &old)),
            ["spec"]
        );
    }

    #[test]
    fn table_cells_show_the_bound_volume() {
        let mut obj = claim("1Gi");
        obj["spec"]["volumeName"] = json!("pv-1");
        obj["spec"]["storageClassName"] = json!("local");
        obj["status"] = json!({"phase": "Bound", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]});
        let cells = PersistentVolumeClaimStrategy.table_cells(&obj, jiff::Timestamp::now());
        assert_eq!(
            cells[..7],
            [
                json!("data"),
                json!("Bound"),
                json!("pv-1"),
                json!("1Gi"),
                json!("RWO"),
                json!("local"),
                json!("<unset>")
            ]
        );
    }
}
