//! coordination.k8s.io/v1 Lease: what leader election and node heartbeats write. Durations
//! positive, transitions not negative.

use k8s_openapi::api::coordination::v1::Lease;
use serde_json::Value;

use super::fields::{FieldError, NameRule, nonnegative, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct LeaseStrategy;

static INFO: KindInfo = KindInfo {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    resource: "leases",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};

impl Strategy for LeaseStrategy {
    type Object = Lease;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, lease: &Lease) -> FieldErrors {
        let mut errors = validate_meta(&lease.metadata, NameRule::Subdomain);
        let spec = lease.spec.clone().unwrap_or_default();
        if let Some(seconds) = spec.lease_duration_seconds.filter(|s| *s <= 0) {
            errors.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                &seconds.to_string(),
                "must be greater than 0",
            ));
        }
        errors.extend(nonnegative(spec.lease_transitions, "spec.leaseTransitions"));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::new(
            "Holder",
            "string",
            "holderIdentity contains the identity of the holder of a current lease.",
        )]
    }

    fn cells(&self, lease: &Lease, _now: jiff::Timestamp) -> Vec<Value> {
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        vec![Value::String(holder.unwrap_or_default())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn lease(spec: Value) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn spec_is_kept() {
        let out = LeaseStrategy
            .admit_create(lease(
                json!({"holderIdentity": "a", "leaseDurationSeconds": 15}),
            ))
            .expect("admitted");
        assert_eq!(out["spec"]["leaseDurationSeconds"], 15);
    }

    #[test]
    fn duration_must_be_positive() {
        let err = LeaseStrategy
            .admit_create(lease(json!({"leaseDurationSeconds": 0})))
            .expect_err("invalid");
        assert!(
            matches!(err, AdmitError::Invalid(e) if e.0[0].field == "spec.leaseDurationSeconds")
        );
    }

    #[test]
    fn table_shows_the_holder() {
        let cells = LeaseStrategy.table_cells(
            &lease(json!({"holderIdentity": "node-1"})),
            jiff::Timestamp::now(),
        );
        assert_eq!(cells[..2], [json!("leader"), json!("node-1")]);
        let names: Vec<&str> = LeaseStrategy
            .table_columns()
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Holder", "Age"]);
    }
}
