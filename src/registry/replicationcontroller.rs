//! core/v1 ReplicationController, the ReplicaSet's predecessor (seed 002 still shows it):
//! replicas default to 1, the selector is a plain label map that defaults to the template's
//! labels and must select them, status is the controller's (the ReplicaSet controller runs it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::fields::{FieldError, NameRule, nonnegative, validate_meta};
use super::pod_template::{
    default_template, template_cells, template_columns, validate_selector_and_template,
};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct ReplicationControllerStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "ReplicationController",
    resource: "replicationcontrollers",
    singular: "replicationcontroller",
    namespaced: true,
    short_names: &["rc"],
    categories: &["all"],
    tracks_generation: true,
};

/// The plain map as the LabelSelector the shared workload checks take.
fn as_label_selector(selector: Option<&BTreeMap<String, String>>) -> LabelSelector {
    LabelSelector {
        match_labels: selector.cloned(),
        match_expressions: None,
    }
}

impl Strategy for ReplicationControllerStrategy {
    type Object = ReplicationController;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, rc: &mut ReplicationController) {
        let Some(spec) = rc.spec.as_mut() else {
            return;
        };
        spec.replicas.get_or_insert(1);
        if let Some(template) = spec.template.as_mut() {
            default_template(template);
            let labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
            if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
                spec.selector = labels;
            }
        }
    }

    fn prepare_for_create(&self, rc: &mut ReplicationController) {
        rc.status = None;
    }

    fn prepare_for_update(&self, new: &mut ReplicationController, old: &ReplicationController) {
        new.status = old.status.clone();
    }

    fn validate(&self, rc: &ReplicationController) -> FieldErrors {
        let mut errors = validate_meta(&rc.metadata, NameRule::Subdomain);
        let Some(spec) = &rc.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        errors.extend(nonnegative(spec.replicas, "spec.replicas"));
        errors.extend(nonnegative(spec.min_ready_seconds, "spec.minReadySeconds"));
        errors.extend(validate_selector_and_template(
            &as_label_selector(spec.selector.as_ref()),
            spec.template.as_ref(),
        ));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            Column::new(
                "Desired",
                "integer",
                "Replicas is the number of desired replicas. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1.",
            ),
            Column::new(
                "Current",
                "integer",
                "Replicas is the most recently observed number of replicas.",
            ),
            Column::new(
                "Ready",
                "integer",
                "The number of ready replicas for this replication controller.",
            ),
        ];
        columns.extend(template_columns("Selector is a label query over pods that should match the Replicas count. If Selector is empty, it is defaulted to the labels present on the Pod template."));
        columns
    }

    fn cells(&self, rc: &ReplicationController, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = rc.spec.clone().unwrap_or_default();
        let status = rc.status.clone().unwrap_or_default();
        let mut cells = vec![
            Value::from(spec.replicas.unwrap_or(0)),
            Value::from(status.replicas),
            Value::from(status.ready_replicas.unwrap_or(0)),
        ];
        let selector = as_label_selector(spec.selector.as_ref());
        cells.extend(template_cells(spec.template.as_ref(), Some(&selector)));
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Kind, create_errors};
    use serde_json::json;

    fn manifest() -> Value {
        json!({
            "apiVersion": "v1", "kind": "ReplicationController",
            "metadata": {"name": "nginx", "namespace": "default"},
            "spec": {
                "template": {
                    "metadata": {"labels": {"app": "nginx"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}
                }
            }
        })
    }

    #[test]
    fn selector_and_replicas_default_from_the_template() {
        let rc = ReplicationControllerStrategy
            .admit_create(manifest())
            .expect("admit");
        assert_eq!(rc["spec"]["replicas"], 1);
        assert_eq!(rc["spec"]["selector"], json!({"app": "nginx"}));
        let cells = ReplicationControllerStrategy.table_cells(&rc, jiff::Timestamp::now());
        assert_eq!(
            cells[5..],
            [json!("nginx"), json!("nginx:1.27"), json!("app=nginx")]
        );
    }

    #[test]
    fn a_selector_that_misses_the_template_is_refused() {
        let mut bad = manifest();
        bad["spec"]["selector"] = json!({"app": "db"});
        let errors = create_errors(&ReplicationControllerStrategy, bad);
        assert_eq!(errors.0[0].field, "spec.template.metadata.labels");
    }
}
