//! rbac.authorization.k8s.io/v1 ClusterRole: Role's rules, plus non-resource URLs, cluster-wide.

use k8s_openapi::api::rbac::v1::ClusterRole;
use serde_json::Value;

use super::fields::{FieldError, NameRule, created_at, validate_meta};
use super::role::{RBAC_GROUP, created_at_columns, validate_rules};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct ClusterRoleStrategy;

static INFO: KindInfo = KindInfo {
    group: RBAC_GROUP,
    version: "v1",
    kind: "ClusterRole",
    resource: "clusterroles",
    singular: "clusterrole",
    namespaced: false,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};

impl Strategy for ClusterRoleStrategy {
    type Object = ClusterRole;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, role: &ClusterRole) -> FieldErrors {
        let mut errors = validate_meta(&role.metadata, NameRule::PathSegment);
        validate_rules(
            role.rules.as_deref().unwrap_or_default(),
            false,
            &mut errors,
        );
        if let Some(aggregation) = &role.aggregation_rule
            && aggregation
                .cluster_role_selectors
                .as_ref()
                .is_none_or(Vec::is_empty)
        {
            errors.push(FieldError::required("aggregationRule.clusterRoleSelectors"));
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        created_at_columns()
    }

    fn age_column(&self) -> bool {
        false
    }

    fn cells(&self, role: &ClusterRole, _now: jiff::Timestamp) -> Vec<Value> {
        vec![created_at(&role.metadata)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Kind;
    use serde_json::json;

    fn cluster_role(rules: Value) -> Value {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "health", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "rules": rules,
        })
    }

    #[test]
    fn non_resource_urls_are_allowed_cluster_wide() {
        let urls = json!([{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]);
        ClusterRoleStrategy
            .admit_create(cluster_role(urls))
            .expect("admitted");
        let no_verbs = json!([{"nonResourceURLs": ["/healthz"], "verbs": []}]);
        assert!(
            ClusterRoleStrategy
                .admit_create(cluster_role(no_verbs))
                .is_err()
        );
    }

    #[test]
    fn table_is_name_and_created_at() {
        let names: Vec<&str> = ClusterRoleStrategy
            .table_columns()
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Created At"]);
        let cells =
            ClusterRoleStrategy.table_cells(&cluster_role(json!([])), jiff::Timestamp::now());
        assert_eq!(cells[1], "2026-01-02T03:04:05Z");
    }
}
