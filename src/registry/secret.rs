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

/// The keys a typed Secret must carry, as kube-apiserver's ValidateSecret checks them (a
/// `kubernetes.io/tls` Secret without `tls.key` would be accepted and then fail in the
/// ingress that uses it).
fn validate_type_keys(secret: &Secret, errors: &mut FieldErrors) {
    let has = |key: &str| secret.data.as_ref().is_some_and(|d| d.contains_key(key));
    let required: &[&str] = match secret.type_.as_deref().unwrap_or("") {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        // Either may be empty, but one must be there.
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            &["username", "password"]
        }
        _ => &[],
    };
    for key in required.iter().filter(|k| !has(k)) {
        errors.push(FieldError::required(format!("data[{key}]")));
    }
}

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
        validate_type_keys(secret, &mut errors);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(type_: &str, keys: &[&str]) -> Secret {
        let data: serde_json::Map<String, Value> = keys
            .iter()
            .map(|k| (k.to_string(), Value::String("eA==".into())))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "default"},
            "type": type_,
            "data": data,
        }))
        .expect("secret")
    }

    #[test]
    fn typed_secrets_need_their_keys() {
        let errors = SecretStrategy.validate(&secret("kubernetes.io/tls", &["foo"]));
        let text = format!("{errors:?}");
        assert!(
            text.contains("data[tls.crt]") && text.contains("data[tls.key]"),
            "{text}"
        );
        assert!(
            SecretStrategy
                .validate(&secret("kubernetes.io/tls", &["tls.crt", "tls.key"]))
                .is_empty()
        );
        assert!(
            SecretStrategy
                .validate(&secret("kubernetes.io/basic-auth", &["password"]))
                .is_empty()
        );
        assert!(
            !SecretStrategy
                .validate(&secret("kubernetes.io/basic-auth", &[]))
                .is_empty()
        );
        assert!(SecretStrategy.validate(&secret("Opaque", &[])).is_empty());
    }
}
