//! A Deployment's status: replica counts summed over its ReplicaSets and the two conditions
//! `kubectl rollout status` and `kubectl describe` read, after Kubernetes' calculateStatus and
//! syncRolloutStatus. Pure functions of the Deployment, its ReplicaSets and the time.
//!
//! - Available: at least `replicas - maxUnavailable` pods available.
//! - Progressing: True/NewReplicaSetAvailable once every replica is updated and available;
//!   True/NewReplicaSetCreated or ReplicaSetUpdated while it moves (each move refreshes
//!   lastUpdateTime); False/ProgressDeadlineExceeded when nothing moved for
//!   progressDeadlineSeconds; Unknown/DeploymentPaused and DeploymentResumed around a pause.

use serde_json::{Value, json};

use super::rollout::{desired_replicas, max_unavailable, status_count};
use crate::apiserver::objects::name_of;
use crate::json_path::JsonPath;

/// What a reconcile did, for the Progressing condition.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    CreatedNewReplicaSet,
}

/// Kubernetes' DeploymentComplete: every replica updated and available, the spec observed.
pub fn is_complete(d: &Value, status: &Value) -> bool {
    let desired = desired_replicas(d);
    let generation = d
        .at("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    status_count(&json!({"status": status}), "updatedReplicas") == desired
        && status_count(&json!({"status": status}), "replicas") == desired
        && status_count(&json!({"status": status}), "availableReplicas") == desired
        && status
            .get("observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            >= generation
}

/// The status a reconcile leaves: counts over the ReplicaSets and the two conditions.
pub fn next_status(
    d: &Value,
    new: Option<&Value>,
    old: &[Value],
    step: Step,
    now: jiff::Timestamp,
) -> Value {
    let all: Vec<&Value> = new.into_iter().chain(old.iter()).collect();
    let sum = |field: &str| all.iter().map(|rs| status_count(rs, field)).sum::<i64>();
    let desired = desired_replicas(d);
    let available = sum("availableReplicas");
    let mut status = json!({
        "observedGeneration": d.at("/metadata/generation").cloned().unwrap_or(json!(0)),
        "replicas": sum("replicas"),
        "updatedReplicas": new.map(|rs| status_count(rs, "replicas")).unwrap_or(0),
        "readyReplicas": sum("readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": (desired - available).max(0),
    });
    // Zero counts are omitted, as Kubernetes' omitempty does.
    if let Some(fields) = status.as_object_mut() {
        fields.retain(|k, v| k == "observedGeneration" || v.as_i64() != Some(0));
    }
    if let Some(count) = d.at("/status/collisionCount") {
        status["collisionCount"] = count.clone();
    }
    let mut conditions: Vec<Value> = d
        .at("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let min_available = desired - max_unavailable(d);
    if available >= min_available {
        set_condition(
            &mut conditions,
            &stamp,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            false,
        );
    } else {
        set_condition(
            &mut conditions,
            &stamp,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            false,
        );
    }
    let paused = d.at("/spec/paused").and_then(Value::as_bool) == Some(true);
    let current = conditions
        .iter()
        .find(|c| c["type"] == "Progressing")
        .cloned();
    let current_reason = current
        .as_ref()
        .and_then(|c| c["reason"].as_str())
        .unwrap_or("")
        .to_string();
    let rs_name = new.map(name_of).unwrap_or("");
    if paused {
        if current_reason != "DeploymentPaused" {
            set_condition(
                &mut conditions,
                &stamp,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
                false,
            );
        }
    } else {
        if current_reason == "DeploymentPaused" {
            set_condition(
                &mut conditions,
                &stamp,
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                false,
            );
        }
        let previous = d.get("status").cloned().unwrap_or_else(|| json!({}));
        let count = |s: &Value, f: &str| s.get(f).and_then(Value::as_i64).unwrap_or(0);
        let progressed = count(&status, "updatedReplicas") > count(&previous, "updatedReplicas")
            || count(&status, "replicas") - count(&status, "updatedReplicas")
                < count(&previous, "replicas") - count(&previous, "updatedReplicas")
            || count(&status, "readyReplicas") > count(&previous, "readyReplicas")
            || count(&status, "availableReplicas") > count(&previous, "availableReplicas");
        if is_complete(d, &status) && new.is_some() {
            let message = format!("ReplicaSet \"{rs_name}\" has successfully progressed.");
            set_condition(
                &mut conditions,
                &stamp,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &message,
                false,
            );
        } else if step == Step::CreatedNewReplicaSet {
            let message = format!("Created new replica set \"{rs_name}\"");
            set_condition(
                &mut conditions,
                &stamp,
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                &message,
                false,
            );
        } else if progressed || current.is_none() {
            let message = format!("ReplicaSet \"{rs_name}\" is progressing.");
            set_condition(
                &mut conditions,
                &stamp,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                &message,
                true,
            );
        } else if timed_out(d, current.as_ref(), now) {
            let message = format!("ReplicaSet \"{rs_name}\" has timed out progressing.");
            set_condition(
                &mut conditions,
                &stamp,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                &message,
                false,
            );
        }
    }
    if !conditions.is_empty() {
        status["conditions"] = Value::Array(conditions);
    }
    status
}

/// Progress stalled past progressDeadlineSeconds since the condition last moved.
pub fn timed_out(d: &Value, progressing: Option<&Value>, now: jiff::Timestamp) -> bool {
    let Some(condition) = progressing else {
        return false;
    };
    if matches!(
        condition["reason"].as_str(),
        Some("NewReplicaSetAvailable" | "ProgressDeadlineExceeded")
    ) {
        return false;
    }
    let deadline = d
        .at("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(600);
    condition["lastUpdateTime"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t + jiff::SignedDuration::from_secs(deadline) < now)
}

/// Sets a condition: unchanged when status and reason are (unless `refresh`), the transition
/// time kept while the status stays.
pub fn set_condition(
    conditions: &mut Vec<Value>,
    now: &str,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    refresh: bool,
) {
    let existing = conditions.iter().position(|c| c["type"] == kind);
    let mut transition = now.to_string();
    if let Some(i) = existing {
        let c = &conditions[i];
        if c["status"] == status {
            if c["reason"] == reason && !refresh {
                return;
            }
            if let Some(t) = c["lastTransitionTime"].as_str() {
                transition = t.to_string();
            }
        }
        conditions.remove(i);
    }
    conditions.push(json!({
        "type": kind,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64) -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}},
        })
    }

    #[test]
    fn status_sums_replica_sets_and_reports_completion() {
        let d = deployment(3);
        let new = json!({"metadata": {"name": "web-abc"},
            "status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3}});
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let status = next_status(&d, Some(&new), &[], Step::Nothing, now);
        assert_eq!(status["replicas"], 3);
        assert_eq!(status["updatedReplicas"], 3);
        assert_eq!(status["observedGeneration"], 2);
        assert!(status.get("unavailableReplicas").is_none());
        assert!(is_complete(&d, &status));
        let progressing = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Progressing"))
            .expect("progressing");
        assert_eq!(progressing["reason"], "NewReplicaSetAvailable");
        let old = json!({"metadata": {"name": "web-old"}, "status": {"replicas": 1, "availableReplicas": 1}});
        let status = next_status(&d, Some(&new), &[old], Step::Nothing, now);
        assert!(!is_complete(&d, &status));
    }

    #[test]
    fn a_stalled_rollout_times_out_after_the_progress_deadline() {
        let mut d = deployment(3);
        d["spec"]["progressDeadlineSeconds"] = json!(60);
        let condition = |reason: &str, at: &str| json!({"type": "Progressing", "status": "True", "reason": reason, "lastUpdateTime": at});
        let now: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().expect("time");
        assert!(timed_out(
            &d,
            Some(&condition("ReplicaSetUpdated", "2026-01-01T00:00:00Z")),
            now
        ));
        assert!(!timed_out(
            &d,
            Some(&condition("ReplicaSetUpdated", "2026-01-01T00:04:30Z")),
            now
        ));
        assert!(!timed_out(
            &d,
            Some(&condition("NewReplicaSetAvailable", "2026-01-01T00:00:00Z")),
            now
        ));
        assert!(!timed_out(&d, None, now));
        // No progress since: the condition turns False.
        d["status"] = json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
            "conditions": [condition("ReplicaSetUpdated", "2026-01-01T00:00:00Z")]});
        let new = json!({"metadata": {"name": "web-abc"}, "status": {"replicas": 1}});
        let status = next_status(&d, Some(&new), &[], Step::Nothing, now);
        let progressing = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Progressing"))
            .expect("progressing");
        assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");
        assert_eq!(progressing["status"], "False");
    }

    #[test]
    fn pausing_and_resuming_show_in_progressing() {
        let mut d = deployment(1);
        d["spec"]["paused"] = json!(true);
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let status = next_status(&d, None, &[], Step::Nothing, now);
        let reason = |s: &Value| {
            s["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Progressing"))
                .map(|c| c["reason"].clone())
        };
        assert_eq!(reason(&status), Some(json!("DeploymentPaused")));
        d["status"] = status;
        d["spec"]["paused"] = json!(false);
        let status = next_status(&d, None, &[], Step::Nothing, now);
        assert_ne!(reason(&status), Some(json!("DeploymentPaused")));
    }
}
