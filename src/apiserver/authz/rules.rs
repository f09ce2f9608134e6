//! RBAC rule matching, as Kubernetes' rbac/v1 evaluates it: does a PolicyRule allow these
//! request attributes, and does a binding's subject list include this user.

use serde_json::Value;

use super::Attributes;
use crate::apiserver::auth::UserInfo;
use crate::json_path::JsonPath;

fn strings<'a>(rule: &'a Value, field: &str) -> impl Iterator<Item = &'a str> {
    rule.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn has(rule: &Value, field: &str, want: &str) -> bool {
    strings(rule, field).any(|v| v == "*" || v == want)
}

/// `pods`, `pods/log`, `*`, `*/scale` against the requested resource and subresource.
fn resource_matches(rule: &Value, resource: &str, subresource: &str) -> bool {
    let combined = if subresource.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{subresource}")
    };
    strings(rule, "resources").any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

fn non_resource_matches(rule: &Value, path: &str) -> bool {
    strings(rule, "nonResourceURLs").any(|u| {
        u == "*"
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// Whether one PolicyRule allows the request.
pub fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    if !has(rule, "verbs", &attrs.verb) {
        return false;
    }
    match &attrs.path {
        Some(path) => non_resource_matches(rule, path),
        None => {
            if !has(rule, "apiGroups", &attrs.api_group)
                || !resource_matches(rule, &attrs.resource, &attrs.subresource)
            {
                return false;
            }
            let names: Vec<&str> = strings(rule, "resourceNames").collect();
            names.is_empty() || (!attrs.name.is_empty() && names.contains(&attrs.name.as_str()))
        }
    }
}

/// Whether a RoleBinding/ClusterRoleBinding names this user (directly, by group, or as the
/// ServiceAccount `system:serviceaccount:<namespace>:<name>`).
pub fn binding_applies(binding: &Value, user: &UserInfo) -> bool {
    let binding_ns = binding
        .at("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|subject| {
            let name = subject.get("name").and_then(Value::as_str).unwrap_or("");
            match subject.get("kind").and_then(Value::as_str) {
                Some("User") => name == user.name,
                Some("Group") => user.in_group(name),
                Some("ServiceAccount") => {
                    let ns = subject
                        .get("namespace")
                        .and_then(Value::as_str)
                        .filter(|ns| !ns.is_empty())
                        .unwrap_or(binding_ns);
                    user.name == format!("system:serviceaccount:{ns}:{name}")
                }
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: "default".into(),
            path: None,
        }
    }

    #[test]
    fn verbs_groups_resources_and_names() {
        let rule = json!({"verbs": ["get", "list"], "apiGroups": ["apps"], "resources": ["deployments", "*/scale"]});
        assert!(rule_allows(
            &rule,
            &attrs("get", "apps", "deployments", "", "x")
        ));
        assert!(rule_allows(
            &rule,
            &attrs("list", "apps", "replicasets", "scale", "")
        ));
        assert!(!rule_allows(
            &rule,
            &attrs("create", "apps", "deployments", "", "")
        ));
        assert!(!rule_allows(
            &rule,
            &attrs("get", "", "deployments", "", "")
        ));
        assert!(!rule_allows(
            &rule,
            &attrs("get", "apps", "deployments", "status", "x")
        ));
        let named = json!({"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]});
        assert!(rule_allows(
            &named,
            &attrs("update", "", "configmaps", "", "a")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("update", "", "configmaps", "", "b")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("list", "", "configmaps", "", "")
        ));
    }

    #[test]
    fn non_resource_urls_with_wildcards() {
        let rule = json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]});
        let mut a = attrs("get", "", "", "", "");
        a.path = Some("/apis/apps/v1".into());
        assert!(rule_allows(&rule, &a));
        a.path = Some("/metrics".into());
        assert!(!rule_allows(&rule, &a));
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts() {
        let binding = json!({"metadata": {"namespace": "dev"}, "subjects": [
            {"kind": "User", "name": "bob"},
            {"kind": "Group", "name": "ops"},
            {"kind": "ServiceAccount", "name": "ci"}]});
        let user = |n: &str, g: &[&str]| UserInfo {
            name: n.into(),
            groups: g.iter().map(|s| s.to_string()).collect(),
        };
        assert!(binding_applies(&binding, &user("bob", &[])));
        assert!(binding_applies(&binding, &user("eve", &["ops"])));
        assert!(binding_applies(
            &binding,
            &user("system:serviceaccount:dev:ci", &[])
        ));
        assert!(!binding_applies(
            &binding,
            &user("system:serviceaccount:prod:ci", &[])
        ));
    }
}
