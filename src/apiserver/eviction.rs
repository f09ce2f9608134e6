//! `POST pods/<name>/eviction` (what `kubectl drain` calls): deletes the pod unless its
//! PodDisruptionBudget forbids it, after kube-apiserver's EvictionREST:
//! 1. a pod that is finished, Pending or already being deleted goes without a budget check
//!    (it disrupts nothing that is running);
//! 2. the budgets of the pod's namespace whose selector covers it: none, the pod goes; more
//!    than one, 500 (kube does not support that either);
//! 3. an unready pod goes without using up the budget when the budget allows it
//!    (unhealthyPodEvictionPolicy AlwaysAllow, or IfHealthyBudget with enough healthy pods);
//! 4. otherwise the budget's status is checked and decremented in one guarded write:
//!    `disruptionsAllowed` 0 refuses with 429 (the DisruptionBudget cause), else it drops by
//!    one and `disruptedPods` records the pod, so the disruption controller does not count
//!    it healthy before it is gone. The write is conditional on the budget's revision and
//!    re-checked on a lost race, so two evictions cannot both spend the last disruption;
//! 5. the pod is deleted with the Eviction's DeleteOptions.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::handlers::json_response;
use super::objects::{DeleteOptions, ListOptions, Objects, Part, Scope, name_of, now_rfc3339};
use super::request::{ResourceTarget, decode_body};
use super::status::ApiError;
use super::subresources::success;
use crate::controllers::ownership::labels;
use crate::controllers::replicaset::is_ready;
use crate::json_path::JsonPath;
use crate::registry::{self, poddisruptionbudget};

fn int_at(object: &Value, pointer: &str) -> i64 {
    object.at(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// Step 1: evicting these pods disrupts nothing.
fn ignores_budgets(pod: &Value) -> bool {
    matches!(
        pod.at("/status/phase").and_then(Value::as_str),
        None | Some("Succeeded" | "Failed" | "Pending")
    ) || super::objects::is_deleting(pod)
}

/// Step 3: an unready pod the budget lets go without spending a disruption.
fn unhealthy_may_go(pod: &Value, pdb: &Value) -> bool {
    if is_ready(pod) {
        return false;
    }
    match pdb
        .at("/spec/unhealthyPodEvictionPolicy")
        .and_then(Value::as_str)
    {
        Some("AlwaysAllow") => true,
        _ => {
            let desired = int_at(pdb, "/status/desiredHealthy");
            int_at(pdb, "/status/currentHealthy") >= desired && desired > 0
        }
    }
}

/// Step 4 on the stored budget: the budget with one disruption spent on `pod`, or why not.
fn spend_disruption(pdb: &Value, pod: &str) -> Result<Value, ApiError> {
    let name = name_of(pdb);
    if int_at(pdb, "/status/observedGeneration") < int_at(pdb, "/metadata/generation") {
        return Err(ApiError::DisruptionBudget {
            cause: format!("The disruption budget {name} is still being processed by the server."),
        });
    }
    let allowed = int_at(pdb, "/status/disruptionsAllowed");
    if allowed < 0 {
        return Err(ApiError::Forbidden(format!(
            "poddisruptionbudgets.policy \"{name}\" is forbidden: pdb disruptions allowed is negative"
        )));
    }
    if allowed == 0 {
        return Err(ApiError::DisruptionBudget {
            cause: format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                int_at(pdb, "/status/desiredHealthy"),
                int_at(pdb, "/status/currentHealthy"),
            ),
        });
    }
    let mut next = pdb.clone();
    let status = &mut next["status"];
    status["disruptionsAllowed"] = json!(allowed - 1);
    if !status.get("disruptedPods").is_some_and(Value::is_object) {
        status["disruptedPods"] = json!({});
    }
    let now = now_rfc3339();
    status["disruptedPods"][pod] = json!(now);
    if allowed == 1 {
        poddisruptionbudget::set_disruption_allowed(status, None, &now);
    }
    Ok(next)
}

/// `POST pods/<name>/eviction` (module docs).
pub async fn evict(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let eviction = decode_body(headers, body)?;
    let options = match eviction.get("deleteOptions") {
        Some(o) => DeleteOptions::from_body(o.to_string().as_bytes())?,
        None => DeleteOptions::default(),
    };
    let pods = Scope::new(target.kind, target.namespace.as_deref());
    let pod = objects.get(pods, name, true).await?;
    let pdb_kind = registry::lookup("policy", "v1", "poddisruptionbudgets");
    if let Some(pdb_kind) = pdb_kind.filter(|_| !ignores_budgets(&pod)) {
        let budgets = Scope::new(pdb_kind, target.namespace.as_deref());
        let pod_labels: BTreeMap<String, String> = labels(&pod);
        let covering: Vec<Value> = objects
            .list(budgets, &ListOptions::default())
            .await?
            .items
            .into_iter()
            .filter(|pdb| poddisruptionbudget::selects(pdb, &pod_labels))
            .collect();
        match covering.as_slice() {
            [] => {}
            [pdb] if unhealthy_may_go(&pod, pdb) => {}
            [pdb] => {
                let transform = |current: &Value| spend_disruption(current, name);
                objects
                    .update(
                        budgets,
                        name_of(pdb),
                        Part::Status,
                        &transform,
                        options.dry_run,
                    )
                    .await?;
                tracing::info!(
                    pod = name,
                    budget = name_of(pdb),
                    "eviction spends a disruption"
                );
            }
            _ => {
                return Err(ApiError::Internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
                ));
            }
        }
    }
    objects.delete(pods, name, &options).await?;
    Ok(json_response(StatusCode::CREATED, &success()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(allowed: i64) -> Value {
        json!({"metadata": {"name": "web", "generation": 1},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"observedGeneration": 1, "disruptionsAllowed": allowed,
                "currentHealthy": 2 + allowed, "desiredHealthy": 2, "expectedPods": 2 + allowed}})
    }

    #[test]
    fn the_last_disruption_is_spent_once() {
        let spent = spend_disruption(&budget(1), "web-1").expect("one allowed");
        assert_eq!(spent["status"]["disruptionsAllowed"], 0);
        assert!(spent["status"]["disruptedPods"]["web-1"].is_string());
        assert_eq!(
            spent["status"]["conditions"][0]["reason"],
            "InsufficientPods"
        );
        let refused = spend_disruption(&spent, "web-2").expect_err("none left");
        assert_eq!(refused.code(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            refused.to_string(),
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        let status = refused.to_status();
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(status["details"]["causes"][0]["reason"], "DisruptionBudget");
        assert_eq!(
            status["details"]["causes"][0]["message"],
            "The disruption budget web needs 2 healthy pods and has 3 currently"
        );
        let mut stale = budget(1);
        stale["metadata"]["generation"] = json!(2);
        assert!(
            spend_disruption(&stale, "web-1").is_err(),
            "not yet observed"
        );
    }

    #[test]
    fn pending_finished_and_unready_pods_go_without_spending() {
        let pod = |phase: &str, ready: &str| json!({"status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}});
        assert!(ignores_budgets(&pod("Pending", "False")));
        assert!(ignores_budgets(&pod("Succeeded", "False")));
        assert!(!ignores_budgets(&pod("Running", "True")));
        assert!(unhealthy_may_go(&pod("Running", "False"), &budget(0)));
        assert!(!unhealthy_may_go(&pod("Running", "True"), &budget(0)));
        let mut short = budget(0);
        short["status"]["currentHealthy"] = json!(1);
        assert!(!unhealthy_may_go(&pod("Running", "False"), &short));
        short["spec"]["unhealthyPodEvictionPolicy"] = json!("AlwaysAllow");
        assert!(unhealthy_may_go(&pod("Running", "False"), &short));
    }
}
