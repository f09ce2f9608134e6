//! What the kinds that run pods from a template share (Deployment, ReplicaSet, StatefulSet,
//! DaemonSet, Job, CronJob): template defaults and checks, the label selector that must pick
//! the template's pods, and the CONTAINERS / IMAGES / SELECTOR cells kubectl prints for them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::fields::{FieldError, immutable, or_none};
use super::pod::{default_pod_spec, validate_pod_spec};
use super::{Column, FieldErrors};

/// Restart policies a controller accepts in its template: the long-running kinds restart
/// always, Jobs never or on failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartRule {
    Always,
    OnFailureOrNever,
}

pub fn default_template(template: &mut PodTemplateSpec) {
    if let Some(spec) = template.spec.as_mut() {
        default_pod_spec(spec);
    }
}

/// `<path>.template`: present, a valid pod spec, and a restart policy the controller can use.
pub fn validate_template(
    template: Option<&PodTemplateSpec>,
    path: &str,
    restart: RestartRule,
) -> FieldErrors {
    let mut errors = FieldErrors::default();
    let Some(spec) = template.and_then(|t| t.spec.as_ref()) else {
        errors.push(FieldError::required(format!("{path}.template.spec")));
        return errors;
    };
    let spec_path = format!("{path}.template.spec");
    errors.extend(validate_pod_spec(spec, &spec_path));
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    match restart {
        RestartRule::Always if policy != "Always" => errors.push(FieldError::unsupported(
            format!("{spec_path}.restartPolicy"),
            policy,
            &["Always"],
        )),
        // kube-apiserver words this one as a Required value listing the valid ones.
        RestartRule::OnFailureOrNever if !matches!(policy, "OnFailure" | "Never") => {
            errors.push(FieldError {
                reason: "FieldValueRequired",
                field: format!("{spec_path}.restartPolicy"),
                message: "Required value: valid values: \"OnFailure\", \"Never\"".into(),
            })
        }
        _ => {}
    }
    errors
}

/// `<path>.selector`: present, non-empty, well-formed, and selecting the template's labels.
pub fn validate_selector(
    selector: Option<&LabelSelector>,
    template: Option<&PodTemplateSpec>,
    path: &str,
) -> FieldErrors {
    let mut errors = FieldErrors::default();
    let Some(selector) = selector.filter(|s| !is_empty(s)) else {
        errors.push(FieldError::required(format!("{path}.selector")));
        return errors;
    };
    errors.extend(validate_label_selector(
        selector,
        &format!("{path}.selector"),
    ));
    let labels = template_labels(template);
    if errors.is_empty() && !selector_matches(selector, &labels) {
        errors.push(FieldError::invalid(
            format!("{path}.template.metadata.labels"),
            &format!("{labels:?}"),
            "`selector` does not match template `labels`",
        ));
    }
    errors
}

/// `spec.selector` and `spec.template` of a replicated workload (Deployment, ReplicaSet,
/// StatefulSet, DaemonSet): the selector picks the template's pods, which restart always.
pub fn validate_selector_and_template(
    selector: &LabelSelector,
    template: Option<&PodTemplateSpec>,
) -> FieldErrors {
    let mut errors = validate_selector(Some(selector), template, "spec");
    errors.extend(validate_template(template, "spec", RestartRule::Always));
    errors
}

/// kube-apiserver refuses to change a workload's selector: the pods it owns would be orphaned.
/// `selector` reads it from the kind's object.
pub fn validate_selector_unchanged<T>(
    new: &T,
    old: &T,
    selector: impl Fn(&T) -> Option<&LabelSelector>,
) -> FieldErrors {
    immutable(&selector(new), &selector(old), "spec.selector")
}

fn is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

fn template_labels(template: Option<&PodTemplateSpec>) -> BTreeMap<String, String> {
    template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// The selector's `matchExpressions` are well-formed (PodDisruptionBudget checks its own too).
pub fn validate_label_selector(selector: &LabelSelector, path: &str) -> FieldErrors {
    let mut errors = FieldErrors::default();
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        let values = e.values.as_ref().map_or(0, Vec::len);
        match e.operator.as_str() {
            "In" | "NotIn" if values == 0 => {
                errors.push(FieldError::required(format!("{at}.values")))
            }
            "Exists" | "DoesNotExist" if values > 0 => errors.push(FieldError::forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(FieldError::invalid(
                format!("{at}.operator"),
                other,
                "not a valid selector operator",
            )),
        }
    }
    errors
}

/// Whether `labels` satisfy every term of `selector` (an empty selector selects everything).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector_matches_by(selector, |key| labels.get(key).map(String::as_str))
}

/// `selector_matches` over labels read in place (`label(key)`), e.g. straight from an
/// object's JSON: a controller matching thousands of pods need not copy each one's labels.
pub fn selector_matches_by<'a>(
    selector: &LabelSelector,
    label: impl Fn(&str) -> Option<&'a str>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| label(k) == Some(v.as_str()));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let value = label(&e.key);
        let listed = value.is_some_and(|v| e.values.iter().flatten().any(|x| x == v));
        match e.operator.as_str() {
            "In" => listed,
            "NotIn" => !listed,
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// A selector as kubectl prints it (`app=web,tier in (a,b),!legacy`), terms sorted by key;
/// `<none>` when it selects nothing or everything.
pub fn format_selector(selector: Option<&LabelSelector>) -> String {
    let Some(selector) = selector else {
        return "<none>".into();
    };
    let mut terms: Vec<(String, String)> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), format!("{k}={v}")))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let mut values: Vec<&str> = e.values.iter().flatten().map(String::as_str).collect();
        values.sort_unstable();
        let term = match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, values.join(",")),
            "NotIn" => format!("{} notin ({})", e.key, values.join(",")),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            _ => continue,
        };
        terms.push((e.key.clone(), term));
    }
    terms.sort();
    let joined: Vec<String> = terms.into_iter().map(|(_, t)| t).collect();
    if joined.is_empty() {
        "<none>".into()
    } else {
        joined.join(",")
    }
}

/// A label map as kubectl prints it (`disk=ssd,zone=a`), `<none>` when empty.
pub fn format_labels(labels: Option<&BTreeMap<String, String>>) -> Value {
    let joined: Vec<String> = labels
        .iter()
        .flat_map(|m| m.iter())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    or_none(joined.join(","))
}

/// The wide CONTAINERS and IMAGES columns of every template kind.
pub fn container_columns() -> [Column; 2] {
    [
        Column::new(
            "Containers",
            "string",
            "Names of each container in the template.",
        )
        .wide(),
        Column::new(
            "Images",
            "string",
            "Images referenced by each container in the template.",
        )
        .wide(),
    ]
}

/// The wide SELECTOR column, described as the kind's own `spec.selector` field.
fn selector_column(description: &'static str) -> Column {
    Column::new("Selector", "string", description).wide()
}

/// CONTAINERS, IMAGES and SELECTOR, the wide columns of most template kinds.
pub fn template_columns(selector_description: &'static str) -> [Column; 3] {
    let [containers, images] = container_columns();
    [containers, images, selector_column(selector_description)]
}

/// Cells for `template_columns`.
pub fn template_cells(
    template: Option<&PodTemplateSpec>,
    selector: Option<&LabelSelector>,
) -> [Value; 3] {
    let [names, images] = container_cells(template);
    [names, images, Value::String(format_selector(selector))]
}

/// Cells for `container_columns`: container names and images, comma-separated.
pub fn container_cells(template: Option<&PodTemplateSpec>) -> [Value; 2] {
    let containers = template
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c.image.as_deref().unwrap_or(""))
        .collect();
    [
        Value::String(names.join(",")),
        Value::String(images.join(",")),
    ]
}

/// Test support: an apps/v1 `kind` named `name` whose selector and template use `app: <name>`,
/// running one container `image`.
#[cfg(test)]
pub fn workload_manifest(kind: &str, name: &str, image: &str) -> Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image}]}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A typed value from its JSON form.
    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("decode")
    }

    fn selector() -> LabelSelector {
        typed(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]
        }))
    }

    #[test]
    fn selectors_match_and_print_like_kubectl() {
        let s = selector();
        let matches = |labels: Value| selector_matches(&s, &typed(labels));
        assert!(matches(json!({"app": "web", "tier": "a"})));
        assert!(!matches(json!({"app": "web"})));
        assert!(!matches(json!({"app": "web", "tier": "a", "legacy": "1"})));
        assert_eq!(format_selector(Some(&s)), "app=web,!legacy,tier in (a,b)");
        assert_eq!(format_selector(None), "<none>");
    }

    #[test]
    fn selector_must_select_the_template() {
        let template: PodTemplateSpec = typed(json!({"metadata": {"labels": {"app": "db"}}}));
        let errors = validate_selector(Some(&selector()), Some(&template), "spec");
        assert_eq!(errors.0[0].field, "spec.template.metadata.labels");
        let errors = validate_selector(None, Some(&template), "spec");
        assert_eq!(errors.0[0].message, "Required value");
    }
}
