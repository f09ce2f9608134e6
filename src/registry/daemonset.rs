//! apps/v1 DaemonSet: rolling updates one node at a time without surge and ten revisions by
//! default, the selector picks the template's pods and never changes, status is the
//! controller's.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::fields::{FieldError, NameRule, nonnegative, validate_meta};
use super::pod_template::{
    default_template, format_labels, template_cells, template_columns,
    validate_selector_and_template, validate_selector_unchanged,
};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct DaemonSetStrategy;

static INFO: KindInfo = KindInfo {
    group: "apps",
    version: "v1",
    kind: "DaemonSet",
    resource: "daemonsets",
    singular: "daemonset",
    namespaced: true,
    short_names: &["ds"],
    categories: &["all"],
    tracks_generation: true,
};

impl Strategy for DaemonSetStrategy {
    type Object = DaemonSet;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, ds: &mut DaemonSet) {
        let Some(spec) = ds.spec.as_mut() else {
            return;
        };
        spec.revision_history_limit.get_or_insert(10);
        let strategy = spec
            .update_strategy
            .get_or_insert_with(DaemonSetUpdateStrategy::default);
        let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if kind == "RollingUpdate" {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDaemonSet::default);
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        default_template(&mut spec.template);
    }

    fn prepare_for_create(&self, ds: &mut DaemonSet) {
        ds.status = None;
    }

    fn prepare_for_update(&self, new: &mut DaemonSet, old: &DaemonSet) {
        new.status = old.status.clone();
    }

    fn validate(&self, ds: &DaemonSet) -> FieldErrors {
        let mut errors = validate_meta(&ds.metadata, NameRule::Subdomain);
        let Some(spec) = &ds.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        errors.extend(nonnegative(spec.min_ready_seconds, "spec.minReadySeconds"));
        if let Some(kind) = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            && !matches!(kind, "RollingUpdate" | "OnDelete")
        {
            errors.push(FieldError::unsupported(
                "spec.updateStrategy.type",
                kind,
                &["OnDelete", "RollingUpdate"],
            ));
        }
        errors.extend(validate_selector_and_template(
            &spec.selector,
            Some(&spec.template),
        ));
        errors
    }

    fn validate_update(&self, new: &DaemonSet, old: &DaemonSet) -> FieldErrors {
        let mut errors = self.validate(new);
        errors.extend(validate_selector_unchanged(new, old, |ds| {
            ds.spec.as_ref().map(|s| &s.selector)
        }));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            Column::new(
                "Desired",
                "integer",
                "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod). More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
            ),
            Column::new(
                "Current",
                "integer",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod. More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
            ),
            Column::new(
                "Ready",
                "integer",
                "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
            ),
            Column::new(
                "Up-to-date",
                "integer",
                "The total number of nodes that are running updated daemon pod",
            ),
            Column::new(
                "Available",
                "integer",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
            ),
            Column::new(
                "Node Selector",
                "string",
                "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node. More info: https://kubernetes.io/docs/concepts/configuration/assign-pod-node/",
            ),
        ];
        columns.extend(template_columns("A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"));
        columns
    }

    fn cells(&self, ds: &DaemonSet, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = ds.spec.clone().unwrap_or_default();
        let status = ds.status.clone().unwrap_or_default();
        let node_selector = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.as_ref());
        let mut cells = vec![
            Value::from(status.desired_number_scheduled),
            Value::from(status.current_number_scheduled),
            Value::from(status.number_ready),
            Value::from(status.updated_number_scheduled.unwrap_or(0)),
            Value::from(status.number_available.unwrap_or(0)),
            format_labels(node_selector),
        ];
        cells.extend(template_cells(Some(&spec.template), Some(&spec.selector)));
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
        let mut m = workload_manifest("DaemonSet", "agent", "agent:1");
        m["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
        m
    }

    #[test]
    fn defaults_match_kube() {
        let ds = DaemonSetStrategy.admit_create(manifest()).expect("admit");
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
    }

    #[test]
    fn template_must_restart_always() {
        let mut bad = manifest();
        bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        let errors = create_errors(&DaemonSetStrategy, bad);
        assert_eq!(errors.0[0].field, "spec.template.spec.restartPolicy");
        assert!(errors.0[0].message.starts_with("Unsupported value"));
    }

    #[test]
    fn table_cells() {
        let ds = DaemonSetStrategy.admit_create(manifest()).expect("admit");
        let names = column_names(&DaemonSetStrategy);
        assert_eq!(
            names,
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let cells = DaemonSetStrategy.table_cells(&ds, jiff::Timestamp::now());
        assert_eq!(cells[6], json!("kubernetes.io/os=linux"));
        assert_eq!(cells[10], json!("app=agent"));
    }
}
