//! apps/v1 Deployment: replicas/strategy/history defaults, the selector must match the
//! template's labels and is immutable, generation counts spec changes, status is the
//! controller's.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentStrategy as RolloutStrategy, RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::fields::{FieldError, NameRule, or_none, validate_meta};
use super::pod::{default_pod_spec, validate_pod_spec};
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
        if let Some(pod_spec) = spec.template.spec.as_mut() {
            default_pod_spec(pod_spec);
        }
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
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        if selector.is_empty() && spec.selector.match_expressions.is_none() {
            errors.push(FieldError::required("spec.selector"));
        }
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        if selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            errors.push(FieldError::invalid(
                "spec.template.metadata.labels",
                &format!("{labels:?}"),
                "`selector` does not match template `labels`",
            ));
        }
        if spec.replicas.is_some_and(|r| r < 0) {
            errors.push(FieldError::invalid(
                "spec.replicas",
                &spec.replicas.unwrap_or_default().to_string(),
                "must be greater than or equal to 0",
            ));
        }
        match &spec.template.spec {
            Some(pod) => errors.extend(validate_pod_spec(pod, "spec.template.spec")),
            None => errors.push(FieldError::required("spec.template.spec")),
        }
        errors
    }

    fn validate_update(&self, new: &Deployment, old: &Deployment) -> FieldErrors {
        let mut errors = self.validate(new);
        let selector = |d: &Deployment| d.spec.as_ref().map(|s| s.selector.clone());
        if selector(new) != selector(old) {
            errors.push(FieldError::invalid(
                "spec.selector",
                "",
                "field is immutable",
            ));
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Ready", "string", "Number of the pod with ready state"),
            Column::new("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            Column::new("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            Column::new("Containers", "string", "Names of each container in the template.").wide(),
            Column::new("Images", "string", "Images referenced by each container in the template.").wide(),
            Column::new("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.").wide(),
        ]
    }

    fn cells(&self, d: &Deployment, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = d.spec.clone().unwrap_or_default();
        let status = d.status.clone().unwrap_or_default();
        let containers = spec
            .template
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let names: Vec<String> = containers.iter().map(|c| c.name.clone()).collect();
        let images: Vec<String> = containers
            .iter()
            .map(|c| c.image.clone().unwrap_or_default())
            .collect();
        let selector: Vec<String> = spec
            .selector
            .match_labels
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        vec![
            Value::String(format!(
                "{}/{}",
                status.ready_replicas.unwrap_or(0),
                spec.replicas.unwrap_or(1)
            )),
            Value::from(status.updated_replicas.unwrap_or(0)),
            Value::from(status.available_replicas.unwrap_or(0)),
            Value::String(names.join(",")),
            Value::String(images.join(",")),
            or_none(selector.join(",")),
        ]
    }
}
