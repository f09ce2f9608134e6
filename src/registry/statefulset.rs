//! apps/v1 StatefulSet: kube-apiserver's defaults (one replica, OrderedReady, rolling updates
//! from partition 0, ten revisions, PVCs retained), the selector picks the template's pods and
//! never changes, and only the fields kube lets change may change.

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use serde_json::Value;

use super::fields::{FieldError, NameRule, nonnegative, validate_meta};
use super::pod_template::{
    container_cells, container_columns, default_template, validate_selector_and_template,
    validate_selector_unchanged,
};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct StatefulSetStrategy;

static INFO: KindInfo = KindInfo {
    group: "apps",
    version: "v1",
    kind: "StatefulSet",
    resource: "statefulsets",
    singular: "statefulset",
    namespaced: true,
    short_names: &["sts"],
    categories: &["all"],
    tracks_generation: true,
};

const RETENTION: &[&str] = &["Retain", "Delete"];

fn default_spec(spec: &mut StatefulSetSpec) {
    spec.replicas.get_or_insert(1);
    spec.pod_management_policy
        .get_or_insert_with(|| "OrderedReady".into());
    spec.revision_history_limit.get_or_insert(10);
    let strategy = spec
        .update_strategy
        .get_or_insert_with(StatefulSetUpdateStrategy::default);
    let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if kind == "RollingUpdate" {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateStatefulSetStrategy::default);
        ru.partition.get_or_insert(0);
    }
    let retention = spec
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
    retention
        .when_deleted
        .get_or_insert_with(|| "Retain".into());
    retention.when_scaled.get_or_insert_with(|| "Retain".into());
    default_template(&mut spec.template);
}

fn validate_policies(spec: &StatefulSetSpec, errors: &mut FieldErrors) {
    if let Some(policy) = spec.pod_management_policy.as_deref()
        && !matches!(policy, "OrderedReady" | "Parallel")
    {
        errors.push(FieldError::unsupported(
            "spec.podManagementPolicy",
            policy,
            &["OrderedReady", "Parallel"],
        ));
    }
    if let Some(strategy) = &spec.update_strategy {
        match strategy.type_.as_deref().unwrap_or("RollingUpdate") {
            "RollingUpdate" => {}
            "OnDelete" if strategy.rolling_update.is_some() => errors.push(FieldError::invalid(
                "spec.updateStrategy.rollingUpdate",
                "",
                "only allowed for updateStrategy 'RollingUpdate'",
            )),
            "OnDelete" => {}
            other => errors.push(FieldError::unsupported(
                "spec.updateStrategy.type",
                other,
                &["OnDelete", "RollingUpdate"],
            )),
        }
        let partition = strategy.rolling_update.as_ref().and_then(|r| r.partition);
        errors.extend(nonnegative(
            partition,
            "spec.updateStrategy.rollingUpdate.partition",
        ));
    }
    let retention = spec.persistent_volume_claim_retention_policy.as_ref();
    for (field, value) in [
        (
            "whenDeleted",
            retention.and_then(|r| r.when_deleted.as_deref()),
        ),
        (
            "whenScaled",
            retention.and_then(|r| r.when_scaled.as_deref()),
        ),
    ] {
        if let Some(value) = value
            && !RETENTION.contains(&value)
        {
            errors.push(FieldError::unsupported(
                format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
                value,
                RETENTION,
            ));
        }
    }
}

/// The spec with every field kube lets an update change copied from `from`.
fn without_mutable_fields(spec: &StatefulSetSpec, from: &StatefulSetSpec) -> StatefulSetSpec {
    StatefulSetSpec {
        replicas: from.replicas,
        ordinals: from.ordinals.clone(),
        template: from.template.clone(),
        update_strategy: from.update_strategy.clone(),
        persistent_volume_claim_retention_policy: from
            .persistent_volume_claim_retention_policy
            .clone(),
        min_ready_seconds: from.min_ready_seconds,
        revision_history_limit: from.revision_history_limit,
        ..spec.clone()
    }
}

impl Strategy for StatefulSetStrategy {
    type Object = StatefulSet;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, sts: &mut StatefulSet) {
        if let Some(spec) = sts.spec.as_mut() {
            default_spec(spec);
        }
    }

    fn prepare_for_create(&self, sts: &mut StatefulSet) {
        sts.status = None;
    }

    fn prepare_for_update(&self, new: &mut StatefulSet, old: &StatefulSet) {
        new.status = old.status.clone();
    }

    fn validate(&self, sts: &StatefulSet) -> FieldErrors {
        let mut errors = validate_meta(&sts.metadata, NameRule::Subdomain);
        let Some(spec) = &sts.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        errors.extend(nonnegative(spec.replicas, "spec.replicas"));
        errors.extend(nonnegative(spec.min_ready_seconds, "spec.minReadySeconds"));
        validate_policies(spec, &mut errors);
        errors.extend(validate_selector_and_template(
            &spec.selector,
            Some(&spec.template),
        ));
        errors
    }

    fn validate_update(&self, new: &StatefulSet, old: &StatefulSet) -> FieldErrors {
        let mut errors = self.validate(new);
        errors.extend(validate_selector_unchanged(new, old, |sts| {
            sts.spec.as_ref().map(|s| &s.selector)
        }));
        let (Some(n), Some(o)) = (&new.spec, &old.spec) else {
            return errors;
        };
        if errors.is_empty() && without_mutable_fields(n, o) != *o {
            errors.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![Column::new(
            "Ready",
            "string",
            "Number of the pod with ready state",
        )];
        columns.extend(container_columns());
        columns
    }

    fn cells(&self, sts: &StatefulSet, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = sts.spec.clone().unwrap_or_default();
        let ready = sts
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        let mut cells = vec![Value::String(format!(
            "{ready}/{}",
            spec.replicas.unwrap_or(0)
        ))];
        cells.extend(container_cells(Some(&spec.template)));
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
        workload_manifest("StatefulSet", "db", "postgres:17")
    }

    #[test]
    fn defaults_match_kube() {
        let sts = StatefulSetStrategy.admit_create(manifest()).expect("admit");
        let spec = &sts["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert!(spec.get("serviceName").is_none());
    }

    #[test]
    fn validation_refuses_bad_policy_and_frozen_fields() {
        let mut bad = manifest();
        bad["spec"]["podManagementPolicy"] = json!("Random");
        let errors = create_errors(&StatefulSetStrategy, bad);
        assert_eq!(errors.0[0].field, "spec.podManagementPolicy");

        let old = StatefulSetStrategy.admit_create(manifest()).expect("admit");
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        assert!(StatefulSetStrategy.admit_update(scaled, &old).is_ok());
        let mut renamed = old.clone();
        renamed["spec"]["serviceName"] = json!("other");
        assert!(StatefulSetStrategy.admit_update(renamed, &old).is_err());
    }

    #[test]
    fn table_cells() {
        let sts = StatefulSetStrategy.admit_create(manifest()).expect("admit");
        let names = column_names(&StatefulSetStrategy);
        assert_eq!(names, ["Name", "Ready", "Age", "Containers", "Images"]);
        let cells = StatefulSetStrategy.table_cells(&sts, jiff::Timestamp::now());
        assert_eq!(cells[1], json!("0/1"));
        assert_eq!(cells[3..], [json!("db"), json!("postgres:17")]);
    }
}
