//! core/v1 LimitRange: each limit names a known type and gives quantities. kube-apiserver has
//! no printer for it, so its table is the default one: NAME and CREATED AT.

use k8s_openapi::api::core::v1::LimitRange;
use serde_json::Value;

use super::fields::{CREATED_AT_COLUMN, FieldError, NameRule, created_at, validate_meta};
use super::resourcequota::validate_resource_list;
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct LimitRangeStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "LimitRange",
    resource: "limitranges",
    singular: "limitrange",
    namespaced: true,
    short_names: &["limits"],
    categories: &[],
    tracks_generation: false,
};

const TYPES: &[&str] = &["Container", "PersistentVolumeClaim", "Pod"];

impl Strategy for LimitRangeStrategy {
    type Object = LimitRange;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    /// kube's SetDefaults_LimitRangeItem for Container limits: a max is the default limit, a
    /// default limit is the default request, and a min is the default request when neither
    /// gives one — so `kubectl describe limitrange` shows what pods will get.
    fn default_fields(&self, lr: &mut LimitRange) {
        let items = lr.spec.iter_mut().flat_map(|s| s.limits.iter_mut());
        for item in items.filter(|i| i.type_ == "Container") {
            let default = item.default.get_or_insert_with(Default::default);
            for (name, max) in item.max.iter().flatten() {
                default.entry(name.clone()).or_insert_with(|| max.clone());
            }
            let request = item.default_request.get_or_insert_with(Default::default);
            for (name, limit) in default.iter() {
                request.entry(name.clone()).or_insert_with(|| limit.clone());
            }
            for (name, min) in item.min.iter().flatten() {
                request.entry(name.clone()).or_insert_with(|| min.clone());
            }
            if default.is_empty() {
                item.default = None;
            }
            if item.default_request.as_ref().is_some_and(|r| r.is_empty()) {
                item.default_request = None;
            }
        }
    }

    fn validate(&self, lr: &LimitRange) -> FieldErrors {
        let mut errors = validate_meta(&lr.metadata, NameRule::Subdomain);
        let limits = lr
            .spec
            .as_ref()
            .map(|s| s.limits.as_slice())
            .unwrap_or_default();
        for (i, item) in limits.iter().enumerate() {
            let path = format!("spec.limits[{i}]");
            if item.type_.is_empty() {
                errors.push(FieldError::required(format!("{path}.type")));
            } else if !TYPES.contains(&item.type_.as_str()) {
                errors.push(FieldError::unsupported(
                    format!("{path}.type"),
                    &item.type_,
                    TYPES,
                ));
            }
            for (name, list) in [
                ("max", &item.max),
                ("min", &item.min),
                ("default", &item.default),
                ("defaultRequest", &item.default_request),
                ("maxLimitRequestRatio", &item.max_limit_request_ratio),
            ] {
                validate_resource_list(&format!("{path}.{name}"), list.as_ref(), &mut errors);
            }
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![CREATED_AT_COLUMN]
    }

    fn age_column(&self) -> bool {
        false
    }

    fn cells(&self, lr: &LimitRange, _now: jiff::Timestamp) -> Vec<Value> {
        vec![created_at(&lr.metadata)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn limits(items: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "LimitRange",
            "metadata": {"name": "lr", "namespace": "default", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"limits": items},
        })
    }

    #[test]
    fn limits_need_a_known_type() {
        let ok = json!([{"type": "Container", "default": {"cpu": "500m"}}]);
        let out = LimitRangeStrategy
            .admit_create(limits(ok))
            .expect("admitted");
        assert_eq!(out["spec"]["limits"][0]["default"]["cpu"], "500m");
        let err = LimitRangeStrategy
            .admit_create(limits(json!([{"type": "Node"}])))
            .expect_err("invalid");
        assert!(matches!(err, AdmitError::Invalid(e) if e.0[0].field == "spec.limits[0].type"));
    }

    #[test]
    fn container_defaults_follow_max_then_default_then_min() {
        let item = json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}]);
        let out = LimitRangeStrategy
            .admit_create(limits(item))
            .expect("admitted");
        let item = &out["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "1"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"cpu": "1", "memory": "64Mi"})
        );
    }

    #[test]
    fn table_is_name_and_created_at() {
        let names: Vec<&str> = LimitRangeStrategy
            .table_columns()
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Created At"]);
        let cells = LimitRangeStrategy.table_cells(&limits(json!([])), jiff::Timestamp::now());
        assert_eq!(cells[1], "2026-01-02T03:04:05Z");
    }
}
