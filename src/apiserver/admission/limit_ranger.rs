//! LimitRanger admission, as kube-apiserver's plugin: the LimitRanges of a namespace give new
//! pods' containers their default requests and limits, then bound containers, whole pods and
//! PersistentVolumeClaims by min, max and maxLimitRequestRatio. A refusal is 403 Forbidden
//! with kube's message (`maximum cpu usage per Container is 500m, but limit is 1`).
//!
//! Runs before the kind's own defaults and validation, which then see the defaulted resources
//! (a default limit below an explicit request is the usual 422, as on Kubernetes).

use serde_json::{Value, json};

use super::usage::{self, Usage};
use crate::json_path::JsonPath;
use crate::registry::quantity;

/// One limit item of type `kind` from every LimitRange given.
fn items<'a>(ranges: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    ranges
        .iter()
        .filter_map(|r| r.at("/spec/limits").and_then(Value::as_array))
        .flatten()
        .filter(move |item| item.get("type").and_then(Value::as_str) == Some(kind))
}

/// The raw quantity strings of a resource list, by name.
fn strings(list: Option<&Value>) -> Vec<(String, String)> {
    list.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// Applies the Container defaults of `ranges` to every container of `pod` (init ones too).
/// A resource with an explicit limit but no request gets the limit as its request (what pod
/// defaulting does before LimitRanger runs on Kubernetes), else the default request.
pub fn default_pod(pod: &mut Value, ranges: &[Value]) {
    let mut defaults = Vec::new();
    let mut default_requests = Vec::new();
    for item in items(ranges, "Container") {
        defaults.extend(strings(item.get("default")));
        default_requests.extend(strings(item.get("defaultRequest")));
    }
    if defaults.is_empty() && default_requests.is_empty() {
        return;
    }
    for field in ["containers", "initContainers"] {
        let Some(list) = pod
            .pointer_mut(&format!("/spec/{field}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for container in list.iter_mut().filter(|c| c.is_object()) {
            let resources = container
                .as_object_mut()
                .map(|c| c.entry("resources").or_insert_with(|| json!({})));
            let Some(resources) = resources.filter(|r| r.is_object()) else {
                continue;
            };
            let user_limits = strings(resources.get("limits"));
            set_missing(resources, "limits", &defaults);
            let mut requests = user_limits;
            requests.extend(default_requests.iter().cloned());
            set_missing(resources, "requests", &requests);
        }
    }
}

/// Inserts each `(name, value)` into `resources[which]` unless already there (the first
/// value for a name wins).
fn set_missing(resources: &mut Value, which: &str, values: &[(String, String)]) {
    if values.is_empty() {
        return;
    }
    let Some(obj) = resources.as_object_mut() else {
        return;
    };
    let list = obj.entry(which).or_insert_with(|| json!({}));
    if list.is_null() {
        *list = json!({});
    }
    if let Some(list) = list.as_object_mut() {
        for (name, value) in values {
            list.entry(name.clone())
                .or_insert_with(|| Value::String(value.clone()));
        }
    }
}

/// The violations of `ranges` by a (defaulted) pod, in kube's words and order (limit item by
/// limit item, container by container).
pub fn check_pod(pod: &Value, ranges: &[Value]) -> Vec<String> {
    let containers: Vec<(Usage, Usage)> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.at(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .map(|c| {
            (
                usage::parse_list(c.at("/resources/requests")),
                usage::parse_list(c.at("/resources/limits")),
            )
        })
        .collect();
    let mut errors = Vec::new();
    for item in items(ranges, "Container") {
        for (requests, limits) in &containers {
            check_item(item, "Container", requests, limits, &mut errors);
        }
    }
    let mut pod_requests = Usage::new();
    let mut pod_limits = Usage::new();
    for (requests, limits) in &containers {
        usage::add(&mut pod_requests, requests);
        usage::add(&mut pod_limits, limits);
    }
    for item in items(ranges, "Pod") {
        check_item(item, "Pod", &pod_requests, &pod_limits, &mut errors);
    }
    errors
}

/// The violations of `ranges` by a claim's storage request.
pub fn check_claim(claim: &Value, ranges: &[Value]) -> Vec<String> {
    let requests = usage::parse_list(claim.at("/spec/resources/requests"));
    let mut errors = Vec::new();
    for item in items(ranges, "PersistentVolumeClaim") {
        for (name, min) in strings(item.get("min")) {
            errors.extend(min_constraint(
                "PersistentVolumeClaim",
                &name,
                &min,
                &requests,
                &Usage::new(),
            ));
        }
        for (name, max) in strings(item.get("max")) {
            let Some(enforced) = quantity::millis(&max) else {
                continue;
            };
            let max = quantity::canonical(&max);
            match requests.get(&name) {
                None => errors.push(format!(
                    "maximum {name} usage per PersistentVolumeClaim is {max}.  No request is specified"
                )),
                Some(req) if *req > enforced => errors.push(format!(
                    "maximum {name} usage per PersistentVolumeClaim is {max}, but request is {}",
                    usage::format(&name, *req)
                )),
                Some(_) => {}
            }
        }
    }
    errors
}

/// min, max and maxLimitRequestRatio of one item against one container's (or pod's) lists.
fn check_item(
    item: &Value,
    kind: &str,
    requests: &Usage,
    limits: &Usage,
    errors: &mut Vec<String>,
) {
    for (name, min) in strings(item.get("min")) {
        errors.extend(min_constraint(kind, &name, &min, requests, limits));
    }
    for (name, max) in strings(item.get("max")) {
        let Some(enforced) = quantity::millis(&max) else {
            continue;
        };
        let max = quantity::canonical(&max);
        match (limits.get(&name), requests.get(&name)) {
            (None, _) => errors.push(format!(
                "maximum {name} usage per {kind} is {max}.  No limit is specified"
            )),
            (Some(lim), _) if *lim > enforced => errors.push(format!(
                "maximum {name} usage per {kind} is {max}, but limit is {}",
                usage::format(&name, *lim)
            )),
            (_, Some(req)) if *req > enforced => errors.push(format!(
                "maximum {name} usage per {kind} is {max}, but request is {}",
                usage::format(&name, *req)
            )),
            _ => {}
        }
    }
    for (name, ratio) in strings(item.get("maxLimitRequestRatio")) {
        let Some(enforced) = quantity::millis(&ratio) else {
            continue;
        };
        let ratio = quantity::canonical(&ratio);
        let req = requests.get(&name).copied().unwrap_or(0);
        let lim = limits.get(&name).copied().unwrap_or(0);
        if req == 0 {
            errors.push(format!(
                "{name} max limit to request ratio per {kind} is {ratio}, but no request is specified or request is 0"
            ));
        } else if lim == 0 {
            errors.push(format!(
                "{name} max limit to request ratio per {kind} is {ratio}, but no limit is specified or limit is 0"
            ));
        } else {
            let observed = lim as f64 / req as f64;
            if observed * 1000.0 > enforced as f64 {
                errors.push(format!(
                    "{name} max limit to request ratio per {kind} is {ratio}, but provided ratio is {observed:.6}"
                ));
            }
        }
    }
}

fn min_constraint(
    kind: &str,
    name: &str,
    min: &str,
    requests: &Usage,
    limits: &Usage,
) -> Option<String> {
    let enforced = quantity::millis(min)?;
    let min = quantity::canonical(min);
    match (requests.get(name), limits.get(name)) {
        (None, _) => Some(format!(
            "minimum {name} usage per {kind} is {min}.  No request is specified"
        )),
        (Some(req), _) if *req < enforced => Some(format!(
            "minimum {name} usage per {kind} is {min}, but request is {}",
            usage::format(name, *req)
        )),
        (_, Some(lim)) if *lim < enforced => Some(format!(
            "minimum {name} usage per {kind} is {min}, but limit is {}",
            usage::format(name, *lim)
        )),
        _ => None,
    }
}

/// kube's aggregate of several errors: one as it is, more in brackets.
pub fn aggregate(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(limits: Value) -> Vec<Value> {
        vec![json!({"spec": {"limits": limits}})]
    }

    #[test]
    fn defaults_fill_only_what_containers_leave_out() {
        let ranges = range(json!([{"type": "Container",
            "default": {"cpu": "500m", "memory": "128Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "64Mi"}}]));
        let mut pod = json!({"spec": {"containers": [
            {"name": "bare"},
            {"name": "limited", "resources": {"limits": {"cpu": "2"}}},
        ]}});
        default_pod(&mut pod, &ranges);
        let bare = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(bare["limits"], json!({"cpu": "500m", "memory": "128Mi"}));
        assert_eq!(bare["requests"], json!({"cpu": "100m", "memory": "64Mi"}));
        let limited = &pod["spec"]["containers"][1]["resources"];
        assert_eq!(limited["limits"]["cpu"], "2");
        assert_eq!(
            limited["requests"]["cpu"], "2",
            "an explicit limit is the request"
        );
        assert_eq!(limited["requests"]["memory"], "64Mi");
    }

    #[test]
    fn bounds_are_reported_as_kube_words_them() {
        let ranges = range(json!([
            {"type": "Container", "max": {"cpu": "800m"}, "min": {"memory": "100Mi"}},
            {"type": "Pod", "max": {"cpu": "1"}},
        ]));
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1500m"}, "requests": {"memory": "50Mi"}}},
        ]}});
        let errors = check_pod(&pod, &ranges);
        assert_eq!(
            errors,
            [
                "minimum memory usage per Container is 100Mi, but request is 50Mi",
                "maximum cpu usage per Container is 800m, but limit is 1500m",
                "maximum cpu usage per Pod is 1, but limit is 1500m",
            ]
        );
        assert!(aggregate(&errors).starts_with("[minimum memory"));
    }

    #[test]
    fn ratio_and_claims() {
        let ranges = range(json!([
            {"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}},
            {"type": "PersistentVolumeClaim", "max": {"storage": "2Gi"}},
        ]));
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "250m"}}},
        ]}});
        assert_eq!(
            check_pod(&pod, &ranges),
            ["cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000"]
        );
        let claim = json!({"spec": {"resources": {"requests": {"storage": "5Gi"}}}});
        assert_eq!(
            check_claim(&claim, &ranges),
            ["maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"]
        );
    }
}
