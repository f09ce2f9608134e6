//! core/v1 ServiceAccount.

use k8s_openapi::api::core::v1::ServiceAccount;
use serde_json::Value;

use super::fields::{NameRule, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct ServiceAccountStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    resource: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    tracks_generation: false,
};

impl Strategy for ServiceAccountStrategy {
    type Object = ServiceAccount;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, sa: &ServiceAccount) -> FieldErrors {
        validate_meta(&sa.metadata, NameRule::Subdomain)
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::new(
            "Secrets",
            "integer",
            "Secrets is the list of secrets allowed to be used by pods running using this ServiceAccount.",
        )]
    }

    fn cells(&self, sa: &ServiceAccount, _now: jiff::Timestamp) -> Vec<Value> {
        vec![Value::from(sa.secrets.as_ref().map_or(0, |s| s.len()))]
    }
}
