//! core/v1 ResourceQuota: hard limits must be quantities; status (hard/used) belongs to the
//! quota controller. Columns as kube-apiserver prints them: AGE, then REQUEST and LIMIT.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use super::fields::{FieldError, NameRule, meta_age, validate_meta};
use super::quantity::{self, QUANTITY_MSG};
use super::{AGE_COLUMN, Column, FieldErrors, KindInfo, Strategy};

pub struct ResourceQuotaStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "ResourceQuota",
    resource: "resourcequotas",
    singular: "resourcequota",
    namespaced: true,
    short_names: &["quota"],
    categories: &[],
    tracks_generation: false,
};

/// Every value of a resource list is a quantity of at least zero.
pub fn validate_resource_list(
    field: &str,
    list: Option<&BTreeMap<String, Quantity>>,
    errors: &mut FieldErrors,
) {
    for (name, Quantity(raw)) in list.into_iter().flatten() {
        let path = format!("{field}[{name}]");
        match quantity::parse(raw) {
            None => errors.push(FieldError::invalid(path, raw, QUANTITY_MSG)),
            Some(v) if v < 0.0 => errors.push(FieldError::invalid(
                path,
                raw,
                "must be greater than or equal to 0",
            )),
            Some(_) => {}
        }
    }
}

impl Strategy for ResourceQuotaStrategy {
    type Object = ResourceQuota;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn prepare_for_create(&self, quota: &mut ResourceQuota) {
        quota.status = None;
    }

    fn prepare_for_update(&self, new: &mut ResourceQuota, old: &ResourceQuota) {
        new.status = old.status.clone();
    }

    fn validate(&self, quota: &ResourceQuota) -> FieldErrors {
        let mut errors = validate_meta(&quota.metadata, NameRule::Subdomain);
        let hard = quota.spec.as_ref().and_then(|s| s.hard.as_ref());
        validate_resource_list("spec.hard", hard, &mut errors);
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            AGE_COLUMN,
            Column::new(
                "Request",
                "string",
                "Request represents a minimum amount of cpu/memory that a container may consume.",
            ),
            Column::new(
                "Limit",
                "string",
                "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
            ),
        ]
    }

    fn age_column(&self) -> bool {
        false
    }

    /// `name: used/hard` per resource in status.hard; `limits.*` under LIMIT, the rest REQUEST.
    fn cells(&self, quota: &ResourceQuota, now: jiff::Timestamp) -> Vec<Value> {
        let status = quota.status.clone().unwrap_or_default();
        let used = status.used.unwrap_or_default();
        let (mut requests, mut limits) = (Vec::new(), Vec::new());
        for (name, hard) in status.hard.unwrap_or_default() {
            let current = used.get(&name).map_or("0", |q| q.0.as_str());
            let entry = format!("{name}: {current}/{}", hard.0);
            match name.starts_with("limits.") {
                true => limits.push(entry),
                false => requests.push(entry),
            }
        }
        vec![
            Value::String(meta_age(&quota.metadata, now)),
            Value::String(requests.join(", ")),
            Value::String(limits.join(", ")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn quota(hard: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "default"}, "spec": {"hard": hard}})
    }

    #[test]
    fn status_is_the_controllers() {
        let mut obj = quota(json!({"pods": "10"}));
        obj["status"] = json!({"hard": {"pods": "99"}});
        let out = ResourceQuotaStrategy.admit_create(obj).expect("admitted");
        assert!(out.get("status").is_none_or(Value::is_null), "{out}");
    }

    #[test]
    fn hard_limits_are_quantities() {
        let err = ResourceQuotaStrategy
            .admit_create(quota(json!({"pods": "lots"})))
            .expect_err("invalid");
        assert!(matches!(err, AdmitError::Invalid(e) if e.0[0].field == "spec.hard[pods]"));
    }

    #[test]
    fn table_splits_requests_and_limits() {
        let mut obj = quota(json!({}));
        obj["status"] = json!({
            "hard": {"limits.cpu": "2", "pods": "10", "requests.cpu": "1"},
            "used": {"pods": "3"},
        });
        let names: Vec<&str> = ResourceQuotaStrategy
            .table_columns()
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Age", "Request", "Limit"]);
        let cells = ResourceQuotaStrategy.table_cells(&obj, jiff::Timestamp::now());
        assert_eq!(cells[2], "pods: 3/10, requests.cpu: 0/1");
        assert_eq!(cells[3], "limits.cpu: 0/2");
    }
}
