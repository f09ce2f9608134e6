//! apps/v1 Deployment: replicas/strategy/history defaults, the selector must match the
//! template's labels and is immutable (rules shared in `pod_template`), generation counts
//! spec changes, status is the controller's.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentStrategy as RolloutStrategy, RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::fields::{FieldError, NameRule, nonnegative, validate_meta};
use super::pod_template::{
    default_template, template_cells, template_columns, validate_selector_and_template,
    validate_selector_unchanged,
};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct DeploymentStrategy;

static INFO: KindInfo = KindInfo {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    resource: "deployments",
    singular: "deployment",
    namespaced: true,
    short_names: &["deploy"],
    categories: &["all"],
    tracks_generation: true,
};

impl Strategy for DeploymentStrategy {
    type Object = Deployment;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, d: &mut Deployment) {
        let Some(spec) = d.spec.as_mut() else {
            return;
        };
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        let strategy = spec.strategy.get_or_insert_with(RolloutStrategy::default);
        let kind = strategy
            .type_
            .get_or_insert_with(|| "RollingUpdate".into())
            .clone();
        if kind == "RollingUpdate" {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDeployment::default);
            ru.max_surge
                .get_or_insert_with(|| IntOrString::String("25%".into()));
            ru.max_unavailable
                .get_or_insert_with(|| IntOrString::String("25%".into()));
        }
        default_template(&mut spec.template);
    }

    fn prepare_for_create(&self, d: &mut Deployment) {
        d.status = None;
    }

    fn prepare_for_update(&self, new: &mut Deployment, old: &Deployment) {
        new.status = old.status.clone();
    }

    fn validate(&self, d: &Deployment) -> FieldErrors {
        let mut errors = validate_meta(&d.metadata, NameRule::Subdomain);
        let Some(spec) = &d.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        errors.extend(nonnegative(spec.replicas, "spec.replicas"));
        errors.extend(validate_selector_and_template(
            &spec.selector,
            Some(&spec.template),
        ));
        errors
    }

    fn validate_update(&self, new: &Deployment, old: &Deployment) -> FieldErrors {
        let mut errors = self.validate(new);
        errors.extend(validate_selector_unchanged(new, old, |d| {
            d.spec.as_ref().map(|s| &s.selector)
        }));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            Column::new("Ready", "string", "Number of the pod with ready state"),
            Column::new(
                "Up-to-date",
                "string",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            Column::new(
                "Available",
                "string",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
        ];
        columns.extend(template_columns("Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."));
        columns
    }

    fn cells(&self, d: &Deployment, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = d.spec.clone().unwrap_or_default();
        let status = d.status.clone().unwrap_or_default();
        let mut cells = vec![
            Value::String(format!(
                "{}/{}",
                status.ready_replicas.unwrap_or(0),
                spec.replicas.unwrap_or(1)
            )),
            Value::from(status.updated_replicas.unwrap_or(0)),
            Value::from(status.available_replicas.unwrap_or(0)),
        ];
        cells.extend(template_cells(Some(&spec.template), Some(&spec.selector)));
        cells
    }
}
