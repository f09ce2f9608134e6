//! The HorizontalPodAutoscaler controller (autoscaling/v2): every 15 s per autoscaler (kube's
//! sync period) it reads the pods of the scale target, their CPU / memory from the resource
//! metrics the nodes report (`resource_metrics::PodMetrics`, what metrics.k8s.io serves),
//! works out the replica count (`autoscale_math`), writes it to the target's `spec.replicas`
//! when it changed, and reports status (current/desired replicas, current metrics, the
//! AbleToScale / ScalingActive / ScalingLimited conditions) with a SuccessfulRescale event.
//!
//! Metrics served: `Resource` cpu and memory, as `Utilization` (of the pods' requests) or
//! `AverageValue`. Others (Pods, Object, External, ContainerResource) need a custom metrics
//! API skiff does not have; such an autoscaler reports ScalingActive=False and leaves the
//! target alone. Not done: the policies' periodSeconds (each step is limited on its own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::autoscale_math::{Measured, Recommendations, clamp, policy_bound, proposal};
use super::informer::{Informer, Informers, split_key};
use super::ownership::{enqueue_self, is_deleting, labels, selector_matches};
use super::queue::WorkQueue;
use super::recorder::{EventType, Recorder};
use super::scheduler::set_condition;
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{Objects, Part, Scope, now_rfc3339, str_at};
use crate::apiserver::resource_metrics::{PodMetrics, PodUsage};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::{self, Kind, quantity};

/// kube's `--horizontal-pod-autoscaler-sync-period`.
const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// kube's default scale-down stabilization window.
const DEFAULT_DOWN_WINDOW: Duration = Duration::from_secs(300);

pub struct Autoscaler {
    objects: Objects,
    kind: &'static dyn Kind,
    autoscalers: Arc<Informer>,
    pods: Arc<Informer>,
    metrics: PodMetrics,
    recorder: Recorder,
    recommendations: Mutex<HashMap<String, Recommendations>>,
}

/// What the autoscaler worked out in one round.
struct Round {
    current: i32,
    desired: i32,
    metrics: Vec<Value>,
    conditions: Vec<Value>,
    reason: String,
}

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_rfc3339(),
    })
}

/// The scale target's kind, from its apiVersion and kind.
fn target_kind(reference: &Value) -> Option<&'static dyn Kind> {
    let api_version = str_at(reference, "/apiVersion");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = str_at(reference, "/kind");
    registry::all_kinds().into_iter().find(|k| {
        let info = k.info();
        info.kind == kind && info.group == group && (version.is_empty() || info.version == version)
    })
}

/// The pods' summed request of `resource`, or the first container requesting none.
fn total_requests(pods: &[Value], resource: &str) -> Result<f64, String> {
    let mut total = 0.0;
    for pod in pods {
        for container in pod
            .at("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let request = container
                .at(&format!("/resources/requests/{resource}"))
                .and_then(Value::as_str)
                .and_then(quantity::parse);
            match request {
                Some(r) => total += r,
                None => {
                    return Err(format!(
                        "missing request for {resource} in container {} of Pod {}",
                        str_at(container, "/name"),
                        str_at(pod, "/metadata/name")
                    ));
                }
            }
        }
    }
    Ok(total)
}

/// One Resource metric: what it measured against its target, and its status entry.
fn measure(
    spec: &Value,
    pods: &[Value],
    usage: &HashMap<String, PodUsage>,
) -> Result<(Measured, Value), String> {
    let metric_type = str_at(spec, "/type");
    if metric_type != "Resource" {
        return Err(format!(
            "the {metric_type} metric type needs a custom metrics API, which skiff does not serve"
        ));
    }
    let resource = str_at(spec, "/resource/name");
    let measured: Vec<Value> = pods
        .iter()
        .filter(|p| usage.contains_key(str_at(p, "/metadata/name")))
        .cloned()
        .collect();
    if measured.is_empty() {
        return Err(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        ));
    }
    let used: f64 = measured
        .iter()
        .map(|p| {
            let u = usage[str_at(p, "/metadata/name")];
            match resource {
                "cpu" => u.cpu_cores,
                _ => u.memory_bytes,
            }
        })
        .sum();
    let count = measured.len();
    let average = used / count as f64;
    let average_value = match resource {
        "cpu" => format!("{}m", (average * 1000.0).round() as i64),
        _ => format!("{}", average.round() as i64),
    };
    let target = spec.at("/resource/target").cloned().unwrap_or_default();
    match str_at(&target, "/type") {
        "Utilization" => {
            let requested = total_requests(&measured, resource)?;
            if requested <= 0.0 {
                return Err(format!("missing request for {resource}"));
            }
            let utilization = (used * 100.0 / requested).floor();
            let wanted = target
                .get("averageUtilization")
                .and_then(Value::as_f64)
                .unwrap_or(80.0)
                .max(1.0);
            let status = json!({"type": "Resource", "resource": {"name": resource,
                "current": {"averageUtilization": utilization as i64, "averageValue": average_value}}});
            Ok((
                Measured {
                    ratio: utilization / wanted,
                    pods: count,
                },
                status,
            ))
        }
        "AverageValue" => {
            let wanted = target
                .get("averageValue")
                .and_then(Value::as_str)
                .and_then(quantity::parse)
                .filter(|w| *w > 0.0)
                .ok_or_else(|| format!("invalid averageValue target for {resource}"))?;
            let status = json!({"type": "Resource", "resource": {"name": resource,
                "current": {"averageValue": average_value}}});
            Ok((
                Measured {
                    ratio: average / wanted,
                    pods: count,
                },
                status,
            ))
        }
        other => Err(format!(
            "target type {other} is not valid for a Resource metric"
        )),
    }
}

fn window(behavior: Option<&Value>, default: Duration) -> Duration {
    behavior
        .and_then(|b| b.get("stabilizationWindowSeconds"))
        .and_then(Value::as_u64)
        .map_or(default, Duration::from_secs)
}

impl Autoscaler {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kind: &'static dyn Kind,
        pods: &'static dyn Kind,
        metrics: PodMetrics,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let autoscalers = informers.of(kind);
        autoscalers.add_handler(enqueue_self(queue.clone()));
        let controller = Arc::new(Autoscaler {
            recorder: Recorder::new(objects.clone(), "horizontal-pod-autoscaler"),
            objects,
            kind,
            autoscalers,
            pods: informers.of(pods),
            metrics,
            recommendations: Mutex::new(HashMap::new()),
        });
        (controller, queue)
    }

    /// The target's live pods that its selector matches.
    fn pods_of(&self, namespace: &str, target: &Value) -> Vec<Value> {
        let selector = target.at("/spec/selector");
        if selector.is_none() {
            return Vec::new();
        }
        self.pods
            .list_namespace(namespace)
            .into_iter()
            .filter(|p| !is_deleting(p) && selector_matches(selector, &labels(p)))
            .filter(|p| {
                !matches!(
                    str_at(p, "/status/phase"),
                    "Succeeded" | "Failed" | "Pending" | ""
                )
            })
            .map(|p| (*p).clone())
            .collect()
    }

    /// One round for an autoscaler whose target currently has `current` replicas.
    async fn evaluate(&self, key: &str, hpa: &Value, target: &Value, current: i32) -> Round {
        let namespace = str_at(hpa, "/metadata/namespace");
        let spec = hpa.get("spec").cloned().unwrap_or_default();
        let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1) as i32;
        let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(1) as i32;
        let able = condition(
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size",
        );
        if current == 0 {
            return Round {
                current,
                desired: 0,
                metrics: Vec::new(),
                conditions: vec![
                    able,
                    condition(
                        "ScalingActive",
                        false,
                        "ScalingDisabled",
                        "scaling is disabled since the replica count of the target is zero",
                    ),
                ],
                reason: String::new(),
            };
        }
        let pods = self.pods_of(namespace, target);
        let usage = self.metrics.usage(&self.objects, &pods).await;
        let specs = spec
            .get("metrics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let (mut best, mut metrics, mut failure, mut reason) = (None, Vec::new(), None, "");
        for metric in &specs {
            match measure(metric, &pods, &usage) {
                Ok((measured, status)) => {
                    let wanted = proposal(current, measured);
                    if best.is_none_or(|b| wanted > b) {
                        best = Some(wanted);
                        reason = if wanted > current {
                            "above target"
                        } else {
                            "below target"
                        };
                    }
                    metrics.push(status);
                }
                Err(message) => failure = Some(message),
            }
        }
        let Some(proposed) = best else {
            let message = failure.unwrap_or_else(|| "no metrics to scale on".into());
            return Round {
                current,
                desired: current,
                metrics,
                conditions: vec![
                    able,
                    condition("ScalingActive", false, "FailedGetResourceMetric", &message),
                ],
                reason: String::new(),
            };
        };
        let behavior = spec.get("behavior");
        let (up_rules, down_rules) = (
            behavior.and_then(|b| b.get("scaleUp")),
            behavior.and_then(|b| b.get("scaleDown")),
        );
        let stabilized = self
            .recommendations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .stabilize(
                Instant::now(),
                current,
                proposed,
                window(up_rules, Duration::ZERO),
                window(down_rules, DEFAULT_DOWN_WINDOW),
            );
        let limited = if stabilized > current {
            stabilized.min(policy_bound(up_rules, current, true))
        } else {
            stabilized.max(policy_bound(down_rules, current, false))
        };
        let (desired, limit) = clamp(limited, min, max);
        let limited_condition = match limit {
            Some(reason) => condition(
                "ScalingLimited",
                true,
                reason,
                "the desired replica count is outside the autoscaler's range",
            ),
            None => condition(
                "ScalingLimited",
                false,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            ),
        };
        let first = metrics
            .first()
            .map(|m| str_at(m, "/resource/name").to_string())
            .unwrap_or_default();
        Round {
            current,
            desired,
            metrics,
            conditions: vec![
                if desired != current {
                    condition(
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        &format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    )
                } else {
                    able
                },
                condition(
                    "ScalingActive",
                    true,
                    "ValidMetricFound",
                    &format!(
                        "the HPA was able to successfully calculate a replica count from {first} resource utilization (percentage of request)"
                    ),
                ),
                limited_condition,
            ],
            reason: format!("{first} resource utilization (percentage of request) {reason}"),
        }
    }

    /// Writes the round into the autoscaler's status, keeping each condition's transition time
    /// while its status stays.
    async fn report(&self, hpa: &Value, round: &Round, rescaled: bool) -> Result<(), Error> {
        let namespace = str_at(hpa, "/metadata/namespace").to_string();
        let change = |h: &mut Value| {
            let previous = h.get("status").cloned().unwrap_or_default();
            let mut status = json!({
                "currentReplicas": round.current,
                "desiredReplicas": round.desired,
                "currentMetrics": round.metrics,
            });
            if let Some(generation) = h.at("/metadata/generation") {
                status["observedGeneration"] = generation.clone();
            }
            match (rescaled, previous.get("lastScaleTime")) {
                (true, _) => status["lastScaleTime"] = json!(now_rfc3339()),
                (false, Some(at)) => status["lastScaleTime"] = at.clone(),
                (false, None) => {}
            }
            status["conditions"] = previous.get("conditions").cloned().unwrap_or(json!([]));
            h["status"] = status;
            for mut c in round.conditions.iter().cloned() {
                let kept = previous
                    .get("conditions")
                    .and_then(Value::as_array)
                    .and_then(|list| list.iter().find(|o| o.get("type") == c.get("type")))
                    .filter(|o| o.get("status") == c.get("status"))
                    .and_then(|o| o.get("lastTransitionTime").cloned());
                if let Some(at) = kept {
                    c["lastTransitionTime"] = at;
                }
                set_condition(h, c);
            }
        };
        modify(
            &self.objects,
            self.kind,
            Some(&namespace),
            str_at(hpa, "/metadata/name"),
            Part::Status,
            change,
        )
        .await?;
        Ok(())
    }
}

impl Autoscaler {
    /// The target is missing: say so in AbleToScale and look again next period.
    async fn cannot_get_scale(&self, hpa: &Value, why: &str) -> Result<Action, Error> {
        let message =
            format!("the HPA controller was unable to get the target's current scale: {why}");
        let round = Round {
            current: 0,
            desired: 0,
            metrics: Vec::new(),
            conditions: vec![condition("AbleToScale", false, "FailedGetScale", &message)],
            reason: String::new(),
        };
        self.report(hpa, &round, false).await?;
        Ok(Action::RequeueAfter(SYNC_PERIOD))
    }
}

impl Reconcile for Autoscaler {
    fn name(&self) -> &'static str {
        "horizontal-pod-autoscaler"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(hpa) = self.autoscalers.get(key) else {
            self.recommendations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
            return Ok(Action::Done);
        };
        if is_deleting(&hpa) {
            return Ok(Action::Done);
        }
        let (namespace, _) = split_key(key);
        let reference = hpa.at("/spec/scaleTargetRef").cloned().unwrap_or_default();
        let Some(kind) = target_kind(&reference) else {
            let missing = format!(
                "no kind {} in {}",
                str_at(&reference, "/kind"),
                str_at(&reference, "/apiVersion")
            );
            return self.cannot_get_scale(&hpa, &missing).await;
        };
        let target_name = str_at(&reference, "/name");
        let target = match self
            .objects
            .get(Scope::new(kind, namespace), target_name, false)
            .await
        {
            Ok(target) => target,
            Err(ApiError::NotFound { .. }) => {
                let missing = format!("{} {target_name} not found", kind.info().resource);
                return self.cannot_get_scale(&hpa, &missing).await;
            }
            Err(e) => return Err(e.into()),
        };
        let current = target
            .at("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1) as i32;
        let round = self.evaluate(key, &hpa, &target, current).await;
        let rescale = round.desired != current && round.current != 0;
        if rescale {
            let desired = round.desired;
            let written = modify(
                &self.objects,
                kind,
                namespace,
                target_name,
                Part::Main,
                |t: &mut Value| t["spec"]["replicas"] = json!(desired),
            )
            .await?;
            if written.is_some() {
                tracing::info!(
                    target = target_name,
                    from = current,
                    to = desired,
                    "rescaled"
                );
                let message = format!("New size: {desired}; reason: {}", round.reason);
                self.recorder
                    .record(&hpa, EventType::Normal, "SuccessfulRescale", &message)
                    .await;
            }
        }
        self.report(&hpa, &round, rescale).await?;
        Ok(Action::RequeueAfter(SYNC_PERIOD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cpu_request: Option<&str>) -> Value {
        let resources = match cpu_request {
            Some(cpu) => json!({"requests": {"cpu": cpu}}),
            None => json!({}),
        };
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "resources": resources}]}})
    }

    fn cpu_metric(percent: i64) -> Value {
        json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": percent}}})
    }

    #[test]
    fn utilization_is_usage_over_requests_of_the_measured_pods() {
        let pods = vec![
            pod("a", Some("100m")),
            pod("b", Some("100m")),
            pod("c", Some("100m")),
        ];
        let usage = HashMap::from([
            (
                "a".to_string(),
                PodUsage {
                    cpu_cores: 0.2,
                    memory_bytes: 0.0,
                },
            ),
            (
                "b".to_string(),
                PodUsage {
                    cpu_cores: 0.1,
                    memory_bytes: 0.0,
                },
            ),
        ]);
        let (measured, status) = measure(&cpu_metric(50), &pods, &usage).expect("measured");
        assert_eq!(measured.pods, 2, "a pod without metrics is left out");
        assert!((measured.ratio - 3.0).abs() < 1e-9, "150% of a 50% target");
        assert_eq!(status["resource"]["current"]["averageUtilization"], 150);
        assert_eq!(status["resource"]["current"]["averageValue"], "150m");
        assert_eq!(proposal(3, measured), 6);
    }

    #[test]
    fn a_pod_without_a_request_is_an_error_and_so_are_custom_metrics() {
        let pods = vec![pod("a", None)];
        let usage = HashMap::from([("a".to_string(), PodUsage::default())]);
        let err = measure(&cpu_metric(50), &pods, &usage).expect_err("no request");
        assert!(
            err.contains("missing request for cpu in container c of Pod a"),
            "{err}"
        );
        let custom = json!({"type": "Pods", "pods": {}});
        assert!(measure(&custom, &pods, &usage).is_err());
        assert!(measure(&cpu_metric(50), &pods, &HashMap::new()).is_err());
    }

    #[test]
    fn scale_targets_resolve_by_group_and_kind() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
        assert_eq!(
            target_kind(&deployment).map(|k| k.info().resource),
            Some("deployments")
        );
        let unknown = json!({"apiVersion": "apps/v1", "kind": "Nope", "name": "x"});
        assert!(target_kind(&unknown).is_none());
    }
}
