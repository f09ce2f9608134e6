//! What one object counts against a ResourceQuota, as kube's quota evaluators define it: every
//! object counts `count/<resource>[.<group>]`; pods add `pods` and their compute requests and
//! limits (until they finish), Services their node ports and load balancers, claims their
//! storage (also per StorageClass), and the classic object counts (`configmaps`, `secrets`...).
//!
//! Pure functions over JSON objects: the admission check and the quota controller share them,
//! so what a create is charged and what the controller recounts can never disagree.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::json_path::JsonPath;
use crate::registry::KindInfo;
use crate::registry::quantity;

/// Resource name -> amount in thousandths (see `quantity::millis`).
pub type Usage = BTreeMap<String, i128>;

/// Compute resources a quota on cpu/memory makes every container state explicitly (kube's
/// backward-compatibility rule, kept by every Kubernetes since).
const MUST_SPECIFY: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// A quota's `hard`, `used`... map as amounts; entries that are not quantities are skipped
/// (validation refuses them on the quota itself).
pub fn parse_list(list: Option<&Value>) -> Usage {
    list.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, v)| Some((name.clone(), quantity::millis(v.as_str()?)?)))
        .collect()
}

/// Memory and storage print with binary suffixes, everything else decimal.
fn prints_binary(name: &str) -> bool {
    name.contains("memory") || name.contains("storage") || name.starts_with("hugepages-")
}

/// One amount as the canonical quantity string kube would print for `name`.
pub fn format(name: &str, millis: i128) -> String {
    quantity::format_millis(millis, prints_binary(name))
}

/// A usage as a JSON resource list (status.used).
pub fn to_json(usage: &Usage) -> Value {
    let map: serde_json::Map<String, Value> = usage
        .iter()
        .map(|(name, v)| (name.clone(), json!(format(name, *v))))
        .collect();
    Value::Object(map)
}

/// `name=value,...` in name order, as kube's quota messages print resource lists.
pub fn pretty(usage: &Usage) -> String {
    usage
        .iter()
        .map(|(name, v)| format!("{name}={}", format(name, *v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `usage` restricted to `names`.
pub fn mask(usage: &Usage, names: &BTreeSet<String>) -> Usage {
    usage
        .iter()
        .filter(|(name, _)| names.contains(*name))
        .map(|(name, v)| (name.clone(), *v))
        .collect()
}

/// Adds `other` into `total`.
pub fn add(total: &mut Usage, other: &Usage) {
    for (name, v) in other {
        *total.entry(name.clone()).or_default() += v;
    }
}

/// What `new` uses beyond `old`: the positive part of the difference (only growth is charged
/// at admission; releases are the controller's recount).
pub fn growth(new: &Usage, old: &Usage) -> Usage {
    new.iter()
        .filter_map(|(name, v)| {
            let grown = v - old.get(name).copied().unwrap_or(0);
            (grown > 0).then(|| (name.clone(), grown))
        })
        .collect()
}

/// The object-count name of a kind: `count/pods`, `count/deployments.apps`.
fn count_name(info: &KindInfo) -> String {
    match info.group {
        "" => format!("count/{}", info.resource),
        group => format!("count/{}.{group}", info.resource),
    }
}

/// What `object` (of kind `info`) uses.
pub fn of_object(info: &KindInfo, object: &Value) -> Usage {
    let mut usage = Usage::from([(count_name(info), 1000)]);
    match (info.group, info.resource) {
        ("", "pods") => pod_usage(object, &mut usage),
        ("", "services") => service_usage(object, &mut usage),
        ("", "persistentvolumeclaims") => claim_usage(object, &mut usage),
        ("", "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas") => {
            usage.insert(info.resource.to_string(), 1000);
        }
        _ => {}
    }
    usage
}

/// Whether a pod still holds compute resources: not finished, and not deleted past its grace.
fn pod_is_live(pod: &Value) -> bool {
    let phase = pod.at("/status/phase").and_then(Value::as_str);
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    let deadline = pod
        .at("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match deadline {
        Some(at) => {
            let grace = pod
                .at("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            jiff::Timestamp::now().as_second() <= at.as_second() + grace
        }
        None => true,
    }
}

/// One container's (or a pod's summed) requests and limits under quota names.
fn compute_usage(requests: &Usage, limits: &Usage) -> Usage {
    let mut out = Usage::new();
    for (name, v) in requests {
        match name.as_str() {
            "cpu" | "memory" | "ephemeral-storage" => {
                out.insert(name.clone(), *v);
                out.insert(format!("requests.{name}"), *v);
            }
            other if other.starts_with("hugepages-") => {
                out.insert(name.clone(), *v);
                out.insert(format!("requests.{name}"), *v);
            }
            // Extended resources (`example.com/gpu`) are quota'd as requests.<name> only.
            other if other.contains('/') => {
                out.insert(format!("requests.{name}"), *v);
            }
            _ => {}
        }
    }
    for (name, v) in limits {
        if matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage") {
            out.insert(format!("limits.{name}"), *v);
        }
    }
    out
}

fn resources_of(container: &Value, which: &str) -> Usage {
    parse_list(container.at(&format!("/resources/{which}")))
}

fn containers<'a>(pod: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    pod.at(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The pod's effective requests or limits: the sum over its containers, or the largest init
/// container when that is more (init containers run one at a time), plus spec.overhead.
fn pod_resources(pod: &Value, which: &str) -> Usage {
    let mut total = Usage::new();
    for c in containers(pod, "containers") {
        add(&mut total, &resources_of(c, which));
    }
    for c in containers(pod, "initContainers") {
        for (name, v) in resources_of(c, which) {
            let entry = total.entry(name).or_default();
            *entry = (*entry).max(v);
        }
    }
    add(&mut total, &parse_list(pod.at("/spec/overhead")));
    total
}

fn pod_usage(pod: &Value, usage: &mut Usage) {
    // count/pods tracks every stored pod; `pods` and compute only the live ones.
    if !pod_is_live(pod) {
        return;
    }
    usage.insert("pods".into(), 1000);
    let compute = compute_usage(
        &pod_resources(pod, "requests"),
        &pod_resources(pod, "limits"),
    );
    add(usage, &compute);
}

fn service_usage(service: &Value, usage: &mut Usage) {
    usage.insert("services".into(), 1000);
    let ports = service
        .at("/spec/ports")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as i128;
    match service.at("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => {
            usage.insert("services.nodeports".into(), ports * 1000);
        }
        Some("LoadBalancer") => {
            usage.insert("services.loadbalancers".into(), 1000);
            let allocates = service
                .at("/spec/allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if allocates {
                usage.insert("services.nodeports".into(), ports * 1000);
            }
        }
        _ => {}
    }
}

fn claim_usage(claim: &Value, usage: &mut Usage) {
    usage.insert("persistentvolumeclaims".into(), 1000);
    let storage = claim
        .at("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .and_then(quantity::millis);
    if let Some(storage) = storage {
        usage.insert("requests.storage".into(), storage);
    }
    let class = claim
        .at("/spec/storageClassName")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    if let Some(class) = class {
        let prefix = format!("{class}.storageclass.storage.k8s.io");
        usage.insert(format!("{prefix}/persistentvolumeclaims"), 1000);
        if let Some(storage) = storage {
            usage.insert(format!("{prefix}/requests.storage"), storage);
        }
    }
}

/// Whether a quota applies to `object`: an unscoped quota applies to everything; scopes
/// (spec.scopes and spec.scopeSelector) select pods only, as kube's evaluators do.
pub fn quota_matches(quota: &Value, info: &KindInfo, object: &Value) -> bool {
    let scopes: Vec<&str> = quota
        .at("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let expressions: Vec<&Value> = quota
        .at("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if scopes.is_empty() && expressions.is_empty() {
        return true;
    }
    if (info.group, info.resource) != ("", "pods") {
        return false;
    }
    scopes
        .iter()
        .all(|s| pod_in_scope(object, s, "Exists", &[]))
        && expressions.iter().all(|e| {
            let text = |f: &str| e.get(f).and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            pod_in_scope(object, text("scopeName"), text("operator"), &values)
        })
}

/// One scope selector term on a pod. Operators on the boolean scopes follow kube: `Exists`
/// means "in the scope", `DoesNotExist` the opposite.
fn pod_in_scope(pod: &Value, scope: &str, operator: &str, values: &[&str]) -> bool {
    let member = match scope {
        "Terminating" => pod.at("/spec/activeDeadlineSeconds").is_some(),
        "NotTerminating" => pod.at("/spec/activeDeadlineSeconds").is_none(),
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "PriorityClass" => {
            let class = pod
                .at("/spec/priorityClassName")
                .and_then(Value::as_str)
                .unwrap_or("");
            return match operator {
                "In" => values.contains(&class),
                "NotIn" => !values.contains(&class),
                "Exists" => !class.is_empty(),
                "DoesNotExist" => class.is_empty(),
                _ => false,
            };
        }
        _ => false,
    };
    match operator {
        "DoesNotExist" => !member,
        _ => member,
    }
}

/// A pod with no cpu or memory request or limit on any container (QoS class BestEffort).
fn is_best_effort(pod: &Value) -> bool {
    containers(pod, "containers")
        .chain(containers(pod, "initContainers"))
        .all(|c| {
            ["requests", "limits"].iter().all(|which| {
                let list = resources_of(c, which);
                !list.contains_key("cpu") && !list.contains_key("memory")
            })
        })
}

/// kube's "must specify" rule for pods under a quota that limits cpu or memory: every
/// container (init ones too) states each such resource. Returns the message tail, e.g.
/// `limits.cpu for: app,sidecar; requests.memory for: app`.
pub fn missing_compute(pod: &Value, hard: &Usage) -> Option<String> {
    let required: BTreeSet<&str> = MUST_SPECIFY
        .iter()
        .copied()
        .filter(|r| hard.contains_key(*r))
        .collect();
    if required.is_empty() {
        return None;
    }
    let mut missing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in containers(pod, "containers").chain(containers(pod, "initContainers")) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        let has = compute_usage(&resources_of(c, "requests"), &resources_of(c, "limits"));
        for resource in &required {
            if !has.contains_key(*resource) {
                missing.entry(resource).or_default().insert(name);
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(resource, names)| {
            let names: Vec<&str> = names.iter().copied().collect();
            format!("{resource} for: {}", names.join(","))
        })
        .collect();
    Some(parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    fn info(group: &str, resource: &str) -> &'static KindInfo {
        registry::lookup(group, "v1", resource)
            .expect("kind")
            .info()
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn pods_count_requests_limits_and_the_largest_init_container() {
        let mut p = pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
        ]));
        p["spec"]["initContainers"] =
            json!([{"name": "i", "resources": {"requests": {"cpu": "2"}}}]);
        let u = of_object(info("", "pods"), &p);
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["count/pods"], 1000);
        assert_eq!(format("requests.cpu", u["requests.cpu"]), "2");
        assert_eq!(format("memory", u["memory"]), "128Mi");
        assert_eq!(format("limits.cpu", u["limits.cpu"]), "500m");
    }

    #[test]
    fn finished_pods_only_count_as_objects() {
        let mut p = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        p["status"] = json!({"phase": "Succeeded"});
        let u = of_object(info("", "pods"), &p);
        assert_eq!(u, Usage::from([("count/pods".to_string(), 1000)]));
    }

    #[test]
    fn services_count_node_ports_and_load_balancers() {
        let svc = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        let u = of_object(info("", "services"), &svc);
        assert_eq!(u["services"], 1000);
        assert_eq!(u["services.loadbalancers"], 1000);
        assert_eq!(u["services.nodeports"], 2000);
    }

    #[test]
    fn claims_count_storage_per_class() {
        let pvc = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "5Gi"}}}});
        let u = of_object(info("", "persistentvolumeclaims"), &pvc);
        assert_eq!(format("requests.storage", u["requests.storage"]), "5Gi");
        assert_eq!(
            u["fast.storageclass.storage.k8s.io/persistentvolumeclaims"],
            1000
        );
    }

    #[test]
    fn scopes_select_pods_by_qos_and_deadline() {
        let best_effort = pod(json!([{"name": "a"}]));
        let mut burstable = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        let scoped = json!({"spec": {"scopes": ["BestEffort"]}});
        let pods = info("", "pods");
        assert!(quota_matches(&scoped, pods, &best_effort));
        assert!(!quota_matches(&scoped, pods, &burstable));
        burstable["spec"]["activeDeadlineSeconds"] = json!(30);
        let terminating = json!({"spec": {"scopeSelector": {"matchExpressions": [{"scopeName": "Terminating", "operator": "Exists"}]}}});
        assert!(quota_matches(&terminating, pods, &burstable));
        assert!(!quota_matches(&terminating, pods, &best_effort));
        assert!(!quota_matches(&scoped, info("", "configmaps"), &json!({})));
    }

    #[test]
    fn must_specify_names_resources_and_containers_as_kube() {
        let p = pod(json!([
            {"name": "app", "resources": {"requests": {"cpu": "1"}}},
            {"name": "side"},
        ]));
        let hard = Usage::from([("limits.cpu".into(), 2000), ("requests.cpu".into(), 2000)]);
        assert_eq!(
            missing_compute(&p, &hard).as_deref(),
            Some("limits.cpu for: app,side; requests.cpu for: side")
        );
        assert_eq!(
            missing_compute(&p, &Usage::from([("pods".into(), 1000)])),
            None
        );
    }

    #[test]
    fn growth_charges_only_increases() {
        let old = Usage::from([
            ("services.nodeports".into(), 1000),
            ("services".into(), 1000),
        ]);
        let new = Usage::from([
            ("services.nodeports".into(), 2000),
            ("services".into(), 1000),
        ]);
        assert_eq!(
            growth(&new, &old),
            Usage::from([("services.nodeports".into(), 1000)])
        );
        assert_eq!(pretty(&new), "services=1,services.nodeports=2");
    }
}
