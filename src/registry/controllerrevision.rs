//! apps/v1 ControllerRevision: an immutable snapshot of a StatefulSet's or DaemonSet's template
//! (`data`) and its number (`revision`); only the revision number may change.

use k8s_openapi::api::apps::v1::ControllerRevision;
use serde_json::Value;

use super::fields::{FieldError, NameRule, immutable, nonnegative, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct ControllerRevisionStrategy;

static INFO: KindInfo = KindInfo {
    group: "apps",
    version: "v1",
    kind: "ControllerRevision",
    resource: "controllerrevisions",
    singular: "controllerrevision",
    namespaced: true,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};

/// The controlling owner as kubectl names it: `daemonset.apps/agent`, `<none>` without one.
fn controller_of(cr: &ControllerRevision) -> String {
    let owner = cr
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return "<none>".into();
    };
    let kind = owner.kind.to_lowercase();
    match owner.api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{}", owner.name),
        None if kind.is_empty() => owner.name.clone(),
        None => format!("{kind}/{}", owner.name),
    }
}

impl Strategy for ControllerRevisionStrategy {
    type Object = ControllerRevision;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, cr: &ControllerRevision) -> FieldErrors {
        let mut errors = validate_meta(&cr.metadata, NameRule::Subdomain);
        // `revision` is a plain integer in the typed object: absent reads as 0, which kube
        // accepts too, so only the sign is checked.
        errors.extend(nonnegative(Some(cr.revision), "revision"));
        if cr.data.as_ref().is_none_or(|d| d.0.is_null()) {
            let mut missing = FieldError::required("data");
            missing.message = "Required value: data is mandatory".into();
            errors.push(missing);
        }
        errors
    }

    fn validate_update(&self, new: &ControllerRevision, old: &ControllerRevision) -> FieldErrors {
        let mut errors = self.validate(new);
        errors.extend(immutable(&new.data, &old.data, "data"));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Controller", "string", "Controller of the object"),
            Column::new(
                "Revision",
                "string",
                "Revision indicates the revision of the state represented by Data.",
            ),
        ]
    }

    fn cells(&self, cr: &ControllerRevision, _now: jiff::Timestamp) -> Vec<Value> {
        vec![Value::String(controller_of(cr)), Value::from(cr.revision)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Kind, column_names, create_errors};
    use serde_json::json;

    fn manifest() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {
                "name": "agent-5d8f", "namespace": "default",
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                    "uid": "u1", "controller": true
                }]
            },
            "data": {"spec": {"template": {}}},
            "revision": 2
        })
    }

    #[test]
    fn keeps_data_and_revision() {
        let cr = ControllerRevisionStrategy
            .admit_create(manifest())
            .expect("admit");
        assert_eq!(cr["revision"], 2);
        assert_eq!(cr["data"], json!({"spec": {"template": {}}}));
    }

    #[test]
    fn data_is_required_and_immutable() {
        let mut bad = manifest();
        bad.as_object_mut().expect("object").remove("data");
        let errors = create_errors(&ControllerRevisionStrategy, bad);
        assert_eq!(errors.0[0].field, "data");

        let old = ControllerRevisionStrategy
            .admit_create(manifest())
            .expect("admit");
        let mut renumbered = old.clone();
        renumbered["revision"] = json!(3);
        assert!(
            ControllerRevisionStrategy
                .admit_update(renumbered, &old)
                .is_ok()
        );
        let mut changed = old.clone();
        changed["data"] = json!({"spec": {}});
        assert!(
            ControllerRevisionStrategy
                .admit_update(changed, &old)
                .is_err()
        );
    }

    #[test]
    fn table_cells() {
        let cr = ControllerRevisionStrategy
            .admit_create(manifest())
            .expect("admit");
        let names = column_names(&ControllerRevisionStrategy);
        assert_eq!(names, ["Name", "Controller", "Revision", "Age"]);
        let cells = ControllerRevisionStrategy.table_cells(&cr, jiff::Timestamp::now());
        assert_eq!(cells[1..3], [json!("daemonset.apps/agent"), json!(2)]);
    }
}
