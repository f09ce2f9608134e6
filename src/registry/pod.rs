//! core/v1 Pod: spec defaults as kube-apiserver applies them, status owned by the kubelet
//! (phase Pending on create), spec immutable apart from images.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus, Toleration};
use serde_json::Value;

use super::fields::{FieldError, NameRule, or_none, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};
use crate::json_path::JsonPath;

pub struct PodStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    resource: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    tracks_generation: false,
};

fn default_container(c: &mut Container) {
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or("");
        let tag = image.rsplit('/').next().unwrap_or("");
        let latest = !tag.contains(':') || tag.ends_with(":latest");
        let policy = if latest && !image.contains('@') {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.image_pull_policy = Some(policy.into());
    }
    if c.termination_message_path.is_none() {
        c.termination_message_path = Some("/dev/termination-log".into());
    }
    if c.termination_message_policy.is_none() {
        c.termination_message_policy = Some("File".into());
    }
    for port in c.ports.iter_mut().flatten() {
        if port.protocol.is_none() {
            port.protocol = Some("TCP".into());
        }
    }
    if c.resources.is_none() {
        c.resources = Some(Default::default());
    }
}

/// The service account a pod runs as: `default` when the spec names none (as admission sets it).
pub fn service_account_of(pod: &Value) -> &str {
    match pod.at("/spec/serviceAccountName").and_then(Value::as_str) {
        None | Some("") => "default",
        Some(name) => name,
    }
}

/// Pod spec defaults, shared with the pod templates of workload kinds.
pub fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);
    spec.preemption_policy
        .get_or_insert_with(|| "PreemptLowerPriority".into());
    spec.priority.get_or_insert(0);
    for c in spec.containers.iter_mut() {
        default_container(c);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c);
    }
}

/// ServiceAccount admission's defaulting: a pod runs as `default` unless it names an account
/// (in either the current or the deprecated field, kept equal as kube-apiserver does).
fn default_service_account(spec: &mut PodSpec) {
    let name = [&spec.service_account_name, &spec.service_account]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| "default".into());
    spec.service_account_name = Some(name.clone());
    spec.service_account = Some(name);
}

/// A resource with a limit but no request is requested at its limit (kube's SetDefaults_Pod;
/// pods only, not templates).
fn default_requests_to_limits(c: &mut Container) {
    let Some(resources) = c.resources.as_mut() else {
        return;
    };
    let Some(limits) = resources.limits.as_ref().filter(|l| !l.is_empty()) else {
        return;
    };
    let requests = resources.requests.get_or_insert_with(Default::default);
    for (name, limit) in limits {
        requests
            .entry(name.clone())
            .or_insert_with(|| limit.clone());
    }
}

/// The pod's QoS class from its containers' cpu and memory (kube's GetPodQOS): no requests or
/// limits at all is BestEffort; limits on both for every container, equal to the requests, is
/// Guaranteed; anything else Burstable.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    const COMPUTE: [&str; 2] = ["cpu", "memory"];
    let amount = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        super::quantity::millis(&q.0).unwrap_or(0)
    };
    let mut requests = std::collections::BTreeMap::new();
    let mut limits = std::collections::BTreeMap::new();
    let mut guaranteed = true;
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        let resources = c.resources.clone().unwrap_or_default();
        for (name, q) in resources.requests.iter().flatten() {
            if COMPUTE.contains(&name.as_str()) && amount(q) != 0 {
                *requests.entry(name.clone()).or_insert(0) += amount(q);
            }
        }
        let mut found = 0;
        for (name, q) in resources.limits.iter().flatten() {
            if COMPUTE.contains(&name.as_str()) && amount(q) != 0 {
                found += 1;
                *limits.entry(name.clone()).or_insert(0) += amount(q);
            }
        }
        if found < COMPUTE.len() {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        "BestEffort"
    } else if guaranteed && requests == limits {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// How long a pod stays on a not-ready or unreachable node before eviction, unless it says
/// otherwise (kube-apiserver's DefaultTolerationSeconds admission: 300 s).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// DefaultTolerationSeconds: a new pod tolerates the not-ready and unreachable NoExecute taints
/// for 300 s unless it already tolerates them.
fn add_default_tolerations(spec: &mut PodSpec) {
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for key in [NOT_READY_TAINT, UNREACHABLE_TAINT] {
        let covered = tolerations.iter().any(|t| {
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "NoExecute");
            let key_ok = t.key.as_deref() == Some(key)
                || (t.key.as_deref().is_none_or(str::is_empty)
                    && t.operator.as_deref() == Some("Exists"));
            effect_ok && key_ok
        });
        if !covered {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(DEFAULT_TOLERATION_SECONDS),
                value: None,
            });
        }
    }
}

pub fn validate_pod_spec(spec: &PodSpec, path: &str) -> FieldErrors {
    let mut errors = FieldErrors::default();
    if spec.containers.is_empty() {
        errors.push(FieldError::required(format!("{path}.containers")));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if !super::fields::is_dns1123_label(&c.name) {
            errors.push(FieldError::invalid(
                format!("{path}.containers[{i}].name"),
                &c.name,
                super::fields::LABEL_MSG,
            ));
        }
        if c.image.as_deref().unwrap_or("").is_empty() {
            errors.push(FieldError::required(format!(
                "{path}.containers[{i}].image"
            )));
        }
    }
    let containers = spec.containers.iter().map(|c| ("containers", c)).chain(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| ("initContainers", c)),
    );
    let mut index = std::collections::HashMap::<&str, usize>::new();
    for (field, c) in containers {
        let i = index.entry(field).or_default();
        validate_resources(c, &format!("{path}.{field}[{i}].resources"), &mut errors);
        *i += 1;
    }
    if let Some(policy) = spec.restart_policy.as_deref()
        && !matches!(policy, "Always" | "OnFailure" | "Never")
    {
        errors.push(FieldError::unsupported(
            format!("{path}.restartPolicy"),
            policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
    errors
}

/// Requests and limits are quantities of at least zero, and no request exceeds its limit
/// (kube's messages).
fn validate_resources(c: &Container, path: &str, errors: &mut FieldErrors) {
    let Some(resources) = c.resources.as_ref() else {
        return;
    };
    super::resourcequota::validate_resource_list(
        &format!("{path}.limits"),
        resources.limits.as_ref(),
        errors,
    );
    super::resourcequota::validate_resource_list(
        &format!("{path}.requests"),
        resources.requests.as_ref(),
        errors,
    );
    for (name, limit) in resources.limits.iter().flatten() {
        let Some(request) = resources.requests.as_ref().and_then(|r| r.get(name)) else {
            continue;
        };
        let parse = super::quantity::parse;
        if let (Some(asked), Some(max)) = (parse(&request.0), parse(&limit.0))
            && asked > max
        {
            errors.push(FieldError::invalid(
                format!("{path}.requests"),
                &request.0,
                &format!("must be less than or equal to {name} limit of {}", limit.0),
            ));
        }
    }
}

impl Strategy for PodStrategy {
    type Object = Pod;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, pod: &mut Pod) {
        let mut qos = "BestEffort";
        if let Some(spec) = pod.spec.as_mut() {
            default_pod_spec(spec);
            let containers = spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten());
            containers.for_each(default_requests_to_limits);
            qos = qos_class(spec);
        }
        let status = pod.status.get_or_insert_with(PodStatus::default);
        status.phase.get_or_insert_with(|| "Pending".into());
        status.qos_class.get_or_insert_with(|| qos.into());
    }

    fn prepare_for_create(&self, pod: &mut Pod) {
        pod.status = None;
        if let Some(spec) = pod.spec.as_mut() {
            add_default_tolerations(spec);
            default_service_account(spec);
        }
    }

    fn prepare_for_update(&self, new: &mut Pod, old: &Pod) {
        new.status = old.status.clone();
    }

    fn validate(&self, pod: &Pod) -> FieldErrors {
        let mut errors = validate_meta(&pod.metadata, NameRule::Subdomain);
        match &pod.spec {
            Some(spec) => errors.extend(validate_pod_spec(spec, "spec")),
            None => errors.push(FieldError::required("spec")),
        }
        errors
    }

    fn validate_update(&self, new: &Pod, old: &Pod) -> FieldErrors {
        let mut errors = self.validate(new);
        // Pod updates may only change container images (and a few fields we do not model yet).
        if let (Some(n), Some(o)) = (&new.spec, &old.spec) {
            let mut n = n.clone();
            for (nc, oc) in n.containers.iter_mut().zip(&o.containers) {
                nc.image = oc.image.clone();
            }
            if &n != o {
                errors.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Ready",
                "string",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            Column::new(
                "Status",
                "string",
                "The aggregate status of the containers in this pod.",
            ),
            Column::new(
                "Restarts",
                "string",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            Column::new("IP", "string", "IP address of this pod.").wide(),
            Column::new("Node", "string", "Node name of this pod.").wide(),
            Column::new(
                "Nominated Node",
                "string",
                "Nominated node name of this pod.",
            )
            .wide(),
            Column::new("Readiness Gates", "string", "Readiness gates of this pod.").wide(),
        ]
    }

    fn cells(&self, pod: &Pod, _now: jiff::Timestamp) -> Vec<Value> {
        let total = pod.spec.as_ref().map_or(0, |s| s.containers.len());
        let status = pod.status.clone().unwrap_or_default();
        let statuses = status.container_statuses.unwrap_or_default();
        let ready = statuses.iter().filter(|s| s.ready).count();
        let restarts: i32 = statuses.iter().map(|s| s.restart_count).sum();
        let mut reason = status
            .reason
            .clone()
            .or(status.phase.clone())
            .unwrap_or_default();
        // A waiting or terminated container's reason is what kubectl shows (CrashLoopBackOff).
        for s in &statuses {
            if let Some(state) = &s.state {
                if let Some(r) = state.waiting.as_ref().and_then(|w| w.reason.clone())
                    && !r.is_empty()
                {
                    reason = r;
                } else if let Some(r) = state.terminated.as_ref().and_then(|t| t.reason.clone())
                    && !r.is_empty()
                {
                    reason = r;
                }
            }
        }
        if pod.metadata.deletion_timestamp.is_some() {
            reason = "Terminating".into();
        }
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        vec![
            Value::String(format!("{ready}/{total}")),
            Value::String(reason),
            Value::String(restarts.to_string()),
            or_none(status.pod_ip.unwrap_or_default()),
            or_none(node),
            or_none(status.nominated_node_name.unwrap_or_default()),
            or_none(""),
        ]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::service_account_of;

    #[test]
    fn a_pod_without_a_service_account_runs_as_default() {
        assert_eq!(service_account_of(&json!({"spec": {}})), "default");
        assert_eq!(
            service_account_of(&json!({"spec": {"serviceAccountName": ""}})),
            "default"
        );
        assert_eq!(
            service_account_of(&json!({"spec": {"serviceAccountName": "robot"}})),
            "robot"
        );
    }
}
