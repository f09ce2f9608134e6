//! apiextensions.k8s.io/v1 CustomResourceDefinition: names must be consistent
//! (`<plural>.<group>`), exactly one storage version, group and names immutable; the server
//! marks it NamesAccepted and Established at once (kubectl `wait --for condition=established`).
//! Serving the custom resources it defines is `super::custom`'s job.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use super::fields::{FieldError, NameRule, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct CustomResourceDefinitionStrategy;

static INFO: KindInfo = KindInfo {
    group: "apiextensions.k8s.io",
    version: "v1",
    kind: "CustomResourceDefinition",
    resource: "customresourcedefinitions",
    singular: "customresourcedefinition",
    namespaced: false,
    short_names: &["crd", "crds"],
    categories: &["api-extensions"],
    tracks_generation: true,
};

fn established(crd: &mut CustomResourceDefinition) {
    let now = Time(jiff::Timestamp::now());
    let condition = |type_: &str, reason: &str, message: &str| CustomResourceDefinitionCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(now.clone()),
    };
    crd.status = Some(CustomResourceDefinitionStatus {
        accepted_names: Some(crd.spec.names.clone()),
        conditions: Some(vec![
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition(
                "Established",
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ),
        ]),
        stored_versions: Some(
            crd.spec
                .versions
                .iter()
                .filter(|v| v.storage)
                .map(|v| v.name.clone())
                .collect(),
        ),
    });
}

impl Strategy for CustomResourceDefinitionStrategy {
    type Object = CustomResourceDefinition;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, crd: &mut CustomResourceDefinition) {
        let names = &mut crd.spec.names;
        if names.singular.as_deref().unwrap_or("").is_empty() {
            names.singular = Some(names.kind.to_lowercase());
        }
        if names.list_kind.as_deref().unwrap_or("").is_empty() {
            names.list_kind = Some(format!("{}List", names.kind));
        }
    }

    fn prepare_for_create(&self, crd: &mut CustomResourceDefinition) {
        established(crd);
    }

    fn prepare_for_update(
        &self,
        new: &mut CustomResourceDefinition,
        _old: &CustomResourceDefinition,
    ) {
        established(new);
    }

    fn validate(&self, crd: &CustomResourceDefinition) -> FieldErrors {
        let mut errors = validate_meta(&crd.metadata, NameRule::Subdomain);
        let spec = &crd.spec;
        let expected = format!("{}.{}", spec.names.plural, spec.group);
        if crd.metadata.name.as_deref() != Some(expected.as_str()) {
            errors.push(FieldError::invalid(
                "metadata.name",
                crd.metadata.name.as_deref().unwrap_or(""),
                &format!("must be spec.names.plural+\".\"+spec.group ({expected})"),
            ));
        }
        if !spec.group.contains('.') {
            errors.push(FieldError::invalid(
                "spec.group",
                &spec.group,
                "should be a domain with at least one dot",
            ));
        }
        if !matches!(spec.scope.as_str(), "Namespaced" | "Cluster") {
            errors.push(FieldError::unsupported(
                "spec.scope",
                &spec.scope,
                &["Cluster", "Namespaced"],
            ));
        }
        for (field, value) in [
            ("spec.names.plural", &spec.names.plural),
            ("spec.names.kind", &spec.names.kind),
        ] {
            if value.is_empty() {
                errors.push(FieldError::required(field));
            }
        }
        if spec.names.plural != spec.names.plural.to_lowercase() {
            errors.push(FieldError::invalid(
                "spec.names.plural",
                &spec.names.plural,
                "must be lowercase",
            ));
        }
        let storage = spec.versions.iter().filter(|v| v.storage).count();
        if spec.versions.is_empty() {
            errors.push(FieldError::required("spec.versions"));
        } else if storage != 1 {
            errors.push(FieldError::invalid(
                "spec.versions",
                &storage.to_string(),
                "must have exactly one version marked as storage version",
            ));
        }
        errors
    }

    fn validate_update(
        &self,
        new: &CustomResourceDefinition,
        old: &CustomResourceDefinition,
    ) -> FieldErrors {
        let mut errors = self.validate(new);
        if new.spec.group != old.spec.group {
            errors.push(FieldError::invalid(
                "spec.group",
                &new.spec.group,
                "field is immutable",
            ));
        }
        if new.spec.names.plural != old.spec.names.plural || new.spec.scope != old.spec.scope {
            errors.push(FieldError::invalid(
                "spec.names.plural",
                &new.spec.names.plural,
                "field is immutable",
            ));
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::new(
            "Created At",
            "date",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        )]
    }

    fn cells(&self, crd: &CustomResourceDefinition, _now: jiff::Timestamp) -> Vec<Value> {
        let created = crd
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        vec![Value::String(created)]
    }

    fn age_column(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Kind;

    fn crd(name: &str) -> Value {
        serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object"}}}]}
        })
    }

    #[test]
    fn accepted_crds_are_established_and_names_must_match() {
        let ok = CustomResourceDefinitionStrategy
            .admit_create(crd("widgets.example.com"))
            .expect("admitted");
        assert_eq!(ok["status"]["conditions"][1]["type"], "Established");
        assert_eq!(ok["spec"]["names"]["singular"], "widget");
        let errors = crate::registry::create_errors(
            &CustomResourceDefinitionStrategy,
            crd("gadgets.example.com"),
        );
        assert_eq!(errors.0[0].field, "metadata.name");
    }
}
