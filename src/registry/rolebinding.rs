//! rbac.authorization.k8s.io/v1 RoleBinding: roleRef names a Role or ClusterRole in the RBAC
//! group and never changes ("cannot change roleRef"); subjects are users, groups or service
//! accounts. The binding checks and cells here serve ClusterRoleBinding too.

use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use serde_json::Value;

use super::fields::{FieldError, NameRule, validate_meta};
use super::role::RBAC_GROUP;
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct RoleBindingStrategy;

static INFO: KindInfo = KindInfo {
    group: RBAC_GROUP,
    version: "v1",
    kind: "RoleBinding",
    resource: "rolebindings",
    singular: "rolebinding",
    namespaced: true,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};

const SUBJECT_KINDS: &[&str] = &["Group", "ServiceAccount", "User"];

/// Users and groups live in the RBAC group (service accounts in core, which is no group).
pub fn default_subjects(subjects: &mut Option<Vec<Subject>>) {
    for subject in subjects.iter_mut().flatten() {
        if subject.api_group.is_none() && matches!(subject.kind.as_str(), "User" | "Group") {
            subject.api_group = Some(RBAC_GROUP.into());
        }
    }
}

/// roleRef and subjects; `role_kinds` are the kinds this binding may reference, and cluster
/// bindings (`namespaced` false) must say which namespace a service account is in.
pub fn validate_binding(
    role_ref: &RoleRef,
    subjects: &[Subject],
    role_kinds: &[&str],
    namespaced: bool,
    errors: &mut FieldErrors,
) {
    if role_ref.api_group != RBAC_GROUP {
        errors.push(FieldError::unsupported(
            "roleRef.apiGroup",
            &role_ref.api_group,
            &[RBAC_GROUP],
        ));
    }
    if !role_kinds.contains(&role_ref.kind.as_str()) {
        errors.push(FieldError::unsupported(
            "roleRef.kind",
            &role_ref.kind,
            role_kinds,
        ));
    }
    if role_ref.name.is_empty() {
        errors.push(FieldError::required("roleRef.name"));
    }
    for (i, subject) in subjects.iter().enumerate() {
        let path = format!("subjects[{i}]");
        if subject.name.is_empty() {
            errors.push(FieldError::required(format!("{path}.name")));
        }
        let group = subject.api_group.as_deref().unwrap_or("");
        match subject.kind.as_str() {
            "ServiceAccount" => {
                if !group.is_empty() {
                    errors.push(FieldError::unsupported(
                        format!("{path}.apiGroup"),
                        group,
                        &[""],
                    ));
                }
                if !namespaced && subject.namespace.as_deref().unwrap_or("").is_empty() {
                    errors.push(FieldError::required(format!("{path}.namespace")));
                }
            }
            "User" | "Group" if group != RBAC_GROUP => errors.push(FieldError::unsupported(
                format!("{path}.apiGroup"),
                group,
                &[RBAC_GROUP],
            )),
            "User" | "Group" => {}
            other => errors.push(FieldError::unsupported(
                format!("{path}.kind"),
                other,
                SUBJECT_KINDS,
            )),
        }
    }
}

/// roleRef is fixed at creation: changing what a binding grants means a new binding.
pub fn validate_role_ref_unchanged(new: &RoleRef, old: &RoleRef, errors: &mut FieldErrors) {
    if new != old {
        errors.push(FieldError::invalid(
            "roleRef",
            &format!("{}/{}", new.kind, new.name),
            "cannot change roleRef",
        ));
    }
}

/// ROLE, then the wide USERS, GROUPS and SERVICEACCOUNTS columns; `what` names the kind.
pub fn binding_columns(what: &'static str) -> Vec<Column> {
    let (users, groups, service_accounts) = match what {
        "clusterRoleBinding" => (
            "Users in the clusterRoleBinding",
            "Groups in the clusterRoleBinding",
            "ServiceAccounts in the clusterRoleBinding",
        ),
        _ => (
            "Users in the roleBinding",
            "Groups in the roleBinding",
            "ServiceAccounts in the roleBinding",
        ),
    };
    vec![
        Column::new(
            "Role",
            "string",
            "RoleRef is the Role or ClusterRole the binding grants. This field is immutable.",
        ),
        Column::new("Users", "string", users).wide(),
        Column::new("Groups", "string", groups).wide(),
        Column::new("ServiceAccounts", "string", service_accounts).wide(),
    ]
}

/// `Kind/name` of the role, then users, groups and `namespace/name` service accounts.
pub fn binding_cells(role_ref: &RoleRef, subjects: &[Subject]) -> Vec<Value> {
    let names = |kind: &str| -> Value {
        let list: Vec<String> = subjects
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| match s.namespace.as_deref() {
                Some(ns) if kind == "ServiceAccount" && !ns.is_empty() => {
                    format!("{ns}/{}", s.name)
                }
                _ => s.name.clone(),
            })
            .collect();
        Value::String(list.join(", "))
    };
    vec![
        Value::String(format!("{}/{}", role_ref.kind, role_ref.name)),
        names("User"),
        names("Group"),
        names("ServiceAccount"),
    ]
}

impl Strategy for RoleBindingStrategy {
    type Object = RoleBinding;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, rb: &mut RoleBinding) {
        default_subjects(&mut rb.subjects);
    }

    fn validate(&self, rb: &RoleBinding) -> FieldErrors {
        let mut errors = validate_meta(&rb.metadata, NameRule::PathSegment);
        let subjects = rb.subjects.as_deref().unwrap_or_default();
        validate_binding(
            &rb.role_ref,
            subjects,
            &["ClusterRole", "Role"],
            true,
            &mut errors,
        );
        errors
    }

    fn validate_update(&self, new: &RoleBinding, old: &RoleBinding) -> FieldErrors {
        let mut errors = self.validate(new);
        validate_role_ref_unchanged(&new.role_ref, &old.role_ref, &mut errors);
        errors
    }

    fn columns(&self) -> Vec<Column> {
        binding_columns("roleBinding")
    }

    fn cells(&self, rb: &RoleBinding, _now: jiff::Timestamp) -> Vec<Value> {
        binding_cells(&rb.role_ref, rb.subjects.as_deref().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn binding(kind: &str, name: &str) -> Value {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "read", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [
                {"kind": "User", "name": "alice"},
                {"kind": "ServiceAccount", "name": "bot", "namespace": "default"},
            ],
        })
    }

    #[test]
    fn subjects_get_their_api_group() {
        let out = RoleBindingStrategy
            .admit_create(binding("Role", "reader"))
            .expect("admitted");
        assert_eq!(out["subjects"][0]["apiGroup"], RBAC_GROUP);
        assert!(out["subjects"][1].get("apiGroup").is_none());
    }

    #[test]
    fn role_ref_kind_checked_and_fixed() {
        let err = RoleBindingStrategy
            .admit_create(binding("Pod", "reader"))
            .expect_err("invalid");
        assert!(matches!(err, AdmitError::Invalid(e) if e.0[0].field == "roleRef.kind"));
        let old = RoleBindingStrategy
            .admit_create(binding("Role", "reader"))
            .expect("admitted");
        let err = RoleBindingStrategy
            .admit_update(binding("Role", "writer"), &old)
            .expect_err("roleRef is immutable");
        let AdmitError::Invalid(errors) = err else {
            panic!("{err:?}");
        };
        assert_eq!(errors.0[0].field, "roleRef");
        assert!(errors.0[0].message.contains("cannot change roleRef"));
    }

    #[test]
    fn table_cells_list_subjects_by_kind() {
        let names: Vec<&str> = RoleBindingStrategy
            .table_columns()
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            ["Name", "Role", "Age", "Users", "Groups", "ServiceAccounts"]
        );
        let cells =
            RoleBindingStrategy.table_cells(&binding("Role", "reader"), jiff::Timestamp::now());
        assert_eq!(cells[1], "Role/reader");
        assert_eq!(
            cells[3..],
            [json!("alice"), json!(""), json!("default/bot")]
        );
    }
}
