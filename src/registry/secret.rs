//! core/v1 Secret: type defaults to Opaque; data keys checked (base64 is checked by decoding
//! into ByteString); `immutable` honoured.

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use super::configmap::{validate_data_keys, validate_data_size};
use super::fields::{FieldError, NameRule, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct SecretStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Secret",
    resource: "secrets",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};

impl Strategy for SecretStrategy {
    type Object = Secret;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, secret: &mut Secret) {
        if secret.type_.as_deref().unwrap_or("").is_empty() {
            secret.type_ = Some("Opaque".into());
        }
        // stringData is write-only: folded into data.
        if let Some(string_data) = secret.string_data.take() {
            let data = secret.data.get_or_insert_with(Default::default);
            for (k, v) in string_data {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
    }

    fn validate(&self, secret: &Secret) -> FieldErrors {
        let mut errors = validate_meta(&secret.metadata, NameRule::Subdomain);
        validate_data_keys(
            "data",
            secret.data.iter().flat_map(|d| d.keys()),
            &mut errors,
        );
        validate_data_size(secret.data.iter(), |v| v.0.len(), &mut errors);
        errors
    }

    fn validate_update(&self, new: &Secret, old: &Secret) -> FieldErrors {
        let mut errors = self.validate(new);
        if new.type_ != old.type_ {
            errors.push(FieldError::invalid(
                "type",
                new.type_.as_deref().unwrap_or(""),
                "field is immutable",
            ));
        }
        if old.immutable == Some(true) && (new.data != old.data || new.immutable != Some(true)) {
            errors.push(FieldError::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Type", "string", "The type of the secret"),
            Column::new("Data", "integer", "The number of entries in the secret"),
        ]
    }

    fn cells(&self, secret: &Secret, _now: jiff::Timestamp) -> Vec<Value> {
        vec![
            Value::String(secret.type_.clone().unwrap_or_default()),
            Value::from(secret.data.as_ref().map_or(0, |d| d.len())),
        ]
    }
}
