//! apps/v1 ReplicaSet: replicas default to 1, the selector must pick the template's pods and
//! never changes, generation counts spec changes, status is the controller's.

use k8s_openapi::api::apps::v1::ReplicaSet;
use serde_json::Value;

use super::fields::{FieldError, NameRule, nonnegative, validate_meta};
use super::pod_template::{
    default_template, template_cells, template_columns, validate_selector_and_template,
    validate_selector_unchanged,
};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct ReplicaSetStrategy;

static INFO: KindInfo = KindInfo {
    group: "apps",
    version: "v1",
    kind: "ReplicaSet",
    resource: "replicasets",
    singular: "replicaset",
    namespaced: true,
    short_names: &["rs"],
    categories: &["all"],
    tracks_generation: true,
};

impl Strategy for ReplicaSetStrategy {
    type Object = ReplicaSet;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, rs: &mut ReplicaSet) {
        let Some(spec) = rs.spec.as_mut() else {
            return;
        };
        spec.replicas.get_or_insert(1);
        if let Some(template) = spec.template.as_mut() {
            default_template(template);
        }
    }

    fn prepare_for_create(&self, rs: &mut ReplicaSet) {
        rs.status = None;
    }

    fn prepare_for_update(&self, new: &mut ReplicaSet, old: &ReplicaSet) {
        new.status = old.status.clone();
    }

    fn validate(&self, rs: &ReplicaSet) -> FieldErrors {
        let mut errors = validate_meta(&rs.metadata, NameRule::Subdomain);
        let Some(spec) = &rs.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        errors.extend(nonnegative(spec.replicas, "spec.replicas"));
        errors.extend(nonnegative(spec.min_ready_seconds, "spec.minReadySeconds"));
        errors.extend(validate_selector_and_template(
            &spec.selector,
            spec.template.as_ref(),
        ));
        errors
    }

    fn validate_update(&self, new: &ReplicaSet, old: &ReplicaSet) -> FieldErrors {
        let mut errors = self.validate(new);
        errors.extend(validate_selector_unchanged(new, old, |rs| {
            rs.spec.as_ref().map(|s| &s.selector)
        }));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            Column::new(
                "Desired",
                "integer",
                "Replicas is the number of desired pods. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset",
            ),
            Column::new(
                "Current",
                "integer",
                "Replicas is the most recently observed number of non-terminating pods. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset",
            ),
            Column::new(
                "Ready",
                "integer",
                "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.",
            ),
        ];
        columns.extend(template_columns("Selector is a label query over pods that should match the replica count. Label keys and values that must match in order to be controlled by this replica set. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"));
        columns
    }

    fn cells(&self, rs: &ReplicaSet, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = rs.spec.clone().unwrap_or_default();
        let status = rs.status.clone().unwrap_or_default();
        let mut cells = vec![
            Value::from(spec.replicas.unwrap_or(0)),
            Value::from(status.replicas),
            Value::from(status.ready_replicas.unwrap_or(0)),
        ];
        cells.extend(template_cells(spec.template.as_ref(), Some(&spec.selector)));
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::pod_template::workload_manifest;
    use crate::registry::{Kind, column_names, create_errors};
    use serde_json::json;

    fn manifest() -> Value {
        workload_manifest("ReplicaSet", "web", "nginx:1.27")
    }

    #[test]
    fn defaults_replicas_and_pod_spec() {
        let rs = ReplicaSetStrategy.admit_create(manifest()).expect("admit");
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(rs["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn selector_must_match_and_stay() {
        let mut bad = manifest();
        bad["spec"]["selector"]["matchLabels"]["app"] = json!("db");
        let errors = create_errors(&ReplicaSetStrategy, bad);
        assert_eq!(errors.0[0].field, "spec.template.metadata.labels");

        let old = ReplicaSetStrategy.admit_create(manifest()).expect("admit");
        let mut new = old.clone();
        new["spec"]["selector"]["matchLabels"]["tier"] = json!("x");
        new["spec"]["template"]["metadata"]["labels"]["tier"] = json!("x");
        assert!(ReplicaSetStrategy.admit_update(new, &old).is_err());
    }

    #[test]
    fn table_cells() {
        let rs = ReplicaSetStrategy.admit_create(manifest()).expect("admit");
        let now = jiff::Timestamp::now();
        let names = column_names(&ReplicaSetStrategy);
        assert_eq!(
            names,
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let cells = ReplicaSetStrategy.table_cells(&rs, now);
        assert_eq!(cells[1..4], [json!(1), json!(0), json!(0)]);
        assert_eq!(
            cells[5..],
            [json!("web"), json!("nginx:1.27"), json!("app=web")]
        );
    }
}
