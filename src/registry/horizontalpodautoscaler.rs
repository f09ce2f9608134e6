//! autoscaling/v2 HorizontalPodAutoscaler: one replica at least and 80% CPU by default, a target
//! to scale, `maxReplicas >= minReplicas`, metrics whose source matches their type, and
//! TARGETS as kubectl prints them (`cpu: <unknown>/80%`).

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler, MetricSpec, MetricStatus,
    MetricTarget, ResourceMetricSource,
};
use serde_json::Value;

use super::fields::{FieldError, NameRule, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct HorizontalPodAutoscalerStrategy;

static INFO: KindInfo = KindInfo {
    group: "autoscaling",
    version: "v2",
    kind: "HorizontalPodAutoscaler",
    resource: "horizontalpodautoscalers",
    singular: "horizontalpodautoscaler",
    namespaced: true,
    short_names: &["hpa"],
    categories: &["all"],
    tracks_generation: false,
};

const METRIC_TYPES: &[&str] = &[
    "ContainerResource",
    "External",
    "Object",
    "Pods",
    "Resource",
];
const TARGET_TYPES: &[&str] = &["AverageValue", "Utilization", "Value"];
/// kubectl shows two metrics and counts the rest.
const SHOWN_METRICS: usize = 2;

fn default_cpu_metric() -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(80),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

/// Fills the unset parts of one direction's scaling rules with kube's defaults for it.
fn default_rules(
    rules: &mut Option<HPAScalingRules>,
    stabilization_window_seconds: i32,
    policies: &[(&str, i32)],
) {
    let rules = rules.get_or_insert_with(HPAScalingRules::default);
    rules
        .stabilization_window_seconds
        .get_or_insert(stabilization_window_seconds);
    rules.select_policy.get_or_insert_with(|| "Max".into());
    rules.policies.get_or_insert_with(|| {
        policies
            .iter()
            .map(|(kind, value)| HPAScalingPolicy {
                type_: kind.to_string(),
                value: *value,
                period_seconds: 15,
            })
            .collect()
    });
}

fn validate_metric(m: &MetricSpec, path: &str, errors: &mut FieldErrors) {
    if !METRIC_TYPES.contains(&m.type_.as_str()) {
        errors.push(FieldError::unsupported(
            format!("{path}.type"),
            &m.type_,
            METRIC_TYPES,
        ));
        return;
    }
    let (source, target) = match m.type_.as_str() {
        "Resource" => ("resource", m.resource.as_ref().map(|r| &r.target)),
        "ContainerResource" => (
            "containerResource",
            m.container_resource.as_ref().map(|r| &r.target),
        ),
        "Pods" => ("pods", m.pods.as_ref().map(|p| &p.target)),
        "Object" => ("object", m.object.as_ref().map(|o| &o.target)),
        _ => ("external", m.external.as_ref().map(|e| &e.target)),
    };
    let Some(target) = target else {
        let mut missing = FieldError::required(format!("{path}.{source}"));
        missing.message = format!(
            "Required value: must populate information for the given metric source (type {})",
            m.type_
        );
        errors.push(missing);
        return;
    };
    if !TARGET_TYPES.contains(&target.type_.as_str()) {
        errors.push(FieldError::unsupported(
            format!("{path}.{source}.target.type"),
            &target.type_,
            TARGET_TYPES,
        ));
    }
}

/// One metric as kubectl's TARGETS shows it: `current/target`, resources prefixed by name.
fn format_metric(spec: &MetricSpec, status: Option<&MetricStatus>) -> String {
    let unknown = || "<unknown>".to_string();
    let quantity = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.map_or_else(unknown, |q| q.0.clone())
    };
    let percent = |p: Option<i32>| p.map(|p| format!("{p}%"));
    match spec.type_.as_str() {
        "Resource" | "ContainerResource" => {
            let (name, target, current) = match spec.type_.as_str() {
                "Resource" => {
                    let Some(r) = &spec.resource else {
                        return "<unknown type>".into();
                    };
                    let current = status.and_then(|s| s.resource.as_ref()).map(|s| &s.current);
                    (&r.name, &r.target, current)
                }
                _ => {
                    let Some(r) = &spec.container_resource else {
                        return "<unknown type>".into();
                    };
                    let current = status
                        .and_then(|s| s.container_resource.as_ref())
                        .map(|s| &s.current);
                    (&r.name, &r.target, current)
                }
            };
            if target.average_value.is_some() {
                let current = quantity(current.and_then(|c| c.average_value.as_ref()));
                format!(
                    "{name}: {current}/{}",
                    quantity(target.average_value.as_ref())
                )
            } else {
                let current =
                    percent(current.and_then(|c| c.average_utilization)).unwrap_or_else(unknown);
                let target = percent(target.average_utilization).unwrap_or("<auto>".into());
                format!("{name}: {current}/{target}")
            }
        }
        "Pods" => {
            let target = spec
                .pods
                .as_ref()
                .and_then(|p| p.target.average_value.as_ref());
            let current = status
                .and_then(|s| s.pods.as_ref())
                .and_then(|p| p.current.average_value.as_ref());
            format!("{}/{}", quantity(current), quantity(target))
        }
        "Object" | "External" => {
            let (target, current) = if spec.type_ == "Object" {
                (
                    spec.object.as_ref().map(|o| &o.target),
                    status.and_then(|s| s.object.as_ref()).map(|o| &o.current),
                )
            } else {
                (
                    spec.external.as_ref().map(|e| &e.target),
                    status.and_then(|s| s.external.as_ref()).map(|e| &e.current),
                )
            };
            match target.and_then(|t| t.average_value.as_ref()) {
                Some(avg) => format!(
                    "{}/{} (avg)",
                    quantity(current.and_then(|c| c.average_value.as_ref())),
                    avg.0
                ),
                None => format!(
                    "{}/{}",
                    quantity(current.and_then(|c| c.value.as_ref())),
                    quantity(target.and_then(|t| t.value.as_ref()))
                ),
            }
        }
        _ => "<unknown type>".into(),
    }
}

fn format_metrics(specs: &[MetricSpec], statuses: &[MetricStatus]) -> String {
    if specs.is_empty() {
        return "<none>".into();
    }
    let shown: Vec<String> = specs
        .iter()
        .take(SHOWN_METRICS)
        .enumerate()
        .map(|(i, spec)| format_metric(spec, statuses.get(i)))
        .collect();
    let joined = shown.join(", ");
    match specs.len().saturating_sub(SHOWN_METRICS) {
        0 => joined,
        more => format!("{joined} + {more} more..."),
    }
}

impl Strategy for HorizontalPodAutoscalerStrategy {
    type Object = HorizontalPodAutoscaler;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, hpa: &mut HorizontalPodAutoscaler) {
        let Some(spec) = hpa.spec.as_mut() else {
            return;
        };
        spec.min_replicas.get_or_insert(1);
        if spec.metrics.as_ref().is_none_or(Vec::is_empty) {
            spec.metrics = Some(vec![default_cpu_metric()]);
        }
        // Rules are only completed when the client gave a behavior at all.
        if let Some(behavior) = spec.behavior.as_mut() {
            default_rules(&mut behavior.scale_up, 0, &[("Pods", 4), ("Percent", 100)]);
            default_rules(&mut behavior.scale_down, 300, &[("Percent", 100)]);
        }
    }

    fn prepare_for_create(&self, hpa: &mut HorizontalPodAutoscaler) {
        hpa.status = None;
    }

    fn prepare_for_update(&self, new: &mut HorizontalPodAutoscaler, old: &HorizontalPodAutoscaler) {
        new.status = old.status.clone();
    }

    fn validate(&self, hpa: &HorizontalPodAutoscaler) -> FieldErrors {
        let mut errors = validate_meta(&hpa.metadata, NameRule::Subdomain);
        let Some(spec) = &hpa.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        let target = &spec.scale_target_ref;
        if target.kind.is_empty() {
            errors.push(FieldError::required("spec.scaleTargetRef.kind"));
        }
        if target.name.is_empty() {
            errors.push(FieldError::required("spec.scaleTargetRef.name"));
        }
        let min = spec.min_replicas.unwrap_or(1);
        if min < 1 {
            errors.push(FieldError::invalid(
                "spec.minReplicas",
                &min.to_string(),
                "must be greater than or equal to 1",
            ));
        }
        if spec.max_replicas < 1 {
            errors.push(FieldError::invalid(
                "spec.maxReplicas",
                &spec.max_replicas.to_string(),
                "must be greater than 0",
            ));
        } else if spec.max_replicas < min {
            errors.push(FieldError::invalid(
                "spec.maxReplicas",
                &spec.max_replicas.to_string(),
                "must be greater than or equal to `minReplicas`",
            ));
        }
        for (i, m) in spec.metrics.iter().flatten().enumerate() {
            validate_metric(m, &format!("spec.metrics[{i}]"), &mut errors);
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Reference",
                "string",
                "scaleTargetRef points to the target resource to scale, and is used to the pods for which metrics should be collected, as well as to actually change the replica count.",
            ),
            Column::new(
                "Targets",
                "string",
                "metrics contains the specifications for which to use to calculate the desired replica count (the maximum replica count across all metrics will be used).  The desired replica count is calculated multiplying the ratio between the target value and the current value by the current number of pods.  Ergo, metrics used must decrease as the pod count is increased, and vice-versa.  See the individual metric source types for more information about how each type of metric must respond. If not set, the default metric will be set to 80% average CPU utilization.",
            ),
            Column::new(
                "MinPods",
                "string",
                "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.  It defaults to 1 pod.  minReplicas is allowed to be 0 if the alpha feature gate HPAScaleToZero is enabled and at least one Object or External metric is configured.  Scaling is active as long as at least one metric value is available.",
            ),
            Column::new(
                "MaxPods",
                "string",
                "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up. It cannot be less that minReplicas.",
            ),
            Column::new(
                "Replicas",
                "string",
                "currentReplicas is current number of replicas of pods managed by this autoscaler, as last seen by the autoscaler.",
            ),
        ]
    }

    fn cells(&self, hpa: &HorizontalPodAutoscaler, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = hpa.spec.clone().unwrap_or_default();
        let status = hpa.status.clone().unwrap_or_default();
        let target = &spec.scale_target_ref;
        vec![
            Value::String(format!("{}/{}", target.kind, target.name)),
            Value::String(format_metrics(
                spec.metrics.as_deref().unwrap_or_default(),
                status.current_metrics.as_deref().unwrap_or_default(),
            )),
            Value::String(
                spec.min_replicas
                    .map_or("<unset>".into(), |m| m.to_string()),
            ),
            Value::from(spec.max_replicas),
            Value::from(status.current_replicas.unwrap_or(0)),
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
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "maxReplicas": 5
            }
        })
    }

    #[test]
    fn defaults_min_replicas_and_cpu_metric() {
        let hpa = HorizontalPodAutoscalerStrategy
            .admit_create(manifest())
            .expect("admit");
        assert_eq!(hpa["spec"]["minReplicas"], 1);
        assert_eq!(
            hpa["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}])
        );
    }

    #[test]
    fn behavior_rules_are_completed() {
        let mut m = manifest();
        m["spec"]["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": 60}});
        let hpa = HorizontalPodAutoscalerStrategy
            .admit_create(m)
            .expect("admit");
        let behavior = &hpa["spec"]["behavior"];
        assert_eq!(behavior["scaleDown"]["stabilizationWindowSeconds"], 60);
        assert_eq!(
            behavior["scaleDown"]["policies"],
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}])
        );
        assert_eq!(behavior["scaleUp"]["stabilizationWindowSeconds"], 0);
        assert_eq!(behavior["scaleUp"]["selectPolicy"], "Max");
        assert_eq!(behavior["scaleUp"]["policies"][0]["type"], "Pods");
    }

    #[test]
    fn max_below_min_is_refused() {
        let mut bad = manifest();
        bad["spec"]["minReplicas"] = json!(6);
        let errors = create_errors(&HorizontalPodAutoscalerStrategy, bad);
        assert_eq!(errors.0[0].field, "spec.maxReplicas");
        assert!(errors.0[0].message.contains("`minReplicas`"));
    }

    #[test]
    fn table_cells() {
        let hpa = HorizontalPodAutoscalerStrategy
            .admit_create(manifest())
            .expect("admit");
        let names = column_names(&HorizontalPodAutoscalerStrategy);
        assert_eq!(
            names,
            [
                "Name",
                "Reference",
                "Targets",
                "MinPods",
                "MaxPods",
                "Replicas",
                "Age"
            ]
        );
        let cells = HorizontalPodAutoscalerStrategy.table_cells(&hpa, jiff::Timestamp::now());
        assert_eq!(
            cells[1..6],
            [
                json!("Deployment/web"),
                json!("cpu: <unknown>/80%"),
                json!("1"),
                json!(5),
                json!(0)
            ]
        );
    }
}
