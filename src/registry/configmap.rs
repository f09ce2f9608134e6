//! core/v1 ConfigMap: subdomain names, keys checked, `immutable` honoured on update.

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::Value;

use super::fields::{FieldError, NameRule, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct ConfigMapStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    resource: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    tracks_generation: false,
};

/// ConfigMap and Secret keys: `[-._a-zA-Z0-9]+`.
/// The most a ConfigMap's or Secret's data may hold (kube's MaxSecretSize, 1 MiB).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Errors when the values of `maps` add up to more than MAX_DATA_BYTES.
pub fn validate_data_size<'a, V: 'a>(
    maps: impl Iterator<Item = &'a std::collections::BTreeMap<String, V>>,
    size: impl Fn(&V) -> usize,
    errors: &mut FieldErrors,
) {
    let total: usize = maps
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len() + size(v))
        .sum();
    if total > MAX_DATA_BYTES {
        errors.push(FieldError::too_long("data", MAX_DATA_BYTES));
    }
}

pub fn validate_data_keys<'a>(
    field: &str,
    keys: impl Iterator<Item = &'a String>,
    errors: &mut FieldErrors,
) {
    for key in keys {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            errors.push(FieldError::invalid(
                field,
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

impl Strategy for ConfigMapStrategy {
    type Object = ConfigMap;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, cm: &ConfigMap) -> FieldErrors {
        let mut errors = validate_meta(&cm.metadata, NameRule::Subdomain);
        validate_data_keys("data", cm.data.iter().flat_map(|d| d.keys()), &mut errors);
        validate_data_size(cm.data.iter(), String::len, &mut errors);
        validate_data_keys(
            "binaryData",
            cm.binary_data.iter().flat_map(|d| d.keys()),
            &mut errors,
        );
        errors
    }

    fn validate_update(&self, new: &ConfigMap, old: &ConfigMap) -> FieldErrors {
        let mut errors = self.validate(new);
        if old.immutable == Some(true) {
            if new.immutable != Some(true) {
                errors.push(FieldError::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
            if new.data != old.data || new.binary_data != old.binary_data {
                errors.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::new(
            "Data",
            "integer",
            "Data contains the configuration data.",
        )]
    }

    fn cells(&self, cm: &ConfigMap, _now: jiff::Timestamp) -> Vec<Value> {
        let n = cm.data.as_ref().map_or(0, |d| d.len())
            + cm.binary_data.as_ref().map_or(0, |d| d.len());
        vec![Value::from(n)]
    }
}
