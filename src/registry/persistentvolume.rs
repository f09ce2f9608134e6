//! core/v1 PersistentVolume: cluster-scoped; reclaim policy Retain and volume mode Filesystem
//! by default; capacity.storage and access modes required; phase Pending until a binder (not
//! yet) moves it. The access-mode and storage-class helpers here serve claims too.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeSpec, PersistentVolumeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::Value;

use super::fields::{FieldError, NameRule, validate_meta};
use super::quantity::{self, QUANTITY_MSG};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct PersistentVolumeStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "PersistentVolume",
    resource: "persistentvolumes",
    singular: "persistentvolume",
    namespaced: false,
    short_names: &["pv"],
    categories: &[],
    tracks_generation: false,
};

/// Access modes with kubectl's abbreviations, in the order it prints them.
const ACCESS_MODES: &[(&str, &str)] = &[
    ("ReadWriteOnce", "RWO"),
    ("ReadOnlyMany", "ROX"),
    ("ReadWriteMany", "RWX"),
    ("ReadWriteOncePod", "RWOP"),
];
const RECLAIM_POLICIES: &[&str] = &["Delete", "Recycle", "Retain"];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];
/// The pre-`storageClassName` annotation, still honoured over the field.
const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// `RWO,RWX` as kubectl's ACCESS MODES column shows them.
pub fn access_modes_short(modes: Option<&Vec<String>>) -> String {
    let modes = modes.map(Vec::as_slice).unwrap_or_default();
    let short: Vec<&str> = ACCESS_MODES
        .iter()
        .filter(|(long, _)| modes.iter().any(|m| m == long))
        .map(|(_, short)| *short)
        .collect();
    short.join(",")
}

/// At least one known access mode; ReadWriteOncePod only on its own.
pub fn validate_access_modes(field: &str, modes: Option<&Vec<String>>, errors: &mut FieldErrors) {
    let modes = modes.map(Vec::as_slice).unwrap_or_default();
    if modes.is_empty() {
        errors.push(FieldError::required(field));
    }
    let known: Vec<&str> = ACCESS_MODES.iter().map(|(long, _)| *long).collect();
    for mode in modes {
        if !known.contains(&mode.as_str()) {
            errors.push(FieldError::unsupported(field, mode, &known));
        }
    }
    if modes.len() > 1 && modes.iter().any(|m| m == "ReadWriteOncePod") {
        errors.push(FieldError::forbidden(
            field,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

/// `storage` of a resource list: required, a quantity, above zero. Returns its value.
pub fn validate_storage(
    field: &str,
    list: Option<&BTreeMap<String, Quantity>>,
    errors: &mut FieldErrors,
) -> Option<f64> {
    let Some(Quantity(raw)) = list.and_then(|l| l.get("storage")) else {
        errors.push(FieldError::required(field));
        return None;
    };
    match quantity::parse(raw) {
        None => errors.push(FieldError::invalid(field, raw, QUANTITY_MSG)),
        Some(v) if v <= 0.0 => {
            errors.push(FieldError::invalid(field, raw, "must be greater than zero"))
        }
        Some(v) => return Some(v),
    }
    None
}

/// The class a volume or claim asks for: the beta annotation wins over the field.
pub fn storage_class(meta: &ObjectMeta, field: Option<&String>) -> String {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(BETA_CLASS_ANNOTATION))
        .or(field)
        .cloned()
        .unwrap_or_default()
}

/// volumeMode, when set, is Block or Filesystem.
pub fn validate_volume_mode(mode: Option<&String>, errors: &mut FieldErrors) {
    if let Some(mode) = mode
        && !VOLUME_MODES.contains(&mode.as_str())
    {
        errors.push(FieldError::unsupported(
            "spec.volumeMode",
            mode,
            VOLUME_MODES,
        ));
    }
}

/// The STATUS cell: the phase, or `Terminating` once deletion has begun.
pub fn phase_cell(meta: &ObjectMeta, phase: Option<String>) -> Value {
    Value::String(match meta.deletion_timestamp {
        Some(_) => "Terminating".into(),
        None => phase.unwrap_or_default(),
    })
}

/// The CAPACITY cell: `storage` of a resource list as written, `0` when absent.
pub fn storage_cell(list: Option<&BTreeMap<String, Quantity>>) -> Value {
    let storage = list.and_then(|l| l.get("storage"));
    Value::String(storage.map_or_else(|| "0".into(), |q| q.0.clone()))
}

/// `<unset>` for an absent optional value, as the volume printers show it.
pub fn or_unset(value: Option<&String>) -> Value {
    Value::String(value.cloned().unwrap_or_else(|| "<unset>".into()))
}

impl Strategy for PersistentVolumeStrategy {
    type Object = PersistentVolume;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, pv: &mut PersistentVolume) {
        let spec = pv.spec.get_or_insert_with(PersistentVolumeSpec::default);
        spec.persistent_volume_reclaim_policy
            .get_or_insert_with(|| "Retain".into());
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    }

    fn prepare_for_create(&self, pv: &mut PersistentVolume) {
        pv.status = Some(PersistentVolumeStatus {
            phase: Some("Pending".into()),
            last_phase_transition_time: Some(Time(jiff::Timestamp::now())),
            ..Default::default()
        });
    }

    fn prepare_for_update(&self, new: &mut PersistentVolume, old: &PersistentVolume) {
        new.status = old.status.clone();
    }

    fn validate(&self, pv: &PersistentVolume) -> FieldErrors {
        let mut errors = validate_meta(&pv.metadata, NameRule::Subdomain);
        let Some(spec) = &pv.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        validate_storage("spec.capacity.storage", spec.capacity.as_ref(), &mut errors);
        validate_access_modes("spec.accessModes", spec.access_modes.as_ref(), &mut errors);
        if let Some(policy) = &spec.persistent_volume_reclaim_policy
            && !RECLAIM_POLICIES.contains(&policy.as_str())
        {
            errors.push(FieldError::unsupported(
                "spec.persistentVolumeReclaimPolicy",
                policy,
                RECLAIM_POLICIES,
            ));
        }
        validate_volume_mode(spec.volume_mode.as_ref(), &mut errors);
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Capacity",
                "string",
                "capacity is the description of the persistent volume's resources and capacity.",
            ),
            Column::new(
                "Access Modes",
                "string",
                "accessModes contains all ways the volume can be mounted.",
            ),
            Column::new(
                "Reclaim Policy",
                "string",
                "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
            ),
            Column::new(
                "Status",
                "string",
                "phase indicates if a volume is available, bound to a claim, or released by a claim.",
            ),
            Column::new(
                "Claim",
                "string",
                "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
            ),
            Column::new("StorageClass", "string", "StorageClass of the pv"),
            Column::new(
                "VolumeAttributesClass",
                "string",
                "VolumeAttributesClass of the pv",
            ),
            Column::new(
                "Reason",
                "string",
                "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
            ),
            Column::new(
                "VolumeMode",
                "string",
                "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
            )
            .wide(),
        ]
    }

    fn cells(&self, pv: &PersistentVolume, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = pv.spec.clone().unwrap_or_default();
        let status = pv.status.clone().unwrap_or_default();
        let claim = spec
            .claim_ref
            .as_ref()
            .map(|r| {
                format!(
                    "{}/{}",
                    r.namespace.as_deref().unwrap_or(""),
                    r.name.as_deref().unwrap_or("")
                )
            })
            .unwrap_or_default();
        vec![
            storage_cell(spec.capacity.as_ref()),
            Value::String(access_modes_short(spec.access_modes.as_ref())),
            Value::String(spec.persistent_volume_reclaim_policy.unwrap_or_default()),
            phase_cell(&pv.metadata, status.phase),
            Value::String(claim),
            Value::String(storage_class(
                &pv.metadata,
                spec.storage_class_name.as_ref(),
            )),
            or_unset(spec.volume_attributes_class_name.as_ref()),
            Value::String(status.reason.unwrap_or_default()),
            or_unset(spec.volume_mode.as_ref()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Kind;
    use serde_json::json;

    fn pv(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "data"}, "spec": spec})
    }

    #[test]
    fn defaults_and_pending_phase() {
        let out = PersistentVolumeStrategy
            .admit_create(pv(json!({
                "capacity": {"storage": "5Gi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": "/tmp/data"},
            })))
            .expect("admitted");
        assert_eq!(out["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(out["spec"]["volumeMode"], "Filesystem");
        assert_eq!(out["status"]["phase"], "Pending");
    }

    #[test]
    fn capacity_and_access_modes_are_required() {
        let err = PersistentVolumeStrategy
            .admit_create(pv(json!({"accessModes": ["Sometimes"]})))
            .expect_err("invalid");
        let crate::registry::AdmitError::Invalid(errors) = err else {
            panic!("{err:?}");
        };
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.capacity.storage", "spec.accessModes"]);
    }

    #[test]
    fn table_cells_abbreviate_access_modes() {
        let mut obj = pv(json!({
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "claimRef": {"namespace": "ns", "name": "claim"},
            "storageClassName": "fast",
        }));
        obj["status"] = json!({"phase": "Bound"});
        let names: Vec<&str> = PersistentVolumeStrategy
            .table_columns()
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names[8..], ["Reason", "Age", "VolumeMode"]);
        let cells = PersistentVolumeStrategy.table_cells(&obj, jiff::Timestamp::now());
        assert_eq!(
            cells[..8],
            [
                json!("data"),
                json!("1Gi"),
                json!("RWO,RWX"),
                json!("Delete"),
                json!("Bound"),
                json!("ns/claim"),
                json!("fast"),
                json!("<unset>")
            ]
        );
        assert_eq!(cells[10], "<unset>");
    }
}
