//! core/v1 Namespace: cluster-scoped; DNS-1123 label names; `kubernetes` finalizer and the
//! `kubernetes.io/metadata.name` label set by the server; phase Active until deleted.

use k8s_openapi::api::core::v1::{Namespace, NamespaceSpec, NamespaceStatus};
use serde_json::Value;

use super::fields::{NameRule, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct NamespaceStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Namespace",
    resource: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    tracks_generation: false,
};

const NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl Strategy for NamespaceStrategy {
    type Object = Namespace;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, ns: &mut Namespace) {
        if let Some(name) = ns.metadata.name.clone() {
            ns.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(NAME_LABEL.into(), name);
        }
        let status = ns.status.get_or_insert_with(NamespaceStatus::default);
        if status.phase.is_none() {
            status.phase = Some("Active".into());
        }
    }

    fn prepare_for_create(&self, ns: &mut Namespace) {
        ns.spec = Some(NamespaceSpec {
            finalizers: Some(vec!["kubernetes".into()]),
        });
        ns.status = None;
    }

    fn prepare_for_update(&self, new: &mut Namespace, old: &Namespace) {
        new.spec = old.spec.clone();
        new.status = old.status.clone();
    }

    fn validate(&self, ns: &Namespace) -> FieldErrors {
        validate_meta(&ns.metadata, NameRule::Label)
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::new(
            "Status",
            "string",
            "The status of the namespace",
        )]
    }

    fn cells(&self, ns: &Namespace, _now: jiff::Timestamp) -> Vec<Value> {
        let phase = ns
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        vec![Value::String(phase)]
    }
}
