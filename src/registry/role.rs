//! rbac.authorization.k8s.io/v1 Role: names are any path segment (`system:foo` is fine); every
//! rule needs verbs, and resource rules need API groups and resources. The rule checks serve
//! ClusterRole too. No printer upstream: the table is NAME and CREATED AT.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role};
use serde_json::Value;

use super::fields::{CREATED_AT_COLUMN, FieldError, NameRule, created_at, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct RoleStrategy;

pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

static INFO: KindInfo = KindInfo {
    group: RBAC_GROUP,
    version: "v1",
    kind: "Role",
    resource: "roles",
    singular: "role",
    namespaced: true,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};

/// Checks `rules` as RBAC does; namespaced rules may not name non-resource URLs.
pub fn validate_rules(rules: &[PolicyRule], namespaced: bool, errors: &mut FieldErrors) {
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        if rule.verbs.is_empty() {
            errors.push(FieldError::required(format!("{path}.verbs")));
        }
        let urls = rule.non_resource_urls.as_deref().unwrap_or_default();
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        if urls.is_empty() {
            if groups.is_empty() {
                errors.push(FieldError::required(format!("{path}.apiGroups")));
            }
            if resources.is_empty() {
                errors.push(FieldError::required(format!("{path}.resources")));
            }
            continue;
        }
        let field = format!("{path}.nonResourceURLs");
        if namespaced {
            errors.push(FieldError::invalid(
                &field,
                &urls.join(","),
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if !groups.is_empty() || !resources.is_empty() {
            errors.push(FieldError::invalid(
                &field,
                &urls.join(","),
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
    }
}

/// The default table's columns and cell, shared by the role kinds.
pub fn created_at_columns() -> Vec<Column> {
    vec![CREATED_AT_COLUMN]
}

impl Strategy for RoleStrategy {
    type Object = Role;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, role: &Role) -> FieldErrors {
        let mut errors = validate_meta(&role.metadata, NameRule::PathSegment);
        validate_rules(role.rules.as_deref().unwrap_or_default(), true, &mut errors);
        errors
    }

    fn columns(&self) -> Vec<Column> {
        created_at_columns()
    }

    fn age_column(&self) -> bool {
        false
    }

    fn cells(&self, role: &Role, _now: jiff::Timestamp) -> Vec<Value> {
        vec![created_at(&role.metadata)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn role(rules: Value) -> Value {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "system:reader", "namespace": "default", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "rules": rules,
        })
    }

    #[test]
    fn rules_need_verbs_and_resources() {
        let ok = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]);
        RoleStrategy.admit_create(role(ok)).expect("admitted");
        let err = RoleStrategy
            .admit_create(role(json!([{"apiGroups": [""], "verbs": []}])))
            .expect_err("invalid");
        let AdmitError::Invalid(errors) = err else {
            panic!("{err:?}");
        };
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["rules[0].verbs", "rules[0].resources"]);
        let urls = json!([{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]);
        assert!(RoleStrategy.admit_create(role(urls)).is_err());
    }

    #[test]
    fn names_are_path_segments() {
        let mut obj = role(json!([]));
        obj["metadata"]["name"] = json!("a/b");
        assert!(RoleStrategy.admit_create(obj).is_err());
    }

    #[test]
    fn table_is_name_and_created_at() {
        let cells = RoleStrategy.table_cells(&role(json!([])), jiff::Timestamp::now());
        assert_eq!(
            cells,
            [json!("system:reader"), json!("2026-01-02T03:04:05Z")]
        );
    }
}
