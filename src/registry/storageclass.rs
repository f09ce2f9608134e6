//! storage.k8s.io/v1 StorageClass: cluster-scoped; the provisioner is required and, with the
//! parameters and policies, fixed once created; reclaimPolicy Delete and volumeBindingMode
//! Immediate by default. The default class prints as `name (default)`.

use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::Value;

use super::fields::{FieldError, NameRule, immutable, is_qualified_name, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct StorageClassStrategy;

static INFO: KindInfo = KindInfo {
    group: "storage.k8s.io",
    version: "v1",
    kind: "StorageClass",
    resource: "storageclasses",
    singular: "storageclass",
    namespaced: false,
    short_names: &["sc"],
    categories: &[],
    tracks_generation: false,
};

const RECLAIM_POLICIES: &[&str] = &["Delete", "Retain"];
const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];
const DEFAULT_ANNOTATIONS: &[&str] = &[
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];

fn is_default(sc: &StorageClass) -> bool {
    let annotations = sc.metadata.annotations.as_ref();
    DEFAULT_ANNOTATIONS.iter().any(|key| {
        annotations
            .and_then(|a| a.get(*key))
            .is_some_and(|v| v == "true")
    })
}

fn check_value(field: &str, value: Option<&String>, supported: &[&str], errors: &mut FieldErrors) {
    if let Some(value) = value
        && !supported.contains(&value.as_str())
    {
        errors.push(FieldError::unsupported(field, value, supported));
    }
}

impl Strategy for StorageClassStrategy {
    type Object = StorageClass;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, sc: &mut StorageClass) {
        sc.reclaim_policy.get_or_insert_with(|| "Delete".into());
        sc.volume_binding_mode
            .get_or_insert_with(|| "Immediate".into());
    }

    fn validate(&self, sc: &StorageClass) -> FieldErrors {
        let mut errors = validate_meta(&sc.metadata, NameRule::Subdomain);
        if sc.provisioner.is_empty() {
            errors.push(FieldError::required("provisioner"));
        } else if !is_qualified_name(&sc.provisioner.to_lowercase()) {
            errors.push(FieldError::invalid(
                "provisioner",
                &sc.provisioner,
                "must be a qualified name such as 'example.com/provisioner'",
            ));
        }
        check_value(
            "reclaimPolicy",
            sc.reclaim_policy.as_ref(),
            RECLAIM_POLICIES,
            &mut errors,
        );
        check_value(
            "volumeBindingMode",
            sc.volume_binding_mode.as_ref(),
            BINDING_MODES,
            &mut errors,
        );
        errors
    }

    fn validate_update(&self, new: &StorageClass, old: &StorageClass) -> FieldErrors {
        let mut errors = self.validate(new);
        let frozen = [
            ("provisioner", new.provisioner != old.provisioner),
            ("parameters", new.parameters != old.parameters),
            ("reclaimPolicy", new.reclaim_policy != old.reclaim_policy),
        ];
        for (field, _) in frozen.iter().filter(|(_, changed)| *changed) {
            let detail = format!("updates to {field} are forbidden.");
            errors.push(FieldError::forbidden(*field, &detail));
        }
        errors.extend(immutable(
            &new.volume_binding_mode,
            &old.volume_binding_mode,
            "volumeBindingMode",
        ));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Provisioner",
                "string",
                "provisioner indicates the type of the provisioner.",
            ),
            Column::new(
                "ReclaimPolicy",
                "string",
                "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class.",
            ),
            Column::new(
                "VolumeBindingMode",
                "string",
                "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.",
            ),
            Column::new(
                "AllowVolumeExpansion",
                "string",
                "allowVolumeExpansion shows whether the storage class allow volume expand.",
            ),
        ]
    }

    fn name_cell(&self, sc: &StorageClass) -> Option<String> {
        let name = sc.metadata.name.clone().unwrap_or_default();
        is_default(sc).then(|| format!("{name} (default)"))
    }

    fn cells(&self, sc: &StorageClass, _now: jiff::Timestamp) -> Vec<Value> {
        vec![
            Value::String(sc.provisioner.clone()),
            Value::String(sc.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
            Value::String(
                sc.volume_binding_mode
                    .clone()
                    .unwrap_or_else(|| "Immediate".into()),
            ),
            Value::Bool(sc.allow_volume_expansion.unwrap_or(false)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn class(provisioner: &str) -> Value {
        json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "local", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": provisioner,
        })
    }

    #[test]
    fn policies_default() {
        let out = StorageClassStrategy
            .admit_create(class("rancher.io/local-path"))
            .expect("admitted");
        assert_eq!(out["reclaimPolicy"], "Delete");
        assert_eq!(out["volumeBindingMode"], "Immediate");
    }

    #[test]
    fn provisioner_required_and_fixed() {
        let err = StorageClassStrategy
            .admit_create(class(""))
            .expect_err("invalid");
        assert!(matches!(err, AdmitError::Invalid(e) if e.0[0].field == "provisioner"));
        let old = StorageClassStrategy
            .admit_create(class("rancher.io/local-path"))
            .expect("admitted");
        let err = StorageClassStrategy
            .admit_update(class("example.com/other"), &old)
            .expect_err("immutable");
        assert!(matches!(err, AdmitError::Invalid(e) if e.0[0].field == "provisioner"));
    }

    #[test]
    fn table_marks_the_default_class() {
        let cells = StorageClassStrategy
            .table_cells(&class("rancher.io/local-path"), jiff::Timestamp::now());
        assert_eq!(
            cells[..5],
            [
                json!("local (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("Immediate"),
                json!(false)
            ]
        );
    }
}
