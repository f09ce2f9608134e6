//! rbac.authorization.k8s.io/v1 ClusterRoleBinding: RoleBinding's rules, cluster-wide; it may
//! only reference a ClusterRole, and service-account subjects must name their namespace.

use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use serde_json::Value;

use super::fields::{NameRule, validate_meta};
use super::role::RBAC_GROUP;
use super::rolebinding::{
    binding_cells, binding_columns, default_subjects, validate_binding, validate_role_ref_unchanged,
};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct ClusterRoleBindingStrategy;

static INFO: KindInfo = KindInfo {
    group: RBAC_GROUP,
    version: "v1",
    kind: "ClusterRoleBinding",
    resource: "clusterrolebindings",
    singular: "clusterrolebinding",
    namespaced: false,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};

impl Strategy for ClusterRoleBindingStrategy {
    type Object = ClusterRoleBinding;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, crb: &mut ClusterRoleBinding) {
        default_subjects(&mut crb.subjects);
    }

    fn validate(&self, crb: &ClusterRoleBinding) -> FieldErrors {
        let mut errors = validate_meta(&crb.metadata, NameRule::PathSegment);
        let subjects = crb.subjects.as_deref().unwrap_or_default();
        validate_binding(
            &crb.role_ref,
            subjects,
            &["ClusterRole"],
            false,
            &mut errors,
        );
        errors
    }

    fn validate_update(&self, new: &ClusterRoleBinding, old: &ClusterRoleBinding) -> FieldErrors {
        let mut errors = self.validate(new);
        validate_role_ref_unchanged(&new.role_ref, &old.role_ref, &mut errors);
        errors
    }

    fn columns(&self) -> Vec<Column> {
        binding_columns("clusterRoleBinding")
    }

    fn cells(&self, crb: &ClusterRoleBinding, _now: jiff::Timestamp) -> Vec<Value> {
        binding_cells(&crb.role_ref, crb.subjects.as_deref().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn binding(kind: &str, subject_namespace: Option<&str>) -> Value {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:readers"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": subject_namespace}],
        })
    }

    #[test]
    fn only_cluster_roles_and_namespaced_service_accounts() {
        ClusterRoleBindingStrategy
            .admit_create(binding("ClusterRole", Some("ops")))
            .expect("admitted");
        let fields = |result: Result<Value, AdmitError>| match result {
            Err(AdmitError::Invalid(e)) => e.0.into_iter().map(|e| e.field).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fields(ClusterRoleBindingStrategy.admit_create(binding("Role", Some("ops")))),
            ["roleRef.kind"]
        );
        assert_eq!(
            fields(ClusterRoleBindingStrategy.admit_create(binding("ClusterRole", None))),
            ["subjects[0].namespace"]
        );
    }

    #[test]
    fn table_cells_show_role_and_service_accounts() {
        let cells = ClusterRoleBindingStrategy
            .table_cells(&binding("ClusterRole", Some("ops")), jiff::Timestamp::now());
        assert_eq!(cells[1], "ClusterRole/view");
        assert_eq!(cells[5], "ops/bot");
    }
}
