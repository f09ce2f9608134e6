//! policy/v1 PodDisruptionBudget: at most one of minAvailable / maxUnavailable, each a
//! non-negative count or a percentage, a well-formed selector; status is the disruption
//! controller's.

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize as _;
use serde_json::Value;

use super::fields::{FieldError, NameRule, validate_meta};
use super::pod_template::{selector_matches, validate_label_selector};
use super::{Column, FieldErrors, KindInfo, Strategy};
use crate::json_path::JsonPath;

pub struct PodDisruptionBudgetStrategy;

static INFO: KindInfo = KindInfo {
    group: "policy",
    version: "v1",
    kind: "PodDisruptionBudget",
    resource: "poddisruptionbudgets",
    singular: "poddisruptionbudget",
    namespaced: true,
    short_names: &["pdb"],
    categories: &[],
    tracks_generation: true,
};

const EVICTION_POLICIES: &[&str] = &["AlwaysAllow", "IfHealthyBudget"];

/// Whether a budget (JSON) covers a pod with these labels: in policy/v1 an empty selector
/// covers every pod of the namespace, and a missing one none.
pub fn selects(pdb: &Value, labels: &BTreeMap<String, String>) -> bool {
    pdb.at("/spec/selector")
        .and_then(|s| LabelSelector::deserialize(s).ok())
        .is_some_and(|s| selector_matches(&s, labels))
}

/// Sets the DisruptionAllowed condition from `status.disruptionsAllowed` (after kube's
/// UpdateDisruptionAllowedCondition); the transition time moves only when the status flips.
/// `failure`: the sync failed (reason SyncFailed with this message) and nothing is allowed.
/// `now`: the RFC 3339 time a transition gets.
pub fn set_disruption_allowed(status: &mut Value, failure: Option<&str>, now: &str) {
    let allowed = status
        .get("disruptionsAllowed")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        > 0;
    let (state, reason, message) = match failure {
        Some(message) => ("False", "SyncFailed", message),
        None if allowed => ("True", "SufficientPods", ""),
        None => ("False", "InsufficientPods", ""),
    };
    let generation = status
        .get("observedGeneration")
        .cloned()
        .unwrap_or(Value::from(0));
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = Value::Array(Vec::new());
    }
    let Some(conditions) = status["conditions"].as_array_mut() else {
        return;
    };
    let old = conditions
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some("DisruptionAllowed"));
    let since = old
        .map(|i| &conditions[i])
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(state))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::from(now));
    let condition = serde_json::json!({
        "type": "DisruptionAllowed",
        "status": state,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    });
    match old {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// A count (>= 0) or a percentage `N%` with N in 0..=100.
fn validate_int_or_percent(value: &IntOrString, field: &str) -> FieldErrors {
    let mut errors = FieldErrors::default();
    match value {
        IntOrString::Int(n) if *n < 0 => errors.push(FieldError::invalid(
            field,
            &n.to_string(),
            "must be greater than or equal to 0",
        )),
        IntOrString::Int(_) => {}
        IntOrString::String(s) => match s.strip_suffix('%').map(str::parse::<u32>) {
            Some(Ok(p)) if p <= 100 => {}
            Some(Ok(_)) => errors.push(FieldError::invalid(
                field,
                s,
                "must not be greater than 100%",
            )),
            _ => errors.push(FieldError::invalid(
                field,
                s,
                "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
            )),
        },
    }
    errors
}

fn shown(value: Option<&IntOrString>) -> Value {
    Value::String(match value {
        Some(IntOrString::Int(n)) => n.to_string(),
        Some(IntOrString::String(s)) => s.clone(),
        None => "N/A".into(),
    })
}

impl Strategy for PodDisruptionBudgetStrategy {
    type Object = PodDisruptionBudget;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn prepare_for_create(&self, pdb: &mut PodDisruptionBudget) {
        pdb.status = None;
    }

    fn prepare_for_update(&self, new: &mut PodDisruptionBudget, old: &PodDisruptionBudget) {
        new.status = old.status.clone();
    }

    fn validate(&self, pdb: &PodDisruptionBudget) -> FieldErrors {
        let mut errors = validate_meta(&pdb.metadata, NameRule::Subdomain);
        let Some(spec) = &pdb.spec else {
            return errors;
        };
        if spec.min_available.is_some() && spec.max_unavailable.is_some() {
            errors.push(FieldError::invalid(
                "spec",
                "",
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        if let Some(v) = &spec.min_available {
            errors.extend(validate_int_or_percent(v, "spec.minAvailable"));
        }
        if let Some(v) = &spec.max_unavailable {
            errors.extend(validate_int_or_percent(v, "spec.maxUnavailable"));
        }
        if let Some(selector) = &spec.selector {
            errors.extend(validate_label_selector(selector, "spec.selector"));
        }
        if let Some(policy) = spec.unhealthy_pod_eviction_policy.as_deref()
            && !EVICTION_POLICIES.contains(&policy)
        {
            errors.push(FieldError::unsupported(
                "spec.unhealthyPodEvictionPolicy",
                policy,
                EVICTION_POLICIES,
            ));
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Min Available",
                "string",
                "The minimum number of pods that must be available.",
            ),
            Column::new(
                "Max Unavailable",
                "string",
                "The maximum number of pods that may be unavailable.",
            ),
            Column::new(
                "Allowed Disruptions",
                "integer",
                "Calculated number of pods that may be disrupted at this time.",
            ),
        ]
    }

    fn cells(&self, pdb: &PodDisruptionBudget, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = pdb.spec.clone().unwrap_or_default();
        let allowed = pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed);
        vec![
            shown(spec.min_available.as_ref()),
            shown(spec.max_unavailable.as_ref()),
            Value::from(allowed),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Kind, column_names, create_errors};
    use serde_json::json;

    fn manifest() -> Value {
        json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}}
        })
    }

    #[test]
    fn create_drops_client_status() {
        let mut m = manifest();
        m["status"] = json!({"disruptionsAllowed": 9, "currentHealthy": 1,
            "desiredHealthy": 1, "expectedPods": 1});
        let pdb = PodDisruptionBudgetStrategy.admit_create(m).expect("admit");
        assert!(pdb.get("status").is_none());
        assert_eq!(pdb["spec"]["minAvailable"], "50%");
    }

    #[test]
    fn only_one_budget() {
        let mut bad = manifest();
        bad["spec"]["maxUnavailable"] = json!(1);
        let errors = create_errors(&PodDisruptionBudgetStrategy, bad);
        assert_eq!(errors.0[0].field, "spec");
        let mut bad = manifest();
        bad["spec"]["minAvailable"] = json!("150%");
        let errors = create_errors(&PodDisruptionBudgetStrategy, bad);
        assert_eq!(errors.0[0].field, "spec.minAvailable");
    }

    #[test]
    fn table_cells() {
        let pdb = PodDisruptionBudgetStrategy
            .admit_create(manifest())
            .expect("admit");
        let names = column_names(&PodDisruptionBudgetStrategy);
        assert_eq!(
            names,
            [
                "Name",
                "Min Available",
                "Max Unavailable",
                "Allowed Disruptions",
                "Age"
            ]
        );
        let cells = PodDisruptionBudgetStrategy.table_cells(&pdb, jiff::Timestamp::now());
        assert_eq!(cells[1..4], [json!("50%"), json!("N/A"), json!(0)]);
    }
}
